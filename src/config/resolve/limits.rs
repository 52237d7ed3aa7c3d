//! Resolving `ratelimit` (the original relay's), `limits` and `breaker`.

use super::*;

pub(super) fn resolve_ratelimit(cx: &Ctx, raw: &RawConfig) -> Result<RateLimitConfig, ConfigError> {
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

pub(super) const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(10);

/// `ratelimit.rules`, `on_limit`, `max_wait`, `backend`.
pub(super) fn resolve_limits(
    cx: &Ctx,
    rl: &crate::config::raw::RawRateLimit,
    legacy: &RateLimitConfig,
    redis: &RedisConfig,
) -> Result<LimitsConfig, ConfigError> {
    // `redis.enabled: true` alone shares the limits, as in the original relay.
    let shared = redis.enabled && cfg!(feature = "redis");
    let backend = rl.backend.unwrap_or(if shared {
        LimitBackend::Redis
    } else {
        LimitBackend::Local
    });
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
        names.insert(crate::config::LEGACY_RULE.to_string());
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

pub(super) fn resolve_breaker(
    cx: &Ctx,
    i: usize,
    b: &crate::config::raw::RawBreaker,
) -> Result<BreakerConfig, ConfigError> {
    let at = |k: &str| format!("providers[{i}].breaker.{k}");
    let d = BreakerConfig::default();
    let out = BreakerConfig {
        // On by default, as in the original relay (5 failures in a row, 30 s open, one probe).
        enabled: b.enabled.unwrap_or(true),
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
