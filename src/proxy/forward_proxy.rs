//! Forward-proxy mode: relay as `HTTPS_PROXY` / `HTTP_PROXY`, for apps that hard-code
//! `https://api.openai.com` and cannot be given a base URL.
//!
//! What comes in: every request on relay's listener passes [`handle`] first.
//! - `CONNECT host:port` to a host that maps to a provider (`api.openai.com`, `api.anthropic.com`,
//!   the host of any `base_url`; `proxy.intercept` narrows or turns this off): relay answers `200`,
//!   takes over the tunnel, terminates TLS with a certificate for that host signed by its local CA
//!   (made on demand, kept in memory), and runs each decrypted request through the normal pipeline
//!   ([`pipeline::handle`]) as the explicit-provider path `/<provider>/v1/...`, so the cache, limits,
//!   cost and events all apply.
//! - `CONNECT` to any other host: a blind byte tunnel (`copy_bidirectional`); relay never sees the
//!   plaintext and the client sees the origin's own certificate.
//! - An HTTP/1 absolute-form request (`GET http://host/path`): to a provider host it goes through the
//!   pipeline the same way; to relay's own address it is an ordinary request; to any other host it is
//!   forwarded as a plain HTTP proxy would.
//! - Anything else goes straight to [`pipeline::handle`].
//!
//! Blind tunnels and plain forwarding to non-provider hosts are served to loopback peers only, so a
//! relay listening on all interfaces is not an open proxy (others get `403`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ServerConfig;
use tokio::net::TcpStream;
use tokio::sync::{watch, OnceCell};

use super::body::RelayBody;
use super::conn;
use super::filter;
use super::held::Held;
use super::pipeline::{self, State};
use super::upstream::strip_hop_by_hop;
use crate::error::{Dialect, EdgeError};
use crate::tls::{self, LocalCa, TlsError};

/// How long relay waits to connect a blind tunnel or a plain-HTTP origin.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client has to finish the TLS handshake inside an intercepted tunnel.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest silence between two chunks of a plain-HTTP forwarded response.
const PLAIN_IDLE: Duration = Duration::from_secs(300);

/// The forward-proxy side of one server: the local CA (opened on first interception), the
/// per-host TLS configs made with it, and a plain HTTP client.
pub struct Forward {
    ca_dir: Result<PathBuf, String>,
    ca: OnceCell<Arc<LocalCa>>,
    /// Intercepted host (lower case) → its TLS config. Read once per `CONNECT`, written once per
    /// new host.
    hosts: RwLock<HashMap<String, Arc<ServerConfig>>>,
    plain: Client<HttpConnector, Incoming>,
    /// relay's own listening address (an absolute-form request to it is an ordinary request).
    local: SocketAddr,
    /// The server's shutdown signal: intercepted connections finish their requests and close.
    shutdown: watch::Receiver<bool>,
}

impl Forward {
    /// `ca_dir`: where the local CA lives (see [`tls::ca_dir`]); `local`: the bound address;
    /// `shutdown`: the server's shutdown signal.
    pub fn new(
        ca_dir: Result<PathBuf, TlsError>,
        local: SocketAddr,
        shutdown: watch::Receiver<bool>,
    ) -> Forward {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.set_nodelay(true);
        Forward {
            ca_dir: ca_dir.map_err(|e| e.to_string()),
            ca: OnceCell::new(),
            hosts: RwLock::new(HashMap::new()),
            plain: Client::builder(TokioExecutor::new())
                .pool_timer(TokioTimer::new())
                .build(http),
            local,
            shutdown,
        }
    }

    /// The local CA, opened (or made) on first use on the blocking pool.
    pub async fn ca(&self) -> Result<Arc<LocalCa>, String> {
        self.ca
            .get_or_try_init(|| async {
                let dir = self.ca_dir.clone()?;
                tokio::task::spawn_blocking(move || LocalCa::load_or_create(&dir))
                    .await
                    .map_err(|e| e.to_string())?
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            })
            .await
            .cloned()
    }

    /// The TLS config that presents a certificate for `host`, made and cached on first use.
    async fn host_config(&self, host: &str) -> Result<Arc<ServerConfig>, String> {
        if let Some(c) = self.hosts.read().expect("not poisoned").get(host) {
            return Ok(c.clone());
        }
        let ca = self.ca().await?;
        // An IPv6 authority is bracketed (`[::1]`); the certificate names the bare address.
        let name = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let cfg = tokio::task::spawn_blocking(move || {
            let (ck, _, _) = ca.issue(&[&name])?;
            tls::server_config(ck)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        self.hosts
            .write()
            .expect("not poisoned")
            .insert(host.to_string(), cfg.clone());
        Ok(cfg)
    }

    /// True when `authority` names relay itself (its port on a loopback, unspecified or bound
    /// address, or `localhost`).
    fn is_self(&self, host: &str, port: u16) -> bool {
        if port != self.local.port() {
            return false;
        }
        if host.eq_ignore_ascii_case("localhost") {
            return true;
        }
        match host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
        {
            Ok(ip) => ip.is_loopback() || ip.is_unspecified() || ip == self.local.ip(),
            Err(_) => false,
        }
    }
}

/// The service every connection runs: forward-proxy requests here, everything else to the pipeline.
pub async fn handle(
    fwd: Arc<Forward>,
    state: Arc<State>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<RelayBody>, Infallible> {
    if req.method() == Method::CONNECT {
        return Ok(connect(fwd, state, peer, req).await);
    }
    // HTTP/2 requests always carry scheme and authority; only HTTP/1's absolute form is a proxy
    // request.
    let absolute = matches!(req.version(), Version::HTTP_10 | Version::HTTP_11)
        && req.uri().scheme().is_some();
    if absolute {
        if let Some(authority) = req.uri().authority().cloned() {
            let https = req.uri().scheme() == Some(&http::uri::Scheme::HTTPS);
            let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
            let host = authority.host().to_ascii_lowercase();
            if !fwd.is_self(&host, port) {
                return Ok(absolute_form(fwd, state, peer, req, &host, port).await);
            }
        }
    }
    pipeline::handle(state, peer, req).await
}

/// `CONNECT host:port`.
async fn connect(
    fwd: Arc<Forward>,
    state: Arc<State>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<RelayBody> {
    let Some((host, port)) = req
        .uri()
        .authority()
        .map(|a| (a.host().to_ascii_lowercase(), a.port_u16().unwrap_or(443)))
    else {
        return proxy_error(EdgeError::BadProxyRequest {
            code: "bad_connect_target",
            why: "CONNECT needs host:port".to_string(),
        });
    };
    let target = {
        let rt = state.runtime.load();
        rt.config
            .proxy
            .intercepts(&rt.config.providers, &host, port)
            .map(|t| (rt.config.providers[t.provider].name.clone(), t.api_root))
    };
    match target {
        Some((provider, api_root)) => {
            let tls = match fwd.host_config(&host).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(%host, error = %e, "cannot make a certificate to intercept");
                    return proxy_error(EdgeError::LocalCa {
                        host: host.clone(),
                        detail: e,
                    });
                }
            };
            tracing::debug!(%host, %provider, "CONNECT intercepted");
            let held = state.held.hold();
            let shutdown = fwd.shutdown.clone();
            tokio::spawn(intercept(
                req,
                tls,
                state,
                peer,
                (provider, api_root),
                held,
                shutdown,
            ));
            Response::new(RelayBody::full(Bytes::new()))
        }
        None => {
            if !local_caller(&state, peer, req.headers()) {
                return forbidden(&host);
            }
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            let upstream =
                match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((bare, port))).await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        return proxy_error(EdgeError::Unreachable {
                            provider: format!("{host}:{port}"),
                            detail: e.to_string(),
                        })
                    }
                    Err(_) => {
                        return proxy_error(EdgeError::Timeout {
                            provider: format!("{host}:{port}"),
                            timeout: CONNECT_TIMEOUT,
                        })
                    }
                };
            tracing::debug!(%host, port, "CONNECT tunnelled");
            tokio::spawn(tunnel(req, upstream, state.held.hold()));
            Response::new(RelayBody::full(Bytes::new()))
        }
    }
}

/// The blind tunnel, once the client has the `200`; open until either side closes or shutdown's
/// time is up.
async fn tunnel(req: Request<Incoming>, mut upstream: TcpStream, held: Held) {
    let upgraded = match hyper::upgrade::on(req).await {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!(error = %e, "CONNECT upgrade failed");
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let mut client = TokioIo::new(upgraded);
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut upstream) => if let Err(e) = r {
            tracing::debug!(error = %e, "tunnel ended with an error");
        },
        _ = held.cut() => tracing::debug!("tunnel cut at shutdown"),
    }
}

/// The intercepted tunnel: TLS with relay's certificate for the host, then HTTP/1.1 or HTTP/2
/// (ALPN), each request through the pipeline as `/<provider>/v1/...`.
async fn intercept(
    req: Request<Incoming>,
    tls: Arc<ServerConfig>,
    state: Arc<State>,
    peer: SocketAddr,
    (provider, api_root): (String, String),
    held: Held,
    mut shutdown: watch::Receiver<bool>,
) {
    let upgraded = match hyper::upgrade::on(req).await {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!(error = %e, "CONNECT upgrade failed");
            return;
        }
    };
    // The tunnel's inner connection has the same idle and header timers as any other.
    let (timers, max_header_bytes) = {
        let rt = state.runtime.load();
        let s = &rt.config.server;
        (conn::Timers::of(s), s.max_header_bytes)
    };
    let watch = conn::Watch::new(timers);
    let io = conn::WatchedIo::new(TokioIo::new(upgraded), watch.clone());
    let accept = tokio_rustls::TlsAcceptor::from(tls).accept(io);
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            // Typically: the client does not trust relay's CA (see `relay ca path`).
            tracing::warn!(%provider, error = %e, "TLS handshake in an intercepted tunnel failed (does the client trust relay's CA? see `relay ca path`)");
            return;
        }
        Err(_) => return,
    };
    let (provider, api_root) = (Arc::new(provider), Arc::new(api_root));
    let service_watch = watch.clone();
    let svc = service_fn(move |req: Request<Incoming>| {
        let state = state.clone();
        let (provider, api_root) = (provider.clone(), api_root.clone());
        let active = service_watch.begin();
        async move {
            let resp = match rewrite(req, &provider, &api_root) {
                Ok(req) => pipeline::handle(state, peer, req).await?,
                Err(resp) => *resp,
            };
            Ok::<_, Infallible>(resp.map(|b| conn::Tracked::new(b, active)))
        }
    });
    let builder = conn::http_builder(max_header_bytes);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    // On shutdown: finish the requests in flight (streams included), then close, as the server
    // does with its own connections; the server's drain waits for this (`held`), and cuts it when
    // its time is up.
    let ended = tokio::select! {
        r = conn.as_mut() => r,
        why = watch.expired() => {
            tracing::debug!(reason = why.as_str(), "closing an intercepted connection");
            Ok(())
        }
        _ = async { drop(shutdown.wait_for(|s| *s).await) } => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                r = conn => r,
                _ = held.cut() => Ok(()),
            }
        }
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, "intercepted connection ended with an error");
    }
    drop(held);
}

/// `<api_root>/<rest>` on the provider's host → `/<provider>/v1/<rest>`, the explicit-provider path
/// the pipeline routes without looking at the body. A path outside the API root is a 404.
fn rewrite<B>(
    mut req: Request<B>,
    provider: &str,
    api_root: &str,
) -> Result<Request<B>, Box<Response<RelayBody>>> {
    let normalized = filter::normalize_path(req.uri().path()).ok();
    let path = normalized.as_deref().unwrap_or(req.uri().path());
    let tail = match path.strip_prefix(api_root) {
        Some(t) if t.is_empty() || t.starts_with('/') => t,
        _ => {
            let e = EdgeError::NoRoute {
                method: req.method().to_string(),
                path: path.to_string(),
                model: None,
            };
            let id = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()).expect("ASCII");
            let dialect = Dialect::of(path, req.headers());
            return Err(Box::new(e.to_response(dialect, &id).map(RelayBody::full)));
        }
    };
    let mut pq = format!("/{provider}/v1{tail}");
    if let Some(q) = req.uri().query() {
        pq.push('?');
        pq.push_str(q);
    }
    match Uri::builder().path_and_query(pq).build() {
        Ok(uri) => {
            *req.uri_mut() = uri;
            Ok(req)
        }
        Err(e) => Err(Box::new(proxy_error(EdgeError::BadProxyRequest {
            code: "bad_request_path",
            why: e.to_string(),
        }))),
    }
}

/// `GET http://host/...` sent to relay as a proxy.
async fn absolute_form(
    fwd: Arc<Forward>,
    state: Arc<State>,
    peer: SocketAddr,
    req: Request<Incoming>,
    host: &str,
    port: u16,
) -> Response<RelayBody> {
    let target = {
        let rt = state.runtime.load();
        rt.config
            .proxy
            .intercepts(&rt.config.providers, host, port)
            .map(|t| (rt.config.providers[t.provider].name.clone(), t.api_root))
    };
    if let Some((provider, api_root)) = target {
        return match rewrite(req, &provider, &api_root) {
            Ok(req) => match pipeline::handle(state, peer, req).await {
                Ok(resp) => resp,
                Err(never) => match never {},
            },
            Err(resp) => *resp,
        };
    }
    if !local_caller(&state, peer, req.headers()) {
        return forbidden(host);
    }
    if req.uri().scheme() != Some(&http::uri::Scheme::HTTP) {
        return proxy_error(EdgeError::BadProxyRequest {
            code: "bad_proxy_request",
            why: "only http:// URLs can be proxied in absolute form; use CONNECT for https"
                .to_string(),
        });
    }
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.version = Version::HTTP_11;
    let req = Request::from_parts(parts, body);
    match fwd.plain.request(req).await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, RelayBody::upstream(body, PLAIN_IDLE))
        }
        Err(e) => proxy_error(EdgeError::Unreachable {
            provider: format!("{host}:{port}"),
            detail: e.to_string(),
        }),
    }
}

/// Whether the caller is this machine ([`filter::caller`]: IPv4-mapped loopback counts, a request
/// forwarded by an untrusted proxy does not).
fn local_caller(state: &State, peer: SocketAddr, headers: &http::HeaderMap) -> bool {
    let rt = state.runtime.load();
    filter::caller(peer, headers, &rt.config.server.trusted_proxies).local
}

/// 403 for a non-loopback peer asking relay to reach a host that is not a provider.
fn forbidden(host: &str) -> Response<RelayBody> {
    proxy_error(EdgeError::ProxyForbidden {
        host: host.to_string(),
    })
}

/// The forward proxy's errors are edge errors like any other, in the OpenAI shape (a proxy
/// client speaks no provider's dialect), with `x-relay-error` and a request id.
fn proxy_error(e: EdgeError) -> Response<RelayBody> {
    let id = HeaderValue::try_from(uuid::Uuid::new_v4().to_string()).expect("a uuid is ASCII");
    e.to_response(Dialect::OpenAi, &id).map(RelayBody::full)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(uri: &str, provider: &str, root: &str) -> Result<String, u16> {
        let req = Request::get(uri).body(()).unwrap();
        rewrite(req, provider, root)
            .map(|r| r.uri().to_string())
            .map_err(|r| r.status().as_u16())
    }

    #[test]
    fn rewrites_to_the_explicit_provider_path() {
        assert_eq!(
            path("/v1/chat/completions?x=1", "openai", "/v1").unwrap(),
            "/openai/v1/chat/completions?x=1"
        );
        assert_eq!(
            path("https://api.anthropic.com/v1/messages", "anthropic", "/v1").unwrap(),
            "/anthropic/v1/messages"
        );
        assert_eq!(
            path("/openai/v1/models", "groq", "/openai/v1").unwrap(),
            "/groq/v1/models"
        );
        assert_eq!(path("/x/models", "p", "").unwrap(), "/p/v1/x/models");
        assert_eq!(path("/healthz", "openai", "/v1"), Err(404));
        assert_eq!(path("/v1beta/x", "openai", "/v1"), Err(404));
    }
}
