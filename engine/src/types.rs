//! Names, sequence numbers, time, and the events a room publishes.

use std::fmt;
use std::sync::Arc;

use crate::error::NameError;
use crate::limits::{CLIENT_MSG_ID_BYTES_MAX, ROOM_NAME_BYTES_MAX, USER_NAME_BYTES_MAX};

/// A room's sequence number: 1, 2, 3, … within the room's epoch (G1). 0 means "before the first".
pub type Seq = u64;

/// A point in engine time, in milliseconds since an origin the caller chooses. The engine never
/// reads a clock: the actor layer passes tokio's (possibly virtual) time, tests pass literals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(u64);

impl Time {
    /// The time `millis` milliseconds after the origin.
    pub const fn from_millis(millis: u64) -> Self {
        Self(millis)
    }

    /// Milliseconds since the origin.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// Milliseconds from `earlier` to `self`, zero if `earlier` is later.
    pub const fn millis_since(self, earlier: Time) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    /// The time `millis` milliseconds after `self` (saturating).
    pub const fn plus_millis(self, millis: u64) -> Time {
        Time(self.0.saturating_add(millis))
    }
}

/// A validated room name: 1 to [`ROOM_NAME_BYTES_MAX`] bytes of `[A-Za-z0-9._-]`.
/// Cheap to clone (shared).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RoomName(Arc<str>);

impl RoomName {
    /// Validates `name`.
    pub fn new(name: &str) -> Result<Self, NameError> {
        if name.is_empty() {
            return Err(NameError::RoomEmpty);
        }
        if name.len() > ROOM_NAME_BYTES_MAX {
            return Err(NameError::RoomTooLong { bytes: name.len(), bytes_max: ROOM_NAME_BYTES_MAX });
        }
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if let Some(bad) = name.chars().find(|&c| !allowed(c)) {
            return Err(NameError::RoomCharset { bad });
        }
        Ok(Self(name.into()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A user name: up to [`USER_NAME_BYTES_MAX`] bytes, no control characters. May be empty (the
/// seed's service accepts an empty `user`). Cheap to clone (shared).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UserName(Arc<str>);

impl UserName {
    /// Validates `name`.
    pub fn new(name: &str) -> Result<Self, NameError> {
        if name.len() > USER_NAME_BYTES_MAX {
            return Err(NameError::UserTooLong { bytes: name.len(), bytes_max: USER_NAME_BYTES_MAX });
        }
        if name.chars().any(char::is_control) {
            return Err(NameError::UserControl);
        }
        Ok(Self(name.into()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "@{}", self.0)
    }
}

/// A client-chosen id that makes a send idempotent (G4): up to [`CLIENT_MSG_ID_BYTES_MAX`] bytes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientMsgId(Arc<str>);

impl ClientMsgId {
    /// Validates `id`; the empty string means "no id" and gives `None`.
    pub fn new(id: &str) -> Result<Option<Self>, NameError> {
        if id.is_empty() {
            return Ok(None);
        }
        if id.len() > CLIENT_MSG_ID_BYTES_MAX {
            return Err(NameError::ClientMsgIdTooLong { bytes: id.len(), bytes_max: CLIENT_MSG_ID_BYTES_MAX });
        }
        Ok(Some(Self(id.into())))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A message as a client submits it, before the room sequences it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Draft {
    /// Who speaks. The transport decides where this comes from (a token, a frame field).
    pub user: UserName,
    /// Makes retries idempotent (G4); `None` disables dedupe for this send.
    pub client_msg_id: Option<ClientMsgId>,
    /// The text.
    pub body: Arc<str>,
}

/// A message the room accepted: immutable and shared by the history and every delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    /// The room it belongs to.
    pub room: RoomName,
    /// Its place in the room (G1).
    pub seq: Seq,
    /// Who sent it.
    pub user: UserName,
    /// The sender's idempotency id, if any (echoed so a client can match its own messages).
    pub client_msg_id: Option<ClientMsgId>,
    /// The text.
    pub body: Arc<str>,
    /// When the room accepted it, in engine time (used for latency measurement).
    pub accepted_at: Time,
}

/// The span a lagging subscriber missed (G2): every sequence number from `missed_from` to
/// `missed_to`, inclusive, was skipped for it and can be fetched with `History` while retained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lag {
    /// First sequence number not delivered.
    pub missed_from: Seq,
    /// Last sequence number not delivered.
    pub missed_to: Seq,
}

/// What a subscriber of a room receives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RoomEvent {
    /// First event of every subscription: where it starts (G5).
    Subscribed {
        /// The room.
        room: RoomName,
        /// The room's epoch; it changes when the room's history was lost.
        epoch: u64,
        /// `true` if the subscription continues exactly after the requested `after_seq`.
        recovered: bool,
        /// The first sequence number this subscription will carry.
        first_seq: Seq,
    },
    /// A sequenced message (G1).
    Message(Arc<ChatMessage>),
    /// The subscriber fell behind and skipped a span (G2); the next message follows the span.
    Lagged {
        /// The room.
        room: RoomName,
        /// The skipped span.
        lag: Lag,
    },
    /// Someone joined or left (ephemeral: never sequenced, dropped for a full queue).
    Presence {
        /// The room.
        room: RoomName,
        /// Who.
        user: UserName,
        /// `true` on join, `false` on leave.
        present: bool,
    },
    /// Someone is typing (ephemeral: never sequenced, dropped for a full queue).
    Typing {
        /// The room.
        room: RoomName,
        /// Who.
        user: UserName,
    },
}

impl RoomEvent {
    /// The room this event is about.
    pub fn room(&self) -> &RoomName {
        match self {
            RoomEvent::Subscribed { room, .. }
            | RoomEvent::Lagged { room, .. }
            | RoomEvent::Presence { room, .. }
            | RoomEvent::Typing { room, .. } => room,
            RoomEvent::Message(message) => &message.room,
        }
    }

    /// The sequence number, for a message.
    pub fn seq(&self) -> Option<Seq> {
        match self {
            RoomEvent::Message(message) => Some(message.seq),
            _ => None,
        }
    }
}
