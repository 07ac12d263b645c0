//! The one place where wire types (confab.v1 and the seed's chat) become engine types and back,
//! for every transport: gRPC sends these messages as protobuf, the WebSocket as protobuf or
//! JSON ([`crate::ws::json`]). Reading them from a transport's own envelope (gRPC metadata, a
//! WebSocket's query) is the transport's.

use std::sync::Arc;

use confab_actors::RoomInfo;
use confab_engine::{
    ChatMessage, ClientFrame, ClientMsgId, Draft, HistoryPage, Receipt, RoomEvent, RoomName, ServerFrame, UserName,
};

use prost::Message as _;

use super::error::{ApiError, ErrorKind, frame_kind};
use crate::proto::{chat, confab_v1 as v1};

/// A room name from a request field.
pub fn room(name: &str) -> Result<RoomName, ApiError> {
    RoomName::new(name).map_err(ApiError::name("room"))
}

/// A user name from a request field.
pub fn user(name: &str) -> Result<UserName, ApiError> {
    UserName::new(name).map_err(ApiError::name("user"))
}

/// A draft from its parts.
pub fn draft(user_name: &str, client_msg_id: &str, body: String) -> Result<Draft, ApiError> {
    draft_by(user(user_name)?, client_msg_id, body)
}

/// A draft by a user already established (from the caller's token, see `auth`).
pub fn draft_by(user: UserName, client_msg_id: &str, body: String) -> Result<Draft, ApiError> {
    Ok(Draft {
        user,
        client_msg_id: ClientMsgId::new(client_msg_id).map_err(ApiError::name("client_msg_id"))?,
        body: Arc::from(body),
    })
}

/// A sequenced message on the wire.
pub fn message(message: &ChatMessage) -> v1::ChatMessage {
    v1::ChatMessage {
        room: message.room.to_string(),
        seq: message.seq,
        user: message.user.to_string(),
        client_msg_id: message.client_msg_id.as_ref().map(|id| id.as_str().to_owned()).unwrap_or_default(),
        body: message.body.to_string(),
        accepted_at_ms: message.accepted_at.as_millis(),
    }
}

/// A room event on the wire.
pub fn room_event(event: &RoomEvent) -> v1::RoomEvent {
    use v1::room_event::Event;
    let event = match event {
        RoomEvent::Subscribed { room, epoch, recovered, first_seq } => Event::Subscribed(v1::Subscribed {
            room: room.to_string(),
            epoch: *epoch,
            recovered: *recovered,
            first_seq: *first_seq,
        }),
        RoomEvent::Message(m) => Event::Message(message(m)),
        RoomEvent::Lagged { room, lag } => {
            Event::Lagged(v1::Lagged { room: room.to_string(), missed_from: lag.missed_from, missed_to: lag.missed_to })
        }
        RoomEvent::Presence { room, user, present } => {
            Event::Presence(v1::Presence { room: room.to_string(), user: user.to_string(), present: *present })
        }
        RoomEvent::Typing { room, user } => {
            Event::Typing(v1::Typing { room: room.to_string(), user: user.to_string() })
        }
    };
    v1::RoomEvent { event: Some(event) }
}

/// A history page on the wire.
pub fn history(page: &HistoryPage) -> v1::HistoryResponse {
    v1::HistoryResponse {
        messages: page.messages.iter().map(|m| message(m)).collect(),
        first_retained_seq: page.first_retained_seq,
        last_seq: page.last_seq,
        epoch: page.epoch,
    }
}

/// A room snapshot on the wire.
pub fn room_info(info: &RoomInfo) -> v1::RoomInfo {
    v1::RoomInfo {
        name: info.name.to_string(),
        epoch: info.epoch,
        last_seq: info.last_seq,
        first_retained_seq: info.first_retained_seq,
        subscribers: info.subscribers as u64,
        present: info.present.iter().map(ToString::to_string).collect(),
    }
}

/// An upload receipt on the wire.
pub fn receipt(receipt: &Receipt) -> v1::UploadReceipt {
    let (first_seq, last_seq) = receipt.seqs.unwrap_or((0, 0));
    v1::UploadReceipt {
        room: receipt.room.to_string(),
        count: receipt.count as u64,
        bytes: receipt.bytes as u64,
        checksum: receipt.checksum.value(),
        last_user: receipt.last_user.as_ref().map(ToString::to_string).unwrap_or_default(),
        first_seq,
        last_seq,
    }
}

/// A session frame from the wire. Names are validated by the session itself (it answers with
/// an error frame); only a frame with no content is malformed here.
pub fn client_frame(frame: v1::ClientFrame) -> Result<ClientFrame, ApiError> {
    use v1::client_frame::Frame;
    let frame = frame.frame.ok_or_else(|| ApiError::Malformed("client frame has no content".into()))?;
    Ok(match frame {
        Frame::Join(join) => ClientFrame::Join { room: join.room, after_seq: join.after_seq },
        Frame::Leave(leave) => ClientFrame::Leave { room: leave.room },
        Frame::Post(post) => ClientFrame::Send { room: post.room, client_msg_id: post.client_msg_id, body: post.body },
        Frame::Ack(ack) => ClientFrame::Ack { room: ack.room, seq: ack.seq },
        Frame::Typing(typing) => ClientFrame::Typing { room: typing.room },
    })
}

/// A session frame on the wire.
pub fn server_frame(frame: &ServerFrame) -> v1::ServerFrame {
    use v1::server_frame::Frame;
    let frame = match frame {
        ServerFrame::Event(event) => Frame::Event(room_event(event)),
        ServerFrame::SendAck { room, client_msg_id, seq, duplicate } => Frame::Ack(v1::SendAck {
            room: room.to_string(),
            client_msg_id: client_msg_id.as_ref().map(|id| id.as_str().to_owned()).unwrap_or_default(),
            seq: *seq,
            duplicate: *duplicate,
        }),
        ServerFrame::Left { room, stopped } => Frame::Left(v1::Left { room: room.to_string(), stopped: *stopped }),
        ServerFrame::Error { room, error } => Frame::Error(v1::Error {
            room: room.as_ref().map(ToString::to_string).unwrap_or_default(),
            code: error_code(frame_kind(error)),
            message: error.to_string(),
        }),
    };
    v1::ServerFrame { frame: Some(frame) }
}

/// An error frame for a refusal the transport makes itself inside a session (the send rate).
pub fn error_frame(room: &str, error: ApiError) -> v1::ServerFrame {
    let error = v1::Error { room: room.to_owned(), code: error_code(error.kind()), message: error.to_string() };
    v1::ServerFrame { frame: Some(v1::server_frame::Frame::Error(error)) }
}

/// The `code` of an `Error` frame: a gRPC status code number, as `confab.v1` defines it (a
/// client on any transport reads the numbers a gRPC status would carry, shutting down as
/// UNAVAILABLE and a stalled reader as RESOURCE_EXHAUSTED).
pub fn error_code(kind: ErrorKind) -> i32 {
    match kind {
        ErrorKind::InvalidArgument => 3,
        ErrorKind::NotFound => 5,
        ErrorKind::PermissionDenied => 7,
        ErrorKind::ResourceExhausted | ErrorKind::Stalled => 8,
        ErrorKind::FailedPrecondition => 9,
        ErrorKind::Aborted => 10,
        ErrorKind::Internal => 13,
        ErrorKind::Unavailable | ErrorKind::ShuttingDown => 14,
        ErrorKind::DataLoss => 15,
        ErrorKind::Unauthenticated => 16,
    }
}

/// A room event as `confab.v1.RoomEvent` bytes: the one conversion and encoding a shared event
/// gets, whichever stream asks first.
pub fn encode_room_event(event: &RoomEvent) -> Vec<u8> {
    room_event(event).encode_to_vec()
}

/// A room event as the `confab.v1.ServerFrame` that carries it (a `Session`'s frame, and a
/// WebSocket's in the binary format): made once, whichever reader asks first.
pub fn encode_event_frame(event: &RoomEvent) -> Vec<u8> {
    server_frame(&ServerFrame::Event(event.clone())).encode_to_vec()
}

/// The seed's message for a room message: who said it and what.
pub fn seed_message(message: &ChatMessage) -> chat::Message {
    chat::Message { user: message.user.to_string(), content: message.body.to_string() }
}

/// A seed message from the server itself.
pub fn server_says(content: String) -> chat::Message {
    chat::Message { user: "Server".into(), content }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use confab_actors::SharedEvent;
    use confab_engine::{
        ChatMessage, ClientMsgId, Lag, ReadItem, Ring, RoomEvent, RoomName, SubscriberId, Time, UserName,
    };
    use prost::Message;

    use super::*;
    use crate::api::transport::EncodingSlot;

    /// One event of each kind, for the encode-once tests of every wire format.
    pub(crate) fn events() -> Vec<RoomEvent> {
        let room = RoomName::new("lobby").expect("room");
        let user = UserName::new("ann").expect("user");
        let message = ChatMessage {
            room: room.clone(),
            seq: 1,
            user: user.clone(),
            client_msg_id: ClientMsgId::new("m-1").expect("id"),
            body: Arc::from("héllo, wörld"),
            accepted_at: Time::from_millis(1_700_000_000_123),
        };
        vec![
            RoomEvent::Message(Arc::new(message)),
            RoomEvent::Presence { room: room.clone(), user: user.clone(), present: true },
            RoomEvent::Typing { room: room.clone(), user },
            RoomEvent::Lagged { room: room.clone(), lag: Lag { missed_from: 2, missed_to: 9 } },
            RoomEvent::Subscribed { room, epoch: 7, recovered: false, first_seq: 3 },
        ]
    }

    /// Publishes `event` through a ring and reads it back as the shared item every reader gets.
    pub(crate) fn published(event: RoomEvent) -> SharedEvent {
        let seq_before = event.seq().map_or(0, |seq| seq - 1);
        let mut ring = Ring::new(4, seq_before, 1_000);
        ring.add_reader(SubscriberId(1), seq_before);
        ring.push(event, Time::from_millis(0));
        let mut read = Vec::new();
        ring.read(SubscriberId(1), &mut read, 1);
        match read.pop() {
            Some(ReadItem::Event(published)) => SharedEvent::Shared(published),
            other => panic!("expected the event, got {other:?}"),
        }
    }

    #[test]
    fn shared_session_frames_decode_to_exactly_the_per_stream_conversion() {
        let slot = EncodingSlot::ConfabV1ServerFrame.index();
        for event in events() {
            let expected = server_frame(&ServerFrame::Event(event.clone()));
            let shared = published(event.clone());
            let first = shared.encoded(slot, encode_event_frame);
            assert_eq!(v1::ServerFrame::decode(&first[..]).expect("decodes"), expected, "{event:?}");
            let again = shared.encoded(slot, |_| panic!("encoded a second time"));
            assert!(Arc::ptr_eq(&first, &again), "every session gets the same bytes");
        }
    }
}
