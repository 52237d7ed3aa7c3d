//! Budget spend and the usage ledger on Redis (`redis.enabled`, cargo feature `redis`): every relay
//! on one Redis books into the same counters, so N relays enforce one budget and `relay usage`
//! shows all of them.
//!
//! Layout (all integers, `INCRBY`/`HINCRBY` only, so any number of relays add without a race):
//! - `relay:spend:v1:d:<YYYY-MM-DD>:<key>`, `relay:spend:v1:m:<YYYY-MM>:<key>`: micro-USD spent
//!   by the key (its ledger label) that day and month (expire after 2 and 40 days);
//! - `relay:usage:v1:<YYYY-MM-DD>`: a hash per day, field `<ledger row key>\x1e<count index>`,
//!   the row's counts ([`Counts`] in field order; kept 400 days).
//!
//! Settled requests reach a flusher task through a bounded queue (never blocking a request); it
//! sums them and sends one pipeline every [`FLUSH_EVERY`]. The totals Redis answers (plus what
//! is still pending here) raise the local spend view ([`super::budget::Spend::raise`]), and the
//! budgeted keys this relay serves are read back every [`POLL_EVERY`], so another relay's spend
//! counts within a second. Redis down or hung: the batch stays pending (nothing lost), budgets
//! hold on this relay's own view, the ledger reads fall back to the local file, logged once;
//! when a probe finds Redis again the pending sums are sent.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::mpsc;

use super::budget::{Day, Spend};
use super::ledger::{Counts, Row, RowKey, FIELDS};
use crate::redis_gate::Gate;
use crate::shard::Sharded;

const WATCH_SHARDS: usize = 16;

/// How often pending records go to Redis.
pub const FLUSH_EVERY: Duration = Duration::from_millis(250);
/// How often the budgeted keys' shared spend is read back.
pub const POLL_EVERY: Duration = Duration::from_secs(1);
/// Longest one Redis call may take before it counts as a failure.
const TIMEOUT: Duration = Duration::from_secs(1);
const QUEUE: usize = 16 * 1024;
const DAY_TTL_SECS: i64 = 2 * 86_400;
const MONTH_TTL_SECS: i64 = 40 * 86_400;
const USAGE_TTL_SECS: i64 = 400 * 86_400;
const FIELD_SEP: char = '\u{1e}';

fn day_key(day: &str, key: &str) -> String {
    format!("relay:spend:v1:d:{day}:{key}")
}

fn month_key(day: &str, key: &str) -> String {
    format!("relay:spend:v1:m:{}:{key}", &day[..day.len().min(7)])
}

fn usage_key(day: &str) -> String {
    format!("relay:usage:v1:{day}")
}

/// The handle requests and reports use (see the module docs).
pub struct Shared {
    tx: mpsc::Sender<(RowKey, Counts)>,
    conn: Arc<ArcSwapOption<ConnectionManager>>,
    gate: Arc<Gate>,
    /// Budgeted keys this relay has seen: read back every [`POLL_EVERY`].
    watched: Arc<Sharded<RwLock<HashSet<String>>>>,
    /// What the flusher holds that Redis has not taken yet, for the reports.
    pending: Arc<std::sync::Mutex<HashMap<RowKey, Counts>>>,
    /// The queue was full at the last try (its warning is logged once per spell).
    full: std::sync::atomic::AtomicBool,
}

impl Shared {
    /// Starts the flusher for the Redis at `url`, raising `spend` with what Redis says.
    pub fn start(
        url: String,
        spend: Arc<Spend>,
        now_ms: impl Fn() -> u64 + Send + Sync + 'static,
    ) -> Shared {
        let (tx, rx) = mpsc::channel(QUEUE);
        let conn: Arc<ArcSwapOption<ConnectionManager>> = Arc::new(ArcSwapOption::empty());
        let gate = Gate::new("budgets and usage", |_| {});
        let watched = Arc::new(Sharded::with_default(WATCH_SHARDS));
        let pending = Arc::new(std::sync::Mutex::new(HashMap::new()));
        tokio::spawn(flusher(Flusher {
            url,
            rx,
            conn: conn.clone(),
            gate: gate.clone(),
            watched: watched.clone(),
            pending: pending.clone(),
            spend,
            now_ms: Box::new(now_ms),
        }));
        Shared {
            tx,
            conn,
            gate,
            watched,
            pending,
            full: Default::default(),
        }
    }

    /// Queues one settled request (never blocks; a full queue drops it with a warning, as the
    /// local ledger does).
    pub fn add(&self, key: RowKey, counts: Counts) {
        use std::sync::atomic::Ordering;
        match self.tx.try_send((key, counts)) {
            Ok(()) => self.full.store(false, Ordering::Relaxed),
            Err(_) => {
                if !self.full.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "budgets and usage: the Redis queue is full; records are being dropped"
                    );
                }
            }
        }
    }

    /// Reads the key's shared spend into the local view when first seen, and from then on every
    /// [`POLL_EVERY`]: another relay's spend counts here too.
    pub async fn watch(&self, key: &str, spend: &Spend, now_ms: u64) {
        let shard = self.watched.by_key(key);
        if crate::shard::read(shard).contains(key) {
            return;
        }
        crate::shard::write(shard).insert(key.to_string());
        let Some(conn) = self.usable() else { return };
        let keys = [key.to_string()];
        if let Some(totals) = read_spend(&conn, &keys, now_ms, &self.gate).await {
            raise(spend, &totals, &crate::shard::lock(&self.pending), now_ms);
        }
    }

    /// Whether Redis is connected and answering.
    pub fn available(&self) -> bool {
        self.usable().is_some()
    }

    fn usable(&self) -> Option<ConnectionManager> {
        if !self.gate.open() {
            return None;
        }
        self.conn.load().as_deref().cloned()
    }

    /// Every relay's ledger rows from `since` on (this relay's pending ones included); `None`
    /// while Redis cannot be read (the caller falls back to the local ledger).
    pub async fn rows(&self, since: Day, today: Day) -> Option<Vec<Row>> {
        let conn = self.usable()?;
        let mut rows = read_rows(conn, since, today).await.ok()?;
        let pending = crate::shard::lock(&self.pending).clone();
        merge(&mut rows, pending.into_iter().collect());
        Some(rows)
    }
}

/// Sums `more` into `rows` by row key.
fn merge(rows: &mut Vec<Row>, more: Vec<Row>) {
    let mut at: HashMap<RowKey, usize> = rows
        .iter()
        .enumerate()
        .map(|(i, (k, _))| (k.clone(), i))
        .collect();
    for (k, c) in more {
        match at.get(&k) {
            Some(&i) => rows[i].1.add(&c),
            None => {
                at.insert(k.clone(), rows.len());
                rows.push((k, c));
            }
        }
    }
}

/// Every row in Redis from `since` to `today`.
pub async fn read_rows(
    mut conn: ConnectionManager,
    since: Day,
    today: Day,
) -> Result<Vec<Row>, String> {
    let mut sums: HashMap<RowKey, [u64; FIELDS]> = HashMap::new();
    let mut day = since;
    let mut pipe = redis::pipe();
    let mut days = 0;
    while day <= today && days < 400 {
        pipe.cmd("HGETALL").arg(usage_key(&day.to_string()));
        day = day.plus_days(1);
        days += 1;
    }
    let all: Vec<HashMap<String, u64>> =
        tokio::time::timeout(TIMEOUT * 5, pipe.query_async(&mut conn))
            .await
            .map_err(|_| "Redis did not answer".to_string())?
            .map_err(|e| e.to_string())?;
    for hash in all {
        for (field, v) in hash {
            let Some((row, i)) = field.rsplit_once(FIELD_SEP) else {
                continue;
            };
            let (Some(k), Ok(i)) = (RowKey::decode(row), i.parse::<usize>()) else {
                continue;
            };
            if i < FIELDS {
                sums.entry(k).or_insert([0; FIELDS])[i] += v;
            }
        }
    }
    let mut rows: Vec<Row> = sums
        .into_iter()
        .map(|(k, f)| (k, Counts::from_fields(f)))
        .collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(rows)
}

/// Connects to `url` (for the CLI, which reads the shared ledger without a relay).
pub async fn connect(url: &str) -> Result<ConnectionManager, String> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(TIMEOUT))
        .set_response_timeout(Some(TIMEOUT))
        .set_number_of_retries(1);
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    ConnectionManager::new_with_config(client, config)
        .await
        .map_err(|e| e.to_string())
}

struct Flusher {
    url: String,
    rx: mpsc::Receiver<(RowKey, Counts)>,
    conn: Arc<ArcSwapOption<ConnectionManager>>,
    gate: Arc<Gate>,
    watched: Arc<Sharded<RwLock<HashSet<String>>>>,
    pending: Arc<std::sync::Mutex<HashMap<RowKey, Counts>>>,
    spend: Arc<Spend>,
    now_ms: Box<dyn Fn() -> u64 + Send + Sync>,
}

async fn flusher(mut f: Flusher) {
    let mut flush = tokio::time::interval(FLUSH_EVERY);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_poll = tokio::time::Instant::now();
    let mut warned_down = false;
    loop {
        tokio::select! {
            got = f.rx.recv() => match got {
                Some((k, c)) => crate::shard::lock(&f.pending).entry(k).or_default().add(&c),
                None => {
                    // Closing: one last try to hand the pending sums over.
                    flush_once(&f).await;
                    return;
                }
            },
            _ = flush.tick() => {
                if f.conn.load().is_none() {
                    match connect(&f.url).await {
                        Ok(c) => f.conn.store(Some(Arc::new(c))),
                        Err(e) => {
                            if !warned_down {
                                warned_down = true;
                                tracing::warn!(error = %e, "budgets and usage: Redis unreachable; budgets hold on this relay's spend, usage is kept here and sent when Redis is back");
                            }
                            continue;
                        }
                    }
                }
                flush_once(&f).await;
                if last_poll.elapsed() >= POLL_EVERY {
                    last_poll = tokio::time::Instant::now();
                    poll(&f).await;
                }
            }
        }
    }
}

/// Sends what is pending; on success, raises the spend view with the totals Redis answers.
async fn flush_once(f: &Flusher) {
    let Some(conn) = f.conn.load_full() else {
        return;
    };
    if !f.gate.open() {
        return;
    }
    let batch: HashMap<RowKey, Counts> = std::mem::take(&mut *crate::shard::lock(&f.pending));
    if batch.is_empty() {
        return;
    }
    let mut pipe = redis::pipe();
    // (key, day) → micro-USD, in the order of the INCRBY pairs.
    let mut spent: HashMap<(String, String), u64> = HashMap::new();
    for (k, c) in &batch {
        let hk = usage_key(&k.day);
        let row = k.encode();
        for (i, v) in c.fields().iter().enumerate() {
            if *v > 0 {
                pipe.cmd("HINCRBY")
                    .arg(&hk)
                    .arg(format!("{row}{FIELD_SEP}{i}"))
                    .arg(*v)
                    .ignore();
            }
        }
        pipe.cmd("EXPIRE").arg(&hk).arg(USAGE_TTL_SECS).ignore();
        if c.cost_micros > 0 {
            *spent.entry((k.key.clone(), k.day.clone())).or_default() += c.cost_micros;
        }
    }
    let order: Vec<(String, String)> = spent.keys().cloned().collect();
    for (key, day) in &order {
        let micros = spent[&(key.clone(), day.clone())];
        pipe.cmd("INCRBY").arg(day_key(day, key)).arg(micros);
        pipe.cmd("EXPIRE")
            .arg(day_key(day, key))
            .arg(DAY_TTL_SECS)
            .ignore();
        pipe.cmd("INCRBY").arg(month_key(day, key)).arg(micros);
        pipe.cmd("EXPIRE")
            .arg(month_key(day, key))
            .arg(MONTH_TTL_SECS)
            .ignore();
    }
    let mut c = (*conn).clone();
    let sent = tokio::time::timeout(TIMEOUT, pipe.query_async::<Vec<u64>>(&mut c)).await;
    match sent {
        Ok(Ok(totals)) => {
            f.gate.succeeded();
            let today = Day::of_ms((f.now_ms)()).to_string();
            let mut now_totals = HashMap::new();
            for ((key, day), pair) in order.iter().zip(totals.chunks(2)) {
                if *day == today && pair.len() == 2 {
                    now_totals.insert(key.clone(), (pair[0], pair[1]));
                }
            }
            raise(
                &f.spend,
                &now_totals,
                &crate::shard::lock(&f.pending),
                (f.now_ms)(),
            );
        }
        failed => {
            let why = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => "no answer".to_string(),
            };
            // Nothing lost: the batch goes back, summed with what came in meanwhile.
            let mut p = crate::shard::lock(&f.pending);
            for (k, c) in batch {
                p.entry(k).or_default().add(&c);
            }
            drop(p);
            f.gate.failed(&conn, &why);
        }
    }
}

/// Reads the watched keys' shared spend back into the local view.
async fn poll(f: &Flusher) {
    let Some(conn) = f.conn.load_full() else {
        return;
    };
    if !f.gate.open() {
        return;
    }
    let keys: Vec<String> = f
        .watched
        .iter()
        .flat_map(|s| crate::shard::read(s).iter().cloned().collect::<Vec<_>>())
        .collect();
    if keys.is_empty() {
        return;
    }
    let now = (f.now_ms)();
    if let Some(totals) = read_spend(&conn, &keys, now, &f.gate).await {
        raise(&f.spend, &totals, &crate::shard::lock(&f.pending), now);
    }
}

/// Today's and this month's shared spend of `keys`.
async fn read_spend(
    conn: &ConnectionManager,
    keys: &[String],
    now_ms: u64,
    gate: &Arc<Gate>,
) -> Option<HashMap<String, (u64, u64)>> {
    let day = Day::of_ms(now_ms).to_string();
    let mut cmd = redis::cmd("MGET");
    for k in keys {
        cmd.arg(day_key(&day, k)).arg(month_key(&day, k));
    }
    let mut c = conn.clone();
    match tokio::time::timeout(TIMEOUT, cmd.query_async::<Vec<Option<u64>>>(&mut c)).await {
        Ok(Ok(v)) => {
            gate.succeeded();
            Some(
                keys.iter()
                    .zip(v.chunks(2))
                    .map(|(k, p)| {
                        (
                            k.clone(),
                            (p[0].unwrap_or(0), p.get(1).copied().flatten().unwrap_or(0)),
                        )
                    })
                    .collect(),
            )
        }
        Ok(Err(e)) => {
            gate.failed(conn, &e.to_string());
            None
        }
        Err(_) => {
            gate.failed(conn, "no answer");
            None
        }
    }
}

/// Raises each key's local spend to Redis's total plus what is pending here for it.
fn raise(
    spend: &Spend,
    totals: &HashMap<String, (u64, u64)>,
    pending: &HashMap<RowKey, Counts>,
    now_ms: u64,
) {
    let today = Day::of_ms(now_ms).to_string();
    for (key, (day, month)) in totals {
        let (mut pd, mut pm) = (0, 0);
        for (k, c) in pending.iter().filter(|(k, _)| &k.key == key) {
            pm += c.cost_micros;
            if k.day == today {
                pd += c.cost_micros;
            }
        }
        spend.raise(key, now_ms, day + pd, month + pm);
    }
}
