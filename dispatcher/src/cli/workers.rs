//! `dispatcher workers`: list, add, rm, drain.

use std::{net::SocketAddr, path::Path, process::ExitCode};

use anyhow::{anyhow, bail, Result};
use clap::Subcommand;
use dispatcher::{
    config::WorkerConfig,
    control::{self, inspect},
    daemon::neighbours::Resolver,
};
use dispatcher_common::maps::worker_state;

use super::{render, tokio_runtime, Target};

#[derive(clap::Args, Clone)]
pub struct WorkerAddr {
    /// The function the worker serves.
    #[arg(long)]
    function: u32,
    /// The worker's IP:PORT ([IPv6]:PORT).
    #[arg(long)]
    addr: SocketAddr,
}

#[derive(Subcommand)]
pub enum Action {
    /// List workers (of one function, or all) with state, load and traffic.
    List {
        #[arg(long)]
        function: Option<u32>,
        #[command(flatten)]
        target: Target,
    },
    /// Add a worker to a function (or update it); it is up at once.
    Add {
        #[command(flatten)]
        worker: WorkerAddr,
        /// The worker's MAC, or its gateway's (default: learned from the
        /// neighbour table).
        #[arg(long)]
        mac: Option<String>,
        #[arg(long, default_value_t = 1)]
        weight: u16,
        #[command(flatten)]
        target: Target,
    },
    /// Remove a worker from a function.
    Rm {
        #[command(flatten)]
        worker: WorkerAddr,
        #[command(flatten)]
        target: Target,
    },
    /// Stop new requests to a worker; requests it has finish.
    Drain {
        #[command(flatten)]
        worker: WorkerAddr,
        #[command(flatten)]
        target: Target,
    },
}

pub fn run(action: Action, bpffs: &Path) -> Result<ExitCode> {
    if let Some(exit) = in_cluster(&action)? {
        return Ok(exit);
    }
    match action {
        Action::List { function, target } => render(
            &inspect::workers(&target.open(bpffs)?, function)?,
            target.json,
        )?,
        Action::Add {
            worker,
            mac,
            weight,
            target,
        } => {
            if weight == 0 {
                bail!("--weight 0: use 1 or more (drain a worker to stop its requests)");
            }
            let mac = match mac {
                Some(mac) => mac.parse().map_err(|_| {
                    anyhow!("--mac {mac}: not a MAC address (write it as 02:00:00:00:00:0a)")
                })?,
                // Learned from the neighbour table, as the daemon does.
                None => tokio_runtime()?
                    .block_on(async { Resolver::new()?.resolve(worker.addr.ip()).await })?,
            };
            let w = WorkerConfig {
                addr: worker.addr,
                mac: Some(mac),
                weight,
            }
            .to_map(worker.function)?;
            control::add_worker(&mut target.open_to_change(bpffs)?, worker.function, w)?
        }
        Action::Rm { worker, target } => control::remove_worker(
            &mut target.open_to_change(bpffs)?,
            worker.function,
            worker.addr,
        )?,
        Action::Drain { worker, target } => control::set_worker_state(
            &mut target.open_to_change(bpffs)?,
            worker.function,
            worker.addr,
            worker_state::DRAINING,
        )?,
    }
    Ok(ExitCode::SUCCESS)
}

/// With --etcd: the same on the cluster's membership.
fn in_cluster(action: &Action) -> Result<Option<ExitCode>> {
    let target = match action {
        Action::List { target, .. }
        | Action::Add { target, .. }
        | Action::Rm { target, .. }
        | Action::Drain { target, .. } => target,
    };
    let Some((runtime, mut admin)) = target.cluster()? else {
        return Ok(None);
    };
    runtime.block_on(async {
        match action {
            Action::List { function, target } => {
                let workers: Vec<_> = admin
                    .status()
                    .await?
                    .workers
                    .into_iter()
                    .filter(|w| function.is_none_or(|f| f == w.function))
                    .collect();
                render(&workers, target.json)
            }
            Action::Add {
                worker,
                mac,
                weight,
                ..
            } => {
                if let Some(mac) = mac {
                    mac.parse::<macaddr::MacAddr6>().map_err(|_| {
                        anyhow!("--mac {mac}: not a MAC address (write it as 02:00:00:00:00:0a)")
                    })?;
                }
                let value = dispatcher::cluster::WorkerValue {
                    weight: *weight,
                    mac: mac.clone(),
                    state: Default::default(),
                };
                admin.set_worker(worker.function, worker.addr, value).await
            }
            Action::Rm { worker, .. } => admin.remove_worker(worker.function, worker.addr).await,
            Action::Drain { worker, .. } => admin.drain_worker(worker.function, worker.addr).await,
        }
    })?;
    Ok(Some(ExitCode::SUCCESS))
}
