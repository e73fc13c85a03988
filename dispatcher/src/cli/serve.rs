//! `dispatcher serve`: the reference worker runtime.

use std::{
    net::SocketAddr,
    process::ExitCode,
    sync::{atomic::AtomicU32, Arc, RwLock},
    time::Duration,
};

use anyhow::{bail, Result};
use dispatcher::workload::{
    register,
    worker::{self, FunctionTable},
};

use super::tokio_runtime;

#[derive(clap::Args)]
pub struct Args {
    /// Address and port to receive requests on.
    #[arg(long)]
    listen: SocketAddr,
    /// Functions to serve: NAME (every function id) or ID=NAME, comma-separated.
    /// Functions: echo, static, upper, reverse, kv (needs --memcached),
    /// grayscale (PNG or PPM in, grayscale PNG out).
    #[arg(long)]
    functions: FunctionTable,
    /// The dispatcher's service address: where workflow steps and BUSYs go.
    #[arg(long)]
    dispatcher: Option<SocketAddr>,
    /// Answer each request this many microseconds late (a known delay,
    /// for checking latency meters).
    #[arg(long, default_value_t = 0)]
    delay_us: u64,
    /// Hold at most this many requests at once: one that arrives beyond
    /// it goes back to the dispatcher as BUSY (needs --dispatcher), which
    /// re-steers it to another worker. 0: every request is BUSY.
    #[arg(long, value_name = "N", requires = "dispatcher")]
    max_in_flight: Option<u32>,
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
    /// Register in the cluster (with --etcd): one key per function id of
    /// --functions (ID=NAME), under a lease; heartbeats then go to every
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
    /// With --register: how long SIGTERM waits for requests in flight
    /// before deregistering.
    #[arg(long, default_value_t = 10_000, requires = "register")]
    drain_timeout_ms: u64,
}

pub fn run(args: Args) -> Result<ExitCode> {
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
            let functions = args.functions.ids();
            if functions.is_empty() {
                bail!("--register writes one key per function id: name them in --functions as ID=NAME (for example 1=echo,2=upper)");
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
        max_in_flight: args.max_in_flight,
    };
    let in_flight = Arc::new(AtomicU32::new(0));
    tokio_runtime()?.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let stop = async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        let serving = worker::serve(
            args.listen,
            args.functions,
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
            None => tokio::select! {
                r = serving => r,
                () = stop => Ok(()),
            },
        }
    })?;
    Ok(ExitCode::SUCCESS)
}
