//! A mock upstream that speaks OpenAI and Anthropic: JSON and SSE responses, error statuses, and slow,
//! holding and stalling modes. It runs a real hyper server (HTTP/1.1 and h2c) on 127.0.0.1 port 0 and
//! records what it receives, so tests can check what relay really sent.
//!
//! Request headers steer it:
//! - `x-mock-status: <code>`: answer with that status and an error body in the mock's own dialect;
//! - `x-mock-sequence: 500,500,200`: the n-th request carrying this header (counted per mock) gets
//!   the n-th status of the list (cycling); 2xx answers normally, others as `x-mock-status`;
//!   error answers carry `retry-after: 7` unless `x-mock-retry-after: <value>|none` says otherwise,
//!   and `x-mock-error-code: <code>` sets their `error.code` (OpenAI) / `error.type` (Anthropic);
//!   with `x-mock-for: <name>` these status headers apply to that mock only;
//! - `x-mock-status-if-key: <key>=<code>`: answer `<code>` when the request's credential
//!   (`Authorization: Bearer` / `x-api-key`) is `<key>` (a provider's key pool);
//! - [`Mock::set_status`] (every request answers that status, health checks too),
//!   [`Mock::set_delay`] (the answer's headers wait that long) and [`Mock::kill`] (the listener
//!   and every open connection close: a dead endpoint);
//! - `x-mock: hold`: stream the first SSE event, then wait for [`Mock::release`] before the rest (a
//!   JSON answer waits for the release before its headers);
//! - `x-mock: stall-headers`: never answer; `x-mock: stall-body`: send headers and one event, then nothing;
//! - `x-mock: hop-headers`: add hop-by-hop headers to the response (relay must strip them);
//! - `x-mock-interval-ms: <n>`: pause between SSE events;
//! - `x-mock-usage: cached`: usage with prompt-cache and reasoning tokens (see [`cached_usage`]);
//!   `1h`: Anthropic's cache writes split into 5-minute and 1-hour ones ([`mode_usage`]);
//!   `x-mock-usage: none`: no usage at all (JSON without `usage`, no usage chunk, Anthropic events
//!   without `usage`).
//!
//! Like OpenAI, a streamed chat completion whose body has `stream_options.include_usage: true` ends
//! with a usage-only chunk (`"choices": []`) before `[DONE]` (OpenAI also adds `"usage": null` to
//! the other chunks; the mock leaves them as they are, so a stripped stream equals
//! [`openai_sse`]).
//!
//! Every wait a test does on the mock is on a signal (a watch channel), never a sleep.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Which API the mock imitates (error shapes, default answers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    OpenAi,
    Anthropic,
}

/// One request as the mock received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: http::Method,
    /// Path and query.
    pub uri: String,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A counter tests can wait on.
#[derive(Clone)]
pub struct Counter(Arc<watch::Sender<usize>>);

impl Default for Counter {
    fn default() -> Self {
        Counter(Arc::new(watch::channel(0).0))
    }
}

impl Counter {
    pub fn inc(&self) {
        self.0.send_modify(|n| *n += 1);
    }
    pub fn get(&self) -> usize {
        *self.0.borrow()
    }
    /// Resolves once the count reaches `n`; panics after 10 s (a failing test, not a sync point).
    pub async fn wait_for(&self, n: usize, what: &str) {
        let mut rx = self.0.subscribe();
        let waited = tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|v| *v >= n)).await;
        assert!(
            matches!(waited, Ok(Ok(_))),
            "timed out waiting for {what} to reach {n} (at {})",
            self.get()
        );
    }
}

struct Shared {
    name: String,
    kind: Kind,
    requests: Mutex<Vec<Recorded>>,
    released: watch::Sender<bool>,
    calls: Counter,
    connections: Counter,
    first_event_sent: Counter,
    completed: Counter,
    cancelled: Counter,
    sequence_pos: std::sync::atomic::AtomicUsize,
    forced_status: std::sync::atomic::AtomicU16,
    delay_ms: std::sync::atomic::AtomicU64,
    killed: watch::Sender<bool>,
}

/// A running mock upstream; stops when dropped.
pub struct Mock {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Mock {
    pub async fn start(name: &str, kind: Kind) -> Mock {
        Mock::start_inner(name, kind, None).await
    }

    /// The same mock over HTTPS with `tls`'s certificate (see `common::tls::TestCa`); its base URL
    /// is [`Mock::https_base_url`].
    pub async fn start_tls(name: &str, kind: Kind, tls: Arc<rustls::ServerConfig>) -> Mock {
        Mock::start_inner(name, kind, Some(tokio_rustls::TlsAcceptor::from(tls))).await
    }

    /// `https://localhost:<port>/v1`, for a mock started with [`Mock::start_tls`].
    pub fn https_base_url(&self) -> String {
        format!("https://localhost:{}/v1", self.addr.port())
    }

    async fn start_inner(name: &str, kind: Kind, tls: Option<tokio_rustls::TlsAcceptor>) -> Mock {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            name: name.to_string(),
            kind,
            requests: Mutex::new(Vec::new()),
            released: watch::channel(false).0,
            calls: Counter::default(),
            connections: Counter::default(),
            first_event_sent: Counter::default(),
            completed: Counter::default(),
            cancelled: Counter::default(),
            sequence_pos: Default::default(),
            forced_status: Default::default(),
            delay_ms: Default::default(),
            killed: watch::channel(false).0,
        });
        let s = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                s.connections.inc();
                let s = s.clone();
                let tls = tls.clone();
                let mut killed = s.killed.subscribe();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = killed.wait_for(|k| *k) => {}
                        _ = serve(s, tcp, tls) => {}
                    }
                });
            }
        });
        Mock { addr, shared, task }
    }

    /// Every request answers `status` from now on (0: as usual again).
    pub fn set_status(&self, status: u16) {
        self.shared
            .forced_status
            .store(status, std::sync::atomic::Ordering::SeqCst);
    }

    /// The answer's headers wait `delay` from now on.
    pub fn set_delay(&self, delay: std::time::Duration) {
        self.shared.delay_ms.store(
            delay.as_millis() as u64,
            std::sync::atomic::Ordering::SeqCst,
        );
    }

    /// A dead endpoint: the listener and every open connection close now.
    pub fn kill(&self) {
        self.task.abort();
        self.shared.killed.send_replace(true);
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>/v1`, the base URL relay's config points at.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Requests received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// The last request received.
    pub fn last(&self) -> Recorded {
        self.requests().pop().expect("the mock received no request")
    }

    /// Requests received (a counter tests can wait on).
    pub fn calls(&self) -> &Counter {
        &self.shared.calls
    }

    /// TCP connections accepted.
    pub fn connections(&self) -> &Counter {
        &self.shared.connections
    }

    /// SSE responses whose first event has been handed to the connection.
    pub fn first_event_sent(&self) -> &Counter {
        &self.shared.first_event_sent
    }

    /// Responses that ended before the mock had sent all of it (the requester went away).
    pub fn cancelled(&self) -> &Counter {
        &self.shared.cancelled
    }

    /// Responses fully produced.
    pub fn completed(&self) -> &Counter {
        &self.shared.completed
    }

    /// Lets every held stream (`x-mock: hold`) continue, now and later.
    pub fn release(&self) {
        self.shared.released.send_replace(true);
    }
}

/// Serves one accepted connection (over TLS when `tls`).
async fn serve(s: Arc<Shared>, tcp: tokio::net::TcpStream, tls: Option<tokio_rustls::TlsAcceptor>) {
    let svc = service_fn(move |req| handle(s.clone(), req));
    let builder = auto::Builder::new(TokioExecutor::new());
    let _ = match tls {
        None => {
            builder
                .serve_connection_with_upgrades(TokioIo::new(tcp), svc)
                .await
        }
        Some(tls) => match tls.accept(tcp).await {
            Ok(stream) => {
                builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await
            }
            Err(_) => return,
        },
    };
}

/// Marks a response cancelled when dropped before it was marked complete.
struct Guard {
    shared: Arc<Shared>,
    done: bool,
}

impl Guard {
    fn complete(mut self) {
        self.done = true;
        self.shared.completed.inc();
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.done {
            self.shared.cancelled.inc();
        }
    }
}

type MockBody = BoxBody<Bytes, Infallible>;

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<MockBody>, Infallible> {
    let (mut parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let rec = Recorded {
        method: parts.method.clone(),
        uri: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        version: parts.version,
        headers: parts.headers.clone(),
        body: body.clone(),
    };
    shared.requests.lock().unwrap().push(rec);
    shared.calls.inc();
    let guard = Guard {
        shared: shared.clone(),
        done: false,
    };

    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let mode = header("x-mock").unwrap_or_default();
    let path = parts.uri.path().to_string();

    // `x-mock-for: <name>`: the status headers are for that mock only (a fallback behind it
    // answers normally).
    let for_me = header("x-mock-for").is_none_or(|n| n == shared.name);
    let delay = shared.delay_ms.load(std::sync::atomic::Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    let credential = header("x-api-key")
        .or_else(|| header("authorization").map(|a| a.trim_start_matches("Bearer ").to_string()));
    let by_key = header("x-mock-status-if-key").and_then(|rule| {
        let (key, code) = rule.split_once('=')?;
        (credential.as_deref() == Some(key)).then(|| code.trim().parse::<u16>().ok())?
    });
    let forced = match shared
        .forced_status
        .load(std::sync::atomic::Ordering::SeqCst)
    {
        0 => None,
        s => Some(s),
    };
    let from_sequence = header("x-mock-sequence")
        .filter(|_| for_me)
        .and_then(|list| {
            let codes: Vec<u16> = list
                .split(',')
                .filter_map(|c| c.trim().parse().ok())
                .collect();
            let n = shared
                .sequence_pos
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            codes.get(n % codes.len().max(1)).copied()
        });
    let status = header("x-mock-status")
        .filter(|_| for_me)
        .and_then(|s| s.parse::<u16>().ok())
        .or(from_sequence.filter(|s| !(200..300).contains(s)))
        .or(by_key)
        .or(forced);
    if let Some(status) = status {
        let mut body = error_body(shared.kind, status);
        if let Some(code) = header("x-mock-error-code") {
            let mut v: serde_json::Value = serde_json::from_str(&body).unwrap();
            let slot = match shared.kind {
                Kind::OpenAi => "code",
                Kind::Anthropic => "type",
            };
            v["error"][slot] = serde_json::json!(code);
            body = v.to_string();
        }
        let mut resp = Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .header("x-mock-name", &shared.name);
        match header("x-mock-retry-after").as_deref() {
            Some("none") => {}
            Some(v) => resp = resp.header("retry-after", v),
            None => resp = resp.header("retry-after", "7"),
        }
        let resp = resp.body(full(body)).unwrap();
        guard.complete();
        return Ok(resp);
    }
    if parts.headers.contains_key("upgrade") && path.ends_with("/realtime") {
        // A WebSocket endpoint: switches protocols, then answers each chunk it reads with
        // `echo:<chunk>` until the caller closes.
        let on = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let Some(Ok(up)) = (match on {
                Some(on) => Some(on.await),
                None => None,
            }) else {
                return;
            };
            let mut io = TokioIo::new(up);
            let mut buf = vec![0u8; 4096];
            while let Ok(n @ 1..) = io.read(&mut buf).await {
                let mut out = b"echo:".to_vec();
                out.extend_from_slice(&buf[..n]);
                if io.write_all(&out).await.is_err() {
                    break;
                }
            }
        });
        guard.complete();
        return Ok(Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", "mock-accept")
            .header("x-mock-name", &shared.name)
            .body(full(Bytes::new()))
            .unwrap());
    }
    if mode == "stall-headers" {
        let _guard = guard;
        let never: Infallible = std::future::pending().await;
        match never {}
    }

    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    let model = json["model"].as_str().unwrap_or("mock-model").to_string();
    let streaming = json["stream"].as_bool().unwrap_or(false);
    let mut builder = Response::builder()
        .status(StatusCode::OK)
        .header("x-mock-name", &shared.name)
        .header("x-upstream-only", "kept");
    if mode == "hop-headers" {
        builder = builder
            .header("connection", "keep-alive, x-mock-hop")
            .header("x-mock-hop", "1")
            .header("keep-alive", "timeout=5");
    }

    if !streaming {
        if mode == "hold" {
            shared.first_event_sent.inc();
            let mut released = shared.released.subscribe();
            let _ = released.wait_for(|r| *r).await;
        }
        let usage = header("x-mock-usage").unwrap_or_default();
        let body = if path.ends_with("/messages") {
            with_usage(anthropic_json(&model), Kind::Anthropic, &usage)
        } else if path.ends_with("/chat/completions") {
            with_usage(openai_json(&model), Kind::OpenAi, &usage)
        } else if path.ends_with("/responses") {
            responses_json(&model).to_string()
        } else {
            serde_json::json!({"mock": shared.name, "path": path, "method": parts.method.as_str()})
                .to_string()
        };
        guard.complete();
        return Ok(builder
            .header("content-type", "application/json")
            .body(full(body))
            .unwrap());
    }

    let usage = header("x-mock-usage").unwrap_or_default();
    let events = if path.ends_with("/responses") {
        responses_sse(&model)
    } else if path.ends_with("/messages") {
        anthropic_sse(&model)
            .into_iter()
            .map(|ev| sse_with_usage(ev, &usage))
            .collect()
    } else if json["stream_options"]["include_usage"] == true && usage != "none" {
        openai_sse_with_usage_chunk(&model, &usage)
    } else {
        openai_sse(&model)
    };
    let interval = header("x-mock-interval-ms")
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis);
    let hold = mode == "hold";
    let stall = mode == "stall-body";
    let released = shared.released.subscribe();
    struct St {
        events: std::vec::IntoIter<String>,
        sent: usize,
        guard: Option<Guard>,
        released: watch::Receiver<bool>,
    }
    let st = St {
        events: events.into_iter(),
        sent: 0,
        guard: Some(guard),
        released,
    };
    let body = stream::unfold(st, move |mut st| async move {
        if st.sent == 1 {
            st.guard.as_ref().unwrap().shared.first_event_sent.inc();
            if hold {
                let _ = st.released.wait_for(|r| *r).await;
            }
            if stall {
                std::future::pending::<()>().await;
            }
        }
        if st.sent > 0 {
            if let Some(d) = interval {
                tokio::time::sleep(d).await;
            }
        }
        match st.events.next() {
            Some(ev) => {
                st.sent += 1;
                Some((Ok::<_, Infallible>(Frame::data(Bytes::from(ev))), st))
            }
            None => {
                st.guard.take().unwrap().complete();
                None
            }
        }
    });
    Ok(builder
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(BoxBody::new(StreamBody::new(body)))
        .unwrap())
}

fn full(b: impl Into<Bytes>) -> MockBody {
    BoxBody::new(Full::new(b.into()))
}

/// The error body a provider sends for `status`.
pub fn error_body(kind: Kind, status: u16) -> String {
    match kind {
        Kind::OpenAi => serde_json::json!({"error": {"message": format!("mock error {status}"), "type": "requests", "param": null, "code": "rate_limit_exceeded"}}).to_string(),
        Kind::Anthropic => serde_json::json!({"type": "error", "error": {"type": "rate_limit_error", "message": format!("mock error {status}")}}).to_string(),
    }
}

pub fn openai_json(model: &str) -> String {
    serde_json::json!({
        "id": "chatcmpl-mock", "object": "chat.completion", "created": 1_700_000_000, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello world"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}
    })
    .to_string()
}

pub fn anthropic_json(model: &str) -> String {
    serde_json::json!({
        "id": "msg_mock", "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "text", "text": "Hello world"}],
        "stop_reason": "end_turn", "stop_sequence": null,
        "usage": {"input_tokens": 9, "output_tokens": 2}
    })
    .to_string()
}

/// OpenAI chat completion chunks, one SSE event each, ending with `[DONE]`.
pub fn openai_sse(model: &str) -> Vec<String> {
    let chunk = |delta: serde_json::Value, finish: serde_json::Value| {
        let v = serde_json::json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000,
            "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        format!("data: {v}\n\n")
    };
    vec![
        chunk(
            serde_json::json!({"role": "assistant", "content": ""}),
            serde_json::Value::Null,
        ),
        chunk(
            serde_json::json!({"content": "Hello"}),
            serde_json::Value::Null,
        ),
        chunk(
            serde_json::json!({"content": " world"}),
            serde_json::Value::Null,
        ),
        chunk(serde_json::json!({}), serde_json::json!("stop")),
        "data: [DONE]\n\n".to_string(),
    ]
}

/// A Responses API answer (what `response.completed` carries).
pub fn responses_json(model: &str) -> serde_json::Value {
    serde_json::json!({
        "id": "resp_mock", "object": "response", "created_at": 1_700_000_000, "status": "completed",
        "model": model,
        "output": [{"id": "msg_mock", "type": "message", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": "Hello world", "annotations": []}]}],
        "usage": {"input_tokens": 9, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 2,
            "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 11}
    })
}

/// Responses API stream events, `response.created` to `response.completed`.
pub fn responses_sse(model: &str) -> Vec<String> {
    let ev = |name: &str, v: serde_json::Value| format!("event: {name}\ndata: {v}\n\n");
    let done = responses_json(model);
    let mut created = done.clone();
    created["status"] = "in_progress".into();
    created["output"] = serde_json::json!([]);
    created["usage"] = serde_json::Value::Null;
    let item = done["output"][0].clone();
    let mut added = item.clone();
    added["status"] = "in_progress".into();
    added["content"] = serde_json::json!([]);
    vec![
        ev(
            "response.created",
            serde_json::json!({"type": "response.created", "sequence_number": 0, "response": created}),
        ),
        ev(
            "response.output_item.added",
            serde_json::json!({"type": "response.output_item.added", "sequence_number": 1, "output_index": 0, "item": added}),
        ),
        ev(
            "response.content_part.added",
            serde_json::json!({"type": "response.content_part.added", "sequence_number": 2, "item_id": "msg_mock", "output_index": 0, "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}}),
        ),
        ev(
            "response.output_text.delta",
            serde_json::json!({"type": "response.output_text.delta", "sequence_number": 3, "item_id": "msg_mock", "output_index": 0, "content_index": 0, "delta": "Hello world"}),
        ),
        ev(
            "response.output_text.done",
            serde_json::json!({"type": "response.output_text.done", "sequence_number": 4, "item_id": "msg_mock", "output_index": 0, "content_index": 0, "text": "Hello world"}),
        ),
        ev(
            "response.output_item.done",
            serde_json::json!({"type": "response.output_item.done", "sequence_number": 5, "output_index": 0, "item": item}),
        ),
        ev(
            "response.completed",
            serde_json::json!({"type": "response.completed", "sequence_number": 6, "response": done}),
        ),
    ]
}

/// Anthropic Messages stream events, `message_start` to `message_stop`.
pub fn anthropic_sse(model: &str) -> Vec<String> {
    let ev = |name: &str, v: serde_json::Value| format!("event: {name}\ndata: {v}\n\n");
    vec![
        ev(
            "message_start",
            serde_json::json!({"type": "message_start", "message": {"id": "msg_mock", "type": "message",
            "role": "assistant", "model": model, "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 9, "output_tokens": 1}}}),
        ),
        ev(
            "content_block_start",
            serde_json::json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        ev("ping", serde_json::json!({"type": "ping"})),
        ev(
            "content_block_delta",
            serde_json::json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}),
        ),
        ev(
            "content_block_delta",
            serde_json::json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " world"}}),
        ),
        ev(
            "content_block_stop",
            serde_json::json!({"type": "content_block_stop", "index": 0}),
        ),
        ev(
            "message_delta",
            serde_json::json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 2}}),
        ),
        ev("message_stop", serde_json::json!({"type": "message_stop"})),
    ]
}

/// The usage a mock reports with `x-mock-usage: cached`.
pub fn cached_usage(kind: Kind) -> serde_json::Value {
    match kind {
        Kind::OpenAi => {
            serde_json::json!({"prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": 1100,
            "prompt_tokens_details": {"cached_tokens": 800, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 40}})
        }
        Kind::Anthropic => {
            serde_json::json!({"input_tokens": 200, "cache_creation_input_tokens": 100,
            "cache_read_input_tokens": 800, "output_tokens": 100})
        }
    }
}

/// The usage of `x-mock-usage: <mode>`: [`cached_usage`], or for `1h` Anthropic's cache writes
/// split by how long they are kept (100 for 5 minutes, 200 for an hour).
pub fn mode_usage(kind: Kind, mode: &str) -> serde_json::Value {
    match (kind, mode) {
        (Kind::Anthropic, "1h") => serde_json::json!({"input_tokens": 200,
            "cache_creation_input_tokens": 300,
            "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 200},
            "cache_read_input_tokens": 800, "output_tokens": 100}),
        _ => cached_usage(kind),
    }
}

/// A JSON answer with its usage replaced (`cached`, `1h`) or removed (`none`).
fn with_usage(body: String, kind: Kind, mode: &str) -> String {
    let mut v: serde_json::Value = serde_json::from_str(&body).unwrap();
    match mode {
        "cached" | "1h" => v["usage"] = mode_usage(kind, mode),
        "none" => {
            v.as_object_mut().unwrap().remove("usage");
        }
        _ => return body,
    }
    v.to_string()
}

/// An Anthropic stream event with its usage replaced or removed.
fn sse_with_usage(ev: String, mode: &str) -> String {
    if !matches!(mode, "cached" | "1h" | "none") {
        return ev;
    }
    let (head, data) = ev.split_once("data: ").unwrap();
    let mut v: serde_json::Value = serde_json::from_str(data.trim()).unwrap();
    let slot = if v["type"] == "message_start" {
        &mut v["message"]
    } else {
        &mut v
    };
    if slot.get("usage").is_some() {
        if mode == "none" {
            slot.as_object_mut().unwrap().remove("usage");
        } else if v["type"] == "message_start" {
            v["message"]["usage"] = mode_usage(Kind::Anthropic, mode);
            v["message"]["usage"]["output_tokens"] = serde_json::json!(1);
        } else {
            v["usage"] = serde_json::json!({"output_tokens": 100});
        }
    }
    format!("{head}data: {v}\n\n")
}

/// OpenAI chunks as sent with `stream_options.include_usage: true`: [`openai_sse`] with the
/// usage-only chunk before `[DONE]`.
pub fn openai_sse_with_usage_chunk(model: &str, mode: &str) -> Vec<String> {
    let mut events: Vec<String> = openai_sse(model)
        .into_iter()
        .filter(|e| e != "data: [DONE]\n\n")
        .collect();
    let usage = if mode == "cached" {
        cached_usage(Kind::OpenAi)
    } else {
        serde_json::json!({"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11})
    };
    let last = serde_json::json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000,
        "model": model, "choices": [], "usage": usage});
    events.push(format!("data: {last}\n\n"));
    events.push("data: [DONE]\n\n".to_string());
    events
}
