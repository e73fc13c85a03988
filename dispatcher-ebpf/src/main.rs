//! The XDP data plane of the FaaS dispatcher.
//!
//! One pass over each frame, in the order `try_dispatch` reads: parse
//! (Ethernet, VLANs, IP, UDP) -> for a service address? -> FaaS header ->
//! decide what to run (a function, a workflow step, a re-steer) -> choose a
//! worker by the function's policy -> rewrite toward it -> count -> transmit
//! (and, while `dispatcher trace` watches, describe a sample: `trace.rs`).
//! Anything that is not dispatched leaves through `Err(counter)`: it is
//! counted under its reason and passed to the host stack untouched (or, for
//! STEP/BUSY from strangers, dropped).
//!
//! Two entry points share that code: `dispatch` for the host (skb/drv) and
//! `dispatch_hw`, which stays within what the Netronome NFP offloads
//! (see `variant.rs` and ../shared/design/OFFLOAD.md).
#![no_std]
#![no_main]
#![allow(internal_features)]
#![feature(core_intrinsics)]
#![feature(stmt_expr_attributes)]

mod maps;
mod parse;
mod rewrite;
mod select;
mod trace;
mod variant;
mod yardsticks;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use aya_log_ebpf::warn;
use dispatcher_common::{
    maps::{Function, Settings, MAX_RESTEERS, MAX_WORKFLOW_STEPS},
    protocol::{self, flags, kind, FaasHdr, HeaderEdit},
    stats::Counter,
};

use crate::{
    parse::Packet,
    variant::{Host, Hw, Variant},
};

// Inlined into the entry point the macro wraps it in: no BPF-to-BPF call.
#[xdp]
#[inline(always)]
pub fn dispatch(ctx: XdpContext) -> u32 {
    run::<Host>(&ctx)
}

/// The offloadable variant: XDP_TX only, counters by XADD.
#[xdp]
#[inline(always)]
pub fn dispatch_hw(ctx: XdpContext) -> u32 {
    run::<Hw>(&ctx)
}

/// Passes every frame. Testbeds attach it to the switch side of the
/// dispatcher's veth: a veth only wakes its peer for XDP_TX frames when the
/// peer runs an XDP program of its own (GRO alone queues them unseen).
#[xdp]
pub fn pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// The verdict is decided here, once: count the outcome; pass, drop or send.
#[inline(always)]
fn run<V: Variant>(ctx: &XdpContext) -> u32 {
    match try_dispatch::<V>(ctx) {
        Ok((counter, action)) => {
            V::count(counter);
            action
        }
        Err(reason) => {
            let seen = V::count(reason);
            // Off the hot path (only packets that were not dispatched), and
            // rate-limited: the 1st, 2nd, 4th, 8th... on each CPU.
            if V::LOGS && reason.is_alarm() && seen.is_power_of_two() {
                warn!(
                    ctx,
                    "{}: {} packets so far on this CPU (logged at powers of two)",
                    reason.name(),
                    seen
                );
            }
            if reason.is_drop() {
                xdp_action::XDP_DROP
            } else {
                xdp_action::XDP_PASS
            }
        }
    }
}

/// What to run for a packet, decided before anything is written.
struct Decision {
    function: &'static Function,
    edit: HeaderEdit,
    counter: Counter,
}

#[inline(always)]
fn try_dispatch<V: Variant>(ctx: &XdpContext) -> Result<(Counter, u32), Counter> {
    // Inlined, closure and all: the dispatch path makes no BPF-to-BPF call
    // (tests/tests/xdp_cost.rs counts them).
    Packet::parse(
        ctx,
        #[inline(always)]
        |pkt| dispatch_parsed::<V>(ctx, pkt),
    )
}

#[inline(always)]
fn dispatch_parsed<V: Variant>(ctx: &XdpContext, pkt: &Packet) -> Result<(Counter, u32), Counter> {
    let settings = maps::settings()?;
    if !pkt.addressed_to(&settings.iface_mac) {
        return Err(Counter::PassNotForUs);
    }
    if !maps::is_service(settings, &pkt.destination()) {
        return Err(Counter::PassNotService);
    }
    let hdr_ptr = pkt.faas_header(ctx)?;
    // SAFETY: `faas_header` bounds-checked all 48 bytes against data_end.
    let hdr = unsafe { &*hdr_ptr };
    if hdr.magic() != protocol::MAGIC {
        return Err(Counter::PassBadMagic);
    }
    if hdr.version != protocol::VERSION {
        return Err(Counter::PassBadVersion);
    }
    // While someone runs `dispatcher trace`, one packet in N is drawn and
    // its decision described (trace.rs); one decision path either way.
    let drawn = if V::TRACES && settings.trace_sample != 0 {
        trace::draw(settings, pkt, hdr)
    } else {
        None
    };
    let result = decide::<V>(pkt, hdr_ptr, settings);
    if let Some(record) = drawn {
        // SAFETY: as above (rewritten in place, still within the frame).
        let hdr = unsafe { &*hdr_ptr };
        trace::finish(record, pkt, hdr, settings, V::DIRECT_FUNCTIONS, &result);
    }
    result
}

/// What a FaaS packet of this version runs, and where it goes.
#[inline(always)]
fn decide<V: Variant>(
    pkt: &Packet,
    hdr_ptr: *mut FaasHdr,
    settings: &Settings,
) -> Result<(Counter, u32), Counter> {
    // SAFETY: `faas_header` bounds-checked all 48 bytes against data_end.
    let hdr = unsafe { &*hdr_ptr };

    // The source endpoint is built only where a path needs it (checking a
    // STEP's or BUSY's sender, re-steering away from it, hashing without a
    // key), each time from the packet: carried in a variable across these
    // arms, LLVM materialised it on the stack for every REQUEST too.
    let decision = match hdr.kind {
        kind::REQUEST => {
            let id = hdr.function_id();
            match maps::function(settings, id, V::DIRECT_FUNCTIONS) {
                Some(function) => {
                    let decision = Decision {
                        function,
                        edit: HeaderEdit::None,
                        counter: Counter::DispatchedRequest,
                    };
                    // The common case, on a path of its own in the host
                    // variant: with the edit a constant, the rewrite
                    // compiles to just the address, port and MAC writes.
                    if V::STRAIGHT_REQUESTS {
                        return send::<V>(pkt, hdr_ptr, settings, decision);
                    }
                    decision
                }
                None => start_workflow::<V>(settings, id)?,
            }
        }
        kind::STEP => {
            registered(pkt)?;
            step::<V>(settings, hdr)?
        }
        kind::BUSY => {
            registered(pkt)?;
            busy::<V>(settings, hdr)?
        }
        _ => return Err(Counter::PassNotRequest),
    };
    send::<V>(pkt, hdr_ptr, settings, decision)
}

/// Picks the worker for a decision, rewrites the packet toward it, counts
/// and transmits.
#[inline(always)]
fn send<V: Variant>(
    pkt: &Packet,
    hdr_ptr: *mut FaasHdr,
    settings: &Settings,
    decision: Decision,
) -> Result<(Counter, u32), Counter> {
    // SAFETY: `faas_header` bounds-checked all 48 bytes against data_end.
    let hdr = unsafe { &*hdr_ptr };
    let function = decision.function;
    let slot = match decision.edit {
        HeaderEdit::Resteer { .. } => select::other_than::<V>(function, &pkt.source())?,
        _ => select::by_policy::<V>(function, hdr.key(), pkt)?,
    };
    let index = function.worker_index(slot);
    let worker = maps::worker(index).ok_or(Counter::PassNoWorker)?;
    if worker.family != pkt.family {
        return Err(Counter::PassFamilyMismatch);
    }

    // Every check is done: from here on the packet is written.
    rewrite::toward_worker(pkt, hdr_ptr, &decision.edit, worker, &settings.src_mac);
    select::charge::<V>(function, slot);
    let action = V::transmit(settings)?;
    V::traffic(function.index, index, pkt.len);
    Ok((decision.counter, action))
}

/// STEP and BUSY are accepted only from registered workers.
#[inline(always)]
fn registered(pkt: &Packet) -> Result<(), Counter> {
    if maps::is_registered(&pkt.source()) {
        Ok(())
    } else {
        Err(Counter::DropNotRegistered)
    }
}

/// A REQUEST whose id is no function's names a workflow: it starts its
/// step 0.
#[inline(always)]
fn start_workflow<V: Variant>(settings: &Settings, id: u32) -> Result<Decision, Counter> {
    let workflow = maps::workflow(id).ok_or(Counter::PassUnknownFunction)?;
    let steps = workflow.step_count;
    if steps == 0 || steps as usize > MAX_WORKFLOW_STEPS {
        return Err(Counter::PassBadStep);
    }
    let function_id = workflow.functions[0];
    Ok(Decision {
        function: maps::function(settings, function_id, V::DIRECT_FUNCTIONS)
            .ok_or(Counter::PassUnknownFunction)?,
        edit: HeaderEdit::StartWorkflow {
            workflow_id: id,
            function_id,
            last: steps == 1,
        },
        counter: Counter::DispatchedWorkflow,
    })
}

/// A STEP invokes step `step` of `workflow_id`.
#[inline(always)]
fn step<V: Variant>(settings: &Settings, hdr: &FaasHdr) -> Result<Decision, Counter> {
    let workflow = maps::workflow(hdr.workflow_id()).ok_or(Counter::PassBadStep)?;
    let step = hdr.step as usize;
    if step >= MAX_WORKFLOW_STEPS || step as u32 >= workflow.step_count {
        return Err(Counter::PassBadStep);
    }
    let function_id = V::word_of_eight(&workflow.functions, step);
    Ok(Decision {
        function: maps::function(settings, function_id, V::DIRECT_FUNCTIONS)
            .ok_or(Counter::PassUnknownFunction)?,
        edit: HeaderEdit::Step {
            function_id,
            last: step as u32 + 1 == workflow.step_count,
        },
        counter: Counter::DispatchedStep,
    })
}

/// A BUSY goes to another worker of the same function, at most
/// MAX_RESTEERS times.
#[inline(always)]
fn busy<V: Variant>(settings: &Settings, hdr: &FaasHdr) -> Result<Decision, Counter> {
    let resteers = hdr.resteers();
    if resteers >= MAX_RESTEERS {
        return Err(Counter::PassBusyExhausted);
    }
    let kind = hdr.busy_answered_kind();
    Ok(Decision {
        function: maps::function(settings, hdr.function_id(), V::DIRECT_FUNCTIONS)
            .ok_or(Counter::PassUnknownFunction)?,
        edit: HeaderEdit::Resteer {
            kind,
            resteers: resteers + 1,
        },
        counter: Counter::Resteered,
    })
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach here; this only
    // satisfies the compiler.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
