//! Interactive exec, attach and port forwarding for the native runtime: the
//! [`StreamingRuntime`] behind its [`StreamingServer`], and the CRI calls that hand out the
//! server's URLs.
//!
//! - exec re-executes the init (`nodekit-init exec <spec file>`) with the client's streams as
//!   pipes; for a TTY the init opens a pty in the container's own devpts, hands the master
//!   back over a unix socket (SCM_RIGHTS, runc's console-socket pattern) and gives the slave
//!   to the process; resizes are `TIOCSWINSZ` on the master. Dropping the call (the client hung up) kills the init, whose child dies with
//!   it (`PR_SET_PDEATHSIG`).
//! - attach writes to the container's stdin FIFO (created for `stdin: true`: without a TTY
//!   the container reads it, held open read-write by the container itself; with a TTY the
//!   monitor relays it to the terminal, and a second FIFO carries resizes) and follows the
//!   container's CRI log file from its current end. All of it lives on disk, so attach works
//!   the same after the runtime restarted; what a container printed before the attach is not
//!   replayed. With `stdin_once` the first attach with stdin is the container's only input:
//!   it has the monitor drop its own writer of the FIFO (`SIGUSR2`), so its end is the
//!   container's EOF, and removes the FIFO when it ends (later attaches get no stdin).
//! - port forwarding connects to localhost inside the pod's network namespace from a
//!   dedicated thread that joins it (`setns`), then hands the socket to tokio.

use std::io;
use std::net::{Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use node_core::{RuntimeError, cri};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinHandle;

use super::spec::{ContainerSpec, ExecSpec, ProcessSpec};
use super::state::ContainerRecord;
use super::{NativeRuntime, io_err, new_id};
use crate::streaming::{Duplex, StreamIo, StreamingRuntime, StreamingServer, TermSize, Writer};

/// How long output may keep flowing after the process exited (a background process holding
/// the pipes open does not hold the session forever).
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// An attach FIFO `name` of a container (`stdin` when it asked for stdin, `resize` when it
/// has a TTY), created when `wanted`.
pub(super) fn attach_fifo(
    dir: &Path,
    cfg: &cri::ContainerConfig,
    name: &str,
    wanted: bool,
) -> Result<Option<PathBuf>, RuntimeError> {
    if !wanted || (name == "resize" && !cfg.stdin) {
        return Ok(None);
    }
    let p = dir.join(name);
    nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(|e| io_err(&p, e.into()))?;
    Ok(Some(p))
}

/// What the init needs to run `cmd` in a running container (exec and exec_sync alike).
pub(super) fn exec_spec(
    rec: &ContainerRecord,
    spec: &ContainerSpec,
    cmd: Vec<String>,
    tty: bool,
) -> ExecSpec {
    let p = rec.process.clone().unwrap_or_default();
    ExecSpec {
        pid: p.pid,
        start_ticks: p.start_ticks,
        cgroup_procs: spec.cgroup_procs.clone(),
        process: ProcessSpec {
            args: cmd,
            ..spec.process.clone()
        },
        tty,
    }
}

/// Tasks aborted when the call is dropped.
struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// A file removed when the call ends.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn copy_then_close(mut r: impl AsyncRead + Unpin, mut w: impl AsyncWrite + Unpin) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match r.read(&mut buf).await {
            // EIO: the pty's slave side is gone (the process exited)
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if w.write_all(&buf[..n]).await.is_err() {
                    break;
                }
                let _ = w.flush().await;
            }
        }
    }
    let _ = w.shutdown().await;
}

fn set_winsize(fd: &OwnedFd, size: TermSize) {
    let ws = libc::winsize {
        ws_row: size.height,
        ws_col: size.width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ with a valid winsize on a pty master we own.
    unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
}

fn set_nonblocking_cloexec(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: flag changes on a descriptor we own.
    unsafe {
        let fl = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if fl < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
        libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC);
    }
    Ok(())
}

/// The runtime's side of the streaming server: a view of the runtime's root.
pub(super) struct NativeStreams {
    rt: NativeRuntime,
}

impl NativeRuntime {
    /// A second handle on the same root and state, sharing the per-id locks, reservations,
    /// phases and event subscribers (no sweep, no streaming server or exit watcher of its own).
    pub(super) fn view(&self) -> NativeRuntime {
        NativeRuntime {
            cfg: self.cfg.clone(),
            store: self.store.clone(),
            init: self.init.clone(),
            shared: self.shared.clone(),
            streaming: Default::default(),
            watcher: Default::default(),
        }
    }

    /// The streaming server, started on first use (on the calling tokio runtime).
    pub async fn streaming_server(&self) -> Result<&StreamingServer, RuntimeError> {
        self.streaming
            .get_or_try_init(|| async {
                let streams: Arc<dyn StreamingRuntime> =
                    Arc::new(NativeStreams { rt: self.view() });
                StreamingServer::start(self.cfg.streaming.clone(), streams)
                    .await
                    .map_err(RuntimeError::from)
            })
            .await
    }

    /// The container's record and spec when it runs.
    fn running(&self, id: &str) -> Result<(ContainerRecord, ContainerSpec), RuntimeError> {
        if id.is_empty() {
            return Err(RuntimeError::InvalidArgument(
                "container_id is required".into(),
            ));
        }
        let rec = self.record(id)?;
        if self.observe(&rec).0 != cri::ContainerState::ContainerRunning {
            return Err(RuntimeError::FailedPrecondition(format!(
                "container {id} is not running"
            )));
        }
        let spec = self.load_spec(id)?;
        Ok((rec, spec))
    }

    pub(super) async fn exec_url(
        &self,
        req: cri::ExecRequest,
    ) -> Result<cri::ExecResponse, RuntimeError> {
        self.running(&req.container_id)?;
        Ok(self.streaming_server().await?.get_exec(&req)?)
    }

    pub(super) async fn attach_url(
        &self,
        req: cri::AttachRequest,
    ) -> Result<cri::AttachResponse, RuntimeError> {
        let (_, spec) = self.running(&req.container_id)?;
        check_attach(
            &req.container_id,
            &spec,
            req.stdin,
            req.stdout || req.stderr,
        )?;
        Ok(self.streaming_server().await?.get_attach(&req)?)
    }

    pub(super) async fn port_forward_url(
        &self,
        req: cri::PortForwardRequest,
    ) -> Result<cri::PortForwardResponse, RuntimeError> {
        self.ready_sandbox(&req.pod_sandbox_id)?;
        Ok(self.streaming_server().await?.get_port_forward(&req)?)
    }

    fn ready_sandbox(&self, id: &str) -> Result<super::state::SandboxRecord, RuntimeError> {
        if id.is_empty() {
            return Err(RuntimeError::InvalidArgument(
                "pod_sandbox_id is required".into(),
            ));
        }
        let sb = self
            .store
            .sandbox(id)?
            .ok_or_else(|| RuntimeError::NotFound {
                kind: "pod sandbox",
                id: id.into(),
            })?;
        if !sb.can_create_container() {
            return Err(RuntimeError::FailedPrecondition(format!(
                "pod sandbox {id} is not ready"
            )));
        }
        Ok(sb)
    }
}

fn check_attach(
    id: &str,
    spec: &ContainerSpec,
    stdin: bool,
    output: bool,
) -> Result<(), RuntimeError> {
    if stdin && spec.stdin_fifo.is_none() {
        return Err(RuntimeError::FailedPrecondition(format!(
            "attach to container {id}: the container was not created with stdin"
        )));
    }
    if output && spec.log_path.is_none() {
        return Err(RuntimeError::FailedPrecondition(format!(
            "attach to container {id}: the container has no log file to follow (no log_directory/log_path)"
        )));
    }
    Ok(())
}

/// Follow a CRI log file from its current end, writing each entry's content to stdout or
/// stderr, until `stop` turns true and the file has no more to read.
async fn follow_log(
    path: PathBuf,
    mut stdout: Option<Writer>,
    mut stderr: Option<Writer>,
    tty: bool,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    use std::os::unix::fs::MetadataExt;
    let open = |from_end: bool| {
        let path = path.clone();
        async move {
            let mut f = tokio::fs::File::open(&path).await.ok()?;
            let ino = f.metadata().await.ok()?.ino();
            if from_end {
                f.seek(io::SeekFrom::End(0)).await.ok()?;
            }
            Some((f, ino))
        }
    };
    let mut cur = open(true).await;
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let mut got = 0;
        if let Some((f, _)) = cur.as_mut() {
            got = f.read(&mut buf).await.unwrap_or(0);
            pending.extend_from_slice(&buf[..got]);
        }
        while let Some(nl) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=nl).collect();
            let line = &line[..line.len() - 1];
            let mut it = line.splitn(4, |b| *b == b' ');
            let (_ts, stream, tag, content) = (it.next(), it.next(), it.next(), it.next());
            let content = content.unwrap_or_default();
            let w = match stream {
                Some(b"stderr") if !tty => stderr.as_mut(),
                _ => stdout.as_mut(),
            };
            if let Some(w) = w {
                let mut out = content.to_vec();
                if tag != Some(b"P") {
                    out.push(b'\n');
                }
                if w.write_all(&out).await.is_err() || w.flush().await.is_err() {
                    return;
                }
            }
        }
        if got > 0 {
            continue;
        }
        if *stop.borrow() {
            break;
        }
        // rotated (a new file at the path) or truncated: start over at its beginning
        let now = tokio::fs::metadata(&path).await.ok();
        let rotated = match (&mut cur, &now) {
            (Some((f, ino)), Some(m)) => {
                m.ino() != *ino || f.stream_position().await.unwrap_or(0) > m.len()
            }
            (None, Some(_)) => true,
            _ => false,
        };
        if rotated {
            cur = open(false).await;
            continue;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for w in [stdout.as_mut(), stderr.as_mut()].into_iter().flatten() {
        let _ = w.shutdown().await;
    }
}

/// Connect to `port` on localhost in the network namespace `netns` (`None`: ours).
async fn connect_in(netns: Option<PathBuf>, port: u16) -> io::Result<tokio::net::TcpStream> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("nodekit-portfwd".into())
        .spawn(move || {
            let r = (|| -> io::Result<std::net::TcpStream> {
                if let Some(ns) = &netns {
                    let f = std::fs::File::open(ns)?;
                    // SAFETY: setns on this dedicated thread only (it exits right after).
                    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                let mut last = None;
                for a in [
                    SocketAddr::from(([127, 0, 0, 1], port)),
                    SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
                ] {
                    match std::net::TcpStream::connect_timeout(&a, Duration::from_secs(5)) {
                        Ok(s) => return Ok(s),
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.unwrap_or_else(|| io::Error::other("no address")))
            })();
            let _ = tx.send(r);
        })?;
    let s = rx
        .await
        .map_err(|_| io::Error::other("the connecting thread died"))??;
    s.set_nonblocking(true)?;
    tokio::net::TcpStream::from_std(s)
}

#[async_trait]
impl StreamingRuntime for NativeStreams {
    async fn exec(
        &self,
        container_id: &str,
        cmd: Vec<String>,
        mut io: StreamIo,
    ) -> Result<i32, RuntimeError> {
        let rt = &self.rt;
        // the check and the spawn under the container's lock: a CRI stop or remove of the
        // same container waits for them (the lock is shared with the runtime's CRI calls)
        let lock = rt.lock_for(container_id);
        let setup = lock.lock().await;
        let (rec, spec) = rt.running(container_id)?;
        if cmd.is_empty() {
            return Err(RuntimeError::InvalidArgument(format!(
                "exec in {container_id}: cmd is empty"
            )));
        }
        let exec = exec_spec(&rec, &spec, cmd, io.tty);
        let file = rt
            .container_dir(container_id)
            .join(format!("exec-{}.json", &new_id()[..16]));
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let json =
                serde_json::to_vec(&exec).map_err(|e| RuntimeError::Internal(e.to_string()))?;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&file)
                .and_then(|mut f| f.write_all(&json))
                .map_err(|e| io_err(&file, e))?;
        }
        let _spec_file = RemoveOnDrop(file.clone());
        let mut command = tokio::process::Command::new(&rt.init);
        command.arg("exec").arg(&file).kill_on_drop(true);
        let mut tasks = Tasks(Vec::new());
        let mut outputs = Vec::new();
        let mut console = None;
        if io.tty {
            // the init sends the master of a pty in the container's devpts over this socket
            let (ours, theirs) = std::os::unix::net::UnixStream::pair()
                .map_err(|e| io_err(Path::new("socketpair"), e))?;
            command
                .stdin(Stdio::from(OwnedFd::from(theirs)))
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            console = Some(ours);
        } else {
            let piped = |on: bool| if on { Stdio::piped() } else { Stdio::null() };
            command
                .stdin(piped(io.stdin.is_some()))
                .stdout(piped(io.stdout.is_some()))
                .stderr(piped(io.stderr.is_some()));
        }
        let mut child = command.spawn().map_err(|e| io_err(&rt.init, e))?;
        drop(setup);
        // our copy of the init's end of the socket goes with the command
        drop(command);
        let mut master = None;
        if let Some(sock) = console {
            let received = tokio::task::spawn_blocking(move || super::init::recv_fd(&sock))
                .await
                .map_err(|e| RuntimeError::Internal(e.to_string()))?;
            match received {
                Ok(fd) => master = Some(fd),
                Err(e) => {
                    // the init failed before it had a terminal: its own words are on stderr
                    let mut why = String::new();
                    if let Some(mut err) = child.stderr.take() {
                        let _ =
                            tokio::time::timeout(OUTPUT_GRACE, err.read_to_string(&mut why)).await;
                    }
                    let _ = child.wait().await;
                    let why = why.trim().trim_start_matches("nodekit-init: ");
                    return Err(RuntimeError::Internal(format!(
                        "exec in {container_id}: {}",
                        if why.is_empty() {
                            e.to_string()
                        } else {
                            why.to_string()
                        }
                    )));
                }
            }
        }
        if let Some(master) = master {
            set_nonblocking_cloexec(&master).map_err(|e| io_err(Path::new("/dev/ptmx"), e))?;
            let dup = |m: &OwnedFd| m.try_clone().map_err(|e| io_err(Path::new("/dev/ptmx"), e));
            let rd = tokio::net::unix::pipe::Receiver::from_owned_fd_unchecked(dup(&master)?)
                .map_err(|e| io_err(Path::new("/dev/ptmx"), e))?;
            let wr = tokio::net::unix::pipe::Sender::from_owned_fd_unchecked(dup(&master)?)
                .map_err(|e| io_err(Path::new("/dev/ptmx"), e))?;
            if let Some(out) = io.stdout.take() {
                outputs.push(tokio::spawn(copy_then_close(rd, out)));
            }
            if let Some(input) = io.stdin.take() {
                tasks.0.push(tokio::spawn(copy_then_close(input, wr)));
            }
            if let Some(mut resize) = io.resize.take() {
                tasks.0.push(tokio::spawn(async move {
                    while let Some(size) = resize.recv().await {
                        set_winsize(&master, size);
                    }
                }));
            }
        } else {
            if let (Some(input), Some(w)) = (io.stdin.take(), child.stdin.take()) {
                tasks.0.push(tokio::spawn(copy_then_close(input, w)));
            }
            if let (Some(out), Some(r)) = (io.stdout.take(), child.stdout.take()) {
                outputs.push(tokio::spawn(copy_then_close(r, out)));
            }
            if let (Some(out), Some(r)) = (io.stderr.take(), child.stderr.take()) {
                outputs.push(tokio::spawn(copy_then_close(r, out)));
            }
        }
        let status = child.wait().await.map_err(|e| io_err(&rt.init, e))?;
        for o in outputs {
            let abort = o.abort_handle();
            if tokio::time::timeout(OUTPUT_GRACE, o).await.is_err() {
                abort.abort();
            }
        }
        drop(tasks);
        use std::os::unix::process::ExitStatusExt;
        Ok(status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
    }

    async fn attach(&self, container_id: &str, mut io: StreamIo) -> Result<i32, RuntimeError> {
        let rt = &self.rt;
        let lock = rt.lock_for(container_id);
        let setup = lock.lock().await;
        let (rec, spec) = rt.running(container_id)?;
        let output = io.stdout.is_some() || io.stderr.is_some();
        check_attach(container_id, &spec, io.stdin.is_some(), output)?;
        let mut tasks = Tasks(Vec::new());
        if let (Some(input), Some(fifo)) = (io.stdin.take(), spec.stdin_fifo.as_ref()) {
            let opened = tokio::net::unix::pipe::OpenOptions::new().open_sender(fifo);
            let w = match opened {
                // `stdin_once`: an earlier attach had the container's stdin (the FIFO is
                // gone, or nothing reads it any more); this one has none, as with containerd
                Err(e)
                    if spec.stdin_once
                        && matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENXIO)) =>
                {
                    None
                }
                w => Some(w.map_err(|e| io_err(fifo, e))?),
            };
            if let Some(w) = w {
                if spec.stdin_once {
                    // the container's stdin is this attach's alone: the FIFO goes now (under
                    // the setup lock), so an attach that overlaps this one gets no writer and
                    // the container sees EOF when this one ends; and the monitor lets go of
                    // its writer, so ours is the last one
                    let _ = std::fs::remove_file(fifo);
                    let p = rec.process.clone().unwrap_or_default();
                    super::signal(p.monitor_pid, p.monitor_ticks, libc::SIGUSR2);
                }
                tasks.0.push(tokio::spawn(async move {
                    // EOF from the client ends this attach's input, not the container's
                    // stdin (unless `stdin_once`)
                    let mut input = input;
                    let mut w = w;
                    let _ = tokio::io::copy(&mut input, &mut w).await;
                }));
            }
        }
        if let (Some(mut resize), Some(fifo)) = (io.resize.take(), spec.resize_fifo.as_ref()) {
            let w = tokio::net::unix::pipe::OpenOptions::new()
                .open_sender(fifo)
                .map_err(|e| io_err(fifo, e))?;
            tasks.0.push(tokio::spawn(async move {
                let mut w = w;
                while let Some(s) = resize.recv().await {
                    let line = format!("{} {}\n", s.width, s.height);
                    if w.write_all(line.as_bytes()).await.is_err() {
                        break;
                    }
                }
            }));
        }
        drop(setup);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut follower = None;
        if output && let Some(log) = spec.log_path.clone() {
            follower = Some(tokio::spawn(follow_log(
                log,
                io.stdout.take(),
                io.stderr.take(),
                spec.tty,
                stop_rx,
            )));
        }
        let exit = loop {
            if let Some(x) = rt.store.exit_record(container_id) {
                break x.exit_code;
            }
            let rec = rt.record(container_id)?;
            if rt.observe(&rec).0 != cri::ContainerState::ContainerRunning {
                break rt.observe(&rec).1.map(|x| x.exit_code).unwrap_or(0);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let _ = stop_tx.send(true);
        if let Some(f) = follower {
            let abort = f.abort_handle();
            if tokio::time::timeout(OUTPUT_GRACE, f).await.is_err() {
                abort.abort();
            }
        }
        drop(tasks);
        Ok(exit)
    }

    async fn port_forward(
        &self,
        pod_sandbox_id: &str,
        port: u16,
        mut stream: Box<dyn Duplex>,
    ) -> Result<(), RuntimeError> {
        let sb = self.rt.ready_sandbox(pod_sandbox_id)?;
        let netns = sb.ns_file("net").map(Path::to_path_buf);
        let mut tcp = connect_in(netns, port).await.map_err(|e| {
            RuntimeError::Unavailable(format!(
                "connect to port {port} in pod sandbox {pod_sandbox_id}: {e}"
            ))
        })?;
        forward(&mut stream, &mut tcp).await;
        Ok(())
    }
}

/// How long the client's direction may still run once the pod's side closed.
const FORWARD_GRACE: Duration = Duration::from_secs(1);

/// Copy both ways between a port-forward stream and the pod's connection. The client's end of
/// input is passed on as a half-close and the pod's answer still flows; the pod closing its
/// side ends the forward (after [`FORWARD_GRACE`] for what the client still sends), as with
/// containerd: a WebSocket client cannot half-close, and must see its stream end when the
/// pod's server hangs up.
async fn forward(stream: &mut Box<dyn Duplex>, tcp: &mut tokio::net::TcpStream) {
    let (mut sr, mut sw) = tokio::io::split(stream);
    let (mut tr, mut tw) = tcp.split();
    let up = async {
        let _ = tokio::io::copy(&mut sr, &mut tw).await;
        let _ = tw.shutdown().await;
    };
    let down = async {
        let _ = tokio::io::copy(&mut tr, &mut sw).await;
        let _ = sw.shutdown().await;
    };
    tokio::pin!(up, down);
    tokio::select! {
        () = &mut down => {
            let _ = tokio::time::timeout(FORWARD_GRACE, &mut up).await;
        }
        () = &mut up => down.await,
    }
}
