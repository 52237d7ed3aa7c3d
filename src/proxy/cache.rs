//! The cache stage of the pipeline: decide, look up, replay, coalesce, record.
//!
//! In: a routed request (provider, upstream path, headers, the JSON body relay already read). Out:
//! either a response served without the upstream (a hit, or a share of an identical request already
//! in flight), or a [`Lookup`] the pipeline forwards with, whose [`Tap`] rides on the upstream body
//! and stores the answer once it ended cleanly.
//!
//! - **Cacheable**: `POST` with a JSON body to chat/completions, completions, responses, messages
//!   (count_tokens too), embeddings, moderations. Everything else passes by (`x-relay-cache: BYPASS`).
//! - **Key**: [`KeyBuilder`](crate::cache::KeyBuilder) (remembered by raw request in a
//!   [`KeyMemo`]) over provider, method, upstream path, canonical body, scope (the caller's hashed
//!   API key, or global) and `x-relay-cache-namespace`.
//! - **Controls**: `Cache-Control: no-cache` / `x-relay-cache: refresh` skip the lookup and refresh
//!   the entry; `no-store` does not store; `x-relay-cache: skip` bypasses; `only` answers from the
//!   cache or fails; `x-relay-cache-ttl: <seconds>` sets this entry's TTL.
//! - **Stored**: complete 2xx answers only. SSE is stored as its events (with the pauses between
//!   them) and only when the stream reached its end marker (`[DONE]`, `message_stop`,
//!   `response.completed`) and the body ended cleanly: a caller that leaves mid-stream, an upstream
//!   error or an idle timeout store nothing.
//! - **Single-flight** (mode `live`): identical cacheable requests that arrive while one is in
//!   flight do not go upstream; they get the leader's response, streams from the first event. If the
//!   leader's caller leaves, relay keeps reading the upstream for the others.
//! - The store never blocks a request: a store failure is a miss (logged once per outage, counted in
//!   `relay_cache_errors_total`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use http_body::Frame;
use tokio::sync::watch;

use super::body::RelayBody;
use crate::cache::entry::Recorded;
use crate::cache::memo::Memo;
use crate::cache::{
    CacheKey, CachedBody, Entry, EntryMeta, KeyInput, KeyMemo, Scope, SseEvent, Store,
};
use crate::clock::Clock;
use crate::config::{CacheConfig, CacheMode, CacheScope, ReplayTiming};
use crate::error::BoxError;
use crate::error::{EdgeError, MissReason};
use crate::metrics::Metrics;
use crate::wire::headers as names;

mod flight;
mod near;
mod plan;
mod record;
mod replay;

pub use flight::FlightLead;
use flight::{follow, Flights, Joined};
pub use near::Why;
use near::{Misses, Portables};
pub use plan::Asked;
pub use record::{Answer, Tap};
use replay::Replays;

/// Request headers that steer the cache; never forwarded upstream.
pub const CONTROL_HEADERS: [HeaderName; 3] = [
    names::X_RELAY_CACHE,
    names::X_RELAY_CACHE_TTL,
    names::X_RELAY_CACHE_NAMESPACE,
];

/// The cache of one server: the store and the requests in flight. Outlives config reloads.
pub struct Cache {
    store: Arc<dyn Store>,
    clock: Clock,
    flights: Flights,
    /// Keys of recently seen request bodies.
    keys: KeyMemo,
    /// Answers of recently hit entries, ready to send.
    replays: Replays,
    /// Whether reads and writes are failing, so that each outage is logged once.
    outage: Outage,
    /// Portable keys of the recordings.
    portables: Portables,
    /// The latest misses, for `relay cache why`.
    misses: Misses,
}

/// The `x-relay-cache` response header value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Hit,
    Miss,
    Refresh,
    Bypass,
}

impl Status {
    fn header(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Status::Hit => "HIT",
            Status::Miss => "MISS",
            Status::Refresh => "REFRESH",
            Status::Bypass => "BYPASS",
        })
    }
}

/// How a hit matched its recording (`x-relay-cache-match`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match {
    /// The recorded request, byte for byte.
    Exact,
    /// The same key: it differs only where the key does not look (key order, whitespace, the
    /// ignored fields and per-run ids).
    Normalized,
    /// The same portable form: it differs in dates, directories, git status or OS (offline, or
    /// `x-relay-cache: only`).
    Portable,
}

impl Match {
    fn header(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Match::Exact => "exact",
            Match::Normalized => "normalized",
            Match::Portable => "portable",
        })
    }
}

/// What the cache decided for a request that goes (or may go) upstream.
pub struct Lookup {
    pub key: CacheKey,
    /// The request's key under scope v1, when it differs: where a recording made before the one
    /// caller identity is found.
    v1_key: Option<CacheKey>,
    /// Look the key up first.
    read: bool,
    /// Store the answer.
    write: bool,
    /// A miss is an error (offline, or `x-relay-cache: only`).
    only: Option<MissReason>,
    ttl: Option<Duration>,
    timing: ReplayTiming,
    pub status: Status,
    /// What the key is made of: a miss works out the portable key and the nearest recording
    /// from it, and a recording keeps its context.
    parts: Option<Arc<KeyParts>>,
}

/// A request as its cache key saw it.
pub(super) struct KeyParts {
    pub(super) provider: String,
    pub(super) method: String,
    pub(super) path: String,
    pub(super) scope: Scope,
    /// The caller's scope v1 ([`Scope::v1`]), when it differs and the lookup reads.
    pub(super) v1: Option<Scope>,
    pub(super) namespace: Option<String>,
    pub(super) body: Bytes,
    pub(super) ignore: Arc<crate::fieldpath::FieldSet>,
    /// `cache.portable`.
    pub(super) portable: bool,
    pub(super) client: Option<String>,
    pub(super) session: Option<String>,
}

impl KeyParts {
    pub(super) fn input(&self) -> KeyInput<'_> {
        KeyInput {
            provider: &self.provider,
            method: &self.method,
            path_and_query: &self.path,
            body: &self.body,
            scope: self.scope,
            namespace: self.namespace.as_deref(),
        }
    }

    /// The key of the portable form.
    pub(super) fn portable_key(&self) -> CacheKey {
        crate::cache::KeyBuilder::portable_key(&self.ignore, &self.input())
    }

    /// The keys of the portable form: under the caller's scope, then under its scope v1.
    pub(super) fn portable_keys(&self) -> impl Iterator<Item = CacheKey> + '_ {
        let input = self.input();
        std::iter::once(self.scope)
            .chain(self.v1)
            .map(move |s| crate::cache::KeyBuilder::portable_key_in(&self.ignore, &input, s))
    }

    /// The scope as an entry records it.
    pub(super) fn scope_label(&self) -> String {
        scope_label(self.scope)
    }

    /// Whether an entry recording scope `label` is this caller's (its scope, or its scope v1).
    pub(super) fn same_caller(&self, label: &str) -> bool {
        std::iter::once(self.scope)
            .chain(self.v1)
            .any(|s| scope_label(s) == label)
    }
}

/// `global`, or the 64 hex characters of the scope's hash.
pub(super) fn scope_label(scope: Scope) -> String {
    match scope {
        Scope::Global => "global".to_string(),
        Scope::Key(h) => CacheKey::from_bytes(h).hex(),
    }
}

/// The outcome of the cache stage.
pub enum Resolved {
    /// Answered without an upstream call of its own.
    Served(Box<http::Response<RelayBody>>),
    /// Forward; `lead` is set when this request leads a single flight.
    Forward(Option<Lookup>, Option<FlightLead>),
}

impl Cache {
    pub fn new(store: Arc<dyn Store>, clock: Clock) -> Cache {
        Cache {
            store,
            clock,
            flights: Flights::new(),
            keys: KeyMemo::default(),
            replays: Replays::default(),
            outage: Outage::default(),
            portables: Portables::default(),
            misses: Misses::default(),
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Runs the lookup: a hit, a share of an identical request in flight, or a forward.
    pub async fn resolve(
        self: &Arc<Self>,
        lookup: Lookup,
        request_id: &HeaderValue,
    ) -> Result<Resolved, EdgeError> {
        if lookup.status == Status::Bypass {
            return Ok(Resolved::Forward(Some(lookup), None));
        }
        if lookup.read {
            // A recording made before the one caller identity is under the v1 key.
            for key in std::iter::once(lookup.key).chain(lookup.v1_key) {
                if let Some(entry) = self.get(key).await {
                    return Ok(Resolved::Served(Box::new(
                        self.replay(key, entry, &lookup, request_id),
                    )));
                }
            }
        }
        self.remember_miss(&lookup, request_id);
        if let Some(reason) = lookup.only {
            let parts = lookup.parts.as_deref().filter(|p| p.portable);
            for portable in parts.into_iter().flat_map(KeyParts::portable_keys) {
                if let Some(key) = self.portables.find(&*self.store, portable).await {
                    if let Some(entry) = self.get(key).await {
                        let mut resp = self.replay(key, entry, &lookup, request_id);
                        resp.headers_mut()
                            .insert(names::X_RELAY_CACHE_MATCH, Match::Portable.header());
                        return Ok(Resolved::Served(Box::new(resp)));
                    }
                }
            }
            let nearest = match &lookup.parts {
                Some(p) => near::nearest(&*self.store, p).await.map(Box::new),
                None => None,
            };
            return Err(EdgeError::OfflineMiss {
                reason,
                key: lookup.key.short(),
                request_id: request_id.to_str().unwrap_or_default().to_string(),
                nearest,
            });
        }
        if !(lookup.read && lookup.write) {
            return Ok(Resolved::Forward(Some(lookup), None));
        }
        match self.flights.join(self, lookup.key) {
            Joined::Follow(flight) => {
                let resp = follow(flight, lookup.key, request_id).await?;
                Ok(Resolved::Served(Box::new(resp)))
            }
            Joined::Lead(lead) => {
                // The entry may have landed between the lookup and taking the lead.
                if let Some(entry) = self.get(lookup.key).await {
                    lead.publish(&entry);
                    return Ok(Resolved::Served(Box::new(
                        self.replay(lookup.key, entry, &lookup, request_id),
                    )));
                }
                Ok(Resolved::Forward(Some(lookup), Some(lead)))
            }
        }
    }

    async fn get(&self, key: CacheKey) -> Option<Arc<Entry>> {
        match self.store.get_shared(key).await {
            Ok(found) => {
                if self.outage.ok(Op::Read) {
                    tracing::info!(backend = self.store.backend(), "cache reads succeed again");
                }
                found
            }
            Err(e) => {
                if self.outage.failed(Op::Read) {
                    tracing::warn!(
                        backend = self.store.backend(),
                        error = %e,
                        "cache reads fail; requests go on as misses"
                    );
                }
                None
            }
        }
    }
}

/// Adds the cache's response headers.
pub fn mark(h: &mut HeaderMap, status: Status, key: &CacheKey, request_id: &HeaderValue) {
    h.insert(names::X_RELAY_CACHE, status.header());
    if status == Status::Hit {
        h.insert(names::X_CACHE, HeaderValue::from_static("HIT"));
    }
    if status != Status::Bypass {
        if let Ok(v) = HeaderValue::try_from(key.short()) {
            h.insert(names::X_RELAY_CACHE_KEY, v);
        }
    }
    h.insert(names::X_REQUEST_ID, request_id.clone());
}

// ------------------------------------------------------------------------------------ recording
/// Which side of the store an outage is on.
#[derive(Debug, Clone, Copy)]
enum Op {
    Read,
    Write,
}

/// Whether the store's reads and writes are failing, each on its own: a full write queue while
/// reads succeed is one write outage, logged once, not an outage that every read ends.
#[derive(Debug, Default)]
struct Outage {
    read: AtomicBool,
    write: AtomicBool,
}

impl Outage {
    fn flag(&self, op: Op) -> &AtomicBool {
        match op {
            Op::Read => &self.read,
            Op::Write => &self.write,
        }
    }

    /// An operation failed; true when this starts an outage (log it).
    fn failed(&self, op: Op) -> bool {
        let f = self.flag(op);
        // A load first: no cache-line write per request during an outage.
        !f.load(Ordering::Relaxed) && !f.swap(true, Ordering::Relaxed)
    }

    /// An operation succeeded; true when this ends an outage (log it).
    fn ok(&self, op: Op) -> bool {
        let f = self.flag(op);
        f.load(Ordering::Relaxed) && f.swap(false, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plan::cache_control;

    #[test]
    fn a_full_write_queue_is_one_outage_whatever_the_reads_do() {
        let o = Outage::default();
        // Every request: its put is refused (queue full), its next lookup succeeds.
        let mut logged = 0;
        for _ in 0..1000 {
            logged += usize::from(o.failed(Op::Write));
            logged += usize::from(o.ok(Op::Read));
        }
        assert_eq!(logged, 1, "one line for the whole outage");
        assert!(o.ok(Op::Write), "the first accepted put ends it");
        assert!(!o.ok(Op::Write));
        assert!(o.failed(Op::Read) && !o.failed(Op::Read));
        assert!(o.ok(Op::Read));
    }

    #[test]
    fn replays_are_derived_once_per_entry_and_follow_replacements() {
        use crate::cache::entry::tests::{json_entry, sse_entry};
        let replays = Replays::default();
        let k = CacheKey::from_bytes([7; 32]);
        let mut first = json_entry(
            "m",
            1,
            r#"{"usage":{"prompt_tokens":3,"completion_tokens":4}}"#,
        );
        first.meta.headers = vec![
            ("content-type".into(), "application/json".into()),
            ("x-multi".into(), "a".into()),
            ("x-multi".into(), "b".into()),
        ];
        let first = Arc::new(first);
        let a = replays.get(k, &first);
        assert!(Arc::ptr_eq(&a, &replays.get(k, &first)), "derived once");
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.headers.get_all("x-multi").iter().count(), 2);
        assert_eq!(a.usage.0.map(|u| u.output), Some(4));
        // A replaced entry (another Arc) is never answered from the old one.
        let second = Arc::new(sse_entry("m", 2));
        let b = replays.get(k, &second);
        let CachedBody::Sse(events) = &second.response else {
            unreachable!()
        };
        let joined: Vec<u8> = events.iter().flat_map(|e| e.data.to_vec()).collect();
        assert_eq!(&b.body[..], &joined[..], "the events joined byte for byte");
        assert_eq!(
            b.headers.get(header::CONTENT_TYPE).unwrap(),
            "text/event-stream"
        );
        assert!(Arc::ptr_eq(&b, &replays.get(k, &second)));
    }

    #[test]
    fn cache_control_directives() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=0, No-Store"),
        );
        assert_eq!(cache_control(&h), (false, true));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        assert_eq!(cache_control(&h), (true, false));
    }
}
