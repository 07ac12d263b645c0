//! The HTTP side: the page, the WebSocket upgrade, a room snapshot, and shutdown. The library
//! takes the listener and the shutdown future as arguments; only the binary parses flags.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State, WebSocketUpgrade};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt as _;
use confab_actors::{Engine, EngineError};
use confab_engine::{RoomError, SendRate};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::close::{http_refusal, too_many_connections};
use super::connection::{self, Format};
use super::{json, page};
use crate::grpc::auth::{Authenticator, Caller};
use crate::grpc::convert;
use crate::grpc::rate::SendLimiter;
use crate::grpc::status::ApiError;

/// Largest WebSocket message a client may send, in bytes (`--ws-frame-bytes-max`). Room for a
/// message body at the default `--message-bytes-max` (64 KiB) even when JSON escapes every
/// character of it, plus the frame's other fields. A bigger one closes the connection with 1009.
pub const WS_FRAME_BYTES_MAX: usize = 512 * 1024;

/// WebSocket connections open at once (`--ws-connections-max`); more are refused with HTTP 503
/// before the upgrade. Each one holds a session actor and its queues.
pub const WS_CONNECTIONS_MAX: usize = 10_000;

/// The WebSocket transport's own limits (the engine's limits apply as for gRPC) and who may
/// connect.
#[derive(Debug, Clone)]
pub struct WsConfig {
    /// See [`WS_FRAME_BYTES_MAX`].
    pub frame_bytes_max: usize,
    /// See [`WS_CONNECTIONS_MAX`].
    pub connections_max: usize,
    /// Each connection's session posts are held to this rate, like a gRPC `Session`'s.
    pub send_rate: SendRate,
    /// The server's tokens (`--tokens`): with them, `/ws` and `/rooms` need `?token=`, and the
    /// session's user is the token's user, under the gRPC identity rule.
    pub auth: Authenticator,
}

impl Default for WsConfig {
    fn default() -> Self {
        Self {
            frame_bytes_max: WS_FRAME_BYTES_MAX,
            connections_max: WS_CONNECTIONS_MAX,
            send_rate: SendRate::default(),
            auth: Authenticator::default(),
        }
    }
}

/// What every request handler shares.
struct Shared {
    engine: Engine,
    config: WsConfig,
    /// One permit per open connection, so the limit holds without counting by hand.
    slots: Arc<Semaphore>,
    /// Hands each session its own send-rate bucket (`config.send_rate`) on one clock.
    limiter: SendLimiter,
    /// Cancelled when shutdown starts: every session closes with 1001 (going away).
    sessions_end: CancellationToken,
    /// Upgraded connections run outside the HTTP server's own bookkeeping; this lets
    /// [`serve`] wait for them to finish closing.
    sessions: TaskTracker,
}

/// Serves the page and the WebSocket transport on `listener` until `shutdown` completes. Then
/// it stops accepting, closes every WebSocket with 1001 (going away), and returns once they
/// are closed (bound the wait with a timeout around this future).
pub async fn serve(
    listener: TcpListener,
    engine: Engine,
    config: WsConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(config.connections_max));
    let limiter = SendLimiter::new(config.send_rate);
    let shared = Arc::new(Shared {
        engine,
        config,
        slots,
        limiter,
        sessions_end: CancellationToken::new(),
        sessions: TaskTracker::new(),
    });
    let router = Router::new()
        .route("/", get(page::index))
        .route("/app.js", get(page::script))
        .route("/ws", get(connect))
        .route("/rooms/{room}", get(room_info))
        .with_state(Arc::clone(&shared));
    // Chat frames are small and interactive: send them at once instead of batching (Nagle).
    let listener = listener.tap_io(|stream| {
        let _ = stream.set_nodelay(true);
    });
    let sessions_end = shared.sessions_end.clone();
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            shutdown.await;
            sessions_end.cancel();
        })
        .await;
    shared.sessions.close();
    shared.sessions.wait().await;
    served
}

/// The query of `GET /ws`.
#[derive(Debug, Deserialize)]
struct ConnectQuery {
    /// The session's user, as the gRPC Session's `user` metadata key.
    user: Option<String>,
    /// `binary` (default) or `json`.
    format: Option<String>,
    /// The bearer token, on a server with `--tokens` (a browser cannot set headers here).
    token: Option<String>,
}

/// `GET /ws?user=NAME&format=json|binary`: upgrades to a session.
async fn connect(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<ConnectQuery>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let identified = shared.config.auth.authenticate_token(query.token.as_deref()).and_then(|caller| match caller {
        Caller::Anyone => convert::user(query.user.as_deref().unwrap_or(convert::DEFAULT_USER)),
        caller => caller.user(query.user.as_deref().unwrap_or_default(), "user"),
    });
    let user = match identified {
        Ok(user) => user,
        Err(error) => return http_refusal(error),
    };
    let format = match Format::parse(query.format.as_deref()) {
        Ok(format) => format,
        Err(error) => return http_refusal(error),
    };
    if shared.sessions_end.is_cancelled() {
        return http_refusal(ApiError::ShuttingDown);
    }
    let Ok(permit) = Arc::clone(&shared.slots).try_acquire_owned() else {
        return too_many_connections(shared.config.connections_max);
    };
    let frame_bytes_max = shared.config.frame_bytes_max;
    let rate = shared.limiter.session();
    upgrade.max_message_size(frame_bytes_max).max_frame_size(frame_bytes_max).on_upgrade(move |socket| {
        let (engine, sessions_end) = (shared.engine.clone(), shared.sessions_end.clone());
        shared.sessions.track_future(async move {
            connection::run(socket, engine, user, format, frame_bytes_max, rate, sessions_end).await;
            drop(permit);
        })
    })
}

/// The query of `GET /rooms/{room}`.
#[derive(Debug, Deserialize)]
struct RoomQuery {
    /// The bearer token, on a server with `--tokens`.
    token: Option<String>,
}

/// `GET /rooms/{room}`: the room's snapshot as JSON, so a page can show who is present.
async fn room_info(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    Query(query): Query<RoomQuery>,
) -> Response {
    if let Err(error) = shared.config.auth.authenticate_token(query.token.as_deref()) {
        return http_refusal(error);
    }
    let room = match convert::room(&name) {
        Ok(room) => room,
        Err(error) => return http_refusal(error),
    };
    let info = match shared.engine.room(&room).await {
        Ok(Some(info)) => json::RoomInfo::from(convert::room_info(&info)),
        Ok(None) => return http_refusal(EngineError::Room(RoomError::NotFound).into()),
        Err(error) => return http_refusal(error.into()),
    };
    match serde_json::to_string(&info) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(error) => http_refusal(ApiError::Malformed(format!("room snapshot: {error}"))),
    }
}
