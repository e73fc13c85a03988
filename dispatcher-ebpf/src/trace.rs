//! Sampled decisions for `dispatcher trace` (see dispatcher_common::trace):
//! the host variant describes every `Settings::trace_sample`-th FaaS packet
//! (per CPU),
//! after deciding it as usual, in a TRACE ring buffer record. While nobody
//! traces, `trace_sample` is 0 and a packet pays one comparison of a
//! SETTINGS field it has already loaded (`draw` returns at once).

use aya_ebpf::{
    bindings::{xdp_action, BPF_RB_NO_WAKEUP},
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{ring_buf::RingBufEntry, Array, PerCpuArray, RingBuf},
};
use dispatcher_common::{
    maps::{Endpoint, Settings},
    protocol::FaasHdr,
    stats::Counter,
    trace::{TraceControl, TraceEvent, NO_POLICY, TRACE_RING_BYTES},
};

use crate::{maps, parse::Packet};

/// The sampled decisions, for `dispatcher trace` to read. Written by the
/// host variant only while someone traces.
#[map]
pub static TRACE: RingBuf = RingBuf::with_byte_size(TRACE_RING_BYTES, 0);

/// The trace's function filter and lease (one entry). Written by
/// `dispatcher trace`; read for sampled packets only.
#[map]
pub static TRACE_CONTROL: Array<TraceControl> = Array::with_max_entries(1, 0);

/// Packets left before the next traced one, per CPU (`draw`).
#[map]
pub static TRACE_COUNTDOWN: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Records that did not fit in TRACE (the reader fell behind), per CPU.
#[map]
pub static TRACE_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// If someone traces (`trace_sample` is not 0: the caller checks, so
/// that nobody tracing costs one comparison), this packet is the one in
/// `trace_sample` drawn, and the tracer's lease holds: its TRACE record,
/// reserved and filled with what the packet says before it is decided.
/// Written in place: a record on the stack would add its bytes to the
/// dispatch path's frame.
#[inline(always)]
pub fn draw(settings: &Settings, pkt: &Packet, hdr: &FaasHdr) -> Option<RingBufEntry<TraceEvent>> {
    let sample = settings.trace_sample;
    if sample == 0 {
        return None;
    }
    // Every `sample`-th FaaS packet on each CPU: a countdown, not a random
    // draw (`bpf_get_prandom_u32` is a call, which retpolines and Safe RET
    // make costly; this is an inlined array lookup).
    let left = TRACE_COUNTDOWN.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot; XDP programs do not preempt each other.
    unsafe {
        if *left > 1 && *left <= sample {
            *left -= 1;
            return None;
        }
        *left = sample;
    }
    let control = TRACE_CONTROL.get(0)?;
    // SAFETY: a helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if now > control.deadline_ns {
        // The tracer stopped renewing its lease (killed): stop sampling.
        if let Some(s) = maps::settings_mut() {
            // SAFETY: SETTINGS' one value; a u32 written whole.
            unsafe { (*s).trace_sample = 0 };
        }
        return None;
    }
    let Some(mut record) = TRACE.reserve::<TraceEvent>(0) else {
        if let Some(lost) = TRACE_LOST.get_ptr_mut(0) {
            // SAFETY: this CPU's slot; XDP programs do not preempt each other.
            unsafe { *lost += 1 };
        }
        return None;
    };
    let e = record.as_mut_ptr();
    // SAFETY: the reserved record, TraceEvent-sized; every field is
    // written, here or in `finish`, before it is submitted.
    unsafe {
        (*e).time_ns = now;
        (*e).request_id = hdr.request_id();
        (*e).source = pkt.source();
        (*e).function_id = hdr.function_id();
        (*e).kind = hdr.kind;
        (*e).family = pkt.family;
        (*e)._pad = [0; 2];
    }
    Some(record)
}

/// Completes a drawn packet's record with its decision and submits it, or
/// discards it when the tracer asked for another function.
#[inline(always)]
pub fn finish(
    mut record: RingBufEntry<TraceEvent>,
    pkt: &Packet,
    hdr: &FaasHdr,
    settings: &Settings,
    direct_functions: bool,
    result: &Result<(Counter, u32), Counter>,
) {
    let e = record.as_mut_ptr();
    // SAFETY: the record `draw` reserved and began.
    let asked = unsafe { (*e).function_id };
    // A dispatched packet's header was rewritten in place: it names the
    // function the decision runs.
    let function_id = if result.is_ok() {
        hdr.function_id()
    } else {
        asked
    };
    let wanted = TRACE_CONTROL.get(0).is_some_and(|c| {
        c.filter_function == 0 || c.function_id == function_id || c.function_id == asked
    });
    if !wanted {
        record.discard(0);
        return;
    }
    let (counter, action) = match *result {
        Ok((counter, action)) => (counter, action),
        Err(reason) if reason.is_drop() => (reason, xdp_action::XDP_DROP),
        Err(reason) => (reason, xdp_action::XDP_PASS),
    };
    // SAFETY: as above.
    unsafe {
        // Rewritten toward the worker: its address is the destination now.
        (*e).worker = if result.is_ok() {
            destination(pkt)
        } else {
            Endpoint::default()
        };
        (*e).function_id = function_id;
        (*e).workflow_id = hdr.workflow_id();
        (*e).counter = counter as u8;
        (*e).step = hdr.step;
        (*e).policy =
            maps::function(settings, function_id, direct_functions).map_or(NO_POLICY, |f| f.policy);
        (*e).action = action as u8;
    }
    // No wakeup: waking the reader is an irq_work per record, which cost
    // microseconds a packet with a reader keeping up; `dispatcher trace`
    // reads every few milliseconds instead.
    record.submit(BPF_RB_NO_WAKEUP as u64);
}

/// The packet's destination address and port as an `Endpoint`.
#[inline(always)]
fn destination(pkt: &Packet) -> Endpoint {
    let d = pkt.destination();
    let mut addr = [0u8; 16];
    for (i, w) in d.words.iter().enumerate() {
        addr[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    Endpoint {
        addr,
        port: d.port,
        _pad: [0; 2],
    }
}
