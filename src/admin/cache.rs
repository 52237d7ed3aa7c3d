//! The cache's admin API: what `relay cache` talks to while `relay serve` holds the store.
//!
//! [`handle`] is a plain function from a request to a response over an `Arc<dyn Store>`; the server
//! mounts it under [`PREFIX`] for loopback peers only. The CLI also calls it in-process when it opens
//! the store itself, so both paths run the same code and print the same output.
//!
//! | request | answer |
//! |---|---|
//! | `GET /relay/cache/entries?model=&limit=` | `[EntrySummary]`, newest first |
//! | `GET /relay/cache/entries/<hex prefix>` | [`EntryDetail`]; 404 when no entry matches, 409 when several do |
//! | `DELETE /relay/cache/entries?model=` | `{"removed": n}` (every entry without `model`) |
//! | `GET /relay/cache/stats` | [`StatsView`] |
//! | `GET /relay/cache/export?model=` | JSONL, one [`Entry::to_jsonl_line`] per line (`application/x-ndjson`) |
//! | `POST /relay/cache/import` (JSONL body) | `{"imported": n}` |
//!
//! Errors are `{"error": "..."}` with a fitting status (400 bad query or body, 404 unknown path or
//! key, 405 wrong method, 409 ambiguous prefix, 413 entry too large, 503 store closed or busy, 500
//! backend failure). Unknown query parameters are a 400, so a typo such as `?modle=x` can never turn
//! a `DELETE` into "remove everything".
//!
//! Import is all-or-nothing for bad input: every line is parsed before anything is stored, and a
//! line that does not parse is a 400 naming its line number, with nothing imported. Imported
//! entries keep their recorded expiry and hit count; blank lines are skipped.

use std::fmt::Display;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::admin::reply::{json, response};

use crate::cache::entry::{CachedBody, Entry, EntryMeta};
use crate::cache::key::CacheKey;
use crate::cache::store::{ListFilter, Store, StoreError};

/// Where the server mounts the admin API. Every path [`handle`] serves starts with it.
pub const PREFIX: &str = "/relay/cache";

/// Content type of `GET /relay/cache/export` and of an import body.
pub const JSONL_CONTENT_TYPE: &str = "application/x-ndjson";

/// Puts between two flushes during an import, so a large file never fills the write queue.
const IMPORT_BATCH: usize = 256;
/// Times an import put is retried after a full write queue (each retry waits for a flush).
const QUEUE_FULL_RETRIES: usize = 20;

/// One row of `GET /relay/cache/entries`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntrySummary {
    /// The full key, 64 hex characters.
    pub key: String,
    /// Its first [`CacheKey::SHORT_LEN`] characters.
    pub short: String,
    pub provider: String,
    pub model: Option<String>,
    pub method: String,
    pub path: String,
    pub status: u16,
    /// Unix milliseconds.
    pub created_ms: u64,
    /// Unix milliseconds; `None` = never.
    pub expires_ms: Option<u64>,
    /// Accounted bytes ([`Entry::size`]).
    pub size: u64,
    pub hits: u64,
    /// The client that sent the request (`claude-code 2.1.197`), when recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// Its agent session, when recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// The start of its last user message, when recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
}

impl EntrySummary {
    fn new(key: &CacheKey, meta: &EntryMeta, size: u64) -> EntrySummary {
        EntrySummary {
            key: key.hex(),
            short: key.short(),
            provider: meta.provider.clone(),
            model: meta.model.clone(),
            method: meta.method.clone(),
            path: crate::redact::query(&meta.path).into_owned(),
            status: meta.status,
            created_ms: meta.created_ms,
            expires_ms: meta.expires_ms,
            size,
            hits: meta.hits,
            client: meta.recorded.client.clone(),
            session: meta.recorded.session.clone(),
            prompt: meta.recorded.prompt.clone(),
        }
    }
}

/// `GET /relay/cache/entries/<prefix>`: one entry, bodies included, for people to read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EntryDetail {
    #[serde(flatten)]
    pub summary: EntrySummary,
    /// Response headers as recorded, in order.
    pub headers: Vec<(String, String)>,
    /// The request body: its JSON value when it parses, else the text (invalid UTF-8 replaced).
    pub request: Value,
    pub response: ResponseView,
}

/// A recorded response body, for display.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ResponseView {
    /// A complete body: its JSON value when it parses, else the text.
    Json { body: Value },
    /// A stream, event by event.
    Sse { events: Vec<EventView> },
}

/// One recorded server-sent event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventView {
    /// Milliseconds after the previous event.
    pub delay_ms: u32,
    /// The event as sent (`data: ...\n\n`), invalid UTF-8 replaced.
    pub data: String,
}

/// `GET /relay/cache/stats`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsView {
    pub entries: u64,
    pub bytes: u64,
    pub oldest_ms: Option<u64>,
    pub newest_ms: Option<u64>,
    pub hits: u64,
    pub write_errors: u64,
    /// `redb` or `redis`.
    pub backend: String,
}

/// `DELETE /relay/cache/entries`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    pub removed: u64,
}

/// `POST /relay/cache/import`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Imported {
    pub imported: u64,
}

/// Every error answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
    /// The offending line of an import body (1-based), when the error is about one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
}

/// Answers one admin request (paths in the module docs). Never fails: errors are JSON answers.
pub async fn handle<B>(store: &Arc<dyn Store>, req: Request<B>) -> Response<Bytes>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Display,
{
    let (parts, body) = req.into_parts();
    let result = route(
        store,
        &parts.method,
        parts.uri.path(),
        parts.uri.query(),
        body,
    )
    .await;
    result.unwrap_or_else(Failure::into_response)
}

async fn route<B>(
    store: &Arc<dyn Store>,
    method: &Method,
    path: &str,
    query: Option<&str>,
    body: B,
) -> Result<Response<Bytes>, Failure>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Display,
{
    let rest = path.strip_prefix(PREFIX).ok_or_else(|| not_found(path))?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    match rest {
        "/entries" => match *method {
            Method::GET => {
                let q = Query::parse(query, &["model", "session", "limit"])?;
                let limit = match q.get("limit") {
                    None => None,
                    Some(s) => Some(s.parse::<usize>().map_err(|_| {
                        Failure::new(
                            StatusCode::BAD_REQUEST,
                            format!("limit must be a non-negative integer, got {s:?}"),
                        )
                    })?),
                };
                let filter = ListFilter {
                    model: q.model()?,
                    session: q.get("session").map(str::to_owned),
                    limit,
                };
                let rows: Vec<EntrySummary> = store
                    .list(filter)
                    .await?
                    .iter()
                    .map(|(k, meta, size)| EntrySummary::new(k, meta, *size))
                    .collect();
                Ok(json(StatusCode::OK, &rows))
            }
            Method::DELETE => {
                let q = Query::parse(query, &["model"])?;
                let removed = store.clear(q.model()?).await?;
                Ok(json(StatusCode::OK, &Removed { removed }))
            }
            _ => Err(method_not_allowed(method, path, "GET, DELETE")),
        },
        "/stats" => {
            expect_method(method, "GET", path)?;
            Query::parse(query, &[])?;
            let s = store.stats().await?;
            let view = StatsView {
                entries: s.entries,
                bytes: s.bytes,
                oldest_ms: s.oldest_ms,
                newest_ms: s.newest_ms,
                hits: s.hits,
                write_errors: s.write_errors,
                backend: store.backend().to_owned(),
            };
            Ok(json(StatusCode::OK, &view))
        }
        "/export" => {
            expect_method(method, "GET", path)?;
            let q = Query::parse(query, &["model"])?;
            let body = export(store, q.model()?).await?;
            Ok(response(
                StatusCode::OK,
                JSONL_CONTENT_TYPE,
                Bytes::from(body),
            ))
        }
        "/import" => {
            expect_method(method, "POST", path)?;
            Query::parse(query, &[])?;
            let body = match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(e) => {
                    return Err(Failure::new(
                        StatusCode::BAD_REQUEST,
                        format!("reading the request body: {e}"),
                    ))
                }
            };
            let imported = import(store, &body).await?;
            Ok(json(StatusCode::OK, &Imported { imported }))
        }
        _ => match rest.strip_prefix("/entries/") {
            Some(prefix) if !prefix.contains('/') => {
                expect_method(method, "GET", path)?;
                Query::parse(query, &[])?;
                show(store, prefix).await
            }
            _ => Err(not_found(path)),
        },
    }
}

async fn show(store: &Arc<dyn Store>, prefix: &str) -> Result<Response<Bytes>, Failure> {
    let Some((key, entry)) = store.find_prefix(prefix).await? else {
        return Err(Failure::new(
            StatusCode::NOT_FOUND,
            format!("no cache entry has a key starting with {prefix}"),
        ));
    };
    let response = match &entry.response {
        CachedBody::Json(body) => ResponseView::Json {
            body: readable(body),
        },
        CachedBody::Sse(events) => ResponseView::Sse {
            events: events
                .iter()
                .map(|e| EventView {
                    delay_ms: e.delay_ms,
                    data: String::from_utf8_lossy(&e.data).into_owned(),
                })
                .collect(),
        },
    };
    let detail = EntryDetail {
        summary: EntrySummary::new(&key, &entry.meta, entry.size()),
        headers: entry.meta.headers.clone(),
        request: readable(&entry.request),
        response,
    };
    Ok(json(StatusCode::OK, &detail))
}

/// A body as a person wants to see it: its JSON value when it is JSON, else its text.
fn readable(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

/// Every unexpired entry (of `model`), newest first, one export line each.
async fn export(store: &Arc<dyn Store>, model: Option<String>) -> Result<String, StoreError> {
    let rows = store
        .list(ListFilter {
            model,
            ..Default::default()
        })
        .await?;
    let mut out = String::new();
    for (key, _, _) in rows {
        // Gone since the listing (expired, evicted, removed): not exported.
        if let Some((key, entry)) = store.find_prefix(&key.hex()).await? {
            out.push_str(&entry.to_jsonl_line(&key));
            out.push('\n');
        }
    }
    Ok(out)
}

/// Parses every line, then stores the entries; returns how many were stored.
async fn import(store: &Arc<dyn Store>, body: &[u8]) -> Result<u64, Failure> {
    let mut entries = Vec::new();
    for (i, raw) in body.split(|b| *b == b'\n').enumerate() {
        let line_no = i + 1;
        let bad = |reason: String| {
            let mut f = Failure::new(
                StatusCode::BAD_REQUEST,
                format!("line {line_no}: {reason}; nothing was imported"),
            );
            f.error.line = Some(line_no);
            f
        };
        let Ok(line) = std::str::from_utf8(raw) else {
            return Err(bad("not UTF-8".to_owned()));
        };
        if line.trim().is_empty() {
            continue;
        }
        entries.push(Entry::from_jsonl_line(line).map_err(|e| bad(e.to_string()))?);
    }
    let mut imported = 0u64;
    for (n, (key, entry)) in entries.into_iter().enumerate() {
        if n > 0 && n % IMPORT_BATCH == 0 {
            store.flush().await?;
        }
        put_waiting(store, key, entry).await.map_err(|e| {
            let mut f = Failure::from(e);
            f.error.error = format!(
                "{}; {imported} entries before it were imported",
                f.error.error
            );
            f
        })?;
        imported += 1;
    }
    store.flush().await?;
    Ok(imported)
}

/// [`Store::put`], waiting for the writer when its queue is full (the server may be busy).
async fn put_waiting(
    store: &Arc<dyn Store>,
    key: CacheKey,
    entry: Entry,
) -> Result<(), StoreError> {
    for _ in 0..QUEUE_FULL_RETRIES {
        match store.put(key, entry.clone()) {
            Err(StoreError::QueueFull) => store.flush().await?,
            other => return other,
        }
    }
    store.put(key, entry)
}

/// The query parameters of a request, checked against the names an endpoint takes.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: Option<&str>, allowed: &[&str]) -> Result<Query, Failure> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for part in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            let name = percent_decode(name).map_err(bad_query)?;
            let value = percent_decode(value).map_err(bad_query)?;
            if !allowed.contains(&name.as_str()) {
                let allowed = if allowed.is_empty() {
                    "none".to_owned()
                } else {
                    allowed.join(", ")
                };
                return Err(bad_query(format!(
                    "unknown query parameter {name:?} (this endpoint takes: {allowed})"
                )));
            }
            if pairs.iter().any(|(n, _)| *n == name) {
                return Err(bad_query(format!("query parameter {name:?} given twice")));
            }
            pairs.push((name, value));
        }
        Ok(Query(pairs))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `model` filter; an empty one is refused rather than read as "every model".
    fn model(&self) -> Result<Option<String>, Failure> {
        match self.get("model") {
            None => Ok(None),
            Some("") => Err(bad_query("model must not be empty".to_owned())),
            Some(m) => Ok(Some(m.to_owned())),
        }
    }
}

fn bad_query(reason: String) -> Failure {
    Failure::new(StatusCode::BAD_REQUEST, reason)
}

/// Decodes `application/x-www-form-urlencoded` text (`+` is a space).
fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = b
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("bad percent escape in {s:?}"))?;
                out.push(hex);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| format!("query text {s:?} is not UTF-8"))
}

/// Encodes a query value: every byte but the unreserved ones (`A-Z a-z 0-9 - . _ ~`) as `%XX`.
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An error answer on its way out.
struct Failure {
    status: StatusCode,
    error: ApiError,
    /// The `Allow` header of a 405.
    allow: Option<&'static str>,
}

impl Failure {
    fn new(status: StatusCode, error: String) -> Failure {
        Failure {
            status,
            error: ApiError { error, line: None },
            allow: None,
        }
    }

    fn into_response(self) -> Response<Bytes> {
        let mut resp = json(self.status, &self.error);
        if let Some(allow) = self.allow {
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        resp
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Failure {
        let status = match &e {
            StoreError::BadKey { .. } => StatusCode::BAD_REQUEST,
            StoreError::AmbiguousPrefix { .. } => StatusCode::CONFLICT,
            StoreError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            StoreError::Closed | StoreError::QueueFull | StoreError::Locked { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            StoreError::Io { .. } | StoreError::Corrupt { .. } | StoreError::Backend { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        Failure::new(status, e.to_string())
    }
}

fn not_found(path: &str) -> Failure {
    Failure::new(
        StatusCode::NOT_FOUND,
        format!(
            "no cache admin endpoint at {path} (try {PREFIX}/entries, {PREFIX}/entries/<key prefix>, \
             {PREFIX}/stats, {PREFIX}/export, {PREFIX}/import)"
        ),
    )
}

fn method_not_allowed(method: &Method, path: &str, allowed: &'static str) -> Failure {
    let mut f = Failure::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{path} does not take {method} (allowed: {allowed})"),
    );
    f.allow = Some(allowed);
    f
}

fn expect_method(method: &Method, want: &'static str, path: &str) -> Result<(), Failure> {
    if method.as_str() == want {
        Ok(())
    } else {
        Err(method_not_allowed(method, path, want))
    }
}

#[cfg(test)]
mod tests;
