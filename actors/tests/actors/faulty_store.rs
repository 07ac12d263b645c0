//! A store that fails on demand, for tests of what the engine does when its store fails: a
//! [`MemoryStore`] whose commits fail while `failing` is set (a full disk), and whose load of
//! one room panics (a damaged page that makes the store library panic). Shared with the
//! end-to-end tests (`#[path]`), so both test the same faults.

use std::sync::atomic::{AtomicBool, Ordering};

use confab_actors::store::{HistoryStore, MemoryStore, Retention, RoomAppend, StoreError, StoredRoom, StoredSummary};
use confab_engine::RoomName;

/// A memory store with injected faults.
#[derive(Debug)]
pub(crate) struct FaultyStore {
    inner: MemoryStore,
    /// While set, every commit fails (and stores nothing), like a full disk.
    failing: AtomicBool,
    /// While set, every commit stores its messages and then reports failure, like an fsync
    /// that fails after the data reached the disk.
    fails_after_storing: AtomicBool,
    /// Loading this room panics.
    panics_on: Option<String>,
}

impl FaultyStore {
    /// A store that works until told otherwise; loading `panics_on` (if given) panics.
    pub(crate) fn new(panics_on: Option<&str>) -> Self {
        let retention = Retention { len_max: 10_000, age_max_ms: None };
        Self {
            inner: MemoryStore::new(retention),
            failing: AtomicBool::new(false),
            fails_after_storing: AtomicBool::new(false),
            panics_on: panics_on.map(Into::into),
        }
    }

    /// Makes commits fail (`true`) or succeed again.
    pub(crate) fn fail(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// Makes commits store their messages and still report failure (`true`), or not.
    pub(crate) fn fail_after_storing(&self, failing: bool) {
        self.fails_after_storing.store(failing, Ordering::SeqCst);
    }

    fn injected() -> StoreError {
        StoreError::Io { path: "faulty".into(), reason: "No space left on device (injected)".into() }
    }
}

impl HistoryStore for FaultyStore {
    fn load_room(&self, room: &RoomName) -> Result<Option<StoredRoom>, StoreError> {
        if self.panics_on.as_deref() == Some(room.as_str()) {
            panic!("injected: a damaged page under room {room}");
        }
        self.inner.load_room(room)
    }

    fn room_summaries(&self, after: Option<&RoomName>, limit: usize) -> Result<Vec<StoredSummary>, StoreError> {
        self.inner.room_summaries(after, limit)
    }

    fn append(&self, appends: &[RoomAppend], now_ms: u64) -> Result<(), StoreError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(Self::injected());
        }
        self.inner.append(appends, now_ms)?;
        if self.fails_after_storing.load(Ordering::SeqCst) {
            return Err(Self::injected());
        }
        Ok(())
    }
}
