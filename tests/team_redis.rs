//! The team gateway on a real `redis-server` (cargo feature `redis`): two relays on one Redis
//! know the same relay keys, enforce one budget and report one usage ledger; Redis going away
//! loses no spending (what was booked meanwhile is added when it is back).
#![cfg(feature = "redis")]

mod common;

use std::time::Duration;

use common::redis::RedisServer;
use common::*;
use relay::config::Env;

const CHAT: &str = "/v1/chat/completions";
const BODY: &str = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;

async fn relay_on(port: u16, openai: &Mock, anthropic: &Mock) -> Relay {
    let yaml = format!(
        "auth: {{enabled: true}}\nredis: {{enabled: true, address: '127.0.0.1:{port}'}}\n{}models:\n  gpt-4o: {{input: 1000, output: 1000}}\n",
        providers(openai, anthropic).replace(
            "    kind: openai\n",
            "    kind: openai\n    api_key_env: OPENAI_KEY\n"
        )
    );
    Relay::start_with(&yaml, Env::empty().with("OPENAI_KEY", "sk-provider"), false).await
}

async fn create(relay: &Relay, spec: &str) -> String {
    let made = send(relay, "POST", "/relay/keys", &[], spec).await;
    assert_eq!(made.status, 201, "{:?}", made.body);
    made.json()["key"].as_str().unwrap().to_string()
}

async fn chat(relay: &Relay, key: &str) -> Answer {
    post_json(
        relay,
        CHAT,
        BODY,
        &[("authorization", &format!("Bearer {key}"))],
    )
    .await
}

/// Retries `check` every 20 ms until it holds (at most 10 s): what another relay wrote reaches
/// this one through Redis within its refresh period.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What Redis itself holds for `key` today: (requests in the usage ledger, micro-USD spent).
fn on_redis(port: u16, key: &str) -> (u64, u64) {
    let client = ::redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    let Ok(mut c) = client.get_connection() else {
        return (0, 0);
    };
    let today = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let day = &today[..10];
    let rows: std::collections::HashMap<String, u64> = ::redis::cmd("HGETALL")
        .arg(format!("relay:usage:v1:{day}"))
        .query(&mut c)
        .unwrap_or_default();
    // Field: day, provider, model, key, session (\x1f), then \x1e and the count's index (0:
    // requests).
    let requests = rows
        .iter()
        .filter(|(f, _)| f.split('\u{1f}').nth(3) == Some(key) && f.ends_with("\u{1e}0"))
        .map(|(_, v)| v)
        .sum();
    let spent: Option<u64> = ::redis::cmd("GET")
        .arg(format!("relay:spend:v1:d:{day}:{key}"))
        .query(&mut c)
        .unwrap_or_default();
    (requests, spent.unwrap_or(0))
}

/// Requests in `relay usage --by key --json`-shaped report rows for `key`, as `relay` answers.
async fn requests_of(relay: &Relay, key: &str) -> u64 {
    let r = send(relay, "GET", "/relay/usage?by=key", &[], "")
        .await
        .json();
    r["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| row["group"] == key)
        .map(|row| row["requests"].as_u64().unwrap())
        .sum()
}

#[tokio::test]
async fn two_relays_share_keys_one_budget_and_one_ledger() {
    let redis = RedisServer::start();
    let openai = Mock::start("openai", Kind::OpenAi).await;
    let anthropic = Mock::start("anthropic", Kind::Anthropic).await;
    let a = relay_on(redis.port(), &openai, &anthropic).await;
    let b = relay_on(redis.port(), &openai, &anthropic).await;

    // Made on A, known to B (its ring refreshes when the shared version changes).
    let key = create(&a, r#"{"name":"team"}"#).await;
    assert_eq!(chat(&a, &key).await.status, 200);
    eventually("B knows the key made on A", || async {
        chat(&b, &key).await.status == 200
    })
    .await;
    // Revoked on B, refused by A.
    let revoked = send(&b, "POST", "/relay/keys/team/revoke", &[], "").await;
    assert_eq!(revoked.status, 200);
    eventually("A refuses the key revoked on B", || async {
        chat(&a, &key).await.status == 401
    })
    .await;

    // One budget: $0.011 a request, $0.01 a day. Spent on A, refused on B.
    let small = create(&a, r#"{"name":"small","daily_budget":0.01}"#).await;
    eventually("B knows small", || async {
        send(&b, "GET", "/relay/keys", &[], "")
            .await
            .json()
            .to_string()
            .contains("\"small\"")
    })
    .await;
    assert_eq!(chat(&a, &small).await.status, 200);
    eventually("A sends small's spend to Redis", || async {
        on_redis(redis.port(), "small").1 == 11_000
    })
    .await;
    let r = chat(&b, &small).await;
    assert_eq!(r.status, 429, "B let small past its budget: {:?}", r.body);
    assert_eq!(r.json()["error"]["code"], "budget_exceeded");

    // One ledger: requests through either relay show in both relays' reports.
    eventually("both relays report the other's requests", || async {
        let (on_a, on_b) = (requests_of(&a, "team").await, requests_of(&b, "team").await);
        on_a == on_b && on_a >= 2
    })
    .await;
    let team = requests_of(&a, "team").await;
    // Accepted: 1 on A, at least 1 on B; refused: at least 1 on A after the revoke.
    assert!(team >= 3, "{team}");
}

#[tokio::test]
async fn spending_booked_while_redis_is_down_is_added_when_it_is_back() {
    let mut redis = RedisServer::start();
    let port = redis.port();
    let openai = Mock::start("openai", Kind::OpenAi).await;
    let anthropic = Mock::start("anthropic", Kind::Anthropic).await;
    let a = relay_on(port, &openai, &anthropic).await;
    let key = create(&a, r#"{"name":"ops"}"#).await;
    assert_eq!(chat(&a, &key).await.status, 200);
    eventually("the first request is on Redis", || async {
        on_redis(port, "ops").0 == 1
    })
    .await;

    redis.kill();
    // Keys still known (the ring and its mirror), requests still served and counted here.
    for _ in 0..3 {
        assert_eq!(chat(&a, &key).await.status, 200);
    }
    let report = send(&a, "GET", "/relay/usage?by=key", &[], "").await.json();
    eventually("the report says Redis is away", || async {
        send(&a, "GET", "/relay/usage?by=key", &[], "")
            .await
            .json()
            .to_string()
            .contains("unreachable")
    })
    .await;
    drop(report);

    let _back = RedisServer::start_on(port);
    // A fresh Redis (it kept nothing): what was pending here arrives; nothing booked while it
    // was away is lost. The keys this relay knew are restored to it.
    eventually(
        "the 3 requests made while Redis was down reach it",
        || async {
            let n = on_redis(port, "ops").0;
            assert!(n <= 3, "counted twice: {n}");
            n == 3
        },
    )
    .await;
    assert_eq!(
        requests_of(&a, "ops").await,
        3,
        "the report reads Redis again"
    );
    assert_eq!(
        chat(&a, &key).await.status,
        200,
        "the key survives Redis' restart"
    );
}
