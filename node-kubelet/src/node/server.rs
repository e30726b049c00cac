//! The kubelet's server (port 10250 on a kubelet): what the API server proxies `kubectl logs`,
//! `exec`, `attach` and `port-forward` to, over HTTPS with client-certificate authentication.
//!
//! - [`router`]: `GET /containerLogs/{namespace}/{pod}/{container}` (the CRI log file, with
//!   kubelet's query parameters, see [`super::logs`]); `/exec/{namespace}/{pod}/{container}`
//!   (`?command=..&stdin=1&stdout=1&stderr=1&tty=1`), `/attach/{namespace}/{pod}/{container}`
//!   and `/portForward/{namespace}/{pod}` (each also with the pod's UID before the container, as
//!   kubelet's routes), GET or POST with an `Upgrade` header (SPDY/3.1 or WebSocket): the pod and
//!   container are resolved to the runtime's container or sandbox id, the runtime
//!   ([`RuntimeBackend::exec`], [`RuntimeBackend::attach`], [`RuntimeBackend::port_forward`])
//!   hands out its streaming URL, and the client's upgrade request is proxied to it (the
//!   protocol headers, `X-Stream-Protocol-Version` and `Sec-WebSocket-Protocol`, go through),
//!   then bytes are copied both ways: kubelet proxies, it does not redirect.
//! - [`KubeletServer::start`]: serves a router (this one, usually merged with
//!   [`super::http::router`]) over TLS ([`ServerConfig`]: kubelet's `--tls-cert-file`,
//!   `--tls-private-key-file`, `--client-ca-file`); every request is authenticated by the
//!   [`Authenticator`] (see [`super::authn`]: a client certificate signed by the client CA, a
//!   bearer token reviewed by the API server, or `system:anonymous`; else 401 `Unauthorized`; a
//!   certificate from another CA fails the TLS handshake), then authorized by the
//!   [`Authorizer`] (kubelet's `--authorization-mode`, see [`super::authz`]): the request is a
//!   verb on `nodes/<node name>` with a subresource (`proxy` for logs, exec, attach and
//!   port-forward).
//!
//! The read-only port ([`super::http::router`] on plain HTTP) never serves these endpoints; it
//! serves `/stats/summary` and `/metrics/resource` as kubelet's does (authorized here as the
//! `stats` and `metrics` subresources).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, get, on};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use node_core::{PodRef, RuntimeBackend, RuntimeError, cri};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::authn::Authenticator;
use super::authz::{Authorizer, Identity};
use super::logs::{self, LogOptions, query_pairs};
use crate::labels;
use crate::state::PodStates;

/// Where and how the kubelet's server listens.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The address (kubelet's `--address` and `--port`; default `0.0.0.0:10250`).
    pub addr: SocketAddr,
    /// The server's certificate chain, PEM (`--tls-cert-file`).
    pub tls_cert_file: PathBuf,
    /// The server's private key, PEM (`--tls-private-key-file`).
    pub tls_private_key_file: PathBuf,
    /// The CA that signs client certificates, PEM (`--client-ca-file`).
    pub client_ca_file: PathBuf,
    /// How long a client has to finish the TLS handshake.
    pub handshake_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([0, 0, 0, 0], 10250)),
            tls_cert_file: PathBuf::new(),
            tls_private_key_file: PathBuf::new(),
            client_ca_file: PathBuf::new(),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// An error of the kubelet's server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A certificate, key or CA file could not be read or is not usable.
    #[error("{path}: {message}")]
    Tls {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The TLS configuration was refused.
    #[error("TLS configuration: {0}")]
    Config(String),
    /// The address could not be bound.
    #[error("bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn tls_err(path: &std::path::Path, message: impl std::fmt::Display) -> ServerError {
    ServerError::Tls {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

fn read_certs(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, ServerError> {
    if path.as_os_str().is_empty() {
        return Err(ServerError::Config(
            "a certificate file is required (--tls-cert-file, --client-ca-file)".into(),
        ));
    }
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| tls_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_err(path, e))?;
    if certs.is_empty() {
        return Err(tls_err(path, "no certificate in the file"));
    }
    Ok(certs)
}

/// The TLS configuration of `config`: the server's certificate and key, client certificates
/// verified against the client CA when given (a connection without one is accepted; its
/// requests are authenticated otherwise, or answered 401).
pub fn tls_config(config: &ServerConfig) -> Result<Arc<rustls::ServerConfig>, ServerError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain = read_certs(&config.tls_cert_file)?;
    let key_path = &config.tls_private_key_file;
    if key_path.as_os_str().is_empty() {
        return Err(ServerError::Config(
            "a private key file is required (--tls-private-key-file)".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| tls_err(key_path, e))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in read_certs(&config.client_ca_file)? {
        roots
            .add(ca)
            .map_err(|e| tls_err(&config.client_ca_file, e))?;
    }
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(|e| tls_err(&config.client_ca_file, e))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| tls_err(&config.tls_cert_file, e))?;
    // upgrades (SPDY, WebSocket) are HTTP/1.1
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}

/// The kubelet's server, serving until its shutdown token is cancelled or it is dropped.
#[derive(Debug)]
pub struct KubeletServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for KubeletServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl KubeletServer {
    /// Bind `config.addr` and serve `app` over TLS on the current tokio runtime until
    /// `shutdown` (connections being served, streams included, end with the runtime or on their
    /// own), every request authenticated by `authenticator`
    /// ([`Authenticator::certificates_only`] for client certificates alone) and authorized by
    /// `authorizer` ([`Authorizer::always_allow`] for none).
    pub async fn start(
        config: &ServerConfig,
        app: Router,
        authenticator: Authenticator,
        authorizer: Authorizer,
        shutdown: CancellationToken,
    ) -> Result<Self, ServerError> {
        let tls = tls_config(config)?;
        let listener = tokio::net::TcpListener::bind(config.addr)
            .await
            .map_err(|source| ServerError::Bind {
                addr: config.addr,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: config.addr,
            source,
        })?;
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let authorizer_mode = authorizer.config().mode;
        let (anonymous, token_webhook) = (
            authenticator.config().anonymous,
            authenticator.config().webhook,
        );
        if anonymous && authorizer_mode == super::authz::AuthorizationMode::AlwaysAllow {
            tracing::warn!(
                "kubelet server: anonymous requests with AlwaysAllow authorization: any client may do anything"
            );
        }
        let handshake = config.handshake_timeout;
        let task = tokio::spawn(async move {
            loop {
                let (tcp, peer) = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = listener.accept() => match r {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::warn!(error = %e, "kubelet server: accept");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let _ = tcp.set_nodelay(true);
                let (acceptor, app, authenticator, authorizer) = (
                    acceptor.clone(),
                    app.clone(),
                    authenticator.clone(),
                    authorizer.clone(),
                );
                tokio::spawn(async move {
                    let tls = match tokio::time::timeout(handshake, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "kubelet server: TLS handshake");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "kubelet server: TLS handshake timed out");
                            return;
                        }
                    };
                    // a certificate was verified against the client CA in the handshake; its
                    // common name and organizations are the user and groups
                    let certificate = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| Identity::from_certificate(c.as_ref()))
                        .map(Arc::new);
                    let svc = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
                        let (app, authenticator, authorizer, certificate) = (
                            app.clone(),
                            authenticator.clone(),
                            authorizer.clone(),
                            certificate.clone(),
                        );
                        async move {
                            let identity = match authenticator
                                .check(certificate.as_deref(), req.headers_mut())
                                .await
                            {
                                Ok(id) => id,
                                Err(refusal) => {
                                    return Ok::<_, std::convert::Infallible>(refusal);
                                }
                            };
                            if let Some(refusal) = authorizer
                                .check(&identity, req.method(), req.uri().path())
                                .await
                            {
                                return Ok(refusal);
                            }
                            app.oneshot(req.map(Body::new)).await
                        }
                    });
                    if let Err(e) = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .with_upgrades()
                        .await
                    {
                        tracing::debug!(%peer, error = %e, "kubelet server: connection");
                    }
                });
            }
        });
        tracing::info!(%addr, mode = %authorizer_mode, anonymous, token_webhook, "kubelet server listening (TLS)");
        Ok(Self { addr, task })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

/// What the server's endpoints read: the kubelet's pods and the runtime.
#[derive(Clone)]
pub struct ServerState {
    pods: PodStates,
    runtime: Arc<dyn RuntimeBackend>,
    stats: Option<super::stats::StatsProvider>,
}

impl std::fmt::Debug for ServerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerState").finish_non_exhaustive()
    }
}

impl ServerState {
    /// The state over the kubelet's pods ([`Kubelet::states`](crate::Kubelet::states)) and the
    /// runtime it runs them on.
    pub fn new(pods: PodStates, runtime: Arc<dyn RuntimeBackend>) -> Self {
        Self {
            pods,
            runtime,
            stats: None,
        }
    }

    /// Serve `/stats/summary` and `/metrics/resource` ([`super::stats::router`]) too. Give the
    /// provider to this router or to the [`super::http::router`] merged with it, not both: the
    /// routes would overlap.
    #[must_use]
    pub fn stats(mut self, provider: super::stats::StatsProvider) -> Self {
        self.stats = Some(provider);
        self
    }

    fn pod(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<(Pod, Option<k8s_openapi::api::core::v1::PodStatus>)> {
        self.pods
            .pods()
            .into_iter()
            .find(|s| {
                s.pod.metadata.name.as_deref() == Some(name)
                    && s.pod.metadata.namespace.as_deref().unwrap_or("default") == namespace
            })
            .map(|s| (s.pod, s.status))
    }

    /// The newest running container `name` of the pod (kubelet's `findContainer`).
    async fn running_container(&self, uid: &str, name: &str) -> Result<String, RuntimeError> {
        let filter = cri::ContainerFilter {
            label_selector: [(labels::POD_UID.to_string(), uid.to_string())].into(),
            state: Some(cri::ContainerStateValue {
                state: cri::ContainerState::ContainerRunning as i32,
            }),
            ..Default::default()
        };
        let mut found: Vec<cri::Container> = self
            .runtime
            .list_containers(Some(filter))
            .await?
            .into_iter()
            .filter(|c| {
                c.state == cri::ContainerState::ContainerRunning as i32
                    && c.labels.get(labels::CONTAINER_NAME).map(String::as_str) == Some(name)
            })
            .collect();
        found.sort_by_key(|c| c.created_at);
        found
            .pop()
            .map(|c| c.id)
            .ok_or_else(|| RuntimeError::NotFound {
                kind: "container",
                id: name.into(),
            })
    }

    /// The ready sandbox of the pod.
    async fn sandbox(&self, uid: &str) -> Result<String, RuntimeError> {
        let filter = cri::PodSandboxFilter {
            label_selector: [(labels::POD_UID.to_string(), uid.to_string())].into(),
            state: Some(cri::PodSandboxStateValue {
                state: cri::PodSandboxState::SandboxReady as i32,
            }),
            ..Default::default()
        };
        let mut found: Vec<cri::PodSandbox> = self
            .runtime
            .list_pod_sandbox(Some(filter))
            .await?
            .into_iter()
            .filter(|s| s.state == cri::PodSandboxState::SandboxReady as i32)
            .collect();
        found.sort_by_key(|s| s.created_at);
        found
            .pop()
            .map(|s| s.id)
            .ok_or_else(|| RuntimeError::NotFound {
                kind: "pod sandbox",
                id: uid.into(),
            })
    }
}

/// The endpoints: `/containerLogs`, `/exec`, `/attach`, `/portForward` (see the module
/// documentation), and with [`ServerState::stats`] `/stats/summary` and `/metrics/resource`.
pub fn router(state: ServerState) -> Router {
    let upgrade = MethodFilter::GET.or(MethodFilter::POST);
    let stats = state.stats.clone();
    let router = Router::new()
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(container_logs),
        )
        .route(
            "/exec/{namespace}/{pod}/{container}",
            on(upgrade, remote_command_route),
        )
        .route(
            "/exec/{namespace}/{pod}/{uid}/{container}",
            on(upgrade, remote_command_route),
        )
        .route(
            "/attach/{namespace}/{pod}/{container}",
            on(upgrade, remote_command_route),
        )
        .route(
            "/attach/{namespace}/{pod}/{uid}/{container}",
            on(upgrade, remote_command_route),
        )
        .route(
            "/portForward/{namespace}/{pod}",
            on(upgrade, port_forward_route),
        )
        .route(
            "/portForward/{namespace}/{pod}/{uid}",
            on(upgrade, port_forward_route),
        )
        .with_state(state);
    match stats {
        Some(provider) => router.merge(super::stats::router(provider)),
        None => router,
    }
}

fn plain(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message.into(),
    )
        .into_response()
}

/// A runtime error as kubelet's `streaming.WriteError` answers it (the gRPC code's HTTP status).
fn runtime_error(e: &RuntimeError) -> Response {
    let status = match e {
        RuntimeError::NotFound { .. } => StatusCode::NOT_FOUND,
        RuntimeError::InvalidArgument(_) | RuntimeError::FailedPrecondition(_) => {
            StatusCode::BAD_REQUEST
        }
        RuntimeError::ResourceExhausted(_) => StatusCode::TOO_MANY_REQUESTS,
        RuntimeError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        RuntimeError::Unimplemented(_) => StatusCode::NOT_IMPLEMENTED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    plain(status, e.to_string())
}

async fn container_logs(
    State(s): State<ServerState>,
    Path((namespace, name, container)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    let now = k8s_openapi::jiff::Timestamp::now();
    let opts = match LogOptions::from_query(query.as_deref().unwrap_or(""), now) {
        Ok(o) => o,
        Err(e @ logs::LogsError::Invalid(_)) => {
            return plain(StatusCode::UNPROCESSABLE_ENTITY, e.to_string());
        }
        Err(e) => return plain(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let Some((pod, status)) = s.pod(&namespace, &name) else {
        return plain(
            StatusCode::NOT_FOUND,
            format!("pod {name:?} does not exist"),
        );
    };
    let spec = pod.spec.clone().unwrap_or_default();
    let known = spec
        .containers
        .iter()
        .map(|c| &c.name)
        .chain(spec.init_containers.iter().flatten().map(|c| &c.name))
        .chain(spec.ephemeral_containers.iter().flatten().map(|c| &c.name))
        .any(|n| *n == container);
    if !known {
        return plain(
            StatusCode::NOT_FOUND,
            format!("container {container:?} not found in pod {name:?}"),
        );
    }
    // the status the kubelet last wrote, else the pod's own
    let status = status.or(pod.status).unwrap_or_default();
    let id = match logs::log_container_id(&name, &status, &container, opts.previous) {
        Ok(id) => id,
        Err(e) => return plain(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let path = match s.runtime.container_status(&id, false).await {
        Ok(r) => r.status.map(|st| st.log_path).unwrap_or_default(),
        Err(e) => {
            return plain(
                StatusCode::BAD_REQUEST,
                format!("failed to get container status {id:?}: {e}"),
            );
        }
    };
    if path.is_empty() {
        return plain(
            StatusCode::BAD_REQUEST,
            format!("container {container:?} in pod {name:?} has no log file"),
        );
    }
    let path = PathBuf::from(path);
    // open now, so that a missing file is an error status rather than an empty body
    if let Err(e) = std::fs::metadata(&path) {
        return plain(
            StatusCode::BAD_REQUEST,
            format!("failed to open log file {:?}: {e}", path.display()),
        );
    }
    let (mut w, r) = tokio::io::duplex(64 * 1024);
    let runtime = s.runtime.clone();
    tokio::spawn(async move {
        let running = || {
            let (runtime, id) = (runtime.clone(), id.clone());
            async move {
                runtime
                    .container_status(&id, false)
                    .await
                    .ok()
                    .and_then(|r| r.status)
                    .is_some_and(|st| st.state == cri::ContainerState::ContainerRunning as i32)
            }
        };
        if let Err(e) = logs::read_logs(&path, &opts, &mut w, running).await {
            tracing::debug!(error = %e, "containerLogs");
        }
    });
    (
        [(header::CONTENT_TYPE, "text/plain")],
        Body::from_stream(tokio_util::io::ReaderStream::new(r)),
    )
        .into_response()
}

/// A request refused before anything ran: the status and kubelet's words.
type Refusal = (StatusCode, String);

/// kubelet's `remotecommand` options: at least one stream; a TTY has no stderr.
struct StreamOptions {
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
}

fn stream_options(pairs: &[(String, String)]) -> Result<StreamOptions, Refusal> {
    let flag = |n: &str| pairs.iter().any(|(k, v)| k == n && v == "1");
    let mut o = StreamOptions {
        stdin: flag("stdin"),
        stdout: flag("stdout"),
        stderr: flag("stderr"),
        tty: flag("tty"),
    };
    if o.tty && o.stderr {
        // kubelet: "access to exec with tty and stderr is not supported, bypassing stderr"
        o.stderr = false;
    }
    if !o.stdin && !o.stdout && !o.stderr {
        return Err((
            StatusCode::BAD_REQUEST,
            "you must specify at least 1 of stdin, stdout, stderr".into(),
        ));
    }
    Ok(o)
}

/// The pod of a streaming request, 404 when unknown (or its UID differs from the one asked).
fn streaming_pod(
    s: &ServerState,
    namespace: &str,
    name: &str,
    uid: Option<&str>,
) -> Result<(Pod, String), Refusal> {
    let Some((pod, _)) = s.pod(namespace, name) else {
        return Err((StatusCode::NOT_FOUND, "pod does not exist".into()));
    };
    let pod_uid = PodRef::of(&pod).uid;
    if uid.is_some_and(|u| !u.is_empty() && u != pod_uid) {
        return Err((StatusCode::NOT_FOUND, "pod not found".into()));
    }
    Ok((pod, pod_uid))
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONNECTION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        })
        && headers.contains_key(header::UPGRADE)
}

/// `/exec/...` and `/attach/...`, with or without the pod's UID.
async fn remote_command_route(
    State(s): State<ServerState>,
    Path(p): Path<HashMap<String, String>>,
    req: Request,
) -> Response {
    let kind = if req.uri().path().starts_with("/exec/") {
        "exec"
    } else {
        "attach"
    };
    let at = |k: &str| p.get(k).cloned().unwrap_or_default();
    let uid = p.get("uid").cloned();
    remote_command(
        s,
        kind,
        at("namespace"),
        at("pod"),
        uid,
        at("container"),
        req,
    )
    .await
}

async fn remote_command(
    s: ServerState,
    kind: &str,
    namespace: String,
    name: String,
    uid: Option<String>,
    container: String,
    req: Request,
) -> Response {
    let pairs = query_pairs(req.uri().query().unwrap_or(""));
    let opts = match stream_options(&pairs) {
        Ok(o) => o,
        Err((st, m)) => return plain(st, m),
    };
    let (pod, pod_uid) = match streaming_pod(&s, &namespace, &name, uid.as_deref()) {
        Ok(p) => p,
        Err((st, m)) => return plain(st, m),
    };
    let id = match s.running_container(&pod_uid, &container).await {
        Ok(id) => id,
        Err(e) if e.is_not_found() => {
            return plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("container not found ({container:?})"),
            );
        }
        Err(e) => return runtime_error(&e),
    };
    let url = if kind == "exec" {
        let cmd: Vec<String> = pairs
            .iter()
            .filter(|(k, _)| k == "command")
            .map(|(_, v)| v.clone())
            .collect();
        s.runtime
            .exec(cri::ExecRequest {
                container_id: id,
                cmd,
                tty: opts.tty,
                stdin: opts.stdin,
                stdout: opts.stdout,
                stderr: opts.stderr,
            })
            .await
            .map(|r| r.url)
    } else {
        // attach: the terminal is the container's own (kubelet takes tty from the spec)
        let tty = pod
            .spec
            .as_ref()
            .and_then(|sp| sp.containers.iter().find(|c| c.name == container))
            .and_then(|c| c.tty)
            .unwrap_or(false);
        s.runtime
            .attach(cri::AttachRequest {
                container_id: id,
                stdin: opts.stdin,
                tty,
                stdout: opts.stdout,
                stderr: opts.stderr && !tty,
            })
            .await
            .map(|r| r.url)
    };
    match url {
        Ok(url) => proxy_upgrade(req, &url).await,
        Err(e) => runtime_error(&e),
    }
}

/// `/portForward/...`, with or without the pod's UID.
async fn port_forward_route(
    State(s): State<ServerState>,
    Path(p): Path<HashMap<String, String>>,
    req: Request,
) -> Response {
    let at = |k: &str| p.get(k).cloned().unwrap_or_default();
    forward(s, at("namespace"), at("pod"), p.get("uid").cloned(), req).await
}

async fn forward(
    s: ServerState,
    namespace: String,
    name: String,
    uid: Option<String>,
    req: Request,
) -> Response {
    // WebSocket port forwarding names its ports in the query (kubelet's NewV4Options)
    let websocket = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let mut ports = Vec::new();
    if websocket {
        for (k, v) in query_pairs(req.uri().query().unwrap_or("")) {
            if k != "port" {
                continue;
            }
            match v.parse::<u16>() {
                Ok(0) => return plain(StatusCode::BAD_REQUEST, format!("port {v:?} must be > 0")),
                Ok(p) => ports.push(i32::from(p)),
                Err(e) => {
                    return plain(
                        StatusCode::BAD_REQUEST,
                        format!("unable to parse {v:?} as a port: {e}"),
                    );
                }
            }
        }
    }
    let (_, pod_uid) = match streaming_pod(&s, &namespace, &name, uid.as_deref()) {
        Ok(p) => p,
        Err((st, m)) => return plain(st, m),
    };
    let sandbox = match s.sandbox(&pod_uid).await {
        Ok(id) => id,
        Err(e) if e.is_not_found() => {
            return plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("pod not found ({name:?})"),
            );
        }
        Err(e) => return runtime_error(&e),
    };
    match s
        .runtime
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: sandbox,
            port: ports,
        })
        .await
    {
        Ok(r) => proxy_upgrade(req, &r.url).await,
        Err(e) => runtime_error(&e),
    }
}

/// Headers that are not passed to the streaming server (the connection's own).
const NOT_FORWARDED: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "authorization",
];

/// Proxy an upgrade request to the runtime's streaming URL (`http://`), as kubelet's
/// `UpgradeAwareHandler`: the client's method and headers go to the URL; the server's answer
/// comes back; on `101 Switching Protocols` both connections are joined.
async fn proxy_upgrade(mut req: Request, url: &str) -> Response {
    if !is_upgrade(req.headers()) {
        return plain(StatusCode::BAD_REQUEST, "Upgrade request required");
    }
    let bad_gateway = |m: String| plain(StatusCode::BAD_GATEWAY, m);
    let uri: http::Uri = match url.parse() {
        Ok(u) => u,
        Err(e) => return bad_gateway(format!("the runtime's streaming url {url:?}: {e}")),
    };
    if uri.scheme_str() != Some("http") {
        return bad_gateway(format!(
            "the runtime's streaming url {url:?}: only http:// streaming servers are supported"
        ));
    }
    let Some(authority) = uri.authority().map(|a| a.to_string()) else {
        return bad_gateway(format!("the runtime's streaming url {url:?} has no host"));
    };
    let tcp = match tokio::net::TcpStream::connect(&authority).await {
        Ok(t) => t,
        Err(e) => return bad_gateway(format!("dialing the streaming server {authority}: {e}")),
    };
    let _ = tcp.set_nodelay(true);
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await {
        Ok(c) => c,
        Err(e) => return bad_gateway(format!("the streaming server {authority}: {e}")),
    };
    tokio::spawn(conn.with_upgrades());
    let path = uri
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_else(|| "/".into());
    let method = if req.method() == Method::POST {
        Method::POST
    } else {
        Method::GET
    };
    let mut b = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, &authority);
    for (k, v) in req.headers() {
        if !NOT_FORWARDED.contains(&k.as_str()) {
            b = b.header(k, v);
        }
    }
    let breq = match b.body(Empty::<Bytes>::new()) {
        Ok(r) => r,
        Err(e) => return bad_gateway(e.to_string()),
    };
    let mut bresp = match sender.send_request(breq).await {
        Ok(r) => r,
        Err(e) => return bad_gateway(format!("the streaming server {authority}: {e}")),
    };
    let status = bresp.status();
    let mut resp = Response::builder().status(status);
    for (k, v) in bresp.headers() {
        resp = resp.header(k, v);
    }
    if status != StatusCode::SWITCHING_PROTOCOLS {
        let body = bresp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        return resp
            .body(Body::from(body))
            .unwrap_or_else(|e| bad_gateway(e.to_string()));
    }
    let client = hyper::upgrade::on(&mut req);
    let backend = hyper::upgrade::on(&mut bresp);
    tokio::spawn(async move {
        let (client, backend) = match tokio::try_join!(client, backend) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "streaming proxy: upgrade");
                return;
            }
        };
        let (mut c, mut b) = (TokioIo::new(client), TokioIo::new(backend));
        if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut b).await {
            tracing::debug!(error = %e, "streaming proxy: copy");
        }
    });
    resp.body(Body::empty())
        .unwrap_or_else(|e| bad_gateway(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_options_need_a_stream_and_drop_stderr_with_a_tty() {
        let q = |s: &str| stream_options(&query_pairs(s));
        assert!(q("command=ls").is_err());
        let o = q("command=sh&stdin=1&stdout=1&stderr=1&tty=1")
            .ok()
            .unwrap();
        assert!(o.stdin && o.stdout && o.tty && !o.stderr);
        assert_eq!(
            query_pairs("command=echo&command=a%20b+c&command=%2Fbin"),
            vec![
                ("command".into(), "echo".into()),
                ("command".into(), "a b c".into()),
                ("command".into(), "/bin".into())
            ]
        );
    }
}
