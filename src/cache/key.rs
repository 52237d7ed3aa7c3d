//! Cache keys: which requests count as "the same request".
//!
//! A [`CacheKey`] is the 32-byte BLAKE3 hash (in derive-key mode, context
//! `"relay cache key v1"`) of these fields, in this order, each as a little-endian `u64` byte length
//! followed by the bytes, so no two different inputs can run together:
//!
//! 1. the provider name, as configured;
//! 2. the HTTP method, ASCII upper-cased;
//! 3. the path and query, as sent;
//! 4. the scope: `b"k"` + the caller's 32-byte digest ([`crate::caller::Identity`]), or `b"g"`
//!    for global;
//! 5. the namespace: `b"-"` when absent, `b"n"` + the name when present;
//! 6. the body: `b"j"` + the canonical JSON when the body parses as JSON, else `b"r"` + the raw bytes.
//!
//! Canonical JSON: object keys sorted by their UTF-8 bytes at every depth, no whitespace, strings and
//! numbers re-serialized by serde_json (so `1e2` and `100.0` are one key, `100` another), and the
//! configured top-level fields (default `user`, `metadata`) left out. Sorting is done here rather
//! than relied on from serde_json's map type, so a dependency enabling `preserve_order` cannot
//! silently change every key.
//!
//! Changing any of this changes every key: bump [`KEY_VERSION`] (the redb store then moves its old
//! file aside) and the derive-key context together.

use std::fmt;
use std::str::FromStr;

use super::canonical::canonical_json;
use crate::fieldpath::FieldSet;

/// Version of the key layout described in this module's docs. Stored in the cache file's `meta`
/// table and in every exported JSONL line; a mismatch means old keys can never be hit again.
pub const KEY_VERSION: u64 = 1;

/// BLAKE3 derive-key context for cache keys; carries the layout version.
const KEY_CONTEXT: &str = "relay cache key v1";
/// BLAKE3 derive-key context scope v1 hashed a caller's API key with ([`Scope::v1`]).
const SCOPE_V1_CONTEXT: &str = "relay cache scope v1";

/// A cache key: 32 bytes of BLAKE3. Displayed as 64 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey([u8; 32]);

impl CacheKey {
    /// Number of hex characters [`CacheKey::short`] returns (the `x-relay-cache-key` header, `ls`).
    pub const SHORT_LEN: usize = 12;

    /// Wraps raw key bytes (as stored).
    pub const fn from_bytes(bytes: [u8; 32]) -> CacheKey {
        CacheKey(bytes)
    }

    /// The raw key bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The full key as 64 lowercase hex characters.
    pub fn hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(HEX[usize::from(b >> 4)] as char);
            s.push(HEX[usize::from(b & 0x0f)] as char);
        }
        s
    }

    /// The first [`CacheKey::SHORT_LEN`] hex characters: enough to name an entry to a person.
    pub fn short(&self) -> String {
        let mut s = self.hex();
        s.truncate(Self::SHORT_LEN);
        s
    }

    /// Parses a full 64-character hex key (either case).
    pub fn from_hex(s: &str) -> Result<CacheKey, KeyParseError> {
        let prefix = KeyPrefix::parse(s)?;
        prefix.full().ok_or(KeyParseError::NotFull { len: s.len() })
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({})", self.short())
    }
}

impl FromStr for CacheKey {
    type Err = KeyParseError;

    fn from_str(s: &str) -> Result<CacheKey, KeyParseError> {
        CacheKey::from_hex(s)
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Why a string is not a key or key prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyParseError {
    #[error("a cache key prefix needs at least one hex character")]
    Empty,
    #[error("a cache key has 64 hex characters; got {len}")]
    TooLong { len: usize },
    #[error("a full cache key has 64 hex characters; got {len}")]
    NotFull { len: usize },
    #[error("{ch:?} is not a hex character")]
    NotHex { ch: char },
}

/// A validated hex prefix of a key (1 to 64 hex characters, stored lowercase), as a person types it
/// after `relay cache show`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyPrefix {
    /// One nibble (0..=15) per hex character.
    nibbles: Vec<u8>,
}

impl KeyPrefix {
    /// Parses 1 to 64 hex characters, either case; surrounding whitespace is ignored.
    pub fn parse(s: &str) -> Result<KeyPrefix, KeyParseError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(KeyParseError::Empty);
        }
        if s.len() > 64 {
            return Err(KeyParseError::TooLong { len: s.len() });
        }
        let nibbles = s
            .chars()
            .map(|ch| {
                ch.to_digit(16)
                    .map(|d| d as u8)
                    .ok_or(KeyParseError::NotHex { ch })
            })
            .collect::<Result<Vec<u8>, _>>()?;
        Ok(KeyPrefix { nibbles })
    }

    /// The prefix in lowercase hex.
    pub fn as_hex(&self) -> String {
        self.nibbles
            .iter()
            .map(|&n| HEX[usize::from(n)] as char)
            .collect()
    }

    /// Whether `key` starts with this prefix.
    pub fn matches(&self, key: &CacheKey) -> bool {
        self.nibbles
            .iter()
            .enumerate()
            .all(|(i, &n)| nibble(key, i) == n)
    }

    /// The whole key, when all 64 characters were given.
    pub fn full(&self) -> Option<CacheKey> {
        (self.nibbles.len() == 64).then(|| self.bound(0))
    }

    /// The smallest and largest keys with this prefix (inclusive), for a range scan.
    pub fn range(&self) -> (CacheKey, CacheKey) {
        (self.bound(0x0), self.bound(0xf))
    }

    /// The key made of this prefix, padded with `fill` nibbles.
    fn bound(&self, fill: u8) -> CacheKey {
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            let hi = self.nibbles.get(2 * i).copied().unwrap_or(fill);
            let lo = self.nibbles.get(2 * i + 1).copied().unwrap_or(fill);
            *byte = (hi << 4) | lo;
        }
        CacheKey(out)
    }
}

fn nibble(key: &CacheKey, i: usize) -> u8 {
    let b = key.0[i / 2];
    if i % 2 == 0 {
        b >> 4
    } else {
        b & 0x0f
    }
}

/// Whose responses a key can hit.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Only the same caller ([`crate::caller::Identity`]): holds its 32-byte digest (for a
    /// presented API key, the key's blake3 hash; never the key).
    Key([u8; 32]),
    /// Every caller shares entries (`cache.scope: global`).
    Global,
}

impl Scope {
    /// The scope of `caller`.
    pub fn of(caller: &crate::caller::Identity) -> Scope {
        Scope::Key(caller.digest())
    }

    /// The scope entries recorded before the one caller identity (scope v1) are stored under: a
    /// keyed hash of the presented key (`presented`, the raw key), a relay key's name, and all
    /// zeros for a caller presenting none. A miss looks its v1 key up too, so those recordings
    /// still replay ([`crate::cache`] docs).
    pub fn v1(caller: &crate::caller::Identity, presented: Option<&str>) -> Scope {
        let hashed = |key: &str| Scope::Key(blake3::derive_key(SCOPE_V1_CONTEXT, key.as_bytes()));
        match (caller.who(), presented.map(str::trim)) {
            (crate::caller::Who::RelayKey(name), _) => hashed(&format!("relay key {name}")),
            (_, Some(key)) if !key.is_empty() => hashed(key),
            _ => Scope::Key([0; 32]),
        }
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Global => f.write_str("Global"),
            Scope::Key(h) => write!(f, "Key({})", CacheKey(*h).short()),
        }
    }
}

/// Everything a cache key is made of, borrowed from the request.
#[derive(Clone, Copy, Debug)]
pub struct KeyInput<'a> {
    /// Provider name, as configured.
    pub provider: &'a str,
    /// HTTP method (case-insensitive).
    pub method: &'a str,
    /// Path and query, as sent upstream.
    pub path_and_query: &'a str,
    /// The request body, as received.
    pub body: &'a [u8],
    /// Whose entries this request may hit.
    pub scope: Scope,
    /// `x-relay-cache-namespace`, when sent.
    pub namespace: Option<&'a str>,
}

/// Turns requests into keys. Built once per config load; cheap to share.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyBuilder {
    ignore: FieldSet,
}

impl KeyBuilder {
    /// Top-level JSON fields left out of the key by default: they don't change the answer.
    pub const DEFAULT_IGNORED: [&'static str; 2] = ["user", "metadata"];

    /// A builder that leaves the given fields out of the key (`cache.ignore_fields` and the
    /// client rules). An empty set keeps every field.
    pub fn new(ignore: FieldSet) -> KeyBuilder {
        KeyBuilder { ignore }
    }

    /// The key of a request (layout in the module docs). Parses the body once when it looks like
    /// JSON; costs about as much as one `serde_json` parse and re-serialization.
    pub fn key(&self, input: &KeyInput<'_>) -> CacheKey {
        Self::key_ignoring(&self.ignore, input)
    }

    /// [`KeyBuilder::key`] for a builder ignoring `ignore`, without building one (the request
    /// path borrows the set from the live config).
    pub fn key_ignoring(ignore: &FieldSet, input: &KeyInput<'_>) -> CacheKey {
        key_with(KEY_CONTEXT, ignore, None, input)
    }

    /// [`KeyBuilder::key_ignoring`], and the request's key under scope `also` (its v1 key,
    /// [`Scope::v1`]) for about the cost of one: the body is made canonical once.
    pub fn keys_ignoring(
        ignore: &FieldSet,
        input: &KeyInput<'_>,
        also: Option<Scope>,
    ) -> (CacheKey, Option<CacheKey>) {
        keys_with(KEY_CONTEXT, ignore, None, input, also)
    }

    /// [`KeyBuilder::portable_key`] under scope `scope` instead of the request's own.
    pub fn portable_key_in(ignore: &FieldSet, input: &KeyInput<'_>, scope: Scope) -> CacheKey {
        Self::portable_key(ignore, &KeyInput { scope, ..*input })
    }

    /// The key of the request's portable form ([`super::portable`]): the same layout, its strings
    /// rewritten, under its own derive-key context (`"relay portable key v1"`), so it can never
    /// equal an exact key. Costs one more parse, plus the rewrites.
    pub fn portable_key(ignore: &FieldSet, input: &KeyInput<'_>) -> CacheKey {
        let portable = super::portable::Portable::of(input.body);
        let rewrite = move |s: &str| portable.rewrite(s);
        key_with(PORTABLE_CONTEXT, ignore, Some(&rewrite), input)
    }
}

/// BLAKE3 derive-key context for the keys of portable forms.
const PORTABLE_CONTEXT: &str = "relay portable key v1";

fn key_with(
    context: &str,
    ignore: &FieldSet,
    text: Option<&super::canonical::Rewrite>,
    input: &KeyInput<'_>,
) -> CacheKey {
    keys_with(context, ignore, text, input, None).0
}

/// The key of `input`, and with `also` its key under that other scope: one canonical JSON for both.
fn keys_with(
    context: &str,
    ignore: &FieldSet,
    text: Option<&super::canonical::Rewrite>,
    input: &KeyInput<'_>,
    also: Option<Scope>,
) -> (CacheKey, Option<CacheKey>) {
    let json = canonical_json(ignore, text, input.body);
    let key = |scope: Scope| {
        let mut h = blake3::Hasher::new_derive_key(context);
        field(&mut h, input.provider.as_bytes());
        if input.method.bytes().any(|b| b.is_ascii_lowercase()) {
            field(&mut h, input.method.to_ascii_uppercase().as_bytes());
        } else {
            field(&mut h, input.method.as_bytes());
        }
        field(&mut h, input.path_and_query.as_bytes());
        match scope {
            Scope::Key(hash) => {
                let mut scope = [0u8; 33];
                scope[0] = b'k';
                scope[1..].copy_from_slice(&hash);
                field(&mut h, &scope);
            }
            Scope::Global => field(&mut h, b"g"),
        }
        match input.namespace {
            None => field(&mut h, b"-"),
            Some(ns) => tagged_field(&mut h, b'n', ns.as_bytes()),
        }
        match &json {
            Some(json) => tagged_field(&mut h, b'j', json),
            None => tagged_field(&mut h, b'r', input.body),
        }
        CacheKey(*h.finalize().as_bytes())
    };
    (key(input.scope), also.map(key))
}

/// Keys of recently seen requests, by a digest of their raw bytes: a request sent again byte for
/// byte (what SDKs do for a repeated call) gets its key without the JSON parse and re-serialization
/// [`KeyBuilder::key`] costs. The digest covers every input of the key and the ignored fields, so
/// it can only return the key [`KeyBuilder::key_ignoring`] would compute. Bounded: 16 shards of
/// 1,024 digests (under 2 MiB), a full shard starts over.
pub struct KeyMemo {
    keys: super::memo::Memo<(CacheKey, Option<CacheKey>)>,
}

impl Default for KeyMemo {
    fn default() -> KeyMemo {
        // Every key costs 1: a shard holds 1,024.
        KeyMemo {
            keys: super::memo::Memo::new(1024),
        }
    }
}

impl KeyMemo {
    /// [`KeyBuilder::key_ignoring`], remembered by the raw request.
    pub fn key(&self, ignore: &FieldSet, input: &KeyInput<'_>) -> CacheKey {
        self.keys(ignore, input, None).0
    }

    /// [`KeyBuilder::keys_ignoring`], remembered by the raw request.
    pub fn keys(
        &self,
        ignore: &FieldSet,
        input: &KeyInput<'_>,
        also: Option<Scope>,
    ) -> (CacheKey, Option<CacheKey>) {
        self.keys.get_or_make(
            raw_digest(ignore, input, also),
            |_| true,
            || (KeyBuilder::keys_ignoring(ignore, input, also), 1),
        )
    }
}

/// BLAKE3 derive-key context of [`raw_digest`] (in memory only, never stored).
const RAW_CONTEXT: &str = "relay raw request v1";

/// A digest of everything the key of `input` depends on, as raw bytes (length-prefixed fields).
fn raw_digest(ignore: &FieldSet, input: &KeyInput<'_>, also: Option<Scope>) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(RAW_CONTEXT);
    field(&mut h, input.provider.as_bytes());
    field(&mut h, input.method.as_bytes());
    field(&mut h, input.path_and_query.as_bytes());
    for scope in [Some(input.scope), also] {
        match scope {
            Some(Scope::Key(hash)) => tagged_field(&mut h, b'k', &hash),
            Some(Scope::Global) => field(&mut h, b"g"),
            None => field(&mut h, b"-"),
        }
    }
    match input.namespace {
        None => field(&mut h, b"-"),
        Some(ns) => tagged_field(&mut h, b'n', ns.as_bytes()),
    }
    field(&mut h, ignore.digest());
    field(&mut h, input.body);
    *h.finalize().as_bytes()
}

impl Default for KeyBuilder {
    /// Ignores [`KeyBuilder::DEFAULT_IGNORED`].
    fn default() -> KeyBuilder {
        KeyBuilder::new(FieldSet::parse(&Self::DEFAULT_IGNORED).expect("valid paths"))
    }
}

fn field(h: &mut blake3::Hasher, bytes: &[u8]) {
    h.update(&(bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

/// `field(h, [tag] + bytes)`, without copying `bytes`.
fn tagged_field(h: &mut blake3::Hasher, tag: u8, bytes: &[u8]) {
    h.update(&(bytes.len() as u64 + 1).to_le_bytes());
    h.update(&[tag]);
    h.update(bytes);
}

#[cfg(test)]
mod tests {

    use super::*;
    use http::{HeaderMap, HeaderValue};

    fn input(body: &[u8]) -> KeyInput<'_> {
        KeyInput {
            provider: "openai",
            method: "POST",
            path_and_query: "/v1/chat/completions",
            body,
            scope: Scope::Global,
            namespace: None,
        }
    }

    fn key(body: &str) -> CacheKey {
        KeyBuilder::default().key(&input(body.as_bytes()))
    }

    #[test]
    fn key_order_and_whitespace_do_not_matter() {
        let a = key(r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"n":1}"#);
        let b = key(
            "{\n  \"n\": 1,\n  \"messages\": [ { \"content\": \"hi\", \"role\": \"user\" } ],\n  \"model\": \"gpt-4o\"\n}",
        );
        assert_eq!(a, b);
    }

    #[test]
    fn nested_key_order_is_sorted_but_array_order_is_kept() {
        assert_eq!(key(r#"{"a":{"x":1,"y":2}}"#), key(r#"{"a":{"y":2,"x":1}}"#));
        assert_ne!(key(r#"{"a":[1,2]}"#), key(r#"{"a":[2,1]}"#));
    }

    #[test]
    fn values_change_the_key() {
        assert_ne!(
            key(r#"{"model":"gpt-4o"}"#),
            key(r#"{"model":"gpt-4o-mini"}"#)
        );
        assert_ne!(key(r#"{"stream":true}"#), key(r#"{"stream":false}"#));
        assert_ne!(key(r#"{"n":1}"#), key(r#"{"n":"1"}"#));
    }

    #[test]
    fn ignored_fields_are_top_level_only_and_configurable() {
        let base = key(r#"{"model":"m"}"#);
        assert_eq!(base, key(r#"{"model":"m","user":"alice"}"#));
        assert_eq!(base, key(r#"{"metadata":{"trace":"x"},"model":"m"}"#));
        // Nested `user` is content, not a top-level field.
        assert_ne!(
            key(r#"{"model":"m","x":{"user":"a"}}"#),
            key(r#"{"model":"m","x":{"user":"b"}}"#)
        );
        let none_ignored = KeyBuilder::new(FieldSet::default());
        assert_ne!(
            none_ignored.key(&input(br#"{"model":"m","user":"a"}"#)),
            none_ignored.key(&input(br#"{"model":"m","user":"b"}"#))
        );
        let temp = KeyBuilder::new(FieldSet::parse(&["temperature"]).unwrap());
        assert_eq!(
            temp.key(&input(br#"{"model":"m","temperature":0.1}"#)),
            temp.key(&input(br#"{"model":"m"}"#))
        );
    }

    #[test]
    fn nested_paths_leave_out_only_what_they_name() {
        let b = KeyBuilder::new(FieldSet::parse(&["input[*].id", "metadata.user_id"]).unwrap());
        let k = |body: &str| b.key(&input(body.as_bytes()));
        let run1 = r#"{"input":[{"id":"msg_1","type":"message","content":"hi"},{"id":"fc_9","type":"function_call"}],"metadata":{"user_id":"s1","tag":"a"}}"#;
        let run2 = r#"{"metadata":{"tag":"a","user_id":"s2"},"input":[{"type":"message","content":"hi","id":"msg_2"},{"type":"function_call","id":"fc_3"}]}"#;
        assert_eq!(k(run1), k(run2), "per-run ids left out");
        // What the paths do not name still counts.
        assert_ne!(
            k(r#"{"input":[{"id":"a","content":"hi"}]}"#),
            k(r#"{"input":[{"id":"a","content":"ho"}]}"#)
        );
        assert_ne!(
            k(r#"{"metadata":{"user_id":"s","tag":"a"}}"#),
            k(r#"{"metadata":{"user_id":"s","tag":"b"}}"#)
        );
        // An item reference is nothing but its id: two references never merge.
        assert_ne!(
            k(r#"{"input":[{"type":"item_reference","id":"msg_1"}]}"#),
            k(r#"{"input":[{"type":"item_reference","id":"msg_2"}]}"#)
        );
        // The same id at the top level is not `input[*].id`.
        assert_ne!(k(r#"{"id":"a"}"#), k(r#"{"id":"b"}"#));
    }

    #[test]
    fn scope_namespace_and_request_line_change_the_key() {
        let b = KeyBuilder::default();
        let body = br#"{"model":"m"}"#;
        let base = b.key(&input(body));
        let alice = KeyInput {
            scope: key_scope("sk-alice"),
            ..input(body)
        };
        let bob = KeyInput {
            scope: key_scope("sk-bob"),
            ..input(body)
        };
        assert_ne!(b.key(&alice), b.key(&bob));
        assert_ne!(b.key(&alice), base);
        let ns = KeyInput {
            namespace: Some("suite-a"),
            ..input(body)
        };
        let ns2 = KeyInput {
            namespace: Some("suite-b"),
            ..input(body)
        };
        let empty_ns = KeyInput {
            namespace: Some(""),
            ..input(body)
        };
        assert_ne!(b.key(&ns), base);
        assert_ne!(b.key(&ns), b.key(&ns2));
        assert_ne!(b.key(&empty_ns), base);
        let other_provider = KeyInput {
            provider: "azure",
            ..input(body)
        };
        let other_path = KeyInput {
            path_and_query: "/v1/chat/completions?x=1",
            ..input(body)
        };
        let lower_method = KeyInput {
            method: "post",
            ..input(body)
        };
        assert_ne!(b.key(&other_provider), base);
        assert_ne!(b.key(&other_path), base);
        assert_eq!(b.key(&lower_method), base);
    }

    #[test]
    fn non_json_bodies_are_hashed_raw() {
        assert_ne!(key("not json"), key("not  json"));
        assert_eq!(key("not json"), key("not json"));
        // Truncated JSON is not JSON: hashed raw, so whitespace counts.
        assert_ne!(key(r#"{"a":1"#), key(r#"{ "a":1"#));
        // A raw body that happens to equal a canonical form still differs from the JSON one.
        assert_ne!(key(""), key("{}"));
        assert_eq!(key("{}"), key(" { } "));
    }

    #[test]
    fn the_key_is_the_documented_layout() {
        // Built here from the module docs, byte by byte: a refactor of `key` cannot move a key.
        let mut material = Vec::new();
        let scope = key_scope("sk-a");
        let Scope::Key(scope_hash) = scope else {
            unreachable!()
        };
        for f in [
            &b"openai"[..],
            b"POST",
            b"/v1/chat/completions?x=1",
            &[&b"k"[..], &scope_hash].concat(),
            b"nteam",
            br#"j{"a":[2,1],"b":{"c":1,"d":2}}"#,
        ] {
            material.extend_from_slice(&(f.len() as u64).to_le_bytes());
            material.extend_from_slice(f);
        }
        let expected = CacheKey::from_bytes(blake3::derive_key(KEY_CONTEXT, &material));
        let got = KeyBuilder::default().key(&KeyInput {
            provider: "openai",
            method: "post",
            path_and_query: "/v1/chat/completions?x=1",
            body: br#" {"b": {"d":2, "c":1}, "user":"u1", "a":[2,1]} "#,
            scope,
            namespace: Some("team"),
        });
        assert_eq!(got, expected);
    }

    #[test]
    fn the_memo_returns_the_computed_key() {
        let memo = KeyMemo::default();
        let ignore = FieldSet::parse(&["user"]).unwrap();
        let none = FieldSet::default();
        let bodies = [
            &br#"{"b":1,"a":2,"user":"x"}"#[..],
            br#"{"a":2, "b":1}"#,
            br#"{"a":2,"b":1,"user":"y"}"#,
            b"not json",
        ];
        for _ in 0..2 {
            for body in bodies {
                for scope in [Scope::Global, key_scope("k1")] {
                    for ns in [None, Some("team")] {
                        for fields in [&ignore, &none] {
                            let i = KeyInput {
                                scope,
                                namespace: ns,
                                ..input(body)
                            };
                            assert_eq!(
                                memo.key(fields, &i),
                                KeyBuilder::key_ignoring(fields, &i),
                                "{:?} {scope:?} {ns:?} {fields:?}",
                                String::from_utf8_lossy(body)
                            );
                        }
                    }
                }
            }
        }
        // The ignored fields are part of what is remembered: the same bytes under another list are
        // another key.
        let i = input(br#"{"a":2,"user":"x"}"#);
        assert_ne!(memo.key(&ignore, &i), memo.key(&none, &i));
    }

    #[test]
    fn fields_cannot_run_together() {
        let b = KeyBuilder::default();
        let one = KeyInput {
            provider: "ab",
            method: "C",
            ..input(b"")
        };
        let two = KeyInput {
            provider: "a",
            method: "BC",
            ..input(b"")
        };
        assert_ne!(b.key(&one), b.key(&two));
    }

    #[test]
    fn hex_short_and_parse() {
        let k = key("{}");
        let hex = k.hex();
        assert_eq!(hex.len(), 64);
        assert!(hex
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_eq!(k.short(), hex[..12]);
        assert_eq!(CacheKey::from_hex(&hex), Ok(k));
        assert_eq!(hex.to_uppercase().parse::<CacheKey>(), Ok(k));
        assert_eq!(k.to_string(), hex);
        assert_eq!(
            CacheKey::from_hex(&hex[..10]),
            Err(KeyParseError::NotFull { len: 10 })
        );
        assert_eq!(
            CacheKey::from_hex(&format!("{hex}0")),
            Err(KeyParseError::TooLong { len: 65 })
        );
        assert_eq!(KeyPrefix::parse("  "), Err(KeyParseError::Empty));
        assert_eq!(
            KeyPrefix::parse("12g"),
            Err(KeyParseError::NotHex { ch: 'g' })
        );
    }

    #[test]
    fn prefixes_match_and_bound_ranges() {
        let k = CacheKey::from_bytes([0xab; 32]);
        for p in ["a", "ab", "aba", "ABAB", &k.hex()] {
            let prefix = KeyPrefix::parse(p).unwrap();
            assert!(prefix.matches(&k), "{p}");
            let (lo, hi) = prefix.range();
            assert!(lo <= k && k <= hi, "{p}");
        }
        for p in ["b", "abb", "aa"] {
            assert!(!KeyPrefix::parse(p).unwrap().matches(&k), "{p}");
        }
        let (lo, hi) = KeyPrefix::parse("abc").unwrap().range();
        assert_eq!(&lo.hex()[..4], "abc0");
        assert_eq!(&hi.hex()[..4], "abcf");
        assert!(lo.hex()[3..].chars().all(|c| c == '0'));
        assert!(hi.hex()[3..].chars().all(|c| c == 'f'));
        assert_eq!(KeyPrefix::parse("ABc").unwrap().as_hex(), "abc");
        assert_eq!(KeyPrefix::parse(&k.hex()).unwrap().full(), Some(k));
    }

    /// The scope of a caller presenting `key`.
    fn key_scope(key: &str) -> Scope {
        Scope::of(&crate::caller::Identity::of(None, Some(key), "openai", &[]))
    }

    fn scope_of(h: &HeaderMap) -> Scope {
        let presented = crate::wire::headers::presented_key(h);
        Scope::of(&crate::caller::Identity::of(
            None,
            presented.as_deref(),
            "openai",
            &[],
        ))
    }

    #[test]
    fn scope_from_headers() {
        let mut h = HeaderMap::new();
        let keyless = scope_of(&h);
        h.insert("authorization", HeaderValue::from_static("Bearer sk-one"));
        let bearer = scope_of(&h);
        assert_eq!(bearer, key_scope("sk-one"));
        assert_ne!(bearer, keyless);
        h.insert(
            "authorization",
            HeaderValue::from_static("bearer   sk-one "),
        );
        assert_eq!(scope_of(&h), bearer);
        // Authorization wins over x-api-key.
        h.insert("x-api-key", HeaderValue::from_static("sk-two"));
        assert_eq!(scope_of(&h), bearer);
        h.remove("authorization");
        assert_eq!(scope_of(&h), key_scope("sk-two"));
        // An empty bearer falls through to x-api-key, and to the provider's own key without one.
        h.insert("authorization", HeaderValue::from_static("Bearer "));
        assert_eq!(scope_of(&h), key_scope("sk-two"));
        h.remove("x-api-key");
        assert_eq!(scope_of(&h), keyless);
        // Another scheme still isolates callers.
        h.insert("authorization", HeaderValue::from_static("Basic abc"));
        assert_ne!(scope_of(&h), keyless);
        // The raw key never shows up in the scope.
        let Scope::Key(hash) = key_scope("sk-one") else {
            panic!("expected a key scope")
        };
        assert!(!hash.windows(6).any(|w| w == b"sk-one"));
        assert!(!format!("{:?}", key_scope("sk-one")).contains("sk-one"));
    }

    #[test]
    fn v1_scopes_are_what_relay_stored_before_one_identity() {
        use crate::caller::Identity;
        let v1 = |key: &str| Scope::Key(blake3::derive_key("relay cache scope v1", key.as_bytes()));
        let key = Identity::of(None, Some("sk-a"), "openai", &[]);
        assert_eq!(Scope::v1(&key, Some("sk-a")), v1("sk-a"));
        assert_ne!(Scope::v1(&key, Some("sk-a")), Scope::of(&key));
        let relay_key = Identity::of(Some("ci"), Some("relay-abc"), "openai", &[]);
        assert_eq!(Scope::v1(&relay_key, Some("relay-abc")), v1("relay key ci"));
        // Callers presenting no key were one anonymous scope of zeros.
        let own = Identity::of(None, None, "openai", &[]);
        assert_eq!(Scope::v1(&own, None), Scope::Key([0; 32]));
        assert_ne!(Scope::of(&own), Scope::Key([0; 32]));
    }
}
