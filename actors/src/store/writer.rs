//! The writer thread: the only code that calls [`HistoryStore::append`]. It takes every request
//! queued while the previous commit ran and makes them durable in one commit (group commit:
//! one fsync serves many messages across rooms), then tells each room how far it is durable.
//!
//! A failed commit is sticky: the writer fails every later request too, so a room can never
//! have a durable message after a lost one. The operator restarts the server, which reloads the
//! last good state.

use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::{SystemTime, UNIX_EPOCH};

use confab_engine::Seq;
use kameo::actor::ActorRef;

use super::{HistoryStore, RoomAppend, StoreError};
use crate::room_actor::{Persisted, RoomActor};

/// Requests gathered into one commit at most; bounds a commit's size and the latency of the
/// first request in it.
const BATCH_LEN_MAX: usize = 4_096;

/// One room's messages to make durable, and whom to tell.
pub(crate) struct WriteRequest {
    pub(crate) append: RoomAppend,
    pub(crate) room: ActorRef<RoomActor>,
}

/// The rooms' handle to the writer thread. The thread ends when every handle is dropped.
#[derive(Clone)]
pub(crate) struct Writer {
    requests: Sender<WriteRequest>,
}

impl Writer {
    /// Starts the writer thread over `store`.
    pub(crate) fn start(store: Arc<dyn HistoryStore>) -> std::io::Result<Self> {
        let (requests, queue) = mpsc::channel();
        std::thread::Builder::new().name("confab-writer".into()).spawn(move || run(store.as_ref(), queue))?;
        Ok(Self { requests })
    }

    /// Queues a write; the room hears back with a [`Persisted`] message.
    pub(crate) fn submit(&self, request: WriteRequest) -> Result<(), StoreError> {
        self.requests
            .send(request)
            .map_err(|_| StoreError::Io { path: "writer".into(), reason: "the writer thread has stopped".into() })
    }
}

fn run(store: &dyn HistoryStore, queue: Receiver<WriteRequest>) {
    let mut failed: Option<StoreError> = None;
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < BATCH_LEN_MAX {
            match queue.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        if failed.is_none() {
            let appends: Vec<RoomAppend> = batch.iter().map(|request| request.append.clone()).collect();
            if let Err(error) = store.append(&appends, now_ms()) {
                tracing::error!(%error, "history commit failed; refusing all further writes");
                failed = Some(error);
            }
        }
        for request in batch {
            let upto: Seq = request.append.messages.last().map_or(0, |message| message.seq);
            let outcome = match &failed {
                None => Ok(upto),
                Some(error) => Err(error.clone()),
            };
            // A stopped room has nobody left to tell.
            let _ = request.room.tell(Persisted(outcome)).blocking_send();
        }
    }
}

/// Wall-clock milliseconds: the server's `accepted_at` clock starts at the Unix epoch, so age
/// retention compares like with like. (The simulator never uses a durable store.)
fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|since| since.as_millis() as u64).unwrap_or(0)
}
