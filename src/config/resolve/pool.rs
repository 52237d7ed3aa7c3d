//! Resolving a provider's pools (`endpoints`, `strategy`, `health_check`, `api_key_env` as a
//! list) and the original relay's `loadbalancer:` section, which maps onto them.

use super::super::pool::endpoint_name;
use super::super::raw::{RawEndpoint, RawHealthCheck, RawLoadBalancer};
use super::super::{Endpoint, HealthCheck, KeyAlias, ProviderKey, Strategy};
use super::*;

/// `base_url` or `endpoints` (one of them) as the provider's endpoint list.
pub(super) fn resolve_endpoints(
    cx: &Ctx,
    at: &dyn Fn(&str) -> String,
    base_url: Option<&str>,
    endpoints: Option<Vec<RawEndpoint>>,
    origin_gets_v1: bool,
) -> Result<Vec<Endpoint>, ConfigError> {
    let list: Vec<(String, RawEndpoint)> = match (base_url, endpoints) {
        (Some(_), Some(e)) if !e.is_empty() => {
            return Err(cx.err(
                at("endpoints"),
                "set base_url or endpoints, not both (the first endpoint is the base URL)",
            ))
        }
        (_, Some(e)) if !e.is_empty() => e
            .into_iter()
            .enumerate()
            .map(|(i, e)| (at(&format!("endpoints[{i}]")), e))
            .collect(),
        (Some(b), _) => vec![(at("base_url"), RawEndpoint::Url(b.to_string()))],
        (None, _) => {
            return Err(cx.err(at("base_url"), "missing (e.g. https://api.openai.com/v1)"));
        }
    };
    let mut out: Vec<Endpoint> = Vec::with_capacity(list.len());
    for (path, e) in list {
        let e = e.full();
        let url = if origin_gets_v1 {
            with_v1(&e.url)
        } else {
            e.url.clone()
        };
        let url = parse_base_url(&url).map_err(|m| cx.err(path.clone(), m))?;
        let weight = e.weight.unwrap_or(1);
        if weight == 0 || weight > 1000 {
            return Err(cx.err(format!("{path}.weight"), "a weight is 1 to 1000"));
        }
        let name = e
            .name
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| endpoint_name(&url));
        out.push(Endpoint { url, weight, name });
    }
    // Two endpoints on one host: their paths tell them apart, else their place in the list.
    for i in 0..out.len() {
        if out.iter().filter(|o| o.name == out[i].name).count() > 1 {
            let with_path = format!("{}{}", out[i].name, out[i].url.path);
            out[i].name = if out.iter().any(|o| o.name == with_path) {
                format!("{}#{}", out[i].name, i + 1)
            } else {
                with_path
            };
        }
    }
    let mut seen = HashSet::new();
    for (i, e) in out.iter().enumerate() {
        if !seen.insert(e.name.clone()) {
            return Err(cx.err(
                at(&format!("endpoints[{i}].name")),
                format!("two endpoints are named {:?}", e.name),
            ));
        }
    }
    Ok(out)
}

/// The original relay's origin form: `https://api.openai.com` means `https://api.openai.com/v1`.
pub(super) fn with_v1(url: &str) -> String {
    let trimmed = url.trim_end_matches('/');
    if trimmed.ends_with("/v1") {
        trimmed.to_string()
    } else {
        format!("{trimmed}/v1")
    }
}

pub(super) fn resolve_strategy(
    cx: &Ctx,
    path: String,
    s: Option<&str>,
) -> Result<Strategy, ConfigError> {
    match s {
        None => Ok(Strategy::default()),
        Some(s) => Strategy::parse(s).ok_or_else(|| {
            cx.err(
                path,
                format!("{s:?}: one of round-robin, weighted, least-latency, random"),
            )
        }),
    }
}

/// `health_check`: off unless `enabled: true` (or `on_by_default`, for the original relay's
/// load balancer, which checked every target every 10 s).
pub(super) fn resolve_health(
    cx: &Ctx,
    at: &str,
    h: Option<&RawHealthCheck>,
    on_by_default: bool,
) -> Result<Option<HealthCheck>, ConfigError> {
    let enabled = h
        .and_then(|h| h.enabled)
        .unwrap_or(on_by_default || h.is_some());
    if !enabled {
        return Ok(None);
    }
    let h = h.cloned().unwrap_or_default();
    let interval = h.interval.unwrap_or(HealthCheck::DEFAULT_INTERVAL);
    let timeout = h.timeout.unwrap_or(HealthCheck::DEFAULT_TIMEOUT);
    for (k, d) in [("interval", interval), ("timeout", timeout)] {
        if d.is_zero() {
            return Err(cx.err(format!("{at}.{k}"), "must be greater than 0"));
        }
    }
    let path = match h.path.filter(|p| !p.is_empty()) {
        None => HealthCheck::DEFAULT_PATH.to_string(),
        Some(p) if p.starts_with('/') && !p.contains(['?', '#', ' ']) => p,
        Some(p) => {
            return Err(cx.err(
                format!("{at}.path"),
                format!("{p:?}: a path under the endpoint's URL, e.g. /models"),
            ))
        }
    };
    Ok(Some(HealthCheck {
        interval,
        path,
        timeout,
    }))
}

/// `api_key_env`: the keys of the variables that are set, in order (each unset one is a warning).
pub(super) fn resolve_provider_keys(
    cx: &Ctx,
    at: &str,
    vars: Vec<String>,
    env: &Env,
    warnings: &mut Vec<String>,
) -> Result<(Vec<String>, Vec<ProviderKey>), ConfigError> {
    let vars: Vec<String> = vars.into_iter().filter(|v| !v.is_empty()).collect();
    let mut keys = Vec::with_capacity(vars.len());
    for (i, var) in vars.iter().enumerate() {
        if vars[..i].contains(var) {
            return Err(cx.err(at, format!("{var} is listed twice")));
        }
        match env.get(var).filter(|v| !v.is_empty()) {
            Some(v) => keys.push(ProviderKey {
                env: var.clone(),
                label: format!("key-{}", &blake3::hash(v.as_bytes()).to_hex()[..12]),
                secret: Secret::new(v),
            }),
            None => warnings.push(if vars.len() == 1 {
                format!(
                    "{at}: environment variable {var} is not set; clients must send their own key"
                )
            } else {
                format!("{at}: environment variable {var} is not set; the pool goes without it")
            }),
        }
    }
    Ok((vars, keys))
}

/// Names each provider key by its `keys:` alias when one matches its hash.
pub(super) fn label_keys(providers: &mut [Provider], aliases: &[KeyAlias]) {
    for key in providers.iter_mut().flat_map(|p| p.keys.iter_mut()) {
        let hex = blake3::hash(key.secret.expose().as_bytes()).to_hex();
        if let Some(a) = aliases
            .iter()
            .find(|a| a.hash.as_deref().is_some_and(|h| hex.starts_with(h)))
        {
            key.label = a.name.clone();
        }
    }
}

/// The original relay's `loadbalancer: {enabled, strategy, targets: [{url, weight}]}`: the
/// targets (origins, `/v1` added as for `proxy.target`) become the endpoints of the `openai`
/// provider, checked every 10 s unless its `health_check` says otherwise.
pub(super) fn apply_loadbalancer(
    cx: &Ctx,
    lb: RawLoadBalancer,
    providers: &mut [Provider],
    warnings: &mut Vec<String>,
) -> Result<(), ConfigError> {
    for k in lb.other.keys() {
        warnings.push(format!(
            "loadbalancer.{k}: a key of the original relay's load balancer that relay does not use; ignored"
        ));
    }
    if lb.enabled == Some(false) {
        return Ok(());
    }
    let targets = lb.targets.unwrap_or_default();
    if targets.is_empty() {
        if lb.enabled == Some(true) {
            return Err(cx.err(
                "loadbalancer.targets",
                "list the upstream URLs to balance over",
            ));
        }
        return Ok(());
    }
    let Some(openai) = providers.iter_mut().find(|p| p.name == "openai") else {
        return Err(cx.err(
            "loadbalancer",
            "loadbalancer.targets are the endpoints of the provider named \"openai\", and there is none",
        ));
    };
    let at = |k: &str| format!("loadbalancer.{}", k.replace("endpoints", "targets"));
    openai.endpoints = resolve_endpoints(cx, &at, None, Some(targets), true)?;
    openai.base_url = openai.endpoints[0].url.clone();
    openai.strategy = resolve_strategy(cx, at("strategy"), lb.strategy.as_deref())?;
    let mut health = lb.health_check.unwrap_or_default();
    if health.interval.is_none() {
        health.interval = lb.health_check_interval;
    }
    openai.health_check = resolve_health(cx, "loadbalancer.health_check", Some(&health), true)?;
    Ok(())
}
