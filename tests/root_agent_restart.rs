//! The `node-agent` example's node layer and exit semantics, as root, each test inside a network
//! namespace of its own with its own `--root` and `--cgroup-root` (native runtime, bridge CNI,
//! nftables router):
//!
//! - a pod whose two containers share an emptyDir, one of them copying a configMap (from the
//!   manifest directory) into it and the other serving it, answers through its Service; the
//!   static pod is named `<name>-<node>` and runs in its QoS pod cgroup; SIGTERM stops the agent
//!   alone (pods, rules and the pod network stay), a new agent adopts the pod (same container
//!   ids, restartCount 0, same processes) and the Service answers during the whole restart;
//!   `--cleanup` then removes everything;
//! - with `--max-pods 1`, the second of two pods is rejected with `OutOfpods`.
//!
//! A failed test still removes everything: the agent is stopped and `--cleanup` runs on drop.

use std::cell::Cell;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use node_test_support::{NetnsFixture, require_command, require_path, require_root};

#[path = "support/agent.rs"]
mod agent;
#[path = "support/examples.rs"]
mod examples;

use agent::{
    Agent, CgroupRoot, DEMO_IMAGE, assert_nothing_left, build_agent, http_get, netns_command,
    node_netns, pids_with_token, wait_for, write_demo_image,
};

fn requirements(test: &str) -> bool {
    require_root(test) && require_command(test, "nft") && require_path(test, "/bin/busybox")
}

/// One agent setup: directories, namespace, cgroup root; `--cleanup` runs on drop (after the
/// agent, declared later, is stopped).
struct Node {
    agent_bin: PathBuf,
    tmp: tempfile::TempDir,
    image: PathBuf,
    node_name: String,
    extra: Vec<String>,
    cgroups: CgroupRoot,
    ns: NetnsFixture,
    starts: Cell<usize>,
}

impl Node {
    fn new(label: &str, node_name: &str, extra: &[&str]) -> Self {
        let agent_bin = build_agent();
        let tmp = tempfile::Builder::new()
            .prefix(&format!("nkt-agent-{label}-"))
            .tempdir()
            .unwrap();
        let image = tmp.path().join("image");
        write_demo_image(&image);
        std::fs::create_dir_all(tmp.path().join("manifests")).unwrap();
        Self {
            agent_bin,
            image,
            node_name: node_name.into(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            cgroups: CgroupRoot::new(label),
            ns: node_netns(label),
            tmp,
            starts: Cell::new(0),
        }
    }

    fn manifests(&self) -> PathBuf {
        self.tmp.path().join("manifests")
    }

    fn root(&self) -> PathBuf {
        self.tmp.path().join("root")
    }

    fn log(&self, n: usize) -> PathBuf {
        self.tmp.path().join(format!("agent-{n}.log"))
    }

    fn command(&self) -> Command {
        let mut cmd = netns_command(&self.ns, &self.agent_bin);
        cmd.arg("--manifests")
            .arg(self.manifests())
            .arg("--root")
            .arg(self.root())
            .arg("--pod-log-root")
            .arg(self.root().join("pod-logs"))
            .args(["--node-name", &self.node_name])
            .args(["--cgroup-root", self.cgroups.name()])
            .args([
                "--import-image",
                &format!("{}={DEMO_IMAGE}", self.image.display()),
            ])
            .args(&self.extra);
        cmd
    }

    fn start(&self) -> Agent {
        self.starts.set(self.starts.get() + 1);
        Agent::start(self.command(), &self.log(self.starts.get()))
    }

    fn log_text(&self) -> String {
        (1..=self.starts.get())
            .map(|n| {
                format!(
                    "--- agent {n}:\n{}",
                    std::fs::read_to_string(self.log(n)).unwrap_or_default()
                )
            })
            .collect()
    }

    /// The agent's `/pods` items, asked inside the namespace.
    fn pods(&self) -> Vec<serde_json::Value> {
        let Ok(Ok(body)) = self.ns.run_in(|| http_get("127.0.0.1:10255", "/pods")) else {
            return vec![];
        };
        serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["items"].as_array().cloned())
            .unwrap_or_default()
    }

    fn pod(&self, name: &str) -> Option<serde_json::Value> {
        self.pods()
            .into_iter()
            .find(|p| p["metadata"]["name"] == name)
    }

    /// `--cleanup` with the same root and cgroup root: its success.
    fn cleanup(&self) -> bool {
        let mut cmd = self.command();
        cmd.arg("--cleanup");
        let out = examples::run_with_limit(&mut cmd, Duration::from_secs(60));
        if !out.status.success() {
            eprintln!("--cleanup failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        out.status.success()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_text());
        }
        self.cleanup();
    }
}

fn is_ready(p: &serde_json::Value) -> bool {
    p["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// (container name, container id, restartCount) of a pod, sorted.
fn containers(p: &serde_json::Value) -> Vec<(String, String, i64)> {
    let mut out: Vec<(String, String, i64)> = p["status"]["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or("").to_string(),
                c["containerID"].as_str().unwrap_or("").to_string(),
                c["restartCount"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    out.sort();
    out
}

const CONFIG: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: greeting\ndata:\n  \
greeting: hello through a configMap and an emptyDir\n";

fn shared_pod(token: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: shared\n  labels: {{app: shared}}\nspec:\n  \
         terminationGracePeriodSeconds: 2\n  \
         volumes:\n    - name: data\n      emptyDir: {{}}\n    - name: config\n      \
         configMap: {{name: greeting}}\n  containers:\n    - name: writer\n      image: {DEMO_IMAGE}\n      \
         imagePullPolicy: Never\n      \
         command: [sh, -c, 'cat /config/greeting > /data/index.html && exec sleep 100000']\n      \
         env: [{{name: NK_DEMO_TOKEN, value: \"{token}\"}}]\n      \
         volumeMounts: [{{name: data, mountPath: /data}}, {{name: config, mountPath: /config}}]\n    \
         - name: web\n      image: {DEMO_IMAGE}\n      imagePullPolicy: Never\n      \
         command: [sh, -c, 'while [ ! -s /data/index.html ]; do sleep 0.1; done; exec httpd -f -p 8080 -h /data']\n      \
         env: [{{name: NK_DEMO_TOKEN, value: \"{token}\"}}]\n      \
         volumeMounts: [{{name: data, mountPath: /data}}]\n      \
         ports: [{{name: http, containerPort: 8080}}]\n      readinessProbe:\n        \
         httpGet: {{path: /, port: 8080}}\n        periodSeconds: 1\n"
    )
}

const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: shared\nspec:\n  \
selector: {app: shared}\n  clusterIP: 10.96.0.81\n  ports:\n    - port: 80\n      targetPort: 8080\n";

const GREETING: &str = "hello through a configMap and an emptyDir";

/// Asks the Service every 50 ms on a thread inside the namespace until stopped: (answers,
/// failures with their texts).
struct Prober {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl Prober {
    fn start(ns: &NetnsFixture) -> Self {
        let (stop, ok) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicUsize::new(0)),
        );
        let (s, o) = (stop.clone(), ok.clone());
        let path = ns.path();
        let thread = std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            let f = std::fs::File::open(path).expect("the namespace file");
            // SAFETY: setns on this thread only, with a namespace file we hold open.
            assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
            let started = Instant::now();
            let mut failures = vec![];
            while !s.load(Ordering::SeqCst) {
                match http_get("10.96.0.81:80", "/") {
                    Ok(b) if b.trim() == GREETING => {
                        o.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(b) => failures.push(format!("{:?}: answer {b:?}", started.elapsed())),
                    Err(e) => failures.push(format!("{:?}: {e}", started.elapsed())),
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            failures
        });
        Self {
            stop,
            ok,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let failures = self.thread.take().unwrap().join().expect("the prober");
        (self.ok.load(Ordering::SeqCst), failures)
    }
}

fn terminate(agent: &mut Agent) -> std::process::ExitStatus {
    let mut child = agent.child.take().expect("the agent runs");
    // SAFETY: kill on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the agent did not exit within 30 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The cgroup paths (v1 `cpu` hierarchy) of a process.
fn cpu_cgroup(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap_or_default()
        .lines()
        .find(|l| {
            l.split(':')
                .nth(1)
                .is_some_and(|c| c.split(',').any(|c| c == "cpu"))
        })
        .and_then(|l| l.splitn(3, ':').nth(2))
        .unwrap_or("")
        .to_string()
}

#[test]
fn a_restarted_agent_adopts_its_pods_and_the_service_keeps_answering() {
    let test = "a_restarted_agent_adopts_its_pods_and_the_service_keeps_answering";
    if !requirements(test) {
        return;
    }
    let token = format!("restart-{}", std::process::id());
    let node = Node::new("restart", "restart-node", &[]);
    std::fs::write(node.manifests().join("config.yaml"), CONFIG).unwrap();
    std::fs::write(node.manifests().join("shared.yaml"), shared_pod(&token)).unwrap();
    std::fs::write(node.manifests().join("service.yaml"), SERVICE).unwrap();
    let mut first = node.start();
    let log = || node.log_text();
    let name = "shared-restart-node";

    // Ready, named <name>-<node>; the Service answers the configMap's text, written into the
    // emptyDir by one container and served from it by the other
    let before = wait_for(
        "the static pod shared-restart-node Ready",
        Duration::from_secs(60),
        &log,
        || node.pod(name).filter(is_ready),
    );
    assert_eq!(before["spec"]["nodeName"], "restart-node");
    wait_for(
        "the Service answering the configMap's text",
        Duration::from_secs(20),
        &log,
        || {
            let a = node
                .ns
                .run_in(|| http_get("10.96.0.81:80", "/"))
                .ok()?
                .ok()?;
            (a.trim() == GREETING).then_some(())
        },
    );
    let ids = containers(&before);
    assert_eq!(ids.len(), 2, "{before}");
    assert!(
        ids.iter().all(|(_, id, n)| !id.is_empty() && *n == 0),
        "{ids:?}"
    );
    let pids = {
        let mut p = pids_with_token(&token);
        p.sort();
        p
    };
    assert_eq!(pids.len(), 2, "two container processes: {pids:?}");
    // the BestEffort pod's processes are in its pod cgroup under <cgroup-root>/kubepods
    let uid = before["metadata"]["uid"].as_str().unwrap().to_string();
    for pid in &pids {
        let cg = cpu_cgroup(*pid);
        assert!(
            cg.starts_with(&format!(
                "/{}/kubepods/besteffort/pod{uid}",
                node.cgroups.name()
            )),
            "process {pid} is in {cg:?}"
        );
    }

    // SIGTERM: the agent exits alone; pods, rules and the pod network stay; the Service answers
    // throughout, while no agent runs and while the next one adopts the pod
    let prober = Prober::start(&node.ns);
    std::thread::sleep(Duration::from_millis(500));
    let status = terminate(&mut first);
    assert!(status.success(), "agent exit {status}; log:\n{}", log());
    assert_eq!(
        {
            let mut p = pids_with_token(&token);
            p.sort();
            p
        },
        pids,
        "the pod's processes changed when the agent stopped"
    );
    let tables = node.ns.sh("nft list tables").unwrap();
    assert!(tables.contains("nodekit"), "service rules gone: {tables}");
    std::thread::sleep(Duration::from_secs(2));
    let mut second = node.start();
    let after = wait_for(
        "the adopted pod Ready again",
        Duration::from_secs(60),
        &log,
        || node.pod(name).filter(is_ready),
    );
    // a few seconds of the new agent's rules
    std::thread::sleep(Duration::from_secs(4));
    let (answers, failures) = prober.finish();
    assert!(answers > 20, "only {answers} answers during the restart");
    assert!(
        failures.is_empty(),
        "the Service failed during the restart ({answers} answers): {failures:?}; log:\n{}",
        log()
    );
    assert_eq!(containers(&after), ids, "the containers were not adopted");
    assert_eq!(after["metadata"]["uid"], before["metadata"]["uid"]);
    let mut now = pids_with_token(&token);
    now.sort();
    assert_eq!(now, pids, "the pod's processes changed across the restart");
    eprintln!(
        "restart: {answers} answers through the Service, none failed; containers {ids:?} adopted"
    );

    // stop again, then --cleanup removes what the agents left
    let status = terminate(&mut second);
    assert!(status.success(), "agent exit {status}");
    assert!(
        !pids_with_token(&token).is_empty(),
        "pods stopped with the agent"
    );
    assert!(node.cleanup(), "--cleanup failed");
    assert_nothing_left(&node.ns, &node.root(), &token);
    let pod_cgroups = node.cgroups.pod_cgroups();
    assert!(pod_cgroups.is_empty(), "pod cgroups left: {pod_cgroups:?}");
    let volumes = node.root().join(format!("kubelet/pods/{uid}"));
    assert!(!volumes.exists(), "volumes left: {}", volumes.display());
}

fn sleeper(name: &str, token: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  \
         terminationGracePeriodSeconds: 1\n  containers:\n    - name: main\n      \
         image: {DEMO_IMAGE}\n      imagePullPolicy: Never\n      \
         command: [sleep, '100000']\n      env: [{{name: NK_DEMO_TOKEN, value: \"{token}\"}}]\n"
    )
}

#[test]
fn a_pod_over_max_pods_is_rejected_with_out_of_pods() {
    let test = "a_pod_over_max_pods_is_rejected_with_out_of_pods";
    if !requirements(test) {
        return;
    }
    let token = format!("maxpods-{}", std::process::id());
    let node = Node::new(
        "maxpods",
        "cap-node",
        &["--max-pods", "1", "--drain-on-exit"],
    );
    for n in ["one", "two"] {
        std::fs::write(
            node.manifests().join(format!("{n}.yaml")),
            sleeper(n, &token),
        )
        .unwrap();
    }
    let mut agent = node.start();
    let log = || node.log_text();
    let (running, rejected) = wait_for(
        "one pod Running and the other Failed",
        Duration::from_secs(60),
        &log,
        || {
            let pods = node.pods();
            let phase =
                |p: &serde_json::Value| p["status"]["phase"].as_str().unwrap_or("").to_string();
            let running = pods.iter().find(|p| phase(p) == "Running")?.clone();
            let failed = pods.iter().find(|p| phase(p) == "Failed")?.clone();
            Some((running, failed))
        },
    );
    assert_eq!(rejected["status"]["reason"], "OutOfpods", "{rejected}");
    let names: Vec<&str> = [&running, &rejected]
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(sorted, ["one-cap-node", "two-cap-node"]);
    // the rejected pod never ran: one container process only
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(pids_with_token(&token).len(), 1, "{names:?}");

    let status = agent
        .interrupt_and_wait(Duration::from_secs(40))
        .expect("the agent did not exit within 40 s of SIGINT");
    assert!(status.success(), "agent exit {status}; log:\n{}", log());
    assert_nothing_left(&node.ns, &node.root(), &token);
    assert!(node.cgroups.pod_cgroups().is_empty());
}
