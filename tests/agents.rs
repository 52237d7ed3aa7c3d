//! The real agents through relay: Claude Code (`claude`, npm `@anthropic-ai/claude-code`) and
//! Codex CLI (`codex`, npm `@openai/codex`) against mock upstreams. Each is answered through relay,
//! its second run is served from the cache, a recording replays offline the next day from another
//! directory, and an offline miss ends the run at once. `scripts/test.sh` installs both agents;
//! where one is missing (no npm registry), its tests say so and pass.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::mock::{Kind, Mock};
use common::*;
use relay::config::Env;

/// Longest an agent run may take. A miss must end the run long before this: without fail-fast
/// answers Claude Code retried for about 3 minutes.
const RUN_TIMEOUT: Duration = Duration::from_secs(90);

fn installed(agent: &str) -> bool {
    let found = std::process::Command::new(agent)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!(
            "skipping: `{agent}` is not installed (scripts/test.sh installs it from npm; the registry could not be reached)"
        );
    }
    found
}

/// Runs `program args` in `dir` with `env`, under `faketime` when `shift` is given (`+1d`).
async fn run(
    program: &str,
    args: &[&str],
    dir: &Path,
    env: &[(&str, String)],
    shift: Option<&str>,
) -> Output {
    let mut cmd = match shift {
        Some(s) => {
            let mut c = tokio::process::Command::new("faketime");
            c.arg("-f").arg(s).arg(program);
            c
        }
        None => tokio::process::Command::new(program),
    };
    cmd.args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    match tokio::time::timeout(RUN_TIMEOUT, cmd.output()).await {
        Ok(out) => out.unwrap(),
        Err(_) => panic!("{program} {args:?} did not end within {RUN_TIMEOUT:?}"),
    }
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A relay recording into `cache`, or replaying it (`offline`).
async fn relay_on(openai: &Mock, anthropic: &Mock, cache: &Path, offline: bool) -> Relay {
    let env = Env::empty().with("RELAY_CACHE_PATH", cache.display().to_string());
    Relay::start_full(
        &format!("{}cache:\n  enabled: true\n", providers(openai, anthropic)),
        env,
        false,
        offline,
    )
    .await
}

async fn stop(mut relay: Relay) {
    let server = relay.take();
    server.shutdown();
    within(server.wait()).await;
}

/// Three working directories (two "checkouts" and one for the miss) and a home, in one temp dir.
struct Dirs {
    _root: tempfile::TempDir,
    home: std::path::PathBuf,
    one: std::path::PathBuf,
    two: std::path::PathBuf,
    cache: std::path::PathBuf,
}

fn dirs() -> Dirs {
    let root = tempfile::tempdir().unwrap();
    let p = |n: &str| {
        let d = root.path().join(n);
        std::fs::create_dir_all(&d).unwrap();
        d
    };
    Dirs {
        home: p("home"),
        one: p("checkout-one/app"),
        two: p("checkout-two/app"),
        cache: root.path().join("cache.redb"),
        _root: root,
    }
}

/// The mock upstreams and directories of one agent test, or `None` (said why) when an agent it
/// needs is not installed.
async fn setup(agents: &[&str]) -> Option<(Mock, Mock, Dirs)> {
    if !agents.iter().all(|a| installed(a)) {
        return None;
    }
    let openai = Mock::start("openai", Kind::OpenAi).await;
    let anthropic = Mock::start("anthropic", Kind::Anthropic).await;
    let d = dirs();
    std::fs::create_dir_all(d.home.join(".codex")).unwrap();
    Some((openai, anthropic, d))
}

fn claude_env(relay: &Relay, home: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("HOME", home.display().to_string()),
        ("ANTHROPIC_BASE_URL", relay.url("")),
        ("ANTHROPIC_API_KEY", "sk-ant-test".to_string()),
        ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1".to_string()),
        ("DISABLE_AUTOUPDATER", "1".to_string()),
    ]
}

#[tokio::test]
async fn claude_code_records_once_and_replays_offline_the_next_day_elsewhere() {
    let Some((openai, anthropic, d)) = setup(&["claude"]).await else {
        return;
    };
    let args = ["-p", "say hi"];

    let relay = relay_on(&openai, &anthropic, &d.cache, false).await;
    let env = claude_env(&relay, &d.home);
    let first = run("claude", &args, &d.one, &env, None).await;
    assert!(first.status.success(), "{}", text(&first));
    assert!(
        String::from_utf8_lossy(&first.stdout).contains("Hello world"),
        "{}",
        text(&first)
    );
    let calls = anthropic.calls().get();
    assert!(calls >= 1);
    assert_eq!(
        openai.calls().get(),
        0,
        "nothing of Claude Code's went to openai"
    );
    // Its session id changes, its body does not otherwise: the second run is all hits.
    let second = run("claude", &args, &d.one, &env, None).await;
    assert!(second.status.success(), "{}", text(&second));
    assert_eq!(
        anthropic.calls().get(),
        calls,
        "the second run came from the cache"
    );
    let m = relay.metrics().await;
    assert!(
        !m.contains("status=\"404\""),
        "no 404 for Claude Code's probe:\n{m}"
    );
    stop(relay).await;

    // Offline, a day later, from another checkout: the portable form replays it.
    let relay = relay_on(&openai, &anthropic, &d.cache, true).await;
    let env = claude_env(&relay, &d.home);
    let replayed = run("claude", &args, &d.two, &env, Some("+1d")).await;
    assert!(replayed.status.success(), "{}", text(&replayed));
    assert!(String::from_utf8_lossy(&replayed.stdout).contains("Hello world"));
    assert_eq!(
        anthropic.calls().get(),
        calls,
        "offline: nothing went upstream"
    );

    // A prompt never recorded ends the run at once, with relay's explanation.
    let started = std::time::Instant::now();
    let miss = run("claude", &["-p", "say bye"], &d.one, &env, None).await;
    let took = started.elapsed();
    assert!(!miss.status.success(), "{}", text(&miss));
    let shown = text(&miss);
    assert!(shown.contains("no recording"), "{shown}");
    assert!(shown.contains("nearest recording"), "{shown}");
    eprintln!("offline miss ended Claude Code in {took:?}");
    stop(relay).await;
}

fn codex_args(relay: &Relay, prompt: &str) -> Vec<String> {
    codex_args_over(relay, prompt, false)
}

/// `codex exec` on a provider at relay; `websocket`: the Responses API over a WebSocket, as
/// Codex's built-in `openai` provider speaks it.
fn codex_args_over(relay: &Relay, prompt: &str, websocket: bool) -> Vec<String> {
    vec![
        "exec".into(),
        "--skip-git-repo-check".into(),
        "-c".into(),
        "model_provider=relay".into(),
        "-c".into(),
        format!(
            "model_providers.relay={{name=\"relay\", base_url=\"{}\", env_key=\"OPENAI_API_KEY\", wire_api=\"responses\", supports_websockets={websocket}}}",
            relay.url("/v1")
        ),
        prompt.into(),
    ]
}

fn codex_env(home: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("HOME", home.display().to_string()),
        ("CODEX_HOME", home.join(".codex").display().to_string()),
        ("OPENAI_API_KEY", "sk-test".to_string()),
    ]
}

#[tokio::test]
async fn codex_records_once_and_replays_offline_elsewhere() {
    let Some((openai, anthropic, d)) = setup(&["codex"]).await else {
        return;
    };
    let env = codex_env(&d.home);

    let relay = relay_on(&openai, &anthropic, &d.cache, false).await;
    let args = codex_args(&relay, "say hi");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let first = run("codex", &args, &d.one, &env, None).await;
    assert!(first.status.success(), "{}", text(&first));
    assert!(
        String::from_utf8_lossy(&first.stdout).contains("Hello world"),
        "{}",
        text(&first)
    );
    let calls = openai.calls().get();
    assert!(calls >= 1);
    // A new conversation id, new item ids, new metadata: still all hits.
    let second = run("codex", &args, &d.one, &env, None).await;
    assert!(second.status.success(), "{}", text(&second));
    assert_eq!(
        openai.calls().get(),
        calls,
        "the second run came from the cache"
    );
    stop(relay).await;

    // Recorded on another day: Codex is a static musl binary, so faketime cannot shift its clock;
    // instead the recording is exported, its `<current_date>` moved to an earlier day, and
    // imported again, as if it had been made then.
    let file = d.home.join("codex.jsonl").display().to_string();
    let cli_env = vec![("RELAY_CACHE_PATH", d.cache.display().to_string())];
    let export = relay_bin(&["cache", "export", &file], &d.home, &cli_env).await;
    assert!(export.status.success(), "{}", text(&export));
    let recorded = std::fs::read_to_string(&file).unwrap();
    let dated = dated_2020(&recorded);
    assert_ne!(dated, recorded, "the recording names its date");
    std::fs::write(&file, dated).unwrap();
    for args in [&["cache", "clear"][..], &["cache", "import", &file]] {
        let out = relay_bin(args, &d.home, &cli_env).await;
        assert!(out.status.success(), "{}", text(&out));
    }

    // Offline, from another checkout, a later day.
    let relay = relay_on(&openai, &anthropic, &d.cache, true).await;
    let args = codex_args(&relay, "say hi");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let replayed = run("codex", &args, &d.two, &env, None).await;
    assert!(replayed.status.success(), "{}", text(&replayed));
    assert!(String::from_utf8_lossy(&replayed.stdout).contains("Hello world"));
    assert_eq!(
        openai.calls().get(),
        calls,
        "offline: nothing went upstream"
    );

    let miss_args = codex_args(&relay, "say bye");
    let miss_args: Vec<&str> = miss_args.iter().map(String::as_str).collect();
    let started = std::time::Instant::now();
    let miss = run("codex", &miss_args, &d.one, &env, None).await;
    let took = started.elapsed();
    assert!(!miss.status.success(), "{}", text(&miss));
    assert!(text(&miss).contains("no recording"), "{}", text(&miss));
    eprintln!("offline miss ended Codex in {took:?}");
    stop(relay).await;
}

#[tokio::test]
async fn codex_over_the_responses_websocket_is_metered_cached_and_replayed() {
    let Some((openai, anthropic, d)) = setup(&["codex"]).await else {
        return;
    };
    let env = codex_env(&d.home);

    let relay = relay_on(&openai, &anthropic, &d.cache, false).await;
    let args = codex_args_over(&relay, "say hi", true);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let first = run("codex", &args, &d.one, &env, None).await;
    assert!(first.status.success(), "{}", text(&first));
    assert!(
        String::from_utf8_lossy(&first.stdout).contains("Hello world"),
        "{}",
        text(&first)
    );
    // Each turn reached the provider as a streamed POST: relay ended the socket itself.
    let calls = openai.calls().get();
    assert!(calls >= 1);
    let turn = openai.last();
    assert_eq!(
        (turn.method.as_str(), turn.uri.as_str()),
        ("POST", "/v1/responses")
    );
    let sent: serde_json::Value = serde_json::from_slice(&turn.body).unwrap();
    assert_eq!(sent["stream"], true);
    assert!(
        sent.get("type").is_none() && sent.get("generate").is_none(),
        "{sent}"
    );
    // Metered as a request of its own: the mock's 9 input tokens a turn, one 200 row a turn beside
    // the socket's 101. Codex's model (gpt-6.2-sol) is not in the price data: its label is
    // `other`, and its turns are flagged unpriced (booked at $0), never priced as another model.
    let m = relay.metrics().await;
    let labels = [
        ("provider", "openai"),
        ("model", "other"),
        ("kind", "input"),
    ];
    let tokens = metric(&m, "relay_tokens_total", &labels);
    assert!(tokens.is_some_and(|t| t >= 9.0), "{m}");
    let turns = [
        ("provider", "openai"),
        ("model", "other"),
        ("status", "200"),
    ];
    assert!(
        metric(&m, "relay_requests_total", &turns).is_some_and(|n| n >= 1.0),
        "{m}"
    );
    let unpriced = [("provider", "openai"), ("model", "other")];
    assert!(
        metric(&m, "relay_unpriced_requests_total", &unpriced).is_some_and(|n| n >= 1.0),
        "{m}"
    );
    // The second run: every turn from the cache.
    let second = run("codex", &args, &d.one, &env, None).await;
    assert!(second.status.success(), "{}", text(&second));
    assert_eq!(
        openai.calls().get(),
        calls,
        "the second run came from the cache"
    );
    stop(relay).await;

    // Offline from another checkout, over the socket.
    let relay = relay_on(&openai, &anthropic, &d.cache, true).await;
    let args = codex_args_over(&relay, "say hi", true);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let replayed = run("codex", &args, &d.two, &env, None).await;
    assert!(replayed.status.success(), "{}", text(&replayed));
    assert!(String::from_utf8_lossy(&replayed.stdout).contains("Hello world"));
    assert_eq!(
        openai.calls().get(),
        calls,
        "offline: nothing went upstream"
    );
    let miss_args = codex_args_over(&relay, "say bye", true);
    let miss_args: Vec<&str> = miss_args.iter().map(String::as_str).collect();
    let started = std::time::Instant::now();
    let miss = run("codex", &miss_args, &d.one, &env, None).await;
    assert!(!miss.status.success(), "{}", text(&miss));
    assert!(text(&miss).contains("no recording"), "{}", text(&miss));
    eprintln!(
        "offline miss over the socket ended Codex in {:?}",
        started.elapsed()
    );
    stop(relay).await;
}

/// Runs the relay binary with `args` and `env`, in `dir`.
async fn relay_bin(args: &[&str], dir: &Path, env: &[(&str, String)]) -> Output {
    run(env!("CARGO_BIN_EXE_relay"), args, dir, env, None).await
}

#[tokio::test]
async fn relay_run_points_the_agents_at_relay_and_labels_the_session() {
    let Some((openai, anthropic, d)) = setup(&["claude", "codex"]).await else {
        return;
    };
    let config = d.home.join("relay.yaml");
    std::fs::write(
        &config,
        format!(
            "server:\n  listen: 127.0.0.1:0\n{}cache:\n  enabled: true\n  path: {}\ncost:\n  ledger_path: {}\n",
            providers(&openai, &anthropic),
            d.cache.display(),
            d.home.join("ledger.redb").display()
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let log = d.home.join("run.log").display().to_string();
    let env = vec![
        ("HOME", d.home.display().to_string()),
        ("CODEX_HOME", d.home.join(".codex").display().to_string()),
        ("ANTHROPIC_API_KEY", "sk-ant-test".to_string()),
        ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1".to_string()),
        ("DISABLE_AUTOUPDATER", "1".to_string()),
    ];
    // No relay is listening: `relay run` starts one for the run and stops it after.
    let claude = relay_bin(
        &[
            "run",
            "claude",
            "--config",
            &config,
            "--session",
            "demo",
            "--log-file",
            &log,
            "--",
            "-p",
            "say hi",
        ],
        &d.one,
        &env,
    )
    .await;
    assert!(claude.status.success(), "{}", text(&claude));
    assert!(
        String::from_utf8_lossy(&claude.stdout).contains("Hello world"),
        "{}",
        text(&claude)
    );
    assert!(
        String::from_utf8_lossy(&claude.stderr).contains("session demo"),
        "{}",
        text(&claude)
    );
    let sent = anthropic.last();
    assert!(
        sent.headers.get("x-relay-session").is_none(),
        "relay's label stays with relay"
    );
    // Codex without a key of its own: relay's provider would inject one (none here).
    let codex = relay_bin(
        &[
            "run",
            "codex",
            "--config",
            &config,
            "--session",
            "demo",
            "--log-file",
            &log,
            "--",
            "exec",
            "--skip-git-repo-check",
            "say hi",
        ],
        &d.one,
        &env,
    )
    .await;
    assert!(codex.status.success(), "{}", text(&codex));
    assert!(
        String::from_utf8_lossy(&codex.stdout).contains("Hello world"),
        "{}",
        text(&codex)
    );
    assert!(openai.last().headers.get("authorization").is_none());

    // The session's recordings, by label, with their clients.
    let ls = relay_bin(
        &["cache", "ls", "--config", &config, "--session", "demo"],
        &d.one,
        &env,
    )
    .await;
    assert!(ls.status.success(), "{}", text(&ls));
    let ls = String::from_utf8_lossy(&ls.stdout).into_owned();
    assert!(ls.contains("claude-code 2."), "{ls}");
    assert!(ls.contains("codex 0."), "{ls}");
    assert!(ls.contains("\"say hi\""), "{ls}");
    let other = relay_bin(
        &["cache", "ls", "--config", &config, "--session", "nope"],
        &d.one,
        &env,
    )
    .await;
    assert_eq!(String::from_utf8_lossy(&other.stdout), "no cache entries\n");

    // The run's spend, by session: both agents' requests booked to "demo".
    let usage = relay_bin(
        &["usage", "--by", "session", "--config", &config],
        &d.one,
        &env,
    )
    .await;
    assert!(usage.status.success(), "{}", text(&usage));
    let usage = String::from_utf8_lossy(&usage.stdout).into_owned();
    assert!(usage.lines().any(|l| l.starts_with("demo ")), "{usage}");

    // --offline replays from another checkout; nothing goes upstream.
    let (a, o) = (anthropic.calls().get(), openai.calls().get());
    let replay = relay_bin(
        &[
            "run",
            "claude",
            "--offline",
            "--config",
            &config,
            "--log-file",
            &log,
            "--",
            "-p",
            "say hi",
        ],
        &d.two,
        &env,
    )
    .await;
    assert!(replay.status.success(), "{}", text(&replay));
    let replay = relay_bin(
        &[
            "run",
            "codex",
            "--offline",
            "--config",
            &config,
            "--log-file",
            &log,
            "--",
            "exec",
            "--skip-git-repo-check",
            "say hi",
        ],
        &d.two,
        &env,
    )
    .await;
    assert!(replay.status.success(), "{}", text(&replay));
    assert_eq!((anthropic.calls().get(), openai.calls().get()), (a, o));

    // `relay env` prints the same settings, for doing it by hand.
    let e = relay_bin(&["env", "claude", "--config", &config], &d.one, &env).await;
    assert!(
        String::from_utf8_lossy(&e.stdout).contains("export ANTHROPIC_BASE_URL=http://127.0.0.1:0")
    );
    let e = relay_bin(&["env", "codex", "--config", &config], &d.one, &env).await;
    assert!(String::from_utf8_lossy(&e.stdout).contains("[model_providers.relay]"));
}

/// `text` with every `<current_date>…</current_date>` set to 2020-01-01.
fn dated_2020(text: &str) -> String {
    let (open, close) = ("<current_date>", "</current_date>");
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find(open) {
        let after = &rest[i + open.len()..];
        let Some(j) = after.find(close) else { break };
        out.push_str(&rest[..i + open.len()]);
        out.push_str("2020-01-01");
        rest = &after[j..];
    }
    out.push_str(rest);
    out
}

/// relay's cost of a Claude Code run equals what Claude Code itself reports (`total_cost_usd`)
/// for the same usage, within 1%: every token class (input, cache reads, 5-minute and 1-hour
/// cache writes, output) at Claude Code's default model's rates.
#[tokio::test]
async fn claude_code_and_relay_agree_on_what_a_run_cost() {
    let Some((openai, anthropic, d)) = setup(&["claude"]).await else {
        return;
    };
    let relay = Relay::start_with(&providers(&openai, &anthropic), Env::empty(), false).await;
    let mut env = claude_env(&relay, &d.home);
    env.push(("ANTHROPIC_CUSTOM_HEADERS", "x-mock-usage: 1h".to_string()));
    let args = ["-p", "say hi", "--output-format", "json"];
    let out = run("claude", &args, &d.one, &env, None).await;
    assert!(out.status.success(), "{}", text(&out));
    let theirs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let reported = theirs["total_cost_usd"].as_f64().unwrap();
    let calls = anthropic.calls().get() as u64;
    within(relay.server().cost().wait_settled(calls)).await;
    let resp = within(client().request(get(&relay.url("/relay/usage"))))
        .await
        .unwrap();
    let report = json(resp).await;
    let ours = report["total"]["cost_micros"].as_u64().unwrap() as f64 / 1e6;
    assert!(
        (ours - reported).abs() <= reported * 0.01,
        "relay booked ${ours}, Claude Code reports ${reported}: {theirs}"
    );
}

/// A team gateway (`auth.enabled`): Claude Code and Codex (over the Responses WebSocket) present a
/// relay key where the provider key goes; relay sends each provider its own key, and books both
/// agents' requests to the key's name.
#[tokio::test]
async fn claude_code_and_codex_present_relay_keys_on_a_team_gateway() {
    let Some((openai, anthropic, d)) = setup(&["claude", "codex"]).await else {
        return;
    };
    let yaml = format!(
        "auth:\n  enabled: true\n{}",
        providers(&openai, &anthropic)
            .replace(
                "    kind: openai\n",
                "    kind: openai\n    api_key_env: TEAM_OPENAI_KEY\n"
            )
            .replace(
                "    kind: anthropic\n",
                "    kind: anthropic\n    api_key_env: TEAM_ANTHROPIC_KEY\n"
            )
    );
    let relay = Relay::start_with(
        &yaml,
        Env::empty()
            .with("TEAM_OPENAI_KEY", "sk-team-openai")
            .with("TEAM_ANTHROPIC_KEY", "sk-ant-team"),
        false,
    )
    .await;
    let made = send(&relay, "POST", "/relay/keys", &[], r#"{"name":"agents"}"#).await;
    assert_eq!(made.status, 201, "{:?}", made.body);
    let key = made.json()["key"].as_str().unwrap().to_string();

    let mut env = claude_env(&relay, &d.home);
    env.retain(|(k, _)| *k != "ANTHROPIC_API_KEY");
    env.push(("ANTHROPIC_API_KEY", key.clone()));
    let claude = run("claude", &["-p", "say hi"], &d.one, &env, None).await;
    assert!(claude.status.success(), "{}", text(&claude));
    assert!(String::from_utf8_lossy(&claude.stdout).contains("Hello world"));
    let sent = anthropic.last();
    assert_eq!(sent.headers["x-api-key"], "sk-ant-team");
    assert!(!format!("{:?}", sent.headers).contains(&key));

    let mut env = codex_env(&d.home);
    env.retain(|(k, _)| *k != "OPENAI_API_KEY");
    env.push(("OPENAI_API_KEY", key.clone()));
    let args = codex_args_over(&relay, "say hi", true);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let codex = run("codex", &args, &d.two, &env, None).await;
    assert!(codex.status.success(), "{}", text(&codex));
    assert!(String::from_utf8_lossy(&codex.stdout).contains("Hello world"));
    let turn = openai.last();
    assert_eq!(turn.uri, "/v1/responses");
    assert_eq!(turn.headers["authorization"], "Bearer sk-team-openai");
    assert!(!format!("{:?}", turn.headers).contains(&key));

    relay.server().cost().wait_settled(2).await;
    let usage = send(&relay, "GET", "/relay/usage?by=key", &[], "")
        .await
        .json();
    let agents: u64 = usage["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["group"] == "agents")
        .map(|r| r["requests"].as_u64().unwrap())
        .sum();
    assert!(agents >= 2, "{usage}");
    stop(relay).await;
}
