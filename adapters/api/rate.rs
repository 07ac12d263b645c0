//! Send-rate limits, applied by the transport with the engine's sans-IO [`TokenBucket`].
//!
//! One bucket of each [`RateKind`] per sender, shared by everything the sender does on both
//! gRPC services and the web port (when they share one [`SendLimiter`]):
//! - the sender is the authenticated user on a server with `--tokens`, so opening more
//!   connections, sessions or streams buys nothing; on an open server, where names are free to
//!   invent, it is the client connection (its peer address; a WebSocket is its own connection);
//! - [`RateKind::Send`]: unary `Send` and `SayHello` (over the rate: RESOURCE_EXHAUSTED),
//!   `Session` and WebSocket posts (an `Error` frame, and the session goes on), the seed's
//!   `ChatStream` messages and every uploaded message (paced: the server stops reading the
//!   stream until a token is back, because that protocol cannot refuse one message and go on,
//!   and an upload is all or nothing and may hold more messages than the burst);
//! - [`RateKind::Typing`] and [`RateKind::Membership`] (joins and leaves): session frames, with
//!   their own smaller rates, refused like posts (a `ChatStream`'s join is paced).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use confab_actors::Engine;
use confab_engine::{ClientFrame, RateKind, RateLimited, RoomName, SendRate, Time, TokenBucket, UserName, limits};
use tokio::time::Instant;

use super::auth::Caller;
use super::error::ApiError;
use super::quota::{Held, QuotaLimits, Quotas, UploadBytes};

/// The shared table is swept of buckets that have refilled (they are the same as new ones)
/// once it grows past twice its size after the last sweep, and never below this many: sweeping
/// costs one pass, so doubling keeps it amortised O(1) per call.
const SWEEP_LEN_MIN: usize = 1_024;

/// The flag that sets a kind's rate, for refusals.
pub fn rate_flag(kind: RateKind) -> &'static str {
    match kind {
        RateKind::Send => "--sends-per-second-max",
        RateKind::Typing => "--typing-per-second-max",
        RateKind::Membership => "--joins-per-second-max",
        RateKind::Creation => "--rooms-created-per-second-max",
    }
}

/// The rate of each kind; [`RateLimits::default`] uses the engine's named constants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimits {
    /// Posts, unary sends and uploaded messages.
    pub send: SendRate,
    /// Typing notices.
    pub typing: SendRate,
    /// Joins and leaves together.
    pub membership: SendRate,
    /// Rooms created.
    pub creation: SendRate,
}

impl RateLimits {
    /// `send` for posts, with the default typing and join rates.
    pub fn sending(send: SendRate) -> Self {
        Self { send, ..Self::default() }
    }

    /// No limit of any kind.
    pub const UNLIMITED: RateLimits = RateLimits {
        send: SendRate::UNLIMITED,
        typing: SendRate::UNLIMITED,
        membership: SendRate::UNLIMITED,
        creation: SendRate::UNLIMITED,
    };

    fn of(&self, kind: RateKind) -> SendRate {
        match kind {
            RateKind::Send => self.send,
            RateKind::Typing => self.typing,
            RateKind::Membership => self.membership,
            RateKind::Creation => self.creation,
        }
    }
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            send: SendRate::default(),
            typing: SendRate { per_second: limits::TYPING_PER_SECOND_MAX, burst: limits::TYPING_BURST_MAX },
            membership: SendRate { per_second: limits::JOINS_PER_SECOND_MAX, burst: limits::JOIN_BURST_MAX },
            creation: SendRate {
                per_second: limits::ROOMS_CREATED_PER_SECOND_MAX,
                burst: limits::ROOM_CREATION_BURST_MAX,
            },
        }
    }
}

/// The bucket kind a session frame takes a token from, and its room; `None` for frames that
/// are free (acks).
pub fn frame_rate(frame: &ClientFrame) -> Option<(RateKind, &str)> {
    match frame {
        ClientFrame::Send { room, .. } => Some((RateKind::Send, room)),
        ClientFrame::Typing { room } => Some((RateKind::Typing, room)),
        ClientFrame::Join { room, .. } | ClientFrame::Leave { room } => Some((RateKind::Membership, room)),
        ClientFrame::Ack { .. } => None,
    }
}

/// Who shares a bucket (and a set of quotas).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Sender {
    /// An authenticated user, over all their connections.
    User(UserName),
    /// One client connection of an open server.
    Connection(SocketAddr),
    /// One connection known by a number of its own (an open server's WebSocket).
    Socket(u64),
    /// A connection without a peer address (not TCP): all such share one bucket.
    Unknown,
}

#[derive(Debug)]
struct Buckets {
    /// Each sender's bucket of each kind, made on first use (looked up without cloning the
    /// sender's name: this runs on every post).
    by_sender: HashMap<Sender, [Option<TokenBucket>; RATE_KINDS]>,
    sweep_at_len: usize,
}

/// How many [`RateKind`]s there are: one bucket slot each per sender.
const RATE_KINDS: usize = 4;

fn slot(kind: RateKind) -> usize {
    match kind {
        RateKind::Send => 0,
        RateKind::Typing => 1,
        RateKind::Membership => 2,
        RateKind::Creation => 3,
    }
}

/// The server's rate limiter: cheap to clone, shared by both services and the web port.
#[derive(Clone)]
pub struct SendLimiter {
    rates: RateLimits,
    origin: Instant,
    buckets: Arc<Mutex<Buckets>>,
    /// Numbers [`Sender::Socket`]s.
    sockets: Arc<AtomicU64>,
    /// What each sender holds, against its quotas.
    quotas: Quotas,
}

impl std::fmt::Debug for SendLimiter {
    /// The settings only: configurations are logged at start-up, and the live tables (every
    /// sender's buckets and holdings) are neither short nor anyone's business in a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendLimiter").field("rates", &self.rates).field("quotas", &self.quotas.limits()).finish()
    }
}

impl SendLimiter {
    /// A limiter allowing `rate` of sends per sender, and the default typing and join rates.
    pub fn new(rate: SendRate) -> Self {
        Self::with_rates(RateLimits::sending(rate))
    }

    /// A limiter allowing `rates` per sender.
    pub fn with_rates(rates: RateLimits) -> Self {
        let buckets = Buckets { by_sender: HashMap::new(), sweep_at_len: SWEEP_LEN_MIN };
        let (buckets, quotas) = (Arc::new(Mutex::new(buckets)), Quotas::default());
        Self { rates, origin: Instant::now(), buckets, sockets: Arc::default(), quotas }
    }

    /// The same limiter with `quotas` for what each sender may hold.
    pub fn with_quotas(self, quotas: QuotaLimits) -> Self {
        Self { quotas: Quotas::new(quotas), ..self }
    }

    /// The quotas each sender gets.
    pub fn quotas(&self) -> QuotaLimits {
        self.quotas.limits()
    }

    /// The rate each sender gets for sends.
    pub fn rate(&self) -> SendRate {
        self.rates.send
    }

    /// The rates each sender gets.
    pub fn rates(&self) -> RateLimits {
        self.rates
    }

    fn now(&self) -> Time {
        Time::from_millis(u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    /// Takes a token for one unary send by `caller` on the connection from `peer`.
    pub fn check_unary(&self, caller: &Caller, peer: Option<SocketAddr>) -> Result<(), ApiError> {
        self.sender(caller, peer).try_take(RateKind::Send).map_err(ApiError::from)
    }

    /// The buckets of `caller` on the connection from `peer`: the user's with `--tokens`, the
    /// connection's on an open server.
    pub fn sender(&self, caller: &Caller, peer: Option<SocketAddr>) -> SenderRate {
        let sender = match (caller, peer) {
            (Caller::User(user), _) => Sender::User(user.clone()),
            (Caller::Anyone, Some(peer)) => Sender::Connection(peer),
            (Caller::Anyone, None) => Sender::Unknown,
        };
        SenderRate { sender, limiter: self.clone() }
    }

    /// The buckets of `caller` on a connection of its own that has no address here (a
    /// WebSocket): the user's with `--tokens`, a new set for the connection otherwise.
    pub fn socket(&self, caller: &Caller) -> SenderRate {
        let sender = match caller {
            Caller::User(user) => Sender::User(user.clone()),
            Caller::Anyone => Sender::Socket(self.sockets.fetch_add(1, Ordering::Relaxed)),
        };
        SenderRate { sender, limiter: self.clone() }
    }

    fn take_at(&self, sender: &Sender, kind: RateKind, now: Time) -> Result<(), RateLimited> {
        let rate = self.rates.of(kind);
        if rate.is_unlimited() {
            return Ok(());
        }
        // A poisoned lock only means another call panicked mid-update; the table is still a
        // valid set of buckets.
        let mut buckets = self.buckets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let taken = match buckets.by_sender.get_mut(sender) {
            Some(kinds) => kinds[slot(kind)].get_or_insert_with(|| TokenBucket::new(rate, now)).try_take(now),
            None => {
                let mut kinds: [Option<TokenBucket>; RATE_KINDS] = Default::default();
                let taken = kinds[slot(kind)].insert(TokenBucket::new(rate, now)).try_take(now);
                buckets.by_sender.insert(sender.clone(), kinds);
                taken
            }
        };
        if buckets.by_sender.len() > buckets.sweep_at_len {
            buckets.by_sender.retain(|_, kinds| kinds.iter().flatten().any(|bucket| !bucket.is_full(now)));
            buckets.sweep_at_len = (buckets.by_sender.len() * 2).max(SWEEP_LEN_MIN);
        }
        taken.map_err(|limited| RateLimited { kind, ..limited })
    }
}

impl Default for SendLimiter {
    /// The default rates ([`RateLimits::default`]).
    fn default() -> Self {
        Self::with_rates(RateLimits::default())
    }
}

/// One sender's buckets, for a session, stream or upload: every holder for the same sender
/// draws on the same buckets.
#[derive(Clone, Debug)]
pub struct SenderRate {
    sender: Sender,
    limiter: SendLimiter,
}

impl SenderRate {
    /// Takes a token of `kind` now, or says when the next one is there.
    pub fn try_take(&self, kind: RateKind) -> Result<(), RateLimited> {
        self.limiter.take_at(&self.sender, kind, self.limiter.now())
    }

    /// Takes a room-creation token if `room` is not live (this use would create it, or load it
    /// from the store): RESOURCE_EXHAUSTED over `--rooms-created-per-second-max`.
    pub fn check_creation(&self, engine: &Engine, room: &RoomName) -> Result<(), ApiError> {
        if engine.has_live_room(room) { Ok(()) } else { Ok(self.try_take(RateKind::Creation)?) }
    }

    /// Holds `room` against the sender's room quota until the guard drops.
    pub fn hold_room(&self, room: &str) -> Result<Held, ApiError> {
        Ok(self.limiter.quotas.hold_room(&self.sender, room)?)
    }

    /// Holds a session slot until the guard drops.
    pub fn hold_session(&self) -> Result<Held, ApiError> {
        Ok(self.limiter.quotas.hold_session(&self.sender)?)
    }

    /// An empty reservation of the sender's and the server's upload-byte budgets, for one upload.
    pub fn upload_bytes(&self) -> UploadBytes {
        self.limiter.quotas.upload_bytes(&self.sender)
    }

    /// Holds an upload slot until the guard drops.
    pub fn hold_upload(&self) -> Result<Held, ApiError> {
        Ok(self.limiter.quotas.hold_upload(&self.sender)?)
    }

    /// Waits until a token of `kind` is there and takes it (pacing, for streams that cannot be
    /// refused). Others of the same sender may take the token first; then it waits again.
    pub async fn take_paced(&self, kind: RateKind) {
        while let Err(limited) = self.try_take(kind) {
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
        let session = limiter.sender(&Caller::Anyone, peer(1));
        assert!((0..1_000).all(|_| session.try_take(RateKind::Send).is_ok()));
    }

    #[test]
    fn the_table_forgets_buckets_that_refilled() {
        let limiter = SendLimiter::new(SendRate { per_second: 1, burst: 2 });
        let len = || limiter.buckets.lock().expect("lock").by_sender.len();
        let connection = |port: u16| Sender::Connection(SocketAddr::from(([127, 0, 0, 1], port)));
        let take = |port: u16, ms: u64| limiter.take_at(&connection(port), RateKind::Send, Time::from_millis(ms));
        // Past the threshold at one moment: the first sweep (at 1,025) finds no refilled bucket
        // and sets the next one at twice the size, 2,050.
        let ports = u16::try_from(2 * (SWEEP_LEN_MIN + 1)).expect("small");
        for port in 0..ports {
            take(port, 0).expect("within the burst");
        }
        assert_eq!(len(), usize::from(ports));
        // Seconds later every one of them is full again; the next sweep drops them all.
        take(ports, 5_000).expect("within the burst");
        assert_eq!(len(), 1, "refilled buckets are forgotten");
        // A forgotten sender starts again with a full bucket, exactly as if it had been kept.
        take(0, 5_000).expect("1");
        take(0, 5_000).expect("2");
        assert!(take(0, 5_000).is_err());
    }

    #[test]
    fn sessions_of_one_sender_share_its_buckets() {
        let limiter = SendLimiter::new(SendRate { per_second: 1, burst: 2 });
        let one = limiter.sender(&Caller::Anyone, peer(1));
        let two = limiter.sender(&Caller::Anyone, peer(1));
        one.try_take(RateKind::Send).expect("first");
        two.try_take(RateKind::Send).expect("second, from the same bucket");
        assert!(one.try_take(RateKind::Send).is_err(), "a second session buys nothing");
        assert!(limiter.check_unary(&Caller::Anyone, peer(1)).is_err(), "nor does a unary send");
        limiter.sender(&Caller::Anyone, peer(2)).try_take(RateKind::Send).expect("another connection");
        let ann = Caller::User(UserName::new("ann").expect("name"));
        let (socket, stream) = (limiter.socket(&ann), limiter.sender(&ann, peer(3)));
        socket.try_take(RateKind::Send).expect("1");
        stream.try_take(RateKind::Send).expect("2");
        assert!(socket.try_take(RateKind::Send).is_err(), "a user's WebSocket and streams share");
        let (first, second) = (limiter.socket(&Caller::Anyone), limiter.socket(&Caller::Anyone));
        first.try_take(RateKind::Send).expect("1");
        first.try_take(RateKind::Send).expect("2");
        second.try_take(RateKind::Send).expect("an open server's sockets are separate connections");
    }

    #[test]
    fn typing_and_joins_have_their_own_buckets_and_name_themselves() {
        let slow = SendRate { per_second: 1, burst: 1 };
        let limiter =
            SendLimiter::with_rates(RateLimits { send: slow, typing: slow, membership: slow, creation: slow });
        let ann = limiter.sender(&Caller::Anyone, peer(1));
        ann.try_take(RateKind::Send).expect("send");
        ann.try_take(RateKind::Typing).expect("typing is not sending");
        let typing = ann.try_take(RateKind::Typing).expect_err("over the typing rate");
        assert_eq!(typing.kind, RateKind::Typing);
        assert!(typing.to_string().contains("typing rate"), "{typing}");
        ann.try_take(RateKind::Membership).expect("join");
        let join = ann.try_take(RateKind::Membership).expect_err("over the join rate");
        assert!(ApiError::from(join).to_string().contains("--joins-per-second-max"));
    }
}
