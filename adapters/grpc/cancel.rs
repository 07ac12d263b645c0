//! A client that cancels a call has not finished sending.
//!
//! tonic's server reads a request stream that the client reset with CANCEL (what tonic and
//! grpc-go clients send when a call is dropped or its deadline passes) as a normal end of the
//! stream: `Streaming::message` returns `Ok(None)`, exactly as after a half-close. An upload
//! handler would then commit what it had, so a cancelled upload left a trace (against G6), and a
//! cancelled Session looked like a polite goodbye. This layer turns that reset into ABORTED
//! before tonic's decoder sees it, so handlers get an error and drop what they were building.

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Frame, SizeHint};
use tonic::body::Body;
use tonic::codegen::Bytes;
use tonic::codegen::http;
use tonic::{Code, Status};
use tower::{Layer, Service};

/// Adds [`CancelIsNotEnd`] around a service.
#[derive(Clone, Copy, Debug, Default)]
pub struct CancelLayer;

impl<S> Layer<S> for CancelLayer {
    type Service = CancelIsNotEnd<S>;

    fn layer(&self, inner: S) -> CancelIsNotEnd<S> {
        CancelIsNotEnd { inner }
    }
}

/// Wraps every request body in [`ResetIsAbort`].
#[derive(Clone, Debug)]
pub struct CancelIsNotEnd<S> {
    inner: S,
}

impl<S> Service<http::Request<Body>> for CancelIsNotEnd<S>
where
    S: Service<http::Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        self.inner.call(request.map(|body| Body::new(ResetIsAbort { inner: body })))
    }
}

/// A request body whose CANCELLED error (a client reset) comes out as ABORTED, which tonic
/// passes on to the handler instead of reading it as the end of the stream.
pub struct ResetIsAbort {
    inner: Body,
}

impl http_body::Body for ResetIsAbort {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        Pin::new(&mut self.inner).poll_frame(cx).map_err(|status| match status.code() {
            Code::Cancelled => Status::aborted(format!(
                "the client cancelled the call before it finished sending: {}",
                status.message()
            )),
            _ => status,
        })
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
