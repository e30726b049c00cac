//! The all-in-one node agent, standalone: pods and Services from a manifest directory (no API
//! server), the native runtime, the native bridge CNI plugin and the nftables router.
//!
//! Endpoints are computed from the local pods that match each Service's selector and are Ready,
//! one EndpointSlice per Service (as the endpointslice controller would), so unchanged Pod and
//! Service YAML works. Static pods are named `<name>-<node>`, as kubelet names them. Logs are
//! human-readable on the terminal, JSON with `--log-format json`; `/healthz`, `/pods` and
//! `/metrics` are served on `--http-addr`.
//!
//! The node layer (`node-agent-parts/node.rs`, kubelet's flag names): admission against
//! allocatable (`--max-pods`, `--kube-reserved`, `--system-reserved`, `--eviction-hard`; a pod
//! that does not fit is Failed with `OutOfpods`, `OutOfcpu`, ...), one cgroup per pod by QoS
//! class when run as root (`--cgroups-per-qos`, `--cgroup-root`), pod volumes under
//! `<root>/kubelet` (emptyDir, configMap and secret from the manifest directory or the API
//! server, hostPath, downwardAPI, projected), eviction, and graceful node shutdown
//! (`--shutdown-grace-period`, through a systemd-logind delay inhibitor).
//!
//! Exit: SIGTERM or Ctrl-C stops the agent alone, as kubelet: pods, service rules and pod
//! networks keep running, and the next agent on the same `--root` adopts them (same containers,
//! no restart; the Service keeps answering). `--drain-on-exit` terminates the pods by priority
//! first and then removes every pod, rule, network, volume and cgroup (the demo's mode);
//! `--cleanup` removes what an earlier agent left on `--root`, then exits.
//!
//! ```text
//! sudo target/debug/examples/node-agent --manifests examples/manifests --drain-on-exit \
//!     --import-image /tmp/web-oci=nodekit.local/demo/web:1
//! ```
//!
//! Cluster mode (`--kubeconfig PATH`, or `--cluster` for the in-cluster/default kube config):
//! the pods bound to `--node-name` (default: the hostname) come from the API server, pod status is
//! patched there, the Node is registered and its Lease renewed, and Services and EndpointSlices
//! are watched from the API server (see `node-agent-parts/cluster.rs`). `--manifests DIR` adds
//! static pods beside them (with mirror pods on the API server), as kubelet's `staticPodPath`.
//!
//! `--runtime cri --cri-endpoint unix:///run/containerd/containerd.sock` drives containerd (or any
//! CRI runtime) through `CriClient` instead of the native runtime; the runtime then sets up pod
//! networking itself (its own CNI config), so the bridge plugin is not used.
//!
//! ```text
//! sudo target/debug/examples/node-agent --kubeconfig /etc/kubernetes/kubelet.conf \
//!     --runtime cri --cri-endpoint unix:///run/containerd/containerd.sock
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use futures::StreamExt;
use node_cni::{BridgeConfig, BridgePlugin};
use node_core::k8s_openapi::api::core::v1::{Pod, Service};
use node_core::k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointPort, EndpointSlice,
};
use node_core::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use node_core::k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use node_core::proxy::NodeInfo;
use node_core::{CniPlugin, ImageBackend, PodSource, RuntimeBackend, ServiceRouter, StatusSink};
use node_cri::native::image::{ImageStore, ImageStoreConfig};
use node_cri::native::runtime::{NativeConfig, NativeRuntime};
use node_cri::{CriClient, CriClientConfig};
use node_kubelet::node::NodeManager;
use node_kubelet::node::http::{HttpState, NodeMetrics, PodsProvider, router};
use node_kubelet::node::logind::ShutdownInhibitor;
use node_kubelet::node::stats::{HostNodeStats, StatsFilesystems, StatsProvider};
use node_kubelet::{
    CancellationToken, FileSource, FileSourceConfig, JsonStatusSink, Kubelet, KubeletConfig,
    PodStates,
};
use node_proxy::{
    ApiEventRecorder, HealthConfig, ManifestDir, NftablesRouter, Proxy, ProxyConfig, ServiceEvent,
    ServiceSource, ServiceStream,
};

#[path = "node-agent-parts/cleanup.rs"]
mod cleanup;
#[path = "node-agent-parts/cluster.rs"]
mod cluster;
#[path = "node-agent-parts/node.rs"]
mod node;
#[path = "node-agent-parts/server.rs"]
mod server;

#[derive(Debug, Parser)]
#[command(about = "The nodekit all-in-one node agent (standalone mode)")]
struct Args {
    /// The directory of Pod, Service, ConfigMap and Secret manifests (standalone default:
    /// `examples/manifests`); in cluster mode, static pods beside the API server's.
    #[arg(long)]
    manifests: Option<PathBuf>,
    /// Where the agent keeps its state.
    #[arg(long, default_value = "/var/lib/nodekit")]
    root: PathBuf,
    /// The pod subnet of the bridge.
    #[arg(long, default_value = "10.88.0.0/16")]
    pod_cidr: ipnet::IpNet,
    /// The service (ClusterIP) range.
    #[arg(long, default_value = "10.96.0.0/16")]
    service_cidr: ipnet::IpNet,
    /// Where `/healthz`, `/pods` and `/metrics` are served.
    #[arg(long, default_value = "127.0.0.1:10255")]
    http_addr: SocketAddr,
    /// The node's name (default: the hostname).
    #[arg(long)]
    node_name: Option<String>,
    /// Import a local OCI layout at start: `DIR=REFERENCE` (repeatable).
    #[arg(long, value_name = "OCI_LAYOUT_DIR=REF")]
    import_image: Vec<String>,
    /// The init binary (default: `nodekit-init` next to this executable or in target/debug).
    #[arg(long)]
    init_binary: Option<PathBuf>,
    /// Join a cluster with this kubeconfig instead of the manifest directory.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Join a cluster with the in-cluster config or the default kubeconfig.
    #[arg(long)]
    cluster: bool,
    /// The container runtime: the embedded native runtime or a CRI runtime (containerd, CRI-O).
    #[arg(long, default_value = "native", value_parser = ["native", "cri"])]
    runtime: String,
    /// The CRI runtime's socket (with `--runtime cri`).
    #[arg(long, default_value = "unix:///run/containerd/containerd.sock")]
    cri_endpoint: String,
    /// Where container logs go (`<root>/<namespace>_<pod>_<uid>/<container>/<n>.log`).
    #[arg(long, default_value = "/var/log/pods")]
    pod_log_root: PathBuf,
    /// The least time between two syncs of the service rules, in milliseconds (kube-proxy's
    /// `--min-sync-period`, 1 s there; a node agent's few services afford a shorter one, which
    /// bounds how late an endpoint change reaches the rules right after another).
    #[arg(long, default_value = "250")]
    min_sync_period_ms: u64,
    /// Serve kube-proxy's `/healthz` and `/livez` here (e.g. `0.0.0.0:10256`, kube-proxy's
    /// default) and the health check node ports of `externalTrafficPolicy: Local` load balancers;
    /// empty (the default): neither.
    #[arg(long, default_value = "")]
    healthz_bind_address: String,
    /// Log format.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Remove every pod, service rule, pod network, volume and pod cgroup an earlier agent left
    /// on `--root` (and the same `--cgroup-root`), then exit.
    #[arg(long)]
    cleanup: bool,
    #[command(flatten)]
    node: node::NodeFlags,
    /// The kubelet's server (logs, exec, attach, port-forward over TLS): node-agent-parts/server.rs.
    #[command(flatten)]
    server: server::ServerFlags,
}

/// Whether this process runs as root (pod cgroups need it).
fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn init_logs(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt().with_env_filter(filter);
    if format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}

fn find_init(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        anyhow::ensure!(p.is_file(), "--init-binary {}: no such file", p.display());
        return Ok(p);
    }
    let exe = std::env::current_exe()?;
    let mut candidates = vec![];
    for dir in exe.ancestors().skip(1).take(3) {
        candidates.push(dir.join("nodekit-init"));
    }
    candidates.push(PathBuf::from("target/debug/nodekit-init"));
    candidates.into_iter().find(|p| p.is_file()).context(
        "nodekit-init not found next to the agent nor in target/debug: \
         run `cargo build -p node-cri --bin nodekit-init` or pass --init-binary",
    )
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

struct StatesProvider(PodStates);

impl PodsProvider for StatesProvider {
    fn pods(&self) -> Vec<Pod> {
        self.0
            .pods()
            .into_iter()
            .map(|s| {
                let mut pod = s.pod;
                if s.status.is_some() {
                    pod.status = s.status;
                }
                pod
            })
            .collect()
    }
}

/// The native runtime's parts that need cleaning up on exit.
struct NativeParts {
    cni: Arc<BridgePlugin>,
}

/// The runtime and image service: the embedded native runtime (with the bridge plugin) or a CRI
/// runtime through `CriClient`.
async fn runtime(
    args: &Args,
) -> anyhow::Result<(
    Arc<dyn RuntimeBackend>,
    Arc<dyn ImageBackend>,
    Option<NativeParts>,
)> {
    if args.runtime == "cri" {
        anyhow::ensure!(
            args.import_image.is_empty(),
            "--import-image works with --runtime native only (import into the CRI runtime with its own tools)"
        );
        let client = CriClient::connect_waiting(
            CriClientConfig {
                endpoint: args.cri_endpoint.clone(),
                ..Default::default()
            },
            Duration::from_secs(30),
        )
        .await
        .with_context(|| format!("--cri-endpoint {}", args.cri_endpoint))?;
        tracing::info!(endpoint = %args.cri_endpoint, runtime = client.runtime_name(),
            version = client.runtime_version(), "CRI runtime connected");
        let client = Arc::new(client);
        return Ok((client.clone(), client, None));
    }
    let store = Arc::new(
        ImageStore::new(ImageStoreConfig {
            root: args.root.join("images"),
            ..Default::default()
        })
        .context("opening the image store")?,
    );
    for spec in &args.import_image {
        let (dir, reference) = spec
            .split_once('=')
            .with_context(|| format!("--import-image {spec:?}: expected OCI_LAYOUT_DIR=REF"))?;
        let rec = store
            .import_oci_layout(Path::new(dir), Some(reference))
            .await
            .with_context(|| format!("importing {dir} as {reference}"))?;
        tracing::info!(image = reference, id = %rec.id, "image imported");
    }
    let cni = Arc::new(
        BridgePlugin::new(BridgeConfig {
            subnets: vec![args.pod_cidr],
            masquerade: true,
            lease_dir: args.root.join("cni/networks"),
            state_dir: args.root.join("cni/state"),
            ..Default::default()
        })
        .context("the bridge CNI plugin")?,
    );
    let runtime = Arc::new(
        NativeRuntime::new(NativeConfig {
            root: args.root.join("runtime"),
            cni: cni.clone(),
            images: store.clone(),
            init_binary: Some(find_init(args.init_binary.clone())?),
            streaming: node_cri::streaming::StreamingConfig {
                stream_idle_timeout: args.server.idle_timeout()?,
                ..Default::default()
            },
            ..Default::default()
        })
        .context("the native runtime")?,
    );
    Ok((runtime, store, Some(NativeParts { cni })))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logs(&args.log_format);
    let stop = node_kubelet::node::shutdown::termination_signal()?;
    let node_name = args.node_name.clone().unwrap_or_else(hostname);
    let cgroups = args.node.cgroups_per_qos && is_root();
    if args.cleanup {
        let node_config = node::node_config(&args.node, &args.root, &node_name, cgroups)?;
        let (rt, _, native) = runtime(&args).await?;
        let nft = NftablesRouter::new().context("the nftables router")?;
        leave_nothing(rt.as_ref(), &nft, native, &node_config, &args.root).await;
        return Ok(());
    }
    let cluster = if args.cluster || args.kubeconfig.is_some() {
        Some(cluster::Cluster::connect(args.kubeconfig.as_deref(), &node_name).await?)
    } else {
        None
    };
    // standalone: the manifest directory (the demo's by default); cluster: static pods only when
    // asked for
    let manifests = match (&cluster, &args.manifests) {
        (None, None) => Some(PathBuf::from("examples/manifests")),
        (_, m) => m.clone(),
    };
    if let Some(dir) = &manifests {
        anyhow::ensure!(
            dir.is_dir(),
            "--manifests {}: not a directory",
            dir.display()
        );
    }
    std::fs::create_dir_all(&args.root)
        .with_context(|| format!("creating --root {}", args.root.display()))?;
    let mut node_config = node::node_config(&args.node, &args.root, &node_name, cgroups)?;
    node_config.pod_log_root = args.pod_log_root.clone();

    let (rt, images, native) = runtime(&args).await?;
    let token = CancellationToken::new();

    // configMaps and secrets for volumes and environment: the manifest directory or the API
    let objects = Arc::new(node::Objects::default());
    match (&cluster, &manifests) {
        (Some(c), _) => objects.follow_api(c.client(), token.clone()),
        (None, Some(dir)) => objects.follow_dir(dir.clone(), token.clone()),
        (None, None) => {}
    }

    // the node layer: admission, pod cgroups, volumes, eviction, graceful shutdown
    let mut node_manager = match NodeManager::new(node_config.clone(), objects.clone()) {
        Err(e @ node_kubelet::node::manager::NodeManagerError::Cgroups(_)) => {
            tracing::warn!(error = %e, "pods run without cgroups of their own (--cgroups-per-qos=false silences this)");
            node_config.cgroups = None;
            NodeManager::new(node_config.clone(), objects.clone())
        }
        r => r,
    }
    .context("the node manager (capacity, pod cgroups)")?;
    let allocatable = node_manager.allocatable();
    tracing::info!(
        cpu_milli = allocatable.cpu_milli,
        memory = allocatable.memory_bytes,
        ephemeral_storage = allocatable.ephemeral_storage_bytes,
        pods = allocatable.pods,
        cgroups = node_config
            .cgroups
            .as_ref()
            .map(|c| c.root.as_str())
            .unwrap_or("off"),
        "node allocatable"
    );
    // the node's status: with an API server the Node is registered, its Lease renewed and its
    // status patched; standalone it is served at /node
    if let Some(c) = &cluster {
        node_manager = node_manager.api(c.client()).mirror_pods(c.mirror_pods());
    }
    let latest_node = node_manager.latest_node();
    let shutdown_reports = node_manager.shutdown_reports();
    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
    let inhibitor = logind_inhibitor(&node_config).await;
    if !node_config.shutdown.by_priority.is_empty() {
        let logind = match &inhibitor {
            Some(i) => Some(i.prepare_for_shutdown().await?),
            None => None,
        };
        node_manager = node_manager.shutdown_on(async move {
            let drain = async {
                if drain_rx.await.is_err() {
                    std::future::pending::<()>().await
                }
            };
            let logind = async {
                match logind {
                    Some(f) => f.await,
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = drain => {}
                _ = logind => {}
            }
        });
    }
    if let Some(i) = &inhibitor {
        i.release_after(shutdown_reports.clone());
    }

    // the kubelet: pods from the API server and/or the manifest directory (static pods)
    let mut builder = Kubelet::builder(node_name.clone());
    let status: Arc<dyn StatusSink> = match &cluster {
        Some(c) => {
            builder = builder.source(c.pod_source());
            c.status_sink()
        }
        None => Arc::new(JsonStatusSink::new(args.root.join("status"))?),
    };
    if let Some(dir) = &manifests {
        let file: Arc<dyn PodSource> = Arc::new(FileSource::with_config(
            dir.clone(),
            FileSourceConfig {
                node_name: node_name.clone(),
                ..Default::default()
            },
        ));
        builder = builder.source(file);
    }
    let kubelet = builder
        .runtime(rt.clone(), images.clone())
        .status(status)
        .value_store(objects.clone())
        .node(Arc::new(node_manager))
        .config(KubeletConfig {
            pod_log_root: args.pod_log_root.clone(),
            node_cpu_millis: allocatable.cpu_milli,
            node_memory_bytes: allocatable.memory_bytes,
            ..Default::default()
        })
        .build()?;
    let states = kubelet.states();

    // the proxy: services from the manifest directory (endpoints from local Ready pods) or the
    // API server (Services and EndpointSlices)
    let nft = Arc::new(NftablesRouter::new().context("the nftables router")?);
    let router_dyn: Arc<dyn ServiceRouter> = nft.clone();
    let mut proxy_builder = Proxy::builder()
        .router(router_dyn)
        .node(NodeInfo {
            name: node_name.clone(),
            cluster_cidrs: vec![args.pod_cidr],
            ..Default::default()
        })
        .config(ProxyConfig {
            min_sync_interval: Duration::from_millis(args.min_sync_period_ms),
            ..Default::default()
        })
        .health(match args.healthz_bind_address.as_str() {
            "" => HealthConfig::default(),
            a => HealthConfig {
                healthz_bind_address: Some(a.parse().context("--healthz-bind-address")?),
                // kube-proxy's 60 s (twice its 30 s --sync-period); the agent resyncs hourly
                health_timeout: Some(node_proxy::healthcheck::DEFAULT_HEALTH_TIMEOUT),
                ..HealthConfig::kube_proxy()
            },
        });
    // cluster mode: FailedToStartServiceHealthcheck Events, and the Node's eligibility
    // (deleted or tainted ToBeDeletedByClusterAutoscaler: /healthz 503) as kube-proxy follows it
    if let Some(c) = &cluster {
        proxy_builder =
            proxy_builder.events(Arc::new(ApiEventRecorder::new(c.client(), &node_name)));
    }
    let mut proxy = proxy_builder.build()?;
    if let Some(c) = &cluster {
        tokio::spawn(
            proxy
                .health()
                .clone()
                .follow_node(c.client(), node_name.clone()),
        );
    }
    let source: Box<dyn ServiceSource> = match (&cluster, &manifests) {
        (Some(c), _) => Box::new(c.service_source()),
        (None, dir) => Box::new(StandaloneServices {
            dir: dir.clone().expect("standalone has a manifest directory"),
            states: states.clone(),
            node: node_name.clone(),
            service_cidr: args.service_cidr,
            endpoints_file: endpoints_file(&args.root),
        }),
    };

    // HTTP
    let listener = tokio::net::TcpListener::bind(args.http_addr)
        .await
        .with_context(|| format!("binding --http-addr {}", args.http_addr))?;
    let app = router(
        HttpState::new(
            Arc::new(StatesProvider(states.clone())),
            &NodeMetrics::default(),
        )
        .node(latest_node)
        // /stats/summary and /metrics/resource (metrics-server), on both ports
        .stats(
            StatsProvider::new(
                rt.clone(),
                Arc::new(HostNodeStats::default()),
                node_name.clone(),
            )
            // the node's fs, the image filesystem, the pods' volumes, logs and ephemeral storage
            .filesystems(StatsFilesystems::of(&node_config))
            .images(images.clone()),
        ),
    );
    // the kubelet's server (node-agent-parts/server.rs): off unless --tls-cert-file is given
    let _kubelet_server = server::start(
        &args.server,
        states.clone(),
        rt.clone(),
        app.clone(),
        server::Authority {
            node_name: &node_name,
            client: cluster.as_ref().map(|c| c.client()),
        },
        token.clone(),
    )
    .await?;
    let http_token = token.clone();
    let http = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(http_token.cancelled_owned())
            .await
    });
    let mode = if cluster.is_some() {
        "cluster"
    } else {
        "standalone"
    };
    tracing::info!(node = %node_name, mode, runtime = %args.runtime, http = %args.http_addr,
        drain_on_exit = args.node.drain_on_exit, "node agent started");

    let k_token = token.clone();
    let kubelet_task = tokio::spawn(async move { kubelet.run(k_token).await });
    let p_token = token.clone();
    let proxy_task = tokio::spawn(async move { proxy.run(source.as_ref(), p_token).await });

    stop.await;
    if args.node.drain_on_exit {
        let budget = node_config.shutdown.budget();
        tracing::info!(?budget, "draining: terminating the pods by priority");
        let _ = drain_tx.send(());
        let mut reports = shutdown_reports.clone();
        let done = tokio::time::timeout(
            budget + Duration::from_secs(10),
            reports.wait_for(Option::is_some),
        )
        .await;
        if !matches!(done, Ok(Ok(_))) {
            tracing::warn!("the graceful shutdown did not finish in its budget");
        }
    } else {
        tracing::info!(
            "stopping the agent; pods, service rules and pod networks keep running for the next agent (--drain-on-exit removes them)"
        );
    }
    token.cancel();
    if let Err(e) = kubelet_task.await? {
        tracing::warn!(error = %e, "kubelet");
    }
    if let Err(e) = proxy_task.await? {
        tracing::warn!(error = %e, "proxy");
    }
    let _ = http.await;
    if args.node.drain_on_exit {
        leave_nothing(rt.as_ref(), &nft, native, &node_config, &args.root).await;
    } else {
        tracing::info!("node agent stopped");
    }
    Ok(())
}

/// A systemd-logind delay inhibitor when graceful node shutdown is configured and logind
/// answers (else graceful shutdown happens with `--drain-on-exit` only).
async fn logind_inhibitor(config: &node_kubelet::node::NodeConfig) -> Option<ShutdownInhibitor> {
    let budget = config.shutdown.budget();
    if budget.is_zero() {
        return None;
    }
    let take = ShutdownInhibitor::system("nodekit node-agent", "terminating pods gracefully");
    match tokio::time::timeout(Duration::from_secs(3), take).await {
        Ok(Ok(i)) => {
            if let Ok(max) = i.max_delay().await
                && max < budget
            {
                tracing::warn!(?budget, logind_max = ?max,
                    "the shutdown budget exceeds logind's InhibitDelayMaxUSec: pods may be cut short");
            }
            tracing::info!(
                ?budget,
                "graceful node shutdown armed (logind delay inhibitor)"
            );
            Some(i)
        }
        Ok(Err(e)) => {
            tracing::info!(error = %e, "no logind inhibitor: graceful node shutdown with --drain-on-exit only");
            None
        }
        Err(_) => {
            tracing::info!(
                "logind did not answer: graceful node shutdown with --drain-on-exit only"
            );
            None
        }
    }
}

/// Where the standalone agent keeps the pods last published as Ready endpoints.
fn endpoints_file(root: &Path) -> PathBuf {
    root.join("proxy/ready-endpoints.json")
}

/// Removes every pod, the service rules, the pod network, pod volumes and cgroups.
async fn leave_nothing(
    rt: &dyn RuntimeBackend,
    nft: &NftablesRouter,
    native: Option<NativeParts>,
    node_config: &node_kubelet::node::NodeConfig,
    root: &Path,
) {
    cleanup::remove_all_pods(rt).await;
    if let Err(e) = nft.cleanup().await {
        tracing::warn!(error = %e, "removing the service rules");
    }
    let _ = std::fs::remove_file(endpoints_file(root));
    if let Some(NativeParts { cni }) = native {
        if let Err(e) = cni.gc(&[]).await {
            tracing::warn!(error = %e, "pod network garbage collection");
        }
        // the bridge plugin's own masquerade table and bridge: the node's pod network is gone
        remove_pod_network(cni.nft_table(), &cni.config().bridge);
    }
    node::remove_node_leftovers(node_config);
    tracing::info!("node agent stopped; nothing left behind");
}

/// Delete the bridge plugin's nftables table and bridge (best effort, reported).
fn remove_pod_network(table: &str, bridge: &str) {
    for (what, cmd, args) in [
        (
            "nftables table",
            "nft",
            vec!["delete", "table", "inet", table],
        ),
        ("bridge", "ip", vec!["link", "del", bridge]),
    ] {
        match std::process::Command::new(cmd).args(&args).output() {
            Ok(o) if o.status.success() => {
                tracing::info!(what, name = args[args.len() - 1], "removed")
            }
            Ok(o) => {
                tracing::warn!(what, stderr = %String::from_utf8_lossy(&o.stderr).trim(), "not removed")
            }
            Err(e) => tracing::warn!(what, error = %e, "could not run {cmd}"),
        }
    }
}

/// Services from the manifest directory, EndpointSlices computed from the kubelet's Ready pods.
///
/// After a restart the kubelet sees adopted pods as not Ready until their readiness probes
/// answer again; the rules of the last agent stay in place meanwhile: the first sync waits until
/// every pod published Ready before (`endpoints_file`, as an API server keeps EndpointSlices
/// across a kubelet restart) is Ready again, at most [`ADOPTION_WAIT`].
struct StandaloneServices {
    dir: PathBuf,
    states: PodStates,
    node: String,
    service_cidr: ipnet::IpNet,
    endpoints_file: PathBuf,
}

/// The longest a restarted agent keeps the last agent's service rules while waiting for the
/// pods they point to to be Ready again.
const ADOPTION_WAIT: Duration = Duration::from_secs(15);

/// The UIDs of the pods that are Ready endpoints in `slices`.
fn ready_endpoint_uids(slices: &[EndpointSlice]) -> std::collections::BTreeSet<String> {
    slices
        .iter()
        .flat_map(|s| &s.endpoints)
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
        .filter_map(|e| e.target_ref.as_ref()?.uid.clone())
        .collect()
}

/// Writes `uids` to `path` (through a rename, so a reader never sees half a file).
fn save_uids(path: &Path, uids: &std::collections::BTreeSet<String>) {
    let tmp = path.with_extension("tmp");
    let r = std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))
        .and_then(|()| std::fs::write(&tmp, serde_json::to_vec(uids).unwrap_or_default()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = r {
        tracing::warn!(path = %path.display(), error = %e, "saving the ready endpoints");
    }
}

impl ServiceSource for StandaloneServices {
    fn name(&self) -> &str {
        "standalone"
    }

    fn watch(&self) -> ServiceStream {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut manifests = ManifestDir::new(self.dir.clone()).watch();
        let states = self.states.clone();
        let node = self.node.clone();
        let cidr = self.service_cidr;
        let file = self.endpoints_file.clone();
        // the pods the last agent published Ready (nothing on a first start)
        let mut held: std::collections::BTreeSet<String> = std::fs::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let hold_until = tokio::time::Instant::now() + ADOPTION_WAIT;
        if !held.is_empty() {
            tracing::info!(
                pods = held.len(),
                "keeping the last service rules until the adopted pods are Ready"
            );
        }
        tokio::spawn(async move {
            let mut services: BTreeMap<(String, String), Service> = BTreeMap::new();
            let mut last: Option<(Vec<Service>, Vec<EndpointSlice>)> = None;
            // recomputed when the kubelet's pods change (readiness, IPs, terminations), when the
            // manifests change, and every second as a fallback
            let mut pods_changed = states.subscribe();
            let mut kubelet_running = true;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    ev = manifests.next() => match ev {
                        None => return,
                        Some(Err(e)) => { if tx.send(Err(e)).is_err() { return } }
                        Some(Ok(ev)) => apply(&mut services, ev),
                    },
                    r = pods_changed.changed(), if kubelet_running => kubelet_running = r.is_ok(),
                    _ = tick.tick() => {}
                }
                let svcs: Vec<Service> = services
                    .values()
                    .filter(|s| in_range(s, cidr))
                    .cloned()
                    .collect();
                let slices = compute_slices(&svcs, &states, &node);
                let ready = ready_endpoint_uids(&slices);
                if !held.is_empty() {
                    if !held.is_subset(&ready) && tokio::time::Instant::now() < hold_until {
                        continue;
                    }
                    tracing::info!(
                        ready = ready.len(),
                        "adopted pods Ready: service rules follow the kubelet"
                    );
                    held.clear();
                }
                if last.as_ref() != Some(&(svcs.clone(), slices.clone())) {
                    save_uids(&file, &ready);
                    last = Some((svcs.clone(), slices.clone()));
                    let ev = ServiceEvent::Snapshot {
                        services: Some(svcs),
                        slices: Some(slices),
                    };
                    if tx.send(Ok(ev)).is_err() {
                        return;
                    }
                }
            }
        });
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) })
            .boxed()
    }
}

fn key(m: &ObjectMeta) -> (String, String) {
    (
        m.namespace.clone().unwrap_or_else(|| "default".into()),
        m.name.clone().unwrap_or_default(),
    )
}

fn apply(services: &mut BTreeMap<(String, String), Service>, ev: ServiceEvent) {
    match ev {
        ServiceEvent::Snapshot {
            services: Some(list),
            ..
        } => {
            *services = list.into_iter().map(|s| (key(&s.metadata), s)).collect();
        }
        ServiceEvent::ServiceApplied(s) => {
            services.insert(key(&s.metadata), *s);
        }
        ServiceEvent::ServiceDeleted(s) => {
            services.remove(&key(&s.metadata));
        }
        _ => {}
    }
}

/// A ClusterIP outside `--service-cidr` is reported and the Service left out.
fn in_range(s: &Service, cidr: ipnet::IpNet) -> bool {
    let ip = s.spec.as_ref().and_then(|sp| sp.cluster_ip.as_deref());
    match ip.map(str::parse::<std::net::IpAddr>) {
        Some(Ok(ip)) if !cidr.contains(&ip) => {
            tracing::warn!(service = ?key(&s.metadata), %ip, %cidr, "clusterIP outside --service-cidr; service left out");
            false
        }
        _ => true,
    }
}

/// One EndpointSlice per Service with a selector: its matching local pods that have an IP.
fn compute_slices(services: &[Service], states: &PodStates, node: &str) -> Vec<EndpointSlice> {
    let pods = states.pods();
    let mut out = vec![];
    for svc in services {
        let (ns, name) = key(&svc.metadata);
        let Some(spec) = svc.spec.as_ref() else {
            continue;
        };
        let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) else {
            continue;
        };
        let mut endpoints = vec![];
        let mut matched: Vec<&Pod> = vec![];
        for st in &pods {
            let meta = &st.pod.metadata;
            if meta.namespace.as_deref().unwrap_or("default") != ns {
                continue;
            }
            let labels = meta.labels.clone().unwrap_or_default();
            if !selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
                continue;
            }
            let Some(ip) = st.status.as_ref().and_then(|s| s.pod_ip.clone()) else {
                continue;
            };
            let ready = st.is_ready();
            let terminating = meta.deletion_timestamp.is_some();
            endpoints.push(Endpoint {
                addresses: vec![ip],
                conditions: Some(EndpointConditions {
                    ready: Some(ready && !terminating),
                    serving: Some(ready),
                    terminating: Some(terminating),
                }),
                node_name: Some(node.to_string()),
                target_ref: Some(node_core::k8s_openapi::api::core::v1::ObjectReference {
                    kind: Some("Pod".into()),
                    namespace: Some(ns.clone()),
                    name: meta.name.clone(),
                    uid: meta.uid.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            });
            matched.push(&st.pod);
        }
        let ports = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                let target = p.target_port.clone().unwrap_or(IntOrString::Int(p.port));
                let number = match &target {
                    IntOrString::Int(n) => Some(*n),
                    // a named port: the first matching pod's container port of that name
                    IntOrString::String(n) => matched.iter().find_map(|pod| {
                        pod.spec.as_ref()?.containers.iter().find_map(|c| {
                            c.ports
                                .iter()
                                .flatten()
                                .find(|cp| cp.name.as_deref() == Some(n.as_str()))
                                .map(|cp| cp.container_port)
                        })
                    }),
                }?;
                Some(EndpointPort {
                    name: Some(p.name.clone().unwrap_or_default()),
                    port: Some(number),
                    protocol: Some(p.protocol.clone().unwrap_or_else(|| "TCP".into())),
                    app_protocol: p.app_protocol.clone(),
                })
            })
            .collect::<Vec<_>>();
        out.push(EndpointSlice {
            metadata: ObjectMeta {
                name: Some(format!("{name}-standalone")),
                namespace: Some(ns.clone()),
                labels: Some(BTreeMap::from([
                    ("kubernetes.io/service-name".to_string(), name.clone()),
                    (
                        "endpointslice.kubernetes.io/managed-by".to_string(),
                        "nodekit-node-agent".to_string(),
                    ),
                ])),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints,
            ports: Some(ports),
        });
    }
    out
}
