//! [`handle`] against a real [`RedbStore`] in a temp dir; time is a [`ManualClock`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::Full;
use serde_json::Value;

use super::*;
use crate::cache::entry::tests::{json_entry, sse_entry};
use crate::cache::tests::{options, T0};
use crate::cache::RedbStore;
use crate::clock::ManualClock;

struct Fixture {
    store: Arc<dyn Store>,
    clock: ManualClock,
    _dir: tempfile::TempDir,
}

fn open() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let opts = options(&clock, 1 << 24);
    let store = RedbStore::open(dir.path().join("cache.redb"), opts).unwrap();
    Fixture {
        store: Arc::new(store),
        clock,
        _dir: dir,
    }
}

/// A key whose hex starts with `prefix` (an even number of hex digits), the rest `fill`.
fn key_with(prefix: &[u8], fill: u8) -> CacheKey {
    let mut b = [fill; 32];
    b[..prefix.len()].copy_from_slice(prefix);
    CacheKey::from_bytes(b)
}

struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    fn error(&self) -> String {
        assert_eq!(
            self.headers[header::CONTENT_TYPE],
            "application/json",
            "errors are JSON"
        );
        self.json()["error"]
            .as_str()
            .expect("an error message")
            .to_owned()
    }
}

async fn call(store: &Arc<dyn Store>, method: Method, uri: &str, body: impl Into<Bytes>) -> Answer {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .body(Full::new(body.into()))
        .unwrap();
    let resp = handle(store, req).await;
    Answer {
        status: resp.status(),
        headers: resp.headers().clone(),
        body: resp.into_body(),
    }
}

async fn get(store: &Arc<dyn Store>, uri: &str) -> Answer {
    call(store, Method::GET, uri, "").await
}

fn keys(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|row| row["key"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_is_newest_first_with_model_and_limit() {
    let f = open();
    let s = &f.store;
    let (k1, k2, k3) = (key_with(&[1], 1), key_with(&[2], 2), key_with(&[3], 3));
    s.put(k1, json_entry("gpt-4o", T0 - 3000, r#"{"id":"a"}"#))
        .unwrap();
    let mut hour = sse_entry("claude", T0 - 2000);
    hour.meta.expires_ms = Some(T0 + 3_600_000);
    s.put(k2, hour).unwrap();
    s.put(k3, json_entry("gpt-4o", T0 - 1000, r#"{"id":"c"}"#))
        .unwrap();
    let mut expired = json_entry("gpt-4o", T0, "{}");
    expired.meta.expires_ms = Some(T0 + 10);
    s.put(key_with(&[4], 4), expired).unwrap();
    f.clock.advance(Duration::from_millis(10));

    let all = get(s, "/relay/cache/entries").await;
    assert_eq!(all.status, StatusCode::OK);
    assert_eq!(all.headers[header::CONTENT_TYPE], "application/json");
    let all = all.json();
    assert_eq!(
        keys(&all),
        [k3.hex(), k2.hex(), k1.hex()],
        "expired left out"
    );
    let row = &all[1];
    let want = sse_entry("claude", T0 - 2000);
    assert_eq!(row["short"], k2.short());
    assert_eq!(row["provider"], "anthropic");
    assert_eq!(row["model"], "claude");
    assert_eq!(row["method"], "POST");
    assert_eq!(row["path"], "/v1/messages");
    assert_eq!(row["status"], 200);
    assert_eq!(row["created_ms"], T0 - 2000);
    assert_eq!(row["expires_ms"], T0 + 3_600_000);
    assert_eq!(row["size"], want.size());
    assert_eq!(row["hits"], 0);
    // The typed view reads the same answer.
    let typed: Vec<EntrySummary> = serde_json::from_value(all.clone()).unwrap();
    assert_eq!(typed[1].key, k2.hex());

    let gpt = get(s, "/relay/cache/entries?model=gpt-4o").await.json();
    assert_eq!(keys(&gpt), [k3.hex(), k1.hex()]);
    let newest = get(s, "/relay/cache/entries?limit=1&model=gpt-4o")
        .await
        .json();
    assert_eq!(keys(&newest), [k3.hex()]);
    let none = get(s, "/relay/cache/entries?model=nope").await.json();
    assert_eq!(none, serde_json::json!([]));
    // Trailing slash tolerated.
    assert_eq!(get(s, "/relay/cache/entries/").await.json(), all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_query_is_checked_and_decoded() {
    let f = open();
    let s = &f.store;
    let k = key_with(&[9], 9);
    s.put(k, json_entry("accounts/x/models/llama v3", T0, "{}"))
        .unwrap();
    let found = get(
        s,
        "/relay/cache/entries?model=accounts%2Fx%2Fmodels%2Fllama+v3",
    )
    .await
    .json();
    assert_eq!(keys(&found), [k.hex()]);
    let encoded = format!(
        "/relay/cache/entries?model={}",
        percent_encode("accounts/x/models/llama v3")
    );
    assert_eq!(keys(&get(s, &encoded).await.json()), [k.hex()]);

    for (uri, needle) in [
        ("/relay/cache/entries?limit=ten", "limit"),
        ("/relay/cache/entries?limit=-1", "limit"),
        (
            "/relay/cache/entries?modle=x",
            "unknown query parameter \"modle\"",
        ),
        ("/relay/cache/entries?model=", "model must not be empty"),
        ("/relay/cache/entries?model=a&model=b", "twice"),
        ("/relay/cache/entries?model=%zz", "percent"),
        ("/relay/cache/stats?x=1", "this endpoint takes: none"),
    ] {
        let a = get(s, uri).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{uri}");
        assert!(a.error().contains(needle), "{uri}: {}", a.error());
    }
    // A typo never widens a DELETE to every entry.
    let a = call(s, Method::DELETE, "/relay/cache/entries?modle=x", "").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        keys(&get(s, "/relay/cache/entries").await.json()),
        [k.hex()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_by_unique_ambiguous_or_missing_prefix() {
    let f = open();
    let s = &f.store;
    let a = key_with(&[0xab, 0xcd], 0x11);
    let b = key_with(&[0xab, 0xce], 0x22);
    let mut ja = json_entry("gpt-4o", T0, r#"{"id":"chatcmpl-1","choices":[]}"#);
    ja.request = Bytes::from_static(b"not json at all");
    s.put(a, ja.clone()).unwrap();
    s.put(b, sse_entry("claude", T0 + 1)).unwrap();

    let shown = get(s, "/relay/cache/entries/abcd").await;
    assert_eq!(shown.status, StatusCode::OK);
    let v = shown.json();
    assert_eq!(v["key"], a.hex());
    assert_eq!(v["short"], a.short());
    assert_eq!(v["model"], "gpt-4o");
    assert_eq!(v["size"], ja.size());
    assert_eq!(
        v["headers"][0],
        serde_json::json!(["content-type", "application/json"])
    );
    assert_eq!(
        v["request"], "not json at all",
        "a non-JSON request is its text"
    );
    assert_eq!(v["response"]["kind"], "json");
    assert_eq!(
        v["response"]["body"]["id"], "chatcmpl-1",
        "a JSON body is a value"
    );
    let typed: EntryDetail = serde_json::from_value(v).unwrap();
    assert_eq!(typed.summary.key, a.hex());

    // Any case, any length; an SSE entry lists its events as sent.
    let v = get(
        s,
        &format!("/relay/cache/entries/{}", &b.hex()[..5].to_uppercase()),
    )
    .await
    .json();
    assert_eq!(v["key"], b.hex());
    assert_eq!(v["request"]["model"], "claude", "a JSON request is a value");
    assert_eq!(v["response"]["kind"], "sse");
    let events = v["response"]["events"].as_array().unwrap();
    assert_eq!(events.len(), 3);
    assert_eq!(
        events[0]["data"],
        "event: message_start\ndata: {\"type\":\"message_start\"}\n\n"
    );
    assert_eq!(events[1]["delay_ms"], 37);
    assert_eq!(events[1]["data"], "data: \u{fffd}\u{fffd} raw\r\n\r\n");

    let ambiguous = get(s, "/relay/cache/entries/abc").await;
    assert_eq!(ambiguous.status, StatusCode::CONFLICT);
    assert!(
        ambiguous.error().contains("matches several entries"),
        "{}",
        ambiguous.error()
    );
    let missing = get(s, "/relay/cache/entries/ff").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.error(), "no cache entry has a key starting with ff");
    let bad = get(s, "/relay/cache/entries/xyz").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(
        bad.error().contains("not a hex character"),
        "{}",
        bad.error()
    );

    // Showing is not a hit.
    s.flush().await.unwrap();
    assert_eq!(get(s, "/relay/cache/entries/abcd").await.json()["hits"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_by_model_then_all() {
    let f = open();
    let s = &f.store;
    s.put(key_with(&[1], 1), json_entry("gpt-4o", T0, "{}"))
        .unwrap();
    s.put(key_with(&[2], 2), json_entry("claude", T0 + 1, "{}"))
        .unwrap();
    s.put(key_with(&[3], 3), json_entry("gpt-4o", T0 + 2, "{}"))
        .unwrap();

    let a = call(s, Method::DELETE, "/relay/cache/entries?model=gpt-4o", "").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json(), serde_json::json!({"removed": 2}));
    assert_eq!(
        keys(&get(s, "/relay/cache/entries").await.json()),
        [key_with(&[2], 2).hex()]
    );
    let none = call(s, Method::DELETE, "/relay/cache/entries?model=gpt-4o", "").await;
    assert_eq!(none.json()["removed"], 0);
    let rest = call(s, Method::DELETE, "/relay/cache/entries", "").await;
    assert_eq!(rest.json()["removed"], 1);
    assert_eq!(
        get(s, "/relay/cache/entries").await.json(),
        serde_json::json!([])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_report_totals_and_backend() {
    let f = open();
    let s = &f.store;
    let empty: StatsView =
        serde_json::from_value(get(s, "/relay/cache/stats").await.json()).unwrap();
    assert_eq!(
        empty,
        StatsView {
            entries: 0,
            bytes: 0,
            oldest_ms: None,
            newest_ms: None,
            hits: 0,
            write_errors: 0,
            backend: "redb".into(),
        }
    );
    let (e1, e2) = (json_entry("a", T0 - 500, "{}"), sse_entry("b", T0 - 100));
    let k1 = key_with(&[1], 1);
    s.put(k1, e1.clone()).unwrap();
    s.put(key_with(&[2], 2), e2.clone()).unwrap();
    s.flush().await.unwrap();
    s.get(k1).await.unwrap().unwrap();
    s.get(k1).await.unwrap().unwrap();
    let a = get(s, "/relay/cache/stats").await;
    assert_eq!(a.status, StatusCode::OK);
    let v = a.json();
    assert_eq!(v["entries"], 2);
    assert_eq!(v["bytes"], e1.size() + e2.size());
    assert_eq!(v["oldest_ms"], T0 - 500);
    assert_eq!(v["newest_ms"], T0 - 100);
    assert_eq!(v["hits"], 2, "hits committed by the stats flush");
    assert_eq!(v["write_errors"], 0);
    assert_eq!(v["backend"], "redb");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_clear_import_roundtrip() {
    let f = open();
    let s = &f.store;
    let (k1, k2, k3) = (key_with(&[1], 1), key_with(&[2], 2), key_with(&[3], 3));
    s.put(k1, json_entry("gpt-4o", T0, r#"{"id":"x"}"#))
        .unwrap();
    s.put(k2, sse_entry("claude", T0 + 1)).unwrap();
    s.put(k3, json_entry("other", T0 + 2, "{}")).unwrap();
    s.flush().await.unwrap();
    s.get(k2).await.unwrap().unwrap();
    s.flush().await.unwrap();
    let before: Vec<Entry> = {
        let mut v = Vec::new();
        for k in [k1, k2] {
            v.push(s.find_prefix(&k.hex()).await.unwrap().unwrap().1);
        }
        v
    };
    assert_eq!(before[1].meta.hits, 1);

    let one = get(s, "/relay/cache/export?model=other").await;
    assert_eq!(one.status, StatusCode::OK);
    assert_eq!(one.body.iter().filter(|b| **b == b'\n').count(), 1);

    let export = get(s, "/relay/cache/export").await;
    assert_eq!(export.status, StatusCode::OK);
    assert_eq!(export.headers[header::CONTENT_TYPE], "application/x-ndjson");
    let text = String::from_utf8(export.body.to_vec()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(text.ends_with('\n'));
    let (first, _) = Entry::from_jsonl_line(lines[0]).unwrap();
    assert_eq!(first, k3, "newest first");

    let removed = call(s, Method::DELETE, "/relay/cache/entries", "")
        .await
        .json();
    assert_eq!(removed["removed"], 3);
    assert_eq!(s.get(k1).await.unwrap(), None);

    let imported = call(s, Method::POST, "/relay/cache/import", text.clone()).await;
    assert_eq!(imported.status, StatusCode::OK);
    assert_eq!(imported.json(), serde_json::json!({"imported": 3}));
    // Import flushes: a direct read of the file (not the pending map) sees the entries.
    assert_eq!(s.stats().await.unwrap().entries, 3);
    for (k, entry) in [k1, k2].into_iter().zip(before) {
        assert_eq!(
            s.find_prefix(&k.hex()).await.unwrap().unwrap().1,
            entry,
            "hits and expiry kept"
        );
    }
    // The same file exports again identically.
    let again = get(s, "/relay/cache/export").await;
    assert_eq!(again.body, export.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_import_line_imports_nothing() {
    let f = open();
    let s = &f.store;
    let good = |n: u8| json_entry("m", T0, "{}").to_jsonl_line(&key_with(&[n], n));
    // CRLF and blank lines are fine; line 4 is not an entry.
    let body = format!("{}\r\n\n{}\nnot json\n{}\n", good(1), good(2), good(3));
    let a = call(s, Method::POST, "/relay/cache/import", body.clone()).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    let v = a.json();
    assert_eq!(v["line"], 4);
    let msg = v["error"].as_str().unwrap();
    assert!(msg.starts_with("line 4: not a relay cache line"), "{msg}");
    assert!(msg.ends_with("nothing was imported"), "{msg}");
    assert_eq!(s.stats().await.unwrap().entries, 0);

    let other_version = good(1).replace("\"key_version\":1", "\"key_version\":7");
    let a = call(s, Method::POST, "/relay/cache/import", other_version).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(
        a.error()
            .contains("line 1: the line was exported with cache key version 7"),
        "{}",
        a.error()
    );

    let mut bytes = format!("{}\n", good(1)).into_bytes();
    bytes.extend_from_slice(b"\xff\xfe\n");
    let not_utf8 = call(s, Method::POST, "/relay/cache/import", bytes).await;
    assert_eq!(not_utf8.status, StatusCode::BAD_REQUEST);
    assert_eq!(not_utf8.error(), "line 2: not UTF-8; nothing was imported");

    let empty = call(s, Method::POST, "/relay/cache/import", "").await;
    assert_eq!(
        empty.json(),
        serde_json::json!({"imported": 0}),
        "an empty body imports nothing"
    );
    assert_eq!(s.stats().await.unwrap().entries, 0);

    let good_only = format!("{}\n{}", good(1), good(2));
    let a = call(s, Method::POST, "/relay/cache/import", good_only).await;
    assert_eq!(
        a.json()["imported"],
        2,
        "a last line without newline counts"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_import_waits_for_the_writer() {
    let f = open();
    let s = &f.store;
    // More than the write queue holds (1024).
    let mut body = String::new();
    for n in 0..3000u32 {
        let mut b = [0u8; 32];
        b[..4].copy_from_slice(&n.to_be_bytes());
        body.push_str(&json_entry("m", T0, "{}").to_jsonl_line(&CacheKey::from_bytes(b)));
        body.push('\n');
    }
    let a = call(s, Method::POST, "/relay/cache/import", body.clone()).await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    assert_eq!(a.json()["imported"], 3000);
    assert_eq!(s.stats().await.unwrap().entries, 3000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_and_wrong_methods() {
    let f = open();
    let s = &f.store;
    for uri in [
        "/relay/cache",
        "/relay/cache/",
        "/relay/cache/nope",
        "/relay/cachex/stats",
        "/relay/cache/entries/abc/def",
        "/elsewhere",
    ] {
        let a = get(s, uri).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{uri}");
        assert!(
            a.error().contains("no cache admin endpoint"),
            "{uri}: {}",
            a.error()
        );
    }
    let a = call(s, Method::POST, "/relay/cache/stats", "").await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(a.headers[header::ALLOW], "GET");
    assert!(a.error().contains("POST"), "{}", a.error());
    let a = call(s, Method::PUT, "/relay/cache/entries", "").await;
    assert_eq!(a.headers[header::ALLOW], "GET, DELETE");
    let a = get(s, "/relay/cache/import").await;
    assert_eq!(a.headers[header::ALLOW], "POST");
    let a = call(s, Method::DELETE, "/relay/cache/entries/abc", "").await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_store_is_unavailable() {
    let f = open();
    f.store.close().await.unwrap();
    let a = get(&f.store, "/relay/cache/stats").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.error(), "cache store is closed");
}
