//! UDP conntrack cleanup, for every router: UDP has no connection end, so a conntrack entry
//! that still NATs a client's flow to an endpoint that went away black-holes that client until
//! the entry times out (kubernetes issues #19029, #59368). After a sync, the entries that point
//! at removed UDP endpoints, and those of UDP services that just got their first endpoint, are
//! deleted.
//!
//! [`stale_udp_flows`] computes what to delete from the old and new [`ProxyState`] (pure, any
//! router can call it); [`ConntrackCleaner`] deletes it with the `conntrack` CLI
//! (conntrack-tools), in the network namespace of the calling thread.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::process::Stdio;

use node_core::{Endpoint, Protocol, ProxyState, RouterError, ServicePort, TrafficSource};

/// A set of UDP conntrack entries to delete.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ConntrackFlush {
    /// Flows sent to `service_ip:port` that were NATed to `endpoint` (which went away).
    Endpoint {
        /// The ClusterIP, externalIP or load-balancer IP the client sent to.
        service_ip: IpAddr,
        /// The service port.
        port: u16,
        /// The removed endpoint's address.
        endpoint: IpAddr,
    },
    /// Flows sent to node port `node_port` that were NATed to `endpoint`.
    NodePortEndpoint {
        /// The node port.
        node_port: u16,
        /// The removed endpoint's address.
        endpoint: IpAddr,
    },
    /// Every flow sent to `service_ip:port` (the service just got endpoints after having none).
    ServiceIp {
        /// The service address.
        service_ip: IpAddr,
        /// The service port.
        port: u16,
    },
    /// Every flow of one family sent to node port `node_port` (the service just got
    /// endpoints).
    NodePort {
        /// The node port.
        node_port: u16,
        /// IPv6 (else IPv4).
        v6: bool,
    },
}

impl ConntrackFlush {
    /// The `conntrack` arguments that delete these entries.
    pub fn args(&self) -> Vec<String> {
        let fam = |ip: &IpAddr| if ip.is_ipv6() { "ipv6" } else { "ipv4" };
        let mut a: Vec<String> = vec!["-D".into()];
        match self {
            ConntrackFlush::Endpoint {
                service_ip,
                port,
                endpoint,
            } => a.extend([
                "-f".into(),
                fam(service_ip).into(),
                "-p".into(),
                "udp".into(),
                "--orig-dst".into(),
                service_ip.to_string(),
                "--orig-port-dst".into(),
                port.to_string(),
                "--dst-nat".into(),
                endpoint.to_string(),
            ]),
            ConntrackFlush::NodePortEndpoint {
                node_port,
                endpoint,
            } => a.extend([
                "-f".into(),
                fam(endpoint).into(),
                "-p".into(),
                "udp".into(),
                "--orig-port-dst".into(),
                node_port.to_string(),
                "--dst-nat".into(),
                endpoint.to_string(),
            ]),
            ConntrackFlush::ServiceIp { service_ip, port } => a.extend([
                "-f".into(),
                fam(service_ip).into(),
                "-p".into(),
                "udp".into(),
                "--orig-dst".into(),
                service_ip.to_string(),
                "--orig-port-dst".into(),
                port.to_string(),
            ]),
            ConntrackFlush::NodePort { node_port, v6 } => a.extend([
                "-f".into(),
                if *v6 { "ipv6" } else { "ipv4" }.into(),
                "-p".into(),
                "udp".into(),
                "--orig-port-dst".into(),
                node_port.to_string(),
            ]),
        }
        a
    }
}

fn usable(sp: &ServicePort, node: &str) -> BTreeSet<(IpAddr, u16)> {
    let key = |e: &&Endpoint| (e.ip, e.port);
    sp.usable_endpoints(TrafficSource::Internal, node)
        .iter()
        .map(key)
        .chain(
            sp.usable_endpoints(TrafficSource::External, node)
                .iter()
                .map(key),
        )
        .collect()
}

/// The UDP conntrack entries made stale by going from `old` to `new`: entries NATed to a UDP
/// endpoint traffic can no longer use, and entries of UDP service addresses that had no usable
/// endpoint (or did not exist) and now have one.
pub fn stale_udp_flows(old: &ProxyState, new: &ProxyState) -> Vec<ConntrackFlush> {
    let mut out = BTreeSet::new();
    for (name, was) in &old.services {
        if was.protocol != Protocol::Udp {
            continue;
        }
        let before = usable(was, &old.node.name);
        let after = match new.services.get(name) {
            Some(now) if now.protocol == Protocol::Udp => usable(now, &new.node.name),
            _ => BTreeSet::new(),
        };
        for (ep, _) in before.difference(&after) {
            for (service_ip, _) in was.service_ips() {
                if service_ip.is_ipv4() == ep.is_ipv4() {
                    out.insert(ConntrackFlush::Endpoint {
                        service_ip,
                        port: was.port,
                        endpoint: *ep,
                    });
                }
            }
            if let Some(node_port) = was.node_port {
                out.insert(ConntrackFlush::NodePortEndpoint {
                    node_port,
                    endpoint: *ep,
                });
            }
        }
    }
    for (name, now) in &new.services {
        if now.protocol != Protocol::Udp {
            continue;
        }
        let had = old
            .services
            .get(name)
            .filter(|w| w.protocol == Protocol::Udp)
            .map(|w| !usable(w, &old.node.name).is_empty())
            .unwrap_or(false);
        let has = usable(now, &new.node.name);
        if had || has.is_empty() {
            continue;
        }
        for (service_ip, _) in now.service_ips() {
            out.insert(ConntrackFlush::ServiceIp {
                service_ip,
                port: now.port,
            });
        }
        if let Some(node_port) = now.node_port {
            for v6 in [false, true] {
                if has.iter().any(|(ip, _)| ip.is_ipv6() == v6) {
                    out.insert(ConntrackFlush::NodePort { node_port, v6 });
                }
            }
        }
    }
    out.into_iter().collect()
}

/// Deletes conntrack entries with the `conntrack` command (conntrack-tools).
#[derive(Debug, Clone)]
pub struct ConntrackCleaner {
    /// The program to run (`conntrack` on the PATH by default).
    pub program: String,
}

impl Default for ConntrackCleaner {
    fn default() -> Self {
        Self {
            program: "conntrack".into(),
        }
    }
}

impl ConntrackCleaner {
    /// Delete the entries of every flush, in the calling thread's network namespace. Finding
    /// nothing to delete is not an error.
    pub async fn flush(&self, flushes: &[ConntrackFlush]) -> Result<(), RouterError> {
        for f in flushes {
            let out = tokio::process::Command::new(&self.program)
                .args(f.args())
                .stdin(Stdio::null())
                .output()
                .await
                .map_err(|e| RouterError::Command {
                    command: self.program.clone(),
                    status: "not started".into(),
                    stderr: e.to_string(),
                })?;
            let stderr = String::from_utf8_lossy(&out.stderr);
            if !out.status.success() && !stderr.contains("0 flow entries have been deleted") {
                return Err(RouterError::Command {
                    command: format!("{} {}", self.program, f.args().join(" ")),
                    status: out.status.to_string(),
                    stderr: stderr.trim().to_string(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use node_core::ServicePortName;

    fn udp(eps: &[&str]) -> ServicePort {
        ServicePort {
            cluster_ips: vec!["10.96.0.10".parse().unwrap()],
            port: 53,
            protocol: Protocol::Udp,
            node_port: Some(30053),
            endpoints: eps
                .iter()
                .map(|ip| Endpoint::ready(ip.parse().unwrap(), 5353))
                .collect(),
            ..Default::default()
        }
    }

    fn state(sp: Option<ServicePort>) -> ProxyState {
        let mut s = ProxyState::default();
        if let Some(sp) = sp {
            s.services
                .insert(ServicePortName::new("kube-system", "dns", "dns"), sp);
        }
        s
    }

    #[test]
    fn a_removed_udp_endpoint_is_flushed_for_its_service_ip_and_node_port() {
        let old = state(Some(udp(&["10.244.0.10", "10.244.0.11"])));
        let new = state(Some(udp(&["10.244.0.11"])));
        let got = stale_udp_flows(&old, &new);
        let ep: IpAddr = "10.244.0.10".parse().unwrap();
        assert_eq!(
            got,
            vec![
                ConntrackFlush::Endpoint {
                    service_ip: "10.96.0.10".parse().unwrap(),
                    port: 53,
                    endpoint: ep
                },
                ConntrackFlush::NodePortEndpoint {
                    node_port: 30053,
                    endpoint: ep
                },
            ]
        );
        assert_eq!(
            got[0].args().join(" "),
            "-D -f ipv4 -p udp --orig-dst 10.96.0.10 --orig-port-dst 53 --dst-nat 10.244.0.10"
        );
    }

    #[test]
    fn an_endpoint_turning_not_ready_is_stale_too() {
        let old = state(Some(udp(&["10.244.0.10", "10.244.0.11"])));
        let mut sp = udp(&["10.244.0.10", "10.244.0.11"]);
        sp.endpoints[0].ready = false;
        let got = stale_udp_flows(&old, &state(Some(sp)));
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn first_endpoints_flush_the_service_addresses() {
        let old = state(Some(udp(&[])));
        let new = state(Some(udp(&["10.244.0.10"])));
        assert_eq!(
            stale_udp_flows(&old, &new),
            vec![
                ConntrackFlush::ServiceIp {
                    service_ip: "10.96.0.10".parse().unwrap(),
                    port: 53
                },
                ConntrackFlush::NodePort {
                    node_port: 30053,
                    v6: false
                },
            ]
        );
    }

    #[test]
    fn tcp_and_unchanged_services_need_nothing() {
        let s = state(Some(udp(&["10.244.0.10"])));
        assert!(stale_udp_flows(&s, &s).is_empty());
        let mut tcp = udp(&["10.244.0.10"]);
        tcp.protocol = Protocol::Tcp;
        assert!(stale_udp_flows(&state(Some(tcp.clone())), &state(None)).is_empty());
        // a removed UDP service flushes its endpoints
        assert_eq!(stale_udp_flows(&s, &state(None)).len(), 2);
    }
}
