//! kube-proxy's health servers.
//!
//! - [`ProxierHealth`]: the proxier's own health, served on `--healthz-bind-address`
//!   (kube-proxy's default `0.0.0.0:10256`) as `/healthz` and `/livez`, per IP family as
//!   kube-proxy's `ProxyHealthServer` keeps it: a family that synced once is unhealthy when a
//!   change queued for it has waited the health timeout (kube-proxy: twice the sync period)
//!   without a successful sync; `/healthz` is also unhealthy when the node is not eligible
//!   (being deleted, or tainted `ToBeDeletedByClusterAutoscaler`;
//!   [`ProxierHealth::follow_node`] follows the Node on the API server). The JSON bodies are
//!   kube-proxy's: `lastUpdated`, `currentTime`, `nodeEligible` (`/healthz` only), `healthy` and
//!   a `status` per family, times as Go writes a `time.Time` in JSON ([`go_json_time`]).
//! - [`ServiceHealthServer`]: for each `LoadBalancer` Service with `externalTrafficPolicy:
//!   Local`, an HTTP listener on its `healthCheckNodePort` telling the load balancer whether
//!   this node has local ready endpoints for it; a port that cannot be opened is logged and,
//!   with an [`EventRecorder`] ([`ApiEventRecorder`] creates them on the API server), recorded
//!   as kube-proxy's `FailedToStartServiceHealthcheck` Event on the Service.

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

use crate::iptables::IpFamily;

/// kube-proxy's default `--healthz-bind-address`.
pub const DEFAULT_HEALTHZ_BIND_ADDRESS: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 10256);

/// kube-proxy's health timeout with its default 30 s `--sync-period`: twice the sync period
/// ([`health_timeout`] of 30 s).
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(60);

/// kube-proxy's health timeout for a sync period: twice it.
pub fn health_timeout(sync_period: Duration) -> Duration {
    sync_period.saturating_mul(2)
}

/// The taint the cluster autoscaler puts on a node it is about to delete.
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// What health servers a proxy runs. The default runs none (opt-in);
/// [`HealthConfig::kube_proxy`] gives kube-proxy's defaults.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HealthConfig {
    /// Where to serve `/healthz` and `/livez` (`--healthz-bind-address`); `None`: not served.
    pub healthz_bind_address: Option<SocketAddr>,
    /// How long a queued change may wait for a successful sync before the proxy is unhealthy;
    /// `None`: twice the sync loop's `resync_interval`, as kube-proxy derives it from
    /// `--sync-period` (it has no flag of its own).
    pub health_timeout: Option<Duration>,
    /// Serve the `healthCheckNodePort` of `LoadBalancer` Services with
    /// `externalTrafficPolicy: Local`.
    pub service_health_checks: bool,
    /// The addresses health check node ports listen on (empty: every address of the node).
    pub node_port_addresses: Vec<IpAddr>,
}

impl HealthConfig {
    /// kube-proxy's defaults: `/healthz` on `0.0.0.0:10256`, a health timeout of twice the sync
    /// period, service health check node ports on every address.
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

/// The reason of the Event kube-proxy records on a Service whose health check node port cannot
/// be opened.
pub const FAILED_TO_START_SERVICE_HEALTHCHECK: &str = "FailedToStartServiceHealthcheck";

/// An Event about an object, as kube-proxy records them (`events.k8s.io/v1`, reporting
/// controller `kube-proxy`).
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyEvent {
    /// The object the Event is about (`regarding`).
    pub regarding: k8s_openapi::api::core::v1::ObjectReference,
    /// `Warning` (`true`) or `Normal`.
    pub warning: bool,
    /// The reason, e.g. [`FAILED_TO_START_SERVICE_HEALTHCHECK`].
    pub reason: String,
    /// The action, e.g. `Listen`.
    pub action: String,
    /// The human-readable message (`note`).
    pub note: String,
}

/// Where the proxy records Events (optional: without one, failures are only logged). Called
/// from the sync loop: an implementation must not block (spawn the request).
pub trait EventRecorder: Send + Sync {
    /// Record `event`.
    fn record(&self, event: ProxyEvent);
}

/// An [`EventRecorder`] that creates `events.k8s.io/v1` Events through the API server, as
/// kube-proxy's recorder does: reporting controller `kube-proxy`, reporting instance
/// `kube-proxy-<node>`, a repeated Event counted in its series.
#[derive(Clone)]
pub struct ApiEventRecorder {
    recorder: kube::runtime::events::Recorder,
}

impl std::fmt::Debug for ApiEventRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiEventRecorder").finish_non_exhaustive()
    }
}

impl ApiEventRecorder {
    /// A recorder for the proxy of node `node_name`.
    pub fn new(client: kube::Client, node_name: &str) -> Self {
        let reporter = kube::runtime::events::Reporter {
            controller: "kube-proxy".into(),
            instance: Some(format!("kube-proxy-{node_name}")),
        };
        Self {
            recorder: kube::runtime::events::Recorder::new(client, reporter),
        }
    }
}

impl EventRecorder for ApiEventRecorder {
    fn record(&self, event: ProxyEvent) {
        use kube::runtime::events::{Event, EventType};
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(reason = %event.reason, "no runtime to record the event on");
            return;
        };
        let recorder = self.recorder.clone();
        rt.spawn(async move {
            let ev = Event {
                type_: if event.warning {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason: event.reason.clone(),
                note: Some(event.note),
                action: event.action,
                secondary: None,
            };
            if let Err(e) = recorder.publish(&ev, &event.regarding).await {
                tracing::warn!(error = %e, reason = %event.reason, "cannot record the event");
            }
        });
    }
}

/// A family as Kubernetes names it (`IPFamily`: `IPv4`, `IPv6`).
fn family_name(f: IpFamily) -> &'static str {
    match f {
        IpFamily::V4 => "IPv4",
        IpFamily::V6 => "IPv6",
    }
}

#[derive(Debug, Default)]
struct ProxierState {
    /// Per IP family: the wall-clock time of the last successful sync.
    last_updated: BTreeMap<IpFamily, SystemTime>,
    /// Per IP family: when the oldest change not synced yet was queued.
    oldest_pending: BTreeMap<IpFamily, Instant>,
    node_eligible: bool,
}

/// The proxier's health as kube-proxy's `ProxyHealthServer` keeps it, per IP family: the sync
/// loop reports [`queued_update`](Self::queued_update) and [`updated`](Self::updated). A family
/// is unhealthy when a change queued for it has waited the health timeout or longer; a family
/// that never synced is not judged (kube-proxy: "healthy while starting up"). Cheap to clone
/// (shared state).
///
/// Ages are measured on tokio's clock (so a paused test clock drives them); the times shown in
/// the JSON bodies are wall-clock times as Go's `encoding/json` writes a `time.Time` (RFC 3339
/// with trimmed nanoseconds, in UTC).
#[derive(Debug, Clone)]
pub struct ProxierHealth {
    state: Arc<Mutex<ProxierState>>,
    timeout: Duration,
    families: Vec<IpFamily>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FamilyHealthBody {
    last_updated: String,
    healthy: bool,
}

/// kube-proxy's `ProxyHealth` JSON, its field order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HealthzBody {
    last_updated: String,
    current_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    node_eligible: Option<bool>,
    healthy: bool,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    status: BTreeMap<&'static str, FamilyHealthBody>,
}

/// A time as Go's `encoding/json` writes a `time.Time` (`RFC3339Nano`: trailing zeros of the
/// fraction trimmed, no fraction when whole), in UTC; `None` is Go's zero time.
pub fn go_json_time(t: Option<SystemTime>) -> String {
    let Some(ts) = t.and_then(|t| k8s_openapi::jiff::Timestamp::try_from(t).ok()) else {
        return "0001-01-01T00:00:00Z".into();
    };
    let mut out = ts.strftime("%Y-%m-%dT%H:%M:%S").to_string();
    let nanos = ts.subsec_nanosecond();
    if nanos > 0 {
        let frac = format!("{nanos:09}");
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
    out.push('Z');
    out
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

/// The health of every family: (healthy, the latest sync, per family (last sync, healthy)).
struct Health {
    healthy: bool,
    last_updated: Option<SystemTime>,
    status: BTreeMap<IpFamily, (SystemTime, bool)>,
}

impl ProxierHealth {
    /// A healthy proxier of both IP families (a starting proxy is healthy until a family's
    /// queued change is late after its first sync) on an eligible node.
    pub fn new(health_timeout: Duration) -> Self {
        Self::with_families(health_timeout, &[IpFamily::V4, IpFamily::V6])
    }

    /// A proxier of `families` (kube-proxy: the families it proxies, one in single-stack); the
    /// `queued_update` and `updated` calls without a family apply to each of them.
    pub fn with_families(health_timeout: Duration, families: &[IpFamily]) -> Self {
        Self {
            state: Arc::new(Mutex::new(ProxierState {
                node_eligible: true,
                ..Default::default()
            })),
            timeout: health_timeout,
            families: families.to_vec(),
        }
    }

    /// The health timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ProxierState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A change that needs a sync was received for every family: the oldest pending one starts
    /// the health timer.
    pub fn queued_update(&self) {
        for f in &self.families {
            self.queued_update_family(*f);
        }
    }

    /// A change that needs a sync was received for `family`.
    pub fn queued_update_family(&self, family: IpFamily) {
        self.lock()
            .oldest_pending
            .entry(family)
            .or_insert_with(Instant::now);
    }

    /// The rules of every family were synced successfully: nothing is pending any more.
    pub fn updated(&self) {
        for f in &self.families {
            self.updated_family(*f);
        }
    }

    /// The rules of `family` were synced successfully.
    pub fn updated_family(&self, family: IpFamily) {
        let mut s = self.lock();
        s.oldest_pending.remove(&family);
        s.last_updated.insert(family, SystemTime::now());
    }

    fn health(&self) -> Health {
        let s = self.lock();
        let mut out = Health {
            healthy: true,
            last_updated: s.last_updated.values().max().copied(),
            status: BTreeMap::new(),
        };
        // as kube-proxy: only a family that synced once is judged
        for (family, last) in &s.last_updated {
            let late = s
                .oldest_pending
                .get(family)
                .is_some_and(|t| t.elapsed() >= self.timeout);
            out.healthy &= !late;
            out.status.insert(*family, (*last, !late));
        }
        out
    }

    /// The proxier's health, ignoring the node's eligibility: no queued change of a family that
    /// synced once has waited the health timeout.
    pub fn is_healthy(&self) -> bool {
        self.health().healthy
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

    /// Follow the Node `node_name` on the API server and keep the node's eligibility from it
    /// (kube-proxy's node informer and `NodeEligibleHandler`): every added or changed version
    /// goes through [`sync_node`](Self::sync_node); a Node deleted (or gone from a relisting)
    /// after it was seen is not eligible. Before the Node is first seen the node stays eligible.
    /// Runs until dropped; watch errors are logged and retried with kube-runtime's default
    /// backoff.
    pub async fn follow_node(self, client: kube::Client, node_name: String) {
        use futures::StreamExt;
        use kube::runtime::WatchStreamExt;
        use kube::runtime::watcher::{self, Event};
        let api = kube::Api::<Node>::all(client);
        let config = watcher::Config::default().fields(&format!("metadata.name={node_name}"));
        let mut events = std::pin::pin!(watcher::watcher(api, config).default_backoff());
        let (mut seen, mut listed) = (false, false);
        while let Some(ev) = events.next().await {
            match ev {
                Ok(Event::Apply(n) | Event::InitApply(n)) => {
                    (seen, listed) = (true, true);
                    self.sync_node(&n);
                    tracing::debug!(node = %node_name, eligible = self.node_eligible(), "node");
                }
                Ok(Event::Delete(_)) => {
                    self.set_node_eligible(false);
                    tracing::info!(node = %node_name, "node deleted: not eligible");
                }
                Ok(Event::Init) => listed = false,
                Ok(Event::InitDone) => {
                    if seen && !listed {
                        self.set_node_eligible(false);
                        tracing::info!(node = %node_name, "node gone: not eligible");
                    }
                }
                Err(e) => tracing::warn!(node = %node_name, error = %e, "node watch"),
            }
        }
    }

    fn respond(&self, with_node: bool) -> Response {
        let h = self.health();
        let eligible = self.node_eligible();
        let now = SystemTime::now();
        let ok = h.healthy && (!with_node || eligible);
        // as kube-proxy: a healthy answer reports "lastUpdated" as now
        let body = HealthzBody {
            last_updated: go_json_time(if ok { Some(now) } else { h.last_updated }),
            current_time: go_json_time(Some(now)),
            node_eligible: with_node.then_some(eligible),
            healthy: h.healthy,
            status: h
                .status
                .into_iter()
                .map(|(f, (last, healthy))| {
                    let body = FamilyHealthBody {
                        last_updated: go_json_time(Some(last)),
                        healthy,
                    };
                    (family_name(f), body)
                })
                .collect(),
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

/// The body of a health check node port, byte for byte as kube-proxy writes it (an indented
/// object, tabs, no trailing newline).
fn service_health_body(
    namespace: &str,
    name: &str,
    local_endpoints: usize,
    healthy: bool,
) -> String {
    let q = |v: &str| serde_json::to_string(v).unwrap_or_default();
    format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {},\n\t\t\"name\": {}\n\t}},\n\t\"localEndpoints\": {local_endpoints},\n\t\"serviceProxyHealthy\": {healthy}\n}}",
        q(namespace),
        q(name)
    )
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
    events: Option<Arc<dyn EventRecorder>>,
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
            events: None,
        }
    }

    /// Record a [`FAILED_TO_START_SERVICE_HEALTHCHECK`] Event on the Service when its port
    /// cannot be opened, as kube-proxy does (without a recorder the failure is only logged).
    #[must_use]
    pub fn with_events(mut self, events: Arc<dyn EventRecorder>) -> Self {
        self.events = Some(events);
        self
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
                    tracing::error!(error = %e, node = %state.node.name, "FailedToStartServiceHealthcheck");
                    if let (
                        Some(rec),
                        HealthError::ServiceHealthcheck {
                            namespace,
                            name,
                            port,
                            source,
                        },
                    ) = (&self.events, &e)
                    {
                        rec.record(failed_to_start_event(
                            &state.node.name,
                            namespace,
                            name,
                            *port,
                            source,
                        ));
                    }
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
                    let body = service_health_body(&ns, &name, n, healthy);
                    let status = if n > 0 && healthy {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    let mut resp = json_response(status, body);
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

/// kube-proxy's Event for a health check node port that cannot be opened: on the Service (its
/// reference as kube-proxy writes it, the UID being `namespace/name`), `Warning`, reason
/// [`FAILED_TO_START_SERVICE_HEALTHCHECK`], action `Listen`.
pub fn failed_to_start_event(
    node: &str,
    namespace: &str,
    name: &str,
    port: u16,
    error: &std::io::Error,
) -> ProxyEvent {
    ProxyEvent {
        regarding: k8s_openapi::api::core::v1::ObjectReference {
            kind: Some("Service".into()),
            namespace: Some(namespace.into()),
            name: Some(name.into()),
            uid: Some(format!("{namespace}/{name}")),
            ..Default::default()
        },
        warning: true,
        reason: FAILED_TO_START_SERVICE_HEALTHCHECK.into(),
        action: "Listen".into(),
        note: format!(
            "node {node} failed to start healthcheck \"{namespace}/{name}\" on port {port}: {error}"
        ),
    }
}
