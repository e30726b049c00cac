//! The pod worker: one task per pod that observes the runtime, runs the reconcile, carries out
//! its actions (sandbox, image pulls, containers, hooks, probes) and publishes the status when it
//! changed; on deletion it terminates the pod gracefully (preStop, stop with the remaining grace,
//! remove the sandbox).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use node_core::{ImageBackend, PodRef, RuntimeBackend, StatusSink, cri};
use tokio::sync::mpsc;

use crate::node::logrotate::remove_container_and_logs;
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::cri_config::{self, CriSettings, PodRuntimeInfo, ValueStore};
use crate::labels;
use crate::node::hooks::{NodeHooks, PodSetup, PodStop};
use crate::probe::{Handler, ProbeWorkers, Target, run_handler};
use crate::reconcile::{
    Actions, ContainerKind, KillReason, ObservedContainer, ObservedPod, ObservedSandbox, RunState,
    Waiting, backoff_key, compute_actions,
};
use crate::status::{StatusInput, now_time, pod_status};

/// What every pod worker shares.
pub(crate) struct Shared {
    pub runtime: Arc<dyn RuntimeBackend>,
    pub images: Arc<dyn ImageBackend>,
    pub sink: Arc<dyn StatusSink>,
    pub store: Arc<dyn ValueStore>,
    pub node: Arc<dyn NodeHooks>,
    pub settings: CriSettings,
    pub runtime_name: String,
    pub host_ip: Option<String>,
    pub sync_period: Duration,
    pub backoff: crate::backoff::BackoffConfig,
    pub image_backoff: crate::backoff::BackoffConfig,
    pub states: crate::state::PodStates,
}

/// A message to a pod worker.
#[derive(Debug)]
pub(crate) enum WorkerMsg {
    /// The pod's spec changed.
    Update(Box<Pod>),
    /// Something changed in the runtime: sync now.
    Sync,
    /// The pod was deleted from its source: terminate it and end.
    Terminate,
    /// The node stops the pod (eviction, shutdown): stop it and keep it Failed.
    Stop(PodStop),
}

pub(crate) struct PodWorker {
    shared: Arc<Shared>,
    pod: Pod,
    pod_ref: PodRef,
    backoff: Backoff,
    pull_backoff: Backoff,
    pull_failed_at: HashMap<String, Instant>,
    probes: ProbeWorkers,
    probe_wake: mpsc::UnboundedReceiver<()>,
    exited_seen: HashMap<String, Instant>,
    /// Image pull and config errors, by container name.
    errors: BTreeMap<String, Waiting>,
    /// Containers whose postStart hook ran (by id).
    post_started: HashSet<String>,
    last_status: Option<PodStatus>,
    start_time: Option<Time>,
    extra_wake: Option<Duration>,
    /// Whether the first observation (adoption) is done.
    adopted: bool,
    /// The pod's cgroup and volumes, from the node hooks.
    setup: PodSetup,
    /// Rejected at admission or stopped by the node: (reason, message) of its Failed status.
    ended: Option<(String, String)>,
}

fn grace_period(pod: &Pod) -> Duration {
    let secs = pod
        .metadata
        .deletion_grace_period_seconds
        .or(pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds))
        .unwrap_or(30);
    Duration::from_secs(secs.max(0) as u64)
}

fn find_container<'a>(pod: &'a Pod, name: &str) -> Option<&'a Container> {
    let spec = pod.spec.as_ref()?;
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == name)
}

impl PodWorker {
    pub(crate) fn new(shared: Arc<Shared>, pod: Pod) -> Self {
        let ended = admit(&shared, &pod);
        shared.states.set_pod(&pod);
        let (wake_tx, wake_rx) = mpsc::unbounded_channel();
        Self {
            pod_ref: PodRef::of(&pod),
            backoff: Backoff::new(shared.backoff),
            pull_backoff: Backoff::new(shared.image_backoff),
            shared,
            pod,
            pull_failed_at: HashMap::new(),
            probes: ProbeWorkers::new(wake_tx),
            probe_wake: wake_rx,
            exited_seen: HashMap::new(),
            errors: BTreeMap::new(),
            post_started: HashSet::new(),
            last_status: None,
            start_time: None,
            extra_wake: None,
            adopted: false,
            setup: PodSetup::default(),
            ended,
        }
    }

    /// Run until terminated or until the kubelet stops (the channel closes: containers keep
    /// running, to be adopted by the next kubelet).
    pub(crate) async fn run(mut self, mut rx: mpsc::UnboundedReceiver<WorkerMsg>) {
        let mut wait = self.sync().await;
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    None => {
                        self.probes.stop_all();
                        return;
                    }
                    Some(WorkerMsg::Update(p)) => {
                        self.pod_ref = PodRef::of(&p);
                        self.pod = *p;
                        self.shared.states.set_pod(&self.pod);
                    }
                    Some(WorkerMsg::Sync) => {}
                    Some(WorkerMsg::Terminate) => {
                        self.terminate().await;
                        return;
                    }
                    Some(WorkerMsg::Stop(stop)) => self.stop_for_node(stop).await,
                },
                Some(()) = self.probe_wake.recv() => {}
                _ = tokio::time::sleep(wait) => {}
            }
            wait = self.sync().await;
        }
    }

    /// What the runtime has for this pod.
    pub(crate) async fn observe(&mut self) -> Result<ObservedPod, node_core::RuntimeError> {
        let rt = &self.shared.runtime;
        let selector = HashMap::from([(labels::POD_UID.to_string(), self.pod_ref.uid.clone())]);
        let filter = cri::PodSandboxFilter {
            label_selector: selector.clone(),
            ..Default::default()
        };
        let mut observed = ObservedPod::default();
        for sb in rt.list_pod_sandbox(Some(filter)).await? {
            let status = match rt.pod_sandbox_status(&sb.id, false).await {
                Ok(s) => s.status.unwrap_or_default(),
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e),
            };
            let mut ips = vec![];
            if let Some(n) = &status.network {
                if !n.ip.is_empty() {
                    ips.push(n.ip.clone());
                }
                ips.extend(n.additional_ips.iter().map(|i| i.ip.clone()));
            }
            observed.sandboxes.push(ObservedSandbox {
                id: sb.id.clone(),
                ready: sb.state == cri::PodSandboxState::SandboxReady as i32,
                attempt: sb.metadata.as_ref().map(|m| m.attempt).unwrap_or(0),
                hash: sb
                    .annotations
                    .get(labels::SANDBOX_HASH)
                    .cloned()
                    .unwrap_or_default(),
                created_at: sb.created_at,
                ips,
            });
        }
        let filter = cri::ContainerFilter {
            label_selector: selector,
            ..Default::default()
        };
        let now = Instant::now();
        let mut seen = HashSet::new();
        for c in rt.list_containers(Some(filter)).await? {
            let s = match rt.container_status(&c.id, false).await {
                Ok(s) => s.status.unwrap_or_default(),
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e),
            };
            let state = match cri::ContainerState::try_from(s.state) {
                Ok(cri::ContainerState::ContainerCreated) => RunState::Created,
                Ok(cri::ContainerState::ContainerRunning) => RunState::Running,
                Ok(cri::ContainerState::ContainerExited) => RunState::Exited,
                _ => RunState::Unknown,
            };
            seen.insert(c.id.clone());
            let exited_seen = matches!(state, RunState::Exited | RunState::Unknown)
                .then(|| *self.exited_seen.entry(c.id.clone()).or_insert(now));
            observed.containers.push(ObservedContainer {
                id: c.id.clone(),
                name: c
                    .labels
                    .get(labels::CONTAINER_NAME)
                    .cloned()
                    .unwrap_or_default(),
                sandbox_id: c.pod_sandbox_id.clone(),
                state,
                hash: c
                    .annotations
                    .get(labels::CONTAINER_HASH)
                    .cloned()
                    .unwrap_or_default(),
                attempt: c.metadata.as_ref().map(|m| m.attempt).unwrap_or(0),
                created_at: s.created_at,
                started_at: s.started_at,
                finished_at: s.finished_at,
                exit_code: s.exit_code,
                reason: s.reason.clone(),
                message: s.message.clone(),
                image: s.image.map(|i| i.image).unwrap_or_default(),
                image_ref: s.image_ref.clone(),
                exited_seen,
            });
        }
        self.exited_seen.retain(|id, _| seen.contains(id));
        self.post_started.retain(|id| seen.contains(id));
        Ok(observed)
    }

    fn target(&self, observed: &ObservedPod, container_id: &str, spec: &Container) -> Target {
        Target {
            runtime: self.shared.runtime.clone(),
            container_id: container_id.to_string(),
            pod_ip: self.pod_ip(observed),
            ports: spec.ports.clone().unwrap_or_default(),
        }
    }

    fn pod_ip(&self, observed: &ObservedPod) -> Option<String> {
        let host_network = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        if host_network {
            return self
                .shared
                .host_ip
                .clone()
                .or_else(|| Some("127.0.0.1".into()));
        }
        observed
            .latest_sandbox()
            .and_then(|s| s.ips.first().cloned())
    }

    fn ensure_probes(&mut self, observed: &ObservedPod) {
        let mut live = HashSet::new();
        for o in observed
            .containers
            .iter()
            .filter(|o| o.state == RunState::Running)
        {
            live.insert(o.id.clone());
            if let Some(spec) = find_container(&self.pod, &o.name).cloned()
                && o.hash == labels::container_hash(&spec)
            {
                let t = self.target(observed, &o.id, &spec);
                self.probes.ensure(&spec, t);
            }
        }
        self.probes.retain(&live);
    }

    /// One sync: observe, reconcile, act (up to a few rounds), publish. Returns when to sync again.
    pub(crate) async fn sync(&mut self) -> Duration {
        if self.start_time.is_none() {
            self.start_time = Some(now_time());
        }
        self.extra_wake = None;
        let mut may_act = self.prepare_node().await;
        for round in 0..4 {
            let observed = match self.observe().await {
                Ok(o) => o,
                Err(e) => {
                    tracing::warn!(pod = %self.pod_ref, error = %e, "cannot observe the runtime; retrying");
                    return Duration::from_secs(1);
                }
            };
            if !self.adopted {
                // containers already running were started (and hooked) by an earlier kubelet
                self.adopted = true;
                let running = observed
                    .containers
                    .iter()
                    .filter(|c| c.state == RunState::Running);
                self.post_started.extend(running.map(|c| c.id.clone()));
            }
            self.ensure_probes(&observed);
            let probes = self.probes.results();
            let act = may_act && round < 3;
            // a round that will not act must not consume back-off steps
            let actions = if act {
                compute_actions(
                    &self.pod,
                    &observed,
                    &probes,
                    Instant::now(),
                    &mut self.backoff,
                )
            } else {
                compute_actions(
                    &self.pod,
                    &observed,
                    &probes,
                    Instant::now(),
                    &mut self.backoff.clone(),
                )
            };
            if act && !actions.is_noop() {
                let errors_before = self.errors.clone();
                if self.execute(&observed, &actions).await {
                    // a new error (pull, config) is shown before anything is retried
                    may_act =
                        self.errors == errors_before || self.errors.len() < errors_before.len();
                    continue;
                }
            }
            self.run_post_start_hooks(&observed).await;
            self.publish(&observed, &actions).await;
            let mut wait = self.shared.sync_period;
            for w in actions.requeue_after.into_iter().chain(self.extra_wake) {
                wait = wait.min(w);
            }
            return wait;
        }
        Duration::from_millis(100)
    }

    async fn publish(&mut self, observed: &ObservedPod, actions: &Actions) {
        let probes = self.probes.results();
        let mut waiting = actions.waiting.clone();
        for (k, v) in &self.errors {
            waiting.insert(k.clone(), v.clone());
        }
        let mut status = pod_status(&StatusInput {
            pod: &self.pod,
            observed,
            probes: &probes,
            waiting: &waiting,
            terminal: actions.terminal,
            runtime_name: &self.shared.runtime_name,
            host_ip: self.shared.host_ip.as_deref(),
            start_time: self.start_time.clone(),
            previous: self.last_status.as_ref(),
            now: now_time(),
        });
        if let Some((reason, message)) = &self.ended {
            status.phase = Some("Failed".into());
            status.reason = Some(reason.clone());
            status.message = Some(message.clone());
        }
        if self.last_status.as_ref() == Some(&status) {
            return;
        }
        match self.shared.sink.pod_status(&self.pod_ref, &status).await {
            Ok(()) => {
                self.shared.states.set_status(&self.pod_ref, &status);
                self.last_status = Some(status);
            }
            Err(e) => {
                tracing::warn!(pod = %self.pod_ref, error = %e, "cannot write the pod status; retrying");
                self.extra_wake = Some(Duration::from_secs(1));
            }
        }
    }

    /// Carry out the actions; returns whether anything was done to the runtime.
    async fn execute(&mut self, observed: &ObservedPod, actions: &Actions) -> bool {
        let rt = self.shared.runtime.clone();
        let mut acted = false;
        let grace = grace_period(&self.pod);
        if actions.kill_pod {
            acted = true;
            self.probes.stop_all();
            for c in observed
                .containers
                .iter()
                .filter(|c| c.state == RunState::Running)
            {
                if let Err(e) = rt.stop_container(&c.id, grace).await {
                    tracing::warn!(pod = %self.pod_ref, container = %c.name, error = %e, "stop failed");
                }
            }
            for s in &observed.sandboxes {
                if let Err(e) = rt.stop_pod_sandbox(&s.id).await {
                    tracing::warn!(pod = %self.pod_ref, sandbox = %s.id, error = %e, "stopping the sandbox failed");
                }
            }
            // keep the newest old sandbox (its containers give the restart counts and last states)
            let newest = observed.latest_sandbox().map(|s| s.id.clone());
            for s in observed
                .sandboxes
                .iter()
                .filter(|s| Some(&s.id) != newest.as_ref())
            {
                let _ = rt.remove_pod_sandbox(&s.id).await;
            }
        }
        let mut sandbox_id = observed
            .latest_sandbox()
            .filter(|s| s.ready)
            .map(|s| s.id.clone());
        let mut pod_ips: Vec<String> = observed
            .latest_sandbox()
            .map(|s| s.ips.clone())
            .unwrap_or_default();
        let mut sandbox_config = None;
        if let Some(attempt) = actions.create_sandbox {
            acted = true;
            let config = self.sandbox_config(attempt);
            let handler = self
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.runtime_class_name.clone())
                .unwrap_or_default();
            let req = cri::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: handler,
            };
            match rt.run_pod_sandbox(req).await {
                Ok(id) => {
                    if let Ok(s) = rt.pod_sandbox_status(&id, false).await {
                        pod_ips = s
                            .status
                            .and_then(|s| s.network)
                            .map(|n| vec![n.ip])
                            .unwrap_or_default();
                        pod_ips.retain(|ip| !ip.is_empty());
                    }
                    tracing::info!(pod = %self.pod_ref, sandbox = %id, "sandbox created");
                    sandbox_id = Some(id);
                    sandbox_config = Some(config);
                }
                Err(e) => {
                    tracing::warn!(pod = %self.pod_ref, error = %e, "cannot create the pod sandbox");
                    self.extra_wake = Some(Duration::from_secs(2));
                    return false;
                }
            }
        }
        for k in &actions.kill {
            acted = true;
            let spec = find_container(&self.pod, &k.name)
                .cloned()
                .unwrap_or_default();
            let running = observed
                .containers
                .iter()
                .any(|c| c.id == k.id && c.state == RunState::Running);
            tracing::info!(pod = %self.pod_ref, container = %k.name, reason = ?k.reason, "killing container");
            let mut remaining = grace;
            if running && k.reason != KillReason::NeverStarted {
                remaining = self.run_pre_stop(observed, &k.id, &spec, grace).await;
            }
            if let Err(e) = rt.stop_container(&k.id, remaining).await {
                tracing::warn!(pod = %self.pod_ref, container = %k.name, error = %e, "stop failed");
            }
            if k.reason == KillReason::NeverStarted {
                let _ = remove_container_and_logs(rt.as_ref(), &k.id).await;
            }
        }
        let Some(sandbox_id) = sandbox_id else {
            return acted;
        };
        let sandbox_config = sandbox_config.unwrap_or_else(|| {
            self.sandbox_config(observed.latest_sandbox().map(|s| s.attempt).unwrap_or(0))
        });
        for s in &actions.start {
            let Some(spec) = find_container(&self.pod, &s.name).cloned() else {
                continue;
            };
            if self
                .start_container(&spec, s.attempt, &sandbox_id, &sandbox_config, &pod_ips)
                .await
            {
                acted = true;
                self.gc_instances(observed, &s.name).await;
            }
            if s.kind == ContainerKind::Init {
                break;
            }
        }
        acted
    }

    /// Remove the instances of `name` older than the newest one before the new start.
    async fn gc_instances(&self, observed: &ObservedPod, name: &str) {
        let mut old: Vec<&ObservedContainer> = observed
            .containers
            .iter()
            .filter(|c| c.name == name && c.state != RunState::Running)
            .collect();
        old.sort_by_key(|c| (c.attempt, c.created_at));
        if old.len() > 1 {
            for c in &old[..old.len() - 1] {
                let _ = remove_container_and_logs(self.shared.runtime.as_ref(), &c.id).await;
            }
        }
    }

    fn pull_auth(&self, image: &str) -> Option<cri::AuthConfig> {
        let spec = self.pod.spec.as_ref()?;
        let names: Vec<String> = spec
            .image_pull_secrets
            .iter()
            .flatten()
            .map(|s| s.name.clone())
            .collect();
        pull_auth(
            image,
            &self.pod_ref.namespace,
            &names,
            self.shared.store.as_ref(),
        )
    }

    /// Make the image present per the pull policy; the waiting reason when it is not.
    async fn ensure_image(
        &mut self,
        c: &Container,
        sandbox_config: &cri::PodSandboxConfig,
    ) -> Result<(), Waiting> {
        let image = c.image.clone().unwrap_or_default();
        let spec = cri::ImageSpec {
            image: image.clone(),
            user_specified_image: image.clone(),
            ..Default::default()
        };
        let policy = c
            .image_pull_policy
            .clone()
            .unwrap_or_else(|| default_pull_policy(&image).into());
        let present = match self.shared.images.image_status(spec.clone(), false).await {
            Ok(s) => s.image.is_some(),
            Err(_) => false,
        };
        match policy.as_str() {
            "Never" if present => return Ok(()),
            "Never" => {
                return Err(Waiting {
                    reason: "ErrImageNeverPull".into(),
                    message: format!(
                        "Container image \"{image}\" is not present with pull policy of Never"
                    ),
                });
            }
            "IfNotPresent" if present => return Ok(()),
            _ => {}
        }
        let key = format!("{}/image", backoff_key(&self.pod, &c.name));
        let now = Instant::now();
        if let Some(failed) = self.pull_failed_at.get(&key)
            && let Some(wait) = self.pull_backoff.remaining(&key, *failed, now)
        {
            self.extra_wake = Some(self.extra_wake.map_or(wait, |w| w.min(wait)));
            return Err(Waiting {
                reason: "ImagePullBackOff".into(),
                message: format!("Back-off pulling image \"{image}\""),
            });
        }
        let auth = self.pull_auth(&image);
        match self
            .shared
            .images
            .pull_image(spec, auth, Some(sandbox_config.clone()))
            .await
        {
            Ok(_) => {
                self.pull_backoff.forget(&key);
                self.pull_failed_at.remove(&key);
                Ok(())
            }
            Err(e) => {
                self.pull_backoff.next(&key, now, now);
                self.pull_failed_at.insert(key.clone(), now);
                self.extra_wake = Some(self.pull_backoff.delay(&key));
                tracing::warn!(pod = %self.pod_ref, container = %c.name, %image, error = %e, "image pull failed");
                Err(Waiting {
                    reason: "ErrImagePull".into(),
                    message: e.to_string(),
                })
            }
        }
    }

    /// Pull, create and start one container; returns whether it started.
    async fn start_container(
        &mut self,
        c: &Container,
        attempt: u32,
        sandbox_id: &str,
        sandbox_config: &cri::PodSandboxConfig,
        pod_ips: &[String],
    ) -> bool {
        if let Err(w) = self.ensure_image(c, sandbox_config).await {
            self.errors.insert(c.name.clone(), w);
            return false;
        }
        // the runtime writes the container's log under the pod log directory, which the kubelet makes
        let log_dir =
            cri_config::pod_log_dir(&self.shared.settings.pod_log_root, &self.pod).join(&c.name);
        if let Err(e) = std::fs::create_dir_all(&log_dir) {
            tracing::warn!(pod = %self.pod_ref, dir = %log_dir.display(), error = %e, "cannot create the container log directory");
        }
        let info = PodRuntimeInfo {
            pod_ips: pod_ips.to_vec(),
            host_ip: self.shared.host_ip.clone(),
        };
        let config = cri_config::container_config(
            &self.pod,
            c,
            attempt,
            &info,
            self.shared.store.as_ref(),
            &self.shared.settings,
        )
        .map_err(|e| e.to_string())
        .and_then(|mut config| {
            let mounts = self.shared.node.container_mounts(&self.pod, &self.setup, c);
            config.mounts.extend(mounts.map_err(|e| e.to_string())?);
            Ok(config)
        });
        let config = match config {
            Ok(config) => config,
            Err(message) => {
                self.errors.insert(
                    c.name.clone(),
                    Waiting {
                        reason: "CreateContainerConfigError".into(),
                        message,
                    },
                );
                self.extra_wake = Some(Duration::from_secs(2));
                return false;
            }
        };
        let rt = &self.shared.runtime;
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: sandbox_id.to_string(),
            config: Some(config),
            sandbox_config: Some(sandbox_config.clone()),
        };
        let id = match rt.create_container(req).await {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!(pod = %self.pod_ref, container = %c.name, attempt, error = %e, "cannot create the container");
                self.errors.insert(
                    c.name.clone(),
                    Waiting {
                        reason: "CreateContainerError".into(),
                        message: e.to_string(),
                    },
                );
                self.extra_wake = Some(Duration::from_secs(2));
                return false;
            }
        };
        if let Err(e) = rt.start_container(&id).await {
            tracing::warn!(pod = %self.pod_ref, container = %c.name, %id, attempt, error = %e, "cannot start the container");
            self.errors.insert(
                c.name.clone(),
                Waiting {
                    reason: "RunContainerError".into(),
                    message: e.to_string(),
                },
            );
            self.extra_wake = Some(Duration::from_secs(2));
            let _ = remove_container_and_logs(rt.as_ref(), &id).await;
            return false;
        }
        tracing::info!(pod = %self.pod_ref, container = %c.name, %id, attempt, "container started");
        self.errors.remove(&c.name);
        true
    }

    /// Run the postStart hook of containers that just started (once per container).
    async fn run_post_start_hooks(&mut self, observed: &ObservedPod) {
        for o in observed
            .containers
            .iter()
            .filter(|o| o.state == RunState::Running)
        {
            if self.post_started.contains(&o.id) {
                continue;
            }
            self.post_started.insert(o.id.clone());
            let Some(spec) = find_container(&self.pod, &o.name).cloned() else {
                continue;
            };
            let Some(hook) = spec
                .lifecycle
                .as_ref()
                .and_then(|l| l.post_start.as_ref())
                .and_then(Handler::of_hook)
            else {
                continue;
            };
            let t = self.target(observed, &o.id, &spec);
            if let Err(why) = run_handler(&hook, &t, grace_period(&self.pod)).await {
                tracing::warn!(pod = %self.pod_ref, container = %o.name, %why, "postStart hook failed; killing the container");
                let _ = self
                    .shared
                    .runtime
                    .stop_container(&o.id, Duration::from_secs(2))
                    .await;
                self.errors.insert(
                    o.name.clone(),
                    Waiting {
                        reason: "PostStartHookError".into(),
                        message: why,
                    },
                );
            }
        }
    }

    /// Run the preStop hook of a container within the grace period; returns the grace left.
    async fn run_pre_stop(
        &self,
        observed: &ObservedPod,
        id: &str,
        spec: &Container,
        grace: Duration,
    ) -> Duration {
        let Some(hook) = spec
            .lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.as_ref())
            .and_then(Handler::of_hook)
        else {
            return grace;
        };
        let started = Instant::now();
        let t = self.target(observed, id, spec);
        match tokio::time::timeout(grace, run_handler(&hook, &t, Duration::ZERO)).await {
            Ok(Ok(())) => {}
            Ok(Err(why)) => {
                tracing::warn!(pod = %self.pod_ref, container = %spec.name, %why, "preStop hook failed")
            }
            Err(_) => {
                tracing::warn!(pod = %self.pod_ref, container = %spec.name, "preStop hook did not finish within the grace period")
            }
        }
        grace
            .saturating_sub(started.elapsed())
            .max(Duration::from_secs(2))
    }

    /// Terminate the pod: preStop hooks and stops (in parallel, within the grace period), then
    /// stop and remove its sandboxes, then report it gone.
    pub(crate) async fn terminate(&mut self) {
        self.probes.stop_all();
        let grace = grace_period(&self.pod);
        tracing::info!(pod = %self.pod_ref, ?grace, "terminating pod");
        // seen as terminating at once (endpoints computed from the states drop it now)
        if self.pod.metadata.deletion_timestamp.is_none() {
            let mut pod = self.pod.clone();
            pod.metadata.deletion_timestamp = Some(crate::status::now_time());
            self.shared.states.set_pod(&pod);
        }
        let observed = self.stop_running(grace).await;
        for s in &observed.sandboxes {
            if let Err(e) = self.shared.runtime.stop_pod_sandbox(&s.id).await {
                tracing::warn!(pod = %self.pod_ref, error = %e, "stopping the sandbox failed");
            }
            if let Err(e) = self.shared.runtime.remove_pod_sandbox(&s.id).await {
                tracing::warn!(pod = %self.pod_ref, error = %e, "removing the sandbox failed");
            }
        }
        self.shared.node.pod_removed(&self.pod).await;
        let log_dir = cri_config::pod_log_dir(&self.shared.settings.pod_log_root, &self.pod);
        if let Err(e) = std::fs::remove_dir_all(&log_dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(pod = %self.pod_ref, dir = %log_dir.display(), error = %e, "cannot remove the pod log directory");
        }
        if let Err(e) = self.shared.sink.pod_deleted(&self.pod_ref).await {
            tracing::warn!(pod = %self.pod_ref, error = %e, "cannot report the pod deleted");
        }
        self.shared.states.remove(&self.pod_ref);
        tracing::info!(pod = %self.pod_ref, "pod terminated");
    }

    /// Run the preStop hooks and stop the running containers (in parallel, within `grace`);
    /// returns what was observed before.
    async fn stop_running(&mut self, grace: Duration) -> ObservedPod {
        let observed = match self.observe().await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(pod = %self.pod_ref, error = %e, "cannot observe the runtime while stopping");
                ObservedPod::default()
            }
        };
        let running: Vec<&ObservedContainer> = observed
            .containers
            .iter()
            .filter(|c| c.state == RunState::Running)
            .collect();
        let this = &*self;
        let stops = running.iter().map(|c| {
            let spec = find_container(&this.pod, &c.name).cloned().unwrap_or_default();
            let observed = &observed;
            async move {
                let remaining = this.run_pre_stop(observed, &c.id, &spec, grace).await;
                if let Err(e) = this.shared.runtime.stop_container(&c.id, remaining).await {
                    tracing::warn!(pod = %this.pod_ref, container = %c.name, error = %e, "stop failed");
                }
            }
        });
        futures::future::join_all(stops).await;
        observed
    }

    /// The sandbox config, with the pod cgroup from the node hooks as its `cgroup_parent`.
    fn sandbox_config(&self, attempt: u32) -> cri::PodSandboxConfig {
        let mut config = cri_config::sandbox_config(&self.pod, &self.shared.settings, attempt);
        if let Some(linux) = config.linux.as_mut() {
            linux.cgroup_parent = self.setup.cgroup_parent.clone();
        }
        config
    }

    /// Prepare the pod's cgroup and volumes (every sync: configMap and secret updates land);
    /// returns whether the pod may be acted on. An ended pod is never acted on.
    async fn prepare_node(&mut self) -> bool {
        if self.ended.is_some() {
            return false;
        }
        const PREPARING: &str = "ContainerCreating";
        match self.shared.node.prepare_pod(&self.pod).await {
            Ok(setup) => {
                self.setup = setup;
                self.errors.retain(|_, w| w.reason != PREPARING);
                true
            }
            Err(e) => {
                tracing::warn!(pod = %self.pod_ref, error = %e, "cannot prepare the pod; retrying");
                for c in &self.pod.spec.clone().unwrap_or_default().containers {
                    let waiting = Waiting {
                        reason: PREPARING.into(),
                        message: e.to_string(),
                    };
                    self.errors.entry(c.name.clone()).or_insert(waiting);
                }
                self.extra_wake = Some(Duration::from_secs(2));
                false
            }
        }
    }

    /// The node stops the pod (eviction, shutdown): its containers and sandboxes stop, and it
    /// stays Failed with the node's reason until its source deletes it.
    async fn stop_for_node(&mut self, stop: PodStop) {
        tracing::info!(pod = %self.pod_ref, reason = %stop.reason, grace = ?stop.grace_period, "the node stops the pod");
        self.probes.stop_all();
        self.ended = Some((stop.reason, stop.message));
        let observed = self.stop_running(stop.grace_period).await;
        for s in &observed.sandboxes {
            if let Err(e) = self.shared.runtime.stop_pod_sandbox(&s.id).await {
                tracing::warn!(pod = %self.pod_ref, error = %e, "stopping the sandbox failed");
            }
        }
        let _ = stop.done.send(());
    }
}

/// Admission of a new pod against the pods already running; the rejection's Failed status is
/// recorded at once, so the next admission does not count the pod.
fn admit(shared: &Shared, pod: &Pod) -> Option<(String, String)> {
    let uid = pod.metadata.uid.as_deref();
    let active: Vec<Pod> = shared
        .states
        .pods()
        .into_iter()
        .filter(|s| s.pod.metadata.uid.as_deref() != uid)
        .filter(|s| !crate::node::hooks::is_ended(s.status.as_ref()))
        .map(|s| s.pod)
        .collect();
    let rejection = shared.node.admit(pod, &active).err()?;
    tracing::warn!(pod = %PodRef::of(pod), reason = %rejection.reason, message = %rejection.message, "pod rejected");
    shared.states.set_pod(pod);
    let status = PodStatus {
        phase: Some("Failed".into()),
        reason: Some(rejection.reason.clone()),
        message: Some(rejection.message.clone()),
        ..Default::default()
    };
    shared.states.set_status(&PodRef::of(pod), &status);
    Some((rejection.reason, rejection.message))
}

/// The registry credentials for `image` from the pod's `imagePullSecrets` (secrets of type
/// `kubernetes.io/dockerconfigjson` or `dockercfg`), matched by registry host.
pub(crate) fn pull_auth(
    image: &str,
    namespace: &str,
    secrets: &[String],
    store: &dyn ValueStore,
) -> Option<cri::AuthConfig> {
    let registry = registry_of(image);
    for name in secrets {
        let Some(data) = store.secret(namespace, name) else {
            tracing::warn!(%namespace, secret = %name, "image pull secret not found");
            continue;
        };
        let Some(json) = data
            .get(".dockerconfigjson")
            .or_else(|| data.get(".dockercfg"))
        else {
            continue;
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(json) else {
            continue;
        };
        let auths = v.get("auths").unwrap_or(&v);
        let Some(auths) = auths.as_object() else {
            continue;
        };
        for (server, entry) in auths {
            let host = server
                .trim_start_matches("https://")
                .trim_start_matches("http://")
                .split('/')
                .next()
                .unwrap_or("");
            if host == registry || (registry == "docker.io" && host == "index.docker.io") {
                let s = |k: &str| {
                    entry
                        .get(k)
                        .and_then(|v| v.as_str())
                        .unwrap_or("")
                        .to_string()
                };
                return Some(cri::AuthConfig {
                    username: s("username"),
                    password: s("password"),
                    auth: s("auth"),
                    server_address: server.clone(),
                    identity_token: s("identitytoken"),
                    registry_token: s("registrytoken"),
                });
            }
        }
    }
    None
}

/// The registry host of an image reference (`docker.io` when it names none).
pub(crate) fn registry_of(image: &str) -> String {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first.to_string()
        }
        _ => "docker.io".to_string(),
    }
}

/// Kubernetes' default pull policy: `Always` for `:latest` or untagged images, else `IfNotPresent`.
pub(crate) fn default_pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_policy_defaults_and_registries() {
        assert_eq!(default_pull_policy("busybox"), "Always");
        assert_eq!(default_pull_policy("busybox:latest"), "Always");
        assert_eq!(default_pull_policy("busybox:1.36"), "IfNotPresent");
        assert_eq!(default_pull_policy("127.0.0.1:5000/busybox"), "Always");
        assert_eq!(
            default_pull_policy("127.0.0.1:5000/busybox:1"),
            "IfNotPresent"
        );
        assert_eq!(default_pull_policy("busybox@sha256:abc"), "IfNotPresent");
        assert_eq!(registry_of("busybox"), "docker.io");
        assert_eq!(registry_of("library/busybox"), "docker.io");
        assert_eq!(registry_of("127.0.0.1:5000/x"), "127.0.0.1:5000");
        assert_eq!(registry_of("registry.local/x/y:1"), "registry.local");
    }

    #[test]
    fn image_pull_secrets_become_registry_auth() {
        let store = crate::cri_config::InMemoryStore::new();
        let json =
            br#"{"auths": {"127.0.0.1:5000": {"username": "u", "password": "p", "auth": "dTpw"},
                                  "https://index.docker.io/v1/": {"username": "hub"}}}"#;
        store.set_secret(
            "ns",
            "regcred",
            [(".dockerconfigjson".to_string(), json.to_vec())],
        );
        let secrets = vec!["missing".to_string(), "regcred".to_string()];
        let a = pull_auth("127.0.0.1:5000/app:1", "ns", &secrets, &store).unwrap();
        assert_eq!(
            (a.username.as_str(), a.password.as_str(), a.auth.as_str()),
            ("u", "p", "dTpw")
        );
        assert_eq!(a.server_address, "127.0.0.1:5000");
        assert_eq!(
            pull_auth("busybox", "ns", &secrets, &store)
                .unwrap()
                .username,
            "hub"
        );
        assert_eq!(pull_auth("quay.io/x", "ns", &secrets, &store), None);
        assert_eq!(
            pull_auth("127.0.0.1:5000/app:1", "other", &secrets, &store),
            None
        );
    }
}
