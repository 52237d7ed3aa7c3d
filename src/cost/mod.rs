//! Cost: tokens per request, prices, the usage ledger and budgets.
//!
//! What comes in: the routed request (provider, model, the caller's key, the JSON body) and the
//! answer's bytes as they stream to the caller. What goes out: the request's [`Usage`] (a [`Hook`]
//! puts it on whatever is [`Metered`]) and, when the request closes, its price ([`Tally::settle`]:
//! cost, or for cache hits the cost saved), booked to the metrics, the ledger and the budgets.
//!
//! The pieces, in the order a request meets them (see `proxy::pipeline`):
//! 1. [`plan`]: after routing, decide what to meter, which key to book it to, and whether to ask an
//!    OpenAI-kind upstream for the stream's usage chunk (`cost.stream_usage: inject`, [`inject`]);
//! 2. [`Accounting::check_budget`]: before going upstream, refuse a key that is over its budget;
//! 3. [`Hook`] rides on the response body: a [`usage::Meter`] reads the usage as the bytes pass
//!    (and removes the usage-only chunk the caller did not ask for);
//! 4. [`Hook::finish`] when the body ends or is dropped: the usage, or a tiktoken estimate made on
//!    the blocking pool ([`tokens`]), lands on the exchange;
//! 5. [`Tally::settle`] when the exchange closes: prices ([`prices`]), metrics, the budget spend and
//!    one record for the [`ledger`]'s writer task.

pub mod budget;
pub mod inject;
pub mod ledger;
mod plan;
pub mod prices;
pub mod rates;
pub mod report;
#[cfg(feature = "redis")]
pub mod shared;
pub mod tokens;
pub mod usage;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

pub use crate::wire::usd;
pub use plan::{plan, tokens_header, Hook, Plan, RecordedUsage, Served};
pub use prices::{Prices, Resolved};
pub use rates::{Cost, Price};
pub use usage::{Meter, MeterMode, Usage};

use crate::clock::Clock;
use crate::config::{Budget, Config, StreamUsage};
use crate::error::EdgeError;
use crate::metrics::Metrics;
use crate::shard::Sharded;

/// Everything cost needs from one config: prices, key aliases, budgets. Built at config load and
/// swapped with it.
#[derive(Debug, Clone)]
pub struct Book {
    pub prices: Prices,
    enabled: bool,
    stream_usage: StreamUsage,
    /// (hash or hash prefix, alias name).
    aliases: Vec<(String, String)>,
    budgets: BTreeMap<String, Budget>,
}

impl Book {
    pub fn from_config(cfg: &Config) -> Book {
        Book {
            prices: Prices::from_config(cfg),
            enabled: cfg.cost.enabled,
            stream_usage: cfg.cost.stream_usage,
            aliases: cfg
                .keys
                .iter()
                .filter_map(|k| Some((k.hash.clone()?, k.name.clone())))
                .collect(),
            budgets: cfg.budgets.clone(),
        }
    }

    /// How the ledger and budgets name a key: a relay key by its name; an API key by its alias,
    /// else `key-` and the first 12 hex digits of its hash; `none` when the request is booked to
    /// no key.
    pub fn key_label(&self, booked: &Booked) -> String {
        let key = match booked {
            Booked::Nobody => return "none".to_string(),
            Booked::RelayKey { name, .. } => return name.clone(),
            Booked::Key(key) => key,
        };
        let hex = key.to_hex();
        for (h, name) in &self.aliases {
            if hex.starts_with(h.as_str()) {
                return name.clone();
            }
        }
        format!("key-{}", &hex[..12])
    }

    /// The budget that applies to `key` (its alias's own, else `*`), with its name.
    pub fn budget_for(&self, key: &str) -> Option<(&str, &Budget)> {
        self.budgets
            .get_key_value(key)
            .or_else(|| self.budgets.get_key_value("*"))
            .map(|(k, b)| (k.as_str(), b))
    }

    /// The budget that applies to a request booked as `booked` under `label`: a relay key's own,
    /// else [`Book::budget_for`] the label.
    pub fn budget_of(&self, booked: &Booked, label: &str) -> Option<(String, Budget)> {
        if let Booked::RelayKey {
            name,
            budget: Some(b),
        } = booked
        {
            return Some((name.clone(), *b));
        }
        self.budget_for(label).map(|(n, b)| (n.to_string(), *b))
    }

    /// Every configured budget (`budgets:`, `*` included), by name.
    pub fn budgets(&self) -> impl Iterator<Item = (&str, &Budget)> {
        self.budgets.iter().map(|(k, b)| (k.as_str(), b))
    }

    /// Alias names that have a budget of their own (the `relay_budget_used_ratio` labels).
    pub fn budgeted_aliases(&self) -> impl Iterator<Item = &str> {
        self.budgets
            .keys()
            .map(String::as_str)
            .filter(|k| *k != "*")
    }
}

/// Whom a request is booked to (the ledger's key label, the budget that applies), worked out once
/// with the caller's identity.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Booked {
    /// No key presented and none injected.
    #[default]
    Nobody,
    /// blake3 of the API key that pays: the presented one, else the one relay injects.
    Key(blake3::Hash),
    /// A relay key (`auth.enabled`), by name, with its own budget if it has one.
    RelayKey {
        name: String,
        budget: Option<Budget>,
    },
}

/// Most distinct unaliased keys (`key-<hash prefix>`) the ledger, budgets and usage reports
/// name on their own; later ones are booked as [`OTHER_KEYS`] (`relay_keys_folded_total`).
pub const MAX_KEY_LABELS: usize = 1024;
/// The label unaliased keys past [`MAX_KEY_LABELS`] share.
pub const OTHER_KEYS: &str = "other";

/// The unaliased key labels booked so far, bounded: a client that sends a new random key with
/// every request cannot grow the ledger, the budget spend or the metrics without end.
pub struct KeyLabels {
    shards: Sharded<std::sync::RwLock<HashSet<String>>>,
}

const KEY_SHARDS: usize = 16;

impl KeyLabels {
    fn new() -> KeyLabels {
        KeyLabels {
            shards: Sharded::with_default(KEY_SHARDS),
        }
    }

    /// `label` itself when it is an alias, `none`, or an unaliased key already known or admitted
    /// now; else [`OTHER_KEYS`].
    pub fn fold(&self, label: String, metrics: &Metrics) -> String {
        if !label.starts_with("key-") {
            return label;
        }
        let shard = self.shards.by_key(&label);
        // A known key (every request after a key's first) takes the read lock only.
        if crate::shard::read(shard).contains(&label) {
            return label;
        }
        let mut set = crate::shard::write(shard);
        if set.contains(&label) {
            return label;
        }
        if set.len() < MAX_KEY_LABELS / KEY_SHARDS {
            set.insert(label.clone());
            return label;
        }
        drop(set);
        metrics.keys_folded.inc();
        OTHER_KEYS.to_string()
    }
}

/// Server-wide cost state: the ledger writer, budget spend, once-only warnings. Outlives config
/// reloads.
pub struct Accounting {
    /// Unaliased keys booked by name so far (bounded).
    pub keys: KeyLabels,
    clock: Clock,
    metrics: Arc<Metrics>,
    ledger: Option<ledger::Writer>,
    /// Where the ledger lives (shown by `relay usage`), when it is open.
    ledger_path: Option<PathBuf>,
    spend: Arc<budget::Spend>,
    /// Budget spend and usage on Redis, shared by every relay on it (`redis.enabled`).
    #[cfg(feature = "redis")]
    shared: Option<shared::Shared>,
    /// Models already warned about (no price), sharded by model. Bounded.
    warned: Sharded<Mutex<HashSet<String>>>,
    /// Requests settled so far.
    settled: AtomicU64,
    /// Set once someone waits on `settled` (tests): only then does settling wake waiters, so the
    /// request path takes no lock for it.
    watched: AtomicBool,
    settled_changed: Notify,
}

/// The longest a request waits for the reservations of its key in flight to settle.
pub const BUDGET_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
/// Output tokens a request without `max_tokens` is assumed to be able to use (its budget bound).
pub const DEFAULT_MAX_OUTPUT: u64 = 32_768;

/// Most unknown models remembered (per shard) for once-only warnings.
const MAX_WARNED: usize = 256;
const WARN_SHARDS: usize = 8;

impl Accounting {
    /// Opens the ledger (when `cost.ledger`) and loads this month's spend from it. A ledger that
    /// cannot be opened (held by another process, written by a newer relay, damaged) is reported
    /// and relay runs without it: usage is still counted in metrics and logs.
    pub async fn start(cfg: &Config, clock: Clock, metrics: Arc<Metrics>) -> Arc<Accounting> {
        let mut ledger = None;
        let mut ledger_path = None;
        if cfg.cost.enabled && cfg.cost.ledger {
            match ledger::path(cfg) {
                None => tracing::warn!(
                    "no platform data directory for the usage ledger; set cost.ledger_path"
                ),
                Some(path) => {
                    let p = path.clone();
                    let secs = clock.now_ms() / 1000;
                    let opened = tokio::task::spawn_blocking(move || {
                        ledger::Ledger::open_or_recover(&p, secs)
                    })
                    .await;
                    match opened {
                        Ok(Ok((l, moved))) => {
                            if moved.is_some() {
                                metrics.ledger_moved_aside.inc();
                            }
                            ledger = Some(ledger::Writer::spawn(l));
                            ledger_path = Some(path);
                        }
                        Ok(Err(e)) => tracing::warn!(
                            "usage ledger unavailable, spending is not recorded: {e}"
                        ),
                        Err(e) => tracing::warn!("usage ledger: {e}"),
                    }
                }
            }
        }
        let spend = Arc::new(budget::Spend::new());
        #[cfg(feature = "redis")]
        let shared = (cfg.cost.enabled && cfg.redis.enabled).then(|| {
            let c = clock.clone();
            shared::Shared::start(
                crate::cache::open::redis_url(cfg),
                spend.clone(),
                move || c.now_ms(),
            )
        });
        let acct = Accounting {
            keys: KeyLabels::new(),
            clock,
            metrics,
            ledger,
            ledger_path,
            spend,
            #[cfg(feature = "redis")]
            shared,
            warned: Sharded::with_default(WARN_SHARDS),
            settled: AtomicU64::new(0),
            watched: AtomicBool::new(false),
            settled_changed: Notify::new(),
        };
        if let Some(l) = &acct.ledger {
            let now = acct.clock.now_ms();
            let since = budget::Day::of_ms(now).month_start();
            match l.rows(since.to_string()).await {
                Ok(rows) => acct.spend.seed(&rows, now),
                Err(e) => tracing::warn!("usage ledger: cannot read this month's spend: {e}"),
            }
        }
        Arc::new(acct)
    }

    /// Now, unix milliseconds (the injected clock).
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// What `relay usage` must say about the ledger (damaged files moved aside beside it).
    pub fn notices(&self) -> Vec<String> {
        #[allow(unused_mut)]
        let mut out = self
            .ledger_path
            .as_deref()
            .map(ledger::notices)
            .unwrap_or_default();
        #[cfg(feature = "redis")]
        if self.shared.as_ref().is_some_and(|s| !s.available()) {
            out.push("Redis (redis.enabled) is unreachable: these figures are this relay's own ledger; what it spent meanwhile is sent to Redis when it is back".to_string());
        }
        out
    }

    /// The ledger file, when the ledger is open.
    pub fn ledger_path(&self) -> Option<&PathBuf> {
        self.ledger_path.as_ref()
    }

    /// Requests settled so far (priced and booked).
    pub fn settled(&self) -> u64 {
        self.settled.load(Ordering::Acquire)
    }

    /// Resolves once `n` requests in all have settled (tests wait on this before reading the
    /// ledger or metrics).
    pub async fn wait_settled(&self, n: u64) {
        self.watched.store(true, Ordering::Release);
        loop {
            let changed = self.settled_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.settled() >= n {
                return;
            }
            changed.await;
        }
    }

    fn settle_one(&self) {
        self.settled.fetch_add(1, Ordering::AcqRel);
        if self.watched.load(Ordering::Acquire) {
            self.settled_changed.notify_waiters();
        }
    }

    /// Stage "budget": refuses a request whose key is over its daily or monthly budget (429
    /// `budget_exceeded`), else reserves `bound` (what the request can cost at most) until it
    /// settles. While the requests of the key in flight may use what is left, it waits for them
    /// (at most [`BUDGET_WAIT`], then 429 `budget_in_flight`). `None`: the key has no budget.
    pub async fn reserve(
        &self,
        key: &str,
        limit: Option<&(String, Budget)>,
        bound: u64,
    ) -> Result<Option<u64>, EdgeError> {
        let Some((name, budget)) = limit else {
            return Ok(None);
        };
        let name = name.as_str();
        #[cfg(feature = "redis")]
        if let Some(s) = &self.shared {
            s.watch(key, &self.spend, self.now_ms()).await;
        }
        let deadline = tokio::time::Instant::now() + BUDGET_WAIT;
        loop {
            let mut freed = self.spend.freed();
            freed.enable();
            let now = self.now_ms();
            if name != "*" {
                let ratio = budget::check(budget, self.spend.get(key, now), now).ratio;
                self.metrics
                    .budget_used_ratio
                    .with_label_values(&[name])
                    .set(ratio);
            }
            match self.spend.reserve(key, budget, now, bound) {
                Ok(()) => return Ok(Some(bound)),
                Err(budget::Refused::Over(over)) => {
                    return Err(EdgeError::BudgetExceeded {
                        key: key.to_string(),
                        budget: name.to_string(),
                        period: over.period,
                        limit_micros: over.limit_micros,
                        spent_micros: over.spent_micros,
                        resets: over.resets.clone(),
                    })
                }
                Err(budget::Refused::InFlight {
                    in_flight,
                    room_micros,
                }) => {
                    if tokio::time::timeout_at(deadline, freed.wait())
                        .await
                        .is_err()
                    {
                        return Err(EdgeError::BudgetInFlight {
                            key: key.to_string(),
                            budget: name.to_string(),
                            in_flight,
                            room_micros,
                        });
                    }
                }
            }
        }
    }

    /// What the key labelled `key` has spent today and this month (UTC), micro-USD.
    pub fn spent(&self, key: &str) -> (u64, u64) {
        self.spend.get(key, self.now_ms())
    }

    /// The ledger rows from `since` (YYYY-MM-DD) on, everything queued included.
    pub async fn rows(&self, since: String) -> Result<Vec<ledger::Row>, String> {
        #[cfg(feature = "redis")]
        if let (Some(s), Some(first)) = (&self.shared, budget::Day::parse(&since)) {
            let today = budget::Day::of_ms(self.now_ms());
            if let Some(rows) = s.rows(first, today).await {
                return Ok(rows);
            }
        }
        match &self.ledger {
            Some(l) => l.rows(since).await,
            None => Err(
                "the usage ledger is off (cost.ledger: false, or it could not be opened)".into(),
            ),
        }
    }

    /// Writes what is queued and closes the ledger file (server shutdown).
    pub async fn close(&self) {
        if let Some(l) = &self.ledger {
            l.close().await;
        }
    }

    fn warn_unpriced(&self, model: &str) {
        let mut w = crate::shard::lock(self.warned.by_key(model));
        if w.len() < MAX_WARNED && w.insert(model.to_string()) {
            tracing::warn!(
                model,
                "no price for this model: its requests are counted at $0 (add it under models: in the config)"
            );
        }
    }
}

/// What a closing request tells its [`Tally`]: who answered, for which model, with which usage.
pub struct Settled<'a> {
    pub provider: &'a str,
    pub model: Option<&'a str>,
    /// The model's metric label (bounded).
    pub model_label: &'a str,
    pub usage: Option<Usage>,
    /// The answer was an error or did not complete.
    pub failed: bool,
    /// The agent session, booked beside the key (`relay usage --by session`).
    pub session: Option<&'a str>,
}

/// What a request cost, and what it saved, micro-USD.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Priced {
    pub cost_micros: u64,
    /// A relay cache hit (or shared call): what the answer would have cost.
    pub saved_micros: u64,
    /// What the provider's prompt cache saved on the upstream call.
    pub prompt_cache_saved_micros: u64,
    /// Tokens were used, but the model has no price: booked at $0.
    pub unpriced: bool,
}

/// Whatever carries a request's usage to its close (the pipeline's per-request context): a
/// [`Hook`] puts the metered usage there when the body ends.
pub trait Metered: Send + 'static {
    fn usage_slot(&mut self) -> &mut Option<Usage>;
    /// The body is over: run the request's closing phase.
    fn close(self);
}

/// The accounting of one request, carried by the request's context and settled when it closes.
pub struct Tally {
    acct: Arc<Accounting>,
    /// The caller's key as booked (alias, `key-<hash prefix>`, `none`).
    pub key: String,
    /// Answered without an upstream call (cache hit or shared flight): cost 0, the price is saved.
    pub hit: bool,
    price: Option<Arc<Price>>,
    /// The budget alias whose gauge to update after booking.
    budget: Option<(String, Budget)>,
    /// What the budget stage reserved for this request, until it settles.
    pub reserved: Option<u64>,
}

impl Drop for Tally {
    /// A request that never settled gives its reservation back.
    fn drop(&mut self) {
        if let Some(r) = self.reserved.take() {
            let now = self.acct.now_ms();
            self.acct.spend.settle(&self.key, r, now, 0);
        }
    }
}

impl Tally {
    /// Prices the request's usage, then books it: metrics, budget spend, one ledger record.
    pub fn settle(mut self, x: Settled<'_>) -> Priced {
        let acct = self.acct.clone();
        let acct = &acct;
        let provider = x.provider;
        let failed = x.failed;
        let mut priced = Priced::default();
        let m = &acct.metrics;
        let mut counts = ledger::Counts {
            requests: 1,
            ..Default::default()
        };
        if let Some(u) = x.usage {
            let cost = match &self.price {
                Some(p) => p.cost(&u),
                None => {
                    if u.total() > 0 {
                        acct.warn_unpriced(x.model.unwrap_or("-"));
                        priced.unpriced = true;
                        counts.unpriced = 1;
                        m.unpriced
                            .with_label_values(&[provider, x.model_label])
                            .inc();
                    }
                    Cost::default()
                }
            };
            if self.hit {
                priced.saved_micros = cost.micros;
            } else {
                priced.cost_micros = cost.micros;
                priced.prompt_cache_saved_micros = cost.prompt_cache_saved_micros;
            }
            let labels = |kind| [provider, x.model_label, kind];
            for (kind, n) in [
                ("input", u.input),
                ("cached_input", u.cached_input),
                ("cache_write", u.cache_write),
                ("cache_write_1h", u.cache_write_1h),
                ("output", u.output),
                ("reasoning", u.reasoning),
            ] {
                if n > 0 && !self.hit {
                    // Metered and estimated figures stay apart.
                    let counter = if u.estimated {
                        &m.tokens_estimated
                    } else {
                        &m.tokens
                    };
                    counter.with_label_values(&labels(kind)).inc_by(n);
                }
            }
            if !self.hit {
                m.request_tokens
                    .with_label_values(&["prompt"])
                    .observe(u.prompt() as f64);
                m.request_tokens
                    .with_label_values(&["completion"])
                    .observe(u.output as f64);
            }
            if !self.hit {
                // Tokens are what went upstream; a hit's are only its saving.
                counts.input = u.input;
                counts.cached_input = u.cached_input;
                counts.cache_write = u.cache_write;
                counts.cache_write_1h = u.cache_write_1h;
                counts.output = u.output;
                counts.reasoning = u.reasoning;
                counts.estimated = u64::from(u.estimated);
            }
        }
        let pm = [provider, x.model_label];
        if priced.cost_micros > 0 {
            m.cost_usd
                .with_label_values(&pm)
                .inc_by(priced.cost_micros as f64 / 1e6);
        }
        if priced.saved_micros > 0 {
            m.cost_saved_usd
                .with_label_values(&pm)
                .inc_by(priced.saved_micros as f64 / 1e6);
        }
        if priced.prompt_cache_saved_micros > 0 {
            m.prompt_cache_saved_usd
                .with_label_values(&pm)
                .inc_by(priced.prompt_cache_saved_micros as f64 / 1e6);
        }
        counts.cost_micros = priced.cost_micros;
        counts.saved_micros = priced.saved_micros;
        counts.prompt_cache_saved_micros = priced.prompt_cache_saved_micros;
        if self.hit {
            counts.hits = 1;
        } else if failed {
            counts.errors = 1;
        } else {
            counts.misses = 1;
        }
        let now = acct.now_ms();
        match self.reserved.take() {
            Some(r) => acct.spend.settle(&self.key, r, now, priced.cost_micros),
            None if priced.cost_micros > 0 => acct.spend.add(&self.key, now, priced.cost_micros),
            None => {}
        }
        if let Some((name, b)) = &self.budget {
            let ratio = budget::check(b, acct.spend.get(&self.key, now), now).ratio;
            m.budget_used_ratio.with_label_values(&[name]).set(ratio);
        }
        #[cfg(feature = "redis")]
        let shared = acct.shared.as_ref();
        #[cfg(not(feature = "redis"))]
        let shared: Option<&()> = None;
        if acct.ledger.is_some() || shared.is_some() {
            let key = ledger::RowKey {
                day: budget::Day::of_ms(now).to_string(),
                provider: provider.to_string(),
                model: x.model_label.to_string(),
                key: self.key.clone(),
                session: ledger::session_label(x.session),
            };
            #[cfg(feature = "redis")]
            if let Some(s) = shared {
                s.add(key.clone(), counts);
            }
            if let Some(l) = &acct.ledger {
                l.add(key, counts);
            }
        }
        acct.settle_one();
        priced
    }
}
