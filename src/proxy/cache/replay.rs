//! Answering a hit: the stored status, headers and body (paced as recorded, or at once), each
//! entry's ready-to-send form derived once and kept while the entry is hot.

use super::*;

impl Cache {
    /// A response replayed from `entry`.
    pub(super) fn replay(
        &self,
        key: CacheKey,
        entry: Arc<Entry>,
        lookup: &Lookup,
        request_id: &HeaderValue,
    ) -> http::Response<RelayBody> {
        let age = self.clock.now_ms().saturating_sub(entry.meta.created_ms) / 1000;
        // Derived once per entry when the store shares its entries; a store that copies them
        // (Redis) would only fill the memo with entries never seen again.
        let ready = if self.store.shares_entries() {
            self.replays.get(key, &entry)
        } else {
            Arc::new(Ready::of(&entry))
        };
        let body = match (&entry.response, lookup.timing) {
            (CachedBody::Sse(events), ReplayTiming::Original) => {
                RelayBody::stream(paced(events.clone()))
            }
            _ => RelayBody::full(ready.body.clone()),
        };
        let mut resp = http::Response::new(body);
        resp.extensions_mut().insert(ready.usage);
        *resp.status_mut() = ready.status;
        *resp.headers_mut() = ready.headers.clone();
        let h = resp.headers_mut();
        h.insert(header::AGE, HeaderValue::from(age));
        mark(h, Status::Hit, &key, request_id);
        let exact = lookup
            .parts
            .as_ref()
            .is_some_and(|p| p.body == entry.request);
        let how = if exact {
            Match::Exact
        } else {
            Match::Normalized
        };
        h.insert(names::X_RELAY_CACHE_MATCH, how.header());
        resp
    }
}

/// What a hit sends, derived once per stored entry: the status, the stored headers as a
/// `HeaderMap`, the body (an SSE recording's events joined, for `replay_timing: fast`) and the
/// usage recorded in it. Without this every hit would re-parse the headers and the body's usage.
pub(super) struct Ready {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) body: Bytes,
    pub(super) usage: crate::cost::RecordedUsage,
}

impl Ready {
    pub(super) fn of(entry: &Entry) -> Ready {
        let usage = crate::cost::RecordedUsage(match &entry.response {
            CachedBody::Json(b) => crate::cost::usage::from_json(b),
            CachedBody::Sse(events) => {
                crate::cost::usage::from_sse_events(events.iter().map(|e| &e.data[..]))
            }
        });
        let body = match &entry.response {
            CachedBody::Json(b) => b.clone(),
            CachedBody::Sse(events) => {
                let mut all = BytesMut::with_capacity(events.iter().map(|e| e.data.len()).sum());
                for e in events {
                    all.extend_from_slice(&e.data);
                }
                all.freeze()
            }
        };
        let mut headers = HeaderMap::with_capacity(entry.meta.headers.len() + 6);
        for (k, v) in &entry.meta.headers {
            if let (Ok(k), Ok(v)) = (
                HeaderName::try_from(k.as_str()),
                HeaderValue::try_from(v.as_str()),
            ) {
                headers.append(k, v);
            }
        }
        Ready {
            status: StatusCode::from_u16(entry.meta.status).unwrap_or(StatusCode::OK),
            headers,
            body,
            usage,
        }
    }
}

/// [`Ready`] answers of recently hit entries, by key. An entry is recognised by its `Arc` (the
/// store hands out the one it keeps in memory), so a replaced entry is never answered from an old
/// [`Ready`]. Bounded in bytes (what it holds alive: entries and joined SSE bodies): a shard past
/// [`Replays::SHARD_BYTES`] starts over, and an answer over a quarter of that is not kept.
pub(super) struct Replays {
    pub(super) ready: Memo<(Arc<Entry>, Arc<Ready>)>,
}

impl Default for Replays {
    fn default() -> Replays {
        Replays {
            ready: Memo::new(Self::SHARD_BYTES),
        }
    }
}

impl Replays {
    const SHARD_BYTES: u64 = 4 << 20;

    pub(super) fn get(&self, key: CacheKey, entry: &Arc<Entry>) -> Arc<Ready> {
        let (_, ready) = self.ready.get_or_make(
            *key.as_bytes(),
            |(kept, _)| Arc::ptr_eq(kept, entry),
            || {
                let ready = Arc::new(Ready::of(entry));
                let size = held(entry, &ready);
                ((entry.clone(), ready), size)
            },
        );
        ready
    }
}

/// The bytes a [`Replays`] item keeps alive: the entry, and the joined body of an SSE recording.
pub(super) fn held(entry: &Entry, ready: &Ready) -> u64 {
    let joined = match entry.response {
        CachedBody::Sse(_) => ready.body.len() as u64,
        CachedBody::Json(_) => 0,
    };
    entry.size() + joined
}

/// SSE events with their recorded pauses.
pub(super) fn paced(
    events: Vec<SseEvent>,
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, BoxError>> + Send {
    futures_util::stream::unfold(events.into_iter(), |mut it| async move {
        let e = it.next()?;
        if e.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(u64::from(e.delay_ms))).await;
        }
        Some((Ok(Frame::data(e.data)), it))
    })
}
