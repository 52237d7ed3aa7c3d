//! The stores' private, compact binary encoding of an [`Entry`] (not the export format).
//!
//! Layout (little-endian; `str`/`bytes` = `u32` length + data; `opt` = `u8` 0/1 + value):
//! `u8 CODEC_VERSION`, then the meta: `str provider`, `opt str model`, `str method`, `str path`,
//! `u16 status`, `u32 n` + `n × (str name, str value)`, `u64 created_ms`, `opt u64 expires_ms`,
//! and (since version 2) `u8 n` + `n ×` `opt str` of the [`Recorded`] fields in their order
//! (scope, namespace, portable, client, session, prompt; a reader takes the ones it knows and
//! skips the rest); then `bytes request`, then the body: `u8 0` + `bytes` for JSON, or `u8 1` + `u32 n` +
//! `n × (u32 delay_ms, bytes data)` for SSE. Hits are not encoded: stores keep them beside the entry
//! so counting a hit never rewrites the bodies. The meta comes first so listings decode only it.

use bytes::Bytes;

use super::entry::{CachedBody, Entry, EntryMeta, Recorded, SseEvent};

/// Bump with any layout change. Version 1 (no recorded fields) is still read, so the redb schema
/// version did not change with version 2; a change that cannot read the old layout bumps it too.
const CODEC_VERSION: u8 = 2;

/// Why stored bytes are not an entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CodecError {
    #[error("stored entry ends early")]
    Truncated,
    #[error("stored entry has codec version {0}, expected {CODEC_VERSION}")]
    Version(u8),
    #[error("stored entry has an invalid {0}")]
    Invalid(&'static str),
}

/// Encodes an entry (without its hit count).
pub(crate) fn encode(entry: &Entry) -> Vec<u8> {
    let mut w = Vec::with_capacity(entry.size() as usize + 64);
    w.push(CODEC_VERSION);
    let m = &entry.meta;
    put_bytes(&mut w, m.provider.as_bytes());
    put_opt_str(&mut w, m.model.as_deref());
    put_bytes(&mut w, m.method.as_bytes());
    put_bytes(&mut w, m.path.as_bytes());
    w.extend_from_slice(&m.status.to_le_bytes());
    put_u32(&mut w, m.headers.len());
    for (k, v) in &m.headers {
        put_bytes(&mut w, k.as_bytes());
        put_bytes(&mut w, v.as_bytes());
    }
    w.extend_from_slice(&m.created_ms.to_le_bytes());
    match m.expires_ms {
        None => w.push(0),
        Some(t) => {
            w.push(1);
            w.extend_from_slice(&t.to_le_bytes());
        }
    }
    let r = &m.recorded;
    let recorded = [
        &r.scope,
        &r.namespace,
        &r.portable,
        &r.client,
        &r.session,
        &r.prompt,
    ];
    w.push(recorded.len() as u8);
    for f in recorded {
        put_opt_str(&mut w, f.as_deref());
    }
    put_bytes(&mut w, &entry.request);
    match &entry.response {
        CachedBody::Json(b) => {
            w.push(0);
            put_bytes(&mut w, b);
        }
        CachedBody::Sse(events) => {
            w.push(1);
            put_u32(&mut w, events.len());
            for e in events {
                w.extend_from_slice(&e.delay_ms.to_le_bytes());
                put_bytes(&mut w, &e.data);
            }
        }
    }
    w
}

/// Decodes a whole entry; the bodies share `buf`'s allocation. `hits` is set to 0.
pub(crate) fn decode(buf: Bytes) -> Result<Entry, CodecError> {
    let mut r = Reader { buf: &buf, pos: 0 };
    let meta = r.meta()?;
    let request = r.bytes_range().map(|(a, b)| buf.slice(a..b))?;
    let response = match r.u8()? {
        0 => CachedBody::Json(r.bytes_range().map(|(a, b)| buf.slice(a..b))?),
        1 => {
            let n = r.u32()? as usize;
            // Each event takes at least 8 bytes: don't trust `n` for the allocation.
            let mut events = Vec::with_capacity(n.min(r.remaining() / 8));
            for _ in 0..n {
                let delay_ms = r.u32()?;
                let (a, b) = r.bytes_range()?;
                events.push(SseEvent {
                    delay_ms,
                    data: buf.slice(a..b),
                });
            }
            CachedBody::Sse(events)
        }
        _ => return Err(CodecError::Invalid("body kind")),
    };
    if r.remaining() != 0 {
        return Err(CodecError::Invalid("length"));
    }
    Ok(Entry {
        meta,
        request,
        response,
    })
}

/// Decodes only the meta at the start of an encoded entry. `hits` is set to 0.
pub(crate) fn decode_meta(buf: &[u8]) -> Result<EntryMeta, CodecError> {
    Reader { buf, pos: 0 }.meta()
}

fn put_u32(w: &mut Vec<u8>, n: usize) {
    // Entries are bounded by `cache.max_bytes` long before 4 GiB; saturate rather than wrap.
    w.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
}

fn put_bytes(w: &mut Vec<u8>, b: &[u8]) {
    put_u32(w, b.len());
    w.extend_from_slice(b);
}

fn put_opt_str(w: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => w.push(0),
        Some(s) => {
            w.push(1);
            put_bytes(w, s.as_bytes());
        }
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&[u8], CodecError> {
        if self.remaining() < n {
            return Err(CodecError::Truncated);
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, CodecError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, CodecError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, CodecError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// The position range of a length-prefixed byte string.
    fn bytes_range(&mut self) -> Result<(usize, usize), CodecError> {
        let n = self.u32()? as usize;
        let start = self.pos;
        self.take(n)?;
        Ok((start, start + n))
    }

    fn string(&mut self, what: &'static str) -> Result<String, CodecError> {
        let (a, b) = self.bytes_range()?;
        String::from_utf8(self.buf[a..b].to_vec()).map_err(|_| CodecError::Invalid(what))
    }

    fn flag(&mut self, what: &'static str) -> Result<bool, CodecError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(CodecError::Invalid(what)),
        }
    }

    fn opt_string(&mut self, what: &'static str) -> Result<Option<String>, CodecError> {
        Ok(if self.flag(what)? {
            Some(self.string(what)?)
        } else {
            None
        })
    }

    fn meta(&mut self) -> Result<EntryMeta, CodecError> {
        let version = match self.u8()? {
            v @ (1 | CODEC_VERSION) => v,
            v => return Err(CodecError::Version(v)),
        };
        let provider = self.string("provider")?;
        let model = if self.flag("model")? {
            Some(self.string("model")?)
        } else {
            None
        };
        let method = self.string("method")?;
        let path = self.string("path")?;
        let status = self.u16()?;
        let n = self.u32()? as usize;
        let mut headers = Vec::with_capacity(n.min(self.remaining() / 8));
        for _ in 0..n {
            headers.push((self.string("header name")?, self.string("header value")?));
        }
        let created_ms = self.u64()?;
        let expires_ms = if self.flag("expiry")? {
            Some(self.u64()?)
        } else {
            None
        };
        let mut recorded = Recorded::default();
        if version >= 2 {
            let n = self.u8()?;
            let fields = [
                &mut recorded.scope,
                &mut recorded.namespace,
                &mut recorded.portable,
                &mut recorded.client,
                &mut recorded.session,
                &mut recorded.prompt,
            ];
            let known = fields.len();
            for f in fields.into_iter().take(usize::from(n)) {
                *f = self.opt_string("recorded field")?;
            }
            for _ in known..usize::from(n) {
                self.opt_string("recorded field")?;
            }
        }
        Ok(EntryMeta {
            provider,
            model,
            method,
            path,
            status,
            headers,
            created_ms,
            expires_ms,
            hits: 0,
            recorded,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::entry::tests::{json_entry, sse_entry};

    #[test]
    fn roundtrip_json_and_sse() {
        for mut e in [
            json_entry("gpt-4o", 5, r#"{"id":1}"#),
            sse_entry("claude", 6),
        ] {
            e.meta.expires_ms = Some(77);
            let bytes = encode(&e);
            let back = decode(Bytes::from(bytes.clone())).unwrap();
            assert_eq!(back, e);
            assert_eq!(decode_meta(&bytes).unwrap(), e.meta);
        }
        let mut anon = json_entry("m", 1, "");
        anon.meta.model = None;
        assert_eq!(decode(Bytes::from(encode(&anon))).unwrap(), anon);
    }

    #[test]
    fn recorded_fields_roundtrip_and_version_1_still_reads() {
        let mut e = json_entry("m", 1, r#"{"a":1}"#);
        e.meta.recorded = Recorded {
            scope: Some("global".into()),
            portable: Some("ab".repeat(32)),
            client: Some("claude-code 2.1.197".into()),
            session: Some("s-1".into()),
            prompt: Some("say hi".into()),
            namespace: None,
        };
        let bytes = encode(&e);
        assert_eq!(decode(Bytes::from(bytes.clone())).unwrap(), e);
        assert_eq!(decode_meta(&bytes).unwrap(), e.meta);
        // The same entry as relay wrote it before: version 1, no recorded fields.
        let mut old = e.clone();
        old.meta.recorded = Recorded::default();
        let v2 = encode(&old);
        let CachedBody::Json(body) = &old.response else {
            unreachable!()
        };
        let tail = 4 + old.request.len() + 1 + 4 + body.len();
        let at = v2.len() - tail - 7;
        assert_eq!(&v2[at..at + 7], &[6, 0, 0, 0, 0, 0, 0]);
        let mut v1 = [&v2[..at], &v2[at + 7..]].concat();
        v1[0] = 1;
        assert_eq!(decode(Bytes::from(v1)).unwrap(), old);
    }

    #[test]
    fn hits_are_not_encoded() {
        let mut e = json_entry("m", 1, "{}");
        e.meta.hits = 9;
        assert_eq!(decode(Bytes::from(encode(&e))).unwrap().meta.hits, 0);
    }

    #[test]
    fn damaged_bytes_are_errors_not_panics() {
        let bytes = encode(&sse_entry("m", 1));
        for cut in 0..bytes.len() {
            assert!(
                decode(Bytes::copy_from_slice(&bytes[..cut])).is_err(),
                "cut {cut}"
            );
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert_eq!(
            decode(Bytes::from(extra)),
            Err(CodecError::Invalid("length"))
        );
        let mut version = bytes;
        version[0] = 9;
        assert_eq!(decode(Bytes::from(version)), Err(CodecError::Version(9)));
    }
}
