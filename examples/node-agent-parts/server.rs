//! The kubelet's server of the node agent (kubelet's port 10250): `kubectl logs`, `exec`,
//! `attach` and `port-forward` as the API server proxies them, over TLS, beside the read-only
//! endpoints. Off unless `--tls-cert-file` is given. Every request is authenticated (a client
//! certificate from the client CA; a bearer token reviewed by the API server with
//! `--authentication-token-webhook`; else `system:anonymous` with `--anonymous-auth`) and
//! authorized (`--authorization-mode`): `Webhook` asks the API server with a
//! SubjectAccessReview (the default in cluster mode), `AlwaysAllow` lets every authenticated
//! client in (the default without an API server).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use node_core::RuntimeBackend;
use node_kubelet::node::authn::{AuthenticationConfig, Authenticator};
use node_kubelet::node::authz::{AuthorizationConfig, AuthorizationMode, Authorizer};
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
    /// How the kubelet server authorizes requests: `Webhook` (a SubjectAccessReview to the API
    /// server per user, verb and `nodes` subresource) or `AlwaysAllow`. Default: `Webhook` when
    /// an API server is configured (--kubeconfig, --cluster), `AlwaysAllow` standalone.
    #[arg(long, value_parser = ["Webhook", "AlwaysAllow"])]
    pub authorization_mode: Option<String>,
    /// How long the kubelet server reuses an allowed SubjectAccessReview.
    #[arg(long, default_value = "5m")]
    pub authorization_webhook_cache_authorized_ttl: String,
    /// How long the kubelet server reuses a denied SubjectAccessReview.
    #[arg(long, default_value = "30s")]
    pub authorization_webhook_cache_unauthorized_ttl: String,
    /// Serve requests without a client certificate or bearer token as `system:anonymous`
    /// (group `system:unauthenticated`), authorized as such (`--anonymous-auth=false`: 401).
    /// Default: true (kubelet's), but false with `AlwaysAllow` authorization, where anonymous
    /// clients would be allowed everything (the API server refuses that pair too).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub anonymous_auth: Option<bool>,
    /// Authenticate bearer tokens by a TokenReview to the API server (needs --kubeconfig or
    /// --cluster); without it a bearer token is not looked at.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", action = clap::ArgAction::Set)]
    pub authentication_token_webhook: bool,
    /// How long the kubelet server reuses a TokenReview's answer, authenticated or not.
    #[arg(long, default_value = "2m")]
    pub authentication_token_webhook_cache_ttl: String,
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

    /// The authorization: `--authorization-mode` (by default `Webhook` with an API server,
    /// `AlwaysAllow` without) and the webhook's cache.
    pub fn authorization(
        &self,
        api_server: bool,
        node_name: &str,
    ) -> anyhow::Result<AuthorizationConfig> {
        let mode = match &self.authorization_mode {
            Some(m) => m.parse::<AuthorizationMode>()?,
            None if api_server => AuthorizationMode::Webhook,
            None => AuthorizationMode::AlwaysAllow,
        };
        anyhow::ensure!(
            mode != AuthorizationMode::Webhook || api_server,
            "--authorization-mode Webhook needs an API server (--kubeconfig or --cluster)"
        );
        let ttl = |flag: &str, v: &str| {
            parse_duration(v).map_err(|e| anyhow::anyhow!("--{flag} {v:?}: {e}"))
        };
        Ok(AuthorizationConfig {
            mode,
            node_name: node_name.to_string(),
            cache_authorized_ttl: ttl(
                "authorization-webhook-cache-authorized-ttl",
                &self.authorization_webhook_cache_authorized_ttl,
            )?,
            cache_unauthorized_ttl: ttl(
                "authorization-webhook-cache-unauthorized-ttl",
                &self.authorization_webhook_cache_unauthorized_ttl,
            )?,
            ..Default::default()
        })
    }

    /// The authentication: `--anonymous-auth` (by default on, off with `AlwaysAllow`; the
    /// server warns when both are on), `--authentication-token-webhook` and its cache.
    pub fn authentication(
        &self,
        api_server: bool,
        mode: AuthorizationMode,
    ) -> anyhow::Result<AuthenticationConfig> {
        anyhow::ensure!(
            !self.authentication_token_webhook || api_server,
            "--authentication-token-webhook needs an API server (--kubeconfig or --cluster)"
        );
        let anonymous = self
            .anonymous_auth
            .unwrap_or(mode != AuthorizationMode::AlwaysAllow);
        let ttl = &self.authentication_token_webhook_cache_ttl;
        Ok(AuthenticationConfig {
            anonymous,
            webhook: self.authentication_token_webhook,
            webhook_cache_ttl: parse_duration(ttl).map_err(|e| {
                anyhow::anyhow!("--authentication-token-webhook-cache-ttl {ttl:?}: {e}")
            })?,
            ..Default::default()
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

/// The node the server runs on and the API server that authorizes its requests (none
/// standalone).
pub struct Authority<'a> {
    /// The node's name.
    pub node_name: &'a str,
    /// The API server's client (cluster mode).
    pub client: Option<kube::Client>,
}

/// Start the server when configured: the logs and streaming endpoints merged with
/// `read_only` (the read-only port's router), authorized as `--authorization-mode` says.
pub async fn start(
    flags: &ServerFlags,
    states: PodStates,
    runtime: Arc<dyn RuntimeBackend>,
    read_only: axum::Router,
    authority: Authority<'_>,
    token: CancellationToken,
) -> anyhow::Result<Option<KubeletServer>> {
    let Some(config) = flags.config()? else {
        return Ok(None);
    };
    let authz = flags.authorization(authority.client.is_some(), authority.node_name)?;
    let mode = authz.mode;
    let authn = flags.authentication(authority.client.is_some(), mode)?;
    let (anonymous, token_webhook) = (authn.anonymous, authn.webhook);
    let authenticator = Authenticator::new(authn, authority.client.clone())?;
    let authorizer = Authorizer::new(authz, authority.client)?;
    let app = router(ServerState::new(states, runtime)).merge(read_only);
    let server = KubeletServer::start(&config, app, authenticator, authorizer, token)
        .await
        .with_context(|| format!("the kubelet server on {}", config.addr))?;
    tracing::info!(addr = %server.local_addr(), authorization = %mode, anonymous, token_webhook, "kubelet server (logs, exec, attach, port-forward) started");
    Ok(Some(server))
}
