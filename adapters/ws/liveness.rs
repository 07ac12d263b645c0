//! When a WebSocket connection is pinged, declared dead, or closed as idle: a sans-IO state
//! machine (time is an argument), driven by [`super::connection`].
//!
//! Call order: [`Liveness::handle_heard`] for every message from the client;
//! [`Liveness::poll_timeout`] says when to wake; at that time [`Liveness::handle_timeout`] says
//! what is due; after a ping went out, [`Liveness::handle_ping_sent`].

use std::time::Duration;

use tokio::time::Instant;

/// The server pings a connection it has not heard from for this long (`--ws-ping-interval`).
pub const WS_PING_INTERVAL: Duration = Duration::from_secs(20);

/// A connection that sends nothing, not even the pong, within this long of a ping is dead
/// (`--ws-pong-timeout`): it is dropped and its session ends, so its presence ends.
pub const WS_PONG_TIMEOUT: Duration = Duration::from_secs(20);

/// A connection whose client sends no frame of its own (pongs do not count) for this long is
/// closed (`--ws-idle-timeout`): an abandoned client that still answers pings holds a session.
pub const WS_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// The liveness timing of every WebSocket connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LivenessConfig {
    /// See [`WS_PING_INTERVAL`].
    pub ping_interval: Duration,
    /// See [`WS_PONG_TIMEOUT`].
    pub pong_timeout: Duration,
    /// See [`WS_IDLE_TIMEOUT`].
    pub idle_timeout: Duration,
}

impl Default for LivenessConfig {
    fn default() -> Self {
        Self { ping_interval: WS_PING_INTERVAL, pong_timeout: WS_PONG_TIMEOUT, idle_timeout: WS_IDLE_TIMEOUT }
    }
}

/// What is due at a timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Nothing yet (woken early).
    Nothing,
    /// Send a ping, then call [`Liveness::handle_ping_sent`].
    Ping,
    /// The client answered no ping in time: drop the connection.
    Dead,
    /// The client sent no frame for the idle timeout: close the connection.
    Idle,
}

/// One connection's liveness.
#[derive(Debug, Clone)]
pub struct Liveness {
    config: LivenessConfig,
    /// The last time anything came from the client (a frame, a pong, a ping).
    heard_at: Instant,
    /// The last time the client sent a frame of its own.
    frame_at: Instant,
    /// The unanswered ping, if one is out.
    pinged_at: Option<Instant>,
}

impl Liveness {
    /// A connection that opened at `now`.
    pub fn new(config: LivenessConfig, now: Instant) -> Self {
        Self { config, heard_at: now, frame_at: now, pinged_at: None }
    }

    /// The timing this connection runs with.
    pub fn config(&self) -> LivenessConfig {
        self.config
    }

    /// Something came from the client at `now`; `frame` when it is a frame of its own (not a
    /// ping or a pong).
    pub fn handle_heard(&mut self, now: Instant, frame: bool) {
        self.heard_at = now;
        self.pinged_at = None;
        if frame {
            self.frame_at = now;
        }
    }

    /// A ping went out at `now`.
    pub fn handle_ping_sent(&mut self, now: Instant) {
        self.pinged_at = Some(now);
    }

    /// When something next falls due.
    pub fn poll_timeout(&self) -> Instant {
        let idle_at = self.frame_at + self.config.idle_timeout;
        let check_at = match self.pinged_at {
            None => self.heard_at + self.config.ping_interval,
            Some(pinged_at) => pinged_at + self.config.pong_timeout,
        };
        idle_at.min(check_at)
    }

    /// What is due at `now`. A `Ping` stays due until [`Self::handle_ping_sent`], so a ping
    /// whose sending was cancelled is sent again.
    pub fn handle_timeout(&self, now: Instant) -> Due {
        if now >= self.frame_at + self.config.idle_timeout {
            return Due::Idle;
        }
        match self.pinged_at {
            Some(pinged_at) if now >= pinged_at + self.config.pong_timeout => Due::Dead,
            None if now >= self.heard_at + self.config.ping_interval => Due::Ping,
            _ => Due::Nothing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: LivenessConfig = LivenessConfig {
        ping_interval: Duration::from_secs(20),
        pong_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(100),
    };

    fn at(start: Instant, seconds: u64) -> Instant {
        start + Duration::from_secs(seconds)
    }

    #[test]
    fn a_quiet_client_is_pinged_and_declared_dead_without_an_answer() {
        let start = Instant::now();
        let mut liveness = Liveness::new(CONFIG, start);
        assert_eq!(liveness.poll_timeout(), at(start, 20));
        assert_eq!(liveness.handle_timeout(at(start, 19)), Due::Nothing);
        assert_eq!(liveness.handle_timeout(at(start, 20)), Due::Ping);
        // Not sent yet (cancelled): still due.
        assert_eq!(liveness.handle_timeout(at(start, 21)), Due::Ping);
        liveness.handle_ping_sent(at(start, 21));
        assert_eq!(liveness.poll_timeout(), at(start, 31));
        assert_eq!(liveness.handle_timeout(at(start, 30)), Due::Nothing);
        assert_eq!(liveness.handle_timeout(at(start, 31)), Due::Dead);
    }

    #[test]
    fn a_pong_keeps_a_connection_alive_but_not_out_of_idle() {
        let start = Instant::now();
        let mut liveness = Liveness::new(CONFIG, start);
        for ping in 0..4 {
            let pinged = at(start, 20 + ping * 25);
            assert_eq!(liveness.handle_timeout(pinged), Due::Ping);
            liveness.handle_ping_sent(pinged);
            liveness.handle_heard(pinged + Duration::from_secs(5), false);
        }
        assert_eq!(liveness.poll_timeout(), at(start, 100));
        assert_eq!(liveness.handle_timeout(at(start, 100)), Due::Idle);
    }

    #[test]
    fn a_frame_resets_both_clocks() {
        let start = Instant::now();
        let mut liveness = Liveness::new(CONFIG, start);
        liveness.handle_ping_sent(at(start, 20));
        liveness.handle_heard(at(start, 25), true);
        assert_eq!(liveness.poll_timeout(), at(start, 45));
        assert_eq!(liveness.handle_timeout(at(start, 44)), Due::Nothing);
        assert_eq!(liveness.handle_timeout(at(start, 124)), Due::Ping, "quiet since the frame");
        assert_eq!(liveness.handle_timeout(at(start, 125)), Due::Idle, "idle counts from the frame");
    }
}
