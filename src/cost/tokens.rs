//! Counting tokens with tiktoken when the provider reported none (a stream without its usage
//! chunk, an answer cut off before its usage, an OpenAI-compatible server that sends no usage).
//!
//! The encoding follows the model family: `o200k_base` for gpt-4o, gpt-4.1, gpt-5, the o-series
//! and anything unknown; `cl100k_base` for gpt-4, gpt-3.5 and the embeddings models. Claude has no
//! public tokenizer: `cl100k_base` is used as an approximation. Every count made here is marked
//! `estimated`, never mixed up with a provider's figure.
//!
//! Each tokenizer is built once, lazily, on first use (tiktoken-rs' singletons, ~100 ms). Callers
//! run [`Estimate::count`] on the blocking pool (see [`super::finish`]): never on the async workers.

use serde_json::Value;
use tiktoken_rs::CoreBPE;

use super::usage::{text_of, Usage};

/// Which BPE a model uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    O200kBase,
    Cl100kBase,
}

impl Encoding {
    /// The encoding for `model` (module docs).
    pub fn for_model(model: &str) -> Encoding {
        let m = model.to_ascii_lowercase();
        let cl100k = [
            "gpt-4-",
            "gpt-3.5",
            "text-embedding-3",
            "text-embedding-ada",
            "claude",
        ];
        if m == "gpt-4" || (cl100k.iter().any(|p| m.starts_with(p)) && !m.starts_with("gpt-4-o")) {
            // "gpt-4-turbo", "gpt-4-0613"... but not "gpt-4o" (no dash) or "gpt-4.1".
            Encoding::Cl100kBase
        } else {
            Encoding::O200kBase
        }
    }

    fn bpe(self) -> &'static CoreBPE {
        match self {
            Encoding::O200kBase => tiktoken_rs::o200k_base_singleton(),
            Encoding::Cl100kBase => tiktoken_rs::cl100k_base_singleton(),
        }
    }

    /// Tokens in `text` (special tokens counted as text).
    pub fn count(self, text: &str) -> u64 {
        if text.is_empty() {
            return 0;
        }
        self.bpe().encode_ordinary(text).len() as u64
    }
}

/// OpenAI's chat accounting: every message costs 3 tokens of framing plus its role and content,
/// and the reply is primed with 3 more.
const PER_MESSAGE: u64 = 3;
const REPLY_PRIMER: u64 = 3;

/// Tokens of a request body: chat `messages` (OpenAI recipe), Anthropic `system` + `messages`,
/// completions `prompt`, Responses / embeddings `input`. Bodies that are not JSON count as text.
pub fn count_request(enc: Encoding, body: &[u8]) -> u64 {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return enc.count(&String::from_utf8_lossy(body));
    };
    let mut total = 0;
    if let Some(messages) = v.get("messages").and_then(Value::as_array) {
        for m in messages {
            total += PER_MESSAGE;
            if let Some(role) = m.get("role").and_then(Value::as_str) {
                total += enc.count(role);
            }
            if let Some(name) = m.get("name").and_then(Value::as_str) {
                total += enc.count(name) + 1;
            }
            if let Some(c) = m.get("content") {
                total += enc.count(&text_of(c));
            }
        }
        total += REPLY_PRIMER;
    }
    for field in ["system", "prompt", "input"] {
        if let Some(c) = v.get(field) {
            total += enc.count(&text_of(c));
        }
    }
    total
}

/// A count to make off the async workers: the request and what was generated.
#[derive(Debug, Clone)]
pub struct Estimate {
    pub model: String,
    pub request: bytes::Bytes,
    pub output: super::usage::Generated,
}

impl Estimate {
    /// Counts (builds the tokenizer on first use: call on the blocking pool).
    pub fn count(&self) -> Usage {
        let enc = Encoding::for_model(&self.model);
        Usage {
            input: count_request(enc, &self.request),
            cached_input: 0,
            cache_write: 0,
            cache_write_1h: 0,
            output: enc.count(&self.output.text()),
            reasoning: 0,
            estimated: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_by_family() {
        for m in [
            "gpt-4o",
            "gpt-4o-mini-2024-07-18",
            "gpt-4.1",
            "gpt-5",
            "o1",
            "o3-mini",
            "o4-mini",
            "unknown",
        ] {
            assert_eq!(Encoding::for_model(m), Encoding::O200kBase, "{m}");
        }
        for m in [
            "gpt-4",
            "gpt-4-0613",
            "gpt-4-turbo",
            "gpt-3.5-turbo",
            "text-embedding-3-small",
            "claude-sonnet-4-5",
        ] {
            assert_eq!(Encoding::for_model(m), Encoding::Cl100kBase, "{m}");
        }
    }

    /// Known values: OpenAI's cookbook ("How to count tokens with tiktoken") and the tiktoken
    /// test suite.
    #[test]
    fn counts_match_known_values() {
        let cl = Encoding::Cl100kBase;
        assert_eq!(cl.count("tiktoken is great!"), 6);
        assert_eq!(cl.count("hello world"), 2);
        assert_eq!(cl.count("antidisestablishmentarianism"), 6);
        assert_eq!(cl.count(""), 0);
        let o = Encoding::O200kBase;
        assert_eq!(o.count("hello world"), 2);
        assert_eq!(
            o.bpe().encode_ordinary("tiktoken is great!"),
            [83, 8251, 2488, 382, 2212, 0]
        );
        assert_eq!(
            cl.bpe().encode_ordinary("tiktoken is great!"),
            [83, 1609, 5963, 374, 2294, 0]
        );
        // The two encodings really differ.
        assert_ne!(
            cl.count("антидисэстаблишментарианизм"),
            o.count("антидисэстаблишментарианизм")
        );
    }

    /// The cookbook's example conversation counts 129 prompt tokens on gpt-4 / gpt-3.5 models.
    #[test]
    fn chat_request_count_follows_the_openai_recipe() {
        let body = serde_json::json!({"model": "gpt-4", "messages": [
            {"role": "system", "content": "You are a helpful, pattern-following assistant that translates corporate jargon into plain English."},
            {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
            {"role": "system", "name": "example_assistant", "content": "Things working well together will increase revenue."},
            {"role": "system", "name": "example_user", "content": "Let's circle back when we have more bandwidth to touch base on opportunities for increased leverage."},
            {"role": "system", "name": "example_assistant", "content": "Let's talk later when we're less busy about how to do better."},
            {"role": "user", "content": "This late pivot means we don't have time to boil the ocean for the client deliverable."}
        ]});
        let n = count_request(Encoding::Cl100kBase, body.to_string().as_bytes());
        assert_eq!(n, 129);
    }
}
