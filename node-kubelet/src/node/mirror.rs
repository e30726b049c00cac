//! Mirror pods: the API server's read-only copy of each static pod (from a file or URL source),
//! so that `kubectl get pods` shows it. A mirror pod carries the static pod's config hash in the
//! `kubernetes.io/config.mirror` annotation; when the static pod changes, the old mirror is
//! deleted and a new one created; when it goes, its mirror goes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use k8s_openapi::api::core::v1::Pod;
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

/// The mirror pod of a static pod: the same metadata and spec, without UID, resource version
/// and status, annotated with the config hash and bound to `node_name`.
pub fn mirror_pod(static_pod: &Pod, node_name: &str) -> Pod {
    let mut m = Pod {
        metadata: static_pod.metadata.clone(),
        spec: static_pod.spec.clone(),
        status: None,
    };
    m.metadata.uid = None;
    m.metadata.resource_version = None;
    m.metadata.creation_timestamp = None;
    m.metadata.managed_fields = None;
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

/// Creates, replaces and deletes the mirror pods of a node's static pods.
pub struct MirrorPods {
    client: kube::Client,
    node_name: String,
    /// The hash whose mirror is known to exist, by static pod UID.
    current: Mutex<HashMap<String, String>>,
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
            current: Mutex::new(HashMap::new()),
        }
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

    /// Makes the API server hold the mirror of `pod` (a no-op for pods from the API server).
    /// Returns whether a mirror pod was created.
    pub async fn ensure(&self, pod: &Pod) -> Result<bool, kube::Error> {
        if !is_static_pod(pod) {
            return Ok(false);
        }
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let hash = config_hash(pod);
        if self.current.lock().expect("mirror lock").get(&uid) == Some(&hash) {
            return Ok(false);
        }
        let api = self.api(pod);
        let name = pod.metadata.name.clone().unwrap_or_default();
        if let Some(existing) = api.get_opt(&name).await? {
            match mirror_hash(&existing) {
                Some(h) if h == hash => {
                    self.current.lock().expect("mirror lock").insert(uid, hash);
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
            .create(&PostParams::default(), &mirror_pod(pod, &self.node_name))
            .await;
        match created {
            Ok(_) => {}
            // created meanwhile (a previous kubelet): next sync compares hashes again
            Err(kube::Error::Api(s)) if s.code == 409 => return Ok(false),
            Err(e) => return Err(e),
        }
        tracing::info!(pod = %PodRef::of(pod), "mirror pod created");
        self.current.lock().expect("mirror lock").insert(uid, hash);
        Ok(true)
    }

    /// Deletes the mirror of `pod` (only a mirror pod: an API pod of that name is left alone).
    pub async fn delete(&self, pod: &Pod) -> Result<(), kube::Error> {
        if !is_static_pod(pod) {
            return Ok(());
        }
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        self.current.lock().expect("mirror lock").remove(&uid);
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
