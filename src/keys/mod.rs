//! Relay keys: the keys relay issues to its callers when `auth.enabled` is on.
//!
//! A caller presents `relay-<48 hex>` where it would put a provider key (`Authorization: Bearer`
//! or `x-api-key`); relay checks it against the [`KeyRing`] and sends the provider's own key
//! upstream instead. A key is kept as its blake3 hash only ([`KeyRecord::hash`]): the raw key is
//! printed once, when it is made ([`issue`]), and never stored, logged or shown again. A key's
//! record carries what it may do: its models (globs), budgets, rate limits and expiry.
//!
//! The records live in a store of their own ([`store`]: a redb file, or Redis with `redis.enabled`
//! so every relay on it knows the same keys); the ring is the server's in-memory copy, swapped
//! whole when a key is made, revoked or rotated, so a request reads it without a lock.

#[cfg(feature = "redis")]
pub mod redis;
pub mod store;

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

/// What every relay key starts with (so a misplaced one is recognisable, and told from a
/// provider's key).
pub const PREFIX: &str = "relay-";
/// Random bytes in a key (192 bits), written as hex after [`PREFIX`].
const RANDOM_BYTES: usize = 24;
/// Old hashes a rotated key remembers, to answer "rotated" instead of "unknown".
const RETIRED_KEPT: usize = 8;

/// One relay key as stored: never the key itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Unique; the ledger, budgets, metrics and `relay usage --by key` book the key by it.
    pub name: String,
    /// blake3 of the key, lower-case hex.
    pub hash: String,
    /// Model globs the key may use (`gpt-4o*`, `claude-*`); empty: every model.
    #[serde(default)]
    pub models: Vec<String>,
    /// USD micro-units.
    #[serde(default)]
    pub daily_budget_micros: Option<u64>,
    #[serde(default)]
    pub monthly_budget_micros: Option<u64>,
    /// Requests per second (burst: the next whole number).
    #[serde(default)]
    pub rps: Option<f64>,
    /// Tokens per minute.
    #[serde(default)]
    pub tpm: Option<u64>,
    pub created_ms: u64,
    #[serde(default)]
    pub expires_ms: Option<u64>,
    #[serde(default)]
    pub revoked_ms: Option<u64>,
    #[serde(default)]
    pub rotated_ms: Option<u64>,
    /// Hashes this key had before it was rotated (newest last).
    #[serde(default)]
    pub retired: Vec<String>,
}

impl KeyRecord {
    /// Whether the key may use `model` (a request that names none passes).
    pub fn allows(&self, model: Option<&str>) -> bool {
        let Some(model) = model else { return true };
        self.models.is_empty()
            || self
                .models
                .iter()
                .any(|g| glob::Pattern::new(g).is_ok_and(|p| p.matches(model)))
    }

    /// `active`, `revoked` or `expired` at `now_ms`.
    pub fn status(&self, now_ms: u64) -> &'static str {
        if self.revoked_ms.is_some() {
            "revoked"
        } else if self.expires_ms.is_some_and(|e| now_ms >= e) {
            "expired"
        } else {
            "active"
        }
    }

    /// Its budget, when it has one.
    pub fn budget(&self) -> Option<crate::config::Budget> {
        (self.daily_budget_micros.is_some() || self.monthly_budget_micros.is_some()).then_some(
            crate::config::Budget {
                daily: self.daily_budget_micros,
                monthly: self.monthly_budget_micros,
            },
        )
    }

    /// Its own rate limits, when it has any.
    pub fn limits(&self) -> Option<crate::limit::KeyLimits> {
        (self.rps.is_some() || self.tpm.is_some()).then(|| crate::limit::KeyLimits {
            name: self.name.clone(),
            rps: self.rps,
            tpm: self.tpm,
        })
    }
}

/// What `relay keys create` asks for (also the admin API's request body).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeySpec {
    pub name: String,
    pub models: Vec<String>,
    /// USD.
    pub daily_budget: Option<f64>,
    pub monthly_budget: Option<f64>,
    pub rps: Option<f64>,
    pub tpm: Option<u64>,
    /// Seconds from now.
    pub expires_in_secs: Option<u64>,
}

/// Why a key operation failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum KeyError {
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("a key named {0:?} exists; revoke it first or pick another name")]
    Exists(String),
    #[error("no key named {0:?}")]
    NotFound(String),
    #[error("key {0:?} is revoked")]
    Revoked(String),
    #[error("the relay-key store {path}: {message}")]
    Store { path: String, message: String },
    #[error("the relay-key store {path} is held by another process (a running relay: reach it with --server, or stop it)")]
    Locked { path: String },
}

impl KeyError {
    /// The HTTP status the admin API answers it with.
    pub fn status(&self) -> u16 {
        match self {
            KeyError::Invalid { .. } => 400,
            KeyError::Exists(_) | KeyError::Revoked(_) => 409,
            KeyError::NotFound(_) => 404,
            KeyError::Store { .. } | KeyError::Locked { .. } => 503,
        }
    }
}

/// Whether `name` can name a key: 1 to 64 of `A-Z a-z 0-9 . _ -`, and none of the labels the
/// ledger keeps for itself (`none`, `other`, `*`, `key-...`).
pub fn check_name(name: &str) -> Result<(), KeyError> {
    let bad = |message: &str| KeyError::Invalid {
        field: "name",
        message: message.to_string(),
    };
    if name.is_empty() || name.len() > 64 {
        return Err(bad("a key's name is 1 to 64 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(bad("a key's name is letters, digits, '.', '_' and '-'"));
    }
    if name == "none" || name == "other" || name.starts_with("key-") {
        return Err(bad(
            "\"none\", \"other\" and \"key-...\" are labels relay keeps for itself",
        ));
    }
    Ok(())
}

impl KeySpec {
    /// The record this spec makes at `now_ms` for a key whose hash is `hash`.
    pub fn record(&self, hash: String, now_ms: u64) -> Result<KeyRecord, KeyError> {
        check_name(&self.name)?;
        for g in &self.models {
            glob::Pattern::new(g).map_err(|e| KeyError::Invalid {
                field: "models",
                message: format!("{g:?} is not a glob: {e}"),
            })?;
        }
        let usd = |field: &'static str, v: Option<f64>| match v {
            None => Ok(None),
            Some(v) => crate::config::budget_micros(v)
                .map(Some)
                .ok_or_else(|| KeyError::Invalid {
                    field,
                    message: "a budget is a number of USD ≥ 0".to_string(),
                }),
        };
        if self.rps.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
            return Err(KeyError::Invalid {
                field: "rps",
                message: "requests per second must be a number above 0".to_string(),
            });
        }
        if self.tpm == Some(0) {
            return Err(KeyError::Invalid {
                field: "tpm",
                message: "tokens per minute must be above 0".to_string(),
            });
        }
        Ok(KeyRecord {
            name: self.name.clone(),
            hash,
            models: self.models.clone(),
            daily_budget_micros: usd("daily_budget", self.daily_budget)?,
            monthly_budget_micros: usd("monthly_budget", self.monthly_budget)?,
            rps: self.rps,
            tpm: self.tpm,
            created_ms: now_ms,
            expires_ms: self
                .expires_in_secs
                .map(|s| now_ms.saturating_add(s.saturating_mul(1000))),
            revoked_ms: None,
            rotated_ms: None,
            retired: Vec::new(),
        })
    }
}

/// A new random key and its hash (hex). The key is for the caller's eyes once.
pub fn issue() -> (crate::config::Secret, String) {
    let mut bytes = [0u8; RANDOM_BYTES];
    getrandom::getrandom(&mut bytes).expect("the OS random source is available");
    let mut key = String::with_capacity(PREFIX.len() + RANDOM_BYTES * 2);
    key.push_str(PREFIX);
    for b in bytes {
        key.push_str(&format!("{b:02x}"));
    }
    let hash = hash_hex(&key);
    (crate::config::Secret::new(key), hash)
}

/// blake3 of a key, lower-case hex: how a key is stored and looked up.
pub fn hash_hex(key: &str) -> String {
    blake3::hash(key.as_bytes()).to_hex().to_string()
}

/// Makes the key `spec` asks for in `store`; returns the raw key (shown once) and its record.
pub fn create(
    store: &dyn store::KeyStore,
    spec: &KeySpec,
    now_ms: u64,
) -> Result<(crate::config::Secret, KeyRecord), KeyError> {
    let (key, hash) = issue();
    let record = spec.record(hash, now_ms)?;
    if let Some(old) = store.get(&record.name)? {
        if old.revoked_ms.is_none() {
            return Err(KeyError::Exists(record.name));
        }
    }
    store.put(&record)?;
    Ok((key, record))
}

/// Revokes the key `name` (kept in the store, marked revoked: its spending stays on the books).
pub fn revoke(store: &dyn store::KeyStore, name: &str, now_ms: u64) -> Result<KeyRecord, KeyError> {
    let mut record = store
        .get(name)?
        .ok_or_else(|| KeyError::NotFound(name.to_string()))?;
    if record.revoked_ms.is_none() {
        record.revoked_ms = Some(now_ms);
        store.put(&record)?;
    }
    Ok(record)
}

/// Gives the key `name` a new secret (its name, limits and spending stay); the old one stops
/// working at once. Returns the new raw key.
pub fn rotate(
    store: &dyn store::KeyStore,
    name: &str,
    now_ms: u64,
) -> Result<(crate::config::Secret, KeyRecord), KeyError> {
    let mut record = store
        .get(name)?
        .ok_or_else(|| KeyError::NotFound(name.to_string()))?;
    if record.revoked_ms.is_some() {
        return Err(KeyError::Revoked(name.to_string()));
    }
    let (key, hash) = issue();
    let old = std::mem::replace(&mut record.hash, hash);
    record.retired.push(old);
    if record.retired.len() > RETIRED_KEPT {
        record.retired.remove(0);
    }
    record.rotated_ms = Some(now_ms);
    store.put(&record)?;
    Ok((key, record))
}

/// Why a presented key is refused (401).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No key at all.
    Missing,
    /// A key relay did not issue (or a provider's key: relay keys start with `relay-`).
    Unknown {
        relay_shaped: bool,
    },
    Revoked(String),
    Expired(String),
    /// The key was rotated; a newer one replaced it.
    Rotated(String),
}

impl std::fmt::Display for Denied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Denied::Missing => write!(f, "relay asks for a relay key (auth.enabled): send it as `Authorization: Bearer relay-...` or `x-api-key`; `relay keys create --name NAME` makes one"),
            Denied::Unknown { relay_shaped: true } => write!(f, "this relay key is not known to relay (mistyped, or made on another relay's store)"),
            Denied::Unknown { relay_shaped: false } => write!(f, "relay asks for a relay key (auth.enabled), and this is not one (relay keys start with \"relay-\"); relay adds the provider's key itself"),
            Denied::Revoked(name) => write!(f, "relay key {name:?} was revoked"),
            Denied::Expired(name) => write!(f, "relay key {name:?} has expired"),
            Denied::Rotated(name) => write!(f, "relay key {name:?} was rotated: this is its old secret; use the new one"),
        }
    }
}

enum Entry {
    Current(Arc<KeyRecord>),
    Retired(String),
}

/// The keys a server knows, by hash: read by every request without a lock, replaced whole.
pub struct KeyRing {
    by_hash: ArcSwap<HashMap<[u8; 32], Entry>>,
}

impl Default for KeyRing {
    fn default() -> Self {
        KeyRing::new(Vec::new())
    }
}

impl KeyRing {
    pub fn new(records: Vec<KeyRecord>) -> KeyRing {
        KeyRing {
            by_hash: ArcSwap::from_pointee(index(records)),
        }
    }

    /// Replaces every key with `records` (after a change, or a fresh read of a shared store).
    pub fn replace(&self, records: Vec<KeyRecord>) {
        self.by_hash.store(Arc::new(index(records)));
    }

    /// Every current key, by name.
    pub fn records(&self) -> Vec<Arc<KeyRecord>> {
        let mut out: Vec<Arc<KeyRecord>> = self
            .by_hash
            .load()
            .values()
            .filter_map(|e| match e {
                Entry::Current(r) => Some(r.clone()),
                Entry::Retired(_) => None,
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// The key a request presents, if it is one relay issued and may still be used at `now_ms`.
    pub fn check(&self, presented: Option<&str>, now_ms: u64) -> Result<Arc<KeyRecord>, Denied> {
        let Some(key) = presented else {
            return Err(Denied::Missing);
        };
        let hash = blake3::hash(key.as_bytes());
        match self.by_hash.load().get(hash.as_bytes()) {
            None => Err(Denied::Unknown {
                relay_shaped: key.starts_with(PREFIX),
            }),
            Some(Entry::Retired(name)) => Err(Denied::Rotated(name.clone())),
            Some(Entry::Current(r)) => match r.status(now_ms) {
                "revoked" => Err(Denied::Revoked(r.name.clone())),
                "expired" => Err(Denied::Expired(r.name.clone())),
                _ => Ok(r.clone()),
            },
        }
    }
}

/// A server's keys: the store and its in-memory ring, which every change refreshes.
pub struct Keys {
    pub ring: KeyRing,
    store: Box<dyn store::KeyStore>,
}

impl Keys {
    /// The keys in `store`, read whole. Blocking.
    pub fn load(store: Box<dyn store::KeyStore>) -> Result<Keys, KeyError> {
        let ring = KeyRing::new(store.all()?);
        Ok(Keys { ring, store })
    }

    /// Opens the store `cfg` names. Blocking.
    pub fn open(cfg: &crate::config::Config) -> Result<Keys, KeyError> {
        let path = store::path(cfg).ok_or_else(|| KeyError::Store {
            path: "keys.redb".to_string(),
            message: "no data directory to keep it in; set auth.keys_path".to_string(),
        })?;
        let local = store::RedbKeys::open(&path)?;
        #[cfg(feature = "redis")]
        if cfg.redis.enabled {
            let shared = redis::RedisKeys::new(
                &crate::cache::open::redis_url(cfg),
                &cfg.redis.address,
                local,
            )?;
            return Keys::load(Box::new(shared));
        }
        Keys::load(Box::new(local))
    }

    /// With a shared store, refreshes the ring whenever another relay changed a key (checked
    /// every second, on the blocking pool) until `self` is dropped.
    pub fn watch(self: &Arc<Self>) {
        if !self.store.shared() {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut seen = None;
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                let Some(keys) = weak.upgrade() else { return };
                let changed = tokio::task::spawn_blocking(move || {
                    let v = keys.store.version();
                    if v.is_some() && v != seen {
                        if let Err(e) = keys.refresh() {
                            tracing::warn!("relay keys: cannot refresh from the shared store: {e}");
                        }
                    }
                    v.or(seen)
                })
                .await;
                if let Ok(v) = changed {
                    seen = v;
                }
            }
        });
    }

    pub fn store(&self) -> &dyn store::KeyStore {
        self.store.as_ref()
    }

    /// Reads the store again into the ring (after a change here, or one made elsewhere).
    pub fn refresh(&self) -> Result<(), KeyError> {
        self.reread().map(drop)
    }

    /// Every key in the store, read again into the ring on the way: what a listing shows is what
    /// this relay admits from then on (a key made on another relay works here once it is listed).
    pub fn reread(&self) -> Result<Vec<KeyRecord>, KeyError> {
        let all = self.store.all()?;
        self.ring.replace(all.clone());
        Ok(all)
    }

    /// [`create`], then the ring is refreshed: the key works at once.
    pub fn create(
        &self,
        spec: &KeySpec,
        now_ms: u64,
    ) -> Result<(crate::config::Secret, KeyRecord), KeyError> {
        let made = create(self.store(), spec, now_ms)?;
        self.refresh()?;
        Ok(made)
    }

    /// [`revoke`], then the ring is refreshed: the key stops working at once.
    pub fn revoke(&self, name: &str, now_ms: u64) -> Result<KeyRecord, KeyError> {
        let r = revoke(self.store(), name, now_ms)?;
        self.refresh()?;
        Ok(r)
    }

    /// [`rotate`], then the ring is refreshed.
    pub fn rotate(
        &self,
        name: &str,
        now_ms: u64,
    ) -> Result<(crate::config::Secret, KeyRecord), KeyError> {
        let made = rotate(self.store(), name, now_ms)?;
        self.refresh()?;
        Ok(made)
    }
}

/// The server's [`Keys`]: opened at start when auth is on, else when first needed (a reload that
/// turns auth on, `relay keys` through the admin API).
#[derive(Default)]
pub struct KeysSlot {
    live: arc_swap::ArcSwapOption<Keys>,
    opening: tokio::sync::Mutex<()>,
}

impl KeysSlot {
    /// The keys, if open (one atomic load: what each request reads).
    pub fn get(&self) -> Option<Arc<Keys>> {
        self.live.load_full()
    }

    /// The keys, opened from `cfg`'s store if they are not yet.
    pub async fn open(&self, cfg: &crate::config::Config) -> Result<Arc<Keys>, KeyError> {
        if let Some(k) = self.get() {
            return Ok(k);
        }
        let _one = self.opening.lock().await;
        if let Some(k) = self.get() {
            return Ok(k);
        }
        let cfg = cfg.clone();
        let keys = tokio::task::spawn_blocking(move || Keys::open(&cfg))
            .await
            .map_err(|e| KeyError::Store {
                path: "keys.redb".to_string(),
                message: e.to_string(),
            })??;
        let keys = Arc::new(keys);
        keys.watch();
        self.live.store(Some(keys.clone()));
        Ok(keys)
    }
}

fn index(records: Vec<KeyRecord>) -> HashMap<[u8; 32], Entry> {
    let mut map = HashMap::with_capacity(records.len());
    let parse = |hex: &str| blake3::Hash::from_hex(hex).ok().map(|h| *h.as_bytes());
    for r in records {
        for old in &r.retired {
            if let Some(h) = parse(old) {
                map.insert(h, Entry::Retired(r.name.clone()));
            }
        }
        if let Some(h) = parse(&r.hash) {
            map.insert(h, Entry::Current(Arc::new(r)));
        }
    }
    map
}

#[cfg(test)]
mod tests;
