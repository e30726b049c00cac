//! Where pod and node status go: the API server, or local JSON files in standalone mode.

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{Node, PodStatus};

use crate::pod::PodRef;

/// An error of a [`StatusSink`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StatusError {
    /// Writing a local file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The API server refused or could not be reached; the caller retries later.
    #[error("api server: {0}")]
    Api(String),
    /// Any other failure.
    #[error("{0}")]
    Other(String),
}

/// Where pod and node status go. The kubelet calls it only when a status changed.
///
/// # Example: status to the log
///
/// ```
/// use async_trait::async_trait;
/// use node_core::{Node, PodRef, PodStatus, StatusError, StatusSink};
///
/// struct Print;
///
/// #[async_trait]
/// impl StatusSink for Print {
///     async fn pod_status(&self, pod: &PodRef, status: &PodStatus) -> Result<(), StatusError> {
///         println!("{pod}: {:?}", status.phase);
///         Ok(())
///     }
///     async fn pod_deleted(&self, pod: &PodRef) -> Result<(), StatusError> {
///         println!("{pod}: deleted");
///         Ok(())
///     }
///     async fn node_status(&self, node: &Node) -> Result<(), StatusError> {
///         println!("node {:?}", node.metadata.name);
///         Ok(())
///     }
/// }
/// ```
#[async_trait]
pub trait StatusSink: Send + Sync {
    /// A pod's status changed.
    async fn pod_status(&self, pod: &PodRef, status: &PodStatus) -> Result<(), StatusError>;
    /// A pod is gone from the node.
    async fn pod_deleted(&self, pod: &PodRef) -> Result<(), StatusError>;
    /// The node's status changed (or is due for its periodic report).
    async fn node_status(&self, node: &Node) -> Result<(), StatusError>;
}
