//! `confab bench`: load a running server with one scenario and print what it measured.

use std::time::Duration;

use anyhow::Context as _;
use clap::Args;

use crate::bench::{BenchOptions, Scenario};

/// Flags of `confab bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Scenario: unary-send, unary-hello, pingpong, pingpong-room, fanout, upload, mix or idle.
    #[arg(long, default_value = "unary-send", value_name = "SCENARIO")]
    scenario: Scenario,
    /// Server address; several, comma-separated, to spread the connections over a cluster's
    /// nodes (connection i goes to server i mod n; fanout's publisher to the first).
    #[arg(long, default_value = "http://127.0.0.1:50051", value_name = "URL")]
    server: String,
    /// HTTP/2 connections to spread the load over.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=4096))]
    connections: u64,
    /// Concurrent callers (unary, upload), streams (pingpong), subscribers (fanout) or clients (mix).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    concurrency: u64,
    /// How long to measure.
    #[arg(long, default_value = "10s", value_parser = super::parse_duration, value_name = "DURATION")]
    duration: Duration,
    /// How long to run before measuring.
    #[arg(long, default_value = "1s", value_parser = super::parse_duration, value_name = "DURATION")]
    warmup: Duration,
    /// Message body size in bytes (fanout and mix need at least ~24 for the timestamp).
    #[arg(long, default_value_t = 16)]
    body_bytes: usize,
    /// Messages per upload call.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    upload_batch: u64,
    /// Messages per second the fanout publisher (or all mix clients together) sends; 0 = unthrottled.
    #[arg(long, default_value_t = 500)]
    rate: u64,
    /// Rooms: mix's clients spread over this many (default 10); unary-send's callers too
    /// (default 1, every caller in one room: the hot-room case).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    rooms: Option<u64>,
    /// Mix only: each client disconnects after a random time of this mean (exponential) and
    /// reconnects resuming after the last message it saw. Off by default.
    #[arg(long, value_parser = super::parse_duration, value_name = "DURATION")]
    disconnect_every: Option<Duration>,
    /// Fanout only: this many more subscribers that never read after subscribing, on
    /// connections of their own (100 per connection). At the end each is read once more to
    /// see how the server closed it.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=100_000))]
    stalled: u64,
    /// The server's process id: report its CPU use and peak memory (Linux).
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    security: super::chat::SecurityArgs,
}

pub(crate) fn run(args: BenchArgs) -> anyhow::Result<()> {
    let options = BenchOptions {
        server: args.server,
        scenario: args.scenario,
        connections: args.connections as usize,
        concurrency: args.concurrency as usize,
        duration: args.duration,
        warmup: args.warmup,
        body_bytes: args.body_bytes,
        upload_batch: args.upload_batch as usize,
        rate: args.rate,
        rooms: args.rooms.map_or_else(|| args.scenario.default_rooms(), |rooms| rooms as usize),
        stalled: args.stalled as usize,
        disconnect_mean: args.disconnect_every,
        server_pid: args.server_pid,
        security: args.security.client(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    if !args.json {
        eprintln!(
            "confab bench: {} against {} for {:?} (+{:?} warm-up)…",
            options.scenario.name(),
            options.server,
            options.duration,
            options.warmup
        );
    }
    let report = runtime.block_on(crate::bench::run(&options))?;
    println!("{}", if args.json { report.json() } else { report.human() });
    Ok(())
}
