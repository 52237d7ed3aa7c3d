//! The response cache end to end: relay on 127.0.0.1 port 0 with a real redb file in a temp dir, in
//! front of the mock upstream.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::mock::{self, Kind, Mock};
use common::*;
use http::{Request, StatusCode};
use relay::clock::ManualClock;
use relay::config::Env;

const CHAT: &str = "/v1/chat/completions";

fn chat_body(model: &str, stream: bool) -> String {
    format!(
        r#"{{"model":"{model}","stream":{stream},"messages":[{{"role":"user","content":"hi"}}]}}"#
    )
}

fn header<'a>(resp: &'a http::Response<hyper::body::Incoming>, name: &str) -> Option<&'a str> {
    resp.headers().get(name).map(|v| v.to_str().unwrap())
}

async fn cached_setup(cache_yaml: &str) -> (Mock, Mock, Relay) {
    let openai = Mock::start("openai", Kind::OpenAi).await;
    let anthropic = Mock::start("anthropic", Kind::Anthropic).await;
    let relay = Relay::start(&format!(
        "{}cache:\n  enabled: true\n{cache_yaml}",
        providers(&openai, &anthropic)
    ))
    .await;
    (openai, anthropic, relay)
}

/// POST `body` to `path` with extra headers; returns status, cache header and body.
async fn call(
    relay: &Relay,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, Option<String>, Bytes) {
    let a = post_json(relay, path, body, headers).await;
    let cache = a.header("x-relay-cache").map(str::to_string);
    (a.status, cache, a.body)
}

#[tokio::test]
async fn second_identical_call_is_a_hit() {
    let (openai, _anthropic, relay) = cached_setup("").await;
    let body = chat_body("gpt-4o-mini", false);
    let first = within(client().request(json_req(&relay.url(CHAT), body.clone())))
        .await
        .unwrap();
    assert_eq!(header(&first, "x-relay-cache"), Some("MISS"));
    let key = header(&first, "x-relay-cache-key").unwrap().to_string();
    assert_eq!(key.len(), 12);
    let first_body = bytes(first).await;

    let second = within(client().request(json_req(&relay.url(CHAT), body)))
        .await
        .unwrap();
    assert_eq!(second.status(), 200);
    assert_eq!(header(&second, "x-relay-cache"), Some("HIT"));
    assert_eq!(header(&second, "x-cache"), Some("HIT"));
    assert_eq!(header(&second, "x-relay-cache-key"), Some(key.as_str()));
    assert_eq!(header(&second, "age"), Some("0"));
    assert_eq!(header(&second, "content-type"), Some("application/json"));
    assert_eq!(
        header(&second, "x-mock-name"),
        Some("openai"),
        "upstream headers replayed"
    );
    assert_eq!(bytes(second).await, first_body);
    assert_eq!(openai.calls().get(), 1, "one upstream call");
    // Recorded answers are asked for uncompressed, whatever the caller accepts.
    assert_eq!(openai.last().headers["accept-encoding"], "identity");

    let m = relay.metrics().await;
    assert!(
        m.contains("relay_cache_hits_total{model=\"gpt-4o-mini\",provider=\"openai\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("relay_cache_misses_total{model=\"gpt-4o-mini\",provider=\"openai\"} 1"),
        "{m}"
    );
    assert!(m.contains("relay_cache_entries 1"), "{m}");
}

#[tokio::test]
async fn key_ignores_json_layout_and_ignored_fields() {
    let (openai, _anthropic, relay) = cached_setup("").await;
    let a = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"user":"alice"}"#;
    let b = "{ \"messages\": [ {\"content\":\"hi\", \"role\":\"user\"} ],\n \"user\": \"bob\", \"model\": \"gpt-4o\" }";
    let c = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"bye"}]}"#;
    assert_eq!(call(&relay, CHAT, a, &[]).await.1.as_deref(), Some("MISS"));
    assert_eq!(call(&relay, CHAT, b, &[]).await.1.as_deref(), Some("HIT"));
    assert_eq!(call(&relay, CHAT, c, &[]).await.1.as_deref(), Some("MISS"));
    // Namespaces keep entries apart.
    assert_eq!(
        call(&relay, CHAT, a, &[("x-relay-cache-namespace", "suite-2")])
            .await
            .1
            .as_deref(),
        Some("MISS")
    );
    assert_eq!(openai.calls().get(), 3);
    assert!(
        !openai
            .last()
            .headers
            .contains_key("x-relay-cache-namespace"),
        "control headers stay at relay"
    );
}

async fn sse_replay_is_byte_identical(path: &str, model: &str, kind: Kind) {
    let (openai, anthropic, relay) = cached_setup("").await;
    let (mock, events) = match kind {
        Kind::OpenAi => (&openai, mock::openai_sse(model)),
        Kind::Anthropic => (&anthropic, mock::anthropic_sse(model)),
    };
    let body = chat_body(model, true);
    let (s, c, first) = call(&relay, path, &body, &[]).await;
    assert_eq!((s.as_u16(), c.as_deref()), (200, Some("MISS")));
    assert_eq!(first, events.concat().as_bytes());
    let resp = within(client().request(json_req(&relay.url(path), body.clone())))
        .await
        .unwrap();
    assert_eq!(header(&resp, "x-relay-cache"), Some("HIT"));
    assert_eq!(header(&resp, "content-type"), Some("text/event-stream"));
    assert_eq!(bytes(resp).await, events.concat().as_bytes());
    assert_eq!(mock.calls().get(), 1);
}

#[tokio::test]
async fn openai_sse_replay_is_byte_identical() {
    sse_replay_is_byte_identical(CHAT, "gpt-4o-mini", Kind::OpenAi).await;
}

#[tokio::test]
async fn anthropic_sse_replay_is_byte_identical() {
    sse_replay_is_byte_identical("/v1/messages", "claude-sonnet-4-5", Kind::Anthropic).await;
}

#[tokio::test]
async fn original_timing_replays_the_same_bytes() {
    let (openai, _anthropic, relay) = cached_setup("  replay_timing: original\n").await;
    let body = chat_body("gpt-4o", true);
    call(&relay, CHAT, &body, &[("x-mock-interval-ms", "5")]).await;
    let (s, c, replay) = call(&relay, CHAT, &body, &[]).await;
    assert_eq!((s.as_u16(), c.as_deref()), (200, Some("HIT")));
    assert_eq!(replay, mock::openai_sse("gpt-4o").concat().as_bytes());
    assert_eq!(openai.calls().get(), 1);
}

#[tokio::test]
async fn disconnect_mid_stream_stores_nothing() {
    let (openai, _anthropic, relay) = cached_setup("").await;
    let body = chat_body("gpt-4o-mini", true);
    let req = Request::post(relay.url(CHAT))
        .header("content-type", "application/json")
        .header("x-mock", "hold")
        .body(full(body.clone()))
        .unwrap();
    let resp = within(client().request(req)).await.unwrap();
    let mut stream = resp.into_body();
    next_chunk(&mut stream).await.expect("first event");
    drop(stream);
    openai
        .cancelled()
        .wait_for(1, "cancelled upstream responses")
        .await;
    openai.release();
    let (_, c, full_body) = call(&relay, CHAT, &body, &[]).await;
    assert_eq!(c.as_deref(), Some("MISS"), "no partial entry was stored");
    assert_eq!(
        full_body,
        mock::openai_sse("gpt-4o-mini").concat().as_bytes()
    );
    assert_eq!(openai.calls().get(), 2);
}

#[tokio::test]
async fn only_complete_2xx_answers_are_stored() {
    let (openai, _anthropic, relay) = cached_setup("").await;
    let body = chat_body("gpt-4o", false);
    // (Retry-After past retry.max_delay: passed on, not retried.)
    let failing = [("x-mock-status", "429"), ("x-mock-retry-after", "60")];
    let (s, c, _) = call(&relay, CHAT, &body, &failing).await;
    assert_eq!((s.as_u16(), c.as_deref()), (429, Some("MISS")));
    let (s, c, _) = call(&relay, CHAT, &body, &[]).await;
    assert_eq!((s.as_u16(), c.as_deref()), (200, Some("MISS")));
    // A stream cut by an idle upstream is not stored either.
    let stalled = chat_body("gpt-4o", true);
    drop(relay);
    let relay = Relay::start(&format!(
        "providers:\n  - name: openai\n    kind: openai\n    base_url: {}\n    timeouts: {{idle: 200ms}}\ncache: {{enabled: true}}\n",
        openai.base_url()
    ))
    .await;
    let resp = within(
        client().request(
            Request::post(relay.url(CHAT))
                .header("content-type", "application/json")
                .header("x-mock", "stall-body")
                .body(full(stalled.clone()))
                .unwrap(),
        ),
    )
    .await
    .unwrap();
    assert!(within(http_body_util::BodyExt::collect(resp.into_body()))
        .await
        .is_err());
    let (_, c, _) = call(&relay, CHAT, &stalled, &[]).await;
    assert_eq!(c.as_deref(), Some("MISS"));
}

#[tokio::test]
async fn api_keys_do_not_share_entries_unless_scope_is_global() {
    let (openai, _anthropic, relay) = cached_setup("").await;
    let body = chat_body("gpt-4o", false);
    let alice = [("authorization", "Bearer sk-alice")];
    let bob = [("authorization", "Bearer sk-bob")];
    assert_eq!(
        call(&relay, CHAT, &body, &alice).await.1.as_deref(),
        Some("MISS")
    );
    assert_eq!(
        call(&relay, CHAT, &body, &alice).await.1.as_deref(),
        Some("HIT")
    );
    assert_eq!(
        call(&relay, CHAT, &body, &bob).await.1.as_deref(),
        Some("MISS")
    );
    assert_eq!(openai.calls().get(), 2);

    let (openai, _anthropic, relay) = cached_setup("  scope: global\n").await;
    assert_eq!(
        call(&relay, CHAT, &body, &alice).await.1.as_deref(),
        Some("MISS")
    );
    assert_eq!(
        call(&relay, CHAT, &body, &bob).await.1.as_deref(),
        Some("HIT")
    );
    assert_eq!(openai.calls().get(), 1);
    // The key itself is nowhere in the store file.
    let file = std::fs::read(relay.dir.path().join("cache.redb")).unwrap_or_default();
    assert!(!file.windows(6).any(|w| w == b"sk-bob"));
}

#[tokio::test]
async fn request_controls() {
    let (openai, _anthropic, relay) = cached_setup("").await;
    let body = chat_body("gpt-4o", false);
    // only, before anything is stored: a 400 in the caller's dialect.
    let (s, c, b) = call(&relay, CHAT, &body, &[("x-relay-cache", "only")]).await;
    assert_eq!((s, c), (StatusCode::BAD_REQUEST, None));
    let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v["error"]["type"], "relay_offline_miss");
    assert_eq!(openai.calls().get(), 0);

    // no-store: forwarded, not stored.
    let (_, c, _) = call(&relay, CHAT, &body, &[("cache-control", "no-store")]).await;
    assert_eq!(c.as_deref(), Some("MISS"));
    let (_, c, _) = call(&relay, CHAT, &body, &[]).await;
    assert_eq!(c.as_deref(), Some("MISS"));
    assert_eq!(openai.calls().get(), 2);
    // Now stored: a hit; only is served.
    assert_eq!(
        call(&relay, CHAT, &body, &[]).await.1.as_deref(),
        Some("HIT")
    );
    assert_eq!(
        call(&relay, CHAT, &body, &[("x-relay-cache", "only")])
            .await
            .1
            .as_deref(),
        Some("HIT")
    );
    // no-cache and refresh go upstream and replace the entry.
    assert_eq!(
        call(&relay, CHAT, &body, &[("cache-control", "no-cache")])
            .await
            .1
            .as_deref(),
        Some("REFRESH")
    );
    assert_eq!(
        call(&relay, CHAT, &body, &[("x-relay-cache", "refresh")])
            .await
            .1
            .as_deref(),
        Some("REFRESH")
    );
    // skip bypasses the cache altogether.
    let (_, c, _) = call(&relay, CHAT, &body, &[("x-relay-cache", "skip")]).await;
    assert_eq!(c.as_deref(), Some("BYPASS"));
    assert_eq!(openai.calls().get(), 5);
    assert!(!openai.last().headers.contains_key("x-relay-cache"));
    // A bad control is the caller's error.
    let (s, _, _) = call(&relay, CHAT, &body, &[("x-relay-cache", "sometimes")]).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // Requests that are not cacheable say so.
    let resp = within(client().request(get(&relay.url("/v1/files"))))
        .await
        .unwrap();
    assert_eq!(header(&resp, "x-relay-cache"), None);
}

#[tokio::test]
async fn ttl_expires_entries_on_the_injected_clock() {
    let openai = Mock::start("openai", Kind::OpenAi).await;
    let anthropic = Mock::start("anthropic", Kind::Anthropic).await;
    let clock = ManualClock::new(1_700_000_000_000);
    let relay = Relay::start_opts(
        &format!("{}cache:\n  ttl: 1h\n", providers(&openai, &anthropic)),
        Opts {
            clock: clock.clock(),
            ..Default::default()
        },
    )
    .await;
    let body = chat_body("gpt-4o", false);
    assert_eq!(
        call(&relay, CHAT, &body, &[]).await.1.as_deref(),
        Some("MISS")
    );
    clock.advance(Duration::from_secs(59 * 60));
    let resp = within(client().request(json_req(&relay.url(CHAT), body.clone())))
        .await
        .unwrap();
    assert_eq!(header(&resp, "x-relay-cache"), Some("HIT"));
    assert_eq!(header(&resp, "age"), Some("3540"));
    clock.advance(Duration::from_secs(2 * 60));
    assert_eq!(
        call(&relay, CHAT, &body, &[]).await.1.as_deref(),
        Some("MISS")
    );
    // A per-request TTL.
    let short = chat_body("gpt-4o-mini", false);
    call(&relay, CHAT, &short, &[("x-relay-cache-ttl", "10")]).await;
    clock.advance(Duration::from_secs(11));
    assert_eq!(
        call(&relay, CHAT, &short, &[]).await.1.as_deref(),
        Some("MISS")
    );
    assert_eq!(openai.calls().get(), 4);
}

/// The TTL has one owner, the cache stage: `x-relay-cache-ttl: 0` and `cache.ttl: 0` mean forever,
/// whatever `cache.ttl` the relay started with, live and after a reload.
#[tokio::test]
async fn ttl_zero_is_forever_live_and_after_a_reload() {
    let openai = Mock::start("openai", Kind::OpenAi).await;
    let anthropic = Mock::start("anthropic", Kind::Anthropic).await;
    let clock = ManualClock::new(1_700_000_000_000);
    let base = providers(&openai, &anthropic);
    let relay = Relay::start_opts(
        &format!("{base}cache:\n  ttl: 2s\n"),
        Opts {
            clock: clock.clock(),
            watch: true,
            ..Default::default()
        },
    )
    .await;
    let pinned = chat_body("gpt-4o", false);
    let plain = chat_body("gpt-4o-mini", false);
    let (_, c, _) = call(&relay, CHAT, &pinned, &[("x-relay-cache-ttl", "0")]).await;
    assert_eq!(c.as_deref(), Some("MISS"));
    call(&relay, CHAT, &plain, &[]).await;
    clock.advance(Duration::from_secs(3));
    assert_eq!(
        call(&relay, CHAT, &pinned, &[]).await.1.as_deref(),
        Some("HIT"),
        "x-relay-cache-ttl: 0 outlives cache.ttl: 2s"
    );
    assert_eq!(
        call(&relay, CHAT, &plain, &[]).await.1.as_deref(),
        Some("MISS"),
        "cache.ttl: 2s still applies to the others"
    );
    assert_eq!(openai.calls().get(), 3);

    let mut reloads = relay.server().reloads();
    relay.write_config(&format!("{base}cache:\n  ttl: 0\n"));
    assert_eq!(
        next_reload(&mut reloads).await,
        relay::server::ReloadEvent::Applied
    );
    let after = chat_body("gpt-4.1", false);
    assert_eq!(
        call(&relay, CHAT, &after, &[]).await.1.as_deref(),
        Some("MISS")
    );
    clock.advance(Duration::from_secs(400 * 24 * 3600));
    for body in [&after, &pinned] {
        assert_eq!(
            call(&relay, CHAT, body, &[]).await.1.as_deref(),
            Some("HIT"),
            "cache.ttl: 0 after a reload is forever"
        );
    }
    assert_eq!(openai.calls().get(), 4);
}

#[tokio::test]
async fn oldest_entries_are_evicted_at_the_size_bound() {
    let (openai, _anthropic, relay) = cached_setup("  max_bytes: 4000\n").await;
    let bodies: Vec<String> = (0..8)
        .map(|i| chat_body(&format!("gpt-4o-{i}"), false))
        .collect();
    for b in &bodies {
        assert_eq!(call(&relay, CHAT, b, &[]).await.1.as_deref(), Some("MISS"));
        relay.metrics().await; // commits queued writes (and evicts)
    }
    let m = relay.metrics().await;
    let bytes: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("relay_cache_bytes "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(bytes <= 4000, "{m}");
    assert_eq!(
        call(&relay, CHAT, &bodies[7], &[]).await.1.as_deref(),
        Some("HIT"),
        "newest kept"
    );
    assert_eq!(
        call(&relay, CHAT, &bodies[0], &[]).await.1.as_deref(),
        Some("MISS"),
        "oldest evicted"
    );
    assert_eq!(openai.calls().get(), 9);
}

#[tokio::test]
async fn entries_persist_across_restart_and_replay_offline() {
    let (openai, _anthropic, mut first) = cached_setup("").await;
    let json_body = chat_body("gpt-4o", false);
    let sse_body = chat_body("gpt-4o", true);
    call(&first, CHAT, &json_body, &[]).await;
    call(&first, CHAT, &sse_body, &[]).await;
    // The models list is recorded too (SDK code that lists models works offline).
    let models = within(client().request(get(&first.url("/v1/models"))))
        .await
        .unwrap();
    assert_eq!(header(&models, "x-relay-cache"), Some("MISS"));
    let models = bytes(models).await;
    let server = first.take();
    server.shutdown();
    within(server.wait()).await;
    drop(openai); // no upstream at all from here on

    let path = first.dir.path().join("cache.redb");
    let env = Env::empty().with("RELAY_CACHE_PATH", path.display().to_string());
    let offline = Relay::start_full(
        "providers:\n  - {name: openai, kind: openai, base_url: 'http://127.0.0.1:9/v1'}\n  - {name: anthropic, kind: anthropic, base_url: 'http://127.0.0.1:9/v1'}\ncache: {enabled: true}\n",
        env,
        false,
        true,
    )
    .await;
    let (s, c, b) = call(&offline, CHAT, &json_body, &[]).await;
    assert_eq!((s.as_u16(), c.as_deref()), (200, Some("HIT")));
    assert_eq!(b, mock::openai_json("gpt-4o").as_bytes());
    let (s, c, b) = call(&offline, CHAT, &sse_body, &[]).await;
    assert_eq!((s.as_u16(), c.as_deref()), (200, Some("HIT")));
    assert_eq!(b, mock::openai_sse("gpt-4o").concat().as_bytes());

    // A miss offline is a clear 400 in the caller's dialect, never retried.
    let miss = post_json(&offline, CHAT, &chat_body("gpt-4o-mini", false), &[]).await;
    assert_eq!(miss.status, StatusCode::BAD_REQUEST);
    assert_eq!(miss.header("x-should-retry"), Some("false"));
    let v: serde_json::Value = serde_json::from_slice(&miss.body).unwrap();
    assert_eq!(v["error"]["type"], "relay_offline_miss");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no recording"),
        "{v}"
    );
    let (s, _, b) = call(
        &offline,
        "/v1/messages",
        &chat_body("claude-sonnet-4-5", false),
        &[("anthropic-version", "2023-06-01")],
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "relay_offline_miss");
    let resp = within(client().request(get(&offline.url("/v1/models"))))
        .await
        .unwrap();
    assert_eq!(header(&resp, "x-relay-cache"), Some("HIT"));
    assert_eq!(bytes(resp).await, models);
    let resp = within(client().request(get(&offline.url("/v1/models/gpt-4o"))))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    // Requests relay never records are refused too, not sent.
    let resp = within(client().request(get(&offline.url("/v1/files"))))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn mode_switches_by_hot_reload() {
    let openai = Mock::start("openai", Kind::OpenAi).await;
    let anthropic = Mock::start("anthropic", Kind::Anthropic).await;
    let base = providers(&openai, &anthropic);
    let relay = Relay::start_with(
        &format!("{base}cache: {{mode: live}}\n"),
        Env::empty(),
        true,
    )
    .await;
    let mut reloads = relay.server().reloads();
    let body = chat_body("gpt-4o", false);
    assert_eq!(
        call(&relay, CHAT, &body, &[]).await.1.as_deref(),
        Some("MISS")
    );

    relay.write_config(&format!("{base}cache: {{mode: record}}\n"));
    assert_eq!(
        next_reload(&mut reloads).await,
        relay::server::ReloadEvent::Applied
    );
    assert_eq!(
        call(&relay, CHAT, &body, &[]).await.1.as_deref(),
        Some("REFRESH")
    );
    assert_eq!(openai.calls().get(), 2);

    relay.write_config(&format!("{base}cache: {{mode: offline}}\n"));
    assert_eq!(
        next_reload(&mut reloads).await,
        relay::server::ReloadEvent::Applied
    );
    assert_eq!(
        call(&relay, CHAT, &body, &[]).await.1.as_deref(),
        Some("HIT")
    );
    let (s, _, _) = call(&relay, CHAT, &chat_body("gpt-4o-mini", false), &[]).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(openai.calls().get(), 2);
}

#[tokio::test]
async fn a_corrupt_store_is_moved_aside_and_relay_starts_empty() {
    let openai = Mock::start("openai", Kind::OpenAi).await;
    let anthropic = Mock::start("anthropic", Kind::Anthropic).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.redb");
    std::fs::write(&path, b"this is not a redb file, it is garbage".repeat(100)).unwrap();
    let env = Env::empty().with("RELAY_CACHE_PATH", path.display().to_string());
    let relay = Relay::start_with(
        &format!("{}cache: {{}}\n", providers(&openai, &anthropic)),
        env,
        false,
    )
    .await;
    let body = chat_body("gpt-4o", false);
    assert_eq!(
        call(&relay, CHAT, &body, &[]).await.1.as_deref(),
        Some("MISS")
    );
    assert_eq!(
        call(&relay, CHAT, &body, &[]).await.1.as_deref(),
        Some("HIT")
    );
    // The writer moves the file aside when its batch meets the damage: wait for it (a stats
    // read queues behind the batch).
    relay.metrics().await;
    let aside = files_starting(dir.path(), "cache.redb.corrupt");
    assert_eq!(aside.len(), 1, "{aside:?}");
}

/// A real store, damaged inside: its header is whole (redb opens it) but the pages that index the
/// stored keys are overwritten. relay starts; the first write that meets the damage has the file
/// moved aside and an empty one opened, and recording goes on (no refusal to start, no store that
/// fails every write until a restart). Damage that breaks listing the keys at start is caught
/// there the same way.
#[tokio::test]
async fn a_store_with_damaged_pages_inside_is_moved_aside_and_relay_starts() {
    let openai = Mock::start("openai", Kind::OpenAi).await;
    let anthropic = Mock::start("anthropic", Kind::Anthropic).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.redb");
    let yaml = format!("{}cache: {{}}\n", providers(&openai, &anthropic));
    let env = Env::empty().with("RELAY_CACHE_PATH", path.display().to_string());
    let mut keys = Vec::new();
    {
        let mut relay = Relay::start_with(&yaml, env.clone(), false).await;
        for i in 0..150 {
            let body = format!(
                r#"{{"model":"gpt-4o","messages":[{{"role":"user","content":"question {i} {}"}}]}}"#,
                "x".repeat(200)
            );
            let a = post_json(&relay, CHAT, &body, &[]).await;
            assert_eq!(a.header("x-relay-cache"), Some("MISS"));
            let hex = a.header("x-relay-cache-key").unwrap().to_string();
            // The key's first bytes (the header holds its short form): enough to find its pages.
            keys.push(
                (0..hex.len() / 2)
                    .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
                    .collect::<Vec<u8>>(),
            );
        }
        let server = relay.take();
        server.shutdown();
        within(server.wait()).await;
    }
    // The pages that hold keys but no entry body: the key index. Their middle is overwritten.
    let mut file = std::fs::read(&path).unwrap();
    let has = |page: &[u8], needle: &[u8]| memchr::memmem::find(page, needle).is_some();
    let mut damaged = 0;
    for page in file.chunks_mut(4096).skip(1) {
        if !has(page, b"question") && keys.iter().any(|k| has(page, k)) {
            for b in &mut page[512..3584] {
                *b = 0xA5;
            }
            damaged += 1;
        }
    }
    assert!(damaged > 0, "found the key index's pages");
    std::fs::write(&path, &file).unwrap();

    let relay = Relay::start_with(&yaml, env, false).await;
    let body = chat_body("gpt-4o", false);
    assert_eq!(
        call(&relay, CHAT, &body, &[]).await.1.as_deref(),
        Some("MISS")
    );
    assert_eq!(
        call(&relay, CHAT, &body, &[]).await.1.as_deref(),
        Some("HIT")
    );
    // The writer moves the file aside when its batch meets the damage: wait for it (a stats
    // read queues behind the batch).
    relay.metrics().await;
    let aside = files_starting(dir.path(), "cache.redb.corrupt");
    assert_eq!(aside.len(), 1, "{aside:?}");
}

async fn single_flight(stream: bool) {
    const N: usize = 50;
    let (openai, _anthropic, relay) = cached_setup("").await;
    let body = chat_body("gpt-4o", stream);
    let mut tasks = Vec::new();
    for _ in 0..N {
        let req = Request::post(relay.url(CHAT))
            .header("content-type", "application/json")
            .header("x-mock", "hold")
            .body(full(body.clone()))
            .unwrap();
        tasks.push(tokio::spawn(async move {
            let resp = within(client().request(req)).await.unwrap();
            let cache = header(&resp, "x-relay-cache").map(str::to_string);
            (resp.status(), cache, bytes(resp).await)
        }));
    }
    openai.calls().wait_for(1, "upstream calls").await;
    // Let every request reach relay before the upstream answers (they would be hits anyway).
    for _ in 0..2000 {
        let m = relay.metrics().await;
        if m.contains(&format!("relay_inflight_requests {N}")) {
            break;
        }
        tokio::task::yield_now().await;
    }
    openai.release();
    let expected = if stream {
        mock::openai_sse("gpt-4o").concat()
    } else {
        mock::openai_json("gpt-4o")
    };
    let mut hits = 0;
    for t in tasks {
        let (status, cache, b) = t.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(b, expected.as_bytes());
        hits += usize::from(cache.as_deref() == Some("HIT"));
    }
    assert_eq!(openai.calls().get(), 1, "exactly one upstream call");
    assert_eq!(hits, N - 1);
}

#[tokio::test]
async fn single_flight_json() {
    single_flight(false).await;
}

#[tokio::test]
async fn single_flight_sse() {
    single_flight(true).await;
}

/// A shared upstream call that fails hands every request that joined it the first request's own
/// error: the same status, the same code.
#[tokio::test]
async fn single_flight_followers_get_the_leaders_exact_error() {
    let openai = Mock::start("openai", Kind::OpenAi).await;
    let anthropic = Mock::start("anthropic", Kind::Anthropic).await;
    let yaml = providers(&openai, &anthropic).replacen(
        "    kind: openai\n",
        "    kind: openai\n    timeouts: {first_byte: 2s}\n    retry: {attempts: 1}\n",
        1,
    );
    let relay = Relay::start(&format!("{yaml}cache:\n  enabled: true\n")).await;
    let body = chat_body("gpt-4o", false);
    let send = || {
        let req = Request::post(relay.url(CHAT))
            .header("content-type", "application/json")
            .header("x-mock", "hold")
            .body(full(body.clone()))
            .unwrap();
        tokio::spawn(async move {
            let resp = within(client().request(req)).await.unwrap();
            let code = header(&resp, "x-relay-error").map(str::to_string);
            (resp.status(), code)
        })
    };
    let leader = send();
    openai
        .calls()
        .wait_for(1, "the leader's upstream call")
        .await;
    let follower = send();
    for _ in 0..2000 {
        if relay.metrics().await.contains("relay_inflight_requests 2") {
            break;
        }
        tokio::task::yield_now().await;
    }
    let (status, code) = leader.await.unwrap();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(code.as_deref(), Some("upstream_timeout"));
    let (status, code) = follower.await.unwrap();
    assert_eq!(
        (status, code.as_deref()),
        (StatusCode::GATEWAY_TIMEOUT, Some("upstream_timeout")),
        "the follower answers as the leader did"
    );
    assert_eq!(
        openai.calls().get(),
        1,
        "the follower joined the leader's call"
    );
    openai.release();
}

#[tokio::test]
async fn followers_keep_streaming_when_the_leader_leaves() {
    let (openai, _anthropic, relay) = cached_setup("").await;
    let body = chat_body("gpt-4o", true);
    let send = || {
        within(
            client().request(
                Request::post(relay.url(CHAT))
                    .header("content-type", "application/json")
                    .header("x-mock", "hold")
                    .body(full(body.clone()))
                    .unwrap(),
            ),
        )
    };
    let leader = send().await.unwrap();
    assert_eq!(header(&leader, "x-relay-cache"), Some("MISS"));
    let follower = send().await.unwrap();
    assert_eq!(header(&follower, "x-relay-cache"), Some("HIT"));
    drop(leader);
    openai.release();
    assert_eq!(
        bytes(follower).await,
        mock::openai_sse("gpt-4o").concat().as_bytes()
    );
    assert_eq!(openai.calls().get(), 1);
    // The whole answer was read for the follower, so it is stored.
    assert_eq!(
        call(&relay, CHAT, &body, &[]).await.1.as_deref(),
        Some("HIT")
    );
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_backend_is_shared_and_survives_redis_going_away() {
    let mut redis = common::redis::RedisServer::start();
    let openai = Mock::start("openai", Kind::OpenAi).await;
    let anthropic = Mock::start("anthropic", Kind::Anthropic).await;
    let yaml = format!(
        "{}redis: {{enabled: true, address: '127.0.0.1:{}'}}\ncache: {{backend: redis}}\n",
        providers(&openai, &anthropic),
        redis.port()
    );
    let a = Relay::start(&yaml).await;
    let b = Relay::start(&yaml).await;
    let body = chat_body("gpt-4o", false);
    assert_eq!(call(&a, CHAT, &body, &[]).await.1.as_deref(), Some("MISS"));
    a.metrics().await; // commits a's queued write to Redis
    let (s, c, got) = call(&b, CHAT, &body, &[]).await;
    assert_eq!(
        (s.as_u16(), c.as_deref()),
        (200, Some("HIT")),
        "b sees a's entry"
    );
    assert_eq!(got, mock::openai_json("gpt-4o").as_bytes());
    assert_eq!(openai.calls().get(), 1);

    redis.kill();
    for i in 0..3 {
        let (s, c, got) = call(&b, CHAT, &chat_body(&format!("gpt-4o-{i}"), false), &[]).await;
        assert_eq!(
            (s.as_u16(), c.as_deref()),
            (200, Some("MISS")),
            "served without Redis"
        );
        assert_eq!(got, mock::openai_json(&format!("gpt-4o-{i}")).as_bytes());
    }
    assert_eq!(openai.calls().get(), 4);
    // The local file serves meanwhile (and says so): a repeat is a hit again.
    let m = b.metrics().await;
    assert_eq!(
        metric(&m, "relay_cache_backend", &[("backend", "redb")]),
        Some(1.0),
        "{m}"
    );
    let (_, c, _) = call(&b, CHAT, &chat_body("gpt-4o-2", false), &[]).await;
    assert_eq!(c.as_deref(), Some("HIT"));
}

#[tokio::test]
async fn export_clear_import_then_hit_through_the_running_server() {
    let (openai, _anthropic, relay) = cached_setup("").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("session.jsonl");
    let file = file.to_str().unwrap();
    let json = chat_body("gpt-4o", false);
    let sse = chat_body("gpt-4o", true);
    let (_, cache, recorded_json) = call(&relay, CHAT, &json, &[]).await;
    assert_eq!(cache.as_deref(), Some("MISS"));
    let (_, cache, recorded_sse) = call(&relay, CHAT, &sse, &[]).await;
    assert_eq!(cache.as_deref(), Some("MISS"));

    let (ok, _, err) = cache_cli(&relay, &["export", file]).await;
    assert!(ok, "{err}");
    assert_eq!(std::fs::read_to_string(file).unwrap().lines().count(), 2);
    let (ok, out, err) = cache_cli(&relay, &["clear"]).await;
    assert!(ok, "{err}");
    assert!(out.contains('2'), "{out}");
    let (ok, out, _) = cache_cli(&relay, &["ls"]).await;
    assert!(ok);
    assert!(!out.contains("gpt-4o"), "cleared: {out}");

    let (ok, out, err) = cache_cli(&relay, &["import", file]).await;
    assert!(ok, "{err}");
    assert!(out.contains('2'), "{out}");
    let (_, cache, replayed_json) = call(&relay, CHAT, &json, &[]).await;
    assert_eq!(cache.as_deref(), Some("HIT"));
    assert_eq!(replayed_json, recorded_json);
    let (_, cache, replayed_sse) = call(&relay, CHAT, &sse, &[]).await;
    assert_eq!(cache.as_deref(), Some("HIT"));
    assert_eq!(replayed_sse, recorded_sse);
    assert_eq!(
        openai.calls().get(),
        2,
        "imported entries answer without upstream calls"
    );
}

#[tokio::test]
async fn the_admin_api_answers_loopback_and_404s_other_paths() {
    let (_openai, _anthropic, relay) = cached_setup("").await;
    let resp = within(client().request(get(&relay.url("/relay/cache/stats"))))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let stats: serde_json::Value = serde_json::from_slice(&bytes(resp).await).unwrap();
    assert_eq!(stats["entries"], 0, "{stats}");
    let resp = within(client().request(get(&relay.url("/relay/nope"))))
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}
