//! Circuit breakers, one per provider endpoint: stop calling an upstream that keeps failing, probe it after a
//! cooldown, resume when it answers again.
//!
//! [`Circuit`] is the state machine; the request path only asks its gate ([`Circuit::admit`]) and
//! reports the outcome on the [`Ticket`] it got. States:
//! - **closed**: every request goes through. Failures (connect errors, timeouts, 5xx; 429 with
//!   `count_429`; a stream cut by the idle timeout, judged when it ends) are counted; `consecutive_failures` in a row, or a failure ratio ≥
//!   `failure_ratio` over the rolling `window` once it holds ≥ `min_requests` requests, open it.
//! - **open**: requests are refused at once (503 with `Retry-After` = the rest of the cooldown) and
//!   never reach the upstream; after `cooldown` the next request moves it to half-open.
//! - **half-open**: up to `half_open_requests` probes go through at once (others are refused); a
//!   probe's success closes the circuit, its failure opens it again for another cooldown.
//!
//! The closed path is lock-free (atomics); transitions are compare-and-swaps. Every transition sets
//! `relay_circuit_state{provider,endpoint}` (0 closed, 1 half-open, 2 open) and counts
//! `relay_circuit_transitions_total{provider,endpoint,to}`. Time is `tokio::time` (paused-clock tests).

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::BreakerConfig;
use crate::metrics::Metrics;

const CLOSED: u8 = 0;
const HALF_OPEN: u8 = 1;
const OPEN: u8 = 2;

/// Slots of the rolling window.
const SLOTS: u64 = 10;
/// What a refused request is told while half-open probes are running.
const PROBE_RETRY: Duration = Duration::from_secs(1);

/// A circuit's state, as exported in `relay_circuit_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    HalfOpen,
    Open,
}

impl State {
    fn from_u8(v: u8) -> State {
        match v {
            CLOSED => State::Closed,
            HALF_OPEN => State::HalfOpen,
            _ => State::Open,
        }
    }

    /// The `to` label of `relay_circuit_transitions_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::HalfOpen => "half_open",
            State::Open => "open",
        }
    }
}

/// How a call through the circuit went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Success,
    Failure,
}

impl Verdict {
    /// The outcome of an upstream answer with `status`: 5xx fail, 429 fails when configured.
    pub fn of_status(status: u16, count_429: bool) -> Verdict {
        if status >= 500 || (status == 429 && count_429) {
            Verdict::Failure
        } else {
            Verdict::Success
        }
    }
}

#[derive(Debug, Default)]
struct Slot {
    index: AtomicU64,
    ok: AtomicU32,
    failed: AtomicU32,
}

/// One provider endpoint's circuit.
#[derive(Debug)]
pub struct Circuit {
    provider: String,
    endpoint: String,
    cfg: BreakerConfig,
    epoch: Instant,
    state: AtomicU8,
    /// When it last opened (ns since `epoch`).
    opened_at: AtomicU64,
    probes: AtomicU32,
    consecutive: AtomicU32,
    slot_ns: u64,
    window: [Slot; SLOTS as usize],
    /// `relay_circuit_state` has been set for this circuit.
    exported: std::sync::atomic::AtomicBool,
}

impl Circuit {
    pub fn new(provider: &str, endpoint: &str, cfg: BreakerConfig) -> Circuit {
        Circuit {
            provider: provider.to_string(),
            endpoint: endpoint.to_string(),
            slot_ns: (cfg.window.as_nanos() as u64 / SLOTS).max(1),
            cfg,
            epoch: Instant::now(),
            state: AtomicU8::new(CLOSED),
            opened_at: AtomicU64::new(0),
            probes: AtomicU32::new(0),
            consecutive: AtomicU32::new(0),
            window: Default::default(),
            exported: Default::default(),
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    pub fn settings(&self) -> &BreakerConfig {
        &self.cfg
    }

    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Acquire))
    }

    /// The gate: a ticket to call the upstream, or how long until the circuit may let one through.
    pub fn admit(self: &Arc<Self>, metrics: &Metrics) -> Result<Ticket, Duration> {
        if !self.exported.load(Ordering::Relaxed) && !self.exported.swap(true, Ordering::AcqRel) {
            self.export(self.state(), metrics);
        }
        let now = self.now();
        loop {
            match self.state.load(Ordering::Acquire) {
                CLOSED => return Ok(self.ticket(false)),
                OPEN => {
                    let until = self.opened_at.load(Ordering::Acquire)
                        + self.cfg.cooldown.as_nanos() as u64;
                    if now < until {
                        return Err(Duration::from_nanos(until - now));
                    }
                    self.probes.store(0, Ordering::Release);
                    self.transition(OPEN, HALF_OPEN, metrics);
                }
                _ => {
                    let limit = self.cfg.half_open_requests;
                    return match self.probes.fetch_update(
                        Ordering::AcqRel,
                        Ordering::Acquire,
                        |p| (p < limit).then_some(p + 1),
                    ) {
                        Ok(_) => Ok(self.ticket(true)),
                        Err(_) => Err(PROBE_RETRY),
                    };
                }
            }
        }
    }

    fn ticket(self: &Arc<Self>, probe: bool) -> Ticket {
        Ticket {
            circuit: self.clone(),
            probe,
            done: false,
        }
    }

    fn transition(&self, from: u8, to: u8, metrics: &Metrics) -> bool {
        if self
            .state
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        let to = State::from_u8(to);
        self.export(to, metrics);
        metrics
            .circuit_transitions
            .with_label_values(&[&self.provider, &self.endpoint, to.as_str()])
            .inc();
        match to {
            State::Open => {
                tracing::warn!(provider = %self.provider, endpoint = %self.endpoint, cooldown = %humantime::format_duration(self.cfg.cooldown), "circuit open: upstream failing, requests paused")
            }
            State::Closed => {
                tracing::info!(provider = %self.provider, endpoint = %self.endpoint, "circuit closed: upstream answering again")
            }
            State::HalfOpen => {
                tracing::info!(provider = %self.provider, endpoint = %self.endpoint, "circuit half-open: probing the upstream")
            }
        }
        true
    }

    fn export(&self, state: State, metrics: &Metrics) {
        let level = match state {
            State::Closed => 0,
            State::HalfOpen => 1,
            State::Open => 2,
        };
        metrics
            .circuit_state
            .with_label_values(&[&self.provider, &self.endpoint])
            .set(level);
    }

    fn open(&self, from: u8, now: u64, metrics: &Metrics) {
        self.opened_at.store(now, Ordering::Release);
        self.transition(from, OPEN, metrics);
    }

    fn record(&self, probe: bool, outcome: Verdict, metrics: &Metrics) {
        let now = self.now();
        if probe {
            self.probes.fetch_sub(1, Ordering::AcqRel);
            match outcome {
                Verdict::Success => {
                    self.consecutive.store(0, Ordering::Release);
                    for s in &self.window {
                        s.ok.store(0, Ordering::Relaxed);
                        s.failed.store(0, Ordering::Relaxed);
                    }
                    self.transition(HALF_OPEN, CLOSED, metrics);
                }
                Verdict::Failure => self.open(HALF_OPEN, now, metrics),
            }
            return;
        }
        if self.state.load(Ordering::Acquire) != CLOSED {
            return; // a straggler from before the circuit opened
        }
        let index = now / self.slot_ns;
        let slot = &self.window[(index % SLOTS) as usize];
        let seen = slot.index.load(Ordering::Acquire);
        if seen != index
            && slot
                .index
                .compare_exchange(seen, index, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            slot.ok.store(0, Ordering::Release);
            slot.failed.store(0, Ordering::Release);
        }
        match outcome {
            Verdict::Success => {
                slot.ok.fetch_add(1, Ordering::AcqRel);
                self.consecutive.store(0, Ordering::Release);
            }
            Verdict::Failure => {
                slot.failed.fetch_add(1, Ordering::AcqRel);
                let run = self.consecutive.fetch_add(1, Ordering::AcqRel) + 1;
                let (ok, failed) = self.window_counts(index);
                let total = ok + failed;
                let ratio_trips = total >= u64::from(self.cfg.min_requests)
                    && failed as f64 >= self.cfg.failure_ratio * total as f64;
                if run >= self.cfg.consecutive_failures || ratio_trips {
                    self.open(CLOSED, now, metrics);
                }
            }
        }
    }

    fn window_counts(&self, index: u64) -> (u64, u64) {
        let oldest = index.saturating_sub(SLOTS - 1);
        self.window
            .iter()
            .filter(|s| (oldest..=index).contains(&s.index.load(Ordering::Acquire)))
            .fold((0, 0), |(ok, failed), s| {
                (
                    ok + u64::from(s.ok.load(Ordering::Acquire)),
                    failed + u64::from(s.failed.load(Ordering::Acquire)),
                )
            })
    }
}

/// Permission for one upstream call. Report how it went with [`Ticket::record`]; a ticket dropped
/// unreported (the caller left first) counts as neither success nor failure.
#[derive(Debug)]
pub struct Ticket {
    circuit: Arc<Circuit>,
    probe: bool,
    done: bool,
}

impl Ticket {
    pub fn record(mut self, outcome: Verdict, metrics: &Metrics) {
        self.done = true;
        self.circuit.record(self.probe, outcome, metrics);
    }

    /// Records the outcome of an upstream answer with `status`.
    pub fn record_status(self, status: u16, metrics: &Metrics) {
        let outcome = Verdict::of_status(status, self.circuit.cfg.count_429);
        self.record(outcome, metrics);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.done && self.probe {
            self.circuit.probes.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(consecutive: u32, ratio: f64, min: u32) -> BreakerConfig {
        BreakerConfig {
            enabled: true,
            consecutive_failures: consecutive,
            failure_ratio: ratio,
            min_requests: min,
            window: Duration::from_secs(10),
            cooldown: Duration::from_secs(30),
            half_open_requests: 1,
            count_429: false,
        }
    }

    fn call(c: &Arc<Circuit>, m: &Metrics, outcome: Verdict) {
        c.admit(m).expect("admitted").record(outcome, m);
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_then_probes_and_closes() {
        let m = Metrics::new();
        let c = Arc::new(Circuit::new("p", "e", cfg(3, 1.0, 100)));
        call(&c, &m, Verdict::Failure);
        call(&c, &m, Verdict::Failure);
        call(&c, &m, Verdict::Success); // resets the run
        call(&c, &m, Verdict::Failure);
        call(&c, &m, Verdict::Failure);
        assert_eq!(c.state(), State::Closed);
        call(&c, &m, Verdict::Failure);
        assert_eq!(c.state(), State::Open);
        assert_eq!(c.admit(&m).unwrap_err(), Duration::from_secs(30));

        tokio::time::advance(Duration::from_secs(29)).await;
        assert_eq!(c.admit(&m).unwrap_err(), Duration::from_secs(1));
        tokio::time::advance(Duration::from_secs(1)).await;
        let probe = c.admit(&m).expect("a probe after the cooldown");
        assert_eq!(c.state(), State::HalfOpen);
        // Only one probe at a time.
        assert_eq!(c.admit(&m).unwrap_err(), PROBE_RETRY);
        probe.record(Verdict::Success, &m);
        assert_eq!(c.state(), State::Closed);
        call(&c, &m, Verdict::Success);
        let text = m.render();
        assert!(
            text.contains(r#"relay_circuit_state{endpoint="e",provider="p"} 0"#),
            "{text}"
        );
        assert!(text
            .contains(r#"relay_circuit_transitions_total{endpoint="e",provider="p",to="open"} 1"#));
        assert!(text.contains(
            r#"relay_circuit_transitions_total{endpoint="e",provider="p",to="closed"} 1"#
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probe_reopens_and_dropped_probe_frees_its_slot() {
        let m = Metrics::new();
        let c = Arc::new(Circuit::new("p", "e", cfg(1, 1.0, 100)));
        call(&c, &m, Verdict::Failure);
        assert_eq!(c.state(), State::Open);
        tokio::time::advance(Duration::from_secs(30)).await;
        drop(c.admit(&m).expect("probe")); // the caller left
        let probe = c.admit(&m).expect("the slot is free again");
        probe.record(Verdict::Failure, &m);
        assert_eq!(c.state(), State::Open);
        assert_eq!(c.admit(&m).unwrap_err(), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn failure_ratio_over_the_window() {
        let m = Metrics::new();
        let c = Arc::new(Circuit::new("p", "e", cfg(100, 0.5, 10)));
        // 4 failures in 9 requests: under min_requests.
        for i in 0..9 {
            let o = if i % 2 == 0 {
                Verdict::Success
            } else {
                Verdict::Failure
            };
            call(&c, &m, o);
        }
        assert_eq!(c.state(), State::Closed);
        // Old results leave the window: 10 s later only new ones count.
        tokio::time::advance(Duration::from_secs(11)).await;
        for _ in 0..6 {
            call(&c, &m, Verdict::Success);
        }
        for _ in 0..4 {
            call(&c, &m, Verdict::Failure);
        }
        assert_eq!(c.state(), State::Closed, "4 of 10 is under 0.5");
        call(&c, &m, Verdict::Failure);
        call(&c, &m, Verdict::Failure);
        assert_eq!(c.state(), State::Open, "6 of 12");
    }

    #[test]
    fn statuses() {
        assert_eq!(Verdict::of_status(200, false), Verdict::Success);
        assert_eq!(Verdict::of_status(404, false), Verdict::Success);
        assert_eq!(Verdict::of_status(503, false), Verdict::Failure);
        assert_eq!(Verdict::of_status(429, false), Verdict::Success);
        assert_eq!(Verdict::of_status(429, true), Verdict::Failure);
    }
}
