//! Root tests (need root and a writable cgroup hierarchy): the pod cgroup hierarchy on this
//! machine's cgroups. This machine is hybrid: v1 controllers under /sys/fs/cgroup/<controller>,
//! cgroup2 at /sys/fs/cgroup/unified with no controller enabled, so limits are tested on v1;
//! on a pure v2 host the same test reads cpu.weight / cpu.max / memory.max.

use std::path::PathBuf;

use k8s_openapi::api::core::v1::Pod;
use node_kubelet::node::cgroups::{CgroupConfig, PodCgroups};
use node_kubelet::node::qos::QosClass;
use node_test_support::require_root;

/// Removes the test's cgroup root on drop, even on panic.
struct Hierarchy(PodCgroups);

impl Drop for Hierarchy {
    fn drop(&mut self) {
        if let Err(e) = self.0.destroy() {
            eprintln!("cleanup: {e}");
        }
    }
}

fn pod(name: &str, uid: &str, resources: &str) -> Pod {
    serde_saphyr::from_str(&format!(
        "metadata: {{name: {name}, namespace: default, uid: {uid}}}\nspec:\n  containers:\n  - {{name: c, image: busybox{resources}}}\n"
    ))
    .unwrap()
}

fn read(path: PathBuf) -> String {
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_string()
}

/// The directory of a cgroup for a controller: /sys/fs/cgroup/<c>/<name> on v1,
/// /sys/fs/cgroup/<name> on v2.
fn controller_dir(cg: &PodCgroups, controller: &str, name: &str) -> PathBuf {
    if cg.is_v2() {
        PathBuf::from("/sys/fs/cgroup").join(name)
    } else {
        PathBuf::from("/sys/fs/cgroup").join(controller).join(name)
    }
}

#[test]
fn guaranteed_and_besteffort_pods_get_their_cgroups_and_limits() {
    if !require_root("guaranteed_and_besteffort_pods_get_their_cgroups_and_limits") {
        return;
    }
    let root = format!("nodekit-test-{}", std::process::id());
    let h = Hierarchy(PodCgroups::new(CgroupConfig::default().root(&root)).expect("hierarchy"));
    let cg = &h.0;

    let guaranteed = pod(
        "g",
        "1111-g",
        ", resources: {limits: {cpu: 250m, memory: 64Mi}}",
    );
    let besteffort = pod("be", "2222-be", "");
    let g = cg.ensure_pod(&guaranteed).expect("guaranteed cgroup");
    let be = cg.ensure_pod(&besteffort).expect("besteffort cgroup");

    assert_eq!(g.qos, QosClass::Guaranteed);
    assert_eq!(g.cgroup_parent, format!("/{root}/pod1111-g"));
    assert_eq!(be.qos, QosClass::BestEffort);
    assert_eq!(be.cgroup_parent, format!("/{root}/besteffort/pod2222-be"));

    if cg.is_v2() {
        let gdir = controller_dir(cg, "", &g.name);
        assert_eq!(read(gdir.join("cpu.weight")), "10"); // shares 256 -> weight 10
        assert_eq!(read(gdir.join("cpu.max")), "25000 100000");
        assert_eq!(read(gdir.join("memory.max")), (64u64 << 20).to_string());
        let bdir = controller_dir(cg, "", &be.name);
        assert_eq!(read(bdir.join("cpu.weight")), "1");
        assert_eq!(read(bdir.join("cpu.max")), "max 100000");
        assert_eq!(read(bdir.join("memory.max")), "max");
    } else {
        let gcpu = controller_dir(cg, "cpu", &g.name);
        assert_eq!(read(gcpu.join("cpu.shares")), "256");
        assert_eq!(read(gcpu.join("cpu.cfs_quota_us")), "25000");
        assert_eq!(read(gcpu.join("cpu.cfs_period_us")), "100000");
        let gmem = controller_dir(cg, "memory", &g.name);
        assert_eq!(
            read(gmem.join("memory.limit_in_bytes")),
            (64u64 << 20).to_string()
        );

        let bcpu = controller_dir(cg, "cpu", &be.name);
        assert_eq!(read(bcpu.join("cpu.shares")), "2");
        assert_eq!(read(bcpu.join("cpu.cfs_quota_us")), "-1");
        let bmem = controller_dir(cg, "memory", &be.name);
        let unlimited: u64 = read(bmem.join("memory.limit_in_bytes")).parse().unwrap();
        assert!(
            unlimited > 1 << 50,
            "besteffort memory is unlimited: {unlimited}"
        );
        // the QoS class cgroup of BestEffort has the minimum shares
        let class = controller_dir(cg, "cpu", &format!("{root}/besteffort"));
        assert_eq!(read(class.join("cpu.shares")), "2");
    }
    assert_eq!(
        cg.pod_uids(),
        vec!["1111-g".to_string(), "2222-be".to_string()]
    );

    // a spec update changes the limits in place
    let bigger = pod(
        "g",
        "1111-g",
        ", resources: {limits: {cpu: '1', memory: 128Mi}}",
    );
    cg.ensure_pod(&bigger).unwrap();
    if !cg.is_v2() {
        let gcpu = controller_dir(cg, "cpu", &g.name);
        assert_eq!(read(gcpu.join("cpu.shares")), "1024");
        assert_eq!(read(gcpu.join("cpu.cfs_quota_us")), "100000");
    }

    // a process placed in the pod cgroup is accounted there (a real effect of the hierarchy)
    if !cg.is_v2() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let procs = controller_dir(cg, "memory", &g.name).join("cgroup.procs");
        std::fs::write(&procs, child.id().to_string()).unwrap();
        assert!(read(procs.clone()).contains(&child.id().to_string()));
        // removal refuses while the process lives
        let busy = cg.remove_pod("1111-g");
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(
            busy.is_err(),
            "a cgroup with a live process cannot be removed"
        );
    }

    cg.remove_pod("1111-g").expect("remove guaranteed");
    cg.remove_pod("2222-be").expect("remove besteffort");
    for dir in cg
        .directories(&g.name)
        .into_iter()
        .chain(cg.directories(&be.name))
    {
        assert!(!dir.exists(), "{} removed", dir.display());
    }
    let roots = cg.directories(&root);
    drop(h);
    for dir in roots {
        assert!(!dir.exists(), "{} removed on drop", dir.display());
    }
}
