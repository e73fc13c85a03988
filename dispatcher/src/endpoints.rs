//! Socket addresses and the maps' `Endpoint` and `Worker`: the one place
//! that converts between them (IPv4 is stored IPv4-mapped, ports and
//! addresses in network order).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use dispatcher_common::maps::{family, Endpoint, Worker};

/// The map key for `addr:port` (IPv4 stored IPv4-mapped), as in SERVICES
/// and REGISTERED.
pub fn endpoint(addr: IpAddr, port: u16) -> Endpoint {
    let v6 = match addr {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    };
    Endpoint {
        addr: v6.octets(),
        port: port.to_be_bytes(),
        _pad: [0; 2],
    }
}

/// `endpoint` of a socket address.
pub fn of_socket(addr: SocketAddr) -> Endpoint {
    endpoint(addr.ip(), addr.port())
}

/// The socket address of a map `Endpoint` (IPv4-mapped back to IPv4).
pub fn socket_addr(e: &Endpoint) -> SocketAddr {
    let ip = Ipv6Addr::from(e.addr).to_canonical();
    SocketAddr::new(ip, u16::from_be_bytes(e.port))
}

/// Where a worker entry of the maps serves.
pub fn worker_socket_addr(w: &Worker) -> SocketAddr {
    let ip: IpAddr = if w.family == family::IPV4 {
        Ipv4Addr::new(w.addr[0], w.addr[1], w.addr[2], w.addr[3]).into()
    } else {
        Ipv6Addr::from(w.addr).into()
    };
    SocketAddr::new(ip, u16::from_be_bytes(w.port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_convert_back() {
        for a in ["10.0.0.9:9000", "[fd00::9]:7770"] {
            let a: SocketAddr = a.parse().unwrap();
            assert_eq!(socket_addr(&of_socket(a)), a);
        }
    }

    #[test]
    fn worker_addresses_convert_back() {
        let w = Worker {
            addr: [10, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            port: 9000u16.to_be_bytes(),
            family: family::IPV4,
            ..Default::default()
        };
        assert_eq!(worker_socket_addr(&w), "10.0.0.9:9000".parse().unwrap());
        assert_eq!(
            of_socket("10.0.0.9:9000".parse().unwrap()).addr[10..],
            [0xff, 0xff, 10, 0, 0, 9]
        );
    }
}
