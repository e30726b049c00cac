//! `/metrics/resource` and `/stats/summary` over the fake runtime's container stats
//! (`FakeRuntime::set_container_stats`) and a fixed node usage, through the read-only router.

use std::collections::HashMap;
use std::sync::Arc;

use http::StatusCode;
use k8s_openapi::jiff::Timestamp;
use node_core::{RuntimeBackend, RuntimeError, cri};
use node_kubelet::labels;
use node_kubelet::node::http::{HttpState, NodeMetrics, PodsProvider, router};
use node_kubelet::node::resource_metrics;
use node_kubelet::node::stats::{NodeStatsSource, NodeUsage, StatsError, StatsProvider};
use node_test_support::FakeRuntime;
use node_test_support::fakes::FakeUsage;

mod support;
use support::router_get as get;

struct NoPods;

impl PodsProvider for NoPods {
    fn pods(&self) -> Vec<k8s_openapi::api::core::v1::Pod> {
        vec![]
    }
}

/// 1767225660 s = 2026-01-01T00:01:00Z
const NOW_MS: i64 = 1_767_225_660_000;
const MI: u64 = 1 << 20;

struct FixedNode;

impl NodeStatsSource for FixedNode {
    fn node_usage(&self) -> Result<NodeUsage, StatsError> {
        Ok(NodeUsage {
            cpu_usage_core_nano_seconds: Some(2_000_000_000),
            memory_total_bytes: Some(1024 * MI),
            memory_usage_bytes: Some(500 * MI),
            memory_working_set_bytes: Some(400 * MI),
            swap_usage_bytes: None,
            swap_available_bytes: None,
            boot_time: Timestamp::from_second(1_767_225_000).ok(),
            time: Timestamp::from_millisecond(NOW_MS).unwrap(),
        })
    }
}

async fn run_pod(rt: &FakeRuntime, name: &str, namespace: &str, uid: &str) -> String {
    let pod_labels: HashMap<String, String> = [
        (labels::POD_NAME, name),
        (labels::POD_NAMESPACE, namespace),
        (labels::POD_UID, uid),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    rt.run_pod_sandbox(cri::RunPodSandboxRequest {
        config: Some(cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                namespace: namespace.into(),
                uid: uid.into(),
                attempt: 0,
            }),
            labels: pod_labels,
            ..Default::default()
        }),
        runtime_handler: String::new(),
    })
    .await
    .unwrap()
}

async fn start(rt: &FakeRuntime, sandbox: &str, name: &str) -> String {
    let sb = rt
        .sandboxes()
        .into_iter()
        .find(|s| s.id == sandbox)
        .unwrap();
    let mut container_labels = sb.config.labels.clone();
    container_labels.insert(labels::CONTAINER_NAME.into(), name.into());
    let id = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: sandbox.into(),
            config: Some(cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: name.into(),
                    attempt: 0,
                }),
                image: Some(cri::ImageSpec {
                    image: "busybox".into(),
                    ..Default::default()
                }),
                labels: container_labels,
                ..Default::default()
            }),
            sandbox_config: Some(sb.config.clone()),
        })
        .await
        .unwrap();
    rt.start_container(&id).await.unwrap();
    id
}

fn usage(cpu_ms: u64, working_set: u64) -> FakeUsage {
    FakeUsage {
        usage_core_nano_seconds: cpu_ms * 1_000_000,
        working_set_bytes: working_set,
        timestamp: NOW_MS * 1_000_000,
    }
}

fn runtime() -> FakeRuntime {
    let rt = FakeRuntime::new();
    rt.add_image("busybox");
    rt
}

fn app(rt: &FakeRuntime) -> axum::Router {
    let provider = StatsProvider::new(Arc::new(rt.clone()), Arc::new(FixedNode), "node-a");
    router(HttpState::new(Arc::new(NoPods), &NodeMetrics::default()).stats(provider))
}

/// Two pods, three running containers and one exited: the exited one is not listed; pods are
/// the sum of their containers (the fake has no `ListPodSandboxStats`).
async fn two_pods(rt: &FakeRuntime) -> HashMap<&'static str, i64> {
    let web = run_pod(rt, "web", "shop", "uid-web").await;
    let db = run_pod(rt, "db", "data", "uid-db").await;
    let app_c = start(rt, &web, "app").await;
    let sidecar = start(rt, &web, "sidecar").await;
    let pg = start(rt, &db, "postgres").await;
    let old = start(rt, &web, "migrate").await;
    rt.set_container_stats(&app_c, usage(1500, 35 * MI));
    rt.set_container_stats(&sidecar, usage(250, 5 * MI));
    rt.set_container_stats(&pg, usage(12_000, 300 * MI));
    rt.set_container_stats(&old, usage(99_000, 99 * MI));
    rt.exit_container(&old, 0, "Completed");
    let created: HashMap<String, i64> = rt
        .containers()
        .into_iter()
        .map(|c| (c.id, c.created_at))
        .collect();
    [("app", &app_c), ("sidecar", &sidecar), ("postgres", &pg)]
        .into_iter()
        .map(|(n, id)| (n, created[id.as_str()]))
        .collect()
}

fn start_time(ns: i64) -> String {
    resource_metrics::go_float(ns as f64 / 1e9)
}

#[tokio::test]
async fn resource_metrics_of_two_pods_and_three_containers() {
    let rt = runtime();
    let created = two_pods(&rt).await;
    let (code, ctype, body) = get(&app(&rt), "/metrics/resource").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(ctype, "text/plain; version=0.0.4; charset=utf-8");
    let expected = format!(
        "# HELP container_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the container in core-seconds
# TYPE container_cpu_usage_seconds_total counter
container_cpu_usage_seconds_total{{container=\"app\",namespace=\"shop\",pod=\"web\"}} 1.5 {NOW_MS}
container_cpu_usage_seconds_total{{container=\"postgres\",namespace=\"data\",pod=\"db\"}} 12 {NOW_MS}
container_cpu_usage_seconds_total{{container=\"sidecar\",namespace=\"shop\",pod=\"web\"}} 0.25 {NOW_MS}
# HELP container_memory_working_set_bytes [STABLE] Current working set of the container in bytes
# TYPE container_memory_working_set_bytes gauge
container_memory_working_set_bytes{{container=\"app\",namespace=\"shop\",pod=\"web\"}} 3.670016e+07 {NOW_MS}
container_memory_working_set_bytes{{container=\"postgres\",namespace=\"data\",pod=\"db\"}} 3.145728e+08 {NOW_MS}
container_memory_working_set_bytes{{container=\"sidecar\",namespace=\"shop\",pod=\"web\"}} 5.24288e+06 {NOW_MS}
# HELP container_start_time_seconds [STABLE] Start time of the container since unix epoch in seconds
# TYPE container_start_time_seconds gauge
container_start_time_seconds{{container=\"app\",namespace=\"shop\",pod=\"web\"}} {}
container_start_time_seconds{{container=\"postgres\",namespace=\"data\",pod=\"db\"}} {}
container_start_time_seconds{{container=\"sidecar\",namespace=\"shop\",pod=\"web\"}} {}
# HELP node_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the node in core-seconds
# TYPE node_cpu_usage_seconds_total counter
node_cpu_usage_seconds_total 2 {NOW_MS}
# HELP node_memory_working_set_bytes [STABLE] Current working set of the node in bytes
# TYPE node_memory_working_set_bytes gauge
node_memory_working_set_bytes 4.194304e+08 {NOW_MS}
# HELP pod_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the pod in core-seconds
# TYPE pod_cpu_usage_seconds_total counter
pod_cpu_usage_seconds_total{{namespace=\"data\",pod=\"db\"}} 12 {NOW_MS}
pod_cpu_usage_seconds_total{{namespace=\"shop\",pod=\"web\"}} 1.75 {NOW_MS}
# HELP pod_memory_working_set_bytes [STABLE] Current working set of the pod in bytes
# TYPE pod_memory_working_set_bytes gauge
pod_memory_working_set_bytes{{namespace=\"data\",pod=\"db\"}} 3.145728e+08 {NOW_MS}
pod_memory_working_set_bytes{{namespace=\"shop\",pod=\"web\"}} 4.194304e+07 {NOW_MS}
# HELP resource_scrape_error [STABLE] 1 if there was an error while getting container metrics, 0 otherwise
# TYPE resource_scrape_error gauge
resource_scrape_error 0
",
        start_time(created["app"]),
        start_time(created["postgres"]),
        start_time(created["sidecar"]),
    );
    assert_eq!(body, expected);
    assert!(!body.contains("migrate"), "an exited container is listed");
}

#[tokio::test]
async fn a_runtime_error_is_a_scrape_error_without_samples() {
    let rt = runtime();
    two_pods(&rt).await;
    rt.fail_next(
        "list_container_stats",
        RuntimeError::Unavailable("runtime is down".into()),
    );
    let (code, _, body) = get(&app(&rt), "/metrics/resource").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        body,
        "# HELP resource_scrape_error [STABLE] 1 if there was an error while getting container metrics, 0 otherwise
# TYPE resource_scrape_error gauge
resource_scrape_error 1
"
    );
    // the next scrape finds the runtime back
    let (_, _, body) = get(&app(&rt), "/metrics/resource").await;
    assert!(body.ends_with("resource_scrape_error 0\n"), "{body}");
    assert!(body.contains("container=\"postgres\""), "{body}");
}

#[tokio::test]
async fn pods_without_metadata_are_named_by_their_labels() {
    let rt = runtime();
    let pod_labels: HashMap<String, String> = [
        (labels::POD_NAME, "static-web"),
        (labels::POD_NAMESPACE, "kube-system"),
        (labels::POD_UID, "uid-s"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let sb = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(cri::PodSandboxConfig {
                labels: pod_labels,
                ..Default::default()
            }),
            runtime_handler: String::new(),
        })
        .await
        .unwrap();
    let id = start(&rt, &sb, "nginx").await;
    rt.set_container_stats(&id, usage(10, MI));
    let (_, _, body) = get(&app(&rt), "/metrics/resource").await;
    assert!(
        body.contains(&format!(
            "pod_cpu_usage_seconds_total{{namespace=\"kube-system\",pod=\"static-web\"}} 0.01 {NOW_MS}\n"
        )),
        "{body}"
    );
}

#[tokio::test]
async fn stats_summary_has_the_node_pods_and_containers() {
    let rt = runtime();
    two_pods(&rt).await;
    let (code, ctype, body) = get(&app(&rt), "/stats/summary").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(ctype, "application/json");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["node"]["nodeName"], "node-a");
    assert_eq!(v["node"]["startTime"], "2025-12-31T23:50:00Z");
    assert_eq!(v["node"]["cpu"]["time"], "2026-01-01T00:01:00Z");
    assert_eq!(v["node"]["cpu"]["usageCoreNanoSeconds"], 2_000_000_000u64);
    assert_eq!(v["node"]["memory"]["workingSetBytes"], 400 * MI);
    assert_eq!(v["node"]["memory"]["availableBytes"], 624 * MI);
    assert_eq!(v["node"]["memory"]["usageBytes"], 500 * MI);
    let pods = v["pods"].as_array().unwrap();
    let refs: Vec<(&str, &str, &str)> = pods
        .iter()
        .map(|p| {
            (
                p["podRef"]["namespace"].as_str().unwrap(),
                p["podRef"]["name"].as_str().unwrap(),
                p["podRef"]["uid"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(refs, [("data", "db", "uid-db"), ("shop", "web", "uid-web")]);
    let web = &pods[1];
    let names: Vec<&str> = web["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["app", "sidecar"]);
    assert_eq!(
        web["containers"][0]["cpu"]["usageCoreNanoSeconds"],
        1_500_000_000u64
    );
    assert_eq!(web["containers"][1]["memory"]["workingSetBytes"], 5 * MI);
    assert_eq!(web["cpu"]["usageCoreNanoSeconds"], 1_750_000_000u64);
    assert_eq!(web["memory"]["workingSetBytes"], 40 * MI);
    assert!(web["startTime"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn a_runtime_error_fails_the_summary() {
    let rt = runtime();
    rt.fail_next(
        "list_containers",
        RuntimeError::Unavailable("runtime is down".into()),
    );
    let (code, _, body) = get(&app(&rt), "/stats/summary").await;
    assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(body.contains("runtime is down"), "{body}");
}

#[tokio::test]
async fn the_read_only_router_serves_them_only_with_a_provider() {
    let plain = router(HttpState::new(Arc::new(NoPods), &NodeMetrics::default()));
    assert_eq!(
        get(&plain, "/metrics/resource").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(get(&plain, "/stats/summary").await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_kubelet_server_serves_them_as_the_metrics_and_stats_subresources() {
    use node_kubelet::node::authz::subresources_of;
    use node_kubelet::node::server::{ServerState, router as server_router};
    let rt = runtime();
    two_pods(&rt).await;
    let provider = StatsProvider::new(Arc::new(rt.clone()), Arc::new(FixedNode), "node-a");
    let app = server_router(
        ServerState::new(node_kubelet::PodStates::new(), Arc::new(rt.clone())).stats(provider),
    );
    let (code, _, body) = get(&app, "/metrics/resource").await;
    assert_eq!(code, StatusCode::OK);
    assert!(body.contains(&format!(
        "pod_cpu_usage_seconds_total{{namespace=\"data\",pod=\"db\"}} 12 {NOW_MS}\n"
    )));
    let (code, _, body) = get(&app, "/stats/summary").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    // authorized as kubelet does: nodes/metrics and nodes/stats
    assert_eq!(subresources_of("/metrics/resource", false), ["metrics"]);
    assert_eq!(subresources_of("/stats/summary", false), ["stats"]);
    // without a provider the server has no such routes
    let plain = server_router(ServerState::new(
        node_kubelet::PodStates::new(),
        Arc::new(rt.clone()),
    ));
    assert_eq!(
        get(&plain, "/metrics/resource").await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn the_summary_gives_usage_nano_cores_from_the_previous_sample() {
    let rt = runtime();
    two_pods(&rt).await;
    let app = app(&rt);
    let (_, _, body) = get(&app, "/stats/summary").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let web = &v["pods"][1];
    assert!(
        web["containers"][0]["cpu"]["usageNanoCores"].is_null(),
        "{body}"
    );
    assert!(web["cpu"]["usageNanoCores"].is_null(), "{body}");

    // one second later the app container has used another half core-second
    let app_id = rt
        .containers()
        .into_iter()
        .find(|c| c.config.metadata.as_ref().unwrap().name == "app")
        .unwrap()
        .id;
    rt.set_container_stats(
        &app_id,
        FakeUsage {
            usage_core_nano_seconds: 2_000_000_000,
            working_set_bytes: 35 * MI,
            timestamp: (NOW_MS + 1000) * 1_000_000,
        },
    );
    let (_, _, body) = get(&app, "/stats/summary").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let web = &v["pods"][1];
    assert_eq!(web["containers"][0]["name"], "app");
    assert_eq!(
        web["containers"][0]["cpu"]["usageNanoCores"],
        500_000_000u64
    );
    // the sidecar's sample did not move: no rate
    assert!(
        web["containers"][1]["cpu"]["usageNanoCores"].is_null(),
        "{body}"
    );
    assert_eq!(web["cpu"]["usageNanoCores"], 500_000_000u64);
}
