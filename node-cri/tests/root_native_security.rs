//! Root tests of what a container of the native runtime can see and do (need root, overlayfs,
//! cgroups and busybox-static): no host processes, mounts or network; capabilities as
//! configured; no_new_privs; tmpfs-backed secrets stay tmpfs; a read-only root filesystem;
//! masked paths; `Localhost` seccomp profiles. Every assertion is an observation made from
//! inside the container (exec_sync or the container's own output). Fixture:
//! `common/native_fixture.rs` (its own runtime root, cgroup parent and network namespace,
//! everything removed on drop).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::native::{container_config, native_test, run_container};
use common::pod_fixture::{self, security, sh};
use node_core::{RuntimeBackend, RuntimeError, cri};
use node_cri::native::runtime::{DEFAULT_MASKED_PATHS, DEFAULT_READONLY_PATHS};

/// The mount points of a mountinfo text.
fn mount_points(mountinfo: &str) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
        .collect()
}

/// A capability line of `/proc/self/status` (`CapEff`...) as a number.
fn cap_field(status: &str, field: &str) -> u64 {
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in {status}"));
    u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
}

/// A tmpfs on the host, as the kubelet makes for a secret volume; unmounted by the fixture.
fn host_tmpfs(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let (src, dst) = (
        std::ffi::CString::new("tmpfs").unwrap(),
        std::ffi::CString::new(dir.display().to_string()).unwrap(),
    );
    // SAFETY: mounting a tmpfs on a directory under the test's own root.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            src.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            c"mode=0755,size=1m".as_ptr().cast(),
        )
    };
    assert_eq!(rc, 0, "tmpfs: {}", std::io::Error::last_os_error());
}

#[test]
fn a_container_sees_no_host_processes_mounts_or_network() {
    native_test(
        "a_container_sees_no_host_processes_mounts_or_network",
        "secview",
        async |env, rt| {
            let sb_cfg = env.sandbox_config("view");
            let sb = pod_fixture::run_pod(&rt, &sb_cfg).await;
            let data = env.root.path().join("data");
            std::fs::create_dir_all(&data).unwrap();
            let mut cfg = container_config("app", &["sleep", "1000"]);
            cfg.mounts = vec![cri::Mount {
                container_path: "/data".into(),
                host_path: data.display().to_string(),
                readonly: true,
                ..Default::default()
            }];
            let id = run_container(&rt, &sb, &sb_cfg, cfg).await;

            // processes: its PID namespace only (the sleep as pid 1, and the exec's own shell)
            let (_, procs, _) = sh(
                &rt,
                &id,
                "for p in /proc/[0-9]*; do echo \"${p#/proc/} $(cat $p/comm)\"; done",
            )
            .await;
            let procs: Vec<(u32, String)> = procs
                .lines()
                .map(|l| {
                    let (pid, comm) = l.split_once(' ').unwrap();
                    (pid.parse().unwrap(), comm.to_string())
                })
                .collect();
            assert!(procs.contains(&(1, "sleep".into())), "{procs:?}");
            assert!(
                procs.iter().all(
                    |(pid, comm)| *pid < 100 && ["sleep", "sh", "cat"].contains(&comm.as_str())
                ),
                "only the container's processes: {procs:?}"
            );
            let host_pid = std::process::id();
            assert!(procs.iter().all(|(p, _)| *p != host_pid), "{procs:?}");

            // mounts: the root filesystem, the runtime's standard mounts, the configured ones
            let (_, mountinfo, _) = sh(&rt, &id, "cat /proc/self/mountinfo").await;
            let inside = mount_points(&mountinfo);
            let mut allowed: BTreeSet<String> = [
                "/",
                "/proc",
                "/dev",
                "/dev/pts",
                "/dev/shm",
                "/dev/mqueue",
                "/sys",
                "/etc/hostname",
                "/etc/hosts",
                "/etc/resolv.conf",
                "/data",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            allowed.extend(DEFAULT_MASKED_PATHS.iter().map(|s| s.to_string()));
            allowed.extend(DEFAULT_READONLY_PATHS.iter().map(|s| s.to_string()));
            let unexpected: Vec<&String> =
                inside.iter().filter(|m| !allowed.contains(*m)).collect();
            assert!(
                unexpected.is_empty(),
                "host mounts leaked: {unexpected:?}\n{mountinfo}"
            );
            let root_line = mountinfo
                .lines()
                .find(|l| l.split_whitespace().nth(4) == Some("/"))
                .unwrap();
            assert!(root_line.contains(" - overlay "), "{root_line}");
            // and no mount point of the host that the container does not have itself
            let host = mount_points(&std::fs::read_to_string("/proc/self/mountinfo").unwrap());
            let leaked: Vec<&String> = host
                .iter()
                .filter(|m| !allowed.contains(*m) && inside.contains(m))
                .collect();
            assert!(leaked.is_empty(), "{leaked:?}");

            // network: the pod's namespace, with loopback only (the fake CNI plugin adds nothing)
            let (_, devs, _) = sh(&rt, &id, "tail -n +3 /proc/net/dev | cut -d: -f1").await;
            let devs: Vec<&str> = devs.lines().map(str::trim).collect();
            assert_eq!(devs, vec!["lo"]);
            let (_, ns, _) = sh(&rt, &id, "readlink /proc/self/ns/net").await;
            for other in ["/proc/self/ns/net", "/proc/thread-self/ns/net"] {
                let other = std::fs::read_link(other).unwrap();
                assert_ne!(
                    ns,
                    other.display().to_string(),
                    "not the host's (the main thread's) nor the node's (the fixture's)"
                );
            }
            rt.remove_pod_sandbox(&sb).await.unwrap();
            assert_eq!(env.cgroups_left(), Vec::<PathBuf>::new());
        },
    );
}

#[test]
fn capabilities_match_the_config_and_no_new_privs_is_honoured() {
    native_test(
        "capabilities_match_the_config_and_no_new_privs_is_honoured",
        "seccaps",
        async |env, rt| {
            let sb_cfg = env.sandbox_config("caps");
            let sb = pod_fixture::run_pod(&rt, &sb_cfg).await;
            // containerd's default set: CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP
            // NET_BIND_SERVICE NET_RAW SYS_CHROOT MKNOD AUDIT_WRITE SETFCAP (docker's a80425fb);
            // MKNOD only where the devices cgroup (v1) confines it
            let mknod = 1u64 << 27;
            let default = if Path::new("/sys/fs/cgroup/devices").exists() {
                0xa804_25fb
            } else {
                0xa804_25fb & !mknod
            };
            // (name, add, drop, no_new_privs, the expected capability mask)
            type Case<'a> = (&'a str, &'a [&'a str], &'a [&'a str], bool, u64);
            let cases: [Case<'_>; 3] = [
                ("default", &[], &[], false, default),
                (
                    "add",
                    &["NET_ADMIN", "CAP_SYS_TIME"],
                    &[],
                    true,
                    default | 1 << 12 | 1 << 25,
                ),
                (
                    "drop",
                    &[],
                    &["NET_RAW", "chown"],
                    true,
                    default & !(1 << 13 | 1),
                ),
            ];
            for (name, add, drop, nnp, want) in cases {
                let mut cfg = container_config(name, &["sleep", "1000"]);
                let sc = security(&mut cfg);
                sc.no_new_privs = nnp;
                sc.capabilities = Some(cri::Capability {
                    add_capabilities: add.iter().map(|s| s.to_string()).collect(),
                    drop_capabilities: drop.iter().map(|s| s.to_string()).collect(),
                    ..Default::default()
                });
                let id = run_container(&rt, &sb, &sb_cfg, cfg).await;
                // the exec and the container's own process (pid 1) alike
                for proc in ["self", "1"] {
                    let (_, status, _) = sh(&rt, &id, &format!("cat /proc/{proc}/status")).await;
                    for field in ["CapEff", "CapPrm", "CapBnd"] {
                        assert_eq!(
                            cap_field(&status, field),
                            want,
                            "{name} /proc/{proc} {field}: {:x} != {want:x}",
                            cap_field(&status, field)
                        );
                    }
                    assert_eq!(cap_field(&status, "CapAmb"), 0, "{name}");
                    let nnp_line = status
                        .lines()
                        .find(|l| l.starts_with("NoNewPrivs:"))
                        .unwrap();
                    assert_eq!(
                        nnp_line.split_whitespace().nth(1),
                        Some(if nnp { "1" } else { "0" }),
                        "{name} /proc/{proc}"
                    );
                }
            }
            // what the capabilities mean: without NET_RAW no raw socket (ping), with it one
            let ids: Vec<String> = rt
                .list_containers(None)
                .await
                .unwrap()
                .into_iter()
                .map(|c| c.id)
                .collect();
            let by_name = |n: &str| {
                let rt = &rt;
                let ids = ids.clone();
                let n = n.to_string();
                async move {
                    for id in ids {
                        let st = pod_fixture::container_status(rt, &id).await;
                        if st.metadata.unwrap().name == n {
                            return id;
                        }
                    }
                    panic!("no container {n}")
                }
            };
            let (drop_id, default_id) = (by_name("drop").await, by_name("default").await);
            let (code, _, err) = sh(&rt, &drop_id, "ping -c 1 -W 1 127.0.0.1").await;
            assert_ne!(code, 0, "no raw socket without NET_RAW");
            assert!(
                err.contains("ermission") || err.contains("not permitted"),
                "{err}"
            );
            let (code, out, err) = sh(&rt, &default_id, "ping -c 1 -W 1 127.0.0.1").await;
            assert_eq!(code, 0, "{out} {err}");
            let (code, _, _) = sh(&rt, &drop_id, "chown 1 /tmp").await;
            assert_ne!(code, 0, "no chown without CAP_CHOWN");
            rt.remove_pod_sandbox(&sb).await.unwrap();
        },
    );
}

#[test]
fn read_only_root_masked_paths_and_tmpfs_secrets() {
    native_test(
        "read_only_root_masked_paths_and_tmpfs_secrets",
        "secfs",
        async |env, rt| {
            let sb_cfg = env.sandbox_config("fs");
            let sb = pod_fixture::run_pod(&rt, &sb_cfg).await;
            let secret = env.root.path().join("secret-volume");
            host_tmpfs(&secret);
            std::fs::write(secret.join("token"), "s3cret").unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(secret.join("token"), std::fs::Permissions::from_mode(0o400))
                .unwrap();
            let mut cfg = container_config("app", &["sleep", "1000"]);
            security(&mut cfg).readonly_rootfs = true;
            cfg.mounts = vec![cri::Mount {
                container_path: "/var/run/secrets/app".into(),
                host_path: secret.display().to_string(),
                readonly: true,
                ..Default::default()
            }];
            let id = run_container(&rt, &sb, &sb_cfg, cfg).await;

            // the read-only root refuses writes; /tmp is part of it, /dev/shm is not
            let (code, _, err) = sh(&rt, &id, "touch /newfile").await;
            assert_ne!(code, 0);
            assert!(err.contains("Read-only file system"), "{err}");
            let (code, _, err) = sh(&rt, &id, "echo x > /tmp/x").await;
            assert_ne!(code, 0, "{err}");
            let (_, opts, _) = sh(&rt, &id, "grep '^overlay / ' /proc/self/mounts").await;
            assert!(opts.contains(" ro,"), "{opts}");
            assert_eq!(
                sh(&rt, &id, "echo x > /dev/shm/x && cat /dev/shm/x")
                    .await
                    .1,
                "x"
            );

            // the secret: tmpfs inside too, its mode kept, read-only
            let (_, fstype, _) = sh(&rt, &id, "stat -f -c %T /var/run/secrets/app").await;
            assert_eq!(fstype, "tmpfs");
            let (_, mode, _) = sh(&rt, &id, "stat -c %a /var/run/secrets/app/token").await;
            assert_eq!(mode, "400");
            assert_eq!(
                sh(&rt, &id, "cat /var/run/secrets/app/token").await.1,
                "s3cret"
            );
            let (code, _, err) = sh(&rt, &id, "echo leak > /var/run/secrets/app/other").await;
            assert_ne!(code, 0, "read-only secret: {err}");

            // masked paths: files are /dev/null (char 1:3, empty), directories an empty tmpfs
            for p in [
                "/proc/keys",
                "/proc/timer_list",
                "/proc/kcore",
                "/proc/sched_debug",
            ] {
                let (_, seen, _) = sh(
                &rt,
                &id,
                &format!(
                    "if [ -e {p} ]; then stat -c '%t:%T %s' {p}; wc -c < {p}; else echo absent; fi"
                ),
            )
            .await;
                if Path::new(p).exists() {
                    assert_eq!(seen, "1:3 0\n0", "{p} is masked");
                } else {
                    assert_eq!(seen, "absent", "{p} (not on this kernel)");
                }
            }
            if Path::new("/sys/firmware").exists() {
                let (_, seen, _) = sh(
                    &rt,
                    &id,
                    "ls -A /sys/firmware | wc -l; stat -f -c %T /sys/firmware",
                )
                .await;
                assert_eq!(seen, "0\ntmpfs");
            }
            // read-only paths refuse writes even to root
            let (code, _, err) = sh(&rt, &id, "echo 1 > /proc/sys/vm/drop_caches").await;
            assert_ne!(code, 0, "{err}");
            assert!(err.contains("Read-only file system"), "{err}");
            let (code, _, _) = sh(&rt, &id, "echo b > /proc/sysrq-trigger").await;
            assert_ne!(code, 0);
            rt.remove_pod_sandbox(&sb).await.unwrap();
            assert_eq!(env.cgroups_left(), Vec::<PathBuf>::new());
        },
    );
}

#[test]
fn localhost_seccomp_profiles_are_applied_and_bad_files_refused() {
    native_test(
        "localhost_seccomp_profiles_are_applied_and_bad_files_refused",
        "secseccomp",
        async |env, rt| {
            let sb_cfg = env.sandbox_config("seccomp");
            let sb = pod_fixture::run_pod(&rt, &sb_cfg).await;
            let profiles = env.root.path().join("seccomp");
            std::fs::create_dir_all(&profiles).unwrap();
            let good = profiles.join("deny-mkdir-and-sigterm.json");
            std::fs::write(
                &good,
                r#"{
              "defaultAction": "SCMP_ACT_ALLOW",
              "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
              "syscalls": [
                {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
                {"names": ["kill"], "action": "SCMP_ACT_ERRNO",
                 "args": [{"index": 1, "value": 15, "op": "SCMP_CMP_EQ"}]},
                {"names": ["no_such_syscall"], "action": "SCMP_ACT_KILL"}
              ]
            }"#,
            )
            .unwrap();
            let localhost = |path: &Path| {
                Some(cri::SecurityProfile {
                    profile_type: cri::security_profile::ProfileType::Localhost as i32,
                    localhost_ref: path.display().to_string(),
                })
            };
            // loaded before the capabilities drop (no no_new_privs) and right before execve (with it)
            for nnp in [false, true] {
                let name = format!("nnp-{nnp}");
                let mut cfg = container_config(&name, &["sleep", "1000"]);
                security(&mut cfg).seccomp = localhost(&good);
                security(&mut cfg).no_new_privs = nnp;
                let id = run_container(&rt, &sb, &sb_cfg, cfg).await;
                let (_, status, _) =
                    sh(&rt, &id, "grep -E '^(Seccomp|NoNewPrivs):' /proc/1/status").await;
                assert_eq!(
                    status,
                    format!("NoNewPrivs:\t{}\nSeccomp:\t2", u8::from(nnp)),
                    "{name}"
                );
                let (code, _, err) = sh(&rt, &id, "mkdir /tmp/d").await;
                assert_ne!(code, 0, "{name}");
                assert!(
                    err.contains("Permission denied"),
                    "EACCES from the profile: {err}"
                );
                let (_, out, _) = sh(
                &rt,
                &id,
                "sleep 100 & p=$!; kill -TERM $p 2>&1; echo term=$?; kill -KILL $p; echo kill=$?",
            )
            .await;
                assert!(
                    out.contains("term=1") && out.contains("kill=0"),
                    "{name}: {out}"
                );
                assert!(out.contains("not permitted"), "{name}: {out}");
                // the rest is allowed
                assert_eq!(sh(&rt, &id, "echo ok > /tmp/f && cat /tmp/f").await.1, "ok");
            }
            // a missing file, a malformed one, an unknown action: clear errors at create
            let malformed = profiles.join("malformed.json");
            std::fs::write(&malformed, "{\"defaultAction\": \"SCMP_ACT_ALLOW\", ").unwrap();
            let unknown = profiles.join("unknown-action.json");
            std::fs::write(&unknown, r#"{"defaultAction": "SCMP_ACT_PERHAPS"}"#).unwrap();
            let missing = profiles.join("missing.json");
            for (path, what) in [
                (&missing, "No such file"),
                (&malformed, "malformed"),
                (&unknown, "defaultAction"),
            ] {
                let mut cfg = container_config("bad", &["true"]);
                security(&mut cfg).seccomp = localhost(path);
                let err = pod_fixture::create_container(&rt, &sb, None, cfg)
                    .await
                    .unwrap_err();
                assert!(
                    matches!(&err, RuntimeError::InvalidArgument(m) if m.contains(&path.display().to_string()) && m.contains(what)),
                    "{err}"
                );
            }
            // nothing of the refused creations is left
            assert_eq!(rt.list_containers(None).await.unwrap().len(), 2);
            rt.remove_pod_sandbox(&sb).await.unwrap();
            assert_eq!(env.cgroups_left(), Vec::<PathBuf>::new());
        },
    );
}
