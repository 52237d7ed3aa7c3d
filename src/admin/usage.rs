//! `GET /relay/usage?since=7d&by=day`: the [`Report`](crate::cost::report::Report) as JSON, for `relay usage` through a running
//! relay (loopback peers only).

use bytes::Bytes;
use http::{Response, StatusCode};

use super::reply::{error, json};
use crate::cost::budget::Day;
use crate::cost::report::{report, By, Since};
use crate::cost::Accounting;

/// `GET /relay/usage?since=7d&by=day` for a running server (loopback peers only; see the
/// pipeline's `relay_api`).
pub async fn api(
    acct: &Accounting,
    query: Option<&str>,
    budgets: &[(String, crate::config::Budget)],
) -> Response<Bytes> {
    let mut since = Since::Days(7);
    let mut by = By::Day;
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "since" => match Since::parse(v) {
                Ok(s) => since = s,
                Err(e) => return error(StatusCode::BAD_REQUEST, &format!("since: {e}")),
            },
            "by" => match By::parse(v) {
                Some(b) => by = b,
                None => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "by: want day, model, key or provider",
                    )
                }
            },
            other => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("unknown parameter {other:?} (since, by)"),
                )
            }
        }
    }
    let today = Day::of_ms(acct.now_ms());
    let first = since.first_day(today);
    match acct.rows(first.to_string()).await {
        Ok(rows) => {
            let mut r = report(&rows, first, today, by);
            r.notices = acct.notices();
            crate::cost::report::attach_budgets(&mut r, budgets, |k| acct.spent(k));
            json(StatusCode::OK, &r)
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e),
    }
}

/// Every budget by key name: the config's `budgets:` (`*` included), then each relay key's own,
/// which wins over an alias of the same name.
pub fn named_budgets<'a>(
    book: &crate::cost::Book,
    keys: impl Iterator<Item = &'a crate::keys::KeyRecord>,
) -> Vec<(String, crate::config::Budget)> {
    let mut out: Vec<(String, crate::config::Budget)> =
        book.budgets().map(|(n, b)| (n.to_string(), *b)).collect();
    for r in keys {
        if let Some(b) = r.budget() {
            out.retain(|(n, _)| *n != r.name);
            out.push((r.name.clone(), b));
        }
    }
    out
}
