//! Root test (cgroups, mounts, the native runtime's namespaces; no network traffic): the full
//! `/stats/summary` of a kubelet with its node manager on the real native runtime. A container
//! writes 512 KiB into a disk emptyDir and 256 KiB into a memory-medium one (an 8Mi tmpfs) and
//! a line to its log: the summary shows the volumes' usage at least that, the tmpfs's own size
//! as the memory volume's capacity, the log's usage, the pod's ephemeral storage as the disk
//! volume plus the logs (the tmpfs left out), the node's `fs` as statfs of the kubelet root dir
//! and the pod's network namespace read through the sandbox process. `?only_cpu_and_memory=true`
//! has none of these.
//!
//! The kubelet runs on a thread inside a NetnsFixture, under its own temporary root and cgroup
//! root; a guard kills what is left in that cgroup tree, unmounts and removes everything on
//! drop, panics included.

use std::sync::Arc;
use std::time::{Duration, Instant};

use node_core::ImageBackend;
use node_kubelet::CancellationToken;
use node_kubelet::node::allocatable::fs_stats;
use node_kubelet::node::cgroups::CgroupConfig;
use node_kubelet::node::stats::{HostNodeStats, StatsFilesystems, StatsProvider};
use node_kubelet::node::volumes::MemoryObjectStore;
use node_kubelet::node::{NodeConfig, NodeManager};
use node_test_support::{ScriptedPodSource, require_path, require_root, until_async as until};

mod support;
use support::native::Guard;
use support::{in_netns, pod, router_get};

const IMAGE: &str = "busybox:stats-test";

const WRITER: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: writer, namespace: disk, uid: uid-writer}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: IMG
    imagePullPolicy: Never
    command: [sh, -c, 'head -c 524288 /dev/zero > /cache/blob && head -c 262144 /dev/zero > /mem/blob && echo written && sleep 3600']
    volumeMounts:
    - {name: cache, mountPath: /cache}
    - {name: mem, mountPath: /mem}
  volumes:
  - {name: cache, emptyDir: {}}
  - {name: mem, emptyDir: {medium: Memory, sizeLimit: 8Mi}}
"#;

fn ready(name: &str) -> bool {
    require_root(name)
        && require_path(name, "/sys/fs/cgroup/cpu")
        && require_path(name, "/sys/fs/cgroup/memory")
        && require_path(name, node_test_support::image::BUSYBOX)
}

fn u(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn the_summary_measures_a_pod_s_volumes_logs_and_node_filesystem() {
    let name = "the_summary_measures_a_pod_s_volumes_logs_and_node_filesystem";
    if !ready(name) {
        return;
    }
    let g = Arc::new(Guard::new("stats"));
    let g2 = g.clone();
    in_netns("nk-stats", move || async move {
        let root = g2.dir.path().to_path_buf();
        let (runtime, images) = support::native::busybox_runtime(&g2, IMAGE);
        let mut c = NodeConfig::new("node-1");
        c.cgroups = Some(CgroupConfig::default().root(g2.cgroup_root()));
        c.volumes.root_dir = root.join("kubelet");
        c.allocatable.root_dir = root.join("kubelet");
        c.pod_log_root = root.join("logs");
        std::fs::create_dir_all(root.join("kubelet")).unwrap();
        let filesystems = StatsFilesystems::of(&c);
        let manager =
            Arc::new(NodeManager::new(c, Arc::new(MemoryObjectStore::default())).unwrap());
        let images: Arc<dyn ImageBackend> = images;
        let source = ScriptedPodSource::new("api");
        let kubelet = support::scripted_kubelet(
            &source,
            runtime.clone(),
            images.clone(),
            &root,
            &root.join("logs"),
        )
        .node(manager)
        .build()
        .unwrap();
        let token = CancellationToken::new();
        let t = token.clone();
        let task = tokio::spawn(async move { kubelet.run(t).await.unwrap() });

        let provider = StatsProvider::new(
            runtime.clone(),
            Arc::new(HostNodeStats::default()),
            "node-1",
        )
        .filesystems(filesystems)
        .images(images);
        let app = support::stats_router(provider);
        source.apply(pod(&WRITER.replace("IMG", IMAGE)));

        // the pod, once both volumes hold what the container wrote and its log has the line
        let (summary, pod) = until(
            "the writer's volumes filled",
            Duration::from_secs(120),
            || async {
                let (code, _, body) = router_get(&app, "/stats/summary").await;
                assert_eq!(code, http::StatusCode::OK, "{body}");
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                let pod = v["pods"]
                    .as_array()?
                    .iter()
                    .find(|p| p["podRef"]["name"] == "writer")?
                    .clone();
                let vols = pod["volume"].as_array()?;
                let full = vols.len() == 2
                    && vols
                        .iter()
                        .all(|v| v["usedBytes"].as_u64().unwrap_or(0) >= 256 << 10)
                    && pod["containers"][0]["logs"]["usedBytes"]
                        .as_u64()
                        .unwrap_or(0)
                        > 0;
                full.then_some((v, pod))
            },
        )
        .await;
        eprintln!("the writer's stats: {pod:#}");

        // the disk emptyDir: at least the 512 KiB written, on the kubelet root's filesystem
        let nodefs = fs_stats(&root.join("kubelet")).unwrap();
        let cache = &pod["volume"][0];
        assert_eq!(cache["name"], "cache");
        assert!(u(&cache["usedBytes"]) >= 512 << 10, "{cache}");
        assert!(u(&cache["inodesUsed"]) >= 2, "{cache}");
        assert_eq!(u(&cache["capacityBytes"]), nodefs.capacity_bytes as u64);
        // the memory emptyDir: its own 8Mi tmpfs
        let mem = &pod["volume"][1];
        assert_eq!(mem["name"], "mem");
        assert!(u(&mem["usedBytes"]) >= 256 << 10, "{mem}");
        assert_eq!(u(&mem["capacityBytes"]), 8 << 20, "{mem}");
        // the container's log, and no rootfs: the native runtime reports no writable layer
        let app_c = &pod["containers"][0];
        let logs = u(&app_c["logs"]["usedBytes"]);
        assert!(app_c.get("rootfs").is_none(), "{app_c}");
        // ephemeral storage: the disk emptyDir and the logs, not the tmpfs
        let eph = &pod["ephemeral-storage"];
        assert_eq!(u(&eph["usedBytes"]), u(&cache["usedBytes"]) + logs, "{eph}");
        assert_eq!(u(&eph["capacityBytes"]), nodefs.capacity_bytes as u64);
        // the network namespace of the sandbox (loopback only: no eth0, no interface listed)
        assert_eq!(pod["network"]["name"], "", "{pod}");
        assert!(pod["network"]["time"].as_str().unwrap().ends_with('Z'));

        // the node's fs: statfs of the root dir, as the eviction manager's nodefs
        let fs = &summary["node"]["fs"];
        assert_eq!(u(&fs["capacityBytes"]), nodefs.capacity_bytes as u64);
        assert_eq!(u(&fs["inodes"]), nodefs.inodes as u64);
        assert!(u(&fs["usedBytes"]) > 0 && u(&fs["usedBytes"]) <= u(&fs["capacityBytes"]));
        assert!(
            summary["node"]["runtime"]["imageFs"]["usedBytes"]
                .as_u64()
                .is_some()
        );
        assert!(u(&summary["node"]["rlimit"]["maxpid"]) > 0);

        // CPU and memory only
        let (_, _, body) = router_get(&app, "/stats/summary?only_cpu_and_memory=true").await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(v["node"].get("fs").is_none(), "{body}");
        let p = v["pods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["podRef"]["name"] == "writer")
            .unwrap();
        assert!(
            p.get("volume").is_none() && p.get("ephemeral-storage").is_none(),
            "{p}"
        );
        assert!(p.get("network").is_none(), "{p}");

        // figures: a request's time, each kind (no assertion)
        for uri in ["/stats/summary", "/stats/summary?only_cpu_and_memory=true"] {
            let t = Instant::now();
            for _ in 0..10 {
                router_get(&app, uri).await;
            }
            eprintln!(
                "figure: {uri} with one pod on the native runtime: {:?} per request",
                t.elapsed() / 10
            );
        }

        token.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
        support::remove_all_sandboxes(&*runtime).await;
    });
    drop(g);
}
