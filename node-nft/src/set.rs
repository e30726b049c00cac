//! Sets and maps: their definitions (key and data types as nft's datatypes), the `NEWSET`
//! message that creates them, and the `NEWSETELEM`/`DELSETELEM` messages that add and delete
//! elements (interval sets over a concatenation take ranges: a start and an inclusive end key).

use std::ffi::{CString, c_void};

use nftnl::{MsgType, NlMsg};
use nftnl_sys as sys;

/// A field type of a key or data: nft's datatype id (for listings) and its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    /// `ipv4_addr`.
    Ip4,
    /// `ipv6_addr`.
    Ip6,
    /// `inet_proto`.
    Proto,
    /// `inet_service`.
    Port,
    /// `mark`: a 32-bit number (a numgen bucket).
    Bucket,
}

impl Ty {
    /// nft's datatype id.
    pub fn id(self) -> u32 {
        match self {
            Ty::Ip4 => 7,
            Ty::Ip6 => 8,
            Ty::Proto => 12,
            Ty::Port => 13,
            Ty::Bucket => 19,
        }
    }
    /// The size in registers: bytes rounded up to 32-bit slots.
    pub fn reg_len(self) -> u32 {
        match self {
            Ty::Ip6 => 16,
            _ => 4,
        }
    }
    /// The field's own length in bytes (a concatenated interval set's field description).
    pub fn field_len(self) -> u8 {
        match self {
            Ty::Ip6 => 16,
            Ty::Proto => 1,
            Ty::Port => 2,
            _ => 4,
        }
    }
    /// nft's name of the datatype.
    pub fn text(self) -> &'static str {
        match self {
            Ty::Ip4 => "ipv4_addr",
            Ty::Ip6 => "ipv6_addr",
            Ty::Proto => "inet_proto",
            Ty::Port => "inet_service",
            Ty::Bucket => "mark",
        }
    }
    /// The nft expression a field of this type is loaded with (for `typeof` listings).
    pub fn typeof_text(self) -> &'static str {
        match self {
            Ty::Ip4 => "ip daddr",
            Ty::Ip6 => "ip6 daddr",
            Ty::Proto => "meta l4proto",
            Ty::Port => "th dport",
            Ty::Bucket => "numgen random mod 1",
        }
    }
    /// `bytes` (the field's own length, network order) padded to the field's register size.
    pub fn pad(self, bytes: &[u8]) -> Vec<u8> {
        let mut v = bytes.to_vec();
        v.resize(self.reg_len() as usize, 0);
        v
    }
}

/// What the elements of a set map to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataTy {
    /// Nothing: a set.
    None,
    /// A verdict: a verdict map.
    Verdict,
    /// A concatenation of fields: a data map.
    Concat(&'static [Ty]),
}

/// A set or map of a table.
#[derive(Debug, Clone)]
pub struct SetDef {
    /// The set's name.
    pub name: &'static str,
    /// The key's fields (more than one: a concatenation).
    pub key: &'static [Ty],
    /// What the elements map to.
    pub data: DataTy,
    /// Elements are intervals (`flags interval`).
    pub interval: bool,
    /// Filled by the packet path (`update @set`): `flags timeout, dynamic`.
    pub dynamic: bool,
}

impl SetDef {
    /// The key's type as the kernel stores it (field ids, 6 bits each).
    pub fn key_type(&self) -> u32 {
        self.key.iter().fold(0, |acc, t| (acc << 6) | t.id())
    }
    /// The key's length in bytes.
    pub fn key_len(&self) -> u32 {
        self.key.iter().map(|t| t.reg_len()).sum()
    }
    /// An interval set over a concatenation: its elements are ranges given by a start and an
    /// (inclusive) end key, stored one after the other in an element's key bytes.
    pub fn concat_interval(&self) -> bool {
        self.interval && self.key.len() > 1
    }
    /// The data's type and length, for maps.
    pub fn data_type_len(&self) -> Option<(u32, u32)> {
        match self.data {
            DataTy::None => None,
            DataTy::Verdict => Some((0xffffff00, 0)),
            DataTy::Concat(tys) => Some((
                tys.iter().fold(0, |acc, t| (acc << 6) | t.id()),
                tys.iter().map(|t| t.reg_len()).sum(),
            )),
        }
    }
}

/// What an element maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ElemData {
    /// Nothing (a set's element).
    None,
    /// Data bytes (a data map's element).
    Bytes(Vec<u8>),
    /// `goto <chain>` (a verdict map's element).
    Goto(String),
}

/// Start and end elements of one-field interval sets, with their flags.
pub type IntervalElems = Vec<(Vec<u8>, u32)>;

/// The elements of a one-field interval set holding `nets`: `[start, end)` pairs, the end
/// flagged [`ELEM_INTERVAL_END`] (none past the end of the address space).
pub fn interval_elems(nets: &[ipnet::IpNet]) -> IntervalElems {
    let mut out = vec![];
    for n in nets {
        let n = n.trunc();
        let (start, end): (Vec<u8>, Option<Vec<u8>>) = match n {
            ipnet::IpNet::V4(v) => {
                let s = u32::from(v.network());
                let e = u32::from(v.broadcast()).checked_add(1);
                (
                    s.to_be_bytes().to_vec(),
                    e.map(|e| e.to_be_bytes().to_vec()),
                )
            }
            ipnet::IpNet::V6(v) => {
                let s = u128::from(v.network());
                let e = u128::from(v.broadcast()).checked_add(1);
                (
                    s.to_be_bytes().to_vec(),
                    e.map(|e| e.to_be_bytes().to_vec()),
                )
            }
        };
        out.push((start, 0));
        if let Some(e) = end {
            out.push((e, ELEM_INTERVAL_END));
        }
    }
    out
}

const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFT_SET_INTERVAL: u32 = 0x4;
const NFT_SET_MAP: u32 = 0x8;
const NFT_SET_TIMEOUT: u32 = 0x10;
const NFT_SET_EVAL: u32 = 0x20;
const NFT_SET_CONCAT: u32 = 0x80;
/// `NFT_SET_ELEM_INTERVAL_END`: the element ends an interval (of a one-field interval set).
pub const ELEM_INTERVAL_END: u32 = 1;
const NFPROTO_INET: u16 = 1;

/// A `NEWSET` message (family `inet`): creates the set, or leaves an identical one as it is.
#[derive(Debug)]
pub struct SetMsg {
    /// The table.
    pub table: CString,
    /// The set's name (the template's name when `None`).
    pub name: Option<String>,
    /// What the set holds.
    pub def: &'static SetDef,
    /// The set's id in the transaction (unique per transaction).
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

/// One element to send: key, data, flags. The key of a range of a concatenation (see
/// [`SetDef::concat_interval`]) is the start key followed by the (inclusive) end key.
pub type Elem<'a> = (&'a [u8], &'a ElemData, u32);

/// A `NEWSETELEM` or `DELSETELEM` message (family `inet`); with no element, a `DELSETELEM`
/// flushes the set.
#[derive(Debug)]
pub struct ElemsMsg<'a> {
    /// The table.
    pub table: &'a CString,
    /// The set.
    pub set: &'static SetDef,
    /// The elements.
    pub elems: Vec<Elem<'a>>,
    /// Delete (the data of the elements is then not sent) rather than add.
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
            let name = CString::new(self.set.name).expect("no NUL");
            sys::nftnl_set_set_str(s, sys::NFTNL_SET_TABLE as u16, self.table.as_ptr());
            sys::nftnl_set_set_str(s, sys::NFTNL_SET_NAME as u16, name.as_ptr());
            sys::nftnl_set_set_u32(s, sys::NFTNL_SET_FAMILY as u16, NFPROTO_INET as u32);
            let ranges = self.set.concat_interval();
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
                                crate::expr::NFT_GOTO as u32,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_types_lengths_and_interval_elements() {
        let m = SetDef {
            name: "m",
            key: &[Ty::Ip4, Ty::Proto, Ty::Port],
            data: DataTy::Concat(&[Ty::Ip4, Ty::Port]),
            interval: true,
            dynamic: false,
        };
        assert_eq!(m.key_type(), (7 << 12) | (12 << 6) | 13);
        assert_eq!(m.key_len(), 12);
        assert_eq!(m.data_type_len(), Some(((7 << 6) | 13, 8)));
        assert!(m.concat_interval());
        assert_eq!(Ty::Port.pad(&8080u16.to_be_bytes()), [0x1f, 0x90, 0, 0]);
        let e = interval_elems(&["10.1.0.9/24".parse().unwrap(), "::/0".parse().unwrap()]);
        assert_eq!(
            e,
            [
                (vec![10, 1, 0, 0], 0),
                (vec![10, 1, 1, 0], ELEM_INTERVAL_END),
                (vec![0; 16], 0),
            ]
        );
    }
}
