//! The simulated store: what the single-node durable path's local log (the redb store behind
//! the writer thread's group commit) does, in virtual time, with the faults a disk has. The
//! simulator runs its one engine over this with `--durable`.
//!
//! Only this process writes it ([`RoomLog::is_single_writer`]), so a room sends its appends
//! without waiting for the one before, and the store answers them in order, `Appended` or
//! `Failed`, as the writer thread does:
//!
//! - **failed commit** (`--commit-failures`): nothing of the append is stored and its room
//!   hears `Failed`; the room is fenced, so appends it had already sent behind the failed one
//!   (holding messages its rollback dropped) are refused too, until one starts right after
//!   the room's last stored message (or the room is loaded again after a restart);
//! - **crash** (`SimStore::crash`): appends not yet committed are lost, as the writer
//!   thread's queue is when the process dies; whatever was committed stays, answered or not.
//!
//! Each append takes a little time to commit, drawn when it is made; commits happen in the
//! order appends are made (one writer), never earlier than the one before.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use confab_actors::room_log::{AppendOutcome, LoadedRoom, RoomLog};
use confab_engine::{Append, ChatMessage, LogEntry, Origin, Position, RoomError, RoomName, Seq};
use futures::future::{BoxFuture, FutureExt};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::time::Instant;

/// How long a commit takes at most (uniform from 1 ms): an fsync.
const COMMIT_LATENCY_MAX: Duration = Duration::from_millis(10);

/// Out-of-sequence appends remembered in full for the checker (more are counted only).
const GAPS_KEPT: usize = 20;

/// Every entry of the store has this origin: the process is its one writer (as the local
/// log's entries do).
const LOCAL: Origin = Origin { node: 0, append: 0 };

/// What the simulated store did in a run with `--durable`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct StoreFaults {
    /// Appends committed.
    pub commits: u64,
    /// Commits that failed (`--commit-failures`): nothing of them was stored.
    pub failed_commits: u64,
    /// Appends refused because an earlier one of their room had failed (rolled back).
    pub fenced: u64,
    /// Appends lost because the process crashed before they were committed.
    pub lost_in_crash: u64,
    /// Appends refused because they did not continue their room's stored messages: an
    /// engine bug (the writer thread would store a gap), so a clean run has none; the
    /// checker reports each as a violation.
    pub out_of_sequence: u64,
}

/// An append that did not continue its room's stored messages.
#[derive(Clone, Debug)]
pub(crate) struct Gap {
    pub(crate) room: RoomName,
    /// The sequence number the store expected, and the one the append started with.
    pub(crate) expected: Seq,
    pub(crate) got: Seq,
    pub(crate) at: Instant,
}

/// The simulated store (see the module). Clones share one store, which outlives the engines
/// that crash and restart over it.
#[derive(Clone)]
pub(crate) struct SimStore {
    state: Arc<Mutex<State>>,
}

struct State {
    rng: ChaCha8Rng,
    commit_failure: f64,
    /// Messages kept per room, as the engine's history (older ones are compacted away).
    retention: usize,
    rooms: BTreeMap<RoomName, StoredRoom>,
    /// Rooms whose last commit failed, and the sequence number their first append after the
    /// rollback starts at (the writer thread's fence). Bounded by the number of rooms.
    fenced: BTreeMap<RoomName, Seq>,
    /// The process's run: a crash starts a new one, and an append made in an earlier run that
    /// was not committed by then never is.
    run: u64,
    /// When the last append made is committed: the next one commits no earlier.
    last_commit_at: Instant,
    faults: StoreFaults,
    /// The first out-of-sequence appends (at most [`GAPS_KEPT`]).
    gaps: Vec<Gap>,
}

struct StoredRoom {
    epoch: u64,
    last_seq: Seq,
    tail: VecDeque<Arc<ChatMessage>>,
}

impl SimStore {
    /// An empty store that fails a share `commit_failure` of its commits, drawn from `seed`,
    /// and keeps `retention` messages per room.
    pub(crate) fn new(seed: u64, commit_failure: f64, retention: usize) -> Self {
        let state = State {
            rng: ChaCha8Rng::seed_from_u64(seed),
            commit_failure,
            retention,
            rooms: BTreeMap::new(),
            fenced: BTreeMap::new(),
            run: 0,
            last_commit_at: Instant::now(),
            faults: StoreFaults::default(),
            gaps: Vec::new(),
        };
        Self { state: Arc::new(Mutex::new(state)) }
    }

    /// The process crashed: every append not committed yet is lost.
    pub(crate) fn crash(&self) {
        let mut state = self.lock();
        state.run += 1;
        // The writer's fences die with the process; a restarted room loads what is stored.
        state.fenced.clear();
    }

    /// What the store did so far.
    pub(crate) fn faults(&self) -> StoreFaults {
        self.lock().faults
    }

    /// The first appends that did not continue their room (an engine bug).
    pub(crate) fn gaps(&self) -> Vec<Gap> {
        self.lock().gaps.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // One thread; a panic fails the run anyway.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    /// Commits (or fails, or refuses) one append made in run `run`, now that its time came.
    fn commit(&mut self, room: &RoomName, epoch: u64, append: Append, run: u64, fails: bool) -> AppendOutcome {
        let storage = |reason: &str| AppendOutcome::Failed(RoomError::Storage { reason: reason.to_owned() });
        if run != self.run {
            self.faults.lost_in_crash += 1;
            return storage("the process crashed before the commit");
        }
        let first = append.messages.first().map_or(0, |message| message.seq);
        if let Some(&restart) = self.fenced.get(room) {
            if first != restart {
                // Sent before the room rolled back: its messages no longer exist.
                self.faults.fenced += 1;
                return storage("an earlier commit of this room failed");
            }
            self.fenced.remove(room);
        }
        if fails {
            self.faults.failed_commits += 1;
            self.fenced.insert(room.clone(), first);
            return storage("simulated commit failure");
        }
        let stored =
            self.rooms.entry(room.clone()).or_insert_with(|| StoredRoom { epoch, last_seq: 0, tail: VecDeque::new() });
        let contiguous = append.messages.iter().zip(stored.last_seq + 1..).all(|(message, seq)| message.seq == seq);
        if !contiguous {
            self.faults.out_of_sequence += 1;
            if self.gaps.len() < GAPS_KEPT {
                let gap = Gap { room: room.clone(), expected: stored.last_seq + 1, got: first, at: Instant::now() };
                self.gaps.push(gap);
            }
            return storage("the append does not continue the room's stored messages");
        }
        self.faults.commits += 1;
        for message in append.messages {
            stored.last_seq = message.seq;
            stored.tail.push_back(message);
        }
        while stored.tail.len() > self.retention {
            stored.tail.pop_front();
        }
        AppendOutcome::Appended(Position(stored.last_seq))
    }
}

impl RoomLog for SimStore {
    fn load(&self, room: &RoomName) -> BoxFuture<'static, Result<Option<LoadedRoom>, RoomError>> {
        let mut state = self.lock();
        // The room continues from what is stored: whatever it lost before is behind it.
        state.fenced.remove(room);
        let loaded = state.rooms.get(room).map(|stored| LoadedRoom {
            epoch: stored.epoch,
            last_seq: stored.last_seq,
            last_position: Position(stored.last_seq),
            tail: stored.tail.iter().map(|message| (**message).clone()).collect(),
        });
        futures::future::ready(Ok(loaded)).boxed()
    }

    fn append(&self, room: &RoomName, epoch: u64, append: Append) -> BoxFuture<'static, AppendOutcome> {
        // Drawn when the append is made, in the order appends are made.
        let (commit_at, run, fails) = {
            let mut state = self.lock();
            let latency = Duration::from_micros(state.rng.random_range(1_000..=COMMIT_LATENCY_MAX.as_micros() as u64));
            let commit_failure = state.commit_failure;
            let fails = commit_failure > 0.0 && state.rng.random_bool(commit_failure);
            let commit_at = (Instant::now() + latency).max(state.last_commit_at);
            state.last_commit_at = commit_at;
            (commit_at, state.run, fails)
        };
        let (this, room) = (self.clone(), room.clone());
        async move {
            tokio::time::sleep_until(commit_at).await;
            this.lock().commit(&room, epoch, append, run, fails)
        }
        .boxed()
    }

    fn read_after(
        &self,
        room: &RoomName,
        after: Position,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<LogEntry>, RoomError>> {
        let state = self.lock();
        let entries = state.rooms.get(room).map(|stored| {
            let after = stored.tail.iter().filter(|message| message.seq > after.0).take(limit);
            after.map(|message| LogEntry { position: Position(message.seq), origin: LOCAL, message: message.clone() })
        });
        futures::future::ready(Ok(entries.into_iter().flatten().collect())).boxed()
    }

    fn last_position(&self, room: &RoomName) -> BoxFuture<'static, Result<Position, RoomError>> {
        let last = self.lock().rooms.get(room).map_or(0, |stored| stored.last_seq);
        futures::future::ready(Ok(Position(last))).boxed()
    }

    fn is_single_writer(&self) -> bool {
        true
    }
}
