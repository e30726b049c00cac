//! The init binary's side of the runtime (`nodekit-init`, the runc-init pattern): the runtime
//! never forks itself; it executes this small single-threaded program, which sets up
//! namespaces, mounts, credentials and seccomp, then `execve`s the container's program.
//!
//! - `nodekit-init sandbox <json>`: create the pod's namespaces and leave a pause process in
//!   them (pid 1 of the pod's PID namespace).
//! - `nodekit-init container <spec file>`: become the container's monitor (it outlives the
//!   runtime, writes the CRI log and records the exit), which forks the container process and
//!   reports `ok <Started JSON>` or `err <message>` on its stdout, then closes it.
//! - `nodekit-init exec [<spec file>]`: join a running container and run one command in it
//!   (the spec on stdin, stdio discarded; or in a file, removed once read, with the caller's
//!   stdio passed through: interactive exec).

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use super::caps;
use super::log::{CriLogWriter, Stream};
use super::seccomp;
use super::spec::{
    BindMount, ContainerSpec, ExecSpec, ExitRecord, ProcessSpec, Propagation, SandboxSpec, Seccomp,
    Started,
};

type R<T> = Result<T, String>;

/// The entry point of `nodekit-init`: dispatch on the first argument and exit.
pub fn main() -> ! {
    mark_inherited_cloexec();
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    let result = match arg(1).as_str() {
        "sandbox" => run_sandbox(&arg(2)),
        "container" => run_container(Path::new(&arg(2))),
        "exec" => run_exec(args.get(2).map(PathBuf::from)),
        other => Err(format!(
            "unknown command {other:?}; usage: nodekit-init sandbox|container|exec <spec>"
        )),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("nodekit-init: {e}");
            std::process::exit(1)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// small syscall helpers

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

fn check(rc: libc::c_int, what: impl FnOnce() -> String) -> R<()> {
    if rc < 0 {
        Err(format!("{}: {}", what(), errno()))
    } else {
        Ok(())
    }
}

fn cstr(p: impl AsRef<Path>) -> CString {
    CString::new(p.as_ref().as_os_str().as_bytes()).unwrap_or_default()
}

fn mark_inherited_cloexec() {
    // SAFETY: close_range only changes descriptor flags of this process.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
}

fn pipe() -> R<(RawFd, RawFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints.
    check(
        unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) },
        || "pipe".into(),
    )?;
    Ok((fds[0], fds[1]))
}

fn close(fd: RawFd) {
    // SAFETY: closing a descriptor we own.
    unsafe { libc::close(fd) };
}

fn fork() -> R<libc::pid_t> {
    // SAFETY: this process is single-threaded (the init never starts threads).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        Err(format!("fork: {}", errno()))
    } else {
        Ok(pid)
    }
}

fn write_all(fd: RawFd, data: &[u8]) {
    // SAFETY: the File is forgotten, so the descriptor is not closed here.
    let mut f = unsafe { File::from_raw_fd(fd) };
    let _ = f.write_all(data);
    std::mem::forget(f);
}

fn read_to_end(fd: RawFd) -> Vec<u8> {
    // SAFETY: the descriptor is ours and is closed when the File drops.
    let mut f = unsafe { File::from_raw_fd(fd) };
    let mut v = Vec::new();
    let _ = f.read_to_end(&mut v);
    v
}

fn null_stdio(stdin_only: bool) {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        let targets: &[RawFd] = if stdin_only { &[0] } else { &[0, 1, 2] };
        for t in targets {
            // SAFETY: dup2 onto the standard descriptors.
            unsafe { libc::dup2(null.as_raw_fd(), *t) };
        }
    }
}

fn join_cgroups(procs: &[PathBuf]) -> R<()> {
    for p in procs {
        std::fs::write(p, "0").map_err(|e| format!("join cgroup {}: {e}", p.display()))?;
    }
    Ok(())
}

/// The start time of a process in clock ticks since boot (field 22 of `/proc/<pid>/stat`).
pub fn start_ticks(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(19)?.parse().ok())
        })
        .unwrap_or(0)
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn setns_path(path: &Path, nstype: libc::c_int) -> R<()> {
    let f = File::open(path).map_err(|e| format!("open namespace {}: {e}", path.display()))?;
    // SAFETY: setns on a namespace file we opened.
    check(unsafe { libc::setns(f.as_raw_fd(), nstype) }, || {
        format!("setns {}", path.display())
    })
}

fn ns_flag(kind: &str) -> R<libc::c_int> {
    Ok(match kind {
        "net" => libc::CLONE_NEWNET,
        "ipc" => libc::CLONE_NEWIPC,
        "uts" => libc::CLONE_NEWUTS,
        "pid" => libc::CLONE_NEWPID,
        "mnt" => libc::CLONE_NEWNS,
        k => return Err(format!("unknown namespace kind {k:?}")),
    })
}

fn wait_status_code(status: libc::c_int) -> (i32, Option<i32>) {
    if libc::WIFEXITED(status) {
        (libc::WEXITSTATUS(status), None)
    } else if libc::WIFSIGNALED(status) {
        let s = libc::WTERMSIG(status);
        (128 + s, Some(s))
    } else {
        (255, None)
    }
}

// ---------------------------------------------------------------------------------------------
// sandbox: the pause process

fn run_sandbox(json: &str) -> R<i32> {
    let mut marks = Marks::since_spawn();
    let spec: SandboxSpec = serde_json::from_str(json).map_err(|e| format!("sandbox spec: {e}"))?;
    let mut flags = libc::CLONE_NEWPID;
    if spec.new_net {
        flags |= libc::CLONE_NEWNET;
    }
    if spec.new_ipc {
        flags |= libc::CLONE_NEWIPC;
    }
    if spec.new_uts {
        flags |= libc::CLONE_NEWUTS;
    }
    // SAFETY: unshare affects only this single-threaded process.
    check(unsafe { libc::unshare(flags) }, || {
        "unshare sandbox namespaces".into()
    })?;
    marks.mark("unshare");
    if spec.new_uts && !spec.hostname.is_empty() {
        let h = spec.hostname.as_bytes();
        // SAFETY: h is a valid buffer of h.len() bytes.
        check(
            unsafe { libc::sethostname(h.as_ptr().cast(), h.len()) },
            || format!("sethostname {:?}", spec.hostname),
        )?;
    }
    if spec.new_net {
        loopback_up()?;
    }
    marks.mark("hostname_lo");
    let pid = fork()?;
    if pid == 0 {
        pause_main(&spec);
    }
    marks.mark("fork");
    let started = Started {
        pid,
        start_ticks: start_ticks(pid),
        monitor_pid: 0,
        monitor_ticks: 0,
        started_at: now_ns(),
        phases: marks.v,
    };
    println!("{}", serde_json::to_string(&started).unwrap_or_default());
    Ok(0)
}

extern "C" fn on_signal_noop(_: libc::c_int) {}
extern "C" fn on_signal_exit(_: libc::c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(0) };
}

fn pause_main(spec: &SandboxSpec) -> ! {
    // SAFETY: plain syscalls in the single-threaded child.
    unsafe {
        libc::setsid();
        libc::chdir(c"/".as_ptr());
    }
    null_stdio(false);
    let _ = join_cgroups(&spec.cgroup_procs);
    // SAFETY: installing handlers that only call async-signal-safe functions.
    unsafe {
        libc::signal(
            libc::SIGCHLD,
            on_signal_noop as *const () as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGTERM,
            on_signal_exit as *const () as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGINT,
            on_signal_exit as *const () as libc::sighandler_t,
        );
    }
    loop {
        let mut st = 0;
        // SAFETY: reaping any child; a null rusage is not needed.
        let r = unsafe { libc::waitpid(-1, &mut st, 0) };
        if r < 0 && errno().raw_os_error() == Some(libc::ECHILD) {
            // SAFETY: pause returns when a signal arrives.
            unsafe { libc::pause() };
        }
    }
}

fn loopback_up() -> R<()> {
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: libc::c_short,
        pad: [u8; 22],
    }
    // SAFETY: a datagram socket to issue interface ioctls on; closed below.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    check(s, || "socket".into())?;
    let mut req = IfReq {
        name: [0; 16],
        flags: 0,
        pad: [0; 22],
    };
    req.name[..2].copy_from_slice(b"lo");
    // SAFETY: req is a valid ifreq-sized buffer.
    let rc = unsafe { libc::ioctl(s, libc::SIOCGIFFLAGS, &mut req) };
    let r = check(rc, || "get lo flags".into()).and_then(|()| {
        req.flags |= libc::IFF_UP as libc::c_short;
        // SAFETY: as above.
        check(unsafe { libc::ioctl(s, libc::SIOCSIFFLAGS, &req) }, || {
            "set lo up".into()
        })
    });
    close(s);
    r
}

// ---------------------------------------------------------------------------------------------
// container: launcher -> monitor -> container process

/// Phase marks of a container start inside the init (microseconds), reported in
/// [`Started::phases`].
struct Marks {
    last: std::time::Instant,
    v: Vec<(String, u64)>,
}

impl Marks {
    fn new() -> Self {
        Self {
            last: std::time::Instant::now(),
            v: Vec::new(),
        }
    }
    /// Marks whose first phase (`launcher.exec`) began when the runtime spawned the init: the
    /// runtime passes its `CLOCK_MONOTONIC` time in `NODEKIT_INIT_SPAWNED_NS`.
    fn since_spawn() -> Self {
        let mut m = Self::new();
        let spawned: Option<u64> = std::env::var("NODEKIT_INIT_SPAWNED_NS")
            .ok()
            .and_then(|v| v.parse().ok());
        if let Some(spawned) = spawned {
            let now = monotonic_ns();
            m.v.push(("launcher.exec".into(), now.saturating_sub(spawned) / 1000));
        }
        m
    }
    fn mark(&mut self, name: &str) {
        let now = std::time::Instant::now();
        self.v
            .push((name.to_string(), (now - self.last).as_micros() as u64));
        self.last = now;
    }
    /// The marks as lines of the setup pipe: `\x01<name> <us>\n` each.
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (n, us) in &self.v {
            out.extend_from_slice(format!("\x01{n} {us}\n").as_bytes());
        }
        out
    }
    /// Split what the container process wrote on the setup pipe into its marks and its error.
    fn decode(data: &[u8]) -> (Vec<(String, u64)>, String) {
        let text = String::from_utf8_lossy(data);
        let mut marks = Vec::new();
        let mut rest = text.as_ref();
        while let Some(line) = rest.strip_prefix('\x01') {
            let (line, tail) = line.split_once('\n').unwrap_or((line, ""));
            if let Some((n, us)) = line.rsplit_once(' ') {
                marks.push((n.to_string(), us.parse().unwrap_or(0)));
            }
            rest = tail;
        }
        (marks, rest.to_string())
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds (the same clock in every process of the machine).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime into a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn run_container(spec_path: &Path) -> R<i32> {
    let mut marks = Marks::since_spawn();
    let data = std::fs::read(spec_path).map_err(|e| format!("{}: {e}", spec_path.display()))?;
    let spec: ContainerSpec =
        serde_json::from_slice(&data).map_err(|e| format!("{}: {e}", spec_path.display()))?;
    marks.mark("launcher.spec");
    // this process is the monitor (no launcher in between: one process hand-off less on every
    // start); the report goes to stdout, which the runtime reads until the monitor closes it
    monitor_main(&spec, 1, marks)
}

static REOPEN: AtomicBool = AtomicBool::new(false);
extern "C" fn on_reopen(_: libc::c_int) {
    REOPEN.store(true, Ordering::SeqCst);
}

/// `SIGUSR2`: an attach of a `stdin_once` container holds the attach FIFO now; the monitor
/// lets go of its own writer so that the attach's end is the container's EOF.
static RELEASE_STDIN: AtomicBool = AtomicBool::new(false);
extern "C" fn on_release_stdin(_: libc::c_int) {
    RELEASE_STDIN.store(true, Ordering::SeqCst);
}

struct Stdio {
    /// The ends the monitor reads: stdout, stderr (or the pty master as stdout).
    read: Vec<(RawFd, Stream)>,
    /// The child's stdin, stdout, stderr.
    child: [RawFd; 3],
    /// `stdin_once` without a TTY: the monitor's own writer of the attach FIFO (close on
    /// exec), which keeps the container's stdin from reaching EOF until the first attach.
    stdin_holder: Option<RawFd>,
}

fn make_stdio(tty: bool, stdin_fifo: Option<&Path>, stdin_once: bool) -> R<Stdio> {
    if tty {
        let (mut master, mut slave) = (0, 0);
        // SAFETY: openpty writes two descriptors; the other pointers may be null.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        check(rc, || "openpty".into())?;
        // SAFETY: flag changes on our descriptors.
        unsafe {
            libc::fcntl(master, libc::F_SETFD, libc::FD_CLOEXEC);
            libc::fcntl(slave, libc::F_SETFD, libc::FD_CLOEXEC);
        }
        return Ok(Stdio {
            read: vec![(master, Stream::Stdout)],
            child: [slave, slave, slave],
            stdin_holder: None,
        });
    }
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let fifo_err = |f: &Path, e: std::io::Error| format!("stdin fifo {}: {e}", f.display());
    let mut stdin_holder = None;
    // stdin: the attach FIFO (read-write, so it never reaches EOF) or /dev/null; for
    // `stdin_once` read-only, with the monitor holding a writer until the first attach
    let null = match stdin_fifo {
        Some(f) if stdin_once => {
            use std::os::fd::IntoRawFd;
            use std::os::unix::fs::OpenOptionsExt;
            let holder = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(f)
                .map_err(|e| fifo_err(f, e))?;
            stdin_holder = Some(holder.into_raw_fd());
            let r = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(f)
                .map_err(|e| fifo_err(f, e))?;
            // SAFETY: flag changes on our descriptor: blocking reads for the container.
            unsafe {
                let fl = libc::fcntl(r.as_raw_fd(), libc::F_GETFL);
                libc::fcntl(r.as_raw_fd(), libc::F_SETFL, fl & !libc::O_NONBLOCK);
            }
            r
        }
        Some(f) => std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(f)
            .map_err(|e| fifo_err(f, e))?,
        None => std::fs::File::open("/dev/null").map_err(|e| format!("/dev/null: {e}"))?,
    };
    let null_fd = null.as_raw_fd();
    std::mem::forget(null);
    Ok(Stdio {
        read: vec![(out_r, Stream::Stdout), (err_r, Stream::Stderr)],
        child: [null_fd, out_w, err_w],
        stdin_holder,
    })
}

fn monitor_main(spec: &ContainerSpec, report_w: RawFd, mut marks: Marks) -> ! {
    let fail = |msg: String| -> ! {
        write_all(report_w, format!("err {msg}").as_bytes());
        // SAFETY: leaving the forked monitor.
        unsafe { libc::_exit(1) }
    };
    // SAFETY: a new session for the single-threaded monitor, away from the runtime's cwd.
    unsafe {
        libc::setsid();
        libc::chdir(c"/".as_ptr());
    }
    let stdin_fifo = spec.stdin_fifo.as_deref().filter(|_| !spec.tty);
    let stdio = make_stdio(spec.tty, stdin_fifo, spec.stdin_once).unwrap_or_else(|e| fail(e));
    let (ep_r, ep_w) = pipe().unwrap_or_else(|e| fail(e));
    if spec.new_pid {
        // SAFETY: the monitor's next child starts a new PID namespace.
        check(unsafe { libc::unshare(libc::CLONE_NEWPID) }, || {
            "unshare pid namespace".into()
        })
        .unwrap_or_else(|e| fail(e));
    } else if let Some(pid_ns) = spec.join.iter().find(|j| j.kind == "pid") {
        setns_path(&pid_ns.path, libc::CLONE_NEWPID).unwrap_or_else(|e| fail(e));
    }
    marks.mark("monitor.setup");
    let child = fork().unwrap_or_else(|e| fail(e));
    if child == 0 {
        close(ep_r);
        for (fd, _) in &stdio.read {
            close(*fd);
        }
        let mut child_marks = Marks::new();
        let err = container_main(spec, &stdio.child, &mut child_marks, ep_w).unwrap_err();
        write_all(ep_w, err.as_bytes());
        // SAFETY: leaving the forked child after a setup failure.
        unsafe { libc::_exit(127) };
    }
    close(ep_w);
    let mut closed = std::collections::BTreeSet::new();
    for fd in stdio.child {
        if closed.insert(fd) {
            close(fd);
        }
    }
    let (child_marks, setup_error) = Marks::decode(&read_to_end(ep_r));
    marks.mark("container");
    let child_total: u64 = child_marks.iter().map(|m| m.1).sum();
    if !setup_error.is_empty() {
        let mut st = 0;
        // SAFETY: reaping our child.
        unsafe { libc::waitpid(child, &mut st, 0) };
        fail(setup_error);
    }
    // SAFETY: getpid cannot fail.
    let me = unsafe { libc::getpid() };
    let mut phases = std::mem::take(&mut marks.v);
    let container_us = phases.pop().map(|m| m.1).unwrap_or(0);
    phases.extend(
        child_marks
            .into_iter()
            .map(|(n, us)| (format!("container.{n}"), us)),
    );
    phases.push((
        "container.exec".into(),
        container_us.saturating_sub(child_total),
    ));
    // the terminal's input FIFOs are open before the start is known: an attach that comes
    // right after it finds a reader
    let input = TtyInput::open(spec, &stdio.read);
    // before anyone learns the monitor's pid (the default action of SIGUSR2 is to die)
    // SAFETY: a handler that only stores to an atomic.
    unsafe {
        libc::signal(
            libc::SIGUSR2,
            on_release_stdin as *const () as libc::sighandler_t,
        )
    };
    let started = Started {
        pid: child,
        start_ticks: start_ticks(child),
        monitor_pid: me,
        monitor_ticks: start_ticks(me),
        started_at: now_ns(),
        phases,
    };
    if let Some(f) = &spec.started_file {
        let tmp = f.with_extension("tmp");
        if std::fs::write(&tmp, serde_json::to_vec(&started).unwrap_or_default()).is_ok() {
            let _ = std::fs::rename(&tmp, f);
        }
    }
    write_all(
        report_w,
        format!("ok {}", serde_json::to_string(&started).unwrap_or_default()).as_bytes(),
    );
    close(report_w);
    null_stdio(false);
    // SAFETY: a handler that only stores to an atomic.
    unsafe { libc::signal(libc::SIGUSR1, on_reopen as *const () as libc::sighandler_t) };
    let record = monitor_loop(spec, child, stdio.read, input, stdio.stdin_holder);
    let tmp = spec.exit_file.with_extension("tmp");
    if std::fs::write(&tmp, serde_json::to_vec(&record).unwrap_or_default()).is_ok() {
        let _ = std::fs::rename(&tmp, &spec.exit_file);
    }
    // SAFETY: leaving the monitor.
    unsafe { libc::_exit(0) }
}

/// What the monitor relays into a TTY container's terminal: the attach FIFO's bytes, and the
/// resize FIFO's `cols rows` lines as window sizes.
struct TtyInput {
    master: RawFd,
    stdin: Option<RawFd>,
    resize: Option<RawFd>,
    partial: Vec<u8>,
}

impl TtyInput {
    fn open(spec: &ContainerSpec, read: &[(RawFd, Stream)]) -> Option<Self> {
        use std::os::fd::IntoRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        let master = read.first().map(|(fd, _)| *fd).filter(|_| spec.tty)?;
        // read-write: the FIFO never hangs up; `stdin_once` reads it read-only, and the
        // hang-up after its first writer left is the end of the terminal's input
        let open = |p: &Option<PathBuf>, write: bool| {
            p.as_ref().and_then(|p| {
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(write)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(p)
                    .ok()
                    .map(|f| f.into_raw_fd())
            })
        };
        Some(Self {
            master,
            stdin: open(&spec.stdin_fifo, !spec.stdin_once),
            resize: open(&spec.resize_fifo, true),
            partial: Vec::new(),
        })
    }

    fn pollfds(&self) -> impl Iterator<Item = libc::pollfd> {
        [self.stdin, self.resize]
            .into_iter()
            .flatten()
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
    }

    fn ready(&mut self, fd: RawFd, buf: &mut [u8]) {
        // SAFETY: reading into our buffer from a non-blocking FIFO.
        let r = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if r == 0 && Some(fd) == self.stdin {
            // `stdin_once`: the first attach left; the terminal's EOF character (^D) is the
            // end of the process's input, and later attaches have no stdin
            // SAFETY: one byte of ours to the pty master; closing our FIFO end.
            unsafe {
                libc::write(self.master, c"\x04".as_ptr().cast(), 1);
                libc::close(fd);
            }
            self.stdin = None;
            return;
        }
        if r <= 0 {
            return;
        }
        let data = &buf[..r as usize];
        if Some(fd) == self.stdin {
            // typed input: as much as the terminal takes now (never block the output loop)
            for chunk in data.chunks(256) {
                let mut p = libc::pollfd {
                    fd: self.master,
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one valid pollfd; then a write of our own bytes.
                unsafe {
                    if libc::poll(&mut p, 1, 100) <= 0 {
                        return;
                    }
                    libc::write(self.master, chunk.as_ptr().cast(), chunk.len());
                }
            }
            return;
        }
        self.partial.extend_from_slice(data);
        while let Some(nl) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=nl).collect();
            let text = String::from_utf8_lossy(&line);
            let mut it = text.split_whitespace().map(|v| v.parse::<u16>());
            if let (Some(Ok(cols)), Some(Ok(rows))) = (it.next(), it.next()) {
                let ws = libc::winsize {
                    ws_row: rows,
                    ws_col: cols,
                    ws_xpixel: 0,
                    ws_ypixel: 0,
                };
                // SAFETY: TIOCSWINSZ with a valid winsize on the pty master we hold.
                unsafe { libc::ioctl(self.master, libc::TIOCSWINSZ, &ws) };
            }
        }
    }
}

fn monitor_loop(
    spec: &ContainerSpec,
    child: libc::pid_t,
    mut fds: Vec<(RawFd, Stream)>,
    mut input: Option<TtyInput>,
    mut stdin_holder: Option<RawFd>,
) -> ExitRecord {
    let mut log = CriLogWriter::open(spec.log_path.clone(), spec.max_log_line.max(1));
    let mut status: Option<libc::c_int> = None;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if REOPEN.swap(false, Ordering::SeqCst) {
            log.reopen();
        }
        if RELEASE_STDIN.swap(false, Ordering::SeqCst)
            && let Some(fd) = stdin_holder.take()
        {
            close(fd);
        }
        if fds.is_empty() {
            // the output is closed: the container is exiting, wait for it
            while status.is_none() {
                let mut st = 0;
                // SAFETY: waiting for our child.
                let r = unsafe { libc::waitpid(child, &mut st, 0) };
                if r == child {
                    status = Some(st);
                } else if r < 0 && errno().raw_os_error() != Some(libc::EINTR) {
                    break;
                }
            }
            break;
        }
        let mut pfds: Vec<libc::pollfd> = fds
            .iter()
            .map(|(fd, _)| libc::pollfd {
                fd: *fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let outputs = pfds.len();
        pfds.extend(input.iter().flat_map(TtyInput::pollfds));
        let timeout = if status.is_some() { 50 } else { 200 };
        // SAFETY: pfds is a valid array of pollfd.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout) };
        let mut done = Vec::new();
        if n > 0 {
            for (i, p) in pfds.iter().enumerate() {
                if p.revents == 0 {
                    continue;
                }
                if i >= outputs {
                    if let Some(inp) = input.as_mut() {
                        inp.ready(p.fd, &mut buf);
                    }
                    continue;
                }
                // SAFETY: reading into our buffer.
                let r = unsafe { libc::read(p.fd, buf.as_mut_ptr().cast(), buf.len()) };
                if r > 0 {
                    log.write(fds[i].1, &buf[..r as usize]);
                } else if r == 0 || errno().raw_os_error() != Some(libc::EINTR) {
                    done.push(p.fd);
                }
            }
        }
        for fd in done {
            close(fd);
            fds.retain(|(f, _)| *f != fd);
        }
        if status.is_none() {
            let mut st = 0;
            // SAFETY: polling our child's exit.
            if unsafe { libc::waitpid(child, &mut st, libc::WNOHANG) } == child {
                status = Some(st);
            }
        } else if n == 0 {
            // the container is gone and its output has been quiet: stop reading leftovers
            break;
        }
    }
    log.flush();
    let st = status.unwrap_or(0);
    let (exit_code, signal) = wait_status_code(st);
    let oom_killed = spec
        .oom_file
        .as_deref()
        .is_some_and(|f| super::cgroup::oom_kills_in(f) > 0);
    ExitRecord {
        exit_code,
        signal,
        finished_at: now_ns(),
        oom_killed,
    }
}

fn container_main(
    spec: &ContainerSpec,
    stdio: &[RawFd; 3],
    marks: &mut Marks,
    setup_pipe: RawFd,
) -> R<std::convert::Infallible> {
    // SAFETY: plain syscalls in the single-threaded child.
    unsafe {
        libc::setsid();
        if spec.tty {
            libc::ioctl(stdio[0], libc::TIOCSCTTY, 0);
        }
        for (i, fd) in stdio.iter().enumerate() {
            libc::dup2(*fd, i as RawFd);
        }
    }
    marks.mark("fork");
    join_cgroups(&spec.cgroup_procs)?;
    marks.mark("join_cgroups");
    if let Some(adj) = spec.oom_score_adj {
        // lowering it needs CAP_SYS_RESOURCE: without it the score stays (not an error)
        let _ = std::fs::write("/proc/self/oom_score_adj", adj.to_string());
    }
    for j in spec.join.iter().filter(|j| j.kind != "pid") {
        setns_path(&j.path, ns_flag(&j.kind)?)?;
    }
    marks.mark("setns");
    // SAFETY: a new mount namespace for this single-threaded process.
    check(unsafe { libc::unshare(libc::CLONE_NEWNS) }, || {
        "unshare mount namespace".into()
    })?;
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_SLAVE,
        None,
    )?;
    marks.mark("mount_ns");
    mount_rootfs(spec, marks)?;
    pivot_root(&spec.rootfs)?;
    marks.mark("pivot_root");
    for (k, v) in &spec.sysctls {
        let p = format!("/proc/sys/{}", k.replace('.', "/"));
        std::fs::write(&p, v).map_err(|e| format!("sysctl {k}={v}: {e}"))?;
    }
    if !spec.privileged {
        for p in &spec.masked_paths {
            mask_path(p)?;
        }
        for p in &spec.readonly_paths {
            readonly_path(p)?;
        }
    }
    if spec.readonly_rootfs {
        remount_readonly(Path::new("/"))?;
    }
    marks.mark("masked_paths");
    write_all(setup_pipe, &marks.encode());
    apply_process(&spec.process)
}

fn mount(
    src: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> R<()> {
    let src_c = src.map(cstr);
    let target_c = cstr(target);
    let fstype_c = fstype.map(|f| CString::new(f).unwrap_or_default());
    let data_c = data.map(|d| CString::new(d).unwrap_or_default());
    // SAFETY: every pointer is a valid C string or null.
    let rc = unsafe {
        libc::mount(
            src_c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            target_c.as_ptr(),
            fstype_c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            flags,
            data_c
                .as_ref()
                .map_or(std::ptr::null(), |c| c.as_ptr().cast()),
        )
    };
    check(rc, || {
        format!(
            "mount {} on {} ({})",
            src.map(|s| s.display().to_string()).unwrap_or_default(),
            target.display(),
            fstype.unwrap_or("bind/remount")
        )
    })
}

/// `root` joined with `path`, with every symlink resolved inside `root` (never above it).
pub fn secure_join(root: &Path, path: &str) -> PathBuf {
    let mut pending: std::collections::VecDeque<std::ffi::OsString> = Path::new(path)
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut resolved: Vec<std::ffi::OsString> = Vec::new();
    let mut links = 0;
    while let Some(c) = pending.pop_front() {
        if c == ".." {
            resolved.pop();
            continue;
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(&resolved);
        candidate.push(&c);
        match std::fs::read_link(&candidate) {
            Ok(target) if links < 40 => {
                links += 1;
                if target.is_absolute() {
                    resolved.clear();
                }
                for (i, comp) in target
                    .components()
                    .filter_map(|c| match c {
                        Component::Normal(n) => Some(n.to_os_string()),
                        Component::ParentDir => Some("..".into()),
                        _ => None,
                    })
                    .enumerate()
                {
                    pending.insert(i, comp);
                }
            }
            _ => resolved.push(c),
        }
    }
    let mut out = root.to_path_buf();
    out.extend(resolved);
    out
}

fn mkdir_all(p: &Path) -> R<()> {
    std::fs::create_dir_all(p).map_err(|e| format!("mkdir {}: {e}", p.display()))
}

fn mount_rootfs(spec: &ContainerSpec, marks: &mut Marks) -> R<()> {
    if spec.layers.is_empty() {
        return Err("the image has no layers".into());
    }
    let lower: Vec<String> = spec
        .layers
        .iter()
        .rev()
        .map(|l| l.display().to_string())
        .collect();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        spec.upper.display(),
        spec.work.display()
    );
    mount(
        Some(Path::new("overlay")),
        &spec.rootfs,
        Some("overlay"),
        // device nodes in image layers or made in the rootfs do not open (/dev is our tmpfs)
        libc::MS_NODEV,
        Some(&opts),
    )?;
    marks.mark("overlay");
    let root = &spec.rootfs;
    let (nosuid, nodev, noexec) = (libc::MS_NOSUID, libc::MS_NODEV, libc::MS_NOEXEC);
    let at = |p: &str| -> R<PathBuf> {
        let t = secure_join(root, p);
        if t != root.join(p.trim_start_matches('/')) {
            return Err(format!(
                "the image's {p} is a symlink: refusing to mount over it"
            ));
        }
        mkdir_all(&t)?;
        Ok(t)
    };
    mount(
        Some(Path::new("proc")),
        &at("/proc")?,
        Some("proc"),
        nosuid | nodev | noexec,
        None,
    )?;
    let dev = at("/dev")?;
    mount(
        Some(Path::new("tmpfs")),
        &dev,
        Some("tmpfs"),
        nosuid | libc::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )?;
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        let p = cstr(dev.join(name));
        // SAFETY: mknod of a character device under our fresh tmpfs.
        let rc = unsafe {
            libc::mknod(
                p.as_ptr(),
                libc::S_IFCHR | 0o666,
                libc::makedev(major, minor),
            )
        };
        check(rc, || format!("mknod /dev/{name}"))?;
        // SAFETY: chmod past the umask.
        unsafe { libc::chmod(p.as_ptr(), 0o666) };
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
        ("core", "/proc/kcore"),
    ] {
        std::os::unix::fs::symlink(target, dev.join(link))
            .map_err(|e| format!("symlink /dev/{link}: {e}"))?;
    }
    mount(
        Some(Path::new("devpts")),
        &at("/dev/pts")?,
        Some("devpts"),
        nosuid | noexec,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )?;
    match &spec.shm {
        Some(pod_shm) => mount(
            Some(pod_shm),
            &at("/dev/shm")?,
            None,
            libc::MS_BIND | libc::MS_REC,
            None,
        )?,
        None => mount(
            Some(Path::new("shm")),
            &at("/dev/shm")?,
            Some("tmpfs"),
            nosuid | nodev | noexec,
            Some("mode=1777,size=65536k"),
        )?,
    }
    mount(
        Some(Path::new("mqueue")),
        &at("/dev/mqueue")?,
        Some("mqueue"),
        nosuid | nodev | noexec,
        None,
    )?;
    let sys_flags = nosuid | nodev | noexec | if spec.privileged { 0 } else { libc::MS_RDONLY };
    mount(
        Some(Path::new("sysfs")),
        &at("/sys")?,
        Some("sysfs"),
        sys_flags,
        None,
    )?;
    marks.mark("proc_dev_sys");
    for m in &spec.mounts {
        bind_mount(root, m)?;
    }
    marks.mark("bind_mounts");
    Ok(())
}

fn bind_mount(root: &Path, m: &BindMount) -> R<()> {
    let meta = std::fs::metadata(&m.source)
        .map_err(|e| format!("mount source {}: {e}", m.source.display()))?;
    let target = secure_join(root, &m.destination);
    if meta.is_dir() {
        mkdir_all(&target)?;
    } else {
        if let Some(parent) = target.parent() {
            mkdir_all(parent)?;
        }
        if std::fs::symlink_metadata(&target).is_err() {
            std::fs::write(&target, b"")
                .map_err(|e| format!("create mount point {}: {e}", target.display()))?;
        }
    }
    mount(
        Some(&m.source),
        &target,
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    )?;
    let prop = match m.propagation {
        Propagation::Private => libc::MS_PRIVATE,
        Propagation::HostToContainer => libc::MS_SLAVE,
        Propagation::Bidirectional => libc::MS_SHARED,
    };
    mount(None, &target, None, libc::MS_REC | prop, None)?;
    if m.readonly {
        remount_readonly(&target)?;
    }
    Ok(())
}

fn remount_readonly(target: &Path) -> R<()> {
    // keep the flags the mount has (nosuid, nodev, noexec), add read-only
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let c = cstr(target);
    // SAFETY: statvfs into a zeroed struct.
    unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    let mut flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
    for (vfs, ms) in [
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
    ] {
        if st.f_flag & vfs != 0 {
            flags |= ms;
        }
    }
    mount(None, target, None, flags, None)
}

fn pivot_root(rootfs: &Path) -> R<()> {
    let old = File::open("/").map_err(|e| format!("open /: {e}"))?;
    let new = File::open(rootfs).map_err(|e| format!("open {}: {e}", rootfs.display()))?;
    let dot = cstr(".");
    // SAFETY: fchdir/pivot_root/umount2 on descriptors and paths we hold.
    unsafe {
        check(libc::fchdir(new.as_raw_fd()), || "chdir rootfs".into())?;
        check(
            libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) as libc::c_int,
            || "pivot_root".into(),
        )?;
        check(libc::fchdir(old.as_raw_fd()), || "chdir old root".into())?;
    }
    mount(
        None,
        Path::new("."),
        None,
        libc::MS_SLAVE | libc::MS_REC,
        None,
    )?;
    // SAFETY: detach the old root, then move to the new one.
    unsafe {
        check(libc::umount2(dot.as_ptr(), libc::MNT_DETACH), || {
            "detach old root".into()
        })?;
        check(libc::chdir(cstr("/").as_ptr()), || "chdir /".into())?;
    }
    Ok(())
}

fn mask_path(p: &str) -> R<()> {
    let path = Path::new(p);
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => mount(
            Some(Path::new("tmpfs")),
            path,
            Some("tmpfs"),
            libc::MS_RDONLY,
            None,
        ),
        Ok(_) => mount(
            Some(Path::new("/dev/null")),
            path,
            None,
            libc::MS_BIND,
            None,
        ),
        Err(_) => Ok(()),
    }
}

fn readonly_path(p: &str) -> R<()> {
    let path = Path::new(p);
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    mount(Some(path), path, None, libc::MS_BIND | libc::MS_REC, None)?;
    remount_readonly(path)
}

// ---------------------------------------------------------------------------------------------
// the process: user, rlimits, capabilities, seccomp, exec (containers and execs alike)

fn lookup_passwd(name: &str) -> Option<(u32, u32)> {
    let s = std::fs::read_to_string("/etc/passwd").ok()?;
    s.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4 && f[0] == name)
            .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
            .flatten()
    })
}

fn lookup_group(name: &str) -> Option<u32> {
    let s = std::fs::read_to_string("/etc/group").ok()?;
    s.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 3 && f[0] == name)
            .then(|| f[2].parse().ok())
            .flatten()
    })
}

fn groups_of(user: &str) -> Vec<u32> {
    let Ok(s) = std::fs::read_to_string("/etc/group") else {
        return vec![];
    };
    s.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 4 && f[3].split(',').any(|m| m == user))
                .then(|| f[2].parse().ok())
                .flatten()
        })
        .collect()
}

/// uid, gid and supplementary groups, resolved against the container's own files.
fn resolve_user(u: &super::spec::UserSpec) -> R<(u32, u32, Vec<u32>)> {
    let mut uid = u.uid;
    let mut gid = u.gid;
    let mut name = None;
    if let Some(n) = u.username.as_deref().filter(|n| !n.is_empty()) {
        if let Ok(num) = n.parse::<u32>() {
            uid = uid.or(Some(num));
        } else {
            let (pu, pg) = lookup_passwd(n)
                .ok_or_else(|| format!("user {n:?} not found in the container's /etc/passwd"))?;
            uid = uid.or(Some(pu));
            gid = gid.or(Some(pg));
            name = Some(n.to_string());
        }
    }
    if gid.is_none()
        && let Some(g) = u.groupname.as_deref().filter(|g| !g.is_empty())
    {
        gid = Some(match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => lookup_group(g)
                .ok_or_else(|| format!("group {g:?} not found in the container's /etc/group"))?,
        });
    }
    let uid = uid.unwrap_or(0);
    if gid.is_none() {
        // the user's primary group from /etc/passwd, by uid
        gid = std::fs::read_to_string("/etc/passwd").ok().and_then(|s| {
            s.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                if f.len() >= 4 && f[2].parse::<u32>().ok() == Some(uid) {
                    if name.is_none() {
                        name = Some(f[0].to_string());
                    }
                    f[3].parse().ok()
                } else {
                    None
                }
            })
        });
    }
    let gid = gid.unwrap_or(0);
    let mut groups: Vec<u32> = name.as_deref().map(groups_of).unwrap_or_default();
    groups.extend(&u.additional_gids);
    groups.sort();
    groups.dedup();
    Ok((uid, gid, groups))
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}
const CAP_V3: u32 = 0x2008_0522;

fn capget() -> R<[CapData; 2]> {
    let mut h = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let mut d = [CapData::default(); 2];
    // SAFETY: header and two data structs, as the v3 ABI wants.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut h, d.as_mut_ptr()) } as libc::c_int;
    check(rc, || "capget".into())?;
    Ok(d)
}

fn capset(d: [CapData; 2]) -> R<()> {
    let mut h = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    // SAFETY: as capget.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut h, d.as_ptr()) } as libc::c_int;
    check(rc, || "capset".into())
}

/// Give the terminal on the process's stdio to its user, as runc does: a pty slave is
/// opened by root (the container's devpts gives it group `tty`, 5), and a process running as
/// another user could otherwise not reopen it (`/dev/stdin`, `tty`, `stty`) or control it.
fn chown_terminal(uid: u32) {
    for fd in 0..3 {
        // SAFETY: isatty, fstat and fchown on the process's own stdio descriptors.
        unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::isatty(fd) == 1 && libc::fstat(fd, &mut st) == 0 && st.st_uid != uid {
                // the group stays (the devpts mount's `gid=5`)
                libc::fchown(fd, uid, u32::MAX);
            }
        }
    }
}

fn apply_process(p: &ProcessSpec) -> R<std::convert::Infallible> {
    let (uid, gid, groups) = resolve_user(&p.user)?;
    chown_terminal(uid);
    for (res, soft, hard) in &p.rlimits {
        let lim = libc::rlimit {
            rlim_cur: *soft,
            rlim_max: *hard,
        };
        // SAFETY: setrlimit with a valid struct.
        check(unsafe { libc::setrlimit(*res as _, &lim) }, || {
            format!("setrlimit {res}")
        })?;
    }
    let cwd = if p.cwd.is_empty() {
        "/"
    } else {
        p.cwd.as_str()
    };
    let _ = std::fs::create_dir_all(cwd);
    // SAFETY: credential and prctl syscalls in a single-threaded process.
    unsafe {
        check(libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0), || {
            "keep capabilities".into()
        })?;
        check(libc::setgroups(groups.len(), groups.as_ptr()), || {
            "setgroups".into()
        })?;
        check(libc::setresgid(gid, gid, gid), || format!("setgid {gid}"))?;
        check(libc::setresuid(uid, uid, uid), || format!("setuid {uid}"))?;
    }
    // effective = permitted again (setuid cleared it for non-root users)
    let mut cur = capget()?;
    for d in &mut cur {
        d.effective = d.permitted;
    }
    capset(cur)?;
    let keep: Vec<u32> = p
        .capabilities
        .iter()
        .copied()
        .filter(|c| {
            let (i, bit) = ((*c / 32) as usize, 1u32 << (c % 32));
            cur[i].permitted & bit != 0
        })
        .collect();
    if p.no_new_privs {
        // SAFETY: prctl without pointers.
        check(
            unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) },
            || "no_new_privs".into(),
        )?;
    }
    // a Localhost profile is compiled while every system call is allowed; with no_new_privs it
    // is loaded right before execve (as runc does, so that the profile need not allow the
    // setup's own calls), without it now, while CAP_SYS_ADMIN is still effective
    let mut late_filter = None;
    match &p.seccomp {
        Seccomp::RuntimeDefault => seccomp::install(&seccomp::runtime_default(&keep))?,
        Seccomp::Localhost(profile) => {
            let filter = profile.compile(&keep)?;
            if p.no_new_privs {
                late_filter = Some(filter);
            } else {
                filter.load()?;
            }
        }
        Seccomp::Unconfined => {}
    }
    let last_cap: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40);
    for c in 0..=last_cap {
        if !keep.contains(&c) {
            // SAFETY: prctl without pointers; dropping an absent capability fails harmlessly.
            unsafe { libc::prctl(libc::PR_CAPBSET_DROP, c as libc::c_ulong, 0, 0, 0) };
        }
    }
    let mut set = [CapData::default(); 2];
    for c in &keep {
        let (i, bit) = ((*c / 32) as usize, 1u32 << (c % 32));
        set[i].effective |= bit;
        set[i].permitted |= bit;
        set[i].inheritable |= bit;
    }
    capset(set)?;
    for c in p.ambient.iter().filter(|c| keep.contains(c)) {
        // SAFETY: prctl without pointers.
        check(
            unsafe {
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE,
                    *c as libc::c_ulong,
                    0,
                    0,
                )
            },
            || {
                format!(
                    "ambient capability {}",
                    caps::NAMES.get(*c as usize).unwrap_or(&"?")
                )
            },
        )?;
    }
    // SAFETY: prctl without pointers.
    unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) };
    let cwd_c = cstr(cwd);
    // SAFETY: chdir to a C string path.
    check(unsafe { libc::chdir(cwd_c.as_ptr()) }, || {
        format!("chdir {cwd}")
    })?;
    exec(&p.args, &p.env, late_filter)
}

fn exec(
    args: &[String],
    env: &[String],
    filter: Option<super::seccomp_profile::Filter>,
) -> R<std::convert::Infallible> {
    let prog = args
        .first()
        .ok_or("no command: the image has no Entrypoint or Cmd and the config none")?;
    let path = if prog.contains('/') {
        PathBuf::from(prog)
    } else {
        let search = env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        search
            .split(':')
            .map(|d| Path::new(d).join(prog))
            .find(|p| {
                use std::os::unix::fs::PermissionsExt;
                std::fs::metadata(p)
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
            .ok_or_else(|| format!("executable {prog:?} not found in $PATH ({search})"))?
    };
    let argv: Vec<CString> = args
        .iter()
        .map(|a| CString::new(a.as_bytes()).unwrap_or_default())
        .collect();
    let envp: Vec<CString> = env
        .iter()
        .map(|a| CString::new(a.as_bytes()).unwrap_or_default())
        .collect();
    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|c| c.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut envp_p: Vec<*const libc::c_char> = envp.iter().map(|c| c.as_ptr()).collect();
    envp_p.push(std::ptr::null());
    let path_c = cstr(&path);
    if let Some(f) = filter {
        f.load()?;
    }
    // SAFETY: null-terminated arrays of valid C strings.
    unsafe { libc::execve(path_c.as_ptr(), argv_p.as_ptr(), envp_p.as_ptr()) };
    Err(format!("exec {}: {}", path.display(), errno()))
}

// ---------------------------------------------------------------------------------------------
// exec: join a running container

fn run_exec(spec_file: Option<PathBuf>) -> R<i32> {
    // the spec holds the container's environment: not for `ps` to show, so on stdin or in a
    // root-only file
    let mut json = Vec::new();
    if let Some(f) = &spec_file {
        json = std::fs::read(f).map_err(|e| format!("read exec spec {}: {e}", f.display()))?;
        let _ = std::fs::remove_file(f);
    } else {
        std::io::stdin()
            .read_to_end(&mut json)
            .map_err(|e| format!("read exec spec: {e}"))?;
        null_stdio(true);
    }
    let spec: ExecSpec = serde_json::from_slice(&json).map_err(|e| format!("exec spec: {e}"))?;
    let mut fds = Vec::new();
    for (kind, flag) in [
        ("ipc", libc::CLONE_NEWIPC),
        ("uts", libc::CLONE_NEWUTS),
        ("net", libc::CLONE_NEWNET),
        ("pid", libc::CLONE_NEWPID),
        ("mnt", libc::CLONE_NEWNS),
    ] {
        let p = format!("/proc/{}/ns/{kind}", spec.pid);
        let f = File::open(&p).map_err(|e| format!("the container process is gone ({p}: {e})"))?;
        fds.push((f, flag, kind));
    }
    // the namespace files are open: if the pid still names the container, they are its own
    if start_ticks(spec.pid) != spec.start_ticks {
        return Err(format!("the container process {} is gone", spec.pid));
    }
    join_cgroups(&spec.cgroup_procs)?;
    for (f, flag, kind) in &fds {
        // SAFETY: setns on namespace files we opened.
        check(unsafe { libc::setns(f.as_raw_fd(), *flag) }, || {
            format!("setns {kind}")
        })?;
    }
    drop(fds);
    // a TTY: a pty of the container's own devpts; the master goes back to the runtime over
    // stdin (a unix socket), the slave becomes the process's stdio
    let slave = if spec.tty {
        let (master, slave) = container_pty()?;
        let sent = send_fd(0, master);
        close(master);
        sent?;
        Some(slave)
    } else {
        None
    };
    let child = fork()?;
    if child == 0 {
        // SAFETY: die with the exec init (the runtime kills it on timeout).
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
        if let Some(slave) = slave {
            // SAFETY: a new session whose controlling terminal is the pty slave.
            unsafe {
                libc::setsid();
                for fd in 0..3 {
                    libc::dup2(slave, fd);
                }
                libc::ioctl(0, libc::TIOCSCTTY, 0);
            }
            close(slave);
        }
        let e = apply_process(&spec.process).unwrap_err();
        eprintln!("nodekit-init: {e}");
        // SAFETY: leaving the forked child.
        unsafe { libc::_exit(127) };
    }
    if let Some(slave) = slave {
        close(slave);
    }
    let mut st = 0;
    // SAFETY: waiting for our child.
    check(unsafe { libc::waitpid(child, &mut st, 0) }, || {
        "wait".into()
    })?;
    Ok(wait_status_code(st).0)
}

/// A pty of the devpts mounted at the current `/dev/pts` (the container's): master, slave.
fn container_pty() -> R<(RawFd, RawFd)> {
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: opening the container's ptmx and its peer; the descriptors are ours.
    unsafe {
        let master = libc::open(c"/dev/ptmx".as_ptr(), flags);
        check(master, || "open the container's /dev/ptmx".into())?;
        if libc::unlockpt(master) != 0 {
            let e = format!("unlockpt: {}", errno());
            close(master);
            return Err(e);
        }
        let slave = libc::ioctl(master, libc::TIOCGPTPEER, flags);
        if slave < 0 {
            let e = format!("open the pty slave: {}", errno());
            close(master);
            return Err(e);
        }
        Ok((master, slave))
    }
}

/// Run `f` with a msghdr over one byte of data and room for one descriptor.
fn with_fd_msg<T>(f: impl FnOnce(&mut libc::msghdr) -> T) -> T {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: CMSG_SPACE is a size computation; the msghdr points at live buffers.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    let mut cbuf = vec![0u8; space];
    // SAFETY: msghdr is plain data; zero is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    f(&mut msg)
}

/// Send `fd` over the unix socket `sock` (SCM_RIGHTS).
fn send_fd(sock: RawFd, fd: RawFd) -> R<()> {
    with_fd_msg(|msg| {
        // SAFETY: the control buffer has room for one descriptor (with_fd_msg).
        unsafe {
            let c = libc::CMSG_FIRSTHDR(msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>(), fd);
            check(libc::sendmsg(sock, msg, 0) as libc::c_int, || {
                "send the pty to the runtime".into()
            })
        }
    })
}

/// Receive one descriptor that [`send_fd`] sent (close-on-exec), waiting at most 30 s.
pub(super) fn recv_fd(sock: &std::os::unix::net::UnixStream) -> std::io::Result<OwnedFd> {
    sock.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    with_fd_msg(|msg| {
        // SAFETY: recvmsg into the buffers of with_fd_msg; the descriptor read from the
        // control message is new and ours.
        unsafe {
            let n = libc::recvmsg(sock.as_raw_fd(), msg, libc::MSG_CMSG_CLOEXEC);
            if n < 0 {
                return Err(errno());
            }
            let c = libc::CMSG_FIRSTHDR(msg);
            if n == 0 || c.is_null() || (*c).cmsg_type != libc::SCM_RIGHTS {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the init sent no terminal",
                ));
            }
            let fd = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<RawFd>());
            Ok(OwnedFd::from_raw_fd(fd))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secure_join_stays_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("a/abs")).unwrap();
        std::os::unix::fs::symlink("../../..", root.join("a/b/up")).unwrap();
        assert_eq!(secure_join(root, "/a/b/c"), root.join("a/b/c"));
        assert_eq!(secure_join(root, "/../../x"), root.join("x"));
        assert_eq!(secure_join(root, "/a/abs/hosts"), root.join("etc/hosts"));
        assert_eq!(secure_join(root, "/a/b/up/etc"), root.join("etc"));
    }
}
