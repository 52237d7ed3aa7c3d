//! The effective config as `relay config check` prints it: durations as text, routes by provider
//! name, secrets as `***`.

use std::collections::BTreeMap;

use serde::Serialize;

use super::*;

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
        #[serde(skip_serializing_if = "Option::is_none")]
        auth: Option<AuthView>,
    }
    #[derive(Serialize)]
    struct AuthView {
        enabled: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        admin_key: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        keys_path: Option<String>,
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
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        allow_unauthenticated: bool,
    }
    #[derive(Serialize)]
    struct ProviderView<'a> {
        name: &'a str,
        kind: ProviderKind,
        #[serde(skip_serializing_if = "Option::is_none")]
        base_url: Option<String>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        endpoints: Vec<EndpointView<'a>>,
        strategy: super::Strategy,
        #[serde(skip_serializing_if = "Option::is_none")]
        health_check: Option<HealthView<'a>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        api_key_env: Option<super::raw::OneOrMany>,
        http2: bool,
        timeouts: TimeoutsView,
        breaker: BreakerView,
        retry: RetryView,
    }
    #[derive(Serialize)]
    struct EndpointView<'a> {
        url: String,
        weight: u32,
        name: &'a str,
    }
    #[derive(Serialize)]
    struct HealthView<'a> {
        enabled: bool,
        interval: String,
        path: &'a str,
        timeout: String,
    }
    #[derive(Serialize)]
    struct RetryView {
        attempts: u32,
        on: Vec<String>,
        base_delay: String,
        max_delay: String,
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
        #[serde(skip_serializing_if = "Option::is_none")]
        fallback_on: Option<Vec<String>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        retry: Option<RetryView>,
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
        client_rules: bool,
        portable: bool,
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
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_write_1h: Option<f64>,
    }
    let d = |d: Duration| humantime::format_duration(d).to_string();
    let retry = |r: &crate::config::RetryConfig| RetryView {
        attempts: r.attempts,
        on: r.on.iter().map(ToString::to_string).collect(),
        base_delay: d(r.base_delay),
        max_delay: d(r.max_delay),
    };
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
            allow_unauthenticated: cfg.server.allow_unauthenticated,
        },
        providers: cfg
            .providers
            .iter()
            .map(|p| ProviderView {
                name: &p.name,
                kind: p.kind,
                base_url: (p.endpoints.len() == 1).then(|| p.base_url.to_string()),
                endpoints: if p.endpoints.len() > 1 {
                    p.endpoints
                        .iter()
                        .map(|e| EndpointView {
                            url: e.url.to_string(),
                            weight: e.weight,
                            name: &e.name,
                        })
                        .collect()
                } else {
                    Vec::new()
                },
                strategy: p.strategy,
                health_check: p.health_check.as_ref().map(|h| HealthView {
                    enabled: true,
                    interval: d(h.interval),
                    path: &h.path,
                    timeout: d(h.timeout),
                }),
                // The variable names only, so the output loads again; a variable that is not
                // set is reported as a warning.
                api_key_env: match p.api_key_env.as_slice() {
                    [] => None,
                    [one] => Some(super::raw::OneOrMany::One(one.clone())),
                    many => Some(super::raw::OneOrMany::Many(many.to_vec())),
                },
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
                retry: retry(&p.retry),
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
                fallback_on: r
                    .fallback
                    .map(|_| r.fallback_on.iter().map(ToString::to_string).collect()),
                retry: r.retry.as_ref().map(retry),
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
            client_rules: cfg.cache.client_rules,
            portable: cfg.cache.portable,
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
                        cache_write_1h: p.cache_write_1h.map(usd),
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
        auth: (cfg.auth != AuthConfig::default()).then(|| AuthView {
            enabled: cfg.auth.enabled,
            admin_key: cfg
                .auth
                .admin_key
                .as_ref()
                .map(|k| format!("*** ({})", k.source)),
            keys_path: cfg.auth.keys_path.as_ref().map(|p| p.display().to_string()),
        }),
    };
    yaml_serde::to_string(&view).expect("config view serializes")
}
