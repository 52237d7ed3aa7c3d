//! A small concurrent memo of values derived from 32-byte digests (cache keys, raw-request
//! digests), for work that is cheap to redo but worth skipping on a hot path: 16 mutex-guarded
//! shards chosen by the key's first byte, each bounded by a budget over the costs of what it
//! holds. A shard that would go over its budget starts over; a value costing more than a quarter
//! of a shard's budget is not kept. Each lock is held for one map operation, never while a value
//! is made.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use crate::shard::{lock, Sharded};

const SHARDS: usize = 16;

struct Shard<V> {
    map: HashMap<[u8; 32], (V, u64)>,
    used: u64,
}

/// See the module docs.
pub struct Memo<V> {
    shards: Sharded<Mutex<Shard<V>>>,
    budget: u64,
}

impl<V: Clone> Memo<V> {
    /// A memo whose shards each hold values costing `budget_per_shard` in all.
    pub fn new(budget_per_shard: u64) -> Memo<V> {
        Memo {
            shards: Sharded::new(SHARDS, || {
                Mutex::new(Shard {
                    map: HashMap::new(),
                    used: 0,
                })
            }),
            budget: budget_per_shard,
        }
    }

    fn shard(&self, key: &[u8; 32]) -> MutexGuard<'_, Shard<V>> {
        lock(self.shards.by_bytes(key))
    }

    /// The value kept under `key` when `valid` accepts it; otherwise the value `make` returns (with
    /// its cost), kept in its place.
    pub fn get_or_make(
        &self,
        key: [u8; 32],
        valid: impl FnOnce(&V) -> bool,
        make: impl FnOnce() -> (V, u64),
    ) -> V {
        if let Some((v, _)) = self.shard(&key).map.get(&key) {
            if valid(v) {
                return v.clone();
            }
        }
        let (value, cost) = make();
        if cost <= self.budget / 4 {
            let mut shard = self.shard(&key);
            if shard.used + cost > self.budget {
                shard.map.clear();
                shard.used = 0;
            }
            if let Some((_, old)) = shard.map.insert(key, (value.clone(), cost)) {
                shard.used = shard.used.saturating_sub(old);
            }
            shard.used += cost;
        }
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_valid_values_remakes_invalid_ones_and_stays_in_budget() {
        let memo: Memo<u32> = Memo::new(8);
        let k = |n: u8| [n; 32];
        let made = std::cell::Cell::new(0u32);
        let get = |key, valid: bool, value| {
            memo.get_or_make(
                key,
                |_| valid,
                || {
                    made.set(made.get() + 1);
                    (value, 2)
                },
            )
        };
        assert_eq!(get(k(1), true, 10), 10);
        assert_eq!(get(k(1), true, 99), 10, "kept");
        assert_eq!(get(k(1), false, 11), 11, "remade when no longer valid");
        assert_eq!(get(k(1), true, 99), 11, "and the new one kept");
        assert_eq!(made.get(), 2);
        // Shard 1 holds 2 of 8; three more values of cost 2 fill it, the next starts it over.
        for n in [17, 33, 49] {
            get(k(n), true, u32::from(n));
        }
        assert_eq!(memo.shard(&k(1)).used, 8);
        get(k(65), true, 65);
        assert_eq!(memo.shard(&k(1)).map.len(), 1);
        assert_eq!(memo.shard(&k(1)).used, 2);
        // Over a quarter of the budget: returned, not kept.
        assert_eq!(memo.get_or_make(k(2), |_| true, || (7, 3)), 7);
        assert!(memo.shard(&k(2)).map.is_empty());
    }
}
