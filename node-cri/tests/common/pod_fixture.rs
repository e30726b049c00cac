//! The pod fixture shared by the root tests of every runtime (containerd through `CriClient` in
//! `root_containerd.rs`, the native runtime in `root_native_*.rs`): CRI sandbox and container
//! configs, running a pod and starting a container through any [`RuntimeBackend`], waiting for
//! a container state, and reading the CRI log format.
//!
//! Included through `mod common;` (`common::pod_fixture`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use node_core::{RuntimeBackend, RuntimeError, cri};

/// Labels from pairs.
pub fn labels(kv: &[(&str, &str)]) -> HashMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// An image spec naming `image`.
pub fn image_spec(image: &str) -> cri::ImageSpec {
    cri::ImageSpec {
        image: image.into(),
        ..Default::default()
    }
}

/// A pod sandbox config: metadata, hostname `name`, the kubelet's log directory and cgroup
/// parent.
pub fn sandbox_config(
    name: &str,
    uid: &str,
    namespace: &str,
    log_directory: &str,
    cgroup_parent: &str,
) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: uid.into(),
            namespace: namespace.into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: log_directory.into(),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A container config running `command` (empty: the image's) of `image`, logging to
/// `log_path` under the pod's log directory.
pub fn container_config(
    name: &str,
    image: &str,
    command: &[&str],
    log_path: &str,
) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(image_spec(image)),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: log_path.into(),
        linux: Some(cri::LinuxContainerConfig::default()),
        ..Default::default()
    }
}

/// Setters for the fields of a container config that tests vary, to chain on
/// [`container_config`] (or a runtime's own variant of it).
pub trait ContainerConfigExt: Sized {
    /// Allocate a terminal.
    fn with_tty(self) -> Self;
    /// Keep stdin open (`stdin_once`: closed after the first attach ends).
    fn with_stdin(self, once: bool) -> Self;
    /// The Linux resources.
    fn with_resources(self, r: cri::LinuxContainerResources) -> Self;
    /// Another image.
    fn with_image(self, image: &str) -> Self;
    /// Change the Linux security context (made when the config has none).
    fn with_security(self, f: impl FnOnce(&mut cri::LinuxContainerSecurityContext)) -> Self;
}

impl ContainerConfigExt for cri::ContainerConfig {
    fn with_tty(mut self) -> Self {
        self.tty = true;
        self
    }
    fn with_stdin(mut self, once: bool) -> Self {
        self.stdin = true;
        self.stdin_once = once;
        self
    }
    fn with_resources(mut self, r: cri::LinuxContainerResources) -> Self {
        self.linux.get_or_insert_with(Default::default).resources = Some(r);
        self
    }
    fn with_image(mut self, image: &str) -> Self {
        self.image = Some(image_spec(image));
        self
    }
    fn with_security(mut self, f: impl FnOnce(&mut cri::LinuxContainerSecurityContext)) -> Self {
        f(security(&mut self));
        self
    }
}

/// The Linux security context of a container config (made when it has none).
pub fn security(cfg: &mut cri::ContainerConfig) -> &mut cri::LinuxContainerSecurityContext {
    cfg.linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
}

/// `RunPodSandbox`: the sandbox id or the error.
pub async fn try_run_pod(
    rt: &dyn RuntimeBackend,
    config: &cri::PodSandboxConfig,
) -> Result<String, RuntimeError> {
    rt.run_pod_sandbox(cri::RunPodSandboxRequest {
        config: Some(config.clone()),
        runtime_handler: String::new(),
    })
    .await
}

/// `RunPodSandbox`, panicking with the error.
pub async fn run_pod(rt: &dyn RuntimeBackend, config: &cri::PodSandboxConfig) -> String {
    try_run_pod(rt, config)
        .await
        .unwrap_or_else(|e| panic!("run pod sandbox: {e}"))
}

/// `CreateContainer` + `StartContainer`, panicking with the error; the container id.
pub async fn start_container(
    rt: &dyn RuntimeBackend,
    pod: &str,
    sandbox: &cri::PodSandboxConfig,
    config: cri::ContainerConfig,
) -> String {
    let id = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config),
            sandbox_config: Some(sandbox.clone()),
        })
        .await
        .unwrap_or_else(|e| panic!("create container: {e}"));
    rt.start_container(&id)
        .await
        .unwrap_or_else(|e| panic!("start container: {e}"));
    id
}

/// A running pod sandbox of a runtime, to start containers in.
pub struct Pod<'a> {
    /// The runtime the sandbox runs on.
    pub rt: &'a dyn RuntimeBackend,
    /// The sandbox id.
    pub id: String,
    /// The config it was run with.
    pub config: cri::PodSandboxConfig,
}

impl<'a> Pod<'a> {
    /// `RunPodSandbox` of `config`, panicking with the error.
    pub async fn run(rt: &'a dyn RuntimeBackend, config: cri::PodSandboxConfig) -> Self {
        let id = run_pod(rt, &config).await;
        Self { rt, id, config }
    }

    /// `CreateContainer` + `StartContainer` in the pod, panicking with the error; the id.
    pub async fn start(&self, config: cri::ContainerConfig) -> String {
        start_container(self.rt, &self.id, &self.config, config).await
    }

    /// `StopPodSandbox` + `RemovePodSandbox`, asserting both succeed.
    pub async fn remove(&self) {
        remove_pod(self.rt, &self.id).await
    }
}

/// `CreateContainer` alone (the sandbox config given or not): the id or the error.
pub async fn create_container(
    rt: &dyn RuntimeBackend,
    pod: &str,
    sandbox: Option<&cri::PodSandboxConfig>,
    config: cri::ContainerConfig,
) -> Result<String, RuntimeError> {
    rt.create_container(cri::CreateContainerRequest {
        pod_sandbox_id: pod.into(),
        config: Some(config),
        sandbox_config: sandbox.cloned(),
    })
    .await
}

/// `StopPodSandbox` + `RemovePodSandbox`, asserting both succeed.
pub async fn remove_pod(rt: &dyn RuntimeBackend, pod: &str) {
    rt.stop_pod_sandbox(pod).await.unwrap();
    rt.remove_pod_sandbox(pod).await.unwrap();
}

/// A pod sandbox's (non-verbose) status.
pub async fn sandbox_status(rt: &dyn RuntimeBackend, id: &str) -> cri::PodSandboxStatus {
    rt.pod_sandbox_status(id, false)
        .await
        .unwrap()
        .status
        .unwrap()
}

/// A container's (non-verbose) status.
pub async fn container_status(rt: &dyn RuntimeBackend, id: &str) -> cri::ContainerStatus {
    rt.container_status(id, false)
        .await
        .unwrap()
        .status
        .unwrap()
}

/// The `info` JSON of a container's verbose status (the runtime's own details: pid, cgroup…).
pub async fn container_info(rt: &dyn RuntimeBackend, id: &str) -> serde_json::Value {
    serde_json::from_str(&rt.container_status(id, true).await.unwrap().info["info"]).unwrap()
}

/// The `info` JSON of a pod sandbox's verbose status.
pub async fn sandbox_info(rt: &dyn RuntimeBackend, id: &str) -> serde_json::Value {
    serde_json::from_str(&rt.pod_sandbox_status(id, true).await.unwrap().info["info"]).unwrap()
}

/// `ExecSync` of `cmd` in a container with a 10 s timeout, panicking with the error.
pub async fn exec(rt: &dyn RuntimeBackend, id: &str, cmd: &[&str]) -> cri::ExecSyncResponse {
    rt.exec_sync(
        id,
        cmd.iter().map(|s| s.to_string()).collect(),
        Duration::from_secs(10),
    )
    .await
    .unwrap_or_else(|e| panic!("exec {cmd:?}: {e}"))
}

/// [`exec`] of `sh -c script`: (exit code, stdout, stderr), trimmed.
pub async fn sh(rt: &dyn RuntimeBackend, id: &str, script: &str) -> (i32, String, String) {
    let out = exec(rt, id, &["sh", "-c", script]).await;
    (out.exit_code, trimmed(&out.stdout), trimmed(&out.stderr))
}

/// A file's text, trimmed, panicking when it cannot be read.
pub fn read_trimmed(path: impl AsRef<std::path::Path>) -> String {
    let path = path.as_ref();
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_string()
}

/// Output bytes as text, trimmed.
pub fn trimmed(out: &[u8]) -> String {
    String::from_utf8_lossy(out).trim().to_string()
}

/// Wait up to 20 s until a container runs; its status.
pub async fn wait_running(rt: &dyn RuntimeBackend, id: &str) -> cri::ContainerStatus {
    wait_state(
        rt,
        id,
        cri::ContainerState::ContainerRunning,
        Duration::from_secs(20),
    )
    .await
}

/// Wait up to 30 s until a container has exited; its status.
pub async fn wait_exited(rt: &dyn RuntimeBackend, id: &str) -> cri::ContainerStatus {
    wait_state(
        rt,
        id,
        cri::ContainerState::ContainerExited,
        Duration::from_secs(30),
    )
    .await
}

/// Wait until a container is in `state`; its status.
pub async fn wait_state(
    rt: &dyn RuntimeBackend,
    id: &str,
    state: cri::ContainerState,
    timeout: Duration,
) -> cri::ContainerStatus {
    let deadline = Instant::now() + timeout;
    loop {
        let st = rt
            .container_status(id, false)
            .await
            .unwrap()
            .status
            .unwrap();
        if st.state == state as i32 {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "container {id} not {state:?} within {timeout:?}: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Wait until `f` answers true, panicking after `timeout`.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !f().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The lines of a CRI log file: `<RFC3339Nano time> <stream> <P|F> <content>`.
pub fn parse_cri_log(text: &str) -> Vec<(String, String, String, String)> {
    text.lines()
        .map(|l| {
            let mut parts = l.splitn(4, ' ');
            let t = parts.next().unwrap_or_default().to_string();
            let stream = parts.next().unwrap_or_default().to_string();
            let tag = parts.next().unwrap_or_default().to_string();
            let content = parts.next().unwrap_or_default().to_string();
            (t, stream, tag, content)
        })
        .collect()
}

/// Whether `t` looks like RFC 3339 with nanoseconds: `2026-11-23T05:40:32.123456789Z` (or an
/// offset instead of `Z`).
pub fn is_rfc3339_nano(t: &str) -> bool {
    let b = t.as_bytes();
    b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'.'
        && t[20..].chars().take_while(|c| c.is_ascii_digit()).count() >= 1
        && (t.ends_with('Z') || t[20..].contains('+') || t[20..].contains('-'))
}
