//! What every request of one server shares: the [`Runtime`] built from one config (swapped whole on
//! reload) and the server's [`State`] (metrics, cache, accounting, the live feed), which outlive reloads.

use std::sync::Arc;

use arc_swap::ArcSwap;

use super::cache::Cache;
use super::client_body::BodyBudget;
use super::pool::Pools;
use super::upstream::Upstreams;
use crate::config::Config;
use crate::events::Events;
use crate::limit::Limiter;
use crate::metrics::Metrics;

/// Everything derived from one config: swapped as a whole on reload.
pub struct Runtime {
    pub config: Config,
    pub upstreams: Upstreams,
    /// Prices, key aliases and budgets.
    pub cost: crate::cost::Book,
    /// Rate-limit rules; the buckets carry over from the previous runtime.
    pub limiter: Limiter,
    /// Endpoints (with their circuit breakers) and keys by provider; their state carries over
    /// while an endpoint's settings are unchanged.
    pub pools: Pools,
}

impl Runtime {
    /// Builds the runtime for `config`, reusing the connection pools of `previous` where possible,
    /// and starts its endpoints' health checks.
    pub fn new(config: Config, previous: Option<&Runtime>, metrics: &Arc<Metrics>) -> Runtime {
        let upstreams = Upstreams::new(&config, previous.map(|p| &p.upstreams));
        let cost = crate::cost::Book::from_config(&config);
        let limiter = Limiter::new(&config, previous.map(|p| &p.limiter));
        let pools = Pools::new(&config, previous.map(|p| &p.pools));
        super::health_check::spawn(&config, &pools, &upstreams, metrics);
        Runtime {
            config,
            upstreams,
            cost,
            limiter,
            pools,
        }
    }
}

/// State shared by every request of one server.
pub struct State {
    pub runtime: ArcSwap<Runtime>,
    pub metrics: Arc<Metrics>,
    /// The response cache (`None` when `cache.enabled` was off at start).
    pub cache: Option<Arc<Cache>>,
    /// Usage ledger, budget spend (outlives reloads).
    pub cost: Arc<crate::cost::Accounting>,
    /// The live request feed (`relay tui`, `GET /relay/events`).
    pub events: Arc<Events>,
    /// Connections taken over from the server (WebSockets, tunnels), for the shutdown drain.
    pub held: Arc<super::held::HeldConnections>,
    /// Request bodies in memory, over all requests (`server.max_buffered_bytes`).
    pub bodies: BodyBudget,
    /// Relay keys (`auth.enabled`, `relay keys`).
    pub keys: crate::keys::KeysSlot,
}
