//! A provider's pools at run time: which endpoint and which key a try goes to.
//!
//! Each endpoint has its own circuit breaker (passive health), the active health check's last
//! result ([`super::health_check`]), an EWMA of its time to the answer's headers and the number of
//! tries it has in flight. [`Pool::pick`] chooses by the provider's strategy among the endpoints
//! that may be called: not failed earlier in this request, healthy, circuit admitting; when none
//! is, the unhealthy and the already-failed ones are tried before giving up with the shortest
//! wait. A provider with one endpoint costs one circuit check.
//!
//! Keys: a try without the caller's own key gets the provider's next key in turn that is not
//! resting; a pooled key answered with 429 rests until its `Retry-After` (else
//! [`KEY_REST_DEFAULT`]) ends. When every key rests, the one that wakes first is used.
//!
//! State carries over a config reload for every endpoint (provider, name, URL and breaker
//! settings unchanged) and key (same key) that stays.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use prometheus::{Gauge, IntCounter};

use crate::config::{BaseUrl, Config, Provider, ProviderKey, Secret, Strategy};
use crate::limit::breaker::{Circuit, Ticket};
use crate::metrics::Metrics;

/// How long a pooled key rests after a 429 that does not say.
pub const KEY_REST_DEFAULT: Duration = Duration::from_secs(5);
/// The longest rest a 429 can ask of a key.
const KEY_REST_MAX: Duration = Duration::from_secs(600);
/// The weight of the newest sample in an endpoint's latency EWMA.
const EWMA_ALPHA: f64 = 0.3;
/// An endpoint whose latency was not measured for this long gets the next `least-latency` try
/// (so one that became fast again is seen).
const EWMA_STALE: Duration = Duration::from_secs(5);

/// A process-wide origin for the atomics below (nanoseconds since).
fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64 + 1
}

/// A random number (the std hasher's per-call random keys; no crate needed for this).
fn random() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    RandomState::new().hash_one(N.fetch_add(1, Ordering::Relaxed))
}

/// One endpoint's run-time state.
#[derive(Debug)]
pub struct EndpointState {
    pub name: String,
    pub url: BaseUrl,
    pub weight: u32,
    pub circuit: Option<Arc<Circuit>>,
    /// The active health check's last result (true until a check says otherwise).
    healthy: AtomicBool,
    /// Latency EWMA in ns (0: not measured yet).
    ewma_ns: AtomicU64,
    /// When the EWMA last took a sample ([`now_ns`]).
    sampled_at: AtomicU64,
    pending: AtomicU32,
    failures: AtomicU64,
    /// `relay_endpoint_requests_total` and `relay_endpoint_latency_seconds` of this endpoint.
    handles: OnceLock<(IntCounter, Gauge)>,
}

impl EndpointState {
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Sets the active check's result; true when it changed.
    pub fn set_healthy(&self, up: bool) -> bool {
        self.healthy.swap(up, Ordering::AcqRel) != up
    }

    /// The latency EWMA, once measured.
    pub fn latency(&self) -> Option<Duration> {
        match self.ewma_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }

    pub fn in_flight(&self) -> u32 {
        self.pending.load(Ordering::Relaxed)
    }

    /// Tries sent and tries that failed (connect errors, timeouts, 5xx).
    pub fn counts(&self) -> (u64, u64) {
        (
            self.handles.get().map_or(0, |(requests, _)| requests.get()),
            self.failures.load(Ordering::Relaxed),
        )
    }

    /// What `least-latency` minimises: EWMA × (in flight + 1); 0 (first) when not measured lately.
    fn cost(&self, now: u64) -> u64 {
        let ewma = self.ewma_ns.load(Ordering::Relaxed);
        if ewma == 0
            || now.saturating_sub(self.sampled_at.load(Ordering::Relaxed))
                > EWMA_STALE.as_nanos() as u64
        {
            return 0;
        }
        ewma.saturating_mul(u64::from(self.in_flight()) + 1)
    }

    fn handles(&self, provider: &str, metrics: &Metrics) -> &(IntCounter, Gauge) {
        self.handles.get_or_init(|| {
            let l = [provider, self.name.as_str()];
            (
                metrics.endpoint_requests.with_label_values(&l),
                metrics.endpoint_latency.with_label_values(&l),
            )
        })
    }
}

/// One pooled key's run-time state.
#[derive(Debug)]
pub struct KeyState {
    pub label: String,
    secret: Secret,
    /// Resting until ([`now_ns`]); 0: serving.
    rest_until: AtomicU64,
}

impl KeyState {
    /// How long it still rests.
    pub fn resting(&self) -> Option<Duration> {
        let until = self.rest_until.load(Ordering::Relaxed);
        let now = now_ns();
        (until > now).then(|| Duration::from_nanos(until - now))
    }
}

/// The endpoint a try goes to, with its circuit ticket and in-flight mark.
pub struct Picked<'a> {
    pub index: usize,
    pub endpoint: &'a EndpointState,
    pub ticket: Option<Ticket>,
    pending: Option<&'a AtomicU32>,
}

impl Drop for Picked<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.pending {
            p.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// One provider's endpoints and keys.
#[derive(Debug)]
pub struct Pool {
    pub provider: String,
    pub strategy: Strategy,
    pub endpoints: Vec<Arc<EndpointState>>,
    pub keys: Vec<Arc<KeyState>>,
    /// `weighted`: endpoint indexes in smooth weighted round-robin order, one turn.
    schedule: Vec<u16>,
    cursor: AtomicUsize,
    key_cursor: AtomicUsize,
}

impl Pool {
    fn new(p: &Provider, previous: Option<&Pool>) -> Pool {
        let endpoints = p
            .endpoints
            .iter()
            .map(|e| {
                let kept = previous.and_then(|prev| {
                    prev.endpoints.iter().find(|s| {
                        s.name == e.name
                            && s.url == e.url
                            && s.circuit.as_ref().map(|c| c.settings())
                                == p.breaker.enabled.then_some(&p.breaker)
                    })
                });
                match kept {
                    Some(s) if s.weight == e.weight => s.clone(),
                    _ => Arc::new(EndpointState {
                        name: e.name.clone(),
                        url: e.url.clone(),
                        weight: e.weight,
                        circuit: kept.and_then(|s| s.circuit.clone()).or_else(|| {
                            p.breaker.enabled.then(|| {
                                Arc::new(Circuit::new(&p.name, &e.name, p.breaker.clone()))
                            })
                        }),
                        healthy: AtomicBool::new(kept.is_none_or(|s| s.healthy())),
                        ewma_ns: AtomicU64::new(
                            kept.map_or(0, |s| s.ewma_ns.load(Ordering::Relaxed)),
                        ),
                        sampled_at: AtomicU64::new(0),
                        pending: AtomicU32::new(0),
                        failures: AtomicU64::new(0),
                        handles: OnceLock::new(),
                    }),
                }
            })
            .collect();
        let keys = p
            .keys
            .iter()
            .map(|k: &ProviderKey| {
                previous
                    .and_then(|prev| {
                        prev.keys
                            .iter()
                            .find(|s| s.secret == k.secret && s.label == k.label)
                    })
                    .cloned()
                    .unwrap_or_else(|| {
                        Arc::new(KeyState {
                            label: k.label.clone(),
                            secret: k.secret.clone(),
                            rest_until: AtomicU64::new(0),
                        })
                    })
            })
            .collect();
        let weights: Vec<u32> = p.endpoints.iter().map(|e| e.weight).collect();
        Pool {
            provider: p.name.clone(),
            strategy: p.strategy,
            endpoints,
            keys,
            schedule: smooth_schedule(&weights),
            cursor: AtomicUsize::new(0),
            key_cursor: AtomicUsize::new(0),
        }
    }

    /// The endpoint for the next try (module docs). `failed`: bit `i` set for endpoint `i`
    /// failed earlier in this request. `Err`: every circuit is open, with the shortest wait.
    pub fn pick(&self, failed: u64, metrics: &Metrics) -> Result<Picked<'_>, Duration> {
        let n = self.endpoints.len();
        let first = if n == 1 { 0 } else { self.first_choice() };
        let mut wait: Option<Duration> = None;
        // Rank 0: not failed here and healthy; 1: not failed here; 2: any.
        for rank in 0..3 {
            for k in 0..n {
                let i = (first + k) % n;
                let e = &self.endpoints[i];
                let was_failed = i < 64 && failed & (1 << i) != 0;
                let fits = match rank {
                    0 => !was_failed && e.healthy(),
                    1 => !was_failed && !e.healthy(),
                    _ => was_failed,
                };
                if !fits {
                    continue;
                }
                let ticket = match &e.circuit {
                    None => None,
                    Some(c) => match c.admit(metrics) {
                        Ok(t) => Some(t),
                        Err(w) => {
                            wait = Some(wait.map_or(w, |m| m.min(w)));
                            continue;
                        }
                    },
                };
                let (requests, _) = e.handles(&self.provider, metrics);
                requests.inc();
                let pending = (n > 1).then(|| {
                    e.pending.fetch_add(1, Ordering::Relaxed);
                    &e.pending
                });
                return Ok(Picked {
                    index: i,
                    endpoint: e,
                    ticket,
                    pending,
                });
            }
        }
        Err(wait.unwrap_or(Duration::from_secs(1)))
    }

    /// The strategy's own choice, before availability.
    fn first_choice(&self) -> usize {
        let n = self.endpoints.len();
        match self.strategy {
            Strategy::RoundRobin => self.cursor.fetch_add(1, Ordering::Relaxed) % n,
            Strategy::Weighted => {
                let s = &self.schedule;
                usize::from(s[self.cursor.fetch_add(1, Ordering::Relaxed) % s.len()])
            }
            Strategy::Random => {
                let total: u64 = self.endpoints.iter().map(|e| u64::from(e.weight)).sum();
                let mut r = random() % total.max(1);
                for (i, e) in self.endpoints.iter().enumerate() {
                    if r < u64::from(e.weight) {
                        return i;
                    }
                    r -= u64::from(e.weight);
                }
                n - 1
            }
            Strategy::LeastLatency => {
                // The better of two at random (two choices: no herd on one endpoint).
                let r = random();
                let a = (r % n as u64) as usize;
                let b = (a + 1 + ((r >> 32) % (n as u64 - 1)) as usize) % n;
                let now = now_ns();
                let (ca, cb) = (self.endpoints[a].cost(now), self.endpoints[b].cost(now));
                if cb < ca {
                    b
                } else {
                    a
                }
            }
        }
    }

    /// Records how a try to `endpoint` went: its latency to the headers (an answer), or a failure.
    pub fn observe(
        &self,
        e: &EndpointState,
        latency: Option<Duration>,
        failed: bool,
        metrics: &Metrics,
    ) {
        if failed {
            e.failures.fetch_add(1, Ordering::Relaxed);
        }
        let Some(l) = latency else { return };
        let sample = (l.as_nanos() as u64).max(1);
        let old = e.ewma_ns.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            ((old as f64) + EWMA_ALPHA * (sample as f64 - old as f64)).max(1.0) as u64
        };
        e.ewma_ns.store(new, Ordering::Relaxed);
        e.sampled_at.store(now_ns(), Ordering::Relaxed);
        e.handles(&self.provider, metrics).1.set(new as f64 / 1e9);
    }

    /// The key for a try that brings none: the next in turn not resting, else the one that wakes
    /// first. `None` when the provider has no key.
    pub fn pick_key(&self) -> Option<(usize, &Secret)> {
        match self.keys.len() {
            0 => None,
            1 => Some((0, &self.keys[0].secret)),
            n => {
                let start = self.key_cursor.fetch_add(1, Ordering::Relaxed);
                let now = now_ns();
                let mut soonest = (u64::MAX, 0);
                for k in 0..n {
                    let i = (start + k) % n;
                    let until = self.keys[i].rest_until.load(Ordering::Relaxed);
                    if until <= now {
                        return Some((i, &self.keys[i].secret));
                    }
                    soonest = soonest.min((until, i));
                }
                Some((soonest.1, &self.keys[soonest.1].secret))
            }
        }
    }

    /// The first key (the health check's, and the one requests are booked to).
    pub fn first_key(&self) -> Option<&Secret> {
        self.keys.first().map(|k| &k.secret)
    }

    /// Whether another key than `i` is serving now.
    pub fn other_key_serving(&self, i: usize) -> bool {
        self.keys
            .iter()
            .enumerate()
            .any(|(j, k)| j != i && k.resting().is_none())
    }

    /// Puts pooled key `i` to rest after a 429 (a provider with one key never rests it: the
    /// caller gets the provider's answer, as without relay).
    pub fn rest_key(&self, i: usize, asked: Option<Duration>, metrics: &Metrics) {
        if self.keys.len() < 2 {
            return;
        }
        let rest = asked.unwrap_or(KEY_REST_DEFAULT).min(KEY_REST_MAX);
        let key = self.keys[i].clone();
        key.rest_until
            .store(now_ns() + rest.as_nanos() as u64, Ordering::Relaxed);
        let labels = [self.provider.as_str(), key.label.as_str()];
        metrics.key_rests.with_label_values(&labels).inc();
        let gauge = metrics.key_resting.with_label_values(&labels);
        gauge.set(1);
        tracing::info!(
            target: "relay::retry",
            provider = %self.provider,
            key = %key.label,
            rest_ms = rest.as_millis() as u64,
            "key rests after a 429"
        );
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                tokio::time::sleep(rest).await;
                if key.resting().is_none() {
                    gauge.set(0);
                }
            });
        }
    }
}

/// Smooth weighted round-robin (nginx's): one turn of endpoint indexes, each as often as its
/// weight, spread out (weights 3, 1: `0 0 1 0`, never a run of one endpoint where it can be
/// avoided). Weights are divided by their gcd first.
fn smooth_schedule(weights: &[u32]) -> Vec<u16> {
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let w: Vec<i64> = weights.iter().map(|&x| i64::from(x / g)).collect();
    let total: i64 = w.iter().sum();
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, wi) in current.iter_mut().zip(&w) {
            *c += wi;
        }
        let best = (0..w.len())
            .max_by_key(|&i| (current[i], -(i as i64)))
            .unwrap_or(0);
        current[best] -= total;
        out.push(best as u16);
    }
    if out.is_empty() {
        out.push(0);
    }
    out
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The pools of one config, by provider index.
#[derive(Debug, Default)]
pub struct Pools {
    pools: Vec<Arc<Pool>>,
}

impl Pools {
    pub fn new(cfg: &Config, previous: Option<&Pools>) -> Pools {
        let pools = cfg
            .providers
            .iter()
            .map(|p| {
                let prev = previous.and_then(|ps| ps.pools.iter().find(|q| q.provider == p.name));
                Arc::new(Pool::new(p, prev.map(|a| a.as_ref())))
            })
            .collect();
        Pools { pools }
    }

    pub fn get(&self, index: usize) -> &Arc<Pool> {
        &self.pools[index]
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Pool>> {
        self.pools.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooth_weights() {
        assert_eq!(smooth_schedule(&[3, 1]), vec![0, 0, 1, 0]);
        assert_eq!(smooth_schedule(&[2, 2]), vec![0, 1]);
        assert_eq!(smooth_schedule(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        let s = smooth_schedule(&[7, 3]);
        assert_eq!(s.iter().filter(|&&i| i == 0).count(), 7);
        assert_eq!(s.len(), 10);
    }
}
