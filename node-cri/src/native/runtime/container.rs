//! Containers: create (spec for the init, overlay dirs, cgroup), start (the init forks the
//! monitor and the container process), stop with a grace period, remove, status, exec, stats.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use node_core::{RuntimeError, cri};

use super::cgroup::CgroupHandle;
use super::phases::PhaseTimer;
use super::seccomp_profile::SeccompProfile;
use super::spec::{
    BindMount, ContainerSpec, ExitRecord, JoinNamespace, ProcessSpec, Propagation, Seccomp,
    UserSpec,
};
use super::state::{ContainerRecord, ContainerStatus, labels_match};
use super::{
    DEFAULT_MASKED_PATHS, DEFAULT_READONLY_PATHS, NativeRuntime, caps, io_err, new_id, now_ns,
    process_alive, signal,
};

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A signal number from an image's `StopSignal` (`SIGTERM`, `TERM` or `15`).
pub fn parse_signal(s: &str) -> Option<i32> {
    let s = s.trim();
    if let Ok(n) = s.parse::<i32>() {
        return Some(n);
    }
    let name = s.to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    Some(match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "STOP" => libc::SIGSTOP,
        "CONT" => libc::SIGCONT,
        "WINCH" => libc::SIGWINCH,
        "PWR" => libc::SIGPWR,
        _ => return None,
    })
}

/// The argv of a container, as containerd builds it: the CRI command replaces the image's
/// Entrypoint, the CRI args replace its Cmd (and drop it when only a command is given).
pub fn container_args(
    command: &[String],
    args: &[String],
    entrypoint: &[String],
    cmd: &[String],
) -> Vec<String> {
    let (command, args) = if command.is_empty() {
        (
            entrypoint.to_vec(),
            if args.is_empty() {
                cmd.to_vec()
            } else {
                args.to_vec()
            },
        )
    } else {
        (command.to_vec(), args.to_vec())
    };
    command.into_iter().chain(args).collect()
}

/// The environment: `PATH` default and `HOSTNAME`, then the image's, then the CRI's (a later
/// value of a key replaces an earlier one in place).
pub fn container_env(
    hostname: &str,
    image_env: &[String],
    cri_env: &[cri::KeyValue],
) -> Vec<String> {
    let mut env: Vec<String> = vec![DEFAULT_PATH.to_string(), format!("HOSTNAME={hostname}")];
    let mut set = |kv: String| {
        let key = kv.split('=').next().unwrap_or("").to_string();
        match env
            .iter_mut()
            .find(|e| e.split('=').next() == Some(key.as_str()))
        {
            Some(slot) => *slot = kv,
            None => env.push(kv),
        }
    };
    for e in image_env {
        set(e.clone());
    }
    for kv in cri_env {
        set(format!("{}={}", kv.key, kv.value));
    }
    env
}

fn pids_limit(r: Option<&cri::LinuxContainerResources>, default: i64) -> i64 {
    r.and_then(|r| r.unified.get("pids.max"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn exit_reason(x: &ExitRecord) -> &'static str {
    if x.oom_killed {
        "OOMKilled"
    } else if x.exit_code == 0 {
        "Completed"
    } else {
        "Error"
    }
}

impl NativeRuntime {
    fn not_found(id: &str) -> RuntimeError {
        RuntimeError::NotFound {
            kind: "container",
            id: id.into(),
        }
    }

    pub(super) fn record(&self, id: &str) -> Result<ContainerRecord, RuntimeError> {
        self.store.container(id)?.ok_or_else(|| Self::not_found(id))
    }

    fn spec_path(&self, id: &str) -> PathBuf {
        self.container_dir(id).join("spec.json")
    }

    pub(super) fn load_spec(&self, id: &str) -> Result<ContainerSpec, RuntimeError> {
        let p = self.spec_path(id);
        let data = std::fs::read(&p).map_err(|e| io_err(&p, e))?;
        serde_json::from_slice(&data)
            .map_err(|e| RuntimeError::Internal(format!("{}: {e}", p.display())))
    }

    /// The state as the kubelet sees it, with the exit when there is one.
    pub(super) fn observe(
        &self,
        rec: &ContainerRecord,
    ) -> (cri::ContainerState, Option<ExitRecord>, String, String) {
        match rec.status {
            ContainerStatus::Created => (
                cri::ContainerState::ContainerCreated,
                None,
                String::new(),
                String::new(),
            ),
            ContainerStatus::Exited => (
                cri::ContainerState::ContainerExited,
                rec.exit.clone(),
                if rec.start_error.is_some() {
                    "StartError".into()
                } else {
                    rec.exit.as_ref().map(exit_reason).unwrap_or("Error").into()
                },
                rec.start_error.clone().unwrap_or_default(),
            ),
            ContainerStatus::Running => {
                if let Some(x) = self.store.exit_record(&rec.id) {
                    let reason = exit_reason(&x).to_string();
                    return (
                        cri::ContainerState::ContainerExited,
                        Some(x),
                        reason,
                        String::new(),
                    );
                }
                let p = rec.process.clone().unwrap_or_default();
                if process_alive(p.pid, p.start_ticks)
                    || process_alive(p.monitor_pid, p.monitor_ticks)
                {
                    (
                        cri::ContainerState::ContainerRunning,
                        None,
                        String::new(),
                        String::new(),
                    )
                } else {
                    (
                        cri::ContainerState::ContainerUnknown,
                        None,
                        "Unknown".into(),
                        "the container monitor exited without recording an exit".into(),
                    )
                }
            }
        }
    }

    pub(crate) async fn create(
        &self,
        req: cri::CreateContainerRequest,
    ) -> Result<String, RuntimeError> {
        let cfg = req.config.ok_or_else(|| {
            RuntimeError::InvalidArgument("CreateContainer: config is required".into())
        })?;
        let md = cfg
            .metadata
            .clone()
            .filter(|m| !m.name.is_empty())
            .ok_or_else(|| {
                RuntimeError::InvalidArgument(
                    "CreateContainer: config.metadata.name is required".into(),
                )
            })?;
        let image = cfg
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .filter(|i| !i.is_empty())
            .ok_or_else(|| {
                RuntimeError::InvalidArgument(format!(
                    "CreateContainer {}: config.image.image is required",
                    md.name
                ))
            })?;
        let sb =
            self.store
                .sandbox(&req.pod_sandbox_id)?
                .ok_or_else(|| RuntimeError::NotFound {
                    kind: "pod sandbox",
                    id: req.pod_sandbox_id.clone(),
                })?;
        if !sb.can_create_container() {
            return Err(RuntimeError::FailedPrecondition(format!(
                "pod sandbox {} is not ready",
                sb.id
            )));
        }
        let key = format!(
            "container {} (attempt {}) in sandbox {}",
            md.name, md.attempt, sb.id
        );
        let _reserved = self.reserve(key.clone(), || {
            let other = self
                .store
                .containers()
                .into_iter()
                .find(|c| c.sandbox_id == sb.id && c.config.metadata.as_ref() == Some(&md))?;
            Some(format!("{key} is reserved by {}", other.id))
        })?;
        let mut t = PhaseTimer::start();
        let img = self.cfg.images.resolve(&image)?;
        t.mark("resolve_image");
        let icfg = img.config.config().clone().unwrap_or_default();
        let id = new_id();
        let dir = self.container_dir(&id);
        let sdir = self.sandbox_dir(&sb.id);
        let linux = cfg.linux.clone().unwrap_or_default();
        let sc = linux.security_context.clone().unwrap_or_default();
        let cgroup = format!("{}/{}", sb.cgroup_parent, id);

        let result = (|| -> Result<ContainerRecord, RuntimeError> {
            for d in ["upper", "work", "rootfs"] {
                std::fs::create_dir_all(dir.join(d)).map_err(|e| io_err(&dir.join(d), e))?;
            }
            t.mark("dirs");
            let cg = CgroupHandle::create_in(&self.cfg.cgroups, &cgroup)?;
            t.mark("cgroup");
            // devices asked for: bind-mounted and allowed in the devices cgroup
            let mut device_mounts = Vec::new();
            let mut device_rules = Vec::new();
            for d in &cfg.devices {
                use std::os::unix::fs::{FileTypeExt, MetadataExt};
                let meta = std::fs::metadata(&d.host_path).map_err(|e| {
                    RuntimeError::InvalidArgument(format!(
                        "container {}: device {}: {e}",
                        md.name, d.host_path
                    ))
                })?;
                let kind = if meta.file_type().is_char_device() {
                    'c'
                } else if meta.file_type().is_block_device() {
                    'b'
                } else {
                    return Err(RuntimeError::InvalidArgument(format!(
                        "container {}: {} is not a device",
                        md.name, d.host_path
                    )));
                };
                let rdev = meta.rdev();
                let perms: String = d
                    .permissions
                    .chars()
                    .filter(|c| "rwm".contains(*c))
                    .collect();
                let perms = if perms.is_empty() {
                    "rwm".to_string()
                } else {
                    perms
                };
                device_rules.push(format!(
                    "{kind} {}:{} {perms}",
                    libc::major(rdev),
                    libc::minor(rdev)
                ));
                device_mounts.push(BindMount {
                    source: PathBuf::from(&d.host_path),
                    destination: if d.container_path.is_empty() {
                        d.host_path.clone()
                    } else {
                        d.container_path.clone()
                    },
                    readonly: !perms.contains('w'),
                    propagation: Propagation::Private,
                });
            }
            let devices_enforced = cg.restrict_devices(sc.privileged, &device_rules)?;
            let resources = linux.resources.clone().unwrap_or_default();
            cg.apply(
                &resources,
                Some(pids_limit(Some(&resources), self.cfg.pids_limit)),
            )?;
            t.mark("cgroup_limits");

            let hostname = std::fs::read_to_string(sdir.join("hostname"))
                .unwrap_or_default()
                .trim()
                .to_string();
            let args = container_args(
                &cfg.command,
                &cfg.args,
                icfg.entrypoint().as_deref().unwrap_or(&[]),
                icfg.cmd().as_deref().unwrap_or(&[]),
            );
            if args.is_empty() {
                return Err(RuntimeError::InvalidArgument(format!(
                    "container {}: no command (the image has no Entrypoint or Cmd)",
                    md.name
                )));
            }
            let env = container_env(&hostname, icfg.env().as_deref().unwrap_or(&[]), &cfg.envs);
            let cwd = if !cfg.working_dir.is_empty() {
                cfg.working_dir.clone()
            } else {
                icfg.working_dir()
                    .clone()
                    .filter(|w| !w.is_empty())
                    .unwrap_or_else(|| "/".into())
            };
            let mut user = UserSpec {
                uid: sc.run_as_user.as_ref().map(|v| v.value as u32),
                gid: sc.run_as_group.as_ref().map(|v| v.value as u32),
                username: (!sc.run_as_username.is_empty()).then(|| sc.run_as_username.clone()),
                groupname: None,
                additional_gids: sc.supplemental_groups.iter().map(|g| *g as u32).collect(),
            };
            if user.uid.is_none()
                && user.username.is_none()
                && let Some(u) = icfg.user().as_deref().filter(|u| !u.is_empty())
            {
                let (name, group) = u
                    .split_once(':')
                    .map(|(a, b)| (a, Some(b)))
                    .unwrap_or((u, None));
                user.username = Some(name.to_string());
                if user.gid.is_none() {
                    user.groupname = group.map(str::to_string);
                }
            }
            let capability = sc.capabilities.clone().unwrap_or_default();
            let capset = caps::compute(
                sc.privileged,
                &capability.add_capabilities,
                &capability.drop_capabilities,
            )
            .map_err(RuntimeError::InvalidArgument)?;
            // without a devices cgroup (v2), mknod would reach any host device: keep it only
            // when asked for explicitly
            let explicit_mknod = capability
                .add_capabilities
                .iter()
                .any(|c| caps::number(c) == caps::number("MKNOD"));
            let capset: std::collections::BTreeSet<u32> = capset
                .into_iter()
                .filter(|c| {
                    devices_enforced
                        || sc.privileged
                        || explicit_mknod
                        || Some(*c) != caps::number("MKNOD")
                })
                .collect();
            let ambient: Vec<u32> = capability
                .add_ambient_capabilities
                .iter()
                .map(|n| {
                    caps::number(n).ok_or_else(|| {
                        RuntimeError::InvalidArgument(format!("unknown ambient capability {n:?}"))
                    })
                })
                .collect::<Result<_, _>>()?;
            let seccomp = match sc
                .seccomp
                .as_ref()
                .map(|p| cri::security_profile::ProfileType::try_from(p.profile_type))
            {
                _ if sc.privileged => Seccomp::Unconfined,
                None | Some(Ok(cri::security_profile::ProfileType::Unconfined)) => {
                    Seccomp::Unconfined
                }
                Some(Ok(cri::security_profile::ProfileType::RuntimeDefault)) => {
                    Seccomp::RuntimeDefault
                }
                Some(Ok(cri::security_profile::ProfileType::Localhost)) => {
                    let path = sc
                        .seccomp
                        .as_ref()
                        .map(|p| p.localhost_ref.as_str())
                        .unwrap_or_default();
                    let profile = SeccompProfile::load(Path::new(path)).map_err(|e| {
                        RuntimeError::InvalidArgument(format!("container {}: {e}", md.name))
                    })?;
                    Seccomp::Localhost(Box::new(profile))
                }
                Some(Err(_)) => {
                    return Err(RuntimeError::InvalidArgument(format!(
                        "container {}: unknown seccomp profile type {}",
                        md.name,
                        sc.seccomp.as_ref().map_or(0, |p| p.profile_type)
                    )));
                }
            };
            let mut join: Vec<JoinNamespace> = ["net", "ipc", "uts"]
                .iter()
                .filter_map(|k| {
                    sb.ns_file(k).map(|p| JoinNamespace {
                        kind: k.to_string(),
                        path: p.to_path_buf(),
                    })
                })
                .collect();
            let pid_mode = sc
                .namespace_options
                .as_ref()
                .map(|o| o.pid)
                .and_then(|m| cri::NamespaceMode::try_from(m).ok())
                .unwrap_or(cri::NamespaceMode::Container);
            let new_pid = match pid_mode {
                cri::NamespaceMode::Pod => {
                    let p = sb.ns_file("pid").ok_or_else(|| {
                        RuntimeError::FailedPrecondition(format!(
                            "pod sandbox {} has no pid namespace",
                            sb.id
                        ))
                    })?;
                    join.push(JoinNamespace {
                        kind: "pid".into(),
                        path: p.to_path_buf(),
                    });
                    false
                }
                cri::NamespaceMode::Node => false,
                _ => true,
            };
            let mut mounts: Vec<BindMount> = cfg
                .mounts
                .iter()
                .map(|m| BindMount {
                    source: PathBuf::from(&m.host_path),
                    destination: m.container_path.clone(),
                    readonly: m.readonly,
                    propagation: match cri::MountPropagation::try_from(m.propagation) {
                        Ok(cri::MountPropagation::PropagationHostToContainer) => {
                            Propagation::HostToContainer
                        }
                        Ok(cri::MountPropagation::PropagationBidirectional) => {
                            Propagation::Bidirectional
                        }
                        _ => Propagation::Private,
                    },
                })
                .collect();
            mounts.extend(device_mounts);
            for f in ["hostname", "hosts", "resolv.conf"] {
                let dest = format!("/etc/{f}");
                if !mounts
                    .iter()
                    .any(|m| Path::new(&m.destination) == Path::new(&dest))
                {
                    mounts.push(BindMount {
                        source: sdir.join(f),
                        destination: dest,
                        readonly: sc.readonly_rootfs,
                        propagation: Propagation::Private,
                    });
                }
            }
            let or_default = |given: &[String], def: &[&str]| {
                if given.is_empty() {
                    def.iter().map(|s| s.to_string()).collect()
                } else {
                    given.to_vec()
                }
            };
            let log_dir = &sb.config.log_directory;
            let log_path = if !log_dir.is_empty() && !cfg.log_path.is_empty() {
                Path::new(log_dir).join(&cfg.log_path)
            } else {
                PathBuf::new()
            };
            let spec = ContainerSpec {
                id: id.clone(),
                layers: img.layer_dirs.clone(),
                upper: dir.join("upper"),
                work: dir.join("work"),
                rootfs: dir.join("rootfs"),
                join,
                new_pid,
                cgroup_procs: cg.procs_files(),
                oom_file: cg.oom_file(),
                mounts,
                masked_paths: or_default(&sc.masked_paths, DEFAULT_MASKED_PATHS),
                readonly_paths: or_default(&sc.readonly_paths, DEFAULT_READONLY_PATHS),
                readonly_rootfs: sc.readonly_rootfs,
                privileged: sc.privileged,
                sysctls: sb
                    .config
                    .linux
                    .as_ref()
                    .map(|l| {
                        l.sysctls
                            .iter()
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect()
                    })
                    .unwrap_or_default(),
                process: ProcessSpec {
                    args,
                    env,
                    cwd,
                    user,
                    capabilities: capset.into_iter().collect(),
                    ambient,
                    no_new_privs: sc.no_new_privs,
                    seccomp,
                    rlimits: self.cfg.rlimits.clone(),
                },
                tty: cfg.tty,
                oom_score_adj: (resources.oom_score_adj != 0).then_some(resources.oom_score_adj),
                shm: sb.shm.clone().or_else(|| {
                    sb.ns_file("ipc")
                        .is_none()
                        .then(|| PathBuf::from("/dev/shm"))
                }),
                log_path: (!log_path.as_os_str().is_empty()).then(|| log_path.clone()),
                max_log_line: self.cfg.max_log_line_size,
                exit_file: self.store.exit_file(&id),
                started_file: Some(self.store.started_file(&id)),
                stdin_fifo: super::stream::attach_fifo(&dir, &cfg, "stdin", cfg.stdin)?,
                resize_fifo: super::stream::attach_fifo(&dir, &cfg, "resize", cfg.tty)?,
                stdin_once: cfg.stdin && cfg.stdin_once,
            };
            let p = dir.join("spec.json");
            std::fs::write(
                &p,
                serde_json::to_vec_pretty(&spec)
                    .map_err(|e| RuntimeError::Internal(e.to_string()))?,
            )
            .map_err(|e| io_err(&p, e))?;
            t.mark("spec");
            let rec = ContainerRecord {
                id: id.clone(),
                sandbox_id: sb.id.clone(),
                config: cfg.clone(),
                image_id: img.id.clone(),
                status: ContainerStatus::Created,
                created_at: now_ns(),
                started_at: 0,
                process: None,
                exit: None,
                start_error: None,
                stop_signal: icfg
                    .stop_signal()
                    .as_deref()
                    .and_then(parse_signal)
                    .unwrap_or(libc::SIGTERM),
                cgroup: cgroup.clone(),
                log_path,
                resources: Some(resources),
            };
            self.store.save_container(&rec)?;
            t.mark("save");
            Ok(rec)
        })();
        match result {
            Ok(rec) => {
                self.shared.phases.record(&rec.id, "create", t);
                self.emit_container(
                    &rec.id,
                    &rec.sandbox_id,
                    cri::ContainerEventType::ContainerCreatedEvent,
                );
                Ok(rec.id)
            }
            Err(e) => {
                let _ = CgroupHandle::open_in(&self.cfg.cgroups, &cgroup).destroy();
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    pub(crate) async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        let lock = self.lock_for(id);
        let _g = lock.lock().await;
        let mut rec = self.record(id)?;
        if !rec.status.can_start() {
            return Err(RuntimeError::FailedPrecondition(format!(
                "container {id} is {:?}, not created",
                rec.status
            )));
        }
        let spec = self.spec_path(id);
        let mut t = PhaseTimer::start();
        let started = self.run_monitor(&spec).await;
        t.mark("init");
        match started {
            Ok(mut started) => {
                for (name, us) in std::mem::take(&mut started.phases) {
                    t.add(format!("init.{name}"), Duration::from_micros(us));
                }
                rec.started_at = if started.started_at > 0 {
                    started.started_at
                } else {
                    now_ns()
                };
                rec.process = Some(started);
                rec.status = ContainerStatus::Running;
                self.store.save_container(&rec)?;
                t.mark("save");
                self.shared.phases.record(id, "start", t);
                self.emit_container(
                    id,
                    &rec.sandbox_id,
                    cri::ContainerEventType::ContainerStartedEvent,
                );
                Ok(())
            }
            Err(e) => {
                rec.status = ContainerStatus::Exited;
                rec.exit = Some(ExitRecord {
                    exit_code: 128,
                    signal: None,
                    finished_at: now_ns(),
                    oom_killed: false,
                });
                rec.start_error = Some(e.to_string());
                self.store.save_container(&rec)?;
                self.emit_container(
                    id,
                    &rec.sandbox_id,
                    cri::ContainerEventType::ContainerStoppedEvent,
                );
                Err(RuntimeError::Internal(format!("start container {id}: {e}")))
            }
        }
    }

    async fn wait_exit(&self, id: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.store.exit_record(id).is_some() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    pub(crate) async fn stop(&self, id: &str, timeout: Duration) -> Result<(), RuntimeError> {
        let lock = self.lock_for(id);
        let _g = lock.lock().await;
        let rec = self.record(id)?;
        let (state, _, _, _) = self.observe(&rec);
        if state != cri::ContainerState::ContainerRunning {
            return Ok(());
        }
        let p = rec.process.clone().unwrap_or_default();
        if !timeout.is_zero()
            && signal(p.pid, p.start_ticks, rec.stop_signal)
            && self.wait_exit(id, timeout).await
        {
            return Ok(());
        }
        signal(p.pid, p.start_ticks, libc::SIGKILL);
        let cg = CgroupHandle::open_in(&self.cfg.cgroups, &rec.cgroup);
        for pid in cg.pids() {
            // SAFETY: kill with a pid read from the container's own cgroup.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if self.wait_exit(id, self.cfg.kill_wait).await {
            return Ok(());
        }
        if process_alive(p.monitor_pid, p.monitor_ticks) {
            return Err(RuntimeError::Internal(format!(
                "container {id} did not exit after SIGKILL within {:?}",
                self.cfg.kill_wait
            )));
        }
        // the monitor is gone: record the kill ourselves
        let x = ExitRecord {
            exit_code: 137,
            signal: Some(libc::SIGKILL),
            finished_at: now_ns(),
            oom_killed: false,
        };
        let f = self.store.exit_file(id);
        std::fs::write(&f, serde_json::to_vec(&x).unwrap_or_default()).map_err(|e| io_err(&f, e))
    }

    pub(crate) async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let Some(rec) = self.store.container(id)? else {
            return Ok(());
        };
        self.stop(id, Duration::ZERO).await?;
        let lock = self.lock_for(id);
        let _g = lock.lock().await;
        CgroupHandle::open_in(&self.cfg.cgroups, &rec.cgroup).destroy()?;
        let dir = self.container_dir(id);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_err(&dir, e)),
            _ => {}
        }
        self.store.remove_container(id)?;
        self.shared.phases.forget(id);
        drop(_g);
        self.forget_lock(id);
        self.emit_container(
            id,
            &rec.sandbox_id,
            cri::ContainerEventType::ContainerDeletedEvent,
        );
        Ok(())
    }

    pub(crate) fn status_of(
        &self,
        id: &str,
        verbose: bool,
    ) -> Result<cri::ContainerStatusResponse, RuntimeError> {
        let rec = self.record(id)?;
        let (state, exit, reason, message) = self.observe(&rec);
        let mut info = std::collections::HashMap::new();
        if verbose {
            let p = rec.process.clone().unwrap_or_default();
            info.insert("info".into(), serde_json::json!({"pid": p.pid, "monitorPid": p.monitor_pid, "cgroup": rec.cgroup, "sandboxID": rec.sandbox_id, "phases": self.shared.phases.json(id)}).to_string());
        }
        Ok(cri::ContainerStatusResponse {
            status: Some(cri::ContainerStatus {
                id: rec.id.clone(),
                metadata: rec.config.metadata.clone(),
                state: state as i32,
                created_at: rec.created_at,
                started_at: rec.started_at,
                finished_at: exit.as_ref().map(|x| x.finished_at).unwrap_or(0),
                exit_code: exit.as_ref().map(|x| x.exit_code).unwrap_or(0),
                image: rec.config.image.clone(),
                image_ref: rec.image_id.clone(),
                reason,
                message,
                labels: rec.config.labels.clone(),
                annotations: rec.config.annotations.clone(),
                mounts: rec.config.mounts.clone(),
                log_path: rec.log_path.display().to_string(),
                resources: rec.resources.clone().map(|r| cri::ContainerResources {
                    linux: Some(r),
                    windows: None,
                }),
                image_id: rec.image_id.clone(),
                user: None,
            }),
            info,
        })
    }

    pub(crate) fn list(&self, filter: Option<cri::ContainerFilter>) -> Vec<cri::Container> {
        let f = filter.unwrap_or_default();
        let mut v: Vec<cri::Container> = self
            .store
            .containers()
            .into_iter()
            .filter(|r| f.id.is_empty() || r.id == f.id)
            .filter(|r| f.pod_sandbox_id.is_empty() || r.sandbox_id == f.pod_sandbox_id)
            .filter(|r| labels_match(&f.label_selector, &r.config.labels))
            .map(|r| {
                let (state, ..) = self.observe(&r);
                cri::Container {
                    id: r.id.clone(),
                    pod_sandbox_id: r.sandbox_id.clone(),
                    metadata: r.config.metadata.clone(),
                    image: r.config.image.clone(),
                    image_ref: r.image_id.clone(),
                    state: state as i32,
                    created_at: r.created_at,
                    labels: r.config.labels.clone(),
                    annotations: r.config.annotations.clone(),
                    image_id: r.image_id.clone(),
                }
            })
            .filter(|c| f.state.as_ref().is_none_or(|s| s.state == c.state))
            .collect();
        v.sort_by_key(|c| c.created_at);
        v
    }

    pub(crate) async fn exec_in(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: Duration,
    ) -> Result<cri::ExecSyncResponse, RuntimeError> {
        if cmd.is_empty() {
            return Err(RuntimeError::InvalidArgument(format!(
                "ExecSync in {id}: cmd is empty"
            )));
        }
        let rec = self.record(id)?;
        let (state, ..) = self.observe(&rec);
        if state != cri::ContainerState::ContainerRunning {
            return Err(RuntimeError::FailedPrecondition(format!(
                "container {id} is not running"
            )));
        }
        let spec = self.load_spec(id)?;
        let exec = super::stream::exec_spec(&rec, &spec, cmd, false);
        let json =
            serde_json::to_string(&exec).map_err(|e| RuntimeError::Internal(e.to_string()))?;
        let mut child = tokio::process::Command::new(&self.init)
            .arg("exec")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| io_err(&self.init, e))?;
        if let Some(mut stdin) = child.stdin.take() {
            use tokio::io::AsyncWriteExt;
            stdin
                .write_all(json.as_bytes())
                .await
                .map_err(|e| io_err(&self.init, e))?;
        }
        let fut = child.wait_with_output();
        let out = if timeout.is_zero() {
            fut.await
        } else {
            tokio::time::timeout(timeout, fut)
                .await
                .map_err(|_| RuntimeError::Timeout(timeout))?
        }
        .map_err(|e| io_err(&self.init, e))?;
        use std::os::unix::process::ExitStatusExt;
        let exit_code = out
            .status
            .code()
            .unwrap_or_else(|| 128 + out.status.signal().unwrap_or(0));
        Ok(cri::ExecSyncResponse {
            stdout: out.stdout,
            stderr: out.stderr,
            exit_code,
        })
    }

    fn stats_for(&self, rec: &ContainerRecord) -> cri::ContainerStats {
        let cg = CgroupHandle::open_in(&self.cfg.cgroups, &rec.cgroup);
        let ts = now_ns();
        let u = |v: u64| Some(cri::UInt64Value { value: v });
        let mem = cg.memory_usage();
        cri::ContainerStats {
            attributes: Some(cri::ContainerAttributes {
                id: rec.id.clone(),
                metadata: rec.config.metadata.clone(),
                labels: rec.config.labels.clone(),
                annotations: rec.config.annotations.clone(),
            }),
            cpu: Some(cri::CpuUsage {
                timestamp: ts,
                usage_core_nano_seconds: cg.cpu_usage_ns().and_then(u),
                usage_nano_cores: None,
            }),
            memory: Some(cri::MemoryUsage {
                timestamp: ts,
                working_set_bytes: mem.and_then(|m| u(m.1)),
                usage_bytes: mem.and_then(|m| u(m.0)),
                ..Default::default()
            }),
            writable_layer: None,
            swap: None,
        }
    }

    pub(crate) fn stats_of(&self, id: &str) -> Result<cri::ContainerStats, RuntimeError> {
        Ok(self.stats_for(&self.record(id)?))
    }

    pub(crate) fn list_stats(
        &self,
        filter: Option<cri::ContainerStatsFilter>,
    ) -> Vec<cri::ContainerStats> {
        let f = filter.unwrap_or_default();
        self.store
            .containers()
            .iter()
            .filter(|r| f.id.is_empty() || r.id == f.id)
            .filter(|r| f.pod_sandbox_id.is_empty() || r.sandbox_id == f.pod_sandbox_id)
            .filter(|r| labels_match(&f.label_selector, &r.config.labels))
            .filter(|r| self.observe(r).0 == cri::ContainerState::ContainerRunning)
            .map(|r| self.stats_for(r))
            .collect()
    }

    pub(crate) async fn update_resources(
        &self,
        req: cri::UpdateContainerResourcesRequest,
    ) -> Result<(), RuntimeError> {
        let lock = self.lock_for(&req.container_id);
        let _g = lock.lock().await;
        let mut rec = self.record(&req.container_id)?;
        let Some(r) = req.linux else { return Ok(()) };
        CgroupHandle::open_in(&self.cfg.cgroups, &rec.cgroup)
            .apply(&r, Some(pids_limit(Some(&r), self.cfg.pids_limit)))?;
        rec.resources = Some(r);
        self.store.save_container(&rec)
    }

    pub(crate) fn reopen_log(&self, id: &str) -> Result<(), RuntimeError> {
        let rec = self.record(id)?;
        let p = rec.process.clone().unwrap_or_default();
        if self.observe(&rec).0 != cri::ContainerState::ContainerRunning
            || !signal(p.monitor_pid, p.monitor_ticks, libc::SIGUSR1)
        {
            return Err(RuntimeError::FailedPrecondition(format!(
                "container {id} is not running"
            )));
        }
        Ok(())
    }

    /// Every container id this runtime root holds.
    pub fn container_ids(&self) -> Vec<String> {
        self.store.containers().into_iter().map(|c| c.id).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn args_merge_like_containerd() {
        let (ep, cmd) = (s(&["/entry"]), s(&["serve", "--x"]));
        assert_eq!(
            container_args(&[], &[], &ep, &cmd),
            s(&["/entry", "serve", "--x"])
        );
        assert_eq!(
            container_args(&[], &s(&["run"]), &ep, &cmd),
            s(&["/entry", "run"])
        );
        assert_eq!(container_args(&s(&["sh"]), &[], &ep, &cmd), s(&["sh"]));
        assert_eq!(
            container_args(&s(&["sh"]), &s(&["-c", "x"]), &ep, &cmd),
            s(&["sh", "-c", "x"])
        );
    }

    #[test]
    fn env_overrides_in_place() {
        let env = container_env(
            "web",
            &s(&["PATH=/bin", "A=1"]),
            &[
                cri::KeyValue {
                    key: "A".into(),
                    value: "2".into(),
                },
                cri::KeyValue {
                    key: "B".into(),
                    value: "x=y".into(),
                },
            ],
        );
        assert_eq!(env, s(&["PATH=/bin", "HOSTNAME=web", "A=2", "B=x=y"]));
    }

    #[test]
    fn stop_signals_parse() {
        assert_eq!(parse_signal("SIGQUIT"), Some(libc::SIGQUIT));
        assert_eq!(parse_signal("term"), Some(libc::SIGTERM));
        assert_eq!(parse_signal("9"), Some(9));
        assert_eq!(parse_signal("SIGBOGUS"), None);
    }
}
