//! [`HookedRuntime`]: a runtime in front of another one. Every call goes through to the inner
//! runtime; a test or a benchmark may adjust sandbox configs on their way, observe each call
//! before and after it runs, and feed container events of its own.
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use node_core::RuntimeBackend;
//! use node_test_support::{FakeRuntime, HookedRuntime, hooked::Phase};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let calls = Arc::new(Mutex::new(Vec::new()));
//! let log = calls.clone();
//! let runtime = HookedRuntime::new(Arc::new(FakeRuntime::default()))
//!     .adjusting_sandboxes(|config| config.hostname = "adjusted".into())
//!     .observing(move |call, phase| log.lock().unwrap().push((call, phase)));
//! runtime.version().await.unwrap();
//! assert_eq!(
//!     *calls.lock().unwrap(),
//!     [("version", Phase::Before), ("version", Phase::After { ok: true })]
//! );
//! # }
//! ```

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use node_core::{ContainerEventStream, RuntimeBackend, RuntimeError, cri};
use tokio::sync::mpsc;

/// Adjusts a sandbox config on its way to the runtime.
pub type SandboxHook = Arc<dyn Fn(&mut cri::PodSandboxConfig) + Send + Sync>;
/// Sees each call (by its CRI method name in snake case) before and after it runs.
pub type CallObserver = Arc<dyn Fn(&'static str, Phase) + Send + Sync>;
/// The container events a test feeds, taken by the first subscription.
pub type EventFeed = Arc<Mutex<Option<mpsc::UnboundedReceiver<cri::ContainerEventResponse>>>>;

/// When a [`CallObserver`] is called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// The call is about to go to the inner runtime.
    Before,
    /// The inner runtime answered; `ok` is whether it succeeded.
    After {
        /// Whether the call succeeded.
        ok: bool,
    },
}

/// A runtime in front of another: every call goes through, sandbox configs (in `RunPodSandbox`
/// and `CreateContainer`) may be adjusted, calls observed, and container events come from a
/// channel the test feeds (see [`HookedRuntime::with_events`]; otherwise the inner runtime's).
#[derive(Clone)]
pub struct HookedRuntime {
    /// The runtime every call goes to.
    pub inner: Arc<dyn RuntimeBackend>,
    adjust_sandbox: Option<SandboxHook>,
    observer: Option<CallObserver>,
    events: Option<EventFeed>,
    subscriptions: Arc<Mutex<usize>>,
}

impl HookedRuntime {
    /// Pass every call to `inner`, unchanged.
    pub fn new(inner: Arc<dyn RuntimeBackend>) -> Self {
        Self {
            inner,
            adjust_sandbox: None,
            observer: None,
            events: None,
            subscriptions: Arc::default(),
        }
    }

    /// Send the events pushed into the returned sender (to one subscription).
    pub fn with_events(mut self) -> (Self, mpsc::UnboundedSender<cri::ContainerEventResponse>) {
        let (tx, rx) = mpsc::unbounded_channel();
        self.events = Some(Arc::new(Mutex::new(Some(rx))));
        (self, tx)
    }

    /// Adjust every sandbox config before it reaches the runtime.
    pub fn adjusting_sandboxes(
        mut self,
        f: impl Fn(&mut cri::PodSandboxConfig) + Send + Sync + 'static,
    ) -> Self {
        self.adjust_sandbox = Some(Arc::new(f));
        self
    }

    /// Call `f` before and after every call.
    pub fn observing(mut self, f: impl Fn(&'static str, Phase) + Send + Sync + 'static) -> Self {
        self.observer = Some(Arc::new(f));
        self
    }

    /// How many times `get_container_events` was called.
    pub fn subscriptions(&self) -> usize {
        *self.subscriptions.lock().unwrap()
    }

    async fn call<T>(
        &self,
        name: &'static str,
        call: impl std::future::Future<Output = Result<T, RuntimeError>>,
    ) -> Result<T, RuntimeError> {
        if let Some(observe) = &self.observer {
            observe(name, Phase::Before);
        }
        let result = call.await;
        if let Some(observe) = &self.observer {
            observe(name, Phase::After { ok: result.is_ok() });
        }
        result
    }

    fn adjust(&self, config: Option<&mut cri::PodSandboxConfig>) {
        if let (Some(f), Some(config)) = (&self.adjust_sandbox, config) {
            f(config);
        }
    }
}

#[async_trait]
impl RuntimeBackend for HookedRuntime {
    async fn version(&self) -> Result<cri::VersionResponse, RuntimeError> {
        self.call("version", self.inner.version()).await
    }
    async fn status(&self, verbose: bool) -> Result<cri::StatusResponse, RuntimeError> {
        self.call("status", self.inner.status(verbose)).await
    }
    async fn run_pod_sandbox(
        &self,
        mut req: cri::RunPodSandboxRequest,
    ) -> Result<String, RuntimeError> {
        self.adjust(req.config.as_mut());
        self.call("run_pod_sandbox", self.inner.run_pod_sandbox(req))
            .await
    }
    async fn stop_pod_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        self.call("stop_pod_sandbox", self.inner.stop_pod_sandbox(id))
            .await
    }
    async fn remove_pod_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        self.call("remove_pod_sandbox", self.inner.remove_pod_sandbox(id))
            .await
    }
    async fn pod_sandbox_status(
        &self,
        id: &str,
        verbose: bool,
    ) -> Result<cri::PodSandboxStatusResponse, RuntimeError> {
        self.call(
            "pod_sandbox_status",
            self.inner.pod_sandbox_status(id, verbose),
        )
        .await
    }
    async fn list_pod_sandbox(
        &self,
        filter: Option<cri::PodSandboxFilter>,
    ) -> Result<Vec<cri::PodSandbox>, RuntimeError> {
        self.call("list_pod_sandbox", self.inner.list_pod_sandbox(filter))
            .await
    }
    async fn create_container(
        &self,
        mut req: cri::CreateContainerRequest,
    ) -> Result<String, RuntimeError> {
        self.adjust(req.sandbox_config.as_mut());
        self.call("create_container", self.inner.create_container(req))
            .await
    }
    async fn start_container(&self, id: &str) -> Result<(), RuntimeError> {
        self.call("start_container", self.inner.start_container(id))
            .await
    }
    async fn stop_container(&self, id: &str, timeout: Duration) -> Result<(), RuntimeError> {
        self.call("stop_container", self.inner.stop_container(id, timeout))
            .await
    }
    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        self.call("remove_container", self.inner.remove_container(id))
            .await
    }
    async fn container_status(
        &self,
        id: &str,
        verbose: bool,
    ) -> Result<cri::ContainerStatusResponse, RuntimeError> {
        self.call("container_status", self.inner.container_status(id, verbose))
            .await
    }
    async fn list_containers(
        &self,
        filter: Option<cri::ContainerFilter>,
    ) -> Result<Vec<cri::Container>, RuntimeError> {
        self.call("list_containers", self.inner.list_containers(filter))
            .await
    }
    async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: Duration,
    ) -> Result<cri::ExecSyncResponse, RuntimeError> {
        self.call("exec_sync", self.inner.exec_sync(id, cmd, timeout))
            .await
    }
    async fn exec(&self, req: cri::ExecRequest) -> Result<cri::ExecResponse, RuntimeError> {
        self.call("exec", self.inner.exec(req)).await
    }
    async fn attach(&self, req: cri::AttachRequest) -> Result<cri::AttachResponse, RuntimeError> {
        self.call("attach", self.inner.attach(req)).await
    }
    async fn port_forward(
        &self,
        req: cri::PortForwardRequest,
    ) -> Result<cri::PortForwardResponse, RuntimeError> {
        self.call("port_forward", self.inner.port_forward(req))
            .await
    }
    async fn container_stats(&self, id: &str) -> Result<cri::ContainerStats, RuntimeError> {
        self.call("container_stats", self.inner.container_stats(id))
            .await
    }
    async fn list_container_stats(
        &self,
        filter: Option<cri::ContainerStatsFilter>,
    ) -> Result<Vec<cri::ContainerStats>, RuntimeError> {
        self.call(
            "list_container_stats",
            self.inner.list_container_stats(filter),
        )
        .await
    }
    async fn pod_sandbox_stats(&self, id: &str) -> Result<cri::PodSandboxStats, RuntimeError> {
        self.call("pod_sandbox_stats", self.inner.pod_sandbox_stats(id))
            .await
    }
    async fn list_pod_sandbox_stats(
        &self,
        filter: Option<cri::PodSandboxStatsFilter>,
    ) -> Result<Vec<cri::PodSandboxStats>, RuntimeError> {
        self.call(
            "list_pod_sandbox_stats",
            self.inner.list_pod_sandbox_stats(filter),
        )
        .await
    }
    async fn update_container_resources(
        &self,
        req: cri::UpdateContainerResourcesRequest,
    ) -> Result<(), RuntimeError> {
        self.call(
            "update_container_resources",
            self.inner.update_container_resources(req),
        )
        .await
    }
    async fn reopen_container_log(&self, id: &str) -> Result<(), RuntimeError> {
        self.call("reopen_container_log", self.inner.reopen_container_log(id))
            .await
    }
    async fn update_runtime_config(&self, config: cri::RuntimeConfig) -> Result<(), RuntimeError> {
        self.call(
            "update_runtime_config",
            self.inner.update_runtime_config(config),
        )
        .await
    }
    async fn get_container_events(&self) -> Result<ContainerEventStream, RuntimeError> {
        *self.subscriptions.lock().unwrap() += 1;
        let Some(events) = &self.events else {
            return self
                .call("get_container_events", self.inner.get_container_events())
                .await;
        };
        let rx = events
            .lock()
            .unwrap()
            .take()
            .ok_or_else(|| RuntimeError::Unavailable("already subscribed".into()))?;
        Ok(tokio_stream::wrappers::UnboundedReceiverStream::new(rx)
            .map(Ok)
            .boxed())
    }
}
