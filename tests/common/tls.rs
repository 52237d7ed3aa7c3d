//! TLS for tests: a certificate authority made with rcgen (independent of relay's own CA code), HTTPS
//! clients that trust only the roots a test gives them, and a forward-proxy client that speaks
//! `CONNECT` to relay by hand (what `HTTPS_PROXY` makes an SDK do) and reports the certificate it
//! was shown.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::Body;

/// Installs the process-wide rustls provider once (main does the same).
pub fn install_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A throwaway CA for test origins.
pub struct TestCa {
    pub cert: CertificateDer<'static>,
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            cert: cert.der().clone(),
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// Writes the CA certificate to `dir/<file>` and returns the path.
    pub fn write(&self, dir: &Path, file: &str) -> PathBuf {
        let p = dir.join(file);
        std::fs::write(&p, &self.pem).unwrap();
        p
    }

    /// A leaf for `names`: chain (leaf, CA) and key, plus their PEM texts.
    pub fn leaf(
        &self,
        names: &[&str],
    ) -> (
        Vec<CertificateDer<'static>>,
        PrivateKeyDer<'static>,
        String,
        String,
    ) {
        let params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let key_pem = key.serialize_pem();
        (
            vec![cert.der().clone(), self.cert.clone()],
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap(),
            cert.pem(),
            key_pem,
        )
    }

    /// A server config presenting a leaf for `names`.
    pub fn server_config(&self, names: &[&str]) -> Arc<ServerConfig> {
        install_provider();
        let (chain, key, _, _) = self.leaf(names);
        let mut cfg = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(cfg)
    }
}

/// Roots holding exactly the certificates of a PEM file.
pub fn roots_from_file(path: &Path) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(path).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    roots
}

/// Roots holding one certificate.
pub fn roots_of(cert: &CertificateDer<'static>) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    roots
}

fn client_config(roots: RootCertStore) -> ClientConfig {
    install_provider();
    ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// An HTTPS (and HTTP) client that trusts only `roots`.
pub fn https_client(roots: RootCertStore) -> Client<HttpsConnector<HttpConnector>, Body> {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(client_config(roots))
        .https_only()
        .enable_http1()
        .build();
    Client::builder(TokioExecutor::new()).build(connector)
}

/// What a forward-proxy exchange saw.
pub struct Proxied {
    /// The leaf certificate the client was shown inside the tunnel.
    pub peer_cert: CertificateDer<'static>,
    pub response: Response<Incoming>,
}

/// Sends `CONNECT host:port` to relay and returns the status line's code and the open stream.
pub async fn connect_tunnel(relay: SocketAddr, host: &str, port: u16) -> (u16, TcpStream) {
    let mut tcp = TcpStream::connect(relay).await.unwrap();
    let head = format!("CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n");
    tcp.write_all(head.as_bytes()).await.unwrap();
    // Read the response head byte by byte so nothing after it is consumed.
    let mut got = Vec::new();
    while !got.ends_with(b"\r\n\r\n") {
        let b = tcp.read_u8().await.expect("CONNECT response");
        got.push(b);
    }
    let text = String::from_utf8(got).unwrap();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad CONNECT response: {text}"));
    (code, tcp)
}

/// What `HTTPS_PROXY=http://<relay>` makes a client do: `CONNECT host:port` through relay, TLS to
/// `host` inside the tunnel trusting only `roots`, then `req` over HTTP/1.1.
pub async fn via_proxy(
    relay: SocketAddr,
    host: &str,
    port: u16,
    roots: RootCertStore,
    req: Request<Body>,
) -> Result<Proxied, String> {
    let (code, tcp) = connect_tunnel(relay, host, port).await;
    if code != 200 {
        return Err(format!("CONNECT answered {code}"));
    }
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(roots)));
    let name = ServerName::try_from(host.to_string()).unwrap();
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS inside the tunnel: {e}"))?;
    let peer_cert = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let response = sender.send_request(req).await.map_err(|e| e.to_string())?;
    Ok(Proxied {
        peer_cert,
        response,
    })
}

/// Sends `req` (absolute-form URI, as an `HTTP_PROXY` client does) to relay over plain HTTP/1.1.
pub async fn via_http_proxy(relay: SocketAddr, req: Request<Body>) -> Response<Incoming> {
    let tcp = TcpStream::connect(relay).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender.send_request(req).await.unwrap()
}

/// [`via_proxy`] speaking HTTP/2 inside the tunnel (ALPN `h2`), as Go and curl clients may.
pub async fn via_proxy_h2(
    relay: SocketAddr,
    host: &str,
    port: u16,
    roots: RootCertStore,
    req: Request<Body>,
) -> Result<Response<Incoming>, String> {
    let (code, tcp) = connect_tunnel(relay, host, port).await;
    if code != 200 {
        return Err(format!("CONNECT answered {code}"));
    }
    let mut cfg = client_config(roots);
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let name = ServerName::try_from(host.to_string()).unwrap();
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS inside the tunnel: {e}"))?;
    let alpn = tls.get_ref().1.alpn_protocol().map(|p| p.to_vec());
    if alpn.as_deref() != Some(b"h2".as_slice()) {
        return Err(format!("ALPN {alpn:?}, not h2"));
    }
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    sender.send_request(req).await.map_err(|e| e.to_string())
}
