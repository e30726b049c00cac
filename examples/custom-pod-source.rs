//! An integrator's own `PodSource` (the pods of a directory's `*.json` files) run by the
//! `Kubelet` on node-test-support's fake runtime: no root needed, it shows the events flowing
//! (`kubelet-containerd.rs` swaps in a real runtime). Prints the statuses reported and exits once
//! every pod runs; a file that is not a pod is reported and skipped.
//!
//! `cargo run --example custom-pod-source -- DIR` with e.g. a file `DIR/web.json`:
//! `{"metadata":{"name":"web"},"spec":{"containers":[{"name":"web","image":"busybox"}]}}`

use std::{collections::BTreeMap, path::Path, sync::Arc, time::Duration};

use futures::{StreamExt, stream};
use node_core::{Pod, PodEvent, PodSource, PodStatus, PodStream};
use node_kubelet::{CancellationToken, Kubelet};
use node_test_support::{FakeRuntime, FakeStatusSink};

/// The pods of a directory's `*.json` files, read once: a snapshot, then no changes.
struct JsonDir(Vec<Pod>);

impl JsonDir {
    fn read(dir: &Path) -> anyhow::Result<Self> {
        let mut pods = vec![];
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension() == Some("json".as_ref()) {
                match serde_json::from_slice(&std::fs::read(&path)?) {
                    Ok(pod) => pods.push(pod),
                    Err(e) => eprintln!("{}: not a pod: {e}", path.display()),
                }
            }
        }
        Ok(Self(pods))
    }
}

impl PodSource for JsonDir {
    fn name(&self) -> &str {
        "json-dir"
    }
    fn watch(&self) -> PodStream {
        let mut events = vec![Ok(PodEvent::Init)];
        events.extend(self.0.iter().map(|p| Ok(PodEvent::InitApply(p.clone()))));
        events.push(Ok(PodEvent::InitDone));
        stream::iter(events).chain(stream::pending()).boxed() // then stays open
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| ".".into());
    let source = JsonDir::read(Path::new(&dir))?;
    let count = source.0.len();
    let runtime = Arc::new(FakeRuntime::new());
    let sink = Arc::new(FakeStatusSink::new());
    let kubelet = Kubelet::builder("custom-node")
        .source(Arc::new(source))
        .runtime(runtime.clone(), runtime)
        .status(sink.clone())
        .build()?;
    let token = CancellationToken::new();
    let task = tokio::spawn(kubelet.run(token.clone()));
    let running = |s: &PodStatus| s.phase.as_deref() == Some("Running");
    let all_run = |p: &BTreeMap<_, _>| p.len() == count && p.values().all(running);
    let waited = sink.wait_for(Duration::from_secs(60), all_run).await;
    for (pod, s) in sink.history() {
        let (phase, ip) = s.map(|s| (s.phase, s.pod_ip)).unwrap_or_default();
        let (phase, ip) = (phase.unwrap_or_default(), ip.unwrap_or_default());
        println!("{}/{}: {phase} {ip}", pod.namespace, pod.name);
    }
    token.cancel();
    waited.map_err(anyhow::Error::msg)?;
    Ok(task.await??)
}
