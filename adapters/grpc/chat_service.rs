//! `chat.ChatService`, the seed's proto, with confab's room semantics (DESIGN.md, "The gRPC
//! API"): the room comes from the `room` metadata key (default `lobby`).

use confab_actors::{Engine, SessionEvents, SessionSender};
use confab_engine::{ClientFrame, RoomError, RoomEvent, RoomName, ServerFrame, UserName};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::auth::{Caller, caller};
use super::confab_service::{RESPONSE_BUFFER_LEN, ResponseStream};
use super::convert;
use super::proto::chat;
use super::rate::{SendLimiter, SessionRate};
use super::shutdown::UntilShutdown;
use super::status::{ApiError, frame_code, inbound_status};

/// The seed's `chat.ChatService`.
pub struct SeedChat {
    engine: Engine,
    shutdown: CancellationToken,
    limiter: SendLimiter,
}

impl SeedChat {
    /// A service over `engine` whose streams end when `shutdown` is cancelled, with the default
    /// send rate.
    pub fn new(engine: Engine, shutdown: CancellationToken) -> Self {
        Self { engine, shutdown, limiter: SendLimiter::default() }
    }

    /// The same service with `limiter`'s send rate (shared with the other service).
    pub fn with_limiter(self, limiter: SendLimiter) -> Self {
        Self { limiter, ..self }
    }

    /// The room's retained history, oldest first, up to what it held when the call began.
    async fn replay(&self, room: &RoomName) -> Result<Vec<chat::Message>, ApiError> {
        let mut replay = Vec::new();
        let mut after_seq = 0;
        let mut last_seq = None;
        loop {
            let page = match self.engine.history(room, after_seq, 0).await {
                Ok(page) => page,
                Err(confab_actors::EngineError::Room(RoomError::NotFound)) => return Ok(replay),
                Err(error) => return Err(error.into()),
            };
            let end = *last_seq.get_or_insert(page.last_seq);
            for message in page.messages.iter().take_while(|m| m.seq <= end) {
                replay.push(convert::seed_message(message));
                after_seq = message.seq;
            }
            if page.messages.is_empty() || after_seq >= end {
                return Ok(replay);
            }
        }
    }
}

#[tonic::async_trait]
impl chat::chat_service_server::ChatService for SeedChat {
    async fn say_hello(&self, request: Request<chat::Message>) -> Result<Response<chat::Message>, Status> {
        let caller = caller(&request)?;
        self.limiter.check_unary(&caller, request.remote_addr())?;
        let room = convert::metadata_room(request.metadata())?;
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
        let room = convert::metadata_room(request.metadata())?;
        let mut messages = vec![convert::server_says("Welcome to the broadcast!".into())];
        messages.extend(self.replay(&room).await?);
        messages.push(convert::server_says("Broadcast finished.".into()));
        let stream = futures::stream::iter(messages.into_iter().map(Ok));
        Ok(Response::new(Box::pin(UntilShutdown::new(stream, &self.shutdown))))
    }

    async fn upload_stream(
        &self,
        request: Request<Streaming<chat::Message>>,
    ) -> Result<Response<chat::Message>, Status> {
        let caller = caller(&request)?;
        let room = convert::metadata_room(request.metadata())?;
        let mut inbound = request.into_inner();
        // Dropped on any error before commit: the upload is aborted and commits nothing (G6).
        let mut upload = self.engine.upload(&room);
        loop {
            let message = tokio::select! {
                _ = self.shutdown.cancelled() => return Err(ApiError::ShuttingDown.into()),
                message = inbound.message() => message.map_err(inbound_status)?,
            };
            let Some(message) = message else { break };
            let user = caller.user(&message.user, "user")?;
            upload.push(convert::draft_by(user, "", message.content)?).await.map_err(ApiError::from)?;
        }
        let receipt = upload.commit().await.map_err(ApiError::from)?;
        let last_user = receipt.last_user.as_ref().map(UserName::as_str).unwrap_or_default();
        let content = format!("Finished receiving stream from {last_user}. Got {} messages.", receipt.count);
        Ok(Response::new(convert::server_says(content)))
    }

    type ChatStreamStream = ResponseStream<chat::Message>;

    async fn chat_stream(
        &self,
        request: Request<Streaming<chat::Message>>,
    ) -> Result<Response<Self::ChatStreamStream>, Status> {
        let caller = caller(&request)?;
        let room = convert::metadata_room(request.metadata())?;
        let inbound = request.into_inner();
        let (responses, stream) = mpsc::channel(RESPONSE_BUFFER_LEN);
        let chat = ChatStream {
            engine: self.engine.clone(),
            room,
            responses,
            shutdown: self.shutdown.clone(),
            caller,
            rate: self.limiter.session(),
        };
        tokio::spawn(chat.run(inbound));
        Ok(Response::new(Box::pin(ReceiverStream::new(stream))))
    }
}

/// One ChatStream call: a live room chat. The first message's user is the stream's identity
/// (on a server with `--tokens`, the token's user); the stream carries every room message from
/// the moment it joined, its own included, and ends OK once the client half-closed and its own
/// messages have come back.
struct ChatStream {
    engine: Engine,
    room: RoomName,
    responses: mpsc::Sender<Result<chat::Message, Status>>,
    shutdown: CancellationToken,
    caller: Caller,
    /// Paces the stream's messages: this protocol cannot refuse one message and go on.
    rate: SessionRate,
}

impl ChatStream {
    async fn run(mut self, mut inbound: Streaming<chat::Message>) {
        let first = tokio::select! {
            _ = self.shutdown.cancelled() => return self.fail(ApiError::ShuttingDown.into()).await,
            first = inbound.message() => first,
        };
        let first = match first {
            Ok(Some(first)) => first,
            // No message at all: nothing to join, end OK.
            Ok(None) => return,
            Err(status) => return self.fail(inbound_status(status)).await,
        };
        let user = match self.caller.user(&first.user, "user") {
            Ok(user) => user,
            Err(error) => return self.fail(error.into()).await,
        };
        let (frames, events) = self.engine.open_session(user.clone());
        let join = ClientFrame::Join { room: self.room.to_string(), after_seq: None };
        if frames.send(join).await.is_err() {
            return self.fail(ApiError::Engine(confab_actors::EngineError::SessionClosed).into()).await;
        }
        self.rate.take_paced().await;
        if frames.send(self.post(first.content)).await.is_err() {
            return self.fail(ApiError::Engine(confab_actors::EngineError::SessionClosed).into()).await;
        }
        self.pump(inbound, frames, events, user).await;
    }

    async fn pump(
        mut self,
        mut inbound: Streaming<chat::Message>,
        frames: SessionSender,
        mut events: SessionEvents,
        user: UserName,
    ) {
        // Dropping the sender without closing disconnects the session.
        let mut frames = Some(frames);
        // Made once, on a child token of this stream's own (see `transport::pump_session`).
        let cancelled = self.shutdown.child_token().cancelled_owned();
        tokio::pin!(cancelled);
        loop {
            tokio::select! {
                _ = &mut cancelled => return self.fail(ApiError::ShuttingDown.into()).await,
                message = inbound.message(), if frames.is_some() => match message {
                    Ok(Some(message)) => {
                        if let Err(error) = self.same_user(&user, &message.user) {
                            return self.fail(error.into()).await;
                        }
                        self.rate.take_paced().await;
                        let sent = match frames.as_ref() {
                            Some(frames) => frames.send(self.post(message.content)).await,
                            None => Ok(()),
                        };
                        if sent.is_err() {
                            return;
                        }
                    }
                    Ok(None) => {
                        if let Some(frames) = frames.take() {
                            let _ = frames.close().await;
                        }
                    }
                    Err(_) => return,
                },
                frame = events.next() => {
                    let Some(frame) = frame else {
                        if let Some(stalled) = events.stalled() {
                            return self.fail(ApiError::Stalled(stalled.clone()).into()).await;
                        }
                        return;
                    };
                    let reply = match &frame {
                        ServerFrame::Event(RoomEvent::Message(message)) => Ok(convert::seed_message(message)),
                        ServerFrame::Event(RoomEvent::Lagged { lag, .. }) => Err(ApiError::Lagged(*lag).into()),
                        ServerFrame::Error { error, .. } => Err(Status::new(frame_code(error), error.to_string())),
                        // Joins, acks, presence and typing have no place in the seed's protocol.
                        _ => continue,
                    };
                    let terminal = reply.is_err();
                    if self.responses.send(reply).await.is_err() || terminal {
                        return;
                    }
                }
            }
        }
    }

    /// A later message must come from the stream's identity: the same name on an open server
    /// (another name is INVALID_ARGUMENT), the token's user or empty with `--tokens`.
    fn same_user(&self, identity: &UserName, claimed: &str) -> Result<(), ApiError> {
        match &self.caller {
            Caller::User(_) => self.caller.user(claimed, "user").map(drop),
            Caller::Anyone if claimed == identity.as_str() => Ok(()),
            Caller::Anyone => {
                Err(ApiError::Malformed(format!("user changed mid-stream from {:?} to {claimed:?}", identity.as_str())))
            }
        }
    }

    fn post(&self, body: String) -> ClientFrame {
        ClientFrame::Send { room: self.room.to_string(), client_msg_id: String::new(), body }
    }

    async fn fail(&self, status: Status) {
        let _ = self.responses.send(Err(status)).await;
    }
}
