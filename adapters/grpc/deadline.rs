//! Client deadlines (`grpc-timeout`), answered with DEADLINE_EXCEEDED.
//!
//! tonic's server already drops a call whose `grpc-timeout` passes, but it answers CANCELLED
//! ("Timeout expired"), and the gRPC spec says DEADLINE_EXCEEDED. This layer runs the same
//! timer one tick earlier and answers the right code, so clients can tell "too slow" from
//! "cancelled".
//!
//! What a deadline covers: everything a handler does before it returns. For unary calls and
//! client-streaming uploads that is the whole call, so when the deadline passes the handler's
//! future is dropped. An upload then never commits (dropping it aborts it, G6) and a unary `Send`
//! is either committed whole or not at all (if the room had already taken it, a retry with the
//! same `client_msg_id` returns the original number, G4). For server-streaming and bidirectional
//! calls it covers opening the stream only; the client ends a stream whenever it likes.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::Either;
use tonic::Status;
use tonic::codegen::http::{self, HeaderMap};
use tower::{Layer, Service};

/// The request header that carries the client's deadline.
const GRPC_TIMEOUT: &str = "grpc-timeout";

/// How much earlier than tonic's own timer this one fires: tokio's timers tick in milliseconds,
/// so one tick ahead always wins the race and the client gets DEADLINE_EXCEEDED, not CANCELLED.
const AHEAD_OF_TONIC: Duration = Duration::from_millis(1);

/// Adds [`Deadline`] around a service.
#[derive(Clone, Copy, Debug, Default)]
pub struct DeadlineLayer;

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline { inner }
    }
}

/// Ends a call whose `grpc-timeout` passes with DEADLINE_EXCEEDED.
#[derive(Clone, Debug)]
pub struct Deadline<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, RequestBody, ResponseBody> Service<http::Request<RequestBody>> for Deadline<S>
where
    S: Service<http::Request<RequestBody>, Response = http::Response<ResponseBody>>,
    S::Future: Send + 'static,
    ResponseBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    /// Calls without a deadline (most) go through as they are, with no allocation.
    type Future = Either<S::Future, BoxFuture<Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<RequestBody>) -> Self::Future {
        let timeout = grpc_timeout(request.headers());
        let call = self.inner.call(request);
        let Some(timeout) = timeout else { return Either::Left(call) };
        Either::Right(Box::pin(async move {
            match tokio::time::timeout(timeout.saturating_sub(AHEAD_OF_TONIC), call).await {
                Ok(response) => response,
                Err(_) => {
                    let message = format!("deadline exceeded: the call's grpc-timeout of {timeout:?} passed first");
                    Ok(Status::deadline_exceeded(message).into_http())
                }
            }
        }))
    }
}

/// The client's timeout, if the header is present and well formed (a malformed one is ignored,
/// as tonic does): 1 to 8 digits and a unit, `H`ours, `M`inutes, `S`econds, `m`illis, `u`
/// micros or `n`anos.
fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get(GRPC_TIMEOUT)?.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value * 3_600),
        "M" => Duration::from_secs(value * 60),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: &str) -> Option<Duration> {
        let mut headers = HeaderMap::new();
        headers.insert(GRPC_TIMEOUT, value.parse().expect("header value"));
        grpc_timeout(&headers)
    }

    #[test]
    fn every_unit_of_the_spec_parses() {
        assert_eq!(parse("2H"), Some(Duration::from_secs(7_200)));
        assert_eq!(parse("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse("4S"), Some(Duration::from_secs(4)));
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(parse("7n"), Some(Duration::from_nanos(7)));
    }

    #[test]
    fn malformed_values_are_ignored() {
        for bad in ["", "S", "10", "10x", "123456789S", "-1S", "1.5S"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        assert_eq!(grpc_timeout(&HeaderMap::new()), None);
    }
}
