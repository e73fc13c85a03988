//! Yardsticks for `cargo xtask bench-xdp`, built into the same object so
//! they are compiled and measured exactly like the dispatcher:
//!
//! - `yardstick_floor`: a minimal L3 forwarder: parse Ethernet, IP and UDP
//!   at fixed offsets, swap MACs, addresses and ports, XDP_TX. (Swapping
//!   leaves every checksum valid, so it has none to fix: the cheapest
//!   rewrite there is.)
//! - `yardstick_one_lookup`: a minimal dispatcher: the same parse plus the
//!   FaaS header, one hash lookup of the function id, then a rewrite toward
//!   a fixed worker with incremental checksums.
//! - `yardstick_one_array_lookup`: the same, finding the function as the
//!   host's dispatcher does (SETTINGS, then the direct table: array
//!   lookups, no call), so the dispatcher can also be measured against a
//!   one-lookup rewrite that pays no helper call.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use dispatcher_common::{checksum::Patch, protocol::FaasHdr};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    udp::UdpHdr,
};

use crate::{maps, parse::ptr_at};

const ETH_P_IP: u16 = dispatcher_common::net::ETHERTYPE_IPV4.to_be();
const ETH_P_IPV6: u16 = dispatcher_common::net::ETHERTYPE_IPV6.to_be();

/// The fixed worker of `yardstick_one_lookup`: 02:00:00:00:00:0a,
/// 10.0.0.10 or fd00::10, port 9000. Written byte by byte below, as
/// immediates (array constants would land in .rodata).
const WORKER_PORT: [u8; 2] = 9000u16.to_be_bytes();

#[xdp]
pub fn yardstick_floor(ctx: XdpContext) -> u32 {
    floor(&ctx).unwrap_or(xdp_action::XDP_PASS)
}

#[xdp]
pub fn yardstick_one_lookup(ctx: XdpContext) -> u32 {
    one_lookup(&ctx, false).unwrap_or(xdp_action::XDP_PASS)
}

#[xdp]
pub fn yardstick_one_array_lookup(ctx: XdpContext) -> u32 {
    one_lookup(&ctx, true).unwrap_or(xdp_action::XDP_PASS)
}

#[inline(always)]
fn swap<const N: usize>(a: &mut [u8; N], b: &mut [u8; N]) {
    for i in 0..N {
        let t = a[i];
        a[i] = b[i];
        b[i] = t;
    }
}

#[inline(always)]
fn floor(ctx: &XdpContext) -> Option<u32> {
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    // SAFETY (every deref): pointers from `ptr_at` lie within the frame.
    let eth = unsafe { &mut *eth };
    let udp: *mut UdpHdr = if eth.ether_type == ETH_P_IP {
        let ip = unsafe { &mut *ptr_at::<Ipv4Hdr>(ctx, EthHdr::LEN)? };
        swap(&mut ip.src_addr, &mut ip.dst_addr);
        ptr_at(ctx, EthHdr::LEN + Ipv4Hdr::LEN)?
    } else if eth.ether_type == ETH_P_IPV6 {
        let ip = unsafe { &mut *ptr_at::<Ipv6Hdr>(ctx, EthHdr::LEN)? };
        swap(&mut ip.src_addr, &mut ip.dst_addr);
        ptr_at(ctx, EthHdr::LEN + Ipv6Hdr::LEN)?
    } else {
        return None;
    };
    let udp = unsafe { &mut *udp };
    swap(&mut udp.src, &mut udp.dst);
    swap(&mut eth.src_addr, &mut eth.dst_addr);
    Some(xdp_action::XDP_TX)
}

#[inline(always)]
fn one_lookup(ctx: &XdpContext, direct: bool) -> Option<u32> {
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    // SAFETY (every deref): pointers from `ptr_at` lie within the frame.
    let eth = unsafe { &mut *eth };
    let v4 = eth.ether_type == ETH_P_IP;
    let l4 = EthHdr::LEN + if v4 { Ipv4Hdr::LEN } else { Ipv6Hdr::LEN };
    if !v4 && eth.ether_type != ETH_P_IPV6 {
        return None;
    }
    let udp = unsafe { &mut *ptr_at::<UdpHdr>(ctx, l4)? };
    let hdr = unsafe { &*ptr_at::<FaasHdr>(ctx, l4 + UdpHdr::LEN)? };
    if direct {
        let settings = maps::settings().ok()?;
        maps::function(settings, hdr.function_id(), true)?;
    } else {
        maps::function_by_hash(hdr.function_id())?;
    }

    let mut patch = Patch::new(u16::from_be_bytes(udp.check)).bytes(&udp.dst, &WORKER_PORT);
    udp.dst = WORKER_PORT;
    if v4 {
        let ip = unsafe { &mut *ptr_at::<Ipv4Hdr>(ctx, EthHdr::LEN)? };
        let new = [10, 0, 0, 10];
        patch = patch.bytes(&ip.dst_addr, &new);
        ip.check = Patch::new(u16::from_be_bytes(ip.check))
            .bytes(&ip.dst_addr, &new)
            .finish()
            .to_be_bytes();
        ip.dst_addr = new;
    } else {
        let ip = unsafe { &mut *ptr_at::<Ipv6Hdr>(ctx, EthHdr::LEN)? };
        let mut new = [0u8; 16];
        new[0] = 0xfd;
        new[15] = 0x10;
        patch = patch.bytes(&ip.dst_addr, &new);
        // Word by word: an array assignment compiles to a memcpy call (a
        // bpf-to-bpf call the dispatcher does not make either).
        let dst = ip.dst_addr.as_mut_ptr();
        for (i, word) in new.chunks_exact(4).enumerate() {
            // SAFETY: within the 16 bytes of the address.
            unsafe {
                (dst.add(i * 4) as *mut u32)
                    .write_unaligned(u32::from_ne_bytes([word[0], word[1], word[2], word[3]]))
            };
        }
    }
    udp.check = patch.finish_udp().to_be_bytes();
    for i in 0..6 {
        eth.src_addr[i] = eth.dst_addr[i];
        eth.dst_addr[i] = if i == 0 {
            0x02
        } else if i == 5 {
            0x0a
        } else {
            0
        };
    }
    Some(xdp_action::XDP_TX)
}
