//! relay: a fast, terminal-first proxy and gateway for AI APIs.
//!
//! The request pipeline, in the order a request meets it, lives in [`proxy::pipeline`]. The modules:
//! [`config`] (typed, validated, hot-reloaded), [`proxy`] (server, routing, upstream client,
//! streaming), [`metrics`] (Prometheus), [`cache`] (response cache keys, entries and stores), [`cost`] (tokens,
//! prices, the usage ledger, budgets), [`limit`] (rate limits, circuit breakers), [`events`] (the live
//! request feed) and [`tui`] (the `relay tui` dashboard).

pub(crate) mod api;
pub mod cache;
pub mod clock;
pub mod config;
pub mod cost;
pub mod error;
pub mod events;
pub mod files;
pub mod forward;
pub mod health;
pub mod limit;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod redact;
#[cfg(feature = "redis")]
pub mod redis_gate;
pub mod server;
pub mod tls;
pub mod tui;
pub mod wire;
