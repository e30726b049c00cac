//! Pod volumes on the node: emptyDir (on disk, or tmpfs for `medium: Memory` with its
//! sizeLimit), hostPath (with its type checks), configMap, secret (on tmpfs), downwardAPI and
//! projected (written with kubelet's [`atomic_writer`] layout), and subPath resolution; the
//! [`VolumeManager`] sets them up under `<root>/pods/<uid>/volumes/<plugin>/<name>` and returns
//! the CRI mounts of each container.

pub mod atomic_writer;
pub mod subpath;

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, DownwardAPIVolumeFile, HostPathVolumeSource, KeyToPath, Pod, Secret,
    Volume,
};
use node_core::cri;

use self::atomic_writer::{FileProjection, write_atomic};
use self::subpath::bind_subpath;
use super::quantity;

/// An error of volume setup or teardown.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VolumeError {
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Mounting or unmounting failed.
    #[error("{op} {path}: {source}")]
    Mount {
        /// `mount tmpfs` or `unmount`.
        op: &'static str,
        /// The mount point.
        path: PathBuf,
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// A hostPath is not of its declared type.
    #[error("volume {volume}: hostPath type check failed: {path} is not a {expected}")]
    HostPathType {
        /// The volume name.
        volume: String,
        /// The host path.
        path: PathBuf,
        /// What the type asked for.
        expected: String,
    },
    /// A configMap or secret the pod needs is missing.
    #[error("volume {volume}: {kind} {namespace}/{name} not found")]
    NotFound {
        /// The volume name.
        volume: String,
        /// `configmap` or `secret`.
        kind: &'static str,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// A key named in `items` is not in the configMap or secret.
    #[error("volume {volume}: key {key:?} not found in {kind} {name}")]
    MissingKey {
        /// The volume name.
        volume: String,
        /// `configmap` or `secret`.
        kind: &'static str,
        /// Its name.
        name: String,
        /// The key.
        key: String,
    },
    /// A payload path is not acceptable.
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath {
        /// The path.
        path: String,
        /// Why.
        reason: String,
    },
    /// A subPath would leave its volume.
    #[error("subPath {sub_path:?}: {reason}")]
    SubPath {
        /// The subPath.
        sub_path: String,
        /// Why it is refused.
        reason: String,
    },
    /// The spec is not usable (unknown volume, unsupported source, bad field).
    #[error("{field}: {reason}")]
    Spec {
        /// The field (`spec.volumes[2].emptyDir.sizeLimit`, `volumeMounts[0].name`...).
        field: String,
        /// What is wrong.
        reason: String,
    },
}

/// A pod's configMaps or secrets could not be made available (kubelet's "failed to sync
/// configmap cache").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {namespace}/{name}: {reason}")]
pub struct ObjectStoreError {
    /// `configmap` or `secret`.
    pub kind: &'static str,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Why (`failed to sync configmap cache: timed out after 1s`...).
    pub reason: String,
}

/// Where configMaps and secrets come from (the API server's watches of the objects pods
/// reference, or manifests standalone).
///
/// The node manager registers every pod when it is added or updated (each sync) and
/// unregisters it when it is removed, as kubelet's configMap and secret managers are told of
/// pods; a store that holds everything anyway (memory, a manifest directory) ignores both.
#[async_trait::async_trait]
pub trait ObjectStore: Send + Sync {
    /// A configMap by namespace and name.
    fn config_map(&self, namespace: &str, name: &str) -> Option<ConfigMap>;
    /// A secret by namespace and name.
    fn secret(&self, namespace: &str, name: &str) -> Option<Secret>;
    /// The pod (added or updated) references the configMaps and secrets of its spec: make
    /// them available before its volumes and environment are read. An error leaves the pod's
    /// sync to be retried. The default does nothing.
    async fn register_pod(&self, _pod: &Pod) -> Result<(), ObjectStoreError> {
        Ok(())
    }
    /// The pod is gone: what only it referenced is no longer needed. The default does nothing.
    fn unregister_pod(&self, _pod: &Pod) {}
}

/// An [`ObjectStore`] held in memory (standalone mode, tests).
#[derive(Debug, Default)]
pub struct MemoryObjectStore {
    config_maps: std::sync::RwLock<BTreeMap<(String, String), ConfigMap>>,
    secrets: std::sync::RwLock<BTreeMap<(String, String), Secret>>,
}

fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> (String, String) {
    (
        meta.namespace.clone().unwrap_or_else(|| "default".into()),
        meta.name.clone().unwrap_or_default(),
    )
}

impl MemoryObjectStore {
    /// Adds or replaces a configMap.
    pub fn put_config_map(&self, cm: ConfigMap) {
        let k = key_of(&cm.metadata);
        self.config_maps.write().expect("lock").insert(k, cm);
    }
    /// Adds or replaces a secret.
    pub fn put_secret(&self, s: Secret) {
        let k = key_of(&s.metadata);
        self.secrets.write().expect("lock").insert(k, s);
    }
}

impl ObjectStore for MemoryObjectStore {
    fn config_map(&self, namespace: &str, name: &str) -> Option<ConfigMap> {
        self.config_maps
            .read()
            .expect("lock")
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }
    fn secret(&self, namespace: &str, name: &str) -> Option<Secret> {
        self.secrets
            .read()
            .expect("lock")
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }
}

/// Configuration of the volume manager.
#[derive(Debug, Clone, PartialEq)]
pub struct VolumeConfig {
    /// The kubelet root dir (`/var/lib/kubelet`); pod volumes live under `pods/<uid>/volumes`.
    pub root_dir: PathBuf,
    /// The node name, for the downward API's `spec.nodeName` when the pod has none.
    pub node_name: String,
    /// Node allocatable CPU (millicores) and memory (bytes), the downward API's value of a limit
    /// a container does not set.
    pub allocatable_cpu_milli: i64,
    /// See `allocatable_cpu_milli`.
    pub allocatable_memory_bytes: i64,
}

impl Default for VolumeConfig {
    fn default() -> Self {
        Self {
            root_dir: "/var/lib/kubelet".into(),
            node_name: String::new(),
            allocatable_cpu_milli: 0,
            allocatable_memory_bytes: 0,
        }
    }
}

/// One volume set up on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountedVolume {
    /// The host directory or file to bind-mount.
    pub host_path: PathBuf,
    /// The volume is read-only for containers whatever the mount says (configMap, secret,
    /// downwardAPI, projected).
    pub read_only: bool,
    /// The volume is a tmpfs the manager mounted.
    pub tmpfs: bool,
}

/// The volumes of one pod, by volume name.
pub type PodVolumes = BTreeMap<String, MountedVolume>;

/// Default file mode of configMap, secret, downwardAPI and projected volumes (0644).
pub const DEFAULT_MODE: u32 = 0o644;

/// Sets up and tears down pod volumes.
pub struct VolumeManager {
    config: VolumeConfig,
    store: Arc<dyn ObjectStore>,
}

impl std::fmt::Debug for VolumeManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolumeManager")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> VolumeError + '_ {
    move |source| VolumeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn spec_err(field: String, reason: impl Into<String>) -> VolumeError {
    VolumeError::Spec {
        field,
        reason: reason.into(),
    }
}

/// The mount points at or under `dir` in the calling thread's mount namespace, from
/// /proc/thread-self/mountinfo (deepest first).
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/thread-self/mountinfo")
        .or_else(|_| std::fs::read_to_string("/proc/self/mountinfo"))
        .unwrap_or_default();
    let mut out: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out.dedup();
    out
}

fn unescape_mountinfo(s: &str) -> String {
    let mut out = String::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v as char);
            i += 4;
            continue;
        }
        out.push(b[i] as char);
        i += 1;
    }
    out
}

/// Whether `dir` is itself a mount point.
pub fn is_mount_point(dir: &Path) -> bool {
    mounts_under(dir).iter().any(|m| m == dir)
}

fn mount_tmpfs(dir: &Path, size: Option<i64>) -> Result<(), VolumeError> {
    if is_mount_point(dir) {
        return Ok(());
    }
    let mut opts = "mode=0777".to_string();
    if let Some(size) = size {
        opts += &format!(",size={size}");
    }
    nix::mount::mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
        Some(opts.as_str()),
    )
    .map_err(|source| VolumeError::Mount {
        op: "mount tmpfs",
        path: dir.to_path_buf(),
        source,
    })
}

/// The plugin directory of emptyDir volumes in a pod's volumes directory.
const EMPTY_DIR_PLUGIN: &str = "kubernetes.io~empty-dir";

/// The directory of pod `uid` under a volume manager's `root_dir`.
fn pod_dir_under(root_dir: &Path, uid: &str) -> PathBuf {
    root_dir.join("pods").join(uid)
}

/// The directory holding pod `uid`'s emptyDir volumes under a volume manager's `root_dir`
/// (`pods/<uid>/volumes/kubernetes.io~empty-dir`).
pub(crate) fn empty_dirs_under(root_dir: &Path, uid: &str) -> PathBuf {
    pod_dir_under(root_dir, uid)
        .join("volumes")
        .join(EMPTY_DIR_PLUGIN)
}

fn plugin_dir(v: &Volume) -> Option<&'static str> {
    Some(if v.empty_dir.is_some() {
        EMPTY_DIR_PLUGIN
    } else if v.config_map.is_some() {
        "kubernetes.io~configmap"
    } else if v.secret.is_some() {
        "kubernetes.io~secret"
    } else if v.downward_api.is_some() {
        "kubernetes.io~downward-api"
    } else if v.projected.is_some() {
        "kubernetes.io~projected"
    } else {
        return None;
    })
}

/// A configMap or secret a volume (or a projection) draws keys from.
#[derive(Clone, Copy)]
enum KeyedKind {
    ConfigMap,
    Secret,
}

impl KeyedKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::ConfigMap => "configmap",
            Self::Secret => "secret",
        }
    }
}

struct KeyedSource<'a> {
    kind: KeyedKind,
    name: &'a str,
    items: Option<&'a [KeyToPath]>,
    default_mode: Option<i32>,
    optional: Option<bool>,
}

/// Where the tokens of `serviceAccountToken` projections come from (already requested: see
/// [`ServiceAccountTokens`](crate::node::tokens::ServiceAccountTokens)).
pub trait TokenSource: Send + Sync {
    /// The token for this pod and projection, `None` when not (yet) obtained.
    fn token(
        &self,
        pod: &Pod,
        projection: &k8s_openapi::api::core::v1::ServiceAccountTokenProjection,
    ) -> Option<String>;
}

impl VolumeManager {
    /// A manager over a store of configMaps and secrets.
    pub fn new(config: VolumeConfig, store: Arc<dyn ObjectStore>) -> Self {
        Self { config, store }
    }

    /// Where the configMaps and secrets come from.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The directory of a pod's volumes.
    pub fn pod_volumes_dir(&self, uid: &str) -> PathBuf {
        self.pod_dir(uid).join("volumes")
    }

    /// Sets up (or updates: configMap/secret/downwardAPI contents are rewritten atomically when
    /// they changed) every volume of the pod. Returns the host path of each.
    pub fn setup_pod(&self, pod: &Pod) -> Result<PodVolumes, VolumeError> {
        self.setup_pod_with(pod, None)
    }

    /// As [`setup_pod`](Self::setup_pod), with the tokens of `serviceAccountToken` projections.
    pub fn setup_pod_with(
        &self,
        pod: &Pod,
        tokens: Option<&dyn TokenSource>,
    ) -> Result<PodVolumes, VolumeError> {
        let uid = pod_uid(pod)?;
        let mut out = PodVolumes::new();
        let volumes = pod.spec.as_ref().and_then(|s| s.volumes.as_ref());
        for (i, v) in volumes.into_iter().flatten().enumerate() {
            let field = format!("spec.volumes[{i}]");
            let mounted = self.setup_volume(pod, uid, v, &field, tokens)?;
            out.insert(v.name.clone(), mounted);
        }
        Ok(out)
    }

    fn setup_volume(
        &self,
        pod: &Pod,
        uid: &str,
        v: &Volume,
        field: &str,
        tokens: Option<&dyn TokenSource>,
    ) -> Result<MountedVolume, VolumeError> {
        if let Some(hp) = &v.host_path {
            return check_host_path(&v.name, hp).map(|p| MountedVolume {
                host_path: p,
                read_only: false,
                tmpfs: false,
            });
        }
        let Some(plugin) = plugin_dir(v) else {
            return Err(spec_err(
                field.into(),
                format!("volume {:?}: no supported volume source", v.name),
            ));
        };
        if v.name.is_empty() || v.name.contains('/') || v.name.starts_with('.') {
            return Err(spec_err(format!("{field}.name"), "not a valid volume name"));
        }
        let dir = self.pod_volumes_dir(uid).join(plugin).join(&v.name);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        if let Some(ed) = &v.empty_dir {
            let memory = ed.medium.as_deref() == Some("Memory");
            if let Some(m) = ed
                .medium
                .as_deref()
                .filter(|m| !m.is_empty() && *m != "Memory")
            {
                return Err(spec_err(
                    format!("{field}.emptyDir.medium"),
                    format!("unsupported medium {m:?}"),
                ));
            }
            if memory {
                let size = ed
                    .size_limit
                    .as_ref()
                    .map(quantity::quantity_value)
                    .transpose()
                    .map_err(|e| spec_err(format!("{field}.emptyDir.sizeLimit"), e.to_string()))?;
                mount_tmpfs(&dir, size.filter(|s| *s > 0))?;
            }
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
                .map_err(io(&dir))?;
            return Ok(MountedVolume {
                host_path: dir,
                read_only: false,
                tmpfs: memory,
            });
        }
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let (payload, tmpfs) = if let Some(cm) = &v.config_map {
            let src = KeyedSource {
                kind: KeyedKind::ConfigMap,
                name: &cm.name,
                items: cm.items.as_deref(),
                default_mode: cm.default_mode,
                optional: cm.optional,
            };
            (self.keyed_payload(&v.name, namespace, src)?, false)
        } else if let Some(s) = &v.secret {
            let src = KeyedSource {
                kind: KeyedKind::Secret,
                name: s.secret_name.as_deref().unwrap_or(""),
                items: s.items.as_deref(),
                default_mode: s.default_mode,
                optional: s.optional,
            };
            (self.keyed_payload(&v.name, namespace, src)?, true)
        } else if let Some(d) = &v.downward_api {
            let mode = d.default_mode.map(|m| m as u32).unwrap_or(DEFAULT_MODE);
            let p = self.downward_payload(
                pod,
                d.items.as_deref().unwrap_or(&[]),
                mode,
                &format!("{field}.downwardAPI"),
            )?;
            (p, false)
        } else {
            let proj = v.projected.as_ref().expect("plugin_dir said projected");
            let mode = proj.default_mode;
            let mut payload = BTreeMap::new();
            for (j, src) in proj.sources.iter().flatten().enumerate() {
                let f = format!("{field}.projected.sources[{j}]");
                let part = if let Some(cm) = &src.config_map {
                    let src = KeyedSource {
                        kind: KeyedKind::ConfigMap,
                        name: &cm.name,
                        items: cm.items.as_deref(),
                        default_mode: mode,
                        optional: cm.optional,
                    };
                    self.keyed_payload(&v.name, namespace, src)?
                } else if let Some(s) = &src.secret {
                    let src = KeyedSource {
                        kind: KeyedKind::Secret,
                        name: &s.name,
                        items: s.items.as_deref(),
                        default_mode: mode,
                        optional: s.optional,
                    };
                    self.keyed_payload(&v.name, namespace, src)?
                } else if let Some(d) = &src.downward_api {
                    self.downward_payload(
                        pod,
                        d.items.as_deref().unwrap_or(&[]),
                        mode.map(|m| m as u32).unwrap_or(DEFAULT_MODE),
                        &format!("{f}.downwardAPI"),
                    )?
                } else if let Some(sat) = &src.service_account_token {
                    let token = tokens.and_then(|t| t.token(pod, sat)).ok_or_else(|| {
                        spec_err(
                            format!("{f}.serviceAccountToken"),
                            "no token: service account tokens need an API server (NodeManager::api)",
                        )
                    })?;
                    BTreeMap::from([(
                        sat.path.clone(),
                        FileProjection {
                            data: token.into_bytes(),
                            mode: mode.map(|m| m as u32).unwrap_or(0o600),
                        },
                    )])
                } else {
                    return Err(spec_err(f, "no supported projection"));
                };
                payload.extend(part);
            }
            // secrets and tokens in a projected volume keep it in memory
            let in_memory = proj
                .sources
                .iter()
                .flatten()
                .any(|s| s.secret.is_some() || s.service_account_token.is_some());
            (payload, in_memory)
        };
        if tmpfs {
            mount_tmpfs(&dir, None)?;
        }
        write_atomic(&dir, &payload)?;
        Ok(MountedVolume {
            host_path: dir,
            read_only: true,
            tmpfs,
        })
    }

    fn keyed_payload(
        &self,
        volume: &str,
        namespace: &str,
        src: KeyedSource<'_>,
    ) -> Result<BTreeMap<String, FileProjection>, VolumeError> {
        let kind = src.kind.as_str();
        let data: Option<BTreeMap<String, Vec<u8>>> = match src.kind {
            KeyedKind::ConfigMap => self.store.config_map(namespace, src.name).map(|cm| {
                let text = cm
                    .data
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k, v.into_bytes()));
                let binary = cm.binary_data.into_iter().flatten().map(|(k, v)| (k, v.0));
                text.chain(binary).collect()
            }),
            KeyedKind::Secret => self.store.secret(namespace, src.name).map(|s| {
                let data = s.data.into_iter().flatten().map(|(k, v)| (k, v.0));
                let text = s.string_data.into_iter().flatten();
                data.chain(text.map(|(k, v)| (k, v.into_bytes()))).collect()
            }),
        };
        let Some(data) = data else {
            if src.optional == Some(true) {
                return Ok(BTreeMap::new());
            }
            return Err(VolumeError::NotFound {
                volume: volume.into(),
                kind,
                namespace: namespace.into(),
                name: src.name.into(),
            });
        };
        project(
            volume,
            kind,
            src.name,
            &data,
            src.items,
            src.default_mode,
            src.optional,
        )
    }

    fn downward_payload(
        &self,
        pod: &Pod,
        items: &[DownwardAPIVolumeFile],
        default_mode: u32,
        field: &str,
    ) -> Result<BTreeMap<String, FileProjection>, VolumeError> {
        let mut out = BTreeMap::new();
        for (i, item) in items.iter().enumerate() {
            let f = format!("{field}.items[{i}]");
            let data = if let Some(fr) = &item.field_ref {
                downward_field(pod, &fr.field_path, &self.config.node_name).ok_or_else(|| {
                    spec_err(
                        format!("{f}.fieldRef.fieldPath"),
                        format!("unsupported field {:?}", fr.field_path),
                    )
                })?
            } else if let Some(rr) = &item.resource_field_ref {
                self.downward_resource(pod, rr)
                    .map_err(|reason| spec_err(format!("{f}.resourceFieldRef"), reason))?
            } else {
                return Err(spec_err(f, "needs fieldRef or resourceFieldRef"));
            };
            out.insert(
                item.path.clone(),
                FileProjection {
                    data: data.into_bytes(),
                    mode: item.mode.map(|m| m as u32).unwrap_or(default_mode),
                },
            );
        }
        Ok(out)
    }

    fn downward_resource(
        &self,
        pod: &Pod,
        r: &k8s_openapi::api::core::v1::ResourceFieldSelector,
    ) -> Result<String, String> {
        let spec = pod.spec.as_ref().ok_or("pod has no spec")?;
        let name = r.container_name.as_deref().unwrap_or("");
        let c: &Container = spec
            .containers
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| format!("no container {name:?}"))?;
        let (section, resource) = r
            .resource
            .split_once('.')
            .ok_or_else(|| format!("unsupported resource {:?}", r.resource))?;
        let res = c.resources.as_ref();
        let map = match section {
            "limits" => res.and_then(|r| r.limits.as_ref()),
            "requests" => res.and_then(|r| r.requests.as_ref()),
            _ => return Err(format!("unsupported resource {:?}", r.resource)),
        };
        let cpu = resource == "cpu";
        // the value in "milli" units for cpu, plain units otherwise
        let value_milli: i64 = match map.and_then(|m| m.get(resource)) {
            Some(q) => quantity::quantity_milli(q).map_err(|e| e.to_string())?,
            None if section == "limits" && cpu => self.config.allocatable_cpu_milli,
            None if section == "limits" && resource == "memory" => {
                self.config.allocatable_memory_bytes * 1000
            }
            None => 0,
        };
        let divisor_milli = match &r.divisor {
            Some(d) => quantity::quantity_milli(d).map_err(|e| e.to_string())?,
            None => 1000,
        };
        if divisor_milli <= 0 {
            return Err("divisor must be positive".into());
        }
        // ceil(value / divisor), as kubelet's ExtractContainerResourceValue
        Ok(((value_milli + divisor_milli - 1) / divisor_milli).to_string())
    }

    /// The CRI mounts of a container of `pod`: its volumeMounts resolved to host paths,
    /// read-only when the mount or the volume says so. A subPath is opened beneath its volume
    /// (created when missing) and bind-mounted onto
    /// `<root>/pods/<uid>/volume-subpaths/<volume>/<container>/<index>`, which the runtime is
    /// given: a symlink swapped in later cannot redirect it.
    pub fn container_mounts(
        &self,
        pod: &Pod,
        container: &Container,
        volumes: &PodVolumes,
    ) -> Result<Vec<cri::Mount>, VolumeError> {
        let uid = pod_uid(pod)?;
        let mut out = Vec::new();
        for (i, m) in container.volume_mounts.iter().flatten().enumerate() {
            let field = format!("containers[{}].volumeMounts[{i}]", container.name);
            let v = volumes.get(&m.name).ok_or_else(|| {
                spec_err(format!("{field}.name"), format!("no volume {:?}", m.name))
            })?;
            let sub = m.sub_path.as_deref().filter(|s| !s.is_empty());
            let host_path = match sub {
                None => v.host_path.clone(),
                Some(s) => {
                    let target = self
                        .pod_dir(uid)
                        .join(SUBPATHS_DIR)
                        .join(&m.name)
                        .join(&container.name)
                        .join(i.to_string());
                    bind_subpath(&v.host_path, s, &target)?;
                    target
                }
            };
            let propagation = match m.mount_propagation.as_deref() {
                Some("HostToContainer") => cri::MountPropagation::PropagationHostToContainer,
                Some("Bidirectional") => cri::MountPropagation::PropagationBidirectional,
                _ => cri::MountPropagation::PropagationPrivate,
            };
            out.push(cri::Mount {
                container_path: m.mount_path.clone(),
                host_path: host_path.to_string_lossy().into_owned(),
                readonly: m.read_only == Some(true) || v.read_only,
                propagation: propagation as i32,
                ..Default::default()
            });
        }
        Ok(out)
    }

    /// Removes every volume of the pod: unmounts what is mounted under its volume directory
    /// (tmpfs, and anything else found there), then removes the directories. hostPath volumes
    /// are never touched.
    pub fn teardown_pod(&self, uid: &str) -> Result<(), VolumeError> {
        if uid.is_empty() || uid.contains('/') || uid.starts_with('.') {
            return Err(spec_err(
                "metadata.uid".into(),
                "missing or not a plain name",
            ));
        }
        let pod_dir = self.pod_dir(uid);
        // subPath binds first: they pin directories of the volumes
        unmount_and_remove(&pod_dir.join(SUBPATHS_DIR))?;
        unmount_and_remove(&pod_dir.join("volumes"))?;
        let _ = std::fs::remove_dir(&pod_dir);
        Ok(())
    }

    fn pod_dir(&self, uid: &str) -> PathBuf {
        pod_dir_under(&self.config.root_dir, uid)
    }

    /// The directory holding pod `uid`'s emptyDir volumes.
    pub(crate) fn empty_dirs(&self, uid: &str) -> PathBuf {
        empty_dirs_under(&self.config.root_dir, uid)
    }
}

/// The directory of a pod's subPath bind mounts, beside its volumes.
const SUBPATHS_DIR: &str = "volume-subpaths";

fn pod_uid(pod: &Pod) -> Result<&str, VolumeError> {
    let uid = pod.metadata.uid.as_deref().unwrap_or("");
    if uid.is_empty() || uid.contains('/') || uid.starts_with('.') {
        return Err(spec_err(
            "metadata.uid".into(),
            "missing or not a plain name",
        ));
    }
    Ok(uid)
}

/// Unmounts everything at or under `dir` (deepest first), then removes it; refuses to recurse
/// into anything still mounted (a bind mount would delete host files).
fn unmount_and_remove(dir: &Path) -> Result<(), VolumeError> {
    if !dir.exists() {
        return Ok(());
    }
    // mountinfo names canonical paths: a root dir behind a symlink must not hide a mount
    let dir = dir.canonicalize().map_err(io(dir))?;
    for m in mounts_under(&dir) {
        nix::mount::umount2(&m, nix::mount::MntFlags::empty()).map_err(|source| {
            VolumeError::Mount {
                op: "unmount",
                path: m.clone(),
                source,
            }
        })?;
    }
    if let Some(m) = mounts_under(&dir).into_iter().next() {
        return Err(VolumeError::Mount {
            op: "unmount",
            path: m,
            source: nix::Error::EBUSY,
        });
    }
    std::fs::remove_dir_all(&dir).map_err(io(&dir))
}

fn project(
    volume: &str,
    kind: &'static str,
    name: &str,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
    optional: Option<bool>,
) -> Result<BTreeMap<String, FileProjection>, VolumeError> {
    let default_mode = default_mode.map(|m| m as u32).unwrap_or(DEFAULT_MODE);
    let mut out = BTreeMap::new();
    match items {
        None => {
            for (k, v) in data {
                out.insert(
                    k.clone(),
                    FileProjection {
                        data: v.clone(),
                        mode: default_mode,
                    },
                );
            }
        }
        Some(items) => {
            for item in items {
                let Some(v) = data.get(&item.key) else {
                    if optional == Some(true) {
                        continue;
                    }
                    return Err(VolumeError::MissingKey {
                        volume: volume.into(),
                        kind,
                        name: name.into(),
                        key: item.key.clone(),
                    });
                };
                out.insert(
                    item.path.clone(),
                    FileProjection {
                        data: v.clone(),
                        mode: item.mode.map(|m| m as u32).unwrap_or(default_mode),
                    },
                );
            }
        }
    }
    Ok(out)
}

fn format_map(m: Option<&BTreeMap<String, String>>) -> String {
    m.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}\n", serde_json::to_string(v).unwrap_or_default()))
        .collect()
}

/// The value of a downward API `fieldRef` (labels and annotations as `key="value"` lines).
fn downward_field(pod: &Pod, path: &str, node_name: &str) -> Option<String> {
    let m = &pod.metadata;
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    if let Some(k) = path
        .strip_prefix("metadata.labels['")
        .and_then(|s| s.strip_suffix("']"))
    {
        return Some(m.labels.as_ref()?.get(k).cloned().unwrap_or_default());
    }
    if let Some(k) = path
        .strip_prefix("metadata.annotations['")
        .and_then(|s| s.strip_suffix("']"))
    {
        return Some(m.annotations.as_ref()?.get(k).cloned().unwrap_or_default());
    }
    Some(match path {
        "metadata.name" => m.name.clone().unwrap_or_default(),
        "metadata.namespace" => m.namespace.clone().unwrap_or_else(|| "default".into()),
        "metadata.uid" => m.uid.clone().unwrap_or_default(),
        "metadata.labels" => format_map(m.labels.as_ref()),
        "metadata.annotations" => format_map(m.annotations.as_ref()),
        "spec.nodeName" => spec
            .and_then(|s| s.node_name.clone())
            .unwrap_or_else(|| node_name.to_string()),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" => status.and_then(|s| s.pod_ip.clone()).unwrap_or_default(),
        "status.hostIP" => status.and_then(|s| s.host_ip.clone()).unwrap_or_default(),
        _ => return None,
    })
}

/// Checks a hostPath against its `type` (creating it for the `...OrCreate` types).
pub fn check_host_path(volume: &str, hp: &HostPathVolumeSource) -> Result<PathBuf, VolumeError> {
    let path = PathBuf::from(&hp.path);
    let fail = |expected: &str| VolumeError::HostPathType {
        volume: volume.into(),
        path: path.clone(),
        expected: expected.into(),
    };
    let meta = std::fs::metadata(&path);
    match hp.type_.as_deref().unwrap_or("") {
        "" => {}
        "DirectoryOrCreate" => {
            if meta.is_err() {
                std::fs::create_dir_all(&path).map_err(io(&path))?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                    .map_err(io(&path))?;
            } else if !meta.as_ref().is_ok_and(|m| m.is_dir()) {
                return Err(fail("directory"));
            }
        }
        "Directory" => {
            if !meta.is_ok_and(|m| m.is_dir()) {
                return Err(fail("directory"));
            }
        }
        "FileOrCreate" => {
            if meta.is_err() {
                std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&path)
                    .map_err(io(&path))?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
                    .map_err(io(&path))?;
            } else if !meta.as_ref().is_ok_and(|m| m.is_file()) {
                return Err(fail("file"));
            }
        }
        "File" => {
            if !meta.is_ok_and(|m| m.is_file()) {
                return Err(fail("file"));
            }
        }
        "Socket" => {
            if !meta.is_ok_and(|m| m.file_type().is_socket()) {
                return Err(fail("socket"));
            }
        }
        "CharDevice" => {
            if !meta.is_ok_and(|m| m.file_type().is_char_device()) {
                return Err(fail("character device"));
            }
        }
        "BlockDevice" => {
            if !meta.is_ok_and(|m| m.file_type().is_block_device()) {
                return Err(fail("block device"));
            }
        }
        other => {
            return Err(spec_err(
                format!("volume {volume}: hostPath.type"),
                format!("unknown type {other:?}"),
            ));
        }
    }
    Ok(path)
}
