//! `confab.v1.Chat`: each RPC is a thin translation into `Engine` calls.

use std::pin::Pin;

use confab_actors::{Engine, Upload};
use confab_engine::{RoomName, ServerFrame};
use futures::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::auth::caller;
use super::convert;
use super::proto::confab_v1 as v1;
use super::rate::SendLimiter;
use super::shared_bytes::SharedSubscribeStream;
use super::shutdown::{ShutdownSignal, ShutdownWatch};
use super::status::{ApiError, inbound_status, over_decode_limit};
use crate::session_stream::{Output, RatePolicy, SessionOutput, SessionStream};
use crate::transport::Inbound;

/// A boxed response stream.
pub type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The `confab.v1.Chat` service.
#[derive(Clone)]
pub struct ConfabChat {
    engine: Engine,
    shutdown: CancellationToken,
    /// The same shutdown as the hot streams check it (one atomic load a poll).
    signal: ShutdownSignal,
    limiter: SendLimiter,
}

impl ConfabChat {
    /// A `Subscribe` call as a stream of each event's shared `confab.v1.RoomEvent` bytes.
    pub(crate) async fn subscribe_shared(
        &self,
        request: Request<v1::SubscribeRequest>,
    ) -> Result<SharedSubscribeStream, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let room = convert::room(&request.room)?;
        let user = caller.optional_user(&request.user, "user")?;
        let events = self.engine.subscribe(&room, user, request.after_seq).await.map_err(ApiError::from)?;
        Ok(SharedSubscribeStream::new(events, ShutdownWatch::new(&self.signal)))
    }

    /// A service over `engine` whose streams end when `shutdown` is cancelled, with the default
    /// send rate.
    pub fn new(engine: Engine, shutdown: CancellationToken) -> Self {
        Self { engine, signal: ShutdownSignal::new(&shutdown), shutdown, limiter: SendLimiter::default() }
    }

    /// The same service with `limiter`'s send rate (shared with the other service).
    pub fn with_limiter(self, limiter: SendLimiter) -> Self {
        Self { limiter, ..self }
    }
}

#[tonic::async_trait]
impl v1::chat_server::Chat for ConfabChat {
    async fn send(&self, request: Request<v1::SendRequest>) -> Result<Response<v1::SendResponse>, Status> {
        let caller = caller(&request)?;
        self.limiter.check_unary(&caller, request.remote_addr())?;
        let request = request.into_inner();
        let room = convert::room(&request.room)?;
        let draft = convert::draft_by(caller.user(&request.user, "user")?, &request.client_msg_id, request.body)?;
        let sent = self.engine.send(&room, draft).await.map_err(ApiError::from)?;
        Ok(Response::new(v1::SendResponse { seq: sent.seq, duplicate: sent.duplicate }))
    }

    async fn history(&self, request: Request<v1::HistoryRequest>) -> Result<Response<v1::HistoryResponse>, Status> {
        let request = request.into_inner();
        let room = convert::room(&request.room)?;
        let limit = usize::try_from(request.limit).unwrap_or(usize::MAX);
        let page = self.engine.history(&room, request.after_seq, limit).await.map_err(ApiError::from)?;
        Ok(Response::new(convert::history(&page)))
    }

    async fn list_rooms(&self, _: Request<v1::ListRoomsRequest>) -> Result<Response<v1::ListRoomsResponse>, Status> {
        let rooms = self.engine.rooms().await.map_err(ApiError::from)?;
        Ok(Response::new(v1::ListRoomsResponse { rooms: rooms.iter().map(convert::room_info).collect() }))
    }

    type SubscribeStream = ResponseStream<v1::RoomEvent>;

    async fn subscribe(
        &self,
        request: Request<v1::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        // Served by `shared_bytes::ConfabService`, which encodes each event once for every
        // stream; this is the same stream, converted per stream, for a plain `ChatServer`.
        let shared = self.subscribe_shared(request).await?;
        let stream = shared.map(|item| item.and_then(|bytes| decode_room_event(&bytes)));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn upload(
        &self,
        request: Request<Streaming<v1::UploadChunk>>,
    ) -> Result<Response<v1::UploadReceipt>, Status> {
        let caller = caller(&request)?;
        let mut inbound = request.into_inner();
        // Created on the first chunk, which names the room. Dropped on any error: aborted (G6).
        let mut upload: Option<(RoomName, Upload)> = None;
        loop {
            let chunk = tokio::select! {
                _ = self.shutdown.cancelled() => return Err(ApiError::ShuttingDown.into()),
                chunk = inbound.message() => chunk.map_err(inbound_status)?,
            };
            let Some(chunk) = chunk else { break };
            if upload.is_none() {
                let room = convert::room(&chunk.room)?;
                upload = Some((room.clone(), self.engine.upload(&room)));
            }
            let Some((room, current)) = upload.as_mut() else { unreachable!("set just above") };
            if !chunk.room.is_empty() && chunk.room != room.as_str() {
                let message = format!("chunk names room {:?} but the upload goes to {room}", chunk.room);
                return Err(ApiError::Malformed(message).into());
            }
            let user = caller.user(&chunk.user, "user")?;
            current.push(convert::draft_by(user, "", chunk.body)?).await.map_err(ApiError::from)?;
        }
        let Some((_, upload)) = upload else {
            return Err(ApiError::Malformed("upload has no chunk, so it names no room".into()).into());
        };
        let receipt = upload.commit().await.map_err(ApiError::from)?;
        Ok(Response::new(convert::receipt(&receipt)))
    }

    type SessionStream = ResponseStream<v1::ServerFrame>;

    async fn session(
        &self,
        request: Request<Streaming<v1::ClientFrame>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let user = caller(&request)?.metadata_user(request.metadata())?;
        let inbound = request.into_inner().map(inbound_frame as fn(_) -> _);
        let rate = self.limiter.session();
        let stream = SessionStream::open(
            &self.engine,
            user,
            inbound,
            Vec::new(),
            rate,
            RatePolicy::Refuse,
            SessionFrames,
            &self.signal,
        );
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Shared bytes back to the message (only for a `ChatServer` used without the shared route).
fn decode_room_event(bytes: &[u8]) -> Result<v1::RoomEvent, Status> {
    prost::Message::decode(bytes).map_err(|error| Status::internal(format!("re-decoding an event: {error}")))
}

/// One client frame of a Session RPC, decoded for the session.
fn inbound_frame(frame: Result<v1::ClientFrame, Status>) -> Inbound {
    match frame {
        Ok(frame) => match convert::client_frame(frame) {
            Ok(frame) => Inbound::Frame(frame),
            Err(error) => Inbound::Malformed(error),
        },
        Err(status) => over_decode_limit(&status).map_or(Inbound::Gone, Inbound::Malformed),
    }
}

/// A Session RPC's vocabulary: every session frame is a `ServerFrame`, a refused post an error
/// frame, and an ended session a status.
struct SessionFrames;

impl SessionOutput for SessionFrames {
    type Item = Result<v1::ServerFrame, Status>;
    const ACKS: bool = true;

    fn frame(&mut self, frame: &ServerFrame) -> Output<Self::Item> {
        Output::Item(Ok(convert::server_frame(frame)))
    }

    fn refusal(&mut self, room: &str, error: ApiError) -> Option<Self::Item> {
        Some(Ok(convert::error_frame(room, error)))
    }

    fn end(&mut self, reason: Option<ApiError>) -> Option<Self::Item> {
        // A normal end is the stream ending: status OK.
        reason.map(|error| Err(error.into()))
    }
}
