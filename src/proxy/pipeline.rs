//! The request pipeline, top to bottom. Every request meets these stages in this order:
//!
//! 0. **request filter** ([`super::filter`]): the path is normalised (above the root: 400), and
//!    browser requests from other sites (403), `text/plain` and form bodies (415) and, for relay's
//!    own API, `Host`s that are not loopback or configured (403) are refused;
//! 1. **admin**: `/healthz` and `/metrics` are answered here and go no further;
//! 2. **record**: an [`Exchange`] opens (request id, in-flight gauge, access log on close);
//! 3. **route by path**: `/<provider>/v1/...` or `/v1/...`, anything else is 404;
//! 4. **read body** ([`super::client_body`]): JSON bodies are read whole (bounded by
//!    `server.max_body_bytes`, 413 above, `server.body_read_timeout`, 408, and the server's
//!    `max_buffered_bytes`, 503) so the model can be read; other bodies (uploads) stream through
//!    under the same bounds;
//! 5. **route by model**: the route table picks the provider (400 when it needs a model and the body
//!    is not JSON, 404 when nothing matches);
//! 6. **cost, cache**: the request is booked to a key and its metering decided (see
//!    [`crate::cost`]; a cache hit gets its saved cost and `x-relay-cost-usd` / `x-relay-tokens`
//!    headers). The cache: a hit is replayed, an identical request in flight is shared, offline misses are
//!    504 (see [`super::cache`]); otherwise the request goes on with a tap that records the answer;
//!    then a key over its budget is refused (429 `budget_exceeded`), and a streamed chat request
//!    gets `stream_options.include_usage` added (`cost.stream_usage: inject`);
//! 7. **rate limit** (after a miss: cache hits are never limited): the `ratelimit` rules pass the
//!    request, queue it for its slot (`on_limit: wait`) or refuse it (429), see [`crate::limit`];
//! 8. **circuit + upstream**: the provider's circuit breaker lets the call through or refuses it
//!    (503), the route's `fallback` taking over while it is open or when the connection fails; the
//!    request goes out byte-for-byte on the provider's pooled client (502 when unreachable, 504 on
//!    timeout); upstream 4xx/5xx come back unchanged; a protocol switch (a WebSocket handshake)
//!    keeps its upgrade headers, and on 101 the two connections are spliced (see [`super::tunnel`]);
//! 9. **respond**: headers filtered, `x-request-id` and `x-ratelimit-*` set, cost metering attached,
//!    the body streamed frame by frame.
//!
//! The config is read once per request (one atomic load); a reload mid-request does not affect it.

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response};
use hyper::body::Incoming;
use serde::Deserialize;

use super::admin::{self, is_relay_api};
use super::body::RelayBody;
use super::cache::{self as stage, Answer, FlightLead, Resolved};
use super::client_body::{self, ClientBody};
use super::context::RequestContext;
use super::filter;
use super::route::{self, PathTarget};
pub use super::state::{Runtime, State};
use super::tunnel;
use super::upstream;
use crate::config::ServerConfig;
use crate::error::{Dialect, EdgeError};
use crate::limit;
use crate::metrics::Metrics;
use crate::wire::headers as names;

/// The hyper service function.
pub async fn handle(
    state: Arc<State>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<RelayBody>, Infallible> {
    let started = Instant::now();
    let rt = state.runtime.load_full();
    let req = match request_filter(&rt.config.server, &state.metrics, req) {
        Ok(req) => req,
        Err(refused) => return Ok(*refused),
    };
    let caller = filter::caller(peer, req.headers(), &rt.config.server.trusted_proxies);
    let req = match admin::handle(&state, caller, req).await {
        Ok(resp) => return Ok(resp),
        Err(req) => req,
    };
    let request_id = match req.headers().get(names::X_REQUEST_ID) {
        Some(v) => v.clone(),
        None => HeaderValue::try_from(uuid::Uuid::new_v4().to_string()).expect("uuid is ASCII"),
    };
    let dialect = Dialect::of(req.uri().path(), req.headers());
    let mut x = RequestContext::begin(
        state.metrics.clone(),
        rt.config.server.request_log,
        started,
        req.method().clone(),
        req.uri().path().to_string(),
        request_id,
    );
    x.observe(&state.events, req.headers());
    let resp = match forward(&rt, &state, &mut x, req).await {
        Ok(resp) => resp,
        Err(e) => {
            let resp = e.to_response(dialect, &x.request_id).map(RelayBody::full);
            x.error = Some(e);
            resp
        }
    };
    x.status = resp.status().as_u16();
    x.headers_sent(resp.headers());
    Ok(resp.map(|b| b.with_context(x)))
}

/// Stage 0: the request filter ([`filter`]). The path is normalised (a path above the root is
/// 400); a browser request from another site is 403, a `text/plain` or form body 415 (multipart
/// too on relay's own API); relay's own API answers only loopback and configured `Host`s (403).
/// Each refusal counts in `relay_requests_refused_total{reason}`.
fn request_filter(
    server: &ServerConfig,
    metrics: &Metrics,
    mut req: Request<Incoming>,
) -> Result<Request<Incoming>, Box<Response<RelayBody>>> {
    let refuse = |req: &Request<Incoming>, reason: &'static str, e: EdgeError| {
        metrics.refused.with_label_values(&[reason]).inc();
        tracing::debug!(reason, error = %e, "request refused by the filter");
        let path = req.uri().path();
        Box::new(if is_relay_api(path) {
            crate::admin::reply::error(e.status(), &e.to_string()).map(RelayBody::full)
        } else {
            let id = HeaderValue::try_from(uuid::Uuid::new_v4().to_string()).expect("ASCII");
            e.to_response(Dialect::of(path, req.headers()), &id)
                .map(RelayBody::full)
        })
    };
    match filter::normalize_path(req.uri().path()) {
        Err(why) => {
            let e = EdgeError::BadPath {
                path: req.uri().path().to_string(),
                why: why.describe(),
            };
            return Err(refuse(&req, "bad_path", e));
        }
        Ok(Cow::Owned(path)) => match with_path(req.uri(), &path) {
            Some(uri) => *req.uri_mut() = uri,
            None => {
                let e = EdgeError::BadPath {
                    path,
                    why: "it is not a valid path",
                };
                return Err(refuse(&req, "bad_path", e));
            }
        },
        Ok(Cow::Borrowed(_)) => {}
    }
    if let Some(cs) = filter::cross_site(req.headers(), &server.allowed_origins) {
        let e = EdgeError::CrossSite {
            what: cs.describe(),
        };
        return Err(refuse(&req, "cross_site", e));
    }
    let own = is_relay_api(req.uri().path());
    if let Some(ct) = filter::form_body(req.method(), req.headers(), own) {
        let e = EdgeError::FormBody {
            content_type: ct.to_string(),
        };
        return Err(refuse(&req, "form_body", e));
    }
    if own
        && !filter::host_allowed(
            filter::request_host(req.headers(), req.uri()),
            &server.allowed_hosts,
        )
    {
        metrics.refused.with_label_values(&["host"]).inc();
        let host = filter::request_host(req.headers(), req.uri()).unwrap_or_default();
        return Err(Box::new(crate::admin::reply::error(
            http::StatusCode::FORBIDDEN,
            &format!("relay's own API does not answer Host {host:?} (it answers loopback names and IP addresses, and the names in server.allowed_hosts)"),
        )
        .map(RelayBody::full)));
    }
    Ok(req)
}

/// `uri` with its path replaced (query, scheme and authority kept).
fn with_path(uri: &http::Uri, path: &str) -> Option<http::Uri> {
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let mut b = http::Uri::builder();
    if let Some(s) = uri.scheme() {
        b = b.scheme(s.clone());
    }
    if let Some(a) = uri.authority() {
        b = b.authority(a.clone());
    }
    b.path_and_query(pq).build().ok()
}

/// Stages 3–9.
async fn forward(
    rt: &Runtime,
    state: &State,
    x: &mut RequestContext,
    req: Request<Incoming>,
) -> Result<Response<RelayBody>, EdgeError> {
    let cfg = &rt.config;
    let metrics = &state.metrics;
    let (mut parts, body) = req.into_parts();
    // A WebSocket handshake (or another protocol switch): its `Upgrade` value and the caller's
    // side of the switch.
    let upgrade = tunnel::requested(&parts.headers)
        .map(|v| (v, parts.extensions.remove::<hyper::upgrade::OnUpgrade>()));
    let no_route = |model: Option<String>| EdgeError::NoRoute {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        model,
    };

    // 3. Route by path.
    let target = route::classify(cfg, parts.uri.path());
    if target == PathTarget::Unknown {
        return Err(no_route(None));
    }

    // 4. Read the body.
    let bounds = client_body::Bounds {
        max_bytes: cfg.server.max_body_bytes,
        stall: cfg.server.body_read_timeout,
    };
    let (body, buffered) =
        client_body::read(body, &parts.headers, &parts.method, bounds, &state.bodies).await?;
    x.buffered = buffered;
    let model = match &body {
        ClientBody::Whole(bytes) => {
            x.bytes_in = bytes.len() as u64;
            x.capture_request_body(bytes);
            let strict =
                matches!(target, PathTarget::Table { path } if route::needs_model(cfg, path));
            peek_model(bytes, strict)?
        }
        ClientBody::Stream(_) => None,
    };
    // A WebSocket handshake has no body: the Realtime API names its model in the query.
    let model = match (model, &upgrade) {
        (None, Some(_)) => tunnel::query_model(parts.uri.query()),
        (model, _) => model,
    };
    x.model_label = rt.labels.label(model.as_deref()).to_string();
    x.model = model;

    // 5. Route by model.
    let (index, fallback, rest) = match target {
        PathTarget::Explicit { provider, rest } => (provider, None, rest),
        PathTarget::Table { path } => match route::select_route(cfg, path, x.model.as_deref()) {
            Some(r) => (r.provider, r.fallback, path),
            None => return Err(no_route(x.model.clone())),
        },
        PathTarget::Unknown => unreachable!("handled above"),
    };
    let provider = &cfg.providers[index];
    x.provider = Some(provider.name.clone());

    let mut path_and_query = route::upstream_path(&provider.base_url.path, rest);
    if let Some(q) = parts.uri.query() {
        path_and_query.push('?');
        path_and_query.push_str(q);
    }

    // 6. Cost, then cache.
    let whole = match &body {
        ClientBody::Whole(b) => Some(b.clone()),
        ClientBody::Stream(_) => None,
    };
    let cost = crate::cost::plan(
        &rt.cost,
        &state.cost,
        provider,
        &parts.method,
        &path_and_query,
        &parts.headers,
        whole.as_ref(),
        x.model.as_deref(),
    );
    if let Some(c) = &cost {
        x.tally = Some(c.tally(false));
    }
    let (lookup, lead) = match &state.cache {
        None => (None, None),
        Some(cache) => match cache.plan(
            cfg,
            &parts.method,
            &parts.headers,
            &provider.name,
            &path_and_query,
            whole.as_ref(),
        )? {
            None => (None, None),
            Some(lookup) => {
                let served = cache.resolve(lookup, &x.request_id).await;
                let labels = [provider.name.as_str(), x.model_label.as_str()];
                match served? {
                    Resolved::Served(mut resp) => {
                        metrics.cache_hits.with_label_values(&labels).inc();
                        if let Some(c) = &cost {
                            let served = c.served(&mut resp);
                            x.tally = Some(served.tally);
                            if served.usage.is_some() {
                                x.usage = served.usage;
                            }
                            return Ok(resp.map(|b| b.with_meter(served.hook)));
                        }
                        return Ok(*resp);
                    }
                    Resolved::Forward(lookup, lead) => {
                        if lookup
                            .as_ref()
                            .is_some_and(|l| l.status != stage::Status::Bypass)
                        {
                            metrics.cache_misses.with_label_values(&labels).inc();
                        }
                        (lookup, lead)
                    }
                }
            }
        },
    };
    if let Some(c) = &cost {
        if let Err(e) = state.cost.check_budget(&rt.cost, c.key()) {
            return Err(fail_lead(lead, e));
        }
    }
    let body = match body {
        ClientBody::Whole(b) if cost.as_ref().is_some_and(|c| c.inject) => {
            match crate::cost::inject::include_usage(&b) {
                Some(changed) => {
                    parts
                        .headers
                        .insert(header::CONTENT_LENGTH, HeaderValue::from(changed.len()));
                    ClientBody::Whole(changed)
                }
                None => ClientBody::Whole(b),
            }
        }
        other => other,
    };
    // What goes upstream when relay read it whole (usage injection included): a fallback sends it
    // again.
    let sent_whole = match &body {
        ClientBody::Whole(b) => Some(b.clone()),
        ClientBody::Stream(_) => None,
    };
    for h in &stage::CONTROL_HEADERS {
        parts.headers.remove(h);
    }
    if lookup
        .as_ref()
        .is_some_and(|l| l.status != stage::Status::Bypass)
    {
        // Recorded answers must be readable (SSE events, usage): ask for them uncompressed.
        parts.headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
    }

    // 7. Rate limit.
    let limited = limit::Request {
        headers: &parts.headers,
        model: x.model.as_deref(),
        body: whole.as_deref(),
    };
    let admitted = match rt.limiter.admit(&limited, metrics).await {
        Ok(admitted) => admitted,
        Err(e) => return Err(fail_lead(lead, e)),
    };
    x.tokens = admitted.tokens;

    // 8. Circuit breaker and upstream.
    parts
        .headers
        .entry("x-request-id")
        .or_insert_with(|| x.request_id.clone());
    let method = parts.method.clone();
    x.sending_upstream();
    let sent = Instant::now();
    let call = Call {
        primary: index,
        fallback,
        rest,
        query: parts.uri.query(),
        path_and_query: &path_and_query,
        method: parts.method,
        headers: parts.headers,
        body,
        whole: sent_whole.as_ref(),
        upgrade: upgrade.as_ref().map(|(v, _)| v),
    };
    let (index, resp) = match call_upstream(rt, metrics, call, &mut x.circuit).await {
        Ok(called) => called,
        Err(e) => {
            if let Some(tokens) = x.tokens.take() {
                tokens.settle(0); // no answer: nothing to meter, the reservation goes back
            }
            return Err(fail_lead(lead, e));
        }
    };
    let provider = &cfg.providers[index];
    if x.provider.as_deref() != Some(provider.name.as_str()) {
        x.provider = Some(provider.name.clone());
    }
    let upstream_time = sent.elapsed();
    x.upstream = Some(upstream_time);
    metrics
        .upstream_latency
        .with_label_values(&[&provider.name])
        .observe(upstream_time.as_secs_f64());

    // 9. Respond.
    let (mut rparts, rbody) = resp.into_parts();
    let switched = (rparts.status == http::StatusCode::SWITCHING_PROTOCOLS)
        .then(|| rparts.headers.get(header::UPGRADE).cloned())
        .flatten();
    upstream::strip_hop_by_hop(&mut rparts.headers);
    if let (Some(v), Some((_, Some(caller)))) = (switched, upgrade) {
        if let Some(theirs) = rparts.extensions.remove::<hyper::upgrade::OnUpgrade>() {
            tunnel::restore(&mut rparts.headers, v);
            tunnel::splice(caller, theirs, provider.name.clone(), state.held.hold());
        }
    }
    let hook = cost
        .as_ref()
        .and_then(|c| c.hook(rparts.status, &mut rparts.headers));
    if let Some(h) = &admitted.headers {
        h.apply(&mut rparts.headers);
    }
    let tap = match (&state.cache, &lookup) {
        (Some(cache), Some(l)) if l.status != stage::Status::Bypass => cache.tap(
            l,
            lead,
            Answer {
                provider: &provider.name,
                model: x.model.as_deref(),
                method: &method,
                path: &path_and_query,
                request: whole.unwrap_or_default(),
                status: rparts.status,
                headers: &rparts.headers,
            },
            metrics,
        ),
        _ => None,
    };
    if let Some(l) = &lookup {
        stage::mark(&mut rparts.headers, l.status, &l.key, &x.request_id);
    }
    rparts
        .headers
        .entry("x-request-id")
        .or_insert_with(|| x.request_id.clone());
    metrics.overhead.observe(
        x.started
            .elapsed()
            .saturating_sub(upstream_time)
            .as_secs_f64(),
    );
    Ok(Response::from_parts(
        rparts,
        RelayBody::upstream(rbody, provider.timeouts.idle)
            .with_tap(tap)
            .with_meter(hook),
    ))
}

/// Fails the single flight this request leads (its followers get the same error), passing `e` on.
fn fail_lead(lead: Option<FlightLead>, e: EdgeError) -> EdgeError {
    if let Some(lead) = lead {
        lead.fail(&e);
    }
    e
}

/// One upstream call to make (stage 8).
struct Call<'a> {
    /// The provider the route chose, and its fallback.
    primary: usize,
    fallback: Option<usize>,
    /// The client path (`/v1/...`) and query, to build the fallback's upstream path.
    rest: &'a str,
    query: Option<&'a str>,
    /// The primary's upstream path and query.
    path_and_query: &'a str,
    method: Method,
    headers: HeaderMap,
    body: ClientBody,
    /// The body when relay read it whole: a fallback can send it again.
    whole: Option<&'a Bytes>,
    /// The `Upgrade` value of a protocol switch (WebSocket), restored after the hop-by-hop filter.
    upgrade: Option<&'a HeaderValue>,
}

/// Stage 8: the circuit gate, then the upstream call. The route's provider is tried first; its
/// fallback takes the request when the provider's circuit is open, or when the connection failed
/// before anything was sent (only for bodies relay read whole, which it can send again). Each
/// answer is reported to the provider's circuit: 5xx (429 with `count_429`), connect errors and
/// timeouts as failures. A successful stream (SSE) is judged when it ends: its ticket goes to
/// `deferred` (the request's [`RequestContext`]), so a stream cut by the idle timeout is a failure.
async fn call_upstream(
    rt: &Runtime,
    metrics: &Metrics,
    call: Call<'_>,
    deferred: &mut Option<limit::breaker::Ticket>,
) -> Result<(usize, Response<Incoming>), EdgeError> {
    let cfg = &rt.config;
    let Call {
        primary,
        fallback,
        rest,
        query,
        path_and_query,
        method,
        headers,
        body,
        whole,
        upgrade,
    } = call;
    // An upload that fails mid-send because of the caller (over the limit, stalled) is the
    // caller's error, never the provider's.
    let fault = match &body {
        ClientBody::Stream(u) => Some(u.fault()),
        ClientBody::Whole(_) => None,
    };
    let mut body = Some(body);
    let mut headers = Some(headers);
    let mut last = None;
    for index in std::iter::once(primary).chain(fallback) {
        let provider = &cfg.providers[index];
        let ticket = match rt.breakers.admit(index, cfg, metrics) {
            Ok(ticket) => ticket,
            Err(e) => {
                last = Some(e);
                continue;
            }
        };
        let Some(b) = body
            .take()
            .or_else(|| whole.cloned().map(ClientBody::Whole))
        else {
            break;
        };
        let h = if index == primary && fallback.is_some() {
            headers.clone().expect("headers kept for the fallback")
        } else {
            headers.take().expect("headers kept for the fallback")
        };
        let pq = if index == primary {
            Cow::Borrowed(path_and_query)
        } else {
            let mut p = route::upstream_path(&provider.base_url.path, rest);
            if let Some(q) = query {
                p.push('?');
                p.push_str(q);
            }
            Cow::Owned(p)
        };
        let mut req = upstream::build_request(provider, &pq, method.clone(), h, b.into())?;
        if let Some(v) = upgrade {
            tunnel::restore(req.headers_mut(), v.clone());
        }
        match rt.upstreams.send_checked(index, provider, req).await {
            Ok(resp) => {
                let stream = resp.status().is_success()
                    && resp
                        .headers()
                        .get(header::CONTENT_TYPE)
                        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
                match ticket {
                    Some(t) if stream => *deferred = Some(t),
                    Some(t) => t.record_status(resp.status().as_u16(), metrics),
                    None => {}
                }
                return Ok((index, resp));
            }
            Err((e, not_sent)) => {
                if let Some(f) = fault.as_ref().and_then(|f| f.get()) {
                    // The ticket is dropped unjudged: neither a success nor a failure.
                    return Err(f.to_edge());
                }
                if let Some(t) = ticket {
                    t.record(limit::breaker::Verdict::Failure, metrics);
                }
                if !not_sent {
                    return Err(e);
                }
                last = Some(e);
            }
        }
    }
    Err(last.expect("the primary is always tried"))
}

/// Reads `model` from a JSON body without changing it. `strict`: routing needs the model, so a body
/// that is not JSON is a 400; otherwise the upstream judges it.
fn peek_model(body: &[u8], strict: bool) -> Result<Option<String>, EdgeError> {
    #[derive(Deserialize)]
    struct Peek {
        #[serde(default)]
        model: Option<String>,
    }
    if body.is_empty() {
        return Ok(None);
    }
    match serde_json::from_slice::<Peek>(body) {
        Ok(p) => Ok(p.model),
        Err(e) if strict && (e.is_syntax() || e.is_eof()) => Err(EdgeError::BadJson(e.to_string())),
        // Valid JSON of another shape (an array, a non-string model): no model to route by.
        Err(_) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peek() {
        assert_eq!(
            peek_model(br#"{"model":"gpt-4o","x":[1,2]}"#, true)
                .unwrap()
                .as_deref(),
            Some("gpt-4o")
        );
        assert_eq!(peek_model(b"", true).unwrap(), None);
        assert_eq!(peek_model(b"[1]", true).unwrap(), None);
        assert!(matches!(
            peek_model(b"{nope", true),
            Err(EdgeError::BadJson(_))
        ));
        assert_eq!(peek_model(b"{nope", false).unwrap(), None);
    }
}
