//! The API server disappears for five minutes under a running kubelet (fake runtime, pod status
//! through `ApiStatusSink`, the node Lease through `NodeLease`), on tokio's paused clock against
//! node-test-support's in-process fake API server with its outage switch (it refuses
//! connections while down). Pods keep running and keep being managed (a container that exits meanwhile is
//! restarted), status writes keep being retried, and once the server is back the pod status
//! and the Lease catch up.

use std::sync::Arc;
use std::time::Duration;

use node_core::Pod;
use node_kubelet::node::api::{ApiStatusSink, NodeApiConfig, NodeLease};
use node_kubelet::{CancellationToken, KubeletConfig};
use node_test_support::{FakeApiServer, until};
use serde_json::json;
use tokio::time::Instant;

mod support;
use support::Fakes;

const POD: &str = "metadata: {name: web, namespace: shop, uid: uid-web}\nspec:\n  containers: [{name: c, image: \"img:1\"}]\n";

#[tokio::test(start_paused = true)]
async fn pods_keep_running_through_an_api_outage_and_status_catches_up() {
    let api = FakeApiServer::new();
    let client = api.client();
    api.apply(
        "pods",
        json!({"metadata": {"name": "web", "namespace": "shop"}}),
    );
    let f = Fakes::new("api", &["img:1"]);
    f.source.apply(serde_saphyr::from_str::<Pod>(POD).unwrap());
    // pod status through the API server, kubelet's default sync period
    let kubelet = f
        .kubelet("n1")
        .status(Arc::new(ApiStatusSink::new(client.clone())))
        .config(KubeletConfig {
            pod_log_root: f.dirs.path().join("logs"),
            ..Default::default()
        })
        .build()
        .unwrap();
    let rt = f.rt.clone();
    let token = CancellationToken::new();
    let t = token.clone();
    let kubelet_task = tokio::spawn(async move { kubelet.run(t).await.unwrap() });
    let lease = NodeLease::new(client.clone(), "n1", NodeApiConfig::default());
    let lease_token = token.clone();
    let lease_task = tokio::spawn(lease.run(async move { lease_token.cancelled().await }));

    let web = |api: &FakeApiServer| api.get("pods", "shop", "web").unwrap();
    let phase = |api: &FakeApiServer| web(api)["status"]["phase"].as_str().map(String::from);
    let restarts =
        |api: &FakeApiServer| web(api)["status"]["containerStatuses"][0]["restartCount"].as_i64();
    until(
        "the pod Running in the API",
        Duration::from_secs(30),
        || (phase(&api).as_deref() == Some("Running")).then_some(()),
    )
    .await;
    assert_eq!(restarts(&api), Some(0));
    until("the lease", Duration::from_secs(30), || {
        api.get("leases", "kube-node-lease", "n1")
    })
    .await;

    // the API server goes away for five minutes
    let outage = Instant::now();
    api.set_down(true);
    let calls_before = rt.calls().len();
    let container = rt.containers()[0].id.clone();
    tokio::time::sleep(Duration::from_secs(60)).await;
    // the container exits meanwhile: the kubelet restarts it without the API server
    rt.exit_container(&container, 1, "Error");
    tokio::time::sleep(Duration::from_secs(240)).await;

    let running: Vec<_> = rt
        .containers()
        .into_iter()
        .filter(|c| c.state == node_core::cri::ContainerState::ContainerRunning)
        .collect();
    assert_eq!(
        running.len(),
        1,
        "one running container during the outage: {running:?}"
    );
    assert_ne!(
        running[0].id, container,
        "the exited container was not restarted"
    );
    let stops: Vec<String> = rt.calls()[calls_before..]
        .iter()
        .filter(|c| c.starts_with("stop_pod_sandbox") || c.starts_with("remove_pod_sandbox"))
        .cloned()
        .collect();
    assert!(
        stops.is_empty(),
        "the pod was torn down during the outage: {stops:?}"
    );
    let (failed_status, failed_lease) = {
        let log = api.requests();
        let failed = |p: &str| {
            log.iter()
                .filter(|r| !r.answered && r.at >= outage && r.path.contains(p))
                .count()
        };
        (failed("/pods/web/status"), failed("/leases/"))
    };
    eprintln!(
        "during the 5 min outage: {failed_status} pod status writes and {failed_lease} lease renewals refused"
    );
    assert!(
        failed_status >= 10,
        "pod status writes were not retried during the outage ({failed_status})"
    );
    assert!(
        failed_lease >= 10,
        "lease renewals not retried ({failed_lease})"
    );
    assert_eq!(restarts(&api), Some(0), "the API saw a write while stopped");

    // back: status and lease catch up within a few seconds
    api.set_down(false);
    let back = Instant::now();
    until("the restart in the API", Duration::from_secs(15), || {
        (restarts(&api) == Some(1) && phase(&api).as_deref() == Some("Running")).then_some(())
    })
    .await;
    let caught_up = back.elapsed();
    until(
        "the lease renewed after the outage",
        Duration::from_secs(15),
        || {
            api.requests()
                .iter()
                .any(|r| {
                    r.answered && r.at >= back && r.method == "PUT" && r.path.contains("/leases/")
                })
                .then_some(())
        },
    )
    .await;
    eprintln!("status caught up {caught_up:?} after the API server came back");

    token.cancel();
    kubelet_task.await.unwrap();
    lease_task.await.unwrap();
}
