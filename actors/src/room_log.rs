//! The boundary between a durable room actor and where its messages are kept: the
//! [`RoomLog`] trait.
//!
//! A durable room sequences its messages and hands them to its log; a message is delivered
//! and acknowledged only once the log says it is committed. Appends are conditional (they
//! name the position of the last entry the room knows, see [`confab_engine::replicated`]), so
//! the same room actor works over a log it alone writes and over one several nodes write:
//!
//! - the local log ([`crate::store::LocalLog`]): the redb store behind the writer thread's
//!   group commit, written by this process alone (an append never conflicts; positions are
//!   sequence numbers);
//! - a replicated log (cluster mode), where any node may append and the log admits one append
//!   per position;
//! - the simulator's model of either, with injected faults.
//!
//! Calls return boxed futures that own what they need, so a room actor can wait for them on a
//! task of their own and keep its mailbox free.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use confab_engine::{Append, ChatMessage, LogEntry, Position, RoomError, RoomName, Seq};
use futures::future::{BoxFuture, FutureExt};
use futures::stream::{BoxStream, StreamExt};
use tokio::sync::mpsc;

/// A room as its log holds it: enough for a room actor to continue it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadedRoom {
    /// Its epoch (unchanged while its history is kept).
    pub epoch: u64,
    /// The last sequence number it gave.
    pub last_seq: Seq,
    /// The position of that message's entry (what the next append expects).
    pub last_position: Position,
    /// The retained tail, contiguous and ending at `last_seq`, oldest first.
    pub tail: Vec<ChatMessage>,
}

impl LoadedRoom {
    /// Whether its tail is what the fields say: contiguous and ending at `last_seq` (or
    /// empty). A log's answer is input; one that is not is refused, never restored.
    pub fn is_consistent(&self) -> bool {
        let contiguous = self.tail.windows(2).all(|pair| pair[1].seq == pair[0].seq + 1);
        contiguous && self.tail.last().is_none_or(|last| last.seq == self.last_seq)
    }
}

/// What became of an append.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Committed; its last entry is at this position.
    Appended(Position),
    /// Refused: the room's last position is no longer the one the append expected (another
    /// writer appended). Nothing of it was committed.
    Conflict,
    /// Not known (a timeout, a lost answer): it may have been committed. Sending the same
    /// append again is safe: its expectation lets it commit at most once.
    Unknown {
        /// Why the outcome is not known, for the senders' answer if it stays unknown.
        reason: String,
    },
    /// Refused for good, and nothing of it was committed (a failing disk, no quorum): its
    /// senders are told why, and the room rolls back what it had not seen committed.
    Failed(RoomError),
}

/// Where durable rooms keep their messages (see the module).
pub trait RoomLog: Send + Sync + 'static {
    /// The room as the log holds it, `None` if it has no entry. A refusal is what callers of
    /// the room get (`RoomError::DataLoss` for damaged history, `RoomError::Storage` for a
    /// log that cannot be read now).
    fn load(&self, room: &RoomName) -> BoxFuture<'static, Result<Option<LoadedRoom>, RoomError>>;

    /// Appends `append`'s messages to `room` (of epoch `epoch`) as one unit, admitted only if
    /// the room's last entry is still at `append.expected_last`.
    fn append(&self, room: &RoomName, epoch: u64, append: Append) -> BoxFuture<'static, AppendOutcome>;

    /// Up to `limit` of the room's entries after `after`, in log order.
    fn read_after(
        &self,
        room: &RoomName,
        after: Position,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<LogEntry>, RoomError>>;

    /// The position of the room's last entry as the log's leader knows it (not a replica that
    /// may lag): a node that has read its room up to here has every message acknowledged
    /// before the call (read-your-writes across nodes, G7). `Position(0)` for no entry.
    fn last_position(&self, room: &RoomName) -> BoxFuture<'static, Result<Position, RoomError>>;

    /// Whether only this process writes the log (the local store): no other writer can take
    /// a position, so a room sends its appends without waiting for the one before. Such a
    /// log answers appends in order, and only `Appended` or `Failed`.
    fn is_single_writer(&self) -> bool {
        false
    }

    /// Most messages one append may carry (a replicated log's batch limit); more pending are
    /// sent in several appends, in order.
    fn append_len_max(&self) -> usize {
        usize::MAX
    }

    /// The epoch of every room in this log, if the log decides it (a replicated log: every
    /// node must give a room the same one); `None` lets the engine number its rooms.
    fn epoch(&self) -> Option<u64> {
        None
    }

    /// Every entry appended from now on, by any writer, in each room's order: how a node
    /// hears of other nodes' messages. `None` for a log only this process writes.
    fn follow(&self) -> Option<BoxStream<'static, LogEntry>> {
        None
    }

    /// One check of whether the log can commit now (reachable, with a quorum), for the
    /// engine's health: `Err` names the cause. Cheap: the engine runs one every
    /// [`HEALTH_PROBE_INTERVAL`](crate::HEALTH_PROBE_INTERVAL). `None` for a log with nothing
    /// to probe (in memory, or the local store, whose writer reports its own failures).
    fn probe(&self) -> Option<BoxFuture<'static, Result<(), String>>> {
        None
    }
}

/// A replicated log in memory that several engines in one process share, each as a node of
/// its own: appends are conditional, exactly one wins each position, and every follower hears
/// of every entry. What cluster mode does over JetStream, without a server: for tests and the
/// simulator.
#[derive(Default)]
pub struct MemoryLog {
    state: Mutex<MemoryLogState>,
    /// See [`MemoryLog::with_append_len_max`]; `None`: no limit.
    append_len_max: Option<usize>,
}

#[derive(Default)]
struct MemoryLogState {
    rooms: BTreeMap<RoomName, Vec<LogEntry>>,
    /// The last position given, across rooms (as in a stream that holds many subjects).
    last: u64,
    followers: Vec<mpsc::UnboundedSender<LogEntry>>,
    /// Entries held back from the followers while the feed is paused.
    held: Option<Vec<LogEntry>>,
}

impl MemoryLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// A log that takes at most `len_max` messages per append, as JetStream takes 1,000.
    pub fn with_append_len_max(mut self, len_max: usize) -> Self {
        self.append_len_max = Some(len_max);
        self
    }

    /// Holds the feed back (`true`) or lets it go on with everything held (`false`): how a
    /// test makes other nodes hear of an append late, as a lagging feed would.
    pub fn pause_feed(&self, paused: bool) {
        let mut state = self.lock();
        match (paused, state.held.take()) {
            (true, held) => state.held = Some(held.unwrap_or_default()),
            (false, Some(held)) => state.feed(held),
            (false, None) => {}
        }
    }

    /// Drops `room`'s entries at or before `position`, as a stream does that keeps a bounded
    /// number of messages per room, and from the feed held back by
    /// [`MemoryLog::pause_feed`] (as if the followers had skipped them): how a test leaves a
    /// lagging node a gap no read can close.
    pub fn discard_through(&self, room: &RoomName, position: Position) {
        let mut state = self.lock();
        if let Some(entries) = state.rooms.get_mut(room) {
            entries.retain(|entry| entry.position > position);
        }
        if let Some(held) = &mut state.held {
            held.retain(|entry| entry.message.room != *room || entry.position > position);
        }
    }

    /// Every entry of `room`, in order.
    pub fn entries(&self, room: &RoomName) -> Vec<LogEntry> {
        self.lock().rooms.get(room).cloned().unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryLogState> {
        // Every update is complete before it can panic, so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl std::fmt::Debug for MemoryLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryLog").field("rooms", &self.lock().rooms.len()).finish_non_exhaustive()
    }
}

impl MemoryLogState {
    /// Hands `entries` to every follower still listening.
    fn feed(&mut self, entries: Vec<LogEntry>) {
        self.followers.retain(|follower| entries.iter().all(|entry| follower.send(entry.clone()).is_ok()));
    }
}

/// The memory log's epoch: every room has it.
const MEMORY_LOG_EPOCH: u64 = 1;

impl RoomLog for MemoryLog {
    fn load(&self, room: &RoomName) -> BoxFuture<'static, Result<Option<LoadedRoom>, RoomError>> {
        let state = self.lock();
        let loaded = state.rooms.get(room).and_then(|entries| entries.last()).map(|last| LoadedRoom {
            epoch: MEMORY_LOG_EPOCH,
            last_seq: last.message.seq,
            last_position: last.position,
            tail: state.rooms[room].iter().map(|entry| (*entry.message).clone()).collect(),
        });
        futures::future::ready(Ok(loaded)).boxed()
    }

    fn append(&self, room: &RoomName, _epoch: u64, append: Append) -> BoxFuture<'static, AppendOutcome> {
        if append.messages.len() > self.append_len_max() {
            let reason =
                format!("{} messages in one append, the most is {}", append.messages.len(), self.append_len_max());
            return futures::future::ready(AppendOutcome::Failed(RoomError::Storage { reason })).boxed();
        }
        let mut state = self.lock();
        let state = &mut *state;
        let entries = state.rooms.entry(room.clone()).or_default();
        if entries.last().map_or(Position(0), |entry| entry.position) != append.expected_last {
            return futures::future::ready(AppendOutcome::Conflict).boxed();
        }
        let mut appended = Vec::with_capacity(append.messages.len());
        for message in append.messages {
            state.last += 1;
            appended.push(LogEntry { position: Position(state.last), origin: append.origin, message });
        }
        entries.extend(appended.iter().cloned());
        match &mut state.held {
            Some(held) => held.extend(appended),
            None => state.feed(appended),
        }
        futures::future::ready(AppendOutcome::Appended(Position(state.last))).boxed()
    }

    fn read_after(
        &self,
        room: &RoomName,
        after: Position,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<LogEntry>, RoomError>> {
        let state = self.lock();
        let entries = state.rooms.get(room).map(Vec::as_slice).unwrap_or_default();
        let after = entries.iter().filter(|entry| entry.position > after).take(limit).cloned().collect();
        futures::future::ready(Ok(after)).boxed()
    }

    fn last_position(&self, room: &RoomName) -> BoxFuture<'static, Result<Position, RoomError>> {
        let state = self.lock();
        let last = state.rooms.get(room).and_then(|entries| entries.last()).map_or(Position(0), |entry| entry.position);
        futures::future::ready(Ok(last)).boxed()
    }

    fn append_len_max(&self) -> usize {
        self.append_len_max.unwrap_or(usize::MAX)
    }

    fn epoch(&self) -> Option<u64> {
        Some(MEMORY_LOG_EPOCH)
    }

    fn follow(&self) -> Option<BoxStream<'static, LogEntry>> {
        let (follower, entries) = mpsc::unbounded_channel();
        self.lock().followers.push(follower);
        Some(
            futures::stream::unfold(entries, |mut entries| async move {
                entries.recv().await.map(|entry| (entry, entries))
            })
            .boxed(),
        )
    }
}
