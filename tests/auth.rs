//! Relay keys end to end (`auth.enabled`): `relay keys` (the real binary) makes, revokes and
//! rotates keys on the store or through the running relay; callers present them instead of the
//! provider's key, which relay adds on the way out; refusals come in the caller's dialect; a key's
//! models, budget and rate limit hold; the raw key is written nowhere; and a relay open to the
//! network with a provider key and auth off does not start.

mod common;

use std::path::Path;
use std::process::Output;

use common::*;
use relay::config::Env;

const CHAT: &str = "/v1/chat/completions";
const PROVIDER_KEY: &str = "sk-provider-secret-0123456789";
const ANTHROPIC_KEY: &str = "sk-ant-provider-secret-9876543210";
const ADMIN_KEY: &str = "admin-key-0123456789abcdef";

fn chat(model: &str) -> String {
    format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#)
}

fn config(openai: &Mock, anthropic: &Mock, extra: &str) -> String {
    format!(
        "auth:\n  enabled: true\n  admin_key_env: ADMIN_KEY\nproviders:\n  - name: openai\n    kind: openai\n    base_url: {}\n    api_key_env: OPENAI_KEY\n  - name: anthropic\n    kind: anthropic\n    base_url: {}\n    api_key_env: ANTHROPIC_KEY\nmodels:\n  gpt-4o: {{input: 1000, output: 1000}}\n{extra}",
        openai.base_url(),
        anthropic.base_url()
    )
}

fn env() -> Env {
    Env::empty()
        .with("OPENAI_KEY", PROVIDER_KEY)
        .with("ANTHROPIC_KEY", ANTHROPIC_KEY)
        .with("ADMIN_KEY", ADMIN_KEY)
}

/// `relay keys <args> --config <dir>/relay.yaml` (the real binary), with `--server` when given.
async fn keys(dir: &Path, server: Option<&str>, args: &[&str]) -> Output {
    let mut all = vec!["keys"];
    all.extend_from_slice(args);
    if let Some(s) = server {
        all.extend(["--server", s]);
    }
    relay_cmd(dir, &all).await
}

/// `relay <args> --config <dir>/relay.yaml` (the real binary).
async fn relay_cmd(dir: &Path, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_relay"));
    cmd.args(args)
        .arg("--config")
        .arg(dir.join("relay.yaml"))
        .env_clear()
        .env("HOME", dir.join("home"))
        .env("RELAY_CACHE_PATH", dir.join("cache.redb"))
        .env("ADMIN_KEY", ADMIN_KEY)
        .kill_on_drop(true);
    within(cmd.output()).await.expect("relay runs")
}

/// The key `relay keys create|rotate` printed: the last line of stdout, alone.
fn printed_key(out: &Output) -> String {
    assert!(
        out.status.success(),
        "relay keys failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    let key = stdout.lines().last().expect("a last line").to_string();
    assert!(key.starts_with("relay-") && !key.contains(' '), "{stdout}");
    key
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

/// A chat request for `model` presenting `key`.
async fn ask(relay: &Relay, model: &str, key: &str) -> Answer {
    post_json(
        relay,
        CHAT,
        &chat(model),
        &[("authorization", &bearer(key))],
    )
    .await
}

#[tokio::test]
async fn relay_keys_stand_in_for_the_provider_key_and_changes_apply_at_once() {
    let openai = Mock::start("openai", Kind::OpenAi).await;
    let anthropic = Mock::start("anthropic", Kind::Anthropic).await;
    let relay = Relay::start_with(&config(&openai, &anthropic, ""), env(), false).await;
    let dir = relay.dir.path();
    let server = relay.url("");

    // No key, a provider's key, an unknown relay key: 401 in the caller's dialect, nothing sent.
    let none = post_json(&relay, CHAT, &chat("gpt-4o"), &[]).await;
    assert_eq!(none.status, 401);
    assert_eq!(none.json()["error"]["code"], "invalid_api_key");
    assert_eq!(none.json()["error"]["type"], "invalid_request_error");
    assert!(none.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("relay keys create"));
    let sk = post_json(
        &relay,
        CHAT,
        &chat("gpt-4o"),
        &[("authorization", "Bearer sk-mine")],
    )
    .await;
    assert_eq!(sk.status, 401);
    let anth = post_json(
        &relay,
        "/v1/messages",
        r#"{"model":"claude-sonnet-4-5","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#,
        &[("x-api-key", "relay-0000"), ("anthropic-version", "2023-06-01")],
    )
    .await;
    assert_eq!(anth.status, 401);
    assert_eq!(anth.json()["type"], "error");
    assert_eq!(anth.json()["error"]["type"], "authentication_error");
    assert_eq!(openai.calls().get() + anthropic.calls().get(), 0);

    // A key made through the running relay works at once; the provider sees its own key only.
    let made = keys(
        dir,
        Some(&server),
        &["create", "--name", "ci", "--models", "gpt-4o*,claude-*"],
    )
    .await;
    let key = printed_key(&made);
    let ok = ask(&relay, "gpt-4o", &key).await;
    assert_eq!(ok.status, 200, "{:?}", ok.body);
    let sent = openai.last();
    assert_eq!(sent.headers["authorization"], bearer(PROVIDER_KEY).as_str());
    assert!(!format!("{:?}", sent.headers).contains(&key));
    let ok = post_json(
        &relay,
        "/v1/messages",
        r#"{"model":"claude-sonnet-4-5","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#,
        &[("x-api-key", &key), ("anthropic-version", "2023-06-01")],
    )
    .await;
    assert_eq!(ok.status, 200);
    let sent = anthropic.last();
    assert_eq!(sent.headers["x-api-key"], ANTHROPIC_KEY);
    assert!(sent.headers.get("authorization").is_none());
    // The provider's key never reaches the caller.
    assert!(!String::from_utf8_lossy(&ok.body).contains(ANTHROPIC_KEY));

    // Outside its models: 403 in each dialect.
    let o3 = ask(&relay, "o3", &key).await;
    assert_eq!(o3.status, 403);
    assert_eq!(o3.json()["error"]["code"], "model_not_allowed");
    assert_eq!(openai.calls().get(), 1);

    // Listed by name with its spend; no key and no hash in the list.
    let list = keys(dir, Some(&server), &["list"]).await;
    let text = String::from_utf8_lossy(&list.stdout).to_string();
    assert!(text.contains("ci") && text.contains("active"), "{text}");
    let json = keys(dir, Some(&server), &["list", "--json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["keys"][0]["name"], "ci");
    assert!(
        v["keys"][0]["spent_today_micros"].as_u64().unwrap() > 0,
        "{v}"
    );
    assert!(!String::from_utf8_lossy(&json.stdout).contains(&key[6..]));

    // Rotated: the old secret is refused as rotated, the new one works.
    let new = printed_key(&keys(dir, Some(&server), &["rotate", "ci"]).await);
    let old = ask(&relay, "gpt-4o", &key).await;
    assert_eq!(old.status, 401);
    assert!(old.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("rotated"));
    let ok = ask(&relay, "gpt-4o", &new).await;
    assert_eq!(ok.status, 200);

    // Revoked: refused from the next request on, no restart.
    let revoked = keys(dir, Some(&server), &["revoke", "ci"]).await;
    assert!(revoked.status.success());
    let gone = ask(&relay, "gpt-4o", &new).await;
    assert_eq!(gone.status, 401);
    assert!(gone.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("revoked"));
    assert_eq!(openai.calls().get(), 2);

    // Spending is booked to the key by name.
    let usage = send(&relay, "GET", "/relay/usage?by=key", &[], "").await;
    let rows = usage.json()["rows"].to_string();
    assert!(rows.contains("\"ci\""), "{rows}");
}

#[tokio::test]
async fn a_keys_budget_rate_limit_and_expiry_hold() {
    let openai = Mock::start("openai", Kind::OpenAi).await;
    let anthropic = Mock::start("anthropic", Kind::Anthropic).await;
    let clock = relay::clock::ManualClock::new(1_800_000_000_000);
    let relay = Relay::start_opts(
        &config(&openai, &anthropic, ""),
        Opts {
            env: env(),
            clock: clock.clock(),
            ..Opts::default()
        },
    )
    .await;
    let dir = relay.dir.path();
    let server = relay.url("");
    // The mock's answer costs $0.011 at the configured price (11 tokens at $1000 / 1M).
    let budget = printed_key(
        &keys(
            dir,
            Some(&server),
            &["create", "--name", "small", "--daily-budget", "0.01"],
        )
        .await,
    );
    let first = ask(&relay, "gpt-4o", &budget).await;
    assert_eq!(first.status, 200);
    relay.server().cost().wait_settled(1).await;
    let over = ask(&relay, "gpt-4o", &budget).await;
    assert_eq!(over.status, 429);
    assert_eq!(over.json()["error"]["code"], "budget_exceeded");
    assert!(over.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("small"));
    let list = String::from_utf8(keys(dir, Some(&server), &["list"]).await.stdout).unwrap();
    assert!(list.contains("$0.000000 today"), "{list}");
    // `relay usage --by key` through the running relay: spend by name, and the budget left.
    let usage = relay_cmd(dir, &["usage", "--by", "key", "--server", &server]).await;
    let usage = String::from_utf8(usage.stdout).unwrap();
    let row = usage
        .lines()
        .find(|l| l.starts_with("small "))
        .expect("the key's row");
    assert!(
        row.contains("0.011000") && row.ends_with("$0.000000 today"),
        "{usage}"
    );
    assert!(
        usage.lines().nth(1).unwrap().ends_with("budget left"),
        "{usage}"
    );

    // One request per second: the second at once is 429 under the key's own rule.
    let slow = printed_key(
        &keys(
            dir,
            Some(&server),
            &["create", "--name", "slow", "--rps", "1"],
        )
        .await,
    );
    let a = ask(&relay, "gpt-4o", &slow).await;
    let b = ask(&relay, "gpt-4o", &slow).await;
    assert_eq!((a.status.as_u16(), b.status.as_u16()), (200, 429));
    assert!(b.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("key:slow"));

    // Expiry follows relay's clock.
    let brief = printed_key(
        &keys(
            dir,
            Some(&server),
            &["create", "--name", "brief", "--expires", "1h"],
        )
        .await,
    );
    let ok = ask(&relay, "gpt-4o", &brief).await;
    assert_eq!(ok.status, 200);
    clock.advance(std::time::Duration::from_secs(3601));
    let late = ask(&relay, "gpt-4o", &brief).await;
    assert_eq!(late.status, 401);
    assert!(late.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("expired"));
}

/// Everything a relay writes or shows, searched for the raw key: the store and ledger files, the
/// cache, the request log of a real `relay serve`, `/metrics`, the live feed, the usage export and
/// the key list.
#[tokio::test]
async fn the_raw_key_is_written_nowhere() {
    let openai = Mock::start("openai", Kind::OpenAi).await;
    let anthropic = Mock::start("anthropic", Kind::Anthropic).await;
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let yaml = config(
        &openai,
        &anthropic,
        &format!("server:\n  listen: 127.0.0.1:{port}\ncache:\n  enabled: true\n"),
    );
    std::fs::write(dir.path().join("relay.yaml"), &yaml).unwrap();
    // Made on the store directly, before relay runs.
    let key = printed_key(
        &keys(
            dir.path(),
            None,
            &["create", "--name", "dev", "--monthly-budget", "10"],
        )
        .await,
    );

    let log = std::fs::File::create(dir.path().join("relay.log")).unwrap();
    let mut serve = tokio::process::Command::new(env!("CARGO_BIN_EXE_relay"))
        .args(["serve", "--config"])
        .arg(dir.path().join("relay.yaml"))
        .env_clear()
        .env("HOME", dir.path().join("home"))
        .env("RELAY_CACHE_PATH", dir.path().join("cache.redb"))
        .env("RELAY_LOG", "debug")
        .env("OPENAI_KEY", PROVIDER_KEY)
        .env("ANTHROPIC_KEY", ANTHROPIC_KEY)
        .env("ADMIN_KEY", ADMIN_KEY)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let health = format!("{base}/healthz");
    within(async {
        loop {
            if let Ok(r) = client().request(get(&health)).await {
                if r.status() == 200 {
                    break;
                }
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    let relay_at = |path: &str| format!("{base}{path}");
    // The live feed, open while the requests run.
    let feed = client()
        .request(get(&relay_at("/relay/events")))
        .await
        .unwrap();
    let mut feed = feed.into_body();
    let _opening = next_chunk(&mut feed).await;
    for stream in [false, true] {
        let body = format!(
            r#"{{"model":"gpt-4o","stream":{stream},"messages":[{{"role":"user","content":"hi"}}]}}"#
        );
        let mut req = http::Request::post(relay_at(CHAT))
            .header("content-type", "application/json")
            .header("authorization", bearer(&key));
        req = req.header("x-request-id", "r-1");
        let resp = within(client().request(req.body(full(body)).unwrap()))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let _ = bytes(resp).await;
    }
    let mut seen = String::new();
    while !seen.contains("\"phase\":\"end\"") || seen.matches("\"phase\":\"end\"").count() < 2 {
        let chunk = next_chunk(&mut feed).await.expect("the feed goes on");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    let metrics = text(client().request(get(&relay_at("/metrics"))).await.unwrap()).await;
    let usage = text(
        client()
            .request(get(&relay_at("/relay/usage?by=key")))
            .await
            .unwrap(),
    )
    .await;
    assert!(usage.contains("\"dev\""), "{usage}");
    // No --server: the store is held by the running relay, so the CLI goes through it.
    let listed = keys(dir.path(), None, &["list", "--json"]).await;
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(listed.contains("\"dev\""), "{listed}");
    let _ = serve.start_kill();
    let _ = serve.wait().await;
    // With relay stopped, `relay usage --by key` reads the ledger and the key store itself.
    let direct = relay_cmd(dir.path(), &["usage", "--by", "key"]).await;
    let direct = String::from_utf8_lossy(&direct.stdout).to_string();
    let row = direct
        .lines()
        .find(|l| l.starts_with("dev "))
        .expect("dev's row");
    assert!(
        row.ends_with("this month") && direct.contains("budget left"),
        "{direct}"
    );

    let secret = &key["relay-".len()..];
    for (what, text) in [
        ("the live feed", &seen),
        ("/metrics", &metrics),
        ("/relay/usage", &usage),
        ("relay keys list", &listed),
    ] {
        assert!(!text.contains(secret), "the key is in {what}");
    }
    let mut files = 0;
    for entry in walk(dir.path()) {
        let bytes = std::fs::read(&entry).unwrap();
        files += 1;
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "the key is in {}",
            entry.display()
        );
        assert!(
            !bytes
                .windows(PROVIDER_KEY.len())
                .any(|w| w == PROVIDER_KEY.as_bytes()),
            "the provider key is in {}",
            entry.display()
        );
    }
    let log = std::fs::read_to_string(dir.path().join("relay.log")).unwrap();
    assert!(log.contains("auth on"), "{log}");
    assert!(
        files >= 4,
        "relay.yaml, relay.log, keys.redb, usage.redb, cache.redb"
    );
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

async fn next_chunk(body: &mut hyper::body::Incoming) -> Option<bytes::Bytes> {
    use http_body_util::BodyExt;
    loop {
        match within(body.frame()).await? {
            Ok(f) => {
                if let Ok(d) = f.into_data() {
                    return Some(d);
                }
            }
            Err(_) => return None,
        }
    }
}

/// Listening beyond loopback with a provider key and auth off: relay refuses to start, saying
/// why and what to do; auth on, or `server.allow_unauthenticated: true`, and it starts. A reload
/// that would turn auth off there is rejected.
#[tokio::test]
async fn an_open_relay_with_a_provider_key_and_no_auth_does_not_start() {
    let openai = Mock::start("openai", Kind::OpenAi).await;
    let anthropic = Mock::start("anthropic", Kind::Anthropic).await;
    let plain = common::providers(&openai, &anthropic).replace(
        "    kind: openai\n",
        "    kind: openai\n    api_key_env: OPENAI_KEY\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let start = |yaml: String| {
        let path = dir.path().join("relay.yaml");
        std::fs::write(&path, yaml).unwrap();
        relay::server::Server::start(relay::server::ServeOptions {
            config_path: Some(path),
            listen: Some("0.0.0.0:0".parse().unwrap()),
            env: env().with("RELAY_CACHE_ENABLED", "false").with(
                "RELAY_CACHE_PATH",
                dir.path().join("c.redb").display().to_string(),
            ),
            watch_config: true,
            offline: false,
            clock: Default::default(),
        })
    };
    let refused = match start(plain.clone()).await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("relay started open to the network with a provider key and no auth"),
    };
    for words in [
        "auth.enabled",
        "0.0.0.0",
        "OPENAI_KEY",
        "anyone who reaches the port",
        "server.allow_unauthenticated: true",
    ] {
        assert!(refused.contains(words), "{words:?} not in: {refused}");
    }
    assert!(!refused.contains(PROVIDER_KEY));

    let on_purpose = start(format!("{plain}server:\n  allow_unauthenticated: true\n"))
        .await
        .expect("said on purpose");
    on_purpose.shutdown();
    on_purpose.wait().await;

    let with_auth = start(format!("{plain}auth:\n  enabled: true\n"))
        .await
        .expect("auth on");
    let mut reloads = with_auth.reloads();
    std::fs::write(dir.path().join("relay.yaml"), &plain).unwrap();
    match next_reload(&mut reloads).await {
        relay::server::ReloadEvent::Rejected(why) => assert!(why.contains("auth.enabled"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(
        with_auth.config().config.auth.enabled,
        "the old config stays live"
    );
    with_auth.shutdown();
    with_auth.wait().await;
}

/// Relay's own API (the key API included) answers a remote caller only with the admin key.
#[tokio::test]
async fn the_admin_key_opens_relays_api_to_remote_callers() {
    let openai = Mock::start("openai", Kind::OpenAi).await;
    let anthropic = Mock::start("anthropic", Kind::Anthropic).await;
    // Relay believes X-Forwarded-For from loopback: a caller "from" 203.0.113.9 is remote.
    let relay = Relay::start_with(
        &config(
            &openai,
            &anthropic,
            "server:\n  trusted_proxies: [127.0.0.1]\n",
        ),
        env(),
        false,
    )
    .await;
    let remote = [("x-forwarded-for", "203.0.113.9")];
    let denied = send(&relay, "GET", "/relay/keys", &remote, "").await;
    assert_eq!(denied.status, 404);
    let wrong = send(
        &relay,
        "GET",
        "/relay/keys",
        &[
            remote[0],
            ("authorization", "Bearer admin-key-wrong-0000000"),
        ],
        "",
    )
    .await;
    assert_eq!(wrong.status, 404);
    let admin = bearer(ADMIN_KEY);
    let made = send(
        &relay,
        "POST",
        "/relay/keys",
        &[remote[0], ("authorization", &admin)],
        r#"{"name":"remote-made"}"#,
    )
    .await;
    assert_eq!(made.status, 201, "{:?}", made.body);
    let key = made.json()["key"].as_str().unwrap().to_string();
    let ok = ask(&relay, "gpt-4o", &key).await;
    assert_eq!(ok.status, 200);
    // The admin key is not a relay key.
    let not_a_key = post_json(&relay, CHAT, &chat("gpt-4o"), &[("authorization", &admin)]).await;
    assert_eq!(not_a_key.status, 401);
    let dup = send(
        &relay,
        "POST",
        "/relay/keys",
        &[("authorization", &admin)],
        r#"{"name":"remote-made"}"#,
    )
    .await;
    assert_eq!(dup.status, 409);
    let bad = send(&relay, "POST", "/relay/keys", &[], r#"{"name":"a b"}"#).await;
    assert_eq!(bad.status, 400);
    assert!(bad.json()["error"].as_str().unwrap().starts_with("name:"));
}
