//! `dispatcher pktgen`: the open-loop load generator and latency meter.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Result;
use dispatcher::workload::pktgen;

#[derive(clap::Args)]
pub struct Args {
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
    /// Spread the requests over this many source ports (flows an ECMP
    /// router or RSS tells apart), 1 to 64.
    #[arg(long, default_value_t = 1)]
    flows: usize,
    /// Print one JSON document.
    #[arg(long)]
    json: bool,
    /// Draw the latency distribution (all requests and each function)
    /// into this SVG file.
    #[arg(long, value_name = "FILE.svg", value_parser = svg_path)]
    plot: Option<PathBuf>,
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

pub fn run(args: Args) -> Result<ExitCode> {
    let opts = pktgen::Options {
        to: args.to,
        rate: args.rate,
        duration: Duration::from_secs_f64(args.duration),
        mix: pktgen::parse_mix(&args.functions)?,
        payload: args.payload,
        drain: Duration::from_millis(args.drain_ms),
        batch: args.batch.clamp(1, 1024),
        spin: Duration::from_micros(args.spin_us),
        flows: args.flows,
    };
    let bar = (!args.json && std::io::IsTerminal::is_terminal(&std::io::stderr())).then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} requests {per_sec}")
                .expect("valid template"),
        );
        bar
    });
    let report = pktgen::run(&opts, |sent, total| {
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
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.text());
    }
    if let Some(path) = args.plot {
        report.plot(&path)?;
        eprintln!("latency plot: {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}
