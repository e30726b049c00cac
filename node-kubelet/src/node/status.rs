//! The Node object of this node: capacity and allocatable, nodeInfo (kernel, OS image,
//! architecture, runtime and kubelet versions), addresses, the conditions Ready, MemoryPressure,
//! DiskPressure, PIDPressure and NetworkUnavailable with kubelet's heartbeat/transition-time
//! semantics, and the [`NodeStatusReporter`] that sends it through a [`StatusSink`] when it
//! changed or every five minutes.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeCondition, NodeStatus, NodeSystemInfo};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use node_core::{StatusError, StatusSink};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::allocatable::{
    AllocatableConfig, CapacityError, NodeResources, node_allocatable, node_capacity,
};

/// The kubelet version nodekit reports in `nodeInfo.kubeletVersion`.
pub const KUBELET_VERSION: &str = concat!("nodekit-v", env!("CARGO_PKG_VERSION"));

/// How the Node object is built.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeStatusConfig {
    /// The node's name.
    pub node_name: String,
    /// The hostname to report (`None`: the system's).
    pub hostname: Option<String>,
    /// The InternalIP addresses (empty: the addresses of the default route's interface).
    pub internal_ips: Vec<IpAddr>,
    /// `nodeInfo.containerRuntimeVersion` (`containerd://1.6.20`), from the runtime's version.
    pub container_runtime_version: String,
    /// Extra labels on the Node (kubernetes.io/hostname, os and arch are always set).
    pub labels: BTreeMap<String, String>,
    /// Capacity and allocatable.
    pub allocatable: AllocatableConfig,
}

impl Default for NodeStatusConfig {
    fn default() -> Self {
        Self {
            node_name: "node".into(),
            hostname: None,
            internal_ips: Vec::new(),
            container_runtime_version: String::new(),
            labels: BTreeMap::new(),
            allocatable: AllocatableConfig::default(),
        }
    }
}

/// What the node's conditions are made from; the pod workers, the runtime and the eviction
/// manager fill it in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeHealth {
    /// The runtime answers and reports RuntimeReady.
    pub runtime_ready: bool,
    /// The runtime reports NetworkReady (CNI configured).
    pub network_ready: bool,
    /// Why not ready, when not (the runtime's or network's message).
    pub message: Option<String>,
    /// The eviction manager sees memory pressure.
    pub memory_pressure: bool,
    /// The eviction manager sees disk pressure.
    pub disk_pressure: bool,
    /// The eviction manager sees PID pressure.
    pub pid_pressure: bool,
    /// A graceful node shutdown is under way.
    pub shutting_down: bool,
}

impl Default for NodeHealth {
    fn default() -> Self {
        Self {
            runtime_ready: true,
            network_ready: true,
            message: None,
            memory_pressure: false,
            disk_pressure: false,
            pid_pressure: false,
            shutting_down: false,
        }
    }
}

impl NodeHealth {
    /// Takes the pressure conditions the eviction manager reports (`MemoryPressure`,
    /// `DiskPressure`, `PIDPressure`).
    pub fn set_pressure<'a>(&mut self, pressure: impl IntoIterator<Item = &'a str>) {
        let p: Vec<&str> = pressure.into_iter().collect();
        self.memory_pressure = p.contains(&"MemoryPressure");
        self.disk_pressure = p.contains(&"DiskPressure");
        self.pid_pressure = p.contains(&"PIDPressure");
    }
}

/// The node's conditions with kubelet's time semantics: `lastHeartbeatTime` moves on every
/// update, `lastTransitionTime` only when the status changes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeConditions {
    conditions: Vec<NodeCondition>,
}

impl NodeConditions {
    /// Sets one condition.
    pub fn set(&mut self, type_: &str, status: bool, reason: &str, message: &str, now: Timestamp) {
        let status = if status { "True" } else { "False" }.to_string();
        let now = Time(now);
        match self.conditions.iter_mut().find(|c| c.type_ == type_) {
            Some(c) => {
                if c.status != status {
                    c.last_transition_time = Some(now.clone());
                }
                c.status = status;
                c.reason = Some(reason.into());
                c.message = Some(message.into());
                c.last_heartbeat_time = Some(now);
            }
            None => self.conditions.push(NodeCondition {
                type_: type_.into(),
                status,
                reason: Some(reason.into()),
                message: Some(message.into()),
                last_heartbeat_time: Some(now.clone()),
                last_transition_time: Some(now),
            }),
        }
    }

    /// Applies a [`NodeHealth`] to the five conditions.
    pub fn update(&mut self, h: &NodeHealth, now: Timestamp) {
        let mem = if h.memory_pressure {
            (
                "KubeletHasInsufficientMemory",
                "kubelet has insufficient memory available",
            )
        } else {
            (
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            )
        };
        self.set("MemoryPressure", h.memory_pressure, mem.0, mem.1, now);
        let disk = if h.disk_pressure {
            ("KubeletHasDiskPressure", "kubelet has disk pressure")
        } else {
            ("KubeletHasNoDiskPressure", "kubelet has no disk pressure")
        };
        self.set("DiskPressure", h.disk_pressure, disk.0, disk.1, now);
        let pid = if h.pid_pressure {
            (
                "KubeletHasInsufficientPID",
                "kubelet has insufficient PID available",
            )
        } else {
            (
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
            )
        };
        self.set("PIDPressure", h.pid_pressure, pid.0, pid.1, now);
        let net = if h.network_ready {
            ("NodekitNetworkReady", "pod network is ready")
        } else {
            ("NodekitNetworkNotReady", "pod network is not ready")
        };
        self.set("NetworkUnavailable", !h.network_ready, net.0, net.1, now);
        let not_ready = if h.shutting_down {
            Some("node is shutting down".to_string())
        } else if !h.runtime_ready {
            Some(format!(
                "container runtime is down: {}",
                h.message.as_deref().unwrap_or("not ready")
            ))
        } else if !h.network_ready {
            Some(format!(
                "container runtime network not ready: {}",
                h.message.as_deref().unwrap_or("network plugin not ready")
            ))
        } else {
            None
        };
        match not_ready {
            None => self.set(
                "Ready",
                true,
                "KubeletReady",
                "kubelet is posting ready status",
                now,
            ),
            Some(m) => self.set("Ready", false, "KubeletNotReady", &m, now),
        }
    }

    /// The conditions, in the order they were first set.
    pub fn to_vec(&self) -> Vec<NodeCondition> {
        self.conditions.clone()
    }
}

/// Static facts of the machine for `nodeInfo`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SystemFacts {
    /// `uname -r`.
    pub kernel_version: String,
    /// PRETTY_NAME of os-release.
    pub os_image: String,
    /// GOARCH naming (`amd64`, `arm64`...).
    pub architecture: String,
    /// /etc/machine-id.
    pub machine_id: String,
    /// /proc/sys/kernel/random/boot_id.
    pub boot_id: String,
    /// DMI product UUID when readable.
    pub system_uuid: String,
    /// The system hostname.
    pub hostname: String,
}

fn read_trim(p: &str) -> String {
    std::fs::read_to_string(p)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// PRETTY_NAME of an os-release file's text (unquoted), `Linux` when missing.
pub fn os_image(os_release: &str) -> String {
    os_release
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim().trim_matches('"').trim_matches('\'').to_string())
        .unwrap_or_else(|| "Linux".into())
}

/// The Go architecture name of a Rust target architecture.
pub fn go_arch(rust_arch: &str) -> &str {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        "arm" => "arm",
        other => other,
    }
}

impl SystemFacts {
    /// Reads them from uname, /etc/os-release, machine-id, boot_id and DMI.
    pub fn read() -> Self {
        let uname = nix::sys::utsname::uname().ok();
        let os_release = std::fs::read_to_string("/etc/os-release")
            .or_else(|_| std::fs::read_to_string("/usr/lib/os-release"))
            .unwrap_or_default();
        Self {
            kernel_version: uname
                .as_ref()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default(),
            os_image: os_image(&os_release),
            architecture: go_arch(std::env::consts::ARCH).to_string(),
            machine_id: read_trim("/etc/machine-id"),
            boot_id: read_trim("/proc/sys/kernel/random/boot_id"),
            system_uuid: read_trim("/sys/class/dmi/id/product_uuid"),
            hostname: nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default(),
        }
    }
}

/// The interface of the default IPv4 route in a /proc/net/route text.
pub fn default_route_interface(proc_net_route: &str) -> Option<String> {
    proc_net_route.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 2 && f[1] == "00000000").then(|| f[0].to_string())
    })
}

/// The addresses of the default route's interface (IPv4 first), or of any non-loopback interface.
pub fn discover_internal_ips() -> Vec<IpAddr> {
    let route = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    let iface = default_route_interface(&route);
    let mut ips: Vec<(bool, IpAddr)> = Vec::new();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            if iface.as_deref().is_some_and(|i| i != a.interface_name) {
                continue;
            }
            let Some(addr) = a.address else { continue };
            let ip = if let Some(v4) = addr.as_sockaddr_in() {
                IpAddr::V4(v4.ip())
            } else if let Some(v6) = addr.as_sockaddr_in6() {
                IpAddr::V6(v6.ip())
            } else {
                continue;
            };
            let link_local = matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80);
            if ip.is_loopback() || link_local {
                continue;
            }
            ips.push((ip.is_ipv6(), ip));
        }
    }
    ips.sort();
    ips.dedup();
    ips.into_iter().map(|(_, ip)| ip).collect()
}

/// An error of node status reporting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeStatusError {
    /// The node's capacity could not be read.
    #[error("node capacity: {0}")]
    Capacity(#[from] CapacityError),
    /// The status sink refused the status.
    #[error("status sink: {0}")]
    Sink(#[from] StatusError),
    /// The API server answered with an error or could not be reached.
    #[error("api server: {op}: {source}")]
    Api {
        /// What was done (`create node`, `renew lease`...).
        op: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },
}

/// Builds the Node object; keeps the conditions between builds for their time semantics.
#[derive(Debug, Clone)]
pub struct NodeStatusBuilder {
    config: NodeStatusConfig,
    facts: SystemFacts,
    conditions: NodeConditions,
}

impl NodeStatusBuilder {
    /// A builder over the machine's facts.
    pub fn new(config: NodeStatusConfig) -> Self {
        Self::with_facts(config, SystemFacts::read())
    }

    /// A builder over given facts (tests, or an integrator who knows better).
    pub fn with_facts(config: NodeStatusConfig, facts: SystemFacts) -> Self {
        Self {
            config,
            facts,
            conditions: NodeConditions::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &NodeStatusConfig {
        &self.config
    }

    /// The Node object as kubelet registers it: name, labels and status without conditions'
    /// history (capacity read now).
    pub fn build(&mut self, health: &NodeHealth, now: Timestamp) -> Result<Node, NodeStatusError> {
        let capacity = node_capacity(&self.config.allocatable)?;
        Ok(self.build_with_capacity(health, now, capacity))
    }

    /// [`build`](Self::build) with a capacity measured by the caller.
    pub fn build_with_capacity(
        &mut self,
        health: &NodeHealth,
        now: Timestamp,
        capacity: NodeResources,
    ) -> Node {
        let allocatable = node_allocatable(&capacity, &self.config.allocatable);
        self.conditions.update(health, now);
        let hostname = self
            .config
            .hostname
            .clone()
            .unwrap_or_else(|| self.facts.hostname.clone());
        let ips = if self.config.internal_ips.is_empty() {
            discover_internal_ips()
        } else {
            self.config.internal_ips.clone()
        };
        let mut addresses: Vec<NodeAddress> = ips
            .iter()
            .map(|ip| NodeAddress {
                type_: "InternalIP".into(),
                address: ip.to_string(),
            })
            .collect();
        addresses.push(NodeAddress {
            type_: "Hostname".into(),
            address: hostname.clone(),
        });
        let mut labels = self.config.labels.clone();
        labels.insert("kubernetes.io/hostname".into(), hostname);
        labels.insert("kubernetes.io/os".into(), "linux".into());
        labels.insert("kubernetes.io/arch".into(), self.facts.architecture.clone());
        Node {
            metadata: ObjectMeta {
                name: Some(self.config.node_name.clone()),
                labels: Some(labels),
                ..Default::default()
            },
            spec: None,
            status: Some(NodeStatus {
                capacity: Some(capacity.to_resource_list()),
                allocatable: Some(allocatable.to_resource_list()),
                conditions: Some(self.conditions.to_vec()),
                addresses: Some(addresses),
                node_info: Some(NodeSystemInfo {
                    architecture: self.facts.architecture.clone(),
                    boot_id: self.facts.boot_id.clone(),
                    container_runtime_version: self.config.container_runtime_version.clone(),
                    kernel_version: self.facts.kernel_version.clone(),
                    kube_proxy_version: String::new(),
                    kubelet_version: KUBELET_VERSION.into(),
                    machine_id: self.facts.machine_id.clone(),
                    operating_system: "linux".into(),
                    os_image: self.facts.os_image.clone(),
                    system_uuid: self.facts.system_uuid.clone(),
                    swap: None,
                }),
                ..Default::default()
            }),
        }
    }
}

/// The node's status without the heartbeat times, to tell a change from a heartbeat.
pub fn without_heartbeats(node: &Node) -> Node {
    let mut n = node.clone();
    if let Some(cs) = n.status.as_mut().and_then(|s| s.conditions.as_mut()) {
        for c in cs {
            c.last_heartbeat_time = None;
        }
    }
    n
}

/// Sends the node's status through a [`StatusSink`] when it changed, or every
/// `report_every` (kubelet's nodeStatusReportFrequency, 5 min) even unchanged.
pub struct NodeStatusReporter {
    sink: Arc<dyn StatusSink>,
    builder: NodeStatusBuilder,
    /// Resend an unchanged status after this long.
    pub report_every: Duration,
    /// Look at the status this often (kubelet's nodeStatusUpdateFrequency, 10 s).
    pub check_every: Duration,
    last: Option<(Node, Instant)>,
    capacity: Option<Box<dyn Fn() -> Result<NodeResources, CapacityError> + Send + Sync>>,
}

impl std::fmt::Debug for NodeStatusReporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeStatusReporter")
            .field("report_every", &self.report_every)
            .field("check_every", &self.check_every)
            .finish_non_exhaustive()
    }
}

impl NodeStatusReporter {
    /// A reporter with kubelet's periods (check every 10 s, report unchanged every 5 min).
    pub fn new(sink: Arc<dyn StatusSink>, builder: NodeStatusBuilder) -> Self {
        Self {
            sink,
            builder,
            report_every: Duration::from_secs(300),
            check_every: Duration::from_secs(10),
            last: None,
            capacity: None,
        }
    }

    /// Measure capacity with this function instead of procfs/statfs (tests, or a machine whose
    /// capacity the integrator knows better).
    #[must_use]
    pub fn with_capacity_fn(
        mut self,
        f: impl Fn() -> Result<NodeResources, CapacityError> + Send + Sync + 'static,
    ) -> Self {
        self.capacity = Some(Box::new(f));
        self
    }

    /// The Node object as it is now (for registration), without sending it.
    pub fn build_now(&mut self, health: &NodeHealth) -> Result<Node, NodeStatusError> {
        let capacity = match &self.capacity {
            Some(f) => f()?,
            None => node_capacity(&self.builder.config.allocatable)?,
        };
        Ok(self
            .builder
            .build_with_capacity(health, Timestamp::now(), capacity))
    }

    /// Builds the status and sends it if it changed or is due. Returns whether it was sent.
    pub async fn tick(&mut self, health: &NodeHealth) -> Result<bool, NodeStatusError> {
        let node = self.build_now(health)?;
        let now = Instant::now();
        let stripped = without_heartbeats(&node);
        let due = match &self.last {
            None => true,
            Some((last, at)) => *last != stripped || now.duration_since(*at) >= self.report_every,
        };
        if !due {
            return Ok(false);
        }
        self.sink.node_status(&node).await?;
        self.last = Some((stripped, now));
        Ok(true)
    }

    /// Checks every `check_every` and whenever `health` changes, until `shutdown` completes.
    /// Errors of the sink are logged and retried at the next check; they never stop the loop.
    pub async fn run(
        mut self,
        mut health: tokio::sync::watch::Receiver<NodeHealth>,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut interval = tokio::time::interval(self.check_every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut health_open = true;
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = interval.tick() => {}
                r = health.changed(), if health_open => {
                    if r.is_err() { health_open = false; continue; }
                }
            }
            let h = health.borrow_and_update().clone();
            if let Err(e) = self.tick(&h).await {
                tracing::warn!(error = %e, "node status not reported");
            }
        }
    }
}

/// The latest Node object the reporter built, in memory: standalone mode's node status (served
/// as JSON at the HTTP server's `/node`), also kept with an API server. Clones share it.
#[derive(Clone, Default)]
pub struct LatestNode(Arc<std::sync::Mutex<Option<Node>>>);

impl std::fmt::Debug for LatestNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatestNode").finish_non_exhaustive()
    }
}

impl LatestNode {
    /// The Node object last reported (`None` before the first report).
    pub fn get(&self) -> Option<Node> {
        self.0.lock().expect("latest node lock").clone()
    }

    fn set(&self, node: &Node) {
        *self.0.lock().expect("latest node lock") = Some(node.clone());
    }
}

#[async_trait::async_trait]
impl StatusSink for LatestNode {
    async fn pod_status(
        &self,
        _pod: &node_core::PodRef,
        _status: &k8s_openapi::api::core::v1::PodStatus,
    ) -> Result<(), StatusError> {
        Ok(())
    }

    async fn pod_deleted(&self, _pod: &node_core::PodRef) -> Result<(), StatusError> {
        Ok(())
    }

    async fn node_status(&self, node: &Node) -> Result<(), StatusError> {
        self.set(node);
        Ok(())
    }
}

/// Sends node status to two sinks (the API server and the [`LatestNode`]); the first one's
/// error is the answer, the second one is always told.
struct BothSinks(Arc<dyn StatusSink>, LatestNode);

#[async_trait::async_trait]
impl StatusSink for BothSinks {
    async fn pod_status(
        &self,
        pod: &node_core::PodRef,
        status: &k8s_openapi::api::core::v1::PodStatus,
    ) -> Result<(), StatusError> {
        self.0.pod_status(pod, status).await
    }

    async fn pod_deleted(&self, pod: &node_core::PodRef) -> Result<(), StatusError> {
        self.0.pod_deleted(pod).await
    }

    async fn node_status(&self, node: &Node) -> Result<(), StatusError> {
        self.1.set(node);
        self.0.node_status(node).await
    }
}

/// Takes the runtime's `Status` answer (or its failure) into the health: `RuntimeReady` and
/// `NetworkReady` with their reason and message. Returns whether the health changed.
pub fn apply_runtime_status(
    health: &mut NodeHealth,
    status: Result<&node_core::cri::StatusResponse, &node_core::RuntimeError>,
) -> bool {
    let before = health.clone();
    match status {
        Err(e) => {
            health.runtime_ready = false;
            health.message = Some(e.to_string());
        }
        Ok(resp) => {
            let conditions = resp
                .status
                .as_ref()
                .map(|s| s.conditions.as_slice())
                .unwrap_or_default();
            let find = |t: &str| conditions.iter().find(|c| c.r#type == t);
            let why = |c: Option<&node_core::cri::RuntimeCondition>, t: &str| match c {
                Some(c) if !c.message.is_empty() => format!("{}: {}", c.reason, c.message),
                Some(c) if !c.reason.is_empty() => c.reason.clone(),
                _ => format!("the runtime does not report {t}"),
            };
            let runtime = find("RuntimeReady");
            let network = find("NetworkReady");
            health.runtime_ready = runtime.is_some_and(|c| c.status);
            health.network_ready = network.is_some_and(|c| c.status);
            health.message = if !health.runtime_ready {
                Some(why(runtime, "RuntimeReady"))
            } else if !health.network_ready {
                Some(why(network, "NetworkReady"))
            } else {
                None
            };
        }
    }
    *health != before
}

/// What the node manager's status reporting needs beyond the node's name and allocatable
/// settings (which come from [`NodeConfig`](super::NodeConfig)).
#[derive(Debug, Clone, PartialEq)]
pub struct NodeReportConfig {
    /// Hostname, addresses, labels and runtime version of the Node (its `node_name` and
    /// `allocatable` are replaced by the node manager's).
    pub status: NodeStatusConfig,
    /// Registration, Lease and back-off timing with an API server.
    pub api: super::api::NodeApiConfig,
    /// How often the status is built and compared (kubelet's nodeStatusUpdateFrequency, 10 s),
    /// and the runtime's status asked.
    pub check_every: Duration,
    /// Resend an unchanged status after this long (kubelet's nodeStatusReportFrequency, 5 min).
    pub report_every: Duration,
}

impl Default for NodeReportConfig {
    fn default() -> Self {
        Self {
            status: NodeStatusConfig::default(),
            api: super::api::NodeApiConfig::default(),
            check_every: Duration::from_secs(10),
            report_every: Duration::from_secs(300),
        }
    }
}

type CapacityFn = Arc<dyn Fn() -> Result<NodeResources, CapacityError> + Send + Sync>;

/// The node's status reporting as the node manager runs it: the runtime's status polled into
/// the health, the Node built from the machine and the health, and sent to the API server
/// (registration, Lease, status patches: [`run_with_api`](super::api::run_with_api)) or, without
/// one, kept in a [`LatestNode`] (standalone).
#[derive(Clone, Default)]
pub struct NodeReporting {
    /// The settings.
    pub config: NodeReportConfig,
    /// The API server, if any.
    pub client: Option<kube::Client>,
    /// The runtime whose `Status` feeds Ready and NetworkUnavailable, if any (and its
    /// `Version` the `containerRuntimeVersion` when the config leaves it empty).
    pub runtime: Option<Arc<dyn node_core::RuntimeBackend>>,
    /// Measures capacity instead of procfs/statfs.
    pub capacity: Option<CapacityFn>,
    /// The latest Node built.
    pub latest: LatestNode,
}

impl std::fmt::Debug for NodeReporting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeReporting")
            .field("config", &self.config)
            .field("api", &self.client.is_some())
            .field("runtime", &self.runtime.is_some())
            .finish_non_exhaustive()
    }
}

impl NodeReporting {
    /// Starts the reporting tasks for the node `node_name`; they end when `shutdown` is
    /// cancelled. `health` is the node manager's (eviction pressure, shutdown), which the
    /// runtime poller updates too.
    pub fn spawn(
        &self,
        node_name: &str,
        allocatable: &AllocatableConfig,
        health: &tokio::sync::watch::Sender<NodeHealth>,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let mut config = self.config.clone();
        config.status.node_name = node_name.to_string();
        config.status.allocatable = allocatable.clone();
        let this = self.clone();
        let health_tx = health.clone();
        let health_rx = health.subscribe();
        tokio::spawn(async move {
            if let Some(rt) = &this.runtime {
                if config.status.container_runtime_version.is_empty()
                    && let Ok(v) = rt.version().await
                {
                    config.status.container_runtime_version =
                        format!("{}://{}", v.runtime_name, v.runtime_version);
                }
                tokio::spawn(poll_runtime(
                    rt.clone(),
                    health_tx,
                    config.check_every,
                    shutdown.clone(),
                ));
            }
            let sink: Arc<dyn StatusSink> = match &this.client {
                Some(c) => Arc::new(BothSinks(
                    Arc::new(super::api::ApiStatusSink::new(c.clone())),
                    this.latest.clone(),
                )),
                None => Arc::new(this.latest.clone()),
            };
            let mut reporter = NodeStatusReporter::new(sink, NodeStatusBuilder::new(config.status));
            reporter.check_every = config.check_every;
            reporter.report_every = config.report_every;
            if let Some(f) = this.capacity.clone() {
                reporter = reporter.with_capacity_fn(move || f());
            }
            match this.client {
                Some(client) => {
                    super::api::run_with_api(client, config.api, reporter, health_rx, shutdown)
                        .await
                }
                None => reporter.run(health_rx, shutdown.cancelled_owned()).await,
            }
        });
    }
}

/// Asks the runtime's status every `every` and takes it into the health (a change wakes the
/// reporter at once).
async fn poll_runtime(
    runtime: Arc<dyn node_core::RuntimeBackend>,
    health: tokio::sync::watch::Sender<NodeHealth>,
    every: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let status = runtime.status(false).await;
        health.send_if_modified(|h| apply_runtime_status(h, status.as_ref()));
    }
}

/// Standalone mode's node status: a [`StatusSink`] that writes the Node object as JSON to a file
/// (atomically) and passes pod status on to an inner sink, if any.
pub struct NodeStatusFile {
    path: std::path::PathBuf,
    inner: Option<Arc<dyn StatusSink>>,
}

impl std::fmt::Debug for NodeStatusFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeStatusFile")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl NodeStatusFile {
    /// Writes the node to `path`; pod status goes nowhere.
    pub fn new(path: impl Into<std::path::PathBuf>) -> Self {
        Self {
            path: path.into(),
            inner: None,
        }
    }

    /// Passes pod status (and a copy of node status) to `inner`.
    #[must_use]
    pub fn with_inner(mut self, inner: Arc<dyn StatusSink>) -> Self {
        self.inner = Some(inner);
        self
    }
}

#[async_trait::async_trait]
impl StatusSink for NodeStatusFile {
    async fn pod_status(
        &self,
        pod: &node_core::PodRef,
        status: &k8s_openapi::api::core::v1::PodStatus,
    ) -> Result<(), StatusError> {
        match &self.inner {
            Some(i) => i.pod_status(pod, status).await,
            None => Ok(()),
        }
    }

    async fn pod_deleted(&self, pod: &node_core::PodRef) -> Result<(), StatusError> {
        match &self.inner {
            Some(i) => i.pod_deleted(pod).await,
            None => Ok(()),
        }
    }

    async fn node_status(&self, node: &Node) -> Result<(), StatusError> {
        write_node_json(node, &self.path)?;
        match &self.inner {
            Some(i) => i.node_status(node).await,
            None => Ok(()),
        }
    }
}

/// Writes the Node object as JSON to a file (standalone mode's node status), atomically.
pub fn write_node_json(node: &Node, path: &Path) -> Result<(), StatusError> {
    let io = |source| StatusError::Io {
        path: path.to_path_buf(),
        source,
    };
    let json = serde_json::to_vec_pretty(node).map_err(|e| StatusError::Other(e.to_string()))?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, json).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).unwrap()
    }

    fn cond<'a>(n: &'a NodeConditions, t: &str) -> &'a NodeCondition {
        n.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn transition_time_moves_only_on_status_change() {
        let mut c = NodeConditions::default();
        let mut h = NodeHealth::default();
        c.update(&h, ts(0));
        assert_eq!(cond(&c, "Ready").status, "True");
        assert_eq!(cond(&c, "Ready").reason.as_deref(), Some("KubeletReady"));
        c.update(&h, ts(10));
        let r = cond(&c, "Ready");
        assert_eq!(r.last_heartbeat_time, Some(Time(ts(10))));
        assert_eq!(r.last_transition_time, Some(Time(ts(0))));
        h.memory_pressure = true;
        c.update(&h, ts(20));
        let m = cond(&c, "MemoryPressure");
        assert_eq!(m.status, "True");
        assert_eq!(m.reason.as_deref(), Some("KubeletHasInsufficientMemory"));
        assert_eq!(m.last_transition_time, Some(Time(ts(20))));
        assert_eq!(cond(&c, "Ready").last_transition_time, Some(Time(ts(0))));
        h.runtime_ready = false;
        h.message = Some("containerd not answering".into());
        c.update(&h, ts(30));
        let r = cond(&c, "Ready");
        assert_eq!(r.status, "False");
        assert_eq!(
            r.message.as_deref(),
            Some("container runtime is down: containerd not answering")
        );
        assert_eq!(r.last_transition_time, Some(Time(ts(30))));
        let types: Vec<_> = c.to_vec().into_iter().map(|c| c.type_).collect();
        assert_eq!(
            types,
            [
                "MemoryPressure",
                "DiskPressure",
                "PIDPressure",
                "NetworkUnavailable",
                "Ready"
            ]
        );
    }

    #[test]
    fn pressure_from_the_eviction_manager() {
        let mut h = NodeHealth::default();
        h.set_pressure(["DiskPressure"]);
        assert!(h.disk_pressure && !h.memory_pressure && !h.pid_pressure);
        h.set_pressure([]);
        assert!(!h.disk_pressure);
    }

    #[test]
    fn shutting_down_is_not_ready() {
        let mut c = NodeConditions::default();
        c.update(
            &NodeHealth {
                shutting_down: true,
                ..Default::default()
            },
            ts(0),
        );
        let r = cond(&c, "Ready");
        assert_eq!(r.status, "False");
        assert_eq!(r.message.as_deref(), Some("node is shutting down"));
    }

    #[test]
    fn node_object_from_this_machine() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = NodeStatusBuilder::new(NodeStatusConfig {
            node_name: "n1".into(),
            container_runtime_version: "containerd://1.6.20".into(),
            internal_ips: vec!["10.0.0.5".parse().unwrap()],
            allocatable: AllocatableConfig {
                root_dir: dir.path().into(),
                ..Default::default()
            },
            ..Default::default()
        });
        let node = b.build(&NodeHealth::default(), ts(0)).unwrap();
        let s = node.status.as_ref().unwrap();
        let info = s.node_info.as_ref().unwrap();
        let uname = std::process::Command::new("uname")
            .arg("-r")
            .output()
            .unwrap();
        assert_eq!(
            info.kernel_version,
            String::from_utf8_lossy(&uname.stdout).trim()
        );
        assert_eq!(info.kubelet_version, KUBELET_VERSION);
        assert_eq!(info.container_runtime_version, "containerd://1.6.20");
        assert_eq!(info.operating_system, "linux");
        assert!(!info.os_image.is_empty());
        let addrs = s.addresses.as_ref().unwrap();
        assert_eq!(addrs[0].type_, "InternalIP");
        assert_eq!(addrs[0].address, "10.0.0.5");
        assert_eq!(addrs[1].type_, "Hostname");
        assert_eq!(s.capacity.as_ref().unwrap()["pods"].0, "110");
        assert!(s.allocatable.as_ref().unwrap().contains_key("memory"));
        assert_eq!(s.conditions.as_ref().unwrap().len(), 5);
        assert_eq!(node.metadata.name.as_deref(), Some("n1"));
        assert!(
            node.metadata
                .labels
                .as_ref()
                .unwrap()
                .contains_key("kubernetes.io/arch")
        );
    }

    #[tokio::test]
    async fn standalone_node_status_is_a_json_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.json");
        let sink: Arc<dyn StatusSink> = Arc::new(NodeStatusFile::new(&path));
        let mut reporter = NodeStatusReporter::new(
            sink,
            NodeStatusBuilder::with_facts(
                NodeStatusConfig {
                    node_name: "n1".into(),
                    internal_ips: vec!["10.0.0.5".parse().unwrap()],
                    ..Default::default()
                },
                SystemFacts::default(),
            ),
        )
        .with_capacity_fn(|| {
            Ok(NodeResources {
                cpu_milli: 1000,
                memory_bytes: 1 << 30,
                ephemeral_storage_bytes: 1 << 34,
                pods: 110,
            })
        });
        assert!(reporter.tick(&NodeHealth::default()).await.unwrap());
        assert!(
            !reporter.tick(&NodeHealth::default()).await.unwrap(),
            "unchanged"
        );
        let node: Node = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(node.metadata.name.as_deref(), Some("n1"));
        let st = node.status.unwrap();
        assert_eq!(st.capacity.unwrap()["memory"].0, "1Gi");
        assert_eq!(st.allocatable.unwrap()["memory"].0, "924Mi", "1Gi - 100Mi");
    }

    #[test]
    fn os_release_and_routes() {
        assert_eq!(
            os_image("NAME=\"Debian\"\nPRETTY_NAME=\"Debian GNU/Linux 13 (trixie)\"\n"),
            "Debian GNU/Linux 13 (trixie)"
        );
        assert_eq!(os_image(""), "Linux");
        let route = "Iface\tDestination\tGateway\tFlags\nlo\t0000007F\t00000000\t0001\neth0\t00000000\t0101A8C0\t0003\n";
        assert_eq!(default_route_interface(route).as_deref(), Some("eth0"));
        assert_eq!(go_arch("x86_64"), "amd64");
        assert_eq!(go_arch("aarch64"), "arm64");
    }
}
