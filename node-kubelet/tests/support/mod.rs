//! Test helpers shared by the kubelet's integration tests.

#![allow(dead_code)] // each test file uses some of them

pub mod containerd;
pub mod native;
pub mod server;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{ContainerStatus, Node, PodStatus};
use node_core::{
    ImageBackend, Pod, PodRef, PodSource, RuntimeBackend, StatusError, StatusSink, cri,
};
use node_kubelet::node::http::{HttpState, NodeMetrics, PodsProvider, router};
use node_kubelet::node::shutdown::GroupReport;
use node_kubelet::node::stats::StatsProvider;
use node_kubelet::{
    CancellationToken, JsonStatusSink, Kubelet, KubeletBuilder, KubeletConfig, labels,
};
use node_test_support::{FakeRuntime, FakeStatusSink, NetnsFixture, ScriptedPodSource};

/// Run `fut` to its end on a fresh two-worker tokio runtime of this thread.
pub fn block_on<F: Future>(fut: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(fut)
}

/// Run an async test body on a thread inside a fresh network namespace.
pub fn in_netns<F: Future<Output = ()>>(name: &str, body: impl FnOnce() -> F + Send + 'static) {
    let ns = NetnsFixture::new(name).expect("netns");
    ns.run_in(move || block_on(body())).expect("run in netns");
}

/// Stop and remove every pod sandbox of `rt`, errors ignored: a test's pods go with it (its
/// guard sweeps whatever is left).
pub async fn remove_all_sandboxes(rt: &(impl RuntimeBackend + ?Sized)) {
    for s in rt.list_pod_sandbox(None).await.unwrap_or_default() {
        let _ = rt.stop_pod_sandbox(&s.id).await;
        let _ = rt.remove_pod_sandbox(&s.id).await;
    }
}

/// A pod from its YAML.
pub fn pod(yaml: &str) -> Pod {
    serde_saphyr::from_str(yaml).expect("test pod parses")
}

/// A kubelet builder for `node-1` with pods from `source` on `runtime` and `images`, a fake
/// status sink, pod logs under `log_root`, the pods' DNS from `<root>/resolv.conf` and a 1 s
/// sync period.
pub fn scripted_kubelet(
    source: &ScriptedPodSource,
    runtime: Arc<dyn RuntimeBackend>,
    images: Arc<dyn ImageBackend>,
    root: &Path,
    log_root: &Path,
) -> KubeletBuilder {
    Kubelet::builder("node-1")
        .source(Arc::new(source.clone()))
        .runtime(runtime, images)
        .status(Arc::new(FakeStatusSink::new()))
        .config(KubeletConfig {
            pod_log_root: log_root.to_path_buf(),
            resolv_conf: root.join("resolv.conf"),
            sync_period: Duration::from_secs(1),
            ..Default::default()
        })
}

/// The id of a running container of `rt`, waiting up to `limit` for one (`what`: for the
/// panic's message).
pub async fn running_container(
    rt: &(impl RuntimeBackend + ?Sized),
    what: &str,
    limit: Duration,
) -> String {
    node_test_support::until_async(what, limit, || async {
        rt.list_containers(None)
            .await
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.state == cri::ContainerState::ContainerRunning as i32)
            .map(|c| c.id)
    })
    .await
}

/// A fake runtime, a fake status sink and a scripted pod source named `source`.
pub fn fake_parts(source: &str) -> (FakeRuntime, FakeStatusSink, ScriptedPodSource) {
    (
        FakeRuntime::new(),
        FakeStatusSink::new(),
        ScriptedPodSource::new(source),
    )
}

/// The status the fake sink holds for the pod named `name` (any namespace).
pub fn status_of(sink: &FakeStatusSink, name: &str) -> Option<PodStatus> {
    sink.pods()
        .into_iter()
        .find(|(r, _)| r.name == name)
        .map(|(_, s)| s)
}

/// The pods each group of a node shutdown stopped, by priority, once the shutdown has
/// reported (waiting up to `limit`).
pub async fn stopped_by_priority(
    reports: &mut tokio::sync::watch::Receiver<Option<Vec<GroupReport>>>,
    limit: Duration,
) -> Vec<(i32, Vec<String>)> {
    tokio::time::timeout(limit, reports.wait_for(Option::is_some))
        .await
        .expect("the shutdown reported within the limit")
        .unwrap();
    reports
        .borrow()
        .clone()
        .unwrap()
        .into_iter()
        .map(|g| (g.priority, g.stopped.into_iter().map(|p| p.name).collect()))
        .collect()
}

/// A kubelet builder for `node` with pods from `source`, the fake runtime `rt` (as runtime and
/// image service) and the fake status sink `sink`, configured by `config`.
pub fn fake_kubelet(
    node: &str,
    source: Arc<dyn PodSource>,
    rt: &FakeRuntime,
    sink: &FakeStatusSink,
    config: KubeletConfig,
) -> KubeletBuilder {
    Kubelet::builder(node)
        .source(source)
        .runtime(Arc::new(rt.clone()), Arc::new(rt.clone()))
        .status(Arc::new(sink.clone()))
        .config(config)
}

/// [`fake_kubelet`] for `node-1` with the default config and pod logs under `<dir>/logs`,
/// running; `dir` goes with the task.
pub fn spawn_fake_kubelet(
    source: Arc<dyn PodSource>,
    rt: &FakeRuntime,
    sink: &FakeStatusSink,
    dir: tempfile::TempDir,
) -> KubeletTask {
    let config = KubeletConfig {
        pod_log_root: dir.path().join("logs"),
        ..Default::default()
    };
    let kubelet = fake_kubelet("node-1", source, rt, sink, config)
        .build()
        .unwrap();
    KubeletTask::spawn(kubelet, dir)
}

/// A kubelet running on a task of the current runtime until [`KubeletTask::stop`], with the
/// directory it writes to.
pub struct KubeletTask {
    token: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    /// The kubelet's directory (pod logs, node state), removed with the task.
    pub dir: tempfile::TempDir,
}

impl KubeletTask {
    /// Run `kubelet`; `dir` goes with it.
    pub fn spawn(kubelet: Kubelet, dir: tempfile::TempDir) -> Self {
        let token = CancellationToken::new();
        let t = token.clone();
        let task = tokio::spawn(async move { kubelet.run(t).await.unwrap() });
        Self { token, task, dir }
    }

    /// Cancel the kubelet and wait (up to 30 s) for it to end.
    pub async fn stop(self) {
        self.token.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("kubelet stops")
            .unwrap();
    }
}

/// A pod manifest: `name`, its grace period, and its containers (YAML list items).
pub fn pod_yaml(name: &str, grace_seconds: u32, containers: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  \
         terminationGracePeriodSeconds: {grace_seconds}\n  containers:\n{containers}"
    )
}

/// A pod with an init container and two containers with exec, httpGet and tcpSocket probes
/// (`IMG`: the busybox test image with `/var/www/index.html`).
pub const WEB_POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {app: web}
spec:
  terminationGracePeriodSeconds: 2
  initContainers:
  - name: init
    image: IMG
    command: [sh, -c, "echo init ran"]
  containers:
  - name: server
    image: IMG
    command: [httpd, -f, -p, "8080", -h, /var/www]
    ports: [{containerPort: 8080}]
    readinessProbe: {httpGet: {path: /index.html, port: 8080}, periodSeconds: 1}
    livenessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
  - name: helper
    image: IMG
    command: [sh, -c, "touch /tmp/ready; exec sleep 1000000"]
    readinessProbe: {exec: {command: [cat, /tmp/ready]}, periodSeconds: 1}
"#;

/// One status write: when, which pod, the status (`None`: the pod was reported deleted).
pub type Written = (SystemTime, PodRef, Option<PodStatus>);

/// Every status the kubelet wrote (with when), in front of the JSON file sink.
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<JsonStatusSink>,
    log: Arc<Mutex<Vec<Written>>>,
}

impl Recorder {
    pub fn new(dir: &Path) -> Self {
        Self {
            inner: Arc::new(JsonStatusSink::new(dir).unwrap()),
            log: Arc::default(),
        }
    }

    /// The latest status of the pod named `name` (any UID), with its reference.
    pub fn latest(&self, name: &str) -> Option<(PodRef, PodStatus)> {
        let log = self.log.lock().unwrap();
        log.iter()
            .rev()
            .find(|(_, p, _)| p.name == name)
            .and_then(|(_, p, s)| s.clone().map(|s| (p.clone(), s)))
    }

    /// Whether the pod with this UID was reported deleted.
    pub fn deleted(&self, uid: &str) -> bool {
        let log = self.log.lock().unwrap();
        log.iter().any(|(_, p, s)| p.uid == uid && s.is_none())
    }

    pub fn history(&self) -> Vec<Written> {
        self.log.lock().unwrap().clone()
    }
}

#[async_trait]
impl StatusSink for Recorder {
    async fn pod_status(&self, pod: &PodRef, status: &PodStatus) -> Result<(), StatusError> {
        self.inner.pod_status(pod, status).await?;
        self.log
            .lock()
            .unwrap()
            .push((SystemTime::now(), pod.clone(), Some(status.clone())));
        Ok(())
    }
    async fn pod_deleted(&self, pod: &PodRef) -> Result<(), StatusError> {
        self.inner.pod_deleted(pod).await?;
        self.log
            .lock()
            .unwrap()
            .push((SystemTime::now(), pod.clone(), None));
        Ok(())
    }
    async fn node_status(&self, node: &Node) -> Result<(), StatusError> {
        self.inner.node_status(node).await
    }
}

pub fn condition(s: &PodStatus, kind: &str) -> Option<String> {
    s.conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == kind)
        .map(|c| c.status.clone())
}

/// Whether a container of the pod has started.
pub fn any_started(s: &PodStatus) -> bool {
    s.container_statuses
        .iter()
        .flatten()
        .any(|c| c.started == Some(true))
}

pub fn is_ready(s: &PodStatus) -> bool {
    condition(s, "Ready").as_deref() == Some("True")
}

pub fn container<'a>(s: &'a PodStatus, name: &str) -> &'a ContainerStatus {
    s.container_statuses
        .iter()
        .flatten()
        .chain(s.init_container_statuses.iter().flatten())
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no status of container {name}: {s:#?}"))
}

/// A kubelet running on a task of the current runtime.
pub struct Running {
    pub rt: Arc<dyn RuntimeBackend>,
    pub recorder: Recorder,
    token: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), node_kubelet::KubeletError>>,
    pub started: Instant,
}

impl Running {
    pub fn start(kubelet: Kubelet, rt: Arc<dyn RuntimeBackend>, recorder: Recorder) -> Self {
        let token = CancellationToken::new();
        let task = tokio::spawn(kubelet.run(token.clone()));
        Self {
            rt,
            recorder,
            token,
            task,
            started: Instant::now(),
        }
    }

    pub async fn stop(self) {
        self.token.cancel();
        let r = tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the kubelet stops within 30 s");
        r.unwrap().unwrap();
    }

    /// Wait until the latest status of pod `name` satisfies `f`.
    pub async fn wait_status(
        &self,
        what: &str,
        name: &str,
        timeout: Duration,
        f: impl Fn(&PodStatus) -> bool,
    ) -> (PodRef, PodStatus) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((p, s)) = self.recorder.latest(name)
                && f(&s)
            {
                return (p, s);
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}; last status: {:#?}",
                self.recorder.latest(name)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until the pod with this UID was reported deleted.
    pub async fn wait_deleted(&self, what: &str, uid: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.recorder.deleted(uid) {
            assert!(
                Instant::now() < deadline,
                "{what}: not deleted within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The pod's containers in the runtime: id -> (name, attempt, state, started_at, finished_at).
    pub async fn containers_of(&self, uid: &str) -> BTreeMap<String, Instance> {
        let filter = cri::ContainerFilter {
            label_selector: HashMap::from([(labels::POD_UID.to_string(), uid.to_string())]),
            ..Default::default()
        };
        let mut out = BTreeMap::new();
        for c in self.rt.list_containers(Some(filter)).await.unwrap() {
            let Ok(st) = self.rt.container_status(&c.id, false).await else {
                continue;
            };
            let st = st.status.unwrap_or_default();
            out.insert(
                c.id.clone(),
                Instance {
                    name: c
                        .labels
                        .get(labels::CONTAINER_NAME)
                        .cloned()
                        .unwrap_or_default(),
                    attempt: c.metadata.map(|m| m.attempt).unwrap_or(0),
                    state: st.state,
                    started_at: st.started_at,
                    finished_at: st.finished_at,
                },
            );
        }
        out
    }

    pub async fn sandboxes_of(&self, uid: &str) -> usize {
        let filter = cri::PodSandboxFilter {
            label_selector: HashMap::from([(labels::POD_UID.to_string(), uid.to_string())]),
            ..Default::default()
        };
        self.rt.list_pod_sandbox(Some(filter)).await.unwrap().len()
    }

    /// When the kubelet first published a status showing container `id` terminated.
    pub fn exit_noticed(&self, id: &str) -> Option<SystemTime> {
        self.recorder.history().into_iter().find_map(|(t, _, s)| {
            let s = s?;
            let shows = s.container_statuses.iter().flatten().any(|c| {
                let ended = |st: &Option<k8s_openapi::api::core::v1::ContainerState>| {
                    st.as_ref()
                        .and_then(|st| st.terminated.as_ref())
                        .is_some_and(|t| t.container_id.as_deref().is_some_and(|c| c.ends_with(id)))
                };
                ended(&c.state) || ended(&c.last_state)
            });
            shows.then_some(t)
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub name: String,
    pub attempt: u32,
    pub state: i32,
    pub started_at: i64,
    pub finished_at: i64,
}

/// A kubelet's parts from node-test-support's fakes: the runtime (with images), the status
/// sink, a scripted pod source and the directories the kubelet and node manager write to.
pub struct Fakes {
    pub rt: FakeRuntime,
    pub sink: FakeStatusSink,
    pub source: ScriptedPodSource,
    pub dirs: tempfile::TempDir,
}

impl Fakes {
    /// The fakes with a pod source named `source` (`api`: the pods are not static) and the
    /// runtime holding `images`.
    pub fn new(source: &str, images: &[&str]) -> Self {
        let rt = FakeRuntime::new();
        for i in images {
            rt.add_image(i);
        }
        Self {
            rt,
            sink: FakeStatusSink::new(),
            source: ScriptedPodSource::new(source),
            dirs: tempfile::tempdir().unwrap(),
        }
    }

    /// A kubelet builder for `node` on these fakes: pod logs under the directories, a 2 s
    /// sync period.
    pub fn kubelet(&self, node: &str) -> KubeletBuilder {
        fake_kubelet(
            node,
            Arc::new(self.source.clone()),
            &self.rt,
            &self.sink,
            KubeletConfig {
                pod_log_root: self.dirs.path().join("logs"),
                sync_period: Duration::from_secs(2),
                ..Default::default()
            },
        )
    }
}

/// GET `path` from `app` in process: status, content type and body text.
pub async fn router_get(app: &axum::Router, path: &str) -> (http::StatusCode, String, String) {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let resp = app
        .clone()
        .oneshot(
            http::Request::get(path)
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status();
    let ctype = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, ctype, String::from_utf8(body.to_vec()).unwrap())
}

/// A pods provider without pods, for read-only-port routers that serve other things.
pub struct NoPods;

impl PodsProvider for NoPods {
    fn pods(&self) -> Vec<k8s_openapi::api::core::v1::Pod> {
        vec![]
    }
}

/// The read-only port's router without pods, serving `/stats/summary` and `/metrics/resource`
/// from `stats`.
pub fn stats_router(stats: StatsProvider) -> axum::Router {
    router(HttpState::new(Arc::new(NoPods), &NodeMetrics::default()).stats(stats))
}
