//! Batched datagram I/O for the UDP front end: `recvmmsg`/`sendmmsg` move up to `BATCH`
//! packets per system call. On Linux most of a DNS server's CPU is the per-packet syscall and
//! kernel path, not the answer itself (measured in BENCHMARKS.md), so this is where batching pays.
//!
//! The buffers are allocated once per socket; the pointer tables the kernel reads are rebuilt
//! right before each call, so nothing here is self-referential.
//!
//! `poll(2)` is here too: the UDP front thread's event loop waits on its client socket and its
//! upstream sockets with it, then reads each ready one in batches.
//! The crate's one place for `unsafe` (the lint denies it everywhere else): these system calls
//! and the raw socket option the listener sets.
#![allow(unsafe_code)]

use std::io;
use std::mem::{MaybeUninit, size_of};
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::Duration;

use socket2::SockAddr;

/// Datagrams per system call.
pub(crate) const BATCH: usize = 32;
/// Largest datagram read; longer ones are flagged truncated by the kernel and dropped.
pub(crate) const SLOT: usize = 4096;

/// Sets the `IP_MTU_DISCOVER` option (`libc::IP_PMTUDISC_*`) of an IPv4 socket.
pub(crate) fn set_ip_mtu_discover(fd: RawFd, mode: libc::c_int) -> io::Result<()> {
    // SAFETY: plain integer option, read from a local of the right size.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            (&raw const mode).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Steers each datagram arriving for the SO_REUSEPORT group `fd` belongs to, to the group's
/// socket number (CPU that received the datagram) mod `sockets`, instead of a hash of the
/// addresses. With few client flows (a benchmark, a handful of big resolvers) the hash can put
/// most of them on one socket and leave a worker idle; by CPU, the load follows the kernel's
/// receive spreading (RSS/RPS queues, or the sending CPU on loopback). Sockets are numbered in
/// the order they joined the group.
pub(crate) fn steer_reuseport_by_cpu(fd: RawFd, sockets: u32) -> io::Result<()> {
    let insn = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    // A = the receiving CPU; A %= sockets; return A.
    let mut code = [
        insn(
            libc::BPF_LD | libc::BPF_W | libc::BPF_ABS,
            (libc::SKF_AD_OFF + libc::SKF_AD_CPU) as u32,
        ),
        insn(libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K, sockets.max(1)),
        insn(libc::BPF_RET | libc::BPF_A, 0),
    ];
    let prog = libc::sock_fprog {
        len: code.len() as u16,
        filter: code.as_mut_ptr(),
    };
    // SAFETY: `prog` points at `code`, both alive for the call; the kernel copies the program.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&raw const prog).cast(),
            size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Pins the calling thread to one CPU (tests of the CPU steering).
#[cfg(test)]
pub(crate) fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET writes inside it; the call reads it.
    let r = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set)
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The `IP_MTU_DISCOVER` option of an IPv4 socket.
#[cfg(test)]
pub(crate) fn ip_mtu_discover(fd: RawFd) -> io::Result<libc::c_int> {
    let mut v: libc::c_int = -1;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: reads one integer option into a local of the right size.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            (&raw mut v).cast(),
            &raw mut len,
        )
    };
    if r == 0 {
        Ok(v)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Points message header `h` at one buffer (`iov`) and one address.
fn fill(
    h: &mut libc::mmsghdr,
    iov: &mut libc::iovec,
    name: *mut libc::c_void,
    namelen: libc::socklen_t,
) {
    h.msg_hdr.msg_name = name;
    h.msg_hdr.msg_namelen = namelen;
    h.msg_hdr.msg_iov = iov;
    h.msg_hdr.msg_iovlen = 1;
    h.msg_hdr.msg_control = std::ptr::null_mut();
    h.msg_hdr.msg_controllen = 0;
    h.msg_hdr.msg_flags = 0;
    h.msg_len = 0;
}

/// The per-message tables the kernel reads, zeroed (filled right before each call).
fn empty_tables() -> (Vec<libc::iovec>, Vec<libc::mmsghdr>) {
    // SAFETY: all-zero is a valid value for this plain C struct.
    let zero_hdr = unsafe { MaybeUninit::<libc::mmsghdr>::zeroed().assume_init() };
    let empty = libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    };
    (vec![empty; BATCH], vec![zero_hdr; BATCH])
}

/// Receive side: `BATCH` buffers and their source addresses.
pub(crate) struct RecvBatch {
    /// Bytes per datagram buffer.
    slot: usize,
    bufs: Vec<u8>,
    addrs: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    count: usize,
}

impl Default for RecvBatch {
    fn default() -> Self {
        Self::with_slot(SLOT)
    }
}

impl RecvBatch {
    /// `BATCH` buffers of `slot` bytes each (a datagram longer than `slot` is flagged and
    /// not handed out).
    pub(crate) fn with_slot(slot: usize) -> Self {
        // SAFETY: all-zero is a valid value for this plain C struct.
        let zero_storage = unsafe { MaybeUninit::<libc::sockaddr_storage>::zeroed().assume_init() };
        let (iovs, hdrs) = empty_tables();
        RecvBatch {
            slot,
            bufs: vec![0u8; BATCH * slot],
            addrs: vec![zero_storage; BATCH],
            iovs,
            hdrs,
            count: 0,
        }
    }
}

impl RecvBatch {
    /// Reads up to `BATCH` datagrams without blocking; `WouldBlock` when none is waiting.
    pub(crate) fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        self.recv_flags(fd, libc::MSG_DONTWAIT)
    }

    fn recv_flags(&mut self, fd: RawFd, flags: libc::c_int) -> io::Result<usize> {
        for i in 0..BATCH {
            self.iovs[i] = libc::iovec {
                iov_base: self.bufs[i * self.slot..].as_mut_ptr().cast(),
                iov_len: self.slot,
            };
            fill(
                &mut self.hdrs[i],
                &mut self.iovs[i],
                (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast(),
                size_of::<libc::sockaddr_storage>() as libc::socklen_t,
            );
        }
        // SAFETY: every header points into buffers owned by `self` that outlive the call, with
        // the lengths given; the kernel writes at most those lengths.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                flags,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            self.count = 0;
            return Err(io::Error::last_os_error());
        }
        self.count = n as usize;
        Ok(self.count)
    }

    /// Datagram `i` of the last `recv`: the bytes that fit the slot and whether the datagram
    /// was longer (then only its start is here). None past the batch.
    pub(crate) fn get_prefix(&self, i: usize) -> Option<(&[u8], bool)> {
        if i >= self.count {
            return None;
        }
        let h = &self.hdrs[i];
        let len = (h.msg_len as usize).min(self.slot);
        Some((
            &self.bufs[i * self.slot..i * self.slot + len],
            h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
        ))
    }

    /// Datagram `i` of the last `recv` and its source; None if it was truncated (longer than
    /// the slot) or its address is not IP.
    pub(crate) fn get(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        match self.get_prefix(i)? {
            (_, true) => None,
            (pkt, false) => Some((pkt, to_socket_addr(&self.addrs[i])?)),
        }
    }
}

/// The IPv4 or IPv6 address the kernel wrote into `ss`.
fn to_socket_addr(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
    match libc::c_int::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which it is large
            // enough and aligned for.
            let a = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// What both send sides share: `BATCH` buffers queued for one `sendmmsg` and the tables the
/// kernel reads.
struct Outbox {
    bufs: Vec<Vec<u8>>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    count: usize,
}

impl Outbox {
    fn new(capacity: usize) -> Self {
        let (iovs, hdrs) = empty_tables();
        Outbox {
            bufs: (0..BATCH).map(|_| Vec::with_capacity(capacity)).collect(),
            iovs,
            hdrs,
            count: 0,
        }
    }

    /// The buffer for the next message (cleared). None when full.
    fn next_buf(&mut self) -> Option<&mut Vec<u8>> {
        let b = self.bufs.get_mut(self.count)?;
        b.clear();
        Some(b)
    }

    /// One non-blocking `sendmmsg` of the queued messages from `at` on, each to `addrs[k]` (or
    /// no address: a connected socket). Returns how many the kernel took.
    fn send_from(&mut self, fd: RawFd, at: usize, addrs: Option<&[SockAddr]>) -> io::Result<usize> {
        let n = self.count - at;
        for i in 0..n {
            let k = at + i;
            self.iovs[i] = libc::iovec {
                iov_base: self.bufs[k].as_ptr() as *mut libc::c_void,
                iov_len: self.bufs[k].len(),
            };
            let (name, len) = match addrs {
                Some(a) => (a[k].as_ptr() as *mut libc::c_void, a[k].len()),
                None => (std::ptr::null_mut(), 0),
            };
            fill(&mut self.hdrs[i], &mut self.iovs[i], name, len);
        }
        // SAFETY: headers point into `self`'s buffers and the caller's addresses, valid for
        // the call.
        let r = unsafe {
            libc::sendmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r as usize)
        }
    }
}

/// Send side: answers queued during a batch, sent with one `sendmmsg`.
pub(crate) struct SendBatch {
    out: Outbox,
    addrs: Vec<SockAddr>,
}

impl Default for SendBatch {
    fn default() -> Self {
        let any: SocketAddr = "0.0.0.0:0".parse().expect("literal");
        SendBatch {
            out: Outbox::new(1232),
            addrs: vec![SockAddr::from(any); BATCH],
        }
    }
}

impl SendBatch {
    /// The buffer for the next answer (cleared); `commit` queues it. None when full.
    pub(crate) fn next_buf(&mut self) -> Option<&mut Vec<u8>> {
        self.out.next_buf()
    }

    /// Queues the buffer last returned by `next_buf` for `to`.
    pub(crate) fn commit(&mut self, to: SocketAddr) {
        if self.out.count < BATCH {
            self.addrs[self.out.count] = SockAddr::from(to);
            self.out.count += 1;
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.out.count == 0
    }

    pub(crate) fn len(&self) -> usize {
        self.out.count
    }

    /// Sends the queued answers without blocking. Returns how many left the socket; the rest
    /// (socket buffer full) are discarded, and the batch is empty afterwards.
    pub(crate) fn flush(&mut self, fd: RawFd) -> io::Result<usize> {
        let total = self.out.count;
        let mut sent = 0;
        let mut result = Ok(());
        while sent < total {
            match self.out.send_from(fd, sent, Some(&self.addrs)) {
                Ok(r) => sent += r,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // A bad destination fails only its own message: skip it and go on.
                Err(e) if e.kind() != io::ErrorKind::WouldBlock && total - sent > 1 => sent += 1,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        self.out.count = 0;
        result
            .map(|()| sent)
            .or_else(|e| if sent > 0 { Ok(sent) } else { Err(e) })
    }
}

/// Send side for a connected socket (an upstream server's): queries queued during an
/// iteration of the event loop, sent with one `sendmmsg` and no addresses. Each message carries
/// a tag (the query's upstream ID) so the caller can settle the ones the socket refused.
pub(crate) struct ConnectedSendBatch {
    out: Outbox,
    tags: Vec<u16>,
}

impl Default for ConnectedSendBatch {
    fn default() -> Self {
        ConnectedSendBatch {
            out: Outbox::new(512),
            tags: vec![0; BATCH],
        }
    }
}

impl ConnectedSendBatch {
    /// The buffer for the next message (cleared); `commit` queues it. None when full.
    pub(crate) fn next_buf(&mut self) -> Option<&mut Vec<u8>> {
        self.out.next_buf()
    }

    /// Queues the buffer last returned by `next_buf`, tagged `tag`.
    pub(crate) fn commit(&mut self, tag: u16) {
        if self.out.count < BATCH {
            self.tags[self.out.count] = tag;
            self.out.count += 1;
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.out.count == 0
    }

    pub(crate) fn is_full(&self) -> bool {
        self.out.count == BATCH
    }

    /// Sends the queued messages without blocking; `unsent` gets the tag of each one the
    /// socket did not take (buffer full, or an error for that message) and why. Returns how
    /// many left; the batch is empty afterwards.
    ///
    /// On a connected UDP socket an ICMP error from an earlier datagram (ECONNREFUSED) is
    /// reported by the next send, which then did not go out: that message is tried once more.
    pub(crate) fn flush(&mut self, fd: RawFd, mut unsent: impl FnMut(u16, io::ErrorKind)) -> usize {
        let total = self.out.count;
        // Messages before `at` are settled (sent or reported unsent).
        let mut at = 0;
        let mut sent = 0;
        let mut retry_refused = true;
        while at < total {
            let e = match self.out.send_from(fd, at, None) {
                Ok(r) => {
                    at += r;
                    sent += r;
                    continue;
                }
                Err(e) => e,
            };
            match e.kind() {
                io::ErrorKind::Interrupted => {}
                io::ErrorKind::ConnectionRefused if retry_refused => retry_refused = false,
                // The socket buffer is full: nothing more goes out in this batch.
                io::ErrorKind::WouldBlock => {
                    for k in at..total {
                        unsent(self.tags[k], e.kind());
                    }
                    at = total;
                }
                // Fails only this message: skip it and go on.
                _ => {
                    unsent(self.tags[at], e.kind());
                    at += 1;
                }
            }
        }
        self.out.count = 0;
        sent
    }
}

/// The descriptors one `poll(2)` waits on, for readability, and what it reported.
#[derive(Default)]
pub(crate) struct PollSet {
    fds: Vec<libc::pollfd>,
}

impl PollSet {
    /// Forgets the descriptors of the previous wait.
    pub(crate) fn clear(&mut self) {
        self.fds.clear();
    }

    /// Adds `fd`; its position is the index `ready` takes.
    pub(crate) fn add(&mut self, fd: RawFd) {
        self.fds.push(libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
    }

    /// Waits until one descriptor is readable or has an error pending, at most `timeout`
    /// (rounded up to whole milliseconds, so a deadline is not woken for early). Returns how
    /// many are ready; `Interrupted` on a signal.
    pub(crate) fn wait(&mut self, timeout: Duration) -> io::Result<usize> {
        let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
        // SAFETY: the pointer and length describe `self.fds`, which the kernel writes
        // `revents` into and which outlives the call.
        let n = unsafe { libc::poll(self.fds.as_mut_ptr(), self.fds.len() as libc::nfds_t, ms) };
        if n < 0 {
            for f in &mut self.fds {
                f.revents = 0;
            }
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Whether descriptor `i` of the last `wait` is worth reading: data, or an error the read
    /// reports (and clears).
    pub(crate) fn ready(&self, i: usize) -> bool {
        self.fds.get(i).is_some_and(|f| f.revents != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_batch_round_trip_on_loopback() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        server.set_nonblocking(true).unwrap();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let mut rb = RecvBatch::default();
        assert_eq!(
            rb.recv(server.as_raw_fd()).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        for i in 0..40u8 {
            client
                .send_to(&[i; 20], server.local_addr().unwrap())
                .unwrap();
        }
        client
            .send_to(&vec![7u8; SLOT + 10], server.local_addr().unwrap())
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let n = rb.recv(server.as_raw_fd()).unwrap();
        assert_eq!(n, BATCH);
        let mut sb = SendBatch::default();
        for i in 0..n {
            let (pkt, from) = rb.get(i).unwrap();
            assert_eq!(pkt, &[i as u8; 20]);
            assert_eq!(from, client.local_addr().unwrap());
            let b = sb.next_buf().unwrap();
            b.extend_from_slice(pkt);
            b.push(0xff);
            sb.commit(from);
        }
        assert!(sb.next_buf().is_none(), "full after BATCH answers");
        assert_eq!(sb.flush(server.as_raw_fd()).unwrap(), BATCH);
        assert!(sb.is_empty());
        let mut buf = [0u8; 64];
        for i in 0..BATCH {
            let n = client.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n - 1], &[i as u8; 20]);
        }
        // The rest, then the oversize datagram, which is flagged and skipped.
        let n = rb.recv(server.as_raw_fd()).unwrap();
        assert_eq!(n, 9);
        assert!(rb.get(7).is_some());
        assert!(
            rb.get(8).is_none(),
            "a datagram longer than SLOT is not handed out"
        );
        assert!(rb.get(9).is_none());
    }

    #[test]
    fn connected_batch_and_poll() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        server.set_nonblocking(true).unwrap();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client.connect(server.local_addr().unwrap()).unwrap();
        let mut ps = PollSet::default();
        ps.add(server.as_raw_fd());
        let t0 = std::time::Instant::now();
        assert_eq!(ps.wait(Duration::from_millis(30)).unwrap(), 0);
        assert!(
            t0.elapsed() >= Duration::from_millis(25),
            "{:?}",
            t0.elapsed()
        );
        assert!(!ps.ready(0));
        let mut sb = ConnectedSendBatch::default();
        for i in 0..BATCH as u16 {
            sb.next_buf().unwrap().extend_from_slice(&i.to_be_bytes());
            sb.commit(i);
        }
        assert!(sb.is_full() && sb.next_buf().is_none());
        let mut refused = Vec::new();
        assert_eq!(sb.flush(client.as_raw_fd(), |t, _| refused.push(t)), BATCH);
        assert!(refused.is_empty() && sb.is_empty());
        assert_eq!(ps.wait(Duration::from_secs(2)).unwrap(), 1);
        assert!(ps.ready(0));
        let mut rb = RecvBatch::default();
        let n = rb.recv(server.as_raw_fd()).unwrap();
        assert_eq!(n, BATCH);
        for i in 0..n {
            let (pkt, from) = rb.get(i).unwrap();
            assert_eq!(pkt, (i as u16).to_be_bytes());
            assert_eq!(from, client.local_addr().unwrap());
        }

        // ICMP port unreachable from a closed peer: poll reports it, the read clears it, and
        // a send after it still goes out (tried again once).
        let gone = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let peer = gone.local_addr().unwrap();
        drop(gone);
        let lonely = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        lonely.connect(peer).unwrap();
        lonely.send(b"x").unwrap();
        ps.clear();
        ps.add(lonely.as_raw_fd());
        assert_eq!(ps.wait(Duration::from_secs(2)).unwrap(), 1);
        assert!(ps.ready(0), "the error wakes the poll");
        lonely.send(b"y").ok();
        std::thread::sleep(Duration::from_millis(20));
        sb.next_buf().unwrap().push(1);
        sb.commit(77);
        let mut unsent = Vec::new();
        let sent = sb.flush(lonely.as_raw_fd(), |t, _| unsent.push(t));
        assert_eq!((sent, unsent.len()), (1, 0), "{unsent:?}");
    }
}
