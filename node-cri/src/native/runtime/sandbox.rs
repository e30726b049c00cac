//! Pod sandboxes: the pause process holding the pod's namespaces (bind-mounted under
//! `sandboxes/<id>/ns/`), CNI ADD/DEL, and the pod's `hostname`, `hosts` and `resolv.conf`.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use node_core::{Attachment, CapabilityArgs, PodRef, PortMapping, RuntimeError, cri};

use super::cgroup::CgroupHandle;
use super::phases::PhaseTimer;
use super::spec::{SandboxSpec, Started};
use super::state::{SandboxRecord, SandboxStatus, labels_match};
use super::{NativeRuntime, io_err, new_id, now_ns, process_alive, signal};

fn bind_ns(src: &Path, target: &Path) -> Result<(), RuntimeError> {
    std::fs::write(target, b"").map_err(|e| io_err(target, e))?;
    let (s, t) = (
        CString::new(src.as_os_str().as_bytes()).unwrap_or_default(),
        CString::new(target.as_os_str().as_bytes()).unwrap_or_default(),
    );
    // SAFETY: valid C strings; a bind mount of a namespace file.
    let rc = unsafe {
        libc::mount(
            s.as_ptr(),
            t.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(RuntimeError::Internal(format!(
            "bind {} to {}: {}",
            src.display(),
            target.display(),
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// Unmount (lazily) and delete a mount point directory (missing ones are fine).
pub(crate) fn unmount_dir(target: &Path) {
    let t = CString::new(target.as_os_str().as_bytes()).unwrap_or_default();
    // SAFETY: a valid C string; failures (not mounted) are ignored.
    unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) };
    let _ = std::fs::remove_dir(target);
}

fn mount_shm(target: &Path) -> Result<(), RuntimeError> {
    std::fs::create_dir_all(target).map_err(|e| io_err(target, e))?;
    let t = CString::new(target.as_os_str().as_bytes()).unwrap_or_default();
    // SAFETY: valid C strings; a tmpfs for the pod's /dev/shm.
    let rc = unsafe {
        libc::mount(
            c"shm".as_ptr(),
            t.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            c"mode=1777,size=65536k".as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(RuntimeError::Internal(format!(
            "mount the pod's /dev/shm at {}: {}",
            target.display(),
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// Unmount and delete a bind-mounted namespace file (missing files are fine).
pub(crate) fn unbind_ns(target: &Path) {
    let t = CString::new(target.as_os_str().as_bytes()).unwrap_or_default();
    // SAFETY: a valid C string; failures (not mounted) are ignored.
    unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) };
    let _ = std::fs::remove_file(target);
}

fn mode(
    opts: Option<&cri::NamespaceOption>,
    f: impl Fn(&cri::NamespaceOption) -> i32,
) -> cri::NamespaceMode {
    opts.map(f)
        .and_then(|m| cri::NamespaceMode::try_from(m).ok())
        .unwrap_or(cri::NamespaceMode::Pod)
}

pub(crate) fn namespace_options(cfg: &cri::PodSandboxConfig) -> Option<&cri::NamespaceOption> {
    cfg.linux
        .as_ref()?
        .security_context
        .as_ref()?
        .namespace_options
        .as_ref()
}

fn hosts_file(hostname: &str, ips: &[String]) -> String {
    let mut s = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    for ip in ips {
        s.push_str(&format!("{ip}\t{hostname}\n"));
    }
    s
}

fn resolv_conf(dns: Option<&cri::DnsConfig>) -> String {
    let Some(d) =
        dns.filter(|d| !d.servers.is_empty() || !d.searches.is_empty() || !d.options.is_empty())
    else {
        return std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    };
    let mut s = String::new();
    if !d.searches.is_empty() {
        s.push_str(&format!("search {}\n", d.searches.join(" ")));
    }
    for n in &d.servers {
        s.push_str(&format!("nameserver {n}\n"));
    }
    if !d.options.is_empty() {
        s.push_str(&format!("options {}\n", d.options.join(" ")));
    }
    s
}

impl NativeRuntime {
    /// Run the init binary with `args`; the first line of its stdout is the [`Started`] JSON.
    /// The answer is read up to its newline and the init's exit awaited, not the end of its
    /// output: the pause process it forks holds copies of the pipes until it has been scheduled
    /// and closed them, which under load took milliseconds of every sandbox start.
    pub(crate) async fn run_init_started(
        &self,
        args: &[&std::ffi::OsStr],
    ) -> Result<Started, RuntimeError> {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt};
        let mut child = tokio::process::Command::new(&self.init)
            .args(args)
            .env(
                "NODEKIT_INIT_SPAWNED_NS",
                super::init::monotonic_ns().to_string(),
            )
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| io_err(&self.init, e))?;
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            let _ = tokio::io::BufReader::new(out).read_line(&mut line).await;
        }
        let status = child.wait().await.map_err(|e| io_err(&self.init, e))?;
        if !status.success() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err).await;
            }
            let err = err.trim().trim_start_matches("nodekit-init: ");
            return Err(RuntimeError::Internal(if err.is_empty() {
                format!("the init exited with {status}")
            } else {
                err.to_string()
            }));
        }
        serde_json::from_str(line.trim())
            .map_err(|e| RuntimeError::Internal(format!("init answered {line:?}: {e}")))
    }

    /// Start a container's monitor (`nodekit-init container <spec>`): it reports on its stdout
    /// and closes it, then lives on (the runtime does not wait for it: tokio reaps it when it
    /// exits, or, after a restart of the runtime, whoever inherits it).
    pub(crate) async fn run_monitor(&self, spec: &Path) -> Result<Started, RuntimeError> {
        use tokio::io::AsyncReadExt;
        let mut child = tokio::process::Command::new(&self.init)
            .arg("container")
            .arg(spec)
            .env(
                "NODEKIT_INIT_SPAWNED_NS",
                super::init::monotonic_ns().to_string(),
            )
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| io_err(&self.init, e))?;
        let (mut out, mut err) = (String::new(), String::new());
        let (mut so, mut se) = (child.stdout.take(), child.stderr.take());
        let read_out = async {
            if let Some(s) = so.as_mut() {
                let _ = s.read_to_string(&mut out).await;
            }
        };
        let read_err = async {
            if let Some(s) = se.as_mut() {
                let _ = s.read_to_string(&mut err).await;
            }
        };
        tokio::join!(read_out, read_err);
        if let Some(ok) = out.strip_prefix("ok ") {
            return serde_json::from_str(ok.trim()).map_err(|e| {
                RuntimeError::Internal(format!("the container monitor answered {out:?}: {e}"))
            });
        }
        let _ = child.wait().await;
        let msg = out
            .strip_prefix("err ")
            .map(str::to_string)
            .unwrap_or_else(|| {
                let e = err.trim().trim_start_matches("nodekit-init: ");
                if e.is_empty() {
                    "the container monitor died before reporting".into()
                } else {
                    e.to_string()
                }
            });
        Err(RuntimeError::Internal(msg))
    }

    fn attachment(&self, rec: &SandboxRecord) -> Attachment {
        let md = rec.config.metadata.clone().unwrap_or_default();
        Attachment {
            container_id: rec.id.clone(),
            netns: rec
                .ns_file("net")
                .map(Path::to_path_buf)
                .unwrap_or_default(),
            ifname: "eth0".into(),
            pod: PodRef::new(md.namespace, md.name, md.uid),
            capabilities: CapabilityArgs {
                port_mappings: rec
                    .config
                    .port_mappings
                    .iter()
                    .filter(|p| p.host_port > 0)
                    .map(|p| PortMapping {
                        host_port: p.host_port as u16,
                        container_port: p.container_port as u16,
                        protocol: cri::Protocol::try_from(p.protocol)
                            .unwrap_or(cri::Protocol::Tcp)
                            .as_str_name()
                            .to_ascii_lowercase(),
                        host_ip: (!p.host_ip.is_empty()).then(|| p.host_ip.clone()),
                    })
                    .collect(),
                ..Default::default()
            },
        }
    }

    pub(crate) async fn run_sandbox(
        &self,
        req: cri::RunPodSandboxRequest,
    ) -> Result<String, RuntimeError> {
        let config = req.config.ok_or_else(|| {
            RuntimeError::InvalidArgument("RunPodSandbox: config is required".into())
        })?;
        let md = config.metadata.clone().ok_or_else(|| {
            RuntimeError::InvalidArgument("RunPodSandbox: config.metadata is required".into())
        })?;
        if md.name.is_empty() {
            return Err(RuntimeError::InvalidArgument(
                "RunPodSandbox: config.metadata.name is empty".into(),
            ));
        }
        let key = format!(
            "pod sandbox {}/{} (uid {}, attempt {})",
            md.namespace, md.name, md.uid, md.attempt
        );
        let _reserved = self.reserve(key.clone(), || {
            let other = self
                .store
                .sandboxes()
                .into_iter()
                .find(|s| s.config.metadata.as_ref() == Some(&md))?;
            Some(format!("{key} is reserved by {}", other.id))
        })?;
        let ns_opts = namespace_options(&config);
        let host_network = mode(ns_opts, |o| o.network) == cri::NamespaceMode::Node;
        let host_ipc = mode(ns_opts, |o| o.ipc) == cri::NamespaceMode::Node;
        let id = new_id();
        // held until the sandbox is made or rolled back: a stop of the record below (listed
        // as NOTREADY while it is created) waits for the creation
        let lock = self.lock_for(&id);
        let _creating = lock.lock().await;
        let dir = self.sandbox_dir(&id);
        let given = config
            .linux
            .as_ref()
            .map(|l| l.cgroup_parent.trim_matches('/').to_string())
            .filter(|p| !p.is_empty());
        let owns_cgroup_parent = given.is_none();
        let parent = given
            .unwrap_or_else(|| format!("{}/pod-{id}", self.cfg.cgroup_parent.trim_matches('/')));
        if parent.split('/').any(|c| c == ".." || c == ".") {
            return Err(RuntimeError::InvalidArgument(format!(
                "RunPodSandbox: linux.cgroup_parent {parent:?} must not contain . or .."
            )));
        }
        let hostname = if config.hostname.is_empty() {
            md.name.clone()
        } else {
            config.hostname.clone()
        };
        let mut rec = SandboxRecord {
            id: id.clone(),
            config: config.clone(),
            status: SandboxStatus::NotReady,
            created_at: now_ns(),
            pause: Started::default(),
            ips: vec![],
            host_network,
            ns_files: vec![],
            shm: None,
            cgroup_parent: parent.clone(),
            owns_cgroup_parent,
            runtime_handler: req.runtime_handler.clone(),
        };
        let mut t = PhaseTimer::start();
        // everything below is rolled back on failure
        let result = async {
            // on disk before anything is made (containerd's "creating" sandbox): if the runtime
            // dies from here on, a restarted runtime lists the sandbox as NOTREADY and its stop
            // and removal kill whatever runs in its cgroup and remove the cgroup and mounts
            self.store.save_sandbox(&rec)?;
            t.mark("save_creating");
            std::fs::create_dir_all(dir.join("ns")).map_err(|e| io_err(&dir, e))?;
            t.mark("dirs");
            let cg = CgroupHandle::create_in(&self.cfg.cgroups, &format!("{parent}/{id}"))?;
            t.mark("cgroup");
            let spec = SandboxSpec {
                new_net: !host_network,
                new_ipc: !host_ipc,
                new_uts: !host_network,
                hostname: hostname.clone(),
                cgroup_procs: cg.procs_files(),
            };
            let json =
                serde_json::to_string(&spec).map_err(|e| RuntimeError::Internal(e.to_string()))?;
            rec.pause = self
                .run_init_started(&["sandbox".as_ref(), json.as_ref()])
                .await?;
            t.mark("init");
            for (name, us) in std::mem::take(&mut rec.pause.phases) {
                t.add(format!("init.{name}"), Duration::from_micros(us));
            }
            let mut kinds = vec!["pid"];
            if spec.new_net {
                kinds.push("net");
            }
            if spec.new_ipc {
                kinds.push("ipc");
            }
            if spec.new_uts {
                kinds.push("uts");
            }
            for k in kinds {
                let target = dir.join("ns").join(k);
                bind_ns(
                    &PathBuf::from(format!("/proc/{}/ns/{k}", rec.pause.pid)),
                    &target,
                )?;
                rec.ns_files.push((k.to_string(), target));
            }
            t.mark("bind_ns");
            if !host_ipc {
                let shm = dir.join("shm");
                mount_shm(&shm)?;
                rec.shm = Some(shm);
            }
            t.mark("shm");
            if self.cfg.hang_after_pause_for_tests {
                std::future::pending::<()>().await;
            }
            // the pause process and namespace files on disk (not ready yet): if the runtime
            // dies during CNI ADD, the kubelet still finds them and stops and removes the sandbox
            self.store.save_sandbox(&rec)?;
            t.mark("save");
            if !host_network {
                let a = self.attachment(&rec);
                let res = self.cfg.cni.add(&a).await.map_err(|e| {
                    RuntimeError::Network(format!(
                        "CNI ADD for pod {}/{}: {e}",
                        md.namespace, md.name
                    ))
                })?;
                rec.ips = res.pod_ips().iter().map(|i| i.to_string()).collect();
            }
            t.mark("cni");
            let write = |name: &str, data: String| {
                std::fs::write(dir.join(name), data).map_err(|e| io_err(&dir.join(name), e))
            };
            if host_network {
                write(
                    "hostname",
                    std::fs::read_to_string("/etc/hostname").unwrap_or_default(),
                )?;
                write(
                    "hosts",
                    std::fs::read_to_string("/etc/hosts").unwrap_or_default(),
                )?;
            } else {
                write("hostname", format!("{hostname}\n"))?;
                write("hosts", hosts_file(&hostname, &rec.ips))?;
            }
            write("resolv.conf", resolv_conf(config.dns_config.as_ref()))?;
            t.mark("files");
            rec.status = SandboxStatus::Ready;
            self.store.save_sandbox(&rec)?;
            t.mark("save_ready");
            Ok::<(), RuntimeError>(())
        }
        .await;
        if let Err(e) = result {
            self.teardown_sandbox(&rec, !rec.ips.is_empty()).await;
            if owns_cgroup_parent {
                let _ = CgroupHandle::open_in(&self.cfg.cgroups, &parent).destroy();
            }
            let _ = std::fs::remove_dir_all(&dir);
            let _ = self.store.remove_sandbox(&id);
            drop(_creating);
            self.forget_lock(&id);
            return Err(e);
        }
        self.shared.phases.record(&id, "run", t);
        drop(_creating);
        self.emit_sandbox(&rec, cri::ContainerEventType::ContainerStartedEvent);
        Ok(id)
    }

    /// Kill the pause process, release the network (when `cni_del`), unmount namespace files and
    /// remove the pod cgroup, killing every process still in it (a pause process the record
    /// does not name yet included). Errors of CNI DEL are returned; the rest is best effort.
    async fn teardown_sandbox(&self, rec: &SandboxRecord, cni_del: bool) -> Option<RuntimeError> {
        let mut err = None;
        if cni_del
            && !rec.host_network
            && rec.ns_file("net").is_some()
            && let Err(e) = self.cfg.cni.del(&self.attachment(rec)).await
        {
            err = Some(RuntimeError::Network(format!(
                "CNI DEL for sandbox {}: {e}",
                rec.id
            )));
        }
        if signal(rec.pause.pid, rec.pause.start_ticks, libc::SIGKILL) {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while process_alive(rec.pause.pid, rec.pause.start_ticks)
                && std::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        if err.is_none() {
            for (_, p) in &rec.ns_files {
                unbind_ns(p);
            }
        }
        if let Some(shm) = &rec.shm {
            unmount_dir(shm);
        }
        let cg = CgroupHandle::open_in(
            &self.cfg.cgroups,
            &format!("{}/{}", rec.cgroup_parent, rec.id),
        );
        if let Err(e) = cg.destroy() {
            err.get_or_insert(e);
        }
        err
    }

    pub(crate) async fn stop_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        let lock = self.lock_for(id);
        let _g = lock.lock().await;
        let mut rec = self
            .store
            .sandbox(id)?
            .ok_or_else(|| RuntimeError::NotFound {
                kind: "pod sandbox",
                id: id.into(),
            })?;
        for c in self
            .store
            .containers()
            .into_iter()
            .filter(|c| c.sandbox_id == id)
        {
            self.stop(&c.id, Duration::ZERO).await?;
        }
        // stopped already; a record without a pause process is one whose creation was
        // interrupted: whatever it made is torn down (its cgroup's processes killed)
        if rec.status == SandboxStatus::NotReady && rec.ns_files.is_empty() && rec.pause.pid > 0 {
            return Ok(());
        }
        // the pause process dies now: the stop's own event says so, not the liveness scan
        let _ = std::fs::File::create(self.store.pause_gone_file(id));
        if let Some(e) = self.teardown_sandbox(&rec, true).await {
            return Err(e);
        }
        rec.status = SandboxStatus::NotReady;
        rec.ns_files.clear();
        self.store.save_sandbox(&rec)?;
        self.emit_sandbox(&rec, cri::ContainerEventType::ContainerStoppedEvent);
        Ok(())
    }

    pub(crate) async fn remove_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        let Some(before) = self.store.sandbox(id)? else {
            return Ok(());
        };
        self.stop_sandbox(id).await?;
        for c in self
            .store
            .containers()
            .into_iter()
            .filter(|c| c.sandbox_id == id)
        {
            self.remove(&c.id).await?;
        }
        let lock = self.lock_for(id);
        let _g = lock.lock().await;
        let dir = self.sandbox_dir(id);
        if let Ok(rd) = std::fs::read_dir(dir.join("ns")) {
            for e in rd.flatten() {
                unbind_ns(&e.path());
            }
        }
        unmount_dir(&dir.join("shm"));
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_err(&dir, e)),
            _ => {}
        }
        if let Some(rec) = self.store.sandbox(id)?.filter(|r| r.owns_cgroup_parent) {
            CgroupHandle::open_in(&self.cfg.cgroups, &rec.cgroup_parent).destroy()?;
        }
        self.store.remove_sandbox(id)?;
        self.shared.phases.forget(id);
        drop(_g);
        self.forget_lock(id);
        let mut gone = before;
        gone.status = SandboxStatus::NotReady;
        self.emit_sandbox(&gone, cri::ContainerEventType::ContainerDeletedEvent);
        Ok(())
    }

    pub(super) fn to_status(&self, rec: &SandboxRecord) -> cri::PodSandboxStatus {
        let state = if rec.status == SandboxStatus::Ready
            && process_alive(rec.pause.pid, rec.pause.start_ticks)
        {
            cri::PodSandboxState::SandboxReady
        } else {
            cri::PodSandboxState::SandboxNotready
        };
        cri::PodSandboxStatus {
            id: rec.id.clone(),
            metadata: rec.config.metadata.clone(),
            state: state as i32,
            created_at: rec.created_at,
            network: Some(cri::PodSandboxNetworkStatus {
                ip: rec.ips.first().cloned().unwrap_or_default(),
                additional_ips: rec
                    .ips
                    .iter()
                    .skip(1)
                    .map(|ip| cri::PodIp { ip: ip.clone() })
                    .collect(),
            }),
            linux: Some(cri::LinuxPodSandboxStatus {
                namespaces: Some(cri::Namespace {
                    options: namespace_options(&rec.config)
                        .cloned()
                        .or_else(|| Some(Default::default())),
                }),
            }),
            labels: rec.config.labels.clone(),
            annotations: rec.config.annotations.clone(),
            runtime_handler: rec.runtime_handler.clone(),
        }
    }

    pub(crate) fn sandbox_status(
        &self,
        id: &str,
        verbose: bool,
    ) -> Result<cri::PodSandboxStatusResponse, RuntimeError> {
        let rec = self
            .store
            .sandbox(id)?
            .ok_or_else(|| RuntimeError::NotFound {
                kind: "pod sandbox",
                id: id.into(),
            })?;
        let mut info = std::collections::HashMap::new();
        if verbose {
            info.insert("info".into(), serde_json::json!({"pid": rec.pause.pid, "cgroupParent": rec.cgroup_parent, "hostNetwork": rec.host_network, "phases": self.shared.phases.json(id)}).to_string());
        }
        Ok(cri::PodSandboxStatusResponse {
            status: Some(self.to_status(&rec)),
            info,
            containers_statuses: vec![],
            timestamp: now_ns(),
        })
    }

    pub(crate) fn list_sandboxes(
        &self,
        filter: Option<cri::PodSandboxFilter>,
    ) -> Vec<cri::PodSandbox> {
        let f = filter.unwrap_or_default();
        let mut v: Vec<cri::PodSandbox> = self
            .store
            .sandboxes()
            .iter()
            .map(|r| self.to_status(r))
            .filter(|s| f.id.is_empty() || s.id == f.id)
            .filter(|s| f.state.as_ref().is_none_or(|st| st.state == s.state))
            .filter(|s| labels_match(&f.label_selector, &s.labels))
            .map(|s| cri::PodSandbox {
                id: s.id,
                metadata: s.metadata,
                state: s.state,
                created_at: s.created_at,
                labels: s.labels,
                annotations: s.annotations,
                runtime_handler: s.runtime_handler,
            })
            .collect();
        v.sort_by_key(|s| s.created_at);
        v
    }

    fn pod_stats_for(&self, rec: &SandboxRecord) -> cri::PodSandboxStats {
        let ts = now_ns();
        let containers: Vec<cri::ContainerStats> =
            self.list_stats(Some(cri::ContainerStatsFilter {
                pod_sandbox_id: rec.id.clone(),
                ..Default::default()
            }));
        // the pod's usage: its containers plus the pause process
        let pause = CgroupHandle::open_in(
            &self.cfg.cgroups,
            &format!("{}/{}", rec.cgroup_parent, rec.id),
        );
        let mut cpu = pause.cpu_usage_ns().unwrap_or(0);
        let (mut usage, mut working_set) = pause.memory_usage().unwrap_or((0, 0));
        let mut procs = pause.pids().len() as u64;
        for c in &containers {
            cpu += c
                .cpu
                .as_ref()
                .and_then(|u| u.usage_core_nano_seconds.as_ref())
                .map_or(0, |v| v.value);
            usage += c
                .memory
                .as_ref()
                .and_then(|m| m.usage_bytes.as_ref())
                .map_or(0, |v| v.value);
            working_set += c
                .memory
                .as_ref()
                .and_then(|m| m.working_set_bytes.as_ref())
                .map_or(0, |v| v.value);
        }
        for c in self
            .store
            .containers()
            .iter()
            .filter(|c| c.sandbox_id == rec.id)
        {
            procs += CgroupHandle::open_in(&self.cfg.cgroups, &c.cgroup)
                .pids()
                .len() as u64;
        }
        let u = |v: u64| Some(cri::UInt64Value { value: v });
        cri::PodSandboxStats {
            attributes: Some(cri::PodSandboxAttributes {
                id: rec.id.clone(),
                metadata: rec.config.metadata.clone(),
                labels: rec.config.labels.clone(),
                annotations: rec.config.annotations.clone(),
            }),
            linux: Some(cri::LinuxPodSandboxStats {
                cpu: Some(cri::CpuUsage {
                    timestamp: ts,
                    usage_core_nano_seconds: u(cpu),
                    usage_nano_cores: None,
                }),
                memory: Some(cri::MemoryUsage {
                    timestamp: ts,
                    usage_bytes: u(usage),
                    working_set_bytes: u(working_set),
                    ..Default::default()
                }),
                network: None,
                process: Some(cri::ProcessUsage {
                    timestamp: ts,
                    process_count: u(procs),
                }),
                containers,
            }),
            windows: None,
        }
    }

    pub(crate) fn pod_stats(&self, id: &str) -> Result<cri::PodSandboxStats, RuntimeError> {
        let rec = self
            .store
            .sandbox(id)?
            .ok_or_else(|| RuntimeError::NotFound {
                kind: "pod sandbox",
                id: id.into(),
            })?;
        Ok(self.pod_stats_for(&rec))
    }

    pub(crate) fn list_pod_stats(
        &self,
        filter: Option<cri::PodSandboxStatsFilter>,
    ) -> Vec<cri::PodSandboxStats> {
        let f = filter.unwrap_or_default();
        self.store
            .sandboxes()
            .iter()
            .filter(|r| f.id.is_empty() || r.id == f.id)
            .filter(|r| labels_match(&f.label_selector, &r.config.labels))
            .filter(|r| r.status == SandboxStatus::Ready)
            .map(|r| self.pod_stats_for(r))
            .collect()
    }

    /// Every sandbox id this runtime root holds.
    pub fn sandbox_ids(&self) -> Vec<String> {
        self.store.sandboxes().into_iter().map(|s| s.id).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_from_dns_config() {
        let d = cri::DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec![
                "default.svc.cluster.local".into(),
                "svc.cluster.local".into(),
            ],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            resolv_conf(Some(&d)),
            "search default.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
        );
        assert!(hosts_file("web-0", &["10.88.0.2".into()]).ends_with("10.88.0.2\tweb-0\n"));
    }
}
