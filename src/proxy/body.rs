//! Response bodies and the per-request record.
//!
//! [`RelayBody`] is what relay sends the caller: a small body relay made (errors, `/metrics`) or the
//! upstream body forwarded frame by frame as it arrives, never collected. It watches the upstream for
//! silence (`timeouts.idle`) and counts bytes.
//!
//! [`Exchange`] is the request's record. It lives in the response body, so it ends when the last byte
//! has gone out, when the caller disconnects (the body is dropped, which drops the upstream
//! response and so cancels the upstream request), or when the handler is dropped before answering.
//! Its `Drop` writes the one access-log line and the request metrics.
//!
//! While someone watches the live feed ([`crate::events`]: `relay tui`, `/relay/events`), the
//! record also captures headers and the start of each body and publishes the request's events.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::time::Sleep;

use crate::events::{Events, Live, Snapshot};
use crate::metrics::Metrics;

pub use crate::error::BoxError;

/// How a response ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every byte was handed to the connection.
    Complete,
    /// The caller went away first (the upstream request was dropped with it).
    ClientGone,
    /// The upstream body failed mid-way.
    UpstreamError,
    /// The upstream was silent longer than `timeouts.idle`.
    IdleTimeout,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Complete => "complete",
            Outcome::ClientGone => "client_gone",
            Outcome::UpstreamError => "upstream_error",
            Outcome::IdleTimeout => "idle_timeout",
        }
    }
}

/// One request's record; see the module docs.
pub struct Exchange {
    metrics: Arc<Metrics>,
    log: bool,
    pub started: Instant,
    pub method: Method,
    pub path: String,
    pub request_id: HeaderValue,
    pub provider: Option<String>,
    pub model: Option<String>,
    /// Metric label for the model (bounded, see [`crate::metrics::ModelLabels`]).
    pub model_label: String,
    /// 0 until response headers exist; a record dropped at 0 is logged as 499 (caller gone).
    pub status: u16,
    /// Time from sending upstream to its response headers.
    pub upstream: Option<Duration>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Relay's error code when relay answered with an error.
    pub error: Option<&'static str>,
    /// Tokens reserved by a tokens-per-minute rule. Whatever meters the real usage settles it
    /// ([`crate::limit::Reservation::settle`]); dropped unsettled, the estimate stands.
    pub tokens: Option<crate::limit::Reservation>,
    /// The circuit-breaker ticket of a streamed answer: judged when the stream ends (cut by the
    /// idle timeout or an upstream error: a failure; complete: a success; caller gone: neither).
    pub circuit: Option<crate::limit::breaker::Ticket>,
    outcome: Option<Outcome>,
    /// Tokens of this request: the provider's usage, or relay's estimate (`usage.estimated`).
    pub usage: Option<crate::cost::Usage>,
    /// What this request cost, micro-USD (0 for cache hits and models without a price).
    pub cost_micros: u64,
    /// Cache hits: what the request would have cost, micro-USD.
    pub saved_micros: u64,
    /// The cost stage's record, settled (priced, booked) when this record closes.
    pub tally: Option<crate::cost::Tally>,
    /// Time from the request's arrival to the first byte of the response body.
    pub first_byte: Option<Duration>,
    /// The live feed's capture (`relay tui`, `/relay/events`); `None` while nobody subscribes.
    live: Option<Box<Live>>,
    /// The memory the request body holds (`server.max_buffered_bytes`), given back at the close.
    pub buffered: Option<super::client_body::Buffered>,
}

impl Exchange {
    /// Opens the record and counts the request in flight.
    pub fn begin(
        metrics: Arc<Metrics>,
        log: bool,
        started: Instant,
        method: Method,
        path: String,
        request_id: HeaderValue,
    ) -> Exchange {
        metrics.inflight.inc();
        Exchange {
            metrics,
            log,
            started,
            method,
            path,
            request_id,
            provider: None,
            model: None,
            model_label: String::from("none"),
            status: 0,
            upstream: None,
            bytes_in: 0,
            bytes_out: 0,
            error: None,
            tokens: None,
            circuit: None,
            outcome: None,
            usage: None,
            cost_micros: 0,
            saved_micros: 0,
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

    fn snapshot(&self) -> Snapshot<'_> {
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
            error: self.error,
            outcome: self.outcome.map(Outcome::as_str),
            usage: self.usage,
            cost_micros: self.cost_micros,
            saved_micros: self.saved_micros,
        }
    }

    /// The caller's key as the ledger books it (alias, `key-<hash prefix>`, `none`), when known.
    pub fn key(&self) -> Option<&str> {
        self.tally.as_ref().map(|t| t.key.as_str())
    }
}

impl crate::cost::Metered for Exchange {
    fn usage_slot(&mut self) -> &mut Option<crate::cost::Usage> {
        &mut self.usage
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.metrics.inflight.dec();
        let outcome = self.outcome.unwrap_or(Outcome::ClientGone);
        if let Some(ticket) = self.circuit.take() {
            use crate::limit::breaker::Outcome as Judged;
            match outcome {
                Outcome::Complete => ticket.record(Judged::Success, &self.metrics),
                Outcome::IdleTimeout | Outcome::UpstreamError => {
                    ticket.record(Judged::Failure, &self.metrics)
                }
                Outcome::ClientGone => drop(ticket),
            }
        }
        let status = if self.status == 0 { 499 } else { self.status };
        // A tokens-per-minute reservation is settled with what the upstream metered; with no
        // usage known (cost off, a stream cut short) the estimate stands.
        if let (Some(r), Some(u)) = (self.tokens.take(), self.usage) {
            r.settle(u.total());
        }
        if let Some(t) = self.tally.take() {
            let priced = t.settle(crate::cost::Settled {
                provider: self.provider.as_deref().unwrap_or("none"),
                model: self.model.as_deref(),
                model_label: &self.model_label,
                usage: self.usage,
                failed: status >= 400 || outcome != Outcome::Complete,
            });
            self.cost_micros = priced.cost_micros;
            self.saved_micros = priced.saved_micros;
        }
        // After the cost stage: the end event carries tokens and cost.
        if let Some(live) = self.live.take() {
            self.outcome = Some(outcome);
            live.finish(self.snapshot());
        }
        let provider = self.provider.as_deref().unwrap_or("none");
        self.metrics
            .request_duration
            .with_label_values(&[provider])
            .observe(self.started.elapsed().as_secs_f64());
        if let Some(t) = self.first_byte {
            self.metrics
                .time_to_first_byte
                .with_label_values(&[provider])
                .observe(t.as_secs_f64());
        }
        let mut buf = itoa_status(status);
        self.metrics
            .requests
            .with_label_values(&[provider, &self.model_label, buf.as_str()])
            .inc();
        buf.clear();
        if self.log {
            let latency = self.started.elapsed();
            tracing::info!(
                target: "relay::access",
                method = %self.method,
                path = %self.path,
                provider,
                model = self.model.as_deref().unwrap_or("-"),
                status,
                latency_ms = latency.as_secs_f64() * 1e3,
                upstream_ms = self.upstream.map(|d| d.as_secs_f64() * 1e3),
                bytes_in = self.bytes_in,
                bytes_out = self.bytes_out,
                outcome = outcome.as_str(),
                error = self.error,
                tokens_in = self.usage.map(|u| u.prompt()),
                tokens_out = self.usage.map(|u| u.output),
                tokens_cached = self.usage.map(|u| u.cached_input),
                tokens_estimated = self.usage.map(|u| u.estimated),
                cost_usd = self.usage.map(|_| crate::cost::usd(self.cost_micros)),
                saved_usd = (self.saved_micros > 0).then(|| crate::cost::usd(self.saved_micros)),
                request_id = self.request_id.to_str().unwrap_or("-"),
                "request"
            );
        }
    }
}

fn itoa_status(status: u16) -> String {
    match http::StatusCode::from_u16(status) {
        Ok(s) => s.as_str().to_string(),
        Err(_) => status.to_string(),
    }
}

/// A per-chunk filter on an upstream body (the cache's recorder and single-flight feed): it sees
/// every data frame as it passes, and how the body ended.
pub trait Tap: Send {
    fn on_data(&mut self, data: &Bytes);
    /// The body ended cleanly.
    fn on_end(&mut self);
    /// The body failed or went silent past the idle timeout.
    fn on_error(&mut self);
    /// Others wait on this body, so it is read to its end even when its own caller leaves.
    fn has_followers(&self) -> bool;
}

/// Keeps reading an upstream body whose caller left, for the followers of its flight.
fn drain_for_followers(mut body: Incoming, mut tap: Box<dyn Tap>, idle: Duration) {
    use http_body_util::BodyExt;
    tokio::spawn(async move {
        loop {
            match tokio::time::timeout(idle, body.frame()).await {
                Ok(Some(Ok(frame))) => {
                    if let Some(d) = frame.data_ref() {
                        tap.on_data(d);
                    }
                }
                Ok(None) => {
                    tap.on_end();
                    return;
                }
                Ok(Some(Err(_))) | Err(_) => {
                    tap.on_error();
                    return;
                }
            }
        }
    });
}

/// A body relay produces over time (a paced replay, a share of another request's stream).
pub type FrameStream =
    Pin<Box<dyn futures_util::Stream<Item = Result<Frame<Bytes>, BoxError>> + Send>>;

enum Inner {
    Full(Full<Bytes>),
    Stream(FrameStream),
    Upstream {
        body: Incoming,
        idle: Duration,
        timer: Pin<Box<Sleep>>,
        /// False right after a frame was handed out: the next poll restarts the idle clock, so a slow
        /// reader is never mistaken for a silent upstream.
        armed: bool,
        /// The cache's recorder / single-flight feed, when the answer is cacheable.
        tap: Option<Box<dyn Tap>>,
    },
}

/// The body of every response relay sends.
pub struct RelayBody {
    inner: Inner,
    exchange: Option<Exchange>,
    /// The cost stage's meter (reads usage; may strip the usage chunk relay asked for).
    meter: Option<Box<crate::cost::Hook>>,
    /// The inner body ended and the meter's held-back tail went out: the body is over.
    over: bool,
}

impl RelayBody {
    /// A body relay made itself.
    pub fn full(bytes: impl Into<Bytes>) -> RelayBody {
        RelayBody {
            inner: Inner::Full(Full::new(bytes.into())),
            exchange: None,
            meter: None,
            over: false,
        }
    }

    /// The upstream body, forwarded frame by frame; fails after `idle` of upstream silence.
    pub fn upstream(body: Incoming, idle: Duration) -> RelayBody {
        RelayBody {
            inner: Inner::Upstream {
                body,
                idle,
                timer: Box::pin(tokio::time::sleep(idle)),
                armed: true,
                tap: None,
            },
            exchange: None,
            meter: None,
            over: false,
        }
    }

    /// A body relay produces over time.
    pub fn stream(
        s: impl futures_util::Stream<Item = Result<Frame<Bytes>, BoxError>> + Send + 'static,
    ) -> RelayBody {
        RelayBody {
            inner: Inner::Stream(Box::pin(s)),
            exchange: None,
            meter: None,
            over: false,
        }
    }

    /// Lets the cache see the upstream body as it passes (no effect on other bodies).
    pub fn with_tap(mut self, t: Option<impl Tap + 'static>) -> RelayBody {
        if let Inner::Upstream { tap, .. } = &mut self.inner {
            *tap = t.map(|t| Box::new(t) as Box<dyn Tap>);
        }
        self
    }

    /// Lets the cost stage meter this body as it passes.
    pub fn with_meter(mut self, m: Option<crate::cost::Hook>) -> RelayBody {
        self.meter = m.map(Box::new);
        self
    }

    /// Attaches the request record; it is finished when this body is dropped.
    pub fn with_exchange(mut self, x: Exchange) -> RelayBody {
        self.exchange = Some(x);
        self
    }

    fn finish(&mut self, outcome: Outcome) {
        if let Some(x) = &mut self.exchange {
            x.outcome.get_or_insert(outcome);
        }
    }

    fn count(&mut self, frame: &Frame<Bytes>) {
        if let (Some(x), Some(d)) = (&mut self.exchange, frame.data_ref()) {
            if x.first_byte.is_none() && !d.is_empty() {
                x.first_byte = Some(x.started.elapsed());
            }
            x.bytes_out += d.len() as u64;
            if let Some(live) = x.live.as_deref_mut() {
                live.on_data(d, x.started);
            }
        }
    }
}

impl Drop for RelayBody {
    fn drop(&mut self) {
        let ended = self.is_end_stream();
        if ended {
            self.finish(Outcome::Complete);
        }
        if let Inner::Upstream { tap, .. } = &mut self.inner {
            match tap.take() {
                // hyper stops polling once a sized body reports its end: finish the recording.
                Some(mut t) if ended => t.on_end(),
                // The caller left, others share this answer: keep reading it for them.
                Some(t) if t.has_followers() => {
                    let inner =
                        std::mem::replace(&mut self.inner, Inner::Full(Full::new(Bytes::new())));
                    if let Inner::Upstream { body, idle, .. } = inner {
                        drain_for_followers(body, t, idle);
                    }
                }
                // Dropped unfinished: nothing is stored.
                Some(_) | None => {}
            }
        }
        if let Some(m) = self.meter.take() {
            if let Some(x) = self.exchange.take() {
                m.finish(x);
            }
        }
    }
}

impl Body for RelayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.over {
            this.finish(Outcome::Complete);
            return Poll::Ready(None);
        }
        let polled = match &mut this.inner {
            Inner::Full(full) => match Pin::new(full).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
                Poll::Ready(Some(Err(never))) => match never {},
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
            Inner::Stream(s) => match s.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
                Poll::Ready(Some(Err(e))) => {
                    this.finish(Outcome::UpstreamError);
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
            Inner::Upstream {
                body,
                idle,
                timer,
                armed,
                tap,
            } => {
                if !*armed {
                    timer.as_mut().reset(tokio::time::Instant::now() + *idle);
                    *armed = true;
                }
                match Pin::new(body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        *armed = false;
                        if let (Some(t), Some(d)) = (tap.as_mut(), frame.data_ref()) {
                            t.on_data(d);
                        }
                        Poll::Ready(Some(Ok(frame)))
                    }
                    Poll::Ready(Some(Err(e))) => {
                        if let Some(mut t) = tap.take() {
                            t.on_error();
                        }
                        this.finish(Outcome::UpstreamError);
                        return Poll::Ready(Some(Err(e.into())));
                    }
                    Poll::Ready(None) => {
                        if let Some(mut t) = tap.take() {
                            t.on_end();
                        }
                        Poll::Ready(None)
                    }
                    Poll::Pending => {
                        if timer.as_mut().poll(cx).is_ready() {
                            if let Some(mut t) = tap.take() {
                                t.on_error();
                            }
                            let idle = *idle;
                            this.finish(Outcome::IdleTimeout);
                            return Poll::Ready(Some(Err(format!(
                                "upstream sent nothing for {}",
                                humantime::format_duration(idle)
                            )
                            .into())));
                        }
                        Poll::Pending
                    }
                }
            }
        };
        let polled = match (polled, this.meter.as_mut()) {
            (Poll::Ready(Some(Ok(frame))), Some(m)) => match frame.into_data() {
                Ok(d) => Poll::Ready(Some(Ok(Frame::data(m.on_data(d))))),
                Err(other) => Poll::Ready(Some(Ok(other))),
            },
            (Poll::Ready(None), Some(m)) => match m.take_tail() {
                Some(tail) => {
                    this.over = true;
                    Poll::Ready(Some(Ok(Frame::data(tail))))
                }
                None => Poll::Ready(None),
            },
            (p, _) => p,
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => this.count(frame),
            Poll::Ready(None) => this.finish(Outcome::Complete),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        if self.over {
            return true;
        }
        if self.meter.as_ref().is_some_and(|m| m.has_tail()) {
            return false;
        }
        match &self.inner {
            Inner::Full(f) => f.is_end_stream(),
            Inner::Stream(_) => false,
            Inner::Upstream { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        if self.meter.as_ref().is_some_and(|m| m.rewrites()) {
            return SizeHint::default();
        }
        match &self.inner {
            Inner::Full(f) => f.size_hint(),
            Inner::Stream(_) => SizeHint::default(),
            Inner::Upstream { body, .. } => body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::cost::Usage;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    /// The access-log line a closing exchange writes, as JSON fields.
    fn access_line(fill: impl FnOnce(&mut Exchange)) -> serde_json::Value {
        let buf = Buf::default();
        let sub = tracing_subscriber::fmt()
            .json()
            .with_writer(buf.clone())
            .finish();
        tracing::subscriber::with_default(sub, || {
            let mut x = Exchange::begin(
                Arc::new(Metrics::new()),
                true,
                Instant::now(),
                Method::POST,
                "/v1/chat/completions".into(),
                HeaderValue::from_static("req-1"),
            );
            x.status = 200;
            x.provider = Some("openai".into());
            x.outcome = Some(Outcome::Complete);
            fill(&mut x);
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.trim()).expect("one JSON line");
        v["fields"].clone()
    }

    #[test]
    fn the_access_line_carries_tokens_and_cost() {
        let f = access_line(|x| {
            x.usage = Some(Usage {
                input: 200,
                cached_input: 800,
                output: 100,
                ..Usage::default()
            });
            x.cost_micros = 2500;
        });
        assert_eq!(f["tokens_in"], 1000);
        assert_eq!(f["tokens_out"], 100);
        assert_eq!(f["tokens_cached"], 800);
        assert_eq!(f["tokens_estimated"], false);
        assert_eq!(f["cost_usd"], "0.002500");
        assert!(f.get("saved_usd").is_none(), "{f}");
        // No usage known: no token or cost fields at all.
        let f = access_line(|_| {});
        assert!(
            f.get("tokens_in").is_none() && f.get("cost_usd").is_none(),
            "{f}"
        );
        assert_eq!(f["status"], 200);
    }
}
