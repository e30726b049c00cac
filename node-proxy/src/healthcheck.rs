//! kube-proxy's health servers.
//!
//! - [`ProxierHealth`]: the proxier's own health, served on `--healthz-bind-address`
//!   (kube-proxy's default `0.0.0.0:10256`) as `/healthz` and `/livez`. The proxy is unhealthy
//!   when a queued change has waited longer than the health timeout (kube-proxy: twice the sync
//!   period) without a successful sync; `/healthz` is also unhealthy when the node is not
//!   eligible (being deleted, or tainted `ToBeDeletedByClusterAutoscaler`).
//! - [`ServiceHealthServer`]: for each `LoadBalancer` Service with `externalTrafficPolicy:
//!   Local`, an HTTP listener on its `healthCheckNodePort` telling the load balancer whether
//!   this node has local ready endpoints for it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::core::v1::Node;
use node_core::ProxyState;
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// kube-proxy's default `--healthz-bind-address`.
pub const DEFAULT_HEALTHZ_BIND_ADDRESS: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 10256);

/// kube-proxy's health timeout with its default 30 s `--sync-period`: twice the sync period.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(60);

/// The taint the cluster autoscaler puts on a node it is about to delete.
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// What health servers a proxy runs. The default runs none (opt-in);
/// [`HealthConfig::kube_proxy`] gives kube-proxy's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    /// Where to serve `/healthz` and `/livez` (`--healthz-bind-address`); `None`: not served.
    pub healthz_bind_address: Option<SocketAddr>,
    /// How long a queued change may wait for a successful sync before the proxy is unhealthy
    /// (kube-proxy: twice `--sync-period`).
    pub health_timeout: Duration,
    /// Serve the `healthCheckNodePort` of `LoadBalancer` Services with
    /// `externalTrafficPolicy: Local`.
    pub service_health_checks: bool,
    /// The addresses health check node ports listen on (empty: every address of the node).
    pub node_port_addresses: Vec<IpAddr>,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            healthz_bind_address: None,
            health_timeout: DEFAULT_HEALTH_TIMEOUT,
            service_health_checks: false,
            node_port_addresses: vec![],
        }
    }
}

impl HealthConfig {
    /// kube-proxy's defaults: `/healthz` on `0.0.0.0:10256`, a 60 s health timeout, service
    /// health check node ports on every address.
    pub fn kube_proxy() -> Self {
        Self {
            healthz_bind_address: Some(DEFAULT_HEALTHZ_BIND_ADDRESS),
            service_health_checks: true,
            ..Self::default()
        }
    }
}

/// An error of the health servers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HealthError {
    /// The proxier health server's address could not be bound.
    #[error("healthz server: cannot listen on {addr}: {source}")]
    Healthz {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A Service's health check node port could not be bound (retried at the next sync).
    #[error("failed to start healthcheck \"{namespace}/{name}\" on port {port}: {source}")]
    ServiceHealthcheck {
        /// The Service's namespace.
        namespace: String,
        /// The Service's name.
        name: String,
        /// The `healthCheckNodePort`.
        port: u16,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug)]
struct ProxierState {
    last_updated: Option<SystemTime>,
    oldest_pending: Option<Instant>,
    node_eligible: bool,
}

/// The proxier's health as kube-proxy's `ProxierHealthServer` keeps it: the sync loop reports
/// [`queued_update`](Self::queued_update) and [`updated`](Self::updated). Cheap to clone
/// (shared state).
///
/// Ages are measured on tokio's clock (so a paused test clock drives them); the times shown in
/// the JSON bodies are wall-clock times in RFC 3339.
#[derive(Debug, Clone)]
pub struct ProxierHealth {
    state: Arc<Mutex<ProxierState>>,
    timeout: Duration,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HealthzBody {
    last_updated: String,
    current_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    node_eligible: Option<bool>,
}

fn rfc3339(t: Option<SystemTime>) -> String {
    let Some(t) = t else {
        return String::new();
    };
    k8s_openapi::jiff::Timestamp::try_from(t)
        .map(|ts| ts.to_string())
        .unwrap_or_default()
}

fn json_response(status: StatusCode, body: String) -> Response {
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

impl ProxierHealth {
    /// A healthy proxier (a starting proxy is healthy until a queued change is late) on an
    /// eligible node.
    pub fn new(health_timeout: Duration) -> Self {
        Self {
            state: Arc::new(Mutex::new(ProxierState {
                last_updated: None,
                oldest_pending: None,
                node_eligible: true,
            })),
            timeout: health_timeout,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ProxierState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A change that needs a sync was received: the oldest pending one starts the health timer.
    pub fn queued_update(&self) {
        let mut s = self.lock();
        if s.oldest_pending.is_none() {
            s.oldest_pending = Some(Instant::now());
        }
    }

    /// The rules were synced successfully: nothing is pending any more.
    pub fn updated(&self) {
        let mut s = self.lock();
        s.oldest_pending = None;
        s.last_updated = Some(SystemTime::now());
    }

    /// The proxier's health, ignoring the node's eligibility: no queued change has waited
    /// longer than the health timeout.
    pub fn is_healthy(&self) -> bool {
        self.lock()
            .oldest_pending
            .is_none_or(|t| t.elapsed() < self.timeout)
    }

    /// Whether the node is eligible (not being deleted, not tainted for deletion).
    pub fn node_eligible(&self) -> bool {
        self.lock().node_eligible
    }

    /// Set the node's eligibility.
    pub fn set_node_eligible(&self, eligible: bool) {
        self.lock().node_eligible = eligible;
    }

    /// Derive the node's eligibility from its object, as kube-proxy does: not eligible when it
    /// has a deletion timestamp or the [`TO_BE_DELETED_TAINT`].
    pub fn sync_node(&self, node: &Node) {
        let deleting = node.metadata.deletion_timestamp.is_some();
        let tainted = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .is_some_and(|t| t.iter().any(|t| t.key == TO_BE_DELETED_TAINT));
        self.set_node_eligible(!deleting && !tainted);
    }

    fn respond(&self, with_node: bool) -> Response {
        let (healthy, last_updated, eligible) = {
            let s = self.lock();
            let healthy = s.oldest_pending.is_none_or(|t| t.elapsed() < self.timeout);
            (healthy, s.last_updated, s.node_eligible)
        };
        let now = SystemTime::now();
        let ok = healthy && (!with_node || eligible);
        // as kube-proxy: a healthy answer reports "lastUpdated" as now
        let body = HealthzBody {
            last_updated: rfc3339(if ok { Some(now) } else { last_updated }),
            current_time: rfc3339(Some(now)),
            node_eligible: with_node.then_some(eligible),
        };
        let status = if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        json_response(status, serde_json::to_string(&body).unwrap_or_default())
    }

    /// The `/healthz` (proxier health and node eligibility) and `/livez` (proxier health)
    /// routes.
    pub fn router(&self) -> Router {
        let (h, l) = (self.clone(), self.clone());
        Router::new()
            .route(
                "/healthz",
                axum::routing::get(move || async move { h.respond(true) }),
            )
            .route(
                "/livez",
                axum::routing::get(move || async move { l.respond(false) }),
            )
    }

    /// Bind `addr` for [`serve`](Self::serve) (synchronously, so a bad address is an error
    /// before anything runs).
    pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, HealthError> {
        let l = std::net::TcpListener::bind(addr)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|source| HealthError::Healthz { addr, source })?;
        Ok(l)
    }

    /// Serve `/healthz` and `/livez` on `listener` until `shutdown`.
    pub async fn serve(
        self,
        listener: std::net::TcpListener,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
    }
}

#[derive(Serialize)]
struct ServiceName<'a> {
    namespace: &'a str,
    name: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ServiceHealthBody<'a> {
    service: ServiceName<'a>,
    local_endpoints: usize,
    service_proxy_healthy: bool,
}

struct Listening {
    port: u16,
    local_endpoints: Arc<AtomicUsize>,
    addrs: Vec<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

impl Listening {
    /// Stop serving and wait until the listeners are closed.
    async fn close(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The health check node ports of `LoadBalancer` Services with `externalTrafficPolicy: Local`,
/// as kube-proxy's `ServiceHealthServer` serves them: any path answers
/// `{"service":{"namespace":..,"name":..},"localEndpoints":N,"serviceProxyHealthy":..}`, 200
/// when N > 0 and the proxier is healthy, 503 otherwise.
pub struct ServiceHealthServer {
    addresses: Vec<IpAddr>,
    proxier: ProxierHealth,
    services: BTreeMap<(String, String), Listening>,
}

impl std::fmt::Debug for ServiceHealthServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceHealthServer")
            .field("addresses", &self.addresses)
            .field("services", &self.services.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// What the health check node ports of `state` should be: per Service (namespace, name), its
/// `healthCheckNodePort` and its local ready endpoints (distinct address:port pairs on `node`
/// over every port of the Service, as kube-proxy counts them).
pub fn health_check_services(state: &ProxyState) -> BTreeMap<(String, String), (u16, usize)> {
    type LocalEndpoints = BTreeSet<(IpAddr, u16)>;
    let mut out: BTreeMap<(String, String), (u16, LocalEndpoints)> = BTreeMap::new();
    for (name, port) in &state.services {
        let Some(hc) = port
            .health_check_node_port
            .filter(|_| port.external_policy_local)
        else {
            continue;
        };
        let entry = out
            .entry((name.namespace.clone(), name.name.clone()))
            .or_insert_with(|| (hc, BTreeSet::new()));
        entry.1.extend(
            port.endpoints
                .iter()
                .filter(|e| e.ready && e.is_local(&state.node.name))
                .map(|e| (e.ip, e.port)),
        );
    }
    out.into_iter()
        .map(|(k, (p, eps))| (k, (p, eps.len())))
        .collect()
}

impl ServiceHealthServer {
    /// Listen on `addresses` (empty: every address); `proxier` gives `serviceProxyHealthy`.
    pub fn new(addresses: Vec<IpAddr>, proxier: ProxierHealth) -> Self {
        Self {
            addresses,
            proxier,
            services: BTreeMap::new(),
        }
    }

    /// The addresses a Service's health check node port listens on, if it is served.
    pub fn local_addrs(&self, namespace: &str, name: &str) -> Option<&[SocketAddr]> {
        self.services
            .get(&(namespace.to_string(), name.to_string()))
            .map(|l| l.addrs.as_slice())
    }

    /// Open and close listeners and set local endpoint counts to match `state`; a closed port
    /// refuses connections when this returns. A port that cannot be bound is logged and
    /// returned; it is tried again at the next sync while the other Services keep being served.
    pub async fn sync(&mut self, state: &ProxyState) -> Vec<HealthError> {
        let want = health_check_services(state);
        let gone: Vec<(String, String)> = self
            .services
            .iter()
            .filter(|(k, l)| want.get(*k).is_none_or(|(port, _)| *port != l.port))
            .map(|(k, _)| k.clone())
            .collect();
        for key in gone {
            if let Some(mut l) = self.services.remove(&key) {
                tracing::info!(service = %format!("{}/{}", key.0, key.1), port = l.port, "health check node port closed");
                l.close().await;
            }
        }
        let mut errors = vec![];
        for (key, (port, count)) in want {
            if let Some(l) = self.services.get(&key) {
                l.local_endpoints.store(count, Ordering::Relaxed);
                continue;
            }
            match self.listen(&key, port, count) {
                Ok(l) => {
                    tracing::info!(service = %format!("{}/{}", key.0, key.1), port, "health check node port opened");
                    self.services.insert(key, l);
                }
                Err(source) => {
                    let e = HealthError::ServiceHealthcheck {
                        namespace: key.0,
                        name: key.1,
                        port,
                        source,
                    };
                    tracing::error!(error = %e, "FailedToStartServiceHealthcheck");
                    errors.push(e);
                }
            }
        }
        errors
    }

    fn bind_addrs(&self, port: u16) -> Vec<SocketAddr> {
        if self.addresses.is_empty() {
            vec![SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port)]
        } else {
            self.addresses
                .iter()
                .map(|ip| SocketAddr::new(*ip, port))
                .collect()
        }
    }

    fn listen(
        &self,
        key: &(String, String),
        port: u16,
        count: usize,
    ) -> std::io::Result<Listening> {
        let mut listeners = vec![];
        for addr in self.bind_addrs(port) {
            let l = match std::net::TcpListener::bind(addr) {
                // a node without IPv6: every IPv4 address instead
                Err(e) if addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED) => {
                    std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).map_err(|_| e)?
                }
                r => r?,
            };
            l.set_nonblocking(true)?;
            listeners.push(l);
        }
        let local_endpoints = Arc::new(AtomicUsize::new(count));
        let mut out = Listening {
            port,
            local_endpoints: local_endpoints.clone(),
            addrs: vec![],
            tasks: vec![],
        };
        for l in listeners {
            out.addrs.push(l.local_addr()?);
            let l = tokio::net::TcpListener::from_std(l)?;
            let (ns, name) = key.clone();
            let (proxier, eps) = (self.proxier.clone(), local_endpoints.clone());
            let handler = move || {
                let (ns, name, proxier, eps) =
                    (ns.clone(), name.clone(), proxier.clone(), eps.clone());
                async move {
                    let n = eps.load(Ordering::Relaxed);
                    let healthy = proxier.is_healthy();
                    let body = ServiceHealthBody {
                        service: ServiceName {
                            namespace: &ns,
                            name: &name,
                        },
                        local_endpoints: n,
                        service_proxy_healthy: healthy,
                    };
                    let status = if n > 0 && healthy {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    let mut resp =
                        json_response(status, serde_json::to_string(&body).unwrap_or_default());
                    // kube-proxy's weight hint for load balancers: the local endpoint count
                    resp.headers_mut()
                        .insert("x-load-balancing-endpoint-weight", HeaderValue::from(n));
                    resp
                }
            };
            let app = Router::new().fallback(handler);
            out.tasks.push(tokio::spawn(async move {
                if let Err(e) = axum::serve(l, app).await {
                    tracing::warn!(error = %e, "health check node port server");
                }
            }));
        }
        Ok(out)
    }
}
