//! Opening the file: guarded against damage (moved aside, a fresh store in its place), a lock held
//! by another process, an oversized file (compacted), and versions of the schema and key.

use super::*;

/// Why a file could not be opened as this store.
pub(super) enum OpenFailure {
    /// Another process holds it.
    Locked,
    /// Moving the file aside would not help (permissions, a missing directory...).
    Fatal(StoreError),
    /// Damaged or of another version: move it aside with this suffix and start empty.
    Unusable { reason: String, suffix: String },
}

pub(super) fn open_or_recover(path: &Path, opts: &StoreOptions) -> Result<Database, StoreError> {
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
pub(super) fn open_with_keys(
    path: &Path,
    opts: &StoreOptions,
) -> Result<(Database, Present), StoreError> {
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
pub(super) fn compact_if_oversized(
    mut db: Database,
    path: &Path,
    max_bytes: u64,
) -> Option<Database> {
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
pub(super) fn try_open_guarded(path: &Path, secs: u64) -> Result<Database, OpenFailure> {
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
/// under a stream of new requests; the decoded entries that serve hits are in the front
/// ([`hot`]), and the file's pages are in the OS page cache anyway, so a small cache for the
/// B-trees' upper pages is enough (docs/performance.md).
pub(super) const REDB_CACHE_BYTES: usize = 32 << 20;

pub(super) fn try_open(path: &Path, secs: u64) -> Result<Database, OpenFailure> {
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
pub(super) fn io_means_corrupt(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::InvalidData
            | std::io::ErrorKind::InvalidInput
    )
}

/// `(schema, key)` versions recorded in the file; `None` for a new, empty database; `(0, 0)` for a
/// database without this store's `meta` table.
pub(super) fn read_versions(db: &Database) -> Result<Option<(u64, u64)>, StoreError> {
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
pub(super) fn init(db: &Database) -> Result<(), StoreError> {
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
pub(super) fn move_aside(path: &Path, suffix: &str) -> Result<PathBuf, StoreError> {
    crate::files::move_aside(path, suffix).map_err(|source| StoreError::Io {
        path: path.to_owned(),
        source,
    })
}

pub(super) fn locked(path: &Path) -> StoreError {
    StoreError::Locked {
        path: path.to_owned(),
    }
}

pub(super) fn db_err(e: impl Into<redb::Error>) -> StoreError {
    StoreError::backend(BACKEND, e.into())
}

pub(super) fn corrupt(key: &CacheKey, e: codec::CodecError) -> StoreError {
    StoreError::Corrupt {
        key: key.hex(),
        reason: e.to_string(),
    }
}
