//! One caller identity ([`relay::caller`]) end to end: the cache, the rate limits and the cost
//! ledger name a caller alike (its relay key, else the key it presents, else the provider's own
//! key), and entries recorded under the earlier scope v1 still replay.

mod common;

use common::mock::{Kind, Mock};
use common::*;
use http::StatusCode;
use relay::cache::{KeyBuilder, KeyInput, RedbStore, Scope, Store};
use relay::caller::Identity;
use relay::config::Env;

const CHAT: &str = "/v1/chat/completions";

fn body(text: &str) -> String {
    serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]})
        .to_string()
}

/// Both mocks, each provider with its own key in `OPENAI_KEY` / `ANTHROPIC_KEY`.
fn with_own_keys(openai: &Mock, anthropic: &Mock, extra: &str) -> String {
    format!(
        "providers:\n  - {{name: openai, kind: openai, base_url: '{}', api_key_env: OPENAI_KEY}}\n  - {{name: anthropic, kind: anthropic, base_url: '{}', api_key_env: ANTHROPIC_KEY}}\ncache: {{enabled: true}}\n{extra}",
        openai.base_url(),
        anthropic.base_url()
    )
}

fn label(key: &str) -> String {
    format!("key-{}", &blake3::hash(key.as_bytes()).to_hex()[..12])
}

async fn usage_by_key(relay: &Relay) -> serde_json::Value {
    let resp = within(client().request(get(&relay.url("/relay/usage?by=key"))))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    json(resp).await
}

fn row<'a>(report: &'a serde_json::Value, group: &str) -> Option<&'a serde_json::Value> {
    report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["group"] == group)
}

async fn stop(relay: &mut Relay) {
    let server = relay.take();
    server.shutdown();
    within(server.wait()).await;
}

#[tokio::test]
async fn the_providers_own_key_is_one_caller_for_cache_limits_and_cost() {
    let openai = Mock::start("openai", Kind::OpenAi).await;
    let anthropic = Mock::start("anthropic", Kind::Anthropic).await;
    let yaml = with_own_keys(
        &openai,
        &anthropic,
        "ratelimit:\n  rules:\n    - {scope: key, requests_per_second: 0.001, burst: 1}\n",
    );
    let env = Env::empty()
        .with("OPENAI_KEY", "sk-own")
        .with("ANTHROPIC_KEY", "sk-ant-own");
    let relay = Relay::start_with(&yaml, env, false).await;
    let own = [("authorization", "Bearer sk-own")];

    // Keyless: relay sends its own key, and the answer is recorded for the provider's own key.
    let first = post_json(&relay, CHAT, &body("one"), &[]).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.header("x-relay-cache"), Some("MISS"));
    let sent = openai.last().headers;
    assert_eq!(sent["authorization"], "Bearer sk-own");
    // The same key, presented by the caller: the same caller, so it hits that recording...
    let again = post_json(&relay, CHAT, &body("one"), &own).await;
    assert_eq!(again.header("x-relay-cache"), Some("HIT"));
    assert_eq!(again.body, first.body);
    // ...and shares its rate-limit bucket (one request, spent by the keyless call).
    let limited = post_json(&relay, CHAT, &body("two"), &own).await;
    assert_eq!(
        limited.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{:?}",
        limited.body
    );
    let limited = post_json(&relay, CHAT, &body("three"), &[]).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(openai.calls().get(), 1);

    // Another provider's own key is another caller: its own bucket.
    let messages = serde_json::json!({"model": "claude-sonnet-4-5", "max_tokens": 8,
        "messages": [{"role": "user", "content": "one"}]})
    .to_string();
    let a = post_json(
        &relay,
        "/v1/messages",
        &messages,
        &[("anthropic-version", "2023-06-01")],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(anthropic.last().headers["x-api-key"], "sk-ant-own");
    // A key of the caller's own is another caller: a miss, in a bucket of its own.
    let other = post_json(
        &relay,
        CHAT,
        &body("one"),
        &[("authorization", "Bearer sk-other")],
    )
    .await;
    assert_eq!(other.status, StatusCode::OK);
    assert_eq!(other.header("x-relay-cache"), Some("MISS"));
    assert_eq!(openai.last().headers["authorization"], "Bearer sk-other");

    // The ledger books each to the key that paid.
    let cost = relay.server().cost();
    within(cost.wait_settled(6)).await;
    let report = usage_by_key(&relay).await;
    let own_row = row(&report, &label("sk-own")).expect("the own key's row");
    // The keyless miss, the hit with the key presented, and both refusals (errors).
    let counts = ["requests", "misses", "hits", "errors"].map(|c| own_row[c].as_u64());
    assert_eq!(counts, [4, 1, 1, 2].map(Some), "{report}");
    let other_row = row(&report, &label("sk-other")).expect("the other key's row");
    assert_eq!(other_row["misses"], 1, "{report}");
    assert!(row(&report, &label("sk-ant-own")).is_some(), "{report}");
    assert!(row(&report, "none").is_none(), "{report}");
}

#[tokio::test]
async fn a_keyless_recording_replays_after_the_key_is_rotated_and_offline_without_it() {
    let openai = Mock::start("openai", Kind::OpenAi).await;
    let anthropic = Mock::start("anthropic", Kind::Anthropic).await;
    let yaml = with_own_keys(&openai, &anthropic, "");
    let mut first =
        Relay::start_with(&yaml, Env::empty().with("OPENAI_KEY", "sk-old"), false).await;
    let recorded = post_json(&first, CHAT, &body("rotate"), &[]).await;
    assert_eq!(recorded.header("x-relay-cache"), Some("MISS"));
    stop(&mut first).await;
    let store = first.dir.path().join("cache.redb").display().to_string();

    // The key is rotated: the caller is still the provider's own key.
    let env = Env::empty()
        .with("OPENAI_KEY", "sk-new")
        .with("RELAY_CACHE_PATH", store.clone());
    let mut rotated = Relay::start_with(&yaml, env, false).await;
    let hit = post_json(&rotated, CHAT, &body("rotate"), &[]).await;
    assert_eq!(hit.header("x-relay-cache"), Some("HIT"));
    assert_eq!(hit.body, recorded.body);
    stop(&mut rotated).await;

    // Offline on a machine without the key at all.
    let env = Env::empty().with("RELAY_CACHE_PATH", store);
    let offline = Relay::start_full(&yaml, env, false, true).await;
    let hit = post_json(&offline, CHAT, &body("rotate"), &[]).await;
    assert_eq!(hit.status, StatusCode::OK);
    assert_eq!(hit.header("x-relay-cache"), Some("HIT"));
    assert_eq!(hit.body, recorded.body);
    assert_eq!(openai.calls().get(), 1);
}

/// Moves the entry relay recorded under `short` to the key scope v1 gave it (what a relay from
/// before the one caller identity stored), as `caller` presenting `presented`.
async fn move_to_v1(
    store: &RedbStore,
    short: &str,
    text: &str,
    caller: &Identity,
    presented: Option<&str>,
) {
    let (key, mut entry) = store.find_prefix(short).await.unwrap().expect("recorded");
    let ignore = relay::fieldpath::FieldSet::parse(&["user", "metadata"]).unwrap();
    let body = body(text);
    let input = KeyInput {
        provider: "openai",
        method: "POST",
        path_and_query: CHAT,
        body: body.as_bytes(),
        scope: Scope::of(caller),
        namespace: None,
    };
    let v1 = Scope::v1(caller, presented);
    let (now, old) = KeyBuilder::keys_ignoring(&ignore, &input, Some(v1));
    assert_eq!(now, key, "the test computes the key relay did");
    let old = old.unwrap();
    assert_ne!(old, key);
    let Scope::Key(v1_hash) = v1 else {
        unreachable!()
    };
    entry.meta.recorded.scope = Some(relay::cache::CacheKey::from_bytes(v1_hash).hex());
    let portable = KeyBuilder::portable_key(&ignore, &KeyInput { scope: v1, ..input });
    entry.meta.recorded.portable = Some(portable.hex());
    store.put(old, entry).unwrap();
    assert!(store.remove(key).await.unwrap());
}

#[tokio::test]
async fn entries_recorded_under_scope_v1_still_replay() {
    let openai = Mock::start("openai", Kind::OpenAi).await;
    let anthropic = Mock::start("anthropic", Kind::Anthropic).await;
    let yaml = format!(
        "{}cache: {{enabled: true}}\n",
        providers(&openai, &anthropic)
    );
    let mut first = Relay::start(&yaml).await;
    let alice = [("authorization", "Bearer sk-alice")];
    let asked = "alice\nToday's date is 2026-12-01.";
    let by_alice = post_json(&first, CHAT, &body(asked), &alice).await;
    let keyless = post_json(&first, CHAT, &body("anyone"), &[]).await;
    stop(&mut first).await;

    let path = first.dir.path().join("cache.redb");
    let store = RedbStore::open(&path, Default::default()).unwrap();
    let short = |a: &Answer| a.header("x-relay-cache-key").unwrap().to_string();
    let as_alice = Identity::of(None, Some("sk-alice"), "openai", &[]);
    let as_nobody = Identity::of(None, None, "openai", &[]);
    move_to_v1(
        &store,
        &short(&by_alice),
        asked,
        &as_alice,
        Some("sk-alice"),
    )
    .await;
    move_to_v1(&store, &short(&keyless), "anyone", &as_nobody, None).await;
    store.close().await.unwrap();
    drop(store);

    let env = Env::empty().with("RELAY_CACHE_PATH", path.display().to_string());
    let mut second = Relay::start_with(&yaml, env.clone(), false).await;
    let hit = post_json(&second, CHAT, &body(asked), &alice).await;
    assert_eq!(hit.header("x-relay-cache"), Some("HIT"));
    assert_eq!(hit.body, by_alice.body);
    let hit = post_json(&second, CHAT, &body("anyone"), &[]).await;
    assert_eq!(hit.header("x-relay-cache"), Some("HIT"));
    assert_eq!(hit.body, keyless.body);
    assert_eq!(openai.calls().get(), 2);
    // A v1 entry is still its caller's only: bob misses alice's.
    let bob = [("authorization", "Bearer sk-bob")];
    let miss = post_json(&second, CHAT, &body(asked), &bob).await;
    assert_eq!(miss.header("x-relay-cache"), Some("MISS"));
    assert_eq!(openai.calls().get(), 3);
    stop(&mut second).await;

    // And offline, the next day too (by its v1 portable key).
    let offline = Relay::start_full(&yaml, env, false, true).await;
    let hit = post_json(&offline, CHAT, &body(asked), &alice).await;
    assert_eq!(hit.header("x-relay-cache"), Some("HIT"));
    let next_day = body("alice\nToday's date is 2026-12-02.");
    let hit = post_json(&offline, CHAT, &next_day, &alice).await;
    assert_eq!(hit.status, StatusCode::OK, "{:?}", hit.body);
    assert_eq!(hit.header("x-relay-cache-match"), Some("portable"));
    assert_eq!(hit.body, by_alice.body);
    // Carol has no recording of her own (bob's, made above, would replay for bob).
    let carol = [("authorization", "Bearer sk-carol")];
    let miss = post_json(&offline, CHAT, &next_day, &carol).await;
    assert_eq!(miss.status, StatusCode::BAD_REQUEST);
    let hit = post_json(&offline, CHAT, &body("anyone"), &[]).await;
    assert_eq!(hit.header("x-relay-cache"), Some("HIT"));
    let miss = post_json(
        &offline,
        CHAT,
        &body("anyone"),
        &[("x-api-key", "sk-carol")],
    )
    .await;
    assert_eq!(miss.status, StatusCode::BAD_REQUEST);
}
