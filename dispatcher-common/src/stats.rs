//! Named counters of the data plane: every packet the program sees lands in
//! exactly one of them, so `sum(counters) == packets seen`.
//!
//! The `STATS` map is a per-CPU array indexed by [`Counter`]; user space sums
//! the CPUs and prints [`Counter::name`].

/// What happened to a packet. `#[repr(u32)]`: the value is the `STATS` index.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Counter {
    /// A REQUEST rewritten toward a worker and transmitted.
    Dispatched = 0,
    /// Not IPv4 or IPv6 (ARP, LLDP, ...): passed.
    PassNotIp,
    /// IP, but not UDP: passed.
    PassNotUdp,
    /// UDP, but not to a service address and port: passed.
    PassNotService,
    /// An IPv4 fragment or an IPv6 fragment header: passed
    /// to the host stack, which reassembles (the slow path).
    PassFragment,
    /// An IPv6 packet with extension headers before UDP: passed.
    PassIpv6ExtHeader,
    /// Headers that do not parse within the packet (truncated, bad IHL,
    /// bad lengths): passed untouched.
    PassMalformed,
    /// To the service, but shorter than UDP + the 48-byte FaaS header.
    PassShort,
    /// To the service, but the magic is wrong.
    PassBadMagic,
    /// To the service, but an unsupported protocol version: the host answers
    /// with ERROR 3.
    PassBadVersion,
    /// A FaaS kind the data plane does not dispatch (yet): passed to the host.
    PassNotRequest,
    /// A REQUEST for a function id that is not configured: the host answers
    /// with ERROR 1.
    PassUnknownFunction,
    /// A REQUEST for a function with no usable worker: the host answers with
    /// ERROR 2.
    PassNoWorker,
    /// The chosen worker's address family differs from the packet's: passed.
    PassFamilyMismatch,
    /// The map of settings is missing its entry (not loaded correctly).
    PassNotConfigured,
}

impl Counter {
    /// Number of counters: the `STATS` map's size.
    pub const COUNT: u32 = Counter::PassNotConfigured as u32 + 1;

    /// Every counter, in index order.
    pub const ALL: [Counter; Counter::COUNT as usize] = [
        Counter::Dispatched,
        Counter::PassNotIp,
        Counter::PassNotUdp,
        Counter::PassNotService,
        Counter::PassFragment,
        Counter::PassIpv6ExtHeader,
        Counter::PassMalformed,
        Counter::PassShort,
        Counter::PassBadMagic,
        Counter::PassBadVersion,
        Counter::PassNotRequest,
        Counter::PassUnknownFunction,
        Counter::PassNoWorker,
        Counter::PassFamilyMismatch,
        Counter::PassNotConfigured,
    ];

    /// The name operators see (`dispatcher stats`).
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Dispatched => "dispatched",
            Counter::PassNotIp => "pass_not_ip",
            Counter::PassNotUdp => "pass_not_udp",
            Counter::PassNotService => "pass_not_service",
            Counter::PassFragment => "pass_fragment",
            Counter::PassIpv6ExtHeader => "pass_ipv6_ext_header",
            Counter::PassMalformed => "pass_malformed",
            Counter::PassShort => "pass_short",
            Counter::PassBadMagic => "pass_bad_magic",
            Counter::PassBadVersion => "pass_bad_version",
            Counter::PassNotRequest => "pass_not_request",
            Counter::PassUnknownFunction => "pass_unknown_function",
            Counter::PassNoWorker => "pass_no_worker",
            Counter::PassFamilyMismatch => "pass_family_mismatch",
            Counter::PassNotConfigured => "pass_not_configured",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_index_order_and_names_are_unique() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
        for a in Counter::ALL {
            for b in Counter::ALL {
                if a != b {
                    assert_ne!(a.name(), b.name());
                }
            }
        }
    }
}
