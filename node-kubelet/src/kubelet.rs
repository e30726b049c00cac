//! The [`Kubelet`] assembly: sources merged into pod workers, a pod lifecycle event generator
//! that wakes the worker of a pod at once on a runtime container event (when the runtime sends
//! them, [`RuntimeBackend::get_container_events`]) and relists the runtime every second as the
//! fallback, adoption of what already runs, and cleanup of pods no source wants any more.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use node_core::{ImageBackend, PodRef, PodSource, RuntimeBackend, RuntimeError, StatusSink, cri};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backoff::BackoffConfig;
use crate::cri_config::{CriSettings, HostDns, InMemoryStore, ValueStore};
use crate::labels;
use crate::node::hooks::{NoNodeHooks, NodeHooks, PodControl};
use crate::source::{PodConfig, PodUpdate};
use crate::state::PodStates;
use crate::worker::{PodWorker, Shared, WorkerMsg};

/// The kubelet's settings.
#[derive(Debug, Clone)]
pub struct KubeletConfig {
    /// Cluster DNS server IPs (`clusterDNS`); empty: `ClusterFirst` pods use the host's resolver.
    pub cluster_dns: Vec<IpAddr>,
    /// The cluster domain (`cluster.local`).
    pub cluster_domain: String,
    /// The host's resolv.conf (for `dnsPolicy: Default` and extra search domains).
    pub resolv_conf: PathBuf,
    /// Where pod log directories go (`/var/log/pods`).
    pub pod_log_root: PathBuf,
    /// The node's IP (`status.hostIP`); `None`: not reported.
    pub host_ip: Option<IpAddr>,
    /// How often the runtime is relisted to notice container exits (1 s; container events, when
    /// the runtime sends them, are noticed at once).
    pub relist_period: Duration,
    /// How often each pod is synced without any event (10 s).
    pub sync_period: Duration,
    /// The crash-loop back-off (10 s doubling to 5 min, reset after 10 min).
    pub restart_backoff: BackoffConfig,
    /// The image pull back-off.
    pub image_pull_backoff: BackoffConfig,
    /// The node's allocatable CPU in millicores (downward API defaults; 0: unknown).
    pub node_cpu_millis: i64,
    /// The node's allocatable memory in bytes (downward API defaults, OOM scores; 0: unknown).
    pub node_memory_bytes: i64,
}

impl Default for KubeletConfig {
    fn default() -> Self {
        Self {
            cluster_dns: vec![],
            cluster_domain: "cluster.local".into(),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            pod_log_root: PathBuf::from("/var/log/pods"),
            host_ip: None,
            relist_period: Duration::from_secs(1),
            sync_period: Duration::from_secs(10),
            restart_backoff: BackoffConfig::default(),
            image_pull_backoff: BackoffConfig::default(),
            node_cpu_millis: 0,
            node_memory_bytes: 0,
        }
    }
}

/// An error of the kubelet assembly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KubeletError {
    /// A required part was not given to the builder.
    #[error("kubelet builder: no {0} given")]
    Missing(&'static str),
    /// The runtime never answered before shutdown.
    #[error("runtime: {0}")]
    Runtime(#[source] RuntimeError),
}

/// Builds a [`Kubelet`].
pub struct KubeletBuilder {
    node_name: String,
    sources: Vec<Arc<dyn PodSource>>,
    runtime: Option<(Arc<dyn RuntimeBackend>, Arc<dyn ImageBackend>)>,
    sink: Option<Arc<dyn StatusSink>>,
    store: Option<Arc<dyn ValueStore>>,
    node: Option<Arc<dyn NodeHooks>>,
    config: KubeletConfig,
}

impl KubeletBuilder {
    /// Add a pod source (earlier sources win name clashes).
    #[must_use]
    pub fn source(mut self, source: Arc<dyn PodSource>) -> Self {
        self.sources.push(source);
        self
    }

    /// The container runtime and its image service (often the same object twice).
    #[must_use]
    pub fn runtime(
        mut self,
        runtime: Arc<dyn RuntimeBackend>,
        images: Arc<dyn ImageBackend>,
    ) -> Self {
        self.runtime = Some((runtime, images));
        self
    }

    /// Where pod status goes.
    #[must_use]
    pub fn status(mut self, sink: Arc<dyn StatusSink>) -> Self {
        self.sink = Some(sink);
        self
    }

    /// Where config map and secret values come from (default: an empty in-memory store).
    #[must_use]
    pub fn value_store(mut self, store: Arc<dyn ValueStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// The node's part: admission, pod cgroups, volumes, eviction, graceful shutdown
    /// ([`NodeManager`](crate::node::NodeManager)); default: none of it ([`NoNodeHooks`]). The
    /// node gets the runtime and image service given to [`runtime`](Self::runtime) when the
    /// kubelet runs ([`PodControl`]).
    #[must_use]
    pub fn node(mut self, node: Arc<dyn NodeHooks>) -> Self {
        self.node = Some(node);
        self
    }

    /// The kubelet's settings.
    #[must_use]
    pub fn config(mut self, config: KubeletConfig) -> Self {
        self.config = config;
        self
    }

    /// Assemble the kubelet.
    pub fn build(self) -> Result<Kubelet, KubeletError> {
        let (runtime, images) = self.runtime.ok_or(KubeletError::Missing("runtime"))?;
        let sink = self.sink.ok_or(KubeletError::Missing("status sink"))?;
        Ok(Kubelet {
            node_name: self.node_name,
            sources: self.sources,
            runtime,
            images,
            sink,
            store: self.store.unwrap_or_else(|| Arc::new(InMemoryStore::new())),
            node: self.node.unwrap_or_else(|| Arc::new(NoNodeHooks)),
            config: self.config,
            states: PodStates::new(),
        })
    }
}

/// The kubelet's pod agent: runs the pods its sources want on its runtime and reports their
/// status.
///
/// ```no_run
/// # async fn demo(runtime: std::sync::Arc<node_test_support::FakeRuntime>) -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use node_kubelet::{FileSource, JsonStatusSink, Kubelet};
///
/// let kubelet = Kubelet::builder("node-1")
///     .source(Arc::new(FileSource::new("/etc/nodekit/manifests")))
///     .runtime(runtime.clone(), runtime)
///     .status(Arc::new(JsonStatusSink::new("/run/nodekit/status")?))
///     .build()?;
/// kubelet.run(tokio_util::sync::CancellationToken::new()).await?;
/// # Ok(()) }
/// ```
pub struct Kubelet {
    node_name: String,
    sources: Vec<Arc<dyn PodSource>>,
    runtime: Arc<dyn RuntimeBackend>,
    images: Arc<dyn ImageBackend>,
    sink: Arc<dyn StatusSink>,
    store: Arc<dyn ValueStore>,
    node: Arc<dyn NodeHooks>,
    config: KubeletConfig,
    states: PodStates,
}

struct WorkerHandle {
    tx: mpsc::UnboundedSender<WorkerMsg>,
    task: JoinHandle<()>,
    terminating: bool,
}

impl Kubelet {
    /// Start building a kubelet for the node `node_name`.
    pub fn builder(node_name: impl Into<String>) -> KubeletBuilder {
        KubeletBuilder {
            node_name: node_name.into(),
            sources: vec![],
            runtime: None,
            sink: None,
            store: None,
            node: None,
            config: KubeletConfig::default(),
        }
    }

    /// The pods and their latest statuses, live while the kubelet runs (clone it before `run`).
    pub fn states(&self) -> PodStates {
        self.states.clone()
    }

    /// The node's name.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// Run until `shutdown` is cancelled. Stopping the kubelet leaves the pods running: the next
    /// kubelet adopts them (matched by their labels and spec hashes) without restarting them.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), KubeletError> {
        // wait for the runtime (it may be starting beside us), as the kubelet does
        let version = loop {
            match self.runtime.version().await {
                Ok(v) => break v,
                Err(e) => {
                    tracing::warn!(error = %e, "the container runtime does not answer yet; retrying in 1 s");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Err(KubeletError::Runtime(e)),
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        let runtime_name = if version.runtime_name.is_empty() {
            "cri".to_string()
        } else {
            version.runtime_name
        };
        tracing::info!(node = %self.node_name, runtime = %runtime_name, "kubelet starting");
        let settings = CriSettings {
            node_name: self.node_name.clone(),
            cluster_dns: self.config.cluster_dns.clone(),
            cluster_domain: self.config.cluster_domain.clone(),
            host_dns: HostDns::read(&self.config.resolv_conf),
            pod_log_root: self.config.pod_log_root.clone(),
            node_cpu_millis: self.config.node_cpu_millis,
            node_memory_bytes: self.config.node_memory_bytes,
        };
        let shared = Arc::new(Shared {
            runtime: self.runtime.clone(),
            images: self.images.clone(),
            sink: self.sink.clone(),
            store: self.store.clone(),
            node: self.node.clone(),
            settings,
            runtime_name,
            host_ip: self.config.host_ip.map(|ip| ip.to_string()),
            sync_period: self.config.sync_period,
            backoff: self.config.restart_backoff,
            image_backoff: self.config.image_pull_backoff,
            states: self.states.clone(),
        });
        let mut pod_config = PodConfig::new();
        for s in &self.sources {
            pod_config.add_source(s.clone());
        }
        let sources_token = shutdown.child_token();
        let mut updates = pod_config.run(sources_token.clone());
        let mut workers: HashMap<String, WorkerHandle> = HashMap::new();
        let mut sources_ready = false;
        let mut cleaning: HashMap<String, JoinHandle<()>> = HashMap::new();
        let mut last_relist: HashMap<String, String> = HashMap::new();
        let (control, mut node_stops) = PodControl::new(
            self.states.clone(),
            self.runtime.clone(),
            self.images.clone(),
        );
        self.node.start(control.clone(), shutdown.child_token());
        let mut relist = tokio::time::interval(self.config.relist_period);
        relist.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (event_tx, mut events) = mpsc::unbounded_channel();
        let event_task = tokio::spawn(watch_container_events(
            self.runtime.clone(),
            event_tx,
            sources_token.clone(),
        ));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(uid) = events.recv() => {
                    if let Some(w) = workers.get(&uid) {
                        let _ = w.tx.send(WorkerMsg::Sync);
                    }
                }
                update = updates.recv() => {
                    let Some(update) = update else { break };
                    match update {
                        PodUpdate::Add(pod) | PodUpdate::Update(pod)
                            if pod.metadata.deletion_timestamp.is_some() =>
                        {
                            // deleted through the API server: terminate gracefully now
                            let uid = pod.metadata.uid.clone().unwrap_or_default();
                            if let Some(w) = workers.get_mut(&uid)
                                && !w.terminating
                            {
                                w.terminating = true;
                                let _ = w.tx.send(WorkerMsg::Update(Box::new(pod)));
                                let _ = w.tx.send(WorkerMsg::Terminate);
                            }
                        }
                        PodUpdate::Add(pod) | PodUpdate::Update(pod) => {
                            let uid = pod.metadata.uid.clone().unwrap_or_default();
                            match workers.get(&uid) {
                                Some(w) if !w.terminating && !w.task.is_finished() => {
                                    let _ = w.tx.send(WorkerMsg::Update(Box::new(pod)));
                                }
                                _ => {
                                    let (tx, rx) = mpsc::unbounded_channel();
                                    let task = tokio::spawn(PodWorker::new(shared.clone(), pod).run(rx));
                                    workers.insert(uid, WorkerHandle { tx, task, terminating: false });
                                }
                            }
                        }
                        PodUpdate::Delete(pod) => {
                            let uid = pod.metadata.uid.clone().unwrap_or_default();
                            if let Some(w) = workers.get_mut(&uid) {
                                w.terminating = true;
                                let _ = w.tx.send(WorkerMsg::Terminate);
                            }
                        }
                        PodUpdate::SourcesReady => {
                            sources_ready = true;
                            control.set_sources_ready();
                        }
                        PodUpdate::Error { .. } => {}
                    }
                }
                Some(stop) = node_stops.recv() => {
                    // eviction or node shutdown: the worker stops the pod and keeps it Failed
                    if let Some(w) = workers.get(&stop.pod.uid).filter(|w| !w.terminating) {
                        let _ = w.tx.send(WorkerMsg::Stop(stop));
                    }
                }
                _ = relist.tick() => {
                    workers.retain(|_, w| !(w.terminating && w.task.is_finished()));
                    cleaning.retain(|_, t| !t.is_finished());
                    match relist_runtime(self.runtime.as_ref()).await {
                        Ok(now) => {
                            for (uid, fingerprint) in &now {
                                if last_relist.get(uid) != Some(fingerprint)
                                    && let Some(w) = workers.get(uid)
                                {
                                    let _ = w.tx.send(WorkerMsg::Sync);
                                }
                            }
                            if sources_ready {
                                for uid in now.keys() {
                                    if !workers.contains_key(uid) && !cleaning.contains_key(uid) {
                                        let rt = self.runtime.clone();
                                        let sink = self.sink.clone();
                                        let node = self.node.clone();
                                        let uid2 = uid.clone();
                                        cleaning.insert(uid.clone(), tokio::spawn(async move { clean_orphan(rt, sink, node, uid2).await }));
                                    }
                                }
                            }
                            last_relist = now;
                        }
                        Err(e) => tracing::warn!(error = %e, "relisting the runtime failed"),
                    }
                }
            }
        }
        sources_token.cancel();
        event_task.abort();
        tracing::info!(node = %self.node_name, "kubelet stopping; pods keep running");
        // closing the channels stops the workers without touching their pods
        let tasks: Vec<JoinHandle<()>> = workers
            .into_values()
            .map(|w| w.task)
            .chain(cleaning.into_values())
            .collect();
        for t in tasks {
            if tokio::time::timeout(Duration::from_secs(5), t)
                .await
                .is_err()
            {
                tracing::warn!("a pod worker did not stop within 5 s");
            }
        }
        Ok(())
    }
}

/// Forward the pod UID of every runtime container event (the evented PLEG) so its worker syncs
/// at once; the relist stays the fallback. A runtime without events is asked once; a stream that
/// fails or ends is asked for again after 5 s.
async fn watch_container_events(
    rt: Arc<dyn RuntimeBackend>,
    tx: mpsc::UnboundedSender<String>,
    stop: CancellationToken,
) {
    use futures::StreamExt;
    loop {
        let mut stream = match rt.get_container_events().await {
            Ok(s) => s,
            Err(RuntimeError::Unimplemented(_)) => {
                tracing::debug!("the runtime sends no container events; relisting only");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot subscribe to container events; retrying in 5 s");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => continue,
                }
            }
        };
        loop {
            let event = tokio::select! {
                _ = stop.cancelled() => return,
                e = stream.next() => e,
            };
            match event {
                Some(Ok(e)) => {
                    let uid = e.pod_sandbox_status.as_ref().and_then(|s| {
                        s.labels
                            .get(labels::POD_UID)
                            .cloned()
                            .or_else(|| s.metadata.as_ref().map(|m| m.uid.clone()))
                    });
                    if let Some(uid) = uid
                        && tx.send(uid).is_err()
                    {
                        return;
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "container event stream failed; resubscribing in 5 s");
                    break;
                }
                None => break,
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

/// A fingerprint of every managed pod's sandboxes and containers (ids and states), by pod UID.
async fn relist_runtime(rt: &dyn RuntimeBackend) -> Result<HashMap<String, String>, RuntimeError> {
    let managed = HashMap::from([(labels::MANAGED.to_string(), "true".to_string())]);
    let mut by_uid: HashMap<String, BTreeMap<String, i32>> = HashMap::new();
    let sandboxes = rt
        .list_pod_sandbox(Some(cri::PodSandboxFilter {
            label_selector: managed.clone(),
            ..Default::default()
        }))
        .await?;
    for s in sandboxes {
        if let Some(uid) = s.labels.get(labels::POD_UID) {
            by_uid.entry(uid.clone()).or_default().insert(s.id, s.state);
        }
    }
    let containers = rt
        .list_containers(Some(cri::ContainerFilter {
            label_selector: managed,
            ..Default::default()
        }))
        .await?;
    for c in containers {
        if let Some(uid) = c.labels.get(labels::POD_UID) {
            by_uid.entry(uid.clone()).or_default().insert(c.id, c.state);
        }
    }
    Ok(by_uid
        .into_iter()
        .map(|(uid, m)| (uid, format!("{m:?}")))
        .collect())
}

/// Stop and remove what runs for a pod no source wants (deleted while the kubelet was down).
async fn clean_orphan(
    rt: Arc<dyn RuntimeBackend>,
    sink: Arc<dyn StatusSink>,
    node: Arc<dyn NodeHooks>,
    uid: String,
) {
    let selector = HashMap::from([(labels::POD_UID.to_string(), uid.clone())]);
    let Ok(sandboxes) = rt
        .list_pod_sandbox(Some(cri::PodSandboxFilter {
            label_selector: selector.clone(),
            ..Default::default()
        }))
        .await
    else {
        return;
    };
    let pod = sandboxes
        .first()
        .map(|s| {
            let l = &s.labels;
            let get = |k: &str| l.get(k).cloned().unwrap_or_default();
            PodRef::new(
                get(labels::POD_NAMESPACE),
                get(labels::POD_NAME),
                uid.clone(),
            )
        })
        .unwrap_or_else(|| PodRef::new("", "", uid.clone()));
    tracing::info!(%pod, "cleaning up a pod no source wants");
    if let Ok(containers) = rt
        .list_containers(Some(cri::ContainerFilter {
            label_selector: selector,
            ..Default::default()
        }))
        .await
    {
        let mut seen = HashSet::new();
        for c in containers {
            if c.state == cri::ContainerState::ContainerRunning as i32 && seen.insert(c.id.clone())
            {
                let grace = c
                    .annotations
                    .get(labels::POD_TERMINATION_GRACE)
                    .and_then(|g| g.parse().ok())
                    .unwrap_or(30u64);
                let _ = rt.stop_container(&c.id, Duration::from_secs(grace)).await;
            }
        }
    }
    for s in sandboxes {
        let _ = rt.stop_pod_sandbox(&s.id).await;
        let _ = rt.remove_pod_sandbox(&s.id).await;
    }
    // its cgroup, volumes and mirror pod go too: the node hooks only need its identity
    let meta = node_core::k8s_openapi::api::core::v1::Pod {
        metadata: node_core::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(pod.name.clone()),
            namespace: Some(pod.namespace.clone()),
            uid: Some(uid.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    node.pod_removed(&meta).await;
    if !pod.name.is_empty() {
        let _ = sink.pod_deleted(&pod).await;
    }
}
