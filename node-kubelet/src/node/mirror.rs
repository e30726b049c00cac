//! Mirror pods: the API server's read-only copy of each static pod (from a file or URL source),
//! so that `kubectl get pods` shows it. A mirror pod carries the static pod's config hash in the
//! `kubernetes.io/config.mirror` annotation and, as kubelet sets it, an ownerReference to the
//! registered Node (so the API server's garbage collector removes it with the Node).
//!
//! As kubelet's pod manager sees mirror pods through its pod watch, [`MirrorPods`] reads the
//! cache of this node's pods of a [`NodePodsWatch`] (`fieldSelector=spec.nodeName=<node>`, the
//! one watch the pod source also reads: [`NodePodsWatch::mirror_pods`]) and checks every sync
//! of a static pod against it, without a request: a mirror missing (also one deleted on
//! the API server) is created, one of an older static pod (another hash), of an earlier Node
//! object (another uid) or being deleted is replaced; when the static pod goes its mirror goes,
//! and mirror pods whose static pod is gone (orphans, e.g. left by an earlier kubelet) are
//! deleted ([`MirrorPods::delete_orphans`]). The static pod itself is never touched.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use node_core::PodRef;
use tokio_util::sync::CancellationToken;

use crate::source::api::{PodKey, key_of};
use crate::source::{CONFIG_HASH_ANNOTATION, CONFIG_SOURCE_ANNOTATION, NodePodsWatch};

/// The annotation marking a mirror pod, holding its static pod's config hash.
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Whether a pod is a mirror pod (it carries [`MIRROR_ANNOTATION`]); kubelet never runs one.
pub fn is_mirror_pod(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(MIRROR_ANNOTATION))
}

/// Whether a pod is a static pod: its source is not the API server.
pub fn is_static_pod(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CONFIG_SOURCE_ANNOTATION))
        .is_some_and(|s| s != "api")
}

/// The config hash of a static pod (its hash annotation, else its UID).
pub fn config_hash(pod: &Pod) -> String {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CONFIG_HASH_ANNOTATION))
        .cloned()
        .or_else(|| pod.metadata.uid.clone())
        .unwrap_or_default()
}

/// The ownerReference of a mirror pod to its Node (`v1`, `Node`, name, uid, controller).
pub fn node_owner(node_name: &str, node_uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: "v1".into(),
        kind: "Node".into(),
        name: node_name.into(),
        uid: node_uid.into(),
        controller: Some(true),
        block_owner_deletion: None,
    }
}

/// The mirror pod of a static pod: the same metadata and spec, without UID, resource version
/// and status, annotated with the config hash, bound to `node_name` and owned by the Node of
/// `node_uid`.
pub fn mirror_pod(static_pod: &Pod, node_name: &str, node_uid: &str) -> Pod {
    let mut m = Pod {
        metadata: static_pod.metadata.clone(),
        spec: static_pod.spec.clone(),
        status: None,
    };
    m.metadata.uid = None;
    m.metadata.resource_version = None;
    m.metadata.creation_timestamp = None;
    m.metadata.managed_fields = None;
    m.metadata.owner_references = Some(vec![node_owner(node_name, node_uid)]);
    m.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(MIRROR_ANNOTATION.into(), config_hash(static_pod));
    if let Some(spec) = m.spec.as_mut()
        && spec.node_name.as_deref().unwrap_or("").is_empty()
    {
        spec.node_name = Some(node_name.to_string());
    }
    m
}

fn mirror_hash(pod: &Pod) -> Option<&str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(MIRROR_ANNOTATION)
        .map(String::as_str)
}

fn owner_uid(pod: &Pod) -> Option<&str> {
    pod.metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| o.kind == "Node")
        .map(|o| o.uid.as_str())
}

/// An error of mirror pod management.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MirrorError {
    /// A request to the API server failed.
    #[error(transparent)]
    Api(#[from] kube::Error),
    /// The watch of the node's pods has not listed them yet.
    #[error("the pods of node {node} are not listed yet (within {waited:?})")]
    NotSynced {
        /// The node.
        node: String,
        /// How long it waited.
        waited: Duration,
    },
}

/// What [`MirrorPods`] looks at of a pod of the node.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    uid: Option<String>,
    /// The mirror annotation (`None`: not a mirror pod).
    hash: Option<String>,
    owner: Option<String>,
    deleting: bool,
}

impl Seen {
    fn of(pod: &Pod) -> Self {
        Self {
            uid: pod.metadata.uid.clone(),
            hash: mirror_hash(pod).map(String::from),
            owner: owner_uid(pod).map(String::from),
            deleting: pod.metadata.deletion_timestamp.is_some(),
        }
    }
}

/// Creates, replaces and deletes the mirror pods of a node's static pods, from the cache of the
/// node's pods of a [`NodePodsWatch`] (one of its own with [`MirrorPods::new`], or the one the
/// pod source reads with [`MirrorPods::with_pods`]).
#[derive(Clone)]
pub struct MirrorPods {
    inner: Arc<Inner>,
}

struct Inner {
    client: kube::Client,
    /// The uid of the registered Node, once seen.
    node_uid: Mutex<Option<String>>,
    pods: NodePodsWatch,
    sync_timeout: Duration,
}

impl std::fmt::Debug for MirrorPods {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MirrorPods")
            .field("node_name", &self.node_name())
            .finish_non_exhaustive()
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

impl MirrorPods {
    /// Mirror pods of `node_name` through `client`, with a watch of the node's pods of its own
    /// (started with the first call, stopped when the last clone is dropped). Beside an
    /// [`ApiServerSource`](crate::source::ApiServerSource) of the same node, share its watch
    /// instead ([`with_pods`](Self::with_pods)).
    pub fn new(client: kube::Client, node_name: &str) -> Self {
        Self::with_pods(NodePodsWatch::new(client, node_name))
    }

    /// Mirror pods of the node of `pods`, read from its cache (its client makes the requests).
    pub fn with_pods(pods: NodePodsWatch) -> Self {
        Self {
            inner: Arc::new(Inner {
                client: pods.client(),
                node_uid: Mutex::new(None),
                pods,
                sync_timeout: Duration::from_secs(1),
            }),
        }
    }

    fn node_name(&self) -> &str {
        self.inner.pods.node_name()
    }

    /// The uid of the registered Node (an error while it is not registered: kubelet creates no
    /// mirror pod before its Node exists).
    async fn node_uid(&self) -> Result<String, kube::Error> {
        if let Some(uid) = self.inner.node_uid.lock().expect("mirror lock").clone() {
            return Ok(uid);
        }
        let nodes: Api<Node> = Api::all(self.inner.client.clone());
        let node = nodes.get(self.node_name()).await?;
        let uid = node.metadata.uid.unwrap_or_default();
        *self.inner.node_uid.lock().expect("mirror lock") = Some(uid.clone());
        Ok(uid)
    }

    /// Starts the watch of the node's pods if needed and waits (bounded) for its first list.
    async fn synced(&self) -> Result<(), MirrorError> {
        let waited = self.inner.sync_timeout;
        if self.inner.pods.wait_synced(waited).await {
            Ok(())
        } else {
            Err(MirrorError::NotSynced {
                node: self.node_name().to_string(),
                waited,
            })
        }
    }

    /// What the cache shows of the pod of `key`.
    fn seen(&self, key: &PodKey) -> Option<Seen> {
        self.inner.pods.read(|pods| pods.get(key).map(Seen::of))
    }

    fn api(&self, namespace: &str) -> Api<Pod> {
        Api::namespaced(self.inner.client.clone(), namespace)
    }

    async fn delete_mirror(&self, key: &PodKey, uid: Option<&str>) -> Result<(), kube::Error> {
        let dp = DeleteParams {
            preconditions: uid.map(|uid| Preconditions {
                uid: Some(uid.to_string()),
                resource_version: None,
            }),
            grace_period_seconds: Some(0),
            ..Default::default()
        };
        match self.api(&key.0).delete(&key.1, &dp).await {
            Err(e) if !is_not_found(&e) => Err(e),
            _ => {
                self.inner.pods.forget(key, uid);
                Ok(())
            }
        }
    }

    /// Makes the API server hold the mirror of `pod` (a no-op for pods from the API server),
    /// as the cache of the node's pods shows it (no request when it is in place): creates it
    /// when missing (also after someone deleted it), replaces one of another hash, of another
    /// Node uid or being deleted. Returns whether a mirror pod was created.
    pub async fn ensure(&self, pod: &Pod) -> Result<bool, MirrorError> {
        if !is_static_pod(pod) {
            return Ok(false);
        }
        let hash = config_hash(pod);
        let key = key_of(pod);
        let node_uid = self.node_uid().await?;
        self.synced().await?;
        if let Some(seen) = self.seen(&key) {
            match &seen.hash {
                Some(h)
                    if *h == hash
                        && seen.owner.as_deref() == Some(node_uid.as_str())
                        && !seen.deleting =>
                {
                    return Ok(false);
                }
                Some(_) => self.delete_mirror(&key, seen.uid.as_deref()).await?,
                None => {
                    tracing::debug!(pod = %PodRef::of(pod), "an API pod of the static pod's name exists; no mirror pod");
                    return Ok(false);
                }
            }
        }
        let created = self
            .api(&key.0)
            .create(
                &PostParams::default(),
                &mirror_pod(pod, self.node_name(), &node_uid),
            )
            .await;
        match created {
            // in the cache at once: the next sync does not wait for the watch to show it
            Ok(m) => self.inner.pods.assume(m),
            // created meanwhile (a previous kubelet): the watch shows it to the next sync
            Err(kube::Error::Api(s)) if s.code == 409 => return Ok(false),
            // the Node was registered again (new uid): look it up on the next sync
            Err(e) => {
                *self.inner.node_uid.lock().expect("mirror lock") = None;
                return Err(e.into());
            }
        }
        tracing::info!(pod = %PodRef::of(pod), "mirror pod created");
        Ok(true)
    }

    /// Deletes the mirror of `pod` (only a mirror pod: an API pod of that name is left alone).
    pub async fn delete(&self, pod: &Pod) -> Result<(), MirrorError> {
        if !is_static_pod(pod) {
            return Ok(());
        }
        self.synced().await?;
        let key = key_of(pod);
        match self.seen(&key) {
            Some(seen) if seen.hash.is_some() => {
                Ok(self.delete_mirror(&key, seen.uid.as_deref()).await?)
            }
            _ => Ok(()),
        }
    }

    /// Deletes the mirror pods of the node whose static pod is not among `static_pods` (all
    /// the node's static pods, once its sources delivered them), as kubelet's pod cleanup
    /// deletes orphaned mirror pods. Returns how many it deleted.
    pub async fn delete_orphans(&self, static_pods: &[Pod]) -> Result<usize, MirrorError> {
        self.synced().await?;
        let wanted: std::collections::HashSet<PodKey> = static_pods
            .iter()
            .filter(|p| is_static_pod(p))
            .map(key_of)
            .collect();
        let orphans: Vec<(PodKey, Option<String>)> = self.inner.pods.read(|pods| {
            pods.iter()
                .filter(|(k, p)| is_mirror_pod(p) && !wanted.contains(*k))
                .map(|(k, p)| (k.clone(), p.metadata.uid.clone()))
                .collect()
        });
        for (key, uid) in &orphans {
            self.delete_mirror(key, uid.as_deref()).await?;
            tracing::info!(namespace = %key.0, name = %key.1, "orphaned mirror pod deleted");
        }
        Ok(orphans.len())
    }

    /// Every `every`, once the kubelet's sources are ready, deletes the orphaned mirror pods
    /// ([`delete_orphans`](Self::delete_orphans)) of the static pods `control` knows, until
    /// `stop`.
    pub async fn clean_orphans(
        self,
        control: super::hooks::PodControl,
        every: Duration,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            if !control.sources_ready() {
                continue;
            }
            let pods: Vec<Pod> = control.pods().into_iter().map(|s| s.pod).collect();
            if let Err(e) = self.delete_orphans(&pods).await {
                tracing::debug!(error = %e, "orphaned mirror pods not cleaned up");
            }
        }
    }
}
