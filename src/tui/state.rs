//! The dashboard's state and its one update function. Everything here is plain data and pure logic:
//! no terminal, no clock reads (time comes in as [`Msg::Tick`]), so tests drive it directly.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use super::limits::LimitsSnapshot;
use crate::events::{CacheState, Phase, RequestEvent};

/// Screen rows around the table in the main view: title, two totals lines, the sparklines (4), the
/// table header and the status bar.
const MAIN_CHROME: u16 = 1 + 2 + 4 + 1 + 1;

/// Screen rows around the detail text: title, the section's top border, the status bar.
pub const DETAIL_CHROME: u16 = 3;

/// Table rows that fit in a terminal `height` rows tall.
pub fn table_rows(height: u16) -> usize {
    height.saturating_sub(MAIN_CHROME) as usize
}

/// Rows kept in the table; older ones are forgotten (totals keep counting).
pub const MAX_ROWS: usize = 10_000;
/// Captured headers and bodies kept over all rows (up to 2 MiB a request): past it, the oldest
/// rows' are let go (the row stays), so a long session under heavy traffic stays within this.
pub const DETAIL_BUDGET: u64 = 64 << 20;
/// Seconds of history kept for the sparklines.
pub const HISTORY_SECS: usize = 300;
/// Window for the header's req/s figure.
pub const RATE_WINDOW_SECS: u64 = 10;

/// Which screen is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// Totals, sparklines, the request table.
    Main,
    /// One request: headers, bodies, timing.
    Detail,
    /// Per-model breakdown, limiter and breaker state.
    Models,
    /// Every key.
    Help,
}

/// Table order (`s` cycles).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    Arrival,
    LatencyDesc,
    CostDesc,
    Status,
}

impl Sort {
    pub fn next(self) -> Sort {
        match self {
            Sort::Arrival => Sort::LatencyDesc,
            Sort::LatencyDesc => Sort::CostDesc,
            Sort::CostDesc => Sort::Status,
            Sort::Status => Sort::Arrival,
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            Sort::Arrival => "arrival",
            Sort::LatencyDesc => "latency",
            Sort::CostDesc => "cost",
            Sort::Status => "status",
        }
    }
}

/// One table row: a request's latest event.
#[derive(Debug, Clone)]
pub struct Row {
    /// Stable id in this table (arrival order), what the selection holds on to.
    pub id: u64,
    pub ev: Arc<RequestEvent>,
    /// Started, and its end may have been among events the feed dropped for this dashboard: shown
    /// as unknown rather than in flight forever. Its end event, if it comes, completes it as usual.
    pub unsure: bool,
    /// Its captured headers and bodies were let go to stay within [`DETAIL_BUDGET`].
    pub detail_dropped: bool,
}

/// The event without its captured headers and bodies.
fn without_detail(ev: &RequestEvent) -> Arc<RequestEvent> {
    let mut lighter = RequestEvent::clone(ev);
    lighter.detail = None;
    Arc::new(lighter)
}

pub(crate) use crate::events::detail_bytes;

impl Row {
    /// Still running (start seen, end not yet, and no events dropped since).
    pub fn in_flight(&self) -> bool {
        self.ev.phase == Phase::Start && !self.unsure
    }
    pub fn is_error(&self) -> bool {
        self.ev.phase == Phase::End && (self.ev.status >= 400 || self.ev.error.is_some())
    }
}

/// Running totals over finished requests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    pub requests: u64,
    pub errors: u64,
    pub hits: u64,
    pub misses: u64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub cost_micro_usd: u64,
    /// What relay's cache saved (hits).
    pub saved_micro_usd: u64,
    /// What the providers' prompt caches saved.
    pub prompt_cache_saved_micro_usd: u64,
    /// Requests whose model has no price (counted at $0).
    pub unpriced: u64,
    pub latency_us_sum: u64,
    /// Requests that carried token counts / a price (until one does, the header shows `–`).
    pub with_tokens: u64,
    pub with_cost: u64,
}

impl Totals {
    fn add(&mut self, ev: &RequestEvent) {
        self.requests += 1;
        if ev.status >= 400 || ev.error.is_some() {
            self.errors += 1;
        }
        match ev.cache {
            Some(CacheState::Hit) => self.hits += 1,
            Some(CacheState::Miss | CacheState::Refresh) => self.misses += 1,
            _ => {}
        }
        self.with_tokens += u64::from(ev.tokens_in.is_some() || ev.tokens_out.is_some());
        self.with_cost += u64::from(ev.cost_micro_usd.is_some());
        self.tokens_in += ev.tokens_in.unwrap_or(0);
        self.tokens_out += ev.tokens_out.unwrap_or(0);
        self.cost_micro_usd += ev.cost_micro_usd.unwrap_or(0);
        self.saved_micro_usd += ev.saved_micro_usd.unwrap_or(0);
        self.prompt_cache_saved_micro_usd += ev.prompt_cache_saved_micro_usd.unwrap_or(0);
        self.unpriced += u64::from(ev.unpriced);
        self.latency_us_sum += ev.latency_us.unwrap_or(0);
    }

    /// Cache hit rate in percent over cacheable requests, `None` before the first one.
    pub fn hit_rate(&self) -> Option<f64> {
        let n = self.hits + self.misses;
        (n > 0).then(|| self.hits as f64 * 100.0 / n as f64)
    }
}

/// One second of history.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Second {
    pub requests: u64,
    pub latency_us_sum: u64,
}

/// A parsed `/` filter: every term must match.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    pub text: String,
    terms: Vec<Term>,
}

#[derive(Debug, Clone, PartialEq)]
enum Term {
    Model(String),
    Provider(String),
    /// `200`, `4xx`, or `err` (>= 400).
    Status(String),
    /// `hit`, `miss`, `bypass`, `refresh`, `none`.
    Cache(String),
    /// An agent session (part of its label or id).
    Session(String),
    Text(String),
}

impl Filter {
    /// Parses `model:gpt-4o status:5xx provider:openai cache:hit session:demo some text`.
    pub fn parse(text: &str) -> Filter {
        let terms = text
            .split_whitespace()
            .map(|t| {
                let lower = t.to_ascii_lowercase();
                match lower.split_once(':') {
                    Some(("model", v)) => Term::Model(v.to_string()),
                    Some(("provider", v)) => Term::Provider(v.to_string()),
                    Some(("status", v)) => Term::Status(v.to_string()),
                    Some(("cache", v)) => Term::Cache(v.to_string()),
                    Some(("session", v)) => Term::Session(v.to_string()),
                    _ => Term::Text(lower),
                }
            })
            .collect();
        Filter {
            text: text.trim().to_string(),
            terms,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    pub fn matches(&self, ev: &RequestEvent) -> bool {
        let has = |field: Option<&str>, v: &str| {
            field.is_some_and(|f| f.to_ascii_lowercase().contains(v))
        };
        self.terms.iter().all(|t| match t {
            Term::Model(v) => has(ev.model.as_deref(), v),
            Term::Provider(v) => has(ev.provider.as_deref(), v),
            Term::Session(v) => has(ev.session.as_deref(), v),
            Term::Status(v) => {
                let s = ev.status.to_string();
                match v.as_str() {
                    "err" | "error" => ev.status >= 400 || ev.error.is_some(),
                    v if v.len() == 3 && v.ends_with("xx") => s.starts_with(&v[..1]),
                    v => s == v,
                }
            }
            Term::Cache(v) => match ev.cache {
                Some(c) => c.as_str().eq_ignore_ascii_case(v),
                None => v == "none" || v == "-",
            },
            Term::Text(v) => {
                has(Some(&ev.path), v)
                    || has(ev.model.as_deref(), v)
                    || has(ev.provider.as_deref(), v)
                    || has(Some(&ev.request_id), v)
                    || has(Some(&ev.method), v)
                    || has(ev.error.as_deref(), v)
                    || has(ev.session.as_deref(), v)
            }
        })
    }
}

/// Per-model figures for the breakdown view.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelStats {
    pub totals: Totals,
}

/// A box over the current view (the `e` export).
#[derive(Debug, Clone, PartialEq)]
pub struct Popup {
    pub title: String,
    pub text: String,
}

/// What comes in besides keys.
#[derive(Debug, Clone)]
pub enum Msg {
    /// A request event from the feed.
    Event(Arc<RequestEvent>),
    /// The feed dropped that many events for us.
    Lagged(u64),
    /// The wall clock, milliseconds since the Unix epoch.
    Tick(u64),
    /// The terminal's size (columns, rows).
    Resize(u16, u16),
    /// A line for the status bar (replay results, export paths, connection state).
    Status(String),
    /// Breaker and rate-limit figures read from relay's metrics (about once a second).
    Limits(LimitsSnapshot),
}

/// The whole dashboard.
#[derive(Debug, Clone)]
pub struct State {
    /// Where the requests come from: `listening on ...` or `attached to ...`.
    pub source: String,
    /// The relay that exports and replays address (`http://127.0.0.1:8080`).
    pub relay_url: String,
    /// The log file while the TUI runs.
    pub log_path: Option<String>,
    pub view: View,
    rows: VecDeque<Row>,
    next_id: u64,
    /// Request seq → row id, for requests still in flight.
    inflight: HashMap<u64, u64>,
    /// Request seq → row id, for requests that were in flight when the feed dropped events (their
    /// end may be lost; see [`Row::unsure`]).
    unsure: HashMap<u64, u64>,
    /// The feed dropped events while paused: rows in flight become unsure on resume.
    lag_held: bool,
    /// Selected row id; `None` with `follow` means the newest.
    pub selected: Option<u64>,
    /// Keep the selection on the newest row as rows arrive (`G`); any other move turns it off.
    pub follow: bool,
    /// First visible row (index into the visible list).
    pub offset: usize,
    /// Terminal size.
    pub size: (u16, u16),
    pub detail_scroll: u16,
    pub filter: Filter,
    /// The filter being typed (`/`), `None` when not editing.
    pub filter_input: Option<String>,
    pub paused: bool,
    /// Events that came in while paused, applied on resume (bounded by [`MAX_ROWS`]).
    /// Each with whether its detail was let go ([`DETAIL_BUDGET`]).
    held: VecDeque<(Arc<RequestEvent>, bool)>,
    pub sort: Sort,
    pub totals: Totals,
    pub models: BTreeMap<String, ModelStats>,
    /// Per booked key (relay key name, alias, `key-<hash prefix>`), for the Models view.
    pub keys: BTreeMap<String, ModelStats>,
    /// Per-second history, keyed by Unix second.
    history: BTreeMap<u64, Second>,
    pub now_ms: u64,
    /// Events the feed dropped for this dashboard.
    pub dropped: u64,
    pub status: Option<String>,
    pub popup: Option<Popup>,
    /// The latest breaker and rate-limit figures, `None` until the first read.
    pub limits: Option<LimitsSnapshot>,
    /// Captured headers and bodies held by `rows`, and the most they may hold
    /// ([`DETAIL_BUDGET`]).
    detail_bytes: u64,
    pub detail_budget: u64,
    /// Rows before this id hold no captured detail (where letting go resumes).
    detail_from: u64,
    /// The same for `held`: bytes, and the index before which held events hold none.
    held_detail_bytes: u64,
    held_detail_from: usize,
}

impl State {
    /// A dashboard for the relay at `relay_url`; `source` says where events come from.
    pub fn new(source: impl Into<String>, relay_url: impl Into<String>) -> State {
        State {
            source: source.into(),
            relay_url: relay_url.into(),
            log_path: None,
            view: View::Main,
            rows: VecDeque::new(),
            next_id: 0,
            inflight: HashMap::new(),
            unsure: HashMap::new(),
            lag_held: false,
            selected: None,
            follow: true,
            offset: 0,
            size: (80, 24),
            detail_scroll: 0,
            filter: Filter::default(),
            filter_input: None,
            paused: false,
            held: VecDeque::new(),
            sort: Sort::Arrival,
            totals: Totals::default(),
            models: BTreeMap::new(),
            keys: BTreeMap::new(),
            history: BTreeMap::new(),
            now_ms: 0,
            dropped: 0,
            status: None,
            popup: None,
            limits: None,
            detail_bytes: 0,
            detail_budget: DETAIL_BUDGET,
            detail_from: 0,
            held_detail_bytes: 0,
            held_detail_from: 0,
        }
    }

    /// Applies one message.
    pub fn update(&mut self, msg: Msg) {
        match msg {
            Msg::Event(ev) => {
                if self.paused {
                    if self.held.len() >= MAX_ROWS {
                        if let Some((old, _)) = self.held.pop_front() {
                            self.held_detail_bytes -= detail_bytes(&old);
                        }
                        self.held_detail_from = self.held_detail_from.saturating_sub(1);
                        self.dropped += 1;
                        self.lag_held = true;
                    }
                    self.held_detail_bytes += detail_bytes(&ev);
                    self.held.push_back((ev, false));
                    // The same budget while paused, oldest first.
                    while self.held_detail_bytes > self.detail_budget
                        && self.held_detail_from < self.held.len()
                    {
                        let (ev, dropped) = &mut self.held[self.held_detail_from];
                        self.held_detail_bytes -= detail_bytes(ev);
                        if ev.detail.is_some() {
                            *ev = without_detail(ev);
                            *dropped = true;
                        }
                        self.held_detail_from += 1;
                    }
                } else {
                    self.apply(ev, false);
                }
            }
            Msg::Lagged(n) => {
                self.dropped += n;
                if self.paused {
                    self.lag_held = true;
                } else {
                    self.lost_ends();
                }
            }
            Msg::Tick(now) => {
                self.now_ms = now;
                let keep_from = (now / 1000).saturating_sub(HISTORY_SECS as u64);
                while self
                    .history
                    .first_key_value()
                    .is_some_and(|(s, _)| *s < keep_from)
                {
                    self.history.pop_first();
                }
            }
            Msg::Resize(w, h) => {
                self.size = (w, h);
                self.scroll_to_selection();
            }
            Msg::Status(s) => self.status = Some(s),
            Msg::Limits(l) => self.limits = Some(l),
        }
    }

    /// `detail_dropped`: the event's detail was let go while it was held.
    fn apply(&mut self, ev: Arc<RequestEvent>, detail_dropped: bool) {
        if ev.phase == Phase::End {
            self.totals.add(&ev);
            let model = ev.model.clone().unwrap_or_else(|| "-".to_string());
            self.models.entry(model).or_default().totals.add(&ev);
            if let Some(k) = &ev.key {
                self.keys.entry(k.clone()).or_default().totals.add(&ev);
            }
            let done_ms = ev.time_ms + ev.latency_us.unwrap_or(0) / 1000;
            let sec = self.history.entry(done_ms / 1000).or_default();
            sec.requests += 1;
            sec.latency_us_sum += ev.latency_us.unwrap_or(0);
        }
        let existing = match ev.phase {
            Phase::Start => self.inflight.get(&ev.seq).copied().or_else(|| {
                // Its second start (response headers): it is running after all.
                let id = self.unsure.remove(&ev.seq)?;
                self.inflight.insert(ev.seq, id);
                Some(id)
            }),
            Phase::End => self
                .inflight
                .remove(&ev.seq)
                .or_else(|| self.unsure.remove(&ev.seq)),
        };
        self.detail_bytes += detail_bytes(&ev);
        if let Some(i) = existing.and_then(|id| self.index_of(id)) {
            let old = std::mem::replace(&mut self.rows[i].ev, ev);
            self.detail_bytes -= detail_bytes(&old);
            self.rows[i].unsure = false;
            self.rows[i].detail_dropped |= detail_dropped;
            if self.rows[i].id < self.detail_from && self.detail_bytes > self.detail_budget {
                // Ended after rows newer than it let go of theirs.
                self.drop_detail(i);
            }
            self.keep_detail_budget();
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        if ev.phase == Phase::Start {
            self.inflight.insert(ev.seq, id);
        }
        self.rows.push_back(Row {
            id,
            ev,
            unsure: false,
            detail_dropped,
        });
        if self.rows.len() > MAX_ROWS {
            if let Some(old) = self.rows.pop_front() {
                self.detail_bytes -= detail_bytes(&old.ev);
                self.inflight.remove(&old.ev.seq);
                self.unsure.remove(&old.ev.seq);
                if self.selected == Some(old.id) {
                    self.selected = self.rows.front().map(|r| r.id);
                }
                self.offset = self.offset.saturating_sub(1);
            }
        }
        if self.follow {
            // The view scrolls to the newest row when drawn (no per-event work over all rows).
            self.selected = None;
        }
        self.keep_detail_budget();
    }

    /// Lets go of the oldest rows' captured detail until what is held fits the budget.
    fn keep_detail_budget(&mut self) {
        let Some(first) = self.rows.front().map(|r| r.id) else {
            return;
        };
        let mut i = self.detail_from.saturating_sub(first) as usize;
        while self.detail_bytes > self.detail_budget && i < self.rows.len() {
            self.drop_detail(i);
            self.detail_from = self.rows[i].id + 1;
            i += 1;
        }
    }

    /// Lets go of row `i`'s captured detail (if it has any yet: a row in flight gets its detail
    /// with its end event).
    fn drop_detail(&mut self, i: usize) {
        let row = &mut self.rows[i];
        let bytes = detail_bytes(&row.ev);
        if bytes > 0 {
            row.ev = without_detail(&row.ev);
            row.detail_dropped = true;
            self.detail_bytes -= bytes;
        }
    }

    fn index_of(&self, id: u64) -> Option<usize> {
        let first = self.rows.front()?.id;
        let i = id.checked_sub(first)? as usize;
        (i < self.rows.len() && self.rows[i].id == id).then_some(i)
    }

    /// Rows that pass the filter, in the current sort order.
    pub fn visible(&self) -> Vec<&Row> {
        let mut rows: Vec<&Row> = self
            .rows
            .iter()
            .filter(|r| self.filter.matches(&r.ev))
            .collect();
        match self.sort {
            Sort::Arrival => {}
            Sort::LatencyDesc => rows.sort_by_key(|r| std::cmp::Reverse(r.ev.latency_us)),
            Sort::CostDesc => rows.sort_by_key(|r| std::cmp::Reverse(r.ev.cost_micro_usd)),
            Sort::Status => rows.sort_by_key(|r| std::cmp::Reverse(r.ev.status)),
        }
        rows
    }

    /// Index of the selection in `visible` (the newest row when following).
    pub fn selected_index(&self, visible: &[&Row]) -> Option<usize> {
        if visible.is_empty() {
            return None;
        }
        match self.selected {
            Some(id) => visible.iter().position(|r| r.id == id),
            None if self.follow => Some(visible.len() - 1),
            None => None,
        }
    }

    /// The selected row.
    pub fn selected_row(&self) -> Option<&Row> {
        let visible = self.visible();
        self.selected_index(&visible).map(|i| visible[i])
    }

    /// Table rows that fit on screen (see [`table_rows`]).
    pub fn page(&self) -> usize {
        table_rows(self.size.1).max(1)
    }

    /// Moves the selection by `delta` rows in the visible list (clamped).
    pub fn move_by(&mut self, delta: isize) {
        let visible = self.visible();
        if visible.is_empty() {
            return;
        }
        let cur = self.selected_index(&visible).unwrap_or(visible.len() - 1) as isize;
        let to = (cur + delta).clamp(0, visible.len() as isize - 1) as usize;
        self.selected = Some(visible[to].id);
        self.follow = false;
        self.scroll_to_selection();
    }

    /// Selects the first visible row.
    pub fn top(&mut self) {
        let first = self.visible().first().map(|r| r.id);
        if let Some(id) = first {
            self.selected = Some(id);
            self.follow = false;
            self.scroll_to_selection();
        }
    }

    /// Selects the newest row and follows new ones.
    pub fn bottom(&mut self) {
        self.selected = None;
        self.follow = true;
        self.scroll_to_selection();
    }

    /// Keeps the selected row on screen; otherwise leaves the view where it is.
    pub fn scroll_to_selection(&mut self) {
        let visible = self.visible();
        let page = self.page();
        let (sel, len) = (self.selected_index(&visible), visible.len());
        drop(visible);
        let Some(i) = sel else {
            self.offset = 0;
            return;
        };
        if i < self.offset {
            self.offset = i;
        } else if i >= self.offset + page {
            self.offset = i + 1 - page;
        }
        let max = len.saturating_sub(page);
        self.offset = self.offset.min(max);
    }

    pub fn set_filter(&mut self, text: &str) {
        self.filter = Filter::parse(text);
        self.scroll_to_selection();
    }

    /// The feed dropped events: any request in flight may have ended unseen, so its row stops
    /// counting as in flight and shows as unknown until an event for it arrives.
    fn lost_ends(&mut self) {
        for (seq, id) in std::mem::take(&mut self.inflight) {
            if let Some(i) = self.index_of(id) {
                self.rows[i].unsure = true;
                self.unsure.insert(seq, id);
            }
        }
    }

    pub fn toggle_pause(&mut self) {
        self.paused = !self.paused;
        if !self.paused {
            while let Some((ev, dropped)) = self.held.pop_front() {
                self.apply(ev, dropped);
            }
            self.held_detail_bytes = 0;
            self.held_detail_from = 0;
            if std::mem::take(&mut self.lag_held) {
                self.lost_ends();
            }
        }
    }

    /// Forgets every row and total (`z`).
    pub fn clear(&mut self) {
        self.rows.clear();
        self.detail_bytes = 0;
        self.inflight.clear();
        self.unsure.clear();
        self.lag_held = false;
        self.held.clear();
        self.held_detail_bytes = 0;
        self.held_detail_from = 0;
        self.selected = None;
        self.follow = true;
        self.offset = 0;
        self.totals = Totals::default();
        self.models.clear();
        self.keys.clear();
        self.history.clear();
        self.dropped = 0;
    }

    pub fn cycle_sort(&mut self) {
        self.sort = self.sort.next();
        self.scroll_to_selection();
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// Requests per second over the last [`RATE_WINDOW_SECS`] full seconds.
    pub fn rate(&self) -> f64 {
        let now = self.now_ms / 1000;
        let from = now.saturating_sub(RATE_WINDOW_SECS);
        let n: u64 = self.history.range(from..now).map(|(_, s)| s.requests).sum();
        n as f64 / RATE_WINDOW_SECS as f64
    }

    /// The last `n` seconds (oldest first, the current one last): requests and mean latency in ms.
    pub fn series(&self, n: usize) -> (Vec<u64>, Vec<u64>) {
        let now = self.now_ms / 1000;
        let from = (now + 1).saturating_sub(n as u64);
        (from..=now)
            .map(|s| {
                let sec = self.history.get(&s).copied().unwrap_or_default();
                let mean_ms = sec
                    .latency_us_sum
                    .checked_div(sec.requests)
                    .map(|us| us.div_ceil(1000))
                    .unwrap_or(0);
                (sec.requests, mean_ms)
            })
            .unzip()
    }

    /// Rows held (for tests and the status bar).
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Events waiting while paused.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Bytes of captured headers and bodies held, in rows and in events waiting while paused (each
    /// within [`State::detail_budget`]).
    pub fn captured_bytes(&self) -> (u64, u64) {
        (self.detail_bytes, self.held_detail_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(model: &str, provider: &str, status: u16, cache: Option<CacheState>) -> RequestEvent {
        RequestEvent {
            seq: 1,
            phase: Phase::End,
            time_ms: 0,
            request_id: "req-abc".into(),
            method: "POST".into(),
            path: "/v1/messages".into(),
            provider: Some(provider.into()),
            model: Some(model.into()),
            status,
            cache,
            ..Default::default()
        }
    }

    #[test]
    fn filter_terms() {
        let claude = ev(
            "claude-sonnet-4-5",
            "anthropic",
            429,
            Some(CacheState::Miss),
        );
        let gpt = ev("gpt-4o", "openai", 200, None);
        let cases: &[(&str, bool, bool)] = &[
            ("", true, true),
            ("model:claude", true, false),
            ("MODEL:GPT", false, true),
            ("provider:openai", false, true),
            ("status:4xx", true, false),
            ("status:200", false, true),
            ("status:err", true, false),
            ("cache:miss", true, false),
            ("cache:none", false, true),
            ("messages", true, true),
            ("req-abc model:gpt", false, true),
            ("nothing-like-this", false, false),
        ];
        for (text, c, g) in cases {
            let f = Filter::parse(text);
            assert_eq!(f.matches(&claude), *c, "{text} on claude");
            assert_eq!(f.matches(&gpt), *g, "{text} on gpt");
        }
    }

    #[test]
    fn rows_are_bounded_and_the_selection_survives_eviction() {
        let mut s = State::new("t", "http://127.0.0.1:1");
        for seq in 0..(MAX_ROWS as u64 + 5) {
            let mut e = ev("gpt-4o", "openai", 200, None);
            e.seq = seq;
            s.update(Msg::Event(Arc::new(e)));
        }
        assert_eq!(s.len(), MAX_ROWS);
        assert_eq!(s.totals.requests, MAX_ROWS as u64 + 5);
        s.top();
        assert_eq!(s.selected_row().unwrap().ev.seq, 5);
        let mut e = ev("gpt-4o", "openai", 200, None);
        e.seq = 99_999;
        s.update(Msg::Event(Arc::new(e)));
        // The selected row was the oldest and is gone: the selection moves to the new oldest.
        assert_eq!(s.selected_row().unwrap().ev.seq, 6);
    }
}
