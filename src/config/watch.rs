//! Watches the config file for changes (notify), debounced, by its content.
//!
//! Deploy tools change a config in ways a watch on one name misses:
//! - editors write a temporary file and rename it over the original (a new inode);
//! - Kubernetes mounts a ConfigMap as `relay.yaml -> ..data/relay.yaml`, `..data -> ..<timestamp>`,
//!   and updates it by renaming a new `..data` link over the old one: no event names `relay.yaml`;
//! - docker-compose bind-mounts a single file: the host edits the same inode through another
//!   directory, so the container's directory sees nothing.
//!
//! So relay watches three ways: events in the file's directory that name the file or a `..` entry
//! (Kubernetes' `..data`), the file itself (its inode, through any symlinks; re-armed after each
//! change), and a poll every [`POLL`] as the net under both. Whatever the trigger, a change is reported only when the file's bytes differ from the last
//! ones seen (a BLAKE3 digest), once the directory has been quiet for the debounce interval.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

/// How long the file must be quiet before a change is reported. Editors write in several steps.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(150);

/// How often the file is read to catch changes no event announced.
pub const POLL: Duration = Duration::from_secs(2);

/// A live watch; dropping it stops watching.
pub struct ConfigWatcher {
    watcher: notify::RecommendedWatcher,
    file: PathBuf,
    rx: mpsc::Receiver<()>,
    debounce: Duration,
    /// The digest of the bytes last reported (or read at start); `None`: unreadable.
    seen: Option<blake3::Hash>,
}

impl ConfigWatcher {
    /// Starts watching `path` (its directory must exist). The file as it is now counts as seen.
    pub fn new(path: &Path, debounce: Duration) -> notify::Result<ConfigWatcher> {
        let file: PathBuf = path.to_path_buf();
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = file.file_name().map(|n| n.to_os_string());
        // Capacity 1: a pending signal already means "look again"; more would be redundant.
        let (tx, rx) = mpsc::channel(1);
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                let Ok(event) = res else { return };
                if event.kind.is_access() {
                    return;
                }
                // The file itself (by name, or its inode's own events), or a Kubernetes `..data`
                // swap; not the cache or ledger files that may share the directory.
                let ours = event.paths.iter().any(|p| {
                    p.file_name().is_some_and(|n| {
                        Some(n) == name.as_deref() || n.as_encoded_bytes().starts_with(b"..")
                    })
                });
                if ours {
                    let _ = tx.try_send(());
                }
            })?;
        watcher.watch(&dir, RecursiveMode::NonRecursive)?;
        let mut w = ConfigWatcher {
            watcher,
            seen: digest(&file),
            file,
            rx,
            debounce,
        };
        w.arm_file();
        Ok(w)
    }

    /// (Re)watches the file's inode, through symlinks. A file that is gone (mid-swap) is watched
    /// again at the next change; the directory watch and the poll cover the gap.
    fn arm_file(&mut self) {
        let _ = self.watcher.unwatch(&self.file);
        let _ = self.watcher.watch(&self.file, RecursiveMode::NonRecursive);
    }

    /// Waits until the file's content has changed and the directory has been quiet for the
    /// debounce interval. Returns `None` when the watcher has stopped.
    pub async fn changed(&mut self) -> Option<()> {
        loop {
            match tokio::time::timeout(POLL, self.rx.recv()).await {
                Ok(Some(())) => loop {
                    match tokio::time::timeout(self.debounce, self.rx.recv()).await {
                        Ok(Some(())) => continue,
                        Ok(None) => return None,
                        Err(_quiet) => break,
                    }
                },
                Ok(None) => return None,
                Err(_poll) => {}
            }
            self.arm_file();
            let now = {
                let file = self.file.clone();
                tokio::task::spawn_blocking(move || digest(&file))
                    .await
                    .ok()
                    .flatten()
            };
            // An unreadable file (removed mid-swap) is not a change yet: the reload would only
            // fail. It counts once it is readable again.
            if now.is_some() && now != self.seen {
                self.seen = now;
                return Some(());
            }
        }
    }
}

/// BLAKE3 of the file's bytes (symlinks followed); `None` when it cannot be read.
fn digest(path: &Path) -> Option<blake3::Hash> {
    std::fs::read(path).ok().map(|b| blake3::hash(&b))
}
