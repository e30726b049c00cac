//! The `NETLINK_NETFILTER` socket. A whole batch is sent as ONE atomic transaction: every page
//! in a single `sendmsg` on a socket whose send buffer is enlarged to fit (`SO_SNDBUFFORCE`),
//! then every error read back. nftnl's own sender sends page by page, which is neither atomic
//! nor possible past a few thousand elements (ENOBUFS).

use std::ffi::{CString, c_void};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nftnl_sys as sys;

use crate::chain::Transaction;
use crate::error::NftError;

const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;
const NFPROTO_INET: u16 = 1;
/// `NFTNL_UDATA_RULE_COMMENT`: the userdata record nft keeps a rule's comment in.
const UDATA_RULE_COMMENT: u8 = 0;

/// A `NETLINK_NETFILTER` socket, bound in the network namespace it was opened in.
#[derive(Debug)]
pub struct Socket {
    fd: OwnedFd,
}

fn check(rc: libc::c_int, op: &str) -> io::Result<libc::c_int> {
    if rc < 0 {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("{op}: {e}")))
    } else {
        Ok(rc)
    }
}

impl Socket {
    /// Open and bind a socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, NftError> {
        Self::open_io().map_err(|source| NftError::Io {
            op: "open netfilter socket".into(),
            source,
        })
    }

    fn open_io() -> io::Result<Self> {
        // SAFETY: plain socket calls with valid arguments; the fd is owned at once.
        unsafe {
            let fd = check(
                libc::socket(
                    libc::AF_NETLINK,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    libc::NETLINK_NETFILTER,
                ),
                "socket",
            )?;
            let fd = OwnedFd::from_raw_fd(fd);
            let mut addr: libc::sockaddr_nl = std::mem::zeroed();
            addr.nl_family = libc::AF_NETLINK as u16;
            check(
                libc::bind(
                    fd.as_raw_fd(),
                    (&addr as *const libc::sockaddr_nl).cast(),
                    std::mem::size_of::<libc::sockaddr_nl>() as u32,
                ),
                "bind",
            )?;
            let s = Self { fd };
            s.set_buf(libc::SO_RCVBUFFORCE, 16 << 20)?;
            Ok(s)
        }
    }

    fn set_buf(&self, opt: libc::c_int, size: usize) -> io::Result<()> {
        let v = size.min(i32::MAX as usize / 2) as libc::c_int;
        // SAFETY: setsockopt with a pointer to a live c_int.
        check(
            unsafe {
                libc::setsockopt(
                    self.fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&v as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as u32,
                )
            },
            "setsockopt",
        )?;
        Ok(())
    }

    /// Send every page in one `sendmsg` and collect the kernel's errors: `(seq, errno)` of each
    /// message that failed (the transaction is then aborted as a whole).
    pub fn send_batch(&self, pages: &[&[u8]]) -> io::Result<Vec<(u32, i32)>> {
        let total: usize = pages.iter().map(|p| p.len()).sum();
        self.set_buf(libc::SO_SNDBUFFORCE, total + 64 * 1024)?;
        let mut iov: Vec<libc::iovec> = pages
            .iter()
            .map(|p| libc::iovec {
                iov_base: p.as_ptr() as *mut c_void,
                iov_len: p.len(),
            })
            .collect();
        // SAFETY: the iovecs point into `pages`, alive for the call; a zeroed sockaddr_nl is the kernel.
        unsafe {
            let mut addr: libc::sockaddr_nl = std::mem::zeroed();
            addr.nl_family = libc::AF_NETLINK as u16;
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_name = (&mut addr as *mut libc::sockaddr_nl).cast();
            msg.msg_namelen = std::mem::size_of::<libc::sockaddr_nl>() as u32;
            msg.msg_iov = iov.as_mut_ptr();
            msg.msg_iovlen = iov.len();
            let sent = check(
                libc::sendmsg(self.fd.as_raw_fd(), &msg, 0) as libc::c_int,
                "sendmsg",
            )?;
            if sent as usize != total {
                return Err(io::Error::other(format!(
                    "sendmsg sent {sent} of {total} bytes"
                )));
            }
        }
        // nfnetlink handles the batch synchronously in sendmsg: every answer is queued already.
        let mut errors = vec![];
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            // SAFETY: recv into our own buffer.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::WouldBlock {
                    break;
                }
                return Err(io::Error::new(e.kind(), format!("recv: {e}")));
            }
            let mut off = 0usize;
            let n = n as usize;
            while off + 16 <= n {
                let len = u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4")) as usize;
                let ty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().expect("2"));
                let seq = u32::from_ne_bytes(buf[off + 8..off + 12].try_into().expect("4"));
                if ty == libc::NLMSG_ERROR as u16 && off + 20 <= n {
                    let err = i32::from_ne_bytes(buf[off + 16..off + 20].try_into().expect("4"));
                    if err != 0 {
                        errors.push((seq, -err));
                    }
                }
                if len < 16 {
                    break;
                }
                off += (len + 3) & !3;
            }
        }
        Ok(errors)
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
        let seq = 0x6e6b_0001u32;
        let mut req = vec![0u8; 1024];
        // SAFETY: the buffer has room for the header and two short names; the rule is freed here.
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
        // SAFETY: send from our own buffer.
        check(
            unsafe { libc::send(self.fd.as_raw_fd(), req.as_ptr().cast(), len, 0) as libc::c_int },
            "send",
        )
        .map_err(io_err)?;
        let mut out = vec![];
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: recv into our own buffer.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(io_err(e));
            }
            let n = n as usize;
            let mut off = 0usize;
            while off + 16 <= n {
                let len = u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4")) as usize;
                let ty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().expect("2"));
                let mseq = u32::from_ne_bytes(buf[off + 8..off + 12].try_into().expect("4"));
                if len < 16 || off + len > n {
                    return Err(io_err(io::Error::other("truncated netlink message")));
                }
                let msg = &buf[off..off + len];
                off += (len + 3) & !3;
                if mseq != seq {
                    continue;
                }
                if ty == libc::NLMSG_DONE as u16 {
                    return Ok(out);
                }
                if ty == libc::NLMSG_ERROR as u16 && len >= 20 {
                    let err = -i32::from_ne_bytes(msg[16..20].try_into().expect("4"));
                    return match err {
                        0 => Ok(out),
                        libc::ENOENT => Ok(vec![]),
                        e => Err(io_err(io::Error::from_raw_os_error(e))),
                    };
                }
                if ty & 0xff == NFT_MSG_NEWRULE {
                    out.push(comment_of(msg));
                }
            }
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
