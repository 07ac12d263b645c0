//! The local log: a [`RoomLog`] over this process's [`HistoryStore`], written through the
//! writer thread's group commit. Only this process writes it, so an append never conflicts,
//! and a room's positions are its sequence numbers.

use std::sync::Arc;

use confab_engine::{Append, LogEntry, Origin, Position, RoomError, RoomName};
use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::oneshot;

use super::writer::{WriteRequest, Writer};
use super::{HistoryStore, RoomAppend, StoreError, StoredRoom, guard};
use crate::room_log::{AppendOutcome, LoadedRoom, RoomLog};

/// Every entry of the local log has this origin: the process is its one writer.
const LOCAL: Origin = Origin { node: 0, append: 0 };

/// This process's store as a room log (see the module).
pub struct LocalLog {
    store: Arc<dyn HistoryStore>,
    writer: Writer,
}

impl LocalLog {
    pub(crate) fn new(store: Arc<dyn HistoryStore>, writer: Writer) -> Self {
        Self { store, writer }
    }
}

impl RoomLog for LocalLog {
    fn load(&self, room: &RoomName) -> BoxFuture<'static, Result<Option<LoadedRoom>, RoomError>> {
        let (store, writer, room) = (Arc::clone(&self.store), self.writer.clone(), room.clone());
        async move {
            let stored = load_off_thread(store, room.clone()).await?;
            // The room continues from what is stored: whatever it lost before is behind it,
            // and the writer lifts its fence (before any write of the new room actor).
            writer.loaded(room);
            Ok(stored.map(|stored| LoadedRoom {
                epoch: stored.epoch,
                last_seq: stored.last_seq,
                last_position: Position(stored.last_seq),
                tail: stored.tail,
            }))
        }
        .boxed()
    }

    fn append(&self, room: &RoomName, epoch: u64, append: Append) -> BoxFuture<'static, AppendOutcome> {
        let (done, outcome) = oneshot::channel();
        let request =
            WriteRequest { append: RoomAppend { room: room.clone(), epoch, messages: append.messages }, done };
        let submitted = self.writer.submit(request);
        async move {
            submitted.map_err(failed)?;
            match outcome.await {
                Ok(Ok(last_seq)) => Ok(AppendOutcome::Appended(Position(last_seq))),
                Ok(Err(error)) => Err(failed(error)),
                Err(_) => Err(failed(StoreError::Io {
                    path: "writer".into(),
                    reason: "the writer thread stopped before committing".into(),
                })),
            }
        }
        .map(|outcome: Result<AppendOutcome, AppendOutcome>| outcome.unwrap_or_else(|failed| failed))
        .boxed()
    }

    fn read_after(
        &self,
        room: &RoomName,
        after: Position,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<LogEntry>, RoomError>> {
        let (store, room) = (Arc::clone(&self.store), room.clone());
        async move {
            let stored = load_off_thread(store, room).await?;
            let tail = stored.map(|stored| stored.tail).unwrap_or_default();
            let after = tail.into_iter().filter(|message| message.seq > after.0).take(limit);
            Ok(after
                .map(|message| LogEntry { position: Position(message.seq), origin: LOCAL, message: Arc::new(message) })
                .collect())
        }
        .boxed()
    }

    fn is_single_writer(&self) -> bool {
        true
    }

    fn last_position(&self, room: &RoomName) -> BoxFuture<'static, Result<Position, RoomError>> {
        let (store, room) = (Arc::clone(&self.store), room.clone());
        async move {
            let stored = load_off_thread(store, room).await?;
            Ok(Position(stored.map_or(0, |stored| stored.last_seq)))
        }
        .boxed()
    }
}

/// A failed commit: nothing of it is stored, and its senders are told why.
fn failed(error: StoreError) -> AppendOutcome {
    AppendOutcome::Failed(RoomError::Storage { reason: error.to_string() })
}

/// [`load`] on a blocking thread, off the async workers.
async fn load_off_thread(store: Arc<dyn HistoryStore>, room: RoomName) -> Result<Option<StoredRoom>, RoomError> {
    let name = room.clone();
    let loaded = tokio::task::spawn_blocking(move || load(store.as_ref(), &name)).await;
    loaded.unwrap_or_else(|stopped| {
        Err(RoomError::Storage { reason: format!("room {room}: loading it did not finish: {stopped}") })
    })
}

/// Loads a room from the store. Damage, and a panic inside the store, are DATA_LOSS (the
/// registry fences the room); an I/O failure is a plain storage refusal, to try again.
fn load(store: &dyn HistoryStore, name: &RoomName) -> Result<Option<StoredRoom>, RoomError> {
    match guard::catch(|| store.load_room(name)) {
        Ok(Ok(stored)) => Ok(stored),
        Ok(Err(error @ (StoreError::Damaged { .. } | StoreError::Corrupt { .. }))) => {
            Err(RoomError::DataLoss { reason: error.to_string() })
        }
        Ok(Err(error)) => Err(RoomError::Storage { reason: format!("room {name}: loading it failed: {error}") }),
        Err(panic) => {
            Err(RoomError::DataLoss { reason: format!("room {name}: its stored history cannot be read: {panic}") })
        }
    }
}
