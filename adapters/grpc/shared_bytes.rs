//! Encode once, share the bytes. A room publishes each event once; this is how a thousand
//! streams of one room send it without a thousand conversions and encodings:
//!
//! - [`SharedBytesCodec`] is a tonic codec whose encode side writes a protobuf message that was
//!   encoded before (the bytes a [`SharedEvent`](confab_actors::SharedEvent) carries), and
//!   whose decode side is prost's.
//! - [`ConfabService`] is `confab.v1.Chat` with `Subscribe` (each event's `RoomEvent`) and
//!   `Session` (each room event's `ServerFrame`; the session's own frames are encoded per
//!   stream) served through that codec; [`SeedService`] is the seed's `chat.ChatService` with
//!   `ChatStream` (each room message's `chat.Message`) served the same way. Every other method
//!   goes through the generated service, behind the same interceptor (auth).
//!
//! tonic's generated services fix one codec per service (prost's), so these methods are
//! routed here by their paths; the request, the response and the status are the generated
//! method's, byte for byte on the wire.

use std::convert::Infallible;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::BufMut;
use confab_actors::{RoomEvents, StreamItem};
use futures::Stream;
use futures::future::BoxFuture;
use prost::Message;
use tonic::body::Body;
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};
use tonic::server::{Grpc, NamedService, ServerStreamingService, StreamingService};
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;
use tower::Service;

use super::chat_service::SeedChat;
use super::confab_service::{ConfabChat, ResponseStream};
use crate::api::auth::Authenticator;
use crate::api::convert;
use crate::api::error::ApiError;
use crate::api::quota::Held;
use crate::api::shutdown::ShutdownWatch;
use crate::api::transport::EncodingSlot;
use crate::proto::chat::{self, chat_service_server::ChatServiceServer};
use crate::proto::confab_v1 as v1;
use crate::proto::confab_v1::chat_server::ChatServer;

/// The gRPC path of `confab.v1.Chat/Subscribe`.
pub const SUBSCRIBE_PATH: &str = "/confab.v1.Chat/Subscribe";

/// The encoding slot of a `confab.v1.RoomEvent` in a published event's encodings.
pub const CONFAB_V1_ROOM_EVENT_SLOT: usize = EncodingSlot::ConfabV1RoomEvent.index();

/// The buffer a `Subscribe` stream's encoder starts with, in bytes. tonic's default, 8 KiB,
/// is most of an idle stream's memory; a chat event and its frame header fit in 1 KiB, and the
/// buffer grows for a bigger one (or a batch) when it comes.
pub const SUBSCRIBE_ENCODE_BUFFER_BYTES: usize = 1024;

/// How much a `Subscribe` stream encodes before it hands a batch to HTTP/2 (tonic's default):
/// everything ready up to this goes out in one DATA frame.
pub const SUBSCRIBE_YIELD_THRESHOLD_BYTES: usize = 32 * 1024;

/// A codec that writes pre-encoded protobuf messages and decodes requests with prost.
pub struct SharedBytesCodec<D> {
    _decode: PhantomData<fn() -> D>,
}

impl<D> Default for SharedBytesCodec<D> {
    fn default() -> Self {
        Self { _decode: PhantomData }
    }
}

impl<D: Message + Default + Send + 'static> Codec for SharedBytesCodec<D> {
    type Encode = Arc<[u8]>;
    type Decode = D;
    type Encoder = SharedBytesEncoder;
    type Decoder = <ProstCodec<(), D> as Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        SharedBytesEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<(), D>::raw_decoder(BufferSettings::default())
    }
}

/// Writes a message's bytes as they are: they were encoded once, for every stream.
#[derive(Debug, Default)]
pub struct SharedBytesEncoder;

impl Encoder for SharedBytesEncoder {
    type Item = Arc<[u8]>;
    type Error = Status;

    fn encode(&mut self, item: Arc<[u8]>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(SUBSCRIBE_ENCODE_BUFFER_BYTES, SUBSCRIBE_YIELD_THRESHOLD_BYTES)
    }
}

/// Shared bytes back to messages: what a generated service's method returns when it is called
/// without its shared-bytes route (a plain `ChatServer` or `ChatServiceServer`).
pub(crate) fn decoded<M, S>(shared: S) -> ResponseStream<M>
where
    M: Message + Default + Send + 'static,
    S: Stream<Item = Result<Arc<[u8]>, Status>> + Send + 'static,
{
    Box::pin(futures::StreamExt::map(shared, |item| {
        item.and_then(|bytes| {
            M::decode(&bytes[..]).map_err(|error| Status::internal(format!("re-decoding a message: {error}")))
        })
    }))
}

/// A `Subscribe` stream: each event's shared bytes, then a status if the room closed the
/// stream for stalling, or UNAVAILABLE at shutdown.
pub struct SharedSubscribeStream {
    events: RoomEvents,
    shutdown: ShutdownWatch,
    done: bool,
    /// The room's slot in its subscriber's quota, given back when the stream is dropped.
    _held: Option<Held>,
}

impl SharedSubscribeStream {
    pub(crate) fn new(events: RoomEvents, shutdown: ShutdownWatch) -> Self {
        Self { events, shutdown, done: false, _held: None }
    }

    /// The same stream, holding `held` until it is dropped.
    pub(crate) fn holding(self, held: Held) -> Self {
        Self { _held: Some(held), ..self }
    }
}

impl Stream for SharedSubscribeStream {
    type Item = Result<Arc<[u8]>, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if this.shutdown.started() {
            this.done = true;
            return Poll::Ready(Some(Err(ApiError::ShuttingDown.into())));
        }
        match this.events.poll_next_shared(cx) {
            Poll::Ready(Some(StreamItem::Next(event))) => {
                Poll::Ready(Some(Ok(event.encoded(CONFAB_V1_ROOM_EVENT_SLOT, convert::encode_room_event))))
            }
            // Its last item: a status if the room closed it for stalling or stopped under it.
            Poll::Ready(Some(StreamItem::End(end))) => {
                this.done = true;
                Poll::Ready(ApiError::from_end(end).map(|error| Err(error.into())))
            }
            // Not reached: the end came first.
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending if this.shutdown.poll_started(cx) => {
                this.done = true;
                Poll::Ready(Some(Err(ApiError::ShuttingDown.into())))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// `Subscribe` as a server-streaming method of shared bytes.
struct SubscribeMethod(Arc<ConfabChat>);

impl ServerStreamingService<v1::SubscribeRequest> for SubscribeMethod {
    type Response = Arc<[u8]>;
    type ResponseStream = ResponseStream<Arc<[u8]>>;
    type Future = BoxFuture<'static, Result<Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, request: Request<v1::SubscribeRequest>) -> Self::Future {
        let chat = Arc::clone(&self.0);
        Box::pin(async move {
            let stream = chat.subscribe_shared(request).await?;
            Ok(Response::new(Box::pin(stream) as ResponseStream<Arc<[u8]>>))
        })
    }
}

/// The `Subscribe` route: the generated method's framing and limits, the shared-bytes codec.
#[derive(Clone)]
pub struct SubscribeRoute(Arc<ConfabChat>);

impl Service<http::Request<Body>> for SubscribeRoute {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let method = SubscribeMethod(Arc::clone(&self.0));
        Box::pin(async move {
            let mut grpc = Grpc::new(SharedBytesCodec::<v1::SubscribeRequest>::default());
            Ok(grpc.server_streaming(method, request).await)
        })
    }
}

/// The gRPC path of `confab.v1.Chat/Session`.
pub const SESSION_PATH: &str = "/confab.v1.Chat/Session";

/// The gRPC path of the seed's `chat.ChatService/ChatStream`.
pub const CHAT_STREAM_PATH: &str = "/chat.ChatService/ChatStream";

/// `Session` as a bidirectional method of shared bytes.
#[derive(Clone)]
pub struct SessionMethod(Arc<ConfabChat>);

impl StreamingService<v1::ClientFrame> for SessionMethod {
    type Response = Arc<[u8]>;
    type ResponseStream = ResponseStream<Arc<[u8]>>;
    type Future = BoxFuture<'static, Result<Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, request: Request<Streaming<v1::ClientFrame>>) -> Self::Future {
        let chat = Arc::clone(&self.0);
        Box::pin(async move { Ok(Response::new(chat.session_shared(request).await?)) })
    }
}

/// `ChatStream` as a bidirectional method of shared bytes.
#[derive(Clone)]
pub struct ChatStreamMethod(Arc<SeedChat>);

impl StreamingService<chat::Message> for ChatStreamMethod {
    type Response = Arc<[u8]>;
    type ResponseStream = ResponseStream<Arc<[u8]>>;
    type Future = BoxFuture<'static, Result<Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, request: Request<Streaming<chat::Message>>) -> Self::Future {
        let seed = Arc::clone(&self.0);
        Box::pin(async move { Ok(Response::new(seed.chat_stream_shared(request).await?)) })
    }
}

/// A bidirectional method of shared bytes (`M`, reading `D`s) as a route: the generated
/// method's framing and limits, the shared-bytes codec.
pub struct BidiRoute<M, D> {
    method: M,
    _decode: PhantomData<fn() -> D>,
}

impl<M: Clone, D> Clone for BidiRoute<M, D> {
    fn clone(&self) -> Self {
        Self { method: self.method.clone(), _decode: PhantomData }
    }
}

impl<M, D> Service<http::Request<Body>> for BidiRoute<M, D>
where
    M: StreamingService<D, Response = Arc<[u8]>> + Clone + Send + 'static,
    M::ResponseStream: Send + 'static,
    M::Future: Send,
    D: Message + Default + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let method = self.method.clone();
        Box::pin(async move {
            let mut grpc = Grpc::new(SharedBytesCodec::<D>::default());
            Ok(grpc.streaming(method, request).await)
        })
    }
}

/// A service whose method at `path` is served by `route`, and every other by `rest`: how a
/// shared-bytes route sits beside a generated service (each behind its own interceptor).
#[derive(Clone)]
pub struct Routed<R, G> {
    path: &'static str,
    route: R,
    rest: G,
}

impl<R, G: NamedService> NamedService for Routed<R, G> {
    const NAME: &'static str = G::NAME;
}

impl<R, G, RB, GB> Service<http::Request<Body>> for Routed<R, G>
where
    R: Service<http::Request<Body>, Response = http::Response<RB>, Error = Infallible>,
    R::Future: Send + 'static,
    G: Service<http::Request<Body>, Response = http::Response<GB>, Error = Infallible>,
    G::Future: Send + 'static,
    RB: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    RB::Error: Into<tonic::codegen::StdError>,
    GB: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    GB::Error: Into<tonic::codegen::StdError>,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Both are always ready (the generated services and the routes hold no capacity).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if request.uri().path() == self.path {
            let response = self.route.call(request);
            Box::pin(async move { Ok(response.await?.map(Body::new)) })
        } else {
            let response = self.rest.call(request);
            Box::pin(async move { Ok(response.await?.map(Body::new)) })
        }
    }
}

/// `confab.v1.Chat`: `Subscribe` (each event's `RoomEvent`) and `Session` (each room event's
/// `ServerFrame`) through their shared-bytes routes, the rest through the generated service,
/// all behind the same interceptor.
pub type ConfabService = Routed<
    InterceptedService<BidiRoute<SessionMethod, v1::ClientFrame>, Authenticator>,
    Routed<
        InterceptedService<SubscribeRoute, Authenticator>,
        InterceptedService<ChatServer<ConfabChat>, Authenticator>,
    >,
>;

/// The service over `chat`, every call checked by `auth`.
pub fn confab_service(chat: ConfabChat, auth: Authenticator) -> ConfabService {
    let shared = Arc::new(chat.clone());
    let subscribe = InterceptedService::new(SubscribeRoute(Arc::clone(&shared)), auth.clone());
    let session = BidiRoute { method: SessionMethod(shared), _decode: PhantomData };
    let rest =
        Routed { path: SUBSCRIBE_PATH, route: subscribe, rest: ChatServer::with_interceptor(chat, auth.clone()) };
    Routed { path: SESSION_PATH, route: InterceptedService::new(session, auth), rest }
}

/// The seed's `chat.ChatService`: `ChatStream` (each room message's `chat.Message`) through its
/// shared-bytes route, the rest through the generated service, both behind the same interceptor.
pub type SeedService = Routed<
    InterceptedService<BidiRoute<ChatStreamMethod, chat::Message>, Authenticator>,
    InterceptedService<ChatServiceServer<SeedChat>, Authenticator>,
>;

/// The service over `seed`, every call checked by `auth`.
pub fn seed_service(seed: SeedChat, auth: Authenticator) -> SeedService {
    let chat_stream = BidiRoute { method: ChatStreamMethod(Arc::new(seed.clone())), _decode: PhantomData };
    let rest = ChatServiceServer::with_interceptor(seed, auth.clone());
    Routed { path: CHAT_STREAM_PATH, route: InterceptedService::new(chat_stream, auth), rest }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use confab_actors::SharedEvent;
    use confab_engine::RoomEvent;
    use prost::Message;

    use super::*;
    use crate::api::convert::tests::{events, published};

    #[test]
    fn shared_seed_messages_decode_to_exactly_the_per_stream_conversion() {
        use crate::api::transport::EncodingSlot;
        use crate::grpc::chat_service::encode_seed_message;
        let slot = EncodingSlot::SeedMessage.index();
        for event in events() {
            let RoomEvent::Message(message) = &event else { continue };
            let shared = published(event.clone());
            let first = shared.encoded(slot, encode_seed_message);
            assert_eq!(chat::Message::decode(&first[..]).expect("decodes"), convert::seed_message(message));
            let again = shared.encoded(slot, |_| panic!("encoded a second time"));
            assert!(Arc::ptr_eq(&first, &again), "every ChatStream gets the same bytes");
        }
    }

    #[test]
    fn shared_bytes_decode_to_exactly_the_per_stream_conversion() {
        for event in events() {
            let expected = convert::room_event(&event);
            let own = SharedEvent::Own(event.clone()).encoded(CONFAB_V1_ROOM_EVENT_SLOT, convert::encode_room_event);
            assert_eq!(v1::RoomEvent::decode(&own[..]).expect("decodes"), expected, "own {event:?}");
            if matches!(event, RoomEvent::Lagged { .. } | RoomEvent::Subscribed { .. }) {
                continue; // never published: each subscriber's own
            }
            let shared = published(event.clone());
            let first = shared.encoded(CONFAB_V1_ROOM_EVENT_SLOT, convert::encode_room_event);
            assert_eq!(v1::RoomEvent::decode(&first[..]).expect("decodes"), expected, "shared {event:?}");
            let again = shared.clone().encoded(CONFAB_V1_ROOM_EVENT_SLOT, |_| panic!("encoded a second time"));
            assert!(Arc::ptr_eq(&first, &again), "every reader gets the same bytes");
        }
    }
}
