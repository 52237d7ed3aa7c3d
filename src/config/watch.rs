//! Watches the config file for changes (notify), debounced.
//!
//! The parent directory is watched, not the file: editors and deploy tools often replace a file by
//! writing a temporary one and renaming it over the original, which a watch on the old inode would
//! miss. Events for other files in that directory are ignored. A burst of events (an editor's write,
//! chmod and rename) becomes one signal once the file has been quiet for the debounce interval.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

/// How long the file must be quiet before a change is reported. Editors write in several steps.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(150);

/// A live watch; dropping it stops watching.
pub struct ConfigWatcher {
    _watcher: notify::RecommendedWatcher,
    rx: mpsc::Receiver<()>,
    debounce: Duration,
}

impl ConfigWatcher {
    /// Starts watching `path` (its directory must exist).
    pub fn new(path: &Path, debounce: Duration) -> notify::Result<ConfigWatcher> {
        let file: PathBuf = path.to_path_buf();
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = file.file_name().map(|n| n.to_os_string());
        // Capacity 1: a pending signal already means "reload"; more would be redundant.
        let (tx, rx) = mpsc::channel(1);
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                let Ok(event) = res else { return };
                if event.kind.is_access() {
                    return;
                }
                let ours = event
                    .paths
                    .iter()
                    .any(|p| p.file_name().map(|n| n.to_os_string()) == name);
                if ours {
                    let _ = tx.try_send(());
                }
            })?;
        watcher.watch(&dir, RecursiveMode::NonRecursive)?;
        Ok(ConfigWatcher {
            _watcher: watcher,
            rx,
            debounce,
        })
    }

    /// Waits for the next change, then for the file to be quiet for the debounce interval.
    /// Returns `None` when the watcher has stopped.
    pub async fn changed(&mut self) -> Option<()> {
        self.rx.recv().await?;
        loop {
            match tokio::time::timeout(self.debounce, self.rx.recv()).await {
                Ok(Some(())) => continue,
                Ok(None) => return None,
                Err(_quiet) => return Some(()),
            }
        }
    }
}
