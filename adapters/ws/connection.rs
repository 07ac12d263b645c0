//! One WebSocket connection as a session: its two halves implement the transport boundary's
//! [`FrameSource`] and [`FrameSink`], and [`pump_session`] does the rest.
//!
//! The inbound half also keeps the connection's [`Liveness`]: while it waits for the client it
//! pings a quiet one, drops one that answers no ping (the session ends at once, and its
//! presence with it), and closes one that sends nothing of its own for the idle timeout.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use bytes::Bytes;
use confab_actors::{Engine, SharedEvent};
use confab_engine::{RoomEvent, ServerFrame, UserName};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use prost::Message as _;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::close::{close_frame, idle_close_frame};
use super::json;
use super::liveness::{Due, Liveness, LivenessConfig};
use crate::api::auth::Grant;
use crate::api::convert;
use crate::api::error::ApiError;
use crate::api::expiry::Expiry;
use crate::api::rate::SenderRate;
use crate::api::transport::{EncodingSlot, FrameSink, FrameSource, Gone, Inbound, admit, pump_session};
use crate::proto::confab_v1 as v1;

/// How long a connection's close frame may take to send before the socket is dropped instead.
const CLOSE_SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// How a connection's frames are encoded, chosen with the `format` query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Binary frames, each one protobuf-encoded `confab.v1.ClientFrame` / `ServerFrame`.
    Binary,
    /// Text frames, each one JSON object (see [`json`]).
    Json,
}

impl Format {
    /// The format named by a `format` query parameter.
    pub fn parse(name: Option<&str>) -> Result<Self, ApiError> {
        match name {
            None | Some("binary") | Some("protobuf") => Ok(Format::Binary),
            Some("json") => Ok(Format::Json),
            Some(other) => Err(ApiError::Malformed(format!("format: {other:?} is not \"binary\" or \"json\""))),
        }
    }

    /// Where a room event's frame in this format is kept, made once for every reader.
    pub const fn slot(self) -> EncodingSlot {
        match self {
            Format::Binary => EncodingSlot::ConfabV1ServerFrame,
            Format::Json => EncodingSlot::JsonFrame,
        }
    }
}

/// The outbound half of the socket, shared: replies go out on it, and so do the inbound
/// half's pings. The session pump never runs both at once (it either waits for the client or
/// delivers), so the lock is never contended.
type SharedSink = Arc<Mutex<SplitSink<WebSocket, Message>>>;

/// How one connection runs, besides its socket and its session.
#[derive(Debug, Clone)]
pub struct ConnectionOptions {
    /// How its frames are encoded.
    pub format: Format,
    /// For the message of a frame refused as too big.
    pub frame_bytes_max: usize,
    /// When it is pinged, dead, or idle.
    pub liveness: LivenessConfig,
}

/// Runs one connection until the session ends, the client goes, or shutdown starts.
#[allow(clippy::too_many_arguments)] // Each is one independent part of a connection's setup.
pub async fn run(
    socket: WebSocket,
    engine: Engine,
    user: UserName,
    grant: Grant,
    options: ConnectionOptions,
    rate: SenderRate,
    shutdown: CancellationToken,
) {
    let (sink, stream) = socket.split();
    let sink = Arc::new(Mutex::new(sink));
    let liveness = Liveness::new(options.liveness, Instant::now());
    let expiry = Expiry::of(&grant);
    let source = Frames {
        stream,
        format: options.format,
        frame_bytes_max: options.frame_bytes_max,
        liveness,
        sink: Arc::clone(&sink),
        grant,
    };
    let replies = Replies { sink: Arc::clone(&sink), format: options.format };
    // At the token's expiry the session is dropped (it disconnects) and the socket closed.
    if let Err(expired) = expiry.bound(pump_session(&engine, user, source, replies, rate, &shutdown)).await {
        close(&sink, close_frame(Some(expired))).await;
    }
}

/// The inbound half: decodes client frames and keeps the connection's liveness.
struct Frames {
    stream: SplitStream<WebSocket>,
    format: Format,
    /// For the message of a frame refused as too big.
    frame_bytes_max: usize,
    liveness: Liveness,
    /// For pings and the idle close.
    sink: SharedSink,
    /// The frames the token allows; others are refused with an error frame.
    grant: Grant,
}

impl FrameSource for Frames {
    async fn receive(&mut self) -> Inbound {
        loop {
            // Cancel-safe: the stream's `next` is, and a ping counts as sent only once it is.
            let next = tokio::select! {
                next = self.stream.next() => next,
                _ = tokio::time::sleep_until(self.liveness.poll_timeout()) => {
                    match self.liveness.handle_timeout(Instant::now()) {
                        Due::Nothing => {}
                        Due::Ping => self.ping().await,
                        Due::Dead => {
                            tracing::debug!("WebSocket client answered no ping in time; dropping it");
                            return Inbound::Gone;
                        }
                        Due::Idle => {
                            close(&self.sink, idle_close_frame(self.liveness_config().idle_timeout)).await;
                            return Inbound::Gone;
                        }
                    }
                    continue;
                }
            };
            let message = match next {
                None => return Inbound::Gone,
                Some(Ok(message)) => message,
                Some(Err(error)) => return self.read_error(error),
            };
            let own_frame = !matches!(message, Message::Ping(_) | Message::Pong(_));
            self.liveness.handle_heard(Instant::now(), own_frame);
            let frame = match (message, self.format) {
                (Message::Binary(bytes), Format::Binary) => v1::ClientFrame::decode(bytes).map_err(|error| {
                    ApiError::Malformed(format!("binary frame is not a confab.v1.ClientFrame: {error}"))
                }),
                (Message::Text(text), Format::Json) => serde_json::from_str::<json::ClientFrame>(text.as_str())
                    .map(v1::ClientFrame::from)
                    .map_err(|error| ApiError::Malformed(format!("text frame is not a JSON client frame: {error}"))),
                (Message::Text(_), Format::Binary) => Err(ApiError::Malformed(
                    "a text frame on a binary connection; connect with ?format=json to send JSON".into(),
                )),
                (Message::Binary(_), Format::Json) => Err(ApiError::Malformed(
                    "a binary frame on a JSON connection; connect without ?format=json to send protobuf".into(),
                )),
                // The WebSocket layer answers pings itself.
                (Message::Ping(_) | Message::Pong(_), _) => continue,
                (Message::Close(_), _) => return Inbound::Gone,
            };
            return match frame.and_then(convert::client_frame) {
                Ok(frame) => admit(&self.grant, Inbound::Frame(frame)),
                Err(error) => Inbound::Malformed(error),
            };
        }
    }
}

impl Frames {
    fn liveness_config(&self) -> LivenessConfig {
        self.liveness.config()
    }

    /// Pings the client. A client that cannot even take a ping within the pong timeout is as
    /// good as dead: the ping then counts as sent, and the timeout runs out.
    async fn ping(&mut self) {
        let timeout = self.liveness_config().pong_timeout;
        let sent = tokio::time::timeout(timeout, async {
            let _ = self.sink.lock().await.send(Message::Ping(Default::default())).await;
        });
        let _ = sent.await;
        self.liveness.handle_ping_sent(Instant::now());
    }

    /// A read error: a frame over the size limit is the client's fault and says so; anything
    /// else is a broken connection.
    fn read_error(&self, error: axum::Error) -> Inbound {
        let inner = error.into_inner();
        match inner.downcast_ref::<tungstenite::Error>() {
            Some(tungstenite::Error::Capacity(_)) => Inbound::Malformed(ApiError::FrameTooBig {
                bytes_max: self.frame_bytes_max,
                flag: "--ws-frame-bytes-max",
            }),
            _ => {
                tracing::debug!(error = %inner, "WebSocket read failed");
                Inbound::Gone
            }
        }
    }
}

/// A `confab.v1` frame's bytes in `format`: `None` for a frame the JSON format does not show.
fn frame_bytes(format: Format, frame: v1::ServerFrame) -> Option<Vec<u8>> {
    match format {
        Format::Binary => Some(frame.encode_to_vec()),
        // Serializing these plain structs cannot fail (no maps with non-string keys).
        Format::Json => json::server_frame(frame).and_then(|frame| serde_json::to_vec(&frame).ok()),
    }
}

/// A room event's frame in `format`, as every reader of the room gets it (made once per event
/// and format, by the first reader that needs it): the bytes [`frame_bytes`] gives for
/// `ServerFrame::Event(event)`, empty for an event the JSON format does not show.
fn encode_event(format: Format, event: &RoomEvent) -> Vec<u8> {
    match format {
        // The same bytes as a gRPC `Session`'s frame for the event: one slot serves both.
        Format::Binary => convert::encode_event_frame(event),
        Format::Json => {
            frame_bytes(format, convert::server_frame(&ServerFrame::Event(event.clone()))).unwrap_or_default()
        }
    }
}

/// The outbound half: encodes server frames.
struct Replies {
    sink: SharedSink,
    format: Format,
}

impl Replies {
    /// Sends one `confab.v1` frame in the connection's format.
    async fn send(&mut self, frame: v1::ServerFrame) -> Result<(), Gone> {
        match frame_bytes(self.format, frame) {
            Some(bytes) => self.write(Bytes::from(bytes)).await,
            None => Ok(()),
        }
    }

    /// Writes a frame's bytes as the connection's format's message.
    async fn write(&mut self, bytes: Bytes) -> Result<(), Gone> {
        let message = match self.format {
            Format::Binary => Message::Binary(bytes),
            Format::Json => Message::Text(Utf8Bytes::try_from(bytes).map_err(|_| Gone)?),
        };
        self.sink.lock().await.send(message).await.map_err(|_| Gone)
    }
}

impl FrameSink for Replies {
    async fn deliver(&mut self, frame: &ServerFrame) -> Result<(), Gone> {
        self.send(convert::server_frame(frame)).await
    }

    async fn deliver_event(&mut self, event: &SharedEvent) -> Result<(), Gone> {
        let format = self.format;
        let bytes = event.encoded(format.slot().index(), |event| encode_event(format, event));
        // An event the JSON format does not show is encoded as nothing.
        if bytes.is_empty() {
            return Ok(());
        }
        self.write(Bytes::from_owner(bytes)).await
    }

    async fn refuse(&mut self, room: &str, error: ApiError) -> Result<(), Gone> {
        self.send(convert::error_frame(room, error)).await
    }

    async fn end(self, reason: Option<ApiError>) {
        close(&self.sink, close_frame(reason)).await;
    }
}

/// Sends a close frame and closes the socket.
async fn close(sink: &SharedSink, frame: CloseFrame) {
    let closing = async {
        let mut sink = sink.lock().await;
        let _ = sink.send(Message::Close(Some(frame))).await;
        let _ = sink.close().await;
    };
    // A client that reads nothing cannot take the close frame; then the socket just drops.
    let _ = tokio::time::timeout(CLOSE_SEND_TIMEOUT, closing).await;
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::api::convert::tests::{events, published};

    /// The bytes a WebSocket writes for `ServerFrame::Event(event)` frame by frame.
    fn per_connection(format: Format, event: &RoomEvent) -> Option<Vec<u8>> {
        frame_bytes(format, convert::server_frame(&ServerFrame::Event(event.clone())))
    }

    #[test]
    fn shared_frames_decode_to_exactly_the_per_connection_conversion() {
        for format in [Format::Binary, Format::Json] {
            for event in events() {
                let shared = published(event.clone());
                let first = shared.encoded(format.slot().index(), |event| encode_event(format, event));
                let again = shared.encoded(format.slot().index(), |_| panic!("encoded a second time"));
                assert!(Arc::ptr_eq(&first, &again), "every reader gets the same bytes");
                match (format, per_connection(format, &event)) {
                    (Format::Binary, Some(expected)) => assert_eq!(
                        v1::ServerFrame::decode(&first[..]).expect("decodes"),
                        v1::ServerFrame::decode(&expected[..]).expect("decodes"),
                        "{event:?}"
                    ),
                    (Format::Json, Some(expected)) => assert_eq!(
                        serde_json::from_slice::<serde_json::Value>(&first).expect("JSON"),
                        serde_json::from_slice::<serde_json::Value>(&expected).expect("JSON"),
                        "{event:?}"
                    ),
                    (_, None) => assert!(first.is_empty(), "an event the format does not show: {event:?}"),
                }
            }
        }
    }

    #[test]
    fn each_format_has_a_slot_of_its_own() {
        let slots = [EncodingSlot::ConfabV1RoomEvent, Format::Binary.slot(), Format::Json.slot()];
        for (index, slot) in slots.iter().enumerate() {
            assert!(slot.index() < confab_engine::ENCODING_SLOTS, "{slot:?}");
            assert!(slots[index + 1..].iter().all(|other| other != slot), "{slot:?} is shared");
        }
    }
}
