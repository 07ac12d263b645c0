//! The one place where refusals become WebSocket close frames and HTTP responses.
//!
//! An [`ApiError`]'s [`ErrorKind`] says what kind of refusal it is, as it does for every
//! transport; this module translates the kind into the WebSocket's close codes (RFC 6455
//! section 7.4.1, [`code`]) and HTTP statuses ([`http_status`]). The reason text is the
//! same message a gRPC client would get.

use axum::extract::ws::{CloseFrame, close_code};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::api::error::{ApiError, ErrorKind};

/// A close frame's reason is at most this many bytes (125 of control-frame payload, minus the
/// two-byte code).
const CLOSE_REASON_BYTES_MAX: usize = 123;

/// The close frame that ends a connection: `None` when the session finished normally.
pub fn close_frame(reason: Option<ApiError>) -> CloseFrame {
    let Some(error) = reason else {
        return CloseFrame { code: close_code::NORMAL, reason: "session finished".into() };
    };
    CloseFrame { code: code(error.kind()), reason: truncate(&error.to_string(), CLOSE_REASON_BYTES_MAX).into() }
}

/// The close code of each kind of refusal.
pub fn code(kind: ErrorKind) -> u16 {
    match kind {
        ErrorKind::ShuttingDown => close_code::AWAY,
        // Closed for reading nothing while lagging: a policy, not a frame too big (1009).
        ErrorKind::Stalled => close_code::POLICY,
        ErrorKind::InvalidArgument => close_code::INVALID,
        ErrorKind::ResourceExhausted => close_code::SIZE,
        ErrorKind::Unavailable => close_code::AGAIN,
        ErrorKind::NotFound
        | ErrorKind::FailedPrecondition
        | ErrorKind::Aborted
        | ErrorKind::Unauthenticated
        | ErrorKind::PermissionDenied
        | ErrorKind::DataLoss
        | ErrorKind::Internal => close_code::ERROR,
    }
}

/// The close frame of a connection whose client sent nothing of its own for `idle_timeout`
/// (`--ws-idle-timeout`): a normal closure, since nothing went wrong.
pub fn idle_close_frame(idle_timeout: std::time::Duration) -> CloseFrame {
    let reason = format!("idle for {} (--ws-idle-timeout)", humantime::format_duration(idle_timeout));
    CloseFrame { code: close_code::NORMAL, reason: truncate(&reason, CLOSE_REASON_BYTES_MAX).into() }
}

/// The HTTP response for a request refused before (or instead of) an upgrade.
pub fn http_refusal(error: ApiError) -> Response {
    (http_status(error.kind()), format!("{error}\n")).into_response()
}

/// The HTTP status of each kind of refusal.
pub fn http_status(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::InvalidArgument => StatusCode::BAD_REQUEST,
        ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::ResourceExhausted | ErrorKind::Stalled => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::Unavailable | ErrorKind::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::FailedPrecondition | ErrorKind::Aborted | ErrorKind::DataLoss | ErrorKind::Internal => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

/// A request refused for where it comes from (its `Host` or `Origin`): 403 with the reason.
pub fn forbidden(reason: String) -> Response {
    (StatusCode::FORBIDDEN, format!("{reason}\n")).into_response()
}

/// The refusal of a connection over `--ws-connections-max`.
pub fn too_many_connections(connections_max: usize) -> Response {
    let message = format!("too many WebSocket connections (--ws-connections-max {connections_max}); try again later\n");
    (StatusCode::SERVICE_UNAVAILABLE, message).into_response()
}

/// `text` cut to at most `bytes_max` bytes on a character boundary.
fn truncate(text: &str, bytes_max: usize) -> &str {
    let mut end = text.len().min(bytes_max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_fit_a_control_frame_and_keep_whole_characters() {
        let long = "é".repeat(100);
        let cut = truncate(&long, CLOSE_REASON_BYTES_MAX);
        assert!(cut.len() <= CLOSE_REASON_BYTES_MAX);
        assert_eq!(cut.len(), 122);
    }

    #[test]
    fn each_refusal_gets_its_close_code() {
        assert_eq!(close_frame(None).code, close_code::NORMAL);
        assert_eq!(close_frame(Some(ApiError::ShuttingDown)).code, close_code::AWAY);
        assert_eq!(code(ErrorKind::Stalled), close_code::POLICY, "a policy, not a frame too big");
        assert_eq!(close_frame(Some(ApiError::Malformed("x".into()))).code, close_code::INVALID);
        let too_big = ApiError::FrameTooBig { bytes_max: 10, flag: "--ws-frame-bytes-max" };
        let frame = close_frame(Some(too_big));
        assert_eq!(frame.code, close_code::SIZE);
        assert!(frame.reason.as_str().contains("--ws-frame-bytes-max"), "{}", frame.reason.as_str());
    }

    #[test]
    fn a_refused_request_gets_its_http_status() {
        assert_eq!(http_refusal(ApiError::ShuttingDown).status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(http_refusal(ApiError::Unauthenticated("no".into())).status(), StatusCode::UNAUTHORIZED);
        assert_eq!(http_status(ErrorKind::Stalled), StatusCode::TOO_MANY_REQUESTS);
    }
}
