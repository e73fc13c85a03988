//! Batched UDP I/O on blocking sockets: recvmmsg and sendmmsg, one system
//! call per batch instead of per datagram. The worker runtime, the
//! user-space dispatcher and pktgen all move their datagrams through here.

use std::{
    io::{self, IoSlice, IoSliceMut},
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd,
};

use nix::{
    errno::Errno,
    sys::{
        socket::{recvmmsg, sendmmsg, MsgFlags, MultiHeaders, SockaddrStorage},
        time::TimeSpec,
    },
};

/// Receives up to `batch` datagrams per call into buffers it owns.
pub struct BatchReceiver {
    buffers: Vec<Vec<u8>>,
    headers: MultiHeaders<SockaddrStorage>,
    received: Vec<(usize, Option<SocketAddr>)>,
}

impl BatchReceiver {
    /// `size` is the largest datagram kept whole (longer ones are cut).
    pub fn new(batch: usize, size: usize) -> BatchReceiver {
        let batch = batch.max(1);
        BatchReceiver {
            buffers: (0..batch).map(|_| vec![0u8; size]).collect(),
            headers: MultiHeaders::preallocate(batch, None),
            received: Vec::with_capacity(batch),
        }
    }

    /// Waits for at least one datagram (or the socket's read timeout) and
    /// takes whatever else is queued, up to the batch size. Returns how
    /// many arrived: 0 on a timeout or an interrupted wait.
    pub fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        self.recv_with(socket, MsgFlags::MSG_WAITFORONE)
    }

    /// Takes what is queued, up to the batch size, without waiting (for a
    /// socket whose readiness an event loop watches): 0 when none is.
    pub fn try_recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        self.recv_with(socket, MsgFlags::MSG_DONTWAIT)
    }

    fn recv_with(&mut self, socket: &UdpSocket, flags: MsgFlags) -> io::Result<usize> {
        self.received.clear();
        let mut slices: Vec<[IoSliceMut; 1]> = self
            .buffers
            .iter_mut()
            .map(|b| [IoSliceMut::new(b)])
            .collect();
        // recvmmsg's own timeout is only checked after a datagram arrives;
        // the socket's SO_RCVTIMEO bounds the wait for the first one.
        match recvmmsg(
            socket.as_raw_fd(),
            &mut self.headers,
            slices.iter_mut(),
            flags,
            None::<TimeSpec>,
        ) {
            Ok(results) => {
                for m in results {
                    self.received
                        .push((m.bytes, m.address.and_then(|a| to_socket_addr(&a))));
                }
            }
            // ECONNREFUSED: an ICMP port unreachable for an earlier send.
            Err(Errno::EAGAIN | Errno::EINTR | Errno::ECONNREFUSED) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(self.received.len())
    }

    /// Datagram `k` of the last `recv` and its source.
    pub fn get(&self, k: usize) -> (&[u8], Option<SocketAddr>) {
        let (len, from) = self.received[k];
        (&self.buffers[k][..len], from)
    }

    pub fn len(&self) -> usize {
        self.received.len()
    }

    pub fn is_empty(&self) -> bool {
        self.received.is_empty()
    }
}

/// Sends datagrams in batches.
pub struct BatchSender {
    headers: MultiHeaders<SockaddrStorage>,
    batch: usize,
}

impl BatchSender {
    pub fn new(batch: usize) -> BatchSender {
        let batch = batch.max(1);
        BatchSender {
            headers: MultiHeaders::preallocate(batch, None),
            batch,
        }
    }

    /// Sends each datagram to its address (`None`: the connected peer), as
    /// few calls as the batch size allows. Returns how many left; stops
    /// early only when the socket's buffer is full (EAGAIN/ENOBUFS).
    /// A refused earlier send (ECONNREFUSED) is not this batch's failure:
    /// it is retried.
    pub fn send<D: AsRef<[u8]>>(
        &mut self,
        socket: &UdpSocket,
        datagrams: &[(D, Option<SocketAddr>)],
    ) -> io::Result<usize> {
        let mut sent = 0;
        let mut refused = 0;
        while sent < datagrams.len() {
            let chunk = &datagrams[sent..(sent + self.batch).min(datagrams.len())];
            let slices: Vec<[IoSlice; 1]> = chunk
                .iter()
                .map(|(d, _)| [IoSlice::new(d.as_ref())])
                .collect();
            let addrs: Vec<Option<SockaddrStorage>> = chunk
                .iter()
                .map(|(_, a)| a.map(SockaddrStorage::from))
                .collect();
            match sendmmsg(
                socket.as_raw_fd(),
                &mut self.headers,
                &slices,
                &addrs,
                [],
                MsgFlags::empty(),
            ) {
                Ok(results) => {
                    let n = results.count();
                    if n == 0 {
                        break;
                    }
                    sent += n;
                }
                Err(Errno::EAGAIN | Errno::ENOBUFS) => break,
                Err(Errno::ECONNREFUSED | Errno::EINTR) if refused < 4 => refused += 1,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(sent)
    }
}

fn to_socket_addr(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_batch_goes_out_and_comes_back_with_sources() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        b.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let to = Some(b.local_addr().unwrap());
        let datagrams: Vec<(Vec<u8>, Option<SocketAddr>)> =
            (0..100u8).map(|i| (vec![i; i as usize + 1], to)).collect();
        assert_eq!(BatchSender::new(32).send(&a, &datagrams).unwrap(), 100);
        let mut rx = BatchReceiver::new(64, 2048);
        let mut seen = 0;
        while seen < 100 {
            let n = rx.recv(&b).unwrap();
            assert!(n > 0, "timed out after {seen}");
            for k in 0..n {
                let (d, from) = rx.get(k);
                assert_eq!(d, &vec![seen as u8; seen + 1][..]);
                assert_eq!(from, Some(a.local_addr().unwrap()));
                seen += 1;
            }
        }
    }

    #[test]
    fn a_timeout_is_an_empty_batch() {
        let b = UdpSocket::bind("[::1]:0").unwrap();
        b.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let mut rx = BatchReceiver::new(8, 64);
        assert_eq!(rx.recv(&b).unwrap(), 0);
        assert!(rx.is_empty());
    }
}
