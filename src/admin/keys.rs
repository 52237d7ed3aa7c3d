//! `/relay/keys`: relay keys for `relay keys` through a running relay (and any admin tool).
//!
//! - `GET /relay/keys`: every key ([`KeyView`]: name, status, limits, spend today and this month,
//!   what is left of its budgets); never a key or its hash;
//! - `POST /relay/keys` with a [`KeySpec`]: 201 `{"key": "relay-...", "record": KeyView}`, the
//!   one time the key is shown;
//! - `POST /relay/keys/<name>/revoke`, `POST /relay/keys/<name>/rotate` (201 with the new key).
//!
//! Changes apply at once: the server's ring is refreshed before the answer.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use serde::{Deserialize, Serialize};

use super::reply::{error, json};
use crate::cost::Accounting;
use crate::keys::{KeyError, KeyRecord, KeySpec, Keys};

pub const PREFIX: &str = "/relay/keys";

/// One key as the API and `relay keys list` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyView {
    pub name: String,
    /// `active`, `revoked` or `expired`.
    pub status: String,
    pub models: Vec<String>,
    pub daily_budget_micros: Option<u64>,
    pub monthly_budget_micros: Option<u64>,
    pub rps: Option<f64>,
    pub tpm: Option<u64>,
    pub created_ms: u64,
    pub expires_ms: Option<u64>,
    pub revoked_ms: Option<u64>,
    pub rotated_ms: Option<u64>,
    /// Spent today and this month (UTC), micro-USD, on this relay's books (every relay's with
    /// shared keys on Redis).
    pub spent_today_micros: u64,
    pub spent_month_micros: u64,
}

impl KeyView {
    pub fn of(r: &KeyRecord, spent: (u64, u64), now_ms: u64) -> KeyView {
        KeyView {
            name: r.name.clone(),
            status: r.status(now_ms).to_string(),
            models: r.models.clone(),
            daily_budget_micros: r.daily_budget_micros,
            monthly_budget_micros: r.monthly_budget_micros,
            rps: r.rps,
            tpm: r.tpm,
            created_ms: r.created_ms,
            expires_ms: r.expires_ms,
            revoked_ms: r.revoked_ms,
            rotated_ms: r.rotated_ms,
            spent_today_micros: spent.0,
            spent_month_micros: spent.1,
        }
    }
}

/// What `create` and `rotate` answer: the key, shown this once, and its record.
#[derive(Debug, Serialize, Deserialize)]
pub struct Issued {
    pub key: String,
    pub record: KeyView,
}

/// Every key, revoked ones included, by name, with what `spent` says it spent.
pub fn views(
    keys: &Keys,
    now_ms: u64,
    spent: impl Fn(&str) -> (u64, u64),
) -> Result<Vec<KeyView>, KeyError> {
    let mut all = keys.reread()?;
    all.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(all
        .iter()
        .map(|r| KeyView::of(r, spent(&r.name), now_ms))
        .collect())
}

fn failed(e: &KeyError) -> Response<Bytes> {
    error(
        StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &e.to_string(),
    )
}

/// Runs a blocking key operation on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, KeyError> + Send + 'static,
) -> Result<T, KeyError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(KeyError::Store {
            path: "keys".to_string(),
            message: e.to_string(),
        })
    })
}

/// Answers a request under `/relay/keys` (its body already read whole).
pub async fn handle(
    keys: Arc<Keys>,
    acct: Arc<Accounting>,
    method: &Method,
    path: &str,
    body: Bytes,
) -> Response<Bytes> {
    let rest = path.strip_prefix(PREFIX).unwrap_or_default();
    let now = acct.now_ms();
    let issued = |(key, record): (crate::config::Secret, KeyRecord), acct: &Accounting| Issued {
        key: key.expose().to_string(),
        record: KeyView::of(&record, acct.spent(&record.name), now),
    };
    match (method, rest.trim_end_matches('/')) {
        (&Method::GET, "") => {
            let a = acct.clone();
            match blocking(move || views(&keys, now, |n| a.spent(n))).await {
                Ok(v) => json(StatusCode::OK, &serde_json::json!({ "keys": v })),
                Err(e) => failed(&e),
            }
        }
        (&Method::POST, "") => {
            let spec: KeySpec = match serde_json::from_slice(&body) {
                Ok(s) => s,
                Err(e) => return error(StatusCode::BAD_REQUEST, &format!("a key spec: {e}")),
            };
            match blocking(move || keys.create(&spec, now)).await {
                Ok(made) => json(StatusCode::CREATED, &issued(made, &acct)),
                Err(e) => failed(&e),
            }
        }
        (&Method::POST, op) => {
            let Some((name, verb)) = op.trim_start_matches('/').split_once('/') else {
                return error(
                    StatusCode::NOT_FOUND,
                    "use /relay/keys/<name>/revoke or /rotate",
                );
            };
            let name = name.to_string();
            match verb {
                "revoke" => match blocking(move || keys.revoke(&name, now)).await {
                    Ok(r) => json(StatusCode::OK, &KeyView::of(&r, acct.spent(&r.name), now)),
                    Err(e) => failed(&e),
                },
                "rotate" => match blocking(move || keys.rotate(&name, now)).await {
                    Ok(made) => json(StatusCode::CREATED, &issued(made, &acct)),
                    Err(e) => failed(&e),
                },
                _ => error(
                    StatusCode::NOT_FOUND,
                    "use /relay/keys/<name>/revoke or /rotate",
                ),
            }
        }
        _ => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "GET /relay/keys, POST /relay/keys, POST /relay/keys/<name>/revoke|rotate",
        ),
    }
}
