//! Ending open streams when the server shuts down: each response stream is wrapped so that it
//! yields one UNAVAILABLE status and ends as soon as shutdown starts, instead of holding the
//! server's graceful shutdown open. [`UntilShutdown`] wraps a typed stream in a handler;
//! [`EndAtShutdown`] wraps a whole service whose handlers are not ours (reflection).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures::Stream;
use http_body::{Body as HttpBody, Frame};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::Status;
use tonic::server::NamedService;
use tower::Service;

use crate::api::error::ApiError;

/// The server's shutdown as its busiest streams check it: one atomic load per poll.
/// tokio-util's `CancellationToken::is_cancelled` takes the token's lock, which a thousand
/// streams polling a thousand times a second made 8% of a fan-out's CPU. One task (spawned by
/// the first stream that asks) waits on the token, sets a flag, then cancels a second token
/// that waiting streams registered on, so a stream woken by it always finds the flag set.
#[derive(Clone, Debug)]
pub struct ShutdownSignal {
    token: CancellationToken,
    watched: Arc<OnceLock<Watched>>,
}

#[derive(Clone, Debug)]
struct Watched {
    /// Set once `token` is cancelled.
    flag: Arc<AtomicBool>,
    /// Cancelled right after `flag` is set: what waiting streams are woken by.
    wake: CancellationToken,
}

impl ShutdownSignal {
    /// The signal of `token`.
    pub fn new(token: &CancellationToken) -> Self {
        Self { token: token.clone(), watched: Arc::new(OnceLock::new()) }
    }

    /// The flag and its wake-up token; the first call (on the server's runtime) starts the
    /// task that sets them.
    fn watched(&self) -> &Watched {
        self.watched.get_or_init(|| {
            let watched = Watched { flag: Arc::new(AtomicBool::new(false)), wake: CancellationToken::new() };
            let (token, set) = (self.token.clone(), watched.clone());
            tokio::spawn(async move {
                token.cancelled().await;
                set.flag.store(true, Ordering::Release);
                set.wake.cancel();
            });
            watched
        })
    }
}

/// Shutdown as one stream sees it: [`ShutdownWatch::started`] is one atomic load, and the
/// stream registers its waker once, the first time it would wait (again only if its task
/// changes), on a child token of its own.
pub(crate) struct ShutdownWatch {
    flag: Arc<AtomicBool>,
    wake: CancellationToken,
    /// The wait and the waker it was polled with.
    waiting: Option<(Pin<Box<WaitForCancellationFutureOwned>>, Waker)>,
}

impl ShutdownWatch {
    pub(crate) fn new(signal: &ShutdownSignal) -> Self {
        let watched = signal.watched();
        Self { flag: Arc::clone(&watched.flag), wake: watched.wake.child_token(), waiting: None }
    }

    /// Whether shutdown has started (registers nothing).
    pub(crate) fn started(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// Whether shutdown has started; if not, `cx` is woken when it does. Call it only when
    /// the stream itself is pending.
    pub(crate) fn poll_started(&mut self, cx: &mut Context<'_>) -> bool {
        if self.started() {
            return true;
        }
        if let Some((_, waker)) = &self.waiting
            && waker.will_wake(cx.waker())
        {
            // Registered with this task already: the wake-up comes to it.
            return false;
        }
        let mut wait = match self.waiting.take() {
            Some((wait, _)) => wait,
            None => Box::pin(self.wake.clone().cancelled_owned()),
        };
        if wait.as_mut().poll(cx).is_ready() {
            return true;
        }
        self.waiting = Some((wait, cx.waker().clone()));
        false
    }
}

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

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn a_waiting_watch_is_woken_by_the_shutdown_and_then_reports_it() {
        let token = CancellationToken::new();
        let signal = ShutdownSignal::new(&token);
        let mut watch = ShutdownWatch::new(&signal);
        assert!(!watch.started());
        let waiting = tokio::spawn(async move {
            // Pending until the shutdown, then ready: the registration woke this task.
            poll_fn(|cx| if watch.poll_started(cx) { Poll::Ready(()) } else { Poll::Pending }).await;
            watch.started()
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "no shutdown yet");
        token.cancel();
        let started = tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await;
        assert!(started.expect("woken").expect("task"), "the flag is set before waiters are woken");
        // A watch made after the shutdown sees it at once.
        assert!(ShutdownWatch::new(&signal).started());
    }
}
