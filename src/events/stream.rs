//! `GET /relay/events`: the live feed as Server-Sent Events, and the parser `relay tui --attach`
//! reads it with.
//!
//! Each request event is one `data:` line of JSON ([`RequestEvent`]); when this stream's reader fell
//! behind, an `event: dropped` carries `{"dropped": n}`; a `: keep-alive` comment goes out after 15 s
//! of quiet. The stream ends when the server shuts down.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{header, HeaderValue, Response};
use http_body::Frame;

use super::{RequestEvent, Subscription};
use crate::error::BoxError;

/// Quiet time after which a keep-alive comment is sent (so dead readers are noticed).
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The SSE response for one subscriber: its body a stream of frames, which the server sends as
/// they come.
pub fn response(
    sub: Subscription,
) -> Response<impl futures_util::Stream<Item = Result<Frame<Bytes>, BoxError>> + Send + 'static> {
    let first = Some(Bytes::from_static(b": relay events\n\n"));
    let stream = futures_util::stream::unfold((sub, first), |(mut sub, first)| async move {
        if let Some(b) = first {
            return Some((Ok::<_, BoxError>(Frame::data(b)), (sub, None)));
        }
        let frame = match tokio::time::timeout(KEEP_ALIVE, sub.recv()).await {
            Err(_) => Bytes::from_static(b": keep-alive\n\n"),
            Ok(None) => return None,
            Ok(Some(Ok(ev))) => encode(&ev),
            Ok(Some(Err(n))) => {
                Bytes::from(format!("event: dropped\ndata: {{\"dropped\":{n}}}\n\n"))
            }
        };
        Some((Ok(Frame::data(frame)), (sub, None)))
    });
    let mut resp = Response::new(stream);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// One event as an SSE frame.
pub fn encode(ev: &RequestEvent) -> Bytes {
    let mut s = String::from("data: ");
    s.push_str(&serde_json::to_string(ev).expect("events serialize"));
    s.push_str("\n\n");
    Bytes::from(s)
}

/// What a reader of `/relay/events` gets out of it.
#[derive(Debug)]
pub enum Message {
    Event(Box<RequestEvent>),
    /// The server dropped this many events for this reader.
    Dropped(u64),
}

/// Incremental SSE parser: feed it body chunks, take complete messages.
#[derive(Default)]
pub struct Parser {
    buf: BytesMut,
}

impl Parser {
    /// Adds a chunk and returns the messages it completed (unknown or malformed ones are skipped).
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Message> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(end) = find(&self.buf, b"\n\n") {
            let block = self.buf.split_to(end + 2);
            let text = String::from_utf8_lossy(&block);
            let mut event = None;
            let mut data = String::new();
            for line in text.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = Some(v.trim().to_string());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.strip_prefix(' ').unwrap_or(v));
                }
            }
            match event.as_deref() {
                None => {
                    if let Ok(ev) = serde_json::from_str::<RequestEvent>(&data) {
                        out.push(Message::Event(Box::new(ev)));
                    }
                }
                Some("dropped") => {
                    if let Some(n) = serde_json::from_str::<serde_json::Value>(&data)
                        .ok()
                        .and_then(|v| v["dropped"].as_u64())
                    {
                        out.push(Message::Dropped(n));
                    }
                }
                Some(_) => {}
            }
        }
        out
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{CacheState, Phase};

    #[test]
    fn encode_then_parse_in_pieces() {
        let ev = RequestEvent {
            seq: 7,
            phase: Phase::End,
            time_ms: 1,
            request_id: "r".into(),
            method: "POST".into(),
            path: "/v1/x".into(),
            provider: Some("openai".into()),
            model: Some("gpt-4o".into()),
            status: 200,
            cache: Some(CacheState::Hit),
            cache_key: Some("abc".into()),
            latency_us: Some(5),
            ttfb_us: None,
            upstream_us: None,
            bytes_in: 1,
            bytes_out: 2,
            outcome: Some("complete".into()),
            error: None,
            tokens_in: Some(3),
            tokens_out: None,
            cost_micro_usd: None,
            saved_micro_usd: None,
            prompt_cache_saved_micro_usd: None,
            tokens_cached: None,
            unpriced: false,
            attempts: Vec::new(),
            session: Some("s-1".into()),
            key: Some("ci".into()),
            tokens_live: Some(4),
            detail: None,
        };
        let mut wire = b": relay events\n\n".to_vec();
        wire.extend_from_slice(&encode(&ev));
        wire.extend_from_slice(b"event: dropped\ndata: {\"dropped\":4}\n\n");
        let mut p = Parser::default();
        let mut got = Vec::new();
        for piece in wire.chunks(7) {
            got.extend(p.push(piece));
        }
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(matches!(&got[0], Message::Event(e) if **e == ev));
        assert!(matches!(got[1], Message::Dropped(4)));
    }
}
