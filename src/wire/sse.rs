//! Server-sent events framing shared by the stages that read streams as they pass (the cache's
//! recorder, the cost meter). Events end with a blank line (`\n\n` or `\r\n\r\n`).

use bytes::{Bytes, BytesMut};

/// The end (exclusive) of the first complete SSE event in `buf`: after a blank line.
pub fn event_end(buf: &[u8]) -> Option<usize> {
    for i in memchr::memchr_iter(b'\n', buf) {
        match buf.get(i + 1) {
            Some(b'\n') => return Some(i + 2),
            Some(b'\r') if buf.get(i + 2) == Some(&b'\n') => return Some(i + 3),
            _ => {}
        }
    }
    None
}

/// Splits the stream's next chunk `data`, after whatever `partial` holds from earlier chunks, into
/// complete events, handing each to `f` in order, and keeps an incomplete tail in `partial`. With
/// nothing pending (the usual case: chunks of whole events), events are slices of `data` (no copy).
pub fn split_events(partial: &mut BytesMut, data: &Bytes, mut f: impl FnMut(Bytes)) {
    let mut rest = if partial.is_empty() {
        data.clone()
    } else {
        partial.extend_from_slice(data);
        partial.split().freeze()
    };
    while let Some(end) = event_end(&rest) {
        f(rest.split_to(end));
    }
    partial.extend_from_slice(&rest);
}

/// Characters of generated text one SSE event carries: an OpenAI chat chunk's
/// `choices[0].delta.content`, an Anthropic `content_block_delta`'s text (or thinking, or tool
/// input), a Responses `response.*.delta`. For live progress only: 0 for anything else.
pub fn delta_chars(event: &[u8]) -> usize {
    let Ok(text) = std::str::from_utf8(event) else {
        return 0;
    };
    let mut n = 0;
    for line in text.lines() {
        let Some(data) = line.strip_prefix("data:") else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(data.trim()) else {
            continue;
        };
        let d = &v["delta"];
        let piece = v["choices"][0]["delta"]["content"]
            .as_str()
            .or_else(|| d["text"].as_str())
            .or_else(|| d["thinking"].as_str())
            .or_else(|| d["partial_json"].as_str())
            .or_else(|| {
                v["type"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("response.") && t.ends_with(".delta"))
                    .then(|| d.as_str())
                    .flatten()
            });
        n += piece.map_or(0, |p| p.chars().count());
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_text_of_each_dialect() {
        assert_eq!(
            delta_chars(b"data: {\"choices\":[{\"delta\":{\"content\":\"Hello\"}}]}\n\n"),
            5
        );
        assert_eq!(delta_chars(b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi \\u00e9\"}}\n\n"), 4);
        assert_eq!(
            delta_chars(b"data: {\"type\":\"response.output_text.delta\",\"delta\":\"abc\"}\n\n"),
            3
        );
        assert_eq!(delta_chars(b"data: [DONE]\n\n"), 0);
        assert_eq!(
            delta_chars(b"event: ping\ndata: {\"type\":\"ping\"}\n\n"),
            0
        );
    }

    #[test]
    fn events_come_out_whole_however_the_stream_is_cut() {
        let stream = b"event: a\ndata: 1\n\ndata: 2\r\n\r\ndata: 3\n\n: comment\ndata: 4\n\n";
        let expected: Vec<&[u8]> = vec![
            b"event: a\ndata: 1\n\n",
            b"data: 2\r\n\r\n",
            b"data: 3\n\n",
            b": comment\ndata: 4\n\n",
        ];
        for size in 1..=stream.len() {
            let mut partial = BytesMut::new();
            let mut got = Vec::new();
            for chunk in stream.chunks(size) {
                split_events(&mut partial, &Bytes::copy_from_slice(chunk), |e| {
                    got.push(e)
                });
            }
            assert_eq!(got, expected, "chunks of {size}");
            assert!(partial.is_empty());
        }
        // An unfinished event stays pending.
        let mut partial = BytesMut::new();
        split_events(
            &mut partial,
            &Bytes::from_static(b"data: 1\n\ndata: 2"),
            |_| {},
        );
        assert_eq!(&partial[..], b"data: 2");
    }

    #[test]
    fn ends_after_a_blank_line() {
        assert_eq!(event_end(b"data: x\n\ndata: y"), Some(9));
        assert_eq!(event_end(b"data: x\r\n\r\n"), Some(11));
        assert_eq!(event_end(b"data: x\n"), None);
        assert_eq!(event_end(b"event: a\ndata: x\n\n"), Some(18));
    }
}
