//! The HTTP side: the page, the WebSocket upgrade, a room snapshot, and shutdown. The library
//! takes the listener and the shutdown future as arguments; only the binary parses flags.
//!
//! The server runs its own accept loop ([`crate::net::Acceptor`]: connection caps, accept
//! backoff, TCP keepalive) and serves each connection with hyper's HTTP/1, which gives what
//! `axum::serve` does not: a deadline for reading request headers, and TLS (rustls) when a
//! certificate is given. Every request's `Host` is checked first ([`access`]).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, Request, State, WebSocketUpgrade};
use axum::http::{HeaderMap, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use confab_actors::{Engine, EngineError};
use confab_engine::{RoomError, SendRate};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use super::access::{self, WS_PROTOCOL};
use super::close::{forbidden, http_refusal, too_many_connections};
use super::connection::{self, ConnectionOptions, Format};
use super::liveness::LivenessConfig;
use super::{json, page};
use crate::api::auth::{self, Authenticator};
use crate::api::convert;
use crate::api::error::ApiError;
use crate::api::permissions::RoomAction;
use crate::api::rate::SendLimiter;
use crate::net::{Acceptor, ConnectionLimits, Guarded};

/// Largest WebSocket message a client may send, in bytes (`--ws-frame-bytes-max`). Room for a
/// message body at the default `--message-bytes-max` (64 KiB) even when JSON escapes every
/// character of it, plus the frame's other fields. A bigger one closes the connection with 1009.
pub const WS_FRAME_BYTES_MAX: usize = 512 * 1024;

/// WebSocket connections open at once (`--ws-connections-max`); more are refused with HTTP 503
/// before the upgrade. Each one holds a session actor and its queues.
pub const WS_CONNECTIONS_MAX: usize = 10_000;

/// A client has this long to send a request's headers, counted from the connection's start
/// (or the previous response) (`--ws-header-read-timeout`); a half-sent request is closed.
pub const WS_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The WebSocket transport's own limits (the engine's limits apply as for gRPC) and who may
/// connect.
#[derive(Debug, Clone)]
pub struct WsConfig {
    /// See [`WS_FRAME_BYTES_MAX`].
    pub frame_bytes_max: usize,
    /// See [`WS_CONNECTIONS_MAX`].
    pub connections_max: usize,
    /// Each sender's session posts are held to this rate, like a gRPC `Session`'s (unless
    /// `limiter` is given).
    pub send_rate: SendRate,
    /// The rate table shared with the gRPC port, so a user's posts over both count against
    /// one bucket; `None` makes one of the port's own from `send_rate`.
    pub limiter: Option<SendLimiter>,
    /// The server's tokens (`--tokens`, JWTs): with them, `/ws` needs the token in a
    /// subprotocol and `/rooms` in an `Authorization` header, the session's user is the token's
    /// user, under the gRPC identity rule, its joins and posts are held to the token's rooms,
    /// and the socket closes when the token expires.
    pub auth: Authenticator,
    /// TCP connection caps, TCP keepalive, and the TLS handshake deadline of the port.
    pub connections: ConnectionLimits,
    /// See [`WS_HEADER_READ_TIMEOUT`].
    pub header_read_timeout: Duration,
    /// When a WebSocket is pinged, declared dead, or closed as idle.
    pub liveness: LivenessConfig,
    /// Origins besides the page's own that may open a WebSocket (`--ws-allowed-origins`,
    /// `*` for any).
    pub allowed_origins: Vec<String>,
    /// Host names besides the bound address and `localhost` that requests may name
    /// (`--ws-allowed-hosts`, `*` for any).
    pub allowed_hosts: Vec<String>,
    /// TLS on the port (`--tls-cert`, `--tls-key`); `None` serves plain HTTP.
    pub tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
}

impl Default for WsConfig {
    fn default() -> Self {
        Self {
            frame_bytes_max: WS_FRAME_BYTES_MAX,
            connections_max: WS_CONNECTIONS_MAX,
            send_rate: SendRate::default(),
            limiter: None,
            auth: Authenticator::default(),
            connections: ConnectionLimits::default(),
            header_read_timeout: WS_HEADER_READ_TIMEOUT,
            liveness: LivenessConfig::default(),
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            tls: None,
        }
    }
}

/// What every request handler shares.
struct Shared {
    engine: Engine,
    config: WsConfig,
    /// The listener's address, which a request's `Host` must name (DNS rebinding).
    bound: SocketAddr,
    /// One permit per open connection, so the limit holds without counting by hand.
    slots: Arc<Semaphore>,
    /// Hands each session its sender's rate buckets (the user's, or the connection's on an
    /// open server).
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
    let bound = listener.local_addr()?;
    let slots = Arc::new(Semaphore::new(config.connections_max));
    let limiter = config.limiter.clone().unwrap_or_else(|| SendLimiter::new(config.send_rate));
    let mut acceptor = Acceptor::new(listener, "web", config.connections.clone());
    let http = Http { tls: config.tls.clone().map(TlsAcceptor::from), header_read_timeout: config.header_read_timeout };
    let shared = Arc::new(Shared {
        engine,
        config,
        bound,
        slots,
        limiter,
        sessions_end: CancellationToken::new(),
        sessions: TaskTracker::new(),
    });
    let router = Router::new()
        .route("/", get(page::index))
        .route("/app.js", get(page::script))
        .route("/confab.js", get(page::client))
        .route("/ws", get(connect))
        .route("/rooms/{room}", get(room_info))
        .layer(middleware::from_fn_with_state(Arc::clone(&shared), check_host))
        .with_state(Arc::clone(&shared));
    let connections = TaskTracker::new();
    let connections_end = CancellationToken::new();
    let mut shutdown = pin!(shutdown);
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            stream = acceptor.accept() => stream,
        };
        connections.spawn(http.clone().serve(stream, router.clone(), connections_end.clone()));
    }
    drop(acceptor);
    shared.sessions_end.cancel();
    connections_end.cancel();
    connections.close();
    connections.wait().await;
    shared.sessions.close();
    shared.sessions.wait().await;
    Ok(())
}

/// How each connection is served.
#[derive(Clone)]
struct Http {
    tls: Option<TlsAcceptor>,
    header_read_timeout: Duration,
}

impl Http {
    /// Serves one connection: the TLS handshake (bounded), then HTTP/1 with upgrades, until
    /// the client goes or `end` asks it to finish its request and close.
    async fn serve(self, stream: Guarded, router: Router, end: CancellationToken) {
        let peer = stream.peer();
        let Some(tls) = &self.tls else { return self.serve_http(stream, router, end).await };
        let deadline = stream.handshake_deadline();
        match tokio::time::timeout_at(deadline, tls.accept(stream)).await {
            Ok(Ok(stream)) => self.serve_http(stream, router, end).await,
            Ok(Err(error)) => debug!(%peer, %error, "TLS handshake failed"),
            Err(_) => debug!(%peer, "TLS handshake did not finish within --handshake-timeout"),
        }
    }

    async fn serve_http<Io>(&self, stream: Io, router: Router, end: CancellationToken)
    where
        Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder.timer(TokioTimer::new()).header_read_timeout(self.header_read_timeout);
        let connection = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(router));
        let mut connection = pin!(connection.with_upgrades());
        tokio::select! {
            served = connection.as_mut() => {
                if let Err(error) = served {
                    debug!(%error, "serving a web connection ended with an error");
                }
                return;
            }
            _ = end.cancelled() => connection.as_mut().graceful_shutdown(),
        }
        let _ = connection.await;
    }
}

/// Refuses a request whose `Host` does not name this server (DNS rebinding).
async fn check_host(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let host = request.headers().get(header::HOST).and_then(|value| value.to_str().ok());
    match access::check_host(host, shared.bound, &shared.config.allowed_hosts) {
        Ok(()) => next.run(request).await,
        Err(reason) => forbidden(reason),
    }
}

/// A header's value as text, if present and ASCII.
fn header_text<'a>(headers: &'a HeaderMap, name: &header::HeaderName) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

/// The refusal of a token in the URL: refused, not ignored, since it would sit in logs and
/// browser histories. `None` when the URL has none.
fn token_in_url_refusal(token: Option<&String>) -> Option<Response> {
    token.map(|_| {
        http_refusal(ApiError::Malformed(format!(
            "the token does not go in the URL: send it as the WebSocket subprotocol {}<base64url> (/ws) or as `Authorization: Bearer` (/rooms)",
            access::WS_TOKEN_PROTOCOL_PREFIX
        )))
    })
}

/// The query of `GET /ws`.
#[derive(Debug, Deserialize)]
struct ConnectQuery {
    /// The session's user, as the gRPC Session's `user` metadata key.
    user: Option<String>,
    /// `binary` (default) or `json`.
    format: Option<String>,
    /// Refused: the token goes in a subprotocol (see [`token_in_url_refusal`]).
    token: Option<String>,
}

/// `GET /ws?user=NAME&format=json|binary`: upgrades to a session.
async fn connect(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<ConnectQuery>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if let Some(refused) = token_in_url_refusal(query.token.as_ref()) {
        return refused;
    }
    let origin = header_text(&headers, &header::ORIGIN);
    if let Err(reason) =
        access::check_origin(origin, header_text(&headers, &header::HOST), &shared.config.allowed_origins)
    {
        return forbidden(reason);
    }
    let protocols = headers.get_all(header::SEC_WEBSOCKET_PROTOCOL).iter().filter_map(|value| value.to_str().ok());
    let token = match access::protocol_token(protocols) {
        Ok(token) => token,
        Err(reason) => return http_refusal(ApiError::Unauthenticated(reason)),
    };
    let (caller, grant) = match shared.config.auth.authorize_token(token.as_deref()) {
        Ok(authorized) => authorized,
        Err(error) => return http_refusal(error),
    };
    let user = match caller.session_user(query.user.as_deref(), "user") {
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
    let options = ConnectionOptions { format, frame_bytes_max, liveness: shared.config.liveness };
    let rate = shared.limiter.socket(&caller);
    let upgrade = upgrade.max_message_size(frame_bytes_max).max_frame_size(frame_bytes_max).protocols([WS_PROTOCOL]);
    upgrade.on_upgrade(move |socket| {
        let (engine, sessions_end) = (shared.engine.clone(), shared.sessions_end.clone());
        shared.sessions.track_future(async move {
            connection::run(socket, engine, user, grant, options, rate, sessions_end).await;
            drop(permit);
        })
    })
}

/// The query of `GET /rooms/{room}`.
#[derive(Debug, Deserialize)]
struct RoomQuery {
    /// Refused: the token goes in an `Authorization: Bearer` header.
    token: Option<String>,
}

/// `GET /rooms/{room}`: the room's snapshot as JSON, so a page can show who is present.
async fn room_info(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    Query(query): Query<RoomQuery>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = token_in_url_refusal(query.token.as_ref()) {
        return refused;
    }
    let token = header_text(&headers, &header::AUTHORIZATION).and_then(auth::bearer_token);
    let grant = match shared.config.auth.authorize_token(token) {
        Ok((_, grant)) => grant,
        Err(error) => return http_refusal(error),
    };
    let room = match convert::room(&name) {
        Ok(room) => room,
        Err(error) => return http_refusal(error),
    };
    if let Err(error) = grant.check(room.as_str(), RoomAction::Read) {
        return http_refusal(error);
    }
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
