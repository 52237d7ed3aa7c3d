//! Logging setup: `tracing` to stdout through a non-blocking writer (a background thread does the
//! writes, so a slow terminal or pipe never blocks a request). `RELAY_LOG` sets the filter (default
//! `info`; `relay::access=off` silences the request log).

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable, one line per event.
    Pretty,
    /// One JSON object per line (for log shippers).
    Json,
}

/// Installs the global subscriber. Keep the guard alive until exit: dropping it flushes the log.
pub fn init(format: LogFormat) -> WorkerGuard {
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    init_to(format, ansi, std::io::stdout())
}

/// Installs the global subscriber, writing to `out` through the non-blocking writer (the load
/// harness sends it to a sink, keeping every cost but the write itself). Keep the guard alive.
pub fn init_to(
    format: LogFormat,
    ansi: bool,
    out: impl std::io::Write + Send + 'static,
) -> WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking(out);
    let filter = EnvFilter::try_from_env("RELAY_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    match format {
        LogFormat::Pretty => builder.compact().init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    guard
}

/// Installs the global subscriber writing to `path` (appending; parent directories created), for
/// `relay tui`, whose screen must not be written over. No colours. Keep the guard alive until exit.
pub fn init_file(format: LogFormat, path: &std::path::Path) -> std::io::Result<WorkerGuard> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    Ok(init_to(format, false, file))
}

/// Where `relay tui` logs by default: `<data dir>/relay/tui.log` (e.g.
/// `~/.local/share/relay/tui.log`), or the temp directory when there is no data dir.
pub fn default_tui_log() -> std::path::PathBuf {
    dirs::data_local_dir()
        .map(|d| d.join("relay"))
        .unwrap_or_else(std::env::temp_dir)
        .join("tui.log")
}
