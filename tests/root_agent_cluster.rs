//! The `node-agent` binary in cluster mode, as root, inside a network namespace of its own with
//! node-test-support's fake API server listening in that namespace: the agent
//! registers its Node and Lease, runs only the pod bound to it (native runtime, bridge CNI),
//! patches its status; reads the configMap the pod's environment references by its name
//! alone; with the EndpointSlice the test writes (as the endpointslice controller
//! would) the ClusterIP answers; the pod deleted on the API server stops; SIGINT leaves nothing
//! behind; the log is JSON (`--log-format json`). What a real API server adds (admission, graceful deletion, the controllers) is not
//! exercised.

use std::time::Duration;

use node_test_support::{FakeApiServer, require_command, require_path, require_root};
use serde_json::json;

#[path = "support/agent.rs"]
mod agent;
#[path = "support/examples.rs"]
mod examples;

use agent::{
    Agent, DEMO_IMAGE, build_agent, http_get, node_netns, pids_with_token, stop_cleanly, wait_for,
    write_demo_image,
};

const NODE: &str = "nkt-cluster-node";

/// A pod whose token (in its environment, from the configMap `token-<name>`) marks its
/// processes.
fn pod(name: &str, node: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
        "spec": {"nodeName": node, "terminationGracePeriodSeconds": 2, "containers": [{
            "name": "web", "image": DEMO_IMAGE, "imagePullPolicy": "Never",
            "env": [{"name": "NK_DEMO_TOKEN", "valueFrom": {"configMapKeyRef": {
                "name": format!("token-{name}"), "key": "token"}}}],
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
        }]},
    })
}

#[test]
fn node_agent_joins_a_cluster_runs_its_pod_and_serves_the_service() {
    let test = "node_agent_joins_a_cluster_runs_its_pod_and_serves_the_service";
    if !(require_root(test) && require_command(test, "nft") && require_path(test, "/bin/busybox")) {
        return;
    }
    let agent_bin = build_agent();
    let pid = std::process::id();
    let (token, other_token) = (format!("cluster-{pid}"), format!("cluster-other-{pid}"));
    let tmp = tempfile::Builder::new()
        .prefix("nkt-agent-cluster-")
        .tempdir()
        .unwrap();
    let (root, image) = (tmp.path().join("root"), tmp.path().join("image"));
    write_demo_image(&image);

    let ns = node_netns("agentc");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = ns
        .run_in(|| std::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap()
        .expect("a listener in the namespace");
    let api = {
        let _enter = rt.enter();
        FakeApiServer::serve(listener)
    };
    for (name, t) in [("web-0", &token), ("not-mine", &other_token)] {
        api.apply(
            "configmaps",
            json!({"metadata": {"name": format!("token-{name}"), "namespace": "default"},
                "data": {"token": t}}),
        );
    }
    api.apply("pods", pod("web-0", NODE));
    api.apply("pods", pod("not-mine", "another-node"));
    api.apply(
        "services",
        json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.80", "clusterIPs": ["10.96.0.80"], "type": "ClusterIP",
                "selector": {"app": "web"},
                "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}}),
    );
    let kubeconfig = tmp.path().join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig()).unwrap();

    let log_path = tmp.path().join("agent.log");
    let cgroups = agent::CgroupRoot::new("cluster");
    let mut cmd = agent::netns_command(&ns, &agent_bin);
    cmd // --cluster: the default kube config, found through $KUBECONFIG (--kubeconfig PATH is
        // tested in agent_cluster.rs and examples_run.rs)
        .arg("--cluster")
        .env("KUBECONFIG", &kubeconfig)
        .args(["--node-name", NODE])
        .args(["--log-format", "json"])
        .arg("--drain-on-exit")
        .args(["--cgroup-root", cgroups.name()])
        .arg("--root")
        .arg(&root)
        .arg("--pod-log-root")
        .arg(root.join("pod-logs"))
        // API pods are rejected under DiskPressure (kubelet's admission): the disk thresholds
        // would let the fill of this machine's disk (the suite's own build output) decide the
        // test, so only the memory threshold is kept
        .args(["--eviction-hard", "memory.available<100Mi"])
        .args([
            "--import-image",
            &format!("{}={DEMO_IMAGE}", image.display()),
        ]);
    let mut agent = Agent::start(cmd, &log_path);
    let log_text = || std::fs::read_to_string(&log_path).unwrap_or_default();

    // the Node and its Lease
    let node = wait_for(
        "the Node registered",
        Duration::from_secs(30),
        &log_text,
        || api.get("nodes", "", NODE),
    );
    assert_eq!(node["metadata"]["labels"]["kubernetes.io/os"], "linux");
    let lease = wait_for(
        "the Lease created",
        Duration::from_secs(30),
        &log_text,
        || api.get("leases", "kube-node-lease", NODE),
    );
    assert_eq!(lease["spec"]["holderIdentity"], NODE);

    // web-0 runs and is Ready, as patched on the API server; the other node's pod does not run
    let ip = wait_for(
        "web-0 Ready on the API server",
        Duration::from_secs(45),
        &log_text,
        || {
            let p = api.get("pods", "default", "web-0")?;
            let ready = p["status"]["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            ready.then(|| p["status"]["podIP"].as_str().map(String::from))?
        },
    );
    assert!(
        !pids_with_token(&token).is_empty(),
        "web-0's processes not visible"
    );
    assert!(
        pids_with_token(&other_token).is_empty(),
        "a pod of another node runs here"
    );
    assert!(api.get("pods", "default", "not-mine").unwrap()["status"].is_null());
    // the token came from web-0's configMap, read by its name alone: no cluster-wide list or
    // watch of configMaps or secrets, nothing of the other node's pod
    for r in api.requests() {
        let u = &r.uri;
        assert!(
            !(r.path == "/api/v1/configmaps" || r.path == "/api/v1/secrets"),
            "a cluster-wide read: {u}"
        );
        if r.path.ends_with("/configmaps") {
            assert!(
                u.contains("fieldSelector=metadata.name%3Dtoken-web-0"),
                "not a read of web-0's configMap by its name: {u}"
            );
        }
    }

    // the endpointslice controller's part, then the ClusterIP answers from web-0
    api.apply(
        "endpointslices",
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-x1", "namespace": "default",
                "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [ip], "conditions": {"ready": true}, "nodeName": NODE}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}),
    );
    wait_for(
        "web-0 answers through 10.96.0.80",
        Duration::from_secs(15),
        &log_text,
        || {
            let answer = ns.run_in(|| http_get("10.96.0.80:80", "/")).ok()?.ok()?;
            (answer.trim() == "hello from web-0").then_some(())
        },
    );

    // deleted on the API server: the pod stops
    assert!(api.delete("pods", "default", "web-0"));
    wait_for(
        "web-0 stopped after its deletion",
        Duration::from_secs(30),
        &log_text,
        || pids_with_token(&token).is_empty().then_some(()),
    );

    stop_cleanly(&mut agent, &ns, &root, &token, &log_text);
    let pod_cgroups = cgroups.pod_cgroups();
    assert!(pod_cgroups.is_empty(), "pod cgroups left: {pod_cgroups:?}");
    // --log-format json: every line is a JSON object; the registration is among them
    let lines: Vec<serde_json::Value> = log_text()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "node registered" && l["level"] == "INFO"),
        "no JSON record of the registration"
    );
    let renewals = api
        .requests()
        .iter()
        .filter(|r| r.uri.contains("/leases"))
        .count();
    assert!(renewals >= 1, "no lease requests");
    drop(api);
    drop(rt);
}
