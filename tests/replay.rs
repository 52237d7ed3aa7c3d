//! Replaying agent sessions: per-run ids left out of the key, the portable form replaying a
//! recording another day from another directory, misses that name the nearest recording, and
//! `relay cache why`. Against a real relay and mock upstreams; the real agents are in
//! `tests/agents.rs`.

mod common;

use common::mock::{Kind, Mock};
use common::*;
use http::StatusCode;

const MESSAGES: &str = "/v1/messages";
const RESPONSES: &str = "/v1/responses";

/// A Claude Code request as 2.1.x sends it: a session id in `metadata.user_id`, its working
/// directory, home, date, OS and git status in the system prompt and the first message.
fn claude_code(cwd: &str, date: &str, session: &str, prompt: &str) -> String {
    let system = format!(
        "You are Claude Code.\n\n# Environment\n - Primary working directory: {cwd}\n - Is a git repository: true\n - Platform: linux\n - Shell: bash\n - OS Version: Linux 6.1.{date_digit}-amd64\n\n# Memory\nYou have a persistent memory at `/home/dev/.claude/projects/{dashed}/memory/`.\n\ngitStatus: This is the git status at the start of the conversation.\nCurrent branch: main\n\nStatus:\nM src/{session}.rs\n\nRecent commits:\nabc123 work",
        date_digit = &date[9..],
        dashed = cwd.replace('/', "-"),
    );
    serde_json::json!({
        "model": "claude-opus-4-8",
        "max_tokens": 64000,
        "stream": false,
        "metadata": {"user_id": format!("{{\"device_id\":\"d1\",\"session_id\":\"{session}\"}}")},
        "system": [{"type": "text", "text": system}],
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": format!("<system-reminder>\n# currentDate\nToday's date is {date}.\n</system-reminder>")},
            {"type": "text", "text": prompt},
        ]}],
    })
    .to_string()
}

/// A Codex request: a new conversation id, metadata and item ids on every run.
fn codex(cwd: &str, run: u32, prompt: &str) -> String {
    serde_json::json!({
        "model": "gpt-5-codex",
        "stream": false,
        "prompt_cache_key": format!("conv-{run}"),
        "client_metadata": {"turn_id": format!("turn-{run}")},
        "input": [
            {"type": "message", "id": format!("msg_{run}a"), "role": "developer", "content": [{"type": "input_text", "text": "You are Codex."}]},
            {"type": "message", "id": format!("msg_{run}b"), "role": "user", "content": [{"type": "input_text", "text": format!("<environment_context>\n  <cwd>{cwd}</cwd>\n  <current_date>2026-12-0{run}</current_date>\n  <timezone>Etc/UTC</timezone>\n</environment_context>")}]},
            {"type": "message", "id": format!("msg_{run}c"), "role": "user", "content": [{"type": "input_text", "text": prompt}]},
        ],
    })
    .to_string()
}

async fn setup() -> (Mock, Mock, Relay) {
    let openai = Mock::start("openai", Kind::OpenAi).await;
    let anthropic = Mock::start("anthropic", Kind::Anthropic).await;
    let relay = Relay::start(&format!(
        "{}cache:\n  enabled: true\n",
        providers(&openai, &anthropic)
    ))
    .await;
    (openai, anthropic, relay)
}

const ANTHROPIC: [(&str, &str); 1] = [("anthropic-version", "2023-06-01")];

#[tokio::test]
async fn a_second_agent_run_hits_despite_its_new_ids() {
    let (openai, anthropic, relay) = setup().await;
    let first = post_json(
        &relay,
        MESSAGES,
        &claude_code("/home/dev/app", "2026-12-01", "s1", "say hi"),
        &ANTHROPIC,
    )
    .await;
    assert_eq!(first.header("x-relay-cache"), Some("MISS"));
    // Same day, same directory, a new session: the session id is not part of the key.
    let second = post_json(
        &relay,
        MESSAGES,
        &claude_code("/home/dev/app", "2026-12-01", "s1", "say hi").replace("\"s1\\\"", "\"s2\\\""),
        &ANTHROPIC,
    )
    .await;
    assert_eq!(second.header("x-relay-cache"), Some("HIT"));
    assert_eq!(second.header("x-relay-cache-match"), Some("normalized"));
    assert_eq!(second.body, first.body);
    assert_eq!(anthropic.calls().get(), 1);
    // What went upstream was the body as sent, session id and all.
    assert!(String::from_utf8_lossy(&anthropic.last().body).contains("s1"));

    let run1 = post_json(&relay, RESPONSES, &codex("/w/x", 1, "fix it"), &[]).await;
    assert_eq!(run1.header("x-relay-cache"), Some("MISS"));
    let again = post_json(&relay, RESPONSES, &codex("/w/x", 1, "fix it"), &[]).await;
    assert_eq!(again.header("x-relay-cache-match"), Some("exact"));
    // A new run: new conversation id, metadata, item ids, same day.
    let run2 = codex("/w/x", 1, "fix it")
        .replace("conv-1", "conv-9")
        .replace("turn-1", "turn-9")
        .replace("msg_1", "msg_9");
    let run2 = post_json(&relay, RESPONSES, &run2, &[]).await;
    assert_eq!(run2.header("x-relay-cache"), Some("HIT"));
    assert_eq!(openai.calls().get(), 1);
}

#[tokio::test]
async fn offline_replays_another_day_from_another_directory_and_explains_misses() {
    let (_openai, anthropic, relay) = setup().await;
    let recorded = post_json(
        &relay,
        MESSAGES,
        &claude_code("/home/dev/app", "2026-12-01", "s1", "say hi"),
        &ANTHROPIC,
    )
    .await;
    assert_eq!(recorded.status, StatusCode::OK);
    let codex_recorded =
        post_json(&relay, RESPONSES, &codex("/Users/bo/w/x", 1, "fix it"), &[]).await;
    assert_eq!(codex_recorded.status, StatusCode::OK);

    // The next day, from another checkout, as `relay serve --offline` would answer
    // (`x-relay-cache: only` is the same lookup without restarting).
    let only = [
        ("anthropic-version", "2023-06-01"),
        ("x-relay-cache", "only"),
    ];
    let tomorrow = claude_code("/home/dev/other", "2026-12-02", "s7", "say hi");
    let hit = post_json(&relay, MESSAGES, &tomorrow, &only).await;
    assert_eq!(hit.status, StatusCode::OK);
    assert_eq!(hit.header("x-relay-cache"), Some("HIT"));
    assert_eq!(hit.header("x-relay-cache-match"), Some("portable"));
    assert_eq!(hit.body, recorded.body);
    let codex_tomorrow = codex("/home/ann/x", 2, "fix it");
    let hit = post_json(
        &relay,
        RESPONSES,
        &codex_tomorrow,
        &[("x-relay-cache", "only")],
    )
    .await;
    assert_eq!(hit.header("x-relay-cache-match"), Some("portable"));
    // The live path never matches by the portable form: a new day is a new request there.
    let live = post_json(&relay, MESSAGES, &tomorrow, &ANTHROPIC).await;
    assert_eq!(live.header("x-relay-cache"), Some("MISS"));
    assert_eq!(anthropic.calls().get(), 2);

    // Another prompt is never served from this recording: a miss that names it.
    let other = claude_code("/home/dev/app", "2026-12-02", "s8", "say bye");
    let miss = post_json(
        &relay,
        MESSAGES,
        &other,
        &[
            ("anthropic-version", "2023-06-01"),
            ("x-relay-cache", "only"),
            ("x-request-id", "req-why-1"),
        ],
    )
    .await;
    assert_eq!(miss.status, StatusCode::BAD_REQUEST);
    assert_eq!(miss.header("x-should-retry"), Some("false"));
    let v: serde_json::Value = serde_json::from_slice(&miss.body).unwrap();
    let near = &v["error"]["nearest"];
    assert_eq!(near["differs"][0], "messages[0].content[1].text", "{v}");
    assert_eq!(near["more"], 0, "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("messages[0].content[1].text"), "{message}");
    assert!(message.contains("relay cache why req-why-1"), "{message}");
    let key = near["key"].as_str().unwrap();
    assert_eq!(key.len(), 12);

    // `relay cache why` asks the running relay.
    let (ok, out, err) = cache_cli(&relay, &["why", "req-why-1"]).await;
    assert!(ok, "{err}");
    assert!(out.contains(&format!("nearest   {key}")), "{out}");
    assert!(out.contains("differs messages[0].content[1].text"), "{out}");
    assert!(out.contains("no recording has its portable form"), "{out}");
    let (ok, _, err) = cache_cli(&relay, &["why", "nope"]).await;
    assert!(!ok);
    assert!(err.contains("remembers no cache miss"), "{err}");
}
