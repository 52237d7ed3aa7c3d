//! The live request feed end to end: `GET /relay/events` through a real relay in front of the mock
//! upstream, and a subscriber that never reads (the proxy must not wait for it).

mod common;

use bytes::Bytes;
use common::mock::{Kind, Mock};
use common::*;
use http::StatusCode;
use relay::events::stream::{Message, Parser};
use relay::events::{CacheState, Next, Phase, RequestEvent, DEFAULT_CAPACITY};

const CHAT: &str = "/v1/chat/completions";

fn chat_body(model: &str, stream: bool) -> String {
    format!(
        r#"{{"model":"{model}","stream":{stream},"messages":[{{"role":"user","content":"hi"}}]}}"#
    )
}

async fn post(relay: &Relay, body: &str, headers: &[(&str, &str)]) -> (StatusCode, Bytes) {
    let a = post_json(relay, CHAT, body, headers).await;
    (a.status, a.body)
}

/// An open `/relay/events` stream.
struct Feed {
    body: hyper::body::Incoming,
    parser: Parser,
    raw: String,
    pending: std::collections::VecDeque<Message>,
}

impl Feed {
    async fn open(relay: &Relay) -> Feed {
        let resp = within(client().request(get(&relay.url("/relay/events"))))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let mut body = resp.into_body();
        // The opening comment: from here on the server holds our subscription.
        let first = next_chunk(&mut body).await.expect("opening comment");
        assert!(first.starts_with(b": relay events"));
        Feed {
            body,
            parser: Parser::default(),
            raw: String::new(),
            pending: Default::default(),
        }
    }

    async fn next(&mut self) -> Message {
        loop {
            if let Some(m) = self.pending.pop_front() {
                return m;
            }
            let chunk = next_chunk(&mut self.body).await.expect("the feed goes on");
            self.raw.push_str(&String::from_utf8_lossy(&chunk));
            self.pending.extend(self.parser.push(&chunk));
        }
    }

    async fn event(&mut self) -> RequestEvent {
        match self.next().await {
            Message::Event(e) => *e,
            Message::Dropped(n) => panic!("dropped {n}"),
        }
    }

    /// The next event that is not a running stream's progress, and the last live token count
    /// seen on the way.
    async fn past_progress(&mut self) -> (RequestEvent, Option<u64>) {
        let mut live = None;
        loop {
            let e = self.event().await;
            if e.phase == Phase::Start && e.tokens_live.is_some() {
                live = e.tokens_live;
                continue;
            }
            return (e, live);
        }
    }
}

#[tokio::test]
async fn relay_events_streams_start_and_end_with_redacted_detail() {
    let openai = Mock::start("openai", Kind::OpenAi).await;
    let anthropic = Mock::start("anthropic", Kind::Anthropic).await;
    let relay = Relay::start(&format!(
        "{}cache:\n  enabled: true\n",
        providers(&openai, &anthropic)
    ))
    .await;
    let mut feed = Feed::open(&relay).await;

    let body = chat_body("gpt-4o-mini", true);
    let auth = [("authorization", "Bearer sk-secret-123")];
    let (status, _) = post(&relay, &body, &auth).await;
    assert_eq!(status, 200);

    let sent = feed.event().await;
    assert_eq!(sent.phase, Phase::Start);
    assert_eq!(sent.status, 0, "sent upstream, no headers yet");
    assert_eq!(sent.cache, None);
    let start = feed.event().await;
    assert_eq!(start.seq, sent.seq);
    assert_eq!(start.phase, Phase::Start);
    assert_eq!(start.path, CHAT);
    assert_eq!(start.provider.as_deref(), Some("openai"));
    assert_eq!(start.model.as_deref(), Some("gpt-4o-mini"));
    assert_eq!(start.status, 200);
    assert_eq!(start.cache, Some(CacheState::Miss));
    assert!(start.latency_us.is_none());

    // While it streams, its output tokens so far ("Hello world": about 3), then its end.
    let (end, live) = feed.past_progress().await;
    assert!(live.is_some_and(|t| (1..=3).contains(&t)), "{live:?}");
    assert_eq!(end.phase, Phase::End);
    assert_eq!(end.seq, start.seq);
    assert_eq!(end.outcome.as_deref(), Some("complete"));
    assert!(end.latency_us.is_some() && end.ttfb_us.is_some() && end.upstream_us.is_some());
    assert_eq!(end.bytes_in, body.len() as u64);
    assert!(end.bytes_out > 0);
    let key = end.cache_key.clone().expect("cache key");
    assert_eq!(key.len(), 12);
    let detail = end
        .detail
        .as_ref()
        .expect("detail captured while subscribed");
    assert_eq!(detail.request_body, body);
    assert!(detail.response_body.contains("data: [DONE]"));
    assert!(detail
        .request_headers
        .contains(&("authorization".to_string(), "Bearer ***".to_string())));
    assert!(detail
        .response_headers
        .iter()
        .any(|(k, v)| k == "content-type" && v == "text/event-stream"));

    // The same request again: a HIT, with the same key and no upstream call (so one start event).
    let (status, _) = post(&relay, &body, &auth).await;
    assert_eq!(status, 200);
    assert_eq!(openai.calls().get(), 1);
    let start = feed.event().await;
    assert_eq!(start.cache, Some(CacheState::Hit));
    assert_eq!(start.status, 200);
    let (end, _) = feed.past_progress().await;
    assert_eq!(end.cache, Some(CacheState::Hit));
    assert_eq!(end.cache_key.as_deref(), Some(key.as_str()));
    assert!(end.upstream_us.is_none());

    // Relay's own error: status and code.
    let (status, _) = post(&relay, "{nope", &[]).await;
    assert_eq!(status, 400);
    let _start = feed.event().await;
    let end = feed.event().await;
    assert_eq!(end.status, 400);
    assert_eq!(end.error.as_deref(), Some("invalid_json"));

    assert!(!feed.raw.contains("sk-secret"), "{}", feed.raw);
}

#[tokio::test]
async fn a_subscriber_that_never_reads_does_not_stall_requests() {
    let (openai, _anthropic, relay) = setup("").await;
    let stalled = relay.server().events().subscribe();
    // Each request publishes three events (sent upstream, headers, end): they overflow the channel.
    let n = DEFAULT_CAPACITY;
    let body = chat_body("gpt-4o", false);
    for _ in 0..n {
        let (status, _) = post(&relay, &body, &[]).await;
        assert_eq!(status, 200);
    }
    openai.calls().wait_for(n, "upstream calls").await;
    let dropped = (3 * n - DEFAULT_CAPACITY) as f64;
    assert_eq!(
        metric(&relay.metrics().await, "relay_events_dropped_total", &[]),
        Some(dropped)
    );
    // The stalled subscriber finds out what it lost when it reads, then gets the newest events.
    let mut stalled = stalled;
    assert!(matches!(stalled.try_next(), Next::Lagged(l) if l as f64 == dropped));
    assert!(matches!(stalled.try_next(), Next::Event(_)));
}

#[tokio::test]
async fn without_subscribers_nothing_is_published_or_dropped() {
    let (_openai, _anthropic, relay) = setup("").await;
    for _ in 0..(DEFAULT_CAPACITY + 10) {
        let (status, _) = post(&relay, &chat_body("gpt-4o", false), &[]).await;
        assert_eq!(status, 200);
    }
    assert_eq!(
        metric(&relay.metrics().await, "relay_events_dropped_total", &[]),
        Some(0.0)
    );
    // A subscriber arriving now sees only what comes after it.
    let mut sub = relay.server().events().subscribe();
    assert!(matches!(sub.try_next(), Next::Empty));
}

#[tokio::test]
async fn replay_sends_the_captured_request_again_without_its_key() {
    let (openai, _anthropic, relay) = setup("").await;
    let mut sub = relay.server().events().subscribe();
    let body = chat_body("gpt-4o", false);
    let (status, _) = post(
        &relay,
        &body,
        &[("authorization", "Bearer sk-secret-9"), ("x-trace", "t1")],
    )
    .await;
    assert_eq!(status, 200);
    let end = loop {
        let ev = within(sub.recv()).await.unwrap().unwrap();
        if ev.phase == Phase::End {
            break ev;
        }
    };
    let replay = relay::tui::actions::Replay::of(&end).unwrap();
    let line = replay.send(&format!("http://{}", relay.addr)).await;
    assert_eq!(line, "replayed POST /v1/chat/completions → 200");
    openai.calls().wait_for(2, "the replayed call").await;
    let again = openai.last();
    assert_eq!(again.body, body);
    assert_eq!(again.headers["x-trace"], "t1");
    assert!(again.headers.get("authorization").is_none());
    // The replay went through relay: it is in the feed too.
    let replayed = loop {
        let ev = within(sub.recv()).await.unwrap().unwrap();
        if ev.phase == Phase::End {
            break ev;
        }
    };
    assert_ne!(replayed.seq, end.seq);
    assert_eq!(replayed.path, CHAT);
}

/// This machine's non-loopback IPv4 address (the source of its default route), if it has one. A UDP
/// `connect` only looks the route up; nothing is sent.
fn lan_ip() -> Option<std::net::IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// A non-loopback peer gets `/relay/events` only with `server.events_remote: true`, and never
/// `/relay/usage` or `/relay/cache`. Relay listens on all interfaces and is reached through this
/// machine's own LAN address, so the peer it sees is not loopback.
#[tokio::test]
async fn events_remote_opens_only_the_event_stream_to_other_peers() {
    let Some(ip) = lan_ip() else {
        // No interface but loopback here: the decision itself is covered by the pipeline's
        // `relay_api_is_loopback_only_but_events_can_be_opened`.
        eprintln!("skipped: this machine has no non-loopback address");
        return;
    };
    for remote in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("relay.yaml");
        std::fs::write(
            &config_path,
            format!("server: {{events_remote: {remote}}}\n"),
        )
        .unwrap();
        let server = relay::server::Server::start(relay::server::ServeOptions {
            config_path: Some(config_path),
            listen: Some("0.0.0.0:0".parse().unwrap()),
            env: relay::config::Env::empty()
                .with("RELAY_CACHE_ENABLED", "false")
                .with("RELAY_COST_ENABLED", "false"),
            watch_config: false,
            offline: false,
            clock: Default::default(),
        })
        .await
        .expect("relay starts");
        let port = server.local_addr().port();
        let status = |path: &'static str| {
            let url = format!("http://{}{path}", std::net::SocketAddr::new(ip, port));
            async move { within(client().request(get(&url))).await.unwrap().status() }
        };
        let events = status("/relay/events").await;
        assert_eq!(
            events,
            if remote { 200 } else { 404 },
            "events_remote: {remote}"
        );
        assert_eq!(status("/relay/usage").await, 404, "events_remote: {remote}");
        assert_eq!(
            status("/relay/cache/entries").await,
            404,
            "events_remote: {remote}"
        );
        // Loopback peers keep everything.
        let local = format!("http://127.0.0.1:{port}/relay/events");
        let resp = within(client().request(get(&local))).await.unwrap();
        assert_eq!(resp.status(), 200);
        drop(resp);
        server.shutdown();
        within(server.wait()).await;
    }
}
