//! The reply type of every request a caller may be refused. A refusal is a value in the reply,
//! never a handler error: kameo stops an actor whose `tell` handler returns `Err`, and a domain
//! refusal must not stop a room.

use kameo::Reply;

/// A reply that may carry a domain refusal.
#[derive(Debug, Reply)]
pub(crate) struct Answer<T: Send + 'static, E: Send + 'static>(pub(crate) Result<T, E>);
