//! The token check in front of both services: the [`Authenticator`] is their tonic
//! interceptor. It reads `authorization: Bearer <token>` metadata (required when the server has
//! a tokens file or a JWT key), checks the token ([`crate::api::auth`]), and puts its
//! [`Caller`] and [`Grant`] into the request's extensions, where handlers read them in one
//! place each: [`caller`] and [`grant`].

use tonic::metadata::MetadataMap;
use tonic::service::Interceptor;
use tonic::{Request, Status};

// The interceptor is the authenticator itself; the tokens it checks beside it.
pub use crate::api::auth::{Authenticator, Tokens};
use crate::api::auth::{Caller, Grant, bearer_token};
use crate::api::error::ApiError;

/// The metadata key that carries the token.
pub const AUTHORIZATION: &str = "authorization";

/// The caller the [`Authenticator`] recorded for `request`. A request without one never went
/// through the interceptor; refusing it keeps a wiring mistake from opening the server.
pub fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    request.extensions().get::<Caller>().cloned().ok_or_else(|| no_identity().into())
}

/// The [`Grant`] the [`Authenticator`] recorded for `request`, refused like [`caller`] when
/// the request skipped it.
pub fn grant<T>(request: &Request<T>) -> Result<Grant, Status> {
    request.extensions().get::<Grant>().cloned().ok_or_else(|| no_identity().into())
}

fn no_identity() -> ApiError {
    ApiError::Unauthenticated("the call has no identity (the server is misconfigured)".into())
}

/// The caller and grant of a call's `authorization` metadata.
fn authenticate(auth: &Authenticator, metadata: &MetadataMap) -> Result<(Caller, Grant), ApiError> {
    if !auth.is_required() {
        return Ok((Caller::Anyone, Grant::open()));
    }
    let unauthenticated = |reason: &str| ApiError::Unauthenticated(reason.to_owned());
    let header = metadata
        .get(AUTHORIZATION)
        .ok_or_else(|| unauthenticated("this server needs `authorization: Bearer <token>` metadata"))?;
    let header = header.to_str().map_err(|_| unauthenticated("the authorization metadata is not ASCII text"))?;
    let token =
        bearer_token(header).ok_or_else(|| unauthenticated("the authorization metadata must be `Bearer <token>`"))?;
    auth.bearer(token)
}

impl Interceptor for Authenticator {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let (caller, grant) = authenticate(self, request.metadata())?;
        request.extensions_mut().insert(caller);
        request.extensions_mut().insert(grant);
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use confab_engine::UserName;

    use super::*;
    use crate::api::auth::tests::{ANN, tokens};

    fn request_with(header: Option<&str>) -> Request<()> {
        let mut request = Request::new(());
        if let Some(header) = header {
            request.metadata_mut().insert(AUTHORIZATION, header.parse().expect("ascii"));
        }
        request
    }

    #[test]
    fn an_open_server_lets_anyone_in() {
        let mut open = Authenticator::new(None);
        let request = open.call(request_with(None)).expect("open");
        assert_eq!(caller(&request).expect("recorded"), Caller::Anyone);
    }

    #[test]
    fn a_token_is_required_and_names_the_user() {
        let mut auth = Authenticator::new(Some(tokens()));
        let request = auth.call(request_with(Some(&format!("Bearer {ANN}")))).expect("valid token");
        assert_eq!(caller(&request).expect("recorded"), Caller::User(UserName::new("ann").expect("name")));
        for header in [None, Some("Bearer wrong-token-000000000"), Some(ANN), Some("Basic YW5uOnB3")] {
            let status = auth.call(request_with(header)).expect_err("refused");
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{header:?}");
            assert!(!status.message().is_empty());
        }
    }

    #[test]
    fn a_request_that_skipped_the_interceptor_has_no_identity() {
        assert_eq!(caller(&Request::new(())).expect_err("no caller").code(), tonic::Code::Unauthenticated);
    }
}
