//! The simulated replicated log: what cluster mode's JetStream log does, in virtual time, with
//! the faults a real cluster has. The simulator runs several engines (nodes) over one of these
//! when `--nodes` is above 1.
//!
//! Appends are conditional (one wins each position, like JetStream's expected last subject
//! sequence) and take a little time; some meet a fault, drawn from the log's own seeded
//! generator in the order appends are made (deterministic on the simulator's single thread):
//!
//! - **lost acknowledgement**: the append commits, but its writer hears the outcome is unknown
//!   (it sends the same append again, which then conflicts with itself);
//! - **timeout**: the append does not commit and its writer hears, after a while, that the
//!   outcome is unknown;
//! - **leader election**: the append waits several seconds before the log takes it.
//!
//! Every node's feed of the log brings each append late (a delay drawn per append), in order.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use confab_actors::room_log::{AppendOutcome, LoadedRoom, RoomLog};
use confab_engine::{Append, LogEntry, Position, RoomError, RoomName};
use futures::future::{BoxFuture, FutureExt};
use futures::stream::{BoxStream, StreamExt};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The epoch of every room in the simulated log.
const EPOCH: u64 = 1;

/// How long an append travels to the log, at most (uniform from 1 ms).
const APPEND_LATENCY_MAX: Duration = Duration::from_millis(5);
/// How late a node's feed brings an append, at most (uniform from 0).
const FEED_DELAY_MAX: Duration = Duration::from_millis(50);
/// Share of appends whose acknowledgement is lost although they committed.
const LOST_ACK: f64 = 0.01;
/// Share of appends that do not commit and time out.
const TIMEOUT: f64 = 0.01;
/// How long a timed-out append's writer waits before it hears the outcome is unknown.
const TIMEOUT_AFTER: Duration = Duration::from_secs(1);
/// Share of appends that meet a leader election.
const ELECTION: f64 = 0.002;
/// How long an election holds an append up, at most (uniform from 1 s).
const ELECTION_MAX: Duration = Duration::from_secs(5);

/// What happens to one append.
#[derive(Clone, Copy, Debug)]
struct Fate {
    latency: Duration,
    election: Option<Duration>,
    timeout: bool,
    lost_ack: bool,
    feed_delay: Duration,
}

/// The simulated log (see the module). Clones share one log.
#[derive(Clone)]
pub(crate) struct SimLog {
    state: Arc<Mutex<State>>,
}

struct State {
    rooms: BTreeMap<RoomName, Vec<LogEntry>>,
    /// The last position given, across rooms.
    last: u64,
    /// Each node's feed: entries and when they arrive.
    followers: Vec<mpsc::UnboundedSender<(Instant, Vec<LogEntry>)>>,
    rng: ChaCha8Rng,
    /// Counts of the faults met, for the report.
    faults: LogFaults,
}

/// What the simulated log did in a run with several nodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LogFaults {
    /// Appends the log took (resends included).
    pub appends: u64,
    /// Appends refused because another node had taken the position.
    pub conflicts: u64,
    /// Appends committed whose acknowledgement was lost.
    pub lost_acks: u64,
    /// Appends not committed that timed out.
    pub timeouts: u64,
    /// Appends held up by a leader election.
    pub elections: u64,
}

impl SimLog {
    /// An empty log whose faults are drawn from `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        let state = State {
            rooms: BTreeMap::new(),
            last: 0,
            followers: Vec::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            faults: LogFaults::default(),
        };
        Self { state: Arc::new(Mutex::new(state)) }
    }

    /// The faults met so far.
    pub(crate) fn faults(&self) -> LogFaults {
        self.lock().faults
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // One thread; a panic fails the run anyway.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn fate(&self) -> Fate {
        let mut state = self.lock();
        let rng = &mut state.rng;
        let latency = Duration::from_micros(rng.random_range(1_000..=APPEND_LATENCY_MAX.as_micros() as u64));
        let election = rng
            .random_bool(ELECTION)
            .then(|| Duration::from_millis(rng.random_range(1_000..=ELECTION_MAX.as_millis() as u64)));
        let timeout = rng.random_bool(TIMEOUT);
        let lost_ack = !timeout && rng.random_bool(LOST_ACK);
        let feed_delay = Duration::from_micros(rng.random_range(0..=FEED_DELAY_MAX.as_micros() as u64));
        Fate { latency, election, timeout, lost_ack, feed_delay }
    }

    /// Commits `append` if its expectation holds; its last position, or `None` on a conflict.
    fn commit(&self, room: &RoomName, append: Append, feed_delay: Duration) -> Option<Position> {
        let mut state = self.lock();
        let state = &mut *state;
        let entries = state.rooms.entry(room.clone()).or_default();
        if entries.last().map_or(Position(0), |entry| entry.position) != append.expected_last {
            state.faults.conflicts += 1;
            return None;
        }
        let mut appended = Vec::with_capacity(append.messages.len());
        for message in append.messages {
            state.last += 1;
            appended.push(LogEntry { position: Position(state.last), origin: append.origin, message });
        }
        entries.extend(appended.iter().cloned());
        let arrives = Instant::now() + feed_delay;
        state.followers.retain(|follower| follower.send((arrives, appended.clone())).is_ok());
        Some(Position(state.last))
    }
}

impl RoomLog for SimLog {
    fn load(&self, room: &RoomName) -> BoxFuture<'static, Result<Option<LoadedRoom>, RoomError>> {
        let state = self.lock();
        let loaded = state.rooms.get(room).and_then(|entries| {
            let last = entries.last()?;
            Some(LoadedRoom {
                epoch: EPOCH,
                last_seq: last.message.seq,
                last_position: last.position,
                tail: entries.iter().map(|entry| (*entry.message).clone()).collect(),
            })
        });
        futures::future::ready(Ok(loaded)).boxed()
    }

    fn append(&self, room: &RoomName, _epoch: u64, append: Append) -> BoxFuture<'static, AppendOutcome> {
        let fate = self.fate();
        let (log, room) = (self.clone(), room.clone());
        async move {
            tokio::time::sleep(fate.latency).await;
            if let Some(election) = fate.election {
                log.lock().faults.elections += 1;
                tokio::time::sleep(election).await;
            }
            log.lock().faults.appends += 1;
            if fate.timeout {
                log.lock().faults.timeouts += 1;
                tokio::time::sleep(TIMEOUT_AFTER).await;
                return AppendOutcome::Unknown;
            }
            match log.commit(&room, append, fate.feed_delay) {
                None => AppendOutcome::Conflict,
                Some(_) if fate.lost_ack => {
                    log.lock().faults.lost_acks += 1;
                    AppendOutcome::Unknown
                }
                Some(last) => AppendOutcome::Appended(last),
            }
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
        let entries = state.rooms.get(room).map(Vec::as_slice).unwrap_or_default();
        let read = entries.iter().filter(|entry| entry.position > after).take(limit).cloned().collect();
        futures::future::ready(Ok(read)).boxed()
    }

    fn last_position(&self, room: &RoomName) -> BoxFuture<'static, Result<Position, RoomError>> {
        let state = self.lock();
        let last = state.rooms.get(room).and_then(|entries| entries.last()).map_or(Position(0), |entry| entry.position);
        futures::future::ready(Ok(last)).boxed()
    }

    fn epoch(&self) -> Option<u64> {
        Some(EPOCH)
    }

    fn follow(&self) -> Option<BoxStream<'static, LogEntry>> {
        let (follower, arriving) = mpsc::unbounded_channel();
        self.lock().followers.push(follower);
        let start = (arriving, VecDeque::new());
        let feed = futures::stream::unfold(start, |(mut arriving, mut ready)| async move {
            loop {
                if let Some(entry) = ready.pop_front() {
                    return Some((entry, (arriving, ready)));
                }
                let (arrives, entries) = arriving.recv().await?;
                // In order: an append arrives no earlier than the one before it.
                tokio::time::sleep_until(arrives).await;
                ready.extend(entries);
            }
        });
        Some(feed.boxed())
    }
}
