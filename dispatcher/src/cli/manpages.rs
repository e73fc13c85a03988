//! `dispatcher manpages DIR` (hidden; `cargo xtask package` runs it): one
//! man page per command and subcommand (dispatcher.1, dispatcher-run.1,
//! dispatcher-workers-add.1, ...), from the command line's own definition.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result};
use clap::CommandFactory;

#[derive(clap::Args)]
pub struct Args {
    /// The directory to write the pages into (created if missing).
    dir: PathBuf,
}

pub fn run(args: Args) -> Result<ExitCode> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    clap_mangen::generate_to(super::Cli::command(), &args.dir)
        .with_context(|| format!("cannot write the man pages into {}", args.dir.display()))?;
    Ok(ExitCode::SUCCESS)
}
