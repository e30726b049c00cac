//! What every root test of the native runtime needs: a root directory and cgroup parent of its
//! own, removed with everything the runtime made in them (processes, mounts, cgroups) even
//! after a panic or a killed test process; a network namespace to run in; log reading.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use node_core::RuntimeBackend;
use node_cri::native::runtime::{NativeConfig, NativeRuntime};
use node_test_support::{NetnsFixture, require_path, require_root};

/// The init binary of this package.
pub const INIT: &str = env!("CARGO_BIN_EXE_nodekit-init");
static N: AtomicUsize = AtomicUsize::new(0);

/// A fresh runtime root (`nodekit-rt-<pid>-*` in the temporary directory) and cgroup parent
/// (`nodekit-test/<pid>-<n>`), after sweeping what killed test processes left.
pub fn new_root() -> (tempfile::TempDir, String) {
    sweep_stale();
    let root = tempfile::Builder::new()
        .prefix(&format!("nodekit-rt-{}-", std::process::id()))
        .tempdir()
        .unwrap();
    let n = N.fetch_add(1, Ordering::SeqCst);
    (root, format!("nodekit-test/{}-{n}", std::process::id()))
}

/// The mount points under `root` (none must be left).
pub fn mounts_under(root: &Path) -> Vec<String> {
    let root = root.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&root))
        .collect()
}

/// The cgroup directories under `cgroup_parent` left in any hierarchy.
pub fn cgroups_left(cgroup_parent: &str) -> Vec<PathBuf> {
    cgroup_dirs(cgroup_parent)
        .into_iter()
        .filter(|d| {
            d.exists()
                && std::fs::read_dir(d)
                    .map(|r| r.flatten().any(|e| e.path().is_dir()))
                    .unwrap_or(false)
        })
        .collect()
}

/// Remove everything a runtime made under `root` and `cgroup_parent`: first through the
/// runtime (`cfg`) on a thread of its own (the caller may be inside a tokio runtime), then by
/// force: processes of the cgroups killed, cgroups removed, mounts detached.
pub fn teardown(cfg: NativeConfig, root: &Path, cgroup_parent: &str) {
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            if let Ok(r) = NativeRuntime::new(cfg) {
                for s in r.list_pod_sandbox(None).await.unwrap_or_default() {
                    let _ = r.remove_pod_sandbox(&s.id).await;
                }
                for c in r.list_containers(None).await.unwrap_or_default() {
                    let _ = r.remove_container(&c.id).await;
                }
            }
        })
    })
    .join();
    // pause processes and containers live in our cgroups
    for d in cgroup_dirs(cgroup_parent) {
        sweep_cgroup(&d);
    }
    for d in cgroup_dirs("nodekit-test") {
        let _ = std::fs::remove_dir(d); // fails while another test still uses it
    }
    let mut mounts = mounts_under(root);
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in mounts {
        let c = std::ffi::CString::new(m).unwrap();
        // SAFETY: unmounting a mount point under our own temporary root.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Remove what test processes that were killed left behind: their cgroups (with every process
/// inside) and the mounts under their roots. Names carry the test process's pid.
pub fn sweep_stale() {
    let dead = |name: &str, prefix: &str| {
        name.strip_prefix(prefix)
            .and_then(|r| r.split('-').next()?.parse::<u32>().ok())
            .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    };
    for top in cgroup_dirs("nodekit-test") {
        for e in std::fs::read_dir(&top).into_iter().flatten().flatten() {
            if e.path().is_dir() && dead(&e.file_name().to_string_lossy(), "") {
                sweep_cgroup(&e.path());
            }
        }
    }
    let tmp = std::env::temp_dir();
    for e in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !dead(&name, "nodekit-rt-") {
            continue;
        }
        let root = e.path().display().to_string();
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
            .filter(|m| m.starts_with(&root))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let c = std::ffi::CString::new(m).unwrap();
            // SAFETY: unmounting under a dead test's temporary root.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_dir_all(e.path());
    }
}

pub fn cgroup_dirs(rel: &str) -> Vec<PathBuf> {
    let mut v = vec![];
    if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
        for e in rd.flatten() {
            let d = e.path().join(rel);
            if d.exists() {
                v.push(d);
            }
        }
    }
    if Path::new("/sys/fs/cgroup").join(rel).exists() {
        v.push(Path::new("/sys/fs/cgroup").join(rel));
    }
    v
}

/// Kill every process in a cgroup tree and remove it, deepest first.
pub fn sweep_cgroup(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.path().is_dir() {
                sweep_cgroup(&e.path());
            }
        }
    }
    for _ in 0..200 {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for p in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            // SAFETY: killing processes of the test's own cgroup.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !f().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn prerequisites(test: &str) -> bool {
    let overlay = std::fs::read_to_string("/proc/filesystems")
        .unwrap_or_default()
        .contains("overlay");
    let cgroups = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "/sys/fs/cgroup/cgroup.controllers"
    } else {
        "/sys/fs/cgroup/pids"
    };
    require_root(test)
        && require_path(test, node_test_support::image::BUSYBOX)
        && require_path(test, cgroups)
        // overlayfs registered with the kernel (else the module's directory is missing too)
        && require_path(test, if overlay { "/proc/filesystems" } else { "/sys/module/overlay" })
}

/// Run `f` with a fresh tokio runtime on a thread inside a new network namespace.
pub fn in_netns<F, Fut>(label: &str, f: F)
where
    F: FnOnce() -> Fut + Send,
    Fut: std::future::Future<Output = ()>,
{
    let ns = NetnsFixture::new(label).expect("netns");
    ns.run_in(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f())
    })
    .expect("inside netns");
}

pub fn log_entries(path: &Path) -> Vec<(String, String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let mut it = l.splitn(4, ' ');
            let ts = it.next().unwrap_or("").to_string();
            assert!(
                ts.ends_with('Z') && ts.contains('T'),
                "bad timestamp in {l:?}"
            );
            (
                it.next().unwrap_or("").into(),
                it.next().unwrap_or("").into(),
                it.next().unwrap_or("").into(),
            )
        })
        .collect()
}
