//! The pods bound to this node on the API server: one list and watch of them
//! ([`NodePodsWatch`], kube-runtime's watcher: resume from the last resourceVersion, re-list on
//! 410 Gone, exponential back-off on errors) and a cache of them that every consumer reads —
//! the pod workers through [`ApiServerSource`], the mirror pods of static pods through
//! [`MirrorPods`] — as kubelet has one pod watch (its pod config from the API server) whose
//! pods its mirror-pod handling reads from the pod manager.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{WatchStreamExt, watcher};
use node_core::{PodEvent, PodSource, PodStream, SourceError};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::node::mirror::{MirrorPods, is_mirror_pod};

/// The key of a pod of the node: namespace (`default` when unset) and name.
pub(crate) type PodKey = (String, String);

/// The key of `pod`.
pub(crate) fn key_of(pod: &Pod) -> PodKey {
    (
        pod.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        pod.metadata.name.clone().unwrap_or_default(),
    )
}

/// The field selector of the pods bound to `node`.
fn node_selector(node: &str) -> String {
    format!("spec.nodeName={node}")
}

type Item = Result<PodEvent, SourceError>;

/// The cache of the node's pods and the streams of the sources reading it.
#[derive(Default)]
struct State {
    /// The pods as of the last complete (re)list and the watch events since (with the mirror
    /// pods [`MirrorPods`] made or deleted since, until the watch shows them).
    pods: BTreeMap<PodKey, Pod>,
    /// A (re)list in progress: the pods it brought so far (the cache changes at its end).
    listing: Option<Vec<Pod>>,
    /// The streams of [`ApiServerSource::watch`].
    subscribers: Vec<mpsc::UnboundedSender<Item>>,
}

struct Shared {
    state: Mutex<State>,
    /// Whether a first list completed.
    synced: watch::Sender<bool>,
}

/// A copy of one item for one more stream.
fn copy(item: &Item) -> Item {
    match item {
        Ok(e) => Ok(e.clone()),
        Err(SourceError::Remote { origin, message }) => Err(SourceError::Remote {
            origin: origin.clone(),
            message: message.clone(),
        }),
        Err(e) => Err(SourceError::Remote {
            origin: String::new(),
            message: e.to_string(),
        }),
    }
}

/// Whether a source stream gets `item` (mirror pods are the API server's copies of static
/// pods: never run, as the source merger also has it).
fn for_sources(item: &Item) -> bool {
    !matches!(item, Ok(PodEvent::InitApply(p) | PodEvent::Apply(p) | PodEvent::Delete(p)) if is_mirror_pod(p))
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("node pods lock")
    }

    /// Applies one watcher item to the cache and hands it to the source streams.
    fn apply(&self, item: Result<watcher::Event<Pod>, watcher::Error>, origin: &str) {
        let mut st = self.lock();
        match &item {
            Ok(watcher::Event::Init) => st.listing = Some(Vec::new()),
            Ok(watcher::Event::InitApply(p)) => {
                st.listing.get_or_insert_with(Vec::new).push(p.clone());
            }
            Ok(watcher::Event::InitDone) => {
                let listed = st.listing.take().unwrap_or_default();
                st.pods = listed.into_iter().map(|p| (key_of(&p), p)).collect();
                self.synced.send_replace(true);
            }
            Ok(watcher::Event::Apply(p)) => {
                st.pods.insert(key_of(p), p.clone());
            }
            Ok(watcher::Event::Delete(p)) => {
                forget(&mut st.pods, &key_of(p), p.metadata.uid.as_deref())
            }
            // the cache stays as it was; the watcher retries with back-off
            Err(e) => tracing::debug!(%origin, error = %e, "watching the node's pods"),
        }
        let item = map_event(item, origin);
        if for_sources(&item) {
            st.subscribers.retain(|tx| tx.send(copy(&item)).is_ok());
        }
    }

    /// A new source stream: the cache as a snapshot (or the part of a re-list in progress),
    /// then the changes.
    fn subscribe(&self) -> mpsc::UnboundedReceiver<Item> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut st = self.lock();
        let send = |e: PodEvent| {
            let _ = tx.send(Ok(e));
        };
        let visible = |p: &&Pod| !is_mirror_pod(p);
        if let Some(partial) = &st.listing {
            // the rest of the re-list and its InitDone follow
            send(PodEvent::Init);
            partial
                .iter()
                .filter(visible)
                .for_each(|p| send(PodEvent::InitApply(p.clone())));
        } else if *self.synced.borrow() {
            send(PodEvent::Init);
            st.pods
                .values()
                .filter(visible)
                .for_each(|p| send(PodEvent::InitApply(p.clone())));
            send(PodEvent::InitDone);
        }
        // else: the first list's events follow
        st.subscribers.push(tx);
        rx
    }
}

/// Removes the pod of `key` if it is the one of `uid` (a later pod of that name stays).
fn forget(pods: &mut BTreeMap<PodKey, Pod>, key: &PodKey, uid: Option<&str>) {
    if pods
        .get(key)
        .is_some_and(|p| uid.is_none() || p.metadata.uid.as_deref() == uid)
    {
        pods.remove(key);
    }
}

/// Follows the node's pods into `shared` until `stop`.
async fn run(api: kube::Api<Pod>, node: String, shared: Arc<Shared>, stop: CancellationToken) {
    let selector = node_selector(&node);
    let origin = format!("api-server pods {selector}");
    let config = watcher::Config::default().fields(&selector);
    let mut events = watcher(api, config).default_backoff().boxed();
    loop {
        let item = tokio::select! {
            _ = stop.cancelled() => break,
            e = events.next() => e,
        };
        match item {
            Some(item) => shared.apply(item, &origin),
            None => break,
        }
    }
    // the source streams end
    shared.lock().subscribers.clear();
}

struct Handle {
    client: kube::Client,
    node_name: String,
    shared: Arc<Shared>,
    /// The watch, started on first use, stopped with the last handle.
    started: OnceLock<DropGuard>,
}

impl Handle {
    fn start(&self) {
        self.started.get_or_init(|| {
            let stop = CancellationToken::new();
            tokio::spawn(run(
                kube::Api::all(self.client.clone()),
                self.node_name.clone(),
                self.shared.clone(),
                stop.clone(),
            ));
            stop.drop_guard()
        });
    }
}

/// One list and watch of the pods bound to a node (`spec.nodeName=<node>`) and the cache of
/// them, shared by its [`source`](Self::source) (the pod workers' [`PodSource`]) and its
/// [`mirror_pods`](Self::mirror_pods): a re-list (after 410 Gone or a failed watch) serves
/// both. The watch starts with the first use of either and stops when the last clone, source,
/// source stream and [`MirrorPods`] of it is dropped.
///
/// ```no_run
/// # async fn demo(client: kube::Client) -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use node_kubelet::node::{NodeConfig, NodeManager, volumes::MemoryObjectStore};
/// use node_kubelet::source::NodePodsWatch;
///
/// let pods = NodePodsWatch::new(client.clone(), "node-1");
/// let node = NodeManager::new(NodeConfig::new("node-1"), Arc::new(MemoryObjectStore::default()))?
///     .api(client)
///     .mirror_pods(pods.mirror_pods());
/// let kubelet = node_kubelet::Kubelet::builder("node-1")
///     .source(Arc::new(pods.source()))
///     .node(Arc::new(node));
/// # let _ = kubelet; Ok(()) }
/// ```
#[derive(Clone)]
pub struct NodePodsWatch {
    inner: Arc<Handle>,
}

impl std::fmt::Debug for NodePodsWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodePodsWatch")
            .field("node_name", &self.inner.node_name)
            .field("synced", &self.is_synced())
            .finish_non_exhaustive()
    }
}

impl NodePodsWatch {
    /// The pods bound to `node_name`, through `client` (nothing is requested before the first
    /// use).
    pub fn new(client: kube::Client, node_name: impl Into<String>) -> Self {
        Self {
            inner: Arc::new(Handle {
                client,
                node_name: node_name.into(),
                shared: Arc::new(Shared {
                    state: Mutex::default(),
                    synced: watch::channel(false).0,
                }),
                started: OnceLock::new(),
            }),
        }
    }

    /// The node's name.
    pub fn node_name(&self) -> &str {
        &self.inner.node_name
    }

    /// The API client.
    pub fn client(&self) -> kube::Client {
        self.inner.client.clone()
    }

    /// The field selector used: `spec.nodeName=<node>`.
    pub fn field_selector(&self) -> String {
        node_selector(&self.inner.node_name)
    }

    /// The pod source of the node's pods from this watch (mirror pods left out).
    pub fn source(&self) -> ApiServerSource {
        ApiServerSource { pods: self.clone() }
    }

    /// The mirror pods of the node's static pods, read from this watch.
    pub fn mirror_pods(&self) -> MirrorPods {
        MirrorPods::with_pods(self.clone())
    }

    /// Whether the first list of the node's pods completed.
    pub fn is_synced(&self) -> bool {
        *self.inner.shared.synced.borrow()
    }

    /// The node's pods as the watch last showed them (mirror pods included), by namespace and
    /// name; empty before the first list.
    pub fn pods(&self) -> Vec<Pod> {
        self.inner.shared.lock().pods.values().cloned().collect()
    }

    /// Starts the watch if needed and waits, at most `timeout`, for its first list; whether
    /// it completed.
    pub async fn wait_synced(&self, timeout: Duration) -> bool {
        self.inner.start();
        let mut synced = self.inner.shared.synced.subscribe();
        matches!(
            tokio::time::timeout(timeout, synced.wait_for(|s| *s)).await,
            Ok(Ok(_))
        )
    }

    /// Runs `f` on the cache.
    pub(crate) fn read<R>(&self, f: impl FnOnce(&BTreeMap<PodKey, Pod>) -> R) -> R {
        f(&self.inner.shared.lock().pods)
    }

    /// Puts a pod this node just created into the cache (the next reads need not wait for the
    /// watch to show it).
    pub(crate) fn assume(&self, pod: Pod) {
        self.inner.shared.lock().pods.insert(key_of(&pod), pod);
    }

    /// Removes a pod this node just deleted from the cache, if it is the one of `uid`.
    pub(crate) fn forget(&self, key: &PodKey, uid: Option<&str>) {
        forget(&mut self.inner.shared.lock().pods, key, uid);
    }
}

/// Pods with `spec.nodeName == <node>` from the API server, as a [`PodSource`]: the source of
/// a [`NodePodsWatch`] ([`NodePodsWatch::source`]), or of one of its own
/// ([`ApiServerSource::new`]).
///
/// Every (re)list arrives as a snapshot, watch events as applies and deletes; errors are
/// reported as [`SourceError::Remote`] and the watcher retries with back-off. Every stream
/// of [`watch`](PodSource::watch) starts with a snapshot of the cache; mirror pods are left
/// out.
#[derive(Clone, Debug)]
pub struct ApiServerSource {
    pods: NodePodsWatch,
}

impl ApiServerSource {
    /// Watch the pods bound to `node_name` with this client (a [`NodePodsWatch`] of its own).
    pub fn new(client: kube::Client, node_name: impl Into<String>) -> Self {
        NodePodsWatch::new(client, node_name).source()
    }

    /// The field selector used: `spec.nodeName=<node>`.
    pub fn field_selector(&self) -> String {
        self.pods.field_selector()
    }

    /// The watch this source reads.
    pub fn pods(&self) -> &NodePodsWatch {
        &self.pods
    }
}

/// Translate one watcher item into a pod event.
pub(crate) fn map_event(
    item: Result<watcher::Event<Pod>, watcher::Error>,
    origin: &str,
) -> Result<PodEvent, SourceError> {
    match item {
        Ok(watcher::Event::Init) => Ok(PodEvent::Init),
        Ok(watcher::Event::InitApply(p)) => Ok(PodEvent::InitApply(p)),
        Ok(watcher::Event::InitDone) => Ok(PodEvent::InitDone),
        Ok(watcher::Event::Apply(p)) => Ok(PodEvent::Apply(p)),
        Ok(watcher::Event::Delete(p)) => Ok(PodEvent::Delete(p)),
        Err(e) => Err(SourceError::Remote {
            origin: origin.to_string(),
            message: e.to_string(),
        }),
    }
}

impl PodSource for ApiServerSource {
    fn name(&self) -> &str {
        "api"
    }

    fn watch(&self) -> PodStream {
        let handle = self.pods.inner.clone();
        // subscribed (and the watch started) on the first poll, inside the runtime
        futures::stream::once(async move {
            handle.start();
            let rx = handle.shared.subscribe();
            futures::stream::unfold((rx, handle), |(mut rx, handle)| async move {
                let item = rx.recv().await?;
                Some((item, (rx, handle)))
            })
        })
        .flatten()
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watcher_events_map_one_to_one() {
        let p = Pod::default();
        assert_eq!(
            map_event(Ok(watcher::Event::Init), "o").unwrap(),
            PodEvent::Init
        );
        assert_eq!(
            map_event(Ok(watcher::Event::InitApply(p.clone())), "o").unwrap(),
            PodEvent::InitApply(p.clone())
        );
        assert_eq!(
            map_event(Ok(watcher::Event::InitDone), "o").unwrap(),
            PodEvent::InitDone
        );
        assert_eq!(
            map_event(Ok(watcher::Event::Apply(p.clone())), "o").unwrap(),
            PodEvent::Apply(p.clone())
        );
        assert_eq!(
            map_event(Ok(watcher::Event::Delete(p.clone())), "o").unwrap(),
            PodEvent::Delete(p)
        );
        let e = map_event(Err(watcher::Error::NoResourceVersion), "pods").unwrap_err();
        assert!(e.to_string().starts_with("pods: "), "{e}");
    }

    fn pod(name: &str, uid: &str, mirror: bool) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        p.metadata.namespace = Some("ns".into());
        p.metadata.uid = Some(uid.into());
        if mirror {
            p.metadata.annotations = Some(
                [(
                    crate::node::mirror::MIRROR_ANNOTATION.to_string(),
                    "h".to_string(),
                )]
                .into(),
            );
        }
        p
    }

    fn shared() -> Shared {
        Shared {
            state: Mutex::default(),
            synced: watch::channel(false).0,
        }
    }

    fn drain(rx: &mut mpsc::UnboundedReceiver<Item>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(item) = rx.try_recv() {
            out.push(match item {
                Ok(PodEvent::Init) => "init".to_string(),
                Ok(PodEvent::InitApply(p)) => format!("init-apply {}", p.metadata.name.unwrap()),
                Ok(PodEvent::InitDone) => "init-done".to_string(),
                Ok(PodEvent::Apply(p)) => format!("apply {}", p.metadata.name.unwrap()),
                Ok(PodEvent::Delete(p)) => format!("delete {}", p.metadata.name.unwrap()),
                Err(e) => format!("error {e}"),
            });
        }
        out
    }

    #[test]
    fn every_stream_gets_the_cache_then_the_changes_without_mirror_pods() {
        let s = shared();
        // subscribed before the first list: its events as they come
        let mut early = s.subscribe();
        s.apply(Ok(watcher::Event::Init), "o");
        s.apply(Ok(watcher::Event::InitApply(pod("a", "1", false))), "o");
        // subscribed during the list: what it brought so far, then the rest
        let mut during = s.subscribe();
        s.apply(Ok(watcher::Event::InitApply(pod("m", "2", true))), "o");
        s.apply(Ok(watcher::Event::InitApply(pod("b", "3", false))), "o");
        assert!(
            s.lock().pods.is_empty(),
            "the cache changes at the end of a list"
        );
        s.apply(Ok(watcher::Event::InitDone), "o");
        s.apply(Ok(watcher::Event::Apply(pod("c", "4", false))), "o");
        s.apply(Ok(watcher::Event::Apply(pod("m", "2", true))), "o");
        // subscribed after: a snapshot of the cache
        let mut late = s.subscribe();
        let whole = [
            "init",
            "init-apply a",
            "init-apply b",
            "init-done",
            "apply c",
        ];
        assert_eq!(drain(&mut early), whole);
        assert_eq!(drain(&mut during), whole);
        assert_eq!(
            drain(&mut late),
            [
                "init",
                "init-apply a",
                "init-apply b",
                "init-apply c",
                "init-done"
            ]
        );
        // the cache keeps the mirror pod for MirrorPods
        assert_eq!(s.lock().pods.len(), 4);
        // an error reaches every stream; a re-list replaces the cache
        s.apply(Err(watcher::Error::NoResourceVersion), "pods");
        s.apply(Ok(watcher::Event::Init), "o");
        s.apply(Ok(watcher::Event::InitApply(pod("b", "3", false))), "o");
        s.apply(Ok(watcher::Event::InitDone), "o");
        s.apply(
            Ok(watcher::Event::Delete(pod("b", "other-uid", false))),
            "o",
        );
        for rx in [&mut early, &mut during, &mut late] {
            let got = drain(rx);
            assert!(got[0].starts_with("error pods: "), "{got:?}");
            assert_eq!(got[1..], ["init", "init-apply b", "init-done", "delete b"]);
        }
        let keys: Vec<_> = s.lock().pods.keys().cloned().collect();
        assert_eq!(
            keys,
            [("ns".to_string(), "b".to_string())],
            "another uid's delete keeps b"
        );
    }
}
