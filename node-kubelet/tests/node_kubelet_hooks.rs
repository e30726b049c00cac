//! The node modules wired into the kubelet through the `NodeHooks` seam, against the fakes of
//! node-test-support (no root, no cgroups): admission with kubelet's reasons, volumes turned into
//! CRI mounts and refreshed from the store, the node stopping pods through their workers
//! (eviction ranking, graceful shutdown by priority).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use node_core::Pod;
use node_kubelet::CancellationToken;
use node_kubelet::node::allocatable::NodeResources;
use node_kubelet::node::eviction::{
    EvictionConfig, EvictionError, Observation, Observations, Signal, SignalObserver,
    parse_thresholds,
};
use node_kubelet::node::hooks::{NodeHooks, PodControl};
use node_kubelet::node::shutdown::{PriorityGracePeriod, SHUTDOWN_MESSAGE, ShutdownConfig};
use node_kubelet::node::volumes::MemoryObjectStore;
use node_kubelet::node::{NodeConfig, NodeManager};
use node_test_support::{FakeRuntime, FakeStatusSink, until};

mod support;
use support::{Fakes, KubeletTask, pod, status_of, stopped_by_priority};

/// A pod with one container of `resources` (a flow mapping, may be empty) and `extra` spec.
fn app(name: &str, resources: &str, extra: &str) -> Pod {
    pod(&format!(
        "metadata: {{name: {name}, namespace: default, uid: uid-{name}}}\nspec:\n  {extra}\n  containers:\n  - {{name: app, image: \"busybox:1\", resources: {{{resources}}}}}\n"
    ))
}

/// The fakes' kubelet with `node` as its hooks, running; the directories go with it.
fn start(f: Fakes, node: Arc<dyn NodeHooks>) -> (FakeRuntime, FakeStatusSink, KubeletTask) {
    let kubelet = f.kubelet("node-1").node(node).build().unwrap();
    (f.rt, f.sink, KubeletTask::spawn(kubelet, f.dirs))
}

/// A node manager with `config` and [`ALLOCATABLE`], volumes from an empty store.
fn manager(config: NodeConfig) -> NodeManager {
    NodeManager::with_allocatable(config, Arc::new(MemoryObjectStore::default()), ALLOCATABLE)
        .unwrap()
}

fn config(dirs: &std::path::Path) -> NodeConfig {
    let mut c = NodeConfig::new("node-1");
    c.cgroups = None;
    c.volumes.root_dir = dirs.join("kubelet");
    c.allocatable.root_dir = dirs.to_path_buf();
    c
}

const ALLOCATABLE: NodeResources = NodeResources {
    cpu_milli: 1000,
    memory_bytes: 1 << 30,
    ephemeral_storage_bytes: 1 << 40,
    pods: 10,
};

fn phase_reason(sink: &FakeStatusSink, name: &str) -> Option<(String, String)> {
    let s = status_of(sink, name)?;
    Some((s.phase?, s.reason.unwrap_or_default()))
}

fn running_pods(rt: &FakeRuntime) -> Vec<String> {
    let mut v: Vec<String> = rt
        .containers()
        .into_iter()
        .filter(|c| c.state == node_core::cri::ContainerState::ContainerRunning)
        .map(|c| c.config.labels["io.kubernetes.pod.name"].clone())
        .collect();
    v.sort();
    v
}

#[tokio::test(start_paused = true)]
async fn pods_over_allocatable_are_rejected_with_kubelets_reasons() {
    let f = Fakes::new("api", &["busybox:1"]);
    let source = f.source.clone();
    let node = manager(config(f.dirs.path()));
    let (rt, sink, k) = start(f, Arc::new(node));
    source.apply(app(
        "fits",
        "requests: {cpu: 600m, memory: 512Mi}",
        "hostNetwork: false",
    ));
    until("fits running", Duration::from_secs(10), || {
        (running_pods(&rt) == ["fits"]).then_some(())
    })
    .await;
    source.apply(app(
        "cpu-hog",
        "requests: {cpu: 500m}",
        "hostNetwork: false",
    ));
    source.apply(app(
        "mem-hog",
        "requests: {memory: 600Mi}",
        "hostNetwork: false",
    ));
    let port = |name: &str| {
        pod(&format!(
            "metadata: {{name: {name}, namespace: default, uid: uid-{name}}}\nspec:\n  containers:\n  - {{name: app, image: \"busybox:1\", ports: [{{containerPort: 80, hostPort: 8080}}]}}\n"
        ))
    };
    source.apply(port("port-a"));
    source.apply(port("port-b"));
    source.apply(app("small", "requests: {cpu: 100m}", "hostNetwork: false"));
    until("every pod decided", Duration::from_secs(20), || {
        (running_pods(&rt) == ["fits", "port-a", "small"]
            && ["cpu-hog", "mem-hog", "port-b"]
                .iter()
                .all(|n| phase_reason(&sink, n).is_some()))
        .then_some(())
    })
    .await;
    for (name, reason) in [
        ("cpu-hog", "OutOfcpu"),
        ("mem-hog", "OutOfmemory"),
        ("port-b", "NodePorts"),
    ] {
        let s = status_of(&sink, name).unwrap();
        assert_eq!(
            (s.phase.as_deref(), s.reason.as_deref()),
            (Some("Failed"), Some(reason)),
            "{name}: {s:?}"
        );
        assert!(
            s.message
                .as_deref()
                .unwrap()
                .starts_with("Pod was rejected: "),
            "{s:?}"
        );
    }
    assert!(
        status_of(&sink, "cpu-hog")
            .unwrap()
            .message
            .unwrap()
            .contains(
                "Node didn't have enough resource: cpu, requested: 500, used: 600, capacity: 1000"
            )
    );
    // nothing of the rejected pods ever reached the runtime
    assert!(rt.sandboxes().iter().all(|s| {
        let n = &s.config.metadata.as_ref().unwrap().name;
        !["cpu-hog", "mem-hog", "port-b"].contains(&n.as_str())
    }));
    // deleting a rejected pod frees nothing it never had; deleting one that ran frees room
    source.delete(&app("fits", "", "hostNetwork: false"));
    until("fits gone", Duration::from_secs(60), || {
        (running_pods(&rt) == ["port-a", "small"]).then_some(())
    })
    .await;
    source.apply(app("after", "requests: {cpu: 800m}", "hostNetwork: false"));
    until("after running", Duration::from_secs(10), || {
        running_pods(&rt)
            .contains(&"after".to_string())
            .then_some(())
    })
    .await;
    k.stop().await;
}

#[tokio::test(start_paused = true)]
async fn volumes_become_mounts_are_refreshed_and_go_with_the_pod() {
    let f = Fakes::new("api", &["busybox:1"]);
    let source = f.source.clone();
    let root = f.dirs.path().join("kubelet");
    let store = Arc::new(MemoryObjectStore::default());
    let cm = |v: &str| ConfigMap {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some("settings".into()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("color".to_string(), v.to_string())])),
        ..Default::default()
    };
    store.put_config_map(cm("blue"));
    let node =
        NodeManager::with_allocatable(config(f.dirs.path()), store.clone(), ALLOCATABLE).unwrap();
    let (rt, sink, k) = start(f, Arc::new(node));
    let p = pod(r#"
metadata: {name: vols, namespace: default, uid: uid-vols}
spec:
  volumes:
  - {name: shared, emptyDir: {}}
  - {name: cfg, configMap: {name: settings}}
  containers:
  - {name: writer, image: "busybox:1", volumeMounts: [{name: shared, mountPath: /out}, {name: cfg, mountPath: /etc/cfg}]}
  - {name: reader, image: "busybox:1", volumeMounts: [{name: shared, mountPath: /in, readOnly: true}]}
"#);
    source.apply(p.clone());
    until("both running", Duration::from_secs(10), || {
        (rt.containers().len() == 2).then_some(())
    })
    .await;
    let vols = root.join("pods/uid-vols/volumes");
    let shared = vols.join("kubernetes.io~empty-dir/shared");
    let cfg = vols.join("kubernetes.io~configmap/cfg");
    let mounts: BTreeMap<String, Vec<(String, String, bool)>> = rt
        .containers()
        .into_iter()
        .map(|c| {
            let m = c
                .config
                .mounts
                .iter()
                .map(|m| (m.container_path.clone(), m.host_path.clone(), m.readonly))
                .collect();
            (c.config.metadata.unwrap().name, m)
        })
        .collect();
    let s = shared.display().to_string();
    assert_eq!(
        mounts["writer"],
        vec![
            ("/out".into(), s.clone(), false),
            ("/etc/cfg".into(), cfg.display().to_string(), true)
        ]
    );
    assert_eq!(mounts["reader"], vec![("/in".into(), s, true)]);
    assert!(shared.is_dir());
    assert_eq!(std::fs::read_to_string(cfg.join("color")).unwrap(), "blue");
    // the store changes: the next sync swaps ..data
    let before = std::fs::read_link(cfg.join("..data")).unwrap();
    store.put_config_map(cm("green"));
    until("configMap refreshed", Duration::from_secs(10), || {
        (std::fs::read_to_string(cfg.join("color")).ok()? == "green").then_some(())
    })
    .await;
    assert_ne!(std::fs::read_link(cfg.join("..data")).unwrap(), before);
    source.delete(&p);
    until("volumes removed", Duration::from_secs(60), || {
        (!root.join("pods/uid-vols").exists()).then_some(())
    })
    .await;
    assert!(sink.pods().is_empty());
    k.stop().await;
}

/// Hooks that keep the [`PodControl`] they are given, around a real manager.
struct Capture {
    inner: NodeManager,
    control: Mutex<Option<PodControl>>,
}

#[async_trait::async_trait]
impl NodeHooks for Capture {
    fn start(&self, control: PodControl, shutdown: CancellationToken) {
        *self.control.lock().unwrap() = Some(control.clone());
        self.inner.start(control, shutdown);
    }
    fn admit(
        &self,
        pod: &Pod,
        active: &[Pod],
    ) -> Result<(), node_kubelet::node::hooks::PodRejection> {
        self.inner.admit(pod, active)
    }
}

#[tokio::test(start_paused = true)]
async fn a_pod_the_node_stops_stays_failed_and_is_not_restarted() {
    let f = Fakes::new("api", &["busybox:1"]);
    let source = f.source.clone();
    let inner = manager(config(f.dirs.path()));
    let hooks = Arc::new(Capture {
        inner,
        control: Mutex::new(None),
    });
    let (rt, sink, k) = start(f, hooks.clone());
    source.apply(app("victim", "", "restartPolicy: Always"));
    source.apply(app("bystander", "", "restartPolicy: Always"));
    until("both running", Duration::from_secs(10), || {
        (running_pods(&rt) == ["bystander", "victim"]).then_some(())
    })
    .await;
    let control = hooks.control.lock().unwrap().clone().unwrap();
    assert_eq!(control.active_pods().len(), 2);
    let victim = node_core::PodRef::new("default", "victim", "uid-victim");
    control
        .stop(
            &victim,
            Duration::ZERO,
            "Evicted",
            "The node was low on resource: memory.",
        )
        .await
        .unwrap();
    assert_eq!(running_pods(&rt), ["bystander"]);
    until("victim Failed", Duration::from_secs(10), || {
        (phase_reason(&sink, "victim")? == ("Failed".into(), "Evicted".into())).then_some(())
    })
    .await;
    // several sync periods later it has not been restarted
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(running_pods(&rt), ["bystander"]);
    assert_eq!(
        status_of(&sink, "victim").unwrap().message.as_deref(),
        Some("The node was low on resource: memory.")
    );
    assert_eq!(control.active_pods().len(), 1);
    let gone = node_core::PodRef::new("default", "nothing", "uid-nothing");
    let e = control
        .stop(&gone, Duration::ZERO, "Evicted", "")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no such pod"), "{e}");
    k.stop().await;
}

/// Memory signals that say the node has none left.
/// No memory left once switched on (before: no signal at all, so no pressure).
#[derive(Default)]
struct NoMemory(std::sync::atomic::AtomicBool);

impl SignalObserver for NoMemory {
    fn observe(&self) -> Result<Observations, EvictionError> {
        if !self.0.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(Observations::new());
        }
        Ok(Observations::from([(
            Signal::MemoryAvailable,
            Observation {
                available: 0,
                capacity: 1 << 30,
            },
        )]))
    }
}

#[tokio::test(start_paused = true)]
async fn the_eviction_manager_evicts_best_effort_first_through_the_workers() {
    let f = Fakes::new("api", &["busybox:1"]);
    let source = f.source.clone();
    let mut c = config(f.dirs.path());
    c.eviction = Some(EvictionConfig {
        thresholds: parse_thresholds("memory.available<100Mi").unwrap(),
        ..Default::default()
    });
    c.eviction_interval = Duration::from_secs(5);
    // the pressure starts once the pods run: under pressure a BestEffort pod is not admitted
    let pressure = Arc::new(NoMemory::default());
    let node = manager(c).signals(pressure.clone());
    let health = node.health();
    let (rt, sink, k) = start(f, Arc::new(node));
    source.apply(app(
        "guaranteed",
        "requests: {cpu: 100m, memory: 64Mi}, limits: {cpu: 100m, memory: 64Mi}",
        "priority: 0",
    ));
    source.apply(app("burstable", "requests: {memory: 64Mi}", "priority: 0"));
    source.apply(app("besteffort", "", "priority: 1000"));
    until("all running", Duration::from_secs(4), || {
        (running_pods(&rt).len() == 3).then_some(())
    })
    .await;
    pressure.0.store(true, std::sync::atomic::Ordering::SeqCst);
    let evicted = |sink: &FakeStatusSink| -> Vec<String> {
        ["besteffort", "burstable", "guaranteed"]
            .into_iter()
            .filter(|n| phase_reason(sink, n).is_some_and(|(p, r)| p == "Failed" && r == "Evicted"))
            .map(String::from)
            .collect()
    };
    until("first eviction", Duration::from_secs(10), || {
        (!evicted(&sink).is_empty()).then_some(())
    })
    .await;
    assert_eq!(evicted(&sink), ["besteffort"]);
    assert_eq!(running_pods(&rt), ["burstable", "guaranteed"]);
    assert!(health.borrow().memory_pressure);
    until("second eviction", Duration::from_secs(10), || {
        (evicted(&sink).len() == 2).then_some(())
    })
    .await;
    assert_eq!(evicted(&sink), ["besteffort", "burstable"]);
    let msg = status_of(&sink, "besteffort").unwrap().message.unwrap();
    assert!(
        msg.contains("The node was low on resource: memory"),
        "{msg}"
    );
    // under memory pressure a new BestEffort pod is not admitted (kubelet's reason and message)
    source.apply(app("late", "", "priority: 0"));
    until("late rejected", Duration::from_secs(10), || {
        phase_reason(&sink, "late").map(|_| ())
    })
    .await;
    assert_eq!(
        phase_reason(&sink, "late"),
        Some(("Failed".to_string(), "Evicted".to_string()))
    );
    assert_eq!(
        status_of(&sink, "late").unwrap().message.unwrap(),
        "The node had condition: [MemoryPressure]. "
    );
    assert!(!running_pods(&rt).contains(&"late".to_string()));
    k.stop().await;
}

#[tokio::test(start_paused = true)]
async fn the_shutdown_trigger_stops_pods_by_priority_then_rejects_new_ones() {
    let f = Fakes::new("api", &["busybox:1"]);
    let source = f.source.clone();
    let mut c = config(f.dirs.path());
    c.shutdown = ShutdownConfig {
        by_priority: vec![
            PriorityGracePeriod {
                priority: 0,
                grace_period: Duration::from_secs(5),
            },
            PriorityGracePeriod {
                priority: 1000,
                grace_period: Duration::from_secs(5),
            },
            PriorityGracePeriod {
                priority: 5000,
                grace_period: Duration::from_secs(5),
            },
        ],
    };
    let (fire, trigger) = tokio::sync::oneshot::channel::<()>();
    let node = manager(c).shutdown_on(async move {
        let _ = trigger.await;
    });
    let mut reports = node.shutdown_reports();
    let health = node.health();
    let (rt, sink, k) = start(f, Arc::new(node));
    source.apply(app("critical", "", "priority: 5000"));
    source.apply(app("low", "", "priority: 0"));
    source.apply(app("mid", "", "priority: 1000"));
    until("all running", Duration::from_secs(10), || {
        (running_pods(&rt).len() == 3).then_some(())
    })
    .await;
    fire.send(()).unwrap();
    let groups = stopped_by_priority(&mut reports, Duration::from_secs(30)).await;
    assert_eq!(
        groups,
        vec![
            (0, vec!["low".to_string()]),
            (1000, vec!["mid".to_string()]),
            (5000, vec!["critical".to_string()])
        ]
    );
    // the runtime saw the stops in that order
    let stops: Vec<String> = rt
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("stop_container"))
        .collect();
    let id_of = |name: &str| {
        rt.containers()
            .into_iter()
            .find(|c| c.config.labels["io.kubernetes.pod.name"] == name)
            .unwrap()
            .id
    };
    let pos = |name: &str| {
        let id = id_of(name);
        stops.iter().position(|c| c.ends_with(&id)).unwrap()
    };
    assert!(
        pos("low") < pos("mid") && pos("mid") < pos("critical"),
        "{stops:?}"
    );
    assert!(running_pods(&rt).is_empty());
    assert!(health.borrow().shutting_down);
    until("statuses", Duration::from_secs(10), || {
        ["low", "mid", "critical"]
            .iter()
            .all(|n| {
                status_of(&sink, n).is_some_and(|s| {
                    s.reason.as_deref() == Some("Terminated")
                        && s.message.as_deref() == Some(SHUTDOWN_MESSAGE)
                })
            })
            .then_some(())
    })
    .await;
    source.apply(app("late", "", "priority: 0"));
    until("late rejected", Duration::from_secs(10), || {
        (phase_reason(&sink, "late")? == ("Failed".into(), "NodeShutdown".into())).then_some(())
    })
    .await;
    k.stop().await;
}
