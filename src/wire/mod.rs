//! The OpenAI and Anthropic wire facts in one place: the header names relay reads and writes
//! ([`headers`]), Server-Sent Events framing ([`sse`]), which dialect a caller speaks ([`Dialect`]),
//! how an event stream is recognised, and how relay writes money (`x-relay-cost-usd`).
//!
//! The bottom of the tree: it imports nothing of relay's but [`crate::fieldpath`].

pub mod clients;
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
        if headers.contains_key(headers::ANTHROPIC_VERSION) || path.contains("/v1/messages") {
            Dialect::Anthropic
        } else {
            Dialect::OpenAi
        }
    }
}

/// The API endpoint a request is for, from its path: the one list of the endpoints relay records
/// and meters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// OpenAI `chat/completions` (and every OpenAI-compatible API's).
    ChatCompletions,
    /// OpenAI's legacy `completions`.
    Completions,
    /// OpenAI's Responses API.
    Responses,
    /// Anthropic's Messages API.
    Messages,
    /// Anthropic's `messages/count_tokens`.
    CountTokens,
    Embeddings,
    Moderations,
    /// `models` and `models/{id}` (both providers): its `GET`s are recorded, so code that lists
    /// models works offline.
    Models,
    /// Anything else (files, batches, ...): forwarded, neither recorded nor metered.
    Other,
}

impl Endpoint {
    /// The endpoint of `path` (an upstream or client path; a query is ignored).
    pub fn of(path: &str) -> Endpoint {
        let path = path.split('?').next().unwrap_or_default();
        // Longest suffixes first: `/chat/completions` before `/completions`.
        const KINDS: [(&str, Endpoint); 7] = [
            ("/chat/completions", Endpoint::ChatCompletions),
            ("/messages/count_tokens", Endpoint::CountTokens),
            ("/completions", Endpoint::Completions),
            ("/responses", Endpoint::Responses),
            ("/messages", Endpoint::Messages),
            ("/embeddings", Endpoint::Embeddings),
            ("/moderations", Endpoint::Moderations),
        ];
        if let Some((_, kind)) = KINDS.iter().find(|(suffix, _)| path.ends_with(suffix)) {
            return *kind;
        }
        // `/v1/models`, `/v1/models/{id}` (an id may hold a slash: `openai/gpt-4o`).
        match path.find("/models") {
            Some(i) if matches!(path.as_bytes().get(i + 7), None | Some(b'/')) => Endpoint::Models,
            _ => Endpoint::Other,
        }
    }

    /// Whether relay records the answer to a `method` request to this endpoint whose body is
    /// `body_len` bytes (the cache): a `POST` with a JSON body to an API endpoint, a `GET` of the
    /// models list or of one model.
    pub fn cacheable(self, method: &http::Method, body_len: usize) -> bool {
        match self {
            Endpoint::Other => false,
            Endpoint::Models => *method == http::Method::GET,
            _ => *method == http::Method::POST && body_len > 0,
        }
    }

    /// Its answers carry token usage relay meters (cost).
    pub fn metered(self) -> bool {
        matches!(
            self,
            Endpoint::ChatCompletions
                | Endpoint::Completions
                | Endpoint::Responses
                | Endpoint::Messages
                | Endpoint::Embeddings
        )
    }

    /// Chat-completions-like: a stream of these has a usage chunk only when asked for.
    pub fn chat_like(self) -> bool {
        matches!(self, Endpoint::ChatCompletions | Endpoint::Completions)
    }
}

/// What relay reads of a JSON request body, once per request (the body itself goes upstream
/// untouched): the model to route by, whether a stream is asked for and with its usage chunk, and
/// the answer's token bound. A field of an unexpected type reads as absent, as the upstream would
/// judge it, not as a broken body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BodyPeek {
    pub model: Option<String>,
    /// `"stream": true`.
    pub stream: bool,
    /// `stream_options.include_usage`, when given.
    pub include_usage: Option<bool>,
    /// `max_completion_tokens`, else `max_tokens`, else `max_output_tokens` (Responses API).
    pub max_tokens: Option<u64>,
}

impl BodyPeek {
    /// Reads `body` (one parse; values other than these fields are skipped, not built). An empty
    /// body peeks as nothing; a body that is not JSON is an error for the caller to judge.
    pub fn of(body: &[u8]) -> Result<BodyPeek, serde_json::Error> {
        use serde_json::Value;
        #[derive(serde::Deserialize)]
        struct Raw {
            #[serde(default)]
            model: Option<Value>,
            #[serde(default)]
            stream: Option<Value>,
            #[serde(default)]
            stream_options: Option<Value>,
            #[serde(default)]
            max_completion_tokens: Option<Value>,
            #[serde(default)]
            max_tokens: Option<Value>,
            #[serde(default)]
            max_output_tokens: Option<Value>,
        }
        if body.is_empty() {
            return Ok(BodyPeek::default());
        }
        let raw = match serde_json::from_slice::<Raw>(body) {
            Ok(raw) => raw,
            // Valid JSON of another shape (an array, a string): nothing to peek.
            Err(e) if e.is_data() => return Ok(BodyPeek::default()),
            Err(e) => return Err(e),
        };
        let count = |v: Option<Value>| v.and_then(|v| v.as_u64());
        Ok(BodyPeek {
            model: raw.model.and_then(|v| match v {
                Value::String(s) => Some(s),
                _ => None,
            }),
            stream: raw.stream.and_then(|v| v.as_bool()) == Some(true),
            include_usage: raw
                .stream_options
                .and_then(|o| o.get("include_usage").and_then(Value::as_bool)),
            max_tokens: count(raw.max_completion_tokens)
                .or(count(raw.max_tokens))
                .or(count(raw.max_output_tokens)),
        })
    }
}

/// A `Content-Type` of Server-Sent Events: `text/event-stream`, in any case (media types are
/// case-insensitive), leading spaces and parameters allowed. The one test of "is it SSE".
pub fn is_event_stream(content_type: &[u8]) -> bool {
    const SSE: &[u8] = b"text/event-stream";
    let start = content_type
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(content_type.len());
    content_type[start..]
        .get(..SSE.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(SSE))
}

/// Whether `headers` announce a Server-Sent Events body.
pub fn has_event_stream(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| is_event_stream(v.as_bytes()))
}

/// Unix milliseconds as RFC 3339 UTC, to the second.
pub fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
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
    fn endpoints_from_paths() {
        use Endpoint::*;
        for (path, kind) in [
            ("/v1/chat/completions", ChatCompletions),
            ("/openai/v1/chat/completions?x=1", ChatCompletions),
            ("/v1/completions", Completions),
            ("/v1/responses", Responses),
            ("/v1/messages?beta=true", Messages),
            ("/v1/messages/count_tokens", CountTokens),
            ("/v1/embeddings", Embeddings),
            ("/v1/moderations", Moderations),
            ("/v1/models", Models),
            ("/v1/models?limit=20", Models),
            ("/v1/models/claude-opus-4-8", Models),
            ("/v1/models/openai/gpt-4o", Models),
            ("/v1/modelsx", Other),
            ("/v1/files", Other),
        ] {
            assert_eq!(Endpoint::of(path), kind, "{path}");
        }
        let (get, post) = (http::Method::GET, http::Method::POST);
        assert!(CountTokens.cacheable(&post, 2) && !CountTokens.metered());
        assert!(Moderations.cacheable(&post, 2) && !Moderations.metered());
        assert!(!Messages.cacheable(&post, 0) && !Messages.cacheable(&get, 0));
        assert!(Models.cacheable(&get, 0) && !Models.cacheable(&post, 2) && !Models.metered());
        assert!(!Other.cacheable(&post, 2) && !Other.metered());
        assert!(Completions.chat_like() && !Messages.chat_like());
    }

    #[test]
    fn one_peek_reads_every_field() {
        let p = BodyPeek::of(
            br#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":false},"max_tokens":99,"max_completion_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#,
        )
        .unwrap();
        assert_eq!(
            p,
            BodyPeek {
                model: Some("gpt-4o".into()),
                stream: true,
                include_usage: Some(false),
                max_tokens: Some(10),
            }
        );
        let p = BodyPeek::of(br#"{"model":7,"stream":"yes","max_output_tokens":5}"#).unwrap();
        assert_eq!((p.model, p.stream, p.max_tokens), (None, false, Some(5)));
        assert_eq!(BodyPeek::of(b"").unwrap(), BodyPeek::default());
        assert_eq!(BodyPeek::of(b"[1,2]").unwrap(), BodyPeek::default());
        assert!(BodyPeek::of(b"{nope").is_err());
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
        assert!(is_event_stream(b" Text/Event-Stream;charset=utf-8"));
        assert!(!is_event_stream(b"text/event"));
        assert_eq!(usd(2_500), "0.002500");
        assert_eq!(usd(12_345_678), "12.345678");
    }
}
