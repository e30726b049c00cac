//! Root tests of the native runtime's container events (`GetContainerEvents`, the kubelet's
//! evented PLEG), directly and through `CriClient` -> `CriServer` -> `NativeRuntime`: every
//! lifecycle event with the pod's statuses, how soon an exit is noticed beside a 1 s relist
//! (printed), several subscribers and a lagging one, exits reported once after a runtime
//! restart, and the streams ending with the server. Needs root, overlayfs, cgroups and
//! busybox-static; each test runs in a network namespace of its own and removes its pods.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::native::{Env, container_config, in_netns, native_test, prerequisites};
use common::pod_fixture::{self, run_pod};
use common::server::Served;
use futures::StreamExt;
use node_core::{ContainerEventStream, RuntimeBackend, RuntimeError, cri};
use node_cri::native::runtime::{NativeConfig, NativeRuntime};
use node_cri::server::CriServer;
use node_test_support::FakeRuntime;

use cri::ContainerEventType as Kind;

/// The next event (within 20 s).
async fn next(s: &mut ContainerEventStream) -> cri::ContainerEventResponse {
    tokio::time::timeout(Duration::from_secs(20), s.next())
        .await
        .expect("an event within 20 s")
        .expect("the stream is open")
        .expect("an event, not an error")
}

/// The next event of `kind` about `id`, skipping others (within 20 s).
async fn until(s: &mut ContainerEventStream, id: &str, kind: Kind) -> cri::ContainerEventResponse {
    loop {
        let e = next(s).await;
        if e.container_id == id && e.container_event_type == kind as i32 {
            return e;
        }
    }
}

/// Nothing arrives within 300 ms.
async fn quiet(s: &mut ContainerEventStream) {
    if let Ok(e) = tokio::time::timeout(Duration::from_millis(300), s.next()).await {
        panic!("unexpected: {e:?}");
    }
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

fn status_of<'a>(e: &'a cri::ContainerEventResponse, id: &str) -> Option<&'a cri::ContainerStatus> {
    e.containers_statuses.iter().find(|c| c.id == id)
}

async fn start(
    rt: &dyn RuntimeBackend,
    pod: &str,
    pod_cfg: &cri::PodSandboxConfig,
    name: &str,
    command: &[&str],
) -> String {
    pod_fixture::start_container(rt, pod, pod_cfg, container_config(name, command)).await
}

#[test]
fn lifecycle_events_through_the_cri_server_and_exit_latency_beside_a_relist() {
    if !prerequisites("lifecycle_events_through_the_cri_server_and_exit_latency_beside_a_relist") {
        return;
    }
    let env = Env::new();
    in_netns("evlife", || async {
        let native = Arc::new(env.runtime());
        let served =
            Served::start(CriServer::new(native.clone(), Arc::new(FakeRuntime::new()))).await;
        let client = served.cri_client().await;
        // two subscribers over gRPC, one in process
        let mut s1 = client.get_container_events().await.expect("subscribe");
        let mut s2 = client.get_container_events().await.expect("subscribe");
        let mut s3 = native.get_container_events().await.expect("subscribe");

        let pod_cfg = env.sandbox_config("ev");
        let pod = run_pod(&client, &pod_cfg).await;
        let e = next(&mut s1).await;
        assert_eq!(
            (e.container_id.as_str(), e.container_event_type),
            (pod.as_str(), Kind::ContainerStartedEvent as i32)
        );
        let sb = e.pod_sandbox_status.expect("the sandbox status");
        assert_eq!(sb.id, pod);
        assert_eq!(sb.state, cri::PodSandboxState::SandboxReady as i32);
        assert_eq!(sb.metadata.unwrap().uid, "uid-ev");

        let id = pod_fixture::create_container(
            &client,
            &pod,
            Some(&pod_cfg),
            container_config("job", &["sh", "-c", "sleep 0.7; exit 3"]),
        )
        .await
        .unwrap();
        let e = next(&mut s1).await;
        assert_eq!(e.container_event_type, Kind::ContainerCreatedEvent as i32);
        assert_eq!(e.container_id, id);
        assert_eq!(
            status_of(&e, &id).expect("the container's status").state,
            cri::ContainerState::ContainerCreated as i32
        );
        // the kubelet's generic PLEG, for comparison: a relist every second
        let relister = client.clone();
        let (rid, relist_pod) = (id.clone(), pod.clone());
        let relist = tokio::spawn(async move {
            // at an arbitrary phase, as the kubelet's relist is against a container's exit
            let phase = Duration::from_nanos((now_ns() % 1_000_000_000) as u64);
            let mut tick = tokio::time::interval_at(
                tokio::time::Instant::now() + phase,
                Duration::from_secs(1),
            );
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                tick.tick().await;
                assert!(Instant::now() < deadline, "the relist never saw the exit");
                let list = relister
                    .list_containers(Some(cri::ContainerFilter {
                        pod_sandbox_id: relist_pod.clone(),
                        ..Default::default()
                    }))
                    .await
                    .unwrap();
                if list
                    .iter()
                    .any(|c| c.id == rid && c.state == cri::ContainerState::ContainerExited as i32)
                {
                    return now_ns();
                }
            }
        });
        client.start_container(&id).await.unwrap();
        let e = next(&mut s1).await;
        assert_eq!(
            (e.container_id.as_str(), e.container_event_type),
            (id.as_str(), Kind::ContainerStartedEvent as i32)
        );
        assert_eq!(
            status_of(&e, &id).unwrap().state,
            cri::ContainerState::ContainerRunning as i32
        );

        let e = next(&mut s1).await;
        let seen = now_ns();
        assert_eq!(
            (e.container_id.as_str(), e.container_event_type),
            (id.as_str(), Kind::ContainerStoppedEvent as i32)
        );
        let st = status_of(&e, &id).unwrap().clone();
        assert_eq!(st.state, cri::ContainerState::ContainerExited as i32);
        assert_eq!((st.exit_code, st.reason.as_str()), (3, "Error"));
        assert_eq!(e.pod_sandbox_status.as_ref().unwrap().id, pod);
        let by_event = Duration::from_nanos((seen - st.finished_at).max(0) as u64);
        let by_relist =
            Duration::from_nanos((relist.await.unwrap() - st.finished_at).max(0) as u64);
        eprintln!(
            "container exit noticed after: {by_event:?} by the event stream (CriClient -> CriServer -> NativeRuntime), {by_relist:?} by a 1 s relist"
        );
        // every subscriber has it, once
        for s in [&mut s2, &mut s3] {
            let e = until(s, &id, Kind::ContainerStoppedEvent).await;
            assert_eq!(status_of(&e, &id).unwrap().exit_code, 3);
        }

        client.remove_container(&id).await.unwrap();
        let e = next(&mut s1).await;
        assert_eq!(
            (e.container_id.as_str(), e.container_event_type),
            (id.as_str(), Kind::ContainerDeletedEvent as i32)
        );
        assert!(status_of(&e, &id).is_none(), "{e:?}");
        client.stop_pod_sandbox(&pod).await.unwrap();
        let e = next(&mut s1).await;
        assert_eq!(
            (e.container_id.as_str(), e.container_event_type),
            (pod.as_str(), Kind::ContainerStoppedEvent as i32)
        );
        assert_eq!(
            e.pod_sandbox_status.unwrap().state,
            cri::PodSandboxState::SandboxNotready as i32
        );
        client.remove_pod_sandbox(&pod).await.unwrap();
        let e = next(&mut s1).await;
        assert_eq!(
            (e.container_id.as_str(), e.container_event_type),
            (pod.as_str(), Kind::ContainerDeletedEvent as i32)
        );
        assert_eq!(e.pod_sandbox_status.as_ref().unwrap().id, pod);

        // the server's shutdown ends the streams instead of waiting for them
        let stopping = Instant::now();
        served.stop().await.expect("graceful stop");
        assert!(
            stopping.elapsed() < Duration::from_secs(10),
            "{:?}",
            stopping.elapsed()
        );
        let end = tokio::time::timeout(Duration::from_secs(10), s1.next())
            .await
            .expect("the stream ends with the server");
        assert!(!matches!(end, Some(Ok(_))), "{end:?}");
    });
}

#[test]
fn a_lagging_subscriber_is_dropped_and_the_others_keep_their_events() {
    if !prerequisites("a_lagging_subscriber_is_dropped_and_the_others_keep_their_events") {
        return;
    }
    let env = Env::new();
    in_netns("evlag", || async {
        let rt = NativeRuntime::new(NativeConfig {
            event_buffer: 4,
            ..env.config()
        })
        .unwrap();
        let mut slow = rt.get_container_events().await.unwrap();
        let mut fast = rt.get_container_events().await.unwrap();
        let mut pods = Vec::new();
        for i in 0..3 {
            let cfg = env.sandbox_config(&format!("lag{i}"));
            let pod = run_pod(&rt, &cfg).await;
            assert_eq!(next(&mut fast).await.container_id, pod);
            rt.stop_pod_sandbox(&pod).await.unwrap();
            assert_eq!(
                next(&mut fast).await.container_event_type,
                Kind::ContainerStoppedEvent as i32
            );
            pods.push(pod);
        }
        // six events, four kept: the laggard learns it missed some, and its stream ends
        match tokio::time::timeout(Duration::from_secs(5), slow.next()).await {
            Ok(Some(Err(RuntimeError::ResourceExhausted(m)))) => {
                assert!(m.contains("behind"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        assert!(
            tokio::time::timeout(Duration::from_secs(5), slow.next())
                .await
                .unwrap()
                .is_none()
        );
        // a new subscription works
        let mut again = rt.get_container_events().await.unwrap();
        for pod in &pods {
            rt.remove_pod_sandbox(pod).await.unwrap();
            for s in [&mut fast, &mut again] {
                let e = next(s).await;
                assert_eq!(
                    (e.container_id.as_str(), e.container_event_type),
                    (pod.as_str(), Kind::ContainerDeletedEvent as i32)
                );
            }
        }
    });
}

#[test]
fn exits_while_the_runtime_was_down_are_reported_once_after_a_restart() {
    if !prerequisites("exits_while_the_runtime_was_down_are_reported_once_after_a_restart") {
        return;
    }
    let env = Env::new();
    in_netns("evrestart", || async {
        let pod_cfg = env.sandbox_config("rs");
        let (pod, short, long) = {
            let a = env.runtime();
            let pod = run_pod(&a, &pod_cfg).await;
            let short = start(&a, &pod, &pod_cfg, "short", &["sleep", "1"]).await;
            let long = start(&a, &pod, &pod_cfg, "long", &["sleep", "1000"]).await;
            (pod, short, long)
            // the runtime goes away before the short container exits
        };
        let b = env.runtime();
        let deadline = Instant::now() + Duration::from_secs(20);
        while pod_fixture::container_status(&b, &short).await.state
            != cri::ContainerState::ContainerExited as i32
        {
            assert!(
                Instant::now() < deadline,
                "the short container did not exit"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // the first subscription hears of the exit it missed, and of nothing else
        let mut s = b.get_container_events().await.unwrap();
        let e = next(&mut s).await;
        assert_eq!(
            (e.container_id.as_str(), e.container_event_type),
            (short.as_str(), Kind::ContainerStoppedEvent as i32)
        );
        assert_eq!(e.pod_sandbox_status.as_ref().unwrap().id, pod);
        assert_eq!(status_of(&e, &short).unwrap().exit_code, 0);
        assert_eq!(
            status_of(&e, &long).unwrap().state,
            cri::ContainerState::ContainerRunning as i32
        );
        quiet(&mut s).await;
        let mut second = b.get_container_events().await.unwrap();
        quiet(&mut second).await;
        // live exits while subscribed: reported to both, once
        b.stop_container(&long, Duration::ZERO).await.unwrap();
        for s in [&mut s, &mut second] {
            let e = next(s).await;
            assert_eq!(
                (e.container_id.as_str(), e.container_event_type),
                (long.as_str(), Kind::ContainerStoppedEvent as i32)
            );
            assert_eq!(status_of(&e, &long).unwrap().exit_code, 137);
            quiet(s).await;
        }
        drop((s, second, b));
        // a later runtime has nothing left to report
        let c = env.runtime();
        let mut s = c.get_container_events().await.unwrap();
        quiet(&mut s).await;
        c.remove_pod_sandbox(&pod).await.unwrap();
        // the containers (in any order), then the sandbox
        let mut deleted = Vec::new();
        while deleted.len() < 3 {
            let e = next(&mut s).await;
            if e.container_event_type == Kind::ContainerDeletedEvent as i32 {
                deleted.push(e.container_id);
            }
        }
        assert_eq!(deleted[2], pod);
        deleted.sort();
        let mut want = vec![short.clone(), long.clone(), pod.clone()];
        want.sort();
        assert_eq!(deleted, want);
    });
}

/// `info.<key>` of a verbose status's `info` JSON (a pid).
fn info_pid(info: &std::collections::HashMap<String, String>, key: &str) -> i32 {
    let v: serde_json::Value = serde_json::from_str(&info["info"]).unwrap();
    v[key].as_i64().unwrap_or_else(|| panic!("no {key} in {v}")) as i32
}

fn kill9(pid: i32) {
    assert!(pid > 0);
    // SAFETY: SIGKILL to a process of this test's pod.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0, "kill {pid}");
}

#[test]
fn a_killed_monitor_and_a_dead_pause_process_raise_stopped_events() {
    native_test(
        "a_killed_monitor_and_a_dead_pause_process_raise_stopped_events",
        "evlost",
        async |env, rt| {
            let pod_cfg = env.sandbox_config("lost");
            let pod = run_pod(&rt, &pod_cfg).await;
            let c = start(&rt, &pod, &pod_cfg, "orphan", &["sleep", "1000"]).await;
            let other = start(&rt, &pod, &pod_cfg, "other", &["sleep", "1000"]).await;
            let mut s = rt.get_container_events().await.unwrap();
            // the monitor dies without recording an exit, then the container's process
            let st = rt.container_status(&c, true).await.unwrap();
            let (pid, monitor) = (info_pid(&st.info, "pid"), info_pid(&st.info, "monitorPid"));
            kill9(monitor);
            kill9(pid);
            let e = until(&mut s, &c, Kind::ContainerStoppedEvent).await;
            let cs = status_of(&e, &c).unwrap();
            assert_ne!(
                cs.state,
                cri::ContainerState::ContainerRunning as i32,
                "{cs:?}"
            );
            assert_eq!(
                pod_fixture::container_status(&rt, &c).await.state,
                cs.state,
                "the event carries what the runtime reports"
            );
            assert_eq!(
                e.pod_sandbox_status.as_ref().unwrap().state,
                cri::PodSandboxState::SandboxReady as i32
            );
            // the pause process dies on its own: the sandbox's stopped event, NOTREADY
            let st = rt.pod_sandbox_status(&pod, true).await.unwrap();
            kill9(info_pid(&st.info, "pid"));
            let e = until(&mut s, &pod, Kind::ContainerStoppedEvent).await;
            assert_eq!(
                e.pod_sandbox_status.as_ref().unwrap().state,
                cri::PodSandboxState::SandboxNotready as i32
            );
            assert!(status_of(&e, &other).is_some(), "{e:?}");
            // each once: nothing more within a few liveness periods
            let deadline = Instant::now() + Duration::from_millis(2500);
            while let Ok(Some(e)) = tokio::time::timeout_at(deadline.into(), s.next()).await {
                let e = e.expect("an event");
                assert!(
                    !(e.container_event_type == Kind::ContainerStoppedEvent as i32
                        && (e.container_id == c || e.container_id == pod)),
                    "reported twice: {e:?}"
                );
            }
            rt.stop_pod_sandbox(&pod).await.unwrap();
            rt.remove_pod_sandbox(&pod).await.unwrap();
        },
    );
}
