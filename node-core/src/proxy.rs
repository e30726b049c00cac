//! The service proxy's contract: the full desired state in ([`ProxyState`]), the kernel made to
//! match it by a [`ServiceRouter`], and a [`SyncReport`] out.
//!
//! The state is the normalized model that `node-proxy` builds from `Service` and `EndpointSlice`
//! objects: one [`ServicePort`] per service port, with every address the service answers on and
//! every endpoint with its conditions. Routers keep what they programmed and send only the
//! difference to the kernel.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The name of one port of one service: `namespace/name:port`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct ServicePortName {
    /// The service's namespace.
    pub namespace: String,
    /// The service's name.
    pub name: String,
    /// The port's name (empty for a single unnamed port).
    pub port: String,
}

impl ServicePortName {
    /// A service port name from its parts.
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        port: impl Into<String>,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            port: port.into(),
        }
    }
}

impl fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.port.is_empty() {
            write!(f, "{}/{}", self.namespace, self.name)
        } else {
            write!(f, "{}/{}:{}", self.namespace, self.name, self.port)
        }
    }
}

/// A transport protocol of a service port.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub enum Protocol {
    /// TCP (the default).
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    /// UDP.
    #[serde(rename = "UDP")]
    Udp,
    /// SCTP.
    #[serde(rename = "SCTP")]
    Sctp,
}

impl Protocol {
    /// The IANA protocol number (6, 17, 132).
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }
    /// The lowercase name (`tcp`, `udp`, `sctp`), as nft and iptables spell it.
    pub fn as_lower(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

impl FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "TCP" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            "SCTP" => Ok(Protocol::Sctp),
            other => Err(format!("unsupported protocol {other:?} (TCP, UDP or SCTP)")),
        }
    }
}

/// One backend of a service port, from an `EndpointSlice`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Endpoint {
    /// The endpoint's address (a pod IP).
    pub ip: IpAddr,
    /// The target port on the endpoint.
    pub port: u16,
    /// `conditions.ready`: the endpoint takes new traffic.
    pub ready: bool,
    /// `conditions.serving`: the endpoint answers, even while terminating.
    pub serving: bool,
    /// `conditions.terminating`.
    pub terminating: bool,
    /// The node the endpoint runs on (`nodeName`).
    pub node_name: Option<String>,
    /// The endpoint's zone.
    pub zone: Option<String>,
}

impl Endpoint {
    /// A ready, serving endpoint on no particular node.
    pub fn ready(ip: IpAddr, port: u16) -> Self {
        Self {
            ip,
            port,
            ready: true,
            serving: true,
            terminating: false,
            node_name: None,
            zone: None,
        }
    }
    /// Whether the endpoint runs on `node`.
    pub fn is_local(&self, node: &str) -> bool {
        self.node_name.as_deref() == Some(node)
    }
}

/// Where traffic to a service comes from, which decides the traffic policy that applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrafficSource {
    /// To a ClusterIP: `internalTrafficPolicy` applies.
    Internal,
    /// To a NodePort, externalIP or load-balancer IP: `externalTrafficPolicy` applies.
    External,
}

/// One port of one service, with everything a router needs to program it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ServicePort {
    /// Every ClusterIP of the service (one per IP family of a dual-stack service).
    pub cluster_ips: Vec<IpAddr>,
    /// The service port.
    pub port: u16,
    /// The protocol.
    pub protocol: Protocol,
    /// The NodePort, for `NodePort` and `LoadBalancer` services.
    pub node_port: Option<u16>,
    /// `spec.externalIPs`.
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip`.
    pub load_balancer_ips: Vec<IpAddr>,
    /// `spec.loadBalancerSourceRanges` (empty: any source).
    pub load_balancer_source_ranges: Vec<IpNet>,
    /// `sessionAffinity: ClientIP` with its timeout; `None` without affinity.
    pub affinity_timeout: Option<Duration>,
    /// `externalTrafficPolicy: Local`.
    pub external_policy_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_policy_local: bool,
    /// `healthCheckNodePort` (for `externalTrafficPolicy: Local` load balancers).
    pub health_check_node_port: Option<u16>,
    /// Every endpoint, whatever its conditions.
    pub endpoints: Vec<Endpoint>,
}

impl ServicePort {
    /// The endpoints that traffic from `source` may use on node `node`, as kube-proxy chooses
    /// them: restricted to local endpoints when the matching traffic policy is `Local`; the ready
    /// ones, or when none is ready, the ones that are serving and terminating.
    /// An empty answer means the traffic is to be rejected.
    pub fn usable_endpoints(&self, source: TrafficSource, node: &str) -> Vec<&Endpoint> {
        let local_only = match source {
            TrafficSource::Internal => self.internal_policy_local,
            TrafficSource::External => self.external_policy_local,
        };
        let candidates = self
            .endpoints
            .iter()
            .filter(|e| !local_only || e.is_local(node));
        let ready: Vec<&Endpoint> = candidates.clone().filter(|e| e.ready).collect();
        if !ready.is_empty() {
            return ready;
        }
        candidates.filter(|e| e.serving && e.terminating).collect()
    }

    /// Every address this port answers on besides the node's: ClusterIPs, externalIPs and
    /// load-balancer IPs.
    pub fn service_ips(&self) -> impl Iterator<Item = (IpAddr, TrafficSource)> + '_ {
        self.cluster_ips
            .iter()
            .map(|ip| (*ip, TrafficSource::Internal))
            .chain(
                self.external_ips
                    .iter()
                    .map(|ip| (*ip, TrafficSource::External)),
            )
            .chain(
                self.load_balancer_ips
                    .iter()
                    .map(|ip| (*ip, TrafficSource::External)),
            )
    }
}

/// Facts about the node a router programs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NodeInfo {
    /// The node's name (to tell local endpoints).
    pub name: String,
    /// The addresses NodePorts answer on (empty: every local address).
    pub node_port_addresses: Vec<IpAddr>,
    /// The cluster's pod CIDRs: traffic to a service from outside them is masqueraded.
    pub cluster_cidrs: Vec<IpNet>,
    /// Masquerade all traffic to services, not only traffic from outside the cluster CIDRs.
    pub masquerade_all: bool,
}

/// The full desired state of the service proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ProxyState {
    /// Every service port to program.
    pub services: BTreeMap<ServicePortName, ServicePort>,
    /// The node.
    pub node: NodeInfo,
}

/// What a [`ServiceRouter::sync`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SyncReport {
    /// Whether the whole ruleset was rewritten (first sync, or after an error), rather than a diff.
    pub full: bool,
    /// Service ports in the desired state.
    pub service_ports: usize,
    /// Endpoints programmed.
    pub endpoints: usize,
    /// Kernel objects (rules, set or map elements, chains) added, changed or removed.
    pub changes: usize,
    /// Service ports that could not be programmed (with the reason); the others were.
    pub skipped: Vec<(ServicePortName, String)>,
    /// How long the sync took.
    pub duration: Duration,
}

/// An error of a [`ServiceRouter`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RouterError {
    /// A netlink request to the kernel failed.
    #[error("netlink {op}: {source}")]
    Netlink {
        /// What was being done.
        op: String,
        /// The kernel's answer.
        #[source]
        source: std::io::Error,
    },
    /// An external command (`iptables-restore`, `conntrack`) failed.
    #[error("{command} failed ({status}): {stderr}")]
    Command {
        /// The command.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// The kernel lacks a feature this router needs (IPVS, an nftables expression...).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// Any other failure.
    #[error("{0}")]
    Other(String),
}

/// Makes the kernel match the desired proxy state: nftables, iptables, IPVS, or an integrator's
/// own. Full state in, minimal change out.
///
/// # Example: a wrapper that logs and delegates
///
/// ```
/// use std::sync::Arc;
/// use async_trait::async_trait;
/// use node_core::{ProxyState, RouterError, ServiceRouter, SyncReport};
///
/// struct Logged(Arc<dyn ServiceRouter>);
///
/// #[async_trait]
/// impl ServiceRouter for Logged {
///     fn name(&self) -> &str { self.0.name() }
///     async fn sync(&self, desired: &ProxyState) -> Result<SyncReport, RouterError> {
///         let report = self.0.sync(desired).await?;
///         eprintln!("{}: {} changes in {:?}", self.name(), report.changes, report.duration);
///         Ok(report)
///     }
///     async fn cleanup(&self) -> Result<(), RouterError> { self.0.cleanup().await }
/// }
/// ```
#[async_trait]
pub trait ServiceRouter: Send + Sync {
    /// The router's name (`nftables`, `iptables`, `ipvs`...).
    fn name(&self) -> &str;
    /// Make the kernel match `desired`. Invalid service ports are reported in
    /// [`SyncReport::skipped`] and do not stop the others.
    async fn sync(&self, desired: &ProxyState) -> Result<SyncReport, RouterError>;
    /// Remove everything this router programmed.
    async fn cleanup(&self) -> Result<(), RouterError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(ip: &str, node: &str, ready: bool, serving: bool, terminating: bool) -> Endpoint {
        Endpoint {
            ip: ip.parse().unwrap(),
            port: 80,
            ready,
            serving,
            terminating,
            node_name: Some(node.into()),
            zone: None,
        }
    }

    #[test]
    fn ready_endpoints_win_over_terminating() {
        let sp = ServicePort {
            endpoints: vec![
                ep("10.0.0.1", "a", true, true, false),
                ep("10.0.0.2", "b", false, true, true),
            ],
            ..Default::default()
        };
        let got = sp.usable_endpoints(TrafficSource::Internal, "a");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].ip.to_string(), "10.0.0.1");
    }

    #[test]
    fn terminating_serving_endpoints_are_the_fallback() {
        let sp = ServicePort {
            endpoints: vec![
                ep("10.0.0.1", "a", false, false, true),
                ep("10.0.0.2", "b", false, true, true),
            ],
            ..Default::default()
        };
        let got = sp.usable_endpoints(TrafficSource::Internal, "a");
        assert_eq!(
            got.iter().map(|e| e.ip.to_string()).collect::<Vec<_>>(),
            ["10.0.0.2"]
        );
    }

    #[test]
    fn local_policies_restrict_to_this_node() {
        let sp = ServicePort {
            external_policy_local: true,
            endpoints: vec![
                ep("10.0.0.1", "a", true, true, false),
                ep("10.0.0.2", "b", true, true, false),
            ],
            ..Default::default()
        };
        assert_eq!(sp.usable_endpoints(TrafficSource::External, "b").len(), 1);
        assert_eq!(sp.usable_endpoints(TrafficSource::Internal, "b").len(), 2);
        assert!(sp.usable_endpoints(TrafficSource::External, "c").is_empty());
    }

    #[test]
    fn names_and_protocols_print_as_kubernetes_does() {
        assert_eq!(
            ServicePortName::new("default", "web", "http").to_string(),
            "default/web:http"
        );
        assert_eq!(
            ServicePortName::new("default", "web", "").to_string(),
            "default/web"
        );
        assert_eq!("UDP".parse::<Protocol>().unwrap(), Protocol::Udp);
        assert!("ICMP".parse::<Protocol>().is_err());
        assert_eq!(serde_json::to_string(&Protocol::Sctp).unwrap(), "\"SCTP\"");
    }
}
