//! The node agent's cluster mode against a fake API server (no root): the same wiring as
//! `examples/node-agent.rs` (`examples/node-agent-parts/cluster.rs`), with the fake runtime and
//! the fake router in place of the native runtime and nftables.
//!
//! Shown: only the pods bound to this node run, listed and watched once (for the pod source and
//! the mirror pods), and a static pod beside them, with its mirror pod; their status is patched on the API server; the
//! Node is registered and its Lease created and owned by it; the proxy programs the Services and
//! EndpointSlices of the API server; the configMaps and secrets the pod references are read
//! through watches selected by their names (no cluster-wide list or watch) and stop being
//! watched with the pod; a pod deleted on the API server is stopped and removed, a deleted
//! EndpointSlice leaves its Service without endpoints.

use std::sync::Arc;
use std::time::Duration;

use node_core::ServiceRouter;
use node_core::proxy::NodeInfo;
use node_kubelet::node::api::NodeApiConfig;
use node_kubelet::node::objects::ApiObjectStore;
use node_kubelet::node::status::NodeReportConfig;
use node_kubelet::node::{NodeConfig, NodeManager};
use node_kubelet::{CancellationToken, Kubelet, KubeletConfig};
use node_proxy::Proxy;
use node_test_support::{FakeApiServer, FakeRouter, FakeRuntime};
use serde_json::json;

#[path = "../examples/node-agent-parts/cluster.rs"]
mod cluster;

const IMAGE: &str = "registry.test/web:1";
const WAIT: Duration = Duration::from_secs(20);

fn pod(name: &str, node: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
        "spec": {"nodeName": node, "containers": [{"name": "web", "image": IMAGE,
            "env": [{"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "web-config", "key": "greeting"}}},
                {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "web-db", "key": "password"}}}],
            "volumeMounts": [{"name": "config", "mountPath": "/etc/web"}],
            "ports": [{"name": "http", "containerPort": 8080}]}],
            "volumes": [{"name": "config", "configMap": {"name": "web-config"}}]},
    })
}

/// The agent's node manager for `node` in cluster mode (registration, Lease, node status, mirror
/// pods, the configMaps and secrets of `objects`), with its directories under `dir` and no pod
/// cgroups; it runs on the kubelet's runtime.
fn node_manager(
    c: &cluster::Cluster,
    node: &str,
    dir: &std::path::Path,
    objects: Arc<ApiObjectStore>,
) -> NodeManager {
    let mut config = NodeConfig::new(node);
    config.cgroups = None;
    config.volumes.root_dir = dir.join("kubelet");
    config.allocatable.root_dir = dir.to_path_buf();
    NodeManager::new(config, objects)
        .unwrap()
        .report(NodeReportConfig {
            api: NodeApiConfig {
                renew_interval: Duration::from_millis(300),
                ..Default::default()
            },
            ..Default::default()
        })
        .api(c.client())
        .mirror_pods(c.mirror_pods())
}

fn sandbox_names(rt: &FakeRuntime) -> Vec<String> {
    rt.sandboxes()
        .into_iter()
        .filter(|s| s.state == node_core::cri::PodSandboxState::SandboxReady)
        .filter_map(|s| s.config.metadata.map(|m| m.name))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mode_runs_bound_pods_reports_status_and_programs_services() {
    let api = FakeApiServer::new();
    api.apply(
        "configmaps",
        json!({"metadata": {"name": "web-config", "namespace": "default"},
            "data": {"greeting": "hello"}}),
    );
    api.apply(
        "configmaps",
        json!({"metadata": {"name": "unrelated", "namespace": "default"}, "data": {"a": "b"}}),
    );
    api.apply(
        "secrets",
        json!({"metadata": {"name": "web-db", "namespace": "default"},
            "data": {"password": "c2VjcmV0"}}),
    );
    api.apply("pods", pod("web", "node-1"));
    api.apply("pods", pod("elsewhere", "node-2"));
    api.apply(
        "services",
        json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"], "type": "ClusterIP",
                "selector": {"app": "web"},
                "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}}),
    );
    api.apply(
        "endpointslices",
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-abc", "namespace": "default",
                "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.88.0.5"], "conditions": {"ready": true},
                "nodeName": "node-1"}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}),
    );

    // the agent's cluster wiring, with fakes for the runtime and the router
    let c = cluster::Cluster::new(api.client(), "node-1");
    let rt = Arc::new(FakeRuntime::new());
    rt.add_image(IMAGE);
    let dir = tempfile::tempdir().unwrap();
    let objects = Arc::new(ApiObjectStore::new(c.client()));
    let node = node_manager(&c, "node-1", dir.path(), objects.clone());
    // a static pod beside the API server's, as `--manifests DIR` adds it
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    std::fs::write(
        manifests.join("static.yaml"),
        format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: static}}\nspec:\n  containers: [{{name: s, image: \"{IMAGE}\"}}]\n"),
    )
    .unwrap();
    let file = node_kubelet::FileSource::with_config(
        manifests,
        node_kubelet::FileSourceConfig {
            node_name: "node-1".into(),
            ..Default::default()
        },
    );
    let kubelet = Kubelet::builder("node-1")
        .source(c.pod_source())
        .source(Arc::new(file))
        .runtime(rt.clone(), rt.clone())
        .status(c.status_sink())
        .value_store(objects.clone())
        .node(Arc::new(node))
        .config(KubeletConfig {
            pod_log_root: dir.path().join("logs"),
            sync_period: Duration::from_secs(1),
            ..Default::default()
        })
        .build()
        .unwrap();
    let router = Arc::new(FakeRouter::new());
    let router_dyn: Arc<dyn ServiceRouter> = router.clone();
    let mut proxy = Proxy::builder()
        .router(router_dyn)
        .node(NodeInfo {
            name: "node-1".into(),
            ..Default::default()
        })
        .build()
        .unwrap();
    let services = c.service_source();
    let token = CancellationToken::new();
    let k = tokio::spawn(kubelet.run(token.clone()));
    let p_token = token.clone();
    let p = tokio::spawn(async move { proxy.run(&services, p_token).await });

    // the Node, its Lease (owned by the Node) and renewals
    api.wait_for("the Node registered", WAIT, |a| {
        a.get("nodes", "", "node-1").is_some()
    })
    .await
    .unwrap();
    let node = api.get("nodes", "", "node-1").unwrap();
    assert_eq!(
        node["status"]["nodeInfo"]["containerRuntimeVersion"],
        "fake://0.1.0"
    );
    api.wait_for("the Lease renewed twice", WAIT, |a| {
        a.requests()
            .iter()
            .filter(|r| r.method == "PUT" && r.uri.contains("/leases/node-1"))
            .count()
            >= 2
    })
    .await
    .unwrap();
    let lease = api.get("leases", "kube-node-lease", "node-1").unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "node-1");
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 40);
    assert_eq!(
        lease["metadata"]["ownerReferences"][0]["uid"],
        node["metadata"]["uid"]
    );

    // only the pod bound to node-1 runs, and its status reaches the API server
    api.wait_for("web Running on the API server", WAIT, |a| {
        a.get("pods", "default", "web")
            .is_some_and(|p| p["status"]["phase"] == "Running")
    })
    .await
    .unwrap();
    // the static pod runs and has its mirror pod (which does not run)
    api.wait_for("the static pod's mirror pod", WAIT, |a| {
        a.get("pods", "default", "static-node-1").is_some()
    })
    .await
    .unwrap();
    // the mirror pod is made while the static pod is prepared, before its sandbox: wait for it
    let deadline = tokio::time::Instant::now() + WAIT;
    let names = loop {
        let mut names = sandbox_names(&rt);
        names.sort();
        if names == ["static-node-1", "web"] || tokio::time::Instant::now() >= deadline {
            break names;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(names, ["static-node-1", "web"]);
    let web = api.get("pods", "default", "web").unwrap();
    assert!(web["status"]["podIP"].is_string(), "{web}");
    assert!(
        api.get("pods", "default", "elsewhere").unwrap()["status"].is_null(),
        "a pod of another node got a status"
    );
    assert!(
        api.requests()
            .iter()
            .any(|r| r.method == "GET" && r.uri.contains("fieldSelector=spec.nodeName%3Dnode-1")),
        "pods not listed by spec.nodeName"
    );
    // one list and one watch of the node's pods, read by the pod source and the mirror pods
    let node_pods: Vec<String> = api
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path == "/api/v1/pods")
        .map(|r| r.uri.clone())
        .collect();
    assert!(
        node_pods
            .iter()
            .all(|u| u.contains("fieldSelector=spec.nodeName%3Dnode-1")),
        "{node_pods:?}"
    );
    let watches = node_pods
        .iter()
        .filter(|u| u.contains("watch=true"))
        .count();
    assert_eq!(
        (node_pods.len() - watches, watches),
        (1, 1),
        "{node_pods:?}"
    );

    // the configMap and the secret reached the container, read through watches of their
    // names only (as a node authorizer admits), never a cluster-wide list or watch
    let web_container = rt
        .containers()
        .into_iter()
        .find(|c| c.config.metadata.as_ref().is_some_and(|m| m.name == "web"))
        .unwrap();
    let envs: Vec<(String, String)> = web_container
        .config
        .envs
        .iter()
        .map(|e| (e.key.clone(), e.value.clone()))
        .collect();
    assert!(
        envs.contains(&("GREETING".into(), "hello".into())),
        "{envs:?}"
    );
    assert!(
        envs.contains(&("PASSWORD".into(), "secret".into())),
        "{envs:?}"
    );
    let config_file = dir
        .path()
        .join("kubelet/pods")
        .join(web["metadata"]["uid"].as_str().unwrap())
        .join("volumes/kubernetes.io~configmap/config/greeting");
    assert_eq!(std::fs::read_to_string(&config_file).unwrap(), "hello");
    let object_reads: Vec<String> = api
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/configmaps") || r.path.ends_with("/secrets"))
        .map(|r| r.uri.clone())
        .collect();
    assert!(!object_reads.is_empty());
    for uri in &object_reads {
        assert!(
            uri.starts_with("/api/v1/namespaces/default/configmaps?")
                && uri.contains("fieldSelector=metadata.name%3Dweb-config")
                || uri.starts_with("/api/v1/namespaces/default/secrets?")
                    && uri.contains("fieldSelector=metadata.name%3Dweb-db"),
            "not a read of a referenced object by its name: {uri}"
        );
    }
    // an update of the configMap reaches the mounted file (a later sync, the ..data swap)
    api.apply(
        "configmaps",
        json!({"metadata": {"name": "web-config", "namespace": "default"},
            "data": {"greeting": "bonjour"}}),
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    while std::fs::read_to_string(&config_file).unwrap_or_default() != "bonjour" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the configMap update did not reach {}",
            config_file.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // the proxy programs the Service with the EndpointSlice's endpoint
    let endpoints = |r: &FakeRouter| -> Option<Vec<String>> {
        let st = r.last()?;
        let (_, sp) = st.services.iter().find(|(n, _)| n.name == "web")?;
        Some(
            sp.endpoints
                .iter()
                .map(|e| format!("{}:{}", e.ip, e.port))
                .collect(),
        )
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while endpoints(&router) != Some(vec!["10.88.0.5:8080".to_string()]) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "service web not programmed: {:?}",
            router.last()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let st = router.last().unwrap();
    let (_, sp) = st.services.iter().find(|(n, _)| n.name == "web").unwrap();
    assert_eq!(
        sp.cluster_ips,
        ["10.96.0.10".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(sp.port, 80);

    // deletions on the API server: the pod is stopped and removed, the endpoints go
    assert!(api.delete("pods", "default", "web"));
    assert!(api.delete("endpointslices", "default", "web-abc"));
    let deadline = tokio::time::Instant::now() + WAIT;
    while sandbox_names(&rt) != ["static-node-1"] || endpoints(&router) != Some(vec![]) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "after deletion: sandboxes {:?}, endpoints {:?}",
            sandbox_names(&rt),
            endpoints(&router)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // with the pod gone, nothing is watched
    let deadline = tokio::time::Instant::now() + WAIT;
    while !objects.watched().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still watched: {:?}",
            objects.watched()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    token.cancel();
    tokio::time::timeout(WAIT, k)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    tokio::time::timeout(WAIT, p)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_missing_kubeconfig_is_named_in_the_error() {
    let err = cluster::Cluster::connect(Some(std::path::Path::new("/nonexistent/kc")), "n")
        .await
        .err()
        .expect("an error");
    assert!(format!("{err:#}").contains("/nonexistent/kc"), "{err:#}");
}

#[tokio::test]
async fn a_kubeconfig_file_reaches_the_server_it_names() {
    let api = FakeApiServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    std::fs::write(&kc, api.kubeconfig()).unwrap();
    let c = cluster::Cluster::connect(Some(&kc), "node-kc")
        .await
        .unwrap();
    let token = CancellationToken::new();
    let rt = Arc::new(FakeRuntime::new());
    let kubelet = Kubelet::builder("node-kc")
        .source(c.pod_source())
        .runtime(rt.clone(), rt.clone())
        .status(c.status_sink())
        .node(Arc::new(node_manager(
            &c,
            "node-kc",
            dir.path(),
            Arc::new(ApiObjectStore::new(c.client())),
        )))
        .config(KubeletConfig {
            pod_log_root: dir.path().join("logs"),
            ..Default::default()
        })
        .build()
        .unwrap();
    let t = tokio::spawn(kubelet.run(token.clone()));
    api.wait_for("the Node registered through the kubeconfig", WAIT, |a| {
        a.get("nodes", "", "node-kc").is_some()
    })
    .await
    .unwrap();
    token.cancel();
    tokio::time::timeout(WAIT, t)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
