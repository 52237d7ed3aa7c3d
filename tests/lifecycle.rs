//! Lifecycle end to end: hot reload (good, renamed-over, invalid), requests in flight across a reload,
//! graceful drain, the shutdown timeout, and the real `relay` binary started, used and stopped by
//! SIGTERM. Every wait is on an event (reload events, mock counters, channels, process output); tokio
//! timeouts are only failure bounds.

mod common;

use std::process::Stdio;

use common::mock::{self, Kind, Mock};
use common::*;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use relay::config::Env;
use relay::server::ReloadEvent;
use tokio::io::{AsyncBufReadExt, BufReader};

const CHAT: &str = "/v1/chat/completions";
const MODEL: &str = "gpt-4o-mini";

fn chat_body(stream: bool) -> String {
    format!(
        r#"{{"model":"{MODEL}","stream":{stream},"messages":[{{"role":"user","content":"hi"}}]}}"#
    )
}

/// A chat completion through relay; `hold` makes the mock stop after the first SSE event.
fn chat(relay: &Relay, stream: bool, hold: bool) -> Request<Body> {
    let mut req = Request::post(relay.url(CHAT)).header("content-type", "application/json");
    if hold {
        req = req.header("x-mock", "hold");
    }
    req.body(full(chat_body(stream))).unwrap()
}

/// Two OpenAI-like mocks (`a`, `b`) and an Anthropic-like one for the default routes.
async fn mocks() -> (Mock, Mock, Mock) {
    (
        Mock::start("a", Kind::OpenAi).await,
        Mock::start("b", Kind::OpenAi).await,
        Mock::start("anthropic", Kind::Anthropic).await,
    )
}

/// Relay with the config file watched.
async fn watched(yaml: &str) -> Relay {
    Relay::start_with(yaml, Env::empty(), true).await
}

/// Sends a plain chat completion and returns which mock answered (`x-mock-name`).
async fn answered_by(relay: &Relay) -> String {
    let resp = within(client().request(chat(relay, false, false)))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let name = resp.headers()["x-mock-name"].to_str().unwrap().to_string();
    assert_eq!(text(resp).await, mock::openai_json(MODEL));
    name
}

fn reloads(m: &str, result: &str) -> Option<f64> {
    metric(m, "relay_config_reloads_total", &[("result", result)])
}

fn rejected(event: ReloadEvent) -> String {
    match event {
        ReloadEvent::Rejected(msg) => msg,
        other => panic!("expected a rejected reload, got {other:?}"),
    }
}

// ---------------------------------------------------------------- hot reload

#[tokio::test]
async fn reload_applies_a_rewritten_config() {
    let (a, b, anthropic) = mocks().await;
    let relay = watched(&providers(&a, &anthropic)).await;
    let mut events = relay.server().reloads();
    assert_eq!(answered_by(&relay).await, "a");

    relay.write_config(&providers(&b, &anthropic));
    assert_eq!(next_reload(&mut events).await, ReloadEvent::Applied);
    assert_eq!(answered_by(&relay).await, "b");
    assert_eq!((a.calls().get(), b.calls().get()), (1, 1));

    let m = relay.metrics().await;
    assert_eq!(reloads(&m, "ok"), Some(1.0), "{m}");
    assert_eq!(reloads(&m, "error").unwrap_or(0.0), 0.0, "{m}");
}

#[tokio::test]
async fn reload_applies_a_config_renamed_over_the_file() {
    let (a, b, anthropic) = mocks().await;
    let relay = watched(&providers(&a, &anthropic)).await;
    let mut events = relay.server().reloads();
    assert_eq!(answered_by(&relay).await, "a");

    relay.rename_config(&providers(&b, &anthropic));
    assert_eq!(next_reload(&mut events).await, ReloadEvent::Applied);
    assert_eq!(answered_by(&relay).await, "b");
}

#[tokio::test]
async fn invalid_reload_is_rejected_and_the_old_config_stays_live() {
    let (a, b, anthropic) = mocks().await;
    let relay = watched(&providers(&a, &anthropic)).await;
    let mut events = relay.server().reloads();
    let file = relay.config_path.display().to_string();

    // Unknown provider: rejected with the file and the key path. Had it been applied, `openai` would
    // point at b.
    relay.write_config(&format!(
        "{}routes: [{{provider: antropic}}]\n",
        providers(&b, &anthropic)
    ));
    let msg = rejected(next_reload(&mut events).await);
    assert!(msg.starts_with(&format!("{file}: ")), "{msg}");
    assert!(msg.contains("routes[0].provider"), "{msg}");
    assert!(msg.contains("antropic"), "{msg}");
    assert_eq!(answered_by(&relay).await, "a");
    let m = relay.metrics().await;
    assert_eq!(reloads(&m, "error"), Some(1.0), "{m}");
    assert_eq!(reloads(&m, "ok").unwrap_or(0.0), 0.0, "{m}");

    // YAML syntax error: rejected with the line.
    relay.write_config(&format!(
        "providers:\n  - name: openai\n    base_url: {}: x\n",
        b.base_url()
    ));
    let msg = rejected(next_reload(&mut events).await);
    assert!(msg.starts_with(&format!("{file}: ")), "{msg}");
    assert!(msg.contains("line 3"), "{msg}");
    assert_eq!(answered_by(&relay).await, "a");
    let m = relay.metrics().await;
    assert_eq!(reloads(&m, "error"), Some(2.0), "{m}");

    // Fixed: applied.
    relay.write_config(&providers(&b, &anthropic));
    assert_eq!(next_reload(&mut events).await, ReloadEvent::Applied);
    assert_eq!(answered_by(&relay).await, "b");
    assert_eq!(b.calls().get(), 1, "only the last request reached b");
    let m = relay.metrics().await;
    assert_eq!(reloads(&m, "ok"), Some(1.0), "{m}");
    assert_eq!(reloads(&m, "error"), Some(2.0), "{m}");
}

#[tokio::test]
async fn a_blank_config_is_rejected_and_the_old_one_stays_live() {
    let (a, _b, anthropic) = mocks().await;
    let relay = watched(&providers(&a, &anthropic)).await;
    let mut events = relay.server().reloads();
    // A save caught half way, a comment-only template: had either become the built-in defaults,
    // traffic would go to api.openai.com.
    for blank in ["", "# rendered from a template with no values\n"] {
        relay.write_config(blank);
        let msg = rejected(next_reload(&mut events).await);
        assert!(msg.contains("the file has no settings"), "{msg}");
        assert_eq!(answered_by(&relay).await, "a");
    }
}

/// relay started on a config path of its own (a symlink, say), watched.
async fn serve_at(path: &std::path::Path) -> relay::server::Server {
    relay::server::Server::start(relay::server::ServeOptions {
        config_path: Some(path.to_path_buf()),
        listen: Some("127.0.0.1:0".parse().unwrap()),
        env: Env::empty()
            .with("RELAY_CACHE_ENABLED", "false")
            .with("RELAY_COST_ENABLED", "false"),
        watch_config: true,
        offline: false,
        clock: Default::default(),
    })
    .await
    .expect("relay starts")
}

async fn answered_at(addr: std::net::SocketAddr) -> String {
    let url = format!("http://{addr}{CHAT}");
    let req = Request::post(url)
        .header("content-type", "application/json")
        .body(full(chat_body(false)))
        .unwrap();
    let resp = within(client().request(req)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.headers()["x-mock-name"].to_str().unwrap().to_string()
}

/// A ConfigMap volume as the kubelet lays it out and updates it: `relay.yaml -> ..data/relay.yaml`,
/// `..data -> ..<timestamp>`; an update writes a new timestamped directory, points `..data_tmp` at
/// it, renames `..data_tmp` over `..data` and removes the old directory. No event names relay.yaml.
#[tokio::test]
async fn a_kubernetes_configmap_update_is_reloaded() {
    use std::os::unix::fs::symlink;
    let (a, b, anthropic) = mocks().await;
    let vol = tempfile::tempdir().unwrap();
    let root = vol.path();
    std::fs::create_dir(root.join("..2026_12_01_10_01_00.1")).unwrap();
    std::fs::write(
        root.join("..2026_12_01_10_01_00.1/relay.yaml"),
        providers(&a, &anthropic),
    )
    .unwrap();
    symlink("..2026_12_01_10_01_00.1", root.join("..data")).unwrap();
    symlink("..data/relay.yaml", root.join("relay.yaml")).unwrap();
    let server = serve_at(&root.join("relay.yaml")).await;
    let mut events = server.reloads();
    assert_eq!(answered_at(server.local_addr()).await, "a");

    for (n, to) in [(2, &b), (3, &a)] {
        let dir = format!("..2026_12_01_10_0{n}_00.{n}");
        std::fs::create_dir(root.join(&dir)).unwrap();
        std::fs::write(
            root.join(&dir).join("relay.yaml"),
            providers(to, &anthropic),
        )
        .unwrap();
        symlink(&dir, root.join("..data_tmp")).unwrap();
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
        let old = format!("..2026_12_01_10_0{}_00.{}", n - 1, n - 1);
        std::fs::remove_dir_all(root.join(old)).unwrap();
        assert_eq!(next_reload(&mut events).await, ReloadEvent::Applied);
    }
    assert_eq!(answered_at(server.local_addr()).await, "a");
    assert_eq!(b.calls().get(), 0);
    server.shutdown();
    within(server.wait()).await;
}

/// A single-file bind mount (docker-compose `./relay.yaml:/etc/relay/relay.yaml`): the host edits
/// the same inode through its own directory, so relay's directory sees no event. A hard link in
/// another directory is the same situation without a mount.
#[tokio::test]
async fn a_file_edited_through_another_directory_is_reloaded() {
    let (a, b, anthropic) = mocks().await;
    let (container, host) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let inside = container.path().join("relay.yaml");
    let outside = host.path().join("relay.yaml");
    std::fs::write(&outside, providers(&a, &anthropic)).unwrap();
    std::fs::hard_link(&outside, &inside).unwrap();
    let server = serve_at(&inside).await;
    let mut events = server.reloads();
    assert_eq!(answered_at(server.local_addr()).await, "a");
    // In place, as a bind mount requires (a rename would make a new inode the mount never sees).
    std::fs::write(&outside, providers(&b, &anthropic)).unwrap();
    assert_eq!(next_reload(&mut events).await, ReloadEvent::Applied);
    assert_eq!(answered_at(server.local_addr()).await, "b");
    server.shutdown();
    within(server.wait()).await;
}

#[tokio::test]
async fn a_stream_in_flight_finishes_on_the_config_it_started_with() {
    let (a, b, anthropic) = mocks().await;
    let relay = watched(&providers(&a, &anthropic)).await;
    let mut events = relay.server().reloads();
    let sse = mock::openai_sse(MODEL);

    let resp = within(client().request(chat(&relay, true, true)))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-mock-name"], "a");
    let mut body = resp.into_body();
    let first = read_at_least(&mut body, sse[0].len()).await;

    relay.write_config(&providers(&b, &anthropic));
    assert_eq!(next_reload(&mut events).await, ReloadEvent::Applied);
    assert_eq!(a.completed().get(), 0, "a is still holding the stream");

    a.release();
    let rest = read_to_end(&mut body).await;
    assert_eq!(
        String::from_utf8([first, rest].concat()).unwrap(),
        sse.concat()
    );
    a.completed().wait_for(1, "streams completed by a").await;

    assert_eq!(answered_by(&relay).await, "b");
    assert_eq!((a.calls().get(), b.calls().get()), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reloads_under_concurrent_load_lose_no_request() {
    const CLIENTS: usize = 8;
    const RELOADS: usize = 10;
    let (a, b, anthropic) = mocks().await;
    let relay = watched(&providers(&a, &anthropic)).await;
    let mut events = relay.server().reloads();

    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..CLIENTS {
        let stop = stop_rx.clone();
        let url = relay.url(CHAT);
        // Half the clients stream, half do plain JSON.
        let stream = i % 2 == 1;
        clients.spawn(async move {
            let want = if stream {
                mock::openai_sse(MODEL).concat()
            } else {
                mock::openai_json(MODEL)
            };
            let c = client();
            let (mut sent, mut failures) = (0usize, Vec::new());
            while !*stop.borrow() {
                sent += 1;
                let outcome = within(async {
                    let resp = c
                        .request(json_req(&url, chat_body(stream)))
                        .await
                        .map_err(|e| format!("request: {e:?}"))?;
                    let status = resp.status();
                    let body = resp.into_body().collect().await;
                    let body = body.map_err(|e| format!("body: {e:?}"))?.to_bytes();
                    Ok::<_, String>((status, body))
                })
                .await;
                match outcome {
                    Ok((status, body)) if status == StatusCode::OK && body == want.as_bytes() => {}
                    other => failures.push(format!("client {i} request {sent}: {other:?}")),
                }
            }
            (sent, failures)
        });
    }

    // Every client is under way before the first reload.
    a.calls().wait_for(CLIENTS, "requests reaching a").await;
    for n in 0..RELOADS {
        let target = if n % 2 == 0 { &b } else { &a };
        let before = target.calls().get();
        relay.write_config(&providers(target, &anthropic));
        assert_eq!(
            next_reload(&mut events).await,
            ReloadEvent::Applied,
            "reload {n}"
        );
        // Traffic flows through the new config before the next rewrite.
        target
            .calls()
            .wait_for(before + 1, "requests reaching the new target")
            .await;
    }
    stop.send_replace(true);

    let (mut sent, mut failures) = (0, Vec::new());
    while let Some(joined) = within(clients.join_next()).await {
        let (n, f) = joined.expect("client task");
        sent += n;
        failures.extend(f);
    }
    assert!(
        failures.is_empty(),
        "{} failed: {failures:#?}",
        failures.len()
    );
    assert_eq!(sent, a.calls().get() + b.calls().get());
    assert!(sent >= CLIENTS + RELOADS, "{sent}");
}

// ---------------------------------------------------------------- shutdown

#[tokio::test]
async fn graceful_shutdown_refuses_new_connections_and_drains_streams() {
    let (a, _b, anthropic) = mocks().await;
    let mut relay = Relay::start(&providers(&a, &anthropic)).await;
    let sse = mock::openai_sse(MODEL);

    // An idle keep-alive connection (its client kept alive) must not hold the drain up.
    let idle = client();
    let resp = within(idle.request(chat(&relay, false, false)))
        .await
        .unwrap();
    assert_eq!(text(resp).await, mock::openai_json(MODEL));
    // The mock counts a response complete after its last byte is written, which can be just after
    // the client has read it.
    a.completed()
        .wait_for(1, "the plain response completed")
        .await;

    // Once released, the mock paces the remaining events 20 ms apart (as a real generation does),
    // so the stream outlasts the drain's start by a margin: a server that cut it short instead of
    // draining would break it.
    let mut req = chat(&relay, true, true);
    req.headers_mut()
        .insert("x-mock-interval-ms", http::HeaderValue::from_static("20"));
    let resp = within(client().request(req)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let first = read_at_least(&mut body, sse[0].len()).await;

    let server = relay.take();
    server.shutdown();
    // The accept loop drops the listener as soon as it sees the signal, while the stream is still
    // held. It runs on this current-thread runtime, so it gets there as soon as this task yields
    // (in practice before the first connect); until then a connect still completes through the
    // kernel's accept backlog. Hence a bounded number of attempts, each after a yield, with no
    // sleep. The bound stays below the listen backlog (at least 128), so a listener kept open
    // during the drain fails here rather than in the kernel's SYN retries.
    let mut refused = None;
    for _ in 0..100 {
        tokio::task::yield_now().await;
        match tokio::net::TcpStream::connect(relay.addr).await {
            Ok(conn) => drop(conn),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let err = refused.expect("new connections are refused once shutdown() is signalled");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    assert_eq!(
        (a.completed().get(), a.calls().get()),
        (1, 2),
        "the stream is still held (only the plain request has completed)"
    );

    let stopped = tokio::spawn(server.wait());
    a.release();
    let rest = read_to_end(&mut body).await;
    assert_eq!(
        String::from_utf8([first, rest].concat()).unwrap(),
        sse.concat()
    );
    within(stopped).await.expect("server stops");
    a.completed().wait_for(2, "responses completed by a").await;
    assert_eq!(a.cancelled().get(), 0);
    drop(idle);
}

#[tokio::test]
async fn shutdown_timeout_drops_streams_still_running() {
    let (a, _b, anthropic) = mocks().await;
    let mut relay = Relay::start(&format!(
        "server: {{shutdown_timeout: 300ms}}\n{}",
        providers(&a, &anthropic)
    ))
    .await;
    let sse = mock::openai_sse(MODEL);

    let resp = within(client().request(chat(&relay, true, true)))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    read_at_least(&mut body, sse[0].len()).await;

    let server = relay.take();
    server.shutdown();
    within(server.wait()).await;

    // Never released: the client sees the stream broken off, not a clean end.
    let end = within(async {
        loop {
            match body.frame().await {
                Some(Ok(_)) => continue,
                other => return other,
            }
        }
    })
    .await;
    assert!(
        matches!(end, Some(Err(_))),
        "the caller sees a broken stream, not a clean end: {end:?}"
    );
    a.cancelled()
        .wait_for(1, "upstream responses cancelled by relay")
        .await;
    assert_eq!(a.completed().get(), 0);
}

// ---------------------------------------------------------------- the binary

/// The `relay` binary with a cleared environment plus PATH, run in `dir`.
fn relay_cmd(dir: &std::path::Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_relay"));
    cmd.current_dir(dir).env_clear().kill_on_drop(true);
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    cmd
}

/// Reads a `relay serve --log-format json` child's log up to "relay listening": its address, and
/// a task that keeps draining the log (so the process never blocks on a full pipe).
async fn listening(
    child: &mut tokio::process::Child,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<Vec<String>>) {
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let addr: std::net::SocketAddr = within(async {
        loop {
            let Some(line) = lines.next_line().await.expect("read stdout") else {
                panic!("relay exited before listening; output: {seen:#?}");
            };
            let v: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
            if v["message"] == "relay listening" {
                break v["addr"]
                    .as_str()
                    .unwrap_or_else(|| panic!("no addr field: {line}"))
                    .parse()
                    .unwrap_or_else(|e| panic!("addr does not parse ({e}): {line}"));
            }
            seen.push(line);
        }
    })
    .await;
    let rest = tokio::spawn(async move {
        let mut rest = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            rest.push(line);
        }
        rest
    });
    (addr, rest)
}

/// `relay.yaml` in `dir` for the binary: the two mocks, the cache file in `dir` too.
fn config_with_cache(dir: &std::path::Path, openai: &Mock, anthropic: &Mock) -> std::path::PathBuf {
    let file = dir.join("relay.yaml");
    let yaml = format!(
        "{}cache:\n  path: {}\n",
        providers(openai, anthropic),
        dir.join("cache.redb").display()
    );
    std::fs::write(&file, yaml).unwrap();
    file
}

/// A full disk, as relay's process meets it: writes past a file-size limit fail (EFBIG, the same
/// path through redb as ENOSPC), after which redb refuses every write until the database is
/// opened again. relay reopens it by itself: once the limit is lifted, answers are recorded
/// again, without a restart.
#[tokio::test]
async fn the_cache_records_again_after_the_disk_was_full() {
    let (a, _b, anthropic) = mocks().await;
    let dir = tempfile::tempdir().unwrap();
    let file = config_with_cache(dir.path(), &a, &anthropic);
    // SIGXFSZ ignored (inherited through exec), so a write past the limit fails with EFBIG.
    let mut child = tokio::process::Command::new("bash")
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .args([
            "-c",
            "trap '' XFSZ; ulimit -S -f 8192; exec \"$0\" serve --config \"$1\" --listen 127.0.0.1:0 --log-format json",
            env!("CARGO_BIN_EXE_relay"),
        ])
        .arg(&file)
        .kill_on_drop(true)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn relay");
    let (addr, _rest) = listening(&mut child).await;
    let ask = |n: usize, pad: usize| {
        let body = format!(
            r#"{{"model":"{MODEL}","messages":[{{"role":"user","content":"{n} {}"}}]}}"#,
            "x".repeat(pad)
        );
        async move {
            let resp = within(client().request(json_req(&format!("http://{addr}{CHAT}"), body)))
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            resp.headers()["x-relay-cache"]
                .to_str()
                .unwrap()
                .to_string()
        }
    };
    let stats = || async move {
        let resp = within(client().request(get(&format!("http://{addr}/relay/cache/stats"))))
            .await
            .unwrap();
        json(resp).await
    };
    // Fill the file to its 8 MiB limit: large requests until writes are lost (counted, or the
    // store answers with an error).
    let failing = |s: serde_json::Value| {
        s["write_errors"].as_u64().unwrap_or(0) > 0 || s["error"].is_string()
    };
    let mut n = 0;
    while !failing(stats().await) {
        assert!(n < 200, "writes never failed under an 8 MiB file limit");
        assert_eq!(ask(n, 300_000).await, "MISS");
        n += 1;
    }
    // The disk has room again.
    let pid = child.id().expect("relay is running").to_string();
    let lifted = std::process::Command::new("prlimit")
        .args(["--pid", &pid, "--fsize=unlimited:unlimited"])
        .status()
        .expect("run prlimit");
    assert!(lifted.success());
    // The next answers are recorded: a repeat is a hit (the first put after the disk came back
    // may still meet the old handle, so a few new questions are asked).
    let mut recorded = false;
    for m in 0..5 {
        assert_eq!(ask(1000 + m, 10).await, "MISS");
        if ask(1000 + m, 10).await == "HIT" {
            recorded = true;
            break;
        }
    }
    assert!(recorded, "the cache records again without a restart");
}

#[tokio::test]
async fn binary_serves_and_exits_cleanly_on_sigterm() {
    let (a, _b, anthropic) = mocks().await;
    let dir = tempfile::tempdir().unwrap();
    // The cache (on by default) keeps its file in the temp dir: hermetic, and the request below is
    // a miss that reaches the mock.
    let file = config_with_cache(dir.path(), &a, &anthropic);

    let mut child = relay_cmd(dir.path())
        .arg("serve")
        .arg("--config")
        .arg(&file)
        .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn relay");
    let (addr, rest) = listening(&mut child).await;

    let resp =
        within(client().request(json_req(&format!("http://{addr}{CHAT}"), chat_body(false))))
            .await
            .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-mock-name"], "a");
    assert_eq!(text(resp).await, mock::openai_json(MODEL));
    assert_eq!(a.calls().get(), 1);

    let pid = child.id().expect("relay is running");
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(kill.success());
    let status = within(child.wait()).await.expect("wait for relay");
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        tokio::io::AsyncReadExt::read_to_string(&mut e, &mut stderr)
            .await
            .unwrap();
    }
    assert_eq!(status.code(), Some(0), "status {status}; stderr: {stderr}");
    within(rest).await.unwrap();
}

#[tokio::test]
async fn binary_version_and_serve_help() {
    let dir = tempfile::tempdir().unwrap();
    let out = within(relay_cmd(dir.path()).arg("--version").output())
        .await
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        format!("relay {}", env!("CARGO_PKG_VERSION"))
    );

    let out = within(relay_cmd(dir.path()).args(["serve", "--help"]).output())
        .await
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in ["--config", "--listen", "--log-format", "--no-watch"] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
}
