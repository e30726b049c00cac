//! The kubelet's server of the node agent (kubelet's port 10250): `kubectl logs`, `exec`,
//! `attach` and `port-forward` as the API server proxies them, over TLS with client
//! certificates, beside the read-only endpoints. Off unless `--tls-cert-file` is given.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use node_core::RuntimeBackend;
use node_kubelet::node::eviction::parse_duration;
use node_kubelet::node::server::{KubeletServer, ServerConfig, ServerState, router};
use node_kubelet::{CancellationToken, PodStates};

/// The server's flags, with kubelet's names.
#[derive(Debug, clap::Args)]
pub struct ServerFlags {
    /// The kubelet server's port (with `--address`).
    #[arg(long, default_value = "10250")]
    pub port: u16,
    /// The kubelet server's address (with `--port`).
    #[arg(long, default_value = "0.0.0.0")]
    pub address: IpAddr,
    /// The kubelet server's address and port at once (instead of `--address` and `--port`).
    #[arg(long)]
    pub server_address: Option<SocketAddr>,
    /// The server's certificate (PEM): serves the kubelet's server, with
    /// `--tls-private-key-file` and `--client-ca-file`.
    #[arg(long)]
    pub tls_cert_file: Option<PathBuf>,
    /// The server certificate's private key (PEM).
    #[arg(long)]
    pub tls_private_key_file: Option<PathBuf>,
    /// The CA that signs the client certificates the server accepts (PEM); a client without one
    /// is answered 401.
    #[arg(long)]
    pub client_ca_file: Option<PathBuf>,
    /// How long an exec, attach or port-forward stream may be idle before it is closed (the
    /// native runtime's streaming server; `0s`: never).
    #[arg(long, default_value = "4h")]
    pub streaming_connection_idle_timeout: String,
}

impl ServerFlags {
    /// `--streaming-connection-idle-timeout`.
    pub fn idle_timeout(&self) -> anyhow::Result<Duration> {
        parse_duration(&self.streaming_connection_idle_timeout).map_err(|e| {
            anyhow::anyhow!(
                "--streaming-connection-idle-timeout {:?}: {e}",
                self.streaming_connection_idle_timeout
            )
        })
    }

    /// The server's configuration, `None` when it is off (no `--tls-cert-file`).
    pub fn config(&self) -> anyhow::Result<Option<ServerConfig>> {
        let Some(cert) = &self.tls_cert_file else {
            anyhow::ensure!(
                self.tls_private_key_file.is_none() && self.client_ca_file.is_none(),
                "--tls-private-key-file and --client-ca-file need --tls-cert-file"
            );
            return Ok(None);
        };
        let key = self
            .tls_private_key_file
            .clone()
            .context("--tls-cert-file needs --tls-private-key-file")?;
        let ca = self.client_ca_file.clone().context(
            "--tls-cert-file needs --client-ca-file (clients are authenticated by certificate)",
        )?;
        Ok(Some(ServerConfig {
            addr: self
                .server_address
                .unwrap_or(SocketAddr::new(self.address, self.port)),
            tls_cert_file: cert.clone(),
            tls_private_key_file: key,
            client_ca_file: ca,
            ..Default::default()
        }))
    }
}

/// Start the server when configured: the logs and streaming endpoints merged with
/// `read_only` (the read-only port's router).
pub async fn start(
    flags: &ServerFlags,
    states: PodStates,
    runtime: Arc<dyn RuntimeBackend>,
    read_only: axum::Router,
    token: CancellationToken,
) -> anyhow::Result<Option<KubeletServer>> {
    let Some(config) = flags.config()? else {
        return Ok(None);
    };
    let app = router(ServerState::new(states, runtime)).merge(read_only);
    let server = KubeletServer::start(&config, app, token)
        .await
        .with_context(|| format!("the kubelet server on {}", config.addr))?;
    tracing::info!(addr = %server.local_addr(), "kubelet server (logs, exec, attach, port-forward) started");
    Ok(Some(server))
}
