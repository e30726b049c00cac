//! In-memory fakes of every node-core trait, for testing logic (never a substitute for the real
//! test of a default implementation).
//!
//! Each fake records the calls it got and lets a test inject failures with `fail_next`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures::StreamExt;
use node_core::cri;
use node_core::{
    Attachment, AttachmentKey, CniError, CniPlugin, CniResult, ImageBackend, Interface, IpConfig,
    Node, Pod, PodEvent, PodRef, PodSource, PodStatus, PodStream, ProxyState, RouterError,
    RuntimeBackend, RuntimeError, ServiceRouter, SourceError, StatusError, StatusSink, SyncReport,
};
use tokio::sync::{mpsc, watch};

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn labels_match(have: &HashMap<String, String>, want: &HashMap<String, String>) -> bool {
    want.iter().all(|(k, v)| have.get(k) == Some(v))
}

/// Failures to inject, by method name, consumed one per call.
struct Failures<E> {
    queue: HashMap<&'static str, VecDeque<E>>,
}

impl<E> Default for Failures<E> {
    fn default() -> Self {
        Self {
            queue: HashMap::new(),
        }
    }
}

impl<E> Failures<E> {
    fn take(&mut self, method: &'static str) -> Option<E> {
        self.queue.get_mut(method).and_then(VecDeque::pop_front)
    }
    fn push(&mut self, method: &'static str, e: E) {
        self.queue.entry(method).or_default().push_back(e);
    }
}

// ---------------------------------------------------------------------------------------------
// runtime

/// A fake sandbox as the fake runtime keeps it.
#[derive(Debug, Clone)]
pub struct FakeSandbox {
    /// The id.
    pub id: String,
    /// The config it was created with.
    pub config: cri::PodSandboxConfig,
    /// Ready or not ready.
    pub state: cri::PodSandboxState,
    /// Creation time, ns.
    pub created_at: i64,
    /// The pod IP the fake gave it.
    pub ip: IpAddr,
}

/// A fake container as the fake runtime keeps it.
#[derive(Debug, Clone)]
pub struct FakeContainer {
    /// The id.
    pub id: String,
    /// The sandbox it belongs to.
    pub sandbox_id: String,
    /// The config it was created with.
    pub config: cri::ContainerConfig,
    /// Its state.
    pub state: cri::ContainerState,
    /// Times, ns.
    pub created_at: i64,
    /// Start time, ns (0: not started).
    pub started_at: i64,
    /// Finish time, ns (0: not finished).
    pub finished_at: i64,
    /// Exit code once exited.
    pub exit_code: i32,
    /// Reason once exited (`Completed`, `Error`, `OOMKilled`).
    pub reason: String,
}

#[derive(Default)]
struct RuntimeState {
    next: u64,
    sandboxes: BTreeMap<String, FakeSandbox>,
    containers: BTreeMap<String, FakeContainer>,
    images: BTreeMap<String, cri::Image>,
    calls: Vec<String>,
    failures: Failures<RuntimeError>,
    exec: VecDeque<cri::ExecSyncResponse>,
    pull_delay: Duration,
    stats: BTreeMap<String, FakeUsage>,
}

/// What `list_container_stats` reports for a container (see
/// [`FakeRuntime::set_container_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FakeUsage {
    /// CPU time, ns.
    pub usage_core_nano_seconds: u64,
    /// Memory working set, bytes.
    pub working_set_bytes: u64,
    /// When sampled, ns since the epoch.
    pub timestamp: i64,
}

/// An in-memory [`RuntimeBackend`] and [`ImageBackend`] with CRI semantics: ids, states, label
/// and state filters, idempotent stop/remove, NotFound for unknown ids.
#[derive(Clone, Default)]
pub struct FakeRuntime {
    state: Arc<Mutex<RuntimeState>>,
}

impl FakeRuntime {
    /// An empty runtime with no images.
    pub fn new() -> Self {
        Self::default()
    }

    /// Make `image` present, as if pulled.
    pub fn add_image(&self, image: &str) {
        let mut s = self.state.lock().unwrap();
        s.images.insert(
            image.to_string(),
            cri::Image {
                id: format!("sha256:{:064x}", image.len()),
                repo_tags: vec![image.to_string()],
                size: 1 << 20,
                ..Default::default()
            },
        );
    }

    /// Make `image` present with its own id (`sha256:` and the hex of the name, padded) and a
    /// size, as image garbage collection sees it.
    pub fn add_image_sized(&self, image: &str, size: u64) {
        let hex: String = image.bytes().map(|b| format!("{b:02x}")).collect();
        let mut s = self.state.lock().unwrap();
        s.images.insert(
            image.to_string(),
            cri::Image {
                id: format!("sha256:{hex:0>64}"),
                repo_tags: vec![image.to_string()],
                size,
                ..Default::default()
            },
        );
    }

    /// The next call of `method` (`run_pod_sandbox`, `pull_image`, ...) fails with `error`.
    pub fn fail_next(&self, method: &'static str, error: RuntimeError) {
        self.state.lock().unwrap().failures.push(method, error);
    }

    /// The next `exec_sync` answers this.
    pub fn push_exec_result(&self, exit_code: i32, stdout: &str) {
        self.state
            .lock()
            .unwrap()
            .exec
            .push_back(cri::ExecSyncResponse {
                stdout: stdout.as_bytes().to_vec(),
                stderr: vec![],
                exit_code,
            });
    }

    /// Let a running container exit, as if its process ended.
    pub fn exit_container(&self, id: &str, exit_code: i32, reason: &str) {
        let mut s = self.state.lock().unwrap();
        if let Some(c) = s.containers.get_mut(id) {
            c.state = cri::ContainerState::ContainerExited;
            c.exit_code = exit_code;
            c.finished_at = now_ns();
            c.reason = reason.to_string();
        }
    }

    /// The calls made so far, as `method id-or-name` strings.
    pub fn calls(&self) -> Vec<String> {
        self.state.lock().unwrap().calls.clone()
    }

    /// Every sandbox.
    pub fn sandboxes(&self) -> Vec<FakeSandbox> {
        self.state
            .lock()
            .unwrap()
            .sandboxes
            .values()
            .cloned()
            .collect()
    }

    /// Every container.
    pub fn containers(&self) -> Vec<FakeContainer> {
        self.state
            .lock()
            .unwrap()
            .containers
            .values()
            .cloned()
            .collect()
    }

    /// `list_container_stats` and `container_stats` report this usage for container `id`
    /// (running containers only, as the CRI lists stats; a running container without usage set
    /// reports zeros at the current time).
    pub fn set_container_stats(&self, id: &str, usage: FakeUsage) {
        self.state
            .lock()
            .unwrap()
            .stats
            .insert(id.to_string(), usage);
    }

    /// Make every pull take this long.
    pub fn set_pull_delay(&self, delay: Duration) {
        self.state.lock().unwrap().pull_delay = delay;
    }

    fn begin(
        &self,
        method: &'static str,
        what: &str,
    ) -> Result<std::sync::MutexGuard<'_, RuntimeState>, RuntimeError> {
        let mut s = self.state.lock().unwrap();
        s.calls.push(format!("{method} {what}"));
        match s.failures.take(method) {
            Some(e) => Err(e),
            None => Ok(s),
        }
    }
}

fn sandbox_not_found(id: &str) -> RuntimeError {
    RuntimeError::NotFound {
        kind: "pod sandbox",
        id: id.to_string(),
    }
}
fn container_not_found(id: &str) -> RuntimeError {
    RuntimeError::NotFound {
        kind: "container",
        id: id.to_string(),
    }
}

fn container_status_of(c: &FakeContainer, image_ref: String) -> cri::ContainerStatus {
    let meta = c.config.metadata.clone();
    cri::ContainerStatus {
        id: c.id.clone(),
        metadata: meta,
        state: c.state as i32,
        created_at: c.created_at,
        started_at: c.started_at,
        finished_at: c.finished_at,
        exit_code: c.exit_code,
        image: c.config.image.clone(),
        image_ref,
        reason: c.reason.clone(),
        labels: c.config.labels.clone(),
        annotations: c.config.annotations.clone(),
        log_path: c.config.log_path.clone(),
        ..Default::default()
    }
}

#[async_trait]
impl RuntimeBackend for FakeRuntime {
    async fn version(&self) -> Result<cri::VersionResponse, RuntimeError> {
        let _s = self.begin("version", "")?;
        Ok(cri::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: "fake".into(),
            runtime_version: "0.1.0".into(),
            runtime_api_version: "v1".into(),
        })
    }

    async fn status(&self, _verbose: bool) -> Result<cri::StatusResponse, RuntimeError> {
        let _s = self.begin("status", "")?;
        let cond = |t: &str| cri::RuntimeCondition {
            r#type: t.into(),
            status: true,
            ..Default::default()
        };
        Ok(cri::StatusResponse {
            status: Some(cri::RuntimeStatus {
                conditions: vec![cond("RuntimeReady"), cond("NetworkReady")],
            }),
            ..Default::default()
        })
    }

    async fn run_pod_sandbox(
        &self,
        req: cri::RunPodSandboxRequest,
    ) -> Result<String, RuntimeError> {
        let config = req
            .config
            .ok_or_else(|| RuntimeError::InvalidArgument("sandbox config is required".into()))?;
        let name = config
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        let mut s = self.begin("run_pod_sandbox", &name)?;
        s.next += 1;
        let n = s.next;
        let id = format!("sandbox-{n:04}");
        let ip = IpAddr::V4(Ipv4Addr::new(10, 88, (n / 250) as u8, (n % 250 + 2) as u8));
        s.sandboxes.insert(
            id.clone(),
            FakeSandbox {
                id: id.clone(),
                config,
                state: cri::PodSandboxState::SandboxReady,
                created_at: now_ns(),
                ip,
            },
        );
        Ok(id)
    }

    async fn stop_pod_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        let mut s = self.begin("stop_pod_sandbox", id)?;
        if let Some(sb) = s.sandboxes.get_mut(id) {
            sb.state = cri::PodSandboxState::SandboxNotready;
        }
        for c in s.containers.values_mut().filter(|c| c.sandbox_id == id) {
            if c.state == cri::ContainerState::ContainerRunning {
                c.state = cri::ContainerState::ContainerExited;
                c.exit_code = 137;
                c.finished_at = now_ns();
                c.reason = "Error".into();
            }
        }
        Ok(())
    }

    async fn remove_pod_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        let mut s = self.begin("remove_pod_sandbox", id)?;
        s.sandboxes.remove(id);
        s.containers.retain(|_, c| c.sandbox_id != id);
        Ok(())
    }

    async fn pod_sandbox_status(
        &self,
        id: &str,
        _verbose: bool,
    ) -> Result<cri::PodSandboxStatusResponse, RuntimeError> {
        let s = self.begin("pod_sandbox_status", id)?;
        let sb = s.sandboxes.get(id).ok_or_else(|| sandbox_not_found(id))?;
        Ok(cri::PodSandboxStatusResponse {
            status: Some(cri::PodSandboxStatus {
                id: sb.id.clone(),
                metadata: sb.config.metadata.clone(),
                state: sb.state as i32,
                created_at: sb.created_at,
                network: Some(cri::PodSandboxNetworkStatus {
                    ip: sb.ip.to_string(),
                    ..Default::default()
                }),
                labels: sb.config.labels.clone(),
                annotations: sb.config.annotations.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    async fn list_pod_sandbox(
        &self,
        filter: Option<cri::PodSandboxFilter>,
    ) -> Result<Vec<cri::PodSandbox>, RuntimeError> {
        let s = self.begin("list_pod_sandbox", "")?;
        let f = filter.unwrap_or_default();
        Ok(s.sandboxes
            .values()
            .filter(|sb| f.id.is_empty() || sb.id == f.id)
            .filter(|sb| {
                f.state
                    .as_ref()
                    .is_none_or(|st| st.state == sb.state as i32)
            })
            .filter(|sb| labels_match(&sb.config.labels, &f.label_selector))
            .map(|sb| cri::PodSandbox {
                id: sb.id.clone(),
                metadata: sb.config.metadata.clone(),
                state: sb.state as i32,
                created_at: sb.created_at,
                labels: sb.config.labels.clone(),
                annotations: sb.config.annotations.clone(),
                runtime_handler: String::new(),
            })
            .collect())
    }

    async fn create_container(
        &self,
        req: cri::CreateContainerRequest,
    ) -> Result<String, RuntimeError> {
        let config = req
            .config
            .ok_or_else(|| RuntimeError::InvalidArgument("container config is required".into()))?;
        let name = config
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        let mut s = self.begin("create_container", &name)?;
        if !s.sandboxes.contains_key(&req.pod_sandbox_id) {
            return Err(sandbox_not_found(&req.pod_sandbox_id));
        }
        let image = config
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default();
        if !s.images.contains_key(&image) {
            return Err(RuntimeError::NotFound {
                kind: "image",
                id: image,
            });
        }
        s.next += 1;
        let id = format!("container-{:04}", s.next);
        s.containers.insert(
            id.clone(),
            FakeContainer {
                id: id.clone(),
                sandbox_id: req.pod_sandbox_id,
                config,
                state: cri::ContainerState::ContainerCreated,
                created_at: now_ns(),
                started_at: 0,
                finished_at: 0,
                exit_code: 0,
                reason: String::new(),
            },
        );
        Ok(id)
    }

    async fn start_container(&self, id: &str) -> Result<(), RuntimeError> {
        let mut s = self.begin("start_container", id)?;
        let c = s
            .containers
            .get_mut(id)
            .ok_or_else(|| container_not_found(id))?;
        if c.state != cri::ContainerState::ContainerCreated {
            return Err(RuntimeError::FailedPrecondition(format!(
                "container {id} is not in created state"
            )));
        }
        c.state = cri::ContainerState::ContainerRunning;
        c.started_at = now_ns();
        Ok(())
    }

    async fn stop_container(&self, id: &str, _timeout: Duration) -> Result<(), RuntimeError> {
        let mut s = self.begin("stop_container", id)?;
        let c = s
            .containers
            .get_mut(id)
            .ok_or_else(|| container_not_found(id))?;
        if c.state == cri::ContainerState::ContainerRunning {
            c.state = cri::ContainerState::ContainerExited;
            c.exit_code = 143;
            c.finished_at = now_ns();
            c.reason = "Error".into();
        }
        Ok(())
    }

    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        let mut s = self.begin("remove_container", id)?;
        s.containers.remove(id);
        Ok(())
    }

    async fn container_status(
        &self,
        id: &str,
        _verbose: bool,
    ) -> Result<cri::ContainerStatusResponse, RuntimeError> {
        let s = self.begin("container_status", id)?;
        let c = s
            .containers
            .get(id)
            .ok_or_else(|| container_not_found(id))?;
        let image = c
            .config
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default();
        let image_ref = s
            .images
            .get(&image)
            .map(|i| i.id.clone())
            .unwrap_or_default();
        Ok(cri::ContainerStatusResponse {
            status: Some(container_status_of(c, image_ref)),
            ..Default::default()
        })
    }

    async fn list_containers(
        &self,
        filter: Option<cri::ContainerFilter>,
    ) -> Result<Vec<cri::Container>, RuntimeError> {
        let s = self.begin("list_containers", "")?;
        let f = filter.unwrap_or_default();
        Ok(s.containers
            .values()
            .filter(|c| f.id.is_empty() || c.id == f.id)
            .filter(|c| f.pod_sandbox_id.is_empty() || c.sandbox_id == f.pod_sandbox_id)
            .filter(|c| f.state.as_ref().is_none_or(|st| st.state == c.state as i32))
            .filter(|c| labels_match(&c.config.labels, &f.label_selector))
            .map(|c| cri::Container {
                id: c.id.clone(),
                pod_sandbox_id: c.sandbox_id.clone(),
                metadata: c.config.metadata.clone(),
                image: c.config.image.clone(),
                image_ref: String::new(),
                state: c.state as i32,
                created_at: c.created_at,
                labels: c.config.labels.clone(),
                annotations: c.config.annotations.clone(),
                image_id: String::new(),
            })
            .collect())
    }

    /// As a runtime does: the log file of a running container is opened anew at its path
    /// (created when missing; only an absolute `log_path` is touched).
    async fn reopen_container_log(&self, id: &str) -> Result<(), RuntimeError> {
        let s = self.begin("reopen_container_log", id)?;
        let c = s
            .containers
            .get(id)
            .ok_or_else(|| container_not_found(id))?;
        if c.state != cri::ContainerState::ContainerRunning {
            return Err(RuntimeError::FailedPrecondition(format!(
                "container {id} is not running"
            )));
        }
        let path = std::path::Path::new(&c.config.log_path);
        if path.is_absolute() {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| RuntimeError::Io {
                    path: path.to_path_buf(),
                    source,
                })?;
        }
        Ok(())
    }

    async fn exec_sync(
        &self,
        id: &str,
        _cmd: Vec<String>,
        _timeout: Duration,
    ) -> Result<cri::ExecSyncResponse, RuntimeError> {
        let mut s = self.begin("exec_sync", id)?;
        let c = s
            .containers
            .get(id)
            .ok_or_else(|| container_not_found(id))?;
        if c.state != cri::ContainerState::ContainerRunning {
            return Err(RuntimeError::FailedPrecondition(format!(
                "container {id} is not running"
            )));
        }
        Ok(s.exec.pop_front().unwrap_or_default())
    }

    async fn container_stats(&self, id: &str) -> Result<cri::ContainerStats, RuntimeError> {
        let s = self.begin("container_stats", id)?;
        let c = s
            .containers
            .get(id)
            .ok_or_else(|| container_not_found(id))?;
        Ok(fake_stats(c, s.stats.get(id)))
    }

    async fn list_container_stats(
        &self,
        filter: Option<cri::ContainerStatsFilter>,
    ) -> Result<Vec<cri::ContainerStats>, RuntimeError> {
        let s = self.begin("list_container_stats", "")?;
        let f = filter.unwrap_or_default();
        Ok(s.containers
            .values()
            .filter(|c| f.id.is_empty() || c.id == f.id)
            .filter(|c| f.pod_sandbox_id.is_empty() || c.sandbox_id == f.pod_sandbox_id)
            .filter(|c| labels_match(&c.config.labels, &f.label_selector))
            .filter(|c| c.state == cri::ContainerState::ContainerRunning)
            .map(|c| fake_stats(c, s.stats.get(&c.id)))
            .collect())
    }
}

fn fake_stats(c: &FakeContainer, usage: Option<&FakeUsage>) -> cri::ContainerStats {
    let u = usage.copied().unwrap_or(FakeUsage {
        timestamp: now_ns(),
        ..Default::default()
    });
    cri::ContainerStats {
        attributes: Some(cri::ContainerAttributes {
            id: c.id.clone(),
            metadata: c.config.metadata.clone(),
            labels: c.config.labels.clone(),
            annotations: c.config.annotations.clone(),
        }),
        cpu: Some(cri::CpuUsage {
            timestamp: u.timestamp,
            usage_core_nano_seconds: Some(cri::UInt64Value {
                value: u.usage_core_nano_seconds,
            }),
            usage_nano_cores: None,
        }),
        memory: Some(cri::MemoryUsage {
            timestamp: u.timestamp,
            working_set_bytes: Some(cri::UInt64Value {
                value: u.working_set_bytes,
            }),
            ..Default::default()
        }),
        writable_layer: None,
        swap: None,
    }
}

#[async_trait]
impl ImageBackend for FakeRuntime {
    async fn pull_image(
        &self,
        image: cri::ImageSpec,
        _auth: Option<cri::AuthConfig>,
        _sandbox: Option<cri::PodSandboxConfig>,
    ) -> Result<String, RuntimeError> {
        let delay = {
            let _s = self.begin("pull_image", &image.image)?;
            _s.pull_delay
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        self.add_image(&image.image);
        Ok(self.state.lock().unwrap().images[&image.image].id.clone())
    }

    async fn image_status(
        &self,
        image: cri::ImageSpec,
        _verbose: bool,
    ) -> Result<cri::ImageStatusResponse, RuntimeError> {
        let s = self.begin("image_status", &image.image)?;
        Ok(cri::ImageStatusResponse {
            image: s.images.get(&image.image).cloned(),
            info: Default::default(),
        })
    }

    async fn list_images(
        &self,
        _filter: Option<cri::ImageFilter>,
    ) -> Result<Vec<cri::Image>, RuntimeError> {
        let s = self.begin("list_images", "")?;
        Ok(s.images.values().cloned().collect())
    }

    async fn remove_image(&self, image: cri::ImageSpec) -> Result<(), RuntimeError> {
        let mut s = self.begin("remove_image", &image.image)?;
        // by name or by id, as the CRI allows
        s.images
            .retain(|name, img| *name != image.image && img.id != image.image);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// router

#[derive(Default)]
struct RouterState {
    synced: Vec<ProxyState>,
    cleanups: usize,
    failures: Failures<RouterError>,
}

/// A [`ServiceRouter`] that records every desired state it is given.
#[derive(Clone, Default)]
pub struct FakeRouter {
    state: Arc<Mutex<RouterState>>,
}

impl FakeRouter {
    /// A router with nothing synced.
    pub fn new() -> Self {
        Self::default()
    }
    /// The states synced, oldest first.
    pub fn synced(&self) -> Vec<ProxyState> {
        self.state.lock().unwrap().synced.clone()
    }
    /// The last state synced.
    pub fn last(&self) -> Option<ProxyState> {
        self.state.lock().unwrap().synced.last().cloned()
    }
    /// How many times `cleanup` was called.
    pub fn cleanups(&self) -> usize {
        self.state.lock().unwrap().cleanups
    }
    /// The next `sync` or `cleanup` fails with `error`.
    pub fn fail_next(&self, method: &'static str, error: RouterError) {
        self.state.lock().unwrap().failures.push(method, error);
    }
}

#[async_trait]
impl ServiceRouter for FakeRouter {
    fn name(&self) -> &str {
        "fake"
    }
    async fn sync(&self, desired: &ProxyState) -> Result<SyncReport, RouterError> {
        let mut s = self.state.lock().unwrap();
        if let Some(e) = s.failures.take("sync") {
            return Err(e);
        }
        let full = s.synced.is_empty();
        s.synced.push(desired.clone());
        Ok(SyncReport {
            full,
            service_ports: desired.services.len(),
            endpoints: desired.services.values().map(|p| p.endpoints.len()).sum(),
            ..Default::default()
        })
    }
    async fn cleanup(&self) -> Result<(), RouterError> {
        let mut s = self.state.lock().unwrap();
        if let Some(e) = s.failures.take("cleanup") {
            return Err(e);
        }
        s.cleanups += 1;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// CNI

#[derive(Default)]
struct CniState {
    next: u32,
    attached: BTreeMap<AttachmentKey, CniResult>,
    calls: Vec<String>,
    failures: Failures<CniError>,
}

/// A [`CniPlugin`] that hands out addresses from 10.88.0.0/16 and remembers attachments.
#[derive(Clone, Default)]
pub struct FakeCni {
    state: Arc<Mutex<CniState>>,
}

impl FakeCni {
    /// A plugin with nothing attached.
    pub fn new() -> Self {
        Self::default()
    }
    /// The attachments held now.
    pub fn attached(&self) -> Vec<AttachmentKey> {
        self.state
            .lock()
            .unwrap()
            .attached
            .keys()
            .cloned()
            .collect()
    }
    /// The calls made so far (`add <id>`, `del <id>`...).
    pub fn calls(&self) -> Vec<String> {
        self.state.lock().unwrap().calls.clone()
    }
    /// The next call of `method` (`add`, `del`, `check`, `status`, `gc`) fails with `error`.
    pub fn fail_next(&self, method: &'static str, error: CniError) {
        self.state.lock().unwrap().failures.push(method, error);
    }
    fn begin(
        &self,
        method: &'static str,
        what: &str,
    ) -> Result<std::sync::MutexGuard<'_, CniState>, CniError> {
        let mut s = self.state.lock().unwrap();
        s.calls.push(format!("{method} {what}"));
        match s.failures.take(method) {
            Some(e) => Err(e),
            None => Ok(s),
        }
    }
}

#[async_trait]
impl CniPlugin for FakeCni {
    async fn add(&self, a: &Attachment) -> Result<CniResult, CniError> {
        let mut s = self.begin("add", &a.container_id)?;
        if let Some(r) = s.attached.get(&a.key()) {
            return Ok(r.clone());
        }
        s.next += 1;
        let n = s.next;
        let ip = Ipv4Addr::new(10, 88, (n / 250) as u8, (n % 250 + 2) as u8);
        let result = CniResult {
            cni_version: "1.1.0".into(),
            interfaces: vec![Interface {
                name: a.ifname.clone(),
                sandbox: a.netns.display().to_string(),
                ..Default::default()
            }],
            ips: vec![IpConfig {
                address: format!("{ip}/16").parse().expect("valid"),
                gateway: Some(IpAddr::V4(Ipv4Addr::new(10, 88, 0, 1))),
                interface: Some(0),
            }],
            ..Default::default()
        };
        s.attached.insert(a.key(), result.clone());
        Ok(result)
    }
    async fn del(&self, a: &Attachment) -> Result<(), CniError> {
        let mut s = self.begin("del", &a.container_id)?;
        s.attached.remove(&a.key());
        Ok(())
    }
    async fn check(&self, a: &Attachment) -> Result<(), CniError> {
        let s = self.begin("check", &a.container_id)?;
        if s.attached.contains_key(&a.key()) {
            Ok(())
        } else {
            Err(CniError::Plugin {
                plugin: "fake".into(),
                code: 3,
                msg: format!("no attachment {}", a.container_id),
                details: String::new(),
            })
        }
    }
    async fn status(&self) -> Result<(), CniError> {
        self.begin("status", "").map(|_| ())
    }
    async fn gc(&self, keep: &[AttachmentKey]) -> Result<(), CniError> {
        let mut s = self.begin("gc", "")?;
        s.attached.retain(|k, _| keep.contains(k));
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// status

#[derive(Default)]
struct StatusState {
    pods: BTreeMap<PodRef, PodStatus>,
    history: Vec<(PodRef, Option<PodStatus>)>,
    node: Option<Node>,
    failures: Failures<StatusError>,
}

/// A [`StatusSink`] that keeps the latest status of every pod and the history of writes.
#[derive(Clone)]
pub struct FakeStatusSink {
    state: Arc<Mutex<StatusState>>,
    changed: Arc<watch::Sender<u64>>,
}

impl Default for FakeStatusSink {
    fn default() -> Self {
        Self {
            state: Arc::default(),
            changed: Arc::new(watch::channel(0).0),
        }
    }
}

impl FakeStatusSink {
    /// A sink that holds nothing.
    pub fn new() -> Self {
        Self::default()
    }
    /// The latest status of every pod that has one.
    pub fn pods(&self) -> BTreeMap<PodRef, PodStatus> {
        self.state.lock().unwrap().pods.clone()
    }
    /// Every write, oldest first; `None` marks a deletion.
    pub fn history(&self) -> Vec<(PodRef, Option<PodStatus>)> {
        self.state.lock().unwrap().history.clone()
    }
    /// The last node status.
    pub fn node(&self) -> Option<Node> {
        self.state.lock().unwrap().node.clone()
    }
    /// The next call of `method` (`pod_status`, `pod_deleted`, `node_status`) fails with `error`.
    pub fn fail_next(&self, method: &'static str, error: StatusError) {
        self.state.lock().unwrap().failures.push(method, error);
    }
    /// Wait until `pred` holds for the pods' statuses, at most `timeout`.
    pub async fn wait_for<F>(&self, timeout: Duration, mut pred: F) -> Result<(), String>
    where
        F: FnMut(&BTreeMap<PodRef, PodStatus>) -> bool,
    {
        let mut rx = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if pred(&self.state.lock().unwrap().pods) {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => {
                    return Err(format!(
                        "condition not met within {timeout:?}; pods: {:#?}",
                        self.pods()
                    ));
                }
            }
        }
    }
    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }
}

#[async_trait]
impl StatusSink for FakeStatusSink {
    async fn pod_status(&self, pod: &PodRef, status: &PodStatus) -> Result<(), StatusError> {
        {
            let mut s = self.state.lock().unwrap();
            if let Some(e) = s.failures.take("pod_status") {
                return Err(e);
            }
            s.pods.insert(pod.clone(), status.clone());
            s.history.push((pod.clone(), Some(status.clone())));
        }
        self.bump();
        Ok(())
    }
    async fn pod_deleted(&self, pod: &PodRef) -> Result<(), StatusError> {
        {
            let mut s = self.state.lock().unwrap();
            if let Some(e) = s.failures.take("pod_deleted") {
                return Err(e);
            }
            s.pods.remove(pod);
            s.history.push((pod.clone(), None));
        }
        self.bump();
        Ok(())
    }
    async fn node_status(&self, node: &Node) -> Result<(), StatusError> {
        {
            let mut s = self.state.lock().unwrap();
            if let Some(e) = s.failures.take("node_status") {
                return Err(e);
            }
            s.node = Some(node.clone());
        }
        self.bump();
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// pod source

#[derive(Default)]
struct ScriptState {
    pods: BTreeMap<PodRef, Pod>,
    watchers: Vec<mpsc::UnboundedSender<Result<PodEvent, SourceError>>>,
}

/// A [`PodSource`] driven by the test: `apply`, `delete` and `fail` reach every watcher; each new
/// watch starts with a snapshot of the pods applied so far.
#[derive(Clone)]
pub struct ScriptedPodSource {
    name: String,
    state: Arc<Mutex<ScriptState>>,
}

impl ScriptedPodSource {
    /// A source with this name and no pods.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            state: Arc::default(),
        }
    }
    /// Add or update a pod.
    pub fn apply(&self, pod: Pod) {
        let mut s = self.state.lock().unwrap();
        s.pods.insert(PodRef::of(&pod), pod.clone());
        s.watchers
            .retain(|w| w.send(Ok(PodEvent::Apply(pod.clone()))).is_ok());
    }
    /// Remove a pod.
    pub fn delete(&self, pod: &Pod) {
        let mut s = self.state.lock().unwrap();
        s.pods.remove(&PodRef::of(pod));
        s.watchers
            .retain(|w| w.send(Ok(PodEvent::Delete(pod.clone()))).is_ok());
    }
    /// Send an error item to every watcher.
    pub fn fail(&self, origin: &str, message: &str) {
        let mut s = self.state.lock().unwrap();
        s.watchers.retain(|w| {
            w.send(Err(SourceError::Remote {
                origin: origin.into(),
                message: message.into(),
            }))
            .is_ok()
        });
    }
    /// Send a fresh snapshot of the current pods to every watcher (as after a re-list).
    pub fn resnapshot(&self) {
        let mut s = self.state.lock().unwrap();
        let pods: Vec<Pod> = s.pods.values().cloned().collect();
        s.watchers
            .retain(|w| snapshot(&pods).into_iter().all(|e| w.send(e).is_ok()));
    }
    /// How many watches are open.
    pub fn watchers(&self) -> usize {
        self.state
            .lock()
            .unwrap()
            .watchers
            .iter()
            .filter(|w| !w.is_closed())
            .count()
    }
}

fn snapshot(pods: &[Pod]) -> Vec<Result<PodEvent, SourceError>> {
    let mut v = vec![Ok(PodEvent::Init)];
    v.extend(pods.iter().cloned().map(|p| Ok(PodEvent::InitApply(p))));
    v.push(Ok(PodEvent::InitDone));
    v
}

impl PodSource for ScriptedPodSource {
    fn name(&self) -> &str {
        &self.name
    }
    fn watch(&self) -> PodStream {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut s = self.state.lock().unwrap();
        let pods: Vec<Pod> = s.pods.values().cloned().collect();
        for e in snapshot(&pods) {
            let _ = tx.send(e);
        }
        s.watchers.push(tx);
        tokio_stream::wrappers::UnboundedReceiverStream::new(rx).boxed()
    }
}
