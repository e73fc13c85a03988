//! `dispatcher serve`: the worker runtime, with the user's functions
//! (docs/worker-api.md).

use std::{
    net::SocketAddr,
    process::ExitCode,
    sync::{atomic::AtomicU32, Arc, RwLock},
    time::Duration,
};

use anyhow::{bail, Result};
use dispatcher::workload::{
    hosting::{sandbox::Sandbox, ConfigFile, Defaults, FunctionTable},
    register, worker,
};

use super::tokio_runtime;

#[derive(clap::Args)]
pub struct Args {
    /// Address and port to receive requests on.
    #[arg(long)]
    listen: SocketAddr,
    /// Built-in functions to serve: NAME (every function id) or ID=NAME,
    /// comma-separated. Built-ins: echo, static, upper, reverse, kv (needs
    /// --memcached), grayscale (PNG or PPM in, grayscale PNG out).
    #[arg(long, value_name = "LIST")]
    functions: Option<String>,
    /// One function per id: ID=NAME (a built-in), ID=exec:CMD (a process
    /// per request, payload on stdin, answer on stdout), ID=warm:CMD (a
    /// pool of long-lived processes, framing in docs/worker-api.md),
    /// ID=http:URL (a POST to the function's HTTP server). Repeatable.
    #[arg(long = "function", value_name = "ID=KIND[:ARG]")]
    function: Vec<String>,
    /// A worker config file: per-function timeouts, limits, pools and
    /// environment (docs/worker-api.md). Its functions join the flags'.
    #[arg(long, value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    /// The dispatcher's service address: where workflow steps and BUSYs go.
    #[arg(long)]
    dispatcher: Option<SocketAddr>,
    /// Answer each built-in's request this many microseconds late (a known
    /// delay, for checking latency meters).
    #[arg(long, default_value_t = 0)]
    delay_us: u64,
    /// Hold at most this many requests of each function at once: one that
    /// arrives beyond it goes back to the dispatcher as BUSY (needs
    /// --dispatcher), which re-steers it to another worker. Exact, however
    /// many dispatchers send here. 0: every request is BUSY.
    #[arg(long, visible_alias = "max-in-flight", value_name = "N")]
    max_inflight: Option<u32>,
    /// Milliseconds a hosted function (exec, warm, http) may take; past
    /// it the answer is ERROR 6 and its processes are killed.
    #[arg(long, default_value_t = 30_000, value_name = "MS")]
    timeout_ms: u64,
    /// Warm processes, exec processes running at once, or connections to
    /// an HTTP function server, per function (default: --max-inflight,
    /// else 4).
    #[arg(long, value_name = "N")]
    pool: Option<u32>,
    /// The user exec and warm processes run as. Required when this worker
    /// runs as root (`--run-as root` to run them as root knowingly).
    #[arg(long, value_name = "USER")]
    run_as: Option<String>,
    /// An environment variable for exec and warm processes (which see only
    /// what docs/worker-api.md lists). Repeatable.
    #[arg(long = "env", value_name = "NAME=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Send heartbeats with this worker's load to the dispatcher's
    /// health address (its config's [health] listen).
    #[arg(long, requires = "heartbeat_key")]
    heartbeat_to: Option<SocketAddr>,
    /// The shared key of [health] (or DISPATCHER_HEARTBEAT_KEY).
    #[arg(long, env = "DISPATCHER_HEARTBEAT_KEY", hide_env_values = true)]
    heartbeat_key: Option<String>,
    /// Milliseconds between heartbeats.
    #[arg(long, default_value_t = 200)]
    heartbeat_ms: u64,
    /// Requests this worker can hold (reported; 0 = unknown).
    #[arg(long, default_value_t = 0)]
    capacity: u32,
    /// memcached for the `kv` function.
    #[arg(long)]
    memcached: Option<SocketAddr>,
    /// Register in the cluster (with --etcd): one key per function id
    /// given (--function ID=KIND), under a lease; heartbeats then go to every
    /// registered dispatcher (with --heartbeat-key). On SIGTERM: drain,
    /// then deregister.
    #[arg(long, requires = "etcd")]
    register: bool,
    #[command(flatten)]
    etcd: super::EtcdArgs,
    /// The address dispatchers send requests to (default: --listen).
    #[arg(long, requires = "register")]
    advertise: Option<SocketAddr>,
    /// With --register: the worker's weight in its functions' tables.
    #[arg(long, default_value_t = 1, requires = "register")]
    weight: u16,
    /// With --register: seconds the registration outlives this worker if
    /// it dies (shorter: dropped sooner; longer: rides out pauses).
    #[arg(long, default_value_t = 3, requires = "register")]
    lease_ttl: i64,
    /// How long SIGTERM (or Ctrl-C) waits for the requests in flight to be
    /// answered before the worker exits (with --register: before it
    /// deregisters).
    #[arg(long, default_value_t = 10_000)]
    drain_timeout_ms: u64,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err(format!("`{s}`: want NAME=VALUE")),
    }
}

/// The functions the flags and the config file give, and who runs the
/// user's processes.
fn function_table(args: &Args) -> Result<(FunctionTable, Option<Sandbox>)> {
    let defaults = Defaults {
        timeout: Duration::from_millis(args.timeout_ms.max(1)),
        max_inflight: args.max_inflight,
        pool: args.pool,
    };
    let mut table = FunctionTable::default();
    if let Some(list) = &args.functions {
        table.add_list(list, &defaults)?;
    }
    for spec in &args.function {
        table.add(spec, &defaults)?;
    }
    let file = args.config.as_deref().map(ConfigFile::read).transpose()?;
    if let Some(file) = &file {
        table.add_file(file, &defaults)?;
    }
    if table.is_empty() {
        bail!("no functions given: pass --function ID=KIND[:ARG] (for example --function 1=echo or 1=exec:wc -c), --functions echo, or --config FILE");
    }
    if table.has_limits() && args.dispatcher.is_none() {
        bail!("a concurrency limit (--max-inflight) sends requests beyond it back to the dispatcher as BUSY: give --dispatcher VIP:PORT");
    }
    let sandbox = if table.runs_processes() {
        let run_as = args
            .run_as
            .as_deref()
            .or(file.as_ref().and_then(|f| f.run_as.as_deref()));
        Some(Sandbox::new(run_as, args.env.clone())?)
    } else {
        None
    };
    Ok((table, sandbox))
}

pub fn run(args: Args) -> Result<ExitCode> {
    let (table, sandbox) = function_table(&args)?;
    let targets = Arc::new(RwLock::new(args.heartbeat_to.into_iter().collect()));
    let heartbeats = args
        .heartbeat_key
        .clone()
        .filter(|_| args.heartbeat_to.is_some() || args.register)
        .map(|key| worker::HeartbeatTarget {
            to: targets.clone(),
            key,
            interval: Duration::from_millis(args.heartbeat_ms.max(10)),
            capacity: args.capacity,
        });
    let registration = match (args.register, args.etcd.etcd()) {
        (true, Some(etcd)) => {
            let functions = table.ids();
            if functions.is_empty() {
                bail!("--register writes one key per function id: give each as --function ID=KIND (for example --function 1=echo)");
            }
            let advertise = args.advertise.unwrap_or(args.listen);
            if advertise.ip().is_unspecified() {
                bail!("--register: dispatchers need an address to send to; give --advertise IP:PORT (or --listen on the worker's own address)");
            }
            Some(register::Registration {
                etcd,
                cluster: args.etcd.cluster.clone(),
                advertise,
                functions,
                weight: args.weight,
                lease_ttl: args.lease_ttl.max(1),
                drain_timeout: Duration::from_millis(args.drain_timeout_ms),
            })
        }
        _ => None,
    };
    let limits = worker::Limits {
        service: args.dispatcher,
        delay: Duration::from_micros(args.delay_us),
    };
    let in_flight = Arc::new(AtomicU32::new(0));
    let drain_timeout = Duration::from_millis(args.drain_timeout_ms);
    tokio_runtime()?.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let stop = async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            dispatcher::systemd::stopping();
        };
        let serving = worker::serve(
            args.listen,
            table,
            sandbox,
            limits,
            heartbeats,
            args.memcached,
            in_flight.clone(),
        );
        match registration {
            // Serving goes on while the registration drains.
            Some(reg) => tokio::select! {
                r = serving => r,
                r = register::run(reg, in_flight, targets, stop) => r,
            },
            // Serving goes on while what was taken is answered.
            None => tokio::select! {
                r = serving => r,
                () = async {
                    stop.await;
                    worker::finish_in_flight(&in_flight, drain_timeout).await;
                } => Ok(()),
            },
        }
    })?;
    Ok(ExitCode::SUCCESS)
}
