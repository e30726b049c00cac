//! Root tests (cgroups, mounts, the native runtime's namespaces; no network traffic): the
//! Kubelet with the [`NodeManager`] on the real native runtime. Pods get their QoS cgroups as
//! the sandbox's `cgroup_parent` with the limits read back from this machine's hierarchy and
//! the containers' processes inside; pods over allocatable are rejected; under memory pressure
//! the BestEffort pod is evicted first; an emptyDir is shared and removed with its pod; a
//! configMap update is seen atomically; SIGTERM stops pods by priority.
//!
//! Each test runs its kubelet on a thread inside a NetnsFixture, under its own temporary root
//! and its own cgroup root (`nodekit-test/<pid>-<n>`); a guard kills what is left in that cgroup
//! tree, unmounts and removes everything on drop, panics included.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use node_core::{Pod, PodStatus, RuntimeBackend, cri};
use node_cri::native::runtime::{LayerDirImages, NativeConfig, NativeRuntime, ResolvedImage};
use node_kubelet::node::cgroups::CgroupConfig;
use node_kubelet::node::eviction::{EvictionConfig, parse_thresholds};
use node_kubelet::node::shutdown::{PriorityGracePeriod, ShutdownConfig, termination_signal};
use node_kubelet::node::volumes::MemoryObjectStore;
use node_kubelet::node::{NodeConfig, NodeManager};
use node_kubelet::{CancellationToken, Kubelet, KubeletConfig};
use node_test_support::{
    FakeCni, FakeRuntime, FakeStatusSink, NetnsFixture, ScriptedPodSource, TestImage, require_path,
    require_root,
};

static N: AtomicUsize = AtomicUsize::new(0);
const IMAGE: &str = "busybox:node-test";

/// The test's root directory and cgroup root; everything under them goes on drop.
struct Guard {
    dir: tempfile::TempDir,
    cgroup_top: String,
}

impl Guard {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("nodekit-rt-{}-", std::process::id()))
            .tempdir()
            .unwrap();
        let n = N.fetch_add(1, Ordering::SeqCst);
        Self {
            dir,
            cgroup_top: format!("nodekit-test/{}-node-{n}", std::process::id()),
        }
    }

    fn cgroup_root(&self) -> String {
        format!("{}/kubepods", self.cgroup_top)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        for d in node_test_support::sweep::cgroup_dirs(&self.cgroup_top) {
            node_test_support::sweep::kill_cgroup_tree(&d);
        }
        node_test_support::sweep::detach_mounts_under(self.dir.path());
    }
}

fn init_binary() -> PathBuf {
    if let Some(p) = node_cri::native::runtime::default_init_binary() {
        return p;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let st = std::process::Command::new(cargo)
        .args(["build", "-p", "node-cri", "--bin", "nodekit-init"])
        .status()
        .expect("running cargo");
    assert!(st.success(), "building nodekit-init");
    node_cri::native::runtime::default_init_binary().expect("nodekit-init built")
}

/// The busybox test image as a layer directory for the native runtime.
fn images(dir: &Path) -> Arc<LayerDirImages> {
    let images = Arc::new(LayerDirImages::new());
    let img = TestImage::busybox().build().expect("busybox image");
    let layer = dir.join("layers/0");
    std::fs::create_dir_all(&layer).unwrap();
    tar::Archive::new(flate2::read::GzDecoder::new(&img.layers[0].bytes[..]))
        .unpack(&layer)
        .unwrap();
    let config: oci_spec::image::ImageConfiguration =
        serde_json::from_slice(&img.config.bytes).unwrap();
    images.insert(
        IMAGE,
        ResolvedImage {
            id: img.config.digest.clone(),
            layer_dirs: vec![layer],
            config,
        },
    );
    images
}

/// One kubelet with a node manager on the native runtime.
struct Node {
    runtime: Arc<NativeRuntime>,
    sink: FakeStatusSink,
    source: ScriptedPodSource,
    manager: Arc<NodeManager>,
    token: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Node {
    fn start(
        g: &Guard,
        config: impl FnOnce(&mut NodeConfig),
        store: Arc<MemoryObjectStore>,
    ) -> Self {
        Self::start_with(g, config, store, |m| m)
    }

    fn start_with(
        g: &Guard,
        config: impl FnOnce(&mut NodeConfig),
        store: Arc<MemoryObjectStore>,
        wrap: impl FnOnce(NodeManager) -> NodeManager,
    ) -> Self {
        let root = g.dir.path();
        let runtime = Arc::new(
            NativeRuntime::new(NativeConfig {
                root: root.join("rt"),
                cni: Arc::new(FakeCni::new()),
                images: images(root),
                init_binary: Some(init_binary()),
                cgroup_parent: format!("{}/runtime", g.cgroup_top),
                kill_wait: Duration::from_secs(10),
                ..Default::default()
            })
            .expect("native runtime"),
        );
        let mut c = NodeConfig::new("node-1");
        c.cgroups = Some(CgroupConfig::default().root(g.cgroup_root()));
        c.volumes.root_dir = root.join("kubelet");
        c.allocatable.root_dir = root.to_path_buf();
        config(&mut c);
        let manager = Arc::new(wrap(NodeManager::new(c, store).expect("node manager")));
        let (sink, source) = (FakeStatusSink::new(), ScriptedPodSource::new("file"));
        let images = FakeRuntime::new();
        images.add_image(IMAGE);
        let kubelet = Kubelet::builder("node-1")
            .source(Arc::new(source.clone()))
            .runtime(runtime.clone(), Arc::new(images))
            .status(Arc::new(sink.clone()))
            .node(manager.clone())
            .config(KubeletConfig {
                pod_log_root: root.join("logs"),
                sync_period: Duration::from_secs(1),
                ..Default::default()
            })
            .build()
            .unwrap();
        let token = CancellationToken::new();
        let t = token.clone();
        let task = tokio::spawn(async move { kubelet.run(t).await.unwrap() });
        Self {
            runtime,
            sink,
            source,
            manager,
            token,
            task: Some(task),
        }
    }

    async fn stop(mut self) {
        self.token.cancel();
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
        }
        // the pods go with the test: through the runtime, then the guard sweeps the rest
        for s in self
            .runtime
            .list_pod_sandbox(None)
            .await
            .unwrap_or_default()
        {
            let _ = self.runtime.stop_pod_sandbox(&s.id).await;
            let _ = self.runtime.remove_pod_sandbox(&s.id).await;
        }
    }

    fn status(&self, name: &str) -> Option<PodStatus> {
        self.sink
            .pods()
            .into_iter()
            .find(|(r, _)| r.name == name)
            .map(|(_, s)| s)
    }

    fn phase_reason(&self, name: &str) -> Option<(String, String)> {
        let s = self.status(name)?;
        Some((s.phase?, s.reason.unwrap_or_default()))
    }

    /// The running containers by pod name (ids).
    async fn running(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for c in self.runtime.list_containers(None).await.unwrap_or_default() {
            if c.state == cri::ContainerState::ContainerRunning as i32 {
                let pod = c
                    .labels
                    .get("io.kubernetes.pod.name")
                    .cloned()
                    .unwrap_or_default();
                out.entry(pod).or_default().push(c.id);
            }
        }
        out
    }

    async fn wait_running(&self, pods: &[&str]) -> BTreeMap<String, Vec<String>> {
        until(
            &format!("{pods:?} running"),
            Duration::from_secs(60),
            || async {
                let r = self.running().await;
                pods.iter().all(|p| r.contains_key(*p)).then_some(r)
            },
        )
        .await
    }
}

async fn until<T, F: Future<Output = Option<T>>>(
    what: &str,
    limit: Duration,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Run an async test body on a thread inside a fresh network namespace.
fn in_netns<F: Future<Output = ()>>(name: &str, body: impl FnOnce() -> F + Send + 'static) {
    let ns = NetnsFixture::new(name).expect("netns");
    ns.run_in(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(body())
    })
    .expect("run in netns");
}

fn ready(name: &str) -> bool {
    require_root(name)
        && require_path(name, "/sys/fs/cgroup/cpu")
        && require_path(name, "/sys/fs/cgroup/memory")
}

fn pod(yaml: &str) -> Pod {
    serde_saphyr::from_str(yaml).expect("test pod parses")
}

fn sleeper(name: &str, resources: &str, extra: &str) -> Pod {
    pod(&format!(
        "metadata: {{name: {name}, namespace: default, uid: uid-{name}}}\nspec:\n  terminationGracePeriodSeconds: 2\n  {extra}\n  containers:\n  - {{name: app, image: \"{IMAGE}\", imagePullPolicy: Never, command: [sleep, \"300\"], resources: {{{resources}}}}}\n"
    ))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_string()
}

/// Every pid in a cgroup directory tree.
fn pids_under(dir: &Path) -> Vec<i32> {
    let mut out: Vec<i32> = read(&dir.join("cgroup.procs"))
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            out.extend(pids_under(&e.path()));
        }
    }
    out
}

fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

#[test]
fn qos_cgroups_limits_and_admission_on_the_real_hierarchy() {
    if !ready("qos_cgroups_limits_and_admission_on_the_real_hierarchy") {
        return;
    }
    let g = Guard::new();
    let cg_root = g.cgroup_root();
    let vol_root = g.dir.path().join("kubelet/pods");
    let g = Arc::new(g);
    let g2 = g.clone();
    in_netns("nk-node-qos", move || async move {
        let node = Node::start(&g2, |_| {}, Arc::new(MemoryObjectStore::default()));
        node.source.apply(sleeper(
            "gua",
            "requests: {cpu: 200m, memory: 64Mi}, limits: {cpu: 200m, memory: 64Mi}",
            "priority: 0",
        ));
        node.source.apply(sleeper("be", "", "priority: 0"));
        let before = node.wait_running(&["gua", "be"]).await;

        // Guaranteed: <root>/pod<uid>, shares from the request, quota and memory from limits
        let cpu = Path::new("/sys/fs/cgroup/cpu").join(&cg_root);
        let mem = Path::new("/sys/fs/cgroup/memory").join(&cg_root);
        assert_eq!(read(&cpu.join("poduid-gua/cpu.shares")), "204");
        assert_eq!(read(&cpu.join("poduid-gua/cpu.cfs_quota_us")), "20000");
        assert_eq!(read(&cpu.join("poduid-gua/cpu.cfs_period_us")), "100000");
        assert_eq!(
            read(&mem.join("poduid-gua/memory.limit_in_bytes")),
            (64u64 << 20).to_string()
        );
        // BestEffort: <root>/besteffort/pod<uid>, minimum shares, no quota, no memory limit
        assert_eq!(read(&cpu.join("besteffort/cpu.shares")), "2");
        assert_eq!(read(&cpu.join("besteffort/poduid-be/cpu.shares")), "2");
        assert_eq!(
            read(&cpu.join("besteffort/poduid-be/cpu.cfs_quota_us")),
            "-1"
        );
        let unlimited: u64 = read(&mem.join("besteffort/poduid-be/memory.limit_in_bytes"))
            .parse()
            .unwrap();
        assert!(unlimited > 1 << 60, "{unlimited}");
        // the containers' processes are inside their pod's cgroups, in both controllers
        for (pod_dir, pod) in [("poduid-gua", "gua"), ("besteffort/poduid-be", "be")] {
            for top in [&cpu, &mem] {
                let pids = pids_under(&top.join(pod_dir));
                assert!(
                    pids.iter().any(|p| cmdline(*p).contains("sleep 300")),
                    "{pod}: no container process in {}: {pids:?}",
                    top.join(pod_dir).display()
                );
            }
        }

        // admission: over allocatable is rejected, the running pods are left alone
        let alloc = node.manager.allocatable();
        node.source.apply(sleeper(
            "cpu-hog",
            &format!("requests: {{cpu: {}m}}", alloc.cpu_milli + 1000),
            "priority: 0",
        ));
        node.source.apply(sleeper(
            "mem-hog",
            &format!("requests: {{memory: {}}}", alloc.memory_bytes + (1 << 30)),
            "priority: 0",
        ));
        until("rejections", Duration::from_secs(20), || async {
            (node.phase_reason("cpu-hog").is_some() && node.phase_reason("mem-hog").is_some())
                .then_some(())
        })
        .await;
        assert_eq!(
            node.phase_reason("cpu-hog").unwrap(),
            ("Failed".into(), "OutOfcpu".into())
        );
        assert_eq!(
            node.phase_reason("mem-hog").unwrap(),
            ("Failed".into(), "OutOfmemory".into())
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = node.running().await;
        assert_eq!(after, before, "the admitted pods keep running, untouched");
        assert!(!cpu.join("burstable/poduid-cpu-hog").exists());

        // deleting the pods removes their cgroups and volume directories
        node.source.delete(&sleeper("gua", "", ""));
        node.source.delete(&sleeper("be", "", ""));
        until("pod cgroups removed", Duration::from_secs(60), || async {
            (!cpu.join("poduid-gua").exists()
                && !mem.join("besteffort/poduid-be").exists()
                && !vol_root.join("uid-gua").exists())
            .then_some(())
        })
        .await;
        node.stop().await;
    });
    drop(g);
}

#[test]
fn memory_pressure_evicts_the_besteffort_pod_first() {
    if !ready("memory_pressure_evicts_the_besteffort_pod_first") {
        return;
    }
    let g = Arc::new(Guard::new());
    let g2 = g.clone();
    in_netns("nk-node-evict", move || async move {
        // a threshold above the machine's whole memory: always under pressure
        let total = node_kubelet::node::allocatable::mem_total(Path::new("/proc/meminfo")).unwrap();
        let node = Node::start(
            &g2,
            |c| {
                c.eviction = Some(EvictionConfig {
                    thresholds: parse_thresholds(&format!(
                        "memory.available<{}",
                        total + (1 << 30)
                    ))
                    .unwrap(),
                    ..Default::default()
                });
                // long enough for both pods to be seen running first, even on a loaded machine
                c.eviction_interval = Duration::from_secs(8);
                c.qos_update_interval = Duration::from_millis(500);
            },
            Arc::new(MemoryObjectStore::default()),
        );
        node.source.apply(sleeper(
            "burstable",
            "requests: {cpu: 300m, memory: 16Mi}",
            "priority: 0",
        ));
        node.source
            .apply(sleeper("besteffort", "", "priority: 100"));
        node.wait_running(&["burstable", "besteffort"]).await;
        // the Burstable class's shares follow its pods' CPU requests (300m: 307 shares)
        let burstable = Path::new("/sys/fs/cgroup/cpu")
            .join(g2.cgroup_root())
            .join("burstable/cpu.shares");
        until("burstable shares", Duration::from_secs(10), || async {
            (read(&burstable) == "307").then_some(())
        })
        .await;
        let evicted = |n: &Node| -> Vec<&'static str> {
            ["besteffort", "burstable"]
                .into_iter()
                .filter(|p| n.phase_reason(p) == Some(("Failed".into(), "Evicted".into())))
                .collect()
        };
        until("an eviction", Duration::from_secs(30), || async {
            (!evicted(&node).is_empty()).then_some(())
        })
        .await;
        assert_eq!(evicted(&node), ["besteffort"], "BestEffort goes first");
        let running = node.running().await;
        assert!(running.contains_key("burstable") && !running.contains_key("besteffort"));
        let msg = node.status("besteffort").unwrap().message.unwrap();
        assert!(
            msg.starts_with("The node was low on resource: memory"),
            "{msg}"
        );
        assert!(node.manager.health().borrow().memory_pressure);
        until("the second eviction", Duration::from_secs(30), || async {
            (evicted(&node).len() == 2).then_some(())
        })
        .await;
        assert!(node.running().await.is_empty());
        node.stop().await;
    });
    drop(g);
}

#[test]
fn an_emptydir_is_shared_and_a_configmap_update_is_atomic() {
    if !ready("an_emptydir_is_shared_and_a_configmap_update_is_atomic") {
        return;
    }
    let g = Arc::new(Guard::new());
    let g2 = g.clone();
    let vol_root = g.dir.path().join("kubelet/pods");
    in_netns("nk-node-vols", move || async move {
        let store = Arc::new(MemoryObjectStore::default());
        let blue = "blue".repeat(2048);
        let green = "green".repeat(2048);
        let cm = |v: &str| ConfigMap {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some("settings".into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            data: Some(BTreeMap::from([("color".to_string(), v.to_string())])),
            ..Default::default()
        };
        store.put_config_map(cm(&blue));
        let node = Node::start(&g2, |_| {}, store.clone());
        let p = pod(&format!(
            r#"
metadata: {{name: vols, namespace: default, uid: uid-vols}}
spec:
  terminationGracePeriodSeconds: 1
  volumes:
  - {{name: shared, emptyDir: {{}}}}
  - {{name: cfg, configMap: {{name: settings}}}}
  containers:
  - name: writer
    image: "{IMAGE}"
    imagePullPolicy: Never
    command: [sh, -c, "echo hello from writer > /out/msg; sleep 300"]
    volumeMounts: [{{name: shared, mountPath: /out}}]
  - name: reader
    image: "{IMAGE}"
    imagePullPolicy: Never
    command: [sh, -c, "until [ -f /in/msg ]; do sleep 0.1; done; cat /in/msg > /in/seen-by-reader; sleep 300"]
    volumeMounts: [{{name: shared, mountPath: /in}}]
  - name: watcher
    image: "{IMAGE}"
    imagePullPolicy: Never
    command: [sh, -c, "while true; do cat /etc/cfg/color >> /log/colors; echo >> /log/colors; sleep 0.02; done"]
    volumeMounts: [{{name: cfg, mountPath: /etc/cfg}}, {{name: shared, mountPath: /log}}]
"#
        ));
        node.source.apply(p.clone());
        node.wait_running(&["vols"]).await;
        let shared = vol_root.join("uid-vols/volumes/kubernetes.io~empty-dir/shared");
        let seen = until(
            "the reader saw the writer's file",
            Duration::from_secs(30),
            || async { std::fs::read_to_string(shared.join("seen-by-reader")).ok() },
        )
        .await;
        assert_eq!(seen, "hello from writer\n");
        until(
            "the watcher reads blue",
            Duration::from_secs(30),
            || async {
                std::fs::read_to_string(shared.join("colors"))
                    .ok()
                    .filter(|t| t.contains(&blue))
            },
        )
        .await;
        store.put_config_map(cm(&green));
        until(
            "the watcher reads green",
            Duration::from_secs(30),
            || async {
                std::fs::read_to_string(shared.join("colors"))
                    .ok()
                    .filter(|t| t.contains(&green))
            },
        )
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let log = std::fs::read_to_string(shared.join("colors")).unwrap();
        let lines: Vec<&str> = log.lines().collect();
        assert!(lines.len() > 10, "{} reads", lines.len());
        // every read saw one whole version: never a missing, empty or mixed file
        for (i, l) in lines.iter().enumerate() {
            assert!(
                *l == blue || *l == green,
                "read {i} saw {} bytes: {:.40}",
                l.len(),
                l
            );
        }
        let first_green = lines.iter().position(|l| *l == green).unwrap();
        assert!(
            lines[first_green..].iter().all(|l| *l == green),
            "no going back"
        );

        node.source.delete(&p);
        until(
            "the pod's volumes removed",
            Duration::from_secs(60),
            || async { (!vol_root.join("uid-vols").exists()).then_some(()) },
        )
        .await;
        node.stop().await;
    });
    drop(g);
}

#[test]
fn sigterm_shuts_pods_down_in_priority_order() {
    if !ready("sigterm_shuts_pods_down_in_priority_order") {
        return;
    }
    let g = Arc::new(Guard::new());
    let g2 = g.clone();
    in_netns("nk-node-sigterm", move || async move {
        let node = Node::start_with(
            &g2,
            |c| {
                c.shutdown = ShutdownConfig {
                    by_priority: [0, 1000, 2000]
                        .into_iter()
                        .map(|priority| PriorityGracePeriod {
                            priority,
                            grace_period: Duration::from_secs(5),
                        })
                        .collect(),
                };
            },
            Arc::new(MemoryObjectStore::default()),
            |m| m.shutdown_on(termination_signal().expect("SIGTERM handler")),
        );
        node.source.apply(sleeper("high", "", "priority: 2000"));
        node.source.apply(sleeper("low", "", "priority: 0"));
        node.source.apply(sleeper("mid", "", "priority: 1000"));
        let ids = node.wait_running(&["high", "low", "mid"]).await;
        let mut reports = node.manager.shutdown_reports();
        // SAFETY: signalling our own process; the handler above catches it.
        unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
        tokio::time::timeout(Duration::from_secs(60), reports.wait_for(Option::is_some))
            .await
            .expect("the shutdown finishes")
            .unwrap();
        let order: Vec<(i32, Vec<String>, usize)> = reports
            .borrow()
            .clone()
            .unwrap()
            .into_iter()
            .map(|g| {
                (
                    g.priority,
                    g.stopped.into_iter().map(|p| p.name).collect(),
                    g.failed.len(),
                )
            })
            .collect();
        assert_eq!(
            order,
            vec![
                (0, vec!["low".to_string()], 0),
                (1000, vec!["mid".to_string()], 0),
                (2000, vec!["high".to_string()], 0)
            ]
        );
        // the runtime's exit times agree: low, then mid, then high
        let mut finished = BTreeMap::new();
        for (pod, cids) in &ids {
            let s = node
                .runtime
                .container_status(&cids[0], false)
                .await
                .unwrap();
            let s = s.status.unwrap();
            assert_eq!(
                s.state,
                cri::ContainerState::ContainerExited as i32,
                "{pod}"
            );
            finished.insert(pod.clone(), s.finished_at);
        }
        assert!(
            finished["low"] < finished["mid"] && finished["mid"] < finished["high"],
            "{finished:?}"
        );
        assert!(node.manager.health().borrow().shutting_down);
        until("Terminated statuses", Duration::from_secs(10), || async {
            ["low", "mid", "high"]
                .iter()
                .all(|n| node.phase_reason(n) == Some(("Failed".into(), "Terminated".into())))
                .then_some(())
        })
        .await;
        node.stop().await;
    });
    drop(g);
}
