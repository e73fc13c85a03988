//! Named counters of the data plane: every packet the program sees lands in
//! exactly one of them, so `sum(counters) == packets seen`.
//!
//! The `STATS` map is an array indexed by [`Counter`] (per-CPU in the host
//! variant); user space sums the CPUs and prints [`Counter::name`].

/// Defines `Counter` with its index order, `ALL` and the operator-facing
/// names from one list, so the three can never disagree.
macro_rules! counters {
    ($($(#[$doc:meta])* $variant:ident => $name:literal,)+) => {
        /// What happened to a packet. `#[repr(u32)]`: the value is the index.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Counter {
            $($(#[$doc])* $variant,)+
        }

        impl Counter {
            /// Every counter, in index order.
            pub const ALL: &'static [Counter] = &[$(Counter::$variant,)+];
            /// Number of counters: the size of the `STATS` maps.
            pub const COUNT: u32 = Counter::ALL.len() as u32;

            /// The name operators see (`dispatcher stats`).
            pub const fn name(self) -> &'static str {
                match self {
                    $(Counter::$variant => $name,)+
                }
            }
        }
    };
}

counters! {
    /// A REQUEST for a function, rewritten toward a worker and transmitted.
    DispatchedRequest => "dispatched_request",
    /// A REQUEST for a workflow: step 0 dispatched with reply_* filled in.
    DispatchedWorkflow => "dispatched_workflow",
    /// A STEP from a registered worker, dispatched to the step's function.
    DispatchedStep => "dispatched_step",
    /// A BUSY from a registered worker, re-steered to another worker.
    Resteered => "resteered",
    /// Not IPv4 or IPv6 (ARP, LLDP, ...): passed.
    PassNotIp => "pass_not_ip",
    /// IP, but not UDP: passed.
    PassNotUdp => "pass_not_udp",
    /// Addressed to another host's MAC (a frame a bridge flooded, or one
    /// seen in promiscuous mode): passed, for the host stack to drop.
    PassNotForUs => "pass_not_for_us",
    /// UDP, but not to a service address and port: passed.
    PassNotService => "pass_not_service",
    /// An IPv4 fragment or an IPv6 fragment header: passed to the host
    /// stack, which reassembles; the daemon dispatches it (the slow path).
    PassFragment => "pass_fragment",
    /// IPv6 extension headers the program does not walk (routing with
    /// segments left, AH, ESP), hop-by-hop options anywhere but first, or
    /// a chain longer than its bound: passed.
    PassIpv6ExtHeader => "pass_ipv6_ext_header",
    /// Headers that do not parse within the frame (truncated, bad IHL):
    /// passed untouched.
    PassMalformed => "pass_malformed",
    /// An IP or UDP length field that lies: the IPv4 total length or IPv6
    /// payload length promises more than the frame holds (or the IPv4 one
    /// less than its header), or the UDP length is under 8 or runs past
    /// the IP payload. Passed untouched: a strict receiver would drop it.
    PassBadLength => "pass_bad_length",
    /// To the service, but shorter than UDP + the 48-byte FaaS header.
    PassShort => "pass_short",
    /// To the service, but the magic is wrong: not a FaaS packet.
    PassBadMagic => "pass_bad_magic",
    /// Unsupported protocol version: the host answers with ERROR 3.
    PassBadVersion => "pass_bad_version",
    /// A kind the data plane does not dispatch (RESPONSE, ERROR, reserved).
    PassNotRequest => "pass_not_request",
    /// A REQUEST for an id that is neither a function nor a workflow: the
    /// host answers with ERROR 1.
    PassUnknownFunction => "pass_unknown_function",
    /// No up worker for the function: the host answers with ERROR 2.
    PassNoWorker => "pass_no_worker",
    /// The chosen worker's address family differs from the packet's.
    PassFamilyMismatch => "pass_family_mismatch",
    /// A STEP (or workflow packet) for an unknown workflow or a step out of
    /// range: the host answers with ERROR 4.
    PassBadStep => "pass_bad_step",
    /// A BUSY after 3 re-steers, or with no other up worker: the host
    /// answers with ERROR 7.
    PassBusyExhausted => "pass_busy_exhausted",
    /// The settings entry is missing (the loader did not configure it).
    PassNotConfigured => "pass_not_configured",
    /// A STEP or BUSY whose source is not a registered worker: dropped.
    DropNotRegistered => "drop_not_registered",
    /// Two-arm egress is configured but the redirect failed: dropped.
    DropEgressFailed => "drop_egress_failed",
}

impl Counter {
    /// Did the data plane dispatch the packet itself?
    pub const fn is_dispatch(self) -> bool {
        matches!(
            self,
            Counter::DispatchedRequest
                | Counter::DispatchedWorkflow
                | Counter::DispatchedStep
                | Counter::Resteered
        )
    }

    /// Is the packet dropped (rather than passed or dispatched)?
    pub const fn is_drop(self) -> bool {
        matches!(self, Counter::DropNotRegistered | Counter::DropEgressFailed)
    }

    /// Does it mean the operator has something to fix (no worker up, all
    /// busy, a redirect target gone), rather than traffic that is simply
    /// not ours? The host program logs these, through aya-log, at
    /// rising intervals.
    pub const fn is_alarm(self) -> bool {
        matches!(
            self,
            Counter::PassNoWorker | Counter::PassBusyExhausted | Counter::DropEgressFailed
        )
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
