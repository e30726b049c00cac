//! The native runtime's fixture for every root test that runs it (`root_native_*.rs`,
//! `root_streaming.rs`, `root_cri_server.rs`): a runtime root and cgroup parent of its own per
//! test, removed with everything the runtime made in them (sandboxes, containers, processes,
//! mounts, cgroups) even after a panic or a killed test process; [`Env`], the same with a
//! recording fake CNI plugin and the busybox test image as `busybox:test`; the prerequisites
//! check; running a closure inside a fresh network namespace; container config, pid, liveness
//! and CRI log helpers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use node_core::{RuntimeBackend, cri};
use node_cri::native::runtime::{LayerDirImages, NativeConfig, NativeRuntime, ResolvedImage};
use node_test_support::sweep::{detach_mounts_under, kill_cgroup_tree};
use node_test_support::{FakeCni, NetnsFixture, TestImage, require_path, require_root};

use super::pod_fixture;

#[allow(unused_imports)] // not every test file waits or looks at cgroups
pub use {super::pod_fixture::wait_for, node_test_support::sweep::cgroup_dirs};

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

/// The mount points at or under `root` (none must be left).
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
        kill_cgroup_tree(&d);
    }
    for d in cgroup_dirs("nodekit-test") {
        let _ = std::fs::remove_dir(d); // fails while another test still uses it
    }
    detach_mounts_under(root);
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
                kill_cgroup_tree(&e.path());
            }
        }
    }
    for e in std::fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        if dead(&e.file_name().to_string_lossy(), "nodekit-rt-") {
            detach_mounts_under(&e.path());
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// A CNI plugin that remembers every attachment it was given, around [`FakeCni`].
#[derive(Default)]
pub struct RecordingCni {
    pub inner: FakeCni,
    pub seen: std::sync::Mutex<Vec<node_core::Attachment>>,
}

#[async_trait::async_trait]
impl node_core::CniPlugin for RecordingCni {
    async fn add(
        &self,
        a: &node_core::Attachment,
    ) -> Result<node_core::CniResult, node_core::CniError> {
        self.seen.lock().unwrap().push(a.clone());
        self.inner.add(a).await
    }
    async fn del(&self, a: &node_core::Attachment) -> Result<(), node_core::CniError> {
        self.inner.del(a).await
    }
    async fn check(&self, a: &node_core::Attachment) -> Result<(), node_core::CniError> {
        self.inner.check(a).await
    }
    async fn status(&self) -> Result<(), node_core::CniError> {
        self.inner.status().await
    }
    async fn gc(&self, keep: &[node_core::AttachmentKey]) -> Result<(), node_core::CniError> {
        self.inner.gc(keep).await
    }
}

/// A runtime root for one test; dropping it removes everything the runtime made under it.
pub struct Env {
    /// The test's temporary root (the runtime's root is `rt/` under it).
    pub root: tempfile::TempDir,
    /// The cgroup parent of the test's pods.
    pub cgroup_parent: String,
    /// The fake CNI plugin (its attachments and calls).
    pub cni: FakeCni,
    /// The plugin the runtime is given: records every attachment, then calls `cni`.
    pub recorder: Arc<RecordingCni>,
    /// The images the runtime resolves (`busybox:test`).
    pub images: Arc<LayerDirImages>,
    /// The kubelet's pod log directories.
    pub logs: PathBuf,
}

impl Env {
    pub fn new() -> Self {
        let (root, cgroup_parent) = new_root();
        let images = Arc::new(LayerDirImages::new());
        let img = TestImage::busybox()
            .file("/var/www/index.html", "hello from nodekit\n", 0o644)
            .build()
            .expect("busybox image");
        images.insert(
            "busybox:test",
            ResolvedImage {
                id: img.config.digest.clone(),
                layer_dirs: img.unpack_layers(root.path()).expect("unpack busybox"),
                config: img.parsed_config().expect("busybox image config"),
            },
        );
        let logs = root.path().join("pod-logs");
        let recorder = Arc::new(RecordingCni::default());
        Self {
            root,
            cgroup_parent,
            cni: recorder.inner.clone(),
            recorder,
            images,
            logs,
        }
    }

    pub fn config(&self) -> NativeConfig {
        NativeConfig {
            root: self.root.path().join("rt"),
            cni: self.recorder.clone(),
            images: self.images.clone(),
            init_binary: Some(PathBuf::from(INIT)),
            cgroup_parent: self.cgroup_parent.clone(),
            kill_wait: Duration::from_secs(10),
            rlimits: vec![(libc::RLIMIT_NOFILE, 4096, 4096)],
            ..Default::default()
        }
    }

    pub fn runtime(&self) -> NativeRuntime {
        NativeRuntime::new(self.config()).expect("runtime")
    }

    pub fn sandbox_config(&self, name: &str) -> cri::PodSandboxConfig {
        let mut c = pod_fixture::sandbox_config(
            name,
            &format!("uid-{name}"),
            "default",
            &self.logs.join(name).display().to_string(),
            &self.cgroup_parent,
        );
        c.dns_config = Some(cri::DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec!["default.svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        });
        c.labels = pod_fixture::labels(&[("app", name)]);
        c.linux.as_mut().unwrap().sysctls =
            HashMap::from([("net.ipv4.ip_unprivileged_port_start".into(), "80".into())]);
        c
    }

    /// A running pod sandbox of [`Env::sandbox_config`]`(name)`: its id and config.
    pub async fn pod(&self, rt: &NativeRuntime, name: &str) -> (String, cri::PodSandboxConfig) {
        let cfg = self.sandbox_config(name);
        (pod_fixture::run_pod(rt, &cfg).await, cfg)
    }

    /// The mount points under the root (none must be left).
    pub fn mounts_under_root(&self) -> Vec<String> {
        mounts_under(self.root.path())
    }

    /// The cgroup directories of this test left in any hierarchy.
    pub fn cgroups_left(&self) -> Vec<PathBuf> {
        cgroups_left(&self.cgroup_parent)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        teardown(self.config(), self.root.path(), &self.cgroup_parent);
    }
}

/// A container of `busybox:test` running `command` in a PID namespace of its own, labelled
/// `container=<name>`, logging to `<name>/0.log`.
pub fn container_config(name: &str, command: &[&str]) -> cri::ContainerConfig {
    let mut c =
        pod_fixture::container_config(name, "busybox:test", command, &format!("{name}/0.log"));
    c.labels = pod_fixture::labels(&[("container", name)]);
    c.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                pid: cri::NamespaceMode::Container as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    c
}

/// Create and start a container; its id.
pub async fn run_container(
    rt: &NativeRuntime,
    sandbox: &str,
    sandbox_cfg: &cri::PodSandboxConfig,
    cfg: cri::ContainerConfig,
) -> String {
    pod_fixture::start_container(rt, sandbox, sandbox_cfg, cfg).await
}

/// A container's verbose status.
pub async fn status(rt: &NativeRuntime, id: &str) -> cri::ContainerStatus {
    rt.container_status(id, true).await.unwrap().status.unwrap()
}

/// The pid of a container's process, from its verbose status.
pub fn pid_of(st: &cri::ContainerStatusResponse) -> i32 {
    let info: serde_json::Value = serde_json::from_str(&st.info["info"]).unwrap();
    info["pid"].as_i64().unwrap() as i32
}

/// Whether `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.rsplit_once(')').unwrap().1.trim_start().starts_with('Z'))
        .unwrap_or(false)
}

/// Root, busybox-static, cgroups and overlayfs (skip locally, panic under CI=true).
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

/// A root test of the native runtime named `test`: without the [`prerequisites`] it returns
/// (locally) or fails (under CI=true); else `f` runs with a fresh [`Env`] and a runtime of it,
/// on a thread inside a new network namespace (`label`); the env is removed afterwards.
pub fn native_test(test: &str, label: &str, f: impl AsyncFnOnce(&Env, NativeRuntime) + Send) {
    if !prerequisites(test) {
        return;
    }
    let env = Env::new();
    in_netns(label, || async {
        let rt = env.runtime();
        f(&env, rt).await
    });
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

/// Wait (up to `timeout`) until the CRI log file at `path` has, for each (stream, text) of
/// `want`, an entry of that stream whose content holds that text: a container's stdout and
/// stderr are two pipes, so a line of one may be logged after a later line of the other.
pub async fn wait_log_entries(path: &Path, want: &[(&str, &str)], timeout: Duration) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let entries = log_entries(path);
        let has = |(stream, text): &(&str, &str)| {
            entries.iter().any(|e| e.0 == *stream && e.2.contains(text))
        };
        if want.iter().all(has) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {want:?} in {}: {entries:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The (stream, tag, content) of every whole line of a CRI log file, asserting the timestamps
/// (the runtime may be writing the last line as it is read: a line without its newline yet is
/// left for the next read).
pub fn log_entries(path: &Path) -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    pod_fixture::parse_cri_log(whole)
        .into_iter()
        .map(|(t, stream, tag, content)| {
            assert!(pod_fixture::is_rfc3339_nano(&t), "bad timestamp {t:?}");
            (stream, tag, content)
        })
        .collect()
}
