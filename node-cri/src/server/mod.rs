//! The CRI server: [`CriServer`] serves CRI `runtime.v1` (`RuntimeService` and `ImageService`)
//! on a unix socket for any [`RuntimeBackend`] + [`ImageBackend`], so that a kubelet, `crictl` or
//! any CRI client can drive the native runtime, an integrator's own backend, or (with a
//! [`crate::CriClient`] as the backend) another runtime through a CRI proxy.
//!
//! The server adds the CRI semantics a backend alone may not give:
//! - requests are checked first: empty ids, missing configs or metadata, bad ports and the like
//!   answer `InvalidArgument` naming the field, without reaching the backend;
//! - `StopPodSandbox`, `RemovePodSandbox`, `StopContainer`, `RemoveContainer` and `RemoveImage`
//!   are idempotent (the backend's `NotFound` is success, as containerd does); status calls on
//!   unknown ids answer `NotFound`; `ImageStatus` of an absent image answers no image;
//! - the `List*` filters (id or unique id prefix, state, labels, sandbox, image reference) are
//!   applied to whatever the backend answers; `info` is only returned when `verbose` is asked;
//! - `Status` always carries `RuntimeReady` and `NetworkReady`;
//! - `GetContainerEvents` streams the backend's events (`Unimplemented` when it has none) and
//!   ends the streams when the server shuts down; a subscriber that falls behind gets the
//!   backend's error (`ResourceExhausted` for the native runtime) and its stream ends;
//! - `CheckpointContainer` answers `Unimplemented`,
//!   `ListMetricDescriptors`/`ListPodSandboxMetrics` an empty list (no extra metrics), and
//!   `RuntimeConfig` the configured cgroup driver ([`CriServerConfig::cgroup_driver`]) or
//!   `Unimplemented`; the kubelet falls back to its own configuration then;
//! - a panic in a backend call answers `Internal` and the server keeps serving; a client sending
//!   garbage loses only its own connection.
//!
//! Exec, Attach and PortForward are the backend's (they return its streaming URL), or
//! `Unimplemented` when it has none.
//!
//! ```no_run
//! use std::sync::Arc;
//! use node_cri::server::CriServer;
//! use node_test_support::FakeRuntime;
//!
//! # async fn demo() -> Result<(), node_cri::server::ServeError> {
//! let backend = Arc::new(FakeRuntime::new());
//! CriServer::new(backend.clone(), backend)
//!     .serve("/run/nodekit/cri.sock", async {
//!         let _ = tokio::signal::ctrl_c().await;
//!     })
//!     .await?;
//! # Ok(())
//! # }
//! ```

pub mod filter;
mod image;
mod runtime;
pub mod socket;
pub mod status;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use k8s_cri::v1::image_service_server::ImageServiceServer;
use k8s_cri::v1::runtime_service_server::RuntimeServiceServer;
use node_core::{ImageBackend, RuntimeBackend, cri};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Response, Status};

use crate::client::MAX_MESSAGE_SIZE;

/// How a [`CriServer`] serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CriServerConfig {
    /// The socket's permission bits (containerd: 0660).
    pub socket_mode: u32,
    /// The socket's group (`None`: root's group 0 when running as root, else unchanged).
    pub socket_gid: Option<u32>,
    /// The largest gRPC message accepted or sent (the kubelet's limit: 16 MiB).
    pub max_message_size: usize,
    /// How long a graceful shutdown waits for in-flight calls before it returns anyway.
    pub shutdown_grace: Duration,
    /// What `RuntimeConfig` answers as the cgroup driver (`None`: `Unimplemented`, and the
    /// kubelet uses its own `--cgroup-driver`).
    pub cgroup_driver: Option<cri::CgroupDriver>,
    /// The sandbox (pause) image: reported pinned by `ImageStatus`/`ListImages` so that the
    /// kubelet's image garbage collection keeps it, and shown in verbose `Status` info.
    pub sandbox_image: String,
}

impl Default for CriServerConfig {
    fn default() -> Self {
        Self {
            socket_mode: 0o660,
            socket_gid: None,
            max_message_size: MAX_MESSAGE_SIZE,
            shutdown_grace: Duration::from_secs(30),
            cgroup_driver: None,
            sandbox_image: String::new(),
        }
    }
}

/// Why serving failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// Preparing the socket (its directory, a stale socket, binding, permissions) failed.
    #[error("CRI socket {path}: {what}: {source}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// The step that failed.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Another server answers on the socket already.
    #[error("CRI socket {path}: another server is listening on it")]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// Something other than a socket is at the path (it is left alone).
    #[error("CRI socket {path}: exists and is not a socket")]
    NotASocket {
        /// The socket path.
        path: PathBuf,
    },
    /// The gRPC transport failed.
    #[error("CRI server: {0}")]
    Transport(#[source] tonic::transport::Error),
}

/// What both services share: the backends and the configuration.
struct Inner {
    runtime: Arc<dyn RuntimeBackend>,
    images: Arc<dyn ImageBackend>,
    config: CriServerConfig,
    /// Turns true when serving stops: the event streams end.
    events_stop: tokio::sync::watch::Sender<bool>,
}

/// The implementation of both CRI services over the backends (see the [module docs](self)).
#[derive(Clone)]
pub struct CriApi(Arc<Inner>);

impl std::fmt::Debug for CriApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CriApi")
            .field("config", &self.0.config)
            .finish_non_exhaustive()
    }
}

/// A CRI server for a [`RuntimeBackend`] and an [`ImageBackend`].
#[derive(Debug, Clone)]
pub struct CriServer {
    api: CriApi,
}

impl CriServer {
    /// A server for these backends with the default configuration.
    pub fn new(runtime: Arc<dyn RuntimeBackend>, images: Arc<dyn ImageBackend>) -> Self {
        Self::with_config(runtime, images, CriServerConfig::default())
    }

    /// A server for these backends.
    pub fn with_config(
        runtime: Arc<dyn RuntimeBackend>,
        images: Arc<dyn ImageBackend>,
        config: CriServerConfig,
    ) -> Self {
        Self {
            api: CriApi(Arc::new(Inner {
                runtime,
                images,
                config,
                events_stop: tokio::sync::watch::Sender::new(false),
            })),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &CriServerConfig {
        &self.api.0.config
    }

    /// The `RuntimeService`, to add to a tonic router of one's own.
    pub fn runtime_service(&self) -> RuntimeServiceServer<CriApi> {
        let max = self.config().max_message_size;
        RuntimeServiceServer::new(self.api.clone())
            .max_decoding_message_size(max)
            .max_encoding_message_size(max)
    }

    /// The `ImageService`, to add to a tonic router of one's own.
    pub fn image_service(&self) -> ImageServiceServer<CriApi> {
        let max = self.config().max_message_size;
        ImageServiceServer::new(self.api.clone())
            .max_decoding_message_size(max)
            .max_encoding_message_size(max)
    }

    /// Serve on the unix socket `path` until `shutdown` completes, then drain in-flight calls
    /// (at most [`CriServerConfig::shutdown_grace`]) and remove the socket.
    ///
    /// The socket is prepared by [`socket::bind`]: parent directory created, a stale socket
    /// replaced (a live one is [`ServeError::InUse`]), mode [`CriServerConfig::socket_mode`],
    /// owned by root.
    pub async fn serve(
        self,
        path: impl AsRef<Path>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServeError> {
        let path = path.as_ref();
        let std_listener = socket::bind(path, self.config().socket_mode, self.config().socket_gid)?;
        let listener = UnixListener::from_std(std_listener).map_err(|e| ServeError::Socket {
            path: path.to_path_buf(),
            what: "registering with the async runtime",
            source: e,
        })?;
        let ours = socket::identity(path);
        tracing::info!(socket = %path.display(), "CRI server listening");
        let result = self.serve_with_listener(listener, shutdown).await;
        // remove the socket unless another server has replaced it meanwhile
        if ours.is_some() && socket::identity(path) == ours {
            let _ = std::fs::remove_file(path);
        }
        result
    }

    /// Serve on an already bound listener (tests, socket activation) until `shutdown`
    /// completes, then drain in-flight calls (at most [`CriServerConfig::shutdown_grace`]).
    pub async fn serve_with_listener(
        self,
        listener: UnixListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServeError> {
        let grace = self.config().shutdown_grace;
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let signal = async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
        };
        let serve = tonic::transport::Server::builder()
            .add_service(self.runtime_service())
            .add_service(self.image_service())
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), signal);
        tokio::pin!(serve);
        tokio::pin!(shutdown);
        tokio::select! {
            r = &mut serve => return r.map_err(ServeError::Transport),
            () = &mut shutdown => {}
        }
        tracing::info!("CRI server shutting down: draining in-flight calls");
        let _ = stop_tx.send(true);
        self.api.0.events_stop.send_replace(true);
        match tokio::time::timeout(grace, serve).await {
            Ok(r) => r.map_err(ServeError::Transport),
            Err(_) => {
                tracing::warn!(
                    ?grace,
                    "CRI server: calls still in flight after the grace period; stopped anyway"
                );
                Ok(())
            }
        }
    }
}

/// The body of one RPC: `$m` (written `M = "Method"`) names the CRI method in the body's error
/// texts, `$req` binds the request's message, and the body (the checks, then the backend call,
/// then the answer) runs in [`guarded`]: a panic in it answers `Internal`.
macro_rules! rpc {
    ($m:ident = $method:literal, $r:ident, |$req:pat_param| $body:expr) => {{
        const $m: &str = $method;
        let $req = $r.into_inner();
        guarded($m, async { $body }).await
    }};
}
use rpc;

/// The backend's answer, its error mapped to the call's status ([`status::to_status`]).
fn strict<T>(method: &str, r: Result<T, node_core::RuntimeError>) -> Result<T, Status> {
    r.map_err(|e| status::to_status(method, &e))
}

/// Run one call's future: its result becomes the response, a panic inside it becomes
/// `Internal` (the server and other calls are unaffected).
async fn guarded<T>(
    method: &'static str,
    fut: impl Future<Output = Result<T, Status>>,
) -> Result<Response<T>, Status> {
    let started = std::time::Instant::now();
    let result = match AssertUnwindSafe(fut).catch_unwind().await {
        Ok(r) => r,
        Err(panic) => {
            let status = status::panic_status(method, panic.as_ref());
            tracing::error!(method, error = %status.message(), "CRI call panicked");
            Err(status)
        }
    };
    match &result {
        Ok(_) => tracing::trace!(method, elapsed = ?started.elapsed(), "CRI call"),
        Err(s) => {
            tracing::debug!(method, code = ?s.code(), error = %s.message(), elapsed = ?started.elapsed(), "CRI call failed")
        }
    }
    result.map(Response::new)
}
