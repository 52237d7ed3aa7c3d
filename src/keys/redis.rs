//! Relay keys on Redis (`redis.enabled`, cargo feature `redis`): every relay on one Redis knows
//! the same keys. Hash `relay:keys:v1` (name → the record as JSON) and a counter
//! `relay:keys:v1:version`, bumped with every change in the same `MULTI`, which each relay reads
//! every second to refresh its ring ([`super::Keys::watch`]).
//!
//! The local redb store is kept as a mirror of what Redis last said: while Redis is unreachable
//! (at start, or later) relay reads its keys from the mirror (logged once), so callers keep
//! working; changes need Redis and say so.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::store::{KeyStore, RedbKeys};
use super::{KeyError, KeyRecord};

const HASH: &str = "relay:keys:v1";
const VERSION: &str = "relay:keys:v1:version";
const TIMEOUT: Duration = Duration::from_secs(1);

pub struct RedisKeys {
    client: redis::Client,
    address: String,
    mirror: RedbKeys,
    down: AtomicBool,
}

impl RedisKeys {
    pub fn new(url: &str, address: &str, mirror: RedbKeys) -> Result<RedisKeys, KeyError> {
        let client = redis::Client::open(url).map_err(|e| KeyError::Store {
            path: format!("redis {address}"),
            message: e.to_string(),
        })?;
        Ok(RedisKeys {
            client,
            address: address.to_string(),
            mirror,
            down: AtomicBool::new(false),
        })
    }

    fn conn(&self) -> redis::RedisResult<redis::Connection> {
        let c = self.client.get_connection_with_timeout(TIMEOUT)?;
        c.set_read_timeout(Some(TIMEOUT))?;
        c.set_write_timeout(Some(TIMEOUT))?;
        Ok(c)
    }

    fn err(&self, e: impl std::fmt::Display) -> KeyError {
        KeyError::Store {
            path: format!("redis {}", self.address),
            message: format!("{e} (relay keys can be changed only while Redis answers)"),
        }
    }

    fn up(&self) {
        if self.down.swap(false, Ordering::AcqRel) {
            tracing::info!("relay keys: Redis answers again; keys are shared");
        }
    }

    fn went_down(&self, e: &redis::RedisError) {
        if !self.down.swap(true, Ordering::AcqRel) {
            tracing::warn!(error = %e, "relay keys: Redis unreachable; using the keys it last gave (the local mirror) until it is back");
        }
    }

    /// Whether Redis has never held keys (no version counter).
    fn fresh(&self) -> bool {
        let v: redis::RedisResult<Option<u64>> = self
            .conn()
            .and_then(|mut c| redis::cmd("GET").arg(VERSION).query(&mut c));
        matches!(v, Ok(None))
    }

    fn all_from_redis(&self) -> redis::RedisResult<Vec<(String, String)>> {
        let mut c = self.conn()?;
        redis::cmd("HGETALL").arg(HASH).query(&mut c)
    }
}

impl KeyStore for RedisKeys {
    fn get(&self, name: &str) -> Result<Option<KeyRecord>, KeyError> {
        let got: Option<String> = self
            .conn()
            .and_then(|mut c| redis::cmd("HGET").arg(HASH).arg(name).query(&mut c))
            .map_err(|e| self.err(e))?;
        got.map(|j| serde_json::from_str(&j).map_err(|e| self.err(e)))
            .transpose()
    }

    fn put(&self, record: &KeyRecord) -> Result<(), KeyError> {
        let json = serde_json::to_string(record).expect("a key record serializes");
        let mut c = self.conn().map_err(|e| self.err(e))?;
        redis::pipe()
            .atomic()
            .cmd("HSET")
            .arg(HASH)
            .arg(&record.name)
            .arg(&json)
            .ignore()
            .cmd("INCR")
            .arg(VERSION)
            .ignore()
            .query::<()>(&mut c)
            .map_err(|e| self.err(e))?;
        self.up();
        self.mirror.put(record)
    }

    fn all(&self) -> Result<Vec<KeyRecord>, KeyError> {
        match self.all_from_redis() {
            Ok(pairs) if pairs.is_empty() && self.fresh() => {
                // A Redis that kept nothing (restarted without persistence): it gets the keys
                // this relay last knew back, revocations included.
                self.up();
                let known = self.mirror.all()?;
                if !known.is_empty() {
                    tracing::warn!(keys = known.len(), "relay keys: Redis has none (it was emptied or restarted without persistence); restoring the keys this relay knew");
                    for r in &known {
                        self.put(r)?;
                    }
                }
                Ok(known)
            }
            Ok(pairs) => {
                self.up();
                let mut out = Vec::with_capacity(pairs.len());
                for (name, json) in pairs {
                    let r: KeyRecord =
                        serde_json::from_str(&json).map_err(|e| KeyError::Store {
                            path: format!("redis {}", self.address),
                            message: format!("the record of key {name:?} does not read: {e}"),
                        })?;
                    out.push(r);
                }
                for r in &out {
                    if self.mirror.get(&r.name)?.as_ref() != Some(r) {
                        self.mirror.put(r)?;
                    }
                }
                Ok(out)
            }
            Err(e) => {
                self.went_down(&e);
                self.mirror.all()
            }
        }
    }

    fn version(&self) -> Option<u64> {
        let v: redis::RedisResult<Option<u64>> = self
            .conn()
            .and_then(|mut c| redis::cmd("GET").arg(VERSION).query(&mut c));
        match v {
            Ok(v) => Some(v.unwrap_or(0)),
            Err(e) => {
                self.went_down(&e);
                None
            }
        }
    }

    fn shared(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        format!(
            "redis {} (mirrored in {})",
            self.address,
            self.mirror.describe()
        )
    }
}
