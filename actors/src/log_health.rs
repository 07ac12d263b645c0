//! Whether a replicated log can commit, as a periodic probe last saw it: what
//! [`Engine::health`](crate::Engine::health) reports as
//! [`EngineHealth::LogUnavailable`](crate::EngineHealth::LogUnavailable) in cluster mode.
//!
//! A task asks the log's [`RoomLog::probe`] every [`HEALTH_PROBE_INTERVAL`] and keeps the
//! answer in a [`LogHealth`]. It logs a change of state once (unavailable, available again),
//! not every failed probe, so an outage does not flood the log.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::oneshot;

use crate::health::LastFailure;
use crate::room_log::RoomLog;

/// How often the replicated log is probed: a lost quorum shows in health within this plus the
/// probe's own time (the log's request timeout, when the log does not answer), and a recovered
/// one within this.
pub const HEALTH_PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// The cause of the last failed probe, until a probe succeeds again. Set by the probe task,
/// reported by the engine in its health.
pub(crate) type LogHealth = LastFailure<String>;

/// Starts probing `log` on the current runtime, if it has a probe: the health it keeps, and
/// the sender whose drop ends the task.
pub(crate) fn start(log: &Arc<dyn RoomLog>) -> Option<(Arc<LogHealth>, oneshot::Sender<()>)> {
    // A log that has no probe gets no task (so the simulator's virtual time gets no timer).
    let first = log.probe()?;
    let health = Arc::new(LogHealth::default());
    let (stop, stopped) = oneshot::channel();
    tokio::spawn(probe_until_stopped(Arc::clone(log), first, Arc::clone(&health), stopped));
    Some((health, stop))
}

async fn probe_until_stopped(
    log: Arc<dyn RoomLog>,
    first: BoxFuture<'static, Result<(), String>>,
    health: Arc<LogHealth>,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut probe = first;
    loop {
        let outcome = tokio::select! {
            biased;
            _ = &mut stopped => return,
            outcome = probe => outcome,
        };
        match (&outcome, health.failure()) {
            (Err(cause), None) => tracing::warn!(%cause, "the replicated log is unavailable: health is not serving"),
            (Ok(()), Some(_)) => tracing::info!("the replicated log is available again"),
            _ => {}
        }
        health.set(outcome.err());
        tokio::select! {
            biased;
            _ = &mut stopped => return,
            _ = tokio::time::sleep(HEALTH_PROBE_INTERVAL) => {}
        }
        let Some(next) = log.probe() else { return };
        probe = next;
    }
}
