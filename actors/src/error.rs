//! Errors of the [`Engine`](crate::Engine) handle.

use confab_engine::{RoomError, UploadError};

/// Why an engine call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// A room refused the request.
    #[error(transparent)]
    Room(#[from] RoomError),
    /// An upload refused a chunk or its commit.
    #[error(transparent)]
    Upload(#[from] UploadError),
    /// The session is closed (finished, or its client went away).
    #[error("session closed")]
    SessionClosed,
    /// The engine has shut down.
    #[error("engine stopped")]
    Stopped,
    /// `Engine::start` was called outside a tokio runtime.
    #[error("no tokio runtime here: call Engine::start inside one, or use Engine::start_background")]
    NoRuntime,
    /// The background runtime could not be started.
    #[error("could not start the engine's runtime thread: {0}")]
    Runtime(String),
}
