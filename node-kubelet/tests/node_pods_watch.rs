//! One list and watch of the node's pods (`NodePodsWatch`) shared by the kubelet's API pod
//! source and the node manager's mirror pods, against node-test-support's in-process fake API
//! server on tokio's paused clock: read from the server's request log, the kubelet with the
//! node manager in cluster mode lists and watches the pods of `spec.nodeName=node-1` once;
//! API pods start and stop, mirror pods are created for static pods, replaced when deleted,
//! deleted with their static pod, orphans removed, mirror pods never run; after the watch's
//! resourceVersion is compacted away (410 Gone) one re-list serves both.

use std::sync::Arc;
use std::time::Duration;

use node_core::{Pod, PodEvent, PodSource};
use node_kubelet::node::allocatable::NodeResources;
use node_kubelet::node::mirror::{MIRROR_ANNOTATION, mirror_pod};
use node_kubelet::node::volumes::MemoryObjectStore;
use node_kubelet::node::{NodeConfig, NodeManager};
use node_kubelet::{CancellationToken, NodePodsWatch};
use node_test_support::apiserver::Recorded;
use node_test_support::{FakeApiServer, until};
use serde_json::json;

mod support;
use support::Fakes;

const NODE: &str = "node-1";
const SELECTOR: &str = "fieldSelector=spec.nodeName%3Dnode-1";
const WAIT: Duration = Duration::from_secs(60);

const STATIC_POD: &str = "metadata:\n  name: etcd-node-1\n  namespace: kube-system\n  uid: static-uid\n  annotations: {kubernetes.io/config.source: file, kubernetes.io/config.hash: hash-1}\nspec:\n  containers: [{name: etcd, image: \"img:1\"}]\n";

fn api_pod(name: &str, node: &str) -> serde_json::Value {
    json!({"metadata": {"name": name, "namespace": "default"},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "img:1"}]}})
}

/// The requests for the node's pods: (lists, watches).
fn node_pod_requests(api: &FakeApiServer) -> (Vec<Recorded>, Vec<Recorded>) {
    api.requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path == "/api/v1/pods" && r.uri.contains(SELECTOR))
        .partition(|r| !r.uri.contains("watch=true"))
}

fn ready_sandboxes(f: &Fakes) -> Vec<String> {
    let mut names: Vec<String> =
        f.rt.sandboxes()
            .into_iter()
            .filter(|s| s.state == node_core::cri::PodSandboxState::SandboxReady)
            .filter_map(|s| s.config.metadata.map(|m| m.name))
            .collect();
    names.sort();
    names
}

/// Waits until the watch of the node's pods ended and a new one failed (the server is down).
async fn a_watch_attempt_while_down(api: &FakeApiServer) {
    until("a watch attempt while down", WAIT, || {
        api.requests()
            .iter()
            .any(|r| !r.answered && r.path == "/api/v1/pods" && r.uri.contains("watch=true"))
            .then_some(())
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn the_kubelet_and_its_mirror_pods_share_one_watch_of_the_nodes_pods() {
    let api = FakeApiServer::new();
    // an orphaned mirror pod left by an earlier kubelet, an API pod of this node and one of
    // another node
    let stat: Pod = serde_saphyr::from_str(STATIC_POD).unwrap();
    let mut orphan: Pod = stat.clone();
    orphan.metadata.name = Some("old-node-1".into());
    api.apply(
        "pods",
        serde_json::to_value(mirror_pod(&orphan, NODE, "earlier-node-uid")).unwrap(),
    );
    api.apply("pods", api_pod("web", NODE));
    api.apply("pods", api_pod("elsewhere", "node-2"));

    // the kubelet with the node manager in cluster mode, static pods from a second source
    let f = Fakes::new("file", &["img:1"]);
    let pods = NodePodsWatch::new(api.client(), NODE);
    let mut c = NodeConfig::new(NODE);
    c.cgroups = None;
    c.volumes.root_dir = f.dirs.path().join("kubelet");
    c.allocatable.root_dir = f.dirs.path().join("kubelet");
    let capacity = NodeResources {
        cpu_milli: 4000,
        memory_bytes: 4 << 30,
        ephemeral_storage_bytes: 1 << 40,
        pods: 110,
    };
    let node = NodeManager::with_allocatable(c, Arc::new(MemoryObjectStore::default()), capacity)
        .unwrap()
        .node_capacity(move || Ok(capacity))
        .api(api.client())
        .mirror_pods(pods.mirror_pods());
    let kubelet = f
        .kubelet(NODE)
        .source(Arc::new(pods.source()))
        .node(Arc::new(node))
        .build()
        .unwrap();
    let token = CancellationToken::new();
    let t = token.clone();
    let task = tokio::spawn(async move { kubelet.run(t).await.unwrap() });
    f.source.apply(stat.clone());

    // the API pod and the static pod run (no mirror pod does); the static pod's mirror is
    // created; the orphan goes
    until("web and the static pod running", WAIT, || {
        (ready_sandboxes(&f) == ["etcd-node-1", "web"]).then_some(())
    })
    .await;
    let mirror = until("the mirror pod", WAIT, || {
        api.get("pods", "kube-system", "etcd-node-1")
    })
    .await;
    assert_eq!(
        mirror["metadata"]["annotations"][MIRROR_ANNOTATION],
        "hash-1"
    );
    until("the orphaned mirror pod deleted", WAIT, || {
        api.get("pods", "kube-system", "old-node-1")
            .is_none()
            .then_some(())
    })
    .await;
    assert_eq!(ready_sandboxes(&f), ["etcd-node-1", "web"]);

    // one list and one watch of the node's pods, for both
    let (lists, watches) = node_pod_requests(&api);
    assert_eq!(lists.len(), 1, "{lists:?}");
    assert_eq!(watches.len(), 1, "{watches:?}");
    assert!(
        !api.requests().iter().any(
            |r| r.method == "GET" && r.path.starts_with("/api/v1/namespaces/kube-system/pods/")
        ),
        "a mirror pod was read on its own"
    );

    // a pod deleted on the API server stops; one added starts
    assert!(api.delete("pods", "default", "web"));
    api.apply("pods", api_pod("web-2", NODE));
    until("web stopped and web-2 running", WAIT, || {
        (ready_sandboxes(&f) == ["etcd-node-1", "web-2"]).then_some(())
    })
    .await;
    // the static pod goes: so does its mirror; it comes back: so does its mirror
    f.source.delete(&stat);
    until("the mirror pod deleted", WAIT, || {
        api.get("pods", "kube-system", "etcd-node-1")
            .is_none()
            .then_some(())
    })
    .await;
    f.source.apply(stat.clone());
    let mirror = until("the mirror pod again", WAIT, || {
        api.get("pods", "kube-system", "etcd-node-1")
    })
    .await;
    assert_eq!(node_pod_requests(&api).1.len(), 1, "still one watch");

    // the API server goes away; meanwhile the mirror pod is deleted, an API pod added and the
    // history of both compacted: back, the watch's resourceVersion is gone (410), and one re-list
    // shows both the source (web-3 starts) and the mirror pods (created again)
    api.set_down(true);
    a_watch_attempt_while_down(&api).await;
    assert!(api.delete("pods", "kube-system", "etcd-node-1"));
    api.apply("pods", api_pod("web-3", NODE));
    api.compact();
    api.set_down(false);
    until("web-3 running", WAIT, || {
        (ready_sandboxes(&f) == ["etcd-node-1", "web-2", "web-3"]).then_some(())
    })
    .await;
    let again = until("the mirror pod after the re-list", WAIT, || {
        api.get("pods", "kube-system", "etcd-node-1")
    })
    .await;
    assert_ne!(again["metadata"]["uid"], mirror["metadata"]["uid"]);
    let (lists, watches) = node_pod_requests(&api);
    assert_eq!(lists.len(), 2, "one re-list for both: {lists:?}");
    let answered: Vec<&Recorded> = watches.iter().filter(|r| r.answered).collect();
    // the first watch, the one answered 410, the one after the re-list
    assert_eq!(answered.len(), 3, "{answered:?}");
    assert!(answered[1].at < lists[1].at && lists[1].at <= answered[2].at);

    token.cancel();
    task.await.unwrap();
}

async fn next(s: &mut node_core::PodStream) -> Result<PodEvent, node_core::SourceError> {
    tokio::time::timeout(WAIT, futures::StreamExt::next(s))
        .await
        .expect("an event")
        .expect("the stream goes on")
}

fn names(events: &[PodEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e {
            PodEvent::Init => "init".into(),
            PodEvent::InitApply(p) => format!("init-apply {}", p.metadata.name.as_deref().unwrap()),
            PodEvent::InitDone => "init-done".into(),
            PodEvent::Apply(p) => format!("apply {}", p.metadata.name.as_deref().unwrap()),
            PodEvent::Delete(p) => format!("delete {}", p.metadata.name.as_deref().unwrap()),
        })
        .collect()
}

/// Reads events of `s` up to and including the next `InitDone`.
async fn until_init_done(s: &mut node_core::PodStream) -> Vec<PodEvent> {
    let mut out = Vec::new();
    loop {
        match next(s).await {
            Ok(PodEvent::InitDone) => {
                out.push(PodEvent::InitDone);
                return out;
            }
            Ok(e) => out.push(e),
            Err(_) => {}
        }
    }
}

#[tokio::test(start_paused = true)]
async fn every_stream_of_the_source_reads_the_one_watch_and_a_relist_reaches_all() {
    let api = FakeApiServer::new();
    api.apply("nodes", json!({"metadata": {"name": NODE}}));
    api.apply("pods", api_pod("a", NODE));
    let stat: Pod = serde_saphyr::from_str(STATIC_POD).unwrap();
    api.apply(
        "pods",
        serde_json::to_value(mirror_pod(&stat, NODE, "uid")).unwrap(),
    );
    let pods = NodePodsWatch::new(api.client(), NODE);
    let source = pods.source();
    assert_eq!(source.field_selector(), "spec.nodeName=node-1");
    // nothing is asked before the first use
    assert!(api.requests().is_empty());
    let mut first = source.watch();
    assert_eq!(
        names(&until_init_done(&mut first).await),
        ["init", "init-apply a", "init-done"],
        "the mirror pod is left out"
    );
    // a second stream gets the cache, without a request
    let n = api.requests().len();
    let mut second = source.watch();
    assert_eq!(
        names(&until_init_done(&mut second).await),
        ["init", "init-apply a", "init-done"]
    );
    assert_eq!(api.requests().len(), n);
    // the cache has the mirror pod for the mirror pods
    let cached: Vec<String> = pods
        .pods()
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(cached, ["a", "etcd-node-1"]);
    api.apply("pods", api_pod("b", NODE));
    for s in [&mut first, &mut second] {
        assert_eq!(names(&[next(s).await.unwrap()]), ["apply b"]);
    }

    // compacted while away: the watch relists once, every stream gets the new snapshot
    api.set_down(true);
    a_watch_attempt_while_down(&api).await;
    assert!(api.delete("pods", "default", "a"));
    api.compact();
    api.set_down(false);
    for s in [&mut first, &mut second] {
        let snapshot = until_init_done(s).await;
        let names = names(&snapshot);
        let from = names.iter().rposition(|n| n == "init").unwrap();
        assert_eq!(
            names[from..],
            ["init", "init-apply b", "init-done"],
            "{names:?}"
        );
    }
    let (lists, _) = node_pod_requests(&api);
    assert_eq!(lists.len(), 2, "{lists:?}");
    assert!(pods.is_synced());
    drop((first, second, source));
}
