//! The HTTP side of the streaming server: one-time tokens, routing, the SPDY and WebSocket
//! upgrades and protocol negotiation.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use node_core::cri;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::idle::IdleIo;
use super::remotecommand::{self, Opts, Proto, Target};
use super::{StreamingConfig, StreamingError, StreamingRuntime};

/// A request waiting for its client.
#[derive(Debug, Clone)]
pub(crate) enum Pending {
    Exec(cri::ExecRequest),
    Attach(cri::AttachRequest),
    PortForward(cri::PortForwardRequest),
}

/// What the connection handlers share.
pub(crate) struct Shared {
    pub(crate) cfg: StreamingConfig,
    pub(crate) runtime: Arc<dyn StreamingRuntime>,
    tokens: Mutex<HashMap<String, (Pending, Instant)>>,
    active: AtomicUsize,
}

/// Counts a session while it runs.
pub(crate) struct Active(Arc<Shared>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The streaming server: hands out URLs for Exec, Attach and PortForward requests and serves
/// them over SPDY/3.1 and WebSocket with the Kubernetes channel protocols.
///
/// ```no_run
/// # use std::sync::Arc;
/// # use node_cri::streaming::{StreamingConfig, StreamingRuntime, StreamingServer};
/// # async fn f(runtime: Arc<dyn StreamingRuntime>) -> Result<(), Box<dyn std::error::Error>> {
/// let server = StreamingServer::start(StreamingConfig::default(), runtime).await?;
/// let resp = server.get_exec(&node_core::cri::ExecRequest {
///     container_id: "c1".into(),
///     cmd: vec!["sh".into()],
///     stdin: true,
///     stdout: true,
///     tty: true,
///     ..Default::default()
/// })?;
/// println!("kubectl would dial {}", resp.url);
/// # Ok(()) }
/// ```
pub struct StreamingServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    base: String,
    accept: JoinHandle<()>,
}

impl std::fmt::Debug for StreamingServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamingServer")
            .field("addr", &self.addr)
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl Drop for StreamingServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

fn new_token() -> String {
    use base64::Engine;
    let b: [u8; 16] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

impl StreamingServer {
    /// Bind `cfg.addr` and serve on the current tokio runtime until dropped.
    pub async fn start(
        cfg: StreamingConfig,
        runtime: Arc<dyn StreamingRuntime>,
    ) -> Result<Self, StreamingError> {
        let listener =
            TcpListener::bind(cfg.addr)
                .await
                .map_err(|source| StreamingError::Bind {
                    addr: cfg.addr,
                    source,
                })?;
        let addr = listener
            .local_addr()
            .map_err(|source| StreamingError::Bind {
                addr: cfg.addr,
                source,
            })?;
        let base = cfg
            .base_url
            .clone()
            .map(|b| b.trim_end_matches('/').to_string())
            .unwrap_or_else(|| format!("http://{addr}"));
        let shared = Arc::new(Shared {
            cfg,
            runtime,
            tokens: Mutex::new(HashMap::new()),
            active: AtomicUsize::new(0),
        });
        let s = shared.clone();
        let accept = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "streaming server: accept");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(s.clone(), req));
                    if let Err(e) = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .with_upgrades()
                        .await
                    {
                        tracing::debug!(%peer, error = %e, "streaming server: connection");
                    }
                });
            }
        });
        tracing::info!(%addr, "streaming server listening");
        Ok(Self {
            shared,
            addr,
            base,
            accept,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base of the URLs handed out (`http://127.0.0.1:PORT`).
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Sessions (upgraded connections) running now.
    pub fn active_sessions(&self) -> usize {
        self.shared.active.load(Ordering::SeqCst)
    }

    /// Tokens handed out and not yet used nor expired.
    pub fn pending_tokens(&self) -> usize {
        let now = Instant::now();
        let mut t = self.shared.tokens.lock().unwrap_or_else(|e| e.into_inner());
        t.retain(|_, (_, exp)| *exp > now);
        t.len()
    }

    fn issue(&self, kind: &str, p: Pending) -> Result<String, StreamingError> {
        let now = Instant::now();
        let mut t = self.shared.tokens.lock().unwrap_or_else(|e| e.into_inner());
        t.retain(|_, (_, exp)| *exp > now);
        if t.len() >= self.shared.cfg.max_tokens {
            return Err(StreamingError::TooManyRequests(t.len()));
        }
        let token = new_token();
        t.insert(token.clone(), (p, now + self.shared.cfg.token_ttl));
        Ok(format!("{}/{kind}/{token}", self.base))
    }

    /// A URL for an exec (kubelet's validation: one of stdin/stdout/stderr, not tty with
    /// stderr, a command).
    pub fn get_exec(&self, req: &cri::ExecRequest) -> Result<cri::ExecResponse, StreamingError> {
        validate_streams(
            "Exec",
            &req.container_id,
            req.stdin,
            req.stdout,
            req.stderr,
            req.tty,
        )?;
        if req.cmd.is_empty() {
            return Err(StreamingError::InvalidRequest(format!(
                "Exec in {}: cmd is empty",
                req.container_id
            )));
        }
        Ok(cri::ExecResponse {
            url: self.issue("exec", Pending::Exec(req.clone()))?,
        })
    }

    /// A URL for an attach.
    pub fn get_attach(
        &self,
        req: &cri::AttachRequest,
    ) -> Result<cri::AttachResponse, StreamingError> {
        validate_streams(
            "Attach",
            &req.container_id,
            req.stdin,
            req.stdout,
            req.stderr,
            req.tty,
        )?;
        Ok(cri::AttachResponse {
            url: self.issue("attach", Pending::Attach(req.clone()))?,
        })
    }

    /// A URL for a port forward.
    pub fn get_port_forward(
        &self,
        req: &cri::PortForwardRequest,
    ) -> Result<cri::PortForwardResponse, StreamingError> {
        if req.pod_sandbox_id.is_empty() {
            return Err(StreamingError::InvalidRequest(
                "PortForward: pod_sandbox_id is required".into(),
            ));
        }
        if let Some(p) = req.port.iter().find(|p| !(1..=65535).contains(*p)) {
            return Err(StreamingError::InvalidRequest(format!(
                "PortForward to {}: port {p} is out of range",
                req.pod_sandbox_id
            )));
        }
        Ok(cri::PortForwardResponse {
            url: self.issue("portforward", Pending::PortForward(req.clone()))?,
        })
    }
}

fn validate_streams(
    call: &str,
    id: &str,
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
) -> Result<(), StreamingError> {
    if id.is_empty() {
        return Err(StreamingError::InvalidRequest(format!(
            "{call}: container_id is required"
        )));
    }
    if tty && stderr {
        return Err(StreamingError::InvalidRequest(format!(
            "{call} in {id}: tty and stderr cannot both be true"
        )));
    }
    if !stdin && !stdout && !stderr {
        return Err(StreamingError::InvalidRequest(format!(
            "{call} in {id}: one of stdin, stdout, or stderr must be set"
        )));
    }
    Ok(())
}

type Resp = Response<Full<Bytes>>;

fn plain(status: StatusCode, body: impl Into<String>) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body.into())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Every value of a header, comma-separated lists split.
fn header_values(req: &Request<Incoming>, name: &str) -> Vec<String> {
    req.headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect()
}

/// The first protocol the client offers that we support (the client's preference order).
fn negotiate(offered: &[String], supported: &[&'static str]) -> Option<&'static str> {
    offered
        .iter()
        .find_map(|o| supported.iter().find(|s| **s == o.as_str()).copied())
}

const SPDY_EXEC: &[&str] = &[
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];
const WS_EXEC: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];
const SPDY_PF: &[&str] = &["portforward.k8s.io"];
const WS_PF: &[&str] = &[
    "SPDY/3.1+portforward.k8s.io",
    "v4.channel.k8s.io",
    "channel.k8s.io",
];

enum Transport {
    Spdy,
    WebSocket,
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Resp, Infallible> {
    Ok(match route(shared, req) {
        Ok(r) => r,
        Err(r) => r,
    })
}

// both outcomes are responses (the error one is sent as is): no point boxing it
#[allow(clippy::result_large_err)]
fn route(shared: Arc<Shared>, mut req: Request<Incoming>) -> Result<Resp, Resp> {
    if req.method() != hyper::Method::GET && req.method() != hyper::Method::POST {
        return Err(plain(StatusCode::METHOD_NOT_ALLOWED, "use GET or POST"));
    }
    let path = req.uri().path().trim_matches('/').to_string();
    let (kind, token) = path
        .split_once('/')
        .ok_or_else(|| plain(StatusCode::NOT_FOUND, format!("no such endpoint /{path}")))?;
    if !matches!(kind, "exec" | "attach" | "portforward") {
        return Err(plain(
            StatusCode::NOT_FOUND,
            format!("no such endpoint /{kind}"),
        ));
    }
    let pending = {
        let mut t = shared.tokens.lock().unwrap_or_else(|e| e.into_inner());
        t.remove(token).filter(|(_, exp)| *exp > Instant::now())
    };
    let pending = match (kind, pending) {
        ("exec", Some((p @ Pending::Exec(_), _)))
        | ("attach", Some((p @ Pending::Attach(_), _)))
        | ("portforward", Some((p @ Pending::PortForward(_), _))) => p,
        _ => {
            return Err(plain(
                StatusCode::NOT_FOUND,
                format!("{kind}: token {token:?} is unknown, used or expired"),
            ));
        }
    };
    let upgrade = req
        .headers()
        .get(hyper::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let transport = if upgrade == "websocket" {
        Transport::WebSocket
    } else if upgrade == "spdy/3.1" {
        Transport::Spdy
    } else {
        return Err(plain(
            StatusCode::BAD_REQUEST,
            format!("{kind}: expected an upgrade to SPDY/3.1 or websocket, got {upgrade:?}"),
        ));
    };
    let is_pf = matches!(pending, Pending::PortForward(_));
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("Upgrade"),
    );
    let protocol = match transport {
        Transport::Spdy => {
            let offered = header_values(&req, "x-stream-protocol-version");
            let supported = if is_pf { SPDY_PF } else { SPDY_EXEC };
            // no header: the legacy protocol (kubelet's handshake does the same)
            let p = if offered.is_empty() {
                if is_pf { SPDY_PF[0] } else { "channel.k8s.io" }
            } else {
                negotiate(&offered, supported).ok_or_else(|| {
                    let mut r = plain(
                        StatusCode::FORBIDDEN,
                        format!(
                            "{kind}: none of the stream protocols {offered:?} is supported ({supported:?})"
                        ),
                    );
                    for s in supported {
                        r.headers_mut().append(
                            "x-accepted-stream-protocol-versions",
                            hyper::header::HeaderValue::from_static(s),
                        );
                    }
                    r
                })?
            };
            h.insert(
                hyper::header::UPGRADE,
                hyper::header::HeaderValue::from_static("SPDY/3.1"),
            );
            h.insert(
                "x-stream-protocol-version",
                hyper::header::HeaderValue::from_static(p),
            );
            p
        }
        Transport::WebSocket => {
            let key = req
                .headers()
                .get("sec-websocket-key")
                .map(|k| k.as_bytes().to_vec())
                .ok_or_else(|| {
                    plain(
                        StatusCode::BAD_REQUEST,
                        format!("{kind}: websocket upgrade without Sec-WebSocket-Key"),
                    )
                })?;
            let offered = header_values(&req, "sec-websocket-protocol");
            let supported = if is_pf { WS_PF } else { WS_EXEC };
            let p = if offered.is_empty() {
                "channel.k8s.io"
            } else {
                negotiate(&offered, supported).ok_or_else(|| {
                    plain(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "{kind}: none of the websocket protocols {offered:?} is supported ({supported:?})"
                        ),
                    )
                })?
            };
            let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
            h.insert(
                hyper::header::UPGRADE,
                hyper::header::HeaderValue::from_static("websocket"),
            );
            if let Ok(v) = hyper::header::HeaderValue::from_str(&accept) {
                h.insert("sec-websocket-accept", v);
            }
            if !offered.is_empty() {
                h.insert(
                    "sec-websocket-protocol",
                    hyper::header::HeaderValue::from_static(p),
                );
            }
            p
        }
    };
    // websocket port forwarding names its ports in the query (?port=80&port=443)
    let query_ports: Vec<String> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.strip_prefix("port="))
        .map(str::to_string)
        .collect();
    let mut ports: Vec<u16> = Vec::new();
    for p in &query_ports {
        ports.push(p.parse().ok().filter(|p| *p > 0).ok_or_else(|| {
            plain(
                StatusCode::BAD_REQUEST,
                format!("portforward: invalid port {p:?} in the query"),
            )
        })?);
    }
    shared.active.fetch_add(1, Ordering::SeqCst);
    let active = Active(shared.clone());
    tokio::spawn(async move {
        let upgraded = match hyper::upgrade::on(&mut req).await {
            Ok(u) => TokioIo::new(u),
            Err(e) => {
                tracing::debug!(error = %e, "streaming: upgrade failed");
                return;
            }
        };
        let timeout = shared.cfg.stream_idle_timeout;
        let (io, activity) = IdleIo::new(upgraded);
        let session = serve(shared, pending, transport, protocol, ports, io);
        if timeout.is_zero() {
            session.await;
        } else {
            tokio::select! {
                _ = session => {}
                _ = activity.expired(timeout) => {
                    // the session's call is dropped (an exec's process killed as on hang-up);
                    // the connection's reads and writes fail from now on
                    tracing::info!(?timeout, "streaming: the connection was idle too long, closed");
                }
            }
        }
        drop(active);
    });
    Ok(resp)
}

async fn serve(
    shared: Arc<Shared>,
    pending: Pending,
    transport: Transport,
    protocol: &'static str,
    query_ports: Vec<u16>,
    io: IdleIo<TokioIo<hyper::upgrade::Upgraded>>,
) {
    let (target, opts) = match pending {
        Pending::PortForward(pf) => {
            match transport {
                Transport::Spdy => {
                    super::portforward::serve_spdy(shared, pf.pod_sandbox_id, Box::new(io)).await
                }
                Transport::WebSocket => {
                    let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
                    if protocol.starts_with("SPDY/3.1") {
                        let tunnel = super::ws::tunnel(ws);
                        super::portforward::serve_spdy(shared, pf.pod_sandbox_id, Box::new(tunnel))
                            .await
                    } else {
                        let ports = if query_ports.is_empty() {
                            pf.port.iter().map(|p| *p as u16).collect()
                        } else {
                            query_ports
                        };
                        super::portforward::serve_ws(shared, pf.pod_sandbox_id, ports, ws).await
                    }
                }
            }
            return;
        }
        Pending::Exec(e) => (
            Target::Exec {
                container_id: e.container_id,
                cmd: e.cmd,
            },
            Opts {
                stdin: e.stdin,
                stdout: e.stdout,
                stderr: e.stderr,
                tty: e.tty,
            },
        ),
        Pending::Attach(a) => (
            Target::Attach {
                container_id: a.container_id,
            },
            Opts {
                stdin: a.stdin,
                stdout: a.stdout,
                stderr: a.stderr,
                tty: a.tty,
            },
        ),
    };
    let proto = Proto::parse(protocol);
    match transport {
        Transport::Spdy => {
            remotecommand::serve_spdy(shared, proto, target, opts, Box::new(io)).await
        }
        Transport::WebSocket => {
            let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
            remotecommand::serve_ws(shared, proto, target, opts, ws).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_follows_the_clients_order() {
        let offered = vec!["v5.channel.k8s.io".to_string(), "v4.channel.k8s.io".into()];
        assert_eq!(negotiate(&offered, SPDY_EXEC), Some("v4.channel.k8s.io"));
        assert_eq!(negotiate(&offered, WS_EXEC), Some("v5.channel.k8s.io"));
        assert_eq!(negotiate(&["x".into()], WS_EXEC), None);
    }

    #[test]
    fn bad_stream_combinations_are_refused() {
        assert!(validate_streams("Exec", "c", false, true, true, true).is_err());
        assert!(validate_streams("Exec", "c", false, false, false, false).is_err());
        assert!(validate_streams("Exec", "c", true, true, false, true).is_ok());
    }
}
