//! A rough figure, not a timed assertion: how long the kubelet takes to bring many pods to Ready
//! on the fake runtime (the kubelet's own overhead: merger, workers, relist, status). Ignored by
//! default; run with `cargo test -p node-kubelet --test scale_fakes -- --ignored --nocapture`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use node_kubelet::{CancellationToken, Kubelet};
use node_test_support::{FakeRuntime, FakeStatusSink, ScriptedPodSource};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "prints a figure; run explicitly"]
async fn many_pods_become_ready() {
    for n in [50usize, 200, 500] {
        let rt = FakeRuntime::new();
        let sink = FakeStatusSink::new();
        let source = ScriptedPodSource::new("scale");
        for i in 0..n {
            let yaml = format!(
                "metadata: {{name: p{i}, uid: uid-{i}}}\nspec:\n  containers:\n  - {{name: a, image: \"img:1\"}}\n  - {{name: b, image: \"img:1\", readinessProbe: {{exec: {{command: [r]}}, periodSeconds: 1}}}}\n"
            );
            source.apply(serde_saphyr::from_str(&yaml).unwrap());
        }
        let logs = tempfile::tempdir().unwrap();
        let kubelet = Kubelet::builder("node-1")
            .source(Arc::new(source.clone()))
            .runtime(Arc::new(rt.clone()), Arc::new(rt.clone()))
            .status(Arc::new(sink.clone()))
            .config(node_kubelet::KubeletConfig {
                pod_log_root: logs.path().to_path_buf(),
                ..Default::default()
            })
            .build()
            .unwrap();
        let token = CancellationToken::new();
        let t = token.clone();
        let started = Instant::now();
        let task = tokio::spawn(async move { kubelet.run(t).await.unwrap() });
        sink.wait_for(Duration::from_secs(300), |pods| {
            pods.len() == n
                && pods.values().all(|s| {
                    s.conditions
                        .as_ref()
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                })
        })
        .await
        .unwrap();
        let took = started.elapsed();
        let calls = rt.calls().len();
        println!(
            "{n} pods (2 containers, 1 exec readiness probe each) Ready in {took:?}; {calls} runtime calls"
        );
        token.cancel();
        task.await.unwrap();
    }
}
