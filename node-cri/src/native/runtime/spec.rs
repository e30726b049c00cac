//! What the runtime hands the init binary (`nodekit-init`): one JSON document per sandbox,
//! container or exec, and what the init answers. Both sides of the re-exec speak these types.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The pause process of a sandbox: which namespaces to create and the hostname.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// A new network namespace (false for host-network pods).
    pub new_net: bool,
    /// A new IPC namespace.
    pub new_ipc: bool,
    /// A new UTS namespace (hostname).
    pub new_uts: bool,
    /// The hostname set in the new UTS namespace.
    pub hostname: String,
    /// `cgroup.procs` files the pause process joins.
    pub cgroup_procs: Vec<PathBuf>,
}

/// A namespace the container joins: its kind (`net`, `ipc`, `uts`, `pid`) and file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinNamespace {
    /// `net`, `ipc`, `uts` or `pid`.
    pub kind: String,
    /// The namespace file (a bind mount under the sandbox directory).
    pub path: PathBuf,
}

/// How a bind mount propagates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Propagation {
    /// `rprivate`.
    #[default]
    Private,
    /// `rslave`: host mounts appear in the container.
    HostToContainer,
    /// `rshared`: both ways.
    Bidirectional,
}

/// A bind mount into the container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BindMount {
    /// The host path.
    pub source: PathBuf,
    /// The path in the container.
    pub destination: String,
    /// Read-only.
    pub readonly: bool,
    /// Propagation.
    pub propagation: Propagation,
}

/// The seccomp profile to install.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Seccomp {
    /// No filter.
    Unconfined,
    /// The runtime's default filter (dangerous system calls answer EPERM).
    #[default]
    RuntimeDefault,
    /// A profile from a file on the node (CRI `Localhost`), read and validated at create.
    Localhost(Box<super::seccomp_profile::SeccompProfile>),
}

/// Who the process runs as, before resolution against the container's `/etc/passwd`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UserSpec {
    /// A numeric uid, when given.
    pub uid: Option<u32>,
    /// A numeric gid, when given.
    pub gid: Option<u32>,
    /// A user name to look up in the container's `/etc/passwd` (the image's `User` or the CRI
    /// `run_as_username`).
    pub username: Option<String>,
    /// A group name to look up in `/etc/group`.
    pub groupname: Option<String>,
    /// Supplementary groups.
    pub additional_gids: Vec<u32>,
}

/// The process of a container or an exec: who, with what privileges, which program.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProcessSpec {
    /// `argv`, the program first (looked up in the container's `PATH` when it has no `/`).
    pub args: Vec<String>,
    /// `KEY=value` environment.
    pub env: Vec<String>,
    /// The working directory.
    pub cwd: String,
    /// The user.
    pub user: UserSpec,
    /// Capability numbers kept (bounding, permitted, effective, inheritable).
    pub capabilities: Vec<u32>,
    /// Ambient capability numbers.
    pub ambient: Vec<u32>,
    /// `PR_SET_NO_NEW_PRIVS`.
    pub no_new_privs: bool,
    /// The seccomp profile.
    pub seccomp: Seccomp,
    /// Resource limits: (`RLIMIT_*` number, soft, hard).
    pub rlimits: Vec<(u32, u64, u64)>,
}

/// Everything the init needs to set up and run a container, and its monitor to log and record
/// its exit.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// The container id.
    pub id: String,
    /// Image layer directories, bottom first (overlay lower dirs).
    pub layers: Vec<PathBuf>,
    /// The overlay upper dir.
    pub upper: PathBuf,
    /// The overlay work dir.
    pub work: PathBuf,
    /// Where the root filesystem is mounted (inside the container's mount namespace only).
    pub rootfs: PathBuf,
    /// Namespaces of the sandbox to join.
    pub join: Vec<JoinNamespace>,
    /// A new PID namespace (false when joining the sandbox's or the host's).
    pub new_pid: bool,
    /// `cgroup.procs` files the container process joins.
    pub cgroup_procs: Vec<PathBuf>,
    /// The OOM counter file of the container's memory cgroup.
    pub oom_file: Option<PathBuf>,
    /// Bind mounts, in order (config mounts and the sandbox's `/etc` files).
    pub mounts: Vec<BindMount>,
    /// Paths hidden (`/dev/null` over files, an empty read-only tmpfs over directories).
    pub masked_paths: Vec<String>,
    /// Paths made read-only.
    pub readonly_paths: Vec<String>,
    /// A read-only root filesystem.
    pub readonly_rootfs: bool,
    /// Privileged: `/sys` read-write, no masked paths.
    pub privileged: bool,
    /// Sysctls written under `/proc/sys`.
    pub sysctls: BTreeMap<String, String>,
    /// The process.
    pub process: ProcessSpec,
    /// Run the process on a terminal.
    pub tty: bool,
    /// The OOM score adjustment (kept as is when the kernel refuses a lower value, as
    /// containerd's `restrict_oom_score_adj` does).
    #[serde(default)]
    pub oom_score_adj: Option<i64>,
    /// The pod's `/dev/shm` to bind (none: a private tmpfs).
    #[serde(default)]
    pub shm: Option<PathBuf>,
    /// The CRI log file.
    pub log_path: Option<PathBuf>,
    /// The longest log line before it is split into partial (`P`) lines.
    pub max_log_line: usize,
    /// Where the monitor records the exit.
    pub exit_file: PathBuf,
    /// The attach FIFO (CRI `stdin: true`): without a TTY the container reads it as its stdin
    /// (opened read-write so it never sees EOF); with one the monitor relays it to the
    /// terminal.
    #[serde(default)]
    pub stdin_fifo: Option<PathBuf>,
    /// With a TTY: a FIFO of `cols rows` lines the monitor applies to the terminal (attach's
    /// resize events; the attach FIFO's bytes go to the terminal too).
    #[serde(default)]
    pub resize_fifo: Option<PathBuf>,
    /// CRI `stdin_once`: the container's stdin closes when the first attach that wrote to it
    /// ends (the monitor drops its own hold on the attach FIFO on `SIGUSR2`, so the last
    /// writer leaving is EOF; with a TTY the monitor types the terminal's EOF character).
    #[serde(default)]
    pub stdin_once: bool,
    /// Where the monitor records the start (so that a runtime that died while starting the
    /// container finds it running rather than created).
    #[serde(default)]
    pub started_file: Option<PathBuf>,
}

/// An exec in a running container.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExecSpec {
    /// The container's main process (host pid).
    pub pid: i32,
    /// Its start time in ticks: the exec is refused when the pid now names another process.
    pub start_ticks: u64,
    /// The container's `cgroup.procs` files.
    pub cgroup_procs: Vec<PathBuf>,
    /// The process to run.
    pub process: ProcessSpec,
    /// Make the inherited stdin (a pty slave) the process's controlling terminal.
    #[serde(default)]
    pub tty: bool,
}

/// What the init reports once a container process runs (or a sandbox's pause process).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Started {
    /// The process (host pid).
    pub pid: i32,
    /// Its start time, in clock ticks since boot (`/proc/<pid>/stat` field 22): guards
    /// against pid reuse.
    pub start_ticks: u64,
    /// The monitor's pid (0 for a sandbox).
    pub monitor_pid: i32,
    /// The monitor's start time in ticks.
    pub monitor_ticks: u64,
    /// When the process was started, ns since the epoch (0 when unknown).
    #[serde(default)]
    pub started_at: i64,
    /// How long each phase of the start took inside the init, in microseconds (for
    /// profiling; not kept in the state).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<(String, u64)>,
}

/// What the monitor records when the container exits.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExitRecord {
    /// The exit code (128 + signal when killed by a signal).
    pub exit_code: i32,
    /// The signal that killed it, if any.
    pub signal: Option<i32>,
    /// When it exited, nanoseconds since the epoch.
    pub finished_at: i64,
    /// Whether the kernel's OOM killer killed a process of the container.
    pub oom_killed: bool,
}
