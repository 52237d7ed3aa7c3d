//! When the exact key misses: the portable index (a recording replayed another day, from another
//! directory, on another machine), the nearest recording (what an offline miss and
//! `relay cache why` say), and the misses remembered for `relay cache why <request id>`.

use std::collections::VecDeque;

use super::*;
use crate::cache::ListFilter;
use crate::error::Nearest;
use crate::shard::{lock, read, write, Sharded};

/// How often, at most, the index is rebuilt from the store when a portable key is not in it
/// (entries recorded by another relay on the same Redis, or imported).
const REBUILD_AFTER: Duration = Duration::from_secs(5);

/// Portable keys of recorded entries → their exact keys. Built from the store's metadata on first
/// use, kept up to date by this relay's own recordings.
#[derive(Default)]
pub(super) struct Portables {
    map: std::sync::RwLock<HashMap<CacheKey, CacheKey>>,
    /// When the map was last built from the store; taken while building, so one request builds.
    built: tokio::sync::Mutex<Option<Instant>>,
}

impl Portables {
    pub(super) fn insert(&self, portable: CacheKey, key: CacheKey) {
        write(&self.map).insert(portable, key);
    }

    /// The exact key recorded for `portable`, reading the store's list when the map does not
    /// know it and was not built in the last [`REBUILD_AFTER`].
    pub(super) async fn find(&self, store: &dyn Store, portable: CacheKey) -> Option<CacheKey> {
        if let Some(k) = read(&self.map).get(&portable) {
            return Some(*k);
        }
        let mut built = self.built.lock().await;
        if built.is_some_and(|t| t.elapsed() < REBUILD_AFTER) {
            return read(&self.map).get(&portable).copied();
        }
        let items = store.list(ListFilter::default()).await.ok()?;
        let mut map = HashMap::with_capacity(items.len());
        // Newest first: of two recordings with one portable form, the newest replays.
        for (key, meta, _) in items.iter().rev() {
            if let Some(p) = meta.recorded.portable.as_deref() {
                if let Ok(p) = CacheKey::from_hex(p) {
                    map.insert(p, *key);
                }
            }
        }
        *write(&self.map) = map;
        *built = Some(Instant::now());
        read(&self.map).get(&portable).copied()
    }
}

/// Recordings compared with a request that missed, newest first: enough for a session's worth.
const CANDIDATES: usize = 64;
/// JSON paths named in a miss explanation.
const PATHS_SHOWN: usize = 5;

/// The recording nearest to `parts`: of the same provider, method, path and scope, the one whose
/// body differs at the fewest JSON paths (the newest of equals). Reads up to [`CANDIDATES`]
/// entries: for misses only, never for a hit.
pub(super) async fn nearest(store: &dyn Store, parts: &KeyParts) -> Option<Nearest> {
    let items = store.list(ListFilter::default()).await.ok()?;
    let path = crate::redact::query(&parts.path);
    let mut best: Option<(usize, Nearest)> = None;
    let same = items.iter().filter(|(_, m, _)| {
        m.provider == parts.provider
            && m.method.eq_ignore_ascii_case(&parts.method)
            && m.path == path
            && m.recorded
                .scope
                .as_deref()
                .is_some_and(|s| parts.same_caller(s))
    });
    for (key, meta, _) in same.take(CANDIDATES) {
        let Ok(Some(entry)) = store.get(*key).await else {
            continue;
        };
        let d = crate::cache::diff::differences(
            &parts.ignore,
            &parts.body,
            &entry.request,
            PATHS_SHOWN,
        );
        if best.as_ref().is_some_and(|(count, _)| *count <= d.count) {
            continue;
        }
        let near = Nearest {
            key: key.short(),
            recorded: crate::wire::rfc3339(meta.created_ms),
            more: d.count.saturating_sub(d.paths.len()),
            differs: d.paths,
        };
        best = Some((d.count, near));
    }
    best.map(|(_, n)| n)
}

/// Bytes of request bodies the misses kept for `relay cache why` may hold, in all.
const MISSES_BYTES: usize = 16 << 20;
const MISS_SHARDS: usize = 8;

/// The latest misses, by request id: what `relay cache why` explains. Bounded by
/// [`MISSES_BYTES`] (a Claude Code request is about 80 KB: the last 200 or so).
pub(super) struct Misses {
    shards: Sharded<std::sync::Mutex<MissShard>>,
}

#[derive(Default)]
struct MissShard {
    kept: VecDeque<Miss>,
    bytes: usize,
}

/// One remembered miss.
#[derive(Clone)]
pub struct Miss {
    pub request_id: String,
    pub key: CacheKey,
    pub(super) parts: Arc<KeyParts>,
    /// When it missed, unix milliseconds.
    pub at_ms: u64,
}

impl Default for Misses {
    fn default() -> Misses {
        Misses {
            shards: Sharded::with_default(MISS_SHARDS),
        }
    }
}

impl Misses {
    pub(super) fn remember(&self, miss: Miss) {
        let size = miss.parts.body.len() + 256;
        let mut shard = lock(self.shards.by_bytes(miss.request_id.as_bytes()));
        shard.bytes += size;
        shard.kept.push_back(miss);
        while shard.bytes > MISSES_BYTES / MISS_SHARDS && shard.kept.len() > 1 {
            if let Some(old) = shard.kept.pop_front() {
                shard.bytes -= old.parts.body.len() + 256;
            }
        }
    }

    pub(super) fn find(&self, request_id: &str) -> Option<Miss> {
        let shard = lock(self.shards.by_bytes(request_id.as_bytes()));
        shard
            .kept
            .iter()
            .rev()
            .find(|m| m.request_id == request_id)
            .cloned()
    }
}

/// What `relay cache why` says about one miss.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Why {
    pub request_id: String,
    pub provider: String,
    pub method: String,
    pub path: String,
    /// The exact key (12 hex characters).
    pub key: String,
    /// When it missed, RFC 3339 UTC.
    pub at: String,
    /// A recording that would replay it by its portable form (offline, or `x-relay-cache:
    /// only`), when there is one.
    pub portable_match: Option<String>,
    pub nearest: Option<Nearest>,
}

impl Cache {
    /// Remembers a request that missed, for `relay cache why`.
    pub(super) fn remember_miss(&self, lookup: &Lookup, request_id: &HeaderValue) {
        let (Some(parts), Ok(id)) = (&lookup.parts, request_id.to_str()) else {
            return;
        };
        self.misses.remember(Miss {
            request_id: id.to_string(),
            key: lookup.key,
            parts: parts.clone(),
            at_ms: self.clock.now_ms(),
        });
    }

    /// Why the request `request_id` missed: its keys, a portable match and the nearest recording.
    /// `None` when relay does not remember it (it keeps the latest misses, about 16 MiB of them).
    pub async fn why(&self, request_id: &str) -> Option<Why> {
        let miss = self.misses.find(request_id)?;
        let p = &miss.parts;
        let mut portable_match = None;
        for portable in p.portable_keys() {
            match self.portables.find(&*self.store, portable).await {
                Some(k) if k != miss.key => {
                    portable_match = Some(k.short());
                    break;
                }
                _ => {}
            }
        }
        Some(Why {
            request_id: miss.request_id.clone(),
            provider: p.provider.clone(),
            method: p.method.clone(),
            path: crate::redact::query(&p.path).into_owned(),
            key: miss.key.short(),
            at: crate::wire::rfc3339(miss.at_ms),
            portable_match,
            nearest: nearest(&*self.store, p).await,
        })
    }
}
