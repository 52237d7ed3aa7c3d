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

mod duration;
pub mod env;
mod raw;
mod resolve;
pub mod tls;
pub mod watch;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use env::Env;
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
    pub redis: RedisConfig,
    pub cache: CacheConfig,
    /// Price overrides by model id (see the cost issue); parsed and validated now.
    pub models: BTreeMap<String, ModelPrice>,
    /// `proxy:` — forward-proxy mode (`CONNECT` interception).
    pub proxy: ProxyConfig,
    /// `upstream:` — upstream TLS trust.
    pub upstream: UpstreamConfig,
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
    /// Environment variable holding a key to inject when the client sends none.
    pub api_key_env: Option<String>,
    /// The key read from `api_key_env` at load time. Never printed.
    pub api_key: Option<Secret>,
    /// Speak HTTP/2 to this upstream (one multiplexed connection). Default off: an HTTP/1.1
    /// keep-alive pool.
    pub http2: bool,
    pub timeouts: Timeouts,
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
}

impl PartialEq for Route {
    fn eq(&self, other: &Self) -> bool {
        self.model.as_ref().map(|p| p.as_str()) == other.model.as_ref().map(|p| p.as_str())
            && self.path.as_ref().map(|p| p.as_str()) == other.path.as_ref().map(|p| p.as_str())
            && self.provider == other.provider
    }
}

/// `ratelimit:` — the original relay's single token bucket. Enforced by the limits stage.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitConfig {
    pub enabled: bool,
    /// Sustained rate; 0.2 = one request per 5 s.
    pub requests_per_second: f64,
    /// Bucket size (requests allowed at once).
    pub burst: u32,
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
    /// Top-level request fields left out of the key (default `user`, `metadata`).
    pub ignore_fields: Vec<String>,
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
    pub cache_write: Option<u64>,
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
        resolve::to_masked_yaml(self)
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
