//! A private containerd for tests of CRI clients: Debian's containerd 1.6 with runc, its own root,
//! state, sockets and CNI config under a temporary directory, inside its own network namespace,
//! pulling from a [`LocalRegistry`] it starts; everything stopped and removed on drop.
//!
//! # How it is isolated
//!
//! - **Network**: containerd runs inside a [`NetnsFixture`], so the CNI bridge, veths and any
//!   iptables rules it creates live there. The registry runs in that namespace too (containerd
//!   reaches it on the namespace's 127.0.0.1); reach pod IPs with
//!   `fixture.netns().run_in(|| ...)`.
//! - **Mounts**: containerd, its shims and runc run in a private mount namespace (slave of the
//!   host's, held by a `sleep` process) with tmpfs over `/run/containerd` (shim sockets, runc
//!   state) and `/var/lib/cni` (CNI cache, host-local leases); pod network namespaces are mounted
//!   under the state dir (`netns_mounts_under_state_dir`). Rootfs and netns mounts are invisible on
//!   the host and vanish with the namespace. (`ip netns exec` is not used: it remounts `/sys`,
//!   which hides the cgroup hierarchy runc needs.) The empty directories `/run/containerd` and
//!   `/var/lib/cni` are created on the host as mount points if absent, and left there.
//! - **Processes and cgroups**: on drop, containerd, every `containerd-shim-runc-v2` whose
//!   `-address` is this fixture's socket, and all their descendants (the containers) are killed;
//!   the containers' cgroups and [`ContainerdFixture::cgroup_parent`] are removed.
//!
//! The CRI config sets `restrict_oom_score_adj = true` (without `CAP_SYS_RESOURCE` every
//! `RunPodSandbox` fails otherwise), a busybox `sleep` sandbox ("pause") image built and pushed
//! by the fixture, a bridge + host-local + loopback CNI conflist with a unique bridge name and
//! subnet, a `certs.d` with a `hosts.toml` for the registry (plain http), the overlayfs
//! snapshotter and the runc v2 runtime.
//!
//! ```no_run
//! use node_test_support::{ContainerdFixture, TestImage};
//!
//! # fn demo() -> std::io::Result<()> {
//! if !ContainerdFixture::require("my_test") {
//!     return Ok(()); // skipped locally; panics under CI=true
//! }
//! let mut ctrd = ContainerdFixture::start()?;
//! let image = ctrd.push(&TestImage::busybox().build()?, "nodekit/busybox", "1.0")?;
//! // connect a CRI client to ctrd.endpoint(), pull `image`, run pods with
//! // `log_directory = ctrd.pod_log_dir("web")?` and `cgroup_parent = ctrd.cgroup_parent()`,
//! // reach pod IPs with `ctrd.netns().run_in(|| ...)`
//! ctrd.restart()?; // SIGKILL and start again: pods keep running
//! # let _ = image;
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::image::TestImage;
use crate::netns::NetnsFixture;
use crate::registry::LocalRegistry;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The binaries the fixture needs (all on the PATH).
pub const REQUIRED_COMMANDS: &[&str] = &[
    "containerd",
    "containerd-shim-runc-v2",
    "runc",
    "nsenter",
    "unshare",
    "docker-registry",
    "ip",
];

/// Where Debian's containernetworking-plugins are.
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";

/// How long containerd may take to start.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A containerd (CRI plugin included) private to a test. See the module docs.
#[derive(Debug)]
pub struct ContainerdFixture {
    // drop order matters: our Drop kills the processes, then the registry, the namespace and
    // finally the directory go
    registry: LocalRegistry,
    netns: NetnsFixture,
    dir: tempfile::TempDir,
    holder: Child,
    containerd: Option<Child>,
    socket: PathBuf,
    config: PathBuf,
    log: PathBuf,
    pause_image: String,
    bridge: String,
    subnet: String,
    cgroup_parent: String,
}

impl ContainerdFixture {
    /// Whether the test may use a containerd fixture: root, the binaries in
    /// [`REQUIRED_COMMANDS`], busybox-static and the CNI plugins. Like [`crate::require_root`]:
    /// skips locally, panics under `CI=true`.
    pub fn require(test: &str) -> bool {
        crate::require_root(test)
            && REQUIRED_COMMANDS
                .iter()
                .all(|c| crate::require_command(test, c))
            && crate::require_path(test, crate::image::BUSYBOX)
            && crate::require_path(test, Path::new(CNI_BIN_DIR).join("bridge"))
            && crate::require_path(test, Path::new(CNI_BIN_DIR).join("host-local"))
            && crate::require_path(test, Path::new(CNI_BIN_DIR).join("loopback"))
    }

    /// Start a registry and containerd, and wait until containerd serves.
    pub fn start() -> io::Result<Self> {
        for c in REQUIRED_COMMANDS {
            if crate::which(c).is_none() {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("containerd fixture: {c} is not installed"),
                ));
            }
        }
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let dir = tempfile::Builder::new().prefix("nkt-ctrd-").tempdir()?;
        let netns = NetnsFixture::new("ctrd")?;

        // the registry lives in containerd's namespace, where containerd can reach it
        let pause = TestImage::busybox().cmd(&["sleep", "2147483647"]).build()?;
        let (registry, pause_image) =
            netns.run_in(|| -> io::Result<(LocalRegistry, String)> {
                let reg = LocalRegistry::start()?;
                let r = reg.push(&pause, "nodekit/pause", "1.0")?;
                Ok((reg, r))
            })??;

        let d = dir.path();
        let socket = d.join("containerd.sock");
        let config = d.join("config.toml");
        let log = d.join("containerd.log");
        for sub in ["root", "state", "tmp", "opt", "net.d", "pod-logs"] {
            fs::create_dir_all(d.join(sub))?;
        }
        let host_dir = d.join("certs.d").join(registry.host());
        fs::create_dir_all(&host_dir)?;
        fs::write(
            host_dir.join("hosts.toml"),
            format!(
                "server = \"http://{h}\"\n\n[host.\"http://{h}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  skip_verify = true\n",
                h = registry.host()
            ),
        )?;

        let tag = (pid as usize).wrapping_mul(31).wrapping_add(n) % 250;
        let bridge = format!("nkcri{}", (pid as usize * 100 + n) % 100_000);
        let subnet = format!("10.{}.{}.0/24", 180 + n % 50, tag);
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": format!("nkt-cri-{pid}-{n}"),
            "plugins": [{
                "type": "bridge",
                "bridge": bridge,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": subnet}]],
                    "routes": [{"dst": "0.0.0.0/0"}]
                }
            }, {
                // always works on "lo" and passes the bridge's result on
                "type": "loopback"
            }]
        });
        fs::write(
            d.join("net.d/10-nodekit.conflist"),
            serde_json::to_vec_pretty(&conflist)?,
        )?;
        fs::write(&config, config_toml(d, &socket, &pause_image))?;

        // the mount namespace holder: tmpfs over the paths containerd 1.6 hardcodes
        for mp in ["/run/containerd", "/var/lib/cni"] {
            fs::create_dir_all(mp)?;
        }
        let holder = Command::new("nsenter")
            .arg(format!("--net={}", netns.path().display()))
            .args([
                "--",
                "unshare",
                "--mount",
                "--propagation",
                "slave",
                "--",
                "sh",
                "-c",
            ])
            .arg(
                "mount -t tmpfs -o mode=0711 nkt-containerd /run/containerd && \
                 mount -t tmpfs -o mode=0755 nkt-cni /var/lib/cni && exec sleep 2147483647",
            )
            .stdin(Stdio::null())
            .spawn()?;
        let mut fixture = Self {
            registry,
            netns,
            dir,
            holder,
            containerd: None,
            socket,
            config,
            log,
            pause_image,
            bridge,
            subnet,
            cgroup_parent: format!("/nodekit-test-{pid}-{n}"),
        };
        fixture.wait_for_holder()?;
        fixture.start_containerd()?;
        Ok(fixture)
    }

    fn wait_for_holder(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mountinfo = format!("/proc/{}/mountinfo", self.holder.id());
        loop {
            if let Some(status) = self.holder.try_wait()? {
                return Err(io::Error::other(format!(
                    "the mount namespace holder exited: {status}"
                )));
            }
            let mi = fs::read_to_string(&mountinfo).unwrap_or_default();
            if mi.contains(" /run/containerd ") && mi.contains(" /var/lib/cni ") {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the mount namespace holder did not mount its tmpfs within 10 s",
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Start containerd (after [`Self::kill_containerd`]) and wait until it serves.
    pub fn start_containerd(&mut self) -> io::Result<()> {
        if self.containerd.is_some() {
            return Ok(());
        }
        let offset = fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0);
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new("nsenter")
            .arg("--target")
            .arg(self.holder.id().to_string())
            .args(["--mount", "--net", "--", "containerd", "--config"])
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        self.containerd = Some(child);
        self.wait_ready(offset)
    }

    fn wait_ready(&mut self, offset: u64) -> io::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let log = read_from(&self.log, offset);
            if log.contains("failed to load plugin io.containerd.grpc.v1.cri") {
                let e = self.fail_start("its CRI plugin did not load");
                return Err(e);
            }
            if let Some(child) = self.containerd.as_mut()
                && let Some(status) = child.try_wait()?
            {
                return Err(self.fail_start(&format!("containerd exited: {status}")));
            }
            // the CRI plugin starts its streaming server last, just before it serves
            if log.contains("containerd successfully booted")
                && log.contains("Start streaming server")
                && UnixStream::connect(&self.socket).is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(self.fail_start(&format!(
                    "containerd did not serve within {READY_TIMEOUT:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn fail_start(&mut self, why: &str) -> io::Error {
        if let Some(mut c) = self.containerd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        io::Error::other(format!(
            "{why}; the last lines of {}:\n{}",
            self.log.display(),
            self.log_tail(30)
        ))
    }

    /// Kill containerd (SIGKILL, like a crash); its shims and containers keep running.
    pub fn kill_containerd(&mut self) {
        if let Some(mut c) = self.containerd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kill containerd and start it again with the same config, root and state.
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill_containerd();
        self.start_containerd()
    }

    /// containerd's socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The CRI endpoint, `unix://<socket>`.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The registry containerd pulls from. It serves inside [`Self::netns`]: call its methods
    /// through `fixture.netns().run_in(..)`, or use [`Self::push`].
    pub fn registry(&self) -> &LocalRegistry {
        &self.registry
    }

    /// A reference to `name` (`repo:tag`) in the fixture's registry.
    pub fn image_ref(&self, name: &str) -> String {
        format!("{}/{name}", self.registry.host())
    }

    /// Push an image to the fixture's registry as `repo:tag`; returns its reference.
    pub fn push(&self, image: &TestImage, repo: &str, tag: &str) -> io::Result<String> {
        self.netns.run_in(|| self.registry.push(image, repo, tag))?
    }

    /// The sandbox ("pause") image containerd is configured with.
    pub fn pause_image(&self) -> &str {
        &self.pause_image
    }

    /// The network namespace containerd (and the CNI bridge, and the registry) live in.
    pub fn netns(&self) -> &NetnsFixture {
        &self.netns
    }

    /// The fixture's directory (root, state, config, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A directory for pod logs (`PodSandboxConfig.log_directory`), removed on drop.
    pub fn pod_log_dir(&self, pod: &str) -> io::Result<PathBuf> {
        let p = self.dir.path().join("pod-logs").join(pod);
        fs::create_dir_all(&p)?;
        Ok(p)
    }

    /// The CNI config directory containerd watches (`10-nodekit.conflist` in it).
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.dir.path().join("net.d")
    }

    /// The CNI bridge's name (in [`Self::netns`]).
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The pod subnet the CNI config hands out addresses from.
    pub fn subnet(&self) -> &str {
        &self.subnet
    }

    /// A cgroup parent for `LinuxPodSandboxConfig.cgroup_parent`, removed (in every hierarchy)
    /// on drop.
    pub fn cgroup_parent(&self) -> &str {
        &self.cgroup_parent
    }

    /// containerd's pid, when it runs.
    pub fn pid(&self) -> Option<u32> {
        self.containerd.as_ref().map(Child::id)
    }

    /// The last `lines` lines of containerd's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = read_from(&self.log, 0);
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The pids of the runc v2 shims serving this containerd (`-address <our socket>`).
    pub fn shim_pids(&self) -> Vec<i32> {
        let socket = self.socket.to_string_lossy().into_owned();
        processes()
            .into_iter()
            .filter(|p| {
                p.argv
                    .first()
                    .is_some_and(|a| a.ends_with("containerd-shim-runc-v2"))
                    && p.argv
                        .windows(2)
                        .any(|w| w[0] == "-address" && w[1] == socket)
            })
            .map(|p| p.pid)
            .collect()
    }
}

/// containerd's config: everything under `d`.
fn config_toml(d: &Path, socket: &Path, pause_image: &str) -> String {
    let p = |s: &str| d.join(s).display().to_string();
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"
temp = "{tmp}"
oom_score = 0
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[debug]
  address = "{debug}"
  level = "info"

[metrics]
  address = ""

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "{opt}"
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "{pause_image}"
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    enable_selinux = false
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          Root = "{runc_root}"
          SystemdCgroup = false
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "{cni_bin}"
      conf_dir = "{net_d}"
      max_conf_num = 1
    [plugins."io.containerd.grpc.v1.cri".registry]
      config_path = "{certs}"
"#,
        root = p("root"),
        state = p("state"),
        tmp = p("tmp"),
        socket = socket.display(),
        debug = p("debug.sock"),
        opt = p("opt"),
        runc_root = p("state/runc"),
        cni_bin = CNI_BIN_DIR,
        net_d = p("net.d"),
        certs = p("certs.d"),
    )
}

fn read_from(path: &Path, offset: u64) -> String {
    let mut s = String::new();
    if let Ok(mut f) = fs::File::open(path) {
        let _ = f.seek(SeekFrom::Start(offset));
        let mut buf = Vec::new();
        let _ = f.read_to_end(&mut buf);
        s = String::from_utf8_lossy(&buf).into_owned();
    }
    s
}

/// A process as /proc shows it.
#[derive(Debug, Clone)]
struct Proc {
    pid: i32,
    ppid: i32,
    argv: Vec<String>,
}

fn processes() -> Vec<Proc> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // the fields after the command (which may hold spaces) follow the last ')'
            let after = &stat[stat.rfind(')')? + 2..];
            let ppid = after.split_whitespace().nth(1)?.parse().ok()?;
            let argv = fs::read(format!("/proc/{pid}/cmdline"))
                .map(|b| {
                    b.split(|&c| c == 0)
                        .filter(|a| !a.is_empty())
                        .map(|a| String::from_utf8_lossy(a).into_owned())
                        .collect()
                })
                .unwrap_or_default();
            Some(Proc { pid, ppid, argv })
        })
        .collect()
}

/// `roots` and all their descendants.
fn with_descendants(roots: &[i32]) -> BTreeSet<i32> {
    let procs = processes();
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for p in &procs {
        children.entry(p.ppid).or_default().push(p.pid);
    }
    let mut all = BTreeSet::new();
    let mut stack: Vec<i32> = roots.to_vec();
    while let Some(pid) = stack.pop() {
        if all.insert(pid)
            && let Some(c) = children.get(&pid)
        {
            stack.extend(c);
        }
    }
    all
}

/// The cgroup directories of a process (every hierarchy), e.g. `/sys/fs/cgroup/memory/k8s/x`.
fn cgroup_dirs(pid: i32) -> Vec<PathBuf> {
    let Ok(text) = fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
        return vec![];
    };
    text.lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            if path == "/" {
                return None;
            }
            let hierarchy = if controllers.is_empty() {
                if Path::new("/sys/fs/cgroup/unified").exists() {
                    "unified".to_string()
                } else {
                    String::new()
                }
            } else {
                controllers.trim_start_matches("name=").to_string()
            };
            Some(
                Path::new("/sys/fs/cgroup")
                    .join(hierarchy)
                    .join(path.trim_start_matches('/')),
            )
        })
        .collect()
}

/// Remove a cgroup directory and its children (deepest first), killing what is left inside.
fn remove_cgroup_tree(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            remove_cgroup_tree(&e.path());
        }
    }
    if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
        for pid in procs
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            // SAFETY: kill with a pid read from the kernel; a stale pid at worst fails.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    for _ in 0..50 {
        if fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_gone(pids: &BTreeSet<i32>, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let alive = pids.iter().any(|p| {
            fs::read_to_string(format!("/proc/{p}/stat"))
                .map(|s| {
                    s.rfind(')')
                        .and_then(|i| s.get(i + 2..i + 3))
                        .is_some_and(|st| st != "Z")
                })
                .unwrap_or(false)
        });
        if !alive {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for ContainerdFixture {
    fn drop(&mut self) {
        // everything containerd started: shims, and their children (the containers)
        let mut roots = self.shim_pids();
        if let Some(pid) = self.pid() {
            roots.push(pid as i32);
        }
        let all = with_descendants(&roots);
        let own: BTreeSet<PathBuf> = cgroup_dirs(std::process::id() as i32).into_iter().collect();
        let mut cgroups: BTreeSet<PathBuf> = BTreeSet::new();
        for pid in &all {
            cgroups.extend(cgroup_dirs(*pid).into_iter().filter(|d| !own.contains(d)));
        }
        self.kill_containerd();
        for pid in &all {
            // SAFETY: kill with pids of our containerd's process tree; a stale pid at worst fails.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
        wait_gone(&all, Duration::from_secs(5));
        let _ = self.holder.kill();
        let _ = self.holder.wait();

        // the containers' cgroups (deepest first), then our cgroup parent in every hierarchy
        let mut cgroups: Vec<PathBuf> = cgroups.into_iter().collect();
        cgroups.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for cg in &cgroups {
            remove_cgroup_tree(cg);
        }
        if let Ok(hierarchies) = fs::read_dir("/sys/fs/cgroup") {
            for h in hierarchies.flatten() {
                remove_cgroup_tree(&h.path().join(self.cgroup_parent.trim_start_matches('/')));
            }
        }
        remove_cgroup_tree(
            &Path::new("/sys/fs/cgroup").join(self.cgroup_parent.trim_start_matches('/')),
        );

        // anything mounted under our directory in the host's namespace (should be nothing)
        let root = self.dir.path().to_string_lossy().into_owned();
        if let Ok(mi) = fs::read_to_string("/proc/self/mountinfo") {
            let mut points: Vec<&str> = mi
                .lines()
                .filter_map(|l| l.split(' ').nth(4))
                .filter(|m| m.starts_with(&root))
                .collect();
            points.sort_by_key(|m| std::cmp::Reverse(m.len()));
            for m in points {
                if let Ok(c) = std::ffi::CString::new(m) {
                    // SAFETY: umount2 with a valid C string; failure leaves the mount, no UB.
                    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
                }
            }
        }
        // then the registry, the namespace and the directory drop
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_starts_restarts_and_leaves_nothing_behind() {
        if !ContainerdFixture::require("containerd_starts_restarts_and_leaves_nothing_behind") {
            return;
        }
        let mut f = ContainerdFixture::start().unwrap();
        let dir = f.dir().to_path_buf();
        let netns = f.netns().name().to_string();
        let pid = f.pid().unwrap();
        assert!(f.socket().exists());
        assert!(UnixStream::connect(f.socket()).is_ok());
        assert!(f.log_tail(100).contains("successfully booted"));
        // containerd runs in the fixture's network namespace, not the host's
        let ns_of = |p: u32| fs::read_link(format!("/proc/{p}/ns/net")).unwrap();
        assert_ne!(ns_of(pid), ns_of(std::process::id()));
        // the registry answers inside the namespace
        let (status, _, _) = f
            .netns()
            .run_in(|| f.registry().request("GET", "/v2/", &[], &[]))
            .unwrap()
            .unwrap();
        assert_eq!(status, 200);
        assert!(f.pause_image().starts_with(&f.registry().host()));
        f.restart().unwrap();
        assert_ne!(f.pid().unwrap(), pid);
        assert!(UnixStream::connect(f.socket()).is_ok());
        drop(f);
        assert!(!dir.exists(), "{} left behind", dir.display());
        assert!(!Path::new("/run/netns").join(&netns).exists());
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }
}
