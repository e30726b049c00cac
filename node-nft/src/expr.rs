//! The nf_tables expressions nodekit's rules are made of, encoded with libnftnl (`nftnl-sys`):
//! nftnl's own wrappers lack numgen, fib, reject, dynset and register choice. Plus the kernel's
//! constants they take and small builders for common matches.

use std::ffi::CString;
use std::ptr::NonNull;

use nftnl::expr::Expression;
use nftnl_sys as sys;

// kernel uapi constants (linux/netfilter/nf_tables.h)
/// `meta mark`.
pub const NFT_META_MARK: u32 = 3;
/// `meta nfproto`.
pub const NFT_META_NFPROTO: u32 = 15;
/// `meta l4proto`.
pub const NFT_META_L4PROTO: u32 = 16;
/// Payload base: the network header.
pub const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
/// Payload base: the transport header.
pub const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
/// `cmp ==`.
pub const NFT_CMP_EQ: u32 = 0;
/// `cmp !=`.
pub const NFT_CMP_NEQ: u32 = 1;
/// An inverted lookup (`!@set`).
pub const NFT_LOOKUP_F_INV: u32 = 1;
/// `numgen random`.
pub const NFT_NG_RANDOM: u32 = 1;
/// The nat expression's DNAT type.
pub const NFT_NAT_DNAT: u32 = 1;
/// fib on the destination address.
pub const NFTA_FIB_F_DADDR: u32 = 2;
/// fib's result: the address type.
pub const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
/// Address type `local`.
pub const RTN_LOCAL: u32 = 2;
/// Reject with a TCP reset.
pub const NFT_REJECT_TCP_RST: u32 = 1;
/// Reject with an ICMPx unreachable.
pub const NFT_REJECT_ICMPX_UNREACH: u32 = 2;
/// ICMPx code: port unreachable.
pub const NFT_REJECT_ICMPX_PORT_UNREACH: u32 = 1;
/// `ct status`.
pub const NFT_CT_STATUS: u32 = 2;
/// ct status bit: destination NAT applied (`ct status dnat`).
pub const IPS_DST_NAT: u32 = 0x20;
/// Verdict `drop`.
pub const NF_DROP: i32 = 0;
/// Verdict `jump`.
pub const NFT_JUMP: i32 = -3;
/// Verdict `goto`.
pub const NFT_GOTO: i32 = -4;
/// dynset operation `update`.
pub const NFT_DYNSET_OP_UPDATE: u32 = 1;
/// Family IPv4 (`meta nfproto ipv4`, nat family).
pub const NFPROTO_IPV4: u32 = 2;
/// Family IPv6.
pub const NFPROTO_IPV6: u32 = 10;

/// The 32-bit register of slot `i` (`NFT_REG32_00 + i`).
pub fn reg(slot: u32) -> u32 {
    8 + slot
}

/// One expression of a rule (registers are `NFT_REG32_*` numbers, see [`reg`]).
#[derive(Debug, Clone)]
#[allow(missing_docs)] // the fields are the expression's attributes, named as in nft's listing
pub enum Expr {
    /// `meta load <key> => reg`.
    Meta { key: u32, dreg: u32 },
    /// `meta set <key> with reg`.
    MetaSet { key: u32, sreg: u32 },
    /// `payload load <len>b @ <base> + <offset> => reg`.
    Payload {
        base: u32,
        offset: u32,
        len: u32,
        dreg: u32,
    },
    /// `cmp <op> reg <data>`.
    Cmp { sreg: u32, op: u32, data: Vec<u8> },
    /// `bitwise reg = (reg & mask) ^ xor` on 4 bytes.
    Bitwise { reg: u32, mask: u32, xor: u32 },
    /// `bitwise reg = reg & mask` on `mask.len()` bytes (a network prefix).
    Mask { reg: u32, mask: Vec<u8> },
    /// `lookup reg set <name> [dreg] [inv]`.
    Lookup {
        set: String,
        sreg: u32,
        dreg: Option<u32>,
        invert: bool,
    },
    /// `numgen reg = random mod <m> offset <o>`.
    Numgen {
        dreg: u32,
        modulus: u32,
        offset: u32,
    },
    /// `dynset update reg_key set <name> timeout` (a set without data).
    DynsetUpdate {
        set: String,
        key: u32,
        timeout_ms: u64,
    },
    /// `fib daddr type => reg`.
    FibDaddrType { dreg: u32 },
    /// `ct load <key> => reg`.
    Ct { key: u32, dreg: u32 },
    /// `dnat <family> addr_min reg proto_min reg`.
    Dnat { family: u32, addr: u32, proto: u32 },
    /// `masq`.
    Masq,
    /// `reject type <t> code <c>`.
    Reject { kind: u32, code: u32 },
    /// `immediate reg 0 <jump|goto> <chain>`.
    Verdict { code: i32, chain: String },
}

fn cstr(s: &str) -> CString {
    CString::new(s).expect("names have no NUL")
}

impl Expression for Expr {
    fn to_expr(&self, _rule: &nftnl::Rule<'_>) -> NonNull<sys::nftnl_expr> {
        // SAFETY: every pointer comes from nftnl_expr_alloc (checked non-null) and every
        // attribute is set with the setter of its type; strings are copied by libnftnl.
        unsafe {
            let name = match self {
                Expr::Meta { .. } | Expr::MetaSet { .. } => c"meta",
                Expr::Payload { .. } => c"payload",
                Expr::Cmp { .. } => c"cmp",
                Expr::Bitwise { .. } | Expr::Mask { .. } => c"bitwise",
                Expr::Lookup { .. } => c"lookup",
                Expr::Numgen { .. } => c"numgen",
                Expr::FibDaddrType { .. } => c"fib",
                Expr::Ct { .. } => c"ct",
                Expr::Dnat { .. } => c"nat",
                Expr::Masq => c"masq",
                Expr::Reject { .. } => c"reject",
                Expr::DynsetUpdate { .. } => c"dynset",
                Expr::Verdict { .. } => c"immediate",
            };
            let e = sys::nftnl_expr_alloc(name.as_ptr());
            let e = NonNull::new(e).unwrap_or_else(|| std::process::abort());
            let p = e.as_ptr();
            let u32_ = |attr: u32, v: u32| sys::nftnl_expr_set_u32(p, attr as u16, v);
            match self {
                Expr::Meta { key, dreg } => {
                    u32_(sys::NFTNL_EXPR_META_KEY, *key);
                    u32_(sys::NFTNL_EXPR_META_DREG, *dreg);
                }
                Expr::MetaSet { key, sreg } => {
                    u32_(sys::NFTNL_EXPR_META_KEY, *key);
                    u32_(sys::NFTNL_EXPR_META_SREG, *sreg);
                }
                Expr::Payload {
                    base,
                    offset,
                    len,
                    dreg,
                } => {
                    u32_(sys::NFTNL_EXPR_PAYLOAD_BASE, *base);
                    u32_(sys::NFTNL_EXPR_PAYLOAD_OFFSET, *offset);
                    u32_(sys::NFTNL_EXPR_PAYLOAD_LEN, *len);
                    u32_(sys::NFTNL_EXPR_PAYLOAD_DREG, *dreg);
                }
                Expr::Cmp { sreg, op, data } => {
                    u32_(sys::NFTNL_EXPR_CMP_SREG, *sreg);
                    u32_(sys::NFTNL_EXPR_CMP_OP, *op);
                    sys::nftnl_expr_set(
                        p,
                        sys::NFTNL_EXPR_CMP_DATA as u16,
                        data.as_ptr().cast(),
                        data.len() as u32,
                    );
                }
                Expr::Bitwise { reg, mask, xor } => {
                    u32_(sys::NFTNL_EXPR_BITWISE_SREG, *reg);
                    u32_(sys::NFTNL_EXPR_BITWISE_DREG, *reg);
                    u32_(sys::NFTNL_EXPR_BITWISE_LEN, 4);
                    let (m, x) = (mask.to_ne_bytes(), xor.to_ne_bytes());
                    sys::nftnl_expr_set(
                        p,
                        sys::NFTNL_EXPR_BITWISE_MASK as u16,
                        m.as_ptr().cast(),
                        4,
                    );
                    sys::nftnl_expr_set(
                        p,
                        sys::NFTNL_EXPR_BITWISE_XOR as u16,
                        x.as_ptr().cast(),
                        4,
                    );
                }
                Expr::Mask { reg, mask } => {
                    u32_(sys::NFTNL_EXPR_BITWISE_SREG, *reg);
                    u32_(sys::NFTNL_EXPR_BITWISE_DREG, *reg);
                    u32_(sys::NFTNL_EXPR_BITWISE_LEN, mask.len() as u32);
                    let xor = vec![0u8; mask.len()];
                    sys::nftnl_expr_set(
                        p,
                        sys::NFTNL_EXPR_BITWISE_MASK as u16,
                        mask.as_ptr().cast(),
                        mask.len() as u32,
                    );
                    sys::nftnl_expr_set(
                        p,
                        sys::NFTNL_EXPR_BITWISE_XOR as u16,
                        xor.as_ptr().cast(),
                        xor.len() as u32,
                    );
                }
                Expr::Lookup {
                    set,
                    sreg,
                    dreg,
                    invert,
                } => {
                    let s = cstr(set);
                    sys::nftnl_expr_set_str(p, sys::NFTNL_EXPR_LOOKUP_SET as u16, s.as_ptr());
                    u32_(sys::NFTNL_EXPR_LOOKUP_SREG, *sreg);
                    if let Some(d) = dreg {
                        u32_(sys::NFTNL_EXPR_LOOKUP_DREG, *d);
                    }
                    if *invert {
                        u32_(sys::NFTNL_EXPR_LOOKUP_FLAGS, NFT_LOOKUP_F_INV);
                    }
                }
                Expr::Numgen {
                    dreg,
                    modulus,
                    offset,
                } => {
                    u32_(sys::NFTNL_EXPR_NG_DREG, *dreg);
                    u32_(sys::NFTNL_EXPR_NG_MODULUS, *modulus);
                    u32_(sys::NFTNL_EXPR_NG_TYPE, NFT_NG_RANDOM);
                    u32_(sys::NFTNL_EXPR_NG_OFFSET, *offset);
                }
                Expr::DynsetUpdate {
                    set,
                    key,
                    timeout_ms,
                } => {
                    let s = cstr(set);
                    sys::nftnl_expr_set_str(p, sys::NFTNL_EXPR_DYNSET_SET_NAME as u16, s.as_ptr());
                    u32_(sys::NFTNL_EXPR_DYNSET_OP, NFT_DYNSET_OP_UPDATE);
                    u32_(sys::NFTNL_EXPR_DYNSET_SREG_KEY, *key);
                    sys::nftnl_expr_set_u64(p, sys::NFTNL_EXPR_DYNSET_TIMEOUT as u16, *timeout_ms);
                }
                Expr::FibDaddrType { dreg } => {
                    u32_(sys::NFTNL_EXPR_FIB_FLAGS, NFTA_FIB_F_DADDR);
                    u32_(sys::NFTNL_EXPR_FIB_RESULT, NFT_FIB_RESULT_ADDRTYPE);
                    u32_(sys::NFTNL_EXPR_FIB_DREG, *dreg);
                }
                Expr::Ct { key, dreg } => {
                    u32_(sys::NFTNL_EXPR_CT_KEY, *key);
                    u32_(sys::NFTNL_EXPR_CT_DREG, *dreg);
                }
                Expr::Dnat {
                    family,
                    addr,
                    proto,
                } => {
                    u32_(sys::NFTNL_EXPR_NAT_TYPE, NFT_NAT_DNAT);
                    u32_(sys::NFTNL_EXPR_NAT_FAMILY, *family);
                    u32_(sys::NFTNL_EXPR_NAT_REG_ADDR_MIN, *addr);
                    u32_(sys::NFTNL_EXPR_NAT_REG_PROTO_MIN, *proto);
                }
                Expr::Masq => {}
                Expr::Reject { kind, code } => {
                    u32_(sys::NFTNL_EXPR_REJECT_TYPE, *kind);
                    sys::nftnl_expr_set_u8(p, sys::NFTNL_EXPR_REJECT_CODE as u16, *code as u8);
                }
                Expr::Verdict { code, chain } => {
                    u32_(sys::NFTNL_EXPR_IMM_DREG, 0);
                    sys::nftnl_expr_set_u32(p, sys::NFTNL_EXPR_IMM_VERDICT as u16, *code as u32);
                    if !chain.is_empty() {
                        let s = cstr(chain);
                        sys::nftnl_expr_set_str(p, sys::NFTNL_EXPR_IMM_CHAIN as u16, s.as_ptr());
                    }
                }
            }
            e
        }
    }
}

/// A field of a concatenation, loaded into consecutive 32-bit register slots.
#[derive(Debug, Clone, Copy)]
pub enum Field {
    /// `ip saddr`.
    Saddr4,
    /// `ip daddr`.
    Daddr4,
    /// `ip6 saddr`.
    Saddr6,
    /// `ip6 daddr`.
    Daddr6,
    /// `meta l4proto`.
    L4proto,
    /// `th dport`.
    Dport,
    /// `numgen random mod n`.
    Numgen(u32),
    /// The constant `i`, as `numgen random mod 1 offset i`.
    Const(u32),
}

impl Field {
    /// How many 32-bit slots the field takes.
    pub fn slots(self) -> u32 {
        match self {
            Field::Saddr6 | Field::Daddr6 => 4,
            _ => 1,
        }
    }
    /// The expression loading the field into the register of `slot`.
    pub fn load(self, slot: u32) -> Expr {
        let dreg = reg(slot);
        let nh = |offset, len| Expr::Payload {
            base: NFT_PAYLOAD_NETWORK_HEADER,
            offset,
            len,
            dreg,
        };
        match self {
            Field::Saddr4 => nh(12, 4),
            Field::Daddr4 => nh(16, 4),
            Field::Saddr6 => nh(8, 16),
            Field::Daddr6 => nh(24, 16),
            Field::L4proto => Expr::Meta {
                key: NFT_META_L4PROTO,
                dreg,
            },
            Field::Dport => Expr::Payload {
                base: NFT_PAYLOAD_TRANSPORT_HEADER,
                offset: 2,
                len: 2,
                dreg,
            },
            Field::Numgen(m) => Expr::Numgen {
                dreg,
                modulus: m,
                offset: 0,
            },
            Field::Const(i) => Expr::Numgen {
                dreg,
                modulus: 1,
                offset: i,
            },
        }
    }
}

/// Load `fields` from slot `start` on; the concatenation's register is `reg(start)`.
pub fn concat(fields: &[Field], start: u32) -> Vec<Expr> {
    let mut slot = start;
    fields
        .iter()
        .map(|f| {
            let e = f.load(slot);
            slot += f.slots();
            e
        })
        .collect()
}

/// `meta nfproto <family>`.
pub fn nfproto(family: u32) -> Vec<Expr> {
    vec![
        Expr::Meta {
            key: NFT_META_NFPROTO,
            dreg: reg(0),
        },
        Expr::Cmp {
            sreg: reg(0),
            op: NFT_CMP_EQ,
            data: vec![family as u8],
        },
    ]
}

/// `fib daddr type local`.
pub fn fib_local() -> Vec<Expr> {
    vec![
        Expr::FibDaddrType { dreg: reg(0) },
        Expr::Cmp {
            sreg: reg(0),
            op: NFT_CMP_EQ,
            data: RTN_LOCAL.to_ne_bytes().to_vec(),
        },
    ]
}

/// `meta mark set meta mark | bit`.
pub fn mark_set(bit: u32) -> Vec<Expr> {
    vec![
        Expr::Meta {
            key: NFT_META_MARK,
            dreg: reg(0),
        },
        Expr::Bitwise {
            reg: reg(0),
            mask: !bit,
            xor: bit,
        },
        Expr::MetaSet {
            key: NFT_META_MARK,
            sreg: reg(0),
        },
    ]
}

/// `ct status dnat`: the packet's connection was destination-NATed.
pub fn ct_dnat() -> Vec<Expr> {
    vec![
        Expr::Ct {
            key: NFT_CT_STATUS,
            dreg: reg(0),
        },
        Expr::Bitwise {
            reg: reg(0),
            mask: IPS_DST_NAT,
            xor: 0,
        },
        Expr::Cmp {
            sreg: reg(0),
            op: NFT_CMP_NEQ,
            data: 0u32.to_ne_bytes().to_vec(),
        },
    ]
}

/// `ip saddr <net>` / `ip6 daddr != <net>`: the source (or destination) address is (or, with
/// `negate`, is not) in `net`. The family must be matched before (see [`nfproto`]).
pub fn addr_in(net: ipnet::IpNet, source: bool, negate: bool) -> Vec<Expr> {
    let net = net.trunc();
    let (field, addr, mask) = match net {
        ipnet::IpNet::V4(n) => (
            if source { Field::Saddr4 } else { Field::Daddr4 },
            n.network().octets().to_vec(),
            n.netmask().octets().to_vec(),
        ),
        ipnet::IpNet::V6(n) => (
            if source { Field::Saddr6 } else { Field::Daddr6 },
            n.network().octets().to_vec(),
            n.netmask().octets().to_vec(),
        ),
    };
    let mut v = vec![field.load(0)];
    if mask.iter().any(|b| *b != 0xff) {
        v.push(Expr::Mask { reg: reg(0), mask });
    }
    v.push(Expr::Cmp {
        sreg: reg(0),
        op: if negate { NFT_CMP_NEQ } else { NFT_CMP_EQ },
        data: addr,
    });
    v
}
