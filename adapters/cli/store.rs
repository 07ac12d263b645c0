//! `confab store`: operations on a data directory's history store while no server runs on it.

use std::path::PathBuf;

use anyhow::bail;
use clap::{Args, Subcommand};
use confab_actors::store::RedbStore;

/// Flags of `confab store`.
#[derive(Debug, Args)]
pub struct StoreArgs {
    #[command(subcommand)]
    command: StoreCommand,
}

#[derive(Debug, Subcommand)]
enum StoreCommand {
    /// Read every record of the store in DIR (the --data-dir of `confab serve`) without
    /// changing it, verify every checksum, and print each damaged room with the sequence
    /// numbers affected. Exits non-zero if anything is damaged or the file cannot be read.
    Check {
        /// The data directory.
        #[arg(value_name = "DIR")]
        directory: PathBuf,
    },
}

pub(crate) fn run(args: StoreArgs) -> anyhow::Result<()> {
    match args.command {
        StoreCommand::Check { directory } => check(&directory),
    }
}

fn check(directory: &std::path::Path) -> anyhow::Result<()> {
    let report = RedbStore::check(directory)?;
    for (room, damage) in &report.damage {
        println!("{}: room {room}: {damage}", report.path);
    }
    if !report.is_clean() {
        bail!("{}: {} of {} rooms damaged", report.path, report.damage.len(), report.rooms);
    }
    println!(
        "{}: {} rooms, {} messages, every checksum verified, no damage",
        report.path, report.rooms, report.messages
    );
    Ok(())
}
