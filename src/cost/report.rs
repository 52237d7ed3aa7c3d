//! The usage ledger summed over a period, grouped by day, model, key or provider, with totals and
//! the dollars the cache saved: the [`Report`] that `relay usage` prints and `GET /relay/usage`
//! answers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::budget::Day;
use super::ledger::{Counts, Row};

/// The endpoint's path.
pub const PATH: &str = "/relay/usage";

/// How rows are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum By {
    Day,
    Model,
    Key,
    Provider,
    /// The agent session (`x-relay-session`, Claude Code's or Codex's id; `none` without one).
    Session,
}

impl By {
    pub fn as_str(self) -> &'static str {
        match self {
            By::Day => "day",
            By::Model => "model",
            By::Key => "key",
            By::Provider => "provider",
            By::Session => "session",
        }
    }

    pub fn parse(s: &str) -> Option<By> {
        match s {
            "day" => Some(By::Day),
            "model" => Some(By::Model),
            "key" => Some(By::Key),
            "provider" => Some(By::Provider),
            "session" => Some(By::Session),
            _ => None,
        }
    }
}

/// The summed ledger for one period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// First day included (UTC, `YYYY-MM-DD`).
    pub since: String,
    /// Last day included (today, UTC).
    pub until: String,
    pub by: By,
    /// Where the prices come from (the price data's version).
    pub prices: String,
    pub rows: Vec<ReportRow>,
    pub total: ReportRow,
    /// What the reader must know about the figures (a damaged ledger moved aside).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notices: Vec<String>,
    /// By key: what is left of each budgeted key's budgets now (relay keys and `budgets:`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub budgets: Vec<BudgetLeft>,
}

/// What is left of one key's budgets today and this month (UTC), micro-USD.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetLeft {
    /// The key as booked (a relay key's name, an alias), or `*` for every key without its own.
    pub key: String,
    pub daily_micros: Option<u64>,
    pub daily_left_micros: Option<u64>,
    pub monthly_micros: Option<u64>,
    pub monthly_left_micros: Option<u64>,
}

impl BudgetLeft {
    /// `b` for `key`, which has spent `(today, this month)`.
    pub fn of(key: &str, b: &crate::config::Budget, (day, month): (u64, u64)) -> BudgetLeft {
        BudgetLeft {
            key: key.to_string(),
            daily_micros: b.daily,
            daily_left_micros: b.daily.map(|l| l.saturating_sub(day)),
            monthly_micros: b.monthly,
            monthly_left_micros: b.monthly.map(|l| l.saturating_sub(month)),
        }
    }

    /// The tighter of the two, as `relay usage` and `relay keys list` print it.
    pub fn text(&self) -> String {
        let usd = crate::wire::usd;
        match (self.daily_left_micros, self.monthly_left_micros) {
            (None, None) => "-".to_string(),
            (Some(d), Some(m)) if d <= m => format!("${} today", usd(d)),
            (Some(d), None) => format!("${} today", usd(d)),
            (_, Some(m)) => format!("${} this month", usd(m)),
        }
    }
}

/// By key, fills `r.budgets`: every key in `named` with a budget of its own, and each other key
/// of the report under `*`'s, with what `spent` says it spent today and this month.
pub fn attach_budgets(
    r: &mut Report,
    named: &[(String, crate::config::Budget)],
    spent: impl Fn(&str) -> (u64, u64),
) {
    if r.by != By::Key {
        return;
    }
    let mut out: Vec<BudgetLeft> = named
        .iter()
        .filter(|(n, _)| n != "*")
        .map(|(n, b)| BudgetLeft::of(n, b, spent(n)))
        .collect();
    if let Some((_, star)) = named.iter().find(|(n, _)| n == "*") {
        for row in &r.rows {
            let g = row.group.as_str();
            if g != "none" && g != super::OTHER_KEYS && !out.iter().any(|b| b.key == g) {
                out.push(BudgetLeft::of(g, star, spent(g)));
            }
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    r.budgets = out;
}

/// What each key spent today and this month (UTC), micro-USD, from ledger rows of this month.
pub fn spend_by_key(rows: &[Row], today: Day) -> BTreeMap<String, (u64, u64)> {
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let month = today.month_start();
    for (k, c) in rows {
        let Some(d) = Day::parse(&k.day) else {
            continue;
        };
        if d < month || d > today {
            continue;
        }
        let e = out.entry(k.key.clone()).or_default();
        if d == today {
            e.0 += c.cost_micros;
        }
        e.1 += c.cost_micros;
    }
    out
}

/// One group's sums. Money in micro-USD (integers) and in USD.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportRow {
    /// The day, model, key or provider.
    pub group: String,
    #[serde(flatten)]
    pub counts: Counts,
    pub cost_usd: f64,
    pub saved_usd: f64,
}

impl ReportRow {
    pub fn new(group: String, counts: Counts) -> ReportRow {
        ReportRow {
            group,
            cost_usd: counts.cost_micros as f64 / 1e6,
            saved_usd: counts.saved_micros as f64 / 1e6,
            counts,
        }
    }
}

/// Where a period starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// The last N days, today included.
    Days(u32),
    Date(Day),
}

impl Since {
    pub fn parse(s: &str) -> Result<Since, String> {
        let s = s.trim();
        if let Some(n) = s.strip_suffix('d') {
            return match n.parse::<u32>() {
                Ok(n) if n >= 1 => Ok(Since::Days(n)),
                _ => Err(format!("{s:?}: want a number of days ≥ 1, e.g. 7d")),
            };
        }
        Day::parse(s)
            .map(Since::Date)
            .ok_or_else(|| format!("{s:?}: want a number of days (7d) or a date (2025-11-01)"))
    }

    /// The first day of the period, seen from `today`.
    pub fn first_day(self, today: Day) -> Day {
        match self {
            Since::Days(n) => today.plus_days(-(i64::from(n) - 1)),
            Since::Date(d) => d,
        }
    }
}

/// Sums `rows` (already from `since` on) by `by`. Rows are in group order; the total sums all.
pub fn report(rows: &[Row], since: Day, today: Day, by: By) -> Report {
    let mut groups: BTreeMap<String, Counts> = BTreeMap::new();
    let mut total = Counts::default();
    for (k, c) in rows {
        if Day::parse(&k.day).is_none_or(|d| d < since || d > today) {
            continue;
        }
        let g = match by {
            By::Day => &k.day,
            By::Model => &k.model,
            By::Key => &k.key,
            By::Provider => &k.provider,
            By::Session => &k.session,
        };
        groups.entry(g.clone()).or_default().add(c);
        total.add(c);
    }
    Report {
        since: since.to_string(),
        until: today.to_string(),
        by,
        prices: super::rates::DATA.to_string(),
        rows: groups
            .into_iter()
            .map(|(g, c)| ReportRow::new(g, c))
            .collect(),
        total: ReportRow::new("total".to_string(), total),
        notices: Vec::new(),
        budgets: Vec::new(),
    }
}
