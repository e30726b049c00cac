//! The pod cgroup hierarchy `<root>/{burstable,besteffort}/pod<uid>` (Guaranteed pods directly
//! under the root), managed with cgroups-rs on cgroup v1 and v2, and the CRI `cgroup_parent`
//! the runtime is given for a pod's sandbox and containers (cgroupfs driver form).
//!
//! Layouts: a pure v2 host (`/sys/fs/cgroup` is cgroup2) uses the unified hierarchy; a v1 or
//! hybrid host (v1 controllers, cgroup2 at `/sys/fs/cgroup/unified` for process tracking only, as
//! systemd's hybrid mode mounts it) uses the v1 controllers, because the unified hierarchy of a
//! hybrid host holds no controller and cannot limit anything.

use std::path::{Path, PathBuf};

use cgroups_rs::fs::cpu::CpuController;
use cgroups_rs::fs::hierarchies::{self, V1, V2};
use cgroups_rs::fs::memory::MemController;
use cgroups_rs::fs::{Cgroup, Hierarchy};
use k8s_openapi::api::core::v1::Pod;

use super::qos::{
    CgroupResources, DEFAULT_CFS_PERIOD_US, MIN_SHARES, QosClass, ResourceError,
    milli_cpu_to_shares, pod_cgroup_resources, pod_qos, pod_resources, shares_to_weight,
};

/// Which cgroup version to manage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CgroupVersion {
    /// v2 when `/sys/fs/cgroup` is the unified hierarchy, else v1.
    #[default]
    Auto,
    /// The v1 controller hierarchies.
    V1,
    /// The unified hierarchy at `/sys/fs/cgroup`.
    V2,
}

/// Configuration of the pod cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupConfig {
    /// The name of the root cgroup of all pods, relative to the hierarchy root (`kubepods`).
    pub root: String,
    /// The cgroup version to manage.
    pub version: CgroupVersion,
    /// Enforce CPU limits with a CFS quota (kubelet's `cpuCFSQuota`, default true).
    pub cpu_cfs_quota: bool,
    /// The CFS period in microseconds (kubelet's `cpuCFSQuotaPeriod`, 100 ms).
    pub cpu_cfs_period_us: u64,
}

impl Default for CgroupConfig {
    fn default() -> Self {
        Self {
            root: "kubepods".into(),
            version: CgroupVersion::Auto,
            cpu_cfs_quota: true,
            cpu_cfs_period_us: DEFAULT_CFS_PERIOD_US,
        }
    }
}

impl CgroupConfig {
    /// Sets the root cgroup name.
    #[must_use]
    pub fn root(mut self, root: impl Into<String>) -> Self {
        self.root = root.into();
        self
    }
    /// Sets the cgroup version.
    #[must_use]
    pub fn version(mut self, version: CgroupVersion) -> Self {
        self.version = version;
        self
    }
}

/// An error of the pod cgroup manager.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CgroupError {
    /// The pod's resources could not be read.
    #[error("pod {pod}: {source}")]
    Resources {
        /// `namespace/name` of the pod.
        pod: String,
        /// The field error.
        #[source]
        source: ResourceError,
    },
    /// The pod has no UID, so it has no cgroup name.
    #[error("pod {pod}: metadata.uid is empty")]
    NoUid {
        /// `namespace/name` of the pod.
        pod: String,
    },
    /// The root name is not a relative cgroup path.
    #[error("cgroup root {root:?} must be a non-empty relative path without '..'")]
    BadRoot {
        /// The configured root.
        root: String,
    },
    /// A cgroup operation failed.
    #[error("cgroup {path}: {op}: {source}")]
    Cgroup {
        /// The cgroup path relative to the hierarchy root.
        path: String,
        /// What was done (`create`, `set cpu.shares`...).
        op: &'static str,
        /// The underlying error.
        #[source]
        source: cgroups_rs::fs::error::Error,
    },
    /// The hierarchy lacks a controller the manager needs.
    #[error("cgroup {path}: no {controller} controller in this hierarchy")]
    MissingController {
        /// The cgroup path.
        path: String,
        /// `cpu` or `memory`.
        controller: &'static str,
    },
    /// The requested cgroup version is not mounted where it must be.
    #[error("cgroup {version} requested, but {reason}")]
    Unavailable {
        /// `v1` or `v2`.
        version: &'static str,
        /// What is missing.
        reason: String,
    },
    /// Removing a cgroup directory failed (processes still inside?).
    #[error("remove cgroup {path}: {source}")]
    Remove {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Where a pod's cgroup is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodCgroup {
    /// The pod's QoS class.
    pub qos: QosClass,
    /// The cgroup path relative to the hierarchy root (`kubepods/burstable/pod<uid>`).
    pub name: String,
    /// The CRI `cgroup_parent` for the sandbox and containers (`/kubepods/burstable/pod<uid>`).
    pub cgroup_parent: String,
    /// The resources written to it.
    pub resources: CgroupResources,
}

/// What a pod's cgroup uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PodCgroupUsage {
    /// Memory usage minus inactive file pages, in bytes.
    pub memory_working_set_bytes: i64,
    /// Processes in the cgroup.
    pub pids: i64,
}

/// Manages the pod cgroup hierarchy. Creating it creates the root and the QoS-class cgroups.
#[derive(Debug)]
pub struct PodCgroups {
    config: CgroupConfig,
    v2: bool,
}

const V1_CONTROLLERS: [&str; 4] = ["cpu", "cpuacct", "memory", "pids"];

fn pod_name(pod: &Pod) -> String {
    let m = &pod.metadata;
    format!(
        "{}/{}",
        m.namespace.as_deref().unwrap_or("default"),
        m.name.as_deref().unwrap_or("")
    )
}

/// The cgroup path of a pod relative to the hierarchy root: `<root>/pod<uid>` for Guaranteed,
/// `<root>/burstable/pod<uid>` and `<root>/besteffort/pod<uid>` for the others.
pub fn pod_cgroup_name(root: &str, qos: QosClass, uid: &str) -> String {
    match qos.cgroup_dir() {
        None => format!("{root}/pod{uid}"),
        Some(dir) => format!("{root}/{dir}/pod{uid}"),
    }
}

/// The CRI `cgroup_parent` of a pod for a runtime using the systemd cgroup driver
/// (`SystemdCgroup = true` in containerd): `kubepods-burstable-pod<uid>.slice`, dashes of the
/// UID turned into underscores as systemd unit names require.
pub fn systemd_cgroup_parent(root: &str, qos: QosClass, uid: &str) -> String {
    let root = root.trim_matches('/').replace('/', "-");
    let uid = uid.replace('-', "_");
    match qos.cgroup_dir() {
        None => format!("{root}-pod{uid}.slice"),
        Some(dir) => format!("{root}-{dir}-pod{uid}.slice"),
    }
}

impl PodCgroups {
    /// Prepares the hierarchy: decides the version and creates `<root>`, `<root>/burstable`
    /// and `<root>/besteffort` (besteffort gets the minimum CPU shares).
    pub fn new(config: CgroupConfig) -> Result<Self, CgroupError> {
        let root = config.root.trim_matches('/');
        if root.is_empty()
            || root
                .split('/')
                .any(|c| c == ".." || c == "." || c.is_empty())
        {
            return Err(CgroupError::BadRoot {
                root: config.root.clone(),
            });
        }
        let v2 = match config.version {
            CgroupVersion::Auto => hierarchies::is_cgroup2_unified_mode(),
            CgroupVersion::V1 => false,
            CgroupVersion::V2 => true,
        };
        if v2 && !hierarchies::is_cgroup2_unified_mode() {
            return Err(CgroupError::Unavailable {
                version: "v2",
                reason: format!("{} is not a cgroup2 mount", hierarchies::UNIFIED_MOUNTPOINT),
            });
        }
        if !v2
            && V1::new()
                .get_mount_point(cgroups_rs::fs::Controllers::Cpu)
                .is_none()
        {
            return Err(CgroupError::Unavailable {
                version: "v1",
                reason: "no cgroup v1 cpu controller is mounted".into(),
            });
        }
        let config = CgroupConfig {
            root: root.to_string(),
            ..config
        };
        let this = Self { config, v2 };
        this.create(&this.config.root)?;
        this.create(&format!("{}/burstable", this.config.root))?;
        let be = this.create(&format!("{}/besteffort", this.config.root))?;
        this.set_shares(&be, MIN_SHARES)?;
        Ok(this)
    }

    /// Whether the unified (v2) hierarchy is managed.
    pub fn is_v2(&self) -> bool {
        self.v2
    }

    /// The configuration in force (root without slashes).
    pub fn config(&self) -> &CgroupConfig {
        &self.config
    }

    fn hierarchy(&self) -> Box<dyn Hierarchy> {
        if self.v2 {
            Box::new(V2::new())
        } else {
            Box::new(V1::new())
        }
    }

    fn load(&self, path: &str) -> Cgroup {
        if self.v2 {
            Cgroup::load(self.hierarchy(), path)
        } else {
            Cgroup::load_with_specified_controllers(
                self.hierarchy(),
                path,
                V1_CONTROLLERS.iter().map(|s| s.to_string()).collect(),
            )
        }
    }

    fn create(&self, path: &str) -> Result<Cgroup, CgroupError> {
        let cg = self.load(path);
        cg.create().map_err(|source| CgroupError::Cgroup {
            path: path.into(),
            op: "create",
            source,
        })?;
        Ok(cg)
    }

    fn cpu<'a>(&self, cg: &'a Cgroup) -> Result<&'a CpuController, CgroupError> {
        cg.controller_of::<CpuController>()
            .ok_or_else(|| CgroupError::MissingController {
                path: cg.path().into(),
                controller: "cpu",
            })
    }

    fn set_shares(&self, cg: &Cgroup, shares: u64) -> Result<(), CgroupError> {
        let value = if self.v2 {
            shares_to_weight(shares)
        } else {
            shares
        };
        self.cpu(cg)?
            .set_shares(value)
            .map_err(|source| CgroupError::Cgroup {
                path: cg.path().into(),
                op: if self.v2 {
                    "set cpu.weight"
                } else {
                    "set cpu.shares"
                },
                source,
            })
    }

    fn apply(&self, cg: &Cgroup, r: &CgroupResources) -> Result<(), CgroupError> {
        self.set_shares(cg, r.cpu_shares)?;
        let cpu = self.cpu(cg)?;
        let path = cg.path().to_string();
        let err = |op| {
            let path = path.clone();
            move |source| CgroupError::Cgroup { path, op, source }
        };
        if self.v2 {
            cpu.set_cfs_quota_and_period(Some(r.cpu_quota_us.unwrap_or(-1)), Some(r.cpu_period_us))
                .map_err(err("set cpu.max"))?;
        } else {
            cpu.set_cfs_period(r.cpu_period_us)
                .map_err(err("set cpu.cfs_period_us"))?;
            cpu.set_cfs_quota(r.cpu_quota_us.unwrap_or(-1))
                .map_err(err("set cpu.cfs_quota_us"))?;
        }
        let mem =
            cg.controller_of::<MemController>()
                .ok_or_else(|| CgroupError::MissingController {
                    path: path.clone(),
                    controller: "memory",
                })?;
        mem.set_limit(r.memory_limit_bytes.unwrap_or(-1))
            .map_err(err(if self.v2 {
                "set memory.max"
            } else {
                "set memory.limit_in_bytes"
            }))?;
        Ok(())
    }

    /// Where the pod's cgroup is, without touching the hierarchy.
    pub fn pod_cgroup(&self, pod: &Pod) -> Result<PodCgroup, CgroupError> {
        let uid = pod.metadata.uid.as_deref().unwrap_or("");
        if uid.is_empty() {
            return Err(CgroupError::NoUid { pod: pod_name(pod) });
        }
        let res = |source| CgroupError::Resources {
            pod: pod_name(pod),
            source,
        };
        let qos = pod_qos(pod).map_err(res)?;
        let resources = pod_cgroup_resources(
            pod,
            self.config.cpu_cfs_period_us,
            self.config.cpu_cfs_quota,
        )
        .map_err(res)?;
        let name = pod_cgroup_name(&self.config.root, qos, uid);
        Ok(PodCgroup {
            qos,
            cgroup_parent: format!("/{name}"),
            name,
            resources,
        })
    }

    /// The CRI `cgroup_parent` of the pod (cgroupfs form, `/kubepods/burstable/pod<uid>`).
    pub fn cgroup_parent(&self, pod: &Pod) -> Result<String, CgroupError> {
        Ok(self.pod_cgroup(pod)?.cgroup_parent)
    }

    /// Creates the pod's cgroup (or updates it) with the resources of its spec.
    pub fn ensure_pod(&self, pod: &Pod) -> Result<PodCgroup, CgroupError> {
        let pc = self.pod_cgroup(pod)?;
        let cg = self.create(&pc.name)?;
        self.apply(&cg, &pc.resources)?;
        Ok(pc)
    }

    /// Sets the Burstable class's shares to the sum of the CPU requests of the given Burstable
    /// pods (kubelet's QoS container manager), and BestEffort's to the minimum.
    pub fn update_qos_classes(&self, pods: &[Pod]) -> Result<(), CgroupError> {
        let mut burstable_milli = 0;
        for pod in pods {
            let res = |source| CgroupError::Resources {
                pod: pod_name(pod),
                source,
            };
            if pod_qos(pod).map_err(res)? == QosClass::Burstable {
                burstable_milli += pod_resources(pod).map_err(res)?.requests.cpu_milli;
            }
        }
        let b = self.load(&format!("{}/burstable", self.config.root));
        self.set_shares(&b, milli_cpu_to_shares(burstable_milli))?;
        let be = self.load(&format!("{}/besteffort", self.config.root));
        self.set_shares(&be, MIN_SHARES)
    }

    /// The directories of a cgroup path, one per controller hierarchy (one on v2).
    pub fn directories(&self, name: &str) -> Vec<PathBuf> {
        if self.v2 {
            vec![Path::new(hierarchies::UNIFIED_MOUNTPOINT).join(name)]
        } else {
            let v1 = V1::new();
            let mut dirs: Vec<PathBuf> = Vec::new();
            for c in [
                cgroups_rs::fs::Controllers::Cpu,
                cgroups_rs::fs::Controllers::CpuAcct,
                cgroups_rs::fs::Controllers::Mem,
                cgroups_rs::fs::Controllers::Pids,
            ] {
                if let Some((mount, _)) = v1.get_mount_point(c) {
                    let d = mount.join(name);
                    if !dirs.contains(&d) {
                        dirs.push(d);
                    }
                }
            }
            dirs
        }
    }

    /// What the pod's cgroup uses now: the memory working set (usage minus inactive file
    /// pages, as kubelet measures it) and the number of processes. `None` when the pod has no
    /// cgroup.
    pub fn pod_usage(&self, pod: &Pod) -> Result<Option<PodCgroupUsage>, CgroupError> {
        let pc = self.pod_cgroup(pod)?;
        let read = |dir: &Path, file: &str| -> Option<String> {
            std::fs::read_to_string(dir.join(file)).ok()
        };
        let stat_field = |text: &str, key: &str| -> i64 {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
                .unwrap_or(0)
        };
        let dirs = self.directories(&pc.name);
        if !dirs.iter().any(|d| d.exists()) {
            return Ok(None);
        }
        let (mut memory, mut pids) = (0i64, 0i64);
        for d in &dirs {
            if self.v2 {
                let current: i64 = read(d, "memory.current")
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or(0);
                let inactive = read(d, "memory.stat")
                    .map(|t| stat_field(&t, "inactive_file"))
                    .unwrap_or(0);
                memory = (current - inactive).max(0);
                pids = read(d, "pids.current")
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or(0);
            } else if let Some(usage) = read(d, "memory.usage_in_bytes") {
                let usage: i64 = usage.trim().parse().unwrap_or(0);
                let inactive = read(d, "memory.stat")
                    .map(|t| stat_field(&t, "total_inactive_file"))
                    .unwrap_or(0);
                memory = (usage - inactive).max(0);
            } else if let Some(p) = read(d, "pids.current") {
                pids = p.trim().parse().unwrap_or(0);
            }
        }
        Ok(Some(PodCgroupUsage {
            memory_working_set_bytes: memory,
            pids,
        }))
    }

    /// Removes the pod's cgroup (its processes must be gone). Absent is fine.
    pub fn remove_pod(&self, uid: &str) -> Result<(), CgroupError> {
        for qos in [
            QosClass::Guaranteed,
            QosClass::Burstable,
            QosClass::BestEffort,
        ] {
            let name = pod_cgroup_name(&self.config.root, qos, uid);
            self.remove_tree(&name)?;
        }
        Ok(())
    }

    /// The UIDs of the pods that have a cgroup (to find orphans after a restart).
    pub fn pod_uids(&self) -> Vec<String> {
        let mut uids = Vec::new();
        let Some(base) = self.directories(&self.config.root).into_iter().next() else {
            return uids;
        };
        for dir in [
            base.clone(),
            base.join("burstable"),
            base.join("besteffort"),
        ] {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if let Some(uid) = n.strip_prefix("pod")
                    && e.path().is_dir()
                {
                    uids.push(uid.to_string());
                }
            }
        }
        uids.sort();
        uids
    }

    /// The directories of a cgroup path in every mounted hierarchy: a runtime joining a pod
    /// cgroup (runc with `cgroupsPath`) creates it in controllers the manager does not limit
    /// (blkio, cpuset, devices, freezer, name=systemd, the unified hierarchy of a hybrid
    /// host...), and removal must take those too.
    fn all_directories(&self, name: &str) -> Vec<PathBuf> {
        let mut dirs = self.directories(name);
        if !self.v2 {
            let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
            for line in mountinfo.lines() {
                let Some((left, right)) = line.split_once(" - ") else {
                    continue;
                };
                // v1 hierarchies, and the unified one of a hybrid host (runc joins it too)
                if !matches!(right.split(' ').next(), Some("cgroup" | "cgroup2")) {
                    continue;
                }
                if let Some(mount) = left.split(' ').nth(4) {
                    let d = Path::new(mount).join(name);
                    if !dirs.contains(&d) {
                        dirs.push(d);
                    }
                }
            }
        }
        dirs
    }

    fn remove_tree(&self, name: &str) -> Result<(), CgroupError> {
        for dir in self.all_directories(name) {
            remove_cgroup_dir(&dir)?;
        }
        Ok(())
    }

    /// Removes the whole hierarchy under the root, the root included (pods must be gone).
    pub fn destroy(&self) -> Result<(), CgroupError> {
        self.remove_tree(&self.config.root)
    }
}

/// Removes a cgroup directory and its child cgroups, deepest first (cgroup directories hold only
/// kernel files, removed with the directory itself by rmdir).
fn remove_cgroup_dir(dir: &Path) -> Result<(), CgroupError> {
    if !dir.exists() {
        return Ok(());
    }
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            remove_cgroup_dir(&e.path())?;
        }
    }
    let mut last = None;
    for attempt in 0..5 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(std::time::Duration::from_millis(10 << attempt));
    }
    Err(CgroupError::Remove {
        path: dir.to_path_buf(),
        source: last.expect("an error after failed attempts"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_parents_by_qos() {
        assert_eq!(
            pod_cgroup_name("kubepods", QosClass::Guaranteed, "u1"),
            "kubepods/podu1"
        );
        assert_eq!(
            pod_cgroup_name("kubepods", QosClass::Burstable, "u1"),
            "kubepods/burstable/podu1"
        );
        assert_eq!(
            pod_cgroup_name("kubepods", QosClass::BestEffort, "u1"),
            "kubepods/besteffort/podu1"
        );
    }

    #[test]
    fn systemd_slice_names() {
        assert_eq!(
            systemd_cgroup_parent("kubepods", QosClass::Burstable, "6c1d-0001"),
            "kubepods-burstable-pod6c1d_0001.slice"
        );
        assert_eq!(
            systemd_cgroup_parent("kubepods", QosClass::Guaranteed, "u1"),
            "kubepods-podu1.slice"
        );
    }

    #[test]
    fn refuses_a_version_the_host_does_not_mount() {
        let wrong = if hierarchies::is_cgroup2_unified_mode() {
            CgroupVersion::V1
        } else {
            CgroupVersion::V2
        };
        let e = PodCgroups::new(
            CgroupConfig::default()
                .root(format!("nodekit-never-{}", std::process::id()))
                .version(wrong),
        )
        .unwrap_err();
        assert!(matches!(e, CgroupError::Unavailable { .. }), "{e}");
    }

    #[test]
    fn rejects_bad_roots() {
        for root in ["", "/", "a/../b", "a//b"] {
            let e = PodCgroups::new(CgroupConfig::default().root(root)).unwrap_err();
            assert!(matches!(e, CgroupError::BadRoot { .. }), "{root}: {e}");
        }
    }
}
