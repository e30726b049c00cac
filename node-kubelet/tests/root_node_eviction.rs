//! Root test (cgroups, processes): under simulated memory pressure (a memory.available threshold
//! set above what the node has available), with real processes using memory in their pod
//! cgroups, the BestEffort pod is evicted first, then the Burstable one.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use node_kubelet::node::cgroups::{CgroupConfig, PodCgroups};
use node_kubelet::node::eviction::{
    ContainerUsage, EvictionConfig, EvictionManager, NodeSignals, PodUsage, Signal, SignalObserver,
    parse_thresholds,
};
use node_test_support::{require_path, require_root};

/// Kills the pods' processes and removes the test's cgroup root on drop, even on panic.
struct Fixture {
    cgroups: PodCgroups,
    children: Vec<(String, Child, Option<std::process::ChildStdin>)>,
}

impl Fixture {
    fn kill(&mut self, uid: &str) {
        for (_, c, _) in self.children.iter_mut().filter(|(u, _, _)| u == uid) {
            let _ = c.kill();
            let _ = c.wait();
        }
        // the shell's helpers (yes, head) are gone with it; wait for the cgroup to empty
        for _ in 0..100 {
            if self.cgroups.remove_pod(uid).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("pod cgroup {uid} not removable");
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for (_, c, _) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for uid in self.cgroups.pod_uids() {
            let _ = self.cgroups.remove_pod(&uid);
        }
        if let Err(e) = self.cgroups.destroy() {
            eprintln!("cleanup: {e}");
        }
    }
}

fn pod(name: &str, resources: &str) -> Pod {
    serde_saphyr::from_str(&format!(
        "metadata: {{name: {name}, namespace: default, uid: uid-{name}}}\nspec:\n  containers:\n  - {{name: app, image: busybox{resources}}}\n"
    ))
    .unwrap()
}

/// Starts a shell in the pod's cgroup that holds about `mb` MB in a shell variable.
fn start_in_pod(f: &mut Fixture, p: &Pod, mb: usize) {
    let cg = f.cgroups.ensure_pod(p).unwrap();
    let mut child = Command::new("/bin/busybox")
        .args([
            "sh",
            "-c",
            &format!(
                "read go; x=$(yes aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa | head -c {}); echo ready; read hold",
                mb << 20
            ),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    for dir in f.cgroups.directories(&cg.name) {
        std::fs::write(dir.join("cgroup.procs"), child.id().to_string()).unwrap();
    }
    // the shell holds its memory until its stdin closes
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "go").unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    f.children
        .push((p.metadata.uid.clone().unwrap(), child, Some(stdin)));
}

fn usage_of(f: &Fixture, p: &Pod) -> PodUsage {
    let u = f.cgroups.pod_usage(p).unwrap().expect("pod cgroup");
    PodUsage {
        pod: p.clone(),
        containers: vec![ContainerUsage {
            name: "app".into(),
            memory_bytes: u.memory_working_set_bytes,
            ephemeral_bytes: 0,
        }],
        ..Default::default()
    }
}

#[tokio::test]
async fn memory_pressure_evicts_besteffort_first() {
    if !require_root("memory_pressure_evicts_besteffort_first")
        || !require_path("memory_pressure_evicts_besteffort_first", "/bin/busybox")
    {
        return;
    }
    let root = format!("nodekit-evict-{}", std::process::id());
    let mut f = Fixture {
        cgroups: PodCgroups::new(CgroupConfig::default().root(&root)).unwrap(),
        children: Vec::new(),
    };
    let guaranteed = pod(
        "guaranteed",
        ", resources: {limits: {cpu: 100m, memory: 200Mi}}",
    );
    let burstable = pod("burstable", ", resources: {requests: {memory: 4Mi}}");
    let besteffort = pod("besteffort", "");
    start_in_pod(&mut f, &guaranteed, 24);
    start_in_pod(&mut f, &burstable, 16);
    start_in_pod(&mut f, &besteffort, 8);

    let all = [&guaranteed, &burstable, &besteffort];
    let usages: Vec<PodUsage> = all.iter().map(|p| usage_of(&f, p)).collect();
    for u in &usages {
        let m = u.containers[0].memory_bytes;
        assert!(
            m > 4 << 20,
            "{}: {m} bytes measured in its cgroup",
            u.pod.metadata.name.as_deref().unwrap()
        );
    }

    let signals = NodeSignals {
        nodefs: std::env::temp_dir(),
        imagefs: None,
    };
    let total = signals.observe().unwrap()[&Signal::MemoryAvailable].capacity;
    let mut manager = EvictionManager::new(
        EvictionConfig {
            thresholds: parse_thresholds(&format!("memory.available<{total}")).unwrap(),
            ..Default::default()
        },
        Arc::new(signals),
    );
    let first = manager.synchronize(&usages).await.unwrap();
    assert!(first.pressure.contains("MemoryPressure"));
    let victim = first.evict.expect("a pod to evict");
    assert_eq!(victim.pod.name, "besteffort");
    assert_eq!(victim.reason, "Evicted");
    assert!(
        victim.message.contains("Container app was using"),
        "{}",
        victim.message
    );

    // the pod workers stop it; the next round takes the Burstable pod
    f.kill("uid-besteffort");
    let usages: Vec<PodUsage> = [&guaranteed, &burstable]
        .iter()
        .map(|p| usage_of(&f, p))
        .collect();
    let second = manager.synchronize(&usages).await.unwrap();
    assert_eq!(second.evict.expect("next pod").pod.name, "burstable");
}
