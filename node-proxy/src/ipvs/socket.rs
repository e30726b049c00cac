//! A blocking generic-netlink socket for the IPVS family (requests are small and the kernel
//! answers at once); it belongs to the network namespace of the thread that opened it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::messages::{self, IpvsMessage, NLMSG_DONE, NLMSG_ERROR};

/// A `NETLINK_GENERIC` socket talking to the IPVS family.
#[derive(Debug)]
pub struct GenlSocket {
    fd: OwnedFd,
    seq: u32,
}

impl GenlSocket {
    /// Open a generic-netlink socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2) call; the fd is owned at once.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_GENERIC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let tv = libc::timeval {
            tv_sec: 5,
            tv_usec: 0,
        };
        // SAFETY: valid option pointer and length.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
        }
        Ok(Self { fd, seq: 1 })
    }

    fn send(&self, msg: &[u8]) -> io::Result<()> {
        // SAFETY: sockaddr_nl zeroed is the kernel's address.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: valid buffer and address.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Send one request and collect the data messages of its answer, until the
    /// acknowledgement or the end of the dump. A kernel error becomes an `io::Error` of its errno.
    pub fn request(&mut self, build: impl FnOnce(u32) -> Vec<u8>) -> io::Result<Vec<Vec<u8>>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        self.send(&build(seq))?;
        let mut out = vec![];
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: buf is valid for its length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut rest = &buf[..n as usize];
            while rest.len() >= 16 {
                let (header, payload) = messages::split_header(rest)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                let len = (16 + payload.len()).next_multiple_of(4).min(rest.len());
                let whole = &rest[..16 + payload.len()];
                rest = &rest[len..];
                if header.seq != seq {
                    continue;
                }
                match header.kind {
                    NLMSG_ERROR => {
                        let code = messages::error_code(payload)
                            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                        if code == 0 {
                            return Ok(out);
                        }
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                    NLMSG_DONE => return Ok(out),
                    _ => out.push(whole.to_vec()),
                }
            }
        }
    }

    /// The id of generic-netlink family `name`; `ENOENT` when the kernel has none.
    pub fn family_id(&mut self, name: &str) -> io::Result<u16> {
        let replies = self.request(|seq| messages::get_family_request(name, seq))?;
        let first = replies
            .first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no controller reply"))?;
        let (_, payload) = messages::split_header(first)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        messages::family_id(payload).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// Send an IPVS message to family `family`; the decoded messages of the answer.
    pub fn ipvs(&mut self, family: u16, msg: &IpvsMessage) -> io::Result<Vec<IpvsMessage>> {
        self.request(|seq| msg.encode(family, seq))?
            .iter()
            .map(|m| {
                IpvsMessage::decode(m)
                    .map(|(_, m)| m)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
            })
            .collect()
    }
}
