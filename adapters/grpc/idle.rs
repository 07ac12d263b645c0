//! Closing gRPC connections that carry no call (grpc-go's `MaxConnectionIdle`).
//!
//! A client that answers the server's keepalive pings but never calls holds a descriptor and
//! ~31 KiB of buffers forever; thousands of them are cheap to open and the connection caps only
//! bound how many. tonic has no idle timeout, so the server keeps its own count:
//!
//! - [`IdleLayer`] counts each connection's calls in progress ([`CallCount`]): a call starts
//!   when its request arrives and ends when its response body is dropped (after the trailers,
//!   or when the client reset the stream).
//! - [`IdleClose`] wraps the connection's socket: once no call has been in progress for
//!   `--grpc-connection-idle`, its next read reports end of file, and hyper closes the
//!   connection. Keepalive pings do not count as activity; a client reconnects on its next call,
//!   as it does after grpc-go's GOAWAY.
//!
//! The timer is looked at only when a read would wait, so a busy connection pays nothing.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tonic::codegen::http;
use tonic::transport::server::TcpConnectInfo;
use tower::{Layer, Service};
use tracing::debug;

use crate::net::write_through;

/// A gRPC connection with no call in progress for this long is closed
/// (`--grpc-connection-idle`). Long enough that a client between bursts keeps its connection,
/// short enough that abandoned connections do not pile up.
pub const GRPC_CONNECTION_IDLE: Duration = Duration::from_secs(15 * 60);

/// The calls in progress on one connection, and since when it has had none.
#[derive(Debug)]
pub struct CallCount {
    /// The connection's start: `idle_since_ms` counts from here.
    origin: Instant,
    open: AtomicUsize,
    /// When `open` last became 0, in milliseconds since `origin`.
    idle_since_ms: AtomicU64,
}

impl CallCount {
    fn new() -> Self {
        Self { origin: Instant::now(), open: AtomicUsize::new(0), idle_since_ms: AtomicU64::new(0) }
    }

    fn started(self: &Arc<Self>) -> CallGuard {
        self.open.fetch_add(1, Ordering::AcqRel);
        CallGuard { count: Arc::clone(self) }
    }

    /// Since when the connection has had no call, or `None` while one is in progress.
    fn idle_since(&self) -> Option<Instant> {
        if self.open.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(self.origin + Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire)))
    }
}

/// One call in progress: dropping it ends the call.
struct CallGuard {
    count: Arc<CallCount>,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        // The time is stored before the count drops, so a reader that sees 0 sees it.
        let now = u64::try_from(self.count.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.count.idle_since_ms.store(now, Ordering::Release);
        self.count.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What the server records about a gRPC connection: its addresses, and its call count for
/// [`IdleLayer`] (which hands the addresses on as tonic's own [`TcpConnectInfo`]).
#[derive(Clone, Debug)]
pub struct GrpcConnectInfo {
    /// The addresses, as tonic records them for a bare TCP stream.
    pub tcp: TcpConnectInfo,
    calls: Arc<CallCount>,
}

/// A connection's socket that reads as closed once the connection has been idle too long.
#[derive(Debug)]
pub struct IdleClose<Io> {
    io: Io,
    calls: Arc<CallCount>,
    idle_max: Duration,
    /// Woken at the earliest moment the connection could be idle for `idle_max`.
    check: Pin<Box<Sleep>>,
}

impl<Io> IdleClose<Io> {
    /// Wraps a new connection's socket: idle from now.
    pub fn new(io: Io, idle_max: Duration) -> Self {
        let calls = Arc::new(CallCount::new());
        let check = Box::pin(tokio::time::sleep_until(calls.origin + idle_max));
        Self { io, calls, idle_max, check }
    }

    /// The socket inside.
    pub fn get_ref(&self) -> &Io {
        &self.io
    }

    /// What tonic records about the connection, for [`IdleLayer`].
    pub fn connect_info_with(&self, tcp: TcpConnectInfo) -> GrpcConnectInfo {
        GrpcConnectInfo { tcp, calls: Arc::clone(&self.calls) }
    }

    /// Whether the connection has been idle for `idle_max`; if not, sets the timer for the
    /// next moment it could be.
    fn poll_idle(&mut self, context: &mut Context<'_>) -> Poll<()> {
        while self.check.as_mut().poll(context).is_ready() {
            let due = match self.calls.idle_since() {
                Some(since) if since + self.idle_max <= Instant::now() => return Poll::Ready(()),
                Some(since) => since + self.idle_max,
                // A call is in progress: look again one idle time from now at the earliest.
                None => Instant::now() + self.idle_max,
            };
            self.check.as_mut().reset(due);
        }
        Poll::Pending
    }
}

impl<Io: AsyncRead + Unpin> AsyncRead for IdleClose<Io> {
    fn poll_read(self: Pin<&mut Self>, context: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.io).poll_read(context, buf) {
            Poll::Pending => match this.poll_idle(context) {
                Poll::Ready(()) => {
                    debug!(idle = ?this.idle_max, "closing a gRPC connection with no call (--grpc-connection-idle)");
                    // End of file: hyper closes the connection.
                    Poll::Ready(Ok(()))
                }
                Poll::Pending => Poll::Pending,
            },
            ready => ready,
        }
    }
}

write_through!(io, impl<Io: AsyncWrite + Unpin> AsyncWrite for IdleClose<Io>);

/// Counts every call on its connection, and hands the connection's addresses on as tonic's
/// [`TcpConnectInfo`] (what `Request::remote_addr` and the other layers read). Outermost layer.
#[derive(Clone, Copy, Debug, Default)]
pub struct IdleLayer;

impl<S> Layer<S> for IdleLayer {
    type Service = CountCalls<S>;

    fn layer(&self, inner: S) -> CountCalls<S> {
        CountCalls { inner }
    }
}

/// The service [`IdleLayer`] wraps around the server's routes.
#[derive(Clone, Debug)]
pub struct CountCalls<S> {
    inner: S,
}

impl<S, RequestBody, ResponseBody> Service<http::Request<RequestBody>> for CountCalls<S>
where
    S: Service<http::Request<RequestBody>, Response = http::Response<ResponseBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<CountedBody<ResponseBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<RequestBody>) -> Self::Future {
        let call = match request.extensions_mut().remove::<GrpcConnectInfo>() {
            Some(info) => {
                request.extensions_mut().insert(info.tcp);
                Some(info.calls.started())
            }
            None => None,
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            // Dropped with this future if the client resets the call before the response.
            let call = call;
            let response = response.await?;
            Ok(response.map(|inner| CountedBody { inner, _call: call }))
        })
    }
}

/// A response body that holds its call open until it is dropped.
pub struct CountedBody<B> {
    inner: B,
    _call: Option<CallGuard>,
}

impl<B: Body + Unpin> Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
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
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_reads_as_closed_only_after_the_idle_time_with_no_call() {
        let (client, server) = tokio::io::duplex(64);
        let mut connection = IdleClose::new(server, Duration::from_secs(10));
        let info = connection.connect_info_with(TcpConnectInfo { local_addr: None, remote_addr: None });
        let mut buf = [0u8; 8];
        let read = |connection: &mut IdleClose<_>, buf: &mut [u8; 8]| {
            let mut read_buf = ReadBuf::new(buf);
            let waker = futures::task::noop_waker();
            let outcome = Pin::new(connection).poll_read(&mut Context::from_waker(&waker), &mut read_buf);
            (outcome.is_ready(), read_buf.filled().len())
        };
        assert_eq!(read(&mut connection, &mut buf), (false, 0), "new: not idle yet");
        // A call opens at 5 s and lasts 20 s: the connection is not idle while it runs.
        tokio::time::advance(Duration::from_secs(5)).await;
        let call = info.calls.started();
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(read(&mut connection, &mut buf), (false, 0), "a call in progress keeps it open");
        drop(call);
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(read(&mut connection, &mut buf), (false, 0), "idle for 9 s of 10");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(read(&mut connection, &mut buf), (true, 0), "idle for 10 s: end of file");
        drop(client);
    }
}
