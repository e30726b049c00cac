//! Mirror pods: the API server's read-only copy of each static pod (from a file or URL source),
//! so that `kubectl get pods` shows it. A mirror pod carries the static pod's config hash in the
//! `kubernetes.io/config.mirror` annotation and, as kubelet sets it, an ownerReference to the
//! registered Node (so the API server's garbage collector removes it with the Node). Every sync
//! of the static pod checks its mirror: a mirror deleted on the API server is created again, one
//! of an older static pod (another hash) or of an earlier Node object (another uid) is replaced;
//! when the static pod goes, its mirror goes. The static pod itself is never touched.

use std::collections::BTreeMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use node_core::PodRef;

use crate::source::{CONFIG_HASH_ANNOTATION, CONFIG_SOURCE_ANNOTATION};

/// The annotation marking a mirror pod, holding its static pod's config hash.
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

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

/// Creates, replaces and deletes the mirror pods of a node's static pods.
pub struct MirrorPods {
    client: kube::Client,
    node_name: String,
    /// The uid of the registered Node, once seen.
    node_uid: Mutex<Option<String>>,
}

impl std::fmt::Debug for MirrorPods {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MirrorPods")
            .field("node_name", &self.node_name)
            .finish_non_exhaustive()
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

impl MirrorPods {
    /// Mirror pods of `node_name` through `client`.
    pub fn new(client: kube::Client, node_name: &str) -> Self {
        Self {
            client,
            node_name: node_name.into(),
            node_uid: Mutex::new(None),
        }
    }

    /// The uid of the registered Node (an error while it is not registered: kubelet creates no
    /// mirror pod before its Node exists).
    async fn node_uid(&self) -> Result<String, kube::Error> {
        if let Some(uid) = self.node_uid.lock().expect("mirror lock").clone() {
            return Ok(uid);
        }
        let nodes: Api<Node> = Api::all(self.client.clone());
        let node = nodes.get(&self.node_name).await?;
        let uid = node.metadata.uid.unwrap_or_default();
        *self.node_uid.lock().expect("mirror lock") = Some(uid.clone());
        Ok(uid)
    }

    fn api(&self, pod: &Pod) -> Api<Pod> {
        Api::namespaced(
            self.client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or("default"),
        )
    }

    async fn delete_mirror(&self, api: &Api<Pod>, existing: &Pod) -> Result<(), kube::Error> {
        let name = existing.metadata.name.clone().unwrap_or_default();
        let dp = DeleteParams {
            preconditions: existing.metadata.uid.clone().map(|uid| Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            grace_period_seconds: Some(0),
            ..Default::default()
        };
        match api.delete(&name, &dp).await {
            Err(e) if !is_not_found(&e) => Err(e),
            _ => Ok(()),
        }
    }

    /// Makes the API server hold the mirror of `pod` (a no-op for pods from the API server):
    /// creates it when missing (also after someone deleted it), replaces one of another hash or
    /// of another Node uid. Returns whether a mirror pod was created.
    pub async fn ensure(&self, pod: &Pod) -> Result<bool, kube::Error> {
        if !is_static_pod(pod) {
            return Ok(false);
        }
        let hash = config_hash(pod);
        let api = self.api(pod);
        let name = pod.metadata.name.clone().unwrap_or_default();
        let node_uid = self.node_uid().await?;
        if let Some(existing) = api.get_opt(&name).await? {
            match mirror_hash(&existing) {
                Some(h) if h == hash && owner_uid(&existing) == Some(node_uid.as_str()) => {
                    return Ok(false);
                }
                Some(_) => self.delete_mirror(&api, &existing).await?,
                None => {
                    tracing::warn!(pod = %PodRef::of(pod), "an API pod of the static pod's name exists; no mirror pod");
                    return Ok(false);
                }
            }
        }
        let created = api
            .create(
                &PostParams::default(),
                &mirror_pod(pod, &self.node_name, &node_uid),
            )
            .await;
        match created {
            Ok(_) => {}
            // created meanwhile (a previous kubelet): the next sync compares again
            Err(kube::Error::Api(s)) if s.code == 409 => return Ok(false),
            // the Node was registered again (new uid): look it up on the next sync
            Err(e) => {
                *self.node_uid.lock().expect("mirror lock") = None;
                return Err(e);
            }
        }
        tracing::info!(pod = %PodRef::of(pod), "mirror pod created");
        Ok(true)
    }

    /// Deletes the mirror of `pod` (only a mirror pod: an API pod of that name is left alone).
    pub async fn delete(&self, pod: &Pod) -> Result<(), kube::Error> {
        if !is_static_pod(pod) {
            return Ok(());
        }
        let api = self.api(pod);
        let name = pod.metadata.name.clone().unwrap_or_default();
        match api.get_opt(&name).await? {
            Some(existing) if mirror_hash(&existing).is_some() => {
                self.delete_mirror(&api, &existing).await
            }
            _ => Ok(()),
        }
    }
}
