//! Server-sent events framing shared by the stages that read streams as they pass (the cache's
//! recorder, the cost meter). Events end with a blank line (`\n\n` or `\r\n\r\n`).

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_after_a_blank_line() {
        assert_eq!(event_end(b"data: x\n\ndata: y"), Some(9));
        assert_eq!(event_end(b"data: x\r\n\r\n"), Some(11));
        assert_eq!(event_end(b"data: x\n"), None);
        assert_eq!(event_end(b"event: a\ndata: x\n\n"), Some(18));
    }
}
