//! HTTP/1.1 `Upgrade` pass-through, for WebSockets such as OpenAI's Realtime API
//! (`GET /v1/realtime`, which the official SDKs open at their base URL). The handshake is a request
//! like any other (routing, key injection, limits, circuit breaker, log line), forwarded with its
//! `Connection: upgrade` and `Upgrade` headers; when the upstream switches protocols (101), relay
//! splices the caller's connection to the upstream's and copies bytes both ways until either side
//! closes. What flows after the switch is not cached, metered or shown in the dashboard.

use http::{header, HeaderMap, HeaderValue};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::held::Held;

/// The `Upgrade` value of a request that asks to switch protocols (`Connection: upgrade`).
pub fn requested(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = super::upstream::connection_options(headers)
        .any(|option| option.eq_ignore_ascii_case("upgrade"));
    asks.then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
}

/// The `model` query parameter (`/v1/realtime?model=...`), for routing and the log.
pub fn query_model(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "model")
        .map(|(_, v)| v.into_owned())
}

/// Puts an upgrade back on a message whose hop-by-hop headers were stripped.
pub fn restore(headers: &mut HeaderMap, upgrade: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, upgrade);
}

/// Once both connections have switched protocols, copies bytes both ways until either closes or
/// shutdown's time is up (in a task of its own: the request that opened it has ended with its 101).
pub fn splice(caller: OnUpgrade, upstream: OnUpgrade, provider: String, held: Held) {
    tokio::spawn(async move {
        let (caller, upstream) = match tokio::try_join!(caller, upstream) {
            Ok(both) => both,
            Err(e) => {
                tracing::debug!(%provider, error = %e, "protocol switch did not complete");
                return;
            }
        };
        let (mut caller, mut upstream) = (TokioIo::new(caller), TokioIo::new(upstream));
        tokio::select! {
            r = tokio::io::copy_bidirectional(&mut caller, &mut upstream) => match r {
                Ok((sent, received)) => {
                    tracing::debug!(%provider, sent, received, "upgraded connection closed")
                }
                Err(e) => {
                    tracing::debug!(%provider, error = %e, "upgraded connection ended with an error")
                }
            },
            _ = held.cut() => tracing::debug!(%provider, "upgraded connection cut at shutdown"),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upgrade_needs_both_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert_eq!(requested(&h), None, "no Connection: upgrade");
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert_eq!(requested(&h), Some(HeaderValue::from_static("websocket")));
        h.remove(header::UPGRADE);
        assert_eq!(requested(&h), None, "nothing to upgrade to");
    }

    #[test]
    fn the_model_comes_from_the_query() {
        assert_eq!(
            query_model(Some("a=1&model=gpt-4o-realtime%2Dpreview")).as_deref(),
            Some("gpt-4o-realtime-preview")
        );
        assert_eq!(query_model(Some("a=1")), None);
        assert_eq!(query_model(None), None);
    }
}
