//! Step 4: raw keys to the typed [`Config`]: defaults, the original relay's keys mapped onto the
//! richer schema, references resolved, invariants checked.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::raw::{PortSpec, RawCache, RawConfig, RawPrice, RawProvider, RawRoute};
use super::{
    BaseUrl, BreakerConfig, CacheBackend, CacheConfig, CacheMode, CacheScope, Config, ConfigError,
    Env, LimitBackend, LimitRule, LimitScope, LimitsConfig, ModelPrice, OnLimit, Provider,
    ProviderKind, RateLimitConfig, RedisConfig, ReplayTiming, Route, Secret, ServerConfig,
    Timeouts,
};
use super::{Budget, CostConfig, KeyAlias, StreamUsage};

const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
const DEFAULT_MAX_BODY_BYTES: u64 = 32 * 1024 * 1024;
const DEFAULT_SHUTDOWN: Duration = Duration::from_secs(30);
const DEFAULT_MAX_BUFFERED_BYTES: u64 = 512 * 1024 * 1024;
const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
const DEFAULT_CONN_IDLE: Duration = Duration::from_secs(75);
const DEFAULT_HEADER_READ: Duration = Duration::from_secs(30);
const DEFAULT_BODY_READ: Duration = Duration::from_secs(60);
const DEFAULT_CONNECT: Duration = Duration::from_secs(10);
const DEFAULT_FIRST_BYTE: Duration = Duration::from_secs(600);
const DEFAULT_IDLE: Duration = Duration::from_secs(300);
/// Path segments relay answers itself; a provider cannot take them as its prefix.
const RESERVED_NAMES: &[&str] = &["v1", "relay", "metrics", "healthz"];

struct Ctx<'a> {
    file: &'a str,
}

impl Ctx<'_> {
    fn err(&self, path: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_string(),
            path: path.into(),
            message: message.into(),
        }
    }
}

pub fn resolve(mut raw: RawConfig, file: &str, env: &Env) -> Result<Config, ConfigError> {
    let cx = Ctx { file };
    let mut warnings = Vec::new();
    let server = resolve_server(&cx, &raw, env)?;
    let raw_providers = match raw.providers.take() {
        Some(list) => list,
        None => yaml_serde::from_str(super::DEFAULT_PROVIDERS_YAML).expect("valid defaults"),
    };
    let mut providers = Vec::with_capacity(raw_providers.len());
    let mut names = HashSet::new();
    for (i, p) in raw_providers.into_iter().enumerate() {
        let provider = resolve_provider(&cx, i, p, env, &mut warnings)?;
        if !names.insert(provider.name.clone()) {
            return Err(cx.err(
                format!("providers[{i}].name"),
                format!("duplicate provider name {:?}", provider.name),
            ));
        }
        providers.push(provider);
    }
    // RELAY_PROVIDERS_OPENAI_BASE_URL (environment) wins over the file's proxy.target.
    let env_sets_openai = env.get("RELAY_PROVIDERS_OPENAI_BASE_URL").is_some()
        && providers.iter().any(|p| p.name == "openai");
    let target = raw.proxy.target.as_deref().filter(|_| !env_sets_openai);
    if let Some(target) = target {
        let Some(openai) = providers.iter_mut().find(|p| p.name == "openai") else {
            return Err(cx.err(
                "proxy.target",
                "proxy.target sets the base URL of the provider named \"openai\", and there is none",
            ));
        };
        let trimmed = target.trim_end_matches('/');
        let url = if trimmed.ends_with("/v1") {
            trimmed.to_string()
        } else {
            format!("{trimmed}/v1")
        };
        openai.base_url = parse_base_url(&url).map_err(|m| cx.err("proxy.target", m))?;
    }

    let routes = match raw.routes.take() {
        Some(list) => list
            .into_iter()
            .enumerate()
            .map(|(i, r)| resolve_route(&cx, i, r, &providers))
            .collect::<Result<Vec<_>, _>>()?,
        None => default_routes(&providers),
    };

    let ratelimit = resolve_ratelimit(&cx, &raw)?;
    let redis = RedisConfig {
        enabled: raw.redis.enabled.unwrap_or(false),
        address: raw
            .redis
            .address
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| "127.0.0.1:6379".to_string()),
        password: raw.redis.password.filter(|p| !p.is_empty()).map(Secret),
        db: raw.redis.db.unwrap_or(0),
    };

    let cache = resolve_cache(&cx, &raw.cache, &redis)?;
    let limits = resolve_limits(&cx, &raw.ratelimit, &ratelimit, &redis)?;
    let proxy = super::tls::resolve_intercept(raw.proxy.intercept.as_ref(), &providers, file)?;
    let upstream = super::tls::resolve_upstream(&raw.upstream, file)?;

    let mut models = BTreeMap::new();
    for (name, price) in raw.models {
        let path = format!("models.{name}");
        models.insert(name, resolve_price(&cx, &path, price)?);
    }

    let cost = CostConfig {
        enabled: raw.cost.enabled.unwrap_or(true),
        stream_usage: raw.cost.stream_usage.unwrap_or(StreamUsage::Inject),
        ledger: raw.cost.ledger.unwrap_or(true),
        ledger_path: raw
            .cost
            .ledger_path
            .as_deref()
            .filter(|p| !p.is_empty())
            .map(PathBuf::from),
    };
    let keys = resolve_keys(&cx, &raw.keys, env, &mut warnings)?;
    let mut budgets = BTreeMap::new();
    for (name, b) in &raw.budgets {
        let at = format!("budgets.{name}");
        if name != "*" && !keys.iter().any(|k: &KeyAlias| &k.name == name) {
            let known: Vec<&str> = keys.iter().map(|k| k.name.as_str()).collect();
            return Err(cx.err(
                at,
                format!(
                    "{name:?} is not a key alias (keys: {}); use an alias from keys: or \"*\"",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        }
        let usd = |k: &str, v: Option<f64>| -> Result<Option<u64>, ConfigError> {
            match v {
                None => Ok(None),
                Some(v) if v.is_finite() && v >= 0.0 => Ok(Some((v * 1e6).round() as u64)),
                Some(_) => Err(cx.err(format!("{at}.{k}"), "a budget must be a number of USD ≥ 0")),
            }
        };
        let budget = Budget {
            daily: usd("daily", b.daily)?,
            monthly: usd("monthly", b.monthly)?,
        };
        if budget.daily.is_none() && budget.monthly.is_none() {
            return Err(cx.err(at, "set daily and/or monthly (USD)"));
        }
        budgets.insert(name.clone(), budget);
    }

    for (key, present) in [
        ("auth", raw.auth.is_some()),
        ("transform", raw.transform.is_some()),
        ("loadbalancer", raw.loadbalancer.is_some()),
        (
            "logging.retention_days",
            raw.logging.retention_days.is_some(),
        ),
    ] {
        if present {
            warnings.push(format!(
                "{key}: a section of the original relay that relay does not implement; ignored"
            ));
        }
    }

    Ok(Config {
        source: None,
        server,
        providers,
        routes,
        ratelimit,
        limits,
        redis,
        cache,
        models,
        cost,
        keys,
        budgets,
        proxy,
        upstream,
        warnings,
    })
}

/// `keys:`: each alias names an environment variable holding the key (hashed here, never kept) or
/// `blake3:<hex>`, the key's hash (at least 12 hex digits).
fn resolve_keys(
    cx: &Ctx,
    raw: &BTreeMap<String, String>,
    env: &Env,
    warnings: &mut Vec<String>,
) -> Result<Vec<KeyAlias>, ConfigError> {
    let mut out = Vec::with_capacity(raw.len());
    for (name, var) in raw {
        let at = format!("keys.{name}");
        if name == "*" || name.is_empty() || name.starts_with("key-") || name == "none" {
            return Err(cx.err(
                at,
                format!(
                    "{name:?} cannot be an alias (\"*\", \"none\" and \"key-...\" are reserved)"
                ),
            ));
        }
        if var.is_empty() {
            return Err(cx.err(at, "name the environment variable that holds this key"));
        }
        let hash = match env.get(var).map(str::trim).filter(|v| !v.is_empty()) {
            None => {
                warnings.push(format!(
                    "{at}: environment variable {var} is not set; this alias matches no key"
                ));
                None
            }
            Some(v) => match v.strip_prefix("blake3:") {
                Some(hex) => {
                    let hex = hex.trim().to_ascii_lowercase();
                    if hex.len() < 12
                        || hex.len() > 64
                        || !hex.bytes().all(|b| b.is_ascii_hexdigit())
                    {
                        return Err(cx.err(
                            at,
                            format!("{var} holds blake3:<hex> with a bad hash: want 12 to 64 hex digits"),
                        ));
                    }
                    Some(hex)
                }
                None => Some(blake3::hash(v.as_bytes()).to_hex().to_string()),
            },
        };
        out.push(KeyAlias {
            name: name.clone(),
            env: var.clone(),
            hash,
        });
    }
    Ok(out)
}

const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
const DEFAULT_CACHE_MAX_BYTES: u64 = 1 << 30;

fn resolve_cache(cx: &Ctx, c: &RawCache, redis: &RedisConfig) -> Result<CacheConfig, ConfigError> {
    let backend = c.backend.unwrap_or(CacheBackend::Redb);
    if backend == CacheBackend::Redis {
        if !cfg!(feature = "redis") {
            return Err(cx.err(
                "cache.backend",
                "the redis backend needs a relay built with `--features redis`",
            ));
        }
        if !redis.enabled {
            return Err(cx.err(
                "cache.backend",
                "the redis backend needs the redis: section enabled (redis.enabled: true)",
            ));
        }
    }
    let max_bytes = c.max_bytes.unwrap_or(DEFAULT_CACHE_MAX_BYTES);
    if max_bytes == 0 {
        return Err(cx.err(
            "cache.max_bytes",
            "must be greater than 0 (set cache.enabled: false to turn the cache off)",
        ));
    }
    let mut ignore_fields = c
        .ignore_fields
        .clone()
        .unwrap_or_else(|| vec!["user".into(), "metadata".into()]);
    for (i, f) in ignore_fields.iter().enumerate() {
        if f.is_empty() {
            return Err(cx.err(
                format!("cache.ignore_fields[{i}]"),
                "a field name cannot be empty",
            ));
        }
    }
    ignore_fields.dedup();
    Ok(CacheConfig {
        enabled: c.enabled.unwrap_or(true),
        backend,
        path: c
            .path
            .as_deref()
            .filter(|p| !p.is_empty())
            .map(PathBuf::from),
        ttl: match c.ttl {
            None => Some(DEFAULT_CACHE_TTL),
            Some(Duration::ZERO) => None,
            Some(d) => Some(d),
        },
        max_bytes,
        mode: c.mode.unwrap_or(CacheMode::Live),
        scope: c.scope.unwrap_or(CacheScope::Key),
        ignore_fields,
        replay_timing: c.replay_timing.unwrap_or(ReplayTiming::Fast),
    })
}

fn resolve_server(cx: &Ctx, raw: &RawConfig, env: &Env) -> Result<ServerConfig, ConfigError> {
    let listen_text = raw.server.listen.as_deref();
    let mut listen = match listen_text {
        Some(s) => parse_listen(s).map_err(|m| cx.err("server.listen", m))?,
        None => DEFAULT_LISTEN.parse().expect("valid default"),
    };
    if let Some(port) = &raw.server.port {
        let listen_from_env = env.get("RELAY_SERVER_LISTEN").is_some();
        let port_from_relay_env = env.get("RELAY_SERVER_PORT").is_some();
        let port_from_env = port_from_relay_env || env.get("SERVER_PORT").is_some();
        let addr = match port {
            PortSpec::Number(n) => SocketAddr::from(([0, 0, 0, 0], *n)),
            PortSpec::Text(s) => parse_listen(s).map_err(|m| cx.err("server.port", m))?,
        };
        listen = match listen_text {
            None => addr,
            // RELAY_SERVER_LISTEN wins over the file's port and the legacy SERVER_PORT.
            Some(_) if listen_from_env && !port_from_relay_env => listen,
            // An environment port overrides the listen port, keeping its host.
            Some(_) if port_from_env => SocketAddr::new(listen.ip(), addr.port()),
            Some(_) => {
                return Err(cx.err(
                    "server.port",
                    "set either server.listen or the original relay's server.port, not both",
                ))
            }
        };
    }
    let max_body_bytes = raw.server.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
    if max_body_bytes == 0 {
        return Err(cx.err("server.max_body_bytes", "must be greater than 0"));
    }
    let s = &raw.server;
    let max_buffered_bytes = s.max_buffered_bytes.unwrap_or(DEFAULT_MAX_BUFFERED_BYTES);
    if max_buffered_bytes < max_body_bytes {
        return Err(cx.err(
            "server.max_buffered_bytes",
            format!("must be at least server.max_body_bytes ({max_body_bytes})"),
        ));
    }
    let max_header_bytes = s.max_header_bytes.unwrap_or(DEFAULT_MAX_HEADER_BYTES);
    if max_header_bytes < 8192 {
        return Err(cx.err("server.max_header_bytes", "must be at least 8192"));
    }
    let max_connections = s.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
    if max_connections == 0 {
        return Err(cx.err("server.max_connections", "must be greater than 0"));
    }
    let positive = |key: &str, v: Option<Duration>, default: Duration| match v {
        Some(d) if d.is_zero() => Err(cx.err(key, "must be greater than 0")),
        Some(d) => Ok(d),
        None => Ok(default),
    };
    let idle_timeout = positive("server.idle_timeout", s.idle_timeout, DEFAULT_CONN_IDLE)?;
    let header_read_timeout = positive(
        "server.header_read_timeout",
        s.header_read_timeout,
        DEFAULT_HEADER_READ,
    )?;
    let body_read_timeout = positive(
        "server.body_read_timeout",
        s.body_read_timeout,
        DEFAULT_BODY_READ,
    )?;
    let mut trusted_proxies = Vec::new();
    for (i, t) in s.trusted_proxies.iter().flatten().enumerate() {
        let t = t.trim();
        let net = t
            .parse::<ipnet::IpNet>()
            .or_else(|_| t.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map_err(|_| {
                cx.err(
                    format!("server.trusted_proxies[{i}]"),
                    format!("{t:?} is not an IP address or CIDR range (127.0.0.1, 10.0.0.0/8)"),
                )
            })?;
        trusted_proxies.push(net);
    }
    let mut allowed_origins = Vec::new();
    for (i, o) in s.allowed_origins.iter().flatten().enumerate() {
        let o = o.trim().trim_end_matches('/');
        let valid = o == "*"
            || (o.starts_with("http://") || o.starts_with("https://"))
                && !o
                    .split_once("://")
                    .is_some_and(|(_, r)| r.is_empty() || r.contains('/'));
        if !valid {
            return Err(cx.err(
                format!("server.allowed_origins[{i}]"),
                format!("{o:?} is not an origin (scheme://host[:port], e.g. https://app.example.com) or *"),
            ));
        }
        allowed_origins.push(o.to_string());
    }
    let mut allowed_hosts = Vec::new();
    for (i, h) in s.allowed_hosts.iter().flatten().enumerate() {
        let h = h.trim();
        if h.is_empty() || h.contains('/') {
            return Err(cx.err(
                format!("server.allowed_hosts[{i}]"),
                format!("{h:?} is not a host name (relay.internal, or *)"),
            ));
        }
        allowed_hosts.push(h.to_string());
    }
    Ok(ServerConfig {
        listen,
        max_body_bytes,
        shutdown_timeout: raw.server.shutdown_timeout.unwrap_or(DEFAULT_SHUTDOWN),
        request_log: raw
            .server
            .request_log
            .or(raw.logging.enabled)
            .unwrap_or(true),
        tls: super::tls::resolve_server_tls(raw.server.tls.as_ref(), cx.file)?,
        ca_dir: raw
            .server
            .ca_dir
            .as_deref()
            .filter(|p| !p.is_empty())
            .map(PathBuf::from),
        events_remote: raw.server.events_remote.unwrap_or(false),
        allowed_origins,
        allowed_hosts,
        trusted_proxies,
        max_connections,
        idle_timeout,
        header_read_timeout,
        body_read_timeout,
        max_header_bytes,
        max_buffered_bytes,
    })
}

/// `127.0.0.1:8080`, `[::1]:8080`, `:8080` (all interfaces) or a bare port (all interfaces).
fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(port) = s.trim_start_matches(':').parse::<u16>() {
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    if let Some(rest) = s.strip_prefix("localhost:") {
        if let Ok(port) = rest.parse::<u16>() {
            return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
        }
    }
    s.parse()
        .map_err(|_| format!("{s:?} is not an address such as \"127.0.0.1:8080\" or \":8080\""))
}

fn resolve_provider(
    cx: &Ctx,
    i: usize,
    p: RawProvider,
    env: &Env,
    warnings: &mut Vec<String>,
) -> Result<Provider, ConfigError> {
    let at = |k: &str| format!("providers[{i}].{k}");
    if p.name.is_empty() {
        return Err(cx.err(at("name"), "a provider needs a name"));
    }
    if !p
        .name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(cx.err(
            at("name"),
            format!(
                "{:?}: use letters, digits, '-', '_' or '.' (it is a URL path prefix)",
                p.name
            ),
        ));
    }
    if RESERVED_NAMES.contains(&p.name.as_str()) {
        return Err(cx.err(
            at("name"),
            format!("{:?} is reserved for relay's own paths", p.name),
        ));
    }
    let Some(base) = p.base_url.as_deref() else {
        return Err(cx.err(at("base_url"), "missing (e.g. https://api.openai.com/v1)"));
    };
    let base_url = parse_base_url(base).map_err(|m| cx.err(at("base_url"), m))?;
    let api_key_env = p.api_key_env.filter(|v| !v.is_empty());
    let api_key = match &api_key_env {
        Some(var) => match env.get(var).filter(|v| !v.is_empty()) {
            Some(v) => Some(Secret::new(v)),
            None => {
                warnings.push(format!(
                    "{}: environment variable {var} is not set; clients must send their own key",
                    at("api_key_env")
                ));
                None
            }
        },
        None => None,
    };
    let timeouts = Timeouts {
        connect: p.timeouts.connect.unwrap_or(DEFAULT_CONNECT),
        first_byte: p.timeouts.first_byte.unwrap_or(DEFAULT_FIRST_BYTE),
        idle: p.timeouts.idle.unwrap_or(DEFAULT_IDLE),
    };
    for (k, d) in [
        ("timeouts.connect", timeouts.connect),
        ("timeouts.first_byte", timeouts.first_byte),
        ("timeouts.idle", timeouts.idle),
    ] {
        if d.is_zero() {
            return Err(cx.err(at(k), "must be greater than 0"));
        }
    }
    let breaker = resolve_breaker(cx, i, &p.breaker)?;
    Ok(Provider {
        breaker,
        name: p.name,
        kind: p.kind.unwrap_or(ProviderKind::Openai),
        base_url,
        api_key_env,
        api_key,
        http2: p.http2.unwrap_or(false),
        timeouts,
    })
}

fn parse_base_url(s: &str) -> Result<BaseUrl, String> {
    if !s.contains("://") {
        return Err(format!(
            "{s:?}: the URL must start with http:// or https:// (e.g. https://api.openai.com/v1)"
        ));
    }
    let uri: http::Uri = s.parse().map_err(|e| format!("{s:?} is not a URL: {e}"))?;
    let scheme = match uri.scheme() {
        Some(sc) if *sc == http::uri::Scheme::HTTP || *sc == http::uri::Scheme::HTTPS => sc.clone(),
        _ => {
            return Err(format!(
            "{s:?}: the URL must start with http:// or https:// (e.g. https://api.openai.com/v1)"
        ))
        }
    };
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("{s:?}: the URL has no host"))?;
    if uri.query().is_some() {
        return Err(format!("{s:?}: a base URL cannot have a query string"));
    }
    Ok(BaseUrl {
        scheme,
        authority,
        path: uri.path().trim_end_matches('/').to_string(),
    })
}

fn resolve_route(
    cx: &Ctx,
    i: usize,
    r: RawRoute,
    providers: &[Provider],
) -> Result<Route, ConfigError> {
    let at = |k: &str| format!("routes[{i}].{k}");
    let provider = providers
        .iter()
        .position(|p| p.name == r.provider)
        .ok_or_else(|| {
            let known: Vec<&str> = providers.iter().map(|p| p.name.as_str()).collect();
            let message = if r.provider.is_empty() {
                format!("missing; one of {known:?}")
            } else {
                format!(
                    "unknown provider {:?} (known: {})",
                    r.provider,
                    known.join(", ")
                )
            };
            cx.err(at("provider"), message)
        })?;
    let pattern = |k: &str, s: Option<String>| -> Result<Option<glob::Pattern>, ConfigError> {
        s.map(|s| glob::Pattern::new(&s).map_err(|e| cx.err(at(k), format!("bad glob {s:?}: {e}"))))
            .transpose()
    };
    let fallback = match r.fallback.as_deref().filter(|f| !f.is_empty()) {
        None => None,
        Some(f) => match providers.iter().position(|p| p.name == f) {
            Some(i) if i == provider => {
                return Err(cx.err(at("fallback"), "the fallback must be another provider"))
            }
            Some(i) => Some(i),
            None => {
                let known: Vec<&str> = providers.iter().map(|p| p.name.as_str()).collect();
                return Err(cx.err(
                    at("fallback"),
                    format!("unknown provider {f:?} (known: {})", known.join(", ")),
                ));
            }
        },
    };
    Ok(Route {
        model: pattern("model", r.model)?,
        path: pattern("path", r.path)?,
        provider,
        fallback,
    })
}

/// With no `routes:`: `/v1/messages*` and `claude-*` to the first Anthropic-kind provider, everything
/// else to the first OpenAI-kind provider.
fn default_routes(providers: &[Provider]) -> Vec<Route> {
    let first = |kind| providers.iter().position(|p| p.kind == kind);
    let mut routes = Vec::new();
    if let Some(a) = first(ProviderKind::Anthropic) {
        for (model, path) in [(None, Some("/v1/messages*")), (Some("claude-*"), None)] {
            routes.push(Route {
                model: model.map(|m| glob::Pattern::new(m).expect("valid")),
                path: path.map(|p| glob::Pattern::new(p).expect("valid")),
                provider: a,
                fallback: None,
            });
        }
    }
    if let Some(o) = first(ProviderKind::Openai) {
        routes.push(Route {
            model: None,
            path: None,
            provider: o,
            fallback: None,
        });
    }
    routes
}

fn resolve_ratelimit(cx: &Ctx, raw: &RawConfig) -> Result<RateLimitConfig, ConfigError> {
    let rl = &raw.ratelimit;
    let rps = rl.requests_per_second.unwrap_or(0.0);
    if !rps.is_finite() || rps < 0.0 {
        return Err(cx.err(
            "ratelimit.requests_per_second",
            "must be a number ≥ 0 (0.2 = one request every 5 s)",
        ));
    }
    let has_rules = rl.rules.as_ref().is_some_and(|r| !r.is_empty());
    if rl.enabled == Some(true) && rps == 0.0 && !has_rules {
        return Err(cx.err(
            "ratelimit.requests_per_second",
            "ratelimit.enabled is true, so this must be greater than 0 (0.2 = one request every 5 s)",
        ));
    }
    let enabled = rl
        .enabled
        .unwrap_or(rl.requests_per_second.is_some() || has_rules)
        && (rps > 0.0 || has_rules);
    let burst = rl.burst.unwrap_or_else(|| rps.ceil().max(1.0) as u32);
    if enabled && burst == 0 {
        return Err(cx.err("ratelimit.burst", "must be at least 1"));
    }
    Ok(RateLimitConfig {
        enabled,
        requests_per_second: rps,
        burst,
    })
}

const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(10);

/// `ratelimit.rules`, `on_limit`, `max_wait`, `backend`.
fn resolve_limits(
    cx: &Ctx,
    rl: &super::raw::RawRateLimit,
    legacy: &RateLimitConfig,
    redis: &RedisConfig,
) -> Result<LimitsConfig, ConfigError> {
    let backend = rl.backend.unwrap_or(LimitBackend::Local);
    if backend == LimitBackend::Redis {
        if !cfg!(feature = "redis") {
            return Err(cx.err(
                "ratelimit.backend",
                "the redis backend needs a relay built with `--features redis`",
            ));
        }
        if !redis.enabled {
            return Err(cx.err(
                "ratelimit.backend",
                "the redis backend needs the redis: section enabled (redis.enabled: true)",
            ));
        }
    }
    let max_wait = rl.max_wait.unwrap_or(DEFAULT_MAX_WAIT);
    let mut rules = Vec::new();
    let mut names = HashSet::new();
    if legacy.enabled && legacy.requests_per_second > 0.0 {
        names.insert(super::LEGACY_RULE.to_string());
    }
    for (i, r) in rl.rules.iter().flatten().enumerate() {
        let at = |k: &str| format!("ratelimit.rules[{i}].{k}");
        let scope_text = r.scope.as_deref().unwrap_or("global");
        let scope = LimitScope::parse(scope_text).ok_or_else(|| {
            cx.err(
                at("scope"),
                format!("unknown scope {scope_text:?} (global, key, model, key+model)"),
            )
        })?;
        let model = match r.model.as_deref().filter(|m| !m.is_empty()) {
            None => None,
            Some(m) => Some(
                glob::Pattern::new(m)
                    .map_err(|e| cx.err(at("model"), format!("bad glob {m:?}: {e}")))?,
            ),
        };
        let rps = match r.requests_per_second {
            None => None,
            Some(v) if v.is_finite() && v > 0.0 => Some(v),
            Some(_) => {
                return Err(cx.err(
                    at("requests_per_second"),
                    "must be a number > 0 (0.2 = one request every 5 s)",
                ))
            }
        };
        let tpm = match r.tokens_per_minute {
            Some(0) => return Err(cx.err(at("tokens_per_minute"), "must be greater than 0")),
            t => t,
        };
        if rps.is_none() && tpm.is_none() {
            return Err(cx.err(
                format!("ratelimit.rules[{i}]"),
                "a rule needs requests_per_second or tokens_per_minute",
            ));
        }
        let burst = r
            .burst
            .unwrap_or_else(|| rps.map_or(1.0, |v: f64| v.ceil().max(1.0)) as u32);
        if burst == 0 {
            return Err(cx.err(at("burst"), "must be at least 1"));
        }
        let name = match r.name.as_deref().filter(|n| !n.is_empty()) {
            Some(n) => n.to_string(),
            None => match &model {
                Some(m) => format!("{}:{}", scope.as_str(), m.as_str()),
                None => scope.as_str().to_string(),
            },
        };
        if !names.insert(name.clone()) {
            return Err(cx.err(
                at("name"),
                format!("duplicate rule name {name:?} (give each rule its own name:)"),
            ));
        }
        rules.push(LimitRule {
            name,
            scope,
            model,
            requests_per_second: rps,
            burst,
            tokens_per_minute: tpm,
        });
    }
    Ok(LimitsConfig {
        rules,
        on_limit: rl.on_limit.unwrap_or(OnLimit::Reject),
        max_wait,
        backend,
    })
}

fn resolve_breaker(
    cx: &Ctx,
    i: usize,
    b: &super::raw::RawBreaker,
) -> Result<BreakerConfig, ConfigError> {
    let at = |k: &str| format!("providers[{i}].breaker.{k}");
    let d = BreakerConfig::default();
    let any = b.consecutive_failures.is_some()
        || b.failure_ratio.is_some()
        || b.min_requests.is_some()
        || b.window.is_some()
        || b.cooldown.is_some()
        || b.half_open_requests.is_some()
        || b.count_429.is_some();
    let out = BreakerConfig {
        enabled: b.enabled.unwrap_or(any),
        consecutive_failures: b.consecutive_failures.unwrap_or(d.consecutive_failures),
        failure_ratio: b.failure_ratio.unwrap_or(d.failure_ratio),
        min_requests: b.min_requests.unwrap_or(d.min_requests),
        window: b.window.unwrap_or(d.window),
        cooldown: b.cooldown.unwrap_or(d.cooldown),
        half_open_requests: b.half_open_requests.unwrap_or(d.half_open_requests),
        count_429: b.count_429.unwrap_or(d.count_429),
    };
    if out.consecutive_failures == 0 {
        return Err(cx.err(at("consecutive_failures"), "must be at least 1"));
    }
    if !(out.failure_ratio > 0.0 && out.failure_ratio <= 1.0) {
        return Err(cx.err(at("failure_ratio"), "must be a number in (0, 1]"));
    }
    if out.min_requests == 0 {
        return Err(cx.err(at("min_requests"), "must be at least 1"));
    }
    for (k, v) in [("window", out.window), ("cooldown", out.cooldown)] {
        if v.is_zero() {
            return Err(cx.err(at(k), "must be greater than 0"));
        }
    }
    if out.half_open_requests == 0 {
        return Err(cx.err(at("half_open_requests"), "must be at least 1"));
    }
    Ok(out)
}

/// USD amounts to integer micro-USD per 1M tokens.
fn resolve_price(cx: &Ctx, path: &str, p: RawPrice) -> Result<ModelPrice, ConfigError> {
    let micro = |k: &str, usd_per_million: f64| -> Result<u64, ConfigError> {
        if !usd_per_million.is_finite() || usd_per_million < 0.0 {
            return Err(cx.err(format!("{path}{k}"), "a price must be a number ≥ 0"));
        }
        Ok((usd_per_million * 1e6).round() as u64)
    };
    Ok(match p {
        RawPrice::PerThousand(usd) => {
            let v = micro("", usd * 1000.0)?;
            ModelPrice {
                input: v,
                output: v,
                cached_input: None,
                cache_write: None,
            }
        }
        RawPrice::PerMillion(m) => ModelPrice {
            input: micro(".input", m.input)?,
            output: micro(".output", m.output)?,
            cached_input: m
                .cached_input
                .map(|v| micro(".cached_input", v))
                .transpose()?,
            cache_write: m
                .cache_write
                .map(|v| micro(".cache_write", v))
                .transpose()?,
        },
    })
}

/// The effective config for people: durations as text, routes by provider name, secrets as `***`.
pub fn to_masked_yaml(cfg: &Config) -> String {
    #[derive(Serialize)]
    struct View<'a> {
        server: ServerView,
        providers: Vec<ProviderView<'a>>,
        routes: Vec<RouteView<'a>>,
        ratelimit: RateLimitView<'a>,
        redis: RedisView<'a>,
        cache: CacheView<'a>,
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        models: BTreeMap<&'a str, PriceView>,
        cost: CostView,
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        keys: BTreeMap<&'a str, &'a str>,
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        budgets: BTreeMap<&'a str, BudgetView>,
        proxy: ProxyView,
        #[serde(skip_serializing_if = "Option::is_none")]
        upstream: Option<UpstreamView>,
    }
    #[derive(Serialize)]
    struct CostView {
        enabled: bool,
        stream_usage: StreamUsage,
        ledger: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        ledger_path: Option<String>,
    }
    #[derive(Serialize)]
    struct BudgetView {
        #[serde(skip_serializing_if = "Option::is_none")]
        daily: Option<f64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        monthly: Option<f64>,
    }
    #[derive(Serialize)]
    struct ProxyView {
        intercept: super::tls::RawIntercept,
    }
    #[derive(Serialize)]
    struct UpstreamView {
        ca_file: String,
    }
    #[derive(Serialize)]
    struct ServerView {
        listen: String,
        max_body_bytes: u64,
        shutdown_timeout: String,
        request_log: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        tls: Option<super::tls::RawTls>,
        #[serde(skip_serializing_if = "Option::is_none")]
        ca_dir: Option<String>,
        events_remote: bool,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        allowed_origins: Vec<String>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        allowed_hosts: Vec<String>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        trusted_proxies: Vec<String>,
        max_connections: usize,
        idle_timeout: String,
        header_read_timeout: String,
        body_read_timeout: String,
        max_header_bytes: usize,
        max_buffered_bytes: u64,
    }
    #[derive(Serialize)]
    struct ProviderView<'a> {
        name: &'a str,
        kind: ProviderKind,
        base_url: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        api_key_env: Option<&'a str>,
        http2: bool,
        timeouts: TimeoutsView,
        breaker: BreakerView,
    }
    #[derive(Serialize)]
    struct BreakerView {
        enabled: bool,
        consecutive_failures: u32,
        failure_ratio: f64,
        min_requests: u32,
        window: String,
        cooldown: String,
        half_open_requests: u32,
        count_429: bool,
    }
    #[derive(Serialize)]
    struct TimeoutsView {
        connect: String,
        first_byte: String,
        idle: String,
    }
    #[derive(Serialize)]
    struct RouteView<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        model: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        path: Option<&'a str>,
        provider: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        fallback: Option<&'a str>,
    }
    #[derive(Serialize)]
    struct RateLimitView<'a> {
        enabled: bool,
        requests_per_second: f64,
        burst: u32,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        rules: Vec<RuleView<'a>>,
        on_limit: OnLimit,
        max_wait: String,
        backend: LimitBackend,
    }
    #[derive(Serialize)]
    struct RuleView<'a> {
        name: &'a str,
        scope: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        model: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        requests_per_second: Option<f64>,
        burst: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        tokens_per_minute: Option<u64>,
    }
    #[derive(Serialize)]
    struct RedisView<'a> {
        enabled: bool,
        address: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        password: Option<&'static str>,
        db: u32,
    }
    #[derive(Serialize)]
    struct CacheView<'a> {
        enabled: bool,
        backend: CacheBackend,
        #[serde(skip_serializing_if = "Option::is_none")]
        path: Option<String>,
        ttl: String,
        max_bytes: u64,
        mode: CacheMode,
        scope: CacheScope,
        ignore_fields: &'a [String],
        replay_timing: ReplayTiming,
    }
    #[derive(Serialize)]
    struct PriceView {
        input: f64,
        output: f64,
        #[serde(skip_serializing_if = "Option::is_none")]
        cached_input: Option<f64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_write: Option<f64>,
    }
    let d = |d: Duration| humantime::format_duration(d).to_string();
    let usd = |micro: u64| micro as f64 / 1e6;
    let view = View {
        server: ServerView {
            listen: cfg.server.listen.to_string(),
            max_body_bytes: cfg.server.max_body_bytes,
            shutdown_timeout: d(cfg.server.shutdown_timeout),
            request_log: cfg.server.request_log,
            tls: match &cfg.server.tls {
                super::ServerTls::Off => None,
                super::ServerTls::Auto => Some(super::tls::RawTls::Mode("auto".into())),
                super::ServerTls::Files { cert, key } => {
                    Some(super::tls::RawTls::Files(super::tls::RawTlsFiles {
                        cert: cert.display().to_string(),
                        key: key.display().to_string(),
                    }))
                }
            },
            ca_dir: cfg.server.ca_dir.as_ref().map(|p| p.display().to_string()),
            events_remote: cfg.server.events_remote,
            allowed_origins: cfg.server.allowed_origins.clone(),
            allowed_hosts: cfg.server.allowed_hosts.clone(),
            trusted_proxies: cfg
                .server
                .trusted_proxies
                .iter()
                .map(|n| n.to_string())
                .collect(),
            max_connections: cfg.server.max_connections,
            idle_timeout: d(cfg.server.idle_timeout),
            header_read_timeout: d(cfg.server.header_read_timeout),
            body_read_timeout: d(cfg.server.body_read_timeout),
            max_header_bytes: cfg.server.max_header_bytes,
            max_buffered_bytes: cfg.server.max_buffered_bytes,
        },
        providers: cfg
            .providers
            .iter()
            .map(|p| ProviderView {
                name: &p.name,
                kind: p.kind,
                base_url: p.base_url.to_string(),
                // The variable name only, so the output loads again; a variable that is not
                // set is reported as a warning.
                api_key_env: p.api_key_env.as_deref(),
                http2: p.http2,
                timeouts: TimeoutsView {
                    connect: d(p.timeouts.connect),
                    first_byte: d(p.timeouts.first_byte),
                    idle: d(p.timeouts.idle),
                },
                breaker: BreakerView {
                    enabled: p.breaker.enabled,
                    consecutive_failures: p.breaker.consecutive_failures,
                    failure_ratio: p.breaker.failure_ratio,
                    min_requests: p.breaker.min_requests,
                    window: d(p.breaker.window),
                    cooldown: d(p.breaker.cooldown),
                    half_open_requests: p.breaker.half_open_requests,
                    count_429: p.breaker.count_429,
                },
            })
            .collect(),
        routes: cfg
            .routes
            .iter()
            .map(|r| RouteView {
                model: r.model.as_ref().map(|p| p.as_str()),
                path: r.path.as_ref().map(|p| p.as_str()),
                provider: &cfg.providers[r.provider].name,
                fallback: r.fallback.map(|f| cfg.providers[f].name.as_str()),
            })
            .collect(),
        ratelimit: RateLimitView {
            enabled: cfg.ratelimit.enabled,
            requests_per_second: cfg.ratelimit.requests_per_second,
            burst: cfg.ratelimit.burst,
            rules: cfg
                .limits
                .rules
                .iter()
                .map(|r| RuleView {
                    name: &r.name,
                    scope: r.scope.as_str(),
                    model: r.model.as_ref().map(|m| m.as_str()),
                    requests_per_second: r.requests_per_second,
                    burst: r.burst,
                    tokens_per_minute: r.tokens_per_minute,
                })
                .collect(),
            on_limit: cfg.limits.on_limit,
            max_wait: d(cfg.limits.max_wait),
            backend: cfg.limits.backend,
        },
        redis: RedisView {
            enabled: cfg.redis.enabled,
            address: &cfg.redis.address,
            password: cfg.redis.password.as_ref().map(|_| "***"),
            db: cfg.redis.db,
        },
        cache: CacheView {
            enabled: cfg.cache.enabled,
            backend: cfg.cache.backend,
            path: cfg.cache.path.as_ref().map(|p| p.display().to_string()),
            ttl: cfg.cache.ttl.map(d).unwrap_or_else(|| "0".to_string()),
            max_bytes: cfg.cache.max_bytes,
            mode: cfg.cache.mode,
            scope: cfg.cache.scope,
            ignore_fields: &cfg.cache.ignore_fields,
            replay_timing: cfg.cache.replay_timing,
        },
        models: cfg
            .models
            .iter()
            .map(|(k, p)| {
                (
                    k.as_str(),
                    PriceView {
                        input: usd(p.input),
                        output: usd(p.output),
                        cached_input: p.cached_input.map(usd),
                        cache_write: p.cache_write.map(usd),
                    },
                )
            })
            .collect(),
        cost: CostView {
            enabled: cfg.cost.enabled,
            stream_usage: cfg.cost.stream_usage,
            ledger: cfg.cost.ledger,
            ledger_path: cfg
                .cost
                .ledger_path
                .as_ref()
                .map(|p| p.display().to_string()),
        },
        keys: cfg
            .keys
            .iter()
            .map(|k| (k.name.as_str(), k.env.as_str()))
            .collect(),
        budgets: cfg
            .budgets
            .iter()
            .map(|(k, b)| {
                (
                    k.as_str(),
                    BudgetView {
                        daily: b.daily.map(usd),
                        monthly: b.monthly.map(usd),
                    },
                )
            })
            .collect(),
        proxy: ProxyView {
            intercept: match &cfg.proxy.intercept {
                super::Intercept::All => super::tls::RawIntercept::All(true),
                super::Intercept::Off => super::tls::RawIntercept::All(false),
                super::Intercept::Hosts(h) => super::tls::RawIntercept::Hosts(h.clone()),
            },
        },
        upstream: cfg.upstream.ca_file.as_ref().map(|p| UpstreamView {
            ca_file: p.display().to_string(),
        }),
    };
    yaml_serde::to_string(&view).expect("config view serializes")
}
