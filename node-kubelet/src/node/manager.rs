//! [`NodeManager`]: the real [`NodeHooks`] — admission against allocatable, the pod cgroup as
//! the sandbox's `cgroup_parent`, pod volumes as CRI mounts (refreshed on every sync, so
//! configMap and secret updates land with the `..data` swap), the eviction manager and the
//! graceful shutdown manager driving pod termination through the workers, and, with an API
//! server, mirror pods and service-account tokens.
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

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{Container, Pod};
use node_core::{PodRef, cri};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::allocatable::{self, AllocatableConfig, CapacityError, NodeResources};
use super::cgroups::{CgroupConfig, CgroupError, PodCgroups};
use super::eviction::{
    ContainerUsage, Eviction, EvictionConfig, EvictionError, EvictionManager, NodeSignals,
    PodEvictor, PodUsage, SignalObserver,
};
use super::hooks::{NodeHookError, NodeHooks, PodControl, PodRejection, PodSetup};
use super::mirror::MirrorPods;
use super::shutdown::{
    GroupReport, PodTerminator, SHUTDOWN_MESSAGE, ShutdownConfig, ShutdownError, execute_shutdown,
    plan_shutdown,
};
use super::status::NodeHealth;
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
}

type Trigger = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The node's part of the kubelet, given to [`KubeletBuilder::node`](crate::KubeletBuilder::node).
pub struct NodeManager {
    config: NodeConfig,
    allocatable: NodeResources,
    cgroups: Option<Arc<PodCgroups>>,
    volumes: VolumeManager,
    observer: Arc<dyn SignalObserver>,
    health: watch::Sender<NodeHealth>,
    shutting_down: Arc<AtomicBool>,
    trigger: Mutex<Option<Trigger>>,
    shutdown_reports: Arc<watch::Sender<Option<Vec<GroupReport>>>>,
    mirror: Option<MirrorPods>,
    tokens: Option<Arc<ServiceAccountTokens>>,
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
        Ok(Self::with_allocatable(config, store, allocatable)?)
    }

    /// As [`new`](Self::new), with allocatable given rather than read from the machine.
    pub fn with_allocatable(
        config: NodeConfig,
        store: Arc<dyn ObjectStore>,
        allocatable: NodeResources,
    ) -> Result<Self, CgroupError> {
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
            imagefs: None,
        });
        Ok(Self {
            volumes: VolumeManager::new(volume_config, store),
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

    /// With an API server: mirror pods for static pods, and service-account tokens for
    /// projected volumes (TokenRequest, refreshed at 80 % of their lifetime).
    #[must_use]
    pub fn api(mut self, client: kube::Client) -> Self {
        self.mirror = Some(MirrorPods::new(client.clone(), &self.config.node_name));
        self.tokens = Some(Arc::new(ServiceAccountTokens::new(client)));
        self
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

/// Stops pods chosen by the eviction manager through the workers.
struct Evictor {
    control: PodControl,
    cgroups: Option<Arc<PodCgroups>>,
}

#[async_trait]
impl PodEvictor for Evictor {
    async fn pod_usage(&self) -> Vec<PodUsage> {
        self.control
            .active_pods()
            .into_iter()
            .map(|pod| {
                let usage = self
                    .cgroups
                    .as_ref()
                    .and_then(|c| c.pod_usage(&pod).ok().flatten())
                    .unwrap_or_default();
                PodUsage {
                    containers: vec![ContainerUsage {
                        name: String::new(),
                        memory_bytes: usage.memory_working_set_bytes,
                        ephemeral_bytes: 0,
                    }],
                    pids: usage.pids,
                    pod,
                    ..Default::default()
                }
            })
            .collect()
    }

    async fn evict(&self, e: &Eviction) -> Result<(), EvictionError> {
        self.control
            .stop(&e.pod, e.grace_period, &e.reason, &e.message)
            .await
            .map_err(|err| EvictionError::Observe {
                signal: e.signal,
                reason: err.to_string(),
            })
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
        if let Some(config) = &self.config.eviction {
            let manager = EvictionManager::new(config.clone(), self.observer.clone());
            let evictor = Arc::new(Evictor {
                control: control.clone(),
                cgroups: self.cgroups.clone(),
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
        if let Some(m) = &self.mirror
            && let Err(e) = m.delete(pod).await
        {
            tracing::warn!(pod = %r, error = %e, "mirror pod not deleted");
        }
    }
}
