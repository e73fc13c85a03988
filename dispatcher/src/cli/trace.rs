//! `dispatcher trace`: a live view of the data plane's decisions, sampled
//! in the kernel (control/trace.rs); one line (or JSON object) per
//! decision, until interrupted or --count/--duration is reached.

use std::{
    path::Path,
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use dispatcher::{
    control::trace::{Options, Tracer},
    data_plane::bpffs,
};

#[derive(clap::Args)]
pub struct Args {
    /// The interface whose data plane to watch (default: the only one).
    #[arg(long)]
    iface: Option<String>,
    /// Only decisions for this function (the function a decision runs, or
    /// the id a request named).
    #[arg(long, value_name = "ID")]
    function: Option<u32>,
    /// Trace one FaaS packet in N (every N-th on each CPU, counted in the
    /// kernel): N or 1/N. A traced packet costs a ring buffer record; the
    /// others a countdown.
    #[arg(long, value_name = "N", default_value = "1", value_parser = parse_sample)]
    sample: u32,
    /// One JSON object per decision (JSON Lines) instead of text.
    #[arg(long)]
    json: bool,
    /// Stop after this many decisions.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    duration: Option<f64>,
}

/// `N` or `1/N`.
fn parse_sample(s: &str) -> Result<u32, String> {
    let n = s.strip_prefix("1/").unwrap_or(s);
    match n.parse::<u32>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "`{s}`: give N or 1/N, N a whole number from 1 (every packet) up"
        )),
    }
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn stop(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

pub fn run(args: Args, bpffs: &Path) -> Result<ExitCode> {
    if args.duration.is_some_and(|d| d.is_nan() || d <= 0.0) {
        bail!("--duration: a number of seconds above 0");
    }
    let dir = bpffs::find_pin_dir(bpffs, args.iface.as_deref())?;
    // SIGINT and SIGTERM end the loop, so that sampling is switched off on
    // the way out (the lease would end it 3 s later anyway).
    let action = nix::sys::signal::SigAction::new(
        nix::sys::signal::SigHandler::Handler(stop),
        nix::sys::signal::SaFlags::empty(),
        nix::sys::signal::SigSet::empty(),
    );
    for signal in [
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGTERM,
    ] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { nix::sys::signal::sigaction(signal, &action) }?;
    }
    let mut tracer = Tracer::start(
        &dir,
        Options {
            sample: args.sample,
            function: args.function,
        },
    )?;
    eprintln!(
        "tracing one FaaS packet in {}{}; Ctrl-C stops",
        args.sample,
        args.function
            .map_or(String::new(), |f| format!(" for function {f}"))
    );
    let deadline = args
        .duration
        .map(|d| Instant::now() + Duration::from_secs_f64(d));
    let mut shown = 0u64;
    'watch: while !STOP.load(Ordering::Relaxed) {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        for decision in tracer.next(Duration::from_millis(200))? {
            if args.json {
                println!("{}", serde_json::to_string(&decision)?);
            } else {
                println!("{}", decision.line());
            }
            shown += 1;
            if args.count.is_some_and(|c| shown >= c) {
                break 'watch;
            }
        }
    }
    let lost = tracer.lost()?;
    drop(tracer);
    eprintln!(
        "{shown} decisions shown{}",
        if lost > 0 {
            format!(", {lost} lost (the ring buffer was full: trace fewer with --sample)")
        } else {
            String::new()
        }
    );
    Ok(ExitCode::SUCCESS)
}
