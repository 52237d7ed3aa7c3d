//! Which keys the redb file may hold, kept in memory, so a lookup for a key the file certainly
//! lacks (every request never asked before) is a miss at once, without a trip to the blocking pool
//! and a read transaction.
//!
//! One `u64` per entry: the key's first 8 bytes (keys are blake3 digests, so these are uniform), in
//! sharded sets. It never says "absent" for a key the file holds: it is filled from the file when
//! the store opens, the writer adds the keys of each batch it commits before their queued copies
//! are dropped (until then a lookup finds them queued), and removes keys only after the transaction
//! that removed them committed, before adding that batch's puts. A false "may hold" (two keys
//! sharing 8 bytes; a key put and then removed in one batch) costs the disk read every lookup cost
//! before.

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard};

use super::key::CacheKey;
use crate::shard::{lock, Sharded};

const SHARDS: usize = 16;

pub(crate) struct Present {
    shards: Sharded<Mutex<HashSet<u64>>>,
}

impl Default for Present {
    fn default() -> Present {
        Present {
            shards: Sharded::with_default(SHARDS),
        }
    }
}

impl Present {
    fn prefix(key: &CacheKey) -> u64 {
        let b = key.as_bytes();
        u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    }

    fn shard(&self, prefix: u64) -> MutexGuard<'_, HashSet<u64>> {
        lock(self.shards.by_hash(prefix >> 60))
    }

    /// `false` only when the file does not hold `key`.
    pub(crate) fn may_hold(&self, key: &CacheKey) -> bool {
        let p = Self::prefix(key);
        self.shard(p).contains(&p)
    }

    pub(crate) fn insert(&self, key: &CacheKey) {
        let p = Self::prefix(key);
        self.shard(p).insert(p);
    }

    /// Forgets keys the file no longer holds (a key sharing another's prefix goes too: a lookup
    /// for that one is then a miss until it is written again, never a wrong answer).
    pub(crate) fn remove_all(&self, keys: &[CacheKey]) {
        for key in keys {
            let p = Self::prefix(key);
            self.shard(p).remove(&p);
        }
    }

    /// Adds every key `other` holds (the writer's refill after it reopened the file).
    pub(crate) fn insert_all(&self, other: &Present) {
        for (mine, theirs) in self.shards.iter().zip(other.shards.iter()) {
            let theirs = lock(theirs);
            lock(mine).extend(theirs.iter().copied());
        }
    }

    pub(crate) fn clear(&self) {
        for s in self.shards.iter() {
            lock(s).clear();
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_what_was_inserted_until_removed_or_cleared() {
        let p = Present::default();
        let (a, b) = (
            CacheKey::from_bytes([1; 32]),
            CacheKey::from_bytes([200; 32]),
        );
        assert!(!p.may_hold(&a));
        p.insert(&a);
        p.insert(&b);
        assert!(p.may_hold(&a) && p.may_hold(&b));
        p.remove_all(&[a]);
        assert!(!p.may_hold(&a) && p.may_hold(&b));
        p.clear();
        assert!(!p.may_hold(&b));
        assert_eq!(p.len(), 0);
    }
}
