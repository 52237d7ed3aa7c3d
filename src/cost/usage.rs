//! Token usage as the providers report it, and the [`Meter`] that reads it from an answer as the
//! answer streams to the caller.
//!
//! In: the bytes of an upstream (or replayed) response, frame by frame, exactly as the caller gets
//! them. Out: one [`Usage`], normalised so that every token is priced once at its own rate:
//!
//! - **OpenAI** counts cache reads and writes *inside* `prompt_tokens`
//!   (`prompt_tokens_details.cached_tokens` / `.cache_write_tokens`, `input_tokens_details.*` for
//!   the Responses API): `input` is `prompt_tokens` minus both, `cached_input` the reads,
//!   `cache_write` the writes.
//! - **Anthropic** reports `cache_read_input_tokens` and `cache_creation_input_tokens` *outside*
//!   `input_tokens`: `input` is `input_tokens`, `cached_input` the reads; the writes split by
//!   `cache_creation.ephemeral_1h_input_tokens` into `cache_write_1h` and `cache_write` (5 minutes).
//! - Reasoning tokens (`completion_tokens_details.reasoning_tokens`, `output_tokens_details.*`)
//!   are part of `output`; they are kept apart to be shown (and priced at a reasoning rate where
//!   the price data has one).
//!
//! Where the usage sits: JSON bodies carry a top-level `usage` (read once the body ended; bodies
//! over [`MAX_JSON`] are not read). SSE streams are parsed event by event, holding only the event
//! being received: the OpenAI usage-only chunk before `[DONE]`, Anthropic `message_start`
//! (`message.usage`) merged with `message_delta` (`usage`), the Responses API's
//! `response.completed` (`response.usage`). When no usage may come, the meter keeps the events
//! (shared slices of the bytes that went by, no copy, bounded) so that, if none came, the text is
//! extracted and counted off the async workers (see [`super::tokens`]).

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};

/// Tokens of one request, in the classes that have their own price. The input classes do not
/// overlap (their sum is the prompt); `reasoning` is part of `output`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Input tokens billed at the input rate (neither read from nor written to a prompt cache).
    pub input: u64,
    /// Input tokens read from the provider's prompt cache (cached-input rate).
    pub cached_input: u64,
    /// Input tokens written to the provider's prompt cache for 5 minutes (or for a time the
    /// provider does not say): the cache-write rate.
    pub cache_write: u64,
    /// Input tokens written to Anthropic's 1-hour prompt cache (its own, higher rate).
    #[serde(default)]
    pub cache_write_1h: u64,
    /// Output tokens, reasoning included.
    pub output: u64,
    /// Of `output`, the reasoning tokens (priced at the reasoning rate where the price data has
    /// one, else as output; shown apart).
    pub reasoning: u64,
    /// Counted by relay with a tokenizer because the provider reported none.
    pub estimated: bool,
}

impl Usage {
    /// All input tokens, whatever their rate (what the provider calls the prompt).
    pub fn prompt(&self) -> u64 {
        self.input + self.cached_input + self.cache_write + self.cache_write_1h
    }

    /// Prompt plus output.
    pub fn total(&self) -> u64 {
        self.prompt() + self.output
    }
}

/// A `usage` object as any of the providers write it; fields absent in one dialect are `None`.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct RawUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    prompt_tokens_details: Option<Details>,
    completion_tokens_details: Option<Details>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    input_tokens_details: Option<Details>,
    output_tokens_details: Option<Details>,
    cache_read_input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    /// Anthropic: the cache writes by how long they are kept.
    cache_creation: Option<CacheCreation>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct Details {
    cached_tokens: Option<u64>,
    /// OpenAI: prompt tokens written to the prompt cache (models that price cache writes).
    cache_write_tokens: Option<u64>,
    reasoning_tokens: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct CacheCreation {
    ephemeral_5m_input_tokens: Option<u64>,
    ephemeral_1h_input_tokens: Option<u64>,
}

impl RawUsage {
    /// Fields present in `later` replace this one's (Anthropic's `message_delta` after
    /// `message_start`).
    fn merge(&mut self, later: RawUsage) {
        macro_rules! take {
            ($($f:ident),*) => { $( if later.$f.is_some() { self.$f = later.$f; } )* };
        }
        take!(
            prompt_tokens,
            completion_tokens,
            prompt_tokens_details,
            completion_tokens_details,
            input_tokens,
            output_tokens,
            input_tokens_details,
            output_tokens_details,
            cache_read_input_tokens,
            cache_creation_input_tokens,
            cache_creation
        );
    }

    /// Normalises (module docs). `None` when no input count is present.
    fn normalise(&self) -> Option<Usage> {
        let detail = |d: &Option<Details>, f: fn(&Details) -> Option<u64>| {
            d.as_ref().and_then(f).unwrap_or(0)
        };
        // OpenAI: cache reads and writes are inside the prompt count.
        let inside = |prompt: u64, d: &Option<Details>, out: &Option<Details>, output: u64| {
            let cached = detail(d, |d| d.cached_tokens).min(prompt);
            let written = detail(d, |d| d.cache_write_tokens).min(prompt - cached);
            Usage {
                input: prompt - cached - written,
                cached_input: cached,
                cache_write: written,
                cache_write_1h: 0,
                output,
                reasoning: detail(out, |d| d.reasoning_tokens).min(output),
                estimated: false,
            }
        };
        if let Some(prompt) = self.prompt_tokens {
            // Chat completions, completions, embeddings.
            let output = self.completion_tokens.unwrap_or(0);
            return Some(inside(
                prompt,
                &self.prompt_tokens_details,
                &self.completion_tokens_details,
                output,
            ));
        }
        let input = self.input_tokens?;
        let output = self.output_tokens.unwrap_or(0);
        if self.input_tokens_details.is_some() || self.output_tokens_details.is_some() {
            // The Responses API.
            return Some(inside(
                input,
                &self.input_tokens_details,
                &self.output_tokens_details,
                output,
            ));
        }
        // Anthropic: cache reads and writes are outside input_tokens; the writes split by how
        // long they are kept (`cache_creation`), the total alone being 5-minute writes.
        let by_time = self.cache_creation.as_ref();
        let h1 = by_time
            .and_then(|c| c.ephemeral_1h_input_tokens)
            .unwrap_or(0);
        let written = match self.cache_creation_input_tokens {
            Some(total) => total.max(h1),
            None => {
                by_time
                    .and_then(|c| c.ephemeral_5m_input_tokens)
                    .unwrap_or(0)
                    + h1
            }
        };
        Some(Usage {
            input,
            cached_input: self.cache_read_input_tokens.unwrap_or(0),
            cache_write: written - h1,
            cache_write_1h: h1,
            output,
            reasoning: 0,
            estimated: false,
        })
    }
}

/// The largest JSON answer the meter holds to read its usage (usage sits at its end).
pub const MAX_JSON: usize = 8 << 20;
/// The largest single SSE event the meter holds; a longer one is passed on unread.
const MAX_EVENT: usize = 4 << 20;
/// The most stream bytes kept (as shared slices of the events) for a count.
const MAX_TEXT: usize = 4 << 20;

/// Answers up to this size are parsed whole to find `usage`; larger ones (embeddings batches) are
/// searched from the end for it, so reading the usage stays far below a millisecond.
const PARSE_WHOLE: usize = 64 << 10;

/// The usage in a whole JSON answer (top-level `usage`), if any.
pub fn from_json(body: &[u8]) -> Option<Usage> {
    #[derive(Deserialize)]
    struct Top {
        usage: Option<RawUsage>,
    }
    if body.len() > PARSE_WHOLE {
        // Providers put `usage` at (or near) the end: parse just that object.
        if let Some(u) = last_usage_object(body) {
            return u.normalise();
        }
    }
    serde_json::from_slice::<Top>(body).ok()?.usage?.normalise()
}

/// The last `"usage": {...}` object in `body`, parsed.
fn last_usage_object(body: &[u8]) -> Option<RawUsage> {
    const NEEDLE: &[u8] = b"\"usage\"";
    let mut end = body.len();
    while end >= NEEDLE.len() {
        let at = memchr::memmem::rfind(&body[..end], NEEDLE)?;
        let mut j = at + NEEDLE.len();
        while j < body.len() && body[j].is_ascii_whitespace() {
            j += 1;
        }
        if body.get(j) == Some(&b':') {
            j += 1;
            while j < body.len() && body[j].is_ascii_whitespace() {
                j += 1;
            }
            if body.get(j) == Some(&b'{') {
                let mut de = serde_json::Deserializer::from_slice(&body[j..]);
                return RawUsage::deserialize(&mut de).ok();
            }
        }
        end = at;
    }
    None
}

/// The usage in a sequence of whole SSE events (a recorded stream), if any.
pub fn from_sse_events<'a>(events: impl IntoIterator<Item = &'a [u8]>) -> Option<Usage> {
    let mut acc: Option<RawUsage> = None;
    for e in events {
        for data in data_lines(e) {
            absorb_usage(&mut acc, data);
        }
    }
    acc?.normalise()
}

/// Reads the usage of one SSE `data:` payload into `acc`, when it has one.
fn absorb_usage(acc: &mut Option<RawUsage>, data: &[u8]) {
    if !has_usage_object(data) {
        return;
    }
    #[derive(Deserialize)]
    struct Nested {
        usage: Option<RawUsage>,
    }
    #[derive(Deserialize)]
    struct Event {
        usage: Option<RawUsage>,
        message: Option<Nested>,
        response: Option<Nested>,
    }
    let Ok(ev) = serde_json::from_slice::<Event>(data) else {
        return;
    };
    for found in [
        ev.usage,
        ev.message.and_then(|m| m.usage),
        ev.response.and_then(|r| r.usage),
    ]
    .into_iter()
    .flatten()
    {
        match acc {
            Some(a) => a.merge(found),
            None => *acc = Some(found),
        }
    }
}

/// True when `data` holds `"usage"` followed by an object (not `null`): a cheap test before parsing,
/// since OpenAI streams that include usage carry `"usage":null` in every other chunk.
fn has_usage_object(data: &[u8]) -> bool {
    const NEEDLE: &[u8] = b"\"usage\"";
    let mut from = 0;
    while let Some(i) = memchr::memmem::find(&data[from..], NEEDLE) {
        let mut j = from + i + NEEDLE.len();
        while j < data.len() && (data[j].is_ascii_whitespace() || data[j] == b':') {
            j += 1;
        }
        if data.get(j) == Some(&b'{') {
            return true;
        }
        from = j;
    }
    false
}

/// The `data:` payloads of one SSE event (`data: [DONE]` included).
fn data_lines(event: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    memchr::memchr_iter(b'\n', event)
        .chain(std::iter::once(event.len()))
        .filter_map(move |end| {
            let line = &event[start..end];
            start = end + 1;
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let rest = line.strip_prefix(b"data:")?;
            Some(rest.strip_prefix(b" ").unwrap_or(rest))
        })
}

/// True for OpenAI's usage-only chunk: `"choices": []` and a usage object.
fn is_usage_only_chunk(event: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Chunk {
        choices: Option<Vec<serde::de::IgnoredAny>>,
        usage: Option<serde::de::IgnoredAny>,
    }
    data_lines(event).any(|d| {
        has_usage_object(d)
            && serde_json::from_slice::<Chunk>(d)
                .is_ok_and(|c| c.usage.is_some() && c.choices.is_some_and(|c| c.is_empty()))
    })
}

/// The generated text of one SSE payload: OpenAI chat `choices[].delta.content`, completions
/// `choices[].text`, Anthropic `delta.text`, Responses API `delta` (a string).
fn delta_text(data: &[u8], out: &mut String) {
    if data == b"[DONE]" {
        return;
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if let Some(choices) = v.get("choices").and_then(|c| c.as_array()) {
        for c in choices {
            for t in [c.pointer("/delta/content"), c.get("text")]
                .into_iter()
                .flatten()
            {
                if let Some(s) = t.as_str() {
                    out.push_str(s);
                }
            }
        }
    }
    match v.get("delta") {
        Some(serde_json::Value::String(s)) => out.push_str(s),
        Some(d) => {
            for k in ["text", "partial_json", "thinking"] {
                if let Some(s) = d.get(k).and_then(|t| t.as_str()) {
                    out.push_str(s);
                }
            }
        }
        None => {}
    }
}

/// What a [`Meter`] does besides reading usage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MeterMode {
    /// Keep the generated text of a stream, to count tokens when no usage arrives.
    pub keep_text: bool,
    /// Remove OpenAI's usage-only chunk from what the caller receives (relay asked for it, the
    /// caller did not: `cost.stream_usage: inject`).
    pub strip_usage_chunk: bool,
}

enum Body {
    Json {
        buf: BytesMut,
        over: bool,
        keep_text: bool,
    },
    Sse(Box<SseState>),
}

struct SseState {
    partial: BytesMut,
    usage: Option<RawUsage>,
    /// The events kept for a count (cheap: each is a shared slice of what already went by), with
    /// their total size; parsed only if no usage came, off the async workers.
    kept: Option<(Vec<Bytes>, usize)>,
    strip: bool,
    /// An event too long to hold went by: stop reading (and stripping).
    blind: bool,
}

/// Reads usage from an answer as it passes (module docs). Lives on the response body.
pub struct Meter {
    body: Body,
}

/// What the meter found when the answer ended (or was cut off).
#[derive(Debug, Default)]
pub struct Reading {
    /// The provider's usage, when the answer carried one.
    pub usage: Option<Usage>,
    /// What was generated, when no usage came and the meter was asked to keep it.
    pub generated: Option<Generated>,
}

/// The text in a content value: a string, an array of strings or of parts with `text`.
pub(crate) fn text_of(v: &serde_json::Value) -> String {
    use serde_json::Value;
    match v {
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => s.clone(),
                other => other
                    .get("text")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// The text of a whole JSON answer (chat `choices[].message.content`, completions
/// `choices[].text`, Anthropic `content[].text`).
pub fn answer_text(body: &[u8]) -> String {
    use serde_json::Value;
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return String::new();
    };
    let mut out = String::new();
    if let Some(choices) = v.get("choices").and_then(Value::as_array) {
        for c in choices {
            for t in [c.pointer("/message/content"), c.get("text")]
                .into_iter()
                .flatten()
            {
                out.push_str(&text_of(t));
            }
        }
    }
    if let Some(content) = v.get("content") {
        out.push_str(&text_of(content));
    }
    out
}

/// A generated answer kept for a token count. Turning it into text parses JSON: do it on the
/// blocking pool ([`Generated::text`]).
#[derive(Debug, Clone)]
pub enum Generated {
    /// A whole JSON answer.
    Json(Bytes),
    /// A stream's events.
    Events(Vec<Bytes>),
}

impl Generated {
    /// The generated text (chat and completions choices, Anthropic text blocks and deltas,
    /// Responses API deltas).
    pub fn text(&self) -> String {
        match self {
            Generated::Json(b) => answer_text(b),
            Generated::Events(evs) => {
                let mut out = String::new();
                for e in evs {
                    for d in data_lines(e) {
                        delta_text(d, &mut out);
                    }
                }
                out
            }
        }
    }
}

impl Meter {
    /// A meter for an answer whose `Content-Type` is `content_type`.
    pub fn new(content_type: &str, mode: MeterMode) -> Meter {
        let body = if crate::wire::is_event_stream(content_type.as_bytes()) {
            Body::Sse(Box::new(SseState {
                partial: BytesMut::new(),
                usage: None,
                kept: mode.keep_text.then(|| (Vec::new(), 0)),
                strip: mode.strip_usage_chunk,
                blind: false,
            }))
        } else {
            Body::Json {
                buf: BytesMut::new(),
                over: false,
                keep_text: mode.keep_text,
            }
        };
        Meter { body }
    }

    /// True when the meter may change the bytes (the body's length is then unknown in advance).
    pub fn rewrites(&self) -> bool {
        matches!(&self.body, Body::Sse(s) if s.strip)
    }

    /// Sees one chunk of the answer; returns what the caller gets (the same bytes unless the
    /// usage-only chunk is stripped, in which case whole events are passed on as they complete).
    pub fn on_data(&mut self, data: Bytes) -> Bytes {
        match &mut self.body {
            Body::Json { buf, over, .. } => {
                if !*over {
                    if buf.len() + data.len() > MAX_JSON {
                        *over = true;
                        *buf = BytesMut::new();
                    } else {
                        buf.extend_from_slice(&data);
                    }
                }
                data
            }
            Body::Sse(s) => s.on_data(data),
        }
    }

    /// Bytes held back (an unfinished last event while stripping); call once the answer ended.
    pub fn take_tail(&mut self) -> Option<Bytes> {
        match &mut self.body {
            Body::Sse(s) if s.strip && !s.partial.is_empty() => Some(s.partial.split().freeze()),
            _ => None,
        }
    }

    /// True when bytes are held back.
    pub fn has_tail(&self) -> bool {
        matches!(&self.body, Body::Sse(s) if s.strip && !s.partial.is_empty())
    }

    /// What was found.
    pub fn finish(self) -> Reading {
        match self.body {
            Body::Json {
                buf,
                over,
                keep_text,
            } => {
                let usage = if over { None } else { from_json(&buf) };
                let generated =
                    (usage.is_none() && keep_text && !over).then(|| Generated::Json(buf.freeze()));
                Reading { usage, generated }
            }
            Body::Sse(mut s) => {
                // A last event without its blank line still counts.
                if !s.partial.is_empty() && !s.blind {
                    let ev = s.partial.split().freeze();
                    s.read_event(&ev);
                }
                let usage = s.usage.as_ref().and_then(RawUsage::normalise);
                Reading {
                    generated: match (usage, s.kept.take()) {
                        (None, Some((events, _))) => Some(Generated::Events(events)),
                        _ => None,
                    },
                    usage,
                }
            }
        }
    }
}

impl SseState {
    fn on_data(&mut self, data: Bytes) -> Bytes {
        if self.blind {
            return data;
        }
        if !self.strip {
            self.drain_events(&data, |_, _| {});
            self.check_bound();
            return data;
        }
        // Stripping: pass on whole events only. When the chunk holds exactly whole events and none
        // is dropped, the chunk itself goes on (no copy).
        let aligned = self.partial.is_empty() && data.ends_with(b"\n\n");
        let mut out = BytesMut::new();
        let mut dropped = false;
        self.drain_events(&data, |ev, usage_only| {
            if usage_only {
                dropped = true;
            } else {
                out.extend_from_slice(ev);
            }
        });
        if self.partial.len() > MAX_EVENT {
            // Never lose the caller's bytes: give up stripping and pass everything on.
            out.extend_from_slice(&self.partial.split());
            self.blind = true;
            return out.freeze();
        }
        if aligned && !dropped && self.partial.is_empty() {
            return data;
        }
        out.freeze()
    }

    fn check_bound(&mut self) {
        if self.partial.len() > MAX_EVENT {
            self.partial = BytesMut::new();
            self.blind = true;
        }
    }

    /// Adds `data` to what is pending, splits off every complete event, reads it, and hands it to
    /// `sink` with whether it is the usage-only chunk (only checked while stripping). With nothing
    /// pending (the usual case: a chunk of whole events), events are cut from `data` itself, and
    /// only an incomplete tail is copied.
    fn drain_events(&mut self, data: &Bytes, mut sink: impl FnMut(&[u8], bool)) {
        let mut partial = std::mem::take(&mut self.partial);
        crate::wire::sse::split_events(&mut partial, data, |ev| {
            self.read_event(&ev);
            let usage_only = self.strip && is_usage_only_chunk(&ev);
            sink(&ev, usage_only);
        });
        self.partial = partial;
    }

    fn read_event(&mut self, ev: &Bytes) {
        for data in data_lines(ev) {
            absorb_usage(&mut self.usage, data);
        }
        if let Some((events, size)) = &mut self.kept {
            if *size < MAX_TEXT {
                *size += ev.len();
                events.push(ev.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests;
