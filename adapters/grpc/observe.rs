//! What every call did, for operators: a tower layer around all services that counts calls in
//! [`RpcMetrics`] (started, open, finished by status code, time to the response head) and logs
//! the events that matter with fields: a refusal with its code and reason at info (a server
//! fault at warn), a stream's opening and closing at debug. Nothing is logged per message.
//!
//! A call's final status is in the response headers when it fails before responding
//! ("trailers-only"), else in the trailers at the end of the body, so the body is wrapped to
//! see them. A body dropped before its trailers is a call the client cancelled.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::{Body, Frame, SizeHint};
use tonic::transport::server::TcpConnectInfo;
use tonic::{Code, Status};
use tower::{Layer, Service};
use tracing::{debug, info, trace, warn};

use crate::metrics::{RpcMetrics, RpcSeries};

/// Label of a path that is not one of [`RPCS`].
pub const UNKNOWN_RPC: &str = "unknown";

/// Every RPC the server serves (`package.Service/Method`) and whether it streams. Only these
/// become metric labels; `tests` checks the list against the services' descriptors.
pub const RPCS: &[(&str, bool)] = &[
    ("confab.v1.Chat/Send", false),
    ("confab.v1.Chat/History", false),
    ("confab.v1.Chat/ListRooms", false),
    ("confab.v1.Chat/Subscribe", true),
    ("confab.v1.Chat/Upload", true),
    ("confab.v1.Chat/Session", true),
    ("chat.ChatService/SayHello", false),
    ("chat.ChatService/BroadcastMessages", true),
    ("chat.ChatService/UploadStream", true),
    ("chat.ChatService/ChatStream", true),
    ("grpc.health.v1.Health/Check", false),
    ("grpc.health.v1.Health/Watch", true),
    ("grpc.reflection.v1.ServerReflection/ServerReflectionInfo", true),
    ("grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", true),
];

/// The RPC a request path names: its place in [`RPCS`] (`RPCS.len()` for an unknown path), its
/// label, and whether it streams.
fn rpc_index_of(path: &str) -> (usize, &'static str, bool) {
    let name = path.strip_prefix('/').unwrap_or(path);
    match RPCS.iter().position(|(rpc, _)| *rpc == name) {
        Some(index) => (index, RPCS[index].0, RPCS[index].1),
        None => (RPCS.len(), UNKNOWN_RPC, false),
    }
}

/// Each RPC's metric series, resolved on its first call and kept (index as in
/// [`rpc_index_of`]): a call then looks up nothing.
#[derive(Clone, Debug)]
struct SeriesTable {
    metrics: RpcMetrics,
    series: Arc<[OnceLock<Arc<RpcSeries>>]>,
}

impl SeriesTable {
    fn new(metrics: RpcMetrics) -> Self {
        Self { metrics, series: (0..=RPCS.len()).map(|_| OnceLock::new()).collect() }
    }

    fn get(&self, index: usize, rpc: &'static str) -> Arc<RpcSeries> {
        Arc::clone(self.series[index].get_or_init(|| Arc::new(self.metrics.series(rpc))))
    }
}

/// A status code's name as the gRPC spec writes it (the metrics' `code` label).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The layer: add it to the tonic server builder.
#[derive(Clone, Debug)]
pub struct ObserveLayer {
    series: SeriesTable,
}

impl ObserveLayer {
    /// Counts calls into `metrics`.
    pub fn new(metrics: RpcMetrics) -> Self {
        Self { series: SeriesTable::new(metrics) }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe { inner, series: self.series.clone() }
    }
}

/// The service the layer wraps around the server's routes.
#[derive(Clone, Debug)]
pub struct Observe<S> {
    inner: S,
    series: SeriesTable,
}

impl<S, RequestBody, ResponseBody> Service<http::Request<RequestBody>> for Observe<S>
where
    S: Service<http::Request<RequestBody>, Response = http::Response<ResponseBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<ObservedBody<ResponseBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<RequestBody>) -> Self::Future {
        let (index, rpc, streaming) = rpc_index_of(request.uri().path());
        // TLS or not, the server records a `TcpConnectInfo` (see `server::GrpcConnection`).
        let peer = request.extensions().get::<TcpConnectInfo>().and_then(TcpConnectInfo::remote_addr);
        // Dropped with the future if the call ends before responding (the client cancelled).
        let mut call = Call::start(self.series.get(index, rpc), rpc, streaming, peer);
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            call.series.responded(call.started.elapsed());
            let (parts, body) = response.into_parts();
            if let Some(status) = Status::from_header_map(&parts.headers) {
                // Trailers-only: the call failed (or finished) without a body.
                call.finish(&status);
            }
            Ok(http::Response::from_parts(parts, ObservedBody { inner: body, call }))
        })
    }
}

/// One call in progress. Dropping it closes the call; if no status was seen, the client
/// cancelled it.
struct Call {
    series: Arc<RpcSeries>,
    rpc: &'static str,
    streaming: bool,
    peer: Option<SocketAddr>,
    started: Instant,
    finished: bool,
}

impl Call {
    fn start(series: Arc<RpcSeries>, rpc: &'static str, streaming: bool, peer: Option<SocketAddr>) -> Self {
        series.started();
        if streaming {
            debug!(rpc, peer = peer.map(display), "stream opened");
        }
        Self { series, rpc, streaming, peer, started: Instant::now(), finished: false }
    }

    fn finish(&mut self, status: &Status) {
        if self.finished {
            return;
        }
        self.finished = true;
        let code = status.code();
        let code_name = code_name(code);
        self.series.finished(code as usize, code_name);
        let (rpc, peer, elapsed_ms) = (self.rpc, self.peer, self.started.elapsed().as_millis());
        let reason = status.message();
        match code {
            Code::Ok if self.streaming => debug!(rpc, peer = peer.map(display), elapsed_ms, "stream closed"),
            Code::Ok => trace!(rpc, peer = peer.map(display), elapsed_ms, "call finished"),
            // The client went away, or the server is stopping (logged once, not per stream).
            Code::Cancelled | Code::Unavailable => {
                debug!(rpc, peer = peer.map(display), code = code_name, reason, "call ended")
            }
            Code::Internal | Code::Unknown | Code::DataLoss => {
                warn!(rpc, peer = peer.map(display), code = code_name, reason, "call failed")
            }
            _ => info!(rpc, peer = peer.map(display), code = code_name, reason, "refused"),
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if !self.finished {
            self.finish(&Status::cancelled("the client went away before the call finished"));
        }
        self.series.closed();
    }
}

/// A response body that reports the call's final status from its trailers.
pub struct ObservedBody<B> {
    inner: B,
    /// Closed when the body is dropped: after its trailers, or when the client went away.
    call: Call,
}

impl<B> Body for ObservedBody<B>
where
    B: Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(status) = frame.trailers_ref().and_then(Status::from_header_map) {
                self.call.finish(&status);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    /// Every method of every service the server registers, from their descriptors.
    fn served_methods() -> Vec<String> {
        let sets = [
            crate::grpc::proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ];
        let mut methods = Vec::new();
        for encoded in sets {
            let set = prost_types::FileDescriptorSet::decode(encoded).expect("descriptor set decodes");
            for file in set.file {
                for service in &file.service {
                    for method in &service.method {
                        methods.push(format!("{}.{}/{}", file.package(), service.name(), method.name()));
                    }
                }
            }
        }
        methods.sort();
        methods
    }

    #[test]
    fn the_rpc_list_names_every_served_method_once() {
        let mut listed: Vec<String> = RPCS.iter().map(|(rpc, _)| (*rpc).to_owned()).collect();
        listed.sort();
        assert_eq!(listed, served_methods());
    }

    #[test]
    fn unknown_paths_share_one_label() {
        let rpc_of = |path| {
            let (index, rpc, streaming) = rpc_index_of(path);
            assert_eq!(RPCS.get(index).map_or(UNKNOWN_RPC, |(rpc, _)| *rpc), rpc, "the index names the rpc");
            (rpc, streaming)
        };
        assert_eq!(rpc_of("/confab.v1.Chat/Send"), ("confab.v1.Chat/Send", false));
        assert_eq!(rpc_of("/confab.v1.Chat/Subscribe"), ("confab.v1.Chat/Subscribe", true));
        assert_eq!(rpc_of("/confab.v1.Chat/Nope"), (UNKNOWN_RPC, false));
        assert_eq!(rpc_of("/x/y"), (UNKNOWN_RPC, false));
    }
}
