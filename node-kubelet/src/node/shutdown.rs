//! Graceful node shutdown: pods are grouped by priority (kubelet's
//! `shutdownGracePeriodByPodPriority`), the node reports NotReady ("node is shutting down"),
//! then the groups are terminated from the lowest priority to the highest, each group's pods in
//! parallel with the group's grace period, within the total budget. The planner is a pure
//! function; the executor drives a [`PodTerminator`] the pod workers implement.

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Pod;
use node_core::PodRef;
use tokio::time::Instant;

/// The priority of system-critical pods (`system-node-critical` is 2000001000,
/// `system-cluster-critical` 2000000000).
pub const SYSTEM_CRITICAL_PRIORITY: i32 = 2_000_000_000;

/// One entry of `shutdownGracePeriodByPodPriority`: pods whose priority is at least `priority`
/// (and below the next entry's) get `grace_period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PriorityGracePeriod {
    /// The lowest priority of the group.
    pub priority: i32,
    /// The time the group gets.
    pub grace_period: Duration,
}

/// The shutdown configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ShutdownConfig {
    /// The groups; empty means no graceful shutdown.
    pub by_priority: Vec<PriorityGracePeriod>,
}

impl ShutdownConfig {
    /// kubelet's simple form: `shutdownGracePeriod` in total, of which
    /// `shutdownGracePeriodCriticalPods` is kept for system-critical pods.
    pub fn from_total(total: Duration, critical: Duration) -> Self {
        let critical = critical.min(total);
        Self {
            by_priority: vec![
                PriorityGracePeriod {
                    priority: i32::MIN,
                    grace_period: total - critical,
                },
                PriorityGracePeriod {
                    priority: SYSTEM_CRITICAL_PRIORITY,
                    grace_period: critical,
                },
            ],
        }
    }

    /// The whole budget (what a systemd inhibitor delay must allow).
    pub fn budget(&self) -> Duration {
        self.by_priority.iter().map(|g| g.grace_period).sum()
    }
}

/// One pod to stop, with its grace period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedPod {
    /// The pod.
    pub pod: PodRef,
    /// min(its terminationGracePeriodSeconds, the group's grace period).
    pub grace_period: Duration,
}

/// One group of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedGroup {
    /// The group's lowest priority.
    pub priority: i32,
    /// The time the group gets.
    pub grace_period: Duration,
    /// Its pods.
    pub pods: Vec<PlannedPod>,
}

fn priority(pod: &Pod) -> i32 {
    pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

/// Plans the shutdown: each pod goes to the group with the highest priority not above its own
/// (pods below every group go to the lowest); groups in increasing priority order; groups
/// without pods are left out.
pub fn plan_shutdown(config: &ShutdownConfig, pods: &[Pod]) -> Vec<PlannedGroup> {
    let mut groups: Vec<PriorityGracePeriod> = config.by_priority.clone();
    groups.sort_by_key(|g| g.priority);
    let mut planned: Vec<PlannedGroup> = groups
        .iter()
        .map(|g| PlannedGroup {
            priority: g.priority,
            grace_period: g.grace_period,
            pods: Vec::new(),
        })
        .collect();
    if planned.is_empty() {
        return planned;
    }
    for pod in pods {
        let p = priority(pod);
        let idx = groups.iter().rposition(|g| g.priority <= p).unwrap_or(0);
        let group = &mut planned[idx];
        let own = pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(30)
            .max(0) as u64;
        group.pods.push(PlannedPod {
            pod: PodRef::of(pod),
            grace_period: Duration::from_secs(own).min(group.grace_period),
        });
    }
    planned.retain(|g| !g.pods.is_empty());
    planned
}

/// An error of a pod termination during shutdown.
#[derive(Debug, thiserror::Error)]
#[error("terminate {pod}: {message}")]
pub struct ShutdownError {
    /// The pod.
    pub pod: PodRef,
    /// What went wrong.
    pub message: String,
}

/// What the pod workers do for the shutdown manager.
#[async_trait]
pub trait PodTerminator: Send + Sync {
    /// Stops the pod (preStop hooks, then containers) within `grace_period`; the pod's status
    /// should say `Terminated` / "Pod was terminated in response to imminent node shutdown.".
    async fn terminate(&self, pod: &PodRef, grace_period: Duration) -> Result<(), ShutdownError>;
    /// The node is shutting down: report NotReady and admit no new pods.
    async fn node_shutting_down(&self);
}

/// The status message kubelet gives pods stopped by a node shutdown.
pub const SHUTDOWN_MESSAGE: &str = "Pod was terminated in response to imminent node shutdown.";

/// What happened to one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupReport {
    /// The group's priority.
    pub priority: i32,
    /// Pods stopped in time.
    pub stopped: Vec<PodRef>,
    /// Pods that failed or did not stop within the group's grace period.
    pub failed: Vec<PodRef>,
    /// How long the group took.
    pub took: Duration,
}

/// Executes a plan: NotReady first, then each group in order, its pods in parallel, waiting at
/// most the group's grace period before moving on.
pub async fn execute_shutdown(
    plan: &[PlannedGroup],
    terminator: &dyn PodTerminator,
) -> Vec<GroupReport> {
    terminator.node_shutting_down().await;
    let mut reports = Vec::new();
    for group in plan {
        let start = Instant::now();
        let deadline = start + group.grace_period;
        let tasks = group.pods.iter().map(|p| async move {
            let r = tokio::time::timeout_at(deadline, terminator.terminate(&p.pod, p.grace_period))
                .await;
            (p.pod.clone(), matches!(r, Ok(Ok(()))))
        });
        let results = futures::future::join_all(tasks).await;
        let (ok, bad): (Vec<_>, Vec<_>) = results.into_iter().partition(|(_, ok)| *ok);
        for (pod, _) in &bad {
            tracing::warn!(%pod, "pod not stopped within its shutdown grace period");
        }
        reports.push(GroupReport {
            priority: group.priority,
            stopped: ok.into_iter().map(|(p, _)| p).collect(),
            failed: bad.into_iter().map(|(p, _)| p).collect(),
            took: start.elapsed(),
        });
    }
    reports
}

/// Completes when the process receives SIGTERM (or SIGINT). Create it early: the handler is
/// installed when this function is called, not when the future is first polled.
pub fn termination_signal() -> std::io::Result<impl Future<Output = ()> + Send> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, priority: i32, grace: i64) -> Pod {
        serde_saphyr::from_str(&format!(
            "metadata: {{name: {name}, uid: {name}}}\nspec:\n  priority: {priority}\n  terminationGracePeriodSeconds: {grace}\n  containers: [{{name: c, image: i}}]\n"
        ))
        .unwrap()
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn plan_groups_by_priority() {
        let config = ShutdownConfig {
            by_priority: vec![
                PriorityGracePeriod {
                    priority: 100_000,
                    grace_period: secs(120),
                },
                PriorityGracePeriod {
                    priority: 0,
                    grace_period: secs(60),
                },
                PriorityGracePeriod {
                    priority: 10_000,
                    grace_period: secs(180),
                },
                PriorityGracePeriod {
                    priority: SYSTEM_CRITICAL_PRIORITY,
                    grace_period: secs(20),
                },
            ],
        };
        let pods = [
            pod("critical", 2_000_001_000, 30),
            pod("low", 0, 30),
            pod("negative", -10, 300),
            pod("mid", 15_000, 600),
            pod("high", 100_000, 5),
        ];
        let plan = plan_shutdown(&config, &pods);
        let summary: Vec<(i32, Vec<(&str, u64)>)> = plan
            .iter()
            .map(|g| {
                (
                    g.priority,
                    g.pods
                        .iter()
                        .map(|p| (p.pod.name.as_str(), p.grace_period.as_secs()))
                        .collect(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (0, vec![("low", 30), ("negative", 60)]),
                (10_000, vec![("mid", 180)]),
                (100_000, vec![("high", 5)]),
                (SYSTEM_CRITICAL_PRIORITY, vec![("critical", 20)]),
            ]
        );
        assert_eq!(config.budget(), secs(380));
    }

    #[test]
    fn simple_form_keeps_time_for_critical_pods() {
        let c = ShutdownConfig::from_total(secs(30), secs(10));
        let plan = plan_shutdown(
            &c,
            &[pod("app", 0, 60), pod("dns", SYSTEM_CRITICAL_PRIORITY, 60)],
        );
        assert_eq!(plan.len(), 2);
        assert_eq!(plan[0].pods[0].grace_period, secs(20));
        assert_eq!(plan[1].pods[0].grace_period, secs(10));
        assert!(plan_shutdown(&ShutdownConfig::default(), &[pod("a", 0, 1)]).is_empty());
    }
}
