//! The request pipeline, top to bottom: [`handle`] for every request, [`forward`] for what goes
//! upstream. Every request meets these stages in this order (3 to 9 are the small types of
//! [`super::stages`], each with one method that goes on or answers):
//!
//! 0. **request filter** ([`super::filter`]): the path is normalised (above the root: 400), and
//!    browser requests from other sites (403), `text/plain` and form bodies (415) and, for relay's
//!    own API, `Host`s that are not loopback or configured (403) are refused;
//! 1. **admin** ([`super::admin`]): `/healthz`, `/metrics` and `/relay/...` are answered there;
//! 2. **context**: the request's [`RequestContext`] opens (request id, in-flight gauge, live feed);
//! 3. **route by path** (`RouteByPath`): `/<provider>/v1/...` or `/v1/...`, anything else is 404;
//!    then **authenticate** (`Authenticate`, with `auth.enabled`): no relay key, or an unknown,
//!    revoked, rotated or expired one, is 401 before the body is read;
//! 4. **read body** (`ReadBody`): JSON bodies are read whole, within `server.max_body_bytes` (413),
//!    `server.body_read_timeout` (408) and `max_buffered_bytes` (503), and peeked for the model;
//!    other bodies (uploads) stream through under the same bounds;
//! 5. **route by model** (`RouteByModel`): the route table picks the provider (400 when it needs a
//!    model and the body is not JSON, 404 when nothing matches); a relay key limited to some
//!    models may use only those (`KeyModels`, 403);
//! 6. **cost** (`Meter`), **cache** (`CacheLookup`: a hit is replayed with its saved cost, an
//!    identical request in flight is shared, an offline miss is 400), **budget** (`BudgetCheck`:
//!    429 `budget_exceeded`; else the most the request can cost is reserved until it settles),
//!    **request filters** (`RequestFilters`: `include_usage` injected, cache controls removed);
//! 7. **rate limit** (`RateLimit`, after a miss: hits are never limited): pass, queue for the slot
//!    (`on_limit: wait`) or 429;
//! 8. **circuit + upstream** (`Upstream`): the breaker lets the call through or refuses it (503),
//!    the route's `fallback` taking over while it is open or when the connection fails; the request
//!    goes out byte-for-byte (502 unreachable, 504 timeout); upstream 4xx/5xx come back unchanged;
//!    a metered JSON answer is then held to its end ([`super::json_answer`]) so its headers carry
//!    its cost (`x-relay-cost-usd`, `x-relay-tokens`);
//! 9. **response filters** (`ResponseFilters`): hop-by-hop headers out (a WebSocket's 101 is
//!    spliced, [`super::tunnel`]), `x-request-id`, `x-ratelimit-*`, the cache's tap and headers and
//!    the cost meter on; the body streams frame by frame through those per-chunk filters;
//! 10. **finish** ([`super::finish`]): when the body is over, the one closing phase.
//!
//! The config is read once per request (one atomic load); a reload mid-request does not affect it.

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;

use super::admin::{self, is_relay_api};
use super::body::RelayBody;
use super::cache as stage;
use super::call::{Call, Upstream};
use super::context::RequestContext;
use super::filter;
use super::json_answer::HoldJson;
use super::responses_ws;
use super::route::{self, PathTarget};
use super::stages::{
    fail_lead, Answering, Authenticate, BudgetCheck, CacheLookup, Flow, KeyModels, Meter,
    RateLimit, ReadBody, RequestFilters, ResponseFilters, RouteByModel, RouteByPath,
};
pub use super::state::{Runtime, State};
use super::tunnel;
use crate::config::ServerConfig;
use crate::error::{Dialect, EdgeError};
use crate::metrics::Metrics;
use crate::wire::headers as names;

/// The pipeline as a Responses WebSocket runs its turns: one request each, from the socket's peer.
fn turns(state: Arc<State>, peer: SocketAddr) -> responses_ws::Pipeline {
    Arc::new(move |req| {
        let state = state.clone();
        Box::pin(async move {
            match handle(state, peer, req).await {
                Ok(resp) => resp,
                Err(never) => match never {},
            }
        })
    })
}

/// The hyper service function.
pub async fn handle(
    state: Arc<State>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<RelayBody>, Infallible> {
    let started = Instant::now();
    let rt = state.runtime.load_full();
    let req = match request_filter(&rt.config.server, &rt.config.auth, &state.metrics, req) {
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
    let resp = match forward(&rt, &state, peer, &mut x, req).await {
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
    auth: &crate::config::AuthConfig,
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
        // A caller with the admin key is no page a browser was tricked into (DNS rebinding).
        && !admin::presents_admin_key(auth, req.headers())
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

/// Stages 3 to 9, in request order (see [`super::stages`]). Each stage either goes on or answers;
/// what it learns goes on the request's context `x`.
async fn forward(
    rt: &Runtime,
    state: &Arc<State>,
    peer: SocketAddr,
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

    let target = RouteByPath { cfg }.run(&parts.method, &parts.uri)?;
    if cfg.auth.enabled {
        let keys = state.keys.get();
        let auth = Authenticate {
            keys: keys.as_deref(),
            now_ms: state.cost.now_ms(),
        };
        auth.run(x, &parts.headers)?;
    }
    let strict = matches!(target, PathTarget::Table { path } if route::needs_model(cfg, path));
    let read = ReadBody {
        server: &cfg.server,
        budget: &state.bodies,
    };
    let body = read.run(x, &parts, body, strict, upgrade.is_some()).await?;
    let route = RouteByModel {
        cfg,
        prices: &rt.cost.prices,
        now_ms: state.cost.now_ms(),
    };
    let routed = route.run(x, &parts, target)?;
    KeyModels.run(x)?;
    let provider = &cfg.providers[routed.index];
    if upgrade.is_some()
        && responses_ws::terminates(&parts.method, &parts.headers, x.endpoint, provider.kind)
    {
        // The Responses API over a WebSocket: relay ends it, each turn is a request of its own.
        let resp = responses_ws::accept(&parts.headers)?;
        if let Some((_, Some(caller))) = upgrade {
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            responses_ws::serve(
                caller,
                responses_ws::Opened {
                    pipeline: turns(state.clone(), peer),
                    path: path.split('?').next().unwrap_or(path).to_string(),
                    headers: parts.headers.clone(),
                    held: state.held.hold(),
                },
            );
        }
        return Ok(resp);
    }
    let whole = body.whole().cloned();
    let meter = Meter {
        book: &rt.cost,
        acct: &state.cost,
    };
    let cost = meter.run(x, provider, &parts, whole.as_ref());
    let lookup = CacheLookup {
        cache: state.cache.as_ref(),
        cfg: &cfg.cache,
        metrics,
    };
    let miss = match lookup
        .run(
            x,
            &parts,
            &provider.name,
            &routed.path_and_query,
            whole.as_ref(),
            cost.as_ref(),
        )
        .await?
    {
        Flow::Respond(resp) => return Ok(*resp),
        Flow::Next(miss) => miss,
    };
    // From here on a failure also fails the single flight this request leads.
    let budget = BudgetCheck {
        book: &rt.cost,
        acct: &state.cost,
    };
    if let Err(e) = budget.run(x, cost.as_ref()).await {
        return Err(fail_lead(miss.lead, e));
    }
    let recorded = miss
        .lookup
        .as_ref()
        .is_some_and(|l| l.status != stage::Status::Bypass);
    let inject = cost.as_ref().is_some_and(|c| c.inject);
    let body = RequestFilters.run(&mut parts.headers, body, inject, recorded);
    // What goes upstream when relay read it whole (usage injection included): a fallback sends it
    // again.
    let sent_whole = body.whole().cloned();
    let limits = RateLimit {
        limiter: &rt.limiter,
        metrics,
    };
    let admitted = match limits.run(x, whole.as_ref()).await {
        Ok(admitted) => admitted,
        Err(e) => return Err(fail_lead(miss.lead, e)),
    };
    parts
        .headers
        .entry("x-request-id")
        .or_insert_with(|| x.request_id.clone());
    if x.caller.key.is_some() {
        // The relay key stays here; the provider's own key goes upstream.
        super::upstream::strip_credentials(&mut parts.headers);
    }
    let call = Call {
        routed: &routed,
        query: parts.uri.query(),
        method: parts.method.clone(),
        headers: parts.headers,
        body,
        whole: sent_whole.as_ref(),
        upgrade: upgrade.as_ref().map(|(v, _)| v),
    };
    let called = match (Upstream { rt, metrics }).run(x, call).await {
        Ok(called) => called,
        Err(e) => {
            if let Some(tokens) = x.tokens.take() {
                tokens.settle(0); // no answer: nothing to meter, the reservation goes back
            }
            return Err(fail_lead(miss.lead, e));
        }
    };
    let index = called.index;
    let hold = HoldJson {
        cost: cost.as_ref(),
        provider: &cfg.providers[index].name,
        idle: cfg.providers[index].timeouts.idle,
    };
    let (resp, held) = match hold.run(x, called.resp, called.read).await {
        Ok(held) => held,
        Err(e) => return Err(fail_lead(miss.lead, e)),
    };
    let respond = ResponseFilters {
        cache: state.cache.as_ref(),
        metrics,
        held: &state.held,
    };
    Ok(respond.run(
        x,
        resp,
        Answering {
            provider: &cfg.providers[index],
            method: &parts.method,
            path_and_query: &routed.path_and_query,
            request: whole,
            cost: cost.as_ref(),
            admitted: &admitted,
            miss,
            upgrade,
            held,
        },
    ))
}
