//! TLS for the server (`--tls-cert`, `--tls-key`), on the gRPC port and the web port: PEM
//! files checked at start-up, so a wrong path or content stops the server with the flag named,
//! before it listens.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls;
use tonic::transport::{Identity, Server, ServerTlsConfig};

/// A client that opened a connection has this long to finish the TLS handshake. Handshakes
/// run beside the accept loop, so a stalled one delays nobody; this bounds what it holds. The
/// server sets it from `--handshake-timeout` ([`crate::net::HANDSHAKE_TIMEOUT`]).
pub const TLS_HANDSHAKE_TIMEOUT: Duration = crate::net::HANDSHAKE_TIMEOUT;

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

/// A server TLS configuration from a PEM certificate chain (leaf first) and a PEM private key
/// (PKCS#8, PKCS#1 or SEC1).
pub fn server_config(cert: &Path, key: &Path) -> Result<ServerTlsConfig, TlsError> {
    let files = PemFiles::read(cert, key)?;
    let config = ServerTlsConfig::new()
        .identity(Identity::from_pem(files.cert_pem, files.key_pem))
        .timeout(TLS_HANDSHAKE_TIMEOUT);
    // tonic builds the acceptor here, which is where rustls matches the key to the certificate:
    // do it now, so a mismatch is a start-up error too.
    Server::builder().tls_config(config.clone()).map_err(|error| TlsError::Identity(error_chain(&error)))?;
    Ok(config)
}

/// The web port's TLS configuration (HTTP/1.1 over rustls with the ring provider, as the
/// gRPC port) from the same files as [`server_config`].
pub fn web_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let files = PemFiles::read(cert, key)?;
    let identity = |error: rustls::Error| TlsError::Identity(error.to_string());
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(identity)?
        .with_no_client_auth()
        .with_single_cert(files.certificates, files.key)
        .map_err(identity)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The two PEM files, read and parsed once.
struct PemFiles {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
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
        Ok(Self { cert_pem, key_pem, certificates, key: key_der })
    }
}

/// An error and its sources, joined: tonic's transport errors say little at the top level.
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
