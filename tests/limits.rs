//! Rate limits and circuit breakers end to end: relay on 127.0.0.1 port 0 in front of the mock
//! upstream. (The bucket and circuit state machines are stepped on tokio's paused clock in their own
//! unit tests; here the rates are slow enough that the test's own pace never refills a bucket.)

mod common;

use std::time::Duration;

use common::mock::{Kind, Mock};
use common::*;
use http::{Request, StatusCode};
use relay::config::Env;
use relay::server::ReloadEvent;

const CHAT: &str = "/v1/chat/completions";
const MESSAGES: &str = "/v1/messages";

fn chat_body(model: &str, n: usize) -> String {
    format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi {n}"}}]}}"#)
}

async fn chat(relay: &Relay, n: usize, headers: &[(&str, &str)]) -> Answer {
    post_json(relay, CHAT, &chat_body("gpt-4o", n), headers).await
}

// ---------------------------------------------------------------- rate limits

#[tokio::test]
async fn burst_then_429_with_retry_after_and_headers() {
    // One request per 10 s, two at once: the test's own pace never refills a slot.
    let (openai, _anthropic, relay) =
        setup("ratelimit: {requests_per_second: 0.1, burst: 2}\n").await;
    let first = chat(&relay, 1, &[]).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("x-ratelimit-limit-requests"), Some("2"));
    assert_eq!(first.header("x-ratelimit-remaining-requests"), Some("1"));
    let second = chat(&relay, 2, &[]).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.header("x-ratelimit-remaining-requests"), Some("0"));
    assert!(second
        .header("x-ratelimit-reset-requests")
        .unwrap()
        .ends_with('s'));

    let third = chat(&relay, 3, &[]).await;
    assert_eq!(third.status, StatusCode::TOO_MANY_REQUESTS);
    // About 10 s to the next slot, rounded up to whole seconds.
    assert_eq!(third.header("retry-after"), Some("10"));
    assert_eq!(third.header("x-relay-error"), Some("rate_limit_exceeded"));
    assert_eq!(third.header("x-ratelimit-limit-requests"), Some("2"));
    assert_eq!(third.header("x-ratelimit-remaining-requests"), Some("0"));
    let v = third.json();
    assert_eq!(v["error"]["type"], "requests");
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    assert_eq!(
        openai.calls().get(),
        2,
        "the refused request never went upstream"
    );

    // The Anthropic shape for Anthropic callers.
    let refused = post_json(
        &relay,
        MESSAGES,
        r#"{"model":"claude-sonnet-4-5","max_tokens":5,"messages":[]}"#,
        &[("anthropic-version", "2023-06-01")],
    )
    .await;
    assert_eq!(refused.status, 429);
    let v = refused.json();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "rate_limit_error");

    let m = relay.metrics().await;
    assert_eq!(
        metric(
            &m,
            "relay_ratelimit_rejections_total",
            &[("scope", "global"), ("rule", "default")]
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(&m, "relay_ratelimit_backend", &[("backend", "local")]),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            "relay_requests_total",
            &[
                ("provider", "openai"),
                ("model", "gpt-4o"),
                ("status", "429")
            ]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn each_api_key_has_its_own_bucket() {
    let (openai, _anthropic, relay) =
        setup("ratelimit:\n  rules:\n    - {scope: key, requests_per_second: 0.1, burst: 1}\n")
            .await;
    let a = [("authorization", "Bearer sk-a")];
    let b = [("x-api-key", "sk-b")];
    assert_eq!(chat(&relay, 1, &a).await.status, 200);
    assert_eq!(chat(&relay, 2, &a).await.status, 429);
    assert_eq!(chat(&relay, 3, &b).await.status, 200);
    assert_eq!(chat(&relay, 4, &b).await.status, 429);
    // No key at all is one more caller.
    assert_eq!(chat(&relay, 5, &[]).await.status, 200);
    assert_eq!(openai.calls().get(), 3);
    // The raw keys are never in the metrics (labels are rule names).
    let m = relay.metrics().await;
    assert!(!m.contains("sk-a") && !m.contains("sk-b"));
    assert_eq!(
        metric(
            &m,
            "relay_ratelimit_rejections_total",
            &[("scope", "key"), ("rule", "key")]
        ),
        Some(2.0)
    );
}

fn tpm_body(max_tokens: u32, n: usize) -> String {
    format!(
        r#"{{"model":"gpt-4o","max_tokens":{max_tokens},"messages":[{{"role":"user","content":"hi {n}"}}]}}"#
    )
}

/// Waits until the server has settled `n` requests (priced and booked; bounded, not a sleep).
async fn settled(relay: &Relay, n: u64) {
    let cost = relay.server().cost();
    let ok = tokio::time::timeout(Duration::from_secs(10), cost.wait_settled(n))
        .await
        .is_ok();
    assert!(ok, "timed out waiting for {n} settled requests");
}

#[tokio::test]
async fn tokens_per_minute_rule() {
    // Cost tracking off: nothing meters the usage, so each request keeps its estimate
    // (prompt bytes / 4 + max_tokens).
    let (openai, _anthropic, relay) = setup(
        "cost: {enabled: false}\nratelimit:\n  rules:\n    - {name: tpm, scope: model, tokens_per_minute: 1000}\n",
    )
    .await;
    assert_eq!(
        post_json(&relay, CHAT, &tpm_body(800, 1), &[]).await.status,
        200
    );
    let refused = post_json(&relay, CHAT, &tpm_body(800, 2), &[]).await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.json()["error"]["type"], "tokens");
    assert!(refused.header("x-ratelimit-limit-requests").is_none());
    // Another model has its own budget.
    let other = r#"{"model":"gpt-4.1","max_tokens":800,"messages":[]}"#;
    assert_eq!(post_json(&relay, CHAT, other, &[]).await.status, 200);
    assert_eq!(openai.calls().get(), 2);
}

#[tokio::test]
async fn token_reservations_settle_with_the_metered_usage() {
    // The mock reports 11 tokens per call: once a call is metered, the rest of its 800-token
    // reservation goes back to the bucket.
    let (openai, _anthropic, relay) =
        setup("ratelimit:\n  rules:\n    - {name: tpm, scope: model, tokens_per_minute: 1000}\n")
            .await;
    assert_eq!(
        post_json(&relay, CHAT, &tpm_body(800, 1), &[]).await.status,
        200
    );
    settled(&relay, 1).await;
    assert_eq!(
        post_json(&relay, CHAT, &tpm_body(800, 2), &[]).await.status,
        200
    );
    settled(&relay, 2).await;
    // 22 tokens used: a request estimated at 990 + its prompt does not fit.
    assert_eq!(
        post_json(&relay, CHAT, &tpm_body(990, 3), &[]).await.status,
        429
    );
    assert_eq!(openai.calls().get(), 2);
}

#[tokio::test]
async fn cache_hits_are_not_limited() {
    let openai = Mock::start("openai", Kind::OpenAi).await;
    let anthropic = Mock::start("anthropic", Kind::Anthropic).await;
    let relay = Relay::start(&format!(
        "{}cache:\n  enabled: true\nratelimit: {{requests_per_second: 0.1, burst: 1}}\n",
        providers(&openai, &anthropic)
    ))
    .await;
    let first = chat(&relay, 1, &[]).await;
    assert_eq!(
        (first.status.as_u16(), first.header("x-relay-cache")),
        (200, Some("MISS"))
    );
    for _ in 0..3 {
        let hit = chat(&relay, 1, &[]).await;
        assert_eq!(
            (hit.status.as_u16(), hit.header("x-relay-cache")),
            (200, Some("HIT"))
        );
    }
    assert_eq!(chat(&relay, 2, &[]).await.status, 429, "a miss is limited");
    assert_eq!(openai.calls().get(), 1);
}

#[tokio::test]
async fn wait_mode_queues_requests_instead_of_refusing() {
    // 20 per second, one at a time, wait up to 5 s: 4 concurrent requests all pass, 3 of them
    // after queueing for their slot.
    let (openai, _anthropic, relay) =
        setup("ratelimit: {requests_per_second: 20, burst: 1, on_limit: wait, max_wait: 5s}\n")
            .await;
    let relay = std::sync::Arc::new(relay);
    let tasks: Vec<_> = (0..4)
        .map(|n| {
            let relay = relay.clone();
            tokio::spawn(async move { chat(&relay, n, &[]).await.status })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(openai.calls().get(), 4);
    let m = relay.metrics().await;
    assert_eq!(
        metric(&m, "relay_ratelimit_wait_seconds_count", &[]),
        Some(3.0)
    );
}

#[tokio::test]
async fn wait_mode_still_refuses_beyond_max_wait() {
    let (_openai, _anthropic, relay) =
        setup("ratelimit: {requests_per_second: 0.1, burst: 1, on_limit: wait, max_wait: 1s}\n")
            .await;
    assert_eq!(chat(&relay, 1, &[]).await.status, 200);
    let refused = chat(&relay, 2, &[]).await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header("retry-after"), Some("10"));
}

#[tokio::test]
async fn hot_reloaded_limits_apply_at_once() {
    let openai = Mock::start("openai", Kind::OpenAi).await;
    let anthropic = Mock::start("anthropic", Kind::Anthropic).await;
    let base = providers(&openai, &anthropic);
    let yaml = |burst: u32| {
        format!(
            "{base}ratelimit:\n  rules:\n    - {{name: per-key, scope: key, requests_per_second: 0.01, burst: {burst}}}\n"
        )
    };
    let relay = Relay::start_with(&yaml(1), Env::empty(), true).await;
    let mut events = relay.server().reloads();
    let a = [("authorization", "Bearer sk-a")];
    assert_eq!(chat(&relay, 1, &a).await.status, 200);
    assert_eq!(chat(&relay, 2, &a).await.status, 429);

    relay.write_config(&yaml(3));
    assert_eq!(next_reload(&mut events).await, ReloadEvent::Applied);
    // The bucket kept its one request: two more fit under the new burst, then 429.
    let ok = chat(&relay, 3, &a).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("x-ratelimit-limit-requests"), Some("3"));
    assert_eq!(ok.header("x-ratelimit-remaining-requests"), Some("1"));
    assert_eq!(chat(&relay, 4, &a).await.status, 200);
    assert_eq!(chat(&relay, 5, &a).await.status, 429);

    // Limits removed: everything passes.
    relay.write_config(&base);
    assert_eq!(next_reload(&mut events).await, ReloadEvent::Applied);
    let free = chat(&relay, 6, &a).await;
    assert_eq!(free.status, 200);
    assert!(free.header("x-ratelimit-limit-requests").is_none());
}

// ---------------------------------------------------------------- circuit breaker

/// Two mocks; `openai` has a breaker (`breaker` is its YAML flow mapping) and no retries, so
/// each request is one try the breaker judges.
async fn breaker_setup(breaker: &str, extra: &str) -> (Mock, Mock, Relay) {
    let openai = Mock::start("openai", Kind::OpenAi).await;
    let backup = Mock::start("backup", Kind::OpenAi).await;
    let relay = Relay::start(&format!(
        "providers:\n  - name: openai\n    base_url: {}\n    breaker: {breaker}\n    retry: {{attempts: 1}}\n  - name: backup\n    base_url: {}\n{extra}",
        openai.base_url(),
        backup.base_url()
    ))
    .await;
    (openai, backup, relay)
}

const FAIL: [(&str, &str); 1] = [("x-mock-status", "500")];

#[tokio::test]
async fn breaker_opens_after_failures_and_rejects_fast() {
    let (openai, _backup, relay) =
        breaker_setup("{consecutive_failures: 3, cooldown: 1h}", "").await;
    assert_eq!(chat(&relay, 0, &FAIL).await.status, 500);
    let m = relay.metrics().await;
    assert_eq!(
        metric_sum(&m, "relay_circuit_state", &[("provider", "openai")]),
        Some(0.0),
        "exported from the first request"
    );
    for n in 1..3 {
        assert_eq!(chat(&relay, n, &FAIL).await.status, 500);
    }
    let refused = chat(&relay, 9, &[]).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.header("x-relay-error"), Some("circuit_open"));
    assert_eq!(refused.header("retry-after"), Some("3600"));
    assert_eq!(refused.json()["error"]["type"], "server_error");
    assert_eq!(openai.calls().get(), 3, "no upstream call while open");

    let m = relay.metrics().await;
    assert_eq!(
        metric_sum(&m, "relay_circuit_state", &[("provider", "openai")]),
        Some(2.0)
    );
    assert_eq!(
        metric_sum(
            &m,
            "relay_circuit_transitions_total",
            &[("provider", "openai"), ("to", "open")]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_success_between_failures_keeps_the_circuit_closed() {
    let (openai, _backup, relay) =
        breaker_setup("{consecutive_failures: 3, cooldown: 1h}", "").await;
    let seq = [("x-mock-sequence", "500,500,200")];
    let got: Vec<u16> = {
        let mut v = Vec::new();
        for n in 0..9 {
            v.push(chat(&relay, n, &seq).await.status.as_u16());
        }
        v
    };
    assert_eq!(got, [500, 500, 200, 500, 500, 200, 500, 500, 200]);
    assert_eq!(
        openai.calls().get(),
        9,
        "never opened: no run of 3 failures"
    );
    // Three in a row do open it.
    let seq = [("x-mock-sequence", "503,503,503")];
    for n in 0..3 {
        assert_eq!(chat(&relay, n, &seq).await.status, 503);
    }
    let refused = chat(&relay, 10, &[]).await;
    assert_eq!(refused.header("x-relay-error"), Some("circuit_open"));
    assert_eq!(openai.calls().get(), 12);
}

#[tokio::test]
async fn half_open_probe_closes_the_circuit() {
    let (openai, _backup, relay) =
        breaker_setup("{consecutive_failures: 2, cooldown: 200ms}", "").await;
    for n in 0..2 {
        assert_eq!(chat(&relay, n, &FAIL).await.status, 500);
    }
    assert_eq!(chat(&relay, 2, &[]).await.status, 503);
    // Ask until the cooldown is over (each refusal is immediate and never reaches the upstream).
    let probe = within(async {
        loop {
            let a = chat(&relay, 3, &[]).await;
            if a.status != StatusCode::SERVICE_UNAVAILABLE {
                return a;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(probe.status, 200);
    assert_eq!(openai.calls().get(), 3);
    // Closed again: requests flow.
    assert_eq!(chat(&relay, 4, &[]).await.status, 200);
    let m = relay.metrics().await;
    for (to, n) in [("open", 1.0), ("half_open", 1.0), ("closed", 1.0)] {
        assert_eq!(
            metric_sum(
                &m,
                "relay_circuit_transitions_total",
                &[("provider", "openai"), ("to", to)]
            ),
            Some(n),
            "{to}"
        );
    }
    assert_eq!(
        metric_sum(&m, "relay_circuit_state", &[("provider", "openai")]),
        Some(0.0)
    );
}

#[tokio::test]
async fn a_stream_cut_by_the_idle_timeout_is_a_failure() {
    let openai = Mock::start("openai", Kind::OpenAi).await;
    let relay = Relay::start(&format!(
        "providers:\n  - name: openai\n    base_url: {}\n    timeouts: {{idle: 200ms}}\n    breaker: {{consecutive_failures: 2, cooldown: 1h}}\n    retry: {{attempts: 1}}\n",
        openai.base_url()
    ))
    .await;
    let stream = r#"{"model":"gpt-4o","stream":true,"messages":[]}"#;
    // A complete stream is a success; a stalled one, cut after 200 ms of silence, a failure.
    for mode in ["", "stall-body", "stall-body"] {
        let mut req = Request::post(relay.url(CHAT)).header("content-type", "application/json");
        if !mode.is_empty() {
            req = req.header("x-mock", mode);
        }
        let resp = within(client().request(req.body(full(stream)).unwrap()))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let _ = within(http_body_util::BodyExt::collect(resp.into_body())).await;
    }
    // The verdict lands when relay drops the stream: wait for it (bounded), then the circuit is open.
    let endpoint = openai
        .base_url()
        .trim_start_matches("http://")
        .trim_end_matches("/v1")
        .to_string();
    let state = || {
        relay
            .server()
            .metrics()
            .circuit_state
            .with_label_values(&["openai", &endpoint])
            .get()
    };
    within(async {
        while state() != 2 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(chat(&relay, 1, &[]).await.status, 503);
    assert_eq!(openai.calls().get(), 3);
}

#[tokio::test]
async fn fallback_route_takes_requests_while_open() {
    let (openai, backup, relay) = breaker_setup(
        "{consecutive_failures: 2, cooldown: 1h}",
        "routes:\n  - {provider: openai, fallback: backup}\n",
    )
    .await;
    for n in 0..2 {
        assert_eq!(chat(&relay, n, &FAIL).await.status, 500);
    }
    let a = chat(&relay, 3, &[]).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("x-mock-name"), Some("backup"));
    assert_eq!(openai.calls().get(), 2);
    assert_eq!(backup.calls().get(), 1);
    // The request reached the fallback as sent.
    assert_eq!(backup.last().uri, "/v1/chat/completions");
    assert_eq!(backup.last().body, chat_body("gpt-4o", 3));
    let m = relay.metrics().await;
    assert_eq!(
        metric(
            &m,
            "relay_requests_total",
            &[
                ("provider", "backup"),
                ("model", "gpt-4o"),
                ("status", "200")
            ]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn fallback_on_connection_refused() {
    // `openai` points at a port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}/v1", closed.local_addr().unwrap());
    drop(closed);
    let backup = Mock::start("backup", Kind::OpenAi).await;
    let relay = Relay::start(&format!(
        "providers:\n  - {{name: openai, base_url: '{dead}', retry: {{attempts: 1}}}}\n  - {{name: backup, base_url: '{}'}}\nroutes:\n  - {{provider: openai, fallback: backup}}\n",
        backup.base_url()
    ))
    .await;
    let a = chat(&relay, 1, &[("authorization", "Bearer sk-for-openai")]).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("x-mock-name"), Some("backup"));
    // The caller's key was for openai: the fallback never sees it.
    assert!(backup.last().headers.get("authorization").is_none());
    // Without a fallback (explicit provider path) the error is relay's 502.
    let direct = post_json(
        &relay,
        "/openai/v1/chat/completions",
        &chat_body("gpt-4o", 2),
        &[],
    )
    .await;
    assert_eq!(direct.status, 502);
}

#[tokio::test]
async fn cache_hits_are_served_while_the_circuit_is_open() {
    let (openai, _backup, relay) = breaker_setup(
        "{consecutive_failures: 2, cooldown: 1h}",
        "cache:\n  enabled: true\n",
    )
    .await;
    assert_eq!(chat(&relay, 1, &[]).await.status, 200);
    for n in 2..4 {
        assert_eq!(chat(&relay, n, &FAIL).await.status, 500);
    }
    assert_eq!(chat(&relay, 9, &[]).await.status, 503);
    let hit = chat(&relay, 1, &[]).await;
    assert_eq!(hit.status, 200);
    assert_eq!(hit.header("x-relay-cache"), Some("HIT"));
    assert_eq!(openai.calls().get(), 3);
}
