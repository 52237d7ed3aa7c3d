//! The pipeline's stages 3 to 9, each a small type holding the few things it needs (never the whole
//! config), with one method that goes on (`Ok`, or [`Flow::Next`]) or answers ([`Flow::Respond`],
//! or an [`EdgeError`]). [`super::pipeline`] lists them in request order; what they learn goes on
//! the [`RequestContext`].

use std::sync::Arc;

use bytes::Bytes;
use http::request::Parts;
use http::{header, HeaderMap, HeaderValue, Method, Response, Uri};
use hyper::body::Incoming;

use super::body::RelayBody;
use super::cache::{self as stage, Answer, Asked, Cache, FlightLead, Lookup, Resolved};
use super::client_body::{self, BodyBudget, ClientBody};
use super::context::{Caller, RequestContext};
use super::route::{self, PathTarget};
use super::tunnel;
use super::upstream;
use crate::config::{CacheConfig, Config, Provider, ServerConfig};
use crate::error::EdgeError;
use crate::limit::{self, Admitted, Limiter};
use crate::metrics::Metrics;
use crate::wire::BodyPeek;

/// What a stage that may answer by itself returns.
pub enum Flow<T> {
    /// Go on to the next stage with this.
    Next(T),
    /// Answer the caller with this; no later stage runs.
    Respond(Box<Response<RelayBody>>),
}

/// Where the route table sent a request: the provider (by index), its fallback, the client path
/// and the upstream path and query.
pub struct Routed<'a> {
    pub index: usize,
    pub fallback: Option<usize>,
    /// The route that picked the provider (its retries and `fallback_on`); `None` for
    /// `/<provider>/v1/...`.
    pub route: Option<usize>,
    /// The client path (`/v1/...`), to build a fallback's upstream path.
    pub rest: &'a str,
    pub path_and_query: String,
}

fn no_route(parts: &Parts, model: Option<String>) -> EdgeError {
    EdgeError::NoRoute {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        model,
    }
}

/// Stage 3: route by path, `/<provider>/v1/...` or `/v1/...`; anything else is 404.
pub struct RouteByPath<'a> {
    pub cfg: &'a Config,
}

impl RouteByPath<'_> {
    pub fn run<'p>(&self, method: &Method, uri: &'p Uri) -> Result<PathTarget<'p>, EdgeError> {
        match route::classify(self.cfg, uri.path()) {
            PathTarget::Unknown => Err(EdgeError::NoRoute {
                method: method.to_string(),
                path: uri.path().to_string(),
                model: None,
            }),
            target => Ok(target),
        }
    }
}

/// Stage 4: read the body ([`client_body`]). A JSON body is read whole, bounded by
/// `server.max_body_bytes` (413), `server.body_read_timeout` (408) and `max_buffered_bytes` (503),
/// and peeked once for its model; other bodies (uploads) stream through under the same bounds.
pub struct ReadBody<'a> {
    pub server: &'a ServerConfig,
    pub budget: &'a BodyBudget,
}

impl ReadBody<'_> {
    /// `strict`: routing needs the model, so a body that is not JSON is a 400. `upgrade`: a
    /// WebSocket handshake, whose model (Realtime API) is in the query.
    pub async fn run(
        &self,
        x: &mut RequestContext,
        parts: &Parts,
        body: Incoming,
        strict: bool,
        upgrade: bool,
    ) -> Result<ClientBody, EdgeError> {
        let bounds = client_body::Bounds {
            max_bytes: self.server.max_body_bytes,
            stall: self.server.body_read_timeout,
        };
        let (body, buffered) =
            client_body::read(body, &parts.headers, &parts.method, bounds, self.budget).await?;
        x.buffered = buffered;
        if let ClientBody::Whole(bytes) = &body {
            x.bytes_in = bytes.len() as u64;
            x.capture_request_body(bytes);
            x.peek = peek(bytes, strict)?;
        }
        let model = match x.peek.model.clone() {
            None if upgrade => tunnel::query_model(parts.uri.query()),
            model => model,
        };
        x.model = model;
        Ok(body)
    }
}

/// Stage 5: route by model. The route table picks the provider (404 when nothing matches); the
/// model's price for that provider, and its metric label, go on the context.
pub struct RouteByModel<'a> {
    pub cfg: &'a Config,
    pub prices: &'a crate::cost::Prices,
    /// Now, unix ms (which prices are in force).
    pub now_ms: u64,
}

impl RouteByModel<'_> {
    pub fn run<'p>(
        &self,
        x: &mut RequestContext,
        parts: &Parts,
        target: PathTarget<'p>,
    ) -> Result<Routed<'p>, EdgeError> {
        let (index, fallback, route, rest) = match target {
            PathTarget::Explicit { provider, rest } => (provider, None, None, rest),
            PathTarget::Table { path } => {
                match route::select_for(self.cfg, path, x.model.as_deref(), &parts.headers) {
                    Some(r) => (r.provider, r.fallback, r.route, path),
                    None => return Err(no_route(parts, x.model.clone())),
                }
            }
            PathTarget::Unknown => return Err(no_route(parts, None)),
        };
        let provider = &self.cfg.providers[index];
        x.provider = Some(provider.name.clone());
        let priced = self
            .prices
            .resolve(&provider.name, x.model.as_deref(), self.now_ms);
        x.model_label.clone_from(&priced.label);
        x.price = priced.price.clone();
        x.caller = Caller::of(&parts.headers, provider, x.caller.key.take());
        x.client = crate::wire::clients::client_of(&parts.headers);
        x.session = crate::wire::clients::session_of(&parts.headers);
        let mut path_and_query = route::upstream_path(&provider.base_url.path, rest);
        if let Some(q) = parts.uri.query() {
            path_and_query.push('?');
            path_and_query.push_str(q);
        }
        x.endpoint = crate::wire::Endpoint::of(&path_and_query);
        Ok(Routed {
            index,
            fallback,
            route,
            rest,
            path_and_query,
        })
    }
}

/// Stage 3b (only with `auth.enabled`): the caller presents a relay key ([`crate::keys`]): none, or
/// one unknown, revoked, rotated or expired, is 401 before the body is read. The key is kept on the
/// context (who the caller is); the provider's own key replaces it on the way out.
pub struct Authenticate<'a> {
    /// `None` when the store could not be opened: then no key is known.
    pub keys: Option<&'a crate::keys::Keys>,
    pub now_ms: u64,
}

impl Authenticate<'_> {
    pub fn run(&self, x: &mut RequestContext, headers: &HeaderMap) -> Result<(), EdgeError> {
        let presented = crate::wire::headers::presented_key(headers);
        let checked = match self.keys {
            Some(keys) => keys.ring.check(presented.as_deref(), self.now_ms),
            None => crate::keys::KeyRing::default().check(presented.as_deref(), self.now_ms),
        };
        match checked {
            Ok(key) => {
                x.caller.key = Some(key);
                Ok(())
            }
            Err(denied) => Err(EdgeError::Unauthenticated {
                why: denied.to_string(),
            }),
        }
    }
}

/// Stage 5b: a relay key limited to some models (`--models`) may use only those (403).
pub struct KeyModels;

impl KeyModels {
    pub fn run(&self, x: &RequestContext) -> Result<(), EdgeError> {
        let Some(key) = &x.caller.key else {
            return Ok(());
        };
        if key.allows(x.model.as_deref()) {
            return Ok(());
        }
        Err(EdgeError::ModelNotAllowed {
            key: key.name.clone(),
            model: x.model.clone().unwrap_or_default(),
            allowed: key.models.join(", "),
        })
    }
}

/// Stage 6a: cost. The request is booked to a key and its metering decided ([`crate::cost`]).
pub struct Meter<'a> {
    pub book: &'a crate::cost::Book,
    pub acct: &'a Arc<crate::cost::Accounting>,
}

impl Meter<'_> {
    pub fn run(
        &self,
        x: &mut RequestContext,
        provider: &Provider,
        parts: &Parts,
        whole: Option<&Bytes>,
    ) -> Option<crate::cost::Plan> {
        let plan = crate::cost::plan(
            self.book,
            self.acct,
            provider,
            &parts.method,
            x.endpoint,
            &x.caller.booked,
            whole,
            x.model.as_deref(),
            x.price.as_ref(),
            &x.peek,
        );
        if let Some(c) = &plan {
            x.tally = Some(c.tally(false));
        }
        plan
    }
}

/// What the cache stage sends on with a request that goes upstream.
#[derive(Default)]
pub struct CacheMiss {
    pub lookup: Option<Lookup>,
    /// Set when this request leads a single flight: its followers wait on its answer.
    pub lead: Option<FlightLead>,
}

/// Stage 6b: the cache ([`super::cache`]). A hit is replayed (with its saved cost and the
/// `x-relay-cost-usd` / `x-relay-tokens` headers), an identical request in flight is shared, an
/// offline miss is 400; otherwise the request goes on, with what the tap needs to record it.
pub struct CacheLookup<'a> {
    pub cache: Option<&'a Arc<Cache>>,
    pub cfg: &'a CacheConfig,
    pub metrics: &'a Metrics,
}

impl CacheLookup<'_> {
    pub async fn run(
        &self,
        x: &mut RequestContext,
        parts: &Parts,
        provider: &str,
        path_and_query: &str,
        whole: Option<&Bytes>,
        cost: Option<&crate::cost::Plan>,
    ) -> Result<Flow<CacheMiss>, EdgeError> {
        let Some(cache) = self.cache else {
            return Ok(Flow::Next(CacheMiss::default()));
        };
        let asked = Asked {
            method: &parts.method,
            headers: &parts.headers,
            caller: &x.caller.identity,
            provider,
            upstream_path: path_and_query,
            endpoint: x.endpoint,
            body: whole,
            client: x.client.as_deref(),
            session: x.session.as_deref(),
        };
        let plan = cache.plan(self.cfg, &asked)?;
        let Some(lookup) = plan else {
            return Ok(Flow::Next(CacheMiss::default()));
        };
        let resolved = cache.resolve(lookup, &x.request_id).await?;
        let labels = [provider, x.model_label.as_str()];
        match resolved {
            Resolved::Served(mut resp) => {
                self.metrics.cache_hits.with_label_values(&labels).inc();
                let Some(c) = cost else {
                    return Ok(Flow::Respond(resp));
                };
                let served = c.served(&mut resp);
                x.tally = Some(served.tally);
                if served.usage.is_some() {
                    x.usage = served.usage;
                }
                Ok(Flow::Respond(Box::new(
                    resp.map(|b| b.with_meter(served.hook)),
                )))
            }
            Resolved::Forward(lookup, lead) => {
                if lookup
                    .as_ref()
                    .is_some_and(|l| l.status != stage::Status::Bypass)
                {
                    self.metrics.cache_misses.with_label_values(&labels).inc();
                }
                Ok(Flow::Next(CacheMiss { lookup, lead }))
            }
        }
    }
}

/// Stage 6c: a key over its budget is refused (429 `budget_exceeded`); otherwise the most the
/// request can cost is reserved until it settles, waiting while the key's requests in flight may
/// use what is left ([`crate::cost::budget`]).
pub struct BudgetCheck<'a> {
    pub book: &'a crate::cost::Book,
    pub acct: &'a crate::cost::Accounting,
}

impl BudgetCheck<'_> {
    pub async fn run(
        &self,
        x: &mut RequestContext,
        cost: Option<&crate::cost::Plan>,
    ) -> Result<(), EdgeError> {
        let Some(c) = cost else { return Ok(()) };
        let bound = c.bound(x.bytes_in, x.peek.max_tokens);
        let reserved = self.acct.reserve(c.key(), c.limit(), bound).await?;
        if let Some(t) = x.tally.as_mut() {
            t.reserved = reserved;
        } else if let Some(r) = reserved {
            // Nothing will settle it: give it back at once.
            let mut t = c.tally(false);
            t.reserved = Some(r);
        }
        Ok(())
    }
}

/// Stage 6d: the request filters before it goes upstream. A streamed chat request gets
/// `stream_options.include_usage` (`cost.stream_usage: inject`); the cache's control headers are
/// removed; a request whose answer is recorded asks for it uncompressed (SSE events and usage
/// must be readable).
pub struct RequestFilters;

impl RequestFilters {
    pub fn run(
        &self,
        headers: &mut HeaderMap,
        body: ClientBody,
        inject: bool,
        recorded: bool,
    ) -> ClientBody {
        let body = match body {
            ClientBody::Whole(b) if inject => match crate::cost::inject::include_usage(&b) {
                Some(changed) => {
                    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(changed.len()));
                    ClientBody::Whole(changed)
                }
                None => ClientBody::Whole(b),
            },
            other => other,
        };
        headers.remove(crate::wire::clients::X_RELAY_SESSION);
        headers.remove(crate::wire::clients::X_RELAY_REPLAY);
        for h in &stage::CONTROL_HEADERS {
            headers.remove(h);
        }
        if recorded {
            headers.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
        }
        body
    }
}

/// Stage 7: rate limits (after a miss: cache hits are never limited). The `ratelimit` rules pass
/// the request, queue it for its slot (`on_limit: wait`) or refuse it (429), see [`crate::limit`].
pub struct RateLimit<'a> {
    pub limiter: &'a Limiter,
    pub metrics: &'a Metrics,
}

impl RateLimit<'_> {
    pub async fn run(
        &self,
        x: &mut RequestContext,
        whole: Option<&Bytes>,
    ) -> Result<Admitted, EdgeError> {
        let caller = x.caller.identity.digest();
        // A relay key's own limits (`relay keys create --rps --tpm`).
        let own = x.caller.key.as_ref().and_then(|k| k.limits());
        let limited = limit::Request {
            caller,
            model: x.model.as_deref(),
            body: whole.map(|b| &b[..]),
            max_tokens: x.peek.max_tokens,
            own: own.as_ref(),
        };
        let mut admitted = self.limiter.admit(&limited, self.metrics).await?;
        x.tokens = admitted.tokens.take();
        Ok(admitted)
    }
}

/// Stage 9: the response filters. Hop-by-hop headers go (a protocol switch keeps its upgrade
/// headers, and on 101 the two connections are spliced, see [`super::tunnel`]); the cost meter,
/// `x-ratelimit-*`, the cache's tap and its headers and `x-request-id` are put on; the body is
/// streamed frame by frame through the per-chunk filters (the tap, the meter).
pub struct ResponseFilters<'a> {
    pub cache: Option<&'a Arc<Cache>>,
    pub metrics: &'a Arc<Metrics>,
    pub held: &'a Arc<super::held::HeldConnections>,
}

/// What stage 9 puts on the answer, gathered by the earlier stages.
pub struct Answering<'a> {
    pub provider: &'a Provider,
    pub method: &'a Method,
    pub path_and_query: &'a str,
    pub request: Option<Bytes>,
    pub cost: Option<&'a crate::cost::Plan>,
    pub admitted: &'a Admitted,
    pub miss: CacheMiss,
    /// The caller's side of a protocol switch, and its `Upgrade` value.
    pub upgrade: Option<(HeaderValue, Option<hyper::upgrade::OnUpgrade>)>,
    /// What stage 8b read of the body (a held JSON answer).
    pub held: super::json_answer::Held,
}

impl ResponseFilters<'_> {
    pub fn run(
        &self,
        x: &RequestContext,
        resp: Response<Incoming>,
        a: Answering<'_>,
    ) -> Response<RelayBody> {
        let provider = a.provider;
        let (mut rparts, rbody) = resp.into_parts();
        let switched = (rparts.status == http::StatusCode::SWITCHING_PROTOCOLS)
            .then(|| rparts.headers.get(header::UPGRADE).cloned())
            .flatten();
        upstream::strip_hop_by_hop(&mut rparts.headers);
        if let (Some(v), Some((_, Some(caller)))) = (switched, a.upgrade) {
            if let Some(theirs) = rparts.extensions.remove::<hyper::upgrade::OnUpgrade>() {
                tunnel::restore(&mut rparts.headers, v);
                tunnel::splice(caller, theirs, provider.name.clone(), self.held.hold());
            }
        }
        // A held answer's usage is known: no meter on its body.
        let hook = a
            .cost
            .filter(|_| x.usage.is_none())
            .and_then(|c| c.hook(rparts.status, &mut rparts.headers));
        if let Some(h) = &a.admitted.headers {
            h.apply(&mut rparts.headers);
        }
        let CacheMiss { lookup, lead } = a.miss;
        let tap = match (self.cache, &lookup) {
            (Some(cache), Some(l)) if l.status != stage::Status::Bypass => cache.tap(
                l,
                lead,
                Answer {
                    provider: &provider.name,
                    model: x.model.as_deref(),
                    method: a.method,
                    path: a.path_and_query,
                    request: a.request.unwrap_or_default(),
                    status: rparts.status,
                    headers: &rparts.headers,
                },
                self.metrics,
            ),
            _ => None,
        };
        if let Some(l) = &lookup {
            stage::mark(&mut rparts.headers, l.status, &l.key, &x.request_id);
        }
        // After the tap: relay's cost headers are never recorded with the answer.
        if let (Some(c), Some(u)) = (a.cost, &x.usage) {
            c.state_cost(u, &mut rparts.headers);
        }
        rparts
            .headers
            .entry("x-request-id")
            .or_insert_with(|| x.request_id.clone());
        let upstream_time = x.upstream.unwrap_or_default();
        self.metrics.overhead.observe(
            x.started
                .elapsed()
                .saturating_sub(upstream_time)
                .as_secs_f64(),
        );
        Response::from_parts(
            rparts,
            RelayBody::upstream(rbody, provider.timeouts.idle)
                .with_held(a.held.bytes)
                .with_tap(tap)
                .with_meter(hook),
        )
    }
}

/// Fails the single flight this request leads (its followers get the same error), passing `e` on.
pub fn fail_lead(lead: Option<FlightLead>, e: EdgeError) -> EdgeError {
    if let Some(lead) = lead {
        lead.fail(&e);
    }
    e
}

/// The body's [`BodyPeek`], read once without changing the body. `strict`: routing needs the
/// model, so a body that is not JSON is a 400; otherwise the upstream judges it.
pub fn peek(body: &[u8], strict: bool) -> Result<BodyPeek, EdgeError> {
    match BodyPeek::of(body) {
        Ok(p) => Ok(p),
        Err(e) if strict => Err(EdgeError::BadJson(e.to_string())),
        Err(_) => Ok(BodyPeek::default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peek_model() {
        let model = |b: &[u8], strict| peek(b, strict).map(|p| p.model);
        assert_eq!(
            model(br#"{"model":"gpt-4o","x":[1,2]}"#, true)
                .unwrap()
                .as_deref(),
            Some("gpt-4o")
        );
        assert_eq!(model(b"", true).unwrap(), None);
        assert_eq!(model(b"[1]", true).unwrap(), None);
        assert!(matches!(model(b"{nope", true), Err(EdgeError::BadJson(_))));
        assert_eq!(model(b"{nope", false).unwrap(), None);
    }
}
