//! A token bucket for send rates: sans-IO like the rest of the engine (time is an argument).
//!
//! A bucket holds up to `burst` tokens and gains `per_second` tokens a second; a send takes one
//! token or is refused with [`RateLimited`], which says when the next token will be there.
//! Tokens are counted in thousandths, so `per_second` thousandths arrive each millisecond and the
//! arithmetic is exact in integers (no drift, no floating point, the same result everywhere).
//!
//! Call order: [`TokenBucket::new`] once (it starts full), then [`TokenBucket::try_take`] for each
//! send with the current time. Time going backwards is treated as no time passing.

use crate::types::Time;

/// Thousandths of a token in one token.
const MILLI_TOKENS_PER_TOKEN: u64 = 1_000;

/// How fast one sender may send. `per_second == 0` means unlimited (a bucket never refuses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendRate {
    /// Sustained sends per second.
    pub per_second: u32,
    /// Sends allowed at once after a quiet spell (the bucket's size). At least 1 in effect.
    pub burst: u32,
}

impl SendRate {
    /// No limit at all.
    pub const UNLIMITED: SendRate = SendRate { per_second: 0, burst: 0 };

    /// Whether this rate never refuses.
    pub const fn is_unlimited(&self) -> bool {
        self.per_second == 0
    }

    fn capacity_milli(&self) -> u64 {
        u64::from(self.burst.max(1)) * MILLI_TOKENS_PER_TOKEN
    }
}

impl Default for SendRate {
    /// [`SENDS_PER_SECOND_MAX`](crate::limits::SENDS_PER_SECOND_MAX) with a burst of
    /// [`SEND_BURST_MAX`](crate::limits::SEND_BURST_MAX).
    fn default() -> Self {
        SendRate { per_second: crate::limits::SENDS_PER_SECOND_MAX, burst: crate::limits::SEND_BURST_MAX }
    }
}

/// What a bucket limits: a sender has one bucket of each kind, so a flood of one kind (typing)
/// cannot use up another (posts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum RateKind {
    /// Posted messages: unary sends, session posts, uploaded messages.
    #[default]
    Send,
    /// Typing notices.
    Typing,
    /// Joins and leaves together.
    Membership,
    /// Rooms created (a use of a room that is not live).
    Creation,
}

impl RateKind {
    /// What the kind is called in a refusal.
    pub const fn name(self) -> &'static str {
        match self {
            RateKind::Send => "send",
            RateKind::Typing => "typing",
            RateKind::Membership => "join and leave",
            RateKind::Creation => "room creation",
        }
    }
}

impl std::fmt::Display for RateKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A send (or typing notice, join, leave) was refused: the sender is over its rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "over the {kind} rate of {per_second} per second (burst {burst}); the next one is allowed in {retry_after_ms} ms"
)]
pub struct RateLimited {
    /// Which of the sender's buckets is empty ([`RateKind::Send`] unless the holder says
    /// otherwise: a bucket does not know what it limits).
    pub kind: RateKind,
    /// The sustained rate.
    pub per_second: u32,
    /// The burst.
    pub burst: u32,
    /// Milliseconds until one token is back.
    pub retry_after_ms: u64,
}

/// One sender's bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenBucket {
    rate: SendRate,
    /// Thousandths of a token available at `updated`.
    milli_tokens: u64,
    /// When `milli_tokens` was last brought up to date.
    updated: Time,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn new(rate: SendRate, now: Time) -> Self {
        Self { rate, milli_tokens: rate.capacity_milli(), updated: now }
    }

    /// Takes one token at `now`, or says how long until one is there.
    pub fn try_take(&mut self, now: Time) -> Result<(), RateLimited> {
        if self.rate.is_unlimited() {
            return Ok(());
        }
        self.refill(now);
        if self.milli_tokens >= MILLI_TOKENS_PER_TOKEN {
            self.milli_tokens -= MILLI_TOKENS_PER_TOKEN;
            return Ok(());
        }
        let missing = MILLI_TOKENS_PER_TOKEN - self.milli_tokens;
        let per_ms = u64::from(self.rate.per_second);
        Err(RateLimited {
            kind: RateKind::Send,
            per_second: self.rate.per_second,
            burst: self.rate.burst.max(1),
            retry_after_ms: missing.div_ceil(per_ms),
        })
    }

    /// Whether the bucket would be full at `now`: then it is no different from a new one, and a
    /// holder of many buckets may forget it.
    pub fn is_full(&self, now: Time) -> bool {
        let mut probe = self.clone();
        probe.refill(now);
        probe.milli_tokens >= self.rate.capacity_milli()
    }

    fn refill(&mut self, now: Time) {
        let elapsed_ms = now.millis_since(self.updated);
        if now > self.updated {
            self.updated = now;
        }
        let gained = elapsed_ms.saturating_mul(u64::from(self.rate.per_second));
        self.milli_tokens = self.milli_tokens.saturating_add(gained).min(self.rate.capacity_milli());
        debug_assert!(self.milli_tokens <= self.rate.capacity_milli());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(millis: u64) -> Time {
        Time::from_millis(millis)
    }

    #[test]
    fn a_full_bucket_allows_the_burst_then_refuses() {
        let mut bucket = TokenBucket::new(SendRate { per_second: 10, burst: 3 }, at(0));
        for _ in 0..3 {
            assert_eq!(bucket.try_take(at(0)), Ok(()));
        }
        let refused = bucket.try_take(at(0)).expect_err("over the burst");
        assert_eq!(refused.retry_after_ms, 100, "one token per 100 ms at 10/s");
        assert_eq!((refused.per_second, refused.burst), (10, 3));
    }

    #[test]
    fn tokens_come_back_at_the_rate_and_no_faster() {
        let mut bucket = TokenBucket::new(SendRate { per_second: 10, burst: 1 }, at(0));
        bucket.try_take(at(0)).expect("first");
        assert_eq!(bucket.try_take(at(99)).expect_err("99 ms is not enough").retry_after_ms, 1);
        bucket.try_take(at(100)).expect("a token after 100 ms");
        assert!(bucket.try_take(at(100)).is_err());
    }

    #[test]
    fn refill_stops_at_the_burst() {
        let mut bucket = TokenBucket::new(SendRate { per_second: 1_000, burst: 2 }, at(0));
        bucket.try_take(at(0)).expect("1");
        bucket.try_take(at(0)).expect("2");
        // An hour of quiet gives back the burst, not 3.6 million tokens.
        let later = at(3_600_000);
        assert!(bucket.is_full(later));
        bucket.try_take(later).expect("1 after quiet");
        bucket.try_take(later).expect("2 after quiet");
        assert!(bucket.try_take(later).is_err());
    }

    #[test]
    fn sustained_rate_over_a_long_run_is_exact() {
        // 8 per second (one token per 125 ms) for 10 seconds, asking every millisecond: the
        // first token, then one at each multiple of 125 ms up to 10,000.
        let mut bucket = TokenBucket::new(SendRate { per_second: 8, burst: 1 }, at(0));
        let taken = (0..=10_000).filter(|ms| bucket.try_take(at(*ms)).is_ok()).count();
        assert_eq!(taken, 81);
    }

    #[test]
    fn time_going_backwards_gives_nothing_and_breaks_nothing() {
        let mut bucket = TokenBucket::new(SendRate { per_second: 1, burst: 1 }, at(5_000));
        bucket.try_take(at(5_000)).expect("first");
        assert!(bucket.try_take(at(1_000)).is_err(), "no refill from a clock going back");
        bucket.try_take(at(6_000)).expect("a second after the real last update");
    }

    #[test]
    fn unlimited_never_refuses_and_burst_zero_means_one() {
        let mut unlimited = TokenBucket::new(SendRate::UNLIMITED, at(0));
        assert!((0..100_000).all(|_| unlimited.try_take(at(0)).is_ok()));
        let mut tiny = TokenBucket::new(SendRate { per_second: 1, burst: 0 }, at(0));
        tiny.try_take(at(0)).expect("a burst of 0 still lets one through");
        assert!(tiny.try_take(at(0)).is_err());
    }

    #[test]
    fn a_partly_drained_bucket_is_not_full() {
        let mut bucket = TokenBucket::new(SendRate { per_second: 10, burst: 5 }, at(0));
        assert!(bucket.is_full(at(0)));
        bucket.try_take(at(0)).expect("take");
        assert!(!bucket.is_full(at(50)));
        assert!(bucket.is_full(at(100)));
    }
}
