//! Root tests of the native runtime's cgroup v2 code on whatever cgroup2 hierarchy the host
//! has mounted (needs root, overlayfs and busybox-static). On a v2 host that is
//! `/sys/fs/cgroup` with its controllers; on a hybrid host like this one it is
//! `/sys/fs/cgroup/unified`, where the cpu, memory and pids controllers are owned by the v1
//! hierarchies (a controller lives in one hierarchy at a time), so these tests check what
//! needs no controller (creating nested cgroups, enabling whatever controllers the hierarchy
//! offers, joining, listing and killing processes, CPU usage from `cpu.stat`, removal) and that
//! a limit whose controller is missing is a clear error; the limit files themselves are
//! checked by the unit tests of `cgroup::v2_limits`.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::native::{Env, container_config, in_netns, prerequisites, run_container};
use common::{native, pod_fixture};
use node_core::{RuntimeBackend, RuntimeError, cri};
use node_cri::native::runtime::cgroup::{CgroupHandle, Hierarchy, enable_controllers, is_cgroup2};
use node_cri::native::runtime::{NativeConfig, NativeRuntime};
use node_test_support::require_path;
use node_test_support::sweep::kill_cgroup_tree;

/// The host's cgroup2 mount point, if any.
fn cgroup2_mount() -> Option<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .ok()?
        .lines()
        .find(|l| {
            l.split(" - ")
                .nth(1)
                .is_some_and(|t| t.starts_with("cgroup2 "))
        })
        .and_then(|l| l.split_whitespace().nth(4).map(PathBuf::from))
}

fn ready(test: &str) -> Option<PathBuf> {
    if !prerequisites(test) {
        return None;
    }
    let mount = cgroup2_mount().unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup/unified"));
    require_path(test, mount.join("cgroup.controllers").display().to_string()).then_some(mount)
}

/// Removes a test's cgroup tree under the v2 mount on drop, killing whatever is inside, and
/// gives the mount's root back the `cgroup.subtree_control` it had.
struct V2Tree {
    tree: PathBuf,
    mount: PathBuf,
    subtree_control: String,
}

impl V2Tree {
    fn new(mount: &Path, rel: &str) -> Self {
        Self {
            tree: mount.join(rel),
            mount: mount.to_path_buf(),
            subtree_control: std::fs::read_to_string(mount.join("cgroup.subtree_control"))
                .unwrap_or_default(),
        }
    }
}

impl Drop for V2Tree {
    fn drop(&mut self) {
        kill_cgroup_tree(&self.tree);
        let _ = std::fs::remove_dir(self.tree.parent().unwrap()); // nodekit-test, when unused
        let file = self.mount.join("cgroup.subtree_control");
        let now = std::fs::read_to_string(&file).unwrap_or_default();
        let before: Vec<&str> = self.subtree_control.split_whitespace().collect();
        for c in now.split_whitespace().filter(|c| !before.contains(c)) {
            // fails only while another cgroup below the root still uses it
            let _ = std::fs::write(&file, format!("-{c}"));
        }
    }
}

fn offered(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("cgroup.controllers"))
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[test]
fn a_v2_hierarchy_holds_processes_enables_offered_controllers_and_is_destroyed() {
    let Some(mount) =
        ready("a_v2_hierarchy_holds_processes_enables_offered_controllers_and_is_destroyed")
    else {
        return;
    };
    assert!(is_cgroup2(&mount), "{} is a cgroup2 mount", mount.display());
    native::sweep_stale();
    let base = format!("nodekit-test/{}-v2", std::process::id());
    let tree = V2Tree::new(&mount, &base);
    let root_control = tree.subtree_control.clone();

    // controllers: every wanted one the hierarchy offers is enabled down to the leaf
    let wanted = ["hugetlb", "memory", "pids", "cpu"];
    let expect: Vec<String> = offered(&mount)
        .into_iter()
        .filter(|c| wanted.contains(&c.as_str()))
        .collect();
    let got = enable_controllers(&mount, &format!("{base}/ctl/leaf"), &wanted).unwrap();
    assert_eq!(got, expect);
    for c in &expect {
        for d in [mount.join(&base), mount.join(&base).join("ctl")] {
            let sub = std::fs::read_to_string(d.join("cgroup.subtree_control")).unwrap();
            assert!(
                sub.split_whitespace().any(|s| s == c),
                "{c} in {}",
                d.display()
            );
        }
        let leaf = mount.join(&base).join("ctl/leaf");
        assert!(
            std::fs::read_dir(&leaf).unwrap().flatten().any(|e| e
                .file_name()
                .to_string_lossy()
                .starts_with(&format!("{c}."))),
            "{c} files in the leaf"
        );
    }

    // a process joins, is listed, is accounted, and dies with the cgroup
    let h = Hierarchy::V2(mount.clone());
    let cg = CgroupHandle::create_in(&h, &format!("{base}/pod/ctr")).unwrap();
    assert!(cg.exists() && cg.is_v2());
    let mut child = std::process::Command::new("/bin/busybox")
        .args(["sh", "-c", "while :; do :; done"])
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    std::fs::write(&cg.procs_files()[0], pid.to_string()).unwrap();
    assert_eq!(cg.pids(), vec![pid]);
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        own.lines().any(|l| l == format!("0::/{base}/pod/ctr")),
        "{own}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while cg.cpu_usage_ns().unwrap_or(0) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no CPU usage in cpu.stat"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // no limits: nothing to write; a memory limit without the memory controller: a clear error
    cg.apply(&Default::default(), None).unwrap();
    let limit = cri::LinuxContainerResources {
        memory_limit_in_bytes: 64 << 20,
        ..Default::default()
    };
    let dir = mount.join(&base).join("pod/ctr");
    if offered(&dir).iter().any(|c| c == "memory") {
        cg.apply(&limit, None).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("memory.max"))
                .unwrap()
                .trim(),
            (64u64 << 20).to_string()
        );
    } else {
        let e = cg.apply(&limit, None).unwrap_err().to_string();
        assert!(
            e.contains("memory.max") && e.contains("memory controller is not enabled"),
            "{e}"
        );
    }
    cg.destroy().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
    assert!(!dir.exists() && !cg.exists());
    drop(tree);
    assert_eq!(
        std::fs::read_to_string(mount.join("cgroup.subtree_control")).unwrap(),
        root_control,
        "the root's controllers are as they were"
    );
}

#[test]
fn the_runtime_on_a_v2_hierarchy_places_pods_and_containers_there() {
    let Some(mount) = ready("the_runtime_on_a_v2_hierarchy_places_pods_and_containers_there")
    else {
        return;
    };
    let env = Env::new();
    let _tree = V2Tree::new(&mount, &env.cgroup_parent);
    in_netns("cgv2", || async {
        let rt = NativeRuntime::new(NativeConfig {
            cgroups: Hierarchy::V2(mount.clone()),
            ..env.config()
        })
        .unwrap();
        let sb_cfg = env.sandbox_config("v2");
        let sb = pod_fixture::run_pod(&rt, &sb_cfg).await;
        let id = run_container(
            &rt,
            &sb,
            &sb_cfg,
            container_config("app", &["sleep", "1000"]),
        )
        .await;
        // the container (and an exec in it) is in its v2 cgroup, and in no v1 cgroup of ours
        let out =
            pod_fixture::exec(&rt, &id, &["cat", "/proc/1/cgroup", "/proc/self/cgroup"]).await;
        let text = String::from_utf8_lossy(&out.stdout);
        let want = format!("0::/{}/{id}", env.cgroup_parent);
        assert_eq!(text.lines().filter(|l| *l == want).count(), 2, "{text}");
        assert!(
            text.lines()
                .filter(|l| !l.starts_with("0::"))
                .all(|l| !l.contains(&id)),
            "{text}"
        );
        assert!(mount.join(&env.cgroup_parent).join(&id).is_dir());
        // the pause process is in the sandbox's cgroup
        let info: serde_json::Value =
            serde_json::from_str(&rt.pod_sandbox_status(&sb, true).await.unwrap().info["info"])
                .unwrap();
        let pause = info["pid"].as_i64().unwrap();
        let pause_cg = std::fs::read_to_string(format!("/proc/{pause}/cgroup")).unwrap();
        assert!(
            pause_cg
                .lines()
                .any(|l| l == format!("0::/{}/{sb}", env.cgroup_parent)),
            "{pause_cg}"
        );
        // stats from cpu.stat (no controller needed)
        let stats = rt.container_stats(&id).await.unwrap();
        assert!(stats.cpu.unwrap().usage_core_nano_seconds.is_some());
        // a memory limit where the hierarchy has no memory controller: refused, nothing left
        if !offered(&mount).iter().any(|c| c == "memory") {
            let mut cfg = container_config("limited", &["true"]);
            cfg.linux.as_mut().unwrap().resources = Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: 32 << 20,
                ..Default::default()
            });
            let e = pod_fixture::create_container(&rt, &sb, None, cfg)
                .await
                .unwrap_err();
            assert!(
                matches!(&e, RuntimeError::Internal(m) if m.contains("memory.max")),
                "{e}"
            );
            assert_eq!(rt.list_containers(None).await.unwrap().len(), 1);
        }
        rt.remove_pod_sandbox(&sb).await.unwrap();
        let left: Vec<_> = std::fs::read_dir(mount.join(&env.cgroup_parent))
            .map(|r| {
                r.flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(
            left,
            Vec::<PathBuf>::new(),
            "the pod's v2 cgroups are removed"
        );
    });
}
