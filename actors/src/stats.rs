//! Engine-level counters for operations (metrics): what rooms and sessions did, counted in the
//! actor layer so that `confab-engine` stays free of any dependency.
//!
//! The hot path stays cheap: counters are `Relaxed` atomics (a scrape needs no ordering between
//! them), and a reader adds up what it took once per batch read from its room's ring. [`Engine::stats`] reads a
//! [`StatsSnapshot`]; a transport turns it into whatever format it exports.
//!
//! [`Engine::stats`]: crate::Engine::stats

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The engine's counters, shared by every actor of one engine.
#[derive(Debug, Default)]
pub(crate) struct EngineStats {
    rooms_created: AtomicU64,
    sessions_open: AtomicU64,
    sessions_opened: AtomicU64,
    messages_appended: AtomicU64,
    deliveries: AtomicU64,
    deliveries_dropped: AtomicU64,
    lag_markers: AtomicU64,
    session_frames_refused: AtomicU64,
    subscribers_closed_stalled: AtomicU64,
}

/// A point-in-time copy of the engine's counters (each read on its own, so two counters may be
/// a few events apart under load).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// Rooms live now (created or restored, not yet retired).
    pub rooms: u64,
    /// Rooms created or restored from the store since the engine started.
    pub rooms_created: u64,
    /// Bidirectional sessions open now.
    pub sessions: u64,
    /// Sessions opened since the engine started.
    pub sessions_opened: u64,
    /// Messages the rooms numbered (a recognised retry of an earlier send does not count).
    pub messages_appended: u64,
    /// Room events a subscriber (a stream or a session) took from its room's ring: one per
    /// subscriber per event.
    pub deliveries: u64,
    /// Messages subscribers missed because they fell more than the ring's length behind: each
    /// was declared in a lag marker instead of delivered.
    pub deliveries_dropped: u64,
    /// Lag markers (`Lagged`: "you missed a to b") handed to subscribers.
    pub lag_markers: u64,
    /// Session frames refused with an `Error` frame (the session went on).
    pub session_frames_refused: u64,
    /// Subscribers (streams or sessions) closed for taking nothing while lagging for the
    /// stall time (`Limits::subscriber_stall_ms`).
    pub subscribers_closed_stalled: u64,
}

impl EngineStats {
    /// Reads every counter; `rooms` is counted by the caller, who owns the room table.
    pub(crate) fn snapshot(&self, rooms: u64) -> StatsSnapshot {
        StatsSnapshot {
            rooms,
            rooms_created: self.rooms_created.load(Ordering::Relaxed),
            sessions: self.sessions_open.load(Ordering::Relaxed),
            sessions_opened: self.sessions_opened.load(Ordering::Relaxed),
            messages_appended: self.messages_appended.load(Ordering::Relaxed),
            deliveries: self.deliveries.load(Ordering::Relaxed),
            deliveries_dropped: self.deliveries_dropped.load(Ordering::Relaxed),
            lag_markers: self.lag_markers.load(Ordering::Relaxed),
            session_frames_refused: self.session_frames_refused.load(Ordering::Relaxed),
            subscribers_closed_stalled: self.subscribers_closed_stalled.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn room_created(&self) {
        self.rooms_created.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn messages_appended(&self, count: u64) {
        self.messages_appended.fetch_add(count, Ordering::Relaxed);
    }

    /// A reader took `events` events and `lags` lag markers declaring `missed` messages lost.
    pub(crate) fn delivered(&self, events: u64, lags: u64, missed: u64) {
        if events > 0 {
            self.deliveries.fetch_add(events, Ordering::Relaxed);
        }
        if lags > 0 {
            self.lag_markers.fetch_add(lags, Ordering::Relaxed);
            self.deliveries_dropped.fetch_add(missed, Ordering::Relaxed);
        }
    }

    pub(crate) fn subscriber_closed_stalled(&self) {
        self.subscribers_closed_stalled.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn session_frame_refused(&self) {
        self.session_frames_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a session as open until the returned guard is dropped (with the session actor).
    pub(crate) fn session_opened(self: &Arc<Self>) -> SessionGuard {
        self.sessions_opened.fetch_add(1, Ordering::Relaxed);
        self.sessions_open.fetch_add(1, Ordering::Relaxed);
        SessionGuard(Arc::clone(self))
    }
}

/// Held by a session actor: the session counts as open while it lives, however it stops.
#[derive(Debug)]
pub(crate) struct SessionGuard(Arc<EngineStats>);

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.0.sessions_open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_counts_as_open_while_its_guard_lives() {
        let stats = Arc::new(EngineStats::default());
        let first = stats.session_opened();
        let second = stats.session_opened();
        assert_eq!(stats.snapshot(0).sessions, 2);
        drop(first);
        assert_eq!(stats.snapshot(0).sessions, 1);
        drop(second);
        let snapshot = stats.snapshot(0);
        assert_eq!(snapshot.sessions, 0);
        assert_eq!(snapshot.sessions_opened, 2);
    }

    #[test]
    fn a_read_adds_its_events_lags_and_missed_messages() {
        let stats = EngineStats::default();
        stats.delivered(5, 1, 7);
        stats.delivered(2, 0, 0);
        let snapshot = stats.snapshot(3);
        assert_eq!(snapshot.rooms, 3);
        assert_eq!(snapshot.deliveries, 7);
        assert_eq!(snapshot.deliveries_dropped, 7);
        assert_eq!(snapshot.lag_markers, 1);
    }
}
