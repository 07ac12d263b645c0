//! confab-engine: the sans-IO core of the confab chat engine.
//!
//! Contract: no I/O, no clock (time is an argument), no threads, no locks, no randomness, no
//! hash-ordered iteration. Given the same inputs in the same order, every state machine here
//! produces the same outputs, which is what lets the simulator replay a seed byte for byte
//! (G8) and lets unit tests and proptest drive the logic without actors.
//!
//! # Layout
//! - [`types`]: names, sequence numbers, [`Time`], messages and [`RoomEvent`]s.
//! - [`limits`]: every bound, as a named constant, gathered in [`Limits`].
//! - [`error`]: the refusals ([`RoomError`], [`SessionError`], [`UploadError`], [`NameError`]).
//! - [`room`]: [`Room`], the sequencer. Inputs `handle_*`, outputs [`Room::poll_effect`]
//!   ([`RoomEffect`]: publish an event, persist messages).
//! - [`ring`]: [`Ring`], where a room's published events wait for its readers: appended once,
//!   read by every reader through its own cursor, lag found from the cursor (G2), stalled
//!   readers closed by a sweep ([`Ring::poll_timeout`], [`Ring::handle_timeout`]).
//! - [`session`]: [`Session`], one bidirectional client: frames in, [`SessionCommand`]s out.
//! - [`upload`]: [`UploadAggregator`], folds chunks into a [`Batch`] committed at once (G6).
//! - [`rate`]: [`TokenBucket`], the send-rate limit a transport applies per sender.
//! - [`presence`]: [`Roster`], a node's view of the other nodes' users per room (cluster
//!   mode): node heartbeats, members announced on change and in periodic full snapshots,
//!   incarnations; the rooms show the union of local and remote members.
//! - [`replicated`]: [`Appender`], one room's appends to a log several nodes write (cluster
//!   mode): one conditional append in flight, unknown outcomes sent again, other nodes'
//!   entries handed to [`Room::handle_committed`], which sequences the node's own again.
//!
//! Data flow: a transport turns client input into `handle_*` calls (through the actor layer);
//! a room sequences messages and publishes events; the shell appends them to the room's ring,
//! once, and every reader takes them from there with its own cursor: a reader that fell too
//! far behind is told exactly what it missed (G2).

pub mod error;
pub mod limits;
pub mod presence;
pub mod rate;
pub mod replicated;
pub mod ring;
pub mod room;
pub mod session;
pub mod types;
pub mod upload;

pub use error::{NameError, RoomError, SessionError, UploadError};
pub use limits::Limits;
pub use presence::{PresenceEvent, PresenceMessage, Roster};
pub use rate::{RateKind, RateLimited, SendRate, TokenBucket};
pub use replicated::{Append, Appender, LogEntry, Origin, Position, Step};
pub use ring::{ENCODING_SLOTS, Encodings, Published, ReadItem, ReadRef, ReadStatus, ReaderEnd, Ring};
pub use room::{HistoryPage, InjectedBug, Persistence, Room, RoomEffect, Sent, SubscriberId, Subscription};
pub use session::{ClientFrame, FrameError, ServerFrame, Session, SessionCommand};
pub use types::{
    ChatMessage, ClientMsgId, Draft, Lag, RESERVED_USER_NAMES, RoomEvent, RoomName, Seq, Time, UserName,
    is_bidi_control, is_invisible,
};
pub use upload::{Batch, Checksum, Receipt, UploadAggregator};
