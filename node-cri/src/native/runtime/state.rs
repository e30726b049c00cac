//! The runtime's state on disk, one JSON file per sandbox and container under
//! `<root>/state/{sandboxes,containers}/<id>.json` (written atomically), so that a new runtime
//! process on the same root knows everything an earlier one started. Lifecycles are persisted
//! status enums with guards, in youki's manner.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use node_core::{RuntimeError, cri};
use serde::{Deserialize, Serialize};

use super::spec::{ExitRecord, Started};

/// The lifecycle of a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SandboxStatus {
    /// Namespaces and network are up.
    Ready,
    /// Stopped: the pause process is gone and the network torn down.
    NotReady,
}

/// A sandbox as persisted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxRecord {
    /// The id.
    pub id: String,
    /// The CRI config it was created from.
    pub config: cri::PodSandboxConfig,
    /// The status.
    pub status: SandboxStatus,
    /// Creation time, ns since the epoch.
    pub created_at: i64,
    /// The pause process.
    pub pause: Started,
    /// The pod IPs CNI assigned.
    pub ips: Vec<String>,
    /// Host network (no netns, no CNI).
    pub host_network: bool,
    /// Namespace files bind-mounted under the sandbox directory (`kind`, path).
    pub ns_files: Vec<(String, PathBuf)>,
    /// The pod's `/dev/shm` (a tmpfs under the sandbox directory shared by its containers).
    #[serde(default)]
    pub shm: Option<PathBuf>,
    /// The cgroup parent of the pod (relative to the hierarchy roots): the pause process and
    /// every container get a cgroup below it.
    pub cgroup_parent: String,
    /// Whether the runtime made the parent (no `cgroup_parent` in the config: one per pod
    /// under [`super::NativeConfig::cgroup_parent`]) and removes it with the pod.
    #[serde(default)]
    pub owns_cgroup_parent: bool,
    /// The runtime handler asked for.
    pub runtime_handler: String,
}

impl SandboxRecord {
    /// Whether containers may be created in it.
    pub fn can_create_container(&self) -> bool {
        self.status == SandboxStatus::Ready
    }
    /// The namespace file of `kind`, when the sandbox has its own.
    pub fn ns_file(&self, kind: &str) -> Option<&Path> {
        self.ns_files
            .iter()
            .find(|(k, _)| k == kind)
            .map(|(_, p)| p.as_path())
    }
}

/// The lifecycle of a container as persisted (its exit is in the monitor's exit record).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerStatus {
    /// Created, not started.
    Created,
    /// Started (running until the monitor records an exit).
    Running,
    /// Exited, or failed to start.
    Exited,
}

impl ContainerStatus {
    /// Whether `start` is allowed.
    pub fn can_start(self) -> bool {
        self == ContainerStatus::Created
    }
}

/// A container as persisted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// The id.
    pub id: String,
    /// The sandbox.
    pub sandbox_id: String,
    /// The CRI config it was created from.
    pub config: cri::ContainerConfig,
    /// The image id the rootfs was made from.
    pub image_id: String,
    /// The persisted status.
    pub status: ContainerStatus,
    /// Creation time, ns.
    pub created_at: i64,
    /// Start time, ns (0 before start).
    pub started_at: i64,
    /// The process and its monitor, once started.
    pub process: Option<Started>,
    /// The exit, when recorded here (start failures; otherwise the monitor's exit file).
    pub exit: Option<ExitRecord>,
    /// Why it failed to start.
    pub start_error: Option<String>,
    /// The image's stop signal (number).
    pub stop_signal: i32,
    /// The cgroup, relative to the hierarchy roots.
    pub cgroup: String,
    /// The absolute log path (empty: no log).
    pub log_path: PathBuf,
    /// The resources applied.
    pub resources: Option<cri::LinuxContainerResources>,
}

/// The state directory of one runtime root.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

fn io(path: &Path, e: std::io::Error) -> RuntimeError {
    RuntimeError::Io {
        path: path.to_path_buf(),
        source: e,
    }
}

/// Whether `id` is a well-formed id of ours (hex), so that it can name files safely.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Store {
    /// The store under `<root>/state`.
    pub fn new(root: &Path) -> Result<Self, RuntimeError> {
        let s = Self {
            root: root.join("state"),
        };
        for d in ["sandboxes", "containers"] {
            let p = s.root.join(d);
            std::fs::create_dir_all(&p).map_err(|e| io(&p, e))?;
            // staging files of writes that never completed (a crash or a full disk)
            for e in std::fs::read_dir(&p).into_iter().flatten().flatten() {
                if e.file_name().to_string_lossy().ends_with(".tmp") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(s)
    }

    fn path(&self, kind: &str, id: &str) -> PathBuf {
        self.root.join(kind).join(format!("{id}.json"))
    }

    /// The exit record file the monitor of container `id` writes.
    pub fn exit_file(&self, id: &str) -> PathBuf {
        self.root.join("containers").join(format!("{id}.exit.json"))
    }

    fn write<T: Serialize>(&self, kind: &str, id: &str, v: &T) -> Result<(), RuntimeError> {
        let p = self.path(kind, id);
        let tmp = p.with_extension("json.tmp");
        let data = serde_json::to_vec_pretty(v)
            .map_err(|e| RuntimeError::Internal(format!("encode state {id}: {e}")))?;
        let res = std::fs::write(&tmp, data)
            .map_err(|e| io(&tmp, e))
            .and_then(|()| std::fs::rename(&tmp, &p).map_err(|e| io(&p, e)));
        if res.is_err() {
            // a full disk leaves an empty or partial staging file: never keep it
            let _ = std::fs::remove_file(&tmp);
        }
        res
    }

    fn read<T: for<'de> Deserialize<'de>>(
        &self,
        kind: &str,
        id: &str,
    ) -> Result<Option<T>, RuntimeError> {
        if !valid_id(id) {
            return Ok(None);
        }
        let p = self.path(kind, id);
        match std::fs::read(&p) {
            Ok(d) => serde_json::from_slice(&d)
                .map(Some)
                .map_err(|e| RuntimeError::Internal(format!("{}: {e}", p.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&p, e)),
        }
    }

    fn ids(&self, kind: &str) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(self.root.join(kind)) else {
            return vec![];
        };
        rd.flatten()
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                let id = n.strip_suffix(".json")?;
                (!id.contains('.')).then(|| id.to_string())
            })
            .collect()
    }

    fn remove(&self, kind: &str, id: &str) -> Result<(), RuntimeError> {
        let p = self.path(kind, id);
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&p, e)),
            _ => Ok(()),
        }
    }

    /// Save a sandbox.
    pub fn save_sandbox(&self, s: &SandboxRecord) -> Result<(), RuntimeError> {
        self.write("sandboxes", &s.id, s)
    }
    /// A sandbox, if known.
    pub fn sandbox(&self, id: &str) -> Result<Option<SandboxRecord>, RuntimeError> {
        self.read("sandboxes", id)
    }
    /// Every sandbox.
    pub fn sandboxes(&self) -> Vec<SandboxRecord> {
        self.ids("sandboxes")
            .iter()
            .filter_map(|id| self.sandbox(id).ok().flatten())
            .collect()
    }
    /// The ids of every sandbox record.
    pub fn sandbox_ids(&self) -> Vec<String> {
        self.ids("sandboxes")
    }
    /// The ids of every container record.
    pub fn container_ids(&self) -> Vec<String> {
        self.ids("containers")
    }
    /// Forget a sandbox.
    pub fn remove_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        let _ = std::fs::remove_file(self.pause_gone_file(id));
        self.remove("sandboxes", id)
    }
    /// The marker saying that sandbox `id` was reported stopped because its pause process
    /// died on its own (or that a stop of it began: its own event follows).
    pub fn pause_gone_file(&self, id: &str) -> PathBuf {
        self.root
            .join("sandboxes")
            .join(format!("{id}.pause.reported"))
    }
    /// Save a container.
    pub fn save_container(&self, c: &ContainerRecord) -> Result<(), RuntimeError> {
        self.write("containers", &c.id, c)
    }
    /// A container, if known. A container recorded as created whose monitor recorded a start
    /// (the runtime died while starting it) is running.
    pub fn container(&self, id: &str) -> Result<Option<ContainerRecord>, RuntimeError> {
        let Some(mut rec) = self.read::<ContainerRecord>("containers", id)? else {
            return Ok(None);
        };
        if rec.status == ContainerStatus::Created
            && let Some(started) = std::fs::read(self.started_file(id))
                .ok()
                .and_then(|d| serde_json::from_slice::<Started>(&d).ok())
        {
            rec.status = ContainerStatus::Running;
            rec.started_at = started.started_at;
            rec.process = Some(started);
        }
        Ok(Some(rec))
    }
    /// Record as running a container whose record says created while its monitor recorded a
    /// start (a runtime that died between the start and its record); whether one was rewritten.
    pub fn record_interrupted_start(&self, id: &str) -> Result<bool, RuntimeError> {
        let stored = self.read::<ContainerRecord>("containers", id)?;
        if stored.is_none_or(|r| r.status != ContainerStatus::Created) {
            return Ok(false);
        }
        match self.container(id)? {
            Some(rec) if rec.status == ContainerStatus::Running => {
                self.save_container(&rec)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
    /// Every container.
    pub fn containers(&self) -> Vec<ContainerRecord> {
        self.ids("containers")
            .iter()
            .filter_map(|id| self.container(id).ok().flatten())
            .collect()
    }
    /// Forget a container (and its exit record).
    pub fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        let _ = std::fs::remove_file(self.exit_reported_file(id));
        let _ = std::fs::remove_file(self.exit_file(id));
        let _ = std::fs::remove_file(self.started_file(id));
        self.remove("containers", id)
    }
    /// The file the monitor of container `id` records the start in.
    pub fn started_file(&self, id: &str) -> PathBuf {
        self.root
            .join("containers")
            .join(format!("{id}.started.json"))
    }

    /// The marker saying that the exit of container `id` was reported as a container event.
    pub fn exit_reported_file(&self, id: &str) -> PathBuf {
        self.root
            .join("containers")
            .join(format!("{id}.exit.reported"))
    }

    /// The monitor's exit record of a container, once it exited.
    pub fn exit_record(&self, id: &str) -> Option<ExitRecord> {
        serde_json::from_slice(&std::fs::read(self.exit_file(id)).ok()?).ok()
    }
}

/// Whether a label selector matches (every key equal).
pub fn labels_match(selector: &HashMap<String, String>, labels: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> ContainerRecord {
        ContainerRecord {
            id: id.into(),
            sandbox_id: "s".into(),
            config: cri::ContainerConfig::default(),
            image_id: "sha256:x".into(),
            status: ContainerStatus::Created,
            created_at: 1,
            started_at: 0,
            process: None,
            exit: None,
            start_error: None,
            stop_signal: 15,
            cgroup: "nodekit/x".into(),
            log_path: PathBuf::new(),
            resources: None,
        }
    }

    #[test]
    fn records_round_trip_and_a_start_the_monitor_recorded_wins() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path()).unwrap();
        store.save_container(&record("abc")).unwrap();
        let rec = store.container("abc").unwrap().unwrap();
        assert!(rec.status.can_start());
        // the runtime died between the monitor's start and its own state write
        let started = Started {
            pid: 42,
            start_ticks: 7,
            monitor_pid: 41,
            monitor_ticks: 6,
            started_at: 99,
            ..Default::default()
        };
        std::fs::write(
            store.started_file("abc"),
            serde_json::to_vec(&started).unwrap(),
        )
        .unwrap();
        let rec = store.container("abc").unwrap().unwrap();
        assert_eq!(
            (rec.status, rec.started_at, rec.process.map(|p| p.pid)),
            (ContainerStatus::Running, 99, Some(42))
        );
        assert!(!rec.status.can_start());
        // a restarted runtime writes that start into the record, once
        let raw = || std::fs::read_to_string(dir.path().join("state/containers/abc.json")).unwrap();
        assert!(raw().contains("Created"));
        assert!(store.record_interrupted_start("abc").unwrap());
        assert!(raw().contains("Running") && !raw().contains("Created"));
        assert!(!store.record_interrupted_start("abc").unwrap());
        assert!(!store.record_interrupted_start("missing").unwrap());
        // side files are not records; bad ids name nothing
        assert_eq!(store.containers().len(), 1);
        assert!(store.container("../../etc/passwd").unwrap().is_none());
        store.remove_container("abc").unwrap();
        assert!(store.containers().is_empty());
        assert!(!store.started_file("abc").exists());
    }

    #[test]
    fn a_failed_write_leaves_no_staging_file_and_open_removes_stale_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path()).unwrap();
        let containers = dir.path().join("state/containers");
        // the rename fails: a non-empty directory holds the record's name
        std::fs::create_dir_all(containers.join("abc.json/x")).unwrap();
        let err = store.save_container(&record("abc")).unwrap_err();
        assert!(err.to_string().contains("abc.json"), "{err}");
        assert!(!containers.join("abc.json.tmp").exists());
        // a staging file left by a runtime that died mid-write: ignored, then deleted on open
        std::fs::write(containers.join("def.json.tmp"), b"").unwrap();
        std::fs::write(dir.path().join("state/sandboxes/s1.json.tmp"), b"{").unwrap();
        assert!(store.container_ids().iter().all(|i| i != "def"));
        Store::new(dir.path()).unwrap();
        assert!(!containers.join("def.json.tmp").exists());
        assert!(!dir.path().join("state/sandboxes/s1.json.tmp").exists());
    }
}
