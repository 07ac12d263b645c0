//! The engine's operation handling, from arbitrary operation sequences: one Room and a few
//! Sessions driven the way the actor layer drives them (this target plays the shell), with raw,
//! unvalidated client input (names, ids, bodies, resume points, acks). Invariants checked after
//! every step: sequence numbers contiguous (G1), each subscriber's deliveries contiguous or
//! explained by a lag marker (G2), retries answered with the original number (G4), resumes exact
//! (G5), batches contiguous (G6), history has what was acknowledged (G7). Nothing may panic.
#![no_main]

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use arbitrary::Arbitrary;
use confab_engine::{
    ClientFrame, ClientMsgId, Delivery, Draft, Limits, Room, RoomEvent, RoomName, Seq, ServerFrame, Session,
    SessionCommand, SubscriberId, Time, UserName,
};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Op {
    Subscribe {
        user: Option<String>,
        after_seq: Option<u64>,
    },
    Unsubscribe {
        index: u8,
    },
    Send {
        user: String,
        id: String,
        body: String,
    },
    Batch {
        messages: Vec<(String, String)>,
    },
    Typing {
        user: String,
    },
    /// Fan out, with the queue of subscriber `full` refusing everything this round.
    Deliver {
        full: Option<u8>,
    },
    Markers {
        full: Option<u8>,
    },
    History {
        after_seq: u64,
        limit: u16,
    },
    Frame {
        session: u8,
        frame: Frame,
    },
    Close {
        session: u8,
    },
    Tick {
        millis: u16,
    },
}

#[derive(Arbitrary, Debug)]
enum Frame {
    Join { room: String, after_seq: Option<u64> },
    Leave { room: String },
    Send { room: String, client_msg_id: String, body: String },
    Ack { room: String, seq: u64 },
    Typing { room: String },
}

impl From<Frame> for ClientFrame {
    fn from(frame: Frame) -> Self {
        match frame {
            Frame::Join { room, after_seq } => ClientFrame::Join { room, after_seq },
            Frame::Leave { room } => ClientFrame::Leave { room },
            Frame::Send { room, client_msg_id, body } => ClientFrame::Send { room, client_msg_id, body },
            Frame::Ack { room, seq } => ClientFrame::Ack { room, seq },
            Frame::Typing { room } => ClientFrame::Typing { room },
        }
    }
}

/// A subscriber as its client sees it: the next sequence number it must be told about.
struct Reader {
    id: SubscriberId,
    next: Seq,
    /// Owned by session `n`, whose state machine gets the deliveries.
    session: Option<usize>,
}

struct Harness {
    room: Room,
    readers: Vec<Reader>,
    sessions: Vec<Session>,
    now: u64,
    /// Every sequenced message's body, by seq (G1: one message per number).
    log: BTreeMap<Seq, Arc<str>>,
    /// (user, id) -> seq of identified sends.
    ids: BTreeMap<(String, String), Seq>,
}

const SESSIONS: usize = 3;

fn limits() -> Limits {
    Limits {
        history_len_max: 8,
        dedupe_window_len: 4,
        subscriber_queue_len_max: 2,
        session_rooms_max: 2,
        subscriber_stall_ms: 100,
        ..Limits::default()
    }
}

impl Harness {
    fn new() -> Self {
        let room = Room::new(RoomName::new("fuzz").expect("valid"), 1, &limits(), Time::from_millis(0));
        let sessions =
            (0..SESSIONS).map(|n| Session::new(UserName::new(&format!("s{n}")).expect("valid"), 2)).collect();
        Harness { room, readers: Vec::new(), sessions, now: 0, log: BTreeMap::new(), ids: BTreeMap::new() }
    }

    fn now(&self) -> Time {
        Time::from_millis(self.now)
    }

    fn record(&mut self, seq: Seq, body: &Arc<str>) {
        assert_eq!(seq, self.log.last_key_value().map_or(seq, |(last, _)| last + 1), "G1: contiguous numbers");
        self.log.insert(seq, body.clone());
    }

    fn send(&mut self, draft: Draft) -> Option<confab_engine::Sent> {
        let key = draft.client_msg_id.as_ref().map(|id| (draft.user.as_str().to_owned(), id.as_str().to_owned()));
        let body = draft.body.clone();
        let sent = self.room.handle_send(draft, self.now()).ok()?;
        match key.as_ref().and_then(|key| self.ids.get(key)) {
            Some(&original) if sent.duplicate => assert_eq!(sent.seq, original, "G4: a retry gets the original"),
            _ => {
                assert!(!sent.duplicate || key.is_some(), "only identified sends are retries");
                if !sent.duplicate {
                    self.record(sent.seq, &body);
                    if let Some(key) = key {
                        self.ids.insert(key, sent.seq);
                    }
                }
            }
        }
        let page = self.room.history(sent.seq - 1, 1).expect("the room is open");
        if page.first_retained_seq <= sent.seq {
            assert_eq!(page.messages.first().map(|m| m.seq), Some(sent.seq), "G7: read your writes");
        }
        Some(sent)
    }

    fn subscribe(
        &mut self,
        user: Option<UserName>,
        after_seq: Option<Seq>,
        session: Option<usize>,
    ) -> Option<SubscriberId> {
        let last = self.room.last_seq();
        let subscription = self.room.handle_subscribe(user, after_seq, self.now()).ok()?;
        if let (Some(k), true) = (after_seq, subscription.recovered) {
            assert_eq!(subscription.first_seq, k + 1, "G5: an exact resume continues after k");
        }
        let backlog: Vec<Seq> = subscription.backlog.iter().map(|m| m.seq).collect();
        assert_eq!(backlog, (subscription.first_seq..=last).collect::<Vec<_>>(), "G5: backlog is first..=last");
        self.readers.push(Reader { id: subscription.id, next: last + 1, session });
        if let Some(n) = session {
            let room = self.room.name().clone();
            self.sessions[n].handle_subscribed(room, Ok(subscription.clone()));
        }
        Some(subscription.id)
    }

    /// Checks one delivery against its reader, then hands it over (to a session if it owns it).
    fn accept(&mut self, delivery: Delivery) {
        let Some(reader) = self.readers.iter_mut().find(|reader| reader.id == delivery.to) else {
            panic!("a delivery to someone not subscribed");
        };
        if let Some(lag) = delivery.lag {
            assert_eq!(lag.missed_from, reader.next, "G2: the lag starts where delivery stopped");
            reader.next = lag.missed_to + 1;
        }
        match &delivery.event {
            RoomEvent::Message(message) => {
                assert_eq!(message.seq, reader.next, "G2: contiguous delivery");
                assert_eq!(Some(&message.body), self.log.get(&message.seq), "G1: the same message at a number");
                reader.next += 1;
            }
            RoomEvent::Lagged { lag, .. } => {
                assert_eq!(lag.missed_from, reader.next, "G2: a lone marker starts where delivery stopped");
                reader.next = lag.missed_to + 1;
            }
            _ => {}
        }
        if let Some(n) = reader.session {
            self.sessions[n].handle_room_event(delivery.to, delivery.lag, delivery.event);
        }
    }

    fn is_full(&self, to: SubscriberId, full: Option<u8>) -> bool {
        full.is_some_and(|index| self.readers.get(index as usize).is_some_and(|reader| reader.id == to))
    }

    fn deliver(&mut self, full: Option<u8>) {
        while let Some(delivery) = self.room.poll_delivery() {
            if self.is_full(delivery.to, full) {
                self.room.handle_delivery_full(&delivery);
            } else {
                self.accept(delivery);
            }
        }
    }

    /// Plays the actor shell for session `n`: executes its commands against the room.
    fn run_session(&mut self, n: usize) {
        while let Some(command) = self.sessions[n].poll_command() {
            match command {
                SessionCommand::Subscribe { room, user, after_seq } => {
                    if room != *self.room.name() {
                        let refusal = Err(confab_engine::RoomError::NotFound);
                        self.sessions[n].handle_subscribed(room, refusal);
                    } else if self.subscribe(Some(user), after_seq, Some(n)).is_none() {
                        self.sessions[n].handle_subscribed(room, Err(confab_engine::RoomError::Retired));
                    }
                }
                SessionCommand::Unsubscribe { subscriber, .. } => {
                    self.readers.retain(|reader| reader.id != subscriber);
                    self.room.handle_unsubscribe(subscriber, self.now());
                }
                SessionCommand::Send { room, draft } => {
                    let id = draft.client_msg_id.clone();
                    let result = self.send(draft).ok_or(confab_engine::RoomError::NotFound);
                    self.sessions[n].handle_sent(room, id, result);
                }
                SessionCommand::Typing { user, .. } => {
                    let _ = self.room.handle_typing(user, self.now());
                }
                SessionCommand::Emit(ServerFrame::SendAck { seq, .. }) => {
                    assert!(self.log.contains_key(&seq), "an ack names a sequenced message");
                }
                SessionCommand::Emit(_) => {}
                SessionCommand::Finish => {
                    let mine: Vec<SubscriberId> = self
                        .readers
                        .iter()
                        .filter(|reader| reader.session == Some(n))
                        .map(|reader| reader.id)
                        .collect();
                    for id in mine {
                        self.room.handle_unsubscribe(id, self.now());
                    }
                    self.readers.retain(|reader| reader.session != Some(n));
                    self.sessions[n] = Session::new(UserName::new(&format!("s{n}")).expect("valid"), 2);
                }
            }
        }
    }

    /// Plays the shell's closing of stalled subscribers: the final lag marker must start where
    /// delivery stopped and end at the room's last message (G2); a session is stopped whole.
    fn close_stalled(&mut self) {
        for (id, lag) in self.room.take_stalled(self.now()) {
            let Some(index) = self.readers.iter().position(|reader| reader.id == id) else {
                panic!("closed a subscriber that is not subscribed");
            };
            let reader = self.readers.remove(index);
            assert_eq!(lag.missed_from, reader.next, "G2: the final marker starts where delivery stopped");
            assert_eq!(lag.missed_to, self.room.durable_seq(), "G2: the final marker reaches the last message");
            if let Some(n) = reader.session {
                let others: Vec<SubscriberId> =
                    self.readers.iter().filter(|reader| reader.session == Some(n)).map(|reader| reader.id).collect();
                for other in others {
                    self.room.handle_unsubscribe(other, self.now());
                }
                self.readers.retain(|reader| reader.session != Some(n));
                self.sessions[n] = Session::new(UserName::new(&format!("s{n}")).expect("valid"), 2);
            }
        }
    }

    fn step(&mut self, op: Op) {
        match op {
            Op::Subscribe { user, after_seq } => {
                let user = match user.map(|name| UserName::new(&name)) {
                    Some(Ok(user)) => Some(user),
                    Some(Err(_)) => return,
                    None => None,
                };
                self.subscribe(user, after_seq, None);
            }
            Op::Unsubscribe { index } => {
                let index = index as usize;
                if index < self.readers.len() && self.readers[index].session.is_none() {
                    let reader = self.readers.remove(index);
                    assert!(self.room.handle_unsubscribe(reader.id, self.now()));
                }
            }
            Op::Send { user, id, body } => {
                let (Ok(user), Ok(client_msg_id)) = (UserName::new(&user), ClientMsgId::new(&id)) else { return };
                self.send(Draft { user, client_msg_id, body: Arc::from(body) });
            }
            Op::Batch { messages } => {
                let mut drafts = Vec::new();
                for (user, body) in messages {
                    let Ok(user) = UserName::new(&user) else { return };
                    drafts.push(Draft { user, client_msg_id: None, body: Arc::from(body) });
                }
                let bodies: Vec<Arc<str>> = drafts.iter().map(|draft| draft.body.clone()).collect();
                if let Ok(Some((first, last))) = self.room.handle_send_batch(drafts, self.now()) {
                    assert_eq!(last - first + 1, bodies.len() as u64, "G6: one contiguous run");
                    for (offset, body) in bodies.iter().enumerate() {
                        self.record(first + offset as u64, body);
                    }
                }
            }
            Op::Typing { user } => {
                if let Ok(user) = UserName::new(&user) {
                    let _ = self.room.handle_typing(user, self.now());
                }
            }
            Op::Deliver { full } => self.deliver(full),
            Op::Markers { full } => {
                self.deliver(full);
                for marker in self.room.take_lag_markers() {
                    if self.is_full(marker.to, full) {
                        self.room.handle_delivery_full(&marker);
                    } else {
                        self.accept(marker);
                    }
                }
                self.close_stalled();
            }
            Op::History { after_seq, limit } => {
                if let Ok(page) = self.room.history(after_seq, usize::from(limit)) {
                    let seqs: Vec<Seq> = page.messages.iter().map(|m| m.seq).collect();
                    assert!(seqs.windows(2).all(|pair| pair[1] == pair[0] + 1), "history is contiguous");
                    assert!(seqs.first().is_none_or(|&first| first > after_seq), "history starts after after_seq");
                }
            }
            Op::Frame { session, frame } => {
                let n = usize::from(session) % SESSIONS;
                self.sessions[n].handle_frame(frame.into());
                self.run_session(n);
            }
            Op::Close { session } => {
                let n = usize::from(session) % SESSIONS;
                self.sessions[n].handle_close();
                self.run_session(n);
            }
            Op::Tick { millis } => {
                self.now += u64::from(millis);
                let _ = self.room.handle_retire_if_idle(self.now());
            }
        }
        for n in 0..SESSIONS {
            self.run_session(n);
        }
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let mut harness = Harness::new();
    let mut pending: VecDeque<Op> = ops.into();
    while let Some(op) = pending.pop_front() {
        harness.step(op);
    }
});
