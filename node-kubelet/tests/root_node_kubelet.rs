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

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use node_core::{ImageBackend, Pod, PodStatus, RuntimeBackend, cri};
use node_cri::native::image::{ImageStore, ImageStoreConfig};
use node_cri::native::runtime::{LayerDirImages, NativeRuntime, RootfsProvider};
use node_kubelet::node::allocatable::fs_stats;
use node_kubelet::node::cgroups::CgroupConfig;
use node_kubelet::node::eviction::{
    EvictionConfig, EvictionError, NodeSignals, Observations, Signal, SignalObserver,
    parse_thresholds,
};
use node_kubelet::node::gc::{
    ContainerGcManager, ContainerGcPolicy, GcConfig, ImageGcPolicy, PodPresence,
};
use node_kubelet::node::shutdown::{PriorityGracePeriod, ShutdownConfig, termination_signal};
use node_kubelet::node::volumes::MemoryObjectStore;
use node_kubelet::node::{NodeConfig, NodeManager};
use node_kubelet::{CancellationToken, Kubelet, KubeletConfig};
use node_test_support::{
    FakeRuntime, FakeStatusSink, NetnsFixture, ScriptedPodSource, TestImage, require_path,
    require_root,
};

mod support;
use node_test_support::until_async as until;
use support::native::Guard;
use support::{in_netns, pod};

const IMAGE: &str = "busybox:node-test";

fn images(dir: &Path) -> Arc<LayerDirImages> {
    support::native::busybox_images(dir, IMAGE)
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
        Self::start_on(g, config, store, wrap, None)
    }

    /// As `start_with`; with `image_store`, the native runtime's images come from it and it is
    /// the kubelet's image service (the node manager collects garbage through the kubelet's
    /// runtime and image service).
    fn start_on(
        g: &Guard,
        config: impl FnOnce(&mut NodeConfig),
        store: Arc<MemoryObjectStore>,
        wrap: impl FnOnce(NodeManager) -> NodeManager,
        image_store: Option<Arc<ImageStore>>,
    ) -> Self {
        let root = g.dir.path();
        let rootfs: Arc<dyn RootfsProvider> = match &image_store {
            Some(s) => s.clone(),
            None => images(root),
        };
        let runtime = support::native::runtime(g, rootfs);
        let mut c = NodeConfig::new("node-1");
        c.cgroups = Some(CgroupConfig::default().root(g.cgroup_root()));
        c.volumes.root_dir = root.join("kubelet");
        c.allocatable.root_dir = root.to_path_buf();
        c.pod_log_root = root.join("logs");
        config(&mut c);
        let manager = NodeManager::new(c, store).expect("node manager");
        let image_service: Arc<dyn ImageBackend> = match &image_store {
            Some(s) => s.clone(),
            None => {
                let fake = FakeRuntime::new();
                fake.add_image(IMAGE);
                Arc::new(fake)
            }
        };
        let manager = Arc::new(wrap(manager));
        let (sink, source) = (FakeStatusSink::new(), ScriptedPodSource::new("api"));
        let kubelet = Kubelet::builder("node-1")
            .source(Arc::new(source.clone()))
            .runtime(runtime.clone(), image_service)
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
        support::remove_all_sandboxes(&*self.runtime).await;
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

fn ready(name: &str) -> bool {
    require_root(name)
        && require_path(name, "/sys/fs/cgroup/cpu")
        && require_path(name, "/sys/fs/cgroup/memory")
}

/// [`ready`], and the busybox image the image-store tests import.
fn ready_with_busybox(name: &str) -> bool {
    ready(name) && require_path(name, node_test_support::image::BUSYBOX)
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
    let test = NodeTest::new(
        "qos_cgroups_limits_and_admission_on_the_real_hierarchy",
        ready,
    );
    test.run("nk-node-qos", None, |g2| async move {
        let cg_root = g2.cgroup_root();
        let vol_root = g2.dir.path().join("kubelet/pods");
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
        node
    });
}

/// The machine's real signals, with memory left out until switched on: the pressure starts once
/// the pods run (under memory pressure a new BestEffort pod is not even admitted).
struct MemorySwitch {
    inner: NodeSignals,
    on: AtomicBool,
}

impl SignalObserver for MemorySwitch {
    fn observe(&self) -> Result<Observations, EvictionError> {
        let mut o = self.inner.observe()?;
        if !self.on.load(Ordering::SeqCst) {
            o.remove(&Signal::MemoryAvailable);
        }
        Ok(o)
    }
}

#[test]
fn memory_pressure_evicts_the_besteffort_pod_first() {
    let test = NodeTest::new("memory_pressure_evicts_the_besteffort_pod_first", ready);
    test.run("nk-node-evict", None, |g2| async move {
        // a threshold above the machine's whole memory: under pressure once switched on
        let total = node_kubelet::node::allocatable::mem_total(Path::new("/proc/meminfo")).unwrap();
        let switch = Arc::new(MemorySwitch {
            inner: NodeSignals {
                nodefs: g2.dir.path().to_path_buf(),
                imagefs: None,
            },
            on: AtomicBool::new(false),
        });
        let observer = switch.clone();
        let node = Node::start_with(
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
                c.eviction_interval = Duration::from_secs(1);
                c.qos_update_interval = Duration::from_millis(500);
            },
            Arc::new(MemoryObjectStore::default()),
            |m| m.signals(observer),
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
        assert!(evicted(&node).is_empty(), "no pressure, no eviction");
        switch.on.store(true, Ordering::SeqCst);
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
        // a new BestEffort pod is not admitted under memory pressure
        node.source.apply(sleeper("late", "", "priority: 0"));
        until("late rejected", Duration::from_secs(30), || async {
            node.phase_reason("late")
        })
        .await;
        assert_eq!(
            node.phase_reason("late"),
            Some(("Failed".into(), "Evicted".into()))
        );
        assert_eq!(
            node.status("late").unwrap().message.unwrap(),
            "The node had condition: [MemoryPressure]. "
        );
        until("the second eviction", Duration::from_secs(30), || async {
            (evicted(&node).len() == 2).then_some(())
        })
        .await;
        assert!(node.running().await.is_empty());
        node
    });
}

#[test]
fn an_emptydir_is_shared_and_a_configmap_update_is_atomic() {
    let test = NodeTest::new(
        "an_emptydir_is_shared_and_a_configmap_update_is_atomic",
        ready,
    );
    test.run("nk-node-vols", None, |g2| async move {
        let vol_root = g2.dir.path().join("kubelet/pods");
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
    command: [sh, -c, "echo hello from writer > /out/msg.tmp && mv /out/msg.tmp /out/msg; sleep 300"]
    volumeMounts: [{{name: shared, mountPath: /out}}]
  - name: reader
    image: "{IMAGE}"
    imagePullPolicy: Never
    command: [sh, -c, "until [ -f /in/msg ]; do sleep 0.1; done; cat /in/msg > /in/seen.tmp && mv /in/seen.tmp /in/seen-by-reader; sleep 300"]
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
        // only whole lines: the watcher may be writing the last one as we read
        let whole = &log[..log.rfind('\n').map_or(0, |i| i + 1)];
        let lines: Vec<&str> = whole.lines().collect();
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
        node
    });
}

#[test]
fn sigterm_shuts_pods_down_in_priority_order() {
    let test = NodeTest::new("sigterm_shuts_pods_down_in_priority_order", ready);
    test.run("nk-node-sigterm", None, |g2| async move {
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
        node
    });
}

/// As [`in_netns`], in a private mount namespace with a tmpfs of `size` over `root`: disk
/// thresholds and usage are measured there, never on the host's disk.
fn in_netns_on_tmpfs<F: Future<Output = ()>>(
    name: &str,
    root: PathBuf,
    size: &'static str,
    body: impl FnOnce() -> F + Send + 'static,
) {
    let ns = NetnsFixture::new(name).expect("netns");
    ns.run_in(move || {
        node_test_support::sweep::in_private_mount_ns(move || {
            nix::mount::mount(
                Some("tmpfs"),
                &root,
                Some("tmpfs"),
                nix::mount::MsFlags::empty(),
                Some(format!("size={size}").as_str()),
            )
            .expect("tmpfs over the test root");
            support::block_on(body())
        })
    })
    .expect("run in netns");
}

/// A node test: its name and the readiness check it needs ([`ready`], [`ready_with_busybox`]).
struct NodeTest {
    name: &'static str,
    ready: fn(&str) -> bool,
}

impl NodeTest {
    fn new(name: &'static str, ready: fn(&str) -> bool) -> Self {
        Self { name, ready }
    }

    /// Runs the test once its readiness check holds: `body` gets a fresh [`Guard`] and runs in a
    /// new network namespace (with `tmpfs`, on a tmpfs of that size over the guard's root), and
    /// the node it returns is stopped after it; the guard cleans up after it, panics included.
    fn run<F: Future<Output = Node>>(
        self,
        netns: &str,
        tmpfs: Option<&'static str>,
        body: impl FnOnce(Arc<Guard>) -> F + Send + 'static,
    ) {
        if !(self.ready)(self.name) {
            return;
        }
        let g = Arc::new(Guard::new("node"));
        let g2 = g.clone();
        let run = move || async move { body(g2).await.stop().await };
        match tmpfs {
            None => in_netns(netns, run),
            Some(size) => in_netns_on_tmpfs(netns, g.dir.path().into(), size, run),
        }
        drop(g);
    }
}

/// Bytes that gzip cannot shrink (an image layer this big stays this big).
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

const USED: &str = "registry.local/gc/used:1";
const UNUSED: &str = "registry.local/gc/unused:1";

/// A native image store under `root`/images with two busybox images: [`USED`] (small) and
/// [`UNUSED`] (with 6 MiB that do not compress).
async fn image_store(root: &Path) -> Arc<ImageStore> {
    let store = Arc::new(
        ImageStore::new(ImageStoreConfig {
            root: root.join("images"),
            architecture: "amd64".into(),
            ..Default::default()
        })
        .expect("image store"),
    );
    for (name, image) in [
        (
            USED,
            TestImage::busybox().file("/etc/role", "used\n", 0o644),
        ),
        (
            UNUSED,
            TestImage::busybox().file("/blob", noise(6 << 20), 0o644),
        ),
    ] {
        let layout = root.join("layouts").join(name.replace(['/', ':'], "_"));
        image
            .build()
            .unwrap()
            .write_oci_layout(&layout, "1")
            .unwrap();
        store.import_oci_layout(&layout, Some(name)).await.unwrap();
        std::fs::remove_dir_all(&layout).unwrap();
    }
    store
}

/// Garbage collection of images and containers every `period`, images at `high` percent down
/// to `low`, with no minimum image age.
fn gc_every(period: Duration, high: u8, low: u8) -> GcConfig {
    GcConfig {
        image: ImageGcPolicy {
            high_threshold_percent: high,
            low_threshold_percent: low,
            min_age: Duration::ZERO,
        },
        image_gc_period: period,
        container_gc_period: period,
        ..Default::default()
    }
}

#[test]
fn image_gc_removes_an_unused_image_from_the_native_store_never_the_one_in_use() {
    let test = NodeTest::new(
        "image_gc_removes_an_unused_image_from_the_native_store_never_the_one_in_use",
        ready_with_busybox,
    );
    test.run("nk-node-imagegc", Some("64m"), |g2| async move {
        let root = g2.dir.path();
        let store = image_store(root).await;
        assert!(store.get(UNUSED).is_some() && store.get(USED).is_some());
        // thresholds any image gets this 64 MiB tmpfs over (2 % is 1.3 MiB), and the low
        // one below anything reachable: collection goes on to every image it may remove
        let fs = fs_stats(&root.join("images")).unwrap();
        let used_bytes = fs.capacity_bytes - fs.available_bytes;
        let (high, low) = (2, 1);
        assert!(
            used_bytes * 100 / fs.capacity_bytes > 2 * high as i64,
            "{used_bytes} bytes used"
        );
        let node = Node::start_on(
            &g2,
            |c| {
                c.gc = gc_every(Duration::from_secs(1), high, low);
            },
            Arc::new(MemoryObjectStore::default()),
            |m| m,
            Some(store.clone()),
        );
        node.source.apply(pod(&format!(
            "metadata: {{name: user, namespace: default, uid: uid-user}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {{name: app, image: \"{USED}\", imagePullPolicy: Never, command: [sleep, \"300\"]}}\n"
        )));
        let before = node.wait_running(&["user"]).await;
        until(
            "the unused image collected",
            Duration::from_secs(30),
            || async { store.get(UNUSED).is_none().then_some(()) },
        )
        .await;
        // its blobs and unpacked layer went with it; the image in use stays, its pod untouched
        let after = fs_stats(&root.join("images")).unwrap();
        assert!(
            after.available_bytes - fs.available_bytes >= 6 << 20,
            "freed {} bytes",
            after.available_bytes - fs.available_bytes
        );
        // never the image in use, though the low threshold is not reached (a collection
        // every second fails for want of removable images)
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(store.get(USED).is_some(), "the image in use stays");
        assert_eq!(node.running().await, before);
        node.source.delete(&pod(
            "metadata: {name: user, namespace: default, uid: uid-user}\nspec: {containers: []}\n",
        ));
        until("the pod gone", Duration::from_secs(30), || async {
            node.runtime
                .list_pod_sandbox(None)
                .await
                .unwrap()
                .is_empty()
                .then_some(())
        })
        .await;
        // no container uses it any more: it goes too
        until(
            "the image no longer in use collected",
            Duration::from_secs(30),
            || async { store.get(USED).is_none().then_some(()) },
        )
        .await;
        node
    });
}

#[test]
fn a_pod_writing_past_its_ephemeral_storage_limit_is_evicted() {
    let test = NodeTest::new(
        "a_pod_writing_past_its_ephemeral_storage_limit_is_evicted",
        ready,
    );
    test.run("nk-node-ephem", Some("64m"), |g2| async move {
        let node = Node::start(
            &g2,
            |c| {
                // no threshold: only the pods' own limits evict
                c.eviction = Some(EvictionConfig {
                    thresholds: vec![],
                    ..Default::default()
                });
                c.eviction_interval = Duration::from_secs(1);
            },
            Arc::new(MemoryObjectStore::default()),
        );
        let writer = |name: &str, kib: u32| {
            pod(&format!(
                r#"
metadata: {{name: {name}, namespace: default, uid: uid-{name}}}
spec:
  terminationGracePeriodSeconds: 1
  volumes: [{{name: scratch, emptyDir: {{}}}}]
  containers:
  - name: app
    image: "{IMAGE}"
    imagePullPolicy: Never
    command: [sh, -c, "dd if=/dev/zero of=/data/fill bs=1024 count={kib} && sleep 300"]
    volumeMounts: [{{name: scratch, mountPath: /data}}]
    resources: {{limits: {{ephemeral-storage: 2Mi}}}}
"#
            ))
        };
        node.source.apply(writer("filler", 4096));
        node.source.apply(writer("modest", 256));
        until("filler evicted", Duration::from_secs(60), || async {
            node.phase_reason("filler").filter(|(p, _)| p == "Failed")
        })
        .await;
        assert_eq!(
            node.phase_reason("filler"),
            Some(("Failed".into(), "Evicted".into()))
        );
        let msg = node.status("filler").unwrap().message.unwrap();
        let usage = msg
            .strip_prefix(
                "Pod ephemeral local storage usage exceeds the total limit of containers 2Mi. Usage: ",
            )
            .and_then(|m| m.strip_suffix(". "))
            .unwrap_or_else(|| panic!("message: {msg:?}"));
        let bytes = node_kubelet::node::quantity::value(usage).unwrap();
        assert!(bytes >= 4 << 20, "{msg}");
        // its container is stopped; the pod within its limit keeps running
        until("filler stopped", Duration::from_secs(30), || async {
            let r = node.running().await;
            (!r.contains_key("filler") && r.contains_key("modest")).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(node.phase_reason("modest").unwrap().0, "Running");
        node
    });
}

struct Presence(&'static [&'static str]);

impl PodPresence for Presence {
    fn sources_ready(&self) -> bool {
        true
    }
    fn has_pod(&self, uid: &str) -> bool {
        self.0.contains(&uid)
    }
}

#[test]
fn dead_containers_are_pruned_from_the_native_runtime() {
    let test = NodeTest::new("dead_containers_are_pruned_from_the_native_runtime", ready);
    test.run("nk-node-deadgc", None, |g2| async move {
        // the kubelet has no pod: the runtime is driven directly, as an earlier kubelet left it
        // (and its own garbage collection is off: only the collection below removes anything)
        let node = Node::start(
            &g2,
            |c| c.gc.enabled = false,
            Arc::new(MemoryObjectStore::default()),
        );
        let rt = node.runtime.clone();
        let logs = g2.dir.path().join("logs");
        let sandbox = |uid: &str| cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: uid.into(),
                uid: uid.into(),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: uid.into(),
            log_directory: logs.join(uid).display().to_string(),
            labels: HashMap::from([("io.kubernetes.pod.uid".to_string(), uid.to_string())]),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: format!("{}/gc", g2.cgroup_top),
                ..Default::default()
            }),
            ..Default::default()
        };
        let start = |sb_id: String,
                     sb: cri::PodSandboxConfig,
                     attempt: u32,
                     cmd: &'static [&'static str]| {
            let rt = rt.clone();
            async move {
                let uid = sb.metadata.as_ref().unwrap().uid.clone();
                let config = cri::ContainerConfig {
                    metadata: Some(cri::ContainerMetadata {
                        name: "app".into(),
                        attempt,
                    }),
                    image: Some(cri::ImageSpec {
                        image: IMAGE.into(),
                        ..Default::default()
                    }),
                    command: cmd.iter().map(|s| s.to_string()).collect(),
                    log_path: format!("app/{attempt}.log"),
                    labels: HashMap::from([
                        ("io.kubernetes.pod.uid".to_string(), uid),
                        (
                            "io.kubernetes.container.name".to_string(),
                            "app".to_string(),
                        ),
                    ]),
                    linux: Some(cri::LinuxContainerConfig::default()),
                    ..Default::default()
                };
                let id = rt
                    .create_container(cri::CreateContainerRequest {
                        pod_sandbox_id: sb_id,
                        config: Some(config),
                        sandbox_config: Some(sb),
                    })
                    .await
                    .expect("create container");
                rt.start_container(&id).await.expect("start container");
                id
            }
        };
        let exited = |id: String| {
            let rt = rt.clone();
            async move {
                until("the container exited", Duration::from_secs(30), || async {
                    let s = rt.container_status(&id, false).await.ok()?.status?;
                    (s.state == cri::ContainerState::ContainerExited as i32).then_some(())
                })
                .await;
            }
        };
        let run = |config: &cri::PodSandboxConfig| {
            let rt = rt.clone();
            let config = config.clone();
            async move {
                rt.run_pod_sandbox(cri::RunPodSandboxRequest {
                    config: Some(config),
                    runtime_handler: String::new(),
                })
                .await
                .expect("run sandbox")
            }
        };
        let live = sandbox("gc-live");
        let live_id = run(&live).await;
        let mut dead = Vec::new();
        for attempt in 0..3 {
            let id = start(live_id.clone(), live.clone(), attempt, &["true"]).await;
            exited(id.clone()).await;
            dead.push(id);
        }
        let running = start(live_id.clone(), live.clone(), 3, &["sleep", "300"]).await;
        let gone = sandbox("gc-gone");
        let gone_id = run(&gone).await;
        let gone_c = start(gone_id.clone(), gone.clone(), 0, &["true"]).await;
        exited(gone_c.clone()).await;
        rt.stop_pod_sandbox(&gone_id).await.unwrap();

        let gc = ContainerGcManager::new(
            ContainerGcPolicy::default(),
            rt.clone(),
            Arc::new(Presence(&["gc-live"])),
        );
        let report = gc.garbage_collect().await.unwrap();
        let mut removed = report.containers.clone();
        removed.sort();
        let mut want = vec![dead[0].clone(), dead[1].clone(), gone_c.clone()];
        want.sort();
        assert_eq!(removed, want);
        assert_eq!(report.sandboxes, std::slice::from_ref(&gone_id));
        // the runtime agrees: the newest dead instance and the running one stay
        let mut left: Vec<String> = rt
            .list_containers(None)
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.id)
            .collect();
        left.sort();
        let mut want = vec![dead[2].clone(), running.clone()];
        want.sort();
        assert_eq!(left, want);
        let sandboxes: Vec<String> = rt
            .list_pod_sandbox(None)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(sandboxes, std::slice::from_ref(&live_id));
        let s = rt
            .container_status(&running, false)
            .await
            .unwrap()
            .status
            .unwrap();
        assert_eq!(s.state, cri::ContainerState::ContainerRunning as i32);
        assert!(
            rt.container_status(&dead[0], false)
                .await
                .unwrap_err()
                .is_not_found()
        );
        node
    });
}

/// Fills the filesystem of `dir` with a file `name` in it until `left` bytes stay available.
fn fill_until_available(dir: &Path, name: &str, left: i64) {
    let fs = fs_stats(dir).unwrap();
    let size = fs.available_bytes - left;
    assert!(size > 0, "{} bytes available already", fs.available_bytes);
    std::fs::write(dir.join(name), vec![0x5a; size as usize]).unwrap();
}

#[test]
fn disk_pressure_collects_images_first_and_evicts_only_while_the_threshold_stays_met() {
    let test = NodeTest::new(
        "disk_pressure_collects_images_first_and_evicts_only_while_the_threshold_stays_met",
        ready_with_busybox,
    );
    test.run("nk-node-diskpr", Some("64m"), |g2| async move {
        let root = g2.dir.path().to_path_buf();
        let store = image_store(&root).await;
        // imagefs is the test's 64 MiB tmpfs (the image store's root, nodefs too)
        const THRESHOLD: i64 = 16 << 20;
        let node = Node::start_on(
            &g2,
            |c| {
                c.eviction = Some(EvictionConfig {
                    thresholds: parse_thresholds("imagefs.available<16Mi").unwrap(),
                    ..Default::default()
                });
                c.eviction_interval = Duration::from_secs(1);
                // no periodic collection gets there first: only the eviction manager's
                c.gc = gc_every(Duration::from_secs(3600), 100, 100);
            },
            Arc::new(MemoryObjectStore::default()),
            |m| m,
            Some(store.clone()),
        );
        node.source.apply(pod(&format!(
                "metadata: {{name: keeper, namespace: default, uid: uid-keeper}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {{name: app, image: \"{USED}\", imagePullPolicy: Never, command: [sleep, \"300\"], resources: {{requests: {{cpu: 100m}}}}}}\n"
            )));
        node.source.apply(pod(&format!(
                "metadata: {{name: besteffort, namespace: default, uid: uid-besteffort}}\nspec:\n  terminationGracePeriodSeconds: 1\n  volumes: [{{name: scratch, emptyDir: {{}}}}]\n  containers:\n  - {{name: app, image: \"{USED}\", imagePullPolicy: Never, command: [sleep, \"300\"], volumeMounts: [{{name: scratch, mountPath: /scratch}}]}}\n"
            )));
        let before = node.wait_running(&["keeper", "besteffort"]).await;
        let evicted = |n: &Node| -> Vec<&'static str> {
            ["besteffort", "keeper"]
                .into_iter()
                .filter(|p| n.phase_reason(p) == Some(("Failed".into(), "Evicted".into())))
                .collect()
        };

        // (a) the threshold is met by 2 MiB; the unused image (6 MiB and more) relieves it
        assert!(store.get(UNUSED).is_some());
        fill_until_available(&root, "ballast", THRESHOLD - (2 << 20));
        until(
            "the unused image collected",
            Duration::from_secs(30),
            || async { store.get(UNUSED).is_none().then_some(()) },
        )
        .await;
        let fs = fs_stats(&root).unwrap();
        assert!(fs.available_bytes >= THRESHOLD, "{fs:?}");
        // rounds later: no pod was evicted, both run untouched, the image in use stays
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(evicted(&node).is_empty(), "{:?}", evicted(&node));
        assert_eq!(node.running().await, before);
        assert!(store.get(USED).is_some(), "the image in use stays");
        assert!(root.join("ballast").exists());

        // (b) the BestEffort pod's emptyDir fills the disk: nothing left to collect, the
        // threshold stays met after the reclaim and the lowest-ranked pod is evicted
        let scratch =
            root.join("kubelet/pods/uid-besteffort/volumes/kubernetes.io~empty-dir/scratch");
        fill_until_available(&scratch, "fill", THRESHOLD - (2 << 20));
        until("an eviction", Duration::from_secs(30), || async {
            (!evicted(&node).is_empty()).then_some(())
        })
        .await;
        assert_eq!(evicted(&node), ["besteffort"]);
        let msg = node.status("besteffort").unwrap().message.unwrap();
        assert!(
                msg.starts_with(
                    "The node was low on resource: ephemeral-storage. Threshold quantity: 16Mi, available: "
                ),
                "{msg}"
            );
        until("besteffort stopped", Duration::from_secs(30), || async {
            let r = node.running().await;
            (!r.contains_key("besteffort")).then_some(())
        })
        .await;
        // its emptyDir went with the eviction: the pressure is gone and the other pod stays
        until("the emptyDir removed", Duration::from_secs(30), || async {
            (!scratch.exists()).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(evicted(&node), ["besteffort"]);
        assert_eq!(node.running().await["keeper"], before["keeper"]);
        assert_eq!(node.phase_reason("keeper").unwrap().0, "Running");
        node
    });
}
