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

pub(crate) mod open;
mod tables;
mod writer;

use open::*;
use tables::*;
use writer::*;

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
                    if !filter.admits(&meta) {
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
