//! The shared cache backend (cargo feature `redis`, `cache.backend: redis`): several relay
//! instances read and fill one cache.
//!
//! Keys, all under `relay:cache:s<schema>k<key version>:` (so builds with another layout never
//! read each other's entries; theirs simply expire):
//! - `e:<hex key>`: the encoded entry (the stores' private codec), with a Redis TTL (`SET PX`) as a
//!   memory backstop; relay's own clock decides expiry;
//! - `created` (sorted set, score `created_ms`): listing order and oldest-first eviction;
//! - `expiry` (sorted set, score `expires_ms`): swept by every write batch;
//! - `size`, `hits`, `model` (hashes by hex key) and `totals` (entries, bytes, hits).
//!
//! Writes go like redb's: [`Store::put`] queues to ONE writer task per process, which applies each
//! batch with one Lua script call (atomic, one round trip), including the expiry sweep and eviction.
//! Reads are pipelined commands on a [`ConnectionManager`], which reconnects by itself; while Redis
//! is unreachable every call fails fast with [`StoreError::Backend`] (the proxy treats that as a
//! miss) and the writer logs the outage once. Needs a standalone Redis (the script touches keys it
//! computes, which Redis Cluster does not allow).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use tokio::sync::{mpsc, oneshot};

use super::codec;
use super::entry::Entry;
use super::key::{CacheKey, KeyPrefix, KEY_VERSION};
use super::store::{
    ListFilter, ListItem, Pending, Stats, Store, StoreError, StoreOptions, WriteHealth,
    WriteOp as Op,
};

/// Version of this key layout and the entry codec; part of every key name.
pub const SCHEMA_VERSION: u64 = 1;

const BACKEND: &str = "redis";
const QUEUE_CAPACITY: usize = 1024;
const MAX_BATCH: usize = 256;
const SWEEP_LIMIT: usize = 1000;
/// How long one command or connection attempt may take before the call fails (a cache that
/// stalls requests is worse than a miss).
const TIMEOUT: Duration = Duration::from_millis(500);
/// Entries read per pipelined round trip by `list` and `find_prefix`.
const READ_CHUNK: usize = 64;

/// Applies one write batch. ARGV: prefix, now, max_bytes, sweep_limit, then the ops:
/// `P hex data size created expires(-1) hits px(-1) has_model model`, `H hex` (count a hit),
/// `X hex` (remove if expired or its data is gone), `R hex` (remove), `C has_model model` (clear).
/// Returns one integer per op: 1/0 for `R`, the count for `C`, 0 otherwise.
const APPLY_LUA: &str = r#"
local P = ARGV[1]
local now = tonumber(ARGV[2])
local max_bytes = tonumber(ARGV[3])
local sweep_limit = tonumber(ARGV[4])
local T = P .. 'totals'

local function remove(hex)
  redis.call('DEL', P .. 'e:' .. hex)
  local size = redis.call('HGET', P .. 'size', hex)
  if not size then return 0 end
  local hits = tonumber(redis.call('HGET', P .. 'hits', hex) or '0')
  redis.call('ZREM', P .. 'created', hex)
  redis.call('ZREM', P .. 'expiry', hex)
  redis.call('HDEL', P .. 'size', hex)
  redis.call('HDEL', P .. 'hits', hex)
  redis.call('HDEL', P .. 'model', hex)
  redis.call('HINCRBY', T, 'entries', -1)
  -- `0 - x`, not `-x`: Lua prints -0 as "-0", which HINCRBY rejects.
  redis.call('HINCRBY', T, 'bytes', 0 - tonumber(size))
  redis.call('HINCRBY', T, 'hits', 0 - hits)
  return 1
end

local out = {}
local i = 5
while i <= #ARGV do
  local op = ARGV[i]
  if op == 'P' then
    local hex, data, size, created = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
    local expires, hits, px = ARGV[i + 5], ARGV[i + 6], tonumber(ARGV[i + 7])
    remove(hex)
    if px > 0 then
      redis.call('SET', P .. 'e:' .. hex, data, 'PX', px)
    else
      redis.call('SET', P .. 'e:' .. hex, data)
    end
    redis.call('ZADD', P .. 'created', created, hex)
    if expires ~= '-1' then redis.call('ZADD', P .. 'expiry', expires, hex) end
    redis.call('HSET', P .. 'size', hex, size)
    redis.call('HSET', P .. 'hits', hex, hits)
    if ARGV[i + 8] == '1' then redis.call('HSET', P .. 'model', hex, ARGV[i + 9]) end
    redis.call('HINCRBY', T, 'entries', 1)
    redis.call('HINCRBY', T, 'bytes', size)
    redis.call('HINCRBY', T, 'hits', hits)
    out[#out + 1] = 0
    i = i + 10
  elseif op == 'H' then
    local hex = ARGV[i + 1]
    if redis.call('HEXISTS', P .. 'size', hex) == 1 then
      redis.call('HINCRBY', P .. 'hits', hex, 1)
      redis.call('HINCRBY', T, 'hits', 1)
    end
    out[#out + 1] = 0
    i = i + 2
  elseif op == 'X' then
    local hex = ARGV[i + 1]
    local exp = redis.call('ZSCORE', P .. 'expiry', hex)
    if (exp and tonumber(exp) <= now) or redis.call('EXISTS', P .. 'e:' .. hex) == 0 then
      remove(hex)
    end
    out[#out + 1] = 0
    i = i + 2
  elseif op == 'R' then
    out[#out + 1] = remove(ARGV[i + 1])
    i = i + 2
  elseif op == 'C' then
    local n = 0
    if ARGV[i + 1] == '1' then
      local models = redis.call('HGETALL', P .. 'model')
      for j = 1, #models, 2 do
        if models[j + 1] == ARGV[i + 2] then n = n + remove(models[j]) end
      end
    else
      for _, hex in ipairs(redis.call('ZRANGE', P .. 'created', 0, -1)) do
        n = n + remove(hex)
      end
    end
    out[#out + 1] = n
    i = i + 3
  else
    return redis.error_reply('unknown cache op ' .. tostring(op))
  end
end

for _, hex in ipairs(redis.call('ZRANGEBYSCORE', P .. 'expiry', '-inf', ARGV[2], 'LIMIT', 0, sweep_limit)) do
  remove(hex)
end
while tonumber(redis.call('HGET', T, 'bytes') or '0') > max_bytes do
  local oldest = redis.call('ZRANGE', P .. 'created', 0, 0)
  if #oldest == 0 then break end
  remove(oldest[1])
end
return out
"#;

/// The Redis-backed [`Store`]. Open once per process; share as `Arc<dyn Store>`.
pub struct RedisStore {
    prefix: Arc<str>,
    opts: StoreOptions,
    conn: ConnectionManager,
    tx: mpsc::Sender<Op>,
    pending: Arc<Pending>,
    seq: AtomicU64,
    write_errors: Arc<AtomicU64>,
    closed: AtomicBool,
}

impl RedisStore {
    /// Connects to `url` (`redis://host:port/db`) and starts the writer task. Must run inside a
    /// tokio runtime. Fails when Redis cannot be reached now; once open, the connection is
    /// re-established by itself after an outage.
    pub async fn open(url: &str, opts: StoreOptions) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(url).map_err(redis_err)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(redis_err)?;
        let prefix: Arc<str> = format!("relay:cache:s{SCHEMA_VERSION}k{KEY_VERSION}:").into();
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let pending = Arc::new(Pending::default());
        let write_errors = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            conn: conn.clone(),
            rx,
            prefix: prefix.clone(),
            script: Script::new(APPLY_LUA),
            pending: pending.clone(),
            opts: opts.clone(),
            health: WriteHealth::new("redis", write_errors.clone()),
        };
        tokio::spawn(writer.run());
        Ok(RedisStore {
            prefix,
            opts,
            conn,
            tx,
            pending,
            seq: AtomicU64::new(0),
            write_errors,
            closed: AtomicBool::new(false),
        })
    }

    /// The store's connection (for a health probe).
    pub fn connection(&self) -> &ConnectionManager {
        &self.conn
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn conn(&self) -> Result<ConnectionManager, StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        Ok(self.conn.clone())
    }

    fn nudge(&self, op: Op) {
        let _ = self.tx.try_send(op);
    }

    async fn ask<T>(&self, op: impl FnOnce(oneshot::Sender<T>) -> Op) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(op(reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)
    }

    /// Reads the stored entries of `hexes` in one round trip: data, expiry, hits, size each.
    async fn fetch(&self, hexes: &[String]) -> Result<Vec<Option<Stored>>, StoreError> {
        let mut pipe = redis::pipe();
        for hex in hexes {
            pipe.get(self.key(&format!("e:{hex}")))
                .zscore(self.key("expiry"), hex)
                .hget(self.key("hits"), hex)
                .hget(self.key("size"), hex);
        }
        type Row = (Option<Vec<u8>>, Option<f64>, Option<u64>, Option<u64>);
        let rows: Vec<Row> = pipe
            .query_async(&mut self.conn()?)
            .await
            .map_err(redis_err)?;
        Ok(rows
            .into_iter()
            .map(|(data, expires, hits, size)| {
                Some(Stored {
                    data: data?,
                    expires: expires.map(|t| t as u64),
                    hits: hits.unwrap_or(0),
                    size: size.unwrap_or(0),
                })
            })
            .collect())
    }

    /// Every key in the `created` index, newest first.
    async fn all_keys_newest_first(&self) -> Result<Vec<String>, StoreError> {
        redis::cmd("ZREVRANGE")
            .arg(self.key("created"))
            .arg(0)
            .arg(-1)
            .query_async(&mut self.conn()?)
            .await
            .map_err(redis_err)
    }
}

/// An entry as read from Redis, before decoding.
struct Stored {
    data: Vec<u8>,
    expires: Option<u64>,
    hits: u64,
    size: u64,
}

impl Stored {
    fn live(&self, now: u64) -> bool {
        self.expires.is_none_or(|t| t > now)
    }
}

impl Store for RedisStore {
    fn get(&self, key: CacheKey) -> BoxFuture<'_, Result<Option<Entry>, StoreError>> {
        Box::pin(async move {
            let now = self.opts.clock.now_ms();
            let mut conn = self.conn()?;
            if let Some(entry) = self.pending.get(&key) {
                if entry.is_expired(now) {
                    return Ok(None);
                }
                self.nudge(Op::Hit(key));
                return Ok(Some(Entry::clone(&entry)));
            }
            let hex = key.hex();
            let (data, expires, hits): (Option<Vec<u8>>, Option<f64>, Option<u64>) = redis::pipe()
                .get(self.key(&format!("e:{hex}")))
                .zscore(self.key("expiry"), &hex)
                .hget(self.key("hits"), &hex)
                .query_async(&mut conn)
                .await
                .map_err(redis_err)?;
            let Some(data) = data else {
                if hits.is_some() {
                    // Indexed, but Redis already dropped the data: tidy the index.
                    self.nudge(Op::Expire(key));
                }
                return Ok(None);
            };
            if expires.is_some_and(|t| (t as u64) <= now) {
                self.nudge(Op::Expire(key));
                return Ok(None);
            }
            let mut entry = codec::decode(Bytes::from(data)).map_err(|e| corrupt(&key, e))?;
            entry.meta.hits = hits.unwrap_or(0);
            self.nudge(Op::Hit(key));
            Ok(Some(entry))
        })
    }

    fn put(&self, key: CacheKey, entry: Entry) -> Result<(), StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        let size = self.opts.check_size(&entry)?;
        let entry = Arc::new(entry);
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        self.pending.queue_put(&self.tx, seq, key, entry, size)
    }

    fn remove(&self, key: CacheKey) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move { self.ask(|reply| Op::Remove { key, reply }).await? })
    }

    fn list(&self, filter: ListFilter) -> BoxFuture<'_, Result<Vec<ListItem>, StoreError>> {
        Box::pin(async move {
            self.flush().await?;
            let now = self.opts.clock.now_ms();
            let mut hexes = self.all_keys_newest_first().await?;
            if let Some(model) = &filter.model {
                let models: Vec<Option<String>> = if hexes.is_empty() {
                    Vec::new()
                } else {
                    redis::cmd("HMGET")
                        .arg(self.key("model"))
                        .arg(&hexes)
                        .query_async(&mut self.conn()?)
                        .await
                        .map_err(redis_err)?
                };
                hexes = hexes
                    .into_iter()
                    .zip(models)
                    .filter(|(_, m)| m.as_ref() == Some(model))
                    .map(|(hex, _)| hex)
                    .collect();
            }
            let limit = filter.limit.unwrap_or(usize::MAX);
            let mut out = Vec::new();
            for chunk in hexes.chunks(READ_CHUNK) {
                for (hex, stored) in chunk.iter().zip(self.fetch(chunk).await?) {
                    if out.len() >= limit {
                        return Ok(out);
                    }
                    let (Ok(key), Some(stored)) = (CacheKey::from_hex(hex), stored) else {
                        continue;
                    };
                    if !stored.live(now) {
                        continue;
                    }
                    match codec::decode_meta(&stored.data) {
                        Ok(meta) if !filter.admits(&meta) => {}
                        Ok(mut meta) => {
                            meta.hits = stored.hits;
                            out.push((key, meta, stored.size));
                        }
                        Err(e) => {
                            tracing::warn!(key = %key.short(), error = %e, "skipping a damaged cache entry")
                        }
                    }
                }
            }
            Ok(out)
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
            let wanted = prefix.as_hex();
            let candidates: Vec<String> = self
                .all_keys_newest_first()
                .await?
                .into_iter()
                .filter(|hex| hex.starts_with(&wanted))
                .collect();
            let mut found: Option<(CacheKey, Stored)> = None;
            for chunk in candidates.chunks(READ_CHUNK) {
                for (hex, stored) in chunk.iter().zip(self.fetch(chunk).await?) {
                    let (Ok(key), Some(stored)) = (CacheKey::from_hex(hex), stored) else {
                        continue;
                    };
                    if !stored.live(now) {
                        continue;
                    }
                    if found.is_some() {
                        return Err(StoreError::AmbiguousPrefix { prefix: wanted });
                    }
                    found = Some((key, stored));
                }
            }
            let Some((key, stored)) = found else {
                return Ok(None);
            };
            let mut entry =
                codec::decode(Bytes::from(stored.data)).map_err(|e| corrupt(&key, e))?;
            entry.meta.hits = stored.hits;
            Ok(Some((key, entry)))
        })
    }

    fn clear(&self, model: Option<String>) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move { self.ask(|reply| Op::Clear { model, reply }).await? })
    }

    fn stats(&self) -> BoxFuture<'_, Result<Stats, StoreError>> {
        Box::pin(async move {
            self.flush().await?;
            type Totals = (Option<u64>, Option<u64>, Option<u64>);
            type Ends = (Vec<(String, f64)>, Vec<(String, f64)>);
            let mut conn = self.conn()?;
            let ((entries, bytes, hits),): (Totals,) = redis::pipe()
                .cmd("HMGET")
                .arg(self.key("totals"))
                .arg("entries")
                .arg("bytes")
                .arg("hits")
                .query_async(&mut conn)
                .await
                .map_err(redis_err)?;
            let (oldest, newest): Ends = redis::pipe()
                .zrange_withscores(self.key("created"), 0, 0)
                .zrange_withscores(self.key("created"), -1, -1)
                .query_async(&mut conn)
                .await
                .map_err(redis_err)?;
            Ok(Stats {
                entries: entries.unwrap_or(0),
                bytes: bytes.unwrap_or(0),
                oldest_ms: oldest.first().map(|(_, t)| *t as u64),
                newest_ms: newest.first().map(|(_, t)| *t as u64),
                hits: hits.unwrap_or(0),
                write_errors: self.write_errors.load(Ordering::Relaxed),
            })
        })
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move { self.ask(Op::Flush).await? })
    }

    fn close(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let committed = self.ask(Op::Close).await;
            self.closed.store(true, Ordering::Release);
            committed?
        })
    }

    fn backend(&self) -> &'static str {
        BACKEND
    }
}

struct Writer {
    conn: ConnectionManager,
    rx: mpsc::Receiver<Op>,
    prefix: Arc<str>,
    script: Script,
    pending: Arc<Pending>,
    opts: StoreOptions,
    health: WriteHealth,
}

impl Writer {
    async fn run(mut self) {
        while let Some(first) = self.rx.recv().await {
            let mut closing = matches!(first, Op::Close(_));
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
            self.commit(batch).await;
            if closing {
                break;
            }
        }
    }

    /// One script call for the batch's writes, then answers and pending clean-up.
    async fn commit(&mut self, batch: Vec<Op>) {
        let result = if batch.iter().any(Op::mutates) {
            self.apply(&batch).await
        } else {
            Ok(Vec::new())
        };
        self.health.committed(&result, || {
            batch
                .iter()
                .filter(|op| matches!(op, Op::Put { .. }))
                .count()
        });
        let (mut results, error) = match result {
            Ok(results) => (results.into_iter(), None),
            Err(e) => (Vec::new().into_iter(), Some(e.to_string())),
        };
        let fail = |msg: &String| StoreError::backend(BACKEND, msg.clone());
        for op in batch {
            let n = if op.mutates() { results.next() } else { None };
            let outcome = match &error {
                Some(msg) => Err(fail(msg)),
                None => Ok(n.unwrap_or(0)),
            };
            match op {
                Op::Put { key, seq, .. } => self.pending.settle(&key, seq),
                Op::Hit(_) | Op::Expire(_) | Op::Tick => {}
                Op::Remove { reply, .. } => {
                    let _ = reply.send(outcome.map(|n| n == 1));
                }
                Op::Clear { reply, .. } => {
                    let _ = reply.send(outcome.map(|n| u64::try_from(n).unwrap_or(0)));
                }
                Op::Flush(reply) | Op::Close(reply) => {
                    let _ = reply.send(outcome.map(|_| ()));
                }
            }
        }
    }

    async fn apply(&mut self, batch: &[Op]) -> Result<Vec<i64>, StoreError> {
        let now = self.opts.clock.now_ms();
        let mut call = self.script.prepare_invoke();
        call.arg(&*self.prefix)
            .arg(now)
            .arg(self.opts.max_bytes)
            .arg(SWEEP_LIMIT);
        for op in batch {
            match op {
                Op::Put {
                    key, entry, size, ..
                } => {
                    let expires = entry.meta.expires_ms;
                    // Redis drops the data a little after relay would: relay's clock decides.
                    let px = expires.map_or(-1, |t| {
                        i64::try_from(t.saturating_sub(now).saturating_add(1000))
                            .unwrap_or(i64::MAX)
                    });
                    call.arg("P")
                        .arg(key.hex())
                        .arg(codec::encode(entry))
                        .arg(*size)
                        .arg(entry.meta.created_ms)
                        .arg(expires.map_or(-1, |t| i64::try_from(t).unwrap_or(i64::MAX)))
                        .arg(entry.meta.hits)
                        .arg(px)
                        .arg(if entry.meta.model.is_some() { "1" } else { "0" })
                        .arg(entry.meta.model.as_deref().unwrap_or(""));
                }
                Op::Hit(key) => {
                    call.arg("H").arg(key.hex());
                }
                Op::Expire(key) => {
                    call.arg("X").arg(key.hex());
                }
                Op::Remove { key, .. } => {
                    call.arg("R").arg(key.hex());
                }
                Op::Clear { model, .. } => {
                    call.arg("C")
                        .arg(if model.is_some() { "1" } else { "0" })
                        .arg(model.as_deref().unwrap_or(""));
                }
                Op::Flush(_) | Op::Close(_) | Op::Tick => {}
            }
        }
        call.invoke_async(&mut self.conn).await.map_err(redis_err)
    }
}

fn redis_err(e: redis::RedisError) -> StoreError {
    StoreError::backend(BACKEND, e)
}

fn corrupt(key: &CacheKey, e: codec::CodecError) -> StoreError {
    StoreError::Corrupt {
        key: key.hex(),
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::entry::tests::json_entry;
    use crate::cache::tests::{options, Opened, T0};
    use crate::clock::ManualClock;

    pub(crate) use crate::cache::redis_server::RedisServer;

    async fn open(opts: StoreOptions) -> Opened {
        let server = RedisServer::start();
        let store = RedisStore::open(&server.url(), opts).await.unwrap();
        Opened {
            store: Arc::new(store),
            _guard: Box::new(server),
        }
    }

    mod suite {
        use super::open;
        use crate::cache::tests::store_suite;
        store_suite!(open);
    }

    fn key(n: u8) -> CacheKey {
        CacheKey::from_bytes([n; 32])
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn entries_are_shared_between_instances() {
        let server = RedisServer::start();
        let clock = ManualClock::new(T0);
        let a = RedisStore::open(&server.url(), options(&clock, 1 << 20))
            .await
            .unwrap();
        let b = RedisStore::open(&server.url(), options(&clock, 1 << 20))
            .await
            .unwrap();
        let e = json_entry("m", T0, "{}");
        a.put(key(1), e.clone()).unwrap();
        a.flush().await.unwrap();
        assert_eq!(b.get(key(1)).await.unwrap(), Some(e));
        assert_eq!(b.stats().await.unwrap().entries, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_outage_is_an_error_then_the_store_reconnects() {
        let mut server = RedisServer::start();
        let clock = ManualClock::new(T0);
        let s = RedisStore::open(&server.url(), options(&clock, 1 << 20))
            .await
            .unwrap();
        s.put(key(1), json_entry("m", T0, "{}")).unwrap();
        s.flush().await.unwrap();
        let port = server.port();
        server.kill();

        // Down: reads fail (the proxy's miss), puts are still accepted and their loss is counted.
        assert!(matches!(
            s.get(key(1)).await,
            Err(StoreError::Backend { .. })
        ));
        s.put(key(2), json_entry("m", T0, "{}")).unwrap();
        // Whether the flush itself reports the failure depends on batching; the count does not.
        let _ = s.flush().await;
        assert_eq!(s.write_errors.load(Ordering::Relaxed), 1);

        // Back (empty, as it kept nothing): the same store works again without being reopened.
        let _server = RedisServer::start_on(port);
        let mut attempts = 0;
        loop {
            match s.get(key(1)).await {
                Ok(found) => {
                    assert_eq!(found, None);
                    break;
                }
                // Each failed call starts a reconnection the next call waits for.
                Err(_) if attempts < 50 => attempts += 1,
                Err(e) => panic!("did not reconnect: {e}"),
            }
        }
        s.put(key(3), json_entry("m", T0, "{}")).unwrap();
        s.flush().await.unwrap();
        assert!(s.get(key(3)).await.unwrap().is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_ttl_backs_up_relay_expiry() {
        let server = RedisServer::start();
        let clock = ManualClock::new(T0);
        let s = RedisStore::open(&server.url(), options(&clock, 1 << 20))
            .await
            .unwrap();
        let mut minute = json_entry("m", T0, "{}");
        minute.meta.expires_ms = Some(T0 + 60_000);
        s.put(key(1), minute.clone()).unwrap();
        s.put(key(2), minute).unwrap();
        s.flush().await.unwrap();
        let mut conn = s.conn().unwrap();
        let pttl: i64 = redis::cmd("PTTL")
            .arg(s.key(&format!("e:{}", key(1).hex())))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!((60_000..=61_000).contains(&pttl), "{pttl}");
        // Redis dropping the data first (its own clock) is a miss that tidies the index.
        let _: () = redis::cmd("DEL")
            .arg(s.key(&format!("e:{}", key(2).hex())))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(s.get(key(2)).await.unwrap(), None);
        s.flush().await.unwrap();
        assert_eq!(s.stats().await.unwrap().entries, 1);
        assert!(s
            .list(ListFilter::default())
            .await
            .unwrap()
            .iter()
            .all(|(k, _, _)| *k == key(1)));
    }
}
