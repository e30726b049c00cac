//! [`PodConfig`]: several pod sources merged into one view, like the kubelet's `config.PodConfig`.
//! Each pod is tagged with its source; the output is a stream of add/update/delete updates.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use node_core::{PodEvent, PodSource, SourceError};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The annotation naming the source a pod came from (`file`, `http`, `api`, ...), as the kubelet sets it.
pub const CONFIG_SOURCE_ANNOTATION: &str = "kubernetes.io/config.source";
/// The annotation holding the pod's config hash (its UID), as the kubelet sets it.
pub const CONFIG_HASH_ANNOTATION: &str = "kubernetes.io/config.hash";

/// A change of the merged view.
#[derive(Debug, Clone, PartialEq)]
pub enum PodUpdate {
    /// A pod appeared.
    Add(Pod),
    /// A pod (same UID) changed.
    Update(Pod),
    /// A pod is gone from its source.
    Delete(Pod),
    /// Every source has delivered its first snapshot: pods not in the view can be cleaned up.
    SourcesReady,
    /// A source reported an error (its pods are kept).
    Error {
        /// The source's name.
        source: String,
        /// The error, as text.
        message: String,
    },
}

struct SourceState {
    name: String,
    pods: BTreeMap<String, Pod>,
    /// A snapshot under way.
    pending: Option<BTreeMap<String, Pod>>,
    ready: bool,
}

/// The merging logic, without tasks: feed it each source's events, get the merged updates.
pub struct Merger {
    sources: Vec<SourceState>,
    /// The merged view: uid -> (source index, pod).
    merged: BTreeMap<String, (usize, Pod)>,
    all_ready_sent: bool,
}

fn fill_defaults(source: &str, mut pod: Pod) -> Pod {
    let m = &mut pod.metadata;
    if m.namespace.as_deref().unwrap_or("").is_empty() {
        m.namespace = Some("default".into());
    }
    if m.uid.as_deref().unwrap_or("").is_empty() {
        let digest = Sha256::digest(format!(
            "source:{source}/{}/{}",
            m.namespace.as_deref().unwrap_or(""),
            m.name.as_deref().unwrap_or("")
        ));
        m.uid = Some(hex::encode(&digest[..16]));
    }
    let uid = m.uid.clone().unwrap_or_default();
    let ann = m.annotations.get_or_insert_with(Default::default);
    ann.insert(CONFIG_SOURCE_ANNOTATION.into(), source.to_string());
    ann.entry(CONFIG_HASH_ANNOTATION.into()).or_insert(uid);
    pod
}

fn uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

fn name_key(pod: &Pod) -> (String, String) {
    (
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.name.clone().unwrap_or_default(),
    )
}

impl Merger {
    /// A merger of sources with these names (their order is their precedence on name clashes).
    pub fn new<S: Into<String>>(names: impl IntoIterator<Item = S>) -> Self {
        let sources = names
            .into_iter()
            .map(|n| SourceState {
                name: n.into(),
                pods: BTreeMap::new(),
                pending: None,
                ready: false,
            })
            .collect();
        Self {
            sources,
            merged: BTreeMap::new(),
            all_ready_sent: false,
        }
    }

    /// The merged pods now, by UID.
    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.merged.values().map(|(_, p)| p)
    }

    /// Whether every source has delivered its first snapshot.
    pub fn all_ready(&self) -> bool {
        self.sources.iter().all(|s| s.ready)
    }

    /// Handle one item of source `index`'s stream.
    pub fn handle(&mut self, index: usize, item: Result<PodEvent, SourceError>) -> Vec<PodUpdate> {
        let name = self.sources[index].name.clone();
        let event = match item {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(source = %name, error = %e, "pod source error");
                return vec![PodUpdate::Error {
                    source: name,
                    message: e.to_string(),
                }];
            }
        };
        // A mirror pod (the API server's copy of a static pod, see `node::mirror`) is never run:
        // its static pod is, as kubelet's pod manager keeps the two apart.
        if let PodEvent::InitApply(p) | PodEvent::Apply(p) | PodEvent::Delete(p) = &event
            && crate::node::mirror::is_mirror_pod(p)
        {
            return Vec::new();
        }
        let mut out = Vec::new();
        let src = &mut self.sources[index];
        match event {
            PodEvent::Init => src.pending = Some(BTreeMap::new()),
            PodEvent::InitApply(p) => {
                let p = fill_defaults(&name, p);
                src.pending
                    .get_or_insert_with(BTreeMap::new)
                    .insert(uid(&p), p);
            }
            PodEvent::InitDone => {
                let new = src.pending.take().unwrap_or_default();
                src.ready = true;
                let old = std::mem::take(&mut src.pods);
                for (u, p) in &old {
                    if !new.contains_key(u) {
                        out.extend(self.remove(index, u, p.clone()));
                    }
                }
                for p in new.into_values() {
                    out.extend(self.upsert(index, p));
                }
                if self.all_ready() && !self.all_ready_sent {
                    self.all_ready_sent = true;
                    out.push(PodUpdate::SourcesReady);
                }
            }
            PodEvent::Apply(p) => {
                let p = fill_defaults(&name, p);
                out.extend(self.upsert(index, p));
            }
            PodEvent::Delete(p) => {
                let p = fill_defaults(&name, p);
                // a source may delete by name with a stale object: find the pod by uid, then by name
                let u = uid(&p);
                let key = if self.sources[index].pods.contains_key(&u) {
                    Some(u)
                } else {
                    let nk = name_key(&p);
                    self.sources[index]
                        .pods
                        .iter()
                        .find(|(_, q)| name_key(q) == nk)
                        .map(|(u, _)| u.clone())
                };
                if let Some(u) = key
                    && let Some(old) = self.sources[index].pods.remove(&u)
                {
                    out.extend(self.remove(index, &u, old));
                }
            }
        }
        out
    }

    fn upsert(&mut self, index: usize, pod: Pod) -> Vec<PodUpdate> {
        let u = uid(&pod);
        self.sources[index].pods.insert(u.clone(), pod.clone());
        if let Some((owner, old)) = self.merged.get(&u) {
            if *owner != index {
                tracing::warn!(uid = %u, "pod uid claimed by two sources; the first one keeps it");
                return vec![];
            }
            if *old == pod {
                return vec![];
            }
            self.merged.insert(u, (index, pod.clone()));
            return vec![PodUpdate::Update(pod)];
        }
        let nk = name_key(&pod);
        if let Some((_, (owner, _))) = self.merged.iter().find(|(_, (_, q))| name_key(q) == nk) {
            let message = format!(
                "pod {}/{} from source {} is already defined by source {}; ignored",
                nk.0, nk.1, self.sources[index].name, self.sources[*owner].name
            );
            tracing::warn!("{message}");
            return vec![PodUpdate::Error {
                source: self.sources[index].name.clone(),
                message,
            }];
        }
        self.merged.insert(u, (index, pod.clone()));
        vec![PodUpdate::Add(pod)]
    }

    fn remove(&mut self, index: usize, u: &str, pod: Pod) -> Vec<PodUpdate> {
        match self.merged.get(u) {
            Some((owner, _)) if *owner == index => {
                let (_, current) = self.merged.remove(u).expect("present");
                let _ = pod;
                vec![PodUpdate::Delete(current)]
            }
            _ => vec![],
        }
    }
}

/// Several [`PodSource`]s merged into one stream of [`PodUpdate`]s.
#[derive(Default)]
pub struct PodConfig {
    sources: Vec<Arc<dyn PodSource>>,
}

impl PodConfig {
    /// No sources yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a source; earlier sources win name clashes.
    pub fn add_source(&mut self, source: Arc<dyn PodSource>) {
        self.sources.push(source);
    }

    /// Start watching every source; the merged updates arrive on the returned channel until
    /// `shutdown` is cancelled. With no source, `SourcesReady` is sent at once.
    pub fn run(self, shutdown: CancellationToken) -> mpsc::UnboundedReceiver<PodUpdate> {
        let (tx, rx) = mpsc::unbounded_channel();
        let names: Vec<String> = self.sources.iter().map(|s| s.name().to_string()).collect();
        let streams: Vec<_> = self
            .sources
            .iter()
            .enumerate()
            .map(|(i, s)| s.watch().map(move |item| (i, item)).boxed())
            .collect();
        tokio::spawn(async move {
            let mut merger = Merger::new(names);
            if merger.all_ready() {
                let _ = tx.send(PodUpdate::SourcesReady);
            }
            let mut all = futures::stream::select_all(streams);
            loop {
                let next = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    next = all.next() => next,
                };
                let Some((i, item)) = next else {
                    // every source ended: the view stays as it is until shutdown
                    shutdown.cancelled().await;
                    return;
                };
                for update in merger.handle(i, item) {
                    if tx.send(update).is_err() {
                        return;
                    }
                }
            }
        });
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, uid: &str, image: &str) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        if !uid.is_empty() {
            p.metadata.uid = Some(uid.into());
        }
        p.spec = Some(k8s_openapi::api::core::v1::PodSpec {
            containers: vec![k8s_openapi::api::core::v1::Container {
                name: "c".into(),
                image: Some(image.into()),
                ..Default::default()
            }],
            ..Default::default()
        });
        p
    }

    fn kinds(updates: &[PodUpdate]) -> Vec<String> {
        updates
            .iter()
            .map(|u| match u {
                PodUpdate::Add(p) => format!("add {}", p.metadata.name.as_deref().unwrap()),
                PodUpdate::Update(p) => format!("update {}", p.metadata.name.as_deref().unwrap()),
                PodUpdate::Delete(p) => format!("delete {}", p.metadata.name.as_deref().unwrap()),
                PodUpdate::SourcesReady => "ready".into(),
                PodUpdate::Error { source, .. } => format!("error {source}"),
            })
            .collect()
    }

    #[test]
    fn merges_tags_and_diffs() {
        let mut m = Merger::new(["file", "api"]);
        assert!(m.handle(0, Ok(PodEvent::Init)).is_empty());
        assert!(
            m.handle(0, Ok(PodEvent::InitApply(pod("a", "u1", "i"))))
                .is_empty()
        );
        assert_eq!(kinds(&m.handle(0, Ok(PodEvent::InitDone))), ["add a"]);
        m.handle(1, Ok(PodEvent::Init));
        m.handle(1, Ok(PodEvent::InitApply(pod("b", "", "i"))));
        assert_eq!(
            kinds(&m.handle(1, Ok(PodEvent::InitDone))),
            ["add b", "ready"]
        );

        let a = m
            .pods()
            .find(|p| p.metadata.name.as_deref() == Some("a"))
            .unwrap();
        assert_eq!(
            a.metadata.annotations.as_ref().unwrap()[CONFIG_SOURCE_ANNOTATION],
            "file"
        );
        assert_eq!(a.metadata.namespace.as_deref(), Some("default"));
        let b = m
            .pods()
            .find(|p| p.metadata.name.as_deref() == Some("b"))
            .unwrap();
        assert_eq!(
            b.metadata.uid.as_ref().unwrap().len(),
            32,
            "a missing uid is derived"
        );

        assert!(
            m.handle(0, Ok(PodEvent::Apply(pod("a", "u1", "i"))))
                .is_empty(),
            "unchanged"
        );
        assert_eq!(
            kinds(&m.handle(0, Ok(PodEvent::Apply(pod("a", "u1", "j"))))),
            ["update a"]
        );
        assert_eq!(
            kinds(&m.handle(1, Ok(PodEvent::Apply(pod("a", "u9", "i"))))),
            ["error api"],
            "name clash"
        );
        assert_eq!(
            kinds(&m.handle(1, Ok(PodEvent::Delete(pod("b", "", "i"))))),
            ["delete b"]
        );
        assert_eq!(
            kinds(&m.handle(
                0,
                Err(SourceError::Remote {
                    origin: "x".into(),
                    message: "y".into()
                })
            )),
            ["error file"]
        );
        // a new snapshot without `a` deletes it
        m.handle(0, Ok(PodEvent::Init));
        assert_eq!(kinds(&m.handle(0, Ok(PodEvent::InitDone))), ["delete a"]);
        assert_eq!(m.pods().count(), 0);
    }

    #[test]
    fn mirror_pods_are_never_run() {
        let mut m = Merger::new(["file", "api"]);
        let mut mirror = pod("web-node-1", "m1", "i");
        mirror
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(crate::node::mirror::MIRROR_ANNOTATION.into(), "hash".into());
        m.handle(1, Ok(PodEvent::Init));
        assert!(
            m.handle(1, Ok(PodEvent::InitApply(mirror.clone())))
                .is_empty()
        );
        m.handle(1, Ok(PodEvent::InitDone));
        assert!(m.handle(1, Ok(PodEvent::Apply(mirror.clone()))).is_empty());
        assert!(m.handle(1, Ok(PodEvent::Delete(mirror))).is_empty());
        assert_eq!(m.pods().count(), 0);
        // the static pod of the same name from its file is run
        assert_eq!(
            kinds(&m.handle(0, Ok(PodEvent::Apply(pod("web-node-1", "s1", "i"))))),
            ["add web-node-1"]
        );
    }
}
