//! The one writer thread: batches queued ops into transactions, fsyncs lazily, sweeps expired
//! entries, evicts past the size bound, and reopens the file after damage or an I/O error.

use super::*;

/// What an applied op answers.
pub(super) enum OpDone {
    Done,
    Removed(bool),
    Cleared(u64),
}

/// The writer thread's state.
pub(super) struct Writer {
    pub(super) db: Arc<DbHandle>,
    /// The store's handle to the database, which readers load; the writer swaps it when it
    /// reopens the file.
    pub(super) slot: Arc<ArcSwapOption<DbHandle>>,
    /// The store's signal that the file is released (for `close`), replaced on reopen.
    pub(super) released: Arc<Mutex<Option<oneshot::Receiver<()>>>>,
    pub(super) path: PathBuf,
    pub(super) rx: mpsc::Receiver<Op>,
    pub(super) hits: std::sync::mpsc::Receiver<CacheKey>,
    pub(super) pending: Arc<Pending>,
    pub(super) hot: Arc<Hot>,
    pub(super) present: Option<Arc<Present>>,
    pub(super) opts: StoreOptions,
    pub(super) health: WriteHealth,
    /// When the last commit that reached the disk (fsync) happened.
    pub(super) last_durable: std::time::Instant,
    /// Set after a commit without fsync: the ticker then asks for a durable one.
    pub(super) lazy: Arc<AtomicBool>,
    /// Whether the last commit was durable.
    pub(super) synced: bool,
    /// When the last batch was committed (see [`BATCH_WINDOW`]).
    pub(super) last_commit: std::time::Instant,
}

impl Writer {
    /// Commits batches until closed, or until every sender is gone.
    pub(super) fn run(mut self) {
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
    pub(super) fn commit(&mut self, batch: Vec<Op>, hits: HashMap<CacheKey, u64>) {
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
                    outcomes: batch.iter().map(|_| OpDone::Done).collect(),
                    gone: Vec::new(),
                    cleared: false,
                })
            };
        self.answer(batch, result);
    }

    /// After a batch: the in-memory front and key set follow what landed, lost puts are counted,
    /// a broken database is reopened, and each op's waiter gets its answer.
    pub(super) fn answer(&mut self, batch: Vec<Op>, result: Result<Applied, StoreError>) {
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
            let outcome = outcomes.next().unwrap_or(Ok(OpDone::Done));
            match op {
                Op::Put { key, seq, .. } => self.pending.settle(&key, seq),
                Op::Hit(_) | Op::Expire(_) | Op::Tick => {}
                Op::Remove { reply, .. } => {
                    let _ = reply.send(outcome.map(|o| matches!(o, OpDone::Removed(true))));
                }
                Op::Clear { reply, .. } => {
                    let _ = reply.send(outcome.map(|o| match o {
                        OpDone::Cleared(n) => n,
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
pub(super) enum Broken {
    /// The file is damaged (redb found it corrupt, read past its end, or panicked on it): it is
    /// moved aside and an empty one starts.
    Damaged,
    /// An I/O error (a full disk, a quota): redb refuses every later write ("Previous I/O error
    /// occurred") until the database is opened again. The same file is reopened once it can be.
    Io,
}

impl Broken {
    pub(super) fn of(e: &StoreError) -> Option<Broken> {
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
    pub(super) fn reopen(&mut self, broken: Broken) {
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
pub(super) const REOPEN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// One write transaction over a batch: the ops in order, then the expiry sweep and eviction.
pub(super) fn apply(
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
                    OpDone::Done
                }
                Op::Hit(key) => {
                    t.hit(key, 1)?;
                    OpDone::Done
                }
                Op::Expire(key) => {
                    t.expire(key, now)?;
                    OpDone::Done
                }
                Op::Remove { key, .. } => OpDone::Removed(t.drop_entry(key)?),
                Op::Clear { model, .. } => OpDone::Cleared(t.clear(model.as_deref())?),
                Op::Flush(_) | Op::Close(_) | Op::Tick => OpDone::Done,
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
pub(super) struct Applied {
    /// One per op, in order.
    pub(super) outcomes: Vec<OpDone>,
    /// Entries it removed (besides replacing): to drop from the in-memory front.
    pub(super) gone: Vec<CacheKey>,
    /// Whether it removed every entry.
    pub(super) cleared: bool,
}

/// How long writes may go without an fsync (see [`Writer::commit`]).
pub(super) const LAZY_SYNC: std::time::Duration = std::time::Duration::from_secs(1);
