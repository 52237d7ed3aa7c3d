//! Resolving `providers` (base URLs, keys, timeouts) and `routes` (with the default table).

use super::pool::{resolve_endpoints, resolve_health, resolve_provider_keys, resolve_strategy};
use super::*;

pub(super) fn resolve_provider(
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
    let endpoints = resolve_endpoints(cx, &at, p.base_url.as_deref(), p.endpoints, false)?;
    let base_url = endpoints[0].url.clone();
    let strategy = resolve_strategy(cx, at("strategy"), p.strategy.as_deref())?;
    let health_check = resolve_health(cx, &at("health_check"), p.health_check.as_ref(), false)?;
    let vars = p.api_key_env.map(|v| v.into_vec()).unwrap_or_default();
    let (api_key_env, keys) = resolve_provider_keys(cx, &at("api_key_env"), vars, env, warnings)?;
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
    let retry = resolve_retry(cx, &at("retry"), &p.retry, &RetryConfig::default())?;
    Ok(Provider {
        breaker,
        retry,
        name: p.name,
        kind: p.kind.unwrap_or(ProviderKind::Openai),
        base_url,
        endpoints,
        strategy,
        health_check,
        api_key_env,
        keys,
        http2: p.http2.unwrap_or(false),
        timeouts,
    })
}

pub(super) fn parse_base_url(s: &str) -> Result<BaseUrl, String> {
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

pub(super) fn resolve_route(
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
    let fallback_on = match &r.fallback_on {
        None => default_fallback_on(),
        Some(list) => whens(cx, &at("fallback_on"), list)?,
    };
    if r.fallback_on.is_some() && fallback.is_none() {
        return Err(cx.err(
            at("fallback_on"),
            "needs a fallback: provider to hand over to",
        ));
    }
    let retry = match &r.retry {
        None => None,
        Some(raw) => Some(resolve_retry(
            cx,
            &at("retry"),
            raw,
            &providers[provider].retry,
        )?),
    };
    Ok(Route {
        model: pattern("model", r.model)?,
        path: pattern("path", r.path)?,
        provider,
        fallback,
        fallback_on,
        retry,
    })
}

/// A list of [`When`]s at `path`.
fn whens(cx: &Ctx, path: &str, list: &[RawWhen]) -> Result<Vec<When>, ConfigError> {
    list.iter()
        .enumerate()
        .map(|(j, s)| When::parse(&s.0).map_err(|m| cx.err(format!("{path}[{j}]"), m)))
        .collect()
}

/// `retry` at `path`, unset keys taken from `base` (the provider's, for a route).
fn resolve_retry(
    cx: &Ctx,
    path: &str,
    raw: &RawRetry,
    base: &RetryConfig,
) -> Result<RetryConfig, ConfigError> {
    let on = match &raw.on {
        None => base.on.clone(),
        Some(list) => whens(cx, &format!("{path}.on"), list)?,
    };
    if on.contains(&When::CircuitOpen) {
        return Err(cx.err(
            format!("{path}.on"),
            "circuit_open is for fallback_on: an open circuit is not retried",
        ));
    }
    let out = RetryConfig {
        attempts: raw.attempts.unwrap_or(base.attempts),
        on,
        base_delay: raw.base_delay.unwrap_or(base.base_delay),
        max_delay: raw.max_delay.unwrap_or(base.max_delay),
    };
    if out.attempts == 0 {
        return Err(cx.err(
            format!("{path}.attempts"),
            "must be at least 1 (1: no retries)",
        ));
    }
    if out.attempts > 10 {
        return Err(cx.err(format!("{path}.attempts"), "at most 10"));
    }
    if out.base_delay > out.max_delay {
        return Err(cx.err(
            format!("{path}.base_delay"),
            format!(
                "longer than max_delay ({})",
                humantime::format_duration(out.max_delay)
            ),
        ));
    }
    Ok(out)
}

/// With no `routes:`: `/v1/messages*` and `claude-*` to the first Anthropic-kind provider, everything
/// else to the first OpenAI-kind provider.
pub(super) fn default_routes(providers: &[Provider]) -> Vec<Route> {
    let first = |kind| providers.iter().position(|p| p.kind == kind);
    let mut routes = Vec::new();
    if let Some(a) = first(ProviderKind::Anthropic) {
        for (model, path) in [(None, Some("/v1/messages*")), (Some("claude-*"), None)] {
            routes.push(Route {
                model: model.map(|m| glob::Pattern::new(m).expect("valid")),
                path: path.map(|p| glob::Pattern::new(p).expect("valid")),
                provider: a,
                fallback: None,
                fallback_on: default_fallback_on(),
                retry: None,
            });
        }
    }
    if let Some(o) = first(ProviderKind::Openai) {
        routes.push(Route {
            model: None,
            path: None,
            provider: o,
            fallback: None,
            fallback_on: default_fallback_on(),
            retry: None,
        });
    }
    routes
}
