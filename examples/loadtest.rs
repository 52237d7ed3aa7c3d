//! Load harness: the same requests directly against a local mock upstream and through relay, in one
//! run, so the figures are ratios measured under the same conditions.
//!
//! ```text
//! cargo run --release --example loadtest               # default: 5 s per phase
//! cargo run --release --example loadtest -- --secs 10 --rate 1000 --conns 32
//! cargo run --release --example loadtest -- --upstream-ms 5  # an upstream that takes 5 ms
//! ```
//!
//! Phases, each for non-streaming JSON and for SSE streams (20 events):
//! - **fixed rate** (open loop, default 1,000 req/s): latency from each request's dispatch to its last
//!   body byte; p50 / p99, direct vs relay, and the difference (what relay adds);
//! - **saturation** (closed loop, `--conns` connections): requests per second, direct vs relay.
//!
//! Four targets: **direct** (the mock), **relay** forwarding (cache on, every request sent with
//! `Cache-Control: no-cache`, so each one goes upstream and its answer is recorded and stored: the
//! miss path), **relay hit** (the same request answered from the cache), and a **bare hyper proxy**
//! (a hyper server forwarding on a pooled hyper-util client and nothing else, on relay's runtime):
//! the floor any proxy built on these parts starts from, so relay's own cost is relay / bare.
//! **relay new requests** asks a question never asked before on every request (a counter in the
//! message), sent without cache headers: relay computes its cache key, looks it up, misses,
//! forwards, and stores the answer, which is what the default config does for every new request.
//!
//! **Rate limiter** rows (JSON, fixed rate): the relay forwarding path with the limiter off, with a
//! per-key limit far above the offered load in process, and the same limit shared through Redis
//! (built with `--features redis` and when a `redis-server` can be spawned), and what each adds.
//!
//! relay runs in-process with its default config (cache on, in a temp dir; cost tracking on, the
//! usage ledger beside the cache; request log on, written through the non-blocking writer to a
//! sink), its own 2-thread runtime; the mock upstream and the load generator have one thread each.
//! All of it shares the machine's cores, as a sidecar would.
//!
//! A second relay with `cost.enabled: false` (same runtime) gives the **cost tracking** rows: the
//! fixed-rate latency with cost on minus cost off, for answers whose usage comes from the provider
//! (the mock honours `stream_options.include_usage`, which relay injects into streamed requests).

/// The allocator `relay serve` runs with (see `src/main.rs`), so the harness measures the same.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use relay::config::Env;
use relay::server::{ServeOptions, Server};

#[cfg(feature = "redis")]
#[path = "../tests/common/redis.rs"]
mod redis_server;

const CHAT_JSON: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"The capital of France is Paris. It has been the capital for centuries and is known for the Eiffel Tower."},"finish_reason":"stop"}],"usage":{"prompt_tokens":14,"completion_tokens":24,"total_tokens":38}}"#;
const SSE_EVENTS: usize = 20;
const USAGE_CHUNK: &[u8] = b"data: {\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":14,\"completion_tokens\":20,\"total_tokens\":34}}\n\n";
const REQUEST_JSON: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"What is the capital of France?"}],"temperature":0}"#;
const REQUEST_SSE: &str = r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"What is the capital of France?"}],"temperature":0}"#;

struct Args {
    secs: u64,
    rate: u64,
    conns: usize,
    /// `--watch 1`: a dashboard-like subscriber reads the live feed during the run (capture on).
    watch: bool,
    /// `--only 1..8`: one saturation phase alone for `--secs` (for `perf record`): 1 direct JSON,
    /// 2 relay JSON, 3 relay hit JSON, 4 direct SSE, 5 relay SSE, 6 relay hit SSE, 7 bare proxy
    /// JSON, 8 bare proxy SSE, 9 relay new requests JSON; `11..19`: the same targets at the fixed
    /// rate.
    only: u64,
    /// `--upstream-ms N`: the mock answers N ms after a request arrives (a model's time to first
    /// token; 0, the default, answers at once).
    upstream_ms: u64,
}

fn args() -> Args {
    let mut a = Args {
        secs: 5,
        rate: 1000,
        conns: 32,
        watch: false,
        only: 0,
        upstream_ms: 0,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        let value = pair.get(1).and_then(|v| v.parse::<u64>().ok());
        match (pair[0].as_str(), value) {
            ("--secs", Some(v)) => a.secs = v,
            ("--rate", Some(v)) => a.rate = v,
            ("--conns", Some(v)) => a.conns = v as usize,
            ("--watch", Some(v)) => a.watch = v != 0,
            ("--only", Some(v @ (1..=9 | 11..=19))) => a.only = v,
            ("--upstream-ms", Some(v)) => a.upstream_ms = v,
            _ => {
                eprintln!(
                    "usage: loadtest [--secs N] [--rate REQ_PER_S] [--conns N] [--watch 0|1] [--only 1..9|11..19] [--upstream-ms N]"
                );
                std::process::exit(2);
            }
        }
    }
    a
}

/// Starts one more relay on `relay_rt` with the default config shape plus `extra` YAML.
fn start_relay(
    relay_rt: &tokio::runtime::Runtime,
    mock_addr: SocketAddr,
    dir: &std::path::Path,
    name: &str,
    extra: &str,
) -> Server {
    // A directory of its own: the usage ledger goes beside the cache file, and two relays cannot
    // share one (the second would run without a ledger).
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("relay.yaml");
    std::fs::write(
        &cfg,
        format!(
            "providers:\n  - {{name: openai, kind: openai, base_url: 'http://{mock_addr}/v1'}}\n  - {{name: anthropic, kind: anthropic, base_url: 'http://{mock_addr}/v1'}}\ncache:\n  path: '{}'\n{extra}",
            dir.join("cache.redb").display()
        ),
    )
    .unwrap();
    relay_rt.block_on(async {
        Server::start(ServeOptions {
            config_path: Some(cfg),
            listen: Some("127.0.0.1:0".parse().unwrap()),
            env: Env::empty(),
            watch_config: false,
            offline: false,
            clock: Default::default(),
        })
        .await
        .expect("relay starts")
    })
}

/// A per-key limit far above any offered load: every request is checked, none refused.
const LIMIT_YAML: &str =
    "ratelimit: {rules: [{scope: key, requests_per_second: 1000000000, burst: 1000000000}]}\n";

/// JSON at the fixed rate through relay with the limiter off, in process, and on Redis.
fn limiter_rows(
    args: &Args,
    relay_rt: &tokio::runtime::Runtime,
    load_rt: &tokio::runtime::Runtime,
    c: &HttpClient,
    mock_addr: SocketAddr,
    dir: &std::path::Path,
    off: &Target,
) {
    let target = |s: &Server| Target {
        fresh: false,
        url: format!("http://{}/v1/chat/completions", s.local_addr())
            .parse()
            .unwrap(),
        headers: MISS,
    };
    #[cfg_attr(not(feature = "redis"), allow(unused_mut))]
    let mut servers = vec![(
        "limiter in process",
        start_relay(relay_rt, mock_addr, dir, "limited", LIMIT_YAML),
    )];
    #[cfg(feature = "redis")]
    let _redis = match std::process::Command::new("redis-server")
        .arg("--version")
        .output()
    {
        Ok(_) => {
            let r = redis_server::RedisServer::start();
            let yaml = format!(
                "redis: {{enabled: true, address: '127.0.0.1:{}'}}\n{}",
                r.port(),
                LIMIT_YAML.replace("rules:", "backend: redis, rules:")
            );
            servers.push((
                "limiter on Redis",
                start_relay(relay_rt, mock_addr, dir, "limited-redis", &yaml),
            ));
            Some(r)
        }
        Err(_) => {
            println!("(no redis-server: Redis limiter row skipped)");
            None
        }
    };
    println!();
    println!("| workload | relay | p50 | p99 | added by the limiter (p50, p99) | errors |");
    println!("|---|---|---|---|---|---|");
    let body = REQUEST_JSON;
    load_rt.block_on(saturate(c.clone(), off.clone(), body, args.conns, 1));
    let (base, be) = load_rt.block_on(fixed_rate(
        c.clone(),
        off.clone(),
        body,
        args.rate,
        args.secs,
    ));
    let us = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q);
    println!(
        "| JSON @ {} req/s | limiter off | {} µs | {} µs | | {be} |",
        args.rate,
        us(&base, 0.5),
        us(&base, 0.99)
    );
    for (name, server) in &servers {
        let t = target(server);
        load_rt.block_on(saturate(c.clone(), t.clone(), body, args.conns, 1));
        let (h, e) = load_rt.block_on(fixed_rate(c.clone(), t, body, args.rate, args.secs));
        println!(
            "| JSON @ {} req/s | {name} | {} µs | {} µs | {} µs, {} µs | {e} |",
            args.rate,
            us(&h, 0.5),
            us(&h, 0.99),
            us(&h, 0.5) as i64 - us(&base, 0.5) as i64,
            us(&h, 0.99) as i64 - us(&base, 0.99) as i64,
        );
        let rejected: u64 = server
            .metrics()
            .ratelimit_rejections
            .with_label_values(&["key", "key"])
            .get();
        assert_eq!(rejected, 0, "{name}: the limit is above the load");
    }
    for (_, server) in servers {
        server.shutdown();
        relay_rt.block_on(server.wait());
    }
}

/// A canned upstream: JSON chat completion, or an SSE stream of `SSE_EVENTS` chunks, each its own
/// frame (as a real generation arrives), then `[DONE]`; answered `delay` after the request.
async fn upstream(listener: tokio::net::TcpListener, delay: Duration) {
    let chunks: Arc<Vec<Bytes>> = Arc::new(
        (0..SSE_EVENTS)
            .map(|i| {
                Bytes::from(format!(
                    "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"token{i} \"}},\"finish_reason\":null}}]}}\n\n"
                ))
            })
            .chain(std::iter::once(Bytes::from_static(b"data: [DONE]\n\n")))
            .collect(),
    );
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let chunks = chunks.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let chunks = chunks.clone();
                async move {
                    let body = req
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let streaming = body.windows(13).any(|w| w == b"\"stream\":true");
                    // Like OpenAI: a usage-only chunk before [DONE] when asked for.
                    let usage = body.windows(20).any(|w| w == b"\"include_usage\":true");
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    let resp = if streaming {
                        let n = chunks.len();
                        let frames =
                            futures_util::stream::iter((0..n + usize::from(usage)).map(move |i| {
                                let chunk = match (usage, i) {
                                    (true, i) if i == n - 1 => Bytes::from_static(USAGE_CHUNK),
                                    (true, i) if i == n => chunks[n - 1].clone(),
                                    _ => chunks[i].clone(),
                                };
                                Ok::<_, Infallible>(Frame::data(chunk))
                            }));
                        Response::builder()
                            .header("content-type", "text/event-stream")
                            .body(http_body_util::Either::Right(StreamBody::new(frames)))
                    } else {
                        Response::builder()
                            .header("content-type", "application/json")
                            .body(http_body_util::Either::Left(Full::new(Bytes::from_static(
                                CHAT_JSON.as_bytes(),
                            ))))
                    };
                    Ok::<_, Infallible>(resp.expect("valid response"))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(4096)
        .build(http)
}

/// The floor for any proxy built on the same parts: a hyper server that forwards each request to
/// the mock on a pooled hyper-util client and streams the answer back, and nothing else (no
/// routing, cache, cost, limits, metrics or log). Runs on relay's runtime. Returns its address.
async fn bare_proxy(upstream: SocketAddr) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(4096)
        .build(http);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let client = client.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let client = client.clone();
                    async move {
                        let (mut parts, body) = req.into_parts();
                        let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                        parts.uri = format!("http://{upstream}{pq}").parse().expect("valid URI");
                        parts.headers.remove(http::header::HOST);
                        client.request(Request::from_parts(parts, body)).await
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// Where a request goes and how.
#[derive(Clone)]
struct Target {
    url: http::Uri,
    /// Extra request headers.
    headers: &'static [(&'static str, &'static str)],
    /// Each request asks something never asked before (a counter in the question), so relay
    /// computes a new cache key, misses, forwards and stores: what a new request costs by default.
    fresh: bool,
}

/// Numbers the questions of `fresh` targets.
static QUESTION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

const MISS: &[(&str, &str)] = &[("cache-control", "no-cache")];

/// One request, body read to the end. Returns false on any failure.
async fn one(client: &HttpClient, target: &Target, body: &'static str) -> bool {
    let mut req = Request::post(target.url.clone())
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-bench");
    for (k, v) in target.headers {
        req = req.header(*k, *v);
    }
    let body = if target.fresh {
        let n = QUESTION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Bytes::from(body.replacen("France?", &format!("France? ({n})"), 1))
    } else {
        Bytes::from_static(body.as_bytes())
    };
    let req = req.body(Full::new(body)).expect("valid request");
    match client.request(req).await {
        Ok(resp) if resp.status().is_success() => resp.into_body().collect().await.is_ok(),
        _ => false,
    }
}

/// Open loop at `rate` req/s for `secs`: latency from dispatch to last byte, in µs.
async fn fixed_rate(
    client: HttpClient,
    url: Target,
    body: &'static str,
    rate: u64,
    secs: u64,
) -> (Histogram<u64>, u64) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let period = Duration::from_nanos(1_000_000_000 / rate);
    let start = tokio::time::Instant::now();
    let total = rate * secs;
    for i in 0..total {
        let scheduled = start + period * i as u32;
        tokio::time::sleep_until(scheduled).await;
        let (client, url, tx) = (client.clone(), url.clone(), tx.clone());
        tokio::spawn(async move {
            // Timed from the real dispatch: tokio's timer has 1 ms granularity, which would
            // otherwise swamp microsecond differences.
            let sent = Instant::now();
            let ok = one(&client, &url, body).await;
            let _ = tx.send((ok, sent.elapsed()));
        });
    }
    drop(tx);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let mut errors = 0;
    while let Some((ok, latency)) = rx.recv().await {
        if ok {
            hist.record(latency.as_micros().max(1) as u64)
                .expect("in range");
        } else {
            errors += 1;
        }
    }
    (hist, errors)
}

/// Closed loop with `conns` workers for `secs`: completed requests per second.
async fn saturate(
    client: HttpClient,
    url: Target,
    body: &'static str,
    conns: usize,
    secs: u64,
) -> (f64, u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut err) = (0u64, 0u64);
            while Instant::now() < deadline {
                if one(&client, &url, body).await {
                    ok += 1;
                } else {
                    err += 1;
                }
            }
            (ok, err)
        }));
    }
    let (mut ok, mut err) = (0, 0);
    for t in tasks {
        let (o, e) = t.await.expect("worker");
        ok += o;
        err += e;
    }
    (ok as f64 / started.elapsed().as_secs_f64(), err)
}

fn main() {
    let args = args();
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The default config logs every request: keep that cost (`relay serve`'s subscriber, its
    // default format, no colours as when stdout is not a terminal), send the lines nowhere.
    let _guard = relay::logging::init_to(relay::logging::LogFormat::Pretty, false, std::io::sink());

    // Named threads, so `perf report --comm relay` shows relay alone.
    let mock_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("mock")
        .enable_all()
        .build()
        .unwrap();
    let workers = std::env::var("RELAY_BENCH_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let relay_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("relay")
        .enable_all()
        .build()
        .unwrap();
    let load_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("load")
        .enable_all()
        .build()
        .unwrap();

    let mock_addr: SocketAddr = mock_rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(upstream(l, Duration::from_millis(args.upstream_ms)));
        addr
    });
    let dir = std::env::temp_dir().join(format!("relay-loadtest-{}", std::process::id()));
    // Extra YAML for experiments (e.g. `server: {request_log: false}`).
    let extra = std::env::var("RELAY_BENCH_EXTRA").unwrap_or_default();
    let server = start_relay(&relay_rt, mock_addr, &dir, "main", &extra);
    // Like `relay tui`: a thread that drains the feed 15 times a second.
    let watcher = args.watch.then(|| {
        let mut sub = server.events().subscribe();
        std::thread::spawn(move || loop {
            loop {
                match sub.try_next() {
                    relay::events::Next::Event(_) | relay::events::Next::Lagged(_) => {}
                    relay::events::Next::Empty => break,
                    relay::events::Next::Closed => return,
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(66));
        })
    });
    // The same relay with cost tracking off, for the cost rows.
    let server_off = start_relay(
        &relay_rt,
        mock_addr,
        &dir,
        "cost-off",
        "cost:\n  enabled: false\n",
    );
    let at = |addr: SocketAddr, headers, fresh| Target {
        url: format!("http://{addr}/v1/chat/completions")
            .parse()
            .unwrap(),
        headers,
        fresh,
    };
    let direct = at(mock_addr, &[], false);
    let proxied = at(server.local_addr(), MISS, false);
    let hit = at(server.local_addr(), &[], false);
    let fresh = at(server.local_addr(), &[], true);
    let bare = at(relay_rt.block_on(bare_proxy(mock_addr)), &[], false);
    let cost_off = at(server_off.local_addr(), MISS, false);

    if args.only != 0 {
        let c = load_rt.block_on(async { client() });
        let phase = args.only % 10;
        let body = if phase <= 3 || phase == 7 || phase == 9 {
            REQUEST_JSON
        } else {
            REQUEST_SSE
        };
        let target = match phase {
            7 | 8 => &bare,
            9 => &fresh,
            _ => [&direct, &proxied, &hit][(phase as usize - 1) % 3],
        };
        load_rt.block_on(saturate(c.clone(), target.clone(), body, args.conns, 1));
        if args.only > 10 {
            let (h, errors) =
                load_rt.block_on(fixed_rate(c, target.clone(), body, args.rate, args.secs));
            println!(
                "phase {}: p50 {} µs, p99 {} µs, {errors} errors",
                args.only,
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.99)
            );
        } else {
            let (rps, errors) =
                load_rt.block_on(saturate(c, target.clone(), body, args.conns, args.secs));
            println!("phase {}: {rps:.0} req/s, {errors} errors", args.only);
        }
        stop(&relay_rt, [server, server_off], &dir);
        return;
    }
    println!(
        "relay loadtest: {} s per phase, fixed rate {} req/s, saturation {} connections, SSE {} events, upstream answers after {} ms, {} cores",
        args.secs,
        args.rate,
        args.conns,
        SSE_EVENTS,
        args.upstream_ms,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    println!();
    println!("| workload | target | p50 | p99 | errors |");
    println!("|---|---|---|---|---|");
    let c = load_rt.block_on(async { client() });
    for (name, body) in [("JSON", REQUEST_JSON), ("SSE", REQUEST_SSE)] {
        // Each target warmed (connections, pools, allocators), then measured at the fixed rate.
        let measure = |t: &Target| {
            load_rt.block_on(saturate(c.clone(), t.clone(), body, args.conns, 1));
            load_rt.block_on(fixed_rate(c.clone(), t.clone(), body, args.rate, args.secs))
        };
        let d = measure(&direct);
        let r = measure(&proxied);
        let b = measure(&bare);
        let h = measure(&hit);
        let n = measure(&fresh);
        let o = measure(&cost_off);
        let workload = format!("{name} @ {} req/s", args.rate);
        let row = |target: &str, (h, errors): &(Histogram<u64>, u64)| {
            println!(
                "| {workload} | {target} | {} µs | {} µs | {errors} |",
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.99)
            );
        };
        let diff =
            |target: &str, (a, _): &(Histogram<u64>, u64), (b, _): &(Histogram<u64>, u64)| {
                let q = |q| a.value_at_quantile(q) as i64 - b.value_at_quantile(q) as i64;
                println!(
                    "| {workload} | {target} | {} µs | {} µs | |",
                    q(0.5),
                    q(0.99)
                );
            };
        row("direct", &d);
        row("relay", &r);
        diff("**added by relay**", &r, &d);
        row("bare hyper proxy", &b);
        diff("added by a bare hyper proxy", &b, &d);
        row("relay, cache hit", &h);
        row(
            "relay, new request (key computed, lookup misses, stored)",
            &n,
        );
        row("relay, cost tracking off", &o);
        diff("**cost tracking adds**", &r, &o);
    }
    println!();
    println!("| workload | direct req/s | bare proxy req/s | bare / direct | relay req/s | relay / direct | relay / bare | relay new requests req/s | new / bare | relay hit req/s | hit / direct | errors (direct, bare, relay, new, hit) |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (name, body) in [("JSON", REQUEST_JSON), ("SSE", REQUEST_SSE)] {
        let measure = |t: &Target| {
            load_rt.block_on(saturate(c.clone(), t.clone(), body, args.conns, args.secs))
        };
        let (d, de) = measure(&direct);
        let (r, re) = measure(&proxied);
        let (h, he) = measure(&hit);
        let (b, be) = measure(&bare);
        let (n, ne) = measure(&fresh);
        println!(
            "| {name}, {} conns | {d:.0} | {b:.0} | {:.0}% | {r:.0} | {:.0}% | {:.0}% | {n:.0} | {:.0}% | {h:.0} | {:.2}× | {de}, {be}, {re}, {ne}, {he} |",
            args.conns,
            100.0 * b / d,
            100.0 * r / d,
            100.0 * r / b,
            100.0 * n / b,
            h / d
        );
    }
    limiter_rows(&args, &relay_rt, &load_rt, &c, mock_addr, &dir, &proxied);

    let overhead = server.metrics().overhead.get_sample_sum()
        / server.metrics().overhead.get_sample_count().max(1) as f64;
    println!();
    println!(
        "relay_overhead_seconds mean over the run: {:.1} µs",
        overhead * 1e6
    );
    if watcher.is_some() {
        println!(
            "live feed watched during the run (as by relay tui); events dropped: {}",
            server.events().dropped()
        );
    }
    stop(&relay_rt, [server, server_off], &dir);
    if let Some(w) = watcher {
        let _ = w.join();
    }
}

/// Shuts the relays down, waits for them, and removes the run's directory.
fn stop(relay_rt: &tokio::runtime::Runtime, servers: [Server; 2], dir: &std::path::Path) {
    for s in servers {
        s.shutdown();
        relay_rt.block_on(s.wait());
    }
    let _ = std::fs::remove_dir_all(dir);
}
