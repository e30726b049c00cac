//! [`ExecCni`]: a CNI runtime in the manner of libcni. It loads a network configuration list from
//! a config directory and runs the chain's plugin binaries per the CNI spec (1.0/1.1).
//!
//! - ADD runs the plugins in order, threading each result into the next one's `prevResult`; when
//!   a plugin fails, DEL runs for the plugins already called, in reverse, so nothing is leaked.
//! - DEL runs in reverse order with the cached result as `prevResult`; it also works after a
//!   restart because the result and config are cached on disk in libcni's layout.
//! - CHECK, STATUS and GC (CNI 1.1, `cni.dev/valid-attachments`) go to the plugins whose
//!   VERSION answer says they support them.
//! - `runtimeConfig` carries only the capability args a plugin declares in `capabilities`.

mod cache;
pub mod conflist;
mod invoke;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use node_core::{Attachment, AttachmentKey, CniError, CniPlugin, CniResult};
use serde_json::{Map, Value, json};

use self::cache::{CachedAttachment, ResultCache};
pub use self::conflist::{NetworkConfigList, PluginConfig};
use self::invoke::Invocation;
use crate::version;

/// Where [`ExecCni`] finds configs and plugins, and where it caches results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecConfig {
    /// The config directory (`/etc/cni/net.d`).
    pub conf_dir: PathBuf,
    /// The plugin directories, searched in order (`/opt/cni/bin`); also passed as `CNI_PATH`.
    pub bin_dirs: Vec<PathBuf>,
    /// The cache directory (`/var/lib/cni`): results go to `results/` under it.
    pub cache_dir: PathBuf,
    /// The network to use; `None`: the first valid config in lexical order.
    pub network: Option<String>,
    /// How long one plugin invocation may take.
    pub timeout: Duration,
}

impl Default for ExecConfig {
    fn default() -> Self {
        Self {
            conf_dir: PathBuf::from("/etc/cni/net.d"),
            bin_dirs: vec![PathBuf::from("/opt/cni/bin")],
            cache_dir: PathBuf::from("/var/lib/cni"),
            network: None,
            timeout: Duration::from_secs(60),
        }
    }
}

impl ExecConfig {
    /// Use this config directory.
    #[must_use]
    pub fn conf_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.conf_dir = dir.into();
        self
    }
    /// Use these plugin directories.
    #[must_use]
    pub fn bin_dirs(mut self, dirs: impl IntoIterator<Item = impl Into<PathBuf>>) -> Self {
        self.bin_dirs = dirs.into_iter().map(Into::into).collect();
        self
    }
    /// Use this cache directory.
    #[must_use]
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = dir.into();
        self
    }
    /// Use the network of this name.
    #[must_use]
    pub fn network(mut self, name: impl Into<String>) -> Self {
        self.network = Some(name.into());
        self
    }
    /// Give each plugin invocation this long.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// A [`CniPlugin`] that executes CNI plugin binaries for one network configuration list.
pub struct ExecCni {
    config: ExecConfig,
    list: RwLock<Arc<NetworkConfigList>>,
    cache: ResultCache,
    versions: Mutex<HashMap<PathBuf, Vec<String>>>,
}

impl std::fmt::Debug for ExecCni {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecCni")
            .field("config", &self.config)
            .field("network", &self.network().name)
            .finish()
    }
}

impl ExecCni {
    /// Load the network from the config directory (see [`NetworkConfigList::load_dir`]).
    pub fn new(config: ExecConfig) -> Result<Self, CniError> {
        let list = NetworkConfigList::load_dir(&config.conf_dir, config.network.as_deref())?;
        Ok(Self::with_list(config, list))
    }

    /// Use this network configuration list (the config directory is not read).
    pub fn with_list(config: ExecConfig, list: NetworkConfigList) -> Self {
        let cache = ResultCache::new(&config.cache_dir);
        Self {
            config,
            list: RwLock::new(Arc::new(list)),
            cache,
            versions: Mutex::new(HashMap::new()),
        }
    }

    /// Read the config directory again; the current network stays when that fails.
    pub fn reload(&self) -> Result<(), CniError> {
        let list =
            NetworkConfigList::load_dir(&self.config.conf_dir, self.config.network.as_deref())?;
        *self.list.write().expect("not poisoned") = Arc::new(list);
        Ok(())
    }

    /// The network configuration list in use.
    pub fn network(&self) -> Arc<NetworkConfigList> {
        self.list.read().expect("not poisoned").clone()
    }

    /// The spec versions a plugin supports (its VERSION answer, cached per binary).
    pub async fn plugin_versions(&self, plugin_type: &str) -> Result<Vec<String>, CniError> {
        let binary = invoke::find_plugin(plugin_type, &self.config.bin_dirs)?;
        if let Some(v) = self.versions.lock().expect("not poisoned").get(&binary) {
            return Ok(v.clone());
        }
        let stdin = json!({ "cniVersion": self.network().cni_version }).to_string();
        let inv = Invocation::bare("VERSION", &self.config.bin_dirs);
        let out = invoke::run(
            &binary,
            plugin_type,
            &inv,
            stdin.as_bytes(),
            self.config.timeout,
        )
        .await?;
        let v: Value =
            serde_json::from_slice(&out).map_err(|e| bad_output(plugin_type, "VERSION", e))?;
        let versions: Vec<String> = v
            .get("supportedVersions")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        self.versions
            .lock()
            .expect("not poisoned")
            .insert(binary, versions.clone());
        Ok(versions)
    }

    async fn supports(&self, plugin_type: &str, v: &str) -> Result<bool, CniError> {
        Ok(self
            .plugin_versions(plugin_type)
            .await?
            .iter()
            .any(|s| s == v))
    }

    /// The stdin config of one plugin in a chain, as libcni builds it.
    fn plugin_stdin(
        list: &NetworkConfigList,
        plugin: &PluginConfig,
        prev: Option<&Value>,
        caps: &Map<String, Value>,
    ) -> Vec<u8> {
        let mut conf = plugin.raw.clone();
        conf.insert("name".into(), Value::String(list.name.clone()));
        conf.insert("cniVersion".into(), Value::String(list.cni_version.clone()));
        if let Some(prev) = prev.filter(|p| !p.is_null()) {
            conf.insert("prevResult".into(), prev.clone());
        }
        let rc: Map<String, Value> = plugin
            .capabilities
            .iter()
            .filter_map(|c| caps.get(c).map(|v| (c.clone(), v.clone())))
            .collect();
        if !rc.is_empty() {
            conf.insert("runtimeConfig".into(), Value::Object(rc));
        }
        serde_json::to_vec(&conf).expect("serializable")
    }

    async fn invoke(
        &self,
        list: &NetworkConfigList,
        plugin: &PluginConfig,
        inv: &Invocation,
        prev: Option<&Value>,
        caps: &Map<String, Value>,
    ) -> Result<Vec<u8>, CniError> {
        let binary = invoke::find_plugin(&plugin.plugin_type, &self.config.bin_dirs)?;
        let stdin = Self::plugin_stdin(list, plugin, prev, caps);
        invoke::run(
            &binary,
            &plugin.plugin_type,
            inv,
            &stdin,
            self.config.timeout,
        )
        .await
    }

    /// DEL through `plugins` in reverse; every plugin runs, the first error is returned.
    async fn del_chain(
        &self,
        list: &NetworkConfigList,
        plugins: &[PluginConfig],
        a: &Attachment,
        prev: Option<&Value>,
    ) -> Result<(), CniError> {
        let inv = Invocation::for_attachment("DEL", a, &self.config.bin_dirs);
        let caps = caps_map(a);
        let prev = if version::at_least(&list.cni_version, "0.4.0") {
            prev
        } else {
            None
        };
        let mut first = None;
        for p in plugins.iter().rev() {
            if let Err(e) = self.invoke(list, p, &inv, prev, &caps).await {
                tracing::warn!(plugin = %p.plugin_type, container = %a.container_id, error = %e, "CNI DEL failed");
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    fn cached_list(&self, cached: &CachedAttachment) -> Arc<NetworkConfigList> {
        match NetworkConfigList::parse_list(&cached.config, "<cached config>") {
            Ok(l) => Arc::new(l),
            Err(e) => {
                tracing::warn!(error = %e, "cached CNI config unusable, using the current one");
                self.network()
            }
        }
    }
}

fn caps_map(a: &Attachment) -> Map<String, Value> {
    match serde_json::to_value(&a.capabilities) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

fn bad_output(plugin: &str, command: &str, e: serde_json::Error) -> CniError {
    CniError::Plugin {
        plugin: plugin.to_string(),
        code: 6,
        msg: format!("unreadable {command} output"),
        details: e.to_string(),
    }
}

fn check_attachment(a: &Attachment) -> Result<(), CniError> {
    if a.container_id.is_empty() || a.ifname.is_empty() {
        return Err(CniError::Other(format!(
            "attachment {:?}/{:?}: container id and ifname are required",
            a.container_id, a.ifname
        )));
    }
    Ok(())
}

#[async_trait]
impl CniPlugin for ExecCni {
    async fn add(&self, a: &Attachment) -> Result<CniResult, CniError> {
        check_attachment(a)?;
        if !a.netns.exists() {
            return Err(CniError::Netns {
                container_id: a.container_id.clone(),
                path: a.netns.clone(),
                message: "does not exist".into(),
            });
        }
        let list = self.network();
        // Every binary must be there before anything runs.
        for p in &list.plugins {
            invoke::find_plugin(&p.plugin_type, &self.config.bin_dirs)?;
        }
        let inv = Invocation::for_attachment("ADD", a, &self.config.bin_dirs);
        let caps = caps_map(a);
        let mut prev: Option<Value> = None;
        for (i, p) in list.plugins.iter().enumerate() {
            let step = self
                .invoke(&list, p, &inv, prev.as_ref(), &caps)
                .await
                .and_then(|out| {
                    serde_json::from_slice::<Value>(&out)
                        .map_err(|e| bad_output(&p.plugin_type, "ADD", e))
                });
            match step {
                Ok(v) => prev = Some(v),
                Err(e) => {
                    tracing::warn!(plugin = %p.plugin_type, container = %a.container_id, error = %e, "CNI ADD failed, rolling back");
                    if let Err(rb) = self
                        .del_chain(&list, &list.plugins[..=i], a, prev.as_ref())
                        .await
                    {
                        tracing::warn!(container = %a.container_id, error = %rb, "rollback of a failed ADD was incomplete");
                    }
                    return Err(e);
                }
            }
        }
        let raw = prev.unwrap_or(Value::Null);
        let entry = CachedAttachment {
            kind: "cniCacheV1".into(),
            container_id: a.container_id.clone(),
            config: list.bytes.clone(),
            if_name: a.ifname.clone(),
            network_name: list.name.clone(),
            netns: a.netns.display().to_string(),
            cni_args: invoke::cni_args(a)
                .split(';')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| [k.to_string(), v.to_string()])
                .collect(),
            capability_args: a.capabilities.clone(),
            result: raw.clone(),
        };
        if let Err(e) = self.cache.write(&entry) {
            let _ = self.del_chain(&list, &list.plugins, a, Some(&raw)).await;
            return Err(e);
        }
        let mut result: CniResult = serde_json::from_value(raw).map_err(|e| {
            let last = list
                .plugins
                .last()
                .map(|p| p.plugin_type.as_str())
                .unwrap_or("");
            bad_output(last, "ADD", e)
        })?;
        if result.cni_version.is_empty() {
            result.cni_version = list.cni_version.clone();
        }
        Ok(result)
    }

    async fn del(&self, a: &Attachment) -> Result<(), CniError> {
        check_attachment(a)?;
        let current = self.network();
        let cached = self.cache.read(&current.name, &a.container_id, &a.ifname)?;
        let list = cached
            .as_ref()
            .map_or_else(|| current.clone(), |c| self.cached_list(c));
        let prev = cached.as_ref().map(|c| &c.result);
        self.del_chain(&list, &list.plugins, a, prev).await?;
        self.cache.remove(&current.name, &a.container_id, &a.ifname)
    }

    async fn check(&self, a: &Attachment) -> Result<(), CniError> {
        check_attachment(a)?;
        let current = self.network();
        if current.disable_check {
            return Ok(());
        }
        if !version::at_least(&current.cni_version, "0.4.0") {
            return Err(CniError::Config {
                origin: current.origin.clone(),
                message: format!("cniVersion {} does not support CHECK", current.cni_version),
            });
        }
        let cached = self
            .cache
            .read(&current.name, &a.container_id, &a.ifname)?
            .ok_or_else(|| {
                CniError::Other(format!(
                    "attachment {}/{}: no cached result for network {}",
                    a.container_id, a.ifname, current.name
                ))
            })?;
        let list = self.cached_list(&cached);
        let inv = Invocation::for_attachment("CHECK", a, &self.config.bin_dirs);
        let caps = caps_map(a);
        for p in &list.plugins {
            if !self.supports(&p.plugin_type, &list.cni_version).await? {
                return Err(CniError::Plugin {
                    plugin: p.plugin_type.clone(),
                    code: 1,
                    msg: format!("plugin does not support cniVersion {}", list.cni_version),
                    details: String::new(),
                });
            }
            self.invoke(&list, p, &inv, Some(&cached.result), &caps)
                .await?;
        }
        Ok(())
    }

    async fn status(&self) -> Result<(), CniError> {
        let list = self.network();
        for p in &list.plugins {
            invoke::find_plugin(&p.plugin_type, &self.config.bin_dirs)?;
        }
        if !version::at_least(&list.cni_version, "1.1.0") {
            return Ok(());
        }
        let inv = Invocation::bare("STATUS", &self.config.bin_dirs);
        for p in &list.plugins {
            if self.supports(&p.plugin_type, "1.1.0").await? {
                self.invoke(&list, p, &inv, None, &Map::new()).await?;
            }
        }
        Ok(())
    }

    async fn gc(&self, keep: &[AttachmentKey]) -> Result<(), CniError> {
        let list = self.network();
        let mut first = None;
        // Attachments cached but no longer valid get a full DEL, as libcni's GCNetworkList does.
        for c in self.cache.list(&list.name) {
            let key = AttachmentKey {
                container_id: c.container_id.clone(),
                ifname: c.if_name.clone(),
            };
            if keep.contains(&key) {
                continue;
            }
            let a = Attachment {
                container_id: c.container_id.clone(),
                netns: PathBuf::from(&c.netns),
                ifname: c.if_name.clone(),
                pod: pod_from_args(&c.cni_args),
                capabilities: c.capability_args.clone(),
            };
            if let Err(e) = self.del(&a).await {
                first.get_or_insert(e);
            }
        }
        if version::at_least(&list.cni_version, "1.1.0") && !list.disable_gc {
            let valid = serde_json::to_value(keep).expect("serializable");
            let inv = Invocation::bare("GC", &self.config.bin_dirs);
            for p in &list.plugins {
                if !self.supports(&p.plugin_type, "1.1.0").await? {
                    continue;
                }
                let mut plugin = p.clone();
                plugin
                    .raw
                    .insert("cni.dev/valid-attachments".into(), valid.clone());
                if let Err(e) = self.invoke(&list, &plugin, &inv, None, &Map::new()).await {
                    first.get_or_insert(e);
                }
            }
        }
        first.map_or(Ok(()), Err)
    }
}

fn pod_from_args(args: &[[String; 2]]) -> node_core::PodRef {
    let get = |k: &str| {
        args.iter()
            .find(|[a, _]| a == k)
            .map(|[_, v]| v.clone())
            .unwrap_or_default()
    };
    node_core::PodRef::new(
        get("K8S_POD_NAMESPACE"),
        get("K8S_POD_NAME"),
        get("K8S_POD_UID"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_config_carries_only_declared_capabilities() {
        let list = NetworkConfigList::parse_list(
            br#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge","bridge":"x"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#,
            "t",
        )
        .unwrap();
        let a = Attachment {
            capabilities: node_core::CapabilityArgs {
                port_mappings: vec![node_core::PortMapping {
                    host_port: 80,
                    container_port: 8080,
                    protocol: "tcp".into(),
                    host_ip: None,
                }],
                bandwidth: Some(Default::default()),
                ..Default::default()
            },
            ..Default::default()
        };
        let caps = caps_map(&a);
        let prev = json!({"cniVersion":"1.0.0","ips":[]});
        let b: Value =
            serde_json::from_slice(&ExecCni::plugin_stdin(&list, &list.plugins[0], None, &caps))
                .unwrap();
        assert_eq!(b["name"], "n");
        assert_eq!(b["bridge"], "x");
        assert!(b.get("runtimeConfig").is_none() && b.get("prevResult").is_none());
        let p: Value = serde_json::from_slice(&ExecCni::plugin_stdin(
            &list,
            &list.plugins[1],
            Some(&prev),
            &caps,
        ))
        .unwrap();
        assert_eq!(p["runtimeConfig"]["portMappings"][0]["hostPort"], 80);
        assert!(p["runtimeConfig"].get("bandwidth").is_none());
        assert_eq!(p["prevResult"], prev);
        assert_eq!(p["cniVersion"], "1.0.0");
    }
}
