//! `relay cache ...`: the built binary, a cleared environment (PATH, and HOME set to a temp dir), a
//! config whose `cache.path` is in a temp dir. Entries are seeded with `relay cache import` from a
//! JSONL file written with `Entry::to_jsonl_line`.
//!
//! Two situations: nothing holds the store (the CLI opens the file itself), and a server holds it
//! (here: this test process opens the redb file, which locks it, and serves
//! `relay::admin::cache::handle` over that store on 127.0.0.1:0).

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use relay::cache::{
    CacheKey, CachedBody, Entry, EntryMeta, RedbStore, SseEvent, Store, StoreOptions,
};

const MIN: u64 = 60_000;
const HOUR: u64 = 60 * MIN;
const DAY: u64 = 24 * HOUR;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A temp dir with HOME, a config naming `cache.redb` in it, and the JSONL seed file.
struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    cache: PathBuf,
}

impl Setup {
    /// `listen` is the config's `server.listen`: where the CLI looks for a server holding the file.
    fn new(listen: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("data").join("cache.redb");
        let config = dir.path().join("relay.yaml");
        std::fs::create_dir_all(dir.path().join("home")).unwrap();
        std::fs::write(
            &config,
            format!(
                "server:\n  listen: {listen}\ncache:\n  path: {}\n",
                cache.display()
            ),
        )
        .unwrap();
        Setup { dir, config, cache }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_relay"));
        cmd.arg("cache")
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .current_dir(self.dir.path())
            .env_clear()
            .env("HOME", self.dir.path().join("home"))
            .kill_on_drop(true);
        if let Some(path) = std::env::var_os("PATH") {
            cmd.env("PATH", path);
        }
        cmd
    }

    /// Runs `relay cache <args> --config <file>`.
    async fn relay(&self, args: &[&str]) -> Run {
        let out = self.command(args).output().await.expect("run relay");
        Run::from(out)
    }

    /// Writes `entries` as a JSONL file and imports it; checks the import succeeded.
    async fn seed(&self, entries: &[(CacheKey, Entry)]) {
        let file = self.path("seed.jsonl");
        write_jsonl(&file, entries);
        let run = self.relay(&["import", file.to_str().unwrap()]).await;
        run.ok();
        assert_eq!(
            run.stdout,
            format!(
                "imported {} entries from {}\n",
                entries.len(),
                file.display()
            )
        );
    }
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl From<Output> for Run {
    fn from(out: Output) -> Run {
        Run {
            code: out.status.code(),
            stdout: String::from_utf8(out.stdout).expect("utf-8 stdout"),
            stderr: String::from_utf8(out.stderr).expect("utf-8 stderr"),
        }
    }
}

impl Run {
    /// Asserts exit 0 with nothing unexpected on stderr.
    fn ok(&self) -> &Run {
        assert_eq!(
            self.code,
            Some(0),
            "stdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// Asserts exit 1, nothing on stdout, and returns stderr.
    fn failed(&self) -> &str {
        assert_eq!(
            self.code,
            Some(1),
            "stdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        assert_eq!(self.stdout, "");
        &self.stderr
    }

    /// The rows of an `ls` table (header checked, then dropped).
    fn rows(&self) -> Vec<&str> {
        let mut lines = self.stdout.lines();
        let header = lines.next().expect("a header");
        assert!(
            header.starts_with("KEY           PROVIDER"),
            "{}",
            self.stdout
        );
        lines.collect()
    }
}

fn key(first: u8, fill: u8) -> CacheKey {
    let mut b = [fill; 32];
    b[0] = first;
    CacheKey::from_bytes(b)
}

fn meta(provider: &str, model: &str, path: &str, created_ms: u64) -> EntryMeta {
    EntryMeta {
        provider: provider.into(),
        model: Some(model.into()),
        method: "POST".into(),
        path: path.into(),
        status: 200,
        headers: vec![("content-type".into(), "application/json".into())],
        created_ms,
        expires_ms: Some(created_ms + 30 * DAY),
        hits: 0,
        recorded: Default::default(),
    }
}

/// Three entries recorded 3.5 minutes, 2.5 hours and 5.5 days ago (each in the middle of its
/// age bucket, so a slow run never changes the printed age).
fn entries() -> Vec<(CacheKey, Entry)> {
    let now = now_ms();
    let chat = Entry {
        meta: meta(
            "openai",
            "gpt-4o",
            "/v1/chat/completions",
            now - 3 * MIN - 30_000,
        ),
        request: Bytes::from_static(
            br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#,
        ),
        response: CachedBody::Json(Bytes::from_static(
            br#"{"id":"chatcmpl-1","choices":[{"message":{"content":"hello"}}]}"#,
        )),
    };
    let mut stream_meta = meta(
        "anthropic",
        "claude-sonnet-4",
        "/v1/messages",
        now - 2 * HOUR - 30 * MIN,
    );
    stream_meta.headers = vec![("content-type".into(), "text/event-stream".into())];
    let stream = Entry {
        meta: stream_meta,
        request: Bytes::from_static(br#"{"model":"claude-sonnet-4","stream":true}"#),
        response: CachedBody::Sse(vec![
            SseEvent {
                delay_ms: 0,
                data: Bytes::from_static(
                    b"event: message_start\ndata: {\"type\":\"message_start\"}\n\n",
                ),
            },
            SseEvent {
                delay_ms: 40,
                data: Bytes::from_static(
                    b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
                ),
            },
        ]),
    };
    let mut old = chat.clone();
    old.meta = meta(
        "openai",
        "gpt-4o-mini",
        "/v1/chat/completions",
        now - 5 * DAY - 12 * HOUR,
    );
    old.meta.hits = 7;
    vec![
        (key(0x3f, 0x11), chat),
        (key(0x7a, 0x22), stream),
        (key(0xc0, 0x33), old),
    ]
}

fn write_jsonl(file: &Path, entries: &[(CacheKey, Entry)]) {
    let mut text = String::new();
    for (k, e) in entries {
        text.push_str(&e.to_jsonl_line(k));
        text.push('\n');
    }
    std::fs::write(file, text).unwrap();
}

/// Checks an `ls` of [`entries`]: newest first, aligned, ages and sizes for people.
fn check_ls(run: &Run, all: &[(CacheKey, Entry)]) {
    run.ok();
    let rows = run.rows();
    assert_eq!(rows.len(), 3, "{}", run.stdout);
    let expect = [
        (&all[0], "openai     gpt-4o           ", "3m"),
        (&all[1], "anthropic  claude-sonnet-4  ", "2h"),
        (&all[2], "openai     gpt-4o-mini      ", "5d"),
    ];
    for (row, ((k, e), cols, age)) in rows.iter().zip(expect) {
        let start = format!("{}  {cols}", k.short());
        assert!(
            row.starts_with(&start),
            "{row:?} should start with {start:?}"
        );
        let size = e.size();
        assert!(size < 1024, "sizes print in bytes here");
        let tail: Vec<&str> = row[start.len()..].split_whitespace().collect();
        assert_eq!(
            tail,
            [
                age,
                &size.to_string(),
                "B",
                &e.meta.hits.to_string(),
                "-",
                "-",
                "POST",
                &e.meta.path,
                "-"
            ],
            "{row:?}"
        );
    }
    // Columns line up: every row is as wide as the header up to the last column.
    let header = run.stdout.lines().next().unwrap();
    let request_col = header.find("REQUEST").unwrap();
    for row in &rows {
        assert_eq!(row.find("POST"), Some(request_col), "{}", run.stdout);
    }
}

#[tokio::test]
async fn cache_commands_on_the_file_directly() {
    // Nothing listens on the configured address; nothing needs to.
    let s = Setup::new("127.0.0.1:1");
    let all = entries();
    s.seed(&all).await;
    assert!(s.cache.exists());

    check_ls(&s.relay(&["ls"]).await, &all);
    let limited = s.relay(&["ls", "--limit", "1"]).await;
    limited.ok();
    assert_eq!(limited.rows().len(), 1);
    assert!(limited.rows()[0].starts_with(&all[0].0.short()));
    let by_model = s.relay(&["ls", "--model", "gpt-4o-mini"]).await;
    by_model.ok();
    assert_eq!(by_model.rows().len(), 1);
    assert!(by_model.rows()[0].starts_with(&all[2].0.short()));

    // show: metadata, pretty request, pretty JSON response.
    let show = s.relay(&["show", "3f11"]).await;
    show.ok();
    let k = all[0].0;
    assert!(
        show.stdout.starts_with(&format!(
            "key       {}\nprovider  openai\nmodel     gpt-4o\nrequest   POST /v1/chat/completions\nstatus    200\ncreated   ",
            k.hex()
        )),
        "{}",
        show.stdout
    );
    assert!(show.stdout.contains(" (3m ago)\n"), "{}", show.stdout);
    assert!(
        show.stdout.contains(
            "\nrequest body:\n{\n  \"messages\": [\n    {\n      \"content\": \"hi\",\n      \"role\": \"user\"\n    }\n  ],\n  \"model\": \"gpt-4o\"\n}\n"
        ),
        "{}",
        show.stdout
    );
    assert!(
        show.stdout.ends_with(
            "\nresponse body:\n{\n  \"choices\": [\n    {\n      \"message\": {\n        \"content\": \"hello\"\n      }\n    }\n  ],\n  \"id\": \"chatcmpl-1\"\n}\n"
        ),
        "{}",
        show.stdout
    );
    // A stream is shown as its events, byte for byte.
    let sse = s.relay(&["show", &all[1].0.short()]).await;
    sse.ok();
    assert!(
        sse.stdout.ends_with(
            "\nresponse stream (2 events):\nevent: message_start\ndata: {\"type\":\"message_start\"}\n\n\
             event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"
        ),
        "{}",
        sse.stdout
    );

    let stats = s.relay(&["stats"]).await;
    stats.ok();
    let bytes: u64 = all.iter().map(|(_, e)| e.size()).sum();
    assert!(
        stats.stdout.starts_with(&format!(
            "store         {} (opened directly)\nbackend       redb\nentries       3\nsize          {bytes} B ({bytes} bytes)\nhits          7\noldest        ",
            s.cache.display()
        )),
        "{}",
        stats.stdout
    );
    assert!(
        stats.stdout.contains(" (5d ago)\nnewest        "),
        "{}",
        stats.stdout
    );
    assert!(
        stats.stdout.ends_with(" (3m ago)\nwrite errors  0\n"),
        "{}",
        stats.stdout
    );

    // export: the file, the count on stderr; the same entries come back.
    let out = s.path("out.jsonl");
    let export = s.relay(&["export", out.to_str().unwrap()]).await;
    export.ok();
    assert_eq!(export.stdout, "");
    assert!(
        export
            .stderr
            .ends_with(&format!("exported 3 entries to {}\n", out.display())),
        "{}",
        export.stderr
    );
    let text = std::fs::read_to_string(&out).unwrap();
    let back: Vec<(CacheKey, Entry)> = text
        .lines()
        .map(|l| Entry::from_jsonl_line(l).unwrap())
        .collect();
    assert_eq!(back, all, "newest first, entries as imported");
    let to_stdout = s
        .relay(&["export", "-", "--model", "claude-sonnet-4"])
        .await;
    to_stdout.ok();
    assert_eq!(
        to_stdout.stdout,
        format!("{}\n", all[1].1.to_jsonl_line(&all[1].0))
    );
    assert!(
        to_stdout.stderr.ends_with("exported 1 entry\n"),
        "{}",
        to_stdout.stderr
    );

    // clear one model, then everything; import brings the export back.
    let clear = s.relay(&["clear", "--model", "gpt-4o"]).await;
    clear.ok();
    assert_eq!(clear.stdout, "removed 1 entry of model gpt-4o\n");
    let left = s.relay(&["ls"]).await;
    left.ok();
    let rows = left.rows();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| !r.starts_with(&all[0].0.short())));
    let clear = s.relay(&["clear"]).await;
    clear.ok();
    assert_eq!(clear.stdout, "removed 2 entries\n");
    let empty = s.relay(&["ls"]).await;
    empty.ok();
    assert_eq!(empty.stdout, "no cache entries\n");
    let import = s.relay(&["import", out.to_str().unwrap()]).await;
    import.ok();
    assert_eq!(
        import.stdout,
        format!("imported 3 entries from {}\n", out.display())
    );
    check_ls(&s.relay(&["ls"]).await, &all);
}

#[tokio::test]
async fn errors_exit_1_with_a_clear_message() {
    let s = Setup::new("127.0.0.1:1");
    let mut all = entries();
    // Two keys sharing the prefix "7a22".
    let mut twin = all[1].clone();
    twin.0 = {
        let mut b = *all[1].0.as_bytes();
        b[31] = 0;
        CacheKey::from_bytes(b)
    };
    all.push(twin);
    s.seed(&all).await;

    let run = s.relay(&["show", "ffff"]).await;
    assert_eq!(
        run.failed(),
        "error: no cache entry has a key starting with ffff\n"
    );
    let run = s.relay(&["show", "7a22"]).await;
    assert_eq!(
        run.failed(),
        "error: cache key prefix 7a22 matches several entries; give more characters\n"
    );
    let run = s.relay(&["show", "xyz"]).await;
    assert!(run.failed().contains("\"xyz\""), "{}", run.stderr);

    // A bad line: nothing imported, the line named.
    s.relay(&["clear"]).await.ok();
    let bad = s.path("bad.jsonl");
    std::fs::write(
        &bad,
        format!(
            "{}\n{{\"format\":\"nope\"}}\n",
            all[0].1.to_jsonl_line(&all[0].0)
        ),
    )
    .unwrap();
    let run = s.relay(&["import", bad.to_str().unwrap()]).await;
    let err = run.failed();
    assert!(err.starts_with("error: line 2: "), "{err}");
    assert!(err.ends_with("nothing was imported\n"), "{err}");
    let empty = s.relay(&["ls"]).await;
    empty.ok();
    assert_eq!(empty.stdout, "no cache entries\n");

    let missing = s.path("missing.jsonl");
    let run = s.relay(&["import", missing.to_str().unwrap()]).await;
    assert!(
        run.failed()
            .starts_with(&format!("error: {}: ", missing.display())),
        "{}",
        run.stderr
    );
    let run = s.relay(&["ls", "--server", "https://127.0.0.1:1"]).await;
    assert!(
        run.failed().starts_with("error: invalid --server URL"),
        "{}",
        run.stderr
    );
}

/// The admin API over `store` on `listener`, as `relay serve` mounts it. Aborted when dropped.
struct AdminServer {
    task: Option<tokio::task::JoinHandle<()>>,
}

impl AdminServer {
    fn start(store: Arc<dyn Store>, listener: tokio::net::TcpListener) -> AdminServer {
        let task = tokio::spawn(async move {
            loop {
                let Ok((io, _)) = listener.accept().await else {
                    return;
                };
                let store = store.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let store = store.clone();
                        async move {
                            let resp = relay::admin::cache::handle(&store, req).await;
                            Ok::<_, Infallible>(resp.map(Full::new))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(io), svc)
                        .await;
                });
            }
        });
        AdminServer { task: Some(task) }
    }

    /// Stops accepting; returns once the listening socket is closed.
    async fn stop(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_file_is_reached_through_the_server() {
    // The "server" address is bound first so the config can name it; it serves later.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listen = listener.local_addr().unwrap();
    let s = Setup::new(&listen.to_string());
    let all = entries();
    // Seeded and listed while nothing holds the file: the direct output, to compare with.
    s.seed(&all).await;
    let direct_ls = s.relay(&["ls"]).await;
    check_ls(&direct_ls, &all);
    let direct_show = s.relay(&["show", "7a"]).await;
    direct_show.ok();

    // "relay serve": this process opens (and so locks) the file and serves its admin API on the
    // config's server.listen.
    let store: Arc<dyn Store> =
        Arc::new(RedbStore::open(&s.cache, StoreOptions::default()).unwrap());
    let server = AdminServer::start(store.clone(), listener);

    // The file is locked: the CLI goes to server.listen, and prints the same.
    let ls = s.relay(&["ls"]).await;
    check_ls(&ls, &all);
    assert_eq!(ls.stdout, direct_ls.stdout);
    let show = s.relay(&["show", "7a"]).await;
    show.ok();
    assert_eq!(show.stdout, direct_show.stdout);
    let stats = s.relay(&["stats"]).await;
    stats.ok();
    assert!(
        stats.stdout.starts_with(&format!(
            "store         {} (through the relay at http://{listen})\nbackend       redb\nentries       3\n",
            s.cache.display()
        )),
        "{}",
        stats.stdout
    );

    // Writes through the server land in the server's store.
    let clear = s.relay(&["clear", "--model", "gpt-4o-mini"]).await;
    clear.ok();
    assert_eq!(clear.stdout, "removed 1 entry of model gpt-4o-mini\n");
    assert_eq!(store.stats().await.unwrap().entries, 2);
    let file = s.path("again.jsonl");
    write_jsonl(&file, &all[2..]);
    let import = s.relay(&["import", file.to_str().unwrap()]).await;
    import.ok();
    assert_eq!(
        import.stdout,
        format!("imported 1 entry from {}\n", file.display())
    );
    assert_eq!(store.stats().await.unwrap().entries, 3);
    let out = s.path("export.jsonl");
    let export = s.relay(&["export", out.to_str().unwrap()]).await;
    export.ok();
    let back: Vec<(CacheKey, Entry)> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| Entry::from_jsonl_line(l).unwrap())
        .collect();
    assert_eq!(back, all);

    // --server reaches the same API whatever the config says, without opening the store.
    let elsewhere = Setup::new("127.0.0.1:1");
    let url = format!("http://{listen}");
    let ls = elsewhere.relay(&["ls", "--server", &url]).await;
    check_ls(&ls, &all);
    let err = elsewhere.relay(&["show", "ffff", "--server", &url]).await;
    assert_eq!(
        err.failed(),
        "error: no cache entry has a key starting with ffff\n"
    );
    assert!(
        !elsewhere.cache.exists(),
        "--server never opens the configured store"
    );

    // The file still held, but no server answers: the CLI says so and what to do.
    server.stop().await;
    let stopped = s.relay(&["ls"]).await;
    let err = stopped.failed();
    assert!(
        err.starts_with(&format!(
            "error: the cache file {} is in use by another process, and no relay answers at http://{listen} (",
            s.cache.display()
        )),
        "{err}"
    );
    assert!(err.contains("pass --server URL"), "{err}");

    // Released: the CLI opens the file itself again.
    store.close().await.unwrap();
    check_ls(&s.relay(&["ls"]).await, &all);
}
