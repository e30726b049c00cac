//! Fault injection on the node agent, as root, inside a network namespace of its own: the
//! `node-agent` example (native runtime, bridge CNI, nftables router) is killed with SIGKILL at
//! seeded random moments of pod creation, pod deletion and service rule sync, then restarted.
//! After every restart the node must converge: every desired pod Running exactly once (one
//! Ready sandbox, one running container, one container process), no sandbox or process of a pod
//! no manifest wants, the service rules naming exactly the desired ClusterIPs, and the Service
//! answering from the desired pods only. After a final clean shutdown the leak checker
//! (`node_test_support::leaks`) must find nothing left: no network namespace, veth, bridge, IP
//! lease, mount, cgroup, process or nftables table.
//!
//! `agent_converges_after_kill9` runs 5 seeded iterations (the README test run). The long run
//! (50 iterations; `NODEKIT_FAULT_ITERATIONS` and `NODEKIT_FAULT_SEED` override):
//!
//! ```text
//! sudo -E cargo test -p nodekit --test root_faults -- --ignored --nocapture
//! ```
//!
//! The agent enters the namespace with `setns(CLONE_NEWNET)` only (not `ip netns exec`, which
//! also gives it a private mount namespace): its namespace-file bind mounts then live in the
//! host's mount table, where the restarted agent and the leak checker see them.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use node_test_support::leaks::{Inventory, LeakScope};
use node_test_support::{NetnsFixture, TestImage, require_command, require_path, require_root};

mod reliability_common;

const IMAGE: &str = "nodekit.local/faults/web:1";
const PODS: [&str; 4] = ["web-0", "web-1", "web-2", "web-3"];

/// A static pod's name without the node suffix the agent gives it (`web-0-fault-node` ->
/// `web-0`, as kubelet names static pods `<name>-<node>`).
fn base(name: &str) -> String {
    name.strip_suffix("-fault-node").unwrap_or(name).to_string()
}
const MAIN_IP: &str = "10.96.0.80";
const EXTRA_IP: &str = "10.96.0.81";

/// splitmix64: a seeded generator with no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn pod_manifest(name: &str, token: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{app: web}}\nspec:\n  \
         terminationGracePeriodSeconds: 2\n  containers:\n    - name: web\n      image: {IMAGE}\n      \
         imagePullPolicy: Never\n      env: [{{name: NK_FAULT_POD, value: \"{token}-{name}\"}}]\n      \
         ports: [{{name: http, containerPort: 8080}}]\n      readinessProbe:\n        \
         httpGet: {{path: /, port: 8080}}\n        periodSeconds: 1\n"
    )
}

fn service_manifest(name: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  selector: {{app: web}}\n  \
         clusterIP: {ip}\n  ports:\n    - name: http\n      port: 80\n      targetPort: http\n"
    )
}

/// A plain HTTP/1.0 GET with timeouts: the body of a 200 answer.
fn http_get(addr: &str, path: &str) -> std::io::Result<String> {
    let addr = addr.parse().map_err(std::io::Error::other)?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: t\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    match out.split_once("\r\n\r\n") {
        Some((head, body)) if head.contains(" 200 ") => Ok(body.to_string()),
        _ => Err(std::io::Error::other(format!("bad answer {out:?}"))),
    }
}

fn build_agent() -> (PathBuf, PathBuf) {
    let target = reliability_common::cargo_build(&[
        &["-p", "nodekit", "--example", "node-agent"],
        reliability_common::INIT,
    ]);
    (
        target.join("debug/examples/node-agent"),
        target.join("debug/nodekit-init"),
    )
}

/// The test's node: a namespace, a manifest directory, a state root, and the agent process.
struct Node {
    ns: NetnsFixture,
    tmp: PathBuf,
    agent_bin: PathBuf,
    init_bin: PathBuf,
    image: PathBuf,
    token: String,
    child: Option<Child>,
    starts: usize,
}

impl Node {
    fn manifests(&self) -> PathBuf {
        self.tmp.join("manifests")
    }
    fn root(&self) -> PathBuf {
        self.tmp.join("root")
    }
    fn log(&self) -> PathBuf {
        self.tmp.join(format!("agent-{}.log", self.starts))
    }

    fn start(&mut self) {
        assert!(self.child.is_none(), "the agent already runs");
        self.starts += 1;
        let log = File::create(self.log()).unwrap();
        let netns = File::open(self.ns.path()).expect("the namespace file");
        let mut cmd = Command::new(&self.agent_bin);
        cmd.args(["--manifests", self.manifests().to_str().unwrap()])
            .args(["--root", self.root().to_str().unwrap()])
            .args(["--node-name", "fault-node"])
            .arg("--drain-on-exit")
            // the kill -9 rounds are about the runtime, CNI and rules: no pod cgroups of ours
            .args(["--cgroups-per-qos", "false"])
            .args(["--init-binary", self.init_bin.to_str().unwrap()])
            .args([
                "--import-image",
                &format!("{}={IMAGE}", self.image.display()),
            ])
            .env("RUST_LOG", "info")
            .env("NODEKIT_FAULT_RUN", &self.token)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let fd = netns.as_raw_fd();
        // SAFETY: setns is async-signal-safe; the fd stays open in the parent until spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        self.child = Some(cmd.spawn().expect("starting the agent"));
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGINT and a bounded wait: the exit status, or `None` (then SIGKILLed).
    fn stop(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn desired_pods(&self) -> BTreeSet<String> {
        PODS.iter()
            .filter(|p| self.manifests().join(format!("{p}.yaml")).exists())
            .map(|p| p.to_string())
            .collect()
    }

    fn extra_service(&self) -> bool {
        self.manifests().join("extra-service.yaml").exists()
    }

    fn set_pod(&self, name: &str, present: bool) {
        let p = self.manifests().join(format!("{name}.yaml"));
        if present {
            write_atomic(&p, &pod_manifest(name, &self.token));
        } else {
            std::fs::remove_file(p).unwrap();
        }
    }

    fn set_extra_service(&self, present: bool) {
        let p = self.manifests().join("extra-service.yaml");
        if present {
            write_atomic(&p, &service_manifest("extra", EXTRA_IP));
        } else {
            std::fs::remove_file(p).unwrap();
        }
    }

    /// What does not hold yet (empty: converged).
    fn divergence(&self) -> Vec<String> {
        let mut out = vec![];
        let desired = self.desired_pods();
        let ready = self.ready_pods();
        if ready != desired {
            out.push(format!("Ready pods {ready:?}, desired {desired:?}"));
        }
        let rt = runtime_view(&self.root().join("runtime/state"));
        for (pod, v) in &rt {
            if !desired.contains(pod) {
                out.push(format!("orphan pod {pod} in the runtime: {v:?}"));
            }
        }
        for pod in &desired {
            let v = rt.get(pod).cloned().unwrap_or_default();
            if v.ready_sandboxes != 1 || v.running_containers != 1 {
                out.push(format!("pod {pod}: {v:?}"));
            }
        }
        let procs = processes_by_pod(&self.token);
        for (pod, pids) in &procs {
            if !desired.contains(pod) || pids.len() != 1 {
                out.push(format!("pod {pod} has container processes {pids:?}"));
            }
        }
        for pod in &desired {
            if !procs.contains_key(pod) {
                out.push(format!("pod {pod} has no container process"));
            }
        }
        match self.ns.sh("nft list ruleset") {
            Ok(rules) => {
                if !rules.contains(MAIN_IP) {
                    out.push(format!("no rule for {MAIN_IP}"));
                }
                if rules.contains(EXTRA_IP) != self.extra_service() {
                    out.push(format!(
                        "rules for {EXTRA_IP}: {}, desired {}",
                        rules.contains(EXTRA_IP),
                        self.extra_service()
                    ));
                }
            }
            Err(e) => out.push(format!("nft: {e}")),
        }
        if out.is_empty() {
            // traffic through the Service reaches desired pods only
            let answers = self.ask(MAIN_IP, 12);
            let bad: Vec<&String> = answers
                .iter()
                .filter(|a| {
                    !a.strip_prefix("hello from ")
                        .is_some_and(|p| desired.contains(&base(p)))
                })
                .collect();
            if !bad.is_empty() {
                out.push(format!("Service answers {bad:?}"));
            }
        }
        out
    }

    fn ready_pods(&self) -> BTreeSet<String> {
        let Ok(Ok(body)) = self.ns.run_in(|| http_get("127.0.0.1:10255", "/pods")) else {
            return BTreeSet::new();
        };
        let Ok(list) = serde_json::from_str::<serde_json::Value>(&body) else {
            return BTreeSet::new();
        };
        list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| {
                p["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
            .filter_map(|p| p["metadata"]["name"].as_str().map(base))
            .collect()
    }

    fn ask(&self, ip: &str, n: usize) -> Vec<String> {
        let addr = format!("{ip}:80");
        self.ns
            .run_in(|| {
                (0..n)
                    .map(|_| match http_get(&addr, "/") {
                        Ok(b) => b.trim().to_string(),
                        Err(e) => format!("ERR {e}"),
                    })
                    .collect()
            })
            .expect("entering the namespace")
    }

    fn wait_converged(&self, limit: Duration, what: &str) -> Duration {
        let start = Instant::now();
        loop {
            let d = self.divergence();
            if d.is_empty() {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < limit,
                "{what}: not converged within {limit:?}:\n  {}\nagent log (tail):\n{}",
                d.join("\n  "),
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.stop(Duration::from_secs(30)).is_none() {
            self.kill9();
        }
    }
}

fn write_atomic(p: &Path, text: &str) {
    // staged beside the manifest directory: the source never sees a half-written file
    let tmp = p.parent().unwrap().with_extension("staging");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, p).unwrap();
}

/// What the runtime's persisted state says about one pod.
#[derive(Debug, Clone, Default)]
struct PodView {
    ready_sandboxes: usize,
    other_sandboxes: usize,
    running_containers: usize,
    other_containers: usize,
}

fn json_files(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        // `<id>.json` records only (not the monitors' `<id>.exit.json` and the like)
        .filter(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .is_some_and(|id| !id.contains('.'))
        })
        .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
        .collect()
}

fn alive(started: &serde_json::Value) -> bool {
    started["pid"]
        .as_i64()
        .is_some_and(|pid| pid > 0 && Path::new(&format!("/proc/{pid}")).exists())
}

/// The native runtime's records by pod name, read from its state directory (read-only).
fn runtime_view(state: &Path) -> BTreeMap<String, PodView> {
    let mut out: BTreeMap<String, PodView> = BTreeMap::new();
    let mut pod_of = BTreeMap::new();
    for s in json_files(&state.join("sandboxes")) {
        let name = base(s["config"]["metadata"]["name"].as_str().unwrap_or("?"));
        pod_of.insert(s["id"].as_str().unwrap_or("").to_string(), name.clone());
        let v = out.entry(name).or_default();
        if s["status"] == "Ready" && alive(&s["pause"]) {
            v.ready_sandboxes += 1;
        } else {
            v.other_sandboxes += 1;
        }
    }
    for c in json_files(&state.join("containers")) {
        let sid = c["sandbox_id"].as_str().unwrap_or("");
        let name = pod_of
            .get(sid)
            .cloned()
            .unwrap_or_else(|| format!("(no sandbox {sid})"));
        let v = out.entry(name).or_default();
        if c["status"] == "Running" && alive(&c["process"]) {
            v.running_containers += 1;
        } else {
            v.other_containers += 1;
        }
    }
    out
}

/// Container processes (the pods' `httpd`) by pod name, found by their environment.
fn processes_by_pod(token: &str) -> BTreeMap<String, Vec<u32>> {
    let prefix = format!("NK_FAULT_POD={token}-");
    let mut out: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() != "httpd" {
            continue;
        }
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        for kv in env.split(|b| *b == 0) {
            if let Some(pod) = kv.strip_prefix(prefix.as_bytes()) {
                out.entry(String::from_utf8_lossy(pod).into_owned())
                    .or_default()
                    .push(pid);
            }
        }
    }
    out
}

/// Run `iterations` seeded kill -9 rounds; returns a summary line per round.
fn run_faults(test: &str, iterations: usize, seed: u64) {
    if !require_root(test) || !require_command(test, "nft") || !require_path(test, "/bin/busybox") {
        return;
    }
    let (agent_bin, init_bin) = build_agent();
    let tmp = std::env::temp_dir().join(format!("nodekit-faults-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(tmp.join("manifests")).unwrap();
    let image = tmp.join("image");
    TestImage::busybox()
        .file("/var/www/.keep", "", 0o644)
        .cmd(&[
            "sh",
            "-c",
            "echo \"hello from $(hostname)\" > /var/www/index.html; exec httpd -f -p 8080 -h /var/www",
        ])
        .build()
        .expect("the image")
        .write_oci_layout(&image, IMAGE)
        .expect("writing the image layout");

    let ns = NetnsFixture::new("faults").expect("netns");
    ns.sh(
        "ip link add nkt0 type veth peer name nkt1 && ip link set nkt0 up && ip link set nkt1 up \
         && ip addr add 192.0.2.1/24 dev nkt0 && ip route add default via 192.0.2.254",
    )
    .expect("the namespace's default route");
    let token = format!("f{}", std::process::id());
    // the agent's cgroup parent (`nodekit`) is shared with any other agent on the machine; its
    // processes are recognised by an environment tag they inherit, or by our root in their
    // command line
    let scope = LeakScope {
        process_markers: vec![],
        ..LeakScope::default()
    }
    .netns_named(format!("nkt-{}-", std::process::id()))
    .env_marker(format!("NODEKIT_FAULT_RUN={token}"))
    .in_netns(ns.name())
    .ipam_dir(tmp.join("root/cni/networks"))
    .mount_root(&tmp)
    .process_marker(tmp.to_str().unwrap());
    let before = Inventory::take(&scope);
    let mut node = Node {
        ns,
        tmp: tmp.clone(),
        agent_bin,
        init_bin,
        image,
        token,
        child: None,
        starts: 0,
    };
    std::fs::write(
        node.manifests().join("web-service.yaml"),
        service_manifest("web", MAIN_IP),
    )
    .unwrap();
    node.set_pod("web-0", true);
    node.set_pod("web-1", true);
    node.start();
    let first = node.wait_converged(Duration::from_secs(90), "first start");
    eprintln!("first start converged in {first:?}");

    let mut rng = Rng(seed);
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..iterations {
        let desired = node.desired_pods();
        let roll = rng.below(3);
        let kind = match roll {
            0 if desired.len() < PODS.len() => {
                let absent: Vec<&str> = PODS
                    .iter()
                    .copied()
                    .filter(|p| !desired.contains(*p))
                    .collect();
                let p = absent[rng.below(absent.len() as u64) as usize];
                node.set_pod(p, true);
                format!("create {p}")
            }
            0 | 1 if desired.len() > 1 => {
                let present: Vec<&String> = desired.iter().collect();
                let p = present[rng.below(present.len() as u64) as usize].clone();
                node.set_pod(&p, false);
                format!("delete {p}")
            }
            _ => {
                let on = !node.extra_service();
                node.set_extra_service(on);
                format!(
                    "rule sync (extra service {})",
                    if on { "added" } else { "removed" }
                )
            }
        };
        // two in three kills land in the first 500 ms (sandbox, CNI ADD, container start, rule
        // sync are all in flight then), the rest anywhere in 2.5 s
        let window = if rng.below(3) == 0 { 2500 } else { 500 };
        let delay = Duration::from_millis(rng.below(window));
        std::thread::sleep(delay);
        node.kill9();
        *kinds
            .entry(kind.split(' ').next().unwrap_or("?").to_string())
            .or_default() += 1;
        node.start();
        let took = node.wait_converged(
            Duration::from_secs(90),
            &format!("iteration {i} (seed {seed}): {kind}, kill -9 after {delay:?}"),
        );
        eprintln!(
            "iteration {i}: {kind}, kill -9 after {delay:?}: converged {took:?} after restart; pods {:?}",
            node.desired_pods()
        );
    }
    eprintln!("fault kinds: {kinds:?} (seed {seed}, {iterations} iterations)");

    // a clean shutdown leaves nothing behind
    let status = node
        .stop(Duration::from_secs(60))
        .expect("the agent did not exit within 60 s of SIGINT");
    assert!(
        status.success(),
        "agent exit {status}:\n{}",
        node.log_tail()
    );
    let mut leaked = Inventory::take(&scope).diff(&before);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !leaked.is_empty() && Instant::now() < deadline {
        // processes being reaped and cgroups being removed settle within a moment
        std::thread::sleep(Duration::from_millis(500));
        leaked = Inventory::take(&scope).diff(&before);
    }
    assert!(
        leaked.is_empty(),
        "after {iterations} kill -9 rounds and a clean shutdown: {leaked}\nagent log (tail):\n{}",
        node.log_tail()
    );
    drop(node);
    let _ = std::fs::remove_dir_all(&tmp);
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn agent_converges_after_kill9() {
    run_faults(
        "agent_converges_after_kill9",
        env_or("NODEKIT_FAULT_ITERATIONS", 5),
        env_or("NODEKIT_FAULT_SEED", 0x6e6b_0011),
    );
}

#[test]
#[ignore = "long run: 50 kill -9 rounds (about 10 minutes)"]
fn agent_converges_after_kill9_long() {
    run_faults(
        "agent_converges_after_kill9_long",
        env_or("NODEKIT_FAULT_ITERATIONS", 50),
        env_or("NODEKIT_FAULT_SEED", 0x6e6b_0050),
    );
}
