//! relay: a fast, terminal-first proxy and gateway for AI APIs.
//!
//! The tree, from the bottom floor up (every `use` points down):
//! - [`wire`] (OpenAI / Anthropic facts: header names, SSE framing, dialects), [`error`] (the one
//!   edge error type), [`caller`] (who a request is from), [`clock`], [`files`], [`redact`], and [`config`] (typed, validated,
//!   hot-reloaded);
//! - the leaf concerns, which know nothing of the proxy: [`cache`] (keys, entries, stores),
//!   [`cost`] (tokens, prices, ledger, budgets), [`limit`] (rate limits, circuit breakers),
//!   [`events`] (the live feed), [`keys`] (relay-issued keys), [`metrics`], [`tls`], [`logging`];
//! - [`proxy`]: the connection path, [`proxy::server`] (accept loop, connection bounds) →
//!   [`proxy::forward_proxy`] (`CONNECT` and absolute-URI requests, which every request passes
//!   first) → [`proxy::pipeline`] (the stages in request order);
//! - [`admin`] (relay's own `/relay/...` API), [`cli`] (the commands that reach a store or a running
//!   relay) and [`tui`] (`relay tui`); `main.rs` parses the command line.

pub mod admin;
pub mod cache;
pub mod caller;
pub mod cli;
pub mod clock;
pub mod config;
pub mod cost;
pub mod error;
pub mod events;
pub mod fieldpath;
pub mod files;
pub mod keys;
pub mod limit;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod redact;
#[cfg(feature = "redis")]
pub mod redis_gate;
pub mod shard;
pub mod tls;
pub mod tui;
pub mod wire;

/// `relay::server`: starting and stopping a server (the CLI, the TUI, tests and the load harness).
pub use proxy::server;
