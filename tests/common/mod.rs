//! Shared test harness: a mock upstream ([`mock`]), relay started in-process on port 0 against it, and
//! an HTTP client.
#![allow(dead_code)]

pub mod mock;
pub mod redis;
pub mod tls;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use relay::config::Env;
use relay::server::{ReloadEvent, ServeOptions, Server};

pub use mock::{Kind, Mock};

pub type Body = BoxBody<Bytes, std::io::Error>;

/// How to start relay in a test.
#[derive(Default)]
pub struct Opts {
    pub env: Env,
    pub watch: bool,
    pub offline: bool,
    pub clock: relay::clock::Clock,
    /// Where relay listens (default `127.0.0.1:0`).
    pub listen: Option<SocketAddr>,
}

/// Relay running in this process on 127.0.0.1 port 0 with a config file in a temp dir.
pub struct Relay {
    server: Option<Server>,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
}

impl Relay {
    /// Starts relay on `yaml` with an empty environment and no file watching.
    pub async fn start(yaml: &str) -> Relay {
        Relay::start_with(yaml, Env::empty(), false).await
    }

    /// Starts relay. The cache file goes in the temp dir; a config without a `cache:` section runs
    /// with the cache off (the proxy tests repeat identical requests on purpose).
    pub async fn start_with(yaml: &str, env: Env, watch: bool) -> Relay {
        Relay::start_full(yaml, env, watch, false).await
    }

    pub async fn start_full(yaml: &str, env: Env, watch: bool, offline: bool) -> Relay {
        Relay::start_opts(
            yaml,
            Opts {
                env,
                watch,
                offline,
                clock: Default::default(),
                listen: None,
            },
        )
        .await
    }

    pub async fn start_opts(yaml: &str, opts: Opts) -> Relay {
        let Opts {
            mut env,
            watch,
            offline,
            clock,
            listen,
        } = opts;
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(std::env::var("RELAY_LOG").unwrap_or_else(|_| "warn".into()))
            .try_init();
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("relay.yaml");
        std::fs::write(&config_path, yaml).unwrap();
        if env.get("RELAY_CACHE_PATH").is_none() {
            let path = dir.path().join("cache.redb");
            env = env.with("RELAY_CACHE_PATH", path.display().to_string());
        }
        if !yaml.contains("cache:") && env.get("RELAY_CACHE_ENABLED").is_none() {
            env = env.with("RELAY_CACHE_ENABLED", "false");
        }
        let server = Server::start(ServeOptions {
            config_path: Some(config_path.clone()),
            listen: Some(listen.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap())),
            env,
            watch_config: watch,
            offline,
            clock,
        })
        .await
        .expect("relay starts");
        Relay {
            addr: server.local_addr(),
            server: Some(server),
            dir,
            config_path,
        }
    }

    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("server running")
    }

    /// Takes the server out (to shut it down and wait).
    pub fn take(&mut self) -> Server {
        self.server.take().expect("server running")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Replaces the config file in place (truncate and write).
    pub fn write_config(&self, yaml: &str) {
        std::fs::write(&self.config_path, yaml).unwrap();
    }

    /// Replaces the config file the way many editors do: write a temp file, rename it over.
    pub fn rename_config(&self, yaml: &str) {
        let tmp = self.dir.path().join(".relay.yaml.swp");
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, &self.config_path).unwrap();
    }

    /// `/metrics` text.
    pub async fn metrics(&self) -> String {
        let resp = client().request(get(&self.url("/metrics"))).await.unwrap();
        text(resp).await
    }
}

/// Waits for the next reload result (panics after 10 s).
pub async fn next_reload(rx: &mut tokio::sync::broadcast::Receiver<ReloadEvent>) -> ReloadEvent {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a reload event within 10 s")
        .expect("reload channel open")
}

/// The `providers:` section pointing `openai` and `anthropic` at two mocks.
pub fn providers(openai: &Mock, anthropic: &Mock) -> String {
    format!(
        "providers:\n  - name: openai\n    kind: openai\n    base_url: {}\n  - name: anthropic\n    kind: anthropic\n    base_url: {}\n",
        openai.base_url(),
        anthropic.base_url()
    )
}

/// Two mocks (OpenAI-like and Anthropic-like) and relay in front of them with the default routes.
pub async fn setup(extra_yaml: &str) -> (Mock, Mock, Relay) {
    let openai = Mock::start("openai", Kind::OpenAi).await;
    let anthropic = Mock::start("anthropic", Kind::Anthropic).await;
    let relay = Relay::start(&format!("{}{}", providers(&openai, &anthropic), extra_yaml)).await;
    (openai, anthropic, relay)
}

pub fn client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|e: Infallible| match e {})
        .boxed()
}

pub fn get(url: &str) -> Request<Body> {
    Request::get(url).body(full(Bytes::new())).unwrap()
}

/// A JSON POST with the given body.
pub fn json_req(url: &str, body: impl Into<Bytes>) -> Request<Body> {
    Request::post(url)
        .header("content-type", "application/json")
        .body(full(body))
        .unwrap()
}

/// A whole answer: status, headers, body.
pub struct Answer {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

/// POSTs the JSON `body` to relay's `path` with extra `headers`; the whole answer.
pub async fn post_json(relay: &Relay, path: &str, body: &str, headers: &[(&str, &str)]) -> Answer {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    send(relay, "POST", path, &all, body).await
}

/// Sends `method path` to relay with `headers` and `body`; the whole answer.
pub async fn send(
    relay: &Relay,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let mut req = Request::builder().method(method).uri(relay.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = within(client().request(req.body(full(body.to_string())).unwrap()))
        .await
        .unwrap();
    Answer {
        status: resp.status(),
        headers: resp.headers().clone(),
        body: bytes(resp).await,
    }
}

/// A body sent chunked (no `Content-Length`): `n` chunks of `size` bytes.
pub fn chunked(n: usize, size: usize) -> Body {
    let chunks: Vec<Result<http_body::Frame<Bytes>, std::io::Error>> = (0..n)
        .map(|_| Ok(http_body::Frame::data(Bytes::from(vec![b'x'; size]))))
        .collect();
    http_body_util::StreamBody::new(futures_util::stream::iter(chunks)).boxed()
}

/// Names of the files in `dir` that start with `prefix` (moved-aside stores, say).
pub fn files_starting(dir: &std::path::Path, prefix: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

pub async fn bytes(resp: Response<Incoming>) -> Bytes {
    resp.into_body()
        .collect()
        .await
        .expect("whole body")
        .to_bytes()
}

pub async fn text(resp: Response<Incoming>) -> String {
    String::from_utf8(bytes(resp).await.to_vec()).expect("utf-8 body")
}

pub async fn json(resp: Response<Incoming>) -> serde_json::Value {
    serde_json::from_slice(&bytes(resp).await).expect("JSON body")
}

/// The next data frame of a response body (skipping trailers); `None` at the end.
pub async fn next_chunk(body: &mut Incoming) -> Option<Bytes> {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("a frame within 10 s")?
            .expect("body frame");
        if let Ok(data) = frame.into_data() {
            return Some(data);
        }
    }
}

/// Awaits `f`, failing the test after 10 s instead of hanging (a bound, not a synchronisation).
pub async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("finished within 10 s")
}

/// The value of the sample `name{labels}` in Prometheus text, labels matched as a set.
pub fn metric(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (n, rest) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if n != name {
                return None;
            }
            let have: Vec<&str> = rest.split(',').filter(|s| !s.is_empty()).collect();
            let want: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            (have.len() == want.len() && want.iter().all(|w| have.contains(&w.as_str())))
                .then(|| value.parse().unwrap())
        })
}

/// The sum of the series of `name` that carry at least `labels` (others may be there too:
/// `relay_circuit_state{provider}` over each endpoint); `None` when none does.
pub fn metric_sum(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            let have: Vec<&str> = rest.trim_end_matches('}').split(',').collect();
            (n == name && want.iter().all(|w| have.contains(&w.as_str())))
                .then(|| value.parse::<f64>().unwrap())
        })
        .reduce(|a, b| a + b)
}

/// Reads the body until it holds at least `want` bytes.
pub async fn read_at_least(body: &mut Incoming, want: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < want {
        let chunk = next_chunk(body).await.expect("more data");
        got.extend_from_slice(&chunk);
    }
    got
}

/// Reads the rest of the body to its clean end.
pub async fn read_to_end(body: &mut Incoming) -> Vec<u8> {
    let mut got = Vec::new();
    while let Some(chunk) = next_chunk(body).await {
        got.extend_from_slice(&chunk);
    }
    got
}

/// Runs `relay cache <args> --server <relay>` (the running server holds the redb file): success,
/// stdout, stderr.
pub async fn cache_cli(relay: &Relay, args: &[&str]) -> (bool, String, String) {
    let out = within(
        tokio::process::Command::new(env!("CARGO_BIN_EXE_relay"))
            .arg("cache")
            .args(args)
            .arg("--server")
            .arg(relay.url(""))
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
