//! Bearer-token authentication and authorization, for every transport: the tokens file, JWTs
//! ([`super::jwt`]), the identity rule, and the room permissions ([`super::permissions`])
//! every call is held to.
//!
//! The [`Authenticator`] checks a bearer token before every call or connection: with a token
//! table or a JWT key it requires one and answers the token's user as [`Caller::User`];
//! without either (an open server) it answers [`Caller::Anyone`]. A bearer found in the
//! tokens table is that line's user; otherwise one shaped like a JWT (three dot-separated
//! base64url parts) is verified as one, when the server has a JWT key. Each transport carries
//! the token its own way (gRPC in `authorization: Bearer <token>` metadata, checked by the
//! interceptor in `grpc/auth.rs`; a WebSocket in a subprotocol) and derives every sender name
//! from the caller with [`Caller::user`]:
//!
//! - the name a client fills in (`SendRequest.user`, `UploadChunk.user`, `SubscribeRequest.user`,
//!   the Session's `user` metadata, the seed's `Message.user`, a WebSocket's `user` query
//!   parameter) may be empty, and then the token's user is used, or equal to the token's user;
//! - any other name is refused with PERMISSION_DENIED, never silently rewritten: a client that
//!   claims to be someone else has a bug or bad intent, and either way it should hear about it.
//!
//! Beside the caller, the authenticator answers the token's [`Grant`]: the rooms it may read
//! and post to, and when it expires (a JWT's `exp`). Every call that reads a room (Subscribe,
//! History, a session's Join, a room snapshot) or posts to one (Send, uploads, a session's Send
//! and Typing, the seed's SayHello and ChatStream) asks [`Grant::check`] first, and a refusal
//! is PERMISSION_DENIED naming the user and the room. ListRooms lists only the rooms the
//! bearer may read. Streams opened with an expiring token end with UNAUTHENTICATED when it
//! expires ([`super::expiry`]).
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
//!     rooms=team-*,bob
//!     read_rooms=news*
//! ```
//!
//! A token's room patterns go on lines of their own right below it, each one word:
//! `rooms=P1,P2,…` (read and post) or `read_rooms=P1,P2,…` (read only), usually indented;
//! the patterns are those of a JWT's claims ([`super::permissions`]), and `rooms=` alone
//! allows no room. A token with neither line may use every room, as before. Older files keep
//! their meaning: a line of one word was refused by every earlier version (a token with no
//! user), so no valid older file holds one.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use confab_engine::{ClientFrame, NameError, UserName};

use super::error::ApiError;
use super::jwt::{JwtVerifier, looks_like_jwt};
use super::permissions::{RoomAction, RoomPatterns, RoomPermissions};

/// Shortest token accepted in a tokens file: guessing 16 random characters is hopeless.
pub const TOKEN_BYTES_MIN: usize = 16;

/// Longest token accepted in a tokens file (it is sent with every call).
pub const TOKEN_BYTES_MAX: usize = 256;

/// The user of a session on an open server whose client names none (no `user` metadata on
/// gRPC, no `user` query parameter on a WebSocket).
pub const DEFAULT_USER: &str = "anonymous";

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

/// The token table: token -> user and the rooms it may use.
#[derive(Clone)]
pub struct Tokens {
    users: HashMap<String, TokenEntry>,
}

/// One line of the tokens file, with its pattern lines.
#[derive(Clone, Debug)]
struct TokenEntry {
    user: UserName,
    /// Shared with every call's [`Grant`].
    permissions: Arc<RoomPermissions>,
}

/// A token line's pattern lines, gathered until the next token line.
#[derive(Default)]
struct PendingPatterns {
    rooms: Option<RoomPatterns>,
    read_rooms: Option<RoomPatterns>,
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
        // The token line being read, and the pattern lines seen below it so far.
        let mut current: Option<(String, UserName, PendingPatterns)> = None;
        let mut finish = |entry: Option<(String, UserName, PendingPatterns)>| {
            if let Some((token, user, patterns)) = entry {
                let permissions = Arc::new(RoomPermissions::new(patterns.rooms, patterns.read_rooms));
                users.insert(token, TokenEntry { user, permissions });
            }
        };
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let content = raw.trim();
            if content.is_empty() || content.starts_with('#') {
                continue;
            }
            let bad = |reason: String| TokensError::Line { line, reason };
            if let Some((field, patterns)) = pattern_line(content) {
                let Some((_, _, pending)) = current.as_mut() else {
                    return Err(bad(format!("{field}= belongs below a `TOKEN USER` line")));
                };
                let slot = if field == "rooms" { &mut pending.rooms } else { &mut pending.read_rooms };
                if slot.is_some() {
                    return Err(bad(format!("a second {field}= line for the same token; list every pattern on one")));
                }
                *slot = Some(RoomPatterns::parse_list(patterns).map_err(|error| bad(format!("{field}=: {error}")))?);
                continue;
            }
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
            finish(current.replace((token.to_owned(), user, PendingPatterns::default())));
        }
        finish(current);
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
        let mut names: Vec<&str> = self.users.values().map(|entry| entry.user.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        names.len()
    }

    #[cfg(test)]
    fn user(&self, token: &str) -> Option<&UserName> {
        self.users.get(token).map(|entry| &entry.user)
    }

    /// How many tokens are limited to some rooms.
    pub fn restricted_count(&self) -> usize {
        self.users.values().filter(|entry| !entry.permissions.is_unrestricted()).count()
    }
}

/// A pattern line (`rooms=…` or `read_rooms=…`, one word): the field and its patterns.
fn pattern_line(content: &str) -> Option<(&'static str, &str)> {
    if content.contains(char::is_whitespace) {
        return None;
    }
    ["rooms", "read_rooms"].into_iter().find_map(|field| {
        content.strip_prefix(field).and_then(|rest| rest.strip_prefix('=')).map(|patterns| (field, patterns))
    })
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

    /// The user of a session, from a name the client may leave out (`field`: the Session's
    /// `user` metadata, a WebSocket's `user` query parameter): on an open server the name
    /// given, [`DEFAULT_USER`] when none is; otherwise as [`Caller::user`].
    pub fn session_user(&self, claimed: Option<&str>, field: &'static str) -> Result<UserName, ApiError> {
        let default = if matches!(self, Caller::Anyone) { DEFAULT_USER } else { "" };
        self.user(claimed.unwrap_or(default), field)
    }

    fn same(user: &UserName, claimed: &str, field: &'static str) -> Result<UserName, ApiError> {
        if claimed.is_empty() || claimed == user.as_str() {
            Ok(user.clone())
        } else {
            Err(ApiError::Impersonation { field, claimed: claimed.to_owned(), user: user.clone() })
        }
    }
}

/// What one bearer may do: the rooms it may read and post to, and until when.
#[derive(Clone, Debug)]
pub struct Grant {
    /// Named in refusals; `None` on an open server (which refuses nothing).
    user: Option<UserName>,
    /// Shared by every call made with the same tokens-file line.
    permissions: Arc<RoomPermissions>,
    /// A JWT's `exp` plus the leeway: streams end then. `None`: never (a tokens-file token).
    expires_at: Option<SystemTime>,
}

impl Grant {
    /// Everything, forever: an open server's grant.
    pub fn open() -> Self {
        Self { user: None, permissions: Arc::new(RoomPermissions::all()), expires_at: None }
    }

    /// The grant of `user`'s token.
    pub fn new(user: UserName, permissions: Arc<RoomPermissions>, expires_at: Option<SystemTime>) -> Self {
        Self { user: Some(user), permissions, expires_at }
    }

    /// When streams opened with this token end.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
    }

    /// Whether the bearer may do `action` in `room`.
    pub fn allows(&self, room: &str, action: RoomAction) -> bool {
        self.permissions.allows(room, action)
    }

    /// Refuses `action` in `room` with PERMISSION_DENIED naming both, unless the token allows it.
    pub fn check(&self, room: &str, action: RoomAction) -> Result<(), ApiError> {
        if self.allows(room, action) {
            return Ok(());
        }
        let user = self.user.as_ref().map(UserName::as_str).unwrap_or_default().to_owned();
        Err(ApiError::Forbidden { user, action, room: room.to_owned() })
    }

    /// The refusal of a session frame the token does not allow: a Join needs reading, a Send
    /// or Typing posting; Leave and Ack only touch rooms the session already joined.
    pub fn check_frame(&self, frame: &ClientFrame) -> Result<(), (String, ApiError)> {
        let (room, action) = match frame {
            ClientFrame::Join { room, .. } => (room, RoomAction::Read),
            ClientFrame::Send { room, .. } | ClientFrame::Typing { room, .. } => (room, RoomAction::Post),
            _ => return Ok(()),
        };
        self.check(room, action).map_err(|error| (room.clone(), error))
    }
}

/// Checks bearer tokens against the tokens file and the JWT key: the [`Caller`] and [`Grant`]
/// of every call and connection (gRPC's interceptor is this type, in `grpc/auth.rs`).
#[derive(Clone, Debug, Default)]
pub struct Authenticator {
    /// `None`: no tokens file.
    tokens: Option<Arc<Tokens>>,
    /// `None`: no JWT key. Neither: an open server.
    jwt: Option<Arc<JwtVerifier>>,
}

impl Authenticator {
    /// An authenticator that requires one of `tokens`, or lets anyone in when `None`.
    pub fn new(tokens: Option<Arc<Tokens>>) -> Self {
        Self { tokens, jwt: None }
    }

    /// The same, also taking JWTs that `jwt` verifies (and requiring a bearer when it is set).
    pub fn with_jwt(self, jwt: Option<Arc<JwtVerifier>>) -> Self {
        Self { jwt, ..self }
    }

    /// Whether calls need a token.
    pub fn is_required(&self) -> bool {
        self.tokens.is_some() || self.jwt.is_some()
    }

    /// The caller for a bare token, for transports that cannot send an `authorization` header
    /// (a browser's WebSocket passes it in a subprotocol).
    pub fn authenticate_token(&self, token: Option<&str>) -> Result<Caller, ApiError> {
        self.authorize_token(token).map(|(caller, _)| caller)
    }

    /// The caller and grant for a bare token (see [`Authenticator::authenticate_token`]).
    pub fn authorize_token(&self, token: Option<&str>) -> Result<(Caller, Grant), ApiError> {
        if !self.is_required() {
            return Ok((Caller::Anyone, Grant::open()));
        }
        let token = token.ok_or_else(|| ApiError::Unauthenticated("this server needs a token".into()))?;
        self.bearer(token.trim())
    }

    /// The caller and grant of a bearer token: a tokens-file line, else a JWT.
    pub fn bearer(&self, token: &str) -> Result<(Caller, Grant), ApiError> {
        if let Some(entry) = self.tokens.as_ref().and_then(|tokens| tokens.users.get(token)) {
            let grant = Grant::new(entry.user.clone(), Arc::clone(&entry.permissions), None);
            return Ok((Caller::User(entry.user.clone()), grant));
        }
        match &self.jwt {
            Some(jwt) if looks_like_jwt(token) => {
                let bearer = jwt.verify(token).map_err(|refused| ApiError::Unauthenticated(refused.to_string()))?;
                let grant = Grant::new(bearer.user.clone(), Arc::new(bearer.permissions), bearer.expires_at);
                Ok((Caller::User(bearer.user), grant))
            }
            _ => Err(ApiError::Unauthenticated("unknown bearer token".into())),
        }
    }
}

/// The token of an `authorization` value `Bearer <token>`, if it is one.
pub fn bearer_token(header: &str) -> Option<&str> {
    header.strip_prefix("Bearer ").or_else(|| header.strip_prefix("bearer ")).map(str::trim)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    use crate::api::error::ErrorKind;

    /// A token of the file [`tokens`] reads, Ann's.
    pub(crate) const ANN: &str = "ann-token-0123456789";

    /// A tokens file of two users.
    pub(crate) fn tokens() -> Arc<Tokens> {
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
    fn pattern_lines_limit_the_token_above_and_old_files_mean_the_same() {
        let text = format!(
            "{ANN} ann\n  rooms=team-*,ann\n\tread_rooms=news*\nbob-token-9876543210 Bob rooms=x\ncarol-token-000000000 carol\n rooms=\n"
        );
        let tokens = Tokens::parse(&text).expect("valid");
        let grant = |token: &str| Authenticator::new(Some(Arc::new(tokens.clone()))).bearer(token).expect("known").1;
        let ann = grant(ANN);
        assert!(ann.allows("team-a", RoomAction::Post) && ann.allows("news-eu", RoomAction::Read));
        assert!(!ann.allows("news-eu", RoomAction::Post) && !ann.allows("lobby", RoomAction::Read));
        // A name that merely contains `rooms=` stays a name, as it always was.
        assert_eq!(tokens.user("bob-token-9876543210").map(UserName::as_str), Some("Bob rooms=x"));
        assert!(grant("bob-token-9876543210").allows("lobby", RoomAction::Post));
        assert!(!grant("carol-token-000000000").allows("lobby", RoomAction::Read));
        assert_eq!(tokens.restricted_count(), 2);
        let error = ann.check("lobby", RoomAction::Post).expect_err("not allowed");
        assert_eq!(error.kind(), ErrorKind::PermissionDenied);
        assert!(error.to_string().contains("user ann may not post to room 'lobby'"), "{error}");
    }

    #[test]
    fn misplaced_or_bad_pattern_lines_are_refused_naming_the_line() {
        let cases = [
            ("rooms=a*\n".to_owned(), "line 1: rooms= belongs below"),
            (format!("{ANN} ann\nrooms=a\nrooms=b\n"), "line 3: a second rooms= line"),
            (format!("{ANN} ann\nread_rooms=a/b\n"), "line 2: read_rooms=: room pattern"),
        ];
        for (text, expected) in cases {
            let error = Tokens::parse(&text).expect_err(&text).to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }

    #[test]
    fn session_frames_need_the_permission_of_what_they_do() {
        let permissions = RoomPermissions::new(None, Some(RoomPatterns::parse_list("news").expect("valid")));
        let grant = Grant::new(UserName::new("ann").expect("name"), Arc::new(permissions), None);
        let join = |room: &str| ClientFrame::Join { room: room.into(), after_seq: None };
        assert!(grant.check_frame(&join("news")).is_ok());
        assert_eq!(grant.check_frame(&join("lobby")).expect_err("not readable").0, "lobby");
        let send = ClientFrame::Send { room: "news".into(), client_msg_id: String::new(), body: "hi".into() };
        assert!(grant.check_frame(&send).is_err());
        assert!(grant.check_frame(&ClientFrame::Leave { room: "lobby".into() }).is_ok());
        assert!(Grant::open().check_frame(&send).is_ok());
    }

    #[test]
    fn a_token_is_required_and_names_the_user() {
        let auth = Authenticator::new(Some(tokens()));
        let (caller, _) = auth.authorize_token(Some(ANN)).expect("valid token");
        assert_eq!(caller, Caller::User(UserName::new("ann").expect("name")));
        for token in [None, Some("wrong-token-000000000"), Some("")] {
            let error = auth.authorize_token(token).expect_err("refused");
            assert_eq!(error.kind(), ErrorKind::Unauthenticated, "{token:?}");
            assert!(!error.to_string().is_empty());
        }
        assert_eq!(Authenticator::new(None).authorize_token(None).expect("open").0, Caller::Anyone);
    }

    #[test]
    fn the_identity_rule_fills_in_or_refuses_never_rewrites() {
        let ann = Caller::User(UserName::new("ann").expect("name"));
        assert_eq!(ann.user("", "user").expect("empty is me").as_str(), "ann");
        assert_eq!(ann.user("ann", "user").expect("same").as_str(), "ann");
        let error = ann.user("bob", "user").expect_err("someone else");
        assert_eq!(error.kind(), ErrorKind::PermissionDenied);
        assert!(error.to_string().contains("bob") && error.to_string().contains("ann"), "{error}");
        assert_eq!(ann.optional_user("", "user").expect("nobody"), None);
        assert_eq!(Caller::Anyone.user("bob", "user").expect("open").as_str(), "bob");
        assert_eq!(ann.session_user(None, "user").expect("absent is me").as_str(), "ann");
        assert!(ann.session_user(Some("bob"), "user").is_err());
        assert_eq!(Caller::Anyone.session_user(None, "user").expect("open").as_str(), DEFAULT_USER);
    }
}
