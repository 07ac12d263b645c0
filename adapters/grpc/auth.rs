//! Bearer-token authentication: the tokens file, the interceptor that checks every call, and
//! the identity rule the services apply.
//!
//! The [`Authenticator`] runs before every call of both services. With a token table it
//! requires `authorization: Bearer <token>` and puts the token's user into the request
//! extensions as [`Caller::User`]; without one (an open server) it puts [`Caller::Anyone`].
//! Services read it in one place, [`caller`], and derive every sender name from it with
//! [`Caller::user`] or [`Caller::metadata_user`]:
//!
//! - the name a client fills in (`SendRequest.user`, `UploadChunk.user`, `SubscribeRequest.user`,
//!   the Session's `user` metadata, the seed's `Message.user`) may be empty, and then the
//!   token's user is used, or equal to the token's user;
//! - any other name is refused with PERMISSION_DENIED, never silently rewritten: a client that
//!   claims to be someone else has a bug or bad intent, and either way it should hear about it.
//!
//! # The tokens file (`confab serve --tokens FILE`)
//!
//! UTF-8 text, one token per line: the token, whitespace, then the user name (the rest of the
//! line, so a name may contain spaces). Blank lines and lines starting with `#` are ignored.
//! A token is 16 to 256 printable ASCII characters without spaces (it travels in an HTTP
//! header); every token appears once; several tokens may map to the same user (one per device).
//!
//! ```text
//! # token                           user
//! 3q2+7w-ann-laptop-a8c1f9d2e4b6    ann
//! 9f8e7d6c5b4a-bob-phone-11223344   Bob Smith
//! ```

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use confab_engine::{NameError, UserName};
use tonic::metadata::MetadataMap;
use tonic::service::Interceptor;
use tonic::{Request, Status};

use super::convert;
use super::status::ApiError;

/// Shortest token accepted in a tokens file: guessing 16 random characters is hopeless.
pub const TOKEN_BYTES_MIN: usize = 16;

/// Longest token accepted in a tokens file (it is sent with every call).
pub const TOKEN_BYTES_MAX: usize = 256;

/// The metadata key that carries the token.
pub const AUTHORIZATION: &str = "authorization";

/// A tokens file that cannot be used. The server refuses to start with it.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    /// The file cannot be read.
    #[error("cannot read it: {0}")]
    Read(#[from] std::io::Error),
    /// A line is malformed.
    #[error("line {line}: {reason}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The file has no token at all: nobody could connect.
    #[error("it has no tokens, so nobody could connect (format: one `TOKEN USER` per line)")]
    Empty,
}

/// The token table: token -> user.
#[derive(Clone)]
pub struct Tokens {
    users: HashMap<String, UserName>,
}

impl std::fmt::Debug for Tokens {
    /// The count only: tokens are secrets, and options structs get logged.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens").field("len", &self.users.len()).finish_non_exhaustive()
    }
}

impl Tokens {
    /// Reads and parses a tokens file.
    pub fn load(path: &Path) -> Result<Tokens, TokensError> {
        Tokens::parse(&std::fs::read_to_string(path)?)
    }

    /// Parses the text of a tokens file (format in the module docs).
    pub fn parse(text: &str) -> Result<Tokens, TokensError> {
        let mut users = HashMap::new();
        let mut first_line_of = HashMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let content = raw.trim();
            if content.is_empty() || content.starts_with('#') {
                continue;
            }
            let bad = |reason: String| TokensError::Line { line, reason };
            let (token, user) = content
                .split_once(char::is_whitespace)
                .map(|(token, user)| (token, user.trim()))
                .ok_or_else(|| bad("a token with no user; write `TOKEN USER`".into()))?;
            check_token(token).map_err(bad)?;
            let user = UserName::new(user).map_err(|error: NameError| bad(error.to_string()))?;
            if user.as_str().is_empty() {
                return Err(bad("the user name is empty".into()));
            }
            if let Some(first) = first_line_of.insert(token.to_owned(), line) {
                return Err(bad(format!("the same token as line {first}; every token must be unique")));
            }
            users.insert(token.to_owned(), user);
        }
        if users.is_empty() {
            return Err(TokensError::Empty);
        }
        Ok(Tokens { users })
    }

    /// How many tokens the table holds.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether the table is empty (never, for a parsed file).
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// How many distinct users the tokens belong to.
    pub fn user_count(&self) -> usize {
        let mut names: Vec<&str> = self.users.values().map(UserName::as_str).collect();
        names.sort_unstable();
        names.dedup();
        names.len()
    }

    fn user(&self, token: &str) -> Option<&UserName> {
        self.users.get(token)
    }
}

fn check_token(token: &str) -> Result<(), String> {
    if token.len() < TOKEN_BYTES_MIN || token.len() > TOKEN_BYTES_MAX {
        return Err(format!(
            "the token is {} bytes; tokens are {TOKEN_BYTES_MIN} to {TOKEN_BYTES_MAX} bytes",
            token.len()
        ));
    }
    if let Some(bad) = token.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!("the token has {bad:?}; tokens are printable ASCII without spaces"));
    }
    Ok(())
}

/// Who is calling, as established by the [`Authenticator`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// An open server (no `--tokens`): the client names itself.
    Anyone,
    /// The user a valid bearer token belongs to.
    User(UserName),
}

impl Caller {
    /// The sender for a name the client filled in (`field` names it in refusals): on an open
    /// server the claimed name itself; otherwise the token's user, provided the claim is empty
    /// or the same name.
    pub fn user(&self, claimed: &str, field: &'static str) -> Result<UserName, ApiError> {
        match self {
            Caller::Anyone => UserName::new(claimed).map_err(ApiError::name(field)),
            Caller::User(user) => Self::same(user, claimed, field),
        }
    }

    /// Like [`Caller::user`], for a name that may be left out (`SubscribeRequest.user`): an
    /// empty claim stays "nobody" rather than becoming the token's user.
    pub fn optional_user(&self, claimed: &str, field: &'static str) -> Result<Option<UserName>, ApiError> {
        if claimed.is_empty() { Ok(None) } else { self.user(claimed, field).map(Some) }
    }

    /// The user of a confab.v1 Session, from its `user` metadata key.
    pub fn metadata_user(&self, metadata: &MetadataMap) -> Result<UserName, ApiError> {
        match self {
            Caller::Anyone => convert::metadata_user(metadata),
            Caller::User(user) => {
                let claimed = match metadata.get("user") {
                    None => "",
                    Some(value) => {
                        value.to_str().map_err(|_| ApiError::Malformed("metadata \"user\" is not ASCII text".into()))?
                    }
                };
                Self::same(user, claimed, "metadata user")
            }
        }
    }

    fn same(user: &UserName, claimed: &str, field: &'static str) -> Result<UserName, ApiError> {
        if claimed.is_empty() || claimed == user.as_str() {
            Ok(user.clone())
        } else {
            Err(ApiError::Impersonation { field, claimed: claimed.to_owned(), user: user.clone() })
        }
    }
}

/// The caller the [`Authenticator`] recorded for `request`. A request without one never went
/// through the interceptor; refusing it keeps a wiring mistake from opening the server.
pub fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    request.extensions().get::<Caller>().cloned().ok_or_else(|| {
        ApiError::Unauthenticated("the call has no identity (the server is misconfigured)".into()).into()
    })
}

/// The interceptor in front of both services: checks the bearer token, records the [`Caller`].
#[derive(Clone, Debug, Default)]
pub struct Authenticator {
    /// `None` for an open server.
    tokens: Option<Arc<Tokens>>,
}

impl Authenticator {
    /// An authenticator that requires one of `tokens`, or lets anyone in when `None`.
    pub fn new(tokens: Option<Arc<Tokens>>) -> Self {
        Self { tokens }
    }

    /// Whether calls need a token.
    pub fn is_required(&self) -> bool {
        self.tokens.is_some()
    }

    /// The caller for a bare token, for transports that cannot send an `authorization` header
    /// (a browser's WebSocket passes it as a query parameter).
    pub fn authenticate_token(&self, token: Option<&str>) -> Result<Caller, ApiError> {
        let Some(tokens) = &self.tokens else { return Ok(Caller::Anyone) };
        let token = token.ok_or_else(|| ApiError::Unauthenticated("this server needs a token".into()))?;
        tokens
            .user(token.trim())
            .cloned()
            .map(Caller::User)
            .ok_or_else(|| ApiError::Unauthenticated("unknown token".into()))
    }

    fn authenticate(&self, metadata: &MetadataMap) -> Result<Caller, ApiError> {
        let Some(tokens) = &self.tokens else { return Ok(Caller::Anyone) };
        let unauthenticated = |reason: &str| ApiError::Unauthenticated(reason.to_owned());
        let header = metadata
            .get(AUTHORIZATION)
            .ok_or_else(|| unauthenticated("this server needs `authorization: Bearer <token>` metadata"))?;
        let header = header.to_str().map_err(|_| unauthenticated("the authorization metadata is not ASCII text"))?;
        let token = bearer_token(header)
            .ok_or_else(|| unauthenticated("the authorization metadata must be `Bearer <token>`"))?;
        tokens.user(token).cloned().map(Caller::User).ok_or_else(|| unauthenticated("unknown bearer token"))
    }
}

/// The token of an `authorization` value `Bearer <token>`, if it is one.
pub fn bearer_token(header: &str) -> Option<&str> {
    header.strip_prefix("Bearer ").or_else(|| header.strip_prefix("bearer ")).map(str::trim)
}

impl Interceptor for Authenticator {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let caller = self.authenticate(request.metadata())?;
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANN: &str = "ann-token-0123456789";

    fn request_with(header: Option<&str>) -> Request<()> {
        let mut request = Request::new(());
        if let Some(header) = header {
            request.metadata_mut().insert(AUTHORIZATION, header.parse().expect("ascii"));
        }
        request
    }

    fn tokens() -> Arc<Tokens> {
        Arc::new(Tokens::parse(&format!("# comment\n\n{ANN}  ann\nbob-token-9876543210 Bob Smith\n")).expect("valid"))
    }

    #[test]
    fn the_file_format_maps_tokens_to_users() {
        let tokens = tokens();
        assert_eq!(tokens.len(), 2);
        assert_eq!(tokens.user(ANN).map(UserName::as_str), Some("ann"));
        assert_eq!(tokens.user("bob-token-9876543210").map(UserName::as_str), Some("Bob Smith"));
    }

    #[test]
    fn debug_output_shows_no_token() {
        let printed = format!("{:?}", tokens());
        assert!(!printed.contains(ANN) && printed.contains('2'), "{printed}");
    }

    #[test]
    fn a_malformed_file_is_refused_naming_the_line() {
        let cases = [
            ("# only a comment\n", "no tokens"),
            ("\n\nlonely-token-without-user\n", "line 3"),
            ("short ann\n", "line 1: the token is 5 bytes"),
            (&format!("{ANN} ann\n{ANN} bob\n"), "line 2: the same token as line 1"),
            ("tab-in-user-name-ok-1234 a\u{7}b\n", "control character"),
        ];
        for (text, expected) in cases {
            let error = Tokens::parse(text).expect_err(text).to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
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

    #[test]
    fn the_identity_rule_fills_in_or_refuses_never_rewrites() {
        let ann = Caller::User(UserName::new("ann").expect("name"));
        assert_eq!(ann.user("", "user").expect("empty is me").as_str(), "ann");
        assert_eq!(ann.user("ann", "user").expect("same").as_str(), "ann");
        let status: Status = ann.user("bob", "user").expect_err("someone else").into();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert!(status.message().contains("bob") && status.message().contains("ann"), "{}", status.message());
        assert_eq!(ann.optional_user("", "user").expect("nobody"), None);
        assert_eq!(Caller::Anyone.user("bob", "user").expect("open").as_str(), "bob");
        let mut metadata = MetadataMap::new();
        assert_eq!(ann.metadata_user(&metadata).expect("absent is me").as_str(), "ann");
        metadata.insert("user", "bob".parse().expect("ascii"));
        assert!(ann.metadata_user(&metadata).is_err());
        assert_eq!(Caller::Anyone.metadata_user(&metadata).expect("open").as_str(), "bob");
    }
}
