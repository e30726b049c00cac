//! The fakes behave as the CRI, CNI, proxy and status contracts say, so logic tests on them mean
//! something.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use node_core::cri;
use node_core::{
    Attachment, CniPlugin, ImageBackend, Pod, PodEvent, PodRef, PodSource, PodStatus, ProxyState,
    RouterError, RuntimeBackend, RuntimeError, ServiceRouter, StatusSink,
};
use node_test_support::{FakeCni, FakeRouter, FakeRuntime, FakeStatusSink, ScriptedPodSource};

fn sandbox_req(name: &str, labels: &[(&str, &str)]) -> cri::RunPodSandboxRequest {
    cri::RunPodSandboxRequest {
        config: Some(cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                namespace: "default".into(),
                uid: format!("uid-{name}"),
                attempt: 0,
            }),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }),
        runtime_handler: String::new(),
    }
}

fn container_req(sandbox: &str, name: &str, image: &str) -> cri::CreateContainerRequest {
    cri::CreateContainerRequest {
        pod_sandbox_id: sandbox.into(),
        config: Some(cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            labels: HashMap::from([("c".to_string(), name.to_string())]),
            ..Default::default()
        }),
        sandbox_config: None,
    }
}

/// A container's (non-verbose) status.
async fn container_status(rt: &FakeRuntime, id: &str) -> cri::ContainerStatus {
    rt.container_status(id, false)
        .await
        .unwrap()
        .status
        .unwrap()
}

#[tokio::test]
async fn fake_runtime_follows_the_cri_lifecycle() {
    let rt = FakeRuntime::new();
    let sb = rt
        .run_pod_sandbox(sandbox_req("web", &[("app", "web")]))
        .await
        .unwrap();
    rt.run_pod_sandbox(sandbox_req("db", &[("app", "db")]))
        .await
        .unwrap();

    // images must be present to create a container
    let err = rt
        .create_container(container_req(&sb, "server", "busybox"))
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");
    rt.pull_image(
        cri::ImageSpec {
            image: "busybox".into(),
            ..Default::default()
        },
        None,
        None,
    )
    .await
    .unwrap();
    let c = rt
        .create_container(container_req(&sb, "server", "busybox"))
        .await
        .unwrap();

    rt.start_container(&c).await.unwrap();
    assert!(matches!(
        rt.start_container(&c).await,
        Err(RuntimeError::FailedPrecondition(_))
    ));
    let st = container_status(&rt, &c).await;
    assert_eq!(st.state, cri::ContainerState::ContainerRunning as i32);

    // filters: labels and state
    let web = rt
        .list_pod_sandbox(Some(cri::PodSandboxFilter {
            label_selector: HashMap::from([("app".into(), "web".into())]),
            ..Default::default()
        }))
        .await
        .unwrap();
    assert_eq!(web.len(), 1);
    assert_eq!(web[0].id, sb);
    let running = Some(cri::ContainerFilter {
        state: Some(cri::ContainerStateValue {
            state: cri::ContainerState::ContainerRunning as i32,
        }),
        ..Default::default()
    });
    assert_eq!(rt.list_containers(running.clone()).await.unwrap().len(), 1);

    rt.exit_container(&c, 3, "Error");
    assert!(rt.list_containers(running).await.unwrap().is_empty());
    let st = container_status(&rt, &c).await;
    assert_eq!((st.exit_code, st.reason.as_str()), (3, "Error"));

    // stop and remove are idempotent; unknown ids are NotFound for status
    rt.stop_pod_sandbox(&sb).await.unwrap();
    rt.stop_pod_sandbox(&sb).await.unwrap();
    rt.remove_pod_sandbox(&sb).await.unwrap();
    rt.remove_pod_sandbox(&sb).await.unwrap();
    assert!(
        rt.pod_sandbox_status(&sb, false)
            .await
            .unwrap_err()
            .is_not_found()
    );
    assert!(
        rt.container_status(&c, false)
            .await
            .unwrap_err()
            .is_not_found()
    );
}

#[tokio::test]
async fn fake_runtime_injects_failures_once() {
    let rt = FakeRuntime::new();
    rt.fail_next("run_pod_sandbox", RuntimeError::Network("cni down".into()));
    assert!(matches!(
        rt.run_pod_sandbox(sandbox_req("a", &[])).await,
        Err(RuntimeError::Network(_))
    ));
    rt.run_pod_sandbox(sandbox_req("a", &[])).await.unwrap();
    assert_eq!(
        rt.calls()
            .iter()
            .filter(|c| c.starts_with("run_pod_sandbox"))
            .count(),
        2
    );
}

#[tokio::test]
async fn fake_cni_hands_out_distinct_addresses_and_gcs() {
    let cni = FakeCni::new();
    let att = |id: &str| Attachment {
        container_id: id.into(),
        netns: PathBuf::from("/run/netns/x"),
        ifname: "eth0".into(),
        ..Default::default()
    };
    let a = cni.add(&att("a")).await.unwrap();
    let b = cni.add(&att("b")).await.unwrap();
    assert_ne!(a.pod_ips(), b.pod_ips());
    assert_eq!(
        cni.add(&att("a")).await.unwrap(),
        a,
        "ADD of an existing attachment answers the same result"
    );
    cni.check(&att("a")).await.unwrap();
    cni.gc(&[att("b").key()]).await.unwrap();
    assert!(cni.check(&att("a")).await.is_err());
    cni.del(&att("b")).await.unwrap();
    cni.del(&att("b")).await.unwrap();
    assert!(cni.attached().is_empty());
}

#[tokio::test]
async fn fake_router_records_and_fails_on_demand() {
    let r = FakeRouter::new();
    let report = r.sync(&ProxyState::default()).await.unwrap();
    assert!(report.full);
    assert!(!r.sync(&ProxyState::default()).await.unwrap().full);
    r.fail_next("sync", RouterError::Unsupported("x".into()));
    assert!(r.sync(&ProxyState::default()).await.is_err());
    assert_eq!(r.synced().len(), 2);
    r.cleanup().await.unwrap();
    assert_eq!(r.cleanups(), 1);
}

#[tokio::test]
async fn fake_status_sink_wakes_waiters() {
    let sink = FakeStatusSink::new();
    let pod = PodRef::new("default", "web", "u1");
    let s2 = sink.clone();
    let p2 = pod.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        s2.pod_status(
            &p2,
            &PodStatus {
                phase: Some("Running".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    });
    sink.wait_for(Duration::from_secs(2), |pods| {
        pods.get(&pod).and_then(|s| s.phase.as_deref()) == Some("Running")
    })
    .await
    .unwrap();
    sink.pod_deleted(&pod).await.unwrap();
    assert!(sink.pods().is_empty());
    assert_eq!(sink.history().len(), 2);
    assert!(
        sink.wait_for(Duration::from_millis(50), |p| !p.is_empty())
            .await
            .is_err()
    );
}

fn pod(name: &str) -> Pod {
    let mut p = Pod::default();
    p.metadata.name = Some(name.into());
    p.metadata.namespace = Some("default".into());
    p
}

#[tokio::test]
async fn scripted_source_snapshots_then_streams() {
    let src = ScriptedPodSource::new("test");
    src.apply(pod("a"));
    let mut w = src.watch();
    assert_eq!(w.next().await.unwrap().unwrap(), PodEvent::Init);
    assert_eq!(
        w.next().await.unwrap().unwrap(),
        PodEvent::InitApply(pod("a"))
    );
    assert_eq!(w.next().await.unwrap().unwrap(), PodEvent::InitDone);
    src.apply(pod("b"));
    src.delete(&pod("a"));
    src.fail("test", "boom");
    assert_eq!(w.next().await.unwrap().unwrap(), PodEvent::Apply(pod("b")));
    assert_eq!(w.next().await.unwrap().unwrap(), PodEvent::Delete(pod("a")));
    assert!(w.next().await.unwrap().is_err());
    // a second watch starts from the current pods
    let mut w2 = src.watch();
    assert_eq!(w2.next().await.unwrap().unwrap(), PodEvent::Init);
    assert_eq!(
        w2.next().await.unwrap().unwrap(),
        PodEvent::InitApply(pod("b"))
    );
    assert_eq!(src.watchers(), 2);
    drop(w);
    assert_eq!(src.watchers(), 1);
}
