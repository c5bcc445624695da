//! `kiln store ...`.

use std::path::Path;
use std::process::ExitCode;

#[derive(Debug, clap::Subcommand)]
pub enum StoreCommand {
    /// Show object counts, logical and stored bytes, and the dedup ratio
    Stats,
}

pub fn run(_store: &Path, _command: StoreCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
