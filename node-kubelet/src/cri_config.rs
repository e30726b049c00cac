//! From a Pod spec to CRI configs: the sandbox config (metadata, hostname, DNS, host ports,
//! namespaces, log directory, labels) and each container's config (image, command and args with
//! `$(VAR)` expansion, env from values, the downward API, resources and config maps/secrets,
//! security context, resources, log path, labels).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, ResourceRequirements};
use node_core::cri;

use crate::labels;
use crate::node::quantity;

/// Why a container config could not be built (the kubelet's `CreateContainerConfigError`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A referenced config map does not exist.
    #[error("configmap {namespace}/{name} not found")]
    ConfigMapNotFound {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// A referenced secret does not exist.
    #[error("secret {namespace}/{name} not found")]
    SecretNotFound {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// A referenced key is not in its config map or secret.
    #[error("couldn't find key {key} in {kind} {namespace}/{name}")]
    KeyNotFound {
        /// `ConfigMap` or `Secret`.
        kind: &'static str,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The key.
        key: String,
    },
    /// An env var's source is not supported or malformed.
    #[error("env {env}: {message}")]
    InvalidEnv {
        /// The env var's name.
        env: String,
        /// What is wrong.
        message: String,
    },
}

/// Where config map and secret values come from (the API server, files, an integrator's store).
pub trait ValueStore: Send + Sync {
    /// The data of a config map, `None` when it does not exist.
    fn config_map(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, String>>;
    /// The data of a secret, `None` when it does not exist.
    fn secret(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>>;
}

type Keyed<V> = RwLock<BTreeMap<(String, String), BTreeMap<String, V>>>;

/// A [`ValueStore`] held in memory.
#[derive(Default)]
pub struct InMemoryStore {
    config_maps: Keyed<String>,
    secrets: Keyed<Vec<u8>>,
}

impl InMemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
    /// Set a config map's data.
    pub fn set_config_map(
        &self,
        namespace: &str,
        name: &str,
        data: impl IntoIterator<Item = (String, String)>,
    ) {
        self.config_maps
            .write()
            .expect("store lock")
            .insert((namespace.into(), name.into()), data.into_iter().collect());
    }
    /// Set a secret's data.
    pub fn set_secret(
        &self,
        namespace: &str,
        name: &str,
        data: impl IntoIterator<Item = (String, Vec<u8>)>,
    ) {
        self.secrets
            .write()
            .expect("store lock")
            .insert((namespace.into(), name.into()), data.into_iter().collect());
    }
}

impl ValueStore for InMemoryStore {
    fn config_map(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, String>> {
        self.config_maps
            .read()
            .expect("store lock")
            .get(&(namespace.into(), name.into()))
            .cloned()
    }
    fn secret(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        self.secrets
            .read()
            .expect("store lock")
            .get(&(namespace.into(), name.into()))
            .cloned()
    }
}

/// The host's resolver settings (from `/etc/resolv.conf`), used by `dnsPolicy: Default` and
/// appended to the cluster search path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostDns {
    /// `nameserver` lines.
    pub servers: Vec<String>,
    /// `search` domains.
    pub searches: Vec<String>,
    /// `options`.
    pub options: Vec<String>,
}

impl HostDns {
    /// Parse a resolv.conf text.
    pub fn parse(text: &str) -> Self {
        let mut d = HostDns::default();
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => d.servers.extend(words.next().map(str::to_string)),
                Some("search") | Some("domain") => d.searches = words.map(str::to_string).collect(),
                Some("options") => d.options.extend(words.map(str::to_string)),
                _ => {}
            }
        }
        d
    }

    /// Read a resolv.conf file; a missing file gives no settings.
    pub fn read(path: &Path) -> Self {
        std::fs::read_to_string(path)
            .map(|t| Self::parse(&t))
            .unwrap_or_default()
    }
}

/// What building CRI configs needs from the kubelet's configuration.
#[derive(Debug, Clone)]
pub struct CriSettings {
    /// The node's name (`spec.nodeName` for the downward API when the pod names none).
    pub node_name: String,
    /// Cluster DNS server IPs (`clusterDNS`); empty: `ClusterFirst` falls back to `Default`.
    pub cluster_dns: Vec<IpAddr>,
    /// The cluster domain (`cluster.local`).
    pub cluster_domain: String,
    /// The host's resolver settings.
    pub host_dns: HostDns,
    /// The root of pod log directories (`/var/log/pods`).
    pub pod_log_root: PathBuf,
    /// The node's allocatable CPU in millicores, for `resourceFieldRef` of unset limits (0: unknown).
    pub node_cpu_millis: i64,
    /// The node's allocatable memory in bytes, for `resourceFieldRef` of unset limits and OOM scores (0: unknown).
    pub node_memory_bytes: i64,
}

impl Default for CriSettings {
    fn default() -> Self {
        Self {
            node_name: String::new(),
            cluster_dns: vec![],
            cluster_domain: "cluster.local".into(),
            host_dns: HostDns::default(),
            pod_log_root: PathBuf::from("/var/log/pods"),
            node_cpu_millis: 0,
            node_memory_bytes: 0,
        }
    }
}

fn spec_of(pod: &Pod) -> PodSpec {
    pod.spec.clone().unwrap_or_default()
}

/// The pod's log directory: `<root>/<namespace>_<name>_<uid>`.
pub fn pod_log_dir(root: &Path, pod: &Pod) -> PathBuf {
    let m = &pod.metadata;
    root.join(format!(
        "{}_{}_{}",
        m.namespace.as_deref().unwrap_or("default"),
        m.name.as_deref().unwrap_or(""),
        m.uid.as_deref().unwrap_or("")
    ))
}

/// The labels every object of this pod carries.
pub fn pod_labels(pod: &Pod) -> HashMap<String, String> {
    let m = &pod.metadata;
    HashMap::from([
        (
            labels::POD_UID.to_string(),
            m.uid.clone().unwrap_or_default(),
        ),
        (
            labels::POD_NAME.to_string(),
            m.name.clone().unwrap_or_default(),
        ),
        (
            labels::POD_NAMESPACE.to_string(),
            m.namespace.clone().unwrap_or_else(|| "default".into()),
        ),
        (labels::MANAGED.to_string(), "true".to_string()),
    ])
}

/// The sandbox's DNS config for the pod's `dnsPolicy` and `dnsConfig`.
pub fn dns_config(pod: &Pod, s: &CriSettings) -> cri::DnsConfig {
    let spec = spec_of(pod);
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let host_network = spec.host_network.unwrap_or(false);
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let cluster = match policy {
        "ClusterFirstWithHostNet" => true,
        "ClusterFirst" => !host_network,
        _ => false,
    };
    let mut out = cri::DnsConfig::default();
    match policy {
        "None" => {}
        _ if cluster && !s.cluster_dns.is_empty() => {
            out.servers = s.cluster_dns.iter().map(IpAddr::to_string).collect();
            let d = &s.cluster_domain;
            out.searches = vec![format!("{ns}.svc.{d}"), format!("svc.{d}"), d.clone()];
            out.searches.extend(s.host_dns.searches.iter().cloned());
            out.options = vec!["ndots:5".into()];
        }
        _ => {
            out.servers = s.host_dns.servers.clone();
            out.searches = s.host_dns.searches.clone();
            out.options = s.host_dns.options.clone();
        }
    }
    if let Some(cfg) = &spec.dns_config {
        out.servers
            .extend(cfg.nameservers.iter().flatten().cloned());
        for search in cfg.searches.iter().flatten() {
            if !out.searches.contains(search) {
                out.searches.push(search.clone());
            }
        }
        for opt in cfg.options.iter().flatten() {
            let name = opt.name.clone().unwrap_or_default();
            out.options
                .retain(|o| o.split(':').next() != Some(name.as_str()));
            out.options.push(match &opt.value {
                Some(v) => format!("{name}:{v}"),
                None => name,
            });
        }
    }
    out.servers.dedup();
    out
}

fn protocol(p: Option<&str>) -> i32 {
    match p {
        Some("UDP") => cri::Protocol::Udp as i32,
        Some("SCTP") => cri::Protocol::Sctp as i32,
        _ => cri::Protocol::Tcp as i32,
    }
}

fn namespace_options(spec: &PodSpec) -> cri::NamespaceOption {
    let node = cri::NamespaceMode::Node as i32;
    cri::NamespaceOption {
        network: if spec.host_network.unwrap_or(false) {
            node
        } else {
            cri::NamespaceMode::Pod as i32
        },
        pid: if spec.host_pid.unwrap_or(false) {
            node
        } else if spec.share_process_namespace.unwrap_or(false) {
            cri::NamespaceMode::Pod as i32
        } else {
            cri::NamespaceMode::Container as i32
        },
        ipc: if spec.host_ipc.unwrap_or(false) {
            node
        } else {
            cri::NamespaceMode::Pod as i32
        },
        ..Default::default()
    }
}

fn seccomp(
    profile: Option<&k8s_openapi::api::core::v1::SeccompProfile>,
) -> Option<cri::SecurityProfile> {
    let p = profile?;
    let (t, r) = match p.type_.as_str() {
        "RuntimeDefault" => (
            cri::security_profile::ProfileType::RuntimeDefault,
            String::new(),
        ),
        "Localhost" => (
            cri::security_profile::ProfileType::Localhost,
            p.localhost_profile.clone().unwrap_or_default(),
        ),
        _ => (
            cri::security_profile::ProfileType::Unconfined,
            String::new(),
        ),
    };
    Some(cri::SecurityProfile {
        profile_type: t as i32,
        localhost_ref: r,
    })
}

/// The sandbox config of a pod (attempt: how many sandboxes this pod had before).
pub fn sandbox_config(pod: &Pod, s: &CriSettings, attempt: u32) -> cri::PodSandboxConfig {
    let spec = spec_of(pod);
    let m = &pod.metadata;
    let hostname = if spec.host_network.unwrap_or(false) {
        String::new()
    } else {
        spec.hostname.clone().unwrap_or_else(|| {
            m.name
                .clone()
                .unwrap_or_default()
                .chars()
                .take(63)
                .collect()
        })
    };
    let port_mappings = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.host_port.unwrap_or(0) > 0)
        .map(|p| cri::PortMapping {
            protocol: protocol(p.protocol.as_deref()),
            container_port: p.container_port,
            host_port: p.host_port.unwrap_or(0),
            host_ip: p.host_ip.clone().unwrap_or_default(),
        })
        .collect();
    let mut labels: HashMap<String, String> =
        m.labels.clone().unwrap_or_default().into_iter().collect();
    labels.extend(pod_labels(pod));
    let mut annotations: HashMap<String, String> = m
        .annotations
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    annotations.insert(labels::SANDBOX_HASH.into(), labels::sandbox_hash(pod));
    let psc = spec.security_context.clone().unwrap_or_default();
    let privileged = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| {
            c.security_context
                .as_ref()
                .and_then(|sc| sc.privileged)
                .unwrap_or(false)
        });
    let sysctls = psc
        .sysctls
        .iter()
        .flatten()
        .map(|s| (s.name.clone(), s.value.clone()))
        .collect();
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: m.name.clone().unwrap_or_default(),
            uid: m.uid.clone().unwrap_or_default(),
            namespace: m.namespace.clone().unwrap_or_else(|| "default".into()),
            attempt,
        }),
        hostname,
        log_directory: pod_log_dir(&s.pod_log_root, pod).display().to_string(),
        dns_config: Some(dns_config(pod, s)),
        port_mappings,
        labels,
        annotations,
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: String::new(),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(namespace_options(&spec)),
                run_as_user: psc.run_as_user.map(|value| cri::Int64Value { value }),
                run_as_group: psc.run_as_group.map(|value| cri::Int64Value { value }),
                supplemental_groups: psc.supplemental_groups.clone().unwrap_or_default(),
                privileged,
                seccomp: seccomp(psc.seccomp_profile.as_ref()),
                ..Default::default()
            }),
            sysctls,
            ..Default::default()
        }),
        windows: None,
    }
}

/// Expand `$(VAR)` references as Kubernetes does: a defined name is replaced by its value, an
/// undefined one is left as written, `$$` is an escaped `$`.
pub fn expand(input: &str, vars: &dyn Fn(&str) -> Option<String>) -> String {
    let bytes = input.as_bytes();
    let mut out = String::with_capacity(input.len());
    let mut i = 0;
    let mut literal_start = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' && i + 1 < bytes.len() {
            out.push_str(&input[literal_start..i]);
            match bytes[i + 1] {
                b'$' => {
                    out.push('$');
                    i += 2;
                }
                b'(' => match input[i + 2..].find(')') {
                    Some(len) => {
                        let name = &input[i + 2..i + 2 + len];
                        match vars(name) {
                            Some(v) => out.push_str(&v),
                            None => out.push_str(&input[i..i + 3 + len]),
                        }
                        i += 3 + len;
                    }
                    None => {
                        out.push_str(&input[i..]);
                        i = bytes.len();
                    }
                },
                _ => {
                    out.push('$');
                    i += 1;
                }
            }
            literal_start = i;
        } else {
            i += 1;
        }
    }
    if literal_start < bytes.len() {
        out.push_str(&input[literal_start..]);
    }
    out
}

/// What the downward API and value references need to know about the running pod.
#[derive(Debug, Clone, Default)]
pub struct PodRuntimeInfo {
    /// The pod's IPs (empty before the sandbox has one).
    pub pod_ips: Vec<String>,
    /// The node's IP.
    pub host_ip: Option<String>,
}

fn resource_value(
    c: &Container,
    resource: &str,
    divisor: Option<&str>,
    s: &CriSettings,
    env: &str,
) -> Result<String, ConfigError> {
    let bad = |m: String| ConfigError::InvalidEnv {
        env: env.to_string(),
        message: m,
    };
    let r = c.resources.clone().unwrap_or_default();
    let (kind, name) = resource
        .split_once('.')
        .ok_or_else(|| bad(format!("unsupported resource {resource:?}")))?;
    let pick = |list: &Option<
        BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    >| { list.as_ref().and_then(|l| l.get(name)).map(|q| q.0.clone()) };
    let text = match kind {
        "limits" => pick(&r.limits),
        "requests" => pick(&r.requests),
        _ => return Err(bad(format!("unsupported resource {resource:?}"))),
    };
    let is_cpu = name == "cpu";
    // as kubelet: CPU in millicores over the divisor's millicores, the rest in units over the
    // divisor's units, rounded up
    let amount = |t: &str| {
        if is_cpu {
            quantity::milli_value(t)
        } else {
            quantity::value(t)
        }
    };
    let value = match (&text, kind, is_cpu) {
        (Some(t), _, _) => amount(t).map_err(|e| bad(e.to_string()))?,
        (None, "limits", true) => s.node_cpu_millis,
        (None, "limits", false) => s.node_memory_bytes,
        (None, _, _) => 0,
    };
    let divisor = amount(divisor.unwrap_or("1")).map_err(|e| bad(e.to_string()))?;
    if divisor <= 0 {
        return Err(bad("divisor must be positive".into()));
    }
    let rounded_up = value / divisor + i64::from(value % divisor > 0);
    Ok(rounded_up.max(0).to_string())
}

fn field_value(
    pod: &Pod,
    path: &str,
    info: &PodRuntimeInfo,
    s: &CriSettings,
    env: &str,
) -> Result<String, ConfigError> {
    let m = &pod.metadata;
    let spec = spec_of(pod);
    let keyed = |prefix: &str| -> Option<String> {
        path.strip_prefix(prefix)?
            .strip_suffix("']")
            .map(str::to_string)
    };
    Ok(match path {
        "metadata.name" => m.name.clone().unwrap_or_default(),
        "metadata.namespace" => m.namespace.clone().unwrap_or_else(|| "default".into()),
        "metadata.uid" => m.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec
            .node_name
            .clone()
            .unwrap_or_else(|| s.node_name.clone()),
        "spec.serviceAccountName" => spec.service_account_name.clone().unwrap_or_default(),
        "status.podIP" => info.pod_ips.first().cloned().unwrap_or_default(),
        "status.podIPs" => info.pod_ips.join(","),
        "status.hostIP" | "status.hostIPs" => info.host_ip.clone().unwrap_or_default(),
        "metadata.labels" | "metadata.annotations" => {
            let map = if path == "metadata.labels" {
                &m.labels
            } else {
                &m.annotations
            };
            let mut lines: Vec<String> = map
                .iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", serde_json::to_string(v).unwrap_or_default()))
                .collect();
            lines.sort();
            lines.join("\n")
        }
        _ => {
            if let Some(k) = keyed("metadata.labels['") {
                m.labels
                    .as_ref()
                    .and_then(|l| l.get(&k))
                    .cloned()
                    .unwrap_or_default()
            } else if let Some(k) = keyed("metadata.annotations['") {
                m.annotations
                    .as_ref()
                    .and_then(|l| l.get(&k))
                    .cloned()
                    .unwrap_or_default()
            } else {
                return Err(ConfigError::InvalidEnv {
                    env: env.into(),
                    message: format!("unsupported fieldPath {path:?}"),
                });
            }
        }
    })
}

/// The environment of a container: `envFrom` first, then `env` in order, each value expanded
/// against the variables before it.
pub fn container_env(
    pod: &Pod,
    c: &Container,
    info: &PodRuntimeInfo,
    store: &dyn ValueStore,
    s: &CriSettings,
) -> Result<Vec<(String, String)>, ConfigError> {
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, k: String, v: String| {
        if let Some(e) = env.iter_mut().find(|(n, _)| *n == k) {
            e.1 = v;
        } else {
            env.push((k, v));
        }
    };
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            match store.config_map(&ns, &r.name) {
                Some(data) => data
                    .into_iter()
                    .for_each(|(k, v)| set(&mut env, format!("{prefix}{k}"), v)),
                None if r.optional.unwrap_or(false) => {}
                None => {
                    return Err(ConfigError::ConfigMapNotFound {
                        namespace: ns,
                        name: r.name.clone(),
                    });
                }
            }
        }
        if let Some(r) = &from.secret_ref {
            match store.secret(&ns, &r.name) {
                Some(data) => data.into_iter().for_each(|(k, v)| {
                    set(
                        &mut env,
                        format!("{prefix}{k}"),
                        String::from_utf8_lossy(&v).into(),
                    )
                }),
                None if r.optional.unwrap_or(false) => {}
                None => {
                    return Err(ConfigError::SecretNotFound {
                        namespace: ns,
                        name: r.name.clone(),
                    });
                }
            }
        }
    }
    for e in c.env.iter().flatten() {
        let value = if let Some(v) = &e.value {
            let current = env.clone();
            expand(v, &|name| {
                current
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
            })
        } else if let Some(src) = &e.value_from {
            if let Some(f) = &src.field_ref {
                field_value(pod, &f.field_path, info, s, &e.name)?
            } else if let Some(r) = &src.resource_field_ref {
                let container = match r.container_name.as_deref() {
                    Some(name) if !name.is_empty() => spec_of(pod)
                        .containers
                        .into_iter()
                        .chain(spec_of(pod).init_containers.into_iter().flatten())
                        .find(|x| x.name == name)
                        .ok_or_else(|| ConfigError::InvalidEnv {
                            env: e.name.clone(),
                            message: format!("no container {name}"),
                        })?,
                    _ => c.clone(),
                };
                resource_value(
                    &container,
                    &r.resource,
                    r.divisor.as_ref().map(|d| d.0.as_str()),
                    s,
                    &e.name,
                )?
            } else if let Some(r) = &src.config_map_key_ref {
                match store.config_map(&ns, &r.name) {
                    Some(data) => match data.get(&r.key) {
                        Some(v) => v.clone(),
                        None if r.optional.unwrap_or(false) => continue,
                        None => {
                            return Err(ConfigError::KeyNotFound {
                                kind: "ConfigMap",
                                namespace: ns,
                                name: r.name.clone(),
                                key: r.key.clone(),
                            });
                        }
                    },
                    None if r.optional.unwrap_or(false) => continue,
                    None => {
                        return Err(ConfigError::ConfigMapNotFound {
                            namespace: ns,
                            name: r.name.clone(),
                        });
                    }
                }
            } else if let Some(r) = &src.secret_key_ref {
                match store.secret(&ns, &r.name) {
                    Some(data) => match data.get(&r.key) {
                        Some(v) => String::from_utf8_lossy(v).into_owned(),
                        None if r.optional.unwrap_or(false) => continue,
                        None => {
                            return Err(ConfigError::KeyNotFound {
                                kind: "Secret",
                                namespace: ns,
                                name: r.name.clone(),
                                key: r.key.clone(),
                            });
                        }
                    },
                    None if r.optional.unwrap_or(false) => continue,
                    None => {
                        return Err(ConfigError::SecretNotFound {
                            namespace: ns,
                            name: r.name.clone(),
                        });
                    }
                }
            } else {
                return Err(ConfigError::InvalidEnv {
                    env: e.name.clone(),
                    message: "valueFrom names no source".into(),
                });
            }
        } else {
            String::new()
        };
        set(&mut env, e.name.clone(), value);
    }
    Ok(env)
}

/// The pod's QoS class: `Guaranteed`, `Burstable` or `BestEffort`.
pub fn qos_class(pod: &Pod) -> &'static str {
    let spec = spec_of(pod);
    let all: Vec<&Container> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .collect();
    let get = |r: &Option<ResourceRequirements>, limits: bool, name: &str| {
        r.as_ref()
            .and_then(|r| {
                if limits {
                    r.limits.as_ref()
                } else {
                    r.requests.as_ref()
                }
            })
            .and_then(|l| l.get(name))
            .map(|q| q.0.clone())
    };
    let any = all.iter().any(|c| {
        ["cpu", "memory"]
            .iter()
            .any(|n| get(&c.resources, true, n).is_some() || get(&c.resources, false, n).is_some())
    });
    if !any {
        return "BestEffort";
    }
    let guaranteed = all.iter().all(|c| {
        ["cpu", "memory"].iter().all(|n| {
            let limit = get(&c.resources, true, n);
            let request = get(&c.resources, false, n).or_else(|| limit.clone());
            limit.is_some() && limit == request
        })
    });
    if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// CPU shares, quota and memory limit from a container's resources, and the OOM score for its QoS.
pub fn linux_resources(pod: &Pod, c: &Container, s: &CriSettings) -> cri::LinuxContainerResources {
    let r = c.resources.clone().unwrap_or_default();
    let q =
        |list: &Option<
            BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
        >,
         name: &str| { list.as_ref().and_then(|l| l.get(name)).map(|q| q.0.clone()) };
    let cpu_request = q(&r.requests, "cpu")
        .or_else(|| q(&r.limits, "cpu"))
        .and_then(|t| quantity::milli_value(&t).ok());
    let cpu_limit = q(&r.limits, "cpu").and_then(|t| quantity::milli_value(&t).ok());
    let memory_limit = q(&r.limits, "memory")
        .and_then(|t| quantity::value(&t).ok())
        .unwrap_or(0);
    let memory_request = q(&r.requests, "memory")
        .or_else(|| q(&r.limits, "memory"))
        .and_then(|t| quantity::value(&t).ok());
    let period = 100_000;
    let oom_score_adj = match qos_class(pod) {
        "Guaranteed" => -997,
        "BestEffort" => 1000,
        _ => match (memory_request, s.node_memory_bytes) {
            (Some(req), cap) if cap > 0 => (1000 - 1000 * req / cap).clamp(3, 999),
            _ => 999,
        },
    };
    cri::LinuxContainerResources {
        cpu_period: if cpu_limit.is_some() { period } else { 0 },
        cpu_quota: cpu_limit
            .map(|m| (m * period / 1000).max(1000))
            .unwrap_or(0),
        cpu_shares: cpu_request.map(|m| (m * 1024 / 1000).max(2)).unwrap_or(2),
        memory_limit_in_bytes: memory_limit,
        oom_score_adj,
        ..Default::default()
    }
}

fn security_context(pod: &Pod, c: &Container) -> cri::LinuxContainerSecurityContext {
    let spec = spec_of(pod);
    let psc = spec.security_context.clone().unwrap_or_default();
    let sc = c.security_context.clone().unwrap_or_default();
    let privileged = sc.privileged.unwrap_or(false);
    let caps = sc.capabilities.clone().unwrap_or_default();
    let add: Vec<String> = caps.add.clone().unwrap_or_default();
    let no_new_privs = match sc.allow_privilege_escalation {
        Some(allow) => !allow,
        None => false,
    } && !privileged
        && !add.iter().any(|c| c == "SYS_ADMIN" || c == "CAP_SYS_ADMIN");
    cri::LinuxContainerSecurityContext {
        capabilities: Some(cri::Capability {
            add_capabilities: add,
            drop_capabilities: caps.drop.unwrap_or_default(),
            add_ambient_capabilities: vec![],
        }),
        privileged,
        namespace_options: Some(namespace_options(&spec)),
        run_as_user: sc
            .run_as_user
            .or(psc.run_as_user)
            .map(|value| cri::Int64Value { value }),
        run_as_group: sc
            .run_as_group
            .or(psc.run_as_group)
            .map(|value| cri::Int64Value { value }),
        readonly_rootfs: sc.read_only_root_filesystem.unwrap_or(false),
        supplemental_groups: psc.supplemental_groups.clone().unwrap_or_default(),
        no_new_privs,
        seccomp: seccomp(sc.seccomp_profile.as_ref().or(psc.seccomp_profile.as_ref())),
        ..Default::default()
    }
}

/// The config of one container (attempt: its restart count).
pub fn container_config(
    pod: &Pod,
    c: &Container,
    attempt: u32,
    info: &PodRuntimeInfo,
    store: &dyn ValueStore,
    s: &CriSettings,
) -> Result<cri::ContainerConfig, ConfigError> {
    let env = container_env(pod, c, info, store, s)?;
    let lookup = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let command = c
        .command
        .iter()
        .flatten()
        .map(|a| expand(a, &lookup))
        .collect();
    let args = c
        .args
        .iter()
        .flatten()
        .map(|a| expand(a, &lookup))
        .collect();
    let mut labels = pod_labels(pod);
    labels.insert(labels::CONTAINER_NAME.into(), c.name.clone());
    let grace = spec_of(pod).termination_grace_period_seconds.unwrap_or(30);
    let annotations = HashMap::from([
        (
            labels::CONTAINER_HASH.to_string(),
            labels::container_hash(c),
        ),
        (
            labels::CONTAINER_RESTART_COUNT.to_string(),
            attempt.to_string(),
        ),
        (labels::POD_TERMINATION_GRACE.to_string(), grace.to_string()),
    ]);
    let image = c.image.clone().unwrap_or_default();
    Ok(cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: c.name.clone(),
            attempt,
        }),
        image: Some(cri::ImageSpec {
            image: image.clone(),
            user_specified_image: image,
            ..Default::default()
        }),
        command,
        args,
        working_dir: c.working_dir.clone().unwrap_or_default(),
        envs: env
            .into_iter()
            .map(|(key, value)| cri::KeyValue { key, value })
            .collect(),
        labels,
        annotations,
        log_path: format!("{}/{attempt}.log", c.name),
        stdin: c.stdin.unwrap_or(false),
        stdin_once: c.stdin_once.unwrap_or(false),
        tty: c.tty.unwrap_or(false),
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(linux_resources(pod, c, s)),
            security_context: Some(security_context(pod, c)),
        }),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        serde_saphyr::from_str(yaml).unwrap()
    }

    const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, uid: u-1, labels: {app: web, tier: front}, annotations: {note: hi}}
spec:
  nodeName: node-1
  serviceAccountName: sa
  containers:
  - name: server
    image: busybox
    command: [sh, -c, "echo $(GREETING) $(MISSING) $$(GREETING) $(POD_NAME)"]
    args: ["$(NODE)"]
    ports: [{containerPort: 8080, hostPort: 18080}, {containerPort: 53, protocol: UDP}]
    env:
    - {name: GREETING, value: hello}
    - {name: DERIVED, value: "$(GREETING)-world"}
    - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    - {name: NS, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
    - {name: UID, valueFrom: {fieldRef: {fieldPath: metadata.uid}}}
    - {name: APP, valueFrom: {fieldRef: {fieldPath: "metadata.labels['app']"}}}
    - {name: NODE, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}
    - {name: SA, valueFrom: {fieldRef: {fieldPath: spec.serviceAccountName}}}
    - {name: IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
    - {name: HOST, valueFrom: {fieldRef: {fieldPath: status.hostIP}}}
    - {name: MEM, valueFrom: {resourceFieldRef: {resource: limits.memory, divisor: 1Mi}}}
    - {name: CPU, valueFrom: {resourceFieldRef: {resource: requests.cpu, divisor: 1m}}}
    - {name: COLOR, valueFrom: {configMapKeyRef: {name: cfg, key: color}}}
    - {name: PASS, valueFrom: {secretKeyRef: {name: creds, key: password}}}
    - {name: OPT, valueFrom: {secretKeyRef: {name: nothing, key: x, optional: true}}}
    resources: {requests: {cpu: 250m, memory: 64Mi}, limits: {cpu: 500m, memory: 128Mi}}
    securityContext: {runAsUser: 1000, readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, capabilities: {add: [NET_ADMIN], drop: [ALL]}}
"#;

    fn store() -> InMemoryStore {
        let s = InMemoryStore::new();
        s.set_config_map("shop", "cfg", [("color".to_string(), "blue".to_string())]);
        s.set_secret(
            "shop",
            "creds",
            [("password".to_string(), b"s3cret".to_vec())],
        );
        s
    }

    #[test]
    fn expansion_follows_kubernetes() {
        let vars = |n: &str| match n {
            "A" => Some("x".to_string()),
            _ => None,
        };
        let cases = [
            ("$(A)", "x"),
            ("$(B)", "$(B)"),
            ("$$(A)", "$(A)"),
            ("$$", "$"),
            ("a$b", "a$b"),
            ("$(A", "$(A"),
            ("pre-$(A)-post", "pre-x-post"),
            ("$", "$"),
            ("", ""),
        ];
        for (input, want) in cases {
            assert_eq!(expand(input, &vars), want, "{input}");
        }
    }

    #[test]
    fn container_config_from_the_spec() {
        let p = pod(POD);
        let c = &p.spec.as_ref().unwrap().containers[0];
        let info = PodRuntimeInfo {
            pod_ips: vec!["10.88.0.5".into()],
            host_ip: Some("192.168.1.10".into()),
        };
        let s = CriSettings::default();
        let cfg = container_config(&p, c, 3, &info, &store(), &s).unwrap();
        let env: BTreeMap<_, _> = cfg
            .envs
            .iter()
            .map(|kv| (kv.key.as_str(), kv.value.as_str()))
            .collect();
        assert_eq!(env["DERIVED"], "hello-world");
        assert_eq!(env["POD_NAME"], "web");
        assert_eq!(env["NS"], "shop");
        assert_eq!(env["UID"], "u-1");
        assert_eq!(env["APP"], "web");
        assert_eq!(env["NODE"], "node-1");
        assert_eq!(env["SA"], "sa");
        assert_eq!(env["IP"], "10.88.0.5");
        assert_eq!(env["HOST"], "192.168.1.10");
        assert_eq!(env["MEM"], "128");
        assert_eq!(env["CPU"], "250");
        assert_eq!(env["COLOR"], "blue");
        assert_eq!(env["PASS"], "s3cret");
        assert!(!env.contains_key("OPT"));
        assert_eq!(
            cfg.command,
            ["sh", "-c", "echo hello $(MISSING) $(GREETING) web"]
        );
        assert_eq!(cfg.args, ["node-1"]);
        assert_eq!(cfg.log_path, "server/3.log");
        assert_eq!(cfg.metadata.as_ref().unwrap().attempt, 3);
        assert_eq!(cfg.labels[labels::POD_UID], "u-1");
        assert_eq!(cfg.labels[labels::CONTAINER_NAME], "server");
        assert_eq!(
            cfg.annotations[labels::CONTAINER_HASH],
            labels::container_hash(c)
        );
        let linux = cfg.linux.unwrap();
        let r = linux.resources.unwrap();
        assert_eq!(
            (r.cpu_shares, r.cpu_quota, r.cpu_period),
            (256, 50_000, 100_000)
        );
        assert_eq!(r.memory_limit_in_bytes, 128 << 20);
        assert_eq!(r.oom_score_adj, 999, "burstable without node memory");
        let sc = linux.security_context.unwrap();
        assert_eq!(sc.run_as_user, Some(cri::Int64Value { value: 1000 }));
        assert!(sc.readonly_rootfs && sc.no_new_privs && !sc.privileged);
        assert_eq!(sc.capabilities.unwrap().add_capabilities, ["NET_ADMIN"]);
    }

    #[test]
    fn missing_references_are_config_errors() {
        let p = pod(POD);
        let c = &p.spec.as_ref().unwrap().containers[0];
        let err = container_config(
            &p,
            c,
            0,
            &PodRuntimeInfo::default(),
            &InMemoryStore::new(),
            &CriSettings::default(),
        );
        assert_eq!(
            err.unwrap_err(),
            ConfigError::ConfigMapNotFound {
                namespace: "shop".into(),
                name: "cfg".into()
            }
        );
        let s = InMemoryStore::new();
        s.set_config_map("shop", "cfg", [("other".to_string(), "x".to_string())]);
        let err = container_config(
            &p,
            c,
            0,
            &PodRuntimeInfo::default(),
            &s,
            &CriSettings::default(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "couldn't find key color in ConfigMap shop/cfg"
        );
    }

    #[test]
    fn sandbox_config_from_the_spec() {
        let p = pod(POD);
        let s = CriSettings {
            cluster_dns: vec!["10.96.0.10".parse().unwrap()],
            host_dns: HostDns::parse("nameserver 1.1.1.1\nsearch example.org\n"),
            pod_log_root: "/logs".into(),
            ..Default::default()
        };
        let cfg = sandbox_config(&p, &s, 2);
        assert_eq!(cfg.metadata.as_ref().unwrap().attempt, 2);
        assert_eq!(cfg.hostname, "web");
        assert_eq!(cfg.log_directory, "/logs/shop_web_u-1");
        let dns = cfg.dns_config.unwrap();
        assert_eq!(dns.servers, ["10.96.0.10"]);
        assert_eq!(
            dns.searches,
            [
                "shop.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local",
                "example.org"
            ]
        );
        assert_eq!(dns.options, ["ndots:5"]);
        assert_eq!(
            cfg.port_mappings,
            vec![cri::PortMapping {
                protocol: 0,
                container_port: 8080,
                host_port: 18080,
                host_ip: String::new()
            }]
        );
        assert_eq!(cfg.labels["app"], "web");
        assert_eq!(cfg.labels[labels::POD_NAMESPACE], "shop");
        assert_eq!(cfg.annotations["note"], "hi");
        assert!(cfg.annotations.contains_key(labels::SANDBOX_HASH));
        let ns = cfg
            .linux
            .unwrap()
            .security_context
            .unwrap()
            .namespace_options
            .unwrap();
        assert_eq!(
            (ns.network, ns.pid, ns.ipc),
            (
                cri::NamespaceMode::Pod as i32,
                cri::NamespaceMode::Container as i32,
                cri::NamespaceMode::Pod as i32
            )
        );
    }

    #[test]
    fn dns_policies() {
        let s = CriSettings {
            cluster_dns: vec!["10.96.0.10".parse().unwrap()],
            host_dns: HostDns::parse("nameserver 1.1.1.1\nsearch lan\noptions edns0\n"),
            ..Default::default()
        };
        let with = |extra: &str| {
            dns_config(
                &pod(&format!(
                    "metadata: {{name: p}}\nspec:\n  containers: []\n{extra}"
                )),
                &s,
            )
        };
        assert_eq!(with("").servers, ["10.96.0.10"]);
        assert_eq!(
            with("  dnsPolicy: Default\n"),
            cri::DnsConfig {
                servers: vec!["1.1.1.1".into()],
                searches: vec!["lan".into()],
                options: vec!["edns0".into()]
            }
        );
        assert_eq!(
            with("  hostNetwork: true\n").servers,
            ["1.1.1.1"],
            "ClusterFirst on the host network is Default"
        );
        assert_eq!(
            with("  hostNetwork: true\n  dnsPolicy: ClusterFirstWithHostNet\n").servers,
            ["10.96.0.10"]
        );
        let none = with(
            "  dnsPolicy: None\n  dnsConfig: {nameservers: [8.8.8.8], searches: [a.b], options: [{name: ndots, value: '2'}, {name: rotate}]}\n",
        );
        assert_eq!(
            none,
            cri::DnsConfig {
                servers: vec!["8.8.8.8".into()],
                searches: vec!["a.b".into()],
                options: vec!["ndots:2".into(), "rotate".into()]
            }
        );
        let merged = with("  dnsConfig: {options: [{name: ndots, value: '1'}]}\n");
        assert_eq!(merged.options, ["ndots:1"]);
        let no_cluster = dns_config(
            &pod("metadata: {name: p}\nspec: {containers: []}\n"),
            &CriSettings {
                cluster_dns: vec![],
                ..s.clone()
            },
        );
        assert_eq!(
            no_cluster.servers,
            ["1.1.1.1"],
            "no cluster DNS: fall back to the host's"
        );
    }

    #[test]
    fn host_namespaces_and_qos() {
        let p = pod(
            "metadata: {name: p}\nspec:\n  hostNetwork: true\n  hostPID: true\n  hostIPC: true\n  containers: [{name: c, image: i, resources: {limits: {cpu: 1, memory: 1Gi}}}]\n",
        );
        let cfg = sandbox_config(&p, &CriSettings::default(), 0);
        assert_eq!(cfg.hostname, "");
        let ns = cfg
            .linux
            .unwrap()
            .security_context
            .unwrap()
            .namespace_options
            .unwrap();
        let node = cri::NamespaceMode::Node as i32;
        assert_eq!((ns.network, ns.pid, ns.ipc), (node, node, node));
        assert_eq!(qos_class(&p), "Guaranteed");
        assert_eq!(
            linux_resources(
                &p,
                &p.spec.as_ref().unwrap().containers[0],
                &CriSettings::default()
            )
            .oom_score_adj,
            -997
        );
        assert_eq!(
            qos_class(&pod(
                "metadata: {name: p}\nspec: {containers: [{name: c, image: i}]}\n"
            )),
            "BestEffort"
        );
        assert_eq!(qos_class(&pod(POD)), "Burstable");
    }
}
