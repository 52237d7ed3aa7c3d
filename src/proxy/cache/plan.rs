//! Deciding what the cache does with one request: cacheable or not, its key, and whether to read,
//! write, refresh or refuse a miss, from the mode, `x-relay-cache` and `Cache-Control`.

use super::*;

/// The request as the cache sees it.
pub struct Asked<'a> {
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
    /// Who the request is from (worked out once by the pipeline, [`crate::caller`]).
    pub caller: &'a crate::caller::Identity,
    pub provider: &'a str,
    pub upstream_path: &'a str,
    /// What the path is for ([`crate::wire::Endpoint`], worked out once by the pipeline).
    pub endpoint: crate::wire::Endpoint,
    /// The JSON body, when relay read it whole.
    pub body: Option<&'a Bytes>,
    /// The client and agent session (worked out once by the pipeline), kept with a recording.
    pub client: Option<&'a str>,
    pub session: Option<&'a str>,
}

impl Cache {
    /// Decides what to do with a request (see the module docs). `Ok(None)`: not the cache's business.
    pub fn plan(&self, c: &CacheConfig, asked: &Asked<'_>) -> Result<Option<Lookup>, EdgeError> {
        let &Asked {
            method,
            headers,
            caller,
            provider,
            upstream_path,
            endpoint,
            body,
            client,
            session,
        } = asked;
        if !c.enabled {
            return Ok(None);
        }
        let offline = c.mode == CacheMode::Offline;
        let cacheable = body.is_some_and(|b| endpoint.cacheable(method, b.len()));
        let Some(body) = body.filter(|_| cacheable) else {
            return if offline {
                Err(EdgeError::OfflineMiss {
                    reason: MissReason::OfflineNotCacheable,
                    key: "-".to_string(),
                    request_id: String::new(),
                    nearest: None,
                })
            } else {
                Ok(None)
            };
        };
        let directive = match headers.get(names::X_RELAY_CACHE).map(|v| v.to_str()) {
            None => None,
            Some(Ok(v)) if v.eq_ignore_ascii_case("skip") => Some(Directive::Skip),
            Some(Ok(v)) if v.eq_ignore_ascii_case("refresh") => Some(Directive::Refresh),
            Some(Ok(v)) if v.eq_ignore_ascii_case("only") => Some(Directive::Only),
            Some(_) => {
                return Err(EdgeError::ClientBody(
                    "x-relay-cache must be skip, refresh or only".to_string(),
                ))
            }
        };
        let (no_cache, no_store) = cache_control(headers);
        let decision = decide(c.mode, directive, no_cache, no_store);
        let ttl = match headers.get(names::X_RELAY_CACHE_TTL) {
            None => c.ttl,
            Some(v) => match v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()) {
                Some(0) => None,
                Some(secs) => Some(Duration::from_secs(secs)),
                None => {
                    return Err(EdgeError::ClientBody(
                        "x-relay-cache-ttl must be a whole number of seconds".to_string(),
                    ))
                }
            },
        };
        if decision.status == Status::Bypass {
            return Ok(Some(self.lookup_shell(Status::Bypass, c.replay_timing)));
        }
        let Decision {
            read,
            write,
            only,
            status,
        } = decision;
        let scope = match c.scope {
            CacheScope::Key => Scope::of(caller),
            CacheScope::Global => Scope::Global,
        };
        // What this request was recorded under before the one caller identity: a lookup that
        // misses tries it too (see `Cache::resolve`).
        let v1 = match c.scope {
            CacheScope::Key if read => {
                let presented = crate::wire::headers::presented_key(headers);
                Some(Scope::v1(caller, presented.as_deref())).filter(|v| *v != scope)
            }
            _ => None,
        };
        let namespace = headers
            .get(names::X_RELAY_CACHE_NAMESPACE)
            .and_then(|v| v.to_str().ok());
        let (key, v1_key) = self.keys.keys(
            &c.ignore,
            &KeyInput {
                provider,
                method: method.as_str(),
                path_and_query: upstream_path,
                body,
                scope,
                namespace,
            },
            v1,
        );
        let parts = KeyParts {
            provider: provider.to_string(),
            method: method.as_str().to_string(),
            path: upstream_path.to_string(),
            scope,
            v1,
            namespace: namespace.map(str::to_string),
            body: body.clone(),
            ignore: c.ignore.clone(),
            portable: c.portable,
            client: client.map(str::to_string),
            session: session.map(str::to_string),
        };
        Ok(Some(Lookup {
            key,
            v1_key,
            read,
            write,
            only,
            ttl,
            timing: c.replay_timing,
            status,
            parts: Some(Arc::new(parts)),
        }))
    }

    pub(super) fn lookup_shell(&self, status: Status, timing: ReplayTiming) -> Lookup {
        Lookup {
            key: CacheKey::from_bytes([0; 32]),
            v1_key: None,
            read: false,
            write: false,
            only: None,
            ttl: None,
            timing,
            status,
            parts: None,
        }
    }
}

/// `Cache-Control` request directives: (no-cache, no-store).
pub(super) fn cache_control(headers: &HeaderMap) -> (bool, bool) {
    let mut no_cache = false;
    let mut no_store = false;
    for v in headers.get_all(header::CACHE_CONTROL) {
        for d in v.to_str().unwrap_or_default().split(',') {
            let d = d.trim();
            no_cache |= d.eq_ignore_ascii_case("no-cache");
            no_store |= d.eq_ignore_ascii_case("no-store");
        }
    }
    (no_cache, no_store)
}

/// `x-relay-cache` on a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Directive {
    Skip,
    Refresh,
    Only,
}

/// What the cache does with a cacheable request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Decision {
    /// Look the key up first.
    pub read: bool,
    /// Store the answer.
    pub write: bool,
    /// A miss is an error (offline, or `x-relay-cache: only`).
    pub only: Option<MissReason>,
    /// The `x-relay-cache` answer when the request goes upstream (a hit says `HIT`).
    pub status: Status,
}

/// The cache's decision table: mode × `x-relay-cache` × `Cache-Control` (no-cache, no-store).
/// Offline always reads and never stores (a skip or refresh cannot go upstream there); `only`
/// reads and refuses a miss; `record` and a refresh (`no-cache` or `refresh`) go upstream and
/// store the answer unless `no-store`; `skip` bypasses the cache altogether.
pub(super) fn decide(
    mode: CacheMode,
    directive: Option<Directive>,
    no_cache: bool,
    no_store: bool,
) -> Decision {
    let d = |read, write, only, status| Decision {
        read,
        write,
        only,
        status,
    };
    let refresh = no_cache || directive == Some(Directive::Refresh);
    match mode {
        CacheMode::Offline => d(true, false, Some(MissReason::Offline), Status::Miss),
        _ if directive == Some(Directive::Skip) => d(false, false, None, Status::Bypass),
        _ if directive == Some(Directive::Only) => {
            d(true, false, Some(MissReason::Only), Status::Miss)
        }
        CacheMode::Record => d(false, !no_store, None, Status::Refresh),
        CacheMode::Live if refresh => d(false, !no_store, None, Status::Refresh),
        CacheMode::Live => d(true, !no_store, None, Status::Miss),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_decision_table() {
        use CacheMode::{Live, Offline, Record};
        use Directive::{Only, Refresh, Skip};
        use Status::{Bypass, Miss, Refresh as Refreshed};
        let offline = Some(MissReason::Offline);
        let only = Some(MissReason::Only);
        // mode, x-relay-cache, no-cache, no-store => read, write, only, status
        #[rustfmt::skip]
        let table = [
            (Live,    None,          false, false, true,  true,  None,    Miss),
            (Live,    None,          false, true,  true,  false, None,    Miss),
            (Live,    None,          true,  false, false, true,  None,    Refreshed),
            (Live,    None,          true,  true,  false, false, None,    Refreshed),
            (Live,    Some(Refresh), false, false, false, true,  None,    Refreshed),
            (Live,    Some(Refresh), false, true,  false, false, None,    Refreshed),
            (Live,    Some(Skip),    false, false, false, false, None,    Bypass),
            (Live,    Some(Skip),    true,  true,  false, false, None,    Bypass),
            (Live,    Some(Only),    false, false, true,  false, only,    Miss),
            (Live,    Some(Only),    true,  false, true,  false, only,    Miss),
            (Record,  None,          false, false, false, true,  None,    Refreshed),
            (Record,  None,          false, true,  false, false, None,    Refreshed),
            (Record,  Some(Refresh), false, false, false, true,  None,    Refreshed),
            (Record,  Some(Skip),    false, false, false, false, None,    Bypass),
            (Record,  Some(Only),    false, false, true,  false, only,    Miss),
            (Offline, None,          false, false, true,  false, offline, Miss),
            (Offline, None,          true,  true,  true,  false, offline, Miss),
            (Offline, Some(Refresh), false, false, true,  false, offline, Miss),
            (Offline, Some(Skip),    false, false, true,  false, offline, Miss),
            (Offline, Some(Only),    false, false, true,  false, offline, Miss),
        ];
        for (mode, dir, no_cache, no_store, read, write, miss, status) in table {
            assert_eq!(
                decide(mode, dir, no_cache, no_store),
                Decision {
                    read,
                    write,
                    only: miss,
                    status
                },
                "{mode:?} {dir:?} no-cache={no_cache} no-store={no_store}"
            );
        }
    }
}
