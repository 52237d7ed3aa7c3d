//! Where relay keys are kept: [`RedbKeys`], a redb file of its own (`auth.keys_path`; default
//! `keys.redb` beside the usage ledger), one table `keys`: name → the [`KeyRecord`] as JSON.
//!
//! The store is small and read whole (at start, after each change); every call blocks, so the
//! server makes them on the blocking pool. A file that cannot be read is an error, never replaced:
//! without its keys relay would let nobody in, or (worse) forget a revocation.

use std::path::{Path, PathBuf};

use redb::{Database, DatabaseError, ReadableTable, TableDefinition};

use super::{KeyError, KeyRecord};
use crate::config::Config;

const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("keys");

/// A place relay keys live.
pub trait KeyStore: Send + Sync {
    fn get(&self, name: &str) -> Result<Option<KeyRecord>, KeyError>;
    fn put(&self, record: &KeyRecord) -> Result<(), KeyError>;
    /// Every record, revoked ones included, by name.
    fn all(&self) -> Result<Vec<KeyRecord>, KeyError>;
    /// What it is, for messages (`keys.redb at /path`, `redis 127.0.0.1:6379`).
    fn describe(&self) -> String;
    /// A number that changes whenever any relay changes a key (a shared store); `None`: this
    /// store changes only through this process, or cannot be read now.
    fn version(&self) -> Option<u64> {
        None
    }
    /// Whether other relays change this store too (then the ring is refreshed from it).
    fn shared(&self) -> bool {
        false
    }
}

/// The key-store file a config names.
pub fn path(cfg: &Config) -> Option<PathBuf> {
    if let Some(p) = &cfg.auth.keys_path {
        return Some(p.clone());
    }
    crate::cost::ledger::path(cfg).map(|l| l.with_file_name("keys.redb"))
}

/// The redb key store.
pub struct RedbKeys {
    db: Database,
    path: PathBuf,
}

impl RedbKeys {
    /// Opens (or creates) the store at `path`. Blocking.
    pub fn open(path: &Path) -> Result<RedbKeys, KeyError> {
        let fail = |message: String| KeyError::Store {
            path: path.display().to_string(),
            message,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
        }
        let opened = std::panic::catch_unwind(|| Database::create(path)).map_err(|p| {
            fail(format!(
                "redb failed on the file: {}",
                crate::files::panic_text(&*p)
            ))
        })?;
        let db = match opened {
            Ok(db) => db,
            Err(DatabaseError::DatabaseAlreadyOpen) => {
                return Err(KeyError::Locked {
                    path: path.display().to_string(),
                })
            }
            Err(e) => return Err(fail(e.to_string())),
        };
        restrict(path);
        let store = RedbKeys {
            db,
            path: path.to_owned(),
        };
        let w = store.db.begin_write().map_err(|e| store.err(e))?;
        w.open_table(KEYS).map_err(|e| store.err(e))?;
        w.commit().map_err(|e| store.err(e))?;
        Ok(store)
    }

    fn err(&self, e: impl Into<redb::Error>) -> KeyError {
        KeyError::Store {
            path: self.path.display().to_string(),
            message: e.into().to_string(),
        }
    }

    fn decode(&self, name: &str, bytes: &[u8]) -> Result<KeyRecord, KeyError> {
        serde_json::from_slice(bytes).map_err(|e| KeyError::Store {
            path: self.path.display().to_string(),
            message: format!("the record of key {name:?} does not read: {e}"),
        })
    }
}

/// The store holds hashes only, still: readable by its owner alone.
fn restrict(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    }
    #[cfg(not(unix))]
    let _ = path;
}

impl KeyStore for RedbKeys {
    fn get(&self, name: &str) -> Result<Option<KeyRecord>, KeyError> {
        let r = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = r.open_table(KEYS).map_err(|e| self.err(e))?;
        match t.get(name).map_err(|e| self.err(e))? {
            Some(v) => Ok(Some(self.decode(name, v.value())?)),
            None => Ok(None),
        }
    }

    fn put(&self, record: &KeyRecord) -> Result<(), KeyError> {
        let bytes = serde_json::to_vec(record).expect("a key record serializes");
        let w = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut t = w.open_table(KEYS).map_err(|e| self.err(e))?;
            t.insert(record.name.as_str(), bytes.as_slice())
                .map_err(|e| self.err(e))?;
        }
        w.commit().map_err(|e| self.err(e))
    }

    fn all(&self) -> Result<Vec<KeyRecord>, KeyError> {
        let r = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = r.open_table(KEYS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in t.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            out.push(self.decode(k.value(), v.value())?);
        }
        Ok(out)
    }

    fn describe(&self) -> String {
        format!("{}", self.path.display())
    }
}
