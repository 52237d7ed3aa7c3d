//! Prometheus metrics, on relay's own registry (so several servers in one process, as in tests, never
//! share counters). Names are stable and documented in README.md.
//!
//! Label values are bounded: provider names come from config, a model is labelled by the id its
//! price has (the config's `models:` key or the price data's model id, so dated ids fold to their
//! model) or a literal route model, anything else is `other` (`crate::cost::prices`), so a client
//! cannot blow up cardinality by sending made-up model names.

use prometheus::{
    CounterVec, Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Buckets for relay's own added time: 10 µs to 100 ms.
const OVERHEAD_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1,
];
/// Buckets for upstream time to response headers: 5 ms to 2 min.
const UPSTREAM_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Buckets for whole-request times (to the last byte, or to the first body byte): 1 ms to 10 min.
const REQUEST_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
];

/// All of relay's metric handles.
pub struct Metrics {
    registry: Registry,
    /// `relay_requests_total{provider,model,status}`: requests answered (any status, relay's own
    /// errors included; provider is `none` when routing failed).
    pub requests: IntCounterVec,
    /// `relay_upstream_latency_seconds{provider}`: from sending the request upstream to its response
    /// headers.
    pub upstream_latency: HistogramVec,
    /// `relay_inflight_requests`: requests whose response has not finished (streams included).
    pub inflight: IntGauge,
    /// `relay_overhead_seconds`: time relay adds before the client gets response headers (total
    /// minus upstream time).
    pub overhead: Histogram,
    /// `relay_config_reloads_total{result="ok|error"}`.
    pub config_reloads: IntCounterVec,
    /// `relay_cache_hits_total{provider,model}`: answered from the cache (or from a shared in-flight
    /// upstream call) without an upstream call of their own.
    pub cache_hits: IntCounterVec,
    /// `relay_cache_misses_total{provider,model}`: cacheable requests that went upstream.
    pub cache_misses: IntCounterVec,
    /// `relay_cache_entries`: entries in the store (updated when `/metrics` is read).
    pub cache_entries: IntGauge,
    /// `relay_cache_bytes`: their size (updated when `/metrics` is read).
    pub cache_bytes: IntGauge,
    /// `relay_cache_errors_total{backend}`: store failures (each treated as a miss).
    pub cache_errors: IntCounterVec,
    /// `relay_request_tokens{kind="prompt|completion"}`: tokens per request that went upstream
    /// (prompt = all input tokens, cached included).
    pub request_tokens: HistogramVec,
    /// `relay_tokens_total{provider,model,kind}`: tokens of requests that went upstream, as the
    /// provider reported them; kind `input` (uncached), `cached_input`, `cache_write`, `output`
    /// (reasoning included).
    pub tokens: IntCounterVec,
    /// `relay_tokens_estimated_total{provider,model,kind}`: tokens relay counted itself (tiktoken)
    /// because the answer carried no usage; kind `input` or `output`. Kept apart from
    /// `relay_tokens_total`, which holds the providers' figures only.
    pub tokens_estimated: IntCounterVec,
    /// `relay_cost_usd_total{provider,model}`: what requests cost, USD.
    pub cost_usd: CounterVec,
    /// `relay_cost_saved_usd_total{provider,model}`: what cache hits would have cost, USD.
    pub cost_saved_usd: CounterVec,
    /// `relay_prompt_cache_saved_usd_total{provider,model}`: what the providers' prompt caches
    /// saved (cache reads at the input rate minus at the cached rate), USD.
    pub prompt_cache_saved_usd: CounterVec,
    /// `relay_unpriced_requests_total{provider,model}`: requests that used tokens of a model with
    /// no price (booked at $0).
    pub unpriced: IntCounterVec,
    /// `relay_retries_total{provider,reason,action}`: tries sent again (`retry`) or handed to the
    /// route's fallback (`fallback`), by the provider that failed and why (`503`, `5xx`,
    /// `connect`, `circuit_open`, an error code).
    pub retries: IntCounterVec,
    /// `relay_request_duration_seconds{provider}`: from the request's arrival to the last byte of
    /// the response (or the caller leaving).
    pub request_duration: HistogramVec,
    /// `relay_time_to_first_byte_seconds{provider}`: from the request's arrival to the first byte
    /// of the response body.
    pub time_to_first_byte: HistogramVec,
    /// `relay_budget_used_ratio{key}`: spent / budget for each key alias with a budget (the larger
    /// of the daily and monthly ratios).
    pub budget_used_ratio: GaugeVec,
    /// `relay_ratelimit_rejections_total{scope,rule}`: requests refused (429) by a rate-limit rule.
    pub ratelimit_rejections: IntCounterVec,
    /// `relay_ratelimit_wait_seconds`: how long requests queued for their slot (`on_limit: wait`).
    pub ratelimit_wait: Histogram,
    /// `relay_ratelimit_backend{backend}`: 1 for the backend the limiter uses now (`local` or
    /// `redis`), 0 for the other.
    pub ratelimit_backend: IntGaugeVec,
    /// `relay_circuit_state{provider,endpoint}`: 0 closed, 1 half-open, 2 open.
    pub circuit_state: IntGaugeVec,
    /// `relay_circuit_transitions_total{provider,endpoint,to}`: state changes (`to`: closed,
    /// half_open, open).
    pub circuit_transitions: IntCounterVec,
    /// `relay_endpoint_requests_total{provider,endpoint}`: tries sent to each endpoint.
    pub endpoint_requests: IntCounterVec,
    /// `relay_endpoint_latency_seconds{provider,endpoint}`: EWMA of the time to the answer's
    /// headers (what `least-latency` compares).
    pub endpoint_latency: GaugeVec,
    /// `relay_endpoint_healthy{provider,endpoint}`: the active health check's last result (1, 0).
    pub endpoint_healthy: IntGaugeVec,
    /// `relay_key_resting{provider,key}`: 1 while a pooled key rests after a 429.
    pub key_resting: IntGaugeVec,
    /// `relay_key_rests_total{provider,key}`: 429s that put a pooled key to rest.
    pub key_rests: IntCounterVec,
    /// `relay_events_dropped_total`: live-feed events (`relay tui`, `/relay/events`) a lagging
    /// subscriber lost; the proxy never waits for a subscriber.
    pub events_dropped: IntCounter,
    /// `relay_requests_refused_total{reason}`: requests the request filter refused before routing
    /// (`cross_site`, `form_body`, `bad_path`, `host`), see [`crate::proxy::filter`].
    pub refused: IntCounterVec,
    /// `relay_connections_open`: client connections open now.
    pub connections: IntGauge,
    /// `relay_connections_closed_total{reason}`: connections relay closed itself (`idle`,
    /// `header_timeout`).
    pub connections_closed: IntCounterVec,
    /// `relay_connections_waiting_total`: times the accept loop waited because
    /// `server.max_connections` were open.
    pub connections_at_cap: IntCounter,
    /// `relay_request_buffer_bytes`: request bodies held in memory now, bytes.
    pub buffered_bytes: IntGauge,
    /// `relay_ledger_moved_aside_total`: damaged usage ledgers moved aside at start (a new one
    /// started; spending before it is in the moved file).
    pub ledger_moved_aside: IntCounter,
    /// `relay_cache_backend{backend}`: 1 for the store serving the cache now (`redis`, or `redb`
    /// while Redis is unreachable), with `cache.backend: redis`.
    pub cache_backend: IntGaugeVec,
    /// `relay_keys_folded_total`: requests booked as key `other` because
    /// `cost::MAX_KEY_LABELS` unaliased keys were already named.
    pub keys_folded: IntCounter,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "relay_requests_total",
                "Requests answered, by provider, model and status",
            ),
            &["provider", "model", "status"],
        )
        .expect("valid metric");
        let upstream_latency = HistogramVec::new(
            HistogramOpts::new(
                "relay_upstream_latency_seconds",
                "Time from sending a request upstream to its response headers",
            )
            .buckets(UPSTREAM_BUCKETS.to_vec()),
            &["provider"],
        )
        .expect("valid metric");
        let inflight = IntGauge::new(
            "relay_inflight_requests",
            "Requests in progress (until the last byte of the response)",
        )
        .expect("valid metric");
        let overhead = Histogram::with_opts(
            HistogramOpts::new(
                "relay_overhead_seconds",
                "Time relay adds before response headers: total minus upstream time",
            )
            .buckets(OVERHEAD_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        let config_reloads = IntCounterVec::new(
            Opts::new("relay_config_reloads_total", "Config reloads by result"),
            &["result"],
        )
        .expect("valid metric");
        let cache_hits = IntCounterVec::new(
            Opts::new("relay_cache_hits_total", "Requests answered from the cache"),
            &["provider", "model"],
        )
        .expect("valid metric");
        let cache_misses = IntCounterVec::new(
            Opts::new(
                "relay_cache_misses_total",
                "Cacheable requests that went to the upstream",
            ),
            &["provider", "model"],
        )
        .expect("valid metric");
        let cache_entries = IntGauge::new("relay_cache_entries", "Entries in the cache store")
            .expect("valid metric");
        let cache_bytes = IntGauge::new("relay_cache_bytes", "Bytes held by the cache store")
            .expect("valid metric");
        let cache_errors = IntCounterVec::new(
            Opts::new(
                "relay_cache_errors_total",
                "Cache store failures (the request went on as a miss)",
            ),
            &["backend"],
        )
        .expect("valid metric");
        let request_tokens = HistogramVec::new(
            HistogramOpts::new(
                "relay_request_tokens",
                "Tokens per request that went upstream, by kind (prompt or completion)",
            )
            .buckets(prometheus::exponential_buckets(1.0, 4.0, 11).expect("valid buckets")),
            &["kind"],
        )
        .expect("valid metric");
        let tokens = IntCounterVec::new(
            Opts::new(
                "relay_tokens_total",
                "Tokens of requests that went upstream, by provider, model and kind (input, cached_input, cache_write, output)",
            ),
            &["provider", "model", "kind"],
        )
        .expect("valid metric");
        let tokens_estimated = IntCounterVec::new(
            Opts::new(
                "relay_tokens_estimated_total",
                "Tokens relay counted itself (no usage in the answer), by provider, model and kind (input, output)",
            ),
            &["provider", "model", "kind"],
        )
        .expect("valid metric");
        let cost_usd = CounterVec::new(
            Opts::new("relay_cost_usd_total", "What requests cost, in USD"),
            &["provider", "model"],
        )
        .expect("valid metric");
        let cost_saved_usd = CounterVec::new(
            Opts::new(
                "relay_cost_saved_usd_total",
                "What cache hits would have cost, in USD",
            ),
            &["provider", "model"],
        )
        .expect("valid metric");
        let prompt_cache_saved_usd = CounterVec::new(
            Opts::new(
                "relay_prompt_cache_saved_usd_total",
                "What the providers' prompt caches saved (cache reads at the input rate minus at the cached rate), in USD",
            ),
            &["provider", "model"],
        )
        .expect("valid metric");
        let unpriced = IntCounterVec::new(
            Opts::new(
                "relay_unpriced_requests_total",
                "Requests that used tokens of a model with no price, booked at $0",
            ),
            &["provider", "model"],
        )
        .expect("valid metric");
        let retries = IntCounterVec::new(
            Opts::new(
                "relay_retries_total",
                "Upstream tries sent again (action retry) or handed to the route's fallback (action fallback)",
            ),
            &["provider", "reason", "action"],
        )
        .expect("valid metric");
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "relay_request_duration_seconds",
                "Time from a request's arrival to the last byte of its response",
            )
            .buckets(REQUEST_BUCKETS.to_vec()),
            &["provider"],
        )
        .expect("valid metric");
        let time_to_first_byte = HistogramVec::new(
            HistogramOpts::new(
                "relay_time_to_first_byte_seconds",
                "Time from a request's arrival to the first byte of its response body",
            )
            .buckets(REQUEST_BUCKETS.to_vec()),
            &["provider"],
        )
        .expect("valid metric");
        let budget_used_ratio = GaugeVec::new(
            Opts::new(
                "relay_budget_used_ratio",
                "Spent / budget per key alias with a budget (larger of daily and monthly)",
            ),
            &["key"],
        )
        .expect("valid metric");
        for c in [
            Box::new(request_tokens.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(tokens.clone()),
            Box::new(tokens_estimated.clone()),
            Box::new(cost_usd.clone()),
            Box::new(cost_saved_usd.clone()),
            Box::new(prompt_cache_saved_usd.clone()),
            Box::new(unpriced.clone()),
            Box::new(retries.clone()),
            Box::new(request_duration.clone()),
            Box::new(time_to_first_byte.clone()),
            Box::new(budget_used_ratio.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        for kind in ["prompt", "completion"] {
            request_tokens.with_label_values(&[kind]);
        }
        let ratelimit_rejections = IntCounterVec::new(
            Opts::new(
                "relay_ratelimit_rejections_total",
                "Requests refused by a rate-limit rule",
            ),
            &["scope", "rule"],
        )
        .expect("valid metric");
        let ratelimit_wait = Histogram::with_opts(
            HistogramOpts::new(
                "relay_ratelimit_wait_seconds",
                "Time requests waited for their rate-limit slot (on_limit: wait)",
            )
            .buckets(UPSTREAM_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        let ratelimit_backend = IntGaugeVec::new(
            Opts::new(
                "relay_ratelimit_backend",
                "The rate limiter's backend in use (1) by name",
            ),
            &["backend"],
        )
        .expect("valid metric");
        let circuit_state = IntGaugeVec::new(
            Opts::new(
                "relay_circuit_state",
                "Circuit breaker state by provider endpoint: 0 closed, 1 half-open, 2 open",
            ),
            &["provider", "endpoint"],
        )
        .expect("valid metric");
        let circuit_transitions = IntCounterVec::new(
            Opts::new(
                "relay_circuit_transitions_total",
                "Circuit breaker state changes by provider endpoint and new state",
            ),
            &["provider", "endpoint", "to"],
        )
        .expect("valid metric");
        let endpoint_requests = IntCounterVec::new(
            Opts::new(
                "relay_endpoint_requests_total",
                "Tries sent to each provider endpoint",
            ),
            &["provider", "endpoint"],
        )
        .expect("valid metric");
        let endpoint_latency = GaugeVec::new(
            Opts::new(
                "relay_endpoint_latency_seconds",
                "EWMA of each endpoint's time to the answer's headers",
            ),
            &["provider", "endpoint"],
        )
        .expect("valid metric");
        let endpoint_healthy = IntGaugeVec::new(
            Opts::new(
                "relay_endpoint_healthy",
                "The active health check's last result by endpoint (1 healthy)",
            ),
            &["provider", "endpoint"],
        )
        .expect("valid metric");
        let key_resting = IntGaugeVec::new(
            Opts::new(
                "relay_key_resting",
                "1 while a pooled provider key rests after a 429 (key: alias or hash prefix)",
            ),
            &["provider", "key"],
        )
        .expect("valid metric");
        let key_rests = IntCounterVec::new(
            Opts::new(
                "relay_key_rests_total",
                "429s that put a pooled provider key to rest",
            ),
            &["provider", "key"],
        )
        .expect("valid metric");
        for c in [
            Box::new(ratelimit_rejections.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(ratelimit_wait.clone()),
            Box::new(ratelimit_backend.clone()),
            Box::new(circuit_state.clone()),
            Box::new(circuit_transitions.clone()),
            Box::new(endpoint_requests.clone()),
            Box::new(endpoint_latency.clone()),
            Box::new(endpoint_healthy.clone()),
            Box::new(key_resting.clone()),
            Box::new(key_rests.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        let events_dropped = IntCounter::new(
            "relay_events_dropped_total",
            "Live request-feed events dropped because a subscriber lagged",
        )
        .expect("valid metric");
        let refused = IntCounterVec::new(
            Opts::new(
                "relay_requests_refused_total",
                "Requests refused by the request filter, by reason",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let connections = IntGauge::new("relay_connections_open", "Client connections open")
            .expect("valid metric");
        let connections_closed = IntCounterVec::new(
            Opts::new(
                "relay_connections_closed_total",
                "Client connections relay closed itself, by reason",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let connections_at_cap = IntCounter::new(
            "relay_connections_waiting_total",
            "Times relay stopped accepting because server.max_connections were open",
        )
        .expect("valid metric");
        let buffered_bytes = IntGauge::new(
            "relay_request_buffer_bytes",
            "Request bodies held in memory, bytes",
        )
        .expect("valid metric");
        let ledger_moved_aside = IntCounter::new(
            "relay_ledger_moved_aside_total",
            "Damaged usage ledgers moved aside at start",
        )
        .expect("valid metric");
        let cache_backend = IntGaugeVec::new(
            Opts::new(
                "relay_cache_backend",
                "1 for the cache store in use (redis, or redb while Redis is unreachable)",
            ),
            &["backend"],
        )
        .expect("valid metric");
        let keys_folded = IntCounter::new(
            "relay_keys_folded_total",
            "Requests booked as key other: too many distinct unaliased keys",
        )
        .expect("valid metric");
        for c in [
            Box::new(refused.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(keys_folded.clone()),
            Box::new(cache_backend.clone()),
            Box::new(ledger_moved_aside.clone()),
            Box::new(connections.clone()),
            Box::new(connections_closed.clone()),
            Box::new(connections_at_cap.clone()),
            Box::new(buffered_bytes.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(cache_hits.clone()),
            Box::new(cache_misses.clone()),
            Box::new(cache_entries.clone()),
            Box::new(cache_bytes.clone()),
            Box::new(cache_errors.clone()),
            Box::new(upstream_latency.clone()),
            Box::new(inflight.clone()),
            Box::new(overhead.clone()),
            Box::new(config_reloads.clone()),
            Box::new(events_dropped.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        // Both results exist from the start, so a dashboard can tell "no reloads" from "no data".
        config_reloads.with_label_values(&["ok"]);
        config_reloads.with_label_values(&["error"]);
        Metrics {
            registry,
            requests,
            upstream_latency,
            inflight,
            overhead,
            config_reloads,
            cache_hits,
            cache_misses,
            cache_entries,
            cache_bytes,
            cache_errors,
            request_tokens,
            tokens,
            tokens_estimated,
            cost_usd,
            cost_saved_usd,
            prompt_cache_saved_usd,
            unpriced,
            retries,
            request_duration,
            time_to_first_byte,
            budget_used_ratio,
            ratelimit_rejections,
            ratelimit_wait,
            ratelimit_backend,
            circuit_state,
            circuit_transitions,
            endpoint_requests,
            endpoint_latency,
            endpoint_healthy,
            key_resting,
            key_rests,
            events_dropped,
            refused,
            connections,
            connections_closed,
            connections_at_cap,
            buffered_bytes,
            ledger_moved_aside,
            cache_backend,
            keys_folded,
        }
    }

    /// The registry, for stages that register metrics of their own.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::with_capacity(8 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_text_format() {
        let m = Metrics::new();
        m.requests
            .with_label_values(&["openai", "gpt-4o", "200"])
            .inc();
        let text = m.render();
        assert!(
            text.contains(
                r#"relay_requests_total{model="gpt-4o",provider="openai",status="200"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"relay_config_reloads_total{result="error"} 0"#));
    }
}
