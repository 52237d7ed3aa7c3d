//! Relay's own API under `/relay`, its handlers in one place: the cache admin API ([`cache`],
//! `/relay/cache/...`), the usage report ([`usage`], `/relay/usage`) and the JSON replies they share
//! ([`reply`]). The pipeline's stage 1 ([`crate::proxy::admin`]) dispatches to them, for loopback
//! callers only; `relay cache` and `relay usage` call the same handlers in-process or over HTTP.

pub mod cache;
pub mod keys;
pub mod reply;
pub mod usage;
