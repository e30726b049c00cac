//! The configMaps and secrets of the API server that pods reference ([`ApiObjectStore`]),
//! against node-test-support's in-process fake API server on tokio's paused clock: one watch
//! per referenced object selected by its name (never a cluster-wide list), updates reaching a
//! mounted configMap volume, watches stopped with the last pod referencing them, a missing
//! optional configMap, the last contents kept through an outage.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use node_kubelet::ValueStore;
use node_kubelet::node::objects::{ApiObjectStore, ObjectKind, ObjectRef, referenced_objects};
use node_kubelet::node::volumes::{ObjectStore, VolumeConfig, VolumeError, VolumeManager};
use node_test_support::FakeApiServer;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

fn pod(yaml: &str) -> Pod {
    serde_saphyr::from_str(yaml).unwrap()
}

fn config_map(name: &str, value: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "default"}, "data": {"key": value}})
}

fn secret(name: &str, value: &str) -> serde_json::Value {
    use k8s_openapi::ByteString;
    let b = serde_json::to_value(ByteString(value.as_bytes().to_vec())).unwrap();
    json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": "default"}, "data": {"password": b}})
}

fn r(kind: ObjectKind, name: &str) -> ObjectRef {
    ObjectRef {
        kind,
        namespace: "default".into(),
        name: name.into(),
    }
}

fn volumes(root: &std::path::Path, store: Arc<ApiObjectStore>) -> VolumeManager {
    VolumeManager::new(
        VolumeConfig {
            root_dir: root.into(),
            node_name: "node-1".into(),
            ..Default::default()
        },
        store,
    )
}

/// The requests for configMaps and secrets, as `METHOD uri`.
fn object_requests(api: &FakeApiServer) -> Vec<String> {
    api.requests()
        .iter()
        .filter(|r| r.path.ends_with("/configmaps") || r.path.ends_with("/secrets"))
        .map(|r| format!("{} {}", r.method, r.uri))
        .collect()
}

async fn until(what: &str, mut pred: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !pred() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const WEB: &str = r#"
metadata: {name: web, namespace: default, uid: web-uid}
spec:
  imagePullSecrets: [{name: registry}]
  initContainers:
  - name: init
    image: i
    envFrom: [{configMapRef: {name: init-env}}]
  containers:
  - name: c
    image: i
    env:
    - {name: PASSWORD, valueFrom: {secretKeyRef: {name: db, key: password}}}
  volumes:
  - {name: config, configMap: {name: app-config}}
  - name: both
    projected:
      sources:
      - configMap: {name: app-config}
      - secret: {name: tls}
"#;

#[test]
fn the_references_of_a_pod_are_found_where_kubelet_finds_them() {
    let refs: Vec<ObjectRef> = referenced_objects(&pod(WEB)).into_iter().collect();
    assert_eq!(
        refs,
        [
            r(ObjectKind::ConfigMap, "app-config"),
            r(ObjectKind::ConfigMap, "init-env"),
            r(ObjectKind::Secret, "db"),
            r(ObjectKind::Secret, "registry"),
            r(ObjectKind::Secret, "tls"),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn only_the_referenced_objects_are_watched_each_by_its_name() {
    let api = FakeApiServer::new();
    api.apply("configmaps", config_map("app-config", "v1"));
    api.apply("configmaps", config_map("unrelated", "x"));
    api.apply("secrets", secret("db", "hunter2"));
    api.apply("secrets", secret("unrelated", "x"));
    let store = ApiObjectStore::new(api.client());
    store.register_pod(&pod(WEB)).await.unwrap();
    assert_eq!(
        store.watched(),
        referenced_objects(&pod(WEB))
            .into_iter()
            .collect::<Vec<_>>()
    );
    // listed by the time the registration returns: the values are there
    assert_eq!(
        ValueStore::secret(&store, "default", "db").unwrap()["password"],
        b"hunter2"
    );
    assert_eq!(
        ObjectStore::config_map(&store, "default", "app-config")
            .unwrap()
            .data
            .unwrap()["key"],
        "v1"
    );
    assert!(ObjectStore::config_map(&store, "default", "unrelated").is_none());
    assert!(
        ObjectStore::secret(&store, "default", "tls").is_none(),
        "absent on the server"
    );

    let log = object_requests(&api);
    assert!(!log.is_empty());
    for line in &log {
        assert!(
            line.starts_with("GET /api/v1/namespaces/default/"),
            "not a namespaced read: {line}"
        );
        let named = ["app-config", "init-env", "db", "registry", "tls"]
            .iter()
            .any(|n| {
                line.contains(&format!("fieldSelector=metadata.name%3D{n}&"))
                    || line.ends_with(&format!("fieldSelector=metadata.name%3D{n}"))
            });
        assert!(named, "not selected by a referenced name: {line}");
    }
    // each referenced object is listed (then watched) by its name
    for (res, n) in [
        ("configmaps", "app-config"),
        ("secrets", "db"),
        ("secrets", "tls"),
    ] {
        assert!(
            log.iter().any(|l| l.contains(&format!("/{res}?"))
                && l.contains(&format!("metadata.name%3D{n}"))
                && !l.contains("watch=true")),
            "{res} {n} not listed: {log:?}"
        );
    }
    until("the watches open", || {
        object_requests(&api)
            .iter()
            .filter(|l| l.contains("watch=true"))
            .count()
            == 5
    })
    .await;
    // the same pod synced again opens nothing new
    let n = api.requests().len();
    store.register_pod(&pod(WEB)).await.unwrap();
    assert_eq!(api.requests().len(), n);
}

#[tokio::test(start_paused = true)]
async fn an_update_of_a_referenced_config_map_reaches_the_mounted_file() {
    let api = FakeApiServer::new();
    api.apply("configmaps", config_map("app-config", "v1"));
    let store = Arc::new(ApiObjectStore::new(api.client()));
    let dir = tempfile::tempdir().unwrap();
    let vm = volumes(dir.path(), store.clone());
    let p = pod(WEB);
    store.register_pod(&p).await.unwrap();
    let vols = vm.setup_pod(&p);
    // the projected volume also needs the secret tls, absent and not optional
    assert!(
        matches!(&vols, Err(VolumeError::NotFound { name, .. }) if name == "tls"),
        "{vols:?}"
    );
    api.apply("secrets", secret("tls", "cert"));
    until("the secret seen", || {
        ObjectStore::secret(&*store, "default", "tls").is_some()
    })
    .await;
    let p = pod(r#"
metadata: {name: web, namespace: default, uid: web-uid}
spec:
  containers: [{name: c, image: i}]
  volumes: [{name: config, configMap: {name: app-config}}]
"#);
    store.register_pod(&p).await.unwrap();
    let vols = vm.setup_pod(&p).unwrap();
    let file = vols["config"].host_path.join("key");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "v1");
    let data = vols["config"].host_path.join("..data");
    let before = std::fs::read_link(&data).unwrap();
    // the pod now references only app-config: tls and the rest are no longer watched
    assert_eq!(store.watched(), [r(ObjectKind::ConfigMap, "app-config")]);

    api.apply("configmaps", config_map("app-config", "v2"));
    until("the update seen", || {
        ObjectStore::config_map(&*store, "default", "app-config")
            .is_some_and(|c| c.data.unwrap()["key"] == "v2")
    })
    .await;
    // the next sync writes it with the ..data swap
    vm.setup_pod(&p).unwrap();
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "v2");
    assert_ne!(std::fs::read_link(&data).unwrap(), before);
}

#[tokio::test(start_paused = true)]
async fn a_removed_pod_stops_the_watches_only_it_needed() {
    let api = FakeApiServer::new();
    api.apply("configmaps", config_map("shared", "s"));
    api.apply("configmaps", config_map("only-a", "a"));
    let store = ApiObjectStore::new(api.client());
    let a = pod(r#"
metadata: {name: a, namespace: default, uid: a-uid}
spec:
  containers:
  - name: c
    image: i
    envFrom: [{configMapRef: {name: shared}}, {configMapRef: {name: only-a}}]
"#);
    let b = pod(r#"
metadata: {name: b, namespace: default, uid: b-uid}
spec:
  containers: [{name: c, image: i, envFrom: [{configMapRef: {name: shared}}]}]
"#);
    store.register_pod(&a).await.unwrap();
    store.register_pod(&b).await.unwrap();
    assert_eq!(
        store.watched(),
        [
            r(ObjectKind::ConfigMap, "only-a"),
            r(ObjectKind::ConfigMap, "shared")
        ]
    );
    store.unregister_pod(&a);
    assert_eq!(store.watched(), [r(ObjectKind::ConfigMap, "shared")]);
    assert!(ValueStore::config_map(&store, "default", "only-a").is_none());
    assert_eq!(
        ValueStore::config_map(&store, "default", "shared").unwrap()["key"],
        "s"
    );
    // the watch of only-a is gone: after an outage ends every watch, only shared comes back
    let n = api.requests().len();
    api.set_down(true);
    tokio::time::sleep(Duration::from_secs(2)).await;
    api.set_down(false);
    until("shared listed again", || {
        api.requests()[n..]
            .iter()
            .any(|r| r.answered && r.uri.contains("metadata.name%3Dshared"))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after: Vec<String> = api.requests()[n..].iter().map(|r| r.uri.clone()).collect();
    assert!(
        !after.iter().any(|u| u.contains("only-a")),
        "only-a still watched: {after:?}"
    );
    store.unregister_pod(&b);
    assert!(store.watched().is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_optional_missing_config_map_is_empty_once_listed_not_before() {
    let api = FakeApiServer::new();
    let store = Arc::new(ApiObjectStore::new(api.client()));
    let dir = tempfile::tempdir().unwrap();
    let vm = volumes(dir.path(), store.clone());
    let p = pod(r#"
metadata: {name: p, namespace: default, uid: p-uid}
spec:
  containers: [{name: c, image: i}]
  volumes: [{name: maybe, configMap: {name: maybe, optional: true}}]
"#);
    // the API server is away: the registration fails (kubelet: failed to sync configmap
    // cache), the volume is not taken for absent
    api.set_down(true);
    let e = store.register_pod(&p).await.unwrap_err();
    assert_eq!((e.kind, e.name.as_str()), ("configmap", "maybe"));
    assert!(
        e.to_string().contains("failed to sync configmap cache"),
        "{e}"
    );
    // back: listed, the optional configMap is missing, the volume is empty
    api.set_down(false);
    until("listed", || {
        api.requests()
            .iter()
            .any(|r| r.answered && r.path.ends_with("/configmaps"))
    })
    .await;
    store.register_pod(&p).await.unwrap();
    let vols = vm.setup_pod(&p).unwrap();
    let dir_of = vols["maybe"].host_path.clone();
    assert!(!dir_of.join("key").exists());
    // created later: it arrives through the watch and lands at the next sync
    api.apply("configmaps", config_map("maybe", "here"));
    until("the configMap seen", || {
        ObjectStore::config_map(&*store, "default", "maybe").is_some()
    })
    .await;
    vm.setup_pod(&p).unwrap();
    assert_eq!(std::fs::read_to_string(dir_of.join("key")).unwrap(), "here");
    // a missing configMap that is not optional is an error naming it
    let strict = pod(r#"
metadata: {name: s, namespace: default, uid: s-uid}
spec:
  containers: [{name: c, image: i}]
  volumes: [{name: must, configMap: {name: absent}}]
"#);
    store.register_pod(&strict).await.unwrap();
    let e = vm.setup_pod(&strict).unwrap_err();
    assert!(
        matches!(&e, VolumeError::NotFound { name, .. } if name == "absent"),
        "{e}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_outage_keeps_the_last_contents() {
    let api = FakeApiServer::new();
    api.apply("secrets", secret("db", "one"));
    let store = ApiObjectStore::new(api.client());
    let p = pod(r#"
metadata: {name: p, namespace: default, uid: p-uid}
spec:
  containers:
  - name: c
    image: i
    env: [{name: P, valueFrom: {secretKeyRef: {name: db, key: password}}}]
"#);
    store.register_pod(&p).await.unwrap();
    api.set_down(true);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(
        api.requests().iter().any(|r| !r.answered),
        "the watch retried during the outage"
    );
    assert_eq!(
        ValueStore::secret(&store, "default", "db").unwrap()["password"],
        b"one"
    );
    // a sync during the outage is not held up: the object was listed before
    store.register_pod(&p).await.unwrap();
    // a change made while it was away arrives when it is back
    api.set_down(false);
    api.apply("secrets", secret("db", "two"));
    until("the new value", || {
        ValueStore::secret(&store, "default", "db").is_some_and(|d| d["password"] == b"two")
    })
    .await;
}
