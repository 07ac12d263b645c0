//! Engine time from tokio's clock. Under a paused tokio runtime (the simulator) this is virtual
//! time, so it is deterministic; the engine core only ever sees the resulting [`Time`].

use confab_engine::Time;
use tokio::time::Instant;

/// `origin_ms` plus the milliseconds since the engine started, read from tokio's (possibly
/// paused) clock. The server sets `origin_ms` to the Unix time at start, so stored timestamps
/// stay meaningful across restarts; the simulator uses 0.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    started: Instant,
    origin_ms: u64,
}

impl Clock {
    /// A clock reading `origin_ms` now. Must be called on the engine's runtime.
    pub(crate) fn start(origin_ms: u64) -> Self {
        Self { started: Instant::now(), origin_ms }
    }

    /// The current engine time.
    pub(crate) fn now(&self) -> Time {
        let elapsed = Instant::now().saturating_duration_since(self.started).as_millis();
        let elapsed = u64::try_from(elapsed).unwrap_or(u64::MAX);
        Time::from_millis(self.origin_ms.saturating_add(elapsed))
    }
}
