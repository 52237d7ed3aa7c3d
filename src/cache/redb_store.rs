//! The default cache backend: one redb file (default [`default_path`]).
//!
//! Tables: `entries` (key → encoded entry, see the private codec), `info` (key → created, expires,
//! size, hits: what eviction, expiry and hit counting touch without reading bodies), `by_created`
//! ((created_ms, key), the oldest-first eviction and newest-first listing order), `by_expiry`
//! ((expires_ms, key), swept by every write batch) and `meta` (schema version, [`KEY_VERSION`], and
//! the entry, byte and hit totals kept in step with every write).
//!
//! Threads: ONE writer thread owns every write transaction. [`Store::put`] puts the entry in a
//! small sharded "pending" map (so reads see it at once) and queues it; the writer drains the queue
//! and commits everything drained (puts, removals, hit counts, expiry sweep, eviction) in one
//! transaction, then drops the pending copies. Reads first look in the in-memory front
//! (`hot`: recently written and read entries, up to 64 MiB, kept consistent by the writer), then run on
//! tokio's blocking pool; redb's MVCC lets them proceed while the writer commits. Batches of nothing
//! but hit counts commit without an fsync, with a durable commit at least once a second.
//!
//! Recovery: a file redb cannot open, or whose `meta` versions differ from this build's, is moved
//! aside (`<name>.corrupt-<unix secs>` or `<name>.old-v<schema>`) with one warning, and an empty
//! store starts in its place. A file held by another process is [`StoreError::Locked`]: redb allows
//! one process per file, so the CLI then goes through the running server.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use redb::{Database, DatabaseError, ReadableTable, StorageError, TableDefinition, TableError};
use tokio::sync::{mpsc, oneshot};

use super::codec;
use super::entry::Entry;
use super::hot::{self, Hot};
use super::key::{CacheKey, KeyPrefix, KEY_VERSION};
use super::present::Present;
use super::store::{
    ListFilter, ListItem, Pending, Stats, Store, StoreError, StoreOptions, WriteHealth,
    WriteOp as Op,
};

/// Version of this file's table layout and the entry codec. Bump on any change: files of another
/// version are moved aside at open.
pub const SCHEMA_VERSION: u64 = 1;

const BACKEND: &str = "redb";
/// Writes that may wait for the writer; a put beyond this fails with [`StoreError::QueueFull`].
const QUEUE_CAPACITY: usize = 1024;
/// Most operations committed in one transaction.
const MAX_BATCH: usize = 256;
/// How long writes nobody waits for gather before a commit (see [`Writer::run`]).
const BATCH_WINDOW: std::time::Duration = std::time::Duration::from_millis(10);
/// Most expired entries one write batch removes (the rest go in the next batches).
const SWEEP_LIMIT: usize = 1000;
/// `info.expires` of an entry that never expires.
const NEVER: u64 = u64::MAX;

const ENTRIES: TableDefinition<[u8; 32], &[u8]> = TableDefinition::new("entries");
/// key → (created_ms, expires_ms or NEVER, size, hits).
const INFO: TableDefinition<[u8; 32], (u64, u64, u64, u64)> = TableDefinition::new("info");
const BY_CREATED: TableDefinition<(u64, [u8; 32]), ()> = TableDefinition::new("by_created");
const BY_EXPIRY: TableDefinition<(u64, [u8; 32]), ()> = TableDefinition::new("by_expiry");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

const META_SCHEMA: &str = "schema_version";
const META_KEY: &str = "key_version";
const META_ENTRIES: &str = "entries";
const META_BYTES: &str = "bytes";
const META_HITS: &str = "hits";

/// Where the cache lives when `cache.path` is not set: `<data dir>/relay/cache.redb`
/// (`~/.local/share` on Linux, `~/Library/Application Support` on macOS, `%APPDATA%` on Windows).
/// `None` when the platform has no data directory (no home directory).
pub fn default_path() -> Option<PathBuf> {
    dirs::data_dir().map(|d| d.join("relay").join("cache.redb"))
}

/// The redb-backed [`Store`]. Open once per process; share as `Arc<dyn Store>`.
pub struct RedbStore {
    path: PathBuf,
    opts: StoreOptions,
    /// `None` once closed.
    db: Arc<ArcSwapOption<DbHandle>>,
    /// Set by `close`: no more reads or writes. (The handle above is also empty while the writer
    /// reopens the file.)
    closed: AtomicBool,
    /// Resolves when the database is dropped (the file lock released), taken by `close`. Shared
    /// with the writer, which replaces it when it reopens the file.
    released: Arc<Mutex<Option<oneshot::Receiver<()>>>>,
    tx: mpsc::Sender<Op>,
    /// Hits, counted off the writer queue (see [`Hits`]).
    hits: Hits,
    pending: Arc<Pending>,
    hot: Arc<Hot>,
    /// The keys the file may hold; `None` when they could not be read at open (every lookup then
    /// reads the file).
    present: Option<Arc<Present>>,
    /// Lookups that read the file (neither in memory nor known to be absent).
    file_reads: AtomicU64,
    seq: AtomicU64,
    write_errors: Arc<AtomicU64>,
}

/// Hit counting without waking the writer per hit: a hit is a key on a bounded queue the writer
/// never waits on, drained at its next commit; the ticker makes sure that happens within about a
/// second ([`LAZY_SYNC`]). A hit that finds the queue full is not counted (bookkeeping only).
struct Hits {
    queue: std::sync::mpsc::SyncSender<CacheKey>,
    /// Set when a hit was queued since the ticker last looked.
    queued: Arc<AtomicBool>,
}

impl Hits {
    fn count(&self, key: CacheKey) {
        if self.queue.try_send(key).is_ok() && !self.queued.load(Ordering::Relaxed) {
            self.queued.store(true, Ordering::Relaxed);
        }
    }
}

/// Most hits queued between two commits (32 bytes each).
const HITS_CAPACITY: usize = 64 * 1024;

/// The ticker thread: every [`LAZY_SYNC`], asks the writer to commit queued hits and to make
/// lazy commits durable, when there are any. Holds a weak sender: it never keeps the writer alive,
/// and ends once the writer is gone.
fn tick(tx: mpsc::WeakSender<Op>, queued: Arc<AtomicBool>, lazy: Arc<AtomicBool>) {
    loop {
        std::thread::sleep(LAZY_SYNC);
        let Some(tx) = tx.upgrade() else { return };
        if queued.swap(false, Ordering::Relaxed) | lazy.swap(false, Ordering::Relaxed) {
            if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(Op::Tick) {
                return;
            }
        }
    }
}

impl RedbStore {
    /// Opens (creating it and its directory if needed) the cache file at `path`, recovering from a
    /// damaged or outdated file as the module docs say, and starts the writer thread.
    ///
    /// Blocking (file I/O, possibly a redb repair after a crash): call it before serving, or from
    /// `spawn_blocking`. Fails with [`StoreError::Locked`] when another process holds the file.
    pub fn open(path: impl Into<PathBuf>, opts: StoreOptions) -> Result<RedbStore, StoreError> {
        let path = path.into();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
                path: dir.to_owned(),
                source,
            })?;
        }
        let (db, present) = open_with_keys(&path, &opts)?;
        let present = Some(Arc::new(present));
        let (released_tx, released_rx) = oneshot::channel();
        let db = Arc::new(DbHandle {
            db: Some(db),
            on_drop: Some(released_tx),
        });
        let released = Arc::new(Mutex::new(Some(released_rx)));
        let slot = Arc::new(ArcSwapOption::new(Some(db.clone())));
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let (hits_tx, hits_rx) = std::sync::mpsc::sync_channel(HITS_CAPACITY);
        let queued = Arc::new(AtomicBool::new(false));
        let lazy = Arc::new(AtomicBool::new(false));
        let pending = Arc::new(Pending::default());
        let hot = Arc::new(Hot::new(opts.max_bytes.min(hot::DEFAULT_BUDGET)));
        let write_errors = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            db: db.clone(),
            slot: slot.clone(),
            released: released.clone(),
            path: path.clone(),
            rx,
            hits: hits_rx,
            pending: pending.clone(),
            hot: hot.clone(),
            present: present.clone(),
            opts: opts.clone(),
            health: WriteHealth::new("redb", write_errors.clone()),
            last_durable: std::time::Instant::now(),
            lazy: lazy.clone(),
            synced: true,
            last_commit: std::time::Instant::now(),
        };
        let spawn_failed = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        std::thread::Builder::new()
            .name("relay-cache-writer".into())
            .spawn(move || writer.run())
            .map_err(spawn_failed)?;
        let (weak, ticked) = (tx.downgrade(), queued.clone());
        std::thread::Builder::new()
            .name("relay-cache-tick".into())
            .spawn(move || tick(weak, ticked, lazy))
            .map_err(spawn_failed)?;
        Ok(RedbStore {
            path,
            opts,
            db: slot,
            closed: AtomicBool::new(false),
            released,
            tx,
            hits: Hits {
                queue: hits_tx,
                queued,
            },
            pending,
            hot,
            present,
            file_reads: AtomicU64::new(0),
            seq: AtomicU64::new(0),
            write_errors,
        })
    }

    /// Lookups so far that had to read the file.
    pub fn file_reads(&self) -> u64 {
        self.file_reads.load(Ordering::Relaxed)
    }

    /// The file this store uses.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `read` on the blocking pool against the open database.
    async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.load_full().ok_or(StoreError::Closed)?;
        tokio::task::spawn_blocking(move || read(db.db()))
            .await
            .map_err(|e| StoreError::backend(BACKEND, e))?
    }

    /// Queues an operation that does not need an answer; dropped when the queue is full.
    fn nudge(&self, op: Op) {
        let _ = self.tx.try_send(op);
    }

    /// The lookup behind `get` and `get_shared`: counts the hit (a hot slot's count is taken by
    /// the caller, through [`hot::Slot::hit`] or [`hot::Slot::hit_shared`]).
    async fn find(&self, key: CacheKey) -> Result<Option<Found>, StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        let now = self.opts.clock.now_ms();
        if let Some(slot) = self.hot.get(&key) {
            if slot.entry.is_expired(now) {
                self.nudge(Op::Expire(key));
                return Ok(None);
            }
            self.hits.count(key);
            return Ok(Some(Found::Hot(slot)));
        }
        if let Some(entry) = self.pending.get(&key) {
            if entry.is_expired(now) {
                return Ok(None);
            }
            self.hits.count(key);
            return Ok(Some(Found::Shared(entry)));
        }
        if self.present.as_ref().is_some_and(|p| !p.may_hold(&key)) {
            return Ok(None);
        }
        self.file_reads.fetch_add(1, Ordering::Relaxed);
        let generation = self.hot.generation();
        let found = self
            .read(move |db| {
                let txn = db.begin_read().map_err(db_err)?;
                let info = txn.open_table(INFO).map_err(db_err)?;
                let Some(info) = info.get(key.as_bytes()).map_err(db_err)? else {
                    return Ok(Lookup::Missing);
                };
                let info = Info::from(info.value());
                if info.expires <= now {
                    return Ok(Lookup::Expired);
                }
                let entries = txn.open_table(ENTRIES).map_err(db_err)?;
                let Some(raw) = entries.get(key.as_bytes()).map_err(db_err)? else {
                    return Ok(Lookup::Missing);
                };
                let mut entry = codec::decode(Bytes::copy_from_slice(raw.value()))
                    .map_err(|e| corrupt(&key, e))?;
                entry.meta.hits = info.hits;
                Ok(Lookup::Found(Box::new(entry)))
            })
            .await?;
        match found {
            Lookup::Missing => Ok(None),
            Lookup::Expired => {
                self.nudge(Op::Expire(key));
                Ok(None)
            }
            Lookup::Found(entry) => {
                self.hits.count(key);
                let (size, hits) = (entry.size(), entry.meta.hits);
                let kept: Arc<Entry> = Arc::from(entry);
                self.hot
                    .insert_if(generation, key, kept.clone(), size, hits + 1);
                Ok(Some(Found::Shared(kept)))
            }
        }
    }

    /// Queues an operation and waits for the writer's answer.
    async fn ask<T>(&self, op: impl FnOnce(oneshot::Sender<T>) -> Op) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(op(reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)
    }
}

/// The keys the file holds (read once, when the store opens).
fn keys_held(db: &Database) -> Result<Present, StoreError> {
    let present = Present::default();
    let txn = db.begin_read().map_err(db_err)?;
    let info = txn.open_table(INFO).map_err(db_err)?;
    for row in info.iter().map_err(db_err)? {
        let (key, _) = row.map_err(db_err)?;
        present.insert(&CacheKey::from_bytes(key.value()));
    }
    Ok(present)
}

/// What [`RedbStore::find`] found: a slot of the in-memory front, or an entry queued for the
/// writer or read from the file (the `Arc` the front keeps, when it took it).
enum Found {
    Hot(Arc<hot::Slot>),
    Shared(Arc<Entry>),
}

impl Store for RedbStore {
    fn get(&self, key: CacheKey) -> BoxFuture<'_, Result<Option<Entry>, StoreError>> {
        Box::pin(async move {
            Ok(self.find(key).await?.map(|found| match found {
                Found::Hot(slot) => slot.hit(),
                Found::Shared(entry) => Entry::clone(&entry),
            }))
        })
    }

    fn get_shared(&self, key: CacheKey) -> BoxFuture<'_, Result<Option<Arc<Entry>>, StoreError>> {
        Box::pin(async move {
            Ok(self.find(key).await?.map(|found| match found {
                Found::Hot(slot) => slot.hit_shared(),
                Found::Shared(entry) => entry,
            }))
        })
    }

    fn shares_entries(&self) -> bool {
        true
    }

    fn put(&self, key: CacheKey, mut entry: Entry) -> Result<(), StoreError> {
        // The writer may not have dropped its queue yet when `close` returns. (While the writer
        // reopens the file, puts queue for it.)
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        let size = self.opts.check_size(&entry)?;
        // Kept in memory (the front, the pending queue) for as long as it is hot.
        entry.compact();
        let entry = Arc::new(entry);
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        self.pending
            .queue_put(&self.tx, seq, key, entry.clone(), size)?;
        let hits = entry.meta.hits;
        self.hot.insert(key, entry, size, hits);
        Ok(())
    }

    fn remove(&self, key: CacheKey) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move { self.ask(|reply| Op::Remove { key, reply }).await? })
    }

    fn list(&self, filter: ListFilter) -> BoxFuture<'_, Result<Vec<ListItem>, StoreError>> {
        Box::pin(async move {
            self.flush().await?;
            let now = self.opts.clock.now_ms();
            self.read(move |db| {
                let txn = db.begin_read().map_err(db_err)?;
                let by_created = txn.open_table(BY_CREATED).map_err(db_err)?;
                let info = txn.open_table(INFO).map_err(db_err)?;
                let entries = txn.open_table(ENTRIES).map_err(db_err)?;
                let limit = filter.limit.unwrap_or(usize::MAX);
                let mut out = Vec::new();
                for row in by_created.iter().map_err(db_err)?.rev() {
                    if out.len() >= limit {
                        break;
                    }
                    let key = CacheKey::from_bytes(row.map_err(db_err)?.0.value().1);
                    let Some(i) = info.get(key.as_bytes()).map_err(db_err)? else {
                        continue;
                    };
                    let i = Info::from(i.value());
                    if i.expires <= now {
                        continue;
                    }
                    let Some(raw) = entries.get(key.as_bytes()).map_err(db_err)? else {
                        continue;
                    };
                    let mut meta = match codec::decode_meta(raw.value()) {
                        Ok(meta) => meta,
                        Err(e) => {
                            tracing::warn!(key = %key.short(), error = %e, "skipping a damaged cache entry");
                            continue;
                        }
                    };
                    if filter.model.is_some() && meta.model != filter.model {
                        continue;
                    }
                    meta.hits = i.hits;
                    out.push((key, meta, i.size));
                }
                Ok(out)
            })
            .await
        })
    }

    fn find_prefix(
        &self,
        hex_prefix: &str,
    ) -> BoxFuture<'_, Result<Option<(CacheKey, Entry)>, StoreError>> {
        let prefix = KeyPrefix::parse(hex_prefix).map_err(|e| StoreError::bad_key(hex_prefix, e));
        Box::pin(async move {
            let prefix = prefix?;
            self.flush().await?;
            let now = self.opts.clock.now_ms();
            self.read(move |db| {
                let txn = db.begin_read().map_err(db_err)?;
                let info = txn.open_table(INFO).map_err(db_err)?;
                let (lo, hi) = prefix.range();
                let mut found: Option<(CacheKey, u64)> = None;
                for row in info
                    .range(*lo.as_bytes()..=*hi.as_bytes())
                    .map_err(db_err)?
                {
                    let (k, i) = row.map_err(db_err)?;
                    let i = Info::from(i.value());
                    if i.expires <= now {
                        continue;
                    }
                    if found.is_some() {
                        return Err(StoreError::AmbiguousPrefix {
                            prefix: prefix.as_hex(),
                        });
                    }
                    found = Some((CacheKey::from_bytes(k.value()), i.hits));
                }
                let Some((key, hits)) = found else {
                    return Ok(None);
                };
                let entries = txn.open_table(ENTRIES).map_err(db_err)?;
                let Some(raw) = entries.get(key.as_bytes()).map_err(db_err)? else {
                    return Ok(None);
                };
                let mut entry = codec::decode(Bytes::copy_from_slice(raw.value()))
                    .map_err(|e| corrupt(&key, e))?;
                entry.meta.hits = hits;
                Ok(Some((key, entry)))
            })
            .await
        })
    }

    fn clear(&self, model: Option<String>) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move { self.ask(|reply| Op::Clear { model, reply }).await? })
    }

    fn stats(&self) -> BoxFuture<'_, Result<Stats, StoreError>> {
        Box::pin(async move {
            self.flush().await?;
            let write_errors = self.write_errors.load(Ordering::Relaxed);
            self.read(move |db| {
                let txn = db.begin_read().map_err(db_err)?;
                let meta = txn.open_table(META).map_err(db_err)?;
                let counter = |name: &str| -> Result<u64, StoreError> {
                    Ok(meta.get(name).map_err(db_err)?.map_or(0, |v| v.value()))
                };
                let by_created = txn.open_table(BY_CREATED).map_err(db_err)?;
                let oldest = by_created
                    .first()
                    .map_err(db_err)?
                    .map(|(k, _)| k.value().0);
                let newest = by_created.last().map_err(db_err)?.map(|(k, _)| k.value().0);
                Ok(Stats {
                    entries: counter(META_ENTRIES)?,
                    bytes: counter(META_BYTES)?,
                    oldest_ms: oldest,
                    newest_ms: newest,
                    hits: counter(META_HITS)?,
                    write_errors,
                })
            })
            .await
        })
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move { self.ask(Op::Flush).await? })
    }

    fn close(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.closed.store(true, Ordering::Release);
            let committed = self.ask(Op::Close).await;
            // The writer has dropped its handle; drop ours and wait for readers still running.
            self.db.store(None);
            let released = self
                .released
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(released) = released {
                // An error only means the sender went with the handle: released either way.
                let _ = released.await;
            }
            committed?
        })
    }

    fn backend(&self) -> &'static str {
        BACKEND
    }
}

/// What a read of one key found.
enum Lookup {
    Missing,
    Expired,
    Found(Box<Entry>),
}

/// The database, and a signal fired once it is dropped (its file lock released).
struct DbHandle {
    db: Option<Database>,
    on_drop: Option<oneshot::Sender<()>>,
}

impl DbHandle {
    fn db(&self) -> &Database {
        self.db
            .as_ref()
            .expect("the database lives until the handle drops")
    }
}

impl Drop for DbHandle {
    fn drop(&mut self) {
        drop(self.db.take());
        if let Some(tx) = self.on_drop.take() {
            let _ = tx.send(());
        }
    }
}

/// What an applied op answers.
enum Outcome {
    Done,
    Removed(bool),
    Cleared(u64),
}

/// The writer thread's state.
struct Writer {
    db: Arc<DbHandle>,
    /// The store's handle to the database, which readers load; the writer swaps it when it
    /// reopens the file.
    slot: Arc<ArcSwapOption<DbHandle>>,
    /// The store's signal that the file is released (for `close`), replaced on reopen.
    released: Arc<Mutex<Option<oneshot::Receiver<()>>>>,
    path: PathBuf,
    rx: mpsc::Receiver<Op>,
    hits: std::sync::mpsc::Receiver<CacheKey>,
    pending: Arc<Pending>,
    hot: Arc<Hot>,
    present: Option<Arc<Present>>,
    opts: StoreOptions,
    health: WriteHealth,
    /// When the last commit that reached the disk (fsync) happened.
    last_durable: std::time::Instant,
    /// Set after a commit without fsync: the ticker then asks for a durable one.
    lazy: Arc<AtomicBool>,
    /// Whether the last commit was durable.
    synced: bool,
    /// When the last batch was committed (see [`BATCH_WINDOW`]).
    last_commit: std::time::Instant,
}

impl Writer {
    /// Commits batches until closed, or until every sender is gone.
    fn run(mut self) {
        while let Some(first) = self.rx.blocking_recv() {
            let mut closing = matches!(first, Op::Close(_));
            // Writes that can wait gather for up to a window, so a steady stream of requests
            // costs a few commits a second, not one each; a full batch or an op someone awaits
            // goes at once.
            let since = self.last_commit.elapsed();
            if !first.awaited() && since < BATCH_WINDOW && self.rx.len() < MAX_BATCH {
                std::thread::sleep(BATCH_WINDOW - since);
            }
            // Hits first, then the ops: a hit is counted after its entry was queued, so every
            // hit drained here has its put in this batch or an earlier one (drained after the
            // ops, a hit on an entry queued meanwhile would land before its put, and be lost).
            let mut hits: HashMap<CacheKey, u64> = HashMap::new();
            for key in self.hits.try_iter() {
                *hits.entry(key).or_default() += 1;
            }
            let mut batch = vec![first];
            while !closing && batch.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(op) => {
                        closing = matches!(op, Op::Close(_));
                        batch.push(op);
                    }
                    Err(_) => break,
                }
            }
            self.commit(batch, hits);
            self.last_commit = std::time::Instant::now();
            if closing {
                break;
            }
        }
    }

    /// Applies a batch in one transaction, then answers its waiters and drops its pending copies.
    ///
    /// Durability: puts, hit counts and expiry are committed without an fsync while the last
    /// durable commit is under [`LAZY_SYNC`] old, and the ticker asks for a durable commit after
    /// one that was not, so a recording reaches the disk within about a second and a stream of
    /// requests costs an fsync a second, not one per batch. A crash loses at most that second
    /// (redb keeps the file consistent at its last durable commit). Removals, clears, flushes
    /// (every `list`/`stats`) and closing are durable at once.
    fn commit(&mut self, batch: Vec<Op>, hits: HashMap<CacheKey, u64>) {
        if self.db.db.is_none() {
            // The last reopen failed (the disk still full): try again first.
            self.reopen(Broken::Io);
        }
        let urgent = batch
            .iter()
            .any(|op| op.awaited() || matches!(op, Op::Tick));
        let result =
            if batch.iter().any(Op::mutates) || !hits.is_empty() || (urgent && !self.synced) {
                let now = self.opts.clock.now_ms();
                let durable = urgent || self.last_durable.elapsed() >= LAZY_SYNC;
                if durable {
                    self.last_durable = std::time::Instant::now();
                }
                let Some(db) = self.db.db.as_ref() else {
                    return self.answer(batch, Err(StoreError::Closed));
                };
                // redb asserts on some damage; a panic here must cost this batch, not the writer.
                let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    apply(db, &batch, &hits, now, self.opts.max_bytes, durable)
                }));
                if matches!(applied, Ok(Ok(_))) {
                    self.synced = durable;
                    if !durable {
                        self.lazy.store(true, Ordering::Relaxed);
                    }
                }
                applied.unwrap_or_else(|_| {
                    Err(StoreError::backend(
                        BACKEND,
                        "redb panicked applying a write batch",
                    ))
                })
            } else {
                Ok(Applied {
                    outcomes: batch.iter().map(|_| Outcome::Done).collect(),
                    gone: Vec::new(),
                    cleared: false,
                })
            };
        self.answer(batch, result);
    }

    /// After a batch: the in-memory front and key set follow what landed, lost puts are counted,
    /// a broken database is reopened, and each op's waiter gets its answer.
    fn answer(&mut self, batch: Vec<Op>, result: Result<Applied, StoreError>) {
        match &result {
            Ok(applied) => {
                let present = self.present.as_deref();
                if applied.cleared {
                    self.hot.clear();
                    if let Some(p) = present {
                        p.clear();
                    }
                } else {
                    self.hot.remove_all(&applied.gone);
                    if let Some(p) = present {
                        p.remove_all(&applied.gone);
                    }
                }
                // Removals first, then this batch's puts: a key removed by an earlier op or batch
                // and put again is held (see `present`).
                if let Some(present) = present {
                    for op in &batch {
                        if let Op::Put { key, .. } = op {
                            present.insert(key);
                        }
                    }
                }
            }
            Err(_) => {
                // Puts that did not land must not be served from memory either.
                let lost: Vec<CacheKey> = batch
                    .iter()
                    .filter_map(|op| match op {
                        Op::Put { key, .. } => Some(*key),
                        _ => None,
                    })
                    .collect();
                self.hot.remove_all(&lost);
            }
        }
        self.health.committed(&result, || {
            batch
                .iter()
                .filter(|op| matches!(op, Op::Put { .. }))
                .count()
        });
        if let Err(e) = &result {
            let closing = batch.iter().any(|op| matches!(op, Op::Close(_)));
            if let (Some(broken), false) = (Broken::of(e), closing) {
                self.reopen(broken);
            }
        }
        let mut outcomes = match result {
            Ok(applied) => applied.outcomes.into_iter().map(Ok).collect::<Vec<_>>(),
            Err(e) => {
                let msg = e.to_string();
                batch
                    .iter()
                    .map(|_| Err(StoreError::backend(BACKEND, msg.clone())))
                    .collect()
            }
        }
        .into_iter();
        for op in batch {
            let outcome = outcomes.next().unwrap_or(Ok(Outcome::Done));
            match op {
                Op::Put { key, seq, .. } => self.pending.settle(&key, seq),
                Op::Hit(_) | Op::Expire(_) | Op::Tick => {}
                Op::Remove { reply, .. } => {
                    let _ = reply.send(outcome.map(|o| matches!(o, Outcome::Removed(true))));
                }
                Op::Clear { reply, .. } => {
                    let _ = reply.send(outcome.map(|o| match o {
                        Outcome::Cleared(n) => n,
                        _ => 0,
                    }));
                }
                Op::Flush(reply) | Op::Close(reply) => {
                    let _ = reply.send(outcome.map(|_| ()));
                }
            }
        }
    }
}

/// A write error after which redb's handle is of no more use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Broken {
    /// The file is damaged (redb found it corrupt, read past its end, or panicked on it): it is
    /// moved aside and an empty one starts.
    Damaged,
    /// An I/O error (a full disk, a quota): redb refuses every later write ("Previous I/O error
    /// occurred") until the database is opened again. The same file is reopened once it can be.
    Io,
}

impl Broken {
    fn of(e: &StoreError) -> Option<Broken> {
        let StoreError::Backend { source, .. } = e else {
            return None;
        };
        let Some(e) = source.downcast_ref::<redb::Error>() else {
            // Only a panic inside redb makes a non-redb backend error here.
            return Some(Broken::Damaged);
        };
        match e {
            redb::Error::Corrupted(_) => Some(Broken::Damaged),
            redb::Error::Io(io) if io_means_corrupt(io) => Some(Broken::Damaged),
            redb::Error::Io(_) | redb::Error::PreviousIo => Some(Broken::Io),
            _ => None,
        }
    }
}

impl Writer {
    /// Opens the file again after `broken` (moving a damaged one aside first). Readers see the
    /// store as closed (misses) until it is back. When the file cannot be opened yet (the disk is
    /// still full), the next batch that fails tries again.
    fn reopen(&mut self, broken: Broken) {
        // Stop readers taking the old handle, then wait (briefly) for those that have it: the
        // file lock goes with the last one.
        self.slot.store(None);
        let old = std::mem::replace(
            &mut self.db,
            Arc::new(DbHandle {
                db: None,
                on_drop: None,
            }),
        );
        drop(old);
        if broken == Broken::Damaged && self.path.exists() {
            let secs = self.opts.clock.now_ms() / 1000;
            match move_aside(&self.path, &format!("corrupt-{secs}")) {
                Ok(moved) => tracing::warn!(
                    path = %self.path.display(),
                    moved_to = %moved.display(),
                    "cache store damaged while serving; moved it aside and started an empty one"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "cache store damaged and cannot be moved aside")
                }
            }
            self.hot.clear();
            if let Some(p) = &self.present {
                p.clear();
            }
        }
        let start = std::time::Instant::now();
        let opened = loop {
            match open_with_keys(&self.path, &self.opts) {
                Err(StoreError::Locked { .. }) if start.elapsed() < REOPEN_WAIT => {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                other => break other,
            }
        };
        match opened {
            Ok((db, present)) => {
                if let Some(p) = &self.present {
                    p.clear();
                    p.insert_all(&present);
                }
                let (tx, rx) = oneshot::channel();
                let handle = Arc::new(DbHandle {
                    db: Some(db),
                    on_drop: Some(tx),
                });
                *self.released.lock().unwrap_or_else(PoisonError::into_inner) = Some(rx);
                self.db = handle.clone();
                self.slot.store(Some(handle));
                tracing::info!(path = %self.path.display(), "cache store reopened");
            }
            Err(e) => {
                tracing::debug!(error = %e, "cache store cannot be reopened yet");
            }
        }
    }
}

/// How long a reopen waits for readers still holding the old database.
const REOPEN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// One write transaction over a batch: the ops in order, then the expiry sweep and eviction.
fn apply(
    db: &Database,
    batch: &[Op],
    hits: &HashMap<CacheKey, u64>,
    now: u64,
    max_bytes: u64,
    durable: bool,
) -> Result<Applied, StoreError> {
    let mut txn = db.begin_write().map_err(db_err)?;
    if !durable {
        txn.set_durability(redb::Durability::None);
    }
    let applied = {
        let mut t = Tables::open(&txn)?;
        let mut outcomes = Vec::with_capacity(batch.len());
        for op in batch {
            outcomes.push(match op {
                Op::Put {
                    key, entry, size, ..
                } => {
                    t.put(key, entry, *size)?;
                    Outcome::Done
                }
                Op::Hit(key) => {
                    t.hit(key, 1)?;
                    Outcome::Done
                }
                Op::Expire(key) => {
                    t.expire(key, now)?;
                    Outcome::Done
                }
                Op::Remove { key, .. } => Outcome::Removed(t.drop_entry(key)?),
                Op::Clear { model, .. } => Outcome::Cleared(t.clear(model.as_deref())?),
                Op::Flush(_) | Op::Close(_) | Op::Tick => Outcome::Done,
            });
        }
        for (key, n) in hits {
            t.hit(key, *n)?;
        }
        t.sweep(now)?;
        t.evict(max_bytes)?;
        t.save_totals()?;
        Applied {
            outcomes,
            gone: std::mem::take(&mut t.gone),
            cleared: t.cleared,
        }
    };
    txn.commit().map_err(db_err)?;
    Ok(applied)
}

/// What a committed batch did.
struct Applied {
    /// One per op, in order.
    outcomes: Vec<Outcome>,
    /// Entries it removed (besides replacing): to drop from the in-memory front.
    gone: Vec<CacheKey>,
    /// Whether it removed every entry.
    cleared: bool,
}

/// How long writes may go without an fsync (see [`Writer::commit`]).
const LAZY_SYNC: std::time::Duration = std::time::Duration::from_secs(1);

/// An entry's row in `info`.
#[derive(Clone, Copy)]
struct Info {
    created: u64,
    /// [`NEVER`] when the entry does not expire.
    expires: u64,
    size: u64,
    hits: u64,
}

impl From<(u64, u64, u64, u64)> for Info {
    fn from((created, expires, size, hits): (u64, u64, u64, u64)) -> Info {
        Info {
            created,
            expires,
            size,
            hits,
        }
    }
}

impl Info {
    fn row(self) -> (u64, u64, u64, u64) {
        (self.created, self.expires, self.size, self.hits)
    }
}

/// The tables of one write transaction, and the running totals.
struct Tables<'txn> {
    entries: redb::Table<'txn, [u8; 32], &'static [u8]>,
    info: redb::Table<'txn, [u8; 32], (u64, u64, u64, u64)>,
    by_created: redb::Table<'txn, (u64, [u8; 32]), ()>,
    by_expiry: redb::Table<'txn, (u64, [u8; 32]), ()>,
    meta: redb::Table<'txn, &'static str, u64>,
    count: u64,
    bytes: u64,
    hits: u64,
    /// Keys removed by [`Tables::drop_entry`].
    gone: Vec<CacheKey>,
    /// Set by a full clear.
    cleared: bool,
}

impl<'txn> Tables<'txn> {
    fn open(txn: &'txn redb::WriteTransaction) -> Result<Tables<'txn>, StoreError> {
        let meta = txn.open_table(META).map_err(db_err)?;
        let total = |name: &str| -> Result<u64, StoreError> {
            Ok(meta.get(name).map_err(db_err)?.map_or(0, |v| v.value()))
        };
        let (count, bytes, hits) = (total(META_ENTRIES)?, total(META_BYTES)?, total(META_HITS)?);
        Ok(Tables {
            entries: txn.open_table(ENTRIES).map_err(db_err)?,
            info: txn.open_table(INFO).map_err(db_err)?,
            by_created: txn.open_table(BY_CREATED).map_err(db_err)?,
            by_expiry: txn.open_table(BY_EXPIRY).map_err(db_err)?,
            meta,
            count,
            bytes,
            hits,
            gone: Vec::new(),
            cleared: false,
        })
    }

    fn put(&mut self, key: &CacheKey, entry: &Entry, size: u64) -> Result<(), StoreError> {
        self.remove(key)?;
        let k = *key.as_bytes();
        let info = Info {
            created: entry.meta.created_ms,
            expires: entry.meta.expires_ms.unwrap_or(NEVER),
            size,
            hits: entry.meta.hits,
        };
        self.entries
            .insert(k, codec::encode(entry).as_slice())
            .map_err(db_err)?;
        self.info.insert(k, info.row()).map_err(db_err)?;
        self.by_created
            .insert((info.created, k), ())
            .map_err(db_err)?;
        if info.expires != NEVER {
            self.by_expiry
                .insert((info.expires, k), ())
                .map_err(db_err)?;
        }
        self.count += 1;
        self.bytes += size;
        self.hits += info.hits;
        Ok(())
    }

    /// Removes an entry for good (not to replace it): noted in `gone`. Whether it was there.
    fn drop_entry(&mut self, key: &CacheKey) -> Result<bool, StoreError> {
        let found = self.remove(key)?.is_some();
        if found {
            self.gone.push(*key);
        }
        Ok(found)
    }

    /// Removes an entry from every table; its info when it was there.
    fn remove(&mut self, key: &CacheKey) -> Result<Option<Info>, StoreError> {
        let k = *key.as_bytes();
        let Some(info) = self
            .info
            .remove(k)
            .map_err(db_err)?
            .map(|v| Info::from(v.value()))
        else {
            return Ok(None);
        };
        self.entries.remove(k).map_err(db_err)?;
        self.by_created.remove((info.created, k)).map_err(db_err)?;
        if info.expires != NEVER {
            self.by_expiry.remove((info.expires, k)).map_err(db_err)?;
        }
        self.count = self.count.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(info.size);
        self.hits = self.hits.saturating_sub(info.hits);
        Ok(Some(info))
    }

    fn hit(&mut self, key: &CacheKey, n: u64) -> Result<(), StoreError> {
        let k = *key.as_bytes();
        let Some(mut info) = self
            .info
            .get(k)
            .map_err(db_err)?
            .map(|v| Info::from(v.value()))
        else {
            return Ok(());
        };
        info.hits += n;
        self.info.insert(k, info.row()).map_err(db_err)?;
        self.hits += n;
        Ok(())
    }

    fn expire(&mut self, key: &CacheKey, now: u64) -> Result<(), StoreError> {
        let expired = self
            .info
            .get(*key.as_bytes())
            .map_err(db_err)?
            .is_some_and(|v| Info::from(v.value()).expires <= now);
        if expired {
            self.drop_entry(key)?;
        }
        Ok(())
    }

    fn clear(&mut self, model: Option<&str>) -> Result<u64, StoreError> {
        let Some(model) = model else {
            let n = self.count;
            self.entries.retain(|_, _| false).map_err(db_err)?;
            self.info.retain(|_, _| false).map_err(db_err)?;
            self.by_created.retain(|_, _| false).map_err(db_err)?;
            self.by_expiry.retain(|_, _| false).map_err(db_err)?;
            (self.count, self.bytes, self.hits) = (0, 0, 0);
            self.cleared = true;
            return Ok(n);
        };
        let mut keys = Vec::new();
        for row in self.entries.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            if codec::decode_meta(v.value()).is_ok_and(|m| m.model.as_deref() == Some(model)) {
                keys.push(CacheKey::from_bytes(k.value()));
            }
        }
        let mut n = 0;
        for key in keys {
            n += u64::from(self.drop_entry(&key)?);
        }
        Ok(n)
    }

    /// Removes up to [`SWEEP_LIMIT`] entries expired at `now`.
    fn sweep(&mut self, now: u64) -> Result<(), StoreError> {
        let mut expired = Vec::new();
        for row in self.by_expiry.range(..=(now, [0xff; 32])).map_err(db_err)? {
            if expired.len() >= SWEEP_LIMIT {
                break;
            }
            expired.push(CacheKey::from_bytes(row.map_err(db_err)?.0.value().1));
        }
        for key in expired {
            self.drop_entry(&key)?;
        }
        Ok(())
    }

    /// Removes the oldest entries until the total is within `max_bytes`.
    fn evict(&mut self, max_bytes: u64) -> Result<(), StoreError> {
        while self.bytes > max_bytes {
            let oldest = self
                .by_created
                .first()
                .map_err(db_err)?
                .map(|(k, _)| k.value().1);
            let Some(k) = oldest else {
                break;
            };
            self.drop_entry(&CacheKey::from_bytes(k))?;
        }
        Ok(())
    }

    fn save_totals(&mut self) -> Result<(), StoreError> {
        for (name, value) in [
            (META_ENTRIES, self.count),
            (META_BYTES, self.bytes),
            (META_HITS, self.hits),
        ] {
            self.meta.insert(name, value).map_err(db_err)?;
        }
        Ok(())
    }
}

/// Why a file could not be opened as this store.
enum OpenFailure {
    /// Another process holds it.
    Locked,
    /// Moving the file aside would not help (permissions, a missing directory...).
    Fatal(StoreError),
    /// Damaged or of another version: move it aside with this suffix and start empty.
    Unusable { reason: String, suffix: String },
}

fn open_or_recover(path: &Path, opts: &StoreOptions) -> Result<Database, StoreError> {
    let secs = opts.clock.now_ms() / 1000;
    let failure = match try_open_guarded(path, secs) {
        Ok(db) => match compact_if_oversized(db, path, opts.max_bytes) {
            Some(db) => return Ok(db),
            // redb gave up half way: open it again as it is now.
            None => match try_open_guarded(path, secs) {
                Ok(db) => return Ok(db),
                Err(failure) => failure,
            },
        },
        Err(failure) => failure,
    };
    let (reason, suffix) = match failure {
        OpenFailure::Locked => return Err(locked(path)),
        OpenFailure::Fatal(e) => return Err(e),
        OpenFailure::Unusable { reason, suffix } => (reason, suffix),
    };
    let moved = move_aside(path, &suffix)?;
    tracing::warn!(
        path = %path.display(),
        moved_to = %moved.display(),
        %reason,
        "cache store unusable; moved it aside and started an empty one"
    );
    match try_open_guarded(path, secs) {
        Ok(db) => Ok(db),
        Err(OpenFailure::Locked) => Err(locked(path)),
        Err(OpenFailure::Fatal(e)) => Err(e),
        Err(OpenFailure::Unusable { reason, .. }) => Err(StoreError::backend(BACKEND, reason)),
    }
}

/// [`open_or_recover`], then the set of stored keys. Reading every key walks pages the open did
/// not touch, so a file damaged inside (not in its header) fails here, with an error or a panic
/// in redb: that file is moved aside too, and an empty one starts.
fn open_with_keys(path: &Path, opts: &StoreOptions) -> Result<(Database, Present), StoreError> {
    let db = open_or_recover(path, opts)?;
    let listed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| keys_held(&db)));
    let reason = match listed {
        Ok(Ok(present)) => return Ok((db, present)),
        Ok(Err(e)) => e.to_string(),
        Err(panic) => format!(
            "redb failed on the file: {}",
            crate::files::panic_text(&*panic)
        ),
    };
    drop(db);
    let secs = opts.clock.now_ms() / 1000;
    let moved = move_aside(path, &format!("corrupt-{secs}"))?;
    tracing::warn!(
        path = %path.display(),
        moved_to = %moved.display(),
        %reason,
        "cache store damaged (its keys cannot be read); moved it aside and started an empty one"
    );
    let db = open_or_recover(path, opts)?;
    let present = keys_held(&db)?;
    Ok((db, present))
}

/// A file this much larger than what it may hold is compacted when opened.
pub(crate) fn oversized_above(max_bytes: u64) -> u64 {
    max_bytes.saturating_mul(8).max(16 << 20)
}

/// Compacts the file when it is far larger than its size bound allows ([`oversized_above`]). redb
/// never gives space back by itself: pages freed by evictions are reused, but a burst of writes
/// (thousands a second) can grow the file, in doubling steps, to many times what it holds, and it
/// stays that size. `None` when redb panicked part way (the caller opens the file again).
fn compact_if_oversized(mut db: Database, path: &Path, max_bytes: u64) -> Option<Database> {
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let before = size(path);
    if before <= oversized_above(max_bytes) {
        return Some(db);
    }
    let started = std::time::Instant::now();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| db.compact())) {
        Ok(Ok(_)) => tracing::info!(
            path = %path.display(),
            before,
            after = size(path),
            ms = started.elapsed().as_millis() as u64,
            "cache file compacted"
        ),
        Ok(Err(e)) => {
            tracing::warn!(path = %path.display(), error = %e, "cache file not compacted")
        }
        Err(_) => {
            tracing::warn!(path = %path.display(), "cache file compaction failed in redb");
            return None;
        }
    }
    Some(db)
}

/// [`try_open`], with a panic inside redb (it asserts on some damaged headers, such as a truncated
/// file) taken as a damaged file rather than a crash. Unwinding drops the half-open database, so
/// the file lock is released before the file is moved.
fn try_open_guarded(path: &Path, secs: u64) -> Result<Database, OpenFailure> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| try_open(path, secs))).unwrap_or_else(
        |panic| {
            Err(OpenFailure::Unusable {
                reason: format!(
                    "redb failed on the file: {}",
                    crate::files::panic_text(&*panic)
                ),
                suffix: format!("corrupt-{secs}"),
            })
        },
    )
}

/// redb's own page cache. redb's default (1 GiB) would grow with the file to a gigabyte of memory
/// (measured: 40 MB/s under a stream of new requests); the decoded entries that serve hits are in
/// the front ([`hot`]), and the file's pages are in the OS page cache anyway, so a small cache for
/// the B-trees' upper pages is enough (no slower in `loadtest --only 9`).
const REDB_CACHE_BYTES: usize = 32 << 20;

fn try_open(path: &Path, secs: u64) -> Result<Database, OpenFailure> {
    let corrupt = |reason: String| OpenFailure::Unusable {
        reason,
        suffix: format!("corrupt-{secs}"),
    };
    let db = match Database::builder()
        .create_with_file_format_v3(true)
        .set_cache_size(REDB_CACHE_BYTES)
        .create(path)
    {
        Ok(db) => db,
        Err(DatabaseError::DatabaseAlreadyOpen) => return Err(OpenFailure::Locked),
        Err(DatabaseError::Storage(StorageError::Io(e))) if !io_means_corrupt(&e) => {
            return Err(OpenFailure::Fatal(StoreError::Io {
                path: path.to_owned(),
                source: e,
            }))
        }
        Err(e) => return Err(corrupt(e.to_string())),
    };
    match read_versions(&db) {
        Ok(None) => {
            init(&db).map_err(|e| corrupt(e.to_string()))?;
            Ok(db)
        }
        Ok(Some((SCHEMA_VERSION, KEY_VERSION))) => Ok(db),
        Ok(Some((schema, key))) => Err(OpenFailure::Unusable {
            reason: format!(
                "file has schema v{schema} and key v{key}; this relay uses schema v{SCHEMA_VERSION} and key v{KEY_VERSION}"
            ),
            suffix: format!("old-v{schema}"),
        }),
        Err(e) => Err(corrupt(e.to_string())),
    }
}

/// I/O errors from reading a file that is not a (whole) redb database, as opposed to errors
/// about the file system that moving the file would not fix.
fn io_means_corrupt(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::InvalidData
            | std::io::ErrorKind::InvalidInput
    )
}

/// `(schema, key)` versions recorded in the file; `None` for a new, empty database; `(0, 0)` for a
/// database without this store's `meta` table.
fn read_versions(db: &Database) -> Result<Option<(u64, u64)>, StoreError> {
    let txn = db.begin_read().map_err(db_err)?;
    let meta = match txn.open_table(META) {
        Ok(meta) => meta,
        Err(TableError::TableDoesNotExist(_)) => {
            let empty = txn.list_tables().map_err(db_err)?.next().is_none();
            return Ok(if empty { None } else { Some((0, 0)) });
        }
        Err(e) => return Err(db_err(e)),
    };
    let version = |name: &str| -> Result<u64, StoreError> {
        Ok(meta.get(name).map_err(db_err)?.map_or(0, |v| v.value()))
    };
    Ok(Some((version(META_SCHEMA)?, version(META_KEY)?)))
}

/// Creates every table and records this build's versions.
fn init(db: &Database) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(db_err)?;
    {
        txn.open_table(ENTRIES).map_err(db_err)?;
        txn.open_table(INFO).map_err(db_err)?;
        txn.open_table(BY_CREATED).map_err(db_err)?;
        txn.open_table(BY_EXPIRY).map_err(db_err)?;
        let mut meta = txn.open_table(META).map_err(db_err)?;
        for (name, value) in [
            (META_SCHEMA, SCHEMA_VERSION),
            (META_KEY, KEY_VERSION),
            (META_ENTRIES, 0),
            (META_BYTES, 0),
            (META_HITS, 0),
        ] {
            meta.insert(name, value).map_err(db_err)?;
        }
    }
    txn.commit().map_err(db_err)
}

/// [`crate::files::move_aside`], as a store error.
fn move_aside(path: &Path, suffix: &str) -> Result<PathBuf, StoreError> {
    crate::files::move_aside(path, suffix).map_err(|source| StoreError::Io {
        path: path.to_owned(),
        source,
    })
}

fn locked(path: &Path) -> StoreError {
    StoreError::Locked {
        path: path.to_owned(),
    }
}

fn db_err(e: impl Into<redb::Error>) -> StoreError {
    StoreError::backend(BACKEND, e.into())
}

fn corrupt(key: &CacheKey, e: codec::CodecError) -> StoreError {
    StoreError::Corrupt {
        key: key.hex(),
        reason: e.to_string(),
    }
}
