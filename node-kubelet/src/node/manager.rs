//! [`NodeManager`]: the real [`NodeHooks`] — admission against allocatable, the pod cgroup as
//! the sandbox's `cgroup_parent`, pod volumes as CRI mounts (refreshed on every sync, so
//! configMap and secret updates land with the `..data` swap), the eviction manager and the
//! graceful shutdown manager driving pod termination through the workers, the node's status
//! (with an API server: registration, Lease and status patches; standalone: the latest Node as
//! JSON, see [`NodeManager::latest_node`]), image and dead-container garbage collection,
//! container log rotation ([`NodeConfig::container_logs`]), and, with an API server, mirror
//! pods and service-account tokens.
//!
//! The runtime is the kubelet's: the node manager takes it (and the image service) from the
//! [`PodControl`] the kubelet hands it when it runs. Its status makes the node Ready
//! (RuntimeReady, NetworkReady), its version is the Node's `containerRuntimeVersion`, it is
//! garbage collected ([`NodeConfig::gc`]) and it reports the containers' writable layers for
//! their ephemeral-storage usage where it can.
//!
//! ```no_run
//! # fn demo(runtime: std::sync::Arc<node_test_support::FakeRuntime>) -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use node_kubelet::node::{NodeConfig, NodeManager, volumes::MemoryObjectStore};
//! use node_kubelet::{JsonStatusSink, Kubelet};
//!
//! let node = NodeManager::new(NodeConfig::new("node-1"), Arc::new(MemoryObjectStore::default()))?
//!     .shutdown_on(node_kubelet::node::shutdown::termination_signal()?);
//! let kubelet = Kubelet::builder("node-1")
//!     .runtime(runtime.clone(), runtime)
//!     .status(Arc::new(JsonStatusSink::new("/run/nodekit/status")?))
//!     .node(Arc::new(node))
//!     .build()?;
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{Container, Pod};
use node_core::{PodRef, RuntimeBackend, cri};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::allocatable::{self, AllocatableConfig, CapacityError, NodeResources};
use super::cgroups::{CgroupConfig, CgroupError, PodCgroups};
use super::eviction::{
    ContainerUsage, EVICTED_REASON, Eviction, EvictionConfig, EvictionError, EvictionManager,
    NodeSignals, PodEvictor, PodUsage, SignalObserver, admit_under_pressure,
};
use super::gc::{
    ContainerGcManager, GcConfig, ImageGcManager, PodPresence, RuntimeImageFs, run_periodic,
};
use super::hooks::{NodeHookError, NodeHooks, PodControl, PodRejection, PodSetup};
use super::logrotate::{ContainerLogConfig, ContainerLogManager, LogRotateError};
use super::mirror::MirrorPods;
use super::shutdown::{
    GroupReport, PodTerminator, SHUTDOWN_MESSAGE, ShutdownConfig, ShutdownError, execute_shutdown,
    plan_shutdown,
};
use super::status::{LatestNode, NodeHealth, NodeReportConfig, NodeReporting};
use super::tokens::ServiceAccountTokens;
use super::volumes::{ObjectStore, VolumeConfig, VolumeManager};

/// What the node manager does; `Default` is kubelet's defaults without eviction or graceful
/// shutdown.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    /// The node's name.
    pub node_name: String,
    /// Capacity, reservations and the hard eviction thresholds subtracted for allocatable.
    pub allocatable: AllocatableConfig,
    /// The pod cgroup hierarchy; `None`: pods get no cgroup of the kubelet's (the runtime's
    /// default parent).
    pub cgroups: Option<CgroupConfig>,
    /// Where pod volumes live.
    pub volumes: VolumeConfig,
    /// The eviction manager; `None`: no eviction.
    pub eviction: Option<EvictionConfig>,
    /// How often the eviction manager runs (kubelet: 10 s).
    pub eviction_interval: Duration,
    /// Graceful shutdown groups; empty: pods are left running on the trigger.
    pub shutdown: ShutdownConfig,
    /// How often the QoS class cgroups are updated from the pods' requests (10 s).
    pub qos_update_interval: Duration,
    /// Image and dead-container garbage collection of the kubelet's runtime: periodic, and
    /// before evictions for disk pressure ([`GcConfig::enabled`] turns it off).
    pub gc: GcConfig,
    /// Where container logs live (the kubelet's `pod_log_root`), measured as the containers'
    /// ephemeral storage.
    pub pod_log_root: PathBuf,
    /// Rotation of the running containers' logs (kubelet's `--container-log-*`; default:
    /// kubelet's 10Mi, 5 files, every 10 s); `None`: logs grow without bound.
    pub container_logs: Option<ContainerLogConfig>,
}

impl NodeConfig {
    /// Defaults for the node `node_name`: pod cgroups under `kubepods`, volumes under
    /// `/var/lib/kubelet`, no eviction, no graceful shutdown.
    pub fn new(node_name: impl Into<String>) -> Self {
        let node_name = node_name.into();
        Self {
            volumes: VolumeConfig {
                node_name: node_name.clone(),
                ..Default::default()
            },
            node_name,
            allocatable: AllocatableConfig::default(),
            cgroups: Some(CgroupConfig::default()),
            eviction: None,
            eviction_interval: Duration::from_secs(10),
            shutdown: ShutdownConfig::default(),
            qos_update_interval: Duration::from_secs(10),
            gc: GcConfig::default(),
            pod_log_root: PathBuf::from("/var/log/pods"),
            container_logs: Some(ContainerLogConfig::default()),
        }
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self::new("")
    }
}

/// Setting up the node manager failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeManagerError {
    /// The node's capacity could not be read.
    #[error("node capacity: {0}")]
    Capacity(#[from] CapacityError),
    /// The pod cgroup hierarchy could not be prepared.
    #[error("pod cgroups: {0}")]
    Cgroups(#[from] CgroupError),
    /// The container log rotation settings are refused (`max_files` below 2, ...).
    #[error("container log rotation: {0}")]
    ContainerLogs(#[from] LogRotateError),
}

type Trigger = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The node's part of the kubelet, given to [`KubeletBuilder::node`](crate::KubeletBuilder::node).
pub struct NodeManager {
    config: NodeConfig,
    allocatable: NodeResources,
    cgroups: Option<Arc<PodCgroups>>,
    volumes: Arc<VolumeManager>,
    observer: Arc<dyn SignalObserver>,
    health: watch::Sender<NodeHealth>,
    shutting_down: Arc<AtomicBool>,
    trigger: Mutex<Option<Trigger>>,
    shutdown_reports: Arc<watch::Sender<Option<Vec<GroupReport>>>>,
    mirror: Option<MirrorPods>,
    tokens: Option<Arc<ServiceAccountTokens>>,
    reporting: NodeReporting,
}

impl std::fmt::Debug for NodeManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeManager")
            .field("config", &self.config)
            .field("allocatable", &self.allocatable)
            .finish_non_exhaustive()
    }
}

fn hook_err(
    pod: &Pod,
    stage: &'static str,
) -> impl FnOnce(Box<dyn std::error::Error + Send + Sync>) -> NodeHookError {
    let pod = PodRef::of(pod);
    move |source| NodeHookError { pod, stage, source }
}

impl NodeManager {
    /// Reads the node's capacity, computes allocatable and prepares the pod cgroup hierarchy.
    /// configMaps and secrets for volumes come from `store`.
    pub fn new(config: NodeConfig, store: Arc<dyn ObjectStore>) -> Result<Self, NodeManagerError> {
        let capacity = allocatable::node_capacity(&config.allocatable)?;
        let allocatable = allocatable::node_allocatable(&capacity, &config.allocatable);
        Self::with_allocatable(config, store, allocatable)
    }

    /// As [`new`](Self::new), with allocatable given rather than read from the machine.
    pub fn with_allocatable(
        config: NodeConfig,
        store: Arc<dyn ObjectStore>,
        allocatable: NodeResources,
    ) -> Result<Self, NodeManagerError> {
        if let Some(c) = &config.container_logs {
            c.validate()?;
        }
        let cgroups = match &config.cgroups {
            Some(c) => Some(Arc::new(PodCgroups::new(c.clone())?)),
            None => None,
        };
        let mut volume_config = config.volumes.clone();
        if volume_config.allocatable_cpu_milli == 0 {
            volume_config.allocatable_cpu_milli = allocatable.cpu_milli;
        }
        if volume_config.allocatable_memory_bytes == 0 {
            volume_config.allocatable_memory_bytes = allocatable.memory_bytes;
        }
        let observer = Arc::new(NodeSignals {
            nodefs: config.allocatable.root_dir.clone(),
            imagefs: config.gc.image_fs.clone(),
        });
        Ok(Self {
            volumes: Arc::new(VolumeManager::new(volume_config, store)),
            config,
            allocatable,
            cgroups,
            observer,
            health: watch::channel(NodeHealth::default()).0,
            shutting_down: Arc::new(AtomicBool::new(false)),
            trigger: Mutex::new(None),
            shutdown_reports: Arc::new(watch::channel(None).0),
            mirror: None,
            tokens: None,
            reporting: NodeReporting::default(),
        })
    }

    /// Run the graceful shutdown (by [`NodeConfig::shutdown`]) when `trigger` completes:
    /// [`termination_signal`](super::shutdown::termination_signal) for SIGTERM, or
    /// [`logind::prepare_for_shutdown`](super::logind) for a systemd inhibitor.
    #[must_use]
    pub fn shutdown_on(self, trigger: impl Future<Output = ()> + Send + 'static) -> Self {
        *self.trigger.lock().expect("trigger lock") = Some(Box::pin(trigger));
        self
    }

    /// Observe eviction signals with `observer` rather than the machine's [`NodeSignals`].
    #[must_use]
    pub fn signals(mut self, observer: Arc<dyn SignalObserver>) -> Self {
        self.observer = observer;
        self
    }

    /// With an API server: the Node registered, its Lease renewed and its status patched on
    /// change (by [`NodeReportConfig`]), mirror pods for static pods, and service-account
    /// tokens for projected volumes (TokenRequest, refreshed at 80 % of their lifetime).
    #[must_use]
    pub fn api(mut self, client: kube::Client) -> Self {
        if self.mirror.is_none() {
            self.mirror = Some(MirrorPods::new(client.clone(), &self.config.node_name));
        }
        self.tokens = Some(Arc::new(ServiceAccountTokens::new(client.clone())));
        self.reporting.client = Some(client);
        self
    }

    /// Mirror pods of static pods through `mirror`, in place of those [`api`](Self::api) makes
    /// with a watch of the node's pods of their own (before or after it): give it the mirror
    /// pods of the kubelet's API pod source ([`NodePodsWatch::mirror_pods`]) and the node's
    /// pods are listed and watched once.
    ///
    /// [`NodePodsWatch::mirror_pods`]: crate::source::NodePodsWatch::mirror_pods
    #[must_use]
    pub fn mirror_pods(mut self, mirror: MirrorPods) -> Self {
        self.mirror = Some(mirror);
        self
    }

    /// How the node's status is built and reported (addresses, labels, cadence, back-off).
    #[must_use]
    pub fn report(mut self, config: NodeReportConfig) -> Self {
        self.reporting.config = config;
        self
    }

    /// Measure the Node's capacity with `f` instead of procfs/statfs.
    #[must_use]
    pub fn node_capacity(
        mut self,
        f: impl Fn() -> Result<NodeResources, CapacityError> + Send + Sync + 'static,
    ) -> Self {
        self.reporting.capacity = Some(Arc::new(f));
        self
    }

    /// The Node object last reported, updated while the kubelet runs (standalone mode's node
    /// status: serve it with [`HttpState::node`](super::http::HttpState::node)).
    pub fn latest_node(&self) -> LatestNode {
        self.reporting.latest.clone()
    }

    /// Node allocatable, as admission uses it.
    pub fn allocatable(&self) -> NodeResources {
        self.allocatable
    }

    /// The pod cgroup hierarchy, when managed.
    pub fn cgroups(&self) -> Option<&PodCgroups> {
        self.cgroups.as_deref()
    }

    /// The node's health as eviction (pressure) and shutdown (NotReady) change it, for a
    /// [`NodeStatusReporter`](super::status::NodeStatusReporter).
    pub fn health(&self) -> watch::Receiver<NodeHealth> {
        self.health.subscribe()
    }

    /// The reports of the graceful shutdown, once it ran.
    pub fn shutdown_reports(&self) -> watch::Receiver<Option<Vec<GroupReport>>> {
        self.shutdown_reports.subscribe()
    }

    /// Where the pod's volumes live on the host.
    pub fn pod_volumes_dir(&self, uid: &str) -> PathBuf {
        self.volumes.pod_volumes_dir(uid)
    }
}

/// Measures the pods' usage and stops the pods chosen by the eviction manager through the
/// workers.
struct Evictor {
    control: PodControl,
    cgroups: Option<Arc<PodCgroups>>,
    volumes: Arc<VolumeManager>,
    pod_log_root: PathBuf,
    runtime: Arc<dyn RuntimeBackend>,
    /// Pods stopped by an eviction whose Failed status is not published yet: never chosen
    /// again (the next pod is).
    evicted: Mutex<HashSet<PodRef>>,
}

/// Bytes (allocated blocks, as `du`) and inodes under `path`, on its filesystem only; `(0, 0)`
/// when `path` does not exist. The summary's volume and log stats measure with it too.
pub(crate) fn disk_usage(path: &Path) -> (i64, i64) {
    use std::os::unix::fs::MetadataExt;
    let Ok(root) = std::fs::symlink_metadata(path) else {
        return (0, 0);
    };
    let dev = root.dev();
    let (mut bytes, mut inodes) = (0i64, 0i64);
    let mut stack = vec![(path.to_path_buf(), root)];
    while let Some((p, m)) = stack.pop() {
        bytes += m.blocks() as i64 * 512;
        inodes += 1;
        if m.is_dir() {
            for e in std::fs::read_dir(&p).into_iter().flatten().flatten() {
                if let Ok(md) = e.metadata()
                    && md.dev() == dev
                {
                    stack.push((e.path(), md));
                }
            }
        }
    }
    (bytes, inodes)
}

fn has_started(state: &crate::state::PodState) -> bool {
    state
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Running")
}

impl Evictor {
    /// The containers' writable layers as the runtime reports them, by (pod uid, container).
    async fn writable_layers(&self) -> HashMap<(String, String), i64> {
        let stats = match self.runtime.list_container_stats(None).await {
            Ok(s) => s,
            Err(node_core::RuntimeError::Unimplemented(_)) => return HashMap::new(),
            Err(e) => {
                tracing::debug!(error = %e, "no container stats");
                return HashMap::new();
            }
        };
        stats
            .into_iter()
            .filter_map(|s| {
                let a = s.attributes?;
                let used = s.writable_layer?.used_bytes?.value as i64;
                let uid = a.labels.get(crate::labels::POD_UID)?.clone();
                Some(((uid, a.metadata?.name), used))
            })
            .collect()
    }
}

#[async_trait]
impl PodEvictor for Evictor {
    async fn pod_usage(&self) -> Vec<PodUsage> {
        let states = self.control.pods();
        {
            // forget evictions whose pod ended (or is gone)
            let mut evicted = self.evicted.lock().expect("evicted lock");
            evicted.retain(|r| {
                states
                    .iter()
                    .any(|s| PodRef::of(&s.pod) == *r && !super::hooks::is_ended(s.status.as_ref()))
            });
        }
        let evicted = self.evicted.lock().expect("evicted lock").clone();
        // only pods that run: one not started yet uses nothing an eviction would free
        let pods: Vec<Pod> = states
            .into_iter()
            .filter(|s| has_started(s) && !super::hooks::is_ended(s.status.as_ref()))
            .map(|s| s.pod)
            .filter(|p| !evicted.contains(&PodRef::of(p)))
            .collect();
        let layers = self.writable_layers().await;
        let volumes = self.volumes.clone();
        let log_root = self.pod_log_root.clone();
        let cgroups = self.cgroups.clone();
        let measured = tokio::task::spawn_blocking(move || {
            pods.into_iter()
                .map(|pod| measure(pod, &volumes, &log_root, cgroups.as_deref(), &layers))
                .collect::<Vec<_>>()
        })
        .await;
        measured.unwrap_or_default()
    }

    async fn evict(&self, e: &Eviction) -> Result<(), EvictionError> {
        self.evicted
            .lock()
            .expect("evicted lock")
            .insert(e.pod.clone());
        self.control
            .stop(&e.pod, e.grace_period, &e.reason, &e.message)
            .await
            .map_err(|err| EvictionError::Observe {
                signal: e.signal,
                reason: err.to_string(),
            })?;
        // its containers are stopped and it never runs again: its emptyDirs free their disk now
        // (as kubelet cleans up an evicted pod's volumes), not when its source deletes it
        let (volumes, uid) = (self.volumes.clone(), e.pod.uid.clone());
        let torn = tokio::task::spawn_blocking(move || volumes.teardown_pod(&uid)).await;
        if let Ok(Err(err)) = torn {
            tracing::warn!(pod = %e.pod, error = %err, "cannot remove the evicted pod's volumes");
        }
        Ok(())
    }
}

/// One pod's usage: memory and pids from its cgroup, each container's writable layer (from
/// the runtime) and logs, its emptyDirs on disk.
fn measure(
    pod: Pod,
    volumes: &VolumeManager,
    log_root: &Path,
    cgroups: Option<&PodCgroups>,
    layers: &HashMap<(String, String), i64>,
) -> PodUsage {
    let r = PodRef::of(&pod);
    let usage = cgroups
        .and_then(|c| c.pod_usage(&pod).ok().flatten())
        .unwrap_or_default();
    let log_dir = crate::cri_config::pod_log_dir(log_root, &pod);
    let spec = pod.spec.clone().unwrap_or_default();
    let mut containers: Vec<ContainerUsage> = spec
        .containers
        .iter()
        .map(|c| {
            let (logs, _) = disk_usage(&log_dir.join(&c.name));
            let layer = layers
                .get(&(r.uid.clone(), c.name.clone()))
                .copied()
                .unwrap_or(0);
            ContainerUsage {
                name: c.name.clone(),
                memory_bytes: 0,
                ephemeral_bytes: logs + layer,
            }
        })
        .collect();
    // memory is measured per pod: it is counted once, on the first container
    if let Some(first) = containers.first_mut() {
        first.memory_bytes = usage.memory_working_set_bytes;
    } else {
        containers.push(ContainerUsage {
            memory_bytes: usage.memory_working_set_bytes,
            ..Default::default()
        });
    }
    let mut empty_dirs = BTreeMap::new();
    let mut inodes = 0;
    let dir = volumes.empty_dirs(&r.uid);
    for v in spec.volumes.iter().flatten() {
        let Some(ed) = &v.empty_dir else { continue };
        if ed.medium.as_deref() == Some("Memory") {
            continue; // tmpfs: memory, not ephemeral storage
        }
        let (bytes, n) = disk_usage(&dir.join(&v.name));
        empty_dirs.insert(v.name.clone(), bytes);
        inodes += n;
    }
    PodUsage {
        containers,
        volume_bytes: empty_dirs.values().sum(),
        empty_dirs,
        inodes,
        pids: usage.pids,
        pod,
    }
}

/// Which pods the kubelet has, for container garbage collection.
struct Presence(PodControl);

impl PodPresence for Presence {
    fn sources_ready(&self) -> bool {
        self.0.sources_ready()
    }
    fn has_pod(&self, uid: &str) -> bool {
        self.0
            .pods()
            .iter()
            .any(|s| s.pod.metadata.uid.as_deref() == Some(uid))
    }
}

/// Stops pods for the graceful shutdown through the workers.
struct Terminator {
    control: PodControl,
    health: watch::Sender<NodeHealth>,
    shutting_down: Arc<AtomicBool>,
}

#[async_trait]
impl PodTerminator for Terminator {
    async fn terminate(&self, pod: &PodRef, grace_period: Duration) -> Result<(), ShutdownError> {
        self.control
            .stop(pod, grace_period, "Terminated", SHUTDOWN_MESSAGE)
            .await
            .map_err(|e| ShutdownError {
                pod: pod.clone(),
                message: e.reason,
            })
    }

    async fn node_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.health.send_modify(|h| {
            h.shutting_down = true;
            h.message = Some("node is shutting down".into());
        });
    }
}

#[async_trait]
impl NodeHooks for NodeManager {
    fn start(&self, control: PodControl, shutdown: CancellationToken) {
        let (runtime, images) = (control.runtime().clone(), control.images().clone());
        let mut reporting = self.reporting.clone();
        reporting.runtime.get_or_insert_with(|| runtime.clone());
        reporting.spawn(
            &self.config.node_name,
            &self.config.allocatable,
            &self.health,
            shutdown.clone(),
        );
        if let Some(m) = self.mirror.clone() {
            // mirror pods whose static pod is gone (kubelet's pod cleanup)
            let every = Duration::from_secs(10);
            tokio::spawn(m.clean_orphans(control.clone(), every, shutdown.clone()));
        }
        if let Some(cg) = self.cgroups.clone() {
            // the Burstable class's CPU shares follow the sum of its pods' requests
            let (control, token) = (control.clone(), shutdown.clone());
            let every = self.config.qos_update_interval;
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tokio::select! {
                        _ = token.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    if let Err(e) = cg.update_qos_classes(&control.active_pods()) {
                        tracing::warn!(error = %e, "cannot update the QoS class cgroups");
                    }
                }
            });
        }
        let (mut image_gc, mut container_gc) = (None, None);
        if self.config.gc.enabled {
            let fs = Arc::new(RuntimeImageFs {
                images: images.clone(),
                fallback: self.config.gc.image_fs.clone(),
            });
            match ImageGcManager::new(self.config.gc.image.clone(), images, runtime.clone(), fs) {
                Ok(m) => image_gc = Some(Arc::new(m)),
                Err(e) => tracing::error!(error = %e, "image garbage collection disabled"),
            }
            container_gc = Some(Arc::new(ContainerGcManager::new(
                self.config.gc.container.clone(),
                runtime.clone(),
                Arc::new(Presence(control.clone())),
            )));
            tokio::spawn(run_periodic(
                self.config.gc.clone(),
                image_gc.clone(),
                container_gc.clone(),
                shutdown.clone().cancelled_owned(),
            ));
        }
        if let Some(config) = &self.config.container_logs {
            // the running containers' logs above the max size are rotated
            match ContainerLogManager::new(config.clone(), runtime.clone()) {
                Ok(m) => {
                    tokio::spawn(Arc::new(m).run(shutdown.clone()));
                }
                Err(e) => tracing::error!(error = %e, "container log rotation disabled"),
            }
        }
        if let Some(config) = &self.config.eviction {
            let mut manager = EvictionManager::new(config.clone(), self.observer.clone());
            if let Some(gc) = image_gc {
                manager = manager.with_image_gc(gc);
            }
            if let Some(gc) = container_gc {
                manager = manager.with_container_gc(gc);
            }
            let evictor = Arc::new(Evictor {
                control: control.clone(),
                cgroups: self.cgroups.clone(),
                volumes: self.volumes.clone(),
                pod_log_root: self.config.pod_log_root.clone(),
                runtime,
                evicted: Mutex::default(),
            });
            let health = self.health.clone();
            let every = self.config.eviction_interval;
            let token = shutdown.clone();
            tokio::spawn(manager.run(evictor, health, every, token.cancelled_owned()));
        }
        if let Some(trigger) = self.trigger.lock().expect("trigger lock").take() {
            let config = self.config.shutdown.clone();
            let terminator = Terminator {
                control,
                health: self.health.clone(),
                shutting_down: self.shutting_down.clone(),
            };
            let reports = self.shutdown_reports.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = trigger => {
                        tracing::info!(budget = ?config.budget(), "node shutdown: terminating pods by priority");
                        let plan = plan_shutdown(&config, &terminator.control.active_pods());
                        let r = execute_shutdown(&plan, &terminator).await;
                        reports.send_replace(Some(r));
                    }
                }
            });
        }
    }

    fn admit(&self, pod: &Pod, active: &[Pod]) -> Result<(), PodRejection> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(PodRejection {
                reason: "NodeShutdown".into(),
                message: "Pod was rejected as the node is shutting down.".into(),
            });
        }
        if self.config.eviction.is_some()
            && let Err(message) = admit_under_pressure(pod, &self.health.borrow())
        {
            return Err(PodRejection {
                reason: EVICTED_REASON.into(),
                message,
            });
        }
        allocatable::admit(&self.allocatable, active, pod).map_err(|r| PodRejection {
            reason: r.reason,
            message: format!("Pod was rejected: {}", r.message),
        })
    }

    async fn prepare_pod(&self, pod: &Pod) -> Result<PodSetup, NodeHookError> {
        let mut setup = PodSetup::default();
        if let Some(cg) = &self.cgroups {
            setup.cgroup_parent = cg
                .ensure_pod(pod)
                .map_err(|e| hook_err(pod, "cgroup")(e.into()))?
                .cgroup_parent;
        }
        if let Some(tokens) = &self.tokens {
            tokens
                .refresh_for_pod(pod)
                .await
                .map_err(|e| hook_err(pod, "service account token")(e.into()))?;
        }
        // the configMaps and secrets it references are watched (and listed) before they are read
        self.volumes
            .store()
            .register_pod(pod)
            .await
            .map_err(|e| hook_err(pod, "volumes")(e.into()))?;
        let tokens = self.tokens.as_deref();
        setup.volumes = self
            .volumes
            .setup_pod_with(pod, tokens.map(|t| t as &dyn super::volumes::TokenSource))
            .map_err(|e| hook_err(pod, "volumes")(e.into()))?;
        if let Some(m) = &self.mirror {
            // the API server being away must not keep the static pod from running
            if let Err(e) = m.ensure(pod).await {
                tracing::warn!(pod = %PodRef::of(pod), error = %e, "mirror pod not updated");
            }
        }
        Ok(setup)
    }

    fn container_mounts(
        &self,
        pod: &Pod,
        setup: &PodSetup,
        container: &Container,
    ) -> Result<Vec<cri::Mount>, NodeHookError> {
        self.volumes
            .container_mounts(pod, container, &setup.volumes)
            .map_err(|e| hook_err(pod, "mounts")(e.into()))
    }

    async fn pod_removed(&self, pod: &Pod) {
        let r = PodRef::of(pod);
        if let Err(e) = self.volumes.teardown_pod(&r.uid) {
            tracing::warn!(pod = %r, error = %e, "cannot remove the pod's volumes");
        }
        if let Some(cg) = &self.cgroups {
            // the runtime's own cgroups below it go with their processes: retry a little
            let mut last = None;
            for attempt in 0..20u32 {
                match cg.remove_pod(&r.uid) {
                    Ok(()) => {
                        last = None;
                        break;
                    }
                    Err(e) => last = Some(e),
                }
                tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt.min(4) + 1))).await;
            }
            if let Some(e) = last {
                tracing::warn!(pod = %r, error = %e, "cannot remove the pod cgroup");
            }
        }
        if let Some(tokens) = &self.tokens {
            tokens.forget_pod(&r.uid);
        }
        self.volumes.store().unregister_pod(pod);
        if let Some(m) = &self.mirror
            && let Err(e) = m.delete(pod).await
        {
            tracing::warn!(pod = %r, error = %e, "mirror pod not deleted");
        }
    }
}
