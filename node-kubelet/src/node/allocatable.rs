//! Node capacity (from procfs and statfs), allocatable (capacity minus kube-reserved,
//! system-reserved and the hard eviction thresholds) and pod admission against allocatable, with
//! kubelet's rejection reasons (`OutOfcpu`, `OutOfmemory`, `OutOfpods`, `NodePorts`...).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde::{Deserialize, Serialize};

use super::eviction::{Signal, Threshold, default_hard_thresholds};
use super::qos::{ResourceError, pod_resources};
use super::quantity::{format_bytes, format_milli};

/// The four node resources kubelet accounts for admission.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeResources {
    /// CPU in millicores.
    pub cpu_milli: i64,
    /// Memory in bytes.
    pub memory_bytes: i64,
    /// Ephemeral storage (the kubelet root dir's filesystem) in bytes.
    pub ephemeral_storage_bytes: i64,
    /// How many pods.
    pub pods: i64,
}

impl NodeResources {
    /// As the `capacity` / `allocatable` map of a Node status.
    pub fn to_resource_list(&self) -> BTreeMap<String, Quantity> {
        BTreeMap::from([
            ("cpu".to_string(), Quantity(format_milli(self.cpu_milli))),
            (
                "memory".to_string(),
                Quantity(format_bytes(self.memory_bytes)),
            ),
            (
                "ephemeral-storage".to_string(),
                Quantity(self.ephemeral_storage_bytes.to_string()),
            ),
            ("pods".to_string(), Quantity(self.pods.to_string())),
        ])
    }
}

/// Reserved resources (kubelet's `kubeReserved` / `systemReserved`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reserved {
    /// CPU in millicores.
    pub cpu_milli: i64,
    /// Memory in bytes.
    pub memory_bytes: i64,
    /// Ephemeral storage in bytes.
    pub ephemeral_storage_bytes: i64,
}

/// How capacity and allocatable are computed.
#[derive(Debug, Clone, PartialEq)]
pub struct AllocatableConfig {
    /// The kubelet root dir; its filesystem is the node's ephemeral storage (`/var/lib/kubelet`).
    pub root_dir: PathBuf,
    /// The most pods on the node (`maxPods`, 110).
    pub max_pods: i64,
    /// Reserved for the kubelet and the runtime.
    pub kube_reserved: Reserved,
    /// Reserved for the operating system.
    pub system_reserved: Reserved,
    /// The hard eviction thresholds (`memory.available` and `nodefs.available` are subtracted).
    pub hard_eviction: Vec<Threshold>,
}

impl Default for AllocatableConfig {
    fn default() -> Self {
        Self {
            root_dir: "/var/lib/kubelet".into(),
            max_pods: 110,
            kube_reserved: Reserved::default(),
            system_reserved: Reserved::default(),
            hard_eviction: default_hard_thresholds(),
        }
    }
}

/// Reading the node's capacity failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CapacityError {
    /// `/proc/meminfo` could not be read or lacks `MemTotal`.
    #[error("{path}: {reason}")]
    Procfs {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// statfs of the root dir failed.
    #[error("statfs {path}: {source}")]
    Statfs {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Reads `MemTotal` (bytes) from a meminfo file.
pub fn mem_total(meminfo: &Path) -> Result<i64, CapacityError> {
    let text = std::fs::read_to_string(meminfo).map_err(|e| CapacityError::Procfs {
        path: meminfo.into(),
        reason: e.to_string(),
    })?;
    meminfo_field(&text, "MemTotal").ok_or_else(|| CapacityError::Procfs {
        path: meminfo.into(),
        reason: "no MemTotal line".into(),
    })
}

/// A field of /proc/meminfo in bytes (`MemAvailable: 1024 kB` -> 1048576).
pub fn meminfo_field(text: &str, field: &str) -> Option<i64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        if k.trim() != field {
            return None;
        }
        let mut it = v.split_whitespace();
        let n: i64 = it.next()?.parse().ok()?;
        Some(match it.next() {
            Some("kB") => n * 1024,
            _ => n,
        })
    })
}

/// Size and free space of a filesystem, from statfs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsStats {
    /// Capacity in bytes.
    pub capacity_bytes: i64,
    /// Bytes available to unprivileged users.
    pub available_bytes: i64,
    /// Free bytes, the root-reserved blocks included (capacity minus free is what the
    /// filesystem uses, as `df` and cAdvisor count it).
    #[serde(default)]
    pub free_bytes: i64,
    /// Total inodes.
    pub inodes: i64,
    /// Free inodes.
    pub inodes_free: i64,
}

/// statfs of the filesystem holding `path`.
pub fn fs_stats(path: &Path) -> Result<FsStats, CapacityError> {
    let s = nix::sys::statvfs::statvfs(path).map_err(|e| CapacityError::Statfs {
        path: path.into(),
        source: std::io::Error::from_raw_os_error(e as i32),
    })?;
    let frag = s.fragment_size() as i64;
    Ok(FsStats {
        capacity_bytes: s.blocks() as i64 * frag,
        available_bytes: s.blocks_available() as i64 * frag,
        free_bytes: s.blocks_free() as i64 * frag,
        inodes: s.files() as i64,
        inodes_free: s.files_free() as i64,
    })
}

/// The number of online CPUs.
pub fn online_cpus() -> i64 {
    std::thread::available_parallelism()
        .map(|n| n.get() as i64)
        .unwrap_or(1)
        .max(
            // SAFETY: sysconf has no preconditions.
            unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) } as i64,
        )
}

/// The node's capacity: online CPUs, MemTotal, the root dir's filesystem size, max pods. The
/// root dir is created if missing so that its filesystem can be measured.
pub fn node_capacity(config: &AllocatableConfig) -> Result<NodeResources, CapacityError> {
    let _ = std::fs::create_dir_all(&config.root_dir);
    Ok(NodeResources {
        cpu_milli: online_cpus() * 1000,
        memory_bytes: mem_total(Path::new("/proc/meminfo"))?,
        ephemeral_storage_bytes: fs_stats(&config.root_dir)?.capacity_bytes,
        pods: config.max_pods,
    })
}

/// allocatable = capacity - kube-reserved - system-reserved - hard eviction threshold (memory for
/// `memory.available`, ephemeral storage for `nodefs.available`), never below zero.
pub fn node_allocatable(capacity: &NodeResources, config: &AllocatableConfig) -> NodeResources {
    let threshold = |signal, cap| {
        config
            .hard_eviction
            .iter()
            .find(|t| t.signal == signal && t.is_hard())
            .map(|t| t.value.amount(cap))
            .unwrap_or(0)
    };
    let (k, s) = (&config.kube_reserved, &config.system_reserved);
    NodeResources {
        cpu_milli: (capacity.cpu_milli - k.cpu_milli - s.cpu_milli).max(0),
        memory_bytes: (capacity.memory_bytes
            - k.memory_bytes
            - s.memory_bytes
            - threshold(Signal::MemoryAvailable, capacity.memory_bytes))
        .max(0),
        ephemeral_storage_bytes: (capacity.ephemeral_storage_bytes
            - k.ephemeral_storage_bytes
            - s.ephemeral_storage_bytes
            - threshold(Signal::NodeFsAvailable, capacity.ephemeral_storage_bytes))
        .max(0),
        pods: capacity.pods,
    }
}

/// Why a pod was not admitted, with kubelet's `reason` and `message` for the pod's status
/// (phase Failed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct AdmitRejection {
    /// `OutOfcpu`, `OutOfmemory`, `OutOfephemeral-storage`, `OutOfpods`, `NodePorts`, or
    /// `InvalidResources` for a spec whose quantities cannot be read.
    pub reason: String,
    /// kubelet's message text.
    pub message: String,
}

impl AdmitRejection {
    fn insufficient(resource: &str, requested: i64, used: i64, capacity: i64) -> Self {
        Self {
            reason: format!("OutOf{resource}"),
            message: format!(
                "Node didn't have enough resource: {resource}, requested: {requested}, used: {used}, capacity: {capacity}"
            ),
        }
    }
}

/// A host port a pod binds: protocol, host IP (unspecified = all) and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostPort {
    /// `TCP`, `UDP` or `SCTP` as index 0, 1, 2 for ordering.
    pub protocol: &'static str,
    /// The host IP; `None` = every address.
    pub ip: Option<IpAddr>,
    /// The port.
    pub port: i32,
}

/// The host ports of a pod (hostNetwork pods bind their container ports on the host).
pub fn host_ports(pod: &Pod) -> Vec<HostPort> {
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    let host_network = spec.host_network == Some(true);
    let mut out = Vec::new();
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        for p in c.ports.iter().flatten() {
            let port = match p.host_port {
                Some(hp) if hp > 0 => hp,
                _ if host_network => p.container_port,
                _ => continue,
            };
            let protocol = match p.protocol.as_deref() {
                Some("UDP") => "UDP",
                Some("SCTP") => "SCTP",
                _ => "TCP",
            };
            let ip = p
                .host_ip
                .as_deref()
                .and_then(|s| s.parse::<IpAddr>().ok())
                .filter(|ip| !ip.is_unspecified());
            out.push(HostPort { protocol, ip, port });
        }
    }
    out
}

fn conflicts(a: &HostPort, b: &HostPort) -> bool {
    a.protocol == b.protocol
        && a.port == b.port
        && (a.ip.is_none() || b.ip.is_none() || a.ip == b.ip)
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded") | Some("Failed")
    )
}

/// Admits `pod` if it fits in `allocatable` beside the `admitted` pods (terminal pods do not
/// count): pods count, CPU, memory, ephemeral storage (requests, with overhead), then host ports.
/// The first failing check is returned, as kubelet reports only the first reason.
pub fn admit(
    allocatable: &NodeResources,
    admitted: &[Pod],
    pod: &Pod,
) -> Result<(), AdmitRejection> {
    let invalid = |e: ResourceError| AdmitRejection {
        reason: "InvalidResources".into(),
        message: e.to_string(),
    };
    let active: Vec<&Pod> = admitted.iter().filter(|p| !is_terminal(p)).collect();
    if active.len() as i64 + 1 > allocatable.pods {
        return Err(AdmitRejection::insufficient(
            "pods",
            1,
            active.len() as i64,
            allocatable.pods,
        ));
    }
    let want = pod_resources(pod).map_err(invalid)?.requests;
    let want_storage = ephemeral_request(pod).map_err(invalid)?;
    let (mut cpu, mut mem, mut storage) = (0, 0, 0);
    for p in &active {
        // a pod admitted earlier cannot fail here unless its spec changed; count it as zero then
        if let Ok(r) = pod_resources(p) {
            cpu += r.requests.cpu_milli;
            mem += r.requests.memory_bytes;
        }
        storage += ephemeral_request(p).unwrap_or(0);
    }
    if want.cpu_milli > 0 && cpu + want.cpu_milli > allocatable.cpu_milli {
        return Err(AdmitRejection::insufficient(
            "cpu",
            want.cpu_milli,
            cpu,
            allocatable.cpu_milli,
        ));
    }
    if want.memory_bytes > 0 && mem + want.memory_bytes > allocatable.memory_bytes {
        return Err(AdmitRejection::insufficient(
            "memory",
            want.memory_bytes,
            mem,
            allocatable.memory_bytes,
        ));
    }
    if want_storage > 0 && storage + want_storage > allocatable.ephemeral_storage_bytes {
        return Err(AdmitRejection::insufficient(
            "ephemeral-storage",
            want_storage,
            storage,
            allocatable.ephemeral_storage_bytes,
        ));
    }
    let wanted = host_ports(pod);
    // the pod's own ports may not collide with each other either
    let used: Vec<HostPort> = active.iter().flat_map(|p| host_ports(p)).collect();
    let mut seen = BTreeSet::new();
    for hp in &wanted {
        if used.iter().any(|u| conflicts(u, hp)) || !seen.insert(*hp) {
            return Err(AdmitRejection {
                reason: "NodePorts".into(),
                message: "Predicate NodePorts failed: node(s) didn't have free ports for the requested pod ports".into(),
            });
        }
    }
    Ok(())
}

/// The pod's ephemeral-storage request: sum of containers, max with init containers.
fn ephemeral_request(pod: &Pod) -> Result<i64, ResourceError> {
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(0);
    };
    let get = |c: &k8s_openapi::api::core::v1::Container, field: String| {
        let r = c.resources.as_ref();
        let q = r
            .and_then(|r| r.requests.as_ref())
            .and_then(|m| m.get("ephemeral-storage"))
            .or_else(|| {
                r.and_then(|r| r.limits.as_ref())
                    .and_then(|m| m.get("ephemeral-storage"))
            });
        match q {
            None => Ok(0),
            Some(q) => super::quantity::quantity_value(q).map_err(|source| ResourceError {
                field: format!("{field}.ephemeral-storage"),
                source,
            }),
        }
    };
    let mut sum = 0;
    for (i, c) in spec.containers.iter().enumerate() {
        sum += get(c, format!("spec.containers[{i}].resources.requests"))?;
    }
    let mut init = 0;
    for (i, c) in spec.init_containers.iter().flatten().enumerate() {
        init = init.max(get(
            c,
            format!("spec.initContainers[{i}].resources.requests"),
        )?);
    }
    Ok(sum.max(init))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::eviction::parse_thresholds;

    fn pod(name: &str, containers: &str) -> Pod {
        serde_saphyr::from_str(&format!(
            "metadata: {{name: {name}, uid: {name}}}\nspec:\n  containers:\n{containers}"
        ))
        .unwrap()
    }

    fn req(name: &str, cpu: &str, mem: &str) -> Pod {
        pod(
            name,
            &format!(
                "  - {{name: c, image: i, resources: {{requests: {{cpu: {cpu}, memory: {mem}}}}}}}\n"
            ),
        )
    }

    const GI: i64 = 1 << 30;

    fn node() -> NodeResources {
        NodeResources {
            cpu_milli: 2000,
            memory_bytes: 4 * GI,
            ephemeral_storage_bytes: 100 * GI,
            pods: 3,
        }
    }

    #[test]
    fn allocatable_subtracts_reservations_and_hard_thresholds() {
        let cfg = AllocatableConfig {
            kube_reserved: Reserved {
                cpu_milli: 100,
                memory_bytes: 256 << 20,
                ephemeral_storage_bytes: GI,
            },
            system_reserved: Reserved {
                cpu_milli: 200,
                memory_bytes: 256 << 20,
                ephemeral_storage_bytes: 0,
            },
            hard_eviction: parse_thresholds("memory.available<100Mi,nodefs.available<10%").unwrap(),
            ..Default::default()
        };
        let a = node_allocatable(&node(), &cfg);
        assert_eq!(a.cpu_milli, 1700);
        assert_eq!(a.memory_bytes, 4 * GI - (512 << 20) - (100 << 20));
        assert_eq!(a.ephemeral_storage_bytes, 100 * GI - GI - 10 * GI);
        assert_eq!(a.pods, 3);
        // reservations larger than capacity floor at zero
        let huge = AllocatableConfig {
            kube_reserved: Reserved {
                cpu_milli: 10_000,
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(node_allocatable(&node(), &huge).cpu_milli, 0);
    }

    #[test]
    fn capacity_is_read_from_this_machine() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = AllocatableConfig {
            root_dir: dir.path().into(),
            ..Default::default()
        };
        let c = node_capacity(&cfg).unwrap();
        assert!(c.cpu_milli >= 1000 && c.cpu_milli % 1000 == 0, "{c:?}");
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
        assert_eq!(Some(c.memory_bytes), meminfo_field(&meminfo, "MemTotal"));
        assert!(c.ephemeral_storage_bytes > 0);
        assert_eq!(c.pods, 110);
        let list = c.to_resource_list();
        assert_eq!(list["pods"].0, "110");
        assert_eq!(list["cpu"].0, (c.cpu_milli / 1000).to_string());
    }

    #[test]
    fn meminfo_fields_in_bytes() {
        let text =
            "MemTotal:        8000000 kB\nMemAvailable:    1000 kB\nHugePages_Total:       0\n";
        assert_eq!(meminfo_field(text, "MemTotal"), Some(8_000_000 * 1024));
        assert_eq!(meminfo_field(text, "MemAvailable"), Some(1_024_000));
        assert_eq!(meminfo_field(text, "HugePages_Total"), Some(0));
        assert_eq!(meminfo_field(text, "Nope"), None);
    }

    #[test]
    fn admission_table() {
        let a = req("a", "1", "1Gi");
        type Case = (
            &'static str,
            Vec<Pod>,
            Pod,
            Option<(&'static str, &'static str)>,
        );
        let cases: Vec<Case> = vec![
            ("fits", vec![a.clone()], req("b", "500m", "1Gi"), None),
            (
                "cpu",
                vec![a.clone()],
                req("b", "1500m", "1Gi"),
                Some((
                    "OutOfcpu",
                    "Node didn't have enough resource: cpu, requested: 1500, used: 1000, capacity: 2000",
                )),
            ),
            (
                "memory",
                vec![a.clone()],
                req("b", "100m", "3584Mi"),
                Some((
                    "OutOfmemory",
                    "Node didn't have enough resource: memory, requested: 3758096384, used: 1073741824, capacity: 4294967296",
                )),
            ),
            (
                "pods",
                vec![a.clone(), req("b", "0", "0"), req("c", "0", "0")],
                req("d", "0", "0"),
                Some((
                    "OutOfpods",
                    "Node didn't have enough resource: pods, requested: 1, used: 3, capacity: 3",
                )),
            ),
            (
                "besteffort always fits resources",
                vec![req("a", "2", "4Gi")],
                pod("b", "  - {name: c, image: i}\n"),
                None,
            ),
            (
                "host port taken",
                vec![pod(
                    "a",
                    "  - {name: c, image: i, ports: [{containerPort: 80, hostPort: 8080}]}\n",
                )],
                pod(
                    "b",
                    "  - {name: c, image: i, ports: [{containerPort: 81, hostPort: 8080}]}\n",
                ),
                Some((
                    "NodePorts",
                    "Predicate NodePorts failed: node(s) didn't have free ports for the requested pod ports",
                )),
            ),
            (
                "same port, other protocol",
                vec![pod(
                    "a",
                    "  - {name: c, image: i, ports: [{containerPort: 53, hostPort: 53}]}\n",
                )],
                pod(
                    "b",
                    "  - {name: c, image: i, ports: [{containerPort: 53, hostPort: 53, protocol: UDP}]}\n",
                ),
                None,
            ),
            (
                "same port, distinct host IPs",
                vec![pod(
                    "a",
                    "  - {name: c, image: i, ports: [{containerPort: 80, hostPort: 80, hostIP: 10.0.0.1}]}\n",
                )],
                pod(
                    "b",
                    "  - {name: c, image: i, ports: [{containerPort: 80, hostPort: 80, hostIP: 10.0.0.2}]}\n",
                ),
                None,
            ),
            (
                "wildcard host IP conflicts with a specific one",
                vec![pod(
                    "a",
                    "  - {name: c, image: i, ports: [{containerPort: 80, hostPort: 80, hostIP: 10.0.0.1}]}\n",
                )],
                pod(
                    "b",
                    "  - {name: c, image: i, ports: [{containerPort: 80, hostPort: 80}]}\n",
                ),
                Some((
                    "NodePorts",
                    "Predicate NodePorts failed: node(s) didn't have free ports for the requested pod ports",
                )),
            ),
        ];
        for (what, admitted, p, want) in cases {
            let got = admit(&node(), &admitted, &p);
            match want {
                None => assert_eq!(got, Ok(()), "{what}"),
                Some((reason, message)) => {
                    let e = got.expect_err(what);
                    assert_eq!(e.reason, reason, "{what}");
                    assert_eq!(e.message, message, "{what}");
                }
            }
        }
    }

    #[test]
    fn terminal_pods_free_their_resources() {
        let mut done = req("a", "2", "1Gi");
        done.status = Some(k8s_openapi::api::core::v1::PodStatus {
            phase: Some("Succeeded".into()),
            ..Default::default()
        });
        assert_eq!(admit(&node(), &[done], &req("b", "2", "1Gi")), Ok(()));
    }

    #[test]
    fn host_network_pods_bind_container_ports() {
        let p: Pod = serde_saphyr::from_str(
            "metadata: {name: h}\nspec:\n  hostNetwork: true\n  containers:\n  - {name: c, image: i, ports: [{containerPort: 9100}]}\n",
        )
        .unwrap();
        assert_eq!(
            host_ports(&p),
            vec![HostPort {
                protocol: "TCP",
                ip: None,
                port: 9100
            }]
        );
    }

    #[test]
    fn invalid_quantities_are_rejected_with_the_field() {
        let p = req("b", "lots", "1Gi");
        let e = admit(&node(), &[], &p).unwrap_err();
        assert_eq!(e.reason, "InvalidResources");
        assert!(
            e.message
                .contains("spec.containers[0].resources.requests.cpu"),
            "{}",
            e.message
        );
    }
}
