//! The `dispatcher` command line (../shared/design/CLI.md): one module per
//! command, each with its arguments and a thin body that calls the library
//! and renders what it returns.

mod cluster;
mod completions;
mod functions;
mod invoke;
mod manpages;
mod maps;
mod offload;
mod pktgen;
mod reload;
mod run;
mod serve;
mod stats;
mod trace;
mod workers;
mod workflows;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Result;
use clap::{Parser, Subcommand};
use dispatcher::{
    control::inspect,
    data_plane::{bpffs, Maps},
};

#[derive(Parser)]
#[command(
    name = "dispatcher",
    version,
    about = "In-kernel (XDP) serverless request dispatcher"
)]
pub struct Cli {
    /// The bpffs mount under which data planes pin their maps
    /// (DIR/dispatcher/IF/); mounted if missing.
    #[arg(long, global = true, env = "DISPATCHER_BPFFS", default_value = bpffs::DEFAULT_BPFFS)]
    bpffs: PathBuf,
    /// How log lines are written to stderr: text, or one JSON object per
    /// line (timestamp, level, target, message, fields).
    #[arg(long, global = true, value_enum, env = "DISPATCHER_LOG_FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// `--log-format`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Load and attach the XDP data plane, apply the config, and keep it
    /// running until SIGINT/SIGTERM, then detach.
    Run(run::Args),
    /// Packet counters of a running data plane: dispatched, and passes by reason.
    Stats(stats::Args),
    /// Functions of a running data plane: list, add (or change policy), rm.
    Functions {
        #[command(subcommand)]
        action: functions::Action,
    },
    /// Workers of a function: list, add, rm, drain.
    Workers {
        #[command(subcommand)]
        action: workers::Action,
    },
    /// Workflows: list, add, rm.
    Workflows {
        #[command(subcommand)]
        action: workflows::Action,
    },
    /// Apply a config file to a running data plane: only the difference
    /// changes (the daemon does the same with its own config on SIGHUP).
    Reload(reload::Args),
    /// Live view of the data plane's decisions, sampled in the kernel:
    /// time, source, function, workflow step, policy, worker, outcome.
    Trace(trace::Args),
    /// Typed dump of the pinned maps of a running data plane.
    Maps {
        #[command(subcommand)]
        action: maps::Action,
    },
    /// Hardware offload (Netronome NFP) tools.
    Offload {
        #[command(subcommand)]
        action: offload::Action,
    },
    /// The worker: serve functions (built-ins, your processes, your HTTP
    /// servers) to the dispatcher's requests (docs/worker-api.md).
    Serve(Box<serve::Args>),
    /// Open-loop load generator and latency meter: requests on a fixed
    /// schedule, answers matched by request_id, HDR-histogram percentiles.
    Pktgen(pktgen::Args),
    /// Send one request and print the answer and its latency.
    Invoke(invoke::Args),
    /// Cluster mode: the dispatchers and workers of a cluster in etcd.
    Cluster {
        #[command(subcommand)]
        action: cluster::Action,
    },
    /// Print the shell completion script for bash, zsh, fish, ...
    Completions(completions::Args),
    /// Write the man pages into a directory (for packaging).
    #[command(hide = true)]
    Manpages(manpages::Args),
}

/// Runs the command the line names.
pub fn run(cli: Cli) -> Result<ExitCode> {
    let bpffs = &cli.bpffs;
    match cli.command {
        Command::Run(args) => run::run(args, bpffs),
        Command::Stats(args) => stats::run(args, bpffs),
        Command::Functions { action } => functions::run(action, bpffs),
        Command::Workers { action } => workers::run(action, bpffs),
        Command::Workflows { action } => workflows::run(action, bpffs),
        Command::Reload(args) => reload::run(args, bpffs),
        Command::Maps { action } => maps::run(action, bpffs),
        Command::Trace(args) => trace::run(args, bpffs),
        Command::Offload { action } => offload::run(action),
        Command::Serve(args) => serve::run(*args),
        Command::Pktgen(args) => pktgen::run(args),
        Command::Invoke(args) => invoke::run(args),
        Command::Cluster { action } => cluster::run(action),
        Command::Completions(args) => completions::run(args),
        Command::Manpages(args) => manpages::run(args),
    }
}

/// Where a cluster's membership lives (cluster mode).
#[derive(clap::Args, Clone, Debug)]
pub struct EtcdArgs {
    /// etcd endpoints, comma-separated (http://IP:2379,...): use a
    /// cluster's membership in etcd.
    #[arg(long = "etcd", value_name = "URL[,URL...]", value_delimiter = ',')]
    etcd: Vec<String>,
    /// The cluster's name: its keys live under /faas-dispatcher/NAME/.
    #[arg(long, default_value = dispatcher::cluster::DEFAULT_CLUSTER)]
    cluster: String,
    /// TLS to etcd (https:// endpoints): the CA that signed etcd's
    /// certificate.
    #[arg(long, value_name = "FILE")]
    etcd_ca: Option<PathBuf>,
    /// This side's client certificate (PEM): with etcd's
    /// --client-cert-auth its common name is the etcd user whose roles
    /// apply.
    #[arg(long, value_name = "FILE", requires_all = ["etcd_ca", "etcd_key"])]
    etcd_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "etcd_cert")]
    etcd_key: Option<PathBuf>,
}

impl EtcdArgs {
    /// Where etcd is, if cluster mode was asked for.
    pub fn etcd(&self) -> Option<dispatcher::cluster::Etcd> {
        (!self.etcd.is_empty()).then(|| dispatcher::cluster::Etcd {
            endpoints: self.etcd.clone(),
            tls: self.etcd_ca.clone().map(|ca| dispatcher::cluster::Tls {
                ca,
                identity: self.etcd_cert.clone().zip(self.etcd_key.clone()),
            }),
        })
    }
}

/// `rm ID`: a function or workflow to remove, and where.
#[derive(clap::Args)]
struct ById {
    /// The function's or workflow's id.
    id: u32,
    #[command(flatten)]
    target: Target,
}

/// Where a command finds its data plane: one dispatcher's maps, or with
/// --etcd the cluster's membership (which every dispatcher follows).
#[derive(clap::Args, Clone)]
struct Target {
    /// The interface whose data plane to act on (default: the only one).
    #[arg(long)]
    iface: Option<String>,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    etcd: EtcdArgs,
}

impl Target {
    /// The cluster this names, connected, if --etcd was given.
    fn cluster(&self) -> Result<Option<(tokio::runtime::Runtime, dispatcher::cluster::Admin)>> {
        let Some(etcd) = self.etcd.etcd() else {
            return Ok(None);
        };
        let runtime = tokio_runtime()?;
        let admin = runtime.block_on(dispatcher::cluster::Admin::connect(
            &etcd,
            &self.etcd.cluster,
        ))?;
        Ok(Some((runtime, admin)))
    }

    /// The maps of the data plane this names.
    fn open(&self, bpffs: &Path) -> Result<Maps> {
        let dir = bpffs::find_pin_dir(bpffs, self.iface.as_deref())?;
        Maps::from_pins(&dir)
    }

    /// The maps, to change: refused for a data plane that follows a
    /// cluster, whose next membership change would undo it.
    fn open_to_change(&self, bpffs: &Path) -> Result<Maps> {
        let maps = self.open(bpffs)?;
        if maps.managed()? == dispatcher_common::maps::managed::CLUSTER {
            anyhow::bail!(
                "this data plane follows a cluster's membership in etcd (`dispatcher run --etcd`): change the cluster with --etcd URL [--cluster NAME] instead; a change to these maps would be undone by its next membership change"
            );
        }
        Ok(maps)
    }
}

/// Rows as a table, or as one JSON document.
fn render<T: serde::Serialize>(rows: &[T], json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(rows)?);
    } else {
        print!("{}", inspect::table(rows));
    }
    Ok(())
}

fn tokio_runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}
