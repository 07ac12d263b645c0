//! Connecting a client (`confab chat`, `confab bench`, tests) to a server that may want a bearer
//! token and TLS: `--token` (or `CONFAB_TOKEN`) adds `authorization: Bearer …` to every call,
//! `--tls-ca FILE` with an `https://` URL verifies the server against that CA certificate.

use std::path::PathBuf;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Status};

use super::auth::AUTHORIZATION;
use super::tls::error_chain;

/// A connection whose calls carry the bearer token, if any.
pub type ClientChannel = InterceptedService<Channel, BearerToken>;

/// How a client proves who it is and checks whom it talks to.
#[derive(Clone, Default)]
pub struct ClientSecurity {
    /// The bearer token (the server's `--tokens` file maps it to a user).
    pub token: Option<String>,
    /// The CA certificate (PEM) that signed the server's certificate; needs an `https://` URL.
    pub tls_ca: Option<PathBuf>,
}

impl std::fmt::Debug for ClientSecurity {
    /// Without the token itself: it is a secret, and options structs get logged.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSecurity")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("tls_ca", &self.tls_ca)
            .finish()
    }
}

/// The client could not be set up or could not connect. Each message names the flag to fix.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The options do not fit together or a value is invalid.
    #[error("{0}")]
    Options(String),
    /// The connection failed.
    #[error("--server {server}: cannot connect: {reason}")]
    Connect {
        /// The URL.
        server: String,
        /// Why, with the causes.
        reason: String,
    },
}

/// Adds `authorization: Bearer <token>` to every call (nothing without a token).
#[derive(Clone, Default)]
pub struct BearerToken {
    header: Option<MetadataValue<Ascii>>,
}

impl BearerToken {
    /// The interceptor for `token`.
    pub fn new(token: Option<&str>) -> Result<Self, ClientError> {
        let header = token
            .map(|token| {
                format!("Bearer {token}")
                    .parse()
                    .map_err(|_| ClientError::Options("--token: a token is printable ASCII without spaces".into()))
            })
            .transpose()?;
        Ok(Self { header })
    }
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BearerToken").field("set", &self.header.is_some()).finish()
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(header) = &self.header {
            request.metadata_mut().insert(AUTHORIZATION, header.clone());
        }
        Ok(request)
    }
}

/// The endpoint for `server` with `security`'s TLS settings, and the token interceptor.
pub fn endpoint(server: &str, security: &ClientSecurity) -> Result<(Endpoint, BearerToken), ClientError> {
    let token = BearerToken::new(security.token.as_deref())?;
    let endpoint = Endpoint::from_shared(server.to_owned())
        .map_err(|error| ClientError::Options(format!("--server {server}: not a URL: {error}")))?
        .tcp_nodelay(true);
    let https = server.starts_with("https://");
    let endpoint = match (&security.tls_ca, https) {
        (None, false) => endpoint,
        (None, true) => {
            return Err(ClientError::Options(format!(
                "--server {server}: an https:// server needs --tls-ca FILE (the CA certificate that signed it)"
            )));
        }
        (Some(_), false) => {
            return Err(ClientError::Options(format!("--tls-ca needs an https:// --server URL, not {server}")));
        }
        (Some(ca), true) => {
            let pem = std::fs::read(ca)
                .map_err(|error| ClientError::Options(format!("--tls-ca {}: cannot read it: {error}", ca.display())))?;
            let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
            endpoint
                .tls_config(tls)
                .map_err(|error| ClientError::Options(format!("--tls-ca {}: {}", ca.display(), error_chain(&error))))?
        }
    };
    Ok((endpoint, token))
}

/// Connects to `server`.
pub async fn connect(server: &str, security: &ClientSecurity) -> Result<ClientChannel, ClientError> {
    let (endpoint, token) = endpoint(server, security)?;
    let channel = endpoint
        .connect()
        .await
        .map_err(|error| ClientError::Connect { server: server.to_owned(), reason: error_chain(&error) })?;
    Ok(InterceptedService::new(channel, token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_goes_into_every_request() {
        let mut token = BearerToken::new(Some("abc-123")).expect("valid");
        let request = token.call(Request::new(())).expect("ok");
        assert_eq!(request.metadata().get(AUTHORIZATION).map(|v| v.to_str().ok()), Some(Some("Bearer abc-123")));
        let mut none = BearerToken::new(None).expect("valid");
        assert!(none.call(Request::new(())).expect("ok").metadata().get(AUTHORIZATION).is_none());
        assert!(BearerToken::new(Some("line\nbreak")).is_err());
    }

    #[test]
    fn tls_and_scheme_must_agree() {
        let with_ca = ClientSecurity { token: None, tls_ca: Some("/nonexistent/ca.pem".into()) };
        let error = endpoint("http://127.0.0.1:1", &with_ca).expect_err("http with a CA").to_string();
        assert!(error.contains("--tls-ca needs an https://"), "{error}");
        let error = endpoint("https://127.0.0.1:1", &ClientSecurity::default()).expect_err("no CA").to_string();
        assert!(error.contains("needs --tls-ca"), "{error}");
        let error = endpoint("https://127.0.0.1:1", &with_ca).expect_err("missing file").to_string();
        assert!(error.contains("--tls-ca /nonexistent/ca.pem: cannot read it"), "{error}");
        endpoint("http://127.0.0.1:1", &ClientSecurity::default()).expect("plain is fine");
    }
}
