//! The server's shutdown as the streams that check it on every poll see it: a
//! [`ShutdownSignal`] per server, a `ShutdownWatch` per stream. The session pump
//! ([`super::session_stream`]) checks one; so do the gRPC transport's response streams.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Waker};

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

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

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::task::Poll;

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
