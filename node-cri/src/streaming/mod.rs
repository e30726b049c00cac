//! The Kubernetes streaming server for the CRI's Exec, Attach and PortForward (as the kubelet's
//! `pkg/kubelet/cri/streaming`): the CRI call returns a URL holding a one-time token, and the
//! client (kubectl through the API server, crictl) connects to it with the protocols kubectl
//! speaks.
//!
//! - [`StreamingServer`] binds an address ([`StreamingConfig::addr`], default `127.0.0.1:0`),
//!   issues tokens ([`StreamingServer::get_exec`] and friends) and serves `/exec/{token}`,
//!   `/attach/{token}` and `/portforward/{token}` over
//!   - SPDY/3.1 (`Upgrade: SPDY/3.1`, `X-Stream-Protocol-Version` `v4.channel.k8s.io`, v3, v2,
//!     `channel.k8s.io`; `portforward.k8s.io` for port forwarding), and
//!   - WebSocket (`Sec-WebSocket-Protocol` `v5.channel.k8s.io`, v4, v3, v2, `channel.k8s.io`;
//!     `v4.channel.k8s.io` for port forwarding, and `SPDY/3.1+portforward.k8s.io`: SPDY
//!     tunnelled in WebSocket binary messages).
//! - [`StreamingRuntime`] is what the server calls: the runtime's interactive exec, attach and
//!   port forwarding on plain async byte streams.
//! - [`client`] dials those URLs (SPDY or WebSocket) like kubectl does.
//!
//! The module `spdy` holds the SPDY/3.1 codec and session; `ws` the WebSocket channel
//! framing.

pub mod client;
mod idle;
mod portforward;
mod remotecommand;
mod server;
mod spdy;
mod ws;

use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use node_core::RuntimeError;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

pub use server::StreamingServer;

/// A readable byte stream handed to or from the runtime.
pub type Reader = Box<dyn AsyncRead + Send + Unpin>;
/// A writable byte stream handed to or from the runtime.
pub type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// A bidirectional byte stream (one forwarded connection).
pub trait Duplex: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Duplex for T {}

/// A terminal size, as the resize stream carries it (`{"Width":80,"Height":24}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TermSize {
    /// Columns.
    #[serde(rename = "Width")]
    pub width: u16,
    /// Rows.
    #[serde(rename = "Height")]
    pub height: u16,
}

/// The client's side of an exec or attach, as the runtime sees it.
pub struct StreamIo {
    /// What the client types (`None`: no stdin asked for). EOF when the client closes it.
    pub stdin: Option<Reader>,
    /// Where the process's stdout goes (with a TTY: the terminal's output).
    pub stdout: Option<Writer>,
    /// Where the process's stderr goes (never with a TTY).
    pub stderr: Option<Writer>,
    /// Run on a terminal.
    pub tty: bool,
    /// Terminal size changes (with a TTY).
    pub resize: Option<mpsc::Receiver<TermSize>>,
}

impl std::fmt::Debug for StreamIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamIo")
            .field("stdin", &self.stdin.is_some())
            .field("stdout", &self.stdout.is_some())
            .field("stderr", &self.stderr.is_some())
            .field("tty", &self.tty)
            .finish()
    }
}

/// What the streaming server calls: a runtime's interactive exec, attach and port forwarding.
///
/// The server drops the future when the client goes away: an implementation must then stop
/// what it started (kill the exec'd process, close the forwarded connection).
#[async_trait]
pub trait StreamingRuntime: Send + Sync {
    /// Run `cmd` in a running container with the client's streams; the exit code.
    async fn exec(
        &self,
        container_id: &str,
        cmd: Vec<String>,
        io: StreamIo,
    ) -> Result<i32, RuntimeError>;
    /// Connect the client's streams to a running container's stdio until the container exits
    /// (its exit code) or the client detaches.
    async fn attach(&self, container_id: &str, io: StreamIo) -> Result<i32, RuntimeError>;
    /// Connect `stream` to `port` on localhost inside the pod's network namespace, until
    /// either side closes.
    async fn port_forward(
        &self,
        pod_sandbox_id: &str,
        port: u16,
        stream: Box<dyn Duplex>,
    ) -> Result<(), RuntimeError>;
}

/// The configuration of a [`StreamingServer`].
#[derive(Debug, Clone)]
pub struct StreamingConfig {
    /// The address to listen on (default `127.0.0.1:0`: loopback, a free port). The kubelet
    /// (or the API server, for a remote runtime) must reach it.
    pub addr: SocketAddr,
    /// The base URL put in the returned URLs (`http://host:port`); `None`: from the bound
    /// address.
    pub base_url: Option<String>,
    /// How long a token stays valid (kubelet: 1 minute).
    pub token_ttl: Duration,
    /// How many tokens may wait to be used at once (kubelet: 1000).
    pub max_tokens: usize,
    /// How long the server waits for a client's streams after the upgrade (kubelet: 30 s).
    pub stream_creation_timeout: Duration,
    /// How long a streaming connection (exec, attach, port forwarding; SPDY or WebSocket) may
    /// carry no traffic either way before it is closed, its call cancelled as when the client
    /// hangs up (an exec's process is killed). kubelet's
    /// `--streaming-connection-idle-timeout`, containerd's `stream_idle_timeout`: 4 hours.
    /// Zero: never.
    pub stream_idle_timeout: Duration,
}

impl Default for StreamingConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            base_url: None,
            token_ttl: Duration::from_secs(60),
            max_tokens: 1000,
            stream_creation_timeout: Duration::from_secs(30),
            stream_idle_timeout: Duration::from_secs(4 * 60 * 60),
        }
    }
}

/// An error of the streaming server or client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamingError {
    /// The listening address could not be bound.
    #[error("streaming server: bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Too many tokens are waiting to be used.
    #[error("streaming server: {0} requests are already waiting for a client")]
    TooManyRequests(usize),
    /// The request is malformed.
    #[error("invalid streaming request: {0}")]
    InvalidRequest(String),
    /// The client could not connect or upgrade.
    #[error("streaming {url}: {message}")]
    Connect {
        /// The URL dialled.
        url: String,
        /// What went wrong (the server's status and body, or the I/O error).
        message: String,
    },
    /// The server answered with an HTTP status instead of upgrading.
    #[error("streaming {url}: HTTP {status}: {body}")]
    Status {
        /// The URL dialled.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The body the server sent.
        body: String,
    },
    /// The remote command failed (the status on the error stream).
    #[error("remote: {0}")]
    Remote(String),
    /// An I/O error on the streams.
    #[error("streaming i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl From<StreamingError> for RuntimeError {
    fn from(e: StreamingError) -> Self {
        match e {
            StreamingError::TooManyRequests(_) => RuntimeError::ResourceExhausted(e.to_string()),
            StreamingError::InvalidRequest(m) => RuntimeError::InvalidArgument(m),
            e => RuntimeError::Internal(e.to_string()),
        }
    }
}
