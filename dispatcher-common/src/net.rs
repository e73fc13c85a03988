//! The numbers of the headers below the FaaS header (Ethernet, VLAN, IPv4,
//! IPv6 and its extension headers, UDP) that the data plane, the reference
//! model and user space all read. Values are in host order, as the RFCs and
//! IANA registries write them; the kernel's parser swaps them at compile
//! time.

/// EtherTypes (IEEE 802).
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_IPV6: u16 = 0x86DD;
pub const ETHERTYPE_8021Q: u16 = 0x8100;
pub const ETHERTYPE_8021AD: u16 = 0x88A8;

/// Header lengths without options.
pub const ETH_LEN: usize = 14;
pub const VLAN_LEN: usize = 4;
pub const IPV4_LEN: usize = 20;
pub const IPV6_LEN: usize = 40;
pub const UDP_LEN: usize = 8;

/// IP protocol numbers / IPv6 next-header values (IANA).
pub const IPPROTO_UDP: u8 = 17;
pub const IPV6_HOP_BY_HOP: u8 = 0;
pub const IPV6_ROUTING: u8 = 43;
pub const IPV6_FRAGMENT: u8 = 44;
pub const IPV6_ESP: u8 = 50;
pub const IPV6_AH: u8 = 51;
pub const IPV6_DEST_OPTS: u8 = 60;

/// "More fragments" flag and fragment offset of the IPv4 `frags` field.
pub const IPV4_MF_OR_OFFSET: u16 = 0x3FFF;

/// At most this many IPv6 extension headers are walked before UDP; a
/// longer chain passes (the verifier needs a bound, and real traffic to a
/// FaaS service carries none or one).
pub const MAX_IPV6_EXT_HEADERS: usize = 4;

/// The largest UDP payload one IPv4 datagram carries (65,535 less the IPv4
/// and UDP headers): the most a FaaS message (header and payload) can be.
pub const MAX_UDP_PAYLOAD: usize = 65_535 - IPV4_LEN - UDP_LEN;
