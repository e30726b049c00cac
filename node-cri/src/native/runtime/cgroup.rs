//! Control groups of sandboxes and containers, on cgroup v1 (one hierarchy per controller,
//! through cgroups-rs) and v2 (the unified hierarchy, written directly: cgroups-rs only knows a
//! v2 hierarchy at `/sys/fs/cgroup`, while ours can be mounted anywhere, e.g. the
//! `/sys/fs/cgroup/unified` of a hybrid host): limits from the CRI `LinuxContainerResources`,
//! the `cgroup.procs` files the init joins, stats and OOM counts.

use std::path::{Path, PathBuf};

use cgroups_rs::fs::{Cgroup, MaxValue, Resources, hierarchies};
use node_core::{RuntimeError, cri};

/// The controllers a container cgroup is created with on v1 (one hierarchy each).
const CONTROLLERS_V1: &[&str] = &["cpu", "cpuacct", "memory", "pids", "devices"];

/// The devices every container may use (runc's default allow list): null, zero, full, random,
/// urandom, tty, console, ptmx, the pty slaves, tun; `mknod` of any node (using it is another
/// matter).
pub const DEFAULT_DEVICE_RULES: &[&str] = &[
    "c *:* m",
    "b *:* m",
    "c 1:3 rwm",
    "c 1:5 rwm",
    "c 1:7 rwm",
    "c 1:8 rwm",
    "c 1:9 rwm",
    "c 5:0 rwm",
    "c 5:1 rwm",
    "c 5:2 rwm",
    "c 136:* rwm",
    "c 10:200 rwm",
];
/// The controllers enabled for a container cgroup on v2 (cpuacct is part of cpu there).
const CONTROLLERS_V2: &[&str] = &["cpu", "memory", "pids"];

/// The cgroup hierarchy the runtime places sandboxes and containers in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// cgroup v1: one hierarchy per controller, found in `/proc/self/mountinfo`.
    V1,
    /// The cgroup v2 unified hierarchy mounted at this path (`/sys/fs/cgroup` on a v2 host).
    V2(PathBuf),
}

impl Hierarchy {
    /// The host's: v2 when `/sys/fs/cgroup` is a cgroup2 mount, else v1 (hybrid hosts too:
    /// their v2 hierarchy has no controllers).
    pub fn detect() -> Self {
        if is_cgroup2(Path::new("/sys/fs/cgroup")) {
            Self::V2(PathBuf::from("/sys/fs/cgroup"))
        } else {
            Self::V1
        }
    }
}

impl Default for Hierarchy {
    fn default() -> Self {
        Self::detect()
    }
}

/// Whether `path` is the root of a cgroup2 mount.
pub fn is_cgroup2(path: &Path) -> bool {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap_or_default();
    // SAFETY: statfs into a zeroed struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and struct.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type == libc::CGROUP2_SUPER_MAGIC
}

enum Inner {
    V1(Cgroup),
    /// The cgroup's directory under the v2 mount, and the mount.
    V2 {
        dir: PathBuf,
        root: PathBuf,
    },
}

/// One cgroup (the same relative path in every hierarchy on v1, one directory on v2).
pub struct CgroupHandle {
    inner: Inner,
    rel: String,
    v2: bool,
}

fn err(what: &str, rel: &str, e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Internal(format!("cgroup {rel}: {what}: {e}"))
}

impl CgroupHandle {
    fn load(h: &Hierarchy, rel: &str) -> Self {
        let rel_path = rel.trim_matches('/');
        match h {
            Hierarchy::V1 => {
                let controllers = CONTROLLERS_V1.iter().map(|c| c.to_string()).collect();
                let cg = Cgroup::load_with_specified_controllers(
                    Box::new(hierarchies::V1::new()),
                    rel_path,
                    controllers,
                );
                Self {
                    inner: Inner::V1(cg),
                    rel: rel.to_string(),
                    v2: false,
                }
            }
            Hierarchy::V2(root) => Self {
                inner: Inner::V2 {
                    dir: root.join(rel_path),
                    root: root.clone(),
                },
                rel: rel.to_string(),
                v2: true,
            },
        }
    }

    /// Create (or open) the cgroup at `rel`, relative to the roots of the host's hierarchy
    /// ([`Hierarchy::detect`]).
    pub fn create(rel: &str) -> Result<Self, RuntimeError> {
        Self::create_in(&Hierarchy::detect(), rel)
    }

    /// Open an existing cgroup of the host's hierarchy without creating it.
    pub fn open(rel: &str) -> Self {
        Self::open_in(&Hierarchy::detect(), rel)
    }

    /// Create (or open) the cgroup at `rel` in hierarchy `h`. On v2 the CPU, memory and pids
    /// controllers are enabled down the path where the hierarchy offers them.
    pub fn create_in(h: &Hierarchy, rel: &str) -> Result<Self, RuntimeError> {
        let handle = Self::load(h, rel);
        match &handle.inner {
            Inner::V1(cg) => cg.create().map_err(|e| err("create", rel, e))?,
            Inner::V2 { root, .. } => {
                enable_controllers(root, rel, CONTROLLERS_V2)?;
            }
        }
        Ok(handle)
    }

    /// Open an existing cgroup of hierarchy `h` without creating it.
    pub fn open_in(h: &Hierarchy, rel: &str) -> Self {
        Self::load(h, rel)
    }

    /// Whether this is the v2 unified hierarchy.
    pub fn is_v2(&self) -> bool {
        self.v2
    }

    /// The directories of this cgroup (one per controller on v1), deduplicated.
    pub fn dirs(&self) -> Vec<PathBuf> {
        let cg = match &self.inner {
            Inner::V1(cg) => cg,
            Inner::V2 { dir, .. } => return vec![dir.clone()],
        };
        let mut v: Vec<PathBuf> = cg
            .subsystems()
            .iter()
            .map(|s| s.to_controller().path().to_path_buf())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// The `cgroup.procs` files a process writes `0` into to join this cgroup.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs()
            .into_iter()
            .map(|d| d.join("cgroup.procs"))
            .collect()
    }

    fn dir_of(&self, controller: &str) -> Option<PathBuf> {
        if self.v2 {
            return self.dirs().into_iter().next();
        }
        self.dirs().into_iter().find(|d| {
            d.strip_prefix("/sys/fs/cgroup")
                .ok()
                .and_then(|r| r.components().next())
                .is_some_and(|c| {
                    c.as_os_str()
                        .to_string_lossy()
                        .split(',')
                        .any(|n| n == controller)
                })
        })
    }

    /// The file that counts OOM kills (`memory.oom_control` on v1, `memory.events` on v2).
    pub fn oom_file(&self) -> Option<PathBuf> {
        let dir = self.dir_of("memory")?;
        Some(dir.join(if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        }))
    }

    /// Apply CPU, memory and pids limits.
    pub fn apply(
        &self,
        r: &cri::LinuxContainerResources,
        pids_limit: Option<i64>,
    ) -> Result<(), RuntimeError> {
        let cg = match &self.inner {
            Inner::V1(cg) => cg,
            Inner::V2 { dir, .. } => return self.apply_v2(dir, r, pids_limit),
        };
        let mut res = Resources::default();
        if r.cpu_shares > 0 {
            res.cpu.shares = Some(r.cpu_shares as u64);
        }
        if r.cpu_period > 0 {
            res.cpu.period = Some(r.cpu_period as u64);
        }
        if r.cpu_quota > 0 {
            res.cpu.quota = Some(r.cpu_quota);
        }
        if r.memory_limit_in_bytes > 0 {
            res.memory.memory_hard_limit = Some(r.memory_limit_in_bytes);
            // without swap accounting a v1 cgroup has no memsw file; with it, no swap beyond the limit
            let swap = if r.memory_swap_limit_in_bytes > 0 {
                r.memory_swap_limit_in_bytes
            } else {
                r.memory_limit_in_bytes
            };
            let has_memsw = self
                .dir_of("memory")
                .is_some_and(|d| d.join("memory.memsw.limit_in_bytes").exists());
            if has_memsw {
                res.memory.memory_swap_limit = Some(swap);
            }
        }
        if let Some(p) = pids_limit.filter(|p| *p > 0) {
            res.pid.maximum_number_of_processes = Some(MaxValue::Value(p));
        }
        cg.apply(&res)
            .map_err(|e| err("apply limits", &self.rel, e))?;
        Ok(())
    }

    fn apply_v2(
        &self,
        dir: &Path,
        r: &cri::LinuxContainerResources,
        pids_limit: Option<i64>,
    ) -> Result<(), RuntimeError> {
        for (file, value) in v2_limits(r, pids_limit).map_err(|e| err("limits", &self.rel, e))? {
            let p = dir.join(&file);
            if !p.exists() {
                let controller = file.split('.').next().unwrap_or_default();
                let available =
                    std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
                return Err(err(
                    &format!("{file}={value}"),
                    &self.rel,
                    format!(
                        "the {controller} controller is not enabled in this cgroup (it has: {:?}): \
                         on a hybrid host the v1 hierarchies own it",
                        available.trim()
                    ),
                ));
            }
            std::fs::write(&p, &value)
                .map_err(|e| err(&format!("write {file}={value}"), &self.rel, e))?;
        }
        Ok(())
    }

    /// Restrict device access (cgroup v1 `devices`): deny everything, then allow
    /// [`DEFAULT_DEVICE_RULES`] and `extra` (`c 10:229 rw`), or everything when privileged.
    /// Whether the kernel enforces it: false on v2, where device control needs an eBPF program
    /// this runtime does not load (see the callers for the mitigation).
    pub fn restrict_devices(
        &self,
        privileged: bool,
        extra: &[String],
    ) -> Result<bool, RuntimeError> {
        if self.v2 {
            return Ok(false);
        }
        let Some(dir) = self.dir_of("devices") else {
            return Ok(false);
        };
        let write = |file: &str, rule: &str| {
            std::fs::write(dir.join(file), rule)
                .map_err(|e| err(&format!("{file} {rule:?}"), &self.rel, e))
        };
        if privileged {
            write("devices.allow", "a")?;
            return Ok(true);
        }
        write("devices.deny", "a")?;
        for rule in DEFAULT_DEVICE_RULES
            .iter()
            .copied()
            .chain(extra.iter().map(String::as_str))
        {
            write("devices.allow", rule)?;
        }
        Ok(true)
    }

    /// The pids in the cgroup (every hierarchy).
    pub fn pids(&self) -> Vec<i32> {
        let mut v: Vec<i32> = self
            .procs_files()
            .iter()
            .filter_map(|f| std::fs::read_to_string(f).ok())
            .flat_map(|s| {
                s.lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect::<Vec<i32>>()
            })
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Kill every process in the cgroup and remove it; waits (bounded) for the processes to go.
    pub fn destroy(&self) -> Result<(), RuntimeError> {
        if let Inner::V2 { dir, .. } = &self.inner {
            // cgroup.kill (Linux 5.14): the kernel kills every process, forks in flight too
            let _ = std::fs::write(dir.join("cgroup.kill"), "1");
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let pids = self.pids();
            for p in &pids {
                // SAFETY: kill with a pid read from the cgroup; a stale pid at worst fails.
                unsafe { libc::kill(*p, libc::SIGKILL) };
            }
            let mut all_gone = true;
            for d in self.dirs() {
                match std::fs::remove_dir(&d) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(_) => all_gone = false,
                }
            }
            if all_gone {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(err("remove", &self.rel, "processes still inside after 5s"));
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Whether any directory of the cgroup still exists.
    pub fn exists(&self) -> bool {
        self.dirs().iter().any(|d| d.exists())
    }

    /// Cumulative CPU time in nanoseconds.
    pub fn cpu_usage_ns(&self) -> Option<u64> {
        if self.v2 {
            let s = std::fs::read_to_string(self.dir_of("cpu")?.join("cpu.stat")).ok()?;
            return stat_value(&s, "usage_usec").map(|u| u * 1000);
        }
        read_u64(&self.dir_of("cpuacct")?.join("cpuacct.usage"))
    }

    /// Memory usage and working set (usage minus inactive file pages), in bytes.
    pub fn memory_usage(&self) -> Option<(u64, u64)> {
        let dir = self.dir_of("memory")?;
        let (usage, stat) = if self.v2 {
            (
                read_u64(&dir.join("memory.current"))?,
                std::fs::read_to_string(dir.join("memory.stat")).ok()?,
            )
        } else {
            (
                read_u64(&dir.join("memory.usage_in_bytes"))?,
                std::fs::read_to_string(dir.join("memory.stat")).ok()?,
            )
        };
        let inactive = stat_value(
            &stat,
            if self.v2 {
                "inactive_file"
            } else {
                "total_inactive_file"
            },
        )
        .unwrap_or(0);
        Some((usage, usage.saturating_sub(inactive)))
    }

    /// The number of OOM kills in the cgroup so far.
    pub fn oom_kills(&self) -> u64 {
        self.oom_file().map(|f| oom_kills_in(&f)).unwrap_or(0)
    }
}

/// The `oom_kill` count in a `memory.oom_control` or `memory.events` file (0 when unreadable).
pub fn oom_kills_in(file: &Path) -> u64 {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|s| stat_value(&s, "oom_kill"))
        .unwrap_or(0)
}

/// Create the directories of `rel` under the v2 mount `root` and enable the `wanted`
/// controllers from the root down to `rel`'s parent (in `cgroup.subtree_control`), as far as
/// each level offers them (`cgroup.controllers`); the controllers `rel` ends up with.
pub fn enable_controllers(
    root: &Path,
    rel: &str,
    wanted: &[&str],
) -> Result<Vec<String>, RuntimeError> {
    let parts: Vec<&str> = rel.split('/').filter(|p| !p.is_empty()).collect();
    if parts.iter().any(|p| *p == ".." || *p == ".") {
        return Err(err("create", rel, "the path must not contain . or .."));
    }
    let offered = |d: &Path| -> Vec<String> {
        std::fs::read_to_string(d.join("cgroup.controllers"))
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    let mut dir = root.to_path_buf();
    for part in &parts {
        let have = offered(&dir);
        let enabled =
            std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
        for c in wanted.iter().filter(|c| have.iter().any(|h| h == *c)) {
            if enabled.split_whitespace().any(|e| e == *c) {
                continue;
            }
            std::fs::write(dir.join("cgroup.subtree_control"), format!("+{c}")).map_err(|e| {
                err(
                    &format!(
                        "enable {c} in {}",
                        dir.join("cgroup.subtree_control").display()
                    ),
                    rel,
                    e,
                )
            })?;
        }
        dir.push(part);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(err(&format!("mkdir {}", dir.display()), rel, e)),
        }
    }
    Ok(offered(&dir)
        .into_iter()
        .filter(|c| wanted.contains(&c.as_str()))
        .collect())
}

/// The v2 files and values that carry CRI limits: `cpu.weight` (from shares), `cpu.max`,
/// `memory.max`, `memory.swap.max` (the CRI's memory+swap total minus the memory limit; none
/// beyond the limit when unset), `pids.max`, then the CRI `unified` entries as given.
pub fn v2_limits(
    r: &cri::LinuxContainerResources,
    pids_limit: Option<i64>,
) -> Result<Vec<(String, String)>, String> {
    let mut v: Vec<(String, String)> = Vec::new();
    if r.cpu_shares > 0 {
        v.push((
            "cpu.weight".into(),
            shares_to_weight(r.cpu_shares as u64).to_string(),
        ));
    }
    if r.cpu_quota > 0 || r.cpu_period > 0 {
        let period = if r.cpu_period > 0 {
            r.cpu_period
        } else {
            100_000
        };
        let quota = if r.cpu_quota > 0 {
            r.cpu_quota.to_string()
        } else {
            "max".into()
        };
        v.push(("cpu.max".into(), format!("{quota} {period}")));
    }
    if r.memory_limit_in_bytes > 0 {
        v.push(("memory.max".into(), r.memory_limit_in_bytes.to_string()));
        let swap = match r.memory_swap_limit_in_bytes {
            -1 => "max".to_string(),
            s if s > r.memory_limit_in_bytes => (s - r.memory_limit_in_bytes).to_string(),
            _ => "0".to_string(),
        };
        v.push(("memory.swap.max".into(), swap));
    }
    if let Some(p) = pids_limit.filter(|p| *p > 0) {
        v.push(("pids.max".into(), p.to_string()));
    }
    let mut unified: Vec<(&String, &String)> = r.unified.iter().collect();
    unified.sort();
    for (k, val) in unified {
        if k == "pids.max" {
            continue; // the pids limit above
        }
        if k.contains('/') || k.starts_with('.') || !k.contains('.') || k.starts_with("cgroup.") {
            return Err(format!(
                "unified key {k:?} is not a controller file of the cgroup"
            ));
        }
        v.retain(|(f, _)| f != k);
        v.push((k.clone(), val.clone()));
    }
    Ok(v)
}

/// cgroup v1 `cpu.shares` (2..262144) as v2 `cpu.weight` (1..10000), runc's conversion.
pub fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

fn stat_value(s: &str, key: &str) -> Option<u64> {
    s.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next() == Some(key))
            .then(|| it.next()?.parse().ok())
            .flatten()
    })
}

fn read_u64(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_values_are_found_by_key() {
        let s = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(stat_value(s, "oom_kill"), Some(3));
        assert_eq!(stat_value(s, "under_oom"), Some(0));
        assert_eq!(stat_value(s, "missing"), None);
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
    }

    #[test]
    fn cri_limits_map_to_v2_files() {
        let mut r = cri::LinuxContainerResources {
            cpu_shares: 1024,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            memory_limit_in_bytes: 64 << 20,
            ..Default::default()
        };
        let files = |r: &cri::LinuxContainerResources, p| v2_limits(r, p).unwrap();
        assert_eq!(
            files(&r, Some(16)),
            vec![
                ("cpu.weight".to_string(), "39".to_string()),
                ("cpu.max".into(), "50000 100000".into()),
                ("memory.max".into(), (64u64 << 20).to_string()),
                ("memory.swap.max".into(), "0".into()),
                ("pids.max".into(), "16".into()),
            ]
        );
        // memory+swap total above the limit: the difference is swap; -1 is unlimited
        r.memory_swap_limit_in_bytes = 96 << 20;
        assert!(files(&r, None).contains(&("memory.swap.max".into(), (32u64 << 20).to_string())));
        r.memory_swap_limit_in_bytes = -1;
        assert!(files(&r, None).contains(&("memory.swap.max".into(), "max".into())));
        // a period alone: no quota
        let p = cri::LinuxContainerResources {
            cpu_period: 50_000,
            ..Default::default()
        };
        assert_eq!(
            files(&p, None),
            vec![("cpu.max".to_string(), "max 50000".to_string())]
        );
        assert!(files(&Default::default(), Some(0)).is_empty());
        // unified entries are written as given and replace the mapped ones
        let mut u = cri::LinuxContainerResources::default();
        u.unified.insert("memory.high".into(), "1000000".into());
        u.unified.insert("pids.max".into(), "10".into());
        u.memory_limit_in_bytes = 1 << 30;
        u.unified.insert("memory.max".into(), "2000000".into());
        let f = files(&u, Some(10));
        assert!(f.contains(&("memory.high".into(), "1000000".into())));
        assert!(f.contains(&("memory.max".into(), "2000000".into())));
        assert_eq!(f.iter().filter(|(k, _)| k == "memory.max").count(), 1);
        assert_eq!(f.iter().filter(|(k, _)| k == "pids.max").count(), 1);
        for bad in ["../../etc/passwd", "cgroup.procs", "nodot"] {
            let mut b = cri::LinuxContainerResources::default();
            b.unified.insert(bad.into(), "1".into());
            assert!(v2_limits(&b, None).unwrap_err().contains(bad));
        }
    }

    #[test]
    fn v2_handles_live_under_their_mount() {
        let h = Hierarchy::V2(PathBuf::from("/mnt/cg2"));
        let cg = CgroupHandle::open_in(&h, "nodekit/pod-1/abc");
        assert!(cg.is_v2());
        assert_eq!(cg.dirs(), vec![PathBuf::from("/mnt/cg2/nodekit/pod-1/abc")]);
        assert_eq!(
            cg.procs_files(),
            vec![PathBuf::from("/mnt/cg2/nodekit/pod-1/abc/cgroup.procs")]
        );
        assert_eq!(
            cg.oom_file(),
            Some(PathBuf::from("/mnt/cg2/nodekit/pod-1/abc/memory.events"))
        );
        assert!(!cg.restrict_devices(false, &[]).unwrap());
        let dir = tempfile::tempdir().unwrap();
        assert!(enable_controllers(dir.path(), "a/../b", &["pids"]).is_err());
    }
}
