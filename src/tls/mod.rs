//! TLS: relay's local certificate authority, the certificates it signs, and the rustls configs that
//! serve them.
//!
//! - [`LocalCa`] is a CA made with rcgen on first use and kept in `server.ca_dir` (default
//!   `<data dir>/relay/ca`): `ca.pem` (give it to clients: `relay ca path`) and `ca-key.pem`, both
//!   0600. It signs the `server.tls: auto` certificate for `localhost` / `127.0.0.1` (kept in the
//!   same directory and reused while it verifies against the CA for 30 more days) and, for the
//!   forward proxy, one certificate per intercepted host (made on demand, kept in memory only).
//! - [`server_config`] builds a rustls server config (ALPN `h2`, `http/1.1`) from a chain and key;
//!   [`acceptor`] does it for the config's `server.tls`.
//!
//! Every rustls config here names the ring provider explicitly, so nothing depends on which process
//! default is installed. Key generation and file I/O block: callers run them on the blocking pool.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::ServerConfig;

use crate::config::{Config, ServerTls};

/// The CA certificate, PEM. This is the file clients trust.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA's private key, PEM (0600).
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// The `server.tls: auto` certificate and key.
pub const LOCALHOST_CERT_FILE: &str = "localhost.pem";
pub const LOCALHOST_KEY_FILE: &str = "localhost-key.pem";
/// The names the `server.tls: auto` certificate is valid for.
pub const LOCALHOST_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// CA lifetime: 10 years.
const CA_DAYS: u64 = 3650;
/// Leaf lifetime: 397 days, the most browsers and Apple's TLS stack accept.
const LEAF_DAYS: u64 = 397;
/// A stored leaf is replaced when it would no longer verify this far ahead.
const RENEW_AHEAD: Duration = Duration::from_secs(30 * 24 * 3600);

/// What went wrong with certificates or keys.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Pem { path: PathBuf, message: String },
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS config: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("no platform data directory for the local CA; set server.ca_dir")]
    NoDataDir,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The directory of the local CA: `server.ca_dir`, else `<data dir>/relay/ca`.
pub fn ca_dir(cfg: &Config) -> Result<PathBuf, TlsError> {
    match &cfg.server.ca_dir {
        Some(d) => Ok(d.clone()),
        None => dirs::data_dir()
            .map(|d| d.join("relay").join("ca"))
            .ok_or(TlsError::NoDataDir),
    }
}

/// The rustls crypto provider relay uses everywhere (ring).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate chain and its key, ready for a rustls config.
pub struct CertifiedKey {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

/// relay's local certificate authority.
pub struct LocalCa {
    dir: PathBuf,
    cert: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCa").field("dir", &self.dir).finish()
    }
}

impl LocalCa {
    /// Opens the CA in `dir`, or makes one there (directory 0700, files 0600) when `ca.pem` or
    /// `ca-key.pem` is missing. Blocking.
    pub fn load_or_create(dir: &Path) -> Result<LocalCa, TlsError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        if cert_path.exists() && key_path.exists() {
            let key_pem = fs::read_to_string(&key_path).map_err(io(&key_path))?;
            let key = KeyPair::from_pem(&key_pem).map_err(|e| TlsError::Pem {
                path: key_path.clone(),
                message: format!("not a private key: {e}"),
            })?;
            let cert = CertificateDer::from_pem_file(&cert_path).map_err(|e| TlsError::Pem {
                path: cert_path.clone(),
                message: format!("not a PEM certificate: {e}"),
            })?;
            // The issuer is rebuilt from the same deterministic parameters the CA was made with
            // (its name derives from its key), so no certificate parsing is needed.
            let issuer = Issuer::new(ca_params(&key, None)?, key);
            return Ok(LocalCa {
                dir: dir.to_path_buf(),
                cert,
                issuer,
            });
        }
        create_private_dir(dir)?;
        let key = KeyPair::generate()?;
        let params = ca_params(&key, Some(CA_DAYS))?;
        let cert = params.self_signed(&key)?;
        write_private(&key_path, key.serialize_pem().as_bytes())?;
        write_private(&cert_path, cert.pem().as_bytes())?;
        tracing::info!(path = %cert_path.display(), "created relay's local CA");
        Ok(LocalCa {
            dir: dir.to_path_buf(),
            cert: cert.der().clone(),
            issuer: Issuer::new(params, key),
        })
    }

    /// `ca.pem`: the file clients trust.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join(CA_CERT_FILE)
    }

    /// The CA certificate (DER).
    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// A new leaf for `names` (DNS names or IP addresses), signed by this CA, valid from a day ago
    /// for [`LEAF_DAYS`]. The chain is the leaf, then the CA.
    pub fn issue(&self, names: &[&str]) -> Result<(CertifiedKey, String, String), TlsError> {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("relay"),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, LEAF_DAYS);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let key_der = PrivateKeyDer::try_from(key.serialize_der()).map_err(|m| TlsError::Pem {
            path: PathBuf::from("<generated>"),
            message: m.to_string(),
        })?;
        Ok((
            CertifiedKey {
                chain: vec![cert.der().clone(), self.cert.clone()],
                key: key_der,
            },
            cert.pem(),
            key.serialize_pem(),
        ))
    }

    /// The `server.tls: auto` certificate: read from the CA directory when it is there and still
    /// verifies against this CA for [`RENEW_AHEAD`]; otherwise made, stored (0600) and returned.
    pub fn localhost(&self) -> Result<CertifiedKey, TlsError> {
        let cert_path = self.dir.join(LOCALHOST_CERT_FILE);
        let key_path = self.dir.join(LOCALHOST_KEY_FILE);
        if let (Ok(chain), Ok(key)) = (
            crate::config::tls::read_cert_chain(&cert_path),
            crate::config::tls::read_private_key(&key_path),
        ) {
            if self.verifies(&chain, "localhost") {
                let mut chain = chain;
                chain.truncate(1);
                chain.push(self.cert.clone());
                return Ok(CertifiedKey { chain, key });
            }
            tracing::info!(path = %cert_path.display(), "replacing the localhost certificate (expiring, or not signed by this CA)");
        }
        let (ck, cert_pem, key_pem) = self.issue(&LOCALHOST_NAMES)?;
        write_private(&key_path, key_pem.as_bytes())?;
        write_private(&cert_path, cert_pem.as_bytes())?;
        Ok(ck)
    }

    /// True when `chain[0]` verifies against this CA for `name` now and [`RENEW_AHEAD`] from now.
    fn verifies(&self, chain: &[CertificateDer<'static>], name: &str) -> bool {
        let Some((leaf, rest)) = chain.split_first() else {
            return false;
        };
        let mut roots = rustls::RootCertStore::empty();
        if roots.add(self.cert.clone()).is_err() {
            return false;
        }
        let Ok(verifier) = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build() else {
            return false;
        };
        let Ok(server_name) = ServerName::try_from(name.to_string()) else {
            return false;
        };
        let ahead = SystemTime::now() + RENEW_AHEAD;
        [SystemTime::now(), ahead].into_iter().all(|t| {
            let t = UnixTime::since_unix_epoch(t.duration_since(UNIX_EPOCH).unwrap_or_default());
            verifier
                .verify_server_cert(leaf, rest, &server_name, &[], t)
                .is_ok()
        })
    }
}

use rustls::client::danger::ServerCertVerifier as _;

/// The CA's parameters. Its name carries a short hash of its public key, so every relay's CA has
/// its own name and the issuer can be rebuilt from the key alone. `days: None` when only the
/// issuer is needed (validity does not matter then).
fn ca_params(key: &KeyPair, days: Option<u64>) -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let id = blake3::hash(key.public_key_raw()).to_hex();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "relay");
    dn.push(
        DnType::CommonName,
        format!("relay local CA {}", &id.as_str()[..12]),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    if let Some(days) = days {
        set_validity(&mut params, days);
    }
    Ok(params)
}

/// Valid from a day ago (clock skew) to `days` from now.
fn set_validity(params: &mut CertificateParams, days: u64) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        / 86_400;
    let (y, m, d) = date(now.saturating_sub(1));
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = date(now + days);
    params.not_after = rcgen::date_time_ymd(y, m, d);
}

/// The date `days` after 1970-01-01 as (year, month, day) (Howard Hinnant's civil_from_days).
fn date(days: u64) -> (i32, u8, u8) {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let y = (yoe + era * 400 + i64::from(m <= 2)) as i32;
    (y, m, d)
}

/// Creates `dir` (and parents) with mode 0700 on Unix.
fn create_private_dir(dir: &Path) -> Result<(), TlsError> {
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir).map_err(io(dir))
}

/// Writes `bytes` to `path` with mode 0600 (on Unix), through a temporary file renamed into place
/// so a reader never sees half a key.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))
}

/// The system's CA bundles, in the places Linux distributions, macOS and Alpine keep them.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// The trust bundle file for `SSL_CERT_FILE` / `REQUESTS_CA_BUNDLE`, which replace a client's
/// default roots: `bundle.pem` in the CA directory, the system bundle followed by relay's CA,
/// rewritten on each call. `None` when no system bundle is found (then only `ca.pem` can be given).
/// Blocking.
pub fn trust_bundle(ca: &LocalCa) -> Result<Option<PathBuf>, TlsError> {
    let Some(system) = SYSTEM_BUNDLES.iter().map(Path::new).find(|p| p.is_file()) else {
        return Ok(None);
    };
    let mut bundle = fs::read(system).map_err(io(system))?;
    if !bundle.ends_with(b"\n") {
        bundle.push(b'\n');
    }
    let ca_path = ca.cert_path();
    bundle.extend(fs::read(&ca_path).map_err(io(&ca_path))?);
    let path = ca.dir.join("bundle.pem");
    write_private(&path, &bundle)?;
    Ok(Some(path))
}

/// A rustls server config for `ck`, offering HTTP/2 and HTTP/1.1 by ALPN.
pub fn server_config(ck: CertifiedKey) -> Result<Arc<ServerConfig>, TlsError> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(ck.chain, ck.key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The acceptor for the config's `server.tls` (`None` when off), with the local CA when `auto`
/// (made on first use). Blocking.
pub fn acceptor(cfg: &Config) -> Result<Option<tokio_rustls::TlsAcceptor>, TlsError> {
    let ck = match &cfg.server.tls {
        ServerTls::Off => return Ok(None),
        ServerTls::Auto => LocalCa::load_or_create(&ca_dir(cfg)?)?.localhost()?,
        ServerTls::Files { cert, key } => CertifiedKey {
            chain: crate::config::tls::read_cert_chain(cert).map_err(|message| TlsError::Pem {
                path: cert.clone(),
                message,
            })?,
            key: crate::config::tls::read_private_key(key).map_err(|message| TlsError::Pem {
                path: key.clone(),
                message,
            })?,
        },
    };
    Ok(Some(tokio_rustls::TlsAcceptor::from(server_config(ck)?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(date(0), (1970, 1, 1));
        assert_eq!(date(59), (1970, 3, 1));
        assert_eq!(date(11_016), (2000, 2, 29));
        assert_eq!(date(20_454), (2026, 1, 1));
    }

    #[test]
    fn ca_is_made_once_and_signs_verifiable_leaves() {
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::load_or_create(dir.path()).unwrap();
        let pem = fs::read(ca.cert_path()).unwrap();
        let again = LocalCa::load_or_create(dir.path()).unwrap();
        assert_eq!(again.cert(), ca.cert());
        assert_eq!(fs::read(again.cert_path()).unwrap(), pem);
        // A leaf issued by the reloaded CA verifies against the original certificate.
        let (leaf, _, _) = again.issue(&["api.openai.com"]).unwrap();
        assert!(ca.verifies(&leaf.chain, "api.openai.com"));
        assert!(!ca.verifies(&leaf.chain, "api.anthropic.com"));
        // ... and not against another CA.
        let other = tempfile::tempdir().unwrap();
        let other = LocalCa::load_or_create(other.path()).unwrap();
        assert!(!other.verifies(&leaf.chain, "api.openai.com"));
    }

    #[test]
    fn ip_names_become_ip_sans() {
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::load_or_create(dir.path()).unwrap();
        let leaf = ca.localhost().unwrap();
        for name in LOCALHOST_NAMES {
            assert!(ca.verifies(&leaf.chain, name), "{name}");
        }
    }
}
