//! What the clients relay is built for put in a request body that changes on every run without
//! changing the answer: left out of cache keys by default (`cache.client_rules`), so a second run
//! of the same agent session hits. The key only: the forwarded body is never touched.
//!
//! | client | field | what it is |
//! |---|---|---|
//! | Claude Code, Anthropic SDKs | `metadata.user_id` | `user_<hash>_account_<id>_session_<uuid>`: new each session |
//! | Codex CLI | `prompt_cache_key` | the conversation id (a new UUID each run) |
//! | Codex CLI | `client_metadata` | installation and session ids |
//! | Codex CLI | `input[*].id` | ids of the conversation items it sends back (an `item_reference` keeps its id) |
//! | OpenAI SDKs | `user`, `safety_identifier`, `prompt_cache_key` | end-user and cache-routing ids |
//!
//! Volatile *text* inside prompts (dates, directories, git status) is another matter: the
//! portable form of the cache handles it (`cache.portable`).

use std::sync::LazyLock;

use crate::fieldpath::FieldSet;

/// The paths of the table above.
pub const PER_RUN_PATHS: [&str; 6] = [
    "metadata.user_id",
    "prompt_cache_key",
    "client_metadata",
    "input[*].id",
    "user",
    "safety_identifier",
];

/// [`PER_RUN_PATHS`], compiled.
pub fn per_run_fields() -> &'static FieldSet {
    static SET: LazyLock<FieldSet> =
        LazyLock::new(|| FieldSet::parse(&PER_RUN_PATHS).expect("valid paths"));
    &SET
}

/// Request header a caller (or `relay run`) sets to name its session.
pub const X_RELAY_SESSION: &str = "x-relay-session";
/// Request header of a request the dashboard sent again (`r`); removed before forwarding.
pub const X_RELAY_REPLAY: &str = "x-relay-replay";

/// The client a request comes from, from its `User-Agent`: `claude-code 2.1.197`,
/// `codex 0.171.0`, `openai-python 1.99.0`, `anthropic-js 0.94.0`, else the agent's first word.
pub fn client_of(headers: &http::HeaderMap) -> Option<String> {
    let ua = headers.get(http::header::USER_AGENT)?.to_str().ok()?.trim();
    let first = ua.split_whitespace().next()?;
    let (name, version) = first.split_once('/').unwrap_or((first, ""));
    let name = match name {
        "claude-cli" | "claude-code" => "claude-code".to_string(),
        n if n.starts_with("codex") => "codex".to_string(),
        // The Stainless SDKs: `OpenAI/Python 1.99.0`, `Anthropic/JS 0.94.0`.
        "OpenAI" | "Anthropic" | "AsyncOpenAI" | "AsyncAnthropic" => {
            let lang = version.to_ascii_lowercase();
            let version = ua.split_whitespace().nth(1).unwrap_or_default();
            let client = format!("{}-{lang}", name.trim_start_matches("Async").to_lowercase());
            return Some(format!("{client} {version}").trim().to_string());
        }
        n => n.to_string(),
    };
    Some(format!("{name} {version}").trim().to_string())
}

/// The agent session a request belongs to: `x-relay-session` (set by the caller or `relay run`),
/// else Claude Code's `x-claude-code-session-id`, else Codex's `session-id` (its conversation).
pub fn session_of(headers: &http::HeaderMap) -> Option<String> {
    [
        X_RELAY_SESSION,
        "x-claude-code-session-id",
        "session-id",
        "session_id",
    ]
    .iter()
    .find_map(|h| headers.get(*h)?.to_str().ok())
    .map(|s| s.trim().chars().take(128).collect::<String>())
    .filter(|s| !s.is_empty())
}

/// The start of the last user message of a chat, messages or responses body, on one line, at
/// most `max` characters: the last text the user typed (Claude Code puts its reminders before
/// it, in the same message).
pub fn last_user_text(body: &[u8], max: usize) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Body {
        #[serde(default)]
        messages: Option<Vec<serde_json::Value>>,
        #[serde(default)]
        input: Option<serde_json::Value>,
        #[serde(default)]
        prompt: Option<serde_json::Value>,
    }
    let b: Body = serde_json::from_slice(body).ok()?;
    let items: Vec<serde_json::Value> = match (b.messages, b.input, b.prompt) {
        (Some(m), _, _) => m,
        (_, Some(serde_json::Value::String(s)), _) | (_, _, Some(serde_json::Value::String(s))) => {
            return Some(one_line(&s, max))
        }
        (_, Some(serde_json::Value::Array(a)), _) => a,
        _ => return None,
    };
    let user = items.iter().rev().find(|m| m["role"] == "user")?;
    let text = match &user["content"] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(parts) => parts
            .iter()
            .rev()
            .filter(|p| matches!(p["type"].as_str(), Some("text" | "input_text")))
            .filter_map(|p| p["text"].as_str())
            .find(|t| !t.trim_start().starts_with('<'))
            .or_else(|| parts.iter().rev().find_map(|p| p["text"].as_str()))?
            .to_string(),
        _ => return None,
    };
    Some(one_line(&text, max))
}

fn one_line(s: &str, max: usize) -> String {
    let joined = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if joined.chars().count() <= max {
        return joined;
    }
    let mut cut: String = joined.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_sessions_and_prompts() {
        let mut h = http::HeaderMap::new();
        let ua = |h: &mut http::HeaderMap, v: &'static str| {
            h.insert(http::header::USER_AGENT, http::HeaderValue::from_static(v));
            client_of(h)
        };
        assert_eq!(
            ua(&mut h, "claude-cli/2.1.197 (external, sdk-cli)").unwrap(),
            "claude-code 2.1.197"
        );
        assert_eq!(
            ua(&mut h, "codex_exec/0.171.0 (Debian 12.0.0; x86_64) xterm").unwrap(),
            "codex 0.171.0"
        );
        assert_eq!(
            ua(&mut h, "OpenAI/Python 1.99.0").unwrap(),
            "openai-python 1.99.0"
        );
        assert_eq!(
            ua(&mut h, "Anthropic/JS 0.94.0").unwrap(),
            "anthropic-js 0.94.0"
        );
        assert_eq!(ua(&mut h, "curl/8.5.0").unwrap(), "curl 8.5.0");
        assert_eq!(session_of(&h), None);
        h.insert("session-id", http::HeaderValue::from_static("01a2"));
        assert_eq!(session_of(&h).unwrap(), "01a2");
        h.insert(
            "x-claude-code-session-id",
            http::HeaderValue::from_static("1f12"),
        );
        assert_eq!(session_of(&h).unwrap(), "1f12");
        h.insert(X_RELAY_SESSION, http::HeaderValue::from_static("demo"));
        assert_eq!(session_of(&h).unwrap(), "demo");

        let claude = br#"{"messages":[{"role":"user","content":"first"},{"role":"assistant","content":"ok"},{"role":"user","content":[{"type":"text","text":"<system-reminder>x</system-reminder>"},{"type":"text","text":"say\n  hi"}]}]}"#;
        assert_eq!(last_user_text(claude, 40).unwrap(), "say hi");
        let codex = br#"{"input":[{"type":"message","role":"user","content":[{"type":"input_text","text":"<environment_context>..."}]},{"type":"message","role":"user","content":[{"type":"input_text","text":"fix the build please, it fails on main"}]}]}"#;
        assert_eq!(last_user_text(codex, 12).unwrap(), "fix the bui…");
        assert_eq!(
            last_user_text(br#"{"input":"hello"}"#, 40).unwrap(),
            "hello"
        );
        assert_eq!(last_user_text(b"not json", 40), None);
    }
}
