//! Serving both services on one listener. The library takes the listener and the shutdown
//! future as arguments; only the binary parses flags and waits for signals.

use std::future::Future;
use std::sync::Arc;

use confab_actors::Engine;
use confab_engine::SendRate;
use confab_engine::limits::STREAMS_PER_CONNECTION_MAX;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Server, ServerTlsConfig};

use super::auth::{Authenticator, Tokens};
use super::cancel::CancelLayer;
use super::chat_service::SeedChat;
use super::confab_service::ConfabChat;
use super::deadline::DeadlineLayer;
use super::proto::{chat::chat_service_server::ChatServiceServer, confab_v1::chat_server::ChatServer};
use super::rate::SendLimiter;

/// How the server protects itself: who may call, over what, and how much.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Bearer tokens every call must carry; `None` serves anyone (an open server).
    pub tokens: Option<Arc<Tokens>>,
    /// TLS on the listener; `None` serves plaintext HTTP/2.
    pub tls: Option<ServerTlsConfig>,
    /// HTTP/2 streams (calls) open at once on one connection.
    pub streams_per_connection_max: u32,
    /// Sends per second per session, and per user or connection for unary sends.
    pub send_rate: SendRate,
}

impl Default for ServerOptions {
    /// Open, plaintext, and the default limits.
    fn default() -> Self {
        Self {
            tokens: None,
            tls: None,
            streams_per_connection_max: STREAMS_PER_CONNECTION_MAX,
            send_rate: SendRate::default(),
        }
    }
}

/// Serves `confab.v1.Chat` and `chat.ChatService` on `listener` until `shutdown` completes,
/// with the default [`ServerOptions`] (open, plaintext). See [`serve_with`].
pub async fn serve(
    listener: TcpListener,
    engine: Engine,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    serve_with(listener, engine, ServerOptions::default(), shutdown).await
}

/// Serves `confab.v1.Chat` and `chat.ChatService` on `listener` until `shutdown` completes.
/// Then it stops accepting, ends every open stream with UNAVAILABLE, and returns once the
/// in-flight calls are done (bound the wait with a timeout around this future).
pub async fn serve_with(
    listener: TcpListener,
    engine: Engine,
    options: ServerOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let streams_end = CancellationToken::new();
    let limiter = SendLimiter::new(options.send_rate);
    let auth = Authenticator::new(options.tokens);
    let confab = ConfabChat::new(engine.clone(), streams_end.clone()).with_limiter(limiter.clone());
    let seed = SeedChat::new(engine, streams_end.clone()).with_limiter(limiter);
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut builder = Server::builder().max_concurrent_streams(options.streams_per_connection_max);
    if let Some(tls) = options.tls {
        builder = builder.tls_config(tls)?;
    }
    builder
        .layer(DeadlineLayer)
        .layer(CancelLayer)
        .add_service(ChatServer::with_interceptor(confab, auth.clone()))
        .add_service(ChatServiceServer::with_interceptor(seed, auth))
        .serve_with_incoming_shutdown(incoming, async move {
            shutdown.await;
            streams_end.cancel();
        })
        .await
}
