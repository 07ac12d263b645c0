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

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use confab_actors::room_log::{AppendOutcome, LoadedRoom, MemoryLog, RoomLog};
use confab_engine::{Append, LogEntry, Position, RoomError, RoomName};
use futures::future::{BoxFuture, FutureExt};
use futures::stream::{BoxStream, StreamExt};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::time::Instant;

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
}

/// The simulated log (see the module): the in-memory replicated log behind a layer of
/// faults. Clones share one log.
#[derive(Clone)]
pub(crate) struct SimLog {
    log: Arc<MemoryLog>,
    state: Arc<Mutex<State>>,
}

struct State {
    rng: ChaCha8Rng,
    /// Feeds made so far: each draws its delays from a generator of its own.
    followers: u64,
    seed: u64,
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
        let state = State { rng: ChaCha8Rng::seed_from_u64(seed), followers: 0, seed, faults: LogFaults::default() };
        Self { log: Arc::new(MemoryLog::new()), state: Arc::new(Mutex::new(state)) }
    }

    /// The faults met so far.
    pub(crate) fn faults(&self) -> LogFaults {
        self.lock().faults
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // One thread; a panic fails the run anyway.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn count(&self, fault: impl FnOnce(&mut LogFaults) -> &mut u64) {
        *fault(&mut self.lock().faults) += 1;
    }

    /// What happens to the next append, drawn in the order appends are made.
    fn fate(&self) -> Fate {
        let mut state = self.lock();
        let rng = &mut state.rng;
        let latency = Duration::from_micros(rng.random_range(1_000..=APPEND_LATENCY_MAX.as_micros() as u64));
        let election = rng
            .random_bool(ELECTION)
            .then(|| Duration::from_millis(rng.random_range(1_000..=ELECTION_MAX.as_millis() as u64)));
        let timeout = rng.random_bool(TIMEOUT);
        let lost_ack = !timeout && rng.random_bool(LOST_ACK);
        Fate { latency, election, timeout, lost_ack }
    }
}

impl RoomLog for SimLog {
    fn load(&self, room: &RoomName) -> BoxFuture<'static, Result<Option<LoadedRoom>, RoomError>> {
        self.log.load(room)
    }

    fn append(&self, room: &RoomName, epoch: u64, append: Append) -> BoxFuture<'static, AppendOutcome> {
        let fate = self.fate();
        let (this, room) = (self.clone(), room.clone());
        async move {
            tokio::time::sleep(fate.latency).await;
            if let Some(election) = fate.election {
                this.count(|faults| &mut faults.elections);
                tokio::time::sleep(election).await;
            }
            this.count(|faults| &mut faults.appends);
            if fate.timeout {
                this.count(|faults| &mut faults.timeouts);
                tokio::time::sleep(TIMEOUT_AFTER).await;
                return AppendOutcome::Unknown { reason: "simulated timeout".to_owned() };
            }
            match this.log.append(&room, epoch, append).await {
                AppendOutcome::Conflict => {
                    this.count(|faults| &mut faults.conflicts);
                    AppendOutcome::Conflict
                }
                AppendOutcome::Appended(_) if fate.lost_ack => {
                    this.count(|faults| &mut faults.lost_acks);
                    AppendOutcome::Unknown { reason: "simulated lost acknowledgement".to_owned() }
                }
                outcome => outcome,
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
        self.log.read_after(room, after, limit)
    }

    fn last_position(&self, room: &RoomName) -> BoxFuture<'static, Result<Position, RoomError>> {
        self.log.last_position(room)
    }

    fn epoch(&self) -> Option<u64> {
        self.log.epoch()
    }

    fn follow(&self) -> Option<BoxStream<'static, LogEntry>> {
        let entries = self.log.follow()?;
        let rng = {
            let mut state = self.lock();
            state.followers += 1;
            ChaCha8Rng::seed_from_u64(state.seed ^ state.followers.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        };
        // Each entry arrives late, counted from when it committed, and never before the one
        // ahead of it. A task takes each entry as it commits and stamps when it is due: had the
        // delay been drawn when the reader asked for the entry, the delays would add up, and a
        // busy log's feed would fall further behind the longer the run (25 ms per entry).
        let (due, mut stamped) = tokio::sync::mpsc::unbounded_channel::<(Instant, LogEntry)>();
        tokio::spawn(async move {
            let (mut entries, mut rng, mut previous) = (entries, rng, Instant::now());
            while let Some(entry) = entries.next().await {
                let delay = Duration::from_micros(rng.random_range(0..=FEED_DELAY_MAX.as_micros() as u64));
                previous = (Instant::now() + delay).max(previous);
                if due.send((previous, entry)).is_err() {
                    return;
                }
            }
        });
        let feed = futures::stream::poll_fn(move |cx| stamped.poll_recv(cx)).then(|(arrives, entry)| async move {
            tokio::time::sleep_until(arrives).await;
            entry
        });
        Some(feed.boxed())
    }
}
