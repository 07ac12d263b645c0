//! The engine's operation handling, from arbitrary operation sequences: one Room, its Ring and a
//! few Sessions driven the way the actor layer drives them (this target plays the shell), with
//! raw, unvalidated client input (names, ids, bodies, resume points, acks). Invariants checked
//! after every step: sequence numbers contiguous (G1), each reader's stream contiguous or
//! explained by a lag span right before the gap (G2), stalled readers closed with exactly what
//! they missed (G2), retries answered with the original number (G4), resumes exact (G5),
//! batches contiguous (G6), history has what was written (G7); at the end every reader is told
//! of every message (nothing silent at the tail). Nothing may panic.
#![no_main]

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use arbitrary::Arbitrary;
use confab_engine::{
    ClientFrame, ClientMsgId, Draft, Limits, ReadItem, ReadStatus, ReaderEnd, Ring, Room, RoomEffect, RoomError,
    RoomEvent, RoomName, Seq, ServerFrame, Session, SessionCommand, SubscriberId, Time, UserName,
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
    /// Reader `index` reads one batch of at most `max` items (the others are slow).
    Read {
        index: u8,
        max: u8,
    },
    /// Every reader reads until it has nothing left.
    ReadAll,
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
    Disconnect {
        session: u8,
    },
    /// Time passes (the ring's stall sweep runs whenever it is due, after any step).
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

/// A ring reader as its client sees it.
struct Reader {
    id: SubscriberId,
    /// The last message its stream carried or declared missed (the backlog's end at first).
    told_upto: Seq,
    /// Owned by session `n`, which is told how far its stream read.
    session: Option<usize>,
    /// A session's stream reads the ring only once the session attached it (after the backlog).
    attached: bool,
}

struct Harness {
    room: Room,
    ring: Ring,
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

fn new_session(n: usize) -> Session {
    Session::new(UserName::new(&format!("s{n}")).expect("valid"), 2)
}

impl Harness {
    fn new() -> Self {
        let limits = limits();
        let room = Room::new(RoomName::new("fuzz").expect("valid"), 1, &limits, Time::from_millis(0));
        let ring = Ring::new(limits.subscriber_queue_len_max, room.durable_seq(), limits.subscriber_stall_ms);
        let sessions = (0..SESSIONS).map(new_session).collect();
        Harness { room, ring, readers: Vec::new(), sessions, now: 0, log: BTreeMap::new(), ids: BTreeMap::new() }
    }

    fn now(&self) -> Time {
        Time::from_millis(self.now)
    }

    /// Plays the room actor's flush: readers that left are unsubscribed, events published once.
    fn flush(&mut self) {
        let now = self.now();
        for id in self.ring.take_departed() {
            self.room.handle_unsubscribe(id, now);
        }
        while let Some(effect) = self.room.poll_effect() {
            match effect {
                RoomEffect::Publish(event) => self.ring.push(event, now),
                RoomEffect::Persist(_) => panic!("an in-memory room has nothing to write"),
            }
        }
    }

    fn record(&mut self, seq: Seq, body: &Arc<str>) {
        assert_eq!(seq, self.log.last_key_value().map_or(seq, |(last, _)| last + 1), "G1: contiguous numbers");
        self.log.insert(seq, body.clone());
    }

    fn send(&mut self, draft: Draft) -> Option<confab_engine::Sent> {
        let key = draft.client_msg_id.as_ref().map(|id| (draft.user.as_str().to_owned(), id.as_str().to_owned()));
        let body = draft.body.clone();
        let sent = self.room.handle_send(draft, self.now()).ok()?;
        self.flush();
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
        let last = self.room.durable_seq();
        let subscription = self.room.handle_subscribe(user, after_seq, self.now()).ok()?;
        if let (Some(k), true) = (after_seq, subscription.recovered) {
            assert_eq!(subscription.first_seq, k + 1, "G5: an exact resume continues after k");
        }
        let backlog: Vec<Seq> = subscription.backlog.iter().map(|m| m.seq).collect();
        assert_eq!(backlog, (subscription.first_seq..=last).collect::<Vec<_>>(), "G5: backlog is first..=last");
        // Its own arrival is published before its cursor exists: it reads what comes after.
        self.flush();
        self.ring.add_reader(subscription.id, self.room.durable_seq());
        let attached = session.is_none();
        self.readers.push(Reader { id: subscription.id, told_upto: last, session, attached });
        if let Some(n) = session {
            let room = self.room.name().clone();
            self.sessions[n].handle_subscribed(room, Ok(subscription.clone()));
        }
        Some(subscription.id)
    }

    /// Reader `index` reads one batch of at most `max` items; every item is checked against
    /// what its stream carried so far (G1, G2). Returns whether it read anything.
    fn read(&mut self, index: usize, max: usize) -> bool {
        let reader = &mut self.readers[index];
        if !reader.attached {
            return false;
        }
        let mut items = Vec::new();
        let status = self.ring.read(reader.id, &mut items, max);
        for item in &items {
            match item {
                ReadItem::Lagged(lag) => {
                    assert_eq!(lag.missed_from, reader.told_upto + 1, "G2: a lag starts where the stream stopped");
                    assert!(lag.missed_from <= lag.missed_to, "G2: a lag names at least one message");
                    reader.told_upto = lag.missed_to;
                }
                ReadItem::Event(published) => match &published.event {
                    RoomEvent::Message(message) => {
                        assert_eq!(message.seq, reader.told_upto + 1, "G2: a gap without a lag right before it");
                        assert_eq!(Some(&message.body), self.log.get(&message.seq), "G1: the same message at a number");
                        reader.told_upto = message.seq;
                    }
                    _ => assert_eq!(published.seq_before, reader.told_upto, "G2: an event overtook a message"),
                },
            }
        }
        assert!(items.len() <= max.max(1), "a read takes at most its batch (a lag alone may exceed 0)");
        assert!(!matches!(status, ReadStatus::Ended(_)), "a subscribed reader's stream ended: {status:?}");
        assert_eq!(self.ring.delivered(reader.id), Some(reader.told_upto), "the cursor agrees with the stream");
        if let Some(n) = reader.session {
            let room = self.room.name().clone();
            self.sessions[n].handle_delivered(&room, reader.told_upto);
        }
        status == ReadStatus::Items
    }

    /// Reader `index` reads until it has nothing left.
    fn read_all(&mut self, index: usize) {
        while self.read(index, 3) {}
    }

    /// Drops a reader from the ring (its stream went away); the room hears of it at the flush.
    fn remove_reader(&mut self, id: SubscriberId) {
        assert!(self.ring.remove_reader(id), "a reader the harness holds is in the ring");
        self.readers.retain(|reader| reader.id != id);
        self.flush();
    }

    /// A session's stream ended: every subscription goes with it, and the session starts over.
    fn end_session(&mut self, n: usize) {
        let mine: Vec<SubscriberId> =
            self.readers.iter().filter(|reader| reader.session == Some(n)).map(|reader| reader.id).collect();
        for id in mine {
            self.remove_reader(id);
        }
        self.sessions[n] = new_session(n);
    }

    /// Plays the actor shell for session `n`: executes its commands against the room.
    fn run_session(&mut self, n: usize) {
        while let Some(command) = self.sessions[n].poll_command() {
            match command {
                SessionCommand::Subscribe { room, user, after_seq } => {
                    if room != *self.room.name() {
                        self.sessions[n].handle_subscribed(room, Err(RoomError::NotFound));
                    } else if self.subscribe(Some(user), after_seq, Some(n)).is_none() {
                        self.sessions[n].handle_subscribed(room, Err(RoomError::Retired));
                    }
                }
                SessionCommand::Attach { room } => {
                    assert_eq!(room, *self.room.name(), "attached a room never subscribed");
                    let Some(reader) =
                        self.readers.iter_mut().find(|reader| reader.session == Some(n) && !reader.attached)
                    else {
                        panic!("attached without a pending subscription");
                    };
                    reader.attached = true;
                }
                SessionCommand::Unsubscribe { subscriber, .. } => {
                    assert!(
                        self.readers.iter().any(|reader| reader.id == subscriber && reader.session == Some(n)),
                        "a session drops only its own subscription"
                    );
                    self.remove_reader(subscriber);
                }
                SessionCommand::Send { room, draft } => {
                    let id = draft.client_msg_id.clone();
                    let result = self.send(draft).ok_or(RoomError::NotFound);
                    self.sessions[n].handle_sent(room, id, result);
                }
                SessionCommand::Typing { user, .. } => {
                    let _ = self.room.handle_typing(user, self.now());
                    self.flush();
                }
                SessionCommand::Emit(ServerFrame::SendAck { seq, .. }) => {
                    assert!(self.log.contains_key(&seq), "an ack names a sequenced message");
                }
                SessionCommand::Emit(_) => {}
                SessionCommand::Finish { echoes } => {
                    // The stream carries every echo (delivered or declared missed), then ends.
                    for (room, echo) in echoes {
                        assert_eq!(room, *self.room.name(), "an echo owed in a room never joined");
                        let Some(index) = self.readers.iter().position(|reader| reader.session == Some(n)) else {
                            panic!("an echo owed without a subscription");
                        };
                        assert!(self.readers[index].told_upto < echo, "an echo already delivered is not owed");
                        self.read_all(index);
                        assert!(self.readers[index].told_upto >= echo, "the session's own message never came back");
                    }
                    self.end_session(n);
                }
            }
        }
    }

    /// Plays the room actor's timer: when the ring's sweep is due, stalled readers are closed.
    /// Each one's final lag must start where its stream stopped and reach the room's last
    /// message (G2); its stream ends with that lag, and a session's whole stream ends.
    fn sweep_if_due(&mut self) {
        if self.ring.poll_timeout().is_none_or(|due| self.now() < due) {
            return;
        }
        let now = self.now();
        for (id, lag) in self.ring.handle_timeout(now) {
            self.room.handle_unsubscribe(id, now);
            let Some(index) = self.readers.iter().position(|reader| reader.id == id) else {
                panic!("closed a subscriber that is not subscribed");
            };
            let reader = self.readers.remove(index);
            assert_eq!(lag.missed_from, reader.told_upto + 1, "G2: the final lag starts where the stream stopped");
            assert_eq!(lag.missed_to, self.room.durable_seq(), "G2: the final lag reaches the last message");
            let mut rest = Vec::new();
            let end = self.ring.read(id, &mut rest, usize::MAX);
            assert_eq!(end, ReadStatus::Ended(ReaderEnd::Stalled(lag)), "a stalled stream ends with its lag");
            assert!(rest.is_empty(), "nothing after a stall");
            if let Some(n) = reader.session {
                self.end_session(n);
            }
        }
        self.flush();
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
                    let id = self.readers[index].id;
                    self.remove_reader(id);
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
            Op::Read { index, max } => {
                let index = usize::from(index);
                if index < self.readers.len() {
                    self.read(index, usize::from(max));
                }
            }
            Op::ReadAll => {
                for index in 0..self.readers.len() {
                    self.read_all(index);
                }
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
            Op::Disconnect { session } => {
                let n = usize::from(session) % SESSIONS;
                self.sessions[n].handle_disconnect();
                self.run_session(n);
                assert!(
                    self.readers.iter().all(|reader| reader.session != Some(n)),
                    "a disconnected session keeps no subscription"
                );
                self.sessions[n] = new_session(n);
            }
            Op::Tick { millis } => {
                self.now += u64::from(millis);
                let _ = self.room.handle_retire_if_idle(self.now());
            }
        }
        for n in 0..SESSIONS {
            self.run_session(n);
        }
        self.flush();
        self.sweep_if_due();
        assert_eq!(self.room.subscriber_count(), self.readers.len(), "the room counts exactly the live readers");
        assert_eq!(self.ring.reader_count(), self.readers.len(), "the ring reads for exactly the live readers");
    }

    /// Every reader reads to the end: each is told of every message, delivered or missed.
    fn finish(&mut self) {
        for index in 0..self.readers.len() {
            assert!(self.readers[index].attached, "a session's subscription was never attached");
            self.read_all(index);
            assert_eq!(self.readers[index].told_upto, self.room.durable_seq(), "G2: nothing silent at the tail");
        }
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let mut harness = Harness::new();
    let mut pending: VecDeque<Op> = ops.into();
    while let Some(op) = pending.pop_front() {
        harness.step(op);
    }
    harness.finish();
});
