//! The cost stage's plan for one request ([`plan`]): which key it is booked to, how its answer is
//! metered ([`Hook`]), the headers that state its cost, and its budget bound.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};

use super::usage::{self, Meter, MeterMode, Usage};
use super::{tokens, usd, Accounting, Book, Metered, Price, Tally, DEFAULT_MAX_OUTPUT};
use crate::config::{Budget, Provider, ProviderKind, StreamUsage};
use crate::wire::headers as names;
use crate::wire::Endpoint;

/// What cost decided for one request (see [`plan`]).
pub struct Plan {
    acct: Arc<Accounting>,
    key: String,
    price: Option<Arc<Price>>,
    budget: Option<(String, Budget)>,
    /// The budget reserved against (`budgets."*"` included), when one applies.
    limit: Option<(String, Budget)>,
    /// The answer carries usage worth reading.
    metered: bool,
    /// Ask the upstream for the usage chunk (and strip it from the answer).
    pub inject: bool,
    /// Keep streamed text for a tiktoken count (no usage will come).
    keep_text: bool,
    model: String,
    request: Option<Bytes>,
}

/// Stage "cost" of the pipeline, after routing: books the request to a key and decides how to meter
/// it. `None` when `cost.enabled` is off.
#[allow(clippy::too_many_arguments)]
pub fn plan(
    book: &Book,
    acct: &Arc<Accounting>,
    provider: &Provider,
    method: &Method,
    endpoint: Endpoint,
    booked: &super::Booked,
    body: Option<&Bytes>,
    model: Option<&str>,
    price: Option<&Arc<Price>>,
    peek: &crate::wire::BodyPeek,
) -> Option<Plan> {
    if !book.enabled {
        return None;
    }
    let key = acct.keys.fold(book.key_label(booked), &acct.metrics);
    let price = price.cloned();
    let limit = book.budget_of(booked, &key);
    let budget = limit.clone().filter(|(name, _)| name != "*");
    let metered =
        *method == Method::POST && body.is_some_and(|b| !b.is_empty()) && endpoint.metered();
    let mut p = Plan {
        acct: acct.clone(),
        key,
        price,
        budget,
        limit,
        metered,
        inject: false,
        keep_text: true,
        model: model.unwrap_or_default().to_string(),
        request: None,
    };
    if !metered {
        return Some(p);
    }
    let body = body.expect("metered requests have a body");
    if endpoint.chat_like() {
        if peek.stream {
            // An explicit `include_usage: false` is respected.
            let asked = peek.include_usage == Some(true);
            p.inject = !asked
                && peek.include_usage.is_none()
                && provider.kind == ProviderKind::Openai
                && book.stream_usage == StreamUsage::Inject;
            p.keep_text = !asked && !p.inject;
        }
    } else if matches!(endpoint, Endpoint::Messages | Endpoint::Responses) {
        // Their streams always end with usage.
        p.keep_text = !peek.stream;
    }
    if p.keep_text || p.inject {
        // Possibly counted later (no usage, or an upstream that ignores stream_options).
        p.request = Some(body.clone());
        p.keep_text = true;
    }
    Some(p)
}

/// Carried into the cache's replay: the usage recorded with a cached answer.
#[derive(Debug, Clone, Copy)]
pub struct RecordedUsage(pub Option<Usage>);

impl Plan {
    /// The key this request is booked to.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The budget its reservation counts against, if any.
    pub fn limit(&self) -> Option<&(String, Budget)> {
        self.limit.as_ref()
    }

    /// The accounting record to put on the exchange (so errors are booked too).
    pub fn tally(&self, hit: bool) -> Tally {
        Tally {
            acct: self.acct.clone(),
            key: self.key.clone(),
            hit,
            price: self.price.clone(),
            budget: self.budget.clone(),
            reserved: None,
        }
    }

    /// A hook for an upstream answer (`None` for errors and answers without usage). Removes
    /// `Content-Length` when the hook will rewrite the body.
    pub fn hook(&self, status: http::StatusCode, headers: &mut HeaderMap) -> Option<Hook> {
        if !self.metered || !status.is_success() {
            return None;
        }
        let ct = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let meter = Meter::new(
            ct,
            MeterMode {
                keep_text: self.keep_text,
                strip_usage_chunk: self.inject,
            },
        );
        if meter.rewrites() {
            headers.remove(http::header::CONTENT_LENGTH);
        }
        Some(Hook {
            meter,
            model: self.model.clone(),
            request: self.request.clone(),
        })
    }

    /// The most this request can cost (its budget reservation): every byte of its body as an
    /// input token at the dearest input rate, `max_tokens` (else [`DEFAULT_MAX_OUTPUT`]) at the
    /// dearer of the output and reasoning rates, at the tier of that prompt. 0 without a price.
    pub fn bound(&self, body_bytes: u64, max_tokens: Option<u64>) -> u64 {
        let Some(p) = &self.price else { return 0 };
        let r = p.rates_for(body_bytes);
        let input = r.input.max(r.cache_write).max(r.cache_write_1h);
        let output = r.output.max(r.reasoning);
        let out = max_tokens.unwrap_or(DEFAULT_MAX_OUTPUT);
        let per_million =
            u128::from(body_bytes) * u128::from(input) + u128::from(out) * u128::from(output);
        u64::try_from(per_million.div_ceil(1_000_000)).unwrap_or(u64::MAX)
    }

    /// Whether to hold this upstream answer to its end before its headers go out, so that its
    /// cost and tokens go in them ([`Plan::state_cost`]): a metered, successful, uncompressed JSON
    /// answer of at most [`usage::MAX_JSON`] bytes. Streams are never held.
    pub fn holds(&self, status: http::StatusCode, headers: &HeaderMap) -> bool {
        let identity = headers
            .get(http::header::CONTENT_ENCODING)
            .is_none_or(|v| v.as_bytes().eq_ignore_ascii_case(b"identity"));
        let small = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
            .is_none_or(|n| n <= usage::MAX_JSON);
        self.metered
            && status.is_success()
            && identity
            && small
            && !crate::wire::has_event_stream(headers)
    }

    /// `x-relay-cost-usd` and `x-relay-tokens` for an upstream answer whose usage is known before
    /// its headers go out (a held JSON answer); `x-relay-unpriced: true` when the model has no
    /// price.
    pub fn state_cost(&self, u: &Usage, headers: &mut HeaderMap) {
        let cost = self.price.as_ref().map(|p| p.cost(u).micros);
        cost_headers(headers, cost.unwrap_or(0), None, u);
        if cost.is_none() && u.total() > 0 {
            headers.insert(names::X_RELAY_UNPRICED, HeaderValue::from_static("true"));
        }
    }

    /// A response served without an upstream call of its own (a cache hit, or a share of an
    /// identical request in flight). The usage recorded with a cached answer gives the saved cost
    /// and the `x-relay-cost-usd` / `x-relay-saved-usd` / `x-relay-tokens` headers at once; a shared
    /// answer is metered as it streams. When the caller did not ask for the usage chunk and relay
    /// would have injected it, the chunk is removed from the replay too.
    pub fn served<B>(&self, resp: &mut http::Response<B>) -> Served {
        let mut served = Served {
            tally: self.tally(true),
            usage: None,
            hook: None,
        };
        if !self.metered {
            return served;
        }
        let strip = self.inject && crate::wire::has_event_stream(resp.headers());
        let recorded = resp.extensions_mut().remove::<RecordedUsage>();
        if let Some(RecordedUsage(Some(u))) = recorded {
            served.usage = Some(u);
            let saved = self.price.as_ref().map_or(0, |p| p.cost(&u).micros);
            cost_headers(resp.headers_mut(), 0, Some(saved), &u);
            if !strip {
                return served;
            }
        }
        let ct = resp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let meter = Meter::new(
            &ct,
            MeterMode {
                keep_text: self.keep_text && served.usage.is_none(),
                strip_usage_chunk: strip,
            },
        );
        if meter.rewrites() {
            resp.headers_mut().remove(http::header::CONTENT_LENGTH);
        }
        served.hook = Some(Hook {
            meter,
            model: self.model.clone(),
            request: self.request.clone().filter(|_| served.usage.is_none()),
        });
        served
    }
}

/// A response served without an upstream call: its tally (a hit), the usage recorded with it, and
/// the hook that meters its body when that is still needed.
pub struct Served {
    pub tally: Tally,
    pub usage: Option<Usage>,
    pub hook: Option<Hook>,
}

/// `x-relay-cost-usd`, `x-relay-saved-usd` (cache hits) and `x-relay-tokens`.
fn cost_headers(h: &mut HeaderMap, cost_micros: u64, saved_micros: Option<u64>, u: &Usage) {
    if let Ok(v) = HeaderValue::try_from(usd(cost_micros)) {
        h.insert(names::X_RELAY_COST_USD, v);
    }
    if let Some(Ok(v)) = saved_micros.map(|s| HeaderValue::try_from(usd(s))) {
        h.insert(names::X_RELAY_SAVED_USD, v);
    }
    if let Ok(v) = HeaderValue::try_from(tokens_header(u)) {
        h.insert(names::X_RELAY_TOKENS, v);
    }
}

/// `x-relay-tokens`: `in=<prompt>;out=<output>;cached=<cached input>`, then the classes that are
/// not zero (`cache_write=`, `cache_write_1h=`, `reasoning=`), and `;estimated` when counted by
/// relay.
pub fn tokens_header(u: &Usage) -> String {
    let mut s = format!(
        "in={};out={};cached={}",
        u.prompt(),
        u.output,
        u.cached_input
    );
    for (name, n) in [
        ("cache_write", u.cache_write),
        ("cache_write_1h", u.cache_write_1h),
        ("reasoning", u.reasoning),
    ] {
        if n > 0 {
            s.push_str(&format!(";{name}={n}"));
        }
    }
    if u.estimated {
        s.push_str(";estimated");
    }
    s
}

/// Rides on a response body: meters it, and settles the usage onto the exchange at the end.
pub struct Hook {
    meter: Meter,
    model: String,
    request: Option<Bytes>,
}

impl Hook {
    /// See [`Meter::on_data`].
    pub fn on_data(&mut self, data: Bytes) -> Bytes {
        self.meter.on_data(data)
    }

    /// See [`Meter::take_tail`].
    pub fn take_tail(&mut self) -> Option<Bytes> {
        self.meter.take_tail()
    }

    /// See [`Meter::has_tail`].
    pub fn has_tail(&self) -> bool {
        self.meter.has_tail()
    }

    /// True when the hook may change the body's bytes.
    pub fn rewrites(&self) -> bool {
        self.meter.rewrites()
    }

    /// The body ended or was dropped: puts the usage on `x` and closes it. When the answer carried
    /// no usage, the tokens are counted with tiktoken on the blocking pool and `x` closes there.
    pub fn finish<X: Metered>(self, mut x: X) {
        let reading = self.meter.finish();
        if let Some(u) = reading.usage {
            *x.usage_slot() = Some(u);
            return x.close();
        }
        if x.usage_slot().is_some() {
            return x.close();
        }
        let (Some(request), Some(output)) = (self.request, reading.generated) else {
            return x.close();
        };
        let est = tokens::Estimate {
            model: self.model,
            request,
            output,
        };
        let count = move || {
            *x.usage_slot() = Some(est.count());
            x.close();
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn_blocking(count);
            }
            Err(_) => count(),
        }
    }
}
