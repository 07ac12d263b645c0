//! A store in memory: "durable" for the life of the process. Tests use it to restart an engine
//! (a new engine on the same store) without a disk.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Mutex;

use confab_engine::RoomName;

use super::{HistoryStore, Retention, RoomAppend, StoreError, StoredRoom, StoredSummary};

/// History kept in memory, with the same retention as the durable store.
#[derive(Debug)]
pub struct MemoryStore {
    rooms: Mutex<BTreeMap<RoomName, StoredRoom>>,
    retention: Retention,
}

impl MemoryStore {
    /// An empty store keeping `retention`.
    pub fn new(retention: Retention) -> Self {
        Self { rooms: Mutex::new(BTreeMap::new()), retention }
    }

    fn rooms(&self) -> std::sync::MutexGuard<'_, BTreeMap<RoomName, StoredRoom>> {
        // A panic while holding the lock cannot leave a half-written room (each update below
        // is a single push or drain), so a poisoned lock is still consistent.
        self.rooms.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl HistoryStore for MemoryStore {
    fn load_room(&self, room: &RoomName) -> Result<Option<StoredRoom>, StoreError> {
        Ok(self.rooms().get(room).cloned())
    }

    fn room_summaries(&self, after: Option<&RoomName>, limit: usize) -> Result<Vec<StoredSummary>, StoreError> {
        let rooms = self.rooms();
        let from = match after {
            Some(after) => Bound::Excluded(after),
            None => Bound::Unbounded,
        };
        let summaries = rooms.range::<RoomName, _>((from, Bound::Unbounded)).take(limit).map(|(name, stored)| {
            let first_retained_seq = stored.tail.first().map_or(stored.last_seq + 1, |message| message.seq);
            StoredSummary { name: name.clone(), epoch: stored.epoch, last_seq: stored.last_seq, first_retained_seq }
        });
        Ok(summaries.collect())
    }

    fn append(&self, appends: &[RoomAppend], now_ms: u64) -> Result<(), StoreError> {
        let mut rooms = self.rooms();
        for append in appends {
            let stored = rooms.entry(append.room.clone()).or_insert_with(|| StoredRoom {
                epoch: append.epoch,
                last_seq: 0,
                tail: Vec::new(),
            });
            for message in &append.messages {
                stored.last_seq = message.seq;
                stored.tail.push((**message).clone());
            }
            let excess = stored.tail.len().saturating_sub(self.retention.len_max);
            stored.tail.drain(..excess);
            if let Some(age_max_ms) = self.retention.age_max_ms {
                let cutoff = now_ms.saturating_sub(age_max_ms);
                stored.tail.retain(|message| message.accepted_at.as_millis() >= cutoff);
            }
        }
        Ok(())
    }
}
