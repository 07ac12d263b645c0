//! What [`Engine::health`](crate::Engine::health) reports, for a transport's health check.

use std::sync::{Mutex, MutexGuard, PoisonError};

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

/// The last failure of something health depends on (the store's commits, the replicated
/// log's probes), until it succeeds again: shared by what sets it and the engine, which
/// reports it in its health.
#[derive(Debug)]
pub(crate) struct LastFailure<E> {
    failure: Mutex<Option<E>>,
}

impl<E> Default for LastFailure<E> {
    fn default() -> Self {
        Self { failure: Mutex::new(None) }
    }
}

impl<E: Clone> LastFailure<E> {
    /// The last failure, if the last attempt failed.
    pub(crate) fn failure(&self) -> Option<E> {
        self.lock().clone()
    }

    /// Records the last attempt's outcome: its failure, or `None` for a success.
    pub(crate) fn set(&self, failure: Option<E>) {
        *self.lock() = failure;
    }

    fn lock(&self) -> MutexGuard<'_, Option<E>> {
        // The value is replaced whole, so a poisoned lock still holds a consistent one.
        self.failure.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
