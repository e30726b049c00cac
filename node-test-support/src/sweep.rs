//! Removing what a root test leaves behind in the kernel, also after a panic or from a killed
//! earlier run: cgroup trees (killing every process inside first) and mounts under a directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The directories of the cgroup `rel` (relative to the hierarchy roots) that exist, in every
/// v1 hierarchy under `/sys/fs/cgroup` and in the unified one.
pub fn cgroup_dirs(rel: &str) -> Vec<PathBuf> {
    let mut v = vec![];
    for e in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        let d = e.path().join(rel);
        if d.exists() {
            v.push(d);
        }
    }
    let unified = Path::new("/sys/fs/cgroup").join(rel);
    if unified.exists() && !v.contains(&unified) {
        v.push(unified);
    }
    v
}

/// Kill every process in the cgroup tree at `dir` and remove it, deepest first (gives up on a
/// cgroup that does not empty within 2 s).
pub fn kill_cgroup_tree(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            kill_cgroup_tree(&e.path());
        }
    }
    for _ in 0..200 {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for p in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            // SAFETY: kill(2) with a pid read from the test's own cgroup.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Detach (lazily unmount) every mount point at or under `root`, deepest first.
pub fn detach_mounts_under(root: &Path) {
    let root = root.display().to_string();
    let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&root))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in mounts {
        let Ok(c) = std::ffi::CString::new(m) else {
            continue;
        };
        // SAFETY: umount2 with a valid C string naming a mount point under the test's directory.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Runs `f` on a thread in a mount namespace of its own with private propagation: every mount
/// made there vanishes with the thread, even on panic (the panic is passed on).
pub fn in_private_mount_ns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        let h = s.spawn(|| {
            // SAFETY: unshare(2) on this thread only; mount(2) with static C strings.
            unsafe {
                assert_eq!(
                    libc::unshare(libc::CLONE_NEWNS),
                    0,
                    "unshare mount namespace: {}",
                    std::io::Error::last_os_error()
                );
                assert_eq!(
                    libc::mount(
                        std::ptr::null(),
                        c"/".as_ptr(),
                        std::ptr::null(),
                        libc::MS_REC | libc::MS_PRIVATE,
                        std::ptr::null(),
                    ),
                    0,
                    "make / private: {}",
                    std::io::Error::last_os_error()
                );
            }
            f()
        });
        match h.join() {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        }
    })
}
