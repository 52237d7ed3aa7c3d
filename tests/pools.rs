//! Endpoint and key pools on real sockets: weights, a killed endpoint under load, a key that
//! always gets 429, least-latency, the active health check and the original relay's
//! `loadbalancer:` section.

mod common;

use common::mock::{Kind, Mock};
use common::*;
use http::StatusCode;
use relay::config::Env;

const CHAT: &str = "/v1/chat/completions";

fn chat(n: usize) -> String {
    format!(r#"{{"model":"gpt-4o","messages":[{{"role":"user","content":"hi {n}"}}]}}"#)
}

/// Chat requests (POSTs) a mock received: health checks (GETs) left out.
fn posts(m: &Mock) -> usize {
    m.requests()
        .iter()
        .filter(|r| r.method == http::Method::POST)
        .count()
}

/// `n` chat requests, `parallel` at a time; every status.
async fn load(relay: &Relay, n: usize, parallel: usize, headers: &[(&str, &str)]) -> Vec<u16> {
    let mut statuses = Vec::with_capacity(n);
    for batch in (0..n).collect::<Vec<_>>().chunks(parallel) {
        let bodies: Vec<String> = batch.iter().map(|&i| chat(i)).collect();
        let calls = bodies.iter().map(|b| post_json(relay, CHAT, b, headers));
        for a in futures_util::future::join_all(calls).await {
            statuses.push(a.status.as_u16());
        }
    }
    statuses
}

fn pool_yaml(mocks: &[(&Mock, u32)], extra: &str) -> String {
    let list: Vec<String> = mocks
        .iter()
        .map(|(m, w)| format!("{{url: '{}', weight: {w}}}", m.base_url()))
        .collect();
    format!(
        "providers:\n  - name: openai\n    kind: openai\n    endpoints: [{}]\n{extra}",
        list.join(", ")
    )
}

fn endpoint(m: &Mock) -> String {
    m.addr().to_string()
}

#[tokio::test]
async fn weights_spread_requests_within_a_few_percent() {
    let a = Mock::start("a", Kind::OpenAi).await;
    let b = Mock::start("b", Kind::OpenAi).await;
    let relay = Relay::start(&pool_yaml(&[(&a, 3), (&b, 1)], "    strategy: weighted\n")).await;
    let statuses = load(&relay, 400, 8, &[]).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let (na, nb) = (posts(&a), posts(&b));
    assert_eq!(na + nb, 400);
    assert!(
        (288..=312).contains(&na),
        "3:1 over 400: a got {na}, b {nb}"
    );
    let m = relay.metrics().await;
    let sent = |e: &Mock| {
        metric(
            &m,
            "relay_endpoint_requests_total",
            &[("provider", "openai"), ("endpoint", &endpoint(e))],
        )
    };
    assert_eq!(sent(&a), Some(na as f64));
    assert_eq!(sent(&b), Some(nb as f64));

    // Random, by the same weights: within a few percent too (the bounds are 5 sigma wide).
    let c = Mock::start("c", Kind::OpenAi).await;
    let d = Mock::start("d", Kind::OpenAi).await;
    let relay = Relay::start(&pool_yaml(&[(&c, 1), (&d, 1)], "    strategy: random\n")).await;
    load(&relay, 400, 8, &[]).await;
    let nc = posts(&c);
    assert!((150..=250).contains(&nc), "1:1 at random over 400: {nc}");
    assert_eq!(nc + posts(&d), 400);
}

#[tokio::test]
async fn a_killed_endpoint_under_load_costs_no_request() {
    let a = Mock::start("a", Kind::OpenAi).await;
    let b = Mock::start("b", Kind::OpenAi).await;
    let relay = Relay::start(&pool_yaml(
        &[(&a, 1), (&b, 1)],
        "    strategy: round-robin\n    breaker: {consecutive_failures: 2, cooldown: 1h}\n",
    ))
    .await;
    let first = load(&relay, 40, 8, &[]).await;
    assert!(first.iter().all(|s| *s == 200));
    let before_b = b.calls().get();
    assert_eq!(before_b, 20, "round-robin: half of 40");
    // Requests in flight while b dies: b holds them (a slow answer) until it is killed.
    b.set_delay(std::time::Duration::from_secs(60));
    let held = tokio::spawn({
        let url = relay.url(CHAT);
        async move {
            let calls = (0..8).map(|i| {
                let req = http::Request::post(&url)
                    .header("content-type", "application/json")
                    .body(full(chat(1000 + i)))
                    .unwrap();
                client().request(req)
            });
            futures_util::future::join_all(calls).await
        }
    });
    // Wait (bounded) until b holds some of them, then kill it.
    b.calls().wait_for(before_b + 1, "b holds a request").await;
    b.kill();
    for r in within(held).await.unwrap() {
        let r = r.expect("an answer");
        assert_eq!(r.status(), 200, "a request b held went to a");
    }
    let after = load(&relay, 120, 8, &[]).await;
    assert!(after.iter().all(|s| *s == 200), "{after:?}");
    let m = relay.metrics().await;
    assert_eq!(
        metric_sum(
            &m,
            "relay_circuit_state",
            &[("provider", "openai"), ("endpoint", &endpoint(&b))]
        ),
        Some(2.0),
        "b's own circuit opened"
    );
    assert_eq!(
        metric_sum(
            &m,
            "relay_circuit_state",
            &[("provider", "openai"), ("endpoint", &endpoint(&a))]
        ),
        Some(0.0)
    );
    let moved = metric_sum(&m, "relay_retries_total", &[("action", "endpoint")]).unwrap();
    assert!(moved >= 1.0, "{m}");
}

#[tokio::test]
async fn a_key_that_always_gets_429_rests_while_the_other_serves() {
    let a = Mock::start("openai", Kind::OpenAi).await;
    let env = Env::empty()
        .with("KEY_A", "sk-pool-a")
        .with("KEY_B", "sk-pool-b");
    let relay = Relay::start_with(
        &format!(
            "providers:\n  - name: openai\n    base_url: {}\n    api_key_env: [KEY_A, KEY_B]\nkeys: {{team-b: KEY_B}}\n",
            a.base_url()
        ),
        env,
        false,
    )
    .await;
    let over = [
        ("x-mock-status-if-key", "sk-pool-a=429"),
        ("x-mock-retry-after", "60"),
    ];
    let statuses = load(&relay, 30, 3, &over).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let keys: Vec<String> = a
        .requests()
        .iter()
        .map(|r| r.headers["authorization"].to_str().unwrap().to_string())
        .collect();
    let on_a = keys.iter().filter(|k| k.ends_with("sk-pool-a")).count();
    assert!(
        (1..=3).contains(&on_a),
        "key a is asked until its first 429 (3 in flight at once), then rests: {on_a}"
    );
    assert_eq!(keys.len(), 30 + on_a);
    let m = relay.metrics().await;
    let a_label = format!("key-{}", &blake3::hash(b"sk-pool-a").to_hex()[..12]);
    let labels = [("provider", "openai"), ("key", a_label.as_str())];
    assert_eq!(metric(&m, "relay_key_resting", &labels), Some(1.0), "{m}");
    assert_eq!(
        metric(&m, "relay_key_rests_total", &labels),
        Some(on_a as f64)
    );
    assert_eq!(
        metric(
            &m,
            "relay_key_rests_total",
            &[("provider", "openai"), ("key", "team-b")]
        ),
        None,
        "b never rested"
    );
    assert!(!m.contains("sk-pool"), "no key in the metrics");

    // With one key there is no pool: the caller gets the provider's 429 as it is.
    let solo = Relay::start_with(
        &format!(
            "providers:\n  - name: openai\n    base_url: {}\n    api_key_env: KEY_A\n    retry: {{attempts: 1}}\n",
            a.base_url()
        ),
        Env::empty().with("KEY_A", "sk-pool-a"),
        false,
    )
    .await;
    let statuses = load(&solo, 2, 1, &over).await;
    assert_eq!(statuses, [429, 429]);
}

#[tokio::test]
async fn least_latency_prefers_the_fast_endpoint() {
    let fast = Mock::start("fast", Kind::OpenAi).await;
    let slow = Mock::start("slow", Kind::OpenAi).await;
    slow.set_delay(std::time::Duration::from_millis(60));
    let relay = Relay::start(&pool_yaml(
        &[(&fast, 1), (&slow, 1)],
        "    strategy: least-latency\n",
    ))
    .await;
    let statuses = load(&relay, 60, 1, &[]).await;
    assert!(statuses.iter().all(|s| *s == 200));
    let (f, s) = (posts(&fast), posts(&slow));
    assert_eq!(f + s, 60);
    assert!(
        s <= 6,
        "the slow endpoint is measured, then left alone: {s} of 60"
    );
    let m = relay.metrics().await;
    let ewma = metric(
        &m,
        "relay_endpoint_latency_seconds",
        &[("provider", "openai"), ("endpoint", &endpoint(&slow))],
    )
    .unwrap();
    assert!(ewma >= 0.06, "{ewma}");
}

#[tokio::test]
async fn an_endpoint_failing_its_health_check_gets_no_requests() {
    let a = Mock::start("a", Kind::OpenAi).await;
    let b = Mock::start("b", Kind::OpenAi).await;
    b.set_status(503);
    let relay = Relay::start(&pool_yaml(
        &[(&a, 1), (&b, 1)],
        "    strategy: round-robin\n    breaker: {enabled: false}\n    retry: {attempts: 1}\n    health_check: {interval: 50ms, timeout: 1s}\n",
    ))
    .await;
    let healthy = |want: f64| {
        let relay = &relay;
        let b = &b;
        async move {
            loop {
                let m = relay.metrics().await;
                let got = metric(
                    &m,
                    "relay_endpoint_healthy",
                    &[("provider", "openai"), ("endpoint", &endpoint(b))],
                );
                if got == Some(want) {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    };
    within(healthy(0.0)).await;
    let checks = b.requests();
    assert!(
        checks.iter().all(|r| r.uri == "/v1/models"),
        "GET /v1/models"
    );
    let statuses = load(&relay, 20, 2, &[]).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(posts(&b), 0, "no request for the unhealthy endpoint");
    assert_eq!(posts(&a), 20);
    // Back: requests reach it again.
    b.set_status(0);
    within(healthy(1.0)).await;
    load(&relay, 10, 1, &[]).await;
    assert_eq!(posts(&b), 5);
}

#[tokio::test]
async fn the_original_relays_loadbalancer_spreads_over_its_targets() {
    let a = Mock::start("a", Kind::OpenAi).await;
    let b = Mock::start("b", Kind::OpenAi).await;
    let origin = |m: &Mock| format!("http://{}", m.addr());
    let relay = Relay::start(&format!(
        "proxy:\n  target: {}\nloadbalancer:\n  enabled: true\n  strategy: weighted\n  targets:\n    - {{url: '{}', weight: 1}}\n    - {{url: '{}', weight: 1}}\n",
        origin(&a),
        origin(&a),
        origin(&b)
    ))
    .await;
    let cfg = relay.server().config().config.clone();
    assert!(
        !cfg.warnings.iter().any(|w| w.contains("loadbalancer")),
        "{:?}",
        cfg.warnings
    );
    let statuses = load(&relay, 200, 4, &[]).await;
    assert!(statuses.iter().all(|s| *s == StatusCode::OK.as_u16()));
    assert_eq!((posts(&a), posts(&b)), (100, 100));
}

#[tokio::test]
async fn relay_health_verbose_shows_endpoints_circuits_and_keys() {
    let a = Mock::start("a", Kind::OpenAi).await;
    let b = Mock::start("b", Kind::OpenAi).await;
    let env = Env::empty()
        .with("KEY_A", "sk-verbose-a")
        .with("KEY_B", "sk-verbose-b");
    let relay = Relay::start_with(
        &format!(
            "{}    api_key_env: [KEY_A, KEY_B]\n    health_check: {{interval: 1h}}\nkeys: {{team-a: KEY_A}}\n",
            pool_yaml(&[(&a, 2), (&b, 1)], "")
        ),
        env,
        false,
    )
    .await;
    let over = [
        ("x-mock-status-if-key", "sk-verbose-a=429"),
        ("x-mock-retry-after", "60"),
    ];
    load(&relay, 3, 1, &over).await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_relay"))
        .args(["health", "--verbose", "--url", &relay.url("/healthz")])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("openai (openai, weighted, health check every 1h, GET <url>/models)"),
        "{text}"
    );
    for m in [&a, &b] {
        let row = text
            .lines()
            .find(|l| l.trim_start().starts_with(&endpoint(m)))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(
            row.contains(&m.base_url()) && row.contains("closed") && row.contains(" ok "),
            "{row}"
        );
        assert!(row.contains(" ms"), "latency measured: {row}");
    }
    assert!(text.contains("team-a resting"), "{text}");
    let b_label = format!("key-{}", &blake3::hash(b"sk-verbose-b").to_hex()[..12]);
    assert!(text.contains(&format!("{b_label} serving")), "{text}");
    assert!(!text.contains("sk-verbose"), "never a key: {text}");
}
