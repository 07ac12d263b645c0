//! The writer thread: the only code that calls [`HistoryStore::append`]. It takes every request
//! queued while the previous commit ran and makes them durable in one commit (group commit:
//! one fsync serves many messages across rooms), then tells each request how far its room is
//! durable.
//!
//! A failed commit fences the rooms in it, so nothing durable ever follows a lost write. Each
//! such room hears of the failure once, and rolls back every message it had not yet seen
//! durable. Requests that room had already queued behind the failed one hold messages the
//! rollback dropped: the writer discards them without a word. The fence lifts when the room
//! sends a request that starts right after its last durable message, which only a rolled-back
//! room can send, or when the registry loads the room afresh from the store ([`Writer::loaded`]:
//! a retired room starts again from what is stored, whatever that is). Other rooms are not fenced, and writes resume as soon as a commit succeeds
//! again. Until then the store's state ([`StoreState`]) says the store is failing, and the
//! store is tried at most once per [`PROBE_INTERVAL`]: with the next batch if one is queued
//! (batches in between fail at once), else with [`HistoryStore::probe`]. A failing disk
//! therefore costs one attempt a second, however fast sends arrive, and reopening a store
//! after an I/O error (redb repairs it) is not repeated for every batch.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use confab_engine::{RoomName, Seq};
use tokio::sync::oneshot;

use super::{HistoryStore, RoomAppend, StoreError, StoreState, guard};

/// Requests gathered into one commit at most; bounds a commit's size and the latency of the
/// first request in it.
const BATCH_LEN_MAX: usize = 4_096;

/// How often a failing store is tried again: with a queued batch, or with a probe while none
/// is queued, so health recovers when the disk does even if nobody sends.
pub(crate) const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// One room's messages to make durable, and where to say how far they are durable (or why
/// the commit failed).
pub(crate) struct WriteRequest {
    pub(crate) append: RoomAppend,
    pub(crate) done: oneshot::Sender<Result<Seq, StoreError>>,
}

/// What the writer thread is asked to do, in order.
enum Job {
    /// Make a room's messages durable.
    Write(WriteRequest),
    /// A room was loaded from the store: it continues from what is stored, so whatever it
    /// lost before is behind it and its fence lifts.
    Loaded(RoomName),
}

/// The rooms' handle to the writer thread. The thread ends when every handle is dropped.
#[derive(Clone)]
pub(crate) struct Writer {
    jobs: Sender<Job>,
}

/// The writer thread itself, to join at shutdown once every [`Writer`] is dropped.
pub(crate) struct WriterThread(JoinHandle<()>);

impl WriterThread {
    /// Waits for the thread to finish its last commit. Blocks: call it off the async threads.
    pub(crate) fn join(self) {
        // The thread catches store panics itself; a panic elsewhere has been reported already.
        let _ = self.0.join();
    }
}

impl Writer {
    /// Starts the writer thread over `store`; it reports commits in `state`.
    pub(crate) fn start(store: Arc<dyn HistoryStore>, state: Arc<StoreState>) -> std::io::Result<(Self, WriterThread)> {
        let (jobs, queue) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("confab-writer".into())
            .spawn(move || Committer::new(store, state).run(&queue))?;
        Ok((Self { jobs }, WriterThread(thread)))
    }

    /// Queues a write; the outcome comes back through the request's `done`.
    pub(crate) fn submit(&self, request: WriteRequest) -> Result<(), StoreError> {
        self.jobs
            .send(Job::Write(request))
            .map_err(|_| StoreError::Io { path: "writer".into(), reason: "the writer thread has stopped".into() })
    }

    /// Tells the writer that `room` was just loaded from the store (before its actor exists,
    /// so this comes before any of its writes). A stopped writer has nothing to lift.
    pub(crate) fn loaded(&self, room: RoomName) {
        let _ = self.jobs.send(Job::Loaded(room));
    }
}

struct Committer {
    store: Arc<dyn HistoryStore>,
    state: Arc<StoreState>,
    /// Rooms whose last commit failed, and the sequence number their first write after the
    /// rollback starts at. Bounded by the number of rooms.
    fenced: BTreeMap<RoomName, Seq>,
    /// When the store was last tried while failing; `None` while it commits.
    failed_attempt: Option<Instant>,
}

impl Committer {
    fn new(store: Arc<dyn HistoryStore>, state: Arc<StoreState>) -> Self {
        Self { store, state, fenced: BTreeMap::new(), failed_attempt: None }
    }

    fn run(mut self, queue: &Receiver<Job>) {
        loop {
            let first = if let Some(attempt) = self.failed_attempt {
                let wait = PROBE_INTERVAL.saturating_sub(attempt.elapsed());
                match queue.recv_timeout(wait) {
                    Ok(request) => request,
                    Err(RecvTimeoutError::Timeout) => {
                        // The outcome is recorded in the store state, which health reads.
                        let _ = self.attempt(|store| store.probe(now_ms()));
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            } else {
                match queue.recv() {
                    Ok(request) => request,
                    Err(_) => return,
                }
            };
            // Fences are applied as jobs arrive, in order: a `Loaded` lifts a room's fence for
            // the writes after it, not for stale ones before it.
            let mut batch = Vec::new();
            let mut next = Some(first);
            while let Some(job) = next {
                match job {
                    Job::Write(request) if self.admit(&request) => batch.push(request),
                    Job::Write(_) => {}
                    Job::Loaded(room) => {
                        self.fenced.remove(&room);
                    }
                }
                next = if batch.len() < BATCH_LEN_MAX { queue.try_recv().ok() } else { None };
            }
            self.write(batch);
        }
    }

    /// Commits one batch and tells its rooms.
    fn write(&mut self, batch: Vec<WriteRequest>) {
        if batch.is_empty() {
            return;
        }
        let appends: Vec<RoomAppend> = batch.iter().map(|request| request.append.clone()).collect();
        let outcome = match (self.failed_attempt, self.state.failure()) {
            (Some(attempt), Some(failure)) if attempt.elapsed() < PROBE_INTERVAL => Err(failure),
            _ => self.attempt(|store| store.append(&appends, now_ms())),
        };
        match outcome {
            Ok(()) => {
                for request in batch {
                    let upto: Seq = request.append.messages.last().map_or(0, |message| message.seq);
                    // A stopped room has nobody left to tell.
                    let _ = request.done.send(Ok(upto));
                }
            }
            Err(error) => {
                for request in batch {
                    let first = request.append.messages.first().map_or(1, |message| message.seq);
                    if self.fenced.contains_key(&request.append.room) {
                        // Its room was told already; this request's messages are rolled back.
                        continue;
                    }
                    self.fenced.insert(request.append.room.clone(), first);
                    let _ = request.done.send(Err(error.clone()));
                }
            }
        }
    }

    /// Whether a request may be written: not one that a fenced room queued before it rolled
    /// back (those messages no longer exist). A request that starts where the rollback left
    /// the room lifts its fence.
    fn admit(&mut self, request: &WriteRequest) -> bool {
        let Some(&restart) = self.fenced.get(&request.append.room) else { return true };
        let first = request.append.messages.first().map_or(restart, |message| message.seq);
        if first == restart {
            self.fenced.remove(&request.append.room);
            true
        } else {
            false
        }
    }

    /// One commit or probe; records the outcome in the store's state.
    fn attempt(&mut self, commit: impl FnOnce(&dyn HistoryStore) -> Result<(), StoreError>) -> Result<(), StoreError> {
        let outcome = guard::catch(|| commit(self.store.as_ref())).unwrap_or_else(|panic| {
            Err(StoreError::Io { path: "history store".into(), reason: format!("a commit failed: {panic}") })
        });
        self.failed_attempt = outcome.is_err().then(Instant::now);
        match &outcome {
            Ok(()) if self.state.failure().is_some() => {
                tracing::info!("history commits succeed again; writes resume");
                self.state.set(None);
            }
            Ok(()) => {}
            Err(error) => {
                if self.state.failure().is_none() {
                    tracing::error!(%error, "history commit failed; the rooms in it rolled back, health is NOT_SERVING until a commit succeeds");
                }
                self.state.set(Some(error.clone()));
            }
        }
        outcome
    }
}

/// Wall-clock milliseconds: the server's `accepted_at` clock starts at the Unix epoch, so age
/// retention compares like with like. (The simulator never uses a durable store.)
fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|since| since.as_millis() as u64).unwrap_or(0)
}
