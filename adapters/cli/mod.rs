//! The `confab` command line. Only this module parses flags; the library parts take their
//! configuration as values.

mod bench;
mod chat;
mod serve;
mod sim;
mod store;
mod web;

use clap::{Parser, Subcommand};

/// confab: a chat engine with a gRPC server, a deterministic simulator and an embeddable core.
#[derive(Debug, Parser)]
#[command(name = "confab", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
// Parsed once at start-up: the size of the `serve` flags costs nothing worth boxing them for.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gRPC server (confab.v1.Chat and the seed's chat.ChatService on one port), and the
    /// web chat page with the WebSocket transport on a second port (--ws-listen).
    Serve(serve::ServeArgs),
    /// A terminal chat client for a running server (confab.v1 Session): type lines to send.
    Chat(chat::ChatArgs),
    /// Load a running server with one scenario and report rate, latency and errors.
    Bench(bench::BenchArgs),
    /// Simulate thousands of clients against the real engine in virtual time and check the
    /// ordering guarantees (G1-G8); deterministic for a given --seed.
    Sim(sim::SimArgs),
    /// Check a stopped server's history store (`confab store check DIR`).
    Store(store::StoreArgs),
}

/// Runs the command line; returns the process exit code.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Chat(args) => chat::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Sim(args) => sim::run(args),
        Command::Store(args) => store::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("confab: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Parses a duration such as `10s`, `500ms` or `2m` (for flags).
pub(crate) fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text).map_err(|error| format!("{error} (write it like 10s, 500ms or 2m)"))
}

/// [`parse_duration`] for timeouts and intervals, where zero would close every connection at
/// once or ping without pause.
pub(crate) fn parse_positive_duration(text: &str) -> Result<std::time::Duration, String> {
    match parse_duration(text)? {
        duration if duration.is_zero() => Err("must be more than zero".into()),
        duration => Ok(duration),
    }
}
