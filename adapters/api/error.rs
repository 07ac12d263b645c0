//! The error vocabulary every transport shares. Handlers work with [`ApiError`] and let `?`
//! convert at the boundary; each transport maps an error's [`ErrorKind`] to its own codes in
//! one match (gRPC statuses in `grpc/status.rs`; WebSocket close codes and HTTP statuses in
//! `ws/close.rs`) and sends its text as the message, so a refusal is the same kind, with the
//! same message naming the limit, on every transport. Nothing here knows a transport.

use confab_actors::{EngineError, Stalled, StreamEnd};
use confab_engine::{FrameError, Lag, NameError, RateLimited, RoomError, SessionError, UploadError, UserName};

use super::permissions::RoomAction;

/// Why a request failed, before a transport says it in its own vocabulary.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A name or id in the request is invalid.
    #[error("{field}: {source}")]
    Name {
        /// The request field or metadata key.
        field: &'static str,
        /// What is wrong.
        source: NameError,
    },
    /// The engine refused or failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A malformed request (a missing oneof, a chunk naming another room, bytes that do not
    /// decode).
    #[error("{0}")]
    Malformed(String),
    /// The subscriber fell behind on a stream that cannot carry a lag marker.
    #[error("fell behind: missed messages {} to {}; reconnect and fetch them with History", .0.missed_from, .0.missed_to)]
    Lagged(Lag),
    /// The room closed the stream because its reader took nothing for the stall time while
    /// lagging.
    #[error(
        "closed for reading nothing while lagging (the server's --subscriber-stall): missed messages {} to {} of room {}; resubscribe with after_seq {} to fetch them",
        .0.lag.missed_from, .0.lag.missed_to, .0.room, .0.lag.missed_from.saturating_sub(1)
    )]
    Stalled(Stalled),
    /// The subscription's room stopped after the stream carried everything it published (a
    /// cluster node's room reloads after falling behind the log, or its actor failed).
    /// Retryable: subscribing again with the last seq seen resumes exactly.
    #[error("room stopped (it reloads); subscribe again with after_seq set to the last seq you received")]
    RoomStopped,
    /// A transport frame over the transport's size limit (the WebSocket's frames).
    #[error("frame is over {flag} ({bytes_max} bytes)")]
    FrameTooBig {
        /// The limit, in bytes.
        bytes_max: usize,
        /// The server flag that sets it.
        flag: &'static str,
    },
    /// A gRPC message over the size the server decodes (tonic's limit, which it reports as
    /// OUT_OF_RANGE; the gRPC transport recognises it).
    #[error("message is {bytes} bytes, over the server's gRPC message limit of {bytes_max} bytes")]
    MessageTooBig {
        /// Its size, as its length prefix gives it.
        bytes: usize,
        /// The limit.
        bytes_max: usize,
    },
    /// The server is shutting down.
    #[error("server is shutting down")]
    ShuttingDown,
    /// No valid bearer token (the server runs with `--tokens`).
    #[error("{0}")]
    Unauthenticated(String),
    /// The request names a user other than the one its token belongs to.
    #[error("{field} is {claimed:?}, but the token belongs to {:?}: leave it empty or use your own name", .user.as_str())]
    Impersonation {
        /// The request field or metadata key.
        field: &'static str,
        /// The name in the request.
        claimed: String,
        /// The authenticated user.
        user: UserName,
    },
    /// The token's room permissions do not allow this (`rooms`, `read_rooms`).
    #[error("user {user} may not {action} room '{room}' (the token's rooms do not allow it)")]
    Forbidden {
        /// The token's user.
        user: String,
        /// What was refused.
        action: RoomAction,
        /// The room.
        room: String,
    },
    /// The sender is over one of its rates (`--sends-per-second-max`, `--send-burst-max`, and
    /// the typing and join rates), named with its flag.
    #[error("{0} ({flag})", flag = super::rate::rate_flag(.0.kind))]
    RateLimited(#[from] RateLimited),
    /// The sender holds as much as its quota allows (rooms, sessions, uploads).
    #[error(transparent)]
    Quota(#[from] super::quota::QuotaExceeded),
}

impl ApiError {
    /// A name error for `field`.
    pub fn name(field: &'static str) -> impl FnOnce(NameError) -> ApiError {
        move |source| ApiError::Name { field, source }
    }

    /// What kind of refusal this is, for the transport to say in its own codes.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ApiError::Name { .. } | ApiError::Malformed(_) => ErrorKind::InvalidArgument,
            ApiError::Engine(error) => engine_kind(error),
            ApiError::Lagged(_) | ApiError::FrameTooBig { .. } | ApiError::MessageTooBig { .. } => {
                ErrorKind::ResourceExhausted
            }
            ApiError::Stalled(_) => ErrorKind::Stalled,
            ApiError::ShuttingDown => ErrorKind::ShuttingDown,
            ApiError::RoomStopped => ErrorKind::Unavailable,
            ApiError::Unauthenticated(_) => ErrorKind::Unauthenticated,
            ApiError::Impersonation { .. } | ApiError::Forbidden { .. } => ErrorKind::PermissionDenied,
            ApiError::RateLimited(_) | ApiError::Quota(_) => ErrorKind::ResourceExhausted,
        }
    }

    /// What a stream's end ([`StreamEnd`], its last item) tells its client: a room that closed
    /// it for stalling or stopped under it is an error (the client must subscribe again); a
    /// session that finished or stopped ends it without one (at server shutdown the transport
    /// says [`ApiError::ShuttingDown`] itself, before a room's end could reach the client).
    pub fn from_end(end: StreamEnd) -> Option<ApiError> {
        match end {
            StreamEnd::Stalled(stalled) => Some(ApiError::Stalled(stalled)),
            StreamEnd::RoomStopped => Some(ApiError::RoomStopped),
            _ => None,
        }
    }
}

/// What kind of refusal an error is: the one classification every transport maps to its own
/// codes. Most kinds are gRPC's status codes, the vocabulary `confab.v1` was designed in (a
/// session's `Error` frame carries one as a number, [`super::convert::error_code`]); two more
/// tell apart errors that share a gRPC code but not a WebSocket close code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is wrong: a bad name, a frame with no content, bytes that do not decode.
    InvalidArgument,
    /// The room does not exist.
    NotFound,
    /// Over a limit: a size, a rate, a quota, a subscriber's queue.
    ResourceExhausted,
    /// The session is not in a state for the frame (not joined, already joined, closing).
    FailedPrecondition,
    /// The upload was aborted.
    Aborted,
    /// Try again: the store or the log is unavailable, a room stopped, the engine stopped.
    Unavailable,
    /// The server is shutting down: unavailable, and the client should go elsewhere.
    ShuttingDown,
    /// The room closed a stream for reading nothing while lagging: a policy, where a size
    /// limit would be [`ErrorKind::ResourceExhausted`].
    Stalled,
    /// No valid bearer token.
    Unauthenticated,
    /// The token does not allow it: another user's name, a room outside its permissions.
    PermissionDenied,
    /// A room's stored history is damaged.
    DataLoss,
    /// The server failed.
    Internal,
}

#[cfg(test)]
impl ErrorKind {
    /// Every kind, for tests that check a transport's mapping of each.
    pub(crate) const ALL: [ErrorKind; 12] = [
        ErrorKind::InvalidArgument,
        ErrorKind::NotFound,
        ErrorKind::ResourceExhausted,
        ErrorKind::FailedPrecondition,
        ErrorKind::Aborted,
        ErrorKind::Unavailable,
        ErrorKind::ShuttingDown,
        ErrorKind::Stalled,
        ErrorKind::Unauthenticated,
        ErrorKind::PermissionDenied,
        ErrorKind::DataLoss,
        ErrorKind::Internal,
    ];
}

/// The kind of a room refusal.
fn room_kind(error: &RoomError) -> ErrorKind {
    match error {
        RoomError::MessageTooBig { .. }
        | RoomError::RoomFull { .. }
        | RoomError::BatchTooLong { .. }
        | RoomError::TooManyRooms { .. } => ErrorKind::ResourceExhausted,
        RoomError::Retired | RoomError::Storage { .. } | RoomError::LogUnavailable { .. } => ErrorKind::Unavailable,
        RoomError::NotFound => ErrorKind::NotFound,
        RoomError::DataLoss { .. } => ErrorKind::DataLoss,
    }
}

/// The kind of a refused session frame (its code in `Error` frames).
pub fn frame_kind(error: &FrameError) -> ErrorKind {
    match error {
        FrameError::Room(error) => room_kind(error),
        FrameError::Session(SessionError::Name(_)) => ErrorKind::InvalidArgument,
        FrameError::Session(SessionError::TooManyRooms { .. }) => ErrorKind::ResourceExhausted,
        FrameError::Session(
            SessionError::NotJoined { .. }
            | SessionError::AlreadyJoined { .. }
            | SessionError::AckAhead { .. }
            | SessionError::Closing,
        ) => ErrorKind::FailedPrecondition,
    }
}

fn engine_kind(error: &EngineError) -> ErrorKind {
    match error {
        EngineError::Room(error) => room_kind(error),
        EngineError::Upload(UploadError::Room(error)) => room_kind(error),
        EngineError::Upload(UploadError::TooManyMessages { .. } | UploadError::TooManyBytes { .. }) => {
            ErrorKind::ResourceExhausted
        }
        EngineError::Upload(UploadError::Aborted) => ErrorKind::Aborted,
        EngineError::SessionClosed | EngineError::Stopped => ErrorKind::Unavailable,
        // A refusal this layer does not know yet: a server fault until it is mapped.
        _ => ErrorKind::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_whose_room_stopped_ends_unavailable_so_clients_resubscribe() {
        let error = ApiError::from_end(StreamEnd::RoomStopped).expect("an error, not a plain end");
        assert_eq!(error.kind(), ErrorKind::Unavailable);
        assert!(error.to_string().contains("after_seq"), "{error}");
        assert!(ApiError::from_end(StreamEnd::Finished).is_none(), "a finished session ends plainly");
    }
}
