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

use confab_engine::{Append, ChatMessage, LogEntry, Position, RoomError, RoomName, Seq};
use futures::future::BoxFuture;

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
    Unknown,
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
}
