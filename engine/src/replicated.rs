//! One room's appends to a log that several nodes write (cluster mode), as a state machine.
//!
//! In a cluster every node runs its own [`Room`](crate::room::Room) for a room, and each
//! sequences the messages its own clients send. The room's log (a JetStream subject, or the
//! simulator's model of one) is what decides: an append names the [`Position`] of the last
//! entry its writer knows, and the log admits it only if that is still the last one. So
//! exactly one append wins each position, and a node that lost learns what won and sequences
//! its messages again after it ([`Room::handle_committed`](crate::room::Room::handle_committed)).
//!
//! [`Appender`] keeps one room's side of this on one node: at most one append in flight (a
//! log like JetStream admits one conditional append per subject at a time), everything the
//! room sequenced meanwhile gathered into the next one, an append whose outcome is unknown (a
//! timeout, a leader change) sent again unchanged (its expectation makes that safe: if the
//! first one committed, the second conflicts), and the log's entries (from a conflict's
//! read, or the node's live feed of the log) sorted into this node's own, now durable, and
//! other nodes', which the room applies.
//!
//! Call order, for the shell: hand each [`RoomEffect::Persist`](crate::room::RoomEffect) to
//! [`Appender::handle_persist`]; send what [`Appender::poll_append`] gives; report its
//! outcome with [`Appender::handle_appended`], [`Appender::handle_unknown`] or
//! [`Appender::handle_conflict`] (then read the log after [`Appender::read_after`] and hand
//! the entries to [`Appender::handle_entries`], as the live feed's entries are); apply each
//! [`Step`] to the room in order; then poll the room's effects again.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::types::{ChatMessage, Seq};

/// Where an entry sits in a room's log. Positions grow with every entry but need not be
/// contiguous for one room (JetStream numbers entries across all the subjects of a stream);
/// `Position(0)` means "before the first entry".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position(pub u64);

/// Who wrote an entry: the node (an id unique to the node's run, so a restarted node never
/// takes an earlier run's entries for its own) and the node's number for the append.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Origin {
    /// The writing node's run.
    pub node: u64,
    /// The append, numbered by that node from 1.
    pub append: u64,
}

/// One entry of a room's log: a message, where it sits, and who appended it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    /// Its position.
    pub position: Position,
    /// Who appended it (every message of one append has the same origin).
    pub origin: Origin,
    /// The message, with the room's sequence number the writer gave it.
    pub message: Arc<ChatMessage>,
}

/// An append to send: the messages go to the log as one unit (one atomic batch for several),
/// admitted only if `expected_last` is still the room's last position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Append {
    /// Marks every entry of this append.
    pub origin: Origin,
    /// The position the log's last entry for the room must have.
    pub expected_last: Position,
    /// The messages, in sequence order, continuing the room's durable ones.
    pub messages: Vec<Arc<ChatMessage>>,
}

/// What the shell applies to its room, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// This node's messages up to this sequence number are committed:
    /// [`Room::handle_durable`](crate::room::Room::handle_durable).
    Durable(Seq),
    /// Other nodes committed these, in order:
    /// [`Room::handle_committed`](crate::room::Room::handle_committed), which sequences this
    /// node's undurable messages again after them.
    Committed(Vec<Arc<ChatMessage>>),
}

/// The append in flight.
#[derive(Debug)]
struct InFlight {
    append: Append,
    state: Flight,
    /// An attempt of it had an unknown outcome: it may be in the log, so a later refusal of
    /// another attempt does not prove it was never committed.
    maybe_committed: bool,
}

/// Where the append in flight stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flight {
    /// Sent; its outcome is awaited.
    Sent,
    /// Its outcome is unknown: give it to the shell again with the next
    /// [`Appender::poll_append`].
    Due,
    /// The log refused it: waiting for the log's entries after [`Appender::read_after`].
    Conflicted,
}

/// One room's appends on one node (see the module).
#[derive(Debug)]
pub struct Appender {
    node: u64,
    /// The number of this node's last append.
    appends: u64,
    /// The room's last entry as this node knows it, and its sequence number.
    last_position: Position,
    last_seq: Seq,
    in_flight: Option<InFlight>,
    /// Sequenced while an append was in flight, one unit per `Persist` effect (a send, or a
    /// whole upload, never split): the next appends.
    pending: VecDeque<Vec<Arc<ChatMessage>>>,
    /// The last entries handed in skipped some: the shell reads the log again.
    behind: bool,
    /// The furthest position of any entry handed in, applied or not: where the log is known
    /// to reach. A feed entry that came while a read was on its way, beyond what that read
    /// found, is not applied (it does not continue the room) but is not forgotten either.
    heard: Position,
    /// Most messages in one append (the log's batch limit).
    append_len_max: usize,
    /// A log only this node writes: appends are sent as soon as there is something to send,
    /// without waiting for the one before (see [`Appender::pipelined`]).
    pipelined: bool,
    /// Pipelined appends not yet answered, oldest first, with their last sequence numbers.
    unanswered: VecDeque<(Origin, Seq)>,
}

impl Appender {
    /// The appender of node run `node` for a room whose log ends at `last_position`, the entry
    /// of sequence number `last_seq` (both 0 for an empty log).
    pub fn new(node: u64, last_position: Position, last_seq: Seq) -> Self {
        Self {
            node,
            appends: 0,
            last_position,
            last_seq,
            in_flight: None,
            pending: VecDeque::new(),
            behind: false,
            heard: last_position,
            append_len_max: usize::MAX,
            pipelined: false,
            unanswered: VecDeque::new(),
        }
    }

    /// For a log only this node writes (the local store): no other writer can take a
    /// position, so appends are sent as soon as there is something to send, without waiting
    /// for the one before (the log commits them in order, several in one group commit). Such
    /// a log answers only [`Appender::handle_appended`] or [`Appender::handle_failed`].
    pub fn pipelined(mut self) -> Self {
        self.pipelined = true;
        self
    }

    /// At most `len_max` (at least 1) messages per append: a log that takes a bounded batch
    /// (JetStream: 1,000) gets what is pending in several appends, in order. A unit (one
    /// send, one upload) is never split, so an upload stays all or nothing (G6): an engine in
    /// cluster mode holds uploads to the log's limit, and a unit above it (the messages a
    /// rebase sequences again at once) goes as one append, which such a log refuses whole.
    pub fn with_append_len_max(mut self, len_max: usize) -> Self {
        self.append_len_max = len_max.max(1);
        self
    }

    /// The room sequenced these messages (its `Persist` effect).
    pub fn handle_persist(&mut self, messages: Vec<Arc<ChatMessage>>) {
        if !messages.is_empty() {
            self.pending.push_back(messages);
        }
    }

    /// The next append to send, if one is due: the one in flight again after an unknown
    /// outcome, else everything pending once nothing is in flight.
    pub fn poll_append(&mut self) -> Option<Append> {
        if self.pipelined {
            let append = self.next_append()?;
            let last = append.messages.last().map_or(self.last_seq, |message| message.seq);
            self.unanswered.push_back((append.origin, last));
            return Some(append);
        }
        if let Some(in_flight) = &mut self.in_flight {
            if in_flight.state != Flight::Due {
                return None;
            }
            in_flight.state = Flight::Sent;
            return Some(in_flight.append.clone());
        }
        let append = self.next_append()?;
        self.in_flight = Some(InFlight { append: append.clone(), state: Flight::Sent, maybe_committed: false });
        Some(append)
    }

    /// A new append of what is pending (up to the length limit), `None` if nothing is.
    fn next_append(&mut self) -> Option<Append> {
        if self.pending.is_empty() {
            return None;
        }
        self.appends += 1;
        let mut messages = self.pending.pop_front().unwrap_or_default();
        while let Some(unit) = self.pending.front() {
            if messages.len() + unit.len() > self.append_len_max {
                break;
            }
            messages.extend(self.pending.pop_front().unwrap_or_default());
        }
        Some(Append {
            origin: Origin { node: self.node, append: self.appends },
            expected_last: self.last_position,
            messages,
        })
    }

    /// The log admitted the append `origin`; its last entry is at `last`. Nothing for an
    /// answer to an append no longer in flight (its entries came through
    /// [`Appender::handle_entries`] first).
    pub fn handle_appended(&mut self, origin: Origin, last: Position) -> Option<Step> {
        if self.pipelined {
            let index = self.unanswered.iter().position(|(unanswered, _)| *unanswered == origin)?;
            let (_, seq) = self.unanswered.remove(index)?;
            self.last_position = self.last_position.max(last);
            self.last_seq = self.last_seq.max(seq);
            return Some(Step::Durable(seq));
        }
        let in_flight = self.in_flight.take_if(|in_flight| in_flight.append.origin == origin)?;
        let seq = in_flight.append.messages.last().map_or(self.last_seq, |message| message.seq);
        self.last_position = self.last_position.max(last);
        self.last_seq = seq;
        Some(Step::Durable(seq))
    }

    /// The outcome of the append `origin` is unknown (a timeout, a lost answer): it is sent
    /// again unchanged, which commits it at most once.
    pub fn handle_unknown(&mut self, origin: Origin) {
        if let Some(in_flight) = &mut self.in_flight
            && in_flight.append.origin == origin
        {
            in_flight.maybe_committed = true;
        }
        self.set_state(origin, Flight::Due);
    }

    /// The log refused the append `origin`: its expectation is stale. The shell reads the
    /// log's entries after [`Appender::read_after`] and hands them to
    /// [`Appender::handle_entries`]; the append is not sent again meanwhile.
    pub fn handle_conflict(&mut self, origin: Origin) {
        self.set_state(origin, Flight::Conflicted);
    }

    /// The log refused the append `origin` for good, committing nothing of it (a failing
    /// disk, no quorum): the room rolls back everything it has not seen committed
    /// ([`Room::handle_persist_failed`](crate::room::Room::handle_persist_failed)), so nothing
    /// is pending any more. Returns whether to roll back: `false` for a stale answer, and for
    /// an append an earlier attempt of which had an unknown outcome (it may be in the log; it
    /// is sent again until the log says which, and the shell tries again after a pause).
    pub fn handle_failed(&mut self, origin: Origin) -> bool {
        if self.pipelined {
            if !self.unanswered.iter().any(|(unanswered, _)| *unanswered == origin) {
                return false;
            }
            self.unanswered.clear();
            self.pending.clear();
            return true;
        }
        match &mut self.in_flight {
            Some(in_flight) if in_flight.append.origin == origin && in_flight.maybe_committed => {
                in_flight.state = Flight::Due;
                false
            }
            Some(in_flight) if in_flight.append.origin == origin => {
                self.in_flight = None;
                self.pending.clear();
                true
            }
            _ => false,
        }
    }

    /// Whether the append in flight was refused and the log's entries after
    /// [`Appender::read_after`] are still awaited: a shell whose read found nothing new yet
    /// (a lagging replica) reads again.
    pub fn is_conflicted(&self) -> bool {
        self.in_flight.as_ref().is_some_and(|in_flight| in_flight.state == Flight::Conflicted)
    }

    fn set_state(&mut self, origin: Origin, state: Flight) {
        if let Some(in_flight) = &mut self.in_flight
            && in_flight.append.origin == origin
        {
            in_flight.state = state;
        }
    }

    /// Where the shell reads the log from: after the last entry this node knows.
    pub fn read_after(&self) -> Position {
        self.last_position
    }

    /// Whether the last entries handed in did not continue the room (some were missed): the
    /// shell reads the log after [`Appender::read_after`].
    pub fn is_behind(&self) -> bool {
        self.behind
    }

    /// Whether entries were handed in that the room has not applied yet (they came beyond a
    /// gap): the log reaches further than [`Appender::read_after`], so the shell reads it
    /// again even if the last read continued the room. Without this, a feed entry that
    /// overtook a read would wait for the room's next entry, which may never come.
    pub fn has_unapplied(&self) -> bool {
        self.heard > self.last_position
    }

    /// Whether an append is in flight or messages wait for one.
    pub fn is_busy(&self) -> bool {
        self.in_flight.is_some() || !self.pending.is_empty() || !self.unanswered.is_empty()
    }

    /// Entries of the room's log in log order (after a conflict, or from the live feed);
    /// entries this node knows already are skipped. This node's append in flight, found in
    /// the log, is committed ([`Step::Durable`]); other nodes' entries are
    /// [`Step::Committed`], and then nothing this node sequenced and has not seen committed
    /// can be: the room sequences it again, and it comes back through
    /// [`Appender::handle_persist`]. An entry that does not continue the room's sequence
    /// stops the reading there (the shell reads again from [`Appender::read_after`]).
    pub fn handle_entries(&mut self, entries: impl IntoIterator<Item = LogEntry>) -> Vec<Step> {
        let mut steps = Vec::new();
        self.behind = false;
        for entry in entries {
            self.heard = self.heard.max(entry.position);
            if self.behind || entry.position <= self.last_position {
                continue;
            }
            if entry.message.seq != self.last_seq + 1 {
                // Entries in between were missed (the feed started after them, or skipped
                // some): the shell reads them from the log. The rest of these entries are
                // only heard of (they come after the gap).
                self.behind = true;
                continue;
            }
            self.last_position = entry.position;
            self.last_seq = entry.message.seq;
            let own = self.in_flight.as_ref().is_some_and(|in_flight| in_flight.append.origin == entry.origin);
            if own {
                let committed = self.in_flight.as_ref().and_then(|in_flight| in_flight.append.messages.last());
                if committed.is_some_and(|last| last.seq == entry.message.seq) {
                    self.in_flight = None;
                }
                match steps.last_mut() {
                    Some(Step::Durable(upto)) => *upto = entry.message.seq,
                    _ => steps.push(Step::Durable(entry.message.seq)),
                }
                continue;
            }
            // Another node won this position: whatever this node has not seen committed will
            // be sequenced again by the room after it.
            self.in_flight = None;
            self.pending.clear();
            match steps.last_mut() {
                Some(Step::Committed(messages)) => messages.push(entry.message),
                _ => steps.push(Step::Committed(vec![entry.message])),
            }
        }
        steps
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{RoomName, Time, UserName};

    fn message(seq: Seq) -> Arc<ChatMessage> {
        Arc::new(ChatMessage {
            room: RoomName::new("lobby").expect("room"),
            seq,
            user: UserName::new("ann").expect("user"),
            client_msg_id: None,
            body: Arc::from("hi"),
            accepted_at: Time::from_millis(0),
        })
    }

    #[test]
    fn a_pipelined_appender_sends_without_waiting_and_answers_in_order() {
        let mut appender = Appender::new(0, Position(0), 0).pipelined();
        appender.handle_persist(vec![message(1)]);
        let first = appender.poll_append().expect("sent at once");
        appender.handle_persist(vec![message(2), message(3)]);
        let second = appender.poll_append().expect("sent before the first is answered");
        assert_eq!(second.messages.len(), 2);
        assert_eq!(appender.handle_appended(first.origin, Position(1)), Some(Step::Durable(1)));
        assert!(appender.is_busy(), "the second is unanswered");
        assert_eq!(appender.handle_appended(second.origin, Position(3)), Some(Step::Durable(3)));
        assert!(!appender.is_busy());
    }

    #[test]
    fn a_failed_pipelined_append_drops_everything_after_it_and_later_answers_are_stale() {
        let mut appender = Appender::new(0, Position(0), 0).pipelined();
        appender.handle_persist(vec![message(1)]);
        let first = appender.poll_append().expect("sent");
        appender.handle_persist(vec![message(2)]);
        let second = appender.poll_append().expect("sent");
        assert!(appender.handle_failed(first.origin), "the room rolls back");
        assert!(!appender.handle_failed(second.origin), "already rolled back");
        assert_eq!(appender.handle_appended(second.origin, Position(2)), None);
        assert!(!appender.is_busy());
    }

    #[test]
    fn a_conditional_appender_waits_for_each_answer_and_caps_its_appends() {
        let mut appender = Appender::new(1, Position(0), 0).with_append_len_max(2);
        appender.handle_persist(vec![message(1)]);
        let first = appender.poll_append().expect("sent");
        appender.handle_persist(vec![message(2), message(3)]);
        assert_eq!(appender.handle_appended(first.origin, Position(3)), Some(Step::Durable(1)));
        appender.handle_persist(vec![message(4)]);
        let upload = appender.poll_append().expect("sent");
        assert_eq!(upload.messages.len(), 2, "a unit (an upload) is never split, and the cap holds");
        assert_eq!(appender.handle_appended(upload.origin, Position(5)), Some(Step::Durable(3)));
        appender.handle_persist(vec![message(5), message(6), message(7)]);
        let first = appender.poll_append().expect("sent");
        assert_eq!(first.messages.len(), 1, "message 4 alone: the next unit would pass the cap");
        assert_eq!(appender.poll_append(), None, "one in flight");
        assert_eq!(appender.handle_appended(first.origin, Position(7)), Some(Step::Durable(4)));
        let second = appender.poll_append().expect("the rest");
        assert_eq!(second.expected_last, Position(7), "expects the first's last position");
        assert_eq!(second.messages.len(), 3, "a unit above the cap goes whole");
    }

    #[test]
    fn a_refusal_after_an_unknown_outcome_does_not_roll_back_what_may_be_committed() {
        let mut appender = Appender::new(1, Position(0), 0);
        appender.handle_persist(vec![message(1)]);
        let append = appender.poll_append().expect("sent");
        appender.handle_unknown(append.origin);
        assert_eq!(appender.poll_append(), Some(append.clone()), "sent again unchanged");
        assert!(!appender.handle_failed(append.origin), "the first attempt may be in the log");
        assert_eq!(appender.poll_append(), Some(append.clone()), "so it is sent again");
        assert_eq!(appender.handle_appended(append.origin, Position(1)), Some(Step::Durable(1)));
    }

    fn entry(position: u64, seq: Seq) -> LogEntry {
        LogEntry { position: Position(position), origin: Origin { node: 9, append: seq }, message: message(seq) }
    }

    #[test]
    fn a_feed_entry_that_overtakes_a_read_is_remembered_until_a_read_reaches_it() {
        let mut appender = Appender::new(1, Position(0), 0);
        // A read is on its way; the feed brings entry 3 first, which does not continue the room.
        assert!(appender.handle_entries([entry(3, 3)]).is_empty());
        assert!(appender.is_behind() && appender.has_unapplied());
        // The read started before 3 was committed: it finds 1 and 2, which continue the room.
        let steps = appender.handle_entries([entry(1, 1), entry(2, 2)]);
        assert_eq!(steps, vec![Step::Committed(vec![message(1), message(2)])]);
        assert!(!appender.is_behind(), "what it read continues the room");
        assert!(appender.has_unapplied(), "but the log is known to reach position 3: read again");
        appender.handle_entries([entry(3, 3)]);
        assert!(!appender.has_unapplied());
        assert_eq!(appender.read_after(), Position(3));
    }
}
