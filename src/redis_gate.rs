//! Whether Redis may be asked now: one gate per use of Redis (the shared cache, the shared rate
//! limits), so a Redis that is down or hung costs one request its timeout, not every request.
//!
//! The first failure (an error, or no answer within the caller's timeout) closes the gate: from
//! then on [`Gate::open`] is false and callers use their local fallback at once. A background
//! probe (`PING`, [`PROBE_TIMEOUT`]) runs every [`PROBE_EVERY`] and opens the gate again when Redis
//! answers. Each change is logged once and reported through the gate's `on_change` (metrics).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::aio::ConnectionManager;

/// How often a closed gate probes Redis.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long one probe may wait for Redis's answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(250);

/// See the module docs.
pub struct Gate {
    /// What relay uses Redis for, for the log (`cache`, `rate limits`).
    what: &'static str,
    closed: AtomicBool,
    probing: AtomicBool,
    on_change: Box<dyn Fn(bool) + Send + Sync>,
}

impl Gate {
    /// A gate that starts open. `on_change(open)` runs on every change.
    pub fn new(what: &'static str, on_change: impl Fn(bool) + Send + Sync + 'static) -> Arc<Gate> {
        Arc::new(Gate {
            what,
            closed: AtomicBool::new(false),
            probing: AtomicBool::new(false),
            on_change: Box::new(on_change),
        })
    }

    /// Whether callers may ask Redis now (one atomic load).
    pub fn open(&self) -> bool {
        !self.closed.load(Ordering::Acquire)
    }

    /// A call to Redis failed with `error`: close the gate (logged once) and probe `conn` in the
    /// background until Redis answers.
    pub fn failed(self: &Arc<Self>, conn: &ConnectionManager, error: &str) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            tracing::warn!(error, "{}: Redis is not answering; using the local fallback until it does (probing every {} s)", self.what, PROBE_EVERY.as_secs());
            (self.on_change)(false);
        }
        if self.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            self.probing.store(false, Ordering::Release);
            return;
        };
        let weak: Weak<Gate> = Arc::downgrade(self);
        let mut conn = conn.clone();
        handle.spawn(async move {
            loop {
                tokio::time::sleep(PROBE_EVERY).await;
                let Some(gate) = weak.upgrade() else { return };
                let cmd = redis::cmd("PING");
                let ping = cmd.query_async::<String>(&mut conn);
                if let Ok(Ok(_)) = tokio::time::timeout(PROBE_TIMEOUT, ping).await {
                    gate.probing.store(false, Ordering::Release);
                    if gate.closed.swap(false, Ordering::AcqRel) {
                        tracing::info!("{}: Redis answers again; shared state resumed", gate.what);
                        (gate.on_change)(true);
                    }
                    return;
                }
            }
        });
    }

    /// A call to Redis succeeded (reopens a gate a caller found closed and tried anyway).
    pub fn succeeded(&self) {
        if self.closed.load(Ordering::Acquire) && self.closed.swap(false, Ordering::AcqRel) {
            tracing::info!("{}: Redis answers again; shared state resumed", self.what);
            (self.on_change)(true);
        }
    }
}
