//! What [`Engine::health`](crate::Engine::health) reports, for a transport's health check.

use crate::store::StoreError;

/// Whether an engine can do its job.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EngineHealth {
    /// The actors run and the store, if any, commits.
    Serving,
    /// The last commit failed: sends to the rooms in it were refused, and health stays so
    /// until a commit (or the writer's probe) succeeds again.
    StoreFailing(StoreError),
    /// The engine's registry has stopped (shut down, or died): no request can be served.
    Stopped,
}

impl EngineHealth {
    /// Whether requests can be served.
    pub fn is_serving(&self) -> bool {
        matches!(self, EngineHealth::Serving)
    }
}
