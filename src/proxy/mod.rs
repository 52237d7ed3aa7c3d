//! The connection path: [`server`] accepts connections (bounded by [`conn`]), hands each request
//! to [`forward_proxy`] (the `CONNECT` / absolute-URI forward proxy, HTTPS interception), which
//! passes everything else to [`pipeline`]: one function listing the stages in request order
//! ([`filter`], [`admin`], [`route`], [`client_body`], [`cache`], cost and limits, [`upstream`],
//! [`body`]). [`state`] is what every request shares; [`responses_ws`] turns the Responses
//! API's WebSocket into one pipeline request per turn.

pub mod admin;
pub mod body;
pub mod cache;
pub mod call;
pub mod client_body;
pub mod conn;
pub mod context;
pub mod filter;
pub mod finish;
pub mod forward_proxy;
pub mod health_check;
pub mod held;
pub mod json_answer;
pub mod pipeline;
pub mod pool;
pub mod pool_report;
pub mod responses_ws;
pub mod route;
pub mod server;
pub mod stages;
pub mod state;
pub mod tunnel;
pub mod upstream;
