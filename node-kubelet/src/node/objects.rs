//! [`ApiObjectStore`]: the configMaps and secrets of the API server that this node's pods
//! reference, and only those, as kubelet's watch-based configMap and secret managers keep them.
//!
//! Each pod registered (the node manager does it on every sync, see
//! [`ObjectStore::register_pod`]) adds a reference to every object its spec names
//! ([`referenced_objects`]: configMap, secret and projected volumes, `env[].valueFrom`,
//! `envFrom`, `imagePullSecrets`); each referenced object has one watch of its own
//! (`namespaces/<ns>/configmaps?fieldSelector=metadata.name=<name>`, a list then a watch, so a
//! node authorizer admits it), stopped when the last pod referencing it is unregistered. The
//! registration waits, bounded by [`ApiObjectStoreConfig::sync_timeout`] (kubelet: 1 s), for the
//! first list of the watches it starts, so that a missing `optional: true` configMap is known
//! to be missing rather than not looked up yet; past the bound the pod's sync fails and is
//! retried. While the API server is away the last contents are kept (the watches retry with
//! back-off).
//!
//! Once pods are registered, lookups of objects no registered pod references answer `None`
//! (as a node authorizer denies them). A store no pod was ever registered with (a kubelet
//! without a node manager: nothing tells it what the pods reference) registers a watch of an
//! object on demand, at its first lookup, kept until the store stops (or, once a pod that
//! references it is registered, until the last such pod is unregistered), and waits for its first
//! list within the same bound — on a multi-thread tokio runtime; on a current-thread one the
//! lookup cannot wait: it answers `None` and the watch it started answers the next lookup
//! (the pod's sync is retried). The store serves both pod volumes ([`ObjectStore`]) and
//! container environment and image pull secrets ([`ValueStore`]).
//!
//! ```no_run
//! # async fn demo(client: kube::Client) -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use node_kubelet::node::objects::ApiObjectStore;
//! use node_kubelet::node::{NodeConfig, NodeManager};
//!
//! let objects = Arc::new(ApiObjectStore::new(client.clone()));
//! let node = NodeManager::new(NodeConfig::new("node-1"), objects.clone())?.api(client);
//! let kubelet = node_kubelet::Kubelet::builder("node-1").value_store(objects);
//! # let _ = (node, kubelet); Ok(()) }
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::volumes::{ObjectStore, ObjectStoreError};
use crate::cri_config::ValueStore;

/// Configuration of an [`ApiObjectStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiObjectStoreConfig {
    /// How long a registration waits for the first list of the watches it starts (kubelet:
    /// 1 s).
    pub sync_timeout: Duration,
}

impl Default for ApiObjectStoreConfig {
    fn default() -> Self {
        Self {
            sync_timeout: Duration::from_secs(1),
        }
    }
}

/// The kind of a referenced object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKind {
    /// A ConfigMap.
    ConfigMap,
    /// A Secret.
    Secret,
}

impl ObjectKind {
    /// `configmap` or `secret`, as kubelet's messages name them.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ConfigMap => "configmap",
            Self::Secret => "secret",
        }
    }
}

/// One object a pod references: kind, namespace (the pod's) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    /// ConfigMap or Secret.
    pub kind: ObjectKind,
    /// The namespace.
    pub namespace: String,
    /// The name.
    pub name: String,
}

/// The configMaps and secrets `pod` references, as kubelet's `VisitPodConfigmapNames` and
/// `VisitPodSecretNames` find them: configMap, secret and projected volumes, the `valueFrom`
/// and `envFrom` of every container (init and ephemeral too), and `imagePullSecrets`.
pub fn referenced_objects(pod: &Pod) -> BTreeSet<ObjectRef> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut out = BTreeSet::new();
    let mut add = |kind, name: &str| {
        if !name.is_empty() {
            out.insert(ObjectRef {
                kind,
                namespace: namespace.to_string(),
                name: name.to_string(),
            });
        }
    };
    let Some(spec) = &pod.spec else {
        return out;
    };
    for s in spec.image_pull_secrets.iter().flatten() {
        add(ObjectKind::Secret, &s.name);
    }
    for v in spec.volumes.iter().flatten() {
        if let Some(cm) = &v.config_map {
            add(ObjectKind::ConfigMap, &cm.name);
        }
        if let Some(name) = v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) {
            add(ObjectKind::Secret, name);
        }
        let sources = v.projected.iter().flat_map(|p| p.sources.iter().flatten());
        for s in sources {
            if let Some(cm) = &s.config_map {
                add(ObjectKind::ConfigMap, &cm.name);
            }
            if let Some(sec) = &s.secret {
                add(ObjectKind::Secret, &sec.name);
            }
        }
    }
    let ephemeral = spec.ephemeral_containers.iter().flatten();
    let envs = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .map(|c| (&c.env, &c.env_from))
        .chain(ephemeral.map(|c| (&c.env, &c.env_from)));
    for (env, env_from) in envs {
        for e in env.iter().flatten() {
            let Some(from) = &e.value_from else { continue };
            if let Some(r) = &from.config_map_key_ref {
                add(ObjectKind::ConfigMap, &r.name);
            }
            if let Some(r) = &from.secret_key_ref {
                add(ObjectKind::Secret, &r.name);
            }
        }
        for e in env_from.iter().flatten() {
            if let Some(r) = &e.config_map_ref {
                add(ObjectKind::ConfigMap, &r.name);
            }
            if let Some(r) = &e.secret_ref {
                add(ObjectKind::Secret, &r.name);
            }
        }
    }
    out
}

/// The last contents seen of one watched object.
#[derive(Debug, Clone)]
enum Object {
    ConfigMap(ConfigMap),
    Secret(Secret),
}

/// One watched object: its contents, whether its first list arrived, its watch.
struct Watched {
    refs: usize,
    /// Started by a lookup, not by a pod: kept while no pod references it.
    on_demand: bool,
    object: Arc<RwLock<Option<Object>>>,
    synced: watch::Receiver<bool>,
    _stop: DropGuard,
}

#[derive(Default)]
struct Registry {
    watched: HashMap<ObjectRef, Watched>,
    /// pod uid -> what it references
    pods: HashMap<String, BTreeSet<ObjectRef>>,
}

/// The configMaps and secrets the registered pods reference, each watched on its own (see the
/// [module](self)). The watches stop when the store is dropped.
pub struct ApiObjectStore {
    client: kube::Client,
    config: ApiObjectStoreConfig,
    registry: Mutex<Registry>,
    /// Whether a pod was ever registered (from then on, no watch on demand).
    pods_registered: AtomicBool,
    stop: CancellationToken,
}

impl std::fmt::Debug for ApiObjectStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiObjectStore")
            .field("config", &self.config)
            .field("watched", &self.watched())
            .finish_non_exhaustive()
    }
}

impl Drop for ApiObjectStore {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn pod_uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_else(|| {
        let m = &pod.metadata;
        format!(
            "{}/{}",
            m.namespace.as_deref().unwrap_or("default"),
            m.name.as_deref().unwrap_or_default()
        )
    })
}

/// Follows one object through a watch selected by its name, until `stop`.
async fn follow<K>(
    api: Api<K>,
    name: String,
    wrap: fn(K) -> Object,
    slot: Arc<RwLock<Option<Object>>>,
    synced: watch::Sender<bool>,
    stop: CancellationToken,
) where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
{
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher(api, config).default_backoff().boxed();
    // the objects of a (re)list, applied at its end
    let mut listed: Option<Object> = None;
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            e = events.next() => e,
        };
        let set = |o: Option<Object>| *slot.write().expect("object lock") = o;
        match event {
            None => return,
            Some(Ok(watcher::Event::Init)) => listed = None,
            Some(Ok(watcher::Event::InitApply(o))) => listed = Some(wrap(o)),
            Some(Ok(watcher::Event::InitDone)) => {
                set(listed.take());
                synced.send_replace(true);
            }
            Some(Ok(watcher::Event::Apply(o))) => set(Some(wrap(o))),
            Some(Ok(watcher::Event::Delete(_))) => set(None),
            // the last contents stay; the watcher retries with back-off
            Some(Err(e)) => tracing::debug!(object = %name, error = %e, "watch failed"),
        }
    }
}

impl ApiObjectStore {
    /// A store over `client`, with kubelet's sync timeout.
    pub fn new(client: kube::Client) -> Self {
        Self::with_config(client, ApiObjectStoreConfig::default())
    }

    /// A store over `client` with `config`.
    pub fn with_config(client: kube::Client, config: ApiObjectStoreConfig) -> Self {
        Self {
            client,
            config,
            registry: Mutex::default(),
            pods_registered: AtomicBool::new(false),
            stop: CancellationToken::new(),
        }
    }

    /// Stops every watch; the store answers from the last contents seen and starts no more
    /// watches (the agent's shutdown).
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// The objects watched now (those the registered pods reference, and those looked up on
    /// demand before any pod was registered), sorted.
    pub fn watched(&self) -> Vec<ObjectRef> {
        let reg = self.registry.lock().expect("registry lock");
        let mut v: Vec<_> = reg.watched.keys().cloned().collect();
        v.sort();
        v
    }

    fn start(&self, r: &ObjectRef) -> Watched {
        let object = Arc::new(RwLock::new(None));
        let (tx, synced) = watch::channel(false);
        let stop = self.stop.child_token();
        let (client, slot, token) = (self.client.clone(), object.clone(), stop.clone());
        let name = r.name.clone();
        match r.kind {
            ObjectKind::ConfigMap => {
                let api = Api::<ConfigMap>::namespaced(client, &r.namespace);
                tokio::spawn(follow(api, name, Object::ConfigMap, slot, tx, token));
            }
            ObjectKind::Secret => {
                let api = Api::<Secret>::namespaced(client, &r.namespace);
                tokio::spawn(follow(api, name, Object::Secret, slot, tx, token));
            }
        }
        tracing::debug!(kind = r.kind.as_str(), namespace = %r.namespace, name = %r.name, "watching");
        Watched {
            refs: 0,
            on_demand: false,
            object,
            synced,
            _stop: stop.drop_guard(),
        }
    }

    fn release(reg: &mut Registry, r: &ObjectRef) {
        if let Some(w) = reg.watched.get_mut(r) {
            w.refs = w.refs.saturating_sub(1);
            if w.refs == 0 && !w.on_demand {
                reg.watched.remove(r); // its guard stops the watch
                tracing::debug!(kind = r.kind.as_str(), namespace = %r.namespace, name = %r.name, "no longer watched");
            }
        }
    }

    fn lookup(&self, kind: ObjectKind, namespace: &str, name: &str) -> Option<Object> {
        let r = ObjectRef {
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        let (handle, mut synced, object) = {
            let mut reg = self.registry.lock().expect("registry lock");
            if let Some(w) = reg.watched.get(&r) {
                return w.object.read().expect("object lock").clone();
            }
            // no registered pod references it; with no pod ever registered: watched on demand
            if self.pods_registered.load(Ordering::Relaxed) || self.stop.is_cancelled() {
                return None;
            }
            let handle = tokio::runtime::Handle::try_current().ok()?;
            let mut w = self.start(&r);
            w.on_demand = true;
            let waiting = (handle, w.synced.clone(), w.object.clone());
            reg.watched.insert(r, w);
            waiting
        };
        if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread {
            let bound = self.config.sync_timeout;
            tokio::task::block_in_place(|| {
                handle.block_on(async {
                    let _ = tokio::time::timeout(bound, synced.wait_for(|s| *s)).await;
                })
            });
        }
        object.read().expect("object lock").clone()
    }
}

#[async_trait::async_trait]
impl ObjectStore for ApiObjectStore {
    fn config_map(&self, namespace: &str, name: &str) -> Option<ConfigMap> {
        match self.lookup(ObjectKind::ConfigMap, namespace, name)? {
            Object::ConfigMap(cm) => Some(cm),
            Object::Secret(_) => None,
        }
    }

    fn secret(&self, namespace: &str, name: &str) -> Option<Secret> {
        match self.lookup(ObjectKind::Secret, namespace, name)? {
            Object::Secret(s) => Some(s),
            Object::ConfigMap(_) => None,
        }
    }

    async fn register_pod(&self, pod: &Pod) -> Result<(), ObjectStoreError> {
        self.pods_registered.store(true, Ordering::Relaxed);
        let refs = referenced_objects(pod);
        let uid = pod_uid(pod);
        let waits: Vec<(ObjectRef, watch::Receiver<bool>)> = {
            let mut reg = self.registry.lock().expect("registry lock");
            let old = reg.pods.get(&uid).cloned().unwrap_or_default();
            if refs.is_empty() && old.is_empty() {
                return Ok(());
            }
            // the new references first, then the old ones released: an object both
            // versions reference keeps its watch
            for r in refs.difference(&old) {
                if !reg.watched.contains_key(r) {
                    let w = self.start(r);
                    reg.watched.insert(r.clone(), w);
                }
                let w = reg.watched.get_mut(r).expect("inserted");
                w.refs += 1;
                // held by the pod from now on: stopped when the last pod lets it go
                w.on_demand = false;
            }
            for r in old.difference(&refs) {
                Self::release(&mut reg, r);
            }
            if refs.is_empty() {
                reg.pods.remove(&uid);
            } else {
                reg.pods.insert(uid, refs.clone());
            }
            refs.iter()
                .filter_map(|r| Some((r.clone(), reg.watched.get(r)?.synced.clone())))
                .filter(|(_, s)| !*s.borrow())
                .collect()
        };
        let deadline = tokio::time::Instant::now() + self.config.sync_timeout;
        for (r, mut synced) in waits {
            let done = tokio::time::timeout_at(deadline, synced.wait_for(|s| *s)).await;
            if !matches!(done, Ok(Ok(_))) {
                return Err(ObjectStoreError {
                    kind: r.kind.as_str(),
                    reason: format!(
                        "failed to sync {} cache: not listed within {:?}",
                        r.kind.as_str(),
                        self.config.sync_timeout
                    ),
                    namespace: r.namespace,
                    name: r.name,
                });
            }
        }
        Ok(())
    }

    fn unregister_pod(&self, pod: &Pod) {
        let mut reg = self.registry.lock().expect("registry lock");
        let Some(refs) = reg.pods.remove(&pod_uid(pod)) else {
            return;
        };
        for r in &refs {
            Self::release(&mut reg, r);
        }
    }
}

impl ValueStore for ApiObjectStore {
    fn config_map(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, String>> {
        let cm = ObjectStore::config_map(self, namespace, name)?;
        Some(cm.data.unwrap_or_default())
    }

    fn secret(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        let s = ObjectStore::secret(self, namespace, name)?;
        Some(secret_data(s))
    }
}

/// A secret's values: `data`, with `stringData` over it (a store fed from manifests has it).
pub fn secret_data(s: Secret) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = s
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    for (k, v) in s.string_data.unwrap_or_default() {
        out.insert(k, v.into_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use node_test_support::FakeApiServer;
    use serde_json::json;

    fn server() -> FakeApiServer {
        let api = FakeApiServer::new();
        api.apply(
            "configmaps",
            json!({"metadata": {"name": "cm", "namespace": "default"}, "data": {"k": "v1"}}),
        );
        api.apply(
            "secrets",
            json!({"metadata": {"name": "s", "namespace": "default"}, "data": {"p": "aHVudGVyMg=="}}),
        );
        api
    }

    fn r(kind: ObjectKind, name: &str) -> ObjectRef {
        ObjectRef {
            kind,
            namespace: "default".into(),
            name: name.into(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_registered_pods_a_lookup_watches_the_object_on_demand() {
        let api = server();
        let store = ApiObjectStore::new(api.client());
        // the first lookup waits for the object's first list
        assert_eq!(
            ValueStore::config_map(&store, "default", "cm").unwrap()["k"],
            "v1"
        );
        assert_eq!(
            ValueStore::secret(&store, "default", "s").unwrap()["p"],
            b"hunter2"
        );
        assert!(ValueStore::config_map(&store, "default", "missing").is_none());
        assert_eq!(
            store.watched(),
            [
                r(ObjectKind::ConfigMap, "cm"),
                r(ObjectKind::ConfigMap, "missing"),
                r(ObjectKind::Secret, "s")
            ]
        );
        // read by their names only
        for q in api.requests().iter().map(|r| r.uri.clone()) {
            assert!(q.contains("fieldSelector=metadata.name%3D"), "{q}");
        }
        // watched: an update arrives without another list
        let lists = |api: &FakeApiServer| {
            api.requests()
                .iter()
                .filter(|r| r.path.ends_with("/configmaps") && !r.uri.contains("watch=true"))
                .count()
        };
        let n = lists(&api);
        api.apply(
            "configmaps",
            json!({"metadata": {"name": "cm", "namespace": "default"}, "data": {"k": "v2"}}),
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while ValueStore::config_map(&store, "default", "cm").unwrap()["k"] != "v2" {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the update did not arrive"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(lists(&api), n);
        // once pods are registered, only what they reference is looked up
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "default", "uid": "u"},
            "spec": {"containers": [{"name": "c", "image": "i",
                "envFrom": [{"configMapRef": {"name": "cm"}}]}]}}))
        .unwrap();
        store.register_pod(&pod).await.unwrap();
        assert!(ValueStore::config_map(&store, "default", "other").is_none());
        assert!(!store.watched().contains(&r(ObjectKind::ConfigMap, "other")));
        // the pod took the watch of cm over: it goes with the pod
        store.unregister_pod(&pod);
        assert!(!store.watched().contains(&r(ObjectKind::ConfigMap, "cm")));
        assert!(store.watched().contains(&r(ObjectKind::Secret, "s")));
    }

    #[tokio::test]
    async fn on_a_current_thread_runtime_the_lookup_after_the_list_answers() {
        let api = server();
        let store = ApiObjectStore::new(api.client());
        // cannot wait here: the watch it starts answers the next lookup
        assert!(ValueStore::config_map(&store, "default", "cm").is_none());
        assert_eq!(store.watched(), [r(ObjectKind::ConfigMap, "cm")]);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while ValueStore::config_map(&store, "default", "cm").is_none() {
            assert!(tokio::time::Instant::now() < deadline, "never listed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            ValueStore::config_map(&store, "default", "cm").unwrap()["k"],
            "v1"
        );
        // a stopped store starts no watch
        store.stop();
        assert!(ValueStore::secret(&store, "default", "s").is_none());
        assert_eq!(store.watched(), [r(ObjectKind::ConfigMap, "cm")]);
    }
}
