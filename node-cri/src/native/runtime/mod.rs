//! The native runtime's sandboxes and containers ([`NativeRuntime`], a
//! [`node_core::RuntimeBackend`]): Linux namespaces, overlayfs root filesystems, cgroups and a
//! per-container monitor that outlives the runtime process, all launched by re-executing our
//! own init binary (`nodekit-init`, see [`init`]) instead of forking the multi-threaded runtime.
//!
//! Layout under [`NativeConfig::root`]:
//! `state/{sandboxes,containers}/<id>.json` (the persisted lifecycle, see [`state`]),
//! `sandboxes/<id>/` (namespace files, `hostname`, `hosts`, `resolv.conf`) and
//! `containers/<id>/` (`spec.json` for the init, overlay `upper`/`work`, the `rootfs` mount
//! point, mounted only inside the container's own mount namespace).

pub mod caps;
pub mod cgroup;
mod container;
mod events;
pub mod init;
pub mod log;
pub mod phases;
mod sandbox;
pub mod seccomp;
pub mod seccomp_profile;
pub mod spec;
pub mod state;
mod stream;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use node_core::{
    Attachment, AttachmentKey, CniError, CniPlugin, CniResult, RuntimeBackend, RuntimeError, cri,
};
use oci_spec::image::ImageConfiguration;

pub use state::{ContainerStatus, SandboxStatus};

/// An image resolved for a container: its id, its unpacked layers and its config.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// The image id (config digest).
    pub id: String,
    /// Unpacked layer directories, bottom first (overlay lower dirs).
    pub layer_dirs: Vec<PathBuf>,
    /// The image config (Entrypoint, Cmd, Env, WorkingDir, User, StopSignal).
    pub config: ImageConfiguration,
}

/// Where container root filesystems come from: an image store that has the image unpacked.
pub trait RootfsProvider: Send + Sync {
    /// The unpacked image named by a reference or id; [`RuntimeError::NotFound`] when absent.
    fn resolve(&self, image: &str) -> Result<ResolvedImage, RuntimeError>;
}

/// A [`RootfsProvider`] over images already unpacked into directories, registered by name
/// (for embedding a fixed image set, tests and benchmarks).
#[derive(Default)]
pub struct LayerDirImages {
    images: Mutex<HashMap<String, ResolvedImage>>,
}

impl LayerDirImages {
    /// No images yet.
    pub fn new() -> Self {
        Self::default()
    }
    /// Register an image under a name (reference) and under its id.
    pub fn insert(&self, name: &str, image: ResolvedImage) {
        let mut m = self.images.lock().unwrap_or_else(|e| e.into_inner());
        m.insert(image.id.clone(), image.clone());
        m.insert(name.to_string(), image);
    }
}

impl RootfsProvider for LayerDirImages {
    fn resolve(&self, image: &str) -> Result<ResolvedImage, RuntimeError> {
        let m = self.images.lock().unwrap_or_else(|e| e.into_inner());
        m.get(image).cloned().ok_or_else(|| RuntimeError::NotFound {
            kind: "image",
            id: image.to_string(),
        })
    }
}

/// A provider with no images (the default until an image store is wired in).
struct NoImages;

impl RootfsProvider for NoImages {
    fn resolve(&self, image: &str) -> Result<ResolvedImage, RuntimeError> {
        Err(RuntimeError::NotFound {
            kind: "image",
            id: image.to_string(),
        })
    }
}

/// The default network: loopback only (the pause process brings `lo` up; no CNI plugin runs).
struct LoopbackOnly;

#[async_trait]
impl CniPlugin for LoopbackOnly {
    async fn add(&self, _a: &Attachment) -> Result<CniResult, CniError> {
        Ok(CniResult {
            cni_version: "1.1.0".into(),
            ..Default::default()
        })
    }
    async fn del(&self, _a: &Attachment) -> Result<(), CniError> {
        Ok(())
    }
    async fn check(&self, _a: &Attachment) -> Result<(), CniError> {
        Ok(())
    }
    async fn status(&self) -> Result<(), CniError> {
        Ok(())
    }
    async fn gc(&self, _keep: &[AttachmentKey]) -> Result<(), CniError> {
        Ok(())
    }
}

/// containerd's default masked paths.
pub const DEFAULT_MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// containerd's default read-only paths.
pub const DEFAULT_READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The configuration of a [`NativeRuntime`].
#[derive(Clone)]
pub struct NativeConfig {
    /// Where state, sandboxes and containers live (`/var/lib/nodekit/native`).
    pub root: PathBuf,
    /// Pod networking, called on sandbox run (ADD) and stop (DEL). Default: loopback only.
    pub cni: Arc<dyn CniPlugin>,
    /// Container root filesystems. Default: no images.
    pub images: Arc<dyn RootfsProvider>,
    /// The init binary; `None`: `nodekit-init` next to the current executable (or, for test
    /// binaries in `target/*/deps`, one directory up).
    pub init_binary: Option<PathBuf>,
    /// Where pods whose config names no `cgroup_parent` get their own: `<cgroup_parent>/pod-<id>`
    /// (relative to the hierarchy roots), removed with the pod.
    pub cgroup_parent: String,
    /// The cgroup hierarchy (default: the host's, [`cgroup::Hierarchy::detect`]).
    pub cgroups: cgroup::Hierarchy,
    /// A pids limit for every container (0: none); `unified["pids.max"]` in the CRI resources
    /// overrides it per container.
    pub pids_limit: i64,
    /// Lines longer than this are logged as partial (`P`) entries (containerd: 16 KiB).
    pub max_log_line_size: usize,
    /// Resource limits for every container process: (`RLIMIT_*`, soft, hard).
    pub rlimits: Vec<(u32, u64, u64)>,
    /// How long to wait for a killed container's exit to be recorded.
    pub kill_wait: Duration,
    /// The streaming server for Exec, Attach and PortForward (started on the first such call,
    /// on that caller's tokio runtime; default `127.0.0.1:0`).
    pub streaming: crate::streaming::StreamingConfig,
    /// How many container events a subscriber may fall behind before its stream ends with
    /// `ResourceExhausted` (it relists and subscribes again).
    pub event_buffer: usize,
    /// Test only: `run_sandbox` never returns once the pause process runs and its namespaces
    /// are bind-mounted, before the sandbox record names them (dropping the call there is a
    /// kill -9 of the runtime in that window).
    #[doc(hidden)]
    pub hang_after_pause_for_tests: bool,
}

impl Default for NativeConfig {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/var/lib/nodekit/native"),
            cni: Arc::new(LoopbackOnly),
            images: Arc::new(NoImages),
            init_binary: None,
            cgroup_parent: "nodekit".into(),
            cgroups: cgroup::Hierarchy::detect(),
            pids_limit: 0,
            max_log_line_size: 16 * 1024,
            rlimits: Vec::new(),
            kill_wait: Duration::from_secs(10),
            streaming: Default::default(),
            event_buffer: 1024,
            hang_after_pause_for_tests: false,
        }
    }
}

impl std::fmt::Debug for NativeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeConfig")
            .field("root", &self.root)
            .field("init_binary", &self.init_binary)
            .field("cgroup_parent", &self.cgroup_parent)
            .field("cgroups", &self.cgroups)
            .field("pids_limit", &self.pids_limit)
            .finish_non_exhaustive()
    }
}

/// The default location of the init binary: next to the current executable, or one directory
/// up from it (test and bench binaries live in `target/<profile>/deps`).
pub fn default_init_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [dir.join("nodekit-init"), dir.parent()?.join("nodekit-init")]
        .into_iter()
        .find(|p| p.is_file())
}

/// The native namespaces runtime: sandboxes and containers on Linux namespaces, overlayfs and
/// cgroups, with no containerd.
///
/// Every process is started by the init binary (`nodekit-init`, a `[[bin]]` of this crate:
/// install it next to the agent or set [`NativeConfig::init_binary`]). Each container has a
/// monitor process that outlives the runtime, so a new `NativeRuntime` on the same root takes
/// over whatever an earlier one started. Run the agent with a service manager setting that does
/// not kill the whole control group on restart (systemd `KillMode=process`, as for containerd).
///
/// ```no_run
/// use std::sync::Arc;
/// use node_core::RuntimeBackend;
/// use node_cri::native::runtime::{LayerDirImages, NativeConfig, NativeRuntime};
///
/// # async fn assemble(cni: Arc<dyn node_core::CniPlugin>) -> Result<(), node_core::RuntimeError> {
/// let runtime = NativeRuntime::new(NativeConfig {
///     root: "/var/lib/nodekit/native".into(),
///     cni,
///     images: Arc::new(LayerDirImages::new()), // or the image store
///     ..Default::default()
/// })?;
/// let runtime: Arc<dyn RuntimeBackend> = Arc::new(runtime);
/// println!("{:?}", runtime.version().await?);
/// # Ok(())
/// # }
/// ```
pub struct NativeRuntime {
    cfg: NativeConfig,
    store: state::Store,
    init: PathBuf,
    /// What this runtime shares with its views (the streaming server's handle, the exit
    /// watcher's): per-id locks, names being created, phases, event subscribers.
    shared: Arc<Shared>,
    streaming: tokio::sync::OnceCell<crate::streaming::StreamingServer>,
    /// The exit watcher, started by the first event subscription.
    watcher: Mutex<Option<events::Watcher>>,
}

/// The state of a [`NativeRuntime`] that its views share, so that a streaming call and a CRI
/// call on the same container take the same lock.
struct Shared {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    reserved: Mutex<std::collections::HashSet<String>>,
    phases: phases::PhaseLog,
    events: events::EventHub,
}

impl std::fmt::Debug for NativeRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeRuntime")
            .field("cfg", &self.cfg)
            .field("init", &self.init)
            .finish_non_exhaustive()
    }
}

pub(crate) fn io_err(path: &Path, e: std::io::Error) -> RuntimeError {
    RuntimeError::Io {
        path: path.to_path_buf(),
        source: e,
    }
}

pub(crate) fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

pub(crate) fn new_id() -> String {
    let mut b = [0u8; 32];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut b);
    }
    hex::encode(b)
}

/// Whether the process `pid` is alive and still the one that started at `ticks`.
pub(crate) fn process_alive(pid: i32, ticks: u64) -> bool {
    if pid <= 0 {
        return false;
    }
    let now = init::start_ticks(pid);
    if now == 0 || now != ticks {
        return false;
    }
    // a zombie is not alive
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .map(|zombie| !zombie)
        .unwrap_or(false)
}

/// Send `sig` to `pid` when it is still the process that started at `ticks`.
pub(crate) fn signal(pid: i32, ticks: u64, sig: i32) -> bool {
    if !process_alive(pid, ticks) {
        return false;
    }
    // SAFETY: kill with a pid we verified against its start time.
    unsafe { libc::kill(pid, sig) == 0 }
}

impl NativeRuntime {
    /// A runtime on `cfg.root`; picks up whatever an earlier runtime left there.
    pub fn new(cfg: NativeConfig) -> Result<Self, RuntimeError> {
        for d in ["sandboxes", "containers", "state"] {
            let p = cfg.root.join(d);
            std::fs::create_dir_all(&p).map_err(|e| io_err(&p, e))?;
            // container specs and state hold environments (secrets): root only
            use std::os::unix::fs::PermissionsExt;
            let mode = if d == "sandboxes" { 0o711 } else { 0o700 };
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
                .map_err(|e| io_err(&p, e))?;
        }
        let store = state::Store::new(&cfg.root)?;
        let init = match &cfg.init_binary {
            Some(p) => p.clone(),
            None => default_init_binary().ok_or_else(|| {
                RuntimeError::Internal("the init binary nodekit-init was not found next to the current executable; set NativeConfig::init_binary".into())
            })?,
        };
        if !init.is_file() {
            return Err(RuntimeError::Internal(format!(
                "init binary {} does not exist",
                init.display()
            )));
        }
        let shared = Arc::new(Shared {
            locks: Mutex::new(HashMap::new()),
            reserved: Mutex::new(Default::default()),
            phases: Default::default(),
            events: events::EventHub::new(cfg.event_buffer),
        });
        let rt = Self {
            cfg,
            store,
            init,
            shared,
            streaming: Default::default(),
            watcher: Mutex::new(None),
        };
        rt.sweep_orphans(Duration::from_secs(60));
        rt.record_interrupted_starts();
        Ok(rt)
    }

    /// A runtime killed between a container's start and the record of it leaves the record
    /// saying created while the monitor recorded the start: the container runs. Reads already
    /// report it running; this writes the record so, so that the state on disk says what runs.
    fn record_interrupted_starts(&self) {
        for id in self.store.container_ids() {
            match self.store.record_interrupted_start(&id) {
                Ok(true) => tracing::info!(
                    id,
                    "recorded the start of a container an interrupted runtime began"
                ),
                Ok(false) => {}
                Err(e) => tracing::warn!(id, error = %e, "cannot record an interrupted start"),
            }
        }
    }

    /// Remove sandbox and container directories that no state record names (a runtime that
    /// died in the middle of creating them) and that are older than `age` (so that a creation
    /// in progress is left alone): namespace files and the pod's `/dev/shm` are unmounted.
    fn sweep_orphans(&self, age: Duration) {
        let old = |p: &Path| {
            std::fs::metadata(p)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|e| e > age)
        };
        for (kind, known) in [
            ("sandboxes", self.store.sandbox_ids()),
            ("containers", self.store.container_ids()),
        ] {
            for e in std::fs::read_dir(self.cfg.root.join(kind))
                .into_iter()
                .flatten()
                .flatten()
            {
                let id = e.file_name().to_string_lossy().into_owned();
                if known.contains(&id) || !old(&e.path()) {
                    continue;
                }
                tracing::warn!(
                    kind,
                    id,
                    "removing an orphaned directory left by an interrupted creation"
                );
                for f in std::fs::read_dir(e.path().join("ns"))
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    sandbox::unbind_ns(&f.path());
                }
                sandbox::unmount_dir(&e.path().join("shm"));
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }

    /// The configuration.
    pub fn config(&self) -> &NativeConfig {
        &self.cfg
    }

    /// Reserve a sandbox or container name until the returned guard drops (by then the record
    /// is on disk, where `taken` finds it): creations of other names run concurrently.
    fn reserve(
        &self,
        key: String,
        taken: impl FnOnce() -> Option<String>,
    ) -> Result<Reservation<'_>, RuntimeError> {
        let mut r = self
            .shared
            .reserved
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if r.contains(&key) {
            return Err(RuntimeError::AlreadyExists(format!(
                "{key} is being created"
            )));
        }
        if let Some(msg) = taken() {
            return Err(RuntimeError::AlreadyExists(msg));
        }
        r.insert(key.clone());
        Ok(Reservation { rt: self, key })
    }

    fn lock_for(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = self.shared.locks.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(id.to_string()).or_default().clone()
    }

    fn forget_lock(&self, id: &str) {
        self.shared
            .locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.cfg.root.join("sandboxes").join(id)
    }

    fn container_dir(&self, id: &str) -> PathBuf {
        self.cfg.root.join("containers").join(id)
    }
}

/// A name reserved while its sandbox or container is being created.
struct Reservation<'a> {
    rt: &'a NativeRuntime,
    key: String,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.rt
            .shared
            .reserved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
    }
}

#[async_trait]
impl RuntimeBackend for NativeRuntime {
    async fn version(&self) -> Result<cri::VersionResponse, RuntimeError> {
        Ok(cri::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: "nodekit-native".into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: "v1".into(),
        })
    }

    async fn status(&self, _verbose: bool) -> Result<cri::StatusResponse, RuntimeError> {
        let net = self.cfg.cni.status().await;
        let cond = |t: &str, ok: bool, reason: &str, msg: String| cri::RuntimeCondition {
            r#type: t.into(),
            status: ok,
            reason: if ok { String::new() } else { reason.into() },
            message: msg,
        };
        Ok(cri::StatusResponse {
            status: Some(cri::RuntimeStatus {
                conditions: vec![
                    cond("RuntimeReady", true, "", String::new()),
                    cond(
                        "NetworkReady",
                        net.is_ok(),
                        "NetworkPluginNotReady",
                        net.err().map(|e| e.to_string()).unwrap_or_default(),
                    ),
                ],
            }),
            ..Default::default()
        })
    }

    async fn run_pod_sandbox(
        &self,
        req: cri::RunPodSandboxRequest,
    ) -> Result<String, RuntimeError> {
        self.run_sandbox(req).await
    }
    async fn stop_pod_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        self.stop_sandbox(id).await
    }
    async fn remove_pod_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        self.remove_sandbox(id).await
    }
    async fn pod_sandbox_status(
        &self,
        id: &str,
        verbose: bool,
    ) -> Result<cri::PodSandboxStatusResponse, RuntimeError> {
        self.sandbox_status(id, verbose)
    }
    async fn list_pod_sandbox(
        &self,
        filter: Option<cri::PodSandboxFilter>,
    ) -> Result<Vec<cri::PodSandbox>, RuntimeError> {
        Ok(self.list_sandboxes(filter))
    }
    async fn create_container(
        &self,
        req: cri::CreateContainerRequest,
    ) -> Result<String, RuntimeError> {
        self.create(req).await
    }
    async fn start_container(&self, id: &str) -> Result<(), RuntimeError> {
        self.start(id).await
    }
    async fn stop_container(&self, id: &str, timeout: Duration) -> Result<(), RuntimeError> {
        self.stop(id, timeout).await
    }
    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        self.remove(id).await
    }
    async fn container_status(
        &self,
        id: &str,
        verbose: bool,
    ) -> Result<cri::ContainerStatusResponse, RuntimeError> {
        self.status_of(id, verbose)
    }
    async fn list_containers(
        &self,
        filter: Option<cri::ContainerFilter>,
    ) -> Result<Vec<cri::Container>, RuntimeError> {
        Ok(self.list(filter))
    }
    async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: Duration,
    ) -> Result<cri::ExecSyncResponse, RuntimeError> {
        self.exec_in(id, cmd, timeout).await
    }
    async fn container_stats(&self, id: &str) -> Result<cri::ContainerStats, RuntimeError> {
        self.stats_of(id)
    }
    async fn list_container_stats(
        &self,
        filter: Option<cri::ContainerStatsFilter>,
    ) -> Result<Vec<cri::ContainerStats>, RuntimeError> {
        Ok(self.list_stats(filter))
    }
    async fn pod_sandbox_stats(&self, id: &str) -> Result<cri::PodSandboxStats, RuntimeError> {
        self.pod_stats(id)
    }
    async fn list_pod_sandbox_stats(
        &self,
        filter: Option<cri::PodSandboxStatsFilter>,
    ) -> Result<Vec<cri::PodSandboxStats>, RuntimeError> {
        Ok(self.list_pod_stats(filter))
    }
    async fn update_container_resources(
        &self,
        req: cri::UpdateContainerResourcesRequest,
    ) -> Result<(), RuntimeError> {
        self.update_resources(req).await
    }
    async fn reopen_container_log(&self, id: &str) -> Result<(), RuntimeError> {
        self.reopen_log(id)
    }
    async fn exec(&self, req: cri::ExecRequest) -> Result<cri::ExecResponse, RuntimeError> {
        self.exec_url(req).await
    }
    async fn attach(&self, req: cri::AttachRequest) -> Result<cri::AttachResponse, RuntimeError> {
        self.attach_url(req).await
    }
    async fn port_forward(
        &self,
        req: cri::PortForwardRequest,
    ) -> Result<cri::PortForwardResponse, RuntimeError> {
        self.port_forward_url(req).await
    }
    async fn get_container_events(&self) -> Result<node_core::ContainerEventStream, RuntimeError> {
        self.subscribe().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_share_the_locks_of_the_runtime() {
        let dir = tempfile::tempdir().unwrap();
        let rt = NativeRuntime::new(NativeConfig {
            root: dir.path().to_path_buf(),
            init_binary: Some(PathBuf::from("/bin/sh")),
            ..Default::default()
        })
        .unwrap();
        let view = rt.view();
        assert!(Arc::ptr_eq(&rt.lock_for("c1"), &view.lock_for("c1")));
        assert!(!Arc::ptr_eq(&rt.lock_for("c1"), &view.lock_for("c2")));
        // a lock taken through the view holds the runtime's CRI calls on that id
        let held = view.lock_for("c1");
        let _g = held.try_lock().unwrap();
        assert!(rt.lock_for("c1").try_lock().is_err());
        let _r = rt.reserve("pod a".into(), || None).unwrap();
        assert!(view.reserve("pod a".into(), || None).is_err());
    }
}
