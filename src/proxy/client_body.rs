//! The caller's request body as relay holds it: read whole (JSON), or streamed through (uploads),
//! each under the same bounds.
//!
//! What comes in: the hyper body, its headers, and the bounds from `server:` (`max_body_bytes`,
//! `body_read_timeout`) and the server's [`BodyBudget`] (`max_buffered_bytes`, waited on for up
//! to [`ROOM_WAIT`]). What goes out: a
//! [`ClientBody`], the memory it holds ([`Buffered`], released when the request's record closes),
//! or the caller's error: 413 over the size limit, 408 when the body stalls, 503 when bodies in
//! memory are at their budget.
//!
//! An upload streamed to the upstream fails there, mid-send, when the caller's side is at fault
//! (over the limit, stalled, cut off). [`Upload`] notes the fault, so the pipeline answers with the
//! caller's error (413, not 502) and the provider's circuit breaker never counts it.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, Method};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

use crate::error::EdgeError;

/// The caller's body as relay holds it.
pub enum ClientBody {
    /// Read whole (JSON): forwarded byte-for-byte.
    Whole(Bytes),
    /// Streamed through (uploads), bounded.
    Stream(Upload),
}

impl ClientBody {
    /// The bytes, when relay read the body whole.
    pub fn whole(&self) -> Option<&Bytes> {
        match self {
            ClientBody::Whole(b) => Some(b),
            ClientBody::Stream(_) => None,
        }
    }
}

/// The body relay sends upstream: the bytes it read, or the caller's body streamed through.
pub type UpstreamBody = Either<Full<Bytes>, Upload>;

impl From<ClientBody> for UpstreamBody {
    fn from(b: ClientBody) -> UpstreamBody {
        match b {
            ClientBody::Whole(bytes) => Either::Left(Full::new(bytes)),
            ClientBody::Stream(s) => Either::Right(s),
        }
    }
}

/// How a body is bounded (`server.max_body_bytes`, `server.body_read_timeout`).
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub max_bytes: u64,
    pub stall: Duration,
}

/// What went wrong on the caller's side of a body.
#[derive(Debug, Clone)]
pub enum Fault {
    TooLarge { limit: u64 },
    Stalled { timeout: Duration },
    Read(String),
}

impl Fault {
    /// The caller's error for it.
    pub fn to_edge(&self) -> EdgeError {
        match self {
            Fault::TooLarge { limit } => EdgeError::BodyTooLarge { limit: *limit },
            Fault::Stalled { timeout } => EdgeError::BodyTimeout { timeout: *timeout },
            Fault::Read(e) => EdgeError::ClientBody(e.clone()),
        }
    }
}

/// Where an [`Upload`] notes its fault; shared with the pipeline.
pub type FaultSlot = Arc<OnceLock<Fault>>;

/// The caller's body streamed through: at most `max_bytes`, no silence longer than `stall`.
pub struct Upload {
    inner: Incoming,
    left: u64,
    bounds: Bounds,
    /// The silence timer, made the first time the body has to wait (a body that arrives with its
    /// headers, as most JSON bodies do, never arms a timer).
    stall: Option<Pin<Box<Sleep>>>,
    fault: FaultSlot,
}

impl Upload {
    pub fn new(inner: Incoming, bounds: Bounds) -> Upload {
        Upload {
            inner,
            left: bounds.max_bytes,
            bounds,
            stall: None,
            fault: FaultSlot::default(),
        }
    }

    /// The slot this upload notes a caller-side fault in.
    pub fn fault(&self) -> FaultSlot {
        self.fault.clone()
    }

    fn fail(&mut self, f: Fault) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let msg = f.to_edge().to_string();
        let _ = self.fault.set(f);
        Poll::Ready(Some(Err(msg.into())))
    }
}

pub use crate::error::BoxError;

impl Body for Upload {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if n > this.left {
                        let limit = this.bounds.max_bytes;
                        return this.fail(Fault::TooLarge { limit });
                    }
                    this.left -= n;
                }
                // The next wait starts a new silence.
                if let Some(stall) = &mut this.stall {
                    let deadline = tokio::time::Instant::now() + this.bounds.stall;
                    stall.as_mut().reset(deadline);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => this.fail(Fault::Read(e.to_string())),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let stall = this
                    .stall
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(this.bounds.stall)));
                if stall.as_mut().poll(cx).is_ready() {
                    let timeout = this.bounds.stall;
                    return this.fail(Fault::Stalled { timeout });
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// How long a body waits for room under the budget before its request gets 503 `relay_busy`
/// (at most `server.body_read_timeout`).
pub const ROOM_WAIT: Duration = Duration::from_secs(1);

/// The request bodies all requests of one server may hold in memory at once
/// (`server.max_buffered_bytes`), counted in KiB.
pub struct BodyBudget {
    permits: Arc<Semaphore>,
    gauge: prometheus::IntGauge,
}

/// Memory a request's body holds; given back when dropped.
pub struct Buffered {
    permit: Option<OwnedSemaphorePermit>,
    bytes: i64,
    gauge: prometheus::IntGauge,
}

impl Drop for Buffered {
    fn drop(&mut self) {
        self.gauge.sub(self.bytes);
    }
}

impl BodyBudget {
    /// `max_bytes` over all requests; `gauge` shows what is held (`relay_request_buffer_bytes`).
    pub fn new(max_bytes: u64, gauge: prometheus::IntGauge) -> BodyBudget {
        let kib = usize::try_from(max_bytes.div_ceil(1024)).unwrap_or(Semaphore::MAX_PERMITS);
        BodyBudget {
            permits: Arc::new(Semaphore::new(kib.min(Semaphore::MAX_PERMITS))),
            gauge,
        }
    }

    /// Nothing held yet.
    fn empty(&self) -> Buffered {
        Buffered {
            permit: None,
            bytes: 0,
            gauge: self.gauge.clone(),
        }
    }

    /// Room for `bytes` more in `held`, waiting up to `wait` for it.
    async fn grow(
        &self,
        held: &mut Buffered,
        bytes: u64,
        stall: Duration,
    ) -> Result<(), EdgeError> {
        let wait = ROOM_WAIT.min(stall);
        let kib = u32::try_from(bytes.div_ceil(1024).max(1)).unwrap_or(u32::MAX);
        let permit = match self.permits.clone().try_acquire_many_owned(kib) {
            Ok(p) => p,
            Err(_) => {
                match tokio::time::timeout(wait, self.permits.clone().acquire_many_owned(kib)).await
                {
                    Ok(Ok(p)) => p,
                    _ => return Err(EdgeError::BufferFull),
                }
            }
        };
        match &mut held.permit {
            Some(p) => p.merge(permit),
            None => held.permit = Some(permit),
        }
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        held.bytes += bytes;
        self.gauge.add(bytes);
        Ok(())
    }
}

/// Reads a JSON (or untyped) body whole, bounded by `bounds` and the server's `budget`; streams any
/// other body through under the same bounds. A declared `Content-Length` over the limit is refused
/// before reading. The memory a whole body holds is reserved as it arrives (all of a declared
/// length at once).
pub async fn read(
    body: Incoming,
    headers: &HeaderMap,
    method: &Method,
    bounds: Bounds,
    budget: &BodyBudget,
) -> Result<(ClientBody, Option<Buffered>), EdgeError> {
    let limit = bounds.max_bytes;
    let declared = declared_length(headers);
    if declared.is_some_and(|n| n > limit) {
        return Err(EdgeError::BodyTooLarge { limit });
    }
    if body.is_end_stream() || matches!(*method, Method::GET | Method::HEAD) && declared.is_none() {
        return Ok((ClientBody::Whole(Bytes::new()), None));
    }
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|ct| {
            let ct = ct.trim_start().to_ascii_lowercase();
            ct.starts_with("application/json") || ct.contains("+json")
        });
    if !is_json {
        return Ok((ClientBody::Stream(Upload::new(body, bounds)), None));
    }
    let (bytes, held) = read_whole(body, declared, bounds, budget).await?;
    Ok((ClientBody::Whole(bytes), Some(held)))
}

/// Reads a body whole (relay's own API takes its bodies this way), under `bounds` and the
/// `budget`; `declared` is its `Content-Length`, already checked against the limit.
pub async fn read_whole(
    body: Incoming,
    declared: Option<u64>,
    bounds: Bounds,
    budget: &BodyBudget,
) -> Result<(Bytes, Buffered), EdgeError> {
    if declared.is_some_and(|n| n > bounds.max_bytes) {
        return Err(EdgeError::BodyTooLarge {
            limit: bounds.max_bytes,
        });
    }
    let mut held = budget.empty();
    if let Some(n) = declared {
        budget.grow(&mut held, n, bounds.stall).await?;
    }
    let mut reserved = declared.unwrap_or(0);
    let mut upload = Upload::new(body, bounds);
    let fault = upload.fault();
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut total = 0u64;
    loop {
        match upload.frame().await {
            None => break,
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    total += data.len() as u64;
                    if total > reserved {
                        // Chunked (or longer than declared, which hyper refuses): reserve as it comes.
                        let more = (total - reserved).max(64 * 1024);
                        budget.grow(&mut held, more, bounds.stall).await?;
                        reserved += more;
                    }
                    chunks.push(data);
                }
            }
            Some(Err(e)) => {
                return Err(match fault.get() {
                    Some(f) => f.to_edge(),
                    None => EdgeError::ClientBody(e.to_string()),
                })
            }
        }
    }
    let bytes = match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().expect("one chunk"),
        _ => {
            let mut all = Vec::with_capacity(total as usize);
            for c in &chunks {
                all.extend_from_slice(c);
            }
            Bytes::from(all)
        }
    };
    Ok((bytes, held))
}

/// A request's declared `Content-Length`.
pub fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}
