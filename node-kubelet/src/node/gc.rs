//! Garbage collection of node-level disk, as kubelet does it: unused images
//! ([`ImageGcManager`]: above `imageGCHighThresholdPercent` of the image filesystem, free down to
//! `imageGCLowThresholdPercent`, least recently used first, never an image a container uses,
//! never one younger than `imageMinimumGCAge`) and dead containers ([`ContainerGcManager`]: keep
//! the newest `maxPerPodContainer` dead instances per container of a pod, older than `minAge`,
//! everything of deleted pods, never a running container).
//!
//! Both work through node-core's [`ImageBackend`] and [`RuntimeBackend`], so they run against the
//! native runtime's image store and against containerd through the CRI client alike. They run
//! periodically ([`GcConfig`]: images every 5 min, containers every minute) and, through the
//! eviction manager's [`ImageGc`] and [`ContainerGc`] hooks, before pods are evicted for disk
//! pressure.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use node_core::{ImageBackend, RuntimeBackend, RuntimeError, cri};
use tokio::time::Instant;

use super::allocatable::fs_stats;
use super::eviction::{ContainerGc, EvictionError, ImageGc};
use crate::labels;

/// Image garbage collection policy (kubelet's `imageGC*` settings).
#[derive(Debug, Clone, PartialEq)]
pub struct ImageGcPolicy {
    /// Image filesystem usage (percent) at or above which images are collected (85).
    pub high_threshold_percent: u8,
    /// Usage (percent) collection frees down to (80).
    pub low_threshold_percent: u8,
    /// How long an image must have been known before it may be removed (2 min).
    pub min_age: Duration,
}

impl Default for ImageGcPolicy {
    fn default() -> Self {
        Self {
            high_threshold_percent: 85,
            low_threshold_percent: 80,
            min_age: Duration::from_secs(120),
        }
    }
}

/// Dead-container garbage collection policy (kubelet's `--minimum-container-ttl-duration`,
/// `--maximum-dead-containers-per-container`, `--maximum-dead-containers`).
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerGcPolicy {
    /// How long after its creation a dead container may be removed (0).
    pub min_age: Duration,
    /// Dead instances kept per container of a pod (1); negative: no limit.
    pub max_per_pod_container: i32,
    /// Dead containers kept on the node in total; negative: no limit (-1).
    pub max_containers: i32,
}

impl Default for ContainerGcPolicy {
    fn default() -> Self {
        Self {
            min_age: Duration::ZERO,
            max_per_pod_container: 1,
            max_containers: -1,
        }
    }
}

/// Garbage collection of the node: policies and periods.
#[derive(Debug, Clone, PartialEq)]
pub struct GcConfig {
    /// Whether the node manager collects garbage at all, periodically and before evictions for
    /// disk pressure (on, as kubelet).
    pub enabled: bool,
    /// Images.
    pub image: ImageGcPolicy,
    /// Dead containers and sandboxes.
    pub container: ContainerGcPolicy,
    /// How often image GC runs (kubelet: 5 min).
    pub image_gc_period: Duration,
    /// How often container GC runs (kubelet: 1 min).
    pub container_gc_period: Duration,
    /// The image filesystem when the runtime does not answer `ImageFsInfo` (the runtime's
    /// answer wins when it has one); also where the node manager observes `imagefs.*` signals
    /// (unset: the same filesystem as nodefs).
    pub image_fs: Option<PathBuf>,
}

impl Default for GcConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            image: ImageGcPolicy::default(),
            container: ContainerGcPolicy::default(),
            image_gc_period: Duration::from_secs(300),
            container_gc_period: Duration::from_secs(60),
            image_fs: None,
        }
    }
}

/// A garbage collection failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GcError {
    /// The runtime failed a call.
    #[error("{call}: {source}")]
    Runtime {
        /// The CRI call (`ListImages`, `RemoveImage sha256:..`, `ListContainers`...).
        call: String,
        /// The runtime's error.
        #[source]
        source: RuntimeError,
    },
    /// The image filesystem's size could not be read.
    #[error("image filesystem {path}: {reason}")]
    ImageFs {
        /// The filesystem (mountpoint) asked about.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// Not enough unused images could be removed.
    #[error(
        "failed to garbage collect required amount of images: wanted to free {wanted} bytes, but freed {freed} bytes"
    )]
    NotEnoughFreed {
        /// Bytes to free to reach the low threshold.
        wanted: u64,
        /// Bytes freed.
        freed: u64,
    },
    /// A threshold is out of range.
    #[error("image GC thresholds: {0}")]
    Policy(String),
}

fn rt(call: impl Into<String>) -> impl FnOnce(RuntimeError) -> GcError {
    let call = call.into();
    move |source| GcError::Runtime { call, source }
}

/// The size of a filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsUsage {
    /// Capacity in bytes.
    pub capacity_bytes: u64,
    /// Bytes available.
    pub available_bytes: u64,
}

/// Where the image filesystem's size comes from: [`RuntimeImageFs`], or a fake in logic tests.
#[async_trait]
pub trait ImageFs: Send + Sync {
    /// Capacity and availability of the filesystem images are stored on.
    async fn usage(&self) -> Result<FsUsage, GcError>;
}

/// The real image filesystem: the mountpoint the runtime names in `ImageFsInfo` (or the
/// configured directory when the runtime does not implement it), measured with statvfs.
pub struct RuntimeImageFs {
    /// The runtime's image service.
    pub images: Arc<dyn ImageBackend>,
    /// The directory to measure when the runtime does not say.
    pub fallback: Option<PathBuf>,
}

#[async_trait]
impl ImageFs for RuntimeImageFs {
    async fn usage(&self) -> Result<FsUsage, GcError> {
        let path = match self.images.image_fs_info().await {
            Ok(info) => info
                .image_filesystems
                .into_iter()
                .filter_map(|f| f.fs_id.map(|id| id.mountpoint))
                .find(|m| !m.is_empty())
                .map(PathBuf::from)
                .or_else(|| self.fallback.clone()),
            Err(RuntimeError::Unimplemented(_)) => self.fallback.clone(),
            Err(e) => return Err(rt("ImageFsInfo")(e)),
        };
        let path = path.ok_or_else(|| GcError::ImageFs {
            path: String::new(),
            reason: "the runtime names no image filesystem and none is configured".into(),
        })?;
        let s = fs_stats(&path).map_err(|e| GcError::ImageFs {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Ok(FsUsage {
            capacity_bytes: s.capacity_bytes.max(0) as u64,
            available_bytes: s.available_bytes.max(0) as u64,
        })
    }
}

#[derive(Debug, Clone)]
struct ImageRecord {
    first_detected: Instant,
    /// `None`: never seen in use since detected (collected before any used image).
    last_used: Option<Instant>,
    size: u64,
    names: Vec<String>,
}

/// What one image collection did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageGcReport {
    /// The image ids removed, in order.
    pub removed: Vec<String>,
    /// Bytes freed (the images' sizes as the runtime reports them).
    pub freed_bytes: u64,
}

/// Image garbage collection over an [`ImageBackend`], with the containers of a
/// [`RuntimeBackend`] telling which images are in use.
pub struct ImageGcManager {
    policy: ImageGcPolicy,
    images: Arc<dyn ImageBackend>,
    runtime: Arc<dyn RuntimeBackend>,
    fs: Arc<dyn ImageFs>,
    records: Mutex<HashMap<String, ImageRecord>>,
    /// Serializes collections (the periodic one and the eviction manager's).
    running: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for ImageGcManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageGcManager")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// Whether a container uses an image (by id, image reference or any of its names).
fn uses(c: &cri::Container, id: &str, names: &[String]) -> bool {
    let spec = c.image.as_ref().map(|i| i.image.as_str()).unwrap_or("");
    let candidates = [c.image_ref.as_str(), c.image_id.as_str(), spec];
    candidates
        .iter()
        .filter(|s| !s.is_empty())
        .any(|s| *s == id || names.iter().any(|n| n == s) || strip_digest(s) == strip_digest(id))
}

fn strip_digest(s: &str) -> &str {
    s.strip_prefix("sha256:").unwrap_or(s)
}

impl ImageGcManager {
    /// A manager with its policy; checks the thresholds (`0 <= low <= high <= 100`).
    pub fn new(
        policy: ImageGcPolicy,
        images: Arc<dyn ImageBackend>,
        runtime: Arc<dyn RuntimeBackend>,
        fs: Arc<dyn ImageFs>,
    ) -> Result<Self, GcError> {
        if policy.high_threshold_percent > 100
            || policy.low_threshold_percent > policy.high_threshold_percent
        {
            return Err(GcError::Policy(format!(
                "low {}% and high {}% must satisfy low <= high <= 100",
                policy.low_threshold_percent, policy.high_threshold_percent
            )));
        }
        Ok(Self {
            policy,
            images,
            runtime,
            fs,
            records: Mutex::new(HashMap::new()),
            running: tokio::sync::Mutex::new(()),
        })
    }

    /// Lists images and containers: records newly seen images, marks the ones in use now.
    /// Returns the ids in use.
    async fn detect(&self, now: Instant) -> Result<HashSet<String>, GcError> {
        let images = self
            .images
            .list_images(None)
            .await
            .map_err(rt("ListImages"))?;
        let containers = self
            .runtime
            .list_containers(None)
            .await
            .map_err(rt("ListContainers"))?;
        let mut in_use = HashSet::new();
        let mut records = self.records.lock().expect("image records lock");
        let present: HashSet<&str> = images.iter().map(|i| i.id.as_str()).collect();
        records.retain(|id, _| present.contains(id.as_str()));
        for img in &images {
            let mut names = img.repo_tags.clone();
            names.extend(img.repo_digests.iter().cloned());
            let used = img.pinned || containers.iter().any(|c| uses(c, &img.id, &names));
            let r = records.entry(img.id.clone()).or_insert(ImageRecord {
                first_detected: now,
                last_used: None,
                size: img.size,
                names: names.clone(),
            });
            r.size = img.size;
            r.names = names;
            if used {
                r.last_used = Some(now);
                in_use.insert(img.id.clone());
            }
        }
        Ok(in_use)
    }

    /// Removes unused images, least recently used first, until `bytes_to_free` are freed.
    async fn free_space(&self, bytes_to_free: u64, now: Instant) -> Result<ImageGcReport, GcError> {
        let in_use = self.detect(now).await?;
        let mut candidates: Vec<(String, ImageRecord)> = self
            .records
            .lock()
            .expect("image records lock")
            .iter()
            .filter(|(id, _)| !in_use.contains(*id))
            .map(|(id, r)| (id.clone(), r.clone()))
            .collect();
        // least recently used first (never used before any used one), then oldest detected
        candidates.sort_by(|a, b| {
            (a.1.last_used, a.1.first_detected, &a.0).cmp(&(
                b.1.last_used,
                b.1.first_detected,
                &b.0,
            ))
        });
        let mut report = ImageGcReport::default();
        for (id, r) in candidates {
            if report.freed_bytes >= bytes_to_free {
                break;
            }
            if now.duration_since(r.first_detected) < self.policy.min_age {
                tracing::debug!(image = %id, "image too young to be collected");
                continue;
            }
            tracing::info!(image = %id, names = ?r.names, size = r.size, "removing unused image");
            let spec = cri::ImageSpec {
                image: id.clone(),
                ..Default::default()
            };
            self.images
                .remove_image(spec)
                .await
                .map_err(rt(format!("RemoveImage {id}")))?;
            self.records.lock().expect("image records lock").remove(&id);
            report.freed_bytes += r.size;
            report.removed.push(id);
        }
        Ok(report)
    }

    /// One periodic collection: when the image filesystem is at or above the high threshold,
    /// frees down to the low one. Fails when not enough unused images could go.
    pub async fn garbage_collect(&self) -> Result<ImageGcReport, GcError> {
        let _one = self.running.lock().await;
        let now = Instant::now();
        let fs = self.fs.usage().await?;
        if fs.capacity_bytes == 0 {
            // still record what is in use, so ages and last use stay right
            self.detect(now).await?;
            return Ok(ImageGcReport::default());
        }
        let used = fs.capacity_bytes.saturating_sub(fs.available_bytes);
        let usage_percent = used * 100 / fs.capacity_bytes;
        if usage_percent < u64::from(self.policy.high_threshold_percent) {
            self.detect(now).await?;
            return Ok(ImageGcReport::default());
        }
        let low_target = fs.capacity_bytes * u64::from(self.policy.low_threshold_percent) / 100;
        let wanted = used.saturating_sub(low_target);
        tracing::info!(
            usage_percent,
            high = self.policy.high_threshold_percent,
            wanted,
            "image filesystem above the high threshold: collecting images"
        );
        let report = self.free_space(wanted, now).await?;
        if report.freed_bytes < wanted {
            return Err(GcError::NotEnoughFreed {
                wanted,
                freed: report.freed_bytes,
            });
        }
        Ok(report)
    }

    /// Removes every unused image old enough (the eviction manager's reclaim under disk
    /// pressure).
    pub async fn delete_unused(&self) -> Result<ImageGcReport, GcError> {
        let _one = self.running.lock().await;
        self.free_space(u64::MAX, Instant::now()).await
    }
}

#[async_trait]
impl ImageGc for ImageGcManager {
    async fn delete_unused_images(&self) -> Result<u64, EvictionError> {
        self.delete_unused()
            .await
            .map(|r| r.freed_bytes)
            .map_err(|e| EvictionError::Gc {
                hook: "image",
                reason: e.to_string(),
            })
    }
}

/// Which pods the kubelet has: a container or sandbox of a pod it does not have belongs to a
/// deleted pod (once every source delivered its pods).
pub trait PodPresence: Send + Sync {
    /// Whether every pod source delivered its pods; before, a missing pod is not a deleted one.
    fn sources_ready(&self) -> bool;
    /// Whether the kubelet has the pod with this UID.
    fn has_pod(&self, uid: &str) -> bool;
}

/// What one container collection removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerGcReport {
    /// The container ids removed.
    pub containers: Vec<String>,
    /// The sandbox ids removed.
    pub sandboxes: Vec<String>,
}

/// Dead-container and sandbox garbage collection over a [`RuntimeBackend`].
pub struct ContainerGcManager {
    policy: ContainerGcPolicy,
    runtime: Arc<dyn RuntimeBackend>,
    pods: Arc<dyn PodPresence>,
    running: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for ContainerGcManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerGcManager")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn pod_uid(labels_map: &HashMap<String, String>, meta_uid: Option<&str>) -> Option<String> {
    labels_map
        .get(labels::POD_UID)
        .cloned()
        .or_else(|| meta_uid.filter(|u| !u.is_empty()).map(str::to_string))
}

impl ContainerGcManager {
    /// A manager with its policy.
    pub fn new(
        policy: ContainerGcPolicy,
        runtime: Arc<dyn RuntimeBackend>,
        pods: Arc<dyn PodPresence>,
    ) -> Self {
        Self {
            policy,
            runtime,
            pods,
            running: tokio::sync::Mutex::new(()),
        }
    }

    async fn remove_container(&self, id: &str, report: &mut ContainerGcReport) {
        match super::logrotate::remove_container_and_logs(&*self.runtime, id).await {
            Ok(()) => report.containers.push(id.to_string()),
            Err(e) => tracing::warn!(container = %id, error = %e, "cannot remove a dead container"),
        }
    }

    /// One collection: dead containers beyond the policy, every dead container and stopped
    /// sandbox of deleted pods, and stopped sandboxes with no container left but the newest of
    /// each pod. A running container or a ready sandbox is never touched.
    pub async fn garbage_collect(&self) -> Result<ContainerGcReport, GcError> {
        let _one = self.running.lock().await;
        let mut report = ContainerGcReport::default();
        let sources_ready = self.pods.sources_ready();
        let deleted = |uid: &str| sources_ready && !self.pods.has_pod(uid);
        let newest_gc_time = now_ns() - self.policy.min_age.as_nanos() as i64;

        let containers = self
            .runtime
            .list_containers(None)
            .await
            .map_err(rt("ListContainers"))?;
        // evictable units: (pod uid, container name) -> dead containers, newest first
        let mut units: BTreeMap<(String, String), Vec<&cri::Container>> = BTreeMap::new();
        for c in &containers {
            if c.state == cri::ContainerState::ContainerRunning as i32 {
                continue;
            }
            if c.created_at > newest_gc_time {
                continue;
            }
            let meta = c.metadata.as_ref();
            let Some(uid) = pod_uid(&c.labels, None) else {
                continue; // not a kubelet container: not ours to collect
            };
            let name = c
                .labels
                .get(labels::CONTAINER_NAME)
                .cloned()
                .or_else(|| meta.map(|m| m.name.clone()))
                .unwrap_or_default();
            units.entry((uid, name)).or_default().push(c);
        }
        for v in units.values_mut() {
            v.sort_by_key(|c| {
                (
                    std::cmp::Reverse(c.metadata.as_ref().map(|m| m.attempt).unwrap_or(0)),
                    std::cmp::Reverse(c.created_at),
                )
            });
        }
        // deleted pods: every dead container goes
        let mut kept: Vec<&cri::Container> = Vec::new();
        for ((uid, _), dead) in &units {
            if deleted(uid) {
                for c in dead.iter().rev() {
                    self.remove_container(&c.id, &mut report).await;
                }
                continue;
            }
            let keep = if self.policy.max_per_pod_container < 0 {
                dead.len()
            } else {
                (self.policy.max_per_pod_container as usize).min(dead.len())
            };
            // oldest first
            for c in dead[keep..].iter().rev() {
                self.remove_container(&c.id, &mut report).await;
            }
            kept.extend(&dead[..keep]);
        }
        // the node-wide cap: the oldest go first
        if self.policy.max_containers >= 0 && kept.len() > self.policy.max_containers as usize {
            kept.sort_by_key(|c| c.created_at);
            let excess = kept.len() - self.policy.max_containers as usize;
            for c in kept[..excess].iter().copied() {
                self.remove_container(&c.id, &mut report).await;
            }
        }

        // sandboxes: not ready and without containers left
        let removed: HashSet<&str> = report.containers.iter().map(String::as_str).collect();
        let with_containers: HashSet<&str> = containers
            .iter()
            .filter(|c| !removed.contains(c.id.as_str()))
            .map(|c| c.pod_sandbox_id.as_str())
            .collect();
        let sandboxes = self
            .runtime
            .list_pod_sandbox(None)
            .await
            .map_err(rt("ListPodSandbox"))?;
        let mut by_pod: BTreeMap<String, Vec<&cri::PodSandbox>> = BTreeMap::new();
        for s in &sandboxes {
            let Some(uid) = pod_uid(&s.labels, s.metadata.as_ref().map(|m| m.uid.as_str())) else {
                continue;
            };
            by_pod.entry(uid).or_default().push(s);
        }
        let mut removed_sandboxes = Vec::new();
        for (uid, mut list) in by_pod {
            list.sort_by_key(|s| std::cmp::Reverse(s.created_at));
            // the newest sandbox of a live pod stays (its status and IPs), whatever its state
            let skip = usize::from(!deleted(&uid));
            for s in list.into_iter().skip(skip) {
                let active = s.state == cri::PodSandboxState::SandboxReady as i32
                    || with_containers.contains(s.id.as_str());
                if active || s.created_at > newest_gc_time {
                    continue;
                }
                match self.runtime.remove_pod_sandbox(&s.id).await {
                    Ok(()) => removed_sandboxes.push(s.id.clone()),
                    Err(e) => {
                        tracing::warn!(sandbox = %s.id, error = %e, "cannot remove a dead sandbox")
                    }
                }
            }
        }
        report.sandboxes = removed_sandboxes;
        if !report.containers.is_empty() || !report.sandboxes.is_empty() {
            tracing::info!(
                containers = report.containers.len(),
                sandboxes = report.sandboxes.len(),
                "removed dead containers and sandboxes"
            );
        }
        Ok(report)
    }
}

#[async_trait]
impl ContainerGc for ContainerGcManager {
    async fn delete_unused_containers(&self) -> Result<(), EvictionError> {
        self.garbage_collect()
            .await
            .map(|_| ())
            .map_err(|e| EvictionError::Gc {
                hook: "container",
                reason: e.to_string(),
            })
    }
}

/// Runs image GC every `config.image_gc_period` and container GC every
/// `config.container_gc_period` until `shutdown`; failures are logged and retried next period
/// (never fatal): a collection acts only once the runtime answered (`ImageFsInfo` or the
/// configured [`GcConfig::image_fs`] for images, its lists for both), and a failure repeating
/// the previous one is logged at debug level only (a runtime without `ImageFsInfo` does not
/// fill the log). The first image collection waits one period (kubelet starts it after the
/// runtime is up); the first container collection too.
pub async fn run_periodic(
    config: GcConfig,
    images: Option<Arc<ImageGcManager>>,
    containers: Option<Arc<ContainerGcManager>>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let start = Instant::now();
    let mut image_tick = tokio::time::interval_at(
        start + config.image_gc_period,
        config.image_gc_period.max(Duration::from_millis(1)),
    );
    let mut container_tick = tokio::time::interval_at(
        start + config.container_gc_period,
        config.container_gc_period.max(Duration::from_millis(1)),
    );
    image_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    container_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut image_failure, mut container_failure) = (None, None);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = image_tick.tick(), if images.is_some() => {
                if let Some(gc) = &images {
                    let r = gc.garbage_collect().await.map(|_| ());
                    log_failure("image", r, &mut image_failure);
                }
            }
            _ = container_tick.tick(), if containers.is_some() => {
                if let Some(gc) = &containers {
                    let r = gc.garbage_collect().await.map(|_| ());
                    log_failure("container", r, &mut container_failure);
                }
            }
        }
    }
}

/// Logs a periodic collection's failure: a new one as a warning, the same again at debug level.
fn log_failure(kind: &str, result: Result<(), GcError>, last: &mut Option<String>) {
    match result {
        Ok(()) => {
            if last.take().is_some() {
                tracing::info!("{kind} garbage collection succeeds again");
            }
        }
        Err(e) => {
            let message = e.to_string();
            if last.as_deref() == Some(message.as_str()) {
                tracing::debug!(error = %message, "{kind} garbage collection failed again");
            } else {
                tracing::warn!(error = %message, "{kind} garbage collection failed");
                *last = Some(message);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use node_test_support::FakeRuntime;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// An image filesystem of 100 bytes whose use is the fake runtime's image sizes.
    struct Fs(FakeRuntime);

    #[async_trait]
    impl ImageFs for Fs {
        async fn usage(&self) -> Result<FsUsage, GcError> {
            let used: u64 = self
                .0
                .list_images(None)
                .await
                .unwrap()
                .iter()
                .map(|i| i.size)
                .sum();
            Ok(FsUsage {
                capacity_bytes: 100,
                available_bytes: 100u64.saturating_sub(used),
            })
        }
    }

    fn id(name: &str) -> String {
        let hex: String = name.bytes().map(|b| format!("{b:02x}")).collect();
        format!("sha256:{hex:0>64}")
    }

    async fn present(rt: &FakeRuntime) -> Vec<String> {
        let mut v: Vec<String> = rt
            .list_images(None)
            .await
            .unwrap()
            .into_iter()
            .flat_map(|i| i.repo_tags)
            .collect();
        v.sort();
        v
    }

    async fn sandbox(rt: &FakeRuntime, uid: &str) -> String {
        let config = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: uid.into(),
                uid: uid.into(),
                namespace: "default".into(),
                attempt: 0,
            }),
            labels: HashMap::from([(labels::POD_UID.to_string(), uid.to_string())]),
            ..Default::default()
        };
        rt.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
    }

    /// A container of pod `uid` named `name` with image `image`, started.
    async fn container(
        rt: &FakeRuntime,
        sb: &str,
        uid: &str,
        name: &str,
        attempt: u32,
        image: &str,
    ) -> String {
        let config = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: name.into(),
                attempt,
            }),
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            labels: HashMap::from([
                (labels::POD_UID.to_string(), uid.to_string()),
                (labels::CONTAINER_NAME.to_string(), name.to_string()),
            ]),
            ..Default::default()
        };
        let id = rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: sb.into(),
                config: Some(config),
                sandbox_config: None,
            })
            .await
            .unwrap();
        rt.start_container(&id).await.unwrap();
        id
    }

    fn image_gc(rt: &FakeRuntime) -> ImageGcManager {
        let rt2 = Arc::new(rt.clone());
        ImageGcManager::new(
            ImageGcPolicy::default(),
            rt2.clone(),
            rt2,
            Arc::new(Fs(rt.clone())),
        )
        .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn image_gc_frees_unused_images_least_recently_used_first_down_to_the_low_threshold() {
        let rt = FakeRuntime::new();
        for (name, size) in [("a", 30), ("b", 25), ("c", 20), ("d", 15)] {
            rt.add_image_sized(name, size);
        }
        let sb = sandbox(&rt, "p1").await;
        let on_a = container(&rt, &sb, "p1", "x", 0, "a").await;
        container(&rt, &sb, "p1", "y", 0, "c").await;
        let gc = image_gc(&rt);
        // 90% used, 80% wanted: 10 bytes; every image is younger than imageMinimumGCAge
        let e = gc.garbage_collect().await.unwrap_err();
        assert!(
            matches!(
                e,
                GcError::NotEnoughFreed {
                    wanted: 10,
                    freed: 0
                }
            ),
            "{e}"
        );
        assert_eq!(present(&rt).await, ["a", "b", "c", "d"]);

        // 3 min later, a is no longer used (its container is gone): never-used b and d go
        // before a; b (the lowest id of the two) frees enough
        tokio::time::advance(Duration::from_secs(180)).await;
        rt.remove_container(&on_a).await.unwrap();
        let r = gc.garbage_collect().await.unwrap();
        assert_eq!(r.removed, [id("b")]);
        assert_eq!(r.freed_bytes, 25);
        assert_eq!(present(&rt).await, ["a", "c", "d"]);

        // a new image e (too young) pushes use to 100%: d (never used), then a (last used
        // 3 min ago); e is skipped for its age and c is in use
        rt.add_image_sized("e", 35);
        tokio::time::advance(Duration::from_secs(10)).await;
        let r = gc.garbage_collect().await.unwrap();
        assert_eq!(r.removed, [id("d"), id("a")]);
        assert_eq!(present(&rt).await, ["c", "e"]);

        // below the high threshold: nothing is collected
        tokio::time::advance(Duration::from_secs(600)).await;
        assert_eq!(
            gc.garbage_collect().await.unwrap(),
            ImageGcReport::default()
        );
        assert_eq!(present(&rt).await, ["c", "e"]);
    }

    #[tokio::test(start_paused = true)]
    async fn delete_unused_images_removes_every_old_unused_image_never_an_in_use_one() {
        let rt = FakeRuntime::new();
        for (name, size) in [("used", 10), ("old", 5), ("exited-user", 7)] {
            rt.add_image_sized(name, size);
        }
        let sb = sandbox(&rt, "p1").await;
        container(&rt, &sb, "p1", "x", 0, "used").await;
        let dead = container(&rt, &sb, "p1", "y", 0, "exited-user").await;
        rt.stop_container(&dead, Duration::ZERO).await.unwrap();
        let gc = image_gc(&rt);
        assert_eq!(
            gc.delete_unused().await.unwrap().removed,
            Vec::<String>::new()
        );
        tokio::time::advance(Duration::from_secs(121)).await;
        let freed = gc.delete_unused_images().await.unwrap();
        assert_eq!(freed, 5);
        // an exited container still uses its image (it may be restarted)
        assert_eq!(present(&rt).await, ["exited-user", "used"]);
        // a failing runtime is an error naming the call
        rt.fail_next("list_images", RuntimeError::Unavailable("down".into()));
        let e = gc.delete_unused().await.unwrap_err();
        assert_eq!(e.to_string(), "ListImages: runtime unavailable: down");
    }

    #[tokio::test(start_paused = true)]
    async fn image_gc_does_nothing_while_the_runtime_names_no_image_filesystem() {
        // the fake runtime does not answer ImageFsInfo and no image_fs is configured
        let rt = FakeRuntime::new();
        rt.add_image_sized("old", 90);
        let rt_arc = Arc::new(rt.clone());
        let fs = Arc::new(RuntimeImageFs {
            images: rt_arc.clone(),
            fallback: None,
        });
        let gc = ImageGcManager::new(ImageGcPolicy::default(), rt_arc.clone(), rt_arc, fs).unwrap();
        tokio::time::advance(Duration::from_secs(600)).await;
        let e = gc.garbage_collect().await.unwrap_err();
        assert!(
            e.to_string()
                .contains("the runtime names no image filesystem and none is configured"),
            "{e}"
        );
        assert_eq!(present(&rt).await, ["old"]);
        // the periodic runs keep going (a failure is logged, never fatal) and remove nothing
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(run_periodic(
            GcConfig::default(),
            Some(Arc::new(gc)),
            None,
            async {
                let _ = stopped.await;
            },
        ));
        tokio::time::sleep(Duration::from_secs(1801)).await;
        assert!(!task.is_finished());
        assert_eq!(present(&rt).await, ["old"]);
        stop.send(()).unwrap();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn container_gc_removes_nothing_when_the_runtime_does_not_list() {
        let rt = FakeRuntime::new();
        rt.add_image("img");
        let sb = sandbox(&rt, "gone").await;
        let c = container(&rt, &sb, "gone", "app", 0, "img").await;
        rt.exit_container(&c, 0, "Completed");
        rt.stop_pod_sandbox(&sb).await.unwrap();
        let pods = Arc::new(Pods {
            ready: AtomicBool::new(true),
            live: vec![],
        });
        let gc = ContainerGcManager::new(ContainerGcPolicy::default(), Arc::new(rt.clone()), pods);
        rt.fail_next("list_containers", RuntimeError::Unavailable("down".into()));
        let e = gc.garbage_collect().await.unwrap_err();
        assert_eq!(e.to_string(), "ListContainers: runtime unavailable: down");
        assert_eq!(ids(&rt), std::slice::from_ref(&c));
        assert_eq!(rt.sandboxes().len(), 1);
        // the runtime answers again: the deleted pod's container and sandbox go
        let r = gc.garbage_collect().await.unwrap();
        assert_eq!(r.containers, std::slice::from_ref(&c));
        assert_eq!(r.sandboxes, std::slice::from_ref(&sb));
    }

    #[test]
    fn image_gc_thresholds_are_checked() {
        let rt = Arc::new(FakeRuntime::new());
        let policy = ImageGcPolicy {
            high_threshold_percent: 70,
            low_threshold_percent: 80,
            ..Default::default()
        };
        let e = ImageGcManager::new(policy, rt.clone(), rt.clone(), Arc::new(Fs((*rt).clone())))
            .unwrap_err();
        assert!(e.to_string().contains("low 80% and high 70%"), "{e}");
    }

    struct Pods {
        ready: AtomicBool,
        live: Vec<&'static str>,
    }

    impl PodPresence for Pods {
        fn sources_ready(&self) -> bool {
            self.ready.load(Ordering::SeqCst)
        }
        fn has_pod(&self, uid: &str) -> bool {
            self.live.contains(&uid)
        }
    }

    fn ids(rt: &FakeRuntime) -> Vec<String> {
        rt.containers().into_iter().map(|c| c.id).collect()
    }

    #[tokio::test]
    async fn container_gc_keeps_the_newest_dead_instance_and_removes_deleted_pods() {
        let rt = FakeRuntime::new();
        rt.add_image("img");
        // live pod: app died twice and runs again (attempt 3); side died once
        let live_old_sb = sandbox(&rt, "live").await;
        rt.stop_pod_sandbox(&live_old_sb).await.unwrap();
        let live_sb = sandbox(&rt, "live").await;
        let mut app = Vec::new();
        for attempt in 0..3 {
            let c = container(&rt, &live_sb, "live", "app", attempt, "img").await;
            rt.exit_container(&c, 1, "Error");
            app.push(c);
        }
        let running = container(&rt, &live_sb, "live", "app", 3, "img").await;
        let side = container(&rt, &live_sb, "live", "side", 0, "img").await;
        rt.exit_container(&side, 0, "Completed");
        // deleted pod: a dead container in a stopped sandbox; another deleted pod still ready
        let gone_sb = sandbox(&rt, "gone").await;
        let gone_c = container(&rt, &gone_sb, "gone", "app", 0, "img").await;
        rt.stop_pod_sandbox(&gone_sb).await.unwrap();
        let ready_sb = sandbox(&rt, "gone-but-ready").await;

        let pods = Arc::new(Pods {
            ready: AtomicBool::new(false),
            live: vec!["live"],
        });
        let rt_arc = Arc::new(rt.clone());
        // a minimum age no container has reached: nothing goes
        let young = ContainerGcManager::new(
            ContainerGcPolicy {
                min_age: Duration::from_secs(3600),
                ..Default::default()
            },
            rt_arc.clone(),
            pods.clone(),
        );
        assert_eq!(
            young.garbage_collect().await.unwrap(),
            ContainerGcReport::default()
        );

        let gc = ContainerGcManager::new(ContainerGcPolicy::default(), rt_arc, pods.clone());
        // sources not ready: the unknown pod is not taken as deleted
        let r = gc.garbage_collect().await.unwrap();
        assert_eq!(r.containers, [app[0].clone(), app[1].clone()]);
        assert_eq!(
            r.sandboxes,
            std::slice::from_ref(&live_old_sb),
            "the live pod's older dead sandbox"
        );
        assert!(ids(&rt).contains(&gone_c));

        pods.ready.store(true, Ordering::SeqCst);
        let r = gc.garbage_collect().await.unwrap();
        assert_eq!(r.containers, std::slice::from_ref(&gone_c));
        assert_eq!(r.sandboxes, std::slice::from_ref(&gone_sb));
        // what stays: the running container, the newest dead instance of each container,
        // the live pod's sandbox and the ready sandbox of the deleted pod
        let mut left = ids(&rt);
        left.sort();
        let mut want = vec![app[2].clone(), running, side];
        want.sort();
        assert_eq!(left, want);
        let mut sbs: Vec<String> = rt.sandboxes().into_iter().map(|s| s.id).collect();
        sbs.sort();
        assert_eq!(sbs, [live_sb, ready_sb]);
        // idempotent
        assert_eq!(
            gc.garbage_collect().await.unwrap(),
            ContainerGcReport::default()
        );
    }

    #[tokio::test]
    async fn container_gc_removes_a_removed_containers_logs_with_it() {
        let rt = FakeRuntime::new();
        rt.add_image("img");
        let sb = sandbox(&rt, "live").await;
        let dir = tempfile::tempdir().unwrap();
        let mut ids = Vec::new();
        for attempt in 0..2u32 {
            let log = dir.path().join(format!("app/{attempt}.log"));
            std::fs::create_dir_all(log.parent().unwrap()).unwrap();
            std::fs::write(&log, "x\n").unwrap();
            std::fs::write(format!("{}.20260101-000000.gz", log.display()), "x").unwrap();
            let id = rt
                .create_container(cri::CreateContainerRequest {
                    pod_sandbox_id: sb.clone(),
                    config: Some(cri::ContainerConfig {
                        metadata: Some(cri::ContainerMetadata {
                            name: "app".into(),
                            attempt,
                        }),
                        image: Some(cri::ImageSpec {
                            image: "img".into(),
                            ..Default::default()
                        }),
                        labels: HashMap::from([
                            (labels::POD_UID.to_string(), "live".to_string()),
                            (labels::CONTAINER_NAME.to_string(), "app".to_string()),
                        ]),
                        log_path: log.display().to_string(),
                        ..Default::default()
                    }),
                    sandbox_config: None,
                })
                .await
                .unwrap();
            rt.start_container(&id).await.unwrap();
            rt.exit_container(&id, 1, "Error");
            ids.push(id);
        }
        let pods = Arc::new(Pods {
            ready: AtomicBool::new(true),
            live: vec!["live"],
        });
        let gc = ContainerGcManager::new(ContainerGcPolicy::default(), Arc::new(rt.clone()), pods);
        let r = gc.garbage_collect().await.unwrap();
        assert_eq!(r.containers, std::slice::from_ref(&ids[0]));
        let mut left: Vec<String> = std::fs::read_dir(dir.path().join("app"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["1.log", "1.log.20260101-000000.gz"]);
    }

    #[tokio::test]
    async fn container_gc_node_wide_cap_removes_the_oldest_dead_containers() {
        let rt = FakeRuntime::new();
        rt.add_image("img");
        let sb = sandbox(&rt, "p").await;
        let mut dead = Vec::new();
        for name in ["one", "two", "three"] {
            let c = container(&rt, &sb, "p", name, 0, "img").await;
            rt.exit_container(&c, 0, "Completed");
            dead.push(c);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let pods = Arc::new(Pods {
            ready: AtomicBool::new(true),
            live: vec!["p"],
        });
        let gc = ContainerGcManager::new(
            ContainerGcPolicy {
                max_containers: 1,
                ..Default::default()
            },
            Arc::new(rt.clone()),
            pods,
        );
        let r = gc.garbage_collect().await.unwrap();
        assert_eq!(r.containers, dead[..2]);
        assert_eq!(ids(&rt), dead[2..]);
    }

    #[tokio::test(start_paused = true)]
    async fn periodic_runs_follow_their_periods() {
        let rt = FakeRuntime::new();
        rt.add_image_sized("old", 90);
        let gc = Arc::new(image_gc(&rt));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let config = GcConfig::default();
        let task = tokio::spawn(run_periodic(config, Some(gc), None, async {
            let _ = stopped.await;
        }));
        // the first run (at 5 min) detects the image; it is old enough at the second (10 min)
        tokio::time::sleep(Duration::from_secs(301)).await;
        assert_eq!(present(&rt).await, ["old"]);
        tokio::time::sleep(Duration::from_secs(300)).await;
        assert!(present(&rt).await.is_empty());
        stop.send(()).unwrap();
        task.await.unwrap();
    }
}
