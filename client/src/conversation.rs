//! The client's side of one conversation, across any number of connections: the rooms joined
//! and how far each was handed to the caller, the caller's requests in order, and which one the
//! server is answering. No I/O, no clock, no tasks: the shell ([`crate::session`]) feeds it and
//! carries out what it says, and the unit tests below drive it directly.
//!
//! Call order: `handle_*` for each input (a caller request, a connection up or down, a server
//! frame), then [`Conversation::poll_outgoing`] and [`Conversation::poll_event`] until `None`.
//!
//! **One request at a time.** A request (join, send, leave) goes to the server only once the
//! one before it was answered. The protocol's refusals (`Error` frames) do not say which frame
//! they refuse, and the server's transport refuses some frames (over a rate) ahead of answers
//! still in flight; with one request outstanding, every answer belongs to it, exactly. It also
//! keeps the caller's order across reconnections: a resend can never overtake a later send.
//! A chat client sends at human speed, so the round trip per request costs nothing it needs.
//!
//! **Resuming.** On every new connection each joined room is joined again with `after_seq` =
//! the last sequence number handed to the caller, then the request that was outstanding is sent
//! again (a post with the same client message id: the server's dedupe stores it once), then the
//! rest. Messages at or below a room's position are never handed over twice; a resume the server
//! cannot make exact (`recovered = false`, or a new epoch) is an [`Event::Resumed`] saying so.

use std::collections::{BTreeMap, VecDeque};

use crate::event::{Event, Message, Refusal, Request};
use crate::proto::confab_v1::{self as v1, client_frame, room_event, server_frame};

/// A caller's request, or the client's own rejoin of a room.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Op {
    Join {
        room: String,
        after_seq: Option<u64>,
    },
    /// Rejoin after a reconnection, from the room's position.
    Resume {
        room: String,
    },
    Post {
        room: String,
        client_msg_id: String,
        body: String,
    },
    Leave {
        room: String,
    },
}

impl Op {
    fn room(&self) -> &str {
        match self {
            Op::Join { room, .. } | Op::Resume { room } | Op::Post { room, .. } | Op::Leave { room } => room,
        }
    }

    fn request(&self) -> Request {
        match self {
            Op::Join { .. } => Request::Join,
            Op::Resume { .. } => Request::Resume,
            Op::Post { client_msg_id, .. } => Request::Send { client_msg_id: client_msg_id.clone() },
            Op::Leave { .. } => Request::Leave,
        }
    }
}

/// A joined room, as far as the caller has been told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Room {
    /// The last sequence number handed to the caller (delivered or declared missed): the
    /// `after_seq` of the next resume.
    position: u64,
    /// The room's epoch when joined: a resume into another epoch is not exact, whatever the
    /// sequence numbers say (the room started over and reused them).
    epoch: u64,
}

/// What the shell must send on the current connection.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Outgoing {
    /// This frame.
    Frame(v1::ClientFrame),
    /// Nothing more: half-close the request stream (the server then ends the session once this
    /// client's own messages have come back to it).
    HalfClose,
}

/// The conversation's state machine (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Conversation {
    rooms: BTreeMap<String, Room>,
    /// Requests not sent yet, in the caller's order (rejoins first after a reconnection).
    queue: VecDeque<Op>,
    /// The request sent on this connection and not answered yet.
    outstanding: Option<Op>,
    connected: bool,
    /// The caller asked to close: half-close once every request is answered.
    closing: bool,
    /// The half-close was sent on this connection: the stream's end is the session's end.
    half_closed: bool,
    outgoing: VecDeque<Outgoing>,
    events: VecDeque<Event>,
}

impl Conversation {
    /// A conversation with no rooms, not connected.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// The caller joins `room`: live (`None`) or resuming after a sequence number.
    pub(crate) fn handle_join(&mut self, room: String, after_seq: Option<u64>) {
        self.request(Op::Join { room, after_seq });
    }

    /// The caller sends `body` to `room` under `client_msg_id`.
    pub(crate) fn handle_send(&mut self, room: String, client_msg_id: String, body: String) {
        self.request(Op::Post { room, client_msg_id, body });
    }

    /// The caller leaves `room`.
    pub(crate) fn handle_leave(&mut self, room: String) {
        self.request(Op::Leave { room });
    }

    /// The caller is done: every request already made is still carried out, then the session
    /// ends.
    pub(crate) fn handle_close(&mut self) {
        self.closing = true;
        self.pump();
    }

    /// A new connection is up: rejoin every room from its position, then carry on.
    pub(crate) fn handle_connected(&mut self) {
        self.connected = true;
        self.half_closed = false;
        for room in self.rooms.keys().rev() {
            self.queue.push_front(Op::Resume { room: room.clone() });
        }
        self.pump();
    }

    /// The connection is gone. The request in flight is sent again on the next connection
    /// (a post keeps its id); a leave in flight is done, since the server's session is gone.
    pub(crate) fn handle_disconnected(&mut self) {
        self.connected = false;
        self.half_closed = false;
        // Frames the dead connection did not take are sent again from the queue, as needed.
        self.outgoing.clear();
        // Rejoins are rebuilt from `rooms` on the next connection.
        self.queue.retain(|op| !matches!(op, Op::Resume { .. }));
        match self.outstanding.take() {
            Some(Op::Leave { room }) => {
                self.rooms.remove(&room);
                self.events.push_back(Event::Left { room });
            }
            Some(Op::Resume { .. }) | None => {}
            Some(op) => self.queue.push_front(op),
        }
    }

    /// A frame from the server.
    pub(crate) fn handle_frame(&mut self, frame: v1::ServerFrame) {
        match frame.frame {
            Some(server_frame::Frame::Event(v1::RoomEvent { event: Some(event) })) => self.handle_event(event),
            Some(server_frame::Frame::Ack(ack)) => self.handle_ack(ack),
            Some(server_frame::Frame::Left(left)) if left.stopped => {
                // Not an answer: the room stopped under the session (a cluster node's room
                // reloading). Join it again from its position, before anything else.
                if self.rooms.contains_key(&left.room) {
                    self.queue.push_front(Op::Resume { room: left.room });
                }
            }
            Some(server_frame::Frame::Left(left)) => {
                if self.answers(|op| matches!(op, Op::Leave { room } if *room == left.room)) {
                    self.rooms.remove(&left.room);
                    self.events.push_back(Event::Left { room: left.room });
                }
            }
            Some(server_frame::Frame::Error(error)) => self.handle_error(error),
            // Nothing this client can act on (a newer server's frame, or an empty one).
            Some(server_frame::Frame::Event(v1::RoomEvent { event: None })) | None => {}
        }
        self.pump();
    }

    /// Requests not fully answered: queued, in flight, and rejoins. The shell stops taking
    /// requests from the caller above a bound, so an outage cannot make this grow without end.
    pub(crate) fn pending(&self) -> usize {
        self.queue.len() + usize::from(self.outstanding.is_some())
    }

    /// Whether the half-close went out on this connection: the stream ending now is the
    /// session's normal end.
    pub(crate) fn is_half_closed(&self) -> bool {
        self.half_closed
    }

    /// The next thing to send on the current connection.
    pub(crate) fn poll_outgoing(&mut self) -> Option<Outgoing> {
        self.outgoing.pop_front()
    }

    /// The next event for the caller.
    pub(crate) fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn request(&mut self, op: Op) {
        if self.closing {
            let room = op.room().to_owned();
            let message = "the client is closing: no new requests".to_owned();
            let refusal = Refusal { room, request: op.request(), code: tonic::Code::FailedPrecondition, message };
            self.events.push_back(Event::Refused(refusal));
            return;
        }
        self.queue.push_back(op);
        self.pump();
    }

    /// Sends the next request if the server answered the last one, or the half-close once
    /// everything is answered and the caller closed.
    fn pump(&mut self) {
        if !self.connected || self.half_closed || self.outstanding.is_some() {
            return;
        }
        let Some(op) = self.queue.pop_front() else {
            if self.closing {
                self.half_closed = true;
                self.outgoing.push_back(Outgoing::HalfClose);
            }
            return;
        };
        let frame = match &op {
            Op::Join { room, after_seq } => {
                client_frame::Frame::Join(v1::Join { room: room.clone(), after_seq: *after_seq })
            }
            Op::Resume { room } => {
                let after_seq = self.rooms.get(room).map(|joined| joined.position);
                client_frame::Frame::Join(v1::Join { room: room.clone(), after_seq })
            }
            Op::Post { room, client_msg_id, body } => client_frame::Frame::Post(v1::Post {
                room: room.clone(),
                client_msg_id: client_msg_id.clone(),
                body: body.clone(),
            }),
            Op::Leave { room } => client_frame::Frame::Leave(v1::Leave { room: room.clone() }),
        };
        self.outstanding = Some(op);
        self.outgoing.push_back(Outgoing::Frame(v1::ClientFrame { frame: Some(frame) }));
    }

    /// Whether the outstanding request is the one `is_it` recognises; if so it is answered.
    fn answers(&mut self, is_it: impl Fn(&Op) -> bool) -> bool {
        if self.outstanding.as_ref().is_some_and(is_it) {
            self.outstanding = None;
            return true;
        }
        false
    }

    fn handle_event(&mut self, event: room_event::Event) {
        match event {
            room_event::Event::Subscribed(subscribed) => self.handle_subscribed(subscribed),
            room_event::Event::Message(message) => {
                let Some(joined) = self.rooms.get_mut(&message.room) else { return };
                if message.seq <= joined.position {
                    // Handed over already (the server never repeats itself within one
                    // subscription; this guards the caller against a resume that would).
                    return;
                }
                if message.seq > joined.position + 1 {
                    // The server announces every skip; should one ever go unannounced, the
                    // caller hears of it all the same.
                    let (missed_from, missed_to) = (joined.position + 1, message.seq - 1);
                    self.events.push_back(Event::Lagged { room: message.room.clone(), missed_from, missed_to });
                }
                joined.position = message.seq;
                self.events.push_back(Event::Message(Message {
                    room: message.room,
                    seq: message.seq,
                    user: message.user,
                    client_msg_id: message.client_msg_id,
                    body: message.body,
                    accepted_at_ms: message.accepted_at_ms,
                }));
            }
            room_event::Event::Lagged(lagged) => {
                let Some(joined) = self.rooms.get_mut(&lagged.room) else { return };
                if lagged.missed_to <= joined.position {
                    return;
                }
                let missed_from = lagged.missed_from.max(joined.position + 1);
                joined.position = lagged.missed_to;
                let (room, missed_to) = (lagged.room, lagged.missed_to);
                self.events.push_back(Event::Lagged { room, missed_from, missed_to });
            }
            room_event::Event::Presence(presence) => self.events.push_back(Event::Presence {
                room: presence.room,
                user: presence.user,
                present: presence.present,
            }),
            room_event::Event::Typing(typing) => {
                self.events.push_back(Event::Typing { room: typing.room, user: typing.user });
            }
        }
    }

    fn handle_subscribed(&mut self, subscribed: v1::Subscribed) {
        let v1::Subscribed { room, epoch, recovered, first_seq } = subscribed;
        let Some(op) = self
            .outstanding
            .take_if(|op| matches!(op, Op::Join { room: r, .. } | Op::Resume { room: r } if *r == room))
        else {
            return;
        };
        let position = first_seq.saturating_sub(1);
        if let Op::Resume { .. } = op {
            let before = self.rooms.get(&room).copied();
            let exact = recovered && before.is_some_and(|before| before.epoch == epoch && before.position == position);
            self.rooms.insert(room.clone(), Room { position, epoch });
            self.events.push_back(Event::Resumed { room, epoch, first_seq, recovered: exact });
        } else {
            self.rooms.insert(room.clone(), Room { position, epoch });
            self.events.push_back(Event::Joined { room, epoch, first_seq, recovered });
        }
    }

    fn handle_ack(&mut self, ack: v1::SendAck) {
        let answered = self.answers(|op| {
            matches!(op, Op::Post { room, client_msg_id, .. } if *room == ack.room && *client_msg_id == ack.client_msg_id)
        });
        if answered {
            self.events.push_back(Event::Sent {
                room: ack.room,
                client_msg_id: ack.client_msg_id,
                seq: ack.seq,
                duplicate: ack.duplicate,
            });
        }
    }

    fn handle_error(&mut self, error: v1::Error) {
        let v1::Error { room, code, message } = error;
        let request = match self.outstanding.take() {
            Some(op) => {
                if let Op::Resume { room } = &op {
                    // The room can no longer be read (permissions changed, room full, …).
                    self.rooms.remove(room);
                }
                op.request()
            }
            None => Request::Unknown,
        };
        let code = tonic::Code::from_i32(code);
        self.events.push_back(Event::Refused(Refusal { room, request, code, message }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscribed(room: &str, epoch: u64, recovered: bool, first_seq: u64) -> v1::ServerFrame {
        let subscribed = v1::Subscribed { room: room.into(), epoch, recovered, first_seq };
        event(room_event::Event::Subscribed(subscribed))
    }

    fn message(room: &str, seq: u64, body: &str) -> v1::ServerFrame {
        let message = v1::ChatMessage { room: room.into(), seq, body: body.into(), ..Default::default() };
        event(room_event::Event::Message(message))
    }

    fn event(event: room_event::Event) -> v1::ServerFrame {
        v1::ServerFrame { frame: Some(server_frame::Frame::Event(v1::RoomEvent { event: Some(event) })) }
    }

    fn ack(room: &str, id: &str, seq: u64, duplicate: bool) -> v1::ServerFrame {
        let ack = v1::SendAck { room: room.into(), client_msg_id: id.into(), seq, duplicate };
        v1::ServerFrame { frame: Some(server_frame::Frame::Ack(ack)) }
    }

    fn sent(conversation: &mut Conversation) -> Vec<Outgoing> {
        std::iter::from_fn(|| conversation.poll_outgoing()).collect()
    }

    fn events(conversation: &mut Conversation) -> Vec<Event> {
        std::iter::from_fn(|| conversation.poll_event()).collect()
    }

    fn join(room: &str, after_seq: Option<u64>) -> Outgoing {
        Outgoing::Frame(v1::ClientFrame {
            frame: Some(client_frame::Frame::Join(v1::Join { room: room.into(), after_seq })),
        })
    }

    fn post(room: &str, id: &str, body: &str) -> Outgoing {
        let post = v1::Post { room: room.into(), client_msg_id: id.into(), body: body.into() };
        Outgoing::Frame(v1::ClientFrame { frame: Some(client_frame::Frame::Post(post)) })
    }

    fn bodies(events: &[Event]) -> Vec<(u64, &str)> {
        events
            .iter()
            .filter_map(|event| match event {
                Event::Message(m) => Some((m.seq, m.body.as_str())),
                _ => None,
            })
            .collect()
    }

    /// Joined `r` live at seq 5 (4 messages before), connected.
    fn joined() -> Conversation {
        let mut conversation = Conversation::new();
        conversation.handle_connected();
        conversation.handle_join("r".into(), None);
        assert_eq!(sent(&mut conversation), [join("r", None)]);
        conversation.handle_frame(subscribed("r", 1, true, 5));
        assert!(matches!(&events(&mut conversation)[..], [Event::Joined { first_seq: 5, recovered: true, .. }]));
        conversation
    }

    #[test]
    fn one_request_at_a_time_in_the_callers_order() {
        let mut conversation = joined();
        conversation.handle_send("r".into(), "a".into(), "one".into());
        conversation.handle_send("r".into(), "b".into(), "two".into());
        assert_eq!(sent(&mut conversation), [post("r", "a", "one")], "the second waits for the first's answer");
        conversation.handle_frame(ack("r", "a", 5, false));
        assert_eq!(sent(&mut conversation), [post("r", "b", "two")]);
        assert!(matches!(&events(&mut conversation)[..], [Event::Sent { seq: 5, duplicate: false, .. }]));
        assert_eq!(conversation.pending(), 1);
    }

    #[test]
    fn requests_made_while_disconnected_wait_for_the_connection() {
        let mut conversation = Conversation::new();
        conversation.handle_join("r".into(), Some(3));
        conversation.handle_send("r".into(), "a".into(), "one".into());
        assert!(sent(&mut conversation).is_empty());
        conversation.handle_connected();
        assert_eq!(sent(&mut conversation), [join("r", Some(3))]);
    }

    #[test]
    fn a_reconnection_resumes_each_room_and_resends_the_unanswered_post_with_its_id() {
        let mut conversation = joined();
        conversation.handle_frame(message("r", 5, "five"));
        conversation.handle_send("r".into(), "a".into(), "mine".into());
        assert_eq!(sent(&mut conversation), [post("r", "a", "mine")]);
        conversation.handle_disconnected();
        conversation.handle_send("r".into(), "b".into(), "during the outage".into());
        conversation.handle_connected();
        assert_eq!(sent(&mut conversation), [join("r", Some(5))], "resume after the last message handed over");
        conversation.handle_frame(subscribed("r", 1, true, 6));
        assert_eq!(sent(&mut conversation), [post("r", "a", "mine")], "then the unanswered post, same id");
        conversation.handle_frame(message("r", 6, "mine"));
        conversation.handle_frame(ack("r", "a", 6, true));
        assert_eq!(sent(&mut conversation), [post("r", "b", "during the outage")]);
        let events = events(&mut conversation);
        assert_eq!(bodies(&events), [(5, "five"), (6, "mine")]);
        assert!(events.iter().any(|e| matches!(e, Event::Resumed { recovered: true, first_seq: 6, .. })));
        assert!(events.iter().any(|e| matches!(e, Event::Sent { seq: 6, duplicate: true, .. })));
    }

    #[test]
    fn nothing_is_handed_over_twice() {
        let mut conversation = joined();
        for seq in [5, 6, 6, 5, 7] {
            conversation.handle_frame(message("r", seq, &seq.to_string()));
        }
        assert_eq!(bodies(&events(&mut conversation)), [(5, "5"), (6, "6"), (7, "7")]);
    }

    #[test]
    fn an_inexact_resume_says_so_and_starts_over_where_the_server_does() {
        let mut conversation = joined();
        conversation.handle_frame(message("r", 5, "five"));
        conversation.handle_disconnected();
        conversation.handle_connected();
        assert_eq!(sent(&mut conversation), [join("r", Some(5))]);
        // A server without a store restarted: a new epoch, numbered from 1 again.
        conversation.handle_frame(subscribed("r", 2, false, 1));
        conversation.handle_frame(message("r", 1, "new one"));
        let events = events(&mut conversation);
        assert!(events.iter().any(|e| matches!(e, Event::Resumed { recovered: false, first_seq: 1, epoch: 2, .. })));
        assert_eq!(bodies(&events), [(5, "five"), (1, "new one")]);
        // `recovered = true` in another epoch is not exact either: the numbers were reused.
        let mut conversation = joined();
        conversation.handle_disconnected();
        conversation.handle_connected();
        conversation.handle_frame(subscribed("r", 7, true, 5));
        assert!(self::events(&mut conversation).iter().any(|e| matches!(e, Event::Resumed { recovered: false, .. })));
    }

    #[test]
    fn lag_is_an_event_and_moves_the_position() {
        let mut conversation = joined();
        let lagged = v1::Lagged { room: "r".into(), missed_from: 5, missed_to: 9 };
        conversation.handle_frame(event(room_event::Event::Lagged(lagged)));
        conversation.handle_frame(message("r", 10, "ten"));
        // An unannounced skip is announced all the same.
        conversation.handle_frame(message("r", 13, "thirteen"));
        let events = events(&mut conversation);
        assert!(matches!(&events[0], Event::Lagged { missed_from: 5, missed_to: 9, .. }));
        assert!(matches!(&events[2], Event::Lagged { missed_from: 11, missed_to: 12, .. }));
        assert_eq!(bodies(&events), [(10, "ten"), (13, "thirteen")]);
        conversation.handle_disconnected();
        conversation.handle_connected();
        assert_eq!(sent(&mut conversation), [join("r", Some(13))]);
    }

    #[test]
    fn a_refusal_answers_the_request_in_flight() {
        let mut conversation = joined();
        conversation.handle_send("r".into(), "a".into(), "too big".into());
        conversation.handle_send("r".into(), "b".into(), "fine".into());
        sent(&mut conversation);
        let error = v1::Error { room: "r".into(), code: 8, message: "over the limit".into() };
        conversation.handle_frame(v1::ServerFrame { frame: Some(server_frame::Frame::Error(error)) });
        assert_eq!(sent(&mut conversation), [post("r", "b", "fine")]);
        let refusal = match &events(&mut conversation)[..] {
            [Event::Refused(refusal)] => refusal.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(refusal.request, Request::Send { client_msg_id: "a".into() });
        assert_eq!(refusal.code, tonic::Code::ResourceExhausted);
        // Refused, so not resent after a reconnection.
        conversation.handle_disconnected();
        conversation.handle_connected();
        conversation.handle_frame(subscribed("r", 1, true, 5));
        assert_eq!(sent(&mut conversation), [join("r", Some(4)), post("r", "b", "fine")]);
    }

    #[test]
    fn close_half_closes_once_everything_is_answered_and_again_after_a_reconnection() {
        let mut conversation = joined();
        conversation.handle_send("r".into(), "a".into(), "last".into());
        conversation.handle_close();
        assert_eq!(sent(&mut conversation), [post("r", "a", "last")]);
        conversation.handle_disconnected();
        conversation.handle_connected();
        assert_eq!(sent(&mut conversation), [join("r", Some(4))], "not half-closed before the post is answered");
        conversation.handle_frame(subscribed("r", 1, true, 5));
        assert_eq!(sent(&mut conversation), [post("r", "a", "last")]);
        conversation.handle_frame(ack("r", "a", 5, false));
        assert_eq!(sent(&mut conversation), [Outgoing::HalfClose]);
        assert!(conversation.is_half_closed());
        conversation.handle_send("r".into(), "late".into(), "x".into());
        assert!(sent(&mut conversation).is_empty());
        assert!(
            events(&mut conversation)
                .iter()
                .any(|e| matches!(e, Event::Refused(r) if r.code == tonic::Code::FailedPrecondition))
        );
    }

    #[test]
    fn a_room_the_server_dropped_on_its_own_is_joined_again_from_its_position() {
        let mut conversation = joined();
        conversation.handle_frame(message("r", 5, "hi"));
        events(&mut conversation);
        let left = v1::Left { room: "r".into(), stopped: true };
        conversation.handle_frame(v1::ServerFrame { frame: Some(server_frame::Frame::Left(left)) });
        assert_eq!(sent(&mut conversation), [join("r", Some(5))], "resumes after the last message handed over");
        assert!(events(&mut conversation).is_empty(), "the caller still has the room: no Left");
        conversation.handle_frame(subscribed("r", 1, true, 6));
        conversation.handle_frame(message("r", 6, "after the reload"));
        let seqs: Vec<u64> = events(&mut conversation)
            .into_iter()
            .filter_map(|event| match event {
                Event::Message(message) => Some(message.seq),
                _ => None,
            })
            .collect();
        assert_eq!(seqs, [6]);
    }

    #[test]
    fn a_leave_in_flight_when_the_connection_drops_is_done() {
        let mut conversation = joined();
        conversation.handle_leave("r".into());
        sent(&mut conversation);
        conversation.handle_disconnected();
        assert!(matches!(&events(&mut conversation)[..], [Event::Left { .. }]));
        conversation.handle_connected();
        assert!(sent(&mut conversation).is_empty(), "no room to resume");
    }
}
