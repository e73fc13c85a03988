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
    if let Some(exit) = in_cluster(&action)? {
        return Ok(exit);
    }
    match action {
        Action::List(target) => render(&inspect::functions(&target.open(bpffs)?)?, target.json)?,
        Action::Add { id, policy, target } => {
            control::add_function(&mut target.open_to_change(bpffs)?, id, policy.to_map())?
        }
        Action::Rm(ById { id, target }) => {
            control::remove_function(&mut target.open_to_change(bpffs)?, id)?
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// With --etcd: the same on the cluster's membership.
fn in_cluster(action: &Action) -> Result<Option<ExitCode>> {
    let target = match action {
        Action::List(t) | Action::Add { target: t, .. } | Action::Rm(ById { target: t, .. }) => t,
    };
    let Some((runtime, mut admin)) = target.cluster()? else {
        return Ok(None);
    };
    runtime.block_on(async {
        match action {
            Action::List(t) => render(&admin.functions().await?, t.json),
            Action::Add { id, policy, .. } => admin.set_function(*id, *policy).await,
            Action::Rm(ById { id, .. }) => admin.remove_function(*id).await,
        }
    })?;
    Ok(Some(ExitCode::SUCCESS))
}
