//! Rate limits and circuit breakers: the stages between the cache and the upstream.
//!
//! **Rate limiting** ([`Limiter`]): what comes in is a routed request that missed the cache (its
//! headers, model and JSON body); what goes out is either [`Admitted`] (the `x-ratelimit-*` headers
//! to add to the response, and the tokens reserved for it) or [`EdgeError::RateLimited`] (429 with
//! `Retry-After`). It records `relay_ratelimit_rejections_total{scope,rule}` and
//! `relay_ratelimit_wait_seconds`.
//!
//! - Every rule is a GCRA bucket ([`gcra`]) per scope value: `global` (one bucket), `key` (per
//!   BLAKE3 hash of the caller's API key, never the key), `model` (per model name), `key+model`.
//!   A rule with `model:` (a glob) applies only to requests whose model matches it. The original
//!   relay's `ratelimit.requests_per_second` / `burst` is a `global` rule named `default`.
//! - Tokens per minute: the request's estimated tokens ([`estimate_tokens`]: prompt bytes / 4 +
//!   `max_tokens`) are *reserved* before the call, so concurrent requests cannot race past the limit,
//!   and settled with the real usage after it ([`Reservation::settle`]; until something meters real
//!   usage, the estimate stands).
//! - A request passes only if every rule that applies has room; a refusal gives back what the other
//!   rules had booked. With `on_limit: wait` a request books its future slot (at most `max_wait`
//!   ahead) and sleeps until then, so bursts are smoothed in arrival order instead of refused.
//! - Buckets live in a sharded map of atomics ([`Buckets`]): no lock is shared by all requests. The
//!   map outlives config reloads (bucket identity is the rule's name and scope value, not its rate),
//!   so a reload applies new rates at once without resetting any bucket. Time is `tokio::time`, so
//!   tests step it with the paused clock.
//! - With `ratelimit.backend: redis` (cargo feature `redis`) the buckets live in Redis, checked with
//!   one atomic Lua script per request, so every relay on that Redis enforces one limit; while Redis
//!   is unreachable the in-process buckets take over.
//!
//! **Circuit breaking**: see [`breaker`].

pub mod breaker;
pub mod gcra;
#[cfg(feature = "redis")]
mod redis;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{Config, LimitScope, OnLimit};
use crate::error::EdgeError;
use crate::metrics::Metrics;
use crate::shard::{read, write, Sharded};
use gcra::{Booked, Cell, Params};

pub use crate::config::LEGACY_RULE;

pub use crate::wire::headers::{format_reset, RateHeaders};

/// The tokens a request may use, estimated before it runs: prompt bytes / 4 (about 4 bytes per token
/// in English text and JSON) plus the answer's bound (`max_tokens`, `max_completion_tokens` or
/// `max_output_tokens`). The one place to swap in a real tokenizer.
pub fn estimate_tokens(body: &[u8]) -> u64 {
    let bound = crate::wire::BodyPeek::of(body)
        .ok()
        .and_then(|p| p.max_tokens);
    estimate(body.len(), bound)
}

/// [`estimate_tokens`] from the body's length and its peeked bound (the pipeline reads the body
/// once).
pub fn estimate(body_len: usize, max_tokens: Option<u64>) -> u64 {
    (body_len as u64).div_ceil(4) + max_tokens.unwrap_or(0)
}

/// What the limiter looks at in a request.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// Who the caller is ([`crate::caller::Identity::digest`]): the bucket of `key` rules.
    pub caller: [u8; 32],
    pub model: Option<&'a str>,
    /// The JSON body when relay read it whole (token estimates), else `None`.
    pub body: Option<&'a [u8]>,
    /// The answer's token bound the body asks for ([`crate::wire::BodyPeek::max_tokens`]).
    pub max_tokens: Option<u64>,
    /// The relay key's own limits, when it has any.
    pub own: Option<&'a KeyLimits>,
}

/// A relay key's own limits (`relay keys create --rps --tpm`): a rule of its own, `key:<name>`,
/// with one bucket for that key, checked beside the configured rules.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyLimits {
    pub name: String,
    pub rps: Option<f64>,
    pub tpm: Option<u64>,
}

impl KeyLimits {
    fn rule(&self) -> Rule {
        Rule {
            name: format!("key:{}", self.name),
            scope: LimitScope::Key,
            model: None,
            requests: self
                .rps
                .map(|rps| Params::per_second(rps, rps.ceil().max(1.0) as u64)),
            tokens: self.tpm.map(Params::per_minute),
        }
    }
}

/// A request that passed.
#[derive(Debug, Default)]
pub struct Admitted {
    /// Headers for the response (`None`: no request limit applied).
    pub headers: Option<RateHeaders>,
    /// Tokens reserved by tokens-per-minute rules, to settle with the real usage.
    pub tokens: Option<Reservation>,
}

/// Tokens a request reserved. [`Reservation::settle`] corrects the buckets with the real usage
/// once it is known; dropping it unsettled keeps the estimate.
#[derive(Debug)]
pub struct Reservation {
    estimate: u64,
    slots: Vec<(BucketId, Params)>,
    store: Store,
}

impl Reservation {
    /// The tokens reserved (the estimate).
    pub fn estimate(&self) -> u64 {
        self.estimate
    }

    /// Replaces the estimate with `actual` tokens (prompt + completion as metered by the upstream):
    /// the difference is given back to, or taken from, each bucket. Called once the usage is known
    /// (end of the response); `settle(0)` when the request never reached the upstream.
    pub fn settle(self, actual: u64) {
        let delta = actual as i64 - self.estimate as i64;
        if delta == 0 {
            return;
        }
        self.store.adjust(&self.slots, delta);
    }
}

/// A bucket's identity: BLAKE3 of the rule's name, the limit kind and the scope value.
pub type BucketId = [u8; 32];

const SHARDS: usize = 64;
/// A shard this large sweeps out full (idle) buckets when it must grow.
const SWEEP_AT: usize = 4096;
/// Most buckets one shard holds (so at most `SHARDS × SHARD_CAP` = 524,288 in all, about 40 MB):
/// past it after a sweep, an eighth of the shard is let go.
const SHARD_CAP: usize = 2 * SWEEP_AT;

/// In-process buckets, shared by every [`Limiter`] built from successive configs.
#[derive(Debug)]
pub struct Buckets {
    epoch: Instant,
    shards: Sharded<Shard>,
}

/// One shard of [`Buckets`]: its buckets, and when it sweeps next (touched under its write lock).
#[derive(Debug, Default)]
struct Shard {
    map: RwLock<HashMap<BucketId, Cell>>,
    sweep: Sweep,
}

/// When a shard of [`Buckets`] sweeps next.
#[derive(Debug, Default)]
struct Sweep {
    /// At this many buckets (0: at [`SWEEP_AT`]).
    next_len: AtomicUsize,
    /// Or a second after this (`Buckets::now`).
    last_ns: AtomicU64,
}

impl Default for Buckets {
    fn default() -> Self {
        Buckets {
            epoch: Instant::now(),
            shards: Sharded::with_default(SHARDS),
        }
    }
}

impl Buckets {
    /// Nanoseconds since this store was created (`tokio::time`), never 0.
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64 + 1
    }

    fn with_cell<R>(&self, id: &BucketId, now: u64, f: impl FnOnce(&Cell) -> R) -> R {
        let shard = self.shards.by_bytes(id);
        {
            let map = read(&shard.map);
            if let Some(c) = map.get(id) {
                return f(c);
            }
        }
        let mut map = write(&shard.map);
        if map.len() >= SWEEP_AT && !map.contains_key(id) {
            // A sweep walks the whole shard: at most once a second, or when it has grown by an
            // eighth since the last one, so a flood of new keys is not a walk per request.
            let sweep = &shard.sweep;
            let due = map.len() >= sweep.next_len.load(Ordering::Relaxed)
                || now.saturating_sub(sweep.last_ns.load(Ordering::Relaxed)) >= 1_000_000_000;
            if due {
                map.retain(|_, c| !c.is_idle(now));
                sweep
                    .next_len
                    .store(map.len() + map.len() / 8, Ordering::Relaxed);
                sweep.last_ns.store(now, Ordering::Relaxed);
            }
            if map.len() >= SHARD_CAP {
                // Still full of busy buckets: a flood of new keys. An eighth goes; a bucket let
                // go starts full again next time, which a key with a new value each request
                // gets anyway.
                let victims: Vec<BucketId> = map.keys().take(SHARD_CAP / 8).copied().collect();
                for v in &victims {
                    map.remove(v);
                }
            }
        }
        f(map.entry(*id).or_default())
    }

    /// Buckets held (tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| read(&s.map).len()).sum()
    }

    /// Books every slot or none: on the first that does not fit, the others are given back.
    fn book(&self, slots: &[Slot], max_wait: Duration) -> Result<Vec<Booked>, (usize, Duration)> {
        let now = self.now();
        let max_wait = max_wait.as_nanos() as u64;
        let mut booked = Vec::with_capacity(slots.len());
        for (i, s) in slots.iter().enumerate() {
            match self.with_cell(&s.id, now, |c| c.book(now, s.cost, s.params, max_wait)) {
                Ok(b) => booked.push(b),
                Err(retry) => {
                    self.refund(&slots[..i], now);
                    return Err((i, retry));
                }
            }
        }
        Ok(booked)
    }

    fn refund(&self, slots: &[Slot], now: u64) {
        for s in slots {
            let cost = s.params.clamp(s.cost) as i64;
            self.with_cell(&s.id, now, |c| c.adjust(now, -cost, s.params));
        }
    }

    fn adjust(&self, slots: &[(BucketId, Params)], delta: i64) {
        let now = self.now();
        for (id, p) in slots {
            self.with_cell(id, now, |c| c.adjust(now, delta, *p));
        }
    }
}

/// Where a limiter's buckets are.
#[derive(Debug, Clone)]
enum Store {
    Local(Arc<Buckets>),
    #[cfg(feature = "redis")]
    Redis(Arc<redis::RedisLimiter>),
}

impl Store {
    fn adjust(&self, slots: &[(BucketId, Params)], delta: i64) {
        match self {
            Store::Local(b) => b.adjust(slots, delta),
            #[cfg(feature = "redis")]
            Store::Redis(r) => r.adjust(slots, delta),
        }
    }
}

/// One bucket a request must pass.
#[derive(Debug, Clone, Copy)]
struct Slot {
    id: BucketId,
    params: Params,
    cost: u64,
    rule: usize,
    tokens: bool,
}

#[derive(Debug)]
struct Rule {
    name: String,
    scope: LimitScope,
    model: Option<glob::Pattern>,
    requests: Option<Params>,
    tokens: Option<Params>,
}

/// The rate-limit stage for one config. Built with the runtime; its buckets carry over from the
/// previous one.
#[derive(Debug)]
pub struct Limiter {
    rules: Vec<Rule>,
    on_limit: OnLimit,
    max_wait: Duration,
    local: Arc<Buckets>,
    #[cfg(feature = "redis")]
    remote: Option<Arc<redis::RedisLimiter>>,
    needs_key: bool,
    needs_tokens: bool,
    /// `relay_ratelimit_backend{backend="local"}` was set by this limiter (local backend only).
    local_gauge: std::sync::atomic::AtomicBool,
}

impl Limiter {
    /// The limiter for `cfg`, keeping the buckets (and Redis connection) of `previous`.
    pub fn new(cfg: &Config, previous: Option<&Limiter>) -> Limiter {
        let mut rules = Vec::new();
        if cfg.ratelimit.enabled {
            if cfg.ratelimit.requests_per_second > 0.0 {
                rules.push(Rule {
                    name: LEGACY_RULE.to_string(),
                    scope: LimitScope::Global,
                    model: None,
                    requests: Some(Params::per_second(
                        cfg.ratelimit.requests_per_second,
                        cfg.ratelimit.burst.into(),
                    )),
                    tokens: None,
                });
            }
            for r in &cfg.limits.rules {
                rules.push(Rule {
                    name: r.name.clone(),
                    scope: r.scope,
                    model: r.model.clone(),
                    requests: r
                        .requests_per_second
                        .map(|rps| Params::per_second(rps, r.burst.into())),
                    tokens: r.tokens_per_minute.map(Params::per_minute),
                });
            }
        }
        let needs_key = rules
            .iter()
            .any(|r| matches!(r.scope, LimitScope::Key | LimitScope::KeyModel));
        let needs_tokens = rules.iter().any(|r| r.tokens.is_some());
        Limiter {
            needs_key,
            needs_tokens,
            local_gauge: Default::default(),
            on_limit: cfg.limits.on_limit,
            max_wait: cfg.limits.max_wait,
            local: previous.map(|p| p.local.clone()).unwrap_or_default(),
            #[cfg(feature = "redis")]
            remote: redis::RedisLimiter::for_config(
                cfg,
                !rules.is_empty(),
                previous.and_then(|p| p.remote.as_ref()),
            ),
            rules,
        }
    }

    /// True when at least one rule is configured.
    pub fn is_active(&self) -> bool {
        !self.rules.is_empty()
    }

    /// The stage: passes, waits for a slot (`on_limit: wait`), or refuses the request.
    pub async fn admit(&self, req: &Request<'_>, metrics: &Metrics) -> Result<Admitted, EdgeError> {
        if self.rules.is_empty() && req.own.is_none() {
            return Ok(Admitted::default());
        }
        let own = req.own.map(KeyLimits::rule);
        let needs_key = self.needs_key || own.is_some();
        let needs_tokens = self.needs_tokens || own.as_ref().is_some_and(|r| r.tokens.is_some());
        let rule_at = |i: usize| self.rules.get(i).or(own.as_ref()).expect("a rule's index");
        let key = if needs_key { req.caller } else { [0; 32] };
        let estimate = match (needs_tokens, req.body) {
            (true, Some(b)) if !b.is_empty() => estimate(b.len(), req.max_tokens),
            _ => 0,
        };
        let mut slots = Vec::with_capacity(self.rules.len() * 2);
        for (i, rule) in self.rules.iter().chain(own.as_ref()).enumerate() {
            if let Some(glob) = &rule.model {
                if !req.model.is_some_and(|m| glob.matches(m)) {
                    continue;
                }
            }
            let model = match rule.scope {
                LimitScope::Model | LimitScope::KeyModel => match req.model {
                    Some(m) => Some(m),
                    // Per-model rules limit requests that name a model.
                    None => continue,
                },
                _ => None,
            };
            let key = matches!(rule.scope, LimitScope::Key | LimitScope::KeyModel).then_some(&key);
            if let Some(params) = rule.requests {
                slots.push(Slot {
                    id: bucket_id(&rule.name, b'r', key, model),
                    params,
                    cost: 1,
                    rule: i,
                    tokens: false,
                });
            }
            if let (Some(params), true) = (rule.tokens, estimate > 0) {
                slots.push(Slot {
                    id: bucket_id(&rule.name, b't', key, model),
                    params,
                    cost: estimate,
                    rule: i,
                    tokens: true,
                });
            }
        }
        if slots.is_empty() {
            return Ok(Admitted::default());
        }
        let max_wait = match self.on_limit {
            OnLimit::Reject => Duration::ZERO,
            OnLimit::Wait => self.max_wait,
        };
        let (store, result) = self.book(&slots, max_wait, metrics).await;
        let booked = match result {
            Ok(b) => b,
            Err((i, retry_after)) => {
                let slot = slots[i];
                let rule = rule_at(slot.rule);
                metrics
                    .ratelimit_rejections
                    .with_label_values(&[rule.scope.as_str(), &rule.name])
                    .inc();
                return Err(EdgeError::RateLimited {
                    rule: rule.name.clone(),
                    tokens: slot.tokens,
                    retry_after,
                    headers: (!slot.tokens).then_some(RateHeaders {
                        limit: slot.params.capacity,
                        remaining: 0,
                        reset: retry_after,
                    }),
                });
            }
        };
        let wait = booked.iter().map(|b| b.wait).max().unwrap_or_default();
        if !wait.is_zero() {
            // Dropped while waiting (the caller left): the booked slots are given back.
            let guard = Refund {
                store: &store,
                slots: &slots,
                armed: true,
            };
            metrics.ratelimit_wait.observe(wait.as_secs_f64());
            tokio::time::sleep(wait).await;
            guard.disarm();
        }
        let headers = slots
            .iter()
            .zip(&booked)
            .filter(|(s, _)| !s.tokens)
            .min_by_key(|(_, b)| b.remaining)
            .map(|(s, b)| RateHeaders {
                limit: s.params.capacity,
                remaining: b.remaining,
                reset: b.reset.saturating_sub(wait),
            });
        let token_slots: Vec<(BucketId, Params)> = slots
            .iter()
            .filter(|s| s.tokens)
            .map(|s| (s.id, s.params))
            .collect();
        Ok(Admitted {
            headers,
            tokens: (!token_slots.is_empty()).then_some(Reservation {
                estimate,
                slots: token_slots,
                store,
            }),
        })
    }

    /// Books on Redis when configured and reachable, else in process.
    async fn book(
        &self,
        slots: &[Slot],
        max_wait: Duration,
        metrics: &Metrics,
    ) -> (Store, Result<Vec<Booked>, (usize, Duration)>) {
        #[cfg(feature = "redis")]
        if let Some(remote) = &self.remote {
            if let Some(result) = remote.book(slots, max_wait, metrics).await {
                return (Store::Redis(remote.clone()), result);
            }
        }
        #[cfg(feature = "redis")]
        let remote = self.remote.is_some();
        #[cfg(not(feature = "redis"))]
        let remote = false;
        if !remote
            && !self
                .local_gauge
                .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            metrics
                .ratelimit_backend
                .with_label_values(&["local"])
                .set(1);
            metrics
                .ratelimit_backend
                .with_label_values(&["redis"])
                .set(0);
        }
        (
            Store::Local(self.local.clone()),
            self.local.book(slots, max_wait),
        )
    }
}

/// Gives booked slots back unless disarmed.
struct Refund<'a> {
    store: &'a Store,
    slots: &'a [Slot],
    armed: bool,
}

impl Refund<'_> {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Refund<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        for s in self.slots {
            let cost = s.params.clamp(s.cost) as i64;
            self.store.adjust(&[(s.id, s.params)], -cost);
        }
    }
}

fn bucket_id(rule: &str, kind: u8, key: Option<&[u8; 32]>, model: Option<&str>) -> BucketId {
    let mut h = blake3::Hasher::new();
    h.update(&(rule.len() as u64).to_le_bytes());
    h.update(rule.as_bytes());
    h.update(&[kind]);
    if let Some(k) = key {
        h.update(b"k");
        h.update(k);
    }
    if let Some(m) = model {
        h.update(b"m");
        h.update(m.as_bytes());
    }
    *h.finalize().as_bytes()
}

#[cfg(test)]
mod tests;
