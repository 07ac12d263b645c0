//! The transport-neutral adapter layer: what every transport does the same way, so that the
//! gRPC transport (`grpc/`) and the WebSocket transport (`ws/`) are thin mappings over it.
//! Nothing here names tonic or axum, nor imports from a transport; a transport reads its
//! protocol's envelope (metadata, headers, query parameters) itself, hands the rest to these
//! modules, and says their results and refusals in its own vocabulary.
//!
//! - [`transport`]: the recipe every transport follows, and [`transport::pump_session`], the
//!   session loop of a transport that writes to its socket itself (the WebSocket);
//!   [`session_stream`]: the poll-driven pump of one whose writer polls a stream (gRPC).
//! - [`convert`]: `confab.v1` (and the seed's `chat`) messages <-> engine types, the one place
//!   where wire meets engine, and the encode-once encoders of a room event.
//! - [`error`]: [`error::ApiError`], every refusal, and its [`error::ErrorKind`], which each
//!   transport maps to its own codes in one place.
//! - [`auth`]: bearer tokens, the [`auth::Authenticator`], the identity rule ([`auth::Caller`])
//!   and what a token may do ([`auth::Grant`]); [`jwt`]: tokens signed by the operator's
//!   backend; [`permissions`]: the rooms a token may read and post to; [`expiry`]: streams end
//!   when their token expires.
//! - [`rate`]: send rates per sender ([`rate::SendLimiter`]); [`quota`]: what one sender may
//!   hold at once (rooms, sessions, uploads).
//! - [`shutdown`]: the server's shutdown as a stream checks it on every poll.

pub mod auth;
pub mod convert;
pub mod error;
pub mod expiry;
pub mod jwt;
pub mod permissions;
pub mod quota;
pub mod rate;
pub mod session_stream;
pub mod shutdown;
pub mod transport;
