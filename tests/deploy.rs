//! The deployment files, checked where no Docker engine or cluster runs: docker-compose.yml and
//! the Kubernetes overlays (rendered by `kubectl kustomize`, checked by `kubernetes-validate
//! --strict`) parse as YAML and hold the keys that make them work;
//! the configs they ship load; the Dockerfile builds through the same script CI runs; and
//! `relay health`, the image's HEALTHCHECK, really tells a live relay from a dead one.

mod common;

use std::path::Path;
use std::process::Command;

use common::mock::{Kind, Mock};
use common::*;
use relay::config::{Config, Env};
use serde::Deserialize;
use yaml_serde::Value;

fn read(rel: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every document of a YAML file.
fn docs(rel: &str) -> Vec<Value> {
    let text = read(rel);
    yaml_serde::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{rel}: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

/// The value at a dotted path (`spec.template.spec`); numbers index sequences.
fn at<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |v, k| {
        let next = match k.parse::<usize>() {
            Ok(i) => v.get(i),
            Err(_) => v.get(k),
        };
        next.unwrap_or_else(|| panic!("no {k:?} (in {path:?}) in {v:?}"))
    })
}

fn s<'a>(v: &'a Value, path: &str) -> &'a str {
    at(v, path)
        .as_str()
        .unwrap_or_else(|| panic!("{path} is not a string"))
}

#[test]
fn compose_runs_relay_with_redis() {
    let d = docs("docker-compose.yml");
    assert_eq!(d.len(), 1);
    let relay = at(&d[0], "services.relay");
    assert_eq!(s(relay, "build.context"), ".");
    assert_eq!(s(relay, "ports.0"), "127.0.0.1:8080:8080");
    // Config from a mounted file, overridden by the environment.
    assert_eq!(
        s(relay, "volumes.0"),
        "./deploy/docker/relay.yaml:/etc/relay/relay.yaml:ro"
    );
    assert_eq!(s(relay, "environment.RELAY_CACHE_BACKEND"), "redis");
    assert_eq!(s(relay, "environment.RELAY_REDIS_ADDRESS"), "redis:6379");
    assert_eq!(s(relay, "depends_on.redis.condition"), "service_healthy");
    assert_eq!(s(relay, "healthcheck.test.1"), "relay");
    assert_eq!(s(relay, "healthcheck.test.2"), "health");
    assert!(s(&d[0], "services.redis.image").starts_with("redis:"));
    assert!(at(&d[0], "volumes").get("relay-data").is_some());

    // The mounted config plus the compose environment.
    let env = Env::empty()
        .with("RELAY_CACHE_BACKEND", "redis")
        .with("RELAY_REDIS_ADDRESS", "redis:6379");
    let loaded = Config::from_yaml_str(&read("deploy/docker/relay.yaml"), "relay.yaml", &env);
    if cfg!(feature = "redis") {
        let cfg = loaded.unwrap();
        assert_eq!(cfg.cache.backend, relay::config::CacheBackend::Redis);
        assert_eq!(cfg.redis.address, "redis:6379");
        assert_eq!(cfg.server.listen.to_string(), "0.0.0.0:8080");
        // It starts with the keys compose passes in: the port is on the host's loopback only.
        let keyed = env.with("OPENAI_API_KEY", "sk-test");
        let cfg =
            Config::from_yaml_str(&read("deploy/docker/relay.yaml"), "relay.yaml", &keyed).unwrap();
        cfg.exposure(cfg.server.listen)
            .expect("compose's relay starts");
    } else {
        let e = loaded.unwrap_err().to_string();
        assert!(e.contains("--features redis"), "{e}");
    }
}

/// `kubectl kustomize <overlay>`: every document it renders.
fn render(overlay: &str) -> Vec<Value> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/kubernetes/overlays")
        .join(overlay);
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(&dir)
        .output()
        .expect("kubectl is installed (scripts/test.sh says where to get it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    // The rendered manifests pass the Kubernetes schema, unknown fields refused.
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &text).unwrap();
    let checked = Command::new("kubernetes-validate")
        .args(["--strict", "--quiet"])
        .arg(file.path())
        .output()
        .expect("kubernetes-validate is installed (scripts/test.sh installs it from PyPI)");
    assert!(
        checked.status.success(),
        "{overlay}: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    yaml_serde::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn kind<'a>(all: &'a [Value], kind: &str, name: &str) -> &'a Value {
    all.iter()
        .find(|d| s(d, "kind") == kind && s(d, "metadata.name") == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// Pod Security "restricted" for one pod spec: non-root, RuntimeDefault seccomp, no privilege
/// escalation, every capability dropped.
fn restricted(pod: &Value, what: &str) {
    assert_eq!(
        at(pod, "securityContext.runAsNonRoot").as_bool(),
        Some(true),
        "{what}"
    );
    assert_eq!(
        s(pod, "securityContext.seccompProfile.type"),
        "RuntimeDefault",
        "{what}"
    );
    for c in at(pod, "containers").as_sequence().unwrap() {
        let sc = at(c, "securityContext");
        assert_eq!(
            at(sc, "allowPrivilegeEscalation").as_bool(),
            Some(false),
            "{what}"
        );
        assert_eq!(s(sc, "capabilities.drop.0"), "ALL", "{what}");
        assert_eq!(s(sc, "seccompProfile.type"), "RuntimeDefault", "{what}");
        assert_eq!(
            at(sc, "readOnlyRootFilesystem").as_bool(),
            Some(true),
            "{what}"
        );
    }
}

fn env_value<'a>(c: &'a Value, name: &str) -> Option<&'a str> {
    at(c, "env")
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| s(e, "name") == name)
        .and_then(|e| e.get("value"))
        .and_then(Value::as_str)
}

/// The image's own config, as `docker run` starts it: listening on all interfaces, it refuses to
/// inject a key with auth off unless told the port is on the host's loopback alone.
#[test]
fn the_image_config_starts_only_when_told_or_with_auth() {
    let env = Env::empty()
        .with("RELAY_SERVER_LISTEN", "0.0.0.0:8080")
        .with("OPENAI_API_KEY", "sk");
    let yaml = read("deploy/docker/image.yaml");
    let plain = Config::from_yaml_str(&yaml, "image.yaml", &env).unwrap();
    assert!(plain.exposure(plain.server.listen).is_err());
    for (var, value) in [
        ("RELAY_SERVER_ALLOW_UNAUTHENTICATED", "true"),
        ("RELAY_AUTH_ENABLED", "true"),
    ] {
        let cfg =
            Config::from_yaml_str(&yaml, "image.yaml", &env.clone().with(var, value)).unwrap();
        cfg.exposure(cfg.server.listen)
            .unwrap_or_else(|e| panic!("{var}: {e}"));
    }
}

#[test]
fn kubernetes_overlays_render_validate_and_keep_state_where_it_lasts() {
    for overlay in ["single", "team"] {
        let all = render(overlay);
        let dep = kind(&all, "Deployment", "relay");
        let labels = at(dep, "spec.selector.matchLabels");
        assert_eq!(labels, at(dep, "spec.template.metadata.labels"));
        let pod = at(dep, "spec.template.spec");
        restricted(pod, overlay);
        let c = at(pod, "containers.0");
        for probe in ["readinessProbe", "livenessProbe"] {
            assert_eq!(
                s(c, &format!("{probe}.httpGet.path")),
                "/healthz",
                "{probe}"
            );
            assert_eq!(s(c, &format!("{probe}.httpGet.port")), "http", "{probe}");
        }
        assert_eq!(at(c, "ports.0.containerPort").as_u64(), Some(8080));
        let args: Vec<&str> = at(c, "args")
            .as_sequence()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(&args[..3], ["serve", "--config", "/etc/relay/relay.yaml"]);
        let volume = |name: &str| {
            at(pod, "volumes")
                .as_sequence()
                .unwrap()
                .iter()
                .find(|v| s(v, "name") == name)
                .unwrap_or_else(|| panic!("no volume {name}"))
                .clone()
        };
        assert_eq!(s(&volume("config"), "configMap.name"), "relay-config");
        let svc = kind(&all, "Service", "relay");
        assert_eq!(at(svc, "spec.selector"), labels);

        // The config: open to the cluster, so auth is on and the pod starts with its keys.
        let cm = kind(&all, "ConfigMap", "relay-config");
        let text = at(cm, "data").get("relay.yaml").unwrap().as_str().unwrap();
        let mut env = Env::empty().with("OPENAI_API_KEY", "sk");
        if let Some(v) = env_value(c, "RELAY_REDIS_ENABLED") {
            env = env.with("RELAY_REDIS_ENABLED", v);
        }
        let cfg = Config::from_yaml_str(text, "configmap", &env).unwrap();
        assert_eq!(cfg.server.listen.to_string(), "0.0.0.0:8080");
        assert!(cfg.auth.enabled);
        cfg.exposure(cfg.server.listen).expect("the pod starts");

        // Rollouts lose no request: a preStop pause, then a drain the grace period covers.
        let pause = at(c, "lifecycle.preStop.sleep.seconds").as_u64().unwrap();
        let grace = at(pod, "terminationGracePeriodSeconds").as_u64().unwrap();
        assert!(
            pause >= 5,
            "{overlay}: a pause for the endpoint removal to spread"
        );
        assert!(
            cfg.server.shutdown_timeout.as_secs() >= 300,
            "long enough for streams"
        );
        assert!(
            grace > pause + cfg.server.shutdown_timeout.as_secs(),
            "{overlay}: {grace}"
        );

        let data = &volume("data");
        match overlay {
            "single" => {
                // Keys, ledger, budgets, cache: on a volume that outlives the pod.
                assert_eq!(at(dep, "spec.replicas").as_u64(), Some(1));
                assert_eq!(s(data, "persistentVolumeClaim.claimName"), "relay-data");
                assert!(data.get("emptyDir").is_none());
                assert_eq!(s(dep, "spec.strategy.type"), "Recreate");
                kind(&all, "PersistentVolumeClaim", "relay-data");
                assert!(!cfg.redis.enabled);
            }
            _ => {
                // Several replicas: what they share is on Redis; /data only local fallbacks.
                assert!(at(dep, "spec.replicas").as_u64().unwrap() >= 2);
                assert!(cfg.redis.enabled, "keys, budgets and the ledger on Redis");
                assert_eq!(
                    env_value(c, "RELAY_REDIS_ADDRESS"),
                    Some("relay-redis:6379")
                );
                assert_eq!(
                    at(dep, "spec.strategy.rollingUpdate.maxUnavailable").as_u64(),
                    Some(0)
                );
                assert!(data.get("emptyDir").is_some());
                let redis = kind(&all, "Deployment", "relay-redis");
                let rpod = at(redis, "spec.template.spec");
                restricted(rpod, "redis");
                assert_eq!(
                    s(rpod, "volumes.0.persistentVolumeClaim.claimName"),
                    "relay-redis-data"
                );
                let rargs = at(rpod, "containers.0.args").as_sequence().unwrap();
                assert!(rargs.iter().any(|a| a.as_str() == Some("noeviction")));
                assert!(rargs.iter().any(|a| a.as_str() == Some("--appendonly")));
                kind(&all, "Service", "relay-redis");
                kind(&all, "PodDisruptionBudget", "relay");
            }
        }
    }
}

#[test]
fn dockerfile_builds_with_the_ci_script_and_runs_slim_non_root_with_a_healthcheck() {
    let df = read("Dockerfile");
    let from: Vec<&str> = df.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(from.len(), 2, "multi-stage: {from:?}");
    assert!(from[1].contains("-slim"), "{from:?}");
    // Both builds (the cached dependency layer and the real one) are the CI script, unchanged.
    let runs = df
        .lines()
        .map(str::trim_start)
        .filter(|l| {
            l.starts_with("RUN scripts/build-release.sh")
                || l.starts_with("&& scripts/build-release.sh")
        })
        .count();
    assert_eq!(runs, 2, "dependency layer + real build");
    assert!(
        !df.contains("cargo build"),
        "the cargo command lives in the script only"
    );
    assert!(df.contains("COPY Cargo.toml Cargo.lock ./"));
    assert!(df.contains("USER 10001:10001"));
    assert!(df.contains("HEALTHCHECK"));
    assert!(df.contains(r#"CMD ["relay", "health""#));
    assert!(df.contains("EXPOSE 8080"));
    // `docker run -e OPENAI_API_KEY=... relay` injects the key: the image's config names it.
    let copied = df
        .lines()
        .find_map(|l| {
            l.strip_prefix("COPY ")?
                .strip_suffix(" /etc/relay/relay.yaml")
                .map(str::to_string)
        })
        .expect("the Dockerfile copies a config to /etc/relay/relay.yaml");
    let env = Env::empty()
        .with("OPENAI_API_KEY", "sk-image-test")
        .with("ANTHROPIC_API_KEY", "sk-ant-image-test");
    let cfg =
        Config::from_yaml_str(&read(&copied), &copied, &env).expect("the image's config loads");
    for (name, key) in [
        ("openai", "sk-image-test"),
        ("anthropic", "sk-ant-image-test"),
    ] {
        let p = cfg.provider(name).expect(name);
        assert_eq!(p.api_key().map(|k| k.expose()), Some(key), "{name}");
    }
    assert_eq!(cfg.server.listen.to_string(), "0.0.0.0:8080");

    let script = read("scripts/build-release.sh");
    assert!(script.contains("cargo build --release --locked --features redis"));
    let ci = read(".ci/run");
    assert!(
        ci.lines().any(|l| l.trim() == "scripts/build-release.sh"),
        ".ci/run must run the image's build script"
    );
    let ignore = read(".dockerignore");
    for must in ["target/", ".git/"] {
        assert!(ignore.lines().any(|l| l == must), "{must}");
    }
    // The release profile the image relies on.
    let toml = read("Cargo.toml");
    for line in [
        "codegen-units = 1",
        "strip = \"symbols\"",
        "panic = \"unwind\"",
    ] {
        assert!(toml.contains(line), "{line}");
    }
}

fn health(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_relay"))
        .arg("health")
        .args(args)
        .env_remove("RELAY_SERVER_TLS")
        .output()
        .unwrap()
}

#[tokio::test]
async fn relay_health_tells_live_from_dead() {
    let mock = Mock::start("openai", Kind::OpenAi).await;
    let relay = Relay::start(&format!(
        "providers:\n  - name: openai\n    base_url: {}\n",
        mock.base_url()
    ))
    .await;
    let url = relay.url("/healthz");
    let out = tokio::task::spawn_blocking(move || health(&["--url", &url]))
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/healthz", l.local_addr().unwrap())
    };
    let out = tokio::task::spawn_blocking(move || health(&["--url", &dead]))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unhealthy"));
}

#[tokio::test]
async fn relay_health_over_https_trusts_the_local_ca() {
    let mock = Mock::start("openai", Kind::OpenAi).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let yaml = format!(
        "server:\n  tls: auto\n  ca_dir: {}\nproviders:\n  - name: openai\n    base_url: {}\n",
        ca_dir.display(),
        mock.base_url()
    );
    let relay = Relay::start(&yaml).await;
    let config = relay.config_path.display().to_string();
    let url = format!("https://localhost:{}/healthz", relay.addr.port());
    let out = tokio::task::spawn_blocking(move || health(&["--config", &config, "--url", &url]))
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
