//! `dispatcher cluster status`: a cluster's dispatchers (the revision each
//! applied, and how far behind it is) and workers (state, lease left).

use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Subcommand;

use super::{render, EtcdArgs};

#[derive(Subcommand)]
pub enum Action {
    /// Dispatchers and workers of the cluster.
    Status {
        #[command(flatten)]
        etcd: EtcdArgs,
        /// Print one JSON document instead of tables.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(action: Action) -> Result<ExitCode> {
    let Action::Status { etcd, json } = action;
    let Some(endpoints) = etcd.etcd() else {
        bail!("cluster status: give --etcd URL[,URL...] (the cluster's etcd endpoints)");
    };
    let status = super::tokio_runtime()?.block_on(async {
        dispatcher::cluster::Admin::connect(&endpoints, &etcd.cluster)
            .await?
            .status()
            .await
    })?;
    if json {
        println!("{}", serde_json::to_string(&status)?);
    } else {
        println!(
            "membership: revision {} (the latest write of a key still there)\n\ndispatchers (lag: revisions behind it):",
            status.revision
        );
        render(&status.dispatchers, false)?;
        println!("\nworkers:");
        render(&status.workers, false)?;
    }
    Ok(ExitCode::SUCCESS)
}
