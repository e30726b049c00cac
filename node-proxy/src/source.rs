//! Where `Service` and `EndpointSlice` objects come from: a manifest directory (read once or
//! watched) and the API server (kube-runtime watchers, as kube-proxy watches them).

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use node_core::SourceError;

use crate::manifest::{Manifests, parse_manifests};
use crate::tracker::ServiceTracker;

/// A change of the service objects.
#[derive(Debug, Clone)]
pub enum ServiceEvent {
    /// A full listing; `None` leaves that kind as it is.
    Snapshot {
        /// Every `Service`, when listed.
        services: Option<Vec<Service>>,
        /// Every `EndpointSlice`, when listed.
        slices: Option<Vec<EndpointSlice>>,
    },
    /// A `Service` was added or changed.
    ServiceApplied(Box<Service>),
    /// A `Service` was deleted.
    ServiceDeleted(Box<Service>),
    /// An `EndpointSlice` was added or changed.
    SliceApplied(Box<EndpointSlice>),
    /// An `EndpointSlice` was deleted.
    SliceDeleted(Box<EndpointSlice>),
}

impl ServiceTracker {
    /// Apply one event.
    pub fn apply_event(&mut self, event: ServiceEvent) {
        fn ns_name(
            m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
        ) -> (String, String) {
            (
                m.namespace.clone().unwrap_or_else(|| "default".into()),
                m.name.clone().unwrap_or_default(),
            )
        }
        match event {
            ServiceEvent::Snapshot { services, slices } => {
                let (cur_svcs, cur_slices) = self.objects();
                self.replace_all(services.unwrap_or(cur_svcs), slices.unwrap_or(cur_slices));
            }
            ServiceEvent::ServiceApplied(s) => self.apply_service(*s),
            ServiceEvent::ServiceDeleted(s) => {
                let (ns, n) = ns_name(&s.metadata);
                self.delete_service(&ns, &n)
            }
            ServiceEvent::SliceApplied(s) => self.apply_slice(*s),
            ServiceEvent::SliceDeleted(s) => {
                let (ns, n) = ns_name(&s.metadata);
                self.delete_slice(&ns, &n)
            }
        }
    }
}

/// A stream of service events; errors are items, the source goes on.
pub type ServiceStream = BoxStream<'static, Result<ServiceEvent, SourceError>>;

/// Where services come from.
pub trait ServiceSource: Send + Sync {
    /// A short name (`manifests`, `api`...).
    fn name(&self) -> &str;
    /// Start watching: the stream begins with a snapshot.
    fn watch(&self) -> ServiceStream;
}

/// A directory of `*.yaml`, `*.yml` and `*.json` manifests, read once or watched.
#[derive(Debug, Clone)]
pub struct ManifestDir {
    /// The directory.
    pub path: PathBuf,
    /// Watch for changes (inotify); `false` reads once and ends the stream.
    pub watch: bool,
    /// How long changes must settle before the directory is read again.
    pub debounce: Duration,
}

impl ManifestDir {
    /// A watched directory with a 100 ms debounce.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            watch: true,
            debounce: Duration::from_millis(100),
        }
    }

    /// Read once, do not watch.
    #[must_use]
    pub fn once(mut self) -> Self {
        self.watch = false;
        self
    }

    /// Read every manifest of the directory: the objects of the valid files, and one error per
    /// invalid file (its objects are left out, the others kept).
    pub fn read(path: &Path) -> (Manifests, Vec<SourceError>) {
        let mut out = Manifests::default();
        let mut errors = vec![];
        let mut files: Vec<PathBuf> = match std::fs::read_dir(path) {
            Ok(rd) => rd.flatten().map(|e| e.path()).collect(),
            Err(source) => {
                errors.push(SourceError::Io {
                    path: path.to_path_buf(),
                    source,
                });
                return (out, errors);
            }
        };
        files.sort();
        for f in files {
            let ext = f.extension().and_then(|e| e.to_str()).unwrap_or("");
            if !matches!(ext, "yaml" | "yml" | "json") || !f.is_file() {
                continue;
            }
            let text = match std::fs::read_to_string(&f) {
                Ok(t) => t,
                Err(source) => {
                    errors.push(SourceError::Io { path: f, source });
                    continue;
                }
            };
            match parse_manifests(&text, &f.display().to_string()) {
                Ok(m) => {
                    out.services.extend(m.services);
                    out.slices.extend(m.slices);
                }
                Err(e) => errors.push(e),
            }
        }
        (out, errors)
    }

    fn snapshot(path: &Path) -> Vec<Result<ServiceEvent, SourceError>> {
        let (m, errors) = Self::read(path);
        let mut items: Vec<_> = errors.into_iter().map(Err).collect();
        items.push(Ok(ServiceEvent::Snapshot {
            services: Some(m.services),
            slices: Some(m.slices),
        }));
        items
    }
}

impl ServiceSource for ManifestDir {
    fn name(&self) -> &str {
        "manifests"
    }

    fn watch(&self) -> ServiceStream {
        let path = self.path.clone();
        if !self.watch {
            return futures::stream::iter(Self::snapshot(&path)).boxed();
        }
        let debounce = self.debounce;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if res.is_ok() {
                let _ = tx.send(());
            }
        })
        .and_then(|mut w| {
            use notify::Watcher;
            w.watch(&path, notify::RecursiveMode::NonRecursive)?;
            Ok(w)
        });
        let path = self.path.clone();
        let first = futures::stream::iter(Self::snapshot(&path));
        let watcher = match watcher {
            Ok(w) => w,
            Err(e) => {
                let err = SourceError::Io {
                    path: path.clone(),
                    source: std::io::Error::other(format!("cannot watch: {e}")),
                };
                return first.chain(futures::stream::iter([Err(err)])).boxed();
            }
        };
        let changes =
            futures::stream::unfold((rx, watcher, path), move |(mut rx, w, path)| async move {
                rx.recv().await?;
                // debounce: wait until no change arrives for `debounce`
                while let Ok(Some(())) = tokio::time::timeout(debounce, rx.recv()).await {}
                let items = Self::snapshot(&path);
                Some((futures::stream::iter(items), (rx, w, path)))
            })
            .flatten();
        first.chain(changes).boxed()
    }
}

/// The API server: watchers on every `Service` and `EndpointSlice` (all namespaces) with
/// kube-runtime's default backoff, as kube-proxy watches them.
#[derive(Clone)]
pub struct ApiServerSource {
    client: kube::Client,
}

impl std::fmt::Debug for ApiServerSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServerSource").finish_non_exhaustive()
    }
}

impl ApiServerSource {
    /// A source over `client`.
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }

    /// Its client (for the proxy's other uses of the API server: its Node, Events).
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// A source for the cluster of a kubeconfig file (its current context).
    pub async fn from_kubeconfig(path: &Path) -> Result<Self, SourceError> {
        let remote = |message: String| SourceError::Remote {
            origin: path.display().to_string(),
            message,
        };
        let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| remote(e.to_string()))?;
        let config =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| remote(e.to_string()))?;
        let client = kube::Client::try_from(config).map_err(|e| remote(e.to_string()))?;
        Ok(Self { client })
    }
}

fn watch_kind<K, FS, FA, FD>(
    api: kube::Api<K>,
    snapshot: FS,
    applied: FA,
    deleted: FD,
) -> ServiceStream
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    FS: Fn(Vec<K>) -> ServiceEvent + Send + 'static,
    FA: Fn(K) -> ServiceEvent + Send + 'static,
    FD: Fn(K) -> ServiceEvent + Send + 'static,
{
    use kube::runtime::WatchStreamExt;
    use kube::runtime::watcher::{self, Event};
    let mut buffer: Option<Vec<K>> = None;
    watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .filter_map(move |ev| {
            let out = match ev {
                Err(e) => Some(Err(SourceError::Remote {
                    origin: "api server".into(),
                    message: e.to_string(),
                })),
                Ok(Event::Init) => {
                    buffer = Some(vec![]);
                    None
                }
                Ok(Event::InitApply(o)) => {
                    buffer.get_or_insert_with(Vec::new).push(o);
                    None
                }
                Ok(Event::InitDone) => Some(Ok(snapshot(buffer.take().unwrap_or_default()))),
                Ok(Event::Apply(o)) => Some(Ok(applied(o))),
                Ok(Event::Delete(o)) => Some(Ok(deleted(o))),
            };
            futures::future::ready(out)
        })
        .boxed()
}

impl ServiceSource for ApiServerSource {
    fn name(&self) -> &str {
        "api"
    }

    fn watch(&self) -> ServiceStream {
        let services = watch_kind(
            kube::Api::<Service>::all(self.client.clone()),
            |v| ServiceEvent::Snapshot {
                services: Some(v),
                slices: None,
            },
            |o| ServiceEvent::ServiceApplied(Box::new(o)),
            |o| ServiceEvent::ServiceDeleted(Box::new(o)),
        );
        let slices = watch_kind(
            kube::Api::<EndpointSlice>::all(self.client.clone()),
            |v| ServiceEvent::Snapshot {
                services: None,
                slices: Some(v),
            },
            |o| ServiceEvent::SliceApplied(Box::new(o)),
            |o| ServiceEvent::SliceDeleted(Box::new(o)),
        );
        futures::stream::select(services, slices).boxed()
    }
}
