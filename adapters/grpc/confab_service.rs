//! `confab.v1.Chat`: each RPC is a thin translation into `Engine` calls.

use std::pin::Pin;

use confab_actors::{Engine, Upload};
use confab_engine::RoomName;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::convert;
use super::proto::confab_v1 as v1;
use super::shutdown::UntilShutdown;
use super::status::{ApiError, inbound_status};

/// A boxed response stream.
pub type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Frames buffered between a session and its gRPC response stream. Small: the session's own
/// outbound queue is the real buffer; this only decouples the two tasks.
pub(crate) const RESPONSE_BUFFER_LEN: usize = 64;

/// The `confab.v1.Chat` service.
pub struct ConfabChat {
    engine: Engine,
    shutdown: CancellationToken,
}

impl ConfabChat {
    /// A service over `engine` whose streams end when `shutdown` is cancelled.
    pub fn new(engine: Engine, shutdown: CancellationToken) -> Self {
        Self { engine, shutdown }
    }
}

#[tonic::async_trait]
impl v1::chat_server::Chat for ConfabChat {
    async fn send(&self, request: Request<v1::SendRequest>) -> Result<Response<v1::SendResponse>, Status> {
        let request = request.into_inner();
        let room = convert::room(&request.room)?;
        let draft = convert::draft(&request.user, &request.client_msg_id, request.body)?;
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
        let request = request.into_inner();
        let room = convert::room(&request.room)?;
        let user = if request.user.is_empty() { None } else { Some(convert::user(&request.user)?) };
        let events = self.engine.subscribe(&room, user, request.after_seq).await.map_err(ApiError::from)?;
        // The events, then a status if the room closed the stream for stalling.
        let stream = futures::stream::unfold(Some(events), |events| async move {
            let mut events = events?;
            match events.next().await {
                Some(event) => Some((Ok(convert::room_event(&event)), Some(events))),
                None => events.stalled().map(|stalled| (Err(ApiError::Stalled(stalled.clone()).into()), None)),
            }
        });
        Ok(Response::new(Box::pin(UntilShutdown::new(Box::pin(stream), &self.shutdown))))
    }

    async fn upload(
        &self,
        request: Request<Streaming<v1::UploadChunk>>,
    ) -> Result<Response<v1::UploadReceipt>, Status> {
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
            current.push(convert::draft(&chunk.user, "", chunk.body)?).await.map_err(ApiError::from)?;
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
        let user = convert::metadata_user(request.metadata())?;
        let inbound = request.into_inner();
        let (frames, session_events) = self.engine.open_session(user);
        let (responses, stream) = mpsc::channel(RESPONSE_BUFFER_LEN);
        tokio::spawn(drive_session(inbound, frames, session_events, responses, self.shutdown.clone()));
        Ok(Response::new(Box::pin(ReceiverStream::new(stream))))
    }
}

/// Pumps one Session RPC: client frames into the session, session frames out. Ends when the
/// session finishes (after the client half-closed), the client goes away, or shutdown starts.
async fn drive_session(
    mut inbound: Streaming<v1::ClientFrame>,
    frames: confab_actors::SessionSender,
    mut events: confab_actors::SessionEvents,
    responses: mpsc::Sender<Result<v1::ServerFrame, Status>>,
    shutdown: CancellationToken,
) {
    // Dropping the sender without closing disconnects the session.
    let mut frames = Some(frames);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = responses.send(Err(ApiError::ShuttingDown.into())).await;
                return;
            }
            frame = inbound.message(), if frames.is_some() => match frame {
                Ok(Some(frame)) => {
                    let sent = match convert::client_frame(frame) {
                        Ok(frame) => frames.as_ref().map(|frames| frames.send(frame)),
                        Err(error) => {
                            let _ = responses.send(Err(error.into())).await;
                            return;
                        }
                    };
                    if let Some(sent) = sent {
                        if sent.await.is_err() {
                            return;
                        }
                    }
                }
                Ok(None) => {
                    if let Some(frames) = frames.take() {
                        let _ = frames.close().await;
                    }
                }
                Err(_) => return,
            },
            event = events.next() => match event {
                Some(frame) => {
                    if responses.send(Ok(convert::server_frame(&frame))).await.is_err() {
                        return;
                    }
                }
                None => {
                    if let Some(stalled) = events.stalled() {
                        let _ = responses.send(Err(ApiError::Stalled(stalled.clone()).into())).await;
                    }
                    return;
                }
            },
        }
    }
}
