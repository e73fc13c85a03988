//! The `dispatcher` binary: logging, then the command line (`cli/`).

mod cli;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let format = cli.log_format;
    init_logging(format);
    match cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            match format {
                cli::LogFormat::Text => eprintln!("error: {e:#}"),
                // A log pipeline gets the reason it stopped as a line too.
                cli::LogFormat::Json => tracing::error!("{e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

/// The log goes to stderr (journald takes it from there under systemd), as
/// text for people or as one JSON object per line for a log pipeline.
/// Nothing is logged per packet: the data plane's own alarms come through
/// `aya-log` at rising intervals (daemon/kernel_log.rs), and a live view of
/// decisions is `dispatcher trace`.
fn init_logging(format: cli::LogFormat) {
    // netlink_proto warns when a finished request's handle is already
    // gone, which is how every one-shot neighbour query ends: not news.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,netlink_proto=error"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        cli::LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        cli::LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
}
