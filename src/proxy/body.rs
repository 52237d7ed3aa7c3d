//! Response bodies: [`RelayBody`] is what relay sends the caller, a small body relay made (errors,
//! `/metrics`) or the upstream body forwarded frame by frame as it arrives, never collected. It
//! watches the upstream for silence (`timeouts.idle`), runs the per-chunk filters (the cache's
//! [`Tap`], the cost meter), counts bytes, and carries the request's
//! [`RequestContext`], which it closes ([`super::finish`]) when the body is over.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::time::Sleep;

use super::context::{Ending, RequestContext};

pub use crate::error::BoxError;

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
        /// What relay read of the body before the headers went out ([`super::json_answer`]): sent first.
        held: Option<Bytes>,
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
    exchange: Option<RequestContext>,
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
                held: None,
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

    /// Sends `bytes`, already read from the upstream body, ahead of the rest of it.
    pub fn with_held(mut self, bytes: Option<Bytes>) -> RelayBody {
        if let Inner::Upstream { held, .. } = &mut self.inner {
            *held = bytes;
        }
        self
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

    /// Attaches the request's context; the body closes it when it is over (or dropped).
    pub fn with_context(mut self, x: RequestContext) -> RelayBody {
        self.exchange = Some(x);
        self
    }

    fn end(&mut self, ending: Ending) {
        if let Some(x) = &mut self.exchange {
            x.ending.get_or_insert(ending);
        }
    }

    fn count(&mut self, frame: &Frame<Bytes>) {
        if let (Some(x), Some(d)) = (&mut self.exchange, frame.data_ref()) {
            if x.first_byte.is_none() && !d.is_empty() {
                x.first_byte = Some(x.started.elapsed());
            }
            x.bytes_out += d.len() as u64;
            if let Some(mut live) = x.live.take() {
                live.on_data(d, x.started);
                if let Some(tokens) = live.progress_due() {
                    live.progress(x.snapshot(), tokens);
                }
                x.live = Some(live);
            }
        }
    }
}

impl Drop for RelayBody {
    fn drop(&mut self) {
        let ended = self.is_end_stream();
        if ended {
            self.end(Ending::Complete);
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
        if let Some(x) = self.exchange.take() {
            match self.meter.take() {
                // The meter puts the usage on the context, then closes it.
                Some(m) => m.finish(x),
                None => x.close(),
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
            this.end(Ending::Complete);
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
                    this.end(Ending::UpstreamError);
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
            Inner::Upstream { held, tap, .. } if held.is_some() => {
                let d = held.take().expect("checked");
                if let Some(t) = tap.as_mut() {
                    t.on_data(&d);
                }
                Poll::Ready(Some(Ok(Frame::data(d))))
            }
            Inner::Upstream {
                body,
                idle,
                timer,
                armed,
                tap,
                ..
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
                        this.end(Ending::UpstreamError);
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
                            this.end(Ending::IdleTimeout);
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
            Poll::Ready(None) => this.end(Ending::Complete),
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
            Inner::Upstream { held, body, .. } => held.is_none() && body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        if self.meter.as_ref().is_some_and(|m| m.rewrites()) {
            return SizeHint::default();
        }
        match &self.inner {
            Inner::Full(f) => f.size_hint(),
            Inner::Stream(_) => SizeHint::default(),
            Inner::Upstream { held, body, .. } => {
                let rest = body.size_hint();
                let n = held.as_ref().map_or(0, |b| b.len() as u64);
                let mut hint = SizeHint::new();
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper + n);
                }
                hint.set_lower(rest.lower() + n);
                hint
            }
        }
    }
}
