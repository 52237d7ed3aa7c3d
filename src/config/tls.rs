//! The config of relay's TLS and forward-proxy side: `server.tls` and `server.ca_dir` (HTTPS
//! serving, the local CA), `proxy.intercept` (which `CONNECT` hosts relay decrypts) and
//! `upstream.ca_file` (extra roots relay trusts upstream). Resolved from the raw keys here, so the
//! main resolver only calls in.

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

use super::{ConfigError, Provider, ProviderKind};

/// `server.tls` as written: `auto`, `off`, or `{cert, key}`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(
    untagged,
    expecting = "`auto`, `off`, or {cert: PATH, key: PATH} (PEM files)"
)]
pub enum RawTls {
    Mode(String),
    Files(RawTlsFiles),
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawTlsFiles {
    pub cert: String,
    pub key: String,
}

/// `proxy.intercept` as written: `true`, `false` or a list of hosts.
#[derive(Debug, Deserialize, Serialize)]
#[serde(
    untagged,
    expecting = "true, false, or a list of hosts ([api.openai.com, api.anthropic.com])"
)]
pub enum RawIntercept {
    All(bool),
    Hosts(Vec<String>),
}

/// `upstream:` as written.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawUpstream {
    pub ca_file: Option<String>,
}

/// How relay serves its listening socket.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ServerTls {
    /// Plain HTTP (default).
    #[default]
    Off,
    /// HTTPS with a `localhost` / `127.0.0.1` certificate signed by relay's local CA, both made on
    /// first use in `server.ca_dir` and reused after.
    Auto,
    /// HTTPS with the given PEM certificate chain and private key.
    Files { cert: PathBuf, key: PathBuf },
}

/// `proxy:` — the forward-proxy side (`HTTPS_PROXY=http://127.0.0.1:8080`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    pub intercept: Intercept,
}

/// Which `CONNECT` targets relay decrypts and runs through its pipeline. Hosts relay does not
/// intercept are tunnelled blind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intercept {
    /// Every host that maps to a provider (default).
    All,
    /// None: every `CONNECT` is a blind tunnel.
    Off,
    /// Only these hosts (lower case; each maps to a provider).
    Hosts(Vec<String>),
}

/// `upstream:` — how relay connects to upstreams.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UpstreamConfig {
    /// A PEM bundle of extra root certificates trusted for upstream TLS, beside the built-in Mozilla
    /// roots (a local TLS mock, a corporate CA).
    pub ca_file: Option<PathBuf>,
    /// Its certificates, read at load.
    pub extra_roots: Vec<CertificateDer<'static>>,
}

/// The public API hosts relay maps to a provider of their kind even when no `base_url` names them,
/// so an app that hard-codes `api.openai.com` is served by the `openai` provider wherever it points.
pub const WELL_KNOWN_HOSTS: &[(&str, ProviderKind)] = &[
    ("api.openai.com", ProviderKind::Openai),
    ("api.anthropic.com", ProviderKind::Anthropic),
];

/// A provider a forward-proxy host maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostTarget {
    /// Index into the config's providers.
    pub provider: usize,
    /// The API root path on that host (`/v1` for the well-known hosts, the `base_url` path
    /// otherwise): a request for `<api_root>/<rest>` is the provider's `/v1/<rest>`.
    pub api_root: String,
}

/// The provider `host:port` maps to: a provider with an endpoint (its `base_url`, or one of its
/// `endpoints`) on that host and port; else, for `api.openai.com` / `api.anthropic.com` on 443,
/// the provider named `openai` / `anthropic`, or the first of that kind.
pub fn provider_for_host(providers: &[Provider], host: &str, port: u16) -> Option<HostTarget> {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    for (i, p) in providers.iter().enumerate() {
        let urls = std::iter::once(&p.base_url).chain(p.endpoints.iter().map(|e| &e.url));
        for u in urls {
            let default_port = if u.is_https() { 443 } else { 80 };
            if u.authority.host().eq_ignore_ascii_case(&host)
                && u.authority.port_u16().unwrap_or(default_port) == port
            {
                return Some(HostTarget {
                    provider: i,
                    api_root: u.path.clone(),
                });
            }
        }
    }
    let (_, kind) = WELL_KNOWN_HOSTS.iter().find(|(h, _)| *h == host)?;
    if port != 443 && port != 80 {
        return None;
    }
    let i = providers
        .iter()
        .position(|p| p.name == kind.as_str())
        .or_else(|| providers.iter().position(|p| p.kind == *kind))?;
    Some(HostTarget {
        provider: i,
        api_root: "/v1".to_string(),
    })
}

impl ProxyConfig {
    /// The provider a `CONNECT host:port` is decrypted for, or `None` to tunnel it blind.
    pub fn intercepts(&self, providers: &[Provider], host: &str, port: u16) -> Option<HostTarget> {
        let listed = match &self.intercept {
            Intercept::Off => return None,
            Intercept::All => true,
            Intercept::Hosts(hosts) => {
                let h = host.trim_end_matches('.').to_ascii_lowercase();
                hosts.contains(&h)
            }
        };
        listed.then(|| provider_for_host(providers, host, port))?
    }
}

/// A key-path error in `file`.
fn invalid(file: &str, path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        file: file.to_string(),
        path: path.into(),
        message: message.into(),
    }
}

/// `server.tls`: checks that the files exist and hold a certificate chain and a private key.
pub fn resolve_server_tls(raw: Option<&RawTls>, file: &str) -> Result<ServerTls, ConfigError> {
    match raw {
        None => Ok(ServerTls::Off),
        Some(RawTls::Mode(m)) => match m.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(ServerTls::Auto),
            "off" | "" => Ok(ServerTls::Off),
            other => Err(invalid(
                file,
                "server.tls",
                format!("{other:?}: expected `auto`, `off`, or {{cert: PATH, key: PATH}}"),
            )),
        },
        Some(RawTls::Files(f)) => {
            let cert = PathBuf::from(&f.cert);
            let key = PathBuf::from(&f.key);
            read_cert_chain(&cert).map_err(|m| invalid(file, "server.tls.cert", m))?;
            read_private_key(&key).map_err(|m| invalid(file, "server.tls.key", m))?;
            Ok(ServerTls::Files { cert, key })
        }
    }
}

/// `proxy.intercept`: every listed host must map to a provider (relay can only route those).
pub fn resolve_intercept(
    raw: Option<&RawIntercept>,
    providers: &[Provider],
    file: &str,
) -> Result<ProxyConfig, ConfigError> {
    let intercept = match raw {
        None | Some(RawIntercept::All(true)) => Intercept::All,
        Some(RawIntercept::All(false)) => Intercept::Off,
        Some(RawIntercept::Hosts(list)) => {
            let mut hosts = Vec::with_capacity(list.len());
            for (i, h) in list.iter().enumerate() {
                let host = h.trim().trim_end_matches('.').to_ascii_lowercase();
                let at = format!("proxy.intercept[{i}]");
                if host.is_empty() || host.contains(['/', ':', ' ']) {
                    return Err(invalid(
                        file,
                        at,
                        format!(
                            "{h:?}: a host name such as api.openai.com (no scheme, port or path)"
                        ),
                    ));
                }
                let port = if WELL_KNOWN_HOSTS.iter().any(|(w, _)| *w == host) {
                    443
                } else {
                    providers
                        .iter()
                        .find(|p| p.base_url.authority.host().eq_ignore_ascii_case(&host))
                        .map(|p| {
                            p.base_url
                                .authority
                                .port_u16()
                                .unwrap_or(if p.base_url.is_https() { 443 } else { 80 })
                        })
                        .unwrap_or(443)
                };
                if provider_for_host(providers, &host, port).is_none() {
                    return Err(invalid(
                        file,
                        at,
                        format!(
                            "{h:?} maps to no provider: relay can intercept api.openai.com, api.anthropic.com and the hosts of the providers' base_url"
                        ),
                    ));
                }
                hosts.push(host);
            }
            Intercept::Hosts(hosts)
        }
    };
    Ok(ProxyConfig { intercept })
}

/// `upstream.ca_file`: read and parsed at load, so a bad file is a config error.
pub fn resolve_upstream(raw: &RawUpstream, file: &str) -> Result<UpstreamConfig, ConfigError> {
    let Some(path) = raw.ca_file.as_deref().filter(|p| !p.is_empty()) else {
        return Ok(UpstreamConfig::default());
    };
    let path = PathBuf::from(path);
    let roots = read_cert_chain(&path).map_err(|m| invalid(file, "upstream.ca_file", m))?;
    Ok(UpstreamConfig {
        ca_file: Some(path),
        extra_roots: roots,
    })
}

/// Every certificate in a PEM file (at least one).
pub fn read_cert_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no certificate (-----BEGIN CERTIFICATE-----) in the file",
            path.display()
        ));
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
pub fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&text)
        .map_err(|e| format!("{}: no PEM private key in the file: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, Env};

    fn cfg(yaml: &str) -> Config {
        Config::from_yaml_str(yaml, "t.yaml", &Env::empty()).unwrap()
    }

    fn target(c: &Config, host: &str, port: u16) -> Option<(String, String)> {
        c.proxy
            .intercepts(&c.providers, host, port)
            .map(|t| (c.providers[t.provider].name.clone(), t.api_root))
    }

    const PROVIDERS: &str = "\
providers:
  - {name: gw, kind: openai, base_url: 'https://gateway.example:8443/openai/v1'}
  - {name: claude, kind: anthropic, base_url: 'http://127.0.0.1:9000'}
  - {name: openai, kind: openai, base_url: 'http://127.0.0.1:11434/v1'}
  - {name: pool, kind: openai, endpoints: ['https://east.example/v1', 'https://west.example/api/v1']}
";

    #[test]
    fn hosts_map_to_providers() {
        let c = cfg(PROVIDERS);
        let t = |h, p| target(&c, h, p);
        // A base_url's host and port, with its path as the API root.
        assert_eq!(
            t("gateway.example", 8443),
            Some(("gw".into(), "/openai/v1".into()))
        );
        assert_eq!(
            t("GATEWAY.example.", 8443),
            Some(("gw".into(), "/openai/v1".into()))
        );
        assert_eq!(t("gateway.example", 443), None);
        assert_eq!(t("127.0.0.1", 9000), Some(("claude".into(), "".into())));
        // Any endpoint of a pool, with its own path.
        assert_eq!(
            t("west.example", 443),
            Some(("pool".into(), "/api/v1".into()))
        );
        assert_eq!(t("east.example", 443), Some(("pool".into(), "/v1".into())));
        // Well-known hosts: the provider of that name, else the first of that kind.
        assert_eq!(
            t("api.openai.com", 443),
            Some(("openai".into(), "/v1".into()))
        );
        assert_eq!(
            t("api.anthropic.com", 443),
            Some(("claude".into(), "/v1".into()))
        );
        assert_eq!(t("api.openai.com", 8443), None);
        assert_eq!(t("example.com", 443), None);
        // Defaults: both public APIs.
        let d = cfg("");
        assert_eq!(
            target(&d, "api.anthropic.com", 443),
            Some(("anthropic".into(), "/v1".into()))
        );
    }

    #[test]
    fn intercept_setting_narrows_or_disables() {
        let off = cfg(&format!("{PROVIDERS}proxy: {{intercept: false}}"));
        assert_eq!(target(&off, "api.openai.com", 443), None);
        let some = cfg(&format!(
            "{PROVIDERS}proxy: {{intercept: [gateway.example]}}"
        ));
        assert_eq!(target(&some, "api.openai.com", 443), None);
        assert_eq!(
            target(&some, "gateway.example", 8443).map(|t| t.0),
            Some("gw".to_string())
        );
        // A well-known host needs a provider of its kind.
        let err = Config::from_yaml_str(
            "providers: [{name: a, kind: anthropic, base_url: 'https://x.example/v1'}]\nproxy: {intercept: [api.openai.com]}",
            "t.yaml",
            &Env::empty(),
        )
        .unwrap_err();
        assert_eq!(err.key_path(), Some("proxy.intercept[0]"));
    }
}
