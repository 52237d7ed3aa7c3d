//! `cost.stream_usage: inject`: the one deliberate change relay makes to a forwarded body.
//!
//! A streamed chat completion sent to an OpenAI-kind provider without
//! `stream_options.include_usage` gets `"stream_options":{"include_usage":true}` added, so the
//! stream ends with a usage-only chunk and its cost is exact; the [`super::usage::Meter`] removes
//! that chunk from what the caller receives. The cache key is computed from the caller's body
//! before this change.
//!
//! The field is inserted as text right after the body's opening `{`, so the rest of the body stays
//! byte for byte. A body that already has a `stream_options` object (without `include_usage`) is
//! re-serialised with the key added (same JSON, keys possibly reordered).

use bytes::{Bytes, BytesMut};
use serde_json::Value;

const FIELD: &[u8] = br#""stream_options":{"include_usage":true},"#;

/// The body with `stream_options.include_usage: true`; `None` when it cannot be added (not a JSON
/// object, or `include_usage` already set).
pub fn include_usage(body: &[u8]) -> Option<Bytes> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let obj = v.as_object()?;
    match obj.get("stream_options") {
        None => {
            let open = body.iter().position(|b| *b == b'{')?;
            let mut out = BytesMut::with_capacity(body.len() + FIELD.len());
            out.extend_from_slice(&body[..=open]);
            out.extend_from_slice(FIELD);
            let rest = &body[open + 1..];
            if rest.iter().all(|b| b.is_ascii_whitespace() || *b == b'}') {
                // `{}`: no trailing comma.
                out.truncate(out.len() - 1);
            }
            out.extend_from_slice(rest);
            Some(out.freeze())
        }
        Some(Value::Object(o)) if !o.contains_key("include_usage") => {
            let mut v = v.clone();
            v["stream_options"]["include_usage"] = Value::Bool(true);
            serde_json::to_vec(&v).ok().map(Bytes::from)
        }
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(b: &[u8]) -> Value {
        serde_json::from_slice(b).unwrap()
    }

    #[test]
    fn inserted_after_the_opening_brace() {
        let body = br#" {"model":"gpt-4o","stream":true,"messages":[]}"#;
        let out = include_usage(body).unwrap();
        assert_eq!(
            &out[..],
            br#" {"stream_options":{"include_usage":true},"model":"gpt-4o","stream":true,"messages":[]}"#
        );
        assert_eq!(parse(&out)["stream_options"]["include_usage"], true);
        assert_eq!(
            &include_usage(b"{}").unwrap()[..],
            br#"{"stream_options":{"include_usage":true}}"#
        );
    }

    #[test]
    fn existing_options_kept() {
        let body = br#"{"stream":true,"stream_options":{"include_obfuscation":false}}"#;
        let v = parse(&include_usage(body).unwrap());
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["stream_options"]["include_obfuscation"], false);
        assert!(include_usage(br#"{"stream_options":{"include_usage":false}}"#).is_none());
        assert!(include_usage(b"[1]").is_none());
        assert!(include_usage(b"nope").is_none());
    }
}
