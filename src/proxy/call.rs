//! Stage 8 of the pipeline: the circuit gate, the upstream call, its retries and the route's
//! fallback, all before the first byte reaches the caller.
//!
//! The route's provider is tried first. A failure its retry policy lists (`retry.on`: connect
//! errors, timeouts, 429, 5xx, an error code) is sent again after an exponential backoff with full
//! jitter, or after the answer's `Retry-After` / `retry-after-ms` when it asks for longer; an
//! answer that asks for more than `max_delay` is passed on instead. A failure the route's
//! `fallback_on` lists (an open circuit, a refused connection, 429, 529, `context_length_exceeded`,
//! ...) hands the request to the fallback provider, with its own retries. Only a body relay holds
//! whole can be sent again; an upload is tried once. Every try is reported to the circuit of the
//! provider it went to: 5xx (429 with `count_429`), connect errors and timeouts as failures; a
//! successful stream is judged when it ends (its ticket goes on the context). Each retry and
//! fallback is logged (`relay::retry`), counted (`relay_retries_total{provider,reason}`) and kept
//! on the context for the access log and the live feed.

use std::borrow::Cow;
use std::hash::{BuildHasher, RandomState};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::client_body::ClientBody;
use super::context::RequestContext;
use super::route;
use super::stages::Routed;
use super::state::Runtime;
use super::tunnel;
use super::upstream;
use crate::config::{RetryConfig, When};
use crate::error::EdgeError;
use crate::limit::breaker::Verdict;
use crate::metrics::Metrics;

/// The most of an error answer read to find its error code (for `retry.on` / `fallback_on`
/// entries that name one).
const ERROR_BODY_MAX: usize = 64 << 10;

/// One upstream call to make (stage 8).
pub struct Call<'a> {
    pub routed: &'a Routed<'a>,
    pub query: Option<&'a str>,
    pub method: Method,
    pub headers: HeaderMap,
    pub body: ClientBody,
    /// The body when relay read it whole: a retry or a fallback can send it again.
    pub whole: Option<&'a Bytes>,
    /// The `Upgrade` value of a protocol switch (WebSocket), restored after the hop-by-hop filter.
    pub upgrade: Option<&'a HeaderValue>,
}

/// What stage 8 hands on: the provider that answered, its answer, and what relay already read of
/// the answer's body (an error body read for its code), sent first.
pub struct Called {
    pub index: usize,
    pub resp: Response<Incoming>,
    pub read: Option<Bytes>,
}

/// Stage 8 (module docs).
pub struct Upstream<'a> {
    pub rt: &'a Runtime,
    pub metrics: &'a Metrics,
}

/// What went wrong with one try, as `retry.on` and `fallback_on` name it.
enum Failure {
    Answer {
        status: u16,
        error: Option<String>,
        retry_after: Option<Duration>,
    },
    Error {
        when: When,
    },
}

impl Failure {
    fn is(&self, w: &When) -> bool {
        match self {
            Failure::Answer { status, error, .. } => w.matches_status(*status, error.as_deref()),
            Failure::Error { when } => w == when,
        }
    }

    /// The entry of `list` it matches (its name is the reason in logs and metrics).
    fn listed<'l>(&self, list: &'l [When]) -> Option<&'l When> {
        list.iter().find(|w| self.is(w))
    }
}

impl Upstream<'_> {
    pub async fn run(&self, x: &mut RequestContext, call: Call<'_>) -> Result<Called, EdgeError> {
        x.sending_upstream();
        let sent = Instant::now();
        let called = self.call(x, call).await?;
        let provider = &self.rt.config.providers[called.index];
        if x.provider.as_deref() != Some(provider.name.as_str()) {
            x.provider = Some(provider.name.clone());
        }
        let upstream_time = sent.elapsed();
        x.upstream = Some(upstream_time);
        self.metrics
            .upstream_latency
            .with_label_values(&[&provider.name])
            .observe(upstream_time.as_secs_f64());
        Ok(called)
    }

    async fn call(&self, x: &mut RequestContext, call: Call<'_>) -> Result<Called, EdgeError> {
        let (rt, metrics) = (self.rt, self.metrics);
        let cfg = &rt.config;
        let Call {
            routed,
            query,
            method,
            mut headers,
            body,
            whole,
            upgrade,
        } = call;
        let (primary, fallback) = (routed.index, routed.fallback);
        let route = routed.route.map(|r| &cfg.routes[r]);
        let fallback_on: &[When] = route.map_or(&[], |r| r.fallback_on.as_slice());
        // An upload that fails mid-send because of the caller (over the limit, stalled) is the
        // caller's error, never the provider's.
        let fault = match &body {
            ClientBody::Stream(u) => Some(u.fault()),
            ClientBody::Whole(_) => None,
        };
        let mut body = Some(body);
        let mut last: Option<EdgeError> = None;
        let mut kept: Option<Called> = None;
        let hops = std::iter::once(primary).chain(fallback);
        'hops: for index in hops {
            let provider = &cfg.providers[index];
            let pool = rt.pools.get(index);
            let is_fallback = index != primary;
            let retry: &RetryConfig = match route.and_then(|r| r.retry.as_ref()) {
                Some(r) if !is_fallback => r,
                _ => &provider.retry,
            };
            // Cloned only while another hop may need them.
            let last_hop = is_fallback || fallback.is_none();
            let mut h = if last_hop {
                std::mem::take(&mut headers)
            } else {
                headers.clone()
            };
            if is_fallback {
                // The caller's key is for the provider it was routed to: a fallback gets its own
                // (`api_key_env`), never that one.
                upstream::strip_credentials(&mut h);
            }
            let own_key = upstream::has_credentials(&h);
            let pooled = pool.endpoints.len() > 1 || (!own_key && pool.keys.len() > 1);
            // Endpoints that failed this request (bit i: endpoint i); moves to another endpoint
            // or key, which are free (no backoff, no attempt used), at most one per member.
            let mut failed: u64 = 0;
            let mut moves = pool.endpoints.len() + pool.keys.len();
            let mut attempt = 1;
            loop {
                let picked = match pool.pick(failed, metrics) {
                    Ok(p) => p,
                    Err(retry_after) => {
                        last = Some(EdgeError::CircuitOpen {
                            provider: provider.name.clone(),
                            retry_after,
                        });
                        if fallback.is_some()
                            && !is_fallback
                            && fallback_on.contains(&When::CircuitOpen)
                        {
                            note(
                                x,
                                metrics,
                                &provider.name,
                                "circuit_open",
                                None,
                                Move::Fallback,
                            );
                            continue 'hops;
                        }
                        break 'hops;
                    }
                };
                let key = if own_key { None } else { pool.pick_key() };
                let Some(b) = body
                    .take()
                    .or_else(|| whole.cloned().map(ClientBody::Whole))
                else {
                    // An upload already sent cannot be sent again.
                    break 'hops;
                };
                let resendable = whole.is_some();
                // The last possible try takes the headers; an earlier one sends a copy.
                let sent = if (attempt == retry.attempts && !pooled) || !resendable {
                    std::mem::take(&mut h)
                } else {
                    h.clone()
                };
                let ep = picked.endpoint;
                let pq = if !is_fallback && ep.url.path == provider.base_url.path {
                    Cow::Borrowed(routed.path_and_query.as_str())
                } else {
                    let mut p = route::upstream_path(&ep.url.path, routed.rest);
                    if let Some(q) = query {
                        p.push('?');
                        p.push_str(q);
                    }
                    Cow::Owned(p)
                };
                let mut req = upstream::build_request(
                    provider,
                    &ep.url,
                    key.map(|(_, k)| k),
                    &pq,
                    method.clone(),
                    sent,
                    b.into(),
                )?;
                if let Some(v) = upgrade {
                    tunnel::restore(req.headers_mut(), v.clone());
                }
                let started = Instant::now();
                let sent = rt.upstreams.send(index, provider, req).await;
                let mut picked = picked;
                let (ticket, ep_index) = (picked.ticket.take(), picked.index);
                drop(picked);
                let bit = if ep_index < 64 { 1u64 << ep_index } else { 0 };
                let failure = match sent {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        pool.observe(ep, Some(started.elapsed()), status >= 500, metrics);
                        let stream = resp.status().is_success()
                            && crate::wire::has_event_stream(resp.headers());
                        match ticket {
                            Some(t) if stream => x.circuit = Some(t),
                            Some(t) => t.record_status(status, metrics),
                            None => {}
                        }
                        if status < 400 {
                            return Ok(Called {
                                index,
                                resp,
                                read: None,
                            });
                        }
                        if status >= 500 {
                            failed |= bit;
                        }
                        let wants_code = retry
                            .on
                            .iter()
                            .chain(fallback_on)
                            .any(|w| matches!(w, When::Error(_)));
                        let retry_after = retry_after(resp.headers());
                        // A pooled key over its quota rests; another key takes the request.
                        if status == 429 {
                            if let Some((k, _)) = key {
                                pool.rest_key(k, retry_after, metrics);
                                if resendable && moves > 0 && pool.other_key_serving(k) {
                                    moves -= 1;
                                    let label = &pool.keys[k].label;
                                    note(
                                        x,
                                        metrics,
                                        &provider.name,
                                        &format!("429 on {label}"),
                                        None,
                                        Move::Key,
                                    );
                                    continue;
                                }
                            }
                        }
                        let (resp, read, error) = if wants_code {
                            read_error(resp, provider.timeouts.idle).await
                        } else {
                            (resp, None, None)
                        };
                        let f = Failure::Answer {
                            status,
                            error,
                            retry_after,
                        };
                        kept = Some(Called { index, resp, read });
                        f
                    }
                    Err((e, not_sent)) => {
                        if let Some(f) = fault.as_ref().and_then(|f| f.get()) {
                            // The ticket is dropped unjudged: neither a success nor a failure.
                            return Err(f.to_edge());
                        }
                        pool.observe(ep, None, true, metrics);
                        failed |= bit;
                        if let Some(t) = ticket {
                            if e.counts_for_breaker() {
                                t.record(Verdict::Failure, metrics);
                            }
                        }
                        let others = pool.endpoints.len() > 1
                            && (0..pool.endpoints.len().min(64)).any(|i| failed & (1 << i) == 0);
                        // A dead endpoint costs no request: another one takes it at once, also
                        // when the connection died before any answer (killed mid-request).
                        if matches!(e, EdgeError::Unreachable { .. })
                            && resendable
                            && moves > 0
                            && others
                        {
                            moves -= 1;
                            last = Some(e);
                            let reason = format!("connect to {}", ep.name);
                            note(x, metrics, &provider.name, &reason, None, Move::Endpoint);
                            continue;
                        }
                        let when = match &e {
                            EdgeError::Timeout { .. } => When::Timeout,
                            // Sent, then cut: the upstream may have acted on it.
                            EdgeError::Unreachable { .. } if not_sent => When::Connect,
                            _ => return Err(e),
                        };
                        last = Some(e);
                        // A failed fallback leaves the caller the primary's own answer, if any.
                        if kept.as_ref().is_some_and(|k| k.index == index) {
                            kept = None;
                        }
                        Failure::Error { when }
                    }
                };
                // Again, after a pause?
                if attempt < retry.attempts && resendable {
                    if let Some(reason) = failure.listed(&retry.on) {
                        if let Some(wait) = pause(retry, attempt, &failure) {
                            let reason = reason.to_string();
                            note(x, metrics, &provider.name, &reason, Some(wait), Move::Retry);
                            // This try's answer gives way to the next; a primary's answer
                            // stays for the caller should the fallback fail too.
                            if kept.as_ref().is_some_and(|k| k.index == index) {
                                kept = None;
                            }
                            tokio::time::sleep(wait).await;
                            attempt += 1;
                            continue;
                        }
                    }
                }
                // To the fallback?
                if fallback.is_some() && !is_fallback && (resendable || body.is_some()) {
                    if let Some(reason) = failure.listed(fallback_on) {
                        let reason = reason.to_string();
                        note(x, metrics, &provider.name, &reason, None, Move::Fallback);
                        continue 'hops;
                    }
                }
                break 'hops;
            }
        }
        match kept {
            Some(k) => Ok(k),
            None => Err(last.expect("the primary is always tried")),
        }
    }
}

/// What relay did after a failed try.
#[derive(Debug, Clone, Copy)]
enum Move {
    /// The same provider again, after a pause.
    Retry,
    /// Another endpoint of the provider, at once (this one refused the connection).
    Endpoint,
    /// Another key of the provider, at once (this one got a 429 and rests).
    Key,
    /// The route's fallback provider.
    Fallback,
}

impl Move {
    fn as_str(self) -> &'static str {
        match self {
            Move::Retry => "retry",
            Move::Endpoint => "endpoint",
            Move::Key => "key",
            Move::Fallback => "fallback",
        }
    }
}

/// Records a retry (a move to another endpoint or key, a hand-over to the fallback) on `x`.
fn note(
    x: &mut RequestContext,
    metrics: &Metrics,
    provider: &str,
    reason: &str,
    wait: Option<Duration>,
    what: Move,
) {
    // The metric's reason stays one of a few words (no endpoint or key names).
    let label = reason.split(' ').next().unwrap_or(reason);
    metrics
        .retries
        .with_label_values(&[provider, label, what.as_str()])
        .inc();
    tracing::info!(
        target: "relay::retry",
        provider,
        reason,
        wait_ms = wait.map(|w| w.as_millis() as u64),
        request_id = x.request_id.to_str().unwrap_or("-"),
        "{}",
        what.as_str()
    );
    let text = match (what, wait) {
        (Move::Retry, Some(w)) => {
            format!("{provider} {reason}, retried after {} ms", w.as_millis())
        }
        (Move::Endpoint, _) => format!("{provider} {reason}, sent to the next endpoint"),
        (Move::Key, _) => format!("{provider} {reason}, sent with the next key"),
        _ => format!("{provider} {reason}, handed to the fallback"),
    };
    x.attempts.push(text);
}

/// How long to wait before try `attempt + 1`: the backoff (`base_delay` doubled each try, full
/// jitter, at most `max_delay`), or the answer's own `Retry-After` when longer. `None` when the
/// answer asks for more than `max_delay`: the caller gets it as it is.
fn pause(retry: &RetryConfig, attempt: u32, failure: &Failure) -> Option<Duration> {
    let ceiling = retry
        .base_delay
        .saturating_mul(1u32 << (attempt - 1).min(16))
        .min(retry.max_delay);
    let jitter = RandomState::new().hash_one(attempt) % (ceiling.as_micros() as u64).max(1);
    let backoff = Duration::from_micros(jitter);
    match failure {
        Failure::Answer {
            retry_after: Some(asked),
            ..
        } => (*asked <= retry.max_delay).then(|| backoff.max(*asked)),
        _ => Some(backoff),
    }
}

/// `retry-after-ms` (OpenAI), else `Retry-After` in seconds.
fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let num = |name: &str| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|n| n.is_finite() && *n >= 0.0)
    };
    num("retry-after-ms")
        .map(|ms| Duration::from_secs_f64(ms / 1000.0))
        .or_else(|| num("retry-after").map(Duration::from_secs_f64))
}

/// Reads an error answer (at most [`ERROR_BODY_MAX`]) for its `error.code` or `error.type`
/// (OpenAI and Anthropic shapes); the bytes read are sent first when it is passed on.
async fn read_error(
    resp: Response<Incoming>,
    idle: Duration,
) -> (Response<Incoming>, Option<Bytes>, Option<String>) {
    let (parts, mut body) = resp.into_parts();
    let mut buf = bytes::BytesMut::new();
    while buf.len() <= ERROR_BODY_MAX {
        match tokio::time::timeout(idle, body.frame()).await {
            Ok(Some(Ok(frame))) => match frame.into_data() {
                Ok(d) => buf.extend_from_slice(&d),
                Err(_) => break,
            },
            _ => break,
        }
    }
    let bytes = buf.freeze();
    let code = error_code(&bytes);
    let read = (!bytes.is_empty()).then_some(bytes);
    (Response::from_parts(parts, body), read, code)
}

/// `error.code`, else `error.type` (`{"error": {...}}` in both dialects).
fn error_code(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let e = v.get("error")?;
    ["code", "type"]
        .iter()
        .find_map(|k| e.get(*k).and_then(|c| c.as_str()).map(String::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_of_both_dialects() {
        let openai = br#"{"error":{"message":"too long","type":"invalid_request_error","code":"context_length_exceeded"}}"#;
        assert_eq!(
            error_code(openai).as_deref(),
            Some("context_length_exceeded")
        );
        let anthropic =
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        assert_eq!(error_code(anthropic).as_deref(), Some("overloaded_error"));
        assert_eq!(error_code(b"<html>"), None);
    }

    #[test]
    fn retry_after_headers() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", HeaderValue::from_static("150"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(150)));
    }

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after() {
        let r = RetryConfig {
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            ..RetryConfig::default()
        };
        let err = Failure::Error {
            when: When::Connect,
        };
        for attempt in 1..=8 {
            let cap = Duration::from_millis(100 * (1 << (attempt - 1))).min(r.max_delay);
            assert!(pause(&r, attempt, &err).unwrap() <= cap);
        }
        let asked = |s| Failure::Answer {
            status: 429,
            error: None,
            retry_after: Some(Duration::from_millis(s)),
        };
        assert!(pause(&r, 1, &asked(800)).unwrap() >= Duration::from_millis(800));
        assert_eq!(pause(&r, 1, &asked(5_000)), None, "longer than max_delay");
    }
}
