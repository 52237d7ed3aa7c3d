//! The one error type the edge reports: where it came from, its status, and how to render it in the
//! caller's own dialect (OpenAI or Anthropic JSON), so official SDKs raise their usual exceptions.
//!
//! Errors that the upstream itself returns (4xx/5xx with a body) are not `EdgeError`s: they are passed
//! through unchanged. Every relay-made error carries the `x-relay-error` header with its code, so a
//! caller can tell relay's errors from the provider's.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::wire::headers as names;
pub use crate::wire::Dialect;

/// The error type of bodies relay streams (hyper's `Box<dyn Error>`).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Which side caused an error (pingora's habit: errors know their source).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Client,
    Upstream,
}

/// An error relay answers itself. `Clone`: requests that share one upstream call (single flight)
/// each answer the first request's error, status and code as they are.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EdgeError {
    #[error("no route for {method} {path}{}", model.as_ref().map(|m| format!(" (model {m:?})")).unwrap_or_default())]
    NoRoute {
        method: String,
        path: String,
        model: Option<String>,
    },
    #[error("request body is over the {limit}-byte limit (server.max_body_bytes)")]
    BodyTooLarge { limit: u64 },
    #[error("request body is not valid JSON: {0}")]
    BadJson(String),
    #[error("could not read the request body: {0}")]
    ClientBody(String),
    #[error("upstream {provider} is unreachable: {detail}")]
    Unreachable { provider: String, detail: String },
    #[error("upstream {provider} did not respond within {}", humantime::format_duration(*timeout))]
    Timeout { provider: String, timeout: Duration },
    #[error("{}", offline_message(*reason, key, nearest.as_deref(), request_id))]
    OfflineMiss {
        reason: MissReason,
        key: String,
        /// The request's id, for `relay cache why` (empty when it has none to explain).
        request_id: String,
        /// The recording closest to the request, when there is one of the same endpoint.
        nearest: Option<Box<Nearest>>,
    },
    #[error("budget exceeded: key {key:?} has used its {period} budget {budget:?} (${} of ${}); it resets at {resets}", crate::wire::usd(*spent_micros), crate::wire::usd(*limit_micros))]
    BudgetExceeded {
        /// The key as booked (alias or hash prefix).
        key: String,
        /// The budget's name in `budgets:` (an alias or `*`).
        budget: String,
        /// `daily` or `monthly`.
        period: &'static str,
        limit_micros: u64,
        spent_micros: u64,
        /// RFC 3339 UTC.
        resets: String,
    },
    /// The key's requests in flight may use what is left of its budget (their reservations), and
    /// none settled within the wait.
    #[error("budget nearly used: key {key:?} has {in_flight} requests in flight that may use the ${} left of budget {budget:?}; retry when they finish", crate::wire::usd(*room_micros))]
    BudgetInFlight {
        key: String,
        budget: String,
        in_flight: u32,
        room_micros: u64,
    },
    /// A `ratelimit` rule refused the request (`on_limit: reject`, or the wait would pass
    /// `max_wait`).
    #[error("rate limit reached for rule {rule:?} ({}); retry after {} s", if *tokens { "tokens per minute" } else { "requests" }, retry_secs(*retry_after))]
    RateLimited {
        rule: String,
        /// The limit was on tokens per minute (else on requests).
        tokens: bool,
        retry_after: Duration,
        /// The `x-ratelimit-*-requests` headers of the refusing request limit.
        headers: Option<crate::wire::headers::RateHeaders>,
    },
    /// A browser request from a page of another site (see [`crate::proxy::filter`]).
    #[error("relay refuses browser requests from other sites ({what}); a page you visit must not spend your API key. To allow a web app, list its origin in server.allowed_origins")]
    CrossSite { what: String },
    /// A `text/plain` or form body: what any web page can send without asking, and no API client
    /// does.
    #[error("relay does not accept {content_type:?} bodies (any web page can send them); send JSON (application/json)")]
    FormBody { content_type: String },
    /// A path relay will not forward: `..` above the root, or a hidden slash.
    #[error("request path {path:?} is refused: {why}")]
    BadPath { path: String, why: &'static str },
    /// The request body stopped arriving for longer than `server.body_read_timeout`.
    #[error("the request body stopped arriving for {} (server.body_read_timeout)", humantime::format_duration(*timeout))]
    BodyTimeout { timeout: Duration },
    /// Request bodies held in memory have reached `server.max_buffered_bytes`, and no room came
    /// within the wait.
    #[error("relay is holding its limit of request bodies in memory (server.max_buffered_bytes); retry shortly")]
    BufferFull,
    /// The forward proxy was asked for a host that is not a provider by a caller that is not this
    /// machine: relay is no open proxy.
    #[error("relay proxies {host} (not a provider host) for loopback clients only")]
    ProxyForbidden { host: String },
    /// A forward-proxy request relay cannot serve (`CONNECT` without `host:port`, an `https://`
    /// URL in absolute form, a path that does not parse).
    #[error("{why}")]
    BadProxyRequest { code: &'static str, why: String },
    /// Relay could not make the certificate to intercept a provider host (its local CA).
    #[error("relay cannot make a certificate for {host}: {detail}")]
    LocalCa { host: String, detail: String },
    /// `auth.enabled` and the request presents no relay key, or one that is unknown, revoked,
    /// rotated or expired.
    #[error("{why}")]
    Unauthenticated { why: String },
    /// The relay key may not use this model (`relay keys create --models`).
    #[error("relay key {key:?} may not use model {model:?} (it may use {allowed})")]
    ModelNotAllowed {
        key: String,
        model: String,
        allowed: String,
    },
    /// The provider's circuit breaker is open: relay does not call it until the cooldown ends.
    #[error("upstream {provider} is failing and relay has paused requests to it (circuit open); retry after {} s", retry_secs(*retry_after))]
    CircuitOpen {
        provider: String,
        retry_after: Duration,
    },
}

/// Whole seconds, rounded up, at least 1 (`Retry-After`).
pub fn retry_secs(d: Duration) -> u64 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    s.max(1)
}

/// Why a request that may not go upstream found nothing in the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissReason {
    /// `relay serve --offline` / `cache.mode: offline`, no entry for the key.
    Offline,
    /// Offline, and the request is not one relay records.
    OfflineNotCacheable,
    /// The caller sent `x-relay-cache: only`.
    Only,
}

/// The recording closest to a request that missed: which one, and where the two differ.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Nearest {
    /// The recording's cache key (12 hex characters, as `relay cache ls` shows it).
    pub key: String,
    /// When it was recorded, RFC 3339 UTC.
    pub recorded: String,
    /// The first JSON paths where the request and the recording differ (`messages[2].content`).
    pub differs: Vec<String>,
    /// How many more paths differ.
    pub more: usize,
}

impl Nearest {
    /// `the nearest recording, 1a2b3c4d5e6f (recorded …), differs at a, b (and 3 more)`.
    pub fn describe(&self) -> String {
        let more = match self.more {
            0 => String::new(),
            n => format!(" (and {n} more)"),
        };
        if self.differs.is_empty() {
            return format!(
                "The nearest recording, {} (recorded {}), differs only in its request line.",
                self.key, self.recorded
            );
        }
        format!(
            "The nearest recording, {} (recorded {}), differs at {}{more}.",
            self.key,
            self.recorded,
            self.differs.join(", ")
        )
    }
}

fn offline_message(
    reason: MissReason,
    key: &str,
    nearest: Option<&Nearest>,
    request_id: &str,
) -> String {
    let mut near = nearest
        .map(|n| format!(" {}", n.describe()))
        .unwrap_or_default();
    if !request_id.is_empty() {
        near.push_str(&format!(
            " `relay cache why {request_id}` explains the miss."
        ));
    }
    match reason {
        MissReason::Offline => format!(
            "relay is offline and has no recording for this request (cache key {key}).{near} To record one, run relay without --offline (cache.mode: live or record) and send the same request once; or import a recording with `relay cache import FILE.jsonl`."
        ),
        MissReason::OfflineNotCacheable => "relay is offline and this request is not one it records (only POST requests with a JSON body to chat/completions, completions, responses, messages, embeddings and moderations, and GET models, are); run relay without --offline to send it upstream.".to_string(),
        MissReason::Only => format!(
            "x-relay-cache: only was set and the cache has no entry for this request (cache key {key}).{near}"
        ),
    }
}

impl EdgeError {
    pub fn status(&self) -> StatusCode {
        match self {
            EdgeError::NoRoute { .. } => StatusCode::NOT_FOUND,
            EdgeError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            EdgeError::BadJson(_) | EdgeError::ClientBody(_) => StatusCode::BAD_REQUEST,
            EdgeError::Unreachable { .. } => StatusCode::BAD_GATEWAY,
            EdgeError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            // Not 504 (what HTTP says for `only-if-cached`): the SDKs retry a 5xx, and Codex
            // retries every status but 400 whatever the headers say (measured on 0.171: 403, 404,
            // 409, 412, 422, 424 and 451 are each sent 6 times), so a miss would start a retry
            // storm. 400 with `x-should-retry: false` ends every client's run at once.
            EdgeError::OfflineMiss { .. } => StatusCode::BAD_REQUEST,
            EdgeError::BudgetExceeded { .. } => StatusCode::TOO_MANY_REQUESTS,
            EdgeError::BudgetInFlight { .. } => StatusCode::TOO_MANY_REQUESTS,
            EdgeError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            EdgeError::CircuitOpen { .. } | EdgeError::BufferFull => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            EdgeError::CrossSite { .. } => StatusCode::FORBIDDEN,
            EdgeError::FormBody { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            EdgeError::BadPath { .. } => StatusCode::BAD_REQUEST,
            EdgeError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            EdgeError::ProxyForbidden { .. } => StatusCode::FORBIDDEN,
            EdgeError::Unauthenticated { .. } => StatusCode::UNAUTHORIZED,
            EdgeError::ModelNotAllowed { .. } => StatusCode::FORBIDDEN,
            EdgeError::BadProxyRequest { .. } => StatusCode::BAD_REQUEST,
            EdgeError::LocalCa { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// Whether this error counts against the provider's circuit breaker: the upstream could not be
    /// reached or did not answer in time. A caller's mistake, a limit or an offline miss never does.
    pub fn counts_for_breaker(&self) -> bool {
        matches!(
            self,
            EdgeError::Unreachable { .. } | EdgeError::Timeout { .. }
        )
    }

    /// Whether the same request may succeed when sent again later (a caller's SDK may retry):
    /// upstream trouble, a rate limit, an open circuit, relay being busy. A budget refusal, an
    /// offline miss and every error in the request itself are not.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            EdgeError::Unreachable { .. }
                | EdgeError::Timeout { .. }
                | EdgeError::RateLimited { .. }
                | EdgeError::CircuitOpen { .. }
                | EdgeError::BufferFull
        )
    }

    pub fn source(&self) -> Source {
        match self {
            EdgeError::Unreachable { .. }
            | EdgeError::Timeout { .. }
            | EdgeError::OfflineMiss { .. }
            | EdgeError::CircuitOpen { .. } => Source::Upstream,
            _ => Source::Client,
        }
    }

    /// Stable machine-readable code (`x-relay-error`, OpenAI `error.code`).
    pub fn code(&self) -> &'static str {
        match self {
            EdgeError::NoRoute { .. } => "unknown_route",
            EdgeError::BodyTooLarge { .. } => "request_too_large",
            EdgeError::BadJson(_) => "invalid_json",
            EdgeError::ClientBody(_) => "bad_request_body",
            EdgeError::Unreachable { .. } => "upstream_unreachable",
            EdgeError::Timeout { .. } => "upstream_timeout",
            EdgeError::OfflineMiss { .. } => "relay_offline_miss",
            EdgeError::BudgetExceeded { .. } => "budget_exceeded",
            EdgeError::BudgetInFlight { .. } => "budget_in_flight",
            EdgeError::RateLimited { .. } => "rate_limit_exceeded",
            EdgeError::CircuitOpen { .. } => "circuit_open",
            EdgeError::CrossSite { .. } => "cross_site_request",
            EdgeError::FormBody { .. } => "unsupported_content_type",
            EdgeError::BadPath { .. } => "invalid_path",
            EdgeError::BodyTimeout { .. } => "request_body_timeout",
            EdgeError::BufferFull => "relay_busy",
            EdgeError::ProxyForbidden { .. } => "proxy_forbidden",
            // OpenAI's own code for a key it does not take.
            EdgeError::Unauthenticated { .. } => "invalid_api_key",
            EdgeError::ModelNotAllowed { .. } => "model_not_allowed",
            EdgeError::BadProxyRequest { code, .. } => code,
            EdgeError::LocalCa { .. } => "local_ca_unavailable",
        }
    }

    /// The `type` field in each dialect, matching what the provider itself uses for that status.
    fn error_type(&self, dialect: Dialect) -> &'static str {
        match (dialect, self) {
            (_, EdgeError::OfflineMiss { .. }) => "relay_offline_miss",
            (_, EdgeError::BudgetExceeded { .. }) => "budget_exceeded",
            (Dialect::OpenAi, EdgeError::BudgetInFlight { .. }) => "requests",
            (Dialect::Anthropic, EdgeError::BudgetInFlight { .. }) => "rate_limit_error",
            // OpenAI's own 429 bodies say which limit: `requests` or `tokens`.
            (Dialect::OpenAi, EdgeError::RateLimited { tokens: true, .. }) => "tokens",
            (Dialect::OpenAi, EdgeError::RateLimited { .. }) => "requests",
            (Dialect::Anthropic, EdgeError::RateLimited { .. }) => "rate_limit_error",
            (Dialect::OpenAi, EdgeError::CircuitOpen { .. } | EdgeError::BufferFull) => {
                "server_error"
            }
            (Dialect::Anthropic, EdgeError::CrossSite { .. }) => "permission_error",
            (Dialect::Anthropic, EdgeError::BufferFull) => "overloaded_error",
            (Dialect::Anthropic, EdgeError::CircuitOpen { .. }) => "api_error",
            (
                Dialect::OpenAi,
                EdgeError::Unreachable { .. }
                | EdgeError::Timeout { .. }
                | EdgeError::LocalCa { .. },
            ) => "server_error",
            (Dialect::Anthropic, EdgeError::ProxyForbidden { .. }) => "permission_error",
            (Dialect::Anthropic, EdgeError::Unauthenticated { .. }) => "authentication_error",
            (Dialect::Anthropic, EdgeError::ModelNotAllowed { .. }) => "permission_error",
            (Dialect::Anthropic, EdgeError::LocalCa { .. }) => "api_error",
            (Dialect::OpenAi, _) => "invalid_request_error",
            (Dialect::Anthropic, EdgeError::NoRoute { .. }) => "not_found_error",
            (Dialect::Anthropic, EdgeError::BodyTooLarge { .. }) => "request_too_large",
            (Dialect::Anthropic, EdgeError::Unreachable { .. }) => "api_error",
            (Dialect::Anthropic, EdgeError::Timeout { .. }) => "timeout_error",
            (Dialect::Anthropic, _) => "invalid_request_error",
        }
    }

    /// The JSON body in the caller's dialect.
    pub fn body(&self, dialect: Dialect) -> Bytes {
        let message = self.to_string();
        let mut value = match dialect {
            Dialect::OpenAi => serde_json::json!({
                "error": {
                    "message": message,
                    "type": self.error_type(dialect),
                    "param": null,
                    "code": self.code(),
                }
            }),
            Dialect::Anthropic => serde_json::json!({
                "type": "error",
                "error": { "type": self.error_type(dialect), "message": message },
            }),
        };
        if let EdgeError::OfflineMiss {
            nearest: Some(n), ..
        } = self
        {
            value["error"]["nearest"] = serde_json::to_value(n).expect("plain data");
        }
        Bytes::from(serde_json::to_vec(&value).expect("json values serialize"))
    }

    /// A complete response: status, JSON body, `x-relay-error`, and the request id.
    pub fn to_response(&self, dialect: Dialect, request_id: &HeaderValue) -> Response<Bytes> {
        let mut resp = Response::new(self.body(dialect));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(names::X_RELAY_ERROR, HeaderValue::from_static(self.code()));
        h.insert(names::X_REQUEST_ID, request_id.clone());
        if matches!(
            self,
            EdgeError::BudgetExceeded { .. } | EdgeError::OfflineMiss { .. }
        ) {
            // Sending it again cannot succeed (before the reset; without going online): the
            // Anthropic and OpenAI SDKs, so Claude Code too, honour this over the status.
            h.insert(names::X_SHOULD_RETRY, HeaderValue::from_static("false"));
        }
        match self {
            EdgeError::BudgetExceeded { resets, .. } => {
                if let Ok(v) = HeaderValue::try_from(resets.as_str()) {
                    h.insert(names::X_RELAY_BUDGET_RESET, v);
                }
            }
            EdgeError::RateLimited {
                retry_after,
                headers,
                ..
            } => {
                h.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(retry_secs(*retry_after)),
                );
                if let Some(rh) = headers {
                    rh.apply(h);
                }
            }
            EdgeError::CircuitOpen { retry_after, .. } => {
                h.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(retry_secs(*retry_after)),
                );
            }
            _ => {}
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let e = EdgeError::BodyTooLarge { limit: 10 };
        let v: serde_json::Value = serde_json::from_slice(&e.body(Dialect::OpenAi)).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "request_too_large");
        let v: serde_json::Value = serde_json::from_slice(&e.body(Dialect::Anthropic)).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "request_too_large");
        assert_eq!(e.status(), 413);
    }

    #[test]
    fn breaker_and_retry_facts() {
        let down = EdgeError::Unreachable {
            provider: "openai".into(),
            detail: "refused".into(),
        };
        let slow = EdgeError::Timeout {
            provider: "openai".into(),
            timeout: Duration::from_secs(1),
        };
        assert!(down.counts_for_breaker() && down.retryable());
        assert!(slow.counts_for_breaker() && slow.retryable());
        assert!(EdgeError::BufferFull.retryable() && !EdgeError::BufferFull.counts_for_breaker());
        let miss = EdgeError::OfflineMiss {
            reason: MissReason::Offline,
            key: "k".into(),
            request_id: String::new(),
            nearest: None,
        };
        assert!(!miss.counts_for_breaker() && !miss.retryable());
        let bad = EdgeError::BadJson("x".into());
        assert!(!bad.counts_for_breaker() && !bad.retryable());
        let forbidden = EdgeError::ProxyForbidden {
            host: "example.com".into(),
        };
        assert_eq!(forbidden.status(), 403);
        assert_eq!(forbidden.code(), "proxy_forbidden");
    }

    #[test]
    fn limit_errors() {
        let e = EdgeError::RateLimited {
            rule: "key".into(),
            tokens: false,
            retry_after: Duration::from_millis(4001),
            headers: None,
        };
        let resp = e.to_response(Dialect::OpenAi, &HeaderValue::from_static("r1"));
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()["retry-after"], "5");
        let v: serde_json::Value = serde_json::from_slice(resp.body()).unwrap();
        assert_eq!(v["error"]["type"], "requests");
        assert_eq!(v["error"]["code"], "rate_limit_exceeded");
        let v: serde_json::Value = serde_json::from_slice(&e.body(Dialect::Anthropic)).unwrap();
        assert_eq!(v["error"]["type"], "rate_limit_error");
        let e = EdgeError::CircuitOpen {
            provider: "openai".into(),
            retry_after: Duration::from_secs(30),
        };
        let resp = e.to_response(Dialect::Anthropic, &HeaderValue::from_static("r1"));
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()["retry-after"], "30");
        assert_eq!(retry_secs(Duration::ZERO), 1);
        assert_eq!(retry_secs(Duration::from_secs(2)), 2);
    }
}
