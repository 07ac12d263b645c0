//! confab: the gRPC and WebSocket servers and the command line around the confab chat engine.
//!
//! # Layout
//! - [`api`]: the transport-neutral adapter layer every transport is a thin mapping over:
//!   conversion between `confab.v1` and engine types, the error vocabulary and its kinds,
//!   identity and permissions, rates and quotas, the session pumps, and the transport recipe
//!   ([`api::transport`]).
//! - [`proto`]: the code generated from `proto/` (the messages both transports speak, and the
//!   tonic clients and servers).
//! - [`grpc`]: the tonic transport: status mapping, the interceptor, the two services
//!   (`confab.v1.Chat` and the seed's `chat.ChatService`) and [`grpc::server::serve`].
//! - [`ws`]: the WebSocket transport (protobuf or JSON frames), its close codes and HTTP
//!   statuses, and the embedded web chat page.
//! - [`net`]: accepting TCP connections for both ports: accept-error backoff, connection caps
//!   per port and per peer, TCP keepalive, the handshake deadline.
//! - [`metrics`]: Prometheus metrics (engine counters read at scrape time, per-RPC counters fed
//!   by [`grpc::observe`]) served on `GET /metrics` for `confab serve --metrics-listen`.
//! - [`bench`](mod@bench): the load generator behind `confab bench` (scenarios, HDR latency, /proc readings).
//! - [`cli`]: the `confab` command line (`serve`, `chat`, `bench`), parsed with clap.
//!
//! Data flow: a gRPC call (or WebSocket frame) arrives in a transport, which takes the token
//! and names from its envelope, [`api::convert`] turns the message into engine types, the
//! transport calls the [`confab_actors::Engine`] handle, and results go back through `convert`
//! while refusals ([`api::error::ApiError`]) become the transport's own codes in one place
//! ([`grpc::status`], [`ws::close`]). No engine or actor code knows which transport is in use.

pub mod api;
pub mod bench;
pub mod cli;
pub mod grpc;
pub mod metrics;
pub mod net;
pub mod proto;
pub mod ws;
