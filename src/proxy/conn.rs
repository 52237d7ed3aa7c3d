//! Client connections: how long one may sit idle or dribble its headers, and what it may hold.
//!
//! What comes in: each accepted connection's socket, and `server.idle_timeout` and
//! `server.header_read_timeout`. What goes out: a [`Watch`] that the connection's IO
//! ([`WatchedIo`]) and its service ([`Watch::begin`], [`Tracked`]) keep up to date, and
//! [`Watch::expired`], a future that resolves (with the reason) when relay should close the
//! connection:
//! - **idle**: no request in flight and nothing arriving for `idle_timeout` (a socket that never
//!   sends a byte, or a keep-alive connection nobody uses);
//! - **header timeout**: the first byte of a request arrived, but its headers were not complete
//!   within `header_read_timeout` (slowloris).
//!
//! A request counts as in flight from its headers to the end (or drop) of its response body, so
//! a long stream or a slow upload is never cut by these timers (the upstream's own timeouts and
//! `server.body_read_timeout` cover those). The accept loop caps connections at
//! `server.max_connections` (see [`crate::proxy::server`]).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Most headers one HTTP/1 request may carry (nginx and hyper allow about 100).
pub const MAX_HEADERS: usize = 128;

/// How relay serves HTTP/1.1 and HTTP/2 on a client connection (its own listener and the
/// connections inside intercepted tunnels): heads up to `max_header_bytes` and [`MAX_HEADERS`].
pub fn http_builder(max_header_bytes: usize) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        // The connection's own timers (proxy::conn) cover idle and slow headers, one clock for
        // both protocols.
        .header_read_timeout(None)
        .max_buf_size(max_header_bytes)
        .max_headers(MAX_HEADERS);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(max_header_bytes).unwrap_or(u32::MAX));
    builder
}

/// The timers of one connection (`server.idle_timeout`, `server.header_read_timeout`).
#[derive(Debug, Clone, Copy)]
pub struct Timers {
    pub idle: Duration,
    pub header: Duration,
}

impl Timers {
    /// The timers `server:` sets.
    pub fn of(server: &crate::config::ServerConfig) -> Timers {
        Timers {
            idle: server.idle_timeout,
            header: server.header_read_timeout,
        }
    }
}

/// Why relay closed a connection (`relay_connections_closed_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    Idle,
    HeaderTimeout,
}

impl Expired {
    pub fn as_str(self) -> &'static str {
        match self {
            Expired::Idle => "idle",
            Expired::HeaderTimeout => "header_timeout",
        }
    }
}

/// What one connection is doing, shared by its IO, its service and its timer.
pub struct Watch {
    base: Instant,
    timers: Timers,
    /// Requests between their headers and the end of their response body.
    active: AtomicUsize,
    /// When the connection last became idle (ms since `base`).
    idle_since: AtomicU64,
    /// When the first byte of the next request arrived (ms since `base`, plus 1; 0: none yet).
    head_started: AtomicU64,
    /// Wakes the timer when its deadline moves earlier (a request's first byte, the end of the
    /// last request in flight).
    moved: Notify,
}

impl Watch {
    pub fn new(timers: Timers) -> Arc<Watch> {
        Arc::new(Watch {
            base: Instant::now(),
            timers,
            active: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            head_started: AtomicU64::new(0),
            moved: Notify::new(),
        })
    }

    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    /// A request's headers have arrived: it is in flight until the returned guard drops (keep it
    /// in the response body, [`Tracked`]).
    pub fn begin(self: &Arc<Watch>) -> Active {
        self.active.fetch_add(1, Ordering::AcqRel);
        self.head_started.store(0, Ordering::Release);
        Active(self.clone())
    }

    /// Bytes arrived from the caller.
    fn read(&self) {
        if self.active.load(Ordering::Acquire) == 0
            && self.head_started.load(Ordering::Acquire) == 0
        {
            self.head_started
                .store(self.now_ms() + 1, Ordering::Release);
            self.moved.notify_one();
        }
    }

    /// Resolves when the connection has been idle, or dribbling a request's headers, for too long.
    /// Wakes when its deadline moves, and at most once per idle period while requests are in
    /// flight.
    pub async fn expired(&self) -> Expired {
        loop {
            let (deadline, why) = if self.active.load(Ordering::Acquire) > 0 {
                (self.now_ms() + self.timers.idle.as_millis() as u64, None)
            } else {
                let idle =
                    self.idle_since.load(Ordering::Acquire) + self.timers.idle.as_millis() as u64;
                match self.head_started.load(Ordering::Acquire) {
                    0 => (idle, Some(Expired::Idle)),
                    h => {
                        let head = h - 1 + self.timers.header.as_millis() as u64;
                        if head < idle {
                            (head, Some(Expired::HeaderTimeout))
                        } else {
                            (idle, Some(Expired::Idle))
                        }
                    }
                }
            };
            let now = self.now_ms();
            match why {
                Some(why) if now >= deadline => return why,
                _ => {}
            }
            let wait = Duration::from_millis(deadline.saturating_sub(now).max(1));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.moved.notified() => {}
            }
        }
    }
}

/// A request in flight on its connection; dropping it makes the connection idle again once no
/// other request is in flight.
pub struct Active(Arc<Watch>);

impl Drop for Active {
    fn drop(&mut self) {
        let w = &self.0;
        w.idle_since.store(w.now_ms(), Ordering::Release);
        if w.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            w.moved.notify_one();
        }
    }
}

/// A response body that keeps its request in flight until it ends or is dropped.
pub struct Tracked<B> {
    inner: B,
    _active: Active,
}

impl<B> Tracked<B> {
    pub fn new(inner: B, active: Active) -> Tracked<B> {
        Tracked {
            inner,
            _active: active,
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A connection's socket, telling its [`Watch`] when bytes arrive.
pub struct WatchedIo<S> {
    inner: S,
    watch: Arc<Watch>,
}

impl<S> WatchedIo<S> {
    pub fn new(inner: S, watch: Arc<Watch>) -> WatchedIo<S> {
        WatchedIo { inner, watch }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WatchedIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.watch.read();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WatchedIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timers() -> Timers {
        Timers {
            idle: Duration::from_secs(10),
            header: Duration::from_secs(3),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_expires_after_the_idle_timeout() {
        let w = Watch::new(timers());
        let start = Instant::now();
        assert_eq!(w.expired().await, Expired::Idle);
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn dribbled_headers_expire_after_the_header_timeout() {
        let w = Watch::new(timers());
        tokio::time::advance(Duration::from_secs(1)).await;
        w.read();
        let start = Instant::now();
        assert_eq!(w.expired().await, Expired::HeaderTimeout);
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_first_byte_while_the_timer_waits_brings_its_deadline_forward() {
        let w = Watch::new(timers());
        let start = Instant::now();
        let timer = w.expired();
        tokio::pin!(timer);
        // The timer is waiting on the 10 s idle deadline when the first byte comes at 1 s.
        assert!(tokio::time::timeout(Duration::from_secs(1), timer.as_mut())
            .await
            .is_err());
        w.read();
        assert_eq!(timer.await, Expired::HeaderTimeout);
        assert_eq!(start.elapsed(), Duration::from_secs(4));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_is_never_cut_and_idleness_counts_from_its_end() {
        let w = Watch::new(timers());
        w.read();
        let active = w.begin();
        let timer = w.expired();
        tokio::pin!(timer);
        // A minute of streaming: the timer wakes but does not fire.
        assert!(
            tokio::time::timeout(Duration::from_secs(60), timer.as_mut())
                .await
                .is_err()
        );
        drop(active);
        let start = Instant::now();
        assert_eq!(timer.await, Expired::Idle);
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }
}
