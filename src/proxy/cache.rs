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
use crate::cache::memo::Memo;
use crate::cache::{
    scope_for_api_key, CacheKey, CachedBody, Entry, EntryMeta, KeyInput, KeyMemo, Scope, SseEvent,
    Store,
};
use crate::clock::Clock;
use crate::config::{CacheMode, CacheScope, Config, ReplayTiming};
use crate::error::BoxError;
use crate::error::{EdgeError, MissReason};
use crate::metrics::Metrics;
use crate::wire::headers as names;

/// Request headers that steer the cache; never forwarded upstream.
pub const CONTROL_HEADERS: [HeaderName; 3] = [
    names::X_RELAY_CACHE,
    names::X_RELAY_CACHE_TTL,
    names::X_RELAY_CACHE_NAMESPACE,
];

/// Upstream paths (suffixes) whose POSTs are cacheable.
const CACHEABLE_SUFFIXES: &[&str] = &[
    "/chat/completions",
    "/completions",
    "/responses",
    "/messages",
    "/messages/count_tokens",
    "/embeddings",
    "/moderations",
];

/// Response headers that describe one delivery, not the answer: not stored.
const NOT_STORED: &[&str] = &[
    "content-length",
    "date",
    "x-request-id",
    "set-cookie",
    "age",
    "x-cache",
    "x-relay-cache",
    "x-relay-cache-key",
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

/// What the cache decided for a request that goes (or may go) upstream.
pub struct Lookup {
    pub key: CacheKey,
    /// Look the key up first.
    read: bool,
    /// Store the answer.
    write: bool,
    /// A miss is an error (offline, or `x-relay-cache: only`).
    only: Option<MissReason>,
    ttl: Option<Duration>,
    timing: ReplayTiming,
    pub status: Status,
}

/// The outcome of the cache stage.
pub enum Outcome {
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
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Decides what to do with a request (see the module docs). `Ok(None)`: not the cache's business.
    pub fn plan(
        &self,
        cfg: &Config,
        method: &Method,
        headers: &HeaderMap,
        provider: &str,
        upstream_path: &str,
        body: Option<&Bytes>,
    ) -> Result<Option<Lookup>, EdgeError> {
        let c = &cfg.cache;
        if !c.enabled {
            return Ok(None);
        }
        let offline = c.mode == CacheMode::Offline;
        let path_only = upstream_path.split('?').next().unwrap_or_default();
        let cacheable = *method == Method::POST
            && body.is_some_and(|b| !b.is_empty())
            && CACHEABLE_SUFFIXES.iter().any(|s| path_only.ends_with(s));
        let Some(body) = body.filter(|_| cacheable) else {
            return if offline {
                Err(EdgeError::OfflineMiss {
                    reason: MissReason::OfflineNotCacheable,
                    key: "-".to_string(),
                })
            } else {
                Ok(None)
            };
        };
        let directive = match headers.get(names::X_RELAY_CACHE).map(|v| v.to_str()) {
            None => None,
            Some(Ok(v)) if v.eq_ignore_ascii_case("skip") => Some("skip"),
            Some(Ok(v)) if v.eq_ignore_ascii_case("refresh") => Some("refresh"),
            Some(Ok(v)) if v.eq_ignore_ascii_case("only") => Some("only"),
            Some(_) => {
                return Err(EdgeError::ClientBody(
                    "x-relay-cache must be skip, refresh or only".to_string(),
                ))
            }
        };
        let (no_cache, no_store) = cache_control(headers);
        let ttl = match headers.get(names::X_RELAY_CACHE_TTL) {
            None => c.ttl,
            Some(v) => match v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()) {
                Some(0) => None,
                Some(secs) => Some(Duration::from_secs(secs)),
                None => {
                    return Err(EdgeError::ClientBody(
                        "x-relay-cache-ttl must be a whole number of seconds".to_string(),
                    ))
                }
            },
        };
        if directive == Some("skip") && !offline {
            return Ok(Some(self.lookup_shell(Status::Bypass, c.replay_timing)));
        }
        let scope = match c.scope {
            CacheScope::Key => scope_for_api_key(headers),
            CacheScope::Global => Scope::Global,
        };
        let namespace = headers
            .get(names::X_RELAY_CACHE_NAMESPACE)
            .and_then(|v| v.to_str().ok());
        let key = self.keys.key(
            &c.ignore_fields,
            &KeyInput {
                provider,
                method: method.as_str(),
                path_and_query: upstream_path,
                body,
                scope,
                namespace,
            },
        );
        let refresh = no_cache || directive == Some("refresh");
        let (read, write, only, status) = match c.mode {
            CacheMode::Offline => (true, false, Some(MissReason::Offline), Status::Miss),
            _ if directive == Some("only") => (true, false, Some(MissReason::Only), Status::Miss),
            CacheMode::Record => (false, !no_store, None, Status::Refresh),
            CacheMode::Live if refresh => (false, !no_store, None, Status::Refresh),
            CacheMode::Live => (true, !no_store, None, Status::Miss),
        };
        Ok(Some(Lookup {
            key,
            read,
            write,
            only,
            ttl,
            timing: c.replay_timing,
            status,
        }))
    }

    fn lookup_shell(&self, status: Status, timing: ReplayTiming) -> Lookup {
        Lookup {
            key: CacheKey::from_bytes([0; 32]),
            read: false,
            write: false,
            only: None,
            ttl: None,
            timing,
            status,
        }
    }

    /// Runs the lookup: a hit, a share of an identical request in flight, or a forward.
    pub async fn resolve(
        self: &Arc<Self>,
        lookup: Lookup,
        request_id: &HeaderValue,
    ) -> Result<Outcome, EdgeError> {
        if lookup.status == Status::Bypass {
            return Ok(Outcome::Forward(Some(lookup), None));
        }
        if lookup.read {
            if let Some(entry) = self.get(lookup.key).await {
                return Ok(Outcome::Served(Box::new(
                    self.replay(lookup.key, entry, &lookup, request_id),
                )));
            }
        }
        if let Some(reason) = lookup.only {
            return Err(EdgeError::OfflineMiss {
                reason,
                key: lookup.key.short(),
            });
        }
        if !(lookup.read && lookup.write) {
            return Ok(Outcome::Forward(Some(lookup), None));
        }
        match self.flights.join(self, lookup.key) {
            Joined::Follow(flight) => {
                let resp = follow(flight, lookup.key, request_id).await?;
                Ok(Outcome::Served(Box::new(resp)))
            }
            Joined::Lead(lead) => {
                // The entry may have landed between the lookup and taking the lead.
                if let Some(entry) = self.get(lookup.key).await {
                    lead.publish(&entry);
                    return Ok(Outcome::Served(Box::new(
                        self.replay(lookup.key, entry, &lookup, request_id),
                    )));
                }
                Ok(Outcome::Forward(Some(lookup), Some(lead)))
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

    /// A response replayed from `entry`.
    fn replay(
        &self,
        key: CacheKey,
        entry: Arc<Entry>,
        lookup: &Lookup,
        request_id: &HeaderValue,
    ) -> http::Response<RelayBody> {
        let age = self.clock.now_ms().saturating_sub(entry.meta.created_ms) / 1000;
        // Derived once per entry when the store shares its entries; a store that copies them
        // (Redis) would only fill the memo with entries never seen again.
        let ready = if self.store.shares_entries() {
            self.replays.get(key, &entry)
        } else {
            Arc::new(Ready::of(&entry))
        };
        let body = match (&entry.response, lookup.timing) {
            (CachedBody::Sse(events), ReplayTiming::Original) => {
                RelayBody::stream(paced(events.clone()))
            }
            _ => RelayBody::full(ready.body.clone()),
        };
        let mut resp = http::Response::new(body);
        resp.extensions_mut().insert(ready.usage);
        *resp.status_mut() = ready.status;
        *resp.headers_mut() = ready.headers.clone();
        let h = resp.headers_mut();
        h.insert(header::AGE, HeaderValue::from(age));
        mark(h, Status::Hit, &lookup.key, request_id);
        resp
    }

    /// The tap that records the upstream answer of `lookup` and feeds `lead`'s followers; `None`
    /// when there is nothing to do.
    pub fn tap(
        self: &Arc<Self>,
        lookup: &Lookup,
        lead: Option<FlightLead>,
        answer: Answer<'_>,
        metrics: &Arc<Metrics>,
    ) -> Option<Tap> {
        if let Some(lead) = &lead {
            lead.flight.set_head(answer.status, answer.headers);
        }
        let recorder = if lookup.write && answer.status.is_success() {
            recording_kind(answer.headers).map(|kind| Recorder {
                kind,
                key: lookup.key,
                cache: self.clone(),
                metrics: metrics.clone(),
                meta: EntryMeta {
                    provider: answer.provider.to_string(),
                    model: answer.model.map(str::to_string),
                    method: answer.method.to_string(),
                    path: crate::redact::query(answer.path).into_owned(),
                    status: answer.status.as_u16(),
                    headers: stored_headers(answer.headers),
                    created_ms: 0,
                    expires_ms: None,
                    hits: 0,
                },
                ttl: lookup.ttl,
                request: answer.request,
                size: 0,
                last: Instant::now(),
            })
        } else {
            None
        };
        if recorder.is_none() && lead.is_none() {
            return None;
        }
        Some(Tap { recorder, lead })
    }
}

/// What a hit sends, derived once per stored entry: the status, the stored headers as a
/// `HeaderMap`, the body (an SSE recording's events joined, for `replay_timing: fast`) and the
/// usage recorded in it. Without this every hit would re-parse the headers and the body's usage.
struct Ready {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    usage: crate::cost::RecordedUsage,
}

impl Ready {
    fn of(entry: &Entry) -> Ready {
        let usage = crate::cost::RecordedUsage(match &entry.response {
            CachedBody::Json(b) => crate::cost::usage::from_json(b),
            CachedBody::Sse(events) => {
                crate::cost::usage::from_sse_events(events.iter().map(|e| &e.data[..]))
            }
        });
        let body = match &entry.response {
            CachedBody::Json(b) => b.clone(),
            CachedBody::Sse(events) => {
                let mut all = BytesMut::with_capacity(events.iter().map(|e| e.data.len()).sum());
                for e in events {
                    all.extend_from_slice(&e.data);
                }
                all.freeze()
            }
        };
        let mut headers = HeaderMap::with_capacity(entry.meta.headers.len() + 6);
        for (k, v) in &entry.meta.headers {
            if let (Ok(k), Ok(v)) = (
                HeaderName::try_from(k.as_str()),
                HeaderValue::try_from(v.as_str()),
            ) {
                headers.append(k, v);
            }
        }
        Ready {
            status: StatusCode::from_u16(entry.meta.status).unwrap_or(StatusCode::OK),
            headers,
            body,
            usage,
        }
    }
}

/// [`Ready`] answers of recently hit entries, by key. An entry is recognised by its `Arc` (the
/// store hands out the one it keeps in memory), so a replaced entry is never answered from an old
/// [`Ready`]. Bounded in bytes (what it holds alive: entries and joined SSE bodies): a shard past
/// [`Replays::SHARD_BYTES`] starts over, and an answer over a quarter of that is not kept.
struct Replays {
    ready: Memo<(Arc<Entry>, Arc<Ready>)>,
}

impl Default for Replays {
    fn default() -> Replays {
        Replays {
            ready: Memo::new(Self::SHARD_BYTES),
        }
    }
}

impl Replays {
    const SHARD_BYTES: u64 = 4 << 20;

    fn get(&self, key: CacheKey, entry: &Arc<Entry>) -> Arc<Ready> {
        let (_, ready) = self.ready.get_or_make(
            *key.as_bytes(),
            |(kept, _)| Arc::ptr_eq(kept, entry),
            || {
                let ready = Arc::new(Ready::of(entry));
                let size = held(entry, &ready);
                ((entry.clone(), ready), size)
            },
        );
        ready
    }
}

/// The bytes a [`Replays`] item keeps alive: the entry, and the joined body of an SSE recording.
fn held(entry: &Entry, ready: &Ready) -> u64 {
    let joined = match entry.response {
        CachedBody::Sse(_) => ready.body.len() as u64,
        CachedBody::Json(_) => 0,
    };
    entry.size() + joined
}

/// The upstream answer a [`Tap`] is made for.
pub struct Answer<'a> {
    pub provider: &'a str,
    pub model: Option<&'a str>,
    pub method: &'a Method,
    /// Upstream path and query.
    pub path: &'a str,
    /// The request body as sent.
    pub request: Bytes,
    pub status: StatusCode,
    pub headers: &'a HeaderMap,
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

/// `Cache-Control` request directives: (no-cache, no-store).
fn cache_control(headers: &HeaderMap) -> (bool, bool) {
    let mut no_cache = false;
    let mut no_store = false;
    for v in headers.get_all(header::CACHE_CONTROL) {
        for d in v.to_str().unwrap_or_default().split(',') {
            let d = d.trim();
            no_cache |= d.eq_ignore_ascii_case("no-cache");
            no_store |= d.eq_ignore_ascii_case("no-store");
        }
    }
    (no_cache, no_store)
}

fn stored_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(k, _)| !NOT_STORED.contains(&k.as_str()))
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect()
}

/// SSE events with their recorded pauses.
fn paced(
    events: Vec<SseEvent>,
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, BoxError>> + Send {
    futures_util::stream::unfold(events.into_iter(), |mut it| async move {
        let e = it.next()?;
        if e.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(u64::from(e.delay_ms))).await;
        }
        Some((Ok(Frame::data(e.data)), it))
    })
}

// ------------------------------------------------------------------------------------ recording

enum Kind {
    Json(BytesMut),
    Sse {
        /// Bytes of the event being received.
        partial: BytesMut,
        events: Vec<SseEvent>,
        ended: bool,
        failed: bool,
    },
}

/// Collects one upstream answer and stores it when it ended cleanly.
struct Recorder {
    kind: Kind,
    key: CacheKey,
    cache: Arc<Cache>,
    metrics: Arc<Metrics>,
    meta: EntryMeta,
    ttl: Option<Duration>,
    request: Bytes,
    size: u64,
    last: Instant,
}

/// Largest answer relay holds in memory to store it; bigger ones pass through unrecorded.
const MAX_RECORDED: u64 = 64 << 20;

/// The recording kind for a response, or `None` when it cannot be stored faithfully.
fn recording_kind(headers: &HeaderMap) -> Option<Kind> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let encoded = headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes() != b"identity");
    if ct.starts_with("text/event-stream") {
        // Events cannot be told apart in a compressed stream.
        (!encoded).then(|| Kind::Sse {
            partial: BytesMut::new(),
            events: Vec::new(),
            ended: false,
            failed: false,
        })
    } else {
        Some(Kind::Json(BytesMut::new()))
    }
}

impl Recorder {
    /// Returns false when the answer got too big to record.
    fn push(&mut self, data: &Bytes) -> bool {
        self.size += data.len() as u64;
        if self.size > MAX_RECORDED {
            return false;
        }
        match &mut self.kind {
            Kind::Json(buf) => buf.extend_from_slice(data),
            Kind::Sse {
                partial,
                events,
                ended,
                failed,
            } => {
                let mut first = true;
                crate::wire::sse::split_events(partial, data, |event| {
                    for line in event.split(|b| *b == b'\n') {
                        let line = line.trim_ascii_end();
                        *ended |= line == b"data: [DONE]"
                            || line == b"event: message_stop"
                            || line == b"event: response.completed";
                        *failed |= line == b"event: error"
                            || line == b"event: response.failed"
                            || line == b"event: response.incomplete";
                    }
                    // Events completed by one chunk arrived together: the first carries the pause
                    // since the previous event.
                    let mut delay_ms = 0;
                    if std::mem::take(&mut first) {
                        let now = Instant::now();
                        let delay = now.duration_since(self.last);
                        self.last = now;
                        delay_ms = u32::try_from(delay.as_millis()).unwrap_or(u32::MAX);
                    }
                    events.push(SseEvent {
                        delay_ms,
                        data: event,
                    });
                });
            }
        }
        true
    }

    /// The body ended cleanly: store the entry if it is complete.
    fn finish(self) {
        let response = match self.kind {
            Kind::Json(buf) => CachedBody::Json(buf.freeze()),
            Kind::Sse {
                partial,
                events,
                ended,
                failed,
            } => {
                if !ended || failed || !partial.iter().all(|b| b.is_ascii_whitespace()) {
                    return;
                }
                CachedBody::Sse(events)
            }
        };
        let now = self.cache.clock.now_ms();
        let mut meta = self.meta;
        meta.created_ms = now;
        meta.expires_ms = self
            .ttl
            .map(|t| now.saturating_add(u64::try_from(t.as_millis()).unwrap_or(u64::MAX)));
        let entry = Entry {
            meta,
            request: self.request,
            response,
        };
        let store = &self.cache.store;
        match store.put(self.key, entry) {
            Ok(()) => {
                if self.cache.outage.ok(Op::Write) {
                    tracing::info!(backend = store.backend(), "cache writes are accepted again");
                }
            }
            // Not a store failure: this answer alone is over the size bound.
            Err(crate::cache::StoreError::TooLarge { .. }) => {}
            Err(e) => {
                self.metrics
                    .cache_errors
                    .with_label_values(&[store.backend()])
                    .inc();
                if self.cache.outage.failed(Op::Write) {
                    tracing::warn!(
                        backend = store.backend(),
                        error = %e,
                        "cache writes are refused (each counts in relay_cache_errors_total); answers are not recorded until they are accepted again"
                    );
                }
            }
        }
    }
}

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

/// Rides on an upstream response body: records it, and feeds a single flight's followers.
pub struct Tap {
    recorder: Option<Recorder>,
    lead: Option<FlightLead>,
}

impl super::body::Tap for Tap {
    fn on_data(&mut self, data: &Bytes) {
        if let Some(r) = &mut self.recorder {
            if !r.push(data) {
                self.recorder = None;
            }
        }
        if let Some(l) = &self.lead {
            l.flight.push(data.clone());
        }
    }

    /// The upstream body ended cleanly: store, then let followers finish.
    fn on_end(&mut self) {
        if let Some(r) = self.recorder.take() {
            r.finish();
        }
        if let Some(l) = self.lead.take() {
            l.complete();
        }
    }

    /// The upstream body failed: nothing is stored; followers see the failure.
    fn on_error(&mut self) {
        self.recorder = None;
        self.lead = None; // dropping an unfinished lead fails its flight
    }

    /// True when others are waiting on this body (so it must be read to the end even if its own
    /// caller left).
    fn has_followers(&self) -> bool {
        self.lead
            .as_ref()
            .is_some_and(|l| l.flight.followers.load(Ordering::Relaxed) > 0)
    }
}

// ------------------------------------------------------------------------------- single flight

/// Requests in flight by key, sharded so no one lock sees every request.
struct Flights {
    shards: Vec<Mutex<HashMap<CacheKey, Arc<Flight>>>>,
}

const SHARDS: usize = 16;

enum Joined {
    Lead(FlightLead),
    Follow(Arc<Flight>),
}

impl Flights {
    fn new() -> Flights {
        Flights {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, key: &CacheKey) -> &Mutex<HashMap<CacheKey, Arc<Flight>>> {
        &self.shards[usize::from(key.as_bytes()[0]) % SHARDS]
    }

    fn join(&self, cache: &Arc<Cache>, key: CacheKey) -> Joined {
        let mut map = self.shard(&key).lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = map.get(&key) {
            f.followers.fetch_add(1, Ordering::Relaxed);
            return Joined::Follow(f.clone());
        }
        let flight = Arc::new(Flight::new());
        map.insert(key, flight.clone());
        Joined::Lead(FlightLead {
            cache: cache.clone(),
            key,
            flight,
            done: false,
        })
    }

    fn remove(&self, key: &CacheKey, flight: &Arc<Flight>) {
        let mut map = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
        if map.get(key).is_some_and(|f| Arc::ptr_eq(f, flight)) {
            map.remove(key);
        }
    }
}

/// One upstream answer being shared.
struct Flight {
    state: Mutex<FlightState>,
    changed: watch::Sender<()>,
    followers: AtomicUsize,
}

#[derive(Default)]
struct FlightState {
    head: Option<(StatusCode, HeaderMap)>,
    chunks: Vec<Bytes>,
    /// How the flight ended: the leader's own error when it failed before or while answering.
    end: Option<Result<(), EdgeError>>,
}

impl Flight {
    fn new() -> Flight {
        Flight {
            state: Mutex::new(FlightState::default()),
            changed: watch::channel(()).0,
            followers: AtomicUsize::new(0),
        }
    }

    fn update(&self, f: impl FnOnce(&mut FlightState)) {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()));
        self.changed.send_replace(());
    }

    fn set_head(&self, status: StatusCode, headers: &HeaderMap) {
        let headers = headers.clone();
        self.update(|s| s.head = Some((status, headers)));
    }

    fn push(&self, chunk: Bytes) {
        self.update(|s| s.chunks.push(chunk));
    }
}

/// The leader's hold on a flight. Dropped unfinished, it fails the flight.
pub struct FlightLead {
    cache: Arc<Cache>,
    key: CacheKey,
    flight: Arc<Flight>,
    done: bool,
}

impl FlightLead {
    /// Serves followers a whole stored entry (the leader found it on its second look).
    fn publish(mut self, entry: &Entry) {
        let mut headers = HeaderMap::new();
        for (k, v) in &entry.meta.headers {
            if let (Ok(k), Ok(v)) = (
                HeaderName::try_from(k.as_str()),
                HeaderValue::try_from(v.as_str()),
            ) {
                headers.append(k, v);
            }
        }
        let status = StatusCode::from_u16(entry.meta.status).unwrap_or(StatusCode::OK);
        let body = entry.response.to_bytes();
        self.flight.update(|s| {
            s.head = Some((status, headers));
            s.chunks.push(body);
            s.end = Some(Ok(()));
        });
        self.done = true;
        self.cache.flights.remove(&self.key, &self.flight);
    }

    fn complete(mut self) {
        self.flight.update(|s| s.end = Some(Ok(())));
        self.done = true;
        self.cache.flights.remove(&self.key, &self.flight);
    }

    /// Fails the flight with relay's error for the leader (followers get the same status).
    pub fn fail(mut self, why: &EdgeError) {
        let why = why.clone();
        self.flight.update(|s| s.end = Some(Err(why)));
        self.done = true;
        self.cache.flights.remove(&self.key, &self.flight);
    }
}

impl Drop for FlightLead {
    fn drop(&mut self) {
        if !self.done {
            let cut = EdgeError::Unreachable {
                provider: "shared request".to_string(),
                detail: "the shared upstream response was cut off".to_string(),
            };
            self.flight.update(|s| s.end = Some(Err(cut)));
            self.cache.flights.remove(&self.key, &self.flight);
        }
    }
}

/// A follower's response: the leader's head, then its body from the first chunk.
async fn follow(
    flight: Arc<Flight>,
    key: CacheKey,
    request_id: &HeaderValue,
) -> Result<http::Response<RelayBody>, EdgeError> {
    let mut rx = flight.changed.subscribe();
    let (status, mut headers) = loop {
        {
            let s = flight.state.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((status, headers)) = &s.head {
                break (*status, headers.clone());
            }
            if let Some(Err(e)) = &s.end {
                return Err(e.clone());
            }
        }
        if rx.changed().await.is_err() {
            return Err(EdgeError::Unreachable {
                provider: "shared request".to_string(),
                detail: "the shared upstream request ended".to_string(),
            });
        }
    };
    headers.remove(header::CONTENT_LENGTH);
    mark(&mut headers, Status::Hit, &key, request_id);
    let body =
        futures_util::stream::unfold((flight, rx, 0usize), |(flight, mut rx, i)| async move {
            loop {
                {
                    let s = flight.state.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(chunk) = s.chunks.get(i) {
                        let chunk = chunk.clone();
                        drop(s);
                        return Some((Ok(Frame::data(chunk)), (flight, rx, i + 1)));
                    }
                    match &s.end {
                        Some(Ok(())) => return None,
                        Some(Err(e)) => {
                            let e: BoxError = e.to_string().into();
                            drop(s);
                            return Some((Err(e), (flight, rx, usize::MAX)));
                        }
                        None => {}
                    }
                }
                if i == usize::MAX || rx.changed().await.is_err() {
                    return None;
                }
            }
        });
    let mut resp = http::Response::new(RelayBody::stream(body));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

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
