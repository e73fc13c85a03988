//! The worker control protocol: heartbeats that carry a worker's load.
//!
//! A worker sends one every interval, over UDP, to the daemon's health
//! address. 56 bytes, big-endian:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `FDHB` |
//! | 4 | 1 | version 1 |
//! | 5 | 1 | type 1 (heartbeat) |
//! | 6 | 2 | the worker's serving UDP port |
//! | 8 | 16 | the worker's serving address (IPv6, or IPv4-mapped) |
//! | 24 | 4 | requests in flight |
//! | 28 | 4 | capacity (requests it can hold; 0 = unknown) |
//! | 32 | 8 | send time, ns since the Unix epoch |
//! | 40 | 16 | HMAC-SHA256 of bytes 0..40 under the shared key, first 16 bytes |
//!
//! The daemon accepts a heartbeat only from a configured network, with a
//! valid MAC, sent within 30 s of its own clock and later than the last
//! one it accepted from that worker (no replays). docs/control-protocol.md
//! says more.

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

pub const LEN: usize = 56;
const MAGIC: &[u8; 4] = b"FDHB";
const VERSION: u8 = 1;
const TYPE_HEARTBEAT: u8 = 1;
const SIGNED: usize = 40;
/// Heartbeats older or newer than this (by the daemon's clock) are refused.
pub const MAX_SKEW: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// Where the worker serves requests.
    pub worker: SocketAddr,
    pub in_flight: u32,
    pub capacity: u32,
    /// Send time, ns since the Unix epoch.
    pub sent_ns: u64,
}

/// Why a heartbeat was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("not a heartbeat (size or magic)")]
    Malformed,
    #[error("bad MAC: wrong key, or altered")]
    Auth,
    #[error("sent too far from the daemon's clock")]
    Stale,
}

fn mac(key: &[u8], bytes: &[u8]) -> [u8; 16] {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    m.update(bytes);
    let full = m.finalize().into_bytes();
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}

pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl Heartbeat {
    pub fn encode(&self, key: &[u8]) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[0..4].copy_from_slice(MAGIC);
        b[4] = VERSION;
        b[5] = TYPE_HEARTBEAT;
        b[6..8].copy_from_slice(&self.worker.port().to_be_bytes());
        let v6 = match self.worker.ip() {
            IpAddr::V4(a) => a.to_ipv6_mapped(),
            IpAddr::V6(a) => a,
        };
        b[8..24].copy_from_slice(&v6.octets());
        b[24..28].copy_from_slice(&self.in_flight.to_be_bytes());
        b[28..32].copy_from_slice(&self.capacity.to_be_bytes());
        b[32..40].copy_from_slice(&self.sent_ns.to_be_bytes());
        let tag = mac(key, &b[..SIGNED]);
        b[SIGNED..].copy_from_slice(&tag);
        b
    }

    /// Checks size, magic, MAC and freshness against `now_ns`.
    pub fn decode(b: &[u8], key: &[u8], now_ns: u64) -> Result<Heartbeat, Refused> {
        if b.len() != LEN || &b[0..4] != MAGIC || b[4] != VERSION || b[5] != TYPE_HEARTBEAT {
            return Err(Refused::Malformed);
        }
        let expected = mac(key, &b[..SIGNED]);
        // Constant-time compare: a timing leak would help forge MACs.
        if expected
            .iter()
            .zip(&b[SIGNED..])
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            != 0
        {
            return Err(Refused::Auth);
        }
        let be32 = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let mut sent = [0u8; 8];
        sent.copy_from_slice(&b[32..40]);
        let sent_ns = u64::from_be_bytes(sent);
        if sent_ns.abs_diff(now_ns) > MAX_SKEW.as_nanos() as u64 {
            return Err(Refused::Stale);
        }
        let mut addr = [0u8; 16];
        addr.copy_from_slice(&b[8..24]);
        let v6 = Ipv6Addr::from(addr);
        let ip: IpAddr = v6.to_ipv4_mapped().map_or(v6.into(), Into::into);
        Ok(Heartbeat {
            worker: SocketAddr::new(ip, u16::from_be_bytes([b[6], b[7]])),
            in_flight: be32(24),
            capacity: be32(28),
            sent_ns,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Heartbeat {
        Heartbeat {
            worker: "10.0.0.10:9000".parse().unwrap(),
            in_flight: 7,
            capacity: 64,
            sent_ns: 1_000_000_000_000,
        }
    }

    #[test]
    fn round_trips_and_refuses_forgeries() {
        let hb = sample();
        let b = hb.encode(b"key");
        assert_eq!(b.len(), LEN);
        assert_eq!(Heartbeat::decode(&b, b"key", hb.sent_ns), Ok(hb));
        assert_eq!(
            Heartbeat::decode(&b, b"other key", hb.sent_ns),
            Err(Refused::Auth)
        );
        let mut altered = b;
        altered[27] ^= 1; // in_flight
        assert_eq!(
            Heartbeat::decode(&altered, b"key", hb.sent_ns),
            Err(Refused::Auth)
        );
        assert_eq!(
            Heartbeat::decode(&b[..55], b"key", hb.sent_ns),
            Err(Refused::Malformed)
        );
        let late = hb.sent_ns + MAX_SKEW.as_nanos() as u64 + 1;
        assert_eq!(Heartbeat::decode(&b, b"key", late), Err(Refused::Stale));
    }
}
