//! Shared rate limits through a real `redis-server` (cargo feature `redis`): several relays, one
//! limit; Redis going away mid-load fails no request.
#![cfg(feature = "redis")]

mod common;

use std::sync::Arc;

use common::mock::{Kind, Mock};
use common::redis::RedisServer;
use common::*;
use http::Request;

const CHAT: &str = "/v1/chat/completions";

async fn relay_on(redis_port: u16, openai: &Mock, anthropic: &Mock, ratelimit: &str) -> Relay {
    Relay::start(&format!(
        "{}redis: {{enabled: true, address: '127.0.0.1:{redis_port}'}}\nratelimit: {ratelimit}\n",
        providers(openai, anthropic)
    ))
    .await
}

async fn status(relay: &Relay, key: &str, n: usize) -> u16 {
    let body = format!(r#"{{"model":"gpt-4o","messages":[{{"role":"user","content":"{n}"}}]}}"#);
    let req = Request::post(relay.url(CHAT))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {key}"))
        .body(full(body))
        .unwrap();
    let resp = within(client().request(req)).await.unwrap();
    let s = resp.status().as_u16();
    bytes(resp).await;
    s
}

#[tokio::test]
async fn two_relays_enforce_one_shared_limit() {
    let redis = RedisServer::start();
    let openai = Mock::start("openai", Kind::OpenAi).await;
    let anthropic = Mock::start("anthropic", Kind::Anthropic).await;
    let limits = "{backend: redis, rules: [{scope: key, requests_per_second: 0.05, burst: 3}]}";
    let one = relay_on(redis.port(), &openai, &anthropic, limits).await;
    let two = relay_on(redis.port(), &openai, &anthropic, limits).await;

    assert_eq!(status(&one, "sk-a", 1).await, 200);
    assert_eq!(status(&two, "sk-a", 2).await, 200);
    assert_eq!(status(&one, "sk-a", 3).await, 200);
    // Three in total across both relays: the fourth is refused wherever it arrives.
    assert_eq!(status(&two, "sk-a", 4).await, 429);
    assert_eq!(status(&one, "sk-a", 5).await, 429);
    // Another key is another bucket, shared too.
    assert_eq!(status(&two, "sk-b", 6).await, 200);
    assert_eq!(openai.calls().get(), 4);

    let m = one.metrics().await;
    assert_eq!(
        metric(&m, "relay_ratelimit_backend", &[("backend", "redis")]),
        Some(1.0)
    );
    // The bucket is keyed by the hashed key: the raw key is nowhere in Redis.
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port().to_string(), "--scan"])
        .output();
    if let Ok(out) = out {
        let keys = String::from_utf8_lossy(&out.stdout);
        assert!(keys.contains("relay:rl:v1:"), "{keys}");
        assert!(!keys.contains("sk-a"), "{keys}");
    }
}

#[tokio::test]
async fn redis_killed_mid_load_fails_no_request_and_comes_back() {
    let mut redis = RedisServer::start();
    let port = redis.port();
    let openai = Mock::start("openai", Kind::OpenAi).await;
    let anthropic = Mock::start("anthropic", Kind::Anthropic).await;
    // A limit far above the offered load: every request must pass, whichever backend counts it.
    let relay = Arc::new(
        relay_on(
            port,
            &openai,
            &anthropic,
            "{backend: redis, requests_per_second: 10000, burst: 10000}",
        )
        .await,
    );
    for n in 0..5 {
        assert_eq!(status(&relay, "sk-a", n).await, 200);
    }
    let load = |from: usize| {
        let relay = relay.clone();
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            for n in from..from + 20 {
                statuses.push(status(&relay, "sk-a", n).await);
            }
            statuses
        })
    };
    let during = [load(100), load(200), load(300)];
    redis.kill();
    let after = [load(400), load(500)];
    for t in during.into_iter().chain(after) {
        let statuses = t.await.unwrap();
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    }
    let m = relay.metrics().await;
    assert_eq!(
        metric(&m, "relay_ratelimit_backend", &[("backend", "local")]),
        Some(1.0)
    );

    // Redis back on the same port: relay returns to it by itself.
    let _redis = RedisServer::start_on(port);
    within(async {
        let mut n = 1000;
        loop {
            assert_eq!(status(&relay, "sk-a", n).await, 200);
            n += 1;
            let m = relay.metrics().await;
            if metric(&m, "relay_ratelimit_backend", &[("backend", "redis")]) == Some(1.0) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn shared_wait_mode_queues_across_relays() {
    let redis = RedisServer::start();
    let openai = Mock::start("openai", Kind::OpenAi).await;
    let anthropic = Mock::start("anthropic", Kind::Anthropic).await;
    let limits =
        "{backend: redis, requests_per_second: 20, burst: 1, on_limit: wait, max_wait: 5s}";
    let one = Arc::new(relay_on(redis.port(), &openai, &anthropic, limits).await);
    let two = Arc::new(relay_on(redis.port(), &openai, &anthropic, limits).await);
    let tasks: Vec<_> = (0..4)
        .map(|n| {
            let relay = if n % 2 == 0 { one.clone() } else { two.clone() };
            tokio::spawn(async move { status(&relay, "sk-a", n).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    // One slot at a time across both relays: three of the four queued.
    let waited: f64 = [&one, &two]
        .iter()
        .map(|r| async move {
            metric(
                &r.metrics().await,
                "relay_ratelimit_wait_seconds_count",
                &[],
            )
            .unwrap()
        })
        .collect::<futures_util::future::JoinAll<_>>()
        .await
        .into_iter()
        .sum();
    assert_eq!(waited, 3.0);
}

/// The original relay's meaning of `redis.enabled: true`: with no `backend:` keys, the rate
/// limits and the cache are both shared through Redis.
#[tokio::test]
async fn redis_enabled_alone_shares_limits_and_the_cache() {
    let redis = RedisServer::start();
    let openai = Mock::start("openai", Kind::OpenAi).await;
    let anthropic = Mock::start("anthropic", Kind::Anthropic).await;
    // No backend keys: only `redis.enabled` (the harness needs `cache:` to turn the cache on).
    let limits =
        "{rules: [{scope: key, requests_per_second: 0.05, burst: 2}]}\ncache: {enabled: true}";
    let one = relay_on(redis.port(), &openai, &anthropic, limits).await;
    let two = relay_on(redis.port(), &openai, &anthropic, limits).await;
    assert_eq!(status(&one, "sk-a", 1).await, 200);
    assert_eq!(status(&two, "sk-a", 2).await, 200);
    // Two in total across both relays.
    assert_eq!(status(&one, "sk-a", 3).await, 429);
    let m = two.metrics().await;
    assert_eq!(
        metric(&m, "relay_ratelimit_backend", &[("backend", "redis")]),
        Some(1.0)
    );
    // What one relay recorded, the other answers (the same caller key: the cache's default
    // scope is per key; another key so the limit above does not refuse it).
    let ask = |relay: &Relay| {
        let req = Request::post(relay.url(CHAT))
            .header("content-type", "application/json")
            .header("authorization", "Bearer sk-c")
            .body(full(
                r#"{"model":"gpt-4o","messages":[{"role":"user","content":"shared"}]}"#,
            ))
            .unwrap();
        client().request(req)
    };
    let first = within(ask(&one)).await.unwrap();
    assert_eq!(first.headers()["x-relay-cache"], "MISS");
    bytes(first).await;
    one.metrics().await; // commits one's queued write to Redis
    let calls = openai.calls().get();
    let second = within(ask(&two)).await.unwrap();
    assert_eq!(second.headers()["x-relay-cache"], "HIT");
    bytes(second).await;
    assert_eq!(openai.calls().get(), calls);
}
