//! `chat.ChatService`, the seed's proto, with confab's room semantics (DESIGN.md, "The gRPC
//! API"): the room comes from the `room` metadata key (default `lobby`).

use std::sync::Arc;

use confab_actors::{Engine, SessionItem};
use confab_engine::{ClientFrame, RateKind, RoomError, RoomEvent, RoomName, ServerFrame, UserName};
use futures::StreamExt;
use prost::Message as _;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::auth::{caller, grant};
use super::confab_service::ResponseStream;
use super::metadata;
use super::shared_bytes::decoded;
use super::shutdown::UntilShutdown;
use super::status::{self, inbound_status, over_decode_limit};
use crate::api::auth::Caller;
use crate::api::convert;
use crate::api::error::{ApiError, frame_kind};
use crate::api::expiry::Expiry;
use crate::api::permissions::RoomAction;
use crate::api::rate::SendLimiter;
use crate::api::session_stream::{Output, RatePolicy, SessionOutput, SessionStream};
use crate::api::shutdown::ShutdownSignal;
use crate::api::transport::{EncodingSlot, Inbound};
use crate::proto::chat;

/// The seed's `chat.ChatService`.
#[derive(Clone)]
pub struct SeedChat {
    engine: Engine,
    shutdown: CancellationToken,
    /// The same shutdown as the hot streams check it (one atomic load a poll).
    signal: ShutdownSignal,
    limiter: SendLimiter,
}

impl SeedChat {
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

/// A room's retained history, oldest first, up to what it held when the call began, read one
/// `History` page at a time as the client takes it: a replay holds one page (bounded in
/// messages and bytes), never the whole history.
struct Replay {
    engine: Engine,
    room: RoomName,
    after_seq: u64,
    /// The room's last seq when the replay began: where it stops.
    end: Option<u64>,
    done: bool,
}

impl Replay {
    /// The first page now (so a refusal is the call's status), the rest as the stream is read.
    async fn start(
        engine: Engine,
        room: RoomName,
    ) -> Result<impl futures::Stream<Item = Result<chat::Message, Status>> + Send, ApiError> {
        let mut replay = Replay { engine, room, after_seq: 0, end: None, done: false };
        let first = replay.next_page().await?;
        let rest = futures::stream::unfold(replay, |mut replay| async move {
            if replay.done {
                return None;
            }
            let page = replay.next_page().await.map_err(Status::from);
            Some((page, replay))
        });
        let pages = futures::stream::once(futures::future::ready(Ok(first))).chain(rest);
        Ok(pages.flat_map(|page| match page {
            Ok(messages) => futures::stream::iter(messages.into_iter().map(Ok).collect::<Vec<_>>()),
            Err(status) => futures::stream::iter(vec![Err(status)]),
        }))
    }

    async fn next_page(&mut self) -> Result<Vec<chat::Message>, ApiError> {
        let page = match self.engine.history(&self.room, self.after_seq, 0).await {
            Ok(page) => page,
            Err(confab_actors::EngineError::Room(RoomError::NotFound)) => {
                self.done = true;
                return Ok(Vec::new());
            }
            Err(error) => {
                self.done = true;
                return Err(error.into());
            }
        };
        let end = *self.end.get_or_insert(page.last_seq);
        let messages: Vec<_> = page.messages.iter().take_while(|m| m.seq <= end).collect();
        if let Some(last) = messages.last() {
            self.after_seq = last.seq;
        }
        if messages.is_empty() || self.after_seq >= end {
            self.done = true;
        }
        Ok(messages.into_iter().map(|message| convert::seed_message(message)).collect())
    }
}

#[tonic::async_trait]
impl chat::chat_service_server::ChatService for SeedChat {
    async fn say_hello(&self, request: Request<chat::Message>) -> Result<Response<chat::Message>, Status> {
        let (caller, grant) = (caller(&request)?, grant(&request)?);
        let rate = self.limiter.sender(&caller, request.remote_addr());
        let room = metadata::room(request.metadata())?;
        grant.check(room.as_str(), RoomAction::Post)?;
        rate.try_take(RateKind::Send).map_err(ApiError::from)?;
        rate.check_creation(&self.engine, &room)?;
        let message = request.into_inner();
        let user = caller.user(&message.user, "user")?;
        let greeting = format!("Hello, {user}! Thanks for your message.");
        let draft = convert::draft_by(user, "", message.content)?;
        self.engine.send(&room, draft).await.map_err(ApiError::from)?;
        Ok(Response::new(convert::server_says(greeting)))
    }

    type BroadcastMessagesStream = ResponseStream<chat::Message>;

    async fn broadcast_messages(
        &self,
        request: Request<chat::Message>,
    ) -> Result<Response<Self::BroadcastMessagesStream>, Status> {
        let (caller, grant) = (caller(&request)?, grant(&request)?);
        let room = metadata::room(request.metadata())?;
        grant.check(room.as_str(), RoomAction::Read)?;
        // A replay holds up to a page of the room's history until its client reads it, so it
        // takes one of the sender's session slots: one client cannot hold thousands of pages.
        let rate = self.limiter.sender(&caller, request.remote_addr());
        let slot = rate.hold_session()?;
        rate.check_creation(&self.engine, &room)?;
        let replay = Replay::start(self.engine.clone(), room).await?.map(move |message| {
            let _held_until_the_replay_ends = &slot;
            message
        });
        let welcome = convert::server_says("Welcome to the broadcast!".into());
        let finished = convert::server_says("Broadcast finished.".into());
        let stream = futures::stream::once(futures::future::ready(Ok(welcome)))
            .chain(Box::pin(replay))
            .chain(futures::stream::once(futures::future::ready(Ok(finished))));
        Ok(Response::new(Box::pin(Expiry::of(&grant).stream(UntilShutdown::new(stream, &self.signal)))))
    }

    async fn upload_stream(
        &self,
        request: Request<Streaming<chat::Message>>,
    ) -> Result<Response<chat::Message>, Status> {
        let (caller, grant) = (caller(&request)?, grant(&request)?);
        let room = metadata::room(request.metadata())?;
        grant.check(room.as_str(), RoomAction::Post)?;
        let expiry = Expiry::of(&grant);
        let rate = self.limiter.sender(&caller, request.remote_addr());
        let _upload_slot = rate.hold_upload()?;
        let mut upload_bytes = rate.upload_bytes();
        rate.check_creation(&self.engine, &room)?;
        let mut inbound = request.into_inner();
        // Dropped on any error before commit: the upload is aborted and commits nothing (G6).
        let mut upload = self.engine.upload(&room);
        loop {
            let message = tokio::select! {
                _ = self.shutdown.cancelled() => return Err(ApiError::ShuttingDown.into()),
                _ = expiry.expired() => return Err(Expiry::error().into()),
                message = inbound.message() => message.map_err(inbound_status)?,
            };
            let Some(message) = message else { break };
            // Each message takes a send token; over the rate, the upload is paced.
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return Err(ApiError::ShuttingDown.into()),
                _ = expiry.expired() => return Err(Expiry::error().into()),
                _ = rate.take_paced(RateKind::Send) => {}
            }
            let user = caller.user(&message.user, "user")?;
            upload_bytes.reserve(message.content.len()).map_err(ApiError::from)?;
            upload.push(convert::draft_by(user, "", message.content)?).await.map_err(ApiError::from)?;
        }
        let receipt = upload.commit().await.map_err(ApiError::from)?;
        let last_user = receipt.last_user.as_ref().map(UserName::as_str).unwrap_or_default();
        let content = format!("Finished receiving stream from {last_user}. Got {} messages.", receipt.count);
        Ok(Response::new(convert::server_says(content)))
    }

    type ChatStreamStream = ResponseStream<chat::Message>;

    /// A live room chat. The first message's user is the stream's identity (on a server with
    /// `--tokens`, the token's user), so the session opens once it came; the stream carries
    /// every room message from the moment it joined, its own included, and ends OK once the
    /// client half-closed and its own messages have come back.
    async fn chat_stream(
        &self,
        request: Request<Streaming<chat::Message>>,
    ) -> Result<Response<Self::ChatStreamStream>, Status> {
        // Served by `shared_bytes::SeedService`, which sends each message's bytes made once for
        // every stream; this is the same stream, decoded, for a plain `ChatServiceServer`.
        Ok(Response::new(decoded(self.chat_stream_shared(request).await?)))
    }
}

impl SeedChat {
    /// A `ChatStream` call as a stream of each message's shared `chat.Message` bytes.
    pub(crate) async fn chat_stream_shared(
        &self,
        request: Request<Streaming<chat::Message>>,
    ) -> Result<ResponseStream<Arc<[u8]>>, Status> {
        let (caller, grant) = (caller(&request)?, grant(&request)?);
        let room = metadata::room(request.metadata())?;
        // Joins to read and posts: posting covers both.
        grant.check(room.as_str(), RoomAction::Post)?;
        let expiry = Expiry::of(&grant);
        let rate = self.limiter.sender(&caller, request.remote_addr());
        let mut inbound = request.into_inner();
        let first = tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => return Err(ApiError::ShuttingDown.into()),
            _ = expiry.expired() => return Err(Expiry::error().into()),
            first = inbound.message() => first.map_err(inbound_status)?,
        };
        // No message at all: nothing to join, end OK.
        let Some(first) = first else { return Ok(Box::pin(futures::stream::empty())) };
        let user = caller.user(&first.user, "user")?;
        let opening = vec![ClientFrame::Join { room: room.to_string(), after_seq: None }, post(&room, first.content)];
        let later = SeedInbound { caller, identity: user.clone(), room };
        let inbound = inbound.map(move |message| later.frame(message));
        let stream = SessionStream::open(
            &self.engine,
            user,
            inbound,
            opening,
            rate,
            // This protocol cannot refuse one message and go on: posts over the rate wait.
            RatePolicy::Pace,
            SeedMessages,
            &self.signal,
        )?;
        Ok(Box::pin(expiry.stream(stream)))
    }
}

/// What a ChatStream's later messages become: posts by the stream's identity.
struct SeedInbound {
    caller: Caller,
    identity: UserName,
    room: RoomName,
}

/// A room message as `chat.Message` bytes: the one conversion and encoding a shared message
/// gets, whichever ChatStream asks first (nothing for other events, which the seed's protocol
/// does not carry).
pub fn encode_seed_message(event: &RoomEvent) -> Vec<u8> {
    match event {
        RoomEvent::Message(message) => convert::seed_message(message).encode_to_vec(),
        _ => Vec::new(),
    }
}

impl SeedInbound {
    fn frame(&self, message: Result<chat::Message, Status>) -> Inbound {
        match message {
            Ok(message) => match self.same_user(&message.user) {
                Ok(()) => Inbound::Frame(post(&self.room, message.content)),
                Err(error) => Inbound::Malformed(error),
            },
            Err(status) => over_decode_limit(&status).map_or(Inbound::Gone, Inbound::Malformed),
        }
    }

    /// A later message must come from the stream's identity: the same name on an open server
    /// (another name is INVALID_ARGUMENT), the token's user or empty with `--tokens`.
    fn same_user(&self, claimed: &str) -> Result<(), ApiError> {
        match &self.caller {
            Caller::User(_) => self.caller.user(claimed, "user").map(drop),
            Caller::Anyone if claimed == self.identity.as_str() => Ok(()),
            Caller::Anyone => Err(ApiError::Malformed(format!(
                "user changed mid-stream from {:?} to {claimed:?}",
                self.identity.as_str()
            ))),
        }
    }
}

fn post(room: &RoomName, body: String) -> ClientFrame {
    ClientFrame::Send { room: room.to_string(), client_msg_id: String::new(), body }
}

/// A ChatStream's vocabulary: room messages as `{user, content}`, each encoded once for every
/// ChatStream in the room (the stream carries the encoded `chat.Message`s:
/// [`shared_bytes::SeedService`](super::shared_bytes::SeedService)); a lag or a refused frame
/// ends the stream with its status (the protocol has no place for them); joins, acks,
/// presence and typing are not carried.
struct SeedMessages;

impl SessionOutput for SeedMessages {
    type Item = Result<Arc<[u8]>, Status>;
    const ACKS: bool = false;

    fn item(&mut self, item: &SessionItem) -> Output<Self::Item> {
        let event = match item {
            SessionItem::Event(shared) if matches!(shared.event(), RoomEvent::Message(_)) => {
                return Output::Item(Ok(shared.encoded(EncodingSlot::SeedMessage.index(), encode_seed_message)));
            }
            SessionItem::Event(shared) => shared.event(),
            SessionItem::Frame(ServerFrame::Error { error, .. }) => {
                return Output::Last(Err(Status::new(status::code(frame_kind(error)), error.to_string())));
            }
            SessionItem::Frame(ServerFrame::Event(event)) => event,
            // Never asked for the end: it comes to `end`.
            SessionItem::Frame(_) | SessionItem::End(_) => return Output::Skip,
        };
        match event {
            RoomEvent::Message(_) => Output::Item(Ok(encode_seed_message(event).into())),
            RoomEvent::Lagged { lag, .. } => Output::Last(Err(ApiError::Lagged(*lag).into())),
            _ => Output::Skip,
        }
    }

    fn refusal(&mut self, _room: &str, _error: ApiError) -> Option<Self::Item> {
        // Never asked: posts over the rate are paced, not refused.
        None
    }

    fn end(&mut self, reason: Option<ApiError>) -> Option<Self::Item> {
        reason.map(|error| Err(error.into()))
    }
}
