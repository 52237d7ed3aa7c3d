//! The one closing phase of a request, [`finish`]: called when its body is over (complete, cut
//! by the upstream or the idle timeout, or the caller gone), seeing everything the stages put
//! on the [`RequestContext`], the typed error included.

use super::context::{Ending, RequestContext};
use crate::error::EdgeError;

/// The closing phase of one request: breaker verdict of a stream, limiter settle, cost booking,
/// the live feed's end event, the request metrics and the access-log line. Runs once.
pub fn finish(cx: &mut RequestContext) {
    if std::mem::replace(&mut cx.closed, true) {
        return;
    }
    cx.metrics.inflight.dec();
    let outcome = cx.ending.unwrap_or(Ending::ClientGone);
    if let Some(ticket) = cx.circuit.take() {
        use crate::limit::breaker::Verdict as Judged;
        match outcome {
            Ending::Complete => ticket.record(Judged::Success, &cx.metrics),
            Ending::IdleTimeout | Ending::UpstreamError => {
                ticket.record(Judged::Failure, &cx.metrics)
            }
            Ending::ClientGone => drop(ticket),
        }
    }
    let status = if cx.status == 0 { 499 } else { cx.status };
    // A tokens-per-minute reservation is settled with what the upstream metered; with no
    // usage known (cost off, a stream cut short) the estimate stands.
    if let (Some(r), Some(u)) = (cx.tokens.take(), cx.usage) {
        r.settle(u.total());
    }
    if let Some(t) = cx.tally.take() {
        if cx.live.is_some() {
            cx.settled_key = Some(t.key.clone());
        }
        let priced = t.settle(crate::cost::Settled {
            provider: cx.provider.as_deref().unwrap_or("none"),
            model: cx.model.as_deref(),
            model_label: &cx.model_label,
            usage: cx.usage,
            failed: status >= 400 || outcome != Ending::Complete,
            session: cx.session.as_deref(),
        });
        cx.cost_micros = priced.cost_micros;
        cx.saved_micros = priced.saved_micros;
        cx.prompt_cache_saved_micros = priced.prompt_cache_saved_micros;
        cx.unpriced = priced.unpriced;
    }
    // After the cost stage: the end event carries tokens and cost.
    if let Some(live) = cx.live.take() {
        cx.ending = Some(outcome);
        live.finish(cx.snapshot());
    }
    let provider = cx.provider.as_deref().unwrap_or("none");
    cx.metrics
        .request_duration
        .with_label_values(&[provider])
        .observe(cx.started.elapsed().as_secs_f64());
    if let Some(t) = cx.first_byte {
        cx.metrics
            .time_to_first_byte
            .with_label_values(&[provider])
            .observe(t.as_secs_f64());
    }
    let mut buf = itoa_status(status);
    cx.metrics
        .requests
        .with_label_values(&[provider, &cx.model_label, buf.as_str()])
        .inc();
    buf.clear();
    if cx.log {
        let latency = cx.started.elapsed();
        tracing::info!(
            target: "relay::access",
            method = %cx.method,
            path = %cx.path,
            provider,
            model = cx.model.as_deref().unwrap_or("-"),
            status,
            latency_ms = latency.as_secs_f64() * 1e3,
            upstream_ms = cx.upstream.map(|d| d.as_secs_f64() * 1e3),
            bytes_in = cx.bytes_in,
            bytes_out = cx.bytes_out,
            outcome = outcome.as_str(),
            error = cx.error.as_ref().map(EdgeError::code),
            tokens_in = cx.usage.map(|u| u.prompt()),
            tokens_out = cx.usage.map(|u| u.output),
            tokens_cached = cx.usage.map(|u| u.cached_input),
            tokens_estimated = cx.usage.map(|u| u.estimated),
            cost_usd = cx.usage.map(|_| crate::cost::usd(cx.cost_micros)),
            saved_usd = (cx.saved_micros > 0).then(|| crate::cost::usd(cx.saved_micros)),
            prompt_cache_saved_usd = (cx.prompt_cache_saved_micros > 0)
                .then(|| crate::cost::usd(cx.prompt_cache_saved_micros)),
            unpriced = cx.unpriced.then_some(true),
            retries = (!cx.attempts.is_empty()).then(|| cx.attempts.join("; ")),
            request_id = cx.request_id.to_str().unwrap_or("-"),
            "request"
        );
    }
}

impl RequestContext {
    /// Runs the closing phase now (the body is over).
    pub fn close(mut self) {
        finish(&mut self);
    }
}

impl Drop for RequestContext {
    /// The fallback: a context dropped before its body closed it (a cancelled handler, a body
    /// dropped early) is closed here, as the caller having gone.
    fn drop(&mut self) {
        if !self.closed {
            finish(self);
        }
    }
}

impl crate::cost::Metered for RequestContext {
    fn usage_slot(&mut self) -> &mut Option<crate::cost::Usage> {
        &mut self.usage
    }

    fn close(self) {
        RequestContext::close(self);
    }
}

fn itoa_status(status: u16) -> String {
    match http::StatusCode::from_u16(status) {
        Ok(s) => s.as_str().to_string(),
        Err(_) => status.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use std::sync::Arc;
    use std::time::Instant;

    use http::{HeaderValue, Method};

    use super::*;
    use crate::cost::Usage;
    use crate::metrics::Metrics;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    /// The access-log line a closing exchange writes, as JSON fields.
    fn access_line(fill: impl FnOnce(&mut RequestContext)) -> serde_json::Value {
        let buf = Buf::default();
        let sub = tracing_subscriber::fmt()
            .json()
            .with_writer(buf.clone())
            .finish();
        tracing::subscriber::with_default(sub, || {
            let mut x = RequestContext::begin(
                Arc::new(Metrics::new()),
                true,
                Instant::now(),
                Method::POST,
                "/v1/chat/completions".into(),
                HeaderValue::from_static("req-1"),
            );
            x.status = 200;
            x.provider = Some("openai".into());
            x.ending = Some(Ending::Complete);
            fill(&mut x);
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.trim()).expect("one JSON line");
        v["fields"].clone()
    }

    #[test]
    fn the_access_line_carries_tokens_and_cost() {
        let f = access_line(|x| {
            x.usage = Some(Usage {
                input: 200,
                cached_input: 800,
                output: 100,
                ..Usage::default()
            });
            x.cost_micros = 2500;
        });
        assert_eq!(f["tokens_in"], 1000);
        assert_eq!(f["tokens_out"], 100);
        assert_eq!(f["tokens_cached"], 800);
        assert_eq!(f["tokens_estimated"], false);
        assert_eq!(f["cost_usd"], "0.002500");
        assert!(f.get("saved_usd").is_none(), "{f}");
        // No usage known: no token or cost fields at all.
        let f = access_line(|_| {});
        assert!(
            f.get("tokens_in").is_none() && f.get("cost_usd").is_none(),
            "{f}"
        );
        assert_eq!(f["status"], 200);
    }
}
