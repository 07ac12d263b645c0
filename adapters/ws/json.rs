//! The JSON text encoding of `confab.v1` session frames, for humans and the web page.
//!
//! It is the same messages as the protobuf encoding, flattened into one object with a `type`
//! field, so it converts to and from the generated `confab.v1` types and nothing else (the
//! engine conversion stays in [`crate::api::convert`]). Absent optional fields may be left
//! out. Client frames:
//!
//! ```json
//! {"type": "join", "room": "lobby", "after_seq": 12}
//! {"type": "leave", "room": "lobby"}
//! {"type": "post", "room": "lobby", "client_msg_id": "a1", "body": "hello"}
//! {"type": "ack", "room": "lobby", "seq": 13}
//! {"type": "typing", "room": "lobby"}
//! ```
//!
//! Server frames (a room event is flattened: `subscribed`, `message`, `lagged`, `presence` and
//! `typing` are events; `ack`, `left` and `error` are session replies):
//!
//! ```json
//! {"type": "subscribed", "room": "lobby", "epoch": 7, "recovered": true, "first_seq": 13}
//! {"type": "message", "room": "lobby", "seq": 13, "user": "ann", "client_msg_id": "a1", "body": "hello", "accepted_at_ms": 1764000000000}
//! {"type": "lagged", "room": "lobby", "missed_from": 14, "missed_to": 20}
//! {"type": "presence", "room": "lobby", "user": "bob", "present": true}
//! {"type": "typing", "room": "lobby", "user": "bob"}
//! {"type": "ack", "room": "lobby", "client_msg_id": "a1", "seq": 13, "duplicate": false}
//! {"type": "left", "room": "lobby"}
//! {"type": "error", "room": "lobby", "code": 9, "message": "..."}
//! ```

use serde::{Deserialize, Serialize};

use crate::proto::confab_v1 as v1;

/// A client frame as JSON.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// Join a room, live or resuming after `after_seq`.
    Join {
        /// The room.
        room: String,
        /// Absent: live; present: resume after it.
        #[serde(default)]
        after_seq: Option<u64>,
    },
    /// Leave a room.
    Leave {
        /// The room.
        room: String,
    },
    /// Send a message to a joined room.
    Post {
        /// The room.
        room: String,
        /// Idempotency id; absent or empty for none.
        #[serde(default)]
        client_msg_id: String,
        /// The text.
        body: String,
    },
    /// The last sequence number read.
    Ack {
        /// The room.
        room: String,
        /// The sequence number.
        seq: u64,
    },
    /// The user is typing.
    Typing {
        /// The room.
        room: String,
    },
}

impl From<ClientFrame> for v1::ClientFrame {
    fn from(frame: ClientFrame) -> Self {
        use v1::client_frame::Frame;
        let frame = match frame {
            ClientFrame::Join { room, after_seq } => Frame::Join(v1::Join { room, after_seq }),
            ClientFrame::Leave { room } => Frame::Leave(v1::Leave { room }),
            ClientFrame::Post { room, client_msg_id, body } => Frame::Post(v1::Post { room, client_msg_id, body }),
            ClientFrame::Ack { room, seq } => Frame::Ack(v1::Ack { room, seq }),
            ClientFrame::Typing { room } => Frame::Typing(v1::TypingNotice { room }),
        };
        v1::ClientFrame { frame: Some(frame) }
    }
}

/// A server frame as JSON.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// Where a room's stream starts (G5).
    Subscribed {
        /// The room.
        room: String,
        /// Changes when the room's history started over.
        epoch: u64,
        /// True: continues exactly after the requested `after_seq`.
        recovered: bool,
        /// The first sequence number this stream carries.
        first_seq: u64,
    },
    /// A sequenced message.
    Message {
        /// The room.
        room: String,
        /// Its place in the room.
        seq: u64,
        /// Who sent it.
        user: String,
        /// The sender's idempotency id, empty if none.
        client_msg_id: String,
        /// The text.
        body: String,
        /// When the room accepted it (ms).
        accepted_at_ms: u64,
    },
    /// The client fell behind and skipped a span (G2).
    Lagged {
        /// The room.
        room: String,
        /// First skipped sequence number.
        missed_from: u64,
        /// Last skipped sequence number.
        missed_to: u64,
    },
    /// Someone joined (`present`) or left.
    Presence {
        /// The room.
        room: String,
        /// Who.
        user: String,
        /// True on join, false on leave.
        present: bool,
    },
    /// Someone is typing.
    Typing {
        /// The room.
        room: String,
        /// Who.
        user: String,
    },
    /// A post was sequenced.
    Ack {
        /// The room.
        room: String,
        /// The post's idempotency id.
        client_msg_id: String,
        /// Its sequence number.
        seq: u64,
        /// True if it was a retry and nothing was appended (G4).
        duplicate: bool,
    },
    /// The session left a room.
    Left {
        /// The room.
        room: String,
        /// The client did not leave: the room stopped under the session; join it again.
        stopped: bool,
    },
    /// A refused frame; the session goes on.
    Error {
        /// The room the frame named, if valid.
        room: String,
        /// A gRPC status code number.
        code: i32,
        /// What was wrong.
        message: String,
    },
}

/// The JSON form of a server frame; `None` for a frame with no content (the server never
/// makes one).
pub fn server_frame(frame: v1::ServerFrame) -> Option<ServerFrame> {
    use v1::room_event::Event;
    use v1::server_frame::Frame;
    Some(match frame.frame? {
        Frame::Event(event) => match event.event? {
            Event::Subscribed(s) => {
                ServerFrame::Subscribed { room: s.room, epoch: s.epoch, recovered: s.recovered, first_seq: s.first_seq }
            }
            Event::Message(m) => ServerFrame::Message {
                room: m.room,
                seq: m.seq,
                user: m.user,
                client_msg_id: m.client_msg_id,
                body: m.body,
                accepted_at_ms: m.accepted_at_ms,
            },
            Event::Lagged(l) => {
                ServerFrame::Lagged { room: l.room, missed_from: l.missed_from, missed_to: l.missed_to }
            }
            Event::Presence(p) => ServerFrame::Presence { room: p.room, user: p.user, present: p.present },
            Event::Typing(t) => ServerFrame::Typing { room: t.room, user: t.user },
        },
        Frame::Ack(a) => {
            ServerFrame::Ack { room: a.room, client_msg_id: a.client_msg_id, seq: a.seq, duplicate: a.duplicate }
        }
        Frame::Left(l) => ServerFrame::Left { room: l.room, stopped: l.stopped },
        Frame::Error(e) => ServerFrame::Error { room: e.room, code: e.code, message: e.message },
    })
}

/// A room snapshot as JSON (`GET /rooms/{room}`), so the page can show who is present when it
/// joins; presence events keep it current afterwards.
#[derive(Debug, Serialize)]
pub struct RoomInfo {
    /// The room.
    pub name: String,
    /// Changes when the room's history started over.
    pub epoch: u64,
    /// The room's last sequence number.
    pub last_seq: u64,
    /// The oldest retained sequence number.
    pub first_retained_seq: u64,
    /// Open subscriptions and joined sessions.
    pub subscribers: u64,
    /// Users present, sorted.
    pub present: Vec<String>,
}

impl From<v1::RoomInfo> for RoomInfo {
    fn from(info: v1::RoomInfo) -> Self {
        Self {
            name: info.name,
            epoch: info.epoch,
            last_seq: info.last_seq,
            first_retained_seq: info.first_retained_seq,
            subscribers: info.subscribers,
            present: info.present,
        }
    }
}
