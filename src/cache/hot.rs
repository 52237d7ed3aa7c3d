//! The in-memory front of the redb store: recently written or read entries, kept decoded.
//!
//! A hit found here is answered without a trip to the blocking pool, a read transaction or a
//! decode, which is most of what a disk hit costs. The front is bounded in bytes ([`Hot::new`]);
//! past its budget a shard drops arbitrary entries of its own (HashMap order), which is as good as
//! LRU for a cache whose misses are cheap reads from disk. Sharded by the key's first byte so
//! concurrent requests rarely meet on a lock, and each lock is held for one map operation.
//!
//! Staying consistent with the file: every entry the writer removes (remove, clear, expiry sweep,
//! eviction) is dropped from here after its transaction commits, and the `generation` counter moves
//! first, so a read that fetched an entry from disk before the removal cannot put it back
//! ([`Hot::generation`] / [`Hot::insert_if`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::entry::Entry;
use super::key::CacheKey;
use crate::shard::{lock, Sharded};

const SHARDS: usize = 16;

/// The most bytes the front holds by default, whatever `cache.max_bytes` allows on disk.
pub const DEFAULT_BUDGET: u64 = 64 * 1024 * 1024;

#[derive(Default)]
struct Shard {
    entries: HashMap<CacheKey, (Arc<Slot>, u64)>,
    bytes: u64,
}

/// One entry in the front, with its hit count (committed and queued alike).
pub(crate) struct Slot {
    pub(crate) entry: Arc<Entry>,
    hits: AtomicU64,
}

impl Slot {
    /// Counts a hit: the entry as `get` returns it, with the hits before this one.
    pub(crate) fn hit(&self) -> Entry {
        let mut entry = Entry::clone(&self.entry);
        entry.meta.hits = self.hits.fetch_add(1, Ordering::Relaxed);
        entry
    }

    /// Counts a hit: the entry shared, as `get_shared` returns it (its `meta.hits` lags).
    pub(crate) fn hit_shared(&self) -> Arc<Entry> {
        self.hits.fetch_add(1, Ordering::Relaxed);
        self.entry.clone()
    }
}

/// See the module docs.
pub(crate) struct Hot {
    shards: Sharded<Mutex<Shard>>,
    per_shard: u64,
    generation: AtomicU64,
}

impl Hot {
    /// A front holding at most `budget` bytes of entries (0 turns it off).
    pub(crate) fn new(budget: u64) -> Hot {
        Hot {
            shards: Sharded::with_default(SHARDS),
            per_shard: budget / SHARDS as u64,
            generation: AtomicU64::new(0),
        }
    }

    fn shard(&self, key: &CacheKey) -> MutexGuard<'_, Shard> {
        lock(self.shards.by_bytes(key.as_bytes()))
    }

    pub(crate) fn get(&self, key: &CacheKey) -> Option<Arc<Slot>> {
        self.shard(key).entries.get(key).map(|(e, _)| e.clone())
    }

    /// Read before a disk read whose result may go into the front with [`Hot::insert_if`].
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Keeps `entry` (of `size` bytes, `hits` so far), replacing what `key` had. Entries over a
    /// quarter of a shard's budget are not kept (nor is the old one).
    pub(crate) fn insert(&self, key: CacheKey, entry: Arc<Entry>, size: u64, hits: u64) {
        let mut shard = self.shard(&key);
        self.insert_locked(&mut shard, key, entry, size, hits);
    }

    /// [`Hot::insert`], unless an invalidation happened since `generation` was read.
    pub(crate) fn insert_if(
        &self,
        generation: u64,
        key: CacheKey,
        entry: Arc<Entry>,
        size: u64,
        hits: u64,
    ) {
        let mut shard = self.shard(&key);
        if self.generation.load(Ordering::SeqCst) == generation {
            self.insert_locked(&mut shard, key, entry, size, hits);
        }
    }

    fn insert_locked(
        &self,
        shard: &mut Shard,
        key: CacheKey,
        entry: Arc<Entry>,
        size: u64,
        hits: u64,
    ) {
        if let Some((_, old)) = shard.entries.remove(&key) {
            shard.bytes -= old;
        }
        if size > self.per_shard / 4 {
            return;
        }
        while shard.bytes + size > self.per_shard {
            let Some(victim) = shard.entries.keys().next().copied() else {
                break;
            };
            if let Some((_, s)) = shard.entries.remove(&victim) {
                shard.bytes -= s;
            }
        }
        shard.bytes += size;
        let hits = AtomicU64::new(hits);
        shard
            .entries
            .insert(key, (Arc::new(Slot { entry, hits }), size));
    }

    /// Drops `keys` (after the writer removed them from the file).
    pub(crate) fn remove_all(&self, keys: &[CacheKey]) {
        if keys.is_empty() {
            return;
        }
        self.generation.fetch_add(1, Ordering::SeqCst);
        for key in keys {
            let mut shard = self.shard(key);
            if let Some((_, s)) = shard.entries.remove(key) {
                shard.bytes -= s;
            }
        }
    }

    /// Drops everything.
    pub(crate) fn clear(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            shard.entries.clear();
            shard.bytes = 0;
        }
    }

    /// Bytes held (for tests).
    #[cfg(test)]
    fn bytes(&self) -> u64 {
        self.shards.iter().map(|s| lock(s).bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::entry::tests::json_entry;

    fn key(first: u8, n: u8) -> CacheKey {
        let mut b = [n; 32];
        b[0] = first;
        CacheKey::from_bytes(b)
    }

    #[test]
    fn bounded_per_shard_and_replaces() {
        let hot = Hot::new(16 * 1000);
        let e = Arc::new(json_entry("gpt-4o", 0, "{}"));
        // One shard (first byte 0) holds 1000 bytes: four entries of 250, not five.
        for n in 0..5 {
            hot.insert(key(0, n), e.clone(), 250, 0);
        }
        assert_eq!(hot.bytes(), 1000);
        // Replacing a key does not count it twice.
        let kept = (0..5).find(|n| hot.get(&key(0, *n)).is_some()).unwrap();
        hot.insert(key(0, kept), e.clone(), 100, 0);
        assert_eq!(hot.bytes(), 850);
        // Too big for the front: not kept, and the old value goes.
        hot.insert(key(0, kept), e.clone(), 251, 0);
        assert!(hot.get(&key(0, kept)).is_none());
        assert_eq!(hot.bytes(), 750);
    }

    #[test]
    fn an_invalidation_stops_a_stale_insert() {
        let hot = Hot::new(DEFAULT_BUDGET);
        let e = Arc::new(json_entry("gpt-4o", 0, "{}"));
        let before = hot.generation();
        hot.remove_all(&[key(1, 1)]);
        hot.insert_if(before, key(1, 1), e.clone(), 10, 0);
        assert!(hot.get(&key(1, 1)).is_none(), "read before the removal");
        hot.insert_if(hot.generation(), key(1, 1), e.clone(), 10, 7);
        let slot = hot.get(&key(1, 1)).unwrap();
        assert_eq!(slot.hit().meta.hits, 7);
        assert_eq!(slot.hit().meta.hits, 8);
        hot.clear();
        assert!(hot.get(&key(1, 1)).is_none());
        assert_eq!(hot.bytes(), 0);
    }
}
