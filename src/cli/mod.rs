//! The CLI commands that reach a store or a running relay: `relay cache` ([`cache`]), `relay usage`
//! ([`usage`]), `relay keys` ([`keys`]: relay-issued keys), `relay health` ([`health`]), `relay prices` ([`prices`]: the prices in force), and
//! `relay run` / `relay env` ([`run`]: an agent pointed at relay). `main.rs` parses the command
//! line and calls these.

pub mod cache;
pub mod client;
pub mod health;
pub mod keys;
pub mod prices;
pub mod run;
pub mod table;
pub mod usage;
