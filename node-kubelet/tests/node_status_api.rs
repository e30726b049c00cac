//! The `NodeManager` reporting the node, run by the kubelet against node-test-support's
//! in-process fake API server on tokio's paused clock (short intervals): the Node registered
//! from the machine's facts and the runtime's version, its Lease renewed at the configured
//! cadence, its status patched only when it changes (here: the runtime's status) or when the
//! report is due, back-off while the API server is away (pods keep running), mirror pods owned
//! by the registered Node and recreated when deleted; standalone, the same Node at `/node`.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::Node;
use node_core::{Pod, RuntimeError};
use node_kubelet::CancellationToken;
use node_kubelet::node::allocatable::NodeResources;
use node_kubelet::node::api::NodeApiConfig;
use node_kubelet::node::eviction::{
    EvictionConfig, EvictionError, Observation, Observations, Signal, SignalObserver,
    parse_thresholds,
};
use node_kubelet::node::http::{HttpState, NodeMetrics, router};
use node_kubelet::node::status::{NodeReportConfig, NodeStatusConfig};
use node_kubelet::node::volumes::MemoryObjectStore;
use node_kubelet::node::{NodeConfig, NodeManager};
use node_test_support::{FakeApiServer, FakeRuntime, ScriptedPodSource, until};
use serde_json::Value;
use tokio::time::Instant;
use tower::ServiceExt;

mod support;
use support::Fakes;

const NODE: &str = "node-1";
const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/node-1";
const STATUS: &str = "/api/v1/nodes/node-1/status";

fn report() -> NodeReportConfig {
    NodeReportConfig {
        status: NodeStatusConfig {
            hostname: Some("node-1.test".into()),
            internal_ips: vec!["10.0.0.5".parse().unwrap()],
            ..Default::default()
        },
        api: NodeApiConfig {
            renew_interval: Duration::from_secs(2),
            ..Default::default()
        },
        check_every: Duration::from_secs(1),
        report_every: Duration::from_secs(60),
    }
}

/// A running kubelet with the node manager; its task and the means to stop it.
struct Running {
    rt: FakeRuntime,
    source: ScriptedPodSource,
    latest: node_kubelet::node::status::LatestNode,
    token: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    _dirs: tempfile::TempDir,
}

impl Running {
    fn start(api: Option<&FakeApiServer>) -> Self {
        Self::start_with(api, |_| {}, None)
    }

    fn start_with(
        api: Option<&FakeApiServer>,
        tune: impl FnOnce(&mut NodeConfig),
        signals: Option<Arc<dyn SignalObserver>>,
    ) -> Self {
        let f = Fakes::new("file", &["img:1"]);
        let mut c = NodeConfig::new(NODE);
        c.cgroups = None;
        c.volumes.root_dir = f.dirs.path().join("kubelet");
        c.allocatable.root_dir = f.dirs.path().join("kubelet");
        tune(&mut c);
        let capacity = NodeResources {
            cpu_milli: 4000,
            memory_bytes: 4 << 30,
            ephemeral_storage_bytes: 1 << 40,
            pods: 110,
        };
        let mut node =
            NodeManager::with_allocatable(c, Arc::new(MemoryObjectStore::default()), capacity)
                .unwrap()
                .report(report())
                .node_capacity(move || Ok(capacity));
        if let Some(api) = api {
            node = node.api(api.client());
        }
        if let Some(signals) = signals {
            node = node.signals(signals);
        }
        let latest = node.latest_node();
        let kubelet = f.kubelet(NODE).node(Arc::new(node)).build().unwrap();
        let token = CancellationToken::new();
        let t = token.clone();
        let task = tokio::spawn(async move { kubelet.run(t).await.unwrap() });
        Self {
            rt: f.rt,
            source: f.source,
            latest,
            token,
            task,
            _dirs: f.dirs,
        }
    }

    async fn stop(self) {
        self.token.cancel();
        self.task.await.unwrap();
    }
}

fn condition(node: &Value, type_: &str) -> Value {
    node["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no condition {type_}: {node}"))
        .clone()
}

#[tokio::test(start_paused = true)]
async fn the_node_manager_registers_heartbeats_and_patches_status_only_on_change() {
    let api = FakeApiServer::new();
    let start = Instant::now();
    let node = Running::start(Some(&api));
    until("the Node registered", Duration::from_secs(10), || {
        api.get("nodes", "", NODE)
    })
    .await;
    until("the first status patch", Duration::from_secs(10), || {
        (api.count("PATCH", STATUS) == 1).then_some(())
    })
    .await;
    let n: Node = api.get_as("nodes", "", NODE).unwrap();
    let status = n.status.as_ref().unwrap();
    let info = status.node_info.as_ref().unwrap();
    assert_eq!(info.container_runtime_version, "fake://0.1.0");
    assert_eq!(info.operating_system, "linux");
    assert_eq!(status.capacity.as_ref().unwrap()["cpu"].0, "4");
    assert_eq!(status.capacity.as_ref().unwrap()["pods"].0, "110");
    assert!(status.allocatable.as_ref().unwrap().contains_key("memory"));
    let addresses = status.addresses.as_ref().unwrap();
    assert_eq!(
        (addresses[0].type_.as_str(), addresses[0].address.as_str()),
        ("InternalIP", "10.0.0.5")
    );
    let stored = api.get("nodes", "", NODE).unwrap();
    for (t, want) in [
        ("Ready", "True"),
        ("MemoryPressure", "False"),
        ("DiskPressure", "False"),
        ("PIDPressure", "False"),
        ("NetworkUnavailable", "False"),
    ] {
        assert_eq!(condition(&stored, t)["status"], want, "{t}");
    }

    // 20 s of an unchanged node: Lease renewed every 2 s, not one more status patch
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(api.count("PATCH", STATUS), 1, "patched without a change");
    let renewals: Vec<Duration> = api
        .requests_to("PUT", LEASE)
        .iter()
        .map(|r| r.at.duration_since(start))
        .collect();
    assert!(renewals.len() >= 9, "{renewals:?}");
    for w in renewals.windows(2) {
        assert_eq!(w[1] - w[0], Duration::from_secs(2), "{renewals:?}");
    }
    let lease = api.get("leases", "kube-node-lease", NODE).unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], NODE);
    assert_eq!(
        lease["metadata"]["ownerReferences"][0]["uid"],
        stored["metadata"]["uid"]
    );

    // the runtime stops answering once: Ready goes False at once, then True again
    node.rt.fail_next(
        "status",
        RuntimeError::Unavailable("containerd is gone".into()),
    );
    until("Ready False", Duration::from_secs(5), || {
        let n = api.get("nodes", "", NODE)?;
        (condition(&n, "Ready")["status"] == "False").then_some(())
    })
    .await;
    let msg = condition(&api.get("nodes", "", NODE).unwrap(), "Ready")["message"].clone();
    assert!(
        msg.as_str().unwrap().contains("containerd is gone"),
        "{msg}"
    );
    until("Ready True again", Duration::from_secs(5), || {
        let n = api.get("nodes", "", NODE)?;
        (condition(&n, "Ready")["status"] == "True").then_some(())
    })
    .await;
    let patches = api.count("PATCH", STATUS);
    assert_eq!(patches, 3, "one patch per change");
    // unchanged again: the next patch is the periodic report, a minute after the last one
    let last = api.requests_to("PATCH", STATUS).pop().unwrap().at;
    tokio::time::sleep(Duration::from_secs(70)).await;
    let after: Vec<Duration> = api
        .requests_to("PATCH", STATUS)
        .iter()
        .skip(patches)
        .map(|r| r.at.duration_since(last))
        .collect();
    assert_eq!(after.len(), 1, "{after:?}");
    assert!(
        after[0] >= Duration::from_secs(60) && after[0] <= Duration::from_secs(62),
        "{after:?}"
    );
    // the standalone view is kept too
    assert_eq!(
        node.latest.get().unwrap().metadata.name.as_deref(),
        Some(NODE)
    );
    node.stop().await;
}

/// Memory signals of a node with `available` bytes of 4 GiB free.
struct Memory(Arc<AtomicI64>);

impl SignalObserver for Memory {
    fn observe(&self) -> Result<Observations, EvictionError> {
        Ok([(
            Signal::MemoryAvailable,
            Observation {
                available: self.0.load(Ordering::SeqCst),
                capacity: 4 << 30,
            },
        )]
        .into())
    }
}

#[tokio::test(start_paused = true)]
async fn eviction_pressure_reaches_the_node_conditions() {
    let api = FakeApiServer::new();
    let available = Arc::new(AtomicI64::new(3 << 30));
    let node = Running::start_with(
        Some(&api),
        |c| {
            c.eviction = Some(EvictionConfig {
                thresholds: parse_thresholds("memory.available<1Gi").unwrap(),
                pressure_transition_period: Duration::from_secs(5),
                ..Default::default()
            });
            c.eviction_interval = Duration::from_secs(1);
        },
        Some(Arc::new(Memory(available.clone()))),
    );
    let pressure = |api: &FakeApiServer| {
        let n = api.get("nodes", "", NODE)?;
        Some(
            condition(&n, "MemoryPressure")["status"]
                .as_str()?
                .to_string(),
        )
    };
    until("the Node reported", Duration::from_secs(10), || {
        (pressure(&api)? == "False").then_some(())
    })
    .await;
    let patches = api.count("PATCH", STATUS);
    // below the threshold: MemoryPressure at the next eviction pass, patched at once
    available.store(512 << 20, Ordering::SeqCst);
    until("MemoryPressure True", Duration::from_secs(5), || {
        (pressure(&api)? == "True").then_some(())
    })
    .await;
    assert_eq!(api.count("PATCH", STATUS), patches + 1);
    let n = api.get("nodes", "", NODE).unwrap();
    assert_eq!(
        condition(&n, "MemoryPressure")["reason"],
        "KubeletHasInsufficientMemory"
    );
    assert_eq!(condition(&n, "Ready")["status"], "True");
    node.stop().await;
}

const STATIC_POD: &str = "metadata:\n  name: etcd-node-1\n  namespace: kube-system\n  uid: static-uid\n  annotations: {kubernetes.io/config.source: file, kubernetes.io/config.hash: hash-1}\nspec:\n  containers: [{name: etcd, image: \"img:1\"}]\n";

#[tokio::test(start_paused = true)]
async fn an_outage_backs_off_while_pods_keep_running_and_mirror_pods_are_owned_by_the_node() {
    let api = FakeApiServer::new();
    let node = Running::start(Some(&api));
    node.source
        .apply(serde_saphyr::from_str::<Pod>(STATIC_POD).unwrap());
    let mirror = until("the mirror pod", Duration::from_secs(20), || {
        api.get("pods", "kube-system", "etcd-node-1")
    })
    .await;
    let registered = api.get("nodes", "", NODE).unwrap();
    assert_eq!(
        mirror["metadata"]["ownerReferences"],
        serde_json::json!([{"apiVersion": "v1", "kind": "Node", "name": NODE,
            "uid": registered["metadata"]["uid"], "controller": true}])
    );
    assert_eq!(
        mirror["metadata"]["annotations"]["kubernetes.io/config.mirror"],
        "hash-1"
    );
    let container = node.rt.containers()[0].id.clone();

    // deleted on the API server: created again; the static pod is not touched
    assert!(api.delete("pods", "kube-system", "etcd-node-1"));
    let again = until("the mirror pod recreated", Duration::from_secs(20), || {
        api.get("pods", "kube-system", "etcd-node-1")
    })
    .await;
    assert_ne!(again["metadata"]["uid"], mirror["metadata"]["uid"]);
    assert_eq!(
        again["metadata"]["ownerReferences"][0]["uid"],
        registered["metadata"]["uid"]
    );
    let ids: Vec<String> = node.rt.containers().into_iter().map(|c| c.id).collect();
    assert_eq!(
        ids,
        std::slice::from_ref(&container),
        "the static pod was restarted"
    );

    // the API server goes away for a minute
    api.set_down(true);
    let outage = Instant::now();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let attempts: Vec<Duration> = api
        .requests()
        .iter()
        .filter(|r| r.at >= outage && r.path.contains("/leases/") && !r.answered)
        .map(|r| r.at.duration_since(outage))
        .collect();
    let gaps: Vec<u128> = attempts
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis())
        .collect();
    // the first failure comes at the next renewal (within 2 s), then 200 ms doubling to 7 s
    assert_eq!(
        gaps[..8],
        [200, 400, 800, 1600, 3200, 6400, 7000, 7000],
        "{attempts:?}"
    );
    assert!(gaps[8..].iter().all(|g| *g == 7000), "{gaps:?}");
    // the pod kept running, unrestarted
    let running: Vec<String> = node
        .rt
        .containers()
        .into_iter()
        .filter(|c| c.state == node_core::cri::ContainerState::ContainerRunning)
        .map(|c| c.id)
        .collect();
    assert_eq!(running, [container]);

    // back: the Lease is renewed and the status reported within the back-off
    api.set_down(false);
    let back = Instant::now();
    until(
        "a lease renewal after the outage",
        Duration::from_secs(10),
        || {
            api.requests()
                .iter()
                .any(|r| r.answered && r.at >= back && r.method == "PUT" && r.path == LEASE)
                .then_some(())
        },
    )
    .await;
    node.stop().await;
}

#[tokio::test(start_paused = true)]
async fn static_pods_run_while_the_api_is_down_and_their_mirror_follows() {
    let api = FakeApiServer::new();
    // the API server is down from the start: the static pod runs anyway
    api.set_down(true);
    let node = Running::start(Some(&api));
    let p = serde_saphyr::from_str::<Pod>(STATIC_POD).unwrap();
    node.source.apply(p.clone());
    until("the static pod started", Duration::from_secs(10), || {
        (!node.rt.containers().is_empty()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(api.list("pods").is_empty());
    assert!(api.list("nodes").is_empty());
    // back: the Node is registered, then a sync creates the mirror pod, owned by it
    api.set_down(false);
    let mirror = until("the mirror pod", Duration::from_secs(30), || {
        api.get("pods", "kube-system", "etcd-node-1")
    })
    .await;
    let registered = api.get("nodes", "", NODE).unwrap();
    assert_eq!(
        mirror["metadata"]["ownerReferences"][0]["uid"],
        registered["metadata"]["uid"]
    );
    assert_eq!(node.rt.containers().len(), 1, "the pod was not restarted");
    // the static pod goes: so does its mirror
    node.source.delete(&p);
    until("the mirror pod deleted", Duration::from_secs(60), || {
        api.list("pods").is_empty().then_some(())
    })
    .await;
    node.stop().await;
}

#[tokio::test(start_paused = true)]
async fn standalone_the_node_status_is_served_as_json_at_slash_node() {
    let node = Running::start(None);
    let app = router(
        HttpState::new(Arc::new(support::NoPods), &NodeMetrics::default())
            .node(node.latest.clone()),
    );
    let get = |app: axum::Router| async move {
        let resp = app
            .oneshot(
                http::Request::get("/node")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let code = resp.status();
        (code, resp.into_body().collect().await.unwrap().to_bytes())
    };
    until("the node status built", Duration::from_secs(10), || {
        node.latest.get()
    })
    .await;
    let (code, body) = get(app.clone()).await;
    assert_eq!(code, 200);
    let n: Node = serde_json::from_slice(&body).unwrap();
    assert_eq!(n.metadata.name.as_deref(), Some(NODE));
    let status = n.status.unwrap();
    assert_eq!(
        status.node_info.unwrap().container_runtime_version,
        "fake://0.1.0"
    );
    assert_eq!(status.conditions.unwrap().len(), 5);
    // without a node status the route says so
    let bare = router(HttpState::new(
        Arc::new(support::NoPods),
        &NodeMetrics::default(),
    ));
    assert_eq!(get(bare).await.0, 404);
    node.stop().await;
}
