//! 50 concurrent CRI clients (`CriClient`, each with its own connection) against one containerd
//! (`ContainerdFixture`, its own instance in its own namespaces), as root: every client makes
//! read calls in a loop (Version, ListPodSandbox, ListContainers, ImageStatus) and every fifth one
//! also runs, stops and removes a pod sandbox per round. No call may fail, every sandbox created
//! must be gone at the end; prints calls/s and the p50/p99 call latency.
//!
//! nodekit's own CRI server is on another branch at the time of writing: this load goes through
//! the CriClient -> containerd path.

use std::time::{Duration, Instant};

use node_core::{ImageBackend, RuntimeBackend, cri};
use node_cri::{CriClient, CriClientConfig};
use node_test_support::{ContainerdFixture, TestImage};

const CLIENTS: usize = 50;
const ROUNDS: usize = 10;

async fn client(f: &ContainerdFixture) -> CriClient {
    CriClient::connect(CriClientConfig {
        endpoint: f.endpoint(),
        connect_timeout: Duration::from_secs(10),
        call_timeout: Duration::from_secs(60),
        image_pull_timeout: Duration::from_secs(120),
    })
    .await
    .expect("connecting")
}

fn sandbox(f: &ContainerdFixture, name: &str) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}-{}", std::process::id()),
            namespace: "reliability".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: f.pod_log_dir(name).unwrap().display().to_string(),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: f.cgroup_parent().into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_clients_get_answers() {
    if !ContainerdFixture::require("fifty_concurrent_clients_get_answers") {
        return;
    }
    let f = ContainerdFixture::start().expect("start containerd");
    let first = client(&f).await;
    let image = f
        .push(
            &TestImage::busybox().build().unwrap(),
            "nodekit/busybox",
            "1",
        )
        .unwrap();
    first
        .pull_image(
            cri::ImageSpec {
                image: image.clone(),
                ..Default::default()
            },
            None,
            None,
        )
        .await
        .expect("pulling the image");

    let started = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let f = &f;
            let image = image.clone();
            async move {
                let c = client(f).await;
                let mut lat = vec![];
                let mut errors = vec![];
                for round in 0..ROUNDS {
                    macro_rules! timed {
                        ($what:expr, $call:expr) => {{
                            let t = Instant::now();
                            let r = $call.await;
                            lat.push(t.elapsed());
                            match r {
                                Ok(v) => Some(v),
                                Err(e) => {
                                    errors.push(format!("client {i} round {round} {}: {e}", $what));
                                    None
                                }
                            }
                        }};
                    }
                    timed!("Version", c.version());
                    timed!("ListPodSandbox", c.list_pod_sandbox(None));
                    timed!("ListContainers", c.list_containers(None));
                    timed!(
                        "ImageStatus",
                        c.image_status(
                            cri::ImageSpec {
                                image: image.clone(),
                                ..Default::default()
                            },
                            false
                        )
                    );
                    if i % 5 == 0 {
                        let name = format!("load-{i}-{round}");
                        let id = timed!(
                            "RunPodSandbox",
                            c.run_pod_sandbox(cri::RunPodSandboxRequest {
                                config: Some(sandbox(f, &name)),
                                runtime_handler: String::new(),
                            })
                        );
                        if let Some(id) = id {
                            timed!("StopPodSandbox", c.stop_pod_sandbox(&id));
                            timed!("RemovePodSandbox", c.remove_pod_sandbox(&id));
                        }
                    }
                }
                (lat, errors)
            }
        })
        .collect();
    let results = futures::future::join_all(tasks).await;
    let elapsed = started.elapsed();
    let mut lat: Vec<Duration> = results.iter().flat_map(|r| r.0.clone()).collect();
    let errors: Vec<String> = results.iter().flat_map(|r| r.1.clone()).collect();
    lat.sort();
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize];
    eprintln!(
        "{CLIENTS} clients x {ROUNDS} rounds: {} calls in {elapsed:?} ({:.0} calls/s), p50 {:?} p99 {:?} max {:?}, {} errors",
        lat.len(),
        lat.len() as f64 / elapsed.as_secs_f64(),
        pct(0.5),
        pct(0.99),
        lat.last().unwrap(),
        errors.len()
    );
    assert!(
        errors.is_empty(),
        "{} calls failed, e.g.:\n{}",
        errors.len(),
        errors[..errors.len().min(5)].join("\n")
    );
    let left = first.list_pod_sandbox(None).await.unwrap();
    assert!(left.is_empty(), "sandboxes left: {}", left.len());
    // every client got the same view as the others
    assert_eq!(lat.len(), CLIENTS * ROUNDS * 4 + (CLIENTS / 5) * ROUNDS * 3);
}
