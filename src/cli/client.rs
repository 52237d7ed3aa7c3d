//! The one HTTP client the commands use to reach a running relay (`relay cache`, `relay usage`
//! through its loopback API, `relay health`): plain HTTP or HTTPS, trusting relay's local CA
//! (`server.tls: auto`) or the configured certificate beside the Mozilla roots, and giving up on
//! a connection after 5 s.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::config::{Config, ServerTls};

/// The URL of a server listening on `listen`: an unspecified address is reached on loopback.
pub fn listen_base(listen: SocketAddr) -> String {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, listen.port()))
}

/// How long a connection to the relay may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// See the module docs.
#[derive(Clone)]
pub struct RelayClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// `Authorization: Bearer <admin key>` for every request ([`admin_key`]), when there is one.
    admin: Option<http::HeaderValue>,
}

/// The admin key to present to a relay: `RELAY_ADMIN_KEY`, else the variable the config's
/// `auth.admin_key_env` names.
pub fn admin_key(cfg: &Config) -> Option<String> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    var("RELAY_ADMIN_KEY").or_else(|| {
        cfg.auth
            .admin_key
            .as_ref()
            .and_then(|k| k.env.as_deref())
            .and_then(var)
    })
}

impl RelayClient {
    /// A client for the relay `cfg` describes (its TLS settings decide what it trusts).
    pub fn new(cfg: &Config) -> Result<RelayClient, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let extra = match &cfg.server.tls {
            ServerTls::Off => Vec::new(),
            ServerTls::Auto => crate::tls::ca_dir(cfg)
                .ok()
                .and_then(|d| {
                    crate::config::tls::read_cert_chain(&d.join(crate::tls::CA_CERT_FILE)).ok()
                })
                .unwrap_or_default(),
            ServerTls::Files { cert, .. } => {
                crate::config::tls::read_cert_chain(cert).unwrap_or_default()
            }
        };
        for c in extra {
            let _ = roots.add(c);
        }
        let tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let admin = admin_key(cfg)
            .and_then(|k| http::HeaderValue::try_from(format!("Bearer {}", k.trim())).ok())
            .map(|mut v| {
                v.set_sensitive(true);
                v
            });
        Ok(RelayClient {
            client: Client::builder(TokioExecutor::new()).build(connector),
            admin,
        })
    }

    /// Sends `req` (with the admin key, when there is one); the response as it arrives.
    pub async fn send(
        &self,
        mut req: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        if let Some(admin) = &self.admin {
            req.headers_mut()
                .entry(http::header::AUTHORIZATION)
                .or_insert_with(|| admin.clone());
        }
        self.client.request(req).await
    }

    /// `GET uri`.
    pub async fn get(
        &self,
        uri: http::Uri,
    ) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        let mut req = Request::new(Full::new(Bytes::new()));
        *req.uri_mut() = uri;
        self.send(req).await
    }
}
