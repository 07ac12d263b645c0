//! `confab sim`: run the deterministic simulator and report what its checker found.

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use confab_engine::InjectedBug;
use confab_sim::{FaultMix, SimOptions};
use indicatif::{ProgressBar, ProgressStyle};

/// Flags of `confab sim`. Every duration is virtual time.
#[derive(Debug, Args)]
pub struct SimArgs {
    /// Seed of every random choice; random if absent (it is always printed first, as seed=…).
    #[arg(long)]
    seed: Option<u64>,
    /// Simulated clients.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=i64::from(confab_sim::options::CLIENTS_MAX)))]
    clients: u32,
    /// Rooms the clients are spread over (at most --clients).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    rooms: u32,
    /// Virtual time the clients act for (a 10 s drain follows).
    #[arg(long, default_value = "10m", value_parser = super::parse_duration, value_name = "DURATION")]
    duration: Duration,
    /// Mean virtual time between one client's actions (exponential): sets the message rate.
    #[arg(long, default_value = "10m", value_parser = super::parse_duration, value_name = "DURATION")]
    send_interval: Duration,
    /// Mean message body size in bytes (uniform in 1..=2×mean).
    #[arg(long, default_value_t = 64)]
    body_bytes: u32,
    /// Share of clients using the bidirectional session API (the rest subscribe and send unary).
    #[arg(long, default_value_t = 0.2)]
    session_share: f64,
    /// Fault mix: `default`, `none`, or name=probability pairs per action, e.g.
    /// `slow=0.1,disconnect=0.05`. Names: slow, disconnect, retry, upload, abort, churn, read-check.
    #[arg(long, default_value = "default", value_parser = parse_faults)]
    faults: FaultMix,
    /// Mean time a slow reader stops reading.
    #[arg(long, default_value = "30s", value_parser = super::parse_duration, value_name = "DURATION")]
    stall: Duration,
    /// Mean time a disconnected client stays offline before it resumes.
    #[arg(long, default_value = "10s", value_parser = super::parse_duration, value_name = "DURATION")]
    offline: Duration,
    /// Largest upload, in messages.
    #[arg(long, default_value_t = 20)]
    upload_len: u32,
    /// Events each room's ring keeps: how far a reader may fall behind before it lags (the
    /// server's default is 1024; small here so that slow readers do lag).
    #[arg(long, default_value_t = 16)]
    queue_len: u32,
    /// Engines (nodes) the clients are spread over. Above 1 they are nodes of one simulated
    /// replicated log (cluster mode) that loses acknowledgements, times appends out, holds
    /// them up for leader elections and feeds each node late; a reconnecting client moves to
    /// the next node.
    #[arg(long, default_value_t = 1)]
    nodes: u32,
    /// Mean time between node crashes (exponential; none if absent). A crashed node answers
    /// nothing more; its clients reconnect to another node (with one node, to the restarted
    /// one), resume, and resend what was unanswered with the same client message ids; the node
    /// restarts 1-5 s later over the same log. With one node it needs --durable.
    #[arg(long, value_parser = super::parse_duration, value_name = "DURATION")]
    crash_interval: Option<Duration>,
    /// Run the one node over a simulated store (the single-node durable path: pipelined
    /// appends, rollback of failed commits, restart from what is stored) instead of in memory.
    #[arg(long)]
    durable: bool,
    /// With --durable: share of the store's commits that fail (their senders get an error,
    /// nothing of them is stored, the room rolls back).
    #[arg(long, default_value_t = 0.0, value_name = "P")]
    commit_failures: f64,
    /// Run twice in this process and check both traces hash the same (G8).
    #[arg(long)]
    check_determinism: bool,
    /// Write the report as JSON to this file.
    #[arg(long, value_name = "FILE.json")]
    report: Option<std::path::PathBuf>,
    /// Write a latency histogram and a deliveries-over-time chart to this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    svg: Option<std::path::PathBuf>,
    /// Make the engine defective on purpose (skip-seq:N, drop-delivery:N, or reorder-rebase
    /// with --nodes above 1) to see the checker catch it.
    #[arg(long, hide = true, value_parser = confab_sim::options::parse_bug)]
    inject_bug: Option<InjectedBug>,
}

fn parse_faults(text: &str) -> Result<FaultMix, String> {
    FaultMix::parse(text).map_err(|error| error.to_string().trim_start_matches("--faults: ").to_owned())
}

pub(crate) fn run(args: SimArgs) -> anyhow::Result<()> {
    let seed = args.seed.unwrap_or_else(|| std::collections::hash_map::RandomState::new().build_hasher().finish());
    println!("seed={seed}");
    let options = SimOptions {
        seed,
        clients: args.clients,
        rooms: args.rooms,
        duration: args.duration,
        send_interval: args.send_interval,
        body_bytes: args.body_bytes,
        session_share: args.session_share,
        faults: args.faults,
        stall: args.stall,
        offline: args.offline,
        upload_len_max: args.upload_len,
        queue_len: args.queue_len,
        nodes: args.nodes,
        crash_interval: args.crash_interval,
        durable: args.durable,
        commit_failures: args.commit_failures,
        injected_bug: args.inject_bug,
    };
    options.validate()?;
    let report = run_once(&options)?;
    println!("{report}");
    if args.check_determinism {
        let again = run_once(&options)?;
        if again.trace_hash != report.trace_hash {
            bail!(
                "G8 violated: the same seed gave trace {} then {}; replay: {}",
                report.trace_hash,
                again.trace_hash,
                report.replay_command()
            );
        }
        println!("determinism: a second run in this process gave the same trace {}", again.trace_hash);
    }
    if let Some(path) = &args.report {
        std::fs::write(path, report.to_json()).with_context(|| format!("--report: writing {}", path.display()))?;
    }
    if let Some(path) = &args.svg {
        std::fs::write(path, report.to_svg()).with_context(|| format!("--svg: writing {}", path.display()))?;
    }
    if report.violation_count > 0 {
        bail!("{} violation(s) with seed {seed}; replay: {}", report.violation_count, report.replay_command());
    }
    Ok(())
}

/// One run with a progress bar over virtual time (drawn only on a terminal).
fn run_once(options: &SimOptions) -> anyhow::Result<confab_sim::Report> {
    let total = (options.duration + confab_sim::DRAIN).as_secs();
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{spinner} virtual {pos}/{len} s [{bar:40}] {elapsed_precise} wall")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    let progress_bar = bar.clone();
    let progress: confab_sim::Progress =
        Arc::new(move |elapsed: Duration| progress_bar.set_position(elapsed.as_secs()));
    let report = confab_sim::run(options, Some(progress))?;
    bar.finish_and_clear();
    Ok(report)
}
