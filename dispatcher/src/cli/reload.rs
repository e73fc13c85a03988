//! `dispatcher reload`: apply a config file's difference to the maps.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Result;
use dispatcher::{config::Config, control, daemon::neighbours};

use super::{tokio_runtime, Target};

#[derive(clap::Args)]
pub struct Args {
    /// The config to apply.
    #[arg(long)]
    config: PathBuf,
    #[command(flatten)]
    target: Target,
}

pub fn run(args: Args, bpffs: &Path) -> Result<ExitCode> {
    let mut config = Config::load(&args.config)?;
    tokio_runtime()?.block_on(neighbours::fill_missing(&mut config))?;
    control::reconcile(&mut args.target.open_to_change(bpffs)?, &config)?;
    eprintln!("applied");
    Ok(ExitCode::SUCCESS)
}
