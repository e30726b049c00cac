//! Root test (cgroups, runc, a container in its own namespaces; no network traffic): a container
//! started by runc with the CRI `cgroup_parent` of its pod (as containerd's cgroupfs driver joins
//! it: `<cgroup_parent>/<container id>`) lands under the pod cgroup and under its limits.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use k8s_openapi::api::core::v1::Pod;
use node_kubelet::node::cgroups::{CgroupConfig, PodCgroups};
use node_test_support::{require_command, require_path, require_root};

/// Deletes the container and the test's cgroup root on drop, even on panic.
struct Fixture {
    cgroups: PodCgroups,
    state: tempfile::TempDir,
    id: String,
}

impl Fixture {
    fn runc(&self) -> Command {
        let mut c = Command::new("runc");
        c.arg("--root").arg(self.state.path());
        c
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self
            .runc()
            .args(["delete", "--force", &self.id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        for uid in self.cgroups.pod_uids() {
            let _ = self.cgroups.remove_pod(&uid);
        }
        if let Err(e) = self.cgroups.destroy() {
            eprintln!("cleanup: {e}");
        }
    }
}

fn bundle(dir: &Path, cgroups_path: &str) {
    let rootfs = dir.join("rootfs");
    for d in ["bin", "proc", "dev", "sys", "tmp"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    let ok = Command::new("runc")
        .args(["spec", "--bundle"])
        .arg(dir)
        .status()
        .unwrap();
    assert!(ok.success(), "runc spec");
    let path = dir.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    spec["process"]["terminal"] = false.into();
    spec["process"]["args"] = serde_json::json!(["/bin/busybox", "sleep", "300"]);
    spec["root"]["path"] = "rootfs".into();
    spec["linux"]["cgroupsPath"] = cgroups_path.into();
    std::fs::write(&path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
}

#[test]
fn a_container_started_with_the_pods_cgroup_parent_lands_in_the_pod_cgroup() {
    let test = "a_container_started_with_the_pods_cgroup_parent_lands_in_the_pod_cgroup";
    if !require_root(test) || !require_command(test, "runc") || !require_path(test, "/bin/busybox")
    {
        return;
    }
    let root = format!("nodekit-parent-{}", std::process::id());
    let f = Fixture {
        cgroups: PodCgroups::new(CgroupConfig::default().root(&root)).unwrap(),
        state: tempfile::tempdir().unwrap(),
        id: format!("nodekit-test-{}", std::process::id()),
    };
    let pod: Pod = serde_saphyr::from_str(
        "metadata: {name: g, namespace: default, uid: 3333-g}\nspec:\n  containers:\n  - {name: c, image: busybox, resources: {limits: {cpu: 250m, memory: 48Mi}}}\n",
    )
    .unwrap();
    let pc = f.cgroups.ensure_pod(&pod).unwrap();
    assert_eq!(pc.cgroup_parent, format!("/{root}/pod3333-g"));

    let dir = tempfile::tempdir().unwrap();
    let cgroups_path = format!("{}/{}", pc.cgroup_parent, f.id);
    bundle(dir.path(), &cgroups_path);
    let ok = f
        .runc()
        .args(["run", "--detach", "--bundle"])
        .arg(dir.path())
        .arg(&f.id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .unwrap();
    assert!(ok.success(), "runc run");
    let state = f.runc().args(["state", &f.id]).output().unwrap();
    let state: serde_json::Value = serde_json::from_slice(&state.stdout).unwrap();
    assert_eq!(state["status"], "running");
    let pid = state["pid"].as_i64().unwrap();

    // the kernel says where the container's process is: under the pod cgroup
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    if f.cgroups.is_v2() {
        assert!(cgroup.contains(&format!("0::{cgroups_path}")), "{cgroup}");
    } else {
        let memory_line = cgroup
            .lines()
            .find(|l| l.split(':').nth(1) == Some("memory"))
            .unwrap();
        assert!(memory_line.ends_with(&cgroups_path), "{memory_line}");
        let pod_mem = PathBuf::from("/sys/fs/cgroup/memory").join(&pc.name);
        let procs = std::fs::read_to_string(pod_mem.join(&f.id).join("cgroup.procs")).unwrap();
        assert!(procs.lines().any(|l| l == pid.to_string()), "{procs}");
        // the pod's limit applies to everything below it
        let limit = std::fs::read_to_string(pod_mem.join("memory.limit_in_bytes")).unwrap();
        assert_eq!(limit.trim(), (48u64 << 20).to_string());
        let usage = f.cgroups.pod_usage(&pod).unwrap().expect("pod usage");
        assert!(usage.memory_working_set_bytes > 0);
    }

    // the pod goes: container deleted, then the pod cgroup in every hierarchy runc touched
    let ok = f
        .runc()
        .args(["delete", "--force", &f.id])
        .status()
        .unwrap();
    assert!(ok.success(), "runc delete");
    f.cgroups.remove_pod("3333-g").unwrap();
    let left: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .map(|e| e.path().join(&pc.name))
        .filter(|p| p.exists())
        .collect();
    assert!(left.is_empty(), "pod cgroup left in {left:?}");
    drop(f);
    let roots: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .map(|e| e.path().join(&root))
        .filter(|p| p.exists())
        .collect();
    assert!(roots.is_empty(), "root cgroup left in {roots:?}");
}
