//! The proxy: routing, upstream client, streaming bodies, edge errors, and the pipeline that composes
//! them ([`pipeline`] reads top to bottom in request order).

pub mod body;
pub mod cache;
pub mod client_body;
pub mod conn;
pub mod filter;
pub mod held;
pub mod pipeline;
pub mod route;
pub mod tunnel;
pub mod upstream;
