//! A room's [`Ring`] shared between its room actor, the one writer, and its readers (Subscribe
//! streams and session streams), each polled by its transport's own task. The room appends a
//! handler's events under the lock and wakes the parked readers once; a reader takes everything
//! ready in one lock and hands it out without further synchronisation.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use confab_engine::{
    Lag, Published, ReadRef, ReadStatus, ReaderEnd, Ring, RoomEvent, RoomName, Seq, SubscriberId, Time,
};
use kameo::actor::ActorRef;

use crate::room_actor::{RoomActor, Unsubscribe};
use crate::stats::EngineStats;

/// Items a reader takes from its ring in one lock: enough for a burst in a big room to become
/// one write on the wire, few enough that one reader never holds the lock for long.
pub(crate) const READ_BATCH_MAX: usize = 256;

/// Why a room closed a subscription: its reader took nothing for
/// [`Limits::subscriber_stall_ms`](confab_engine::Limits::subscriber_stall_ms) while lagging.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stalled {
    /// The room that closed it.
    pub room: RoomName,
    /// What it missed: from where its deliveries stopped to the room's last message then.
    pub lag: Lag,
}

/// Why a [`RoomEvents`](crate::RoomEvents) or [`SessionEvents`](crate::SessionEvents) stream
/// ended: its last item ([`StreamItem::End`](crate::StreamItem::End),
/// [`SessionItem::End`](crate::SessionItem::End)), after which it yields `None`. A transport
/// maps it to its own status or close code.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamEnd {
    /// A session finished normally: its client half-closed
    /// ([`SessionSender::close`](crate::SessionSender::close)) and every message it sent came
    /// back on its stream.
    Finished,
    /// The room closed the reader for stalling: it took nothing for
    /// [`Limits::subscriber_stall_ms`](confab_engine::Limits::subscriber_stall_ms) while
    /// lagging. Its final [`RoomEvent::Lagged`] came just before.
    Stalled(Stalled),
    /// A subscription's room stopped (at engine shutdown, or its actor failed), after the
    /// subscription read everything the room published.
    RoomStopped,
    /// A session stopped without finishing: its client disconnected (dropped its
    /// [`SessionSender`](crate::SessionSender) without closing it) or its actor was stopped.
    SessionStopped,
}

/// The ring and the wakers of its parked readers, behind one lock.
#[derive(Debug)]
struct RingCell {
    ring: Ring,
    /// Readers caught up with the ring, waiting for the next change, each woken once.
    parked: Vec<Waker>,
}

/// What a room's actor and its readers share.
#[derive(Debug)]
struct RingShared {
    cell: Mutex<RingCell>,
    /// Counts the changes that woke the parked readers (written under the lock). A reader that
    /// parked in generation `g` and still sees `g` knows, without the lock, that nothing
    /// changed and its waker is still parked: half of a caught-up reader's lock round trips.
    generation: AtomicU64,
    /// A reader left by itself since the room last looked: the room takes the lock for
    /// [`Ring::take_departed`] only when this is set.
    departed: AtomicBool,
}

/// A handle on one room's ring; clones share it.
#[derive(Clone, Debug)]
pub(crate) struct SharedRing(Arc<RingShared>);

impl SharedRing {
    pub(crate) fn new(ring: Ring) -> Self {
        let cell = Mutex::new(RingCell { ring, parked: Vec::new() });
        Self(Arc::new(RingShared { cell, generation: AtomicU64::new(0), departed: AtomicBool::new(false) }))
    }

    fn lock(&self) -> MutexGuard<'_, RingCell> {
        // The ring's invariants are asserted before any state changes; a reader that panicked
        // mid-read left nothing half-done, so a poisoned lock is still consistent.
        self.0.cell.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The generation now (see [`RingShared::generation`]).
    fn generation(&self) -> u64 {
        self.0.generation.load(Ordering::Acquire)
    }

    /// Runs `change` on the ring, then wakes every parked reader once, outside the lock.
    pub(crate) fn update<T>(&self, change: impl FnOnce(&mut Ring) -> T) -> T {
        let (result, parked) = {
            let mut cell = self.lock();
            let result = change(&mut cell.ring);
            self.0.generation.fetch_add(1, Ordering::Release);
            (result, std::mem::take(&mut cell.parked))
        };
        for waker in parked {
            waker.wake();
        }
        result
    }

    /// Runs `look` on the ring without waking anyone.
    pub(crate) fn with<T>(&self, look: impl FnOnce(&mut Ring) -> T) -> T {
        look(&mut self.lock().ring)
    }

    /// Appends events and wakes the parked readers once; returns when the ring next needs
    /// its sweep (one lock for both).
    pub(crate) fn publish(&self, events: Vec<RoomEvent>, now: Time) -> Option<Time> {
        self.update(|ring| {
            for event in events {
                ring.push(event, now);
            }
            ring.poll_timeout()
        })
    }

    /// A reader leaves: the ring forgets it at once. Returns whether it was reading.
    pub(crate) fn remove_reader(&self, id: SubscriberId) -> bool {
        let removed = self.with(|ring| ring.remove_reader(id));
        if removed {
            self.0.departed.store(true, Ordering::Release);
        }
        removed
    }

    /// Readers that left by themselves since the last call (no lock if there are none).
    pub(crate) fn take_departed(&self) -> Vec<SubscriberId> {
        if !self.0.departed.swap(false, Ordering::Acquire) {
            return Vec::new();
        }
        self.with(Ring::take_departed)
    }
}

/// One event as a subscriber gets it: shared with every other subscriber of the room (and so
/// are its encodings), or its own (its subscription's start, its backlog, its lag markers).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum SharedEvent {
    /// Published by the room once, for every subscriber.
    Shared(Arc<Published>),
    /// Made for this subscriber alone.
    Own(RoomEvent),
}

impl SharedEvent {
    /// The event.
    pub fn event(&self) -> &RoomEvent {
        match self {
            SharedEvent::Shared(published) => &published.event,
            SharedEvent::Own(event) => event,
        }
    }

    /// The event, owned (a shared one is cloned: its message body stays shared).
    pub fn into_event(self) -> RoomEvent {
        match self {
            SharedEvent::Shared(published) => published.event.clone(),
            SharedEvent::Own(event) => event,
        }
    }

    /// The event's bytes in the wire format numbered `slot` (below
    /// [`ENCODING_SLOTS`](confab_engine::ENCODING_SLOTS)): a shared event is encoded once, by
    /// the first subscriber that asks, and every other gets the same bytes; an own event is
    /// encoded each time.
    pub fn encoded(&self, slot: usize, encode: impl FnOnce(&RoomEvent) -> Vec<u8>) -> Arc<[u8]> {
        match self {
            SharedEvent::Shared(published) => published.encodings.get_or_encode(slot, || encode(&published.event)),
            SharedEvent::Own(event) => Arc::from(encode(event)),
        }
    }
}

/// Which waker a reader parked, without holding a clone of it (the ring holds one): two
/// wakers with the same data and vtable wake the same task, as `Waker::will_wake` decides.
/// Kept as addresses: only ever compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct WakerIdentity(usize, usize);

impl WakerIdentity {
    fn of(waker: &Waker) -> Self {
        Self(waker.data() as usize, std::ptr::from_ref(waker.vtable()) as usize)
    }
}

/// What a reader hands out, in order.
#[derive(Clone, Debug)]
pub(crate) enum ReaderItem {
    /// An event (a message, a lag marker, presence, typing).
    Event(SharedEvent),
    /// The stream is over: the room closed it for stalling (its final lag came first).
    Stalled(Stalled),
    /// The stream is over: the room stopped or the subscription was dropped.
    Ended,
}

/// Names one subscriber's cursor on a room's ring, to leave the room or ask how far it read.
#[derive(Clone)]
pub(crate) struct ReaderHandle {
    ring: SharedRing,
    id: SubscriberId,
    /// Where the room is nudged to unsubscribe when the reader leaves.
    actor: ActorRef<RoomActor>,
}

impl ReaderHandle {
    /// Leaves the room: the ring forgets the cursor at once, so no Unsubscribe can be lost
    /// to a full mailbox; the room unsubscribes it (presence, counts) the next time it runs,
    /// which a best-effort nudge makes soon.
    pub(crate) fn leave(&self) {
        let id = self.id;
        if self.ring.remove_reader(id) {
            let _ = self.actor.tell(Unsubscribe(id)).try_send();
        }
    }

    /// Which subscription this is: its room actor and its id there (a room reloaded, or left
    /// and joined again, gives a different one).
    pub(crate) fn identity(&self) -> (kameo::actor::ActorId, SubscriberId) {
        (self.actor.id(), self.id)
    }

    /// The last message this reader handed out or declared missed (`None` once finished).
    pub(crate) fn delivered(&self) -> Option<Seq> {
        self.ring.with(|ring| ring.delivered(self.id))
    }
}

/// One subscriber's cursor on a room's ring. Dropping it leaves the room.
pub(crate) struct RingReader {
    handle: ReaderHandle,
    room: RoomName,
    /// Items taken from the ring in the last lock, not yet handed out.
    taken: VecDeque<SharedEvent>,
    /// Reused for every read, so a batch costs no allocation.
    scratch: Vec<SharedEvent>,
    /// Set once the ring said the reader is finished; handed out after `taken`.
    end: Option<ReaderEnd>,
    /// The generation this reader parked its waker in, and which waker that was (see
    /// [`RingShared::generation`]); the ring holds the waker itself.
    parked: Option<(u64, WakerIdentity)>,
    /// A stalled reader's final lag marker was handed out.
    stall_told: bool,
    stats: Arc<EngineStats>,
}

impl RingReader {
    pub(crate) fn new(
        ring: SharedRing,
        id: SubscriberId,
        room: RoomName,
        actor: ActorRef<RoomActor>,
        stats: Arc<EngineStats>,
    ) -> Self {
        let handle = ReaderHandle { ring, id, actor };
        Self {
            handle,
            room,
            taken: VecDeque::new(),
            scratch: Vec::new(),
            end: None,
            parked: None,
            stall_told: false,
            stats,
        }
    }

    pub(crate) fn room(&self) -> &RoomName {
        &self.room
    }

    pub(crate) fn handle(&self) -> &ReaderHandle {
        &self.handle
    }

    /// Whether items taken from the ring are still waiting to be handed out.
    pub(crate) fn has_taken(&self) -> bool {
        !self.taken.is_empty()
    }

    /// The next item, or `Pending` (the room wakes this task when it publishes). `shared`:
    /// whether the caller wants events as shared with the other readers (to use their
    /// encodings), or owned (then the reader takes just the event, not the shared entry).
    pub(crate) fn poll_item(&mut self, cx: &mut Context<'_>, shared: bool) -> Poll<ReaderItem> {
        if self.taken.is_empty() && self.end.is_none() {
            let unchanged = self.parked.is_some_and(|(generation, waker)| {
                generation == self.handle.ring.generation() && waker == WakerIdentity::of(cx.waker())
            });
            if unchanged {
                // Caught up, parked, and nothing happened since: no need for the lock.
                return Poll::Pending;
            }
            self.take(cx, shared);
        }
        if let Some(item) = self.taken.pop_front() {
            return Poll::Ready(ReaderItem::Event(item));
        }
        match self.end.clone() {
            Some(ReaderEnd::Stalled(lag)) => {
                let room = self.room.clone();
                if self.stall_told {
                    return Poll::Ready(ReaderItem::Stalled(Stalled { room, lag }));
                }
                // The final lag marker first (G2: never end on a silent gap), then the reason.
                self.stall_told = true;
                Poll::Ready(ReaderItem::Event(SharedEvent::Own(RoomEvent::Lagged { room, lag })))
            }
            Some(_) => Poll::Ready(ReaderItem::Ended),
            None => Poll::Pending,
        }
    }

    /// Takes every item ready (up to [`READ_BATCH_MAX`]). A reader that this leaves caught up
    /// parks `cx`'s waker in the same lock, so its next poll needs no lock unless the ring
    /// changed.
    fn take(&mut self, cx: &mut Context<'_>, shared: bool) {
        let (id, scratch, room) = (self.handle.id, &mut self.scratch, &self.room);
        let (mut events, mut lags, mut missed) = (0, 0, 0);
        let keep = |item: ReadRef<'_>| match item {
            ReadRef::Lagged(lag) => {
                lags += 1;
                missed += lag.missed_to - lag.missed_from + 1;
                SharedEvent::Own(RoomEvent::Lagged { room: room.clone(), lag })
            }
            ReadRef::Event(published) => {
                events += 1;
                if shared {
                    SharedEvent::Shared(Arc::clone(published))
                } else {
                    SharedEvent::Own(published.event.clone())
                }
            }
        };
        let status = {
            let mut cell = self.handle.ring.lock();
            let status = cell.ring.read_into(id, scratch, READ_BATCH_MAX, keep);
            let caught_up = match status {
                ReadStatus::Empty => true,
                // A closed ring changes no more: its reader reads again for its end instead
                // of parking where nothing would wake it.
                ReadStatus::Items => scratch.len() < READ_BATCH_MAX && !cell.ring.is_closed(),
                ReadStatus::Ended(_) => false,
            };
            if caught_up {
                // Read under the lock, where every change counts it: exact.
                let generation = self.handle.ring.generation();
                let waker = WakerIdentity::of(cx.waker());
                if self.parked != Some((generation, waker)) {
                    cell.parked.push(cx.waker().clone());
                    self.parked = Some((generation, waker));
                }
            }
            status
        };
        self.stats.delivered(events, lags, missed);
        self.taken.extend(self.scratch.drain(..));
        if let ReadStatus::Ended(end) = status {
            self.end = Some(end);
        }
    }
}

impl Drop for RingReader {
    fn drop(&mut self) {
        self.handle.leave();
    }
}
