//! `dispatcher workflows`: list, add, rm.

use std::{path::Path, process::ExitCode};

use anyhow::Result;
use clap::Subcommand;
use dispatcher::control::{self, inspect};

use super::{render, ById, Target};

#[derive(Subcommand)]
pub enum Action {
    /// List workflows and their steps.
    List(Target),
    /// Add (or replace) a workflow: `add ID --steps F1,F2,...`.
    Add {
        id: u32,
        #[arg(long, value_delimiter = ',', required = true)]
        steps: Vec<u32>,
        #[command(flatten)]
        target: Target,
    },
    /// Remove a workflow.
    Rm(ById),
}

pub fn run(action: Action, bpffs: &Path) -> Result<ExitCode> {
    if let Some(exit) = in_cluster(&action)? {
        return Ok(exit);
    }
    match action {
        Action::List(target) => render(&inspect::workflows(&target.open(bpffs)?)?, target.json)?,
        Action::Add { id, steps, target } => {
            control::set_workflow(&mut target.open_to_change(bpffs)?, id, &steps)?
        }
        Action::Rm(ById { id, target }) => {
            control::remove_workflow(&mut target.open_to_change(bpffs)?, id)?
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
            Action::List(t) => render(&admin.workflows().await?, t.json),
            Action::Add { id, steps, .. } => admin.set_workflow(*id, steps).await,
            Action::Rm(ById { id, .. }) => admin.remove_workflow(*id).await,
        }
    })?;
    Ok(Some(ExitCode::SUCCESS))
}
