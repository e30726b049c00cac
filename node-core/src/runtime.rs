//! The container runtime, in the CRI `runtime.v1` vocabulary: [`RuntimeBackend`] for pod
//! sandboxes and containers, [`ImageBackend`] for images.
//!
//! The messages are the CRI's own (re-exported as [`crate::cri`]), so that a CRI client and a CRI
//! server are thin adapters over these traits and CRI users feel at home. Optional calls have
//! default bodies answering [`RuntimeError::Unimplemented`], so a minimal backend stays small.

use std::time::Duration;

use async_trait::async_trait;

use crate::cri;

/// An error of a [`RuntimeBackend`] or [`ImageBackend`].
///
/// The variants follow the gRPC status codes the CRI uses, so a CRI server can map them back
/// without losing meaning.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The sandbox, container or image does not exist.
    #[error("{kind} {id:?} not found")]
    NotFound {
        /// `pod sandbox`, `container` or `image`.
        kind: &'static str,
        /// The id or reference asked for.
        id: String,
    },
    /// The request is malformed (empty id, invalid config, bad image reference...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The object exists already (a name reserved by another sandbox or container).
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// The object is not in a state that allows the call (starting a running container...).
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// The runtime cannot be reached (socket missing, connection refused, runtime restarting).
    #[error("runtime unavailable: {0}")]
    Unavailable(String),
    /// The call did not finish within its deadline.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The backend does not implement this call.
    #[error("{0} is not implemented by this runtime")]
    Unimplemented(&'static str),
    /// Pulling an image failed (missing image, unreachable registry, bad digest, denied).
    #[error("pull {image}: {message}")]
    ImagePull {
        /// The image reference.
        image: String,
        /// Why it failed, as the registry or runtime said.
        message: String,
    },
    /// Pod networking (CNI) failed while setting up or tearing down a sandbox.
    #[error("network: {0}")]
    Network(String),
    /// Resources are exhausted (disk full, too many pids...).
    #[error("resource exhausted: {0}")]
    ResourceExhausted(String),
    /// The runtime failed for another reason; the message is the runtime's own.
    #[error("runtime: {0}")]
    Internal(String),
    /// An I/O error with the path it concerns.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: std::path::PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl RuntimeError {
    /// Whether this error means the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, RuntimeError::NotFound { .. })
    }
}

/// Pod sandboxes and containers: the CRI `RuntimeService`.
///
/// # Example: an integrator's own backend
///
/// Only the required calls need a body; exec/attach/port-forward, stats and updates default to
/// [`RuntimeError::Unimplemented`].
///
/// ```
/// use std::time::Duration;
/// use async_trait::async_trait;
/// use node_core::{cri, RuntimeBackend, RuntimeError};
///
/// /// A runtime that has nothing and can run nothing.
/// struct Empty;
///
/// #[async_trait]
/// impl RuntimeBackend for Empty {
///     async fn version(&self) -> Result<cri::VersionResponse, RuntimeError> {
///         Ok(cri::VersionResponse { version: "0.1.0".into(), runtime_name: "empty".into(),
///             runtime_version: "0".into(), runtime_api_version: "v1".into() })
///     }
///     async fn status(&self, _verbose: bool) -> Result<cri::StatusResponse, RuntimeError> {
///         Ok(cri::StatusResponse::default())
///     }
///     async fn run_pod_sandbox(&self, _req: cri::RunPodSandboxRequest) -> Result<String, RuntimeError> {
///         Err(RuntimeError::ResourceExhausted("no room".into()))
///     }
///     async fn stop_pod_sandbox(&self, _id: &str) -> Result<(), RuntimeError> { Ok(()) }
///     async fn remove_pod_sandbox(&self, _id: &str) -> Result<(), RuntimeError> { Ok(()) }
///     async fn pod_sandbox_status(&self, id: &str, _v: bool) -> Result<cri::PodSandboxStatusResponse, RuntimeError> {
///         Err(RuntimeError::NotFound { kind: "pod sandbox", id: id.into() })
///     }
///     async fn list_pod_sandbox(&self, _f: Option<cri::PodSandboxFilter>) -> Result<Vec<cri::PodSandbox>, RuntimeError> {
///         Ok(vec![])
///     }
///     async fn create_container(&self, _req: cri::CreateContainerRequest) -> Result<String, RuntimeError> {
///         Err(RuntimeError::ResourceExhausted("no room".into()))
///     }
///     async fn start_container(&self, id: &str) -> Result<(), RuntimeError> {
///         Err(RuntimeError::NotFound { kind: "container", id: id.into() })
///     }
///     async fn stop_container(&self, _id: &str, _timeout: Duration) -> Result<(), RuntimeError> { Ok(()) }
///     async fn remove_container(&self, _id: &str) -> Result<(), RuntimeError> { Ok(()) }
///     async fn container_status(&self, id: &str, _v: bool) -> Result<cri::ContainerStatusResponse, RuntimeError> {
///         Err(RuntimeError::NotFound { kind: "container", id: id.into() })
///     }
///     async fn list_containers(&self, _f: Option<cri::ContainerFilter>) -> Result<Vec<cri::Container>, RuntimeError> {
///         Ok(vec![])
///     }
///     async fn exec_sync(&self, id: &str, _cmd: Vec<String>, _t: Duration) -> Result<cri::ExecSyncResponse, RuntimeError> {
///         Err(RuntimeError::NotFound { kind: "container", id: id.into() })
///     }
/// }
/// let runtime: std::sync::Arc<dyn RuntimeBackend> = std::sync::Arc::new(Empty);
/// ```
#[async_trait]
pub trait RuntimeBackend: Send + Sync {
    /// The runtime's name and versions.
    async fn version(&self) -> Result<cri::VersionResponse, RuntimeError>;
    /// The runtime's conditions (`RuntimeReady`, `NetworkReady`), with extra info when `verbose`.
    async fn status(&self, verbose: bool) -> Result<cri::StatusResponse, RuntimeError>;

    /// Create and start a pod sandbox (namespaces, network); returns its id.
    async fn run_pod_sandbox(&self, req: cri::RunPodSandboxRequest)
    -> Result<String, RuntimeError>;
    /// Stop a sandbox and every container in it, and tear down its network. Idempotent.
    async fn stop_pod_sandbox(&self, id: &str) -> Result<(), RuntimeError>;
    /// Remove a stopped sandbox and its containers. Removing an unknown sandbox succeeds.
    async fn remove_pod_sandbox(&self, id: &str) -> Result<(), RuntimeError>;
    /// The status of one sandbox.
    async fn pod_sandbox_status(
        &self,
        id: &str,
        verbose: bool,
    ) -> Result<cri::PodSandboxStatusResponse, RuntimeError>;
    /// The sandboxes matching a filter (id, state, labels).
    async fn list_pod_sandbox(
        &self,
        filter: Option<cri::PodSandboxFilter>,
    ) -> Result<Vec<cri::PodSandbox>, RuntimeError>;

    /// Create a container in a sandbox; returns its id.
    async fn create_container(
        &self,
        req: cri::CreateContainerRequest,
    ) -> Result<String, RuntimeError>;
    /// Start a created container.
    async fn start_container(&self, id: &str) -> Result<(), RuntimeError>;
    /// Stop a container: its stop signal, then SIGKILL after `timeout`. Idempotent.
    async fn stop_container(&self, id: &str, timeout: Duration) -> Result<(), RuntimeError>;
    /// Remove a container (stopping it first if needed). Removing an unknown container succeeds.
    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError>;
    /// The status of one container.
    async fn container_status(
        &self,
        id: &str,
        verbose: bool,
    ) -> Result<cri::ContainerStatusResponse, RuntimeError>;
    /// The containers matching a filter (id, sandbox id, state, labels).
    async fn list_containers(
        &self,
        filter: Option<cri::ContainerFilter>,
    ) -> Result<Vec<cri::Container>, RuntimeError>;
    /// Run a command in a container and wait for it, at most `timeout` (zero: no limit).
    async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: Duration,
    ) -> Result<cri::ExecSyncResponse, RuntimeError>;

    /// A streaming URL for an interactive exec.
    async fn exec(&self, _req: cri::ExecRequest) -> Result<cri::ExecResponse, RuntimeError> {
        Err(RuntimeError::Unimplemented("Exec"))
    }
    /// A streaming URL to attach to a running container.
    async fn attach(&self, _req: cri::AttachRequest) -> Result<cri::AttachResponse, RuntimeError> {
        Err(RuntimeError::Unimplemented("Attach"))
    }
    /// A streaming URL to forward ports into a sandbox.
    async fn port_forward(
        &self,
        _req: cri::PortForwardRequest,
    ) -> Result<cri::PortForwardResponse, RuntimeError> {
        Err(RuntimeError::Unimplemented("PortForward"))
    }
    /// Resource usage of one container.
    async fn container_stats(&self, _id: &str) -> Result<cri::ContainerStats, RuntimeError> {
        Err(RuntimeError::Unimplemented("ContainerStats"))
    }
    /// Resource usage of the containers matching a filter.
    async fn list_container_stats(
        &self,
        _filter: Option<cri::ContainerStatsFilter>,
    ) -> Result<Vec<cri::ContainerStats>, RuntimeError> {
        Err(RuntimeError::Unimplemented("ListContainerStats"))
    }
    /// Resource usage of one sandbox.
    async fn pod_sandbox_stats(&self, _id: &str) -> Result<cri::PodSandboxStats, RuntimeError> {
        Err(RuntimeError::Unimplemented("PodSandboxStats"))
    }
    /// Resource usage of the sandboxes matching a filter.
    async fn list_pod_sandbox_stats(
        &self,
        _filter: Option<cri::PodSandboxStatsFilter>,
    ) -> Result<Vec<cri::PodSandboxStats>, RuntimeError> {
        Err(RuntimeError::Unimplemented("ListPodSandboxStats"))
    }
    /// Change a running container's resources.
    async fn update_container_resources(
        &self,
        _req: cri::UpdateContainerResourcesRequest,
    ) -> Result<(), RuntimeError> {
        Err(RuntimeError::Unimplemented("UpdateContainerResources"))
    }
    /// Reopen a container's log file (after log rotation).
    async fn reopen_container_log(&self, _id: &str) -> Result<(), RuntimeError> {
        Err(RuntimeError::Unimplemented("ReopenContainerLog"))
    }
    /// Update the runtime's configuration (the pod CIDR).
    async fn update_runtime_config(&self, _config: cri::RuntimeConfig) -> Result<(), RuntimeError> {
        Err(RuntimeError::Unimplemented("UpdateRuntimeConfig"))
    }
    /// Container lifecycle events as they happen (the CRI's `GetContainerEvents`, kubelet's
    /// evented PLEG): created, started, stopped, deleted, each with the sandbox's status. The
    /// stream ends or fails when the runtime stops sending; callers relist as their fallback.
    async fn get_container_events(&self) -> Result<ContainerEventStream, RuntimeError> {
        Err(RuntimeError::Unimplemented("GetContainerEvents"))
    }
}

/// The stream of [`RuntimeBackend::get_container_events`].
pub type ContainerEventStream =
    futures::stream::BoxStream<'static, Result<cri::ContainerEventResponse, RuntimeError>>;

/// Images: the CRI `ImageService`.
///
/// # Example
///
/// ```
/// use async_trait::async_trait;
/// use node_core::{cri, ImageBackend, RuntimeError};
///
/// /// An image store that has every image already (for tests of pull policies).
/// struct Everything;
///
/// #[async_trait]
/// impl ImageBackend for Everything {
///     async fn pull_image(&self, image: cri::ImageSpec, _auth: Option<cri::AuthConfig>,
///         _sandbox: Option<cri::PodSandboxConfig>) -> Result<String, RuntimeError> {
///         Ok(image.image)
///     }
///     async fn image_status(&self, image: cri::ImageSpec, _verbose: bool)
///         -> Result<cri::ImageStatusResponse, RuntimeError> {
///         Ok(cri::ImageStatusResponse { image: Some(cri::Image { id: image.image.clone(),
///             repo_tags: vec![image.image], ..Default::default() }), info: Default::default() })
///     }
///     async fn list_images(&self, _f: Option<cri::ImageFilter>) -> Result<Vec<cri::Image>, RuntimeError> {
///         Ok(vec![])
///     }
///     async fn remove_image(&self, _image: cri::ImageSpec) -> Result<(), RuntimeError> { Ok(()) }
/// }
/// ```
#[async_trait]
pub trait ImageBackend: Send + Sync {
    /// Pull an image (with registry credentials when given); returns the image reference
    /// (digest) the runtime knows it by.
    async fn pull_image(
        &self,
        image: cri::ImageSpec,
        auth: Option<cri::AuthConfig>,
        sandbox_config: Option<cri::PodSandboxConfig>,
    ) -> Result<String, RuntimeError>;
    /// The status of an image; `image` is `None` in the answer when the image is not present.
    async fn image_status(
        &self,
        image: cri::ImageSpec,
        verbose: bool,
    ) -> Result<cri::ImageStatusResponse, RuntimeError>;
    /// The images matching a filter.
    async fn list_images(
        &self,
        filter: Option<cri::ImageFilter>,
    ) -> Result<Vec<cri::Image>, RuntimeError>;
    /// Remove an image. Removing an absent image succeeds.
    async fn remove_image(&self, image: cri::ImageSpec) -> Result<(), RuntimeError>;
    /// The filesystems images and containers are stored on, and their usage.
    async fn image_fs_info(&self) -> Result<cri::ImageFsInfoResponse, RuntimeError> {
        Err(RuntimeError::Unimplemented("ImageFsInfo"))
    }
}
