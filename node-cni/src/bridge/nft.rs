//! The bridge plugin's nftables table (one of our own per network, `inet nodekit_<network>`):
//! masquerade for traffic leaving the pod subnets, and host ports as DNAT through two interval
//! maps keyed by `node address . protocol . port`. Programmed over netlink with node-nft, one
//! atomic transaction per call and no process spawned; a host port costs one map element,
//! added and deleted by key.
//!
//! ```text
//! prerouting, output (nat, -100): fib daddr type local
//!     dnat ip to ip daddr . meta l4proto . th dport map @hostports4     (and ip6, @hostports6)
//! postrouting (nat, 100):
//!     ct status dnat ip saddr 127.0.0.0/8 masquerade                    (host ports on 127.0.0.1)
//!     ct status dnat ip saddr <subnet> ip daddr <subnet> masquerade     (from a pod of the bridge)
//!     ip saddr <subnet> ip daddr != <subnet> masquerade                 (ipMasq)
//! ```
//!
//! The first prerouting rule carries a comment naming the configuration the rules were made
//! for: [`NftTable::ensure`] reads it back (one dump) and skips the transaction when it matches,
//! so that a plugin binary started per call costs little more than the in-process plugin.

use std::ffi::CString;
use std::net::IpAddr;

use ipnet::IpNet;
use node_core::{CniError, PortMapping};
use node_nft::expr::{self, Expr, Field, reg};
use node_nft::{
    ChainDef, DataTy, ElemData, ElemsMsg, Hook, MsgType, NfHook, NftError, ProtoFamily, RuleDef,
    SetDef, SetMsg, Socket, Table, Transaction, Ty,
};

static HOSTPORTS4: SetDef = SetDef {
    name: "hostports4",
    key: &[Ty::Ip4, Ty::Proto, Ty::Port],
    data: DataTy::Concat(&[Ty::Ip4, Ty::Port]),
    interval: true,
    dynamic: false,
};

static HOSTPORTS6: SetDef = SetDef {
    name: "hostports6",
    key: &[Ty::Ip6, Ty::Proto, Ty::Port],
    data: DataTy::Concat(&[Ty::Ip6, Ty::Port]),
    interval: true,
    dynamic: false,
};

/// The table of one network.
#[derive(Debug, Clone)]
pub(crate) struct NftTable {
    name: String,
    cname: CString,
}

/// One host port rule: an element of `hostports4` or `hostports6`.
#[derive(Debug, Clone)]
pub(crate) struct HostPort {
    map: &'static SetDef,
    /// The key as nft prints it.
    key: String,
    /// The value as nft prints it.
    value: String,
    /// The start key then the (inclusive) end key.
    key_bytes: Vec<u8>,
    data: ElemData,
}

fn nft_err(table: &str, e: NftError) -> CniError {
    CniError::Netlink {
        op: format!("nftables table inet {table}"),
        message: match &e {
            NftError::Io { source, .. } | NftError::Rejected { source, .. } => {
                format!("{e}: {source}")
            }
            NftError::BadName { .. } => e.to_string(),
        },
    }
}

fn protocol_number(proto: &str) -> u8 {
    match proto {
        "tcp" => libc::IPPROTO_TCP as u8,
        "udp" => libc::IPPROTO_UDP as u8,
        _ => libc::IPPROTO_SCTP as u8,
    }
}

fn addr_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// 64-bit FNV-1a, stable across builds (the fingerprint of a configuration).
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

impl NftTable {
    /// The table of `network`.
    pub fn new(network: &str) -> Self {
        let clean: String = network
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let name = format!("nodekit_{clean}");
        Self {
            cname: CString::new(name.clone()).expect("alphanumeric"),
            name,
        }
    }

    /// The table's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn socket(&self) -> Result<Socket, CniError> {
        Socket::open().map_err(|e| nft_err(&self.name, e))
    }

    fn commit(&self, tx: Transaction) -> Result<(), CniError> {
        self.socket()?
            .commit(tx)
            .map_err(|e| nft_err(&self.name, e))
    }

    /// The comment of the first prerouting rule for `subnets` and `masquerade`.
    fn fingerprint(subnets: &[IpNet], masquerade: bool) -> String {
        let text: Vec<String> = subnets.iter().map(|n| n.trunc().to_string()).collect();
        let text = format!("v1 masquerade={masquerade} {}", text.join(","));
        format!("nodekit-bridge config {:016x}", fnv1a(&text))
    }

    /// The rules of the three chains for `subnets`.
    fn chains(subnets: &[IpNet], masquerade: bool) -> Vec<ChainDef> {
        let fams = [
            (HOSTPORTS4.name, expr::NFPROTO_IPV4, Field::Daddr4, 1, "ip"),
            (HOSTPORTS6.name, expr::NFPROTO_IPV6, Field::Daddr6, 4, "ip6"),
        ];
        let dnat: Vec<RuleDef> = fams
            .iter()
            .map(|(map, family, daddr, addr_slots, ip)| {
                RuleDef::new(
                    format!(
                        "fib daddr type local dnat {ip} to {ip} daddr . meta l4proto . th dport map @{map}"
                    ),
                    vec![
                        expr::nfproto(*family),
                        expr::fib_local(),
                        expr::concat(&[*daddr, Field::L4proto, Field::Dport], 0),
                        vec![
                            Expr::Lookup {
                                set: map.to_string(),
                                sreg: reg(0),
                                dreg: Some(reg(0)),
                                invert: false,
                            },
                            Expr::Dnat {
                                family: *family,
                                addr: reg(0),
                                proto: reg(*addr_slots),
                            },
                        ],
                    ],
                )
            })
            .collect();
        let mut pre = dnat.clone();
        pre[0].comment = Some(Self::fingerprint(subnets, masquerade));
        let masq = vec![Expr::Masq];
        let mut post = vec![];
        if subnets.iter().any(|n| n.addr().is_ipv4()) {
            // Host ports reached on the node's 127.0.0.1 (route_localnet on the bridge): the pod
            // must answer to the node's bridge address, not to its own loopback.
            let lo: IpNet = "127.0.0.0/8".parse().expect("valid");
            post.push(RuleDef::new(
                "ct status dnat ip saddr 127.0.0.0/8 masquerade",
                vec![
                    expr::nfproto(expr::NFPROTO_IPV4),
                    expr::ct_dnat(),
                    expr::addr_in(lo, true, false),
                    masq.clone(),
                ],
            ));
        }
        for n in subnets {
            let n = n.trunc();
            let (fam, family) = if n.addr().is_ipv4() {
                ("ip", expr::NFPROTO_IPV4)
            } else {
                ("ip6", expr::NFPROTO_IPV6)
            };
            // Host ports reached from a pod of the same bridge: the reply must come back through
            // the node to be un-NATed.
            post.push(RuleDef::new(
                format!("ct status dnat {fam} saddr {n} {fam} daddr {n} masquerade"),
                vec![
                    expr::nfproto(family),
                    expr::ct_dnat(),
                    expr::addr_in(n, true, false),
                    expr::addr_in(n, false, false),
                    masq.clone(),
                ],
            ));
            if masquerade {
                post.push(RuleDef::new(
                    format!("{fam} saddr {n} {fam} daddr != {n} masquerade"),
                    vec![
                        expr::nfproto(family),
                        expr::addr_in(n, true, false),
                        expr::addr_in(n, false, true),
                        masq.clone(),
                    ],
                ));
            }
        }
        let hook = |hook, priority| {
            Some(Hook {
                hook,
                nat: true,
                priority,
            })
        };
        vec![
            ChainDef {
                name: "prerouting".into(),
                hook: hook(NfHook::PreRouting, -100),
                rules: pre,
            },
            ChainDef {
                name: "output".into(),
                hook: hook(NfHook::Out, -100),
                rules: dnat,
            },
            ChainDef {
                name: "postrouting".into(),
                hook: hook(NfHook::PostRouting, 100),
                rules: post,
            },
        ]
    }

    /// The rules for `subnets` and `masquerade` are in place: the first prerouting rule names
    /// them (one dump of that chain).
    fn is_current(&self, socket: &Socket, subnets: &[IpNet], masquerade: bool) -> bool {
        let want = Self::fingerprint(subnets, masquerade);
        socket
            .rule_comments(&self.name, "prerouting")
            .is_ok_and(|c| c.first().and_then(|c| c.as_deref()) == Some(want.as_str()))
    }

    /// Create the table, maps and chains (idempotent; map elements survive) and set the
    /// masquerade rules for `subnets`, in one transaction; nothing is sent when the rules for
    /// `subnets` and `masquerade` are there already.
    pub async fn ensure(&self, subnets: &[IpNet], masquerade: bool) -> Result<(), CniError> {
        let socket = self.socket()?;
        if self.is_current(&socket, subnets, masquerade) {
            return Ok(());
        }
        let mut tx = Transaction::new();
        let table = Table::new(&self.cname, ProtoFamily::Inet);
        tx.add(&table, MsgType::Add, "add table");
        for (i, def) in [&HOSTPORTS4, &HOSTPORTS6].into_iter().enumerate() {
            tx.add(
                &SetMsg {
                    table: self.cname.clone(),
                    name: None,
                    def,
                    id: i as u32 + 1,
                },
                MsgType::Add,
                format!("add map {}", def.name),
            );
        }
        let chains = Self::chains(subnets, masquerade);
        let bare: Vec<ChainDef> = chains
            .iter()
            .map(|c| ChainDef {
                rules: vec![],
                ..c.clone()
            })
            .collect();
        tx.add_chains(&table, &bare);
        for c in &chains {
            tx.flush_chain(&table, &c.name);
        }
        tx.add_chains(&table, &chains);
        socket.commit(tx).map_err(|e| nft_err(&self.name, e))
    }
    /// The map elements for `mappings` to a pod with addresses `pod_ips`.
    pub fn host_ports(
        mappings: &[PortMapping],
        pod_ips: &[IpAddr],
    ) -> Result<Vec<HostPort>, CniError> {
        let mut out = Vec::new();
        for m in mappings {
            let proto = m.protocol.to_ascii_lowercase();
            if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
                return Err(CniError::Config {
                    origin: "runtimeConfig.portMappings".into(),
                    message: format!(
                        "protocol {:?} of host port {} is not tcp, udp or sctp",
                        m.protocol, m.host_port
                    ),
                });
            }
            if m.host_port == 0 || m.container_port == 0 {
                return Err(CniError::Config {
                    origin: "runtimeConfig.portMappings".into(),
                    message: format!("port 0 in mapping {}:{}", m.host_port, m.container_port),
                });
            }
            let host_ip: Option<IpAddr> = match m.host_ip.as_deref().filter(|s| !s.is_empty()) {
                None => None,
                Some(s) => Some(s.parse().map_err(|_| CniError::Config {
                    origin: "runtimeConfig.portMappings".into(),
                    message: format!("hostIP {s:?} is not an address"),
                })?),
            };
            for pod_ip in pod_ips {
                let (map, any): (&'static SetDef, IpNet) = if pod_ip.is_ipv4() {
                    (&HOSTPORTS4, "0.0.0.0/0".parse().expect("valid"))
                } else {
                    (&HOSTPORTS6, "::/0".parse().expect("valid"))
                };
                let range = match host_ip {
                    None => any,
                    Some(h) if h.is_ipv4() == pod_ip.is_ipv4() && !h.is_unspecified() => {
                        IpNet::from(h)
                    }
                    Some(h) if h.is_ipv4() == pod_ip.is_ipv4() => any,
                    Some(_) => continue,
                };
                let key_addr = if range.prefix_len() == range.max_prefix_len() {
                    range.addr().to_string()
                } else {
                    range.to_string()
                };
                let tail = [
                    Ty::Proto.pad(&[protocol_number(&proto)]),
                    Ty::Port.pad(&m.host_port.to_be_bytes()),
                ]
                .concat();
                let key_bytes = [
                    addr_bytes(range.network()),
                    tail.clone(),
                    addr_bytes(range.broadcast()),
                    tail,
                ]
                .concat();
                let data = [
                    addr_bytes(*pod_ip),
                    Ty::Port.pad(&m.container_port.to_be_bytes()),
                ]
                .concat();
                out.push(HostPort {
                    map,
                    key: format!("{key_addr} . {proto} . {}", m.host_port),
                    value: format!("{pod_ip} . {}", m.container_port),
                    key_bytes,
                    data: ElemData::Bytes(data),
                });
            }
        }
        Ok(out)
    }

    /// A transaction adding (or deleting) `ports`, one message per map.
    fn elems_tx(&self, ports: &[HostPort], delete: bool) -> Transaction {
        let mut tx = Transaction::new();
        for map in [&HOSTPORTS4, &HOSTPORTS6] {
            let elems: Vec<_> = ports
                .iter()
                .filter(|p| p.map.name == map.name)
                .map(|p| (p.key_bytes.as_slice(), &p.data, 0))
                .collect();
            if elems.is_empty() {
                continue;
            }
            let what: Vec<String> = ports
                .iter()
                .filter(|p| p.map.name == map.name)
                .map(|p| format!("{{ {} : {} }}", p.key, p.value))
                .collect();
            let (ty, verb) = if delete {
                (MsgType::Del, "delete")
            } else {
                (MsgType::Add, "add")
            };
            tx.add(
                &ElemsMsg {
                    table: &self.cname,
                    set: map,
                    elems,
                    delete,
                },
                ty,
                format!("{verb} element {} {}", map.name, what.join(", ")),
            );
        }
        tx
    }

    /// Add host port elements (one transaction: all or none). A host port already mapped to
    /// another pod is an error (the kernel refuses a key with other data).
    pub async fn add_ports(&self, ports: &[HostPort]) -> Result<(), CniError> {
        if ports.is_empty() {
            return Ok(());
        }
        self.commit(self.elems_tx(ports, false))
    }

    /// Delete host port elements (one transaction); elements already gone are fine.
    pub async fn del_ports(&self, ports: &[HostPort]) -> Result<(), CniError> {
        if ports.is_empty() {
            return Ok(());
        }
        let socket = self.socket()?;
        match socket.commit(self.elems_tx(ports, true)) {
            Ok(()) => return Ok(()),
            Err(e) if e.errno() == Some(libc::ENOENT) => {}
            Err(e) => return Err(nft_err(&self.name, e)),
        }
        // some are gone (a repeated DEL, a DEL after a failed ADD): the others one by one
        for p in ports {
            match socket.commit(self.elems_tx(std::slice::from_ref(p), true)) {
                Ok(()) => {}
                Err(e) if e.errno() == Some(libc::ENOENT) => {}
                Err(e) => return Err(nft_err(&self.name, e)),
            }
        }
        Ok(())
    }

    /// Delete the whole table (nothing of ours stays); a missing table is fine.
    pub async fn remove(&self) -> Result<(), CniError> {
        let mut tx = Transaction::new();
        let table = Table::new(&self.cname, ProtoFamily::Inet);
        // create-if-missing then delete: one transaction, whatever was there
        tx.add(&table, MsgType::Add, "add table");
        tx.add(&table, MsgType::Del, "delete table");
        self.commit(tx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ports_map_each_family_and_reject_bad_protocols() {
        let m = |hp, proto: &str, ip: Option<&str>| PortMapping {
            host_port: hp,
            container_port: 80,
            protocol: proto.into(),
            host_ip: ip.map(str::to_string),
        };
        let ips: Vec<IpAddr> = vec!["10.1.0.2".parse().unwrap(), "fd00::2".parse().unwrap()];
        let p = NftTable::host_ports(
            &[m(8080, "TCP", None), m(53, "udp", Some("192.168.1.5"))],
            &ips,
        )
        .unwrap();
        assert_eq!(
            p.iter()
                .map(|p| format!("{} {} : {}", p.map.name, p.key, p.value))
                .collect::<Vec<_>>(),
            [
                "hostports4 0.0.0.0/0 . tcp . 8080 : 10.1.0.2 . 80",
                "hostports6 ::/0 . tcp . 8080 : fd00::2 . 80",
                "hostports4 192.168.1.5 . udp . 53 : 10.1.0.2 . 80",
            ]
        );
        // 0.0.0.0/0 . tcp . 8080 as a range: start key then inclusive end key
        let tail = [6, 0, 0, 0, 0x1f, 0x90, 0, 0];
        assert_eq!(
            p[0].key_bytes,
            [&[0, 0, 0, 0][..], &tail, &[255; 4], &tail].concat()
        );
        assert_eq!(p[0].data, ElemData::Bytes(vec![10, 1, 0, 2, 0, 80, 0, 0]));
        assert_eq!(p[2].key_bytes[..4], [192, 168, 1, 5]);
        assert_eq!(p[2].key_bytes[12..16], [192, 168, 1, 5]);
        let e = NftTable::host_ports(&[m(1, "icmp", None)], &ips).unwrap_err();
        assert!(e.to_string().contains("portMappings") && e.to_string().contains("icmp"));
        assert_eq!(NftTable::new("my-net.x").name(), "nodekit_my_net_x");
    }
}
