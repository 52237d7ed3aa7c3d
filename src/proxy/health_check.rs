//! The active health check of a provider's endpoints (`providers[].health_check`, on for the
//! original relay's `loadbalancer`): every `interval`, `GET <endpoint url><path>` with the
//! provider's first key; an answer below 500 within `timeout` is healthy, anything else
//! (refused, timed out, 5xx) is not. [`super::pool::Pool::pick`] skips an unhealthy endpoint while
//! another is healthy. A change is logged once (`relay::health`) and each result is
//! `relay_endpoint_healthy{provider,endpoint}`.
//!
//! One task per provider with a check, holding its pool weakly: it ends with the config it was
//! started for (a reload starts the new config's own).

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Uri};
use http_body_util::{Either, Full};

use super::pool::{EndpointState, Pools};
use super::upstream::{self, HttpsClient, Upstreams};
use crate::config::{Config, HealthCheck, ProviderKind, Secret};
use crate::metrics::Metrics;

/// Starts the checks of `cfg` (needs a tokio runtime; none is started without one).
pub fn spawn(cfg: &Config, pools: &Pools, upstreams: &Upstreams, metrics: &Arc<Metrics>) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    for (i, p) in cfg.providers.iter().enumerate() {
        let Some(hc) = p.health_check.clone() else {
            continue;
        };
        let pool = Arc::downgrade(pools.get(i));
        let client = upstreams.client(i).clone();
        let kind = p.kind;
        let metrics = metrics.clone();
        rt.spawn(async move {
            let mut tick = tokio::time::interval(hc.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(pool) = pool.upgrade() else { return };
                let key = pool.first_key().cloned();
                let checks = pool
                    .endpoints
                    .iter()
                    .map(|e| check(&client, e, &hc, kind, key.as_ref()));
                let results = futures_util::future::join_all(checks).await;
                for (e, result) in pool.endpoints.iter().zip(results) {
                    let up = result.is_ok();
                    metrics
                        .endpoint_healthy
                        .with_label_values(&[&pool.provider, &e.name])
                        .set(i64::from(up));
                    if e.set_healthy(up) {
                        match result {
                            Ok(()) => tracing::info!(target: "relay::health", provider = %pool.provider, endpoint = %e.name, "endpoint healthy again"),
                            Err(why) => tracing::warn!(target: "relay::health", provider = %pool.provider, endpoint = %e.name, %why, "endpoint unhealthy: requests go to the others"),
                        }
                    }
                }
            }
        });
    }
}

/// One check of one endpoint: `Ok` when it answers below 500 in time.
async fn check(
    client: &HttpsClient,
    e: &EndpointState,
    hc: &HealthCheck,
    kind: ProviderKind,
    key: Option<&Secret>,
) -> Result<(), String> {
    let uri = Uri::builder()
        .scheme(e.url.scheme.clone())
        .authority(e.url.authority.clone())
        .path_and_query(format!("{}{}", e.url.path, hc.path))
        .build()
        .map_err(|err| err.to_string())?;
    let mut req = Request::new(Either::Left(Full::new(Bytes::new())));
    *req.method_mut() = Method::GET;
    *req.uri_mut() = uri;
    upstream::inject_key(kind, key, req.headers_mut());
    match tokio::time::timeout(hc.timeout, client.request(req)).await {
        Err(_) => Err(format!(
            "no answer within {}",
            humantime::format_duration(hc.timeout)
        )),
        Ok(Err(err)) => Err(err.to_string()),
        Ok(Ok(resp)) if resp.status().is_server_error() => Err(format!("status {}", resp.status())),
        Ok(Ok(_)) => Ok(()),
    }
}
