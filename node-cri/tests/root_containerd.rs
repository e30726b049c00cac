//! Root tests: [`CriClient`] against a real containerd 1.6 (with runc and CNI), started privately
//! by `node_test_support::ContainerdFixture` inside its own network and mount namespaces.
//!
//! Needs root, containerd, runc, the CNI plugins, docker-registry and busybox-static; each test
//! starts with `ContainerdFixture::require`.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::pod_fixture;
use common::pod_fixture::{
    Pod, container_status, create_container, exec, image_spec as spec, is_rfc3339_nano, labels,
    parse_cri_log, remove_pod, sandbox_status, trimmed, try_run_pod, wait_exited, wait_running,
    wait_state,
};
use node_core::{ImageBackend, RuntimeBackend, RuntimeError, cri};
use node_cri::client::timing::{PodStartSpec, measure_pod_start};
use node_cri::{CriClient, CriClientConfig};
use node_test_support::{ContainerdFixture, TestImage};

const NS: &str = "nodekit-test";

/// Start a fixture and connect a client to it; `None` when the test is skipped.
async fn setup(test: &str) -> Option<(ContainerdFixture, CriClient)> {
    if !ContainerdFixture::require(test) {
        return None;
    }
    let fixture = ContainerdFixture::start().expect("start containerd");
    let client = CriClient::connect(CriClientConfig {
        endpoint: fixture.endpoint(),
        connect_timeout: Duration::from_secs(5),
        call_timeout: Duration::from_secs(60),
        image_pull_timeout: Duration::from_secs(120),
    })
    .await
    .unwrap_or_else(|e| panic!("connect: {e}\n{}", fixture.log_tail(30)));
    Some((fixture, client))
}

/// Push a busybox image (with an index page for httpd) and pull it through the client.
async fn busybox(f: &ContainerdFixture, c: &CriClient) -> String {
    let img = TestImage::busybox()
        .file("/www/index.html", "hello from a nodekit pod\n", 0o644)
        .build()
        .unwrap();
    let reference = f.push(&img, "nodekit/busybox", "1.0").unwrap();
    c.pull_image(spec(&reference), None, None)
        .await
        .unwrap_or_else(|e| panic!("pull {reference}: {e}\n{}", f.log_tail(20)));
    reference
}

/// [`setup`] and [`busybox`]: the fixture, the client and the image; `None` when the test is
/// skipped.
async fn setup_with_busybox(test: &str) -> Option<(ContainerdFixture, CriClient, String)> {
    let (f, c) = setup(test).await?;
    let image = busybox(&f, &c).await;
    Some((f, c, image))
}

fn sandbox_config(
    f: &ContainerdFixture,
    name: &str,
    pod_labels: &[(&str, &str)],
) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        labels: labels(pod_labels),
        ..pod_fixture::sandbox_config(
            name,
            &format!("uid-{name}-{}", std::process::id()),
            NS,
            &f.pod_log_dir(name).unwrap().display().to_string(),
            f.cgroup_parent(),
        )
    }
}

fn container_config(
    name: &str,
    image: &str,
    command: &[&str],
    ctr_labels: &[(&str, &str)],
) -> cri::ContainerConfig {
    cri::ContainerConfig {
        labels: labels(ctr_labels),
        ..pod_fixture::container_config(name, image, command, &format!("{name}.log"))
    }
}

async fn pod_ip(c: &CriClient, pod: &str) -> IpAddr {
    let st = sandbox_status(c, pod).await;
    st.network.unwrap().ip.parse().unwrap()
}

fn in_subnet(ip: IpAddr, subnet: &str) -> bool {
    let (net, _) = subnet.split_once('/').unwrap();
    let net: std::net::Ipv4Addr = net.parse().unwrap();
    matches!(ip, IpAddr::V4(v4) if v4.octets()[..3] == net.octets()[..3])
}

/// An HTTP GET from inside the fixture's network namespace (where the CNI bridge is).
fn http_get(f: &ContainerdFixture, addr: SocketAddr) -> String {
    f.netns()
        .run_in(move || {
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                let attempt = (|| -> std::io::Result<String> {
                    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
                    s.set_read_timeout(Some(Duration::from_secs(5)))?;
                    s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")?;
                    let mut body = String::new();
                    s.read_to_string(&mut body)?;
                    Ok(body)
                })();
                match attempt {
                    Ok(body) => return body,
                    Err(e) if Instant::now() > deadline => panic!("GET {addr}: {e}"),
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        })
        .unwrap()
}

#[tokio::test]
async fn version_status_and_conditions() {
    let Some((_f, c)) = setup("version_status_and_conditions").await else {
        return;
    };
    assert_eq!(c.runtime_name(), "containerd");
    assert_eq!(c.version_info().runtime_api_version, "v1");
    assert!(
        c.runtime_version().starts_with("1.6"),
        "{}",
        c.runtime_version()
    );
    let v = c.version().await.unwrap();
    assert_eq!(v.runtime_api_version, "v1");
    let cond = c.conditions().await.unwrap();
    assert!(cond.runtime_ready, "{:?}", cond.why_not("RuntimeReady"));
    assert!(cond.network_ready, "{:?}", cond.why_not("NetworkReady"));
    assert!(c.runtime_ready().await.unwrap());
    assert!(c.network_ready().await.unwrap());
    // verbose status carries containerd's config, including our CNI conf dir
    let verbose = c.status(true).await.unwrap();
    let info = verbose
        .info
        .values()
        .cloned()
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        info.contains("restrictOOMScoreAdj") || info.contains("restrict_oom_score_adj"),
        "{info}"
    );
    assert!(c.status(false).await.unwrap().info.is_empty());
    // the pod CIDR update is accepted (containerd keeps its CNI config file)
    c.update_runtime_config(cri::RuntimeConfig {
        network_config: Some(cri::NetworkConfig {
            pod_cidr: "10.250.0.0/24".into(),
        }),
    })
    .await
    .unwrap();
    // containerd 1.6 has no container event stream: Unimplemented, which the kubelet takes as
    // "relist only" (containerd 1.7+ with evented PLEG enabled would stream)
    match c.get_container_events().await {
        Err(RuntimeError::Unimplemented(m)) => assert_eq!(m, "GetContainerEvents"),
        Err(e) => panic!("GetContainerEvents: {e}"),
        Ok(_) => panic!("containerd 1.6 streamed container events"),
    }
}

#[tokio::test]
async fn images_pull_status_list_remove() {
    let Some((f, c)) = setup("images_pull_status_list_remove").await else {
        return;
    };
    let img = TestImage::busybox()
        .file("/hello.txt", "hi\n", 0o644)
        .build()
        .unwrap();
    let reference = f.push(&img, "nodekit/hello", "2.0").unwrap();
    let absent = async || {
        c.image_status(spec(&reference), false)
            .await
            .unwrap()
            .image
            .is_none()
    };
    // absent before the pull
    assert!(absent().await);
    let image_ref = c.pull_image(spec(&reference), None, None).await.unwrap();
    assert!(image_ref.starts_with("sha256:"), "{image_ref}");
    let st = c.image_status(spec(&reference), true).await.unwrap();
    let image = st.image.expect("image present after the pull");
    assert_eq!(image.id, image_ref);
    assert!(
        image.repo_tags.contains(&reference),
        "{:?}",
        image.repo_tags
    );
    // the registry's manifest digest is what containerd knows the image by
    let digest = format!("{}/nodekit/hello@{}", f.registry().host(), img.digest());
    assert!(
        image.repo_digests.contains(&digest),
        "{:?} lacks {digest}",
        image.repo_digests
    );
    assert!(image.size > 0);
    assert!(!st.info.is_empty(), "verbose image status has info");
    let all = c.list_images(None).await.unwrap();
    assert!(all.iter().any(|i| i.id == image_ref));
    let filtered = c
        .list_images(Some(cri::ImageFilter {
            image: Some(spec(&reference)),
        }))
        .await
        .unwrap();
    assert_eq!(filtered.len(), 1, "{filtered:?}");
    let fs = c.image_fs_info().await.unwrap();
    // (containerd samples the usage every 10 s, so the numbers may still be zero right after a pull)
    assert!(
        !fs.image_filesystems.is_empty() && fs.image_filesystems[0].used_bytes.is_some(),
        "{fs:?}"
    );
    assert!(
        fs.image_filesystems[0]
            .fs_id
            .as_ref()
            .unwrap()
            .mountpoint
            .starts_with(&f.dir().display().to_string()),
        "{fs:?}"
    );
    c.remove_image(spec(&reference)).await.unwrap();
    assert!(absent().await);
    // removing an absent image succeeds
    c.remove_image(spec(&reference)).await.unwrap();
}

#[tokio::test]
async fn pod_serves_tcp_execs_logs_and_is_removed() {
    let Some((f, c, image)) = setup_with_busybox("pod_serves_tcp_execs_logs_and_is_removed").await
    else {
        return;
    };
    let sandbox = sandbox_config(&f, "web", &[("app", "web")]);
    let pod = Pod::run(&c, sandbox.clone()).await;

    let st = c.pod_sandbox_status(&pod.id, true).await.unwrap();
    let status = st.status.clone().unwrap();
    assert_eq!(status.state, cri::PodSandboxState::SandboxReady as i32);
    assert_eq!(status.metadata.as_ref().unwrap().name, "web");
    let ip = pod_ip(&c, &pod.id).await;
    assert!(
        in_subnet(ip, f.subnet()),
        "pod IP {ip} outside {}",
        f.subnet()
    );
    assert!(!st.info.is_empty(), "verbose sandbox status has info");

    let server = container_config(
        "server",
        &image,
        &[
            "sh",
            "-c",
            // serve, and print what an exec drops into /tmp/say (to write the log on demand)
            "echo server starting; echo to stderr >&2; httpd -f -p 8080 -h /www & \
             while true; do if [ -f /tmp/say ]; then cat /tmp/say; rm -f /tmp/say; fi; sleep 0.1; done",
        ],
        &[("role", "server")],
    );
    let id = pod.start(server).await;
    let running = wait_running(&c, &id).await;
    assert_eq!(running.image.as_ref().unwrap().image, image);

    // TCP on the pod IP, reached from containerd's namespace over the CNI bridge
    let answer = http_get(&f, SocketAddr::new(ip, 8080));
    assert!(
        answer.starts_with("HTTP/1.") && answer.contains("hello from a nodekit pod"),
        "{answer}"
    );

    // exec_sync: stdout, stderr and the exit code, inside the pod's network namespace
    let r = exec(&c, &id, &["sh", "-c", "echo out; echo err >&2; exit 3"]).await;
    assert_eq!(
        (r.exit_code, r.stdout.as_slice(), r.stderr.as_slice()),
        (3, &b"out\n"[..], &b"err\n"[..])
    );
    let r = exec(&c, &id, &["ip", "-o", "addr"]).await;
    let addrs = String::from_utf8_lossy(&r.stdout);
    assert!(addrs.contains(&format!("inet {ip}/")), "{addrs}");
    assert!(
        addrs.contains("lo") && addrs.contains("inet 127.0.0.1/8"),
        "loopback is up in the pod: {addrs}"
    );
    let r = exec(&c, &id, &["hostname"]).await;
    assert_eq!(trimmed(&r.stdout), "web");
    // an exec that outlives its timeout is cut short
    let started = Instant::now();
    let r = c
        .exec_sync(
            &id,
            vec!["sleep".into(), "30".into()],
            Duration::from_secs(1),
        )
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "exec timeout not applied"
    );
    assert!(r.is_err() || r.as_ref().unwrap().exit_code != 0, "{r:?}");

    // the log file in the CRI format
    let st = container_status(&c, &id).await;
    assert!(st.log_path.ends_with("server.log"), "{}", st.log_path);
    let deadline = Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let lines = parse_cri_log(&std::fs::read_to_string(&st.log_path).unwrap_or_default());
        if lines.len() >= 2 || Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        lines
            .iter()
            .all(|(t, _, tag, _)| is_rfc3339_nano(t) && (tag == "F" || tag == "P")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|(_, s, tag, l)| s == "stdout" && tag == "F" && l == "server starting"),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|(_, s, tag, l)| s == "stderr" && tag == "F" && l == "to stderr"),
        "{lines:?}"
    );
    // the log can be reopened (after a rotation)
    std::fs::rename(&st.log_path, format!("{}.1", st.log_path)).unwrap();
    c.reopen_container_log(&id).await.unwrap();
    // the main process prints a new line
    let r = c
        .exec_sync(
            &id,
            vec![
                "sh".into(),
                "-c".into(),
                "echo after rotation > /tmp/say".into(),
            ],
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(r.exit_code, 0, "{r:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&st.log_path)
        .unwrap_or_default()
        .contains("stdout F after rotation")
    {
        assert!(
            Instant::now() < deadline,
            "no line in the reopened log: {:?} / rotated: {:?}",
            std::fs::read_to_string(&st.log_path),
            std::fs::read_to_string(format!("{}.1", st.log_path))
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // streaming endpoints answer with URLs of containerd's streaming server
    let exec = c
        .exec(cri::ExecRequest {
            container_id: id.clone(),
            cmd: vec!["sh".into()],
            stdout: true,
            stderr: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        exec.url.starts_with("http://127.0.0.1:") && exec.url.contains("/exec/"),
        "{}",
        exec.url
    );
    let attach = c
        .attach(cri::AttachRequest {
            container_id: id.clone(),
            stdout: true,
            stderr: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(attach.url.contains("/attach/"), "{}", attach.url);
    let pf = c
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: pod.id.clone(),
            port: vec![8080],
        })
        .await
        .unwrap();
    assert!(pf.url.contains("/portforward/"), "{}", pf.url);

    // stats and resource updates, checked in the container's cgroup
    let stats = c.container_stats(&id).await.unwrap();
    assert_eq!(stats.attributes.as_ref().unwrap().id, id);
    assert!(
        stats
            .memory
            .as_ref()
            .is_some_and(|m| m.working_set_bytes.is_some()),
        "{stats:?}"
    );
    let all = c.list_container_stats(None).await.unwrap();
    assert!(all.iter().any(|s| s.attributes.as_ref().unwrap().id == id));
    match c.pod_sandbox_stats(&pod.id).await {
        Ok(s) => assert_eq!(s.attributes.unwrap().id, pod.id),
        Err(RuntimeError::Unimplemented(m)) => assert_eq!(m, "PodSandboxStats"),
        Err(e) => panic!("pod sandbox stats: {e}"),
    }
    match c.list_pod_sandbox_stats(None).await {
        Ok(s) => assert!(
            s.iter()
                .any(|s| s.attributes.as_ref().unwrap().id == pod.id)
        ),
        Err(RuntimeError::Unimplemented(m)) => assert_eq!(m, "ListPodSandboxStats"),
        Err(e) => panic!("list pod sandbox stats: {e}"),
    }
    c.update_container_resources(cri::UpdateContainerResourcesRequest {
        container_id: id.clone(),
        linux: Some(cri::LinuxContainerResources {
            cpu_shares: 512,
            memory_limit_in_bytes: 64 << 20,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    let cg = |ctrl: &str, file: &str| {
        let path = format!("/sys/fs/cgroup/{ctrl}{}/{id}/{file}", f.cgroup_parent());
        std::fs::read_to_string(&path)
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|e| panic!("{path}: {e}"))
    };
    if std::path::Path::new("/sys/fs/cgroup/cpu").exists() {
        assert_eq!(cg("cpu", "cpu.shares"), "512");
        assert_eq!(
            cg("memory", "memory.limit_in_bytes"),
            (64u64 << 20).to_string()
        );
    } else {
        assert_eq!(cg("", "memory.max"), (64u64 << 20).to_string());
    }

    // stop, remove: gone from the lists, the veth gone from the bridge
    c.stop_container(&id, Duration::from_secs(5)).await.unwrap();
    let stopped = wait_state(
        &c,
        &id,
        cri::ContainerState::ContainerExited,
        Duration::from_secs(10),
    )
    .await;
    assert_ne!(stopped.finished_at, 0);
    c.remove_container(&id).await.unwrap();
    assert!(
        c.container_status(&id, false)
            .await
            .unwrap_err()
            .is_not_found()
    );
    // removing again is fine, as is stopping again
    c.remove_container(&id).await.unwrap();
    assert!(
        !f.netns()
            .sh(&format!("ip -o link show master {}", f.bridge()))
            .unwrap()
            .trim()
            .is_empty()
    );
    pod.remove().await;
    assert!(c.list_pod_sandbox(None).await.unwrap().is_empty());
    assert!(
        c.pod_sandbox_status(&pod.id, false)
            .await
            .unwrap_err()
            .is_not_found()
    );
    let veths = f
        .netns()
        .sh(&format!("ip -o link show master {}", f.bridge()))
        .unwrap();
    assert!(veths.trim().is_empty(), "veths left on the bridge: {veths}");
    // the pod's network namespace mount is gone from containerd's state dir
    let netns_dir = f.dir().join("state/io.containerd.grpc.v1.cri/netns");
    let left: Vec<_> = std::fs::read_dir(&netns_dir)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "netns left: {left:?}");
}

/// `StopContainer` with `grace`: how long the call took, and the status, exited within 5 s
/// after it.
async fn stop_timed(c: &CriClient, id: &str, grace: Duration) -> (Duration, cri::ContainerStatus) {
    let t = Instant::now();
    c.stop_container(id, grace).await.unwrap();
    let took = t.elapsed();
    let exited = cri::ContainerState::ContainerExited;
    (
        took,
        wait_state(c, id, exited, Duration::from_secs(5)).await,
    )
}

#[tokio::test]
async fn stop_grace_period_and_exit_codes() {
    let Some((f, c, image)) = setup_with_busybox("stop_grace_period_and_exit_codes").await else {
        return;
    };
    let pod = Pod::run(&c, sandbox_config(&f, "stopper", &[])).await;

    // traps SIGTERM and exits 0 by itself
    let polite = pod
        .start(container_config(
            "polite",
            &image,
            &[
                "sh",
                "-c",
                "trap 'echo got TERM; exit 0' TERM; echo ready; while true; do sleep 0.1; done",
            ],
            &[],
        ))
        .await;
    // ignores SIGTERM: SIGKILLed after the grace period
    let stubborn = pod
        .start(container_config(
            "stubborn",
            &image,
            &[
                "sh",
                "-c",
                "trap '' TERM; echo ready; while true; do sleep 0.1; done",
            ],
            &[],
        ))
        .await;
    // exits non-zero on its own, and one that exits zero
    let failing = pod
        .start(container_config(
            "failing",
            &image,
            &["sh", "-c", "echo bye; exit 7"],
            &[],
        ))
        .await;
    let done = pod
        .start(container_config("done", &image, &["true"], &[]))
        .await;
    for id in [&polite, &stubborn] {
        wait_running(&c, id).await;
    }
    // give the shells time to install their traps ("ready" is printed after the trap)
    for name in ["polite", "stubborn"] {
        let log = std::path::Path::new(&pod.config.log_directory).join(format!("{name}.log"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("stdout F ready")
        {
            assert!(Instant::now() < deadline, "{name} never got ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let (polite_took, st) = stop_timed(&c, &polite, Duration::from_secs(20)).await;
    assert_eq!(st.exit_code, 0, "{st:?}");
    assert_eq!(st.reason, "Completed");
    assert!(
        polite_took < Duration::from_secs(15),
        "the SIGTERM handler was not used: {polite_took:?}"
    );
    let polite_log = std::fs::read_to_string(&st.log_path).unwrap();
    assert!(polite_log.contains("stdout F got TERM"), "{polite_log}");

    let (stubborn_took, st) = stop_timed(&c, &stubborn, Duration::from_secs(2)).await;
    assert_eq!(st.exit_code, 137, "SIGKILL: {st:?}");
    assert_eq!(st.reason, "Error");
    assert!(
        stubborn_took >= Duration::from_millis(1900),
        "killed before the grace period ended: {stubborn_took:?}"
    );

    let st = wait_exited(&c, &failing).await;
    assert_eq!((st.exit_code, st.reason.as_str()), (7, "Error"), "{st:?}");
    // (containerd may record the start after a fast exit: only check both are set)
    assert!(st.finished_at > 0 && st.started_at > 0, "{st:?}");
    let st = wait_exited(&c, &done).await;
    assert_eq!(
        (st.exit_code, st.reason.as_str()),
        (0, "Completed"),
        "{st:?}"
    );

    // stopping an exited container again is fine
    c.stop_container(&stubborn, Duration::from_secs(1))
        .await
        .unwrap();
    pod.remove().await;
    assert!(
        c.list_containers(None).await.unwrap().is_empty(),
        "removing the pod removes its containers"
    );
}

#[tokio::test]
async fn lists_filter_by_labels_state_and_pod() {
    let Some((f, c, image)) = setup_with_busybox("lists_filter_by_labels_state_and_pod").await
    else {
        return;
    };
    let a_cfg = sandbox_config(&f, "pod-a", &[("team", "a"), ("tier", "web")]);
    let b_cfg = sandbox_config(&f, "pod-b", &[("team", "b"), ("tier", "web")]);
    let a = Pod::run(&c, a_cfg.clone()).await;
    let b = Pod::run(&c, b_cfg.clone()).await;
    let sleeper = ["sleep", "3600"];
    // container `name` running `command` in `pod`, labelled with its `role`
    let start = async |pod: &Pod<'_>, name: &str, command: &[&str], role: &str| {
        pod.start(container_config(name, &image, command, &[("role", role)]))
            .await
    };
    let a1 = start(&a, "one", &sleeper, "worker").await;
    let a2 = start(&a, "two", &["true"], "init").await;
    let b1 = start(&b, "one", &sleeper, "worker").await;
    wait_exited(&c, &a2).await;
    for id in [&a1, &b1] {
        wait_running(&c, id).await;
    }

    let ids = |v: Vec<cri::PodSandbox>| {
        let mut v: Vec<String> = v.into_iter().map(|p| p.id).collect();
        v.sort();
        v
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let pods = |sel: &[(&str, &str)]| cri::PodSandboxFilter {
        label_selector: labels(sel),
        ..Default::default()
    };
    assert_eq!(
        ids(c.list_pod_sandbox(None).await.unwrap()),
        sorted(vec![a.id.clone(), b.id.clone()])
    );
    assert_eq!(
        ids(c
            .list_pod_sandbox(Some(pods(&[("team", "a")])))
            .await
            .unwrap()),
        vec![a.id.clone()]
    );
    assert_eq!(
        ids(c
            .list_pod_sandbox(Some(pods(&[("tier", "web")])))
            .await
            .unwrap()),
        sorted(vec![a.id.clone(), b.id.clone()])
    );
    assert!(
        c.list_pod_sandbox(Some(pods(&[("team", "a"), ("tier", "db")])))
            .await
            .unwrap()
            .is_empty()
    );
    let by_id = cri::PodSandboxFilter {
        id: b.id.clone(),
        ..Default::default()
    };
    assert_eq!(
        ids(c.list_pod_sandbox(Some(by_id)).await.unwrap()),
        vec![b.id.clone()]
    );

    let cids = |v: Vec<cri::Container>| {
        let mut v: Vec<String> = v.into_iter().map(|c| c.id).collect();
        v.sort();
        v
    };
    let ctrs = |sel: &[(&str, &str)]| cri::ContainerFilter {
        label_selector: labels(sel),
        ..Default::default()
    };
    assert_eq!(
        cids(
            c.list_containers(Some(ctrs(&[("role", "worker")])))
                .await
                .unwrap()
        ),
        sorted(vec![a1.clone(), b1.clone()])
    );
    assert_eq!(
        cids(
            c.list_containers(Some(ctrs(&[("role", "init")])))
                .await
                .unwrap()
        ),
        vec![a2.clone()]
    );
    let in_a = cri::ContainerFilter {
        pod_sandbox_id: a.id.clone(),
        ..Default::default()
    };
    assert_eq!(
        cids(c.list_containers(Some(in_a)).await.unwrap()),
        sorted(vec![a1.clone(), a2.clone()])
    );
    let running = cri::ContainerFilter {
        state: Some(cri::ContainerStateValue {
            state: cri::ContainerState::ContainerRunning as i32,
        }),
        ..Default::default()
    };
    assert_eq!(
        cids(c.list_containers(Some(running)).await.unwrap()),
        sorted(vec![a1.clone(), b1.clone()])
    );
    let exited_in_a = cri::ContainerFilter {
        pod_sandbox_id: a.id.clone(),
        state: Some(cri::ContainerStateValue {
            state: cri::ContainerState::ContainerExited as i32,
        }),
        ..Default::default()
    };
    assert_eq!(
        cids(c.list_containers(Some(exited_in_a)).await.unwrap()),
        vec![a2.clone()]
    );
    // the pod's labels are on its containers' entries too (kubelet relies on its own labels only)
    let listed = c
        .list_containers(Some(ctrs(&[("role", "worker")])))
        .await
        .unwrap();
    assert!(
        listed
            .iter()
            .all(|x| x.labels.get("role").map(String::as_str) == Some("worker"))
    );

    // a stopped pod is NotReady, and the state filter sees it
    c.stop_pod_sandbox(&b.id).await.unwrap();
    let not_ready = cri::PodSandboxFilter {
        state: Some(cri::PodSandboxStateValue {
            state: cri::PodSandboxState::SandboxNotready as i32,
        }),
        ..Default::default()
    };
    assert_eq!(
        ids(c.list_pod_sandbox(Some(not_ready)).await.unwrap()),
        vec![b.id.clone()]
    );
    a.remove().await;
    b.remove().await;
    assert!(c.list_pod_sandbox(None).await.unwrap().is_empty());
}

#[tokio::test]
async fn containerd_restart_client_reconnects_and_pod_survives() {
    let Some((mut f, c, image)) =
        setup_with_busybox("containerd_restart_client_reconnects_and_pod_survives").await
    else {
        return;
    };
    let pod = Pod::run(&c, sandbox_config(&f, "survivor", &[("restart", "yes")])).await;
    let id = pod
        .start(container_config(
            "server",
            &image,
            &["httpd", "-f", "-p", "8080", "-h", "/www"],
            &[],
        ))
        .await;
    wait_running(&c, &id).await;
    let ip = pod_ip(&c, &pod.id).await;

    // containerd down: calls fail fast and typed, they do not hang
    f.kill_containerd();
    let t = Instant::now();
    let err = c.list_pod_sandbox(None).await.unwrap_err();
    assert!(matches!(err, RuntimeError::Unavailable(_)), "{err:?}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    // the pod keeps serving without containerd (the shim holds it)
    assert!(http_get(&f, SocketAddr::new(ip, 8080)).contains("hello from a nodekit pod"));

    f.start_containerd().unwrap();
    // the same client: reconnects on its own
    let filter = cri::PodSandboxFilter {
        label_selector: labels(&[("restart", "yes")]),
        ..Default::default()
    };
    let pods = c.list_pod_sandbox(Some(filter)).await.unwrap();
    assert_eq!(pods.len(), 1, "{pods:?}");
    assert_eq!(pods[0].id, pod.id);
    assert_eq!(pods[0].state, cri::PodSandboxState::SandboxReady as i32);
    let st = wait_running(&c, &id).await;
    assert_eq!(st.id, id);
    assert_eq!(pod_ip(&c, &pod.id).await, ip);
    let r = exec(&c, &id, &["echo", "still here"]).await;
    assert_eq!(r.stdout, b"still here\n");

    // once more; the first call afterwards is one the client does not retry: the channel has
    // noticed the dead connection and reconnects by itself
    f.restart().unwrap();
    let r = exec(&c, &id, &["echo", "again"]).await;
    assert_eq!(r.stdout, b"again\n");
    assert!(c.conditions().await.unwrap().runtime_ready);
    let pods = c.list_pod_sandbox(None).await.unwrap();
    assert_eq!(
        pods.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
        vec![pod.id.as_str()]
    );
    pod.remove().await;
    assert!(c.list_containers(None).await.unwrap().is_empty());
}

#[tokio::test]
async fn bad_input_gets_typed_errors() {
    let Some((f, c)) = setup("bad_input_gets_typed_errors").await else {
        return;
    };
    // a missing image in a reachable registry: ImagePull naming the image
    let missing = f.image_ref("nodekit/missing:1.0");
    match c.pull_image(spec(&missing), None, None).await {
        Err(RuntimeError::ImagePull { image, message }) => {
            assert_eq!(image, missing);
            assert!(
                message.contains("not found") || message.contains("404"),
                "{message}"
            );
        }
        other => panic!("pull of a missing image: {other:?}"),
    }
    // malformed references: InvalidArgument naming the reference, with containerd's reason
    for bad in [
        "UPPER/Case:tag",
        "nodekit/busybox:bad tag",
        "registry:port:extra/x",
    ] {
        match c.pull_image(spec(bad), None, None).await {
            Err(RuntimeError::InvalidArgument(m)) => {
                assert!(
                    m.contains(&format!("{bad:?}")) && m.contains("invalid reference format"),
                    "{bad}: {m}"
                )
            }
            other => panic!("pull of {bad:?}: {other:?}"),
        }
    }
    match c.pull_image(spec(" "), None, None).await {
        Err(RuntimeError::InvalidArgument(m)) => {
            assert!(m.contains("empty image reference"), "{m}")
        }
        other => panic!("pull of an empty reference: {other:?}"),
    }
    // unknown ids
    let unknown = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    for (what, err) in [
        (
            "container_status",
            c.container_status(unknown, false)
                .await
                .map(|_| ())
                .unwrap_err(),
        ),
        (
            "start_container",
            c.start_container(unknown).await.unwrap_err(),
        ),
        (
            "exec_sync",
            c.exec_sync(unknown, vec!["true".into()], Duration::from_secs(5))
                .await
                .map(|_| ())
                .unwrap_err(),
        ),
        (
            "container_stats",
            c.container_stats(unknown).await.map(|_| ()).unwrap_err(),
        ),
    ] {
        match err {
            RuntimeError::NotFound {
                kind: "container",
                id,
            } => assert_eq!(id, unknown, "{what}"),
            e => panic!("{what} of an unknown container: {e:?}"),
        }
    }
    match c.pod_sandbox_status(unknown, false).await {
        Err(RuntimeError::NotFound {
            kind: "pod sandbox",
            id,
        }) => assert_eq!(id, unknown),
        other => panic!("status of an unknown pod: {other:?}"),
    }
    // removing unknown objects succeeds (CRI: idempotent); stopping too
    c.remove_container(unknown).await.unwrap();
    c.remove_pod_sandbox(unknown).await.unwrap();
    // a container in a pod that does not exist
    let image = busybox(&f, &c).await;
    let sandbox = sandbox_config(&f, "ghost", &[]);
    let err = create_container(
        &c,
        unknown,
        Some(&sandbox),
        container_config("x", &image, &["true"], &[]),
    )
    .await
    .unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    // a container whose image is not present: NotFound names the image, not the pod
    let pod = Pod::run(&c, sandbox.clone()).await;
    let never = f.image_ref("nodekit/never-pulled:1");
    let err = create_container(
        &c,
        &pod.id,
        Some(&sandbox),
        container_config("x", &never, &["true"], &[]),
    )
    .await
    .unwrap_err();
    match err {
        RuntimeError::NotFound { kind: "image", id } => assert_eq!(id, never),
        e => panic!("create with an absent image: {e:?}"),
    }
    // a container with no image at all
    let mut no_image = container_config("y", &image, &["true"], &[]);
    no_image.image = None;
    let err = create_container(&c, &pod.id, Some(&sandbox), no_image)
        .await
        .unwrap_err();
    match err {
        RuntimeError::InvalidArgument(m) => assert!(m.contains("\"y\" has no image"), "{m}"),
        e => panic!("create without an image: {e:?}"),
    }
    // the same container name twice: the name is reserved
    let first = pod
        .start(container_config("dup", &image, &["sleep", "60"], &[]))
        .await;
    let err = create_container(
        &c,
        &pod.id,
        Some(&sandbox),
        container_config("dup", &image, &["sleep", "60"], &[]),
    )
    .await
    .unwrap_err();
    match &err {
        RuntimeError::AlreadyExists(m) => {
            assert!(m.contains("is reserved for") && m.contains(&first), "{m}")
        }
        e => panic!("a second container named dup: {e:?}"),
    }
    // starting a running container again
    match c.start_container(&first).await.unwrap_err() {
        RuntimeError::FailedPrecondition(m) => {
            assert!(m.contains(&first) && m.contains("RUNNING"), "{m}")
        }
        e => panic!("start of a running container: {e:?}"),
    }
    pod.remove().await;
}

#[tokio::test]
async fn pod_start_timing_through_cri_client() {
    let Some((f, c, image)) = setup_with_busybox("pod_start_timing_through_cri_client").await
    else {
        return;
    };
    // the sandbox image too, so that no run pulls
    c.pull_image(spec(f.pause_image()), None, None)
        .await
        .unwrap();
    let log_dir = f.pod_log_dir("timing").unwrap();
    let mut spec = PodStartSpec::sleeping("timing", &image, &log_dir.display().to_string(), 10);
    spec.sandbox.linux.as_mut().unwrap().cgroup_parent = f.cgroup_parent().into();
    let timings = measure_pod_start(&c, &spec).await.unwrap();
    assert_eq!(timings.samples.len(), 10);
    assert!(
        timings
            .samples
            .iter()
            .all(|s| s.total >= s.run_pod_sandbox + s.create_container + s.start_container)
    );
    println!(
        "pod start through CriClient -> containerd {} (10 runs, noisy shared machine):\n{}",
        c.runtime_version(),
        timings.summary()
    );
    // every pod was removed after its sample
    assert!(c.list_pod_sandbox(None).await.unwrap().is_empty());
    // the client's own cost: one small round trip (Version) over the socket
    let mut rtt: Vec<Duration> = Vec::with_capacity(200);
    for _ in 0..200 {
        let t = Instant::now();
        c.version().await.unwrap();
        rtt.push(t.elapsed());
    }
    rtt.sort();
    println!(
        "Version round trip: p50 {:?} p90 {:?} (200 calls)",
        rtt[rtt.len() / 2],
        rtt[rtt.len() * 9 / 10]
    );
}

/// The pid in a verbose status's `info` JSON.
fn verbose_pid(info: &HashMap<String, String>) -> i32 {
    let v: serde_json::Value = serde_json::from_str(&info["info"]).unwrap();
    v["pid"].as_i64().unwrap_or_else(|| panic!("no pid in {v}")) as i32
}

#[tokio::test]
async fn fixture_drop_cleans_up_pods_left_running() {
    let Some((f, c, image)) = setup_with_busybox("fixture_drop_cleans_up_pods_left_running").await
    else {
        return;
    };
    let pod = Pod::run(&c, sandbox_config(&f, "leftover", &[])).await;
    let id = pod
        .start(container_config("sleeper", &image, &["sleep", "3600"], &[]))
        .await;
    wait_running(&c, &id).await;
    let pause_pid = verbose_pid(&c.pod_sandbox_status(&pod.id, true).await.unwrap().info);
    let ctr_pid = verbose_pid(&c.container_status(&id, true).await.unwrap().info);
    let shims = f.shim_pids();
    assert!(!shims.is_empty());
    let memory_cg = std::path::Path::new("/sys/fs/cgroup/memory")
        .join(f.cgroup_parent().trim_start_matches('/'));
    assert!(
        memory_cg.join(&id).exists(),
        "{} has no {id}",
        memory_cg.display()
    );
    let dir = f.dir().to_path_buf();
    let alive = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
    };
    assert!(alive(pause_pid) && alive(ctr_pid));
    drop(c);
    drop(f);
    for pid in [pause_pid, ctr_pid].into_iter().chain(shims) {
        assert!(!alive(pid), "pid {pid} survived the fixture");
    }
    assert!(!memory_cg.exists(), "{} left behind", memory_cg.display());
    assert!(!dir.exists(), "{} left behind", dir.display());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&dir.display().to_string()),
        "mounts left under {}",
        dir.display()
    );
}

/// Poll `network_ready` until it is `want`.
async fn wait_network_ready(c: &CriClient, want: bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let cond = c.conditions().await.unwrap();
        if cond.network_ready == want {
            if !want {
                let why = cond.why_not("NetworkReady").unwrap();
                assert!(why.contains("NetworkPluginNotReady"), "{why}");
            }
            return;
        }
        assert!(
            Instant::now() < deadline,
            "NetworkReady never became {want}: {cond:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn cni_failures_are_network_errors_and_network_ready_follows_the_config() {
    let Some((f, c)) =
        setup("cni_failures_are_network_errors_and_network_ready_follows_the_config").await
    else {
        return;
    };
    let conf = f.cni_conf_dir().join("10-nodekit.conflist");
    let good = std::fs::read_to_string(&conf).unwrap();
    assert!(c.network_ready().await.unwrap());
    c.pull_image(spec(f.pause_image()), None, None)
        .await
        .unwrap();

    // no CNI config at all: NetworkReady false, with containerd's reason; the runtime stays ready
    std::fs::remove_file(&conf).unwrap();
    wait_network_ready(&c, false).await;
    assert!(c.runtime_ready().await.unwrap());

    // a plugin that does not exist (the config is loaded: NetworkReady again): RunPodSandbox fails
    // with a Network error naming it
    let broken = good.replace(
        "\"type\": \"bridge\"",
        "\"type\": \"nodekit-no-such-plugin\"",
    );
    assert_ne!(broken, good);
    std::fs::write(&conf, &broken).unwrap();
    wait_network_ready(&c, true).await;
    let sandbox = sandbox_config(&f, "netfail", &[("net", "broken")]);
    let err = try_run_pod(&c, &sandbox).await.unwrap_err();
    match &err {
        RuntimeError::Network(m) => {
            assert!(
                m.contains("nodekit-no-such-plugin") && m.starts_with("RunPodSandbox: "),
                "{m}"
            )
        }
        e => panic!("run pod sandbox with a broken CNI config: {e:?}"),
    }

    // the good config back (through "no config", to know containerd reloaded): pods get an IP
    std::fs::remove_file(&conf).unwrap();
    wait_network_ready(&c, false).await;
    std::fs::write(&conf, &good).unwrap();
    wait_network_ready(&c, true).await;
    // containerd did not keep a ready sandbox for the failed run
    let filter = cri::PodSandboxFilter {
        label_selector: labels(&[("net", "broken")]),
        ..Default::default()
    };
    for p in c.list_pod_sandbox(Some(filter)).await.unwrap() {
        assert_eq!(
            p.state,
            cri::PodSandboxState::SandboxNotready as i32,
            "{p:?}"
        );
        remove_pod(&c, &p.id).await;
    }
    let pod = Pod::run(&c, sandbox_config(&f, "netok", &[])).await;
    assert!(in_subnet(pod_ip(&c, &pod.id).await, f.subnet()));
    pod.remove().await;
}
