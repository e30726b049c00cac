//! Running the `node-agent` example from root tests: building it with the init binary, the
//! agent process (SIGINT and a bounded wait on drop), HTTP GETs with timeouts, and what a pod
//! leaves on the machine (processes by an environment token, files under a directory).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use super::examples::{cargo_build, example};

/// A command running `program` inside `ns`'s network namespace only (entered with setns before
/// exec; `ip netns exec` would also remount /sys, hiding the cgroup hierarchies).
pub fn netns_command(
    ns: &node_test_support::NetnsFixture,
    program: &Path,
) -> std::process::Command {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let netns = std::fs::File::open(ns.path()).expect("the namespace file");
    let mut cmd = std::process::Command::new(program);
    // SAFETY: setns is async-signal-safe; the closure owns the namespace file until exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// Builds the agent and `nodekit-init` (found next to it); the agent's binary.
pub fn build_agent() -> PathBuf {
    cargo_build(&["-p", "node-cri", "--bin", "nodekit-init"]);
    example("node-agent")
}

/// A plain HTTP/1.0 GET with timeouts: the body of a 200 answer, or an error.
pub fn http_get(addr: &str, path: &str) -> std::io::Result<String> {
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
pub struct Agent {
    pub child: Option<Child>,
}

impl Agent {
    /// Starts `cmd` (the agent, usually through `NetnsFixture::command`) with stdin closed and
    /// stdout and stderr to the file `log`.
    pub fn start(mut cmd: std::process::Command, log: &Path) -> Self {
        let file = std::fs::File::create(log).expect("the agent's log file");
        let child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("starting the agent");
        Self { child: Some(child) }
    }

    /// SIGINT, then wait up to `limit` for the exit (SIGKILL after): the exit status, or `None`
    /// when it had to be killed.
    pub fn interrupt_and_wait(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
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

/// The pids whose environment holds `NK_DEMO_TOKEN=<token>` (the pods' containers).
pub fn pids_with_token(token: &str) -> Vec<u32> {
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

/// Every file under `dir`.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
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

/// The IP leases (host-local layout) left under `dir`.
pub fn leases_under(dir: &Path) -> Vec<PathBuf> {
    walk(dir)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.parse::<std::net::IpAddr>().is_ok())
        })
        .collect()
}

/// The demo web image's reference.
pub const DEMO_IMAGE: &str = "nodekit.local/demo/web:1";

/// Writes the demo web image (busybox httpd answering `hello from <hostname>` on 8080) as an OCI
/// layout in `dir` with the `demo-image` example, as `scripts/demo` does, for
/// `--import-image DIR=DEMO_IMAGE`.
pub fn write_demo_image(dir: &Path) {
    let out = std::process::Command::new(example("demo-image"))
        .arg(dir)
        .arg(DEMO_IMAGE)
        .output()
        .expect("running demo-image");
    assert!(
        out.status.success(),
        "demo-image: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace for an agent, with a default route (to nowhere) as every node has: local
/// traffic to a ClusterIP needs a route.
pub fn node_netns(label: &str) -> node_test_support::NetnsFixture {
    let ns = node_test_support::NetnsFixture::new(label).expect("netns");
    ns.sh(
        "ip link add nkt0 type veth peer name nkt1 && ip link set nkt0 up && ip link set nkt1 up \
           && ip addr add 192.0.2.1/24 dev nkt0 && ip route add default via 192.0.2.254",
    )
    .expect("the namespace's default route");
    ns
}

/// SIGINT to the agent: it exits successfully within 40 s and leaves nothing behind
/// ([`assert_nothing_left`]).
pub fn stop_cleanly(
    agent: &mut Agent,
    ns: &node_test_support::NetnsFixture,
    root: &Path,
    token: &str,
    log: &dyn Fn() -> String,
) {
    let status = agent
        .interrupt_and_wait(Duration::from_secs(40))
        .expect("the agent did not exit within 40 s of SIGINT");
    assert!(status.success(), "agent exit {status}; log:\n{}", log());
    assert_nothing_left(ns, root, token);
}

/// After the agent exited: no pod process (by token), no nodekit nftables table, no pod veth or
/// bridge in `ns`, no IP lease and no mount under the agent's `root`.
pub fn assert_nothing_left(ns: &node_test_support::NetnsFixture, root: &Path, token: &str) {
    let left = pids_with_token(token);
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
    let leases = leases_under(&root.join("cni/networks"));
    assert!(leases.is_empty(), "IP leases left: {leases:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let root_s = root.to_str().unwrap();
    assert!(
        !mounts.lines().any(|l| l.contains(root_s)),
        "mounts left under {root_s}"
    );
}

/// Polls `f` every 100 ms until it gives `Some`, at most `limit`; panics naming `what`, with
/// the agent's `log`.
pub fn wait_for<T>(
    what: &str,
    limit: Duration,
    log: &dyn Fn() -> String,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {limit:?}; agent log:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A cgroup parent of the agent's own (`--cgroup-root`), so its `kubepods` hierarchy is apart
/// from any other agent's; its directories in every hierarchy are removed on drop (deepest
/// first; the agent removes `kubepods` below it with `--drain-on-exit`).
pub struct CgroupRoot {
    name: String,
}

impl CgroupRoot {
    /// `nkt-<label>-<pid>`.
    pub fn new(label: &str) -> Self {
        Self {
            name: format!("nkt-{label}-{}", std::process::id()),
        }
    }

    /// The name, for `--cgroup-root`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its directories, one per mounted hierarchy that has it.
    pub fn dirs(&self) -> Vec<PathBuf> {
        let mut out = vec![];
        for e in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let d = e.path().join(&self.name);
            if d.is_dir() {
                out.push(d);
            }
        }
        let unified = Path::new("/sys/fs/cgroup").join(&self.name);
        if unified.is_dir() && !out.contains(&unified) {
            out.push(unified);
        }
        out
    }

    /// The pod cgroups (`pod<uid>` directories) under it, in every hierarchy.
    pub fn pod_cgroups(&self) -> Vec<PathBuf> {
        self.dirs()
            .iter()
            .flat_map(|d| walk_dirs(d))
            .filter(|d| {
                d.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("pod"))
            })
            .collect()
    }
}

fn walk_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            out.extend(walk_dirs(&e.path()));
            out.push(e.path());
        }
    }
    out
}

impl Drop for CgroupRoot {
    fn drop(&mut self) {
        for d in self.dirs() {
            // children first (walk_dirs lists them before their parents)
            for c in walk_dirs(&d) {
                let _ = std::fs::remove_dir(&c);
            }
            let _ = std::fs::remove_dir(&d);
        }
    }
}
