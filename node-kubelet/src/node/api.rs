//! The node and the API server: registration of the Node object, the heartbeat Lease in
//! `kube-node-lease` (renewed every 10 s, backing off when the API server is unreachable) and a
//! [`StatusSink`] that patches node and pod status.

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Node, Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use node_core::{PodRef, StatusError, StatusSink};

use tokio_util::sync::CancellationToken;

use super::status::{NodeHealth, NodeStatusError, NodeStatusReporter};

/// The namespace of node leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";

/// Timing of the node's conversation with the API server (kubelet's defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeApiConfig {
    /// The Lease's `leaseDurationSeconds` (40).
    pub lease_duration_seconds: i32,
    /// How often the Lease is renewed (10 s, a quarter of the duration).
    pub renew_interval: Duration,
    /// The first retry delay after a failure (200 ms), doubled per failure.
    pub backoff_initial: Duration,
    /// The longest retry delay (7 s).
    pub backoff_max: Duration,
}

impl Default for NodeApiConfig {
    fn default() -> Self {
        Self {
            lease_duration_seconds: 40,
            renew_interval: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(7),
        }
    }
}

/// Exponential back-off: `initial`, doubling up to `max`, reset on success.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// A back-off from `initial` to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            next: initial,
        }
    }
    /// The delay before the next retry (and doubles the one after).
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }
    /// Back to the initial delay.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

fn api_err(op: impl Into<String>) -> impl FnOnce(kube::Error) -> NodeStatusError {
    let op = op.into();
    move |source| NodeStatusError::Api { op, source }
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// Registers the Node object: creates it, or takes the existing one when it already exists
/// (a kubelet restart), as kubelet's `tryRegisterWithAPIServer`. Returns the server's object.
pub async fn register_node(client: &kube::Client, node: &Node) -> Result<Node, NodeStatusError> {
    let api: Api<Node> = Api::all(client.clone());
    let name = node.metadata.name.clone().unwrap_or_default();
    let mut body = node.clone();
    body.status = node.status.clone();
    match api.create(&PostParams::default(), &body).await {
        Ok(n) => Ok(n),
        Err(e) if is_status(&e, 409) => api
            .get(&name)
            .await
            .map_err(api_err(format!("get node {name}"))),
        Err(e) => Err(api_err(format!("create node {name}"))(e)),
    }
}

/// Registers the node, retrying with back-off until it succeeds or `shutdown` completes.
pub async fn register_node_with_backoff(
    client: &kube::Client,
    node: &Node,
    config: &NodeApiConfig,
    shutdown: impl Future<Output = ()>,
) -> Option<Node> {
    tokio::pin!(shutdown);
    let mut backoff = Backoff::new(config.backoff_initial, config.backoff_max);
    loop {
        match register_node(client, node).await {
            Ok(n) => return Some(n),
            Err(e) => tracing::warn!(error = %e, "node registration failed; retrying"),
        }
        tokio::select! {
            _ = &mut shutdown => return None,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// The node's heartbeat: the Lease `kube-node-lease/<node>`, held by the node and renewed.
pub struct NodeLease {
    client: kube::Client,
    node_name: String,
    config: NodeApiConfig,
    lease: Option<Lease>,
}

impl std::fmt::Debug for NodeLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeLease")
            .field("node_name", &self.node_name)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl NodeLease {
    /// A lease for `node_name`.
    pub fn new(client: kube::Client, node_name: impl Into<String>, config: NodeApiConfig) -> Self {
        Self {
            client,
            node_name: node_name.into(),
            config,
            lease: None,
        }
    }

    fn api(&self) -> Api<Lease> {
        Api::namespaced(self.client.clone(), LEASE_NAMESPACE)
    }

    fn spec(&self, now: Timestamp) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.node_name.clone()),
            lease_duration_seconds: Some(self.config.lease_duration_seconds),
            renew_time: Some(MicroTime(now)),
            ..Default::default()
        }
    }

    async fn owner(&self) -> Option<OwnerReference> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let node = nodes.get_opt(&self.node_name).await.ok().flatten()?;
        Some(OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: self.node_name.clone(),
            uid: node.metadata.uid?,
            ..Default::default()
        })
    }

    /// Renews the lease once: creates it the first time (owned by the Node object), then replaces
    /// it with a new `renewTime`; on a conflict or a vanished lease the next call starts over.
    pub async fn renew(&mut self) -> Result<Lease, NodeStatusError> {
        let api = self.api();
        let name = self.node_name.clone();
        let now = Timestamp::now();
        let current = match self.lease.take() {
            Some(l) => Some(l),
            None => api
                .get_opt(&name)
                .await
                .map_err(api_err(format!("get lease {LEASE_NAMESPACE}/{name}")))?,
        };
        let result = match current {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some(LEASE_NAMESPACE.into()),
                        owner_references: self.owner().await.map(|o| vec![o]),
                        ..Default::default()
                    },
                    spec: Some(self.spec(now)),
                };
                api.create(&PostParams::default(), &lease)
                    .await
                    .map_err(api_err(format!("create lease {LEASE_NAMESPACE}/{name}")))?
            }
            Some(mut lease) => {
                let mut spec = lease.spec.take().unwrap_or_default();
                spec.holder_identity = Some(name.clone());
                spec.lease_duration_seconds = Some(self.config.lease_duration_seconds);
                spec.renew_time = Some(MicroTime(now));
                lease.spec = Some(spec);
                api.replace(&name, &PostParams::default(), &lease)
                    .await
                    .map_err(api_err(format!("renew lease {LEASE_NAMESPACE}/{name}")))?
            }
        };
        self.lease = Some(result.clone());
        Ok(result)
    }

    /// Renews every `renew_interval` until `shutdown`; after a failure retries with back-off
    /// (200 ms doubling to 7 s) instead of hammering an unreachable API server.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut backoff = Backoff::new(self.config.backoff_initial, self.config.backoff_max);
        loop {
            let delay = match self.renew().await {
                Ok(_) => {
                    backoff.reset();
                    self.config.renew_interval
                }
                Err(e) => {
                    tracing::warn!(error = %e, "node lease not renewed");
                    backoff.next_delay()
                }
            };
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }
}

/// The node's whole conversation with the API server until `shutdown`: registers the Node
/// (built by `reporter`, retrying with back-off), then renews its Lease every
/// `config.renew_interval` and reports its status through `reporter` (on change, or every
/// `report_every`), both backing off while the API server is unreachable. This is what
/// [`NodeManager::api`](super::NodeManager::api) starts.
pub async fn run_with_api(
    client: kube::Client,
    config: NodeApiConfig,
    mut reporter: NodeStatusReporter,
    health: tokio::sync::watch::Receiver<NodeHealth>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(config.backoff_initial, config.backoff_max);
    let node = loop {
        let h = health.borrow().clone();
        match reporter.build_now(&h) {
            Ok(n) => break n,
            Err(e) => tracing::warn!(error = %e, "the Node object could not be built; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    };
    let name = node.metadata.name.clone().unwrap_or_default();
    let Some(registered) =
        register_node_with_backoff(&client, &node, &config, shutdown.cancelled()).await
    else {
        return;
    };
    tracing::info!(node = %name, uid = ?registered.metadata.uid, "node registered");
    let lease = NodeLease::new(client, &name, config);
    tokio::join!(
        lease.run(shutdown.cancelled()),
        reporter.run(health, shutdown.cancelled())
    );
}

/// A [`StatusSink`] to the API server: node status by a merge patch of `nodes/<name>/status`
/// (registering the node first when the server does not know it), pod status by a merge patch of
/// `pods/<name>/status`.
#[derive(Clone)]
pub struct ApiStatusSink {
    client: kube::Client,
}

impl std::fmt::Debug for ApiStatusSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiStatusSink").finish_non_exhaustive()
    }
}

impl ApiStatusSink {
    /// A sink over a kube client.
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }
}

fn sink_err(op: String) -> impl FnOnce(kube::Error) -> StatusError {
    move |e| StatusError::Api(format!("{op}: {e}"))
}

#[async_trait]
impl StatusSink for ApiStatusSink {
    async fn pod_status(&self, pod: &PodRef, status: &PodStatus) -> Result<(), StatusError> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        let patch = serde_json::json!({ "status": status });
        api.patch_status(&pod.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(sink_err(format!("patch pod status {pod}")))?;
        Ok(())
    }

    async fn pod_deleted(&self, _pod: &PodRef) -> Result<(), StatusError> {
        // the API server owns pod objects; their deletion is not the node's to report
        Ok(())
    }

    async fn node_status(&self, node: &Node) -> Result<(), StatusError> {
        let api: Api<Node> = Api::all(self.client.clone());
        let name = node.metadata.name.clone().unwrap_or_default();
        let patch = serde_json::json!({ "status": node.status });
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, 404) => {
                register_node(&self.client, node)
                    .await
                    .map_err(|e| StatusError::Api(e.to_string()))?;
                api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(sink_err(format!("patch node status {name}")))?;
                Ok(())
            }
            Err(e) => Err(sink_err(format!("patch node status {name}"))(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(200), Duration::from_secs(7));
        let d: Vec<u128> = (0..8).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(d, [200, 400, 800, 1600, 3200, 6400, 7000, 7000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(200));
    }
}
