//! confab-sim: a deterministic simulator of the confab engine.
//!
//! [`run`] starts the real engine (the kameo actors, through the same [`confab_actors::Engine`]
//! handle the transports use) on a single-threaded tokio runtime whose clock is paused, so time
//! is virtual: it jumps to the next timer whenever every task waits. Seeded clients (the
//! private `driver` module) send, subscribe, upload and misbehave (slow readers, disconnects
//! with resume, retries, aborted uploads, room churn); the [`checker`] verifies G1–G7 online
//! from what they observe and hashes every observation into a trace (G8). Same seed and options, same trace hash.
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
mod trace;

use std::sync::Arc;
use std::time::Duration;

use confab_actors::{Engine, EngineConfig, PresenceConfig, Replicated};
use confab_engine::RoomName;

pub use checker::{Checker, Counts, SubId, Violation};
pub use log::LogFaults;
pub use options::{DRAIN, FaultMix, OptionsError, SimOptions};
pub use report::Report;

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
    let (checker, log_faults) = runtime.block_on(simulate(options, progress))?;
    drop(runtime);
    let mut report = Report::new(options, &checker, wall.elapsed());
    report.log_faults = log_faults;
    Ok(report)
}

/// Room names: `room-000`, `room-001`, … (as wide as the count needs, so they sort in order).
fn room_names(rooms: u32) -> Vec<RoomName> {
    let width = rooms.saturating_sub(1).to_string().len().max(3);
    (0..rooms).map(|room| RoomName::new(&format!("room-{room:0width$}")).expect("a valid room name")).collect()
}

/// What the nodes of a run with several share: the replicated log and the presence bus.
type Cluster = (log::SimLog, presence::LossyBus);

/// One in-memory engine, or with `--nodes` above 1, that many engines as nodes of one
/// simulated replicated log (cluster mode, with the log's faults) and of one presence bus that
/// loses messages ([`presence::LossyBus`]).
fn start_engines(options: &SimOptions) -> Result<(Vec<Engine>, Option<Cluster>), SimError> {
    let config =
        EngineConfig { limits: options.limits(), injected_bug: options.injected_bug, ..EngineConfig::default() };
    if options.nodes <= 1 {
        return Ok((vec![Engine::start(config).map_err(|error| SimError::Start(error.to_string()))?], None));
    }
    // The log draws its faults from a generator of its own, so adding nodes does not change
    // what the clients draw.
    let log = log::SimLog::new(options.seed ^ 0x6c6f_6721);
    let bus = presence::LossyBus::new(options.seed ^ 0x7072_6573);
    let engines = (1..=u64::from(options.nodes))
        .map(|node| {
            let replicated = Replicated::new(Arc::new(log.clone()), node);
            let presence = PresenceConfig::new(Arc::new(bus.clone()), format!("node-{node}"), 1);
            let config = EngineConfig { replicated: Some(replicated), presence: Some(presence), ..config.clone() };
            Engine::start(config).map_err(|error| SimError::Start(error.to_string()))
        })
        .collect::<Result<_, _>>()?;
    Ok((engines, Some((log, bus))))
}

async fn simulate(options: &SimOptions, progress: Option<Progress>) -> Result<(Checker, Option<LogFaults>), SimError> {
    let (engines, cluster) = start_engines(options)?;
    let rooms = room_names(options.rooms);
    let span_ms = u64::try_from((options.duration + DRAIN).as_millis()).unwrap_or(u64::MAX);
    let checker = Checker::new(rooms.clone(), span_ms);
    let world = Arc::new(driver::World::new(engines.clone(), options.clone(), rooms.clone(), checker));
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
    let presence_check = cluster.as_ref().map(|(_, bus)| {
        let (bus, world, engines, rooms) = (bus.clone(), world.clone(), engines.clone(), rooms.clone());
        tokio::spawn(async move {
            tokio::time::sleep_until(world.deadline).await;
            bus.stop_losing();
            tokio::time::sleep(Duration::from_millis(presence::QUIET_MS)).await;
            let now = world.now_ms();
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
    let now = world.now_ms();
    world.checker().finish(now);
    for engine in engines {
        let _ = engine.shutdown().await;
    }
    let world = Arc::into_inner(world).expect("every client task has ended");
    let checker = world.checker.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner());
    Ok((checker, cluster.map(|(log, _)| log.faults())))
}
