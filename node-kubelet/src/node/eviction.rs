//! The eviction manager's logic: node signals (memory.available, nodefs/imagefs availability,
//! inodes, pid.available), thresholds in kubelet's syntax (`memory.available<100Mi`,
//! `nodefs.available<10%`), hard and soft thresholds with grace periods, the ranking of pods to
//! evict, and the decision with kubelet's reason and message.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Pod;
use node_core::PodRef;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::allocatable::{fs_stats, meminfo_field};
use super::qos::{QosClass, pod_qos, pod_resources};
use super::quantity::{self, format_bytes};
use super::status::NodeHealth;

/// An eviction signal, named as kubelet names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Signal {
    /// `memory.available`: node memory available (capacity - working set).
    MemoryAvailable,
    /// `nodefs.available`: free bytes of the filesystem of the kubelet root dir.
    NodeFsAvailable,
    /// `nodefs.inodesFree`: free inodes of that filesystem.
    NodeFsInodesFree,
    /// `imagefs.available`: free bytes of the runtime's image filesystem.
    ImageFsAvailable,
    /// `imagefs.inodesFree`: free inodes of the image filesystem.
    ImageFsInodesFree,
    /// `pid.available`: process IDs left (pid_max - running processes).
    PidAvailable,
}

impl Signal {
    /// Every signal.
    pub const ALL: [Signal; 6] = [
        Signal::MemoryAvailable,
        Signal::NodeFsAvailable,
        Signal::NodeFsInodesFree,
        Signal::ImageFsAvailable,
        Signal::ImageFsInodesFree,
        Signal::PidAvailable,
    ];

    /// The kubelet name (`memory.available`...).
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::MemoryAvailable => "memory.available",
            Signal::NodeFsAvailable => "nodefs.available",
            Signal::NodeFsInodesFree => "nodefs.inodesFree",
            Signal::ImageFsAvailable => "imagefs.available",
            Signal::ImageFsInodesFree => "imagefs.inodesFree",
            Signal::PidAvailable => "pid.available",
        }
    }

    /// The resource the signal is about, as kubelet's message names it (`memory`,
    /// `ephemeral-storage`, `inodes`, `pids`).
    pub fn resource(self) -> &'static str {
        match self {
            Signal::MemoryAvailable => "memory",
            Signal::NodeFsAvailable | Signal::ImageFsAvailable => "ephemeral-storage",
            Signal::NodeFsInodesFree | Signal::ImageFsInodesFree => "inodes",
            Signal::PidAvailable => "pids",
        }
    }

    /// The node condition the signal drives.
    pub fn condition(self) -> &'static str {
        match self {
            Signal::MemoryAvailable => "MemoryPressure",
            Signal::PidAvailable => "PIDPressure",
            _ => "DiskPressure",
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Signal {
    type Err = ThresholdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Signal::ALL
            .into_iter()
            .find(|sig| sig.as_str() == s)
            .ok_or_else(|| ThresholdError {
                input: s.to_string(),
                reason: "unknown signal".into(),
            })
    }
}

/// A threshold's value: an absolute quantity or a percentage of capacity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ThresholdValue {
    /// An absolute amount (bytes, inodes, pids).
    Quantity(i64),
    /// A percentage (0-100) of the signal's capacity.
    Percentage(f64),
}

impl ThresholdValue {
    /// The absolute amount for a capacity.
    pub fn amount(self, capacity: i64) -> i64 {
        match self {
            ThresholdValue::Quantity(q) => q,
            ThresholdValue::Percentage(p) => (capacity as f64 * p / 100.0).round() as i64,
        }
    }
}

/// One eviction threshold: `signal < value`, hard (grace period zero) or soft.
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    /// The signal.
    pub signal: Signal,
    /// The value under which the threshold is met.
    pub value: ThresholdValue,
    /// How long the threshold must be met before acting; zero for a hard threshold.
    pub grace_period: Duration,
}

impl Threshold {
    /// Whether this is a hard threshold.
    pub fn is_hard(&self) -> bool {
        self.grace_period.is_zero()
    }
}

/// A threshold that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("eviction threshold {input:?}: {reason}")]
pub struct ThresholdError {
    /// The text at fault.
    pub input: String,
    /// What is wrong.
    pub reason: String,
}

fn parse_value(signal: Signal, text: &str, input: &str) -> Result<ThresholdValue, ThresholdError> {
    let err = |reason: String| ThresholdError {
        input: input.to_string(),
        reason,
    };
    if let Some(p) = text.strip_suffix('%') {
        let p: f64 = p
            .trim()
            .parse()
            .map_err(|_| err(format!("bad percentage {text:?}")))?;
        if !(0.0..=100.0).contains(&p) || p == 0.0 {
            return Err(err(format!("percentage {text:?} out of (0, 100]")));
        }
        return Ok(ThresholdValue::Percentage(p));
    }
    let v = quantity::value(text).map_err(|e| err(e.to_string()))?;
    if v < 0 {
        return Err(err(format!("{signal} must not be negative")));
    }
    Ok(ThresholdValue::Quantity(v))
}

/// Parses kubelet's flag syntax: `memory.available<100Mi,nodefs.available<10%` (hard thresholds).
pub fn parse_thresholds(text: &str) -> Result<Vec<Threshold>, ThresholdError> {
    let mut out: Vec<Threshold> = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (sig, val) = part.split_once('<').ok_or_else(|| ThresholdError {
            input: part.to_string(),
            reason: "expected <signal><<value> (only '<' is supported)".into(),
        })?;
        let signal: Signal = sig
            .trim()
            .parse()
            .map_err(|e: ThresholdError| ThresholdError {
                input: part.to_string(),
                reason: e.reason,
            })?;
        if out.iter().any(|t| t.signal == signal) {
            return Err(ThresholdError {
                input: part.to_string(),
                reason: format!("{signal} given twice"),
            });
        }
        out.push(Threshold {
            signal,
            value: parse_value(signal, val.trim(), part)?,
            grace_period: Duration::ZERO,
        });
    }
    Ok(out)
}

/// Parses kubelet's config maps: `evictionSoft` (`{"memory.available": "300Mi"}`) with
/// `evictionSoftGracePeriod` (`{"memory.available": "1m30s"}`); every soft threshold needs a
/// positive grace period.
pub fn parse_soft_thresholds(
    soft: &BTreeMap<String, String>,
    grace: &BTreeMap<String, String>,
) -> Result<Vec<Threshold>, ThresholdError> {
    let mut out = Vec::new();
    for (sig, val) in soft {
        let input = format!("{sig}<{val}");
        let signal: Signal = sig.parse()?;
        let g = grace.get(sig).ok_or_else(|| ThresholdError {
            input: input.clone(),
            reason: "soft threshold without a grace period".into(),
        })?;
        let grace_period = parse_duration(g).map_err(|reason| ThresholdError {
            input: format!("{sig}={g}"),
            reason,
        })?;
        if grace_period.is_zero() {
            return Err(ThresholdError {
                input,
                reason: "soft threshold grace period must be positive".into(),
            });
        }
        out.push(Threshold {
            signal,
            value: parse_value(signal, val, &input)?,
            grace_period,
        });
    }
    Ok(out)
}

/// Parses a Go duration (`1m30s`, `90s`, `500ms`, `1h`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    while !rest.is_empty() {
        let n_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("duration {text:?} lacks a unit"))?;
        let n: f64 = rest[..n_end]
            .parse()
            .map_err(|_| format!("bad duration {text:?}"))?;
        rest = &rest[n_end..];
        let u_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..u_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            u => return Err(format!("unknown unit {u:?} in duration {text:?}")),
        };
        total += Duration::from_secs_f64(n * unit);
        rest = &rest[u_end..];
    }
    Ok(total)
}

/// kubelet's default hard thresholds: `memory.available<100Mi`, `nodefs.available<10%`,
/// `nodefs.inodesFree<5%`, `imagefs.available<15%`.
pub fn default_hard_thresholds() -> Vec<Threshold> {
    parse_thresholds(
        "memory.available<100Mi,nodefs.available<10%,nodefs.inodesFree<5%,imagefs.available<15%",
    )
    .expect("the defaults parse")
}

/// The observed value of one signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observation {
    /// What is available (bytes, inodes, pids).
    pub available: i64,
    /// The total it is a part of (for percentage thresholds).
    pub capacity: i64,
}

/// The observed signals.
pub type Observations = BTreeMap<Signal, Observation>;

/// An error of the eviction manager.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EvictionError {
    /// A signal could not be observed.
    #[error("observe {signal}: {reason}")]
    Observe {
        /// The signal.
        signal: Signal,
        /// What went wrong.
        reason: String,
    },
    /// A garbage collection hook failed.
    #[error("{hook} garbage collection: {reason}")]
    Gc {
        /// `image` or `container`.
        hook: &'static str,
        /// What went wrong.
        reason: String,
    },
}

/// Where the signals come from: the real [`NodeSignals`], or a fake in logic tests.
pub trait SignalObserver: Send + Sync {
    /// Observes every signal it can.
    fn observe(&self) -> Result<Observations, EvictionError>;
}

/// The node's real signals: memory from /proc/meminfo (MemAvailable of MemTotal), nodefs and
/// imagefs from statvfs of their directories, pids from `pid_max` and the process count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSignals {
    /// The kubelet root dir (nodefs).
    pub nodefs: PathBuf,
    /// The runtime's image store (imagefs); the same filesystem as nodefs when unset.
    pub imagefs: Option<PathBuf>,
}

impl Default for NodeSignals {
    fn default() -> Self {
        Self {
            nodefs: "/var/lib/kubelet".into(),
            imagefs: None,
        }
    }
}

/// The number of processes (threads) on the node, from sysinfo(2).
pub(crate) fn process_count() -> Option<i64> {
    // SAFETY: sysinfo is plain old data; all-zero is a valid value.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: sysinfo fills the struct we own.
    if unsafe { libc::sysinfo(&mut info) } == 0 {
        Some(info.procs as i64)
    } else {
        None
    }
}

impl SignalObserver for NodeSignals {
    fn observe(&self) -> Result<Observations, EvictionError> {
        let mut o = Observations::new();
        let meminfo =
            std::fs::read_to_string("/proc/meminfo").map_err(|e| EvictionError::Observe {
                signal: Signal::MemoryAvailable,
                reason: format!("/proc/meminfo: {e}"),
            })?;
        let total = meminfo_field(&meminfo, "MemTotal");
        let avail = meminfo_field(&meminfo, "MemAvailable");
        if let (Some(capacity), Some(available)) = (total, avail) {
            o.insert(
                Signal::MemoryAvailable,
                Observation {
                    available,
                    capacity,
                },
            );
        }
        let fs = |path: &Path, bytes: Signal, inodes: Signal, o: &mut Observations| {
            let s = fs_stats(path).map_err(|e| EvictionError::Observe {
                signal: bytes,
                reason: e.to_string(),
            })?;
            o.insert(
                bytes,
                Observation {
                    available: s.available_bytes,
                    capacity: s.capacity_bytes,
                },
            );
            o.insert(
                inodes,
                Observation {
                    available: s.inodes_free,
                    capacity: s.inodes,
                },
            );
            Ok::<_, EvictionError>(())
        };
        fs(
            &self.nodefs,
            Signal::NodeFsAvailable,
            Signal::NodeFsInodesFree,
            &mut o,
        )?;
        fs(
            self.imagefs.as_deref().unwrap_or(&self.nodefs),
            Signal::ImageFsAvailable,
            Signal::ImageFsInodesFree,
            &mut o,
        )?;
        let pid_max: Option<i64> = std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .ok()
            .and_then(|s| s.trim().parse().ok());
        if let (Some(max), Some(n)) = (pid_max, process_count()) {
            o.insert(
                Signal::PidAvailable,
                Observation {
                    available: max - n,
                    capacity: max,
                },
            );
        }
        Ok(o)
    }
}

/// The thresholds whose signal is below their value now (grace periods not considered).
pub fn thresholds_met<'a>(thresholds: &'a [Threshold], o: &Observations) -> Vec<&'a Threshold> {
    thresholds
        .iter()
        .filter(|t| {
            o.get(&t.signal)
                .is_some_and(|ob| ob.available < t.value.amount(ob.capacity))
        })
        .collect()
}

/// What one container of a pod uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerUsage {
    /// The container's name.
    pub name: String,
    /// Memory working set in bytes.
    pub memory_bytes: i64,
    /// Ephemeral storage (writable layer and logs) in bytes.
    pub ephemeral_bytes: i64,
}

/// What a pod uses, as the pod workers measure it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodUsage {
    /// The pod.
    pub pod: Pod,
    /// Its containers' usage.
    pub containers: Vec<ContainerUsage>,
    /// Ephemeral storage of the pod's volumes (emptyDir on disk) in bytes.
    pub volume_bytes: i64,
    /// Bytes of each emptyDir on disk, by volume name (for their `sizeLimit`).
    pub empty_dirs: BTreeMap<String, i64>,
    /// Inodes the pod uses.
    pub inodes: i64,
    /// Processes of the pod.
    pub pids: i64,
}

impl PodUsage {
    /// The pod's use of the resource a signal is about, and its request of it.
    pub fn usage_and_request(&self, signal: Signal) -> (i64, i64) {
        match signal.resource() {
            "memory" => (
                self.containers.iter().map(|c| c.memory_bytes).sum(),
                pod_resources(&self.pod)
                    .map(|r| r.requests.memory_bytes)
                    .unwrap_or(0),
            ),
            "ephemeral-storage" => (
                self.containers
                    .iter()
                    .map(|c| c.ephemeral_bytes)
                    .sum::<i64>()
                    + self.volume_bytes,
                container_requests(&self.pod, "ephemeral-storage")
                    .values()
                    .sum(),
            ),
            "inodes" => (self.inodes, 0),
            _ => (self.pids, 0),
        }
    }
}

fn container_requests(pod: &Pod, resource: &str) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
        let r = c.resources.as_ref();
        let q = r
            .and_then(|r| r.requests.as_ref())
            .and_then(|m| m.get(resource))
            .or_else(|| {
                r.and_then(|r| r.limits.as_ref())
                    .and_then(|m| m.get(resource))
            });
        let v = q
            .and_then(|q| quantity::quantity_value(q).ok())
            .unwrap_or(0);
        out.insert(c.name.clone(), v);
    }
    out
}

fn priority(pod: &Pod) -> i32 {
    pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

/// Orders pods for eviction under pressure on `signal`, first to evict first: by QoS class
/// (BestEffort, Burstable, Guaranteed), then by usage above requests (largest first), then by
/// priority (lowest first). Pods whose QoS cannot be read count as BestEffort.
pub fn rank_for_eviction(signal: Signal, pods: &mut [PodUsage]) {
    let qos_rank = |p: &Pod| match pod_qos(p).unwrap_or(QosClass::BestEffort) {
        QosClass::BestEffort => 0,
        QosClass::Burstable => 1,
        QosClass::Guaranteed => 2,
    };
    pods.sort_by_cached_key(|p| {
        let (usage, request) = p.usage_and_request(signal);
        (
            qos_rank(&p.pod),
            std::cmp::Reverse(usage - request),
            priority(&p.pod),
        )
    });
}

/// The reason of an evicted pod's status.
pub const EVICTED_REASON: &str = "Evicted";

/// kubelet's eviction message: the resource, the threshold and what is available, and each
/// container using more than it requested.
pub fn eviction_message(
    signal: Signal,
    threshold: &Threshold,
    o: &Observation,
    p: &PodUsage,
) -> String {
    let resource = signal.resource();
    let fmt = |v: i64| match resource {
        "memory" | "ephemeral-storage" => format_bytes(v),
        _ => v.to_string(),
    };
    let quantity = fmt(threshold.value.amount(o.capacity));
    let mut message = format!(
        "The node was low on resource: {resource}. Threshold quantity: {quantity}, available: {}. ",
        fmt(o.available)
    );
    let requests = match resource {
        "memory" => p
            .pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .map(|c| {
                let r = c
                    .resources
                    .as_ref()
                    .and_then(|r| {
                        r.requests
                            .as_ref()
                            .and_then(|m| m.get("memory"))
                            .or(r.limits.as_ref().and_then(|m| m.get("memory")))
                    })
                    .and_then(|q| quantity::quantity_value(q).ok())
                    .unwrap_or(0);
                (c.name.clone(), r)
            })
            .collect(),
        "ephemeral-storage" => container_requests(&p.pod, "ephemeral-storage"),
        _ => BTreeMap::new(),
    };
    for c in &p.containers {
        let usage = match resource {
            "memory" => c.memory_bytes,
            "ephemeral-storage" => c.ephemeral_bytes,
            _ => continue,
        };
        let request = requests.get(&c.name).copied().unwrap_or(0);
        if usage > request {
            message += &format!(
                "Container {} was using {}, request is {}, has larger consumption of {resource}. ",
                c.name,
                fmt(usage),
                fmt(request)
            );
        }
    }
    message
}

fn ephemeral_limit(c: &k8s_openapi::api::core::v1::Container) -> Option<(i64, String)> {
    let q = c
        .resources
        .as_ref()?
        .limits
        .as_ref()?
        .get("ephemeral-storage")?;
    Some((quantity::quantity_value(q).ok()?, q.0.clone()))
}

/// kubelet's local storage limits, checked every round whatever the thresholds: an emptyDir
/// on disk over its `sizeLimit`, a pod over the sum of its containers' `ephemeral-storage`
/// limits (containers' writable layers and logs plus its emptyDirs), a container over its own
/// limit (writable layer and logs). Each offending pod is evicted at once with reason
/// `Evicted` and kubelet's message, followed by the usage measured. Critical pods
/// ([`is_critical_pod`]) are never evicted, as in kubelet.
pub fn local_storage_evictions(pods: &[PodUsage]) -> Vec<Eviction> {
    let mut out = Vec::new();
    for p in pods.iter().filter(|p| !is_critical_pod(&p.pod)) {
        let Some(spec) = p.pod.spec.as_ref() else {
            continue;
        };
        let evict = |message: String| Eviction {
            pod: PodRef::of(&p.pod),
            signal: Signal::NodeFsAvailable,
            reason: EVICTED_REASON.into(),
            message,
            grace_period: Duration::ZERO,
        };
        let over_size_limit = spec.volumes.iter().flatten().find_map(|v| {
            let ed = v.empty_dir.as_ref()?;
            if ed.medium.as_deref() == Some("Memory") {
                return None;
            }
            let limit = ed.size_limit.as_ref()?;
            let used = *p.empty_dirs.get(&v.name)?;
            (used > quantity::quantity_value(limit).ok()?).then(|| {
                format!(
                    "Usage of EmptyDir volume {:?} exceeds the limit {:?}. Usage: {}. ",
                    v.name,
                    limit.0,
                    format_bytes(used)
                )
            })
        });
        if let Some(m) = over_size_limit {
            out.push(evict(m));
            continue;
        }
        let limits: Vec<i64> = spec
            .containers
            .iter()
            .filter_map(|c| ephemeral_limit(c).map(|l| l.0))
            .collect();
        if !limits.is_empty() {
            let limit: i64 = limits.iter().sum();
            let used = p.containers.iter().map(|c| c.ephemeral_bytes).sum::<i64>()
                + p.empty_dirs.values().sum::<i64>();
            if used > limit {
                out.push(evict(format!(
                    "Pod ephemeral local storage usage exceeds the total limit of containers {}. Usage: {}. ",
                    format_bytes(limit),
                    format_bytes(used)
                )));
                continue;
            }
        }
        let over_container = spec.containers.iter().find_map(|c| {
            let (limit, text) = ephemeral_limit(c)?;
            let used = p
                .containers
                .iter()
                .find(|u| u.name == c.name)?
                .ephemeral_bytes;
            (used > limit).then(|| {
                format!(
                    "Container {} exceeded its local ephemeral storage limit {text:?}. Usage: {}. ",
                    c.name,
                    format_bytes(used)
                )
            })
        });
        if let Some(m) = over_container {
            out.push(evict(m));
        }
    }
    out
}

/// The reason of a pod rejected at admission because of node pressure.
pub const PRESSURE_REJECTION_MESSAGE_PREFIX: &str = "The node had condition: ";

/// Whether a pod is critical as kubelet counts it: a static pod (its source is not the API
/// server), a mirror pod, or a pod of priority at least
/// [`SYSTEM_CRITICAL_PRIORITY`](super::shutdown::SYSTEM_CRITICAL_PRIORITY). Critical pods are
/// admitted under node pressure and never evicted.
pub fn is_critical_pod(pod: &Pod) -> bool {
    super::mirror::is_static_pod(pod)
        || super::mirror::is_mirror_pod(pod)
        || priority(pod) >= super::shutdown::SYSTEM_CRITICAL_PRIORITY
}

/// kubelet's admission under pressure: with `MemoryPressure` a BestEffort pod is rejected,
/// with `DiskPressure` (or `PIDPressure`) every pod, unless it is critical ([`is_critical_pod`]:
/// static, mirror, or priority at least 2000000000) or tolerates the matching
/// `node.kubernetes.io/*-pressure` taint. The error is kubelet's message
/// (`The node had condition: [MemoryPressure]. `); the reason is `Evicted`.
pub fn admit_under_pressure(pod: &Pod, health: &NodeHealth) -> Result<(), String> {
    let spec = pod.spec.as_ref();
    if is_critical_pod(pod) {
        return Ok(());
    }
    let tolerates = |key: &str| {
        spec.and_then(|s| s.tolerations.as_ref())
            .into_iter()
            .flatten()
            .any(|t| {
                let key_ok = match t.key.as_deref() {
                    None | Some("") => t.operator.as_deref() == Some("Exists"),
                    Some(k) => k == key,
                };
                let effect_ok = matches!(t.effect.as_deref(), None | Some("") | Some("NoSchedule"));
                key_ok && effect_ok
            })
    };
    let mut conditions = Vec::new();
    if health.memory_pressure
        && pod_qos(pod).unwrap_or(QosClass::BestEffort) == QosClass::BestEffort
        && !tolerates("node.kubernetes.io/memory-pressure")
    {
        conditions.push("MemoryPressure");
    }
    if health.disk_pressure && !tolerates("node.kubernetes.io/disk-pressure") {
        conditions.push("DiskPressure");
    }
    if health.pid_pressure && !tolerates("node.kubernetes.io/pid-pressure") {
        conditions.push("PIDPressure");
    }
    if conditions.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{PRESSURE_REJECTION_MESSAGE_PREFIX}[{}]. ",
            conditions.join(" ")
        ))
    }
}

/// Reclaims node-level disk before pods are evicted for disk pressure: unused images.
#[async_trait]
pub trait ImageGc: Send + Sync {
    /// Deletes unused images; returns the bytes freed.
    async fn delete_unused_images(&self) -> Result<u64, EvictionError>;
}

/// Reclaims node-level disk before pods are evicted for disk pressure: dead containers.
#[async_trait]
pub trait ContainerGc: Send + Sync {
    /// Removes exited containers and sandboxes that are no longer needed.
    async fn delete_unused_containers(&self) -> Result<(), EvictionError>;
}

/// The eviction manager's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct EvictionConfig {
    /// Hard and soft thresholds.
    pub thresholds: Vec<Threshold>,
    /// The longest grace period given to a pod evicted for a soft threshold
    /// (`evictionMaxPodGracePeriod`; a hard threshold kills at once).
    pub max_pod_grace_period: Duration,
    /// How long a pressure condition stays after its threshold is no longer met
    /// (`evictionPressureTransitionPeriod`, 5 min).
    pub pressure_transition_period: Duration,
}

impl Default for EvictionConfig {
    fn default() -> Self {
        Self {
            thresholds: default_hard_thresholds(),
            max_pod_grace_period: Duration::ZERO,
            pressure_transition_period: Duration::from_secs(300),
        }
    }
}

/// One pod to evict.
#[derive(Debug, Clone, PartialEq)]
pub struct Eviction {
    /// The pod.
    pub pod: PodRef,
    /// The signal under pressure.
    pub signal: Signal,
    /// `Evicted`.
    pub reason: String,
    /// kubelet's message.
    pub message: String,
    /// The grace period to stop the pod with (zero for a hard threshold).
    pub grace_period: Duration,
}

/// What one round of the eviction manager found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EvictionOutcome {
    /// The node conditions under pressure now (`MemoryPressure`, `DiskPressure`, `PIDPressure`).
    pub pressure: BTreeSet<&'static str>,
    /// The pod to evict, at most one per round as kubelet does.
    pub evict: Option<Eviction>,
    /// Whether node-level reclaim (container and image GC) ran.
    pub reclaimed: bool,
    /// Pods over their ephemeral-storage limits or emptyDir `sizeLimit`: all of them go this
    /// round (at once, as kubelet does), and no pod is evicted for a threshold.
    pub limit_evictions: Vec<Eviction>,
}

/// The eviction manager: observes, tracks grace periods, reclaims node-level disk first, then
/// picks the pod to evict. The pod workers stop the chosen pod with the reason and message.
pub struct EvictionManager {
    config: EvictionConfig,
    observer: Arc<dyn SignalObserver>,
    image_gc: Option<Arc<dyn ImageGc>>,
    container_gc: Option<Arc<dyn ContainerGc>>,
    first_met: BTreeMap<(Signal, bool), Instant>,
    last_pressure: BTreeMap<&'static str, Instant>,
}

impl std::fmt::Debug for EvictionManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EvictionManager")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl EvictionManager {
    /// A manager over an observer.
    pub fn new(config: EvictionConfig, observer: Arc<dyn SignalObserver>) -> Self {
        Self {
            config,
            observer,
            image_gc: None,
            container_gc: None,
            first_met: BTreeMap::new(),
            last_pressure: BTreeMap::new(),
        }
    }

    /// Runs image GC before evicting pods for disk pressure.
    #[must_use]
    pub fn with_image_gc(mut self, gc: Arc<dyn ImageGc>) -> Self {
        self.image_gc = Some(gc);
        self
    }

    /// Runs dead-container GC before evicting pods for disk pressure.
    #[must_use]
    pub fn with_container_gc(mut self, gc: Arc<dyn ContainerGc>) -> Self {
        self.container_gc = Some(gc);
        self
    }

    /// One round (kubelet runs it every 10 s): observe, decide pressure, reclaim, pick a pod.
    pub async fn synchronize(
        &mut self,
        pods: &[PodUsage],
    ) -> Result<EvictionOutcome, EvictionError> {
        let now = Instant::now();
        let mut observations = self.observer.observe()?;
        let met: Vec<Threshold> = thresholds_met(&self.config.thresholds, &observations)
            .into_iter()
            .cloned()
            .collect();
        self.first_met
            .retain(|k, _| met.iter().any(|t| (t.signal, t.is_hard()) == *k));
        let mut active: Vec<Threshold> = Vec::new();
        for t in &met {
            let key = (t.signal, t.is_hard());
            if !self.first_met.contains_key(&key) {
                let o = observations.get(&t.signal).copied();
                tracing::warn!(
                    signal = %t.signal,
                    threshold = t.value.amount(o.map_or(0, |o| o.capacity)),
                    available = o.map_or(0, |o| o.available),
                    capacity = o.map_or(0, |o| o.capacity),
                    hard = t.is_hard(),
                    "eviction threshold met"
                );
            }
            let since = *self.first_met.entry(key).or_insert(now);
            if now.duration_since(since) >= t.grace_period {
                active.push(t.clone());
            }
        }
        for t in &met {
            self.last_pressure.insert(t.signal.condition(), now);
        }
        let period = self.config.pressure_transition_period;
        self.last_pressure
            .retain(|_, at| now.duration_since(*at) < period);
        let mut outcome = EvictionOutcome {
            pressure: self.last_pressure.keys().copied().collect(),
            ..Default::default()
        };
        outcome.limit_evictions = local_storage_evictions(pods);
        if !outcome.limit_evictions.is_empty() {
            return Ok(outcome);
        }
        // hard thresholds first, then memory before disk before pids
        active.sort_by_key(|t| (!t.is_hard(), t.signal));
        let Some(mut threshold) = active.first().cloned() else {
            return Ok(outcome);
        };
        if threshold.signal.resource() != "memory" && threshold.signal != Signal::PidAvailable {
            if let Some(gc) = &self.container_gc {
                gc.delete_unused_containers().await?;
                outcome.reclaimed = true;
            }
            if let Some(gc) = &self.image_gc {
                gc.delete_unused_images().await?;
                outcome.reclaimed = true;
            }
            if outcome.reclaimed {
                observations = self.observer.observe()?;
                let still: Vec<&Threshold> = thresholds_met(&active, &observations)
                    .into_iter()
                    .filter(|t| t.signal.resource() != "memory")
                    .collect();
                match still.first() {
                    None => return Ok(outcome),
                    Some(t) => threshold = (*t).clone(),
                }
            }
        }
        // kubelet never evicts a critical pod (static, mirror or system priority): the next
        // pod in rank goes instead.
        let mut ranked: Vec<PodUsage> = pods
            .iter()
            .filter(|p| !is_critical_pod(&p.pod))
            .cloned()
            .collect();
        rank_for_eviction(threshold.signal, &mut ranked);
        let Some(victim) = ranked.first() else {
            return Ok(outcome);
        };
        let ob = observations
            .get(&threshold.signal)
            .copied()
            .unwrap_or(Observation {
                available: 0,
                capacity: 0,
            });
        let grace_period = if threshold.is_hard() {
            Duration::ZERO
        } else {
            let pod_grace = victim
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
                .unwrap_or(30)
                .max(0) as u64;
            Duration::from_secs(pod_grace).min(self.config.max_pod_grace_period)
        };
        outcome.evict = Some(Eviction {
            pod: PodRef::of(&victim.pod),
            signal: threshold.signal,
            reason: EVICTED_REASON.into(),
            message: eviction_message(threshold.signal, &threshold, &ob, victim),
            grace_period,
        });
        Ok(outcome)
    }
}

/// What the eviction loop needs from the pod workers.
#[async_trait]
pub trait PodEvictor: Send + Sync {
    /// The pods on the node with their current usage.
    async fn pod_usage(&self) -> Vec<PodUsage>;
    /// Stops the pod within `eviction.grace_period` and sets its status: phase Failed, reason
    /// `Evicted`, the message.
    async fn evict(&self, eviction: &Eviction) -> Result<(), EvictionError>;
}

impl EvictionManager {
    /// Runs a round every `every` (kubelet: 10 s) until `shutdown`: evicts the chosen pod through
    /// the evictor and publishes the pressure conditions into `health`. Errors are logged and
    /// the loop goes on.
    pub async fn run(
        mut self,
        evictor: Arc<dyn PodEvictor>,
        health: tokio::sync::watch::Sender<NodeHealth>,
        every: Duration,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = interval.tick() => {}
            }
            let pods = evictor.pod_usage().await;
            let outcome = match self.synchronize(&pods).await {
                Ok(o) => o,
                Err(e) => {
                    tracing::warn!(error = %e, "eviction round failed");
                    continue;
                }
            };
            health.send_if_modified(|h| {
                let before = h.clone();
                h.set_pressure(outcome.pressure.iter().copied());
                *h != before
            });
            for e in outcome.limit_evictions.iter().chain(&outcome.evict) {
                tracing::info!(pod = %e.pod, signal = %e.signal, message = %e.message, "evicting pod");
                if let Err(err) = evictor.evict(e).await {
                    tracing::warn!(pod = %e.pod, error = %err, "eviction failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn parses_kubelet_threshold_syntax() {
        let t = parse_thresholds("memory.available<100Mi, nodefs.available<10%,pid.available<1k")
            .unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t[0].signal, Signal::MemoryAvailable);
        assert_eq!(t[0].value, ThresholdValue::Quantity(100 << 20));
        assert_eq!(t[1].value, ThresholdValue::Percentage(10.0));
        assert_eq!(t[1].value.amount(1000), 100);
        assert_eq!(t[2].value, ThresholdValue::Quantity(1000));
        assert!(t.iter().all(Threshold::is_hard));
        assert_eq!(default_hard_thresholds().len(), 4);
    }

    #[test]
    fn rejects_bad_thresholds_by_text() {
        for (bad, why) in [
            ("memory.available>100Mi", "only '<'"),
            ("memory.free<100Mi", "unknown signal"),
            ("memory.available<lots", "invalid quantity"),
            ("nodefs.available<150%", "out of"),
            ("memory.available<1Mi,memory.available<2Mi", "twice"),
        ] {
            let e = parse_thresholds(bad).unwrap_err();
            assert!(e.to_string().contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn soft_thresholds_need_grace_periods() {
        let soft = BTreeMap::from([("memory.available".to_string(), "300Mi".to_string())]);
        let grace = BTreeMap::from([("memory.available".to_string(), "1m30s".to_string())]);
        let t = parse_soft_thresholds(&soft, &grace).unwrap();
        assert_eq!(t[0].grace_period, Duration::from_secs(90));
        assert!(!t[0].is_hard());
        let e = parse_soft_thresholds(&soft, &BTreeMap::new()).unwrap_err();
        assert!(e.to_string().contains("without a grace period"), "{e}");
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1h2m").unwrap(), Duration::from_secs(3720));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5x").is_err());
    }

    fn pod(name: &str, priority: i32, resources: &str) -> Pod {
        serde_saphyr::from_str(&format!(
            "metadata: {{name: {name}, namespace: default, uid: {name}}}\nspec:\n  priority: {priority}\n  containers:\n  - {{name: c, image: i{resources}}}\n"
        ))
        .unwrap()
    }

    fn usage(p: Pod, memory_mi: i64) -> PodUsage {
        PodUsage {
            pod: p,
            containers: vec![ContainerUsage {
                name: "c".into(),
                memory_bytes: memory_mi << 20,
                ephemeral_bytes: 0,
            }],
            ..Default::default()
        }
    }

    fn names(pods: &[PodUsage]) -> Vec<String> {
        pods.iter()
            .map(|p| p.pod.metadata.name.clone().unwrap())
            .collect()
    }

    #[test]
    fn ranking_table() {
        let g = ", resources: {limits: {cpu: 100m, memory: 100Mi}}";
        let b = ", resources: {requests: {memory: 50Mi}}";
        let cases: Vec<(&str, Vec<PodUsage>, Vec<&str>)> = vec![
            (
                "QoS first, even when the guaranteed pod uses most",
                vec![
                    usage(pod("g", 0, g), 100),
                    usage(pod("b", 0, b), 60),
                    usage(pod("be", 0, ""), 1),
                ],
                vec!["be", "b", "g"],
            ),
            (
                "same QoS: usage above requests, largest first",
                vec![
                    usage(pod("b1", 0, b), 55),
                    usage(pod("b2", 0, b), 90),
                    usage(pod("b3", 0, b), 20),
                ],
                vec!["b2", "b1", "b3"],
            ),
            (
                "same QoS and usage: lowest priority first",
                vec![
                    usage(pod("hi", 1000, ""), 10),
                    usage(pod("lo", -5, ""), 10),
                    usage(pod("mid", 0, ""), 10),
                ],
                vec!["lo", "mid", "hi"],
            ),
        ];
        for (what, mut pods, want) in cases {
            rank_for_eviction(Signal::MemoryAvailable, &mut pods);
            assert_eq!(names(&pods), want, "{what}");
        }
    }

    struct FakeObserver(Mutex<Vec<Observations>>);

    impl SignalObserver for FakeObserver {
        fn observe(&self) -> Result<Observations, EvictionError> {
            let mut v = self.0.lock().unwrap();
            Ok(if v.len() > 1 {
                v.remove(0)
            } else {
                v[0].clone()
            })
        }
    }

    fn obs(signal: Signal, available: i64, capacity: i64) -> Observations {
        BTreeMap::from([(
            signal,
            Observation {
                available,
                capacity,
            },
        )])
    }

    #[derive(Default)]
    struct Gc {
        images: std::sync::atomic::AtomicUsize,
        containers: std::sync::atomic::AtomicUsize,
    }

    #[async_trait]
    impl ImageGc for Gc {
        async fn delete_unused_images(&self) -> Result<u64, EvictionError> {
            self.images
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(1 << 30)
        }
    }

    #[async_trait]
    impl ContainerGc for Gc {
        async fn delete_unused_containers(&self) -> Result<(), EvictionError> {
            self.containers
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
    }

    #[tokio::test]
    async fn disk_pressure_reclaims_images_and_containers_before_evicting() {
        // 5% free, threshold 10%; after GC 20% free: nobody is evicted
        let observer = FakeObserver(Mutex::new(vec![
            obs(Signal::NodeFsAvailable, 5, 100),
            obs(Signal::NodeFsAvailable, 20, 100),
        ]));
        let gc = Arc::new(Gc::default());
        let mut m = EvictionManager::new(
            EvictionConfig {
                thresholds: parse_thresholds("nodefs.available<10%").unwrap(),
                ..Default::default()
            },
            Arc::new(observer),
        )
        .with_image_gc(gc.clone())
        .with_container_gc(gc.clone());
        let out = m.synchronize(&[usage(pod("be", 0, ""), 1)]).await.unwrap();
        assert!(out.reclaimed);
        assert_eq!(out.evict, None);
        assert!(out.pressure.contains("DiskPressure"));
        assert_eq!(gc.images.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(gc.containers.load(std::sync::atomic::Ordering::SeqCst), 1);

        // still short after GC: a pod goes, with the ephemeral-storage message
        let observer = FakeObserver(Mutex::new(vec![obs(Signal::NodeFsAvailable, 5, 100)]));
        let mut m = EvictionManager::new(
            EvictionConfig {
                thresholds: parse_thresholds("nodefs.available<10%").unwrap(),
                ..Default::default()
            },
            Arc::new(observer),
        )
        .with_image_gc(gc.clone());
        let mut p = usage(pod("be", 0, ""), 1);
        p.containers[0].ephemeral_bytes = 2048;
        let out = m.synchronize(&[p]).await.unwrap();
        let e = out.evict.unwrap();
        assert_eq!(e.pod.name, "be");
        assert_eq!(
            e.message,
            "The node was low on resource: ephemeral-storage. Threshold quantity: 10, available: 5. Container c was using 2Ki, request is 0, has larger consumption of ephemeral-storage. "
        );
    }

    #[tokio::test(start_paused = true)]
    async fn soft_thresholds_wait_for_their_grace_period() {
        let observer = FakeObserver(Mutex::new(vec![obs(
            Signal::MemoryAvailable,
            100 << 20,
            1 << 30,
        )]));
        let soft = BTreeMap::from([("memory.available".to_string(), "200Mi".to_string())]);
        let grace = BTreeMap::from([("memory.available".to_string(), "30s".to_string())]);
        let mut m = EvictionManager::new(
            EvictionConfig {
                thresholds: parse_soft_thresholds(&soft, &grace).unwrap(),
                max_pod_grace_period: Duration::from_secs(10),
                ..Default::default()
            },
            Arc::new(observer),
        );
        let pods = [usage(pod("be", 0, ""), 10)];
        let out = m.synchronize(&pods).await.unwrap();
        assert!(out.pressure.contains("MemoryPressure"));
        assert_eq!(out.evict, None, "grace period not over");
        tokio::time::advance(Duration::from_secs(31)).await;
        let out = m.synchronize(&pods).await.unwrap();
        let e = out.evict.expect("evicted after the grace period");
        assert_eq!(e.reason, "Evicted");
        assert_eq!(
            e.grace_period,
            Duration::from_secs(10),
            "capped by max pod grace"
        );
    }

    struct Evictor(Mutex<Vec<PodUsage>>, Mutex<Vec<String>>);

    #[async_trait]
    impl PodEvictor for Evictor {
        async fn pod_usage(&self) -> Vec<PodUsage> {
            self.0.lock().unwrap().clone()
        }
        async fn evict(&self, e: &Eviction) -> Result<(), EvictionError> {
            self.0
                .lock()
                .unwrap()
                .retain(|p| p.pod.metadata.name.as_deref() != Some(e.pod.name.as_str()));
            self.1.lock().unwrap().push(e.pod.name.clone());
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_loop_evicts_one_pod_per_round_and_reports_pressure() {
        let observer = FakeObserver(Mutex::new(vec![obs(
            Signal::MemoryAvailable,
            50 << 20,
            1 << 30,
        )]));
        let m = EvictionManager::new(EvictionConfig::default(), Arc::new(observer));
        let g = ", resources: {limits: {cpu: 100m, memory: 100Mi}}";
        let evictor = Arc::new(Evictor(
            Mutex::new(vec![
                usage(pod("g", 0, g), 90),
                usage(pod("be", 0, ""), 5),
                usage(pod("b", 0, ", resources: {requests: {memory: 10Mi}}"), 50),
            ]),
            Mutex::default(),
        ));
        let (health_tx, health_rx) = tokio::sync::watch::channel(NodeHealth::default());
        let start = tokio::time::Instant::now();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task =
            tokio::spawn(
                m.run(evictor.clone(), health_tx, Duration::from_secs(10), async {
                    let _ = stopped.await;
                }),
            );
        tokio::time::sleep(Duration::from_secs(15)).await;
        assert!(health_rx.borrow().memory_pressure);
        assert_eq!(
            *evictor.1.lock().unwrap(),
            ["be", "b"],
            "one pod per 10 s round"
        );
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(*evictor.1.lock().unwrap(), ["be", "b", "g"]);
        assert!(start.elapsed() >= Duration::from_secs(25));
        stop.send(()).unwrap();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn memory_threshold_above_usage_evicts_besteffort_first() {
        // the real signals of this machine, with a threshold above what is available
        let dir = tempfile::tempdir().unwrap();
        let signals = NodeSignals {
            nodefs: dir.path().into(),
            imagefs: None,
        };
        let observed = signals.observe().unwrap();
        let mem = observed[&Signal::MemoryAvailable];
        assert!(mem.available > 0 && mem.available <= mem.capacity);
        assert!(observed.contains_key(&Signal::PidAvailable));
        let mut m = EvictionManager::new(
            EvictionConfig {
                thresholds: parse_thresholds(&format!("memory.available<{}", mem.capacity))
                    .unwrap(),
                ..Default::default()
            },
            Arc::new(signals),
        );
        let g = ", resources: {limits: {cpu: 100m, memory: 100Mi}}";
        let pods = [
            usage(pod("guaranteed", 0, g), 90),
            usage(
                pod("burstable", 0, ", resources: {requests: {memory: 10Mi}}"),
                50,
            ),
            usage(pod("besteffort", 0, ""), 5),
        ];
        let out = m.synchronize(&pods).await.unwrap();
        assert!(out.pressure.contains("MemoryPressure"));
        let e = out.evict.unwrap();
        assert_eq!(e.pod.name, "besteffort");
        assert_eq!(e.reason, "Evicted");
        assert_eq!(e.grace_period, Duration::ZERO);
        assert!(
            e.message
                .starts_with("The node was low on resource: memory. Threshold quantity: "),
            "{}",
            e.message
        );
        assert!(
            e.message.ends_with(
                "Container c was using 5Mi, request is 0, has larger consumption of memory. "
            ),
            "{}",
            e.message
        );
    }

    #[test]
    fn local_storage_limits_evict_with_kubelets_messages() {
        let spec = |extra: &str| -> Pod {
            serde_saphyr::from_str(&format!(
                "metadata: {{name: p, namespace: default, uid: p}}\nspec:\n  volumes:\n  - {{name: scratch, emptyDir: {{sizeLimit: 1Mi}}}}\n  - {{name: ram, emptyDir: {{medium: Memory, sizeLimit: 1Ki}}}}\n  - {{name: free, emptyDir: {{}}}}\n  containers:\n  - {{name: a, image: i{extra}}}\n  - {{name: b, image: i}}\n"
            ))
            .unwrap()
        };
        let usage = |pod: Pod, a: i64, scratch: i64, free: i64| PodUsage {
            pod,
            containers: vec![
                ContainerUsage {
                    name: "a".into(),
                    ephemeral_bytes: a,
                    ..Default::default()
                },
                ContainerUsage {
                    name: "b".into(),
                    ephemeral_bytes: 1 << 20,
                    ..Default::default()
                },
            ],
            empty_dirs: BTreeMap::from([
                ("scratch".to_string(), scratch),
                ("free".to_string(), free),
            ]),
            ..Default::default()
        };
        let limit = ", resources: {limits: {ephemeral-storage: 4Mi}}";
        let cases = [
            (
                "within every limit",
                usage(spec(limit), 1 << 20, 1 << 20, 1 << 20),
                None,
            ),
            (
                "an emptyDir over its sizeLimit (the Memory one does not count)",
                usage(spec(""), 0, 3 << 20, 0),
                Some(
                    "Usage of EmptyDir volume \"scratch\" exceeds the limit \"1Mi\". Usage: 3Mi. ",
                ),
            ),
            (
                "the pod over the sum of its containers' limits (emptyDirs count)",
                usage(spec(limit), 1 << 20, 1 << 20, 2 << 20),
                Some(
                    "Pod ephemeral local storage usage exceeds the total limit of containers 4Mi. Usage: 5Mi. ",
                ),
            ),
            (
                "no limit at all: nothing to exceed",
                usage(spec(""), 100 << 20, 0, 100 << 20),
                None,
            ),
        ];
        for (what, u, want) in cases {
            let got = local_storage_evictions(std::slice::from_ref(&u));
            assert_eq!(got.first().map(|e| e.message.as_str()), want, "{what}");
            if let Some(e) = got.first() {
                assert_eq!(e.reason, "Evicted");
                assert_eq!(e.grace_period, Duration::ZERO);
                assert_eq!(e.pod.name, "p");
            }
        }
        // a container over its own limit (its writable layer and logs), within the pod's sum
        let both: Pod = serde_saphyr::from_str(
            "metadata: {name: p, namespace: default, uid: p}\nspec:\n  containers:\n  - {name: a, image: i, resources: {limits: {ephemeral-storage: 1Mi}}}\n  - {name: b, image: i, resources: {limits: {ephemeral-storage: 10Mi}}}\n",
        )
        .unwrap();
        let mut u = usage(both, 2 << 20, 0, 0);
        u.empty_dirs.clear();
        let got = local_storage_evictions(&[u]);
        assert_eq!(
            got[0].message,
            "Container a exceeded its local ephemeral storage limit \"1Mi\". Usage: 2Mi. "
        );
    }

    #[tokio::test]
    async fn limit_evictions_come_before_thresholds_and_take_every_offender() {
        let observer = FakeObserver(Mutex::new(vec![obs(Signal::MemoryAvailable, 0, 1 << 30)]));
        let mut m = EvictionManager::new(EvictionConfig::default(), Arc::new(observer));
        let over: Pod = serde_saphyr::from_str(
            "metadata: {name: over, namespace: default, uid: over}\nspec:\n  volumes: [{name: v, emptyDir: {sizeLimit: 1Ki}}]\n  containers: [{name: c, image: i}]\n",
        )
        .unwrap();
        let mut u = usage(over, 1);
        u.empty_dirs.insert("v".into(), 4096);
        let out = m
            .synchronize(&[u, usage(pod("be", 0, ""), 5)])
            .await
            .unwrap();
        assert_eq!(out.limit_evictions.len(), 1);
        assert_eq!(out.limit_evictions[0].pod.name, "over");
        assert_eq!(
            out.evict, None,
            "no threshold eviction in a round that evicted for limits"
        );
        assert!(out.pressure.contains("MemoryPressure"));
    }

    #[test]
    fn admission_under_pressure_follows_kubelet() {
        let be = pod("be", 0, "");
        let burstable = pod("b", 0, ", resources: {requests: {memory: 10Mi}}");
        let critical = pod("crit", 2_000_000_000, "");
        let tolerant: Pod = serde_saphyr::from_str(
            "metadata: {name: t, namespace: default, uid: t}\nspec:\n  tolerations: [{key: node.kubernetes.io/memory-pressure, operator: Exists, effect: NoSchedule}]\n  containers: [{name: c, image: i}]\n",
        )
        .unwrap();
        let memory = NodeHealth {
            memory_pressure: true,
            ..Default::default()
        };
        let disk = NodeHealth {
            disk_pressure: true,
            ..Default::default()
        };
        assert_eq!(
            admit_under_pressure(&be, &memory),
            Err("The node had condition: [MemoryPressure]. ".into())
        );
        assert_eq!(admit_under_pressure(&burstable, &memory), Ok(()));
        assert_eq!(admit_under_pressure(&critical, &memory), Ok(()));
        assert_eq!(admit_under_pressure(&tolerant, &memory), Ok(()));
        assert_eq!(
            admit_under_pressure(&burstable, &disk),
            Err("The node had condition: [DiskPressure]. ".into())
        );
        assert_eq!(admit_under_pressure(&critical, &disk), Ok(()));
        assert_eq!(admit_under_pressure(&be, &NodeHealth::default()), Ok(()));
        // A static pod (from a manifest file) and a mirror pod are critical, as in kubelet.
        let annotated = |key: &str, value: &str| {
            let mut p = pod("s", 0, "");
            p.metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(key.into(), value.into());
            p
        };
        let from_file = annotated("kubernetes.io/config.source", "file");
        let mirror = annotated("kubernetes.io/config.mirror", "abc");
        let from_api = annotated("kubernetes.io/config.source", "api");
        for p in [&from_file, &mirror] {
            assert!(is_critical_pod(p));
            assert_eq!(admit_under_pressure(p, &disk), Ok(()));
            assert_eq!(admit_under_pressure(p, &memory), Ok(()));
        }
        assert!(!is_critical_pod(&from_api));
        assert!(admit_under_pressure(&from_api, &disk).is_err());
    }
}
