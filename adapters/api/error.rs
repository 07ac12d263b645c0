//! The one place where errors become gRPC statuses. Handlers work with [`ApiError`] and let `?`
//! convert at the boundary, so every refusal gets the same code and a message naming the limit.

use confab_actors::{EngineError, Stalled, StreamEnd};
use confab_engine::{FrameError, Lag, NameError, RateLimited, RoomError, SessionError, UploadError, UserName};
use tonic::{Code, Status};

use crate::api::permissions::RoomAction;

/// Why a request failed, before it becomes a [`Status`].
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
    /// OUT_OF_RANGE; see [`over_decode_limit`]).
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
    #[error("{0} ({flag})", flag = crate::api::rate::rate_flag(.0.kind))]
    RateLimited(#[from] RateLimited),
    /// The sender holds as much as its quota allows (rooms, sessions, uploads).
    #[error(transparent)]
    Quota(#[from] crate::api::quota::QuotaExceeded),
}

impl ApiError {
    /// A name error for `field`.
    pub fn name(field: &'static str) -> impl FnOnce(NameError) -> ApiError {
        move |source| ApiError::Name { field, source }
    }
}

/// The status code for a room refusal.
fn room_code(error: &RoomError) -> Code {
    match error {
        RoomError::MessageTooBig { .. }
        | RoomError::RoomFull { .. }
        | RoomError::BatchTooLong { .. }
        | RoomError::TooManyRooms { .. } => Code::ResourceExhausted,
        RoomError::Retired | RoomError::Storage { .. } | RoomError::LogUnavailable { .. } => Code::Unavailable,
        RoomError::NotFound => Code::NotFound,
        RoomError::DataLoss { .. } => Code::DataLoss,
    }
}

/// The status code for a refused session frame (also sent inside `Error` frames).
pub fn frame_code(error: &FrameError) -> Code {
    match error {
        FrameError::Room(error) => room_code(error),
        FrameError::Session(SessionError::Name(_)) => Code::InvalidArgument,
        FrameError::Session(SessionError::TooManyRooms { .. }) => Code::ResourceExhausted,
        FrameError::Session(
            SessionError::NotJoined { .. }
            | SessionError::AlreadyJoined { .. }
            | SessionError::AckAhead { .. }
            | SessionError::Closing,
        ) => Code::FailedPrecondition,
        FrameError::Session(SessionError::RoomStopped { .. }) => Code::Unavailable,
    }
}

fn engine_code(error: &EngineError) -> Code {
    match error {
        EngineError::Room(error) => room_code(error),
        EngineError::Upload(UploadError::Room(error)) => room_code(error),
        EngineError::Upload(UploadError::TooManyMessages { .. } | UploadError::TooManyBytes { .. }) => {
            Code::ResourceExhausted
        }
        EngineError::Upload(UploadError::Aborted) => Code::Aborted,
        EngineError::SessionClosed | EngineError::Stopped => Code::Unavailable,
        EngineError::NoRuntime | EngineError::Runtime(_) => Code::Internal,
    }
}

impl ApiError {
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

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Status {
        let code = match &error {
            ApiError::Name { .. } | ApiError::Malformed(_) => Code::InvalidArgument,
            ApiError::Engine(error) => engine_code(error),
            ApiError::Lagged(_)
            | ApiError::Stalled(_)
            | ApiError::FrameTooBig { .. }
            | ApiError::MessageTooBig { .. } => Code::ResourceExhausted,
            ApiError::ShuttingDown | ApiError::RoomStopped => Code::Unavailable,
            ApiError::Unauthenticated(_) => Code::Unauthenticated,
            ApiError::Impersonation { .. } | ApiError::Forbidden { .. } => Code::PermissionDenied,
            ApiError::RateLimited(_) | ApiError::Quota(_) => Code::ResourceExhausted,
        };
        Status::new(code, error.to_string())
    }
}

/// The start of tonic's message when a received message is over its decoding limit
/// (`tonic::codec::decode`, 0.14: "Error, decoded message length too large: found {len} bytes,
/// the limit is: {limit} bytes"), which it sends as OUT_OF_RANGE.
const DECODE_LIMIT_PREFIX: &str = "Error, decoded message length too large: found ";

/// The refusal a status stands for if it is tonic's decode limit: a message over a size limit
/// is RESOURCE_EXHAUSTED (as the README promises and grpc-go answers), not OUT_OF_RANGE.
/// Recognised by its code and the exact start of tonic's message, so a handler's own
/// OUT_OF_RANGE is never rewritten.
pub fn over_decode_limit(status: &Status) -> Option<ApiError> {
    if status.code() != Code::OutOfRange {
        return None;
    }
    let rest = status.message().strip_prefix(DECODE_LIMIT_PREFIX)?;
    let (bytes, rest) = rest.split_once(" bytes, the limit is: ")?;
    let bytes_max = rest.strip_suffix(" bytes")?;
    Some(ApiError::MessageTooBig { bytes: bytes.parse().ok()?, bytes_max: bytes_max.parse().ok()? })
}

/// The start of every protobuf decoding error's text (prost's `DecodeError`), which tonic
/// reports as INTERNAL.
const PROTOBUF_DECODE_ERROR: &str = "failed to decode Protobuf message: ";

/// tonic's answer to a request the client got wrong, as the client's fault: a message that
/// does not decode (tonic says INTERNAL) is INVALID_ARGUMENT, one over the decoding limit
/// (OUT_OF_RANGE) is RESOURCE_EXHAUSTED. `None` for any other status. Applied to every final
/// status (`observe`), so a flood of garbage is counted and logged as refusals, not failures.
pub fn client_fault(status: &Status) -> Option<Status> {
    if let Some(refusal) = over_decode_limit(status) {
        return Some(refusal.into());
    }
    let malformed = status.code() == Code::Internal && status.message().starts_with(PROTOBUF_DECODE_ERROR);
    malformed.then(|| Status::invalid_argument(format!("malformed message: {}", status.message())))
}

/// A status from the inbound stream of a client-streaming call: a chunk that does not decode
/// is the client's fault (tonic reports it as INTERNAL), one over the decoding limit is
/// RESOURCE_EXHAUSTED, anything else (cancelled, …) passes.
pub fn inbound_status(status: Status) -> Status {
    if let Some(refusal) = over_decode_limit(&status) {
        return refusal.into();
    }
    if status.code() == Code::Internal {
        Status::invalid_argument(format!("malformed message: {}", status.message()))
    } else {
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_whose_room_stopped_ends_unavailable_so_clients_resubscribe() {
        let status = Status::from(ApiError::from_end(StreamEnd::RoomStopped).expect("an error, not a plain end"));
        assert_eq!(status.code(), Code::Unavailable);
        assert!(status.message().contains("after_seq"), "{status:?}");
        assert!(ApiError::from_end(StreamEnd::Finished).is_none(), "a finished session ends plainly");
        let stopped = FrameError::Session(SessionError::RoomStopped { room: "lobby".into() });
        assert_eq!(frame_code(&stopped), Code::Unavailable, "and a session's error frame says the same");
    }

    #[test]
    fn the_decode_limit_becomes_resource_exhausted() {
        let tonic = Status::out_of_range(
            "Error, decoded message length too large: found 8388613 bytes, the limit is: 4194304 bytes",
        );
        let refusal = over_decode_limit(&tonic).expect("recognised");
        assert!(matches!(refusal, ApiError::MessageTooBig { bytes: 8_388_613, bytes_max: 4_194_304 }));
        let status = inbound_status(tonic);
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(status.message().contains("8388613 bytes") && status.message().contains("4194304"), "{status:?}");
    }

    #[test]
    fn a_message_that_does_not_decode_is_the_clients_fault() {
        let tonic = Status::internal("failed to decode Protobuf message: SendRequest.room: invalid string value");
        let status = client_fault(&tonic).expect("recognised");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("SendRequest.room"), "{status:?}");
        assert!(client_fault(&Status::internal("the engine stopped")).is_none(), "a real failure stays INTERNAL");
    }

    #[test]
    fn other_statuses_are_not_the_decode_limit() {
        let others = [
            Status::out_of_range("seq 9 is past the end"),
            Status::internal("Error, decoded message length too large: found 9 bytes, the limit is: 4 bytes"),
            Status::out_of_range("Error, decoded message length too large: found many bytes, the limit is: 4 bytes"),
            Status::out_of_range("Error, encoded message length too large: found 9 bytes, the limit is: 4 bytes"),
        ];
        for status in others {
            assert!(over_decode_limit(&status).is_none(), "{status:?}");
        }
    }
}
