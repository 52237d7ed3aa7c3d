//! The [`Store`] trait every cache backend implements, and what it shares: options, errors.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{mpsc, oneshot};

use futures_util::future::BoxFuture;

use super::entry::{Entry, EntryMeta};
use super::key::CacheKey;
use crate::clock::Clock;
use crate::shard::Sharded;

/// A cache backend. Shared as `Arc<dyn Store>`; every method may be called from async code
/// concurrently: none blocks the calling thread on disk or network.
pub trait Store: Send + Sync + 'static {
    /// The entry under `key`, if present and not expired. An expired entry is a miss and is removed
    /// in the background. A hit counts towards the entry's `hits` lazily (batched with later
    /// writes, never awaited, dropped if the write queue is full); the returned `meta.hits` does
    /// not include this hit. An entry queued by [`Store::put`] is found even before it is
    /// committed. Any error means "treat as a miss".
    fn get(&self, key: CacheKey) -> BoxFuture<'_, Result<Option<Entry>, StoreError>>;

    /// [`Store::get`], sharing the entry instead of copying it (the request path's hit): the same
    /// lookup and hit counting, but `meta.hits` is whatever the stored copy holds, which may lag.
    /// A store that keeps decoded entries in memory hands out its own `Arc`, so callers can tell
    /// an unchanged entry by [`Arc::ptr_eq`]. Default: `get`, wrapped.
    fn get_shared(&self, key: CacheKey) -> BoxFuture<'_, Result<Option<Arc<Entry>>, StoreError>> {
        Box::pin(async move { Ok(self.get(key).await?.map(Arc::new)) })
    }

    /// Whether [`Store::get_shared`] hands out the store's own `Arc`s (so an unchanged entry comes
    /// back [`Arc::ptr_eq`], and work derived from it can be kept). Default: false.
    fn shares_entries(&self) -> bool {
        false
    }

    /// Stores `entry` under `key`, replacing any entry there. Never waits for disk or network: the
    /// entry is queued for the backend's single writer, and visible to [`Store::get`] at once.
    ///
    /// The entry's `meta.expires_ms` is its expiry as given (`None`: it never expires); the store
    /// adds no TTL of its own, so whoever puts an entry owns its lifetime (the cache stage, from
    /// `cache.ttl` or `x-relay-cache-ttl`, as the config is now).
    /// Fails without storing when the entry alone exceeds the size bound
    /// ([`StoreError::TooLarge`]), the write queue is full ([`StoreError::QueueFull`]), or the
    /// store is closed. A write that fails later (disk full) is logged and counted in
    /// [`Stats::write_errors`].
    fn put(&self, key: CacheKey, entry: Entry) -> Result<(), StoreError>;

    /// Removes the entry under `key`; resolves once removed. `true` when there was one.
    fn remove(&self, key: CacheKey) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// Unexpired entries, newest first (by `created_ms`), with each entry's accounted size
    /// ([`Entry::size`]). For `relay cache ls`: reads every entry's meta, not for the request path.
    fn list(&self, filter: ListFilter) -> BoxFuture<'_, Result<Vec<ListItem>, StoreError>>;

    /// The one unexpired entry whose hex key starts with `hex_prefix` (1 to 64 hex characters,
    /// either case). `Ok(None)` when none matches; [`StoreError::AmbiguousPrefix`] when several do;
    /// [`StoreError::BadKey`] when the prefix is not hex.
    fn find_prefix(
        &self,
        hex_prefix: &str,
    ) -> BoxFuture<'_, Result<Option<(CacheKey, Entry)>, StoreError>>;

    /// Removes every entry, or only those whose model is `model`; resolves once done, with the
    /// number removed. Writes queued before the call are applied first.
    fn clear(&self, model: Option<String>) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// Totals over stored entries. Expired entries count until the writer sweeps them (each write
    /// batch does); hits count once committed.
    fn stats(&self) -> BoxFuture<'_, Result<Stats, StoreError>>;

    /// Resolves when every write queued before the call (puts, removals, hit counts) is committed.
    /// For tests, `relay cache` commands and shutdown.
    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Commits everything queued, stops the writer and releases the backend (the redb file lock).
    /// Later calls fail with [`StoreError::Closed`]. Call at shutdown; dropping the store without it
    /// still commits queued writes, but in the background.
    fn close(&self) -> BoxFuture<'_, Result<(), StoreError>>;

    /// The backend's name, for the `backend` metric label and logs: `redb` or `redis`.
    fn backend(&self) -> &'static str;
}

/// One row of [`Store::list`]: the key, the entry's meta (hits included), and its accounted size in
/// bytes ([`Entry::size`]).
pub type ListItem = (CacheKey, EntryMeta, u64);

/// Which entries [`Store::list`] returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Only entries recorded for this model (exact match).
    pub model: Option<String>,
    /// Only entries recorded in this agent session (exact match).
    pub session: Option<String>,
    /// At most this many (the newest); all when `None`.
    pub limit: Option<usize>,
}

/// A store writer's health: the puts lost to failed commits (what [`Stats::write_errors`]
/// reports) and whether writes fail now, so an outage is logged once when it begins and once when
/// writes succeed again, not once per batch.
pub(crate) struct WriteHealth {
    backend: &'static str,
    lost: Arc<AtomicU64>,
    failing: bool,
}

impl ListFilter {
    /// Whether an entry's meta passes the model and session filters.
    pub fn admits(&self, meta: &EntryMeta) -> bool {
        (self.model.is_none() || meta.model == self.model)
            && (self.session.is_none() || meta.recorded.session == self.session)
    }
}

impl WriteHealth {
    /// `lost`: the counter the store reads for [`Stats::write_errors`].
    pub(crate) fn new(backend: &'static str, lost: Arc<AtomicU64>) -> WriteHealth {
        WriteHealth {
            backend,
            lost,
            failing: false,
        }
    }

    /// After a batch's commit; `puts` counts the batch's puts (lost when it failed).
    pub(crate) fn committed<T, E: fmt::Display>(
        &mut self,
        result: &Result<T, E>,
        puts: impl FnOnce() -> usize,
    ) {
        match result {
            Ok(_) if self.failing => {
                self.failing = false;
                tracing::info!(backend = self.backend, "cache writes succeed again");
            }
            Ok(_) => {}
            Err(e) => {
                let lost = puts();
                self.lost.fetch_add(lost as u64, Ordering::Relaxed);
                if !self.failing {
                    self.failing = true;
                    tracing::warn!(backend = self.backend, error = %e, lost, "cache writes fail; entries are not stored until writes succeed again");
                }
            }
        }
    }
}

/// Totals reported by [`Store::stats`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Stored entries.
    pub entries: u64,
    /// Their accounted bytes ([`Entry::size`]), what `max_bytes` bounds.
    pub bytes: u64,
    /// `created_ms` of the oldest entry, unix milliseconds.
    pub oldest_ms: Option<u64>,
    /// `created_ms` of the newest entry, unix milliseconds.
    pub newest_ms: Option<u64>,
    /// Hits summed over the stored entries.
    pub hits: u64,
    /// Writes lost since this store was opened (a batch that failed to commit).
    pub write_errors: u64,
}

/// Options every backend takes at open.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Size bound over [`Entry::size`] (`cache.max_bytes`); the oldest entries are evicted past it.
    /// Default: 1 GiB.
    pub max_bytes: u64,
    /// Where "now" comes from. Default: the system clock.
    pub clock: Clock,
}

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions {
            max_bytes: 1 << 30,
            clock: Clock::system(),
        }
    }
}

/// The largest entry any backend takes, whatever `max_bytes` says: 2 GiB.
const MAX_ENTRY_BYTES: u64 = 1 << 31;

impl StoreOptions {
    /// Rejects an entry that could never fit, before it is queued.
    pub(crate) fn check_size(&self, entry: &Entry) -> Result<u64, StoreError> {
        let size = entry.size();
        // The private codec stores lengths as u32, and redb values stay under 3 GiB.
        let max = self.max_bytes.min(MAX_ENTRY_BYTES);
        if size > max {
            return Err(StoreError::TooLarge { size, max });
        }
        Ok(size)
    }
}

/// What a store's writer task is asked to do (both backends queue writes to one writer).
pub(crate) enum WriteOp {
    Put {
        key: CacheKey,
        entry: Arc<Entry>,
        size: u64,
        seq: u64,
    },
    /// Count one hit (the Redis backend; redb counts hits off the queue).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Hit(CacheKey),
    /// Periodic: commit the hits counted off the queue, make lazy commits durable (redb).
    Tick,
    /// Remove the entry if it has expired by commit time (a read found it expired).
    Expire(CacheKey),
    Remove {
        key: CacheKey,
        reply: oneshot::Sender<Result<bool, StoreError>>,
    },
    Clear {
        model: Option<String>,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    Flush(oneshot::Sender<Result<(), StoreError>>),
    Close(oneshot::Sender<Result<(), StoreError>>),
}

impl WriteOp {
    /// Whether applying the op writes anything.
    pub(crate) fn mutates(&self) -> bool {
        !matches!(self, WriteOp::Flush(_) | WriteOp::Close(_) | WriteOp::Tick)
    }

    /// Whether a caller waits for the op's answer (it is committed at once, durably in redb).
    pub(crate) fn awaited(&self) -> bool {
        matches!(
            self,
            WriteOp::Remove { .. } | WriteOp::Clear { .. } | WriteOp::Flush(_) | WriteOp::Close(_)
        )
    }
}

/// Queued puts of the keys whose first byte falls in one shard: key → (put sequence number, entry).
type Shard = Mutex<HashMap<CacheKey, (u64, Arc<Entry>)>>;

/// Entries queued but not yet committed, visible to `get`. Sharded by the key so concurrent
/// requests rarely meet on a lock, and each lock is held for one map operation.
pub(crate) struct Pending {
    shards: Sharded<Shard>,
}

impl Default for Pending {
    fn default() -> Pending {
        Pending {
            shards: Sharded::with_default(16),
        }
    }
}

impl Pending {
    fn shard(&self, key: &CacheKey) -> MutexGuard<'_, HashMap<CacheKey, (u64, Arc<Entry>)>> {
        crate::shard::lock(self.shards.by_bytes(key.as_bytes()))
    }

    pub(crate) fn insert(&self, key: CacheKey, seq: u64, entry: Arc<Entry>) {
        self.shard(&key).insert(key, (seq, entry));
    }

    pub(crate) fn get(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        self.shard(key).get(key).map(|(_, e)| e.clone())
    }

    /// Makes `entry` visible to reads at once and queues its put (number `seq`) for the writer,
    /// which settles it after the commit. A full or closed queue forgets it again: not stored.
    pub(crate) fn queue_put(
        &self,
        tx: &mpsc::Sender<WriteOp>,
        seq: u64,
        key: CacheKey,
        entry: Arc<Entry>,
        size: u64,
    ) -> Result<(), StoreError> {
        self.insert(key, seq, entry.clone());
        tx.try_send(WriteOp::Put {
            key,
            entry,
            size,
            seq,
        })
        .map_err(|e| {
            self.settle(&key, seq);
            match e {
                mpsc::error::TrySendError::Full(_) => StoreError::QueueFull,
                mpsc::error::TrySendError::Closed(_) => StoreError::Closed,
            }
        })
    }

    /// Forgets the queued put `seq` of `key`, unless a later put replaced it.
    pub(crate) fn settle(&self, key: &CacheKey, seq: u64) {
        let mut shard = self.shard(key);
        if shard.get(key).is_some_and(|(s, _)| *s == seq) {
            shard.remove(key);
        }
    }
}

/// What can go wrong in a cache store. For the request path every error means "treat as a miss"
/// (or "don't store"); the variants matter to the CLI and to logs.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The cache file is held by another process (redb allows one): use that process's admin API.
    #[error("cache store {} is in use by another process", path.display())]
    Locked { path: PathBuf },
    /// The store was closed ([`Store::close`]) or its writer stopped.
    #[error("cache store is closed")]
    Closed,
    /// Too many writes are queued; this one was dropped.
    #[error("cache write queue is full; entry not stored")]
    QueueFull,
    /// The entry alone is bigger than the size bound.
    #[error("entry of {size} bytes exceeds the cache bound of {max} bytes")]
    TooLarge { size: u64, max: u64 },
    /// A key or key prefix that is not hex.
    #[error("invalid cache key {input:?}: {reason}")]
    BadKey { input: String, reason: String },
    /// More than one entry starts with the prefix.
    #[error("cache key prefix {prefix} matches several entries; give more characters")]
    AmbiguousPrefix { prefix: String },
    /// A filesystem error (creating the directory, moving a corrupt file aside).
    #[error("cache store {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A stored entry could not be decoded.
    #[error("cache entry {key} is damaged: {reason}")]
    Corrupt { key: String, reason: String },
    /// The backend failed (a redb transaction, a Redis command).
    #[error("cache {backend} error: {source}")]
    Backend {
        backend: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl StoreError {
    pub(crate) fn backend(
        backend: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> StoreError {
        StoreError::Backend {
            backend,
            source: source.into(),
        }
    }

    pub(crate) fn bad_key(input: &str, reason: impl fmt::Display) -> StoreError {
        StoreError::BadKey {
            input: input.to_owned(),
            reason: reason.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_check() {
        let opts = StoreOptions {
            max_bytes: 100,
            clock: Clock::system(),
        };
        let big = crate::cache::entry::tests::json_entry("m", 1, &"x".repeat(200));
        assert!(matches!(
            opts.check_size(&big),
            Err(StoreError::TooLarge { max: 100, .. })
        ));
    }
}
