//! The tables of one write transaction: entries, their info rows and the two indexes (by creation,
//! by expiry), with the counters in `meta` kept in step.

use super::*;

/// An entry's row in `info`.
#[derive(Clone, Copy)]
pub(super) struct Info {
    pub(super) created: u64,
    /// [`NEVER`] when the entry does not expire.
    pub(super) expires: u64,
    pub(super) size: u64,
    pub(super) hits: u64,
}

impl From<(u64, u64, u64, u64)> for Info {
    fn from((created, expires, size, hits): (u64, u64, u64, u64)) -> Info {
        Info {
            created,
            expires,
            size,
            hits,
        }
    }
}

impl Info {
    pub(super) fn row(self) -> (u64, u64, u64, u64) {
        (self.created, self.expires, self.size, self.hits)
    }
}

/// The tables of one write transaction, and the running totals.
pub(super) struct Tables<'txn> {
    pub(super) entries: redb::Table<'txn, [u8; 32], &'static [u8]>,
    pub(super) info: redb::Table<'txn, [u8; 32], (u64, u64, u64, u64)>,
    pub(super) by_created: redb::Table<'txn, (u64, [u8; 32]), ()>,
    pub(super) by_expiry: redb::Table<'txn, (u64, [u8; 32]), ()>,
    pub(super) meta: redb::Table<'txn, &'static str, u64>,
    pub(super) count: u64,
    pub(super) bytes: u64,
    pub(super) hits: u64,
    /// Keys removed by [`Tables::drop_entry`].
    pub(super) gone: Vec<CacheKey>,
    /// Set by a full clear.
    pub(super) cleared: bool,
}

impl<'txn> Tables<'txn> {
    pub(super) fn open(txn: &'txn redb::WriteTransaction) -> Result<Tables<'txn>, StoreError> {
        let meta = txn.open_table(META).map_err(db_err)?;
        let total = |name: &str| -> Result<u64, StoreError> {
            Ok(meta.get(name).map_err(db_err)?.map_or(0, |v| v.value()))
        };
        let (count, bytes, hits) = (total(META_ENTRIES)?, total(META_BYTES)?, total(META_HITS)?);
        Ok(Tables {
            entries: txn.open_table(ENTRIES).map_err(db_err)?,
            info: txn.open_table(INFO).map_err(db_err)?,
            by_created: txn.open_table(BY_CREATED).map_err(db_err)?,
            by_expiry: txn.open_table(BY_EXPIRY).map_err(db_err)?,
            meta,
            count,
            bytes,
            hits,
            gone: Vec::new(),
            cleared: false,
        })
    }

    pub(super) fn put(
        &mut self,
        key: &CacheKey,
        entry: &Entry,
        size: u64,
    ) -> Result<(), StoreError> {
        self.remove(key)?;
        let k = *key.as_bytes();
        let info = Info {
            created: entry.meta.created_ms,
            expires: entry.meta.expires_ms.unwrap_or(NEVER),
            size,
            hits: entry.meta.hits,
        };
        self.entries
            .insert(k, codec::encode(entry).as_slice())
            .map_err(db_err)?;
        self.info.insert(k, info.row()).map_err(db_err)?;
        self.by_created
            .insert((info.created, k), ())
            .map_err(db_err)?;
        if info.expires != NEVER {
            self.by_expiry
                .insert((info.expires, k), ())
                .map_err(db_err)?;
        }
        self.count += 1;
        self.bytes += size;
        self.hits += info.hits;
        Ok(())
    }

    /// Removes an entry for good (not to replace it): noted in `gone`. Whether it was there.
    pub(super) fn drop_entry(&mut self, key: &CacheKey) -> Result<bool, StoreError> {
        let found = self.remove(key)?.is_some();
        if found {
            self.gone.push(*key);
        }
        Ok(found)
    }

    /// Removes an entry from every table; its info when it was there.
    pub(super) fn remove(&mut self, key: &CacheKey) -> Result<Option<Info>, StoreError> {
        let k = *key.as_bytes();
        let Some(info) = self
            .info
            .remove(k)
            .map_err(db_err)?
            .map(|v| Info::from(v.value()))
        else {
            return Ok(None);
        };
        self.entries.remove(k).map_err(db_err)?;
        self.by_created.remove((info.created, k)).map_err(db_err)?;
        if info.expires != NEVER {
            self.by_expiry.remove((info.expires, k)).map_err(db_err)?;
        }
        self.count = self.count.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(info.size);
        self.hits = self.hits.saturating_sub(info.hits);
        Ok(Some(info))
    }

    pub(super) fn hit(&mut self, key: &CacheKey, n: u64) -> Result<(), StoreError> {
        let k = *key.as_bytes();
        let Some(mut info) = self
            .info
            .get(k)
            .map_err(db_err)?
            .map(|v| Info::from(v.value()))
        else {
            return Ok(());
        };
        info.hits += n;
        self.info.insert(k, info.row()).map_err(db_err)?;
        self.hits += n;
        Ok(())
    }

    pub(super) fn expire(&mut self, key: &CacheKey, now: u64) -> Result<(), StoreError> {
        let expired = self
            .info
            .get(*key.as_bytes())
            .map_err(db_err)?
            .is_some_and(|v| Info::from(v.value()).expires <= now);
        if expired {
            self.drop_entry(key)?;
        }
        Ok(())
    }

    pub(super) fn clear(&mut self, model: Option<&str>) -> Result<u64, StoreError> {
        let Some(model) = model else {
            let n = self.count;
            self.entries.retain(|_, _| false).map_err(db_err)?;
            self.info.retain(|_, _| false).map_err(db_err)?;
            self.by_created.retain(|_, _| false).map_err(db_err)?;
            self.by_expiry.retain(|_, _| false).map_err(db_err)?;
            (self.count, self.bytes, self.hits) = (0, 0, 0);
            self.cleared = true;
            return Ok(n);
        };
        let mut keys = Vec::new();
        for row in self.entries.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            if codec::decode_meta(v.value()).is_ok_and(|m| m.model.as_deref() == Some(model)) {
                keys.push(CacheKey::from_bytes(k.value()));
            }
        }
        let mut n = 0;
        for key in keys {
            n += u64::from(self.drop_entry(&key)?);
        }
        Ok(n)
    }

    /// Removes up to [`SWEEP_LIMIT`] entries expired at `now`.
    pub(super) fn sweep(&mut self, now: u64) -> Result<(), StoreError> {
        let mut expired = Vec::new();
        for row in self.by_expiry.range(..=(now, [0xff; 32])).map_err(db_err)? {
            if expired.len() >= SWEEP_LIMIT {
                break;
            }
            expired.push(CacheKey::from_bytes(row.map_err(db_err)?.0.value().1));
        }
        for key in expired {
            self.drop_entry(&key)?;
        }
        Ok(())
    }

    /// Removes the oldest entries until the total is within `max_bytes`.
    pub(super) fn evict(&mut self, max_bytes: u64) -> Result<(), StoreError> {
        while self.bytes > max_bytes {
            let oldest = self
                .by_created
                .first()
                .map_err(db_err)?
                .map(|(k, _)| k.value().1);
            let Some(k) = oldest else {
                break;
            };
            self.drop_entry(&CacheKey::from_bytes(k))?;
        }
        Ok(())
    }

    pub(super) fn save_totals(&mut self) -> Result<(), StoreError> {
        for (name, value) in [
            (META_ENTRIES, self.count),
            (META_BYTES, self.bytes),
            (META_HITS, self.hits),
        ] {
            self.meta.insert(name, value).map_err(db_err)?;
        }
        Ok(())
    }
}
