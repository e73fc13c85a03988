//! Choosing the worker for a REQUEST.
//!
//! The walking skeleton serves each function from its first slot; the
//! per-function policies (round-robin, least-loaded, p2c, hash) come next
//! and plug in here.

use dispatcher_common::{
    maps::{worker_state, Function, Worker},
    stats::Counter,
};

use crate::maps;

#[inline(always)]
pub fn worker(function_id: u32, function: &Function) -> Result<&'static Worker, Counter> {
    if function.worker_count == 0 {
        return Err(Counter::PassNoWorker);
    }
    let worker = maps::worker(function_id, 0).ok_or(Counter::PassNoWorker)?;
    if worker.state != worker_state::UP {
        return Err(Counter::PassNoWorker);
    }
    Ok(worker)
}
