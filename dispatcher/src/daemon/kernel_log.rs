//! The data plane's own log lines (aya-log records from the host program:
//! alarms such as "no worker up", at rising intervals, never per packet on
//! the dispatch path) forwarded into this process's tracing output.

use anyhow::{Context as _, Result};
use tokio::io::{unix::AsyncFd, Interest};
use tracing::warn;

/// Starts forwarding the log records of program `program_id` (found through
/// the program, so it works for an adopted data plane as well). Stops with
/// the runtime.
pub fn forward(program_id: u32) -> Result<()> {
    let logger = aya_log::EbpfLogger::init_from_id(program_id)
        .with_context(|| format!("cannot read the data plane's log (program {program_id})"))?;
    // SAFETY: the logger owns its ring buffer map's fd, which stays open
    // and the same for as long as the logger lives, inside this AsyncFd.
    let mut logger = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("cannot watch the data plane's log: {e}"))?;
    tokio::spawn(async move {
        loop {
            match logger.readable_mut().await {
                Ok(mut ready) => {
                    ready.get_inner_mut().flush();
                    ready.clear_ready();
                }
                Err(e) => {
                    warn!("stopped reading the data plane's log: {e}");
                    return;
                }
            }
        }
    });
    Ok(())
}
