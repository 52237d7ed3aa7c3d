//! The upstream side: pooled HTTP clients and the request relay sends.
//!
//! One hyper-util client per distinct connection setting (HTTP/1.1 keep-alive pool by default; HTTP/2
//! when a provider sets `http2: true`), over rustls with the webpki roots plus `upstream.ca_file`. Clients survive config
//! reloads when their settings do not change, so a reload keeps warm connections.
//!
//! Headers: hop-by-hop headers (and those named in `Connection`) are removed both ways; `Host` comes
//! from the provider's URL; `Authorization`, `x-api-key`, `anthropic-version` and every other
//! end-to-end header pass through. When the caller sends no key and the provider has `api_key_env`,
//! the key is injected (`Authorization: Bearer` for OpenAI-kind, `x-api-key` for Anthropic-kind).

use std::collections::HashMap;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::{BaseUrl, Config, Provider, ProviderKind, Secret};
use crate::error::EdgeError;
use crate::wire::headers as names;

pub use super::client_body::UpstreamBody;

pub type HttpsClient = Client<HttpsConnector<HttpConnector>, UpstreamBody>;

/// What makes two providers able to share a client.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    http2: bool,
    connect_timeout: Duration,
    /// `upstream.ca_file`'s certificates, trusted beside the webpki roots.
    extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
}

/// Clients for every provider of one config, by provider index.
#[derive(Clone)]
pub struct Upstreams {
    by_key: HashMap<ClientKey, HttpsClient>,
    per_provider: Vec<HttpsClient>,
}

impl Upstreams {
    /// Builds clients for `cfg`, reusing those of `previous` whose settings match.
    pub fn new(cfg: &Config, previous: Option<&Upstreams>) -> Upstreams {
        let mut by_key: HashMap<ClientKey, HttpsClient> = HashMap::new();
        let per_provider = cfg
            .providers
            .iter()
            .map(|p| {
                let key = ClientKey {
                    http2: p.http2,
                    connect_timeout: p.timeouts.connect,
                    extra_roots: cfg.upstream.extra_roots.clone(),
                };
                by_key
                    .entry(key.clone())
                    .or_insert_with(|| {
                        previous
                            .and_then(|prev| prev.by_key.get(&key).cloned())
                            .unwrap_or_else(|| build_client(&key))
                    })
                    .clone()
            })
            .collect();
        Upstreams {
            by_key,
            per_provider,
        }
    }

    /// The client of provider `index`.
    pub fn client(&self, index: usize) -> &HttpsClient {
        &self.per_provider[index]
    }

    /// Sends `req` to provider `index`, waiting at most its `first_byte` timeout for the response
    /// headers. An error also says whether the request never left relay (the connection could
    /// not be made), so it may go to another endpoint or provider.
    pub async fn send(
        &self,
        index: usize,
        provider: &Provider,
        req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, (EdgeError, bool)> {
        let client = &self.per_provider[index];
        match tokio::time::timeout(provider.timeouts.first_byte, client.request(req)).await {
            Err(_elapsed) => Err((
                EdgeError::Timeout {
                    provider: provider.name.clone(),
                    timeout: provider.timeouts.first_byte,
                },
                false,
            )),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err((classify_error(provider, &e), e.is_connect())),
        }
    }
}

fn build_client(key: &ClientKey) -> HttpsClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(key.connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in &key.extra_roots {
        if let Err(e) = roots.add(cert.clone()) {
            tracing::warn!(error = %e, "upstream.ca_file: a certificate cannot be a trust root; skipped");
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let connector = if key.http2 {
        builder.enable_http2().wrap_connector(http)
    } else {
        builder.enable_http1().wrap_connector(http)
    };
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .http2_only(key.http2)
        .build(connector)
}

/// Maps a client error to the edge error the caller sees: timeouts (connect included) are 504,
/// everything else (refused, reset, TLS, DNS) is 502.
fn classify_error(provider: &Provider, e: &hyper_util::client::legacy::Error) -> EdgeError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    let mut detail = e.to_string();
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return EdgeError::Timeout {
                    provider: provider.name.clone(),
                    timeout: provider.timeouts.connect,
                };
            }
        }
        detail = format!("{detail}: {s}");
        source = s.source();
    }
    EdgeError::Unreachable {
        provider: provider.name.clone(),
        detail,
    }
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus `host`, which
/// relay sets from the provider URL.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The options a message's `Connection` headers list (`keep-alive`, `upgrade`, header names).
pub fn connection_options(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// Removes hop-by-hop headers, including any that `Connection` names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = connection_options(headers)
        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
        .collect();
    for n in &named {
        headers.remove(n);
    }
    for n in &HOP_BY_HOP {
        headers.remove(n);
    }
}

/// Builds the upstream request: the endpoint's URL, filtered headers, the injected key (when the
/// caller sent none), same body.
pub fn build_request(
    provider: &Provider,
    endpoint: &BaseUrl,
    key: Option<&Secret>,
    path_and_query: &str,
    method: http::Method,
    mut headers: HeaderMap,
    body: UpstreamBody,
) -> Result<Request<UpstreamBody>, EdgeError> {
    strip_hop_by_hop(&mut headers);
    headers.remove(header::HOST);
    inject_key(provider.kind, key, &mut headers);
    let uri = Uri::builder()
        .scheme(endpoint.scheme.clone())
        .authority(endpoint.authority.clone())
        .path_and_query(path_and_query)
        .build()
        .map_err(|e| EdgeError::ClientBody(format!("invalid request path: {e}")))?;
    let mut req = Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    Ok(req)
}

/// Whether the caller sent a credential (`Authorization`, `x-api-key`, `api-key`).
pub fn has_credentials(headers: &HeaderMap) -> bool {
    headers.contains_key(header::AUTHORIZATION)
        || headers.contains_key(names::X_API_KEY)
        || headers.contains_key("api-key")
}

/// Removes every credential a caller can send (`Authorization`, `x-api-key`, Azure's `api-key`).
pub fn strip_credentials(headers: &mut HeaderMap) {
    headers.remove(header::AUTHORIZATION);
    headers.remove(names::X_API_KEY);
    headers.remove("api-key");
}

/// Sets `key` as the credential of a `kind` provider, unless the caller sent one.
pub fn inject_key(kind: ProviderKind, key: Option<&Secret>, headers: &mut HeaderMap) {
    let Some(key) = key else { return };
    if headers.contains_key(header::AUTHORIZATION) || headers.contains_key("x-api-key") {
        return;
    }
    match kind {
        ProviderKind::Openai => {
            if let Ok(mut v) = HeaderValue::from_str(&format!("Bearer {}", key.expose())) {
                v.set_sensitive(true);
                headers.insert(header::AUTHORIZATION, v);
            }
        }
        ProviderKind::Anthropic => {
            if let Ok(mut v) = HeaderValue::from_str(key.expose()) {
                v.set_sensitive(true);
                headers.insert(names::X_API_KEY, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_removed_end_to_end_kept() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer sk-x"),
        );
        h.insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2, "{h:?}");
        assert!(h.contains_key(header::AUTHORIZATION) && h.contains_key("anthropic-version"));
    }
}
