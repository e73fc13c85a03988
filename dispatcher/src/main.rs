//! The `dispatcher` command line (../shared/design/CLI.md). Each command
//! parses its arguments, calls the library, and renders a table or JSON.

use std::{net::IpAddr, net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Result;
use clap::{Parser, Subcommand};
use dispatcher::{
    bpffs, client,
    daemon::{self, RunOptions},
    data_plane::Mode,
    stats::Snapshot,
    worker::{self, FunctionTable},
};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "dispatcher", version, about = "In-kernel (XDP) serverless request dispatcher")]
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
        /// The interface to attach to.
        #[arg(long)]
        iface: String,
        /// XDP mode: drv (native, the default, falls back to skb) or skb.
        #[arg(long, value_enum, default_value = "drv")]
        mode: Mode,
        /// TOML config: service addresses and port, functions and workers.
        #[arg(long)]
        config: Option<PathBuf>,
        /// A service address (VIP), added to the config's; repeatable.
        #[arg(long = "vip")]
        vips: Vec<IpAddr>,
        /// The service UDP port (overrides the config's; default 7770).
        #[arg(long)]
        port: Option<u16>,
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
    /// The reference worker runtime: serve functions over UDP.
    Serve {
        /// Address and port to receive requests on.
        #[arg(long)]
        listen: SocketAddr,
        /// Functions to serve: NAME (every function id) or ID=NAME, comma-separated.
        /// Functions: echo.
        #[arg(long)]
        functions: FunctionTable,
    },
    /// Send one request and print the answer and its latency.
    Invoke {
        /// The dispatcher's service address and port.
        #[arg(long)]
        to: SocketAddr,
        /// Function id to call.
        function_id: u32,
        /// The request payload (UTF-8).
        #[arg(default_value = "")]
        payload: String,
        /// How long to wait for the answer, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
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
        Command::Run { iface, mode, config, vips, port } => {
            let opts = RunOptions { iface, mode, config, vips, port, bpffs: cli.bpffs };
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
        Command::Serve { listen, functions } => {
            tokio_runtime()?.block_on(async {
                tokio::select! {
                    r = worker::serve(listen, functions) => r,
                    _ = tokio::signal::ctrl_c() => Ok(()),
                }
            })?;
        }
        Command::Invoke { to, function_id, payload, timeout_ms } => {
            let answer = client::invoke(to, function_id, payload.as_bytes(), Duration::from_millis(timeout_ms))?;
            let micros = answer.latency.as_secs_f64() * 1e6;
            if let Some((code, text)) = answer.message.error_parts() {
                eprintln!("ERROR {code} from {} in {micros:.0} us: {text}", answer.from);
                return Ok(ExitCode::from(2));
            }
            eprintln!("RESPONSE from {} in {micros:.0} us", answer.from);
            println!("{}", String::from_utf8_lossy(&answer.message.payload));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn tokio_runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}
