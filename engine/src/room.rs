//! One chat room: sequencing (G1), retained history and resume (G5), dedupe (G4), presence and
//! typing. What the room publishes goes once into its [`Ring`](crate::ring::Ring), where every
//! subscriber reads it with its own cursor (G2 lives there).
//!
//! Durability: a room made with [`Persistence::Deferred`] sequences a message at once but keeps
//! it invisible (no delivery, not in history or backlogs) until the shell reports it durable with
//! [`Room::handle_durable`]; a [`RoomEffect::Persist`] hands over what to write. A failed write
//! is rolled back with [`Room::handle_persist_failed`]. With [`Persistence::Immediate`] (the
//! in-memory engine) a message is durable as soon as it is sequenced.
//!
//! Call order: feed inputs with `handle_*`, then call [`Room::poll_effect`] until it returns
//! `None`, executing each effect: [`RoomEffect::Publish`] appends the event to the room's ring
//! (once, for every subscriber), [`RoomEffect::Persist`] hands messages to the store. A new
//! subscriber's ring cursor is added after the effects of its `handle_subscribe` are executed,
//! so it reads exactly what is published after its backlog.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use crate::error::RoomError;
use crate::limits::{Limits, message_bytes};
use crate::types::{ChatMessage, ClientMsgId, Draft, RoomEvent, RoomName, Seq, Time, UserName};

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
    /// The delivery of this message to the first subscriber is silently dropped (G2); the
    /// room's [`Ring`](crate::ring::Ring) plays this one.
    DropDelivery(Seq),
    /// A room that lost positions to another node sequences its messages again in reverse
    /// order (G3), in cluster mode ([`Room::handle_committed`]).
    ReorderRebase,
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

/// What the shell must do for a room, in order (see the module's call order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RoomEffect {
    /// Append this event to the room's ring: every current subscriber reads it.
    Publish(RoomEvent),
    /// Make these messages durable, then report with [`Room::handle_durable`] (or
    /// [`Room::handle_persist_failed`]). Only with [`Persistence::Deferred`].
    Persist(Vec<Arc<ChatMessage>>),
}

/// One room's state machine. Deterministic: ordered maps only, time passed in.
#[derive(Debug)]
pub struct Room {
    name: RoomName,
    /// Changes whenever the room's history starts over (a new room instance).
    epoch: u64,
    history_len_max: usize,
    /// See [`Limits::history_bytes_max`].
    history_bytes_max: usize,
    /// See [`Limits::history_age_max_ms`].
    history_age_max_ms: Option<u64>,
    history_page_max: usize,
    /// See [`Limits::history_page_bytes_max`].
    history_page_bytes_max: usize,
    message_bytes_max: usize,
    dedupe_window_len: usize,
    subscribers_max: usize,
    idle_ms: u64,
    /// The idle time of a room that never got a message (never above `idle_ms`).
    empty_idle_ms: u64,
    last_seq: Seq,
    /// Retained messages, contiguous, ending at `last_seq`.
    history: VecDeque<Arc<ChatMessage>>,
    /// What `history` counts for in bytes ([`message_bytes`]), kept up to date with it.
    history_bytes: usize,
    /// Recent client message ids and the sequence number each was given (G4).
    dedupe: BTreeMap<(UserName, ClientMsgId), Seq>,
    /// The same keys in insertion order, to evict the oldest when the window is full.
    dedupe_order: VecDeque<(UserName, ClientMsgId)>,
    /// Every subscriber and the user it counts in presence for (`None`: anonymous stream).
    subscribers: BTreeMap<SubscriberId, Option<UserName>>,
    next_subscriber_id: u64,
    /// Users present on this node and how many subscriptions each holds (local presence
    /// changes at 0 <-> 1).
    presence: BTreeMap<UserName, usize>,
    /// Users present on other nodes (cluster mode, from the node's presence roster). What the
    /// room shows is the union with `presence`: a user on two nodes joins once, leaves once.
    remote: BTreeSet<UserName>,
    /// The local members changed since [`Room::poll_local_members`] last said so.
    local_members_changed: bool,
    /// Events to publish, oldest first.
    to_publish: VecDeque<RoomEvent>,
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
            history_bytes_max: limits.history_bytes_max,
            history_age_max_ms: limits.history_age_max_ms,
            history_page_max: limits.history_page_max.max(1),
            history_page_bytes_max: limits.history_page_bytes_max,
            message_bytes_max: limits.message_bytes_max,
            dedupe_window_len: limits.dedupe_window_len,
            subscribers_max: limits.room_subscribers_max,
            idle_ms: limits.room_idle_ms,
            empty_idle_ms: limits.empty_room_idle_ms.min(limits.room_idle_ms),
            last_seq: 0,
            history: VecDeque::new(),
            history_bytes: 0,
            dedupe: BTreeMap::new(),
            dedupe_order: VecDeque::new(),
            subscribers: BTreeMap::new(),
            next_subscriber_id: 1,
            presence: BTreeMap::new(),
            remote: BTreeSet::new(),
            local_members_changed: false,
            to_publish: VecDeque::new(),
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
            room.retain(Arc::new(message));
        }
        room.handle_expire(now);
        room.assert_history_contiguous();
        room
    }

    /// Drops the retained messages older than [`Limits::history_age_max_ms`] at `now`, oldest
    /// first, keeping the room's last message (and anything not yet durable). The shell calls
    /// it before a read, so a read never shows a message past the age limit; appends expire
    /// on their own.
    pub fn handle_expire(&mut self, now: Time) {
        let Some(age_max_ms) = self.history_age_max_ms else { return };
        while self.history.len() > 1
            && let Some(front) = self.history.front()
            && front.seq < self.durable_seq
            && now.millis_since(front.accepted_at) > age_max_ms
        {
            if let Some(dropped) = self.history.pop_front() {
                self.history_bytes -= message_bytes(&dropped);
            }
        }
    }

    /// Sets when messages count as durable (a new room starts `Immediate`).
    pub fn set_persistence(&mut self, persistence: Persistence) {
        self.persistence = persistence;
    }

    /// The next effect for the shell, `None` when there is nothing left to do.
    pub fn poll_effect(&mut self) -> Option<RoomEffect> {
        if !self.to_persist.is_empty() {
            return Some(RoomEffect::Persist(std::mem::take(&mut self.to_persist)));
        }
        self.to_publish.pop_front().map(RoomEffect::Publish)
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
        self.roll_back_undurable();
        Some((first, last))
    }

    /// Messages another writer of the room's log committed (cluster mode: several nodes append
    /// to one log, and the log admits one message per position). They continue the room's
    /// durable messages, contiguous from `durable_seq + 1`, and become durable and visible at
    /// once.
    ///
    /// Messages this room sequenced but that are not yet durable lost their numbers to these:
    /// they are sequenced again after them, in their original order (G3; a batch stays one
    /// contiguous run, G6), and handed out to persist again. One whose client message id is
    /// among the committed messages (a retry that reached another node) is not sequenced
    /// again: it is a duplicate of that one (G4). Returns, for each message sequenced again,
    /// its old sequence number and what became of it, so the shell can answer its sender.
    ///
    /// A message that does not continue the room (a number already durable, or a gap) is
    /// ignored with every one after it: the shell reads the log again from
    /// [`Room::durable_seq`].
    pub fn handle_committed(&mut self, committed: Vec<Arc<ChatMessage>>, now: Time) -> Vec<(Seq, Sent)> {
        let rebased = self.roll_back_undurable();
        for message in committed {
            if message.seq != self.last_seq + 1 || message.room != self.name {
                break;
            }
            self.last_activity = now;
            self.last_seq = message.seq;
            if let Some(id) = &message.client_msg_id {
                self.remember(message.user.clone(), id.clone(), message.seq);
            }
            self.retain(Arc::clone(&message));
            self.durable_seq = message.seq;
            self.queue(RoomEvent::Message(message));
        }
        self.assert_history_contiguous();
        let mut moved = Vec::with_capacity(rebased.len());
        let mut rebased = rebased;
        if self.injected_bug == Some(InjectedBug::ReorderRebase) {
            rebased.reverse();
        }
        for message in rebased {
            let known =
                message.client_msg_id.as_ref().and_then(|id| self.dedupe.get(&(message.user.clone(), id.clone())));
            let sent = match known {
                Some(&seq) => Sent { seq, duplicate: true },
                None => {
                    let draft = Draft {
                        user: message.user.clone(),
                        client_msg_id: message.client_msg_id.clone(),
                        body: Arc::clone(&message.body),
                    };
                    Sent { seq: self.append(draft, now), duplicate: false }
                }
            };
            moved.push((message.seq, sent));
        }
        moved
    }

    /// Drops every message not yet durable from the history, the dedupe window and the queue
    /// to persist, and gives them back, oldest first.
    fn roll_back_undurable(&mut self) -> Vec<Arc<ChatMessage>> {
        while self.history.back().is_some_and(|message| message.seq > self.durable_seq) {
            if let Some(dropped) = self.history.pop_back() {
                self.history_bytes -= message_bytes(&dropped);
            }
        }
        while let Some(key) = self.dedupe_order.back() {
            if self.dedupe.get(key).is_some_and(|&seq| seq > self.durable_seq) {
                self.dedupe.remove(key);
                self.dedupe_order.pop_back();
            } else {
                break;
            }
        }
        self.to_persist.clear();
        self.last_seq = self.durable_seq;
        self.undurable.drain(..).collect()
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

    /// The defect this room was given, if any (its shell passes it on to the ring).
    #[doc(hidden)]
    pub fn injected_bug(&self) -> Option<InjectedBug> {
        self.injected_bug
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
                self.local_members_changed = true;
                if !self.remote.contains(user) {
                    self.queue(RoomEvent::Presence { room: self.name.clone(), user: user.clone(), present: true });
                }
            }
        }
        let id = SubscriberId(self.next_subscriber_id);
        self.next_subscriber_id += 1;
        self.subscribers.insert(id, user);
        Ok(Subscription { id, epoch: self.epoch, recovered, first_seq, backlog })
    }

    /// Removes a subscriber; returns whether it was subscribed.
    pub fn handle_unsubscribe(&mut self, id: SubscriberId, now: Time) -> bool {
        let Some(user) = self.subscribers.remove(&id) else {
            return false;
        };
        self.last_activity = now;
        if let Some(user) = user {
            let count = self.presence.get_mut(&user).map(|count| {
                *count -= 1;
                *count
            });
            if count == Some(0) {
                self.presence.remove(&user);
                self.local_members_changed = true;
                if !self.remote.contains(&user) {
                    self.queue(RoomEvent::Presence { room: self.name.clone(), user, present: false });
                }
            }
        }
        true
    }

    /// Sequences one message (G1), or returns the original sequence number of a retry (G4).
    pub fn handle_send(&mut self, draft: Draft, now: Time) -> Result<Sent, RoomError> {
        self.check_open()?;
        self.check_size(&draft)?;
        self.last_activity = now;
        if let Some(id) = &draft.client_msg_id
            && let Some(&seq) = self.dedupe.get(&(draft.user.clone(), id.clone()))
        {
            return Ok(Sent { seq, duplicate: true });
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

    /// The users other nodes have in this room are now `users` (all of them; cluster mode).
    /// Only a user who appears or disappears from the union with the local members makes a
    /// presence event. Remote members do not keep the room from retiring: they are not its
    /// subscribers, and a room that starts again learns them again.
    pub fn handle_remote_members(&mut self, users: BTreeSet<UserName>) {
        let old = std::mem::replace(&mut self.remote, users);
        let left: Vec<UserName> = old.difference(&self.remote).cloned().collect();
        let joined: Vec<UserName> = self.remote.difference(&old).cloned().collect();
        let changes = left.into_iter().map(|user| (user, false)).chain(joined.into_iter().map(|user| (user, true)));
        for (user, present) in changes {
            if !self.presence.contains_key(&user) {
                self.queue(RoomEvent::Presence { room: self.name.clone(), user, present });
            }
        }
    }

    /// Users of another node typing here (cluster mode): like [`Room::handle_typing`], but
    /// not activity of the room's own (it does not keep an idle room alive).
    pub fn handle_remote_typing(&mut self, user: UserName) {
        if !self.retired {
            self.queue(RoomEvent::Typing { room: self.name.clone(), user });
        }
    }

    /// The room's local members, in name order, if they changed since the last call: the shell
    /// hands them to the node's presence roster, which announces them to the other nodes.
    pub fn poll_local_members(&mut self) -> Option<BTreeSet<UserName>> {
        if !std::mem::take(&mut self.local_members_changed) {
            return None;
        }
        Some(self.presence.keys().cloned().collect())
    }

    /// Whether any user is present through a subscription on this node.
    pub fn has_local_members(&self) -> bool {
        !self.presence.is_empty()
    }

    /// Retires the room if it has no subscriber and saw no activity for the idle time (the
    /// shorter one if it never got a message, so it has no history to lose).
    /// A retired room refuses everything with `RoomError::Retired`.
    pub fn handle_retire_if_idle(&mut self, now: Time) -> bool {
        let idle_ms = if self.last_seq == 0 { self.empty_idle_ms } else { self.idle_ms };
        if self.subscribers.is_empty() && now.millis_since(self.last_activity) >= idle_ms {
            self.retired = true;
        }
        self.retired
    }

    /// A page of history after `after_seq`, at most `limit` messages (0 or more than the page
    /// maximum means the page maximum).
    pub fn history(&self, after_seq: Seq, limit: usize) -> Result<HistoryPage, RoomError> {
        self.check_open()?;
        let limit = self.history_page_len(limit);
        let from = after_seq.saturating_add(1).max(self.first_retained_seq());
        Ok(HistoryPage {
            epoch: self.epoch,
            messages: self.page_from(from, limit),
            first_retained_seq: self.first_retained_seq(),
            last_seq: self.durable_seq,
        })
    }

    /// How many messages a [`Room::history`] page asked for with `limit` holds at most: the
    /// page maximum for 0 or more.
    pub fn history_page_len(&self, limit: usize) -> usize {
        if limit == 0 { self.history_page_max } else { limit.min(self.history_page_max) }
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

    /// Users present, on this node or (cluster mode) another, in name order.
    pub fn present_users(&self) -> Vec<UserName> {
        let local: BTreeSet<&UserName> = self.presence.keys().collect();
        local.into_iter().chain(&self.remote).collect::<BTreeSet<_>>().into_iter().cloned().collect()
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
            self.history_bytes = 0;
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
        self.retain(Arc::clone(&message));
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
        if self.dedupe_order.len() == self.dedupe_window_len
            && let Some(oldest) = self.dedupe_order.pop_front()
        {
            self.dedupe.remove(&oldest);
        }
        self.dedupe_order.push_back((user.clone(), id.clone()));
        self.dedupe.insert((user, id), seq);
        assert_eq!(self.dedupe.len(), self.dedupe_order.len(), "dedupe index and order diverged");
    }

    fn queue(&mut self, event: RoomEvent) {
        self.to_publish.push_back(event);
    }

    /// Durable retained messages from `from` on, at most `limit`.
    fn retained_from(&self, from: Seq, limit: usize) -> Vec<Arc<ChatMessage>> {
        let first = self.history.front().map_or(self.last_seq + 1, |message| message.seq);
        let skip = usize::try_from(from.saturating_sub(first)).unwrap_or(usize::MAX);
        let durable = self.durable_seq;
        self.history.iter().skip(skip).take(limit).take_while(|m| m.seq <= durable).cloned().collect()
    }

    /// Appends `message` to the retained history and drops the oldest beyond the length and
    /// byte budgets (always keeping the newest).
    fn retain(&mut self, message: Arc<ChatMessage>) {
        self.history_bytes += message_bytes(&message);
        self.history.push_back(message);
        while self.history.len() > self.history_len_max
            || (self.history_bytes > self.history_bytes_max && self.history.len() > 1)
        {
            let Some(dropped) = self.history.pop_front() else { break };
            self.history_bytes -= message_bytes(&dropped);
        }
    }

    /// A `History` page: [`Room::retained_from`], cut at the page byte budget (never empty when
    /// there is something to give, so paging always moves on).
    fn page_from(&self, from: Seq, limit: usize) -> Vec<Arc<ChatMessage>> {
        let mut page = self.retained_from(from, limit);
        let mut bytes = 0;
        let fits = page
            .iter()
            .take_while(|message| {
                bytes += message_bytes(message);
                bytes <= self.history_page_bytes_max
            })
            .count();
        page.truncate(fits.max(1));
        page
    }

    fn assert_history_contiguous(&self) {
        if let (Some(front), Some(back)) = (self.history.front(), self.history.back()) {
            assert_eq!(back.seq, self.last_seq, "history must end at the last sequence number");
            assert_eq!(back.seq - front.seq + 1, self.history.len() as u64, "history must be contiguous");
        }
        assert!(self.history.len() <= self.history_len_max, "history exceeds its bound");
        debug_assert_eq!(self.history_bytes, self.history.iter().map(|m| message_bytes(m)).sum::<usize>());
    }
}
