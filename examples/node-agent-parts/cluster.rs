//! The node agent's cluster mode: the parts that talk to a Kubernetes API server instead of a
//! manifest directory.
//!
//! - pods: those bound to this node (`spec.nodeName=<node>`), listed and watched once by
//!   node-kubelet's [`NodePodsWatch`], read by the kubelet's pod source and the node manager's
//!   mirror pods of static pods;
//! - pod status: merge patches of `pods/<name>/status` ([`ApiStatusSink`]);
//! - the node: the Node object registered (with back-off), its Lease in `kube-node-lease`
//!   renewed every 10 s, its status reported when it changes (the node manager);
//! - services: Services and EndpointSlices watched by node-proxy's `ApiServerSource` (the
//!   endpointslice controller computes endpoints in a cluster; the agent computes none).
//!
//! Shared by `examples/node-agent.rs` and the fake-API-server test `tests/agent_cluster.rs`.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use node_core::{PodSource, StatusSink};
use node_kubelet::NodePodsWatch;
use node_kubelet::node::api::ApiStatusSink;
use node_kubelet::node::mirror::MirrorPods;

/// A connection to the cluster, for one node.
#[derive(Clone)]
pub struct Cluster {
    client: kube::Client,
    pods: NodePodsWatch,
}

impl Cluster {
    /// The cluster of `kubeconfig` (its current context); without one, the in-cluster config
    /// (service account) or the default kubeconfig (`$KUBECONFIG`, `~/.kube/config`).
    pub async fn connect(kubeconfig: Option<&Path>, node_name: &str) -> anyhow::Result<Self> {
        let config = match kubeconfig {
            Some(path) => {
                let kc = kube::config::Kubeconfig::read_from(path)
                    .with_context(|| format!("--kubeconfig {}", path.display()))?;
                kube::Config::from_custom_kubeconfig(kc, &Default::default())
                    .await
                    .with_context(|| format!("--kubeconfig {}", path.display()))?
            }
            None => kube::Config::infer().await.context(
                "no kube config: not in a cluster and no default kubeconfig ($KUBECONFIG, \
                 ~/.kube/config); pass --kubeconfig PATH",
            )?,
        };
        let server = config.cluster_url.clone();
        let client = kube::Client::try_from(config)
            .with_context(|| format!("a client for the API server {server}"))?;
        tracing::info!(%server, node = node_name, "cluster mode");
        Ok(Self::new(client, node_name))
    }

    /// Over an existing client.
    pub fn new(client: kube::Client, node_name: &str) -> Self {
        Self {
            pods: NodePodsWatch::new(client.clone(), node_name),
            client,
        }
    }

    /// The API client (the node manager's reporting and mirror pods, configMaps and secrets).
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// The pods bound to this node (mirror pods left out), from the node's one pod watch.
    pub fn pod_source(&self) -> Arc<dyn PodSource> {
        Arc::new(self.pods.source())
    }

    /// The mirror pods of static pods, read from the same watch as [`pod_source`](Self::pod_source).
    pub fn mirror_pods(&self) -> MirrorPods {
        self.pods.mirror_pods()
    }

    /// Pod (and node) status to the API server.
    pub fn status_sink(&self) -> Arc<dyn StatusSink> {
        Arc::new(ApiStatusSink::new(self.client.clone()))
    }

    /// Services and EndpointSlices from the API server.
    pub fn service_source(&self) -> node_proxy::ApiServerSource {
        node_proxy::ApiServerSource::new(self.client.clone())
    }
}
