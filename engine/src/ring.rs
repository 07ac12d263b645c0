//! A room's delivery ring: every event the room publishes is appended once, shared (`Arc`), and
//! read by every reader through its own cursor. There is no per-reader queue: a reader that
//! falls more than the ring's capacity behind finds out from its cursor, and gets the exact
//! span of messages it missed as a [`Lag`] (G2), then carries on from the oldest retained event.
//! A slow reader never slows the room or any other reader; it costs one small cursor.
//!
//! Sans-IO like the rest of the engine: the shell keeps the ring behind its own lock, wakes its
//! parked readers after appending, and arms one timer from [`Ring::poll_timeout`] for the stall
//! sweep ([`Ring::handle_timeout`]), which closes readers that lag and take nothing for the
//! stall time.
//!
//! Call order: the room's shell [`Ring::push`]es what the room publishes, adds a reader with
//! [`Ring::add_reader`] right after the room accepted its subscription (so it starts at the
//! head, after the backlog the subscription carried), and collects readers that left by
//! themselves with [`Ring::take_departed`]. A reader calls [`Ring::read`] until it returns
//! [`ReadStatus::Empty`] (then parks) or [`ReadStatus::Ended`].

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, OnceLock};

use crate::room::{InjectedBug, SubscriberId};
use crate::types::{Lag, RoomEvent, Seq, Time};

/// How often, at most, the stall sweep runs while a reader lags: often enough that a stalled
/// reader is closed within a quarter of the stall time of its deadline, rarely enough that a
/// room with lagging readers costs nothing measurable.
pub const STALL_SWEEP_MS_MAX: u64 = 1_000;

/// How many wire formats a published event can carry encoded (see [`Encodings`]).
pub const ENCODING_SLOTS: usize = 4;

/// One published event, shared by every reader.
#[derive(Debug)]
pub struct Published {
    /// The event.
    pub event: RoomEvent,
    /// The room's last message before this event: a reader that lost everything up to this
    /// entry missed exactly the messages after its own last one up to this number.
    pub seq_before: Seq,
    /// The event's bytes in each wire format, made by the first reader that needs them and
    /// shared by every other (encode once, not once per subscriber).
    pub encodings: Encodings,
}

impl PartialEq for Published {
    fn eq(&self, other: &Self) -> bool {
        // The encodings are a cache of the event: equal events encode equally.
        self.event == other.event && self.seq_before == other.seq_before
    }
}

impl Eq for Published {}

/// A published event's encodings, one slot per wire format. The slots are the transports' to
/// number; the engine never reads them. Each is written once (the one synchronised thing in
/// this crate: a write-once cell on an event that is otherwise immutable).
#[derive(Debug, Default)]
pub struct Encodings([OnceLock<Arc<[u8]>>; ENCODING_SLOTS]);

impl Encodings {
    /// The bytes in `slot`, made with `encode` by the first caller.
    ///
    /// # Panics
    /// If `slot` is not below [`ENCODING_SLOTS`] (a transport's constant is wrong).
    pub fn get_or_encode(&self, slot: usize, encode: impl FnOnce() -> Vec<u8>) -> Arc<[u8]> {
        Arc::clone(self.0[slot].get_or_init(|| Arc::from(encode())))
    }
}

/// What a reader is given, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadItem {
    /// The reader missed this span of messages just before the next item (G2).
    Lagged(Lag),
    /// The next event.
    Event(Arc<Published>),
}

/// An item as [`Ring::read_into`] shows it, before the reader takes what it keeps.
#[derive(Clone, Copy, Debug)]
pub enum ReadRef<'a> {
    /// The reader missed this span of messages just before the next item (G2).
    Lagged(Lag),
    /// The next event, still in the ring.
    Event(&'a Arc<Published>),
}

/// Why a reader's stream ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReaderEnd {
    /// It lagged and took nothing for the stall time: closed, having missed this span.
    Stalled(Lag),
    /// The room stopped (after the reader took everything published before).
    RoomClosed,
    /// The reader is not (or no longer) subscribed.
    Unsubscribed,
}

/// What one call to [`Ring::read`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadStatus {
    /// Items were appended to the output; there may be more.
    Items,
    /// Nothing to read now: the reader parks until the next push.
    Empty,
    /// The reader is finished, for this reason (its items, if any, come first).
    Ended(ReaderEnd),
}

/// One reader's cursor.
#[derive(Clone, Debug)]
struct Cursor {
    /// The position of the next entry it reads.
    next_pos: u64,
    /// The last message handed to it or declared missed: a lag starts right after it.
    delivered: Seq,
    /// While it lags: when the sweep first saw it lag at this position (its stall clock).
    stall_mark: Option<(Time, u64)>,
}

/// The ring of one room. Deterministic: ordered maps only, time passed in.
#[derive(Debug)]
pub struct Ring {
    entries: VecDeque<Arc<Published>>,
    /// The position of `entries.front()`; positions count every entry ever pushed.
    first_pos: u64,
    /// Entries kept: how far a reader may fall behind before it lags.
    capacity: usize,
    /// The room's last published message.
    last_seq: Seq,
    readers: BTreeMap<SubscriberId, Cursor>,
    /// Readers the ring closed (stalled) whose reason is not yet collected by their reader.
    ended: BTreeMap<SubscriberId, ReaderEnd>,
    /// Readers that left by themselves, for the room to unsubscribe (presence, counts).
    departed: Vec<SubscriberId>,
    /// The room stopped: readers end once they have read everything.
    closed: bool,
    stall_ms: u64,
    /// When the next stall sweep is due; `None` while no reader can be lagging.
    sweep_at: Option<Time>,
    /// A deliberate defect for the checkers' tests: the first reader silently skips this message.
    drop_delivery: Option<Seq>,
    /// The room or ring is defective on purpose: let gaps through to the readers unasserted,
    /// so that the checkers downstream are what finds them.
    defective: bool,
}

impl Ring {
    /// An empty ring keeping `capacity` entries (at least 1), whose messages continue after
    /// `last_seq`, closing readers that lag without reading for `stall_ms`.
    pub fn new(capacity: usize, last_seq: Seq, stall_ms: u64) -> Self {
        Self {
            entries: VecDeque::new(),
            first_pos: 0,
            capacity: capacity.max(1),
            last_seq,
            readers: BTreeMap::new(),
            ended: BTreeMap::new(),
            departed: Vec::new(),
            closed: false,
            stall_ms,
            sweep_at: None,
            drop_delivery: None,
            defective: false,
        }
    }

    /// Makes the ring defective on purpose: [`InjectedBug::DropDelivery`] is played here; with
    /// any injected bug the ring stops asserting contiguity, so the defect reaches the readers.
    #[doc(hidden)]
    pub fn inject_bug(&mut self, bug: InjectedBug) {
        self.defective = true;
        if let InjectedBug::DropDelivery(seq) = bug {
            self.drop_delivery = Some(seq);
        }
    }

    /// Appends one event the room published. Messages must continue the room's numbering.
    pub fn push(&mut self, event: RoomEvent, now: Time) {
        if let Some(seq) = event.seq() {
            assert!(self.defective || seq == self.last_seq + 1, "the ring's messages must be contiguous (G1)");
        }
        let seq_before = self.last_seq;
        if let Some(seq) = event.seq() {
            self.last_seq = seq;
        }
        self.entries.push_back(Arc::new(Published { event, seq_before, encodings: Encodings::default() }));
        if self.entries.len() > self.capacity {
            self.entries.pop_front();
            self.first_pos += 1;
            if self.sweep_at.is_none() && !self.readers.is_empty() {
                // Someone may have just fallen behind: start watching for a stall.
                self.sweep_at = Some(now.plus_millis(self.sweep_interval_ms()));
            }
        }
        assert!(self.entries.len() <= self.capacity, "the ring exceeds its capacity");
    }

    /// Adds a reader at the head: it reads what is pushed from now on. `delivered` is the last
    /// message its subscription already carried (the room's last durable message).
    pub fn add_reader(&mut self, id: SubscriberId, delivered: Seq) {
        let next_pos = self.head_pos();
        self.readers.insert(id, Cursor { next_pos, delivered, stall_mark: None });
    }

    /// A reader leaves by itself (its stream was dropped); the room collects it with
    /// [`Ring::take_departed`]. Returns whether it was reading.
    pub fn remove_reader(&mut self, id: SubscriberId) -> bool {
        self.ended.remove(&id);
        let removed = self.readers.remove(&id).is_some();
        if removed {
            self.departed.push(id);
        }
        removed
    }

    /// Readers that left by themselves since the last call, in the order they left.
    pub fn take_departed(&mut self) -> Vec<SubscriberId> {
        std::mem::take(&mut self.departed)
    }

    /// The room stopped: every reader ends once it has read what was pushed.
    pub fn close(&mut self) {
        self.closed = true;
        self.sweep_at = None;
    }

    /// Whether the room closed the ring: a reader that has read everything is at its end
    /// (its next read says so), and nothing will be appended to wake it.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Reads at most `max` items for reader `id` into `out`.
    pub fn read(&mut self, id: SubscriberId, out: &mut Vec<ReadItem>, max: usize) -> ReadStatus {
        self.read_into(id, out, max, |item| match item {
            ReadRef::Lagged(lag) => ReadItem::Lagged(lag),
            ReadRef::Event(published) => ReadItem::Event(Arc::clone(published)),
        })
    }

    /// Reads at most `max` items for reader `id`, each turned by `take` into what the reader
    /// keeps (under the shell's lock: a reader that wants only the event, or only its bytes,
    /// takes just that, without holding the shared entry).
    pub fn read_into<T>(
        &mut self,
        id: SubscriberId,
        out: &mut Vec<T>,
        max: usize,
        mut take: impl FnMut(ReadRef<'_>) -> T,
    ) -> ReadStatus {
        let head_pos = self.head_pos();
        let (first_pos, last_seq, closed) = (self.first_pos, self.last_seq, self.closed);
        // Only the injected defect needs to know who reads first.
        let first_reader = self.drop_delivery.and_then(|_| self.readers.keys().next().copied());
        let Some(cursor) = self.readers.get_mut(&id) else {
            return ReadStatus::Ended(self.ended.remove(&id).unwrap_or(ReaderEnd::Unsubscribed));
        };
        let before = out.len();
        if cursor.next_pos < first_pos {
            // It fell behind: everything up to the oldest entry is gone for it.
            let missed_to = self.entries.front().map_or(last_seq, |entry| entry.seq_before);
            if missed_to > cursor.delivered {
                out.push(take(ReadRef::Lagged(Lag { missed_from: cursor.delivered + 1, missed_to })));
                cursor.delivered = missed_to;
            }
            cursor.next_pos = first_pos;
        }
        while cursor.next_pos < head_pos && out.len() - before < max {
            let index = usize::try_from(cursor.next_pos - first_pos).expect("the ring's index fits in memory");
            let entry = &self.entries[index];
            cursor.next_pos += 1;
            if let Some(seq) = entry.event.seq() {
                assert!(self.defective || seq == cursor.delivered + 1, "a reader's messages must be contiguous (G2)");
                cursor.delivered = seq;
                if self.drop_delivery == Some(seq) && first_reader == Some(id) {
                    continue;
                }
            }
            out.push(take(ReadRef::Event(entry)));
        }
        if out.len() > before {
            ReadStatus::Items
        } else if closed {
            self.readers.remove(&id);
            ReadStatus::Ended(ReaderEnd::RoomClosed)
        } else {
            ReadStatus::Empty
        }
    }

    /// The last message a reader was handed or told it missed (`None` if not reading).
    pub fn delivered(&self, id: SubscriberId) -> Option<Seq> {
        self.readers.get(&id).map(|cursor| cursor.delivered)
    }

    /// Whether a reader has fallen behind the oldest retained entry (it will get a lag).
    pub fn is_lagging(&self, id: SubscriberId) -> bool {
        self.readers.get(&id).is_some_and(|cursor| cursor.next_pos < self.first_pos)
    }

    /// How many readers the ring has.
    pub fn reader_count(&self) -> usize {
        self.readers.len()
    }

    /// When the ring next needs [`Ring::handle_timeout`], if ever.
    pub fn poll_timeout(&self) -> Option<Time> {
        self.sweep_at
    }

    /// The stall sweep: closes every reader that lagged behind a lost message and took nothing
    /// for the stall time, and returns each with the span it missed (from after its last
    /// message to the room's last). The room unsubscribes them; their readers get the span as
    /// a final lag, then [`ReaderEnd::Stalled`].
    pub fn handle_timeout(&mut self, now: Time) -> Vec<(SubscriberId, Lag)> {
        if self.sweep_at.is_none_or(|at| now < at) {
            return Vec::new();
        }
        let missed_to_at_front = self.entries.front().map_or(self.last_seq, |entry| entry.seq_before);
        let (first_pos, last_seq, stall_ms) = (self.first_pos, self.last_seq, self.stall_ms);
        let mut stalled = Vec::new();
        let mut lagging = false;
        for (&id, cursor) in &mut self.readers {
            // Behind the ring and missing at least one message (a lost typing notice alone
            // leaves no gap to report and holds nothing).
            if cursor.next_pos >= first_pos || missed_to_at_front <= cursor.delivered {
                cursor.stall_mark = None;
                continue;
            }
            lagging = true;
            match cursor.stall_mark {
                Some((since, at)) if at == cursor.next_pos => {
                    if now.millis_since(since) >= stall_ms {
                        stalled.push((id, Lag { missed_from: cursor.delivered + 1, missed_to: last_seq }));
                    }
                }
                _ => cursor.stall_mark = Some((now, cursor.next_pos)),
            }
        }
        for &(id, lag) in &stalled {
            self.readers.remove(&id);
            self.ended.insert(id, ReaderEnd::Stalled(lag));
        }
        self.sweep_at = lagging.then(|| now.plus_millis(self.sweep_interval_ms()));
        stalled
    }

    fn head_pos(&self) -> u64 {
        self.first_pos + self.entries.len() as u64
    }

    fn sweep_interval_ms(&self) -> u64 {
        (self.stall_ms / 4).clamp(1, STALL_SWEEP_MS_MAX)
    }
}
