//! The one sharded-lock type of relay's concurrent maps (the cache's hot front, pending writes,
//! key presence and memos, single flights, rate-limit buckets, budget spend, key labels): a fixed
//! number of locks, each guarding its part, picked by the key, so no one lock sees every request.
//! At the bottom of the tree: it knows nothing of what it holds.

use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// `n` shards of `L` (a `Mutex<T>`, an `RwLock<T>`, or a struct of them).
#[derive(Debug)]
pub struct Sharded<L> {
    shards: Box<[L]>,
    hasher: RandomState,
}

impl<L> Sharded<L> {
    /// `n` shards (at least one), each made by `make`.
    pub fn new(n: usize, make: impl FnMut() -> L) -> Sharded<L> {
        let mut make = make;
        Sharded {
            shards: (0..n.max(1)).map(|_| make()).collect(),
            hasher: RandomState::new(),
        }
    }

    /// `n` shards, each `L::default()`.
    pub fn with_default(n: usize) -> Sharded<L>
    where
        L: Default,
    {
        Sharded::new(n, L::default)
    }

    /// The shard of a key that is already a hash (a cache key, a bucket id): its first bytes pick
    /// it, the same in every instance.
    pub fn by_bytes(&self, key: &[u8]) -> &L {
        let mut first = [0u8; 8];
        let n = key.len().min(8);
        first[..n].copy_from_slice(&key[..n]);
        self.by_hash(u64::from_le_bytes(first))
    }

    /// The shard of a hash value.
    pub fn by_hash(&self, hash: u64) -> &L {
        &self.shards[(hash % self.shards.len() as u64) as usize]
    }

    /// The shard of any hashable key (hashed with this instance's random state).
    pub fn by_key<K: Hash + ?Sized>(&self, key: &K) -> &L {
        self.by_hash(self.hasher.hash_one(key))
    }

    /// Every shard, in order (to sum, sweep or clear them one lock at a time).
    pub fn iter(&self) -> std::slice::Iter<'_, L> {
        self.shards.iter()
    }

    pub fn len(&self) -> usize {
        self.shards.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }
}

/// Locks `m`, taking over a lock a panicking thread left (the data is plain maps and counters:
/// still consistent enough to serve).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// [`lock`] for reading an `RwLock`.
pub fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

/// [`lock`] for writing an `RwLock`.
pub fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_pick_stable_shards() {
        let s: Sharded<Mutex<Vec<u8>>> = Sharded::with_default(16);
        assert_eq!(s.len(), 16);
        let a = s.by_bytes(&[7; 32]) as *const _;
        assert_eq!(a, s.by_bytes(&[7; 32]) as *const _);
        assert_eq!(s.by_hash(17) as *const _, s.by_hash(1) as *const _);
        let k = s.by_key("key-1") as *const _;
        assert_eq!(k, s.by_key("key-1") as *const _);
        lock(s.by_key("key-1")).push(1);
        assert_eq!(s.iter().map(|m| lock(m).len()).sum::<usize>(), 1);
        let one: Sharded<Mutex<()>> = Sharded::with_default(0);
        assert_eq!(one.len(), 1, "at least one shard");
    }
}
