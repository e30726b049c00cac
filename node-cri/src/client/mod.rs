//! The CRI client: [`CriClient`] speaks CRI `runtime.v1` gRPC to a runtime on a unix socket
//! (containerd, CRI-O) and implements node-core's [`RuntimeBackend`] and [`ImageBackend`] with it.
//!
//! - [`CriClient::connect`] connects within [`CriClientConfig::connect_timeout`] and checks that
//!   the runtime answers `Version` with `runtime_api_version` `v1`.
//! - Every call runs under a deadline ([`CriClientConfig::call_timeout`]; pulls under
//!   [`CriClientConfig::image_pull_timeout`]; `exec_sync` and `stop_container` get their own
//!   timeout on top) and fails with [`RuntimeError::Timeout`] when it passes.
//! - The connection is re-established on the next call after the runtime restarts. A call that
//!   provably never reached the runtime (connection refused, or already broken when the request
//!   was written; runtime still starting) is retried once; calls that are safe to repeat (reads,
//!   stop, remove) are retried once after any transport failure.
//! - gRPC status codes map to [`RuntimeError`] variants (containerd's `Unknown` + "not found" is
//!   [`RuntimeError::NotFound`]; pull failures are [`RuntimeError::ImagePull`] naming the image).
//!
//! ```no_run
//! use node_cri::client::{CriClient, CriClientConfig};
//! use node_core::RuntimeBackend;
//!
//! # async fn demo() -> Result<(), node_core::RuntimeError> {
//! let client = CriClient::connect(CriClientConfig {
//!     endpoint: "unix:///run/containerd/containerd.sock".into(),
//!     ..Default::default()
//! })
//! .await?;
//! println!("{} {}", client.runtime_name(), client.runtime_version());
//! let conditions = client.conditions().await?;
//! assert!(conditions.runtime_ready);
//! let pods = client.list_pod_sandbox(None).await?;
//! # let _ = pods;
//! # Ok(())
//! # }
//! ```

#[cfg(test)]
mod fake_server_tests;
pub(crate) mod status;
pub mod timing;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use node_core::{ImageBackend, RuntimeBackend, RuntimeError, cri};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tower::service_fn;

use status::{CallContext, is_transport_failure, map_status, never_delivered};

/// The CRI API version this client speaks.
pub const CRI_API_VERSION: &str = "v1";

/// The largest gRPC message accepted from the runtime (the kubelet's limit too): long container
/// lists exceed tonic's default of 4 MiB.
pub const MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

/// How long to wait before the one retry of a call that found the runtime unavailable.
const RETRY_DELAY: Duration = Duration::from_millis(250);

/// How to reach a CRI runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CriClientConfig {
    /// The runtime's socket: `unix:///run/containerd/containerd.sock`, `unix:/path` or a plain
    /// path.
    pub endpoint: String,
    /// How long connecting (and the first `Version` call) may take.
    pub connect_timeout: Duration,
    /// The deadline of each call (the kubelet's `--runtime-request-timeout`).
    pub call_timeout: Duration,
    /// The deadline of an image pull.
    pub image_pull_timeout: Duration,
}

impl Default for CriClientConfig {
    fn default() -> Self {
        Self {
            endpoint: "unix:///run/containerd/containerd.sock".into(),
            connect_timeout: Duration::from_secs(5),
            call_timeout: Duration::from_secs(120),
            image_pull_timeout: Duration::from_secs(600),
        }
    }
}

/// The runtime's conditions from its `Status` answer, as booleans.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RuntimeConditions {
    /// `RuntimeReady`: the runtime can run sandboxes and containers.
    pub runtime_ready: bool,
    /// `NetworkReady`: pod networking (CNI) is configured.
    pub network_ready: bool,
    /// Every condition the runtime reported, including the two above and any others.
    pub all: Vec<cri::RuntimeCondition>,
}

impl RuntimeConditions {
    /// Read the conditions of a `Status` answer; an absent condition counts as false.
    pub fn from_status(status: &cri::StatusResponse) -> Self {
        let all = status
            .status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default();
        let is = |name: &str| all.iter().any(|c| c.r#type == name && c.status);
        Self {
            runtime_ready: is("RuntimeReady"),
            network_ready: is("NetworkReady"),
            all,
        }
    }

    /// The reason and message of a condition that is not true (`None` when it is true).
    pub fn why_not(&self, name: &str) -> Option<String> {
        match self.all.iter().find(|c| c.r#type == name) {
            Some(c) if c.status => None,
            Some(c) => Some(format!("{}: {}", c.reason, c.message)),
            None => Some(format!("{name} not reported")),
        }
    }
}

/// A CRI `runtime.v1` client on a unix socket, implementing [`RuntimeBackend`] and
/// [`ImageBackend`].
///
/// Cheap to clone (clones share the connection); use it as `Arc<dyn RuntimeBackend>` or directly.
#[derive(Debug, Clone)]
pub struct CriClient {
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    config: CriClientConfig,
    socket: PathBuf,
    version: cri::VersionResponse,
}

/// The socket path of an endpoint: `unix:///p`, `unix:/p` or `/p`.
pub fn socket_path(endpoint: &str) -> Result<PathBuf, RuntimeError> {
    let path = if let Some(rest) = endpoint.strip_prefix("unix://") {
        rest
    } else if let Some(rest) = endpoint.strip_prefix("unix:") {
        rest
    } else if endpoint.contains("://") {
        return Err(RuntimeError::InvalidArgument(format!(
            "CRI endpoint {endpoint:?}: only unix sockets are supported (unix:///path/to/socket)"
        )));
    } else {
        endpoint
    };
    if path.is_empty() {
        return Err(RuntimeError::InvalidArgument(format!(
            "CRI endpoint {endpoint:?}: no socket path"
        )));
    }
    Ok(PathBuf::from(path))
}

/// An error and its sources, joined with `: `.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(next) = cur {
        let text = next.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = next.source();
    }
    s
}

/// Seconds for a CRI timeout field, rounded up so that a sub-second timeout is not "no timeout".
fn whole_seconds(d: Duration) -> i64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i64::try_from(secs).unwrap_or(i64::MAX)
}

/// [`CriClient::call`]'s `repeatable`: the call is safe to repeat after any transport failure
/// (reads, stop, remove).
const REPEATABLE: bool = true;
/// [`CriClient::call`]'s `repeatable`: the call is repeated only when it provably never reached
/// the runtime (create, start, exec, pull).
const NOT_REPEATABLE: bool = false;

/// One unary CRI call, `self.<service>.<rpc>(msg)` (`service`: `runtime` or `images`), run by
/// [`CriClient::call`] under `ctx`: each attempt clones the tonic client (a cheap handle on the
/// shared channel, as tonic's calls take `&mut self`) and sends `msg` with `ctx.deadline` set on
/// the request (`grpc-timeout`). The value is the runtime's answer or its status as a
/// [`RuntimeError`].
macro_rules! unary {
    ($self:ident.$service:ident.$rpc:ident($msg:expr), $ctx:expr, $repeatable:expr) => {{
        let ctx = $ctx;
        let msg = $msg;
        $self
            .call(&ctx, $repeatable, || {
                let mut c = $self.$service.clone();
                let req = request(msg.clone(), ctx.deadline);
                async move { c.$rpc(req).await }
            })
            .await
    }};
}

impl CriClient {
    /// Connect to the runtime at `config.endpoint` and check its CRI API version.
    ///
    /// Fails with [`RuntimeError::Unavailable`] when the socket does not exist or nobody answers
    /// within the connect timeout, and with [`RuntimeError::FailedPrecondition`] when the runtime
    /// does not speak CRI `v1`.
    pub async fn connect(config: CriClientConfig) -> Result<Self, RuntimeError> {
        let socket = socket_path(&config.endpoint)?;
        let path = socket.clone();
        let connector = service_fn(move |_: Uri| {
            let path = path.clone();
            async move { UnixStream::connect(&path).await.map(TokioIo::new) }
        });
        // The URI is a placeholder: the connector above decides where to connect.
        let endpoint =
            Endpoint::from_static("http://cri.invalid").connect_timeout(config.connect_timeout);
        let unavailable = |why: String| {
            RuntimeError::Unavailable(format!("CRI endpoint {}: {why}", config.endpoint))
        };
        if !socket.exists() {
            return Err(unavailable(format!(
                "socket {} does not exist",
                socket.display()
            )));
        }
        let channel = match tokio::time::timeout(
            config.connect_timeout,
            endpoint.connect_with_connector(connector),
        )
        .await
        {
            Err(_) => {
                return Err(unavailable(format!(
                    "no connection within {:?}",
                    config.connect_timeout
                )));
            }
            Ok(Err(e)) => return Err(unavailable(error_chain(&e))),
            Ok(Ok(channel)) => channel,
        };
        let runtime = RuntimeServiceClient::new(channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);
        let images = ImageServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);
        let mut client = Self {
            runtime,
            images,
            config,
            socket,
            version: cri::VersionResponse::default(),
        };
        let version = match client.fetch_version(client.config.connect_timeout).await {
            Ok(v) => v,
            Err(RuntimeError::Unimplemented(_)) => {
                return Err(RuntimeError::FailedPrecondition(format!(
                    "the runtime at {} does not serve CRI runtime.{CRI_API_VERSION} (Version is unimplemented)",
                    client.config.endpoint
                )));
            }
            // something listens but does not answer: as good as no runtime
            Err(RuntimeError::Timeout(d)) => {
                return Err(RuntimeError::Unavailable(format!(
                    "CRI endpoint {}: no answer to Version within {d:?}",
                    client.config.endpoint
                )));
            }
            Err(e) => return Err(e),
        };
        check_api_version(&client.config.endpoint, &version)?;
        client.version = version;
        Ok(client)
    }

    /// [`Self::connect`], waiting up to `patience` for a runtime that is not up yet (a node agent
    /// started before containerd): [`RuntimeError::Unavailable`] is retried every 250 ms until
    /// `patience` has passed; any other error is returned at once.
    pub async fn connect_waiting(
        config: CriClientConfig,
        patience: Duration,
    ) -> Result<Self, RuntimeError> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            match Self::connect(config.clone()).await {
                Err(RuntimeError::Unavailable(why)) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(endpoint = %config.endpoint, %why, "runtime not up yet");
                    tokio::time::sleep(RETRY_DELAY).await;
                }
                Err(RuntimeError::Unavailable(why)) => {
                    return Err(RuntimeError::Unavailable(format!(
                        "{why} (waited {patience:?})"
                    )));
                }
                other => return other,
            }
        }
    }

    /// The configuration this client was made with.
    pub fn config(&self) -> &CriClientConfig {
        &self.config
    }

    /// The runtime's socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The runtime's name (`containerd`, `cri-o`), from `Version` at connect time.
    pub fn runtime_name(&self) -> &str {
        &self.version.runtime_name
    }

    /// The runtime's version, from `Version` at connect time.
    pub fn runtime_version(&self) -> &str {
        &self.version.runtime_version
    }

    /// The whole `Version` answer of connect time.
    pub fn version_info(&self) -> &cri::VersionResponse {
        &self.version
    }

    /// The runtime's conditions (`RuntimeReady`, `NetworkReady`) as booleans.
    pub async fn conditions(&self) -> Result<RuntimeConditions, RuntimeError> {
        Ok(RuntimeConditions::from_status(&self.status(false).await?))
    }

    /// Whether the runtime reports `RuntimeReady`.
    pub async fn runtime_ready(&self) -> Result<bool, RuntimeError> {
        Ok(self.conditions().await?.runtime_ready)
    }

    /// Whether the runtime reports `NetworkReady`.
    pub async fn network_ready(&self) -> Result<bool, RuntimeError> {
        Ok(self.conditions().await?.network_ready)
    }

    async fn fetch_version(
        &self,
        deadline: Duration,
    ) -> Result<cri::VersionResponse, RuntimeError> {
        let ctx = CallContext::new("Version", "runtime", "", deadline);
        let msg = cri::VersionRequest {
            version: CRI_API_VERSION.into(),
        };
        unary!(self.runtime.version(msg), ctx, REPEATABLE)
    }

    /// Run one call under `ctx.deadline` (zero: none). It is repeated once, after a short pause,
    /// when it provably never reached the runtime (connection refused or already broken, runtime
    /// still starting), and, when `repeatable` (reads, stop, remove), after any transport failure.
    async fn call<T, F, Fut>(
        &self,
        ctx: &CallContext,
        repeatable: bool,
        mut f: F,
    ) -> Result<T, RuntimeError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut retried = false;
        loop {
            let fut = f();
            let result = if ctx.deadline.is_zero() {
                fut.await
            } else {
                match tokio::time::timeout(ctx.deadline, fut).await {
                    Ok(r) => r,
                    Err(_) => return Err(RuntimeError::Timeout(ctx.deadline)),
                }
            };
            let status = match result {
                Ok(resp) => return Ok(resp.into_inner()),
                Err(status) => status,
            };
            let again = never_delivered(&status) || repeatable && is_transport_failure(&status);
            if again && !retried {
                retried = true;
                tracing::debug!(method = ctx.method, error = %status.message(), "runtime unavailable, retrying once");
                tokio::time::sleep(RETRY_DELAY).await;
                continue;
            }
            let err = map_status(&status, ctx);
            tracing::debug!(method = ctx.method, code = ?status.code(), error = %err, "CRI call failed");
            return Err(err);
        }
    }

    fn ctx(&self, method: &'static str, kind: &'static str, id: impl Into<String>) -> CallContext {
        CallContext::new(method, kind, id, self.config.call_timeout)
    }
}

/// Check that a `Version` answer is CRI `v1`.
fn check_api_version(endpoint: &str, v: &cri::VersionResponse) -> Result<(), RuntimeError> {
    if v.runtime_api_version == CRI_API_VERSION {
        return Ok(());
    }
    Err(RuntimeError::FailedPrecondition(format!(
        "the runtime at {endpoint} ({} {}) speaks CRI API version {:?}; nodekit needs {CRI_API_VERSION:?}",
        v.runtime_name, v.runtime_version, v.runtime_api_version
    )))
}

/// Check what the runtime would reject with an obscure message; the sandbox's `namespace/name`.
fn validate_sandbox(req: &cri::RunPodSandboxRequest) -> Result<String, RuntimeError> {
    let invalid = |what: &str| RuntimeError::InvalidArgument(format!("RunPodSandbox: {what}"));
    let config = req
        .config
        .as_ref()
        .ok_or_else(|| invalid("no sandbox config"))?;
    let meta = config
        .metadata
        .as_ref()
        .ok_or_else(|| invalid("the sandbox config has no metadata"))?;
    if meta.name.is_empty() {
        return Err(invalid("the sandbox metadata has an empty name"));
    }
    Ok(format!("{}/{}", meta.namespace, meta.name))
}

/// Check what the runtime would reject with an obscure message; the container's image.
fn validate_container(req: &cri::CreateContainerRequest) -> Result<String, RuntimeError> {
    let invalid = |what: &str| RuntimeError::InvalidArgument(format!("CreateContainer: {what}"));
    if req.pod_sandbox_id.is_empty() {
        return Err(invalid("empty pod_sandbox_id"));
    }
    let config = req
        .config
        .as_ref()
        .ok_or_else(|| invalid("no container config"))?;
    let name = config
        .metadata
        .as_ref()
        .map(|m| m.name.as_str())
        .unwrap_or_default();
    if name.is_empty() {
        return Err(invalid("the container config has no metadata name"));
    }
    match config.image.as_ref().map(|i| i.image.trim()) {
        Some(image) if !image.is_empty() => Ok(image.to_string()),
        _ => Err(invalid(&format!("container {name:?} has no image"))),
    }
}

/// A request carrying its deadline to the runtime (`grpc-timeout`) too.
fn request<T>(msg: T, deadline: Duration) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if !deadline.is_zero() {
        req.set_timeout(deadline);
    }
    req
}

#[async_trait]
impl RuntimeBackend for CriClient {
    async fn version(&self) -> Result<cri::VersionResponse, RuntimeError> {
        self.fetch_version(self.config.call_timeout).await
    }

    async fn status(&self, verbose: bool) -> Result<cri::StatusResponse, RuntimeError> {
        let ctx = self.ctx("Status", "runtime", "");
        unary!(
            self.runtime.status(cri::StatusRequest { verbose }),
            ctx,
            REPEATABLE
        )
    }

    async fn run_pod_sandbox(
        &self,
        req: cri::RunPodSandboxRequest,
    ) -> Result<String, RuntimeError> {
        let name = validate_sandbox(&req)?;
        let mut ctx = self.ctx("RunPodSandbox", "pod sandbox", name);
        ctx.network = true;
        Ok(unary!(self.runtime.run_pod_sandbox(req), ctx, NOT_REPEATABLE)?.pod_sandbox_id)
    }

    async fn stop_pod_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        let mut ctx = self.ctx("StopPodSandbox", "pod sandbox", id);
        ctx.network = true;
        let msg = cri::StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        unary!(self.runtime.stop_pod_sandbox(msg), ctx, REPEATABLE).map(drop)
    }

    async fn remove_pod_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        let ctx = self.ctx("RemovePodSandbox", "pod sandbox", id);
        let msg = cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        unary!(self.runtime.remove_pod_sandbox(msg), ctx, REPEATABLE).map(drop)
    }

    async fn pod_sandbox_status(
        &self,
        id: &str,
        verbose: bool,
    ) -> Result<cri::PodSandboxStatusResponse, RuntimeError> {
        let ctx = self.ctx("PodSandboxStatus", "pod sandbox", id);
        let pod_sandbox_id = id.into();
        let msg = cri::PodSandboxStatusRequest {
            pod_sandbox_id,
            verbose,
        };
        unary!(self.runtime.pod_sandbox_status(msg), ctx, REPEATABLE)
    }

    async fn list_pod_sandbox(
        &self,
        filter: Option<cri::PodSandboxFilter>,
    ) -> Result<Vec<cri::PodSandbox>, RuntimeError> {
        let ctx = self.ctx("ListPodSandbox", "pod sandbox", "");
        let msg = cri::ListPodSandboxRequest { filter };
        Ok(unary!(self.runtime.list_pod_sandbox(msg), ctx, REPEATABLE)?.items)
    }

    async fn create_container(
        &self,
        req: cri::CreateContainerRequest,
    ) -> Result<String, RuntimeError> {
        let mut ctx = self.ctx("CreateContainer", "pod sandbox", req.pod_sandbox_id.clone());
        ctx.image = validate_container(&req)?;
        Ok(unary!(self.runtime.create_container(req), ctx, NOT_REPEATABLE)?.container_id)
    }

    async fn start_container(&self, id: &str) -> Result<(), RuntimeError> {
        let ctx = self.ctx("StartContainer", "container", id);
        let msg = cri::StartContainerRequest {
            container_id: id.into(),
        };
        unary!(self.runtime.start_container(msg), ctx, NOT_REPEATABLE).map(drop)
    }

    async fn stop_container(&self, id: &str, timeout: Duration) -> Result<(), RuntimeError> {
        let mut ctx = self.ctx("StopContainer", "container", id);
        ctx.deadline = self.config.call_timeout + timeout;
        let msg = cri::StopContainerRequest {
            container_id: id.into(),
            timeout: whole_seconds(timeout),
        };
        unary!(self.runtime.stop_container(msg), ctx, REPEATABLE).map(drop)
    }

    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        let ctx = self.ctx("RemoveContainer", "container", id);
        let msg = cri::RemoveContainerRequest {
            container_id: id.into(),
        };
        unary!(self.runtime.remove_container(msg), ctx, REPEATABLE).map(drop)
    }

    async fn container_status(
        &self,
        id: &str,
        verbose: bool,
    ) -> Result<cri::ContainerStatusResponse, RuntimeError> {
        let ctx = self.ctx("ContainerStatus", "container", id);
        let container_id = id.into();
        let msg = cri::ContainerStatusRequest {
            container_id,
            verbose,
        };
        unary!(self.runtime.container_status(msg), ctx, REPEATABLE)
    }

    async fn list_containers(
        &self,
        filter: Option<cri::ContainerFilter>,
    ) -> Result<Vec<cri::Container>, RuntimeError> {
        let ctx = self.ctx("ListContainers", "container", "");
        let msg = cri::ListContainersRequest { filter };
        Ok(unary!(self.runtime.list_containers(msg), ctx, REPEATABLE)?.containers)
    }

    async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: Duration,
    ) -> Result<cri::ExecSyncResponse, RuntimeError> {
        let mut ctx = self.ctx("ExecSync", "container", id);
        // zero means no limit for the command, so no deadline for the call either
        ctx.deadline = if timeout.is_zero() {
            Duration::ZERO
        } else {
            self.config.call_timeout + timeout
        };
        let msg = cri::ExecSyncRequest {
            container_id: id.into(),
            cmd,
            timeout: whole_seconds(timeout),
        };
        unary!(self.runtime.exec_sync(msg), ctx, NOT_REPEATABLE)
    }

    async fn exec(&self, req: cri::ExecRequest) -> Result<cri::ExecResponse, RuntimeError> {
        let ctx = self.ctx("Exec", "container", req.container_id.clone());
        unary!(self.runtime.exec(req), ctx, NOT_REPEATABLE)
    }

    async fn attach(&self, req: cri::AttachRequest) -> Result<cri::AttachResponse, RuntimeError> {
        let ctx = self.ctx("Attach", "container", req.container_id.clone());
        unary!(self.runtime.attach(req), ctx, NOT_REPEATABLE)
    }

    async fn port_forward(
        &self,
        req: cri::PortForwardRequest,
    ) -> Result<cri::PortForwardResponse, RuntimeError> {
        let ctx = self.ctx("PortForward", "pod sandbox", req.pod_sandbox_id.clone());
        unary!(self.runtime.port_forward(req), ctx, NOT_REPEATABLE)
    }

    async fn container_stats(&self, id: &str) -> Result<cri::ContainerStats, RuntimeError> {
        let ctx = self.ctx("ContainerStats", "container", id);
        let container_id = id.into();
        let msg = cri::ContainerStatsRequest { container_id };
        let stats = unary!(self.runtime.container_stats(msg), ctx, REPEATABLE)?.stats;
        stats.ok_or_else(|| no_stats("ContainerStats", "container", id))
    }

    async fn list_container_stats(
        &self,
        filter: Option<cri::ContainerStatsFilter>,
    ) -> Result<Vec<cri::ContainerStats>, RuntimeError> {
        let ctx = self.ctx("ListContainerStats", "container", "");
        let msg = cri::ListContainerStatsRequest { filter };
        Ok(unary!(self.runtime.list_container_stats(msg), ctx, REPEATABLE)?.stats)
    }

    async fn pod_sandbox_stats(&self, id: &str) -> Result<cri::PodSandboxStats, RuntimeError> {
        let ctx = self.ctx("PodSandboxStats", "pod sandbox", id);
        let pod_sandbox_id = id.into();
        let msg = cri::PodSandboxStatsRequest { pod_sandbox_id };
        let stats = unary!(self.runtime.pod_sandbox_stats(msg), ctx, REPEATABLE)?.stats;
        stats.ok_or_else(|| no_stats("PodSandboxStats", "pod sandbox", id))
    }

    async fn list_pod_sandbox_stats(
        &self,
        filter: Option<cri::PodSandboxStatsFilter>,
    ) -> Result<Vec<cri::PodSandboxStats>, RuntimeError> {
        let ctx = self.ctx("ListPodSandboxStats", "pod sandbox", "");
        let msg = cri::ListPodSandboxStatsRequest { filter };
        Ok(unary!(self.runtime.list_pod_sandbox_stats(msg), ctx, REPEATABLE)?.stats)
    }

    async fn update_container_resources(
        &self,
        req: cri::UpdateContainerResourcesRequest,
    ) -> Result<(), RuntimeError> {
        let id = req.container_id.clone();
        let ctx = self.ctx("UpdateContainerResources", "container", id);
        unary!(
            self.runtime.update_container_resources(req),
            ctx,
            REPEATABLE
        )
        .map(drop)
    }

    async fn reopen_container_log(&self, id: &str) -> Result<(), RuntimeError> {
        let ctx = self.ctx("ReopenContainerLog", "container", id);
        let msg = cri::ReopenContainerLogRequest {
            container_id: id.into(),
        };
        unary!(self.runtime.reopen_container_log(msg), ctx, REPEATABLE).map(drop)
    }

    async fn update_runtime_config(&self, config: cri::RuntimeConfig) -> Result<(), RuntimeError> {
        let ctx = self.ctx("UpdateRuntimeConfig", "runtime", "");
        let runtime_config = Some(config);
        let msg = cri::UpdateRuntimeConfigRequest { runtime_config };
        unary!(self.runtime.update_runtime_config(msg), ctx, REPEATABLE).map(drop)
    }

    /// The runtime's `GetContainerEvents` stream. The subscription itself has the connect
    /// timeout to answer (a runtime without events, such as containerd 1.6, answers
    /// `Unimplemented` at once: [`RuntimeError::Unimplemented`], and the kubelet keeps relisting);
    /// a runtime that sends its response headers only with the first event (grpc-go) gets the
    /// stream anyway, which then waits for that event. The stream has no deadline; it fails with
    /// [`RuntimeError::Unavailable`] when the connection breaks.
    async fn get_container_events(&self) -> Result<node_core::ContainerEventStream, RuntimeError> {
        use futures::{StreamExt, TryStreamExt};
        let ctx = self.ctx("GetContainerEvents", "runtime", "");
        let mut c = self.runtime.clone();
        let mut call = Box::pin(async move {
            c.get_container_events(tonic::Request::new(cri::GetEventsRequest {}))
                .await
        });
        let first = tokio::time::timeout(self.config.connect_timeout, &mut call).await;
        let items = move |s: tonic::Streaming<cri::ContainerEventResponse>| {
            let ctx = ctx.clone();
            s.map_err(move |status| map_status(&status, &ctx))
        };
        match first {
            Ok(Ok(resp)) => Ok(items(resp.into_inner()).boxed()),
            Ok(Err(status)) => {
                let err = map_status(&status, &self.ctx("GetContainerEvents", "runtime", ""));
                tracing::debug!(code = ?status.code(), error = %err, "GetContainerEvents failed");
                Err(err)
            }
            // no headers yet: the stream waits for them
            Err(_) => {
                let ctx = self.ctx("GetContainerEvents", "runtime", "");
                Ok(futures::stream::once(call)
                    .map(move |r| match r {
                        Ok(resp) => items(resp.into_inner()).boxed(),
                        Err(status) => {
                            futures::stream::iter([Err(map_status(&status, &ctx))]).boxed()
                        }
                    })
                    .flatten()
                    .boxed())
            }
        }
    }
}

/// The error of a stats call whose answer had no stats for the `kind` with this id.
fn no_stats(method: &str, kind: &str, id: &str) -> RuntimeError {
    RuntimeError::Internal(format!(
        "{method}: no stats in the answer for {kind} {id:?}"
    ))
}

#[async_trait]
impl ImageBackend for CriClient {
    async fn pull_image(
        &self,
        image: cri::ImageSpec,
        auth: Option<cri::AuthConfig>,
        sandbox_config: Option<cri::PodSandboxConfig>,
    ) -> Result<String, RuntimeError> {
        let mut ctx = self.ctx("PullImage", "image", image.image.clone());
        ctx.deadline = self.config.image_pull_timeout;
        ctx.pull = true;
        if image.image.trim().is_empty() {
            return Err(RuntimeError::InvalidArgument(
                "PullImage: empty image reference".into(),
            ));
        }
        let msg = cri::PullImageRequest {
            image: Some(image),
            auth,
            sandbox_config,
        };
        Ok(unary!(self.images.pull_image(msg), ctx, NOT_REPEATABLE)?.image_ref)
    }

    async fn image_status(
        &self,
        image: cri::ImageSpec,
        verbose: bool,
    ) -> Result<cri::ImageStatusResponse, RuntimeError> {
        let ctx = self.ctx("ImageStatus", "image", image.image.clone());
        let image = Some(image);
        let msg = cri::ImageStatusRequest { image, verbose };
        unary!(self.images.image_status(msg), ctx, REPEATABLE)
    }

    async fn list_images(
        &self,
        filter: Option<cri::ImageFilter>,
    ) -> Result<Vec<cri::Image>, RuntimeError> {
        let ctx = self.ctx("ListImages", "image", "");
        let msg = cri::ListImagesRequest { filter };
        Ok(unary!(self.images.list_images(msg), ctx, REPEATABLE)?.images)
    }

    async fn remove_image(&self, image: cri::ImageSpec) -> Result<(), RuntimeError> {
        let ctx = self.ctx("RemoveImage", "image", image.image.clone());
        let msg = cri::RemoveImageRequest { image: Some(image) };
        match unary!(self.images.remove_image(msg), ctx, REPEATABLE) {
            Ok(cri::RemoveImageResponse {}) => Ok(()),
            // the contract: removing an absent image succeeds
            Err(RuntimeError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn image_fs_info(&self) -> Result<cri::ImageFsInfoResponse, RuntimeError> {
        let ctx = self.ctx("ImageFsInfo", "image", "");
        unary!(
            self.images.image_fs_info(cri::ImageFsInfoRequest {}),
            ctx,
            REPEATABLE
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_to_socket_paths() {
        assert_eq!(
            socket_path("unix:///run/containerd/containerd.sock").unwrap(),
            PathBuf::from("/run/containerd/containerd.sock")
        );
        assert_eq!(
            socket_path("unix:/run/crio/crio.sock").unwrap(),
            PathBuf::from("/run/crio/crio.sock")
        );
        assert_eq!(
            socket_path("/tmp/x.sock").unwrap(),
            PathBuf::from("/tmp/x.sock")
        );
        match socket_path("tcp://127.0.0.1:1234") {
            Err(RuntimeError::InvalidArgument(m)) => {
                assert!(m.contains("tcp://127.0.0.1:1234") && m.contains("unix"))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            socket_path("unix://"),
            Err(RuntimeError::InvalidArgument(_))
        ));
    }

    #[test]
    fn timeouts_round_up_to_whole_seconds() {
        assert_eq!(whole_seconds(Duration::ZERO), 0);
        assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds(Duration::from_secs(30)), 30);
        assert_eq!(whole_seconds(Duration::from_millis(2500)), 3);
    }

    #[test]
    fn version_check_wants_v1() {
        let mut v = cri::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: "containerd".into(),
            runtime_version: "1.6.20".into(),
            runtime_api_version: "v1".into(),
        };
        assert!(check_api_version("unix:///x", &v).is_ok());
        v.runtime_api_version = "v1alpha2".into();
        match check_api_version("unix:///x", &v) {
            Err(RuntimeError::FailedPrecondition(m)) => {
                assert!(
                    m.contains("v1alpha2") && m.contains("containerd") && m.contains("unix:///x"),
                    "{m}"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_requests_are_rejected_naming_the_field() {
        let err = validate_sandbox(&cri::RunPodSandboxRequest::default()).unwrap_err();
        assert!(
            matches!(err, RuntimeError::InvalidArgument(ref m) if m.contains("no sandbox config")),
            "{err:?}"
        );
        let mut req = cri::RunPodSandboxRequest {
            config: Some(Default::default()),
            ..Default::default()
        };
        assert!(
            validate_sandbox(&req)
                .unwrap_err()
                .to_string()
                .contains("no metadata")
        );
        req.config.as_mut().unwrap().metadata = Some(cri::PodSandboxMetadata {
            name: "web".into(),
            namespace: "default".into(),
            ..Default::default()
        });
        assert_eq!(validate_sandbox(&req).unwrap(), "default/web");

        let mut req = cri::CreateContainerRequest::default();
        assert!(
            validate_container(&req)
                .unwrap_err()
                .to_string()
                .contains("pod_sandbox_id")
        );
        req.pod_sandbox_id = "p".into();
        assert!(
            validate_container(&req)
                .unwrap_err()
                .to_string()
                .contains("no container config")
        );
        req.config = Some(cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: "app".into(),
                attempt: 0,
            }),
            ..Default::default()
        });
        let err = validate_container(&req).unwrap_err();
        assert!(
            matches!(err, RuntimeError::InvalidArgument(ref m) if m.contains("\"app\" has no image")),
            "{err:?}"
        );
        req.config.as_mut().unwrap().image = Some(cri::ImageSpec {
            image: "busybox".into(),
            ..Default::default()
        });
        assert_eq!(validate_container(&req).unwrap(), "busybox");
    }

    #[test]
    fn conditions_read_as_booleans() {
        let status = cri::StatusResponse {
            status: Some(cri::RuntimeStatus {
                conditions: vec![
                    cri::RuntimeCondition {
                        r#type: "RuntimeReady".into(),
                        status: true,
                        ..Default::default()
                    },
                    cri::RuntimeCondition {
                        r#type: "NetworkReady".into(),
                        status: false,
                        reason: "NetworkPluginNotReady".into(),
                        message: "cni config uninitialized".into(),
                    },
                ],
            }),
            ..Default::default()
        };
        let c = RuntimeConditions::from_status(&status);
        assert!(c.runtime_ready);
        assert!(!c.network_ready);
        assert_eq!(c.why_not("RuntimeReady"), None);
        assert_eq!(
            c.why_not("NetworkReady").unwrap(),
            "NetworkPluginNotReady: cni config uninitialized"
        );
        assert!(!RuntimeConditions::from_status(&cri::StatusResponse::default()).runtime_ready);
    }

    #[tokio::test]
    async fn missing_socket_is_unavailable_quickly() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("nobody.sock");
        let started = std::time::Instant::now();
        let cfg = CriClientConfig {
            endpoint: format!("unix://{}", sock.display()),
            connect_timeout: Duration::from_secs(2),
            ..Default::default()
        };
        match CriClient::connect(cfg).await {
            Err(RuntimeError::Unavailable(m)) => assert!(
                m.contains("nobody.sock") && m.contains("does not exist"),
                "{m}"
            ),
            other => panic!("{other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn socket_without_listener_is_unavailable() {
        // a socket file that nobody listens on any more: connection refused
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("dead.sock");
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        let cfg = CriClientConfig {
            endpoint: sock.display().to_string(),
            connect_timeout: Duration::from_secs(2),
            ..Default::default()
        };
        let started = std::time::Instant::now();
        match CriClient::connect(cfg).await {
            Err(RuntimeError::Unavailable(m)) => assert!(m.contains("dead.sock"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test]
    async fn silent_listener_is_unavailable_within_the_connect_timeout() {
        // accepts connections but never speaks HTTP/2: connect must not hang
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("silent.sock");
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        let keep = tokio::spawn(async move {
            let mut held = vec![];
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let cfg = CriClientConfig {
            endpoint: sock.display().to_string(),
            connect_timeout: Duration::from_millis(500),
            ..Default::default()
        };
        let started = std::time::Instant::now();
        let r = CriClient::connect(cfg).await;
        assert!(
            matches!(&r, Err(RuntimeError::Unavailable(m)) if m.contains("silent.sock")),
            "{r:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        keep.abort();
    }
}
