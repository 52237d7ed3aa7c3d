//! The OpenAI and Anthropic wire facts in one place: the header names relay reads and writes
//! ([`headers`]), Server-Sent Events framing ([`sse`]), which dialect a caller speaks ([`Dialect`]),
//! how an event stream is recognised, and how relay writes money (`x-relay-cost-usd`).
//!
//! The bottom of the tree: it imports nothing of relay's.

pub mod headers;
pub mod sse;

use http::header;

/// Which API shape the caller speaks; decides the error body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    OpenAi,
    Anthropic,
}

impl Dialect {
    /// Anthropic when the path is the Messages API or the caller sends `anthropic-version` (every
    /// Anthropic SDK does); OpenAI otherwise.
    pub fn of(path: &str, headers: &http::HeaderMap) -> Dialect {
        if headers.contains_key("anthropic-version") || path.contains("/v1/messages") {
            Dialect::Anthropic
        } else {
            Dialect::OpenAi
        }
    }
}

/// A `Content-Type` of Server-Sent Events (`text/event-stream`, parameters allowed).
pub fn is_event_stream(content_type: &[u8]) -> bool {
    content_type.starts_with(b"text/event-stream")
}

/// Whether `headers` announce a Server-Sent Events body.
pub fn has_event_stream(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| is_event_stream(v.as_bytes()))
}

/// Micro-USD as relay writes money everywhere (headers, logs, `relay usage`): six decimals.
pub fn usd(micros: u64) -> String {
    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn dialect() {
        let mut h = http::HeaderMap::new();
        assert_eq!(Dialect::of("/v1/chat/completions", &h), Dialect::OpenAi);
        assert_eq!(Dialect::of("/v1/messages", &h), Dialect::Anthropic);
        h.insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
        assert_eq!(Dialect::of("/v1/models", &h), Dialect::Anthropic);
    }

    #[test]
    fn event_streams_and_money() {
        let mut h = http::HeaderMap::new();
        assert!(!has_event_stream(&h));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream; charset=utf-8"),
        );
        assert!(has_event_stream(&h));
        assert!(!is_event_stream(b"application/json"));
        assert_eq!(usd(2_500), "0.002500");
        assert_eq!(usd(12_345_678), "12.345678");
    }
}
