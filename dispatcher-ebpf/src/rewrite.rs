//! Rewriting a REQUEST toward its worker: destination MAC, IP and UDP port,
//! source MAC; IPv4 header and UDP checksums patched incrementally.
//! The source IP and port stay the client's, so the worker answers it
//! directly.

use dispatcher_common::{
    checksum::Patch,
    maps::{family, Worker},
    stats::Counter,
};

use crate::parse::{Ip, Packet};

#[inline(always)]
pub fn toward_worker(pkt: &Packet, worker: &Worker, iface_mac: &[u8; 6]) -> Result<(), Counter> {
    // SAFETY (every deref here): the parser bounds-checked each header
    // pointer, and nothing has resized the packet since.
    let udp = unsafe { &mut *pkt.udp };
    let old_port = udp.dst;
    let new_port = worker.port;
    let udp_check = u16::from_be_bytes(udp.check);

    match pkt.ip {
        Ip::V4(ip) => {
            if worker.family != family::IPV4 {
                return Err(Counter::PassFamilyMismatch);
            }
            let ip = unsafe { &mut *ip };
            let old_addr = ip.dst_addr;
            let new_addr = [worker.addr[0], worker.addr[1], worker.addr[2], worker.addr[3]];
            let ip_check = Patch::new(u16::from_be_bytes(ip.check)).bytes(&old_addr, &new_addr);
            ip.check = ip_check.finish().to_be_bytes();
            ip.dst_addr = new_addr;
            // A zero UDP checksum over IPv4 means "none": it stays zero.
            if udp_check != 0 {
                let patch = Patch::new(udp_check)
                    .bytes(&old_addr, &new_addr)
                    .bytes(&old_port, &new_port);
                udp.check = patch.finish_udp().to_be_bytes();
            }
        }
        Ip::V6(ip) => {
            if worker.family != family::IPV6 {
                return Err(Counter::PassFamilyMismatch);
            }
            let ip = unsafe { &mut *ip };
            let old_addr = ip.dst_addr;
            let patch = Patch::new(udp_check)
                .bytes(&old_addr, &worker.addr)
                .bytes(&old_port, &new_port);
            // IPv6 forbids a zero UDP checksum; a sender that sent one sent
            // an invalid packet, which is forwarded as it came.
            if udp_check != 0 {
                udp.check = patch.finish_udp().to_be_bytes();
            }
            ip.dst_addr = worker.addr;
        }
    }
    udp.dst = new_port;

    let eth = unsafe { &mut *pkt.eth };
    copy_mac(&mut eth.dst_addr, &worker.mac);
    copy_mac(&mut eth.src_addr, iface_mac);
    Ok(())
}

/// Byte by byte: a `[u8; 6]` assignment compiles to a memcpy call in BPF.
#[inline(always)]
fn copy_mac(dst: &mut [u8; 6], src: &[u8; 6]) {
    dst[0] = src[0];
    dst[1] = src[1];
    dst[2] = src[2];
    dst[3] = src[3];
    dst[4] = src[4];
    dst[5] = src[5];
}
