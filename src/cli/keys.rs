//! `relay keys create|list|revoke|rotate`: relay-issued keys ([`crate::keys`]).
//!
//! Like `relay cache`, a command opens the key store itself, or, when a running relay holds it
//! (or `--server` says so), goes through that relay's `/relay/keys` API, so the change applies
//! there at once. A new key is printed once, alone on the last line of stdout; nothing keeps it.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};

use super::client::RelayClient;
use crate::admin::keys::{views, Issued, KeyView, PREFIX};
use crate::clock::Clock;
use crate::config::Config;
use crate::keys::{KeyError, KeySpec, Keys};

/// The `relay keys` subcommands.
#[derive(Debug, Clone, PartialEq, clap::Subcommand)]
pub enum KeysCommand {
    /// Make a key; prints it once, alone on the last line.
    ///
    /// The key is stored as its hash: copy it now, it is never shown again (`rotate` gives a
    /// key a new secret).
    Create {
        /// Its name: how the ledger, budgets, metrics and `relay usage --by key` show it.
        #[arg(long, value_name = "NAME")]
        name: String,
        /// Models it may use (globs, e.g. 'gpt-4o*'; repeat or separate with commas). Default:
        /// every model.
        #[arg(long, value_name = "GLOB", value_delimiter = ',')]
        models: Vec<String>,
        /// Most it may spend per UTC day, USD.
        #[arg(long, value_name = "USD")]
        daily_budget: Option<f64>,
        /// Most it may spend per UTC month, USD.
        #[arg(long, value_name = "USD")]
        monthly_budget: Option<f64>,
        /// Requests per second it may make.
        #[arg(long, value_name = "N")]
        rps: Option<f64>,
        /// Tokens per minute it may use.
        #[arg(long, value_name = "N")]
        tpm: Option<u64>,
        /// It stops working after this long (30d, 12h).
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        expires: Option<Duration>,
    },
    /// List keys: name, status, models, limits, spend today and this month, budget left.
    List {
        /// Print what GET /relay/keys returns.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key: it stops working at once (its spending stays on the books).
    Revoke {
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// Give a key a new secret (printed once, alone on the last line); the old one stops working.
    Rotate {
        #[arg(value_name = "NAME")]
        name: String,
    },
}

/// What a command prints on stdout.
pub async fn run(cmd: KeysCommand, cfg: &Config, server: Option<String>) -> Result<String, String> {
    if let Some(url) = server {
        return remote(cfg, &url, cmd).await;
    }
    let opened = {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || Keys::open(&cfg))
            .await
            .map_err(|e| e.to_string())?
    };
    match opened {
        Ok(keys) => direct(cfg, &keys, cmd),
        // A running relay holds the store: ask it.
        Err(KeyError::Locked { .. }) => {
            remote(cfg, &super::client::listen_base(cfg.server.listen), cmd).await
        }
        Err(e) => Err(e.to_string()),
    }
}

fn spec_of(cmd: &KeysCommand) -> Option<KeySpec> {
    match cmd {
        KeysCommand::Create {
            name,
            models,
            daily_budget,
            monthly_budget,
            rps,
            tpm,
            expires,
        } => Some(KeySpec {
            name: name.clone(),
            models: models.clone(),
            daily_budget: *daily_budget,
            monthly_budget: *monthly_budget,
            rps: *rps,
            tpm: *tpm,
            expires_in_secs: expires.map(|d| d.as_secs().max(1)),
        }),
        _ => None,
    }
}

/// On the store itself (no relay holds it).
fn direct(cfg: &Config, keys: &Keys, cmd: KeysCommand) -> Result<String, String> {
    let now = Clock::system().now_ms();
    let e = |e: KeyError| e.to_string();
    let spent = ledger_spend(cfg, now);
    let spent_of = |n: &str| spent.get(n).copied().unwrap_or_default();
    match &cmd {
        KeysCommand::Create { .. } => {
            let spec = spec_of(&cmd).expect("a create command");
            let (key, r) = keys.create(&spec, now).map_err(e)?;
            Ok(issued(&Issued {
                key: key.expose().to_string(),
                record: KeyView::of(&r, (0, 0), now),
            }))
        }
        KeysCommand::List { json } => {
            let v = views(keys, now, spent_of).map_err(e)?;
            Ok(list(&v, *json, now))
        }
        KeysCommand::Revoke { name } => {
            let r = keys.revoke(name, now).map_err(e)?;
            Ok(format!("revoked key {:?}\n", r.name))
        }
        KeysCommand::Rotate { name } => {
            let (key, r) = keys.rotate(name, now).map_err(e)?;
            Ok(issued(&Issued {
                key: key.expose().to_string(),
                record: KeyView::of(&r, spent_of(&r.name), now),
            }))
        }
    }
}

/// Spend by key label today and this month, from the ledger file when this process can read it.
fn ledger_spend(cfg: &Config, now_ms: u64) -> BTreeMap<String, (u64, u64)> {
    let out = BTreeMap::new();
    let Some(path) = crate::cost::ledger::path(cfg).filter(|p| p.exists()) else {
        return out;
    };
    let today = crate::cost::budget::Day::of_ms(now_ms);
    let from = today.month_start().to_string();
    match crate::cost::ledger::Ledger::open(&path).and_then(|l| l.rows(&from)) {
        Ok(rows) => crate::cost::report::spend_by_key(&rows, today),
        Err(_) => out,
    }
}

/// Through the `/relay/keys` API of the relay at `base`.
async fn remote(cfg: &Config, base: &str, cmd: KeysCommand) -> Result<String, String> {
    let base = base.trim_end_matches('/');
    let base = if base.contains("://") {
        base.to_string()
    } else {
        format!("http://{base}")
    };
    let client = RelayClient::new(cfg)?;
    let (method, path, body) = match &cmd {
        KeysCommand::Create { .. } => (
            Method::POST,
            PREFIX.to_string(),
            serde_json::to_vec(&spec_of(&cmd)).expect("a spec serializes"),
        ),
        KeysCommand::List { .. } => (Method::GET, PREFIX.to_string(), Vec::new()),
        KeysCommand::Revoke { name } => {
            (Method::POST, format!("{PREFIX}/{name}/revoke"), Vec::new())
        }
        KeysCommand::Rotate { name } => {
            (Method::POST, format!("{PREFIX}/{name}/rotate"), Vec::new())
        }
    };
    let url = format!("{base}{path}");
    let req = Request::builder()
        .method(method)
        .uri(&url)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("{url}: {e}"))?;
    let resp = client
        .send(req)
        .await
        .map_err(|e| format!("cannot reach relay at {base}: {e}"))?;
    let status = resp.status();
    let answer = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{url}: {e}"))?
        .to_bytes();
    if !status.is_success() {
        let msg = serde_json::from_slice::<serde_json::Value>(&answer)
            .ok()
            .and_then(|v| v.get("error")?.as_str().map(str::to_string));
        return Err(match (status, msg) {
            (_, Some(m)) => m,
            (StatusCode::NOT_FOUND, None) => format!(
                "{url}: 404: relay's key API answers loopback callers, and remote ones that present the admin key (RELAY_ADMIN_KEY)"
            ),
            (s, None) => format!("{url}: HTTP {s}"),
        });
    }
    let bad = |e: serde_json::Error| format!("{url}: unexpected answer: {e}");
    let now = Clock::system().now_ms();
    match cmd {
        KeysCommand::Create { .. } | KeysCommand::Rotate { .. } => {
            Ok(issued(&serde_json::from_slice(&answer).map_err(bad)?))
        }
        KeysCommand::List { json: true } => Ok(format!("{}\n", String::from_utf8_lossy(&answer))),
        KeysCommand::List { json: false } => {
            #[derive(serde::Deserialize)]
            struct All {
                keys: Vec<KeyView>,
            }
            let all: All = serde_json::from_slice(&answer).map_err(bad)?;
            Ok(list(&all.keys, false, now))
        }
        KeysCommand::Revoke { .. } => {
            let v: KeyView = serde_json::from_slice(&answer).map_err(bad)?;
            Ok(format!("revoked key {:?}\n", v.name))
        }
    }
}

/// A made (or rotated) key: what it may do, then the key alone on the last line.
fn issued(i: &Issued) -> String {
    let r = &i.record;
    let mut what = vec![if r.models.is_empty() {
        "every model".to_string()
    } else {
        format!("models {}", r.models.join(", "))
    }];
    what.extend(limits(r));
    if let Some(e) = r.expires_ms {
        what.push(format!("expires {}", crate::wire::rfc3339(e)));
    }
    format!(
        "key {:?}: {} (shown once: store it now)\n{}\n",
        r.name,
        what.join(", "),
        i.key
    )
}

fn limits(r: &KeyView) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(d) = r.daily_budget_micros {
        out.push(format!("${}/day", crate::wire::usd(d)));
    }
    if let Some(m) = r.monthly_budget_micros {
        out.push(format!("${}/month", crate::wire::usd(m)));
    }
    if let Some(rps) = r.rps {
        out.push(format!("{rps} req/s"));
    }
    if let Some(tpm) = r.tpm {
        out.push(format!("{tpm} tokens/min"));
    }
    out
}

/// What is left of a key's budgets: the tighter of day and month, `-` without one.
pub fn budget_left(r: &KeyView) -> String {
    let budget = crate::config::Budget {
        daily: r.daily_budget_micros,
        monthly: r.monthly_budget_micros,
    };
    crate::cost::report::BudgetLeft::of(
        &r.name,
        &budget,
        (r.spent_today_micros, r.spent_month_micros),
    )
    .text()
}

fn list(keys: &[KeyView], json: bool, _now: u64) -> String {
    if json {
        return format!("{}\n", serde_json::json!({ "keys": keys }));
    }
    if keys.is_empty() {
        return "no relay keys (relay keys create --name NAME)\n".to_string();
    }
    let mut rows = vec![[
        "NAME",
        "STATUS",
        "MODELS",
        "LIMITS",
        "TODAY",
        "MONTH",
        "BUDGET LEFT",
        "EXPIRES",
    ]
    .map(String::from)
    .to_vec()];
    for k in keys {
        let lim = limits(k);
        rows.push(vec![
            k.name.clone(),
            k.status.clone(),
            if k.models.is_empty() {
                "*".to_string()
            } else {
                k.models.join(",")
            },
            if lim.is_empty() {
                "-".to_string()
            } else {
                lim.join(" ")
            },
            format!("${}", crate::wire::usd(k.spent_today_micros)),
            format!("${}", crate::wire::usd(k.spent_month_micros)),
            budget_left(k),
            k.expires_ms
                .map_or_else(|| "-".to_string(), crate::wire::rfc3339),
        ]);
    }
    super::table::aligned(&rows, 4, false)
}
