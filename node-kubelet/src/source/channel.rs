//! [`ChannelSource`]: pods handed over in process, for integrators that compute their own pods.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use node_core::{PodEvent, PodRef, PodSource, PodStream, SourceError};
use tokio::sync::mpsc;

type Tx = mpsc::UnboundedSender<Result<PodEvent, SourceError>>;

#[derive(Default)]
struct State {
    pods: BTreeMap<(String, String), Pod>,
    watchers: Vec<Tx>,
}

/// An in-process pod source: call [`apply`](Self::apply) and [`delete`](Self::delete) from your
/// code; every watch sees the current pods as its snapshot, then the changes.
///
/// Clones share the same pods, so keep one clone to feed and give another to the kubelet.
#[derive(Clone)]
pub struct ChannelSource {
    name: String,
    state: Arc<Mutex<State>>,
}

fn key(pod: &Pod) -> (String, String) {
    let r = PodRef::of(pod);
    (r.namespace, r.name)
}

impl ChannelSource {
    /// A source named `name` (the value of the pods' `kubernetes.io/config.source` annotation).
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            state: Arc::default(),
        }
    }

    /// Add or replace a pod (by namespace/name).
    pub fn apply(&self, pod: Pod) {
        let mut s = self.state.lock().expect("channel source lock");
        s.pods.insert(key(&pod), pod.clone());
        s.watchers
            .retain(|w| w.send(Ok(PodEvent::Apply(pod.clone()))).is_ok());
    }

    /// Remove a pod by namespace and name; returns whether it was there.
    pub fn delete(&self, namespace: &str, name: &str) -> bool {
        let mut s = self.state.lock().expect("channel source lock");
        let Some(pod) = s.pods.remove(&(namespace.to_string(), name.to_string())) else {
            return false;
        };
        s.watchers
            .retain(|w| w.send(Ok(PodEvent::Delete(pod.clone()))).is_ok());
        true
    }

    /// Replace every pod at once (sent as a new snapshot).
    pub fn replace_all(&self, pods: impl IntoIterator<Item = Pod>) {
        let mut s = self.state.lock().expect("channel source lock");
        s.pods = pods.into_iter().map(|p| (key(&p), p)).collect();
        let snapshot = snapshot(&s.pods);
        s.watchers
            .retain(|w| snapshot.iter().all(|e| w.send(Ok(e.clone())).is_ok()));
    }

    /// The pods held now.
    pub fn pods(&self) -> Vec<Pod> {
        self.state
            .lock()
            .expect("channel source lock")
            .pods
            .values()
            .cloned()
            .collect()
    }
}

fn snapshot(pods: &BTreeMap<(String, String), Pod>) -> Vec<PodEvent> {
    let mut v = vec![PodEvent::Init];
    v.extend(pods.values().cloned().map(PodEvent::InitApply));
    v.push(PodEvent::InitDone);
    v
}

impl PodSource for ChannelSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn watch(&self) -> PodStream {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut s = self.state.lock().expect("channel source lock");
        for e in snapshot(&s.pods) {
            let _ = tx.send(Ok(e));
        }
        s.watchers.push(tx);
        tokio_stream::wrappers::UnboundedReceiverStream::new(rx).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        p
    }

    #[tokio::test]
    async fn watch_starts_with_a_snapshot_then_follows() {
        let src = ChannelSource::new("app");
        src.apply(pod("a"));
        let mut w = src.watch();
        assert_eq!(w.next().await.unwrap().unwrap(), PodEvent::Init);
        assert_eq!(
            w.next().await.unwrap().unwrap(),
            PodEvent::InitApply(pod("a"))
        );
        assert_eq!(w.next().await.unwrap().unwrap(), PodEvent::InitDone);
        src.apply(pod("b"));
        assert!(src.delete("default", "a"));
        assert!(!src.delete("default", "zzz"));
        assert_eq!(w.next().await.unwrap().unwrap(), PodEvent::Apply(pod("b")));
        assert_eq!(w.next().await.unwrap().unwrap(), PodEvent::Delete(pod("a")));
        assert_eq!(src.pods(), vec![pod("b")]);
    }
}
