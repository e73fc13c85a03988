//! Header parsing: Ethernet, up to two VLAN tags, IPv4 (with options) or
//! IPv6, UDP, then the FaaS header. Every access goes through `ptr_at`, the
//! one bounds check the verifier and the reader need to see.

use core::mem;

use aya_ebpf::programs::XdpContext;
use dispatcher_common::{protocol::FaasHdr, stats::Counter};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    udp::UdpHdr,
    vlan::VlanHdr,
};

// EtherTypes and IP protocol numbers as the raw (network-order) values read
// from the packet, so comparisons need no byte swap.
const ETH_P_IP: u16 = 0x0800u16.to_be();
const ETH_P_IPV6: u16 = 0x86DDu16.to_be();
const ETH_P_8021Q: u16 = 0x8100u16.to_be();
const ETH_P_8021AD: u16 = 0x88A8u16.to_be();
const IPPROTO_UDP: u8 = 17;
const IPV6_FRAGMENT: u8 = 44;
/// "More fragments" flag and fragment offset of the IPv4 `frags` field.
const IPV4_MF_OR_OFFSET: u16 = 0x3FFF;

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

/// The network header of a parsed packet.
#[derive(Clone, Copy)]
pub enum Ip {
    V4(*mut Ipv4Hdr),
    V6(*mut Ipv6Hdr),
}

/// A UDP packet, with pointers to each header (all bounds-checked).
pub struct Packet {
    pub eth: *mut EthHdr,
    pub ip: Ip,
    pub udp: *mut UdpHdr,
    /// Offset of the UDP header from the start of the frame.
    l4_offset: usize,
}

impl Packet {
    /// Parses down to the UDP header. Non-UDP traffic, fragments and
    /// anything that does not fit in the frame are `Err` with their counter.
    #[inline(always)]
    pub fn parse(ctx: &XdpContext) -> Result<Packet, Counter> {
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

        let (ip, l4_offset) = if ether_type == ETH_P_IP {
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
            (Ip::V4(ip), offset + header_len)
        } else if ether_type == ETH_P_IPV6 {
            let ip: *mut Ipv6Hdr = ptr_at(ctx, offset).ok_or(Counter::PassMalformed)?;
            match unsafe { (*ip).next_hdr } {
                IPPROTO_UDP => {}
                IPV6_FRAGMENT => return Err(Counter::PassFragment),
                // Hop-by-hop, routing, destination options: not walked yet.
                0 | 43 | 60 => return Err(Counter::PassIpv6ExtHeader),
                _ => return Err(Counter::PassNotUdp),
            }
            (Ip::V6(ip), offset + Ipv6Hdr::LEN)
        } else {
            return Err(Counter::PassNotIp);
        };

        let udp: *mut UdpHdr = ptr_at(ctx, l4_offset).ok_or(Counter::PassMalformed)?;
        Ok(Packet {
            eth,
            ip,
            udp,
            l4_offset,
        })
    }

    /// The UDP destination port as on the wire.
    #[inline(always)]
    pub fn dst_port(&self) -> [u8; 2] {
        // SAFETY: bounds-checked in `parse`.
        unsafe { (*self.udp).dst }
    }

    /// The FaaS header after the UDP header. A datagram too short to hold
    /// one is not a FaaS packet.
    #[inline(always)]
    pub fn faas_header(&self, ctx: &XdpContext) -> Result<*mut FaasHdr, Counter> {
        // SAFETY: bounds-checked in `parse`.
        let udp_len = u16::from_be_bytes(unsafe { (*self.udp).len }) as usize;
        if udp_len < UdpHdr::LEN + FaasHdr::LEN {
            return Err(Counter::PassShort);
        }
        ptr_at(ctx, self.l4_offset + UdpHdr::LEN).ok_or(Counter::PassShort)
    }
}
