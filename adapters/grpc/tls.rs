//! TLS for the server (`--tls-cert`, `--tls-key`), on the gRPC port and the web port: PEM
//! files checked at start-up, so a wrong path or content stops the server with the flag named,
//! before it listens.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls;

/// The certificate chain and key files could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read.
    #[error("{flag} {}: cannot read it: {source}", .path.display())]
    Read {
        /// `--tls-cert` or `--tls-key`.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file does not hold what it should.
    #[error("{flag} {}: {reason}", .path.display())]
    Content {
        /// `--tls-cert` or `--tls-key`.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Both files parse but do not make a usable identity (a key of another certificate, …).
    #[error("--tls-cert/--tls-key: {0}")]
    Identity(String),
}

/// The gRPC port's TLS configuration (HTTP/2 over rustls with the ring provider, ALPN `h2`)
/// from a PEM certificate chain (leaf first) and a PEM private key (PKCS#8, PKCS#1 or SEC1).
/// rustls matches the key to the certificate here, so a mismatch is a start-up error.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    rustls_config(cert, key, b"h2")
}

/// The web port's TLS configuration (HTTP/1.1, ALPN `http/1.1`) from the same files.
pub fn web_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    rustls_config(cert, key, b"http/1.1")
}

fn rustls_config(cert: &Path, key: &Path, alpn: &[u8]) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let files = PemFiles::read(cert, key)?;
    let identity = |error: rustls::Error| TlsError::Identity(error.to_string());
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(identity)?
        .with_no_client_auth()
        .with_single_cert(files.certificates, files.key)
        .map_err(identity)?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}

/// The two PEM files, parsed.
struct PemFiles {
    certificates: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl PemFiles {
    fn read(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let read = |flag, path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read { flag, path: path.to_owned(), source })
        };
        let cert_pem = read("--tls-cert", cert)?;
        let key_pem = read("--tls-key", key)?;
        let content = |flag, path: &Path, reason: String| TlsError::Content { flag, path: path.to_owned(), reason };
        let certificates = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| content("--tls-cert", cert, format!("not a PEM certificate chain: {error}")))?;
        if certificates.is_empty() {
            return Err(content("--tls-cert", cert, "no PEM certificate (-----BEGIN CERTIFICATE-----) in it".into()));
        }
        let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|error| content("--tls-key", key, format!("no usable PEM private key in it: {error}")))?;
        Ok(Self { certificates, key: key_der })
    }
}
