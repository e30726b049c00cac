//! Quality of service of a pod (Guaranteed, Burstable, BestEffort) and the resources its pod
//! cgroup gets: CPU shares, CFS quota, memory limit, from the requests and limits of its
//! containers, init containers (restartable "sidecars" included) and pod overhead, by kubelet's rules.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde::{Deserialize, Serialize};

use super::quantity::{QuantityError, quantity_milli, quantity_value};

/// The QoS class of a pod, as `status.qosClass` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum QosClass {
    /// Every container has CPU and memory limits equal to its requests.
    Guaranteed,
    /// Some requests or limits, but not Guaranteed.
    Burstable,
    /// No CPU or memory request or limit at all.
    BestEffort,
}

impl QosClass {
    /// The name Kubernetes uses (`Guaranteed`, `Burstable`, `BestEffort`).
    pub fn as_str(self) -> &'static str {
        match self {
            QosClass::Guaranteed => "Guaranteed",
            QosClass::Burstable => "Burstable",
            QosClass::BestEffort => "BestEffort",
        }
    }

    /// The cgroup directory of the class under the kubepods root (`None` for Guaranteed pods,
    /// which live directly under the root).
    pub fn cgroup_dir(self) -> Option<&'static str> {
        match self {
            QosClass::Guaranteed => None,
            QosClass::Burstable => Some("burstable"),
            QosClass::BestEffort => Some("besteffort"),
        }
    }
}

impl std::fmt::Display for QosClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A quantity of a pod's spec that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {source}")]
pub struct ResourceError {
    /// The field at fault, e.g. `spec.containers[0].resources.limits.cpu`.
    pub field: String,
    /// The parse error.
    #[source]
    pub source: QuantityError,
}

/// CPU (millicores) and memory (bytes) of one container or of a whole pod.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuMemory {
    /// CPU in millicores.
    pub cpu_milli: i64,
    /// Memory in bytes.
    pub memory_bytes: i64,
}

impl CpuMemory {
    fn add(self, o: CpuMemory) -> CpuMemory {
        CpuMemory {
            cpu_milli: self.cpu_milli + o.cpu_milli,
            memory_bytes: self.memory_bytes + o.memory_bytes,
        }
    }
    fn max(self, o: CpuMemory) -> CpuMemory {
        CpuMemory {
            cpu_milli: self.cpu_milli.max(o.cpu_milli),
            memory_bytes: self.memory_bytes.max(o.memory_bytes),
        }
    }
}

/// Requests and limits of one container, with the API server's defaulting applied (a missing
/// request equals the limit when the limit is set). `None` limit = unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ContainerResources {
    requests: CpuMemory,
    cpu_limit: Option<i64>,
    memory_limit: Option<i64>,
}

fn read(
    map: Option<&BTreeMap<String, Quantity>>,
    name: &str,
    field: &str,
    cpu: bool,
) -> Result<Option<i64>, ResourceError> {
    let Some(q) = map.and_then(|m| m.get(name)) else {
        return Ok(None);
    };
    let v = if cpu {
        quantity_milli(q)
    } else {
        quantity_value(q)
    };
    v.map(Some).map_err(|source| ResourceError {
        field: format!("{field}.{name}"),
        source,
    })
}

fn resources_of(
    r: Option<&ResourceRequirements>,
    field: &str,
) -> Result<ContainerResources, ResourceError> {
    let requests = r.and_then(|r| r.requests.as_ref());
    let limits = r.and_then(|r| r.limits.as_ref());
    let rf = format!("{field}.requests");
    let lf = format!("{field}.limits");
    let cpu_limit = read(limits, "cpu", &lf, true)?;
    let memory_limit = read(limits, "memory", &lf, false)?;
    let cpu_req = read(requests, "cpu", &rf, true)?.or(cpu_limit);
    let mem_req = read(requests, "memory", &rf, false)?.or(memory_limit);
    Ok(ContainerResources {
        requests: CpuMemory {
            cpu_milli: cpu_req.unwrap_or(0),
            memory_bytes: mem_req.unwrap_or(0),
        },
        cpu_limit,
        memory_limit,
    })
}

fn is_sidecar(c: &Container) -> bool {
    c.restart_policy.as_deref() == Some("Always")
}

/// The QoS class of a pod, by kubelet's `GetPodQOS`: app and init containers count; only CPU and
/// memory matter; zero quantities count as unset; pod-level `spec.resources` win when set.
pub fn pod_qos(pod: &Pod) -> Result<QosClass, ResourceError> {
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(QosClass::BestEffort);
    };
    let mut sets: Vec<(Option<&ResourceRequirements>, String)> = Vec::new();
    if spec.resources.is_some() {
        sets.push((spec.resources.as_ref(), "spec.resources".into()));
    } else {
        for (i, c) in spec.containers.iter().enumerate() {
            sets.push((
                c.resources.as_ref(),
                format!("spec.containers[{i}].resources"),
            ));
        }
        for (i, c) in spec.init_containers.iter().flatten().enumerate() {
            sets.push((
                c.resources.as_ref(),
                format!("spec.initContainers[{i}].resources"),
            ));
        }
    }
    let mut requests: BTreeMap<&str, i64> = BTreeMap::new();
    let mut limits: BTreeMap<&str, i64> = BTreeMap::new();
    let mut guaranteed = true;
    for (r, field) in &sets {
        let req = r.and_then(|r| r.requests.as_ref());
        let lim = r.and_then(|r| r.limits.as_ref());
        for (name, cpu) in [("cpu", true), ("memory", false)] {
            if let Some(v) = read(req, name, &format!("{field}.requests"), cpu)?
                && v != 0
            {
                *requests.entry(name).or_default() += v;
            }
        }
        let mut container_limits = 0;
        for (name, cpu) in [("cpu", true), ("memory", false)] {
            if let Some(v) = read(lim, name, &format!("{field}.limits"), cpu)?
                && v != 0
            {
                container_limits += 1;
                *limits.entry(name).or_default() += v;
            }
        }
        if container_limits != 2 {
            guaranteed = false;
        }
    }
    if requests.is_empty() && limits.is_empty() {
        return Ok(QosClass::BestEffort);
    }
    if guaranteed {
        // a request left out defaults to the limit (the API server's defaulting)
        for (name, lim) in &limits {
            if requests.get(name).is_some_and(|r| r != lim) {
                guaranteed = false;
            }
        }
        if guaranteed && limits.len() == 2 {
            return Ok(QosClass::Guaranteed);
        }
    }
    Ok(QosClass::Burstable)
}

/// The requests and limits of a whole pod, as kubelet's `PodRequests` / `PodLimits` compute them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodResources {
    /// The effective requests: max(sum of app containers and sidecars, largest init container
    /// plus the sidecars started before it) plus the pod overhead.
    pub requests: CpuMemory,
    /// The CPU limit in millicores when every container declares one (plus overhead).
    pub cpu_limit: Option<i64>,
    /// The memory limit in bytes when every container declares one (plus overhead).
    pub memory_limit: Option<i64>,
}

/// The requests and limits of a pod (see [`PodResources`]). Pod-level `spec.resources` replace the
/// container sums when set.
pub fn pod_resources(pod: &Pod) -> Result<PodResources, ResourceError> {
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(PodResources::default());
    };
    let overhead = {
        let o = spec.overhead.as_ref();
        CpuMemory {
            cpu_milli: read(o, "cpu", "spec.overhead", true)?.unwrap_or(0),
            memory_bytes: read(o, "memory", "spec.overhead", false)?.unwrap_or(0),
        }
    };
    if spec.resources.is_some() {
        let r = resources_of(spec.resources.as_ref(), "spec.resources")?;
        return Ok(PodResources {
            requests: r.requests.add(overhead),
            cpu_limit: r.cpu_limit.map(|l| l + overhead.cpu_milli),
            memory_limit: r.memory_limit.map(|l| l + overhead.memory_bytes),
        });
    }
    // requests, and limits as CpuMemory with "declared" flags
    let mut req_sum = CpuMemory::default();
    let mut lim_sum = CpuMemory::default();
    let (mut cpu_declared, mut mem_declared) = (true, true);
    for (i, c) in spec.containers.iter().enumerate() {
        let r = resources_of(
            c.resources.as_ref(),
            &format!("spec.containers[{i}].resources"),
        )?;
        req_sum = req_sum.add(r.requests);
        cpu_declared &= r.cpu_limit.is_some();
        mem_declared &= r.memory_limit.is_some();
        lim_sum = lim_sum.add(CpuMemory {
            cpu_milli: r.cpu_limit.unwrap_or(0),
            memory_bytes: r.memory_limit.unwrap_or(0),
        });
    }
    let mut sidecar_req = CpuMemory::default();
    let mut sidecar_lim = CpuMemory::default();
    let mut init_req_max = CpuMemory::default();
    let mut init_lim_max = CpuMemory::default();
    for (i, c) in spec.init_containers.iter().flatten().enumerate() {
        let r = resources_of(
            c.resources.as_ref(),
            &format!("spec.initContainers[{i}].resources"),
        )?;
        let lim = CpuMemory {
            cpu_milli: r.cpu_limit.unwrap_or(0),
            memory_bytes: r.memory_limit.unwrap_or(0),
        };
        cpu_declared &= r.cpu_limit.is_some();
        mem_declared &= r.memory_limit.is_some();
        if is_sidecar(c) {
            sidecar_req = sidecar_req.add(r.requests);
            sidecar_lim = sidecar_lim.add(lim);
            req_sum = req_sum.add(r.requests);
            lim_sum = lim_sum.add(lim);
            init_req_max = init_req_max.max(sidecar_req);
            init_lim_max = init_lim_max.max(sidecar_lim);
        } else {
            init_req_max = init_req_max.max(r.requests.add(sidecar_req));
            init_lim_max = init_lim_max.max(lim.add(sidecar_lim));
        }
    }
    let requests = req_sum.max(init_req_max).add(overhead);
    let limits = lim_sum.max(init_lim_max).add(overhead);
    Ok(PodResources {
        requests,
        cpu_limit: cpu_declared.then_some(limits.cpu_milli),
        memory_limit: mem_declared.then_some(limits.memory_bytes),
    })
}

/// The smallest `cpu.shares` value (cgroup v1).
pub const MIN_SHARES: u64 = 2;
/// The largest `cpu.shares` value (cgroup v1).
pub const MAX_SHARES: u64 = 262_144;
/// The default CFS period in microseconds.
pub const DEFAULT_CFS_PERIOD_US: u64 = 100_000;
/// The smallest CFS quota in microseconds.
pub const MIN_QUOTA_US: i64 = 1000;

/// `cpu.shares` for millicores, as kubelet's `MilliCPUToShares`: max(2, m*1024/1000), at most 262144.
pub fn milli_cpu_to_shares(milli: i64) -> u64 {
    if milli <= 0 {
        return MIN_SHARES;
    }
    ((milli as u64) * 1024 / 1000).clamp(MIN_SHARES, MAX_SHARES)
}

/// The CFS quota in microseconds for a CPU limit in millicores and a period, as kubelet's
/// `MilliCPUToQuota` (at least 1000 us); `None` for no limit.
pub fn milli_cpu_to_quota(milli: i64, period_us: u64) -> Option<i64> {
    if milli <= 0 {
        return None;
    }
    Some((milli * period_us as i64 / 1000).max(MIN_QUOTA_US))
}

/// cgroup v2 `cpu.weight` from v1 shares, as runc/kubelet convert: 1 + ((shares-2)*9999)/262142.
pub fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(MIN_SHARES, MAX_SHARES);
    1 + ((shares - 2) * 9999) / 262_142
}

/// The resources a pod cgroup gets (kubelet's `ResourceConfigForPod`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupResources {
    /// `cpu.shares` (v1; converted to `cpu.weight` on v2).
    pub cpu_shares: u64,
    /// CFS quota in microseconds per period; `None` = unlimited.
    pub cpu_quota_us: Option<i64>,
    /// CFS period in microseconds.
    pub cpu_period_us: u64,
    /// Memory limit in bytes; `None` = unlimited.
    pub memory_limit_bytes: Option<i64>,
}

/// The pod cgroup's resources: shares from CPU requests, quota from CPU limits (when every
/// container declares one and `enforce_cpu_limits`), memory limit from memory limits; BestEffort
/// pods get the minimum shares and no limits.
pub fn pod_cgroup_resources(
    pod: &Pod,
    period_us: u64,
    enforce_cpu_limits: bool,
) -> Result<CgroupResources, ResourceError> {
    let qos = pod_qos(pod)?;
    let r = pod_resources(pod)?;
    if qos == QosClass::BestEffort {
        return Ok(CgroupResources {
            cpu_shares: MIN_SHARES,
            cpu_quota_us: None,
            cpu_period_us: period_us,
            memory_limit_bytes: None,
        });
    }
    Ok(CgroupResources {
        cpu_shares: milli_cpu_to_shares(r.requests.cpu_milli),
        cpu_quota_us: if enforce_cpu_limits {
            r.cpu_limit.and_then(|l| milli_cpu_to_quota(l, period_us))
        } else {
            None
        },
        cpu_period_us: period_us,
        memory_limit_bytes: r.memory_limit.filter(|l| *l > 0),
    })
}

/// `oom_score_adj` of Guaranteed containers (and critical pods).
pub const GUARANTEED_OOM_SCORE_ADJ: i64 = -997;
/// `oom_score_adj` of BestEffort containers.
pub const BESTEFFORT_OOM_SCORE_ADJ: i64 = 1000;

/// A container's `oom_score_adj`, as kubelet's `GetContainerOOMScoreAdjust`: -997 for Guaranteed
/// pods, 1000 for BestEffort, else `1000 - 1000*memoryRequest/memoryCapacity` kept in [3, 999],
/// so that the pods using more than they asked for go first.
pub fn oom_score_adj(
    qos: QosClass,
    container: &Container,
    memory_capacity: i64,
) -> Result<i64, ResourceError> {
    match qos {
        QosClass::Guaranteed => return Ok(GUARANTEED_OOM_SCORE_ADJ),
        QosClass::BestEffort => return Ok(BESTEFFORT_OOM_SCORE_ADJ),
        QosClass::Burstable => {}
    }
    let r = resources_of(
        container.resources.as_ref(),
        &format!("container {}.resources", container.name),
    )?;
    if memory_capacity <= 0 {
        return Ok(BESTEFFORT_OOM_SCORE_ADJ - 1);
    }
    let adj = 1000 - (1000 * r.requests.memory_bytes as i128 / memory_capacity as i128) as i64;
    Ok(adj.clamp(
        1000 + GUARANTEED_OOM_SCORE_ADJ,
        BESTEFFORT_OOM_SCORE_ADJ - 1,
    ))
}

/// The CRI resources of one container (kubelet's `generateLinuxContainerResources`): shares from
/// its CPU request, quota from its CPU limit, its memory limit, and the `oom_score_adj` of its
/// pod's QoS class.
pub fn container_linux_resources(
    pod: &Pod,
    container: &Container,
    memory_capacity: i64,
    period_us: u64,
    enforce_cpu_limits: bool,
) -> Result<node_core::cri::LinuxContainerResources, ResourceError> {
    let qos = pod_qos(pod)?;
    let r = resources_of(
        container.resources.as_ref(),
        &format!("container {}.resources", container.name),
    )?;
    let quota = if enforce_cpu_limits {
        r.cpu_limit.and_then(|l| milli_cpu_to_quota(l, period_us))
    } else {
        None
    };
    Ok(node_core::cri::LinuxContainerResources {
        cpu_shares: milli_cpu_to_shares(r.requests.cpu_milli) as i64,
        cpu_quota: quota.unwrap_or(0),
        cpu_period: if quota.is_some() { period_us as i64 } else { 0 },
        memory_limit_in_bytes: r.memory_limit.unwrap_or(0),
        oom_score_adj: oom_score_adj(qos, container, memory_capacity)?,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        serde_saphyr::from_str(yaml).expect("pod yaml")
    }

    fn with_containers(containers: &str) -> Pod {
        pod(&format!(
            "metadata: {{name: p, uid: u1}}\nspec:\n  containers:\n{containers}"
        ))
    }

    #[test]
    fn qos_classes_by_kubernetes_rules() {
        let cases: &[(&str, &str, QosClass)] = &[
            (
                "no resources",
                "  - {name: a, image: i}\n",
                QosClass::BestEffort,
            ),
            (
                "requests == limits",
                "  - {name: a, image: i, resources: {requests: {cpu: 100m, memory: 64Mi}, limits: {cpu: 100m, memory: 64Mi}}}\n",
                QosClass::Guaranteed,
            ),
            (
                "limits only: requests default to them",
                "  - {name: a, image: i, resources: {limits: {cpu: '1', memory: 1Gi}}}\n",
                QosClass::Guaranteed,
            ),
            (
                "requests below limits",
                "  - {name: a, image: i, resources: {requests: {cpu: 50m, memory: 64Mi}, limits: {cpu: 100m, memory: 64Mi}}}\n",
                QosClass::Burstable,
            ),
            (
                "memory limit only",
                "  - {name: a, image: i, resources: {limits: {memory: 64Mi}}}\n",
                QosClass::Burstable,
            ),
            (
                "one guaranteed, one besteffort container",
                "  - {name: a, image: i, resources: {limits: {cpu: 1, memory: 1Gi}}}\n  - {name: b, image: i}\n",
                QosClass::Burstable,
            ),
            (
                "zero quantities count as unset",
                "  - {name: a, image: i, resources: {requests: {cpu: '0', memory: '0'}}}\n",
                QosClass::BestEffort,
            ),
            (
                "other resources do not count",
                "  - {name: a, image: i, resources: {limits: {ephemeral-storage: 1Gi}}}\n",
                QosClass::BestEffort,
            ),
        ];
        for (what, containers, want) in cases {
            assert_eq!(
                pod_qos(&with_containers(containers)).unwrap(),
                *want,
                "{what}"
            );
        }
    }

    #[test]
    fn init_containers_count_for_qos() {
        let p = pod(r#"
metadata: {name: p}
spec:
  initContainers:
  - {name: init, image: i}
  containers:
  - {name: a, image: i, resources: {limits: {cpu: 1, memory: 1Gi}}}
"#);
        assert_eq!(pod_qos(&p).unwrap(), QosClass::Burstable);
    }

    #[test]
    fn pod_sums_with_init_sidecars_and_overhead() {
        let p = pod(r#"
metadata: {name: p}
spec:
  overhead: {cpu: 10m, memory: 1Mi}
  initContainers:
  - {name: big-init, image: i, resources: {requests: {cpu: '2', memory: 10Mi}, limits: {cpu: '2', memory: 10Mi}}}
  - {name: sidecar, image: i, restartPolicy: Always, resources: {requests: {cpu: 100m, memory: 5Mi}, limits: {cpu: 100m, memory: 5Mi}}}
  containers:
  - {name: a, image: i, resources: {requests: {cpu: 200m, memory: 20Mi}, limits: {cpu: 300m, memory: 20Mi}}}
  - {name: b, image: i, resources: {requests: {cpu: 300m, memory: 30Mi}, limits: {cpu: 300m, memory: 30Mi}}}
"#);
        let r = pod_resources(&p).unwrap();
        // apps 500m/50Mi + sidecar 100m/5Mi = 600m/55Mi; init max 2/10Mi; + overhead
        assert_eq!(r.requests.cpu_milli, 2000 + 10);
        assert_eq!(r.requests.memory_bytes, (55 + 1) << 20);
        assert_eq!(r.cpu_limit, Some(2000 + 10));
        assert_eq!(r.memory_limit, Some((55 + 1) << 20));
    }

    #[test]
    fn a_container_without_limit_makes_the_pod_unlimited() {
        let p = with_containers(
            "  - {name: a, image: i, resources: {requests: {cpu: 100m}, limits: {cpu: 200m, memory: 1Gi}}}\n  - {name: b, image: i, resources: {requests: {cpu: 100m}}}\n",
        );
        let r = pod_resources(&p).unwrap();
        assert_eq!(r.requests.cpu_milli, 200);
        assert_eq!(r.cpu_limit, None);
        assert_eq!(r.memory_limit, None);
        let cg = pod_cgroup_resources(&p, DEFAULT_CFS_PERIOD_US, true).unwrap();
        assert_eq!(cg.cpu_shares, 204);
        assert_eq!(cg.cpu_quota_us, None);
        assert_eq!(cg.memory_limit_bytes, None);
    }

    #[test]
    fn shares_quota_and_weight_conversions() {
        assert_eq!(milli_cpu_to_shares(0), 2);
        assert_eq!(milli_cpu_to_shares(1), 2);
        assert_eq!(milli_cpu_to_shares(100), 102);
        assert_eq!(milli_cpu_to_shares(1000), 1024);
        assert_eq!(milli_cpu_to_shares(1_000_000), MAX_SHARES);
        assert_eq!(milli_cpu_to_quota(0, 100_000), None);
        assert_eq!(milli_cpu_to_quota(5, 100_000), Some(1000));
        assert_eq!(milli_cpu_to_quota(250, 100_000), Some(25_000));
        assert_eq!(milli_cpu_to_quota(2000, 100_000), Some(200_000));
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
    }

    #[test]
    fn guaranteed_and_besteffort_cgroup_resources() {
        let g = with_containers(
            "  - {name: a, image: i, resources: {limits: {cpu: 250m, memory: 64Mi}}}\n",
        );
        let cg = pod_cgroup_resources(&g, DEFAULT_CFS_PERIOD_US, true).unwrap();
        assert_eq!(
            cg,
            CgroupResources {
                cpu_shares: 256,
                cpu_quota_us: Some(25_000),
                cpu_period_us: 100_000,
                memory_limit_bytes: Some(64 << 20)
            }
        );
        let be = with_containers("  - {name: a, image: i}\n");
        let cg = pod_cgroup_resources(&be, DEFAULT_CFS_PERIOD_US, true).unwrap();
        assert_eq!(cg.cpu_shares, 2);
        assert_eq!(cg.cpu_quota_us, None);
        assert_eq!(cg.memory_limit_bytes, None);
    }

    #[test]
    fn oom_score_adj_by_qos() {
        let g = with_containers(
            "  - {name: a, image: i, resources: {limits: {cpu: 1, memory: 1Gi}}}\n",
        );
        let c = &g.spec.as_ref().unwrap().containers[0];
        assert_eq!(
            oom_score_adj(QosClass::Guaranteed, c, 8 << 30).unwrap(),
            -997
        );
        let b = with_containers(
            "  - {name: a, image: i, resources: {requests: {memory: 2Gi}}}\n  - {name: z, image: i, resources: {requests: {cpu: 1}}}\n  - {name: huge, image: i, resources: {requests: {memory: 8Gi}}}\n",
        );
        let cs = &b.spec.as_ref().unwrap().containers;
        assert_eq!(
            oom_score_adj(QosClass::Burstable, &cs[0], 8 << 30).unwrap(),
            750
        );
        assert_eq!(
            oom_score_adj(QosClass::Burstable, &cs[1], 8 << 30).unwrap(),
            999
        );
        assert_eq!(
            oom_score_adj(QosClass::Burstable, &cs[2], 8 << 30).unwrap(),
            3
        );
        let be = with_containers("  - {name: a, image: i}\n");
        let r = container_linux_resources(
            &be,
            &be.spec.as_ref().unwrap().containers[0],
            8 << 30,
            DEFAULT_CFS_PERIOD_US,
            true,
        )
        .unwrap();
        assert_eq!(
            (
                r.cpu_shares,
                r.cpu_quota,
                r.memory_limit_in_bytes,
                r.oom_score_adj
            ),
            (2, 0, 0, 1000)
        );
        let r = container_linux_resources(&g, c, 8 << 30, DEFAULT_CFS_PERIOD_US, true).unwrap();
        assert_eq!(
            (
                r.cpu_shares,
                r.cpu_quota,
                r.cpu_period,
                r.memory_limit_in_bytes,
                r.oom_score_adj
            ),
            (1024, 100_000, 100_000, 1 << 30, -997)
        );
    }

    #[test]
    fn bad_quantity_names_its_field() {
        let p = with_containers(
            "  - {name: a, image: i}\n  - {name: b, image: i, resources: {limits: {memory: 12Zi}}}\n",
        );
        let e = pod_qos(&p).unwrap_err();
        assert_eq!(e.field, "spec.containers[1].resources.limits.memory");
        assert!(e.to_string().contains("12Zi"), "{e}");
    }
}
