//! Sending a whole nf_tables batch as ONE atomic transaction: every page of the batch in a
//! single `sendmsg` on a `NETLINK_NETFILTER` socket whose send buffer is enlarged to fit
//! (`SO_SNDBUFFORCE`), then every error read back. nftnl's own sender sends page by page, which
//! is neither atomic nor possible past a few thousand elements (ENOBUFS).

use std::ffi::{CString, c_void};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nftnl::{MsgType, NlMsg};
use nftnl_sys as sys;

use super::ruleset::{ElemData, SetDef};

const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFT_SET_INTERVAL: u32 = 0x4;
const NFT_SET_MAP: u32 = 0x8;
const NFT_SET_TIMEOUT: u32 = 0x10;
const NFT_SET_EVAL: u32 = 0x20;
const NFT_SET_CONCAT: u32 = 0x80;
/// `NFT_SET_ELEM_INTERVAL_END`.
pub(crate) const ELEM_INTERVAL_END: u32 = 1;
const NFPROTO_INET: u16 = 1;

/// A `NEWSET` message.
pub(crate) struct SetMsg {
    pub table: CString,
    /// The set's name (the template's name when `None`).
    pub name: Option<String>,
    pub def: &'static SetDef,
    pub id: u32,
}

unsafe impl NlMsg for SetMsg {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, _msg_type: MsgType) {
        // SAFETY: buf has room for one message (nftnl's batch contract); the set is freed here.
        unsafe {
            let s = sys::nftnl_set_alloc();
            if s.is_null() {
                std::process::abort();
            }
            let name = CString::new(self.name.as_deref().unwrap_or(self.def.name)).expect("no NUL");
            sys::nftnl_set_set_str(s, sys::NFTNL_SET_TABLE as u16, self.table.as_ptr());
            sys::nftnl_set_set_str(s, sys::NFTNL_SET_NAME as u16, name.as_ptr());
            sys::nftnl_set_set_u32(s, sys::NFTNL_SET_FAMILY as u16, NFPROTO_INET as u32);
            sys::nftnl_set_set_u32(s, sys::NFTNL_SET_ID as u16, self.id);
            sys::nftnl_set_set_u32(s, sys::NFTNL_SET_KEY_TYPE as u16, self.def.key_type());
            sys::nftnl_set_set_u32(s, sys::NFTNL_SET_KEY_LEN as u16, self.def.key_len());
            let mut flags = 0;
            if self.def.interval {
                flags |= NFT_SET_INTERVAL;
            }
            if self.def.dynamic {
                flags |= NFT_SET_TIMEOUT | NFT_SET_EVAL;
            }
            if self.def.concat_interval() {
                // the field lengths let the kernel pick its concatenated-range set (pipapo)
                flags |= NFT_SET_CONCAT;
                let mut lens = [0u8; 16];
                for (l, t) in lens.iter_mut().zip(self.def.key) {
                    *l = t.field_len();
                }
                sys::nftnl_set_set_data(
                    s,
                    sys::NFTNL_SET_DESC_CONCAT as u16,
                    lens.as_ptr().cast(),
                    lens.len() as u32,
                );
            }
            if let Some((ty, len)) = self.def.data_type_len() {
                flags |= NFT_SET_MAP;
                sys::nftnl_set_set_u32(s, sys::NFTNL_SET_DATA_TYPE as u16, ty);
                sys::nftnl_set_set_u32(s, sys::NFTNL_SET_DATA_LEN as u16, len);
            }
            sys::nftnl_set_set_u32(s, sys::NFTNL_SET_FLAGS as u16, flags);
            let nlh = sys::nftnl_nlmsg_build_hdr(
                buf.cast(),
                NFT_MSG_NEWSET,
                NFPROTO_INET,
                (libc::NLM_F_CREATE) as u16,
                seq,
            );
            sys::nftnl_set_nlmsg_build_payload(nlh, s);
            sys::nftnl_set_free(s);
        }
    }
}

/// One element to send: key, data, flags.
pub(crate) type Elem<'a> = (&'a [u8], &'a ElemData, u32);

/// A `NEWSETELEM` or `DELSETELEM` message; with no element, a `DELSETELEM` flushes the set.
pub(crate) struct ElemsMsg<'a> {
    pub table: &'a CString,
    pub set: &'static str,
    pub elems: Vec<Elem<'a>>,
    pub delete: bool,
}

unsafe impl NlMsg for ElemsMsg<'_> {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, _msg_type: MsgType) {
        // SAFETY: as for SetMsg; elements are owned by the set once added and freed with it.
        unsafe {
            let s = sys::nftnl_set_alloc();
            if s.is_null() {
                std::process::abort();
            }
            let name = CString::new(self.set).expect("no NUL");
            sys::nftnl_set_set_str(s, sys::NFTNL_SET_TABLE as u16, self.table.as_ptr());
            sys::nftnl_set_set_str(s, sys::NFTNL_SET_NAME as u16, name.as_ptr());
            sys::nftnl_set_set_u32(s, sys::NFTNL_SET_FAMILY as u16, NFPROTO_INET as u32);
            let ranges = super::ruleset::set_def(self.set).concat_interval();
            for (key, data, flags) in &self.elems {
                let e = sys::nftnl_set_elem_alloc();
                if e.is_null() {
                    std::process::abort();
                }
                // a range of a concatenation: the start key, then the end key
                let (key, end) = if ranges {
                    key.split_at(key.len() / 2)
                } else {
                    (*key, &[][..])
                };
                sys::nftnl_set_elem_set(
                    e,
                    sys::NFTNL_SET_ELEM_KEY as u16,
                    key.as_ptr().cast(),
                    key.len() as u32,
                );
                if !end.is_empty() {
                    sys::nftnl_set_elem_set(
                        e,
                        sys::NFTNL_SET_ELEM_KEY_END as u16,
                        end.as_ptr().cast(),
                        end.len() as u32,
                    );
                }
                if *flags != 0 {
                    sys::nftnl_set_elem_set_u32(e, sys::NFTNL_SET_ELEM_FLAGS as u16, *flags);
                }
                if !self.delete {
                    match data {
                        ElemData::None => {}
                        ElemData::Bytes(b) => {
                            sys::nftnl_set_elem_set(
                                e,
                                sys::NFTNL_SET_ELEM_DATA as u16,
                                b.as_ptr().cast(),
                                b.len() as u32,
                            );
                        }
                        ElemData::Goto(chain) => {
                            let c = CString::new(chain.as_str()).expect("no NUL");
                            sys::nftnl_set_elem_set_u32(
                                e,
                                sys::NFTNL_SET_ELEM_VERDICT as u16,
                                super::expr::NFT_GOTO as u32,
                            );
                            sys::nftnl_set_elem_set_str(
                                e,
                                sys::NFTNL_SET_ELEM_CHAIN as u16,
                                c.as_ptr(),
                            );
                        }
                    }
                }
                sys::nftnl_set_elem_add(s, e);
            }
            let (cmd, flags) = if self.delete {
                (NFT_MSG_DELSETELEM, 0)
            } else {
                (NFT_MSG_NEWSETELEM, libc::NLM_F_CREATE as u16)
            };
            let nlh = sys::nftnl_nlmsg_build_hdr(buf.cast(), cmd, NFPROTO_INET, flags, seq);
            sys::nftnl_set_elems_nlmsg_build_payload(nlh, s);
            sys::nftnl_set_free(s);
        }
    }
}

/// A `NETLINK_NETFILTER` socket, bound in the network namespace it was opened in.
#[derive(Debug)]
pub(crate) struct Socket {
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
    pub(crate) fn open() -> io::Result<Self> {
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
    pub(crate) fn send_batch(&self, pages: &[&[u8]]) -> io::Result<Vec<(u32, i32)>> {
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
}
