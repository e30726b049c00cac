//! Root test (the native runtime's namespaces and cgroups; loopback traffic only): the
//! kubelet's `/metrics/resource` and `/stats/summary` on the read-only port, over plain HTTP,
//! for a pod of the real native runtime. A busybox container that burns CPU
//! (`while :; do :; done`) shows `container_cpu_usage_seconds_total` above zero and growing
//! between two scrapes, a memory working set above zero, its pod's lines and the node's lines
//! (read from the host's root cgroup and `/proc/meminfo`).
//!
//! The kubelet runs on a thread inside a NetnsFixture, the native runtime under its own
//! temporary root and cgroup root (the guard kills what is left in that cgroup tree and
//! unmounts everything on drop, panics included).

use std::sync::Arc;
use std::time::Duration;

use node_core::Pod;
use node_kubelet::CancellationToken;
use node_kubelet::node::stats::{HostNodeStats, StatsProvider};
use node_test_support::{
    NetnsFixture, ScriptedPodSource, require_path, require_root, until_async as until,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod support;
use support::native::Guard;

const IMAGE: &str = "busybox:resmetrics-test";

const BURNER: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: burner, namespace: load, uid: uid-burner}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: spin
    image: IMG
    imagePullPolicy: Never
    command: [sh, -c, 'while :; do :; done']
"#;

/// `GET path` over plain HTTP/1.0: the status line and the body.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// The value of the sample starting with `prefix` (name and labels), and its timestamp.
fn sample(body: &str, prefix: &str) -> Option<(f64, Option<i64>)> {
    let line = body.lines().find(|l| l.starts_with(prefix))?;
    let mut rest = line[prefix.len()..].split_whitespace();
    let v = rest.next()?.parse().ok()?;
    Some((v, rest.next().and_then(|t| t.parse().ok())))
}

#[test]
fn a_busy_container_s_cpu_and_memory_on_the_read_only_port() {
    let name = "a_busy_container_s_cpu_and_memory_on_the_read_only_port";
    if !(require_root(name) && require_path(name, node_test_support::image::BUSYBOX)) {
        return;
    }
    let g = Arc::new(Guard::new("resmetrics"));
    let g2 = g.clone();
    let ns = NetnsFixture::new("nk-resmetrics").expect("netns");
    ns.run_in(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                let root = g2.dir.path().to_path_buf();
                let (runtime, images) = support::native::busybox_runtime(&g2, IMAGE);
                let source = ScriptedPodSource::new("api");
                let kubelet =
                    support::scripted_kubelet(&source, runtime.clone(), images, &root, &root.join("logs"))
                        .build()
                        .unwrap();
                let token = CancellationToken::new();
                let t = token.clone();
                let task = tokio::spawn(async move { kubelet.run(t).await.unwrap() });

                // the read-only port, on the namespace's loopback
                let provider = StatsProvider::new(
                    runtime.clone(),
                    Arc::new(HostNodeStats::default()),
                    "node-1",
                );
                let app = support::stats_router(provider);
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = listener.local_addr().unwrap();
                let server = tokio::spawn(async move { axum::serve(listener, app).await });

                let pod: Pod =
                    serde_saphyr::from_str(&BURNER.replace("IMG", IMAGE)).unwrap();
                source.apply(pod);
                support::running_container(&*runtime, "the burner running", Duration::from_secs(120))
                    .await;

                let cpu = "container_cpu_usage_seconds_total{container=\"spin\",namespace=\"load\",pod=\"burner\"} ";
                let mem = "container_memory_working_set_bytes{container=\"spin\",namespace=\"load\",pod=\"burner\"} ";
                let first = until("CPU time counted", Duration::from_secs(60), || async {
                    let (status, body) = http_get(addr, "/metrics/resource").await;
                    assert_eq!(status, "HTTP/1.0 200 OK", "{body}");
                    sample(&body, cpu)
                        .filter(|(v, _)| *v > 0.0)
                        .map(|_| body)
                })
                .await;
                eprintln!("first scrape:\n{first}");
                let (cpu1, ts1) = sample(&first, cpu).unwrap();
                assert!(ts1.unwrap() > 1_700_000_000_000, "{first}");
                let (mem1, _) = sample(&first, mem).expect("the working set");
                assert!(mem1 > 0.0, "{first}");
                assert!(first.ends_with("resource_scrape_error 0\n"), "{first}");
                for node_line in ["node_cpu_usage_seconds_total ", "node_memory_working_set_bytes "] {
                    let (v, ts) = sample(&first, node_line)
                        .unwrap_or_else(|| panic!("no {node_line}in\n{first}"));
                    assert!(v > 0.0 && ts.is_some(), "{first}");
                }
                let (start, _) = sample(
                    &first,
                    "container_start_time_seconds{container=\"spin\",namespace=\"load\",pod=\"burner\"} ",
                )
                .expect("the start time");
                assert!(start > 1.7e9, "{first}");
                let pod_cpu = "pod_cpu_usage_seconds_total{namespace=\"load\",pod=\"burner\"} ";
                assert!(sample(&first, pod_cpu).unwrap().0 >= cpu1, "{first}");
                assert!(
                    sample(&first, "pod_memory_working_set_bytes{namespace=\"load\",pod=\"burner\"} ")
                        .unwrap()
                        .0
                        > 0.0,
                    "{first}"
                );

                // the counter grows while the loop spins
                let cpu2 = until("CPU time growing", Duration::from_secs(60), || async {
                    let (_, body) = http_get(addr, "/metrics/resource").await;
                    sample(&body, cpu).map(|s| s.0).filter(|v| *v > cpu1)
                })
                .await;
                eprintln!("figure: container CPU {cpu1} s, then {cpu2} s");

                // the summary holds the same pod and container
                let (status, body) = http_get(addr, "/stats/summary").await;
                assert_eq!(status, "HTTP/1.0 200 OK", "{body}");
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert_eq!(v["node"]["nodeName"], "node-1");
                assert!(v["node"]["memory"]["workingSetBytes"].as_u64().unwrap() > 0);
                let pod = v["pods"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|p| p["podRef"]["name"] == "burner")
                    .unwrap_or_else(|| panic!("no burner in {body}"));
                assert_eq!(pod["podRef"]["namespace"], "load");
                assert_eq!(pod["podRef"]["uid"], "uid-burner");
                assert_eq!(pod["containers"][0]["name"], "spin");
                assert!(
                    pod["containers"][0]["cpu"]["usageCoreNanoSeconds"]
                        .as_u64()
                        .unwrap()
                        > 0
                );

                token.cancel();
                let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
                server.abort();
                support::remove_all_sandboxes(&*runtime).await;
            })
    })
    .expect("run in netns");
    drop(g);
}
