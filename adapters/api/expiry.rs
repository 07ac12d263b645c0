//! Ending what a token opened when the token expires (a JWT's `exp`, plus the leeway).
//!
//! A token is checked when a call starts; a stream can outlive it. Every stream opened with an
//! expiring token is held to its [`Expiry`]: a response stream is wrapped in [`UntilExpiry`]
//! (Subscribe, Session, the seed's ChatStream and BroadcastMessages), an upload's loop waits on
//! [`Expiry::expired`] beside its next chunk, and a WebSocket connection runs under
//! [`Expiry::bound`]. Either way it ends with [`Expiry::error`], UNAUTHENTICATED (for a
//! WebSocket, the close frame of that kind). Tokens from the tokens file never expire, and then
//! both cost one branch.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::SystemTime;

use futures::{Stream, StreamExt as _};
use tokio::time::{Instant, Sleep};

use super::auth::Grant;
use super::error::ApiError;

/// When a call's token expires, on the runtime's clock.
#[derive(Clone, Copy, Debug)]
pub struct Expiry {
    at: Option<Instant>,
}

impl Expiry {
    /// The expiry of `grant`'s token (`None`: never). A token that has already expired is due
    /// at once; one too far ahead for the clock never is.
    pub fn of(grant: &Grant) -> Self {
        let at = grant.expires_at().and_then(|when| {
            let left = when.duration_since(SystemTime::now()).unwrap_or_default();
            Instant::now().checked_add(left)
        });
        Self { at }
    }

    /// Never.
    pub fn never() -> Self {
        Self { at: None }
    }

    /// Why a stream ended at its token's expiry.
    pub fn error() -> ApiError {
        ApiError::Unauthenticated("the token has expired; reconnect with a new one".into())
    }

    /// `stream`, ended with UNAUTHENTICATED at the expiry.
    pub fn stream<S>(&self, stream: S) -> UntilExpiry<S> {
        UntilExpiry { inner: stream, sleep: self.at.map(|at| Box::pin(tokio::time::sleep_until(at))), done: false }
    }

    /// Completes at the expiry, never without one: a branch for a handler's `select!` loop (an
    /// upload waiting for its next chunk).
    pub async fn expired(&self) {
        match self.at {
            None => std::future::pending().await,
            Some(at) => tokio::time::sleep_until(at).await,
        }
    }

    /// Runs `call` until the expiry, then drops it and answers [`Expiry::error`].
    pub async fn bound<F: Future>(&self, call: F) -> Result<F::Output, ApiError> {
        match self.at {
            None => Ok(call.await),
            Some(at) => tokio::time::timeout_at(at, call).await.map_err(|_| Self::error()),
        }
    }
}

/// A response stream that ends with UNAUTHENTICATED when its token expires: its last item is
/// [`Expiry::error`] as the stream's own error type (a gRPC status).
pub struct UntilExpiry<S> {
    inner: S,
    /// `None`: the token never expires.
    sleep: Option<Pin<Box<Sleep>>>,
    done: bool,
}

impl<S, T, E> Stream for UntilExpiry<S>
where
    S: Stream<Item = Result<T, E>> + Unpin,
    E: From<ApiError>,
{
    type Item = Result<T, E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(sleep) = this.sleep.as_mut()
            && sleep.as_mut().poll(cx).is_ready()
        {
            this.done = true;
            return Poll::Ready(Some(Err(Expiry::error().into())));
        }
        let next = this.inner.poll_next_unpin(cx);
        if let Poll::Ready(None) = next {
            this.done = true;
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use confab_engine::UserName;
    use futures::StreamExt;

    use super::*;
    use crate::api::error::ErrorKind;
    use crate::api::permissions::RoomPermissions;

    fn grant_expiring_in(left: Duration) -> Grant {
        let user = UserName::new("ann").expect("name");
        Grant::new(user, Arc::new(RoomPermissions::all()), Some(SystemTime::now() + left))
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_ends_unauthenticated_at_the_expiry() {
        let expiry = Expiry::of(&grant_expiring_in(Duration::from_secs(2)));
        let mut stream = expiry.stream(futures::stream::pending::<Result<u32, ApiError>>());
        let error = stream.next().await.expect("an item").expect_err("the expiry");
        assert_eq!(error.kind(), ErrorKind::Unauthenticated);
        assert!(stream.next().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_is_cut_at_the_expiry_and_never_without_one() {
        let expiry = Expiry::of(&grant_expiring_in(Duration::from_secs(1)));
        let cut = expiry.bound(futures::future::pending::<()>()).await.expect_err("cut");
        assert_eq!(cut.kind(), ErrorKind::Unauthenticated);
        assert_eq!(Expiry::never().bound(async { 7 }).await.expect("no expiry"), 7);
        let open = Expiry::of(&Grant::open()).stream(futures::stream::iter([Ok::<_, ApiError>(1)]));
        assert_eq!(open.map(|item| item.expect("ok")).collect::<Vec<_>>().await, vec![1]);
    }
}
