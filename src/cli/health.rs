//! `relay health`: asks a running relay for `/healthz`, for container health checks (the runtime
//! image has no curl). Exit status 0 when it answers `200` within the timeout.
//!
//! The URL defaults to `http://127.0.0.1:<port of server.listen>/healthz`, or `https://localhost:...`
//! when `server.tls` is on, trusting relay's local CA (`auto`) or the configured certificate file,
//! beside the built-in Mozilla roots.

use std::time::Duration;

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
    let client = super::client::RelayClient::new(cfg)?;
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
