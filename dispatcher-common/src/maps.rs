//! Keys and values of the data plane's BPF maps.
//!
//! Names match the map names in the eBPF object (and so the pin names under
//! `<bpffs>/dispatcher/<IF>/`). Addresses and ports are stored in network
//! byte order, exactly as they appear in packets, so the data plane compares
//! and copies them without conversion; ids and counts are host order.

/// Map names, as pinned and as the loader looks them up.
pub mod names {
    pub const SERVICES: &str = "SERVICES";
    pub const SETTINGS: &str = "SETTINGS";
    pub const FUNCTIONS: &str = "FUNCTIONS";
    pub const WORKERS: &str = "WORKERS";
    pub const STATS: &str = "STATS";
    /// Every map the data plane pins, in a stable order.
    pub const ALL: [&str; 5] = [SERVICES, SETTINGS, FUNCTIONS, WORKERS, STATS];
}

/// Up to this many service address:port pairs (VIPs) per interface.
pub const MAX_SERVICES: u32 = 64;
/// Up to this many functions per interface.
pub const MAX_FUNCTIONS: u32 = 1024;
/// Up to this many worker slots per function.
pub const MAX_WORKERS_PER_FUNCTION: u32 = 64;

/// Address family of a [`Worker`] or of a packet.
pub mod family {
    pub const IPV4: u8 = 4;
    pub const IPV6: u8 = 6;
}

/// Worker states: only `UP` workers get new requests.
pub mod worker_state {
    pub const DOWN: u8 = 0;
    pub const UP: u8 = 1;
    pub const DRAINING: u8 = 2;
}

/// Key of `SERVICES`: one address and UDP port the dispatcher serves.
/// An IPv4 address is stored IPv4-mapped (`::ffff:a.b.c.d`), as in the FaaS
/// header's `reply_addr`, so one key type serves both families.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    pub addr: [u8; 16],
    /// Network byte order.
    pub port: [u8; 2],
    pub _pad: [u8; 2],
}

/// Value of `SERVICES`. Reserved for per-service options; present means served.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceValue {
    pub flags: u32,
}

/// The one entry of `SETTINGS`: per-interface facts written by the loader.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// MAC address of the interface the program is attached to: the source
    /// MAC of every frame it transmits.
    pub iface_mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// Value of `FUNCTIONS`, keyed by the function id (host order u32).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Function {
    /// How many worker slots (0..worker_count) are filled in `WORKERS`.
    pub worker_count: u32,
    /// Selection policy, one of [`policy`].
    pub policy: u8,
    pub _pad: [u8; 3],
}

/// Worker selection policies.
pub mod policy {
    pub const ROUND_ROBIN: u8 = 0;
    pub const LEAST_LOADED: u8 = 1;
    pub const P2C: u8 = 2;
    pub const HASH: u8 = 3;
}

/// Key of `WORKERS`: a function's worker slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct WorkerKey {
    pub function_id: u32,
    pub slot: u32,
}

/// Value of `WORKERS`: where a worker is and whether it takes requests.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Worker {
    /// IPv4 in the first 4 bytes (rest zero) or IPv6; see `family`.
    pub addr: [u8; 16],
    /// Destination MAC: the worker's, or the gateway's toward it.
    pub mac: [u8; 6],
    /// UDP port, network byte order.
    pub port: [u8; 2],
    pub weight: u16,
    /// One of [`worker_state`].
    pub state: u8,
    /// One of [`family`].
    pub family: u8,
    pub _pad: [u8; 4],
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)], made only of integers and byte
    // arrays, with every padding byte spelled out as a field, so any bit
    // pattern is valid and no byte is uninitialised.
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::ServiceValue {}
    unsafe impl aya::Pod for super::Settings {}
    unsafe impl aya::Pod for super::Function {}
    unsafe impl aya::Pod for super::WorkerKey {}
    unsafe impl aya::Pod for super::Worker {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    /// The sizes both halves rely on; a change here changes the map ABI.
    #[test]
    fn map_types_have_no_implicit_padding() {
        assert_eq!(size_of::<ServiceKey>(), 20);
        assert_eq!(size_of::<ServiceValue>(), 4);
        assert_eq!(size_of::<Settings>(), 8);
        assert_eq!(size_of::<Function>(), 8);
        assert_eq!(size_of::<WorkerKey>(), 8);
        assert_eq!(size_of::<Worker>(), 32);
    }
}
