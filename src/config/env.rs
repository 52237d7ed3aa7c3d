//! Environment overrides.
//!
//! Every config key has a variable: `RELAY_` + its path in upper case with `.` as `_`
//! (`server.max_body_bytes` → `RELAY_SERVER_MAX_BODY_BYTES`). A provider's keys are addressed by its
//! name: `RELAY_PROVIDERS_OPENAI_BASE_URL` (name upper-cased, `-` and `.` as `_`). Whole sections that
//! are lists or maps (`RELAY_ROUTES`, `RELAY_MODELS`) take YAML flow text: `[{model: "gpt-*",
//! provider: openai}]`. The original relay's `SERVER_PORT`, `REDIS_ADDRESS` and `REDIS_PASSWORD` are
//! read too; a `RELAY_` variable wins over them, and both win over the file.

use std::collections::BTreeMap;

use yaml_serde::{Mapping, Value};

use super::ConfigError;

/// A snapshot of environment variables. The server takes one at start; tests build their own, so no
/// test mutates the process environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Env(BTreeMap<String, String>);

impl Env {
    /// The current process environment (variables that are not UTF-8 are skipped).
    pub fn from_process() -> Env {
        Env(std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect())
    }

    /// An empty environment.
    pub fn empty() -> Env {
        Env::default()
    }

    /// Adds or replaces one variable (builder style, for tests and embedding).
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Env {
        self.0.insert(key.into(), value.into());
        self
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
}

/// How an environment value becomes a config value.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    /// Taken verbatim as a string (URLs, addresses, passwords, durations).
    Text,
    /// Parsed as YAML: numbers, booleans, flow lists and maps.
    Yaml,
}

/// Every top-level key path and how its variable is read. `schema_has_an_env_var_for_every_key`
/// checks this table against the schema.
const KEYS: &[(&str, Kind)] = &[
    ("server.listen", Kind::Text),
    ("server.port", Kind::Text),
    ("server.max_body_bytes", Kind::Yaml),
    ("server.shutdown_timeout", Kind::Text),
    ("server.request_log", Kind::Yaml),
    ("server.tls", Kind::Yaml),
    ("server.ca_dir", Kind::Text),
    ("server.events_remote", Kind::Yaml),
    ("server.allowed_origins", Kind::Yaml),
    ("server.allowed_hosts", Kind::Yaml),
    ("server.trusted_proxies", Kind::Yaml),
    ("server.max_connections", Kind::Yaml),
    ("server.idle_timeout", Kind::Text),
    ("server.header_read_timeout", Kind::Text),
    ("server.body_read_timeout", Kind::Text),
    ("server.max_header_bytes", Kind::Yaml),
    ("server.max_buffered_bytes", Kind::Yaml),
    ("server.allow_unauthenticated", Kind::Yaml),
    ("providers", Kind::Yaml),
    ("routes", Kind::Yaml),
    ("ratelimit.enabled", Kind::Yaml),
    ("ratelimit.requests_per_second", Kind::Yaml),
    ("ratelimit.burst", Kind::Yaml),
    ("ratelimit.rules", Kind::Yaml),
    ("ratelimit.on_limit", Kind::Text),
    ("ratelimit.max_wait", Kind::Text),
    ("ratelimit.backend", Kind::Text),
    ("redis.enabled", Kind::Yaml),
    ("redis.address", Kind::Text),
    ("redis.password", Kind::Text),
    ("redis.db", Kind::Yaml),
    ("cache.enabled", Kind::Yaml),
    ("cache.backend", Kind::Text),
    ("cache.path", Kind::Text),
    ("cache.ttl", Kind::Text),
    ("cache.max_bytes", Kind::Yaml),
    ("cache.mode", Kind::Text),
    ("cache.scope", Kind::Text),
    ("cache.ignore_fields", Kind::Yaml),
    ("cache.client_rules", Kind::Yaml),
    ("cache.portable", Kind::Yaml),
    ("cache.replay_timing", Kind::Text),
    ("models", Kind::Yaml),
    ("cost.enabled", Kind::Yaml),
    ("cost.stream_usage", Kind::Text),
    ("cost.ledger", Kind::Yaml),
    ("cost.ledger_path", Kind::Text),
    ("keys", Kind::Yaml),
    ("budgets", Kind::Yaml),
    ("proxy.target", Kind::Text),
    ("proxy.intercept", Kind::Yaml),
    ("upstream.ca_file", Kind::Text),
    ("logging.enabled", Kind::Yaml),
    ("logging.retention_days", Kind::Yaml),
    ("auth.enabled", Kind::Yaml),
    ("auth.admin_key", Kind::Text),
    ("auth.admin_key_env", Kind::Text),
    ("auth.keys_path", Kind::Text),
    ("transform", Kind::Yaml),
    ("loadbalancer", Kind::Yaml),
];

/// Per-provider keys (`RELAY_PROVIDERS_<NAME>_<KEY>`).
const PROVIDER_KEYS: &[(&str, Kind)] = &[
    ("kind", Kind::Text),
    ("base_url", Kind::Text),
    ("api_key_env", Kind::Yaml),
    ("endpoints", Kind::Yaml),
    ("strategy", Kind::Text),
    ("health_check", Kind::Yaml),
    ("http2", Kind::Yaml),
    ("timeouts.connect", Kind::Text),
    ("timeouts.first_byte", Kind::Text),
    ("timeouts.idle", Kind::Text),
    ("breaker.enabled", Kind::Yaml),
    ("breaker.consecutive_failures", Kind::Yaml),
    ("breaker.failure_ratio", Kind::Yaml),
    ("breaker.min_requests", Kind::Yaml),
    ("breaker.window", Kind::Text),
    ("breaker.cooldown", Kind::Text),
    ("breaker.half_open_requests", Kind::Yaml),
    ("breaker.count_429", Kind::Yaml),
    ("retry.attempts", Kind::Yaml),
    ("retry.on", Kind::Yaml),
    ("retry.base_delay", Kind::Text),
    ("retry.max_delay", Kind::Text),
];

/// The original relay's variables and the keys they set.
const LEGACY: &[(&str, &str)] = &[
    ("SERVER_PORT", "server.port"),
    ("REDIS_ADDRESS", "redis.address"),
    ("REDIS_PASSWORD", "redis.password"),
];

/// `RELAY_` variables that are not config keys.
const NOT_CONFIG: &[&str] = &["RELAY_LOG"];

/// What applying the environment did.
#[derive(Debug, Default)]
pub struct Applied {
    /// Key path (as serde_path_to_error prints it) → the variable that set it.
    pub overridden: BTreeMap<String, String>,
    /// `RELAY_*` variables that name no key (likely typos).
    pub unknown: Vec<String>,
}

impl Applied {
    /// The variable that set `path` or a key above it (`RELAY_ROUTES` for `routes[0].provider`).
    pub fn var_for(&self, path: &str) -> Option<&str> {
        self.overridden
            .iter()
            .filter(|(key, _)| {
                path.strip_prefix(key.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
            })
            .max_by_key(|(key, _)| key.len())
            .map(|(_, var)| var.as_str())
    }

    /// Adds "(value from environment variable X)" to an error about a key the environment set, so
    /// both deserialization and validation errors name the variable.
    pub fn annotate(&self, err: ConfigError) -> ConfigError {
        match err {
            ConfigError::Invalid {
                file,
                path,
                mut message,
            } => {
                if let Some(var) = self.var_for(&path) {
                    message.push_str(&format!(" (value from environment variable {var})"));
                }
                ConfigError::Invalid {
                    file,
                    path,
                    message,
                }
            }
            other => other,
        }
    }
}

/// The variable name for a key path.
pub fn var_name(path: &str) -> String {
    format!("RELAY_{}", path.replace('.', "_").to_ascii_uppercase())
}

fn provider_var_prefix(name: &str) -> String {
    let name: String = name
        .chars()
        .map(|c| match c {
            '-' | '.' => '_',
            c => c.to_ascii_uppercase(),
        })
        .collect();
    format!("RELAY_PROVIDERS_{name}_")
}

fn convert(kind: Kind, raw: &str) -> Value {
    match kind {
        Kind::Text => Value::String(raw.to_string()),
        Kind::Yaml => yaml_serde::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string())),
    }
}

/// Sets `path` (dotted) inside `root`, creating mappings on the way.
fn set_path(root: &mut Value, path: &str, value: Value) {
    let mut cur = root;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        if !matches!(cur, Value::Mapping(_)) {
            *cur = Value::Mapping(Mapping::new());
        }
        let Value::Mapping(map) = cur else {
            unreachable!()
        };
        let key = Value::String(part.to_string());
        if parts.peek().is_none() {
            map.insert(key, value);
            return;
        }
        cur = map.entry(key).or_insert(Value::Null);
    }
}

/// Patches the parsed file tree with the environment. Returns what was set and what was not understood.
pub fn apply(tree: &mut Value, env: &Env) -> Applied {
    let mut applied = Applied::default();

    for (var, path) in LEGACY {
        if let Some(v) = env.get(var) {
            set_path(tree, path, Value::String(v.to_string()));
            applied.overridden.insert(path.to_string(), var.to_string());
        }
    }
    for (path, kind) in KEYS {
        let var = var_name(path);
        if let Some(v) = env.get(&var) {
            set_path(tree, path, convert(*kind, v));
            applied.overridden.insert(path.to_string(), var);
        }
    }

    let provider_vars: Vec<(&String, &String)> = env
        .0
        .iter()
        .filter(|(k, _)| k.starts_with("RELAY_PROVIDERS_"))
        .collect();
    if !provider_vars.is_empty() {
        apply_provider_vars(tree, &provider_vars, &mut applied);
    }

    for var in env.0.keys().filter(|k| k.starts_with("RELAY_")) {
        let known =
            NOT_CONFIG.contains(&var.as_str()) || applied.overridden.values().any(|v| v == var);
        if !known {
            applied.unknown.push(var.clone());
        }
    }
    applied
}

fn apply_provider_vars(tree: &mut Value, vars: &[(&String, &String)], applied: &mut Applied) {
    let Value::Mapping(root) = tree else { return };
    let providers = root
        .entry(Value::String("providers".into()))
        .or_insert(Value::Null);
    if providers.is_null() {
        // No `providers:` in the file: override the built-in ones.
        *providers = yaml_serde::from_str(super::DEFAULT_PROVIDERS_YAML).expect("valid defaults");
    }
    let Value::Sequence(list) = providers else {
        return;
    };
    for (index, entry) in list.iter_mut().enumerate() {
        let Some(name) = entry.get("name").and_then(Value::as_str) else {
            continue;
        };
        let prefix = provider_var_prefix(name);
        for (key, kind) in PROVIDER_KEYS {
            let var = format!("{prefix}{}", key.replace('.', "_").to_ascii_uppercase());
            if let Some((_, v)) = vars.iter().find(|(k, _)| **k == var) {
                // `base_url` and `endpoints` are one setting: the variable replaces the file's.
                let other = match *key {
                    "base_url" => Some("endpoints"),
                    "endpoints" => Some("base_url"),
                    _ => None,
                };
                if let (Some(other), Value::Mapping(m)) = (other, &mut *entry) {
                    m.remove(other);
                }
                set_path(entry, key, convert(*kind, v));
                applied
                    .overridden
                    .insert(format!("providers[{index}].{key}"), var);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_has_an_env_var_for_every_key() {
        let mut table: std::collections::HashSet<String> =
            KEYS.iter().map(|(p, _)| p.to_string()).collect();
        table.extend(
            PROVIDER_KEYS
                .iter()
                .map(|(p, _)| format!("providers[].{p}")),
        );
        table.insert("providers[].name".into()); // the name addresses the provider
        let schema = super::super::raw::schema_paths();
        let missing: Vec<_> = schema.difference(&table).collect();
        let stale: Vec<_> = table.difference(&schema).collect();
        assert!(missing.is_empty(), "keys without an env var: {missing:?}");
        assert!(
            stale.is_empty(),
            "env vars for keys that do not exist: {stale:?}"
        );
    }

    #[test]
    fn var_names() {
        assert_eq!(
            var_name("server.max_body_bytes"),
            "RELAY_SERVER_MAX_BODY_BYTES"
        );
        assert_eq!(
            provider_var_prefix("my-llm.local"),
            "RELAY_PROVIDERS_MY_LLM_LOCAL_"
        );
    }
}
