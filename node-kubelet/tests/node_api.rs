//! Node registration, the heartbeat Lease and node status against node-test-support's
//! in-process fake API server (no network), with tokio's paused clock.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use node_kubelet::node::allocatable::{AllocatableConfig, NodeResources};
use node_kubelet::node::api::{
    ApiStatusSink, NodeApiConfig, NodeLease, register_node, register_node_with_backoff,
};
use node_kubelet::node::status::{
    NodeHealth, NodeStatusBuilder, NodeStatusConfig, NodeStatusReporter, SystemFacts,
};
use node_test_support::FakeApiServer;
use tokio::time::Instant;

fn builder() -> NodeStatusBuilder {
    NodeStatusBuilder::with_facts(
        NodeStatusConfig {
            node_name: "n1".into(),
            hostname: Some("n1.local".into()),
            internal_ips: vec!["10.0.0.5".parse().unwrap()],
            container_runtime_version: "containerd://1.6.20".into(),
            allocatable: AllocatableConfig::default(),
            ..Default::default()
        },
        SystemFacts {
            kernel_version: "6.18.0".into(),
            os_image: "Debian GNU/Linux 13 (trixie)".into(),
            architecture: "amd64".into(),
            hostname: "n1.local".into(),
            ..Default::default()
        },
    )
}

fn capacity() -> NodeResources {
    NodeResources {
        cpu_milli: 2000,
        memory_bytes: 8 << 30,
        ephemeral_storage_bytes: 100 << 30,
        pods: 110,
    }
}

fn node_object() -> Node {
    builder().build_with_capacity(
        &NodeHealth::default(),
        k8s_openapi::jiff::Timestamp::now(),
        capacity(),
    )
}

const LEASE_PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/n1";
const LEASES_PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases";

#[tokio::test(start_paused = true)]
async fn registers_the_node_and_adopts_an_existing_one() {
    let api = FakeApiServer::new();
    let client = api.client();
    let created = register_node(&client, &node_object()).await.unwrap();
    let stored = api.get("nodes", "", "n1").unwrap();
    let uid = stored["metadata"]["uid"].as_str().unwrap().to_string();
    assert_eq!(created.metadata.uid.as_deref(), Some(uid.as_str()));
    assert_eq!(stored["status"]["nodeInfo"]["kernelVersion"], "6.18.0");
    assert_eq!(stored["status"]["capacity"]["cpu"], "2");
    assert_eq!(
        stored["metadata"]["labels"]["kubernetes.io/hostname"],
        "n1.local"
    );
    // a restarted kubelet registers again: 409, then it takes the existing object
    let again = register_node(&client, &node_object()).await.unwrap();
    assert_eq!(again.metadata.uid.as_deref(), Some(uid.as_str()));
    assert_eq!(api.count("POST", "/api/v1/nodes"), 2);
    assert_eq!(api.count("GET", "/api/v1/nodes/n1"), 1);
}

#[tokio::test(start_paused = true)]
async fn lease_is_created_then_renewed_every_ten_seconds() {
    let api = FakeApiServer::new();
    let client = api.client();
    register_node(&client, &node_object()).await.unwrap();
    let start = Instant::now();
    let lease = NodeLease::new(client.clone(), "n1", NodeApiConfig::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(lease.run(async {
        let _ = stopped.await;
    }));
    tokio::time::sleep(Duration::from_secs(35)).await;
    stop.send(()).unwrap();
    task.await.unwrap();

    assert_eq!(api.count("POST", LEASES_PATH), 1, "created once");
    let renew_times: Vec<Duration> = api
        .requests_to("PUT", LEASE_PATH)
        .iter()
        .map(|r| r.at.duration_since(start))
        .collect();
    assert_eq!(
        renew_times.iter().map(|d| d.as_secs()).collect::<Vec<_>>(),
        [10, 20, 30],
        "renewed every 10 s"
    );
    let stored: Lease = api.get_as("leases", "kube-node-lease", "n1").unwrap();
    let spec = stored.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("n1"));
    assert_eq!(spec.lease_duration_seconds, Some(40));
    assert!(spec.renew_time.is_some());
    let owner = &stored.metadata.owner_references.unwrap()[0];
    let node: Node = api.get_as("nodes", "", "n1").unwrap();
    assert_eq!(
        (owner.kind.as_str(), Some(owner.uid.as_str())),
        ("Node", node.metadata.uid.as_deref())
    );
}

#[tokio::test(start_paused = true)]
async fn node_status_is_patched_only_on_change_or_every_five_minutes() {
    let api = FakeApiServer::new();
    let reporter = NodeStatusReporter::new(Arc::new(ApiStatusSink::new(api.client())), builder())
        .with_capacity_fn(|| Ok(capacity()));
    let (health_tx, health_rx) = tokio::sync::watch::channel(NodeHealth::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(reporter.run(health_rx, async {
        let _ = stopped.await;
    }));
    let patches = || api.count("PATCH", "/api/v1/nodes/n1/status");

    // first check: the node is unknown (404), so it is registered, then patched
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(api.count("POST", "/api/v1/nodes"), 1);
    assert_eq!(patches(), 2, "404 patch, then the patch after registration");

    // unchanged for two minutes: 12 checks, no patch
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(patches(), 2);

    // memory pressure: patched at once, with the condition
    health_tx.send_modify(|h| h.memory_pressure = true);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(patches(), 3);
    let conds = api.get("nodes", "", "n1").unwrap()["status"]["conditions"].clone();
    let mp = conds
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "MemoryPressure")
        .unwrap()
        .clone();
    assert_eq!(mp["status"], "True");
    assert_eq!(mp["reason"], "KubeletHasInsufficientMemory");

    // unchanged again: the next patch comes 5 minutes after the last one
    tokio::time::sleep(Duration::from_secs(290)).await;
    assert_eq!(patches(), 3);
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(patches(), 4, "the periodic report after 5 min");

    stop.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn backs_off_while_the_api_server_is_unreachable_and_recovers() {
    let api = FakeApiServer::new();
    let client = api.client();
    register_node(&client, &node_object()).await.unwrap();
    api.set_down(true);
    let start = Instant::now();
    let lease = NodeLease::new(client.clone(), "n1", NodeApiConfig::default());
    let reporter = NodeStatusReporter::new(Arc::new(ApiStatusSink::new(client.clone())), builder())
        .with_capacity_fn(|| Ok(capacity()));
    let (_health_tx, health_rx) = tokio::sync::watch::channel(NodeHealth::default());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let lease_task = tokio::spawn(lease.run(wait(stopped.clone())));
    let status_task = tokio::spawn(reporter.run(health_rx, wait(stopped.clone())));

    tokio::time::sleep(Duration::from_secs(30)).await;
    let attempts: Vec<Duration> = api
        .requests()
        .iter()
        .filter(|r| r.path == LEASE_PATH)
        .map(|r| r.at.duration_since(start))
        .collect();
    // 200 ms doubling to 7 s: t = 0, .2, .6, 1.4, 3, 6.2, 12.6, 19.6, 26.6
    assert_eq!(attempts.len(), 9, "{attempts:?}");
    let gaps: Vec<u128> = attempts
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis())
        .collect();
    assert_eq!(gaps, [200, 400, 800, 1600, 3200, 6400, 7000, 7000]);
    // the status loop kept going (one attempt per 10 s check), it did not stop on errors
    let status_attempts = api.count("PATCH", "/api/v1/nodes/n1/status");
    assert_eq!(status_attempts, 3, "checks at 0, 10, 20 s");

    // the API server comes back: within the next back-off the lease exists and status is patched
    api.set_down(false);
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(
        api.get("leases", "kube-node-lease", "n1").is_some(),
        "lease created after recovery"
    );
    let conditions = api.get("nodes", "", "n1").unwrap()["status"]["conditions"].clone();
    assert_eq!(conditions.as_array().unwrap().len(), 5);

    stop.send(true).unwrap();
    lease_task.await.unwrap();
    status_task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn registration_retries_with_backoff() {
    let api = Arc::new(FakeApiServer::new());
    api.set_down(true);
    let a = api.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        a.set_down(false);
    });
    let node = register_node_with_backoff(
        &api.client(),
        &node_object(),
        &NodeApiConfig::default(),
        std::future::pending(),
    )
    .await
    .expect("registered");
    let stored = api.get("nodes", "", "n1").unwrap();
    assert_eq!(
        node.metadata.uid.as_deref(),
        stored["metadata"]["uid"].as_str()
    );
    // attempts at 0, .2, .6, 1.4, 3.0, 6.2 (the last one succeeds)
    assert_eq!(api.count("POST", "/api/v1/nodes"), 6);
    assert_eq!(
        api.requests().iter().filter(|r| r.answered).count(),
        1,
        "only the last attempt reached the server"
    );
}
