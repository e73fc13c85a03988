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
            control::add_worker(&mut target.open(bpffs)?, worker.function, w)?
        }
        Action::Rm { worker, target } => {
            control::remove_worker(&mut target.open(bpffs)?, worker.function, worker.addr)?
        }
        Action::Drain { worker, target } => control::set_worker_state(
            &mut target.open(bpffs)?,
            worker.function,
            worker.addr,
            worker_state::DRAINING,
        )?,
    }
    Ok(ExitCode::SUCCESS)
}
