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
use node_nft::NetlinkSocket;
use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};

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

/// A route-netlink socket in the namespace of the thread that opened it (the request/answer
/// loop is node-nft's [`NetlinkSocket`]).
pub(crate) struct NlSocket {
    sock: NetlinkSocket,
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
        let sock = NetlinkSocket::open(libc::NETLINK_ROUTE).map_err(io_err(op))?;
        sock.set_recv_timeout(ANSWER_TIMEOUT).map_err(io_err(op))?;
        Ok(Self { sock })
    }

    /// Send every request in one datagram; the answers in request order.
    pub fn batch(&mut self, reqs: Vec<Request>) -> Result<Vec<Answer>, CniError> {
        let ops: Vec<String> = reqs.iter().map(|r| r.op.clone()).collect();
        let build = |first: u32| {
            let mut buf = Vec::new();
            for (i, r) in reqs.into_iter().enumerate() {
                let mut header = NetlinkHeader::default();
                header.flags = NLM_F_REQUEST | NLM_F_ACK | r.flags;
                header.sequence_number = first.wrapping_add(i as u32);
                let mut m = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(r.msg));
                m.finalize();
                let start = buf.len();
                buf.resize(start + m.buffer_len(), 0);
                m.serialize(&mut buf[start..]);
            }
            buf
        };
        let answers = self
            .sock
            .batch(ops.len(), build)
            .map_err(|e| io_err(&ops.join(", "))(e))?;
        Ok(answers
            .into_iter()
            .map(|a| Answer {
                errno: a.errno,
                msgs: a
                    .msgs
                    .iter()
                    .filter_map(|bytes| {
                        // Messages we cannot parse are not ours to interpret.
                        match NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes) {
                            Ok(m) => match m.payload {
                                NetlinkPayload::InnerMessage(m) => Some(m),
                                _ => None,
                            },
                            Err(_) => None,
                        }
                    })
                    .collect(),
            })
            .collect())
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
