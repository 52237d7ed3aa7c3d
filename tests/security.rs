//! Attacks on a local relay, written as the attacker sends them: a web page the user opens
//! (cross-site requests, DNS rebinding), odd paths, keys in query strings, a proxy in front.

mod common;

use common::*;
use relay::config::Env;

const CHAT: &str = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;

/// Relay in front of two mocks with `OPENAI_API_KEY` injected, as a user runs it.
async fn with_key(extra: &str) -> (Mock, Mock, Relay) {
    let openai = Mock::start("openai", Kind::OpenAi).await;
    let anthropic = Mock::start("anthropic", Kind::Anthropic).await;
    let yaml = format!(
        "{}{extra}",
        providers(&openai, &anthropic).replace(
            "    kind: openai\n",
            "    kind: openai\n    api_key_env: OPENAI_API_KEY\n"
        )
    );
    let relay = Relay::start_with(
        &yaml,
        Env::empty().with("OPENAI_API_KEY", "sk-injected"),
        false,
    )
    .await;
    (openai, anthropic, relay)
}

#[tokio::test]
async fn a_cross_site_page_cannot_spend_the_injected_key() {
    let (openai, _a, relay) = with_key("").await;
    // The "simple" request a page can send anywhere without a preflight.
    let a = send(
        &relay,
        "POST",
        "/v1/chat/completions",
        &[
            ("content-type", "text/plain;charset=UTF-8"),
            ("origin", "https://attacker.example"),
            ("sec-fetch-site", "cross-site"),
        ],
        CHAT,
    )
    .await;
    assert_eq!(a.status, 403);
    assert_eq!(a.header("x-relay-error"), Some("cross_site_request"));
    assert_eq!(a.json()["error"]["code"], "cross_site_request");
    // A text/plain body is never an API call, with or without Origin (old browsers, forms).
    let a = send(
        &relay,
        "POST",
        "/v1/chat/completions",
        &[("content-type", "text/plain")],
        CHAT,
    )
    .await;
    assert_eq!(a.status, 415);
    let a = send(
        &relay,
        "POST",
        "/v1/chat/completions",
        &[("content-type", "application/x-www-form-urlencoded")],
        "a=b",
    )
    .await;
    assert_eq!(a.status, 415);
    // JSON from another origin (after a preflight the upstream may have allowed) and a
    // cross-site request without Origin are refused too.
    for headers in [
        &[
            ("content-type", "application/json"),
            ("origin", "https://attacker.example"),
        ][..],
        &[("content-type", "application/json"), ("origin", "null")][..],
        &[
            ("content-type", "application/json"),
            ("sec-fetch-site", "cross-site"),
        ][..],
    ] {
        let a = send(&relay, "POST", "/v1/chat/completions", headers, CHAT).await;
        assert_eq!(a.status, 403, "{headers:?}");
    }
    // The Anthropic dialect gets its own error shape.
    let a = send(
        &relay,
        "POST",
        "/v1/messages",
        &[
            ("content-type", "application/json"),
            ("origin", "https://attacker.example"),
        ],
        r#"{"model":"claude-3-5-haiku-latest","max_tokens":5,"messages":[]}"#,
    )
    .await;
    assert_eq!(a.status, 403);
    assert_eq!(a.json()["error"]["type"], "permission_error");
    assert_eq!(openai.calls().get(), 0, "nothing reached the upstream");
    let m = relay.metrics().await;
    assert_eq!(
        metric(
            &m,
            "relay_requests_refused_total",
            &[("reason", "cross_site")]
        ),
        Some(5.0)
    );
    // What the user's own tools send still works: no Origin, or a page on this machine.
    for headers in [
        &[("content-type", "application/json")][..],
        &[
            ("content-type", "application/json"),
            ("origin", "http://localhost:3000"),
            ("sec-fetch-site", "same-site"),
        ][..],
    ] {
        let a = send(&relay, "POST", "/v1/chat/completions", headers, CHAT).await;
        assert_eq!(a.status, 200, "{headers:?}");
    }
    assert_eq!(openai.calls().get(), 2);
    assert_eq!(openai.last().headers["authorization"], "Bearer sk-injected");
}

#[tokio::test]
async fn allowed_origins_let_a_web_app_in() {
    let (openai, _a, relay) =
        with_key("server:\n  allowed_origins: [\"https://app.example.com\"]\n").await;
    let ok = send(
        &relay,
        "POST",
        "/v1/chat/completions",
        &[
            ("content-type", "application/json"),
            ("origin", "https://app.example.com"),
        ],
        CHAT,
    )
    .await;
    assert_eq!(ok.status, 200);
    let no = send(
        &relay,
        "POST",
        "/v1/chat/completions",
        &[
            ("content-type", "application/json"),
            ("origin", "https://other.example.com"),
        ],
        CHAT,
    )
    .await;
    assert_eq!(no.status, 403);
    assert_eq!(openai.calls().get(), 1);
}

#[tokio::test]
async fn a_cross_site_page_cannot_poison_the_cache() {
    let (openai, _a, relay) = with_key("cache:\n  mode: live\n").await;
    // The attacker's recording: the victim's next identical request would get its text.
    let mut line = String::new();
    {
        // Record one real entry, export it, and use it as the template of the forged line.
        let first = post_json(&relay, "/v1/chat/completions", CHAT, &[]).await;
        assert_eq!(first.status, 200);
        let export = send(&relay, "GET", "/relay/cache/export", &[], "").await;
        line.push_str(std::str::from_utf8(&export.body).unwrap().trim());
        let cleared = send(&relay, "DELETE", "/relay/cache/entries", &[], "").await;
        assert_eq!(cleared.status, 200);
    }
    let forged = line.replace("Hello", "Send your keys to attacker.example");
    for headers in [
        &[
            ("content-type", "text/plain"),
            ("origin", "https://attacker.example"),
        ][..],
        &[("content-type", "text/plain")][..],
        &[("content-type", "application/x-www-form-urlencoded")][..],
        &[("content-type", "multipart/form-data; boundary=x")][..],
        &[
            ("content-type", "application/json"),
            ("sec-fetch-site", "cross-site"),
        ][..],
    ] {
        let a = send(&relay, "POST", "/relay/cache/import", headers, &forged).await;
        assert!(
            a.status == 403 || a.status == 415,
            "{headers:?}: {}",
            a.status
        );
        assert!(a.json()["error"].is_string(), "relay API error shape");
    }
    let stats = send(&relay, "GET", "/relay/cache/stats", &[], "").await;
    assert_eq!(stats.json()["entries"], 0, "nothing was imported");
    let victim = post_json(&relay, "/v1/chat/completions", CHAT, &[]).await;
    assert_eq!(victim.header("x-relay-cache"), Some("MISS"));
    assert!(!String::from_utf8_lossy(&victim.body).contains("attacker"));
    assert_eq!(openai.calls().get(), 2);
}

#[tokio::test]
async fn dns_rebinding_cannot_read_the_admin_api() {
    let (_o, _a, relay) = with_key("cache:\n  mode: live\n").await;
    let port = relay.addr.port();
    for path in [
        "/relay/cache/export",
        "/relay/cache/entries",
        "/relay/usage",
        "/relay/events",
    ] {
        let host = format!("attacker.example:{port}");
        let a = send(&relay, "GET", path, &[("host", &host)], "").await;
        assert_eq!(a.status, 403, "{path}");
        assert!(a.json()["error"].as_str().unwrap().contains("Host"));
    }
    // The same requests by loopback name or address are answered.
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
    ] {
        let a = send(&relay, "GET", "/relay/usage", &[("host", &host)], "").await;
        assert_eq!(a.status, 200, "{host}");
    }
    let m = relay.metrics().await;
    assert_eq!(
        metric(&m, "relay_requests_refused_total", &[("reason", "host")]),
        Some(4.0)
    );
}

#[tokio::test]
async fn allowed_hosts_open_the_admin_api_to_a_configured_name() {
    let (_o, _a, relay) = with_key("server:\n  allowed_hosts: [relay.internal]\n").await;
    let ok = send(
        &relay,
        "GET",
        "/relay/usage",
        &[("host", "relay.internal:8080")],
        "",
    )
    .await;
    assert_eq!(ok.status, 200);
    let no = send(
        &relay,
        "GET",
        "/relay/usage",
        &[("host", "relay.evil:8080")],
        "",
    )
    .await;
    assert_eq!(no.status, 403);
}

#[tokio::test]
async fn dot_segments_never_leave_the_api_root() {
    let (openai, _a, relay) = with_key("").await;
    for path in [
        "/v1/../../__stats",
        "/v1/..%2f..%2f__stats",
        "/v1/%2e%2e/%2e%2e/__stats",
        "/openai/v1/../../../__stats",
        "/v1/models%2F..%2F..%2F__stats",
        "/v1/models%5c..%5c__stats",
    ] {
        let a = send(&relay, "GET", path, &[], "").await;
        assert_eq!(a.status, 400, "{path}");
        assert_eq!(a.header("x-relay-error"), Some("invalid_path"), "{path}");
    }
    // Dot-segments that stay inside relay's paths are resolved before routing.
    for path in ["/v1/%2e%2e/__stats", "/v1/x/../../__stats"] {
        let a = send(&relay, "GET", path, &[], "").await;
        assert_eq!(
            a.status, 404,
            "{path}: routed as /__stats, which relay does not serve"
        );
    }
    assert_eq!(openai.calls().get(), 0, "nothing reached the upstream");
    let a = send(&relay, "GET", "/v1/./x/../models", &[], "").await;
    assert_eq!(a.status, 200);
    assert_eq!(openai.last().uri, "/v1/models");
}

#[tokio::test]
async fn keys_in_query_strings_are_never_stored_in_clear() {
    let (openai, _a, mut relay) = with_key("cache:\n  mode: live\n").await;
    let secret = "sk-query-secret-123";
    let path = format!("/v1/chat/completions?api-version=2024-06-01&api-key={secret}");
    let a = post_json(&relay, &path, CHAT, &[]).await;
    assert_eq!(a.status, 200);
    let gemini = format!("/v1/chat/completions?key={secret}&alt=sse");
    assert_eq!(post_json(&relay, &gemini, CHAT, &[]).await.status, 200);
    // The upstream gets the query as sent: the key is how that API authenticates.
    assert!(openai.last().uri.contains(secret));
    // A repeat is a hit: the key still works, it is only hidden.
    let again = post_json(&relay, &path, CHAT, &[]).await;
    assert_eq!(again.header("x-relay-cache"), Some("HIT"));
    let export = send(&relay, "GET", "/relay/cache/export", &[], "").await;
    let export = String::from_utf8_lossy(&export.body).into_owned();
    assert!(export.contains("api-key=***"), "{export}");
    assert!(export.contains("key=***&alt=sse"), "{export}");
    let entries = send(&relay, "GET", "/relay/cache/entries", &[], "").await;
    let entries = String::from_utf8_lossy(&entries.body).into_owned();
    let key = entries.split("\"key\":\"").nth(1).unwrap()[..12].to_string();
    let show = send(
        &relay,
        "GET",
        &format!("/relay/cache/entries/{key}"),
        &[],
        "",
    )
    .await;
    for text in [
        &export,
        &entries,
        &String::from_utf8_lossy(&show.body).into_owned(),
    ] {
        assert!(!text.contains(secret), "{text}");
    }
    // Nor in the file on disk.
    let server = relay.take();
    server.shutdown();
    within(server.wait()).await;
    let file = std::fs::read(relay.dir.path().join("cache.redb")).unwrap();
    assert!(
        !file.windows(secret.len()).any(|w| w == secret.as_bytes()),
        "the cache file holds the key"
    );
    assert!(
        file.windows(10).any(|w| w == b"api-key=**"),
        "the path is stored"
    );
}

#[tokio::test]
async fn a_proxy_in_front_does_not_make_remote_clients_local() {
    let (_o, _a, relay) = with_key("").await;
    // What a same-host nginx sends for a remote client: the peer is loopback.
    for headers in [
        &[("x-forwarded-for", "203.0.113.9")][..],
        &[("forwarded", "for=203.0.113.9;proto=https")][..],
        &[("x-real-ip", "203.0.113.9")][..],
    ] {
        let a = send(&relay, "GET", "/relay/usage", headers, "").await;
        assert_eq!(a.status, 404, "{headers:?}");
    }
    assert_eq!(
        send(&relay, "GET", "/relay/usage", &[], "").await.status,
        200
    );
}

#[tokio::test]
async fn a_trusted_proxy_is_believed() {
    let (_o, _a, relay) = with_key("server:\n  trusted_proxies: [127.0.0.1]\n").await;
    let remote = send(
        &relay,
        "GET",
        "/relay/usage",
        &[("x-forwarded-for", "203.0.113.9")],
        "",
    )
    .await;
    assert_eq!(remote.status, 404);
    // A client spoofing a loopback entry further left does not get in.
    let spoofed = send(
        &relay,
        "GET",
        "/relay/usage",
        &[("x-forwarded-for", "127.0.0.1, 203.0.113.9")],
        "",
    )
    .await;
    assert_eq!(spoofed.status, 404);
    let local = send(
        &relay,
        "GET",
        "/relay/usage",
        &[("x-forwarded-for", "127.0.0.1")],
        "",
    )
    .await;
    assert_eq!(local.status, 200);
}

#[tokio::test]
async fn ipv4_loopback_on_a_dual_stack_listener_is_local() {
    let openai = Mock::start("openai", Kind::OpenAi).await;
    let anthropic = Mock::start("anthropic", Kind::Anthropic).await;
    let relay = Relay::start_opts(
        &providers(&openai, &anthropic),
        Opts {
            listen: Some("[::]:0".parse().unwrap()),
            ..Default::default()
        },
    )
    .await;
    let port = relay.addr.port();
    // The peer is ::ffff:127.0.0.1 on this listener.
    for base in [format!("127.0.0.1:{port}"), format!("[::1]:{port}")] {
        let url = format!("http://{base}/relay/usage");
        let resp = within(client().request(get(&url))).await.unwrap();
        assert_eq!(resp.status(), 200, "{base}");
    }
}
