//! The CLI commands that reach a store or a running relay: `relay cache` ([`cache`]), `relay usage`
//! ([`usage`]) and `relay health` ([`health`]). `main.rs` parses the command line and calls these.

pub mod cache;
pub mod client;
pub mod health;
pub mod usage;
