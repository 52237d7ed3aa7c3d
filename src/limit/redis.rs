//! Placeholder (filled in below).
use std::sync::Arc;
use std::time::Duration;

use super::gcra::{Booked, Params};
use super::{BucketId, Slot};
use crate::config::Config;
use crate::metrics::Metrics;

#[derive(Debug)]
pub struct RedisLimiter;

impl RedisLimiter {
    pub fn for_config(
        _cfg: &Config,
        _active: bool,
        _previous: Option<&Arc<RedisLimiter>>,
    ) -> Option<Arc<RedisLimiter>> {
        None
    }
    pub async fn book(
        &self,
        _slots: &[Slot],
        _max_wait: Duration,
        _metrics: &Metrics,
    ) -> Option<Result<Vec<Booked>, (usize, Duration)>> {
        None
    }
    pub fn adjust(&self, _slots: &[(BucketId, Params)], _delta: i64) {}
}
