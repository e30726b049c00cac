//! The ruleset as data: the fixed skeleton (sets, maps, chains, rules) and the elements computed
//! from a [`ProxyState`]. The kernel's work grows with elements; chains exist per distinct
//! endpoint count (and affinity), never per service.
//!
//! ```text
//! services (nat prerouting/output):
//!   mark for masquerade: ip daddr . l4proto . dport @masq4 | @internal4 && saddr !@cidr4 | fib local && @npmasq
//!   ip daddr . meta l4proto . th dport vmap @svc4                             (-> goto lb4_<K>)
//!   fib daddr type local meta l4proto . th dport vmap @np4                    (-> goto np4_<K>)
//! lb4_<K>:  dnat ip to ip daddr . meta l4proto . th dport . numgen random mod K map @be4
//! aff4_<K>_<T>: ClientIP affinity: per bucket i a dynamic set affb4_<i> of clients
//!   (saddr . daddr . proto . port, timeout T): a known client returns to its bucket and refreshes
//!   its timeout; a new one picks a bucket at random and is added to that bucket's set
//! npaff4_<K>_<T>: the same for node ports (keyed by protocol . port in npbe4)
//! filter prerouting/output: daddr . proto . port @noep4 -> reject (tcp reset / icmpx port-unreachable)
//! filter prerouting (firewall): daddr . proto . port @fwsvc4 && daddr . proto . port . saddr
//!   !@fwallow4 -> drop (loadBalancerSourceRanges; fwallow4 holds ranges of a concatenation)
//! nat postrouting: hairpin (ct status dnat, saddr . daddr @hairpin4) and marked traffic -> masquerade
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use node_core::{Endpoint, ProxyState, ServicePort, ServicePortName, TrafficSource};

use node_nft::expr::*;
pub(crate) use node_nft::{ChainDef, DataTy, ElemData, Hook, RuleDef, SetDef, Ty};

/// The mark bit that asks for masquerade in postrouting (kube-proxy's 0x4000).
pub const MASQ_MARK: u32 = 0x4000;

const IP4_SVC: &[Ty] = &[Ty::Ip4, Ty::Proto, Ty::Port];
const IP6_SVC: &[Ty] = &[Ty::Ip6, Ty::Proto, Ty::Port];
const NP: &[Ty] = &[Ty::Proto, Ty::Port];
const EP4: &[Ty] = &[Ty::Ip4, Ty::Port];
const EP6: &[Ty] = &[Ty::Ip6, Ty::Port];

/// Every set and map, in creation order.
pub(crate) const SETS: &[SetDef] = &[
    SetDef {
        name: "cidr4",
        key: &[Ty::Ip4],
        data: DataTy::None,
        interval: true,
        dynamic: false,
    },
    SetDef {
        name: "cidr6",
        key: &[Ty::Ip6],
        data: DataTy::None,
        interval: true,
        dynamic: false,
    },
    SetDef {
        name: "noep4",
        key: IP4_SVC,
        data: DataTy::None,
        interval: false,
        dynamic: false,
    },
    SetDef {
        name: "noep6",
        key: IP6_SVC,
        data: DataTy::None,
        interval: false,
        dynamic: false,
    },
    SetDef {
        name: "noepnp4",
        key: NP,
        data: DataTy::None,
        interval: false,
        dynamic: false,
    },
    SetDef {
        name: "noepnp6",
        key: NP,
        data: DataTy::None,
        interval: false,
        dynamic: false,
    },
    SetDef {
        name: "masq4",
        key: IP4_SVC,
        data: DataTy::None,
        interval: false,
        dynamic: false,
    },
    SetDef {
        name: "masq6",
        key: IP6_SVC,
        data: DataTy::None,
        interval: false,
        dynamic: false,
    },
    SetDef {
        name: "internal4",
        key: IP4_SVC,
        data: DataTy::None,
        interval: false,
        dynamic: false,
    },
    SetDef {
        name: "internal6",
        key: IP6_SVC,
        data: DataTy::None,
        interval: false,
        dynamic: false,
    },
    SetDef {
        name: "npaddr4",
        key: &[Ty::Ip4],
        data: DataTy::None,
        interval: false,
        dynamic: false,
    },
    SetDef {
        name: "npaddr6",
        key: &[Ty::Ip6],
        data: DataTy::None,
        interval: false,
        dynamic: false,
    },
    SetDef {
        name: "npmasq",
        key: NP,
        data: DataTy::None,
        interval: false,
        dynamic: false,
    },
    SetDef {
        name: "hairpin4",
        key: &[Ty::Ip4, Ty::Ip4],
        data: DataTy::None,
        interval: false,
        dynamic: false,
    },
    SetDef {
        name: "hairpin6",
        key: &[Ty::Ip6, Ty::Ip6],
        data: DataTy::None,
        interval: false,
        dynamic: false,
    },
    SetDef {
        name: "fwsvc4",
        key: IP4_SVC,
        data: DataTy::None,
        interval: false,
        dynamic: false,
    },
    SetDef {
        name: "fwsvc6",
        key: IP6_SVC,
        data: DataTy::None,
        interval: false,
        dynamic: false,
    },
    SetDef {
        name: "fwallow4",
        key: &[Ty::Ip4, Ty::Proto, Ty::Port, Ty::Ip4],
        data: DataTy::None,
        interval: true,
        dynamic: false,
    },
    SetDef {
        name: "fwallow6",
        key: &[Ty::Ip6, Ty::Proto, Ty::Port, Ty::Ip6],
        data: DataTy::None,
        interval: true,
        dynamic: false,
    },
    SetDef {
        name: "svc4",
        key: IP4_SVC,
        data: DataTy::Verdict,
        interval: false,
        dynamic: false,
    },
    SetDef {
        name: "svc6",
        key: IP6_SVC,
        data: DataTy::Verdict,
        interval: false,
        dynamic: false,
    },
    SetDef {
        name: "np4",
        key: NP,
        data: DataTy::Verdict,
        interval: false,
        dynamic: false,
    },
    SetDef {
        name: "np6",
        key: NP,
        data: DataTy::Verdict,
        interval: false,
        dynamic: false,
    },
    SetDef {
        name: "be4",
        key: &[Ty::Ip4, Ty::Proto, Ty::Port, Ty::Bucket],
        data: DataTy::Concat(EP4),
        interval: false,
        dynamic: false,
    },
    SetDef {
        name: "be6",
        key: &[Ty::Ip6, Ty::Proto, Ty::Port, Ty::Bucket],
        data: DataTy::Concat(EP6),
        interval: false,
        dynamic: false,
    },
    SetDef {
        name: "npbe4",
        key: &[Ty::Proto, Ty::Port, Ty::Bucket],
        data: DataTy::Concat(EP4),
        interval: false,
        dynamic: false,
    },
    SetDef {
        name: "npbe6",
        key: &[Ty::Proto, Ty::Port, Ty::Bucket],
        data: DataTy::Concat(EP6),
        interval: false,
        dynamic: false,
    },
];

pub(crate) fn set_def(name: &str) -> &'static SetDef {
    SETS.iter().find(|s| s.name == name).expect("known set")
}

fn rule(text: impl Into<String>, parts: Vec<Vec<Expr>>) -> RuleDef {
    RuleDef::new(text, parts)
}

fn lookup(set: &str, fields: &[Field]) -> Vec<Expr> {
    let mut v = concat(fields, 0);
    v.push(Expr::Lookup {
        set: set.into(),
        sreg: reg(0),
        dreg: None,
        invert: false,
    });
    v
}

fn vmap(set: &str, fields: &[Field]) -> Vec<Expr> {
    let mut v = concat(fields, 0);
    v.push(Expr::Lookup {
        set: set.into(),
        sreg: reg(0),
        dreg: Some(0),
        invert: false,
    });
    v
}

fn verdict(code: i32, chain: &str) -> Vec<Expr> {
    vec![Expr::Verdict {
        code,
        chain: chain.into(),
    }]
}

struct Fam {
    n: char,
    ip: &'static str,
    proto: u32,
    daddr: Field,
    saddr: Field,
    addr_slots: u32,
}

const FAMS: [Fam; 2] = [
    Fam {
        n: '4',
        ip: "ip",
        proto: NFPROTO_IPV4,
        daddr: Field::Daddr4,
        saddr: Field::Saddr4,
        addr_slots: 1,
    },
    Fam {
        n: '6',
        ip: "ip6",
        proto: NFPROTO_IPV6,
        daddr: Field::Daddr6,
        saddr: Field::Saddr6,
        addr_slots: 4,
    },
];

/// Where node ports answer: every local address (`fib daddr type local`), or, when the node
/// restricts them (`restricted`), the addresses of the `npaddr4`/`npaddr6` sets.
fn node_port_guard(f: &Fam, restricted: bool) -> (Vec<Expr>, String) {
    let (n, ip) = (f.n, f.ip);
    if restricted {
        let mut e = nfproto(f.proto);
        e.extend(lookup(&format!("npaddr{n}"), &[f.daddr]));
        (e, format!("{ip} daddr @npaddr{n}"))
    } else {
        let mut e = nfproto(f.proto);
        e.extend(fib_local());
        (e, format!("meta nfproto ipv{n} fib daddr type local"))
    }
}

/// The fixed chains and rules; `restricted`: node ports answer only on the node's
/// `node_port_addresses`.
pub(crate) fn skeleton(restricted: bool) -> Vec<ChainDef> {
    use node_nft::NfHook as H;
    let reject = vec![
        rule(
            "meta l4proto tcp reject with tcp reset",
            vec![
                vec![Expr::Meta {
                    key: NFT_META_L4PROTO,
                    dreg: reg(0),
                }],
                vec![Expr::Cmp {
                    sreg: reg(0),
                    op: NFT_CMP_EQ,
                    data: vec![6],
                }],
                vec![Expr::Reject {
                    kind: NFT_REJECT_TCP_RST,
                    code: 0,
                }],
            ],
        ),
        rule(
            "reject with icmpx port-unreachable",
            vec![vec![Expr::Reject {
                kind: NFT_REJECT_ICMPX_UNREACH,
                code: NFT_REJECT_ICMPX_PORT_UNREACH,
            }]],
        ),
    ];
    let mut noep = vec![];
    let mut services = vec![];
    let mut post = vec![];
    let mut firewall = vec![];
    for f in &FAMS {
        let (n, ip) = (f.n, f.ip);
        let svc = [f.daddr, Field::L4proto, Field::Dport];
        // loadBalancerSourceRanges: a firewalled load-balancer address . port drops the sources
        // outside its ranges (before any DNAT; the node's own traffic never comes this way).
        let mut allowed = concat(&[f.daddr, Field::L4proto, Field::Dport, f.saddr], 0);
        allowed.push(Expr::Lookup {
            set: format!("fwallow{n}"),
            sreg: reg(0),
            dreg: None,
            invert: true,
        });
        firewall.push(rule(
            format!("{ip} daddr . meta l4proto . th dport @fwsvc{n} {ip} daddr . meta l4proto . th dport . {ip} saddr != @fwallow{n} drop"),
            vec![
                nfproto(f.proto),
                lookup(&format!("fwsvc{n}"), &svc),
                allowed,
                verdict(NF_DROP, ""),
            ],
        ));
        noep.push(rule(
            format!("{ip} daddr . meta l4proto . th dport @noep{n} goto reject_it"),
            vec![
                nfproto(f.proto),
                lookup(&format!("noep{n}"), &svc),
                verdict(NFT_GOTO, "reject_it"),
            ],
        ));
        let (guard, guard_text) = node_port_guard(f, restricted);
        noep.push(rule(
            format!("{guard_text} meta l4proto . th dport @noepnp{n} goto reject_it"),
            vec![
                guard.clone(),
                lookup(&format!("noepnp{n}"), &[Field::L4proto, Field::Dport]),
                verdict(NFT_GOTO, "reject_it"),
            ],
        ));
        services.push(rule(
            format!("{ip} daddr . meta l4proto . th dport @masq{n} meta mark set meta mark | {MASQ_MARK:#x}"),
            vec![nfproto(f.proto), lookup(&format!("masq{n}"), &svc), mark_set(MASQ_MARK)],
        ));
        let mut cidr = concat(&[f.saddr], 0);
        cidr.push(Expr::Lookup {
            set: format!("cidr{n}"),
            sreg: reg(0),
            dreg: None,
            invert: true,
        });
        services.push(rule(
            format!("{ip} daddr . meta l4proto . th dport @internal{n} {ip} saddr != @cidr{n} meta mark set meta mark | {MASQ_MARK:#x}"),
            vec![nfproto(f.proto), lookup(&format!("internal{n}"), &svc), cidr, mark_set(MASQ_MARK)],
        ));
        let mut hp = ct_dnat();
        hp.extend(nfproto(f.proto));
        hp.extend(lookup(&format!("hairpin{n}"), &[f.saddr, f.daddr]));
        hp.push(Expr::Masq);
        post.push(RuleDef {
            exprs: hp,
            text: format!("ct status dnat {ip} saddr . {ip} daddr @hairpin{n} masquerade"),
            comment: None,
        });
    }
    for f in &FAMS {
        let (guard, guard_text) = node_port_guard(f, restricted);
        services.push(rule(
            format!("{guard_text} meta l4proto . th dport @npmasq meta mark set meta mark | {MASQ_MARK:#x}"),
            vec![guard, lookup("npmasq", &[Field::L4proto, Field::Dport]), mark_set(MASQ_MARK)],
        ));
    }
    for f in &FAMS {
        let (n, ip) = (f.n, f.ip);
        services.push(rule(
            format!("{ip} daddr . meta l4proto . th dport vmap @svc{n}"),
            vec![
                nfproto(f.proto),
                vmap(&format!("svc{n}"), &[f.daddr, Field::L4proto, Field::Dport]),
            ],
        ));
    }
    for f in &FAMS {
        let n = f.n;
        let (guard, guard_text) = node_port_guard(f, restricted);
        services.push(rule(
            format!("{guard_text} meta l4proto . th dport vmap @np{n}"),
            vec![
                guard,
                vmap(&format!("np{n}"), &[Field::L4proto, Field::Dport]),
            ],
        ));
    }
    let mut masq = vec![
        Expr::Meta {
            key: NFT_META_MARK,
            dreg: reg(0),
        },
        Expr::Bitwise {
            reg: reg(0),
            mask: MASQ_MARK,
            xor: 0,
        },
        Expr::Cmp {
            sreg: reg(0),
            op: NFT_CMP_EQ,
            data: MASQ_MARK.to_ne_bytes().to_vec(),
        },
        Expr::Meta {
            key: NFT_META_MARK,
            dreg: reg(0),
        },
        Expr::Bitwise {
            reg: reg(0),
            mask: u32::MAX,
            xor: MASQ_MARK,
        },
        Expr::MetaSet {
            key: NFT_META_MARK,
            sreg: reg(0),
        },
    ];
    masq.push(Expr::Masq);
    post.push(RuleDef {
        exprs: masq,
        text: format!("meta mark & {MASQ_MARK:#x} == {MASQ_MARK:#x} meta mark set meta mark ^ {MASQ_MARK:#x} masquerade"),
        comment: None,
    });
    let jump = |to: &str| rule(format!("jump {to}"), vec![verdict(NFT_JUMP, to)]);
    let hook = |hook, nat, priority| {
        Some(Hook {
            hook,
            nat,
            priority,
        })
    };
    vec![
        ChainDef {
            name: "reject_it".into(),
            hook: None,
            rules: reject,
        },
        ChainDef {
            name: "no_endpoints".into(),
            hook: None,
            rules: noep,
        },
        ChainDef {
            name: "services".into(),
            hook: None,
            rules: services,
        },
        ChainDef {
            name: "firewall".into(),
            hook: None,
            rules: firewall,
        },
        ChainDef {
            name: "filter_prerouting".into(),
            hook: hook(H::PreRouting, false, -110),
            rules: vec![jump("firewall"), jump("no_endpoints")],
        },
        ChainDef {
            name: "filter_output".into(),
            hook: hook(H::Out, false, -110),
            rules: vec![jump("no_endpoints")],
        },
        ChainDef {
            name: "nat_prerouting".into(),
            hook: hook(H::PreRouting, true, -100),
            rules: vec![jump("services")],
        },
        ChainDef {
            name: "nat_output".into(),
            hook: hook(H::Out, true, -100),
            rules: vec![jump("services")],
        },
        ChainDef {
            name: "nat_postrouting".into(),
            hook: hook(H::PostRouting, true, 100),
            rules: post,
        },
    ]
}

/// A load-balancing chain, created when first needed: `lb4_3`, `np6_2`, `aff4_3_10800`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct LbChain {
    pub v6: bool,
    /// Node-port chain (keyed by protocol and port only).
    pub node_port: bool,
    /// Buckets.
    pub k: u32,
    /// ClientIP affinity timeout in seconds.
    pub affinity: Option<u64>,
}

/// The dynamic set remembering the clients of bucket `i` (`affb4_<i>`).
pub(crate) fn affinity_set_name(v6: bool, i: u32) -> String {
    format!("affb{}_{i}", if v6 { 6 } else { 4 })
}

/// The template of the affinity sets: `saddr . daddr . proto . port`, timeouts set per element.
pub(crate) const AFFB4: SetDef = SetDef {
    name: "affb4",
    key: &[Ty::Ip4, Ty::Ip4, Ty::Proto, Ty::Port],
    data: DataTy::None,
    interval: false,
    dynamic: true,
};
/// The IPv6 template.
pub(crate) const AFFB6: SetDef = SetDef {
    name: "affb6",
    key: &[Ty::Ip6, Ty::Ip6, Ty::Proto, Ty::Port],
    data: DataTy::None,
    interval: false,
    dynamic: true,
};

impl LbChain {
    pub(crate) fn name(&self) -> String {
        let f = if self.v6 { '6' } else { '4' };
        match (self.node_port, self.affinity) {
            (true, None) => format!("np{f}_{}", self.k),
            (true, Some(t)) => format!("npaff{f}_{}_{t}", self.k),
            (false, None) => format!("lb{f}_{}", self.k),
            (false, Some(t)) => format!("aff{f}_{}_{t}", self.k),
        }
    }

    /// The affinity sets the chain uses.
    pub(crate) fn affinity_sets(&self) -> Vec<(bool, u32)> {
        match self.affinity {
            Some(_) => (0..self.k).map(|i| (self.v6, i)).collect(),
            None => vec![],
        }
    }

    fn dnat_be(&self, pick: Field, pick_text: &str) -> (Vec<Expr>, String) {
        let f = &FAMS[self.v6 as usize];
        let (n, ip) = (f.n, f.ip);
        let data_slot = 10;
        let mut e = nfproto(f.proto);
        // node ports are keyed by protocol and port only (any local address)
        let (map, key, key_text) = if self.node_port {
            (
                format!("npbe{n}"),
                vec![Field::L4proto, Field::Dport, pick],
                String::new(),
            )
        } else {
            (
                format!("be{n}"),
                vec![f.daddr, Field::L4proto, Field::Dport, pick],
                format!("{ip} daddr . "),
            )
        };
        e.extend(concat(&key, 0));
        e.push(Expr::Lookup {
            set: map.clone(),
            sreg: reg(0),
            dreg: Some(reg(data_slot)),
            invert: false,
        });
        e.push(Expr::Dnat {
            family: f.proto,
            addr: reg(data_slot),
            proto: reg(data_slot + f.addr_slots),
        });
        (
            e,
            format!("dnat {ip} to {key_text}meta l4proto . th dport . {pick_text} map @{map}"),
        )
    }

    pub(crate) fn def(&self) -> ChainDef {
        let f = &FAMS[self.v6 as usize];
        let (ip, k) = (f.ip, self.k);
        let rules = if let Some(t) = self.affinity {
            // a known client goes back to its bucket (refreshing its timeout); a new one picks a
            // bucket at random (as iptables' statistic: 1/K, then 1/(K-1)...) and is remembered
            let client = [f.saddr, f.daddr, Field::L4proto, Field::Dport];
            let key_text = format!("{ip} saddr . {ip} daddr . meta l4proto . th dport");
            let update = |i: u32| -> (Vec<Expr>, String) {
                let set = affinity_set_name(self.v6, i);
                let mut e = nfproto(f.proto);
                e.extend(concat(&client, 0));
                e.push(Expr::DynsetUpdate {
                    set: set.clone(),
                    key: reg(0),
                    timeout_ms: t * 1000,
                });
                (e, format!("update @{set} {{ {key_text} timeout {t}s }}"))
            };
            let mut rules = vec![];
            for i in 0..k {
                let set = affinity_set_name(self.v6, i);
                let mut e = nfproto(f.proto);
                e.extend(lookup(&set, &client));
                let (u, ut) = update(i);
                let (d, dt) =
                    self.dnat_be(Field::Const(i), &format!("numgen random mod 1 offset {i}"));
                e.extend(u);
                e.extend(d);
                rules.push(RuleDef {
                    exprs: e,
                    text: format!("{key_text} @{set} {ut} {dt}"),
                    comment: None,
                });
            }
            for j in 0..k {
                let mut e = vec![];
                let mut text = String::new();
                if j + 1 < k {
                    e.push(Expr::Numgen {
                        dreg: reg(0),
                        modulus: k - j,
                        offset: 0,
                    });
                    e.push(Expr::Cmp {
                        sreg: reg(0),
                        op: NFT_CMP_EQ,
                        data: vec![0; 4],
                    });
                    text = format!("numgen random mod {} 0 ", k - j);
                }
                let (u, ut) = update(j);
                let (d, dt) =
                    self.dnat_be(Field::Const(j), &format!("numgen random mod 1 offset {j}"));
                e.extend(u);
                e.extend(d);
                rules.push(RuleDef {
                    exprs: e,
                    text: format!("{text}{ut} {dt}"),
                    comment: None,
                });
            }
            rules
        } else {
            // without affinity (node port or not): one rule, a random bucket of the backend map
            let (e, text) = self.dnat_be(Field::Numgen(k), &format!("numgen random mod {k}"));
            vec![RuleDef {
                exprs: e,
                text,
                comment: None,
            }]
        };
        ChainDef {
            name: self.name(),
            hook: None,
            rules,
        }
    }
}

/// Elements of one set: key bytes -> data. Interval sets hold `[start, end)` pairs as two keys
/// (the end flagged by [`ElemData::None`] with a marker in [`Elements::interval_ends`]).
pub(crate) type SetElems = BTreeMap<Vec<u8>, ElemData>;

/// Everything the router programs for a state: the load-balancing chains and every element.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Desired {
    pub chains: BTreeSet<LbChain>,
    pub sets: BTreeMap<&'static str, SetElems>,
    /// Interval sets as CIDRs (rendered to start/end elements when sent).
    pub cidrs: BTreeMap<&'static str, Vec<ipnet::IpNet>>,
    pub service_ports: usize,
    pub endpoints: usize,
    /// Node ports answer only on `npaddr4`/`npaddr6`.
    pub node_ports_restricted: bool,
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}
fn proto_bytes(p: u8) -> [u8; 4] {
    [p, 0, 0, 0]
}
fn port_bytes(p: u16) -> [u8; 4] {
    let b = p.to_be_bytes();
    [b[0], b[1], 0, 0]
}

fn svc_key(ip: IpAddr, proto: u8, port: u16) -> Vec<u8> {
    let mut k = ip_bytes(ip);
    k.extend(proto_bytes(proto));
    k.extend(port_bytes(port));
    k
}

fn ep_data(e: &Endpoint) -> Vec<u8> {
    let mut d = ip_bytes(e.ip);
    d.extend(port_bytes(e.port));
    d
}

/// What one service port puts in the table: its elements, the chains they jump to, the
/// endpoint addresses that need hairpin masquerade.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Contribution {
    pub elems: Vec<(&'static str, Vec<u8>, ElemData)>,
    pub chains: Vec<LbChain>,
    pub hairpin: Vec<IpAddr>,
    pub endpoints: usize,
}

/// The node facts that shape every contribution.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NodeFacts {
    pub name: String,
    pub masquerade_all: bool,
    pub cidrs: Vec<ipnet::IpNet>,
    pub node_port_addresses: Vec<IpAddr>,
}

impl NodeFacts {
    pub(crate) fn of(state: &ProxyState) -> Self {
        Self {
            name: state.node.name.clone(),
            masquerade_all: state.node.masquerade_all,
            cidrs: state.node.cluster_cidrs.clone(),
            node_port_addresses: state.node.node_port_addresses.clone(),
        }
    }

    /// The `npaddr4`/`npaddr6` elements.
    pub(crate) fn node_port_elems(&self) -> Vec<(&'static str, Vec<u8>)> {
        self.node_port_addresses
            .iter()
            .map(|ip| {
                (
                    if ip.is_ipv6() { "npaddr6" } else { "npaddr4" },
                    ip_bytes(*ip),
                )
            })
            .collect()
    }

    /// The interval sets of the cluster CIDRs.
    pub(crate) fn cidr_sets(&self) -> BTreeMap<&'static str, Vec<ipnet::IpNet>> {
        [(false, "cidr4"), (true, "cidr6")]
            .into_iter()
            .map(|(v6, name)| {
                let nets = self
                    .cidrs
                    .iter()
                    .filter(|n| matches!(n, ipnet::IpNet::V6(_)) == v6)
                    .copied()
                    .collect();
                (name, nets)
            })
            .collect()
    }
}

pub(crate) fn hairpin_elem(ip: IpAddr) -> (&'static str, Vec<u8>) {
    let mut k = ip_bytes(ip);
    k.extend(ip_bytes(ip));
    (if ip.is_ipv6() { "hairpin6" } else { "hairpin4" }, k)
}

impl Desired {
    fn set(&mut self, name: &'static str) -> &mut SetElems {
        self.sets.entry(name).or_default()
    }

    /// Compute the elements for `state`.
    pub(crate) fn compute(state: &ProxyState) -> Self {
        let facts = NodeFacts::of(state);
        let contributions: Vec<Contribution> = state
            .services
            .values()
            .map(|sp| contribution(sp, &facts))
            .collect();
        Self::aggregate(&facts, contributions.iter())
    }

    /// Everything, from the contributions of every service port.
    pub(crate) fn aggregate<'a>(
        facts: &NodeFacts,
        contributions: impl Iterator<Item = &'a Contribution>,
    ) -> Self {
        let mut d = Desired::default();
        for s in SETS.iter().filter(|s| !s.interval && !s.dynamic) {
            d.sets.insert(s.name, SetElems::new());
        }
        d.cidrs = facts.cidr_sets();
        let mut hairpin: BTreeSet<IpAddr> = BTreeSet::new();
        for c in contributions {
            d.service_ports += 1;
            d.endpoints += c.endpoints;
            for (set, k, v) in &c.elems {
                d.set(set).insert(k.clone(), v.clone());
            }
            d.chains.extend(c.chains.iter().cloned());
            hairpin.extend(c.hairpin.iter().copied());
        }
        for ip in hairpin {
            let (set, k) = hairpin_elem(ip);
            d.set(set).insert(k, ElemData::None);
        }
        for (set, k) in facts.node_port_elems() {
            d.set(set).insert(k, ElemData::None);
        }
        d.node_ports_restricted = !facts.node_port_addresses.is_empty();
        d
    }

    /// The affinity sets the load-balancing chains need.
    pub(crate) fn affinity_sets(&self) -> BTreeSet<(bool, u32)> {
        self.chains.iter().flat_map(|c| c.affinity_sets()).collect()
    }
}

/// Where a load-balanced key goes: its verdict map (to the chain for its endpoint count) and
/// the backend map (`key . bucket` to `address . port`).
struct Balanced {
    vmap: &'static str,
    backends: &'static str,
    node_port: bool,
}

impl Balanced {
    /// The verdict element of `key`, its chain, and one backend element per endpoint.
    #[allow(clippy::too_many_arguments)]
    fn push(
        &self,
        c: &mut Contribution,
        sp: &ServicePort,
        v6: bool,
        key: &[u8],
        eps: &[Endpoint],
        programmed: &mut BTreeSet<(IpAddr, u16)>,
        hairpin: &mut BTreeSet<IpAddr>,
    ) {
        let chain = LbChain {
            v6,
            node_port: self.node_port,
            k: eps.len() as u32,
            affinity: sp.affinity_timeout.map(|t| t.as_secs().max(1)),
        };
        c.elems
            .push((self.vmap, key.to_vec(), ElemData::Goto(chain.name())));
        c.chains.push(chain);
        for (i, e) in eps.iter().enumerate() {
            let mut k = key.to_vec();
            k.extend((i as u32).to_ne_bytes());
            c.elems
                .push((self.backends, k, ElemData::Bytes(ep_data(e))));
            programmed.insert((e.ip, e.port));
            hairpin.insert(e.ip);
        }
    }
}

/// The firewall elements of load-balancer key `key`: the key in `fwsvc`, and one range per
/// source range of the family in `fwallow` (start key then end key).
fn firewall_elems(c: &mut Contribution, v6: bool, key: &[u8], ranges: &[ipnet::IpNet]) {
    let (svc, allow) = if v6 {
        ("fwsvc6", "fwallow6")
    } else {
        ("fwsvc4", "fwallow4")
    };
    c.elems.push((svc, key.to_vec(), ElemData::None));
    for r in ranges.iter().filter(|r| r.addr().is_ipv6() == v6) {
        let r = r.trunc();
        let mut k = key.to_vec();
        k.extend(ip_bytes(r.network()));
        k.extend_from_slice(key);
        k.extend(ip_bytes(r.broadcast()));
        c.elems.push((allow, k, ElemData::None));
    }
}

/// Why the router cannot program `sp`, if it cannot: the reason names the service port.
pub(crate) fn unprogrammable(name: &ServicePortName, sp: &ServicePort) -> Option<String> {
    let bad_ip = sp
        .service_ips()
        .map(|(ip, _)| ip)
        .find(|ip| ip.is_unspecified() || ip.is_multicast());
    let bad_ep = sp.endpoints.iter().find(|e| e.port == 0);
    let why = if sp.port == 0 {
        "port 0".to_string()
    } else if sp.node_port == Some(0) {
        "nodePort 0".to_string()
    } else if sp.service_ips().next().is_none() {
        "no cluster, external or load-balancer IP".to_string()
    } else if let Some(ip) = bad_ip {
        format!("service address {ip} is unspecified or multicast")
    } else if let Some(e) = bad_ep {
        format!("endpoint {} has port 0", e.ip)
    } else {
        return None;
    };
    Some(format!("{name}: {why}"))
}

/// What service port `sp` contributes on a node with `facts`.
pub(crate) fn contribution(sp: &ServicePort, facts: &NodeFacts) -> Contribution {
    let mut c = Contribution::default();
    let proto = sp.protocol.number();
    let mut programmed = BTreeSet::new();
    let mut hairpin = BTreeSet::new();
    for v6 in [false, true] {
        let pick = |a: &'static str, b: &'static str| if v6 { b } else { a };
        let by_source = |source: TrafficSource| -> Vec<Endpoint> {
            let mut eps: Vec<Endpoint> = sp
                .usable_endpoints(source, &facts.name)
                .into_iter()
                .filter(|e| e.ip.is_ipv6() == v6)
                .cloned()
                .collect();
            eps.sort_by_key(|e| (e.ip, e.port));
            eps
        };
        let internal = by_source(TrafficSource::Internal);
        let external = by_source(TrafficSource::External);
        let has_cidr = facts
            .cidrs
            .iter()
            .any(|c| matches!(c, ipnet::IpNet::V6(_)) == v6);
        for (ip, source) in sp.service_ips().filter(|(ip, _)| ip.is_ipv6() == v6) {
            let eps = if source == TrafficSource::Internal {
                &internal
            } else {
                &external
            };
            let key = svc_key(ip, proto, sp.port);
            if !sp.load_balancer_source_ranges.is_empty() && sp.load_balancer_ips.contains(&ip) {
                firewall_elems(&mut c, v6, &key, &sp.load_balancer_source_ranges);
            }
            if eps.is_empty() {
                c.elems.push((pick("noep4", "noep6"), key, ElemData::None));
                continue;
            }
            let masq = facts.masquerade_all
                || (source == TrafficSource::External && !sp.external_policy_local);
            if masq {
                c.elems
                    .push((pick("masq4", "masq6"), key.clone(), ElemData::None));
            } else if source == TrafficSource::Internal && has_cidr {
                c.elems
                    .push((pick("internal4", "internal6"), key.clone(), ElemData::None));
            }
            let lb = Balanced {
                vmap: pick("svc4", "svc6"),
                backends: pick("be4", "be6"),
                node_port: false,
            };
            lb.push(&mut c, sp, v6, &key, eps, &mut programmed, &mut hairpin);
        }
        if let Some(np) = sp.node_port {
            let mut key = proto_bytes(proto).to_vec();
            key.extend(port_bytes(np));
            if external.is_empty() {
                c.elems
                    .push((pick("noepnp4", "noepnp6"), key, ElemData::None));
            } else {
                if !sp.external_policy_local || facts.masquerade_all {
                    c.elems.push(("npmasq", key.clone(), ElemData::None));
                }
                let lb = Balanced {
                    vmap: pick("np4", "np6"),
                    backends: pick("npbe4", "npbe6"),
                    node_port: true,
                };
                lb.push(
                    &mut c,
                    sp,
                    v6,
                    &key,
                    &external,
                    &mut programmed,
                    &mut hairpin,
                );
            }
        }
    }
    c.endpoints = programmed.len();
    c.hairpin = hairpin.into_iter().collect();
    c
}

fn fmt_field(t: Ty, b: &[u8]) -> String {
    match t {
        Ty::Ip4 => std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string(),
        Ty::Ip6 => {
            std::net::Ipv6Addr::from(<[u8; 16]>::try_from(&b[..16]).expect("16 bytes")).to_string()
        }
        Ty::Proto => match b[0] {
            6 => "tcp".into(),
            17 => "udp".into(),
            132 => "sctp".into(),
            p => p.to_string(),
        },
        Ty::Port => u16::from_be_bytes([b[0], b[1]]).to_string(),
        Ty::Bucket => u32::from_ne_bytes([b[0], b[1], b[2], b[3]]).to_string(),
    }
}

fn fmt_concat(tys: &[Ty], mut b: &[u8]) -> String {
    let mut parts = vec![];
    for t in tys {
        let l = t.reg_len() as usize;
        parts.push(fmt_field(*t, &b[..l]));
        b = &b[l..];
    }
    parts.join(" . ")
}

/// The ruleset as `nft -f` input (for `--dump` and debugging).
pub(crate) fn render(table: &str, desired: &Desired) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "add table inet {table}");
    let _ = writeln!(out, "delete table inet {table}");
    let _ = writeln!(out, "add table inet {table}");
    for s in SETS {
        let kind = if s.data == DataTy::None { "set" } else { "map" };
        let mut decl = if s.key.contains(&Ty::Bucket) || matches!(s.data, DataTy::Concat(_)) {
            let key: Vec<&str> = s.key.iter().map(|t| t.typeof_text()).collect();
            let data = match s.data {
                DataTy::Concat(tys) => tys
                    .iter()
                    .map(|t| t.typeof_text())
                    .collect::<Vec<_>>()
                    .join(" . "),
                _ => String::new(),
            };
            format!("typeof {} : {data};", key.join(" . "))
        } else {
            let key: Vec<&str> = s.key.iter().map(|t| t.text()).collect();
            let data = if s.data == DataTy::Verdict {
                " : verdict"
            } else {
                ""
            };
            format!("type {}{data};", key.join(" . "))
        };
        if s.interval {
            decl.push_str(" flags interval;");
        }
        let _ = writeln!(out, "add {kind} inet {table} {} {{ {decl} }}", s.name);
    }
    for (v6, i) in desired.affinity_sets() {
        let t = if v6 { "ipv6_addr" } else { "ipv4_addr" };
        let _ = writeln!(
            out,
            "add set inet {table} {} {{ type {t} . {t} . inet_proto . inet_service; flags dynamic,timeout; }}",
            affinity_set_name(v6, i)
        );
    }
    let chains: Vec<ChainDef> = skeleton(desired.node_ports_restricted)
        .into_iter()
        .chain(desired.chains.iter().map(|c| c.def()))
        .collect();
    for c in &chains {
        match c.hook {
            Some(h) => {
                let (ty, hook) = (
                    if h.nat { "nat" } else { "filter" },
                    match h.hook {
                        node_nft::NfHook::PreRouting => "prerouting",
                        node_nft::NfHook::Out => "output",
                        node_nft::NfHook::PostRouting => "postrouting",
                        node_nft::NfHook::In => "input",
                        _ => "forward",
                    },
                );
                let _ = writeln!(
                    out,
                    "add chain inet {table} {} {{ type {ty} hook {hook} priority {}; }}",
                    c.name, h.priority
                );
            }
            None => {
                let _ = writeln!(out, "add chain inet {table} {}", c.name);
            }
        }
    }
    for c in &chains {
        for r in &c.rules {
            let _ = writeln!(out, "add rule inet {table} {} {}", c.name, r.text);
        }
    }
    for (name, nets) in &desired.cidrs {
        if !nets.is_empty() {
            let list: Vec<String> = nets.iter().map(|n| n.trunc().to_string()).collect();
            let _ = writeln!(
                out,
                "add element inet {table} {name} {{ {} }}",
                list.join(", ")
            );
        }
    }
    for (name, elems) in &desired.sets {
        if elems.is_empty() {
            continue;
        }
        let def = set_def(name);
        let items: Vec<String> = elems
            .iter()
            .map(|(k, v)| {
                let key = if def.concat_interval() {
                    // `a . b . start-end`: the range is on the last field
                    let (start, end) = k.split_at(k.len() / 2);
                    let (last, head) = def.key.split_last().expect("a concatenation");
                    let at = start.len() - last.reg_len() as usize;
                    format!(
                        "{} . {}-{}",
                        fmt_concat(head, &start[..at]),
                        fmt_field(*last, &start[at..]),
                        fmt_field(*last, &end[at..])
                    )
                } else {
                    fmt_concat(def.key, k)
                };
                match (v, def.data) {
                    (ElemData::Bytes(b), DataTy::Concat(tys)) => {
                        format!("{key} : {}", fmt_concat(tys, b))
                    }
                    (ElemData::Goto(c), _) => format!("{key} : goto {c}"),
                    _ => key,
                }
            })
            .collect();
        for chunk in items.chunks(1000) {
            let _ = writeln!(
                out,
                "add element inet {table} {name} {{ {} }}",
                chunk.join(", ")
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use node_core::{NodeInfo, Protocol, ServicePortName};
    use std::time::Duration;

    fn ep(ip: &str, node: &str) -> Endpoint {
        Endpoint {
            node_name: Some(node.into()),
            ..Endpoint::ready(ip.parse().unwrap(), 8080)
        }
    }

    fn state(sp: ServicePort) -> ProxyState {
        ProxyState {
            services: [(ServicePortName::new("d", "s", ""), sp)].into(),
            node: NodeInfo {
                name: "me".into(),
                cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
                ..Default::default()
            },
        }
    }

    #[test]
    fn elements_grow_with_endpoints_and_chains_with_distinct_counts() {
        let mut services = BTreeMap::new();
        for s in 0..50u8 {
            services.insert(
                ServicePortName::new("d", format!("s{s}"), ""),
                ServicePort {
                    cluster_ips: vec![format!("10.96.1.{s}").parse().unwrap()],
                    port: 80,
                    endpoints: (0..3)
                        .map(|e| ep(&format!("10.244.{s}.{e}"), "x"))
                        .collect(),
                    ..Default::default()
                },
            );
        }
        let d = Desired::compute(&ProxyState {
            services,
            ..Default::default()
        });
        assert_eq!(d.sets["be4"].len(), 150);
        assert_eq!(d.sets["svc4"].len(), 50);
        assert_eq!(d.chains.len(), 1, "one chain for every 3-endpoint service");
        assert_eq!(d.endpoints, 150);
    }

    #[test]
    fn policies_masquerade_and_rejects() {
        let mut sp = ServicePort {
            cluster_ips: vec!["10.96.0.1".parse().unwrap()],
            external_ips: vec!["192.0.2.1".parse().unwrap()],
            port: 80,
            protocol: Protocol::Udp,
            node_port: Some(30000),
            external_policy_local: true,
            affinity_timeout: Some(Duration::from_secs(5)),
            endpoints: vec![ep("10.244.0.1", "other"), ep("10.244.0.2", "other")],
            ..Default::default()
        };
        let d = Desired::compute(&state(sp.clone()));
        // ClusterIP: both endpoints, masqueraded only from outside the cluster CIDR
        assert_eq!(d.sets["internal4"].len(), 1);
        assert_eq!(
            d.sets["masq4"].len(),
            0,
            "Local external policy keeps client addresses"
        );
        // external IP and node port: no local endpoint -> rejected
        assert_eq!(d.sets["noep4"].len(), 1);
        assert_eq!(d.sets["noepnp4"].len(), 1);
        assert!(d.chains.iter().any(|c| c.name() == "aff4_2_5"));
        assert_eq!(d.affinity_sets().len(), 2);
        sp.external_policy_local = false;
        let d = Desired::compute(&state(sp));
        assert_eq!(d.sets["masq4"].len(), 1);
        assert_eq!(d.sets["npmasq"].len(), 1);
        assert_eq!(d.sets["npbe4"].len(), 2);
        assert_eq!(d.sets["noep4"].len() + d.sets["noepnp4"].len(), 0);
    }

    #[test]
    fn the_dump_names_every_set_and_element() {
        let sp = ServicePort {
            cluster_ips: vec!["fd00:96::1".parse().unwrap()],
            port: 53,
            protocol: Protocol::Sctp,
            endpoints: vec![ep("fd00:244::5", "me")],
            ..Default::default()
        };
        let text = render("t", &Desired::compute(&state(sp)));
        assert!(
            text.contains(
                "add element inet t be6 { fd00:96::1 . sctp . 53 . 0 : fd00:244::5 . 8080 }"
            ),
            "{text}"
        );
        assert!(
            text.contains("add element inet t cidr4 { 10.244.0.0/16 }"),
            "{text}"
        );
        for s in SETS {
            assert!(
                text.contains(&format!(" inet t {} {{", s.name)),
                "{} declared",
                s.name
            );
        }
    }

    #[test]
    fn load_balancer_source_ranges_are_ranges_of_a_concatenation() {
        let mut sp = ServicePort {
            cluster_ips: vec!["10.96.0.1".parse().unwrap()],
            load_balancer_ips: vec!["192.168.60.20".parse().unwrap()],
            load_balancer_source_ranges: vec![
                "192.168.50.0/24".parse().unwrap(),
                "fd00::/64".parse().unwrap(),
            ],
            port: 80,
            protocol: Protocol::Tcp,
            endpoints: vec![ep("10.244.1.5", "other")],
            ..Default::default()
        };
        let text = render("t", &Desired::compute(&state(sp.clone())));
        assert!(
            text.contains("add element inet t fwallow4 { 192.168.60.20 . tcp . 80 . 192.168.50.0-192.168.50.255 }"),
            "{text}"
        );
        assert!(text.contains("add element inet t fwsvc4 { 192.168.60.20 . tcp . 80 }"));
        // no IPv6 load-balancer IP: nothing in the IPv6 sets; the cluster IP is never firewalled
        assert!(!text.contains("add element inet t fwallow6") && !text.contains("fwsvc4 { 10.96"));
        sp.load_balancer_source_ranges.clear();
        let text = render("t", &Desired::compute(&state(sp)));
        assert!(!text.contains("add element inet t fwsvc4"), "{text}");
    }
}
