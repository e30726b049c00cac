//! The one seam between the pod workers and the node: admission before a pod's worker starts,
//! the pod's cgroup and volumes before its sandbox, each container's mounts, cleanup after the
//! pod is gone, and a [`PodControl`] handle through which the node (eviction, graceful shutdown)
//! stops pods via their workers and reaches the kubelet's runtime and image service. [`NoNodeHooks`] does nothing; [`NodeManager`](super::NodeManager)
//! is the real implementation.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{Container, Pod};
use node_core::{ImageBackend, PodRef, RuntimeBackend, cri};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::volumes::PodVolumes;
use crate::state::{PodState, PodStates};

/// What the node prepared for a pod before its sandbox runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodSetup {
    /// The CRI `cgroup_parent` of the pod's sandbox (empty: the runtime's default).
    pub cgroup_parent: String,
    /// The pod's volumes on the host, by volume name.
    pub volumes: PodVolumes,
}

/// Why a pod was not admitted: the pod is Failed with this reason and message, as kubelet
/// reports it (`OutOfcpu`, `OutOfmemory`, `OutOfpods`, `NodePorts`, `NodeShutdown`...).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct PodRejection {
    /// The status reason.
    pub reason: String,
    /// The status message.
    pub message: String,
}

/// A node hook failed for a pod (its cgroup or volumes could not be set up).
#[derive(Debug, thiserror::Error)]
#[error("pod {pod}: {stage}: {source}")]
pub struct NodeHookError {
    /// The pod.
    pub pod: PodRef,
    /// `cgroup`, `volumes`, `mounts`, `mirror pod`, `service account token`.
    pub stage: &'static str,
    /// The underlying error.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// What the node does around the pod workers. Every method has a no-op default.
#[async_trait]
pub trait NodeHooks: Send + Sync {
    /// Called once when the kubelet runs, with the handle to stop pods through their workers
    /// (eviction, shutdown) that also carries the kubelet's runtime and image service; background
    /// loops end when `shutdown` is cancelled.
    fn start(&self, control: PodControl, shutdown: CancellationToken) {
        let _ = (control, shutdown);
    }

    /// Whether a new pod may run beside the `active` ones (pods not yet ended).
    fn admit(&self, pod: &Pod, active: &[Pod]) -> Result<(), PodRejection> {
        let _ = (pod, active);
        Ok(())
    }

    /// Prepare (or refresh: configMap and secret contents, tokens) the pod's cgroup and volumes.
    /// Called before every sync of a pod that runs; must be idempotent.
    async fn prepare_pod(&self, pod: &Pod) -> Result<PodSetup, NodeHookError> {
        let _ = pod;
        Ok(PodSetup::default())
    }

    /// The CRI mounts of one container of the pod.
    fn container_mounts(
        &self,
        pod: &Pod,
        setup: &PodSetup,
        container: &Container,
    ) -> Result<Vec<cri::Mount>, NodeHookError> {
        let _ = (pod, setup, container);
        Ok(Vec::new())
    }

    /// The pod is gone from the runtime: remove its volumes, cgroup, mirror pod.
    async fn pod_removed(&self, pod: &Pod) {
        let _ = pod;
    }
}

/// The hooks of a kubelet without node management (the builder's default).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoNodeHooks;

impl NodeHooks for NoNodeHooks {}

/// A request to stop a pod's containers and mark it Failed (it stays, ended, until its source
/// deletes it).
#[derive(Debug)]
pub struct PodStop {
    /// The pod.
    pub pod: PodRef,
    /// The grace period its containers get.
    pub grace_period: Duration,
    /// The status reason (`Evicted`, `Terminated`).
    pub reason: String,
    /// The status message.
    pub message: String,
    /// Answered once the pod's containers are stopped.
    pub done: oneshot::Sender<()>,
}

/// Stopping a pod through [`PodControl`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stop pod {pod}: {reason}")]
pub struct PodStopError {
    /// The pod.
    pub pod: PodRef,
    /// Why (`no such pod`, `the kubelet stopped`).
    pub reason: String,
}

/// The handle the node uses to see the kubelet's pods and stop them through their workers, with
/// the kubelet's runtime and image service (the ones given to
/// [`KubeletBuilder::runtime`](crate::KubeletBuilder::runtime)).
#[derive(Clone)]
pub struct PodControl {
    tx: mpsc::UnboundedSender<PodStop>,
    states: PodStates,
    sources_ready: Arc<AtomicBool>,
    runtime: Arc<dyn RuntimeBackend>,
    images: Arc<dyn ImageBackend>,
}

impl std::fmt::Debug for PodControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodControl").finish_non_exhaustive()
    }
}

impl PodControl {
    /// A control over `states` of the kubelet running pods on `runtime` with `images`; the
    /// receiver gets the stop requests (the kubelet's run loop routes them to the pod workers).
    pub fn new(
        states: PodStates,
        runtime: Arc<dyn RuntimeBackend>,
        images: Arc<dyn ImageBackend>,
    ) -> (Self, mpsc::UnboundedReceiver<PodStop>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let sources_ready = Arc::new(AtomicBool::new(false));
        (
            Self {
                tx,
                states,
                sources_ready,
                runtime,
                images,
            },
            rx,
        )
    }

    /// The kubelet's container runtime.
    pub fn runtime(&self) -> &Arc<dyn RuntimeBackend> {
        &self.runtime
    }

    /// The kubelet's image service.
    pub fn images(&self) -> &Arc<dyn ImageBackend> {
        &self.images
    }

    /// Whether every pod source delivered its pods (a pod missing before is not a deleted one).
    pub fn sources_ready(&self) -> bool {
        self.sources_ready.load(Ordering::SeqCst)
    }

    /// Every pod source delivered its pods (the kubelet's run loop says so).
    pub fn set_sources_ready(&self) {
        self.sources_ready.store(true, Ordering::SeqCst);
    }

    /// The kubelet's pods with their latest status.
    pub fn pods(&self) -> Vec<PodState> {
        self.states.pods()
    }

    /// The pods that have not ended (status phase neither Succeeded nor Failed).
    pub fn active_pods(&self) -> Vec<Pod> {
        self.pods()
            .into_iter()
            .filter(|s| !is_ended(s.status.as_ref()))
            .map(|s| s.pod)
            .collect()
    }

    /// Stop the pod's containers within `grace_period` and mark it Failed with `reason` and
    /// `message`; completes when its containers are stopped.
    pub async fn stop(
        &self,
        pod: &PodRef,
        grace_period: Duration,
        reason: &str,
        message: &str,
    ) -> Result<(), PodStopError> {
        let (done, wait) = oneshot::channel();
        let fail = |reason: &str| PodStopError {
            pod: pod.clone(),
            reason: reason.into(),
        };
        self.tx
            .send(PodStop {
                pod: pod.clone(),
                grace_period,
                reason: reason.into(),
                message: message.into(),
                done,
            })
            .map_err(|_| fail("the kubelet stopped"))?;
        wait.await.map_err(|_| fail("no such pod"))
    }
}

/// Whether a status says the pod ended.
pub(crate) fn is_ended(status: Option<&k8s_openapi::api::core::v1::PodStatus>) -> bool {
    matches!(
        status.and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}
