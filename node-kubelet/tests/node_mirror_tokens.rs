//! Mirror pods of static pods and service-account tokens for projected volumes, against
//! node-test-support's in-process fake API server (no network), on tokio's paused clock
//! (through the kubelet with the `NodeManager`: `node_status_api.rs`).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use node_kubelet::node::mirror::{MIRROR_ANNOTATION, MirrorPods, mirror_pod};
use node_kubelet::node::tokens::ServiceAccountTokens;
use node_kubelet::node::volumes::{MemoryObjectStore, VolumeConfig, VolumeManager};
use node_test_support::{FakeApiServer, require_root};
use serde_json::json;

fn static_pod(image: &str) -> Pod {
    serde_saphyr::from_str(&format!(
        "metadata:\n  name: etcd-node-1\n  namespace: kube-system\n  uid: static-uid-{image}\n  annotations: {{kubernetes.io/config.source: file, kubernetes.io/config.hash: hash-{image}}}\nspec:\n  containers: [{{name: etcd, image: \"{image}\"}}]\n"
    ))
    .unwrap()
}

fn calls(api: &FakeApiServer) -> Vec<String> {
    api.requests()
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect()
}

const POD_PATH: &str = "/api/v1/namespaces/kube-system/pods";

/// A fake API server with the Node `node-1` registered; its uid.
fn api_with_node() -> (FakeApiServer, String) {
    let api = FakeApiServer::new();
    let node = api.apply("nodes", json!({"metadata": {"name": "node-1"}}));
    let uid = node["metadata"]["uid"].as_str().unwrap().to_string();
    (api, uid)
}

fn mirror_of(api: &FakeApiServer) -> Option<serde_json::Value> {
    api.get("pods", "kube-system", "etcd-node-1")
}

/// Syncs `pod` until a sync creates its mirror (the watch of the node's pods shows a deletion
/// a moment after it happens, as kubelet's pod manager sees it).
async fn sync_until_created(mirrors: &MirrorPods, pod: &Pod) {
    for _ in 0..200 {
        if mirrors.ensure(pod).await.unwrap() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no mirror pod created");
}

fn pod_lists(api: &FakeApiServer) -> Vec<String> {
    api.requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path == "/api/v1/pods")
        .map(|r| r.uri.clone())
        .collect()
}

#[tokio::test]
async fn mirror_pods_follow_their_static_pods() {
    let (api, node_uid) = api_with_node();
    let mirrors = MirrorPods::new(api.client(), "node-1");
    let v1 = static_pod("etcd:1");
    assert!(mirrors.ensure(&v1).await.unwrap());
    let m = mirror_of(&api).unwrap();
    assert_eq!(
        m["metadata"]["annotations"][MIRROR_ANNOTATION],
        "hash-etcd:1"
    );
    assert_eq!(m["spec"]["nodeName"], "node-1");
    assert!(m["status"].is_null());
    // owned by the registered Node, as kubelet does it
    assert_eq!(
        m["metadata"]["ownerReferences"],
        json!([{"apiVersion": "v1", "kind": "Node", "name": "node-1", "uid": node_uid,
                "controller": true}])
    );
    // the node's pods are watched (by spec.nodeName, never one by one)
    let lists = pod_lists(&api);
    assert!(!lists.is_empty());
    assert!(
        lists
            .iter()
            .all(|u| u.contains("fieldSelector=spec.nodeName%3Dnode-1")),
        "{lists:?}"
    );
    // in place: the next syncs send nothing
    let n = calls(&api).len();
    assert!(!mirrors.ensure(&v1).await.unwrap());
    let after: Vec<_> = calls(&api)[n..]
        .iter()
        .filter(|c| !c.starts_with("GET /api/v1/pods"))
        .cloned()
        .collect();
    assert!(after.is_empty(), "{after:?}");
    // deleted on the API server: a sync after the watch showed it creates it again
    assert!(api.delete("pods", "kube-system", "etcd-node-1"));
    sync_until_created(&mirrors, &v1).await;
    let again = mirror_of(&api).unwrap();
    assert_ne!(again["metadata"]["uid"], m["metadata"]["uid"]);
    assert_eq!(again["metadata"]["ownerReferences"][0]["uid"], node_uid);
    // the static pod changes: the old mirror is replaced (no GET: the cache knows it)
    let n = calls(&api).len();
    let v2 = static_pod("etcd:2");
    assert!(mirrors.ensure(&v2).await.unwrap());
    let after: Vec<_> = calls(&api)[n..]
        .iter()
        .filter(|c| !c.starts_with("GET /api/v1/pods"))
        .cloned()
        .collect();
    assert_eq!(
        after,
        [
            format!("DELETE {POD_PATH}/etcd-node-1"),
            format!("POST {POD_PATH}"),
        ]
    );
    let delete = api
        .requests()
        .into_iter()
        .rfind(|r| r.method == "DELETE")
        .unwrap();
    assert_eq!(
        delete.body["preconditions"]["uid"], again["metadata"]["uid"],
        "only the mirror that was seen is deleted"
    );
    assert_eq!(
        mirror_of(&api).unwrap()["metadata"]["annotations"][MIRROR_ANNOTATION],
        "hash-etcd:2"
    );
    // a mirror made by an earlier kubelet with the right hash is adopted, not recreated
    let fresh = MirrorPods::new(api.client(), "node-1");
    let n = calls(&api).len();
    assert!(!fresh.ensure(&v2).await.unwrap());
    let after = calls(&api)[n..].to_vec();
    assert_eq!(after[0], "GET /api/v1/nodes/node-1");
    assert!(
        after[1..].iter().all(|c| c == "GET /api/v1/pods"),
        "{after:?}"
    );
    // gone with its static pod
    mirrors.delete(&v2).await.unwrap();
    assert!(api.list("pods").is_empty());
    // pods from the API server get no mirror; an API pod of the same name is left alone
    let mut api_pod = static_pod("etcd:3");
    api_pod
        .metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert("kubernetes.io/config.source".into(), "api".into());
    let n = calls(&api).len();
    assert!(!mirrors.ensure(&api_pod).await.unwrap());
    assert_eq!(calls(&api).len(), n);
    let mut plain = serde_json::to_value(mirror_pod(&v1, "node-1", &node_uid)).unwrap();
    plain["metadata"]["annotations"] = json!({});
    api.apply("pods", plain);
    assert!(!mirrors.ensure(&static_pod("etcd:4")).await.unwrap());
    tokio::time::sleep(Duration::from_millis(100)).await; // the watch shows it
    assert!(!mirrors.ensure(&static_pod("etcd:4")).await.unwrap());
    mirrors.delete(&static_pod("etcd:4")).await.unwrap();
    assert_eq!(api.list("pods").len(), 1, "not a mirror: kept");
    assert!(
        !api.requests().iter().any(|r| r.method == "DELETE"
            && r.body["preconditions"]["uid"] == api.list("pods")[0]["metadata"]["uid"]),
        "the API pod was not asked to go"
    );
}

#[tokio::test(start_paused = true)]
async fn many_syncs_of_static_pods_send_no_request_for_their_mirrors() {
    let (api, _) = api_with_node();
    let mirrors = MirrorPods::new(api.client(), "node-1");
    let pods: Vec<Pod> = (0..3)
        .map(|i| {
            let mut p = static_pod("etcd:1");
            p.metadata.name = Some(format!("static-{i}"));
            p
        })
        .collect();
    for p in &pods {
        assert!(mirrors.ensure(p).await.unwrap());
    }
    let n = api.requests().len();
    for _ in 0..100 {
        for p in &pods {
            assert!(!mirrors.ensure(p).await.unwrap());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let during: Vec<String> = api.requests()[n..]
        .iter()
        .map(|r| format!("{} {}", r.method, r.uri))
        .collect();
    // 300 syncs over 100 s: no GET of a mirror pod, at most the watch of the node's pods
    // renewed
    assert!(
        during.iter().all(|c| c.starts_with("GET /api/v1/pods?")),
        "{during:?}"
    );
    assert!(
        !api.requests()
            .iter()
            .any(|r| r.method == "GET" && r.path.starts_with(&format!("{POD_PATH}/"))),
        "a mirror pod was read on its own"
    );
}

#[tokio::test]
async fn orphaned_mirror_pods_are_deleted() {
    let (api, node_uid) = api_with_node();
    // a mirror left by an earlier kubelet whose static pod is gone, one whose static pod is
    // still there, a mirror of another node, and a pod from the API server
    let mut gone =
        serde_json::to_value(mirror_pod(&static_pod("old:1"), "node-1", &node_uid)).unwrap();
    gone["metadata"]["name"] = json!("old-node-1");
    api.apply("pods", gone);
    api.apply(
        "pods",
        serde_json::to_value(mirror_pod(&static_pod("etcd:1"), "node-1", &node_uid)).unwrap(),
    );
    let mut other = serde_json::to_value(mirror_pod(&static_pod("x:1"), "node-2", "u2")).unwrap();
    other["metadata"]["name"] = json!("x-node-2");
    other["spec"]["nodeName"] = json!("node-2");
    api.apply("pods", other);
    api.apply(
        "pods",
        json!({"metadata": {"name": "web", "namespace": "kube-system"},
            "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "i"}]}}),
    );
    let mirrors = MirrorPods::new(api.client(), "node-1");
    let deleted = mirrors
        .delete_orphans(&[static_pod("etcd:1")])
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    let mut names: Vec<String> = api
        .list("pods")
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["etcd-node-1", "web", "x-node-2"]);
    assert_eq!(
        mirrors
            .delete_orphans(&[static_pod("etcd:1")])
            .await
            .unwrap(),
        0
    );
}

#[tokio::test]
async fn no_mirror_pod_before_the_node_is_registered() {
    let api = FakeApiServer::new();
    let mirrors = MirrorPods::new(api.client(), "node-1");
    let e = mirrors.ensure(&static_pod("etcd:1")).await.unwrap_err();
    assert!(e.to_string().contains("node-1"), "{e}");
    assert!(api.list("pods").is_empty());
    // registered: the next sync creates it, owned by the Node
    let node = api.apply("nodes", json!({"metadata": {"name": "node-1"}}));
    assert!(mirrors.ensure(&static_pod("etcd:1")).await.unwrap());
    assert_eq!(
        mirror_of(&api).unwrap()["metadata"]["ownerReferences"][0]["uid"],
        node["metadata"]["uid"]
    );
}

fn token_pod() -> Pod {
    serde_saphyr::from_str(
        r#"
metadata: {name: app, namespace: shop, uid: uid-app}
spec:
  serviceAccountName: builder
  volumes:
  - name: kube-api-access
    projected:
      sources:
      - serviceAccountToken: {path: token, audience: vault, expirationSeconds: 600}
      - downwardAPI: {items: [{path: namespace, fieldRef: {fieldPath: metadata.namespace}}]}
  containers: [{name: app, image: "busybox:1", volumeMounts: [{name: kube-api-access, mountPath: /var/run/secrets/tokens}]}]
"#,
    )
    .unwrap()
}

#[tokio::test(start_paused = true)]
async fn tokens_are_requested_bound_to_the_pod_and_refreshed_at_80_percent() {
    let api = FakeApiServer::new();
    let tokens = ServiceAccountTokens::new(api.client());
    let pod = token_pod();
    // no such service account: a clear error naming it
    let e = tokens.refresh_for_pod(&pod).await.unwrap_err().to_string();
    assert!(e.contains("shop/builder"), "{e}");
    api.apply(
        "serviceaccounts",
        json!({"metadata": {"name": "builder", "namespace": "shop"}}),
    );
    assert_eq!(tokens.refresh_for_pod(&pod).await.unwrap(), 1);
    {
        let last = api.requests().pop().unwrap();
        assert_eq!(
            last.path,
            "/api/v1/namespaces/shop/serviceaccounts/builder/token"
        );
        let spec = &last.body["spec"];
        assert_eq!(spec["audiences"], json!(["vault"]));
        assert_eq!(spec["expirationSeconds"], 600);
        assert_eq!(
            spec["boundObjectRef"],
            json!({"apiVersion": "v1", "kind": "Pod", "name": "app", "uid": "uid-app"})
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let vm = VolumeManager::new(
        VolumeConfig {
            root_dir: dir.path().to_path_buf(),
            ..Default::default()
        },
        Arc::new(MemoryObjectStore::default()),
    );
    // without an API server the projection is refused, naming the field
    let e = vm.setup_pod(&pod).unwrap_err().to_string();
    assert!(e.contains("serviceAccountToken"), "{e}");
    let file = dir
        .path()
        .join("pods/uid-app/volumes/kubernetes.io~projected/kube-api-access/token");
    // the refresh cadence without files
    tokio::time::advance(Duration::from_secs(420)).await;
    assert_eq!(tokens.refresh_for_pod(&pod).await.unwrap(), 0);
    tokio::time::advance(Duration::from_secs(70)).await;
    assert_eq!(tokens.refresh_for_pod(&pod).await.unwrap(), 1);
    assert_eq!(api.tokens_issued(), 2);
    // a projected volume with a token lives on tmpfs: writing it needs root
    if !require_root("tokens_are_requested_bound_to_the_pod_and_refreshed_at_80_percent") {
        return;
    }
    /// Unmounts the pod's volumes on drop, even on panic.
    struct Teardown<'a>(&'a VolumeManager);
    impl Drop for Teardown<'_> {
        fn drop(&mut self) {
            let _ = self.0.teardown_pod("uid-app");
        }
    }
    let _teardown = Teardown(&vm);
    let setup = || vm.setup_pod_with(&pod, Some(&tokens)).unwrap();
    setup();
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "token-2");
    assert_eq!(
        std::fs::read_to_string(file.with_file_name("namespace")).unwrap(),
        "shop"
    );
    assert!(node_kubelet::node::volumes::is_mount_point(
        &file.parent().unwrap().canonicalize().unwrap()
    ));
    // past 80 % again: a new token, and the file follows with the ..data swap
    tokio::time::advance(Duration::from_secs(500)).await;
    assert_eq!(tokens.refresh_for_pod(&pod).await.unwrap(), 1);
    let before = std::fs::read_link(file.with_file_name("..data")).unwrap();
    setup();
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "token-3");
    assert_ne!(
        std::fs::read_link(file.with_file_name("..data")).unwrap(),
        before
    );
    vm.teardown_pod("uid-app").unwrap();
    assert!(!dir.path().join("pods/uid-app").exists());
    tokens.forget_pod("uid-app");
    assert_eq!(tokens.refresh_for_pod(&pod).await.unwrap(), 1);
}
