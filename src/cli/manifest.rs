//! `kiln check` and `kiln eval`.

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Manifest files (.kiln, or Djinn .yml/.yaml)
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// The manifest file (.kiln, or Djinn .yml/.yaml)
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

pub fn check(_args: CheckArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}

pub fn eval(_args: EvalArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
