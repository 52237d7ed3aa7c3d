//! Routing: which provider gets a request, and the path it gets there.
//!
//! In: the request path and, when the path alone cannot decide, the request's `model`. Out: a provider
//! index and the upstream path. Two ways in:
//! - an explicit prefix, `/<provider>/v1/...` (e.g. `/anthropic/v1/messages`): that provider, no body
//!   needed;
//! - `/v1/...`: the config's `routes:` in order, first match wins (model glob and/or path glob).
//!
//! The upstream path is the provider's `base_url` path plus the client path without its leading
//! `/v1`: `/v1/chat/completions` → `https://api.openai.com/v1` + `/chat/completions`.

use crate::config::Config;

/// Where a path points before the body is looked at.
#[derive(Debug, PartialEq, Eq)]
pub enum PathTarget<'a> {
    /// `/<provider>/...`: provider index, and the rest of the path (starting with `/`).
    Explicit { provider: usize, rest: &'a str },
    /// `/v1/...`: decided by the route table.
    Table { path: &'a str },
    /// Nothing relay serves.
    Unknown,
}

/// Classifies a request path (without query).
pub fn classify<'a>(cfg: &Config, path: &'a str) -> PathTarget<'a> {
    if path == "/v1" || path.starts_with("/v1/") {
        return PathTarget::Table { path };
    }
    let Some(stripped) = path.strip_prefix('/') else {
        return PathTarget::Unknown;
    };
    let (first, rest) = match stripped.find('/') {
        Some(i) => (&stripped[..i], &stripped[i..]),
        None => (stripped, ""),
    };
    match cfg.providers.iter().position(|p| p.name == first) {
        Some(provider) if rest.starts_with('/') => PathTarget::Explicit { provider, rest },
        _ => PathTarget::Unknown,
    }
}

/// True when the route table needs the request's model to decide (some rule reachable before a
/// decision has a model pattern). Lets requests skip JSON parsing when routing is by path only.
pub fn needs_model(cfg: &Config, path: &str) -> bool {
    for r in &cfg.routes {
        if r.model.is_some() {
            return true;
        }
        if r.path.as_ref().is_none_or(|p| p.matches(path)) {
            return false;
        }
    }
    false
}

/// First route that matches `path` and `model`: its provider index.
pub fn select(cfg: &Config, path: &str, model: Option<&str>) -> Option<usize> {
    select_route(cfg, path, model).map(|(_, r)| r.provider)
}

/// The route of a `/v1/...` request: the first that matches `path` and `model`, except that a
/// request without a model from an Anthropic client (it sends `anthropic-version` or `x-api-key`,
/// as every Anthropic SDK does: `models.list()`, files, batches) goes to an Anthropic-kind
/// provider (the first route to one that matches the path, else the first such provider), so an
/// Anthropic key never goes to another provider.
pub fn select_for(
    cfg: &Config,
    path: &str,
    model: Option<&str>,
    headers: &http::HeaderMap,
) -> Option<Selected> {
    if model.is_none() && crate::wire::headers::anthropic_client(headers) {
        let anthropic = |i: usize| cfg.providers[i].kind == crate::config::ProviderKind::Anthropic;
        let by_route = cfg
            .routes
            .iter()
            .enumerate()
            .filter(|(_, r)| anthropic(r.provider))
            .find(|(_, r)| r.path.as_ref().is_none_or(|p| p.matches(path)));
        if let Some((i, r)) = by_route {
            return Some(Selected {
                provider: r.provider,
                fallback: r.fallback,
                route: Some(i),
            });
        }
        if let Some(provider) = (0..cfg.providers.len()).find(|&i| anthropic(i)) {
            return Some(Selected {
                provider,
                fallback: None,
                route: None,
            });
        }
    }
    select_route(cfg, path, model).map(|(i, r)| Selected {
        provider: r.provider,
        fallback: r.fallback,
        route: Some(i),
    })
}

/// Where [`select_for`] sends a request: the provider and the route's fallback (indexes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selected {
    pub provider: usize,
    pub fallback: Option<usize>,
    /// The route's index in `routes` (its retries and `fallback_on`), when a route picked it.
    pub route: Option<usize>,
}

/// First route that matches `path` and `model`, with its index.
pub fn select_route<'a>(
    cfg: &'a Config,
    path: &str,
    model: Option<&str>,
) -> Option<(usize, &'a crate::config::Route)> {
    cfg.routes.iter().enumerate().find(|(_, r)| {
        r.path.as_ref().is_none_or(|p| p.matches(path))
            && match (&r.model, model) {
                (None, _) => true,
                (Some(p), Some(m)) => p.matches(m),
                (Some(_), None) => false,
            }
    })
}

/// The upstream path for a client path `rest` (`/v1/...`) on a base URL path (`/v1`, or empty).
pub fn upstream_path(base_path: &str, rest: &str) -> String {
    let tail = match rest.strip_prefix("/v1") {
        Some(t) if t.is_empty() || t.starts_with('/') => t,
        _ => rest,
    };
    let mut out = String::with_capacity(base_path.len() + tail.len() + 1);
    out.push_str(base_path);
    out.push_str(tail);
    if out.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Env;

    fn cfg(yaml: &str) -> Config {
        Config::from_yaml_str(yaml, "t.yaml", &Env::empty()).unwrap()
    }

    #[test]
    fn default_table() {
        let c = cfg("");
        let name = |i: Option<usize>| i.map(|i| c.providers[i].name.as_str());
        assert_eq!(name(select(&c, "/v1/messages", None)), Some("anthropic"));
        assert_eq!(
            name(select(&c, "/v1/messages/count_tokens", Some("x"))),
            Some("anthropic")
        );
        assert_eq!(
            name(select(
                &c,
                "/v1/chat/completions",
                Some("claude-sonnet-4-5")
            )),
            Some("anthropic")
        );
        assert_eq!(
            name(select(&c, "/v1/chat/completions", Some("gpt-4o"))),
            Some("openai")
        );
        assert_eq!(name(select(&c, "/v1/models", None)), Some("openai"));
        assert!(!needs_model(&c, "/v1/messages"));
        assert!(needs_model(&c, "/v1/chat/completions"));
    }

    #[test]
    fn explicit_prefix() {
        let c = cfg("");
        assert_eq!(
            classify(&c, "/anthropic/v1/messages"),
            PathTarget::Explicit {
                provider: 1,
                rest: "/v1/messages"
            }
        );
        assert_eq!(
            classify(&c, "/v1/embeddings"),
            PathTarget::Table {
                path: "/v1/embeddings"
            }
        );
        assert_eq!(classify(&c, "/nope/v1/x"), PathTarget::Unknown);
        assert_eq!(classify(&c, "/openai"), PathTarget::Unknown);
        assert_eq!(classify(&c, "/"), PathTarget::Unknown);
    }

    #[test]
    fn explicit_routes_without_catch_all() {
        let c = cfg("routes: [{model: 'gpt-*', provider: openai}]");
        assert_eq!(select(&c, "/v1/chat/completions", Some("llama")), None);
        assert_eq!(select(&c, "/v1/chat/completions", Some("gpt-4o")), Some(0));
    }

    #[test]
    fn anthropic_clients_without_a_model_go_to_anthropic() {
        let c = cfg("");
        let mut h = http::HeaderMap::new();
        let to = |h: &http::HeaderMap, path| {
            select_for(&c, path, None, h).map(|s| c.providers[s.provider].name.clone())
        };
        assert_eq!(to(&h, "/v1/models").as_deref(), Some("openai"));
        h.insert("anthropic-version", "2023-06-01".parse().unwrap());
        assert_eq!(to(&h, "/v1/models").as_deref(), Some("anthropic"));
        h.clear();
        h.insert("x-api-key", "sk-ant-x".parse().unwrap());
        assert_eq!(to(&h, "/v1/files").as_deref(), Some("anthropic"));
        // A model decides as before.
        let s = select_for(&c, "/v1/chat/completions", Some("gpt-4o"), &h).unwrap();
        assert_eq!(c.providers[s.provider].name, "openai");
        // Routes to an Anthropic-kind provider are followed, their fallback too.
        let c = cfg("providers:\n  - {name: oa, kind: openai, base_url: 'http://a/v1'}\n  - {name: claude, kind: anthropic, base_url: 'http://b/v1'}\n  - {name: spare, kind: anthropic, base_url: 'http://c/v1'}\nroutes:\n  - {provider: oa}\n  - {path: '/v1/models*', provider: spare, fallback: claude}\n");
        let s = select_for(&c, "/v1/models", None, &h).unwrap();
        assert_eq!((s.provider, s.fallback), (2, Some(1)));
        let s = select_for(&c, "/v1/files", None, &h).unwrap();
        assert_eq!(
            (s.provider, s.fallback),
            (1, None),
            "the first Anthropic provider"
        );
    }

    #[test]
    fn paths() {
        assert_eq!(
            upstream_path("/v1", "/v1/chat/completions"),
            "/v1/chat/completions"
        );
        assert_eq!(
            upstream_path("/openai/v1", "/v1/models"),
            "/openai/v1/models"
        );
        assert_eq!(upstream_path("", "/v1/models"), "/models");
        assert_eq!(upstream_path("/v1", "/v1"), "/v1");
        assert_eq!(upstream_path("/v1", "/v1beta/x"), "/v1/v1beta/x");
    }
}
