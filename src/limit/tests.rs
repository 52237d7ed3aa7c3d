//! The limiter on tokio's paused clock: every test steps time itself.

use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use tokio::time::{advance, Instant};

use super::*;
use crate::config::{Config, Env};

fn limiter(yaml: &str, previous: Option<&Limiter>) -> Limiter {
    let cfg = Config::from_yaml_str(yaml, "t.yaml", &Env::empty()).unwrap();
    Limiter::new(&cfg, previous)
}

fn headers(key: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    if !key.is_empty() {
        h.insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {key}")).unwrap(),
        );
    }
    h
}

async fn admit(
    l: &Limiter,
    m: &Metrics,
    key: &str,
    model: Option<&str>,
    body: &[u8],
) -> Result<Admitted, EdgeError> {
    // The caller as the pipeline works it out from the key headers.
    let presented = crate::wire::headers::presented_key(&headers(key));
    let caller = crate::caller::Identity::of(None, presented.as_deref(), "openai", &[]).digest();
    l.admit(
        &Request {
            caller,
            model,
            body: Some(body),
            max_tokens: crate::wire::BodyPeek::of(body)
                .ok()
                .and_then(|p| p.max_tokens),
            own: None,
        },
        m,
    )
    .await
}

fn retry_after(e: EdgeError) -> (Duration, bool) {
    match e {
        EdgeError::RateLimited {
            retry_after,
            tokens,
            ..
        } => (retry_after, tokens),
        other => panic!("expected a rate limit, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn burst_then_reject_then_refill() {
    let m = Metrics::new();
    let l = limiter("ratelimit: {requests_per_second: 1, burst: 2}", None);
    let a = admit(&l, &m, "", None, b"").await.unwrap();
    assert_eq!(
        a.headers,
        Some(RateHeaders {
            limit: 2,
            remaining: 1,
            reset: Duration::from_secs(1)
        })
    );
    let a = admit(&l, &m, "", None, b"").await.unwrap();
    assert_eq!(a.headers.unwrap().remaining, 0);
    let e = admit(&l, &m, "", None, b"").await.unwrap_err();
    assert_eq!(retry_after(e), (Duration::from_secs(1), false));
    advance(Duration::from_millis(400)).await;
    let e = admit(&l, &m, "", None, b"").await.unwrap_err();
    assert_eq!(retry_after(e).0, Duration::from_millis(600));
    advance(Duration::from_millis(600)).await;
    assert!(admit(&l, &m, "", None, b"").await.is_ok());
    assert!(m
        .render()
        .contains(r#"relay_ratelimit_rejections_total{rule="default",scope="global"} 2"#));
}

#[tokio::test(start_paused = true)]
async fn original_relay_rate_of_one_request_per_five_seconds() {
    let m = Metrics::new();
    let l = limiter("ratelimit: {requests_per_second: 0.2}", None);
    assert!(admit(&l, &m, "", None, b"").await.is_ok());
    let e = admit(&l, &m, "", None, b"").await.unwrap_err();
    assert_eq!(retry_after(e).0, Duration::from_secs(5));
    advance(Duration::from_secs(5)).await;
    assert!(admit(&l, &m, "", None, b"").await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn keys_and_models_have_their_own_buckets() {
    let m = Metrics::new();
    let l = limiter(
        "ratelimit:\n  rules:\n    - {scope: key, requests_per_second: 1, burst: 1}\n    - {scope: model, model: 'gpt-*', requests_per_second: 1, burst: 2}\n",
        None,
    );
    assert!(admit(&l, &m, "sk-a", Some("gpt-4o"), b"").await.is_ok());
    assert!(admit(&l, &m, "sk-a", Some("gpt-4o"), b"").await.is_err());
    assert!(admit(&l, &m, "sk-b", Some("gpt-4o"), b"").await.is_ok());
    // gpt-4o's bucket (burst 2) is now empty; another model's is not.
    let e = admit(&l, &m, "sk-c", Some("gpt-4o"), b"")
        .await
        .unwrap_err();
    assert!(matches!(e, EdgeError::RateLimited { ref rule, .. } if rule == "model:gpt-*"));
    // The key rule booked nothing for sk-c: the refusal gave its slot back.
    assert!(admit(&l, &m, "sk-c", Some("gpt-4.1"), b"").await.is_ok());
    // Models outside the glob are not limited by the model rule.
    assert!(admit(&l, &m, "sk-d", Some("claude-x"), b"").await.is_ok());
    let text = m.render();
    assert!(text.contains(r#"relay_ratelimit_rejections_total{rule="key",scope="key"} 1"#));
}

#[tokio::test(start_paused = true)]
async fn key_plus_model_scope() {
    let m = Metrics::new();
    let l = limiter(
        "ratelimit: {rules: [{scope: key+model, requests_per_second: 1, burst: 1}]}",
        None,
    );
    assert!(admit(&l, &m, "sk-a", Some("m1"), b"").await.is_ok());
    assert!(admit(&l, &m, "sk-a", Some("m2"), b"").await.is_ok());
    assert!(admit(&l, &m, "sk-b", Some("m1"), b"").await.is_ok());
    assert!(admit(&l, &m, "sk-a", Some("m1"), b"").await.is_err());
    // No model: per-model rules do not apply.
    assert!(admit(&l, &m, "sk-a", None, b"").await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn tokens_per_minute_are_reserved_and_settled() {
    let m = Metrics::new();
    let l = limiter(
        "ratelimit: {rules: [{name: tpm, scope: key, tokens_per_minute: 1000}]}",
        None,
    );
    let body = br#"{"model":"m","max_tokens":590,"messages":[]}"#; // 44 bytes = 11 tokens
    assert_eq!(estimate_tokens(body), 601);
    let first = admit(&l, &m, "sk-a", None, body).await.unwrap();
    assert!(first.headers.is_none(), "no request limit applies");
    let reserved = first.tokens.expect("a reservation");
    assert_eq!(reserved.estimate(), 601);
    // The reservation holds: a concurrent second request does not fit.
    let e = admit(&l, &m, "sk-a", None, body).await.unwrap_err();
    let (retry, tokens) = retry_after(e);
    assert!(tokens);
    assert_eq!(retry, Duration::from_millis(202 * 60));
    // Another key has its own budget.
    assert!(admit(&l, &m, "sk-b", None, body).await.is_ok());
    // The first used 50 tokens: the rest comes back at once.
    reserved.settle(50);
    assert!(admit(&l, &m, "sk-a", None, body).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn wait_mode_queues_in_order_up_to_max_wait() {
    let m = std::sync::Arc::new(Metrics::new());
    let l = std::sync::Arc::new(limiter(
        "ratelimit: {requests_per_second: 2, burst: 1, on_limit: wait, max_wait: 1s}",
        None,
    ));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let (l, m) = (l.clone(), m.clone());
        tasks.push(tokio::spawn(async move {
            let r = admit(&l, &m, "", None, b"").await;
            (r.is_ok(), start.elapsed())
        }));
        tokio::task::yield_now().await;
    }
    // The fourth would wait 1.5 s: refused at once.
    let e = admit(&l, &m, "", None, b"").await.unwrap_err();
    assert_eq!(retry_after(e).0, Duration::from_millis(1500));
    let mut got = Vec::new();
    for t in tasks {
        got.push(t.await.unwrap());
    }
    assert_eq!(
        got,
        [
            (true, Duration::ZERO),
            (true, Duration::from_millis(500)),
            (true, Duration::from_secs(1))
        ]
    );
    let text = m.render();
    assert!(
        text.contains("relay_ratelimit_wait_seconds_count 2"),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_waiter_that_leaves_gives_its_slot_back() {
    let m = Metrics::new();
    let l = limiter(
        "ratelimit: {requests_per_second: 1, burst: 1, on_limit: wait, max_wait: 5s}",
        None,
    );
    assert!(admit(&l, &m, "", None, b"").await.is_ok());
    // Waits 1 s; given up after 100 ms.
    let gave_up =
        tokio::time::timeout(Duration::from_millis(100), admit(&l, &m, "", None, b"")).await;
    assert!(gave_up.is_err());
    let start = Instant::now();
    assert!(admit(&l, &m, "", None, b"").await.is_ok());
    assert_eq!(start.elapsed(), Duration::from_millis(900));
}

#[tokio::test(start_paused = true)]
async fn reload_keeps_buckets_and_applies_new_rates_at_once() {
    let m = Metrics::new();
    let yaml = |burst: u32| {
        format!(
            "ratelimit:\n  rules:\n    - {{name: a, scope: key, requests_per_second: 1, burst: 1}}\n    - {{name: b, scope: global, requests_per_second: 1, burst: {burst}}}\n"
        )
    };
    let l1 = limiter(&yaml(1), None);
    assert!(admit(&l1, &m, "sk-a", None, b"").await.is_ok());
    // Rule b gets a larger burst; rule a's bucket for sk-a stays empty.
    let l2 = limiter(&yaml(3), Some(&l1));
    assert!(admit(&l2, &m, "sk-a", None, b"").await.is_err());
    assert!(admit(&l2, &m, "sk-b", None, b"").await.is_ok());
    assert!(admit(&l2, &m, "sk-c", None, b"").await.is_ok());
    let e = admit(&l2, &m, "sk-d", None, b"").await.unwrap_err();
    assert!(matches!(e, EdgeError::RateLimited { ref rule, .. } if rule == "b"));
    // Limits off: everything passes.
    let l3 = limiter("", Some(&l2));
    assert!(!l3.is_active());
    assert!(admit(&l3, &m, "sk-a", None, b"").await.is_ok());
}

#[test]
fn reset_format() {
    assert_eq!(format_reset(Duration::from_millis(250)), "250ms");
    assert_eq!(format_reset(Duration::from_secs(1)), "1s");
    assert_eq!(format_reset(Duration::from_millis(1500)), "1.5s");
    assert_eq!(format_reset(Duration::from_secs(360)), "6m0s");
    assert_eq!(format_reset(Duration::from_secs(3723)), "1h2m3s");
}

#[test]
fn token_estimate() {
    assert_eq!(estimate_tokens(b""), 0);
    assert_eq!(estimate_tokens(b"12345"), 2);
    assert_eq!(
        estimate_tokens(br#"{"max_completion_tokens":10,"max_tokens":99}"#),
        11 + 10
    );
    assert_eq!(estimate_tokens(b"not json at all!"), 4);
}

#[tokio::test(start_paused = true)]
async fn full_buckets_are_swept_when_a_shard_grows() {
    let b = Buckets::default();
    let p = Params::per_second(1.0, 1);
    let id = |n: u32| {
        let mut id = [0u8; 32];
        id[1..5].copy_from_slice(&n.to_le_bytes());
        id
    };
    let now = b.now();
    for n in 0..SWEEP_AT as u32 {
        b.with_cell(&id(n), now, |c| c.book(now, 1, p, 0)).unwrap();
    }
    let len = || b.shards.iter().next().unwrap().map.read().unwrap().len();
    assert_eq!(len(), SWEEP_AT);
    // Still within a second: every bucket holds a booking, nothing can go.
    b.with_cell(&id(u32::MAX), now, |_| ());
    assert_eq!(len(), SWEEP_AT + 1);
    // Later every bucket is full again (equal to a new one) and the next insert sweeps them.
    advance(Duration::from_secs(2)).await;
    let later = b.now();
    b.with_cell(&id(u32::MAX - 1), later, |_| ());
    assert_eq!(len(), 1);
    // A swept bucket comes back full.
    assert!(b
        .with_cell(&id(0), later, |c| c.book(later, 1, p, 0))
        .is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_flood_of_new_keys_keeps_each_shard_under_its_cap() {
    let b = Buckets::default();
    // A slow rate: no bucket is full (idle) again during the flood, so sweeping frees nothing.
    let p = Params::per_second(0.01, 1);
    let now = b.now();
    for n in 0..(SHARD_CAP as u32 * 3) {
        let mut id = [0u8; 32];
        id[1..5].copy_from_slice(&n.to_le_bytes());
        b.with_cell(&id, now, |c| c.book(now, 1, p, 0)).unwrap();
    }
    let len = b.shards.iter().next().unwrap().map.read().unwrap().len();
    assert!(len <= SHARD_CAP, "{len} buckets in one shard");
    assert!(b.len() <= SHARDS * SHARD_CAP);
}

/// A relay key's own limits apply with no configured rule, to that key's bucket alone.
#[tokio::test(start_paused = true)]
async fn a_relay_keys_own_limits_need_no_rule() {
    let cfg = crate::config::Config::defaults(&crate::config::Env::empty());
    let l = Limiter::new(&cfg, None);
    assert!(!l.is_active());
    let m = Metrics::new();
    let own = KeyLimits {
        name: "ci".into(),
        rps: None,
        tpm: Some(100),
    };
    let body = br#"{"model":"gpt-4o","max_tokens":60}"#;
    let ask = |caller: u8| Request {
        caller: [caller; 32],
        model: Some("gpt-4o"),
        body: Some(body),
        max_tokens: Some(60),
        own: Some(&own),
    };
    let first = l.admit(&ask(1), &m).await.unwrap();
    assert!(
        first.tokens.is_some(),
        "tokens reserved against the key's tpm"
    );
    match l.admit(&ask(1), &m).await {
        Err(EdgeError::RateLimited { rule, tokens, .. }) => {
            assert_eq!(rule, "key:ci");
            assert!(tokens);
        }
        other => panic!("{other:?}"),
    }
    // Another key of the same limits has a bucket of its own.
    l.admit(&ask(2), &m).await.unwrap();
}
