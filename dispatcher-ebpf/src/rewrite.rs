//! Writing the decision into the packet: FaaS header edits (workflow and
//! re-steering fields), then destination MAC, IP and UDP port toward the
//! worker and the source MAC, with the IPv4 header and UDP checksums patched
//! incrementally. A REQUEST keeps the client's source IP and port, so the
//! worker answers the client directly. A STEP or re-steered BUSY leaves
//! from the service address and port it was sent to: it came from a worker
//! and may go back to that same worker, whose kernel drops a packet with
//! its own address as the source (a martian); its answer goes to `reply_*`.
//!
//! Every check happened before the first write, so a packet that is not
//! dispatched leaves untouched.

use dispatcher_common::{
    checksum::{Delta, Patch},
    maps::{family, Worker},
    protocol::{flags, FaasHdr, HeaderEdit},
};
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};

use crate::parse::Packet;

/// Sets a header field, patching the UDP checksum for the change.
#[inline(always)]
fn set<const N: usize>(patch: &mut Patch, field: &mut [u8; N], new: [u8; N]) {
    *patch = patch.bytes(field, &new);
    *field = new;
}

#[inline(always)]
fn edit_header(pkt: &Packet, hdr: &mut FaasHdr, edit: &HeaderEdit, mut patch: Patch) -> Patch {
    // Fields are edited in 16-bit words at even offsets: the FaaS header
    // starts at an even offset from the UDP header, so each word is a word
    // of the checksum. `step` and `flags` share one; `version` and `kind`.
    match *edit {
        HeaderEdit::None => {}
        HeaderEdit::StartWorkflow {
            workflow_id,
            function_id,
            last,
        } => {
            set(&mut patch, &mut hdr.function_id, function_id.to_be_bytes());
            set(&mut patch, &mut hdr.workflow_id, workflow_id.to_be_bytes());
            let f = flags::REPLY_SET | if last { flags::LAST_STEP } else { 0 };
            let mut step_flags = [hdr.step, hdr.flags];
            set(&mut patch, &mut step_flags, [0, f]);
            hdr.step = 0;
            hdr.flags = f;
            // The answer goes to the client (read here: see `Packet`).
            let client = pkt.source();
            set(&mut patch, &mut hdr.reply_port, client.port);
            set(&mut patch, &mut hdr.reply_addr, client.addr);
        }
        HeaderEdit::Step { function_id, last } => {
            set(&mut patch, &mut hdr.function_id, function_id.to_be_bytes());
            let f = (hdr.flags & !flags::LAST_STEP) | if last { flags::LAST_STEP } else { 0 };
            let mut step_flags = [hdr.step, hdr.flags];
            set(&mut patch, &mut step_flags, [hdr.step, f]);
            hdr.flags = f;
        }
        HeaderEdit::Resteer { kind, resteers } => {
            let mut version_kind = [hdr.version, hdr.kind];
            set(&mut patch, &mut version_kind, [hdr.version, kind]);
            hdr.kind = kind;
            let f = (hdr.flags & !flags::RESTEER_MASK) | (resteers << flags::RESTEER_SHIFT);
            let mut step_flags = [hdr.step, hdr.flags];
            set(&mut patch, &mut step_flags, [hdr.step, f]);
            hdr.flags = f;
        }
    }
    patch
}

/// Rewrites the packet toward `worker`. The parser checked every bound;
/// every decision was made before this, so nothing here can fail.
#[inline(always)]
pub fn toward_worker(
    pkt: &Packet,
    hdr: *mut FaasHdr,
    edit: &HeaderEdit,
    worker: &Worker,
    src_mac: &[u8; 6],
) {
    let eth = pkt.eth;
    let (ip4, ip6) = if pkt.family == family::IPV4 {
        (Some(pkt.ip as *mut Ipv4Hdr), None)
    } else {
        (None, Some(pkt.ip as *mut Ipv6Hdr))
    };
    // SAFETY (every deref here): `parse` checked each header lies within
    // the frame, `faas_header` the FaaS header.
    let udp = unsafe { &mut *pkt.udp };
    let hdr = unsafe { &mut *hdr };
    let udp_check = u16::from_be_bytes(udp.check);
    let mut patch = edit_header(pkt, hdr, edit, Patch::new(udp_check));
    // A packet that leaves from the service gets the old destination (the
    // service address and port it was sent to) as its source, and the
    // worker as its destination. The checksums cover the sum of source and
    // destination, so that sum loses the old source and gains the worker,
    // just as a plain dispatch loses the old destination: one patch either
    // way, from whichever field the worker's address replaces in the sum.
    let from_service = edit.leaves_from_service();
    let old_port = if from_service { udp.src } else { udp.dst };
    patch = patch.bytes(&old_port, &worker.port);
    if from_service {
        udp.src = udp.dst;
    }
    udp.dst = worker.port;

    match (ip4, ip6) {
        (Some(ip), _) => {
            let ip = unsafe { &mut *ip };
            let new_addr = [
                worker.addr[0],
                worker.addr[1],
                worker.addr[2],
                worker.addr[3],
            ];
            let old_addr = if from_service {
                ip.src_addr
            } else {
                ip.dst_addr
            };
            // The UDP pseudo-header holds the addresses too: one change,
            // added to both checksums.
            let change = Delta::of(&old_addr, &new_addr);
            patch = patch.apply(change);
            let ip_patch = Patch::new(u16::from_be_bytes(ip.check)).apply(change);
            if from_service {
                ip.src_addr = ip.dst_addr;
            }
            ip.dst_addr = new_addr;
            ip.check = ip_patch.finish().to_be_bytes();
            // A zero UDP checksum over IPv4 means "none": it stays zero.
            if udp_check != 0 {
                udp.check = patch.finish_udp().to_be_bytes();
            }
        }
        (None, Some(ip)) => {
            let ip = unsafe { &mut *ip };
            let old_addr = if from_service {
                ip.src_addr
            } else {
                ip.dst_addr
            };
            patch = patch.bytes(&old_addr, &worker.addr);
            if from_service {
                ip.src_addr = ip.dst_addr;
            }
            ip.dst_addr = worker.addr;
            // IPv6 forbids a zero UDP checksum; a sender that sent one sent
            // an invalid packet, which is forwarded as it came.
            if udp_check != 0 {
                udp.check = patch.finish_udp().to_be_bytes();
            }
        }
        (None, None) => {}
    }

    let eth = unsafe { &mut *eth };
    copy_mac(&mut eth.dst_addr, &worker.mac);
    copy_mac(&mut eth.src_addr, src_mac);
}

/// A MAC as a word and a half-word (misaligned loads and stores are
/// allowed, see dispatcher/build.rs): a `[u8; 6]` assignment compiles to
/// a memcpy call in BPF, and byte by byte to twelve loads and stores.
#[inline(always)]
fn copy_mac(dst: &mut [u8; 6], src: &[u8; 6]) {
    let (d, s) = (dst.as_mut_ptr(), src.as_ptr());
    // SAFETY: both point at 6 bytes; unaligned accesses are explicit.
    unsafe {
        (d as *mut u32).write_unaligned((s as *const u32).read_unaligned());
        (d.add(4) as *mut u16).write_unaligned((s.add(4) as *const u16).read_unaligned());
    }
}
