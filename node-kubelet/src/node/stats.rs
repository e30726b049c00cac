//! The node's and its pods' usage, as kubelet's stats provider gathers it for
//! `/stats/summary` (its `stats/v1alpha1` `Summary`) and `/metrics/resource`
//! ([`super::resource_metrics`]): what metrics-server, and so `kubectl top` and the
//! HorizontalPodAutoscaler, read, and what monitoring agents read for disk and network.
//!
//! - The node: [`NodeStatsSource`]; [`HostNodeStats`] reads the root cgroup's CPU time
//!   (`cpu.stat` on cgroup v2, `cpuacct.usage` on v1, else `/proc/stat`), `/proc/meminfo`
//!   (working set = `MemTotal - MemFree - Inactive(file)`, as cAdvisor measures the root), the
//!   host's interfaces (`/proc/net/dev`) and its task limit and count (`rlimit`).
//! - The pods: the runtime's CRI stats, as kubelet's CRI stats provider: the ready sandboxes,
//!   their running containers (`ListContainers`) with their `ListContainerStats` usage; a pod is
//!   listed once one of its containers has stats. The pod's usage is the runtime's
//!   `ListPodSandboxStats` when it implements it, else the sum of its containers.
//! - The filesystems (with [`StatsProvider::filesystems`]): the node's `fs` is the filesystem of
//!   the kubelet root dir (statfs, the eviction manager's nodefs), `runtime.imageFs` (and
//!   `containerFs`, the same filesystem) the runtime's `ImageFsInfo` usage on the filesystem it
//!   names (else the configured image filesystem, the eviction manager's imagefs, with the
//!   images' sizes as usage). Each pod's emptyDir volumes (`volume`: allocated bytes and inodes
//!   under the directory, as kubelet's du-based metrics; capacity from statfs of the volume's
//!   filesystem: the node's, or a memory-medium emptyDir's own tmpfs), each container's `logs`
//!   (its CRI log directory) and `rootfs` (the runtime's writable-layer usage when it reports
//!   one), and the pod's `ephemeral-storage`: its containers' rootfs and logs, its pod-level log
//!   files and its disk-backed emptyDirs, on the node's filesystem, as kubelet sums them.
//! - The pod's `network`: the runtime's `ListPodSandboxStats` network when it reports one, else
//!   the interfaces of the sandbox's network namespace (`/proc/<pid>/net/dev` of the sandbox
//!   process the runtime names in its verbose `PodSandboxStatus`), as cAdvisor reads them; none
//!   for a pod on the host's network.
//! - [`router`]: `GET /stats/summary` (JSON; `?only_cpu_and_memory=true` gives kubelet's
//!   `GetCPUAndMemoryStats` shape: CPU and memory (and the node's swap) only) and
//!   `GET /metrics/resource` (Prometheus text).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use k8s_openapi::jiff::Timestamp;
use node_core::{ImageBackend, RuntimeBackend, RuntimeError, cri};
use serde::{Serialize, Serializer};

use super::allocatable::{self, fs_stats, meminfo_field};
use super::manager::{NodeConfig, disk_usage};
use crate::labels;

/// Why the stats could not be gathered.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// A CRI call failed.
    #[error("runtime: {0}")]
    Runtime(#[from] RuntimeError),
    /// A node statistic could not be read.
    #[error("node stats: {path}: {reason}")]
    Node {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

fn rfc3339<S: Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
    // metav1.Time: RFC 3339 in whole seconds
    let whole = Timestamp::from_second(t.as_second()).unwrap_or(*t);
    s.serialize_str(&whole.to_string())
}

/// CPU usage (`stats/v1alpha1` `CPUStats`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CpuStats {
    /// When sampled.
    #[serde(serialize_with = "rfc3339")]
    pub time: Timestamp,
    /// CPU in use since the previous sample of the same provider, nanocores (none on the
    /// first sample, as kubelet's cache of the last usage gives).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_nano_cores: Option<u64>,
    /// Cumulative CPU time, core-nanoseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_core_nano_seconds: Option<u64>,
}

/// Memory usage (`stats/v1alpha1` `MemoryStats`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryStats {
    /// When sampled.
    #[serde(serialize_with = "rfc3339")]
    pub time: Timestamp,
    /// Memory available (the node's: capacity minus working set).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available_bytes: Option<u64>,
    /// Total memory in use, page cache included.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_bytes: Option<u64>,
    /// Memory in use minus inactive file pages: what eviction and `kubectl top` count.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_set_bytes: Option<u64>,
}

/// Swap usage (`stats/v1alpha1` `SwapStats`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SwapStats {
    /// When sampled.
    #[serde(serialize_with = "rfc3339")]
    pub time: Timestamp,
    /// Swap free.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swap_available_bytes: Option<u64>,
    /// Swap in use.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swap_usage_bytes: Option<u64>,
}

/// Filesystem usage (`stats/v1alpha1` `FsStats`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FsStats {
    /// When sampled.
    #[serde(serialize_with = "rfc3339")]
    pub time: Timestamp,
    /// Bytes of the filesystem available to unprivileged users.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available_bytes: Option<u64>,
    /// The filesystem's size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity_bytes: Option<u64>,
    /// Bytes used for what is measured (a volume, a container's logs); the node's: all the
    /// filesystem uses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub used_bytes: Option<u64>,
    /// Free inodes of the filesystem.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inodes_free: Option<u64>,
    /// Inodes of the filesystem.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inodes: Option<u64>,
    /// Inodes used for what is measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inodes_used: Option<u64>,
}

impl FsStats {
    /// Nothing known yet but the time.
    fn at(time: Timestamp) -> Self {
        Self {
            time,
            available_bytes: None,
            capacity_bytes: None,
            used_bytes: None,
            inodes_free: None,
            inodes: None,
            inodes_used: None,
        }
    }

    /// The size of a filesystem (from statfs) at `time`, with no usage yet.
    fn of_filesystem(time: Timestamp, s: &allocatable::FsStats) -> Self {
        let u = |v: i64| Some(v.max(0) as u64);
        Self {
            time,
            available_bytes: u(s.available_bytes),
            capacity_bytes: u(s.capacity_bytes),
            used_bytes: None,
            inodes_free: u(s.inodes_free),
            inodes: u(s.inodes),
            inodes_used: None,
        }
    }

    /// Adds `used_bytes` and `inodes_used` of `other` (kubelet's `addUsage`: nothing plus
    /// nothing stays nothing) and keeps the later time.
    fn add_usage(&mut self, other: &FsStats) {
        let add = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (None, b) => b,
            (a, None) => a,
            (Some(a), Some(b)) => Some(a + b),
        };
        self.used_bytes = add(self.used_bytes, other.used_bytes);
        self.inodes_used = add(self.inodes_used, other.inodes_used);
        self.time = self.time.max(other.time);
    }
}

/// A volume's usage (`stats/v1alpha1` `VolumeStats`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VolumeStats {
    /// Its usage and its filesystem's size.
    #[serde(flatten)]
    pub fs: FsStats,
    /// The volume's name in the pod spec.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
}

/// One interface's traffic (`stats/v1alpha1` `InterfaceStats`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InterfaceStats {
    /// The interface (empty in [`NetworkStats`] when there is no `eth0`).
    pub name: String,
    /// Bytes received.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rx_bytes: Option<u64>,
    /// Receive errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rx_errors: Option<u64>,
    /// Bytes sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tx_bytes: Option<u64>,
    /// Transmit errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tx_errors: Option<u64>,
}

/// Network traffic (`stats/v1alpha1` `NetworkStats`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NetworkStats {
    /// When sampled.
    #[serde(serialize_with = "rfc3339")]
    pub time: Timestamp,
    /// The default interface (`eth0`, as kubelet names it), inline.
    #[serde(flatten)]
    pub default: InterfaceStats,
    /// Every interface but loopback and the host ends of container links (`lo*`, `veth*`,
    /// `docker*`, `nerdctl*`, as cAdvisor skips them).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<InterfaceStats>,
}

/// The interface kubelet reports as a pod's or node's default one.
const DEFAULT_INTERFACE: &str = "eth0";

impl NetworkStats {
    /// The interfaces of `/proc/<pid>/net/dev` (or `/proc/net/dev`), sampled at `time`.
    pub fn from_proc_net_dev(text: &str, time: Timestamp) -> Self {
        let interfaces: Vec<InterfaceStats> = text
            .lines()
            .skip(2)
            .filter_map(|l| {
                let (name, rest) = l.split_once(':')?;
                let name = name.trim();
                if ["lo", "veth", "docker", "nerdctl"]
                    .iter()
                    .any(|p| name.starts_with(p))
                {
                    return None;
                }
                let f: Vec<u64> = rest
                    .split_whitespace()
                    .map(|v| v.parse().ok())
                    .collect::<Option<_>>()?;
                Some(InterfaceStats {
                    name: name.to_string(),
                    rx_bytes: f.first().copied(),
                    rx_errors: f.get(2).copied(),
                    tx_bytes: f.get(8).copied(),
                    tx_errors: f.get(10).copied(),
                })
            })
            .collect();
        Self::of_interfaces(time, interfaces)
    }

    fn of_interfaces(time: Timestamp, interfaces: Vec<InterfaceStats>) -> Self {
        Self {
            time,
            default: interfaces
                .iter()
                .find(|i| i.name == DEFAULT_INTERFACE)
                .cloned()
                .unwrap_or_default(),
            interfaces,
        }
    }
}

/// The runtime's filesystems (`stats/v1alpha1` `RuntimeStats`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeStats {
    /// The filesystem images are stored on; `usedBytes` is what the images occupy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_fs: Option<FsStats>,
    /// The filesystem of the containers' writable layers (the image filesystem, as kubelet's
    /// CRI stats provider reports it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_fs: Option<FsStats>,
}

/// The node's task limit and count (`stats/v1alpha1` `RlimitStats`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RlimitStats {
    /// When sampled.
    #[serde(serialize_with = "rfc3339")]
    pub time: Timestamp,
    /// The most tasks the kernel allows (the lower of `pid_max` and `threads-max`).
    #[serde(rename = "maxpid", skip_serializing_if = "Option::is_none")]
    pub max_pid: Option<i64>,
    /// The tasks running.
    #[serde(rename = "curproc", skip_serializing_if = "Option::is_none")]
    pub running_processes: Option<i64>,
}

/// A pod's process count (`stats/v1alpha1` `ProcessStats`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessStats {
    /// The processes of the pod.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process_count: Option<u64>,
}

/// The node's usage (`stats/v1alpha1` `NodeStats`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStats {
    /// The node's name.
    pub node_name: String,
    /// When the node booted.
    #[serde(serialize_with = "rfc3339")]
    pub start_time: Timestamp,
    /// CPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    /// Memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
    /// The host's interfaces (full summary only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkStats>,
    /// The filesystem of the kubelet root dir (full summary only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fs: Option<FsStats>,
    /// The runtime's filesystems (full summary only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimeStats>,
    /// The task limit and count (full summary only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rlimit: Option<RlimitStats>,
    /// Swap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swap: Option<SwapStats>,
}

/// A pod's identity (`stats/v1alpha1` `PodReference`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodReference {
    /// The pod's name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its UID.
    pub uid: String,
}

/// A container's usage (`stats/v1alpha1` `ContainerStats`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStats {
    /// The container's name in the pod spec.
    pub name: String,
    /// When the container was created (kubelet's CRI stats provider takes `created_at`).
    #[serde(serialize_with = "rfc3339")]
    pub start_time: Timestamp,
    /// CPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    /// Memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
    /// The writable layer, when the runtime reports its usage (full summary only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<FsStats>,
    /// The container's log files (full summary only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logs: Option<FsStats>,
}

/// A pod's usage (`stats/v1alpha1` `PodStats`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStats {
    /// The pod.
    pub pod_ref: PodReference,
    /// When its sandbox was created.
    #[serde(serialize_with = "rfc3339")]
    pub start_time: Timestamp,
    /// Its running containers.
    pub containers: Vec<ContainerStats>,
    /// CPU of the whole pod.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    /// Memory of the whole pod.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
    /// The pod's network namespace (full summary only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkStats>,
    /// Its emptyDir volumes, disk-backed first, then memory-backed (full summary only).
    #[serde(rename = "volume", skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeStats>,
    /// Its local ephemeral storage on the node's filesystem (full summary only).
    #[serde(rename = "ephemeral-storage", skip_serializing_if = "Option::is_none")]
    pub ephemeral_storage: Option<FsStats>,
    /// Its processes, when the runtime counts them (full summary only).
    #[serde(rename = "process_stats", skip_serializing_if = "Option::is_none")]
    pub process_stats: Option<ProcessStats>,
}

/// The summary (`stats/v1alpha1` `Summary`): the node and its pods.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// The node.
    pub node: NodeStats,
    /// The pods with a running container, by namespace and name.
    pub pods: Vec<PodStats>,
}

/// The node-wide usage a [`NodeStatsSource`] reads.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NodeUsage {
    /// Cumulative CPU time of the node, core-nanoseconds.
    pub cpu_usage_core_nano_seconds: Option<u64>,
    /// Memory capacity.
    pub memory_total_bytes: Option<u64>,
    /// Memory in use (`MemTotal - MemFree`).
    pub memory_usage_bytes: Option<u64>,
    /// Memory in use minus inactive file pages.
    pub memory_working_set_bytes: Option<u64>,
    /// Swap in use (`SwapTotal - SwapFree`); `None` without swap.
    pub swap_usage_bytes: Option<u64>,
    /// Swap free.
    pub swap_available_bytes: Option<u64>,
    /// When the node booted.
    pub boot_time: Option<Timestamp>,
    /// The host's interfaces.
    pub network: Option<NetworkStats>,
    /// The most tasks the kernel allows.
    pub max_pid: Option<i64>,
    /// The tasks running.
    pub running_processes: Option<i64>,
    /// When these were read.
    pub time: Timestamp,
}

/// Reads the node's own usage.
pub trait NodeStatsSource: Send + Sync {
    /// The node's usage now.
    fn node_usage(&self) -> Result<NodeUsage, StatsError>;
}

/// The host's usage from the root cgroup and procfs.
#[derive(Debug, Clone)]
pub struct HostNodeStats {
    /// The cgroup hierarchy's mount (`/sys/fs/cgroup`).
    pub cgroup_root: PathBuf,
    /// procfs (`/proc`).
    pub proc_root: PathBuf,
}

impl Default for HostNodeStats {
    fn default() -> Self {
        Self {
            cgroup_root: "/sys/fs/cgroup".into(),
            proc_root: "/proc".into(),
        }
    }
}

fn stat_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

impl HostNodeStats {
    fn cpu_ns(&self) -> Option<u64> {
        let read = |p: PathBuf| std::fs::read_to_string(p).ok();
        if let Some(t) = read(self.cgroup_root.join("cpu.stat")) {
            return stat_field(&t, "usage_usec").map(|us| us * 1_000);
        }
        if let Some(t) = read(self.cgroup_root.join("cpuacct/cpuacct.usage")) {
            return t.trim().parse().ok();
        }
        // user nice system idle iowait irq softirq steal, in USER_HZ
        let stat = read(self.proc_root.join("stat"))?;
        let f: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| f.get(i)).sum();
        Some(busy * (1_000_000_000 / hz))
    }

    /// The lower of `kernel.pid_max` and `kernel.threads-max`, as kubelet's rlimit stats.
    fn max_pid(&self) -> Option<i64> {
        ["sys/kernel/pid_max", "sys/kernel/threads-max"]
            .iter()
            .filter_map(|f| {
                std::fs::read_to_string(self.proc_root.join(f))
                    .ok()?
                    .trim()
                    .parse::<i64>()
                    .ok()
            })
            .min()
    }
}

impl NodeStatsSource for HostNodeStats {
    fn node_usage(&self) -> Result<NodeUsage, StatsError> {
        let path = self.proc_root.join("meminfo");
        let meminfo = std::fs::read_to_string(&path).map_err(|e| StatsError::Node {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let field = |k: &str| meminfo_field(&meminfo, k).map(|v| v.max(0) as u64);
        let total = field("MemTotal");
        let usage = total
            .zip(field("MemFree"))
            .map(|(t, f)| t.saturating_sub(f));
        let working_set = usage.map(|u| u.saturating_sub(field("Inactive(file)").unwrap_or(0)));
        let swap_total = field("SwapTotal").filter(|t| *t > 0);
        let swap_free = field("SwapFree");
        let boot_time = std::fs::read_to_string(self.proc_root.join("stat"))
            .ok()
            .and_then(|t| stat_field(&t, "btime"))
            .and_then(|s| Timestamp::from_second(s as i64).ok());
        let time = Timestamp::now();
        Ok(NodeUsage {
            cpu_usage_core_nano_seconds: self.cpu_ns(),
            memory_total_bytes: total,
            memory_usage_bytes: usage,
            memory_working_set_bytes: working_set,
            swap_usage_bytes: swap_total.zip(swap_free).map(|(t, f)| t.saturating_sub(f)),
            swap_available_bytes: swap_total.and(swap_free),
            boot_time,
            network: std::fs::read_to_string(self.proc_root.join("net/dev"))
                .ok()
                .map(|t| NetworkStats::from_proc_net_dev(&t, time)),
            max_pid: self.max_pid(),
            running_processes: super::eviction::process_count(),
            time,
        })
    }
}

/// Where the full summary measures the node's and the pods' filesystems.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsFilesystems {
    /// The kubelet root dir: its filesystem is the node's `fs` (the eviction manager's nodefs),
    /// and the capacity of the pods' logs and ephemeral storage.
    pub root_dir: PathBuf,
    /// The volume manager's root dir: pod volumes live under `pods/<uid>/volumes`.
    pub volumes_root: PathBuf,
    /// Where container logs live (`<namespace>_<name>_<uid>/<container>/`).
    pub pod_log_root: PathBuf,
    /// The image filesystem when the runtime does not answer `ImageFsInfo` (the eviction
    /// manager's imagefs); unset: the root dir's filesystem.
    pub image_fs: Option<PathBuf>,
}

impl Default for StatsFilesystems {
    fn default() -> Self {
        Self {
            root_dir: "/var/lib/kubelet".into(),
            volumes_root: "/var/lib/kubelet".into(),
            pod_log_root: "/var/log/pods".into(),
            image_fs: None,
        }
    }
}

impl StatsFilesystems {
    /// The filesystems of a node manager's configuration: the root dir the eviction manager
    /// observes as nodefs, the volume manager's root, the pod log root and the configured
    /// image filesystem.
    pub fn of(config: &NodeConfig) -> Self {
        Self {
            root_dir: config.allocatable.root_dir.clone(),
            volumes_root: config.volumes.root_dir.clone(),
            pod_log_root: config.pod_log_root.clone(),
            image_fs: config.gc.image_fs.clone(),
        }
    }
}

/// Gathers the [`Summary`] from the runtime and the node.
#[derive(Clone)]
pub struct StatsProvider {
    runtime: Arc<dyn RuntimeBackend>,
    node: Arc<dyn NodeStatsSource>,
    node_name: String,
    filesystems: Option<StatsFilesystems>,
    images: Option<Arc<dyn ImageBackend>>,
    /// The last CPU sample of the node ("") and of each sandbox and container id.
    last_cpu: Arc<std::sync::Mutex<HashMap<String, (Timestamp, u64)>>>,
}

impl std::fmt::Debug for StatsProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatsProvider")
            .field("node_name", &self.node_name)
            .field("filesystems", &self.filesystems)
            .finish_non_exhaustive()
    }
}

fn ts(ns: i64) -> Timestamp {
    Timestamp::from_nanosecond(i128::from(ns)).unwrap_or(Timestamp::UNIX_EPOCH)
}

fn cpu_of(u: Option<&cri::CpuUsage>) -> Option<CpuStats> {
    let u = u?;
    Some(CpuStats {
        time: ts(u.timestamp),
        usage_nano_cores: None,
        usage_core_nano_seconds: u.usage_core_nano_seconds.as_ref().map(|v| v.value),
    })
}

fn memory_of(m: Option<&cri::MemoryUsage>) -> Option<MemoryStats> {
    let m = m?;
    Some(MemoryStats {
        time: ts(m.timestamp),
        available_bytes: m.available_bytes.as_ref().map(|v| v.value),
        usage_bytes: m.usage_bytes.as_ref().map(|v| v.value),
        working_set_bytes: m.working_set_bytes.as_ref().map(|v| v.value),
    })
}

/// The writable layer the runtime reports (kubelet's `rootfs`: time, bytes and inodes used;
/// the filesystem's size is added from statfs of its mountpoint).
fn rootfs_of(w: Option<&cri::FilesystemUsage>) -> Option<FsStats> {
    let w = w?;
    Some(FsStats {
        used_bytes: w.used_bytes.as_ref().map(|v| v.value),
        inodes_used: w.inodes_used.as_ref().map(|v| v.value),
        ..FsStats::at(ts(w.timestamp))
    })
}

/// The runtime's network usage of a sandbox (kubelet's `addCRIPodNetworkStats`).
fn network_of(n: &cri::NetworkUsage) -> NetworkStats {
    let iface = |i: &cri::NetworkInterfaceUsage| InterfaceStats {
        name: i.name.clone(),
        rx_bytes: i.rx_bytes.as_ref().map(|v| v.value),
        rx_errors: i.rx_errors.as_ref().map(|v| v.value),
        tx_bytes: i.tx_bytes.as_ref().map(|v| v.value),
        tx_errors: i.tx_errors.as_ref().map(|v| v.value),
    };
    NetworkStats {
        time: ts(n.timestamp),
        default: n.default_interface.as_ref().map(iface).unwrap_or_default(),
        interfaces: n.interfaces.iter().map(iface).collect(),
    }
}

fn sum_of<T>(items: impl Iterator<Item = T>, pick: impl Fn(&T) -> Option<u64>) -> Option<u64> {
    items.map(|i| pick(&i)).fold(None, |acc, v| match (acc, v) {
        (a, None) => a,
        (None, Some(v)) => Some(v),
        (Some(a), Some(v)) => Some(a + v),
    })
}

/// What the CRI calls of one summary gave.
struct Gathered {
    node: NodeStats,
    node_usage: NodeUsage,
    /// The pods by sandbox id.
    pods: Vec<(String, PodStats)>,
    /// `ListPodSandboxStats`, when the runtime implements it.
    sandbox_stats: Option<HashMap<String, cri::PodSandboxStats>>,
    /// The mountpoint of each container's writable layer, by (sandbox id, container name).
    layer_mounts: HashMap<(String, String), String>,
}

/// A pod's disk usage measured off the runtime: its emptyDirs and logs.
#[derive(Debug, Default)]
struct PodDisk {
    /// Disk-backed emptyDirs (counted in ephemeral storage).
    disk_volumes: Vec<VolumeStats>,
    /// Memory-backed (tmpfs) emptyDirs.
    memory_volumes: Vec<VolumeStats>,
    /// Each container's log directory, by container name.
    container_logs: HashMap<String, FsStats>,
    /// The pod-level log files (files directly in the pod's log directory).
    pod_logs: Option<FsStats>,
}

/// The filesystems' sizes and the pods' disk usage, measured off the async runtime.
struct Measured {
    nodefs: allocatable::FsStats,
    imagefs: Option<allocatable::FsStats>,
    /// statfs of each writable-layer mountpoint.
    mounts: HashMap<String, allocatable::FsStats>,
    pods: Vec<PodDisk>,
}

/// Used bytes and inodes under `path` with the size of its filesystem: kubelet's du-based
/// metrics (`MetricsDu`); `None` when `path` does not exist.
fn du_stats(path: &Path, time: Timestamp, fs: Option<&allocatable::FsStats>) -> Option<FsStats> {
    let (bytes, inodes) = disk_usage(path);
    if inodes == 0 {
        return None;
    }
    let fs_size = match fs {
        Some(s) => Some(*s),
        None => fs_stats(path).ok(),
    };
    let mut s = match fs_size {
        Some(f) => FsStats::of_filesystem(time, &f),
        None => FsStats::at(time),
    };
    s.used_bytes = Some(bytes.max(0) as u64);
    s.inodes_used = Some(inodes.max(0) as u64);
    Some(s)
}

/// One pod's emptyDirs and logs. A memory-medium emptyDir is a tmpfs mounted on its directory
/// (a mountpoint: another device than its parent's); its size is the tmpfs's.
fn measure_pod(
    fs: &StatsFilesystems,
    nodefs: &allocatable::FsStats,
    pod: &PodReference,
    containers: &[String],
) -> PodDisk {
    use std::os::unix::fs::MetadataExt;
    let now = Timestamp::now();
    let mut out = PodDisk::default();
    if !pod.uid.is_empty() && !pod.uid.contains('/') && !pod.uid.starts_with('.') {
        let dir = crate::node::volumes::empty_dirs_under(&fs.volumes_root, &pod.uid);
        let parent_dev = std::fs::metadata(&dir).map(|m| m.dev()).ok();
        let mut entries: Vec<(String, PathBuf, bool)> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let md = e.metadata().ok()?;
                md.is_dir().then(|| {
                    let memory = parent_dev.is_some_and(|d| d != md.dev());
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        e.path(),
                        memory,
                    )
                })
            })
            .collect();
        entries.sort();
        for (name, path, memory) in entries {
            let Some(s) = du_stats(&path, now, None) else {
                continue;
            };
            let v = VolumeStats { fs: s, name };
            if memory {
                out.memory_volumes.push(v);
            } else {
                out.disk_volumes.push(v);
            }
        }
    }
    let spec = k8s_openapi::api::core::v1::Pod {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(pod.name.clone()),
            namespace: Some(pod.namespace.clone()),
            uid: Some(pod.uid.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    let log_dir = crate::cri_config::pod_log_dir(&fs.pod_log_root, &spec);
    for c in containers {
        if let Some(s) = du_stats(&log_dir.join(c), now, Some(nodefs)) {
            out.container_logs.insert(c.clone(), s);
        }
    }
    // kubelet's pod log stats: the files directly in the pod's log directory
    let mut pod_logs: Option<FsStats> = None;
    for e in std::fs::read_dir(&log_dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| !t.is_dir())
            && let Some(s) = du_stats(&e.path(), now, Some(nodefs))
        {
            match &mut pod_logs {
                Some(p) => p.add_usage(&s),
                None => pod_logs = Some(s),
            }
        }
    }
    out.pod_logs = pod_logs;
    out
}

/// The pod's ephemeral storage as kubelet's `calcEphemeralStorage`: the node filesystem's size,
/// with the usage of its containers' rootfs and logs, its disk-backed emptyDirs and its
/// pod-level logs.
fn ephemeral_storage(nodefs: &FsStats, pod: &PodStats, disk: &PodDisk) -> FsStats {
    let mut e = nodefs.clone();
    e.used_bytes = None;
    e.inodes_used = None;
    for c in &pod.containers {
        for s in [&c.rootfs, &c.logs].into_iter().flatten() {
            e.add_usage(s);
        }
    }
    for v in &disk.disk_volumes {
        e.add_usage(&v.fs);
    }
    if let Some(l) = &disk.pod_logs {
        e.add_usage(l);
    }
    e
}

/// The pid of the sandbox process in a runtime's verbose `PodSandboxStatus` info (`info` is
/// JSON with a `pid`, as containerd and the native runtime give it).
fn sandbox_pid(info: &HashMap<String, String>) -> Option<u32> {
    let v: serde_json::Value = serde_json::from_str(info.get("info")?).ok()?;
    v.get("pid")?
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .filter(|p| *p > 0)
}

impl StatsProvider {
    /// The provider over the runtime's CRI stats and the node's own usage; `node_name` is the
    /// summary's `nodeName`. Without [`filesystems`](Self::filesystems) the summary has no
    /// filesystem stats.
    pub fn new(
        runtime: Arc<dyn RuntimeBackend>,
        node: Arc<dyn NodeStatsSource>,
        node_name: impl Into<String>,
    ) -> Self {
        Self {
            runtime,
            node,
            node_name: node_name.into(),
            filesystems: None,
            images: None,
            last_cpu: Arc::default(),
        }
    }

    /// Measure the node's, the runtime's and the pods' filesystems in the full summary.
    #[must_use]
    pub fn filesystems(mut self, filesystems: StatsFilesystems) -> Self {
        self.filesystems = Some(filesystems);
        self
    }

    /// Ask this image service for the image filesystem (`ImageFsInfo`; without it, or when it
    /// does not implement it, the image filesystem is [`StatsFilesystems::image_fs`]).
    #[must_use]
    pub fn images(mut self, images: Arc<dyn ImageBackend>) -> Self {
        self.images = Some(images);
        self
    }

    /// Fills `usage_nano_cores` from the previous sample of `key` and remembers this one.
    fn rate(
        &self,
        key: &str,
        cpu: &mut Option<CpuStats>,
        seen: &mut HashMap<String, (Timestamp, u64)>,
    ) {
        let Some(c) = cpu.as_mut() else { return };
        let Some(total) = c.usage_core_nano_seconds else {
            return;
        };
        let last = self
            .last_cpu
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .copied();
        if let Some((t, prev)) = last {
            let dt = c.time.as_nanosecond() - t.as_nanosecond();
            if dt > 0 && total >= prev {
                c.usage_nano_cores =
                    Some(((total - prev) as u128 * 1_000_000_000 / dt as u128) as u64);
            }
        }
        seen.insert(key.to_string(), (c.time, total));
    }

    /// The node's CPU and memory usage and its pods' (kubelet's `GetCPUAndMemoryStats`, what
    /// `?only_cpu_and_memory=true` serves): no filesystem, network or rlimit stats.
    pub async fn cpu_and_memory(&self) -> Result<Summary, StatsError> {
        let g = self.gather().await?;
        let mut pods: Vec<PodStats> = g.pods.into_iter().map(|(_, p)| p).collect();
        for c in pods.iter_mut().flat_map(|p| p.containers.iter_mut()) {
            c.rootfs = None;
        }
        Ok(Summary { node: g.node, pods })
    }

    /// The full summary (kubelet's `Get`): CPU and memory, with the node's network, `fs`,
    /// `runtime` and `rlimit`, and each pod's network, volumes, ephemeral storage and its
    /// containers' logs and rootfs (the filesystems with [`filesystems`](Self::filesystems)).
    pub async fn summary(&self) -> Result<Summary, StatsError> {
        let Gathered {
            mut node,
            node_usage,
            mut pods,
            sandbox_stats,
            layer_mounts,
        } = self.gather().await?;
        node.network = node_usage.network.clone();
        if node_usage.max_pid.is_some() || node_usage.running_processes.is_some() {
            node.rlimit = Some(RlimitStats {
                time: node_usage.time,
                max_pid: node_usage.max_pid,
                running_processes: node_usage.running_processes,
            });
        }
        for (sandbox_id, pod) in &mut pods {
            let linux = sandbox_stats
                .as_ref()
                .and_then(|m| m.get(sandbox_id.as_str()))
                .and_then(|s| s.linux.as_ref());
            pod.process_stats = linux
                .and_then(|l| l.process.as_ref())
                .map(|p| ProcessStats {
                    process_count: p.process_count.as_ref().map(|v| v.value),
                });
            pod.network = match linux.and_then(|l| l.network.as_ref()) {
                Some(n) => Some(network_of(n)),
                None => self.sandbox_network(sandbox_id).await,
            };
        }
        if let Some(fs) = self.filesystems.clone() {
            self.add_filesystems(fs, &mut node, &mut pods, layer_mounts)
                .await?;
        }
        Ok(Summary {
            node,
            pods: pods.into_iter().map(|(_, p)| p).collect(),
        })
    }

    /// The interfaces of the sandbox's network namespace, through the sandbox process the
    /// runtime names; none for a pod on the host's network or when the runtime names no
    /// process.
    async fn sandbox_network(&self, sandbox_id: &str) -> Option<NetworkStats> {
        let status = match self.runtime.pod_sandbox_status(sandbox_id, true).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(sandbox = sandbox_id, error = %e, "no sandbox status for its network stats");
                return None;
            }
        };
        let host_network = status
            .status
            .as_ref()
            .and_then(|s| s.linux.as_ref())
            .and_then(|l| l.namespaces.as_ref())
            .and_then(|n| n.options.as_ref())
            .is_some_and(|o| o.network == cri::NamespaceMode::Node as i32);
        if host_network {
            return None;
        }
        let pid = sandbox_pid(&status.info)?;
        let text = tokio::fs::read_to_string(format!("/proc/{pid}/net/dev"))
            .await
            .ok()?;
        Some(NetworkStats::from_proc_net_dev(&text, Timestamp::now()))
    }

    /// The image filesystem: the runtime's `ImageFsInfo` usage on the filesystem it names, else
    /// the configured one with the images' sizes as usage. Returns the stats without the
    /// filesystem's size and the directory to statfs.
    async fn image_fs(&self, fs: &StatsFilesystems) -> Result<(FsStats, PathBuf), StatsError> {
        let fallback = fs.image_fs.clone().unwrap_or_else(|| fs.root_dir.clone());
        let Some(images) = &self.images else {
            return Ok((FsStats::at(Timestamp::now()), fallback));
        };
        match images.image_fs_info().await {
            Ok(info) => {
                if let Some(f) = info.image_filesystems.first() {
                    let mut s = rootfs_of(Some(f)).unwrap_or_else(|| FsStats::at(Timestamp::now()));
                    if s.time == Timestamp::UNIX_EPOCH {
                        s.time = Timestamp::now();
                    }
                    let path = f
                        .fs_id
                        .as_ref()
                        .map(|id| id.mountpoint.as_str())
                        .filter(|m| !m.is_empty())
                        .map_or(fallback, PathBuf::from);
                    return Ok((s, path));
                }
                Ok((FsStats::at(Timestamp::now()), fallback))
            }
            Err(RuntimeError::Unimplemented(_)) => {
                let list = images.list_images(None).await?;
                let mut s = FsStats::at(Timestamp::now());
                s.used_bytes = Some(list.iter().map(|i| i.size).sum());
                Ok((s, fallback))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The node's `fs` and `runtime`, each pod's volumes and ephemeral storage and its
    /// containers' logs and rootfs sizes.
    async fn add_filesystems(
        &self,
        fs: StatsFilesystems,
        node: &mut NodeStats,
        pods: &mut [(String, PodStats)],
        layer_mounts: HashMap<(String, String), String>,
    ) -> Result<(), StatsError> {
        let (image, image_dir) = self.image_fs(&fs).await?;
        let jobs: Vec<(PodReference, Vec<String>)> = pods
            .iter()
            .map(|(_, p)| {
                (
                    p.pod_ref.clone(),
                    p.containers.iter().map(|c| c.name.clone()).collect(),
                )
            })
            .collect();
        let mut mountpoints: Vec<String> = layer_mounts.values().cloned().collect();
        mountpoints.sort();
        mountpoints.dedup();
        let root = fs.root_dir.clone();
        let measured = tokio::task::spawn_blocking(move || -> Result<Measured, StatsError> {
            let nodefs = fs_stats(&fs.root_dir).map_err(|e| StatsError::Node {
                path: fs.root_dir.clone(),
                reason: e.to_string(),
            })?;
            let imagefs = fs_stats(&image_dir).ok();
            let mounts = mountpoints
                .into_iter()
                .filter_map(|m| Some((m.clone(), fs_stats(Path::new(&m)).ok()?)))
                .collect();
            let pods = jobs
                .iter()
                .map(|(r, containers)| measure_pod(&fs, &nodefs, r, containers))
                .collect();
            Ok(Measured {
                nodefs,
                imagefs,
                mounts,
                pods,
            })
        })
        .await
        .map_err(|e| StatsError::Node {
            path: root,
            reason: format!("measuring the filesystems: {e}"),
        })??;

        let now = Timestamp::now();
        let n = &measured.nodefs;
        let mut nodefs = FsStats::of_filesystem(now, n);
        nodefs.used_bytes = Some(n.capacity_bytes.saturating_sub(n.free_bytes).max(0) as u64);
        nodefs.inodes_used = Some(n.inodes.saturating_sub(n.inodes_free).max(0) as u64);
        node.fs = Some(nodefs.clone());
        let mut image_fs = match &measured.imagefs {
            Some(i) => FsStats::of_filesystem(image.time, i),
            None => image.clone(),
        };
        image_fs.used_bytes = image.used_bytes;
        image_fs.inodes_used = image.inodes_used;
        node.runtime = Some(RuntimeStats {
            image_fs: Some(image_fs.clone()),
            container_fs: Some(image_fs),
        });

        for ((sandbox_id, pod), disk) in pods.iter_mut().zip(measured.pods) {
            for c in &mut pod.containers {
                c.logs = disk.container_logs.get(&c.name).cloned();
                let size = layer_mounts
                    .get(&(sandbox_id.clone(), c.name.clone()))
                    .and_then(|m| measured.mounts.get(m));
                if let (Some(r), Some(size)) = (c.rootfs.as_mut(), size) {
                    let used = (r.used_bytes, r.inodes_used, r.time);
                    *r = FsStats::of_filesystem(used.2, size);
                    r.used_bytes = used.0;
                    r.inodes_used = used.1;
                }
            }
            pod.ephemeral_storage = Some(ephemeral_storage(&nodefs, pod, &disk));
            pod.volumes = disk.disk_volumes;
            pod.volumes.extend(disk.memory_volumes);
        }
        Ok(())
    }

    /// The CPU and memory of the node and of the pods (with the containers' writable-layer
    /// usage, which the full summary reports).
    async fn gather(&self) -> Result<Gathered, StatsError> {
        let sandboxes: HashMap<String, cri::PodSandbox> = self
            .runtime
            .list_pod_sandbox(None)
            .await?
            .into_iter()
            .filter(|s| s.state == cri::PodSandboxState::SandboxReady as i32)
            .map(|s| (s.id.clone(), s))
            .collect();
        let containers: HashMap<String, cri::Container> = self
            .runtime
            .list_containers(None)
            .await?
            .into_iter()
            .filter(|c| c.state == cri::ContainerState::ContainerRunning as i32)
            .map(|c| (c.id.clone(), c))
            .collect();
        let stats = self.runtime.list_container_stats(None).await?;
        let sandbox_stats: Option<HashMap<String, cri::PodSandboxStats>> =
            match self.runtime.list_pod_sandbox_stats(None).await {
                Ok(list) => Some(
                    list.into_iter()
                        .filter_map(|s| Some((s.attributes.as_ref()?.id.clone(), s)))
                        .collect(),
                ),
                Err(RuntimeError::Unimplemented(_)) => None,
                Err(e) => return Err(e.into()),
            };

        let mut pods: HashMap<String, PodStats> = HashMap::new();
        let mut layer_mounts = HashMap::new();
        for s in &stats {
            let Some(id) = s.attributes.as_ref().map(|a| &a.id) else {
                continue;
            };
            let Some(c) = containers.get(id) else {
                continue;
            };
            let Some(sandbox) = sandboxes.get(&c.pod_sandbox_id) else {
                continue;
            };
            let pod = pods
                .entry(sandbox.id.clone())
                .or_insert_with(|| pod_entry(sandbox));
            let name = c
                .metadata
                .as_ref()
                .map(|m| m.name.clone())
                .filter(|n| !n.is_empty())
                .or_else(|| c.labels.get(labels::CONTAINER_NAME).cloned())
                .unwrap_or_default();
            if let Some(m) = s
                .writable_layer
                .as_ref()
                .and_then(|w| w.fs_id.as_ref())
                .map(|f| f.mountpoint.clone())
                .filter(|m| !m.is_empty())
            {
                layer_mounts.insert((sandbox.id.clone(), name.clone()), m);
            }
            pod.containers.push(ContainerStats {
                name,
                start_time: ts(c.created_at),
                cpu: cpu_of(s.cpu.as_ref()),
                memory: memory_of(s.memory.as_ref()),
                rootfs: rootfs_of(s.writable_layer.as_ref()),
                logs: None,
            });
        }
        let mut pods: Vec<(String, PodStats)> = pods.into_iter().collect();
        for (sandbox_id, pod) in &mut pods {
            pod.containers.sort_by(|a, b| a.name.cmp(&b.name));
            let linux = sandbox_stats
                .as_ref()
                .and_then(|m| m.get(sandbox_id.as_str()))
                .and_then(|s| s.linux.as_ref());
            if let Some(linux) = linux {
                pod.cpu = cpu_of(linux.cpu.as_ref());
                pod.memory = memory_of(linux.memory.as_ref());
            } else {
                pod.cpu = summed_cpu(&pod.containers);
                pod.memory = summed_memory(&pod.containers);
            }
        }
        let node_usage = self.node.node_usage()?;
        let mut node = self.node_stats(&node_usage);
        // usage rates from the previous samples; the ones gone are forgotten
        let mut seen = HashMap::new();
        self.rate("", &mut node.cpu, &mut seen);
        for (sandbox_id, pod) in &mut pods {
            self.rate(sandbox_id, &mut pod.cpu, &mut seen);
            let ids = containers_of(&containers, sandbox_id);
            for c in &mut pod.containers {
                if let Some(id) = ids.get(c.name.as_str()) {
                    self.rate(id, &mut c.cpu, &mut seen);
                }
            }
        }
        *self.last_cpu.lock().unwrap_or_else(|e| e.into_inner()) = seen;
        pods.sort_by(|(_, a), (_, b)| {
            (&a.pod_ref.namespace, &a.pod_ref.name).cmp(&(&b.pod_ref.namespace, &b.pod_ref.name))
        });
        Ok(Gathered {
            node,
            node_usage,
            pods,
            sandbox_stats,
            layer_mounts,
        })
    }

    fn node_stats(&self, u: &NodeUsage) -> NodeStats {
        let now = u.time;
        NodeStats {
            node_name: self.node_name.clone(),
            start_time: u.boot_time.unwrap_or(Timestamp::UNIX_EPOCH),
            cpu: u.cpu_usage_core_nano_seconds.map(|v| CpuStats {
                time: now,
                usage_nano_cores: None,
                usage_core_nano_seconds: Some(v),
            }),
            memory: (u.memory_working_set_bytes.is_some() || u.memory_usage_bytes.is_some()).then(
                || MemoryStats {
                    time: now,
                    available_bytes: u
                        .memory_total_bytes
                        .zip(u.memory_working_set_bytes)
                        .map(|(t, w)| t.saturating_sub(w)),
                    usage_bytes: u.memory_usage_bytes,
                    working_set_bytes: u.memory_working_set_bytes,
                },
            ),
            network: None,
            fs: None,
            runtime: None,
            rlimit: None,
            swap: u.swap_usage_bytes.map(|used| SwapStats {
                time: now,
                swap_available_bytes: u.swap_available_bytes,
                swap_usage_bytes: Some(used),
            }),
        }
    }
}

/// The running containers of a sandbox by name (the name as the summary gives it).
fn containers_of<'a>(
    containers: &'a HashMap<String, cri::Container>,
    sandbox_id: &str,
) -> HashMap<&'a str, &'a str> {
    containers
        .values()
        .filter(|c| c.pod_sandbox_id == sandbox_id)
        .filter_map(|c| {
            let name = c
                .metadata
                .as_ref()
                .map(|m| m.name.as_str())
                .filter(|n| !n.is_empty())
                .or_else(|| c.labels.get(labels::CONTAINER_NAME).map(String::as_str))?;
            Some((name, c.id.as_str()))
        })
        .collect()
}

fn pod_entry(sandbox: &cri::PodSandbox) -> PodStats {
    let meta = sandbox.metadata.clone().unwrap_or_default();
    let pick = |v: String, label: &str| {
        if v.is_empty() {
            sandbox.labels.get(label).cloned().unwrap_or_default()
        } else {
            v
        }
    };
    PodStats {
        pod_ref: PodReference {
            name: pick(meta.name, labels::POD_NAME),
            namespace: pick(meta.namespace, labels::POD_NAMESPACE),
            uid: pick(meta.uid, labels::POD_UID),
        },
        start_time: ts(sandbox.created_at),
        containers: vec![],
        cpu: None,
        memory: None,
        network: None,
        volumes: vec![],
        ephemeral_storage: None,
        process_stats: None,
    }
}

fn summed_cpu(containers: &[ContainerStats]) -> Option<CpuStats> {
    let time = containers
        .iter()
        .filter_map(|c| c.cpu.as_ref())
        .map(|c| c.time)
        .max()?;
    Some(CpuStats {
        time,
        usage_nano_cores: None,
        usage_core_nano_seconds: sum_of(containers.iter(), |c| {
            c.cpu.as_ref()?.usage_core_nano_seconds
        }),
    })
}

fn summed_memory(containers: &[ContainerStats]) -> Option<MemoryStats> {
    let time = containers
        .iter()
        .filter_map(|c| c.memory.as_ref())
        .map(|m| m.time)
        .max()?;
    Some(MemoryStats {
        time,
        available_bytes: None,
        usage_bytes: sum_of(containers.iter(), |c| c.memory.as_ref()?.usage_bytes),
        working_set_bytes: sum_of(containers.iter(), |c| c.memory.as_ref()?.working_set_bytes),
    })
}

/// `GET /stats/summary` (JSON: the full summary, or with `?only_cpu_and_memory=true` (the one
/// value `true`, as kubelet reads it) the CPU and memory ones) and `GET /metrics/resource`
/// ([`super::resource_metrics`]).
pub fn router(provider: StatsProvider) -> Router {
    Router::new()
        .route("/stats/summary", get(summary))
        .route("/metrics/resource", get(resource))
        .with_state(provider)
}

async fn summary(
    State(p): State<StatsProvider>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let only_cpu_and_memory = match query {
        Ok(Query(pairs)) => {
            let values: Vec<&str> = pairs
                .iter()
                .filter(|(k, _)| k == "only_cpu_and_memory")
                .map(|(_, v)| v.as_str())
                .collect();
            values == ["true"]
        }
        Err(e) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("Internal Error: parse form failed: {e}"),
            )
                .into_response();
        }
    };
    let result = if only_cpu_and_memory {
        p.cpu_and_memory().await
    } else {
        p.summary().await
    };
    match result {
        Ok(s) => (
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::to_string(&s).unwrap_or_default(),
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("failed to get node summary: {e}"),
        )
            .into_response(),
    }
}

async fn resource(State(p): State<StatsProvider>) -> Response {
    (
        [(header::CONTENT_TYPE, super::resource_metrics::CONTENT_TYPE)],
        super::resource_metrics::scrape(&p).await,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_node_stats_from_the_root_cgroup_and_meminfo() {
        let dir = tempfile::tempdir().unwrap();
        let (cg, proc) = (dir.path().join("cg"), dir.path().join("proc"));
        std::fs::create_dir_all(&cg).unwrap();
        std::fs::create_dir_all(&proc).unwrap();
        std::fs::write(
            cg.join("cpu.stat"),
            "usage_usec 2500000\nuser_usec 2000000\n",
        )
        .unwrap();
        std::fs::write(
            proc.join("meminfo"),
            "MemTotal: 1000 kB\nMemFree: 200 kB\nMemAvailable: 600 kB\nInactive(file): 100 kB\nSwapTotal: 50 kB\nSwapFree: 30 kB\n",
        )
        .unwrap();
        std::fs::write(proc.join("stat"), "cpu 1 2 3 4\nbtime 1767225600\n").unwrap();
        let u = HostNodeStats {
            cgroup_root: cg.clone(),
            proc_root: proc.clone(),
        }
        .node_usage()
        .unwrap();
        assert_eq!(u.cpu_usage_core_nano_seconds, Some(2_500_000_000));
        assert_eq!(u.memory_total_bytes, Some(1000 * 1024));
        assert_eq!(u.memory_usage_bytes, Some(800 * 1024));
        assert_eq!(u.memory_working_set_bytes, Some(700 * 1024));
        assert_eq!(u.swap_usage_bytes, Some(20 * 1024));
        assert_eq!(u.swap_available_bytes, Some(30 * 1024));
        assert_eq!(u.boot_time.unwrap().as_second(), 1_767_225_600);

        // cgroup v1: cpuacct.usage in ns; no swap
        std::fs::remove_file(cg.join("cpu.stat")).unwrap();
        std::fs::create_dir_all(cg.join("cpuacct")).unwrap();
        std::fs::write(cg.join("cpuacct/cpuacct.usage"), "123456789\n").unwrap();
        std::fs::write(proc.join("meminfo"), "MemTotal: 1000 kB\nMemFree: 200 kB\n").unwrap();
        let u = HostNodeStats {
            cgroup_root: cg,
            proc_root: proc,
        }
        .node_usage()
        .unwrap();
        assert_eq!(u.cpu_usage_core_nano_seconds, Some(123_456_789));
        assert_eq!(u.memory_working_set_bytes, Some(800 * 1024));
        assert_eq!(u.swap_usage_bytes, None);
    }

    #[test]
    fn host_node_stats_network_and_task_limit() {
        let dir = tempfile::tempdir().unwrap();
        let proc = dir.path().join("proc");
        std::fs::create_dir_all(proc.join("net")).unwrap();
        std::fs::create_dir_all(proc.join("sys/kernel")).unwrap();
        std::fs::write(proc.join("meminfo"), "MemTotal: 1000 kB\nMemFree: 200 kB\n").unwrap();
        std::fs::write(
            proc.join("net/dev"),
            "Inter-| Receive | Transmit\n face |bytes ...\n    lo: 9 1 0 0 0 0 0 0 9 1 0 0 0 0 0 0\n  eth0: 100 2 1 0 0 0 0 0 200 3 4 0 0 0 0 0\ndocker0: 5 1 0 0 0 0 0 0 5 1 0 0 0 0 0 0\n",
        )
        .unwrap();
        std::fs::write(proc.join("sys/kernel/pid_max"), "4194304\n").unwrap();
        std::fs::write(proc.join("sys/kernel/threads-max"), "63000\n").unwrap();
        let u = HostNodeStats {
            cgroup_root: dir.path().join("none"),
            proc_root: proc,
        }
        .node_usage()
        .unwrap();
        let n = u.network.unwrap();
        assert_eq!(n.default.name, "eth0");
        assert_eq!(
            (
                n.default.rx_bytes,
                n.default.rx_errors,
                n.default.tx_bytes,
                n.default.tx_errors
            ),
            (Some(100), Some(1), Some(200), Some(4))
        );
        assert_eq!(n.interfaces, std::slice::from_ref(&n.default));
        // the lower of pid_max and threads-max, as kubelet's rlimit
        assert_eq!(u.max_pid, Some(63_000));
        assert!(u.running_processes.unwrap() > 0);
    }

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn rootfs_and_network_from_the_runtime() {
        let v = |value| Some(cri::UInt64Value { value });
        let layer = cri::FilesystemUsage {
            timestamp: 1_767_225_600_000_000_000,
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: "/var/lib/containerd".into(),
            }),
            used_bytes: v(4096),
            inodes_used: v(3),
        };
        let r = rootfs_of(Some(&layer)).unwrap();
        assert_eq!((r.used_bytes, r.inodes_used), (Some(4096), Some(3)));
        assert_eq!(r.time, t(1_767_225_600));
        assert_eq!(r.capacity_bytes, None);
        assert_eq!(rootfs_of(None), None);

        let iface = |name: &str, rx| cri::NetworkInterfaceUsage {
            name: name.into(),
            rx_bytes: v(rx),
            rx_errors: v(0),
            tx_bytes: v(rx * 2),
            tx_errors: v(1),
        };
        let n = network_of(&cri::NetworkUsage {
            timestamp: 1_767_225_600_000_000_000,
            default_interface: Some(iface("eth0", 10)),
            interfaces: vec![iface("eth0", 10), iface("net1", 20)],
        });
        let j = serde_json::to_value(&n).unwrap();
        assert_eq!(
            j,
            serde_json::json!({
                "time": "2026-01-01T00:00:00Z",
                "name": "eth0", "rxBytes": 10, "rxErrors": 0, "txBytes": 20, "txErrors": 1,
                "interfaces": [
                    {"name": "eth0", "rxBytes": 10, "rxErrors": 0, "txBytes": 20, "txErrors": 1},
                    {"name": "net1", "rxBytes": 20, "rxErrors": 0, "txBytes": 40, "txErrors": 1}
                ]
            })
        );
    }

    #[test]
    fn the_sandbox_pid_from_verbose_info() {
        let info = |s: &str| HashMap::from([("info".to_string(), s.to_string())]);
        assert_eq!(
            sandbox_pid(&info(r#"{"pid": 4242, "hostNetwork": false}"#)),
            Some(4242)
        );
        assert_eq!(sandbox_pid(&info(r#"{"pid": 0}"#)), None);
        assert_eq!(sandbox_pid(&info("not json")), None);
        assert_eq!(sandbox_pid(&HashMap::new()), None);
    }

    fn fs(time: Timestamp, used: Option<u64>, inodes: Option<u64>) -> FsStats {
        FsStats {
            time,
            available_bytes: Some(50),
            capacity_bytes: Some(100),
            used_bytes: used,
            inodes_free: Some(5),
            inodes: Some(10),
            inodes_used: inodes,
        }
    }

    #[test]
    fn ephemeral_storage_sums_rootfs_logs_disk_volumes_and_pod_logs() {
        let container = |name: &str, rootfs, logs| ContainerStats {
            name: name.into(),
            start_time: t(0),
            cpu: None,
            memory: None,
            rootfs,
            logs,
        };
        let mut pod = pod_entry(&cri::PodSandbox::default());
        pod.containers = vec![
            container(
                "a",
                Some(fs(t(5), Some(1000), Some(10))),
                Some(fs(t(7), Some(200), Some(2))),
            ),
            container("b", None, Some(fs(t(6), Some(30), Some(1)))),
        ];
        let vol = |name: &str, used| VolumeStats {
            fs: fs(t(8), Some(used), Some(4)),
            name: name.into(),
        };
        let disk = PodDisk {
            disk_volumes: vec![vol("cache", 4000)],
            memory_volumes: vec![vol("mem", 99_999)],
            container_logs: HashMap::new(),
            pod_logs: Some(fs(t(3), Some(5), Some(1))),
        };
        let nodefs = fs(t(1), Some(12345), Some(6));
        let e = ephemeral_storage(&nodefs, &pod, &disk);
        // the memory volume is not ephemeral storage
        assert_eq!(e.used_bytes, Some(1000 + 200 + 30 + 4000 + 5));
        assert_eq!(e.inodes_used, Some(10 + 2 + 1 + 4 + 1));
        assert_eq!((e.capacity_bytes, e.available_bytes), (Some(100), Some(50)));
        assert_eq!(e.time, t(8));
        // nothing measured: no usage at all, the filesystem's size only
        pod.containers.clear();
        let e = ephemeral_storage(&nodefs, &pod, &PodDisk::default());
        assert_eq!((e.used_bytes, e.inodes_used), (None, None));
        let j = serde_json::to_value(&e).unwrap();
        assert_eq!(j.get("usedBytes"), None);
        assert_eq!(j["capacityBytes"], 100);
    }
}
