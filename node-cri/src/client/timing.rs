//! Pod start timing over any [`RuntimeBackend`]: `RunPodSandbox` + `CreateContainer` +
//! `StartContainer` until the container reports running, repeated, with percentiles.
//!
//! Used by tests and benches to compare runtimes (the CRI client against containerd, the native
//! runtime) on the same workload. The image must be present already: pulls are not timed.

use std::time::{Duration, Instant};

use node_core::{RuntimeBackend, RuntimeError, cri};

/// What to start in each run. Every run gets unique sandbox names (`<name>-<n>`) and uids.
#[derive(Debug, Clone)]
pub struct PodStartSpec {
    /// The sandbox config template (metadata name, namespace, log directory, labels...).
    pub sandbox: cri::PodSandboxConfig,
    /// The container config template (image, command...).
    pub container: cri::ContainerConfig,
    /// The runtime handler (empty: the runtime's default).
    pub runtime_handler: String,
    /// How many pods to start.
    pub runs: usize,
    /// How long one container may take to report running.
    pub running_timeout: Duration,
}

impl PodStartSpec {
    /// `runs` pods named `<name>-<n>` in namespace `nodekit-bench`, each with one container
    /// running `sleep 3600` from `image` (which must provide `sleep`), logging to `log_directory`.
    pub fn sleeping(name: &str, image: &str, log_directory: &str, runs: usize) -> Self {
        Self {
            sandbox: cri::PodSandboxConfig {
                metadata: Some(cri::PodSandboxMetadata {
                    name: name.into(),
                    uid: name.into(),
                    namespace: "nodekit-bench".into(),
                    attempt: 0,
                }),
                hostname: name.into(),
                log_directory: log_directory.into(),
                linux: Some(cri::LinuxPodSandboxConfig::default()),
                ..Default::default()
            },
            container: cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: "main".into(),
                    attempt: 0,
                }),
                image: Some(cri::ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                command: vec!["sleep".into(), "3600".into()],
                log_path: "main.log".into(),
                linux: Some(cri::LinuxContainerConfig::default()),
                ..Default::default()
            },
            runtime_handler: String::new(),
            runs,
            running_timeout: Duration::from_secs(30),
        }
    }
}

/// The time each step of one pod start took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PodStartSample {
    /// `RunPodSandbox` (namespaces, pause container, CNI).
    pub run_pod_sandbox: Duration,
    /// `CreateContainer`.
    pub create_container: Duration,
    /// `StartContainer`.
    pub start_container: Duration,
    /// From `StartContainer`'s answer until `ContainerStatus` says running.
    pub until_running: Duration,
    /// The whole start: sandbox to running.
    pub total: Duration,
}

/// Picks one step's duration out of a sample.
type Step = fn(&PodStartSample) -> Duration;

/// The samples of a [`measure_pod_start`] run.
#[derive(Debug, Clone, Default)]
pub struct PodStartTimings {
    /// One sample per pod, in order.
    pub samples: Vec<PodStartSample>,
}

impl PodStartTimings {
    /// The `q` quantile (0.0..=1.0, nearest rank) of one step, e.g. `percentile(0.5, |s| s.total)`.
    pub fn percentile(&self, q: f64, step: impl Fn(&PodStartSample) -> Duration) -> Duration {
        let mut v: Vec<Duration> = self.samples.iter().map(step).collect();
        if v.is_empty() {
            return Duration::ZERO;
        }
        v.sort();
        let rank = ((q.clamp(0.0, 1.0) * v.len() as f64).ceil() as usize).clamp(1, v.len());
        v[rank - 1]
    }

    /// The median of the whole start.
    pub fn p50_total(&self) -> Duration {
        self.percentile(0.5, |s| s.total)
    }

    /// One line per step: p50 and max, in milliseconds.
    pub fn summary(&self) -> String {
        let steps: [(&str, Step); 5] = [
            ("run_pod_sandbox", |s| s.run_pod_sandbox),
            ("create_container", |s| s.create_container),
            ("start_container", |s| s.start_container),
            ("until_running", |s| s.until_running),
            ("total", |s| s.total),
        ];
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        steps
            .iter()
            .map(|(name, f)| {
                format!(
                    "{name:>16}: p50 {:8.1} ms  p90 {:8.1} ms  max {:8.1} ms",
                    ms(self.percentile(0.5, f)),
                    ms(self.percentile(0.9, f)),
                    ms(self.percentile(1.0, f))
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Start `spec.runs` pods one after the other on `runtime`, time each, and remove each pod
/// after its sample (removal is not timed). Stops at the first error, removing that pod too.
pub async fn measure_pod_start(
    runtime: &dyn RuntimeBackend,
    spec: &PodStartSpec,
) -> Result<PodStartTimings, RuntimeError> {
    let mut timings = PodStartTimings::default();
    for n in 0..spec.runs {
        let mut sandbox = spec.sandbox.clone();
        let meta = sandbox.metadata.get_or_insert_with(Default::default);
        meta.name = format!(
            "{}-{n}",
            if meta.name.is_empty() {
                "timing"
            } else {
                &meta.name
            }
        );
        meta.uid = format!("{}-{}-{n}", meta.uid, std::process::id());
        let t0 = Instant::now();
        let pod = runtime
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(sandbox.clone()),
                runtime_handler: spec.runtime_handler.clone(),
            })
            .await?;
        let sample = start_in(runtime, spec, &pod, sandbox, t0).await;
        let _ = runtime.stop_pod_sandbox(&pod).await;
        let _ = runtime.remove_pod_sandbox(&pod).await;
        timings.samples.push(sample?);
    }
    Ok(timings)
}

async fn start_in(
    runtime: &dyn RuntimeBackend,
    spec: &PodStartSpec,
    pod: &str,
    sandbox: cri::PodSandboxConfig,
    t0: Instant,
) -> Result<PodStartSample, RuntimeError> {
    let run_pod_sandbox = t0.elapsed();
    let t1 = Instant::now();
    let id = runtime
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.to_string(),
            config: Some(spec.container.clone()),
            sandbox_config: Some(sandbox),
        })
        .await?;
    let create_container = t1.elapsed();
    let t2 = Instant::now();
    runtime.start_container(&id).await?;
    let start_container = t2.elapsed();
    let t3 = Instant::now();
    loop {
        let st = runtime.container_status(&id, false).await?;
        let state = st.status.as_ref().map(|s| s.state).unwrap_or_default();
        if state == cri::ContainerState::ContainerRunning as i32 {
            break;
        }
        if state == cri::ContainerState::ContainerExited as i32 {
            return Err(RuntimeError::FailedPrecondition(format!(
                "container {id} exited before it was seen running"
            )));
        }
        if t3.elapsed() > spec.running_timeout {
            return Err(RuntimeError::Timeout(spec.running_timeout));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let until_running = t3.elapsed();
    Ok(PodStartSample {
        run_pod_sandbox,
        create_container,
        start_container,
        until_running,
        total: t0.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test]
    async fn measures_every_run_and_removes_its_pods() {
        let rt = node_test_support::FakeRuntime::new();
        rt.add_image("busybox");
        let spec = PodStartSpec::sleeping("timing", "busybox", "/tmp/logs", 5);
        let t = measure_pod_start(&rt, &spec).await.unwrap();
        assert_eq!(t.samples.len(), 5);
        assert!(
            t.samples
                .iter()
                .all(|s| s.total >= s.run_pod_sandbox + s.create_container + s.start_container)
        );
        // unique sandbox names, all removed again
        let calls = rt.calls();
        assert_eq!(
            calls
                .iter()
                .filter(|c| c.starts_with("run_pod_sandbox"))
                .count(),
            5,
            "{calls:?}"
        );
        assert_eq!(
            calls
                .iter()
                .filter(|c| c.starts_with("remove_pod_sandbox"))
                .count(),
            5,
            "{calls:?}"
        );
        assert!(rt.sandboxes().is_empty());

        // a failing start stops the measurement and still removes that pod
        let rt = node_test_support::FakeRuntime::new();
        let err = measure_pod_start(&rt, &spec).await.unwrap_err();
        assert!(
            matches!(err, RuntimeError::NotFound { kind: "image", .. }),
            "{err:?}"
        );
        assert!(rt.sandboxes().is_empty());
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let t = PodStartTimings {
            samples: [5, 1, 4, 2, 3, 10, 6, 7, 9, 8]
                .iter()
                .map(|&n| PodStartSample {
                    total: ms(n),
                    ..Default::default()
                })
                .collect(),
        };
        assert_eq!(t.p50_total(), ms(5));
        assert_eq!(t.percentile(0.9, |s| s.total), ms(9));
        assert_eq!(t.percentile(1.0, |s| s.total), ms(10));
        assert_eq!(t.percentile(0.0, |s| s.total), ms(1));
        assert_eq!(PodStartTimings::default().p50_total(), Duration::ZERO);
        assert!(t.summary().contains("total"));
    }
}
