//! Container lifecycle events of the native runtime (the CRI's `GetContainerEvents`, which the
//! kubelet's evented PLEG follows): `CONTAINER_CREATED`, `STARTED`, `STOPPED` and `DELETED`
//! for containers, and `STARTED`, `STOPPED`, `DELETED` for sandboxes (the sandbox id as the
//! container id, as containerd sends them), each carrying the pod sandbox's status and the
//! statuses of every container in it.
//!
//! - The runtime's own calls send their events as they finish (create, start, remove; sandbox
//!   run, stop, remove).
//! - Exits come from the container monitors, which outlive the runtime and record an exit by
//!   renaming `<id>.exit.json` into the state directory: a watcher thread (inotify on that
//!   directory; a 100 ms scan where inotify is unavailable) turns each new exit record into a
//!   `CONTAINER_STOPPED_EVENT`. The watcher starts with the first subscription.
//! - An exit is reported once: a marker file (`<id>.exit.reported`) beside the exit record says
//!   so. The first subscription of a runtime process first receives the exits nobody was told
//!   about (the containers that exited while the runtime was down or before anyone subscribed),
//!   then the live events.
//! - What dies without an exit record is found by a liveness scan of the same thread (every
//!   `LIVENESS_PERIOD`, 1 s): a running container whose monitor and process are both gone (the
//!   runtime reports it `CONTAINER_UNKNOWN`) raises its `CONTAINER_STOPPED_EVENT` (under the
//!   same exit marker), and a ready sandbox whose pause process died on its own (`NOTREADY`)
//!   the sandbox's `CONTAINER_STOPPED_EVENT` (marker `<id>.pause.reported`), as containerd
//!   sends them when the task's shim sees it exit.
//! - Every subscriber has its own bounded queue ([`super::NativeConfig::event_buffer`] events,
//!   a tokio broadcast channel): one that falls behind gets a `ResourceExhausted` error and its
//!   stream ends (it relists and subscribes again); the others are unaffected.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use node_core::{ContainerEventStream, RuntimeError, cri};
use tokio::sync::broadcast;

use super::state::{ContainerStatus, SandboxRecord, SandboxStatus};
use super::{NativeRuntime, now_ns, process_alive};

/// How often exits are looked for when inotify is unavailable.
const SCAN_PERIOD: Duration = Duration::from_millis(100);
/// How long the watcher waits for inotify before it checks whether to stop.
const WAIT: Duration = Duration::from_millis(250);
/// How soon an exit whose container is busy (locked by a CRI call) is tried again.
const RETRY: Duration = Duration::from_millis(10);
/// How often the watcher looks for container monitors and pause processes that died without
/// an exit record (the kubelet's generic relist period).
pub(super) const LIVENESS_PERIOD: Duration = Duration::from_secs(1);

/// The subscribers' channel, and the watcher once started.
pub(super) struct EventHub {
    tx: broadcast::Sender<cri::ContainerEventResponse>,
}

impl EventHub {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            tx: broadcast::channel(capacity.max(1)).0,
        }
    }

    /// Whether anyone listens (events are only built for listeners).
    fn wanted(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    fn send(&self, ev: cri::ContainerEventResponse) {
        let _ = self.tx.send(ev);
    }
}

/// Stops the exit watcher thread when dropped (within [`WAIT`]).
pub(super) struct Watcher {
    stop: Arc<AtomicBool>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// An inotify instance watching one directory for files moved or written into it.
struct Inotify {
    fd: OwnedFd,
}

/// What one wait on the watched directory found.
struct Found {
    /// File names created there.
    names: Vec<String>,
    /// The kernel's queue overflowed: anything may have happened.
    overflow: bool,
}

impl Inotify {
    fn watch(dir: &Path) -> std::io::Result<Self> {
        // SAFETY: plain syscalls; the fd is owned right away.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a new fd of ours.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
            .map_err(std::io::Error::other)?;
        // SAFETY: a valid fd and NUL-terminated path.
        let wd = unsafe {
            libc::inotify_add_watch(
                fd.as_raw_fd(),
                path.as_ptr(),
                libc::IN_MOVED_TO | libc::IN_CLOSE_WRITE,
            )
        };
        if wd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self { fd })
    }

    /// Wait up to `timeout` for files to appear.
    fn wait(&self, timeout: Duration) -> Found {
        let mut found = Found {
            names: Vec::new(),
            overflow: false,
        };
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
        if n <= 0 {
            return found;
        }
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: reading into a buffer we own, of its length.
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                )
            };
            if n <= 0 {
                break;
            }
            let data = &buf[..n as usize];
            let head = std::mem::size_of::<libc::inotify_event>();
            let mut off = 0;
            while off + head <= data.len() {
                // SAFETY: the kernel wrote whole events; read_unaligned copes with alignment.
                let ev: libc::inotify_event = unsafe {
                    std::ptr::read_unaligned(data[off..].as_ptr() as *const libc::inotify_event)
                };
                let name = &data[off + head..(off + head + ev.len as usize).min(data.len())];
                if ev.mask & libc::IN_Q_OVERFLOW != 0 {
                    found.overflow = true;
                }
                let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
                if end > 0 {
                    found
                        .names
                        .push(String::from_utf8_lossy(&name[..end]).into_owned());
                }
                off += head + ev.len as usize;
            }
        }
        found
    }
}

/// The container id of an exit record's file name.
fn exit_file_id(name: &str) -> Option<&str> {
    name.strip_suffix(".exit.json")
}

/// Whether a subscription gave up: what `get_container_events` did.
enum Reported {
    /// Sent (or nothing to send: unknown, not exited, or reported already).
    Done,
    /// The container is busy with a CRI call: try again shortly.
    Busy,
}

impl NativeRuntime {
    /// The event of `kind` about `container_id` in sandbox `sandbox`: the sandbox's status and
    /// its containers' statuses as they are now.
    fn event(
        &self,
        container_id: &str,
        sandbox: Option<&SandboxRecord>,
        kind: cri::ContainerEventType,
    ) -> cri::ContainerEventResponse {
        let containers_statuses = sandbox
            .map(|sb| {
                self.store
                    .containers()
                    .into_iter()
                    .filter(|c| c.sandbox_id == sb.id)
                    .filter_map(|c| self.status_of(&c.id, false).ok()?.status)
                    .collect()
            })
            .unwrap_or_default();
        cri::ContainerEventResponse {
            container_id: container_id.to_string(),
            container_event_type: kind as i32,
            created_at: now_ns(),
            pod_sandbox_status: sandbox.map(|sb| self.to_status(sb)),
            containers_statuses,
        }
    }

    /// Send a container's event to the subscribers (when there are any).
    pub(super) fn emit_container(&self, id: &str, sandbox_id: &str, kind: cri::ContainerEventType) {
        if !self.shared.events.wanted() {
            return;
        }
        let sb = self.store.sandbox(sandbox_id).ok().flatten();
        self.shared.events.send(self.event(id, sb.as_ref(), kind));
    }

    /// Send a sandbox's event (its id as the container id) to the subscribers.
    pub(super) fn emit_sandbox(&self, rec: &SandboxRecord, kind: cri::ContainerEventType) {
        if !self.shared.events.wanted() {
            return;
        }
        self.shared
            .events
            .send(self.event(&rec.id, Some(rec), kind));
    }

    /// The `CONTAINER_STOPPED_EVENT` of container `id` when it has an exit record nobody was
    /// told about (and marks it told); `Busy` when a CRI call holds the container.
    fn take_exit(&self, id: &str) -> (Reported, Option<cri::ContainerEventResponse>) {
        // no lock entry for a container that is gone (it would never be forgotten)
        if !matches!(self.store.container(id), Ok(Some(_))) {
            return (Reported::Done, None);
        }
        let lock = self.lock_for(id);
        // a start or stop in progress finishes first (its record and events come first)
        let Ok(_g) = lock.try_lock() else {
            return (Reported::Busy, None);
        };
        let Ok(Some(rec)) = self.store.container(id) else {
            return (Reported::Done, None);
        };
        if self.store.exit_record(id).is_none() {
            return (Reported::Done, None);
        }
        // the marker is made once: whoever makes it reports the exit
        let marker = self.store.exit_reported_file(id);
        if std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&marker)
            .is_err()
        {
            return (Reported::Done, None);
        }
        let sb = self.store.sandbox(&rec.sandbox_id).ok().flatten();
        let ev = self.event(
            id,
            sb.as_ref(),
            cri::ContainerEventType::ContainerStoppedEvent,
        );
        (Reported::Done, Some(ev))
    }

    /// The `CONTAINER_STOPPED_EVENT`s of what died without an exit record since the last
    /// look: running containers whose monitor and process are gone, ready sandboxes whose
    /// pause process is gone. Each is reported once (a marker); a container busy with a CRI
    /// call is looked at next time.
    fn take_lost(&self) -> Vec<cri::ContainerEventResponse> {
        let told = |marker: std::path::PathBuf| {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(marker)
                .is_err()
        };
        let mut out = Vec::new();
        for rec in self.store.containers() {
            if rec.status != ContainerStatus::Running
                || self.store.exit_reported_file(&rec.id).exists()
                || self.observe(&rec).0 != cri::ContainerState::ContainerUnknown
            {
                continue;
            }
            let lock = self.lock_for(&rec.id);
            let Ok(_g) = lock.try_lock() else { continue };
            // again under the lock: a stop may just have recorded the exit
            let Ok(Some(rec)) = self.store.container(&rec.id) else {
                continue;
            };
            if self.observe(&rec).0 != cri::ContainerState::ContainerUnknown
                || told(self.store.exit_reported_file(&rec.id))
            {
                continue;
            }
            tracing::warn!(container = %rec.id, "the container's monitor died without recording an exit");
            let sb = self.store.sandbox(&rec.sandbox_id).ok().flatten();
            out.push(self.event(
                &rec.id,
                sb.as_ref(),
                cri::ContainerEventType::ContainerStoppedEvent,
            ));
        }
        for sb in self.store.sandboxes() {
            if sb.status != SandboxStatus::Ready
                || sb.pause.pid <= 0
                || process_alive(sb.pause.pid, sb.pause.start_ticks)
                || told(self.store.pause_gone_file(&sb.id))
            {
                continue;
            }
            tracing::warn!(sandbox = %sb.id, pid = sb.pause.pid, "the pod sandbox's pause process died");
            out.push(self.event(
                &sb.id,
                Some(&sb),
                cri::ContainerEventType::ContainerStoppedEvent,
            ));
        }
        out
    }

    /// Every container whose exit nobody was told about.
    fn unreported_exits(&self) -> Vec<String> {
        self.store
            .container_ids()
            .into_iter()
            .filter(|id| {
                self.store.exit_file(id).exists() && !self.store.exit_reported_file(id).exists()
            })
            .collect()
    }

    /// Subscribe to the events: the exits nobody was told about first (on the first
    /// subscription of this runtime process), then the live events.
    pub(super) async fn subscribe(&self) -> Result<ContainerEventStream, RuntimeError> {
        let rx = self.shared.events.tx.subscribe();
        let mut replay = Vec::new();
        let start = {
            let mut w = self.watcher.lock().unwrap_or_else(|e| e.into_inner());
            if w.is_none() {
                *w = Some(self.start_watcher()?);
                true
            } else {
                false
            }
        };
        if start {
            for id in self.unreported_exits() {
                loop {
                    match self.take_exit(&id) {
                        (Reported::Busy, _) => tokio::time::sleep(RETRY).await,
                        (Reported::Done, ev) => {
                            replay.extend(ev);
                            break;
                        }
                    }
                }
            }
            if !replay.is_empty() {
                tracing::info!(
                    exits = replay.len(),
                    "container events: reporting exits that happened while nobody listened"
                );
            }
        }
        let live = futures::stream::unfold(Some(rx), |rx| async move {
            let mut rx = rx?;
            match rx.recv().await {
                Ok(ev) => Some((Ok(ev), Some(rx))),
                Err(broadcast::error::RecvError::Lagged(n)) => Some((
                    Err(RuntimeError::ResourceExhausted(format!(
                        "container event subscriber fell {n} events behind; subscribe again and relist"
                    ))),
                    None,
                )),
                Err(broadcast::error::RecvError::Closed) => None,
            }
        });
        Ok(futures::stream::iter(replay.into_iter().map(Ok))
            .chain(live)
            .boxed())
    }

    /// Start the thread that turns exit records into events.
    fn start_watcher(&self) -> Result<Watcher, RuntimeError> {
        let dir = self
            .store
            .exit_file("x")
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let inotify = match Inotify::watch(&dir) {
            Ok(i) => Some(i),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "container events: no inotify; scanning for exits every 100 ms");
                None
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let rt = self.view();
        let stopping = stop.clone();
        std::thread::Builder::new()
            .name("nodekit-exits".into())
            .spawn(move || {
                let mut pending: Vec<String> = Vec::new();
                let mut looked = std::time::Instant::now();
                while !stopping.load(Ordering::Relaxed) {
                    if looked.elapsed() >= LIVENESS_PERIOD {
                        looked = std::time::Instant::now();
                        for ev in rt.take_lost() {
                            rt.shared.events.send(ev);
                        }
                    }
                    let wait = if pending.is_empty() { WAIT } else { RETRY };
                    let found = match &inotify {
                        Some(i) => i.wait(wait),
                        None => {
                            std::thread::sleep(SCAN_PERIOD.min(wait));
                            Found {
                                names: Vec::new(),
                                overflow: true,
                            }
                        }
                    };
                    pending.extend(
                        found
                            .names
                            .iter()
                            .filter_map(|n| exit_file_id(n))
                            .map(str::to_string),
                    );
                    if found.overflow {
                        pending.extend(rt.unreported_exits());
                    }
                    pending.sort();
                    pending.dedup();
                    pending.retain(|id| match rt.take_exit(id) {
                        (Reported::Busy, _) => true,
                        (Reported::Done, ev) => {
                            if let Some(ev) = ev {
                                rt.shared.events.send(ev);
                            }
                            false
                        }
                    });
                }
            })
            .map_err(|e| RuntimeError::Internal(format!("start the exit watcher thread: {e}")))?;
        Ok(Watcher { stop })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inotify_sees_files_renamed_into_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let i = Inotify::watch(dir.path()).unwrap();
        assert!(i.wait(Duration::from_millis(10)).names.is_empty());
        std::fs::write(dir.path().join("a.exit.tmp"), b"{}").unwrap();
        std::fs::rename(
            dir.path().join("a.exit.tmp"),
            dir.path().join("a.exit.json"),
        )
        .unwrap();
        let found = i.wait(Duration::from_secs(5));
        let ids: Vec<&str> = found.names.iter().filter_map(|n| exit_file_id(n)).collect();
        assert_eq!(ids, vec!["a"], "{:?}", found.names);
    }
}
