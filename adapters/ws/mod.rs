//! The WebSocket transport and the web chat page, on a port of their own (`--ws-listen`).
//!
//! `GET /ws?user=NAME&format=binary|json` upgrades to one session with the same operations
//! as the gRPC `Session` RPC ([`confab_actors::Engine::open_session`]): join (with
//! `after_seq` to resume), leave, post, ack and typing in; events, acks, lag markers and
//! errors out. `user` is the session's identity (default `anonymous`, as gRPC). Frames are
//! protobuf `confab.v1.ClientFrame` / `ServerFrame` in binary messages (`format=binary`, the
//! default), or JSON objects in text messages (`format=json`, see [`json`]). A refused frame
//! comes back as an `error` frame and the session goes on; a frame that does not decode, or is
//! over `--ws-frame-bytes-max`, closes the connection with a close code and the reason.
//!
//! On a server with `--tokens` the token travels in the `Sec-WebSocket-Protocol` entry
//! `confab.bearer.<base64url>` (never in the URL). Only same-origin pages (or
//! `--ws-allowed-origins`) may upgrade, and every request's `Host` must name the server
//! ([`access`]). A connection is pinged, dropped when it answers no ping, and closed when idle
//! ([`liveness`]).
//!
//! - [`server`]: the accept loop, TLS, the routes (`/` the page, `/confab.js` the client
//!   module, `/ws`, `/rooms/{room}`), limits, shutdown.
//! - [`access`]: the `Host` and `Origin` checks, and the token's subprotocol.
//! - [`connection`]: one connection as a session, through [`crate::api::transport::pump_session`].
//! - [`liveness`]: when a connection is pinged, declared dead, or closed as idle.
//! - [`json`]: the JSON text encoding of the `confab.v1` frames.
//! - [`close`]: refusals -> close codes and HTTP statuses, in one place.
//! - `page`: the embedded page (`page/index.html`, `page/app.js`) and the client module it
//!   imports (`page/confab.js`, served as `/confab.js` for any page).

pub mod access;
pub mod close;
pub mod connection;
pub mod json;
pub mod liveness;
mod page;
pub mod server;
