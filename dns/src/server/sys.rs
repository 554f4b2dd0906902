//! The only place where this crate calls libc itself: what socket2 (the seam
//! for sockets, options and addresses) does not offer.
//!
//! * `recvmmsg`/`sendmmsg` batches: socket2 has no mmsg calls, and a syscall
//!   per query would cost the UDP fast path its throughput;
//! * `SO_ATTACH_REUSEPORT_CBPF` (socket2 only attaches plain socket filters);
//! * pinning a thread to a CPU (`sched_setaffinity` is no socket option).
//!
//! The vpn crate has a module of its own like this one: dns and vpn share no
//! crate, and each needs only a few calls.

use std::io;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;

use socket2::{SockAddr, SockAddrStorage};

use super::udp::{BATCH, BUF};

/// Sends each query to the socket of the group whose index is the CPU that
/// received it (modulo the group's size), so that with one pinned worker per
/// CPU a query is answered where it arrived.
pub(super) fn steer_by_cpu(sock: &UdpSocket, n: usize) -> io::Result<()> {
    if n < 2 {
        return Ok(());
    }
    const SKF_AD_CPU: u32 = 36;
    let mut code = [
        // A = the CPU the packet arrived on (SKF_AD_OFF + SKF_AD_CPU).
        libc::sock_filter {
            code: 0x20,
            jt: 0,
            jf: 0,
            k: (-0x1000i32) as u32 + SKF_AD_CPU,
        },
        // A %= n
        libc::sock_filter {
            code: 0x94,
            jt: 0,
            jf: 0,
            k: n as u32,
        },
        // return A
        libc::sock_filter {
            code: 0x16,
            jt: 0,
            jf: 0,
            k: 0,
        },
    ];
    let prog = libc::sock_fprog {
        len: code.len() as u16,
        filter: code.as_mut_ptr(),
    };
    // SAFETY: prog points at `code`, alive for the call; the kernel copies it.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&prog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub(super) fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t with one bit set, passed with its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// `BATCH` headers, each pointing at one iovec; the pointers are set right
/// before every call, so moving the batch never leaves one dangling.
struct Headers {
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

impl Headers {
    fn new() -> Headers {
        let iov = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        Headers {
            iovs: vec![iov; BATCH],
            // SAFETY: a plain C struct; all-zero is a valid value (null pointers, zero lengths).
            hdrs: vec![unsafe { std::mem::zeroed() }; BATCH],
        }
    }

    /// Points header `i` at `buf` (`len` bytes) and the address `name` (`name_len` bytes).
    fn arm(
        &mut self,
        i: usize,
        buf: *mut u8,
        len: usize,
        name: *mut libc::c_void,
        name_len: libc::socklen_t,
    ) {
        self.iovs[i] = libc::iovec {
            iov_base: buf.cast(),
            iov_len: len,
        };
        let h = &mut self.hdrs[i].msg_hdr;
        h.msg_name = name;
        h.msg_namelen = name_len;
        h.msg_iov = &mut self.iovs[i];
        h.msg_iovlen = 1;
        h.msg_control = std::ptr::null_mut();
        h.msg_controllen = 0;
        h.msg_flags = 0;
        self.hdrs[i].msg_len = 0;
    }
}

/// Up to `BATCH` datagrams read with one `recvmmsg`.
pub(super) struct RecvBatch {
    bufs: Vec<[u8; BUF]>,
    names: Vec<SockAddrStorage>,
    sources: Vec<SockAddr>,
    lens: Vec<usize>,
    headers: Headers,
}

impl RecvBatch {
    pub(super) fn new() -> RecvBatch {
        let unspecified = SockAddr::from(std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
        RecvBatch {
            bufs: vec![[0u8; BUF]; BATCH],
            names: (0..BATCH).map(|_| SockAddrStorage::zeroed()).collect(),
            sources: vec![unspecified; BATCH],
            lens: vec![0; BATCH],
            headers: Headers::new(),
        }
    }

    /// Waits for at least one datagram (or the socket's read timeout) and
    /// reads all that are queued, up to `BATCH`; returns how many.
    pub(super) fn recv(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        for i in 0..BATCH {
            let name_len = self.names[i].size_of();
            let name: *mut SockAddrStorage = &mut self.names[i];
            self.headers
                .arm(i, self.bufs[i].as_mut_ptr(), BUF, name.cast(), name_len);
        }
        // SAFETY: every header points at a live buffer of BUF bytes and a live
        // address storage of its size, all in `self`, untouched during the call.
        let n = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                self.headers.hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for i in 0..n {
            let h = &self.headers.hdrs[i];
            self.lens[i] = h.msg_len as usize;
            let storage = std::mem::replace(&mut self.names[i], SockAddrStorage::zeroed());
            // SAFETY: the kernel wrote a socket address of this socket's family
            // and set its length.
            self.sources[i] = unsafe { SockAddr::new(storage, h.msg_hdr.msg_namelen) };
        }
        Ok(n)
    }

    /// Datagram `i` of the last [`recv`](Self::recv).
    pub(super) fn packet(&self, i: usize) -> &[u8] {
        &self.bufs[i][..self.lens[i]]
    }

    /// The sender of datagram `i`.
    pub(super) fn source(&self, i: usize) -> &SockAddr {
        &self.sources[i]
    }
}

/// Up to `BATCH` datagrams written with `sendmmsg`.
pub(super) struct SendBatch {
    bufs: Vec<[u8; BUF]>,
    dests: Vec<SockAddr>,
    lens: Vec<usize>,
    headers: Headers,
}

impl SendBatch {
    pub(super) fn new() -> SendBatch {
        let unspecified = SockAddr::from(std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
        SendBatch {
            bufs: vec![[0u8; BUF]; BATCH],
            dests: vec![unspecified; BATCH],
            lens: vec![0; BATCH],
            headers: Headers::new(),
        }
    }

    /// Slot `i`'s buffer, to write a datagram into before [`set`](Self::set).
    pub(super) fn buf_mut(&mut self, i: usize) -> &mut [u8; BUF] {
        &mut self.bufs[i]
    }

    /// Slot `i` holds `len` bytes of its buffer, for `dest`.
    pub(super) fn set(&mut self, i: usize, len: usize, dest: &SockAddr) {
        self.lens[i] = len;
        self.dests[i].clone_from(dest);
    }

    /// The datagram in slot `i`.
    pub(super) fn packet(&self, i: usize) -> &[u8] {
        &self.bufs[i][..self.lens[i]]
    }

    /// Where slot `i` goes.
    pub(super) fn dest(&self, i: usize) -> &SockAddr {
        &self.dests[i]
    }

    /// Sends slots `0..count`, retrying partial batches; stops at the first error.
    pub(super) fn send(&mut self, sock: &UdpSocket, count: usize) {
        for i in 0..count {
            let len = self.dests[i].len();
            // sendmmsg only reads the address: the const pointer is never written through.
            let name = self.dests[i].as_ptr().cast_mut();
            self.headers
                .arm(i, self.bufs[i].as_mut_ptr(), self.lens[i], name.cast(), len);
        }
        let mut sent = 0;
        while sent < count {
            // SAFETY: headers sent..count point at live buffers and addresses in `self`.
            let r = unsafe {
                libc::sendmmsg(
                    sock.as_raw_fd(),
                    self.headers.hdrs[sent..].as_mut_ptr(),
                    (count - sent) as libc::c_uint,
                    0,
                )
            };
            if r <= 0 {
                break;
            }
            sent += r as usize;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A batch carries datagrams and their peers' addresses both ways.
    #[test]
    fn batches_round_trip_datagrams_and_addresses() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        client
            .send_to(b"one", server.local_addr().unwrap())
            .unwrap();
        client
            .send_to(b"two", server.local_addr().unwrap())
            .unwrap();
        let mut rx = RecvBatch::new();
        let mut got = Vec::new();
        while got.len() < 2 {
            let n = rx.recv(&server).unwrap();
            for i in 0..n {
                got.push((rx.packet(i).to_vec(), rx.source(i).as_socket()));
            }
        }
        let from = Some(client.local_addr().unwrap());
        assert_eq!(got, vec![(b"one".to_vec(), from), (b"two".to_vec(), from)]);

        let mut tx = SendBatch::new();
        for (i, reply) in [&b"first"[..], b"second"].into_iter().enumerate() {
            tx.buf_mut(i)[..reply.len()].copy_from_slice(reply);
            tx.set(i, reply.len(), rx.source(0));
        }
        tx.send(&server, 2);
        let mut buf = [0u8; 64];
        for want in [&b"first"[..], b"second"] {
            let (n, peer) = client.recv_from(&mut buf).unwrap();
            assert_eq!((&buf[..n], peer), (want, server.local_addr().unwrap()));
        }
    }
}
