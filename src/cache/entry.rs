//! A cached response ([`Entry`]) and its portable JSONL form.
//!
//! An entry holds the request body as sent, the response status and replayable headers, and the
//! response body: a complete body ([`CachedBody::Json`]) or the SSE event sequence
//! ([`CachedBody::Sse`]) with each event's raw bytes and its delay after the previous one, so a
//! replay is byte-faithful and can keep the original timing.
//!
//! # JSONL export format (`relay cache export`)
//!
//! One entry per line, one JSON object per entry:
//!
//! ```json
//! {"format":"relay-cache/1","key":"<64 hex>","key_version":1,
//!  "meta":{"provider":"openai","model":"gpt-4o","method":"POST","path":"/v1/chat/completions",
//!          "status":200,"headers":[["content-type","application/json"]],
//!          "created_ms":1700000000000,"expires_ms":null,"hits":0},
//!  "request":"{\"model\":\"gpt-4o\"}",
//!  "response":{"json":"{\"id\":\"x\"}"}}
//! ```
//!
//! A streamed response is `"response":{"sse":[{"delay_ms":12,"data":"data: {...}\n\n"}, ...]}`.
//! Every byte string (`request`, `json`, `data`) is a JSON string when the bytes are valid UTF-8
//! (the usual case), else `{"base64":"..."}` (standard alphabet, padded). Either form is accepted
//! on import. The store's own on-disk encoding is a different, private, compact form.

use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::key::{CacheKey, KEY_VERSION};

/// The `format` tag of every exported line.
const JSONL_FORMAT: &str = "relay-cache/1";

/// One cached response and the request that produced it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// What the entry is (provider, model, status, headers, times, hits).
    pub meta: EntryMeta,
    /// The request body as sent upstream (for `relay cache show` and export).
    pub request: Bytes,
    /// The response body to replay.
    pub response: CachedBody,
}

/// An entry's description, without its bodies: what `relay cache ls` shows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryMeta {
    /// Provider name, as configured.
    pub provider: String,
    /// The request's `model`, when it had one (filters `ls` and `clear`).
    pub model: Option<String>,
    /// HTTP method of the request.
    pub method: String,
    /// Path and query of the request.
    pub path: String,
    /// Response status (only 2xx responses are cached).
    pub status: u16,
    /// Response headers to replay, in order; the caller strips hop-by-hop headers before storing.
    pub headers: Vec<(String, String)>,
    /// When the response was recorded, unix milliseconds (the `age` header counts from here).
    pub created_ms: u64,
    /// When the entry stops being served, unix milliseconds; `None` = never. On
    /// [`Store::put`](super::Store::put), `None` means "the store's default TTL from now".
    pub expires_ms: Option<u64>,
    /// How many times the entry was served. Counted lazily by the store: a read may lag the latest
    /// hits by one write batch. Ignored on put except by import, which keeps it.
    pub hits: u64,
    /// What relay knew of the request when it recorded it (entries recorded before relay 0.3 have
    /// none of it).
    #[serde(default, skip_serializing_if = "Recorded::is_empty")]
    pub recorded: Recorded,
}

/// The request behind an entry, beyond its line and body: whose it is, the client and session it
/// came from, and its portable key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Recorded {
    /// The key scope: `global`, or the 64-hex hash the scope holds (never the API key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// `x-relay-cache-namespace`, when sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The key of the request's portable form (64 hex): what replays it another day, from another
    /// directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub portable: Option<String>,
    /// The client, from its `User-Agent` (`claude-code 2.1.197`, `codex 0.171.0`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// The agent session (Claude Code's session id, Codex's conversation id, `relay run`'s label).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// The start of the last user message, on one line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
}

impl Recorded {
    pub fn is_empty(&self) -> bool {
        *self == Recorded::default()
    }
}

/// A response body as it will be replayed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CachedBody {
    /// A complete, non-streamed body (JSON in practice), replayed as-is.
    Json(Bytes),
    /// A server-sent-events stream, as its events in order.
    Sse(Vec<SseEvent>),
}

/// One recorded server-sent event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    /// Milliseconds since the previous event (since the response headers, for the first one);
    /// used by `cache.replay_timing: original`.
    pub delay_ms: u32,
    /// The event's raw bytes, including its trailing blank line (`data: {...}\n\n`), so the
    /// concatenation of all events is the original body byte for byte.
    pub data: Bytes,
}

impl Entry {
    /// The same entry with both bodies in allocations of their own, sized exactly (the SSE events
    /// in one, sliced). A recorded body is cut from the buffers its bytes arrived in (a
    /// connection's read buffer: 8 KB and more), which a kept slice would hold whole for as long as
    /// the entry is kept; a store that keeps entries in memory compacts them first, so what it
    /// holds is about what [`Entry::size`] counts.
    pub fn compact(&mut self) {
        self.request = Bytes::copy_from_slice(&self.request);
        self.response = match &self.response {
            CachedBody::Json(body) => CachedBody::Json(Bytes::copy_from_slice(body)),
            CachedBody::Sse(events) => {
                // A new buffer of exactly the events' bytes.
                let all = self.response.to_bytes();
                let mut at = 0;
                CachedBody::Sse(
                    events
                        .iter()
                        .map(|e| {
                            let data = all.slice(at..at + e.data.len());
                            at += e.data.len();
                            SseEvent {
                                delay_ms: e.delay_ms,
                                data,
                            }
                        })
                        .collect(),
                )
            }
        };
    }

    /// Bytes the entry accounts for against `cache.max_bytes`: both bodies, every header and meta
    /// string, plus 4 bytes per SSE event and 64 bytes of fixed fields. An estimate of the store's
    /// footprint (within a few percent for realistic entries), identical across backends.
    pub fn size(&self) -> u64 {
        let m = &self.meta;
        let headers: usize = m.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        let strings = m.provider.len()
            + m.model.as_deref().map_or(0, str::len)
            + m.method.len()
            + m.path.len()
            + headers;
        (64 + strings + self.request.len()) as u64 + self.response.size()
    }

    /// Whether the entry must no longer be served at `now_ms` (unix milliseconds).
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.meta.expires_ms.is_some_and(|t| t <= now_ms)
    }

    /// The entry as one export line (no trailing newline); format in the module docs.
    pub fn to_jsonl_line(&self, key: &CacheKey) -> String {
        let line = Line {
            format: JSONL_FORMAT.to_owned(),
            key: key.hex(),
            key_version: KEY_VERSION,
            meta: EntryMeta {
                path: crate::redact::query(&self.meta.path).into_owned(),
                ..self.meta.clone()
            },
            request: ByteString::from(&self.request),
            response: match &self.response {
                CachedBody::Json(b) => LineBody::Json(ByteString::from(b)),
                CachedBody::Sse(events) => LineBody::Sse(
                    events
                        .iter()
                        .map(|e| LineEvent {
                            delay_ms: e.delay_ms,
                            data: ByteString::from(&e.data),
                        })
                        .collect(),
                ),
            },
        };
        // Plain structs of strings and numbers into a String: no I/O, no non-string map keys.
        serde_json::to_string(&line).expect("an export line always serializes")
    }

    /// Parses one export line back into its key and entry. Rejects lines of another format or key
    /// version (their keys could never be hit).
    pub fn from_jsonl_line(line: &str) -> Result<(CacheKey, Entry), JsonlError> {
        let line: Line = serde_json::from_str(line.trim())?;
        if line.format != JSONL_FORMAT {
            return Err(JsonlError::Format(line.format));
        }
        if line.key_version != KEY_VERSION {
            return Err(JsonlError::KeyVersion {
                found: line.key_version,
                expected: KEY_VERSION,
            });
        }
        let key = CacheKey::from_hex(&line.key).map_err(|e| JsonlError::Key(e.to_string()))?;
        let response = match line.response {
            LineBody::Json(b) => CachedBody::Json(b.into_bytes()?),
            LineBody::Sse(events) => CachedBody::Sse(
                events
                    .into_iter()
                    .map(|e| {
                        Ok(SseEvent {
                            delay_ms: e.delay_ms,
                            data: e.data.into_bytes()?,
                        })
                    })
                    .collect::<Result<_, JsonlError>>()?,
            ),
        };
        Ok((
            key,
            Entry {
                meta: EntryMeta {
                    path: crate::redact::query(&line.meta.path).into_owned(),
                    ..line.meta
                },
                request: line.request.into_bytes()?,
                response,
            },
        ))
    }
}

impl CachedBody {
    /// Bytes of the body: its length, plus 4 per SSE event for the delay.
    pub fn size(&self) -> u64 {
        match self {
            CachedBody::Json(b) => b.len() as u64,
            CachedBody::Sse(events) => events.iter().map(|e| 4 + e.data.len() as u64).sum(),
        }
    }

    /// The whole body as one buffer (the SSE events concatenated): what the client originally got.
    pub fn to_bytes(&self) -> Bytes {
        match self {
            CachedBody::Json(b) => b.clone(),
            CachedBody::Sse(events) => {
                let mut out = Vec::with_capacity(events.iter().map(|e| e.data.len()).sum());
                for e in events {
                    out.extend_from_slice(&e.data);
                }
                Bytes::from(out)
            }
        }
    }
}

/// Why an export line could not be imported.
#[derive(Debug, thiserror::Error)]
pub enum JsonlError {
    #[error("not a relay cache line: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unknown cache export format {0:?} (this relay reads {JSONL_FORMAT:?})")]
    Format(String),
    #[error("the line was exported with cache key version {found}; this relay uses {expected}")]
    KeyVersion { found: u64, expected: u64 },
    #[error("bad key: {0}")]
    Key(String),
    #[error("bad base64 body: {0}")]
    Base64(#[from] base64::DecodeError),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    format: String,
    key: String,
    key_version: u64,
    meta: EntryMeta,
    request: ByteString,
    response: LineBody,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
enum LineBody {
    Json(ByteString),
    Sse(Vec<LineEvent>),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LineEvent {
    delay_ms: u32,
    data: ByteString,
}

/// Bytes in JSON: a string when valid UTF-8, else `{"base64": "..."}`.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum ByteString {
    Text(String),
    Base64 { base64: String },
}

impl ByteString {
    fn from(bytes: &Bytes) -> ByteString {
        match std::str::from_utf8(bytes) {
            Ok(s) => ByteString::Text(s.to_owned()),
            Err(_) => ByteString::Base64 {
                base64: base64::engine::general_purpose::STANDARD.encode(bytes),
            },
        }
    }

    fn into_bytes(self) -> Result<Bytes, JsonlError> {
        match self {
            ByteString::Text(s) => Ok(Bytes::from(s)),
            ByteString::Base64 { base64 } => Ok(Bytes::from(
                base64::engine::general_purpose::STANDARD.decode(base64)?,
            )),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A JSON entry recorded at `created_ms` for `model`.
    pub(crate) fn json_entry(model: &str, created_ms: u64, body: &str) -> Entry {
        Entry {
            meta: EntryMeta {
                provider: "openai".into(),
                model: Some(model.into()),
                method: "POST".into(),
                path: "/v1/chat/completions".into(),
                status: 200,
                headers: vec![
                    ("content-type".into(), "application/json".into()),
                    ("x-request-id".into(), "req_1".into()),
                ],
                created_ms,
                expires_ms: None,
                hits: 0,
                recorded: Recorded::default(),
            },
            request: Bytes::from(format!(r#"{{"model":"{model}","messages":[]}}"#)),
            response: CachedBody::Json(Bytes::from(body.to_owned())),
        }
    }

    /// A streamed entry with three events, one of them not valid UTF-8.
    pub(crate) fn sse_entry(model: &str, created_ms: u64) -> Entry {
        let mut e = json_entry(model, created_ms, "");
        e.meta.provider = "anthropic".into();
        e.meta.path = "/v1/messages".into();
        e.meta.headers = vec![("content-type".into(), "text/event-stream".into())];
        e.response = CachedBody::Sse(vec![
            SseEvent {
                delay_ms: 0,
                data: Bytes::from_static(
                    b"event: message_start\ndata: {\"type\":\"message_start\"}\n\n",
                ),
            },
            SseEvent {
                delay_ms: 37,
                data: Bytes::from_static(b"data: \xff\xfe raw\r\n\r\n"),
            },
            SseEvent {
                delay_ms: 5,
                data: Bytes::from_static(
                    b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
                ),
            },
        ]);
        e
    }

    /// Whether `part` lies inside `buf`'s bytes.
    fn within(part: &Bytes, buf: &Bytes) -> bool {
        let (p, b) = (part.as_ptr() as usize, buf.as_ptr() as usize);
        p >= b && p + part.len() <= b + buf.len()
    }

    #[test]
    fn compact_copies_bodies_out_of_the_buffers_they_arrived_in() {
        // As recorded: every body a slice of a large read buffer.
        let read_buffer = Bytes::from(vec![b'x'; 16 * 1024]);
        let sse = sse_entry("claude", 1);
        let mut at = 0;
        let mut slice = |data: &[u8]| {
            let mut buf = read_buffer.to_vec();
            buf[at..at + data.len()].copy_from_slice(data);
            let part = Bytes::from(buf).slice(at..at + data.len());
            at += data.len();
            part
        };
        for original in [json_entry("gpt-4o", 1, r#"{"id":"x"}"#), sse] {
            let mut e = original.clone();
            e.request = slice(&e.request);
            let mut buffers = vec![e.request.clone()];
            match &mut e.response {
                CachedBody::Json(b) => {
                    *b = slice(b);
                    buffers.push(b.clone());
                }
                CachedBody::Sse(events) => {
                    for ev in events {
                        ev.data = slice(&ev.data);
                        buffers.push(ev.data.clone());
                    }
                }
            }
            e.compact();
            assert_eq!(e, original, "the same entry");
            assert_eq!(e.size(), original.size());
            let kept = match &e.response {
                CachedBody::Json(b) => vec![e.request.clone(), b.clone()],
                CachedBody::Sse(events) => std::iter::once(e.request.clone())
                    .chain(events.iter().map(|ev| ev.data.clone()))
                    .collect(),
            };
            for (k, b) in kept.iter().zip(&buffers) {
                assert!(!within(k, b), "copied out of its read buffer");
            }
            if let CachedBody::Sse(events) = &e.response {
                // The events share one buffer of their own, in order.
                for pair in events.windows(2) {
                    let end = pair[0].data.as_ptr() as usize + pair[0].data.len();
                    assert_eq!(end, pair[1].data.as_ptr() as usize);
                }
            }
        }
    }

    #[test]
    fn jsonl_roundtrip_json_and_sse() {
        let key = CacheKey::from_bytes([7; 32]);
        for mut entry in [
            json_entry("gpt-4o", 1_000, r#"{"id":"x"}"#),
            sse_entry("claude", 2_000),
        ] {
            entry.meta.expires_ms = Some(9_000);
            entry.meta.hits = 3;
            let line = entry.to_jsonl_line(&key);
            assert!(!line.contains('\n'), "{line}");
            let (k, back) = Entry::from_jsonl_line(&line).unwrap();
            assert_eq!(k, key);
            assert_eq!(back, entry);
        }
    }

    #[test]
    fn jsonl_bodies_are_readable_strings_or_base64() {
        let key = CacheKey::from_bytes([1; 32]);
        let line = json_entry("m", 1, r#"{"id":"x"}"#).to_jsonl_line(&key);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["format"], "relay-cache/1");
        assert_eq!(v["key"], key.hex());
        assert_eq!(v["response"]["json"], r#"{"id":"x"}"#);
        assert_eq!(v["meta"]["headers"][0][0], "content-type");
        let line = sse_entry("m", 1).to_jsonl_line(&key);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert!(v["response"]["sse"][0]["data"].is_string());
        assert_eq!(
            v["response"]["sse"][1]["data"]["base64"],
            "ZGF0YTog//4gcmF3DQoNCg=="
        );
    }

    #[test]
    fn jsonl_rejects_other_versions_and_garbage() {
        let key = CacheKey::from_bytes([1; 32]);
        let line = json_entry("m", 1, "{}").to_jsonl_line(&key);
        let other_key_version = line.replace("\"key_version\":1", "\"key_version\":99");
        assert!(matches!(
            Entry::from_jsonl_line(&other_key_version),
            Err(JsonlError::KeyVersion { found: 99, .. })
        ));
        let other_format = line.replace("relay-cache/1", "relay-cache/9");
        assert!(matches!(
            Entry::from_jsonl_line(&other_format),
            Err(JsonlError::Format(_))
        ));
        let short_key = line.replace(&key.hex(), "abc");
        assert!(matches!(
            Entry::from_jsonl_line(&short_key),
            Err(JsonlError::Key(_))
        ));
        assert!(matches!(
            Entry::from_jsonl_line("nope"),
            Err(JsonlError::Json(_))
        ));
        let bad_b64 = sse_entry("m", 1)
            .to_jsonl_line(&key)
            .replace("ZGF0YTog//4gcmF3DQoNCg==", "!!");
        assert!(matches!(
            Entry::from_jsonl_line(&bad_b64),
            Err(JsonlError::Base64(_))
        ));
    }

    #[test]
    fn size_counts_bodies_and_strings() {
        let e = json_entry("m", 1, "0123456789");
        let strings = "openai".len()
            + "m".len()
            + "POST".len()
            + "/v1/chat/completions".len()
            + "content-typeapplication/jsonx-request-idreq_1".len();
        assert_eq!(e.size(), (64 + strings + e.request.len() + 10) as u64);
        let s = sse_entry("m", 1);
        assert_eq!(
            s.response.size(),
            s.response.to_bytes().len() as u64 + 3 * 4
        );
    }

    #[test]
    fn sse_body_concatenates_to_the_original_stream() {
        let CachedBody::Sse(events) = sse_entry("m", 1).response else {
            panic!("expected sse")
        };
        let body = CachedBody::Sse(events.clone()).to_bytes();
        let joined: Vec<u8> = events.iter().flat_map(|e| e.data.to_vec()).collect();
        assert_eq!(body, joined);
        assert!(body.ends_with(b"message_stop\"}\n\n"));
    }

    #[test]
    fn expiry() {
        let mut e = json_entry("m", 1, "{}");
        assert!(!e.is_expired(u64::MAX));
        e.meta.expires_ms = Some(10);
        assert!(!e.is_expired(9));
        assert!(e.is_expired(10));
    }
}
