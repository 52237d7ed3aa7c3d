//! Table tests for the config loader: YAML (and an [`Env`] built here, never the process
//! environment) in, a value or the exact error text out.

use std::time::Duration;

use super::*;

/// The original relay's shipped example config, verbatim.
const ORIGINAL_RELAY_YAML: &str = r#"
server:
  port: ":8080"
auth:
  enabled: true
proxy:
  target: "https://api.openai.com"
ratelimit:
  enabled: true
  requests_per_second: 10.0
  burst: 20
redis:
  enabled: true
  address: "localhost:6379"
  password: ""
  db: 0
logging:
  enabled: true
  retention_days: 30
transform:
  enabled: false
  remove_headers: ["X-Internal-Secret"]
models:
  gpt-4: 0.03
  gpt-3.5-turbo: 0.002
"#;

/// Environment variables for one case.
type Vars<'a> = &'a [(&'a str, &'a str)];

fn env(vars: Vars) -> Env {
    vars.iter()
        .fold(Env::empty(), |env, (k, v)| env.with(*k, *v))
}

fn load(yaml: &str, env: &Env) -> Config {
    Config::from_yaml_str(yaml, "t.yaml", env)
        .unwrap_or_else(|e| panic!("expected a valid config, got: {e}\n--- yaml:\n{yaml}"))
}

fn load_err(yaml: &str, env: &Env) -> String {
    match Config::from_yaml_str(yaml, "t.yaml", env) {
        Ok(cfg) => panic!("expected an error, got a config: {cfg:?}\n--- yaml:\n{yaml}"),
        Err(e) => e.to_string(),
    }
}

fn provider_names(cfg: &Config) -> Vec<&str> {
    cfg.providers.iter().map(|p| p.name.as_str()).collect()
}

/// Routes as `model|path -> provider` for compact comparison.
fn route_summary(cfg: &Config) -> Vec<String> {
    cfg.routes
        .iter()
        .map(|r| {
            format!(
                "{}|{} -> {}",
                r.model.as_ref().map_or("", |p| p.as_str()),
                r.path.as_ref().map_or("", |p| p.as_str()),
                cfg.providers[r.provider].name
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Defaults and the original relay's config
// ---------------------------------------------------------------------------------------------

#[test]
fn defaults_without_a_file() {
    let cfg = Config::defaults(&Env::empty());
    assert_eq!(cfg.source, None);
    assert_eq!(cfg.server.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(cfg.server.max_body_bytes, 32 * 1024 * 1024);
    assert_eq!(cfg.server.shutdown_timeout, Duration::from_secs(30));
    assert!(cfg.server.request_log);
    assert!(!cfg.server.events_remote);

    assert_eq!(provider_names(&cfg), ["openai", "anthropic"]);
    let openai = cfg.provider("openai").unwrap();
    assert_eq!(openai.kind, ProviderKind::Openai);
    assert_eq!(openai.base_url.to_string(), "https://api.openai.com/v1");
    assert!(openai.base_url.is_https());
    assert_eq!(openai.api_key(), None);
    assert!(!openai.http2);
    assert_eq!(
        openai.timeouts,
        Timeouts {
            connect: Duration::from_secs(10),
            first_byte: Duration::from_secs(600),
            idle: Duration::from_secs(300),
        }
    );
    let anthropic = cfg.provider("anthropic").unwrap();
    assert_eq!(anthropic.kind, ProviderKind::Anthropic);
    assert_eq!(
        anthropic.base_url.to_string(),
        "https://api.anthropic.com/v1"
    );

    assert_eq!(
        route_summary(&cfg),
        [
            "|/v1/messages* -> anthropic",
            "claude-*| -> anthropic",
            "| -> openai"
        ]
    );
    assert!(!cfg.ratelimit.enabled);
    assert!(!cfg.redis.enabled);
    assert_eq!(cfg.redis.address, "127.0.0.1:6379");
    assert!(cfg.models.is_empty());
    assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);

    // An empty file, a comment-only file and an explicit null are the defaults too.
    for text in ["", "  \n", "# nothing\n", "~\n"] {
        assert_eq!(load(text, &Env::empty()), cfg, "{text:?}");
    }
}

#[test]
fn sections_left_empty_are_their_defaults() {
    let yaml = "server:\nproviders:\nroutes:\nratelimit:\nredis:\nmodels:\n";
    let mut cfg = load(yaml, &Env::empty());
    cfg.warnings.clear();
    assert_eq!(cfg, Config::defaults(&Env::empty()));
}

#[test]
fn original_relay_config_loads_unchanged() {
    let cfg = load(ORIGINAL_RELAY_YAML, &Env::empty());
    assert_eq!(cfg.server.listen, "0.0.0.0:8080".parse().unwrap());
    assert!(cfg.server.request_log, "logging.enabled: true");
    assert_eq!(
        cfg.provider("openai").unwrap().base_url.to_string(),
        "https://api.openai.com/v1"
    );
    assert_eq!(provider_names(&cfg), ["openai", "anthropic"]);
    assert_eq!(route_summary(&cfg).len(), 3);

    assert_eq!(
        cfg.ratelimit,
        RateLimitConfig {
            enabled: true,
            requests_per_second: 10.0,
            burst: 20,
        }
    );
    assert_eq!(
        cfg.redis,
        RedisConfig {
            enabled: true,
            address: "localhost:6379".into(),
            password: None,
            db: 0,
        }
    );

    let per_million = |micro| ModelPrice {
        input: micro,
        output: micro,
        cached_input: None,
        cache_write: None,
        cache_write_1h: None,
    };
    assert_eq!(cfg.models.len(), 2);
    assert_eq!(cfg.models["gpt-4"], per_million(30_000_000));
    assert_eq!(cfg.models["gpt-3.5-turbo"], per_million(2_000_000));

    // Its `auth: {enabled}` asks for relay keys (docs/auth.md).
    assert!(cfg.auth.enabled && cfg.auth.admin_key.is_none());
    for key in ["transform:", "logging.retention_days:"] {
        assert!(
            cfg.warnings.iter().any(|w| w.starts_with(key)),
            "no warning about {key} in {:?}",
            cfg.warnings
        );
    }
    // ratelimit is enforced now: no warning about it.
    assert_eq!(cfg.warnings.len(), 2, "{:?}", cfg.warnings);
}

#[test]
fn original_relay_forms() {
    // (yaml, expected listen, expected openai base_url)
    let cases = [
        (
            "server: {port: 9000}",
            "0.0.0.0:9000",
            "https://api.openai.com/v1",
        ),
        (
            "server: {port: \"9000\"}",
            "0.0.0.0:9000",
            "https://api.openai.com/v1",
        ),
        (
            "server: {port: \"localhost:9000\"}",
            "127.0.0.1:9000",
            "https://api.openai.com/v1",
        ),
        (
            "proxy: {target: \"http://127.0.0.1:9/\"}",
            "127.0.0.1:8080",
            "http://127.0.0.1:9/v1",
        ),
        (
            "proxy: {target: \"https://gw.example/v1/\"}",
            "127.0.0.1:8080",
            "https://gw.example/v1",
        ),
        (
            "proxy: {target: \"https://gw.example/openai\"}",
            "127.0.0.1:8080",
            "https://gw.example/openai/v1",
        ),
    ];
    for (yaml, listen, base) in cases {
        let cfg = load(yaml, &Env::empty());
        assert_eq!(cfg.server.listen.to_string(), listen, "{yaml}");
        assert_eq!(
            cfg.provider("openai").unwrap().base_url.to_string(),
            base,
            "{yaml}"
        );
    }
}

#[test]
fn ratelimit_and_prices() {
    let cfg = load(
        "ratelimit: {requests_per_second: 0.2}\n\
         models:\n  m1: 0\n  m2: {input: 3, output: 15.0, cached_input: 0.3, cache_write: 3.75}\n",
        &Env::empty(),
    );
    // requests_per_second alone turns the bucket on; burst defaults to ceil(rps), at least 1.
    assert_eq!(
        cfg.ratelimit,
        RateLimitConfig {
            enabled: true,
            requests_per_second: 0.2,
            burst: 1,
        }
    );
    assert_eq!(cfg.models["m1"].input, 0);
    assert_eq!(
        cfg.models["m2"],
        ModelPrice {
            input: 3_000_000,
            output: 15_000_000,
            cached_input: Some(300_000),
            cache_write: Some(3_750_000),
            cache_write_1h: None,
        }
    );
    // enabled: true with no rate is a mistake, not a silent "no limit".
    assert_eq!(
        load_err("ratelimit: {enabled: true}", &Env::empty()),
        "t.yaml: ratelimit.requests_per_second: ratelimit.enabled is true, so this must be greater than 0 (0.2 = one request every 5 s)"
    );
}

// ---------------------------------------------------------------------------------------------
// Errors: exact text, with file name and key path
// ---------------------------------------------------------------------------------------------

#[test]
fn errors_name_file_and_key_path() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "unknown provider in a route",
            "routes:\n  - provider: openai\n  - provider: anthropic\n  - {model: \"x\", provider: antropic}\n",
            r#"t.yaml: routes[2].provider: unknown provider "antropic" (known: openai, anthropic)"#,
        ),
        (
            "route without a provider",
            "routes:\n  - model: gpt-*\n",
            r#"t.yaml: routes[0].provider: missing; one of ["openai", "anthropic"]"#,
        ),
        (
            "a cache path that can never apply",
            "cache:\n  ignore_fields: [user, '[*].id']\n",
            r#"t.yaml: cache.ignore_fields[1]: "[*].id" can never apply: a request body is an object, so a path starts with a field name"#,
        ),
        (
            "a cache path that does not parse",
            "cache:\n  ignore_fields: ['input[*]id']\n",
            r#"t.yaml: cache.ignore_fields[0]: "input[*]id" is not a field path: steps are joined by `.`"#,
        ),
        (
            "unknown key",
            "server:\n  lisen: 127.0.0.1:1\n",
            "t.yaml: server.lisen: unknown field `lisen`, expected one of `listen`, `port`, \
             `max_body_bytes`, `shutdown_timeout`, `request_log`, `tls`, `ca_dir`, `events_remote`, \
             `allowed_origins`, `allowed_hosts`, `trusted_proxies`, `max_connections`, `idle_timeout`, \
             `header_read_timeout`, `body_read_timeout`, `max_header_bytes`, `max_buffered_bytes`, `allow_unauthenticated`",
        ),
        (
            "unknown key in a provider",
            "providers:\n  - name: a\n    base_url: http://x\n    bogus: 1\n",
            "t.yaml: providers[0].bogus: unknown field `bogus`, expected one of `name`, `kind`, \
             `base_url`, `api_key_env`, `endpoints`, `strategy`, `health_check`, `http2`, `timeouts`, `breaker`, `retry`",
        ),
        (
            "unknown section",
            "sever: {}\n",
            "t.yaml: sever: unknown field `sever`, expected one of `server`, `providers`, \
             `routes`, `ratelimit`, `redis`, `cache`, `models`, `cost`, `keys`, `budgets`, `proxy`, `logging`, `auth`, \
             `transform`, `loadbalancer`, `upstream`",
        ),
        (
            "wrong type",
            "server:\n  max_body_bytes: \"big\"\n",
            r#"t.yaml: server.max_body_bytes: invalid type: string "big", expected u64"#,
        ),
        (
            "events_remote not a boolean",
            "server:\n  events_remote: lan\n",
            r#"t.yaml: server.events_remote: invalid type: string "lan", expected a boolean"#,
        ),
        (
            "zero body limit",
            "server:\n  max_body_bytes: 0\n",
            "t.yaml: server.max_body_bytes: must be greater than 0",
        ),
        (
            "bad listen",
            "server:\n  listen: localhost\n",
            r#"t.yaml: server.listen: "localhost" is not an address such as "127.0.0.1:8080" or ":8080""#,
        ),
        (
            "bad duration",
            "server:\n  shutdown_timeout: soon\n",
            r#"t.yaml: server.shutdown_timeout: invalid duration "soon": expected number at 0"#,
        ),
        (
            "bad duration unit",
            "providers:\n  - name: a\n    base_url: http://x\n    timeouts: {idle: 5 parsecs}\n",
            "t.yaml: providers[0].timeouts.idle: invalid duration \"5 parsecs\": unknown time \
             unit \"parsecs\", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, \
             months, years (and few variations)",
        ),
        (
            "negative duration",
            "server:\n  shutdown_timeout: -5\n",
            "t.yaml: server.shutdown_timeout: a duration cannot be negative",
        ),
        (
            "zero timeout",
            "providers:\n  - name: a\n    base_url: http://x\n    timeouts: {connect: 0s}\n",
            "t.yaml: providers[0].timeouts.connect: must be greater than 0",
        ),
        (
            "base_url without a scheme",
            "providers:\n  - name: a\n    base_url: api.openai.com/v1\n",
            r#"t.yaml: providers[0].base_url: "api.openai.com/v1": the URL must start with http:// or https:// (e.g. https://api.openai.com/v1)"#,
        ),
        (
            "base_url host:port without a scheme",
            "providers:\n  - name: a\n    base_url: localhost:8080\n",
            r#"t.yaml: providers[0].base_url: "localhost:8080": the URL must start with http:// or https:// (e.g. https://api.openai.com/v1)"#,
        ),
        (
            "base_url ftp",
            "providers:\n  - name: a\n    base_url: ftp://files.example/v1\n",
            r#"t.yaml: providers[0].base_url: "ftp://files.example/v1": the URL must start with http:// or https:// (e.g. https://api.openai.com/v1)"#,
        ),
        (
            "base_url with a query",
            "providers:\n  - name: a\n    base_url: https://x.example/v1?k=1\n",
            r#"t.yaml: providers[0].base_url: "https://x.example/v1?k=1": a base URL cannot have a query string"#,
        ),
        (
            "base_url missing",
            "providers:\n  - name: a\n",
            "t.yaml: providers[0].base_url: missing (e.g. https://api.openai.com/v1)",
        ),
        (
            "bad proxy.target",
            "proxy:\n  target: api.openai.com\n",
            r#"t.yaml: proxy.target: "api.openai.com/v1": the URL must start with http:// or https:// (e.g. https://api.openai.com/v1)"#,
        ),
        (
            "proxy.target without an openai provider",
            "providers:\n  - {name: a, base_url: \"http://x\"}\nproxy:\n  target: http://y\n",
            "t.yaml: proxy.target: proxy.target sets the base URL of the provider named \
             \"openai\", and there is none",
        ),
        (
            "duplicate provider names",
            "providers:\n  - {name: a, base_url: \"http://x\"}\n  - {name: b, base_url: \"http://y\"}\n  - {name: a, base_url: \"http://z\"}\n",
            r#"t.yaml: providers[2].name: duplicate provider name "a""#,
        ),
        (
            "reserved provider name",
            "providers:\n  - {name: metrics, base_url: \"http://x\"}\n",
            r#"t.yaml: providers[0].name: "metrics" is reserved for relay's own paths"#,
        ),
        (
            "provider name with a slash",
            "providers:\n  - {name: a/b, base_url: \"http://x\"}\n",
            r#"t.yaml: providers[0].name: "a/b": use letters, digits, '-', '_' or '.' (it is a URL path prefix)"#,
        ),
        (
            "provider without a name",
            "providers:\n  - {base_url: \"http://x\"}\n",
            "t.yaml: providers[0].name: a provider needs a name",
        ),
        (
            "unknown provider kind",
            "providers:\n  - {name: a, kind: gemini, base_url: \"http://x\"}\n",
            "t.yaml: providers[0].kind: unknown variant `gemini`, expected `openai` or `anthropic`",
        ),
        (
            "both server.listen and server.port",
            "server:\n  listen: 127.0.0.1:1\n  port: \":2\"\n",
            "t.yaml: server.port: set either server.listen or the original relay's server.port, \
             not both",
        ),
        (
            "bad glob",
            "routes:\n  - model: \"gpt-[\"\n    provider: openai\n",
            r#"t.yaml: routes[0].model: bad glob "gpt-[": Pattern syntax error near position 4: invalid range pattern"#,
        ),
        (
            "negative flat price",
            "models:\n  gpt-4: -0.03\n",
            "t.yaml: models.gpt-4: a price must be a number ≥ 0",
        ),
        (
            "negative per-million price",
            "models:\n  m: {input: 1, output: -2}\n",
            "t.yaml: models.m.output: a price must be a number ≥ 0",
        ),
        (
            "price that is not a number",
            "models:\n  gpt-4: cheap\n",
            "t.yaml: models.gpt-4: a price: USD per 1K tokens (0.03), or {input, output, cached_input, cache_write, cache_write_1h} in USD per 1M tokens",
        ),
        (
            "negative rate",
            "ratelimit: {requests_per_second: -1}\n",
            "t.yaml: ratelimit.requests_per_second: must be a number ≥ 0 (0.2 = one request every 5 s)",
        ),
        (
            "zero burst",
            "ratelimit: {requests_per_second: 1, burst: 0}\n",
            "t.yaml: ratelimit.burst: must be at least 1",
        ),
        (
            "unknown rule scope",
            "ratelimit: {rules: [{scope: user, requests_per_second: 1}]}\n",
            r#"t.yaml: ratelimit.rules[0].scope: unknown scope "user" (global, key, model, key+model)"#,
        ),
        (
            "rule without a limit",
            "ratelimit: {rules: [{scope: key}]}\n",
            "t.yaml: ratelimit.rules[0]: a rule needs requests_per_second or tokens_per_minute",
        ),
        (
            "duplicate rule names",
            "ratelimit: {rules: [{scope: key, requests_per_second: 1}, {scope: key, tokens_per_minute: 9}]}\n",
            r#"t.yaml: ratelimit.rules[1].name: duplicate rule name "key" (give each rule its own name:)"#,
        ),
        (
            "bad on_limit",
            "ratelimit: {requests_per_second: 1, on_limit: queue}\n",
            "t.yaml: ratelimit.on_limit: unknown variant `queue`, expected `reject` or `wait`",
        ),
        (
            "redis limits without the redis section",
            "ratelimit: {requests_per_second: 1, backend: redis}\n",
            if cfg!(feature = "redis") {
                "t.yaml: ratelimit.backend: the redis backend needs the redis: section enabled (redis.enabled: true)"
            } else {
                "t.yaml: ratelimit.backend: the redis backend needs a relay built with `--features redis`"
            },
        ),
        (
            "breaker ratio out of range",
            "providers:\n  - {name: a, base_url: 'http://x/v1', breaker: {failure_ratio: 1.5}}\n",
            "t.yaml: providers[0].breaker.failure_ratio: must be a number in (0, 1]",
        ),
        (
            "unknown fallback",
            "routes:\n  - {provider: openai, fallback: nope}\n",
            r#"t.yaml: routes[0].fallback: unknown provider "nope" (known: openai, anthropic)"#,
        ),
        (
            "fallback to itself",
            "routes:\n  - {provider: openai, fallback: openai}\n",
            "t.yaml: routes[0].fallback: the fallback must be another provider",
        ),
        (
            "syntax error",
            "server:\n  listen: a\n   port: b\n",
            "t.yaml: mapping values are not allowed in this context at line 3 column 8",
        ),
        (
            "unclosed flow sequence",
            "server:\n  listen: [\n",
            "t.yaml: did not find expected node content at line 3 column 1, while parsing a flow node",
        ),
        (
            "top level is a list",
            "- server\n- providers\n",
            "t.yaml: the top level must be a mapping of sections (server:, providers:, ...)",
        ),
        (
            "top level is a scalar",
            "relay\n",
            "t.yaml: the top level must be a mapping of sections (server:, providers:, ...)",
        ),
    ];
    for (name, yaml, want) in cases {
        assert_eq!(load_err(yaml, &Env::empty()), *want, "case: {name}");
    }
}

#[test]
fn error_key_path() {
    let err = Config::from_yaml_str("server: {lisen: x}", "t.yaml", &Env::empty()).unwrap_err();
    assert_eq!(err.key_path(), Some("server.lisen"));
    let err = Config::from_yaml_str("- x", "t.yaml", &Env::empty()).unwrap_err();
    assert_eq!(err.key_path(), None);
}

#[test]
fn load_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.yaml");
    std::fs::write(&path, "server:\n  max_body_bytes: big\n").unwrap();
    let err = Config::load(&path, &Env::empty()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: server.max_body_bytes: invalid type: string \"big\", expected u64",
            path.display()
        )
    );

    std::fs::write(&path, "server:\n  listen: 127.0.0.1:9\n").unwrap();
    let cfg = Config::load(&path, &Env::empty()).unwrap();
    assert_eq!(cfg.source.as_deref(), Some(path.as_path()));
    assert_eq!(cfg.server.listen.port(), 9);

    let missing = dir.path().join("missing.yaml");
    let err = Config::load(&missing, &Env::empty()).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with(&format!("{}: cannot read: ", missing.display())),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// Environment overrides
// ---------------------------------------------------------------------------------------------

/// A value picked out of a config, to compare as text.
type Probe = fn(&Config) -> String;

fn listen(c: &Config) -> String {
    c.server.listen.to_string()
}
fn openai_base(c: &Config) -> String {
    c.provider("openai").unwrap().base_url.to_string()
}

#[test]
fn env_overrides() {
    let with_listen = "server:\n  listen: 10.0.0.1:8080\n";
    let legacy_port = "server:\n  port: \":8080\"\n";
    let providers = "providers:\n  - {name: openai, base_url: \"https://a.example/v1\"}\n  - {name: local, base_url: \"http://127.0.0.1:1/v1\"}\n";
    // (case, yaml, env, probe, expected)
    let cases: &[(&str, &str, Vars, Probe, &str)] = &[
        (
            "RELAY_SERVER_MAX_BODY_BYTES",
            "server: {max_body_bytes: 5}",
            &[("RELAY_SERVER_MAX_BODY_BYTES", "1000")],
            |c| c.server.max_body_bytes.to_string(),
            "1000",
        ),
        (
            "RELAY_SERVER_REQUEST_LOG",
            "",
            &[("RELAY_SERVER_REQUEST_LOG", "false")],
            |c| c.server.request_log.to_string(),
            "false",
        ),
        (
            "RELAY_SERVER_EVENTS_REMOTE",
            "",
            &[("RELAY_SERVER_EVENTS_REMOTE", "true")],
            |c| c.server.events_remote.to_string(),
            "true",
        ),
        (
            "RELAY_SERVER_EVENTS_REMOTE over the file",
            "server: {events_remote: true}\n",
            &[("RELAY_SERVER_EVENTS_REMOTE", "false")],
            |c| c.server.events_remote.to_string(),
            "false",
        ),
        (
            "RELAY_SERVER_SHUTDOWN_TIMEOUT as a bare number",
            "",
            &[("RELAY_SERVER_SHUTDOWN_TIMEOUT", "12")],
            |c| format!("{:?}", c.server.shutdown_timeout),
            "12s",
        ),
        (
            "RELAY_SERVER_LISTEN over the file",
            with_listen,
            &[("RELAY_SERVER_LISTEN", "127.0.0.1:9000")],
            listen,
            "127.0.0.1:9000",
        ),
        (
            "RELAY_SERVER_LISTEN over the original relay's port in the file",
            legacy_port,
            &[("RELAY_SERVER_LISTEN", "127.0.0.1:9000")],
            listen,
            "127.0.0.1:9000",
        ),
        (
            "RELAY_SERVER_LISTEN wins over legacy SERVER_PORT",
            "",
            &[
                ("RELAY_SERVER_LISTEN", "127.0.0.1:9000"),
                ("SERVER_PORT", "9090"),
            ],
            listen,
            "127.0.0.1:9000",
        ),
        (
            "RELAY_SERVER_PORT with RELAY_SERVER_LISTEN keeps the host",
            "",
            &[
                ("RELAY_SERVER_LISTEN", "127.0.0.1:9000"),
                ("RELAY_SERVER_PORT", "9090"),
            ],
            listen,
            "127.0.0.1:9090",
        ),
        (
            "SERVER_PORT without a file listens on all interfaces",
            "",
            &[("SERVER_PORT", "9090")],
            listen,
            "0.0.0.0:9090",
        ),
        (
            "SERVER_PORT ':9090' form",
            "",
            &[("SERVER_PORT", ":9090")],
            listen,
            "0.0.0.0:9090",
        ),
        (
            "SERVER_PORT over the file's server.port",
            legacy_port,
            &[("SERVER_PORT", "9090")],
            listen,
            "0.0.0.0:9090",
        ),
        (
            "SERVER_PORT with server.listen in the file keeps the file's host",
            with_listen,
            &[("SERVER_PORT", "9090")],
            listen,
            "10.0.0.1:9090",
        ),
        (
            "RELAY_SERVER_PORT wins over SERVER_PORT",
            "",
            &[("SERVER_PORT", "9090"), ("RELAY_SERVER_PORT", "9191")],
            listen,
            "0.0.0.0:9191",
        ),
        (
            "REDIS_ADDRESS",
            "redis: {address: \"a:1\"}",
            &[("REDIS_ADDRESS", "redis.internal:6380")],
            |c| c.redis.address.clone(),
            "redis.internal:6380",
        ),
        (
            "RELAY_REDIS_ADDRESS wins over REDIS_ADDRESS",
            "",
            &[
                ("REDIS_ADDRESS", "legacy:1"),
                ("RELAY_REDIS_ADDRESS", "relay:2"),
            ],
            |c| c.redis.address.clone(),
            "relay:2",
        ),
        (
            "REDIS_PASSWORD",
            "redis: {password: \"\"}",
            &[("REDIS_PASSWORD", "hunter2")],
            |c| c.redis.password.as_ref().unwrap().expose().to_string(),
            "hunter2",
        ),
        (
            "RELAY_REDIS_DB",
            "",
            &[("RELAY_REDIS_DB", "3")],
            |c| c.redis.db.to_string(),
            "3",
        ),
        (
            "RELAY_PROVIDERS_OPENAI_BASE_URL without a providers section",
            "",
            &[(
                "RELAY_PROVIDERS_OPENAI_BASE_URL",
                "http://127.0.0.1:9999/v1",
            )],
            |c| format!("{:?} {}", provider_names(c), openai_base(c)),
            r#"["openai", "anthropic"] http://127.0.0.1:9999/v1"#,
        ),
        (
            "RELAY_PROVIDERS_OPENAI_BASE_URL with a providers section",
            providers,
            &[(
                "RELAY_PROVIDERS_OPENAI_BASE_URL",
                "http://127.0.0.1:9999/v1",
            )],
            |c| format!("{:?} {}", provider_names(c), openai_base(c)),
            r#"["openai", "local"] http://127.0.0.1:9999/v1"#,
        ),
        (
            "RELAY_PROVIDERS_OPENAI_BASE_URL wins over the file's proxy.target",
            ORIGINAL_RELAY_YAML,
            &[(
                "RELAY_PROVIDERS_OPENAI_BASE_URL",
                "http://127.0.0.1:9999/v1",
            )],
            openai_base,
            "http://127.0.0.1:9999/v1",
        ),
        (
            "RELAY_PROXY_TARGET",
            "",
            &[("RELAY_PROXY_TARGET", "http://127.0.0.1:9999")],
            openai_base,
            "http://127.0.0.1:9999/v1",
        ),
        (
            "provider name with '-' in the variable",
            "providers:\n  - {name: my-llm, base_url: \"http://a\"}\n",
            &[
                ("RELAY_PROVIDERS_MY_LLM_HTTP2", "true"),
                ("RELAY_PROVIDERS_MY_LLM_TIMEOUTS_IDLE", "1m 30s"),
            ],
            |c| {
                format!(
                    "{} {:?}",
                    c.providers[0].http2, c.providers[0].timeouts.idle
                )
            },
            "true 90s",
        ),
        (
            "RELAY_ROUTES flow YAML",
            "",
            &[("RELAY_ROUTES", r#"[{model: "x-*", provider: anthropic}]"#)],
            |c| route_summary(c).join("; "),
            "x-*| -> anthropic",
        ),
        (
            "RELAY_MODELS flow YAML",
            "",
            &[("RELAY_MODELS", "{gpt-4: 0.03}")],
            |c| c.models["gpt-4"].input.to_string(),
            "30000000",
        ),
        (
            "RELAY_RATELIMIT_*",
            "",
            &[
                ("RELAY_RATELIMIT_REQUESTS_PER_SECOND", "2.5"),
                ("RELAY_RATELIMIT_BURST", "5"),
            ],
            |c| format!("{:?}", c.ratelimit),
            "RateLimitConfig { enabled: true, requests_per_second: 2.5, burst: 5 }",
        ),
        (
            "RELAY_RATELIMIT_RULES and a provider's breaker",
            "",
            &[
                (
                    "RELAY_RATELIMIT_RULES",
                    "[{scope: key, tokens_per_minute: 1000}]",
                ),
                ("RELAY_RATELIMIT_ON_LIMIT", "wait"),
                ("RELAY_PROVIDERS_OPENAI_BREAKER_COOLDOWN", "5s"),
            ],
            |c| {
                format!(
                    "{} {} {:?} {:?} {}",
                    c.ratelimit.enabled,
                    c.limits.rules[0].name,
                    c.limits.on_limit,
                    c.providers[0].breaker.cooldown,
                    c.providers[0].breaker.enabled
                )
            },
            "true key Wait 5s true",
        ),
    ];
    for (name, yaml, vars, probe, want) in cases {
        let cfg = load(yaml, &env(vars));
        assert_eq!(probe(&cfg), *want, "case: {name}");
    }
}

#[test]
fn env_errors_name_key_path_and_variable() {
    let cases: &[(&str, Vars, &str)] = &[
        (
            "",
            &[("RELAY_SERVER_MAX_BODY_BYTES", "big")],
            "t.yaml: server.max_body_bytes: invalid type: string \"big\", expected u64 \
             (value from environment variable RELAY_SERVER_MAX_BODY_BYTES)",
        ),
        (
            "",
            &[("RELAY_SERVER_SHUTDOWN_TIMEOUT", "soon")],
            "t.yaml: server.shutdown_timeout: invalid duration \"soon\": expected number at 0 \
             (value from environment variable RELAY_SERVER_SHUTDOWN_TIMEOUT)",
        ),
        (
            "",
            &[("RELAY_SERVER_LISTEN", "nowhere")],
            "t.yaml: server.listen: \"nowhere\" is not an address such as \"127.0.0.1:8080\" \
             or \":8080\" (value from environment variable RELAY_SERVER_LISTEN)",
        ),
        (
            "",
            &[("SERVER_PORT", "eighty")],
            "t.yaml: server.port: \"eighty\" is not an address such as \"127.0.0.1:8080\" \
             or \":8080\" (value from environment variable SERVER_PORT)",
        ),
        (
            "",
            &[("RELAY_PROVIDERS_OPENAI_BASE_URL", "ftp://x")],
            "t.yaml: providers[0].base_url: \"ftp://x\": the URL must start with http:// or \
             https:// (e.g. https://api.openai.com/v1) (value from environment variable \
             RELAY_PROVIDERS_OPENAI_BASE_URL)",
        ),
        (
            "providers:\n  - {name: a, base_url: \"http://x\"}\n  - {name: openai, base_url: \"http://y\"}\n",
            &[("RELAY_PROVIDERS_OPENAI_TIMEOUTS_IDLE", "-1")],
            "t.yaml: providers[1].timeouts.idle: invalid duration \"-1\" \
             (value from environment variable RELAY_PROVIDERS_OPENAI_TIMEOUTS_IDLE)",
        ),
        (
            "",
            &[("RELAY_ROUTES", "[{model: \"x-*\", provider: nope}]")],
            "t.yaml: routes[0].provider: unknown provider \"nope\" (known: openai, anthropic) \
             (value from environment variable RELAY_ROUTES)",
        ),
        (
            "",
            &[("RELAY_ROUTES", "[{provider: openai, modle: x}]")],
            "t.yaml: routes[0].modle: unknown field `modle`, expected one of `model`, `path`, \
             `provider`, `fallback`, `fallback_on`, `retry` (value from environment variable RELAY_ROUTES)",
        ),
        (
            // The file's error is not blamed on an unrelated variable.
            "server: {max_body_bytes: big}",
            &[("RELAY_SERVER_LISTEN", "127.0.0.1:1")],
            "t.yaml: server.max_body_bytes: invalid type: string \"big\", expected u64",
        ),
    ];
    for (yaml, vars, want) in cases {
        assert_eq!(load_err(yaml, &env(vars)), *want, "env: {vars:?}");
    }
}

#[test]
fn unknown_relay_variables_warn() {
    let cfg = load(
        "",
        &env(&[
            ("RELAY_FOO", "1"),
            ("RELAY_LOG", "debug"),
            ("RELAY_PROVIDERS_NOPE_BASE_URL", "http://x"),
            ("RELAY_SERVER_LISTEN", "127.0.0.1:1"),
            ("UNRELATED", "x"),
        ]),
    );
    assert_eq!(
        cfg.warnings,
        [
            "environment variable RELAY_FOO names no config key; ignored",
            "environment variable RELAY_PROVIDERS_NOPE_BASE_URL names no config key; ignored",
        ]
    );
}

#[test]
fn redis_password_from_env_is_masked() {
    let cfg = load(
        "redis: {enabled: true}",
        &env(&[("REDIS_PASSWORD", "hunter2-clear")]),
    );
    assert_eq!(cfg.redis.password, Some(Secret::new("hunter2-clear")));
    let yaml = cfg.to_masked_yaml();
    assert!(!yaml.contains("hunter2-clear"), "{yaml}");
    assert!(yaml.contains("password: '***'"), "{yaml}");
    assert!(!format!("{cfg:?}").contains("hunter2-clear"));
}

// ---------------------------------------------------------------------------------------------
// Durations
// ---------------------------------------------------------------------------------------------

#[test]
fn durations() {
    let cases: &[(&str, Duration)] = &[
        ("\"30s\"", Duration::from_secs(30)),
        ("30s", Duration::from_secs(30)),
        ("\"500ms\"", Duration::from_millis(500)),
        ("\"1m 30s\"", Duration::from_secs(90)),
        ("5m", Duration::from_secs(300)),
        ("2h", Duration::from_secs(7200)),
        ("12", Duration::from_secs(12)),
        ("\"12\"", Duration::from_secs(12)),
        ("1.5", Duration::from_millis(1500)),
    ];
    for (text, want) in cases {
        let cfg = load(
            &format!("server: {{shutdown_timeout: {text}}}"),
            &Env::empty(),
        );
        assert_eq!(cfg.server.shutdown_timeout, *want, "{text}");
        let yaml = format!(
            "providers:\n  - name: a\n    base_url: http://x\n    timeouts: {{connect: {text}, first_byte: {text}, idle: {text}}}\n"
        );
        let t = load(&yaml, &Env::empty()).providers[0].timeouts;
        assert_eq!(
            t,
            Timeouts {
                connect: *want,
                first_byte: *want,
                idle: *want
            },
            "{text}"
        );
    }
    // A null duration is the default.
    let cfg = load("server: {shutdown_timeout: ~}", &Env::empty());
    assert_eq!(cfg.server.shutdown_timeout, Duration::from_secs(30));
}

// ---------------------------------------------------------------------------------------------
// Keys from the environment (api_key_env)
// ---------------------------------------------------------------------------------------------

const KEYED: &str = "\
providers:
  - name: openai
    base_url: https://api.openai.com/v1
    api_key_env: TEST_OPENAI_KEY
  - name: anthropic
    kind: anthropic
    base_url: https://api.anthropic.com/v1
    api_key_env: TEST_ANTHROPIC_KEY
";

#[test]
fn api_key_env_reads_the_key_and_hides_it() {
    let cfg = load(KEYED, &env(&[("TEST_OPENAI_KEY", "sk-test-very-secret")]));
    let openai = cfg.provider("openai").unwrap();
    assert_eq!(openai.api_key_env, vec!["TEST_OPENAI_KEY".to_string()]);
    assert_eq!(
        openai.api_key().map(Secret::expose),
        Some("sk-test-very-secret")
    );
    let anthropic = cfg.provider("anthropic").unwrap();
    assert_eq!(anthropic.api_key(), None);
    assert_eq!(
        cfg.warnings,
        [
            "providers[1].api_key_env: environment variable TEST_ANTHROPIC_KEY is not set; \
          clients must send their own key"
        ]
    );

    for shown in [
        format!("{cfg:?}"),
        format!("{cfg:#?}"),
        format!("{openai:?}"),
        cfg.to_masked_yaml(),
    ] {
        assert!(!shown.contains("sk-test-very-secret"), "{shown}");
    }
    assert!(format!("{openai:?}").contains("Secret(***)"));
    assert!(cfg
        .to_masked_yaml()
        .contains("api_key_env: TEST_OPENAI_KEY\n"));

    // An empty variable counts as not set.
    let cfg = load(
        KEYED,
        &env(&[("TEST_OPENAI_KEY", ""), ("TEST_ANTHROPIC_KEY", "k")]),
    );
    assert_eq!(cfg.provider("openai").unwrap().api_key(), None);
    assert_eq!(cfg.warnings.len(), 1, "{:?}", cfg.warnings);
    assert!(cfg.warnings[0].contains("TEST_OPENAI_KEY is not set"));
}

// ---------------------------------------------------------------------------------------------
// to_masked_yaml round trip
// ---------------------------------------------------------------------------------------------

#[test]
fn masked_yaml_loads_again_to_an_equal_config() {
    let rich = "\
server:
  listen: \"[::1]:9000\"
  max_body_bytes: 1000
  shutdown_timeout: 1m 30s
  request_log: false
  events_remote: true
providers:
  - name: openai
    base_url: https://api.openai.com/v1/
    api_key_env: TEST_OPENAI_KEY
    http2: true
    timeouts: {connect: 500ms, first_byte: 2m, idle: 45s}
    breaker: {consecutive_failures: 3, cooldown: 10s, count_429: true}
    retry: {attempts: 2, on: [429, 5xx, overloaded_error], max_delay: 3s}
  - name: claude
    kind: anthropic
    base_url: http://127.0.0.1:8081
    api_key_env: TEST_MISSING_KEY
    breaker: {enabled: false}
  - name: my-llm.local
    base_url: http://10.0.0.1:11434/v1
routes:
  - {path: \"/v1/messages*\", provider: claude}
  - {model: \"llama*\", path: \"/v1/chat/*\", provider: my-llm.local}
  - {provider: openai, fallback: claude, fallback_on: [circuit_open, 529, context_length_exceeded], retry: {attempts: 1}}
ratelimit:
  enabled: false
  requests_per_second: 0.2
  burst: 3
  on_limit: wait
  max_wait: 2s
  rules:
    - {scope: key+model, model: \"gpt-*\", requests_per_second: 1.5, tokens_per_minute: 90000}
    - {name: all, tokens_per_minute: 5}
redis: {enabled: true, address: \"redis:6379\", password: pw-in-file, db: 2}
models:
  gpt-4: 0.03
  \"1.5\": 0.0000015
  m: {input: 3, output: 15.5, cached_input: 0.3, cache_write: 3.75}
";
    let env = env(&[("TEST_OPENAI_KEY", "sk-round-trip")]);
    let pools = "\
providers:
  - name: openai
    endpoints: [{url: 'http://east:9001/v1', weight: 3}, 'http://west:9002/v1']
    strategy: least-latency
    health_check: {interval: 2s}
    api_key_env: [TEST_OPENAI_KEY, TEST_MISSING_KEY]
";
    let balanced = "\
loadbalancer: {enabled: true, strategy: random, targets: [{url: 'http://a:1', weight: 2}, 'http://b:2']}
";
    for (name, yaml) in [
        ("defaults", ""),
        ("original relay", ORIGINAL_RELAY_YAML),
        ("rich", rich),
        ("pools", pools),
        ("original load balancer", balanced),
    ] {
        let first = load(yaml, &env);
        let masked = first.to_masked_yaml();
        assert!(!masked.contains("sk-round-trip"), "{masked}");
        assert!(!masked.contains("pw-in-file"), "{masked}");
        let again = Config::from_yaml_str(&masked, "masked.yaml", &env)
            .unwrap_or_else(|e| panic!("{name}: masked YAML does not load: {e}\n{masked}"));

        // Equal except secrets (printed as "***") and load-time warnings.
        let mut want = first.clone();
        want.warnings.clear();
        want.redis.password = want.redis.password.map(|_| Secret::new("***"));
        let mut got = again.clone();
        got.warnings.clear();
        assert_eq!(got, want, "{name}\n{masked}");
        assert_eq!(again.to_masked_yaml(), masked, "{name}: not a fixed point");
    }
}

// ---------------------------------------------------------------------------------------------
// Shipped files
// ---------------------------------------------------------------------------------------------

#[test]
fn example_config_is_valid() {
    let path = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/configs/relay.example.yaml"
    ));
    if !path.exists() {
        return; // written by the lead; checked once it exists
    }
    let cfg = Config::load(path, &Env::empty())
        .unwrap_or_else(|e| panic!("configs/relay.example.yaml is invalid: {e}"));
    assert!(cfg.provider("openai").is_some());
    assert!(cfg.provider("anthropic").is_some());
}

#[test]
fn shipped_config_is_the_defaults() {
    let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/configs/relay.yaml"));
    if !path.exists() {
        return;
    }
    let mut cfg = Config::load(path, &Env::empty())
        .unwrap_or_else(|e| panic!("configs/relay.yaml is invalid: {e}"));
    cfg.source = None;
    assert_eq!(cfg, Config::defaults(&Env::empty()));
}

// ---------------------------------------------------------------------------------------------
// Watching the file
// ---------------------------------------------------------------------------------------------

mod watching {
    use std::time::Duration;

    use super::watch::{ConfigWatcher, DEFAULT_DEBOUNCE};

    /// Failure guard only: a signal normally arrives within the debounce interval.
    const GUARD: Duration = Duration::from_secs(10);
    /// How long "no signal" is waited for.
    const QUIET: Duration = Duration::from_millis(300);

    async fn expect_one_signal(w: &mut ConfigWatcher) {
        tokio::time::timeout(GUARD, w.changed())
            .await
            .expect("no change signalled")
            .expect("watcher stopped");
        assert!(
            tokio::time::timeout(QUIET, w.changed()).await.is_err(),
            "a second signal for one change"
        );
    }

    async fn expect_no_signal(w: &mut ConfigWatcher) {
        assert!(
            tokio::time::timeout(QUIET, w.changed()).await.is_err(),
            "signalled for another file"
        );
    }

    #[tokio::test]
    async fn direct_write_signals_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.yaml");
        std::fs::write(&path, "server: {}\n").unwrap();
        let mut w = ConfigWatcher::new(&path, DEFAULT_DEBOUNCE).unwrap();
        std::fs::write(&path, "server: {request_log: false}\n").unwrap();
        expect_one_signal(&mut w).await;
    }

    #[tokio::test]
    async fn rename_over_signals_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.yaml");
        std::fs::write(&path, "server: {}\n").unwrap();
        let mut w = ConfigWatcher::new(&path, DEFAULT_DEBOUNCE).unwrap();
        let tmp = dir.path().join("relay.yaml.tmp");
        std::fs::write(&tmp, "server: {request_log: false}\n").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        expect_one_signal(&mut w).await;
        // The watch survives the replaced inode: a second rename-over is seen too.
        std::fs::write(&tmp, "server: {request_log: true}\n").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        expect_one_signal(&mut w).await;
    }

    #[tokio::test]
    async fn other_files_in_the_directory_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.yaml");
        std::fs::write(&path, "server: {}\n").unwrap();
        let mut w = ConfigWatcher::new(&path, DEFAULT_DEBOUNCE).unwrap();
        let other = dir.path().join("other.yaml");
        std::fs::write(&other, "x: 1\n").unwrap();
        let tmp = dir.path().join("other.yaml.tmp");
        std::fs::write(&tmp, "x: 2\n").unwrap();
        std::fs::rename(&tmp, &other).unwrap();
        std::fs::remove_file(&other).unwrap();
        expect_no_signal(&mut w).await;
        // ... while the watched file still is.
        std::fs::write(&path, "server: {request_log: false}\n").unwrap();
        expect_one_signal(&mut w).await;
    }
}

// ---------------------------------------------------------------------------------------------
// cost:, keys:, budgets:
// ---------------------------------------------------------------------------------------------

#[test]
fn cost_keys_and_budgets() {
    let c = load("", &Env::empty());
    assert!(c.cost.enabled && c.cost.ledger);
    assert_eq!(c.cost.stream_usage, StreamUsage::Inject);
    assert_eq!(c.cost.ledger_path, None);
    assert!(c.keys.is_empty() && c.budgets.is_empty());

    let yaml = "cost: {stream_usage: off, ledger_path: /tmp/u.redb}\nkeys:\n  alice: ALICE_KEY\n  ci: CI_HASH\n  ghost: NOT_SET\nbudgets:\n  alice: {daily: 5, monthly: 50.5}\n  \"*\": {monthly: 1}\n";
    let e = Env::empty()
        .with("ALICE_KEY", "sk-alice")
        .with("CI_HASH", "blake3:ABCDEF0123456789");
    let c = Config::from_yaml_str(yaml, "t.yaml", &e).unwrap();
    assert_eq!(c.cost.stream_usage, StreamUsage::Off);
    assert_eq!(
        c.cost.ledger_path.as_deref(),
        Some(std::path::Path::new("/tmp/u.redb"))
    );
    let hash = |name: &str| c.keys.iter().find(|k| k.name == name).unwrap().hash.clone();
    assert_eq!(
        hash("alice").unwrap(),
        blake3::hash(b"sk-alice").to_hex().to_string()
    );
    assert_eq!(hash("ci").unwrap(), "abcdef0123456789");
    assert_eq!(hash("ghost"), None);
    assert!(
        c.warnings
            .iter()
            .any(|w| w.contains("keys.ghost") && w.contains("NOT_SET")),
        "{:?}",
        c.warnings
    );
    assert_eq!(
        c.budgets["alice"],
        Budget {
            daily: Some(5_000_000),
            monthly: Some(50_500_000)
        }
    );
    assert_eq!(c.budgets["*"].daily, None);
    // The masked view names variables, never keys, and loads again.
    let masked = c.to_masked_yaml();
    assert!(!masked.contains("sk-alice"), "{masked}");
    assert_eq!(
        Config::from_yaml_str(&masked, "m.yaml", &e)
            .unwrap()
            .budgets,
        c.budgets
    );
    // Environment overrides.
    let c = load(
        "",
        &Env::empty()
            .with("RELAY_COST_STREAM_USAGE", "off")
            .with("RELAY_KEYS", "{bob: BOB}")
            .with("RELAY_BUDGETS", "{bob: {daily: 2}}"),
    );
    assert_eq!(c.cost.stream_usage, StreamUsage::Off);
    assert_eq!(c.budgets["bob"].daily, Some(2_000_000));
}

#[test]
fn cost_errors_name_the_key() {
    let e = Env::empty().with("BAD_HASH", "blake3:xyz");
    let cases: &[(&str, &str)] = &[
        (
            "budgets:\n  alice: {daily: 1}\n",
            r#"t.yaml: budgets.alice: "alice" is not a key alias (keys: none); use an alias from keys: or "*""#,
        ),
        (
            "keys: {bob: B}\nbudgets:\n  bob: {daily: -1}\n",
            "t.yaml: budgets.bob.daily: a budget must be a number of USD ≥ 0",
        ),
        (
            "keys: {bob: B}\nbudgets:\n  bob: {}\n",
            "t.yaml: budgets.bob: set daily and/or monthly (USD)",
        ),
        (
            "budgets:\n  \"*\": {weekly: 1}\n",
            "t.yaml: budgets.*.weekly: unknown field `weekly`, expected `daily` or `monthly`",
        ),
        (
            "cost: {stream_usage: always}\n",
            "t.yaml: cost.stream_usage: unknown variant `always`, expected `inject` or `off`",
        ),
        (
            "keys: {ci: BAD_HASH}\n",
            "t.yaml: keys.ci: BAD_HASH holds blake3:<hex> with a bad hash: want 12 to 64 hex digits",
        ),
        (
            "keys: {\"*\": X}\n",
            r#"t.yaml: keys.*: "*" cannot be an alias ("*", "none" and "key-..." are reserved)"#,
        ),
    ];
    for (yaml, want) in cases {
        assert_eq!(load_err(yaml, &e), *want, "yaml: {yaml}");
    }
}

#[test]
fn hardening_keys_load_and_are_checked() {
    let e = Env::empty();
    let cfg = load("server: {}\n", &e);
    let s = &cfg.server;
    assert!(s.allowed_origins.is_empty() && s.allowed_hosts.is_empty());
    assert!(s.trusted_proxies.is_empty());
    assert_eq!(s.max_connections, 10_000);
    assert_eq!(s.idle_timeout, Duration::from_secs(75));
    assert_eq!(s.header_read_timeout, Duration::from_secs(30));
    assert_eq!(s.body_read_timeout, Duration::from_secs(60));
    assert_eq!(s.max_header_bytes, 64 * 1024);
    assert_eq!(s.max_buffered_bytes, 512 * 1024 * 1024);
    let cfg = load(
        "server:\n  allowed_origins: [\"https://app.example.com/\", \"*\"]\n  allowed_hosts: [relay.internal]\n  trusted_proxies: [127.0.0.1, 10.0.0.0/8, \"::1\"]\n  max_connections: 5\n  idle_timeout: 2s\n  header_read_timeout: 1s\n  body_read_timeout: 3s\n  max_header_bytes: 8192\n  max_body_bytes: 100\n  max_buffered_bytes: 100\n",
        &e,
    );
    let s = &cfg.server;
    assert_eq!(s.allowed_origins, ["https://app.example.com", "*"]);
    assert_eq!(s.allowed_hosts, ["relay.internal"]);
    assert_eq!(s.trusted_proxies.len(), 3);
    assert_eq!(s.trusted_proxies[0].to_string(), "127.0.0.1/32");
    assert_eq!(
        (s.max_connections, s.max_header_bytes, s.max_buffered_bytes),
        (5, 8192, 100)
    );
    let yaml = cfg.to_masked_yaml();
    assert!(
        yaml.contains("trusted_proxies:\n  - 127.0.0.1/32"),
        "{yaml}"
    );
    assert!(yaml.contains("idle_timeout: 2s"), "{yaml}");
    for (yaml, want) in [
        (
            "server: {trusted_proxies: [nginx]}\n",
            "t.yaml: server.trusted_proxies[0]: \"nginx\" is not an IP address or CIDR range (127.0.0.1, 10.0.0.0/8)",
        ),
        (
            "server: {allowed_origins: [app.example.com]}\n",
            "t.yaml: server.allowed_origins[0]: \"app.example.com\" is not an origin (scheme://host[:port], e.g. https://app.example.com) or *",
        ),
        (
            "server: {allowed_origins: [\"https://a.example/path\"]}\n",
            "t.yaml: server.allowed_origins[0]: \"https://a.example/path\" is not an origin (scheme://host[:port], e.g. https://app.example.com) or *",
        ),
        (
            "server: {allowed_hosts: [\"http://x/\"]}\n",
            "t.yaml: server.allowed_hosts[0]: \"http://x/\" is not a host name (relay.internal, or *)",
        ),
        (
            "server: {max_connections: 0}\n",
            "t.yaml: server.max_connections: must be greater than 0",
        ),
        (
            "server: {idle_timeout: 0s}\n",
            "t.yaml: server.idle_timeout: must be greater than 0",
        ),
        (
            "server: {max_header_bytes: 100}\n",
            "t.yaml: server.max_header_bytes: must be at least 8192",
        ),
        (
            "server: {max_body_bytes: 200, max_buffered_bytes: 100}\n",
            "t.yaml: server.max_buffered_bytes: must be at least server.max_body_bytes (200)",
        ),
    ] {
        assert_eq!(load_err(yaml, &e), want, "yaml: {yaml}");
    }
    let cfg = load(
        "{}\n",
        &Env::empty().with("RELAY_SERVER_TRUSTED_PROXIES", "[10.1.0.0/16]"),
    );
    assert_eq!(cfg.server.trusted_proxies[0].to_string(), "10.1.0.0/16");
}

#[test]
fn a_blank_config_file_is_an_error_not_the_defaults() {
    let dir = tempfile::tempdir().unwrap();
    for text in [
        "",
        "\n  \n",
        "# only a comment\n# and another\n",
        "---\n# c\n",
        "null\n",
    ] {
        let path = dir.path().join("relay.yaml");
        std::fs::write(&path, text).unwrap();
        let err = Config::load(&path, &Env::empty()).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{}: the file has no settings", path.display())),
            "{text:?}: {err}"
        );
    }
    let path = dir.path().join("ok.yaml");
    std::fs::write(&path, "# comment\n{}\n").unwrap();
    assert!(Config::load(&path, &Env::empty()).is_ok());
    // The built-in defaults (no file at all) are still there.
    assert_eq!(Config::defaults(&Env::empty()).providers.len(), 2);
}

#[test]
fn cache_keys_leave_out_nested_paths_and_the_client_rules() {
    let c = Config::from_yaml_str(
        "cache:\n  ignore_fields: [user, 'input[*].id']\n",
        "t.yaml",
        &Env::empty(),
    )
    .unwrap();
    let paths: Vec<String> = c
        .cache
        .ignore
        .paths()
        .iter()
        .map(|p| p.to_string())
        .collect();
    assert!(paths.contains(&"input[*].id".to_string()), "{paths:?}");
    assert!(
        paths.contains(&"prompt_cache_key".to_string()),
        "client rules on by default"
    );
    assert!(c.cache.portable && c.cache.client_rules);
    let c = Config::from_yaml_str(
        "cache:\n  ignore_fields: [user]\n  client_rules: false\n  portable: false\n",
        "t.yaml",
        &Env::empty(),
    )
    .unwrap();
    let paths: Vec<String> = c
        .cache
        .ignore
        .paths()
        .iter()
        .map(|p| p.to_string())
        .collect();
    assert_eq!(paths, ["user"]);
    assert!(!c.cache.portable);
}

#[test]
fn retries_fallbacks_and_the_original_relays_defaults() {
    let c = load("", &Env::empty());
    let p = &c.providers[0];
    assert!(p.breaker.enabled, "the breaker is on by default");
    assert_eq!(p.breaker.consecutive_failures, 5);
    assert_eq!(p.retry, RetryConfig::default());
    assert_eq!(c.routes[0].fallback_on, default_fallback_on());
    let yaml = "providers:\n  - name: a\n    base_url: http://x\n    retry: {attempts: 2, on: [429, 5xx, overloaded_error], max_delay: 3s}\n    breaker: {enabled: false}\n  - name: b\n    base_url: http://y\nroutes:\n  - {provider: a, fallback: b, fallback_on: [circuit_open, 529, context_length_exceeded], retry: {attempts: 1}}\n";
    let c = load(yaml, &Env::empty());
    let a = &c.providers[0];
    assert!(!a.breaker.enabled);
    assert_eq!(a.retry.attempts, 2);
    assert_eq!(
        a.retry.on,
        [
            When::Status(429),
            When::Class(5),
            When::Error("overloaded_error".into())
        ]
    );
    assert_eq!(a.retry.max_delay, Duration::from_secs(3));
    assert_eq!(a.retry.base_delay, RetryConfig::default().base_delay);
    let r = &c.routes[0];
    assert_eq!(
        r.fallback_on,
        [
            When::CircuitOpen,
            When::Status(529),
            When::Error("context_length_exceeded".into())
        ]
    );
    // The route's retry starts from its provider's.
    let rr = r.retry.as_ref().unwrap();
    assert_eq!((rr.attempts, rr.max_delay), (1, Duration::from_secs(3)));
    for (yaml, err) in [
        (
            "providers:\n  - {name: a, base_url: \"http://x\", retry: {attempts: 0}}\n",
            "t.yaml: providers[0].retry.attempts: must be at least 1 (1: no retries)",
        ),
        (
            "providers:\n  - {name: a, base_url: \"http://x\", retry: {on: [\"4 2 9\"]}}\n",
            "t.yaml: providers[0].retry.on[0]: \"4 2 9\": want connect, timeout, circuit_open, a status (429), a class (5xx) or an error code (context_length_exceeded)",
        ),
        (
            "providers:\n  - {name: a, base_url: \"http://x\", retry: {on: [circuit_open]}}\n",
            "t.yaml: providers[0].retry.on: circuit_open is for fallback_on: an open circuit is not retried",
        ),
        (
            "providers:\n  - {name: a, base_url: \"http://x\"}\nroutes:\n  - {provider: a, fallback_on: [429]}\n",
            "t.yaml: routes[0].fallback_on: needs a fallback: provider to hand over to",
        ),
    ] {
        assert_eq!(load_err(yaml, &Env::empty()), err, "{yaml}");
    }
}

#[test]
fn redis_enabled_alone_shares_the_cache_and_the_limits() {
    let c = load("redis: {enabled: true}\n", &Env::empty());
    if cfg!(feature = "redis") {
        assert_eq!(c.cache.backend, CacheBackend::Redis);
        assert_eq!(c.limits.backend, LimitBackend::Redis);
        // Explicit backends win.
        let c = load(
            "redis: {enabled: true}\ncache: {backend: redb}\nratelimit: {backend: local}\n",
            &Env::empty(),
        );
        assert_eq!(c.cache.backend, CacheBackend::Redb);
        assert_eq!(c.limits.backend, LimitBackend::Local);
    } else {
        assert_eq!(c.cache.backend, CacheBackend::Redb);
        assert!(
            c.warnings
                .iter()
                .any(|w| w.contains("built without `--features redis`")),
            "{:?}",
            c.warnings
        );
    }
}

#[test]
fn auth_admin_key_and_exposure() {
    let e = Env::empty().with("ADMIN", "0123456789abcdef-admin");
    let cfg = load("auth: {enabled: true, admin_key_env: ADMIN}\n", &e);
    assert!(cfg.auth.enabled);
    let admin = cfg.auth.admin_key.as_ref().unwrap();
    assert!(admin.matches("0123456789abcdef-admin") && !admin.matches("0123456789abcdef-admiN"));
    assert_eq!(admin.env.as_deref(), Some("ADMIN"));
    assert!(!format!("{cfg:?}").contains("0123456789abcdef-admin"));
    assert!(!view::to_masked_yaml(&cfg).contains("0123456789abcdef-admin"));
    // The original relay's literal key works, with a warning; a short one is refused.
    let lit = load(
        "auth: {admin_key: \"literal-admin-key-0001\"}\n",
        &Env::empty(),
    );
    assert!(lit
        .auth
        .admin_key
        .unwrap()
        .matches("literal-admin-key-0001"));
    assert!(lit.warnings.iter().any(|w| w.contains("admin_key_env")));
    assert!(load_err("auth: {admin_key: short}\n", &Env::empty())
        .starts_with("t.yaml: auth.admin_key: the admin key (auth.admin_key) is 5 characters"));
    assert!(load_err("auth: {admin_key: x, admin_key_env: ADMIN}\n", &e).contains("not both"));
    let unset = load("auth: {admin_key_env: NOPE}\n", &Env::empty());
    assert!(unset.auth.admin_key.is_none() && unset.warnings.iter().any(|w| w.contains("NOPE")));
    // RELAY_AUTH_ENABLED turns it on from the environment.
    assert!(
        load(
            "server: {}\n",
            &Env::empty().with("RELAY_AUTH_ENABLED", "true")
        )
        .auth
        .enabled
    );

    // Beyond loopback, a provider key and auth off: refused; each way out is accepted.
    let keyed = Env::empty().with("OPENAI_API_KEY", "sk-test");
    let open: SocketAddr = "0.0.0.0:8080".parse().unwrap();
    let keyed_provider = "providers:\n  - {name: openai, base_url: \"https://a.example/v1\", api_key_env: OPENAI_API_KEY}\n";
    let plain = load(keyed_provider, &keyed);
    let why = plain.exposure(open).unwrap_err().to_string();
    assert!(
        why.contains("auth.enabled") && why.contains("OPENAI_API_KEY"),
        "{why}"
    );
    assert!(!why.contains("sk-test"));
    assert!(plain.exposure("127.0.0.1:8080".parse().unwrap()).is_ok());
    assert!(plain.exposure("[::1]:8080".parse().unwrap()).is_ok());
    assert!(
        load(keyed_provider, &Env::empty()).exposure(open).is_ok(),
        "no key to spend"
    );
    assert!(load(
        &format!("{keyed_provider}auth: {{enabled: true}}\n"),
        &keyed
    )
    .exposure(open)
    .is_ok());
    assert!(load(
        &format!("{keyed_provider}server: {{allow_unauthenticated: true}}\n"),
        &keyed
    )
    .exposure(open)
    .is_ok());
}
