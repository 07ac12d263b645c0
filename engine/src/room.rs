//! One chat room: sequencing (G1), retained history and resume (G5), dedupe (G4), per-subscriber
//! lag tracking (G2), presence and typing.
//!
//! Durability: a room made with [`Persistence::Deferred`] sequences a message at once but keeps
//! it invisible (no delivery, not in history or backlogs) until the shell reports it durable with
//! [`Room::handle_durable`]; [`Room::take_to_persist`] hands over what to write. A failed write
//! is rolled back with [`Room::handle_persist_failed`]. With [`Persistence::Immediate`] (the
//! in-memory engine) a message is durable as soon as it is sequenced.
//!
//! Call order: feed inputs with `handle_*`, then call [`Room::poll_delivery`] until it returns
//! `None`, executing each delivery and reporting a full queue with
//! [`Room::handle_delivery_full`] (or a gone subscriber with [`Room::handle_unsubscribe`])
//! before polling again. Deliveries are computed lazily from the subscriber's state at poll
//! time, so a failure reported for one message turns the next delivery to that subscriber into
//! a `Lag` marker instead of a silent gap, even in the middle of a batch.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

use crate::error::RoomError;
use crate::limits::Limits;
use crate::types::{ChatMessage, ClientMsgId, Draft, Lag, RoomEvent, RoomName, Seq, Time, UserName};

/// When a sequenced message counts as durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Persistence {
    /// At once: nothing is written anywhere (the in-memory engine, the simulator).
    Immediate,
    /// When the shell says so with [`Room::handle_durable`], after writing it to a store.
    Deferred,
}

/// A deliberate defect, for proving that checkers catch violations (the simulator's
/// `--inject-bug` and its tests). Never set in production; off by default.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InjectedBug {
    /// The sequencer skips this number (a G1/G2 violation).
    SkipSeq(Seq),
    /// The delivery of this message to the first subscriber is silently dropped (G2).
    DropDelivery(Seq),
}

/// A subscriber of one room, numbered by the room in subscription order (never reused).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubscriberId(pub u64);

/// What a new subscription starts with (G5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    /// The id deliveries to this subscriber carry.
    pub id: SubscriberId,
    /// The room's epoch.
    pub epoch: u64,
    /// `true` if the backlog starts exactly after the requested `after_seq`.
    pub recovered: bool,
    /// The first sequence number the subscriber gets (from the backlog or live).
    pub first_seq: Seq,
    /// Retained messages from `first_seq` up to the room's last sequence number, in order.
    /// Live deliveries continue right after the last of these.
    pub backlog: Vec<Arc<ChatMessage>>,
}

/// The result of an accepted send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sent {
    /// The message's sequence number.
    pub seq: Seq,
    /// `true` if this was a retry of an earlier send with the same client message id (G4):
    /// nothing was appended and `seq` is the original one.
    pub duplicate: bool,
}

/// A page of retained history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryPage {
    /// The room's epoch.
    pub epoch: u64,
    /// Messages after the requested sequence number, in order, at most the page limit.
    pub messages: Vec<Arc<ChatMessage>>,
    /// The oldest retained sequence number (`last_seq + 1` if nothing is retained).
    pub first_retained_seq: Seq,
    /// The room's last sequence number.
    pub last_seq: Seq,
}

/// One event for one subscriber, to be delivered whole: the lag marker (if any) and the event
/// must not be separated, or the subscriber would see a gap without its explanation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The subscriber.
    pub to: SubscriberId,
    /// The span this subscriber missed just before `event`, if it was lagging.
    pub lag: Option<Lag>,
    /// The event.
    pub event: RoomEvent,
}

/// Per-subscriber state the room needs: who it is and whether it is lagging.
#[derive(Clone, Debug)]
struct Subscriber {
    /// Counted in presence while subscribed; `None` for anonymous streams.
    user: Option<UserName>,
    /// `Some(first)` while lagging: it missed every sequence number from `first` up to the
    /// message before the next one it is given.
    lagging_from: Option<Seq>,
    /// Deliveries its queue took (planned and not reported full): the sign that it reads.
    deliveries_taken: u64,
    /// While lagging: when it was last seen taking something, and how many it had taken then.
    /// A stalled subscriber's count does not move (see [`Room::take_stalled`]).
    progress_mark: Option<(Time, u64)>,
}

/// An event waiting to be fanned out.
#[derive(Clone, Debug)]
struct Pending {
    event: RoomEvent,
    /// Only subscribers up to this id get it: later ones subscribed after the event and start
    /// after it (their backlog or live position already accounts for it).
    subscribers_upto: SubscriberId,
    /// The last subscriber served so far, to resume the fan-out at the next one.
    served_upto: Option<SubscriberId>,
}

/// One room's state machine. Deterministic: ordered maps only, time passed in.
#[derive(Debug)]
pub struct Room {
    name: RoomName,
    /// Changes whenever the room's history starts over (a new room instance).
    epoch: u64,
    history_len_max: usize,
    history_page_max: usize,
    message_bytes_max: usize,
    dedupe_window_len: usize,
    subscribers_max: usize,
    idle_ms: u64,
    stall_ms: u64,
    last_seq: Seq,
    /// Retained messages, contiguous, ending at `last_seq`.
    history: VecDeque<Arc<ChatMessage>>,
    /// Recent client message ids and the sequence number each was given (G4).
    dedupe: BTreeMap<(UserName, ClientMsgId), Seq>,
    /// The same keys in insertion order, to evict the oldest when the window is full.
    dedupe_order: VecDeque<(UserName, ClientMsgId)>,
    subscribers: BTreeMap<SubscriberId, Subscriber>,
    next_subscriber_id: u64,
    /// Users present and how many subscriptions each holds (presence changes at 0 <-> 1).
    presence: BTreeMap<UserName, usize>,
    pending: VecDeque<Pending>,
    last_activity: Time,
    /// Set once the room agreed to retire; every later request gets `RoomError::Retired`.
    retired: bool,
    injected_bug: Option<InjectedBug>,
    persistence: Persistence,
    /// The last sequence number known durable: everything visible is at or below it.
    durable_seq: Seq,
    /// Sequenced messages not yet durable, oldest first (also in `history`, but invisible).
    undurable: VecDeque<Arc<ChatMessage>>,
    /// Messages the shell has yet to hand to the store.
    to_persist: Vec<Arc<ChatMessage>>,
}

impl Room {
    /// A new, empty room.
    pub fn new(name: RoomName, epoch: u64, limits: &Limits, now: Time) -> Self {
        Self {
            name,
            epoch,
            history_len_max: limits.history_len_max.max(1),
            history_page_max: limits.history_page_max.max(1),
            message_bytes_max: limits.message_bytes_max,
            dedupe_window_len: limits.dedupe_window_len,
            subscribers_max: limits.room_subscribers_max,
            idle_ms: limits.room_idle_ms,
            stall_ms: limits.subscriber_stall_ms,
            last_seq: 0,
            history: VecDeque::new(),
            dedupe: BTreeMap::new(),
            dedupe_order: VecDeque::new(),
            subscribers: BTreeMap::new(),
            next_subscriber_id: 1,
            presence: BTreeMap::new(),
            pending: VecDeque::new(),
            last_activity: now,
            retired: false,
            injected_bug: None,
            persistence: Persistence::Immediate,
            durable_seq: 0,
            undurable: VecDeque::new(),
            to_persist: Vec::new(),
        }
    }

    /// A room continuing from stored state: its epoch, the last sequence number it gave, and
    /// its retained tail (contiguous, ending at `last_seq`, oldest first). Dedupe is rebuilt
    /// from the tail's client message ids, so a retry after a restart is still recognised (G4).
    pub fn restore(
        name: RoomName,
        epoch: u64,
        limits: &Limits,
        now: Time,
        persistence: Persistence,
        last_seq: Seq,
        tail: Vec<ChatMessage>,
    ) -> Self {
        let mut room = Self::new(name, epoch, limits, now);
        room.persistence = persistence;
        room.last_seq = last_seq;
        room.durable_seq = last_seq;
        let skip = tail.len().saturating_sub(room.history_len_max);
        for message in tail.into_iter().skip(skip) {
            if let Some(id) = &message.client_msg_id {
                room.remember(message.user.clone(), id.clone(), message.seq);
            }
            room.history.push_back(Arc::new(message));
        }
        room.assert_history_contiguous();
        room
    }

    /// Sets when messages count as durable (a new room starts `Immediate`).
    pub fn set_persistence(&mut self, persistence: Persistence) {
        self.persistence = persistence;
    }

    /// Messages sequenced since the last call that the shell must write before reporting them
    /// durable (always empty with `Persistence::Immediate`).
    pub fn take_to_persist(&mut self) -> Vec<Arc<ChatMessage>> {
        std::mem::take(&mut self.to_persist)
    }

    /// Everything up to `upto` is durable: it becomes visible and is delivered.
    pub fn handle_durable(&mut self, upto: Seq) {
        while let Some(message) = self.undurable.front() {
            if message.seq > upto {
                break;
            }
            let message = self.undurable.pop_front().expect("front exists");
            self.durable_seq = message.seq;
            self.queue(RoomEvent::Message(message));
        }
    }

    /// Writing failed: every message not yet durable is dropped as if never sent (its sequence
    /// numbers will be given again). Returns the dropped span, if any.
    pub fn handle_persist_failed(&mut self) -> Option<(Seq, Seq)> {
        let first = self.undurable.front()?.seq;
        let last = self.last_seq;
        while self.history.back().is_some_and(|message| message.seq > self.durable_seq) {
            self.history.pop_back();
        }
        while let Some(key) = self.dedupe_order.back() {
            if self.dedupe.get(key).is_some_and(|&seq| seq > self.durable_seq) {
                self.dedupe.remove(key);
                self.dedupe_order.pop_back();
            } else {
                break;
            }
        }
        self.undurable.clear();
        self.to_persist.clear();
        self.last_seq = self.durable_seq;
        Some((first, last))
    }

    /// The last durable (visible) sequence number.
    pub fn durable_seq(&self) -> Seq {
        self.durable_seq
    }

    /// Makes this room defective on purpose (see [`InjectedBug`]).
    #[doc(hidden)]
    pub fn inject_bug(&mut self, bug: InjectedBug) {
        self.injected_bug = Some(bug);
    }

    /// Adds a subscriber. `after_seq = None` starts live (after the last message);
    /// `Some(k)` resumes after `k` if `k + 1` is still retained (G5).
    pub fn handle_subscribe(
        &mut self,
        user: Option<UserName>,
        after_seq: Option<Seq>,
        now: Time,
    ) -> Result<Subscription, RoomError> {
        self.check_open()?;
        if self.subscribers.len() >= self.subscribers_max {
            return Err(RoomError::RoomFull { subscribers_max: self.subscribers_max });
        }
        self.last_activity = now;
        let first_retained = self.first_retained_seq();
        let (recovered, first_seq) = match after_seq {
            None => (true, self.durable_seq + 1),
            Some(after) if after <= self.durable_seq && after + 1 >= first_retained => (true, after + 1),
            // Too old (trimmed) or from the future (another epoch): start at what we have.
            Some(_) => (false, first_retained),
        };
        let backlog = self.retained_from(first_seq, usize::MAX);
        if let Some(user) = &user {
            let count = self.presence.entry(user.clone()).or_insert(0);
            *count += 1;
            if *count == 1 {
                self.queue(RoomEvent::Presence { room: self.name.clone(), user: user.clone(), present: true });
            }
        }
        let id = SubscriberId(self.next_subscriber_id);
        self.next_subscriber_id += 1;
        self.subscribers.insert(id, Subscriber { user, lagging_from: None, deliveries_taken: 0, progress_mark: None });
        Ok(Subscription { id, epoch: self.epoch, recovered, first_seq, backlog })
    }

    /// Removes a subscriber; returns whether it was subscribed.
    pub fn handle_unsubscribe(&mut self, id: SubscriberId, now: Time) -> bool {
        let Some(subscriber) = self.subscribers.remove(&id) else {
            return false;
        };
        self.last_activity = now;
        if let Some(user) = subscriber.user {
            let count = self.presence.get_mut(&user).map(|count| {
                *count -= 1;
                *count
            });
            if count == Some(0) {
                self.presence.remove(&user);
                self.queue(RoomEvent::Presence { room: self.name.clone(), user, present: false });
            }
        }
        true
    }

    /// Sequences one message (G1), or returns the original sequence number of a retry (G4).
    pub fn handle_send(&mut self, draft: Draft, now: Time) -> Result<Sent, RoomError> {
        self.check_open()?;
        self.check_size(&draft)?;
        self.last_activity = now;
        if let Some(id) = &draft.client_msg_id {
            if let Some(&seq) = self.dedupe.get(&(draft.user.clone(), id.clone())) {
                return Ok(Sent { seq, duplicate: true });
            }
        }
        Ok(Sent { seq: self.append(draft, now), duplicate: false })
    }

    /// Sequences a whole batch as one contiguous run (G6), or nothing if any message is
    /// refused. Returns the first and last sequence numbers (`None` for an empty batch).
    /// Client message ids are not used for dedupe inside a batch: the batch is the unit.
    pub fn handle_send_batch(&mut self, drafts: Vec<Draft>, now: Time) -> Result<Option<(Seq, Seq)>, RoomError> {
        self.check_open()?;
        if drafts.len() > self.history_len_max {
            return Err(RoomError::BatchTooLong { len: drafts.len(), len_max: self.history_len_max });
        }
        for draft in &drafts {
            self.check_size(draft)?;
        }
        self.last_activity = now;
        let mut run = None;
        for mut draft in drafts {
            draft.client_msg_id = None;
            let seq = self.append(draft, now);
            run = Some((run.map_or(seq, |(first, _)| first), seq));
        }
        Ok(run)
    }

    /// Tells the room's subscribers that `user` is typing (ephemeral).
    pub fn handle_typing(&mut self, user: UserName, now: Time) -> Result<(), RoomError> {
        self.check_open()?;
        self.last_activity = now;
        self.queue(RoomEvent::Typing { room: self.name.clone(), user });
        Ok(())
    }

    /// Reports that `delivery` could not be queued because the subscriber's queue was full.
    /// The subscriber now lags from the first sequence number that delivery carried (G2); an
    /// ephemeral event is simply dropped.
    pub fn handle_delivery_full(&mut self, delivery: &Delivery) {
        if let Some(subscriber) = self.subscribers.get_mut(&delivery.to) {
            // It did not take this one after all (counted when planned, in `poll_delivery`).
            subscriber.deliveries_taken = subscriber.deliveries_taken.saturating_sub(1);
        }
        let first_undelivered = match (delivery.lag, &delivery.event) {
            (Some(lag), _) => lag.missed_from,
            // A lone lag marker (see `take_lag_markers`) that did not fit either.
            (None, RoomEvent::Lagged { lag, .. }) => lag.missed_from,
            (None, event) => match event.seq() {
                Some(seq) => seq,
                None => return,
            },
        };
        if let Some(subscriber) = self.subscribers.get_mut(&delivery.to) {
            // A repeated report must not move the start of the lag forward (that would hide
            // messages), so keep the earliest.
            let from = subscriber.lagging_from.map_or(first_undelivered, |from| from.min(first_undelivered));
            subscriber.lagging_from = Some(from);
        }
    }

    /// Retires the room if it has no subscriber and saw no activity for the idle time.
    /// A retired room refuses everything with `RoomError::Retired`.
    pub fn handle_retire_if_idle(&mut self, now: Time) -> bool {
        if self.subscribers.is_empty() && now.millis_since(self.last_activity) >= self.idle_ms {
            self.retired = true;
        }
        self.retired
    }

    /// The next delivery to execute, computed from current subscriber state.
    pub fn poll_delivery(&mut self) -> Option<Delivery> {
        loop {
            let first_subscriber = match self.injected_bug {
                Some(_) => self.subscribers.keys().next().copied(),
                None => None,
            };
            let pending = self.pending.front_mut()?;
            let start = pending.served_upto.map_or(Bound::Unbounded, Bound::Excluded);
            let next = self.subscribers.range_mut((start, Bound::Included(pending.subscribers_upto))).next();
            let Some((&to, subscriber)) = next else {
                self.pending.pop_front();
                continue;
            };
            pending.served_upto = Some(to);
            if first_subscriber == Some(to) && pending.event.seq().map(InjectedBug::DropDelivery) == self.injected_bug {
                continue;
            }
            let lag = match pending.event.seq() {
                Some(seq) => subscriber.lagging_from.take().map(|missed_from| {
                    assert!(missed_from < seq, "a lag must end before the message after it");
                    Lag { missed_from, missed_to: seq - 1 }
                }),
                // Ephemeral events do not end a lag: the lag marker belongs before a message.
                None => None,
            };
            if lag.is_none() && pending.event.seq().is_none() && subscriber.lagging_from.is_some() {
                // Keep a lagging subscriber's queue free for the lag marker.
                continue;
            }
            subscriber.deliveries_taken += 1;
            return Some(Delivery { to, lag, event: pending.event.clone() });
        }
    }

    /// Lone lag markers for every lagging subscriber, once every pending event is fanned out.
    /// Without them a subscriber that overflowed after the room's last message would learn of
    /// its gap only when another message comes, perhaps never: a silent hole at the tail (G2).
    /// The shell calls this some time after a queue was full (when it may have drained) and
    /// reports a marker that still does not fit with [`Room::handle_delivery_full`].
    pub fn take_lag_markers(&mut self) -> Vec<Delivery> {
        if !self.pending.is_empty() {
            return Vec::new();
        }
        let (room, last) = (&self.name, self.durable_seq);
        self.subscribers
            .iter_mut()
            .filter_map(|(&to, subscriber)| {
                let missed_from = subscriber.lagging_from.filter(|&from| from <= last)?;
                subscriber.lagging_from = None;
                subscriber.deliveries_taken += 1;
                let lag = Lag { missed_from, missed_to: last };
                Some(Delivery { to, lag: None, event: RoomEvent::Lagged { room: room.clone(), lag } })
            })
            .collect()
    }

    /// Removes every subscriber that has been lagging for the stall time without taking a
    /// single delivery, and returns each with the span it missed (from where its deliveries
    /// stopped to the room's last message): the shell closes it, giving it that lag marker
    /// and a reason. The shell calls this while any subscriber lags (with the lag-marker
    /// retries); the stall clock of a subscriber starts at the first call that sees it lag.
    pub fn take_stalled(&mut self, now: Time) -> Vec<(SubscriberId, Lag)> {
        let (stall_ms, last) = (self.stall_ms, self.durable_seq);
        let mut stalled = Vec::new();
        for (&id, subscriber) in &mut self.subscribers {
            let Some(missed_from) = subscriber.lagging_from else {
                subscriber.progress_mark = None;
                continue;
            };
            match subscriber.progress_mark {
                Some((since, taken)) if taken == subscriber.deliveries_taken => {
                    if now.millis_since(since) >= stall_ms {
                        stalled.push((id, Lag { missed_from, missed_to: last.max(missed_from) }));
                    }
                }
                _ => subscriber.progress_mark = Some((now, subscriber.deliveries_taken)),
            }
        }
        for &(id, _) in &stalled {
            self.handle_unsubscribe(id, now);
        }
        stalled
    }

    /// A page of history after `after_seq`, at most `limit` messages (0 or more than the page
    /// maximum means the page maximum).
    pub fn history(&self, after_seq: Seq, limit: usize) -> Result<HistoryPage, RoomError> {
        self.check_open()?;
        let limit = if limit == 0 { self.history_page_max } else { limit.min(self.history_page_max) };
        let from = after_seq.saturating_add(1).max(self.first_retained_seq());
        Ok(HistoryPage {
            epoch: self.epoch,
            messages: self.retained_from(from, limit),
            first_retained_seq: self.first_retained_seq(),
            last_seq: self.durable_seq,
        })
    }

    /// The room's name.
    pub fn name(&self) -> &RoomName {
        &self.name
    }

    /// The room's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The last sequence number given (0 before the first message). With deferred
    /// persistence it may not be durable (visible) yet: see [`Room::durable_seq`].
    pub fn last_seq(&self) -> Seq {
        self.last_seq
    }

    /// The oldest retained durable sequence number (`durable_seq + 1` when none is retained).
    pub fn first_retained_seq(&self) -> Seq {
        match self.history.front() {
            Some(message) if message.seq <= self.durable_seq => message.seq,
            _ => self.durable_seq + 1,
        }
    }

    /// How many subscribers the room has.
    pub fn subscriber_count(&self) -> usize {
        self.subscribers.len()
    }

    /// Whether a subscriber is currently lagging.
    pub fn is_lagging(&self, id: SubscriberId) -> bool {
        self.subscribers.get(&id).is_some_and(|subscriber| subscriber.lagging_from.is_some())
    }

    /// Users present, in name order.
    pub fn present_users(&self) -> Vec<UserName> {
        self.presence.keys().cloned().collect()
    }

    /// Whether the room has retired.
    pub fn is_retired(&self) -> bool {
        self.retired
    }

    fn check_open(&self) -> Result<(), RoomError> {
        if self.retired { Err(RoomError::Retired) } else { Ok(()) }
    }

    fn check_size(&self, draft: &Draft) -> Result<(), RoomError> {
        let bytes = draft.body.len();
        if bytes > self.message_bytes_max {
            return Err(RoomError::MessageTooBig { bytes, bytes_max: self.message_bytes_max });
        }
        Ok(())
    }

    fn append(&mut self, draft: Draft, now: Time) -> Seq {
        let mut seq = self.last_seq + 1;
        if self.injected_bug == Some(InjectedBug::SkipSeq(seq)) {
            seq += 1;
            self.history.clear();
        }
        self.last_seq = seq;
        if let Some(id) = &draft.client_msg_id {
            self.remember(draft.user.clone(), id.clone(), seq);
        }
        let message = Arc::new(ChatMessage {
            room: self.name.clone(),
            seq,
            user: draft.user,
            client_msg_id: draft.client_msg_id,
            body: draft.body,
            accepted_at: now,
        });
        self.history.push_back(Arc::clone(&message));
        if self.history.len() > self.history_len_max {
            self.history.pop_front();
        }
        match self.persistence {
            Persistence::Immediate => {
                self.durable_seq = seq;
                self.queue(RoomEvent::Message(message));
            }
            Persistence::Deferred => {
                self.to_persist.push(Arc::clone(&message));
                self.undurable.push_back(message);
            }
        }
        self.assert_history_contiguous();
        seq
    }

    fn remember(&mut self, user: UserName, id: ClientMsgId, seq: Seq) {
        if self.dedupe_window_len == 0 {
            return;
        }
        if self.dedupe_order.len() == self.dedupe_window_len {
            if let Some(oldest) = self.dedupe_order.pop_front() {
                self.dedupe.remove(&oldest);
            }
        }
        self.dedupe_order.push_back((user.clone(), id.clone()));
        self.dedupe.insert((user, id), seq);
        assert_eq!(self.dedupe.len(), self.dedupe_order.len(), "dedupe index and order diverged");
    }

    fn queue(&mut self, event: RoomEvent) {
        let subscribers_upto = SubscriberId(self.next_subscriber_id - 1);
        self.pending.push_back(Pending { event, subscribers_upto, served_upto: None });
    }

    /// Durable retained messages from `from` on, at most `limit`.
    fn retained_from(&self, from: Seq, limit: usize) -> Vec<Arc<ChatMessage>> {
        let first = self.history.front().map_or(self.last_seq + 1, |message| message.seq);
        let skip = usize::try_from(from.saturating_sub(first)).unwrap_or(usize::MAX);
        let durable = self.durable_seq;
        self.history.iter().skip(skip).take(limit).take_while(|m| m.seq <= durable).cloned().collect()
    }

    fn assert_history_contiguous(&self) {
        if let (Some(front), Some(back)) = (self.history.front(), self.history.back()) {
            assert_eq!(back.seq, self.last_seq, "history must end at the last sequence number");
            assert_eq!(back.seq - front.seq + 1, self.history.len() as u64, "history must be contiguous");
        }
        assert!(self.history.len() <= self.history_len_max, "history exceeds its bound");
    }
}
