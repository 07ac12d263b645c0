//! confab-actors: the confab engine's state machines as kameo actors, behind one
//! executor-agnostic [`Engine`] handle.
//!
//! **The one crate an embedder depends on.** Everything a program that embeds the engine
//! touches is here: the handle and its streams, and, re-exported from the sans-IO core
//! (`confab-engine`), the names, messages, events, frames, limits and refusals they carry. The
//! core crate itself is for those who drive its state machines without actors (tests, other
//! runtimes).
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use confab_actors::{Draft, Engine, EngineConfig, RoomName, UserName};
//!
//! let engine = Engine::start_background(EngineConfig::default())?;
//! let lobby = RoomName::new("lobby")?;
//! let hello = Draft { user: UserName::new("ann")?, client_msg_id: None, body: "hello".into() };
//! let sent = futures::executor::block_on(engine.send(&lobby, hello))?;
//! assert_eq!(sent.seq, 1);
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//! - [`engine`]: the [`Engine`] handle and its streams ([`RoomEvents`], [`SessionEvents`]),
//!   the upload ([`Upload`]) and the session input ([`SessionSender`]).
//! - `registry`: the registry actor that creates, finds, lists and retires rooms.
//! - `room_actor`: one actor per room around `confab_engine::Room`; a durable room appends to
//!   its [`room_log::RoomLog`] through `confab_engine::Appender`.
//! - [`room_log`]: the boundary between a durable room and where its messages are committed
//!   (the local store's log, a replicated log, the simulator's model).
//! - `session_actor`: one actor per bidirectional client around `confab_engine::Session`.
//! - `upload_actor`: one actor per upload around `confab_engine::UploadAggregator`.
//! - `directory`: how every part reaches a room (resolve, request, retry if it retired).
//! - `ring`: a room's ring shared by its actor (the writer) and its readers, and the reader
//!   that Subscribe streams and session streams poll.
//! - `stats`: the engine's counters (rooms, sessions, messages, deliveries, lag) that rooms and
//!   sessions bump and [`Engine::stats`] snapshots as a [`StatsSnapshot`] for metrics.
//! - `health`: whether the engine can serve ([`Engine::health`]): registry alive, store
//!   committing, replicated log reachable with a quorum.
//! - `log_health`: the periodic probe of a replicated log behind that last part.
//! - [`presence`]: presence and typing across nodes (cluster mode): the task that drives the
//!   engine's presence roster over a [`PresenceBus`] (core NATS, or [`MemoryBus`] in tests)
//!   and tells the rooms other nodes' users.
//! - `clock`: engine time from tokio's clock (virtual under a paused runtime).
//! - [`store`]: durable history: the [`store::HistoryStore`] trait, the redb store, the
//!   in-memory store, and the writer thread that group-commits every room's messages.
//! - `cluster` (feature `cluster`): cluster mode's replicated log, over NATS JetStream.
//!
//! Data flow: a transport calls the [`Engine`]; the directory resolves the room through the
//! registry; the room actor feeds its state machine and appends what it publishes to the
//! room's ring once, waking its parked readers once. Every reader (a [`RoomEvents`] stream, a
//! [`SessionEvents`] stream) takes what is ready from the ring with its own cursor, on its
//! transport's task: a reader that fell too far behind is told exactly what it missed (G2), and
//! every stream's last item says why it ended ([`StreamEnd`]).
//!
//! Handlers never return `Err`: refusals are reply values, because kameo stops an actor whose
//! `tell` handler fails.

mod answer;
mod clock;
#[cfg(feature = "cluster")]
pub mod cluster;
mod directory;
pub mod engine;
mod error;
mod health;
mod log_health;
pub mod presence;
mod registry;
mod ring;
mod room_actor;
pub mod room_log;
mod session_actor;
mod stats;
pub mod store;
mod upload_actor;

#[cfg(feature = "test-hooks")]
pub use engine::TestHooks;
pub use engine::{
    Engine, EngineConfig, ROOMS_PAGE_MAX, Replicated, RoomEvents, RoomsPage, SessionEvents, SessionItem,
    SessionOptions, SessionSender, StreamItem, TrySend, Upload,
};
pub use error::{EngineError, StartError};
pub use health::EngineHealth;
pub use log_health::HEALTH_PROBE_INTERVAL;
pub use presence::{MemoryBus, PresenceBus, PresenceConfig, PresenceCounters};
pub use ring::{SharedEvent, Stalled, StreamEnd};
pub use room_actor::{RoomInfo, UNKNOWN_OUTCOME_ANSWER_AFTER};
pub use stats::StatsSnapshot;

// What the handle's calls take and give, from the sans-IO core: an embedder needs no second
// dependency.
pub use confab_engine::{
    ChatMessage, ClientFrame, ClientMsgId, Draft, FrameError, HistoryPage, Lag, Limits, NameError, Receipt, RoomError,
    RoomEvent, RoomName, Sent, Seq, ServerFrame, SessionError, UploadError, UserName, limits,
};
/// The trait the engine's streams ([`RoomEvents`], [`SessionEvents`]) implement, so an embedder
/// can read them without depending on `futures` itself.
pub use futures::Stream;
