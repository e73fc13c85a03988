//! `dispatcher functions`: list, add (or change a policy), rm.

use std::{path::Path, process::ExitCode};

use anyhow::Result;
use clap::Subcommand;
use dispatcher::{
    config::Policy,
    control::{self, inspect},
};

use super::{render, ById, Target};

#[derive(Subcommand)]
pub enum Action {
    /// List functions with their policy, worker counts and traffic.
    List(Target),
    /// Add a function (no workers yet), or change an existing one's policy.
    Add {
        id: u32,
        #[arg(long, value_enum, default_value = "round-robin")]
        policy: Policy,
        #[command(flatten)]
        target: Target,
    },
    /// Remove a function and its workers.
    Rm(ById),
}

pub fn run(action: Action, bpffs: &Path) -> Result<ExitCode> {
    match action {
        Action::List(target) => render(&inspect::functions(&target.open(bpffs)?)?, target.json)?,
        Action::Add { id, policy, target } => {
            control::add_function(&mut target.open(bpffs)?, id, policy.to_map())?
        }
        Action::Rm(ById { id, target }) => control::remove_function(&mut target.open(bpffs)?, id)?,
    }
    Ok(ExitCode::SUCCESS)
}
