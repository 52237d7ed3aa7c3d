//! Store behaviour tests. The generic cases run against every backend through [`store_suite!`]
//! (redb here, Redis in `redis_store.rs`); redb-only cases (files, locks, recovery) follow.
//! Time is a [`ManualClock`]; waiting for the writer is [`Store::flush`], never a sleep.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::entry::tests::{json_entry, sse_entry};
use super::*;
use crate::clock::ManualClock;

/// 2023-11-14T22:13:20Z: an arbitrary, fixed "now".
pub(crate) const T0: u64 = 1_700_000_000_000;
const DAY_MS: u64 = 24 * 3600 * 1000;

/// A store under test, and whatever must live as long as it (temp dir, server process).
pub(crate) struct Opened {
    pub store: Arc<dyn Store>,
    /// Held for its drop only.
    pub _guard: Box<dyn std::any::Any + Send>,
}

/// Options with a manual clock at [`T0`].
pub(crate) fn options(clock: &ManualClock, max_bytes: u64) -> StoreOptions {
    StoreOptions {
        max_bytes,
        clock: clock.clock(),
    }
}

fn key(n: u8) -> CacheKey {
    CacheKey::from_bytes([n; 32])
}

/// Generates one `#[tokio::test]` per generic case, opening stores with `$open`
/// (`async fn(StoreOptions) -> Opened`).
macro_rules! store_suite {
    ($open:path) => {
        store_suite!(@cases $open;
            put_get_roundtrip_json_and_sse,
            queued_entries_are_visible_before_commit,
            put_replaces_an_entry,
            hits_are_counted_lazily,
            shared_gets_count_hits_and_follow_replacements,
            ttl_expiry_uses_the_injected_clock,
            no_ttl_keeps_entries_forever,
            eviction_removes_oldest_first_at_the_size_bound,
            evicted_entries_are_never_served,
            too_large_entries_are_refused,
            list_newest_first_with_model_filter_and_limit,
            clear_all_or_by_model,
            remove_entries,
            prefix_lookup_unique_ambiguous_none,
            export_clear_import_roundtrip,
            stats_totals,
            closed_store_refuses_work,
        );
    };
    (@cases $open:path; $($case:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                $crate::cache::tests::$case(&$open).await;
            }
        )*
    };
}
#[cfg(feature = "redis")]
pub(crate) use store_suite;

pub(crate) async fn put_get_roundtrip_json_and_sse<F, Fut>(open: &F)
where
    F: Fn(StoreOptions) -> Fut,
    Fut: Future<Output = Opened>,
{
    let clock = ManualClock::new(T0);
    let opened = open(options(&clock, 1 << 20)).await;
    let s = &opened.store;
    let mut json = json_entry("gpt-4o", T0, r#"{"id":"chatcmpl-1","choices":[]}"#);
    json.meta.expires_ms = Some(T0 + 3_600_000);
    let sse = sse_entry("claude", T0);
    s.put(key(1), json.clone()).unwrap();
    s.put(key(2), sse.clone()).unwrap();
    s.flush().await.unwrap();
    assert_eq!(s.get(key(1)).await.unwrap(), Some(json));
    let got = s.get(key(2)).await.unwrap().unwrap();
    assert_eq!(got, sse, "no expiry given: none is added");
    // Byte-faithful: the events concatenate to the recorded stream, non-UTF-8 bytes included.
    assert_eq!(got.response.to_bytes(), sse.response.to_bytes());
    assert_eq!(s.get(key(3)).await.unwrap(), None);
}

pub(crate) async fn queued_entries_are_visible_before_commit<F, Fut>(open: &F)
where
    F: Fn(StoreOptions) -> Fut,
    Fut: Future<Output = Opened>,
{
    let clock = ManualClock::new(T0);
    let opened = open(options(&clock, 1 << 20)).await;
    let s = &opened.store;
    let e = json_entry("m", T0, "{}");
    s.put(key(1), e.clone()).unwrap();
    // No flush: the put may still be queued, and a read must see it anyway.
    assert_eq!(s.get(key(1)).await.unwrap(), Some(e.clone()));
    s.flush().await.unwrap();
    let mut hit = e;
    hit.meta.hits = 1;
    assert_eq!(s.get(key(1)).await.unwrap(), Some(hit));
}

pub(crate) async fn put_replaces_an_entry<F, Fut>(open: &F)
where
    F: Fn(StoreOptions) -> Fut,
    Fut: Future<Output = Opened>,
{
    let clock = ManualClock::new(T0);
    let opened = open(options(&clock, 1 << 20)).await;
    let s = &opened.store;
    s.put(key(1), json_entry("m", T0, "first")).unwrap();
    s.flush().await.unwrap();
    let second = json_entry("m", T0 + 5, "second, longer");
    s.put(key(1), second.clone()).unwrap();
    s.flush().await.unwrap();
    assert_eq!(s.get(key(1)).await.unwrap(), Some(second.clone()));
    let stats = s.stats().await.unwrap();
    assert_eq!((stats.entries, stats.bytes), (1, second.size()));
    assert_eq!(stats.oldest_ms, Some(T0 + 5));
}

pub(crate) async fn hits_are_counted_lazily<F, Fut>(open: &F)
where
    F: Fn(StoreOptions) -> Fut,
    Fut: Future<Output = Opened>,
{
    let clock = ManualClock::new(T0);
    let opened = open(options(&clock, 1 << 20)).await;
    let s = &opened.store;
    s.put(key(1), json_entry("m", T0, "{}")).unwrap();
    s.put(key(2), json_entry("m", T0, "{}")).unwrap();
    s.flush().await.unwrap();
    for _ in 0..3 {
        assert!(s.get(key(1)).await.unwrap().is_some());
    }
    assert!(s.get(key(2)).await.unwrap().is_some());
    s.flush().await.unwrap();
    // The returned count is what was committed before this hit.
    assert_eq!(s.get(key(1)).await.unwrap().unwrap().meta.hits, 3);
    s.flush().await.unwrap();
    assert_eq!(s.stats().await.unwrap().hits, 5);
    let listed = s.list(ListFilter::default()).await.unwrap();
    let hits: Vec<u64> = listed.iter().map(|(_, m, _)| m.hits).collect();
    assert_eq!(hits.iter().sum::<u64>(), 5);
    // A miss counts nothing; a removed entry takes its hits with it.
    assert!(s.get(key(9)).await.unwrap().is_none());
    assert!(s.remove(key(1)).await.unwrap());
    assert_eq!(s.stats().await.unwrap().hits, 1);
}

pub(crate) async fn shared_gets_count_hits_and_follow_replacements<F, Fut>(open: &F)
where
    F: Fn(StoreOptions) -> Fut,
    Fut: Future<Output = Opened>,
{
    let clock = ManualClock::new(T0);
    let opened = open(options(&clock, 1 << 20)).await;
    let s = &opened.store;
    let first = json_entry("m", T0, "first");
    s.put(key(1), first.clone()).unwrap();
    s.flush().await.unwrap();
    for _ in 0..2 {
        let got = s.get_shared(key(1)).await.unwrap().unwrap();
        assert_eq!(got.response, first.response);
    }
    // Replaced: the next shared get is the new entry, even before the write is committed.
    let second = json_entry("m", T0 + 5, "second");
    s.put(key(1), second.clone()).unwrap();
    let got = s.get_shared(key(1)).await.unwrap().unwrap();
    assert_eq!(got.response, second.response);
    assert_eq!(got.meta.created_ms, T0 + 5);
    assert!(s.get_shared(key(2)).await.unwrap().is_none());
    // Shared gets are hits like any other.
    s.put(key(2), json_entry("m", T0, "{}")).unwrap();
    s.flush().await.unwrap();
    for _ in 0..3 {
        assert!(s.get_shared(key(2)).await.unwrap().is_some());
    }
    s.flush().await.unwrap();
    assert_eq!(s.get(key(2)).await.unwrap().unwrap().meta.hits, 3);
}

pub(crate) async fn ttl_expiry_uses_the_injected_clock<F, Fut>(open: &F)
where
    F: Fn(StoreOptions) -> Fut,
    Fut: Future<Output = Opened>,
{
    let clock = ManualClock::new(T0);
    let opened = open(options(&clock, 1 << 20)).await;
    let s = &opened.store;
    let mut long = json_entry("m", T0, "long");
    long.meta.expires_ms = Some(T0 + 600_000);
    let mut minute = json_entry("m", T0, "a minute");
    minute.meta.expires_ms = Some(T0 + 60_000);
    s.put(key(1), minute).unwrap();
    s.put(key(2), long).unwrap();
    // Expired while still queued: a miss too.
    let mut stale = json_entry("m", T0, "stale");
    stale.meta.expires_ms = Some(T0 - 1);
    s.put(key(3), stale).unwrap();
    assert_eq!(s.get(key(3)).await.unwrap(), None);
    s.flush().await.unwrap();

    clock.advance(Duration::from_millis(59_999));
    assert!(s.get(key(1)).await.unwrap().is_some());
    clock.advance(Duration::from_millis(1));
    assert_eq!(
        s.get(key(1)).await.unwrap(),
        None,
        "expired at exactly created + ttl"
    );
    assert!(s.get(key(2)).await.unwrap().is_some());
    s.flush().await.unwrap();
    let stats = s.stats().await.unwrap();
    assert_eq!(stats.entries, 1, "expired entries are removed: {stats:?}");
    let listed = s.list(ListFilter::default()).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].0, key(2));

    clock.advance(Duration::from_secs(600));
    assert_eq!(s.get(key(2)).await.unwrap(), None);
    assert!(s.list(ListFilter::default()).await.unwrap().is_empty());
    assert!(s.find_prefix(&key(2).hex()).await.unwrap().is_none());
    assert_eq!(s.stats().await.unwrap().entries, 0);
}

pub(crate) async fn no_ttl_keeps_entries_forever<F, Fut>(open: &F)
where
    F: Fn(StoreOptions) -> Fut,
    Fut: Future<Output = Opened>,
{
    let clock = ManualClock::new(T0);
    let opened = open(options(&clock, 1 << 20)).await;
    let s = &opened.store;
    s.put(key(1), json_entry("m", T0, "{}")).unwrap();
    s.flush().await.unwrap();
    clock.advance(Duration::from_millis(100 * 365 * DAY_MS));
    let got = s.get(key(1)).await.unwrap().unwrap();
    assert_eq!(got.meta.expires_ms, None);
}

pub(crate) async fn eviction_removes_oldest_first_at_the_size_bound<F, Fut>(open: &F)
where
    F: Fn(StoreOptions) -> Fut,
    Fut: Future<Output = Opened>,
{
    let clock = ManualClock::new(T0);
    let one = json_entry("m", T0, &"x".repeat(1000)).size();
    let opened = open(options(&clock, 3 * one + one / 2)).await;
    let s = &opened.store;
    // Put out of creation order: eviction follows created_ms, not arrival.
    for (n, created) in [(2u8, T0 + 2), (1, T0 + 1), (3, T0 + 3)] {
        s.put(key(n), json_entry("m", created, &"x".repeat(1000)))
            .unwrap();
    }
    s.flush().await.unwrap();
    assert_eq!(s.stats().await.unwrap().entries, 3);
    s.put(key(4), json_entry("m", T0 + 4, &"x".repeat(1000)))
        .unwrap();
    s.flush().await.unwrap();
    assert_eq!(s.get(key(1)).await.unwrap(), None, "the oldest went first");
    for n in 2..=4 {
        assert!(s.get(key(n)).await.unwrap().is_some(), "key {n}");
    }
    let stats = s.stats().await.unwrap();
    assert_eq!((stats.entries, stats.bytes), (3, 3 * one));
    assert_eq!(stats.oldest_ms, Some(T0 + 2));

    // One bigger entry pushes out as many old ones as it needs.
    let big = json_entry("m", T0 + 5, &"y".repeat(2500));
    s.put(key(5), big.clone()).unwrap();
    s.flush().await.unwrap();
    let stats = s.stats().await.unwrap();
    assert!(stats.bytes <= 3 * one + one / 2, "{stats:?}");
    assert_eq!(stats.entries, 2);
    assert!(s.get(key(4)).await.unwrap().is_some());
    assert!(s.get(key(5)).await.unwrap().is_some());
}

/// Many small entries (what a store keeps in memory, if it does): whatever the store evicts at its
/// bound is a miss from then on.
pub(crate) async fn evicted_entries_are_never_served<F, Fut>(open: &F)
where
    F: Fn(StoreOptions) -> Fut,
    Fut: Future<Output = Opened>,
{
    let clock = ManualClock::new(T0);
    let one = json_entry("m", T0, "{}").size();
    let opened = open(options(&clock, 100 * one)).await;
    let s = &opened.store;
    for n in 0..100u8 {
        s.put(key(n), json_entry("m", T0 + u64::from(n), "{}"))
            .unwrap();
    }
    s.flush().await.unwrap();
    for n in 0..100u8 {
        assert!(s.get(key(n)).await.unwrap().is_some(), "key {n}");
    }
    // Twenty more push out the twenty oldest.
    for n in 100..120u8 {
        s.put(key(n), json_entry("m", T0 + u64::from(n), "{}"))
            .unwrap();
    }
    s.flush().await.unwrap();
    for n in 0..20u8 {
        assert_eq!(s.get(key(n)).await.unwrap(), None, "evicted key {n}");
    }
    for n in 20..120u8 {
        assert!(s.get(key(n)).await.unwrap().is_some(), "key {n}");
    }
    assert_eq!(s.stats().await.unwrap().entries, 100);
}

pub(crate) async fn too_large_entries_are_refused<F, Fut>(open: &F)
where
    F: Fn(StoreOptions) -> Fut,
    Fut: Future<Output = Opened>,
{
    let clock = ManualClock::new(T0);
    let opened = open(options(&clock, 500)).await;
    let s = &opened.store;
    let err = s
        .put(key(1), json_entry("m", T0, &"x".repeat(1000)))
        .unwrap_err();
    assert!(
        matches!(err, StoreError::TooLarge { max: 500, .. }),
        "{err}"
    );
    s.flush().await.unwrap();
    assert_eq!(s.get(key(1)).await.unwrap(), None);
    assert_eq!(s.stats().await.unwrap().entries, 0);
}

pub(crate) async fn list_newest_first_with_model_filter_and_limit<F, Fut>(open: &F)
where
    F: Fn(StoreOptions) -> Fut,
    Fut: Future<Output = Opened>,
{
    let clock = ManualClock::new(T0);
    let opened = open(options(&clock, 1 << 20)).await;
    let s = &opened.store;
    let models = ["gpt-4o", "claude", "gpt-4o", "claude", "gpt-4o"];
    for (i, model) in models.iter().enumerate() {
        let n = i as u8 + 1;
        let mut e = json_entry(model, T0 + u64::from(n), "{}");
        // Entries 2 and 3 were recorded in one agent session.
        if n == 2 || n == 3 {
            e.meta.recorded.session = Some("s-1".into());
        }
        s.put(key(n), e).unwrap();
    }
    // list reflects writes queued before it, without an explicit flush.
    let all = s.list(ListFilter::default()).await.unwrap();
    let keys: Vec<CacheKey> = all.iter().map(|(k, _, _)| *k).collect();
    assert_eq!(keys, [key(5), key(4), key(3), key(2), key(1)]);
    for (k, meta, size) in &all {
        let entry = s.get(*k).await.unwrap().unwrap();
        assert_eq!(*size, entry.size());
        assert_eq!(meta.model, entry.meta.model);
    }
    let gpt = s
        .list(ListFilter {
            model: Some("gpt-4o".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let keys: Vec<CacheKey> = gpt.iter().map(|(k, _, _)| *k).collect();
    assert_eq!(keys, [key(5), key(3), key(1)]);
    let newest = s
        .list(ListFilter {
            model: Some("claude".into()),
            limit: Some(1),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(newest.len(), 1);
    assert_eq!(newest[0].0, key(4));
    assert_eq!(newest[0].1.created_ms, T0 + 4);
    let none = s
        .list(ListFilter {
            model: Some("nope".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(none.is_empty());
    let session = s
        .list(ListFilter {
            session: Some("s-1".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let keys: Vec<CacheKey> = session.iter().map(|(k, _, _)| *k).collect();
    assert_eq!(keys, [key(3), key(2)], "a session's entries, newest first");
    assert_eq!(session[0].1.recorded.session.as_deref(), Some("s-1"));
}

pub(crate) async fn clear_all_or_by_model<F, Fut>(open: &F)
where
    F: Fn(StoreOptions) -> Fut,
    Fut: Future<Output = Opened>,
{
    let clock = ManualClock::new(T0);
    let opened = open(options(&clock, 1 << 20)).await;
    let s = &opened.store;
    for (n, model) in [(1u8, "gpt-4o"), (2, "claude"), (3, "gpt-4o"), (4, "claude")] {
        s.put(key(n), json_entry(model, T0 + u64::from(n), "{}"))
            .unwrap();
    }
    // Queued puts are applied before the clear.
    assert_eq!(s.clear(Some("claude".into())).await.unwrap(), 2);
    assert_eq!(s.get(key(2)).await.unwrap(), None);
    assert!(s.get(key(1)).await.unwrap().is_some());
    assert_eq!(s.clear(Some("claude".into())).await.unwrap(), 0);
    assert_eq!(s.clear(None).await.unwrap(), 2);
    let stats = s.stats().await.unwrap();
    assert_eq!((stats.entries, stats.bytes, stats.hits), (0, 0, 0));
    assert_eq!(stats.oldest_ms, None);
    assert!(s.list(ListFilter::default()).await.unwrap().is_empty());
    // Still usable afterwards.
    s.put(key(7), json_entry("m", T0, "{}")).unwrap();
    s.flush().await.unwrap();
    assert_eq!(s.stats().await.unwrap().entries, 1);
}

pub(crate) async fn remove_entries<F, Fut>(open: &F)
where
    F: Fn(StoreOptions) -> Fut,
    Fut: Future<Output = Opened>,
{
    let clock = ManualClock::new(T0);
    let opened = open(options(&clock, 1 << 20)).await;
    let s = &opened.store;
    s.put(key(1), json_entry("m", T0, "{}")).unwrap();
    s.put(key(2), json_entry("m", T0, "{}")).unwrap();
    s.flush().await.unwrap();
    assert!(s.remove(key(1)).await.unwrap());
    assert!(!s.remove(key(1)).await.unwrap());
    assert_eq!(s.get(key(1)).await.unwrap(), None);
    // Removing right after a put (still queued) removes it too.
    s.put(key(3), json_entry("m", T0, "{}")).unwrap();
    assert!(s.remove(key(3)).await.unwrap());
    assert_eq!(s.get(key(3)).await.unwrap(), None);
    assert_eq!(s.stats().await.unwrap().entries, 1);
}

pub(crate) async fn prefix_lookup_unique_ambiguous_none<F, Fut>(open: &F)
where
    F: Fn(StoreOptions) -> Fut,
    Fut: Future<Output = Opened>,
{
    let clock = ManualClock::new(T0);
    let opened = open(options(&clock, 1 << 20)).await;
    let s = &opened.store;
    let mut a = [0x11; 32];
    a[..2].copy_from_slice(&[0xab, 0xcd]);
    let mut b = [0x22; 32];
    b[..2].copy_from_slice(&[0xab, 0xce]);
    let (a, b) = (CacheKey::from_bytes(a), CacheKey::from_bytes(b));
    let entry_a = json_entry("a", T0, r#"{"a":1}"#);
    s.put(a, entry_a.clone()).unwrap();
    s.put(b, json_entry("b", T0, r#"{"b":1}"#)).unwrap();

    let (k, e) = s.find_prefix("abcd").await.unwrap().unwrap();
    assert_eq!((k, e), (a, entry_a.clone()));
    assert_eq!(s.find_prefix("ABCE").await.unwrap().unwrap().0, b);
    assert_eq!(s.find_prefix(&a.hex()).await.unwrap().unwrap().0, a);
    assert_eq!(s.find_prefix(&a.short()).await.unwrap().unwrap().0, a);
    let err = s.find_prefix("abc").await.unwrap_err();
    assert!(
        matches!(&err, StoreError::AmbiguousPrefix { prefix } if prefix == "abc"),
        "{err}"
    );
    assert!(matches!(
        s.find_prefix("a").await,
        Err(StoreError::AmbiguousPrefix { .. })
    ));
    assert!(s.find_prefix("ff").await.unwrap().is_none());
    assert!(s.find_prefix("abcf").await.unwrap().is_none());
    assert!(matches!(
        s.find_prefix("xyz").await,
        Err(StoreError::BadKey { .. })
    ));
    assert!(matches!(
        s.find_prefix("").await,
        Err(StoreError::BadKey { .. })
    ));
}

pub(crate) async fn export_clear_import_roundtrip<F, Fut>(open: &F)
where
    F: Fn(StoreOptions) -> Fut,
    Fut: Future<Output = Opened>,
{
    let clock = ManualClock::new(T0);
    let opened = open(options(&clock, 1 << 20)).await;
    let s = &opened.store;
    s.put(key(1), json_entry("gpt-4o", T0, r#"{"id":"x"}"#))
        .unwrap();
    s.put(key(2), sse_entry("claude", T0 + 1)).unwrap();
    s.flush().await.unwrap();
    assert!(s.get(key(2)).await.unwrap().is_some());

    // Export: every listed entry, as one line each.
    let mut file = String::new();
    let mut exported = Vec::new();
    for (k, _, _) in s.list(ListFilter::default()).await.unwrap() {
        let (found, entry) = s.find_prefix(&k.hex()).await.unwrap().unwrap();
        file.push_str(&entry.to_jsonl_line(&found));
        file.push('\n');
        exported.push((found, entry));
    }
    assert_eq!(exported.len(), 2);
    assert_eq!(s.clear(None).await.unwrap(), 2);
    assert_eq!(s.get(key(1)).await.unwrap(), None);

    // Import: the same keys and entries, hits and expiry included.
    for line in file.lines() {
        let (k, entry) = Entry::from_jsonl_line(line).unwrap();
        s.put(k, entry).unwrap();
    }
    s.flush().await.unwrap();
    let hits: Vec<u64> = exported.iter().map(|(_, e)| e.meta.hits).collect();
    assert_eq!(
        hits.iter().sum::<u64>(),
        1,
        "the one hit before export travels with it"
    );
    for (k, entry) in exported {
        assert_eq!(s.get(k).await.unwrap(), Some(entry));
    }
}

pub(crate) async fn stats_totals<F, Fut>(open: &F)
where
    F: Fn(StoreOptions) -> Fut,
    Fut: Future<Output = Opened>,
{
    let clock = ManualClock::new(T0);
    let opened = open(options(&clock, 1 << 20)).await;
    let s = &opened.store;
    assert_eq!(s.stats().await.unwrap(), Stats::default());
    let a = json_entry("m", T0 + 10, "{}");
    let b = sse_entry("m", T0 + 20);
    let c = json_entry("m", T0 + 15, &"z".repeat(100));
    let total = a.size() + b.size() + c.size();
    s.put(key(1), a).unwrap();
    s.put(key(2), b).unwrap();
    s.put(key(3), c).unwrap();
    let stats = s.stats().await.unwrap();
    assert_eq!(
        stats,
        Stats {
            entries: 3,
            bytes: total,
            oldest_ms: Some(T0 + 10),
            newest_ms: Some(T0 + 20),
            hits: 0,
            write_errors: 0,
        }
    );
}

pub(crate) async fn closed_store_refuses_work<F, Fut>(open: &F)
where
    F: Fn(StoreOptions) -> Fut,
    Fut: Future<Output = Opened>,
{
    let clock = ManualClock::new(T0);
    let opened = open(options(&clock, 1 << 20)).await;
    let s = &opened.store;
    s.put(key(1), json_entry("m", T0, "{}")).unwrap();
    s.close().await.unwrap();
    assert!(matches!(
        s.put(key(2), json_entry("m", T0, "{}")),
        Err(StoreError::Closed)
    ));
    assert!(matches!(s.get(key(1)).await, Err(StoreError::Closed)));
    assert!(matches!(s.flush().await, Err(StoreError::Closed)));
}

mod redb {
    use std::io::Write;
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    use super::*;

    async fn open(opts: StoreOptions) -> Opened {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path().join("cache.redb"), opts).unwrap();
        Opened {
            store: Arc::new(store),
            _guard: Box::new(dir),
        }
    }

    store_suite!(open);

    #[tokio::test]
    async fn hot_entries_are_shared_not_copied() {
        let clock = ManualClock::new(T0);
        let opened = open(options(&clock, 1 << 20)).await;
        let s = &opened.store;
        assert!(s.shares_entries());
        s.put(key(1), json_entry("m", T0, "{}")).unwrap();
        s.flush().await.unwrap();
        let a = s.get_shared(key(1)).await.unwrap().unwrap();
        let b = s.get_shared(key(1)).await.unwrap().unwrap();
        assert!(Arc::ptr_eq(&a, &b), "the front's own Arc, twice");
        s.put(key(1), json_entry("m", T0, "{\"new\":1}")).unwrap();
        let c = s.get_shared(key(1)).await.unwrap().unwrap();
        assert!(!Arc::ptr_eq(&a, &c), "a replaced entry is a new Arc");
    }

    fn opts(clock: &ManualClock) -> StoreOptions {
        options(clock, 1 << 20)
    }

    /// Files in `dir` other than `name`.
    fn others(dir: &Path, name: &str) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().is_some_and(|n| n != name))
            .collect();
        out.sort();
        out
    }

    /// Runs `f` with `warn`-level logs captured; returns its result and the log text.
    fn capture_logs<T>(f: impl FnOnce() -> T) -> (T, String) {
        let buf = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        let out = tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8_lossy(&buf.lock().unwrap()).into_owned();
        (out, text)
    }

    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn persists_across_close_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/dir/cache.redb");
        let clock = ManualClock::new(T0);
        let json = json_entry("gpt-4o", T0, r#"{"id":"x"}"#);
        let sse = sse_entry("claude", T0 + 1);
        {
            let s = RedbStore::open(&path, opts(&clock)).unwrap();
            s.put(key(1), json.clone()).unwrap();
            s.put(key(2), sse.clone()).unwrap();
            assert!(s.get(key(1)).await.unwrap().is_some());
            // close commits what is queued (the puts and the hit) and releases the file.
            s.close().await.unwrap();
        }
        let s = RedbStore::open(&path, opts(&clock)).unwrap();
        let mut hit = json.clone();
        hit.meta.hits = 1;
        assert_eq!(s.get(key(1)).await.unwrap(), Some(hit));
        assert_eq!(s.get(key(2)).await.unwrap(), Some(sse));
        let stats = s.stats().await.unwrap();
        assert_eq!(stats.entries, 2);
        assert_eq!(stats.hits, 3, "one hit before the restart, two after");
        assert_eq!(
            others(dir.path().join("nested/dir").as_path(), "cache.redb"),
            Vec::<PathBuf>::new()
        );
    }

    #[tokio::test]
    async fn lookups_read_the_file_only_for_keys_it_may_hold() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.redb");
        let clock = ManualClock::new(T0);
        let json = json_entry("m", T0, "{}");
        {
            let s = RedbStore::open(&path, opts(&clock)).unwrap();
            assert_eq!(s.get(key(9)).await.unwrap(), None);
            assert_eq!(s.file_reads(), 0, "a key never stored is a miss at once");
            s.put(key(1), json.clone()).unwrap();
            s.put(key(2), json.clone()).unwrap();
            s.put(key(3), json.clone()).unwrap();
            s.flush().await.unwrap();
            assert!(s.remove(key(2)).await.unwrap());
            assert_eq!(s.clear(None).await.unwrap(), 2);
            // Put again after the removal and the clear: held again.
            s.put(key(3), json.clone()).unwrap();
            s.put(key(4), json.clone()).unwrap();
            s.close().await.unwrap();
        }
        // Reopened: nothing in memory but the keys, read from the file.
        let s = RedbStore::open(&path, opts(&clock)).unwrap();
        for k in [1, 2, 9] {
            assert_eq!(s.get(key(k)).await.unwrap(), None, "key {k}");
        }
        assert_eq!(s.file_reads(), 0, "removed, cleared and never-stored keys");
        assert!(s.get(key(3)).await.unwrap().is_some());
        assert!(s.get(key(4)).await.unwrap().is_some());
        assert_eq!(s.file_reads(), 2, "the two the file holds are read from it");
    }

    #[tokio::test]
    async fn an_oversized_file_is_compacted_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.redb");
        let clock = ManualClock::new(T0);
        let size = || std::fs::metadata(&path).unwrap().len();
        let big = json_entry("m", T0, &"x".repeat(256 << 10));
        {
            // 32 MiB written under a 64 MiB bound, then all but one entry cleared.
            let s = RedbStore::open(&path, options(&clock, 64 << 20)).unwrap();
            for k in 0..128 {
                s.put(key(k), big.clone()).unwrap();
            }
            s.put(key(200), json_entry("keep", T0, "{}")).unwrap();
            s.flush().await.unwrap();
            assert_eq!(s.clear(Some("m".into())).await.unwrap(), 128);
            s.close().await.unwrap();
        }
        let bloated = size();
        assert!(
            bloated > redb_store::open::oversized_above(1 << 20),
            "{bloated}"
        );
        // Within what a 64 MiB bound allows: left as it is.
        RedbStore::open(&path, options(&clock, 64 << 20))
            .unwrap()
            .close()
            .await
            .unwrap();
        assert_eq!(size(), bloated);
        // Far over what a 1 MiB bound allows: compacted, the entry kept.
        let s = RedbStore::open(&path, options(&clock, 1 << 20)).unwrap();
        let compacted = size();
        assert!(compacted < bloated / 4, "{compacted} of {bloated}");
        assert!(s.get(key(200)).await.unwrap().is_some());
        assert_eq!(s.stats().await.unwrap().entries, 1);
    }

    #[tokio::test]
    async fn dropping_without_close_still_commits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.redb");
        let clock = ManualClock::new(T0);
        let s = RedbStore::open(&path, opts(&clock)).unwrap();
        s.put(key(1), json_entry("m", T0, "{}")).unwrap();
        drop(s);
        // The writer finishes in the background; once it has, the file opens with the entry.
        // (A retry loop on Locked, bounded, not a timed sleep.)
        let mut attempts = 0;
        let s = loop {
            match RedbStore::open(&path, opts(&clock)) {
                Ok(s) => break s,
                Err(StoreError::Locked { .. }) if attempts < 1_000_000 => {
                    attempts += 1;
                    tokio::task::yield_now().await;
                }
                Err(e) => panic!("{e}"),
            }
        };
        assert!(s.get(key(1)).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_held_file_is_locked_not_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.redb");
        let clock = ManualClock::new(T0);
        let first = RedbStore::open(&path, opts(&clock)).unwrap();
        first.put(key(1), json_entry("m", T0, "{}")).unwrap();
        first.flush().await.unwrap();
        let (second, logs) = capture_logs(|| RedbStore::open(&path, opts(&clock)));
        match second {
            Err(StoreError::Locked { path: p }) => assert_eq!(p, path),
            Err(e) => panic!("expected Locked, got {e}"),
            Ok(_) => panic!("expected Locked, got a store"),
        }
        assert!(logs.is_empty(), "{logs}");
        assert!(
            others(dir.path(), "cache.redb").is_empty(),
            "nothing moved aside"
        );
        assert!(first.get(key(1)).await.unwrap().is_some());
        first.close().await.unwrap();
        let again = RedbStore::open(&path, opts(&clock)).unwrap();
        assert!(again.get(key(1)).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_corrupt_file_is_moved_aside_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.redb");
        let garbage: Vec<u8> = (0..100_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(&path, &garbage).unwrap();
        let clock = ManualClock::new(T0);
        let (store, logs) = capture_logs(|| RedbStore::open(&path, opts(&clock)));
        let store = store.unwrap();
        assert!(logs.contains("WARN"), "{logs}");
        assert!(logs.contains("moved it aside"), "{logs}");
        assert_eq!(logs.matches("WARN").count(), 1, "{logs}");
        let moved = dir.path().join(format!("cache.redb.corrupt-{}", T0 / 1000));
        assert_eq!(
            others(dir.path(), "cache.redb"),
            std::slice::from_ref(&moved)
        );
        assert_eq!(
            std::fs::read(&moved).unwrap(),
            garbage,
            "the old file is kept as it was"
        );
        // The new store is empty and works.
        assert_eq!(store.stats().await.unwrap().entries, 0);
        store.put(key(1), json_entry("m", T0, "{}")).unwrap();
        store.flush().await.unwrap();
        assert!(store.get(key(1)).await.unwrap().is_some());
        store.close().await.unwrap();

        // A second corrupt file in the same second does not overwrite the first one.
        std::fs::write(&path, b"not a database at all").unwrap();
        let (again, _) = capture_logs(|| RedbStore::open(&path, opts(&clock)));
        again.unwrap().close().await.unwrap();
        assert_eq!(others(dir.path(), "cache.redb").len(), 2);
        assert_eq!(std::fs::read(&moved).unwrap(), garbage);
    }

    #[tokio::test]
    async fn a_truncated_file_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.redb");
        let clock = ManualClock::new(T0);
        let s = RedbStore::open(&path, opts(&clock)).unwrap();
        s.put(key(1), json_entry("m", T0, "{}")).unwrap();
        s.close().await.unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 3]).unwrap();
        let (store, logs) = capture_logs(|| RedbStore::open(&path, opts(&clock)));
        let store = store.unwrap();
        assert!(logs.contains("moved it aside"), "{logs}");
        assert_eq!(others(dir.path(), "cache.redb").len(), 1);
        store.put(key(2), json_entry("m", T0, "{}")).unwrap();
        store.flush().await.unwrap();
        assert!(store.get(key(2)).await.unwrap().is_some());
    }

    /// Writes `(schema, key)` versions into a fresh store's file, as an older or newer relay would.
    async fn file_with_versions(path: &Path, schema: u64, key_version: u64) {
        let clock = ManualClock::new(T0);
        let s = RedbStore::open(path, opts(&clock)).unwrap();
        s.put(key(1), json_entry("m", T0, "{}")).unwrap();
        s.close().await.unwrap();
        let db = ::redb::Database::open(path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn
                .open_table(::redb::TableDefinition::<&str, u64>::new("meta"))
                .unwrap();
            meta.insert("schema_version", schema).unwrap();
            meta.insert("key_version", key_version).unwrap();
        }
        txn.commit().unwrap();
    }

    #[tokio::test]
    async fn a_schema_version_mismatch_moves_the_file_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.redb");
        file_with_versions(&path, 99, KEY_VERSION).await;
        let clock = ManualClock::new(T0);
        let (store, logs) = capture_logs(|| RedbStore::open(&path, opts(&clock)));
        let store = store.unwrap();
        assert!(logs.contains("schema v99"), "{logs}");
        assert_eq!(
            others(dir.path(), "cache.redb"),
            [dir.path().join("cache.redb.old-v99")]
        );
        assert_eq!(store.get(key(1)).await.unwrap(), None, "started empty");
        assert_eq!(store.stats().await.unwrap().entries, 0);
        store.close().await.unwrap();
        // The fresh file carries this build's versions: reopening keeps it.
        let (store, logs) = capture_logs(|| RedbStore::open(&path, opts(&clock)));
        store.unwrap();
        assert!(logs.is_empty(), "{logs}");
    }

    #[tokio::test]
    async fn a_key_version_mismatch_moves_the_file_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.redb");
        file_with_versions(
            &path,
            crate::cache::redb_store::SCHEMA_VERSION,
            KEY_VERSION + 1,
        )
        .await;
        let clock = ManualClock::new(T0);
        let (store, logs) = capture_logs(|| RedbStore::open(&path, opts(&clock)));
        let store = store.unwrap();
        assert!(
            logs.contains(&format!("key v{}", KEY_VERSION + 1)),
            "{logs}"
        );
        let moved = dir.path().join(format!(
            "cache.redb.old-v{}",
            crate::cache::redb_store::SCHEMA_VERSION
        ));
        assert_eq!(others(dir.path(), "cache.redb"), [moved]);
        assert_eq!(store.get(key(1)).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_foreign_redb_file_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.redb");
        {
            let db = ::redb::Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(::redb::TableDefinition::<u64, u64>::new("something_else"))
                .unwrap()
                .insert(1, 2)
                .unwrap();
            txn.commit().unwrap();
        }
        let clock = ManualClock::new(T0);
        let (store, logs) = capture_logs(|| RedbStore::open(&path, opts(&clock)));
        store.unwrap();
        assert!(logs.contains("schema v0"), "{logs}");
        assert_eq!(
            others(dir.path(), "cache.redb"),
            [dir.path().join("cache.redb.old-v0")]
        );
    }

    #[tokio::test]
    async fn writes_are_batched_and_all_committed() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let s: Arc<dyn Store> =
            Arc::new(RedbStore::open(dir.path().join("c.redb"), opts(&clock)).unwrap());
        let tasks: Vec<_> = (0..64u8)
            .map(|n| {
                let s = s.clone();
                tokio::spawn(async move {
                    s.put(key(n), json_entry("m", T0 + u64::from(n), "{}"))
                        .unwrap();
                    assert!(s.get(key(n)).await.unwrap().is_some());
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        s.flush().await.unwrap();
        let stats = s.stats().await.unwrap();
        assert_eq!((stats.entries, stats.hits), (64, 64));
    }

    #[test]
    fn default_path_is_under_the_data_dir() {
        if let Some(p) = default_path() {
            assert!(p.ends_with("relay/cache.redb"), "{}", p.display());
        }
    }
}
