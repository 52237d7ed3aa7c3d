//! The "Limits and breakers" pane's data: read about once a second from relay's Prometheus text
//! (in-process from [`Metrics::render`], attached from `GET <relay>/metrics`), parsed into a
//! [`LimitsSnapshot`] and sent to the UI loop as [`super::Msg::Limits`]. The poller runs on the
//! tokio runtime, never on the UI thread, and reads only the metrics registry (no proxy state).

use std::collections::BTreeMap;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::metrics::Metrics;

/// How often the pane is refreshed.
pub const POLL: Duration = Duration::from_secs(1);

/// A circuit breaker's state, as `relay_circuit_state` encodes it (0, 1, 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Circuit {
    Closed,
    HalfOpen,
    Open,
}

impl Circuit {
    fn from_gauge(v: f64) -> Option<Circuit> {
        match v as i64 {
            0 => Some(Circuit::Closed),
            1 => Some(Circuit::HalfOpen),
            2 => Some(Circuit::Open),
            _ => None,
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            Circuit::Closed => "closed",
            Circuit::HalfOpen => "half-open",
            Circuit::Open => "open",
        }
    }
}

/// One provider endpoint's breaker.
#[derive(Debug, Clone, PartialEq)]
pub struct Breaker {
    pub state: Circuit,
    /// State changes so far (all `to` values summed).
    pub transitions: u64,
    /// The EWMA of its time to the answer's headers, once measured.
    pub latency_ms: Option<f64>,
    /// The active health check's last result, when it has one.
    pub healthy: Option<bool>,
}

/// One key of a provider's pool.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolKey {
    pub resting: bool,
    /// 429s that put it to rest.
    pub rests: u64,
}

/// What the pane shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LimitsSnapshot {
    /// Provider (`provider endpoint` for a provider with several) → breaker.
    pub breakers: BTreeMap<String, Breaker>,
    /// `provider key` (alias or hash prefix) → the pooled key's state.
    pub keys: BTreeMap<String, PoolKey>,
    /// `scope/rule` → requests refused.
    pub rejections: BTreeMap<String, u64>,
    /// The limiter backend in use (the `relay_ratelimit_backend` series at 1), if any.
    pub backend: Option<String>,
    /// Key (relay key name, alias) → spent / budget (`relay_budget_used_ratio`).
    pub budgets: BTreeMap<String, f64>,
}

impl LimitsSnapshot {
    /// Nothing to show: no breaker, no rule, no backend in the metrics.
    pub fn is_empty(&self) -> bool {
        self.breakers.is_empty()
            && self.keys.is_empty()
            && self.rejections.is_empty()
            && self.backend.is_none()
    }
}

/// A sample's labels: name and unescaped value.
type Labels<'a> = Vec<(&'a str, String)>;

/// One sample line: name, labels, value. `None` for comments, blanks and lines that don't parse.
fn sample(line: &str) -> Option<(&str, Labels<'_>, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let close = open + line[open..].rfind('}')?;
            (
                &line[..open],
                labels(&line[open + 1..close])?,
                &line[close + 1..],
            )
        }
        None => {
            let (name, rest) = line.split_once(' ')?;
            (name, Vec::new(), rest)
        }
    };
    // A timestamp may follow the value.
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some((name.trim(), labels, value))
}

/// `a="x",b="y \"q\""` → pairs, unescaping `\\`, `\"` and `\n`.
fn labels(s: &str) -> Option<Labels<'_>> {
    let mut out = Vec::new();
    let mut rest = s.trim_start_matches([',', ' ']);
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let mut chars = after.strip_prefix('"')?.char_indices();
        let mut value = String::new();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        out.push((key.trim(), value));
        rest = after[1 + end + 1..].trim_start_matches([',', ' ']);
    }
    Some(out)
}

fn label<'a>(labels: &'a [(&str, String)], key: &str) -> &'a str {
    labels
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

/// Parses relay's Prometheus text into what the pane shows; unknown series are ignored.
pub fn parse(text: &str) -> LimitsSnapshot {
    let mut snap = LimitsSnapshot::default();
    // (provider, endpoint) → breaker.
    let mut circuits: BTreeMap<(String, String), Breaker> = BTreeMap::new();
    let mut transitions: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut latency: BTreeMap<(String, String), f64> = BTreeMap::new();
    let mut healthy: BTreeMap<(String, String), bool> = BTreeMap::new();
    let at = |labels: &[(&str, String)]| {
        (
            label(labels, "provider").to_string(),
            label(labels, "endpoint").to_string(),
        )
    };
    for (name, labels, value) in text.lines().filter_map(sample) {
        match name {
            "relay_circuit_state" => {
                if let Some(state) = Circuit::from_gauge(value) {
                    circuits.insert(
                        at(&labels),
                        Breaker {
                            state,
                            transitions: 0,
                            latency_ms: None,
                            healthy: None,
                        },
                    );
                }
            }
            "relay_circuit_transitions_total" => {
                *transitions.entry(at(&labels)).or_default() += value as u64;
            }
            "relay_endpoint_latency_seconds" => {
                latency.insert(at(&labels), value * 1000.0);
            }
            "relay_endpoint_healthy" => {
                healthy.insert(at(&labels), value >= 1.0);
            }
            "relay_key_resting" | "relay_key_rests_total" => {
                let key = format!("{} {}", label(&labels, "provider"), label(&labels, "key"));
                let k = snap.keys.entry(key).or_insert(PoolKey {
                    resting: false,
                    rests: 0,
                });
                if name == "relay_key_resting" {
                    k.resting = value >= 1.0;
                } else {
                    k.rests = value as u64;
                }
            }
            "relay_ratelimit_rejections_total" => {
                let key = format!("{}/{}", label(&labels, "scope"), label(&labels, "rule"));
                *snap.rejections.entry(key).or_default() += value as u64;
            }
            "relay_budget_used_ratio" => {
                snap.budgets
                    .insert(label(&labels, "key").to_string(), value);
            }
            "relay_ratelimit_backend" if value >= 1.0 => {
                snap.backend = Some(label(&labels, "backend").to_string());
            }
            _ => {}
        }
    }
    let mut per_provider: BTreeMap<&str, usize> = BTreeMap::new();
    for (p, _) in circuits.keys() {
        *per_provider.entry(p.as_str()).or_default() += 1;
    }
    for ((provider, endpoint), mut b) in circuits.clone() {
        let at = (provider.clone(), endpoint.clone());
        b.transitions = transitions.get(&at).copied().unwrap_or(0);
        b.latency_ms = latency.get(&at).copied();
        b.healthy = healthy.get(&at).copied();
        let name = if per_provider[provider.as_str()] > 1 && !endpoint.is_empty() {
            format!("{provider} {endpoint}")
        } else {
            provider
        };
        snap.breakers.insert(name, b);
    }
    snap
}

/// Where the metrics text comes from.
pub enum Source {
    /// This process's server.
    Local(Arc<Metrics>),
    /// Another relay's `GET /metrics`.
    Remote(http::Uri),
}

/// Polls `source` every [`POLL`] and sends each snapshot to `tx` until the receiver is gone.
/// A failed remote read sends nothing (the pane keeps the last snapshot; the event stream's
/// status line already says when the relay is unreachable).
pub async fn poll(source: Source, tx: mpsc::Sender<LimitsSnapshot>) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let text = match &source {
            Source::Local(m) => Some(m.render()),
            Source::Remote(uri) => fetch(&client, uri.clone()).await,
        };
        if let Some(text) = text {
            if tx.send(parse(&text)).is_err() {
                return;
            }
        }
    }
}

async fn fetch(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
    uri: http::Uri,
) -> Option<String> {
    let resp = tokio::time::timeout(POLL, client.get(uri))
        .await
        .ok()?
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let body = tokio::time::timeout(POLL, resp.into_body().collect())
        .await
        .ok()?
        .ok()?;
    String::from_utf8(body.to_bytes().to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"# HELP relay_circuit_state Circuit breaker state by provider: 0 closed, 1 half-open, 2 open
# TYPE relay_circuit_state gauge
relay_circuit_state{provider="anthropic"} 2
relay_circuit_state{provider="openai"} 0
relay_circuit_state{provider="azure"} 1
# TYPE relay_circuit_transitions_total counter
relay_circuit_transitions_total{provider="anthropic",to="open"} 3
relay_circuit_transitions_total{provider="anthropic",to="half_open"} 2
relay_circuit_transitions_total{provider="anthropic",to="closed"} 2
relay_circuit_transitions_total{provider="azure",to="half_open"} 1
# TYPE relay_ratelimit_backend gauge
relay_ratelimit_backend{backend="local"} 0
relay_ratelimit_backend{backend="redis"} 1
# TYPE relay_ratelimit_rejections_total counter
relay_ratelimit_rejections_total{scope="key",rule="per-key"} 12
relay_ratelimit_rejections_total{rule="global \"rpm\"",scope="global"} 4 1700000000000
relay_ratelimit_wait_seconds_bucket{le="+Inf"} 5
relay_requests_total{provider="openai",status="200"} 99
relay_inflight 1
"#;

    #[test]
    fn parses_breakers_rules_and_backend() {
        let s = parse(SAMPLE);
        assert_eq!(
            s.breakers["anthropic"],
            Breaker {
                state: Circuit::Open,
                transitions: 7,
                latency_ms: None,
                healthy: None,
            }
        );
        assert_eq!(
            s.breakers["openai"],
            Breaker {
                state: Circuit::Closed,
                transitions: 0,
                latency_ms: None,
                healthy: None,
            }
        );
        assert_eq!(s.breakers["azure"].state, Circuit::HalfOpen);
        assert_eq!(s.breakers["azure"].transitions, 1);
        assert_eq!(s.breakers.len(), 3);
        assert_eq!(s.rejections["key/per-key"], 12);
        assert_eq!(s.rejections["global/global \"rpm\""], 4);
        assert_eq!(s.rejections.len(), 2);
        assert_eq!(s.backend.as_deref(), Some("redis"));
    }

    #[test]
    fn empty_and_garbage_give_an_empty_snapshot() {
        assert!(parse("").is_empty());
        assert!(parse("relay_circuit_state{provider=\"x\" 2\nnot a metric\n{}\n").is_empty());
    }

    #[test]
    fn reads_a_live_metrics_registry() {
        let m = Metrics::new();
        m.circuit_state
            .with_label_values(&["openai", "api.openai.com"])
            .set(2);
        m.circuit_transitions
            .with_label_values(&["openai", "api.openai.com", "open"])
            .inc();
        for (e, state) in [("east:9001", 0), ("west:9002", 2)] {
            m.circuit_state.with_label_values(&["pool", e]).set(state);
            m.endpoint_latency
                .with_label_values(&["pool", e])
                .set(0.125);
        }
        m.endpoint_healthy
            .with_label_values(&["pool", "west:9002"])
            .set(0);
        m.key_resting.with_label_values(&["pool", "key-abc"]).set(1);
        m.key_rests.with_label_values(&["pool", "key-abc"]).inc();
        m.ratelimit_rejections
            .with_label_values(&["global", "rpm"])
            .inc_by(3);
        m.ratelimit_backend.with_label_values(&["local"]).set(1);
        let s = parse(&m.render());
        assert_eq!(s.breakers["openai"].state, Circuit::Open);
        assert_eq!(s.breakers["openai"].transitions, 1);
        // A provider with several endpoints: one row each, with latency and health.
        let west = &s.breakers["pool west:9002"];
        assert_eq!(west.state, Circuit::Open);
        assert_eq!(west.latency_ms, Some(125.0));
        assert_eq!(west.healthy, Some(false));
        assert_eq!(s.breakers["pool east:9001"].healthy, None);
        assert_eq!(
            s.keys["pool key-abc"],
            PoolKey {
                resting: true,
                rests: 1
            }
        );
        assert_eq!(s.rejections["global/rpm"], 3);
        assert_eq!(s.backend.as_deref(), Some("local"));
    }
}
