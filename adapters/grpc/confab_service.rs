//! `confab.v1.Chat`: each RPC is a thin translation into `Engine` calls.

use std::pin::Pin;
use std::sync::Arc;

use confab_actors::{Engine, ROOMS_PAGE_MAX, SessionItem, Upload};
use confab_engine::{RateKind, RoomName};
use futures::{Stream, StreamExt};
use prost::Message as _;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::auth::{caller, grant};
use super::metadata;
use super::shared_bytes::{SharedSubscribeStream, decoded};
use super::status::{inbound_status, over_decode_limit};
use crate::api::convert;
use crate::api::error::ApiError;
use crate::api::expiry::{Expiry, UntilExpiry};
use crate::api::permissions::RoomAction;
use crate::api::rate::SendLimiter;
use crate::api::session_stream::{Output, RatePolicy, SessionOutput, SessionStream};
use crate::api::shutdown::{ShutdownSignal, ShutdownWatch};
use crate::api::transport::{EncodingSlot, Inbound, admit};
use crate::proto::confab_v1 as v1;

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
    ) -> Result<UntilExpiry<SharedSubscribeStream>, Status> {
        let (caller, grant) = (caller(&request)?, grant(&request)?);
        let rate = self.limiter.sender(&caller, request.remote_addr());
        let request = request.into_inner();
        let room = convert::room(&request.room)?;
        grant.check(room.as_str(), RoomAction::Read)?;
        let user = caller.optional_user(&request.user, "user")?;
        // The room's slot in the subscriber's quota, held while the stream is open.
        let held = rate.hold_room(room.as_str())?;
        rate.check_creation(&self.engine, &room)?;
        let events = self.engine.subscribe(&room, user, request.after_seq).await.map_err(ApiError::from)?;
        let stream = SharedSubscribeStream::new(events, ShutdownWatch::new(&self.signal)).holding(held);
        Ok(Expiry::of(&grant).stream(stream))
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
        let (caller, grant) = (caller(&request)?, grant(&request)?);
        let rate = self.limiter.sender(&caller, request.remote_addr());
        let request = request.into_inner();
        let room = convert::room(&request.room)?;
        grant.check(room.as_str(), RoomAction::Post)?;
        rate.try_take(RateKind::Send).map_err(ApiError::from)?;
        rate.check_creation(&self.engine, &room)?;
        let draft = convert::draft_by(caller.user(&request.user, "user")?, &request.client_msg_id, request.body)?;
        let sent = self.engine.send(&room, draft).await.map_err(ApiError::from)?;
        Ok(Response::new(v1::SendResponse { seq: sent.seq, duplicate: sent.duplicate }))
    }

    async fn history(&self, request: Request<v1::HistoryRequest>) -> Result<Response<v1::HistoryResponse>, Status> {
        let (caller, grant) = (caller(&request)?, grant(&request)?);
        let rate = self.limiter.sender(&caller, request.remote_addr());
        let request = request.into_inner();
        let room = convert::room(&request.room)?;
        grant.check(room.as_str(), RoomAction::Read)?;
        // Reading a stored room that is not live loads it: that counts as creating it.
        rate.check_creation(&self.engine, &room)?;
        let limit = usize::try_from(request.limit).unwrap_or(usize::MAX);
        let page = self.engine.history(&room, request.after_seq, limit).await.map_err(ApiError::from)?;
        Ok(Response::new(convert::history(&page)))
    }

    /// Only the rooms the token may read: the page is filled with readable rooms, and
    /// `next_after` is the last of them, so a restricted token learns no other room's name.
    async fn list_rooms(
        &self,
        request: Request<v1::ListRoomsRequest>,
    ) -> Result<Response<v1::ListRoomsResponse>, Status> {
        let grant = grant(&request)?;
        let request = request.into_inner();
        let after = match request.after.as_str() {
            "" => None,
            after => Some(convert::room(after)?),
        };
        let limit = match usize::try_from(request.limit) {
            Ok(0) | Err(_) => ROOMS_PAGE_MAX,
            Ok(limit) => limit,
        };
        let readable = Arc::new(move |room: &RoomName| grant.allows(room.as_str(), RoomAction::Read));
        let page = self.engine.visible_rooms_page(after.as_ref(), limit, readable).await.map_err(ApiError::from)?;
        let next_after = page.next_after.map(|name| name.as_str().to_owned()).unwrap_or_default();
        Ok(Response::new(v1::ListRoomsResponse {
            rooms: page.rooms.iter().map(convert::room_info).collect(),
            next_after,
        }))
    }

    type SubscribeStream = ResponseStream<v1::RoomEvent>;

    async fn subscribe(
        &self,
        request: Request<v1::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        // Served by `shared_bytes::ConfabService`, which encodes each event once for every
        // stream; this is the same stream, converted per stream, for a plain `ChatServer`.
        Ok(Response::new(decoded(self.subscribe_shared(request).await?)))
    }

    async fn upload(
        &self,
        request: Request<Streaming<v1::UploadChunk>>,
    ) -> Result<Response<v1::UploadReceipt>, Status> {
        let (caller, grant) = (caller(&request)?, grant(&request)?);
        let expiry = Expiry::of(&grant);
        let rate = self.limiter.sender(&caller, request.remote_addr());
        let _upload_slot = rate.hold_upload()?;
        let mut upload_bytes = rate.upload_bytes();
        let mut inbound = request.into_inner();
        // Created on the first chunk, which names the room. Dropped on any error: aborted (G6).
        let mut upload: Option<(RoomName, Upload)> = None;
        loop {
            let chunk = tokio::select! {
                _ = self.shutdown.cancelled() => return Err(ApiError::ShuttingDown.into()),
                _ = expiry.expired() => return Err(Expiry::error().into()),
                chunk = inbound.message() => chunk.map_err(inbound_status)?,
            };
            let Some(chunk) = chunk else { break };
            // Each message takes a send token; over the rate, the upload is paced (the stream is
            // not read meanwhile), as it is all or nothing and may hold more than the burst.
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return Err(ApiError::ShuttingDown.into()),
                _ = expiry.expired() => return Err(Expiry::error().into()),
                _ = rate.take_paced(RateKind::Send) => {}
            }
            if upload.is_none() {
                let room = convert::room(&chunk.room)?;
                grant.check(room.as_str(), RoomAction::Post)?;
                rate.check_creation(&self.engine, &room)?;
                upload = Some((room.clone(), self.engine.upload(&room)));
            }
            let Some((room, current)) = upload.as_mut() else { unreachable!("set just above") };
            if !chunk.room.is_empty() && chunk.room != room.as_str() {
                let message = format!("chunk names room {:?} but the upload goes to {room}", chunk.room);
                return Err(ApiError::Malformed(message).into());
            }
            let user = caller.user(&chunk.user, "user")?;
            upload_bytes.reserve(chunk.body.len()).map_err(ApiError::from)?;
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
        // Served by `shared_bytes::ConfabService`, which sends each room event's frame made
        // once for every session in the room; this is the same stream, decoded, for a plain
        // `ChatServer`.
        Ok(Response::new(decoded(self.session_shared(request).await?)))
    }
}

impl ConfabChat {
    /// A `Session` call as a stream of each frame's `confab.v1.ServerFrame` bytes: a room
    /// event's made once for every session in the room, the session's own frames per stream.
    pub(crate) async fn session_shared(
        &self,
        request: Request<Streaming<v1::ClientFrame>>,
    ) -> Result<ResponseStream<Arc<[u8]>>, Status> {
        let (caller, grant) = (caller(&request)?, grant(&request)?);
        let user = metadata::user(&caller, request.metadata())?;
        let expiry = Expiry::of(&grant);
        let rate = self.limiter.sender(&caller, request.remote_addr());
        let inbound = request.into_inner().map(move |frame| admit(&grant, inbound_frame(frame)));
        let stream = SessionStream::open(
            &self.engine,
            user,
            inbound,
            Vec::new(),
            rate,
            RatePolicy::Refuse,
            SessionFrames,
            &self.signal,
        )?;
        Ok(Box::pin(expiry.stream(stream)))
    }
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
    type Item = Result<Arc<[u8]>, Status>;
    const ACKS: bool = true;

    fn item(&mut self, item: &SessionItem) -> Output<Self::Item> {
        match item {
            SessionItem::Frame(frame) => Output::Item(Ok(convert::server_frame(frame).encode_to_vec().into())),
            SessionItem::Event(event) => {
                Output::Item(Ok(event.encoded(EncodingSlot::ConfabV1ServerFrame.index(), convert::encode_event_frame)))
            }
            // Never asked: the session's end comes to `end`.
            SessionItem::End(_) => Output::Skip,
        }
    }

    fn refusal(&mut self, room: &str, error: ApiError) -> Option<Self::Item> {
        Some(Ok(convert::error_frame(room, error).encode_to_vec().into()))
    }

    fn end(&mut self, reason: Option<ApiError>) -> Option<Self::Item> {
        // A normal end is the stream ending: status OK.
        reason.map(|error| Err(error.into()))
    }
}
