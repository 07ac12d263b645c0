//! The load generator behind `confab bench`: real tonic clients over real connections, one
//! scenario at a time, latencies in an HDR histogram. It measures a server; it never starts one.
//!
//! - [`scenarios`]: what each scenario does (unary, pingpong, fanout, upload, mix).
//! - [`report`]: the numbers collected and how they print (a line for people, JSON for tools).
//! - [`process`]: a server process's CPU time and peak memory from `/proc`.

pub mod process;
pub mod report;
pub mod scenarios;

use std::time::Duration;

pub use report::Report;
pub use scenarios::Scenario;

/// What to run, against what.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// `http://host:port` (or `https://` with a TLS CA) of the server; several, comma-separated,
    /// for the nodes of a cluster: connection `i` goes to server `i mod n` (so with at least
    /// as many connections as servers every node gets its share of the clients).
    pub server: String,
    /// The scenario.
    pub scenario: Scenario,
    /// HTTP/2 connections the clients spread over.
    pub connections: usize,
    /// Concurrent callers or streams (per scenario: callers, streams, subscribers, clients).
    pub concurrency: usize,
    /// How long to measure, after the warm-up.
    pub duration: Duration,
    /// How long to run before measuring.
    pub warmup: Duration,
    /// Message body size in bytes.
    pub body_bytes: usize,
    /// Messages per upload call (`upload`).
    pub upload_batch: usize,
    /// Messages per second the publisher sends (`fanout`, `mix`; 0 = as fast as replies allow).
    pub rate: u64,
    /// Rooms the clients spread over (`mix`, `unary-send`).
    pub rooms: usize,
    /// `mix`: each client drops its connection after a random time of this mean and comes
    /// back resuming where it left off; `None` keeps every client connected.
    pub disconnect_mean: Option<Duration>,
    /// Extra `fanout` subscribers that never read after subscribing, on connections of their
    /// own: how the server copes with stalled readers (`--subscriber-stall` closes them).
    pub stalled: usize,
    /// The server's process id, to report its CPU and peak memory.
    pub server_pid: Option<u32>,
    /// The bearer token and TLS CA for a server that wants them.
    pub security: confab_client::ClientSecurity,
}

impl BenchOptions {
    /// The servers of [`BenchOptions::server`], in the order given (never empty: an empty
    /// list is the one server `""`, which fails to connect with its name in the error).
    pub fn servers(&self) -> Vec<&str> {
        self.server.split(',').map(str::trim).collect()
    }
}

/// A benchmark failed to run (not: the server answered errors, which are counted).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// No connection to the server, or options it cannot connect with (a token that is not a
    /// header value, a CA file it cannot read, …).
    #[error(transparent)]
    Connect(#[from] confab_client::ConnectError),
    /// The options do not make sense for the scenario.
    #[error("{0}")]
    Options(String),
}

/// Runs the scenario and returns its report.
pub async fn run(options: &BenchOptions) -> Result<Report, BenchError> {
    scenarios::run(options).await
}
