//! Connecting to a server that may want a bearer token and TLS: a token adds
//! `authorization: Bearer …` to every call; a CA certificate with an `https://` URL verifies the
//! server against it. Shared by [`Client`](crate::Client) and by anyone who wants the plain
//! generated stubs ([`crate::proto`]) over the same kind of connection (`confab bench`, tests).

use std::path::PathBuf;
use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Status};

/// The metadata key of the bearer token (HTTP's `Authorization` header, lower case as HTTP/2
/// sends it).
pub const AUTHORIZATION: &str = "authorization";

/// How long establishing a connection (TCP, and TLS if any) may take before it counts as failed:
/// a server that does not answer must not hold a connect, or a reconnect, forever.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection whose calls carry the bearer token, if any.
pub type ClientChannel = InterceptedService<Channel, BearerToken>;

/// How a client proves who it is and checks whom it talks to.
///
/// ```
/// use confab_client::ClientSecurity;
///
/// let security = ClientSecurity::default().with_token("s3cret-token-0123").with_tls_ca("ca.pem");
/// assert!(format!("{security:?}").contains("<redacted>"), "the token is never printed");
/// ```
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct ClientSecurity {
    /// The bearer token (the server's `--tokens` file or a JWT maps it to a user).
    pub token: Option<String>,
    /// The CA certificate (PEM) that signed the server's certificate; needs an `https://` URL.
    pub tls_ca: Option<PathBuf>,
}

impl ClientSecurity {
    /// The same, with `token` sent as `authorization: Bearer <token>` on every call.
    pub fn with_token(self, token: impl Into<String>) -> Self {
        Self { token: Some(token.into()), ..self }
    }

    /// The same, verifying the server's certificate against the CA certificate in `path` (PEM).
    pub fn with_tls_ca(self, path: impl Into<PathBuf>) -> Self {
        Self { tls_ca: Some(path.into()), ..self }
    }
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

/// The client could not be set up or could not connect. Each message names what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The token cannot travel in an HTTP header.
    #[error("the token (--token) must be printable ASCII without spaces")]
    Token,
    /// The server address is not a URL.
    #[error("server {server}: not a URL")]
    Url {
        /// The address given.
        server: String,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
    /// An `https://` URL without a CA certificate to check the server against.
    #[error("server {server}: an https:// server needs a CA certificate (--tls-ca FILE) that signed it")]
    CaMissing {
        /// The URL.
        server: String,
    },
    /// A CA certificate with a plaintext URL: the certificate would silently go unused.
    #[error("a CA certificate (--tls-ca) needs an https:// server URL, not {server}")]
    PlaintextWithCa {
        /// The URL.
        server: String,
    },
    /// The CA certificate file cannot be read.
    #[error("CA certificate (--tls-ca) {}: cannot read it", .path.display())]
    ReadCa {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TLS settings were refused.
    #[error("CA certificate (--tls-ca) {}: unusable", .path.display())]
    Tls {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
    /// The connection failed (refused, timed out, TLS handshake failed, …).
    #[error("server {server}: cannot connect")]
    Connect {
        /// The URL.
        server: String,
        /// Why, with its causes.
        #[source]
        source: tonic::transport::Error,
    },
    /// The user name cannot travel in request metadata.
    #[error("user {user:?}: a user name here must be ASCII text")]
    User {
        /// The name given.
        user: String,
    },
    /// Connected, but the session could not be opened (a bad token, for instance).
    #[error("server {server}: no session")]
    Session {
        /// The URL.
        server: String,
        /// What went wrong.
        #[source]
        source: LinkError,
    },
}

/// Why a connection ended or could not be made ([`Event::Disconnected`](crate::Event::Disconnected)).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// No connection could be made.
    #[error("cannot connect")]
    Connect(#[source] tonic::transport::Error),
    /// The call ended with this status (UNAVAILABLE when the server stopped or died, …).
    #[error("the session call ended")]
    Status(#[source] Status),
    /// The server did not open the session in time.
    #[error("the server did not open the session within {0:?}")]
    Timeout(Duration),
    /// The server ended the session without being asked to.
    #[error("the server ended the session")]
    Ended,
}

impl LinkError {
    /// The status, if it is one that reconnecting cannot fix (a revoked token, a server that
    /// has no such call): the session ends instead of retrying it forever.
    pub(crate) fn into_permanent(self) -> Result<Status, LinkError> {
        use tonic::Code;
        match self {
            LinkError::Status(status)
                if matches!(
                    status.code(),
                    Code::Unauthenticated | Code::PermissionDenied | Code::InvalidArgument | Code::Unimplemented
                ) =>
            {
                Ok(status)
            }
            other => Err(other),
        }
    }
}

/// Adds `authorization: Bearer <token>` to every call (nothing without a token).
#[derive(Clone, Default)]
pub struct BearerToken {
    header: Option<MetadataValue<Ascii>>,
}

impl BearerToken {
    /// The interceptor for `token`.
    ///
    /// ```
    /// use confab_client::BearerToken;
    ///
    /// assert!(BearerToken::new(Some("abc-123")).is_ok());
    /// assert!(BearerToken::new(Some("line\nbreak")).is_err(), "not a header value");
    /// ```
    pub fn new(token: Option<&str>) -> Result<Self, ConnectError> {
        let header =
            token.map(|token| format!("Bearer {token}").parse().map_err(|_| ConnectError::Token)).transpose()?;
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
/// Nothing is connected yet, so callers can tune the endpoint first.
///
/// ```
/// use confab_client::{ClientSecurity, ConnectError, endpoint};
///
/// let (_endpoint, _token) = endpoint("http://127.0.0.1:50051", &ClientSecurity::default())?;
/// let refused = endpoint("https://127.0.0.1:50051", &ClientSecurity::default());
/// assert!(matches!(refused, Err(ConnectError::CaMissing { .. })));
/// # Ok::<(), ConnectError>(())
/// ```
pub fn endpoint(server: &str, security: &ClientSecurity) -> Result<(Endpoint, BearerToken), ConnectError> {
    let token = BearerToken::new(security.token.as_deref())?;
    let endpoint = Endpoint::from_shared(server.to_owned())
        .map_err(|source| ConnectError::Url { server: server.to_owned(), source })?
        .tcp_nodelay(true)
        .connect_timeout(CONNECT_TIMEOUT);
    let https = server.starts_with("https://");
    let endpoint = match (&security.tls_ca, https) {
        (None, false) => endpoint,
        (None, true) => return Err(ConnectError::CaMissing { server: server.to_owned() }),
        (Some(_), false) => return Err(ConnectError::PlaintextWithCa { server: server.to_owned() }),
        (Some(ca), true) => {
            let pem = std::fs::read(ca).map_err(|source| ConnectError::ReadCa { path: ca.clone(), source })?;
            let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
            endpoint.tls_config(tls).map_err(|source| ConnectError::Tls { path: ca.clone(), source })?
        }
    };
    Ok((endpoint, token))
}

/// Connects to `server`: a channel for the generated stubs in [`crate::proto`].
///
/// ```no_run
/// use confab_client::proto::confab_v1::{SendRequest, chat_client::ChatClient};
/// use confab_client::{ClientSecurity, connect};
///
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let channel = connect("http://127.0.0.1:50051", &ClientSecurity::default()).await?;
/// let mut chat = ChatClient::new(channel);
/// let request = SendRequest { room: "lobby".into(), body: "hello".into(), ..Default::default() };
/// let seq = chat.send(request).await?.into_inner().seq;
/// println!("sent as #{seq}");
/// # Ok(())
/// # }
/// ```
pub async fn connect(server: &str, security: &ClientSecurity) -> Result<ClientChannel, ConnectError> {
    let (endpoint, token) = endpoint(server, security)?;
    let channel =
        endpoint.connect().await.map_err(|source| ConnectError::Connect { server: server.to_owned(), source })?;
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
        assert!(matches!(BearerToken::new(Some("line\nbreak")), Err(ConnectError::Token)));
    }

    #[test]
    fn tls_and_scheme_must_agree() {
        let with_ca = ClientSecurity::default().with_tls_ca("/nonexistent/ca.pem");
        let error = endpoint("http://127.0.0.1:1", &with_ca).expect_err("http with a CA");
        assert!(matches!(error, ConnectError::PlaintextWithCa { .. }), "{error}");
        let error = endpoint("https://127.0.0.1:1", &ClientSecurity::default()).expect_err("no CA");
        assert!(error.to_string().contains("needs a CA certificate (--tls-ca FILE)"), "{error}");
        let error = endpoint("https://127.0.0.1:1", &with_ca).expect_err("missing file");
        assert!(error.to_string().contains("--tls-ca) /nonexistent/ca.pem: cannot read it"), "{error}");
        assert!(std::error::Error::source(&error).is_some(), "the io error is kept");
        endpoint("http://127.0.0.1:1", &ClientSecurity::default()).expect("plain is fine");
    }

    #[test]
    fn the_token_is_not_printed() {
        let security = ClientSecurity::default().with_token("very-secret-token");
        assert!(!format!("{security:?}").contains("very-secret"));
        let token = BearerToken::new(Some("very-secret-token")).expect("valid");
        assert!(!format!("{token:?}").contains("very-secret"));
    }
}
