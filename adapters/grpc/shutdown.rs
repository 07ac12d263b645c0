//! Ending open streams when the server shuts down: each response stream is wrapped so that it
//! yields one UNAVAILABLE status and ends as soon as shutdown starts, instead of holding the
//! server's graceful shutdown open.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::Status;

use super::status::ApiError;

/// A response stream that ends with UNAVAILABLE when shutdown starts.
pub struct UntilShutdown<S> {
    inner: S,
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Yield what `inner` has ready before ending (see [`UntilShutdown::ready_first`]).
    ready_first: bool,
    done: bool,
}

impl<S> UntilShutdown<S> {
    /// Wraps `inner`; at shutdown it ends at once, even if `inner` has items ready (a busy
    /// stream must not delay shutdown).
    pub fn new(inner: S, shutdown: &CancellationToken) -> Self {
        Self { inner, cancelled: Box::pin(shutdown.clone().cancelled_owned()), ready_first: false, done: false }
    }

    /// Wraps `inner`; at shutdown it first yields what `inner` has ready, then ends. For streams
    /// that report the shutdown itself (health's NOT_SERVING), set just before it starts.
    pub fn ready_first(inner: S, shutdown: &CancellationToken) -> Self {
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

    fn shutdown_started(&mut self, cx: &mut Context<'_>) -> bool {
        self.cancelled.as_mut().poll(cx).is_ready()
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
        let ending = !this.ready_first && this.shutdown_started(cx);
        if !ending {
            let polled = this.poll_inner(cx);
            if polled.is_ready() {
                return polled;
            }
        }
        if ending || this.shutdown_started(cx) {
            this.done = true;
            return Poll::Ready(Some(Err(ApiError::ShuttingDown.into())));
        }
        Poll::Pending
    }
}
