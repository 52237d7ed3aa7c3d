//! Typed, validated configuration.
//!
//! What comes in: a YAML file (or none), plus the process environment. What goes out: one immutable
//! [`Config`] value whose references are resolved (a route points at a provider index, a base URL is a
//! parsed URI, a secret is masked). The loader runs in four steps, each in its own file:
//!
//! 1. [`raw`]: the YAML is read into a `yaml_serde::Value` (syntax errors carry line and column);
//! 2. [`env`]: `RELAY_<SECTION>_<KEY>` and the original relay's `SERVER_PORT`, `REDIS_ADDRESS`,
//!    `REDIS_PASSWORD` patch that tree;
//! 3. [`raw`]: the tree is deserialized with `deny_unknown_fields` through serde_path_to_error, so an
//!    unknown or mistyped key is reported by its path;
//! 4. [`resolve`]: defaults are filled in, the original relay's keys are mapped onto the richer schema,
//!    and invariants are checked (unique provider names, known route targets, valid URLs).
//!
//! Every error names the file and the key path: `relay.yaml: routes[2].provider: unknown provider
//! "antropic"`. A running server never sees a half-built config: [`watch`] reloads a whole new value and
//! the server swaps it in atomically.

mod auth;
mod duration;
pub mod env;
mod pool;
mod raw;
mod resolve;
pub mod tls;
mod view;
pub mod watch;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use auth::{AdminKey, AuthConfig};
pub use env::Env;
pub use pool::{Endpoint, HealthCheck, ProviderKey, Strategy};
pub use tls::{Intercept, ProxyConfig, ServerTls, UpstreamConfig};

/// The file relay reads when `--config` is not given and the file exists.
pub const DEFAULT_CONFIG_PATH: &str = "configs/relay.yaml";

/// The user's config, read when `--config` is not given and [`DEFAULT_CONFIG_PATH`] does not exist:
/// `$XDG_CONFIG_HOME/relay/relay.yaml` (`~/.config/relay/relay.yaml` on Linux).
pub fn user_config_path() -> Option<PathBuf> {
    dirs::config_dir().map(|d| d.join("relay").join("relay.yaml"))
}

/// The whole effective configuration, validated. Cheap to share behind an `Arc`; never mutated.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this config was read from (`None`: built-in defaults only).
    pub source: Option<PathBuf>,
    pub server: ServerConfig,
    /// Upstream providers, in file order. Names are unique.
    pub providers: Vec<Provider>,
    /// Routing rules, first match wins.
    pub routes: Vec<Route>,
    pub ratelimit: RateLimitConfig,
    /// The rest of `ratelimit:`: rules, what happens at the limit, and where buckets live.
    pub limits: LimitsConfig,
    pub redis: RedisConfig,
    pub cache: CacheConfig,
    /// Price overrides by model id (see the cost issue); parsed and validated now.
    pub models: BTreeMap<String, ModelPrice>,
    /// `cost:` — token counting, pricing and the usage ledger.
    pub cost: CostConfig,
    /// `keys:` — API key aliases, in file order (names unique).
    pub keys: Vec<KeyAlias>,
    /// `budgets:` — spending limits by key alias, or `*` for every key without its own.
    pub budgets: BTreeMap<String, Budget>,
    /// `proxy:` — forward-proxy mode (`CONNECT` interception).
    pub proxy: ProxyConfig,
    /// `upstream:` — upstream TLS trust.
    pub upstream: UpstreamConfig,
    /// `auth:` — relay-issued keys and the admin key.
    pub auth: AuthConfig,
    /// Warnings found while loading (legacy sections that relay ignores, etc.), logged by the caller.
    pub warnings: Vec<String>,
}

/// `server:` — the listening side.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Address to listen on. Default `127.0.0.1:8080`; the original relay's `port: ":8080"` means
    /// `0.0.0.0:8080`.
    pub listen: SocketAddr,
    /// Largest request body relay accepts, in bytes (larger → 413). Default 32 MiB.
    pub max_body_bytes: u64,
    /// How long a graceful shutdown waits for in-flight requests. Default 30 s.
    pub shutdown_timeout: Duration,
    /// One structured log line per request. Default on.
    pub request_log: bool,
    /// Serve HTTPS. Default off.
    pub tls: ServerTls,
    /// Where the local CA lives (`ca.pem`, `ca-key.pem`, and the `tls: auto` certificate). `None`:
    /// `<data dir>/relay/ca`.
    pub ca_dir: Option<PathBuf>,
    /// Serve `GET /relay/events` (the TUI's feed) to non-loopback peers too. Default off: loopback
    /// peers only. The rest of `/relay/...` stays loopback-only either way.
    pub events_remote: bool,
    /// Page origins whose browser requests relay serves besides loopback ones
    /// (`https://app.example.com`; `*` for any). Default none: a request whose `Origin` is not a
    /// loopback origin is refused (403), see [`crate::proxy::filter`].
    pub allowed_origins: Vec<String>,
    /// `Host` names relay's own API (`/relay/...`) answers besides loopback names and IP addresses.
    /// Default none (DNS rebinding protection).
    pub allowed_hosts: Vec<String>,
    /// Peers whose `X-Forwarded-For` / `Forwarded` relay believes (addresses or CIDR ranges).
    /// Default none.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Connections open at once; past it relay stops accepting until one closes. Default 10,000.
    pub max_connections: usize,
    /// A connection with no request in flight and nothing arriving is closed after this long.
    /// Default 75 s.
    pub idle_timeout: Duration,
    /// From a request's first byte to its last header. Default 30 s.
    pub header_read_timeout: Duration,
    /// Longest silence between two chunks of a request body. Default 60 s.
    pub body_read_timeout: Duration,
    /// Largest request head (request line and headers), bytes. Default 64 KiB; at least 8 KiB.
    pub max_header_bytes: usize,
    /// Request bodies relay holds in memory at once, over all requests, bytes. A request past it
    /// waits up to `body_read_timeout` for room, then gets 503. Default 512 MiB; at least
    /// `max_body_bytes`.
    pub max_buffered_bytes: u64,
    /// Listen beyond loopback, injecting provider keys, with auth off: said on purpose
    /// ([`Config::exposure`]). Default off.
    pub allow_unauthenticated: bool,
}

/// The API dialect a provider speaks; decides which header carries an injected key and which error
/// shape relay uses for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Openai,
    Anthropic,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Openai => "openai",
            ProviderKind::Anthropic => "anthropic",
        }
    }
}

/// One upstream API.
#[derive(Debug, Clone, PartialEq)]
pub struct Provider {
    /// Unique name; also the explicit path prefix (`/<name>/v1/...`) and the metrics label.
    pub name: String,
    pub kind: ProviderKind,
    /// API root including its version segment, e.g. `https://api.openai.com/v1`. A client path
    /// `/v1/<rest>` is sent to `<base_url>/<rest>`.
    pub base_url: BaseUrl,
    /// Every base URL requests may go to (at least one; the first is `base_url`).
    pub endpoints: Vec<Endpoint>,
    /// How requests are spread over `endpoints`.
    pub strategy: Strategy,
    /// The active health check of the endpoints, when on.
    pub health_check: Option<HealthCheck>,
    /// The keys to inject when the client sends none (`api_key_env`, one or a list), read at load
    /// time; the variables that are set, in order. Never printed.
    pub keys: Vec<ProviderKey>,
    /// The variables `api_key_env` names, set or not (what `config check` shows).
    pub api_key_env: Vec<String>,
    /// Speak HTTP/2 to this upstream (one multiplexed connection). Default off: an HTTP/1.1
    /// keep-alive pool.
    pub http2: bool,
    pub timeouts: Timeouts,
    /// The provider's circuit breaker (`providers[].breaker`).
    pub breaker: BreakerConfig,
    /// Retries before the first byte reaches the caller (`providers[].retry`).
    pub retry: RetryConfig,
}

impl Provider {
    /// The first key relay injects (the one requests are booked to), if any.
    pub fn api_key(&self) -> Option<&Secret> {
        self.keys.first().map(|k| &k.secret)
    }
}

/// A failure seen before the first byte reached the caller: what `retry.on` and
/// `routes[].fallback_on` list.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum When {
    /// The connection failed (refused, reset, TLS) before an answer came.
    Connect,
    /// `timeouts.connect` or `timeouts.first_byte` passed.
    Timeout,
    /// This status (`429`, `503`, Anthropic's `529`).
    Status(u16),
    /// Any status of this hundred (`5xx`: 5).
    Class(u16),
    /// The answer's error `code` or `type` (`context_length_exceeded`, `overloaded_error`).
    Error(String),
    /// The provider's circuit is open (fallbacks only).
    CircuitOpen,
}

impl When {
    /// Parses `connect`, `timeout`, `circuit_open`, `429`, `5xx` or an error code / type.
    pub fn parse(s: &str) -> Result<When, String> {
        let s = s.trim();
        let digits = |t: &str| t.len() == 3 && t.bytes().all(|b| b.is_ascii_digit());
        Ok(match s {
            "connect" => When::Connect,
            "timeout" => When::Timeout,
            "circuit_open" => When::CircuitOpen,
            t if digits(t) => match t.parse::<u16>() {
                Ok(code @ 100..=599) => When::Status(code),
                _ => return Err(format!("{t:?} is not an HTTP status")),
            },
            t if t.len() == 3
                && t.ends_with("xx")
                && matches!(t.as_bytes()[0], b'1'..=b'5') =>
            {
                When::Class(u16::from(t.as_bytes()[0] - b'0'))
            }
            t if !t.is_empty()
                && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') =>
            {
                When::Error(t.to_string())
            }
            t => {
                return Err(format!(
                    "{t:?}: want connect, timeout, circuit_open, a status (429), a class (5xx) or an error code (context_length_exceeded)"
                ))
            }
        })
    }

    /// Whether an answer with `status` (and, for error codes, its error `code` / `type`) is one.
    pub fn matches_status(&self, status: u16, error: Option<&str>) -> bool {
        match self {
            When::Status(s) => *s == status,
            When::Class(c) => status / 100 == *c,
            When::Error(e) => error == Some(e.as_str()),
            When::Connect | When::Timeout | When::CircuitOpen => false,
        }
    }
}

impl fmt::Display for When {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            When::Connect => f.write_str("connect"),
            When::Timeout => f.write_str("timeout"),
            When::CircuitOpen => f.write_str("circuit_open"),
            When::Status(s) => write!(f, "{s}"),
            When::Class(c) => write!(f, "{c}xx"),
            When::Error(e) => f.write_str(e),
        }
    }
}

/// `providers[].retry` (and `routes[].retry`): sending a request again before the first byte
/// reached the caller. Never after: no token is sent twice.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// Tries in all, the first included. Default 3; 1 turns retries off.
    pub attempts: u32,
    /// What is retried. Default: connect errors, timeouts, 429 and 5xx (Anthropic's 529 too).
    pub on: Vec<When>,
    /// The first wait; each next one doubles, with full jitter. Default 500 ms.
    pub base_delay: Duration,
    /// The longest wait, `Retry-After` included: an answer asking for longer is not retried (the
    /// caller gets it). Default 10 s.
    pub max_delay: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            attempts: 3,
            on: vec![
                When::Connect,
                When::Timeout,
                When::Status(429),
                When::Class(5),
            ],
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(10),
        }
    }
}

/// `providers[].breaker` — when to stop sending requests to a failing upstream. Failures are
/// connect errors, timeouts (connect, first byte) and 5xx answers (429 too with `count_429`).
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// Default on (`breaker: {enabled: false}` turns it off), as in the original relay.
    pub enabled: bool,
    /// Open after this many failures in a row. Default 5.
    pub consecutive_failures: u32,
    /// Open when failures / requests in the rolling `window` reach this ratio (0 < r ≤ 1) and the
    /// window holds at least `min_requests` requests. Default 0.5.
    pub failure_ratio: f64,
    /// Default 20.
    pub min_requests: u32,
    /// Length of the rolling window for the ratio. Default 60 s.
    pub window: Duration,
    /// How long the circuit stays open before probing. Default 30 s.
    pub cooldown: Duration,
    /// Probes let through at once while half-open. Default 1.
    pub half_open_requests: u32,
    /// Count upstream 429 answers as failures. Default false.
    pub count_429: bool,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            enabled: true,
            consecutive_failures: 5,
            failure_ratio: 0.5,
            min_requests: 20,
            window: Duration::from_secs(60),
            cooldown: Duration::from_secs(30),
            half_open_requests: 1,
            count_429: false,
        }
    }
}

/// Upstream timeouts for one provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Timeouts {
    /// TCP (and TLS) connect. Default 10 s.
    pub connect: Duration,
    /// From sending the request to the response headers. Default 600 s (long generations).
    pub first_byte: Duration,
    /// Longest silence between two body chunks. Default 300 s.
    pub idle: Duration,
}

/// A parsed `base_url`: scheme, authority and a path prefix without trailing slash.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BaseUrl {
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    /// e.g. `/v1`, or empty.
    pub path: String,
}

impl BaseUrl {
    pub fn is_https(&self) -> bool {
        self.scheme == http::uri::Scheme::HTTPS
    }

    /// `host[:port]`: the authority without any `user:password@` it holds.
    pub fn host_port(&self) -> String {
        let a = &self.authority;
        match a.port() {
            Some(p) => format!("{}:{}", a.host(), p),
            None => a.host().to_string(),
        }
    }
}

impl fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.path)
    }
}

/// One routing rule. A request matches when every pattern present matches; a rule with neither
/// pattern matches everything.
#[derive(Debug, Clone)]
pub struct Route {
    /// Glob on the request's `model` (e.g. `claude-*`). A request without a model never matches.
    pub model: Option<glob::Pattern>,
    /// Glob on the request path (e.g. `/v1/messages*`).
    pub path: Option<glob::Pattern>,
    /// Index into [`Config::providers`].
    pub provider: usize,
    /// Index of the provider that takes the request when `provider`'s circuit is open or it refuses
    /// the connection (`routes[].fallback`).
    pub fallback: Option<usize>,
    /// When the fallback takes over (`routes[].fallback_on`). Default: `circuit_open`, `connect`.
    pub fallback_on: Vec<When>,
    /// This route's retries instead of its provider's (`routes[].retry`).
    pub retry: Option<RetryConfig>,
}

/// `routes[].fallback_on` when not set.
pub fn default_fallback_on() -> Vec<When> {
    vec![When::CircuitOpen, When::Connect]
}

impl PartialEq for Route {
    fn eq(&self, other: &Self) -> bool {
        self.model.as_ref().map(|p| p.as_str()) == other.model.as_ref().map(|p| p.as_str())
            && self.path.as_ref().map(|p| p.as_str()) == other.path.as_ref().map(|p| p.as_str())
            && self.provider == other.provider
            && self.fallback == other.fallback
            && self.fallback_on == other.fallback_on
            && self.retry == other.retry
    }
}

/// The name of the rule made from the original relay's `ratelimit.requests_per_second` / `burst`.
pub const LEGACY_RULE: &str = "default";

/// `ratelimit:` — the original relay's single token bucket. Enforced by the limits stage.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitConfig {
    pub enabled: bool,
    /// Sustained rate; 0.2 = one request per 5 s.
    pub requests_per_second: f64,
    /// Bucket size (requests allowed at once).
    pub burst: u32,
}

/// Rest of `ratelimit:` (the original bucket is [`RateLimitConfig`]). Applies when
/// `ratelimit.enabled` is true.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitsConfig {
    /// `ratelimit.rules`, in file order; names are unique.
    pub rules: Vec<LimitRule>,
    /// What a request over a limit gets. Default `reject`.
    pub on_limit: OnLimit,
    /// With `on_limit: wait`, the longest a request waits for its slot before it is rejected.
    /// Default 10 s.
    pub max_wait: Duration,
    /// Where buckets live. Default `local`.
    pub backend: LimitBackend,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            rules: Vec::new(),
            on_limit: OnLimit::Reject,
            max_wait: Duration::from_secs(10),
            backend: LimitBackend::Local,
        }
    }
}

/// One rate-limit rule: a bucket per scope value (everyone, each API key, each model, each key and
/// model), for requests and/or estimated tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitRule {
    /// Unique; the metrics label and part of the bucket's identity (a reload that keeps the name
    /// keeps the bucket). Default: the scope, plus `:<model glob>` when there is one.
    pub name: String,
    pub scope: LimitScope,
    /// The rule applies only to requests whose model matches this glob (none: every request).
    pub model: Option<glob::Pattern>,
    /// Sustained request rate (0.2 = one request per 5 s); `None`: requests are not limited.
    pub requests_per_second: Option<f64>,
    /// Requests allowed at once. Default ceil(requests_per_second), at least 1.
    pub burst: u32,
    /// Estimated tokens (prompt + `max_tokens`) per minute; a minute's worth may go at once.
    pub tokens_per_minute: Option<u64>,
}

/// Who shares a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitScope {
    /// One bucket for every request the rule matches.
    Global,
    /// One bucket per caller API key (its BLAKE3 hash; never the key).
    Key,
    /// One bucket per model name.
    Model,
    /// One bucket per (API key, model).
    KeyModel,
}

impl LimitScope {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitScope::Global => "global",
            LimitScope::Key => "key",
            LimitScope::Model => "model",
            LimitScope::KeyModel => "key+model",
        }
    }

    pub fn parse(s: &str) -> Option<LimitScope> {
        Some(match s.trim() {
            "global" => LimitScope::Global,
            "key" => LimitScope::Key,
            "model" => LimitScope::Model,
            "key+model" | "model+key" => LimitScope::KeyModel,
            _ => return None,
        })
    }
}

/// `ratelimit.on_limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnLimit {
    /// Answer 429 at once.
    Reject,
    /// Queue the request for its slot, up to `ratelimit.max_wait`; 429 beyond that.
    Wait,
}

/// `ratelimit.backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitBackend {
    /// Buckets in this process.
    Local,
    /// Buckets in Redis (`redis:` section, cargo feature `redis`), shared by every relay using it.
    Redis,
}

/// `redis:` — shared cache and limits (cargo feature `redis`).
#[derive(Debug, Clone, PartialEq)]
pub struct RedisConfig {
    pub enabled: bool,
    /// `host:port`.
    pub address: String,
    pub password: Option<Secret>,
    pub db: u32,
}

/// `cache:` — the response cache.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    /// Default on.
    pub enabled: bool,
    pub backend: CacheBackend,
    /// The redb file. `None`: `<data dir>/relay/cache.redb`.
    pub path: Option<PathBuf>,
    /// How long an entry lives. `None` (`ttl: 0`): forever. Default 7 days.
    pub ttl: Option<Duration>,
    /// Size bound; the oldest entries are evicted above it. Default 1 GiB.
    pub max_bytes: u64,
    pub mode: CacheMode,
    pub scope: CacheScope,
    /// Request fields left out of the key, as written (default `user`, `metadata`): top-level
    /// names or nested paths ([`crate::fieldpath`]).
    pub ignore_fields: Vec<String>,
    /// Leave the per-run identifiers of known clients out of the key too
    /// ([`crate::wire::clients::PER_RUN_FIELDS`]). Default on.
    pub client_rules: bool,
    /// What the key leaves out: `ignore_fields`, plus the client rules when on.
    pub ignore: std::sync::Arc<crate::fieldpath::FieldSet>,
    /// Replay by the portable form when no exact recording exists (offline and
    /// `x-relay-cache: only`): dates, home and working directories, git status and OS version
    /// normalized. Default on.
    pub portable: bool,
    pub replay_timing: ReplayTiming,
}

/// Where cache entries live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheBackend {
    /// One embedded file.
    Redb,
    /// A Redis server (`redis:` section), shared by several relays; cargo feature `redis`.
    Redis,
}

/// How the cache is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheMode {
    /// Serve hits, store misses.
    Live,
    /// Always forward; store (overwrite) every cacheable answer.
    Record,
    /// Never contact an upstream: hits are served, misses are an error.
    Offline,
}

/// Who shares entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheScope {
    /// Per caller API key (hashed): two keys never see each other's responses.
    Key,
    /// Everyone shares entries.
    Global,
}

/// How a cached stream is replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplayTiming {
    /// All events at once.
    Fast,
    /// With the recorded pauses between events.
    Original,
}

/// Price of a model in micro-USD per one million tokens (integers: no float drift in money).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelPrice {
    pub input: u64,
    pub output: u64,
    pub cached_input: Option<u64>,
    /// 5-minute prompt-cache writes.
    pub cache_write: Option<u64>,
    /// 1-hour prompt-cache writes (default: the 5-minute rate).
    pub cache_write_1h: Option<u64>,
}

/// `cost:` — what relay counts and keeps about spending.
#[derive(Debug, Clone, PartialEq)]
pub struct CostConfig {
    /// Read usage from answers, price requests, record the ledger, enforce budgets. Default on.
    pub enabled: bool,
    /// Streamed chat completions to OpenAI-kind providers: ask for the usage chunk. Default `inject`.
    pub stream_usage: StreamUsage,
    /// Keep the persistent usage ledger. Default on.
    pub ledger: bool,
    /// The ledger's redb file. `None`: `usage.redb` beside the cache file (`cache.path`), else
    /// `<data dir>/relay/usage.redb`.
    pub ledger_path: Option<PathBuf>,
}

/// `cost.stream_usage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamUsage {
    /// Add `stream_options.include_usage: true` to streamed chat requests that lack it, and remove
    /// the extra usage-only chunk from what the caller receives.
    Inject,
    /// Forward streamed requests unchanged; count tokens with tiktoken when no usage comes.
    Off,
}

/// One `keys:` entry: a readable name for an API key, used in the ledger, budgets and metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyAlias {
    pub name: String,
    /// The environment variable named in the config.
    pub env: String,
    /// Lower-case hex blake3 of the key (or a prefix of it, at least 12 digits, when the variable
    /// holds `blake3:<hex>`). `None` when the variable is not set (a warning at load).
    pub hash: Option<String>,
}

/// A budget in USD as micro-USD; `None` unless it is a finite number ≥ 0. The one rule for the
/// config's `budgets:` and relay keys' own budgets.
pub fn budget_micros(usd: f64) -> Option<u64> {
    (usd.is_finite() && usd >= 0.0).then(|| (usd * 1e6).round() as u64)
}

/// One `budgets:` entry, in micro-USD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub daily: Option<u64>,
    pub monthly: Option<u64>,
}

/// A secret value (API key, password): `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The clear value, for the one place that must send it upstream.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A config that failed to load. `Display` is the full user-facing message: file, key path, reason.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Syntax { file: String, message: String },
    #[error("{file}: {path}: {message}")]
    Invalid {
        file: String,
        path: String,
        message: String,
    },
}

impl ConfigError {
    /// The key path the error is about, when it is about one.
    pub fn key_path(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { path, .. } => Some(path),
            _ => None,
        }
    }
}

impl Config {
    /// Built-in defaults: OpenAI and Anthropic, `/v1/messages` and `claude-*` to Anthropic, the rest
    /// to OpenAI, listening on 127.0.0.1:8080.
    pub fn defaults(env: &Env) -> Config {
        Config::from_yaml_str("", "<defaults>", env).expect("built-in defaults are valid")
    }

    /// Loads and validates a YAML file, applying environment overrides from `env`.
    pub fn load(path: &Path, env: &Env) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        if raw::is_blank(&text) {
            // A save caught half way, or a template that rendered to nothing: never the built-in
            // defaults, which would send traffic to the real providers.
            return Err(ConfigError::Syntax {
                file,
                message: "the file has no settings (it is empty or only comments); relay does not fall back to its built-in defaults for a config file. Write at least one section (`server: {}` is enough)".to_string(),
            });
        }
        let mut cfg = Config::from_yaml_str(&text, &file, env)?;
        cfg.source = Some(path.to_path_buf());
        Ok(cfg)
    }

    /// Loads `path` if given, else [`DEFAULT_CONFIG_PATH`] if it exists, else the user's config
    /// ([`user_config_path`], where install.sh puts one) if it exists, else the defaults.
    pub fn load_or_default(path: Option<&Path>, env: &Env) -> Result<Config, ConfigError> {
        match path {
            Some(p) => Config::load(p, env),
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
                Config::load(Path::new(DEFAULT_CONFIG_PATH), env)
            }
            None => match user_config_path().filter(|p| p.is_file()) {
                Some(p) => Config::load(&p, env),
                None => Config::from_yaml_str("", "<defaults>", env),
            },
        }
    }

    /// Parses and validates YAML text; `file` names it in errors.
    pub fn from_yaml_str(text: &str, file: &str, env: &Env) -> Result<Config, ConfigError> {
        let mut tree = raw::parse_tree(text, file)?;
        let applied = env::apply(&mut tree, env);
        let raw = raw::deserialize(tree, file).map_err(|e| applied.annotate(e))?;
        let mut cfg = resolve::resolve(raw, file, env).map_err(|e| applied.annotate(e))?;
        for var in applied.unknown {
            cfg.warnings.push(format!(
                "environment variable {var} names no config key; ignored"
            ));
        }
        Ok(cfg)
    }

    /// Looks a provider up by name.
    pub fn provider(&self, name: &str) -> Option<&Provider> {
        self.providers.iter().find(|p| p.name == name)
    }

    /// The effective config as YAML, with secrets masked (`relay config check`).
    pub fn to_masked_yaml(&self) -> String {
        view::to_masked_yaml(self)
    }
}

#[cfg(test)]
mod tests;

/// The providers relay knows with no `providers:` section. The original relay's `proxy.target`
/// replaces the `openai` base URL.
pub const DEFAULT_PROVIDERS_YAML: &str = "\
- name: openai
  kind: openai
  base_url: https://api.openai.com/v1
- name: anthropic
  kind: anthropic
  base_url: https://api.anthropic.com/v1
";
