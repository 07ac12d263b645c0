//! confab: the gRPC server and command line around the confab chat engine.
//!
//! # Layout
//! - [`grpc`]: the tonic transport: generated protos, conversion, status mapping, the two
//!   services (`confab.v1.Chat` and the seed's `chat.ChatService`) and [`grpc::server::serve`].
//! - [`bench`](mod@bench): the load generator behind `confab bench` (scenarios, HDR latency, /proc readings).
//! - [`metrics`]: Prometheus metrics (engine counters read at scrape time, per-RPC counters fed
//!   by [`grpc::observe`]) served on `GET /metrics` for `confab serve --metrics-listen`.
//! - [`cli`]: the `confab` command line (`serve`, `chat`, `bench`), parsed with clap.
//! - [`transport`]: the boundary every transport follows to turn its protocol into `Engine`
//!   calls, and the session pump that gRPC and WebSocket sessions share.
//! - [`net`]: accepting TCP connections for both ports: accept-error backoff, connection caps
//!   per port and per peer, TCP keepalive, the handshake deadline.
//! - [`ws`]: the WebSocket transport (protobuf or JSON frames) and the embedded web chat page.
//!
//! Data flow: a gRPC call (or WebSocket frame) arrives in a service, [`grpc::convert`] turns it into engine types, the
//! service calls the [`confab_actors::Engine`] handle, and results or refusals go back through
//! `convert` and [`grpc::status`]. No engine or actor code knows which transport is in use.

pub mod api;
pub mod bench;
pub mod cli;
pub mod grpc;
pub mod metrics;
pub mod net;
pub mod proto;
pub mod ws;
