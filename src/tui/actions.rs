//! What the dashboard does with a captured request: export it as `curl`, replay it through relay,
//! and read its bodies (pretty JSON, a stream's assembled text and events).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::events::{RequestEvent, SECRET_HEADERS};

/// Headers a replay or an export leaves out: hop-by-hop and framing ones relay sets itself, and the
/// redacted secrets (relay injects the provider's `api_key_env` key when a request has none).
const NOT_REPLAYED: &[&str] = &[
    "host",
    "content-length",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "upgrade",
    "x-request-id",
];

/// The header a replay from the dashboard carries, so its row is marked (`↻`); relay removes it
/// before forwarding.
pub const REPLAY_HEADER: &str = crate::wire::clients::X_RELAY_REPLAY;

fn replayed(name: &str) -> bool {
    !NOT_REPLAYED.iter().any(|h| name.eq_ignore_ascii_case(h))
        && !SECRET_HEADERS.iter().any(|h| name.eq_ignore_ascii_case(h))
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The request as a `curl` command against `relay_url`. Secret headers appear with a placeholder
/// (`$OPENAI_API_KEY`-style variables are the caller's business): their values were never captured.
pub fn curl(ev: &RequestEvent, relay_url: &str) -> String {
    let mut out = format!(
        "curl -X {} {}",
        ev.method,
        shell_quote(&format!("{}{}", relay_url.trim_end_matches('/'), ev.path))
    );
    if let Some(d) = &ev.detail {
        for (k, v) in &d.request_headers {
            let v = if SECRET_HEADERS.iter().any(|h| k.eq_ignore_ascii_case(h)) {
                v.clone() // already redacted at capture ("Bearer ***")
            } else if !replayed(k) {
                continue;
            } else {
                v.clone()
            };
            out.push_str(&format!(" \\\n  -H {}", shell_quote(&format!("{k}: {v}"))));
        }
        if !d.request_body.is_empty() {
            out.push_str(&format!(
                " \\\n  --data-raw {}",
                shell_quote(&d.request_body)
            ));
        }
        if d.request_truncated {
            out.push_str("\n# note: the body was longer than relay captures (1 MiB, or less when the dashboard's memory budget is reached); it is cut");
        }
    }
    out
}

/// A request to send again through relay.
#[derive(Debug, Clone, PartialEq)]
pub struct Replay {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Replay {
    /// The replay of `ev`, or why it cannot be replayed.
    pub fn of(ev: &RequestEvent) -> Result<Replay, &'static str> {
        let d = ev
            .detail
            .as_ref()
            .ok_or("its headers and body were not captured")?;
        if d.request_truncated {
            return Err("its body was longer than relay captures (1 MiB, or less past the dashboard's memory budget)");
        }
        Ok(Replay {
            method: ev.method.clone(),
            path: ev.path.clone(),
            headers: d
                .request_headers
                .iter()
                .filter(|(k, _)| replayed(k))
                .cloned()
                .collect(),
            body: d.request_body.clone(),
        })
    }

    /// Sends it to `relay_url`; returns a status line for the dashboard.
    pub async fn send(self, relay_url: &str) -> String {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let uri = format!("{}{}", relay_url.trim_end_matches('/'), self.path);
        let mut req = http::Request::builder()
            .method(self.method.as_str())
            .uri(&uri)
            .header(REPLAY_HEADER, "tui");
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        let req = match req.body(Full::new(Bytes::from(self.body))) {
            Ok(r) => r,
            Err(e) => return format!("replay failed: {e}"),
        };
        let sent = tokio::time::timeout(Duration::from_secs(600), async {
            let resp = client.request(req).await?;
            let status = resp.status();
            let cache = resp
                .headers()
                .get("x-relay-cache")
                .and_then(|v| v.to_str().ok())
                .map(|c| format!(" {c}"))
                .unwrap_or_default();
            // Read it to the end so the request completes (and can be recorded).
            let _ = resp.into_body().collect().await;
            Ok::<_, hyper_util::client::legacy::Error>(format!(
                "replayed {} {} → {}{cache}",
                self.method,
                self.path,
                status.as_u16()
            ))
        })
        .await;
        match sent {
            Ok(Ok(line)) => line,
            Ok(Err(e)) => format!("replay failed: {e}"),
            Err(_) => "replay failed: no answer within 10 minutes".to_string(),
        }
    }
}

/// `body` pretty-printed when it is JSON, as-is otherwise.
pub fn pretty(body: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(body) {
        Ok(v) => serde_json::to_string_pretty(&v).unwrap_or_else(|_| body.to_string()),
        Err(_) => body.to_string(),
    }
}

/// A streamed (SSE) response: the text it assembles to, and its raw events (`event:`/`data:` lines
/// of each, joined). `None` when `body` is not SSE.
pub fn assemble_sse(body: &str) -> Option<(String, Vec<String>)> {
    let looks_sse = body.starts_with("data:") || body.starts_with("event:");
    if !looks_sse {
        return None;
    }
    let mut text = String::new();
    let mut events = Vec::new();
    for block in body.split("\n\n") {
        let block = block.trim_matches('\n');
        if block.is_empty() {
            continue;
        }
        events.push(block.replace('\n', " "));
        for line in block.lines() {
            let Some(data) = line.strip_prefix("data:") else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(data.trim()) else {
                continue;
            };
            // OpenAI chat chunks, Anthropic text deltas, OpenAI Responses deltas.
            let piece = v["choices"][0]["delta"]["content"]
                .as_str()
                .or_else(|| v["delta"]["text"].as_str())
                .or_else(|| {
                    (v["type"] == "response.output_text.delta")
                        .then(|| v["delta"].as_str())
                        .flatten()
                });
            if let Some(p) = piece {
                text.push_str(p);
            }
        }
    }
    Some((text, events))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Detail, Phase};

    pub(crate) fn event_with(detail: Option<Detail>) -> RequestEvent {
        RequestEvent {
            seq: 1,
            phase: Phase::End,
            time_ms: 0,
            request_id: "req-1".into(),
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            provider: Some("openai".into()),
            model: Some("gpt-4o".into()),
            status: 200,
            cache: None,
            detail: detail.map(Box::new),
            ..Default::default()
        }
    }

    fn detail() -> Detail {
        Detail {
            request_headers: vec![
                ("content-type".into(), "application/json".into()),
                ("authorization".into(), "Bearer ***".into()),
                ("host".into(), "127.0.0.1:8080".into()),
            ],
            request_body: r#"{"model":"gpt-4o","messages":[{"role":"user","content":"it's"}]}"#
                .into(),
            ..Default::default()
        }
    }

    #[test]
    fn curl_keeps_the_body_and_redacts_the_key() {
        let c = curl(&event_with(Some(detail())), "http://127.0.0.1:8080/");
        assert_eq!(
            c,
            "curl -X POST 'http://127.0.0.1:8080/v1/chat/completions' \\\n  -H 'content-type: application/json' \\\n  -H 'authorization: Bearer ***' \\\n  --data-raw '{\"model\":\"gpt-4o\",\"messages\":[{\"role\":\"user\",\"content\":\"it'\\''s\"}]}'"
        );
    }

    #[test]
    fn replay_leaves_out_secrets_and_framing() {
        let r = Replay::of(&event_with(Some(detail()))).unwrap();
        assert_eq!(
            r.headers,
            vec![("content-type".to_string(), "application/json".to_string())]
        );
        assert!(Replay::of(&event_with(None)).is_err());
        let mut cut = detail();
        cut.request_truncated = true;
        assert!(Replay::of(&event_with(Some(cut))).is_err());
    }

    #[test]
    fn streams_assemble_to_text() {
        let openai = "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n\ndata: [DONE]\n\n";
        let (text, events) = assemble_sse(openai).unwrap();
        assert_eq!(text, "Hello");
        assert_eq!(events.len(), 3);
        let anthropic = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n";
        assert_eq!(assemble_sse(anthropic).unwrap().0, "Hi");
        assert!(assemble_sse("{\"a\":1}").is_none());
        assert_eq!(pretty("{\"a\":1}"), "{\n  \"a\": 1\n}");
        assert_eq!(pretty("not json"), "not json");
    }
}
