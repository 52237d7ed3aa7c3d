//! Formatting, server URLs, and whole commands run against a store opened in-process.

use super::*;
use crate::cache::entry::tests::{json_entry, sse_entry};
use crate::cache::tests::{options, T0};
use crate::cache::{CacheKey, RedbStore};
use crate::clock::ManualClock;

const MIN: u64 = 60_000;
const HOUR: u64 = 60 * MIN;
const DAY: u64 = 24 * HOUR;

#[test]
fn spans_and_sizes_read_like_a_person_wrote_them() {
    assert_eq!(format_span(0), "0s");
    assert_eq!(format_span(59_999), "59s");
    assert_eq!(format_span(3 * MIN + 59_000), "3m");
    assert_eq!(format_span(2 * HOUR + 5 * MIN), "2h");
    assert_eq!(format_span(5 * DAY + 23 * HOUR), "5d");
    assert_eq!(format_size(0), "0 B");
    assert_eq!(format_size(1023), "1023 B");
    assert_eq!(format_size(1024), "1.0 KiB");
    assert_eq!(format_size(1229), "1.2 KiB");
    assert_eq!(format_size(1024 * 1024 - 1), "1.0 MiB");
    assert_eq!(format_size(5 * 1024 * 1024 * 1024 + 1), "5.0 GiB");
    assert_eq!(
        format_when(T0, T0 + 3 * MIN),
        "2023-11-14T22:13:20Z (3m ago)"
    );
    assert_eq!(
        format_when(T0 + 7 * DAY, T0),
        "2023-11-21T22:13:20Z (in 7d)"
    );
}

#[test]
fn server_urls_and_listen_addresses() {
    for ok in [
        "http://127.0.0.1:8080",
        "http://127.0.0.1:8080/",
        "127.0.0.1:8080",
        " http://127.0.0.1:8080 ",
    ] {
        assert_eq!(server_base(ok).unwrap(), "http://127.0.0.1:8080", "{ok}");
    }
    assert_eq!(server_base("http://[::1]:9").unwrap(), "http://[::1]:9");
    for (bad, why) in [
        ("https://127.0.0.1:8080", "plain http"),
        ("http://127.0.0.1:8080/v1", "only the scheme"),
        ("http://127.0.0.1:8080/?a=1", "only the scheme"),
        ("http://", "not a URL"),
    ] {
        let e = server_base(bad).unwrap_err().to_string();
        assert!(e.contains(why), "{bad}: {e}");
    }
    let base = |s: &str| listen_base(s.parse().unwrap());
    assert_eq!(base("0.0.0.0:8080"), "http://127.0.0.1:8080");
    assert_eq!(base("[::]:8080"), "http://[::1]:8080");
    assert_eq!(base("127.0.0.1:1"), "http://127.0.0.1:1");
    assert_eq!(base("10.1.2.3:80"), "http://10.1.2.3:80");
}

fn summary(short: &str, provider: &str, model: Option<&str>, created_ms: u64) -> EntrySummary {
    EntrySummary {
        key: format!("{short}{}", "0".repeat(64 - short.len())),
        short: short.into(),
        provider: provider.into(),
        model: model.map(Into::into),
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        status: 200,
        created_ms,
        expires_ms: None,
        size: 0,
        hits: 0,
        client: None,
        session: None,
        prompt: None,
    }
}

#[test]
fn ls_is_an_aligned_table() {
    let now = T0 + 10 * DAY;
    let mut a = summary("3f2a9c1b0d4e", "openai", Some("gpt-4o"), now - 3 * MIN);
    a.size = 1229;
    a.hits = 4;
    let mut b = summary(
        "00ff00ff00ff",
        "anthropic",
        Some("claude-sonnet-4"),
        now - 5 * DAY,
    );
    b.size = 512;
    b.hits = 120;
    b.path = "/v1/messages".into();
    b.client = Some("claude-code 2.1.197".into());
    b.session = Some("1f12ec93-fd3c-4694-a2bc".into());
    b.prompt = Some("say hi".into());
    let c = summary("abcdefabcdef", "openai", None, now - 2 * HOUR);
    let table = render_ls(&[a, b, c], None, now);
    let want = "\
KEY           PROVIDER   MODEL            AGE     SIZE  HITS  CLIENT               SESSION           REQUEST                    PROMPT
3f2a9c1b0d4e  openai     gpt-4o            3m  1.2 KiB     4  -                    -                 POST /v1/chat/completions  -
00ff00ff00ff  anthropic  claude-sonnet-4   5d    512 B   120  claude-code 2.1.197  1f12ec93-fd3c-4…  POST /v1/messages          \"say hi\"
abcdefabcdef  openai     -                 2h      0 B     0  -                    -                 POST /v1/chat/completions  -
";
    assert_eq!(table, want, "\n{table}");
    assert_eq!(render_ls(&[], None, now), "no cache entries\n");
    assert_eq!(
        render_ls(&[], Some("gpt-4o"), now),
        "no cache entries for model gpt-4o\n"
    );
}

struct Direct {
    backend: Backend,
    clock: ManualClock,
    dir: tempfile::TempDir,
}

fn direct() -> Direct {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let path = dir.path().join("cache.redb");
    let store = RedbStore::open(&path, options(&clock, 1 << 24)).unwrap();
    Direct {
        backend: Backend::Direct {
            store: Arc::new(store),
            what: path.display().to_string(),
        },
        clock,
        dir,
    }
}

impl Direct {
    fn store(&self) -> &Arc<dyn Store> {
        match &self.backend {
            Backend::Direct { store, .. } => store,
            Backend::Remote { .. } => unreachable!(),
        }
    }

    async fn run(&self, cmd: CacheCommand) -> Result<(String, String), CliError> {
        let out = execute(&self.backend, cmd, self.clock.now_ms()).await?;
        Ok((String::from_utf8(out.stdout).unwrap(), out.stderr))
    }
}

fn key(n: u8) -> CacheKey {
    CacheKey::from_bytes([n; 32])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_against_a_store_opened_directly() {
    let d = direct();
    let s = d.store();
    s.put(key(0xa1), json_entry("gpt-4o", T0, r#"{"id":"x","n":1}"#))
        .unwrap();
    s.put(key(0xb2), sse_entry("claude", T0 + MIN)).unwrap();
    d.clock.set(T0 + 2 * HOUR);

    let (ls, _) = d
        .run(CacheCommand::Ls {
            model: None,
            session: None,
            limit: 50,
        })
        .await
        .unwrap();
    let lines: Vec<&str> = ls.lines().collect();
    assert_eq!(lines.len(), 3, "{ls}");
    assert!(lines[0].starts_with("KEY "), "{ls}");
    assert!(
        lines[1].starts_with("b2b2b2b2b2b2  anthropic  claude "),
        "{ls}"
    );
    assert!(lines[1].contains(" 1h "), "age of the SSE entry: {ls}");
    assert!(
        lines[2].starts_with("a1a1a1a1a1a1  openai     gpt-4o "),
        "{ls}"
    );
    assert!(lines[2].contains(" 2h "), "{ls}");
    let (one, _) = d
        .run(CacheCommand::Ls {
            model: None,
            session: None,
            limit: 1,
        })
        .await
        .unwrap();
    assert_eq!(one.lines().count(), 2, "{one}");

    let (show, _) = d
        .run(CacheCommand::Show { key: "A1A1".into() })
        .await
        .unwrap();
    let want_head = format!(
        "key       {}\nprovider  openai\nmodel     gpt-4o\nrequest   POST /v1/chat/completions\n\
         status    200\ncreated   2023-11-14T22:13:20Z (2h ago)\nexpires   never\n",
        key(0xa1).hex()
    );
    assert!(show.starts_with(&want_head), "{show}");
    assert!(
        show.contains("\nrequest body:\n{\n  \"messages\": [],\n  \"model\": \"gpt-4o\"\n}\n"),
        "{show}"
    );
    assert!(
        show.ends_with("\nresponse body:\n{\n  \"id\": \"x\",\n  \"n\": 1\n}\n"),
        "{show}"
    );
    let (sse, _) = d
        .run(CacheCommand::Show { key: "b2".into() })
        .await
        .unwrap();
    assert!(
        sse.ends_with(
            "\nresponse stream (3 events):\nevent: message_start\ndata: {\"type\":\"message_start\"}\n\n\
             data: \u{fffd}\u{fffd} raw\r\n\r\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"
        ),
        "{sse}"
    );
    let missing = d
        .run(CacheCommand::Show { key: "ff".into() })
        .await
        .unwrap_err();
    assert_eq!(
        missing.to_string(),
        "no cache entry has a key starting with ff"
    );
    assert!(matches!(missing, CliError::Api { status: 404, .. }));

    let (stats, _) = d.run(CacheCommand::Stats).await.unwrap();
    let path = d.dir.path().join("cache.redb");
    assert!(
        stats.starts_with(&format!(
            "store         {} (opened directly)\nbackend       redb\nentries       2\n",
            path.display()
        )),
        "{stats}"
    );
    assert!(
        stats.contains("\noldest        2023-11-14T22:13:20Z (2h ago)\n"),
        "{stats}"
    );
    assert!(stats.ends_with("\nwrite errors  0\n"), "{stats}");

    // export → clear → import, through files.
    let file = d.dir.path().join("out.jsonl");
    let (out, err) = d
        .run(CacheCommand::Export {
            file: file.clone(),
            model: None,
        })
        .await
        .unwrap();
    assert_eq!(out, "");
    assert_eq!(err, format!("exported 2 entries to {}\n", file.display()));
    let (to_stdout, err) = d
        .run(CacheCommand::Export {
            file: "-".into(),
            model: Some("claude".into()),
        })
        .await
        .unwrap();
    assert_eq!(to_stdout.lines().count(), 1);
    assert_eq!(err, "exported 1 entry\n");
    let (cleared, _) = d
        .run(CacheCommand::Clear {
            model: Some("gpt-4o".into()),
        })
        .await
        .unwrap();
    assert_eq!(cleared, "removed 1 entry of model gpt-4o\n");
    let (cleared, _) = d.run(CacheCommand::Clear { model: None }).await.unwrap();
    assert_eq!(cleared, "removed 1 entry\n");
    let (imported, _) = d
        .run(CacheCommand::Import { file: file.clone() })
        .await
        .unwrap();
    assert_eq!(
        imported,
        format!("imported 2 entries from {}\n", file.display())
    );
    assert_eq!(s.stats().await.unwrap().entries, 2);

    let missing_file = d.dir.path().join("nope.jsonl");
    let e = d
        .run(CacheCommand::Import {
            file: missing_file.clone(),
        })
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with(&format!("{}: ", missing_file.display())),
        "{e}"
    );
    std::fs::write(&missing_file, "{}\n").unwrap();
    let e = d
        .run(CacheCommand::Import { file: missing_file })
        .await
        .unwrap_err();
    assert!(
        e.to_string().starts_with("line 1: not a relay cache line"),
        "{e}"
    );
    d.backend.close().await.unwrap();
}

#[tokio::test]
async fn no_server_behind_a_held_file_says_what_to_do() {
    // A port nothing listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let cfg = Config::defaults(&crate::config::Env::empty());
    let backend =
        Backend::remote(&cfg, base.clone(), Some(PathBuf::from("/data/cache.redb"))).unwrap();
    let e = execute(&backend, CacheCommand::Stats, T0)
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!(
            "the cache file /data/cache.redb is in use by another process, and no relay answers at {base} ("
        )),
        "{msg}"
    );
    assert!(msg.contains("pass --server URL"), "{msg}");
    let backend = Backend::remote(&cfg, base.clone(), None).unwrap();
    let e = execute(&backend, CacheCommand::Stats, T0)
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with(&format!("cannot reach relay at {base}: ")),
        "{e}"
    );
}
