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

node_core::forward_runtime_backend! {
    impl RuntimeBackend for HookedRuntime {
        forward [
            version, status, stop_pod_sandbox, remove_pod_sandbox, pod_sandbox_status,
            list_pod_sandbox, start_container, stop_container, remove_container, container_status,
            list_containers, exec_sync, exec, attach, port_forward, container_stats,
            list_container_stats, pod_sandbox_stats, list_pod_sandbox_stats,
            update_container_resources, reopen_container_log, update_runtime_config,
        ]
        to self.inner around |name, call| self.call(name, call).await;

        // the sandbox config adjusted on its way
        async fn run_pod_sandbox(
            &self,
            mut req: cri::RunPodSandboxRequest,
        ) -> Result<String, RuntimeError> {
            self.adjust(req.config.as_mut());
            self.call("run_pod_sandbox", self.inner.run_pod_sandbox(req))
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

        // the test's own events when it feeds them
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
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::FakeRuntime;

    /// Every `RuntimeBackend` method, by its snake-case name.
    const ALL: [&str; 25] = [
        "version",
        "status",
        "run_pod_sandbox",
        "stop_pod_sandbox",
        "remove_pod_sandbox",
        "pod_sandbox_status",
        "list_pod_sandbox",
        "create_container",
        "start_container",
        "stop_container",
        "remove_container",
        "container_status",
        "list_containers",
        "exec_sync",
        "exec",
        "attach",
        "port_forward",
        "container_stats",
        "list_container_stats",
        "pod_sandbox_stats",
        "list_pod_sandbox_stats",
        "update_container_resources",
        "reopen_container_log",
        "update_runtime_config",
        "get_container_events",
    ];

    #[tokio::test(flavor = "current_thread")]
    async fn every_call_reaches_the_inner_runtime_between_before_and_after() {
        let fake = FakeRuntime::new();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let rt = HookedRuntime::new(Arc::new(fake.clone()))
            .adjusting_sandboxes(|c| c.hostname = "adjusted".into())
            .observing(move |call, phase| log.lock().unwrap().push((call, phase)));
        let sandbox = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: "web".into(),
                namespace: "default".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let d = Duration::from_secs(1);
        // the answers do not matter here (unknown ids, unimplemented calls): which calls passed does
        let _ = rt.version().await;
        let _ = rt.status(false).await;
        let id = rt
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(sandbox.clone()),
                ..Default::default()
            })
            .await
            .unwrap();
        let _ = rt.stop_pod_sandbox("x").await;
        let _ = rt.remove_pod_sandbox("x").await;
        let _ = rt.pod_sandbox_status(&id, false).await;
        let _ = rt.list_pod_sandbox(None).await;
        let _ = rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: id.clone(),
                sandbox_config: Some(sandbox),
                ..Default::default()
            })
            .await;
        let _ = rt.start_container("x").await;
        let _ = rt.stop_container("x", d).await;
        let _ = rt.remove_container("x").await;
        let _ = rt.container_status("x", false).await;
        let _ = rt.list_containers(None).await;
        let _ = rt.exec_sync("x", vec!["true".into()], d).await;
        let _ = rt.exec(Default::default()).await;
        let _ = rt.attach(Default::default()).await;
        let _ = rt.port_forward(Default::default()).await;
        let _ = rt.container_stats("x").await;
        let _ = rt.list_container_stats(None).await;
        let _ = rt.pod_sandbox_stats("x").await;
        let _ = rt.list_pod_sandbox_stats(None).await;
        let _ = rt.update_container_resources(Default::default()).await;
        let _ = rt.reopen_container_log("x").await;
        let _ = rt.update_runtime_config(Default::default()).await;
        let _ = rt.get_container_events().await;

        let seen = seen.lock().unwrap().clone();
        let names: Vec<_> = seen.chunks(2).map(|pair| pair[0].0).collect();
        assert_eq!(names, ALL, "each call observed once, in order");
        for pair in seen.chunks(2) {
            assert_eq!(pair[0], (pair[0].0, Phase::Before), "{seen:?}");
            assert!(
                matches!(pair[1], (name, Phase::After { .. }) if name == pair[0].0),
                "{seen:?}"
            );
        }
        assert_eq!(
            fake.sandboxes()[0].config.hostname,
            "adjusted",
            "the sandbox config was adjusted on its way"
        );
        assert_eq!(rt.subscriptions(), 1);
    }
}
