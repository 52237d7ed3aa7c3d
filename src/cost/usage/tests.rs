//! The meter and the usage shapes of each provider.

use super::*;

fn run(ct: &str, mode: MeterMode, chunks: &[&str]) -> (String, Reading) {
    let mut m = Meter::new(ct, mode);
    let mut out = Vec::new();
    for c in chunks {
        out.extend_from_slice(&m.on_data(Bytes::copy_from_slice(c.as_bytes())));
    }
    if let Some(t) = m.take_tail() {
        out.extend_from_slice(&t);
    }
    (String::from_utf8(out).unwrap(), m.finish())
}

#[test]
fn openai_json_with_cached_and_reasoning_tokens() {
    let body = r#"{"id":"x","usage":{"prompt_tokens":1000,"completion_tokens":100,"total_tokens":1100,
        "prompt_tokens_details":{"cached_tokens":800,"audio_tokens":0},
        "completion_tokens_details":{"reasoning_tokens":40}}}"#;
    let (out, r) = run("application/json", MeterMode::default(), &[body]);
    assert_eq!(out, body);
    assert_eq!(
        r.usage.unwrap(),
        Usage {
            input: 200,
            cached_input: 800,
            cache_write: 0,
            cache_write_1h: 0,
            output: 100,
            reasoning: 40,
            estimated: false
        }
    );
}

#[test]
fn anthropic_json_cache_tokens_are_outside_input() {
    let body = r#"{"type":"message","usage":{"input_tokens":200,"cache_creation_input_tokens":100,"cache_read_input_tokens":800,"output_tokens":50}}"#;
    let u = from_json(body.as_bytes()).unwrap();
    assert_eq!(
        (u.input, u.cached_input, u.cache_write, u.output),
        (200, 800, 100, 50)
    );
    assert_eq!(u.prompt(), 1100);
}

#[test]
fn responses_api_cached_inside_input() {
    let body = r#"{"usage":{"input_tokens":100,"input_tokens_details":{"cached_tokens":60},"output_tokens":7,"output_tokens_details":{"reasoning_tokens":3}}}"#;
    let u = from_json(body.as_bytes()).unwrap();
    assert_eq!(
        (u.input, u.cached_input, u.output, u.reasoning),
        (40, 60, 7, 3)
    );
}

#[test]
fn large_json_answers_are_searched_from_the_end() {
    let floats = vec![0.125f32; 40_000];
    let body = serde_json::json!({"object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": floats, "note": "usage"}],
        "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": 8, "total_tokens": 8}})
    .to_string();
    assert!(body.len() > PARSE_WHOLE);
    let u = from_json(body.as_bytes()).unwrap();
    assert_eq!((u.input, u.output), (8, 0));
    let without = body.replace("\"usage\":{", "\"usage_x\":{");
    assert_eq!(from_json(without.as_bytes()), None);
}

#[test]
fn json_without_usage() {
    assert_eq!(from_json(br#"{"data":[]}"#), None);
    assert_eq!(from_json(b"not json"), None);
    assert_eq!(from_json(br#"{"usage":null}"#), None);
}

const OPENAI_STREAM: &[&str] = &[
    "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}],\"usage\":null}\n\n",
    "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"}}],\"usage\":null}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2,\"prompt_tokens_details\":{\"cached_tokens\":0}}}\n\n",
    "data: [DONE]\n\n",
];

#[test]
fn openai_sse_usage_chunk_read_and_kept() {
    let (out, r) = run(
        "text/event-stream; charset=utf-8",
        MeterMode::default(),
        OPENAI_STREAM,
    );
    assert_eq!(out, OPENAI_STREAM.concat());
    let u = r.usage.unwrap();
    assert_eq!((u.input, u.output), (9, 2));
    assert!(r.generated.is_none());
}

#[test]
fn openai_sse_usage_chunk_stripped_across_odd_chunking() {
    let all = OPENAI_STREAM.concat();
    let expected: String = all.replace(
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2,\"prompt_tokens_details\":{\"cached_tokens\":0}}}\n\n",
        "",
    );
    // Split everywhere, including inside events and inside the blank line; whole events and
    // chunks of several events too.
    for size in [1, 2, 3, 7, 13, 64, all.len()] {
        let pieces: Vec<String> = all
            .as_bytes()
            .chunks(size)
            .map(|c| String::from_utf8(c.to_vec()).unwrap())
            .collect();
        let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
        for strip in [true, false] {
            let mode = MeterMode {
                keep_text: false,
                strip_usage_chunk: strip,
            };
            let (out, r) = run("text/event-stream", mode, &refs);
            assert_eq!(&out, if strip { &expected } else { &all }, "{size}");
            assert_eq!(r.usage.unwrap().output, 2, "{size} {strip}");
        }
    }
}

#[test]
fn sse_without_usage_keeps_text() {
    let chunks = &[
        "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"Hello\"}}]}\n\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\" world\"}}]}\n\ndata: [DONE]\n\n",
    ];
    let mode = MeterMode {
        keep_text: true,
        strip_usage_chunk: false,
    };
    let (_, r) = run("text/event-stream", mode, chunks);
    assert_eq!(r.usage, None);
    assert_eq!(r.generated.unwrap().text(), "Hello world");
}

#[test]
fn anthropic_sse_merges_start_and_delta() {
    let chunks = &[
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":20,\"cache_creation_input_tokens\":5,\"cache_read_input_tokens\":100,\"output_tokens\":1}}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":42}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    ];
    let (_, r) = run("text/event-stream", MeterMode::default(), chunks);
    let u = r.usage.unwrap();
    assert_eq!(
        (u.input, u.cached_input, u.cache_write, u.output),
        (20, 100, 5, 42)
    );
    let recorded: Vec<&[u8]> = chunks.iter().map(|c| c.as_bytes()).collect();
    assert_eq!(from_sse_events(recorded), Some(u));
}

#[test]
fn usage_object_detection() {
    assert!(has_usage_object(br#"{"usage" : {"a":1}}"#));
    assert!(!has_usage_object(br#"{"usage":null,"x":"usage"}"#));
    assert!(has_usage_object(br#"{"usage":null,"b":{"usage":{}}}"#));
}

#[test]
fn answer_text_of_both_shapes() {
    assert_eq!(
        answer_text(br#"{"choices":[{"message":{"content":"Hello world"}}]}"#),
        "Hello world"
    );
    assert_eq!(
        answer_text(br#"{"content":[{"type":"text","text":"Hi"}]}"#),
        "Hi"
    );
}
