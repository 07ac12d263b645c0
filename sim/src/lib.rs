//! confab-sim: a deterministic simulator of the confab engine.
//!
//! [`run`] starts the real engine (the kameo actors, through the same [`confab_actors::Engine`]
//! handle the transports use) on a single-threaded tokio runtime whose clock is paused, so time
//! is virtual: it jumps to the next timer whenever every task waits. Seeded clients (the
//! private `driver` module) send, subscribe, upload and misbehave (slow readers, disconnects
//! with resume, retries, aborted uploads, room churn); the [`checker`] verifies G1–G7 online
//! from what they observe and hashes every observation into a trace (G8). Same seed and options, same trace hash.
//!
//! The engines run in memory, or as nodes of the simulated replicated log ([`log`], with
//! `--nodes`), or as one node over the simulated store ([`store`], with `--durable`: the
//! single-node durable path). With `--crash-interval`, nodes crash and restart over the same
//! log or store (`crash_nodes`), and at the end the checker audits every room's history
//! against every acknowledgement (G7 through crashes).
//!
//! ```
//! use confab_sim::{SimOptions, run};
//!
//! let options = SimOptions { clients: 50, rooms: 3, ..SimOptions::with_seed(7) };
//! let report = run(&options, None).expect("valid options");
//! assert_eq!(report.violation_count, 0);
//! assert_eq!(report.trace_hash, run(&options, None).expect("valid options").trace_hash);
//! ```

pub mod checker;
mod driver;
pub mod log;
pub mod options;
pub mod presence;
pub mod report;
pub mod store;
mod trace;

use std::sync::Arc;
use std::time::Duration;

use confab_actors::{Engine, EngineConfig, PresenceConfig, Replicated};
use confab_engine::RoomName;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub use checker::{Checker, Counts, SubId, Violation};
pub use log::LogFaults;
pub use options::{DRAIN, FaultMix, OptionsError, SimOptions};
pub use report::Report;
pub use store::StoreFaults;

/// How long a crashed node stays down, at least and at most (uniform): shorter than the
/// drain, so every node is up again before the run ends.
const RESTART_DELAY_MIN: Duration = Duration::from_secs(1);
/// See [`RESTART_DELAY_MIN`].
const RESTART_DELAY_MAX: Duration = Duration::from_secs(5);

/// Called with the virtual time elapsed, about a hundred times per run.
pub type Progress = Arc<dyn Fn(Duration) + Send + Sync>;

/// Why a run could not happen (a violation is not an error: it is in the report).
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// An option is out of range.
    #[error(transparent)]
    Options(#[from] OptionsError),
    /// The runtime or the engine did not start.
    #[error("could not start the simulation: {0}")]
    Start(String),
}

/// Runs one simulation to the end and reports what the checker found.
pub fn run(options: &SimOptions, progress: Option<Progress>) -> Result<Report, SimError> {
    options.validate()?;
    let wall = std::time::Instant::now();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(|error| SimError::Start(error.to_string()))?;
    let (checker, backend) = runtime.block_on(simulate(options, progress))?;
    drop(runtime);
    let mut report = Report::new(options, &checker, wall.elapsed());
    report.log_faults = backend.log.map(|log| log.faults());
    report.store_faults = backend.store.map(|store| store.faults());
    Ok(report)
}

/// Room names: `room-000`, `room-001`, … (as wide as the count needs, so they sort in order).
fn room_names(rooms: u32) -> Vec<RoomName> {
    let width = rooms.saturating_sub(1).to_string().len().max(3);
    (0..rooms).map(|room| RoomName::new(&format!("room-{room:0width$}")).expect("a valid room name")).collect()
}

/// Where the engines keep their rooms beyond memory, if anywhere: it outlives their crashes.
#[derive(Clone, Default)]
struct Backend {
    /// The simulated replicated log (`--nodes` above 1).
    log: Option<log::SimLog>,
    /// The simulated store (`--durable`).
    store: Option<store::SimStore>,
    /// The presence bus the nodes share (`--nodes` above 1); it loses messages
    /// ([`presence::LossyBus`]).
    bus: Option<presence::LossyBus>,
}

impl Backend {
    /// The log or store for the options; each draws its faults from a generator of its own,
    /// so they do not change what the clients draw.
    fn new(options: &SimOptions) -> Self {
        let log = (options.nodes > 1).then(|| log::SimLog::new(options.seed ^ 0x6c6f_6721));
        let store = options.durable.then(|| {
            store::SimStore::new(options.seed ^ 0x7374_6f72, options.commit_failures, options.limits().history_len_max)
        });
        let bus = (options.nodes > 1).then(|| presence::LossyBus::new(options.seed ^ 0x7072_6573));
        Backend { log, store, bus }
    }

    /// Starts node `node` (from 0) on its run `run` (0 at the start, one more per restart):
    /// in memory, over the store, or over the log as a writer unique to the run.
    fn start(&self, options: &SimOptions, node: usize, run: u64, now_ms: u64) -> Result<Engine, SimError> {
        // A restarted engine goes on with the run's clock and numbers its new rooms' epochs
        // apart from the last run's, as a server started later does.
        let mut config =
            EngineConfig::default().with_limits(options.limits()).with_time_origin_ms(now_ms).with_epoch_base(now_ms);
        config.test_hooks.injected_bug = options.injected_bug;
        if let Some(log) = &self.log {
            let writer = run * u64::from(options.nodes) + node as u64 + 1;
            config.replicated = Some(Replicated::new(Arc::new(log.clone()), writer));
        }
        if let Some(bus) = &self.bus {
            // The run is the incarnation: a restarted node's users replace its last run's.
            config.presence = Some(PresenceConfig::new(Arc::new(bus.clone()), format!("node-{}", node + 1), run + 1));
        }
        if let Some(store) = &self.store {
            config.test_hooks.local_log = Some(Arc::new(store.clone()));
        }
        Engine::start(config).map_err(|error| SimError::Start(error.to_string()))
    }
}

async fn simulate(options: &SimOptions, progress: Option<Progress>) -> Result<(Checker, Backend), SimError> {
    let backend = Backend::new(options);
    let engines =
        (0..options.nodes as usize).map(|node| backend.start(options, node, 0, 0)).collect::<Result<Vec<_>, _>>()?;
    let rooms = room_names(options.rooms);
    let span_ms = u64::try_from((options.duration + DRAIN).as_millis()).unwrap_or(u64::MAX);
    let checker = Checker::new(rooms.clone(), span_ms);
    let world = Arc::new(driver::World::new(engines, options.clone(), rooms.clone(), checker));
    let crashes =
        options.crash_interval.map(|interval| tokio::spawn(crash_nodes(world.clone(), backend.clone(), interval)));
    if let Some(progress) = progress {
        let (start, end) = (world.start, world.end);
        tokio::spawn(async move {
            let step = (end - start) / 100;
            let mut at = start;
            while at < end {
                at += step;
                tokio::time::sleep_until(at).await;
                progress(at - start);
            }
        });
    }
    // Presence converges once the bus stops losing (at the clients' deadline): after a quiet
    // spell, while the clients still hold their subscriptions (they read until the end of the
    // drain), every node shows the same users in each room.
    // Not with crashes: a node restarted near the deadline may still be gathering its
    // clients back when the check runs, and that is not a divergence.
    let presence_check = backend.bus.clone().filter(|_| options.crash_interval.is_none()).map(|bus| {
        let (world, rooms) = (world.clone(), rooms.clone());
        tokio::spawn(async move {
            tokio::time::sleep_until(world.deadline).await;
            bus.stop_losing();
            tokio::time::sleep(Duration::from_millis(presence::QUIET_MS)).await;
            let now = world.now_ms();
            let engines: Vec<Engine> = world.nodes.iter().filter_map(driver::Node::engine).collect();
            for divergence in presence::divergences(&engines, &rooms).await {
                world.checker().presence_diverged(divergence, now);
            }
        })
    });
    let clients: Vec<_> =
        (0..options.clients).map(|number| tokio::spawn(driver::run_client(world.clone(), number))).collect();
    for client in clients {
        // A client that panicked is a bug in the driver or the engine: let it surface.
        if let Err(error) = client.await {
            std::panic::resume_unwind(error.into_panic());
        }
    }
    if let Some(check) = presence_check
        && let Err(error) = check.await
    {
        std::panic::resume_unwind(error.into_panic());
    }
    if let Some(crashes) = crashes {
        // It stopped crashing at the deadline; its restarts are done well before the end.
        if let Err(error) = crashes.await {
            std::panic::resume_unwind(error.into_panic());
        }
    }
    if options.crash_interval.is_some() || options.durable {
        audit(&world).await;
    }
    if let Some(store) = &backend.store {
        for gap in store.gaps() {
            let room = world.rooms.iter().position(|room| *room == gap.room).expect("a room of the run") as u32;
            let at_ms = u64::try_from(gap.at.saturating_duration_since(world.start).as_millis()).unwrap_or(u64::MAX);
            world.checker().store_gap(room, gap.expected, gap.got, at_ms);
        }
    }
    let now = world.now_ms();
    world.checker().finish(now);
    for node in &world.nodes {
        if let Some(engine) = node.engine() {
            let _ = engine.shutdown().await;
        }
    }
    let world = Arc::into_inner(world).expect("every client task has ended");
    let checker = world.checker.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner());
    Ok((checker, backend))
}

/// Crashes a node (drawn among those up) at exponentially distributed intervals of mean
/// `interval` until the deadline, and restarts each a few seconds later as a fresh engine over
/// the same log or store. Its choices come from a generator of its own, so crashes do not
/// change what the clients draw. Returns once the last restart is done.
async fn crash_nodes(world: Arc<driver::World>, backend: Backend, interval: Duration) {
    let mut rng = ChaCha8Rng::seed_from_u64(world.options.seed ^ 0x6372_6173);
    let mut restarts = Vec::new();
    loop {
        let uniform: f64 = rng.random_range(f64::EPSILON..1.0);
        let next = tokio::time::Instant::now() + interval.mul_f64(-uniform.ln());
        tokio::time::sleep_until(next.min(world.deadline)).await;
        if tokio::time::Instant::now() >= world.deadline {
            break;
        }
        let up: Vec<usize> = (0..world.nodes.len()).filter(|&node| world.nodes[node].state().up).collect();
        if up.is_empty() {
            continue;
        }
        let node = up[rng.random_range(0..up.len())];
        let down_ms = rng.random_range(RESTART_DELAY_MIN.as_millis() as u64..=RESTART_DELAY_MAX.as_millis() as u64);
        // Down first: from here on its clients believe nothing it says.
        let engine = world.nodes[node].crash();
        if let Some(store) = &backend.store {
            // What the store had not committed dies with the process.
            store.crash();
        }
        world.checker().action(None, checker::Action::Crash, world.now_ms());
        if let Some(engine) = engine {
            // Its actors stop: requests in flight get no answer. (Appends already on their way
            // to a replicated log may still land, as they would from a real node.)
            let _ = engine.shutdown().await;
        }
        let (world, backend) = (world.clone(), backend.clone());
        restarts.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(down_ms)).await;
            let run = world.nodes[node].state().run + 1;
            let engine =
                backend.start(&world.options, node, run, world.now_ms()).expect("a node restarts as it started");
            world.nodes[node].restart(engine);
            world.checker().action(None, checker::Action::Restart, world.now_ms());
        }));
    }
    for restart in restarts {
        if let Err(error) = restart.await {
            std::panic::resume_unwind(error.into_panic());
        }
    }
}

/// Reads every room's whole retained history from the first node and has the checker compare
/// it with every acknowledgement (see [`Checker::audit`]).
async fn audit(world: &driver::World) {
    let Some(engine) = world.nodes.iter().find_map(driver::Node::engine) else { return };
    let page_len = world.options.limits().history_page_max;
    for (number, room) in world.rooms.iter().enumerate() {
        let (mut epoch, mut first_retained_seq, mut messages) = (0, 0, Vec::new());
        let mut after = 0;
        loop {
            let Ok(page) = engine.history(room, after, page_len).await else { break };
            (epoch, first_retained_seq) = (page.epoch, page.first_retained_seq);
            let Some(last) = page.messages.last().map(|message| message.seq) else { break };
            messages.extend(page.messages);
            if last >= page.last_seq {
                break;
            }
            after = last;
        }
        let now = world.now_ms();
        world.checker().audit(number as u32, epoch, first_retained_seq, &messages, now);
    }
}
