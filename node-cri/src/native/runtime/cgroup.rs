//! Control groups of sandboxes and containers through cgroups-rs, on cgroup v1 (one hierarchy
//! per controller) and v2 (the unified hierarchy): limits from the CRI
//! `LinuxContainerResources`, the `cgroup.procs` files the init joins, stats and OOM counts.

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

/// One cgroup (the same relative path in every hierarchy on v1, one directory on v2).
pub struct CgroupHandle {
    cg: Cgroup,
    rel: String,
    v2: bool,
}

fn err(what: &str, rel: &str, e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Internal(format!("cgroup {rel}: {what}: {e}"))
}

impl CgroupHandle {
    fn load(rel: &str) -> Self {
        let hier = hierarchies::auto();
        let v2 = hier.v2();
        let list = if v2 { CONTROLLERS_V2 } else { CONTROLLERS_V1 };
        let controllers = list.iter().map(|c| c.to_string()).collect();
        let cg =
            Cgroup::load_with_specified_controllers(hier, rel.trim_start_matches('/'), controllers);
        Self {
            cg,
            rel: rel.to_string(),
            v2,
        }
    }

    /// Create (or open) the cgroup at `rel`, relative to the hierarchy roots.
    pub fn create(rel: &str) -> Result<Self, RuntimeError> {
        let h = Self::load(rel);
        h.cg.create().map_err(|e| err("create", rel, e))?;
        Ok(h)
    }

    /// Open an existing cgroup without creating it.
    pub fn open(rel: &str) -> Self {
        Self::load(rel)
    }

    /// Whether this is the v2 unified hierarchy.
    pub fn is_v2(&self) -> bool {
        self.v2
    }

    /// The directories of this cgroup (one per controller on v1), deduplicated.
    pub fn dirs(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = self
            .cg
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
        let mut res = Resources::default();
        if r.cpu_shares > 0 {
            res.cpu.shares = Some(if self.v2 {
                shares_to_weight(r.cpu_shares as u64)
            } else {
                r.cpu_shares as u64
            });
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
            let has_memsw = self.v2
                || self
                    .dir_of("memory")
                    .is_some_and(|d| d.join("memory.memsw.limit_in_bytes").exists());
            if has_memsw && !self.v2 {
                res.memory.memory_swap_limit = Some(swap);
            }
        }
        if let Some(p) = pids_limit.filter(|p| *p > 0) {
            res.pid.maximum_number_of_processes = Some(MaxValue::Value(p));
        }
        self.cg
            .apply(&res)
            .map_err(|e| err("apply limits", &self.rel, e))?;
        if self.v2
            && r.memory_limit_in_bytes > 0
            && let Some(d) = self.dir_of("memory")
        {
            let _ = std::fs::write(d.join("memory.swap.max"), "0");
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
}
