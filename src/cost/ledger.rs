//! The usage ledger: what was spent, persisted, aggregated by UTC day × provider × model × key.
//!
//! One redb file of its own (`cost.ledger_path`; default `usage.redb` beside the cache file, else
//! `<data dir>/relay/usage.redb`). Unlike the cache it is not disposable: a file written by an older
//! format is migrated in place, a file of a newer format (or one another process holds) is left
//! untouched and relay runs without a ledger, with a warning. A damaged file (redb finds it
//! corrupt, or panics on it, as on a truncated file) is never deleted: the server moves it aside
//! (`usage.redb.damaged-<unix secs>`), starts a new one and says so loudly (an error in the log,
//! `relay_ledger_moved_aside_total`, a notice in `relay usage`), see [`Ledger::open_or_recover`].
//!
//! Layout (format [`LEDGER_VERSION`]):
//! - table `meta`: `version` → the format;
//! - table `usage`: key `"<YYYY-MM-DD>\x1f<provider>\x1f<model label>\x1f<key label>\x1f<session>"`
//!   (so a range from a day on is a key range; a key written before sessions were booked has no
//!   session part and reads as session `none`, so the format did not change), value [`Counts`] as little-endian u64s in field order. Fields are
//!   only ever appended: a shorter value reads its missing fields as 0.
//!
//! Writes never wait for the disk on the request path: [`Writer::add`] queues a record (bounded
//! channel, never blocking: a full queue drops the record and warns once) for one writer task,
//! which sums records in memory and commits them in one transaction at least every
//! [`FLUSH_EVERY`], so a crash loses at most the last second. The key label is an alias or a hash
//! prefix of the API key, never the key.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redb::{Database, DatabaseError, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::Config;

/// The on-disk format this build writes.
pub const LEDGER_VERSION: u64 = 1;
/// The longest time a settled request waits in memory before it is committed.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Records queued for the writer before new ones are dropped.
const QUEUE: usize = 16 * 1024;
/// Distinct rows held before an early commit.
const MAX_PENDING: usize = 4096;
const SEP: char = '\u{1f}';

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const USAGE: TableDefinition<&str, &[u8]> = TableDefinition::new("usage");

/// The ledger file a config names.
pub fn path(cfg: &Config) -> Option<PathBuf> {
    if let Some(p) = &cfg.cost.ledger_path {
        return Some(p.clone());
    }
    match &cfg.cache.path {
        Some(cache) => Some(cache.with_file_name("usage.redb")),
        None => dirs::data_dir().map(|d| d.join("relay").join("usage.redb")),
    }
}

/// One ledger row's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RowKey {
    /// UTC day, `YYYY-MM-DD`.
    pub day: String,
    pub provider: String,
    /// The model's metric label (family name, `other`, `none`).
    pub model: String,
    /// Key alias, `key-<hash prefix>` or `none`.
    pub key: String,
    /// The agent session ([`session_label`]), `none` without one.
    #[serde(default = "none")]
    pub session: String,
}

fn none() -> String {
    "none".to_string()
}

/// Longest session label booked (an agent's ids are 36 characters).
const SESSION_MAX: usize = 64;

/// A session as the ledger books it: at most [`SESSION_MAX`] characters, without the row key's
/// separator; `none` without one.
pub fn session_label(session: Option<&str>) -> String {
    match session.map(|s| s.trim()).filter(|s| !s.is_empty()) {
        Some(s) => s.chars().filter(|c| *c != SEP).take(SESSION_MAX).collect(),
        None => none(),
    }
}

impl RowKey {
    pub(crate) fn encode(&self) -> String {
        format!(
            "{}{SEP}{}{SEP}{}{SEP}{}{SEP}{}",
            self.day, self.provider, self.model, self.key, self.session
        )
    }

    pub(crate) fn decode(s: &str) -> Option<RowKey> {
        let mut it = s.split(SEP);
        Some(RowKey {
            day: it.next()?.to_string(),
            provider: it.next()?.to_string(),
            model: it.next()?.to_string(),
            key: it.next()?.to_string(),
            session: it.next().map_or_else(none, str::to_string),
        })
    }
}

/// Sums for one row (or one request).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub requests: u64,
    /// Answered from the cache (or a shared in-flight call).
    pub hits: u64,
    /// Went upstream and got a complete 2xx answer.
    pub misses: u64,
    /// Relay's or the upstream's errors, and answers that did not complete.
    pub errors: u64,
    /// Requests whose tokens relay counted itself (no usage from the provider).
    pub estimated: u64,
    pub input: u64,
    pub cached_input: u64,
    pub cache_write: u64,
    pub output: u64,
    pub reasoning: u64,
    pub cost_micros: u64,
    /// What relay's cache saved (hits).
    pub saved_micros: u64,
    /// 1-hour prompt-cache writes (`cache_write` holds the 5-minute ones).
    #[serde(default)]
    pub cache_write_1h: u64,
    /// Requests that used tokens of a model with no price (booked at $0).
    #[serde(default)]
    pub unpriced: u64,
    /// What the provider's prompt cache saved (reads at the input rate minus at the cached rate).
    #[serde(default)]
    pub prompt_cache_saved_micros: u64,
}

/// Fields of a [`Counts`] on disk.
pub(crate) const FIELDS: usize = 15;

impl Counts {
    pub(crate) fn fields(&self) -> [u64; FIELDS] {
        [
            self.requests,
            self.hits,
            self.misses,
            self.errors,
            self.estimated,
            self.input,
            self.cached_input,
            self.cache_write,
            self.output,
            self.reasoning,
            self.cost_micros,
            self.saved_micros,
            self.cache_write_1h,
            self.unpriced,
            self.prompt_cache_saved_micros,
        ]
    }

    pub(crate) fn from_fields(f: [u64; FIELDS]) -> Counts {
        Counts {
            requests: f[0],
            hits: f[1],
            misses: f[2],
            errors: f[3],
            estimated: f[4],
            input: f[5],
            cached_input: f[6],
            cache_write: f[7],
            output: f[8],
            reasoning: f[9],
            cost_micros: f[10],
            saved_micros: f[11],
            cache_write_1h: f[12],
            unpriced: f[13],
            prompt_cache_saved_micros: f[14],
        }
    }

    /// Adds `o` field by field.
    pub fn add(&mut self, o: &Counts) {
        let mut f = self.fields();
        for (a, b) in f.iter_mut().zip(o.fields()) {
            *a = a.saturating_add(b);
        }
        *self = Counts::from_fields(f);
    }

    fn encode(&self) -> Vec<u8> {
        self.fields().iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    fn decode(b: &[u8]) -> Counts {
        let mut f = [0u64; FIELDS];
        for (i, chunk) in b.chunks_exact(8).take(FIELDS).enumerate() {
            f[i] = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        }
        Counts::from_fields(f)
    }
}

/// A row: its key and its sums.
pub type Row = (RowKey, Counts);

/// Why the ledger cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("{}: in use by another process (a running relay?)", path.display())]
    Locked { path: PathBuf },
    #[error("{}: written by a newer relay (ledger format v{found}, this relay reads up to v{LEDGER_VERSION}); left untouched", path.display())]
    Newer { path: PathBuf, found: u64 },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Db { path: PathBuf, message: String },
    #[error("{}: damaged ({reason})", path.display())]
    Damaged { path: PathBuf, reason: String },
}

/// Files a damaged ledger at `path` was moved to (`<name>.damaged-*` beside it), oldest first.
pub fn moved_aside(path: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Vec::new();
    };
    let prefix = format!("{}.damaged-", name.to_string_lossy());
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

/// What `relay usage` says about ledgers moved aside beside `path`.
pub fn notices(path: &Path) -> Vec<String> {
    moved_aside(path)
        .iter()
        .map(|p| {
            format!(
                "a damaged usage ledger was moved aside to {}; spending recorded before then is in that file, not in this report",
                p.display()
            )
        })
        .collect()
}

/// Whether a redb error means the file itself is damaged (as opposed to the file system).
fn is_damage(e: &redb::Error) -> bool {
    match e {
        redb::Error::Corrupted(_) => true,
        redb::Error::Io(io) => matches!(
            io.kind(),
            std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::InvalidData
                | std::io::ErrorKind::InvalidInput
        ),
        _ => false,
    }
}

/// The open ledger file.
pub struct Ledger {
    db: Database,
    path: PathBuf,
}

impl Ledger {
    /// Opens (or creates) the ledger at `path`. Blocking: call on the blocking pool. A damaged
    /// file is [`LedgerError::Damaged`], a panic inside redb on it included.
    pub fn open(path: &Path) -> Result<Ledger, LedgerError> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Ledger::open_unguarded(path)
        }))
        .unwrap_or_else(|panic| {
            Err(LedgerError::Damaged {
                path: path.to_owned(),
                reason: format!(
                    "redb failed on the file: {}",
                    crate::files::panic_text(&*panic)
                ),
            })
        })
    }

    /// [`Ledger::open`]; a damaged file is moved aside to `<path>.damaged-<secs>` (never
    /// deleted) and a new ledger started. Returns where the damaged file went, if it did.
    pub fn open_or_recover(
        path: &Path,
        secs: u64,
    ) -> Result<(Ledger, Option<PathBuf>), LedgerError> {
        match Ledger::open(path) {
            Err(LedgerError::Damaged { reason, .. }) => {
                let target = crate::files::move_aside(path, &format!("damaged-{secs}")).map_err(
                    |source| LedgerError::Io {
                        path: path.to_owned(),
                        source,
                    },
                )?;
                tracing::error!(
                    path = %path.display(),
                    moved_to = %target.display(),
                    %reason,
                    "usage ledger damaged: moved it aside (not deleted) and started a new one; spending recorded before now is in the moved file, and budgets count from zero"
                );
                Ok((Ledger::open(path)?, Some(target)))
            }
            other => other.map(|l| (l, None)),
        }
    }

    fn open_unguarded(path: &Path) -> Result<Ledger, LedgerError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| LedgerError::Io {
                path: path.to_owned(),
                source,
            })?;
        }
        let db = match Database::create(path) {
            Ok(db) => db,
            Err(DatabaseError::DatabaseAlreadyOpen) => {
                return Err(LedgerError::Locked {
                    path: path.to_owned(),
                })
            }
            Err(e) => {
                let e = redb::Error::from(e);
                return Err(if is_damage(&e) {
                    LedgerError::Damaged {
                        path: path.to_owned(),
                        reason: e.to_string(),
                    }
                } else {
                    LedgerError::Db {
                        path: path.to_owned(),
                        message: e.to_string(),
                    }
                });
            }
        };
        let l = Ledger {
            db,
            path: path.to_owned(),
        };
        l.prepare()?;
        Ok(l)
    }

    fn err(&self, e: impl Into<redb::Error>) -> LedgerError {
        let e = e.into();
        if is_damage(&e) {
            LedgerError::Damaged {
                path: self.path.clone(),
                reason: e.to_string(),
            }
        } else {
            LedgerError::Db {
                path: self.path.clone(),
                message: e.to_string(),
            }
        }
    }

    /// Creates the tables of a new file, checks the version of an existing one, migrates older ones.
    fn prepare(&self) -> Result<(), LedgerError> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| self.err(e))?;
            let found = meta
                .get("version")
                .map_err(|e| self.err(e))?
                .map(|v| v.value());
            match found {
                None => {
                    meta.insert("version", LEDGER_VERSION)
                        .map_err(|e| self.err(e))?;
                }
                Some(v) if v > LEDGER_VERSION => {
                    return Err(LedgerError::Newer {
                        path: self.path.clone(),
                        found: v,
                    })
                }
                // v1 is the first format: nothing to migrate yet. A future format adds its
                // migration here, in this transaction.
                Some(_) => {}
            }
            txn.open_table(USAGE).map_err(|e| self.err(e))?;
        }
        txn.commit().map_err(|e| self.err(e))
    }

    /// Adds every row of `batch` to the stored sums, in one transaction.
    pub fn add(&self, batch: &HashMap<RowKey, Counts>) -> Result<(), LedgerError> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut t = txn.open_table(USAGE).map_err(|e| self.err(e))?;
            for (k, c) in batch {
                let key = k.encode();
                let mut sum = t
                    .get(key.as_str())
                    .map_err(|e| self.err(e))?
                    .map(|v| Counts::decode(v.value()))
                    .unwrap_or_default();
                sum.add(c);
                t.insert(key.as_str(), sum.encode().as_slice())
                    .map_err(|e| self.err(e))?;
            }
        }
        txn.commit().map_err(|e| self.err(e))
    }

    /// Rows of `since` (`YYYY-MM-DD`) and later, in key order.
    pub fn rows(&self, since: &str) -> Result<Vec<Row>, LedgerError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = txn.open_table(USAGE).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for item in t.range(since..).map_err(|e| self.err(e))? {
            let (k, v) = item.map_err(|e| self.err(e))?;
            if let Some(key) = RowKey::decode(k.value()) {
                out.push((key, Counts::decode(v.value())));
            }
        }
        Ok(out)
    }
}

// `Add` is nearly every message: kept inline (no allocation per request) at the cost of a larger
// slot in the bounded queue.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Add(RowKey, Counts),
    Rows(String, oneshot::Sender<Result<Vec<Row>, String>>),
    Close(oneshot::Sender<()>),
}

/// The handle to the ledger's writer task (module docs).
pub struct Writer {
    tx: mpsc::Sender<Msg>,
    full: Arc<AtomicBool>,
    /// Batches committed so far (sent by the writer task only).
    commits: watch::Receiver<u64>,
}

impl Writer {
    /// Starts the writer task, which owns `ledger` until [`Writer::close`].
    pub fn spawn(ledger: Ledger) -> Writer {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (commits_tx, commits) = watch::channel(0);
        tokio::spawn(run(Arc::new(ledger), rx, commits_tx));
        Writer {
            tx,
            full: Arc::new(AtomicBool::new(false)),
            commits,
        }
    }

    /// Batches committed so far; changes after each commit.
    pub fn commits(&self) -> watch::Receiver<u64> {
        self.commits.clone()
    }

    /// Queues one request's record. Never waits.
    pub fn add(&self, key: RowKey, counts: Counts) {
        match self.tx.try_send(Msg::Add(key, counts)) {
            Ok(()) => {
                self.full.store(false, Ordering::Relaxed);
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                if !self.full.swap(true, Ordering::Relaxed) {
                    tracing::warn!("usage ledger queue is full; records are being dropped");
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Commits what is queued, then reads the rows from `since` on.
    pub async fn rows(&self, since: String) -> Result<Vec<Row>, String> {
        let (ack, rx) = oneshot::channel();
        self.tx
            .send(Msg::Rows(since, ack))
            .await
            .map_err(|_| "the usage ledger is closed".to_string())?;
        rx.await
            .map_err(|_| "the usage ledger is closed".to_string())?
    }

    /// Commits what is queued and closes the file (its lock is released when this returns).
    pub async fn close(&self) {
        let (ack, rx) = oneshot::channel();
        if self.tx.send(Msg::Close(ack)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// The writer task. After a record arrives it lets more gather for [`GATHER`] (taking them off the
/// queue in one go), so a stream of requests wakes it a hundred times a second at most, not once
/// per request.
async fn run(ledger: Arc<Ledger>, mut rx: mpsc::Receiver<Msg>, commits: watch::Sender<u64>) {
    let mut w = Task {
        ledger,
        commits,
        pending: HashMap::new(),
        failing: false,
    };
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = rx.recv() => {
                let Some(msg) = msg else {
                    w.flush().await;
                    return;
                };
                let gather = matches!(msg, Msg::Add(..));
                if let Some(ack) = w.handle(msg).await {
                    return w.close(ack);
                }
                if gather {
                    tokio::time::sleep(GATHER).await;
                    while let Ok(msg) = rx.try_recv() {
                        if let Some(ack) = w.handle(msg).await {
                            return w.close(ack);
                        }
                    }
                }
            },
            _ = tick.tick() => w.flush().await,
        }
    }
}

/// How long the writer task lets records gather after one arrives.
const GATHER: Duration = Duration::from_millis(10);

/// The writer task's state.
struct Task {
    ledger: Arc<Ledger>,
    commits: watch::Sender<u64>,
    /// Records summed since the last commit.
    pending: HashMap<RowKey, Counts>,
    /// Whether the last commit failed (so an outage is logged once).
    failing: bool,
}

impl Task {
    /// One message; the close's acknowledgement once the ledger is to close (everything is
    /// committed by then).
    async fn handle(&mut self, msg: Msg) -> Option<oneshot::Sender<()>> {
        match msg {
            Msg::Add(k, c) => {
                self.pending.entry(k).or_default().add(&c);
                if self.pending.len() >= MAX_PENDING {
                    self.flush().await;
                }
            }
            Msg::Rows(since, ack) => {
                self.flush().await;
                let l = self.ledger.clone();
                let rows = tokio::task::spawn_blocking(move || l.rows(&since))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()));
                let _ = ack.send(rows);
            }
            Msg::Close(ack) => {
                self.flush().await;
                return Some(ack);
            }
        }
        None
    }

    /// Drops the ledger (releasing its file), then tells the closer.
    fn close(self, ack: oneshot::Sender<()>) {
        drop(self);
        let _ = ack.send(());
    }

    async fn flush(&mut self) {
        flush(
            &self.ledger,
            &mut self.pending,
            &mut self.failing,
            &self.commits,
        )
        .await;
    }
}

/// Commits `pending`; on failure keeps it to retry at the next tick.
async fn flush(
    ledger: &Arc<Ledger>,
    pending: &mut HashMap<RowKey, Counts>,
    failing: &mut bool,
    commits: &watch::Sender<u64>,
) {
    if pending.is_empty() {
        return;
    }
    let batch = std::mem::take(pending);
    let l = ledger.clone();
    let result = tokio::task::spawn_blocking(move || l.add(&batch).map_err(|e| (e, batch))).await;
    match result {
        Ok(Ok(())) => {
            commits.send_modify(|n| *n += 1);
            if std::mem::replace(failing, false) {
                tracing::info!("usage ledger writes work again");
            }
        }
        Ok(Err((e, batch))) => {
            if !std::mem::replace(failing, true) {
                tracing::warn!("usage ledger write failed, will retry: {e}");
            }
            for (k, c) in batch {
                pending.entry(k).or_default().add(&c);
            }
        }
        Err(e) => tracing::warn!("usage ledger writer: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(day: &str, model: &str, k: &str) -> RowKey {
        RowKey {
            day: day.into(),
            provider: "openai".into(),
            model: model.into(),
            key: k.into(),
            session: "none".into(),
        }
    }

    #[test]
    fn rows_written_before_sessions_read_as_session_none() {
        let old = format!("2026-12-01{SEP}openai{SEP}gpt-4o{SEP}key-ab12");
        let k = RowKey::decode(&old).unwrap();
        assert_eq!(k.session, "none");
        let new = RowKey {
            session: session_label(Some(" claude-20261202 ")),
            ..k.clone()
        };
        assert_eq!(RowKey::decode(&new.encode()).unwrap(), new);
        assert_eq!(new.session, "claude-20261202");
        assert_eq!(session_label(None), "none");
        assert_eq!(session_label(Some(&format!("a{SEP}b"))), "ab");
        assert_eq!(session_label(Some(&"x".repeat(100))).len(), SESSION_MAX);
    }

    #[test]
    fn counts_round_trip_and_short_values_read_as_zero() {
        let c = Counts {
            requests: 3,
            cost_micros: 7,
            saved_micros: 9,
            ..Default::default()
        };
        assert_eq!(Counts::decode(&c.encode()), c);
        let short = &c.encode()[..16];
        assert_eq!(Counts::decode(short).requests, 3);
        assert_eq!(Counts::decode(short).saved_micros, 0);
    }

    #[test]
    fn rows_accumulate_and_persist_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("usage.redb");
        {
            let l = Ledger::open(&path).unwrap();
            let one = Counts {
                requests: 1,
                cost_micros: 5,
                ..Default::default()
            };
            let mut batch = HashMap::new();
            batch.insert(key("2025-11-24", "gpt-4o", "a"), one);
            batch.insert(key("2025-11-25", "gpt-4o", "a"), one);
            l.add(&batch).unwrap();
            l.add(&batch).unwrap();
            assert!(matches!(
                Ledger::open(&path),
                Err(LedgerError::Locked { .. })
            ));
        }
        let l = Ledger::open(&path).unwrap();
        let rows = l.rows("2025-11-25").unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].0, key("2025-11-25", "gpt-4o", "a"));
        assert_eq!((rows[0].1.requests, rows[0].1.cost_micros), (2, 10));
        assert_eq!(l.rows("2025-01-01").unwrap().len(), 2);
    }

    /// Nothing reads or closes the ledger: the writer's tick alone commits what was queued, within
    /// FLUSH_EVERY (the paused clock jumps to the tick).
    #[tokio::test(start_paused = true)]
    async fn the_writer_commits_on_its_own_every_second() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.redb");
        let w = Writer::spawn(Ledger::open(&path).unwrap());
        let mut commits = w.commits();
        let started = tokio::time::Instant::now();
        w.add(
            key("2025-11-25", "gpt-4o", "a"),
            Counts {
                requests: 1,
                ..Default::default()
            },
        );
        tokio::time::timeout(Duration::from_secs(10), commits.wait_for(|n| *n >= 1))
            .await
            .expect("committed without a read or close")
            .unwrap();
        assert!(started.elapsed() <= FLUSH_EVERY, "{:?}", started.elapsed());
        w.close().await;
        let rows = Ledger::open(&path).unwrap().rows("2025-11-25").unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].1.requests, 1);
    }

    #[test]
    fn a_newer_format_is_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.redb");
        {
            let l = Ledger::open(&path).unwrap();
            let txn = l.db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert("version", LEDGER_VERSION + 1)
                .unwrap();
            txn.commit().unwrap();
        }
        let err = Ledger::open(&path).err().unwrap();
        assert!(matches!(err, LedgerError::Newer { found: 2, .. }), "{err}");
        assert!(path.exists());
    }
}
