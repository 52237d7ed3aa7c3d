//! relay: a fast, terminal-first proxy and gateway for AI APIs.
//!
//! The request pipeline, in the order a request meets it, lives in [`proxy::pipeline`]. The modules:
//! [`config`] (typed, validated, hot-reloaded), [`proxy`] (server, routing, upstream client,
//! streaming), [`metrics`] (Prometheus), [`cache`] (response cache keys, entries and stores).

pub mod cache;
pub mod config;
pub mod forward;
pub mod health;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod server;
pub mod tls;
