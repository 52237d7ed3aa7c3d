//! Resolving a provider's pools (`endpoints`, `strategy`, `health_check`, `api_key_env` as a
//! list) and the original relay's `loadbalancer:` section, which maps onto them.

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
            .unwrap_or_else(|| url.host_port());
        out.push(Endpoint { url, weight, name });
    }
    // Two endpoints on one host: their paths tell them apart, else their place in the list.
    let names: Vec<String> = out.iter().map(|e| e.name.clone()).collect();
    for (i, e) in out.iter_mut().enumerate() {
        if names.iter().filter(|n| **n == e.name).count() > 1 {
            let with_path = format!("{}{}", e.name, e.url.path);
            e.name = if names.contains(&with_path) {
                format!("{}#{}", e.name, i + 1)
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
            Some(v) => {
                let hash = blake3::hash(v.as_bytes());
                keys.push(ProviderKey {
                    env: var.clone(),
                    label: format!("key-{}", &hash.to_hex()[..12]),
                    hash,
                    secret: Secret::new(v),
                })
            }
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
        let hex = key.hash.to_hex();
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

#[cfg(test)]
mod tests {
    use super::super::super::{Config, Env, Strategy};
    use std::time::Duration;

    fn load(yaml: &str, env: &Env) -> Result<Config, String> {
        Config::from_yaml_str(yaml, "t.yaml", env).map_err(|e| e.to_string())
    }

    #[test]
    fn endpoints_weights_strategy_health_and_a_key_pool() {
        let env = Env::empty()
            .with("KEY_A", "sk-a")
            .with("KEY_B", "sk-b")
            .with("TEAM", "sk-b");
        let cfg = load(
            "providers:
  - name: openai
    endpoints: [{url: 'http://east:9001/v1', weight: 3}, 'http://west:9002/v1', {url: 'http://east:9001/openai/v1', name: e2}]
    strategy: least-latency
    health_check: {interval: 2s, path: /health}
    api_key_env: [KEY_A, KEY_B, KEY_UNSET]
keys: {team: TEAM}
",
            &env,
        )
        .unwrap();
        let p = &cfg.providers[0];
        let names: Vec<&str> = p.endpoints.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["east:9001", "west:9002", "e2"]);
        assert_eq!(p.endpoints[0].weight, 3);
        assert_eq!(p.base_url.to_string(), "http://east:9001/v1");
        assert_eq!(p.strategy, Strategy::LeastLatency);
        let h = p.health_check.as_ref().unwrap();
        assert_eq!(
            (h.interval, h.path.as_str()),
            (Duration::from_secs(2), "/health")
        );
        assert_eq!(h.timeout, Duration::from_secs(5));
        let labels: Vec<&str> = p.keys.iter().map(|k| k.label.as_str()).collect();
        let a = blake3::hash(b"sk-a").to_hex();
        assert_eq!(labels, [format!("key-{}", &a[..12]).as_str(), "team"]);
        assert_eq!(p.api_key().unwrap().expose(), "sk-a");
        assert!(
            cfg.warnings
                .iter()
                .any(|w| w.contains("KEY_UNSET is not set; the pool goes without it")),
            "{:?}",
            cfg.warnings
        );
        // Two endpoints on one host are told apart by their paths.
        let cfg = load(
            "providers:\n  - {name: x, endpoints: ['http://h/a/v1', 'http://h/b/v1']}\n",
            &env,
        )
        .unwrap();
        let names: Vec<&str> = cfg.providers[0]
            .endpoints
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(names, ["h/a/v1", "h/b/v1"]);
        assert_eq!(cfg.providers[0].health_check, None, "off unless asked");
    }

    /// The first provider's endpoint URLs.
    fn urls(cfg: &Config) -> Vec<String> {
        cfg.providers[0]
            .endpoints
            .iter()
            .map(|e| e.url.to_string())
            .collect()
    }

    #[test]
    fn an_env_base_url_or_endpoints_replaces_the_files() {
        let file = "providers:\n  - {name: openai, endpoints: ['http://a/v1', 'http://b/v1']}\n";
        let env = Env::empty().with("RELAY_PROVIDERS_OPENAI_BASE_URL", "http://c/v1");
        let cfg = load(file, &env).unwrap();
        assert_eq!(urls(&cfg), ["http://c/v1"]);
        let file = "providers:\n  - {name: openai, base_url: 'http://a/v1'}\n";
        let env = Env::empty().with(
            "RELAY_PROVIDERS_OPENAI_ENDPOINTS",
            "[{url: 'http://d/v1', weight: 2}, 'http://e/v1']",
        );
        let cfg = load(file, &env).unwrap();
        assert_eq!(urls(&cfg), ["http://d/v1", "http://e/v1"]);
        assert_eq!(cfg.providers[0].endpoints[0].weight, 2);
    }

    #[test]
    fn pool_errors_name_the_key() {
        let env = Env::empty();
        for (yaml, want) in [
            (
                "providers:\n  - {name: x, base_url: 'http://a/v1', endpoints: ['http://b/v1']}\n",
                "t.yaml: providers[0].endpoints: set base_url or endpoints, not both",
            ),
            (
                "providers:\n  - {name: x, endpoints: [{url: 'http://a/v1', weight: 0}]}\n",
                "t.yaml: providers[0].endpoints[0].weight: a weight is 1 to 1000",
            ),
            (
                "providers:\n  - {name: x, endpoints: ['a.example/v1']}\n",
                "t.yaml: providers[0].endpoints[0]:",
            ),
            (
                "providers:\n  - {name: x, base_url: 'http://a/v1', strategy: fastest}\n",
                "t.yaml: providers[0].strategy: \"fastest\": one of round-robin, weighted, least-latency, random",
            ),
            (
                "providers:\n  - {name: x, base_url: 'http://a/v1', health_check: {interval: 0s}}\n",
                "t.yaml: providers[0].health_check.interval: must be greater than 0",
            ),
            (
                "providers:\n  - {name: x, base_url: 'http://a/v1', api_key_env: [A, A]}\n",
                "t.yaml: providers[0].api_key_env: A is listed twice",
            ),
            (
                "loadbalancer: {enabled: true, targets: []}\n",
                "t.yaml: loadbalancer.targets: list the upstream URLs to balance over",
            ),
            (
                "loadbalancer: {enabled: true, targets: [{url: 'http://a', weight: -1}]}\n",
                "t.yaml: loadbalancer.targets",
            ),
        ] {
            let got = load(yaml, &env).unwrap_err();
            assert!(got.starts_with(want), "{yaml}\n got: {got}\nwant: {want}");
        }
    }

    #[test]
    fn the_original_relays_loadbalancer_maps_onto_openai() {
        let cfg = load(
            "proxy: {target: 'https://api.openai.com'}
loadbalancer:
  enabled: true
  strategy: weighted
  targets:
    - {url: 'http://10.0.0.1:8000', weight: 2}
    - {url: 'http://10.0.0.2:8000/v1', weight: 1}
  sticky_sessions: true
",
            &Env::empty(),
        )
        .unwrap();
        let openai = cfg.provider("openai").unwrap();
        let urls: Vec<String> = openai.endpoints.iter().map(|e| e.url.to_string()).collect();
        assert_eq!(urls, ["http://10.0.0.1:8000/v1", "http://10.0.0.2:8000/v1"]);
        assert_eq!(openai.endpoints[0].weight, 2);
        assert_eq!(openai.strategy, Strategy::Weighted);
        let h = openai
            .health_check
            .as_ref()
            .expect("checked as in the original");
        assert_eq!(h.interval, Duration::from_secs(10));
        assert!(
            !cfg.warnings.iter().any(|w| w.starts_with("loadbalancer:")),
            "no longer ignored: {:?}",
            cfg.warnings
        );
        assert!(cfg
            .warnings
            .iter()
            .any(|w| w.starts_with("loadbalancer.sticky_sessions:")));
        // Turned off: the section changes nothing.
        let off = load(
            "loadbalancer: {enabled: false, targets: ['http://10.0.0.1']}\n",
            &Env::empty(),
        )
        .unwrap();
        assert_eq!(off.provider("openai").unwrap().endpoints.len(), 1);
    }
}
