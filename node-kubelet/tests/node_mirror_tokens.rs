//! Mirror pods of static pods and service-account tokens for projected volumes, against an
//! in-process fake API server (a `tower::service_fn` behind `kube::Client::new`, no network),
//! on tokio's paused clock: directly, and through the kubelet with the `NodeManager`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use node_kubelet::node::allocatable::NodeResources;
use node_kubelet::node::mirror::{MIRROR_ANNOTATION, MirrorPods, mirror_pod};
use node_kubelet::node::tokens::ServiceAccountTokens;
use node_kubelet::node::volumes::{MemoryObjectStore, VolumeConfig, VolumeManager};
use node_kubelet::node::{NodeConfig, NodeManager};
use node_kubelet::{CancellationToken, Kubelet, KubeletConfig};
use node_test_support::{FakeRuntime, FakeStatusSink, ScriptedPodSource, require_root};
use serde_json::{Value, json};

#[derive(Default)]
struct State {
    pods: BTreeMap<String, Value>,
    log: Vec<(Method, String)>,
    tokens_issued: u64,
    token_bodies: Vec<Value>,
    down: bool,
}

type Shared = Arc<Mutex<State>>;

fn status(code: u16, reason: &str) -> (u16, Value) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "reason": reason, "message": reason, "code": code}),
    )
}

fn handle(s: &mut State, method: &Method, path: &str, body: &[u8]) -> (u16, Value) {
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method.clone(), parts.as_slice()) {
        (Method::GET, ["api", "v1", "namespaces", ns, "pods", name]) => {
            match s.pods.get(&format!("{ns}/{name}")) {
                Some(p) => (200, p.clone()),
                None => status(404, "NotFound"),
            }
        }
        (Method::POST, ["api", "v1", "namespaces", ns, "pods"]) => {
            let name = body["metadata"]["name"].as_str().unwrap().to_string();
            let key = format!("{ns}/{name}");
            if s.pods.contains_key(&key) {
                return status(409, "AlreadyExists");
            }
            let mut p = body.clone();
            p["metadata"]["uid"] = json!(format!("api-uid-{}", s.log.len()));
            s.pods.insert(key, p.clone());
            (201, p)
        }
        (Method::DELETE, ["api", "v1", "namespaces", ns, "pods", name]) => {
            let key = format!("{ns}/{name}");
            let Some(p) = s.pods.get(&key).cloned() else {
                return status(404, "NotFound");
            };
            let want = &body["preconditions"]["uid"];
            if !want.is_null() && *want != p["metadata"]["uid"] {
                return status(409, "Conflict");
            }
            s.pods.remove(&key);
            (200, p)
        }
        (
            Method::POST,
            [
                "api",
                "v1",
                "namespaces",
                _ns,
                "serviceaccounts",
                _sa,
                "token",
            ],
        ) => {
            s.tokens_issued += 1;
            s.token_bodies.push(body.clone());
            let secs = body["spec"]["expirationSeconds"].as_i64().unwrap_or(3600);
            let exp = Time(
                Timestamp::now()
                    .checked_add(SignedDuration::from_secs(secs))
                    .unwrap(),
            );
            let mut out = body.clone();
            out["status"] = json!({"token": format!("token-{}", s.tokens_issued),
                                   "expirationTimestamp": exp});
            (201, out)
        }
        _ => status(404, "NotFound"),
    }
}

fn fake_api() -> (kube::Client, Shared) {
    let state: Shared = Arc::default();
    let st = state.clone();
    let svc = tower::service_fn(move |req: Request<kube::client::Body>| {
        let st = st.clone();
        async move {
            let method = req.method().clone();
            let path = req.uri().path().to_string();
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let (code, value) = {
                let mut s = st.lock().unwrap();
                s.log.push((method.clone(), path.clone()));
                if s.down {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionRefused,
                        "connection refused",
                    ));
                }
                handle(&mut s, &method, &path, &body)
            };
            Ok::<_, std::io::Error>(
                Response::builder()
                    .status(StatusCode::from_u16(code).unwrap())
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(serde_json::to_vec(&value).unwrap())))
                    .unwrap(),
            )
        }
    });
    (kube::Client::new(svc, "default"), state)
}

fn static_pod(image: &str) -> Pod {
    serde_saphyr::from_str(&format!(
        "metadata:\n  name: etcd-node-1\n  namespace: kube-system\n  uid: static-uid-{image}\n  annotations: {{kubernetes.io/config.source: file, kubernetes.io/config.hash: hash-{image}}}\nspec:\n  containers: [{{name: etcd, image: \"{image}\"}}]\n"
    ))
    .unwrap()
}

fn calls(state: &Shared) -> Vec<String> {
    state
        .lock()
        .unwrap()
        .log
        .iter()
        .map(|(m, p)| format!("{m} {p}"))
        .collect()
}

const POD_PATH: &str = "/api/v1/namespaces/kube-system/pods";

#[tokio::test]
async fn mirror_pods_follow_their_static_pods() {
    let (client, state) = fake_api();
    let mirrors = MirrorPods::new(client, "node-1");
    let v1 = static_pod("etcd:1");
    assert!(mirrors.ensure(&v1).await.unwrap());
    {
        let s = state.lock().unwrap();
        let m = &s.pods["kube-system/etcd-node-1"];
        assert_eq!(
            m["metadata"]["annotations"][MIRROR_ANNOTATION],
            "hash-etcd:1"
        );
        assert_eq!(m["spec"]["nodeName"], "node-1");
        assert!(m["status"].is_null());
    }
    // known: no API call at all on the next syncs
    let n = calls(&state).len();
    assert!(!mirrors.ensure(&v1).await.unwrap());
    assert_eq!(calls(&state).len(), n);
    // the static pod changes: the old mirror is replaced
    let v2 = static_pod("etcd:2");
    assert!(mirrors.ensure(&v2).await.unwrap());
    let tail: Vec<String> = calls(&state)[n..].to_vec();
    assert_eq!(
        tail,
        vec![
            format!("GET {POD_PATH}/etcd-node-1"),
            format!("DELETE {POD_PATH}/etcd-node-1"),
            format!("POST {POD_PATH}"),
        ]
    );
    assert_eq!(
        state.lock().unwrap().pods["kube-system/etcd-node-1"]["metadata"]["annotations"]
            [MIRROR_ANNOTATION],
        "hash-etcd:2"
    );
    // a mirror made by an earlier kubelet with the right hash is adopted, not recreated
    let fresh = MirrorPods::new(fake_api_with(&state), "node-1");
    let n = calls(&state).len();
    assert!(!fresh.ensure(&v2).await.unwrap());
    assert_eq!(calls(&state)[n..], [format!("GET {POD_PATH}/etcd-node-1")]);
    // gone with its static pod
    mirrors.delete(&v2).await.unwrap();
    assert!(state.lock().unwrap().pods.is_empty());
    // pods from the API server get no mirror; an API pod of the same name is left alone
    let mut api_pod = static_pod("etcd:3");
    api_pod
        .metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert("kubernetes.io/config.source".into(), "api".into());
    let n = calls(&state).len();
    assert!(!mirrors.ensure(&api_pod).await.unwrap());
    assert_eq!(calls(&state).len(), n);
    let mut plain = serde_json::to_value(mirror_pod(&v1, "node-1")).unwrap();
    plain["metadata"]["annotations"] = json!({});
    state
        .lock()
        .unwrap()
        .pods
        .insert("kube-system/etcd-node-1".into(), plain);
    assert!(!mirrors.ensure(&static_pod("etcd:4")).await.unwrap());
    mirrors.delete(&static_pod("etcd:4")).await.unwrap();
    assert_eq!(state.lock().unwrap().pods.len(), 1, "not a mirror: kept");
}

/// A second client over the same fake state.
fn fake_api_with(state: &Shared) -> kube::Client {
    let st = state.clone();
    let svc = tower::service_fn(move |req: Request<kube::client::Body>| {
        let st = st.clone();
        async move {
            let method = req.method().clone();
            let path = req.uri().path().to_string();
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let (code, value) = {
                let mut s = st.lock().unwrap();
                s.log.push((method.clone(), path.clone()));
                handle(&mut s, &method, &path, &body)
            };
            Ok::<_, std::io::Error>(
                Response::builder()
                    .status(StatusCode::from_u16(code).unwrap())
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(serde_json::to_vec(&value).unwrap())))
                    .unwrap(),
            )
        }
    });
    kube::Client::new(svc, "default")
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
    let (client, state) = fake_api();
    let tokens = ServiceAccountTokens::new(client);
    let pod = token_pod();
    assert_eq!(tokens.refresh_for_pod(&pod).await.unwrap(), 1);
    {
        let s = state.lock().unwrap();
        assert_eq!(
            s.log.last().unwrap().1,
            "/api/v1/namespaces/shop/serviceaccounts/builder/token"
        );
        let spec = &s.token_bodies[0]["spec"];
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
    assert_eq!(state.lock().unwrap().tokens_issued, 2);
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

#[tokio::test(start_paused = true)]
async fn the_kubelet_keeps_mirror_pods_and_static_pods_run_while_the_api_is_down() {
    let (client, state) = fake_api();
    let (rt, sink, source) = (
        FakeRuntime::new(),
        FakeStatusSink::new(),
        ScriptedPodSource::new("file"),
    );
    rt.add_image("etcd:1");
    let dirs = tempfile::tempdir().unwrap();
    let mut c = NodeConfig::new("node-1");
    c.cgroups = None;
    c.volumes.root_dir = dirs.path().join("kubelet");
    let alloc = NodeResources {
        cpu_milli: 4000,
        memory_bytes: 4 << 30,
        ephemeral_storage_bytes: 1 << 40,
        pods: 10,
    };
    let node = NodeManager::with_allocatable(c, Arc::new(MemoryObjectStore::default()), alloc)
        .unwrap()
        .api(client);
    let token = CancellationToken::new();
    let kubelet = Kubelet::builder("node-1")
        .source(Arc::new(source.clone()))
        .runtime(Arc::new(rt.clone()), Arc::new(rt.clone()))
        .status(Arc::new(sink.clone()))
        .node(Arc::new(node))
        .config(KubeletConfig {
            pod_log_root: dirs.path().join("logs"),
            sync_period: Duration::from_secs(2),
            ..Default::default()
        })
        .build()
        .unwrap();
    let t = token.clone();
    let task = tokio::spawn(async move { kubelet.run(t).await.unwrap() });
    // the API server is down first: the static pod runs anyway
    state.lock().unwrap().down = true;
    let p = static_pod("etcd:1");
    source.apply(p.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while rt.containers().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "static pod not started"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(state.lock().unwrap().pods.is_empty());
    // back: the next sync creates the mirror pod
    state.lock().unwrap().down = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while state.lock().unwrap().pods.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no mirror pod");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(rt.containers().len(), 1, "the pod was not restarted");
    source.delete(&p);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !state.lock().unwrap().pods.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "mirror pod not deleted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    token.cancel();
    task.await.unwrap();
}
