//! The gRPC transport: two tonic services over one [`Engine`](confab_actors::Engine), a thin
//! mapping over the transport-neutral [`crate::api`] (conversion, errors, identity, rates,
//! quotas, the session pump).
//!
//! - [`proto`]: the generated code for `confab.v1` and the seed's `chat` (with the tonic
//!   clients and servers), re-exported from [`crate::proto`].
//! - [`status`]: every error's kind -> `tonic::Status`, in one place, and tonic's own answers
//!   to a client's mistakes recognised as such.
//! - [`confab_service`]: `confab.v1.Chat`; [`chat_service`]: `chat.ChatService`.
//! - [`shared_bytes`]: encode once, share the bytes: `Subscribe` streams send each event's
//!   `confab.v1` bytes made once for every stream, through a codec that takes them as they are.
//! - [`shutdown`]: ends open response streams with UNAVAILABLE when the server stops.
//! - [`health`]: `grpc.health.v1.Health`, NOT_SERVING once shutdown begins.
//! - [`reflection`]: server reflection (v1 and v1alpha) from the compiled-in descriptors.
//! - [`observe`]: the layer every call passes: per-RPC metrics and logs of refusals and streams.
//! - [`server`]: [`server::serve`] runs all of them on a listener until a shutdown future.
//! - [`auth`]: the interceptor in front of both services (the token from `authorization`
//!   metadata, checked by [`crate::api::auth`]); [`metadata`]: the names a call carries in
//!   metadata (the seed's room, a Session's user).
//! - [`tls`]: the server's certificate and key (clients connect with `confab_client`).
//! - [`deadline`]: `grpc-timeout`; [`idle`]: closing connections with no call.
//! - [`cancel`]: a client's reset is an error for the handler, not the end of its stream.
//!
//! [`jwt`], [`quota`] and [`rate`] moved to [`crate::api`]; they are re-exported here so the
//! command line's paths keep working.

pub mod auth;
pub mod cancel;
pub mod chat_service;
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

pub use crate::api::{jwt, quota, rate};
pub use crate::proto;
