//! Rate-limit buckets in Redis (`ratelimit.backend: redis`, cargo feature `redis`): every relay on
//! one Redis enforces one limit.
//!
//! One Lua script call per request checks and books every bucket the request needs, atomically
//! (GCRA, the same arithmetic as [`super::gcra`], in microseconds of Redis' own clock, so relay
//! instances need no synchronised clocks). Keys: `relay:rl:v1:<bucket id hex>` holding the TAT,
//! with a TTL that ends when the bucket would be full again.
//!
//! Redis down or hung: the call fails within [`TIMEOUT`], and from then on relay uses its
//! in-process buckets at once, without asking Redis (logged once,
//! `relay_ratelimit_backend{backend="local"}` = 1), until a background probe finds Redis answering
//! ([`crate::redis_gate`]); no request fails, and only the first waits, because Redis is down. A
//! Redis unreachable at start is connected to in the background.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;

use super::gcra::{Booked, Params};
use super::{BucketId, Slot};
use crate::config::{Config, LimitBackend};
use crate::metrics::Metrics;

/// Longest a check may wait for Redis before the in-process buckets answer instead.
pub const TIMEOUT: Duration = Duration::from_millis(250);
/// After a failure, how long requests skip Redis before trying it again.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

const KEY_PREFIX: &str = "relay:rl:v1:";

/// Checks and books every bucket or none. KEYS: buckets. ARGV: max_wait (µs), then per key:
/// interval (µs per unit), capacity (units), cost (units). Returns `{1, wait, remaining, ahead,
/// ...}` (three numbers per key, µs) or `{0, index (1-based), retry (µs)}`.
const BOOK_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local max_wait = tonumber(ARGV[1])
local news = {}
local out = {1}
for i = 1, #KEYS do
  local T = tonumber(ARGV[i * 3 - 1])
  local cap = tonumber(ARGV[i * 3])
  local cost = tonumber(ARGV[i * 3 + 1])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  local new = tat + cost * T
  local wait = new - cap * T - now
  if wait < 0 then wait = 0 end
  if wait > max_wait then
    return {0, i, math.ceil(wait)}
  end
  news[i] = new
  local ahead = new - now
  local remaining = math.floor((cap * T - ahead) / T + 1e-9)
  if remaining < 0 then remaining = 0 end
  out[#out + 1] = math.ceil(wait)
  out[#out + 1] = remaining
  out[#out + 1] = math.ceil(ahead)
end
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], string.format('%.0f', news[i]), 'PX', math.ceil((news[i] - now) / 1000) + 1000)
end
return out
"#;

/// Moves each bucket's TAT by `delta` units (settling tokens, giving back a slot), never before
/// now. KEYS: buckets. ARGV: delta, then the interval (µs) per key.
const ADJUST_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local delta = tonumber(ARGV[1])
for i = 1, #KEYS do
  local T = tonumber(ARGV[i + 1])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  local new
  if delta >= 0 then
    if tat < now then tat = now end
    new = tat + delta * T
  else
    new = tat + delta * T
    if new < now then new = now end
  end
  redis.call('SET', KEYS[i], string.format('%.0f', new), 'PX', math.ceil((new - now) / 1000) + 1000)
end
return 0
"#;

const BACKEND_UNKNOWN: u8 = 0;
const BACKEND_REDIS: u8 = 1;
const BACKEND_LOCAL: u8 = 2;

/// The Redis side of the limiter; shared across config reloads while the address is unchanged.
pub struct RedisLimiter {
    url: String,
    conn: ArcSwapOption<ConnectionManager>,
    connecting: AtomicBool,
    /// Becomes true once the first connection attempt has finished (either way).
    attempted: tokio::sync::watch::Sender<bool>,
    /// Unreachable at start (logged once).
    down: AtomicBool,
    /// Closed after a failed call: requests skip Redis until a probe finds it answering.
    gate: Arc<crate::redis_gate::Gate>,
    backend: AtomicU8,
    book: Script,
    adjust: Script,
}

impl std::fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("connected", &self.conn.load().is_some())
            .field("down", &self.down.load(Ordering::Relaxed))
            .finish()
    }
}

impl RedisLimiter {
    /// The Redis limiter for `cfg` (`None` unless `ratelimit.backend: redis` and a rule is
    /// active), reusing `previous` when it talks to the same Redis.
    pub fn for_config(
        cfg: &Config,
        active: bool,
        previous: Option<&Arc<RedisLimiter>>,
    ) -> Option<Arc<RedisLimiter>> {
        if cfg.limits.backend != LimitBackend::Redis || !active {
            return None;
        }
        let url = crate::cache::open::redis_url(cfg);
        if let Some(p) = previous.filter(|p| p.url == url) {
            return Some(p.clone());
        }
        let limiter = Arc::new(RedisLimiter {
            url,
            conn: ArcSwapOption::empty(),
            connecting: AtomicBool::new(false),
            attempted: tokio::sync::watch::channel(false).0,
            down: AtomicBool::new(false),
            gate: crate::redis_gate::Gate::new("rate limits", |_| {}),
            backend: AtomicU8::new(BACKEND_UNKNOWN),
            book: Script::new(BOOK_LUA),
            adjust: Script::new(ADJUST_LUA),
        });
        limiter.connect();
        Some(limiter)
    }

    /// Starts connecting in the background (once at a time); retries every [`RETRY_AFTER`] until
    /// it succeeds or the limiter is dropped.
    fn connect(self: &Arc<Self>) {
        if self.connecting.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            self.connecting.store(false, Ordering::Release);
            return;
        };
        let weak: Weak<RedisLimiter> = Arc::downgrade(self);
        handle.spawn(async move {
            loop {
                let Some(me) = weak.upgrade() else { return };
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(TIMEOUT))
                    .set_response_timeout(Some(TIMEOUT))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(200));
                let made = match redis::Client::open(me.url.as_str()) {
                    Ok(client) => ConnectionManager::new_with_config(client, config)
                        .await
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                let ok = made.is_ok();
                match made {
                    Ok(conn) => {
                        me.conn.store(Some(Arc::new(conn)));
                        me.connecting.store(false, Ordering::Release);
                    }
                    Err(e) => {
                        if !me.down.swap(true, Ordering::AcqRel) {
                            tracing::warn!(error = %e, "rate limits: Redis unreachable; using in-process limits until it is back");
                        }
                    }
                }
                me.attempted.send_replace(true);
                if ok {
                    return;
                }
                drop(me);
                tokio::time::sleep(RETRY_AFTER).await;
            }
        });
    }

    fn set_backend(&self, backend: u8, metrics: &Metrics) {
        if self.backend.swap(backend, Ordering::AcqRel) == backend {
            return;
        }
        let redis = i64::from(backend == BACKEND_REDIS);
        metrics
            .ratelimit_backend
            .with_label_values(&["redis"])
            .set(redis);
        metrics
            .ratelimit_backend
            .with_label_values(&["local"])
            .set(1 - redis);
    }

    /// Checks and books `slots` in Redis. `None`: Redis is not usable now; the caller uses the
    /// in-process buckets.
    pub async fn book(
        self: &Arc<Self>,
        slots: &[Slot],
        max_wait: Duration,
        metrics: &Metrics,
    ) -> Option<Result<Vec<Booked>, (usize, Duration)>> {
        if !self.gate.open() {
            self.set_backend(BACKEND_LOCAL, metrics);
            return None;
        }
        let conn = match self.conn.load_full() {
            Some(conn) => conn,
            None => {
                // At start, give the first connection attempt its chance.
                let mut first = self.attempted.subscribe();
                let _ = tokio::time::timeout(TIMEOUT, first.wait_for(|done| *done)).await;
                match self.conn.load_full() {
                    Some(conn) => conn,
                    None => {
                        self.connect();
                        self.set_backend(BACKEND_LOCAL, metrics);
                        return None;
                    }
                }
            }
        };
        let mut inv = self.book.prepare_invoke();
        inv.arg(max_wait.as_micros() as u64);
        for s in slots {
            inv.key(key(&s.id));
            inv.arg(s.params.interval_ns as f64 / 1000.0)
                .arg(s.params.capacity)
                .arg(s.params.clamp(s.cost));
        }
        let mut c = (*conn).clone();
        let answer: Result<Vec<i64>, String> =
            match tokio::time::timeout(TIMEOUT, inv.invoke_async(&mut c)).await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("timed out".to_string()),
            };
        let v = match answer {
            Ok(v) => v,
            Err(e) => {
                // In-process buckets at once for this request and every one after it, until the
                // gate's background probe finds Redis answering again.
                self.gate.failed(&conn, &e);
                self.set_backend(BACKEND_LOCAL, metrics);
                return None;
            }
        };
        self.gate.succeeded();
        self.set_backend(BACKEND_REDIS, metrics);
        let us = |n: i64| Duration::from_micros(n.max(0) as u64);
        Some(match v.first() {
            Some(1) => Ok(v[1..]
                .chunks_exact(3)
                .map(|c| Booked {
                    wait: us(c[0]),
                    remaining: c[1].max(0) as u64,
                    reset: us(c[2]),
                })
                .collect()),
            _ => Err((
                (v.get(1).copied().unwrap_or(1) - 1).max(0) as usize,
                us(v.get(2).copied().unwrap_or(0)),
            )),
        })
    }

    /// Moves the buckets' TAT by `delta` units, in the background (fire and forget: a failure
    /// only leaves the estimate in place).
    pub fn adjust(&self, slots: &[(BucketId, Params)], delta: i64) {
        let Some(conn) = self.conn.load_full() else {
            return;
        };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let script = self.adjust.clone();
        let slots: Vec<(String, f64)> = slots
            .iter()
            .map(|(id, p)| (key(id), p.interval_ns as f64 / 1000.0))
            .collect();
        handle.spawn(async move {
            let mut inv = script.prepare_invoke();
            inv.arg(delta);
            for (k, interval) in &slots {
                inv.key(k).arg(*interval);
            }
            let mut c = (*conn).clone();
            let _ = tokio::time::timeout(TIMEOUT, inv.invoke_async::<i64>(&mut c)).await;
        });
    }
}

fn key(id: &BucketId) -> String {
    let mut s = String::with_capacity(KEY_PREFIX.len() + 64);
    s.push_str(KEY_PREFIX);
    for b in id {
        s.push_str(&format!("{b:02x}"));
    }
    s
}
