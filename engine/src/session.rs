//! One connected client of the bidirectional API: its identity, the rooms it joined (bounded),
//! what it was delivered and acknowledged per room, and when it may finish after its client
//! half-closed (once its own messages have come back).
//!
//! Call order: `handle_*` for each input, then [`Session::poll_command`] until `None`. Commands
//! are what the shell must do: subscribe a room, send, emit a frame to the client, attach a
//! room's ring to the client's stream, finish.
//!
//! Room events do not pass through the session: the client's stream reads them from each
//! joined room's ring itself (one hop less). The session decides what the stream carries and
//! when it ends; the shell tells it how far the stream has read ([`Session::handle_delivered`]),
//! which acknowledgements are checked against.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use crate::error::{RoomError, SessionError};
use crate::room::{Sent, SubscriberId, Subscription};
use crate::types::{ClientMsgId, Draft, RoomEvent, RoomName, Seq, UserName};

/// What a client sends on a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientFrame {
    /// Join a room: live from now (`after_seq = None`) or resuming after a sequence number.
    Join {
        /// The room's name (validated here).
        room: String,
        /// Resume point (G5).
        after_seq: Option<Seq>,
    },
    /// Leave a joined room.
    Leave {
        /// The room's name.
        room: String,
    },
    /// Send a message to a joined room.
    Send {
        /// The room's name.
        room: String,
        /// Idempotency id (G4); empty for none.
        client_msg_id: String,
        /// The text.
        body: String,
    },
    /// Acknowledge having read a room up to `seq`.
    Ack {
        /// The room's name.
        room: String,
        /// The last sequence number read.
        seq: Seq,
    },
    /// Tell a joined room the client is typing.
    Typing {
        /// The room's name.
        room: String,
    },
}

/// A refusal carried in an error frame: the session goes on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The session refused the frame.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The room refused the request.
    #[error(transparent)]
    Room(#[from] RoomError),
}

/// What a session sends its client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerFrame {
    /// A room event: `Subscribed` answers a join, then messages, lag markers, presence, typing.
    Event(RoomEvent),
    /// A send was sequenced (or recognised as a retry).
    SendAck {
        /// The room.
        room: RoomName,
        /// The client's id, echoed.
        client_msg_id: Option<ClientMsgId>,
        /// The sequence number.
        seq: Seq,
        /// `true` if it was a retry of an earlier send (G4).
        duplicate: bool,
    },
    /// The session left a room.
    Left {
        /// The room.
        room: RoomName,
        /// The client did not ask: the room stopped under the session (a cluster node's room
        /// reloading after falling behind the log, or its actor failed) after the session read
        /// everything it published. Joining again with `after_seq` resumes exactly.
        stopped: bool,
    },
    /// A frame was refused; the session goes on.
    Error {
        /// The room the frame named, when it named a valid one.
        room: Option<RoomName>,
        /// Why.
        error: FrameError,
    },
}

/// What the shell must do for a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionCommand {
    /// Subscribe this session to a room; report with [`Session::handle_subscribed`].
    Subscribe {
        /// The room.
        room: RoomName,
        /// The session's user, for presence.
        user: UserName,
        /// Resume point.
        after_seq: Option<Seq>,
    },
    /// The subscription's backlog is out: from here the client's stream reads the room's ring.
    Attach {
        /// The room.
        room: RoomName,
    },
    /// Drop this session's subscription of a room (and stop reading its ring).
    Unsubscribe {
        /// The room.
        room: RoomName,
        /// The subscription to drop.
        subscriber: SubscriberId,
    },
    /// Send a message; report with [`Session::handle_sent`].
    Send {
        /// The room.
        room: RoomName,
        /// The message.
        draft: Draft,
    },
    /// Tell a room the user is typing.
    Typing {
        /// The room.
        room: RoomName,
        /// Who.
        user: UserName,
    },
    /// Send a frame to the client.
    Emit(ServerFrame),
    /// The client closed and every reply is out: the stream ends once it has read, in each
    /// listed room, up to the session's own last message there (its echo); every subscription
    /// is dropped with the stream.
    Finish {
        /// Per room, the last of the client's own messages the stream must still carry.
        echoes: Vec<(RoomName, Seq)>,
    },
}

/// Per joined room: the subscription and the read positions.
#[derive(Clone, Debug, Default)]
struct Joined {
    /// `None` while the subscribe request is in flight.
    subscriber: Option<SubscriberId>,
    /// Last sequence number handed to the client (delivered or declared missed), as far as the
    /// shell reported it.
    delivered: Seq,
    /// Last sequence number the client acknowledged.
    acked: Seq,
    /// Highest sequence number of this session's own messages (the stream ends after it).
    echo: Option<Seq>,
}

/// One client's session state machine.
#[derive(Debug)]
pub struct Session {
    user: UserName,
    rooms_max: usize,
    joined: BTreeMap<RoomName, Joined>,
    /// The client half-closed: finish once no echo is pending.
    closing: bool,
    finished: bool,
    /// Whether accepted sends are acknowledged with a `SendAck` frame (see
    /// [`Session::without_acks`]).
    acks: bool,
    commands: VecDeque<SessionCommand>,
}

impl Session {
    /// A session for `user`, joined to at most `rooms_max` rooms.
    pub fn new(user: UserName, rooms_max: usize) -> Self {
        Self {
            user,
            rooms_max,
            joined: BTreeMap::new(),
            closing: false,
            finished: false,
            acks: true,
            commands: VecDeque::new(),
        }
    }

    /// The same session, but accepted sends are not acknowledged with a frame (refusals still
    /// are): for protocols that have no place for an acknowledgement, like the seed's
    /// `ChatStream`, where each one would only cost its stream a wake-up to skip it.
    pub fn without_acks(self) -> Self {
        Self { acks: false, ..self }
    }

    /// The session's user.
    pub fn user(&self) -> &UserName {
        &self.user
    }

    /// Rooms joined, in name order.
    pub fn rooms(&self) -> Vec<RoomName> {
        self.joined.keys().cloned().collect()
    }

    /// The last sequence number the client acknowledged in `room`.
    pub fn acked(&self, room: &RoomName) -> Option<Seq> {
        self.joined.get(room).map(|joined| joined.acked)
    }

    /// A frame from the client.
    pub fn handle_frame(&mut self, frame: ClientFrame) {
        if self.closing {
            self.emit_error(None, SessionError::Closing.into());
            return;
        }
        let room_text = match &frame {
            ClientFrame::Join { room, .. }
            | ClientFrame::Leave { room }
            | ClientFrame::Send { room, .. }
            | ClientFrame::Ack { room, .. }
            | ClientFrame::Typing { room } => room.clone(),
        };
        let room = match RoomName::new(&room_text) {
            Ok(room) => room,
            Err(error) => return self.emit_error(None, SessionError::from(error).into()),
        };
        if let Err(error) = self.apply(room.clone(), frame) {
            self.emit_error(Some(room), error.into());
        }
    }

    fn apply(&mut self, room: RoomName, frame: ClientFrame) -> Result<(), SessionError> {
        let not_joined = || SessionError::NotJoined { room: room.to_string() };
        match frame {
            ClientFrame::Join { after_seq, .. } => {
                if self.joined.contains_key(&room) {
                    return Err(SessionError::AlreadyJoined { room: room.to_string() });
                }
                if self.joined.len() >= self.rooms_max {
                    return Err(SessionError::TooManyRooms { rooms_max: self.rooms_max });
                }
                self.joined.insert(room.clone(), Joined::default());
                self.commands.push_back(SessionCommand::Subscribe { room, user: self.user.clone(), after_seq });
            }
            ClientFrame::Leave { .. } => {
                let joined = self.joined.remove(&room).ok_or_else(not_joined)?;
                if let Some(subscriber) = joined.subscriber {
                    self.commands.push_back(SessionCommand::Unsubscribe { room: room.clone(), subscriber });
                }
                self.commands.push_back(SessionCommand::Emit(ServerFrame::Left { room, stopped: false }));
            }
            ClientFrame::Send { client_msg_id, body, .. } => {
                if !self.joined.contains_key(&room) {
                    return Err(not_joined());
                }
                let client_msg_id = ClientMsgId::new(&client_msg_id)?;
                let draft = Draft { user: self.user.clone(), client_msg_id, body: Arc::from(body) };
                self.commands.push_back(SessionCommand::Send { room, draft });
            }
            ClientFrame::Ack { seq, .. } => {
                let joined = self.joined.get_mut(&room).ok_or_else(not_joined)?;
                if seq > joined.delivered {
                    return Err(SessionError::AckAhead { room: room.to_string(), seq, delivered: joined.delivered });
                }
                joined.acked = joined.acked.max(seq);
            }
            ClientFrame::Typing { .. } => {
                if !self.joined.contains_key(&room) {
                    return Err(not_joined());
                }
                self.commands.push_back(SessionCommand::Typing { room, user: self.user.clone() });
            }
        }
        Ok(())
    }

    /// The answer to a `Subscribe` command: the subscription with its backlog, or a refusal.
    pub fn handle_subscribed(&mut self, room: RoomName, result: Result<Subscription, RoomError>) {
        let subscription = match result {
            Ok(subscription) => subscription,
            Err(error) => {
                self.joined.remove(&room);
                return self.emit_error(Some(room), error.into());
            }
        };
        let Some(joined) = self.joined.get_mut(&room) else {
            // Left before the subscription completed: drop it again.
            let subscriber = subscription.id;
            self.commands.push_back(SessionCommand::Unsubscribe { room, subscriber });
            return;
        };
        joined.subscriber = Some(subscription.id);
        joined.delivered = subscription.first_seq.saturating_sub(1);
        self.commands.push_back(SessionCommand::Emit(ServerFrame::Event(RoomEvent::Subscribed {
            room: room.clone(),
            epoch: subscription.epoch,
            recovered: subscription.recovered,
            first_seq: subscription.first_seq,
        })));
        for message in subscription.backlog {
            joined.delivered = message.seq;
            self.commands.push_back(SessionCommand::Emit(ServerFrame::Event(RoomEvent::Message(message))));
        }
        self.commands.push_back(SessionCommand::Attach { room });
    }

    /// The room stopped under the session (its stream read everything it published): the room
    /// is no longer joined, and the client hears it (`Left` with `stopped`), so it can
    /// join again with `after_seq`. Nothing happens for a room not joined.
    pub fn handle_room_stopped(&mut self, room: RoomName) {
        let Some(joined) = self.joined.remove(&room) else { return };
        if let Some(subscriber) = joined.subscriber {
            self.commands.push_back(SessionCommand::Unsubscribe { room: room.clone(), subscriber });
        }
        self.commands.push_back(SessionCommand::Emit(ServerFrame::Left { room, stopped: true }));
    }

    /// The client's stream has read `room` up to `seq` (delivered or declared missed).
    pub fn handle_delivered(&mut self, room: &RoomName, seq: Seq) {
        if let Some(joined) = self.joined.get_mut(room) {
            joined.delivered = joined.delivered.max(seq);
        }
    }

    /// The answer to a `Send` command.
    pub fn handle_sent(&mut self, room: RoomName, client_msg_id: Option<ClientMsgId>, result: Result<Sent, RoomError>) {
        match result {
            Ok(sent) => {
                if let Some(joined) = self.joined.get_mut(&room) {
                    joined.echo = Some(joined.echo.map_or(sent.seq, |seq| seq.max(sent.seq)));
                }
                if !self.acks {
                    return;
                }
                self.commands.push_back(SessionCommand::Emit(ServerFrame::SendAck {
                    room,
                    client_msg_id,
                    seq: sent.seq,
                    duplicate: sent.duplicate,
                }));
            }
            Err(error) => self.emit_error(Some(room), error.into()),
        }
    }

    /// The client half-closed. Every reply is out (the shell handles inputs in order), so the
    /// session finishes: its stream ends once the client's own messages have come back.
    pub fn handle_close(&mut self) {
        self.closing = true;
        if self.finished {
            return;
        }
        self.finished = true;
        let echoes = std::mem::take(&mut self.joined)
            .into_iter()
            .filter_map(|(room, joined)| joined.echo.filter(|&echo| echo > joined.delivered).map(|echo| (room, echo)))
            .collect();
        self.commands.push_back(SessionCommand::Finish { echoes });
    }

    /// The client went away without closing: drop every subscription now (only `Unsubscribe`
    /// commands follow; frames for the client are pointless).
    pub fn handle_disconnect(&mut self) {
        self.closing = true;
        self.finished = true;
        self.commands.clear();
        for (room, joined) in std::mem::take(&mut self.joined) {
            if let Some(subscriber) = joined.subscriber {
                self.commands.push_back(SessionCommand::Unsubscribe { room, subscriber });
            }
        }
    }

    /// Whether the session has finished.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The next command for the shell.
    pub fn poll_command(&mut self) -> Option<SessionCommand> {
        self.commands.pop_front()
    }

    fn emit_error(&mut self, room: Option<RoomName>, error: FrameError) {
        self.commands.push_back(SessionCommand::Emit(ServerFrame::Error { room, error }));
    }
}
