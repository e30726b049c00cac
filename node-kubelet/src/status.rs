//! A pod's status from what the runtime runs, the probe results and the reconcile's waiting
//! reasons: phase, conditions, container statuses, IPs, start time (the kubelet's
//! `generateAPIPodStatus`), and [`JsonStatusSink`], which writes each pod's status to a file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, HostIP, Node, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use node_core::{PodRef, StatusError, StatusSink};

use crate::cri_config::qos_class;
use crate::reconcile::{
    ObservedContainer, ObservedPod, ProbeResults, RunState, Terminal, Waiting, is_ready, is_started,
};

/// A `Time` from nanoseconds since the epoch (`None` for 0).
pub fn time_from_ns(ns: i64) -> Option<Time> {
    if ns <= 0 {
        return None;
    }
    // API times have second precision
    Timestamp::from_second(ns / 1_000_000_000).ok().map(Time)
}

/// The current wall-clock time, to the second.
pub fn now_time() -> Time {
    Time(Timestamp::from_second(Timestamp::now().as_second()).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// What a pod's status is computed from.
pub struct StatusInput<'a> {
    /// The desired pod.
    pub pod: &'a Pod,
    /// What the runtime runs for it.
    pub observed: &'a ObservedPod,
    /// Probe results by container id.
    pub probes: &'a ProbeResults,
    /// Why containers wait (back-off, image pulls, config errors), by container name.
    pub waiting: &'a BTreeMap<String, Waiting>,
    /// Whether the pod has ended.
    pub terminal: Option<Terminal>,
    /// The runtime's name, the scheme of container ids (`containerd://...`).
    pub runtime_name: &'a str,
    /// The node's IP.
    pub host_ip: Option<&'a str>,
    /// When the kubelet first acknowledged the pod.
    pub start_time: Option<Time>,
    /// The status written last (for condition transition times).
    pub previous: Option<&'a PodStatus>,
    /// Now.
    pub now: Time,
}

fn terminated(o: &ObservedContainer, runtime: &str) -> ContainerState {
    let reason = if !o.reason.is_empty() {
        o.reason.clone()
    } else if o.exit_code == 0 {
        "Completed".into()
    } else {
        "Error".into()
    };
    ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code: o.exit_code,
            reason: Some(reason),
            message: (!o.message.is_empty()).then(|| o.message.clone()),
            started_at: time_from_ns(o.started_at),
            finished_at: time_from_ns(o.finished_at),
            container_id: Some(format!("{runtime}://{}", o.id)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn waiting_state(reason: &str, message: &str) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.into()),
            message: (!message.is_empty()).then(|| message.to_string()),
        }),
        ..Default::default()
    }
}

fn container_status(
    c: &Container,
    input: &StatusInput<'_>,
    default_waiting: &str,
) -> ContainerStatus {
    let latest = input.observed.latest(&c.name, None);
    let previous = input.observed.previous(&c.name);
    let waiting = input.waiting.get(&c.name);
    let runtime = input.runtime_name;
    let mut s = ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone().unwrap_or_default(),
        image_id: String::new(),
        restart_count: latest.map(|o| o.attempt as i32).unwrap_or(0),
        ready: false,
        started: Some(false),
        ..Default::default()
    };
    match latest {
        None => {
            s.state = Some(
                waiting
                    .map(|w| waiting_state(&w.reason, &w.message))
                    .unwrap_or_else(|| waiting_state(default_waiting, "")),
            )
        }
        Some(o) => {
            s.container_id = Some(format!("{runtime}://{}", o.id));
            s.image_id = o.image_ref.clone();
            match o.state {
                RunState::Running => {
                    s.state = Some(ContainerState {
                        running: Some(ContainerStateRunning {
                            started_at: time_from_ns(o.started_at),
                        }),
                        ..Default::default()
                    });
                    s.last_state = previous.map(|p| terminated(p, runtime));
                    s.started = Some(is_started(c, o, input.probes));
                    s.ready = is_ready(c, o, input.probes);
                }
                RunState::Created => {
                    s.state = Some(waiting_state(
                        waiting
                            .map(|w| w.reason.as_str())
                            .unwrap_or("ContainerCreating"),
                        "",
                    ));
                    s.last_state = previous.map(|p| terminated(p, runtime));
                }
                RunState::Exited | RunState::Unknown => match waiting {
                    // about to restart: waiting, with the exit as the last state
                    Some(w) => {
                        s.state = Some(waiting_state(&w.reason, &w.message));
                        s.last_state = Some(terminated(o, runtime));
                    }
                    None => {
                        s.state = Some(terminated(o, runtime));
                        s.last_state = previous.map(|p| terminated(p, runtime));
                    }
                },
            }
        }
    }
    if s.last_state.is_none() {
        s.last_state = Some(ContainerState::default());
    }
    s
}

fn condition(
    type_: &str,
    ok: bool,
    reason: Option<&str>,
    message: Option<String>,
    input: &StatusInput<'_>,
) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    let last = input
        .previous
        .and_then(|p| p.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == type_))
        .filter(|c| c.status == status)
        .and_then(|c| c.last_transition_time.clone());
    PodCondition {
        type_: type_.into(),
        status: status.into(),
        reason: if ok { None } else { reason.map(str::to_string) },
        message: if ok { None } else { message },
        last_transition_time: Some(last.unwrap_or_else(|| input.now.clone())),
        ..Default::default()
    }
}

/// Compute a pod's status.
pub fn pod_status(input: &StatusInput<'_>) -> PodStatus {
    let pod = input.pod;
    let spec = pod.spec.clone().unwrap_or_default();
    let sandbox = input.observed.latest_sandbox();
    let sandbox_ready = sandbox.is_some_and(|s| s.ready);
    let current = sandbox.filter(|s| s.ready).map(|s| s.id.as_str());
    let apps_started = current.is_some()
        && spec
            .containers
            .iter()
            .any(|c| input.observed.latest(&c.name, current).is_some());

    // initialization
    let init_statuses: Vec<ContainerStatus> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| container_status(c, input, "PodInitializing"))
        .collect();
    let mut pending_init = 0;
    for c in spec.init_containers.iter().flatten() {
        let sidecar = c.restart_policy.as_deref() == Some("Always");
        let o = input.observed.latest(&c.name, None);
        let done = if sidecar {
            o.is_some_and(|o| is_started(c, o, input.probes)) || (apps_started && o.is_some())
        } else {
            apps_started || o.is_some_and(|o| o.state == RunState::Exited && o.exit_code == 0)
        };
        if !done {
            pending_init += 1;
        }
    }
    let initialized = pending_init == 0;
    let app_default = if initialized {
        "ContainerCreating"
    } else {
        "PodInitializing"
    };
    let statuses: Vec<ContainerStatus> = spec
        .containers
        .iter()
        .map(|c| container_status(c, input, app_default))
        .collect();

    // phase, as the kubelet's getPhase
    let (mut waiting, mut running, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for s in &statuses {
        let st = s.state.clone().unwrap_or_default();
        if st.running.is_some() {
            running += 1;
        } else if let Some(t) = &st.terminated {
            stopped += 1;
            if t.exit_code == 0 {
                succeeded += 1;
            }
        } else if s
            .last_state
            .as_ref()
            .and_then(|l| l.terminated.as_ref())
            .is_some()
        {
            stopped += 1;
        } else {
            waiting += 1;
        }
    }
    let policy = spec.restart_policy.as_deref().unwrap_or("Always");
    let phase = match input.terminal {
        Some(Terminal::Succeeded) => "Succeeded",
        Some(Terminal::Failed) => "Failed",
        None if !initialized || waiting > 0 => "Pending",
        None if running > 0 => "Running",
        None if stopped > 0 => {
            if policy == "Always" || policy == "OnFailure" {
                "Running"
            } else if stopped == succeeded {
                "Succeeded"
            } else {
                "Failed"
            }
        }
        None => "Pending",
    };

    let sidecars_ready = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"))
        .all(|c| {
            input
                .observed
                .latest(&c.name, None)
                .is_some_and(|o| is_ready(c, o, input.probes))
        });
    let unready: Vec<&str> = statuses
        .iter()
        .filter(|s| !s.ready)
        .map(|s| s.name.as_str())
        .collect();
    let containers_ready = unready.is_empty() && sidecars_ready && input.terminal.is_none();
    let (not_ready_reason, not_ready_message) = if input.terminal.is_some() {
        ("PodCompleted", None)
    } else {
        (
            "ContainersNotReady",
            Some(format!(
                "containers with unready status: [{}]",
                unready.join(" ")
            )),
        )
    };
    let conditions = vec![
        condition(
            "PodReadyToStartContainers",
            sandbox_ready,
            None,
            None,
            input,
        ),
        condition(
            "Initialized",
            initialized,
            Some(if input.terminal.is_some() {
                "PodCompleted"
            } else {
                "ContainersNotInitialized"
            }),
            Some(format!(
                "containers with incomplete status: [{}]",
                pending_init_names(&spec, input, apps_started).join(" ")
            )),
            input,
        ),
        condition(
            "Ready",
            containers_ready,
            Some(not_ready_reason),
            not_ready_message.clone(),
            input,
        ),
        condition(
            "ContainersReady",
            containers_ready,
            Some(not_ready_reason),
            not_ready_message,
            input,
        ),
        condition("PodScheduled", true, None, None, input),
    ];

    let host_network = spec.host_network.unwrap_or(false);
    let mut ips: Vec<String> = sandbox.map(|s| s.ips.clone()).unwrap_or_default();
    if host_network && let Some(h) = input.host_ip {
        ips = vec![h.to_string()];
    }
    PodStatus {
        phase: Some(phase.into()),
        conditions: Some(conditions),
        host_ip: input.host_ip.map(str::to_string),
        host_ips: input.host_ip.map(|h| vec![HostIP { ip: h.to_string() }]),
        pod_ip: ips.first().cloned(),
        pod_ips: (!ips.is_empty()).then(|| ips.iter().map(|ip| PodIP { ip: ip.clone() }).collect()),
        start_time: input.start_time.clone(),
        init_container_statuses: (!init_statuses.is_empty()).then_some(init_statuses),
        container_statuses: Some(statuses),
        qos_class: Some(qos_class(pod).into()),
        ..Default::default()
    }
}

fn pending_init_names(
    spec: &k8s_openapi::api::core::v1::PodSpec,
    input: &StatusInput<'_>,
    apps_started: bool,
) -> Vec<String> {
    spec.init_containers
        .iter()
        .flatten()
        .filter(|c| {
            let o = input.observed.latest(&c.name, None);
            if c.restart_policy.as_deref() == Some("Always") {
                !(o.is_some_and(|o| is_started(c, o, input.probes))
                    || (apps_started && o.is_some()))
            } else {
                !(apps_started
                    || o.is_some_and(|o| o.state == RunState::Exited && o.exit_code == 0))
            }
        })
        .map(|c| c.name.clone())
        .collect()
}

/// A [`StatusSink`] that writes one JSON file per pod (`<namespace>_<name>.json`, holding the
/// pod's reference and status) and `node.json`, each atomically (a temporary file renamed).
pub struct JsonStatusSink {
    dir: PathBuf,
}

impl JsonStatusSink {
    /// Write into `dir` (created when missing).
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self, StatusError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|source| StatusError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(Self { dir })
    }

    /// The file a pod's status goes to.
    pub fn path_of(&self, pod: &PodRef) -> PathBuf {
        self.dir
            .join(format!("{}_{}.json", pod.namespace, pod.name))
    }

    /// The directory written to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StatusError> {
    let tmp = path.with_extension(format!("json.tmp.{}", std::process::id()));
    let io = |source| StatusError::Io {
        path: path.to_path_buf(),
        source,
    };
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        StatusError::Io {
            path: path.to_path_buf(),
            source,
        }
    })
}

#[async_trait]
impl StatusSink for JsonStatusSink {
    async fn pod_status(&self, pod: &PodRef, status: &PodStatus) -> Result<(), StatusError> {
        let doc = serde_json::json!({
            "metadata": {"namespace": pod.namespace, "name": pod.name, "uid": pod.uid},
            "status": status,
        });
        let bytes =
            serde_json::to_vec_pretty(&doc).map_err(|e| StatusError::Other(e.to_string()))?;
        let path = self.path_of(pod);
        tokio::task::spawn_blocking(move || write_atomically(&path, &bytes))
            .await
            .map_err(|e| StatusError::Other(e.to_string()))?
    }

    async fn pod_deleted(&self, pod: &PodRef) -> Result<(), StatusError> {
        let path = self.path_of(pod);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StatusError::Io { path, source }),
        }
    }

    async fn node_status(&self, node: &Node) -> Result<(), StatusError> {
        let bytes =
            serde_json::to_vec_pretty(node).map_err(|e| StatusError::Other(e.to_string()))?;
        let path = self.dir.join("node.json");
        tokio::task::spawn_blocking(move || write_atomically(&path, &bytes))
            .await
            .map_err(|e| StatusError::Other(e.to_string()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels;
    use crate::reconcile::{ObservedSandbox, ProbeStatus};

    fn pod() -> Pod {
        serde_saphyr::from_str(
            "metadata: {name: p, namespace: default, uid: u}\nspec:\n  initContainers: [{name: init, image: i}]\n  containers:\n  \
             - {name: a, image: i, readinessProbe: {exec: {command: [x]}}}\n  - {name: b, image: i}\n",
        )
        .unwrap()
    }

    fn ctr(name: &str, state: RunState, attempt: u32, exit_code: i32) -> ObservedContainer {
        ObservedContainer {
            id: format!("{name}-{attempt}"),
            name: name.into(),
            sandbox_id: "s".into(),
            state,
            hash: String::new(),
            attempt,
            created_at: 1_700_000_000_000_000_000 + attempt as i64,
            started_at: 1_700_000_000_000_000_000,
            finished_at: if state == RunState::Exited {
                1_700_000_100_000_000_000
            } else {
                0
            },
            exit_code,
            reason: String::new(),
            message: String::new(),
            image: "i".into(),
            image_ref: "sha256:abc".into(),
            exited_seen: None,
        }
    }

    fn input<'a>(
        pod: &'a Pod,
        observed: &'a ObservedPod,
        probes: &'a ProbeResults,
        waiting: &'a BTreeMap<String, Waiting>,
        previous: Option<&'a PodStatus>,
        now: i64,
    ) -> StatusInput<'a> {
        StatusInput {
            pod,
            observed,
            probes,
            waiting,
            terminal: None,
            runtime_name: "fake",
            host_ip: Some("192.168.0.2"),
            start_time: time_from_ns(1_700_000_000_000_000_000),
            previous,
            now: time_from_ns(now).unwrap(),
        }
    }

    fn cond(s: &PodStatus, t: &str) -> String {
        s.conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == t)
            .unwrap()
            .status
            .clone()
    }

    #[test]
    fn from_pending_to_ready_with_transitions() {
        let p = pod();
        let no_probes = ProbeResults::new();
        let waiting = BTreeMap::new();
        let empty = ObservedPod::default();
        let s0 = pod_status(&input(
            &p,
            &empty,
            &no_probes,
            &waiting,
            None,
            1_700_000_001_000_000_000,
        ));
        assert_eq!(s0.phase.as_deref(), Some("Pending"));
        assert_eq!(cond(&s0, "PodReadyToStartContainers"), "False");
        assert_eq!(cond(&s0, "Initialized"), "False");
        let a = &s0.container_statuses.as_ref().unwrap()[0];
        assert_eq!(
            a.state
                .as_ref()
                .unwrap()
                .waiting
                .as_ref()
                .unwrap()
                .reason
                .as_deref(),
            Some("PodInitializing")
        );

        let sandbox = ObservedSandbox {
            id: "s".into(),
            ready: true,
            attempt: 0,
            hash: labels::sandbox_hash(&p),
            created_at: 1,
            ips: vec!["10.0.0.9".into()],
        };
        let observed = ObservedPod {
            sandboxes: vec![sandbox],
            containers: vec![
                ctr("init", RunState::Exited, 0, 0),
                ctr("a", RunState::Running, 0, 0),
                ctr("b", RunState::Exited, 0, 1),
                ctr("b", RunState::Running, 1, 0),
            ],
        };
        let s1 = pod_status(&input(
            &p,
            &observed,
            &no_probes,
            &waiting,
            Some(&s0),
            1_700_000_002_000_000_000,
        ));
        assert_eq!(s1.phase.as_deref(), Some("Running"));
        assert_eq!(s1.pod_ip.as_deref(), Some("10.0.0.9"));
        assert_eq!(s1.host_ip.as_deref(), Some("192.168.0.2"));
        assert_eq!(cond(&s1, "Initialized"), "True");
        assert_eq!(
            cond(&s1, "Ready"),
            "False",
            "a's readiness probe has not passed"
        );
        let scheduled = |s: &PodStatus| {
            s.conditions
                .as_ref()
                .unwrap()
                .iter()
                .find(|c| c.type_ == "PodScheduled")
                .unwrap()
                .last_transition_time
                .clone()
        };
        assert_eq!(
            scheduled(&s1),
            scheduled(&s0),
            "unchanged conditions keep their transition time"
        );
        let b = &s1.container_statuses.as_ref().unwrap()[1];
        assert_eq!(b.restart_count, 1);
        assert_eq!(b.container_id.as_deref(), Some("fake://b-1"));
        assert_eq!(b.image_id, "sha256:abc");
        assert!(b.ready && b.started == Some(true));
        assert_eq!(
            b.last_state
                .as_ref()
                .unwrap()
                .terminated
                .as_ref()
                .unwrap()
                .exit_code,
            1
        );
        assert_eq!(
            b.last_state
                .as_ref()
                .unwrap()
                .terminated
                .as_ref()
                .unwrap()
                .reason
                .as_deref(),
            Some("Error")
        );

        let probes: ProbeResults = [(
            "a-0".to_string(),
            ProbeStatus {
                readiness: Some(true),
                ..Default::default()
            },
        )]
        .into();
        let s2 = pod_status(&input(
            &p,
            &observed,
            &probes,
            &waiting,
            Some(&s1),
            1_700_000_003_000_000_000,
        ));
        assert_eq!(cond(&s2, "Ready"), "True");
        assert_eq!(cond(&s2, "ContainersReady"), "True");
        let again = pod_status(&input(
            &p,
            &observed,
            &probes,
            &waiting,
            Some(&s2),
            1_700_000_009_000_000_000,
        ));
        assert_eq!(
            again, s2,
            "nothing changed: the same status, so nothing is written"
        );
    }

    #[test]
    fn crash_loop_shows_waiting_with_the_last_exit() {
        let p = pod();
        let sandbox = ObservedSandbox {
            id: "s".into(),
            ready: true,
            attempt: 0,
            hash: String::new(),
            created_at: 1,
            ips: vec!["10.0.0.9".into()],
        };
        let observed = ObservedPod {
            sandboxes: vec![sandbox],
            containers: vec![
                ctr("init", RunState::Exited, 0, 0),
                ctr("a", RunState::Running, 0, 0),
                ctr("b", RunState::Exited, 3, 2),
            ],
        };
        let waiting: BTreeMap<String, Waiting> = [(
            "b".to_string(),
            Waiting {
                reason: "CrashLoopBackOff".into(),
                message: "back-off 40s".into(),
            },
        )]
        .into();
        let s = pod_status(&input(
            &p,
            &observed,
            &ProbeResults::new(),
            &waiting,
            None,
            1_700_000_001_000_000_000,
        ));
        let b = &s.container_statuses.as_ref().unwrap()[1];
        assert_eq!(
            b.state
                .as_ref()
                .unwrap()
                .waiting
                .as_ref()
                .unwrap()
                .reason
                .as_deref(),
            Some("CrashLoopBackOff")
        );
        assert_eq!(
            b.last_state
                .as_ref()
                .unwrap()
                .terminated
                .as_ref()
                .unwrap()
                .exit_code,
            2
        );
        assert_eq!(b.restart_count, 3);
        assert_eq!(s.phase.as_deref(), Some("Running"));
    }

    #[tokio::test]
    async fn json_sink_writes_atomically_and_removes() {
        let dir = tempfile::tempdir().unwrap();
        let sink = JsonStatusSink::new(dir.path().join("status")).unwrap();
        let r = PodRef::new("default", "web", "u1");
        let status = PodStatus {
            phase: Some("Running".into()),
            ..Default::default()
        };
        sink.pod_status(&r, &status).await.unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(sink.path_of(&r)).unwrap()).unwrap();
        assert_eq!(v["status"]["phase"], "Running");
        assert_eq!(v["metadata"]["uid"], "u1");
        let leftovers: Vec<_> = std::fs::read_dir(sink.dir())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left: {leftovers:?}");
        let mut node = Node::default();
        node.metadata.name = Some("n1".into());
        sink.node_status(&node).await.unwrap();
        assert!(sink.dir().join("node.json").exists());
        sink.pod_deleted(&r).await.unwrap();
        assert!(!sink.path_of(&r).exists());
        sink.pod_deleted(&r).await.unwrap();
    }
}
