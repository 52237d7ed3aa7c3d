//! The config file as written: every key optional, unknown keys rejected, the original relay's keys
//! (`server.port`, `proxy.target`, `ratelimit.*`, `redis.*`, `models:` per-1K prices, and its
//! `logging`, `auth`, `transform`, `loadbalancer` sections) accepted beside relay's own.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use yaml_serde::Value;

use super::ConfigError;

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    pub server: RawServer,
    pub providers: Option<Vec<RawProvider>>,
    pub routes: Option<Vec<RawRoute>>,
    pub ratelimit: RawRateLimit,
    pub redis: RawRedis,
    pub cache: RawCache,
    pub models: BTreeMap<String, RawPrice>,
    /// Token counting, the usage ledger (see `crate::cost`).
    pub cost: RawCost,
    /// Key aliases: name → environment variable holding the API key (or `blake3:<hex>` of it).
    pub keys: BTreeMap<String, String>,
    /// Spending limits by key alias (or `*`).
    pub budgets: BTreeMap<String, RawBudget>,
    /// Original relay: `proxy.target` is the OpenAI origin.
    pub proxy: RawProxy,
    /// Original relay: `logging.enabled` turns the request log on or off.
    pub logging: RawLogging,
    /// Relay-issued keys and the admin key (the original relay's `auth: {enabled, admin_key}`).
    pub auth: super::auth::RawAuth,
    /// An original relay section relay does not implement: accepted with a warning.
    pub transform: Option<Value>,
    pub loadbalancer: Option<RawLoadBalancer>,
    /// How relay connects upstream (`upstream.ca_file`).
    pub upstream: super::tls::RawUpstream,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawServer {
    pub listen: Option<String>,
    /// Original relay: `":8080"` (all interfaces) or a bare port number.
    pub port: Option<PortSpec>,
    pub max_body_bytes: Option<u64>,
    #[serde(with = "super::duration")]
    pub shutdown_timeout: Option<Duration>,
    pub request_log: Option<bool>,
    /// `auto`, `off` or `{cert, key}`: serve HTTPS.
    pub tls: Option<super::tls::RawTls>,
    /// Where the local CA (and the `tls: auto` certificate) live.
    pub ca_dir: Option<String>,
    /// Serve `GET /relay/events` to non-loopback peers too.
    pub events_remote: Option<bool>,
    pub allowed_origins: Option<Vec<String>>,
    pub allowed_hosts: Option<Vec<String>>,
    pub trusted_proxies: Option<Vec<String>>,
    pub max_connections: Option<usize>,
    #[serde(with = "super::duration")]
    pub idle_timeout: Option<Duration>,
    #[serde(with = "super::duration")]
    pub header_read_timeout: Option<Duration>,
    #[serde(with = "super::duration")]
    pub body_read_timeout: Option<Duration>,
    pub max_header_bytes: Option<usize>,
    pub max_buffered_bytes: Option<u64>,
    /// Listen beyond loopback with a provider key and auth off, on purpose.
    pub allow_unauthenticated: Option<bool>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(
    untagged,
    expecting = "a port: 8080 or \":8080\" or \"127.0.0.1:8080\""
)]
pub enum PortSpec {
    Number(u16),
    Text(String),
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawProvider {
    pub name: String,
    pub kind: Option<super::ProviderKind>,
    pub base_url: Option<String>,
    /// One variable or a list (a pool of keys).
    pub api_key_env: Option<OneOrMany>,
    /// Several base URLs (instead of `base_url`).
    pub endpoints: Option<Vec<RawEndpoint>>,
    pub strategy: Option<String>,
    pub health_check: Option<RawHealthCheck>,
    pub http2: Option<bool>,
    pub timeouts: RawTimeouts,
    pub breaker: RawBreaker,
    pub retry: RawRetry,
}

/// A string or a list of strings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged, expecting = "a name or a list of names")]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// `providers[].endpoints[]` / `loadbalancer.targets[]`: a URL, or `{url, weight, name}`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged, expecting = "a URL or {url, weight, name}")]
pub enum RawEndpoint {
    Url(String),
    Full(RawEndpointFull),
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawEndpointFull {
    pub url: String,
    pub weight: Option<u32>,
    pub name: Option<String>,
}

impl RawEndpoint {
    pub fn full(self) -> RawEndpointFull {
        match self {
            RawEndpoint::Url(url) => RawEndpointFull {
                url,
                ..Default::default()
            },
            RawEndpoint::Full(f) => f,
        }
    }
}

/// `providers[].health_check` / `loadbalancer.health_check`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHealthCheck {
    pub enabled: Option<bool>,
    #[serde(with = "super::duration")]
    pub interval: Option<Duration>,
    pub path: Option<String>,
    #[serde(with = "super::duration")]
    pub timeout: Option<Duration>,
}

/// The original relay's `loadbalancer:` section: its targets become the endpoints of the provider
/// `proxy.target` sets (`openai`). Keys relay does not know are warned about, not refused.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct RawLoadBalancer {
    pub enabled: Option<bool>,
    pub strategy: Option<String>,
    pub targets: Option<Vec<RawEndpoint>>,
    pub health_check: Option<RawHealthCheck>,
    #[serde(with = "super::duration")]
    pub health_check_interval: Option<Duration>,
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// An entry of `retry.on` / `fallback_on`: a word (`connect`, `5xx`, an error code) or a status
/// written as a number (`429`).
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct RawWhen(pub String);

impl<'de> Deserialize<'de> for RawWhen {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Text(String),
            Number(u64),
        }
        Ok(RawWhen(match Either::deserialize(d)? {
            Either::Text(s) => s,
            Either::Number(n) => n.to_string(),
        }))
    }
}

/// `providers[].retry` / `routes[].retry`.
#[derive(Debug, Default, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct RawRetry {
    pub attempts: Option<u32>,
    pub on: Option<Vec<RawWhen>>,
    #[serde(with = "super::duration")]
    pub base_delay: Option<Duration>,
    #[serde(with = "super::duration")]
    pub max_delay: Option<Duration>,
}

/// `providers[].breaker`: the provider's circuit breaker.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawBreaker {
    pub enabled: Option<bool>,
    pub consecutive_failures: Option<u32>,
    pub failure_ratio: Option<f64>,
    pub min_requests: Option<u32>,
    #[serde(with = "super::duration")]
    pub window: Option<Duration>,
    #[serde(with = "super::duration")]
    pub cooldown: Option<Duration>,
    pub half_open_requests: Option<u32>,
    pub count_429: Option<bool>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTimeouts {
    #[serde(with = "super::duration")]
    pub connect: Option<Duration>,
    #[serde(with = "super::duration")]
    pub first_byte: Option<Duration>,
    #[serde(with = "super::duration")]
    pub idle: Option<Duration>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRoute {
    pub model: Option<String>,
    pub path: Option<String>,
    pub provider: String,
    /// Provider that takes the request when `provider`'s circuit is open or refuses connections.
    pub fallback: Option<String>,
    /// When the fallback takes over (statuses, error codes, `connect`, `circuit_open`, ...).
    pub fallback_on: Option<Vec<RawWhen>>,
    pub retry: Option<RawRetry>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRateLimit {
    pub enabled: Option<bool>,
    pub requests_per_second: Option<f64>,
    pub burst: Option<u32>,
    pub rules: Option<Vec<RawLimitRule>>,
    pub on_limit: Option<super::OnLimit>,
    #[serde(with = "super::duration")]
    pub max_wait: Option<Duration>,
    pub backend: Option<super::LimitBackend>,
}

/// One `ratelimit.rules[]` entry.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLimitRule {
    pub name: Option<String>,
    pub scope: Option<String>,
    pub model: Option<String>,
    pub requests_per_second: Option<f64>,
    pub burst: Option<u32>,
    pub tokens_per_minute: Option<u64>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRedis {
    pub enabled: Option<bool>,
    pub address: Option<String>,
    pub password: Option<String>,
    pub db: Option<u32>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCache {
    pub enabled: Option<bool>,
    pub backend: Option<super::CacheBackend>,
    pub path: Option<String>,
    #[serde(with = "super::duration")]
    pub ttl: Option<Duration>,
    pub max_bytes: Option<u64>,
    pub mode: Option<super::CacheMode>,
    pub scope: Option<super::CacheScope>,
    pub ignore_fields: Option<Vec<String>>,
    pub client_rules: Option<bool>,
    pub portable: Option<bool>,
    pub replay_timing: Option<super::ReplayTiming>,
}

/// A model price: the original relay's flat USD per 1K tokens (`gpt-4: 0.03`, input and output alike),
/// or USD per 1M tokens by kind.
#[derive(Debug, Deserialize, Serialize)]
#[serde(
    untagged,
    expecting = "a price: USD per 1K tokens (0.03), or {input, output, cached_input, cache_write, cache_write_1h} in USD per 1M tokens"
)]
pub enum RawPrice {
    PerThousand(f64),
    PerMillion(RawPricePerMillion),
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawPricePerMillion {
    pub input: f64,
    pub output: f64,
    pub cached_input: Option<f64>,
    pub cache_write: Option<f64>,
    pub cache_write_1h: Option<f64>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCost {
    pub enabled: Option<bool>,
    pub stream_usage: Option<super::StreamUsage>,
    pub ledger: Option<bool>,
    pub ledger_path: Option<String>,
}

/// USD per day and/or per month.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawBudget {
    pub daily: Option<f64>,
    pub monthly: Option<f64>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawProxy {
    pub target: Option<String>,
    /// Which `CONNECT` hosts relay decrypts: `true`, `false` or a list.
    pub intercept: Option<super::tls::RawIntercept>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLogging {
    pub enabled: Option<bool>,
    /// Original relay's request-log retention; accepted, not used.
    pub retention_days: Option<u32>,
}

/// True when `text` holds no settings: empty, blank, only comments and document markers, or a
/// bare `null`. (A file that says `{}` is not blank.)
pub fn is_blank(text: &str) -> bool {
    text.trim().is_empty() || matches!(yaml_serde::from_str::<Value>(text), Ok(Value::Null))
}

/// Step 1: YAML text to a tree. An empty text is an empty mapping (the built-in defaults; a config
/// file must not be blank, see [`is_blank`]).
pub fn parse_tree(text: &str, file: &str) -> Result<Value, ConfigError> {
    if text.trim().is_empty() {
        return Ok(Value::Mapping(Default::default()));
    }
    let value: Value = yaml_serde::from_str(text).map_err(|e| ConfigError::Syntax {
        file: file.to_string(),
        message: e.to_string(),
    })?;
    match value {
        Value::Null => Ok(Value::Mapping(Default::default())),
        Value::Mapping(_) => Ok(value),
        _ => Err(ConfigError::Syntax {
            file: file.to_string(),
            message: "the top level must be a mapping of sections (server:, providers:, ...)"
                .to_string(),
        }),
    }
}

/// Step 3: the (env-patched) tree to typed raw structs; errors name the key path (the caller adds
/// the environment variable when one set that key, see [`super::env::Applied::annotate`]).
pub fn deserialize(tree: Value, file: &str) -> Result<RawConfig, ConfigError> {
    serde_path_to_error::deserialize(tree).map_err(|e| ConfigError::Invalid {
        file: file.to_string(),
        path: e.path().to_string(),
        message: e.inner().to_string(),
    })
}

/// All leaf key paths of the schema, as `section.key` (providers' keys as `providers[].key`). Used to
/// check that every key has an environment override.
#[cfg(test)]
pub fn schema_paths() -> std::collections::HashSet<String> {
    fn walk(prefix: &str, v: &Value, out: &mut std::collections::HashSet<String>) {
        match v {
            Value::Mapping(m) if !m.is_empty() => {
                for (k, sub) in m {
                    let k = k.as_str().expect("string keys");
                    let p = if prefix.is_empty() {
                        k.to_string()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&p, sub, out);
                }
            }
            _ => {
                out.insert(prefix.to_string());
            }
        }
    }
    let mut out = std::collections::HashSet::new();
    walk(
        "",
        &yaml_serde::to_value(RawConfig::default()).unwrap(),
        &mut out,
    );
    walk(
        "providers[]",
        &yaml_serde::to_value(RawProvider::default()).unwrap(),
        &mut out,
    );
    out
}
