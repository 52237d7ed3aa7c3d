//! `GET /relay/upstreams` (loopback only, as all of `/relay`): each provider's endpoints (circuit,
//! health, latency EWMA, tries in flight, tries and failures) and keys (alias or hash prefix,
//! never the key; resting or not), what `relay health --verbose` prints.

use serde::Serialize;

use super::pool::{Pool, Pools};
use crate::config::{BaseUrl, Config};
use crate::limit::breaker::State;

pub const PATH: &str = "/relay/upstreams";

#[derive(Debug, Serialize)]
pub struct Report {
    pub providers: Vec<ProviderReport>,
}

#[derive(Debug, Serialize)]
pub struct ProviderReport {
    pub name: String,
    pub kind: &'static str,
    pub strategy: &'static str,
    /// `every 10s, GET <url>/models`, when the active check is on.
    pub health_check: Option<String>,
    pub endpoints: Vec<EndpointReport>,
    pub keys: Vec<KeyReport>,
}

#[derive(Debug, Serialize)]
pub struct EndpointReport {
    pub name: String,
    /// Without any credentials the URL holds.
    pub url: String,
    pub weight: u32,
    /// `closed`, `half_open`, `open`, or `off` (no breaker).
    pub circuit: &'static str,
    /// The active check's last result; `None` without a check.
    pub healthy: Option<bool>,
    pub latency_ms: Option<f64>,
    pub in_flight: u32,
    pub requests: u64,
    pub failures: u64,
}

#[derive(Debug, Serialize)]
pub struct KeyReport {
    /// Its `keys:` alias, else `key-` and a hash prefix.
    pub key: String,
    /// Seconds of rest left after a 429; `None` when serving.
    pub resting_s: Option<f64>,
}

/// The report for the runtime's config and pools.
pub fn report(cfg: &Config, pools: &Pools) -> Report {
    Report {
        providers: cfg
            .providers
            .iter()
            .zip(pools.iter())
            .map(|(p, pool)| ProviderReport {
                name: p.name.clone(),
                kind: p.kind.as_str(),
                strategy: p.strategy.as_str(),
                health_check: p.health_check.as_ref().map(|h| {
                    format!(
                        "every {}, GET <url>{}",
                        humantime::format_duration(h.interval),
                        h.path
                    )
                }),
                endpoints: endpoints(pool, p.health_check.is_some()),
                keys: pool
                    .keys
                    .iter()
                    .map(|k| KeyReport {
                        key: k.label.clone(),
                        resting_s: k.resting().map(|d| (d.as_secs_f64() * 10.0).round() / 10.0),
                    })
                    .collect(),
            })
            .collect(),
    }
}

fn endpoints(pool: &Pool, checked: bool) -> Vec<EndpointReport> {
    pool.endpoints
        .iter()
        .map(|e| {
            let (requests, failures) = e.counts();
            EndpointReport {
                name: e.name.clone(),
                url: public_url(&e.url),
                weight: e.weight,
                circuit: e.circuit.as_ref().map_or("off", |c| match c.state() {
                    State::Closed => "closed",
                    State::HalfOpen => "half_open",
                    State::Open => "open",
                }),
                healthy: checked.then(|| e.healthy()),
                latency_ms: e
                    .latency()
                    .map(|l| (l.as_secs_f64() * 10_000.0).round() / 10.0),
                in_flight: e.in_flight(),
                requests,
                failures,
            }
        })
        .collect()
}

/// `scheme://host[:port]/path`: a `user:password@` in the URL never shows.
fn public_url(u: &BaseUrl) -> String {
    format!("{}://{}{}", u.scheme, u.host_port(), u.path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_credentials() {
        let u = BaseUrl {
            scheme: http::uri::Scheme::HTTPS,
            authority: "user:secret@gw.example:8443".parse().unwrap(),
            path: "/v1".into(),
        };
        assert_eq!(public_url(&u), "https://gw.example:8443/v1");
    }
}
