//! Budgets: per-key spend for the current UTC day and month, and the check made before a request
//! goes upstream.
//!
//! A request with a budget reserves what it may cost before it goes upstream ([`Spend::reserve`]:
//! a bound, never less than it can cost: every byte of its body as an input token at the
//! dearest input rate, its `max_tokens` at the output rate) and settles the real cost when it
//! ends. It is let through while the spend plus every reservation in flight plus its own stays
//! within the budget, or when nothing else of its key is in flight; otherwise it waits for those
//! to settle ([`Spend::freed`]). So with any number of concurrent requests the spend passes a
//! budget by at most one request's cost. At start the month so far is loaded from the ledger.
//! Days and months are UTC, from the injected clock; a budget resets at the next UTC midnight
//! (daily) or the first of the next month (monthly).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use tokio::sync::Notify;

use crate::config::Budget;
use crate::shard::{lock, Sharded};

/// A UTC calendar day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Day {
    pub year: i32,
    pub month: u32,
    pub day: u32,
}

impl Day {
    /// The UTC day of a unix time in milliseconds.
    pub fn of_ms(ms: u64) -> Day {
        Day::from_days((ms / 86_400_000) as i64)
    }

    /// Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    pub fn from_days(z: i64) -> Day {
        let z = z + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let y = yoe + era * 400;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        Day {
            year: (if m <= 2 { y + 1 } else { y }) as i32,
            month: m,
            day: d,
        }
    }

    /// Days since 1970-01-01.
    pub fn days(self) -> i64 {
        let y = i64::from(self.year) - i64::from(self.month <= 2);
        let era = y.div_euclid(400);
        let yoe = y.rem_euclid(400);
        let m = i64::from(self.month);
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(self.day) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    pub fn plus_days(self, n: i64) -> Day {
        Day::from_days(self.days() + n)
    }

    pub fn month_start(self) -> Day {
        Day { day: 1, ..self }
    }

    pub fn next_month_start(self) -> Day {
        if self.month == 12 {
            Day {
                year: self.year + 1,
                month: 1,
                day: 1,
            }
        } else {
            Day {
                month: self.month + 1,
                day: 1,
                ..self
            }
        }
    }

    /// Parses `YYYY-MM-DD`.
    pub fn parse(s: &str) -> Option<Day> {
        let mut it = s.trim().splitn(3, '-');
        let d = Day {
            year: it.next()?.parse().ok()?,
            month: it.next()?.parse().ok()?,
            day: it.next()?.parse().ok()?,
        };
        ((1..=12).contains(&d.month) && (1..=31).contains(&d.day) && Day::from_days(d.days()) == d)
            .then_some(d)
    }

    fn month_index(self) -> i64 {
        i64::from(self.year) * 12 + i64::from(self.month)
    }
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Spent {
    day: i64,
    day_micros: u64,
    month: i64,
    month_micros: u64,
    /// Reserved by the requests of this key in flight, and how many they are.
    reserved_micros: u64,
    in_flight: u32,
}

/// Spend per key, sharded so no one lock sees every request.
pub struct Spend {
    shards: Sharded<Mutex<HashMap<String, Spent>>>,
    /// Requests waiting for reservations to settle, and their wake-up.
    waiting: AtomicUsize,
    freed: Notify,
}

/// Why a reservation was not made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The budget is used up.
    Over(Over),
    /// The requests in flight may use what is left: wait for one to settle.
    InFlight { in_flight: u32, room_micros: u64 },
}

const SHARDS: usize = 16;

impl Default for Spend {
    fn default() -> Self {
        Spend::new()
    }
}

impl Spend {
    pub fn new() -> Spend {
        Spend {
            shards: Sharded::with_default(SHARDS),
            waiting: AtomicUsize::new(0),
            freed: Notify::new(),
        }
    }

    /// Reserves `micros` for a request of `key` under `budget` (module docs).
    pub fn reserve(
        &self,
        key: &str,
        budget: &Budget,
        now_ms: u64,
        micros: u64,
    ) -> Result<(), Refused> {
        let today = Day::of_ms(now_ms);
        let mut map = lock(self.shard(key));
        let s = map.entry(key.to_string()).or_default();
        roll(s, today);
        if let Some(over) = check(budget, (s.day_micros, s.month_micros), now_ms).exceeded {
            return Err(Refused::Over(over));
        }
        let room = [
            (budget.daily, s.day_micros),
            (budget.monthly, s.month_micros),
        ]
        .into_iter()
        .filter_map(|(limit, spent)| Some(limit?.saturating_sub(spent + s.reserved_micros)))
        .min()
        .unwrap_or(u64::MAX);
        if micros > room && s.in_flight > 0 {
            return Err(Refused::InFlight {
                in_flight: s.in_flight,
                room_micros: room,
            });
        }
        s.reserved_micros += micros;
        s.in_flight += 1;
        Ok(())
    }

    /// Ends a reservation of `reserved` made for `key`, booking `spent` at `now_ms`; wakes the
    /// requests waiting for room.
    pub fn settle(&self, key: &str, reserved: u64, now_ms: u64, spent: u64) {
        {
            let today = Day::of_ms(now_ms);
            let mut map = lock(self.shard(key));
            let s = map.entry(key.to_string()).or_default();
            roll(s, today);
            s.reserved_micros = s.reserved_micros.saturating_sub(reserved);
            s.in_flight = s.in_flight.saturating_sub(1);
            s.day_micros += spent;
            s.month_micros += spent;
        }
        if self.waiting.load(Ordering::Acquire) > 0 {
            self.freed.notify_waiters();
        }
    }

    /// Resolves when a reservation settles (call [`Spend::reserve`] again then). Register before
    /// checking: `let f = spend.freed(); ...reserve...; f.await`.
    pub fn freed(&self) -> Freed<'_> {
        self.waiting.fetch_add(1, Ordering::AcqRel);
        Freed {
            spend: self,
            notified: Box::pin(self.freed.notified()),
        }
    }

    fn shard(&self, key: &str) -> &Mutex<HashMap<String, Spent>> {
        self.shards.by_key(key)
    }

    /// Adds `micros` spent by `key` at `now_ms`.
    pub fn add(&self, key: &str, now_ms: u64, micros: u64) {
        let today = Day::of_ms(now_ms);
        let mut map = lock(self.shard(key));
        let s = map.entry(key.to_string()).or_default();
        roll(s, today);
        s.day_micros += micros;
        s.month_micros += micros;
    }

    /// Raises `key`'s spend today and this month to at least `day` and `month` (what every relay
    /// on a shared Redis spent, [`super::shared`]); never lowers it.
    pub fn raise(&self, key: &str, now_ms: u64, day: u64, month: u64) {
        let today = Day::of_ms(now_ms);
        {
            let mut map = lock(self.shard(key));
            let s = map.entry(key.to_string()).or_default();
            roll(s, today);
            s.day_micros = s.day_micros.max(day);
            s.month_micros = s.month_micros.max(month);
        }
    }

    /// (today, this month) spent by `key`, micro-USD.
    pub fn get(&self, key: &str, now_ms: u64) -> (u64, u64) {
        let today = Day::of_ms(now_ms);
        let map = lock(self.shard(key));
        match map.get(key) {
            None => (0, 0),
            Some(s) => {
                let mut s = *s;
                roll(&mut s, today);
                (s.day_micros, s.month_micros)
            }
        }
    }

    /// Loads the month so far from ledger rows.
    pub fn seed(&self, rows: &[super::ledger::Row], now_ms: u64) {
        let today = Day::of_ms(now_ms);
        for (k, c) in rows {
            let Some(day) = Day::parse(&k.day) else {
                continue;
            };
            if day.month_index() != today.month_index() || c.cost_micros == 0 {
                continue;
            }
            let mut map = lock(self.shard(&k.key));
            let s = map.entry(k.key.clone()).or_default();
            roll(s, today);
            s.month_micros += c.cost_micros;
            if day == today {
                s.day_micros += c.cost_micros;
            }
        }
    }
}

/// A wait for a reservation to settle ([`Spend::freed`]).
pub struct Freed<'a> {
    spend: &'a Spend,
    notified: std::pin::Pin<Box<tokio::sync::futures::Notified<'a>>>,
}

impl Freed<'_> {
    /// Starts listening now (before the check that may make the wait needed).
    pub fn enable(&mut self) {
        self.notified.as_mut().enable();
    }

    pub async fn wait(mut self) {
        self.notified.as_mut().await;
    }
}

impl Drop for Freed<'_> {
    fn drop(&mut self) {
        self.spend.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

fn roll(s: &mut Spent, today: Day) {
    if s.day != today.days() {
        s.day = today.days();
        s.day_micros = 0;
    }
    if s.month != today.month_index() {
        s.month = today.month_index();
        s.month_micros = 0;
    }
}

/// A budget that is used up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Over {
    /// `daily` or `monthly`.
    pub period: &'static str,
    pub limit_micros: u64,
    pub spent_micros: u64,
    /// When it resets, RFC 3339 UTC (`2025-11-26T00:00:00Z`).
    pub resets: String,
}

/// The result of a budget check.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The larger of spent / limit over the periods set (the `relay_budget_used_ratio` value).
    pub ratio: f64,
    pub exceeded: Option<Over>,
}

/// Checks `(today, month)` spend against `b` at `now_ms`. A budget of 0 refuses everything.
pub fn check(b: &Budget, (day, month): (u64, u64), now_ms: u64) -> Verdict {
    let today = Day::of_ms(now_ms);
    let mut ratio: f64 = 0.0;
    let mut exceeded = None;
    for (period, limit, spent, resets) in [
        ("daily", b.daily, day, today.plus_days(1)),
        ("monthly", b.monthly, month, today.next_month_start()),
    ] {
        let Some(limit) = limit else { continue };
        let r = if limit == 0 {
            1.0
        } else {
            spent as f64 / limit as f64
        };
        ratio = ratio.max(r);
        if spent >= limit && exceeded.is_none() {
            exceeded = Some(Over {
                period,
                limit_micros: limit,
                spent_micros: spent,
                resets: format!("{resets}T00:00:00Z"),
            });
        }
    }
    Verdict { ratio, exceeded }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY_MS: u64 = 86_400_000;

    #[test]
    fn civil_dates() {
        assert_eq!(Day::of_ms(0).to_string(), "1970-01-01");
        // 2024-02-29T12:00:00Z
        assert_eq!(Day::of_ms(1_709_208_000_000).to_string(), "2024-02-29");
        let d = Day::parse("2025-12-31").unwrap();
        assert_eq!(d.plus_days(1).to_string(), "2026-01-01");
        assert_eq!(d.next_month_start().to_string(), "2026-01-01");
        assert_eq!(Day::from_days(d.days()), d);
        assert!(Day::parse("2025-02-30").is_none());
        assert!(Day::parse("nope").is_none());
    }

    #[test]
    fn spend_rolls_over_days_and_months() {
        let s = Spend::new();
        let t0 = Day::parse("2025-11-29").unwrap().days() as u64 * DAY_MS + 3_600_000;
        s.add("k", t0, 100);
        s.add("k", t0 + 1000, 50);
        assert_eq!(s.get("k", t0), (150, 150));
        assert_eq!(s.get("k", t0 + DAY_MS), (0, 150));
        s.add("k", t0 + DAY_MS, 10);
        assert_eq!(s.get("k", t0 + DAY_MS), (10, 160));
        // 2025-12-01: a new month.
        assert_eq!(s.get("k", t0 + 2 * DAY_MS), (0, 0));
        assert_eq!(s.get("other", t0), (0, 0));
    }

    #[test]
    fn reservations_hold_room_until_they_settle() {
        let s = Spend::new();
        let b = Budget {
            daily: Some(1_000),
            monthly: None,
        };
        let now = Day::parse("2025-11-25").unwrap().days() as u64 * DAY_MS;
        s.reserve("k", &b, now, 600).unwrap();
        // 400 left: a bound of 500 waits while the first is in flight, 300 fits.
        assert_eq!(
            s.reserve("k", &b, now, 500),
            Err(Refused::InFlight {
                in_flight: 1,
                room_micros: 400
            })
        );
        s.reserve("k", &b, now, 300).unwrap();
        // They settle for less than they reserved: room comes back.
        s.settle("k", 600, now, 200);
        s.settle("k", 300, now, 100);
        assert_eq!(s.get("k", now), (300, 300));
        // Nothing in flight: even a bound larger than the room goes (at most one overshoots).
        s.reserve("k", &b, now, 5_000).unwrap();
        s.settle("k", 5_000, now, 900);
        assert!(matches!(s.reserve("k", &b, now, 1), Err(Refused::Over(_))));
        // Other keys are not affected.
        s.reserve("other", &b, now, 999).unwrap();
    }

    #[test]
    fn check_names_the_period_and_reset() {
        let b = Budget {
            daily: Some(1_000_000),
            monthly: Some(10_000_000),
        };
        let now = Day::parse("2025-11-25").unwrap().days() as u64 * DAY_MS + 5;
        let v = check(&b, (500_000, 2_000_000), now);
        assert_eq!(v.exceeded, None);
        assert!((v.ratio - 0.5).abs() < 1e-9);
        let v = check(&b, (1_000_000, 2_000_000), now);
        let over = v.exceeded.unwrap();
        assert_eq!(over.period, "daily");
        assert_eq!(over.resets, "2025-11-26T00:00:00Z");
        let v = check(&b, (0, 10_000_001), now);
        assert_eq!(v.exceeded.unwrap().resets, "2025-12-01T00:00:00Z");
    }
}
