//! The proxy end to end: a real relay on 127.0.0.1 port 0 in front of real mock upstreams.

mod common;

use bytes::Bytes;
use common::mock::{self, Kind, Mock};
use common::*;
use futures_util::stream;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use relay::config::Env;

const CHAT: &str = "/v1/chat/completions";

fn chat_body(model: &str, stream: bool) -> String {
    format!(
        r#"{{"model":"{model}","stream":{stream},"messages":[{{"role":"user","content":"hi"}}]}}"#
    )
}

/// A port nothing listens on.
async fn closed_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

fn header<'a>(resp: &'a http::Response<hyper::body::Incoming>, name: &str) -> Option<&'a str> {
    resp.headers().get(name).map(|v| v.to_str().unwrap())
}

// ---------------------------------------------------------------- forwarding

#[tokio::test]
async fn json_body_reaches_the_upstream_byte_for_byte() {
    let (openai, _anthropic, relay) = setup("").await;
    // Odd spacing, key order, escapes and non-ASCII: any re-serialization would change these bytes.
    let body = "{ \"messages\":[{\"role\":\"user\",\"content\":\"h\\u00e9 \u{2603}\"}],\n  \"model\" : \"gpt-4o-mini\", \"temperature\":0.50 }";
    let resp = client()
        .request(json_req(&relay.url(CHAT), body))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-mock-name"), Some("openai"));
    assert_eq!(text(resp).await, mock::openai_json("gpt-4o-mini"));
    let rec = openai.last();
    assert_eq!(rec.body, body.as_bytes());
    assert_eq!(rec.uri, CHAT);
    assert_eq!(rec.method, http::Method::POST);
}

#[tokio::test]
async fn non_json_upload_streams_through_byte_for_byte() {
    let (openai, _anthropic, relay) = setup("").await;
    let chunks: Vec<Bytes> = (0..64u8).map(|i| Bytes::from(vec![i; 4096])).collect();
    let whole: Vec<u8> = chunks.iter().flat_map(|c| c.to_vec()).collect();
    let body = StreamBody::new(stream::iter(
        chunks
            .into_iter()
            .map(|c| Ok::<_, std::io::Error>(Frame::data(c))),
    ))
    .boxed();
    let req = Request::post(relay.url("/v1/files"))
        .header("content-type", "multipart/form-data; boundary=x")
        .body(body)
        .unwrap();
    let resp = within(client().request(req)).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(openai.last().body, whole);
    assert_eq!(openai.last().uri, "/v1/files");
}

#[tokio::test]
async fn end_to_end_headers_pass_hop_by_hop_headers_do_not() {
    let (openai, _anthropic, relay) = setup("").await;
    let req = Request::post(relay.url("/v1/chat/completions?api-version=2024-01-01"))
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-client")
        .header("x-api-key", "client-x-api-key")
        .header("anthropic-version", "2023-06-01")
        .header("openai-organization", "org-1")
        .header("connection", "keep-alive, x-drop-me")
        .header("x-drop-me", "1")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic cHJveHk=")
        .header("x-mock", "hop-headers")
        .body(full(chat_body("gpt-4o-mini", false)))
        .unwrap();
    let resp = within(client().request(req)).await.unwrap();
    assert_eq!(resp.status(), 200);

    let rec = openai.last();
    assert_eq!(rec.uri, "/v1/chat/completions?api-version=2024-01-01");
    let h = &rec.headers;
    assert_eq!(h["authorization"], "Bearer sk-client");
    assert_eq!(h["x-api-key"], "client-x-api-key");
    assert_eq!(h["anthropic-version"], "2023-06-01");
    assert_eq!(h["openai-organization"], "org-1");
    assert_eq!(h["host"], openai.addr().to_string().as_str());
    for hop in ["x-drop-me", "keep-alive", "proxy-authorization"] {
        assert!(!h.contains_key(hop), "{hop} reached the upstream");
    }
    // relay added a request id and returns the same one.
    let id = h["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    assert_eq!(header(&resp, "x-request-id"), Some(id.as_str()));

    // The upstream's hop-by-hop response headers stop at relay; its end-to-end ones pass.
    assert_eq!(header(&resp, "x-upstream-only"), Some("kept"));
    assert_eq!(header(&resp, "x-mock-hop"), None);
    assert_eq!(header(&resp, "keep-alive"), None);
}

#[tokio::test]
async fn a_callers_request_id_is_kept() {
    let (openai, _anthropic, relay) = setup("").await;
    let req = Request::post(relay.url(CHAT))
        .header("content-type", "application/json")
        .header("x-request-id", "caller-id-42")
        .body(full(chat_body("gpt-4o-mini", false)))
        .unwrap();
    let resp = within(client().request(req)).await.unwrap();
    assert_eq!(header(&resp, "x-request-id"), Some("caller-id-42"));
    assert_eq!(openai.last().headers["x-request-id"], "caller-id-42");
}

#[tokio::test]
async fn upstream_connections_are_kept_alive_and_reused() {
    let (openai, _anthropic, relay) = setup("").await;
    let c = client();
    for _ in 0..20 {
        let resp = c
            .request(json_req(&relay.url(CHAT), chat_body("gpt-4o-mini", false)))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        bytes(resp).await;
    }
    assert_eq!(openai.calls().get(), 20);
    assert_eq!(
        openai.connections().get(),
        1,
        "one pooled HTTP/1.1 connection"
    );
    assert_eq!(openai.last().version, Version::HTTP_11);
}

#[tokio::test]
async fn http2_to_the_upstream_is_opt_in_per_provider() {
    let openai = Mock::start("openai", Kind::OpenAi).await;
    let relay = Relay::start(&format!(
        "providers:\n  - name: openai\n    kind: openai\n    base_url: {}\n    http2: true\n",
        openai.base_url()
    ))
    .await;
    let resp = client()
        .request(json_req(&relay.url(CHAT), chat_body("gpt-4o", false)))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(openai.last().version, Version::HTTP_2);
}

#[tokio::test]
async fn clients_may_speak_h2c() {
    let (openai, _anthropic, relay) = setup("").await;
    let h2: hyper_util::client::legacy::Client<_, Body> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let resp = h2
        .request(json_req(&relay.url(CHAT), chat_body("gpt-4o", true)))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), Version::HTTP_2);
    assert_eq!(text(resp).await, mock::openai_sse("gpt-4o").concat());
    assert_eq!(openai.last().version, Version::HTTP_11);
}

// ---------------------------------------------------------------- streaming

/// Reads the body until it holds exactly `want` bytes (the upstream is holding, so no more can come).
async fn read_exactly(body: &mut hyper::body::Incoming, want: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < want {
        let chunk = next_chunk(body).await.expect("more data");
        got.extend_from_slice(&chunk);
    }
    got
}

async fn first_event_arrives_while_upstream_holds(path: &str, model: &str, kind: Kind) {
    let (openai, anthropic, relay) = setup("").await;
    let (mock, events) = match kind {
        Kind::OpenAi => (&openai, mock::openai_sse(model)),
        Kind::Anthropic => (&anthropic, mock::anthropic_sse(model)),
    };
    let req = Request::post(relay.url(path))
        .header("content-type", "application/json")
        .header("x-mock", "hold")
        .body(full(chat_body(model, true)))
        .unwrap();
    let resp = within(client().request(req)).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "content-type"), Some("text/event-stream"));
    let mut body = resp.into_body();
    let first = read_exactly(&mut body, events[0].len()).await;
    assert_eq!(first, events[0].as_bytes());
    // The mock is still holding the rest: it cannot finish until released.
    assert_eq!(mock.completed().get(), 0);
    mock.release();
    let mut rest = Vec::new();
    while let Some(chunk) = next_chunk(&mut body).await {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(
        String::from_utf8([first, rest].concat()).unwrap(),
        events.concat()
    );
    mock.completed().wait_for(1, "completed streams").await;
}

#[tokio::test]
async fn openai_sse_first_event_arrives_while_upstream_holds() {
    first_event_arrives_while_upstream_holds(CHAT, "gpt-4o-mini", Kind::OpenAi).await;
}

#[tokio::test]
async fn anthropic_sse_first_event_arrives_while_upstream_holds() {
    first_event_arrives_while_upstream_holds("/v1/messages", "claude-sonnet-4-5", Kind::Anthropic)
        .await;
}

#[tokio::test]
async fn client_disconnect_mid_stream_cancels_the_upstream() {
    let (openai, _anthropic, relay) = setup("").await;
    let req = Request::post(relay.url(CHAT))
        .header("content-type", "application/json")
        .header("x-mock", "hold")
        .body(full(chat_body("gpt-4o-mini", true)))
        .unwrap();
    let resp = within(client().request(req)).await.unwrap();
    let mut body = resp.into_body();
    let events = mock::openai_sse("gpt-4o-mini");
    read_exactly(&mut body, events[0].len()).await;
    drop(body);
    openai
        .cancelled()
        .wait_for(1, "cancelled upstream responses")
        .await;
    assert_eq!(openai.completed().get(), 0);
}

#[tokio::test]
async fn client_disconnect_before_headers_cancels_the_upstream() {
    let (openai, _anthropic, relay) = setup("").await;
    let req = Request::post(relay.url(CHAT))
        .header("content-type", "application/json")
        .header("x-mock", "stall-headers")
        .body(full(chat_body("gpt-4o-mini", false)))
        .unwrap();
    let pending = tokio::spawn(client().request(req));
    openai.calls().wait_for(1, "upstream calls").await;
    pending.abort();
    openai
        .cancelled()
        .wait_for(1, "cancelled upstream requests")
        .await;
}

#[tokio::test]
async fn idle_upstream_mid_stream_ends_the_response_with_an_error() {
    let (openai, _anthropic, relay) = setup("").await;
    drop(relay);
    let relay = Relay::start(&format!(
        "providers:\n  - name: openai\n    kind: openai\n    base_url: {}\n    timeouts: {{idle: 200ms}}\n",
        openai.base_url()
    ))
    .await;
    let req = Request::post(relay.url(CHAT))
        .header("content-type", "application/json")
        .header("x-mock", "stall-body")
        .body(full(chat_body("gpt-4o-mini", true)))
        .unwrap();
    let resp = within(client().request(req)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let events = mock::openai_sse("gpt-4o-mini");
    read_exactly(&mut body, events[0].len()).await;
    let end = tokio::time::timeout(std::time::Duration::from_secs(10), body.frame())
        .await
        .expect("relay ends the stalled stream");
    assert!(
        matches!(end, Some(Err(_))),
        "the caller sees a broken stream, not a clean end: {end:?}"
    );
    openai
        .cancelled()
        .wait_for(1, "cancelled upstream responses")
        .await;
}

/// Sends a raw HTTP/1.1 WebSocket handshake to relay; returns the connection and the response head.
async fn ws_handshake(
    relay: &Relay,
    extra: &str,
) -> (tokio::io::BufReader<tokio::net::TcpStream>, String) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
    let head = format!(
        "GET /v1/realtime?model=gpt-4o-realtime-preview HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer sk-realtime\r\n{extra}\r\n",
        relay.addr
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut rd = tokio::io::BufReader::new(tcp);
    let mut resp = String::new();
    loop {
        let mut line = String::new();
        assert!(
            rd.read_line(&mut line).await.unwrap() > 0,
            "closed in the head: {resp}"
        );
        resp.push_str(&line);
        if line == "\r\n" {
            return (rd, resp.to_ascii_lowercase());
        }
    }
}

#[tokio::test]
async fn websocket_handshake_is_forwarded_and_the_connection_spliced() {
    let (openai, _anthropic, relay) = setup("").await;
    let (mut conn, head) = within(ws_handshake(&relay, "")).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket\r\n"), "{head}");
    assert!(head.contains("connection: upgrade\r\n"), "{head}");
    assert!(
        head.contains("sec-websocket-accept: mock-accept\r\n"),
        "{head}"
    );
    assert!(head.contains("x-request-id: "), "{head}");
    // The upstream saw the handshake, upgrade headers and key included.
    let rec = openai.last();
    assert_eq!(rec.uri, "/v1/realtime?model=gpt-4o-realtime-preview");
    assert_eq!(rec.headers["upgrade"], "websocket");
    assert_eq!(rec.headers["connection"], "upgrade");
    assert_eq!(rec.headers["sec-websocket-key"], "dGhlIHNhbXBsZSBub25jZQ==");
    assert_eq!(rec.headers["authorization"], "Bearer sk-realtime");
    // Bytes flow both ways, more than once, on the same connection.
    for msg in ["hello", "again"] {
        echo(&mut conn, msg).await;
    }
    assert_eq!(openai.calls().get(), 1);
}

#[tokio::test]
async fn websocket_handshake_is_routed_by_the_model_in_its_query() {
    let (openai, anthropic, relay) = setup(
        "routes:\n  - {model: 'gpt-4o-realtime*', provider: anthropic}\n  - {provider: openai}\n",
    )
    .await;
    let (_conn, head) = within(ws_handshake(&relay, "")).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert_eq!(anthropic.calls().get(), 1);
    assert_eq!(openai.calls().get(), 0);
}

#[tokio::test]
async fn websocket_handshake_refused_upstream_comes_back_unchanged() {
    let (_openai, _anthropic, relay) = setup("").await;
    let (_conn, head) = within(ws_handshake(&relay, "x-mock-status: 401\r\n")).await;
    assert!(head.starts_with("http/1.1 401"), "{head}");
    assert!(!head.contains("upgrade: websocket"), "{head}");
}

/// Writes `msg` on a spliced connection and reads the mock's echo of it.
async fn echo(conn: &mut tokio::io::BufReader<tokio::net::TcpStream>, msg: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    conn.get_mut().write_all(msg.as_bytes()).await.unwrap();
    let want = format!("echo:{msg}");
    let mut got = vec![0u8; want.len()];
    within(conn.read_exact(&mut got)).await.unwrap();
    assert_eq!(got, want.as_bytes());
}

/// Connects to `addr` until the connection is refused (the accept loop has stopped and the drain
/// begun), yielding between attempts (see the graceful shutdown test in tests/lifecycle.rs).
async fn until_refused(addr: std::net::SocketAddr) {
    for _ in 0..100 {
        tokio::task::yield_now().await;
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            return;
        }
    }
    panic!("new connections are refused once shutdown() is signalled");
}

/// relay on `extra_yaml` with one WebSocket spliced through it and carrying messages (and the
/// mocks, kept running).
async fn open_websocket(
    extra_yaml: &str,
) -> (
    Relay,
    tokio::io::BufReader<tokio::net::TcpStream>,
    [Mock; 2],
) {
    let (openai, anthropic, relay) = setup(extra_yaml).await;
    let (mut conn, head) = within(ws_handshake(&relay, "")).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    echo(&mut conn, "before").await;
    (relay, conn, [openai, anthropic])
}

#[tokio::test]
async fn shutdown_waits_for_an_open_websocket_until_it_closes() {
    let (mut relay, mut conn, _mocks) = open_websocket("").await;

    let server = relay.take();
    server.shutdown();
    until_refused(relay.addr).await;
    let stopped = tokio::spawn(server.wait());
    // Draining: the socket still carries messages, and the server, whose stop takes a few
    // milliseconds once nothing holds it (ledger and store closed), has not stopped after many
    // round trips on it.
    for i in 0..300 {
        echo(&mut conn, &format!("during {i}")).await;
        assert!(!stopped.is_finished(), "the server waits for the WebSocket");
    }
    drop(conn);
    within(stopped)
        .await
        .expect("stops once the WebSocket closes");
}

#[tokio::test]
async fn shutdown_timeout_cuts_a_websocket_still_open() {
    use tokio::io::AsyncReadExt;
    let (mut relay, mut conn, _mocks) = open_websocket("server: {shutdown_timeout: 200ms}\n").await;

    let server = relay.take();
    server.shutdown();
    within(server.wait()).await;
    // The caller sees its connection closed, not left open by a relay that has stopped.
    let mut rest = Vec::new();
    let closed = within(conn.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(0) | Err(_)),
        "{closed:?} {:?}",
        String::from_utf8_lossy(&rest)
    );
}

// ---------------------------------------------------------------- errors

#[tokio::test]
async fn unreachable_upstream_is_502_in_each_dialect() {
    let port = closed_port().await;
    let relay = Relay::start(&format!(
        "providers:\n  - name: openai\n    kind: openai\n    base_url: http://127.0.0.1:{port}/v1\n  - name: anthropic\n    kind: anthropic\n    base_url: http://127.0.0.1:{port}/v1\n"
    ))
    .await;
    let resp = client()
        .request(json_req(&relay.url(CHAT), chat_body("gpt-4o", false)))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(header(&resp, "x-relay-error"), Some("upstream_unreachable"));
    assert_eq!(header(&resp, "content-type"), Some("application/json"));
    let v = json(resp).await;
    assert_eq!(v["error"]["type"], "server_error");
    assert_eq!(v["error"]["code"], "upstream_unreachable");
    assert!(v["error"]["message"].as_str().unwrap().contains("openai"));

    let req = Request::post(relay.url("/v1/messages"))
        .header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01")
        .body(full(chat_body("claude-sonnet-4-5", false)))
        .unwrap();
    let resp = within(client().request(req)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    let v = json(resp).await;
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "api_error");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("anthropic"));
}

#[tokio::test]
async fn upstream_slower_than_first_byte_timeout_is_504() {
    let openai = Mock::start("openai", Kind::OpenAi).await;
    let relay = Relay::start(&format!(
        "providers:\n  - name: openai\n    kind: openai\n    base_url: {}\n    timeouts: {{first_byte: 200ms}}\n",
        openai.base_url()
    ))
    .await;
    let req = Request::post(relay.url(CHAT))
        .header("content-type", "application/json")
        .header("x-mock", "stall-headers")
        .body(full(chat_body("gpt-4o", false)))
        .unwrap();
    let resp = within(client().request(req)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(header(&resp, "x-relay-error"), Some("upstream_timeout"));
    let v = json(resp).await;
    assert_eq!(v["error"]["type"], "server_error");
    assert_eq!(v["error"]["code"], "upstream_timeout");
    // relay gave up on the upstream request too.
    openai
        .cancelled()
        .wait_for(1, "cancelled upstream requests")
        .await;
}

#[tokio::test]
async fn body_over_the_limit_is_413_declared_or_chunked() {
    let (openai, _anthropic, relay) = setup("server: {max_body_bytes: 1024}\n").await;
    let big = format!(
        r#"{{"model":"gpt-4o","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(2000)
    );

    // Declared Content-Length.
    let resp = client()
        .request(json_req(&relay.url(CHAT), big.clone()))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let v = json(resp).await;
    assert_eq!(v["error"]["code"], "request_too_large");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("server.max_body_bytes"));

    // Chunked, no length declared: found while reading.
    let chunks: Vec<Bytes> = big
        .as_bytes()
        .chunks(300)
        .map(Bytes::copy_from_slice)
        .collect();
    let body = StreamBody::new(stream::iter(
        chunks
            .into_iter()
            .map(|c| Ok::<_, std::io::Error>(Frame::data(c))),
    ))
    .boxed();
    let req = Request::post(relay.url("/v1/messages"))
        .header("content-type", "application/json")
        .body(body)
        .unwrap();
    let resp = within(client().request(req)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let v = json(resp).await;
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "request_too_large");

    assert_eq!(openai.calls().get(), 0, "nothing was forwarded");
}

#[tokio::test]
async fn body_that_routing_needs_but_is_not_json_is_400() {
    let (openai, anthropic, relay) = setup("").await;
    let resp = client()
        .request(json_req(&relay.url(CHAT), r#"{"model": "gpt-4o", "#))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(header(&resp, "x-relay-error"), Some("invalid_json"));
    let v = json(resp).await;
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(v["error"]["code"], "invalid_json");
    assert_eq!(openai.calls().get(), 0);

    // /v1/messages is routed by path alone: the upstream judges the body, as it would directly.
    let resp = client()
        .request(json_req(&relay.url("/v1/messages"), "{not json"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(anthropic.last().body, "{not json".as_bytes());
}

#[tokio::test]
async fn unknown_route_is_404() {
    let (openai, _anthropic, relay) =
        setup("routes:\n  - model: 'gpt-*'\n    provider: openai\n").await;
    let resp = client().request(get(&relay.url("/nope"))).await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(header(&resp, "x-relay-error"), Some("unknown_route"));
    let v = json(resp).await;
    assert_eq!(v["error"]["code"], "unknown_route");

    let resp = client()
        .request(json_req(&relay.url(CHAT), chat_body("llama-3", false)))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let v = json(resp).await;
    assert!(v["error"]["message"].as_str().unwrap().contains("llama-3"));

    let req = Request::post(relay.url("/v1/messages"))
        .header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01")
        .body(full(chat_body("claude-opus-4", false)))
        .unwrap();
    let resp = within(client().request(req)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let v = json(resp).await;
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "not_found_error");
    assert_eq!(openai.calls().get(), 0);
}

#[tokio::test]
async fn upstream_errors_pass_through_unchanged() {
    let (_openai, _anthropic, relay) = setup("").await;
    for (path, model, kind, status) in [
        (CHAT, "gpt-4o", Kind::OpenAi, 429),
        (CHAT, "gpt-4o", Kind::OpenAi, 500),
        ("/v1/messages", "claude-sonnet-4-5", Kind::Anthropic, 529),
        ("/v1/messages", "claude-sonnet-4-5", Kind::Anthropic, 400),
    ] {
        let req = Request::post(relay.url(path))
            .header("content-type", "application/json")
            .header("x-mock-status", status.to_string())
            // Longer than retry.max_delay (10 s): passed on at once, not waited for.
            .header("x-mock-retry-after", "60")
            .body(full(chat_body(model, false)))
            .unwrap();
        let resp = within(client().request(req)).await.unwrap();
        assert_eq!(resp.status().as_u16(), status);
        assert_eq!(header(&resp, "retry-after"), Some("60"));
        assert_eq!(header(&resp, "x-relay-error"), None, "not relay's error");
        assert_eq!(text(resp).await, mock::error_body(kind, status));
    }
}

// ---------------------------------------------------------------- routing

#[tokio::test]
async fn default_routes_by_model_and_by_path() {
    let (openai, anthropic, relay) = setup("").await;
    let c = client();
    let cases: [(&str, Option<&str>, &Mock, &str); 7] = [
        (CHAT, Some("gpt-4o"), &openai, CHAT),
        (CHAT, Some("claude-sonnet-4-5"), &anthropic, CHAT),
        (
            "/v1/messages",
            Some("claude-sonnet-4-5"),
            &anthropic,
            "/v1/messages",
        ),
        (
            "/v1/messages/count_tokens",
            Some("claude-haiku-4-5"),
            &anthropic,
            "/v1/messages/count_tokens",
        ),
        (
            "/v1/embeddings",
            Some("text-embedding-3-small"),
            &openai,
            "/v1/embeddings",
        ),
        ("/v1/responses", Some("gpt-5"), &openai, "/v1/responses"),
        ("/v1/models", None, &openai, "/v1/models"),
    ];
    for (path, model, mock, upstream_path) in cases {
        let before = mock.calls().get();
        let req = match model {
            Some(m) => json_req(&relay.url(path), chat_body(m, false)),
            None => get(&relay.url(path)),
        };
        let resp = within(c.request(req)).await.unwrap();
        assert_eq!(resp.status(), 200, "{path} {model:?}");
        bytes(resp).await;
        assert_eq!(
            mock.calls().get(),
            before + 1,
            "{path} {model:?} went elsewhere"
        );
        assert_eq!(mock.last().uri, upstream_path);
    }
    assert_eq!(openai.calls().get() + anthropic.calls().get(), 7);
}

#[tokio::test]
async fn the_anthropic_sdks_models_list_goes_to_anthropic_with_its_key() {
    let (openai, anthropic, relay) = setup("").await;
    // What `client.models.list()` sends with ANTHROPIC_BASE_URL pointed at relay.
    let req = Request::get(relay.url("/v1/models?limit=20"))
        .header("anthropic-version", "2023-06-01")
        .header("x-api-key", "sk-ant-caller")
        .body(full(Bytes::new()))
        .unwrap();
    let resp = within(client().request(req)).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-mock-name"), Some("anthropic"));
    assert_eq!(anthropic.last().uri, "/v1/models?limit=20");
    assert_eq!(anthropic.last().headers["x-api-key"], "sk-ant-caller");
    assert_eq!(
        openai.calls().get(),
        0,
        "the Anthropic key never went to openai"
    );
    // Claude Code's probe of the root is answered by relay itself.
    let head = Request::head(relay.url("/"))
        .body(full(Bytes::new()))
        .unwrap();
    let resp = within(client().request(head)).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(openai.calls().get() + anthropic.calls().get(), 1);
    let m = relay.metrics().await;
    assert!(
        !m.contains("status=\"404\""),
        "no error counted for the probe"
    );
}

#[tokio::test]
async fn explicit_provider_prefixes() {
    let (openai, anthropic, relay) = setup("").await;
    let resp = client()
        .request(json_req(
            &relay.url("/anthropic/v1/messages"),
            chat_body("claude-sonnet-4-5", false),
        ))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(anthropic.last().uri, "/v1/messages");
    // The prefix wins over the model: a claude model sent to /openai goes to openai.
    let resp = client()
        .request(json_req(
            &relay.url("/openai/v1/chat/completions"),
            chat_body("claude-sonnet-4-5", false),
        ))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(openai.last().uri, CHAT);
    let resp = client()
        .request(get(&relay.url("/openai/v1/models?limit=2")))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(openai.last().uri, "/v1/models?limit=2");
}

#[tokio::test]
async fn configured_routes_first_match_wins() {
    let openai = Mock::start("openai", Kind::OpenAi).await;
    let anthropic = Mock::start("anthropic", Kind::Anthropic).await;
    let local = Mock::start("local", Kind::OpenAi).await;
    let yaml = format!(
        "{}  - name: local\n    kind: openai\n    base_url: http://{}/api/v1\nroutes:\n  - model: 'llama*'\n    provider: local\n  - path: /v1/embeddings\n    provider: local\n  - model: 'claude-*'\n    provider: anthropic\n  - provider: openai\n",
        providers(&openai, &anthropic),
        local.addr()
    );
    let relay = Relay::start(&yaml).await;
    let c = client();
    for (path, model, mock, upstream) in [
        (CHAT, "llama3.1:8b", &local, "/api/v1/chat/completions"),
        (
            "/v1/embeddings",
            "text-embedding-3-small",
            &local,
            "/api/v1/embeddings",
        ),
        (CHAT, "claude-opus-4-1", &anthropic, CHAT),
        (CHAT, "gpt-4o", &openai, CHAT),
    ] {
        let before = mock.calls().get();
        let resp = c
            .request(json_req(&relay.url(path), chat_body(model, false)))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        bytes(resp).await;
        assert_eq!(mock.calls().get(), before + 1, "{model}");
        assert_eq!(mock.last().uri, upstream);
    }
}

// ---------------------------------------------------------------- keys and env

#[tokio::test]
async fn api_key_env_is_injected_only_when_the_caller_sends_none() {
    let openai = Mock::start("openai", Kind::OpenAi).await;
    let anthropic = Mock::start("anthropic", Kind::Anthropic).await;
    let yaml = format!(
        "providers:\n  - name: openai\n    kind: openai\n    base_url: {}\n    api_key_env: TEST_OPENAI_KEY\n  - name: anthropic\n    kind: anthropic\n    base_url: {}\n    api_key_env: TEST_ANTHROPIC_KEY\n",
        openai.base_url(),
        anthropic.base_url()
    );
    let env = Env::empty()
        .with("TEST_OPENAI_KEY", "sk-injected-openai")
        .with("TEST_ANTHROPIC_KEY", "sk-ant-injected");
    let relay = Relay::start_with(&yaml, env, false).await;
    let c = client();

    bytes(
        c.request(json_req(&relay.url(CHAT), chat_body("gpt-4o", false)))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        openai.last().headers["authorization"],
        "Bearer sk-injected-openai"
    );

    bytes(
        c.request(json_req(
            &relay.url("/v1/messages"),
            chat_body("claude-sonnet-4-5", false),
        ))
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(anthropic.last().headers["x-api-key"], "sk-ant-injected");
    assert!(!anthropic.last().headers.contains_key("authorization"));

    let req = Request::post(relay.url(CHAT))
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-caller")
        .body(full(chat_body("gpt-4o", false)))
        .unwrap();
    bytes(c.request(req).await.unwrap()).await;
    assert_eq!(openai.last().headers["authorization"], "Bearer sk-caller");

    let metrics = relay.metrics().await;
    assert!(!metrics.contains("injected"), "no key in /metrics");
}

#[tokio::test]
async fn environment_overrides_config_keys() {
    let openai = Mock::start("openai", Kind::OpenAi).await;
    let other = Mock::start("other", Kind::OpenAi).await;
    let anthropic = Mock::start("anthropic", Kind::Anthropic).await;
    let env = Env::empty()
        .with("RELAY_PROVIDERS_OPENAI_BASE_URL", other.base_url())
        .with("RELAY_SERVER_MAX_BODY_BYTES", "200");
    let relay = Relay::start_with(&providers(&openai, &anthropic), env, false).await;
    let resp = client()
        .request(json_req(&relay.url(CHAT), chat_body("gpt-4o", false)))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-mock-name"), Some("other"));
    assert_eq!(openai.calls().get(), 0);
    let resp = client()
        .request(json_req(&relay.url(CHAT), "x".repeat(201)))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

// ---------------------------------------------------------------- observability

#[tokio::test]
async fn healthz_and_metrics() {
    let (openai, _anthropic, relay) = setup("").await;
    let resp = client().request(get(&relay.url("/healthz"))).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(json(resp).await["status"], "ok");

    let c = client();
    bytes(
        c.request(json_req(&relay.url(CHAT), chat_body("gpt-4o-mini", false)))
            .await
            .unwrap(),
    )
    .await;
    bytes(c.request(get(&relay.url("/nope"))).await.unwrap()).await;

    // A held stream is in flight while /metrics is read.
    let req = Request::post(relay.url(CHAT))
        .header("content-type", "application/json")
        .header("x-mock", "hold")
        .body(full(chat_body("gpt-4o-mini", true)))
        .unwrap();
    let resp = within(c.request(req)).await.unwrap();
    let m = relay.metrics().await;
    assert_eq!(metric(&m, "relay_inflight_requests", &[]), Some(1.0), "{m}");
    assert_eq!(
        metric(
            &m,
            "relay_requests_total",
            &[
                ("provider", "openai"),
                ("model", "gpt-4o-mini"),
                ("status", "200")
            ]
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "relay_requests_total",
            &[("provider", "none"), ("model", "none"), ("status", "404")]
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "relay_upstream_latency_seconds_count",
            &[("provider", "openai")]
        ),
        Some(2.0),
        "{m}"
    );
    assert!(
        metric(&m, "relay_overhead_seconds_count", &[]).unwrap() >= 2.0,
        "{m}"
    );
    assert!(m.contains("# TYPE relay_upstream_latency_seconds histogram"));
    assert!(m.contains("# TYPE relay_overhead_seconds histogram"));

    openai.release();
    bytes(resp).await;
}
