//! Redis absent at start, or hung while serving, through real `redis-server` processes: relay
//! serves from its local fallbacks at once and moves back to Redis by itself.
#![cfg(feature = "redis")]

mod common;

use common::mock::{Kind, Mock};
use common::redis::RedisServer;
use common::*;

const CHAT: &str = "/v1/chat/completions";

async fn relay_on(port: u16, openai: &Mock, anthropic: &Mock, extra: &str) -> Relay {
    Relay::start(&format!(
        "{}redis: {{enabled: true, address: '127.0.0.1:{port}'}}\ncache: {{backend: redis}}\n{extra}",
        providers(openai, anthropic)
    ))
    .await
}

async fn health(relay: &Relay) -> serde_json::Value {
    json(
        within(client().request(get(&relay.url("/healthz"))))
            .await
            .unwrap(),
    )
    .await
}

async fn ask(relay: &Relay, n: usize) -> (u16, String) {
    let body = format!(r#"{{"model":"gpt-4o","messages":[{{"role":"user","content":"{n}"}}]}}"#);
    let a = post_json(relay, CHAT, &body, &[("authorization", "Bearer sk-a")]).await;
    (
        a.status.as_u16(),
        a.header("x-relay-cache").unwrap_or_default().to_string(),
    )
}

/// Waits (bounded) until `/healthz` says `field` is `want`, sending a request each round.
async fn until_health(relay: &Relay, field: &str, want: &str) {
    within(async {
        let mut n = 10_000;
        while health(relay).await[field] != want {
            assert_eq!(ask(relay, n).await.0, 200);
            n += 1;
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn the_cache_moves_to_redis_when_it_appears_after_the_start() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let openai = Mock::start("openai", Kind::OpenAi).await;
    let anthropic = Mock::start("anthropic", Kind::Anthropic).await;
    let relay = relay_on(port, &openai, &anthropic, "").await;
    // No Redis yet: the local file serves, and says so.
    assert_eq!(health(&relay).await["cache"], "redb");
    let m = relay.metrics().await;
    assert_eq!(
        metric(&m, "relay_cache_backend", &[("backend", "redb")]),
        Some(1.0)
    );
    assert_eq!(ask(&relay, 1).await, (200, "MISS".into()));
    assert_eq!(ask(&relay, 1).await, (200, "HIT".into()));

    let redis = RedisServer::start_on(port);
    until_health(&relay, "cache", "redis").await;
    let m = relay.metrics().await;
    assert_eq!(
        metric(&m, "relay_cache_backend", &[("backend", "redis")]),
        Some(1.0)
    );
    // Recorded in Redis now, where every relay on it finds it.
    assert_eq!(ask(&relay, 2).await, (200, "MISS".into()));
    assert_eq!(ask(&relay, 2).await, (200, "HIT".into()));
    // The HIT may come from the write queue: a stats read (/metrics) flushes it to Redis first.
    relay.metrics().await;
    let stored: u64 = redis.cli(&["DBSIZE"]).parse().unwrap();
    assert!(stored > 0, "entries in Redis");
}

#[tokio::test]
async fn a_hung_redis_costs_one_request_then_relay_goes_local_and_comes_back() {
    let redis = RedisServer::start();
    let openai = Mock::start("openai", Kind::OpenAi).await;
    let anthropic = Mock::start("anthropic", Kind::Anthropic).await;
    let relay = relay_on(
        redis.port(),
        &openai,
        &anthropic,
        "ratelimit: {backend: redis, requests_per_second: 10000, burst: 10000}\n",
    )
    .await;
    for n in 0..3 {
        assert_eq!(ask(&relay, n).await.0, 200);
    }
    let h = health(&relay).await;
    assert_eq!(
        (h["cache"].as_str(), h["ratelimit"].as_str()),
        (Some("redis"), Some("redis"))
    );
    let processed = || -> u64 {
        redis
            .cli(&["INFO", "stats"])
            .lines()
            .find_map(|l| l.strip_prefix("total_commands_processed:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("INFO stats")
    };
    let before = processed();

    redis.pause();
    for n in 100..140 {
        assert_eq!(
            ask(&relay, n).await.0,
            200,
            "no request fails while Redis hangs"
        );
    }
    let h = health(&relay).await;
    assert_eq!(
        (h["cache"].as_str(), h["ratelimit"].as_str()),
        (Some("redb"), Some("local"))
    );
    redis.resume();
    // The probe finds Redis again by itself (no request needed)...
    within(async {
        while health(&relay).await["cache"] != "redis" {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    // ...and what reached Redis while it hung (it runs it once resumed) is the first request's
    // calls and the probes, not calls per request (40 requests make at least 80 commands).
    let during = processed() - before;
    assert!(during < 40, "{during} commands reached the hung Redis");
    until_health(&relay, "ratelimit", "redis").await;
    assert_eq!(ask(&relay, 500).await, (200, "MISS".into()));
    assert_eq!(ask(&relay, 500).await, (200, "HIT".into()));
}
