//! `relay cache`: list, show, export, import, clear and count cached responses.
//!
//! Where a command runs:
//! - **No relay holds the store** (or `cache.backend: redis`, which has no lock): the command opens
//!   the configured store itself, runs, and closes it.
//! - **A running `relay serve` holds the redb file** (opening it fails with
//!   [`StoreError::Locked`]; redb allows one process per file): the command goes to that server's
//!   loopback admin API ([`crate::admin::cache`]) at `http://<server.listen>/relay/cache/...`, with
//!   `0.0.0.0` / `[::]` replaced by `127.0.0.1` / `[::1]`.
//! - **`--server URL`**: always that server's admin API; the store is not opened.
//!
//! Both ways run the same operations: the direct path calls [`admin::handle`] in-process with the
//! same request the HTTP path sends, so the answers, and therefore the output, are the same.

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use serde::de::DeserializeOwned;

use super::client::{listen_base, RelayClient};
use crate::admin::cache::{
    self as admin, ApiError, EntryDetail, EntrySummary, Imported, Removed, ResponseView, StatsView,
};
use crate::cache::{Store, StoreError};
use crate::clock::Clock;
use crate::config::Config;

/// The `relay cache` subcommands.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum CacheCommand {
    /// List cached responses, newest first.
    ///
    /// One aligned row per entry: key prefix (what `show` takes), provider, model, age, size,
    /// hits, the client and agent session that sent it, the request's method and path, and the
    /// start of its last user message.
    Ls {
        /// Only entries recorded for this model (exact match, e.g. gpt-4o).
        #[arg(long, value_name = "MODEL")]
        model: Option<String>,
        /// Only entries recorded in this agent session (as the SESSION column shows it whole,
        /// or `relay run --session` named it).
        #[arg(long, value_name = "SESSION")]
        session: Option<String>,
        /// Show at most this many entries (0 = all).
        #[arg(long, default_value_t = 50, value_name = "N")]
        limit: usize,
    },
    /// Show one entry, request and response.
    ///
    /// Prints the entry's metadata and response headers, the request body (JSON pretty-printed),
    /// then the response: JSON pretty-printed, or a stream's SSE events as they were sent.
    Show {
        /// The entry's key, or any unambiguous prefix of it (as `relay cache ls` prints).
        #[arg(value_name = "KEY")]
        key: String,
    },
    /// Export entries to a JSONL file.
    ///
    /// One entry per line, newest first: a portable recording to share or commit next to your
    /// tests, loaded back with `relay cache import`. Prints the count on stderr.
    Export {
        /// Output file; `-` writes to stdout.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Only entries recorded for this model.
        #[arg(long, value_name = "MODEL")]
        model: Option<String>,
    },
    /// Import entries from a JSONL file made by `relay cache export`.
    ///
    /// Entries keep their key, expiry and hit count, and replace entries with the same key. The
    /// whole file is checked first: a bad line aborts the import with its line number, and
    /// nothing is imported. Prints the count.
    Import {
        /// Input file; `-` reads stdin.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Remove every entry, or one model's entries.
    ///
    /// Prints how many were removed.
    Clear {
        /// Only entries recorded for this model.
        #[arg(long, value_name = "MODEL")]
        model: Option<String>,
    },
    /// Show totals: entries, bytes, hits, oldest and newest entry.
    ///
    /// Also names the store and whether it was opened directly or through a running relay.
    Stats,
    /// Explain why a request missed the cache.
    ///
    /// Asks the running relay (it remembers its latest misses): the request's key, a recording
    /// its portable form would replay (offline), and the nearest recording with the first JSON
    /// paths where the two differ. The request id is the `x-request-id` of the answer (an
    /// offline miss names it too).
    Why {
        /// The request's id (`x-request-id`).
        #[arg(value_name = "REQUEST_ID")]
        request_id: String,
    },
}

/// Why a `relay cache` command failed. `Display` is the message for the user.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Opening or closing the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Reading or writing a file.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The admin API refused the operation (unknown key, ambiguous prefix, bad import line...).
    #[error("{message}")]
    Api { status: u16, message: String },
    /// No relay answered where the CLI looked for one.
    #[error("{}", unreachable_message(url, reason, held.as_deref()))]
    Unreachable {
        url: String,
        reason: String,
        /// The store file that is in use, when that is why the CLI went looking for a server.
        held: Option<PathBuf>,
    },
    /// `--server` is not an `http://host:port` URL.
    #[error("invalid --server URL {url:?}: {reason}")]
    BadServer { url: String, reason: String },
    /// The server answered something that is not relay's cache admin API.
    #[error("{url}: {reason}")]
    Protocol { url: String, reason: String },
}

fn unreachable_message(url: &str, reason: &str, held: Option<&Path>) -> String {
    match held {
        Some(path) => format!(
            "the cache file {} is in use by another process, and no relay answers at {url} \
             ({reason}); if `relay serve` holds it and listens elsewhere, pass --server URL",
            path.display()
        ),
        None => format!("cannot reach relay at {url}: {reason}"),
    }
}

/// Runs one `relay cache` command against the store `cfg` names, opening it directly or going
/// through the running server that holds it (module docs); `server` (`--server URL`) forces the
/// latter. Prints results on stdout, counts and notes on stderr.
pub async fn run(cmd: CacheCommand, cfg: &Config, server: Option<String>) -> Result<(), CliError> {
    let backend = match (&cmd, server.as_deref()) {
        // Misses live in the running relay's memory: never open the store for them.
        (CacheCommand::Why { .. }, None) => {
            Backend::remote(cfg, listen_base(cfg.server.listen), None)?
        }
        (_, server) => Backend::connect(cfg, server).await?,
    };
    let result = execute(&backend, cmd, Clock::system().now_ms()).await;
    let closed = backend.close().await;
    let output = result?;
    closed?;
    let mut stdout = std::io::stdout().lock();
    let written = stdout
        .write_all(&output.stdout)
        .and_then(|()| stdout.flush());
    // A closed pipe (`relay cache ls | head`) is not an error worth reporting.
    if let Err(e) = written {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(CliError::Io {
                path: "stdout".into(),
                source: e,
            });
        }
    }
    eprint!("{}", output.stderr);
    Ok(())
}

/// What a command prints.
#[derive(Debug, Default)]
struct Output {
    stdout: Vec<u8>,
    stderr: String,
}

impl Output {
    fn out(text: String) -> Output {
        Output {
            stdout: text.into_bytes(),
            stderr: String::new(),
        }
    }
}

/// Runs `cmd` against `backend`; `now_ms` is "now" for ages.
async fn execute(backend: &Backend, cmd: CacheCommand, now_ms: u64) -> Result<Output, CliError> {
    match cmd {
        CacheCommand::Ls {
            model,
            session,
            limit,
        } => {
            let mut query = Vec::new();
            if let Some(m) = &model {
                query.push(format!("model={}", admin::percent_encode(m)));
            }
            if let Some(s) = &session {
                query.push(format!("session={}", admin::percent_encode(s)));
            }
            if limit > 0 {
                query.push(format!("limit={limit}"));
            }
            let rows: Vec<EntrySummary> = backend
                .json(Method::GET, &with_query("/entries", &query), Bytes::new())
                .await?;
            Ok(Output::out(render_ls(&rows, model.as_deref(), now_ms)))
        }
        CacheCommand::Show { key } => {
            let path = format!("/entries/{}", admin::percent_encode(key.trim()));
            let detail: EntryDetail = backend.json(Method::GET, &path, Bytes::new()).await?;
            Ok(Output::out(render_show(&detail, now_ms)))
        }
        CacheCommand::Export { file, model } => {
            let query: Vec<String> = model
                .iter()
                .map(|m| format!("model={}", admin::percent_encode(m)))
                .collect();
            let body = backend
                .call(Method::GET, &with_query("/export", &query), Bytes::new())
                .await?;
            let count = body
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .count();
            let mut output = Output::default();
            if is_stdio(&file) {
                output.stdout = body.to_vec();
                let _ = writeln!(output.stderr, "exported {}", entries(count));
            } else {
                let path = file.clone();
                blocking(move || std::fs::write(&path, &body))
                    .await
                    .map_err(|source| io_error(&file, source))?;
                let _ = writeln!(
                    output.stderr,
                    "exported {} to {}",
                    entries(count),
                    file.display()
                );
            }
            Ok(output)
        }
        CacheCommand::Import { file } => {
            let body = if is_stdio(&file) {
                blocking(|| {
                    let mut buf = Vec::new();
                    std::io::stdin().lock().read_to_end(&mut buf).map(|_| buf)
                })
                .await
                .map_err(|source| io_error(Path::new("stdin"), source))?
            } else {
                let path = file.clone();
                blocking(move || std::fs::read(&path))
                    .await
                    .map_err(|source| io_error(&file, source))?
            };
            let Imported { imported } = backend
                .json(Method::POST, "/import", Bytes::from(body))
                .await?;
            let from = if is_stdio(&file) {
                String::new()
            } else {
                format!(" from {}", file.display())
            };
            Ok(Output::out(format!(
                "imported {}{from}\n",
                entries(imported as usize)
            )))
        }
        CacheCommand::Clear { model } => {
            let query: Vec<String> = model
                .iter()
                .map(|m| format!("model={}", admin::percent_encode(m)))
                .collect();
            let Removed { removed } = backend
                .json(
                    Method::DELETE,
                    &with_query("/entries", &query),
                    Bytes::new(),
                )
                .await?;
            let of = model.map(|m| format!(" of model {m}")).unwrap_or_default();
            Ok(Output::out(format!(
                "removed {}{of}\n",
                entries(removed as usize)
            )))
        }
        CacheCommand::Why { request_id } => {
            let path = format!("/why/{}", admin::percent_encode(request_id.trim()));
            let why: serde_json::Value = backend.json(Method::GET, &path, Bytes::new()).await?;
            Ok(Output::out(render_why(&why)))
        }
        CacheCommand::Stats => {
            let stats: StatsView = backend.json(Method::GET, "/stats", Bytes::new()).await?;
            Ok(Output::out(render_stats(
                &stats,
                &backend.describe(),
                now_ms,
            )))
        }
    }
}

fn is_stdio(file: &Path) -> bool {
    file.as_os_str() == "-"
}

fn io_error(path: &Path, source: std::io::Error) -> CliError {
    CliError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Runs blocking file or stdin I/O off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(std::io::Error::other)?
}

fn with_query(path: &str, query: &[String]) -> String {
    if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", query.join("&"))
    }
}

/// Where the operations go: the store itself, or the admin API of the relay holding it.
enum Backend {
    /// A store this process opened; requests go to [`admin::handle`] in-process.
    Direct {
        store: Arc<dyn Store>,
        /// The store, for `stats` (the redb file, or `redis`).
        what: String,
    },
    /// A running relay's admin API over HTTP.
    Remote {
        /// Boxed: the client is large, and a `Direct` backend needs none.
        client: Box<RelayClient>,
        /// `http://host:port`, no trailing slash.
        base: String,
        /// The file the server holds, when that is why we went to it.
        held: Option<PathBuf>,
    },
}

impl Backend {
    /// `--server` when given; else the configured store, or the server holding it.
    async fn connect(cfg: &Config, server: Option<&str>) -> Result<Backend, CliError> {
        if let Some(url) = server {
            return Backend::remote(cfg, server_base(url)?, None);
        }
        match crate::cache::open::open(cfg, Clock::system()).await {
            Ok(store) => {
                let what = match store.backend() {
                    "redb" => crate::cache::open::redb_path(cfg)?.display().to_string(),
                    other => other.to_owned(),
                };
                Ok(Backend::Direct { store, what })
            }
            Err(StoreError::Locked { path }) => {
                Backend::remote(cfg, listen_base(cfg.server.listen), Some(path))
            }
            Err(e) => Err(e.into()),
        }
    }

    fn remote(cfg: &Config, base: String, held: Option<PathBuf>) -> Result<Backend, CliError> {
        let client = RelayClient::new(cfg).map_err(|reason| CliError::Unreachable {
            url: base.clone(),
            reason,
            held: held.clone(),
        })?;
        Ok(Backend::Remote {
            client: Box::new(client),
            base,
            held,
        })
    }

    /// Where the commands run, for `stats`.
    fn describe(&self) -> String {
        match self {
            Backend::Direct { what, .. } => format!("{what} (opened directly)"),
            Backend::Remote {
                base,
                held: Some(path),
                ..
            } => format!("{} (through the relay at {base})", path.display()),
            Backend::Remote {
                base, held: None, ..
            } => format!("the relay at {base}"),
        }
    }

    /// Sends one admin request (`path` relative to [`admin::PREFIX`]); the body of a 2xx answer.
    async fn call(&self, method: Method, path: &str, body: Bytes) -> Result<Bytes, CliError> {
        let path = format!("{}{path}", admin::PREFIX);
        let (status, answer) = match self {
            Backend::Direct { store, .. } => {
                let req = request(method, &path, body)?;
                let resp = admin::handle(store, req).await;
                (resp.status(), resp.into_body())
            }
            Backend::Remote { client, base, held } => {
                let req = request(method, &format!("{base}{path}"), body)?;
                let unreachable = |e: &dyn std::error::Error| CliError::Unreachable {
                    url: base.clone(),
                    reason: error_chain(e),
                    held: held.clone(),
                };
                let resp = client.send(req).await.map_err(|e| unreachable(&e))?;
                let status = resp.status();
                let answer = resp
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| unreachable(&e))?
                    .to_bytes();
                (status, answer)
            }
        };
        if status.is_success() {
            return Ok(answer);
        }
        match serde_json::from_slice::<ApiError>(&answer) {
            Ok(e) => Err(CliError::Api {
                status: status.as_u16(),
                message: e.error,
            }),
            Err(_) => Err(self.not_admin(status, &path)),
        }
    }

    /// [`Backend::call`], its answer parsed as JSON.
    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<T, CliError> {
        let answer = self.call(method, path, body).await?;
        serde_json::from_slice(&answer).map_err(|e| CliError::Protocol {
            url: self.url(path),
            reason: format!("unexpected answer: {e}"),
        })
    }

    fn url(&self, path: &str) -> String {
        match self {
            Backend::Direct { .. } => format!("{}{path}", admin::PREFIX),
            Backend::Remote { base, .. } => format!("{base}{}{path}", admin::PREFIX),
        }
    }

    /// The error for an answer that is not the admin API's (an older relay, a non-loopback peer,
    /// another program on that port).
    fn not_admin(&self, status: StatusCode, path: &str) -> CliError {
        let url = match self {
            Backend::Direct { .. } => path.to_owned(),
            Backend::Remote { base, .. } => format!("{base}{path}"),
        };
        CliError::Protocol {
            url,
            reason: format!(
                "answered HTTP {status}, not relay's cache admin API (it is served to loopback \
                 clients by a relay with the response cache)"
            ),
        }
    }

    /// Releases the store this process opened (commits its writes, unlocks the file).
    async fn close(self) -> Result<(), CliError> {
        match self {
            Backend::Direct { store, .. } => Ok(store.close().await?),
            Backend::Remote { .. } => Ok(()),
        }
    }
}

fn request(method: Method, uri: &str, body: Bytes) -> Result<Request<Full<Bytes>>, CliError> {
    let mut builder = Request::builder().method(method).uri(uri);
    if !body.is_empty() {
        builder = builder.header(header::CONTENT_TYPE, admin::JSONL_CONTENT_TYPE);
    }
    builder
        .body(Full::new(body))
        .map_err(|e| CliError::Protocol {
            url: uri.to_owned(),
            reason: format!("cannot build the request: {e}"),
        })
}

/// An error and its sources, `a: b: c` (hyper's own message alone is terse).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = inner.source();
    }
    s
}

/// `--server`: `http://host:port` (the scheme may be left out).
fn server_base(url: &str) -> Result<String, CliError> {
    let bad = |reason: &str| CliError::BadServer {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let text = url.trim();
    let text = if text.contains("://") {
        text.to_owned()
    } else {
        format!("http://{text}")
    };
    let uri: Uri = text.parse().map_err(|_| bad("not a URL"))?;
    if uri.scheme_str() != Some("http") {
        return Err(bad("relay's admin API is plain http on a loopback address"));
    }
    let authority = uri.authority().ok_or_else(|| bad("no host"))?;
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad(
            "give only the scheme, host and port (http://127.0.0.1:8080)",
        ));
    }
    Ok(format!("http://{authority}"))
}

mod render;
use render::*;

#[cfg(test)]
mod tests;
