//! The pod lifecycle event generator: container events from the runtime
//! (`RuntimeBackend::get_container_events`) wake the pod's worker at once; without events, the
//! relist notices an exit within its period. Fakes on tokio's paused clock; no root needed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use node_core::{Pod, RuntimeBackend, cri};
use node_kubelet::{CancellationToken, Kubelet, KubeletConfig, labels};
use node_test_support::{FakeRuntime, FakeStatusSink, ScriptedPodSource};
use tokio::time::Instant;

mod support;
use node_test_support::HookedRuntime as Hooked;

fn job() -> Pod {
    serde_saphyr::from_str(
        "metadata: {name: job, namespace: default, uid: uid-job}\nspec:\n  restartPolicy: Never\n  containers: [{name: c, image: \"img:1\"}]\n",
    )
    .unwrap()
}

fn start(
    rt: Arc<dyn RuntimeBackend>,
    images: &FakeRuntime,
    sink: &FakeStatusSink,
    source: &ScriptedPodSource,
    config: KubeletConfig,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let token = CancellationToken::new();
    let kubelet = Kubelet::builder("node-1")
        .source(Arc::new(source.clone()))
        .runtime(rt, Arc::new(images.clone()))
        .status(Arc::new(sink.clone()))
        .config(config)
        .build()
        .unwrap();
    let t = token.clone();
    (
        token,
        tokio::spawn(async move { kubelet.run(t).await.unwrap() }),
    )
}

async fn running_container(rt: &FakeRuntime) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(c) = rt
            .containers()
            .into_iter()
            .find(|c| c.state == cri::ContainerState::ContainerRunning)
        {
            return c.id;
        }
        assert!(Instant::now() < deadline, "no running container");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn terminated(sink: &FakeStatusSink) -> bool {
    sink.pods().values().any(|s| {
        s.container_statuses.iter().flatten().any(|c| {
            c.state
                .as_ref()
                .is_some_and(|st| st.terminated.as_ref().is_some_and(|t| t.exit_code == 7))
        })
    })
}

/// How long after `exit` the status shows the container terminated (paused clock, 10 ms steps).
async fn noticed_after(sink: &FakeStatusSink, limit: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() <= limit {
        if terminated(sink) {
            return Some(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

#[tokio::test(start_paused = true)]
async fn a_container_event_wakes_the_worker_at_once() {
    let fake = FakeRuntime::new();
    fake.add_image("img:1");
    let (rt, tx) = Hooked::new(Arc::new(fake.clone())).with_events();
    let sink = FakeStatusSink::new();
    let source = ScriptedPodSource::new("test");
    source.apply(job());
    // relist and resync so rare that only the event can make the exit noticed in time
    let config = KubeletConfig {
        relist_period: Duration::from_secs(3600),
        sync_period: Duration::from_secs(3600),
        ..Default::default()
    };
    let (token, task) = start(Arc::new(rt.clone()), &fake, &sink, &source, config);
    let id = running_container(&fake).await;
    assert_eq!(rt.subscriptions(), 1, "subscribed once");

    fake.exit_container(&id, 7, "Error");
    assert_eq!(
        noticed_after(&sink, Duration::from_secs(60)).await,
        None,
        "without an event nothing notices the exit before the relist"
    );
    let sandbox = fake.sandboxes().remove(0);
    tx.send(cri::ContainerEventResponse {
        container_id: id.clone(),
        container_event_type: cri::ContainerEventType::ContainerStoppedEvent as i32,
        created_at: 0,
        pod_sandbox_status: Some(cri::PodSandboxStatus {
            id: sandbox.id.clone(),
            labels: HashMap::from([(labels::POD_UID.to_string(), "uid-job".to_string())]),
            ..Default::default()
        }),
        containers_statuses: vec![],
    })
    .unwrap();
    let after = noticed_after(&sink, Duration::from_secs(1))
        .await
        .expect("the event made the exit noticed within a second");
    assert!(after < Duration::from_secs(1), "{after:?}");
    token.cancel();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn without_events_the_default_relist_notices_an_exit_within_a_second() {
    // FakeRuntime answers GetContainerEvents with Unimplemented, as containerd 1.6 does
    let fake = FakeRuntime::new();
    fake.add_image("img:1");
    let sink = FakeStatusSink::new();
    let source = ScriptedPodSource::new("test");
    source.apply(job());
    let config = KubeletConfig {
        sync_period: Duration::from_secs(3600),
        ..Default::default()
    };
    assert!(config.relist_period <= Duration::from_secs(1));
    let (token, task) = start(Arc::new(fake.clone()), &fake, &sink, &source, config);
    let id = running_container(&fake).await;
    fake.exit_container(&id, 7, "Error");
    let after = noticed_after(&sink, Duration::from_secs(5))
        .await
        .expect("the relist noticed the exit");
    assert!(after <= Duration::from_millis(1100), "{after:?}");
    token.cancel();
    task.await.unwrap();
}
