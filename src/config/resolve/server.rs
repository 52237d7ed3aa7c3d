//! Resolving `server`: the listen address (the original relay's `port`), bounds and timeouts.

use super::*;

pub(super) fn resolve_server(
    cx: &Ctx,
    raw: &RawConfig,
    env: &Env,
) -> Result<ServerConfig, ConfigError> {
    let listen_text = raw.server.listen.as_deref();
    let mut listen = match listen_text {
        Some(s) => parse_listen(s).map_err(|m| cx.err("server.listen", m))?,
        None => DEFAULT_LISTEN.parse().expect("valid default"),
    };
    if let Some(port) = &raw.server.port {
        let listen_from_env = env.get("RELAY_SERVER_LISTEN").is_some();
        let port_from_relay_env = env.get("RELAY_SERVER_PORT").is_some();
        let port_from_env = port_from_relay_env || env.get("SERVER_PORT").is_some();
        let addr = match port {
            PortSpec::Number(n) => SocketAddr::from(([0, 0, 0, 0], *n)),
            PortSpec::Text(s) => parse_listen(s).map_err(|m| cx.err("server.port", m))?,
        };
        listen = match listen_text {
            None => addr,
            // RELAY_SERVER_LISTEN wins over the file's port and the legacy SERVER_PORT.
            Some(_) if listen_from_env && !port_from_relay_env => listen,
            // An environment port overrides the listen port, keeping its host.
            Some(_) if port_from_env => SocketAddr::new(listen.ip(), addr.port()),
            Some(_) => {
                return Err(cx.err(
                    "server.port",
                    "set either server.listen or the original relay's server.port, not both",
                ))
            }
        };
    }
    let max_body_bytes = raw.server.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
    if max_body_bytes == 0 {
        return Err(cx.err("server.max_body_bytes", "must be greater than 0"));
    }
    let s = &raw.server;
    let max_buffered_bytes = s.max_buffered_bytes.unwrap_or(DEFAULT_MAX_BUFFERED_BYTES);
    if max_buffered_bytes < max_body_bytes {
        return Err(cx.err(
            "server.max_buffered_bytes",
            format!("must be at least server.max_body_bytes ({max_body_bytes})"),
        ));
    }
    let max_header_bytes = s.max_header_bytes.unwrap_or(DEFAULT_MAX_HEADER_BYTES);
    if max_header_bytes < 8192 {
        return Err(cx.err("server.max_header_bytes", "must be at least 8192"));
    }
    let max_connections = s.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
    if max_connections == 0 {
        return Err(cx.err("server.max_connections", "must be greater than 0"));
    }
    let positive = |key: &str, v: Option<Duration>, default: Duration| match v {
        Some(d) if d.is_zero() => Err(cx.err(key, "must be greater than 0")),
        Some(d) => Ok(d),
        None => Ok(default),
    };
    let idle_timeout = positive("server.idle_timeout", s.idle_timeout, DEFAULT_CONN_IDLE)?;
    let header_read_timeout = positive(
        "server.header_read_timeout",
        s.header_read_timeout,
        DEFAULT_HEADER_READ,
    )?;
    let body_read_timeout = positive(
        "server.body_read_timeout",
        s.body_read_timeout,
        DEFAULT_BODY_READ,
    )?;
    let mut trusted_proxies = Vec::new();
    for (i, t) in s.trusted_proxies.iter().flatten().enumerate() {
        let t = t.trim();
        let net = t
            .parse::<ipnet::IpNet>()
            .or_else(|_| t.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map_err(|_| {
                cx.err(
                    format!("server.trusted_proxies[{i}]"),
                    format!("{t:?} is not an IP address or CIDR range (127.0.0.1, 10.0.0.0/8)"),
                )
            })?;
        trusted_proxies.push(net);
    }
    let mut allowed_origins = Vec::new();
    for (i, o) in s.allowed_origins.iter().flatten().enumerate() {
        let o = o.trim().trim_end_matches('/');
        let valid = o == "*"
            || (o.starts_with("http://") || o.starts_with("https://"))
                && !o
                    .split_once("://")
                    .is_some_and(|(_, r)| r.is_empty() || r.contains('/'));
        if !valid {
            return Err(cx.err(
                format!("server.allowed_origins[{i}]"),
                format!("{o:?} is not an origin (scheme://host[:port], e.g. https://app.example.com) or *"),
            ));
        }
        allowed_origins.push(o.to_string());
    }
    let mut allowed_hosts = Vec::new();
    for (i, h) in s.allowed_hosts.iter().flatten().enumerate() {
        let h = h.trim();
        if h.is_empty() || h.contains('/') {
            return Err(cx.err(
                format!("server.allowed_hosts[{i}]"),
                format!("{h:?} is not a host name (relay.internal, or *)"),
            ));
        }
        allowed_hosts.push(h.to_string());
    }
    Ok(ServerConfig {
        listen,
        max_body_bytes,
        shutdown_timeout: raw.server.shutdown_timeout.unwrap_or(DEFAULT_SHUTDOWN),
        request_log: raw
            .server
            .request_log
            .or(raw.logging.enabled)
            .unwrap_or(true),
        tls: crate::config::tls::resolve_server_tls(raw.server.tls.as_ref(), cx.file)?,
        ca_dir: raw
            .server
            .ca_dir
            .as_deref()
            .filter(|p| !p.is_empty())
            .map(PathBuf::from),
        events_remote: raw.server.events_remote.unwrap_or(false),
        allow_unauthenticated: raw.server.allow_unauthenticated.unwrap_or(false),
        allowed_origins,
        allowed_hosts,
        trusted_proxies,
        max_connections,
        idle_timeout,
        header_read_timeout,
        body_read_timeout,
        max_header_bytes,
        max_buffered_bytes,
    })
}

/// `127.0.0.1:8080`, `[::1]:8080`, `:8080` (all interfaces) or a bare port (all interfaces).
pub(super) fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(port) = s.trim_start_matches(':').parse::<u16>() {
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    if let Some(rest) = s.strip_prefix("localhost:") {
        if let Ok(port) = rest.parse::<u16>() {
            return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
        }
    }
    s.parse()
        .map_err(|_| format!("{s:?} is not an address such as \"127.0.0.1:8080\" or \":8080\""))
}
