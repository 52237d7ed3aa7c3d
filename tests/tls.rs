//! HTTPS serving (`server.tls`), the local CA, upstream trust (`upstream.ca_file`) and the forward
//! proxy (`CONNECT` interception and blind tunnels, absolute-form HTTP), end to end: relay on
//! 127.0.0.1 port 0, TLS mock upstreams with rcgen certificates, clients that trust only the roots
//! each test gives them.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::mock::{Kind, Mock};
use common::tls::*;
use common::*;
use http::Request;
use relay::config::{Config, Env};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

const CHAT: &str = "/v1/chat/completions";
const BODY: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn header<'a>(resp: &'a http::Response<hyper::body::Incoming>, name: &str) -> Option<&'a str> {
    resp.headers().get(name).map(|v| v.to_str().unwrap())
}

fn chat(host: &str) -> Request<Body> {
    Request::post(CHAT)
        .header("host", host)
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-test")
        .body(full(BODY))
        .unwrap()
}

/// relay with `server.tls: auto` and its CA in `ca_dir` (made by relay), in front of a plain mock.
async fn https_relay(ca_dir: &Path, mock: &Mock) -> Relay {
    Relay::start_with(
        &format!(
            "server:\n  tls: auto\nproviders:\n  - name: openai\n    base_url: {}\n",
            mock.base_url()
        ),
        Env::empty().with("RELAY_SERVER_CA_DIR", ca_dir.display().to_string()),
        false,
    )
    .await
}

#[tokio::test]
async fn https_with_auto_tls_is_trusted_through_the_generated_ca_only() {
    let mock = Mock::start("openai", Kind::OpenAi).await;
    let ca_dir = tempfile::tempdir().unwrap();
    let relay = https_relay(ca_dir.path(), &mock).await;
    let ca_pem = ca_dir.path().join("ca.pem");
    let url = format!("https://localhost:{}", relay.addr.port());

    // A client that trusts only relay's CA: health, and a proxied request.
    let client = https_client(roots_from_file(&ca_pem));
    let resp = within(client.request(get(&format!("{url}/healthz"))))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = within(client.request(json_req(&format!("{url}{CHAT}"), BODY)))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-mock-name"), Some("openai"));
    assert_eq!(
        json(resp).await["choices"][0]["message"]["content"],
        "Hello world"
    );
    // 127.0.0.1 is in the certificate too.
    let ip_url = format!("https://127.0.0.1:{}/healthz", relay.addr.port());
    assert_eq!(
        within(client.request(get(&ip_url))).await.unwrap().status(),
        200
    );
    assert_eq!(mock.calls().get(), 1);

    // A client with other roots (an unrelated CA) refuses relay's certificate.
    let stranger = https_client(roots_of(&TestCa::new("stranger").cert));
    let err = within(stranger.request(get(&format!("{url}/healthz"))))
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("UnknownIssuer"), "{err:?}");
}

#[tokio::test]
async fn ca_and_leaf_persist_across_restarts_with_owner_only_permissions() {
    let mock = Mock::start("openai", Kind::OpenAi).await;
    let tmp = tempfile::tempdir().unwrap();
    let ca_dir = tmp.path().join("relay-ca");
    let files = ["ca.pem", "ca-key.pem", "localhost.pem", "localhost-key.pem"];

    let mut relay = https_relay(&ca_dir, &mock).await;
    let before: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(ca_dir.join(f)).unwrap())
        .collect();
    for f in files {
        assert_eq!(mode(&ca_dir.join(f)), 0o600, "{f}");
    }
    assert_eq!(mode(&ca_dir), 0o700);
    let server = relay.take();
    server.shutdown();
    server.wait().await;

    let relay = https_relay(&ca_dir, &mock).await;
    for (f, was) in files.iter().zip(&before) {
        assert_eq!(&std::fs::read(ca_dir.join(f)).unwrap(), was, "{f} changed");
    }
    // The restarted relay presents the stored leaf, and the first run's CA still verifies it.
    let ca = CertificateDer::from_pem_slice(&before[0]).unwrap();
    let leaf = CertificateDer::from_pem_slice(&before[2]).unwrap();
    let tcp = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots_of(&ca))
            .with_no_client_auth(),
    ));
    let tls = within(connector.connect("localhost".try_into().unwrap(), tcp))
        .await
        .expect("handshake with the restarted relay");
    assert_eq!(tls.get_ref().1.peer_certificates().unwrap()[0], leaf);
}

#[tokio::test]
async fn https_with_given_cert_and_key_files() {
    let mock = Mock::start("openai", Kind::OpenAi).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("my org CA");
    let (_, _, cert_pem, key_pem) = ca.leaf(&["localhost"]);
    std::fs::write(dir.path().join("cert.pem"), cert_pem).unwrap();
    std::fs::write(dir.path().join("key.pem"), key_pem).unwrap();
    let relay = Relay::start(&format!(
        "server:\n  tls: {{cert: {}, key: {}}}\nproviders:\n  - name: openai\n    base_url: {}\n",
        dir.path().join("cert.pem").display(),
        dir.path().join("key.pem").display(),
        mock.base_url()
    ))
    .await;
    let client = https_client(roots_of(&ca.cert));
    let url = format!("https://localhost:{}{CHAT}", relay.addr.port());
    let resp = within(client.request(json_req(&url, BODY))).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-mock-name"), Some("openai"));
}

/// A TLS mock upstream with a certificate from its own CA, and relay trusting that CA through
/// `upstream.ca_file`, with the cache on. Returns (origin CA, mock, relay, relay's CA dir).
async fn intercepting_setup(proxy_yaml: &str) -> (TestCa, Mock, Relay, tempfile::TempDir) {
    let origin_ca = TestCa::new("origin CA");
    let mock = Mock::start_tls(
        "openai",
        Kind::OpenAi,
        origin_ca.server_config(&["localhost", "127.0.0.1"]),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let origin_ca_file = origin_ca.write(dir.path(), "origin-ca.pem");
    // What `relay ca path` does before a client is pointed at relay: make the CA to trust.
    relay::tls::LocalCa::load_or_create(&dir.path().join("ca")).unwrap();
    let relay = Relay::start_with(
        &format!(
            "providers:\n  - name: openai\n    base_url: {}\nupstream:\n  ca_file: {}\ncache:\n  enabled: true\n{proxy_yaml}",
            mock.https_base_url(),
            origin_ca_file.display()
        ),
        Env::empty().with(
            "RELAY_SERVER_CA_DIR",
            dir.path().join("ca").display().to_string(),
        ),
        false,
    )
    .await;
    (origin_ca, mock, relay, dir)
}

#[tokio::test]
async fn upstream_ca_file_lets_relay_reach_a_tls_upstream() {
    let (_origin, mock, relay, _dir) = intercepting_setup("").await;
    let resp = within(client().request(json_req(&relay.url(CHAT), BODY)))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-mock-name"), Some("openai"));
    assert_eq!(mock.calls().get(), 1);
}

#[tokio::test]
async fn connect_to_a_provider_host_is_intercepted_and_cached() {
    let (_origin, mock, relay, dir) = intercepting_setup("").await;
    let relay_ca = dir.path().join("ca").join("ca.pem");

    // An app that hard-codes https://api.openai.com, with HTTPS_PROXY=relay and relay's CA.
    let mut seen = Vec::new();
    for want in ["MISS", "HIT"] {
        let p = within(via_proxy(
            relay.addr,
            "api.openai.com",
            443,
            roots_from_file(&relay_ca),
            chat("api.openai.com"),
        ))
        .await
        .expect("request through the proxy");
        assert_eq!(p.response.status(), 200);
        assert_eq!(header(&p.response, "x-relay-cache"), Some(want));
        assert_eq!(header(&p.response, "x-mock-name"), Some("openai"));
        seen.push(p.peer_cert.clone());
        let body = json(p.response).await;
        assert_eq!(body["choices"][0]["message"]["content"], "Hello world");
    }
    // One upstream call: the second answer came from the cache. The upstream got the provider's
    // path and its own host.
    assert_eq!(mock.calls().get(), 1);
    let got = mock.last();
    assert_eq!(got.uri, CHAT);
    assert_eq!(
        got.headers["host"],
        format!("localhost:{}", mock.addr().port()).as_str()
    );
    // The per-host certificate is made once and reused.
    assert_eq!(seen[0], seen[1]);
    // It counts like any request.
    let m = relay.metrics().await;
    assert_eq!(
        metric(
            &m,
            "relay_cache_hits_total",
            &[("provider", "openai"), ("model", "gpt-4o-mini")]
        ),
        Some(1.0)
    );

    // The provider's own base_url host is intercepted the same way (relay's certificate, not the
    // origin's), and the same cache entry answers.
    let p = within(via_proxy(
        relay.addr,
        "localhost",
        mock.addr().port(),
        roots_from_file(&relay_ca),
        chat("localhost"),
    ))
    .await
    .expect("request through the proxy to the base_url host");
    assert_eq!(header(&p.response, "x-relay-cache"), Some("HIT"));
    assert_eq!(mock.calls().get(), 1);
}

#[tokio::test]
async fn connect_to_other_hosts_is_a_blind_tunnel() {
    let (_origin, provider_mock, relay, dir) = intercepting_setup("").await;
    // An origin relay knows nothing about, with its own CA.
    let other_ca = TestCa::new("other origin CA");
    let other = Mock::start_tls(
        "other",
        Kind::OpenAi,
        other_ca.server_config(&["localhost", "127.0.0.1"]),
    )
    .await;
    let expected_leaf = {
        // What the origin presents when reached directly.
        let tcp = tokio::net::TcpStream::connect(other.addr()).await.unwrap();
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(
            rustls::ClientConfig::builder()
                .with_root_certificates(roots_of(&other_ca.cert))
                .with_no_client_auth(),
        ));
        let tls = connector
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .unwrap();
        tls.get_ref().1.peer_certificates().unwrap()[0].clone()
    };

    for _ in 0..2 {
        let p = within(via_proxy(
            relay.addr,
            "localhost",
            other.addr().port(),
            roots_of(&other_ca.cert),
            chat("localhost"),
        ))
        .await
        .expect("tunnelled request");
        assert_eq!(
            p.peer_cert, expected_leaf,
            "the client sees the origin's own certificate"
        );
        assert_eq!(p.response.status(), 200);
        assert_eq!(header(&p.response, "x-mock-name"), Some("other"));
        assert_eq!(
            header(&p.response, "x-relay-cache"),
            None,
            "relay never saw the request"
        );
    }
    assert_eq!(other.calls().get(), 2);
    assert_eq!(provider_mock.calls().get(), 0);
    // No certificate was made for the tunnelled host (only the CA the setup made is there).
    let names: Vec<String> = std::fs::read_dir(dir.path().join("ca"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.starts_with("localhost")),
        "{names:?}"
    );

    // A client trusting only relay's CA fails there: relay did not terminate TLS.
    let relay_ca = TestCa::new("not the origin");
    let err = within(via_proxy(
        relay.addr,
        "localhost",
        other.addr().port(),
        roots_of(&relay_ca.cert),
        chat("localhost"),
    ))
    .await
    .err()
    .expect("untrusted origin");
    assert!(err.contains("TLS inside the tunnel"), "{err}");
}

#[tokio::test]
async fn intercept_false_tunnels_provider_hosts_too() {
    let (origin_ca, mock, relay, _dir) = intercepting_setup("proxy:\n  intercept: false\n").await;
    let p = within(via_proxy(
        relay.addr,
        "localhost",
        mock.addr().port(),
        roots_of(&origin_ca.cert),
        chat("localhost"),
    ))
    .await
    .expect("tunnelled request");
    assert_eq!(p.response.status(), 200);
    assert_eq!(header(&p.response, "x-relay-cache"), None);
    assert_eq!(mock.calls().get(), 1);
}

#[tokio::test]
async fn intercept_host_list_limits_interception() {
    let (origin_ca, mock, relay, dir) =
        intercepting_setup("proxy:\n  intercept: [api.openai.com]\n").await;
    // Listed: intercepted.
    let p = within(via_proxy(
        relay.addr,
        "api.openai.com",
        443,
        roots_from_file(&dir.path().join("ca").join("ca.pem")),
        chat("api.openai.com"),
    ))
    .await
    .expect("intercepted");
    assert_eq!(header(&p.response, "x-relay-cache"), Some("MISS"));
    // The base_url host is not listed: tunnelled, the origin's certificate.
    let p = within(via_proxy(
        relay.addr,
        "localhost",
        mock.addr().port(),
        roots_of(&origin_ca.cert),
        chat("localhost"),
    ))
    .await
    .expect("tunnelled");
    assert_eq!(header(&p.response, "x-relay-cache"), None);
    assert_eq!(mock.calls().get(), 2);
}

#[tokio::test]
async fn connect_to_an_unreachable_host_is_a_502() {
    let (_origin, _mock, relay, _dir) = intercepting_setup("").await;
    // A port nothing listens on: bind one, then free it.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (code, _) = within(connect_tunnel(relay.addr, "127.0.0.1", port)).await;
    assert_eq!(code, 502);
}

#[tokio::test]
async fn absolute_form_http_is_proxied() {
    let (openai, _anthropic, relay) = setup("").await;
    let other = Mock::start("other", Kind::OpenAi).await;

    // To a provider host: through the pipeline (routed, counted, x-request-id).
    let req = Request::post(format!("http://{}{CHAT}", openai.addr()))
        .header("host", openai.addr().to_string())
        .header("content-type", "application/json")
        .body(full(BODY))
        .unwrap();
    let resp = within(via_http_proxy(relay.addr, req)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-mock-name"), Some("openai"));
    assert!(header(&resp, "x-request-id").is_some());
    assert_eq!(openai.last().uri, CHAT);
    let m = relay.metrics().await;
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
        Some(1.0)
    );

    // To any other host: forwarded as is.
    let req = Request::get(format!("http://{}/anything?x=1", other.addr()))
        .header("host", other.addr().to_string())
        .body(full(""))
        .unwrap();
    let resp = within(via_http_proxy(relay.addr, req)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-mock-name"), Some("other"));
    assert!(header(&resp, "x-request-id").is_none());
    assert_eq!(other.last().uri, "/anything?x=1");

    // To relay's own address: an ordinary request.
    let req = Request::get(format!("http://{}/healthz", relay.addr))
        .header("host", relay.addr.to_string())
        .body(full(""))
        .unwrap();
    let resp = within(via_http_proxy(relay.addr, req)).await;
    assert_eq!(text(resp).await, r#"{"status":"ok"}"#);
}

#[test]
fn tls_and_proxy_config_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let cases = [
        (
            "server: {tls: maybe}",
            "server.tls",
            "\"maybe\": expected `auto`, `off`",
        ),
        (
            "server: {tls: {cert: /nonexistent/c.pem, key: /nonexistent/k.pem}}",
            "server.tls.cert",
            "cannot read /nonexistent/c.pem",
        ),
        (
            &*format!("upstream: {{ca_file: {}}}", not_pem.display()),
            "upstream.ca_file",
            "no certificate",
        ),
        (
            "proxy: {intercept: [example.com]}",
            "proxy.intercept[0]",
            "maps to no provider",
        ),
        (
            "proxy: {intercept: [\"https://api.openai.com\"]}",
            "proxy.intercept[0]",
            "no scheme, port or path",
        ),
        (
            "proxy: {intercept: maybe}",
            "proxy.intercept",
            "true, false, or a list of hosts",
        ),
    ];
    for (yaml, path, message) in cases {
        let err = Config::from_yaml_str(yaml, "t.yaml", &Env::empty()).unwrap_err();
        assert_eq!(err.key_path(), Some(path), "{yaml}: {err}");
        assert!(err.to_string().contains(message), "{yaml}: {err}");
    }
    // Good forms.
    let cfg = Config::from_yaml_str(
        "server: {tls: auto, ca_dir: /tmp/x}\nproxy: {intercept: [API.openai.com]}",
        "t.yaml",
        &Env::empty(),
    )
    .unwrap();
    assert_eq!(cfg.server.tls, relay::config::ServerTls::Auto);
    assert_eq!(
        cfg.proxy.intercept,
        relay::config::Intercept::Hosts(vec!["api.openai.com".into()])
    );
    let env = Env::empty()
        .with("RELAY_SERVER_TLS", "auto")
        .with("RELAY_PROXY_INTERCEPT", "false");
    let cfg = Config::from_yaml_str("", "t.yaml", &env).unwrap();
    assert_eq!(cfg.server.tls, relay::config::ServerTls::Auto);
    assert_eq!(cfg.proxy.intercept, relay::config::Intercept::Off);
}

/// The whole user story with a real, independent client: `relay ca path` prints the trust
/// variables, and Python's urllib with `HTTPS_PROXY` pointed at relay (and those variables) calls
/// `https://api.openai.com/...`, which relay intercepts: a MISS, then a HIT, one upstream call.
#[tokio::test]
async fn python_client_with_https_proxy_and_ca_path_variables() {
    let (_origin, mock, relay, dir) = intercepting_setup("").await;
    let ca_dir = dir.path().join("ca").display().to_string();
    let config = relay.config_path.clone();
    let printed = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_relay"))
            .args(["ca", "path", "--config"])
            .arg(&config)
            .env("RELAY_SERVER_CA_DIR", &ca_dir)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        printed.status.success(),
        "{}",
        String::from_utf8_lossy(&printed.stderr)
    );
    let stdout = String::from_utf8(printed.stdout).unwrap();
    let mut lines = stdout.lines();
    assert_eq!(
        lines.next().unwrap(),
        dir.path().join("ca").join("ca.pem").display().to_string()
    );
    let vars: Vec<(String, String)> = lines
        .map(|l| {
            let (k, v) = l.strip_prefix("export ").unwrap().split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect();
    let names: Vec<&str> = vars.iter().map(|(k, _)| k.as_str()).collect();
    for want in ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS"] {
        assert!(names.contains(&want), "{stdout}");
    }

    const SCRIPT: &str = r#"
import json, urllib.request
body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode()
for _ in range(2):
    req = urllib.request.Request("https://api.openai.com/v1/chat/completions", data=body,
        headers={"Content-Type": "application/json", "Authorization": "Bearer sk-test"})
    with urllib.request.urlopen(req, timeout=10) as r:
        print(r.status, r.headers["x-relay-cache"], json.load(r)["choices"][0]["message"]["content"])
"#;
    let proxy = format!("http://{}", relay.addr);
    let out = tokio::task::spawn_blocking(move || {
        let mut cmd = std::process::Command::new("python3");
        cmd.args(["-c", SCRIPT])
            .env("HTTPS_PROXY", &proxy)
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .env_remove("https_proxy");
        for (k, v) in vars {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "200 MISS Hello world\n200 HIT Hello world\n"
    );
    assert_eq!(mock.calls().get(), 1);
}

#[tokio::test]
async fn intercepted_streams_are_forwarded_and_replayed() {
    let (_origin, mock, relay, dir) = intercepting_setup("").await;
    let relay_ca = dir.path().join("ca").join("ca.pem");
    let body =
        r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let mut got = Vec::new();
    for want in ["MISS", "HIT"] {
        let req = Request::post(CHAT)
            .header("host", "api.openai.com")
            .header("content-type", "application/json")
            .header("authorization", "Bearer sk-test")
            .body(full(body))
            .unwrap();
        let p = within(via_proxy(
            relay.addr,
            "api.openai.com",
            443,
            roots_from_file(&relay_ca),
            req,
        ))
        .await
        .expect("streamed request through the proxy");
        assert_eq!(header(&p.response, "x-relay-cache"), Some(want));
        assert_eq!(
            header(&p.response, "content-type"),
            Some("text/event-stream")
        );
        got.push(text(p.response).await);
    }
    assert!(got[0].ends_with("data: [DONE]\n\n"), "{}", got[0]);
    assert_eq!(got[0], got[1], "the replay is the recorded stream");
    assert_eq!(got[0], common::mock::openai_sse("gpt-4o-mini").concat());
    assert_eq!(mock.calls().get(), 1);
}

#[tokio::test]
async fn shutdown_drains_intercepted_streams() {
    let (_origin, mock, mut relay, dir) = intercepting_setup("").await;
    let relay_ca = dir.path().join("ca").join("ca.pem");
    let body =
        r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"drain"}]}"#;
    let req = Request::post(CHAT)
        .header("host", "api.openai.com")
        .header("content-type", "application/json")
        .header("x-mock", "hold")
        .body(full(body))
        .unwrap();
    let p = within(via_proxy(
        relay.addr,
        "api.openai.com",
        443,
        roots_from_file(&relay_ca),
        req,
    ))
    .await
    .unwrap();
    let mut stream = p.response.into_body();
    let sse = common::mock::openai_sse("gpt-4o-mini");
    let first = read_at_least(&mut stream, sse[0].len()).await;

    let server = relay.take();
    server.shutdown();
    let stopped = tokio::spawn(server.wait());
    // The stream is held upstream, so the drain cannot finish (a bounded number of yields, no sleep).
    for _ in 0..200 {
        tokio::task::yield_now().await;
    }
    assert!(
        !stopped.is_finished(),
        "the server stopped with an intercepted stream in flight"
    );
    mock.release();
    let rest = read_to_end(&mut stream).await;
    assert_eq!(
        String::from_utf8([first, rest].concat()).unwrap(),
        sse.concat()
    );
    within(stopped).await.expect("server stops after the drain");
    assert_eq!(mock.cancelled().get(), 0);
}

#[tokio::test]
async fn intercepted_tunnels_speak_http2_by_alpn() {
    let (_origin, mock, relay, dir) = intercepting_setup("").await;
    let relay_ca = dir.path().join("ca").join("ca.pem");
    for want in ["MISS", "HIT"] {
        let req = Request::post(format!("https://api.openai.com{CHAT}"))
            .header("content-type", "application/json")
            .body(full(BODY))
            .unwrap();
        let resp = within(via_proxy_h2(
            relay.addr,
            "api.openai.com",
            443,
            roots_from_file(&relay_ca),
            req,
        ))
        .await
        .expect("HTTP/2 request through the proxy");
        assert_eq!(resp.version(), http::Version::HTTP_2);
        assert_eq!(resp.status(), 200);
        assert_eq!(header(&resp, "x-relay-cache"), Some(want));
        assert_eq!(
            json(resp).await["choices"][0]["message"]["content"],
            "Hello world"
        );
    }
    assert_eq!(mock.calls().get(), 1);
    assert_eq!(mock.last().uri, CHAT);
}
