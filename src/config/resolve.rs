//! Step 4: raw keys to the typed [`Config`]: defaults, the original relay's keys mapped onto the
//! richer schema, references resolved, invariants checked.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::default_fallback_on;
use super::raw::{
    PortSpec, RawCache, RawConfig, RawPrice, RawProvider, RawRetry, RawRoute, RawWhen,
};
use super::{
    BaseUrl, BreakerConfig, CacheBackend, CacheConfig, CacheMode, CacheScope, Config, ConfigError,
    Env, LimitBackend, LimitRule, LimitScope, LimitsConfig, ModelPrice, OnLimit, Provider,
    ProviderKind, RateLimitConfig, RedisConfig, ReplayTiming, RetryConfig, Route, Secret,
    ServerConfig, Timeouts, When,
};
use super::{Budget, CostConfig, KeyAlias, StreamUsage};

mod limits;
mod pool;
mod providers;
mod server;

use limits::{resolve_breaker, resolve_limits, resolve_ratelimit};
use providers::{default_routes, parse_base_url, resolve_provider, resolve_route};
use server::resolve_server;

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
        let url = pool::with_v1(target);
        openai.base_url = parse_base_url(&url).map_err(|m| cx.err("proxy.target", m))?;
        openai.endpoints = vec![super::Endpoint {
            name: openai.base_url.host_port(),
            url: openai.base_url.clone(),
            weight: 1,
        }];
    }
    if let Some(lb) = raw.loadbalancer.take() {
        pool::apply_loadbalancer(&cx, lb, &mut providers, &mut warnings)?;
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
    pool::label_keys(&mut providers, &keys);
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
                Some(v) => super::budget_micros(v).map(Some).ok_or_else(|| {
                    cx.err(format!("{at}.{k}"), "a budget must be a number of USD ≥ 0")
                }),
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

    if redis.enabled && !cfg!(feature = "redis") {
        warnings.push(
            "redis.enabled: this relay was built without `--features redis`; the cache and the rate limits stay on this instance".to_string(),
        );
    }
    for (key, present) in [
        ("transform", raw.transform.is_some()),
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

    let auth = super::auth::resolve_auth(std::mem::take(&mut raw.auth), env, file, &mut warnings)?;
    Ok(Config {
        auth,
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
    // `redis.enabled: true` alone shares the cache, as in the original relay.
    let shared = redis.enabled && cfg!(feature = "redis");
    let backend = c.backend.unwrap_or(if shared {
        CacheBackend::Redis
    } else {
        CacheBackend::Redb
    });
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
    ignore_fields.dedup();
    let written = crate::fieldpath::FieldSet::parse(&ignore_fields)
        .map_err(|(i, e)| cx.err(format!("cache.ignore_fields[{i}]"), e.to_string()))?;
    let client_rules = c.client_rules.unwrap_or(true);
    let ignore = if client_rules {
        written.union(crate::wire::clients::per_run_fields())
    } else {
        written
    };
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
        client_rules,
        ignore: std::sync::Arc::new(ignore),
        portable: c.portable.unwrap_or(true),
        replay_timing: c.replay_timing.unwrap_or(ReplayTiming::Fast),
    })
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
                cache_write_1h: None,
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
            cache_write_1h: m
                .cache_write_1h
                .map(|v| micro(".cache_write_1h", v))
                .transpose()?,
        },
    })
}
