//! Clients that try to exhaust relay: sockets that send nothing, headers dribbled or huge, bodies
//! that stall, bodies over the limit, more memory than relay will hold. Each waits on what relay
//! does (a socket closed, an answer); timeouts are only failure bounds.

mod common;

use std::time::Duration;

use common::*;
use http::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A small chat completion through relay; the whole answer.
async fn chat(relay: &Relay) -> Answer {
    post_json(
        relay,
        "/v1/chat/completions",
        r#"{"model":"gpt-4o","messages":[]}"#,
        &[],
    )
    .await
}

/// Reads until the server closes the socket; what it sent.
async fn until_closed(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .expect("relay closed the connection within 10 s");
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn idle_sockets_are_closed_and_the_connection_cap_keeps_healthz_answering() {
    let (_o, _a, relay) =
        setup("server:\n  max_connections: 4\n  idle_timeout: 1s\n  header_read_timeout: 1s\n")
            .await;
    // Four sockets that never send a byte take every slot.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(TcpStream::connect(relay.addr).await.unwrap());
    }
    // A fifth caller waits for a slot; relay closes the idle ones and answers it.
    let resp = within(client().request(get(&relay.url("/healthz"))))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    for s in &mut idle {
        assert_eq!(until_closed(s).await, "", "closed without a word");
    }
    let m = relay.metrics().await;
    assert!(
        metric(&m, "relay_connections_closed_total", &[("reason", "idle")]).unwrap() >= 4.0,
        "{m}"
    );
    assert!(metric(&m, "relay_connections_waiting_total", &[]).unwrap() >= 1.0);
    assert!(metric(&m, "relay_connections_open", &[]).unwrap() <= 4.0);
}

#[tokio::test]
async fn dribbled_headers_are_cut_by_the_header_timeout() {
    let (_o, _a, relay) = setup("server:\n  idle_timeout: 1h\n  header_read_timeout: 1s\n").await;
    let mut s = TcpStream::connect(relay.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: a")
        .await
        .unwrap();
    until_closed(&mut s).await;
    let m = relay.metrics().await;
    assert_eq!(
        metric(
            &m,
            "relay_connections_closed_total",
            &[("reason", "header_timeout")]
        ),
        Some(1.0)
    );
    // A keep-alive connection between requests is idle, not slow: it is kept (idle_timeout 1h).
    let mut s = TcpStream::connect(relay.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = within(s.read(&mut buf)).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let n = within(s.read(&mut buf)).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn an_oversized_head_is_refused() {
    let (openai, _a, relay) = setup("").await;
    let mut s = TcpStream::connect(relay.addr).await.unwrap();
    let big = "a".repeat(100 * 1024);
    let req = format!("GET /v1/models HTTP/1.1\r\nHost: localhost\r\nX-Big: {big}\r\n\r\n");
    // relay answers (or closes) before reading it all; a reset while writing is fine too.
    let _ = s.write_all(req.as_bytes()).await;
    let answer = until_closed(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert_eq!(openai.calls().get(), 0);
}

#[tokio::test]
async fn a_stalled_body_is_408_and_holds_nothing() {
    let (openai, _a, relay) = setup("server:\n  body_read_timeout: 1s\n").await;
    for ct in ["application/json", "multipart/form-data; boundary=x"] {
        let mut s = TcpStream::connect(relay.addr).await.unwrap();
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: {ct}\r\nContent-Length: 1000\r\n\r\n{{\"model\":"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let answer = until_closed(&mut s).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{ct}: {answer}");
        assert!(answer.contains("request_body_timeout"), "{answer}");
    }
    // The streamed upload reached the mock (which then saw its body fail); JSON never left.
    assert!(openai.calls().get() <= 1);
    let m = relay.metrics().await;
    assert_eq!(metric(&m, "relay_request_buffer_bytes", &[]), Some(0.0));
}

#[tokio::test]
async fn request_bodies_in_memory_have_one_budget() {
    let (_o, _a, relay) = setup(
        "server:\n  max_body_bytes: 1048576\n  max_buffered_bytes: 1048576\n  body_read_timeout: 4s\n",
    )
    .await;
    // One caller declares a whole budget and sends half of it.
    let mut holder = TcpStream::connect(relay.addr).await.unwrap();
    holder
        .write_all(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 1048576\r\n\r\n",
        )
        .await
        .unwrap();
    holder.write_all(&vec![b' '; 512 * 1024]).await.unwrap();
    // Wait until relay holds it (the gauge is what a dashboard sees).
    let gauge = || async {
        metric(&relay.metrics().await, "relay_request_buffer_bytes", &[]).unwrap_or(0.0)
    };
    within(async {
        while gauge().await < 1048576.0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    // The next caller waits for room (1 s), then gets 503 relay_busy rather than the machine's
    // memory.
    let a = chat(&relay).await;
    assert_eq!(a.status, 503);
    assert_eq!(a.header("x-relay-error"), Some("relay_busy"));
    // The holder stalls and gets 408; its memory comes back and requests flow again.
    assert!(until_closed(&mut holder).await.starts_with("HTTP/1.1 408"));
    let a = chat(&relay).await;
    assert_eq!(a.status, 200);
    assert_eq!(gauge().await, 0.0);
}

#[tokio::test]
async fn an_upload_over_the_limit_is_413_and_never_opens_the_breaker() {
    let openai = Mock::start("openai", Kind::OpenAi).await;
    let anthropic = Mock::start("anthropic", Kind::Anthropic).await;
    let yaml = providers(&openai, &anthropic).replace(
        "    kind: openai\n",
        "    kind: openai\n    breaker: {consecutive_failures: 3}\n",
    ) + "server:\n  max_body_bytes: 1000\n";
    let relay = Relay::start(&yaml).await;
    for _ in 0..5 {
        // A chunked multipart upload: no Content-Length, so relay finds out while streaming it.
        let req = Request::post(relay.url("/v1/audio/transcriptions"))
            .header("content-type", "multipart/form-data; boundary=x")
            .body(chunked(8, 500))
            .unwrap();
        let resp = within(client().request(req)).await.unwrap();
        assert_eq!(resp.status(), 413);
        assert_eq!(resp.headers()["x-relay-error"], "request_too_large");
    }
    // Every other caller is still served: the uploads were the caller's fault, not the provider's.
    let a = chat(&relay).await;
    assert_eq!(a.status, 200);
    let m = relay.metrics().await;
    assert_eq!(
        metric_sum(&m, "relay_circuit_state", &[("provider", "openai")]),
        Some(0.0),
        "closed"
    );
}

#[tokio::test]
async fn the_admin_api_bounds_its_bodies() {
    let (_o, _a, relay) = setup("cache: {}\nserver:\n  max_body_bytes: 1000\n").await;
    let big = "x".repeat(5000);
    let a = post_json(&relay, "/relay/cache/import", &big, &[]).await;
    assert_eq!(a.status, 413);
    assert!(a.json()["error"]
        .as_str()
        .unwrap()
        .contains("max_body_bytes"));
    // Chunked, no declared length: the same.
    let req = Request::post(relay.url("/relay/cache/import"))
        .header("content-type", "application/json")
        .body(chunked(10, 500))
        .unwrap();
    let resp = within(client().request(req)).await.unwrap();
    assert_eq!(resp.status(), 413);
}
