//! Errors of the [`Engine`](crate::Engine) handle: [`StartError`] when it cannot start,
//! [`EngineError`] when a call is refused.

use confab_engine::{RoomError, UploadError};

/// Why an engine call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
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
    /// The engine has shut down ([`Engine::shutdown`](crate::Engine::shutdown)), for good.
    #[error("engine stopped")]
    Stopped,
}

/// Why an engine could not start ([`Engine::start`](crate::Engine::start),
/// [`Engine::start_background`](crate::Engine::start_background)). Kept apart from
/// [`EngineError`]: a program handles it once, at start-up, and its source is kept.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// `Engine::start` was called outside a tokio runtime.
    #[error("no tokio runtime here: call Engine::start inside one, or use Engine::start_background")]
    NoRuntime,
    /// The background runtime, or its thread, could not be started.
    #[error("could not start the engine's runtime thread")]
    Runtime(#[source] std::io::Error),
    /// The store's writer thread could not be started.
    #[error("could not start the history store's writer thread")]
    Writer(#[source] std::io::Error),
    /// The configuration does not fit together; the text says how.
    #[error("invalid engine configuration: {0}")]
    Config(&'static str),
}
