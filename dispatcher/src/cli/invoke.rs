//! `dispatcher invoke`: one request, its answer and latency.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context as _, Result};
use dispatcher::workload::client;

#[derive(clap::Args)]
pub struct Args {
    /// The dispatcher's service address and port.
    #[arg(long)]
    to: SocketAddr,
    /// Function id to call.
    function_id: u32,
    /// The affinity key: the hash policy sends requests with equal keys to
    /// the same worker (0: hash the client's address and port).
    #[arg(long, default_value_t = 0)]
    key: u64,
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
}

/// Exit status 2: the dispatcher or the worker answered with an ERROR.
pub fn run(args: Args) -> Result<ExitCode> {
    let payload = match &args.payload_file {
        Some(path) => std::fs::read(path)
            .with_context(|| format!("cannot read --payload-file {}", path.display()))?,
        None => args.payload.into_bytes(),
    };
    let answer = client::invoke(
        args.to,
        args.function_id,
        args.key,
        &payload,
        Duration::from_millis(args.timeout_ms),
    )?;
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
    match args.out {
        Some(path) => std::fs::write(&path, &answer.message.payload)
            .with_context(|| format!("cannot write --out {}", path.display()))?,
        None => println!("{}", String::from_utf8_lossy(&answer.message.payload)),
    }
    Ok(ExitCode::SUCCESS)
}
