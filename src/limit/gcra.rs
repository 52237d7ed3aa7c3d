//! GCRA (the generic cell rate algorithm): a token bucket kept as one number per bucket, the
//! "theoretical arrival time" (TAT), in one `AtomicU64`. No lock: a booking is a compare-and-swap.
//!
//! A bucket with rate `1/T` and capacity `C` admits a request of cost `n` at time `now` when
//! `max(TAT, now) + n·T − C·T ≤ now`; admitting moves TAT to `max(TAT, now) + n·T`. A request that
//! does not fit yet may *book* its slot up to `max_wait` ahead (the `wait` mode): TAT moves the
//! same way, and the caller waits until the slot's time. Times are nanoseconds since the owner's
//! epoch (a `tokio::time::Instant`, so tests step it with the paused clock).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A bucket's shape: one unit every `interval_ns`, `capacity` units at most at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// Nanoseconds per unit (request or token); at least 1.
    pub interval_ns: u64,
    /// Units allowed at once (the burst); at least 1.
    pub capacity: u64,
}

impl Params {
    /// `rate` units per second, `capacity` at once.
    pub fn per_second(rate: f64, capacity: u64) -> Params {
        Params {
            interval_ns: ((1e9 / rate).round() as u64).max(1),
            capacity: capacity.max(1),
        }
    }

    /// `per_minute` units per minute; a minute's worth may go at once.
    pub fn per_minute(per_minute: u64) -> Params {
        Params {
            interval_ns: (60_000_000_000 / per_minute.max(1)).max(1),
            capacity: per_minute.max(1),
        }
    }

    fn tolerance(&self) -> u64 {
        self.capacity.saturating_mul(self.interval_ns)
    }

    /// A cost above the capacity could never pass; it is booked as a full bucket instead.
    pub fn clamp(&self, cost: u64) -> u64 {
        cost.min(self.capacity)
    }
}

/// The result of a successful booking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Booked {
    /// How long the caller must wait for its slot (zero: go now).
    pub wait: Duration,
    /// Units still available at once after this booking.
    pub remaining: u64,
    /// Until the bucket is full again.
    pub reset: Duration,
}

/// One bucket.
#[derive(Debug, Default)]
pub struct Cell {
    tat: AtomicU64,
}

impl Cell {
    pub fn new() -> Cell {
        Cell::default()
    }

    /// Books `cost` units at `now` if the slot is at most `max_wait` away; otherwise returns how
    /// long until it would fit without waiting (the `Retry-After`).
    pub fn book(&self, now: u64, cost: u64, p: Params, max_wait: u64) -> Result<Booked, Duration> {
        let cost = p.clamp(cost);
        let mut tat = self.tat.load(Ordering::Acquire);
        loop {
            let (new, wait) = step(tat, now, cost, p);
            if wait > max_wait {
                return Err(Duration::from_nanos(wait));
            }
            match self
                .tat
                .compare_exchange_weak(tat, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(booked(new, now, p, wait)),
                Err(seen) => tat = seen,
            }
        }
    }

    /// Moves TAT by `delta_units` (positive: more used than booked; negative: give back), never
    /// back before `now` (an idle bucket is simply full).
    pub fn adjust(&self, now: u64, delta_units: i64, p: Params) {
        let delta = (delta_units.unsigned_abs()).saturating_mul(p.interval_ns);
        let _ = self
            .tat
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| {
                Some(if delta_units >= 0 {
                    tat.max(now).saturating_add(delta)
                } else {
                    tat.saturating_sub(delta).max(now)
                })
            });
    }

    /// True when the bucket is full at `now` (it holds nothing worth keeping).
    pub fn is_idle(&self, now: u64) -> bool {
        self.tat.load(Ordering::Relaxed) <= now
    }
}

/// The TAT after booking `cost` at `now`, and the wait before the booking's slot.
pub fn step(tat: u64, now: u64, cost: u64, p: Params) -> (u64, u64) {
    let new = tat
        .max(now)
        .saturating_add(cost.saturating_mul(p.interval_ns));
    let fits_at = new.saturating_sub(p.tolerance());
    (new, fits_at.saturating_sub(now))
}

fn booked(new: u64, now: u64, p: Params, wait: u64) -> Booked {
    let ahead = new.saturating_sub(now);
    Booked {
        wait: Duration::from_nanos(wait),
        remaining: p.tolerance().saturating_sub(ahead) / p.interval_ns,
        reset: Duration::from_nanos(ahead),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn burst_then_refill() {
        let p = Params::per_second(1.0, 3);
        let c = Cell::new();
        let t0 = 100 * S;
        for left in [2, 1, 0] {
            let b = c.book(t0, 1, p, 0).unwrap();
            assert_eq!((b.wait, b.remaining), (Duration::ZERO, left));
        }
        assert_eq!(c.book(t0, 1, p, 0), Err(Duration::from_secs(1)));
        // Half a second later: still half a second to go.
        assert_eq!(c.book(t0 + S / 2, 1, p, 0), Err(Duration::from_millis(500)));
        let b = c.book(t0 + S, 1, p, 0).unwrap();
        assert_eq!(b.remaining, 0);
        assert_eq!(b.reset, Duration::from_secs(3));
        // Idle long enough: full again, and never more than full.
        let b = c.book(t0 + 100 * S, 1, p, 0).unwrap();
        assert_eq!(b.remaining, 2);
    }

    #[test]
    fn one_request_per_five_seconds() {
        let p = Params::per_second(0.2, 1);
        let c = Cell::new();
        assert!(c.book(10 * S, 1, p, 0).is_ok());
        assert_eq!(c.book(10 * S, 1, p, 0), Err(Duration::from_secs(5)));
        assert_eq!(c.book(14 * S, 1, p, 0), Err(Duration::from_secs(1)));
        assert!(c.book(15 * S, 1, p, 0).is_ok());
    }

    #[test]
    fn waiting_books_future_slots_in_order() {
        let p = Params::per_second(2.0, 1);
        let c = Cell::new();
        let t = 10 * S;
        assert_eq!(c.book(t, 1, p, 2 * S).unwrap().wait, Duration::ZERO);
        assert_eq!(
            c.book(t, 1, p, 2 * S).unwrap().wait,
            Duration::from_millis(500)
        );
        assert_eq!(c.book(t, 1, p, 2 * S).unwrap().wait, Duration::from_secs(1));
        // Beyond max_wait: refused, nothing booked.
        assert_eq!(c.book(t, 1, p, S / 2), Err(Duration::from_millis(1500)));
        assert_eq!(
            c.book(t, 1, p, 2 * S).unwrap().wait,
            Duration::from_millis(1500)
        );
    }

    #[test]
    fn token_costs_and_settling() {
        let p = Params::per_minute(1000);
        let c = Cell::new();
        let t = 1000 * S;
        assert_eq!(c.book(t, 600, p, 0).unwrap().remaining, 400);
        assert!(c.book(t, 500, p, 0).is_err());
        // The first request used only 100 tokens: 500 come back.
        c.adjust(t, 100 - 600, p);
        assert_eq!(c.book(t, 500, p, 0).unwrap().remaining, 400);
        // A cost above the capacity waits for a full bucket instead of never passing.
        let c = Cell::new();
        assert_eq!(c.book(t, 5000, p, 0).unwrap().remaining, 0);
        c.adjust(t, 200, p);
        assert_eq!(c.book(t, 1, p, 0), Err(Duration::from_millis(12_060)));
    }

    #[test]
    fn concurrent_bookings_never_exceed_capacity() {
        let p = Params::per_second(1.0, 100);
        let c = std::sync::Arc::new(Cell::new());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || (0..100).filter(|_| c.book(S, 1, p, 0).is_ok()).count())
            })
            .collect();
        let admitted: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(admitted, 100);
    }
}
