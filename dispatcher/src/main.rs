//! The `dispatcher` command line (../shared/design/CLI.md). Each command
//! parses its arguments, calls the library, and renders a table or JSON.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use dispatcher::{
    bpffs, client,
    config::WorkerConfig,
    control,
    daemon::{self, RunOptions},
    data_plane::{Maps, Mode},
    inspect,
    stats::Snapshot,
    worker::{self, FunctionTable},
};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "dispatcher",
    version,
    about = "In-kernel (XDP) serverless request dispatcher"
)]
struct Cli {
    /// The bpffs mount under which data planes pin their maps
    /// (DIR/dispatcher/IF/); mounted if missing.
    #[arg(long, global = true, env = "DISPATCHER_BPFFS", default_value = bpffs::DEFAULT_BPFFS)]
    bpffs: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load and attach the XDP data plane, apply the config, and keep it
    /// running until SIGINT/SIGTERM, then detach.
    Run {
        /// The interface to attach to (not used with --mode user).
        #[arg(long)]
        iface: Option<String>,
        /// XDP mode: drv (native), skb, hw (offloaded to the NIC: a
        /// Netronome NFP), or user (no XDP: dispatch from user space over
        /// UDP sockets). Default: drv, or skb where drv would not work (a
        /// driver without native XDP, a veth whose peer runs no XDP
        /// program); the log says which and why.
        #[arg(long, value_enum)]
        mode: Option<Mode>,
        /// With --mode drv on a veth whose peer is in a namespace this
        /// process cannot see (a pod's eth0): the peer does run an XDP
        /// program in driver mode, which drv mode on a veth needs.
        #[arg(long)]
        veth_peer_xdp: bool,
        /// TOML config: service addresses and port, functions and workers.
        #[arg(long)]
        config: Option<PathBuf>,
        /// A service address (VIP), added to the config's; repeatable.
        #[arg(long = "vip")]
        vips: Vec<IpAddr>,
        /// The service UDP port (overrides the config's; default 7770).
        #[arg(long)]
        port: Option<u16>,
        /// On SIGTERM/SIGINT leave the data plane attached and pinned, for
        /// the next `dispatcher run` to adopt.
        #[arg(long)]
        keep_attached: bool,
        /// --mode hw: at most this many entries per map on the device (its
        /// map memory is small; netdevsim takes 2). The tables shrink to
        /// fit: fewer functions, workers per function, ring and Maglev slots.
        #[arg(long, value_name = "N")]
        hw_map_entries: Option<u32>,
    },
    /// Packet counters of a running data plane: dispatched, and passes by reason.
    Stats {
        /// The interface whose data plane to read (default: the only one).
        #[arg(long)]
        iface: Option<String>,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
        /// Print again every second, with rates, until interrupted.
        #[arg(long)]
        watch: bool,
    },
    /// Functions of a running data plane: list, add (or change policy), rm.
    Functions {
        #[command(subcommand)]
        action: FunctionsCmd,
    },
    /// Workers of a function: list, add, rm, drain.
    Workers {
        #[command(subcommand)]
        action: WorkersCmd,
    },
    /// Workflows: list, add, rm.
    Workflows {
        #[command(subcommand)]
        action: WorkflowsCmd,
    },
    /// Apply a config file to a running data plane: only the difference
    /// changes (the daemon does the same with its own config on SIGHUP).
    Reload {
        /// The config to apply.
        #[arg(long)]
        config: PathBuf,
        #[command(flatten)]
        target: Target,
    },
    /// Typed dump of the pinned maps of a running data plane.
    Maps {
        #[command(subcommand)]
        action: MapsCmd,
    },
    /// Hardware offload (Netronome NFP) tools.
    Offload {
        #[command(subcommand)]
        action: OffloadCmd,
    },
    /// The reference worker runtime: serve functions over UDP.
    Serve {
        /// Address and port to receive requests on.
        #[arg(long)]
        listen: SocketAddr,
        /// Functions to serve: NAME (every function id) or ID=NAME, comma-separated.
        /// Functions: echo, static, upper, reverse, kv (needs --memcached).
        #[arg(long)]
        functions: FunctionTable,
        /// The dispatcher's service address: where workflow steps go on.
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
    },
    /// Open-loop load generator and latency meter: requests on a fixed
    /// schedule, answers matched by request_id, HDR-histogram percentiles.
    Pktgen {
        /// Where to send: the dispatcher's service address (or a worker).
        #[arg(long)]
        to: SocketAddr,
        /// Requests per second.
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        /// Seconds to send for.
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        /// Function mix: ID[:WEIGHT],... (default: function 1).
        #[arg(long, default_value = "1")]
        functions: String,
        /// Payload bytes after the 48-byte header.
        #[arg(long, default_value_t = 64)]
        payload: usize,
        /// Milliseconds to wait for answers after the last send.
        #[arg(long, default_value_t = 1000)]
        drain_ms: u64,
        /// Datagrams per sendmmsg/recvmmsg call.
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// Poll instead of sleeping within this many microseconds of the
        /// next request (0: always sleep, leaving the CPU to others).
        #[arg(long, default_value_t = 200)]
        spin_us: u64,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
        /// Draw the latency distribution (all requests and each function)
        /// into this SVG file.
        #[arg(long, value_name = "FILE.svg", value_parser = svg_path)]
        plot: Option<PathBuf>,
    },
    /// Send one request and print the answer and its latency.
    Invoke {
        /// The dispatcher's service address and port.
        #[arg(long)]
        to: SocketAddr,
        /// Function id to call.
        function_id: u32,
        /// The request payload (UTF-8).
        #[arg(default_value = "", conflicts_with = "payload_file")]
        payload: String,
        /// Send this file's bytes as the payload instead.
        #[arg(long)]
        payload_file: Option<PathBuf>,
        /// Write the answer's payload to this file instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        /// How long to wait for the answer, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
    },
}

/// Where a command finds its data plane.
#[derive(clap::Args, Clone)]
struct Target {
    /// The interface whose data plane to act on (default: the only one).
    #[arg(long)]
    iface: Option<String>,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum FunctionsCmd {
    /// List functions with their policy, worker counts and traffic.
    List(Target),
    /// Add a function (no workers yet), or change an existing one's policy.
    Add {
        id: u32,
        #[arg(long, value_enum, default_value = "round-robin")]
        policy: PolicyArg,
        #[command(flatten)]
        target: Target,
    },
    /// Remove a function and its workers.
    Rm {
        id: u32,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum PolicyArg {
    RoundRobin,
    LeastLoaded,
    P2c,
    Hash,
}

impl From<PolicyArg> for dispatcher::config::Policy {
    fn from(p: PolicyArg) -> Self {
        use dispatcher::config::Policy;
        match p {
            PolicyArg::RoundRobin => Policy::RoundRobin,
            PolicyArg::LeastLoaded => Policy::LeastLoaded,
            PolicyArg::P2c => Policy::P2c,
            PolicyArg::Hash => Policy::Hash,
        }
    }
}

#[derive(clap::Args, Clone)]
struct WorkerAddr {
    /// The function the worker serves.
    #[arg(long)]
    function: u32,
    /// The worker's IP:PORT ([IPv6]:PORT).
    #[arg(long)]
    addr: SocketAddr,
}

#[derive(Subcommand)]
enum WorkersCmd {
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

#[derive(Subcommand)]
enum WorkflowsCmd {
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
    Rm {
        id: u32,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand)]
enum OffloadCmd {
    /// Check a compiled XDP object against the NFP's offload rules (helpers,
    /// maps, stores into map values, atomics, instruction set, return
    /// codes, stack, context, size); names each violation with its
    /// instruction. Exit status 1 when there are violations.
    Check {
        /// The object file (default: the one built into this binary).
        object: Option<PathBuf>,
        /// The program to check.
        #[arg(long, default_value = dispatcher::data_plane::HW_PROGRAM)]
        program: String,
        /// The firmware's instruction limit, if known.
        #[arg(long, default_value_t = 2_800)]
        max_instructions: usize,
        /// The firmware's stack limit in bytes, if known.
        #[arg(long, default_value_t = 512)]
        max_stack: i64,
    },
}

#[derive(Subcommand)]
enum MapsCmd {
    /// Dump every pinned map, or the one named (geometry: the table sizes
    /// the maps were created with; functions, workers, workflows, counters).
    Dump {
        name: Option<String>,
        #[command(flatten)]
        target: Target,
    },
}

fn main() -> ExitCode {
    // netlink_proto warns when a finished request's handle is already
    // gone, which is how every one-shot neighbour query ends: not news.
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,netlink_proto=error")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run {
            iface,
            mode,
            veth_peer_xdp,
            config,
            vips,
            port,
            keep_attached,
            hw_map_entries,
        } => {
            let iface = match (iface, mode) {
                (Some(iface), _) => iface,
                (None, Some(Mode::User)) => String::new(),
                (None, _) => anyhow::bail!("--iface: name the interface to attach to (`ip link` lists them), or use --mode user"),
            };
            if hw_map_entries.is_some() && mode != Some(Mode::Hw) {
                anyhow::bail!("--hw-map-entries sizes maps on the NIC: it goes with --mode hw");
            }
            if veth_peer_xdp && mode != Some(Mode::Drv) {
                anyhow::bail!("--veth-peer-xdp vouches for a veth's peer in drv mode: it goes with --mode drv");
            }
            let device = dispatcher::offload::Device {
                max_entries: hw_map_entries,
            };
            let opts = RunOptions {
                iface,
                mode,
                veth_peer_xdp,
                config,
                vips,
                port,
                bpffs: cli.bpffs,
                keep_attached,
                device,
            };
            tokio_runtime()?.block_on(daemon::run(opts))?;
        }
        Command::Stats { iface, json, watch } => {
            let dir = bpffs::find_pin_dir(&cli.bpffs, iface.as_deref())?;
            let mut previous: Option<Snapshot> = None;
            loop {
                let now = Snapshot::read(&dir)?;
                if json {
                    println!("{}", serde_json::to_string(&now)?);
                } else {
                    print!("{}", now.table(previous.as_ref().map(|p| (p, 1.0))));
                }
                if !watch {
                    break;
                }
                previous = Some(now);
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        Command::Functions { action } => functions_cmd(&cli.bpffs, action)?,
        Command::Workers { action } => workers_cmd(&cli.bpffs, action)?,
        Command::Workflows { action } => workflows_cmd(&cli.bpffs, action)?,
        Command::Reload { config, target } => {
            let mut config = dispatcher::config::Config::load(&config)?;
            tokio_runtime()?.block_on(dispatcher::neighbours::fill_missing(&mut config))?;
            control::reconcile(&mut open(&cli.bpffs, &target)?, &config)?;
            eprintln!("applied");
        }
        Command::Maps {
            action: MapsCmd::Dump { name, target },
        } => maps_dump(&cli.bpffs, name.as_deref(), &target)?,
        Command::Offload {
            action:
                OffloadCmd::Check {
                    object,
                    program,
                    max_instructions,
                    max_stack,
                },
        } => {
            let bytes = match &object {
                Some(path) => std::fs::read(path)
                    .with_context(|| format!("cannot read {}", path.display()))?,
                None => dispatcher::data_plane::object().to_vec(),
            };
            let limits = dispatcher::offload_check::Limits {
                max_instructions,
                max_stack,
                ..Default::default()
            };
            let report = dispatcher::offload_check::check_object(&bytes, &program, limits)?;
            print!("{}", report.text());
            if !report.violations.is_empty() {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Serve {
            listen,
            functions,
            dispatcher,
            delay_us,
            max_in_flight,
            heartbeat_to,
            heartbeat_key,
            heartbeat_ms,
            capacity,
            memcached,
        } => {
            let delay = Duration::from_micros(delay_us);
            let heartbeats = heartbeat_to.map(|to| worker::HeartbeatTarget {
                to,
                key: heartbeat_key.unwrap_or_default(),
                interval: Duration::from_millis(heartbeat_ms.max(10)),
                capacity,
            });
            tokio_runtime()?.block_on(async {
                let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
                tokio::select! {
                    r = worker::serve(listen, functions, worker::Limits { service: dispatcher, delay, max_in_flight }, heartbeats, memcached) => r,
                    _ = tokio::signal::ctrl_c() => Ok(()),
                    _ = term.recv() => Ok(()),
                }
            })?;
        }
        Command::Pktgen {
            to,
            rate,
            duration,
            functions,
            payload,
            drain_ms,
            batch,
            spin_us,
            json,
            plot,
        } => {
            let opts = dispatcher::pktgen::Options {
                to,
                rate,
                duration: Duration::from_secs_f64(duration),
                mix: dispatcher::pktgen::parse_mix(&functions)?,
                payload,
                drain: Duration::from_millis(drain_ms),
                batch: batch.clamp(1, 1024),
                spin: Duration::from_micros(spin_us),
            };
            let bar = (!json && std::io::IsTerminal::is_terminal(&std::io::stderr())).then(|| {
                let bar = indicatif::ProgressBar::new(0);
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{bar:40} {pos}/{len} requests {per_sec}",
                    )
                    .expect("valid template"),
                );
                bar
            });
            let report = dispatcher::pktgen::run(&opts, |sent, total| {
                if let Some(bar) = &bar {
                    bar.set_length(total);
                    bar.set_position(sent);
                }
            })?;
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            if let Some(w) = report.warning() {
                eprintln!("{w}");
            }
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{}", report.text());
            }
            if let Some(path) = plot {
                report.plot(&path)?;
                eprintln!("latency plot: {}", path.display());
            }
        }
        Command::Invoke {
            to,
            function_id,
            payload,
            payload_file,
            out,
            timeout_ms,
        } => {
            let payload = match payload_file {
                Some(path) => std::fs::read(&path)
                    .with_context(|| format!("cannot read --payload-file {}", path.display()))?,
                None => payload.into_bytes(),
            };
            let answer =
                client::invoke(to, function_id, &payload, Duration::from_millis(timeout_ms))?;
            let micros = answer.latency.as_secs_f64() * 1e6;
            if let Some((code, text)) = answer.message.error_parts() {
                eprintln!(
                    "ERROR {code} from {} in {micros:.0} us: {text}",
                    answer.from
                );
                return Ok(ExitCode::from(2));
            }
            eprintln!(
                "RESPONSE from {} in {micros:.0} us ({} bytes)",
                answer.from,
                answer.message.payload.len()
            );
            match out {
                Some(path) => std::fs::write(&path, &answer.message.payload)
                    .with_context(|| format!("cannot write --out {}", path.display()))?,
                None => println!("{}", String::from_utf8_lossy(&answer.message.payload)),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `--plot`'s file: refused before the run rather than after it.
fn svg_path(s: &str) -> Result<PathBuf, String> {
    if !s.ends_with(".svg") {
        return Err(format!(
            "`{s}`: plots are written as SVG; give a file name ending in .svg"
        ));
    }
    Ok(PathBuf::from(s))
}

fn tokio_runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn open(bpffs: &Path, target: &Target) -> Result<Maps> {
    let dir = bpffs::find_pin_dir(bpffs, target.iface.as_deref())?;
    Maps::from_pins(&dir)
}

fn render<T: serde::Serialize>(rows: &[T], json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(rows)?);
    } else {
        print!("{}", inspect::table(rows));
    }
    Ok(())
}

fn functions_cmd(bpffs: &Path, action: FunctionsCmd) -> Result<()> {
    match action {
        FunctionsCmd::List(target) => {
            render(&inspect::functions(&open(bpffs, &target)?)?, target.json)
        }
        FunctionsCmd::Add { id, policy, target } => control::add_function(
            &mut open(bpffs, &target)?,
            id,
            dispatcher::config::Policy::from(policy).to_map(),
        ),
        FunctionsCmd::Rm { id, target } => control::remove_function(&mut open(bpffs, &target)?, id),
    }
}

fn workers_cmd(bpffs: &Path, action: WorkersCmd) -> Result<()> {
    match action {
        WorkersCmd::List { function, target } => render(
            &inspect::workers(&open(bpffs, &target)?, function)?,
            target.json,
        ),
        WorkersCmd::Add {
            worker,
            mac,
            weight,
            target,
        } => {
            let mac = match mac {
                Some(mac) => mac.parse().map_err(|_| {
                    anyhow::anyhow!(
                        "--mac {mac}: not a MAC address (write it as 02:00:00:00:00:0a)"
                    )
                })?,
                // Learned from the neighbour table, as the daemon does.
                None => tokio_runtime()?.block_on(async {
                    dispatcher::neighbours::Resolver::new()?
                        .resolve(worker.addr.ip())
                        .await
                })?,
            };
            let mac = Some(mac);
            let w = WorkerConfig {
                addr: worker.addr,
                mac,
                weight,
            }
            .to_map(worker.function)?;
            if weight == 0 {
                anyhow::bail!("--weight 0: use 1 or more (drain a worker to stop its requests)");
            }
            control::add_worker(&mut open(bpffs, &target)?, worker.function, w)
        }
        WorkersCmd::Rm { worker, target } => {
            control::remove_worker(&mut open(bpffs, &target)?, worker.function, worker.addr)
        }
        WorkersCmd::Drain { worker, target } => control::set_worker_state(
            &mut open(bpffs, &target)?,
            worker.function,
            worker.addr,
            dispatcher_common::maps::worker_state::DRAINING,
        ),
    }
}

fn workflows_cmd(bpffs: &Path, action: WorkflowsCmd) -> Result<()> {
    match action {
        WorkflowsCmd::List(target) => {
            render(&inspect::workflows(&open(bpffs, &target)?)?, target.json)
        }
        WorkflowsCmd::Add { id, steps, target } => {
            control::set_workflow(&mut open(bpffs, &target)?, id, &steps)
        }
        WorkflowsCmd::Rm { id, target } => control::remove_workflow(&mut open(bpffs, &target)?, id),
    }
}

fn maps_dump(bpffs: &Path, name: Option<&str>, target: &Target) -> Result<()> {
    let maps = open(bpffs, target)?;
    let all = ["geometry", "functions", "workers", "workflows", "counters"];
    let names: Vec<&str> = match name {
        Some(n) if all.contains(&n) => vec![n],
        Some(n) => anyhow::bail!("no map view {n}: choose one of {}", all.join(", ")),
        None => all.to_vec(),
    };
    let mut doc = serde_json::Map::new();
    for n in names {
        let value = match n {
            "functions" => serde_json::to_value(inspect::functions(&maps)?)?,
            "workers" => serde_json::to_value(inspect::workers(&maps, None)?)?,
            "workflows" => serde_json::to_value(inspect::workflows(&maps)?)?,
            "geometry" => serde_json::Value::Array(vec![inspect::geometry(&maps)?]),
            _ => serde_json::Value::Array(
                maps.counters()?
                    .into_iter()
                    .map(|(c, v)| serde_json::json!({ "counter": c.name(), "packets": v }))
                    .collect(),
            ),
        };
        if !target.json {
            println!("== {n}");
            let rows: Vec<serde_json::Value> = value.as_array().cloned().unwrap_or_default();
            print!("{}", inspect::table(&rows));
        }
        doc.insert(n.to_string(), value);
    }
    if target.json {
        println!("{}", serde_json::Value::Object(doc));
    }
    Ok(())
}
