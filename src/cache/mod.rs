//! The response cache's store layer: keys, entries, and the stores that persist them.
//!
//! What comes in: a [`KeyInput`] (provider, method, path, body, scope, namespace) that a
//! [`KeyBuilder`] turns into a [`CacheKey`], and complete responses as [`Entry`] values. What goes
//! out: entries found by key, listings, stats, and JSONL export lines. Nothing here knows about HTTP
//! serving: the proxy decides what is cacheable, tees streams, and replays hits on top of the
//! [`Store`] trait.
//!
//! Design, in a few lines:
//! - [`Store`] is dyn-compatible (`Arc<dyn Store>`); its async methods return boxed futures.
//! - [`Store::put`] never waits for disk: the entry is queued to ONE writer (a thread for redb) that
//!   commits queued puts, removals and hit counts in one transaction per batch. A queued entry is
//!   visible to [`Store::get`] at once. [`Store::flush`] waits until everything queued is committed.
//! - Reads run on tokio's blocking pool, never on the async workers.
//! - Time comes from an injected [`Clock`](crate::clock::Clock) (unix milliseconds), so TTL tests need no sleeps.
//! - The redb file records its schema version and [`KEY_VERSION`]; a mismatch, or a file redb cannot
//!   open, is moved aside with one warning and an empty store starts: never a crash loop. A file held
//!   by another process is [`StoreError::Locked`], not corruption.

mod canonical;
mod codec;
pub mod diff;
pub mod entry;
#[cfg(feature = "redis")]
pub mod fallback;
mod hot;
pub mod key;
pub(crate) mod memo;
pub mod open;
pub mod portable;
mod present;
pub mod redb_store;
/// The test harness's `redis-server` child process, shared with the integration tests.
#[cfg(all(test, feature = "redis"))]
#[path = "../../tests/common/redis.rs"]
mod redis_server;
#[cfg(feature = "redis")]
pub mod redis_store;
pub mod store;
#[cfg(test)]
pub(crate) mod tests;

pub use entry::{CachedBody, Entry, EntryMeta, JsonlError, SseEvent};
pub use key::{
    CacheKey, KeyBuilder, KeyInput, KeyMemo, KeyParseError, KeyPrefix, Scope, KEY_VERSION,
};
pub use redb_store::{default_path, RedbStore};
#[cfg(feature = "redis")]
pub use redis_store::RedisStore;
pub use store::{ListFilter, ListItem, Stats, Store, StoreError, StoreOptions};
