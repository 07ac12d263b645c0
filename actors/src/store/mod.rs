//! Where history lives beyond a room actor's memory: the [`HistoryStore`] trait, an in-memory
//! [`MemoryStore`] (tests: a "restart" is a new engine on the same store), the durable
//! [`RedbStore`], and the writer thread that gives every room group commit.
//!
//! A store only ever sees durable-bound writes from the writer thread and loads from the
//! registry when a room is first used, so implementations need no async and no locking
//! beyond their own.

mod memory;
mod redb_store;
pub(crate) mod writer;

use std::sync::Arc;

use confab_engine::{ChatMessage, RoomName, Seq};

pub use memory::MemoryStore;
pub use redb_store::RedbStore;

/// A room as stored: enough to continue it after a restart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRoom {
    /// Its epoch (unchanged across restarts while its history is kept).
    pub epoch: u64,
    /// The last sequence number it gave.
    pub last_seq: Seq,
    /// The retained tail, contiguous and ending at `last_seq`, oldest first.
    pub tail: Vec<ChatMessage>,
}

/// New messages of one room, to be made durable together with other rooms' in one commit.
#[derive(Clone, Debug)]
pub struct RoomAppend {
    /// The room.
    pub room: RoomName,
    /// Its epoch.
    pub epoch: u64,
    /// Messages in sequence order, continuing the room's stored sequence.
    pub messages: Vec<Arc<ChatMessage>>,
}

/// How much history a store keeps per room; older messages are compacted away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Messages kept per room (the engine's `history_len_max`).
    pub len_max: usize,
    /// Messages older than this many milliseconds (by `accepted_at`) are dropped, if set.
    pub age_max_ms: Option<u64>,
}

/// A store failed. Every variant names the file and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store could not be opened or created.
    #[error("{path}: cannot open the history store: {reason}")]
    Open {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The file is a store of something else, or of another format version.
    #[error("{path}: not a confab history store (format {found:?}, expected {expected:?})")]
    Foreign {
        /// The file.
        path: String,
        /// The format found.
        found: String,
        /// The format this build writes.
        expected: &'static str,
    },
    /// The data is damaged.
    #[error("{path}: damaged history: {detail}")]
    Corrupt {
        /// The file.
        path: String,
        /// What is wrong, and where.
        detail: String,
    },
    /// Reading or writing failed.
    #[error("{path}: history store I/O failed: {reason}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// Durable history. `append` returns only once its messages survive a crash.
pub trait HistoryStore: std::fmt::Debug + Send + Sync + 'static {
    /// A room's stored state, `None` if it was never stored.
    fn load_room(&self, room: &RoomName) -> Result<Option<StoredRoom>, StoreError>;

    /// Every stored room's name, in order.
    fn room_names(&self) -> Result<Vec<RoomName>, StoreError>;

    /// Makes all `appends` durable in one commit, then compacts the rooms they touched to the
    /// retention. `now_ms` is the current time on the `accepted_at` clock, for age retention.
    fn append(&self, appends: &[RoomAppend], now_ms: u64) -> Result<(), StoreError>;
}
