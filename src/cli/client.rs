//! The one HTTP client the commands use to reach a running relay (`relay cache`, `relay usage`
//! through its loopback API, `relay health`): plain HTTP or HTTPS, trusting relay's local CA
//! (`server.tls: auto`) or the configured certificate beside the Mozilla roots, and giving up on
//! a connection after 5 s.

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

/// How long a connection to the relay may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// See the module docs.
#[derive(Clone)]
pub struct RelayClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
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
        Ok(RelayClient {
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    /// Sends `req`; the response as it arrives.
    pub async fn send(
        &self,
        req: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        self.client.request(req).await
    }

    /// `GET uri`.
    pub async fn get(
        &self,
        uri: http::Uri,
    ) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        self.client.get(uri).await
    }
}
