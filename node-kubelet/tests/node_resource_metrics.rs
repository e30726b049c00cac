//! `/metrics/resource` and `/stats/summary` over the fake runtime's container stats
//! (`FakeRuntime::set_container_stats`) and a fixed node usage, through the read-only router;
//! the full summary's filesystem stats over a node root, volumes and logs in a temporary
//! directory.

use std::collections::HashMap;
use std::sync::Arc;

use http::StatusCode;
use k8s_openapi::jiff::Timestamp;
use node_core::{RuntimeBackend, RuntimeError, cri};
use node_kubelet::labels;
use node_kubelet::node::allocatable::fs_stats;
use node_kubelet::node::http::{HttpState, NodeMetrics, router};
use node_kubelet::node::resource_metrics;
use node_kubelet::node::stats::{
    InterfaceStats, NetworkStats, NodeStatsSource, NodeUsage, StatsError, StatsFilesystems,
    StatsProvider,
};
use node_test_support::FakeRuntime;
use node_test_support::fakes::FakeUsage;

mod support;
use support::router_get as get;

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
            ..Default::default()
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
    support::stats_router(provider)
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
    let plain = router(HttpState::new(
        Arc::new(support::NoPods),
        &NodeMetrics::default(),
    ));
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

/// A node with interfaces and task counts besides CPU and memory.
struct FullNode;

impl NodeStatsSource for FullNode {
    fn node_usage(&self) -> Result<NodeUsage, StatsError> {
        let mut u = FixedNode.node_usage()?;
        let dev = "Inter-|   Receive                            |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:  100 1 0 0 0 0 0 0  100 1 0 0 0 0 0 0\n  eth0: 5000 40 2 0 0 0 0 0 7000 50 3 0 0 0 0 0\n";
        u.network = Some(NetworkStats::from_proc_net_dev(dev, u.time));
        u.max_pid = Some(4_194_304);
        u.running_processes = Some(321);
        u.swap_usage_bytes = Some(MI);
        u.swap_available_bytes = Some(7 * MI);
        Ok(u)
    }
}

/// A node root with the volume, log and image directories of a kubelet.
struct NodeDirs {
    dir: tempfile::TempDir,
}

impl NodeDirs {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn filesystems(&self) -> StatsFilesystems {
        let root = self.dir.path().join("kubelet");
        std::fs::create_dir_all(&root).unwrap();
        StatsFilesystems {
            root_dir: root.clone(),
            volumes_root: root,
            pod_log_root: self.dir.path().join("pods-logs"),
            image_fs: None,
        }
    }

    fn write(&self, rel: &str, bytes: usize) {
        let p = self.dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, vec![7u8; bytes]).unwrap();
    }
}

fn full_app(rt: &FakeRuntime, dirs: &NodeDirs) -> axum::Router {
    let provider = StatsProvider::new(Arc::new(rt.clone()), Arc::new(FullNode), "node-a")
        .filesystems(dirs.filesystems())
        .images(Arc::new(rt.clone()));
    support::stats_router(provider)
}

async fn json(app: &axum::Router, uri: &str) -> serde_json::Value {
    let (code, ctype, body) = get(app, uri).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(ctype, "application/json");
    serde_json::from_str(&body).unwrap()
}

fn keys(v: &serde_json::Value) -> Vec<&str> {
    let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    k.sort();
    k
}

/// The web pod's emptyDir `cache` (64 KiB file), its containers' logs (app 12 KiB, sidecar
/// 4 KiB) and a pod-level log file (1 KiB).
fn web_files(dirs: &NodeDirs) {
    dirs.write(
        "kubelet/pods/uid-web/volumes/kubernetes.io~empty-dir/cache/data",
        64 << 10,
    );
    dirs.write("pods-logs/shop_web_uid-web/app/0.log", 12 << 10);
    dirs.write("pods-logs/shop_web_uid-web/sidecar/0.log", 4 << 10);
    dirs.write("pods-logs/shop_web_uid-web/pod.log", 1 << 10);
}

#[tokio::test]
async fn only_cpu_and_memory_gives_cpu_and_memory_alone() {
    let rt = runtime();
    two_pods(&rt).await;
    let dirs = NodeDirs::new();
    web_files(&dirs);
    let app = full_app(&rt, &dirs);
    let v = json(&app, "/stats/summary?only_cpu_and_memory=true").await;
    // the node: CPU, memory and swap (kubelet's GetCPUAndMemoryStats keeps the node's swap)
    assert_eq!(
        keys(&v["node"]),
        ["cpu", "memory", "nodeName", "startTime", "swap"]
    );
    assert_eq!(v["node"]["swap"]["swapUsageBytes"], MI);
    for pod in v["pods"].as_array().unwrap() {
        assert_eq!(
            keys(pod),
            ["containers", "cpu", "memory", "podRef", "startTime"]
        );
        for c in pod["containers"].as_array().unwrap() {
            assert_eq!(keys(c), ["cpu", "memory", "name", "startTime"]);
        }
    }
    assert_eq!(v["pods"][1]["memory"]["workingSetBytes"], 40 * MI);

    // anything but the one value `true` is the full summary, as kubelet reads the parameter
    for uri in [
        "/stats/summary",
        "/stats/summary?only_cpu_and_memory=false",
        "/stats/summary?only_cpu_and_memory=1",
        "/stats/summary?only_cpu_and_memory=true&only_cpu_and_memory=true",
    ] {
        let v = json(&app, uri).await;
        assert!(v["node"]["fs"].is_object(), "{uri}: {v}");
        assert!(v["pods"][1]["ephemeral-storage"].is_object(), "{uri}: {v}");
    }
}

#[tokio::test]
async fn the_full_summary_has_the_node_network_fs_runtime_and_rlimit() {
    let rt = runtime();
    rt.add_image_sized("nginx", 5 << 20);
    two_pods(&rt).await;
    let dirs = NodeDirs::new();
    let app = full_app(&rt, &dirs);
    let v = json(&app, "/stats/summary").await;
    let node = &v["node"];
    assert_eq!(
        keys(node),
        [
            "cpu",
            "fs",
            "memory",
            "network",
            "nodeName",
            "rlimit",
            "runtime",
            "startTime",
            "swap"
        ]
    );
    // network: eth0 inline as the default interface, loopback left out
    assert_eq!(node["network"]["name"], "eth0");
    assert_eq!(node["network"]["rxBytes"], 5000);
    assert_eq!(node["network"]["rxErrors"], 2);
    assert_eq!(node["network"]["txBytes"], 7000);
    assert_eq!(node["network"]["txErrors"], 3);
    assert_eq!(node["network"]["interfaces"].as_array().unwrap().len(), 1);
    assert_eq!(node["rlimit"]["maxpid"], 4_194_304);
    assert_eq!(node["rlimit"]["curproc"], 321);

    // fs: the root dir's filesystem, the numbers the eviction manager observes as nodefs
    let root = dirs.filesystems().root_dir;
    let s = fs_stats(&root).unwrap();
    let fs = &node["fs"];
    assert_eq!(fs["capacityBytes"], s.capacity_bytes);
    assert_eq!(fs["inodes"], s.inodes);
    // what the filesystem uses (capacity minus free, reserved blocks included, as cAdvisor);
    // the machine's other writers move it between two statfs calls
    let used = fs["usedBytes"].as_i64().unwrap();
    assert!(
        (used - (s.capacity_bytes - s.free_bytes)).abs() < 256 << 20,
        "{fs} {s:?}"
    );
    assert!(fs["availableBytes"].as_i64().unwrap() <= s.capacity_bytes);
    assert!(fs["inodesFree"].as_i64().unwrap() <= s.inodes);
    assert!(fs["inodesUsed"].as_i64().unwrap() <= s.inodes);
    // the fake has no ImageFsInfo: the root dir's filesystem, the images' sizes as usage
    let image_fs = &node["runtime"]["imageFs"];
    assert_eq!(image_fs["usedBytes"], (1 << 20) + (5 << 20));
    assert_eq!(image_fs["capacityBytes"], s.capacity_bytes);
    assert_eq!(node["runtime"]["containerFs"], *image_fs);
}

#[tokio::test]
async fn the_full_summary_measures_volumes_logs_and_ephemeral_storage() {
    let rt = runtime();
    two_pods(&rt).await;
    let dirs = NodeDirs::new();
    web_files(&dirs);
    let app = full_app(&rt, &dirs);
    let v = json(&app, "/stats/summary").await;
    let nodefs = fs_stats(&dirs.filesystems().root_dir).unwrap();
    let web = &v["pods"][1];
    assert_eq!(web["podRef"]["name"], "web");

    // the emptyDir: at least the file's bytes, its file and directory inodes
    let volumes = web["volume"].as_array().unwrap();
    assert_eq!(volumes.len(), 1, "{web}");
    let cache = &volumes[0];
    assert_eq!(cache["name"], "cache");
    let used = cache["usedBytes"].as_u64().unwrap();
    assert!(used >= 64 << 10, "{cache}");
    assert_eq!(cache["inodesUsed"], 2);
    assert_eq!(cache["capacityBytes"], nodefs.capacity_bytes);
    assert!(cache["time"].as_str().unwrap().ends_with('Z'));

    // the containers' logs; no rootfs: the fake reports no writable layer
    let app_c = &web["containers"][0];
    assert_eq!(app_c["name"], "app");
    let app_logs = app_c["logs"]["usedBytes"].as_u64().unwrap();
    assert!(app_logs >= 12 << 10, "{app_c}");
    assert_eq!(app_c["logs"]["inodesUsed"], 2);
    assert_eq!(app_c["logs"]["capacityBytes"], nodefs.capacity_bytes);
    assert!(app_c.get("rootfs").is_none(), "{app_c}");
    let sidecar_logs = web["containers"][1]["logs"]["usedBytes"].as_u64().unwrap();
    assert!(sidecar_logs >= 4 << 10);

    // ephemeral storage: the logs, the disk emptyDir and the pod-level log file
    let eph = &web["ephemeral-storage"];
    let total = eph["usedBytes"].as_u64().unwrap();
    assert!(total >= app_logs + sidecar_logs + used + (1 << 10), "{eph}");
    assert_eq!(eph["inodesUsed"], 2 + 2 + 2 + 1);
    assert_eq!(eph["capacityBytes"], nodefs.capacity_bytes);

    // the db pod has nothing on disk: no volumes, no logs, an ephemeral storage with no usage
    let db = &v["pods"][0];
    assert!(db.get("volume").is_none(), "{db}");
    assert!(db["containers"][0].get("logs").is_none(), "{db}");
    assert!(db["ephemeral-storage"].get("usedBytes").is_none(), "{db}");
    assert_eq!(
        db["ephemeral-storage"]["capacityBytes"],
        nodefs.capacity_bytes
    );
    // the fake names no sandbox process: no pod network
    assert!(db.get("network").is_none(), "{db}");
}

#[tokio::test]
async fn without_filesystems_the_full_summary_has_no_filesystem_stats() {
    let rt = runtime();
    two_pods(&rt).await;
    let v = json(&app(&rt), "/stats/summary").await;
    assert!(v["node"].get("fs").is_none());
    assert!(v["node"].get("runtime").is_none());
    assert!(v["pods"][1].get("ephemeral-storage").is_none());
    assert!(v["pods"][1]["containers"][0].get("logs").is_none());
}

#[tokio::test]
async fn a_missing_root_dir_fails_the_full_summary_only() {
    let rt = runtime();
    two_pods(&rt).await;
    let dirs = NodeDirs::new();
    let mut fs = dirs.filesystems();
    fs.root_dir = dirs.dir.path().join("missing");
    let provider =
        StatsProvider::new(Arc::new(rt.clone()), Arc::new(FullNode), "node-a").filesystems(fs);
    let app = support::stats_router(provider);
    let (code, _, body) = get(&app, "/stats/summary").await;
    assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(body.contains("missing"), "{body}");
    let (code, _, _) = get(&app, "/stats/summary?only_cpu_and_memory=true").await;
    assert_eq!(code, StatusCode::OK);
}

/// Prints how long a full summary and a CPU-and-memory one take with 20 pods of two
/// containers, each pod with an emptyDir and logs (a figure, not an assertion; run with
/// `--nocapture`).
#[tokio::test]
async fn summary_time_with_twenty_pods() {
    let rt = runtime();
    let dirs = NodeDirs::new();
    for i in 0..20 {
        let (name, uid) = (format!("p{i:02}"), format!("uid-{i:02}"));
        let sb = run_pod(&rt, &name, "load", &uid).await;
        for c in ["app", "sidecar"] {
            let id = start(&rt, &sb, c).await;
            rt.set_container_stats(&id, usage(100, MI));
            dirs.write(&format!("pods-logs/load_{name}_{uid}/{c}/0.log"), 8 << 10);
        }
        dirs.write(
            &format!("kubelet/pods/{uid}/volumes/kubernetes.io~empty-dir/data/file"),
            16 << 10,
        );
    }
    let app = full_app(&rt, &dirs);
    let runs = 20;
    let mut figures = vec![];
    for uri in ["/stats/summary", "/stats/summary?only_cpu_and_memory=true"] {
        let v = json(&app, uri).await;
        assert_eq!(v["pods"].as_array().unwrap().len(), 20);
        let t = std::time::Instant::now();
        for _ in 0..runs {
            get(&app, uri).await;
        }
        figures.push(format!("{uri}: {:?} per request", t.elapsed() / runs));
    }
    println!(
        "summary with 20 pods (fake runtime): {}",
        figures.join("; ")
    );
}

#[test]
fn proc_net_dev_without_eth0_has_an_unnamed_default() {
    let dev = "h1\nh2\n  lo: 1 0 0 0 0 0 0 0 1 0 0 0 0 0 0 0\n veth12: 1 0 0 0 0 0 0 0 1 0 0 0 0 0 0 0\n  net1: 10 0 1 0 0 0 0 0 20 0 2 0 0 0 0 0\n";
    let n = NetworkStats::from_proc_net_dev(dev, Timestamp::UNIX_EPOCH);
    assert_eq!(n.default, InterfaceStats::default());
    assert_eq!(n.interfaces.len(), 1);
    let v = serde_json::to_value(&n).unwrap();
    // kubelet's inline default interface: its name is always there
    assert_eq!(v["name"], "");
    assert_eq!(v["interfaces"][0]["name"], "net1");
    assert_eq!(v["interfaces"][0]["txErrors"], 2);
    assert_eq!(v["time"], "1970-01-01T00:00:00Z");
}

/// The fake runtime, reporting what containerd reports besides: each container's writable
/// layer (on `layers`) and each sandbox's network and process count (`ListPodSandboxStats`).
struct LayeredRuntime {
    fake: FakeRuntime,
    layers: std::path::PathBuf,
}

fn uv(value: u64) -> Option<cri::UInt64Value> {
    Some(cri::UInt64Value { value })
}

#[async_trait::async_trait]
impl RuntimeBackend for LayeredRuntime {
    async fn version(&self) -> Result<cri::VersionResponse, RuntimeError> {
        self.fake.version().await
    }
    async fn status(&self, verbose: bool) -> Result<cri::StatusResponse, RuntimeError> {
        self.fake.status(verbose).await
    }
    async fn run_pod_sandbox(
        &self,
        req: cri::RunPodSandboxRequest,
    ) -> Result<String, RuntimeError> {
        self.fake.run_pod_sandbox(req).await
    }
    async fn stop_pod_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        self.fake.stop_pod_sandbox(id).await
    }
    async fn remove_pod_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        self.fake.remove_pod_sandbox(id).await
    }
    async fn pod_sandbox_status(
        &self,
        id: &str,
        verbose: bool,
    ) -> Result<cri::PodSandboxStatusResponse, RuntimeError> {
        self.fake.pod_sandbox_status(id, verbose).await
    }
    async fn list_pod_sandbox(
        &self,
        filter: Option<cri::PodSandboxFilter>,
    ) -> Result<Vec<cri::PodSandbox>, RuntimeError> {
        self.fake.list_pod_sandbox(filter).await
    }
    async fn create_container(
        &self,
        req: cri::CreateContainerRequest,
    ) -> Result<String, RuntimeError> {
        self.fake.create_container(req).await
    }
    async fn start_container(&self, id: &str) -> Result<(), RuntimeError> {
        self.fake.start_container(id).await
    }
    async fn stop_container(
        &self,
        id: &str,
        timeout: std::time::Duration,
    ) -> Result<(), RuntimeError> {
        self.fake.stop_container(id, timeout).await
    }
    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        self.fake.remove_container(id).await
    }
    async fn container_status(
        &self,
        id: &str,
        verbose: bool,
    ) -> Result<cri::ContainerStatusResponse, RuntimeError> {
        self.fake.container_status(id, verbose).await
    }
    async fn list_containers(
        &self,
        filter: Option<cri::ContainerFilter>,
    ) -> Result<Vec<cri::Container>, RuntimeError> {
        self.fake.list_containers(filter).await
    }
    async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: std::time::Duration,
    ) -> Result<cri::ExecSyncResponse, RuntimeError> {
        self.fake.exec_sync(id, cmd, timeout).await
    }
    async fn list_container_stats(
        &self,
        filter: Option<cri::ContainerStatsFilter>,
    ) -> Result<Vec<cri::ContainerStats>, RuntimeError> {
        let mut stats = self.fake.list_container_stats(filter).await?;
        for s in &mut stats {
            s.writable_layer = Some(cri::FilesystemUsage {
                timestamp: NOW_MS * 1_000_000,
                fs_id: Some(cri::FilesystemIdentifier {
                    mountpoint: self.layers.display().to_string(),
                }),
                used_bytes: uv(3 << 20),
                inodes_used: uv(30),
            });
        }
        Ok(stats)
    }
    async fn list_pod_sandbox_stats(
        &self,
        _filter: Option<cri::PodSandboxStatsFilter>,
    ) -> Result<Vec<cri::PodSandboxStats>, RuntimeError> {
        let eth0 = cri::NetworkInterfaceUsage {
            name: "eth0".into(),
            rx_bytes: uv(1000),
            rx_errors: uv(1),
            tx_bytes: uv(2000),
            tx_errors: uv(2),
        };
        Ok(self
            .fake
            .sandboxes()
            .into_iter()
            .map(|s| cri::PodSandboxStats {
                attributes: Some(cri::PodSandboxAttributes {
                    id: s.id,
                    ..Default::default()
                }),
                linux: Some(cri::LinuxPodSandboxStats {
                    cpu: Some(cri::CpuUsage {
                        timestamp: NOW_MS * 1_000_000,
                        usage_core_nano_seconds: uv(42),
                        usage_nano_cores: None,
                    }),
                    network: Some(cri::NetworkUsage {
                        timestamp: NOW_MS * 1_000_000,
                        default_interface: Some(eth0.clone()),
                        interfaces: vec![eth0.clone()],
                    }),
                    process: Some(cri::ProcessUsage {
                        timestamp: NOW_MS * 1_000_000,
                        process_count: uv(3),
                    }),
                    ..Default::default()
                }),
                windows: None,
            })
            .collect())
    }
}

#[tokio::test]
async fn a_runtime_s_writable_layers_and_sandbox_network_are_reported() {
    let rt = runtime();
    two_pods(&rt).await;
    let dirs = NodeDirs::new();
    web_files(&dirs);
    let layers = dirs.dir.path().join("layers");
    std::fs::create_dir_all(&layers).unwrap();
    let layered = LayeredRuntime {
        fake: rt.clone(),
        layers: layers.clone(),
    };
    let provider = StatsProvider::new(Arc::new(layered), Arc::new(FullNode), "node-a")
        .filesystems(dirs.filesystems());
    let app = support::stats_router(provider);
    let v = json(&app, "/stats/summary").await;
    let web = &v["pods"][1];
    // rootfs: the runtime's usage on the statfs of the layer's mountpoint
    let layer_fs = fs_stats(&layers).unwrap();
    let rootfs = &web["containers"][0]["rootfs"];
    assert_eq!(rootfs["usedBytes"], 3u64 << 20);
    assert_eq!(rootfs["inodesUsed"], 30);
    assert_eq!(rootfs["capacityBytes"], layer_fs.capacity_bytes);
    assert_eq!(rootfs["time"], "2026-01-01T00:01:00Z");
    // ephemeral storage counts the two writable layers with the logs, volume and pod log
    let eph = &web["ephemeral-storage"];
    assert_eq!(eph["inodesUsed"], 30 + 30 + 2 + 2 + 2 + 1, "{eph}");
    assert!(
        eph["usedBytes"].as_u64().unwrap() >= (6 << 20) + (81 << 10),
        "{eph}"
    );
    // the sandbox's network and processes as the runtime reports them; its CPU too
    assert_eq!(web["network"]["name"], "eth0");
    assert_eq!(web["network"]["txErrors"], 2);
    assert_eq!(web["network"]["interfaces"][0]["rxBytes"], 1000);
    assert_eq!(web["process_stats"]["process_count"], 3);
    assert_eq!(web["cpu"]["usageCoreNanoSeconds"], 42);
    // none of it in the CPU and memory summary
    let v = json(&app, "/stats/summary?only_cpu_and_memory=true").await;
    let web = &v["pods"][1];
    assert!(web["containers"][0].get("rootfs").is_none(), "{web}");
    assert!(web.get("network").is_none() && web.get("process_stats").is_none());
}
