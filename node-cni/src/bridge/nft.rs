//! The bridge plugin's nftables table (one of our own per network, `inet nodekit_<network>`):
//! masquerade for traffic leaving the pod subnets, and host ports as DNAT through two interval
//! maps keyed by `node address . protocol . port`. Programmed with `nft -f -` (text, one
//! atomic transaction per call); a host port costs one map element, added and deleted by key.

use std::net::IpAddr;
use std::process::Stdio;

use ipnet::IpNet;
use node_core::{CniError, PortMapping};
use tokio::io::AsyncWriteExt;

/// The table of one network.
#[derive(Debug, Clone)]
pub(crate) struct NftTable {
    name: String,
}

/// One host port rule: `(key, value)` of an element of `hostports4` or `hostports6`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostPort {
    map: &'static str,
    key: String,
    value: String,
}

impl NftTable {
    /// The table of `network`.
    pub fn new(network: &str) -> Self {
        let clean: String = network
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        Self {
            name: format!("nodekit_{clean}"),
        }
    }

    /// The table's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Create the table, maps and chains (idempotent; map elements survive) and set the
    /// masquerade rules for `subnets`.
    pub async fn ensure(&self, subnets: &[IpNet], masquerade: bool) -> Result<(), CniError> {
        let t = &self.name;
        let mut s = format!(
            "add table inet {t}\n\
             add map inet {t} hostports4 {{ type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service ; flags interval ; }}\n\
             add map inet {t} hostports6 {{ type ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service ; flags interval ; }}\n\
             add chain inet {t} prerouting {{ type nat hook prerouting priority -100 ; }}\n\
             add chain inet {t} output {{ type nat hook output priority -100 ; }}\n\
             add chain inet {t} postrouting {{ type nat hook postrouting priority 100 ; }}\n\
             flush chain inet {t} prerouting\n\
             flush chain inet {t} output\n\
             flush chain inet {t} postrouting\n"
        );
        for chain in ["prerouting", "output"] {
            for (fam, map) in [("ip", "hostports4"), ("ip6", "hostports6")] {
                s.push_str(&format!(
                    "add rule inet {t} {chain} fib daddr type local meta l4proto {{ tcp, udp, sctp }} \
                     dnat {fam} to {fam} daddr . meta l4proto . th dport map @{map}\n"
                ));
            }
        }
        if subnets.iter().any(|n| n.addr().is_ipv4()) {
            // Host ports reached on the node's 127.0.0.1 (route_localnet on the bridge): the pod
            // must answer to the node's bridge address, not to its own loopback.
            s.push_str(&format!(
                "add rule inet {t} postrouting ct status dnat ip saddr 127.0.0.0/8 masquerade\n"
            ));
        }
        for n in subnets {
            let fam = if n.addr().is_ipv4() { "ip" } else { "ip6" };
            let n = n.trunc();
            // Host ports reached from a pod of the same bridge: the reply must come back through
            // the node to be un-NATed.
            s.push_str(&format!("add rule inet {t} postrouting ct status dnat {fam} saddr {n} {fam} daddr {n} masquerade\n"));
            if masquerade {
                s.push_str(&format!(
                    "add rule inet {t} postrouting {fam} saddr {n} {fam} daddr != {n} masquerade\n"
                ));
            }
        }
        nft(&s).await
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
                let (map, any) = if pod_ip.is_ipv4() {
                    ("hostports4", "0.0.0.0/0")
                } else {
                    ("hostports6", "::/0")
                };
                let key_addr = match host_ip {
                    None => any.to_string(),
                    Some(h) if h.is_ipv4() == pod_ip.is_ipv4() && !h.is_unspecified() => {
                        h.to_string()
                    }
                    Some(h) if h.is_ipv4() == pod_ip.is_ipv4() => any.to_string(),
                    Some(_) => continue,
                };
                out.push(HostPort {
                    map,
                    key: format!("{key_addr} . {proto} . {}", m.host_port),
                    value: format!("{pod_ip} . {}", m.container_port),
                });
            }
        }
        Ok(out)
    }

    /// Add host port elements (one transaction: all or none). A host port already mapped (to
    /// any pod) is an error: `create` refuses existing keys where `add` would keep the old value.
    pub async fn add_ports(&self, ports: &[HostPort]) -> Result<(), CniError> {
        if ports.is_empty() {
            return Ok(());
        }
        let s: String = ports
            .iter()
            .map(|p| {
                format!(
                    "add element inet {} {} {{ {} : {} }}\n",
                    self.name, p.map, p.key, p.value
                )
            })
            .collect();
        nft(&s).await
    }

    /// Delete host port elements; elements already gone are fine.
    pub async fn del_ports(&self, ports: &[HostPort]) -> Result<(), CniError> {
        let line = |p: &HostPort| {
            format!(
                "delete element inet {} {} {{ {} }}\n",
                self.name, p.map, p.key
            )
        };
        if ports.is_empty()
            || nft(&ports.iter().map(line).collect::<String>())
                .await
                .is_ok()
        {
            return Ok(());
        }
        for p in ports {
            if let Err(e) = nft(&line(p)).await {
                let msg = e.to_string();
                if !msg.contains("No such file or directory") {
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Delete the whole table (nothing of ours stays); a missing table is fine.
    pub async fn remove(&self) -> Result<(), CniError> {
        match nft(&format!("delete table inet {}\n", self.name)).await {
            Err(e) if e.to_string().contains("No such file or directory") => Ok(()),
            other => other,
        }
    }
}

/// Run `nft -f -` with `script` on stdin, in the calling thread's network namespace.
async fn nft(script: &str) -> Result<(), CniError> {
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| CniError::Io {
            path: "nft".into(),
            source,
        })?;
    let mut stdin = child.stdin.take().expect("piped");
    stdin
        .write_all(script.as_bytes())
        .await
        .map_err(|source| CniError::Io {
            path: "nft".into(),
            source,
        })?;
    drop(stdin);
    let out = child
        .wait_with_output()
        .await
        .map_err(|source| CniError::Io {
            path: "nft".into(),
            source,
        })?;
    if out.status.success() {
        return Ok(());
    }
    Err(CniError::Netlink {
        op: format!("nft -f - ({})", script.lines().next().unwrap_or_default()),
        message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
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
                .map(|p| format!("{} {} : {}", p.map, p.key, p.value))
                .collect::<Vec<_>>(),
            [
                "hostports4 0.0.0.0/0 . tcp . 8080 : 10.1.0.2 . 80",
                "hostports6 ::/0 . tcp . 8080 : fd00::2 . 80",
                "hostports4 192.168.1.5 . udp . 53 : 10.1.0.2 . 80",
            ]
        );
        let e = NftTable::host_ports(&[m(1, "icmp", None)], &ips).unwrap_err();
        assert!(e.to_string().contains("portMappings") && e.to_string().contains("icmp"));
        assert_eq!(NftTable::new("my-net.x").name(), "nodekit_my_net_x");
    }
}
