//! A store that fails on demand, for tests of what the engine does when its store fails: a
//! [`MemoryStore`] whose commits fail while `failing` is set (a full disk), and whose load of
//! one room panics (a damaged page that makes the store library panic). Shared with the
//! end-to-end tests (`#[path]`), so both test the same faults.

use std::sync::atomic::{AtomicBool, Ordering};

use confab_actors::store::{HistoryStore, MemoryStore, Retention, RoomAppend, StoreError, StoredRoom};
use confab_engine::RoomName;

/// A memory store with injected faults.
#[derive(Debug)]
pub(crate) struct FaultyStore {
    inner: MemoryStore,
    /// While set, every commit fails (and stores nothing), like a full disk.
    failing: AtomicBool,
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
            panics_on: panics_on.map(Into::into),
        }
    }

    /// Makes commits fail (`true`) or succeed again.
    pub(crate) fn fail(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }
}

impl HistoryStore for FaultyStore {
    fn load_room(&self, room: &RoomName) -> Result<Option<StoredRoom>, StoreError> {
        if self.panics_on.as_deref() == Some(room.as_str()) {
            panic!("injected: a damaged page under room {room}");
        }
        self.inner.load_room(room)
    }

    fn room_names(&self) -> Result<Vec<RoomName>, StoreError> {
        self.inner.room_names()
    }

    fn append(&self, appends: &[RoomAppend], now_ms: u64) -> Result<(), StoreError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::Io { path: "faulty".into(), reason: "No space left on device (injected)".into() });
        }
        self.inner.append(appends, now_ms)
    }
}
