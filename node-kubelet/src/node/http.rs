//! The node's HTTP endpoints as an axum router: `/healthz`, `/pods` (the pods and their status,
//! as kubelet's read-only `/pods`: a v1 PodList), `/node` (the Node object the node manager
//! last built: standalone mode's node status) and `/metrics` (Prometheus text from the
//! [`NodeMetrics`] registry that the pod workers, probes and eviction manager update); with
//! [`HttpState::stats`] also `/stats/summary` and `/metrics/resource` ([`super::stats`]).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use k8s_openapi::api::core::v1::Pod;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of the pod worker duration: `operation` = `create`, `update`, `sync`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    /// The operation.
    pub operation: String,
}

/// Labels of the running containers gauge: `container_state` = `running`, `exited`, `created`,
/// `unknown`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ContainerStateLabels {
    /// The state.
    pub container_state: String,
}

/// Labels of the evictions counter: the signal (`memory.available`...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EvictionLabels {
    /// The eviction signal.
    pub eviction_signal: String,
}

/// Labels of the probe results counter, as kubelet's `prober_probe_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeLabels {
    /// `Liveness`, `Readiness` or `Startup`.
    pub probe_type: String,
    /// `successful`, `failed` or `unknown`.
    pub result: String,
    /// The container.
    pub container: String,
    /// The pod.
    pub pod: String,
    /// The pod's namespace.
    pub namespace: String,
}

fn duration_histogram() -> Histogram {
    // 5 ms .. ~2.7 min
    Histogram::new(exponential_buckets(0.005, 2.0, 16))
}

/// The node's metric families, named as kubelet names them. Clone the handles freely: updates
/// through any clone show up in `/metrics`.
#[derive(Debug, Clone)]
pub struct NodeMetrics {
    /// `kubelet_pod_start_duration_seconds`: from the pod first seen to all its containers
    /// running.
    pub pod_start_duration: Histogram,
    /// `kubelet_pod_worker_duration_seconds{operation}`: one sync of a pod worker.
    pub pod_worker_duration: Family<OperationLabels, Histogram>,
    /// `kubelet_running_pods`: pods with a running sandbox.
    pub running_pods: Gauge,
    /// `kubelet_running_containers{container_state}`.
    pub running_containers: Family<ContainerStateLabels, Gauge>,
    /// `kubelet_evictions_total{eviction_signal}`.
    pub evictions: Family<EvictionLabels, Counter>,
    /// `prober_probe_total{probe_type,result,container,pod,namespace}`.
    pub probe_results: Family<ProbeLabels, Counter>,
}

impl Default for NodeMetrics {
    fn default() -> Self {
        Self {
            pod_start_duration: duration_histogram(),
            pod_worker_duration: Family::new_with_constructor(duration_histogram),
            running_pods: Gauge::default(),
            running_containers: Family::default(),
            evictions: Family::default(),
            probe_results: Family::default(),
        }
    }
}

impl NodeMetrics {
    /// Registers every family in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "kubelet_pod_start_duration_seconds",
            "Duration in seconds from the kubelet seeing a pod for the first time to the pod starting to run",
            self.pod_start_duration.clone(),
        );
        registry.register(
            "kubelet_pod_worker_duration_seconds",
            "Duration in seconds to sync a single pod, broken down by operation type",
            self.pod_worker_duration.clone(),
        );
        registry.register(
            "kubelet_running_pods",
            "Number of pods that have a running pod sandbox",
            self.running_pods.clone(),
        );
        registry.register(
            "kubelet_running_containers",
            "Number of containers currently running",
            self.running_containers.clone(),
        );
        registry.register(
            "kubelet_evictions",
            "Cumulative number of pod evictions by eviction signal",
            self.evictions.clone(),
        );
        registry.register(
            "prober_probe",
            "Cumulative number of a liveness, readiness or startup probe for a container by result",
            self.probe_results.clone(),
        );
    }

    /// Counts one probe result.
    pub fn probe(&self, probe_type: &str, result: &str, pod: &node_core::PodRef, container: &str) {
        self.probe_results
            .get_or_create(&ProbeLabels {
                probe_type: probe_type.into(),
                result: result.into(),
                container: container.into(),
                pod: pod.name.clone(),
                namespace: pod.namespace.clone(),
            })
            .inc();
    }

    /// Counts one eviction.
    pub fn evicted(&self, signal: &str) {
        self.evictions
            .get_or_create(&EvictionLabels {
                eviction_signal: signal.into(),
            })
            .inc();
    }
}

/// Gives `/pods` the node's pods with their current status.
pub trait PodsProvider: Send + Sync {
    /// The pods, each with its latest status.
    fn pods(&self) -> Vec<Pod>;
}

/// Tells `/healthz` whether the agent is healthy (`Err` with the reason when not).
pub trait HealthCheck: Send + Sync {
    /// Healthy or why not.
    fn check(&self) -> Result<(), String>;
}

/// What the router serves.
#[derive(Clone)]
pub struct HttpState {
    pods: Arc<dyn PodsProvider>,
    health: Option<Arc<dyn HealthCheck>>,
    node: Option<super::status::LatestNode>,
    registry: Arc<Registry>,
    stats: Option<super::stats::StatsProvider>,
}

impl std::fmt::Debug for HttpState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpState").finish_non_exhaustive()
    }
}

impl HttpState {
    /// State with the node's metrics registered in a fresh registry.
    pub fn new(pods: Arc<dyn PodsProvider>, metrics: &NodeMetrics) -> Self {
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        Self::with_registry(pods, registry)
    }

    /// State over a registry the integrator filled (the node's metrics and their own).
    pub fn with_registry(pods: Arc<dyn PodsProvider>, registry: Registry) -> Self {
        Self {
            pods,
            health: None,
            node: None,
            registry: Arc::new(registry),
            stats: None,
        }
    }

    /// `/healthz` asks this check (default: always healthy while the server answers).
    #[must_use]
    pub fn health(mut self, check: Arc<dyn HealthCheck>) -> Self {
        self.health = Some(check);
        self
    }
}

impl HttpState {
    /// `/node` serves this Node object ([`NodeManager::latest_node`](super::NodeManager::latest_node));
    /// without it `/node` answers 404.
    #[must_use]
    pub fn node(mut self, latest: super::status::LatestNode) -> Self {
        self.node = Some(latest);
        self
    }

    /// Serve `/stats/summary` and `/metrics/resource` from this provider, as kubelet's
    /// read-only port does ([`super::stats::router`]).
    #[must_use]
    pub fn stats(mut self, provider: super::stats::StatsProvider) -> Self {
        self.stats = Some(provider);
        self
    }
}

/// The router: `GET /healthz`, `GET /pods`, `GET /node`, `GET /metrics`, and with
/// [`HttpState::stats`] `GET /stats/summary` and `GET /metrics/resource`.
pub fn router(state: HttpState) -> Router {
    let stats = state.stats.clone();
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/pods", get(pods))
        .route("/node", get(node))
        .route("/metrics", get(metrics))
        .with_state(state);
    match stats {
        Some(provider) => router.merge(super::stats::router(provider)),
        None => router,
    }
}

async fn healthz(State(s): State<HttpState>) -> Response {
    match s.health.as_ref().map(|h| h.check()).unwrap_or(Ok(())) {
        Ok(()) => (StatusCode::OK, "ok").into_response(),
        Err(why) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("unhealthy: {why}"),
        )
            .into_response(),
    }
}

async fn pods(State(s): State<HttpState>) -> Response {
    let list = serde_json::json!({
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {},
        "items": s.pods.pods(),
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        list.to_string(),
    )
        .into_response()
}

async fn node(State(s): State<HttpState>) -> Response {
    let Some(latest) = &s.node else {
        return (StatusCode::NOT_FOUND, "no node status on this server").into_response();
    };
    match latest.get() {
        Some(node) => (
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::to_string(&node).unwrap_or_default(),
        )
            .into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the node status is not built yet",
        )
            .into_response(),
    }
}

async fn metrics(State(s): State<HttpState>) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &s.registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
