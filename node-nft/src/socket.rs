//! The `NETLINK_NETFILTER` socket. A whole batch is sent as ONE atomic transaction: every page
//! in a single `sendmsg` on a socket whose send buffer is enlarged to fit (`SO_SNDBUFFORCE`),
//! then every error read back. nftnl's own sender sends page by page, which is neither atomic
//! nor possible past a few thousand elements (ENOBUFS).

use std::ffi::CString;
use std::io;

use nftnl_sys as sys;

use crate::chain::Transaction;
use crate::error::NftError;
use crate::netlink::NetlinkSocket;

const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;
const NFPROTO_INET: u16 = 1;
/// `NFTNL_UDATA_RULE_COMMENT`: the userdata record nft keeps a rule's comment in.
const UDATA_RULE_COMMENT: u8 = 0;

/// A `NETLINK_NETFILTER` socket, bound in the network namespace it was opened in.
#[derive(Debug)]
pub struct Socket {
    nl: NetlinkSocket,
}

impl Socket {
    /// Open and bind a socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, NftError> {
        let nl = NetlinkSocket::open(libc::NETLINK_NETFILTER)
            .and_then(|nl| nl.force_recv_buffer(16 << 20).map(|()| nl))
            .map_err(|source| NftError::Io {
                op: "open netfilter socket".into(),
                source,
            })?;
        Ok(Self { nl })
    }

    /// Send every page in one `sendmsg` and collect the kernel's errors: `(seq, errno)` of each
    /// message that failed (the transaction is then aborted as a whole).
    pub fn send_batch(&self, pages: &[&[u8]]) -> io::Result<Vec<(u32, i32)>> {
        let total: usize = pages.iter().map(|p| p.len()).sum();
        self.nl.force_send_buffer(total + 64 * 1024)?;
        self.nl.send(pages)?;
        // nfnetlink handles the batch synchronously in sendmsg: every answer is queued already.
        let mut errors = vec![];
        let mut bad = None;
        self.nl.queued(|m| match m.error_code() {
            Ok(Some(0) | None) => {}
            Ok(Some(err)) => errors.push((m.header.seq, -err)),
            Err(e) => bad = Some(e),
        })?;
        match bad {
            Some(e) => Err(e),
            None => Ok(errors),
        }
    }

    /// Send `tx` as one atomic transaction. When the kernel refuses it (nothing is applied),
    /// the error names the first refused message.
    pub fn commit(&self, tx: Transaction) -> Result<(), NftError> {
        let (fin, what) = tx.finalize();
        let pages: Vec<&[u8]> = fin.iter().collect();
        let errors = self.send_batch(&pages).map_err(|source| NftError::Io {
            op: "send batch".into(),
            source,
        })?;
        if let Some((seq, errno)) = errors.first() {
            let first = fin.sequence_numbers().start + 1;
            let msg = seq
                .checked_sub(first)
                .and_then(|i| what.get(i as usize))
                .cloned()
                .unwrap_or_else(|| format!("message {seq}"));
            return Err(NftError::Rejected {
                what: msg,
                errors: errors.len(),
                source: io::Error::from_raw_os_error(*errno),
            });
        }
        Ok(())
    }

    /// The comments of the rules of chain `chain` of table `inet <table>`, in order (`None`
    /// for a rule without one): one dump. A missing table or chain has no rules.
    pub fn rule_comments(&self, table: &str, chain: &str) -> Result<Vec<Option<String>>, NftError> {
        let bad = |name: &str| NftError::BadName { name: name.into() };
        let t = CString::new(table).map_err(|_| bad(table))?;
        let c = CString::new(chain).map_err(|_| bad(chain))?;
        let io_err = |source| NftError::Io {
            op: format!("dump rules of chain {chain} of table inet {table}"),
            source,
        };
        let build = |seq: u32| {
            let mut req = vec![0u8; 1024];
            // SAFETY: the buffer has room for the header and two short names; the rule is
            // freed here.
            let len = unsafe {
                let r = sys::nftnl_rule_alloc();
                if r.is_null() {
                    std::process::abort();
                }
                sys::nftnl_rule_set_str(r, sys::NFTNL_RULE_TABLE as u16, t.as_ptr());
                sys::nftnl_rule_set_str(r, sys::NFTNL_RULE_CHAIN as u16, c.as_ptr());
                let nlh = sys::nftnl_nlmsg_build_hdr(
                    req.as_mut_ptr().cast(),
                    NFT_MSG_GETRULE,
                    NFPROTO_INET,
                    (libc::NLM_F_DUMP | libc::NLM_F_ACK) as u16,
                    seq,
                );
                sys::nftnl_rule_nlmsg_build_payload(nlh, r);
                sys::nftnl_rule_free(r);
                (*nlh).nlmsg_len as usize
            };
            req.truncate(len);
            req
        };
        match self.nl.request(build) {
            Ok(msgs) => Ok(msgs
                .iter()
                .filter(|m| {
                    crate::netlink::Header::parse(m)
                        .is_some_and(|h| h.kind & 0xff == NFT_MSG_NEWRULE)
                })
                .map(|m| comment_of(m))
                .collect()),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(vec![]),
            Err(e) => Err(io_err(e)),
        }
    }
}

/// The comment in a `NEWRULE` message's userdata, if any.
fn comment_of(msg: &[u8]) -> Option<String> {
    // SAFETY: msg is one whole netlink message; libnftnl parses it into a rule freed here, and
    // the userdata pointer is read before that.
    let udata = unsafe {
        let r = sys::nftnl_rule_alloc();
        if r.is_null() {
            std::process::abort();
        }
        let mut copy = msg.to_vec();
        let ok = sys::nftnl_rule_nlmsg_parse(copy.as_mut_ptr().cast(), r) >= 0;
        let mut len = 0u32;
        let p = sys::nftnl_rule_get_data(r, sys::NFTNL_RULE_USERDATA as u16, &mut len);
        let data = (ok && !p.is_null())
            .then(|| std::slice::from_raw_parts(p.cast::<u8>(), len as usize).to_vec());
        sys::nftnl_rule_free(r);
        data
    }?;
    // type-length-value records
    let mut i = 0;
    while i + 2 <= udata.len() {
        let (ty, len) = (udata[i], udata[i + 1] as usize);
        let value = udata.get(i + 2..i + 2 + len)?;
        if ty == UDATA_RULE_COMMENT {
            let value = value.strip_suffix(&[0]).unwrap_or(value);
            return Some(String::from_utf8_lossy(value).into_owned());
        }
        i += 2 + len;
    }
    None
}
