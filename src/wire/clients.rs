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
