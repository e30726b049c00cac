//! A blocking generic-netlink socket for the IPVS family (requests are small and the kernel
//! answers at once); it belongs to the network namespace of the thread that opened it. The
//! request/answer loop is node-nft's [`NetlinkSocket`].

use std::io;
use std::time::Duration;

use node_nft::NetlinkSocket;

use super::messages::{self, IpvsMessage};

/// How long one request may wait for the kernel's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// A `NETLINK_GENERIC` socket talking to the IPVS family.
#[derive(Debug)]
pub struct GenlSocket {
    nl: NetlinkSocket,
}

fn invalid(e: messages::DecodeError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl GenlSocket {
    /// Open a generic-netlink socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Self> {
        let nl = NetlinkSocket::open(libc::NETLINK_GENERIC)?;
        nl.set_recv_timeout(ANSWER_TIMEOUT)?;
        Ok(Self { nl })
    }

    /// Send one request and collect the data messages of its answer, until the
    /// acknowledgement or the end of the dump. A kernel error becomes an `io::Error` of its errno.
    pub fn request(&mut self, build: impl FnOnce(u32) -> Vec<u8>) -> io::Result<Vec<Vec<u8>>> {
        self.nl.request(build)
    }

    /// The id of generic-netlink family `name`; `ENOENT` when the kernel has none.
    pub fn family_id(&mut self, name: &str) -> io::Result<u16> {
        let replies = self.request(|seq| messages::get_family_request(name, seq))?;
        let first = replies
            .first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no controller reply"))?;
        let (_, payload) = messages::split_header(first).map_err(invalid)?;
        messages::family_id(payload).map_err(invalid)
    }

    /// Send an IPVS message to family `family`; the decoded messages of the answer.
    pub fn ipvs(&mut self, family: u16, msg: &IpvsMessage) -> io::Result<Vec<IpvsMessage>> {
        self.request(|seq| msg.encode(family, seq))?
            .iter()
            .map(|m| IpvsMessage::decode(m).map(|(_, m)| m).map_err(invalid))
            .collect()
    }
}
