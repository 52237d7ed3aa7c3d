//! The request filter: what relay refuses before anything else looks at a request.
//!
//! relay listens on loopback with the user's provider key, so every web page the user opens can
//! reach it. What comes in: the request's method, path and headers and the TCP peer. What goes
//! out: the caller (its address, and whether it is local), the normalised path, or a refusal.
//!
//! - **Caller** ([`caller`]): the peer, with IPv4-mapped addresses (`::ffff:127.0.0.1`) taken as
//!   the IPv4 address. A forwarded client address (`X-Forwarded-For`, `Forwarded`) is believed only
//!   from a peer in `server.trusted_proxies` (default none). A request that carries one from any
//!   other peer came through a proxy relay does not know, so it is not local whatever its peer (a
//!   same-host nginx makes every remote client a loopback peer).
//! - **Cross-site** ([`cross_site`]): a browser request from a page of another origin is refused
//!   (`Origin` other than a loopback origin or one of `server.allowed_origins`; or, without
//!   `Origin`, `Sec-Fetch-Site: cross-site`). So is a `text/plain` or form body: a page can send
//!   one anywhere without asking first, and no API client sends one ([`form_body`]).
//! - **Path** ([`normalize_path`]): `.` and `..` segments (also as `%2e`) are resolved; a path
//!   that climbs above `/`, or hides a slash as `%2f` / `%5c`, is refused, so a request never
//!   reaches a path outside the provider's base URL.
//! - **Host** ([`host_allowed`]): relay's own API (`/relay/...`) answers only a `Host` that is a
//!   loopback name, an IP address (no DNS name: nothing to rebind), or one of
//!   `server.allowed_hosts`, which defeats DNS rebinding.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};

use http::{header, HeaderMap, Method};

/// Who sent a request, as the admin checks see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// The client's address: the peer's, or the forwarded one from a trusted proxy.
    pub ip: IpAddr,
    /// The client is this machine: a loopback address, reached directly or through a trusted
    /// proxy that says so.
    pub local: bool,
}

/// The caller of a request from `peer` with `headers`, under `trusted` proxies.
pub fn caller(peer: SocketAddr, headers: &HeaderMap, trusted: &[ipnet::IpNet]) -> Caller {
    let peer = peer.ip().to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    let forwarded = forwarded_for(headers);
    if forwarded.is_empty() {
        return Caller {
            ip: peer,
            local: peer.is_loopback(),
        };
    }
    if !is_trusted(&peer) {
        // Forwarded by a proxy relay was not told to trust: its client is somewhere else.
        return Caller {
            ip: peer,
            local: false,
        };
    }
    // Right to left: each trusted hop vouches for the one before it; the first untrusted address
    // is the client. An entry that is not an address ends the walk (the client is unknown).
    let mut client = peer;
    for hop in forwarded.iter().rev() {
        match hop {
            Some(ip) => {
                client = *ip;
                if !is_trusted(ip) {
                    break;
                }
            }
            None => {
                return Caller {
                    ip: peer,
                    local: false,
                }
            }
        }
    }
    Caller {
        ip: client,
        local: client.is_loopback(),
    }
}

/// The client addresses a request says it was forwarded for, oldest first (`X-Forwarded-For`
/// values, then `Forwarded: for=`), `None` for an entry that is no address (`unknown`, a name).
/// A request with `X-Real-IP` alone counts as forwarded for that address.
fn forwarded_for(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let mut out = Vec::new();
    for v in headers.get_all("x-forwarded-for") {
        let Ok(v) = v.to_str() else {
            out.push(None);
            continue;
        };
        out.extend(v.split(',').map(|s| parse_hop(s.trim())));
    }
    for v in headers.get_all(header::FORWARDED) {
        let Ok(v) = v.to_str() else {
            out.push(None);
            continue;
        };
        for element in v.split(',') {
            for pair in element.split(';') {
                if let Some((k, val)) = pair.trim().split_once('=') {
                    if k.trim().eq_ignore_ascii_case("for") {
                        out.push(parse_hop(val.trim().trim_matches('"')));
                    }
                }
            }
        }
    }
    if out.is_empty() {
        if let Some(v) = headers.get("x-real-ip") {
            out.push(v.to_str().ok().and_then(|s| parse_hop(s.trim())));
        }
    }
    out
}

/// One hop: `1.2.3.4`, `1.2.3.4:5678`, `[::1]`, `[::1]:5678`, `::1`.
fn parse_hop(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa.ip().to_canonical());
    }
    s.strip_prefix('[')
        .and_then(|r| r.split(']').next())
        .and_then(|ip| ip.parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
}

/// Why a browser request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CrossSite {
    /// `Origin` names a page relay does not serve.
    Origin(String),
    /// No `Origin`, but the browser says the request is cross-site.
    FetchSite,
}

impl CrossSite {
    /// What the refusal says.
    pub fn describe(&self) -> String {
        match self {
            CrossSite::Origin(o) => format!("Origin {o}"),
            CrossSite::FetchSite => "Sec-Fetch-Site: cross-site".to_string(),
        }
    }
}

/// `Some` when `headers` are a browser's request from another site: an `Origin` that is neither a
/// loopback origin (`http://localhost:3000`, `http://127.0.0.1:5173`) nor in `allowed`
/// (`server.allowed_origins`, compared without case; `*` allows every origin), or no `Origin` and
/// `Sec-Fetch-Site: cross-site`.
pub fn cross_site(headers: &HeaderMap, allowed: &[String]) -> Option<CrossSite> {
    if let Some(origin) = headers.get(header::ORIGIN) {
        let text = String::from_utf8_lossy(origin.as_bytes());
        let ok = allowed
            .iter()
            .any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(&text))
            || origin_is_loopback(&text);
        return (!ok).then(|| CrossSite::Origin(text.into_owned()));
    }
    let fetch_site = headers.get("sec-fetch-site").map(|v| v.as_bytes());
    (fetch_site == Some(b"cross-site")).then_some(CrossSite::FetchSite)
}

/// `http(s)://<loopback host>[:port]`. `null` (sandboxed frames, `file:` pages) is not.
fn origin_is_loopback(origin: &str) -> bool {
    let Some(rest) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    else {
        return false;
    };
    if rest.contains('/') || rest.contains('@') {
        return false;
    }
    host_is_loopback(strip_port(rest))
}

/// A request body no API client sends and any web page can: `text/plain`,
/// `application/x-www-form-urlencoded` (and, with `multipart`, `multipart/form-data`). Returns the
/// content type to name in the refusal.
pub fn form_body<'h>(method: &Method, headers: &'h HeaderMap, multipart: bool) -> Option<&'h str> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return None;
    }
    let ct = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let essence = ct.split(';').next().unwrap_or("").trim();
    let simple = essence.eq_ignore_ascii_case("text/plain")
        || essence.eq_ignore_ascii_case("application/x-www-form-urlencoded")
        || (multipart && essence.eq_ignore_ascii_case("multipart/form-data"));
    simple.then_some(ct)
}

/// True when `host` (a `Host` header value or URI authority) may reach relay's own API: a loopback
/// name or address, any IP literal (a page cannot rebind an address), or a name in `allowed`
/// (`server.allowed_hosts`, without case, port ignored). A request without a `Host` passes.
pub fn host_allowed(host: Option<&str>, allowed: &[String]) -> bool {
    let Some(host) = host else { return true };
    let name = strip_port(host);
    if host_is_loopback(name) || bare(name).parse::<IpAddr>().is_ok() {
        return true;
    }
    allowed
        .iter()
        .any(|a| a == "*" || strip_port(a).eq_ignore_ascii_case(name))
}

/// The `Host` of a request: the header, else the URI's authority (HTTP/2).
pub fn request_host<'a>(headers: &'a HeaderMap, uri: &'a http::Uri) -> Option<&'a str> {
    headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
}

/// `localhost`, `*.localhost` (RFC 6761: always this machine), or a loopback address.
fn host_is_loopback(host: &str) -> bool {
    let h = host.trim_end_matches('.');
    if h.eq_ignore_ascii_case("localhost")
        || h.len() > 10 && h[h.len() - 10..].eq_ignore_ascii_case(".localhost")
    {
        return true;
    }
    bare(h)
        .parse::<IpAddr>()
        .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// `host:port` → `host`; `[::1]:8080` → `[::1]`; `::1` stays.
fn strip_port(hostport: &str) -> &str {
    if hostport.starts_with('[') {
        return match hostport.find(']') {
            Some(i) => &hostport[..=i],
            None => hostport,
        };
    }
    match hostport.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => hostport,
    }
}

fn bare(host: &str) -> &str {
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Why a path is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadPath {
    /// `..` climbs above the root.
    AboveRoot,
    /// `%2f` or `%5c` (or a `\`) inside a segment: a slash some server would decode.
    EncodedSlash,
}

impl BadPath {
    pub fn describe(self) -> &'static str {
        match self {
            BadPath::AboveRoot => "its .. segments climb above the root",
            BadPath::EncodedSlash => "it hides a slash inside a segment (%2f, %5c or \\)",
        }
    }
}

/// `path` with `.` and `..` segments resolved (RFC 3986 5.2.4; `%2e` counts as `.`); the path as
/// it is when it has none. Refused: a `..` above the root, an encoded slash or backslash.
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, BadPath> {
    let mut dots = false;
    for seg in path.split('/') {
        if seg.contains('\\') || contains_ci(seg, "%2f") || contains_ci(seg, "%5c") {
            return Err(BadPath::EncodedSlash);
        }
        dots |= dot_segment(seg).is_some();
    }
    if !dots {
        return Ok(Cow::Borrowed(path));
    }
    let mut out: Vec<&str> = Vec::new();
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    let last = segs.len().saturating_sub(1);
    let mut trailing = false;
    for (i, seg) in segs.iter().enumerate() {
        match dot_segment(seg) {
            Some(1) => trailing = i == last,
            Some(_) => {
                if out.pop().is_none() {
                    return Err(BadPath::AboveRoot);
                }
                trailing = i == last;
            }
            None => {
                out.push(seg);
                trailing = false;
            }
        }
    }
    let mut s = String::with_capacity(path.len());
    for seg in &out {
        s.push('/');
        s.push_str(seg);
    }
    if trailing || s.is_empty() {
        s.push('/');
    }
    Ok(Cow::Owned(s))
}

/// 1 for `.`, 2 for `..` (each dot also as `%2e`), else `None`.
fn dot_segment(seg: &str) -> Option<u8> {
    let mut n = 0u8;
    let mut rest = seg.as_bytes();
    while !rest.is_empty() {
        if rest[0] == b'.' {
            rest = &rest[1..];
        } else if rest.len() >= 3 && rest[0] == b'%' && rest[1] == b'2' && rest[2] | 0x20 == b'e' {
            rest = &rest[3..];
        } else {
            return None;
        }
        n += 1;
        if n > 2 {
            return None;
        }
    }
    (n > 0).then_some(n)
}

fn contains_ci(hay: &str, needle: &str) -> bool {
    hay.as_bytes()
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn paths() {
        let ok = |p: &str| normalize_path(p).unwrap().into_owned();
        assert_eq!(ok("/v1/chat/completions"), "/v1/chat/completions");
        assert!(matches!(
            normalize_path("/v1/models").unwrap(),
            Cow::Borrowed(_)
        ));
        assert_eq!(ok("/v1/./models"), "/v1/models");
        assert_eq!(ok("/v1/x/../models"), "/v1/models");
        assert_eq!(ok("/v1/%2e/models"), "/v1/models");
        assert_eq!(ok("/v1/x/%2E%2e/models"), "/v1/models");
        assert_eq!(ok("/v1/../relay/cache"), "/relay/cache");
        assert_eq!(ok("/v1/.."), "/");
        assert_eq!(ok("/v1/x/."), "/v1/x/");
        assert_eq!(ok("/v1/...x"), "/v1/...x");
        assert_eq!(ok("/v1/.../x"), "/v1/.../x");
        for bad in [
            "/v1/../../__stats",
            "/..",
            "/v1/%2e%2e/%2E%2E/x",
            "/v1/x/../../../y",
        ] {
            assert_eq!(normalize_path(bad), Err(BadPath::AboveRoot), "{bad}");
        }
        for bad in [
            "/v1/..%2f..%2f__stats",
            "/v1/a%2Fb",
            "/v1/a%5cb",
            "/v1/a\\b",
        ] {
            assert_eq!(normalize_path(bad), Err(BadPath::EncodedSlash), "{bad}");
        }
    }

    #[test]
    fn origins() {
        let none: &[String] = &[];
        assert_eq!(cross_site(&h(&[]), none), None);
        assert_eq!(cross_site(&h(&[("sec-fetch-site", "none")]), none), None);
        assert_eq!(
            cross_site(&h(&[("sec-fetch-site", "same-origin")]), none),
            None
        );
        assert_eq!(
            cross_site(&h(&[("sec-fetch-site", "cross-site")]), none),
            Some(CrossSite::FetchSite)
        );
        for local in [
            "http://localhost:3000",
            "http://127.0.0.1:5173",
            "https://[::1]:8443",
            "http://app.localhost",
            "http://127.0.0.2",
        ] {
            let hm = {
                let mut m = HeaderMap::new();
                m.insert("origin", HeaderValue::from_str(local).unwrap());
                m.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
                m
            };
            assert_eq!(cross_site(&hm, none), None, "{local}");
        }
        for evil in [
            "https://attacker.example",
            "null",
            "http://localhost.attacker.example",
            "http://127.0.0.1.nip.io",
            "http://localhost@attacker.example",
        ] {
            let mut m = HeaderMap::new();
            m.insert("origin", HeaderValue::from_str(evil).unwrap());
            assert_eq!(
                cross_site(&m, none),
                Some(CrossSite::Origin(evil.to_string())),
                "{evil}"
            );
        }
        let allowed = vec!["https://app.example.com".to_string()];
        assert_eq!(
            cross_site(&h(&[("origin", "https://APP.example.com")]), &allowed),
            None
        );
        assert!(cross_site(&h(&[("origin", "https://other.example.com")]), &allowed).is_some());
        assert_eq!(
            cross_site(&h(&[("origin", "https://x.example")]), &["*".to_string()]),
            None
        );
    }

    #[test]
    fn form_bodies() {
        let post = Method::POST;
        for ct in [
            "text/plain",
            "text/plain;charset=UTF-8",
            "Application/X-WWW-Form-Urlencoded",
        ] {
            let mut m = HeaderMap::new();
            m.insert("content-type", HeaderValue::from_str(ct).unwrap());
            assert_eq!(form_body(&post, &m, false), Some(ct));
            assert_eq!(form_body(&Method::GET, &m, false), None);
        }
        let m = h(&[("content-type", "multipart/form-data; boundary=x")]);
        assert_eq!(form_body(&post, &m, false), None);
        assert!(form_body(&post, &m, true).is_some());
        assert_eq!(
            form_body(&post, &h(&[("content-type", "application/json")]), true),
            None
        );
        assert_eq!(form_body(&post, &h(&[]), true), None);
    }

    #[test]
    fn hosts() {
        let none: &[String] = &[];
        for ok in [
            "localhost:8080",
            "127.0.0.1:8080",
            "[::1]:8080",
            "LOCALHOST",
            "relay.localhost:8080",
            "192.168.1.5:8080",
            "[fd00::1]:8080",
        ] {
            assert!(host_allowed(Some(ok), none), "{ok}");
        }
        assert!(host_allowed(None, none));
        for bad in [
            "attacker.example",
            "attacker.example:8080",
            "localhost.evil:8080",
        ] {
            assert!(!host_allowed(Some(bad), none), "{bad}");
        }
        let allowed = vec!["relay.internal".to_string()];
        assert!(host_allowed(Some("relay.internal:8080"), &allowed));
        assert!(!host_allowed(Some("relay.other:8080"), &allowed));
    }

    #[test]
    fn callers() {
        let lo: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:5000".parse().unwrap();
        let lan: SocketAddr = "192.168.1.9:5000".parse().unwrap();
        let none: Vec<ipnet::IpNet> = vec![];
        assert!(caller(lo, &h(&[]), &none).local);
        let c = caller(mapped, &h(&[]), &none);
        assert!(c.local);
        assert_eq!(c.ip, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert!(!caller(lan, &h(&[]), &none).local);
        // A same-host proxy relay was not told about: not local.
        let fwd = h(&[("x-forwarded-for", "203.0.113.7")]);
        assert!(!caller(lo, &fwd, &none).local);
        assert!(!caller(lo, &h(&[("forwarded", "for=203.0.113.7")]), &none).local);
        assert!(!caller(lo, &h(&[("x-real-ip", "203.0.113.7")]), &none).local);
        // A trusted one: its word is taken.
        let trusted: Vec<ipnet::IpNet> = vec!["127.0.0.1/32".parse().unwrap()];
        let c = caller(lo, &fwd, &trusted);
        assert_eq!(c.ip, "203.0.113.7".parse::<IpAddr>().unwrap());
        assert!(!c.local);
        assert!(caller(lo, &h(&[("x-forwarded-for", "127.0.0.1")]), &trusted).local);
        // Right to left, past trusted hops; spoofed entries on the left do not count.
        let chain: Vec<ipnet::IpNet> = vec![
            "127.0.0.0/8".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
        ];
        let spoof = h(&[("x-forwarded-for", "127.0.0.1, 198.51.100.2, 10.1.1.1")]);
        let c = caller(lo, &spoof, &chain);
        assert_eq!(c.ip, "198.51.100.2".parse::<IpAddr>().unwrap());
        assert!(!c.local);
        let c = caller(
            lo,
            &h(&[("forwarded", "for=\"[2001:db8::1]:4711\";proto=https")]),
            &chain,
        );
        assert_eq!(c.ip, "2001:db8::1".parse::<IpAddr>().unwrap());
        assert!(!caller(lo, &h(&[("x-forwarded-for", "unknown")]), &chain).local);
        // A trusted proxy that is not loopback does not make a peer local by itself.
        assert!(!caller(lan, &h(&[]), &chain).local);
    }
}
