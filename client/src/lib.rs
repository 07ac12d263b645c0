//! A Rust client of confab's gRPC API (`confab.v1.Chat`, `proto/confab/v1/chat.proto`): a chat
//! session that rides out dropped connections and server restarts, and the connection setup
//! (bearer token, TLS) for calling the API's other RPCs with the generated stubs.
//!
//! It speaks only the wire protocol: it depends on neither the engine nor its actors, and
//! compiles the protos itself.
//!
//! ```no_run
//! use confab_client::{Client, ClientOptions, ClientSecurity, Event};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let options = ClientOptions::new("http://127.0.0.1:50051").with_user("ann");
//! let (client, mut events) = Client::connect(options).await?;
//! client.join("lobby", None).await?;
//! client.send("lobby", "hello").await?;
//! client.close().await?; // ends once "hello" has come back
//! while let Some(event) = events.next().await {
//!     match event {
//!         Event::Message(m) => println!("[{} #{}] {}: {}", m.seq, m.room, m.user, m.body),
//!         Event::Closed(result) => result?,
//!         _ => {}
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # What a session promises
//!
//! - **Each message once, no silent gap.** Within a room, [`Event::Message`]s come in sequence
//!   order, each at most once, across reconnections. What the server could not deliver is an
//!   event: [`Event::Lagged`] (the client fell behind) or [`Event::Resumed`] with
//!   `recovered: false` (the room no longer has what came after the last message handed over).
//! - **Sends survive drops.** A send the server has not acknowledged is sent again on the next
//!   connection under the same client message id, so the server stores it once; sends made
//!   during an outage wait for the connection. Order is kept: one request is in flight at a
//!   time (see [`conversation`](crate#layout)), so the caller's order is the server's.
//! - **Reconnection.** After a drop the client retries with backoff ([`RECONNECT_DELAY_FIRST`]
//!   doubling up to [`RECONNECT_DELAY_MAX`], jittered) for up to [`OUTAGE_MAX`], then ends with
//!   [`SessionError::GaveUp`]. A refusal reconnecting cannot fix (UNAUTHENTICATED,
//!   PERMISSION_DENIED, …) ends it with [`SessionError::Refused`].
//! - **Bounded.** Requests held unanswered ([`REQUESTS_PENDING_MAX`]) and events buffered for
//!   the caller ([`EVENTS_BUFFERED_MAX`]) have limits; beyond them the caller waits.
//!
//! Not offered (yet): typing notices and read acknowledgements of the `Session` call.
//!
//! # Layout
//!
//! - `connect`: URLs, bearer tokens and TLS ([`ClientSecurity`], [`connect()`], [`endpoint`]).
//! - `conversation`: the sans-IO core: rooms and how far each was handed over, the caller's
//!   requests in order, what to send on a new connection, which frames become which events.
//! - `backoff`: reconnection delays ([`Reconnect`]).
//! - `session`: the task that runs a conversation over gRPC connections ([`Client`],
//!   [`Events`]).
//! - `event`: what the caller is handed ([`Event`]).
//! - [`proto`]: the generated `confab.v1` messages and client stub.
//!
//! Data flow: [`Client`] requests → the session task → `Conversation::handle_*` → frames on the
//! `Session` call; server frames → `Conversation::handle_frame` → [`Event`]s → [`Events`].

mod backoff;
mod connect;
mod conversation;
mod event;
pub mod proto;
mod session;

pub use backoff::{OUTAGE_MAX, RECONNECT_DELAY_FIRST, RECONNECT_DELAY_MAX, Reconnect};
pub use connect::{
    AUTHORIZATION, BearerToken, CONNECT_TIMEOUT, ClientChannel, ClientSecurity, ConnectError, LinkError, connect,
    endpoint,
};
pub use event::{Event, Message, Refusal, Request};
pub use session::{
    Client, ClientOptions, Closed, EVENTS_BUFFERED_MAX, Events, HTTP2_KEEPALIVE_INTERVAL, HTTP2_KEEPALIVE_TIMEOUT,
    REQUESTS_PENDING_MAX, SESSION_OPEN_TIMEOUT, SessionError,
};
