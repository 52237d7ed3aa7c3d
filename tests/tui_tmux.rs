//! `relay tui` in a real terminal: the built binary runs inside tmux in front of the mock upstream;
//! the test sends requests through it and reads the screen with `tmux capture-pane`.
//!
//! Needs `tmux` (`scripts/test.sh` installs Debian's when missing).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::mock::{Kind, Mock};
use common::*;
use http::Request;

/// A tmux server of our own (its own socket), killed when the test ends.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(cmd: &str, width: u16, height: u16) -> Tmux {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let socket = format!("relay-test-{}-{n}", std::process::id());
        let t = Tmux { socket };
        let out = t.run(&[
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-x",
            &width.to_string(),
            "-y",
            &height.to_string(),
            cmd,
        ]);
        assert!(out.status.success(), "tmux new-session: {out:?}");
        t
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("tmux runs (install it: apt-get install tmux)")
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p"]).stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys"];
        args.extend_from_slice(keys);
        assert!(self.run(&args).status.success());
    }

    /// Polls the screen until `ok` holds; fails with the last screen after 20 s.
    async fn wait_for(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let screen = self.screen();
            if ok(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; screen:\n{screen}"
            );
            // Poll interval, not a synchronisation: the deadline above bounds the wait.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

fn listening_port(screen: &str) -> Option<u16> {
    let rest = screen.split("listening on 127.0.0.1:").nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

fn table_rows<'a>(screen: &'a str, needle: &str) -> Vec<&'a str> {
    screen
        .lines()
        .filter(|l| l.contains("POST") && l.contains(needle))
        .collect()
}

async fn chat(port: u16, stream: bool) -> String {
    let body = format!(
        r#"{{"model":"gpt-4o-mini","stream":{stream},"messages":[{{"role":"user","content":"hi"}}]}}"#
    );
    let req = Request::post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-tmux-secret")
        .body(full(body))
        .unwrap();
    let resp = within(client().request(req)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let cache = resp.headers()["x-relay-cache"]
        .to_str()
        .unwrap()
        .to_string();
    let _ = bytes(resp).await;
    cache
}

fn write_config(dir: &Path, openai: &Mock, anthropic: &Mock) -> std::path::PathBuf {
    let path = dir.join("relay.yaml");
    let yaml = format!(
        "server:\n  listen: 127.0.0.1:0\n{}cache:\n  enabled: true\n  path: {}\n",
        providers(openai, anthropic),
        dir.join("cache.redb").display()
    );
    std::fs::write(&path, yaml).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_tui_in_tmux_shows_requests_and_a_hit() {
    let openai = Mock::start("openai", Kind::OpenAi).await;
    let anthropic = Mock::start("anthropic", Kind::Anthropic).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &openai, &anthropic);
    let log = dir.path().join("tui.log");
    let cmd = format!(
        "{} tui --config {} --log-file {} --no-watch; echo RELAY-EXITED $?; sleep 600",
        env!("CARGO_BIN_EXE_relay"),
        config.display(),
        log.display()
    );
    let tmux = Tmux::start(&cmd, 120, 40);

    let screen = tmux
        .wait_for("the dashboard", |s| {
            listening_port(s).is_some() && s.contains("waiting for requests")
        })
        .await;
    let port = listening_port(&screen).unwrap();

    assert_eq!(chat(port, false).await, "MISS");
    assert_eq!(chat(port, false).await, "HIT");
    assert_eq!(chat(port, true).await, "MISS");
    assert_eq!(openai.calls().get(), 2);

    let screen = tmux
        .wait_for("three rows, one a HIT", |s| {
            table_rows(s, "gpt-4o-mini").len() == 3
                && table_rows(s, "gpt-4o-mini")
                    .iter()
                    .any(|r| r.contains(" HIT "))
                && s.contains("requests 3")
        })
        .await;
    assert!(screen.contains("hit rate 33%"), "{screen}");
    assert!(!screen.contains("sk-tmux-secret"));

    // The detail of the newest request (the stream): assembled text, key redacted.
    tmux.keys(&["Enter"]);
    let screen = tmux
        .wait_for("the detail view", |s| {
            s.contains("Request headers") && s.contains("authorization: Bearer ***")
        })
        .await;
    assert!(!screen.contains("sk-tmux-secret"), "{screen}");
    tmux.keys(&["G"]);
    tmux.wait_for("the end of the detail: assembled text and events", |s| {
        s.contains("Hello world") && s.contains("data: [DONE]")
    })
    .await;

    // A smaller terminal: the dashboard redraws to fit (80×24 is the smallest supported size).
    assert!(tmux
        .run(&["resize-window", "-x", "80", "-y", "24"])
        .status
        .success());
    // The detail view redrawn at the new size first; a key sent while the resize is still being
    // handled can be lost on its way through tmux.
    tmux.wait_for("the detail view at 80x24", |s| {
        s.lines().count() <= 24
            && s.contains("q back")
            && s.lines().all(|l| l.chars().count() <= 80)
    })
    .await;
    tmux.keys(&["q"]);
    let screen = tmux
        .wait_for("the main view at 80x24", |s| {
            s.lines().count() <= 24
                && s.lines().any(|l| l.starts_with(" relay"))
                && table_rows(s, "gpt-4o-mini").len() == 3
        })
        .await;
    assert!(screen.lines().all(|l| l.chars().count() <= 80), "{screen}");

    // Help, back, quit: relay exits cleanly and gives the terminal back.
    tmux.keys(&["?"]);
    tmux.wait_for("the help", |s| s.contains("this help")).await;
    tmux.keys(&["Escape"]);
    tmux.wait_for("the main view", |s| s.contains("hit rate"))
        .await;
    tmux.keys(&["q"]);
    tmux.wait_for("relay to exit", |s| s.contains("RELAY-EXITED 0"))
        .await;
    // Logs went to the file, not the screen.
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("relay listening"), "{logged}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_tui_attach_watches_a_running_relay() {
    let (openai, _anthropic, relay) = setup("").await;
    let dir = tempfile::tempdir().unwrap();
    let cmd = format!(
        "{} tui --attach http://{} --log-file {}; echo RELAY-EXITED $?; sleep 600",
        env!("CARGO_BIN_EXE_relay"),
        relay.addr,
        dir.path().join("tui.log").display()
    );
    let tmux = Tmux::start(&cmd, 100, 30);
    tmux.wait_for("the stream to connect", |s| s.contains("connected to"))
        .await;
    let req = json_req(
        &relay.url("/v1/chat/completions"),
        r#"{"model":"gpt-4o","messages":[]}"#,
    );
    let resp = within(client().request(req)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let _ = bytes(resp).await;
    openai.calls().wait_for(1, "the upstream call").await;
    let screen = tmux
        .wait_for("the request's row", |s| {
            table_rows(s, "gpt-4o").len() == 1
                && s.contains("requests 1")
                && s.contains(&format!("attached to http://{}", relay.addr))
        })
        .await;
    assert!(!screen.contains("dropped 1"), "{screen}");
    tmux.keys(&["C-c"]);
    tmux.wait_for("relay to exit", |s| s.contains("RELAY-EXITED 0"))
        .await;
}

#[test]
fn relay_tui_without_a_terminal_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_relay"))
        .args(["tui", "--listen", "127.0.0.1:0", "--log-file"])
        .arg(dir.path().join("tui.log"))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "nothing drawn: {:?}", out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("relay tui needs a terminal"), "{err}");
}
