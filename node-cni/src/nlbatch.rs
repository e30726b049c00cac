//! A blocking route-netlink socket that sends several requests in ONE `sendmsg` and reads
//! every answer back: the ADD path's few batches instead of a round trip (and an async hop)
//! per link, address and route change.
//!
//! The kernel runs the messages of one datagram in order, each under its own rtnl lock hold,
//! and answers each (an ACK, an error, or the reply of a GET followed by an ACK). A failed
//! message does not stop the next ones: callers put dependent requests in later batches or
//! check every answer. Sockets belong to the namespace of the thread that opened them.

use std::io;
use std::time::Duration;

use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::LinkMessage;
use node_core::CniError;
use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use rtnetlink::sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// How long one batch may wait for the kernel's answers.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// One request: what it does (for errors), the message and its extra header flags
/// (`NLM_F_REQUEST | NLM_F_ACK` are always set).
pub(crate) struct Request {
    pub op: String,
    pub msg: RouteNetlinkMessage,
    pub flags: u16,
}

impl Request {
    pub fn new(op: impl Into<String>, msg: RouteNetlinkMessage, flags: u16) -> Self {
        Self {
            op: op.into(),
            msg,
            flags,
        }
    }
}

/// The answer to one request.
#[derive(Debug, Default)]
pub(crate) struct Answer {
    /// The errno the kernel answered (positive), `None` for an ACK.
    pub errno: Option<i32>,
    /// Messages answered before the ACK (a GET's reply).
    pub msgs: Vec<RouteNetlinkMessage>,
}

impl Answer {
    /// The first link message of the answer.
    pub fn link(&self) -> Option<&LinkMessage> {
        self.msgs.iter().find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(l),
            _ => None,
        })
    }
}

/// A route-netlink socket in the namespace of the thread that opened it.
pub(crate) struct NlSocket {
    sock: Socket,
    seq: u32,
}

fn io_err(op: &str) -> impl FnOnce(io::Error) -> CniError + '_ {
    move |e| CniError::Netlink {
        op: op.to_string(),
        message: e.to_string(),
    }
}

impl NlSocket {
    /// Open a socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, CniError> {
        let op = "open a route netlink socket";
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(io_err(op))?;
        sock.bind_auto().map_err(io_err(op))?;
        sock.connect(&SocketAddr::new(0, 0)).map_err(io_err(op))?;
        let tv = libc::timeval {
            tv_sec: ANSWER_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        // SAFETY: setsockopt on our own fd with a pointer to a live timeval.
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&sock),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io_err(op)(io::Error::last_os_error()));
        }
        Ok(Self { sock, seq: 0 })
    }

    /// Send every request in one datagram; the answers in request order.
    pub fn batch(&mut self, reqs: Vec<Request>) -> Result<Vec<Answer>, CniError> {
        let first = self.seq.wrapping_add(1);
        let mut buf = Vec::new();
        let mut ops = Vec::with_capacity(reqs.len());
        for (i, r) in reqs.into_iter().enumerate() {
            let mut header = NetlinkHeader::default();
            header.flags = NLM_F_REQUEST | NLM_F_ACK | r.flags;
            header.sequence_number = first.wrapping_add(i as u32);
            let mut m = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(r.msg));
            m.finalize();
            let start = buf.len();
            buf.resize(start + m.buffer_len(), 0);
            m.serialize(&mut buf[start..]);
            ops.push(r.op);
        }
        self.seq = first.wrapping_add(ops.len() as u32);
        let what = || ops.join(", ");
        let sent = self.sock.send(&buf, 0).map_err(|e| io_err(&what())(e))?;
        if sent != buf.len() {
            return Err(CniError::Netlink {
                op: what(),
                message: format!("sent {sent} of {} bytes", buf.len()),
            });
        }
        let mut answers: Vec<Answer> = (0..ops.len()).map(|_| Answer::default()).collect();
        let mut done = vec![false; ops.len()];
        let mut left = ops.len();
        let mut rbuf = vec![0u8; 64 * 1024];
        while left > 0 {
            let n = self
                .sock
                .recv(&mut &mut rbuf[..], 0)
                .map_err(|e| io_err(&format!("read the answers to: {}", what()))(e))?;
            let mut off = 0;
            while off + 16 <= n {
                let len =
                    u32::from_ne_bytes(rbuf[off..off + 4].try_into().expect("4 bytes")) as usize;
                if len < 16 || off + len > n {
                    break;
                }
                let bytes = &rbuf[off..off + len];
                off += (len + 3) & !3;
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes);
                let seq = u32::from_ne_bytes(bytes[8..12].try_into().expect("4 bytes"));
                let i = seq.wrapping_sub(first) as usize;
                if i >= ops.len() || done[i] {
                    continue; // an answer to an earlier, abandoned batch
                }
                match msg.map(|m| m.payload) {
                    Ok(NetlinkPayload::Error(e)) => {
                        answers[i].errno = e.code.map(|c| -c.get());
                        done[i] = true;
                        left -= 1;
                    }
                    Ok(NetlinkPayload::Done(_)) => {
                        done[i] = true;
                        left -= 1;
                    }
                    Ok(NetlinkPayload::InnerMessage(m)) => answers[i].msgs.push(m),
                    // Messages we cannot parse are not ours to interpret; the ACK still comes.
                    _ => {}
                }
            }
        }
        Ok(answers)
    }
}

/// `Ok` when the kernel acknowledged, else the error naming the operation.
pub(crate) fn check(op: &str, a: &Answer) -> Result<(), CniError> {
    match a.errno {
        None => Ok(()),
        Some(e) => Err(CniError::Netlink {
            op: op.to_string(),
            message: io::Error::from_raw_os_error(e).to_string(),
        }),
    }
}
