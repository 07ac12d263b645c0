//! Serving both services on one listener. The library takes the listener and the shutdown
//! future as arguments; only the binary parses flags and waits for signals.

use std::future::Future;

use confab_actors::Engine;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use super::chat_service::SeedChat;
use super::confab_service::ConfabChat;
use super::proto::{chat::chat_service_server::ChatServiceServer, confab_v1::chat_server::ChatServer};

/// Serves `confab.v1.Chat` and `chat.ChatService` on `listener` until `shutdown` completes.
/// Then it stops accepting, ends every open stream with UNAVAILABLE, and returns once the
/// in-flight calls are done (bound the wait with a timeout around this future).
pub async fn serve(
    listener: TcpListener,
    engine: Engine,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let streams_end = CancellationToken::new();
    let confab = ChatServer::new(ConfabChat::new(engine.clone(), streams_end.clone()));
    let seed = ChatServiceServer::new(SeedChat::new(engine, streams_end.clone()));
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    Server::builder()
        .add_service(confab)
        .add_service(seed)
        .serve_with_incoming_shutdown(incoming, async move {
            shutdown.await;
            streams_end.cancel();
        })
        .await
}
