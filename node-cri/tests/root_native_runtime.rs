//! Root tests of the native runtime's sandboxes and containers (need root, overlayfs, cgroups
//! and busybox-static). Every test runs its runtime calls on a thread inside a NetnsFixture
//! (so host-network pods land in the fixture's namespace), uses its own root directory and
//! cgroup parent, and a guard kills, unmounts and removes everything on drop, panics included
//! (the fixture: `common/native.rs`).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::native::{
    Env, alive, cgroup_dirs, container_config, in_netns, log_entries, native_test, pid_of,
    prerequisites, run_container, status, wait_for, wait_log_entries,
};
use common::pod_fixture::{
    self, ContainerConfigExt, container_info, create_container, exec, read_trimmed, run_pod,
    sandbox_info, sandbox_status, security, sh, trimmed, try_run_pod, wait_exited,
};
use node_core::{RuntimeBackend, RuntimeError, cri};
use node_cri::native::runtime::{NativeConfig, NativeRuntime};
use node_test_support::{NetnsFixture, require_path};

#[test]
fn pod_with_two_containers_talking_over_localhost_exec_logs_stop_remove() {
    native_test(
        "pod_with_two_containers_talking_over_localhost_exec_logs_stop_remove",
        "rtpod",
        async |env, rt| {
            let mut sb_cfg = env.sandbox_config("web");
            sb_cfg.port_mappings = vec![cri::PortMapping {
                protocol: cri::Protocol::Tcp as i32,
                container_port: 8080,
                host_port: 18080,
                host_ip: String::new(),
            }];
            let sb = run_pod(&rt, &sb_cfg).await;
            assert_eq!(env.cni.attached().len(), 1, "CNI ADD was called once");
            let a = env.recorder.seen.lock().unwrap()[0].clone();
            assert_eq!(
                (a.container_id.as_str(), a.ifname.as_str()),
                (sb.as_str(), "eth0")
            );
            assert_eq!(
                (
                    a.pod.namespace.as_str(),
                    a.pod.name.as_str(),
                    a.pod.uid.as_str()
                ),
                ("default", "web", "uid-web")
            );
            assert_eq!(
                a.capabilities.port_mappings,
                vec![node_core::PortMapping {
                    host_port: 18080,
                    container_port: 8080,
                    protocol: "tcp".into(),
                    host_ip: None
                }]
            );
            // the netns CNI was given is the pod's: a namespace file other than ours
            let pod_ns = std::fs::metadata(&a.netns)
                .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
                .unwrap();
            let our_ns = std::fs::metadata("/proc/thread-self/ns/net")
                .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
                .unwrap();
            assert_ne!(pod_ns, our_ns);
            let st = sandbox_status(&rt, &sb).await;
            assert_eq!(st.state, cri::PodSandboxState::SandboxReady as i32);
            let ip = st.network.unwrap().ip;
            assert!(ip.starts_with("10.88."), "sandbox IP from CNI, got {ip:?}");
            // a second sandbox with the same metadata is refused
            let dup = try_run_pod(&rt, &sb_cfg).await;
            assert!(
                matches!(dup, Err(RuntimeError::AlreadyExists(_))),
                "{dup:?}"
            );

            let server = run_container(
                &rt,
                &sb,
                &sb_cfg,
                container_config("server", &["httpd", "-f", "-p", "8080", "-h", "/var/www"])
                    .with_resources(cri::LinuxContainerResources {
                        oom_score_adj: 500,
                        ..Default::default()
                    }),
            )
            .await;
            let script = "for i in $(seq 1 100); do wget -q -O - http://127.0.0.1:8080/ && break; sleep 0.05; done; echo oops >&2; printf 'no newline'; echo; while true; do echo tick; sleep 0.1; done";
            let client = run_container(
                &rt,
                &sb,
                &sb_cfg,
                container_config("client", &["sh", "-c", script]),
            )
            .await;
            let client_log = env.logs.join("web/client/0.log");
            let want = [("stdout", "tick"), ("stderr", "oops")];
            wait_log_entries(&client_log, &want, Duration::from_secs(10)).await;
            let entries = log_entries(&client_log);
            assert!(
                entries.contains(&("stdout".into(), "F".into(), "hello from nodekit".into())),
                "{entries:?}"
            );
            assert!(
                entries.contains(&("stderr".into(), "F".into(), "oops".into())),
                "{entries:?}"
            );
            assert!(
                entries.contains(&("stdout".into(), "F".into(), "no newline".into())),
                "{entries:?}"
            );

            // exec: hostname, generated files, exit codes, timeout
            let out = exec(&rt, &server, &["hostname"]).await;
            assert_eq!((out.exit_code, trimmed(&out.stdout).as_str()), (0, "web"));
            let out = exec(&rt, &server, &["cat", "/etc/resolv.conf", "/etc/hosts"]).await;
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                text.contains("nameserver 10.96.0.10") && text.contains("options ndots:5"),
                "{text}"
            );
            assert!(text.contains(&format!("{ip}\tweb")), "{text}");
            let out = exec(&rt, &server, &["sh", "-c", "echo to-err >&2; exit 3"]).await;
            assert_eq!(
                (out.exit_code, trimmed(&out.stderr).as_str()),
                (3, "to-err")
            );
            // the exec sees the container's own pid namespace: httpd is pid 1
            let out = exec(&rt, &server, &["cat", "/proc/1/cmdline"]).await;
            assert!(
                String::from_utf8_lossy(&out.stdout).starts_with("httpd"),
                "{out:?}"
            );
            let t0 = Instant::now();
            let slow = rt
                .exec_sync(
                    &server,
                    vec!["sleep".into(), "30".into()],
                    Duration::from_millis(300),
                )
                .await;
            assert!(matches!(slow, Err(RuntimeError::Timeout(_))), "{slow:?}");
            assert!(t0.elapsed() < Duration::from_secs(10));

            // the netns CNI was given is the one the containers are in
            let out = rt
                .exec_sync(
                    &server,
                    vec![
                        "stat".into(),
                        "-L".into(),
                        "-c".into(),
                        "%i".into(),
                        "/proc/self/ns/net".into(),
                    ],
                    Duration::from_secs(10),
                )
                .await
                .unwrap();
            assert_eq!(trimmed(&out.stdout), pod_ns.to_string());
            // the devices cgroup: a node of the host's disk can be made but not opened
            let disk = std::fs::read_to_string("/proc/partitions")
                .unwrap_or_default()
                .lines()
                .skip(2)
                .find_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    (f.len() == 4).then(|| format!("{} {}", f[0], f[1]))
                });
            if let Some(majmin) = disk {
                let script = format!(
                    "mknod /dev/hostdisk b {majmin} && echo made && head -c 1 /dev/hostdisk"
                );
                let out = exec(&rt, &server, &["sh", "-c", &script]).await;
                assert_ne!(out.exit_code, 0, "{out:?}");
                assert_eq!(trimmed(&out.stdout), "made", "mknod is allowed: {out:?}");
                assert!(
                    String::from_utf8_lossy(&out.stderr).contains("not permitted"),
                    "{out:?}"
                );
            }
            let out = exec(&rt, &server, &["cat", "/proc/1/oom_score_adj"]).await;
            assert_eq!(trimmed(&out.stdout), "500");
            // the pod's containers share /dev/shm (POSIX shared memory lives there)
            let out = exec(&rt, &server, &["sh", "-c", "echo shared > /dev/shm/seg"]).await;
            assert_eq!(out.exit_code, 0, "{out:?}");
            let out = exec(&rt, &client, &["cat", "/dev/shm/seg"]).await;
            assert_eq!(trimmed(&out.stdout), "shared");
            // pod sysctls are set in the pod's network namespace
            let out = exec(
                &rt,
                &server,
                &["cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"],
            )
            .await;
            assert_eq!(trimmed(&out.stdout), "80");
            // a line longer than 16 KiB is logged as partial entries ended by a full one
            run_container(
                &rt,
                &sb,
                &sb_cfg,
                container_config(
                    "long",
                    &[
                        "sh",
                        "-c",
                        "head -c 40000 /dev/zero | tr '\\0' a; echo; exec sleep 1000",
                    ],
                ),
            )
            .await;
            let long_log = env.logs.join("web/long/0.log");
            wait_for("the long line", Duration::from_secs(10), || async {
                log_entries(&long_log).iter().any(|e| e.1 == "F")
            })
            .await;
            let shape: Vec<(String, usize)> = log_entries(&long_log)
                .into_iter()
                .map(|e| (e.1, e.2.len()))
                .collect();
            assert_eq!(
                shape,
                vec![
                    ("P".into(), 16384),
                    ("P".into(), 16384),
                    ("F".into(), 40000 - 2 * 16384)
                ]
            );
            // a container on a terminal
            let term = container_config(
                "term",
                &["sh", "-c", "test -t 1 && echo on-a-tty; exec sleep 1000"],
            )
            .with_tty();
            run_container(&rt, &sb, &sb_cfg, term).await;
            let term_log = env.logs.join("web/term/0.log");
            wait_for("the terminal's output", Duration::from_secs(10), || async {
                log_entries(&term_log)
                    .iter()
                    .any(|e| e.0 == "stdout" && e.2.starts_with("on-a-tty"))
            })
            .await;

            // log rotation: rename, reopen, new lines land in a new file
            let rotated = client_log.with_extension("log.1");
            std::fs::rename(&client_log, &rotated).unwrap();
            rt.reopen_container_log(&client).await.unwrap();
            wait_for(
                "lines in the reopened log",
                Duration::from_secs(10),
                || async { log_entries(&client_log).iter().any(|e| e.2 == "tick") },
            )
            .await;

            // listing with filters
            let running = cri::ContainerFilter {
                state: Some(cri::ContainerStateValue {
                    state: cri::ContainerState::ContainerRunning as i32,
                }),
                pod_sandbox_id: sb.clone(),
                ..Default::default()
            };
            assert_eq!(rt.list_containers(Some(running)).await.unwrap().len(), 4);
            let by_label = cri::ContainerFilter {
                label_selector: HashMap::from([("container".into(), "server".into())]),
                ..Default::default()
            };
            let l = rt.list_containers(Some(by_label)).await.unwrap();
            assert_eq!(
                l.iter().map(|c| c.id.clone()).collect::<Vec<_>>(),
                vec![server.clone()]
            );
            assert_eq!(
                rt.list_pod_sandbox(Some(cri::PodSandboxFilter {
                    id: sb.clone(),
                    ..Default::default()
                }))
                .await
                .unwrap()
                .len(),
                1
            );

            // stats are read back from the cgroup
            let stats = rt.container_stats(&server).await.unwrap();
            assert!(stats.memory.unwrap().usage_bytes.unwrap().value > 0);
            assert!(stats.cpu.unwrap().usage_core_nano_seconds.is_some());

            // stop: sh as pid 1 ignores SIGTERM, so the grace period ends with SIGKILL
            let server_pid = pid_of(&rt.container_status(&server, true).await.unwrap());
            let t0 = Instant::now();
            rt.stop_container(&client, Duration::from_millis(300))
                .await
                .unwrap();
            assert!(t0.elapsed() >= Duration::from_millis(300));
            let st = status(&rt, &client).await;
            assert_eq!(
                (st.state, st.exit_code, st.reason.as_str()),
                (cri::ContainerState::ContainerExited as i32, 137, "Error")
            );
            assert!(st.finished_at >= st.started_at && st.started_at > 0);
            rt.stop_container(&client, Duration::from_secs(1))
                .await
                .unwrap(); // idempotent
            let again = rt.start_container(&client).await;
            assert!(
                matches!(again, Err(RuntimeError::FailedPrecondition(_))),
                "{again:?}"
            );

            // every process of the pod: the pause process, the monitors and the containers
            let info = sandbox_info(&rt, &sb).await;
            let mut pids = vec![info["pid"].as_i64().unwrap() as i32];
            for c in rt.list_containers(None).await.unwrap() {
                let info = container_info(&rt, &c.id).await;
                pids.extend([
                    info["pid"].as_i64().unwrap() as i32,
                    info["monitorPid"].as_i64().unwrap() as i32,
                ]);
            }
            assert!(pids.iter().all(|p| *p > 0) && alive(pids[0]), "{pids:?}");

            // stop and remove the pod
            rt.stop_pod_sandbox(&sb).await.unwrap();
            assert!(env.cni.attached().is_empty(), "CNI DEL on stop");
            assert!(env.cni.calls().iter().any(|c| c.starts_with("del ")));
            assert!(!alive(server_pid), "the server died with the pod");
            let st = sandbox_status(&rt, &sb).await;
            assert_eq!(st.state, cri::PodSandboxState::SandboxNotready as i32);
            rt.stop_pod_sandbox(&sb).await.unwrap(); // idempotent
            rt.remove_pod_sandbox(&sb).await.unwrap();
            rt.remove_pod_sandbox(&sb).await.unwrap(); // idempotent
            assert!(rt.list_containers(None).await.unwrap().is_empty());
            assert!(rt.list_pod_sandbox(None).await.unwrap().is_empty());
            assert!(matches!(
                rt.container_status(&server, false).await,
                Err(RuntimeError::NotFound { .. })
            ));
            // logs are the kubelet's: kept
            assert!(client_log.exists() && rotated.exists());
            // nothing left
            wait_for(
                "every process of the pod to be gone",
                Duration::from_secs(5),
                || {
                    let pids = pids.clone();
                    async move { pids.iter().all(|p| !alive(*p)) }
                },
            )
            .await;
            assert_eq!(env.mounts_under_root(), Vec::<String>::new());
            assert_eq!(env.cgroups_left(), Vec::<PathBuf>::new());
            let rtroot = env.root.path().join("rt");
            for d in [
                "sandboxes",
                "containers",
                "state/sandboxes",
                "state/containers",
            ] {
                assert_eq!(
                    std::fs::read_dir(rtroot.join(d)).unwrap().count(),
                    0,
                    "{d} is empty"
                );
            }
        },
    );
}

#[test]
fn memory_hog_is_oom_killed_and_fork_bomb_stops_at_the_pids_limit() {
    native_test(
        "memory_hog_is_oom_killed_and_fork_bomb_stops_at_the_pids_limit",
        "rtlimits",
        async |env, rt| {
            let (sb, sb_cfg) = env.pod(&rt, "limits").await;

            // 32 MiB limit, a 256 MiB buffer: the kernel's OOM killer ends it
            let hog = container_config(
                "hog",
                &["dd", "if=/dev/zero", "of=/dev/null", "bs=256M", "count=1"],
            )
            .with_resources(cri::LinuxContainerResources {
                memory_limit_in_bytes: 32 << 20,
                cpu_shares: 512,
                cpu_quota: 50_000,
                cpu_period: 100_000,
                ..Default::default()
            });
            let hog = run_container(&rt, &sb, &sb_cfg, hog).await;
            let st = wait_exited(&rt, &hog).await;
            assert_eq!(
                (st.reason.as_str(), st.exit_code),
                ("OOMKilled", 137),
                "{st:?}"
            );
            let cg = container_info(&rt, &hog).await;
            let cg = cg["cgroup"].as_str().unwrap().to_string();
            if let Some(mem) = cgroup_dirs(&cg)
                .into_iter()
                .find(|d| d.join("memory.limit_in_bytes").exists())
            {
                assert_eq!(
                    read_trimmed(mem.join("memory.limit_in_bytes")),
                    (32u64 << 20).to_string()
                );
            }
            if let Some(cpu) = cgroup_dirs(&cg)
                .into_iter()
                .find(|d| d.join("cpu.cfs_quota_us").exists())
            {
                assert_eq!(read_trimmed(cpu.join("cpu.cfs_quota_us")), "50000");
                assert_eq!(read_trimmed(cpu.join("cpu.shares")), "512");
            }

            // a pids limit of 16: the 100 background sleeps cannot all start
            let mut r = cri::LinuxContainerResources::default();
            r.unified.insert("pids.max".into(), "16".into());
            let script = "sh -c 'for i in $(seq 1 100); do sleep 1000 & done'; echo spawned; exec sleep 1000";
            let bomb = container_config("bomb", &["sh", "-c", script]).with_resources(r);
            let bomb = run_container(&rt, &sb, &sb_cfg, bomb).await;
            let log = env.logs.join("limits/bomb/0.log");
            // the fork bomb finished its loop, its fork failures logged
            let want = [("stdout", "spawned"), ("stderr", "fork")];
            wait_log_entries(&log, &want, Duration::from_secs(20)).await;
            let entries = log_entries(&log);
            assert!(
                entries
                    .iter()
                    .any(|e| e.0 == "stderr" && e.2.contains("fork")),
                "fork failures are logged: {entries:?}"
            );
            let info = container_info(&rt, &bomb).await;
            let pids_dir = cgroup_dirs(info["cgroup"].as_str().unwrap())
                .into_iter()
                .find(|d| d.join("pids.max").exists() || d.join("pids.current").exists())
                .expect("pids cgroup");
            let current: u64 = read_trimmed(pids_dir.join("pids.current")).parse().unwrap();
            assert!((10..=16).contains(&current), "pids.current = {current}");
            assert_eq!(read_trimmed(pids_dir.join("pids.max")), "16");

            // raising the limit takes effect on the running container
            let mut r = cri::LinuxContainerResources {
                memory_limit_in_bytes: 64 << 20,
                ..Default::default()
            };
            r.unified.insert("pids.max".into(), "200".into());
            rt.update_container_resources(cri::UpdateContainerResourcesRequest {
                container_id: bomb.clone(),
                linux: Some(r),
                ..Default::default()
            })
            .await
            .unwrap();
            assert_eq!(read_trimmed(pids_dir.join("pids.max")), "200");
            let pod = rt.pod_sandbox_stats(&sb).await.unwrap().linux.unwrap();
            assert_eq!(pod.containers.len(), 1, "the running container");
            assert!(pod.process.unwrap().process_count.unwrap().value >= 10);
            assert!(pod.memory.unwrap().usage_bytes.unwrap().value > 0);
            assert_eq!(rt.list_pod_sandbox_stats(None).await.unwrap().len(), 1);
            let listed = rt.list_container_stats(None).await.unwrap();
            assert_eq!(
                listed
                    .iter()
                    .map(|s| s.attributes.as_ref().unwrap().id.clone())
                    .collect::<Vec<_>>(),
                vec![bomb.clone()]
            );

            rt.remove_pod_sandbox(&sb).await.unwrap();
            assert_eq!(env.cgroups_left(), Vec::<PathBuf>::new());
            assert!(!pids_dir.exists());
        },
    );
}

#[test]
fn a_restarted_runtime_finds_its_running_container_and_stops_it() {
    if !prerequisites("a_restarted_runtime_finds_its_running_container_and_stops_it") {
        return;
    }
    let env = Env::new();
    in_netns("rtrestart", || async {
        let sb_cfg = env.sandbox_config("restart");
        let (sb, id, pid) = {
            let rt = env.runtime();
            let sb = run_pod(&rt, &sb_cfg).await;
            let id = run_container(
                &rt,
                &sb,
                &sb_cfg,
                container_config(
                    "app",
                    &[
                        "sh",
                        "-c",
                        "trap 'echo bye; exit 0' TERM; echo up; while true; do sleep 0.05; done",
                    ],
                ),
            )
            .await;
            let pid = pid_of(&rt.container_status(&id, true).await.unwrap());
            (sb, id, pid)
            // the runtime is dropped here
        };
        assert!(alive(pid));
        let rt = env.runtime();
        let st = rt.container_status(&id, true).await.unwrap();
        assert_eq!(
            st.status.as_ref().unwrap().state,
            cri::ContainerState::ContainerRunning as i32
        );
        assert_eq!(pid_of(&st), pid, "the same process");
        assert_eq!(rt.list_containers(None).await.unwrap().len(), 1);
        assert_eq!(
            rt.list_pod_sandbox(None).await.unwrap()[0].state,
            cri::PodSandboxState::SandboxReady as i32
        );
        let out = exec(&rt, &id, &["echo", "still here"]).await;
        assert_eq!(trimmed(&out.stdout), "still here");
        // the trap makes SIGTERM a clean exit within the grace period
        rt.stop_container(&id, Duration::from_secs(10))
            .await
            .unwrap();
        let st = status(&rt, &id).await;
        assert_eq!(
            (st.state, st.exit_code, st.reason.as_str()),
            (cri::ContainerState::ContainerExited as i32, 0, "Completed")
        );
        assert!(!alive(pid));
        let entries = log_entries(&env.logs.join("restart/app/0.log"));
        assert!(
            entries.iter().any(|e| e.2 == "up") && entries.iter().any(|e| e.2 == "bye"),
            "{entries:?}"
        );
        rt.remove_pod_sandbox(&sb).await.unwrap();
        assert_eq!(env.mounts_under_root(), Vec::<String>::new());
        assert_eq!(env.cgroups_left(), Vec::<PathBuf>::new());
    });
}

#[test]
fn host_network_pod_shared_pid_and_security_settings() {
    native_test(
        "host_network_pod_shared_pid_and_security_settings",
        "rthostnet",
        async |env, rt| {
            let mut sb_cfg = env.sandbox_config("hostnet");
            sb_cfg.linux.as_mut().unwrap().security_context =
                Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        network: cri::NamespaceMode::Node as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                });
            let sb = run_pod(&rt, &sb_cfg).await;
            assert!(
                env.cni.calls().is_empty(),
                "no CNI for host-network pods: {:?}",
                env.cni.calls()
            );
            let my_netns = std::fs::read_link("/proc/thread-self/ns/net").unwrap();

            let mut cfg = container_config("locked", &["sleep", "1000"]);
            {
                let sc = security(&mut cfg);
                sc.readonly_rootfs = true;
                sc.run_as_user = Some(cri::Int64Value { value: 65534 });
                sc.supplemental_groups = vec![1234];
                sc.no_new_privs = true;
                sc.seccomp = Some(cri::SecurityProfile {
                    profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
                    ..Default::default()
                });
                sc.capabilities = Some(cri::Capability {
                    drop_capabilities: vec!["ALL".into()],
                    add_capabilities: vec!["NET_BIND_SERVICE".into()],
                    ..Default::default()
                });
                sc.namespace_options.as_mut().unwrap().pid = cri::NamespaceMode::Pod as i32;
            }
            let data = env.root.path().join("data");
            std::fs::create_dir_all(&data).unwrap();
            std::fs::write(data.join("f"), "from the host").unwrap();
            cfg.mounts = vec![cri::Mount {
                container_path: "/data".into(),
                host_path: data.display().to_string(),
                readonly: true,
                ..Default::default()
            }];
            cfg.envs = vec![cri::KeyValue {
                key: "GREETING".into(),
                value: "hi".into(),
            }];
            cfg.working_dir = "/tmp".into();
            let locked = run_container(&rt, &sb, &sb_cfg, cfg).await;
            let exec = |script: &'static str| sh(&rt, &locked, script);
            assert_eq!(exec("ulimit -n").await.1, "4096", "rlimits");
            // the host network of the node side (the fixture's namespace)
            let (_, netns, _) = exec("readlink /proc/self/ns/net").await;
            assert_eq!(netns, my_netns.display().to_string());
            // user, groups, env, workdir
            assert_eq!(
                exec("id -u; id -G; echo $GREETING; pwd").await.1,
                "65534\n65534 1234\nhi\n/tmp"
            );
            // capabilities: only NET_BIND_SERVICE (bit 10) is bounded; seccomp filter and no_new_privs
            let (_, status, _) =
                exec("grep -E '^(CapBnd|Seccomp|NoNewPrivs):' /proc/self/status").await;
            assert!(status.contains("CapBnd:\t0000000000000400"), "{status}");
            assert!(
                status.contains("Seccomp:\t2") && status.contains("NoNewPrivs:\t1"),
                "{status}"
            );
            // read-only root and mount, masked and read-only paths
            let (code, _, err) = exec("touch /x").await;
            assert_ne!(code, 0, "read-only rootfs: {err}");
            assert_eq!(exec("cat /data/f").await.1, "from the host");
            assert_ne!(exec("touch /data/g").await.0, 0, "read-only mount");
            // masked: a file (when the kernel has it) reads empty, a directory is an empty tmpfs
            if Path::new("/proc/timer_list").exists() {
                let masked = exec("wc -c < /proc/timer_list").await;
                assert_eq!(masked.1, "0", "masked /proc/timer_list: {masked:?}");
            }
            if Path::new("/sys/firmware").exists() {
                let masked = exec("ls -A /sys/firmware | wc -l").await;
                assert_eq!(masked.1, "0", "masked /sys/firmware: {masked:?}");
            }
            assert!(
                exec("grep ' /proc/sys ' /proc/self/mounts")
                    .await
                    .1
                    .contains(" ro,"),
                "read-only /proc/sys"
            );
            assert!(
                exec("grep ' /sys ' /proc/self/mounts")
                    .await
                    .1
                    .contains(" ro,"),
                "read-only /sys"
            );
            // shared pid namespace: the pod's pause process is pid 1
            let (_, comm, _) = exec("cat /proc/1/comm").await;
            assert_eq!(comm, "nodekit-init");
            // /dev has the standard nodes and writable /dev/shm stays a tmpfs
            assert_eq!(
                exec("ls /dev/null /dev/zero /dev/urandom /dev/pts/ptmx >/dev/null && echo ok")
                    .await
                    .1,
                "ok"
            );
            rt.remove_pod_sandbox(&sb).await.unwrap();
            assert_eq!(env.mounts_under_root(), Vec::<String>::new());
            assert_eq!(env.cgroups_left(), Vec::<PathBuf>::new());
        },
    );
}

#[test]
fn failures_roll_back_and_unknown_ids_are_not_found() {
    native_test(
        "failures_roll_back_and_unknown_ids_are_not_found",
        "rtfail",
        async |env, rt| {
            env.cni.fail_next(
                "add",
                node_core::CniError::Other("no addresses left".into()),
            );
            let mut sb_cfg = env.sandbox_config("broken");
            // no cgroup parent in the config: the runtime makes one for the pod (and removes it)
            sb_cfg.linux.as_mut().unwrap().cgroup_parent.clear();
            let err = try_run_pod(&rt, &sb_cfg).await.unwrap_err();
            assert!(
                matches!(&err, RuntimeError::Network(m) if m.contains("no addresses left")),
                "{err}"
            );
            let rtroot = env.root.path().join("rt");
            assert_eq!(
                std::fs::read_dir(rtroot.join("sandboxes")).unwrap().count(),
                0
            );
            assert_eq!(
                std::fs::read_dir(rtroot.join("state/sandboxes"))
                    .unwrap()
                    .count(),
                0
            );
            assert_eq!(env.mounts_under_root(), Vec::<String>::new());
            assert_eq!(env.cgroups_left(), Vec::<PathBuf>::new());

            // the same pod works once the network does
            let sb = run_pod(&rt, &sb_cfg).await;
            // an unknown image, an unknown sandbox, a program that does not exist
            let bad = container_config("bad", &["true"]).with_image("nope:latest");
            let e = create_container(&rt, &sb, None, bad).await.unwrap_err();
            assert!(e.is_not_found(), "{e}");
            let e = create_container(&rt, "0123", None, container_config("x", &["true"]))
                .await
                .unwrap_err();
            assert!(e.is_not_found(), "{e}");
            let id = create_container(
                &rt,
                &sb,
                None,
                container_config("missing", &["/no/such/program"]),
            )
            .await
            .unwrap();
            let e = rt.start_container(&id).await.unwrap_err();
            assert!(e.to_string().contains("/no/such/program"), "{e}");
            let st = status(&rt, &id).await;
            assert_eq!(
                (st.state, st.reason.as_str()),
                (cri::ContainerState::ContainerExited as i32, "StartError")
            );
            // no command: the image's Cmd (`sh`, with no input) runs and completes
            let id = create_container(&rt, &sb, None, container_config("image-cmd", &[]))
                .await
                .unwrap();
            rt.start_container(&id).await.unwrap();
            let st = wait_exited(&rt, &id).await;
            assert_eq!(
                (st.exit_code, st.reason.as_str()),
                (0, "Completed"),
                "{st:?}"
            );
            // unknown ids
            for e in [
                rt.start_container("ffff").await.unwrap_err(),
                rt.stop_container("ffff", Duration::ZERO).await.unwrap_err(),
                rt.container_status("ffff", false).await.unwrap_err(),
                rt.stop_pod_sandbox("ffff").await.unwrap_err(),
                rt.pod_sandbox_status("../../etc", false).await.unwrap_err(),
            ] {
                assert!(e.is_not_found(), "{e}");
            }
            // a device asked for is there and usable; others are not
            let mut dev = container_config("dev", &["sleep", "1000"]);
            dev.devices = vec![cri::Device {
                host_path: "/dev/loop-control".into(),
                container_path: "/dev/loop-control".into(),
                permissions: "rw".into(),
            }];
            if Path::new("/dev/loop-control").exists() {
                let id = run_container(&rt, &sb, &sb_cfg, dev).await;
                let out = exec(
                    &rt,
                    &id,
                    &["sh", "-c", "exec 3</dev/loop-control && echo opened"],
                )
                .await;
                assert_eq!(trimmed(&out.stdout), "opened", "{out:?}");
                rt.remove_container(&id).await.unwrap();
            }
            // a directory left by a runtime that died while creating a sandbox (an old one, with a
            // namespace bind-mounted in it) is swept by the next runtime on the root
            let orphan = env.root.path().join("rt/sandboxes/0rphan");
            std::fs::create_dir_all(orphan.join("ns")).unwrap();
            std::fs::write(orphan.join("ns/net"), b"").unwrap();
            let (src, dst) = (
                std::ffi::CString::new("/proc/thread-self/ns/net").unwrap(),
                std::ffi::CString::new(orphan.join("ns/net").display().to_string()).unwrap(),
            );
            // SAFETY: a bind mount under the test's own root.
            assert_eq!(
                unsafe {
                    libc::mount(
                        src.as_ptr(),
                        dst.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND,
                        std::ptr::null(),
                    )
                },
                0
            );
            let old = [libc::timeval {
                tv_sec: 1_000_000_000,
                tv_usec: 0,
            }; 2];
            let dir = std::ffi::CString::new(orphan.display().to_string()).unwrap();
            // SAFETY: setting the times of our own directory.
            assert_eq!(unsafe { libc::utimes(dir.as_ptr(), old.as_ptr()) }, 0);
            let before = env.mounts_under_root();
            assert!(before.iter().any(|m| m.contains("0rphan")), "{before:?}");
            drop(env.runtime());
            assert!(!orphan.exists(), "the orphan is swept");
            let after = env.mounts_under_root();
            assert_eq!(
                after.len(),
                before.len() - 1,
                "only the orphan's mount went: {after:?}"
            );
            assert!(after.iter().all(|m| !m.contains("0rphan")));
            // concurrent creations: distinct pods all run, the same pod twice runs once
            let names = ["c1", "c2", "c3", "c3"];
            let cfgs: Vec<cri::PodSandboxConfig> =
                names.iter().map(|n| env.sandbox_config(n)).collect();
            let results = futures::future::join_all(cfgs.iter().map(|c| try_run_pod(&rt, c))).await;
            let ok: Vec<String> = results
                .iter()
                .filter_map(|r| r.as_ref().ok().cloned())
                .collect();
            assert_eq!(ok.len(), 3, "{results:?}");
            assert!(
                results
                    .iter()
                    .any(|r| matches!(r, Err(RuntimeError::AlreadyExists(_))))
            );
            for id in ok {
                rt.remove_pod_sandbox(&id).await.unwrap();
            }
            rt.remove_container("ffff").await.unwrap();
            rt.remove_pod_sandbox("ffff").await.unwrap();
            rt.remove_pod_sandbox(&sb).await.unwrap();
            assert_eq!(env.cgroups_left(), Vec::<PathBuf>::new());
        },
    );
}

/// The reference `bridge` plugin with `host-local` IPAM, executed as the CNI spec says (a test
/// stand-in for node-cni's runtime: enough to give pods real addresses on a real bridge).
struct ReferenceBridge {
    data_dir: PathBuf,
}

impl ReferenceBridge {
    async fn exec(
        &self,
        command: &str,
        a: &node_core::Attachment,
    ) -> Result<Vec<u8>, node_core::CniError> {
        use tokio::io::AsyncWriteExt;
        let conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "nktest",
            "type": "bridge",
            "bridge": "nktbr0",
            "isGateway": false,
            "ipMasq": false,
            "ipam": {"type": "host-local", "subnet": "10.77.0.0/24", "dataDir": self.data_dir},
        });
        let mut child = tokio::process::Command::new("/usr/lib/cni/bridge")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &a.container_id)
            .env("CNI_NETNS", &a.netns)
            .env("CNI_IFNAME", &a.ifname)
            .env("CNI_PATH", "/usr/lib/cni")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| node_core::CniError::Other(e.to_string()))?;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.to_string().as_bytes())
            .await
            .unwrap();
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| node_core::CniError::Other(e.to_string()))?;
        if !out.status.success() {
            return Err(node_core::CniError::Other(format!(
                "bridge {command}: {} {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(out.stdout)
    }
}

#[async_trait::async_trait]
impl node_core::CniPlugin for ReferenceBridge {
    async fn add(
        &self,
        a: &node_core::Attachment,
    ) -> Result<node_core::CniResult, node_core::CniError> {
        let out = self.exec("ADD", a).await?;
        serde_json::from_slice(&out).map_err(|e| node_core::CniError::Other(e.to_string()))
    }
    async fn del(&self, a: &node_core::Attachment) -> Result<(), node_core::CniError> {
        self.exec("DEL", a).await.map(|_| ())
    }
    async fn check(&self, a: &node_core::Attachment) -> Result<(), node_core::CniError> {
        self.exec("CHECK", a).await.map(|_| ())
    }
    async fn status(&self) -> Result<(), node_core::CniError> {
        Ok(())
    }
    async fn gc(&self, _keep: &[node_core::AttachmentKey]) -> Result<(), node_core::CniError> {
        Ok(())
    }
}

#[test]
fn two_pods_talk_over_the_reference_bridge_plugin() {
    if !prerequisites("two_pods_talk_over_the_reference_bridge_plugin")
        || !require_path(
            "two_pods_talk_over_the_reference_bridge_plugin",
            "/usr/lib/cni/bridge",
        )
    {
        return;
    }
    let env = Env::new();
    // the bridge and the pods' host-side veths live in the fixture's namespace
    let ns = NetnsFixture::new("rtbridge").expect("netns");
    ns.run_in(|| {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
            let cni = Arc::new(ReferenceBridge { data_dir: env.root.path().join("ipam") });
            let rt = NativeRuntime::new(NativeConfig { cni, ..env.config() }).unwrap();
            let (a, a_cfg) = env.pod(&rt, "pod-a").await;
            let (b, b_cfg) = env.pod(&rt, "pod-b").await;
            let ip = |id: String| {
                let rt = &rt;
                async move { sandbox_status(rt, &id).await.network.unwrap().ip }
            };
            let (a_ip, b_ip) = (ip(a.clone()).await, ip(b.clone()).await);
            assert!(a_ip.starts_with("10.77.0.") && b_ip.starts_with("10.77.0.") && a_ip != b_ip, "{a_ip} {b_ip}");
            run_container(&rt, &a, &a_cfg, container_config("server", &["httpd", "-f", "-p", "8080", "-h", "/var/www"])).await;
            let script = format!("for i in $(seq 1 100); do wget -q -O - http://{a_ip}:8080/ && break; sleep 0.05; done; exec sleep 1000");
            run_container(&rt, &b, &b_cfg, container_config("client", &["sh", "-c", &script])).await;
            let log = env.logs.join("pod-b/client/0.log");
            wait_for("pod b to fetch pod a's page", Duration::from_secs(15), || async {
                log_entries(&log).iter().any(|e| e.2 == "hello from nodekit")
            })
            .await;
            let veths = || ns.sh("ip -o link show type veth | wc -l").unwrap().trim().to_string();
            assert_eq!(veths(), "2");
            rt.remove_pod_sandbox(&a).await.unwrap();
            rt.remove_pod_sandbox(&b).await.unwrap();
            assert_eq!(veths(), "0", "CNI DEL removed the pods' veths");
            assert_eq!(env.mounts_under_root(), Vec::<String>::new());
            assert_eq!(env.cgroups_left(), Vec::<PathBuf>::new());
        })
    })
    .expect("inside netns");
}

/// The assembly an operator makes: an `ImageStore` pulls from a registry through the CRI image
/// service, and the same store is the runtime's `RootfsProvider`.
#[test]
fn an_image_pulled_from_a_registry_runs_from_the_image_store() {
    let test = "an_image_pulled_from_a_registry_runs_from_the_image_store";
    if !prerequisites(test) || !node_test_support::require_command(test, "docker-registry") {
        return;
    }
    let env = Env::new();
    let reg = node_test_support::LocalRegistry::start().expect("registry");
    let img = node_test_support::TestImage::busybox()
        .file("/srv/motd", "pulled from the registry\n", 0o644)
        .cmd(&["sh", "-c", "cat /srv/motd; exec sleep 1000"])
        .build()
        .unwrap();
    let reference = reg.push(&img, "nodekit/pulled", "1.0").unwrap();
    use node_core::ImageBackend;
    use node_cri::native::image::{ImageStore, ImageStoreConfig};
    let store = Arc::new(
        ImageStore::new(ImageStoreConfig {
            root: env.root.path().join("images"),
            ..Default::default()
        })
        .unwrap(),
    );
    // the pull from the node's side (the registry listens on the node's loopback)
    let image_ref = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(store.pull_image(pod_fixture::image_spec(&reference), None, None))
        .unwrap();
    assert_eq!(image_ref, img.config.digest);
    in_netns("rtpull", || async {
        let rt = NativeRuntime::new(NativeConfig {
            images: store.clone(),
            ..env.config()
        })
        .unwrap();
        let sb_cfg = env.sandbox_config("pulled");
        let sb = pod_fixture::run_pod(&rt, &sb_cfg).await;
        // no command: the image's own Cmd runs, from the pulled layers
        let cfg = container_config("app", &[]).with_image(&reference);
        let id = run_container(&rt, &sb, &sb_cfg, cfg).await;
        let log = env.logs.join("pulled/app/0.log");
        wait_for(
            "the image's Cmd output",
            Duration::from_secs(10),
            || async {
                log_entries(&log)
                    .iter()
                    .any(|e| e.2 == "pulled from the registry")
            },
        )
        .await;
        let st = status(&rt, &id).await;
        assert_eq!(st.state, cri::ContainerState::ContainerRunning as i32);
        assert_eq!(
            (st.image_ref.as_str(), st.image_id.as_str()),
            (image_ref.as_str(), image_ref.as_str())
        );
        // the rootfs is an overlay over the store's unpacked layer: writes stay in the container
        let out = rt
            .exec_sync(
                &id,
                vec![
                    "sh".into(),
                    "-c".into(),
                    "echo changed > /srv/motd && cat /srv/motd && grep ' / ' /proc/self/mounts"
                        .into(),
                ],
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.starts_with("changed\noverlay / overlay"), "{out:?}");
        let layer = store.layer_dirs(&image_ref).unwrap()[0].join("srv/motd");
        assert_eq!(
            std::fs::read_to_string(&layer).unwrap(),
            "pulled from the registry\n",
            "the shared layer is untouched"
        );
        // the image is found by its id as well (what the kubelet passes after a pull)
        let by_id = container_config("by-id", &["true"]).with_image(&image_ref);
        let id2 = run_container(&rt, &sb, &sb_cfg, by_id).await;
        let st = wait_exited(&rt, &id2).await;
        assert_eq!((st.exit_code, st.reason.as_str()), (0, "Completed"));
        rt.remove_pod_sandbox(&sb).await.unwrap();
        assert_eq!(env.mounts_under_root(), Vec::<String>::new());
        assert_eq!(env.cgroups_left(), Vec::<PathBuf>::new());
        store
            .remove_image(pod_fixture::image_spec(&reference))
            .await
            .unwrap();
        assert!(store.list_images(None).await.unwrap().is_empty());
    });
}

/// The pids of every `cgroup.procs` at or below the cgroup directories `dirs`.
fn pids_below(dirs: &[PathBuf]) -> Vec<i32> {
    let mut pids = vec![];
    let mut todo = dirs.to_vec();
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                todo.push(e.path());
            }
        }
        pids.extend(
            std::fs::read_to_string(d.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().parse::<i32>().ok()),
        );
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

#[test]
fn a_runtime_killed_while_creating_a_sandbox_leaves_a_notready_record_that_stop_and_remove_clean_up()
 {
    if !prerequisites(
        "a_runtime_killed_while_creating_a_sandbox_leaves_a_notready_record_that_stop_and_remove_clean_up",
    ) {
        return;
    }
    let env = Env::new();
    in_netns("rtcrash", || async {
        // the runtime "dies" once the pause process runs in the pod's cgroup and its namespaces
        // and /dev/shm are mounted, before the record names them: the call is dropped there
        let crashing = NativeRuntime::new(NativeConfig {
            hang_after_pause_for_tests: true,
            ..env.config()
        })
        .unwrap();
        let req = cri::RunPodSandboxRequest {
            config: Some(env.sandbox_config("crash")),
            runtime_handler: String::new(),
        };
        let at_crash_point = async {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !env.mounts_under_root().iter().any(|m| m.ends_with("/shm")) {
                assert!(
                    Instant::now() < deadline,
                    "the pod's /dev/shm never appeared"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::select! {
            r = crashing.run_pod_sandbox(req) => panic!("run_pod_sandbox returned {r:?}"),
            () = at_crash_point => {}
        }
        drop(crashing);
        // the pause process joins the pod's cgroup itself, right after its fork
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut pids = pids_below(&cgroup_dirs(&env.cgroup_parent));
        while pids.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
            pids = pids_below(&cgroup_dirs(&env.cgroup_parent));
        }
        assert!(
            !pids.is_empty() && pids.iter().all(|p| alive(*p)),
            "the pause process runs in the pod's cgroup: {pids:?}"
        );
        let netns = std::fs::read_link(format!("/proc/{}/ns/net", pids[0])).unwrap();
        assert!(
            env.mounts_under_root()
                .iter()
                .any(|m| m.ends_with("/ns/net")),
            "{:?}",
            env.mounts_under_root()
        );

        // a restarted runtime knows the half-made sandbox
        let rt = env.runtime();
        let listed = rt.list_pod_sandbox(None).await.unwrap();
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(
            listed[0].state,
            cri::PodSandboxState::SandboxNotready as i32
        );
        assert_eq!(listed[0].metadata.as_ref().unwrap().name, "crash");
        let id = listed[0].id.clone();
        assert!(pids.iter().all(|p| alive(*p)), "nothing killed it yet");

        rt.stop_pod_sandbox(&id).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while pids.iter().any(|p| alive(*p)) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            pids.iter().all(|p| !alive(*p)),
            "stop killed every process of the sandbox: {pids:?}"
        );
        rt.remove_pod_sandbox(&id).await.unwrap();
        assert!(rt.list_pod_sandbox(None).await.unwrap().is_empty());
        assert_eq!(env.mounts_under_root(), Vec::<String>::new());
        assert_eq!(env.cgroups_left(), Vec::<PathBuf>::new());
        assert!(pids_below(&cgroup_dirs(&env.cgroup_parent)).is_empty());
        assert!(!env.root.path().join("rt/sandboxes").join(&id).exists());
        // nothing holds the pod's network namespace any more
        let holders: Vec<_> = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|e| std::fs::read_link(e.path().join("ns/net")).ok().as_ref() == Some(&netns))
            .map(|e| e.file_name())
            .collect();
        assert!(holders.is_empty(), "{netns:?} held by {holders:?}");
    });
}
