//! Network namespaces for kernel-touching tests: created by the test, deleted on drop (panics
//! included), with every process still inside killed first.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The prefix of every namespace a fixture creates: `nkt-<pid>-<n>-<label>`.
pub const PREFIX: &str = "nkt-";

/// A named network namespace (`ip netns add`) that lives as long as this value.
///
/// Its loopback is up and IPv6 duplicate address detection is off. Dropping it kills every process inside and deletes the namespace, also
/// while a test panics. [`NetnsFixture::sweep_stale`] removes namespaces left by test processes
/// that were killed.
#[derive(Debug)]
pub struct NetnsFixture {
    name: String,
}

impl NetnsFixture {
    /// Create a namespace; `label` (a few letters) makes it recognisable in `ip netns list`.
    pub fn new(label: &str) -> io::Result<Self> {
        Self::sweep_stale();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let label: String = label
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(12)
            .collect();
        let name = format!("{PREFIX}{}-{n}-{label}", std::process::id());
        run_ok(Command::new("ip").args(["netns", "add", &name]))?;
        let fixture = Self { name };
        // no duplicate address detection: IPv6 addresses are usable at once in test namespaces
        fixture.sh(
            "sysctl -qw net.ipv6.conf.default.accept_dad=0 net.ipv6.conf.all.accept_dad=0 2>/dev/null; ip link set lo up",
        )?;
        Ok(fixture)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's path (`/run/netns/<name>`), as CNI and runtimes want it.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// A command that runs inside the namespace (`ip netns exec <name> program`).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Run a shell command inside the namespace; its stdout, or an error with its stderr.
    pub fn sh(&self, script: &str) -> io::Result<String> {
        let out = run_ok(self.command("sh").args(["-c", script]))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Start a long-running shell command inside the namespace (killed on drop at the latest).
    pub fn spawn(&self, script: &str) -> io::Result<Child> {
        self.command("sh")
            .args(["-c", script])
            .stdin(Stdio::null())
            .spawn()
    }

    /// Run `f` on a new thread that has entered this namespace, and return its result.
    ///
    /// Sockets opened by `f` (netlink, TCP) belong to the namespace. `f` may build its own tokio
    /// runtime.
    pub fn run_in<F, R>(&self, f: F) -> io::Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let ns = File::open(self.path())?;
        std::thread::scope(|s| {
            s.spawn(move || {
                // SAFETY: setns on a valid namespace fd affects only this thread, which is ours.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(f())
            })
            .join()
            .map_err(|_| io::Error::other("the thread inside the namespace panicked"))?
        })
    }

    /// Kill every process inside the namespace.
    pub fn kill_all(&self) {
        kill_pids_of(&self.name);
    }

    /// Delete namespaces left behind by test processes that no longer exist.
    pub fn sweep_stale() {
        let Ok(entries) = std::fs::read_dir("/run/netns") else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(PREFIX) else {
                continue;
            };
            let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                kill_pids_of(&name);
                let _ = Command::new("ip").args(["netns", "del", &name]).status();
            }
        }
    }
}

impl Drop for NetnsFixture {
    fn drop(&mut self) {
        kill_pids_of(&self.name);
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

fn kill_pids_of(name: &str) {
    if let Ok(out) = Command::new("ip")
        .args(["netns", "pids", name])
        .stderr(Stdio::null())
        .output()
    {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                // SAFETY: kill with a pid read from the kernel; a stale pid at worst fails.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// Connect two namespaces with a veth pair and give each end an address (`10.0.0.1/24`).
pub fn connect_veth(
    a: &NetnsFixture,
    a_if: &str,
    a_addr: &str,
    b: &NetnsFixture,
    b_if: &str,
    b_addr: &str,
) -> io::Result<()> {
    run_ok(Command::new("ip").args([
        "-n",
        a.name(),
        "link",
        "add",
        a_if,
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ]))?;
    a.sh(&format!(
        "ip addr add {a_addr} dev {a_if} && ip link set {a_if} up"
    ))?;
    b.sh(&format!(
        "ip addr add {b_addr} dev {b_if} && ip link set {b_if} up"
    ))?;
    Ok(())
}

/// Run a command; its output when it succeeded, else an error that carries its stderr.
pub fn run_ok(cmd: &mut Command) -> io::Result<Output> {
    let out = cmd.stdin(Stdio::null()).output()?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(io::Error::other(format!(
            "{:?} failed ({}): {}",
            cmd,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}
