//! Recording an upstream answer as it streams to the caller: the [`Tap`] on the body stores it
//! when it ended cleanly (SSE only with its end marker), and feeds a single flight's followers.

use super::*;

/// Response headers that describe one delivery, not the answer: not stored.
pub(super) const NOT_STORED: &[&str] = &[
    "content-length",
    "date",
    "x-request-id",
    "set-cookie",
    "age",
    "x-cache",
    "x-relay-cache",
    "x-relay-cache-key",
];

impl Cache {
    /// The tap that records the upstream answer of `lookup` and feeds `lead`'s followers; `None`
    /// when there is nothing to do.
    pub fn tap(
        self: &Arc<Self>,
        lookup: &Lookup,
        lead: Option<FlightLead>,
        answer: Answer<'_>,
        metrics: &Arc<Metrics>,
    ) -> Option<Tap> {
        if let Some(lead) = &lead {
            lead.flight.set_head(answer.status, answer.headers);
        }
        let recorder = if lookup.write && answer.status.is_success() {
            recording_kind(answer.headers).map(|kind| Recorder {
                kind,
                key: lookup.key,
                cache: self.clone(),
                metrics: metrics.clone(),
                meta: EntryMeta {
                    provider: answer.provider.to_string(),
                    model: answer.model.map(str::to_string),
                    method: answer.method.to_string(),
                    path: crate::redact::query(answer.path).into_owned(),
                    status: answer.status.as_u16(),
                    headers: stored_headers(answer.headers),
                    created_ms: 0,
                    expires_ms: None,
                    hits: 0,
                    recorded: Recorded::default(),
                },
                parts: lookup.parts.clone(),
                ttl: lookup.ttl,
                request: answer.request,
                size: 0,
                last: Instant::now(),
            })
        } else {
            None
        };
        if recorder.is_none() && lead.is_none() {
            return None;
        }
        Some(Tap { recorder, lead })
    }
}

/// What an entry keeps of the request behind it: its scope, namespace and portable key (worked
/// out here, once per recorded miss), client, session and the start of its last user message.
fn recorded(parts: &KeyParts, request: &Bytes) -> Recorded {
    Recorded {
        scope: Some(parts.scope_label()),
        namespace: parts.namespace.clone(),
        portable: parts.portable.then(|| parts.portable_key().hex()),
        client: parts.client.clone(),
        session: parts.session.clone(),
        prompt: crate::wire::clients::last_user_text(request, 80),
    }
}

/// The upstream answer a [`Tap`] is made for.
pub struct Answer<'a> {
    pub provider: &'a str,
    pub model: Option<&'a str>,
    pub method: &'a Method,
    /// Upstream path and query.
    pub path: &'a str,
    /// The request body as sent.
    pub request: Bytes,
    pub status: StatusCode,
    pub headers: &'a HeaderMap,
}

pub(super) fn stored_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(k, _)| !NOT_STORED.contains(&k.as_str()))
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect()
}

pub(super) enum Kind {
    Json(BytesMut),
    Sse {
        /// Bytes of the event being received.
        partial: BytesMut,
        events: Vec<SseEvent>,
        ended: bool,
        failed: bool,
    },
}

/// Collects one upstream answer and stores it when it ended cleanly.
pub(super) struct Recorder {
    pub(super) kind: Kind,
    pub(super) key: CacheKey,
    /// What the entry keeps of the request ([`recorded`]), worked out when the answer is stored:
    /// after the caller has its answer, not before its headers.
    pub(super) parts: Option<Arc<KeyParts>>,
    pub(super) cache: Arc<Cache>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) meta: EntryMeta,
    pub(super) ttl: Option<Duration>,
    pub(super) request: Bytes,
    pub(super) size: u64,
    pub(super) last: Instant,
}

/// Largest answer relay holds in memory to store it; bigger ones pass through unrecorded.
pub(super) const MAX_RECORDED: u64 = 64 << 20;

/// The recording kind for a response, or `None` when it cannot be stored faithfully.
pub(super) fn recording_kind(headers: &HeaderMap) -> Option<Kind> {
    let encoded = headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes() != b"identity");
    if crate::wire::has_event_stream(headers) {
        // Events cannot be told apart in a compressed stream.
        (!encoded).then(|| Kind::Sse {
            partial: BytesMut::new(),
            events: Vec::new(),
            ended: false,
            failed: false,
        })
    } else {
        Some(Kind::Json(BytesMut::new()))
    }
}

impl Recorder {
    /// Returns false when the answer got too big to record.
    pub(super) fn push(&mut self, data: &Bytes) -> bool {
        self.size += data.len() as u64;
        if self.size > MAX_RECORDED {
            return false;
        }
        match &mut self.kind {
            Kind::Json(buf) => buf.extend_from_slice(data),
            Kind::Sse {
                partial,
                events,
                ended,
                failed,
            } => {
                let mut first = true;
                crate::wire::sse::split_events(partial, data, |event| {
                    for line in event.split(|b| *b == b'\n') {
                        let line = line.trim_ascii_end();
                        *ended |= line == b"data: [DONE]"
                            || line == b"event: message_stop"
                            || line == b"event: response.completed";
                        *failed |= line == b"event: error"
                            || line == b"event: response.failed"
                            || line == b"event: response.incomplete";
                    }
                    // Events completed by one chunk arrived together: the first carries the pause
                    // since the previous event.
                    let mut delay_ms = 0;
                    if std::mem::take(&mut first) {
                        let now = Instant::now();
                        let delay = now.duration_since(self.last);
                        self.last = now;
                        delay_ms = u32::try_from(delay.as_millis()).unwrap_or(u32::MAX);
                    }
                    events.push(SseEvent {
                        delay_ms,
                        data: event,
                    });
                });
            }
        }
        true
    }

    /// The body ended cleanly: store the entry if it is complete.
    pub(super) fn finish(self) {
        let response = match self.kind {
            Kind::Json(buf) => CachedBody::Json(buf.freeze()),
            Kind::Sse {
                partial,
                events,
                ended,
                failed,
            } => {
                if !ended || failed || !partial.iter().all(|b| b.is_ascii_whitespace()) {
                    return;
                }
                CachedBody::Sse(events)
            }
        };
        let now = self.cache.clock.now_ms();
        let mut meta = self.meta;
        if let Some(p) = &self.parts {
            meta.recorded = recorded(p, &self.request);
        }
        meta.created_ms = now;
        meta.expires_ms = self
            .ttl
            .map(|t| now.saturating_add(u64::try_from(t.as_millis()).unwrap_or(u64::MAX)));
        let portable = meta
            .recorded
            .portable
            .as_deref()
            .and_then(|p| CacheKey::from_hex(p).ok());
        let entry = Entry {
            meta,
            request: self.request,
            response,
        };
        let store = &self.cache.store;
        match store.put(self.key, entry) {
            Ok(()) => {
                if let Some(p) = portable {
                    self.cache.portables.insert(p, self.key);
                }
                if self.cache.outage.ok(Op::Write) {
                    tracing::info!(backend = store.backend(), "cache writes are accepted again");
                }
            }
            // Not a store failure: this answer alone is over the size bound.
            Err(crate::cache::StoreError::TooLarge { .. }) => {}
            Err(e) => {
                self.metrics
                    .cache_errors
                    .with_label_values(&[store.backend()])
                    .inc();
                if self.cache.outage.failed(Op::Write) {
                    tracing::warn!(
                        backend = store.backend(),
                        error = %e,
                        "cache writes are refused (each counts in relay_cache_errors_total); answers are not recorded until they are accepted again"
                    );
                }
            }
        }
    }
}

/// Rides on an upstream response body: records it, and feeds a single flight's followers.
pub struct Tap {
    recorder: Option<Recorder>,
    lead: Option<FlightLead>,
}

impl crate::proxy::body::Tap for Tap {
    fn on_data(&mut self, data: &Bytes) {
        if let Some(r) = &mut self.recorder {
            if !r.push(data) {
                self.recorder = None;
            }
        }
        if let Some(l) = &self.lead {
            l.flight.push(data.clone());
        }
    }

    /// The upstream body ended cleanly: store, then let followers finish.
    fn on_end(&mut self) {
        if let Some(r) = self.recorder.take() {
            r.finish();
        }
        if let Some(l) = self.lead.take() {
            l.complete();
        }
    }

    /// The upstream body failed: nothing is stored; followers see the failure.
    fn on_error(&mut self) {
        self.recorder = None;
        self.lead = None; // dropping an unfinished lead fails its flight
    }

    /// True when others are waiting on this body (so it must be read to the end even if its own
    /// caller left).
    fn has_followers(&self) -> bool {
        self.lead
            .as_ref()
            .is_some_and(|l| l.flight.followers.load(Ordering::Relaxed) > 0)
    }
}
