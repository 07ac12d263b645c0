//! Engine time from tokio's clock. Under a paused tokio runtime (the simulator) this is virtual
//! time, so it is deterministic; the engine core only ever sees the resulting [`Time`].

use confab_engine::Time;
use tokio::time::Instant;

/// Milliseconds since the engine started, read from tokio's (possibly paused) clock.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    origin: Instant,
}

impl Clock {
    /// A clock whose origin is now. Must be called on the engine's runtime.
    pub(crate) fn start() -> Self {
        Self { origin: Instant::now() }
    }

    /// The current engine time.
    pub(crate) fn now(&self) -> Time {
        let millis = Instant::now().saturating_duration_since(self.origin).as_millis();
        Time::from_millis(u64::try_from(millis).unwrap_or(u64::MAX))
    }
}
