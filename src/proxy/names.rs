//! The header names relay reads and writes on every request, as constants: a `&str` name is parsed
//! and checked each time it is used (`HeaderName::from_static` is `const`, so here it runs once, at
//! compile time).

use http::HeaderName;

/// Request: `skip|refresh|only`; response: `HIT|MISS|BYPASS|REFRESH`.
pub const X_RELAY_CACHE: HeaderName = HeaderName::from_static("x-relay-cache");
pub const X_RELAY_CACHE_TTL: HeaderName = HeaderName::from_static("x-relay-cache-ttl");
pub const X_RELAY_CACHE_NAMESPACE: HeaderName = HeaderName::from_static("x-relay-cache-namespace");
pub const X_RELAY_CACHE_KEY: HeaderName = HeaderName::from_static("x-relay-cache-key");
/// The original relay's hit marker.
pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_RELAY_ERROR: HeaderName = HeaderName::from_static("x-relay-error");
pub const X_SHOULD_RETRY: HeaderName = HeaderName::from_static("x-should-retry");
pub const X_RELAY_BUDGET_RESET: HeaderName = HeaderName::from_static("x-relay-budget-reset");
pub const X_RELAY_COST_USD: HeaderName = HeaderName::from_static("x-relay-cost-usd");
pub const X_RELAY_SAVED_USD: HeaderName = HeaderName::from_static("x-relay-saved-usd");
pub const X_RELAY_TOKENS: HeaderName = HeaderName::from_static("x-relay-tokens");
pub const X_RATELIMIT_LIMIT_REQUESTS: HeaderName =
    HeaderName::from_static("x-ratelimit-limit-requests");
pub const X_RATELIMIT_RESET_REQUESTS: HeaderName =
    HeaderName::from_static("x-ratelimit-reset-requests");
pub const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
