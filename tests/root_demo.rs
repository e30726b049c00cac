//! The demo end to end, as root, inside a network namespace of its own: the `node-agent`
//! example runs the two web pods and their Service from a temporary manifest directory; both
//! replicas answer through the ClusterIP; deleting one pod's manifest takes it out of the
//! Service; SIGINT leaves no pod process, no service rules, no pod veth, no lease behind.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use node_test_support::{NetnsFixture, TestImage, require_command, require_path, require_root};

const IMAGE: &str = "nodekit.local/demo/web:1";

/// A plain HTTP/1.0 GET with timeouts: the body, or an error.
fn http_get(addr: &str, path: &str) -> std::io::Result<String> {
    let addr = addr.parse().expect("address");
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.set_write_timeout(Some(Duration::from_secs(3)))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: test\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no HTTP response: {out:?}")))?;
    if !head.contains(" 200 ") {
        return Err(std::io::Error::other(format!("not 200: {head}")));
    }
    Ok(body.to_string())
}

/// The agent process: SIGINT and a bounded wait on drop, SIGKILL as the last resort.
struct Agent {
    child: Option<Child>,
}

impl Agent {
    fn interrupt_and_wait(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.interrupt_and_wait(Duration::from_secs(30));
    }
}

fn build_binaries(root: &Path) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    for args in [
        &["build", "-p", "nodekit", "--example", "node-agent"][..],
        &["build", "-p", "node-cri", "--bin", "nodekit-init"][..],
    ] {
        let st = Command::new(&cargo)
            .args(args)
            .current_dir(root)
            .status()
            .expect("running cargo");
        assert!(st.success(), "cargo {args:?} failed");
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    let agent = target.join("debug/examples/node-agent");
    assert!(agent.is_file(), "{} not built", agent.display());
    agent
}

fn pod_manifest(name: &str, token: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{app: web}}\nspec:\n  \
         containers:\n    - name: web\n      image: {IMAGE}\n      \
         imagePullPolicy: Never\n      env: [{{name: NK_DEMO_TOKEN, value: \"{token}\"}}]\n      \
         ports: [{{name: http, containerPort: 8080}}]\n      readinessProbe:\n        \
         httpGet: {{path: /, port: 8080}}\n        periodSeconds: 1\n"
    )
}

const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  \
selector: {app: web}\n  clusterIP: 10.96.0.80\n  ports:\n    - name: http\n      port: 80\n      \
targetPort: http\n";

/// The pids whose environment holds `token` (the pods' containers).
fn pids_with_token(token: &str) -> Vec<u32> {
    let needle = format!("NK_DEMO_TOKEN={token}");
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()))
                .unwrap_or(false)
        })
        .collect()
}

/// Ready pods by name, from the agent's `/pods`, asked inside the namespace.
fn ready_pods(ns: &NetnsFixture) -> BTreeSet<String> {
    let Ok(Ok(body)) = ns.run_in(|| http_get("127.0.0.1:10255", "/pods")) else {
        return BTreeSet::new();
    };
    let list: serde_json::Value = serde_json::from_str(&body).expect("/pods is JSON");
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
        .filter_map(|p| p["metadata"]["name"].as_str().map(String::from))
        .collect()
}

/// `n` answers of the ClusterIP, asked inside the namespace (failures as `ERR ...`).
fn ask_service(ns: &NetnsFixture, n: usize) -> Vec<String> {
    ns.run_in(|| {
        (0..n)
            .map(|_| match http_get("10.96.0.80:80", "/") {
                Ok(b) => b.trim().to_string(),
                Err(e) => format!("ERR {e}"),
            })
            .collect()
    })
    .expect("entering the namespace")
}

#[test]
fn demo_end_to_end_in_a_netns() {
    if !require_root("demo_end_to_end_in_a_netns")
        || !require_command("demo_end_to_end_in_a_netns", "nft")
        || !require_path("demo_end_to_end_in_a_netns", "/bin/busybox")
    {
        return;
    }
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let agent_bin = build_binaries(&repo);
    let token = format!("demo-{}", std::process::id());
    let tmp = std::env::temp_dir().join(format!("nodekit-root-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let (manifests, root, image) = (tmp.join("manifests"), tmp.join("root"), tmp.join("image"));
    std::fs::create_dir_all(&manifests).unwrap();
    for name in ["web-0", "web-1"] {
        std::fs::write(
            manifests.join(format!("{name}.yaml")),
            pod_manifest(name, &token),
        )
        .unwrap();
    }
    std::fs::write(manifests.join("web-service.yaml"), SERVICE).unwrap();
    TestImage::busybox()
        .file("/var/www/.keep", "", 0o644)
        .cmd(&[
            "sh",
            "-c",
            "echo \"hello from $(hostname)\" > /var/www/index.html; exec httpd -f -p 8080 -h /var/www",
        ])
        .build()
        .expect("the demo image")
        .write_oci_layout(&image, IMAGE)
        .expect("writing the image layout");

    let ns = NetnsFixture::new("agent").expect("netns");
    // a default route (to nowhere) as every node has: local traffic to a ClusterIP needs a route
    ns.sh(
        "ip link add nkt0 type veth peer name nkt1 && ip link set nkt0 up && ip link set nkt1 up \
           && ip addr add 192.0.2.1/24 dev nkt0 && ip route add default via 192.0.2.254",
    )
    .expect("the namespace's default route");
    let log = std::fs::File::create(tmp.join("agent.log")).unwrap();
    let child = ns
        .command(agent_bin.to_str().unwrap())
        .args(["--manifests", manifests.to_str().unwrap()])
        .args(["--root", root.to_str().unwrap()])
        .args(["--node-name", "demo-node"])
        .args(["--import-image", &format!("{}={IMAGE}", image.display())])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("starting the agent");
    let mut agent = Agent { child: Some(child) };
    let log_text = || std::fs::read_to_string(tmp.join("agent.log")).unwrap_or_default();

    // both pods Ready
    let deadline = Instant::now() + Duration::from_secs(45);
    let want: BTreeSet<String> = ["web-0".to_string(), "web-1".to_string()].into();
    while ready_pods(&ns) != want {
        assert!(
            Instant::now() < deadline,
            "pods not Ready within 45 s (ready: {:?}); agent log:\n{}",
            ready_pods(&ns),
            log_text()
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    // both replicas answer through the ClusterIP (the endpoints follow readiness: retry a bit)
    let deadline = Instant::now() + Duration::from_secs(15);
    let answers = loop {
        let answers: BTreeSet<String> = ask_service(&ns, 30).into_iter().collect();
        if answers.contains("hello from web-0") && answers.contains("hello from web-1") {
            break answers;
        }
        assert!(
            Instant::now() < deadline,
            "both replicas did not answer through 10.96.0.80: {answers:?}; agent log:\n{}",
            log_text()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(
        answers.iter().all(|a| a.starts_with("hello from web-")),
        "{answers:?}"
    );
    let pod_pids = pids_with_token(&token);
    assert!(
        pod_pids.len() >= 2,
        "the pods' processes are not visible: {pod_pids:?}"
    );

    // delete web-1's manifest: traffic goes only to web-0
    std::fs::remove_file(manifests.join("web-1.yaml")).unwrap();
    let removed = Instant::now();
    loop {
        let answers = ask_service(&ns, 20);
        if answers.iter().all(|a| a == "hello from web-0") {
            break;
        }
        assert!(
            removed.elapsed() < Duration::from_secs(15),
            "web-1 still answers (or errors) 15 s after its manifest was deleted: {answers:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "only web-0 answers {:?} after deleting web-1's manifest",
        removed.elapsed()
    );

    // SIGINT: a clean exit that leaves nothing behind
    let status = agent
        .interrupt_and_wait(Duration::from_secs(40))
        .expect("the agent did not exit within 40 s of SIGINT");
    assert!(
        status.success(),
        "agent exit {status}; log:\n{}",
        log_text()
    );
    let left = pids_with_token(&token);
    assert!(left.is_empty(), "pod processes left: {left:?}");
    let tables = ns.sh("nft list tables").unwrap();
    assert!(
        !tables
            .lines()
            .any(|l| l.trim().starts_with("table") && l.contains("nodekit")),
        "nftables tables left in the namespace: {tables}"
    );
    let links = ns.sh("ip -br link").unwrap();
    assert!(
        !links
            .lines()
            .any(|l| l.starts_with("nkv") || l.starts_with("nk0")),
        "pod veths or bridge left: {links}"
    );
    let leases: Vec<_> = walk(&root.join("cni/networks"))
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.parse::<std::net::IpAddr>().is_ok())
        })
        .collect();
    assert!(leases.is_empty(), "IP leases left: {leases:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let root_s = root.to_str().unwrap();
    assert!(
        !mounts.lines().any(|l| l.contains(root_s)),
        "mounts left under {root_s}"
    );
    drop(ns);
    let _ = std::fs::remove_dir_all(&tmp);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
