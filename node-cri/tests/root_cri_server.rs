//! Root tests of the CRI server in front of the native runtime: `CriClient` -> `CriServer` (a
//! temporary socket) -> `NativeRuntime` + `ImageStore`, with the native bridge CNI plugin.
//! Needs root, overlayfs, cgroups, busybox-static and docker-registry.
//!
//! Each test runs everything (the registry the image is pulled from, the server, the runtime,
//! the client) on a thread inside its own NetnsFixture, which is the node for the bridge
//! plugin: the bridge, veths, host-port rules and host-network pods stay in it. The runtime's
//! root and cgroups are removed on drop, panics included (`common::native`).
//!
//! After the whole pod lifecycle come the behaviours cri-tools' validation suite (`critest`,
//! pkg/validate) checks, one test each, all over gRPC: security context fields, exit codes,
//! logs, filters, DNS, hostname, host network, host ports.

mod common;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::native::{
    INIT, cgroups_left, log_entries, mounts_under, new_root, prerequisites, teardown,
    wait_log_entries,
};
use common::pod_fixture::{self, ContainerConfigExt, trimmed};
use common::server::Served;
use node_cni::{BridgeConfig, BridgePlugin};
use node_core::{ImageBackend, RuntimeBackend, RuntimeError, cri};
use node_cri::CriClient;
use node_cri::native::image::{ImageStore, ImageStoreConfig};
use node_cri::native::runtime::{NativeConfig, NativeRuntime};
use node_cri::server::{CriServer, CriServerConfig};
use node_test_support::{LocalRegistry, NetnsFixture, TestImage, require_command};

/// The pod subnet inside each test's namespace; the bridge's address is the node's.
const GATEWAY: &str = "10.66.0.1";

/// What a test gets: a client of the server, the pulled image, the runtime behind the server.
struct Cri {
    client: CriClient,
    /// The runtime, for calls that bypass the server (the latency figure).
    native: Arc<NativeRuntime>,
    /// The image reference, pulled through the ImageService.
    image: String,
    /// Where pod logs go (`<logs>/<pod>/<container>/0.log`).
    logs: PathBuf,
    cgroup_parent: String,
    root: PathBuf,
}

impl Cri {
    fn sandbox(&self, name: &str) -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "conformance".into(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: self.logs.join(name).display().to_string(),
            labels: HashMap::from([("app".into(), name.into())]),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn container(&self, name: &str, command: &[&str]) -> cri::ContainerConfig {
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: self.image.clone(),
                ..Default::default()
            }),
            command: command.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}/0.log"),
            labels: HashMap::from([("container".into(), name.into())]),
            linux: Some(cri::LinuxContainerConfig {
                security_context: Some(cri::LinuxContainerSecurityContext::default()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    async fn run_pod(&self, cfg: &cri::PodSandboxConfig) -> String {
        pod_fixture::try_run_pod(&self.client, cfg)
            .await
            .expect("RunPodSandbox")
    }

    async fn create(
        &self,
        pod: &str,
        pod_cfg: &cri::PodSandboxConfig,
        cfg: cri::ContainerConfig,
    ) -> Result<String, RuntimeError> {
        pod_fixture::create_container(&self.client, pod, Some(pod_cfg), cfg).await
    }

    /// Create and start a container.
    async fn start(
        &self,
        pod: &str,
        pod_cfg: &cri::PodSandboxConfig,
        cfg: cri::ContainerConfig,
    ) -> String {
        let id = self
            .create(pod, pod_cfg, cfg)
            .await
            .expect("CreateContainer");
        self.client
            .start_container(&id)
            .await
            .expect("StartContainer");
        id
    }

    /// A pod named `name` with one container running `sleep 1000` configured by `tweak`.
    async fn sleeper(
        &self,
        name: &str,
        tweak: impl FnOnce(&mut cri::LinuxContainerSecurityContext),
    ) -> String {
        let pod_cfg = self.sandbox(name);
        let pod = self.run_pod(&pod_cfg).await;
        let cfg = self
            .container("main", &["sleep", "1000"])
            .with_security(tweak);
        self.start(&pod, &pod_cfg, cfg).await
    }

    /// Run a shell script in a container: (exit code, stdout, stderr), trimmed.
    async fn sh(&self, id: &str, script: &str) -> (i32, String, String) {
        let out = self
            .client
            .exec_sync(
                id,
                vec!["sh".into(), "-c".into(), script.into()],
                Duration::from_secs(20),
            )
            .await
            .expect("ExecSync");
        (out.exit_code, trimmed(&out.stdout), trimmed(&out.stderr))
    }

    async fn wait_exited(&self, id: &str) -> cri::ContainerStatus {
        pod_fixture::wait_exited(&self.client, id).await
    }
}

/// Whether everything these tests need is there (panics under CI when not).
fn ready(test: &str) -> bool {
    prerequisites(test) && require_command(test, "docker-registry")
}

/// The busybox test image, with a few files the tests look at.
fn image() -> TestImage {
    TestImage::busybox()
        .file("/var/www/index.html", "hello from nodekit\n", 0o644)
        .file("/srv/secret/key", "s3cr3t\n", 0o644)
        .file("/srv/ro/file", "read only\n", 0o644)
        .build()
        .expect("busybox image")
}

/// Run `f` against a CRI server over the native runtime, all inside a new network namespace;
/// the image is pulled from a registry in that namespace through the ImageService.
fn with_cri<F, Fut>(label: &str, f: F)
where
    F: FnOnce(Cri) -> Fut + Send,
    Fut: Future<Output = ()>,
{
    let (root, cgroup_parent) = new_root();
    let cfg = |cni: Option<Arc<dyn node_core::CniPlugin>>, images: Option<Arc<ImageStore>>| {
        let mut c = NativeConfig {
            root: root.path().join("rt"),
            init_binary: Some(PathBuf::from(INIT)),
            cgroup_parent: cgroup_parent.clone(),
            kill_wait: Duration::from_secs(10),
            ..Default::default()
        };
        if let Some(cni) = cni {
            c.cni = cni;
        }
        if let Some(images) = images {
            c.images = images;
        }
        c
    };
    let ns = NetnsFixture::new(label).expect("netns");
    let result = ns.run_in(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                // the registry is started from this thread, so it listens in the namespace
                let reg = LocalRegistry::start().expect("docker-registry");
                let reference = reg.push(&image(), "nodekit/busybox", "1").unwrap();
                let store = Arc::new(
                    ImageStore::new(ImageStoreConfig {
                        root: root.path().join("images"),
                        ..Default::default()
                    })
                    .unwrap(),
                );
                let cni = Arc::new(
                    BridgePlugin::new(BridgeConfig {
                        network: "nkcri".into(),
                        bridge: "nkcri0".into(),
                        subnets: vec!["10.66.0.0/24".parse().unwrap()],
                        lease_dir: root.path().join("cni/leases"),
                        state_dir: root.path().join("cni/state"),
                        ..Default::default()
                    })
                    .unwrap(),
                );
                let native =
                    Arc::new(NativeRuntime::new(cfg(Some(cni), Some(store.clone()))).unwrap());
                let served = Served::start(CriServer::with_config(
                    native.clone(),
                    store,
                    CriServerConfig {
                        cgroup_driver: Some(cri::CgroupDriver::Cgroupfs),
                        ..Default::default()
                    },
                ))
                .await;
                let client = served.cri_client().await;
                let image_ref = client
                    .pull_image(
                        cri::ImageSpec {
                            image: reference.clone(),
                            ..Default::default()
                        },
                        None,
                        None,
                    )
                    .await
                    .expect("PullImage through the server");
                assert!(image_ref.starts_with("sha256:"), "{image_ref}");
                let cleanup = client.clone();
                f(Cri {
                    client,
                    native,
                    image: reference,
                    logs: root.path().join("logs"),
                    cgroup_parent: cgroup_parent.clone(),
                    root: root.path().to_path_buf(),
                })
                .await;
                // remove the pods here, where their monitors live: the namespace's removal
                // kills every process in it
                for pod in cleanup.list_pod_sandbox(None).await.unwrap() {
                    cleanup.remove_pod_sandbox(&pod.id).await.unwrap();
                }
                drop(cleanup);
                served.stop().await.expect("graceful stop");
                drop(reg);
            })
    });
    drop(ns);
    // without the bridge plugin: its links and rules went with the namespace
    teardown(cfg(None, None), root.path(), &cgroup_parent);
    result.expect("the test thread inside the namespace");
}

/// Run a test body unless the machine lacks what it needs.
macro_rules! cri_test {
    ($name:ident, |$h:ident| $body:block) => {
        #[test]
        fn $name() {
            if !ready(stringify!($name)) {
                return;
            }
            with_cri(&stringify!($name)[..12], |$h: Cri| async move $body);
        }
    };
}

cri_test!(
    pod_lifecycle_through_grpc_pull_run_two_containers_exec_logs_stop_remove,
    |h| {
        let c = &h.client;
        // the image is known to the ImageService
        let st = c
            .image_status(
                cri::ImageSpec {
                    image: h.image.clone(),
                    ..Default::default()
                },
                true,
            )
            .await
            .unwrap();
        let img = st.image.expect("pulled image present");
        assert!(img.repo_tags.contains(&h.image), "{img:?}");
        assert_eq!(c.list_images(None).await.unwrap().len(), 1);
        let fs = c.image_fs_info().await.unwrap();
        assert!(fs.image_filesystems[0].used_bytes.as_ref().unwrap().value > 0);

        let mut pod_cfg = h.sandbox("web");
        pod_cfg.dns_config = Some(cri::DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec!["conformance.svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        });
        let pod = h.run_pod(&pod_cfg).await;
        let st = c.pod_sandbox_status(&pod, true).await.unwrap();
        let status = st.status.unwrap();
        assert_eq!(status.state, cri::PodSandboxState::SandboxReady as i32);
        let ip = status.network.unwrap().ip;
        assert!(
            ip.starts_with("10.66.0."),
            "sandbox IP from the bridge plugin: {ip}"
        );
        assert!(!st.info.is_empty(), "verbose sandbox info passed through");
        assert!(
            c.pod_sandbox_status(&pod, false)
                .await
                .unwrap()
                .info
                .is_empty()
        );

        let server = h
            .start(
                &pod,
                &pod_cfg,
                h.container("server", &["httpd", "-f", "-p", "8080", "-h", "/var/www"]),
            )
            .await;
        let client = h
        .start(
            &pod,
            &pod_cfg,
            h.container(
                "client",
                &["sh", "-c", "for i in $(seq 1 100); do wget -q -O - http://127.0.0.1:8080/ && break; sleep 0.05; done; echo oops >&2; exec sleep 1000"],
            ),
        )
        .await;
        let log = h.logs.join("web/client/0.log");
        // `oops` is echoed after the page, on stderr
        let want = [("stdout", "hello from nodekit"), ("stderr", "oops")];
        wait_log_entries(&log, &want, Duration::from_secs(15)).await;
        assert!(log_entries(&log).contains(&("stderr".into(), "F".into(), "oops".into())));
        // the node reaches the pod over the bridge
        assert_eq!(
            http_get(&format!("{ip}:8080")).await.as_deref(),
            Some("hello from nodekit")
        );

        let listed = c
            .list_containers(Some(cri::ContainerFilter {
                pod_sandbox_id: pod.clone(),
                ..Default::default()
            }))
            .await
            .unwrap();
        assert_eq!(listed.len(), 2);
        let (code, out, _) = h.sh(&server, "hostname; cat /etc/resolv.conf").await;
        assert_eq!(code, 0);
        assert!(
            out.starts_with("web\n") && out.contains("nameserver 10.96.0.10"),
            "{out}"
        );
        let (code, _, err) = h.sh(&client, "echo bad >&2; exit 7").await;
        assert_eq!((code, err.as_str()), (7, "bad"));
        // stats through the server
        let stats = c.container_stats(&server).await.unwrap();
        assert_eq!(stats.attributes.unwrap().id, server);
        assert_eq!(
            c.list_container_stats(Some(cri::ContainerStatsFilter {
                pod_sandbox_id: pod.clone(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .len(),
            2
        );
        c.reopen_container_log(&client).await.unwrap();
        let pod_stats = c.pod_sandbox_stats(&pod).await.unwrap();
        assert_eq!(pod_stats.attributes.unwrap().id, pod);
        let by_label = c
            .list_pod_sandbox_stats(Some(cri::PodSandboxStatsFilter {
                label_selector: HashMap::from([("app".into(), "web".into())]),
                ..Default::default()
            }))
            .await
            .unwrap();
        assert_eq!(by_label.len(), 1);
        // UpdateContainerResources reaches the container's cgroup
        c.update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: server.clone(),
            linux: Some(cri::LinuxContainerResources {
                unified: HashMap::from([("pids.max".into(), "77".into())]),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
        let info: serde_json::Value =
            serde_json::from_str(&c.container_status(&server, true).await.unwrap().info["info"])
                .unwrap();
        let pids = common::native::cgroup_dirs(info["cgroup"].as_str().unwrap())
            .into_iter()
            .find(|d| d.join("pids.max").exists())
            .expect("the container's pids cgroup");
        assert_eq!(
            std::fs::read_to_string(pids.join("pids.max"))
                .unwrap()
                .trim(),
            "77"
        );

        // stop: the containers exit, stopping again is fine
        c.stop_container(&server, Duration::from_secs(5))
            .await
            .unwrap();
        c.stop_container(&server, Duration::from_secs(5))
            .await
            .unwrap();
        let st = pod_fixture::container_status(c, &server).await;
        assert_eq!(st.state, cri::ContainerState::ContainerExited as i32);
        c.stop_pod_sandbox(&pod).await.unwrap();
        c.stop_pod_sandbox(&pod).await.unwrap();
        let st = pod_fixture::sandbox_status(c, &pod).await;
        assert_eq!(st.state, cri::PodSandboxState::SandboxNotready as i32);
        // remove: nothing left, removing again is fine
        c.remove_container(&server).await.unwrap();
        c.remove_container(&server).await.unwrap();
        c.remove_pod_sandbox(&pod).await.unwrap();
        c.remove_pod_sandbox(&pod).await.unwrap();
        assert!(c.list_pod_sandbox(None).await.unwrap().is_empty());
        assert!(c.list_containers(None).await.unwrap().is_empty());
        assert!(matches!(
            c.container_status(&client, false).await,
            Err(RuntimeError::NotFound { .. })
        ));
        assert_eq!(mounts_under(&h.root.join("rt")), Vec::<String>::new());
        assert_eq!(cgroups_left(&h.cgroup_parent), Vec::<PathBuf>::new());
        c.remove_image(cri::ImageSpec {
            image: h.image.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
        assert!(c.list_images(None).await.unwrap().is_empty());
    }
);

/// The first line of an HTTP GET of `/` at `addr`, from the node (this thread's namespace).
async fn http_get(addr: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf);
    text.split("\r\n\r\n").nth(1).map(|b| b.trim().to_string())
}

cri_test!(run_as_user_is_honoured, |h| {
    let id = h
        .sleeper("runasuser", |sc| {
            sc.run_as_user = Some(cri::Int64Value { value: 1234 })
        })
        .await;
    assert_eq!(h.sh(&id, "id -u").await.1, "1234");
});

cri_test!(run_as_group_is_honoured, |h| {
    let id = h
        .sleeper("runasgroup", |sc| {
            sc.run_as_user = Some(cri::Int64Value { value: 1234 });
            sc.run_as_group = Some(cri::Int64Value { value: 5678 });
        })
        .await;
    assert_eq!(h.sh(&id, "id -u; id -g").await.1, "1234\n5678");
});

cri_test!(run_as_group_without_run_as_user_is_refused, |h| {
    let pod_cfg = h.sandbox("groupnouser");
    let pod = h.run_pod(&pod_cfg).await;
    let cfg = h
        .container("main", &["sleep", "1000"])
        .with_security(|sc| sc.run_as_group = Some(cri::Int64Value { value: 5678 }));
    let e = h.create(&pod, &pod_cfg, cfg).await.unwrap_err();
    assert!(
        matches!(e, RuntimeError::InvalidArgument(ref m) if m.contains("run_as_group")),
        "{e:?}"
    );
});

cri_test!(supplemental_groups_are_honoured, |h| {
    let id = h
        .sleeper("suppgroups", |sc| sc.supplemental_groups = vec![1234, 5678])
        .await;
    let groups = h.sh(&id, "id -G").await.1;
    let groups: Vec<&str> = groups.split_whitespace().collect();
    assert!(
        groups.contains(&"1234") && groups.contains(&"5678"),
        "{groups:?}"
    );
});

cri_test!(readonly_rootfs_true_refuses_writes, |h| {
    let id = h.sleeper("rorootfs", |sc| sc.readonly_rootfs = true).await;
    let (code, _, err) = h.sh(&id, "touch /newfile").await;
    assert_ne!(code, 0);
    assert!(err.contains("Read-only file system"), "{err}");
});

cri_test!(readonly_rootfs_false_allows_writes, |h| {
    let id = h.sleeper("rwrootfs", |sc| sc.readonly_rootfs = false).await;
    assert_eq!(h.sh(&id, "touch /newfile && echo ok").await.1, "ok");
});

cri_test!(
    privileged_false_denies_mounts_and_keeps_sys_read_only,
    |h| {
        let id = h.sleeper("unprivileged", |sc| sc.privileged = false).await;
        let (code, _, _) = h
            .sh(&id, "mkdir -p /tmp/m && mount -t tmpfs none /tmp/m")
            .await;
        assert_ne!(code, 0, "mount must be denied without CAP_SYS_ADMIN");
        let (_, mounts, _) = h.sh(&id, "grep ' /sys ' /proc/self/mounts").await;
        assert!(mounts.contains(" ro,"), "{mounts}");
        let (_, caps, _) = h.sh(&id, "grep CapEff /proc/self/status").await;
        assert!(
            !caps.ends_with("ffffffffff"),
            "not every capability: {caps}"
        );
    }
);

cri_test!(capabilities_add_and_drop_are_honoured, |h| {
    let id = h
        .sleeper("caps", |sc| {
            sc.capabilities = Some(cri::Capability {
                drop_capabilities: vec!["ALL".into()],
                add_capabilities: vec!["NET_BIND_SERVICE".into()],
                ..Default::default()
            })
        })
        .await;
    let (_, caps, _) = h
        .sh(&id, "grep -E '^Cap(Eff|Bnd):' /proc/self/status")
        .await;
    assert!(
        caps.contains("CapBnd:\t0000000000000400") && caps.contains("CapEff:\t0000000000000400"),
        "{caps}"
    );
    // CHOWN dropped: root cannot give a file away
    let (code, _, _) = h.sh(&id, "touch /tmp/f && chown 1234 /tmp/f").await;
    assert_ne!(code, 0);
    // a default container keeps CHOWN
    let other = h.sleeper("capsdefault", |_| {}).await;
    assert_eq!(
        h.sh(&other, "touch /tmp/f && chown 1234 /tmp/f && echo ok")
            .await
            .1,
        "ok"
    );
});

cri_test!(no_new_privs_is_set, |h| {
    let id = h.sleeper("nonewprivs", |sc| sc.no_new_privs = true).await;
    assert_eq!(
        h.sh(&id, "grep NoNewPrivs /proc/self/status").await.1,
        "NoNewPrivs:\t1"
    );
});

cri_test!(masked_paths_are_masked, |h| {
    let id = h
        .sleeper("masked", |sc| {
            sc.masked_paths = vec!["/srv/secret".into(), "/proc/kcore".into()]
        })
        .await;
    assert_eq!(
        h.sh(&id, "ls -A /srv/secret | wc -l").await.1,
        "0",
        "a masked directory is empty"
    );
    if std::path::Path::new("/proc/kcore").exists() {
        assert_eq!(
            h.sh(&id, "wc -c < /proc/kcore").await.1,
            "0",
            "a masked file reads empty"
        );
    }
});

cri_test!(readonly_paths_are_read_only, |h| {
    let id = h
        .sleeper("ropaths", |sc| sc.readonly_paths = vec!["/srv/ro".into()])
        .await;
    assert_eq!(h.sh(&id, "cat /srv/ro/file").await.1, "read only");
    let (code, _, err) = h.sh(&id, "echo x > /srv/ro/file").await;
    assert_ne!(code, 0);
    assert!(err.contains("Read-only"), "{err}");
    // the rest of the root stays writable
    assert_eq!(h.sh(&id, "echo x > /srv/other && echo ok").await.1, "ok");
});

cri_test!(sysctls_are_set_in_the_pod, |h| {
    let mut pod_cfg = h.sandbox("sysctls");
    pod_cfg.linux.as_mut().unwrap().sysctls = HashMap::from([
        ("net.ipv4.ip_unprivileged_port_start".into(), "80".into()),
        ("kernel.shm_rmid_forced".into(), "1".into()),
    ]);
    let pod = h.run_pod(&pod_cfg).await;
    let id = h
        .start(&pod, &pod_cfg, h.container("main", &["sleep", "1000"]))
        .await;
    assert_eq!(
        h.sh(
            &id,
            "cat /proc/sys/net/ipv4/ip_unprivileged_port_start /proc/sys/kernel/shm_rmid_forced"
        )
        .await
        .1,
        "80\n1"
    );
});

cri_test!(exit_codes_are_reported, |h| {
    let pod_cfg = h.sandbox("exitcodes");
    let pod = h.run_pod(&pod_cfg).await;
    let fail = h
        .start(
            &pod,
            &pod_cfg,
            h.container("fail", &["sh", "-c", "exit 42"]),
        )
        .await;
    let ok = h.start(&pod, &pod_cfg, h.container("ok", &["true"])).await;
    let st = h.wait_exited(&fail).await;
    assert_eq!((st.exit_code, st.reason.as_str()), (42, "Error"));
    assert!(st.finished_at >= st.started_at && st.started_at > 0);
    let st = h.wait_exited(&ok).await;
    assert_eq!((st.exit_code, st.reason.as_str()), (0, "Completed"));
    // ExecSync's exit code too
    let live = h
        .start(&pod, &pod_cfg, h.container("live", &["sleep", "1000"]))
        .await;
    assert_eq!(h.sh(&live, "exit 3").await.0, 3);
});

cri_test!(logs_are_written_in_cri_format_at_the_requested_path, |h| {
    let pod_cfg = h.sandbox("logs");
    let pod = h.run_pod(&pod_cfg).await;
    let mut cfg = h.container(
        "writer",
        &["sh", "-c", "echo out; echo err >&2; printf partial"],
    );
    cfg.log_path = "custom/dir/writer.log".into();
    let id = h.start(&pod, &pod_cfg, cfg).await;
    h.wait_exited(&id).await;
    let path = h.logs.join("logs/custom/dir/writer.log");
    let st = pod_fixture::container_status(&h.client, &id).await;
    assert_eq!(st.log_path, path.display().to_string());
    let entries = log_entries(&path);
    assert!(
        entries.contains(&("stdout".into(), "F".into(), "out".into())),
        "{entries:?}"
    );
    assert!(
        entries.contains(&("stderr".into(), "F".into(), "err".into())),
        "{entries:?}"
    );
    assert!(
        entries.iter().any(|e| e.0 == "stdout" && e.2 == "partial"),
        "{entries:?}"
    );
});

cri_test!(list_filters_by_label_and_state, |h| {
    let a_cfg = h.sandbox("filter-a");
    let a = h.run_pod(&a_cfg).await;
    let b_cfg = h.sandbox("filter-b");
    let b = h.run_pod(&b_cfg).await;
    let running = h
        .start(&a, &a_cfg, h.container("run", &["sleep", "1000"]))
        .await;
    let created = h
        .create(&a, &a_cfg, h.container("created", &["sleep", "1000"]))
        .await
        .unwrap();
    h.client.stop_pod_sandbox(&b).await.unwrap();
    let c = &h.client;
    let label = |k: &str, v: &str| HashMap::from([(k.to_string(), v.to_string())]);
    let pods = c
        .list_pod_sandbox(Some(cri::PodSandboxFilter {
            label_selector: label("app", "filter-b"),
            ..Default::default()
        }))
        .await
        .unwrap();
    assert_eq!(
        pods.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
        [b.as_str()]
    );
    let ready = c
        .list_pod_sandbox(Some(cri::PodSandboxFilter {
            state: Some(cri::PodSandboxStateValue {
                state: cri::PodSandboxState::SandboxReady as i32,
            }),
            ..Default::default()
        }))
        .await
        .unwrap();
    assert_eq!(
        ready.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
        [a.as_str()]
    );
    let ctrs = c
        .list_containers(Some(cri::ContainerFilter {
            state: Some(cri::ContainerStateValue {
                state: cri::ContainerState::ContainerCreated as i32,
            }),
            ..Default::default()
        }))
        .await
        .unwrap();
    assert_eq!(
        ctrs.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        [created.as_str()]
    );
    let ctrs = c
        .list_containers(Some(cri::ContainerFilter {
            label_selector: label("container", "run"),
            ..Default::default()
        }))
        .await
        .unwrap();
    assert_eq!(
        ctrs.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        [running.as_str()]
    );
    // a truncated id, as crictl users type them
    let ctrs = c
        .list_containers(Some(cri::ContainerFilter {
            id: running[..12].into(),
            ..Default::default()
        }))
        .await
        .unwrap();
    assert_eq!(ctrs.len(), 1);
    assert!(
        c.list_containers(Some(cri::ContainerFilter {
            pod_sandbox_id: b,
            ..Default::default()
        }))
        .await
        .unwrap()
        .is_empty()
    );
});

cri_test!(dns_config_is_written_to_resolv_conf, |h| {
    let mut pod_cfg = h.sandbox("dns");
    pod_cfg.dns_config = Some(cri::DnsConfig {
        servers: vec!["10.96.0.10".into(), "10.96.0.11".into()],
        searches: vec!["dns.svc.cluster.local".into(), "svc.cluster.local".into()],
        options: vec!["ndots:5".into(), "timeout:2".into()],
    });
    let pod = h.run_pod(&pod_cfg).await;
    let id = h
        .start(&pod, &pod_cfg, h.container("main", &["sleep", "1000"]))
        .await;
    let resolv = h.sh(&id, "cat /etc/resolv.conf").await.1;
    for line in [
        "nameserver 10.96.0.10",
        "nameserver 10.96.0.11",
        "search dns.svc.cluster.local svc.cluster.local",
        "options ndots:5 timeout:2",
    ] {
        assert!(
            resolv.lines().any(|l| l.trim() == line),
            "{line:?} not in {resolv}"
        );
    }
});

cri_test!(hostname_is_the_sandbox_hostname, |h| {
    let mut pod_cfg = h.sandbox("hostname");
    pod_cfg.hostname = "my-pod-host".into();
    let pod = h.run_pod(&pod_cfg).await;
    let id = h
        .start(&pod, &pod_cfg, h.container("main", &["sleep", "1000"]))
        .await;
    assert_eq!(
        h.sh(&id, "hostname; cat /etc/hostname").await.1,
        "my-pod-host\nmy-pod-host"
    );
});

cri_test!(host_network_pod_shares_the_node_network, |h| {
    let mut pod_cfg = h.sandbox("hostnet");
    pod_cfg.linux.as_mut().unwrap().security_context = Some(cri::LinuxSandboxSecurityContext {
        namespace_options: Some(cri::NamespaceOption {
            network: cri::NamespaceMode::Node as i32,
            ..Default::default()
        }),
        ..Default::default()
    });
    let pod = h.run_pod(&pod_cfg).await;
    let node_ns = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
    let id = h
        .start(&pod, &pod_cfg, h.container("main", &["sleep", "1000"]))
        .await;
    assert_eq!(
        h.sh(&id, "readlink /proc/self/ns/net").await.1,
        node_ns.display().to_string()
    );
    // a server on the node is reachable on the pod's loopback, as critest checks
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let serve = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let (mut s, _) = listener.accept().await.unwrap();
        s.write_all(b"hello").await.unwrap();
    });
    assert_eq!(
        h.sh(&id, &format!("nc 127.0.0.1 {port} </dev/null"))
            .await
            .1,
        "hello"
    );
    serve.await.unwrap();
});

cri_test!(host_port_reaches_the_container, |h| {
    let mut pod_cfg = h.sandbox("hostport");
    pod_cfg.port_mappings = vec![cri::PortMapping {
        protocol: cri::Protocol::Tcp as i32,
        container_port: 8080,
        host_port: 18080,
        host_ip: String::new(),
    }];
    let pod = h.run_pod(&pod_cfg).await;
    h.start(
        &pod,
        &pod_cfg,
        h.container("web", &["httpd", "-f", "-p", "8080", "-h", "/var/www"]),
    )
    .await;
    let addr = format!("{GATEWAY}:18080");
    let deadline = Instant::now() + Duration::from_secs(10);
    let page = loop {
        if let Some(p) = http_get(&addr).await {
            break p;
        }
        assert!(Instant::now() < deadline, "host port {addr} never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(page, "hello from nodekit");
    h.client.stop_pod_sandbox(&pod).await.unwrap();
    assert!(
        http_get(&addr).await.is_none(),
        "the host port is gone with the pod's network"
    );
});

cri_test!(run_pod_sandbox_latency_through_the_server_vs_direct, |h| {
    // the figure (printed, not asserted): the server's cost on top of a real RunPodSandbox
    const N: usize = 20;
    let mut rows = vec![];
    let via: &dyn RuntimeBackend = &h.client;
    let direct: &dyn RuntimeBackend = h.native.as_ref();
    for (name, rt) in [("direct", direct), ("via CriServer", via)] {
        let mut run = vec![];
        let mut version = vec![];
        for n in 0..N {
            let cfg = h.sandbox(&format!("lat-{}-{n}", name.len()));
            let t = Instant::now();
            let id = rt
                .run_pod_sandbox(cri::RunPodSandboxRequest {
                    config: Some(cfg),
                    runtime_handler: String::new(),
                })
                .await
                .unwrap();
            run.push(t.elapsed());
            let t = Instant::now();
            rt.version().await.unwrap();
            version.push(t.elapsed());
            rt.remove_pod_sandbox(&id).await.unwrap();
        }
        run.sort();
        version.sort();
        rows.push(format!(
            "{name:>14}: RunPodSandbox median {:7.1} ms (min {:7.1}, p90 {:7.1})   Version median {:7.3} ms",
            run[N / 2].as_secs_f64() * 1e3,
            run[0].as_secs_f64() * 1e3,
            run[N * 9 / 10].as_secs_f64() * 1e3,
            version[N / 2].as_secs_f64() * 1e3
        ));
    }
    println!(
        "native runtime + bridge CNI, {N} sandboxes each:\n{}",
        rows.join("\n")
    );
    assert!(h.client.list_pod_sandbox(None).await.unwrap().is_empty());
    let _ = ImageBackend::list_images(&h.client, None).await.unwrap();
});

cri_test!(exec_sync_timeout_is_reported_as_deadline_exceeded, |h| {
    let id = h.sleeper("exectimeout", |_| {}).await;
    let t0 = Instant::now();
    let r = h
        .client
        .exec_sync(
            &id,
            vec!["sleep".into(), "30".into()],
            Duration::from_secs(1),
        )
        .await;
    // the client's own deadline is a minute longer: this is the server's DeadlineExceeded
    assert!(matches!(r, Err(RuntimeError::Timeout(_))), "{r:?}");
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
    // the container is still usable
    assert_eq!(h.sh(&id, "echo alive").await.1, "alive");
});
