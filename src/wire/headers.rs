//! The header names relay reads and writes on every request, as constants: a `&str` name is parsed
//! and checked each time it is used (`HeaderName::from_static` is `const`, so here it runs once, at
//! compile time).

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

/// Request: `skip|refresh|only`; response: `HIT|MISS|BYPASS|REFRESH`.
pub const X_RELAY_CACHE: HeaderName = HeaderName::from_static("x-relay-cache");
pub const X_RELAY_CACHE_TTL: HeaderName = HeaderName::from_static("x-relay-cache-ttl");
pub const X_RELAY_CACHE_NAMESPACE: HeaderName = HeaderName::from_static("x-relay-cache-namespace");
pub const X_RELAY_CACHE_KEY: HeaderName = HeaderName::from_static("x-relay-cache-key");
/// Response: how a hit matched its recording, `exact|normalized|portable`.
pub const X_RELAY_CACHE_MATCH: HeaderName = HeaderName::from_static("x-relay-cache-match");
/// The original relay's hit marker.
pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_RELAY_ERROR: HeaderName = HeaderName::from_static("x-relay-error");
pub const X_SHOULD_RETRY: HeaderName = HeaderName::from_static("x-should-retry");
pub const X_RELAY_BUDGET_RESET: HeaderName = HeaderName::from_static("x-relay-budget-reset");
pub const X_RELAY_COST_USD: HeaderName = HeaderName::from_static("x-relay-cost-usd");
pub const X_RELAY_SAVED_USD: HeaderName = HeaderName::from_static("x-relay-saved-usd");
pub const X_RELAY_TOKENS: HeaderName = HeaderName::from_static("x-relay-tokens");
/// `true` on an answer whose model has no price (its cost is $0 for want of one).
pub const X_RELAY_UNPRICED: HeaderName = HeaderName::from_static("x-relay-unpriced");
pub const X_RATELIMIT_LIMIT_REQUESTS: HeaderName =
    HeaderName::from_static("x-ratelimit-limit-requests");
pub const X_RATELIMIT_RESET_REQUESTS: HeaderName =
    HeaderName::from_static("x-ratelimit-reset-requests");
pub const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
pub const ANTHROPIC_VERSION: HeaderName = HeaderName::from_static("anthropic-version");

/// The `x-ratelimit-*-requests` headers: the tightest request limit the request passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateHeaders {
    /// The bucket's capacity (burst).
    pub limit: u64,
    /// Requests still allowed at once.
    pub remaining: u64,
    /// Until the bucket is full again.
    pub reset: Duration,
}

impl RateHeaders {
    /// Sets `x-ratelimit-limit-requests`, `x-ratelimit-remaining-requests` and
    /// `x-ratelimit-reset-requests` (a duration the way OpenAI writes it: `1s`, `250ms`, `6m0s`),
    /// replacing any the upstream sent.
    pub fn apply(&self, h: &mut HeaderMap) {
        h.insert(X_RATELIMIT_LIMIT_REQUESTS, HeaderValue::from(self.limit));
        h.insert(
            "x-ratelimit-remaining-requests",
            HeaderValue::from(self.remaining),
        );
        if let Ok(v) = HeaderValue::from_str(&format_reset(self.reset)) {
            h.insert(X_RATELIMIT_RESET_REQUESTS, v);
        }
    }
}

/// `250ms`, `1s`, `1.5s`, `6m0s`, `1h2m3s`.
pub fn format_reset(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (h, m, s) = (ms / 3_600_000, ms / 60_000 % 60, ms % 60_000);
    let secs = if s % 1000 == 0 {
        format!("{}s", s / 1000)
    } else {
        let text = format!("{:.3}", s as f64 / 1000.0);
        format!("{}s", text.trim_end_matches('0'))
    };
    match (h, m) {
        (0, 0) => secs,
        (0, m) => format!("{m}m{secs}"),
        (h, m) => format!("{h}h{m}m{secs}"),
    }
}

/// The API key a request presents: `Authorization: Bearer <key>` (OpenAI style; any other
/// `authorization` value is the key as a whole), else `x-api-key` (Anthropic style): where
/// [`crate::caller::Identity`] starts, and what relay key authentication checks.
pub fn presented_key(headers: &HeaderMap) -> Option<String> {
    let header = |name: &str| {
        headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    if let Some(auth) = header("authorization") {
        let token = match auth.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
            // `Bearer` with nothing after it (the value is trimmed): no key.
            None if auth.eq_ignore_ascii_case("bearer") => "",
            _ => auth.as_str(),
        };
        if !token.is_empty() {
            return Some(token.to_string());
        }
    }
    header("x-api-key")
}

/// Whether a request comes from an Anthropic client: it sends `anthropic-version` (every
/// Anthropic SDK, Claude Code) or the key in `x-api-key` (Anthropic's key header).
pub fn anthropic_client(headers: &http::HeaderMap) -> bool {
    headers.contains_key(ANTHROPIC_VERSION) || headers.contains_key(X_API_KEY)
}
