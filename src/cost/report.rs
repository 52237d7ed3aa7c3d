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
    }
}
