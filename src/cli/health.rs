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

/// `relay health --verbose`: [`check`], then the relay's `/relay/upstreams` as text: each
/// provider's endpoints (circuit, health, latency, tries) and keys (alias or hash prefix).
pub async fn verbose(cfg: &Config, url: Option<&str>) -> Result<String, String> {
    check(cfg, url).await?;
    let health = url.map(str::to_string).unwrap_or_else(|| default_url(cfg));
    let uri: http::Uri = health.parse().map_err(|e| format!("{health}: {e}"))?;
    let mut parts = uri.into_parts();
    parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/relay/upstreams"));
    let uri = http::Uri::from_parts(parts).map_err(|e| e.to_string())?;
    let client = super::client::RelayClient::new(cfg)?;
    let resp = tokio::time::timeout(TIMEOUT, client.get(uri.clone()))
        .await
        .map_err(|_| format!("{uri}: no answer within {}s", TIMEOUT.as_secs()))?
        .map_err(|e| format!("{uri}: {e}"))?;
    let status = resp.status();
    let body = tokio::time::timeout(TIMEOUT, http_body_util::BodyExt::collect(resp.into_body()))
        .await
        .map_err(|_| format!("{uri}: the answer stalled"))?
        .map_err(|e| format!("{uri}: {e}"))?
        .to_bytes();
    if status == http::StatusCode::NOT_FOUND {
        return Err(format!(
            "{uri}: not found (relay answers /relay/... to local callers only)"
        ));
    }
    if !status.is_success() {
        return Err(format!("{uri}: status {status}"));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| format!("{uri}: not JSON: {e}"))?;
    Ok(render(&v))
}

/// The text of a `/relay/upstreams` answer.
pub fn render(v: &serde_json::Value) -> String {
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("").to_string();
    let mut out = String::from("healthy\n");
    for p in v["providers"].as_array().into_iter().flatten() {
        let check = match p["health_check"].as_str() {
            Some(h) => format!(", health check {h}"),
            None => String::new(),
        };
        out.push_str(&format!(
            "\n{} ({}, {}{check})\n",
            s(&p["name"]),
            s(&p["kind"]),
            s(&p["strategy"])
        ));
        let mut rows = vec![[
            "  endpoint",
            "url",
            "weight",
            "circuit",
            "health",
            "latency",
            "in flight",
            "tries",
            "failed",
        ]
        .map(String::from)
        .to_vec()];
        for e in p["endpoints"].as_array().into_iter().flatten() {
            let n = |k: &str| e[k].as_u64().unwrap_or(0).to_string();
            rows.push(vec![
                format!("  {}", s(&e["name"])),
                s(&e["url"]),
                s(&e["circuit"]).replace('_', "-"),
                match e["healthy"].as_bool() {
                    Some(true) => "ok".into(),
                    Some(false) => "failing".into(),
                    None => "-".into(),
                },
                n("weight"),
                e["latency_ms"]
                    .as_f64()
                    .map_or("-".into(), |ms| format!("{ms:.1} ms")),
                n("in_flight"),
                n("requests"),
                n("failures"),
            ]);
        }
        out.push_str(&super::table::aligned(&rows, 4, false));
        let keys: Vec<String> = p["keys"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|k| match k["resting_s"].as_f64() {
                Some(r) => format!("{} resting {r:.1} s", s(&k["key"])),
                None => format!("{} serving", s(&k["key"])),
            })
            .collect();
        if !keys.is_empty() {
            out.push_str(&format!("  keys: {}\n", keys.join(", ")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_endpoints_and_keys() {
        let v = serde_json::json!({"providers": [{
            "name": "openai", "kind": "openai", "strategy": "weighted",
            "health_check": "every 10s, GET <url>/models",
            "endpoints": [
                {"name": "east:9001", "url": "http://east:9001/v1", "weight": 3, "circuit": "closed",
                 "healthy": true, "latency_ms": 12.34, "in_flight": 1, "requests": 10, "failures": 0},
                {"name": "west:9002", "url": "http://west:9002/v1", "weight": 1, "circuit": "half_open",
                 "healthy": false, "latency_ms": null, "in_flight": 0, "requests": 2, "failures": 2}
            ],
            "keys": [{"key": "team-a", "resting_s": null}, {"key": "key-0123456789ab", "resting_s": 42.0}]
        }]});
        let text = super::render(&v);
        assert!(
            text.contains("openai (openai, weighted, health check every 10s, GET <url>/models)"),
            "{text}"
        );
        assert!(text.contains("  east:9001  http://east:9001/v1  closed     ok            3  12.3 ms          1     10       0"), "{text}");
        assert!(text.contains("half-open  failing"), "{text}");
        assert!(
            text.contains("  keys: team-a serving, key-0123456789ab resting 42.0 s"),
            "{text}"
        );
    }
}
