//! Send-rate limits, applied by the transport with the engine's sans-IO [`TokenBucket`].
//!
//! Scope, one bucket each:
//! - a confab.v1 `Session`: its posts; an over-rate post gets an `Error` frame (RESOURCE_EXHAUSTED)
//!   and the session goes on;
//! - the seed's `ChatStream`: paced instead of refused (the server stops reading the stream until
//!   a token is back), because that protocol has no way to refuse one message and go on;
//! - unary `Send` and `SayHello`: per authenticated user on a server with `--tokens`, so opening
//!   more connections buys nothing; per client connection on an open server, where names are
//!   free to invent. Over the rate: RESOURCE_EXHAUSTED. Uploads have their own limits instead.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use confab_engine::{RateLimited, SendRate, Time, TokenBucket, UserName};
use tokio::time::Instant;

use super::auth::Caller;
use super::status::ApiError;

/// The shared table is swept of buckets that have refilled (they are the same as new ones)
/// once it grows past twice its size after the last sweep, and never below this many: sweeping
/// costs one pass, so doubling keeps it amortised O(1) per call.
const SWEEP_LEN_MIN: usize = 1_024;

/// Whose unary sends share a bucket.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Sender {
    /// An authenticated user, over all their connections.
    User(UserName),
    /// One client connection of an open server.
    Connection(SocketAddr),
    /// A connection without a peer address (not TCP): all such share one bucket.
    Unknown,
}

#[derive(Debug)]
struct Buckets {
    by_sender: HashMap<Sender, TokenBucket>,
    sweep_at_len: usize,
}

/// The server's send-rate limiter: cheap to clone, shared by both services.
#[derive(Clone, Debug)]
pub struct SendLimiter {
    rate: SendRate,
    origin: Instant,
    buckets: Arc<Mutex<Buckets>>,
}

impl SendLimiter {
    /// A limiter allowing `rate` per sender.
    pub fn new(rate: SendRate) -> Self {
        let buckets = Buckets { by_sender: HashMap::new(), sweep_at_len: SWEEP_LEN_MIN };
        Self { rate, origin: Instant::now(), buckets: Arc::new(Mutex::new(buckets)) }
    }

    /// The rate each sender gets.
    pub fn rate(&self) -> SendRate {
        self.rate
    }

    fn now(&self) -> Time {
        Time::from_millis(u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    /// Takes a token for one unary send by `caller` on the connection from `peer`.
    pub fn check_unary(&self, caller: &Caller, peer: Option<SocketAddr>) -> Result<(), ApiError> {
        if self.rate.is_unlimited() {
            return Ok(());
        }
        let sender = match (caller, peer) {
            (Caller::User(user), _) => Sender::User(user.clone()),
            (Caller::Anyone, Some(peer)) => Sender::Connection(peer),
            (Caller::Anyone, None) => Sender::Unknown,
        };
        self.take_at(sender, self.now())
    }

    fn take_at(&self, sender: Sender, now: Time) -> Result<(), ApiError> {
        // A poisoned lock only means another call panicked mid-update; the table is still a
        // valid set of buckets.
        let mut buckets = self.buckets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let taken = buckets.by_sender.entry(sender).or_insert_with(|| TokenBucket::new(self.rate, now)).try_take(now);
        if buckets.by_sender.len() > buckets.sweep_at_len {
            buckets.by_sender.retain(|_, bucket| !bucket.is_full(now));
            buckets.sweep_at_len = (buckets.by_sender.len() * 2).max(SWEEP_LEN_MIN);
        }
        taken.map_err(ApiError::from)
    }

    /// A bucket of its own for one session or stream.
    pub fn session(&self) -> SessionRate {
        SessionRate { bucket: TokenBucket::new(self.rate, self.now()), limiter: self.clone() }
    }
}

impl Default for SendLimiter {
    /// The default rate ([`SendRate::default`]).
    fn default() -> Self {
        Self::new(SendRate::default())
    }
}

/// One session's bucket.
#[derive(Debug)]
pub struct SessionRate {
    bucket: TokenBucket,
    /// For the clock.
    limiter: SendLimiter,
}

impl SessionRate {
    /// Takes a token for one post now, or says when the next one is there.
    pub fn try_take(&mut self) -> Result<(), RateLimited> {
        self.bucket.try_take(self.limiter.now())
    }

    /// Waits until a token is there and takes it (pacing, for streams that cannot be refused).
    pub async fn take_paced(&mut self) {
        while let Err(limited) = self.try_take() {
            tokio::time::sleep(std::time::Duration::from_millis(limited.retry_after_ms)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(port: u16) -> Option<SocketAddr> {
        Some(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    #[test]
    fn an_open_server_limits_each_connection_on_its_own() {
        let limiter = SendLimiter::new(SendRate { per_second: 1, burst: 2 });
        for _ in 0..2 {
            limiter.check_unary(&Caller::Anyone, peer(1)).expect("within the burst");
        }
        let refused = limiter.check_unary(&Caller::Anyone, peer(1)).expect_err("over");
        assert!(matches!(refused, ApiError::RateLimited(_)));
        limiter.check_unary(&Caller::Anyone, peer(2)).expect("another connection has its own bucket");
    }

    #[test]
    fn a_user_shares_one_bucket_over_all_connections() {
        let limiter = SendLimiter::new(SendRate { per_second: 1, burst: 2 });
        let ann = Caller::User(UserName::new("ann").expect("name"));
        limiter.check_unary(&ann, peer(1)).expect("1");
        limiter.check_unary(&ann, peer(2)).expect("2");
        assert!(limiter.check_unary(&ann, peer(3)).is_err(), "a new connection buys nothing");
        let bob = Caller::User(UserName::new("bob").expect("name"));
        limiter.check_unary(&bob, peer(1)).expect("bob is not ann");
    }

    #[test]
    fn unlimited_keeps_no_table() {
        let limiter = SendLimiter::new(SendRate::UNLIMITED);
        for port in 0..5_000 {
            limiter.check_unary(&Caller::Anyone, peer(port)).expect("unlimited");
        }
        assert!(limiter.buckets.lock().expect("lock").by_sender.is_empty());
    }

    #[test]
    fn the_table_forgets_buckets_that_refilled() {
        let limiter = SendLimiter::new(SendRate { per_second: 1, burst: 2 });
        let len = || limiter.buckets.lock().expect("lock").by_sender.len();
        let connection = |port: u16| Sender::Connection(SocketAddr::from(([127, 0, 0, 1], port)));
        // Past the threshold at one moment: the first sweep (at 1,025) finds no refilled bucket
        // and sets the next one at twice the size, 2,050.
        let ports = u16::try_from(2 * (SWEEP_LEN_MIN + 1)).expect("small");
        for port in 0..ports {
            limiter.take_at(connection(port), Time::from_millis(0)).expect("within the burst");
        }
        assert_eq!(len(), usize::from(ports));
        // Seconds later every one of them is full again; the next sweep drops them all.
        limiter.take_at(connection(ports), Time::from_millis(5_000)).expect("within the burst");
        assert_eq!(len(), 1, "refilled buckets are forgotten");
        // A forgotten sender starts again with a full bucket, exactly as if it had been kept.
        limiter.take_at(connection(0), Time::from_millis(5_000)).expect("1");
        limiter.take_at(connection(0), Time::from_millis(5_000)).expect("2");
        assert!(limiter.take_at(connection(0), Time::from_millis(5_000)).is_err());
    }

    #[test]
    fn a_session_has_its_own_bucket() {
        let limiter = SendLimiter::new(SendRate { per_second: 1, burst: 1 });
        let mut one = limiter.session();
        let mut two = limiter.session();
        one.try_take().expect("first");
        assert!(one.try_take().is_err());
        two.try_take().expect("independent");
        limiter.check_unary(&Caller::Anyone, peer(1)).expect("sessions do not drain unary buckets");
    }
}
