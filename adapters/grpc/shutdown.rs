//! Ending open gRPC streams when the server shuts down: each response stream is wrapped so that
//! it yields one UNAVAILABLE status and ends as soon as shutdown starts, instead of holding the
//! server's graceful shutdown open. [`UntilShutdown`] wraps a typed stream in a handler;
//! [`EndAtShutdown`] wraps a whole service whose handlers are not ours (reflection). Both watch
//! the server's [`ShutdownSignal`].

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use http_body::{Body as HttpBody, Frame};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::server::NamedService;
use tower::Service;

use crate::api::error::ApiError;
use crate::api::shutdown::{ShutdownSignal, ShutdownWatch};

/// A response stream that ends with UNAVAILABLE when shutdown starts.
pub struct UntilShutdown<S> {
    inner: S,
    shutdown: ShutdownWatch,
    /// Yield what `inner` has ready before ending (see [`UntilShutdown::ready_first`]).
    ready_first: bool,
    done: bool,
}

impl<S> UntilShutdown<S> {
    /// Wraps `inner`; at shutdown it ends at once, even if `inner` has items ready (a busy
    /// stream must not delay shutdown).
    pub fn new(inner: S, shutdown: &ShutdownSignal) -> Self {
        Self { inner, shutdown: ShutdownWatch::new(shutdown), ready_first: false, done: false }
    }

    /// Wraps `inner`; at shutdown it first yields what `inner` has ready, then ends. For streams
    /// that report the shutdown itself (health's NOT_SERVING), set just before it starts.
    pub fn ready_first(inner: S, shutdown: &ShutdownSignal) -> Self {
        Self { ready_first: true, ..Self::new(inner, shutdown) }
    }
}

impl<S, T> UntilShutdown<S>
where
    S: Stream<Item = Result<T, Status>> + Unpin,
{
    fn poll_inner(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<T, Status>>> {
        let polled = Pin::new(&mut self.inner).poll_next(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            // A stream ends after its first error status.
            self.done = true;
        }
        polled
    }
}

impl<S, T> Stream for UntilShutdown<S>
where
    S: Stream<Item = Result<T, Status>> + Unpin,
{
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let this = &mut *self;
        let ending = !this.ready_first && this.shutdown.started();
        if !ending {
            let polled = this.poll_inner(cx);
            if polled.is_ready() {
                return polled;
            }
        }
        if ending || this.shutdown.poll_started(cx) {
            this.done = true;
            return Poll::Ready(Some(Err(ApiError::ShuttingDown.into())));
        }
        Poll::Pending
    }
}

/// Wraps a whole service whose stream handlers this crate does not own (server reflection):
/// at shutdown each call's response ends with UNAVAILABLE trailers, like [`UntilShutdown`] does
/// for a typed stream, and its request stream ends, so a handler still reading it (and holding
/// the HTTP/2 stream open) finishes. Unary responses are never cut: only use it on a service
/// whose open calls are all streams.
#[derive(Clone, Debug)]
pub struct EndAtShutdown<S> {
    inner: S,
    shutdown: ShutdownSignal,
}

impl<S> EndAtShutdown<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, shutdown: &CancellationToken) -> Self {
        Self { inner, shutdown: ShutdownSignal::new(shutdown) }
    }
}

impl<S: NamedService> NamedService for EndAtShutdown<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, ResponseBody> Service<http::Request<tonic::body::Body>> for EndAtShutdown<S>
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<ResponseBody>>,
    S::Future: Send + 'static,
    ResponseBody: HttpBody<Data = Bytes> + Unpin + Send + 'static,
    ResponseBody::Error: Into<tonic::codegen::StdError>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let request = request.map(|body| tonic::body::Body::new(BodyUntilShutdown::new(body, &self.shutdown, false)));
        let response = self.inner.call(request);
        let shutdown = self.shutdown.clone();
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| tonic::body::Body::new(BodyUntilShutdown::new(body, &shutdown, true))))
        })
    }
}

/// A body that ends at shutdown instead of waiting for more.
struct BodyUntilShutdown<B> {
    /// `None` once ended: dropping the inner body releases its side of the HTTP/2 stream.
    inner: Option<B>,
    shutdown: ShutdownWatch,
    /// A response ends with UNAVAILABLE trailers; a request just ends.
    status_at_shutdown: bool,
}

impl<B> BodyUntilShutdown<B> {
    fn new(inner: B, shutdown: &ShutdownSignal, status_at_shutdown: bool) -> Self {
        Self { inner: Some(inner), shutdown: ShutdownWatch::new(shutdown), status_at_shutdown }
    }
}

impl<B> HttpBody for BodyUntilShutdown<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else { return Poll::Ready(None) };
        if !this.shutdown.started() {
            let polled = Pin::new(inner).poll_frame(cx);
            if matches!(polled, Poll::Ready(None)) {
                this.inner = None;
            }
            if polled.is_ready() || !this.shutdown.poll_started(cx) {
                return polled;
            }
        }
        this.inner = None;
        if !this.status_at_shutdown {
            return Poll::Ready(None);
        }
        let mut trailers = http::HeaderMap::new();
        // Only fails for a message that cannot be encoded; this one is plain ASCII.
        let _ = Status::from(ApiError::ShuttingDown).add_header(&mut trailers);
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(HttpBody::is_end_stream)
    }
}
