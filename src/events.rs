//! The live request feed: what `relay tui` and `GET /relay/events` show.
//!
//! Every request's [`Exchange`](crate::proxy::body::Exchange) publishes [`RequestEvent`]s when
//! someone is listening: a [`Phase::Start`] with status 0 when it is sent upstream (cache hits skip
//! it), another [`Phase::Start`] when its response headers are known (so a running stream shows as in
//! flight), and a [`Phase::End`] when its body has finished. Events go into one bounded
//! [`tokio::sync::broadcast`] channel ([`Events`]): publishing never waits; when a subscriber lags by
//! more than the channel's capacity, the oldest events are overwritten for it and counted in
//! `relay_events_dropped_total`.
//!
//! With nobody subscribed the request path does one atomic load and nothing else: no event is built,
//! nothing is captured. While a subscriber exists, each request also captures a [`Detail`]: its
//! request and response headers (key headers redacted at capture, see [`redact`]) and the first
//! [`BODY_CAPTURE_LIMIT`] bytes of each body, for the TUI's detail view.

pub mod stream;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use prometheus::IntCounter;
use serde::{Deserialize, Serialize};

use crate::wire::headers as names;
use tokio::sync::{broadcast, watch};

/// Events a subscriber may fall behind by before the oldest are dropped for it.
pub const DEFAULT_CAPACITY: usize = 1024;

/// Bytes of each body kept for the detail view (the rest is counted, not kept): a Claude Code
/// request is about 80 KB, a long session's several hundred.
pub const BODY_CAPTURE_LIMIT: usize = 1 << 20;

/// Captured bytes the feed's window (its last `capacity` events) may hold in all: an event that
/// would pass it is published with its headers but without its bodies (marked truncated).
pub const FEED_DETAIL_BUDGET: u64 = 64 << 20;

/// Path of the SSE feed (loopback peers only).
pub const PATH: &str = "/relay/events";

/// Headers whose values are secrets: shown as `***` (after the auth scheme, e.g. `Bearer ***`).
pub const SECRET_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "api-key",
    "x-goog-api-key",
    "cookie",
    "set-cookie",
];

/// Which half of a request an event reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// The request is running: sent upstream (status 0, no response headers yet), or its response
    /// headers are known and the body (a stream, perhaps) is still going. A request may have two.
    Start,
    /// The response has ended (or the caller left).
    #[default]
    End,
}

/// What the cache did for a request (`x-relay-cache`); `None` on an event when it was not cacheable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum CacheState {
    Hit,
    Miss,
    Bypass,
    Refresh,
}

impl CacheState {
    /// Parses an `x-relay-cache` response header value.
    pub fn from_header(v: &str) -> Option<CacheState> {
        match v {
            "HIT" => Some(CacheState::Hit),
            "MISS" => Some(CacheState::Miss),
            "BYPASS" => Some(CacheState::Bypass),
            "REFRESH" => Some(CacheState::Refresh),
            _ => None,
        }
    }

    /// `HIT`, `MISS`, `BYPASS` or `REFRESH`.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheState::Hit => "HIT",
            CacheState::Miss => "MISS",
            CacheState::Bypass => "BYPASS",
            CacheState::Refresh => "REFRESH",
        }
    }
}

/// One request as the feed reports it. Times are microseconds from the request's arrival.
/// (`Default`: an empty end event, a base for test fixtures.)
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestEvent {
    /// Process-wide request number (matches a request's start and end events).
    pub seq: u64,
    pub phase: Phase,
    /// Arrival, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// `x-request-id` (the caller's, or the one relay made).
    pub request_id: String,
    pub method: String,
    pub path: String,
    pub provider: Option<String>,
    pub model: Option<String>,
    /// Response status; 0 on a start event sent before the response headers; on an end event 499
    /// when the caller left before the response headers.
    pub status: u16,
    pub cache: Option<CacheState>,
    /// The cache key's first 12 hex characters (`x-relay-cache-key`).
    pub cache_key: Option<String>,
    /// Until the response ended (end events only).
    pub latency_us: Option<u64>,
    /// Until the first body byte went to the caller.
    pub ttfb_us: Option<u64>,
    /// From sending upstream to its response headers (no upstream call: `None`).
    pub upstream_us: Option<u64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// `complete`, `client_gone`, `upstream_error`, `idle_timeout` (end events only).
    pub outcome: Option<String>,
    /// Relay's own error code (`x-relay-error`), when relay answered with an error.
    pub error: Option<String>,
    /// Prompt tokens (filled by the cost work item; `None` until then or when unknown).
    pub tokens_in: Option<u64>,
    /// Completion tokens (filled by the cost work item).
    pub tokens_out: Option<u64>,
    /// Price of the request in micro-USD (filled by the cost work item).
    pub cost_micro_usd: Option<u64>,
    /// What a cache hit saved, in micro-USD (filled by the cost work item).
    pub saved_micro_usd: Option<u64>,
    /// What the provider's prompt cache saved on this request, micro-USD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_cache_saved_micro_usd: Option<u64>,
    /// Prompt tokens read from the provider's prompt cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_cached: Option<u64>,
    /// Tokens were used, but the model has no price: its cost is $0 for want of one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unpriced: bool,
    /// Each retry and hand-over to the fallback before the answer (`openai 503, retried after
    /// 420 ms`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<String>,
    /// The agent session the request belongs to (`x-relay-session`, Claude Code's or Codex's id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// The key it is booked to, as the ledger names it: a relay key's name, an alias,
    /// `key-<hash prefix>` (never the key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// While a stream runs: its output tokens so far, estimated from the text it generated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_live: Option<u64>,
    /// Headers and bodies, captured only while someone subscribes.
    pub detail: Option<Box<Detail>>,
}

/// A request's headers and (the start of) its bodies, secrets redacted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Detail {
    pub request_headers: Vec<(String, String)>,
    /// The first [`BODY_CAPTURE_LIMIT`] bytes, as UTF-8 (lossy).
    pub request_body: String,
    /// The request body was longer than what is kept (or streamed through and not captured).
    pub request_truncated: bool,
    pub response_headers: Vec<(String, String)>,
    pub response_body: String,
    pub response_truncated: bool,
}

/// The feed: one per server. Cheap to share (`Arc`).
pub struct Events {
    tx: broadcast::Sender<Arc<RequestEvent>>,
    capacity: usize,
    subscribers: Arc<AtomicUsize>,
    seq: AtomicU64,
    dropped: IntCounter,
    closed: watch::Sender<bool>,
    /// Captured bytes of the events in the window, by slot (`seq % capacity`), and their sum.
    window: Box<[AtomicU64]>,
    window_bytes: AtomicU64,
}

/// Bytes of an event's captured headers and bodies.
pub fn detail_bytes(ev: &RequestEvent) -> u64 {
    let Some(d) = &ev.detail else { return 0 };
    let headers = |h: &[(String, String)]| h.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
    (headers(&d.request_headers)
        + headers(&d.response_headers)
        + d.request_body.len()
        + d.response_body.len()) as u64
}

impl Events {
    /// A feed holding up to `capacity` events per lagging subscriber; drops count in `dropped`.
    pub fn new(capacity: usize, dropped: IntCounter) -> Events {
        let capacity = capacity.max(1);
        let (tx, _) = broadcast::channel(capacity);
        Events {
            tx,
            capacity,
            subscribers: Arc::new(AtomicUsize::new(0)),
            seq: AtomicU64::new(1),
            dropped,
            closed: watch::channel(false).0,
            window: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
            window_bytes: AtomicU64::new(0),
        }
    }

    /// Whether anyone listens (one atomic load: the request path's only cost without subscribers).
    pub fn active(&self) -> bool {
        self.subscribers.load(Ordering::Relaxed) > 0
    }

    /// The next request number.
    pub fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends `ev` to every subscriber without waiting. A subscriber that is `capacity` events behind
    /// loses its oldest event; each such loss is counted once in `relay_events_dropped_total`.
    pub fn publish(&self, ev: RequestEvent) {
        if !self.active() {
            return;
        }
        if self.tx.len() >= self.capacity {
            self.dropped.inc();
        }
        let mut ev = ev;
        let slot = &self.window[(ev.seq as usize) % self.capacity];
        let mut size = detail_bytes(&ev);
        let old = slot.load(Ordering::Relaxed);
        let held = self
            .window_bytes
            .load(Ordering::Relaxed)
            .saturating_sub(old);
        if held + size > FEED_DETAIL_BUDGET {
            if let Some(d) = ev.detail.as_deref_mut() {
                d.request_truncated |= !d.request_body.is_empty();
                d.response_truncated |= !d.response_body.is_empty();
                d.request_body = String::new();
                d.response_body = String::new();
            }
            size = detail_bytes(&ev);
        }
        // Lock-free: the slot's old size was added before, so the sum never goes below zero.
        let old = slot.swap(size, Ordering::Relaxed);
        self.window_bytes.fetch_add(size, Ordering::Relaxed);
        self.window_bytes.fetch_sub(old, Ordering::Relaxed);
        let _ = self.tx.send(Arc::new(ev));
    }

    /// Starts listening. Events published from now on are delivered (from requests that began
    /// before, the end event only).
    pub fn subscribe(&self) -> Subscription {
        self.subscribers.fetch_add(1, Ordering::Relaxed);
        Subscription {
            rx: self.tx.subscribe(),
            subscribers: self.subscribers.clone(),
            closed: self.closed.subscribe(),
            lagged: 0,
        }
    }

    /// Ends every subscription (server shutdown): `/relay/events` streams close.
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// Events dropped so far for lagging subscribers.
    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }
}

/// One subscriber's end of the feed.
pub struct Subscription {
    rx: broadcast::Receiver<Arc<RequestEvent>>,
    subscribers: Arc<AtomicUsize>,
    closed: watch::Receiver<bool>,
    lagged: u64,
}

/// What [`Subscription::try_next`] found.
#[derive(Debug)]
pub enum Next {
    Event(Arc<RequestEvent>),
    /// This subscriber lost that many events (it read too slowly).
    Lagged(u64),
    /// Nothing waiting.
    Empty,
    /// The feed is gone.
    Closed,
}

impl Subscription {
    /// The next event; `Err(n)` when this subscriber lost `n` events first (read on to go on);
    /// `None` once the feed is closed.
    pub async fn recv(&mut self) -> Option<Result<Arc<RequestEvent>, u64>> {
        if *self.closed.borrow() {
            return None;
        }
        tokio::select! {
            r = self.rx.recv() => match r {
                Ok(ev) => Some(Ok(ev)),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    self.lagged += n;
                    Some(Err(n))
                }
                Err(broadcast::error::RecvError::Closed) => None,
            },
            _ = self.closed.wait_for(|c| *c) => None,
        }
    }

    /// Non-blocking read, for the TUI's thread.
    pub fn try_next(&mut self) -> Next {
        if *self.closed.borrow() {
            return Next::Closed;
        }
        match self.rx.try_recv() {
            Ok(ev) => Next::Event(ev),
            Err(broadcast::error::TryRecvError::Lagged(n)) => {
                self.lagged += n;
                Next::Lagged(n)
            }
            Err(broadcast::error::TryRecvError::Empty) => Next::Empty,
            Err(broadcast::error::TryRecvError::Closed) => Next::Closed,
        }
    }

    /// Events this subscriber lost so far.
    pub fn lagged(&self) -> u64 {
        self.lagged
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.subscribers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A header value fit for display: secret headers keep only their auth scheme (`Bearer ***`).
pub fn redact(name: &str, value: &str) -> String {
    if !SECRET_HEADERS.iter().any(|s| name.eq_ignore_ascii_case(s)) {
        return value.to_string();
    }
    match value.split_once(' ') {
        Some((scheme, _))
            if matches!(
                scheme.to_ascii_lowercase().as_str(),
                "bearer" | "basic" | "token"
            ) =>
        {
            format!("{scheme} ***")
        }
        _ => "***".to_string(),
    }
}

fn headers_list(h: &HeaderMap) -> Vec<(String, String)> {
    h.iter()
        .map(|(k, v)| {
            let v = String::from_utf8_lossy(v.as_bytes());
            (k.as_str().to_string(), redact(k.as_str(), &v))
        })
        .collect()
}

/// A request's part in the feed, held by its `Exchange` only while someone subscribes.
pub struct Live {
    events: Arc<Events>,
    seq: u64,
    time_ms: u64,
    first_byte: Option<Duration>,
    cache: Option<CacheState>,
    cache_key: Option<String>,
    request_headers: Vec<(String, String)>,
    request_body: Bytes,
    request_truncated: bool,
    response_headers: Vec<(String, String)>,
    response_body: BytesMut,
    response_truncated: bool,
    /// A streamed answer: its incomplete event, the generated text's characters so far, and when
    /// progress was last published.
    stream: Option<StreamProgress>,
}

/// How far a streamed answer has got, for the live token count.
#[derive(Default)]
struct StreamProgress {
    partial: BytesMut,
    chars: u64,
    published: Option<Instant>,
}

/// How often, at most, a running stream publishes its progress.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// The `Exchange` fields an event reports, borrowed at publish time.
pub struct Snapshot<'a> {
    pub started: Instant,
    pub request_id: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub provider: Option<&'a str>,
    pub model: Option<&'a str>,
    pub status: u16,
    pub upstream: Option<Duration>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub error: Option<&'a str>,
    /// End events: how the response ended.
    pub outcome: Option<&'a str>,
    /// Tokens as metered (or estimated) by the cost stage, when known.
    pub usage: Option<crate::cost::Usage>,
    /// What the request cost, micro-USD (meaningful when `usage` is known).
    pub cost_micros: u64,
    /// Cache hits: what the request would have cost, micro-USD.
    pub saved_micros: u64,
    /// What the provider's prompt cache saved, micro-USD.
    pub prompt_cache_saved_micros: u64,
    /// Tokens were used, but the model has no price.
    pub unpriced: bool,
    /// Retries and hand-overs to the fallback, in order.
    pub attempts: &'a [String],
    pub session: Option<&'a str>,
    /// The key as the ledger books it.
    pub key: Option<&'a str>,
}

impl Live {
    /// Starts a request's feed entry when `events` has a subscriber (else `None`, costing nothing).
    pub fn begin(events: &Arc<Events>, request_headers: &HeaderMap) -> Option<Box<Live>> {
        if !events.active() {
            return None;
        }
        let time_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Some(Box::new(Live {
            events: events.clone(),
            seq: events.next_seq(),
            time_ms,
            first_byte: None,
            cache: None,
            cache_key: None,
            request_headers: headers_list(request_headers),
            request_body: Bytes::new(),
            request_truncated: false,
            response_headers: Vec::new(),
            response_body: BytesMut::new(),
            response_truncated: false,
            stream: None,
        }))
    }

    /// Keeps the start of the request body (zero-copy).
    pub fn request_body(&mut self, body: &Bytes) {
        self.request_truncated = body.len() > BODY_CAPTURE_LIMIT;
        self.request_body = body.slice(..body.len().min(BODY_CAPTURE_LIMIT));
    }

    /// The request goes upstream: publish a start event with status 0.
    pub fn pending(&self, x: Snapshot<'_>) {
        self.events.publish(self.event(Phase::Start, x, None));
    }

    /// Response headers are known: capture them and publish the start event.
    pub fn response_headers(&mut self, headers: &HeaderMap, x: Snapshot<'_>) {
        self.response_headers = headers_list(headers);
        self.cache = headers
            .get(names::X_RELAY_CACHE)
            .and_then(|v| v.to_str().ok())
            .and_then(CacheState::from_header);
        self.cache_key = headers
            .get(names::X_RELAY_CACHE_KEY)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if crate::wire::has_event_stream(headers) {
            self.stream = Some(StreamProgress::default());
        }
        let ev = self.event(Phase::Start, x, None);
        self.events.publish(ev);
    }

    /// A body chunk went to the caller.
    pub fn on_data(&mut self, data: &Bytes, started: Instant) {
        if self.first_byte.is_none() && !data.is_empty() {
            self.first_byte = Some(started.elapsed());
        }
        let room = BODY_CAPTURE_LIMIT.saturating_sub(self.response_body.len());
        if data.len() > room {
            self.response_truncated = true;
        }
        self.response_body
            .extend_from_slice(&data[..data.len().min(room)]);
        if let Some(s) = &mut self.stream {
            let mut chars = 0;
            crate::wire::sse::split_events(&mut s.partial, data, |ev| {
                chars += crate::wire::sse::delta_chars(&ev);
            });
            s.chars += chars as u64;
        }
    }

    /// A running stream's output tokens so far, estimated (4 characters a token), when it is time
    /// to publish them again ([`PROGRESS_EVERY`]).
    pub fn progress_due(&mut self) -> Option<u64> {
        let s = self.stream.as_mut()?;
        if s.chars == 0 || s.published.is_some_and(|t| t.elapsed() < PROGRESS_EVERY) {
            return None;
        }
        s.published = Some(Instant::now());
        Some(s.chars.div_ceil(4))
    }

    /// Publishes a running stream's progress: a start event with its live token estimate.
    pub fn progress(&self, x: Snapshot<'_>, tokens: u64) {
        let mut ev = self.event(Phase::Start, x, None);
        ev.tokens_live = Some(tokens);
        self.events.publish(ev);
    }

    /// The response ended: publish the end event with the captured detail.
    pub fn finish(mut self, x: Snapshot<'_>) {
        let latency = x.started.elapsed();
        let detail = Detail {
            request_headers: std::mem::take(&mut self.request_headers),
            request_body: String::from_utf8_lossy(&self.request_body).into_owned(),
            request_truncated: self.request_truncated,
            response_headers: std::mem::take(&mut self.response_headers),
            response_body: String::from_utf8_lossy(&self.response_body).into_owned(),
            response_truncated: self.response_truncated,
        };
        let ev = self.event(Phase::End, x, Some((latency, detail)));
        self.events.publish(ev);
    }

    fn event(
        &self,
        phase: Phase,
        x: Snapshot<'_>,
        end: Option<(Duration, Detail)>,
    ) -> RequestEvent {
        let us = |d: Duration| d.as_micros() as u64;
        let (latency, detail) = match end {
            Some((l, d)) => (Some(us(l)), Some(Box::new(d))),
            None => (None, None),
        };
        RequestEvent {
            seq: self.seq,
            phase,
            time_ms: self.time_ms,
            request_id: x.request_id.to_string(),
            method: x.method.to_string(),
            path: x.path.to_string(),
            provider: x.provider.map(str::to_string),
            model: x.model.map(str::to_string),
            status: match (phase, x.status) {
                (Phase::End, 0) => 499,
                (_, s) => s,
            },
            cache: self.cache,
            cache_key: self.cache_key.clone(),
            latency_us: latency,
            ttfb_us: self.first_byte.map(us),
            upstream_us: x.upstream.map(us),
            bytes_in: x.bytes_in,
            bytes_out: x.bytes_out,
            outcome: x.outcome.map(str::to_string),
            error: x.error.map(str::to_string),
            tokens_in: x.usage.map(|u| u.prompt()),
            tokens_out: x.usage.map(|u| u.output),
            cost_micro_usd: x.usage.map(|_| x.cost_micros),
            saved_micro_usd: (x.saved_micros > 0).then_some(x.saved_micros),
            prompt_cache_saved_micro_usd: (x.prompt_cache_saved_micros > 0)
                .then_some(x.prompt_cache_saved_micros),
            tokens_cached: x.usage.map(|u| u.cached_input).filter(|n| *n > 0),
            unpriced: x.unpriced,
            attempts: x.attempts.to_vec(),
            session: x.session.map(str::to_string),
            key: x.key.map(str::to_string),
            tokens_live: None,
            detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64) -> RequestEvent {
        RequestEvent {
            seq,
            phase: Phase::End,
            time_ms: 0,
            request_id: format!("r{seq}"),
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            provider: None,
            model: None,
            status: 200,
            cache: None,
            ..Default::default()
        }
    }

    fn counter() -> IntCounter {
        IntCounter::new("d", "d").unwrap()
    }

    #[test]
    fn nothing_is_built_without_subscribers() {
        let events = Arc::new(Events::new(4, counter()));
        assert!(!events.active());
        assert!(Live::begin(&events, &HeaderMap::new()).is_none());
        let sub = events.subscribe();
        assert!(events.active());
        assert!(Live::begin(&events, &HeaderMap::new()).is_some());
        drop(sub);
        assert!(!events.active());
    }

    #[test]
    fn a_lagging_subscriber_loses_the_oldest_and_drops_are_counted() {
        let events = Events::new(4, counter());
        let mut sub = events.subscribe();
        for i in 0..10 {
            events.publish(ev(i));
        }
        assert_eq!(events.dropped(), 6);
        assert!(matches!(sub.try_next(), Next::Lagged(6)));
        let got: Vec<u64> = std::iter::from_fn(|| match sub.try_next() {
            Next::Event(e) => Some(e.seq),
            _ => None,
        })
        .collect();
        assert_eq!(got, vec![6, 7, 8, 9]);
        assert_eq!(sub.lagged(), 6);
    }

    #[tokio::test]
    async fn close_ends_subscriptions() {
        let events = Events::new(4, counter());
        let mut sub = events.subscribe();
        events.publish(ev(1));
        assert_eq!(sub.recv().await.unwrap().unwrap().seq, 1);
        events.close();
        assert!(sub.recv().await.is_none());
    }

    #[test]
    fn secrets_are_redacted_at_capture() {
        assert_eq!(redact("Authorization", "Bearer sk-abc"), "Bearer ***");
        assert_eq!(redact("x-api-key", "sk-ant-123"), "***");
        assert_eq!(redact("authorization", "sk-no-scheme"), "***");
        assert_eq!(
            redact("content-type", "application/json"),
            "application/json"
        );
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer sk-secret".parse().unwrap());
        h.insert("x-api-key", "sk-ant-secret".parse().unwrap());
        let list = headers_list(&h);
        assert!(!format!("{list:?}").contains("secret"), "{list:?}");
    }

    #[test]
    fn bodies_are_captured_up_to_the_limit() {
        let events = Arc::new(Events::new(4, counter()));
        let _sub = events.subscribe();
        let mut live = Live::begin(&events, &HeaderMap::new()).unwrap();
        let big = Bytes::from(vec![b'a'; BODY_CAPTURE_LIMIT + 10]);
        live.request_body(&big);
        assert_eq!(live.request_body.len(), BODY_CAPTURE_LIMIT);
        assert!(live.request_truncated);
        let started = Instant::now();
        live.on_data(&Bytes::from(vec![b'b'; BODY_CAPTURE_LIMIT - 5]), started);
        live.on_data(&Bytes::from_static(b"0123456789"), started);
        assert_eq!(live.response_body.len(), BODY_CAPTURE_LIMIT);
        assert!(live.response_truncated);
        assert!(live.first_byte.is_some());
    }

    #[test]
    fn the_window_keeps_its_captured_bytes_within_the_budget() {
        let events = Events::new(8, IntCounter::new("d", "d").unwrap());
        let mut rx = events.subscribe();
        let body = "x".repeat(BODY_CAPTURE_LIMIT);
        let big = |seq: u64| RequestEvent {
            seq,
            detail: Some(Box::new(Detail {
                request_body: body.clone(),
                response_body: body.clone(),
                ..Default::default()
            })),
            ..Default::default()
        };
        let per = 2 * BODY_CAPTURE_LIMIT as u64;
        let fit = FEED_DETAIL_BUDGET / per;
        for seq in 0..64 {
            events.publish(big(seq));
        }
        assert!(events.window_bytes.load(Ordering::Relaxed) <= FEED_DETAIL_BUDGET);
        // The window holds 8 events, all of which fit: none lost its bodies.
        assert!(fit >= 8);
        let mut kept = 0;
        loop {
            match rx.rx.try_recv() {
                Ok(ev) => kept += usize::from(!ev.detail.as_ref().unwrap().request_truncated),
                Err(broadcast::error::TryRecvError::Lagged(_)) => continue,
                Err(_) => break,
            }
        }
        assert_eq!(kept, 8);
        // A window too small for the next event strips its bodies, keeps its headers.
        let small = Events::new(1024, IntCounter::new("e", "e").unwrap());
        let mut rx = small.subscribe();
        for seq in 0..(fit + 5) {
            let mut ev = big(seq);
            ev.detail.as_mut().unwrap().request_headers = vec![("a".into(), "b".into())];
            small.publish(ev);
        }
        assert!(small.window_bytes.load(Ordering::Relaxed) <= FEED_DETAIL_BUDGET);
        let mut stripped = 0;
        while let Ok(ev) = rx.rx.try_recv() {
            let d = ev.detail.as_ref().unwrap();
            assert_eq!(d.request_headers.len(), 1, "headers always kept");
            if d.request_truncated {
                assert!(d.request_body.is_empty() && d.response_truncated);
                stripped += 1;
            }
        }
        let fit_with_headers = FEED_DETAIL_BUDGET / (per + 2);
        assert_eq!(
            stripped,
            fit + 5 - fit_with_headers,
            "only what passes the budget"
        );
    }
}
