//! `dispatcher serve`: the reference worker runtime.

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use anyhow::Result;
use dispatcher::workload::worker::{self, FunctionTable};

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
}

pub fn run(args: Args) -> Result<ExitCode> {
    let heartbeats = args.heartbeat_to.map(|to| worker::HeartbeatTarget {
        to,
        key: args.heartbeat_key.clone().unwrap_or_default(),
        interval: Duration::from_millis(args.heartbeat_ms.max(10)),
        capacity: args.capacity,
    });
    let limits = worker::Limits {
        service: args.dispatcher,
        delay: Duration::from_micros(args.delay_us),
        max_in_flight: args.max_in_flight,
    };
    tokio_runtime()?.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = worker::serve(args.listen, args.functions, limits, heartbeats, args.memcached) => r,
            _ = tokio::signal::ctrl_c() => Ok(()),
            _ = term.recv() => Ok(()),
        }
    })?;
    Ok(ExitCode::SUCCESS)
}
