//! What [`Engine::health`](crate::Engine::health) reports, for a transport's health check.

use crate::store::StoreError;

/// Whether an engine can do its job.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EngineHealth {
    /// The actors run and the store or replicated log, if any, commits.
    Serving,
    /// The last commit failed: sends to the rooms in it were refused, and health stays so
    /// until a commit (or the writer's probe) succeeds again.
    StoreFailing(StoreError),
    /// Cluster mode: the replicated log's last probe failed (no connection, a shard stream
    /// without a leader or without a quorum of current replicas): the cause. Sends are
    /// answered UNAVAILABLE meanwhile; health stays so until a probe succeeds again.
    LogUnavailable(String),
    /// The engine's registry has stopped (shut down, or died): no request can be served.
    Stopped,
}

impl EngineHealth {
    /// Whether requests can be served.
    pub fn is_serving(&self) -> bool {
        matches!(self, EngineHealth::Serving)
    }
}
