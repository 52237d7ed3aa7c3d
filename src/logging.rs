//! Logging setup: `tracing` to stdout through a non-blocking, batching writer ([`BatchWriter`]):
//! a background thread does the writes, so a slow terminal or pipe never blocks a request.
//! `RELAY_LOG` sets the filter (default `info`; `relay::access=off` silences the request log).

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

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
pub fn init(format: LogFormat) -> LogGuard {
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    init_to(format, ansi, std::io::stdout())
}

/// Installs the global subscriber, writing to `out` through the non-blocking writer (the load
/// harness sends it to a sink, keeping every cost but the write itself). Keep the guard alive.
pub fn init_to(
    format: LogFormat,
    ansi: bool,
    out: impl std::io::Write + Send + 'static,
) -> LogGuard {
    let (writer, guard) = BatchWriter::spawn(out);
    let filter = EnvFilter::try_from_env("RELAY_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    match format {
        // In a terminal, field names are dimmed; elsewhere (a pipe, a file, a log shipper: where a
        // busy relay writes) fields are written plainly, without going through the colour styling,
        // which was a fifth of the cost of each request's log line.
        LogFormat::Pretty if ansi => builder.compact().init(),
        LogFormat::Pretty => builder.compact().fmt_fields(plain_fields()).init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    guard
}

/// `name=value` fields separated by spaces, the message bare: the text of the default field format
/// with its (here disabled) colour styling, written without going through `core::fmt` for the
/// values a request's log line is made of (strings, integers, booleans), which was most of the
/// line's cost. Anything else is written with `{:?}`, as the default does.
fn plain_fields() -> PlainFields {
    PlainFields
}

struct PlainFields;

impl<'w> tracing_subscriber::fmt::FormatFields<'w> for PlainFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        writer: tracing_subscriber::fmt::format::Writer<'w>,
        fields: R,
    ) -> std::fmt::Result {
        let mut v = PlainVisitor {
            w: writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut v);
        v.result
    }
}

struct PlainVisitor<'w> {
    w: tracing_subscriber::fmt::format::Writer<'w>,
    first: bool,
    result: std::fmt::Result,
}

impl PlainVisitor<'_> {
    /// Starts a field: the separator, then `name=` (nothing for the message). `false` for a field
    /// the default leaves out (`log.*`, which `tracing-log` adds to events from the `log` crate).
    fn start(&mut self, field: &tracing::field::Field) -> bool {
        let name = field.name();
        if self.result.is_err() || name.starts_with("log.") {
            return false;
        }
        if !std::mem::take(&mut self.first) {
            self.result = self.w.write_char(' ');
        }
        if name != "message" {
            let name = name.strip_prefix("r#").unwrap_or(name);
            self.result = self
                .result
                .and_then(|_| self.w.write_str(name))
                .and_then(|_| self.w.write_char('='));
        }
        self.result.is_ok()
    }

    /// Writes `s` unless an earlier write failed (the first error is the one reported).
    fn raw(&mut self, s: &str) {
        if self.result.is_ok() {
            self.result = self.w.write_str(s);
        }
    }
}

impl tracing::field::Visit for PlainVisitor<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if !self.start(field) {
            return;
        }
        if field.name() == "message" {
            self.raw(value);
        } else if value
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
        {
            // What `{:?}` writes for a string with nothing to escape.
            self.raw("\"");
            self.raw(value);
            self.raw("\"");
        } else {
            self.result = write!(self.w, "{value:?}");
        }
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        if self.start(field) {
            self.raw(itoa::Buffer::new().format(value));
        }
    }

    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        if self.start(field) {
            self.raw(itoa::Buffer::new().format(value));
        }
    }

    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        if self.start(field) {
            self.raw(if value { "true" } else { "false" });
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if self.start(field) {
            self.result = write!(self.w, "{value:?}");
        }
    }
}

/// Installs the global subscriber writing to `path` (appending; parent directories created), for
/// `relay tui`, whose screen must not be written over. No colours. Keep the guard alive until exit.
pub fn init_file(format: LogFormat, path: &std::path::Path) -> std::io::Result<LogGuard> {
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

/// Lines the writer holds before it drops new ones (counted, and reported once written out).
const QUEUE_LINES: usize = 64 * 1024;
/// How long the writer thread lets lines gather after the first one before writing them out.
const GATHER: Duration = Duration::from_millis(10);
/// How long dropping the [`LogGuard`] waits for queued lines to be written.
const FLUSH_WAIT: Duration = Duration::from_secs(1);

enum Msg {
    Line(Vec<u8>),
    Flush(mpsc::Sender<()>),
}

/// The log's non-blocking writer (a `tracing_subscriber` `MakeWriter`): each formatted line is
/// queued for one writer thread, which writes whatever gathered over [`GATHER`] in one go.
///
/// Why not `tracing_appender::non_blocking`: its thread wakes for every line (a futex wake on the
/// request's thread, a context switch, and a burst of `sched_yield` as it spins for the next one),
/// which on a busy 2-core machine cost more than formatting the line. Here the thread sleeps while
/// lines gather, so a stream of requests wakes it at most once per [`GATHER`] window; a line is
/// written at most that much later. When [`QUEUE_LINES`] lines are waiting, new ones are dropped
/// (never blocking a request) and the count is written to the log when it drains.
#[derive(Clone)]
pub struct BatchWriter {
    tx: SyncSender<Msg>,
    dropped: Arc<AtomicU64>,
}

/// Flushes the log when dropped (waiting up to a second for queued lines). Keep it alive until exit.
pub struct LogGuard {
    tx: SyncSender<Msg>,
}

impl BatchWriter {
    /// Starts the writer thread (`relay-log`) writing to `out`.
    pub fn spawn(out: impl std::io::Write + Send + 'static) -> (BatchWriter, LogGuard) {
        let (tx, rx) = mpsc::sync_channel(QUEUE_LINES);
        let dropped = Arc::new(AtomicU64::new(0));
        let lost = dropped.clone();
        std::thread::Builder::new()
            .name("relay-log".into())
            .spawn(move || write_lines(rx, out, &lost))
            .expect("spawn the log writer thread");
        let guard = LogGuard { tx: tx.clone() };
        (BatchWriter { tx, dropped }, guard)
    }
}

/// The writer thread: blocks for the first line, lets more gather, writes the lot, repeats. Ends
/// when every sender is gone.
fn write_lines(rx: Receiver<Msg>, out: impl std::io::Write, dropped: &AtomicU64) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    // Writes out what is buffered, with a line saying how many were dropped since last time.
    let flush = |out: &mut std::io::BufWriter<_>| {
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            let _ = writeln!(
                out,
                "relay: the log writer fell behind; {lost} log lines were dropped"
            );
        }
        let _ = out.flush();
    };
    let handle = |msg: Msg, out: &mut std::io::BufWriter<_>| match msg {
        Msg::Line(line) => {
            let _ = out.write_all(&line);
        }
        Msg::Flush(ack) => {
            flush(out);
            let _ = ack.send(());
        }
    };
    while let Ok(first) = rx.recv() {
        let urgent = matches!(first, Msg::Flush(_));
        handle(first, &mut out);
        if !urgent {
            std::thread::sleep(GATHER);
        }
        for msg in rx.try_iter() {
            handle(msg, &mut out);
        }
        flush(&mut out);
    }
}

impl std::io::Write for BatchWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.tx.try_send(Msg::Line(buf.to_vec())) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BatchWriter {
    type Writer = BatchWriter;

    fn make_writer(&'a self) -> BatchWriter {
        self.clone()
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        let (ack, done) = mpsc::channel();
        // Blocking send: the flush must queue behind every line already waiting.
        if self.tx.send(Msg::Flush(ack)).is_ok() {
            let _ = done.recv_timeout(FLUSH_WAIT);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::Mutex;

    /// An `io::Write` the test can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_arrive_whole_in_order_and_the_guard_flushes_them() {
        let out = Shared::default();
        let (writer, guard) = BatchWriter::spawn(out.clone());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let mut w = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        w.write_all(format!("t{t} line {i}\n").as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(guard);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text.lines().count(),
            4000,
            "every line written once the guard is dropped"
        );
        for t in 0..4 {
            let mine: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with(&format!("t{t} ")))
                .collect();
            let expected: Vec<String> = (0..1000).map(|i| format!("t{t} line {i}")).collect();
            assert_eq!(mine, expected, "each thread's lines whole and in order");
        }
    }

    #[test]
    fn plain_fields_write_what_the_default_fields_write_without_colour() {
        fn line(plain: bool) -> String {
            let out = Shared::default();
            let sink = out.clone();
            let builder = tracing_subscriber::fmt()
                .with_ansi(false)
                .without_time()
                .with_writer(move || sink.clone())
                .compact();
            let emit = || {
                tracing::info!(
                    target: "relay::access",
                    method = %"POST",
                    path = %"/v1/chat/completions",
                    provider = "openai",
                    status = 200u16,
                    latency_ms = 1.25f64,
                    upstream_ms = None::<f64>,
                    cached = Some(3u64),
                    error = None::<&str>,
                    odd = "tab\there \"quoted\" back\\slash é",
                    empty = "",
                    ok = true,
                    delta = -5i64,
                    r#type = "keyword",
                    "request"
                )
            };
            if plain {
                tracing::subscriber::with_default(
                    builder.fmt_fields(plain_fields()).finish(),
                    emit,
                );
            } else {
                tracing::subscriber::with_default(builder.finish(), emit);
            }
            let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
            text
        }
        let default = line(false);
        assert!(default.contains("status=200"), "{default}");
        assert!(
            default.contains(r#"odd="tab\there \"quoted\" back\\slash é""#),
            "{default}"
        );
        assert_eq!(line(true), default);
    }

    #[test]
    fn a_full_queue_drops_lines_and_says_so() {
        /// Blocks the writer thread until the test lets it go.
        struct Gate(Arc<Mutex<()>>, Shared);
        impl std::io::Write for Gate {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                let _open = self.0.lock().unwrap();
                self.1.write(buf)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                let _open = self.0.lock().unwrap();
                Ok(())
            }
        }
        let gate = Arc::new(Mutex::new(()));
        let out = Shared::default();
        let closed = gate.lock().unwrap();
        let (mut writer, guard) = BatchWriter::spawn(Gate(gate.clone(), out.clone()));
        // The writer takes at most one batch before it blocks on the gate; the queue then fills.
        for i in 0..(QUEUE_LINES * 2 + 10) {
            writer.write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        assert!(writer.dropped.load(Ordering::Relaxed) > 0);
        drop(closed);
        drop(guard);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(
            text.contains("log lines were dropped"),
            "{}",
            &text[text.len() - 200..]
        );
    }
}
