//! A provider's pools: its endpoints (base URLs with weights), how requests are spread over them,
//! the optional active health check, and its keys (`api_key_env` as a list).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{BaseUrl, Secret};

/// One base URL of a provider (`providers[].endpoints[]`, or the original relay's
/// `loadbalancer.targets[]`). A provider with a plain `base_url` has one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub url: BaseUrl,
    /// Share of the requests under `weighted` and `random` (default 1).
    pub weight: u32,
    /// Its name in metrics, logs and `relay health --verbose`: `name:`, else the URL's
    /// `host:port`, plus its path when another endpoint has the same (credentials in the URL
    /// never show).
    pub name: String,
}

/// How requests are spread over a provider's endpoints (`providers[].strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// In turn, weights ignored.
    RoundRobin,
    /// In turn, each endpoint as often as its weight (smooth: a weight of 3 is not three in a row).
    #[default]
    Weighted,
    /// The endpoint answering fastest (EWMA of the time to the answer's headers, times the
    /// requests it has in flight; the better of two picked at random).
    LeastLatency,
    /// At random, in proportion to the weights.
    Random,
}

impl Strategy {
    pub fn parse(s: &str) -> Option<Strategy> {
        Some(
            match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
                "round-robin" | "roundrobin" | "rr" => Strategy::RoundRobin,
                "weighted" | "weighted-round-robin" => Strategy::Weighted,
                "least-latency" | "latency" | "ewma" => Strategy::LeastLatency,
                "random" => Strategy::Random,
                _ => return None,
            },
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::RoundRobin => "round-robin",
            Strategy::Weighted => "weighted",
            Strategy::LeastLatency => "least-latency",
            Strategy::Random => "random",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The active health check (`providers[].health_check`; on for the original relay's
/// `loadbalancer`): every `interval`, `GET <endpoint url><path>`; an answer below 500 within
/// `timeout` is healthy. An unhealthy endpoint gets no request while another is healthy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HealthCheck {
    pub interval: Duration,
    pub path: String,
    pub timeout: Duration,
}

impl HealthCheck {
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
    pub const DEFAULT_PATH: &'static str = "/models";
}

/// One key of a provider (`api_key_env: [A, B]`), read at load time. Never printed: logs,
/// metrics and `relay health --verbose` show its label.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderKey {
    /// The environment variable it was read from.
    pub env: String,
    pub secret: Secret,
    /// blake3 of the key: what it is booked by and named after (taken once, at load).
    pub hash: blake3::Hash,
    /// Its `keys:` alias, else `key-` and the first 12 hex digits of its blake3 hash.
    pub label: String,
}
