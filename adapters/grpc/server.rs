//! Serving both services on one listener. The library takes the listener and the shutdown
//! future as arguments; only the binary parses flags and waits for signals.
//!
//! Besides `confab.v1.Chat` and `chat.ChatService`, the same port serves operations: health
//! ([`health`](super::health)) and reflection ([`reflection`]), and every
//! call passes the [`observe`](super::observe) layer (metrics and logs). The two chat services
//! sit behind the token check ([`auth`](super::auth)); health and reflection do not, so load
//! balancers and tools can use them without a token.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use confab_actors::Engine;
use confab_engine::SendRate;
use confab_engine::limits::STREAMS_PER_CONNECTION_MAX;
use futures::{Stream, StreamExt as _};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tracing::{debug, info};

use super::cancel::CancelLayer;
use super::chat_service::SeedChat;
use super::confab_service::ConfabChat;
use super::deadline::DeadlineLayer;
use super::health::ServerHealth;
use super::idle::{GRPC_CONNECTION_IDLE, GrpcConnectInfo, IdleClose, IdleLayer};
use super::observe::ObserveLayer;
use super::reflection;
use super::shared_bytes::{confab_service, seed_service};
use super::shutdown::EndAtShutdown;
use crate::api::auth::{Authenticator, Tokens};
use crate::api::jwt::JwtVerifier;
use crate::api::rate::SendLimiter;
use crate::metrics::RpcMetrics;
use crate::net::{Acceptor, ConnectionLimits, Guarded, HTTP2_PREFACE_BYTES, Preface};

/// The server pings a connection (HTTP/2 PING) after this long without hearing from it
/// (`--http2-keepalive-interval`), to find clients that froze or vanished.
pub const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// A connection that does not acknowledge a keepalive ping within this long is closed
/// (`--http2-keepalive-timeout`; grpc-go's default): its calls end, and a session's presence
/// with them.
pub const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Why serving failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The transport failed (accepting, serving a connection, a bad TLS configuration).
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
    /// The descriptors compiled in for reflection do not decode (a build defect).
    #[error("server reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// How the server protects itself (who may call, over what, and how much) and where it counts
/// its calls.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Bearer tokens every chat call must carry; `None` serves anyone (an open server).
    pub tokens: Option<Arc<Tokens>>,
    /// JWTs every chat call may carry instead ([`crate::api::jwt`]); with neither this nor `tokens`
    /// the server is open.
    pub jwt: Option<Arc<JwtVerifier>>,
    /// TLS on the listener ([`super::tls::server_config`]); `None` serves plaintext HTTP/2.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// HTTP/2 streams (calls) open at once on one connection.
    pub streams_per_connection_max: u32,
    /// Sends per second per sender (the user, or the connection on an open server), over
    /// unary sends, session posts, seed messages and uploads (unless `limiter` is given).
    pub send_rate: SendRate,
    /// The rate table (sends, typing, joins) shared with the web port, so a user's posts over
    /// both count against one bucket; `None` makes one from `send_rate`.
    pub limiter: Option<SendLimiter>,
    /// Where every call is counted (export it with [`crate::metrics`]).
    pub metrics: RpcMetrics,
    /// Connection caps, TCP keepalive and the handshake deadline of the port.
    pub connections: ConnectionLimits,
    /// See [`HTTP2_KEEPALIVE_INTERVAL`].
    pub http2_keepalive_interval: Duration,
    /// See [`HTTP2_KEEPALIVE_TIMEOUT`].
    pub http2_keepalive_timeout: Duration,
    /// See [`GRPC_CONNECTION_IDLE`].
    pub connection_idle: Duration,
}

impl Default for ServerOptions {
    /// Open, plaintext, the default limits, and counters nobody exports.
    fn default() -> Self {
        Self {
            tokens: None,
            jwt: None,
            tls: None,
            streams_per_connection_max: STREAMS_PER_CONNECTION_MAX,
            send_rate: SendRate::default(),
            limiter: None,
            metrics: RpcMetrics::default(),
            connections: ConnectionLimits::default(),
            http2_keepalive_interval: HTTP2_KEEPALIVE_INTERVAL,
            http2_keepalive_timeout: HTTP2_KEEPALIVE_TIMEOUT,
            connection_idle: GRPC_CONNECTION_IDLE,
        }
    }
}

/// Serves on `listener` until `shutdown` completes, with the default [`ServerOptions`] (open,
/// plaintext). See [`serve_with`].
pub async fn serve(
    listener: TcpListener,
    engine: Engine,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    serve_with(listener, engine, ServerOptions::default(), shutdown).await
}

/// [`serve`], counting every call in `metrics`.
pub async fn serve_observed(
    listener: TcpListener,
    engine: Engine,
    metrics: RpcMetrics,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    serve_with(listener, engine, ServerOptions { metrics, ..ServerOptions::default() }, shutdown).await
}

/// Serves `confab.v1.Chat`, `chat.ChatService`, health and reflection on `listener` until
/// `shutdown` completes, then returns once the in-flight calls are done (bound the wait with a
/// timeout around this future).
///
/// Shutdown runs in this order: health turns NOT_SERVING (watchers are told), the listener
/// stops accepting, open streams end with UNAVAILABLE, in-flight unary calls finish.
pub async fn serve_with(
    listener: TcpListener,
    engine: Engine,
    options: ServerOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let streams_end = CancellationToken::new();
    let limiter = options.limiter.clone().unwrap_or_else(|| SendLimiter::new(options.send_rate));
    let auth = Authenticator::new(options.tokens).with_jwt(options.jwt);
    let confab = ConfabChat::new(engine.clone(), streams_end.clone()).with_limiter(limiter.clone());
    let seed = SeedChat::new(engine.clone(), streams_end.clone()).with_limiter(limiter);
    let (health, health_service) = ServerHealth::serving(&streams_end, engine).await;
    let acceptor = Acceptor::new(listener, "grpc", options.connections.clone());
    // The acceptor never fails (it backs off and logs), so tonic never sees an accept error:
    // tonic's own loop retries those at once, which spins on EMFILE.
    let idle = options.connection_idle;
    let incoming = match options.tls {
        None => plaintext_connections(acceptor).boxed(),
        Some(tls) => tls_connections(acceptor, TlsAcceptor::from(tls)).boxed(),
    };
    let incoming = incoming.map(move |connection| connection.map(|connection| IdleClose::new(connection, idle)));
    let builder = Server::builder()
        .max_concurrent_streams(options.streams_per_connection_max)
        .http2_keepalive_interval(Some(options.http2_keepalive_interval))
        .http2_keepalive_timeout(Some(options.http2_keepalive_timeout));
    builder
        .layer(IdleLayer)
        .layer(ObserveLayer::new(options.metrics))
        .layer(DeadlineLayer)
        .layer(CancelLayer)
        .add_service(confab_service(confab, auth.clone()))
        .add_service(seed_service(seed, auth))
        .add_service(health_service)
        .add_service(EndAtShutdown::new(reflection::v1()?, &streams_end))
        .add_service(EndAtShutdown::new(reflection::v1alpha()?, &streams_end))
        .serve_with_incoming_shutdown(incoming, async move {
            shutdown.await;
            health.not_serving().await;
            info!("health: NOT_SERVING; ending open streams with UNAVAILABLE");
            streams_end.cancel();
        })
        .await?;
    Ok(())
}

/// A gRPC connection as tonic serves it: plaintext or TLS, held to its handshake deadline
/// until the HTTP/2 preface came (TLS is done here rather than by tonic, so the preface
/// deadline can sit above it: a client that finishes TLS and then says nothing is closed too).
pub type GrpcConnection = Preface<Either<Guarded, TlsStream<Guarded>>>;

/// A gRPC connection that is closed once it carries no call for `--grpc-connection-idle`.
pub type IdleGrpcConnection = IdleClose<GrpcConnection>;

/// Plaintext connections, each to send its preface by its handshake deadline.
fn plaintext_connections(acceptor: Acceptor) -> impl Stream<Item = io::Result<GrpcConnection>> + Send {
    futures::stream::unfold(acceptor, |mut acceptor| async move {
        let connection = acceptor.accept().await;
        let deadline = connection.handshake_deadline();
        Some((Ok(Preface::new(Either::Left(connection), HTTP2_PREFACE_BYTES, deadline)), acceptor))
    })
}

/// TLS connections, each to finish its handshake and send its preface by its handshake
/// deadline. Handshakes run in tasks of their own, so a slow one delays no other connection;
/// the connection caps bound how many run at once.
fn tls_connections(mut acceptor: Acceptor, tls: TlsAcceptor) -> impl Stream<Item = io::Result<GrpcConnection>> + Send {
    let (ready, connections) = mpsc::channel(TLS_READY_LEN_MAX);
    tokio::spawn(async move {
        loop {
            // Stops (and drops the listener) once the server no longer takes connections.
            let connection = tokio::select! {
                _ = ready.closed() => return,
                connection = acceptor.accept() => connection,
            };
            let (tls, ready) = (tls.clone(), ready.clone());
            tokio::spawn(async move {
                let (peer, deadline) = (connection.peer(), connection.handshake_deadline());
                match tokio::time::timeout_at(deadline, tls.accept(connection)).await {
                    Ok(Ok(stream)) => {
                        let _ =
                            ready.send(Ok(Preface::new(Either::Right(stream), HTTP2_PREFACE_BYTES, deadline))).await;
                    }
                    // A plaintext client on a TLS port, a scanner, a client that distrusts us.
                    Ok(Err(error)) => debug!(%peer, %error, "TLS handshake failed"),
                    Err(_) => debug!(%peer, "TLS handshake did not finish within --handshake-timeout"),
                }
            });
        }
    });
    ReceiverStream::new(connections)
}

/// TLS connections whose handshake is done, waiting for tonic to take them. Small: tonic takes
/// each at once; this only decouples the handshake tasks from its accept loop.
const TLS_READY_LEN_MAX: usize = 64;

/// What tonic records about a connection: its call count, and the addresses that
/// [`IdleLayer`] hands on as a [`TcpConnectInfo`] (`Request::remote_addr`, the per-connection
/// send rate), the same as for a bare `TcpStream`, TLS or not.
impl Connected for IdleGrpcConnection {
    type ConnectInfo = GrpcConnectInfo;

    fn connect_info(&self) -> GrpcConnectInfo {
        let tcp = match self.get_ref().get_ref() {
            Either::Left(plain) => plain,
            Either::Right(tls) => tls.get_ref().0,
        };
        self.connect_info_with(TcpConnectInfo { local_addr: tcp.local(), remote_addr: Some(tcp.peer()) })
    }
}
