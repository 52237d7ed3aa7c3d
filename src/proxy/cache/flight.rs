//! Single flight: identical cacheable requests in flight share one upstream call. The leader's
//! answer (head, then each chunk) is handed to every follower as it arrives; its error too.

use super::*;
use crate::shard::Sharded;

// ------------------------------------------------------------------------------- single flight

/// Requests in flight by key, sharded so no one lock sees every request.
pub(super) struct Flights {
    pub(super) shards: Sharded<Mutex<HashMap<CacheKey, Arc<Flight>>>>,
}

pub(super) const SHARDS: usize = 16;

pub(super) enum Joined {
    Lead(FlightLead),
    Follow(Arc<Flight>),
}

impl Flights {
    pub(super) fn new() -> Flights {
        Flights {
            shards: Sharded::with_default(SHARDS),
        }
    }

    pub(super) fn shard(&self, key: &CacheKey) -> &Mutex<HashMap<CacheKey, Arc<Flight>>> {
        self.shards.by_bytes(key.as_bytes())
    }

    pub(super) fn join(&self, cache: &Arc<Cache>, key: CacheKey) -> Joined {
        let mut map = self.shard(&key).lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = map.get(&key) {
            f.followers.fetch_add(1, Ordering::Relaxed);
            return Joined::Follow(f.clone());
        }
        let flight = Arc::new(Flight::new());
        map.insert(key, flight.clone());
        Joined::Lead(FlightLead {
            cache: cache.clone(),
            key,
            flight,
            done: false,
        })
    }

    pub(super) fn remove(&self, key: &CacheKey, flight: &Arc<Flight>) {
        let mut map = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
        if map.get(key).is_some_and(|f| Arc::ptr_eq(f, flight)) {
            map.remove(key);
        }
    }
}

/// One upstream answer being shared.
pub(super) struct Flight {
    pub(super) state: Mutex<FlightState>,
    pub(super) changed: watch::Sender<()>,
    pub(super) followers: AtomicUsize,
}

#[derive(Default)]
pub(super) struct FlightState {
    pub(super) head: Option<(StatusCode, HeaderMap)>,
    pub(super) chunks: Vec<Bytes>,
    /// How the flight ended: the leader's own error when it failed before or while answering.
    pub(super) end: Option<Result<(), EdgeError>>,
}

impl Flight {
    pub(super) fn new() -> Flight {
        Flight {
            state: Mutex::new(FlightState::default()),
            changed: watch::channel(()).0,
            followers: AtomicUsize::new(0),
        }
    }

    pub(super) fn update(&self, f: impl FnOnce(&mut FlightState)) {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()));
        self.changed.send_replace(());
    }

    pub(super) fn set_head(&self, status: StatusCode, headers: &HeaderMap) {
        let headers = headers.clone();
        self.update(|s| s.head = Some((status, headers)));
    }

    pub(super) fn push(&self, chunk: Bytes) {
        self.update(|s| s.chunks.push(chunk));
    }
}

/// The leader's hold on a flight. Dropped unfinished, it fails the flight.
pub struct FlightLead {
    pub(super) cache: Arc<Cache>,
    pub(super) key: CacheKey,
    pub(super) flight: Arc<Flight>,
    pub(super) done: bool,
}

impl FlightLead {
    /// Serves followers a whole stored entry (the leader found it on its second look).
    pub(super) fn publish(mut self, entry: &Entry) {
        let mut headers = HeaderMap::new();
        for (k, v) in &entry.meta.headers {
            if let (Ok(k), Ok(v)) = (
                HeaderName::try_from(k.as_str()),
                HeaderValue::try_from(v.as_str()),
            ) {
                headers.append(k, v);
            }
        }
        let status = StatusCode::from_u16(entry.meta.status).unwrap_or(StatusCode::OK);
        let body = entry.response.to_bytes();
        self.flight.update(|s| {
            s.head = Some((status, headers));
            s.chunks.push(body);
            s.end = Some(Ok(()));
        });
        self.done = true;
        self.cache.flights.remove(&self.key, &self.flight);
    }

    pub(super) fn complete(mut self) {
        self.flight.update(|s| s.end = Some(Ok(())));
        self.done = true;
        self.cache.flights.remove(&self.key, &self.flight);
    }

    /// Fails the flight with relay's error for the leader (followers get the same status).
    pub fn fail(mut self, why: &EdgeError) {
        let why = why.clone();
        self.flight.update(|s| s.end = Some(Err(why)));
        self.done = true;
        self.cache.flights.remove(&self.key, &self.flight);
    }
}

impl Drop for FlightLead {
    fn drop(&mut self) {
        if !self.done {
            let cut = EdgeError::Unreachable {
                provider: "shared request".to_string(),
                detail: "the shared upstream response was cut off".to_string(),
            };
            self.flight.update(|s| s.end = Some(Err(cut)));
            self.cache.flights.remove(&self.key, &self.flight);
        }
    }
}

/// A follower's response: the leader's head, then its body from the first chunk.
pub(super) async fn follow(
    flight: Arc<Flight>,
    key: CacheKey,
    request_id: &HeaderValue,
) -> Result<http::Response<RelayBody>, EdgeError> {
    let mut rx = flight.changed.subscribe();
    let (status, mut headers) = loop {
        {
            let s = flight.state.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((status, headers)) = &s.head {
                break (*status, headers.clone());
            }
            if let Some(Err(e)) = &s.end {
                return Err(e.clone());
            }
        }
        if rx.changed().await.is_err() {
            return Err(EdgeError::Unreachable {
                provider: "shared request".to_string(),
                detail: "the shared upstream request ended".to_string(),
            });
        }
    };
    headers.remove(header::CONTENT_LENGTH);
    mark(&mut headers, Status::Hit, &key, request_id);
    let body =
        futures_util::stream::unfold((flight, rx, 0usize), |(flight, mut rx, i)| async move {
            loop {
                {
                    let s = flight.state.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(chunk) = s.chunks.get(i) {
                        let chunk = chunk.clone();
                        drop(s);
                        return Some((Ok(Frame::data(chunk)), (flight, rx, i + 1)));
                    }
                    match &s.end {
                        Some(Ok(())) => return None,
                        Some(Err(e)) => {
                            let e: BoxError = e.to_string().into();
                            drop(s);
                            return Some((Err(e), (flight, rx, usize::MAX)));
                        }
                        None => {}
                    }
                }
                if i == usize::MAX || rx.changed().await.is_err() {
                    return None;
                }
            }
        });
    let mut resp = http::Response::new(RelayBody::stream(body));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    Ok(resp)
}
