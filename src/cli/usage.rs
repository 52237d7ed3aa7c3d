//! `relay usage` and `GET /relay/usage`: the ledger summed over a period, grouped by day, model,
//! key or provider, with totals and the dollars the cache saved.
//!
//! Both give the same [`Report`]: the endpoint as JSON; the command as a table, `--json` (the
//! endpoint's JSON) or `--csv`. The command reads the ledger file directly when no relay holds it,
//! and goes through the running relay's loopback endpoint when one does (redb allows one process
//! per file), like `relay cache`.

use std::fmt::Write as _;
use std::path::PathBuf;

use crate::clock::Clock;
use crate::config::Config;
use crate::cost::budget::Day;
use crate::cost::ledger::{self, Ledger, LedgerError};
use crate::cost::report::{report, By, Report, ReportRow, Since, PATH};
use http_body_util::BodyExt;

use super::client::{listen_base, RelayClient};

/// `relay usage` options.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct UsageArgs {
    /// Period: the last N days including today (`7d`, `1d` = today), or from a date (`2025-11-01`).
    #[arg(long, default_value = "7d", value_name = "PERIOD")]
    pub since: String,
    /// Group rows by day, model, key (alias or hash prefix), provider or agent session.
    #[arg(long, value_enum, default_value = "day", value_name = "GROUP")]
    pub by: By,
    /// Print the report as JSON (what GET /relay/usage returns).
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// Print the report as CSV (one line per row, then the total).
    #[arg(long)]
    pub csv: bool,
    /// Config file naming the ledger (cost.ledger_path, cache.path) and the server (server.listen).
    #[arg(long, short, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Always ask the relay at this URL (e.g. http://127.0.0.1:8080) instead of opening the ledger.
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
}

/// Why `relay usage` failed. `Display` is the message for the user.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("{0}")]
    Args(String),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("the usage ledger {} is in use, and no relay answers at {url} ({reason}); if `relay serve` holds it and listens elsewhere, pass --server URL", held.display())]
    Unreachable {
        url: String,
        reason: String,
        held: PathBuf,
    },
    #[error("{url}: {reason}")]
    Remote { url: String, reason: String },
    #[error(
        "the usage ledger is off (cost.ledger: false, or no data directory; set cost.ledger_path)"
    )]
    Off,
}

/// Runs `relay usage`: returns what to print on stdout.
pub async fn run(args: &UsageArgs, cfg: &Config) -> Result<String, UsageError> {
    let since = Since::parse(&args.since).map_err(|e| UsageError::Args(format!("--since {e}")))?;
    let mut shared_notice = None;
    let report = match &args.server {
        Some(url) => remote(cfg, url.trim_end_matches('/'), since, args, None).await?,
        None if cfg.redis.enabled && cfg!(feature = "redis") => {
            match shared(cfg, since, args).await {
                Ok(r) => r,
                Err(e) => {
                    shared_notice = Some(format!("Redis ({}) is unreachable ({e}): these figures are this machine's ledger only", cfg.redis.address));
                    local(cfg, since, args).await?
                }
            }
        }
        None => local(cfg, since, args).await?,
    };
    let mut report = report;
    report.notices.extend(shared_notice);
    Ok(if args.json {
        let mut s = serde_json::to_string_pretty(&report).expect("reports serialize");
        s.push('\n');
        s
    } else if args.csv {
        render_csv(&report)
    } else {
        render_table(&report)
    })
}

/// Every relay's usage from Redis (`redis.enabled`), read without a relay.
#[cfg(feature = "redis")]
async fn shared(cfg: &Config, since: Since, args: &UsageArgs) -> Result<Report, String> {
    let today = Day::of_ms(Clock::system().now_ms());
    let first = since.first_day(today);
    let conn = crate::cost::shared::connect(&crate::cache::open::redis_url(cfg)).await?;
    let rows = crate::cost::shared::read_rows(conn, first.min(today.month_start()), today).await?;
    let mut r = report(&rows, first, today, args.by);
    with_budgets(&mut r, &rows, today, cfg).await;
    Ok(r)
}

#[cfg(not(feature = "redis"))]
async fn shared(_: &Config, _: Since, _: &UsageArgs) -> Result<Report, String> {
    Err("relay was built without the redis feature".to_string())
}

/// This machine's ledger file, or the relay holding it.
async fn local(cfg: &Config, since: Since, args: &UsageArgs) -> Result<Report, UsageError> {
    let Some(path) = ledger::path(cfg) else {
        return Err(UsageError::Off);
    };
    let today = Day::of_ms(Clock::system().now_ms());
    let first = since.first_day(today);
    if !path.exists() {
        return Ok(report(&[], first, today, args.by));
    }
    let p = path.clone();
    // From the month's start at least: budgets count the month so far.
    let from = first.min(today.month_start()).to_string();
    let opened = tokio::task::spawn_blocking(move || Ledger::open(&p).and_then(|l| l.rows(&from)))
        .await
        .map_err(|e| UsageError::Args(e.to_string()))?;
    match opened {
        Ok(rows) => {
            let mut r = report(&rows, first, today, args.by);
            r.notices = ledger::notices(&path);
            with_budgets(&mut r, &rows, today, cfg).await;
            Ok(r)
        }
        Err(LedgerError::Locked { path }) => {
            remote(
                cfg,
                &listen_base(cfg.server.listen),
                since,
                args,
                Some(path),
            )
            .await
        }
        Err(e) => Err(e.into()),
    }
}

/// By key: what is left of each budgeted key's budget, from `rows` (this month's at least).
async fn with_budgets(r: &mut Report, rows: &[ledger::Row], today: Day, cfg: &Config) {
    if r.by != By::Key {
        return;
    }
    let spent = crate::cost::report::spend_by_key(rows, today);
    let budgets = local_budgets(cfg).await;
    crate::cost::report::attach_budgets(r, &budgets, |k| spent.get(k).copied().unwrap_or_default());
}

/// The budgets by key name when no relay runs: the config's, and the relay keys' in their store
/// (when it opens).
async fn local_budgets(cfg: &Config) -> Vec<(String, crate::config::Budget)> {
    let book = crate::cost::Book::from_config(cfg);
    let c = cfg.clone();
    let records = tokio::task::spawn_blocking(move || {
        let path = crate::keys::store::path(&c).filter(|p| p.exists())?;
        crate::keys::store::RedbKeys::open(&path)
            .and_then(|s| crate::keys::store::KeyStore::all(&s))
            .ok()
    })
    .await
    .ok()
    .flatten()
    .unwrap_or_default();
    crate::admin::usage::named_budgets(&book, records.iter())
}

async fn remote(
    cfg: &Config,
    base: &str,
    since: Since,
    args: &UsageArgs,
    held: Option<PathBuf>,
) -> Result<Report, UsageError> {
    let since_text = match since {
        Since::Days(n) => format!("{n}d"),
        Since::Date(d) => d.to_string(),
    };
    let url = format!("{base}{PATH}?since={since_text}&by={}", args.by.as_str());
    let fail = |reason: String| match &held {
        Some(p) => UsageError::Unreachable {
            url: base.to_string(),
            reason,
            held: p.clone(),
        },
        None => UsageError::Remote {
            url: base.to_string(),
            reason,
        },
    };
    let uri: http::Uri = url
        .parse()
        .map_err(|e| UsageError::Args(format!("invalid --server URL {base:?}: {e}")))?;
    let client = RelayClient::new(cfg).map_err(&fail)?;
    let resp = client.get(uri).await.map_err(|e| fail(e.to_string()))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| fail(e.to_string()))?
        .to_bytes();
    if !status.is_success() {
        let msg = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| format!("HTTP {status}"));
        return Err(UsageError::Remote {
            url: base.to_string(),
            reason: msg,
        });
    }
    serde_json::from_slice(&body).map_err(|e| UsageError::Remote {
        url: base.to_string(),
        reason: format!("not a usage report: {e}"),
    })
}

/// The report as an aligned table with a total line.
pub fn render_table(r: &Report) -> String {
    let head = [
        r.by.as_str(),
        "requests",
        "hits",
        "misses",
        "errors",
        "input",
        "cache read",
        "cache write",
        "output",
        "cost $",
        "relay cache saved $",
        "prompt cache saved $",
    ];
    let line = |row: &ReportRow| -> Vec<String> {
        let c = &row.counts;
        vec![
            row.group.clone(),
            c.requests.to_string(),
            c.hits.to_string(),
            c.misses.to_string(),
            c.errors.to_string(),
            c.input.to_string(),
            c.cached_input.to_string(),
            (c.cache_write + c.cache_write_1h).to_string(),
            c.output.to_string(),
            crate::wire::usd(c.cost_micros),
            crate::wire::usd(c.saved_micros),
            crate::wire::usd(c.prompt_cache_saved_micros),
        ]
    };
    let mut cells: Vec<Vec<String>> = vec![head.iter().map(|s| s.to_string()).collect()];
    cells.extend(r.rows.iter().map(line));
    cells.push(line(&r.total));
    if !r.budgets.is_empty() {
        // By key: what is left of each key's budget, and budgeted keys with no requests yet.
        for b in &r.budgets {
            if !r.rows.iter().any(|row| row.group == b.key) {
                let mut idle = line(&ReportRow::new(b.key.clone(), Default::default()));
                idle[0] = b.key.clone();
                cells.insert(cells.len() - 1, idle);
            }
        }
        let n = cells.len();
        for (i, row) in cells.iter_mut().enumerate() {
            row.push(match i {
                0 => "budget left".to_string(),
                i if i + 1 == n => String::new(),
                _ => r
                    .budgets
                    .iter()
                    .find(|b| b.key == row[0])
                    .map_or_else(|| "-".to_string(), |b| b.text()),
            });
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "usage {} to {} (UTC), by {}; prices: config models:, then {}",
        r.since,
        r.until,
        r.by.as_str(),
        r.prices
    );
    for n in &r.notices {
        let _ = writeln!(out, "note: {n}");
    }
    if r.rows.is_empty() {
        out.push_str("no requests recorded in this period\n");
    }
    out.push_str(&super::table::aligned(&cells, 1, true));
    let t = &r.total.counts;
    let notes = [
        (
            t.saved_micros > 0,
            format!(
                "relay's cache saved ${} ({} hits)",
                crate::wire::usd(t.saved_micros),
                t.hits
            ),
        ),
        (
            t.prompt_cache_saved_micros > 0,
            format!(
                "the providers' prompt caches saved ${} ({} tokens read from them)",
                crate::wire::usd(t.prompt_cache_saved_micros),
                t.cached_input
            ),
        ),
        (
            t.unpriced > 0,
            format!(
                "{} requests used models with no price and are counted at $0 (see `relay prices`; add them under models: in the config)",
                t.unpriced
            ),
        ),
    ];
    for (_, note) in notes.iter().filter(|(shown, _)| *shown) {
        out.push_str(note);
        out.push('\n');
    }
    out
}

/// The report as CSV: a header, one line per group, then `total`.
pub fn render_csv(r: &Report) -> String {
    let mut out = format!(
        "{},requests,hits,misses,errors,estimated,input_tokens,cached_input_tokens,cache_write_tokens,output_tokens,reasoning_tokens,cost_usd,saved_usd,cache_write_1h_tokens,prompt_cache_saved_usd,unpriced\n",
        r.by.as_str()
    );
    for row in r.rows.iter().chain(std::iter::once(&r.total)) {
        let c = &row.counts;
        let group = if row.group.contains([',', '"']) {
            format!("\"{}\"", row.group.replace('"', "\"\""))
        } else {
            row.group.clone()
        };
        let _ = writeln!(
            out,
            "{group},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            c.requests,
            c.hits,
            c.misses,
            c.errors,
            c.estimated,
            c.input,
            c.cached_input,
            c.cache_write,
            c.output,
            c.reasoning,
            crate::wire::usd(c.cost_micros),
            crate::wire::usd(c.saved_micros),
            c.cache_write_1h,
            crate::wire::usd(c.prompt_cache_saved_micros),
            c.unpriced
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::ledger::{Counts, Row, RowKey};

    fn row(day: &str, model: &str, key: &str, cost: u64, hits: u64) -> Row {
        (
            RowKey {
                day: day.into(),
                provider: "openai".into(),
                model: model.into(),
                key: key.into(),
                session: "none".into(),
            },
            Counts {
                requests: 1 + hits,
                hits,
                misses: 1,
                input: 10,
                output: 5,
                cost_micros: cost,
                saved_micros: hits * cost,
                ..Default::default()
            },
        )
    }

    #[test]
    fn since_parsing() {
        let today = Day::parse("2025-11-25").unwrap();
        assert_eq!(
            Since::parse("7d").unwrap().first_day(today).to_string(),
            "2025-11-19"
        );
        assert_eq!(Since::parse("1d").unwrap().first_day(today), today);
        assert_eq!(
            Since::parse("2025-11-01")
                .unwrap()
                .first_day(today)
                .to_string(),
            "2025-11-01"
        );
        assert!(Since::parse("0d").is_err());
        assert!(Since::parse("last week").is_err());
    }

    #[test]
    fn grouping_and_totals() {
        let rows = vec![
            row("2025-11-18", "gpt-4o", "alice", 1_000, 0), // before the period
            row("2025-11-24", "gpt-4o", "alice", 2_000, 1),
            row("2025-11-25", "gpt-4o", "bob", 3_000, 0),
            row("2025-11-25", "claude-sonnet-4-5", "alice", 4_000, 0),
        ];
        let today = Day::parse("2025-11-25").unwrap();
        let since = Since::Days(7).first_day(today);
        let r = report(&rows, since, today, By::Model);
        let groups: Vec<&str> = r.rows.iter().map(|r| r.group.as_str()).collect();
        assert_eq!(groups, ["claude-sonnet-4-5", "gpt-4o"]);
        assert_eq!(r.rows[1].counts.cost_micros, 5_000);
        assert_eq!(r.total.counts.cost_micros, 9_000);
        assert_eq!(r.total.counts.saved_micros, 2_000);
        assert_eq!(r.total.counts.requests, 4);
        let by_key = report(&rows, since, today, By::Key);
        assert_eq!(by_key.rows[0].group, "alice");
        assert_eq!(by_key.rows[0].counts.cost_micros, 6_000);
        let table = render_table(&by_key);
        assert!(
            table.contains("usage 2025-11-19 to 2025-11-25 (UTC), by key"),
            "{table}"
        );
        let total_line = table.lines().find(|l| l.starts_with("total")).unwrap();
        assert!(
            total_line.contains("0.009000") && total_line.contains("0.002000"),
            "{table}"
        );
        assert!(
            table.contains("relay's cache saved $0.002000 (1 hits)"),
            "{table}"
        );
        let csv = render_csv(&by_key);
        assert_eq!(csv.lines().count(), 4);
        assert!(
            csv.lines()
                .last()
                .unwrap()
                .starts_with("total,4,1,3,0,0,30,0,0,15,0,0.009000,0.002000"),
            "{csv}"
        );
        let json = serde_json::to_value(&by_key).unwrap();
        assert_eq!(json["total"]["cost_micros"], 9000);
        assert_eq!(json["by"], "key");
        let back: Report = serde_json::from_value(json).unwrap();
        assert_eq!(back, by_key);
    }
}
