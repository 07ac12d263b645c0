//! What a [`Client`](crate::Client) hands its caller, in order, through
//! [`Events`](crate::Events): room events, the outcome of each request, and what happened to
//! the connection. Lag and inexact resumes are events of the stream, never silent.

use std::time::Duration;

use crate::connect::LinkError;
use crate::session::SessionError;

/// One thing that happened, in the order it happened.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// A [`Client::join`](crate::Client::join) took effect: messages of `room` follow from
    /// `first_seq`.
    Joined {
        /// The room.
        room: String,
        /// The room's epoch: it changes when the room's history started over.
        epoch: u64,
        /// The first sequence number that follows.
        first_seq: u64,
        /// `false` when the join asked to resume after a sequence number the room no longer
        /// has (trimmed, or from another epoch): the messages between are not coming.
        recovered: bool,
    },
    /// A message of a joined room. Within a room, each sequence number comes at most once, in
    /// increasing order; anything skipped is announced by [`Event::Lagged`] or
    /// [`Event::Resumed`] with `recovered: false`.
    Message(Message),
    /// The client fell behind the room and the server skipped `missed_from..=missed_to` (fetch
    /// them with `History` if they matter); the next message is `missed_to + 1`.
    Lagged {
        /// The room.
        room: String,
        /// The first skipped sequence number.
        missed_from: u64,
        /// The last skipped sequence number.
        missed_to: u64,
    },
    /// After a reconnection, the room's stream continues.
    Resumed {
        /// The room.
        room: String,
        /// The room's epoch now.
        epoch: u64,
        /// The first sequence number that follows.
        first_seq: u64,
        /// `true`: exactly after the last message handed to the caller, nothing missed.
        /// `false`: the room no longer has what came after it (history trimmed, or the room
        /// started over in a new epoch): the stream starts again at `first_seq`.
        recovered: bool,
    },
    /// The server sequenced a message this client sent.
    Sent {
        /// The room.
        room: String,
        /// The id given by [`Client::send`](crate::Client::send).
        client_msg_id: String,
        /// Its sequence number.
        seq: u64,
        /// `true` when the server had it already (a resend after a lost acknowledgement):
        /// stored once all the same.
        duplicate: bool,
    },
    /// A [`Client::leave`](crate::Client::leave) took effect.
    Left {
        /// The room.
        room: String,
    },
    /// Someone joined or left a room.
    Presence {
        /// The room.
        room: String,
        /// Who.
        user: String,
        /// `true` on join, `false` on leave.
        present: bool,
    },
    /// Someone is typing in a room.
    Typing {
        /// The room.
        room: String,
        /// Who.
        user: String,
    },
    /// The server refused a request; the session goes on.
    Refused(Refusal),
    /// The connection dropped; the client reconnects on its own (joins, posts and leaves
    /// made meanwhile wait for it).
    Disconnected {
        /// Why the connection ended (its sources say more).
        reason: LinkError,
    },
    /// Connected again after [`Event::Disconnected`]; each room's [`Event::Resumed`] follows.
    Reconnected {
        /// How long the client was without a connection.
        outage: Duration,
    },
    /// The last event: the session ended, after [`Client::close`](crate::Client::close) (`Ok`)
    /// or because it cannot go on (`Err`). Nothing follows.
    Closed(Result<(), SessionError>),
}

/// A message of a room. A plain record of what the server sent (callers build them in their
/// tests), so not `#[non_exhaustive]`: a new field is a new major version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The room.
    pub room: String,
    /// Its place in the room: 1, 2, 3, …
    pub seq: u64,
    /// Who sent it.
    pub user: String,
    /// The sender's idempotency id, empty if none.
    pub client_msg_id: String,
    /// The text.
    pub body: String,
    /// When the room accepted it, in milliseconds since the server started.
    pub accepted_at_ms: u64,
}

/// A request the server refused (a plain record, like [`Message`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The room the request named.
    pub room: String,
    /// Which request.
    pub request: Request,
    /// The gRPC status code the server gave (`InvalidArgument`, `PermissionDenied`, …).
    pub code: tonic::Code,
    /// The server's explanation.
    pub message: String,
}

/// The kind of request a [`Refusal`] is about.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Request {
    /// [`Client::join`](crate::Client::join).
    Join,
    /// The client's own rejoin of a room after a reconnection; the room is no longer joined.
    Resume,
    /// [`Client::send`](crate::Client::send) of this id; it is not resent.
    Send {
        /// The message's id.
        client_msg_id: String,
    },
    /// [`Client::leave`](crate::Client::leave).
    Leave,
    /// Not a request of this client's (a server that answered out of turn).
    Unknown,
}
