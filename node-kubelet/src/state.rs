//! [`PodStates`]: the kubelet's current pods with their latest status, readable while it runs
//! (for a `/pods` endpoint, or to compute a standalone Service's endpoints from Ready pods).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::{Pod, PodStatus};
use node_core::PodRef;
use tokio::sync::watch;

/// One pod as the kubelet holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct PodState {
    /// The desired pod (as merged from its source, with the source annotation).
    pub pod: Pod,
    /// The status last written, `None` before the first sync.
    pub status: Option<PodStatus>,
}

impl PodState {
    /// Whether the pod's `Ready` condition is `True`.
    pub fn is_ready(&self) -> bool {
        self.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    }
}

/// The kubelet's pods and statuses, shared: clones see the same state. Obtained from
/// [`Kubelet::states`](crate::Kubelet::states) before running it.
#[derive(Clone)]
pub struct PodStates {
    pods: Arc<RwLock<BTreeMap<PodRef, PodState>>>,
    revision: Arc<watch::Sender<u64>>,
}

impl Default for PodStates {
    fn default() -> Self {
        Self {
            pods: Arc::default(),
            revision: Arc::new(watch::channel(0).0),
        }
    }
}

impl PodStates {
    /// An empty state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every pod with its status, ordered by namespace, name and UID.
    pub fn pods(&self) -> Vec<PodState> {
        self.pods
            .read()
            .expect("pod states lock")
            .values()
            .cloned()
            .collect()
    }

    /// One pod.
    pub fn get(&self, pod: &PodRef) -> Option<PodState> {
        self.pods.read().expect("pod states lock").get(pod).cloned()
    }

    /// A receiver that changes whenever a pod or status changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.revision.subscribe()
    }

    fn bump(&self) {
        self.revision.send_modify(|r| *r += 1);
    }

    pub(crate) fn set_pod(&self, pod: &Pod) {
        let r = PodRef::of(pod);
        let mut pods = self.pods.write().expect("pod states lock");
        let status = pods.get(&r).and_then(|s| s.status.clone());
        pods.insert(
            r,
            PodState {
                pod: pod.clone(),
                status,
            },
        );
        drop(pods);
        self.bump();
    }

    pub(crate) fn set_status(&self, pod: &PodRef, status: &PodStatus) {
        if let Some(s) = self.pods.write().expect("pod states lock").get_mut(pod) {
            s.status = Some(status.clone());
        }
        self.bump();
    }

    pub(crate) fn remove(&self, pod: &PodRef) {
        self.pods.write().expect("pod states lock").remove(pod);
        self.bump();
    }
}
