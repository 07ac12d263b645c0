//! The gRPC transport: two tonic services over one [`Engine`](confab_actors::Engine).
//!
//! - [`proto`]: the generated code for `confab.v1` and the seed's `chat` (with the tonic
//!   clients and servers), re-exported from [`crate::proto`].
//! - [`convert`]: wire <-> engine types, and nothing else.
//! - [`status`]: every error -> `tonic::Status`, in one place.
//! - [`confab_service`]: `confab.v1.Chat`; [`chat_service`]: `chat.ChatService`.
//! - [`shared_bytes`]: encode once, share the bytes: `Subscribe` streams send each event's
//!   `confab.v1` bytes made once for every stream, through a codec that takes them as they are.
//! - [`shutdown`]: ends open response streams with UNAVAILABLE when the server stops.
//! - [`health`]: `grpc.health.v1.Health`, NOT_SERVING once shutdown begins.
//! - [`reflection`]: server reflection (v1 and v1alpha) from the compiled-in descriptors.
//! - [`observe`]: the layer every call passes: per-RPC metrics and logs of refusals and streams.
//! - [`server`]: [`server::serve`] runs all of them on a listener until a shutdown future.
//! - [`auth`]: bearer tokens, the interceptor in front of both services, the identity rule;
//!   [`jwt`]: tokens signed by the operator's backend; [`permissions`]: the rooms a token may
//!   read and post to; [`expiry`]: streams end when their token expires.
//! - [`tls`]: the server's certificate and key; [`client`]: connecting with a token and TLS.
//! - [`rate`]: send-rate limits per session, user or connection; [`deadline`]: `grpc-timeout`.
//! - [`cancel`]: a client's reset is an error for the handler, not the end of its stream.

pub mod auth;
pub mod cancel;
pub mod chat_service;
pub mod client;
pub mod confab_service;
pub mod deadline;
pub mod health;
pub mod idle;
pub mod metadata;
pub mod observe;
pub mod reflection;
pub mod server;
pub mod shared_bytes;
pub mod shutdown;
pub mod status;
pub mod tls;

pub use crate::proto;
// Moved to the transport-neutral `api`; kept at their old paths for the command line.
pub use crate::api::{jwt, quota, rate};
