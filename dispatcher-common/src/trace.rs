//! `dispatcher trace`: the data plane's decisions, sampled in the kernel and
//! sent to user space through the TRACE ring buffer.
//!
//! The tracer writes `Settings::trace_sample` (SETTINGS, which the program
//! reads for every packet anyway): while it is 0 nobody watches and a
//! packet pays one comparison. Otherwise every `trace_sample`-th FaaS
//! packet on each CPU (a countdown) is decided as usual and then described
//! in a
//! [`TraceEvent`], if it passes the [`TraceControl`] in TRACE_CONTROL (a
//! function filter, and a lease). The tracer renews `deadline_ns` every
//! second; a sampled packet past it switches sampling off, so a tracer that
//! was killed costs nothing for long. Host variant only: the NFP has no
//! ring buffers (and SETTINGS must stay within its 64-byte entries).

use crate::maps::Endpoint;

/// Bytes of the TRACE ring buffer (a power of two of pages): about 14,500
/// records, which `dispatcher trace` drains every 10 ms: room for about
/// a million traced packets a second before records are lost (counted in
/// TRACE_LOST).
pub const TRACE_RING_BYTES: u32 = 1024 * 1024;

/// TRACE_CONTROL's one value, written by `dispatcher trace`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceControl {
    /// Only packets for this function (the function a decision runs, or
    /// the id the request named), when `filter_function` is 1.
    pub function_id: u32,
    pub filter_function: u8,
    pub _pad: [u8; 3],
    /// CLOCK_MONOTONIC (bpf_ktime_get_ns) after which the trace lapses.
    pub deadline_ns: u64,
}

/// One decision (the TRACE ring buffer's records).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceEvent {
    /// CLOCK_MONOTONIC nanoseconds (bpf_ktime_get_ns).
    pub time_ns: u64,
    pub request_id: u64,
    /// Who sent the packet: the client, or for a STEP or BUSY the worker.
    pub source: Endpoint,
    /// Where it went (all zero when it was not dispatched).
    pub worker: Endpoint,
    /// The function the decision runs (a workflow's step function), or the
    /// id the packet named when there was none.
    pub function_id: u32,
    /// The workflow, for workflow packets (0 otherwise).
    pub workflow_id: u32,
    /// `stats::Counter` as u8: the outcome (dispatched_*, resteered) or
    /// the reason it was passed or dropped.
    pub counter: u8,
    /// The packet's kind (protocol::kind) as it arrived.
    pub kind: u8,
    /// The workflow step (after the decision).
    pub step: u8,
    /// The function's policy (maps::policy), or NO_POLICY.
    pub policy: u8,
    /// The XDP action taken (XDP_TX 3, XDP_REDIRECT 4, XDP_PASS 2,
    /// XDP_DROP 1).
    pub action: u8,
    /// 4 or 6 (maps::family).
    pub family: u8,
    pub _pad: [u8; 2],
}

/// `TraceEvent::policy` when no function was found.
pub const NO_POLICY: u8 = 0xff;
