//! The transport boundary: how a frontend turns its protocol into [`Engine`] calls.
//!
//! The engine and its actors never learn which transport a client uses. Everything a
//! transport knows lives in its adapter, everything transports share lives in [`crate::api`],
//! and every adapter follows the same recipe:
//!
//! 1. **Identity.** Take the bearer token and the name the client claims from the protocol
//!    (gRPC: `authorization` and `user` metadata; WebSocket: the token in the
//!    `confab.bearer.<base64url>` subprotocol and the `user` query parameter) and hand them to
//!    the [`Authenticator`](super::auth::Authenticator) and
//!    [`Caller`](super::auth::Caller), so every transport applies the same identity rule
//!    and refuses the same names with the same message. The token's
//!    [`Grant`] says which rooms it may read and post to ([`admit`] holds a session's frames to
//!    it) and when it expires ([`super::expiry`]).
//! 2. **Decode.** Turn the wire frame into a `confab.v1` message ([`crate::proto`]; prost for
//!    protobuf bytes, or another encoding of the same message, like the WebSocket's JSON), then
//!    into an engine type with [`super::convert`]. That module is the one place where wire
//!    meets engine.
//! 3. **Call the handle.** [`Engine::send`], `history`, `subscribe`, `upload`, or, for a
//!    long-lived connection, [`Engine::open_session`], under the sender's rates and quotas
//!    ([`super::rate::SendLimiter`]). A transport whose writer polls a response stream (gRPC)
//!    drives the session with [`SessionStream`](super::session_stream::SessionStream), which
//!    needs no task of its own; one that writes to a socket itself (WebSocket) uses
//!    [`pump_session`] below, implementing only [`FrameSource`] and [`FrameSink`].
//! 4. **Encode.** Engine results go back through `convert` (and the transport's encoding); a
//!    room event's bytes are made once for every reader ([`EncodingSlot`]).
//! 5. **Refuse.** Every refusal is an [`ApiError`]; the transport maps its
//!    [`ErrorKind`](super::error::ErrorKind) to its own vocabulary in exactly one place (gRPC:
//!    `grpc/status.rs`; WebSocket close codes and HTTP statuses: [`crate::ws::close`]).
//! 6. **Stop.** Open streams and sessions end when the server's shutdown token is cancelled,
//!    so a shutdown never waits on an idle client.
//!
//! Users of this boundary: the gRPC `confab.v1.Chat` and `chat.ChatService` services
//! (`grpc/`), the WebSocket transport ([`crate::ws`]), and `examples/line_chat.rs`, which
//! embeds the engine in a smol program without this crate's servers.

use std::future::Future;

use confab_actors::{Engine, SessionItem, SessionSender, SharedEvent};
use confab_engine::{ClientFrame, ServerFrame, UserName};
use tokio_util::sync::CancellationToken;

use super::auth::Grant;
use super::error::ApiError;
use super::rate::{SenderRate, frame_rate};
use super::session_stream::{Admission, SessionGuard};

/// What a transport read from its client.
#[derive(Debug)]
pub enum Inbound {
    /// One decoded frame for the session.
    Frame(ClientFrame),
    /// The client will send nothing more (a half-close): the session finishes once the
    /// client's own messages have come back to it.
    Finished,
    /// The client sent something that is not a frame: the session ends with this error.
    Malformed(ApiError),
    /// A frame the client's token may not send (its room permissions): refused with this
    /// error about `room`, like a post over the rate; the session goes on.
    Refused {
        /// The room the frame names.
        room: String,
        /// Why ([`ApiError::Forbidden`]).
        error: ApiError,
    },
    /// The client went away: the session disconnects at once.
    Gone,
}

/// The client is gone; nothing more can be delivered.
#[derive(Debug)]
pub struct Gone;

/// The inbound half of a framed transport.
pub trait FrameSource: Send {
    /// The next thing the client sent. Must be cancel-safe: [`pump_session`] races it against
    /// outbound frames and shutdown.
    fn receive(&mut self) -> impl Future<Output = Inbound> + Send;
}

/// The outbound half of a framed transport.
pub trait FrameSink: Send {
    /// Delivers one session frame to the client, in order.
    fn deliver(&mut self, frame: &ServerFrame) -> impl Future<Output = Result<(), Gone>> + Send;

    /// Delivers one room event, as shared with the room's other readers: a transport encodes
    /// it once for all of them ([`SharedEvent::encoded`], in its [`EncodingSlot`]).
    fn deliver_event(&mut self, event: &SharedEvent) -> impl Future<Output = Result<(), Gone>> + Send;

    /// Refuses one client frame about `room` without ending the session (an `Error` frame),
    /// for refusals the transport makes itself, such as the send rate.
    fn refuse(&mut self, room: &str, error: ApiError) -> impl Future<Output = Result<(), Gone>> + Send;

    /// Ends the conversation: `None` when the session finished normally, or the reason it was
    /// ended (a malformed frame, shutdown).
    fn end(self, reason: Option<ApiError>) -> impl Future<Output = ()> + Send;
}

/// Runs one session for `user` over a framed transport until the session finishes, the client
/// goes away, or `shutdown` is cancelled (then the sink ends with [`ApiError::ShuttingDown`]).
pub async fn pump_session<Source, Sink>(
    engine: &Engine,
    user: UserName,
    mut source: Source,
    mut sink: Sink,
    rate: SenderRate,
    shutdown: &CancellationToken,
) where
    Source: FrameSource,
    Sink: FrameSink,
{
    let mut guard = match SessionGuard::open(engine, rate) {
        Ok(guard) => guard,
        Err(error) => return sink.end(Some(error)).await,
    };
    let (frames, mut events) = engine.open_session(user);
    // Dropping the sender without closing disconnects the session; `None` once half-closed.
    let mut frames: Option<SessionSender> = Some(frames);
    // Made once, on a child token of this session's own: the loop does not rebuild it on every
    // turn, nor contend on the server-wide token's lock.
    let cancelled = shutdown.child_token().cancelled_owned();
    tokio::pin!(cancelled);
    loop {
        tokio::select! {
            biased;
            _ = &mut cancelled => {
                sink.end(Some(ApiError::ShuttingDown)).await;
                return;
            }
            // Output first: a client that reads is served before more of its input is taken.
            item = std::future::poll_fn(|cx| events.poll_next_shared(cx)) => match item {
                // Its last item: a room closed the session for stalling (say so), or it
                // finished or stopped.
                Some(SessionItem::End(end)) => {
                    sink.end(ApiError::from_end(end)).await;
                    return;
                }
                Some(item) => {
                    // A client that stops reading must not hold shutdown up: stop waiting
                    // for it once shutdown starts.
                    tokio::select! {
                        biased;
                        _ = &mut cancelled => {
                            sink.end(Some(ApiError::ShuttingDown)).await;
                            return;
                        }
                        delivered = deliver(&mut sink, &item) => if delivered.is_err() { return },
                    }
                }
                // Not reached: the end came first.
                None => {
                    sink.end(None).await;
                    return;
                }
            },
            inbound = source.receive(), if frames.is_some() => match inbound {
                Inbound::Frame(frame) => {
                    // Over the sender's rates (posts, typing, joins and leaves, shared with its
                    // other sessions) or quotas: refused here, the session goes on.
                    let refused = match guard.admit(&frame) {
                        Admission::Pass => None,
                        Admission::OverRate(limited) => Some(limited.into()),
                        Admission::Refused(error) => Some(error),
                    };
                    if let Some(error) = refused {
                        let room = frame_rate(&frame).map(|(_, room)| room).unwrap_or_default();
                        if sink.refuse(room, error).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    let Some(sender) = frames.as_ref() else { continue };
                    if sender.send(frame).await.is_err() {
                        return;
                    }
                }
                Inbound::Finished => {
                    if let Some(sender) = frames.take() {
                        let _ = sender.close().await;
                    }
                }
                Inbound::Malformed(error) => {
                    sink.end(Some(error)).await;
                    return;
                }
                Inbound::Refused { room, error } => {
                    if sink.refuse(&room, error).await.is_err() {
                        return;
                    }
                }
                Inbound::Gone => return,
            },
        }
    }
}

/// Delivers one item of a session's output.
async fn deliver<Sink: FrameSink>(sink: &mut Sink, item: &SessionItem) -> Result<(), Gone> {
    match item {
        SessionItem::Frame(frame) => sink.deliver(frame).await,
        SessionItem::Event(event) => sink.deliver_event(event).await,
        // Never asked: the caller ends the sink instead.
        SessionItem::End(_) => Ok(()),
    }
}

/// The wire formats whose bytes for a room event are made once and shared by every reader of
/// the room: each has its slot in the event's encodings (below
/// [`ENCODING_SLOTS`](confab_engine::ENCODING_SLOTS)), listed here so no two formats share one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodingSlot {
    /// A `confab.v1.RoomEvent` message (gRPC `Subscribe`).
    ConfabV1RoomEvent = 0,
    /// A `confab.v1.ServerFrame` message carrying the event (gRPC `Session`, and WebSocket in
    /// the binary format).
    ConfabV1ServerFrame = 1,
    /// The JSON frame of the event (WebSocket, JSON format).
    JsonFrame = 2,
    /// A `chat.Message` (the seed's `ChatStream`; room messages only).
    SeedMessage = 3,
}

impl EncodingSlot {
    /// The slot's index.
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// `inbound` as `grant` allows it: a frame its room permissions do not allow becomes
/// [`Inbound::Refused`]; everything else passes.
pub fn admit(grant: &Grant, inbound: Inbound) -> Inbound {
    match inbound {
        Inbound::Frame(frame) => match grant.check_frame(&frame) {
            Ok(()) => Inbound::Frame(frame),
            Err((room, error)) => Inbound::Refused { room, error },
        },
        other => other,
    }
}
