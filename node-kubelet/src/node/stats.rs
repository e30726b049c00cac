//! The node's and its pods' CPU and memory usage, as kubelet's stats provider gathers it for
//! `/stats/summary` (its `stats/v1alpha1` `Summary`) and `/metrics/resource`
//! ([`super::resource_metrics`]): what metrics-server, and so `kubectl top` and the
//! HorizontalPodAutoscaler, read.
//!
//! - The node: [`NodeStatsSource`]; [`HostNodeStats`] reads the root cgroup's CPU time
//!   (`cpu.stat` on cgroup v2, `cpuacct.usage` on v1, else `/proc/stat`) and `/proc/meminfo`
//!   (working set = `MemTotal - MemFree - Inactive(file)`, as cAdvisor measures the root).
//! - The pods: the runtime's CRI stats, as kubelet's CRI stats provider: the ready sandboxes,
//!   their running containers (`ListContainers`) with their `ListContainerStats` usage; a pod is
//!   listed once one of its containers has stats. The pod's usage is the runtime's
//!   `ListPodSandboxStats` when it implements it, else the sum of its containers.
//! - [`router`]: `GET /stats/summary` (JSON) and `GET /metrics/resource` (Prometheus text).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use k8s_openapi::jiff::Timestamp;
use node_core::{RuntimeBackend, RuntimeError, cri};
use serde::{Serialize, Serializer};

use super::allocatable::meminfo_field;
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

/// The node's usage (`stats/v1alpha1` `NodeStats`, CPU, memory and swap).
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
        Ok(NodeUsage {
            cpu_usage_core_nano_seconds: self.cpu_ns(),
            memory_total_bytes: total,
            memory_usage_bytes: usage,
            memory_working_set_bytes: working_set,
            swap_usage_bytes: swap_total.zip(swap_free).map(|(t, f)| t.saturating_sub(f)),
            swap_available_bytes: swap_total.and(swap_free),
            boot_time,
            time: Timestamp::now(),
        })
    }
}

/// Gathers the [`Summary`] from the runtime and the node.
#[derive(Clone)]
pub struct StatsProvider {
    runtime: Arc<dyn RuntimeBackend>,
    node: Arc<dyn NodeStatsSource>,
    node_name: String,
    /// The last CPU sample of the node ("") and of each sandbox and container id.
    last_cpu: Arc<std::sync::Mutex<HashMap<String, (Timestamp, u64)>>>,
}

impl std::fmt::Debug for StatsProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatsProvider")
            .field("node_name", &self.node_name)
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

fn sum_of<T>(items: impl Iterator<Item = T>, pick: impl Fn(&T) -> Option<u64>) -> Option<u64> {
    items.map(|i| pick(&i)).fold(None, |acc, v| match (acc, v) {
        (a, None) => a,
        (None, Some(v)) => Some(v),
        (Some(a), Some(v)) => Some(a + v),
    })
}

impl StatsProvider {
    /// The provider over the runtime's CRI stats and the node's own usage; `node_name` is the
    /// summary's `nodeName`.
    pub fn new(
        runtime: Arc<dyn RuntimeBackend>,
        node: Arc<dyn NodeStatsSource>,
        node_name: impl Into<String>,
    ) -> Self {
        Self {
            runtime,
            node,
            node_name: node_name.into(),
            last_cpu: Arc::default(),
        }
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

    /// The node's CPU and memory usage and its pods' (kubelet's `GetCPUAndMemoryStats`).
    pub async fn cpu_and_memory(&self) -> Result<Summary, StatsError> {
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
        let pod_stats: Option<HashMap<String, cri::PodSandboxStats>> =
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
            pod.containers.push(ContainerStats {
                name,
                start_time: ts(c.created_at),
                cpu: cpu_of(s.cpu.as_ref()),
                memory: memory_of(s.memory.as_ref()),
            });
        }
        let mut pods: Vec<(String, PodStats)> = pods.into_iter().collect();
        for (sandbox_id, pod) in &mut pods {
            pod.containers.sort_by(|a, b| a.name.cmp(&b.name));
            let linux = pod_stats
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
        let mut node = self.node_stats()?;
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
        let mut pods: Vec<PodStats> = pods.into_iter().map(|(_, p)| p).collect();
        pods.sort_by(|a, b| {
            (&a.pod_ref.namespace, &a.pod_ref.name).cmp(&(&b.pod_ref.namespace, &b.pod_ref.name))
        });
        Ok(Summary { node, pods })
    }

    fn node_stats(&self) -> Result<NodeStats, StatsError> {
        let u = self.node.node_usage()?;
        let now = u.time;
        Ok(NodeStats {
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
            swap: u.swap_usage_bytes.map(|used| SwapStats {
                time: now,
                swap_available_bytes: u.swap_available_bytes,
                swap_usage_bytes: Some(used),
            }),
        })
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

/// `GET /stats/summary` (JSON; `?only_cpu_and_memory=true` gives the same: CPU and memory is
/// all this summary holds) and `GET /metrics/resource` ([`super::resource_metrics`]).
pub fn router(provider: StatsProvider) -> Router {
    Router::new()
        .route("/stats/summary", get(summary))
        .route("/metrics/resource", get(resource))
        .with_state(provider)
}

async fn summary(State(p): State<StatsProvider>) -> Response {
    match p.cpu_and_memory().await {
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
}
