//! The per-request context, built once when a request enters the pipeline: its id, method and
//! path, then what the stages learn (route, provider, model and its metric label, the cost
//! tally, the token reservation, the breaker ticket of a stream), the timings, byte counts and
//! usage, and how it ended. Stages read it; none works these facts out again.
//!
//! It travels in the response body ([`super::body::RelayBody`]), so it is closed when the last
//! byte has gone out or the caller disconnects (the body is dropped, which drops the upstream
//! response and so cancels the upstream request): the one closing phase, [`super::finish`],
//! which also holds its `Drop` fallback, for a context dropped before its body ended (the handler
//! cancelled before it answered).
//!
//! While someone watches the live feed ([`crate::events`]: `relay tui`, `/relay/events`), the
//! context also captures headers and the start of each body and publishes the request's events.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method};

use crate::error::EdgeError;
use crate::events::{Events, Live, Snapshot};
use crate::metrics::Metrics;

/// Who a request is from, worked out once by one rule ([`crate::caller`]): what the cache, the
/// rate limits and the cost booking all read.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// The caller: its relay key, else the key it presents, else the provider's own key.
    pub identity: crate::caller::Identity,
    /// Whom the request is booked to (ledger, budgets): the relay key, else the key the request
    /// is paid with ([`crate::caller::Identity::paid_by`]), else nobody.
    pub booked: crate::cost::Booked,
    /// The relay key the request presented (`auth.enabled`; set by [`super::stages::Authenticate`]).
    pub key: Option<Arc<crate::keys::KeyRecord>>,
}

impl Caller {
    pub fn of(
        headers: &http::HeaderMap,
        provider: &crate::config::Provider,
        key: Option<Arc<crate::keys::KeyRecord>>,
    ) -> Caller {
        use crate::caller::Identity;
        use crate::cost::Booked;
        let (name, keys) = (&provider.name, &provider.keys);
        let identity = match &key {
            Some(k) => Identity::of(Some(&k.name), None, name, keys),
            None => {
                let presented = crate::wire::headers::presented_key(headers);
                Identity::of(None, presented.as_deref(), name, keys)
            }
        };
        let booked = match (&key, identity.paid_by()) {
            (Some(k), _) => Booked::RelayKey {
                name: k.name.clone(),
                budget: k.budget(),
            },
            (None, Some(hash)) => Booked::Key(hash),
            (None, None) => Booked::Nobody,
        };
        Caller {
            identity,
            booked,
            key,
        }
    }
}

/// How a response ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Every byte was handed to the connection.
    Complete,
    /// The caller went away first (the upstream request was dropped with it).
    ClientGone,
    /// The upstream body failed mid-way.
    UpstreamError,
    /// The upstream was silent longer than `timeouts.idle`.
    IdleTimeout,
}

impl Ending {
    pub fn as_str(self) -> &'static str {
        match self {
            Ending::Complete => "complete",
            Ending::ClientGone => "client_gone",
            Ending::UpstreamError => "upstream_error",
            Ending::IdleTimeout => "idle_timeout",
        }
    }
}

/// One request's context; see the module docs.
pub struct RequestContext {
    pub(super) metrics: Arc<Metrics>,
    pub(super) log: bool,
    pub started: Instant,
    pub method: Method,
    pub path: String,
    pub request_id: HeaderValue,
    pub provider: Option<String>,
    pub model: Option<String>,
    /// What the upstream path is for (set when the request is routed).
    pub endpoint: crate::wire::Endpoint,
    /// Who calls, read once from the key headers (set when the request is routed).
    pub caller: Caller,
    /// The client, from its `User-Agent` ([`crate::wire::clients::client_of`]; set when routed).
    pub client: Option<String>,
    /// The agent session ([`crate::wire::clients::session_of`]; set when routed).
    pub session: Option<String>,
    /// What the body says (model, stream, usage chunk, token bound), read once.
    pub peek: crate::wire::BodyPeek,
    /// Metric label for the model (bounded, see [`crate::cost::prices`]; set when routed).
    pub model_label: String,
    /// The model's price for the routed provider (`None`: unpriced; set when routed).
    pub price: Option<std::sync::Arc<crate::cost::Price>>,
    /// 0 until response headers exist; a record dropped at 0 is logged as 499 (caller gone).
    pub status: u16,
    /// Time from sending upstream to its response headers.
    pub upstream: Option<Duration>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Relay's own error, when relay answered with one.
    pub error: Option<EdgeError>,
    /// Tokens reserved by a tokens-per-minute rule. Whatever meters the real usage settles it
    /// ([`crate::limit::Reservation::settle`]); dropped unsettled, the estimate stands.
    pub tokens: Option<crate::limit::Reservation>,
    /// The circuit-breaker ticket of a streamed answer: judged when the stream ends (cut by the
    /// idle timeout or an upstream error: a failure; complete: a success; caller gone: neither).
    pub circuit: Option<crate::limit::breaker::Ticket>,
    /// How the body ended, once it has.
    pub ending: Option<Ending>,
    /// Each retry and hand-over to the fallback before the answer (stage 8), in order.
    pub attempts: Vec<String>,
    /// The closing phase ran ([`super::finish::finish`]).
    pub(super) closed: bool,
    /// The booked key once the tally is settled, for the live feed's end event.
    pub(super) settled_key: Option<String>,
    /// Tokens of this request: the provider's usage, or relay's estimate (`usage.estimated`).
    pub usage: Option<crate::cost::Usage>,
    /// What this request cost, micro-USD (0 for cache hits and models without a price).
    pub cost_micros: u64,
    /// Cache hits: what the request would have cost, micro-USD.
    pub saved_micros: u64,
    /// What the provider's prompt cache saved on this request, micro-USD.
    pub prompt_cache_saved_micros: u64,
    /// Tokens were used but the model has no price (booked at $0).
    pub unpriced: bool,
    /// The cost stage's record, settled (priced, booked) when this record closes.
    pub tally: Option<crate::cost::Tally>,
    /// Time from the request's arrival to the first byte of the response body.
    pub first_byte: Option<Duration>,
    /// The live feed's capture (`relay tui`, `/relay/events`); `None` while nobody subscribes.
    pub(super) live: Option<Box<Live>>,
    /// The memory the request body holds (`server.max_buffered_bytes`), given back at the close.
    pub buffered: Option<super::client_body::Buffered>,
}

impl RequestContext {
    /// Opens the record and counts the request in flight.
    pub fn begin(
        metrics: Arc<Metrics>,
        log: bool,
        started: Instant,
        method: Method,
        path: String,
        request_id: HeaderValue,
    ) -> RequestContext {
        metrics.inflight.inc();
        RequestContext {
            metrics,
            log,
            started,
            method,
            path,
            request_id,
            provider: None,
            model: None,
            peek: crate::wire::BodyPeek::default(),
            caller: Caller::default(),
            client: None,
            session: None,
            settled_key: None,
            endpoint: crate::wire::Endpoint::Other,
            model_label: String::from("none"),
            status: 0,
            upstream: None,
            bytes_in: 0,
            bytes_out: 0,
            error: None,
            tokens: None,
            circuit: None,
            ending: None,
            attempts: Vec::new(),
            closed: false,
            usage: None,
            cost_micros: 0,
            saved_micros: 0,
            prompt_cache_saved_micros: 0,
            unpriced: false,
            price: None,
            tally: None,
            first_byte: None,
            live: None,
            buffered: None,
        }
    }

    /// Joins the live feed when someone subscribes to it (captures the request headers, redacted).
    pub fn observe(&mut self, events: &Arc<Events>, request_headers: &http::HeaderMap) {
        self.live = Live::begin(events, request_headers);
    }

    /// Keeps the start of the request body for the live feed (only while observed).
    pub fn capture_request_body(&mut self, body: &Bytes) {
        if let Some(live) = self.live.as_deref_mut() {
            live.request_body(body);
        }
    }

    /// The request is about to go upstream: the live feed's first start event, status 0 (only while
    /// observed), so a slow answer shows as in flight before its headers arrive.
    pub fn sending_upstream(&mut self) {
        if let Some(live) = self.live.as_deref() {
            live.pending(self.snapshot());
        }
    }

    /// Response headers are set: the live feed's start event (only while observed).
    pub fn headers_sent(&mut self, headers: &http::HeaderMap) {
        if let Some(mut live) = self.live.take() {
            live.response_headers(headers, self.snapshot());
            self.live = Some(live);
        }
    }

    pub(super) fn snapshot(&self) -> Snapshot<'_> {
        Snapshot {
            started: self.started,
            request_id: self.request_id.to_str().unwrap_or("-"),
            method: self.method.as_str(),
            path: &self.path,
            provider: self.provider.as_deref(),
            model: self.model.as_deref(),
            status: self.status,
            upstream: self.upstream,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            error: self.error.as_ref().map(EdgeError::code),
            outcome: self.ending.map(Ending::as_str),
            usage: self.usage,
            cost_micros: self.cost_micros,
            saved_micros: self.saved_micros,
            prompt_cache_saved_micros: self.prompt_cache_saved_micros,
            unpriced: self.unpriced,
            attempts: &self.attempts,
            session: self.session.as_deref(),
            key: self.key().or(self.settled_key.as_deref()),
        }
    }

    /// The caller's key as the ledger books it (alias, `key-<hash prefix>`, `none`), when known.
    pub fn key(&self) -> Option<&str> {
        self.tally.as_ref().map(|t| t.key.as_str())
    }
}
