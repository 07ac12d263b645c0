//! How long to wait before each reconnection attempt: doubling from a first delay up to a
//! largest one, each delay drawn between its half and itself (jitter), so the clients of a
//! restarted server do not all come back in the same instant. No clock: the shell sleeps.

use std::time::Duration;

/// The delay before the first reconnection attempt: short, since most drops are one dead
/// connection to a server that is already back (or a restart that takes about a second).
pub const RECONNECT_DELAY_FIRST: Duration = Duration::from_millis(100);

/// The longest delay between attempts: during a long outage a client still notices within
/// this long that the server is back, and a few thousand clients retrying cost the server
/// little.
pub const RECONNECT_DELAY_MAX: Duration = Duration::from_secs(5);

/// How long a client keeps trying without a connection before its session ends with
/// [`SessionError::GaveUp`](crate::SessionError::GaveUp): long enough for a restart or a
/// deployment, bounded so that a client of a server that is gone for good stops.
pub const OUTAGE_MAX: Duration = Duration::from_secs(10 * 60);

/// When and for how long a [`Client`](crate::Client) reconnects.
///
/// ```
/// use std::time::Duration;
/// use confab_client::Reconnect;
///
/// let patient = Reconnect::default().with_outage_max(Duration::from_secs(3600));
/// assert_eq!(patient.delay_max, confab_client::RECONNECT_DELAY_MAX);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reconnect {
    /// The delay before the first attempt ([`RECONNECT_DELAY_FIRST`]).
    pub delay_first: Duration,
    /// The longest delay between attempts ([`RECONNECT_DELAY_MAX`]).
    pub delay_max: Duration,
    /// Give up after this long without a connection ([`OUTAGE_MAX`]).
    pub outage_max: Duration,
}

impl Default for Reconnect {
    fn default() -> Self {
        Self { delay_first: RECONNECT_DELAY_FIRST, delay_max: RECONNECT_DELAY_MAX, outage_max: OUTAGE_MAX }
    }
}

impl Reconnect {
    /// The same, with these delays (the first is at most the largest).
    pub fn with_delays(self, first: Duration, max: Duration) -> Self {
        Self { delay_first: first.min(max), delay_max: max, ..self }
    }

    /// The same, giving up after `outage_max` without a connection.
    pub fn with_outage_max(self, outage_max: Duration) -> Self {
        Self { outage_max, ..self }
    }
}

/// The delays of one outage (start over with [`Backoff::reset`] once connected).
#[derive(Clone, Debug)]
pub(crate) struct Backoff {
    reconnect: Reconnect,
    /// The delay the next attempt draws from.
    ceiling: Duration,
    /// xorshift64 state for the jitter (never zero).
    random: u64,
}

impl Backoff {
    /// Delays per `reconnect`, with jitter from `seed`.
    pub(crate) fn new(reconnect: Reconnect, seed: u64) -> Self {
        let ceiling = reconnect.delay_first;
        Self { reconnect, ceiling, random: seed | 1 }
    }

    /// The delay before the next attempt: between half the current ceiling and the ceiling,
    /// which then doubles up to the largest delay.
    pub(crate) fn next_delay(&mut self) -> Duration {
        self.random ^= self.random << 13;
        self.random ^= self.random >> 7;
        self.random ^= self.random << 17;
        let half = self.ceiling / 2;
        let span_ns = u64::try_from((self.ceiling - half).as_nanos()).unwrap_or(u64::MAX).max(1);
        let delay = half + Duration::from_nanos(self.random % span_ns);
        self.ceiling = (self.ceiling * 2).min(self.reconnect.delay_max);
        delay
    }

    /// Connected again: the next outage starts from the first delay.
    pub(crate) fn reset(&mut self) {
        self.ceiling = self.reconnect.delay_first;
    }

    /// The longest an outage may last.
    pub(crate) fn outage_max(&self) -> Duration {
        self.reconnect.outage_max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_largest_with_jitter_below_each_ceiling() {
        let reconnect = Reconnect::default().with_delays(Duration::from_millis(100), Duration::from_millis(800));
        let mut backoff = Backoff::new(reconnect, 42);
        let ceilings = [100, 200, 400, 800, 800, 800].map(Duration::from_millis);
        for ceiling in ceilings {
            let delay = backoff.next_delay();
            assert!(delay >= ceiling / 2, "{delay:?} below half of {ceiling:?}");
            assert!(delay <= ceiling, "{delay:?} above {ceiling:?}");
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100), "a new outage starts over");
    }

    #[test]
    fn two_clients_spread_out() {
        let mut one = Backoff::new(Reconnect::default(), 1);
        let mut two = Backoff::new(Reconnect::default(), 2);
        let (a, b): (Vec<_>, Vec<_>) = (0..4).map(|_| (one.next_delay(), two.next_delay())).unzip();
        assert_ne!(a, b);
    }
}
