//! The few system calls the standard library does not offer: the
//! machine-wide monotonic clock (shared by the proxy and its guard
//! process, so a deadline can pass between them), a packet socket for
//! ARP, and killing a process group. The only unsafe code of the crate.
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// CLOCK_BOOTTIME in milliseconds: the same clock in every process of
/// the machine, unaffected by changes of the wall clock, and (unlike
/// CLOCK_MONOTONIC) counting time the machine spent suspended, as the
/// DCS's clock does.
pub fn monotonic_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    debug_assert_eq!(rc, 0);
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// Sends SIGKILL to process group `pgid` (a command the guard started in
/// a group of its own, with whatever it started).
pub fn kill_group(pgid: u32) {
    if pgid > 1 {
        // SAFETY: kill(2) with a negative pid signals that process group only.
        unsafe {
            libc::kill(-(pgid as i32), libc::SIGKILL);
        }
    }
}

const ETH_P_ARP: u16 = 0x0806;

/// An AF_PACKET socket bound to one interface that sends and receives
/// ARP frames (needs CAP_NET_RAW).
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: i32,
}

impl PacketSocket {
    pub fn open(ifindex: u32, read_timeout: Duration) -> io::Result<PacketSocket> {
        let proto = ETH_P_ARP.to_be() as i32;
        // SAFETY: plain socket(2) call; the result is checked.
        let fd =
            unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let s = PacketSocket {
            fd,
            ifindex: ifindex as i32,
        };
        let addr = s.link_addr([0; 6]);
        // SAFETY: addr is a valid sockaddr_ll of the size given.
        let rc = unsafe {
            libc::bind(
                s.fd.as_raw_fd(),
                &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let tv = libc::timeval {
            tv_sec: read_timeout.as_secs() as libc::time_t,
            tv_usec: read_timeout.subsec_micros() as libc::suseconds_t,
        };
        // SAFETY: tv is a valid timeval of the size given.
        let rc = unsafe {
            libc::setsockopt(
                s.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const libc::timeval as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(s)
    }

    fn link_addr(&self, dest: [u8; 6]) -> libc::sockaddr_ll {
        let mut addr_bytes = [0u8; 8];
        addr_bytes[..6].copy_from_slice(&dest);
        libc::sockaddr_ll {
            sll_family: libc::AF_PACKET as u16,
            sll_protocol: ETH_P_ARP.to_be(),
            sll_ifindex: self.ifindex,
            sll_hatype: 0,
            sll_pkttype: 0,
            sll_halen: 6,
            sll_addr: addr_bytes,
        }
    }

    /// Sends one Ethernet frame (header included) to `dest`.
    pub fn send(&self, frame: &[u8], dest: [u8; 6]) -> io::Result<()> {
        let addr = self.link_addr(dest);
        // SAFETY: frame and addr are valid for the lengths given.
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
                0,
                &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Receives one frame; `Ok(None)` when the read timeout passed.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        // SAFETY: buf is valid and writable for its length.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                0,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Ok(None),
                io::ErrorKind::Interrupted => Ok(None),
                _ => Err(e),
            };
        }
        Ok(Some(n as usize))
    }
}
