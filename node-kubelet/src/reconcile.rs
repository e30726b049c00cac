//! The reconcile of one pod, as a pure function: from the desired pod, what the runtime runs for
//! it, the probe results, the time and the back-off, compute the [`Actions`] that bring the
//! runtime closer to the spec (the kubelet's `computePodActions`).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::labels;

/// A container's state as the runtime reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Created, not started.
    Created,
    /// Running.
    Running,
    /// Exited.
    Exited,
    /// The runtime does not know.
    Unknown,
}

/// A sandbox of the pod, as observed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedSandbox {
    /// The runtime's id.
    pub id: String,
    /// Whether it is ready.
    pub ready: bool,
    /// Its attempt number.
    pub attempt: u32,
    /// The sandbox hash it was created with ([`labels::sandbox_hash`]).
    pub hash: String,
    /// Creation time, ns since the epoch.
    pub created_at: i64,
    /// Its IPs (empty on the host network or before networking).
    pub ips: Vec<String>,
}

/// A container of the pod, as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedContainer {
    /// The runtime's id.
    pub id: String,
    /// The container's name in the pod spec.
    pub name: String,
    /// The sandbox it runs in.
    pub sandbox_id: String,
    /// Its state.
    pub state: RunState,
    /// The spec hash it was created with ([`labels::container_hash`]).
    pub hash: String,
    /// Its attempt (restart count when created).
    pub attempt: u32,
    /// Times, ns since the epoch (0: not yet).
    pub created_at: i64,
    /// Start time.
    pub started_at: i64,
    /// Finish time.
    pub finished_at: i64,
    /// Exit code once exited.
    pub exit_code: i32,
    /// The runtime's reason (`Completed`, `Error`, `OOMKilled`).
    pub reason: String,
    /// The runtime's message.
    pub message: String,
    /// The image as asked.
    pub image: String,
    /// The image's id or digest.
    pub image_ref: String,
    /// When the kubelet first saw it exited (the back-off's event time).
    pub exited_seen: Option<Instant>,
}

/// Everything the runtime has for one pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedPod {
    /// Its sandboxes, any order.
    pub sandboxes: Vec<ObservedSandbox>,
    /// Its containers, any order.
    pub containers: Vec<ObservedContainer>,
}

impl ObservedPod {
    /// The newest sandbox.
    pub fn latest_sandbox(&self) -> Option<&ObservedSandbox> {
        self.sandboxes
            .iter()
            .max_by_key(|s| (s.attempt, s.created_at))
    }

    /// The newest container of `name` in `sandbox` (any sandbox when `None`).
    pub fn latest(&self, name: &str, sandbox: Option<&str>) -> Option<&ObservedContainer> {
        self.containers
            .iter()
            .filter(|c| c.name == name && sandbox.is_none_or(|s| c.sandbox_id == s))
            .max_by_key(|c| (c.attempt, c.created_at))
    }

    /// The instance before the newest one of `name` (any sandbox): the status's `lastState`.
    pub fn previous(&self, name: &str) -> Option<&ObservedContainer> {
        let mut all: Vec<_> = self.containers.iter().filter(|c| c.name == name).collect();
        all.sort_by_key(|c| (c.attempt, c.created_at));
        all.len().checked_sub(2).map(|i| all[i])
    }

    /// The attempt number for a new container of `name`.
    pub fn next_attempt(&self, name: &str) -> u32 {
        self.containers
            .iter()
            .filter(|c| c.name == name)
            .map(|c| c.attempt + 1)
            .max()
            .unwrap_or(0)
    }
}

/// What the probes say about one running container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProbeStatus {
    /// Startup probe: `None` not decided yet, `Some(true)` succeeded, `Some(false)` failed (threshold reached).
    pub startup: Option<bool>,
    /// Liveness probe: `Some(false)` when it failed its threshold.
    pub liveness: Option<bool>,
    /// Readiness probe: `Some(true)` when ready.
    pub readiness: Option<bool>,
}

/// Probe results by container id.
pub type ProbeResults = HashMap<String, ProbeStatus>;

/// Whether a container (with these probe results) has started: running and its startup probe,
/// if any, succeeded.
pub fn is_started(spec: &Container, c: &ObservedContainer, probes: &ProbeResults) -> bool {
    c.state == RunState::Running
        && (spec.startup_probe.is_none() || probes.get(&c.id).and_then(|p| p.startup) == Some(true))
}

/// Whether a container is ready: started, and its readiness probe, if any, succeeded.
pub fn is_ready(spec: &Container, c: &ObservedContainer, probes: &ProbeResults) -> bool {
    is_started(spec, c, probes)
        && (spec.readiness_probe.is_none()
            || probes.get(&c.id).and_then(|p| p.readiness) == Some(true))
}

/// Which list of the spec a container is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerKind {
    /// An init container that runs to completion.
    Init,
    /// A restartable init container (`restartPolicy: Always`): a sidecar.
    Sidecar,
    /// An app container.
    App,
}

/// Why a container is killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillReason {
    /// Its spec hash no longer matches the pod spec.
    SpecChanged,
    /// Its liveness probe failed.
    LivenessFailed,
    /// Its startup probe failed.
    StartupFailed,
    /// It was created but never started (the kubelet died in between).
    NeverStarted,
    /// Its name is no longer in the pod spec.
    NotInSpec,
}

/// A container to kill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kill {
    /// The runtime's id.
    pub id: String,
    /// Its name in the spec.
    pub name: String,
    /// Why.
    pub reason: KillReason,
}

/// A container to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    /// Its name in the spec.
    pub name: String,
    /// Init, sidecar or app.
    pub kind: ContainerKind,
    /// The attempt number (restart count) of the new container.
    pub attempt: u32,
}

/// A reason a container waits (shown in its status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    /// `CrashLoopBackOff`, `ImagePullBackOff`...
    pub reason: String,
    /// Human detail.
    pub message: String,
}

/// How a pod ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Terminal {
    /// Every container exited 0 and none will restart.
    Succeeded,
    /// A container failed and none will restart.
    Failed,
}

/// What to do to one pod, in order: kill the pod's sandbox, create a sandbox, kill containers,
/// start containers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actions {
    /// Stop every container and sandbox of the pod (before a new sandbox, or because it ended).
    pub kill_pod: bool,
    /// Create a sandbox with this attempt number.
    pub create_sandbox: Option<u32>,
    /// Containers to kill.
    pub kill: Vec<Kill>,
    /// Containers to start, in order.
    pub start: Vec<Start>,
    /// Containers that wait, and why.
    pub waiting: BTreeMap<String, Waiting>,
    /// Sync again after this long (the earliest back-off expiry).
    pub requeue_after: Option<Duration>,
    /// The pod has ended.
    pub terminal: Option<Terminal>,
}

impl Actions {
    /// Whether nothing is to be done to the runtime.
    pub fn is_noop(&self) -> bool {
        !self.kill_pod
            && self.create_sandbox.is_none()
            && self.kill.is_empty()
            && self.start.is_empty()
    }

    /// Start the next attempt of container `name`.
    fn start_next(&mut self, name: &str, kind: ContainerKind, observed: &ObservedPod) {
        self.start.push(Start {
            name: name.to_string(),
            kind,
            attempt: observed.next_attempt(name),
        });
    }

    /// Kill the observed container `o`.
    fn kill(&mut self, o: &ObservedContainer, reason: KillReason) {
        self.kill.push(Kill {
            id: o.id.clone(),
            name: o.name.clone(),
            reason,
        });
    }

    /// Replace a container that was created but never started (the kubelet died in between).
    fn replace_unstarted(
        &mut self,
        o: &ObservedContainer,
        kind: ContainerKind,
        observed: &ObservedPod,
    ) {
        self.kill(o, KillReason::NeverStarted);
        self.start_next(&o.name, kind, observed);
    }
}

/// The back-off key of a container of a pod.
pub fn backoff_key(pod: &Pod, name: &str) -> String {
    format!("{}/{name}", pod.metadata.uid.as_deref().unwrap_or(""))
}

fn restart_policy(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always")
}

fn should_restart(policy: &str, exit_code: i32) -> bool {
    match policy {
        "Never" => false,
        "OnFailure" => exit_code != 0,
        _ => true,
    }
}

/// Whether the pod has ended: no container will run again.
pub fn terminal_state(pod: &Pod, observed: &ObservedPod) -> Option<Terminal> {
    let spec = pod.spec.as_ref()?;
    let policy = restart_policy(pod);
    if policy == "Always" {
        return None;
    }
    // an init container that failed under Never fails the pod
    if policy == "Never" {
        for c in spec.init_containers.iter().flatten() {
            if c.restart_policy.as_deref() == Some("Always") {
                continue;
            }
            if let Some(o) = observed.latest(&c.name, None)
                && matches!(o.state, RunState::Exited | RunState::Unknown)
                && o.exit_code != 0
            {
                return Some(Terminal::Failed);
            }
        }
    }
    let mut failed = false;
    for c in &spec.containers {
        let o = observed.latest(&c.name, None)?;
        if !matches!(o.state, RunState::Exited | RunState::Unknown) {
            return None;
        }
        if should_restart(policy, o.exit_code) {
            return None;
        }
        failed |= o.exit_code != 0;
    }
    Some(if failed {
        Terminal::Failed
    } else {
        Terminal::Succeeded
    })
}

/// Compute what to do to bring the runtime to the pod's spec.
///
/// `backoff` is updated for the restarts it allows (as the kubelet's `doBackOff` does), so
/// calling this twice in a row at the same `now` does not restart twice.
pub fn compute_actions(
    pod: &Pod,
    observed: &ObservedPod,
    probes: &ProbeResults,
    now: Instant,
    backoff: &mut Backoff,
) -> Actions {
    let mut a = Actions::default();
    let Some(spec) = pod.spec.as_ref() else {
        return a;
    };
    let policy = restart_policy(pod);
    let any_running = observed
        .containers
        .iter()
        .any(|c| c.state == RunState::Running);

    if let Some(t) = terminal_state(pod, observed) {
        a.terminal = Some(t);
        a.kill_pod = any_running || observed.sandboxes.iter().any(|s| s.ready);
        return a;
    }

    let desired_sandbox_hash = labels::sandbox_hash(pod);
    let host_network = spec.host_network.unwrap_or(false);
    let sandbox = observed.latest_sandbox();
    let sandbox_ok = sandbox.is_some_and(|s| {
        s.ready && s.hash == desired_sandbox_hash && (host_network || !s.ips.is_empty())
    });
    let current_sandbox: Option<&str> = if sandbox_ok {
        sandbox.map(|s| s.id.as_str())
    } else {
        None
    };
    if !sandbox_ok {
        // with Never, a pod whose sandbox died after its containers ran is not restarted
        let ran = spec
            .containers
            .iter()
            .any(|c| observed.latest(&c.name, None).is_some());
        if policy == "Never" && sandbox.is_some() && ran {
            a.kill_pod = any_running || observed.sandboxes.iter().any(|s| s.ready);
            a.terminal = Some(Terminal::Failed);
            return a;
        }
        a.kill_pod = !observed.sandboxes.is_empty() || any_running;
        a.create_sandbox = Some(sandbox.map(|s| s.attempt + 1).unwrap_or(0));
    }

    let mut earliest: Option<Duration> = None;
    let mut note_wait = |d: Duration| earliest = Some(earliest.map_or(d, |e: Duration| e.min(d)));

    // restart an exited container, unless its back-off holds it
    let mut restart =
        |a: &mut Actions, c: &Container, kind: ContainerKind, o: &ObservedContainer| {
            let key = backoff_key(pod, &c.name);
            let event = o.exited_seen.unwrap_or(now);
            if let Some(wait) = backoff.remaining(&key, event, now) {
                a.waiting.insert(
                    c.name.clone(),
                    Waiting {
                        reason: "CrashLoopBackOff".into(),
                        message: format!(
                            "back-off {}s restarting failed container={} pod={}_{}",
                            backoff.delay(&key).as_secs(),
                            c.name,
                            pod.metadata.name.as_deref().unwrap_or(""),
                            pod.metadata.namespace.as_deref().unwrap_or("default")
                        ),
                    },
                );
                note_wait(wait);
            } else {
                backoff.next(&key, event, now);
                a.start_next(&c.name, kind, observed);
            }
        };

    // running containers whose spec changed or whose probes failed: kill (and restart at once)
    let check_running =
        |a: &mut Actions, c: &Container, kind: ContainerKind, o: &ObservedContainer| -> bool {
            let p = probes.get(&o.id).copied().unwrap_or_default();
            let reason = if o.hash != labels::container_hash(c) {
                Some(KillReason::SpecChanged)
            } else if c.startup_probe.is_some() && p.startup == Some(false) {
                Some(KillReason::StartupFailed)
            } else if c.liveness_probe.is_some() && p.liveness == Some(false) {
                Some(KillReason::LivenessFailed)
            } else {
                None
            };
            let Some(reason) = reason else { return false };
            a.kill(o, reason);
            let restart = reason == KillReason::SpecChanged
                || kind == ContainerKind::Sidecar
                || policy != "Never";
            if restart {
                a.start_next(&c.name, kind, observed);
            }
            true
        };

    // init containers, in order
    let apps_started = current_sandbox.is_some()
        && spec
            .containers
            .iter()
            .any(|c| observed.latest(&c.name, current_sandbox).is_some());
    let mut initialized = true;
    for c in spec.init_containers.iter().flatten() {
        let sidecar = c.restart_policy.as_deref() == Some("Always");
        let kind = if sidecar {
            ContainerKind::Sidecar
        } else {
            ContainerKind::Init
        };
        let o = current_sandbox.and_then(|s| observed.latest(&c.name, Some(s)));
        if !sidecar && apps_started {
            continue;
        }
        match o {
            None => {
                a.start_next(&c.name, kind, observed);
                initialized = false;
                break;
            }
            Some(o) if o.state == RunState::Created => {
                a.replace_unstarted(o, kind, observed);
                initialized = false;
                break;
            }
            Some(o) if o.state == RunState::Running => {
                if sidecar {
                    if check_running(&mut a, c, kind, o) || !is_started(c, o, probes) {
                        initialized = false;
                        break;
                    }
                } else {
                    initialized = false;
                    break;
                }
            }
            Some(o) => {
                if !sidecar && o.exit_code == 0 {
                    continue;
                }
                // an exited sidecar restarts whatever the pod's policy; a failed init container
                // restarts unless the policy is Never (then the pod failed, handled above)
                restart(&mut a, c, kind, o);
                if !(sidecar && apps_started) {
                    initialized = false;
                    break;
                }
            }
        }
    }

    if initialized {
        for c in &spec.containers {
            let o = current_sandbox.and_then(|s| observed.latest(&c.name, Some(s)));
            match o {
                None => {
                    // with OnFailure, a container that succeeded in an earlier sandbox stays done
                    let done_before = observed
                        .latest(&c.name, None)
                        .is_some_and(|o| matches!(o.state, RunState::Exited) && o.exit_code == 0);
                    if !(policy == "OnFailure" && done_before) {
                        a.start_next(&c.name, ContainerKind::App, observed);
                    }
                }
                Some(o) if o.state == RunState::Created => {
                    a.replace_unstarted(o, ContainerKind::App, observed);
                }
                Some(o) if o.state == RunState::Running => {
                    check_running(&mut a, c, ContainerKind::App, o);
                }
                Some(o) => {
                    if should_restart(policy, o.exit_code) {
                        restart(&mut a, c, ContainerKind::App, o);
                    }
                }
            }
        }
    } else {
        for c in &spec.containers {
            if current_sandbox
                .and_then(|s| observed.latest(&c.name, Some(s)))
                .is_none()
            {
                a.waiting.insert(
                    c.name.clone(),
                    Waiting {
                        reason: "PodInitializing".into(),
                        message: String::new(),
                    },
                );
            }
        }
    }
    // running containers the spec no longer names
    if let Some(sb) = current_sandbox {
        let known = |n: &str| {
            spec.containers
                .iter()
                .chain(spec.init_containers.iter().flatten())
                .any(|c| c.name == n)
        };
        for o in observed
            .containers
            .iter()
            .filter(|o| o.sandbox_id == sb && o.state == RunState::Running)
        {
            if !known(&o.name) {
                a.kill(o, KillReason::NotInSpec);
            }
        }
    }
    a.requeue_after = earliest;
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(extra_spec: &str) -> Pod {
        serde_saphyr::from_str(&format!(
            "metadata: {{name: p, namespace: default, uid: u}}\nspec:\n{extra_spec}"
        ))
        .unwrap()
    }

    const TWO: &str = "  containers:\n  - {name: a, image: i}\n  - {name: b, image: i}\n";
    const INIT: &str = "  initContainers:\n  - {name: i1, image: i}\n  - {name: i2, image: i}\n  containers:\n  - {name: a, image: i}\n";
    const SIDECAR: &str = "  initContainers:\n  - {name: side, image: i, restartPolicy: Always}\n  - {name: i1, image: i}\n  containers:\n  - {name: a, image: i}\n";

    fn sandbox(p: &Pod) -> ObservedSandbox {
        ObservedSandbox {
            id: "s1".into(),
            ready: true,
            attempt: 0,
            hash: labels::sandbox_hash(p),
            created_at: 1,
            ips: vec!["10.0.0.2".into()],
        }
    }

    /// A container of `p` named `name` in state `state` (`running`, `exited:N`, `created`), attempt `attempt`.
    fn ctr(p: &Pod, name: &str, state: &str, attempt: u32) -> ObservedContainer {
        let spec = p.spec.as_ref().unwrap();
        let c = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .find(|c| c.name == name)
            .unwrap();
        let (state, exit_code) = match state.split_once(':') {
            Some((_, code)) => (RunState::Exited, code.parse().unwrap()),
            None if state == "running" => (RunState::Running, 0),
            None => (RunState::Created, 0),
        };
        ObservedContainer {
            id: format!("{name}-{attempt}"),
            name: name.into(),
            sandbox_id: "s1".into(),
            state,
            hash: labels::container_hash(c),
            attempt,
            created_at: attempt as i64 + 1,
            started_at: 1,
            finished_at: 0,
            exit_code,
            reason: String::new(),
            message: String::new(),
            image: "i".into(),
            image_ref: String::new(),
            exited_seen: None,
        }
    }

    fn starts(a: &Actions) -> Vec<String> {
        a.start
            .iter()
            .map(|s| format!("{}#{}", s.name, s.attempt))
            .collect()
    }
    fn kills(a: &Actions) -> Vec<String> {
        a.kill
            .iter()
            .map(|k| format!("{}:{:?}", k.id, k.reason))
            .collect()
    }

    /// What the runtime has, in a compact notation: `name=state` per container (`running`,
    /// `exited:N`, `created`; `~old` when it was created from another spec), `-sandbox` when
    /// the sandbox is gone (not ready), `probe:ID:startup+,live-` for probe results.
    fn observe(p: &Pod, notation: &str) -> (ObservedPod, ProbeResults) {
        let mut observed = ObservedPod::default();
        let mut probes = ProbeResults::new();
        let mut ready = true;
        for token in notation.split_whitespace() {
            if token == "-sandbox" {
                ready = false;
            } else if let Some(rest) = token.strip_prefix("probe:") {
                let (id, results) = rest.split_once(':').unwrap();
                let mut status = ProbeStatus::default();
                for r in results.split(',') {
                    let (kind, ok) = r.split_at(r.len() - 1);
                    let ok = Some(ok == "+");
                    match kind {
                        "startup" => status.startup = ok,
                        "live" => status.liveness = ok,
                        other => panic!("probe kind {other}"),
                    }
                }
                probes.insert(id.to_string(), status);
            } else {
                let (name, state) = token.split_once('=').unwrap();
                let (state, old) = match state.strip_suffix("~old") {
                    Some(s) => (s, true),
                    None => (state, false),
                };
                let mut o = ctr(p, name, state, 0);
                if old {
                    o.hash = "old".into();
                }
                observed.containers.push(o);
            }
        }
        if ready || !observed.containers.is_empty() {
            observed.sandboxes.push(ObservedSandbox {
                ready,
                ..sandbox(p)
            });
        }
        (observed, probes)
    }

    /// The actions in the notation of the expectations: `killpod`, `sandbox:ATTEMPT`,
    /// `kill:ID:REASON`, `start:NAME#ATTEMPT`, `terminal:KIND`, in that order.
    fn describe(a: &Actions) -> String {
        let mut out: Vec<String> = vec![];
        out.extend(a.kill_pod.then(|| "killpod".to_string()));
        out.extend(a.create_sandbox.map(|n| format!("sandbox:{n}")));
        out.extend(kills(a).into_iter().map(|k| format!("kill:{k}")));
        out.extend(starts(a).into_iter().map(|s| format!("start:{s}")));
        out.extend(a.terminal.map(|t| format!("terminal:{t:?}")));
        out.join(" ")
    }

    /// The reconcile's transitions: `case | spec | observed | expected actions`, the spec by name
    /// (`never:`/`onfailure:` prefix a restart policy), the rest in the notations of [`observe`]
    /// and [`describe`].
    const TRANSITIONS: &str = "
        new pod: sandbox and every app container | TWO | -sandbox | sandbox:0 start:a#0 start:b#0
        new pod with init: the first init container only | INIT | -sandbox | sandbox:0 start:i1#0
        init running: wait | INIT | i1=running |
        init done: the next one | INIT | i1=exited:0 | start:i2#0
        all init done: app containers | INIT | i1=exited:0 i2=exited:0 | start:a#0
        init failed: restart it (Always) | INIT | i1=exited:1 | start:i1#1
        init failed under Never: the pod failed | never:INIT | i1=exited:1 | killpod terminal:Failed
        init gone but app started: nothing | INIT | a=running |
        sidecar starts first | SIDECAR | -sandbox | sandbox:0 start:side#0
        sidecar running: next init container | SIDECAR | side=running | start:i1#0
        exited sidecar restarts even with Never | never:SIDECAR | side=exited:1 i1=exited:0 a=running | start:side#1
        all running: nothing | TWO | a=running b=running |
        crashed: restart (Always) | TWO | a=running b=exited:1 | start:b#1
        completed: restart (Always) | TWO | a=running b=exited:0 | start:b#1
        completed: stays (OnFailure) | onfailure:TWO | a=running b=exited:0 |
        failed: restart (OnFailure) | onfailure:TWO | a=running b=exited:2 | start:b#1
        failed: stays (Never) | never:TWO | a=running b=exited:2 |
        all done (Never): succeeded, sandbox stopped | never:TWO | a=exited:0 b=exited:0 | killpod terminal:Succeeded
        one failed (Never): failed | never:TWO | a=exited:0 b=exited:3 | killpod terminal:Failed
        all succeeded (OnFailure): succeeded | onfailure:TWO | a=exited:0 b=exited:0 | killpod terminal:Succeeded
        spec changed: kill and recreate | NEW_IMAGE | a=running~old | kill:a-0:SpecChanged start:a#1
        liveness failed: kill and restart | PROBED | a=running probe:a-0:startup+,live- | kill:a-0:LivenessFailed start:a#1
        liveness failed under Never: kill only | never:PROBED | a=running probe:a-0:live- | kill:a-0:LivenessFailed
        startup failed: kill and restart | PROBED | a=running probe:a-0:startup- | kill:a-0:StartupFailed start:a#1
        startup passed: nothing | PROBED | a=running probe:a-0:startup+ |
        created but never started: replace | TWO | a=created b=running | kill:a-0:NeverStarted start:a#1
        sandbox died: new sandbox, containers again | TWO | -sandbox a=exited:137 b=exited:137 | killpod sandbox:1 start:a#1 start:b#1
        sandbox died under Never: failed | never:TWO | -sandbox a=exited:137 b=exited:0 | terminal:Failed
    ";

    fn spec_named(name: &str) -> String {
        let (policy, name) = match name.split_once(':') {
            Some(("never", n)) => ("  restartPolicy: Never\n", n),
            Some(("onfailure", n)) => ("  restartPolicy: OnFailure\n", n),
            _ => ("", name),
        };
        let spec = match name {
            "TWO" => TWO,
            "INIT" => INIT,
            "SIDECAR" => SIDECAR,
            "PROBED" => {
                "  containers:\n  - {name: a, image: i, livenessProbe: {exec: {command: [x]}}, startupProbe: {exec: {command: [x]}}}\n"
            }
            "NEW_IMAGE" => "  containers:\n  - {name: a, image: new}\n",
            other => panic!("no spec {other}"),
        };
        format!("{policy}{spec}")
    }

    #[test]
    fn transitions() {
        for row in TRANSITIONS.lines().filter(|l| !l.trim().is_empty()) {
            let cols: Vec<&str> = row.split('|').map(str::trim).collect();
            let [case, spec, observed, expected] = cols[..] else {
                panic!("bad row {row:?}");
            };
            let p = pod(&spec_named(spec));
            let (observed, probes) = observe(&p, observed);
            let mut backoff = Backoff::default();
            let a = compute_actions(&p, &observed, &probes, Instant::now(), &mut backoff);
            assert_eq!(describe(&a), expected, "{case}");
        }
    }

    #[test]
    fn a_container_dropped_from_the_spec_is_killed() {
        let two = pod(TWO);
        let one = pod("  containers:\n  - {name: a, image: i}\n");
        let observed = ObservedPod {
            sandboxes: vec![sandbox(&one)],
            containers: vec![ctr(&two, "a", "running", 0), ctr(&two, "b", "running", 0)],
        };
        let a = compute_actions(
            &one,
            &observed,
            &ProbeResults::new(),
            Instant::now(),
            &mut Backoff::default(),
        );
        assert_eq!(kills(&a), ["b-0:NotInSpec"]);
        assert!(a.start.is_empty());
    }

    #[test]
    fn sandbox_config_change_recreates_the_sandbox() {
        let p = pod(TWO);
        let mut s = sandbox(&p);
        s.hash = "other".into();
        let observed = ObservedPod {
            sandboxes: vec![s],
            containers: vec![ctr(&p, "a", "running", 0), ctr(&p, "b", "running", 0)],
        };
        let a = compute_actions(
            &p,
            &observed,
            &ProbeResults::new(),
            Instant::now(),
            &mut Backoff::default(),
        );
        assert!(a.kill_pod);
        assert_eq!(a.create_sandbox, Some(1));
        assert_eq!(starts(&a), ["a#1", "b#1"]);
    }

    #[test]
    fn crash_loop_backs_off() {
        let p = pod(TWO);
        let t0 = Instant::now();
        let mut backoff = Backoff::default();
        let mut observed = ObservedPod {
            sandboxes: vec![sandbox(&p)],
            containers: vec![ctr(&p, "a", "running", 0)],
        };
        let mut b = ctr(&p, "b", "exited:1", 0);
        b.exited_seen = Some(t0);
        observed.containers.push(b.clone());
        let probes = ProbeResults::new();
        // first crash: restarted at once
        let a = compute_actions(&p, &observed, &probes, t0, &mut backoff);
        assert_eq!(starts(&a), ["b#1"]);
        // it crashes again right away: 10 s of CrashLoopBackOff
        let mut b1 = ctr(&p, "b", "exited:1", 1);
        b1.exited_seen = Some(t0);
        observed.containers.push(b1);
        let a = compute_actions(&p, &observed, &probes, t0, &mut backoff);
        assert!(a.start.is_empty());
        assert_eq!(a.waiting["b"].reason, "CrashLoopBackOff");
        assert_eq!(a.requeue_after, Some(Duration::from_secs(10)));
        let a = compute_actions(
            &p,
            &observed,
            &probes,
            t0 + Duration::from_secs(4),
            &mut backoff,
        );
        assert_eq!(a.requeue_after, Some(Duration::from_secs(6)));
        let a = compute_actions(
            &p,
            &observed,
            &probes,
            t0 + Duration::from_secs(10),
            &mut backoff,
        );
        assert_eq!(starts(&a), ["b#2"]);
        assert_eq!(
            backoff.delay(&backoff_key(&p, "b")),
            Duration::from_secs(20)
        );
    }
}
