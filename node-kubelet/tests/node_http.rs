//! The node's HTTP router through tower's `oneshot`: /healthz, /pods, /metrics.

use std::sync::{Arc, Mutex};

use http::StatusCode;
use k8s_openapi::api::core::v1::Pod;
use node_core::PodRef;
use node_kubelet::node::http::{
    ContainerStateLabels, HealthCheck, HttpState, NodeMetrics, OperationLabels, PodsProvider,
    router,
};

mod support;
use support::router_get as get;

#[derive(Default)]
struct Pods(Mutex<Vec<Pod>>);

impl PodsProvider for Pods {
    fn pods(&self) -> Vec<Pod> {
        self.0.lock().unwrap().clone()
    }
}

struct Health(Mutex<Result<(), String>>);

impl HealthCheck for Health {
    fn check(&self) -> Result<(), String> {
        self.0.lock().unwrap().clone()
    }
}

#[tokio::test]
async fn healthz_pods_and_metrics() {
    let pods = Arc::new(Pods::default());
    let metrics = NodeMetrics::default();
    let health = Arc::new(Health(Mutex::new(Ok(()))));
    let app = router(HttpState::new(pods.clone(), &metrics).health(health.clone()));

    assert_eq!(get(&app, "/healthz").await.0, StatusCode::OK);
    *health.0.lock().unwrap() = Err("container runtime is down".into());
    let (code, _, body) = get(&app, "/healthz").await;
    assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body, "unhealthy: container runtime is down");

    let (_, ctype, body) = get(&app, "/pods").await;
    assert_eq!(ctype, "application/json");
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list["kind"], "PodList");
    assert_eq!(list["items"].as_array().unwrap().len(), 0);
    let p: Pod = serde_saphyr::from_str(
        "metadata: {name: web, namespace: shop, uid: u1}\nspec: {containers: [{name: c, image: i}]}\nstatus: {phase: Running, podIP: 10.1.0.4}\n",
    )
    .unwrap();
    pods.0.lock().unwrap().push(p);
    let (_, _, body) = get(&app, "/pods").await;
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list["items"][0]["metadata"]["name"], "web");
    assert_eq!(list["items"][0]["status"]["phase"], "Running");
    assert_eq!(list["items"][0]["status"]["podIP"], "10.1.0.4");

    // updates through the shared handles appear in /metrics
    metrics.running_pods.set(3);
    metrics
        .running_containers
        .get_or_create(&ContainerStateLabels {
            container_state: "running".into(),
        })
        .set(5);
    metrics.pod_start_duration.observe(1.5);
    metrics
        .pod_worker_duration
        .get_or_create(&OperationLabels {
            operation: "sync".into(),
        })
        .observe(0.02);
    metrics.evicted("memory.available");
    metrics.evicted("memory.available");
    metrics.probe(
        "Readiness",
        "successful",
        &PodRef::new("shop", "web", "u1"),
        "c",
    );
    let (code, ctype, body) = get(&app, "/metrics").await;
    assert_eq!(code, StatusCode::OK);
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    for line in [
        "kubelet_running_pods 3",
        "kubelet_running_containers{container_state=\"running\"} 5",
        "kubelet_pod_start_duration_seconds_count 1",
        "kubelet_pod_start_duration_seconds_sum 1.5",
        "kubelet_pod_worker_duration_seconds_count{operation=\"sync\"} 1",
        "kubelet_evictions_total{eviction_signal=\"memory.available\"} 2",
        "prober_probe_total{probe_type=\"Readiness\",result=\"successful\",container=\"c\",pod=\"web\",namespace=\"shop\"} 1",
        "# EOF",
    ] {
        assert!(
            body.lines().any(|l| l == line),
            "missing {line:?} in\n{body}"
        );
    }

    assert_eq!(get(&app, "/nope").await.0, StatusCode::NOT_FOUND);
}
