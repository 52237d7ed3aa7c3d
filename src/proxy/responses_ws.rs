//! The Responses API over a WebSocket: Codex's transport for providers that support it (its
//! built-in `openai` provider, or `supports_websockets = true`): `GET /v1/responses` upgraded,
//! then one `response.create` message per turn, answered by the same events the HTTP stream
//! carries, one per text message.
//!
//! relay ends the socket itself instead of splicing it to the provider: each turn goes through the
//! whole pipeline as a `POST .../responses` with `"stream": true`, on an in-process HTTP
//! connection, so it is routed, metered (tokens, cost, budgets, token limits), cached and replayed
//! (offline too) like any request, and is its own row in the log and the TUI. The answer's SSE
//! events go back as text messages, as they arrive; an error answer becomes an `error` message
//! (`{"type":"error","status":N,"error":{...}}`).
//!
//! - `"generate": false` (Codex's warm-up, sent before the first turn) is answered by relay: a
//!   `response.created` and a `response.completed` with no output and no usage.
//! - `previous_response_id` naming a response of this socket is expanded into the input that
//!   response saw plus its output, and dropped, so every turn stands alone: the provider keeps no
//!   state between HTTP calls made with `store: false`, and a recording replays by itself.
//! - Other WebSockets (the Realtime API) are spliced as before ([`super::tunnel`]).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::future::BoxFuture;
use futures_util::{SinkExt, StreamExt};
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::body::RelayBody;
use super::held::Held;
use crate::error::EdgeError;

/// Whether relay ends this handshake itself: a WebSocket upgrade of the Responses API sent to an
/// OpenAI-kind provider.
pub fn terminates(
    method: &Method,
    headers: &HeaderMap,
    endpoint: crate::wire::Endpoint,
    kind: crate::config::ProviderKind,
) -> bool {
    *method == Method::GET
        && endpoint == crate::wire::Endpoint::Responses
        && kind == crate::config::ProviderKind::Openai
        && headers
            .get(header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
        && headers.contains_key(header::SEC_WEBSOCKET_KEY)
}

/// The `101 Switching Protocols` answer to the handshake.
pub fn accept(headers: &HeaderMap) -> Result<Response<RelayBody>, EdgeError> {
    let key = headers.get(header::SEC_WEBSOCKET_KEY).ok_or_else(|| {
        EdgeError::ClientBody("a WebSocket handshake needs Sec-WebSocket-Key".into())
    })?;
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut resp = Response::new(RelayBody::full(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::try_from(accept).expect("base64 is ASCII"),
    );
    Ok(resp)
}

/// What runs one turn: the pipeline, for the socket's caller ([`super::pipeline::handle`]).
pub type Pipeline = Arc<
    dyn Fn(Request<hyper::body::Incoming>) -> BoxFuture<'static, Response<RelayBody>> + Send + Sync,
>;

/// What a turn is sent with: the pipeline, the handshake's path and end-to-end headers.
pub struct Opened {
    pub pipeline: Pipeline,
    /// The client path and query of the handshake (`/v1/responses`, `/openai/v1/responses`).
    pub path: String,
    pub headers: HeaderMap,
    pub held: Held,
}

/// Once the caller has switched protocols, serves the socket in a task of its own.
pub fn serve(caller: OnUpgrade, opened: Opened) {
    tokio::spawn(async move {
        let upgraded = match caller.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "the Responses WebSocket did not switch protocols");
                return;
            }
        };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        let cut = opened.held.cut();
        tokio::select! {
            r = session(ws, &opened) => if let Err(e) = r {
                tracing::debug!(error = %e, "the Responses WebSocket ended with an error");
            },
            _ = cut => tracing::debug!("the Responses WebSocket was cut at shutdown"),
        }
    });
}

type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;
type WsError = tokio_tungstenite::tungstenite::Error;

/// Headers of the handshake that are not sent with a turn.
const NOT_FORWARDED: [header::HeaderName; 9] = [
    header::CONNECTION,
    header::UPGRADE,
    header::SEC_WEBSOCKET_KEY,
    header::SEC_WEBSOCKET_VERSION,
    header::SEC_WEBSOCKET_EXTENSIONS,
    header::SEC_WEBSOCKET_PROTOCOL,
    header::CONTENT_LENGTH,
    header::HOST,
    header::ACCEPT_ENCODING,
];

async fn session(mut ws: Ws, opened: &Opened) -> Result<(), WsError> {
    // One in-process HTTP/1.1 connection to the pipeline for the socket's turns, in order.
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let pipeline = opened.pipeline.clone();
    let svc = hyper::service::service_fn(move |req| {
        let turn = pipeline(req);
        async move { Ok::<_, std::convert::Infallible>(turn.await) }
    });
    tokio::spawn(async move {
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(theirs), svc)
            .await;
    });
    let (mut send, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(ours)).await {
        Ok(c) => c,
        Err(e) => return Err(WsError::Io(std::io::Error::other(e))),
    };
    tokio::spawn(conn);
    let mut history = History::default();
    let mut warmups = 0u32;
    while let Some(msg) = ws.next().await {
        let text = match msg? {
            Message::Text(t) => t,
            Message::Close(_) => break,
            // Pings are answered by the socket itself; binary frames mean nothing here.
            _ => continue,
        };
        let mut turn: serde_json::Value = match serde_json::from_str(text.as_str()) {
            Ok(v) => v,
            Err(e) => {
                ws.send(error_message(400, &format!("not a JSON message: {e}")))
                    .await?;
                continue;
            }
        };
        if turn["type"] != "response.create" {
            let what = turn["type"]
                .as_str()
                .unwrap_or("a message without a type")
                .to_string();
            ws.send(error_message(
                400,
                &format!("relay answers response.create messages on this socket, not {what}"),
            ))
            .await?;
            continue;
        }
        let obj = turn.as_object_mut().expect("checked above: it has a type");
        obj.remove("type");
        if obj.remove("generate") == Some(serde_json::Value::Bool(false)) {
            warmups += 1;
            for m in warmup(obj, warmups) {
                ws.send(m).await?;
            }
            continue;
        }
        obj.insert("stream".into(), serde_json::Value::Bool(true));
        history.expand(obj);
        let body = serde_json::to_vec(&turn).expect("a JSON value serializes");
        let mut req = Request::new(Full::new(Bytes::from(body)));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = opened
            .path
            .parse()
            .map_err(|e: http::uri::InvalidUri| WsError::Io(std::io::Error::other(e)))?;
        let h = req.headers_mut();
        for (name, value) in &opened.headers {
            if !NOT_FORWARDED.contains(name) && name != crate::wire::headers::X_REQUEST_ID {
                h.append(name, value.clone());
            }
        }
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(header::HOST, HeaderValue::from_static("relay.internal"));
        let resp = match send.send_request(req).await {
            Ok(r) => r,
            Err(e) => {
                ws.send(error_message(
                    502,
                    &format!("relay could not run the turn: {e}"),
                ))
                .await?;
                continue;
            }
        };
        relay_answer(&mut ws, resp, &turn, &mut history).await?;
    }
    let _ = ws.close(None).await;
    Ok(())
}

/// Sends an answer back: each SSE event's data as a text message, or an `error` message.
async fn relay_answer(
    ws: &mut Ws,
    resp: Response<hyper::body::Incoming>,
    turn: &serde_json::Value,
    history: &mut History,
) -> Result<(), WsError> {
    let status = resp.status();
    let stream = crate::wire::has_event_stream(resp.headers());
    let mut body = resp.into_body();
    if !status.is_success() || !stream {
        let bytes = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let msg = if status.is_success() {
            // A JSON answer (an upstream that ignored `stream`): its completion, as a stream ends.
            serde_json::json!({"type": "response.completed", "response": v})
        } else {
            serde_json::json!({"type": "error", "status": status.as_u16(), "error": v.get("error").cloned().unwrap_or(v)})
        };
        return ws.send(Message::text(msg.to_string())).await;
    }
    let mut partial = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(|e| tracing::debug!(error = %e, "a turn's stream broke"))
        else {
            break;
        };
        let Ok(data) = data.into_data() else { continue };
        let mut events = Vec::new();
        crate::wire::sse::split_events(&mut partial, &data, |ev| events.push(ev));
        for ev in events {
            let Some(payload) = sse_data(&ev) else {
                continue;
            };
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&payload) {
                if v["type"] == "response.completed" {
                    history.remember(turn, &v["response"]);
                }
            }
            ws.send(Message::text(payload)).await?;
        }
    }
    Ok(())
}

/// The `data:` lines of one SSE event, joined (`None` for a comment or an empty event).
fn sse_data(event: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(event).ok()?;
    let lines: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|l| l.strip_prefix(' ').unwrap_or(l))
        .collect();
    (!lines.is_empty() && lines != ["[DONE]"]).then(|| lines.join("\n"))
}

fn error_message(status: u16, message: &str) -> Message {
    let v = serde_json::json!({"type": "error", "status": status,
        "error": {"type": "invalid_request_error", "code": "relay_websocket", "message": message}});
    Message::text(v.to_string())
}

/// Relay's answer to a warm-up (`"generate": false`): created, then completed, with no output.
fn warmup(turn: &serde_json::Map<String, serde_json::Value>, n: u32) -> [Message; 2] {
    let response = |status: &str| {
        serde_json::json!({"id": format!("resp_relay_warmup_{n}"), "object": "response",
            "created_at": 0, "status": status, "model": turn.get("model").cloned().unwrap_or_default(),
            "output": [], "usage": null})
    };
    [
        Message::text(
            serde_json::json!({"type": "response.created", "sequence_number": 0, "response": response("in_progress")}).to_string(),
        ),
        Message::text(
            serde_json::json!({"type": "response.completed", "sequence_number": 1, "response": response("completed")}).to_string(),
        ),
    ]
}

/// The input and output of this socket's responses, by id: what `previous_response_id` means.
#[derive(Default)]
struct History {
    by_id: HashMap<String, Vec<serde_json::Value>>,
}

/// Responses remembered per socket (a session's turns; older ones are dropped).
const HISTORY: usize = 64;

impl History {
    fn remember(&mut self, turn: &serde_json::Value, response: &serde_json::Value) {
        let Some(id) = response["id"].as_str() else {
            return;
        };
        let mut items = input_items(&turn["input"]);
        if let Some(out) = response["output"].as_array() {
            items.extend(out.iter().cloned());
        }
        if self.by_id.len() >= HISTORY {
            self.by_id.clear();
        }
        self.by_id.insert(id.to_string(), items);
    }

    /// Replaces a known `previous_response_id` by the items it stands for.
    fn expand(&self, turn: &mut serde_json::Map<String, serde_json::Value>) {
        let Some(prev) = turn.get("previous_response_id").and_then(|v| v.as_str()) else {
            return;
        };
        let Some(before) = self.by_id.get(prev) else {
            return;
        };
        let mut items = before.clone();
        items.extend(input_items(
            turn.get("input").unwrap_or(&serde_json::Value::Null),
        ));
        turn.insert("input".into(), serde_json::Value::Array(items));
        turn.remove("previous_response_id");
    }
}

/// A turn's `input` as items (a string is one user message).
fn input_items(input: &serde_json::Value) -> Vec<serde_json::Value> {
    match input {
        serde_json::Value::Array(a) => a.clone(),
        serde_json::Value::String(s) => {
            vec![serde_json::json!({"type": "message", "role": "user", "content": s})]
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previous_responses_expand_into_a_turn_that_stands_alone() {
        let mut h = History::default();
        let first = serde_json::json!({"model": "m", "input": [{"type": "message", "role": "user", "content": "hi"}]});
        h.remember(
            &first,
            &serde_json::json!({"id": "resp_1", "output": [{"type": "message", "role": "assistant", "content": "yo"}]}),
        );
        let mut next =
            serde_json::json!({"model": "m", "previous_response_id": "resp_1", "input": "and?"});
        h.expand(next.as_object_mut().unwrap());
        assert!(next.get("previous_response_id").is_none());
        let roles: Vec<&str> = next["input"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["user", "assistant", "user"]);
        // An id relay never served stays for the provider to judge.
        let mut other = serde_json::json!({"previous_response_id": "resp_x", "input": []});
        h.expand(other.as_object_mut().unwrap());
        assert_eq!(other["previous_response_id"], "resp_x");
    }

    #[test]
    fn sse_events_become_messages() {
        assert_eq!(
            sse_data(b"event: response.created\ndata: {\"a\":1}\n\n").as_deref(),
            Some("{\"a\":1}")
        );
        assert_eq!(sse_data(b": ping\n\n"), None);
        assert_eq!(sse_data(b"data: [DONE]\n\n"), None);
    }
}
