//! The whole kubelet (sources, merger, pod workers, relist, probes, hooks, status) against the
//! fakes of node-test-support, on tokio's paused clock so back-off timing is exact and fast.
//! No root needed.

use std::sync::Arc;
use std::time::Duration;

use node_core::{PodRef, PodStatus, RuntimeError};
use node_kubelet::{CancellationToken, Kubelet, KubeletConfig};
use node_test_support::fakes::FakeContainer;
use node_test_support::{FakeRuntime, FakeStatusSink, ScriptedPodSource, until};
use tokio::time::Instant;

mod support;
use support::{KubeletTask, condition, container, fake_kubelet, fake_parts, pod, status_of};

fn start(rt: &FakeRuntime, sink: &FakeStatusSink, source: &ScriptedPodSource) -> KubeletTask {
    let logs = tempfile::tempdir().unwrap();
    let kubelet = fake_kubelet(
        "node-1",
        Arc::new(source.clone()),
        rt,
        sink,
        KubeletConfig {
            host_ip: Some("192.168.0.10".parse().unwrap()),
            pod_log_root: logs.path().to_path_buf(),
            ..Default::default()
        },
    )
    .build()
    .unwrap();
    KubeletTask::spawn(kubelet, logs)
}

fn named(rt: &FakeRuntime, name: &str) -> Vec<FakeContainer> {
    let mut v: Vec<FakeContainer> = rt
        .containers()
        .into_iter()
        .filter(|c| c.config.metadata.as_ref().is_some_and(|m| m.name == name))
        .collect();
    v.sort_by_key(|c| c.config.metadata.as_ref().unwrap().attempt);
    v
}

/// Wait up to 10 s (of the paused clock) for the container `name` to run (`what` names the
/// wait in the panic).
async fn running_soon(rt: &FakeRuntime, name: &str, what: &str) -> FakeContainer {
    until(what, Duration::from_secs(10), || running(rt, name)).await
}

/// Wait (on the paused clock) until a pod's Ready condition is `ready`; panics after `limit`.
async fn wait_ready(sink: &FakeStatusSink, ready: bool, limit: Duration) {
    let want = if ready { "True" } else { "False" };
    sink.wait_for(limit, |pods| {
        pods.values()
            .any(|s| condition(s, "Ready").as_deref() == Some(want))
    })
    .await
    .unwrap();
}

fn running(rt: &FakeRuntime, name: &str) -> Option<FakeContainer> {
    named(rt, name)
        .into_iter()
        .find(|c| c.state == node_core::cri::ContainerState::ContainerRunning)
}

const READY_POD: &str = r#"
metadata: {name: web, namespace: shop, uid: uid-web, labels: {app: web}}
spec:
  initContainers:
  - {name: setup, image: "busybox:1"}
  containers:
  - name: server
    image: "busybox:1"
    ports: [{containerPort: 8080, name: http}]
    readinessProbe: {exec: {command: [ready]}, periodSeconds: 1}
    livenessProbe: {exec: {command: [alive]}, periodSeconds: 5}
    startupProbe: {exec: {command: [started]}, periodSeconds: 1}
    lifecycle: {postStart: {exec: {command: [hello]}}}
  - name: helper
    image: "busybox:1"
    readinessProbe: {exec: {command: [ready]}, periodSeconds: 2, successThreshold: 2}
"#;

#[tokio::test(start_paused = true)]
async fn a_pod_with_init_two_containers_and_probes_becomes_ready() {
    let (rt, sink, source) = fake_parts("test");
    source.apply(pod(READY_POD));
    let k = start(&rt, &sink, &source);

    let setup = running_soon(&rt, "setup", "the init container runs").await;
    assert!(
        named(&rt, "server").is_empty(),
        "app containers wait for the init container"
    );
    let s = until("a pending status", Duration::from_secs(10), || {
        status_of(&sink, "web")
    })
    .await;
    assert_eq!(s.phase.as_deref(), Some("Pending"));
    assert_eq!(condition(&s, "Initialized").as_deref(), Some("False"));
    rt.exit_container(&setup.id, 0, "Completed");

    wait_ready(&sink, true, Duration::from_secs(60)).await;
    let s = status_of(&sink, "web").unwrap();
    assert_eq!(s.phase.as_deref(), Some("Running"));
    assert_eq!(condition(&s, "Initialized").as_deref(), Some("True"));
    assert_eq!(condition(&s, "ContainersReady").as_deref(), Some("True"));
    assert_eq!(
        condition(&s, "PodReadyToStartContainers").as_deref(),
        Some("True")
    );
    assert!(s.pod_ip.as_deref().unwrap().starts_with("10.88."));
    assert_eq!(s.host_ip.as_deref(), Some("192.168.0.10"));
    let server = container(&s, "server");
    assert!(server.ready && server.started == Some(true));
    assert!(
        server
            .container_id
            .as_deref()
            .unwrap()
            .starts_with("fake://container-")
    );
    let init = &s.init_container_statuses.as_ref().unwrap()[0];
    assert_eq!(
        init.state
            .as_ref()
            .unwrap()
            .terminated
            .as_ref()
            .unwrap()
            .exit_code,
        0
    );

    // everything carries the labels that make it adoptable
    let sb = &rt.sandboxes()[0];
    assert_eq!(sb.config.labels["io.kubernetes.pod.uid"], "uid-web");
    assert_eq!(sb.config.labels["app"], "web");
    let pod_logs = k.dir.path().join("shop_web_uid-web");
    assert_eq!(sb.config.log_directory, pod_logs.display().to_string());
    assert!(
        pod_logs.join("server").is_dir(),
        "the kubelet makes the container log directory"
    );
    let c = running(&rt, "server").unwrap();
    assert_eq!(c.config.labels["io.kubernetes.container.name"], "server");
    assert_eq!(c.config.labels["io.kubernetes.pod.namespace"], "shop");
    assert_eq!(c.config.log_path, "server/0.log");
    assert!(
        c.config
            .annotations
            .contains_key("io.kubernetes.container.hash")
    );
    // the postStart hook and the probes ran through exec
    assert!(
        rt.calls()
            .iter()
            .filter(|c| c.starts_with("exec_sync "))
            .count()
            >= 4
    );
    k.stop().await;
    assert!(
        running(&rt, "server").is_some(),
        "stopping the kubelet leaves the pod running"
    );
}

#[tokio::test(start_paused = true)]
async fn a_crashing_container_backs_off_with_growing_delays() {
    let (rt, sink, source) = fake_parts("test");
    source.apply(pod("metadata: {name: crash, uid: uid-crash}\nspec:\n  containers: [{name: c, image: \"img:1\"}]\n"));
    let k = start(&rt, &sink, &source);
    let mut delays = vec![];
    for attempt in 0..6u32 {
        let c = until("a running container", Duration::from_secs(400), || {
            running(&rt, "c").filter(|c| c.config.metadata.as_ref().unwrap().attempt == attempt)
        })
        .await;
        if attempt >= 2 {
            let s = status_of(&sink, "crash").unwrap();
            assert_eq!(container(&s, "c").restart_count, attempt as i32);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        rt.exit_container(&c.id, 1, "Error");
        let exited = Instant::now();
        if attempt == 2 {
            sink.wait_for(Duration::from_secs(5), |pods| {
                pods.values().any(|s| {
                    let c = container(s, "c");
                    c.state
                        .as_ref()
                        .and_then(|st| st.waiting.as_ref())
                        .and_then(|w| w.reason.as_deref())
                        == Some("CrashLoopBackOff")
                        && c.last_state
                            .as_ref()
                            .and_then(|l| l.terminated.as_ref())
                            .map(|t| t.exit_code)
                            == Some(1)
                })
            })
            .await
            .unwrap();
        }
        until("the restart", Duration::from_secs(400), || {
            named(&rt, "c")
                .iter()
                .any(|c| c.config.metadata.as_ref().unwrap().attempt == attempt + 1)
                .then_some(())
        })
        .await;
        delays.push(exited.elapsed().as_secs_f64());
    }
    // restart at once, then 10 s, 20 s, 40 s, 80 s, 160 s; the relist adds up to 1 s
    let expected = [0.0, 10.0, 20.0, 40.0, 80.0, 160.0];
    for (got, want) in delays.iter().zip(expected) {
        assert!(
            *got >= want && *got <= want + 1.5,
            "delays {delays:?} vs {expected:?}"
        );
    }
    assert!(
        rt.containers().len() <= 3,
        "old instances are garbage collected: {}",
        rt.containers().len()
    );
    k.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_liveness_failure_restarts_the_container() {
    let (rt, sink, source) = fake_parts("test");
    source.apply(pod(
        "metadata: {name: live, uid: uid-live}\nspec:\n  containers:\n  - name: c\n    image: \"img:1\"\n    \
         livenessProbe: {exec: {command: [alive]}, periodSeconds: 1, failureThreshold: 2}\n",
    ));
    let k = start(&rt, &sink, &source);
    let first = running_soon(&rt, "c", "running").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        running(&rt, "c").unwrap().id,
        first.id,
        "passing probes keep it"
    );
    rt.push_exec_result(1, "dead");
    rt.push_exec_result(1, "dead");
    let second = until("a restart", Duration::from_secs(30), || {
        running(&rt, "c").filter(|c| c.id != first.id)
    })
    .await;
    assert_eq!(second.config.metadata.unwrap().attempt, 1);
    let old = rt
        .containers()
        .into_iter()
        .find(|c| c.id == first.id)
        .unwrap();
    assert_ne!(old.state, node_core::cri::ContainerState::ContainerRunning);
    sink.wait_for(Duration::from_secs(10), |pods| {
        pods.values().any(|s| container(s, "c").restart_count == 1)
    })
    .await
    .unwrap();
    k.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_source_update_changes_the_pod() {
    let (rt, sink, source) = fake_parts("test");
    let yaml = "metadata: {name: up, uid: uid-up}\nspec:\n  containers: [{name: c, image: \"img:1\"}, {name: d, image: \"img:1\"}]\n";
    source.apply(pod(yaml));
    let k = start(&rt, &sink, &source);
    let c1 = running_soon(&rt, "c", "running").await;
    let d1 = running_soon(&rt, "d", "running").await;
    source.apply(pod(&yaml.replacen(
        "{name: c, image: \"img:1\"}",
        "{name: c, image: \"img:2\"}",
        1,
    )));
    let c2 = until("the new container", Duration::from_secs(10), || {
        running(&rt, "c").filter(|c| c.id != c1.id)
    })
    .await;
    assert_eq!(c2.config.image.unwrap().image, "img:2");
    assert_eq!(
        running(&rt, "d").unwrap().id,
        d1.id,
        "the unchanged container keeps running"
    );
    assert!(rt.calls().contains(&"pull_image img:2".to_string()));
    sink.wait_for(Duration::from_secs(10), |pods| {
        pods.values().any(|s| container(s, "c").image == "img:2")
    })
    .await
    .unwrap();
    k.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_delete_terminates_the_pod_with_pre_stop() {
    let (rt, sink, source) = fake_parts("test");
    let p = pod(
        "metadata: {name: bye, uid: uid-bye}\nspec:\n  terminationGracePeriodSeconds: 5\n  containers:\n  - name: c\n    image: \"img:1\"\n    \
         lifecycle: {preStop: {exec: {command: [drain]}}}\n  - name: slow\n    image: \"img:1\"\n    lifecycle: {preStop: {sleep: {seconds: 3}}}\n",
    );
    source.apply(p.clone());
    let k = start(&rt, &sink, &source);
    let c = running_soon(&rt, "c", "running").await;
    sink.wait_for(Duration::from_secs(10), |pods| !pods.is_empty())
        .await
        .unwrap();
    let pod_logs = k.dir.path().join("default_bye_uid-bye");
    assert!(pod_logs.is_dir());
    running_soon(&rt, "slow", "both running").await;
    let deleted = Instant::now();
    source.delete(&p);
    until("the sandbox removed", Duration::from_secs(30), || {
        rt.sandboxes().is_empty().then_some(())
    })
    .await;
    let calls = rt.calls();
    let pre_stop = calls
        .iter()
        .position(|x| *x == format!("exec_sync {}", c.id))
        .expect("preStop ran");
    let stop = calls
        .iter()
        .position(|x| *x == format!("stop_container {}", c.id))
        .expect("stopped");
    assert!(pre_stop < stop, "preStop before the stop: {calls:?}");
    assert!(calls.iter().any(|x| x.starts_with("stop_pod_sandbox")));
    let took = deleted.elapsed();
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(5),
        "the sleep hook ran within the grace period: {took:?}"
    );
    // the worker removes the log directory after the sandboxes, then reports the pod deleted
    sink.wait_for(Duration::from_secs(10), |pods| pods.is_empty())
        .await
        .unwrap();
    assert!(!pod_logs.exists(), "the pod log directory is removed");
    assert_eq!(
        sink.history().last().unwrap().0,
        PodRef::new("default", "bye", "uid-bye")
    );
    k.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_new_kubelet_adopts_and_restarts_nothing() {
    let (rt, sink, source) = fake_parts("test");
    source.apply(pod(READY_POD));
    let k = start(&rt, &sink, &source);
    let setup = running_soon(&rt, "setup", "init").await;
    rt.exit_container(&setup.id, 0, "Completed");
    wait_ready(&sink, true, Duration::from_secs(60)).await;
    k.stop().await;
    let before: Vec<String> = rt.containers().iter().map(|c| c.id.clone()).collect();
    let calls_before = rt.calls().len();

    // the new kubelet sees the same runtime, and the same source
    let sink2 = FakeStatusSink::new();
    let k2 = start(&rt, &sink2, &source);
    sink2
        .wait_for(Duration::from_secs(60), |pods| {
            pods.values()
                .any(|s| condition(s, "Ready").as_deref() == Some("True"))
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let after: Vec<String> = rt.containers().iter().map(|c| c.id.clone()).collect();
    assert_eq!(before, after, "no container was replaced");
    let mutating: Vec<String> = rt.calls()[calls_before..]
        .iter()
        .filter(|c| {
            [
                "run_pod_sandbox",
                "create_container",
                "start_container",
                "stop_container",
                "remove_",
                "stop_pod_sandbox",
            ]
            .iter()
            .any(|m| c.starts_with(m))
        })
        .cloned()
        .collect();
    assert!(
        mutating.is_empty(),
        "the new kubelet changed the runtime: {mutating:?}"
    );
    let s = status_of(&sink2, "web").unwrap();
    assert_eq!(container(&s, "server").restart_count, 0);
    k2.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_pod_deleted_while_the_kubelet_was_down_is_cleaned_up() {
    let (rt, sink, source) = fake_parts("test");
    let gone = pod(
        "metadata: {name: gone, uid: uid-gone}\nspec:\n  containers: [{name: c, image: \"img:1\"}]\n",
    );
    let kept = pod(
        "metadata: {name: kept, uid: uid-kept}\nspec:\n  containers: [{name: c, image: \"img:1\"}]\n",
    );
    source.apply(gone.clone());
    source.apply(kept);
    let k = start(&rt, &sink, &source);
    until("both running", Duration::from_secs(10), || {
        (rt.containers().len() == 2).then_some(())
    })
    .await;
    k.stop().await;
    source.delete(&gone);
    let k2 = start(&rt, &sink, &source);
    until("the orphan removed", Duration::from_secs(30), || {
        (rt.sandboxes().len() == 1).then_some(())
    })
    .await;
    assert_eq!(
        rt.sandboxes()[0].config.labels["io.kubernetes.pod.name"],
        "kept"
    );
    assert!(
        rt.containers()
            .iter()
            .all(|c| c.state == node_core::cri::ContainerState::ContainerRunning)
    );
    k2.stop().await;
}

#[tokio::test(start_paused = true)]
async fn image_pull_errors_back_off() {
    let (rt, sink, source) = fake_parts("test");
    for _ in 0..2 {
        rt.fail_next(
            "pull_image",
            RuntimeError::ImagePull {
                image: "img:404".into(),
                message: "manifest unknown".into(),
            },
        );
    }
    source.apply(pod("metadata: {name: pull, uid: uid-pull}\nspec:\n  containers: [{name: c, image: \"img:404\"}]\n"));
    source.apply(pod(
        "metadata: {name: never, uid: uid-never}\nspec:\n  containers: [{name: c, image: \"absent:1\", imagePullPolicy: Never}]\n",
    ));
    let k = start(&rt, &sink, &source);
    let reason = |s: &PodStatus| {
        container(s, "c")
            .state
            .as_ref()
            .and_then(|st| st.waiting.as_ref())
            .and_then(|w| w.reason.clone())
    };
    sink.wait_for(Duration::from_secs(10), |pods| {
        pods.values()
            .any(|s| reason(s).as_deref() == Some("ErrImagePull"))
    })
    .await
    .unwrap();
    sink.wait_for(Duration::from_secs(10), |pods| {
        pods.values()
            .any(|s| reason(s).as_deref() == Some("ImagePullBackOff"))
    })
    .await
    .unwrap();
    sink.wait_for(Duration::from_secs(10), |pods| {
        pods.values()
            .any(|s| reason(s).as_deref() == Some("ErrImageNeverPull"))
    })
    .await
    .unwrap();
    // two failures (at once, then after 10 s), then the pull works after the 20 s back-off
    let c = until("the pull succeeds", Duration::from_secs(60), || {
        running(&rt, "c")
    })
    .await;
    assert_eq!(c.config.image.unwrap().image, "img:404");
    let pulls = rt
        .calls()
        .iter()
        .filter(|c| *c == "pull_image img:404")
        .count();
    assert_eq!(pulls, 3, "{:?}", rt.calls());
    assert!(
        !rt.calls().contains(&"pull_image absent:1".to_string()),
        "policy Never never pulls"
    );
    k.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_run_to_completion_pod_succeeds() {
    let (rt, sink, source) = fake_parts("test");
    source.apply(pod("metadata: {name: job, uid: uid-job}\nspec:\n  restartPolicy: Never\n  containers: [{name: c, image: \"img:1\"}]\n"));
    let k = start(&rt, &sink, &source);
    let c = running_soon(&rt, "c", "running").await;
    rt.exit_container(&c.id, 0, "Completed");
    sink.wait_for(Duration::from_secs(10), |pods| {
        pods.values()
            .any(|s| s.phase.as_deref() == Some("Succeeded"))
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(named(&rt, "c").len(), 1, "never restarted");
    k.stop().await;
}

#[tokio::test(start_paused = true)]
async fn status_is_written_only_when_it_changes() {
    let (rt, sink, source) = fake_parts("test");
    source.apply(pod(
        "metadata: {name: calm, uid: uid-calm}\nspec:\n  containers:\n  - {name: c, image: \"img:1\", readinessProbe: {exec: {command: [r]}, periodSeconds: 1}}\n",
    ));
    let k = start(&rt, &sink, &source);
    wait_ready(&sink, true, Duration::from_secs(30)).await;
    let writes = sink.history().len();
    // a minute of probes, relists and periodic syncs with nothing changing
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(sink.history().len(), writes, "no write without a change");
    // a change is written once
    rt.push_exec_result(1, "not ready");
    rt.push_exec_result(1, "not ready");
    rt.push_exec_result(1, "not ready");
    wait_ready(&sink, false, Duration::from_secs(30)).await;
    let c = running(&rt, "c").unwrap();
    assert_eq!(
        c.config.metadata.unwrap().attempt,
        0,
        "readiness never restarts"
    );
    k.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_dead_sandbox_is_recreated_with_its_containers() {
    let (rt, sink, source) = fake_parts("test");
    source.apply(pod(
        "metadata: {name: sb, uid: uid-sb}\nspec:\n  containers: [{name: c, image: \"img:1\"}]\n",
    ));
    let k = start(&rt, &sink, &source);
    let first = running_soon(&rt, "c", "running").await;
    // the sandbox dies under the kubelet (as after a node reboot or a runtime crash)
    use node_core::RuntimeBackend;
    rt.stop_pod_sandbox(&first.sandbox_id).await.unwrap();
    let second = until(
        "a new sandbox and container",
        Duration::from_secs(30),
        || running(&rt, "c").filter(|c| c.sandbox_id != first.sandbox_id),
    )
    .await;
    assert_eq!(
        second.config.metadata.unwrap().attempt,
        1,
        "the restart count goes on"
    );
    let sandboxes = rt.sandboxes();
    let new = sandboxes
        .iter()
        .find(|s| s.id == second.sandbox_id)
        .unwrap();
    assert_eq!(new.config.metadata.as_ref().unwrap().attempt, 1);
    sink.wait_for(Duration::from_secs(10), |pods| {
        pods.values()
            .any(|s| container(s, "c").restart_count == 1 && s.phase.as_deref() == Some("Running"))
    })
    .await
    .unwrap();
    k.stop().await;
}

const SIDECAR_POD: &str = r#"
metadata: {name: side, uid: uid-side}
spec:
  initContainers:
  - {name: proxy, image: "img:1", restartPolicy: Always, startupProbe: {exec: {command: [up]}, periodSeconds: 1}}
  - {name: migrate, image: "img:1"}
  containers:
  - {name: app, image: "img:1"}
"#;

#[tokio::test(start_paused = true)]
async fn a_sidecar_starts_first_keeps_running_and_restarts() {
    let (rt, sink, source) = fake_parts("test");
    source.apply(pod(SIDECAR_POD));
    let k = start(&rt, &sink, &source);
    let proxy = running_soon(&rt, "proxy", "the sidecar").await;
    let migrate = running_soon(
        &rt,
        "migrate",
        "the init container after the sidecar started",
    )
    .await;
    assert!(named(&rt, "app").is_empty());
    rt.exit_container(&migrate.id, 0, "Completed");
    running_soon(&rt, "app", "the app").await;
    assert_eq!(
        running(&rt, "proxy").unwrap().id,
        proxy.id,
        "the sidecar keeps running beside the app"
    );
    rt.exit_container(&proxy.id, 2, "Error");
    let proxy2 = until("the sidecar restarted", Duration::from_secs(10), || {
        running(&rt, "proxy").filter(|c| c.id != proxy.id)
    })
    .await;
    assert_eq!(proxy2.config.metadata.unwrap().attempt, 1);
    assert_eq!(
        named(&rt, "migrate").len(),
        1,
        "the init container does not run again"
    );
    sink.wait_for(Duration::from_secs(10), |pods| {
        pods.values().any(|s| s.phase.as_deref() == Some("Running"))
    })
    .await
    .unwrap();
    k.stop().await;
}

#[tokio::test(start_paused = true)]
async fn the_kubelet_waits_for_a_runtime_that_is_not_up_yet() {
    let rt = FakeRuntime::new();
    for _ in 0..3 {
        rt.fail_next(
            "version",
            RuntimeError::Unavailable("socket missing".into()),
        );
    }
    let sink = FakeStatusSink::new();
    let source = ScriptedPodSource::new("test");
    source.apply(pod("metadata: {name: late, uid: uid-late}\nspec:\n  containers: [{name: c, image: \"img:1\"}]\n"));
    let started = Instant::now();
    let k = start(&rt, &sink, &source);
    until("running", Duration::from_secs(30), || running(&rt, "c")).await;
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "three failed attempts, one second apart"
    );
    assert_eq!(
        rt.calls()
            .iter()
            .filter(|c| c.starts_with("version"))
            .count(),
        4
    );
    k.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_pod_marked_for_deletion_is_terminated_with_its_grace_period() {
    let (rt, sink, source) = fake_parts("api");
    let yaml = "metadata: {name: del, uid: uid-del}\nspec:\n  containers:\n  - {name: c, image: \"img:1\", lifecycle: {preStop: {sleep: {seconds: 60}}}}\n";
    source.apply(pod(yaml));
    let k = start(&rt, &sink, &source);
    running_soon(&rt, "c", "running").await;
    // the API server marks the pod deleted with a 2 s grace period
    let mut deleted = pod(yaml);
    deleted.metadata.deletion_timestamp = Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()),
    );
    deleted.metadata.deletion_grace_period_seconds = Some(2);
    let t0 = Instant::now();
    source.apply(deleted);
    until("the sandbox removed", Duration::from_secs(30), || {
        rt.sandboxes().is_empty().then_some(())
    })
    .await;
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(10),
        "the 60 s preStop is cut at the 2 s grace: {took:?}"
    );
    k.stop().await;
}

#[tokio::test(start_paused = true)]
async fn pod_states_follow_pods_and_statuses() {
    let (rt, sink, source) = fake_parts("test");
    let p = pod(
        "metadata: {name: seen, uid: uid-seen, labels: {app: x}}\nspec:\n  containers: [{name: c, image: \"img:1\"}]\n",
    );
    source.apply(p.clone());
    let kubelet = Kubelet::builder("node-1")
        .source(Arc::new(source.clone()))
        .runtime(Arc::new(rt.clone()), Arc::new(rt.clone()))
        .status(Arc::new(sink.clone()))
        .build()
        .unwrap();
    let states = kubelet.states();
    let mut changes = states.subscribe();
    let token = CancellationToken::new();
    let t = token.clone();
    let task = tokio::spawn(async move { kubelet.run(t).await.unwrap() });
    let ready = until("ready", Duration::from_secs(30), || {
        states.pods().into_iter().find(|s| s.is_ready())
    })
    .await;
    assert_eq!(ready.pod.metadata.labels.as_ref().unwrap()["app"], "x");
    assert_eq!(
        ready.pod.metadata.annotations.as_ref().unwrap()["kubernetes.io/config.source"],
        "test"
    );
    assert!(ready.status.as_ref().unwrap().pod_ip.is_some());
    assert!(changes.has_changed().unwrap());
    changes.mark_unchanged();
    source.delete(&p);
    until("removed", Duration::from_secs(30), || {
        states.pods().is_empty().then_some(())
    })
    .await;
    assert!(changes.has_changed().unwrap());
    token.cancel();
    task.await.unwrap();
}
