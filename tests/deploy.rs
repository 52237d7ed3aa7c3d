//! The deployment files, checked where no Docker engine or cluster runs: docker-compose.yml and
//! deploy/kubernetes/*.yaml parse as YAML (every document) and hold the keys that make them work;
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

/// The config a deployment file ships: it loads, and (with the redis feature) uses the redis backend
/// as intended.
fn loads(yaml: &str, what: &str) -> Config {
    Config::from_yaml_str(yaml, what, &Env::empty())
        .unwrap_or_else(|e| panic!("{what} does not load: {e}"))
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

#[test]
fn kubernetes_manifests_have_probes_service_config_and_optional_redis() {
    let kustomization = &docs("deploy/kubernetes/kustomization.yaml")[0];
    let resources: Vec<&str> = at(kustomization, "resources")
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        resources,
        ["configmap.yaml", "deployment.yaml", "service.yaml"]
    );
    for r in &resources {
        assert_eq!(docs(&format!("deploy/kubernetes/{r}")).len(), 1, "{r}");
    }

    let dep = &docs("deploy/kubernetes/deployment.yaml")[0];
    assert_eq!(s(dep, "kind"), "Deployment");
    assert_eq!(s(dep, "apiVersion"), "apps/v1");
    let labels = at(dep, "spec.selector.matchLabels");
    assert_eq!(labels, at(dep, "spec.template.metadata.labels"));
    let pod = at(dep, "spec.template.spec");
    assert_eq!(
        at(pod, "securityContext.runAsNonRoot").as_bool(),
        Some(true)
    );
    let c = at(pod, "containers.0");
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(
            s(c, &format!("{probe}.httpGet.path")),
            "/healthz",
            "{probe}"
        );
        assert_eq!(s(c, &format!("{probe}.httpGet.port")), "http", "{probe}");
    }
    assert_eq!(s(c, "ports.0.name"), "http");
    assert_eq!(at(c, "ports.0.containerPort").as_u64(), Some(8080));
    assert_eq!(
        at(c, "securityContext.readOnlyRootFilesystem").as_bool(),
        Some(true)
    );
    assert_eq!(s(c, "volumeMounts.0.mountPath"), "/etc/relay");
    assert_eq!(s(c, "volumeMounts.1.mountPath"), "/data");
    let args: Vec<&str> = at(c, "args")
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(&args[..3], ["serve", "--config", "/etc/relay/relay.yaml"]);
    assert_eq!(s(pod, "volumes.0.configMap.name"), "relay-config");

    let svc = &docs("deploy/kubernetes/service.yaml")[0];
    assert_eq!(s(svc, "kind"), "Service");
    assert_eq!(at(svc, "spec.selector"), labels);
    assert_eq!(s(svc, "spec.ports.0.targetPort"), "http");

    // The ConfigMap's relay.yaml is a valid config listening on all interfaces, cache under /data.
    let cm = &docs("deploy/kubernetes/configmap.yaml")[0];
    assert_eq!(s(cm, "metadata.name"), "relay-config");
    let text = at(cm, "data").get("relay.yaml").unwrap().as_str().unwrap();
    let cfg = loads(text, "configmap");
    assert_eq!(cfg.server.listen.to_string(), "0.0.0.0:8080");
    // Reachable in the cluster: it asks for relay keys, so its provider keys are safe.
    let keyed = Config::from_yaml_str(
        text,
        "configmap",
        &Env::empty().with("OPENAI_API_KEY", "sk"),
    )
    .unwrap();
    assert!(keyed.auth.enabled);
    keyed.exposure(keyed.server.listen).expect("the pod starts");
    assert_eq!(
        cfg.cache.path.as_deref(),
        Some(Path::new("/data/relay/cache.redb"))
    );

    // Optional Redis: a Deployment and the Service the relay Deployment's address names.
    let redis = docs("deploy/kubernetes/redis.yaml");
    let kinds: Vec<&str> = redis.iter().map(|d| s(d, "kind")).collect();
    assert_eq!(kinds, ["Deployment", "Service"]);
    assert_eq!(s(&redis[1], "metadata.name"), "relay-redis");
    let env = at(c, "env").as_sequence().unwrap();
    let addr = env
        .iter()
        .find(|e| s(e, "name") == "RELAY_REDIS_ADDRESS")
        .unwrap();
    assert_eq!(s(addr, "value"), "relay-redis:6379");
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
