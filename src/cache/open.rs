//! Opening the store a config names: redb at `cache.path` (default: the platform data dir), or Redis
//! (`cache.backend: redis`, the `redis:` section) when relay is built with the `redis` feature.

use std::path::PathBuf;
use std::sync::Arc;

use super::{RedbStore, Store, StoreError, StoreOptions};
use crate::clock::Clock;
use crate::config::{CacheBackend, Config};

/// The redb file the config points at (`cache.path`, else `<data dir>/relay/cache.redb`).
pub fn redb_path(cfg: &Config) -> Result<PathBuf, StoreError> {
    match &cfg.cache.path {
        Some(p) => Ok(p.clone()),
        None => super::default_path().ok_or_else(|| StoreError::Io {
            path: PathBuf::from("cache.redb"),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no platform data directory; set cache.path",
            ),
        }),
    }
}

/// The store options of a config.
pub fn options(cfg: &Config, clock: Clock) -> StoreOptions {
    StoreOptions {
        max_bytes: cfg.cache.max_bytes,
        clock,
    }
}

/// Opens the configured store. redb's open blocks, so it runs on the blocking pool.
pub async fn open(cfg: &Config, clock: Clock) -> Result<Arc<dyn Store>, StoreError> {
    let opts = options(cfg, clock);
    match cfg.cache.backend {
        CacheBackend::Redb => {
            let path = redb_path(cfg)?;
            let store = tokio::task::spawn_blocking(move || RedbStore::open(path, opts))
                .await
                .map_err(|e| StoreError::backend("redb", e.to_string()))??;
            Ok(Arc::new(store))
        }
        #[cfg(feature = "redis")]
        CacheBackend::Redis => {
            let store = super::RedisStore::open(&redis_url(cfg), opts).await?;
            Ok(Arc::new(store))
        }
        #[cfg(not(feature = "redis"))]
        CacheBackend::Redis => Err(StoreError::backend(
            "redis",
            "relay was built without the redis feature",
        )),
    }
}

/// `redis://[:password@]host:port/db` from the `redis:` section.
pub fn redis_url(cfg: &Config) -> String {
    let r = &cfg.redis;
    let auth = match &r.password {
        Some(p) => format!(":{}@", percent_encode(p.expose())),
        None => String::new(),
    };
    let address = r.address.trim_start_matches("redis://");
    format!("redis://{auth}{address}/{}", r.db)
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
