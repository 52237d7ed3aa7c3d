//! The server: binds, accepts, serves HTTP/1.1 and h2c, reloads config, shuts down gracefully.
//!
//! [`Server::start`] is what `relay serve` and the tests call: it loads the config, binds (port 0 works),
//! starts the accept loop and the config watcher, and returns at once with the bound address. Shutdown
//! stops accepting, lets in-flight requests (streams, WebSockets and CONNECT tunnels included)
//! finish for up to `server.shutdown_timeout`, then drops what is left.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

use super::cache::Cache;
use super::conn;
use super::pipeline::{Runtime, State};
use crate::cache::{self, Store};
use crate::clock::Clock;
use crate::config::watch::{ConfigWatcher, DEFAULT_DEBOUNCE};
use crate::config::{CacheBackend, CacheMode, Config, ConfigError, Env};
use crate::events::{self, Events};
use crate::metrics::Metrics;

/// How to start a server.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// Config file; `None` uses `configs/relay.yaml` when it exists, else the built-in defaults.
    pub config_path: Option<PathBuf>,
    /// Overrides `server.listen` (e.g. `127.0.0.1:0` in tests).
    pub listen: Option<SocketAddr>,
    /// Environment snapshot for overrides and `api_key_env`.
    pub env: Env,
    /// Watch the config file and reload on change (default on for `relay serve`).
    pub watch_config: bool,
    /// `relay serve --offline`: cache mode `offline` whatever the config says (reloads included).
    pub offline: bool,
    /// Where the cache's "now" comes from (TTL, `age`). Default: the system clock.
    pub clock: Clock,
}

/// The result of one config reload attempt, broadcast to [`Server::reloads`] subscribers.
#[derive(Debug, Clone, PartialEq)]
pub enum ReloadEvent {
    /// The new config is live.
    Applied,
    /// The new config was invalid; the message names file and key path. The old config stays live.
    Rejected(String),
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cache: {0}")]
    Cache(#[from] crate::cache::StoreError),
    #[error("auth: {0}")]
    Keys(#[from] crate::keys::KeyError),
    #[error("server.tls: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot watch {path}: {source}")]
    Watch {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
}

/// A running server.
pub struct Server {
    addr: SocketAddr,
    state: Arc<State>,
    shutdown: watch::Sender<bool>,
    reloads: broadcast::Sender<ReloadEvent>,
    accept: JoinHandle<()>,
    watcher: Option<JoinHandle<()>>,
}

impl Server {
    /// Loads the config, binds, and starts serving in the background.
    pub async fn start(opts: ServeOptions) -> Result<Server, StartError> {
        let config = prepare(
            Config::load_or_default(opts.config_path.as_deref(), &opts.env)?,
            opts.offline,
        );
        for w in &config.warnings {
            tracing::warn!("{w}");
        }
        let addr = opts.listen.unwrap_or(config.server.listen);
        config.exposure(addr)?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| StartError::Bind { addr, source })?;
        let source = config.source.clone();
        let tls_acceptor = {
            let config = config.clone();
            tokio::task::spawn_blocking(move || crate::tls::acceptor(&config))
                .await
                .expect("TLS setup does not panic")?
        };
        // The price data is decoded once (about 60 ms), off the async workers.
        tokio::task::spawn_blocking(crate::cost::prices::warm)
            .await
            .expect("the bundled price data decodes");
        let metrics = Arc::new(Metrics::new());
        let cache = if config.cache.enabled {
            Some(Arc::new(Cache::new(
                open_store(&config, opts.clock.clone(), &metrics).await?,
                opts.clock.clone(),
            )))
        } else {
            None
        };
        let cost =
            crate::cost::Accounting::start(&config, opts.clock.clone(), metrics.clone()).await;
        let events = Arc::new(Events::new(
            events::DEFAULT_CAPACITY,
            metrics.events_dropped.clone(),
        ));
        let max_buffered = config.server.max_buffered_bytes;
        let metrics_gauge = metrics.buffered_bytes.clone();
        let state = Arc::new(State {
            runtime: ArcSwap::from_pointee(Runtime::new(config, None, &metrics)),
            metrics,
            cache,
            cost,
            events,
            held: crate::proxy::held::HeldConnections::new(),
            bodies: crate::proxy::client_body::BodyBudget::new(max_buffered, metrics_gauge),
            keys: Default::default(),
        });
        if state.runtime.load().config.auth.enabled {
            // Without its keys, relay would let nobody in: a store that does not open stops it.
            let keys = state.keys.open(&state.runtime.load().config).await?;
            tracing::info!(keys = keys.ring.records().len(), store = %keys.store().describe(), "auth on: callers present relay keys");
        }
        let (shutdown, shutdown_rx) = watch::channel(false);
        let forward = Arc::new(crate::proxy::forward_proxy::Forward::new(
            crate::tls::ca_dir(&state.runtime.load().config),
            addr,
            shutdown_rx.clone(),
        ));
        let (reloads, _) = broadcast::channel(16);

        let watcher = match (opts.watch_config, source) {
            (true, Some(path)) => {
                let w = ConfigWatcher::new(&path, DEFAULT_DEBOUNCE).map_err(|source| {
                    StartError::Watch {
                        path: path.clone(),
                        source,
                    }
                })?;
                Some(tokio::spawn(reload_loop(
                    addr,
                    w,
                    path,
                    opts.env.clone(),
                    opts.offline,
                    state.clone(),
                    reloads.clone(),
                )))
            }
            _ => None,
        };
        let https = tls_acceptor.is_some();
        let accept = tokio::spawn(accept_loop(
            listener,
            state.clone(),
            shutdown_rx,
            forward,
            tls_acceptor,
        ));
        tracing::info!(%addr, https, "relay listening");
        Ok(Server {
            addr,
            state,
            shutdown,
            reloads,
            accept,
            watcher,
        })
    }

    /// The bound address (the real port when started on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Subscribes to config reload results.
    pub fn reloads(&self) -> broadcast::Receiver<ReloadEvent> {
        self.reloads.subscribe()
    }

    /// The config currently live.
    pub fn config(&self) -> Arc<Runtime> {
        self.state.runtime.load_full()
    }

    /// The server's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.state.metrics
    }

    /// The server's metrics, shared (for readers that outlive a borrow, like the TUI's poller).
    pub fn metrics_shared(&self) -> Arc<Metrics> {
        self.state.metrics.clone()
    }

    /// The server's cost accounting (ledger, budgets).
    pub fn cost(&self) -> &Arc<crate::cost::Accounting> {
        &self.state.cost
    }

    /// The live request feed (what `relay tui` shows).
    pub fn events(&self) -> &Arc<Events> {
        &self.state.events
    }

    /// Begins a graceful shutdown: stop accepting, drain in-flight requests.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
        // `/relay/events` streams never end on their own.
        self.state.events.close();
    }

    /// Waits until the server has stopped (after [`Server::shutdown`]).
    pub async fn wait(self) {
        if let Some(w) = &self.watcher {
            w.abort();
        }
        let _ = self.accept.await;
    }
}

/// How long a client has to finish the TLS handshake (`server.tls`).
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// One open client connection: its slot under `server.max_connections` and its place in
/// `relay_connections_open`, both given back when it closes.
struct Open {
    _slot: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Open {
    fn new(slot: OwnedSemaphorePermit, metrics: &Arc<Metrics>) -> Open {
        metrics.connections.inc();
        Open {
            _slot: slot,
            metrics: metrics.clone(),
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.metrics.connections.dec();
    }
}

/// A connection relay closes itself (idle, or its headers too slow).
fn closed(metrics: &Metrics, why: conn::Expired) {
    tracing::debug!(reason = why.as_str(), "closing a client connection");
    metrics
        .connections_closed
        .with_label_values(&[why.as_str()])
        .inc();
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
    forward: Arc<crate::proxy::forward_proxy::Forward>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let (max_connections, max_header_bytes) = {
        let rt = state.runtime.load();
        let s = &rt.config.server;
        (s.max_connections, s.max_header_bytes)
    };
    let builder = conn::http_builder(max_header_bytes);
    let graceful = GracefulShutdown::new();
    let mut conns = JoinSet::new();
    let slots = Arc::new(Semaphore::new(max_connections));
    let mut at_cap = false;
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                at_cap = false;
                slot
            }
            Err(_) => {
                state.metrics.connections_at_cap.inc();
                if !at_cap {
                    at_cap = true;
                    tracing::warn!(
                        max_connections,
                        "server.max_connections are open; new connections wait until one closes"
                    );
                }
                tokio::select! {
                    slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
                    _ = shutdown.changed() => break,
                }
            }
        };
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: keep serving, do not spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let watch = conn::Watch::new(conn::Timers::of(&state.runtime.load().config.server));
                let stream = conn::WatchedIo::new(stream, watch.clone());
                let open = Open::new(slot, &state.metrics);
                let (state, forward) = (state.clone(), forward.clone());
                let service_watch = watch.clone();
                // The forward proxy (CONNECT, absolute-form) first; it hands the rest to the pipeline.
                let svc = service_fn(move |req| {
                    let active = service_watch.begin();
                    let answer = crate::proxy::forward_proxy::handle(forward.clone(), state.clone(), peer, req);
                    async move {
                        let resp = answer.await?;
                        Ok::<_, std::convert::Infallible>(resp.map(|b| conn::Tracked::new(b, active)))
                    }
                });
                let metrics = open.metrics.clone();
                if let Some(tls) = &tls {
                    // HTTPS: the handshake runs in the connection's task, never in this loop.
                    let (tls, builder, watcher) = (tls.clone(), builder.clone(), graceful.watcher());
                    conns.spawn(async move {
                        let _open = open;
                        let stream = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, %peer, "TLS handshake failed");
                                return;
                            }
                            Err(_) => return,
                        };
                        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                        tokio::select! {
                            r = watcher.watch(conn.into_owned()) => if let Err(e) = r {
                                tracing::debug!(error = %e, "connection ended with an error");
                            },
                            why = watch.expired() => closed(&metrics, why),
                        }
                    });
                    continue;
                }
                let conn = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .into_owned();
                let conn = graceful.watch(conn);
                conns.spawn(async move {
                    let _open = open;
                    tokio::select! {
                        r = conn => if let Err(e) = r {
                            tracing::debug!(error = %e, "connection ended with an error");
                        },
                        why = watch.expired() => closed(&metrics, why),
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    let timeout = state.runtime.load().config.server.shutdown_timeout;
    let inflight = state.metrics.inflight.get();
    let held = state.held.open();
    tracing::info!(inflight, held, timeout = %humantime::format_duration(timeout), "shutting down: draining");
    // Connections taken over from the server (WebSockets, CONNECT tunnels) drain within the same
    // limit.
    let drained = async {
        graceful.shutdown().await;
        state.held.drained().await;
    };
    if tokio::time::timeout(timeout, drained).await.is_err() {
        tracing::warn!(
            remaining = state.metrics.inflight.get(),
            held = state.held.open(),
            "shutdown timeout reached; dropping the requests and connections still open"
        );
    }
    state.held.cut();
    conns.shutdown().await;
    state.cost.close().await;
    if let Some(cache) = &state.cache {
        if let Err(e) = cache.store().close().await {
            tracing::warn!(error = %e, "closing the cache store");
        }
    }
    tracing::info!("relay stopped");
}

/// Applies the command line's `--offline` to a loaded config.
fn prepare(mut config: Config, offline: bool) -> Config {
    if offline {
        config.cache.enabled = true;
        config.cache.mode = CacheMode::Offline;
    }
    config
}

/// Opens the configured cache store. With `cache.backend: redis`, the local redb file is opened
/// too, as the net under Redis: it serves while Redis is unreachable (at start, or down or hung
/// later) and relay moves back to Redis by itself ([`cache::fallback`]).
async fn open_store(
    config: &Config,
    clock: Clock,
    metrics: &Arc<Metrics>,
) -> Result<Arc<dyn Store>, StartError> {
    if config.cache.backend != CacheBackend::Redis {
        return Ok(cache::open::open(config, clock).await?);
    }
    let mut local = config.clone();
    local.cache.backend = CacheBackend::Redb;
    let local_store = cache::open::open(&local, clock.clone()).await?;
    #[cfg(feature = "redis")]
    {
        let gauge = metrics.cache_backend.clone();
        let report = move |redis: bool| {
            gauge.with_label_values(&["redis"]).set(i64::from(redis));
            gauge.with_label_values(&["redb"]).set(i64::from(!redis));
        };
        let store = cache::fallback::Fallback::open(
            cache::open::redis_url(config),
            cache::open::options(config, clock),
            local_store,
            report,
        )
        .await;
        Ok(Arc::new(store))
    }
    #[cfg(not(feature = "redis"))]
    {
        tracing::warn!("cache.backend: redis needs relay built with the redis feature; using the local redb store");
        metrics.cache_backend.with_label_values(&["redb"]).set(1);
        Ok(local_store)
    }
}

/// What a reloaded config must pass beyond loading: it exposes no provider key on the address
/// relay listens on, and with auth on, its key store opens.
async fn reload_checks(
    config: &Config,
    state: &State,
    listening: SocketAddr,
) -> Result<(), String> {
    config.exposure(listening).map_err(|e| e.to_string())?;
    if config.auth.enabled {
        state
            .keys
            .open(config)
            .await
            .map_err(|e| format!("auth: {e}"))?;
    }
    Ok(())
}

async fn reload_loop(
    listening: SocketAddr,
    mut watcher: ConfigWatcher,
    path: PathBuf,
    env: Env,
    offline: bool,
    state: Arc<State>,
    events: broadcast::Sender<ReloadEvent>,
) {
    while watcher.changed().await.is_some() {
        let loaded = match Config::load(&path, &env) {
            Ok(config) => {
                let config = prepare(config, offline);
                for w in &config.warnings {
                    tracing::warn!("{w}");
                }
                reload_checks(&config, &state, listening)
                    .await
                    .map(|()| config)
            }
            Err(e) => Err(e.to_string()),
        };
        let event = match loaded {
            Ok(config) => {
                let old = state.runtime.load();
                if config.server.listen != old.config.server.listen {
                    tracing::warn!("server.listen changed; it takes effect at the next restart");
                }
                if (&config.server.tls, &config.server.ca_dir)
                    != (&old.config.server.tls, &old.config.server.ca_dir)
                {
                    tracing::warn!(
                        "server.tls or server.ca_dir changed; it takes effect at the next restart"
                    );
                }
                let (was, now) = (&old.config.cache, &config.cache);
                if (was.backend, &was.path, was.max_bytes)
                    != (now.backend, &now.path, now.max_bytes)
                    || (now.enabled && state.cache.is_none())
                {
                    tracing::warn!(
                        "cache store settings changed (enabled, backend, path, max_bytes); they take effect at the next restart"
                    );
                }
                let runtime = Runtime::new(config, Some(&old), &state.metrics);
                state.runtime.store(Arc::new(runtime));
                state
                    .metrics
                    .config_reloads
                    .with_label_values(&["ok"])
                    .inc();
                tracing::info!(file = %path.display(), "config reloaded");
                ReloadEvent::Applied
            }
            Err(e) => {
                state
                    .metrics
                    .config_reloads
                    .with_label_values(&["error"])
                    .inc();
                tracing::error!("config reload rejected, the previous config stays live: {e}");
                ReloadEvent::Rejected(e)
            }
        };
        let _ = events.send(event);
    }
}
