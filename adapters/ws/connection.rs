//! One WebSocket connection as a session: its two halves implement the transport boundary's
//! [`FrameSource`] and [`FrameSink`], and [`pump_session`] does the rest.

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use confab_actors::Engine;
use confab_engine::{ServerFrame, UserName};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use prost::Message as _;
use tokio_util::sync::CancellationToken;

use super::close::close_frame;
use super::json;
use crate::grpc::convert;
use crate::grpc::proto::confab_v1 as v1;
use crate::grpc::rate::SessionRate;
use crate::grpc::status::ApiError;
use crate::transport::{FrameSink, FrameSource, Gone, Inbound, pump_session};

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
}

/// Runs one connection until the session ends, the client goes, or shutdown starts.
pub async fn run(
    socket: WebSocket,
    engine: Engine,
    user: UserName,
    format: Format,
    frame_bytes_max: usize,
    rate: SessionRate,
    shutdown: CancellationToken,
) {
    let (sink, stream) = socket.split();
    let source = Frames { stream, format, frame_bytes_max };
    pump_session(&engine, user, source, Replies { sink, format }, rate, &shutdown).await;
}

/// The inbound half: decodes client frames.
struct Frames {
    stream: SplitStream<WebSocket>,
    format: Format,
    /// For the message of a frame refused as too big.
    frame_bytes_max: usize,
}

impl FrameSource for Frames {
    async fn receive(&mut self) -> Inbound {
        loop {
            let message = match self.stream.next().await {
                None => return Inbound::Gone,
                Some(Ok(message)) => message,
                Some(Err(error)) => return self.read_error(error),
            };
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
                Ok(frame) => Inbound::Frame(frame),
                Err(error) => Inbound::Malformed(error),
            };
        }
    }
}

impl Frames {
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

/// The outbound half: encodes server frames.
struct Replies {
    sink: SplitSink<WebSocket, Message>,
    format: Format,
}

impl Replies {
    /// Sends one `confab.v1` frame in the connection's format.
    async fn send(&mut self, frame: v1::ServerFrame) -> Result<(), Gone> {
        let message = match self.format {
            Format::Binary => Message::Binary(frame.encode_to_vec().into()),
            Format::Json => {
                let Some(frame) = json::server_frame(frame) else { return Ok(()) };
                // Serializing these plain structs cannot fail (no maps with non-string keys).
                let text = serde_json::to_string(&frame).map_err(|_| Gone)?;
                Message::Text(text.into())
            }
        };
        self.sink.send(message).await.map_err(|_| Gone)
    }
}

impl FrameSink for Replies {
    async fn deliver(&mut self, frame: &ServerFrame) -> Result<(), Gone> {
        self.send(convert::server_frame(frame)).await
    }

    async fn refuse(&mut self, room: &str, error: ApiError) -> Result<(), Gone> {
        self.send(convert::error_frame(room, error)).await
    }

    async fn end(mut self, reason: Option<ApiError>) {
        let closing = async {
            let _ = self.sink.send(Message::Close(Some(close_frame(reason)))).await;
            let _ = self.sink.close().await;
        };
        // A client that reads nothing cannot take the close frame; then the socket just drops.
        let _ = tokio::time::timeout(CLOSE_SEND_TIMEOUT, closing).await;
    }
}
