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
    done: bool,
}

impl<S> UntilShutdown<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, shutdown: &CancellationToken) -> Self {
        Self { inner, cancelled: Box::pin(shutdown.clone().cancelled_owned()), done: false }
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
        if self.cancelled.as_mut().poll(cx).is_ready() {
            self.done = true;
            return Poll::Ready(Some(Err(ApiError::ShuttingDown.into())));
        }
        let polled = Pin::new(&mut self.inner).poll_next(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            // A stream ends after its first error status.
            self.done = true;
        }
        polled
    }
}
