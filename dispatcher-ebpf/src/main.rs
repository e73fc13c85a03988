//! The XDP data plane of the FaaS dispatcher.
//!
//! One pass over each frame, in the order the entry point reads:
//! parse (Ethernet, VLANs, IP, UDP) -> is it for a service address? ->
//! FaaS header -> look the function up -> choose a worker -> rewrite toward
//! it -> count -> XDP_TX. Anything that is not a dispatchable REQUEST leaves
//! through `Err(counter)`: it is counted under its reason and passed to the
//! host stack untouched (PROTOCOL.md: attaching must never cut a host off).
#![no_std]
#![no_main]

mod maps;
mod parse;
mod rewrite;
mod select;
mod stats;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use dispatcher_common::{
    protocol::{self, kind},
    stats::Counter,
};

use crate::parse::Packet;

#[xdp]
pub fn dispatch(ctx: XdpContext) -> u32 {
    // The failure verdict is decided here, once: count the reason, pass.
    let (counter, action) = match try_dispatch(&ctx) {
        Ok(()) => (Counter::Dispatched, xdp_action::XDP_TX),
        Err(reason) => (reason, xdp_action::XDP_PASS),
    };
    stats::count(counter);
    action
}

/// Passes every frame. Testbeds attach it to the switch side of the
/// dispatcher's veth: a veth only wakes its peer for XDP_TX frames when the
/// peer runs an XDP program of its own (GRO alone queues them unseen).
#[xdp]
pub fn pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[inline(always)]
fn try_dispatch(ctx: &XdpContext) -> Result<(), Counter> {
    let pkt = Packet::parse(ctx)?;
    maps::service(&pkt)?;
    let faas = pkt.faas_header(ctx)?;
    // SAFETY: `faas_header` bounds-checked all 48 bytes against data_end.
    let hdr = unsafe { &*faas };
    if hdr.magic() != protocol::MAGIC {
        return Err(Counter::PassBadMagic);
    }
    if hdr.version != protocol::VERSION {
        return Err(Counter::PassBadVersion);
    }
    if hdr.kind != kind::REQUEST {
        return Err(Counter::PassNotRequest);
    }
    let function_id = hdr.function_id();
    let function = maps::function(function_id)?;
    let worker = select::worker(function_id, function)?;
    let settings = maps::settings()?;
    rewrite::toward_worker(&pkt, worker, &settings.iface_mac)
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
