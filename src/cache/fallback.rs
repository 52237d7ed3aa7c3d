//! The shared cache with a local net under it (`cache.backend: redis`): Redis while it answers,
//! the local redb file while it does not, and back by itself.
//!
//! - Redis unreachable at start: relay serves from the local file and connects to Redis in the
//!   background (every [`CONNECT_EVERY`]); once connected, the cache is shared again.
//! - Redis down or hung while serving: the first call that fails (an error, or no answer within
//!   the store's timeout) closes the [`Gate`]; every later call goes to the local file at once,
//!   without waiting on Redis, until the gate's probe finds Redis answering.
//!
//! Which one is in use shows in `relay_cache_backend{backend}` (1 for the one in use) and
//! `/healthz` (`"cache": "redis"` or `"redb"`). Entries recorded in the local file while Redis was
//! away stay there (served during later outages); they are not copied into Redis.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use futures_util::future::BoxFuture;

use super::entry::Entry;
use super::key::CacheKey;
use super::store::{ListFilter, ListItem, Stats, Store, StoreError, StoreOptions};
use super::RedisStore;
use crate::redis_gate::Gate;

/// How often relay tries to reach a Redis that was unreachable at start.
pub const CONNECT_EVERY: Duration = Duration::from_secs(2);

/// See the module docs.
pub struct Fallback {
    redis: Arc<ArcSwapOption<RedisStore>>,
    local: Arc<dyn Store>,
    gate: Arc<Gate>,
}

impl Fallback {
    /// Opens Redis at `url` over `local`. `on_change(redis_in_use)` reports which one serves.
    pub async fn open(
        url: String,
        opts: StoreOptions,
        local: Arc<dyn Store>,
        on_change: impl Fn(bool) + Send + Sync + Clone + 'static,
    ) -> Fallback {
        let redis = Arc::new(ArcSwapOption::empty());
        let report = on_change.clone();
        let gate = Gate::new("cache", on_change);
        match RedisStore::open(&url, opts.clone()).await {
            Ok(store) => {
                redis.store(Some(Arc::new(store)));
                report(true);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cache: Redis unreachable at start; using the local redb store until it can be reached (trying every {} s)", CONNECT_EVERY.as_secs());
                report(false);
                let slot = Arc::downgrade(&redis);
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(CONNECT_EVERY).await;
                        let Some(slot) = slot.upgrade() else { return };
                        if let Ok(store) = RedisStore::open(&url, opts.clone()).await {
                            slot.store(Some(Arc::new(store)));
                            tracing::info!("cache: Redis reached; the cache is shared again");
                            report(true);
                            return;
                        }
                    }
                });
            }
        }
        Fallback { redis, local, gate }
    }

    /// Redis when it is connected and the gate is open.
    fn redis(&self) -> Option<Arc<RedisStore>> {
        if !self.gate.open() {
            return None;
        }
        self.redis.load_full()
    }

    /// What a Redis call's result says about Redis: a backend error closes the gate.
    fn judge<T>(&self, redis: &RedisStore, r: &Result<T, StoreError>) -> bool {
        match r {
            Err(StoreError::Backend { source, .. }) => {
                self.gate.failed(redis.connection(), &source.to_string());
                false
            }
            _ => {
                self.gate.succeeded();
                true
            }
        }
    }
}

/// One store call: on Redis when it serves (falling to the local file when that call fails), else
/// on the local file.
macro_rules! either {
    ($self:ident, $s:ident => $call:expr) => {
        Box::pin(async move {
            if let Some(r) = $self.redis() {
                let result = {
                    let $s: &dyn Store = &*r;
                    $call.await
                };
                if $self.judge(&r, &result) {
                    return result;
                }
            }
            let $s: &dyn Store = &*$self.local;
            $call.await
        })
    };
}

impl Store for Fallback {
    fn get(&self, key: CacheKey) -> BoxFuture<'_, Result<Option<Entry>, StoreError>> {
        either!(self, s => s.get(key))
    }

    fn get_shared(&self, key: CacheKey) -> BoxFuture<'_, Result<Option<Arc<Entry>>, StoreError>> {
        either!(self, s => s.get_shared(key))
    }

    fn put(&self, key: CacheKey, entry: Entry) -> Result<(), StoreError> {
        match self.redis() {
            Some(r) => r.put(key, entry),
            None => self.local.put(key, entry),
        }
    }

    fn remove(&self, key: CacheKey) -> BoxFuture<'_, Result<bool, StoreError>> {
        either!(self, s => s.remove(key))
    }

    fn list(&self, filter: ListFilter) -> BoxFuture<'_, Result<Vec<ListItem>, StoreError>> {
        either!(self, s => s.list(filter.clone()))
    }

    fn find_prefix(
        &self,
        hex_prefix: &str,
    ) -> BoxFuture<'_, Result<Option<(CacheKey, Entry)>, StoreError>> {
        let prefix = hex_prefix.to_string();
        either!(self, s => s.find_prefix(&prefix))
    }

    fn clear(&self, model: Option<String>) -> BoxFuture<'_, Result<u64, StoreError>> {
        either!(self, s => s.clear(model.clone()))
    }

    fn stats(&self) -> BoxFuture<'_, Result<Stats, StoreError>> {
        either!(self, s => s.stats())
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        either!(self, s => s.flush())
    }

    fn close(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            if let Some(r) = self.redis.load_full() {
                let _ = r.close().await;
            }
            self.local.close().await
        })
    }

    fn backend(&self) -> &'static str {
        match self.redis() {
            Some(_) => "redis",
            None => "redb",
        }
    }
}
