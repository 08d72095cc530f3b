//! Batched UDP receive: one `recvmmsg(MSG_WAITFORONE)` blocks for the
//! first datagram and takes every other one already queued, up to
//! [`BATCH`], in the same system call. Under load datagrams arrive in
//! bursts (SIPp, carriers and PBXs send several per timer tick), and each
//! `recvfrom` saved is a kernel entry and exit less. Elsewhere than Linux
//! a batch is one `recvfrom`.

use std::io;
use std::net::{SocketAddr, UdpSocket};

/// Datagrams one receive takes at most.
pub const BATCH: usize = 16;
/// Room per datagram: the largest UDP payload.
pub const SLOT: usize = 65_535;

/// Receive buffers and the kernel's per-datagram records, reused for
/// every call (slots are allocated zeroed, so untouched pages cost no
/// memory).
pub struct Batch {
    slots: Vec<Box<[u8]>>,
    lens: [usize; BATCH],
    from: [Option<SocketAddr>; BATCH],
    #[cfg(target_os = "linux")]
    sys: Box<Sys>,
}

#[cfg(target_os = "linux")]
struct Sys {
    names: [libc::sockaddr_storage; BATCH],
    iovs: [libc::iovec; BATCH],
    hdrs: [libc::mmsghdr; BATCH],
}

impl Default for Batch {
    fn default() -> Self {
        Self::new()
    }
}

impl Batch {
    pub fn new() -> Batch {
        let mut b = Batch {
            slots: (0..BATCH)
                .map(|_| vec![0u8; SLOT].into_boxed_slice())
                .collect(),
            lens: [0; BATCH],
            from: [None; BATCH],
            // SAFETY: sockaddr_storage, iovec and mmsghdr are plain C
            // structs for which all-zero bytes are a valid value.
            #[cfg(target_os = "linux")]
            sys: Box::new(unsafe { std::mem::zeroed() }),
        };
        #[cfg(target_os = "linux")]
        b.point_headers();
        b
    }

    /// Points each kernel record at its slot and name, once: the slots and
    /// `sys` are heap blocks that never move (a `Batch` moving moves only
    /// the pointers to them), and the kernel changes none of these fields.
    /// Setting all sixteen up before every receive cost ~300 instructions
    /// per receive, most of which take one datagram.
    #[cfg(target_os = "linux")]
    fn point_headers(&mut self) {
        let sys = &mut *self.sys;
        for i in 0..BATCH {
            sys.iovs[i] = libc::iovec {
                iov_base: self.slots[i].as_mut_ptr().cast(),
                iov_len: SLOT,
            };
            // Field by field: msghdr has private padding on some libcs.
            let h = &mut sys.hdrs[i].msg_hdr;
            h.msg_name = (&raw mut sys.names[i]).cast();
            h.msg_iov = &raw mut sys.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
        }
    }

    /// Waits for at least one datagram (up to the socket's read timeout:
    /// `WouldBlock` / `TimedOut` then) and returns how many were taken.
    #[cfg(target_os = "linux")]
    pub fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        let sys = &mut *self.sys;
        // What the kernel wrote last time (a name's length, flags, the
        // length received) is reset; the pointers stay as `new` set them.
        for h in &mut sys.hdrs {
            h.msg_hdr.msg_namelen =
                std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
        // SAFETY: every header points at live, writable memory owned by
        // `self` (a name of the size given, one iovec covering one whole
        // slot; set by `point_headers`, and neither moves) that outlives
        // the call; the kernel writes only within it.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                sys.hdrs.as_mut_ptr(),
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
            self.lens[i] = (sys.hdrs[i].msg_len as usize).min(SLOT);
            self.from[i] = socket_addr(&sys.names[i], sys.hdrs[i].msg_hdr.msg_namelen);
        }
        Ok(n)
    }

    /// Waits for one datagram (up to the socket's read timeout).
    #[cfg(not(target_os = "linux"))]
    pub fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        let (n, from) = socket.recv_from(&mut self.slots[0])?;
        self.lens[0] = n;
        self.from[0] = Some(from);
        Ok(1)
    }

    /// Datagram `i` of the last receive and its source (`None`: not an
    /// IP address, which a UDP/IP socket never reports).
    pub fn get(&self, i: usize) -> (&[u8], Option<SocketAddr>) {
        (&self.slots[i][..self.lens[i]], self.from[i])
    }
}

/// Whether a receive error only means nothing came: the socket's read
/// timeout (`WouldBlock` / `TimedOut`) or a signal (`Interrupted`).
pub fn nothing_received(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// The address the kernel wrote into `s` (`len` bytes of it).
#[cfg(target_os = "linux")]
fn socket_addr(s: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
    let len = len as usize;
    match s.ss_family as libc::c_int {
        libc::AF_INET if len >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in, and
            // sockaddr_storage is aligned for every socket address type.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 if len >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Asks the kernel to queue ICMP errors of sends from `socket` (Linux
/// `IP_RECVERR` / `IPV6_RECVERR`): an unconnected UDP socket otherwise
/// never hears that a destination refused. Read them with [`recv_error`].
#[cfg(target_os = "linux")]
pub fn set_recverr(socket: &UdpSocket, v6: bool) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    let (level, name) = if v6 {
        (libc::SOL_IPV6, libc::IPV6_RECVERR)
    } else {
        (libc::SOL_IP, libc::IP_RECVERR)
    };
    // SAFETY: a c_int option value of the size given, on a live socket.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&raw const on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One queued send error (never blocks): the destination of the datagram
/// that failed and the error (`ECONNREFUSED` for ICMP port unreachable).
/// `Ok(None)`: the queue is empty.
#[cfg(target_os = "linux")]
pub fn recv_error(socket: &UdpSocket) -> io::Result<Option<(SocketAddr, i32)>> {
    use std::os::fd::AsRawFd;
    // SAFETY: all-zero is valid for these plain C structs.
    let mut name: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut data = [0u8; 512];
    let mut control = [0u64; 64];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // SAFETY: as above.
    let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
    h.msg_name = (&raw mut name).cast();
    h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    h.msg_iov = &raw mut iov;
    h.msg_iovlen = 1;
    h.msg_control = control.as_mut_ptr().cast();
    h.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: every pointer in `h` is to live, writable local memory of
    // the size given.
    let n = unsafe {
        libc::recvmsg(
            socket.as_raw_fd(),
            &raw mut h,
            libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock => Ok(None),
            _ => Err(e),
        };
    }
    let mut errno = 0;
    // SAFETY: the kernel filled `control` up to msg_controllen; the CMSG
    // macros walk only within it.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&raw const h);
        while !c.is_null() {
            let (level, ty) = ((*c).cmsg_level, (*c).cmsg_type);
            if (level == libc::SOL_IP && ty == libc::IP_RECVERR)
                || (level == libc::SOL_IPV6 && ty == libc::IPV6_RECVERR)
            {
                let ee = libc::CMSG_DATA(c).cast::<libc::sock_extended_err>();
                errno = std::ptr::read_unaligned(ee).ee_errno as i32;
            }
            c = libc::CMSG_NXTHDR(&raw const h, c);
        }
    }
    Ok(socket_addr(&name, h.msg_namelen).map(|a| (a, errno)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Queued datagrams come out of one receive, in order, with their
    /// sources and contents, over IPv4 and IPv6.
    #[test]
    fn one_receive_takes_what_is_queued() {
        for (bind, peer) in [("127.0.0.1:0", "127.0.0.1:0"), ("[::1]:0", "[::1]:0")] {
            let Ok(rx) = UdpSocket::bind(bind) else {
                continue; // no IPv6 on this machine
            };
            rx.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            let a = UdpSocket::bind(peer).unwrap();
            let b = UdpSocket::bind(peer).unwrap();
            let to = rx.local_addr().unwrap();
            let big = vec![b'x'; 60_000];
            a.send_to(b"one", to).unwrap();
            b.send_to(b"two", to).unwrap();
            a.send_to(&big, to).unwrap();
            let mut batch = Batch::new();
            let mut got = Vec::new();
            while got.len() < 3 {
                let n = batch.recv(&rx).unwrap();
                assert!(n >= 1);
                for i in 0..n {
                    let (d, from) = batch.get(i);
                    got.push((d.to_vec(), from.unwrap()));
                }
            }
            assert_eq!(got.len(), 3);
            assert_eq!(got[0], (b"one".to_vec(), a.local_addr().unwrap()));
            assert_eq!(got[1], (b"two".to_vec(), b.local_addr().unwrap()));
            assert_eq!(got[2], (big, a.local_addr().unwrap()));
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_burst_larger_than_a_batch_is_taken_in_full_batches() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        for i in 0..BATCH + 3 {
            tx.send_to(format!("m{i}").as_bytes(), to).unwrap();
        }
        let mut batch = Batch::new();
        assert_eq!(batch.recv(&rx).unwrap(), BATCH);
        assert_eq!(batch.get(BATCH - 1).0, format!("m{}", BATCH - 1).as_bytes());
        assert_eq!(batch.recv(&rx).unwrap(), 3);
        assert_eq!(batch.get(2).0, format!("m{}", BATCH + 2).as_bytes());
        rx.set_read_timeout(Some(std::time::Duration::from_millis(50)))
            .unwrap();
        let e = batch.recv(&rx).unwrap_err();
        assert!(
            matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
            "{e}"
        );
    }
}
