//! Pod networking, shaped like the CNI specification (1.0/1.1): a [`CniPlugin`] adds, deletes,
//! checks and garbage-collects [`Attachment`]s and answers with a [`CniResult`]. Serde names are
//! the spec's JSON names, so results and capability args read and write unchanged.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::pod::PodRef;

/// One port mapping capability argument (`portMappings` in `runtimeConfig`), from a container's
/// `hostPort`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    /// The port on the node.
    pub host_port: u16,
    /// The port in the pod.
    pub container_port: u16,
    /// `tcp`, `udp` or `sctp` (lowercase, as the portmap plugin expects).
    pub protocol: String,
    /// The node address to listen on (empty or absent: every address).
    #[serde(default, rename = "hostIP", skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
}

/// The `bandwidth` capability argument, in bits per second and bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Bandwidth {
    /// Ingress rate, bits per second.
    #[serde(default)]
    pub ingress_rate: u64,
    /// Ingress burst, bits.
    #[serde(default)]
    pub ingress_burst: u64,
    /// Egress rate, bits per second.
    #[serde(default)]
    pub egress_rate: u64,
    /// Egress burst, bits.
    #[serde(default)]
    pub egress_burst: u64,
}

/// Capability arguments the runtime passes in `runtimeConfig`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct CapabilityArgs {
    /// `portMappings`: host ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_mappings: Vec<PortMapping>,
    /// `bandwidth`: traffic shaping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<Bandwidth>,
    /// `ips`: static addresses requested for the pod.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpNet>,
    /// `mac`: a static MAC address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// One network attachment of one pod sandbox: what CNI calls the container ID, network namespace
/// and interface name, plus the pod's identity and capability args.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Attachment {
    /// The sandbox (container) id: `CNI_CONTAINERID`.
    pub container_id: String,
    /// The path of the pod's network namespace: `CNI_NETNS`.
    pub netns: PathBuf,
    /// The interface to create in the pod: `CNI_IFNAME` (`eth0`).
    pub ifname: String,
    /// The pod, passed as `K8S_POD_NAMESPACE`, `K8S_POD_NAME`, `K8S_POD_UID` in `CNI_ARGS`.
    pub pod: PodRef,
    /// Capability args (`runtimeConfig`).
    pub capabilities: CapabilityArgs,
}

impl Attachment {
    /// The key of this attachment (container id and interface), as GC knows it.
    pub fn key(&self) -> AttachmentKey {
        AttachmentKey {
            container_id: self.container_id.clone(),
            ifname: self.ifname.clone(),
        }
    }
}

/// The identity of an attachment for GC: the spec's `cni.dev/valid-attachments` entries.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AttachmentKey {
    /// The container id.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// The interface name.
    pub ifname: String,
}

/// An interface in a CNI result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Interface {
    /// The interface name.
    pub name: String,
    /// Its MAC address.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// Its MTU, when the plugin reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The netns path for interfaces inside the pod; empty for host-side interfaces.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
}

/// An address in a CNI result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// The address with its prefix (`10.22.0.5/24`).
    pub address: IpNet,
    /// The gateway, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// The index into [`CniResult::interfaces`] of the interface that holds the address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// A route in a CNI result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// The destination.
    pub dst: IpNet,
    /// The next hop (absent: the interface's gateway or on-link).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

/// DNS settings in a CNI result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Dns {
    /// Name servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// The local domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// Resolver options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// The result of an ADD, as the spec's JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct CniResult {
    /// The result's version (`1.0.0`, `1.1.0`).
    pub cni_version: String,
    /// Interfaces created.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    /// Addresses assigned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    /// Routes added.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// DNS settings.
    #[serde(default, skip_serializing_if = "is_default_dns")]
    pub dns: Dns,
}

fn is_default_dns(d: &Dns) -> bool {
    *d == Dns::default()
}

impl CniResult {
    /// The first address of each IP family assigned to the pod (its pod IPs).
    pub fn pod_ips(&self) -> Vec<IpAddr> {
        let v4 = self
            .ips
            .iter()
            .map(|c| c.address.addr())
            .find(IpAddr::is_ipv4);
        let v6 = self
            .ips
            .iter()
            .map(|c| c.address.addr())
            .find(IpAddr::is_ipv6);
        v4.into_iter().chain(v6).collect()
    }
}

/// An error of a [`CniPlugin`]. [`CniError::code`] gives the spec's error code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CniError {
    /// A plugin answered with an error: its own code, message and details.
    #[error("plugin {plugin} failed with code {code}: {msg}{}", if details.is_empty() { String::new() } else { format!(" ({details})") })]
    Plugin {
        /// The plugin type.
        plugin: String,
        /// The spec error code the plugin gave.
        code: u32,
        /// The plugin's message.
        msg: String,
        /// The plugin's details.
        details: String,
    },
    /// A network configuration is invalid.
    #[error("{origin}: invalid network configuration: {message}")]
    Config {
        /// The file (or plugin) it came from.
        origin: String,
        /// What is wrong.
        message: String,
    },
    /// A plugin binary is not in any of the plugin directories.
    #[error("plugin {plugin:?} not found in {dirs:?}")]
    PluginNotFound {
        /// The plugin type.
        plugin: String,
        /// The directories searched.
        dirs: Vec<PathBuf>,
    },
    /// The attachment's network namespace is unusable.
    #[error("attachment {container_id}: netns {path}: {message}")]
    Netns {
        /// The attachment's container id.
        container_id: String,
        /// The namespace path.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The IP range has no free address.
    #[error("no free address in range {range}")]
    IpamExhausted {
        /// The range.
        range: String,
    },
    /// A plugin did not answer in time.
    #[error("plugin {plugin} timed out after {after:?}")]
    Timeout {
        /// The plugin type.
        plugin: String,
        /// The timeout.
        after: Duration,
    },
    /// An I/O error with the path it concerns.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel refused a netlink request.
    #[error("{op}: {message}")]
    Netlink {
        /// What was being done.
        op: String,
        /// The kernel's answer.
        message: String,
    },
    /// Any other failure.
    #[error("{0}")]
    Other(String),
}

impl CniError {
    /// The CNI spec error code: 1 incompatible version, 3 container unknown, 4 invalid
    /// environment, 5 I/O failure, 6 decode failure, 7 invalid network config, 11 try again
    /// later; 100+ are plugin-specific.
    pub fn code(&self) -> u32 {
        match self {
            CniError::Plugin { code, .. } => *code,
            CniError::Config { .. } => 7,
            CniError::PluginNotFound { .. } => 7,
            CniError::Netns { .. } => 3,
            CniError::Io { .. } => 5,
            CniError::IpamExhausted { .. } | CniError::Timeout { .. } => 11,
            CniError::Netlink { .. } | CniError::Other(_) => 999,
        }
    }
}

/// Pod networking: add, delete, check and garbage-collect attachments (CNI ADD, DEL, CHECK,
/// STATUS and GC).
///
/// `del` must succeed for attachments that are already gone, and `add` must leave nothing behind
/// when it fails.
///
/// # Example: a plugin that only hands out loopback
///
/// ```
/// use async_trait::async_trait;
/// use node_core::{Attachment, AttachmentKey, CniError, CniPlugin, CniResult};
///
/// struct LoopbackOnly;
///
/// #[async_trait]
/// impl CniPlugin for LoopbackOnly {
///     async fn add(&self, _a: &Attachment) -> Result<CniResult, CniError> {
///         Ok(CniResult { cni_version: "1.1.0".into(), ..Default::default() })
///     }
///     async fn del(&self, _a: &Attachment) -> Result<(), CniError> { Ok(()) }
///     async fn check(&self, _a: &Attachment) -> Result<(), CniError> { Ok(()) }
///     async fn status(&self) -> Result<(), CniError> { Ok(()) }
///     async fn gc(&self, _keep: &[AttachmentKey]) -> Result<(), CniError> { Ok(()) }
/// }
/// ```
#[async_trait]
pub trait CniPlugin: Send + Sync {
    /// Attach the pod to the network; on error nothing is left behind.
    async fn add(&self, attachment: &Attachment) -> Result<CniResult, CniError>;
    /// Detach the pod; succeeds when the attachment is already gone.
    async fn del(&self, attachment: &Attachment) -> Result<(), CniError>;
    /// Verify the attachment is as ADD left it.
    async fn check(&self, attachment: &Attachment) -> Result<(), CniError>;
    /// Whether the plugin is ready to ADD (CNI 1.1 STATUS).
    async fn status(&self) -> Result<(), CniError>;
    /// Release everything held for attachments not in `keep` (CNI 1.1 GC).
    async fn gc(&self, keep: &[AttachmentKey]) -> Result<(), CniError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_json_round_trips_in_spec_form() {
        let json = r#"{
          "cniVersion": "1.0.0",
          "interfaces": [{"name": "cni0", "mac": "00:11:22:33:44:55"},
                         {"name": "eth0", "mac": "00:11:22:33:44:66", "sandbox": "/var/run/netns/p1"}],
          "ips": [{"address": "10.22.0.5/24", "gateway": "10.22.0.1", "interface": 1},
                  {"address": "fd00::5/64", "interface": 1}],
          "routes": [{"dst": "0.0.0.0/0"}],
          "dns": {"nameservers": ["10.96.0.10"]}
        }"#;
        let r: CniResult = serde_json::from_str(json).unwrap();
        assert_eq!(
            r.pod_ips()
                .iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>(),
            ["10.22.0.5", "fd00::5"]
        );
        let again: CniResult = serde_json::from_value(serde_json::to_value(&r).unwrap()).unwrap();
        assert_eq!(r, again);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["ips"][0]["gateway"], "10.22.0.1");
    }

    #[test]
    fn capability_args_use_spec_names() {
        let caps = CapabilityArgs {
            port_mappings: vec![PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: "tcp".into(),
                host_ip: None,
            }],
            ..Default::default()
        };
        let v = serde_json::to_value(&caps).unwrap();
        assert_eq!(v["portMappings"][0]["hostPort"], 8080);
        assert_eq!(v["portMappings"][0]["containerPort"], 80);
        assert!(v.get("bandwidth").is_none());
    }

    #[test]
    fn errors_carry_spec_codes() {
        let e = CniError::Plugin {
            plugin: "bridge".into(),
            code: 7,
            msg: "bad".into(),
            details: String::new(),
        };
        assert_eq!(e.code(), 7);
        assert_eq!(e.to_string(), "plugin bridge failed with code 7: bad");
        assert_eq!(
            CniError::IpamExhausted {
                range: "10.0.0.0/30".into()
            }
            .code(),
            11
        );
    }
}
