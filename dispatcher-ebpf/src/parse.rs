//! Header parsing: Ethernet, up to two VLAN tags, IPv4 (with options) or
//! IPv6 (with a bounded walk over extension headers), UDP, then the FaaS
//! header. Every access goes through `ptr_at`, the one bounds check the
//! verifier and the reader need to see.

use core::mem;

use aya_ebpf::programs::XdpContext;
use dispatcher_common::{
    maps::{family, Endpoint},
    net::{
        self, IPPROTO_UDP, IPV4_MF_OR_OFFSET, IPV6_AH, IPV6_DEST_OPTS, IPV6_ESP, IPV6_FRAGMENT,
        IPV6_HOP_BY_HOP, IPV6_ROUTING, MAX_IPV6_EXT_HEADERS,
    },
    protocol::FaasHdr,
    stats::Counter,
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    udp::UdpHdr,
    vlan::VlanHdr,
};

// EtherTypes as the raw (network-order) values read from the packet, so
// comparisons need no byte swap.
const ETH_P_IP: u16 = net::ETHERTYPE_IPV4.to_be();
const ETH_P_IPV6: u16 = net::ETHERTYPE_IPV6.to_be();
const ETH_P_8021Q: u16 = net::ETHERTYPE_8021Q.to_be();
const ETH_P_8021AD: u16 = net::ETHERTYPE_8021AD.to_be();

/// A pointer to a `T` at `offset` into the packet, if the whole `T` lies
/// before `data_end`.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// A parsed UDP packet: where its headers are, as pointers checked once.
///
/// It is handed to a continuation (`Packet::parse(ctx, |pkt| ...)`), never
/// returned: a struct of packet pointers moved through a `Result` gets
/// split into 32-bit halves by LLVM, which the verifier rejects ("pointer
/// arithmetic with >>= operator prohibited"), and re-deriving each pointer
/// from an offset cost a bounds check at every use (eleven per request).
///
/// Addresses are not copied out here: a request needs only its
/// destination (the service check), read as words by `destination`; the
/// source is built by `source` on the paths that need it (STEP and BUSY,
/// workflows, hashing without a key). Building both endpoints for every
/// packet cost about a third of the dispatch path in byte moves.
pub struct Packet {
    pub eth: *mut EthHdr,
    /// The IP header: an `Ipv4Hdr` or an `Ipv6Hdr` by `family`.
    pub ip: *mut u8,
    pub udp: *mut UdpHdr,
    /// One of `family`.
    pub family: u8,
    /// Length of the whole frame, for byte counters.
    pub len: u64,
}

/// An address as the four native-order words of its 16 bytes (IPv4-mapped
/// for IPv4), and a port: compared and hashed a word at a time.
#[derive(Clone, Copy)]
pub struct Destination {
    pub words: [u32; 4],
    /// Network byte order.
    pub port: [u8; 2],
}

/// The third word of an IPv4-mapped address (`::ffff:0:0`), in memory order.
const MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// Reads a 32-bit word of packet memory at any alignment: one load, as
/// the object is built with `allows-misaligned-mem-access` (the kernel's
/// JIT on x86 and arm64 loads unaligned words natively; without the
/// feature LLVM splits it into four byte loads).
#[inline(always)]
fn word_at(p: *const u8) -> u32 {
    // SAFETY: callers pass pointers from `ptr_at` covering the 4 bytes.
    unsafe { core::ptr::read_unaligned(p as *const u32) }
}

/// `::ffff:a.b.c.d`, every byte written (a partial fill compiles to a
/// memset call in BPF).
#[inline(always)]
fn mapped(a: [u8; 4], port: [u8; 2]) -> Endpoint {
    Endpoint {
        addr: [
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
        ],
        port,
        _pad: [0; 2],
    }
}

impl Packet {
    /// Parses down to the UDP header and runs `then` on the packet.
    /// Non-UDP traffic, fragments, anything that does not fit in the frame
    /// and length fields that lie are `Err` with their counter.
    #[inline(always)]
    pub fn parse<T>(
        ctx: &XdpContext,
        then: impl FnOnce(&Packet) -> Result<T, Counter>,
    ) -> Result<T, Counter> {
        let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(Counter::PassMalformed)?;
        let mut offset = EthHdr::LEN;
        // SAFETY (every deref in this function): the pointer came from
        // `ptr_at`, so the header lies within the frame.
        let mut ether_type = unsafe { (*eth).ether_type };

        // Up to two VLAN tags (802.1ad outer, 802.1Q inner, or either alone).
        // Unrolled by hand: the verifier sees straight-line code.
        if ether_type == ETH_P_8021AD || ether_type == ETH_P_8021Q {
            let vlan: *mut VlanHdr = ptr_at(ctx, offset).ok_or(Counter::PassMalformed)?;
            ether_type = unsafe { (*vlan).ether_type };
            offset += VlanHdr::LEN;
        }
        if ether_type == ETH_P_8021AD || ether_type == ETH_P_8021Q {
            let vlan: *mut VlanHdr = ptr_at(ctx, offset).ok_or(Counter::PassMalformed)?;
            ether_type = unsafe { (*vlan).ether_type };
            offset += VlanHdr::LEN;
        }

        let (family, ip, l4_offset, ip_end) = if ether_type == ETH_P_IP {
            let ip: *mut Ipv4Hdr = ptr_at(ctx, offset).ok_or(Counter::PassMalformed)?;
            let vihl = unsafe { (*ip).vihl };
            let header_len = ((vihl & 0x0F) as usize) * 4;
            if vihl >> 4 != 4 || header_len < Ipv4Hdr::LEN {
                return Err(Counter::PassMalformed);
            }
            if unsafe { (*ip).proto } != IPPROTO_UDP {
                return Err(Counter::PassNotUdp);
            }
            if u16::from_be_bytes(unsafe { (*ip).frags }) & IPV4_MF_OR_OFFSET != 0 {
                return Err(Counter::PassFragment);
            }
            let total_len = u16::from_be_bytes(unsafe { (*ip).tot_len }) as usize;
            if total_len < header_len {
                return Err(Counter::PassBadLength);
            }
            (
                family::IPV4,
                ip as *mut u8,
                offset + header_len,
                offset + total_len,
            )
        } else if ether_type == ETH_P_IPV6 {
            let ip: *mut Ipv6Hdr = ptr_at(ctx, offset).ok_or(Counter::PassMalformed)?;
            // The version is the first byte's high nibble (the rest of the
            // first word is traffic class and flow label).
            if unsafe { *(ip as *const u8) } >> 4 != 6 {
                return Err(Counter::PassMalformed);
            }
            let payload_len = u16::from_be_bytes(unsafe { (*ip).payload_len }) as usize;
            let l4 = skip_ipv6_extensions(ctx, unsafe { (*ip).next_hdr }, offset + Ipv6Hdr::LEN)?;
            (
                family::IPV6,
                ip as *mut u8,
                l4,
                offset + Ipv6Hdr::LEN + payload_len,
            )
        } else {
            return Err(Counter::PassNotIp);
        };

        let udp: *mut UdpHdr = ptr_at(ctx, l4_offset).ok_or(Counter::PassMalformed)?;
        // The lengths a strict receiver checks: the IP packet within the
        // frame (Ethernet padding may follow it), the UDP datagram within
        // the IP payload (it may end before it).
        let frame_len = ctx.data_end() - ctx.data();
        let udp_len = u16::from_be_bytes(unsafe { (*udp).len }) as usize;
        if ip_end > frame_len || udp_len < UdpHdr::LEN || l4_offset + udp_len > ip_end {
            return Err(Counter::PassBadLength);
        }
        then(&Packet {
            eth,
            ip,
            udp,
            family,
            len: frame_len as u64,
        })
    }

    /// The destination address and port, as words (for the service check).
    #[inline(always)]
    pub fn destination(&self) -> Destination {
        // SAFETY (every deref): `parse` checked the headers lie within the
        // frame.
        let port = unsafe { (*self.udp).dst };
        let words = if self.family == family::IPV4 {
            let ip = self.ip as *const Ipv4Hdr;
            let dst = unsafe { core::ptr::addr_of!((*ip).dst_addr) } as *const u8;
            [0, 0, MAPPED_WORD, word_at(dst)]
        } else {
            let ip = self.ip as *const Ipv6Hdr;
            let dst = unsafe { core::ptr::addr_of!((*ip).dst_addr) } as *const u8;
            // SAFETY: within the 16 bytes of the address.
            unsafe {
                [
                    word_at(dst),
                    word_at(dst.add(4)),
                    word_at(dst.add(8)),
                    word_at(dst.add(12)),
                ]
            }
        };
        Destination { words, port }
    }

    /// The source address (IPv4-mapped for IPv4) and port, built only on
    /// the paths that need it.
    #[inline(always)]
    pub fn source(&self) -> Endpoint {
        // SAFETY (every deref): `parse` checked the headers.
        let port = unsafe { (*self.udp).src };
        if self.family == family::IPV4 {
            mapped(unsafe { (*(self.ip as *const Ipv4Hdr)).src_addr }, port)
        } else {
            Endpoint {
                addr: unsafe { (*(self.ip as *const Ipv6Hdr)).src_addr },
                port,
                _pad: [0; 2],
            }
        }
    }

    /// Whether the frame's destination MAC is `mac`: a word and a
    /// half-word compared, folded into one test (no memcmp in BPF).
    #[inline(always)]
    pub fn addressed_to(&self, mac: &[u8; 6]) -> bool {
        let (p, m) = (self.eth as *const u8, mac.as_ptr());
        // SAFETY: both point at 6 bytes (`parse` checked the packet's).
        let diff = unsafe {
            (word_at(p) ^ word_at(m))
                | ((p.add(4) as *const u16).read_unaligned()
                    ^ (m.add(4) as *const u16).read_unaligned()) as u32
        };
        diff == 0
    }

    /// The FaaS header after the UDP header. A datagram too short to hold
    /// one is not a FaaS packet.
    #[inline(always)]
    pub fn faas_header(&self, ctx: &XdpContext) -> Result<*mut FaasHdr, Counter> {
        // SAFETY: `parse` checked the UDP header.
        let udp_len = u16::from_be_bytes(unsafe { (*self.udp).len }) as usize;
        if udp_len < UdpHdr::LEN + FaasHdr::LEN {
            return Err(Counter::PassShort);
        }
        let hdr = (self.udp as usize + UdpHdr::LEN) as *mut FaasHdr;
        if hdr as usize + FaasHdr::LEN > ctx.data_end() {
            return Err(Counter::PassShort);
        }
        Ok(hdr)
    }
}

/// Walks up to MAX_IPV6_EXT_HEADERS hop-by-hop (first only), routing (with
/// no segments left: the destination is final) and destination-options
/// headers, and returns the offset of the UDP header.
#[inline(always)]
fn skip_ipv6_extensions(
    ctx: &XdpContext,
    mut next: u8,
    mut offset: usize,
) -> Result<usize, Counter> {
    for i in 0..MAX_IPV6_EXT_HEADERS {
        match next {
            IPPROTO_UDP => return Ok(offset),
            IPV6_FRAGMENT => return Err(Counter::PassFragment),
            // Hop-by-hop options come first or not at all (RFC 8200 4.1;
            // a receiver drops them anywhere else).
            IPV6_HOP_BY_HOP if i > 0 => return Err(Counter::PassIpv6ExtHeader),
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS => {}
            // ESP, AH: not walked.
            IPV6_ESP | IPV6_AH => return Err(Counter::PassIpv6ExtHeader),
            _ => return Err(Counter::PassNotUdp),
        }
        // Next header, length in 8-octet units beyond the first 8, and for a
        // routing header: type, segments left.
        let ext: *const [u8; 4] = ptr_at(ctx, offset).ok_or(Counter::PassMalformed)?;
        // SAFETY: bounds-checked just above.
        let ext = unsafe { *ext };
        if next == IPV6_ROUTING && ext[3] != 0 {
            return Err(Counter::PassIpv6ExtHeader);
        }
        next = ext[0];
        offset += (ext[1] as usize + 1) * 8;
    }
    match next {
        IPPROTO_UDP => Ok(offset),
        IPV6_FRAGMENT => Err(Counter::PassFragment),
        // A chain longer than the bound.
        IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS | IPV6_ESP | IPV6_AH => {
            Err(Counter::PassIpv6ExtHeader)
        }
        _ => Err(Counter::PassNotUdp),
    }
}
