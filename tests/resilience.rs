//! Retries, fallbacks by error and the original relay's breaker default, against flaky mock
//! upstreams on real sockets.

mod common;

use common::mock::{self, Kind, Mock};
use common::*;
use http::StatusCode;

const CHAT: &str = "/v1/chat/completions";

fn chat(n: usize) -> String {
    format!(r#"{{"model":"gpt-4o","messages":[{{"role":"user","content":"hi {n}"}}]}}"#)
}

/// Fast retries for the tests: 1 ms first wait, 50 ms at most.
const FAST: &str = "    retry: {attempts: 3, base_delay: 1ms, max_delay: 50ms}\n";

fn providers_with(openai: &Mock, anthropic: &Mock, openai_extra: &str) -> String {
    format!(
        "providers:\n  - name: openai\n    kind: openai\n    base_url: {}\n{openai_extra}  - name: anthropic\n    kind: anthropic\n    base_url: {}\n",
        openai.base_url(),
        anthropic.base_url()
    )
}

async fn chat_call(relay: &Relay, n: usize, headers: &[(&str, &str)]) -> Answer {
    post_json(relay, CHAT, &chat(n), headers).await
}

#[tokio::test]
async fn an_upstream_that_fails_twice_then_answers_is_a_success() {
    let openai = Mock::start("openai", Kind::OpenAi).await;
    let anthropic = Mock::start("anthropic", Kind::Anthropic).await;
    let relay = Relay::start(&providers_with(&openai, &anthropic, FAST)).await;
    let flaky = [
        ("x-mock-sequence", "503,529,200"),
        ("x-mock-retry-after", "none"),
    ];
    let a = chat_call(&relay, 1, &flaky).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    assert_eq!(a.body, mock::openai_json("gpt-4o").as_bytes());
    assert_eq!(openai.calls().get(), 3);
    let m = relay.metrics().await;
    let retried = [
        ("provider", "openai"),
        ("reason", "5xx"),
        ("action", "retry"),
    ];
    assert_eq!(
        metric(&m, "relay_retries_total", &retried),
        Some(2.0),
        "{m}"
    );
    // One request in the metrics, answered 200.
    assert_eq!(
        metric(
            &m,
            "relay_requests_total",
            &[
                ("provider", "openai"),
                ("model", "gpt-4o"),
                ("status", "200")
            ]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn retries_stop_at_attempts_and_the_last_answer_goes_back_unchanged() {
    let openai = Mock::start("openai", Kind::OpenAi).await;
    let anthropic = Mock::start("anthropic", Kind::Anthropic).await;
    let relay = Relay::start(&providers_with(&openai, &anthropic, FAST)).await;
    let failing = [("x-mock-status", "503"), ("x-mock-retry-after", "none")];
    let a = chat_call(&relay, 1, &failing).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.body, mock::error_body(Kind::OpenAi, 503).as_bytes());
    assert_eq!(openai.calls().get(), 3);
    // A 400 is the caller's: never retried.
    let a = chat_call(&relay, 2, &[("x-mock-status", "400")]).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(openai.calls().get(), 4);
}

#[tokio::test]
async fn retry_after_is_honoured_up_to_max_delay() {
    let openai = Mock::start("openai", Kind::OpenAi).await;
    let anthropic = Mock::start("anthropic", Kind::Anthropic).await;
    let relay = Relay::start(&providers_with(&openai, &anthropic, FAST)).await;
    // Asks for 20 ms: waited, then answered.
    let short = [
        ("x-mock-sequence", "429,200"),
        ("x-mock-retry-after", "0.02"),
    ];
    let started = std::time::Instant::now();
    let a = chat_call(&relay, 1, &short).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(started.elapsed() >= std::time::Duration::from_millis(20));
    assert_eq!(openai.calls().get(), 2);
    // Asks for 7 s, more than max_delay (50 ms): the caller gets the 429 and decides.
    let long = [("x-mock-status", "429")];
    let a = chat_call(&relay, 2, &long).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(a.headers["retry-after"], "7");
    assert_eq!(openai.calls().get(), 3);
}

#[tokio::test]
async fn a_stream_is_never_retried_after_its_first_byte() {
    let openai = Mock::start("openai", Kind::OpenAi).await;
    let anthropic = Mock::start("anthropic", Kind::Anthropic).await;
    let extra = format!("{FAST}    timeouts: {{idle: 200ms}}\n");
    let relay = Relay::start(&providers_with(&openai, &anthropic, &extra)).await;
    let body = r#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let req = http::Request::post(relay.url(CHAT))
        .header("content-type", "application/json")
        .header("x-mock", "stall-body")
        .body(full(body))
        .unwrap();
    let resp = within(client().request(req)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // The stream is cut by the idle timeout after its first event.
    let read = http_body_util::BodyExt::collect(resp.into_body()).await;
    assert!(read.is_err());
    assert_eq!(
        openai.calls().get(),
        1,
        "cut after its first event: not sent again"
    );
}

#[tokio::test]
async fn a_refused_connection_is_retried_then_fails_cleanly() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let anthropic = Mock::start("anthropic", Kind::Anthropic).await;
    let yaml = format!(
        "providers:\n  - name: openai\n    kind: openai\n    base_url: http://127.0.0.1:{port}/v1\n{FAST}  - name: anthropic\n    kind: anthropic\n    base_url: {}\n",
        anthropic.base_url()
    );
    let relay = Relay::start(&yaml).await;
    let a = chat_call(&relay, 1, &[]).await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY);
    let m = relay.metrics().await;
    let retried = [
        ("provider", "openai"),
        ("reason", "connect"),
        ("action", "retry"),
    ];
    assert_eq!(
        metric(&m, "relay_retries_total", &retried),
        Some(2.0),
        "{m}"
    );
}

#[tokio::test]
async fn the_fallback_takes_over_on_the_statuses_and_error_codes_it_is_given() {
    let openai = Mock::start("openai", Kind::OpenAi).await;
    let backup = Mock::start("backup", Kind::OpenAi).await;
    let yaml = format!(
        "providers:\n  - name: openai\n    kind: openai\n    base_url: {}\n    retry: {{attempts: 1}}\n  - name: backup\n    kind: openai\n    base_url: {}\n    api_key_env: BACKUP_KEY\nroutes:\n  - {{model: 'gpt-*', provider: openai, fallback: backup, fallback_on: [429, context_length_exceeded]}}\n",
        openai.base_url(),
        backup.base_url()
    );
    let relay = Relay::start_with(
        &yaml,
        relay::config::Env::empty().with("BACKUP_KEY", "sk-backup"),
        false,
    )
    .await;
    let caller = ("authorization", "Bearer sk-caller");
    let primary = ("x-mock-for", "openai");
    // 429 from the primary: the backup answers, with its own key, never the caller's.
    let a = chat_call(&relay, 1, &[("x-mock-status", "429"), primary, caller]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.headers["x-mock-name"], "backup");
    assert_eq!(backup.calls().get(), 1);
    assert_eq!(
        backup.last().headers["authorization"],
        "Bearer sk-backup",
        "the fallback's own key"
    );
    // An error code: the primary's 400 context_length_exceeded goes to the backup, which answers.
    let a = chat_call(
        &relay,
        2,
        &[
            ("x-mock-status", "400"),
            ("x-mock-error-code", "context_length_exceeded"),
            primary,
            caller,
        ],
    )
    .await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "{:?}",
        String::from_utf8_lossy(&a.body)
    );
    assert_eq!(a.headers["x-mock-name"], "backup");
    // Another 400 stays with the primary.
    let a = chat_call(&relay, 3, &[("x-mock-status", "400"), primary, caller]).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.headers["x-mock-name"], "openai");
    assert_eq!(backup.calls().get(), 2);
    let m = relay.metrics().await;
    let handed = [
        ("provider", "openai"),
        ("reason", "context_length_exceeded"),
        ("action", "fallback"),
    ];
    assert_eq!(metric(&m, "relay_retries_total", &handed), Some(1.0), "{m}");
}

/// The original relay's breaker is on by default: 5 failures in a row open it for 30 s, and the
/// failing upstream is no longer called.
#[tokio::test]
async fn the_breaker_is_on_by_default() {
    let openai = Mock::start("openai", Kind::OpenAi).await;
    let anthropic = Mock::start("anthropic", Kind::Anthropic).await;
    let no_retry = "    retry: {attempts: 1}\n";
    let relay = Relay::start(&providers_with(&openai, &anthropic, no_retry)).await;
    for n in 0..30 {
        let a = chat_call(&relay, n, &[("x-mock-status", "500")]).await;
        let expected = if n < 5 {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        assert_eq!(a.status, expected, "request {n}");
    }
    assert_eq!(openai.calls().get(), 5);
    let off = "    retry: {attempts: 1}\n    breaker: {enabled: false}\n";
    let openai = Mock::start("openai", Kind::OpenAi).await;
    let relay = Relay::start(&providers_with(&openai, &anthropic, off)).await;
    for n in 0..10 {
        let a = chat_call(&relay, n, &[("x-mock-status", "500")]).await;
        assert_eq!(a.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
    assert_eq!(
        openai.calls().get(),
        10,
        "breaker: {{enabled: false}} turns it off"
    );
}

/// A fallback that cannot be reached, even after its retries, leaves the caller the primary's own
/// answer, not relay's 502.
#[tokio::test]
async fn a_fallback_that_fails_leaves_the_primarys_answer() {
    let openai = Mock::start("openai", Kind::OpenAi).await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let yaml = format!(
        "providers:\n  - name: openai\n    kind: openai\n    base_url: {}\n    retry: {{attempts: 1}}\n  - name: backup\n    kind: openai\n    base_url: http://127.0.0.1:{port}/v1\n    retry: {{attempts: 2, base_delay: 1ms, max_delay: 5ms}}\nroutes:\n  - {{provider: openai, fallback: backup, fallback_on: [429]}}\n",
        openai.base_url()
    );
    let relay = Relay::start(&yaml).await;
    let a = chat_call(&relay, 1, &[("x-mock-status", "429")]).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(a.headers["x-mock-name"], "openai");
    assert_eq!(a.body, mock::error_body(Kind::OpenAi, 429).as_bytes());
}
