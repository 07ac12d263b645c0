//! Serving both services on one listener. The library takes the listener and the shutdown
//! future as arguments; only the binary parses flags and waits for signals.
//!
//! Besides `confab.v1.Chat` and `chat.ChatService`, the same port serves operations: health
//! ([`health`](super::health)) and reflection ([`reflection`]), and every
//! call passes the [`observe`](super::observe) layer (metrics and logs).

use std::future::Future;

use confab_actors::Engine;
use futures::StreamExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tracing::{debug, info, warn};

use super::chat_service::SeedChat;
use super::confab_service::ConfabChat;
use super::health::ServerHealth;
use super::observe::ObserveLayer;
use super::proto::{chat::chat_service_server::ChatServiceServer, confab_v1::chat_server::ChatServer};
use super::reflection;
use super::shutdown::EndAtShutdown;
use crate::metrics::RpcMetrics;

/// Why serving failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The transport failed (accepting, serving a connection).
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
    /// The descriptors compiled in for reflection do not decode (a build defect).
    #[error("server reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// Serves `confab.v1.Chat` and `chat.ChatService` on `listener` until `shutdown` completes.
/// Then it stops accepting, ends every open stream with UNAVAILABLE, and returns once the
/// in-flight calls are done (bound the wait with a timeout around this future).
///
/// Calls are counted in a [`RpcMetrics`] of its own; use [`serve_observed`] to export them.
pub async fn serve(
    listener: TcpListener,
    engine: Engine,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    serve_observed(listener, engine, RpcMetrics::default(), shutdown).await
}

/// [`serve`], counting every call in `metrics`.
///
/// Shutdown runs in this order: health turns NOT_SERVING (watchers are told), the listener
/// stops accepting, open streams end with UNAVAILABLE, in-flight unary calls finish.
pub async fn serve_observed(
    listener: TcpListener,
    engine: Engine,
    metrics: RpcMetrics,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let streams_end = CancellationToken::new();
    let confab = ChatServer::new(ConfabChat::new(engine.clone(), streams_end.clone()));
    let seed = ChatServiceServer::new(SeedChat::new(engine, streams_end.clone()));
    let (health, health_service) = ServerHealth::serving(&streams_end).await;
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true)).inspect(|accepted| match accepted {
        Ok(stream) => debug!(peer = stream.peer_addr().ok().map(display), "connection accepted"),
        Err(error) => warn!(%error, "accepting a connection failed"),
    });
    Server::builder()
        .layer(ObserveLayer::new(metrics))
        .add_service(confab)
        .add_service(seed)
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
