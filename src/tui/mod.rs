//! `relay tui`: a live terminal dashboard of the requests going through relay.
//!
//! Shaped like gitui: a [`State`] changed only by [`State::update`] (feed events, clock ticks,
//! resizes) and [`keys::handle_key`], drawn by the pure [`view::render`]. The run loop lives on its
//! own thread: it drains the feed without waiting ([`crate::events::Subscription::try_next`]), reads
//! the keyboard, and redraws at most [`FPS`] times a second. The proxy never waits for it: the feed is
//! a bounded channel that drops the oldest events for a reader that lags.
//!
//! Two ways in: [`run_local`] starts the proxy in this process (what `relay serve` would run) and
//! watches it; [`run_attach`] watches another relay through its `GET /relay/events` stream.

pub mod actions;
pub mod bindings;
pub mod format;
pub mod keys;
pub mod limits;
pub mod limits_pane;
pub mod per_key;
pub mod state;
pub mod view;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use ratatui::crossterm::event::{self, Event, KeyEventKind};
use ratatui::DefaultTerminal;

pub use keys::{handle_key, Command};
pub use state::{Msg, State, View};
pub use view::render;

use crate::events::stream::{Message, Parser};
use crate::events::{Events, Next, Subscription};
use crate::proxy::server::{ServeOptions, Server, StartError};

/// Most redraws per second.
pub const FPS: u32 = 15;

/// Why the dashboard stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum TuiError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("terminal: {0}")]
    Terminal(#[from] std::io::Error),
    #[error("--attach: {0}")]
    Attach(String),
}

/// `relay tui`: runs the proxy with `opts` and the dashboard until `q`, Ctrl-C, SIGINT or SIGTERM;
/// then drains the proxy like `relay serve` does.
pub fn run_local(opts: ServeOptions, log_path: Option<String>) -> Result<(), TuiError> {
    need_terminal()?;
    let rt = tokio::runtime::Runtime::new()?;
    let server = rt.block_on(Server::start(opts))?;
    let addr = server.local_addr();
    let sub = server.events().subscribe();
    let url = relay_url(addr);
    let mut state = State::new(format!("listening on {addr}"), url);
    state.log_path = log_path;
    let (limits_tx, limits_rx) = mpsc::channel();
    let poller = rt.spawn(limits::poll(
        limits::Source::Local(server.metrics_shared()),
        limits_tx,
    ));
    let result = run(&rt, state, sub, None, limits_rx);
    poller.abort();
    server.shutdown();
    rt.block_on(server.wait());
    result
}

/// `relay tui --attach URL`: watches the relay at `url` (e.g. `http://127.0.0.1:8080`).
pub fn run_attach(url: String, log_path: Option<String>) -> Result<(), TuiError> {
    need_terminal()?;
    let base = url.trim_end_matches('/').to_string();
    let uri: http::Uri = format!("{base}{}", crate::events::PATH)
        .parse()
        .map_err(|e| TuiError::Attach(format!("{url}: {e}")))?;
    if uri.scheme_str() != Some("http") {
        return Err(TuiError::Attach(format!(
            "{url}: only http:// is supported (the event stream is read over plain HTTP)"
        )));
    }
    let rt = tokio::runtime::Runtime::new()?;
    // A local feed the stream reader publishes into: the same bounded channel as in-process.
    let events = Arc::new(Events::new(
        crate::events::DEFAULT_CAPACITY,
        prometheus::IntCounter::new("relay_events_dropped_total", "attach").expect("valid"),
    ));
    let sub = events.subscribe();
    let (status_tx, status_rx) = mpsc::channel();
    let reader = rt.spawn(attach_loop(uri, events.clone(), status_tx));
    let metrics_uri: http::Uri = format!("{base}/metrics")
        .parse()
        .map_err(|e| TuiError::Attach(format!("{url}: {e}")))?;
    let (limits_tx, limits_rx) = mpsc::channel();
    let poller = rt.spawn(limits::poll(limits::Source::Remote(metrics_uri), limits_tx));
    let mut state = State::new(format!("attached to {base}"), base);
    state.log_path = log_path;
    let result = run(&rt, state, sub, Some(status_rx), limits_rx);
    reader.abort();
    poller.abort();
    result
}

fn relay_url(addr: SocketAddr) -> String {
    let ip = if addr.ip().is_unspecified() {
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        addr.ip()
    };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
}

/// Reads `/relay/events` into `events`, reconnecting after a second when the stream ends.
async fn attach_loop(uri: http::Uri, events: Arc<Events>, status: mpsc::Sender<String>) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    loop {
        match client.get(uri.clone()).await {
            Ok(resp) if resp.status().is_success() => {
                let _ = status.send(format!("connected to {uri}"));
                let mut body = resp.into_body();
                let mut parser = Parser::default();
                while let Some(Ok(frame)) = body.frame().await {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    for m in parser.push(&data) {
                        match m {
                            Message::Event(ev) => events.publish(*ev),
                            Message::Dropped(n) => {
                                let _ = status.send(format!("relay dropped {n} events for us"));
                            }
                        }
                    }
                }
                let _ = status.send(format!("{uri}: stream ended; reconnecting"));
            }
            Ok(resp) => {
                let _ = status.send(format!("{uri}: HTTP {}; retrying", resp.status()));
            }
            Err(e) => {
                let _ = status.send(format!("{uri}: {e}; retrying"));
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Sets up the terminal (restored on return, on panic, and on SIGTERM/SIGINT), runs the loop.
fn run(
    rt: &tokio::runtime::Runtime,
    mut state: State,
    sub: Subscription,
    status_rx: Option<mpsc::Receiver<String>>,
    limits_rx: mpsc::Receiver<limits::LimitsSnapshot>,
) -> Result<(), TuiError> {
    let quit = Arc::new(AtomicBool::new(false));
    let signals = rt.spawn(watch_signals(quit.clone()));
    install_panic_hook();
    let mut terminal = match enter_terminal() {
        Ok(t) => t,
        Err(e) => {
            signals.abort();
            return Err(TuiError::Terminal(e));
        }
    };
    if let Ok(size) = terminal.size() {
        state.update(Msg::Resize(size.width, size.height));
    }
    let result = ui_loop(rt, &mut terminal, state, sub, status_rx, limits_rx, &quit);
    ratatui::restore();
    signals.abort();
    result.map_err(TuiError::from)
}

/// Raw mode and the alternate screen (undone by `ratatui::restore`).
fn enter_terminal() -> std::io::Result<DefaultTerminal> {
    use ratatui::crossterm::{execute, terminal};
    need_terminal()?;
    terminal::enable_raw_mode()?;
    let entered = execute!(std::io::stdout(), terminal::EnterAlternateScreen).and_then(|_| {
        ratatui::Terminal::new(ratatui::backend::CrosstermBackend::new(std::io::stdout()))
    });
    if entered.is_err() {
        ratatui::restore();
    }
    entered
}

fn need_terminal() -> std::io::Result<()> {
    if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        Ok(())
    } else {
        Err(std::io::Error::other(
            "relay tui needs a terminal (relay serve runs headless)",
        ))
    }
}

/// A panic on the dashboard's thread restores the terminal, then reports as usual. A panic elsewhere
/// (a proxy task; tokio keeps serving) goes to the log file instead of over the screen.
fn install_panic_hook() {
    let ui = std::thread::current().id();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().id() == ui {
            ratatui::restore();
            previous(info);
        } else {
            tracing::error!(target: "relay::panic", "{info}");
        }
    }));
}

async fn watch_signals(quit: Arc<AtomicBool>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = hup.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    quit.store(true, Ordering::Relaxed);
}

/// Events applied per loop turn at most, so keys stay responsive under a flood.
const DRAIN_BATCH: usize = 4096;

/// Reads the terminal on its own thread, so a terminal that hangs up (or a slow read) can never hold
/// the loop: the loop waits on this channel with a timeout and checks the quit flag every frame.
fn spawn_input() -> mpsc::Receiver<Event> {
    let (tx, rx) = mpsc::sync_channel(256);
    std::thread::Builder::new()
        .name("relay-tui-input".into())
        .spawn(move || {
            while let Ok(ev) = event::read() {
                if tx.send(ev).is_err() {
                    break;
                }
            }
        })
        .expect("spawn the input thread");
    rx
}

fn ui_loop(
    rt: &tokio::runtime::Runtime,
    terminal: &mut DefaultTerminal,
    mut state: State,
    mut sub: Subscription,
    status_rx: Option<mpsc::Receiver<String>>,
    limits_rx: mpsc::Receiver<limits::LimitsSnapshot>,
    quit: &AtomicBool,
) -> std::io::Result<()> {
    let frame = Duration::from_secs(1) / FPS;
    let input = spawn_input();
    let (replies_tx, replies_rx) = mpsc::channel::<String>();
    let mut dirty = true;
    let mut last_draw: Option<Instant> = None;
    let mut last_second = 0;
    while !quit.load(Ordering::Relaxed) {
        for _ in 0..DRAIN_BATCH {
            match sub.try_next() {
                Next::Event(ev) => state.update(Msg::Event(ev)),
                Next::Lagged(n) => state.update(Msg::Lagged(n)),
                Next::Empty => break,
                Next::Closed => {
                    state.update(Msg::Status("relay stopped".into()));
                    break;
                }
            }
            dirty = true;
        }
        for line in replies_rx.try_iter().chain(
            status_rx
                .iter()
                .flat_map(|rx| rx.try_iter().collect::<Vec<_>>()),
        ) {
            state.update(Msg::Status(line));
            dirty = true;
        }
        // Only the newest snapshot matters; redraw when it changed.
        if let Some(l) = limits_rx.try_iter().last() {
            if state.limits.as_ref() != Some(&l) {
                state.update(Msg::Limits(l));
                dirty = true;
            }
        }
        let now = now_ms();
        state.update(Msg::Tick(now));
        if now / 1000 != last_second {
            last_second = now / 1000;
            dirty = true;
        }
        let due = last_draw.is_none_or(|t| t.elapsed() >= frame);
        if dirty && due {
            terminal.draw(|f| render(&state, f))?;
            last_draw = Some(Instant::now());
            dirty = false;
        }
        let wait = match last_draw {
            Some(t) if dirty => frame.saturating_sub(t.elapsed()),
            _ => frame,
        };
        let ev = match input.recv_timeout(wait) {
            Ok(ev) => ev,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            // The terminal is gone.
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        match ev {
            Event::Key(k) if k.kind != KeyEventKind::Release => {
                dirty = true;
                match handle_key(&mut state, k) {
                    None => {}
                    Some(Command::Quit) => break,
                    Some(Command::Export { request_id, curl }) => {
                        let line = export_to_file(&request_id, &curl);
                        state.update(Msg::Status(line));
                    }
                    Some(Command::Replay(r)) => {
                        let url = state.relay_url.clone();
                        let tx = replies_tx.clone();
                        rt.spawn(async move {
                            let _ = tx.send(r.send(&url).await);
                        });
                    }
                }
            }
            Event::Resize(w, h) => {
                state.update(Msg::Resize(w, h));
                dirty = true;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Writes an exported curl command to `relay-<request id>.curl.sh` in the temp directory.
fn export_to_file(request_id: &str, curl: &str) -> String {
    let safe: String = request_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(64)
        .collect();
    let path = std::env::temp_dir().join(format!("relay-{safe}.curl.sh"));
    match std::fs::write(&path, format!("#!/bin/sh\n{curl}\n")) {
        Ok(()) => format!("curl command saved to {}", path.display()),
        Err(e) => format!("cannot save {}: {e}", path.display()),
    }
}
