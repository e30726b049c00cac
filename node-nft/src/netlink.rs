//! A blocking netlink socket for any protocol (`NETLINK_NETFILTER`, `NETLINK_GENERIC`,
//! `NETLINK_ROUTE`, ...) and the one reader of the kernel's answers nodekit's netlink users
//! share: walk the `nlmsghdr` headers of each datagram, keep the messages of the requests'
//! sequence numbers, stop a request at its acknowledgement (`NLMSG_ERROR` with error 0), its
//! error (`NLMSG_ERROR` with a negative errno) or the end of its dump (`NLMSG_DONE`), and skip
//! answers to other (earlier, abandoned) requests.
//!
//! [`messages`] and [`Answers`] only parse bytes (tested on hand-built datagrams);
//! [`NetlinkSocket`] sends and reads. A socket belongs to the network namespace of the thread
//! that opened it.

use std::ffi::c_void;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// The length of a `struct nlmsghdr`.
pub const HEADER_LEN: usize = 16;
/// `NLMSG_NOOP`.
pub const NLMSG_NOOP: u16 = 1;
/// `NLMSG_ERROR`: an error, or with error 0 an acknowledgement.
pub const NLMSG_ERROR: u16 = 2;
/// `NLMSG_DONE`: the end of a dump.
pub const NLMSG_DONE: u16 = 3;
/// `NLMSG_OVERRUN`.
pub const NLMSG_OVERRUN: u16 = 4;

/// How large a datagram [`NetlinkSocket`] reads at most (the kernel's dump pages are smaller;
/// an error acknowledgement quotes the refused message, which can be a whole batch page).
const RECV_BUF: usize = 256 * 1024;

/// A `struct nlmsghdr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// `nlmsg_len`: the whole message's length, header included.
    pub len: u32,
    /// `nlmsg_type`.
    pub kind: u16,
    /// `nlmsg_flags`.
    pub flags: u16,
    /// `nlmsg_seq`.
    pub seq: u32,
    /// `nlmsg_pid`.
    pub pid: u32,
}

impl Header {
    /// The header at the start of `bytes`, if there are enough of them.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let b = bytes.get(..HEADER_LEN)?;
        let u32_at = |i: usize| u32::from_ne_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        Some(Self {
            len: u32_at(0),
            kind: u16::from_ne_bytes([b[4], b[5]]),
            flags: u16::from_ne_bytes([b[6], b[7]]),
            seq: u32_at(8),
            pid: u32_at(12),
        })
    }
}

/// One message of a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    /// Its header.
    pub header: Header,
    /// The whole message, header included (`header.len` bytes).
    pub bytes: &'a [u8],
}

impl<'a> Message<'a> {
    /// What follows the header.
    pub fn payload(&self) -> &'a [u8] {
        &self.bytes[HEADER_LEN..]
    }

    /// For an `NLMSG_ERROR` message, its error field (0: an acknowledgement, else a negative
    /// errno); `None` for other messages. A payload too short for it is an error.
    pub fn error_code(&self) -> io::Result<Option<i32>> {
        if self.header.kind != NLMSG_ERROR {
            return Ok(None);
        }
        let code = self
            .payload()
            .get(..4)
            .ok_or_else(|| bad(format!("NLMSG_ERROR of {} bytes", self.bytes.len())))?;
        Ok(Some(i32::from_ne_bytes(code.try_into().expect("4 bytes"))))
    }
}

fn bad(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("netlink: {what}"))
}

/// The messages of one datagram, in order. A header that does not fit, or whose length is
/// shorter than a header or runs past the datagram, ends the walk with an `InvalidData` error.
pub fn messages(datagram: &[u8]) -> Messages<'_> {
    Messages {
        rest: datagram,
        off: 0,
    }
}

/// The iterator of [`messages`].
#[derive(Debug, Clone)]
pub struct Messages<'a> {
    rest: &'a [u8],
    off: usize,
}

impl<'a> Iterator for Messages<'a> {
    type Item = io::Result<Message<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let at = self.off;
        let Some(header) = Header::parse(self.rest) else {
            let n = self.rest.len();
            self.rest = &[];
            return Some(Err(bad(format!(
                "truncated header: {n} bytes left at offset {at}"
            ))));
        };
        let len = header.len as usize;
        if len < HEADER_LEN || len > self.rest.len() {
            let n = self.rest.len();
            self.rest = &[];
            return Some(Err(bad(format!(
                "truncated message: nlmsg_len {len} with {n} bytes left at offset {at}"
            ))));
        }
        let bytes = &self.rest[..len];
        // Messages are 4-byte aligned; the last one's padding may be missing.
        let step = len.next_multiple_of(4).min(self.rest.len());
        self.rest = &self.rest[step..];
        self.off += step;
        Some(Ok(Message { header, bytes }))
    }
}

/// The answer to one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answer {
    /// The errno the kernel answered (positive); `None` for an acknowledgement or a dump's end.
    pub errno: Option<i32>,
    /// The data messages that came before (a GET's reply, a dump's parts), whole.
    pub msgs: Vec<Vec<u8>>,
    /// Whether the answer is complete (acknowledged, refused or the dump ended).
    pub done: bool,
}

impl Answer {
    /// The data messages, or the kernel's errno as an `io::Error`.
    pub fn into_result(self) -> io::Result<Vec<Vec<u8>>> {
        match self.errno {
            None => Ok(self.msgs),
            Some(e) => Err(io::Error::from_raw_os_error(e)),
        }
    }
}

/// The answers to requests sent with the consecutive sequence numbers `first`, `first + 1`,
/// ..., gathered from the datagrams the kernel sends back.
#[derive(Debug, Clone)]
pub struct Answers {
    first: u32,
    answers: Vec<Answer>,
    left: usize,
}

impl Answers {
    /// Waiting for `count` answers, the first to sequence number `first`.
    pub fn new(first: u32, count: usize) -> Self {
        Self {
            first,
            answers: vec![Answer::default(); count],
            left: count,
        }
    }

    /// Take in one datagram; `true` once every request is answered. Messages of other sequence
    /// numbers, of requests already answered, and `NLMSG_NOOP`s are skipped.
    pub fn feed(&mut self, datagram: &[u8]) -> io::Result<bool> {
        for msg in messages(datagram) {
            let msg = msg?;
            let i = msg.header.seq.wrapping_sub(self.first) as usize;
            let Some(a) = self.answers.get_mut(i).filter(|a| !a.done) else {
                continue; // an answer to another request
            };
            match msg.header.kind {
                NLMSG_NOOP => continue,
                NLMSG_ERROR => {
                    let code = msg.error_code()?.expect("an NLMSG_ERROR");
                    a.errno = (code != 0).then_some(-code);
                }
                NLMSG_DONE => {}
                NLMSG_OVERRUN => a.errno = Some(libc::ENOBUFS),
                _ => {
                    a.msgs.push(msg.bytes.to_vec());
                    continue;
                }
            }
            a.done = true;
            self.left -= 1;
        }
        Ok(self.is_complete())
    }

    /// Whether every request is answered.
    pub fn is_complete(&self) -> bool {
        self.left == 0
    }

    /// The answers, in request order.
    pub fn into_answers(self) -> Vec<Answer> {
        self.answers
    }
}

fn check(rc: libc::c_int, op: &str) -> io::Result<libc::c_int> {
    if rc < 0 {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("{op}: {e}")))
    } else {
        Ok(rc)
    }
}

/// A blocking netlink socket of one protocol, bound (with a port id the kernel chooses) in the
/// network namespace of the thread that opened it, talking to the kernel.
#[derive(Debug)]
pub struct NetlinkSocket {
    fd: OwnedFd,
    seq: AtomicU32,
}

impl NetlinkSocket {
    /// Open and bind a socket of `protocol` (`libc::NETLINK_ROUTE`, `NETLINK_GENERIC`,
    /// `NETLINK_NETFILTER`, ...) in the calling thread's network namespace.
    pub fn open(protocol: libc::c_int) -> io::Result<Self> {
        // SAFETY: plain socket call; the fd is owned at once.
        let fd = check(
            unsafe {
                libc::socket(
                    libc::AF_NETLINK,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    protocol,
                )
            },
            "socket",
        )?;
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let addr = kernel();
        // SAFETY: bind with a live sockaddr_nl and its size.
        check(
            unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&addr as *const libc::sockaddr_nl).cast(),
                    std::mem::size_of::<libc::sockaddr_nl>() as u32,
                )
            },
            "bind",
        )?;
        Ok(Self {
            fd,
            seq: AtomicU32::new(0),
        })
    }

    fn set_opt<T>(&self, opt: libc::c_int, value: &T, op: &str) -> io::Result<()> {
        // SAFETY: setsockopt with a pointer to a live value and its size.
        check(
            unsafe {
                libc::setsockopt(
                    self.fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (value as *const T).cast(),
                    std::mem::size_of::<T>() as libc::socklen_t,
                )
            },
            op,
        )?;
        Ok(())
    }

    /// Fail a read that waits longer than `timeout` (`WouldBlock`) instead of blocking forever.
    pub fn set_recv_timeout(&self, timeout: Duration) -> io::Result<()> {
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        self.set_opt(libc::SO_RCVTIMEO, &tv, "set SO_RCVTIMEO")
    }

    /// Size the receive buffer to `bytes`, past `rmem_max` (`SO_RCVBUFFORCE`, needs
    /// `CAP_NET_ADMIN`).
    pub fn force_recv_buffer(&self, bytes: usize) -> io::Result<()> {
        let v = bytes.min(i32::MAX as usize / 2) as libc::c_int;
        self.set_opt(libc::SO_RCVBUFFORCE, &v, "set SO_RCVBUFFORCE")
    }

    /// Size the send buffer to `bytes`, past `wmem_max` (`SO_SNDBUFFORCE`, needs
    /// `CAP_NET_ADMIN`).
    pub fn force_send_buffer(&self, bytes: usize) -> io::Result<()> {
        let v = bytes.min(i32::MAX as usize / 2) as libc::c_int;
        self.set_opt(libc::SO_SNDBUFFORCE, &v, "set SO_SNDBUFFORCE")
    }

    /// Reserve `count` consecutive sequence numbers; the first. Numbers are never 0 (the
    /// kernel's own notifications use it).
    pub fn next_seqs(&self, count: u32) -> u32 {
        loop {
            let first = self.seq.fetch_add(count, Ordering::Relaxed).wrapping_add(1);
            // a range wrapping through 0 is taken again, after it
            if (0..count).all(|i| first.wrapping_add(i) != 0) {
                return first;
            }
        }
    }

    /// Send `pages` to the kernel as ONE datagram (one `sendmsg`, so one nfnetlink batch or
    /// one run of route requests).
    pub fn send(&self, pages: &[&[u8]]) -> io::Result<()> {
        let total: usize = pages.iter().map(|p| p.len()).sum();
        let mut iov: Vec<libc::iovec> = pages
            .iter()
            .map(|p| libc::iovec {
                iov_base: p.as_ptr() as *mut c_void,
                iov_len: p.len(),
            })
            .collect();
        let mut addr = kernel();
        // SAFETY: a zeroed msghdr filled with pointers to locals alive for the call.
        let sent = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_name = (&mut addr as *mut libc::sockaddr_nl).cast();
            msg.msg_namelen = std::mem::size_of::<libc::sockaddr_nl>() as u32;
            msg.msg_iov = iov.as_mut_ptr();
            msg.msg_iovlen = iov.len();
            libc::sendmsg(self.fd.as_raw_fd(), &msg, 0)
        };
        if sent < 0 {
            return check(-1, "sendmsg").map(|_| ());
        }
        if sent as usize != total {
            return Err(io::Error::other(format!(
                "sendmsg sent {sent} of {total} bytes"
            )));
        }
        Ok(())
    }

    /// Read one datagram into `buf`; its length, `None` when `nonblocking` and nothing is
    /// queued. A datagram larger than `buf` is an error, not a silently cut answer.
    fn recv(&self, buf: &mut [u8], nonblocking: bool) -> io::Result<Option<usize>> {
        let flags = libc::MSG_TRUNC | if nonblocking { libc::MSG_DONTWAIT } else { 0 };
        loop {
            // SAFETY: recv into our own buffer of its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    flags,
                )
            };
            if n >= 0 {
                let n = n as usize;
                if n > buf.len() {
                    return Err(bad(format!(
                        "a datagram of {n} bytes does not fit the {} byte buffer",
                        buf.len()
                    )));
                }
                return Ok(Some(n));
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock if nonblocking => return Ok(None),
                _ => return Err(io::Error::new(e.kind(), format!("recv: {e}"))),
            }
        }
    }

    /// Read datagrams until every request of `answers` is answered.
    pub fn read_answers(&self, answers: &mut Answers) -> io::Result<()> {
        let mut buf = vec![0u8; RECV_BUF];
        while !answers.is_complete() {
            let n = self.recv(&mut buf, false)?.expect("a blocking read");
            answers.feed(&buf[..n])?;
        }
        Ok(())
    }

    /// Every message already queued on the socket, without waiting (nfnetlink answers a batch
    /// within its `sendmsg`).
    pub fn queued(&self, mut each: impl FnMut(Message<'_>)) -> io::Result<()> {
        let mut buf = vec![0u8; RECV_BUF];
        while let Some(n) = self.recv(&mut buf, true)? {
            for msg in messages(&buf[..n]) {
                each(msg?);
            }
        }
        Ok(())
    }

    /// Send `count` requests in one datagram and wait for all their answers, in request
    /// order. `build` makes the datagram from the first of the `count` consecutive sequence
    /// numbers reserved for it. Requests should ask for an acknowledgement (`NLM_F_ACK`) or be
    /// dumps: an answer is complete at its ack, its error or its `NLMSG_DONE`.
    pub fn batch(
        &self,
        count: usize,
        build: impl FnOnce(u32) -> Vec<u8>,
    ) -> io::Result<Vec<Answer>> {
        if count == 0 {
            return Ok(vec![]);
        }
        let count32 = u32::try_from(count)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "too many requests"))?;
        let first = self.next_seqs(count32);
        self.send(&[&build(first)])?;
        let mut answers = Answers::new(first, count);
        self.read_answers(&mut answers)?;
        Ok(answers.into_answers())
    }

    /// Send one request, built by `build` from its sequence number, and collect the data
    /// messages of its answer (whole, header included) until the acknowledgement or the end
    /// of the dump. A kernel error becomes an `io::Error` of its errno.
    pub fn request(&self, build: impl FnOnce(u32) -> Vec<u8>) -> io::Result<Vec<Vec<u8>>> {
        self.batch(1, build)?
            .pop()
            .expect("one answer")
            .into_result()
    }
}

impl AsRawFd for NetlinkSocket {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

/// The kernel's address (port id 0).
fn kernel() -> libc::sockaddr_nl {
    // SAFETY: sockaddr_nl is plain data; all zeroes is valid.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    addr
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message of `kind` and `seq` with `payload`, padded to 4 bytes.
    fn msg(kind: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let len = (HEADER_LEN + payload.len()) as u32;
        let mut m = len.to_ne_bytes().to_vec();
        m.extend(kind.to_ne_bytes());
        m.extend(0u16.to_ne_bytes());
        m.extend(seq.to_ne_bytes());
        m.extend(0u32.to_ne_bytes());
        m.extend(payload);
        m.resize(len.next_multiple_of(4) as usize, 0);
        m
    }

    fn err(seq: u32, code: i32) -> Vec<u8> {
        // error, then the header of the refused request
        let mut p = code.to_ne_bytes().to_vec();
        p.extend(&msg(16, seq, &[])[..HEADER_LEN]);
        msg(NLMSG_ERROR, seq, &p)
    }

    #[test]
    fn messages_walks_headers_and_padding() {
        let mut d = msg(16, 7, b"abc"); // 19 bytes, padded to 20
        d.extend(msg(17, 7, b"defgh"));
        let got: Vec<_> = messages(&d).map(Result::unwrap).collect();
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].header.kind, got[0].header.len), (16, 19));
        assert_eq!(got[0].payload(), b"abc");
        assert_eq!(got[1].payload(), b"defgh");
        assert_eq!(got[1].header.seq, 7);
        // the last message's padding may be missing
        let mut cut = msg(16, 1, b"x");
        cut.truncate(17);
        assert_eq!(messages(&cut).map(Result::unwrap).count(), 1);
    }

    #[test]
    fn truncated_header_and_message_are_errors() {
        let mut d = msg(16, 1, b"abcd");
        d.extend([1, 2, 3]); // not a whole header
        let got: Vec<_> = messages(&d).collect();
        assert_eq!(got.len(), 2);
        assert!(got[0].is_ok());
        let e = got[1].as_ref().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("truncated header"), "{e}");

        // a length past the datagram
        let mut long = msg(16, 1, b"abcd");
        long[0..4].copy_from_slice(&64u32.to_ne_bytes());
        let e = messages(&long).next().unwrap().unwrap_err();
        assert!(e.to_string().contains("nlmsg_len 64"), "{e}");
        // a length shorter than a header never loops
        let mut short = msg(16, 1, b"");
        short[0..4].copy_from_slice(&4u32.to_ne_bytes());
        assert_eq!(messages(&short).count(), 1);
        assert!(messages(&short).next().unwrap().is_err());

        let mut a = Answers::new(1, 1);
        assert!(a.feed(&long).is_err());
    }

    #[test]
    fn multi_part_answer_until_done() {
        let mut a = Answers::new(5, 1);
        let mut d1 = msg(16, 5, b"one");
        d1.extend(msg(16, 5, b"two"));
        assert!(!a.feed(&d1).unwrap());
        let mut d2 = msg(16, 5, b"three");
        d2.extend(msg(NLMSG_DONE, 5, &0i32.to_ne_bytes()));
        d2.extend(msg(16, 5, b"after the end"));
        assert!(a.feed(&d2).unwrap());
        let answer = a.into_answers().pop().unwrap();
        assert_eq!(answer.errno, None);
        let payloads: Vec<_> = answer.msgs.iter().map(|m| &m[HEADER_LEN..]).collect();
        assert_eq!(payloads, [&b"one"[..], b"two", b"three"]);
    }

    #[test]
    fn ack_ends_a_request_and_error_carries_errno() {
        let mut a = Answers::new(10, 2);
        let mut d = msg(16, 10, b"reply");
        d.extend(err(10, 0)); // ack of the first
        assert!(!a.feed(&d).unwrap());
        assert!(a.feed(&err(11, -libc::EEXIST)).unwrap());
        let got = a.into_answers();
        assert_eq!(got[0].errno, None);
        assert_eq!(got[0].msgs.len(), 1);
        assert_eq!(got[1].errno, Some(libc::EEXIST));
        let e = got[1].clone().into_result().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
        assert_eq!(got[0].clone().into_result().unwrap().len(), 1);
    }

    #[test]
    fn stray_sequence_numbers_are_skipped() {
        let mut a = Answers::new(100, 1);
        let mut d = msg(16, 99, b"old dump"); // an earlier, abandoned request
        d.extend(err(99, -libc::ENOENT));
        d.extend(err(101, 0)); // not ours either
        d.extend(msg(NLMSG_NOOP, 100, b""));
        assert!(!a.feed(&d).unwrap());
        // an answer to a request already answered is skipped too
        let mut d = err(100, 0);
        d.extend(err(100, -libc::EPERM));
        assert!(a.feed(&d).unwrap());
        assert_eq!(
            a.into_answers()[0],
            Answer {
                done: true,
                ..Answer::default()
            }
        );
    }

    #[test]
    fn sequence_numbers_wrap_around() {
        let mut a = Answers::new(u32::MAX, 2);
        let mut d = err(u32::MAX, 0);
        d.extend(err(0, -libc::EINVAL));
        assert!(a.feed(&d).unwrap());
        assert_eq!(a.into_answers()[1].errno, Some(libc::EINVAL));
    }

    #[test]
    fn short_error_message_is_an_error() {
        let mut a = Answers::new(1, 1);
        let e = a.feed(&msg(NLMSG_ERROR, 1, &[0, 0])).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn next_seqs_never_hands_out_zero() {
        let s = NetlinkSocket {
            fd: std::fs::File::open("/dev/null").unwrap().into(),
            seq: AtomicU32::new(u32::MAX - 2),
        };
        assert_eq!(s.next_seqs(1), u32::MAX - 1);
        // MAX, 0 would contain 0: the next range is taken
        let first = s.next_seqs(2);
        assert!(first != 0 && first.wrapping_add(1) != 0);
        assert_eq!(first, 1);
    }
}
