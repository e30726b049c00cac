//! The node agent's node layer: node-kubelet's [`NodeManager`] (admission against allocatable,
//! QoS pod cgroups, pod volumes under `<root>/kubelet`, eviction, graceful node shutdown,
//! container log rotation) set up from kubelet-named flags, the configMaps and secrets its
//! volumes and environment read (from the manifest directory standalone, in cluster mode those
//! its pods reference, watched one by one on the API server), and the removal of what pods
//! leave on the node when the agent is asked to leave nothing behind.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use anyhow::Context;
use node_core::k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use node_kubelet::node::NodeConfig;
use node_kubelet::node::allocatable::{AllocatableConfig, Reserved};
use node_kubelet::node::cgroups::{CgroupConfig, PodCgroups};
use node_kubelet::node::eviction::{EvictionConfig, parse_duration, parse_thresholds};
use node_kubelet::node::logrotate::ContainerLogConfig;
use node_kubelet::node::objects::{ApiObjectStore, secret_data};
use node_kubelet::node::quantity;
use node_kubelet::node::shutdown::ShutdownConfig;
use node_kubelet::node::volumes::{ObjectStore, ObjectStoreError, VolumeConfig, VolumeManager};
use node_kubelet::{CancellationToken, ValueStore};

/// The node flags, named as kubelet's.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeFlags {
    /// The most pods this node runs (kubelet's `--max-pods`); more are rejected with `OutOfpods`.
    #[arg(long, default_value_t = 110)]
    pub max_pods: i64,
    /// Hard eviction thresholds, subtracted from allocatable too (kubelet's `--eviction-hard`;
    /// default `memory.available<100Mi,nodefs.available<10%,nodefs.inodesFree<5%,imagefs.available<15%`).
    #[arg(long)]
    pub eviction_hard: Option<String>,
    /// How often eviction thresholds are checked (kubelet's `evictionMonitoringPeriod`).
    #[arg(long, default_value = "10s")]
    pub eviction_monitoring_period: String,
    /// Resources kept for the operating system: `cpu=500m,memory=1Gi,ephemeral-storage=1Gi`.
    #[arg(long, default_value = "")]
    pub system_reserved: String,
    /// Resources kept for the agent and the runtime, same form as `--system-reserved`.
    #[arg(long, default_value = "")]
    pub kube_reserved: String,
    /// One cgroup per pod under `<cgroup-root>/kubepods/{burstable,besteffort}` (kubelet's
    /// `--cgroups-per-qos`; needs root).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub cgroups_per_qos: bool,
    /// The cgroup the `kubepods` hierarchy goes under (kubelet's `--cgroup-root`).
    #[arg(long, default_value = "/")]
    pub cgroup_root: String,
    /// The cgroup driver: `cgroupfs` (paths) only.
    #[arg(long, default_value = "cgroupfs", value_parser = ["cgroupfs"])]
    pub cgroup_driver: String,
    /// Graceful node shutdown: the time pods get when the machine shuts down (through a
    /// systemd-logind delay inhibitor) or with `--drain-on-exit` (kubelet's
    /// `--shutdown-grace-period`; `0s`: off).
    #[arg(long, default_value = "0s")]
    pub shutdown_grace_period: String,
    /// Of `--shutdown-grace-period`, the time kept for system-critical pods (kubelet's
    /// `--shutdown-grace-period-critical-pods`).
    #[arg(long, default_value = "0s")]
    pub shutdown_grace_period_critical_pods: String,
    /// On SIGTERM or Ctrl-C, terminate every pod by priority (the graceful node shutdown; 30 s
    /// budget without `--shutdown-grace-period`), then remove the pods, the service rules, the
    /// pod network, volumes and cgroups: the agent leaves nothing behind. Without it the agent
    /// exits alone, as kubelet does, and the next agent adopts the running pods.
    #[arg(long)]
    pub drain_on_exit: bool,
    /// Container log rotation, kubelet's flags: `--container-log-max-size` and friends.
    #[command(flatten)]
    pub container_logs: ContainerLogFlags,
}

/// Container log rotation (kubelet's `--container-log-*` flags and defaults).
#[derive(Debug, Clone, clap::Args)]
pub struct ContainerLogFlags {
    /// The size at which a container's log is rotated, a quantity (`10Mi`; negative: off).
    #[arg(long, default_value = "10Mi", allow_hyphen_values = true)]
    pub container_log_max_size: String,
    /// The most log files a container keeps, the current one included (at least 2).
    #[arg(long, default_value_t = 5)]
    pub container_log_max_files: usize,
    /// How many containers' logs are rotated at once.
    #[arg(long, default_value_t = 1)]
    pub container_log_max_workers: usize,
    /// How often the logs are looked at for rotation.
    #[arg(long, default_value = "10s")]
    pub container_log_monitor_interval: String,
}

impl ContainerLogFlags {
    /// The rotation settings, checked as kubelet checks them.
    pub fn config(&self) -> anyhow::Result<ContainerLogConfig> {
        let size = &self.container_log_max_size;
        let config = ContainerLogConfig {
            max_size: quantity::value(size)
                .map_err(|e| anyhow::anyhow!("--container-log-max-size {size:?}: {e}"))?,
            max_files: self.container_log_max_files,
            max_workers: self.container_log_max_workers,
            monitor_interval: duration(
                "container-log-monitor-interval",
                &self.container_log_monitor_interval,
            )?,
        };
        config.validate()?;
        Ok(config)
    }
}

fn duration(flag: &str, text: &str) -> anyhow::Result<Duration> {
    parse_duration(text).map_err(|e| anyhow::anyhow!("--{flag} {text:?}: {e}"))
}

/// Parses `cpu=500m,memory=1Gi,ephemeral-storage=1Gi` (kubelet's reserved flags).
pub fn parse_reserved(flag: &str, text: &str) -> anyhow::Result<Reserved> {
    let mut r = Reserved::default();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .with_context(|| format!("--{flag} {part:?}: expected RESOURCE=QUANTITY"))?;
        let bad = |e: quantity::QuantityError| anyhow::anyhow!("--{flag} {part:?}: {e}");
        match k.trim() {
            "cpu" => r.cpu_milli = quantity::milli_value(v.trim()).map_err(bad)?,
            "memory" => r.memory_bytes = quantity::value(v.trim()).map_err(bad)?,
            "ephemeral-storage" => {
                r.ephemeral_storage_bytes = quantity::value(v.trim()).map_err(bad)?
            }
            other => anyhow::bail!(
                "--{flag} {part:?}: unknown resource {other:?} (cpu, memory, ephemeral-storage)"
            ),
        }
    }
    Ok(r)
}

/// The kubelet directory under the agent's root: volumes, and the filesystem of allocatable
/// ephemeral storage and of the nodefs eviction signals.
pub fn kubelet_dir(root: &Path) -> PathBuf {
    root.join("kubelet")
}

fn cgroup_config(flags: &NodeFlags) -> anyhow::Result<CgroupConfig> {
    let parent = flags.cgroup_root.trim_matches('/');
    let root = if parent.is_empty() {
        "kubepods".to_string()
    } else {
        format!("{parent}/kubepods")
    };
    Ok(CgroupConfig::default().root(root))
}

/// The node manager's configuration from the flags. `cgroups`: whether pod cgroups are managed
/// (root, and `--cgroups-per-qos`).
pub fn node_config(
    flags: &NodeFlags,
    root: &Path,
    node_name: &str,
    cgroups: bool,
) -> anyhow::Result<NodeConfig> {
    let hard = match &flags.eviction_hard {
        Some(text) => {
            parse_thresholds(text).map_err(|e| anyhow::anyhow!("--eviction-hard: {e}"))?
        }
        None => node_kubelet::node::eviction::default_hard_thresholds(),
    };
    let dir = kubelet_dir(root);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    anyhow::ensure!(
        flags.max_pods > 0,
        "--max-pods {}: must be positive",
        flags.max_pods
    );
    let grace = duration("shutdown-grace-period", &flags.shutdown_grace_period)?;
    let critical = duration(
        "shutdown-grace-period-critical-pods",
        &flags.shutdown_grace_period_critical_pods,
    )?;
    anyhow::ensure!(
        critical <= grace,
        "--shutdown-grace-period-critical-pods ({critical:?}) exceeds --shutdown-grace-period ({grace:?})"
    );
    let shutdown = if !grace.is_zero() {
        ShutdownConfig::from_total(grace, critical)
    } else if flags.drain_on_exit {
        ShutdownConfig::from_total(Duration::from_secs(30), Duration::from_secs(10))
    } else {
        ShutdownConfig::default()
    };
    let mut config = NodeConfig::new(node_name);
    config.allocatable = AllocatableConfig {
        root_dir: dir.clone(),
        max_pods: flags.max_pods,
        kube_reserved: parse_reserved("kube-reserved", &flags.kube_reserved)?,
        system_reserved: parse_reserved("system-reserved", &flags.system_reserved)?,
        hard_eviction: hard.clone(),
    };
    config.cgroups = if cgroups {
        Some(cgroup_config(flags)?)
    } else {
        None
    };
    config.volumes = VolumeConfig {
        root_dir: dir,
        node_name: node_name.to_string(),
        ..Default::default()
    };
    config.eviction = Some(EvictionConfig {
        thresholds: hard,
        ..Default::default()
    });
    config.eviction_interval = duration(
        "eviction-monitoring-period",
        &flags.eviction_monitoring_period,
    )?;
    config.shutdown = shutdown;
    config.container_logs = Some(flags.container_logs.config()?);
    Ok(config)
}

/// Removes what pods leave on the node besides the runtime's part (call after every pod is
/// removed from the runtime): their volumes (tmpfs mounts included) and the pod cgroup
/// hierarchy.
pub fn remove_node_leftovers(config: &NodeConfig) {
    let volumes = VolumeManager::new(config.volumes.clone(), Arc::new(Objects::default()));
    let pods = config.volumes.root_dir.join("pods");
    for e in std::fs::read_dir(&pods).into_iter().flatten().flatten() {
        let uid = e.file_name().to_string_lossy().into_owned();
        if let Err(e) = volumes.teardown_pod(&uid) {
            tracing::warn!(pod = %uid, error = %e, "removing a pod's volumes");
        }
    }
    if let Some(c) = &config.cgroups {
        match PodCgroups::new(c.clone()).and_then(|cg| cg.destroy()) {
            Ok(()) => tracing::info!(root = %c.root, "pod cgroups removed"),
            Err(e) => tracing::warn!(root = %c.root, error = %e, "removing the pod cgroups"),
        }
    }
}

/// configMaps and secrets for pod volumes ([`ObjectStore`]) and environment ([`ValueStore`]):
/// those of the manifest directory held in memory, or in cluster mode those the pods reference
/// on the API server.
#[derive(Default)]
pub struct Objects {
    config_maps: RwLock<BTreeMap<(String, String), ConfigMap>>,
    secrets: RwLock<BTreeMap<(String, String), Secret>>,
    api: OnceLock<Arc<ApiObjectStore>>,
}

fn key(
    m: &node_core::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> (String, String) {
    (
        m.namespace.clone().unwrap_or_else(|| "default".into()),
        m.name.clone().unwrap_or_default(),
    )
}

impl Objects {
    /// Replaces the contents; whether anything changed.
    pub fn replace(&self, cms: Vec<ConfigMap>, secrets: Vec<Secret>) -> bool {
        let cms: BTreeMap<_, _> = cms.into_iter().map(|c| (key(&c.metadata), c)).collect();
        let secrets: BTreeMap<_, _> = secrets.into_iter().map(|s| (key(&s.metadata), s)).collect();
        let mut a = self.config_maps.write().expect("lock");
        let mut b = self.secrets.write().expect("lock");
        let changed = *a != cms || *b != secrets;
        *a = cms;
        *b = secrets;
        changed
    }

    /// Reads every ConfigMap and Secret of the manifest directory `dir` (other kinds are the
    /// pod and service sources' business); a bad document is reported and skipped.
    pub fn read_dir(dir: &Path) -> (Vec<ConfigMap>, Vec<Secret>, Vec<String>) {
        let (mut cms, mut secrets, mut errors) = (vec![], vec![], vec![]);
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                !p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                    && p.extension()
                        .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
            })
            .collect();
        files.sort();
        for path in files {
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            let mut docs = vec![String::new()];
            for line in text.split_inclusive('\n') {
                if line.starts_with("---") {
                    docs.push(String::new());
                } else {
                    docs.last_mut().expect("never empty").push_str(line);
                }
            }
            for (i, doc) in docs.iter().enumerate() {
                if doc
                    .lines()
                    .all(|l| l.trim().is_empty() || l.trim().starts_with('#'))
                {
                    continue;
                }
                let v: serde_json::Value = match serde_saphyr::from_str(doc) {
                    Ok(v) => v,
                    Err(_) => continue, // the pod source reports unreadable documents
                };
                let what = format!("{} document {i}", path.display());
                match v["kind"].as_str() {
                    Some("ConfigMap") => match serde_json::from_value(v) {
                        Ok(c) => cms.push(c),
                        Err(e) => errors.push(format!("{what}: ConfigMap: {e}")),
                    },
                    Some("Secret") => match serde_json::from_value(v) {
                        Ok(s) => secrets.push(s),
                        Err(e) => errors.push(format!("{what}: Secret: {e}")),
                    },
                    _ => {}
                }
            }
        }
        (cms, secrets, errors)
    }

    /// Keeps the contents equal to the ConfigMaps and Secrets of `dir`, rescanned every second
    /// (a changed configMap reaches mounted files at the pod's next sync), until `token` is
    /// cancelled.
    pub fn follow_dir(self: &Arc<Self>, dir: PathBuf, token: CancellationToken) {
        let this = self.clone();
        let mut last_errors = vec![];
        let mut scan = move || {
            let (cms, secrets, errors) = Self::read_dir(&dir);
            if errors != last_errors {
                for e in &errors {
                    tracing::warn!(error = %e, "manifest left out");
                }
                last_errors = errors;
            }
            let n = (cms.len(), secrets.len());
            if this.replace(cms, secrets) {
                tracing::info!(
                    config_maps = n.0,
                    secrets = n.1,
                    "configMaps and secrets read"
                );
            }
        };
        scan();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tick.tick() => scan(),
                }
            }
        });
    }

    /// Cluster mode: from now on the contents are the API server's configMaps and secrets
    /// that the registered pods reference, each watched by its name (node-kubelet's
    /// [`ApiObjectStore`]: what a node authorizer admits, not the cluster's every secret),
    /// until `token` is cancelled.
    pub fn follow_api(self: &Arc<Self>, client: kube::Client, token: CancellationToken) {
        let store = Arc::new(ApiObjectStore::new(client));
        if self.api.set(store.clone()).is_err() {
            tracing::warn!("configMaps and secrets already followed on an API server");
            return;
        }
        tokio::spawn(async move {
            token.cancelled().await;
            store.stop();
        });
    }
}

#[async_trait::async_trait]
impl ObjectStore for Objects {
    fn config_map(&self, namespace: &str, name: &str) -> Option<ConfigMap> {
        if let Some(api) = self.api.get() {
            return ObjectStore::config_map(&**api, namespace, name);
        }
        let k = (namespace.to_string(), name.to_string());
        self.config_maps.read().expect("lock").get(&k).cloned()
    }
    fn secret(&self, namespace: &str, name: &str) -> Option<Secret> {
        if let Some(api) = self.api.get() {
            return ObjectStore::secret(&**api, namespace, name);
        }
        let k = (namespace.to_string(), name.to_string());
        self.secrets.read().expect("lock").get(&k).cloned()
    }
    async fn register_pod(&self, pod: &Pod) -> Result<(), ObjectStoreError> {
        match self.api.get() {
            Some(api) => api.register_pod(pod).await,
            None => Ok(()),
        }
    }
    fn unregister_pod(&self, pod: &Pod) {
        if let Some(api) = self.api.get() {
            api.unregister_pod(pod);
        }
    }
}

impl ValueStore for Objects {
    fn config_map(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, String>> {
        let cm = ObjectStore::config_map(self, namespace, name)?;
        Some(cm.data.unwrap_or_default())
    }
    fn secret(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        ObjectStore::secret(self, namespace, name).map(secret_data)
    }
}
