//! Where desired pods come from: a [`PodSource`] yields a stream of [`PodEvent`]s, in the spirit
//! of kube-runtime's watcher (an initial snapshot, then applies and deletes).

use std::fmt;
use std::path::PathBuf;

use futures::stream::BoxStream;
use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Serialize};

/// One event of a pod source.
///
/// A source starts with a snapshot (`Init`, any number of `InitApply`, `InitDone`): pods the
/// source held before that the snapshot does not name are gone. After the snapshot, `Apply`
/// adds or updates one pod and `Delete` removes one. A source may send a new snapshot at any
/// time (after a re-list or a reconnect).
#[derive(Debug, Clone, PartialEq)]
pub enum PodEvent {
    /// A new snapshot begins.
    Init,
    /// A pod that is part of the snapshot under way.
    InitApply(Pod),
    /// The snapshot is complete: pods not named in it are deleted.
    InitDone,
    /// A pod was added or changed.
    Apply(Pod),
    /// A pod was removed from the source.
    Delete(Pod),
}

/// A boxed stream of pod events, the return type of [`PodSource::watch`].
pub type PodStream = BoxStream<'static, Result<PodEvent, SourceError>>;

/// Where desired pods come from: a manifest directory, an HTTP URL, the API server, a channel.
///
/// The stream should not end while the source is healthy; errors are items of the stream and do
/// not end it (a broken manifest is reported and the source goes on).
///
/// # Example: an integrator's own source
///
/// ```
/// use futures::stream::{self, StreamExt};
/// use node_core::{PodEvent, PodSource, PodStream, Pod};
///
/// /// A source that always holds the same pods.
/// struct Fixed(Vec<Pod>);
///
/// impl PodSource for Fixed {
///     fn name(&self) -> &str { "fixed" }
///     fn watch(&self) -> PodStream {
///         let mut events = vec![Ok(PodEvent::Init)];
///         events.extend(self.0.iter().cloned().map(|p| Ok(PodEvent::InitApply(p))));
///         events.push(Ok(PodEvent::InitDone));
///         // end the snapshot, then stay open without further events
///         stream::iter(events).chain(stream::pending()).boxed()
///     }
/// }
/// let source: std::sync::Arc<dyn PodSource> = std::sync::Arc::new(Fixed(vec![]));
/// assert_eq!(source.name(), "fixed");
/// ```
pub trait PodSource: Send + Sync {
    /// A short name of the source (`file`, `http`, `api`, ...), used to tag its pods.
    fn name(&self) -> &str;
    /// Start watching. Each call starts a new, independent watch that begins with a snapshot.
    fn watch(&self) -> PodStream;
}

/// An error of a pod source. Errors are reported as items of the stream; the source goes on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// A manifest could not be parsed or is not a valid pod.
    #[error("{origin}: {field}: {message}")]
    InvalidManifest {
        /// The file or URL the manifest came from (with the document index of a multi-document file).
        origin: String,
        /// The field at fault (`metadata.name`, `spec.containers[0].resources`...), or `-`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// Reading a file or directory failed.
    #[error("{path}: {source}")]
    Io {
        /// The path that could not be read.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A remote source (HTTP URL, API server) failed; the source retries with backoff.
    #[error("{origin}: {message}")]
    Remote {
        /// The URL or server.
        origin: String,
        /// What went wrong.
        message: String,
    },
    /// Any other error of an integrator's source.
    #[error(transparent)]
    Other(Box<dyn std::error::Error + Send + Sync>),
}

/// The identity of a pod: namespace, name and UID.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct PodRef {
    /// The pod's namespace (`default` when the manifest names none).
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// The pod's UID.
    pub uid: String,
}

impl PodRef {
    /// A pod reference from its parts.
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        uid: impl Into<String>,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.into(),
        }
    }

    /// The reference of a pod object (`default` namespace and empty UID when unset).
    pub fn of(pod: &Pod) -> Self {
        let m = &pod.metadata;
        Self {
            namespace: m.namespace.clone().unwrap_or_else(|| "default".into()),
            name: m.name.clone().unwrap_or_default(),
            uid: m.uid.clone().unwrap_or_default(),
        }
    }
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: shop
  uid: 6c1d1c1e-0000-4000-8000-000000000001
  labels: {app: web}
spec:
  containers:
  - name: server
    image: registry.local/web:1.0
    command: ["/bin/httpd", "-f", "-p", "8080"]
    ports: [{containerPort: 8080, name: http}]
    resources:
      requests: {cpu: 100m, memory: 64Mi}
      limits: {memory: 128Mi}
    readinessProbe:
      httpGet: {path: /, port: http}
      periodSeconds: 2
  restartPolicy: Always
"#;

    #[test]
    fn pod_yaml_round_trips() {
        let pod: Pod = serde_saphyr::from_str(POD).expect("parse pod");
        assert_eq!(PodRef::of(&pod).to_string(), "shop/web");
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(
            spec.containers[0]
                .resources
                .as_ref()
                .unwrap()
                .limits
                .as_ref()
                .unwrap()["memory"]
                .0,
            "128Mi"
        );
        let yaml = serde_saphyr::to_string(&pod).expect("serialize");
        let again: Pod = serde_saphyr::from_str(&yaml).expect("re-parse");
        assert_eq!(pod, again);
        let json = serde_json::to_string(&pod).unwrap();
        let from_json: Pod = serde_json::from_str(&json).unwrap();
        assert_eq!(pod, from_json);
    }

    #[test]
    fn pod_ref_defaults_namespace() {
        let pod = Pod::default();
        let r = PodRef::of(&pod);
        assert_eq!(r.namespace, "default");
        assert_eq!(r.name, "");
    }

    #[test]
    fn source_errors_name_their_origin_and_field() {
        let e = SourceError::InvalidManifest {
            origin: "/etc/nodekit/manifests/web.yaml#1".into(),
            field: "spec.containers".into(),
            message: "missing field".into(),
        };
        assert_eq!(
            e.to_string(),
            "/etc/nodekit/manifests/web.yaml#1: spec.containers: missing field"
        );
    }
}
