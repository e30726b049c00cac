//! The kubelet's pod lifecycle end to end with containerd through `node_cri::CriClient` (needs
//! root, containerd, runc, the CNI plugins, docker-registry and busybox-static): a private
//! containerd (`ContainerdFixture`, its own namespace, registry, state and cgroup parent), pods
//! from a manifest directory, images pulled from the fixture's registry.
//!
//! The kubelet runs on a thread inside the fixture's network namespace (its probes reach the pod
//! IPs on the fixture's bridge); sandboxes get the fixture's cgroup parent through a runtime
//! wrapper (the kubelet itself names none). Everything goes with the fixture on drop.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::PodStatus;
use node_cri::CriClient;
use node_kubelet::{FileSource, FileSourceConfig, Kubelet, KubeletConfig};
use node_test_support::{ContainerdFixture, TestImage};

mod support;
use support::{Recorder, Running, WEB_POD, condition, container, containerd, is_ready, pod_yaml};

const NODE: &str = "ctrd-node";

/// `live`: its `app` fails its liveness probe once, as `toggler` stops serving the probed port
/// from 3 s to 6 s after it starts.
fn live_pod() -> String {
    pod_yaml(
        "live",
        1,
        r#"
  - name: toggler
    image: IMG
    command: [sh, -c, "httpd -f -p 9090 -h /var/www & p=$!; sleep 3; kill $p; sleep 3; exec httpd -f -p 9090 -h /var/www"]
  - name: app
    image: IMG
    command: [sleep, "1000000"]
    livenessProbe: {tcpSocket: {port: 9090}, initialDelaySeconds: 2, periodSeconds: 1, failureThreshold: 2}
"#,
    )
}

fn start_kubelet(
    f: &ContainerdFixture,
    client: Arc<CriClient>,
    manifests: &Path,
    work: &Path,
) -> Running {
    let rt = containerd::runtime(f, client.clone());
    let recorder = Recorder::new(&work.join("status"));
    let kubelet = Kubelet::builder(NODE)
        .source(Arc::new(FileSource::with_config(
            manifests,
            FileSourceConfig {
                node_name: NODE.into(),
                ..Default::default()
            },
        )))
        .runtime(rt.clone(), client)
        .status(Arc::new(recorder.clone()))
        .config(KubeletConfig {
            resolv_conf: work.join("resolv.conf"),
            pod_log_root: f.pod_log_dir("kubelet").unwrap(),
            ..Default::default()
        })
        .build()
        .unwrap();
    Running::start(kubelet, rt, recorder)
}

/// Container name -> (id, restart count, started at).
fn containers(s: &PodStatus) -> BTreeMap<String, (String, i32, String)> {
    s.container_statuses
        .iter()
        .flatten()
        .map(|c| {
            let started = c
                .state
                .as_ref()
                .and_then(|st| st.running.as_ref())
                .and_then(|r| r.started_at.as_ref())
                .map(|t| format!("{:?}", t.0))
                .unwrap_or_default();
            (
                c.name.clone(),
                (
                    c.container_id.clone().unwrap_or_default(),
                    c.restart_count,
                    started,
                ),
            )
        })
        .collect()
}

fn live_restarted_once(s: &PodStatus) -> bool {
    let c = container(s, "app");
    c.restart_count == 1 && c.ready && c.state.as_ref().is_some_and(|st| st.running.is_some())
}

#[test]
fn pod_lifecycle_with_containerd_through_the_cri_client() {
    if !ContainerdFixture::require("pod_lifecycle_with_containerd_through_the_cri_client") {
        return;
    }
    let f = ContainerdFixture::start().expect("containerd fixture");
    let image = f
        .push(
            &TestImage::busybox()
                .file("/var/www/index.html", "hello from containerd\n", 0o644)
                .build()
                .unwrap(),
            "nodekit/e2e",
            "1",
        )
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let manifests = work.path().join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(work.path().join("resolv.conf"), "nameserver 10.96.0.10\n").unwrap();
    std::fs::write(manifests.join("web.yaml"), WEB_POD.replace("IMG", &image)).unwrap();
    std::fs::write(
        manifests.join("live.yaml"),
        live_pod().replace("IMG", &image),
    )
    .unwrap();
    let fr = &f;
    let (manifests, work_dir) = (manifests.as_path(), work.path());
    containerd::in_netns(&f, || async move {
        let k = start_kubelet(fr, containerd::connect(fr).await, manifests, work_dir);
        // Ready (the image is pulled from the registry first)
        let (web, s) = k
            .wait_status(
                "web Ready",
                "web-ctrd-node",
                Duration::from_secs(120),
                is_ready,
            )
            .await;
        eprintln!(
            "figure: containerd pod Ready {:.2} s after the kubelet started (image pull included; debug build, shared machine)",
            k.started.elapsed().as_secs_f64()
        );
        for c in [
            "Initialized",
            "ContainersReady",
            "PodReadyToStartContainers",
        ] {
            assert_eq!(condition(&s, c).as_deref(), Some("True"), "{c}: {s:#?}");
        }
        let init = container(&s, "init");
        let done = init.state.as_ref().unwrap().terminated.as_ref().unwrap();
        assert_eq!(done.exit_code, 0);
        assert!(
            container(&s, "server")
                .container_id
                .as_deref()
                .unwrap()
                .starts_with("containerd://"),
            "{s:#?}"
        );
        let ip = s.pod_ip.clone().unwrap();
        let subnet: ipnet::IpNet = fr.subnet().parse().unwrap();
        assert!(subnet.contains(&ip.parse::<std::net::IpAddr>().unwrap()));

        // restart on liveness failure: exactly once
        let (live, s) = k
            .wait_status(
                "live restarted once",
                "live-ctrd-node",
                Duration::from_secs(60),
                live_restarted_once,
            )
            .await;
        let last = container(&s, "app")
            .last_state
            .as_ref()
            .unwrap()
            .terminated
            .clone()
            .unwrap();
        assert_ne!(last.container_id, container(&s, "app").container_id);

        // a new kubelet adopts both pods without restarting anything
        let before_web = containers(&k.recorder.latest("web-ctrd-node").unwrap().1);
        let before_live = containers(&s);
        k.stop().await;
        let k = start_kubelet(fr, containerd::connect(fr).await, manifests, work_dir);
        let (_, s) = k
            .wait_status(
                "web Ready again",
                "web-ctrd-node",
                Duration::from_secs(60),
                is_ready,
            )
            .await;
        assert_eq!(containers(&s), before_web, "web adopted as is");
        let (_, s) = k
            .wait_status(
                "live adopted",
                "live-ctrd-node",
                Duration::from_secs(60),
                live_restarted_once,
            )
            .await;
        assert_eq!(containers(&s), before_live, "live adopted as is");
        // and it stays so for a few probe periods
        tokio::time::sleep(Duration::from_secs(3)).await;
        for (name, before) in [
            ("web-ctrd-node", &before_web),
            ("live-ctrd-node", &before_live),
        ] {
            let (_, s) = k.recorder.latest(name).unwrap();
            assert_eq!(&containers(&s), before, "{name}: no restart after adoption");
        }

        // deletion terminates the pod and removes it from containerd
        let t0 = Instant::now();
        std::fs::remove_file(manifests.join("web.yaml")).unwrap();
        k.wait_deleted("web", &web.uid, Duration::from_secs(60))
            .await;
        eprintln!(
            "figure: containerd pod terminated {:.2} s after its file was deleted",
            t0.elapsed().as_secs_f64()
        );
        assert_eq!(k.sandboxes_of(&web.uid).await, 0);
        assert!(k.containers_of(&web.uid).await.is_empty());
        assert!(k.sandboxes_of(&live.uid).await > 0, "the other pod stays");

        std::fs::remove_file(manifests.join("live.yaml")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while k.sandboxes_of(&live.uid).await > 0 {
            assert!(Instant::now() < deadline, "live was not terminated");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        k.stop().await;
    });
}
