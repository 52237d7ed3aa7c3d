//! `relay health`: asks a running relay for `/healthz`, for container health checks (the runtime
//! image has no curl). Exit status 0 when it answers `200` within the timeout.
//!
//! The URL defaults to `http://127.0.0.1:<port of server.listen>/healthz`, or `https://localhost:...`
//! when `server.tls` is on, trusting relay's local CA (`auto`) or the configured certificate file,
//! beside the built-in Mozilla roots.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::config::{Config, ServerTls};

/// How long the whole check may take.
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// The URL [`check`] asks when none is given.
pub fn default_url(cfg: &Config) -> String {
    let port = cfg.server.listen.port();
    match cfg.server.tls {
        ServerTls::Off => format!("http://127.0.0.1:{port}/healthz"),
        _ => format!("https://localhost:{port}/healthz"),
    }
}

/// GETs `url` (default [`default_url`]); `Ok` on a `200`.
pub async fn check(cfg: &Config, url: Option<&str>) -> Result<(), String> {
    let url = url.map(str::to_string).unwrap_or_else(|| default_url(cfg));
    let uri: http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let extra = match &cfg.server.tls {
        ServerTls::Off => Vec::new(),
        ServerTls::Auto => crate::tls::ca_dir(cfg)
            .ok()
            .and_then(|d| {
                crate::config::tls::read_cert_chain(&d.join(crate::tls::CA_CERT_FILE)).ok()
            })
            .unwrap_or_default(),
        ServerTls::Files { cert, .. } => {
            crate::config::tls::read_cert_chain(cert).unwrap_or_default()
        }
    };
    for c in extra {
        let _ = roots.add(c);
    }
    let tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let resp = tokio::time::timeout(TIMEOUT, client.get(uri))
        .await
        .map_err(|_| format!("{url}: no answer within {}s", TIMEOUT.as_secs()))?
        .map_err(|e| format!("{url}: {e}"))?;
    if resp.status() == http::StatusCode::OK {
        Ok(())
    } else {
        Err(format!("{url}: status {}", resp.status()))
    }
}
