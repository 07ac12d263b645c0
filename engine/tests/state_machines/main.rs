//! Tests of the engine's state machines, driven directly (no actors, no clock).
//! One binary with a module per area, to keep link time down.

mod durability;
mod properties;
mod replicated;
mod ring;
mod room;
mod session;
mod upload;

use std::sync::Arc;

use confab_engine::{
    ChatMessage, ClientMsgId, Draft, Lag, Limits, ReadItem, ReadStatus, Ring, Room, RoomEffect, RoomError, RoomEvent,
    RoomName, Seq, SubscriberId, Subscription, Time, UserName,
};

fn room_name(name: &str) -> RoomName {
    RoomName::new(name).expect("valid room name")
}

fn user(name: &str) -> UserName {
    UserName::new(name).expect("valid user name")
}

fn draft(user_name: &str, id: &str, body: &str) -> Draft {
    Draft { user: user(user_name), client_msg_id: ClientMsgId::new(id).expect("valid id"), body: Arc::from(body) }
}

fn at(millis: u64) -> Time {
    Time::from_millis(millis)
}

/// A read item in a form tests can compare whole: what a reader saw, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seen {
    /// Told it missed `missed_from..=missed_to`.
    Lagged(Seq, Seq),
    Message(Seq),
    Presence(String, bool),
    Typing(String),
}

fn seen(item: &ReadItem) -> Seen {
    match item {
        ReadItem::Lagged(Lag { missed_from, missed_to }) => Seen::Lagged(*missed_from, *missed_to),
        ReadItem::Event(published) => match &published.event {
            RoomEvent::Message(message) => Seen::Message(message.seq),
            RoomEvent::Presence { user, present, .. } => Seen::Presence(user.as_str().to_owned(), *present),
            RoomEvent::Typing { user, .. } => Seen::Typing(user.as_str().to_owned()),
            other => panic!("a room publishes only messages, presence and typing, not {other:?}"),
        },
    }
}

/// Plays the room actor's shell around one room and its ring, in the actor's call order:
/// effects are executed after every input (events pushed once into the ring, writes collected),
/// a new reader is added after its subscription's effects (it does not see its own arrival),
/// readers that left are unsubscribed from the room at the next flush, and stalled readers
/// closed by the sweep are unsubscribed at once.
struct Shell {
    room: Room,
    ring: Ring,
    /// Messages handed over for writing (deferred rooms), oldest first, not yet taken.
    to_write: Vec<Arc<ChatMessage>>,
}

impl Shell {
    /// A new room whose ring keeps `limits.subscriber_queue_len_max` events and closes readers
    /// stalled for `limits.subscriber_stall_ms`, as the room actor makes it.
    fn new(name: &str, limits: &Limits) -> Self {
        Self::around(Room::new(room_name(name), 1, limits, at(0)), limits)
    }

    /// The shell of an existing room (restored, or made deferred).
    fn around(room: Room, limits: &Limits) -> Self {
        let ring = Ring::new(limits.subscriber_queue_len_max, room.durable_seq(), limits.subscriber_stall_ms);
        Self { room, ring, to_write: Vec::new() }
    }

    /// Executes everything the room and the ring asked for since the last flush.
    fn flush(&mut self, now: Time) {
        for id in self.ring.take_departed() {
            self.room.handle_unsubscribe(id, now);
        }
        while let Some(effect) = self.room.poll_effect() {
            match effect {
                RoomEffect::Publish(event) => self.ring.push(event, now),
                RoomEffect::Persist(messages) => self.to_write.extend(messages),
            }
        }
    }

    fn send(&mut self, user_name: &str, body: &str, now: Time) -> Seq {
        let sent = self.room.handle_send(draft(user_name, "", body), now).expect("the room accepts the message");
        self.flush(now);
        sent.seq
    }

    fn subscribe(&mut self, who: Option<&str>, after_seq: Option<Seq>, now: Time) -> Result<Subscription, RoomError> {
        let result = self.room.handle_subscribe(who.map(user), after_seq, now);
        self.flush(now);
        if let Ok(subscription) = &result {
            self.ring.add_reader(subscription.id, self.room.durable_seq());
        }
        result
    }

    /// A subscriber that must exist: its id.
    fn subscribed(&mut self, who: Option<&str>, now: Time) -> SubscriberId {
        self.subscribe(who, None, now).expect("the room accepts the subscriber").id
    }

    /// The reader's stream was dropped: it leaves the ring, then the room.
    fn unsubscribe(&mut self, id: SubscriberId, now: Time) -> bool {
        let was_reading = self.ring.remove_reader(id);
        self.flush(now);
        was_reading
    }

    /// The shell's timer fired: stalled readers are closed and unsubscribed.
    fn sweep(&mut self, now: Time) -> Vec<(SubscriberId, Lag)> {
        let stalled = self.ring.handle_timeout(now);
        for &(id, _) in &stalled {
            self.room.handle_unsubscribe(id, now);
        }
        self.flush(now);
        stalled
    }

    /// One read of at most `max` items.
    fn read(&mut self, id: SubscriberId, max: usize) -> (Vec<Seen>, ReadStatus) {
        let mut items = Vec::new();
        let status = self.ring.read(id, &mut items, max);
        (items.iter().map(seen).collect(), status)
    }

    /// Reads until the reader has nothing left (it would park) or its stream ended.
    fn read_all(&mut self, id: SubscriberId) -> (Vec<Seen>, ReadStatus) {
        let mut all = Vec::new();
        loop {
            let (items, status) = self.read(id, 3);
            all.extend(items);
            if status != ReadStatus::Items {
                return (all, status);
            }
        }
    }
}
