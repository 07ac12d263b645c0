//! What every call did, for operators: a tower layer around all services that counts calls in
//! [`RpcMetrics`] (started, open, finished by status code, time to the response head) and logs
//! the events that matter with fields: a server fault at warn, a refusal with its code and
//! reason at debug and in a summary at info, at most one line per
//! [`REFUSAL_SUMMARY_INTERVAL`] (see [`RefusalLog`]), a stream's opening and closing at debug.
//! Nothing is logged per message.
//!
//! A call's final status is in the response headers when it fails before responding
//! ("trailers-only"), else in the trailers at the end of the body, so the body is wrapped to
//! see them. A body dropped before its trailers is a call the client cancelled. The layer is
//! also where tonic's own OUT_OF_RANGE for a message over its decoding limit becomes
//! RESOURCE_EXHAUSTED and a message that does not decode INVALID_ARGUMENT ([`client_fault`]),
//! for every RPC alike.

use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use tonic::transport::server::TcpConnectInfo;
use tonic::{Code, Status};
use tower::{Layer, Service};
use tracing::{debug, info, trace, warn};

use super::status::client_fault;
use crate::metrics::{RpcMetrics, RpcSeries};

/// Refusals are summed up in at most one info line per this interval; each refusal itself is
/// logged at debug. A flood of refused calls (no token, over a limit) then writes one line a
/// second, not one per call.
pub const REFUSAL_SUMMARY_INTERVAL: Duration = Duration::from_secs(1);

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

/// The refusal a summary line shows as its example: the first of its interval.
#[derive(Debug)]
struct Example {
    rpc: &'static str,
    peer: Option<SocketAddr>,
    code: Code,
    reason: String,
}

/// The refusals not yet summed up.
#[derive(Debug, Default)]
struct Pending {
    /// Per status code (indexed by the code's number).
    counts: [u64; 17],
    total: u64,
    example: Option<Example>,
    /// When the first of them came.
    since: Option<Instant>,
    /// When the last summary line was written.
    last_summary: Option<Instant>,
    /// A task will write the summary when the interval is over.
    scheduled: bool,
}

/// Refusals, logged at debug one by one and summed up at info at most once per
/// [`REFUSAL_SUMMARY_INTERVAL`]: "refused 812 calls in the last 1.0s: UNAUTHENTICATED×810,
/// RESOURCE_EXHAUSTED×2", with the first one's rpc, peer, code and reason as fields. A refusal
/// after a quiet interval is summed up at once; later ones wait for the interval's end (a
/// timer task). What is pending when the server's services are dropped is written then.
#[derive(Debug, Default)]
pub struct RefusalLog {
    pending: Mutex<Pending>,
}

impl RefusalLog {
    fn refused(self: &Arc<Self>, rpc: &'static str, peer: Option<SocketAddr>, code: Code, reason: &str) {
        debug!(rpc, peer = peer.map(display), code = code_name(code), reason, "refused");
        let now = Instant::now();
        let mut pending = self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        pending.counts[code as usize] += 1;
        pending.total += 1;
        pending.since.get_or_insert(now);
        if pending.example.is_none() {
            pending.example = Some(Example { rpc, peer, code, reason: reason.to_owned() });
        }
        let due = pending.last_summary.map_or(now, |last| last + REFUSAL_SUMMARY_INTERVAL);
        if due <= now {
            Self::summarise(&mut pending, now);
        } else if !pending.scheduled {
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return Self::summarise(&mut pending, now);
            };
            pending.scheduled = true;
            let log = Arc::downgrade(self);
            runtime.spawn(async move {
                tokio::time::sleep_until(due.into()).await;
                if let Some(log) = Weak::upgrade(&log) {
                    let mut pending = log.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    pending.scheduled = false;
                    Self::summarise(&mut pending, Instant::now());
                }
            });
        }
    }

    /// Writes the summary line of what is pending, if anything is.
    fn summarise(pending: &mut Pending, now: Instant) {
        let Some(example) = pending.example.take() else { return };
        let (total, since) = (pending.total, pending.since.take().unwrap_or(now));
        let mut codes = String::new();
        for (number, &count) in pending.counts.iter().enumerate().filter(|(_, count)| **count > 0) {
            let separator = if codes.is_empty() { "" } else { ", " };
            let _ = write!(codes, "{separator}{}×{count}", code_name(Code::from_i32(number as i32)));
        }
        pending.counts = [0; 17];
        pending.total = 0;
        pending.last_summary = Some(now);
        let seconds = now.duration_since(since).as_secs_f64().max(REFUSAL_SUMMARY_INTERVAL.as_secs_f64());
        let calls = if total == 1 { "call" } else { "calls" };
        info!(
            refused = total,
            codes = codes.as_str(),
            rpc = example.rpc,
            peer = example.peer.map(display),
            code = code_name(example.code),
            reason = example.reason.as_str(),
            "refused {total} {calls} in the last {seconds:.1}s: {codes}"
        );
    }
}

impl Drop for RefusalLog {
    fn drop(&mut self) {
        let pending = self.pending.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner());
        Self::summarise(pending, Instant::now());
    }
}

/// The layer: add it to the tonic server builder.
#[derive(Clone, Debug)]
pub struct ObserveLayer {
    series: SeriesTable,
    refusals: Arc<RefusalLog>,
}

impl ObserveLayer {
    /// Counts calls into `metrics`.
    pub fn new(metrics: RpcMetrics) -> Self {
        Self { series: SeriesTable::new(metrics), refusals: Arc::default() }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe { inner, series: self.series.clone(), refusals: Arc::clone(&self.refusals) }
    }
}

/// The service the layer wraps around the server's routes.
#[derive(Clone, Debug)]
pub struct Observe<S> {
    inner: S,
    series: SeriesTable,
    refusals: Arc<RefusalLog>,
}

/// The status in `headers` (trailers-only headers, or trailers), with tonic's answers to a
/// client's own mistakes rewritten there ([`client_fault`]): the decode limit's OUT_OF_RANGE
/// as RESOURCE_EXHAUSTED, a message that does not decode as INVALID_ARGUMENT.
fn final_status(headers: &mut HeaderMap) -> Option<Status> {
    let status = Status::from_header_map(headers)?;
    let Some(status) = client_fault(&status) else { return Some(status) };
    // Only a message that cannot be a header value fails here; ours are plain text.
    let _ = status.add_header(headers);
    Some(status)
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
        let refusals = Arc::clone(&self.refusals);
        let mut call = Call::start(self.series.get(index, rpc), rpc, streaming, peer, refusals);
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            call.series.responded(call.started.elapsed());
            let (mut parts, body) = response.into_parts();
            if let Some(status) = final_status(&mut parts.headers) {
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
    refusals: Arc<RefusalLog>,
}

impl Call {
    fn start(
        series: Arc<RpcSeries>,
        rpc: &'static str,
        streaming: bool,
        peer: Option<SocketAddr>,
        refusals: Arc<RefusalLog>,
    ) -> Self {
        series.started();
        if streaming {
            debug!(rpc, peer = peer.map(display), "stream opened");
        }
        Self { series, rpc, streaming, peer, started: Instant::now(), finished: false, refusals }
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
            _ => self.refusals.refused(rpc, peer, code, reason),
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
        let mut polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &mut polled
            && let Some(status) = frame.trailers_mut().and_then(final_status)
        {
            self.call.finish(&status);
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
            crate::proto::FILE_DESCRIPTOR_SET,
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
