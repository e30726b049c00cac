//! Graceful node shutdown with a fake pod terminator: NotReady first, groups in priority order,
//! pods of a group in parallel, a stuck pod cut off at its group's grace period; and a real
//! SIGTERM to this test process starting it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Pod;
use node_core::PodRef;
use node_kubelet::node::shutdown::{
    PodTerminator, PriorityGracePeriod, ShutdownConfig, ShutdownError, execute_shutdown,
    plan_shutdown, termination_signal,
};
use tokio::time::Instant;

/// Records what happened, when; a pod named `stuck*` never stops; others take 1 s.
struct FakeTerminator {
    start: Instant,
    events: Mutex<Vec<(String, Duration, Duration)>>,
}

impl FakeTerminator {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            events: Mutex::default(),
        })
    }
    fn events(&self) -> Vec<(String, Duration, Duration)> {
        self.events.lock().unwrap().clone()
    }
}

#[async_trait]
impl PodTerminator for FakeTerminator {
    async fn terminate(&self, pod: &PodRef, grace: Duration) -> Result<(), ShutdownError> {
        let at = self.start.elapsed();
        self.events
            .lock()
            .unwrap()
            .push((format!("stop {}", pod.name), grace, at));
        if pod.name.starts_with("stuck") {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        self.events.lock().unwrap().push((
            format!("stopped {}", pod.name),
            grace,
            self.start.elapsed(),
        ));
        Ok(())
    }
    async fn node_shutting_down(&self) {
        self.events
            .lock()
            .unwrap()
            .push(("NotReady".into(), Duration::ZERO, self.start.elapsed()));
    }
}

fn pod(name: &str, priority: i32, grace: i64) -> Pod {
    serde_saphyr::from_str(&format!(
        "metadata: {{name: {name}, uid: {name}}}\nspec:\n  priority: {priority}\n  terminationGracePeriodSeconds: {grace}\n  containers: [{{name: c, image: i}}]\n"
    ))
    .unwrap()
}

fn config() -> ShutdownConfig {
    ShutdownConfig {
        by_priority: vec![
            PriorityGracePeriod {
                priority: 0,
                grace_period: Duration::from_secs(10),
            },
            PriorityGracePeriod {
                priority: 1000,
                grace_period: Duration::from_secs(5),
            },
            PriorityGracePeriod {
                priority: 1_000_000,
                grace_period: Duration::from_secs(3),
            },
        ],
    }
}

#[tokio::test(start_paused = true)]
async fn groups_stop_in_priority_order_within_their_grace_periods() {
    let pods = [
        pod("db", 1_000_000, 30),
        pod("web-1", 1000, 2),
        pod("batch", 0, 30),
        pod("stuck", 0, 30),
        pod("web-2", 1000, 30),
    ];
    let plan = plan_shutdown(&config(), &pods);
    let t = FakeTerminator::new();
    let reports = execute_shutdown(&plan, t.as_ref()).await;

    let ev = t.events();
    let secs = |s: &str| {
        ev.iter()
            .find(|(e, _, _)| e == s)
            .unwrap_or_else(|| panic!("no event {s}: {ev:?}"))
            .2
            .as_secs()
    };
    assert_eq!(ev[0].0, "NotReady", "NotReady before any pod stops");
    // group priority 0: batch and stuck in parallel; stuck is cut off at 10 s
    assert_eq!(secs("stop batch"), 0);
    assert_eq!(secs("stop stuck"), 0);
    assert_eq!(secs("stopped batch"), 1);
    // group 1000 starts when group 0's grace period is over
    assert_eq!(secs("stop web-1"), 10);
    assert_eq!(secs("stop web-2"), 10);
    assert_eq!(secs("stopped web-2"), 11);
    // group 1000000 waits only for its pods (all stopped at 11 s), not the full 5 s
    assert_eq!(secs("stop db"), 11);
    let grace = |s: &str| ev.iter().find(|(e, _, _)| e == s).unwrap().1.as_secs();
    assert_eq!(
        grace("stop web-1"),
        2,
        "the pod's own grace period when shorter"
    );
    assert_eq!(grace("stop web-2"), 5, "capped by the group");
    assert_eq!(grace("stop db"), 3);

    assert_eq!(reports.len(), 3);
    assert_eq!(
        reports[0].failed,
        vec![PodRef::new("default", "stuck", "stuck")]
    );
    assert_eq!(reports[0].stopped.len(), 1);
    assert_eq!(reports[0].took, Duration::from_secs(10));
    assert!(reports[1].failed.is_empty() && reports[2].failed.is_empty());
}

#[tokio::test]
async fn sigterm_shuts_pods_down_in_priority_order() {
    let signal = termination_signal().expect("SIGTERM handler");
    let pods = [
        pod("high", 1_000_000, 1),
        pod("low", 0, 1),
        pod("mid", 1000, 1),
    ];
    let t = FakeTerminator::new();
    let t2 = t.clone();
    let agent = tokio::spawn(async move {
        signal.await;
        let plan = plan_shutdown(&config(), &pods);
        execute_shutdown(&plan, t2.as_ref()).await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(t.events().is_empty(), "nothing before the signal");
    // SAFETY: kill with our own pid and a signal whose handler is installed above
    assert_eq!(unsafe { libc::kill(libc::getpid(), libc::SIGTERM) }, 0);
    let reports = tokio::time::timeout(Duration::from_secs(30), agent)
        .await
        .expect("shutdown within its budget")
        .unwrap();
    let order: Vec<String> = t
        .events()
        .into_iter()
        .map(|(e, _, _)| e)
        .filter(|e| e.starts_with("stop ") || e == "NotReady")
        .collect();
    assert_eq!(order, ["NotReady", "stop low", "stop mid", "stop high"]);
    assert!(reports.iter().all(|r| r.failed.is_empty()));
}
