//! Where history lives beyond a room actor's memory: the [`HistoryStore`] trait, an in-memory
//! [`MemoryStore`] (tests: a "restart" is a new engine on the same store), the durable
//! [`RedbStore`], and the writer thread that gives every room group commit.
//!
//! A store only ever sees durable-bound writes from the writer thread and loads from the
//! registry when a room is first used, so implementations need no async and no locking
//! beyond their own.
//!
//! Damage is fenced, not served: a store reports a damaged room as [`StoreError::Damaged`]
//! (naming the room and the sequence numbers), the registry refuses that room, and every other
//! room goes on. A panic inside a store call (`guard::catch`) is a damaged store too, never
//! a dead actor.

pub(crate) mod guard;
mod local_log;
mod memory;
mod redb_store;
pub(crate) mod writer;

use std::sync::Arc;

use confab_engine::{ChatMessage, RoomName, Seq};

pub use local_log::LocalLog;
pub use memory::MemoryStore;
pub use redb_store::{CheckReport, RedbStore};
#[cfg(feature = "cluster")]
pub(crate) use redb_store::{decode as decode_record, encode as encode_record};

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

/// A stored room's numbers, read without its messages: what listing rooms needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSummary {
    /// The room.
    pub name: RoomName,
    /// Its epoch.
    pub epoch: u64,
    /// The last sequence number it gave.
    pub last_seq: Seq,
    /// Its oldest retained sequence number (`last_seq + 1` when none is retained).
    pub first_retained_seq: Seq,
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

/// What is damaged in one room's stored records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// The first and last sequence numbers affected, when known (a damaged room record, or a
    /// room whose records cannot be read at all, has none).
    pub seqs: Option<(Seq, Seq)>,
    /// What is wrong.
    pub detail: String,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.seqs {
            Some((first, last)) if first == last => write!(f, "message {first}: {}", self.detail),
            Some((first, last)) => write!(f, "messages {first} to {last}: {}", self.detail),
            None => f.write_str(&self.detail),
        }
    }
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
    /// One room's stored records are damaged: the room is refused, other rooms are served.
    #[error("{path}: room {room}: {damage}")]
    Damaged {
        /// The file.
        path: String,
        /// The room whose records are damaged.
        room: String,
        /// Which records (sequence numbers), and what is wrong with them.
        damage: Damage,
    },
    /// The directory was initialised (its marker file exists) but the store file is missing or
    /// empty: starting would silently restart every room's numbering at 1.
    #[error(
        "{path} is {state}, but {marker} says a store was initialised here: restore the file from a backup, or delete {marker} to start an empty store"
    )]
    Emptied {
        /// The file.
        path: String,
        /// `missing` or `empty (0 bytes)`.
        state: &'static str,
        /// The marker file.
        marker: String,
    },
}

impl StoreError {
    /// An I/O failure of `path`.
    pub(crate) fn io(path: &str) -> impl Fn(String) -> StoreError + '_ {
        move |reason| StoreError::Io { path: path.to_owned(), reason }
    }
}

/// Whether the store commits, as the writer last saw it: the error of the last failed
/// commit, until a commit succeeds again. Set by the writer thread, reported by the engine in
/// its health.
pub(crate) type StoreState = crate::health::LastFailure<StoreError>;

/// Durable history. `append` returns only once its messages survive a crash.
pub trait HistoryStore: std::fmt::Debug + Send + Sync + 'static {
    /// A room's stored state, `None` if it was never stored.
    fn load_room(&self, room: &RoomName) -> Result<Option<StoredRoom>, StoreError>;

    /// Up to `limit` stored rooms named after `after` (from the first if `None`), in name
    /// order, without reading their messages' contents. A room whose record is damaged is
    /// left out here; loading it reports the damage.
    fn room_summaries(&self, after: Option<&RoomName>, limit: usize) -> Result<Vec<StoredSummary>, StoreError>;

    /// Makes all `appends` durable in one commit, then compacts the rooms they touched to the
    /// retention. `now_ms` is the current time on the `accepted_at` clock, for age retention.
    fn append(&self, appends: &[RoomAppend], now_ms: u64) -> Result<(), StoreError>;

    /// Whether a commit would succeed now: the writer calls it about once a second after a
    /// failed commit while no write is queued, and reports the store healthy once it
    /// succeeds. It should be about as demanding as a real commit, or health would turn
    /// SERVING on a disk that still refuses real writes. By default an empty [`append`].
    ///
    /// [`append`]: HistoryStore::append
    fn probe(&self, now_ms: u64) -> Result<(), StoreError> {
        self.append(&[], now_ms)
    }
}
