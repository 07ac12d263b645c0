//! The one place where errors become gRPC statuses: an [`ApiError`]'s kind picks the code
//! ([`code`]), its text is the message. Also where tonic's own answers to a client's mistake
//! are recognised as the client's fault ([`client_fault`]).

use tonic::{Code, Status};

use crate::api::error::{ApiError, ErrorKind};

/// The status code of each kind of refusal. The same numbers go in a session's `Error` frames
/// ([`crate::api::convert::error_code`]), so a gRPC client reads one vocabulary.
pub fn code(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::ResourceExhausted | ErrorKind::Stalled => Code::ResourceExhausted,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        ErrorKind::Aborted => Code::Aborted,
        ErrorKind::Unavailable | ErrorKind::ShuttingDown => Code::Unavailable,
        ErrorKind::Unauthenticated => Code::Unauthenticated,
        ErrorKind::PermissionDenied => Code::PermissionDenied,
        ErrorKind::DataLoss => Code::DataLoss,
        ErrorKind::Internal => Code::Internal,
    }
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Status {
        Status::new(code(error.kind()), error.to_string())
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
    fn a_status_and_an_error_frame_carry_the_same_code_for_each_kind() {
        for kind in ErrorKind::ALL {
            assert_eq!(code(kind) as i32, crate::api::convert::error_code(kind), "{kind:?}");
        }
        // The two kinds gRPC does not tell apart from others keep their codes.
        let status = Status::from(ApiError::ShuttingDown);
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.message(), "server is shutting down");
        assert_eq!(code(ErrorKind::Stalled), Code::ResourceExhausted);
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
