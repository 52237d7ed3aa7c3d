//! Stage 1 of the pipeline: relay's own endpoints. `/` (what clients probe: `relay <version>`),
//! `/healthz` and `/metrics` are answered here, and
//! the API under `/relay` is dispatched to its handlers in [`crate::admin`] (the live feed
//! `/relay/events`, the cache admin API, `/relay/usage`) and [`super::pool_report`]
//! (`/relay/upstreams`); what is not relay's own goes on.
//!
//! `/relay/...` answers local callers only: it can read and delete every recording, and shows spending
//! by key. Others get a 404 there, as for any unknown path (`/relay/events` is open to them with
//! `server.events_remote: true`).

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response};
use hyper::body::Incoming;

use super::body::RelayBody;
use super::client_body;
use super::filter;
use super::state::State;
use crate::admin::{cache, keys, reply, usage};
use crate::error::EdgeError;
use crate::events;

/// `/relay` and below: relay's own API.
pub fn is_relay_api(path: &str) -> bool {
    path == RELAY_PREFIX || path.starts_with(RELAY_PREFIX_SLASH)
}

/// Stage 1: relay's own endpoints. Anything else is handed back to go on through the pipeline.
///
/// `/relay/...` (the cache admin API, `/relay/usage`) answers local callers only: it can read and
/// delete every recording, and shows spending by key. Others get a 404 there, as for any unknown
/// path.
pub async fn handle(
    state: &State,
    caller: filter::Caller,
    req: Request<Incoming>,
) -> Result<Response<RelayBody>, Request<Incoming>> {
    let path = req.uri().path();
    if is_relay_api(path) {
        return Ok(relay_api(state, caller, req).await);
    }
    let (content_type, body) = match path {
        // The root: what clients probe before their first call (Claude Code sends `HEAD /`).
        "/" if matches!(*req.method(), Method::GET | Method::HEAD) => (
            "text/plain; charset=utf-8",
            Bytes::from(concat!("relay ", env!("CARGO_PKG_VERSION"), "\n")),
        ),
        "/healthz" => ("application/json", health(state)),
        "/metrics" => {
            if let Some(cache) = &state.cache {
                match cache.store().stats().await {
                    Ok(s) => {
                        state.metrics.cache_entries.set(s.entries as i64);
                        state.metrics.cache_bytes.set(s.bytes as i64);
                    }
                    Err(_) => state
                        .metrics
                        .cache_errors
                        .with_label_values(&[cache.store().backend()])
                        .inc(),
                }
            }
            (
                "text/plain; version=0.0.4; charset=utf-8",
                Bytes::from(state.metrics.render()),
            )
        }
        _ => return Err(req),
    };
    let mut resp = Response::new(RelayBody::full(body));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok(resp)
}

/// `/healthz`: `{"status":"ok"}`, plus which backend serves when Redis is configured for the
/// cache (`"cache": "redis"` or `"redb"`, the local fallback) or the rate limits
/// (`"ratelimit": "redis"` or `"local"`).
fn health(state: &State) -> Bytes {
    let rt = state.runtime.load();
    let cfg = &rt.config;
    let mut body = String::from("{\"status\":\"ok\"");
    if cfg.cache.backend == crate::config::CacheBackend::Redis {
        if let Some(c) = &state.cache {
            body.push_str(&format!(",\"cache\":\"{}\"", c.store().backend()));
        }
    }
    if cfg.limits.backend == crate::config::LimitBackend::Redis {
        let redis = state
            .metrics
            .ratelimit_backend
            .with_label_values(&["redis"])
            .get();
        let local = state
            .metrics
            .ratelimit_backend
            .with_label_values(&["local"])
            .get();
        if redis + local > 0 {
            let b = if redis > 0 { "redis" } else { "local" };
            body.push_str(&format!(",\"ratelimit\":\"{b}\""));
        }
    }
    body.push('}');
    Bytes::from(body)
}

/// Relay's own API under `/relay`.
const RELAY_PREFIX: &str = "/relay";
const RELAY_PREFIX_SLASH: &str = "/relay/";

/// Whether a caller may use the `/relay/...` endpoint at `path`: local callers and those that
/// present the admin key (`auth.admin_key`) always; others only `/relay/events`, and only with
/// `server.events_remote: true`.
fn relay_api_allowed(path: &str, local: bool, events_remote: bool) -> bool {
    local || (events_remote && path == events::PATH)
}

/// Whether the request presents the admin key (`Authorization: Bearer <key>` or `x-api-key`).
pub fn presents_admin_key(auth: &crate::config::AuthConfig, headers: &http::HeaderMap) -> bool {
    match &auth.admin_key {
        Some(admin) => {
            crate::wire::headers::presented_key(headers).is_some_and(|k| admin.matches(&k))
        }
        None => false,
    }
}

/// `/relay/...`: local callers only (and `/relay/events` for anyone with
/// `server.events_remote: true`).
async fn relay_api(
    state: &State,
    caller: filter::Caller,
    req: Request<Incoming>,
) -> Response<RelayBody> {
    let path = req.uri().path();
    let rt = state.runtime.load();
    let admin = presents_admin_key(&rt.config.auth, req.headers());
    let allowed = relay_api_allowed(path, caller.local || admin, rt.config.server.events_remote);
    drop(rt);
    if path == events::PATH && allowed {
        return events::stream::response(state.events.subscribe()).map(RelayBody::stream);
    }
    let found = if !allowed {
        None
    } else if path == crate::cost::report::PATH {
        Some(if req.method() == Method::GET {
            let records = state
                .keys
                .get()
                .map(|k| k.ring.records())
                .unwrap_or_default();
            let budgets =
                usage::named_budgets(&state.runtime.load().cost, records.iter().map(|r| &**r));
            usage::api(&state.cost, req.uri().query(), &budgets).await
        } else {
            reply::error(http::StatusCode::METHOD_NOT_ALLOWED, "use GET")
        })
    } else if path == super::pool_report::PATH {
        let rt = state.runtime.load();
        Some(reply::json(
            http::StatusCode::OK,
            &super::pool_report::report(&rt.config, &rt.pools),
        ))
    } else if let Some(id) = path.strip_prefix(WHY_PREFIX) {
        Some(why(state, id).await)
    } else if path == keys::PREFIX || path.starts_with(&format!("{}/", keys::PREFIX)) {
        let config = state.runtime.load().config.clone();
        Some(match state.keys.open(&config).await {
            Ok(k) => match own_body(state, req).await {
                Ok((req, _held)) => {
                    let (parts, body) = req.into_parts();
                    let body = http_body_util::BodyExt::collect(body)
                        .await
                        .map(|c| c.to_bytes())
                        .unwrap_or_default();
                    keys::handle(k, state.cost.clone(), &parts.method, parts.uri.path(), body).await
                }
                Err(e) => reply::error(e.status(), &e.to_string()),
            },
            Err(e) => reply::error(http::StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        })
    } else if path == cache::PREFIX || path.starts_with(&format!("{}/", cache::PREFIX)) {
        match &state.cache {
            Some(c) => Some(match own_body(state, req).await {
                Ok((req, _held)) => cache::handle(c.store(), req).await,
                Err(e) => reply::error(e.status(), &e.to_string()),
            }),
            None => Some(reply::error(
                http::StatusCode::SERVICE_UNAVAILABLE,
                "the cache is off (cache.enabled: false)",
            )),
        }
    } else {
        None
    };
    found
        .unwrap_or_else(|| reply::error(http::StatusCode::NOT_FOUND, "no such relay endpoint"))
        .map(RelayBody::full)
}

/// `GET /relay/cache/why/<request id>`: why a request missed the cache (its keys, a recording its
/// portable form would replay, the nearest recording and where it differs).
const WHY_PREFIX: &str = "/relay/cache/why/";

async fn why(state: &State, request_id: &str) -> Response<Bytes> {
    let Some(c) = &state.cache else {
        return reply::error(
            http::StatusCode::SERVICE_UNAVAILABLE,
            "the cache is off (cache.enabled: false)",
        );
    };
    match c.why(request_id).await {
        Some(why) => reply::json(http::StatusCode::OK, &why),
        None => reply::error(
            http::StatusCode::NOT_FOUND,
            &format!("relay remembers no cache miss with request id {request_id:?} (it keeps the latest misses since it started, about 16 MiB of requests; hits are not kept)"),
        ),
    }
}

/// A request to relay's own API with its body read whole, under `server.max_body_bytes`,
/// `server.body_read_timeout` and the server's body budget, as any request relay reads.
async fn own_body(
    state: &State,
    req: Request<Incoming>,
) -> Result<(Request<http_body_util::Full<Bytes>>, client_body::Buffered), EdgeError> {
    let server = &state.runtime.load().config.server;
    let bounds = client_body::Bounds {
        max_bytes: server.max_body_bytes,
        stall: server.body_read_timeout,
    };
    let (parts, body) = req.into_parts();
    let declared = client_body::declared_length(&parts.headers);
    let (bytes, held) = client_body::read_whole(body, declared, bounds, &state.bodies).await?;
    Ok((
        Request::from_parts(parts, http_body_util::Full::new(bytes)),
        held,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_api_is_loopback_only_but_events_can_be_opened() {
        let (lan, lan6, local, local6) = (false, false, true, true);
        let admin = [
            crate::cost::report::PATH,
            cache::PREFIX,
            "/relay/cache/entries",
            "/relay",
            "/relay/nope",
            "/relay/events/x",
        ];
        for remote in [false, true] {
            for ip in [local, local6] {
                assert!(relay_api_allowed(events::PATH, ip, remote));
                for p in admin {
                    assert!(relay_api_allowed(p, ip, remote), "{p}");
                }
            }
            for ip in [lan, lan6] {
                assert_eq!(relay_api_allowed(events::PATH, ip, remote), remote);
                for p in admin {
                    assert!(!relay_api_allowed(p, ip, remote), "{p} {remote}");
                }
            }
        }
    }
}
