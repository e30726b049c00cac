//! Network configuration lists: `.conflist` files, `.conf` files wrapped as a one-plugin list,
//! and the config directory scan (lexical order, first valid wins, or by network name), as
//! libcni loads them.

use std::path::{Path, PathBuf};

use node_core::CniError;
use serde_json::{Map, Value};

/// A parsed network configuration list: its name, version and plugin configs (raw JSON, so that
/// plugin-specific fields pass through unchanged).
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfigList {
    /// The network name (`name`).
    pub name: String,
    /// The config's `cniVersion`.
    pub cni_version: String,
    /// `disableCheck`: CHECK is a no-op for this network.
    pub disable_check: bool,
    /// `disableGC`: GC is a no-op for this network (CNI 1.1).
    pub disable_gc: bool,
    /// The plugins of the chain, in ADD order.
    pub plugins: Vec<PluginConfig>,
    /// The bytes it was parsed from (kept in the result cache, as libcni does).
    pub bytes: Vec<u8>,
    /// Where it came from (a file path, or `<inline>`).
    pub origin: String,
}

/// One plugin of a chain.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginConfig {
    /// The plugin type: the binary's name.
    pub plugin_type: String,
    /// The capabilities the plugin declares (`capabilities: {"portMappings": true}`).
    pub capabilities: Vec<String>,
    /// The plugin's config object as written.
    pub raw: Map<String, Value>,
}

impl NetworkConfigList {
    /// Parse a `.conflist` document; `origin` names it in errors.
    pub fn parse_list(bytes: &[u8], origin: &str) -> Result<Self, CniError> {
        let v: Value = serde_json::from_slice(bytes)
            .map_err(|e| config_err(origin, format!("not valid JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| config_err(origin, "not a JSON object"))?;
        let name = str_field(obj, "name", origin)?;
        let cni_version = str_field(obj, "cniVersion", origin)?;
        check_version(&cni_version, origin)?;
        let plugins = obj
            .get("plugins")
            .ok_or_else(|| config_err(origin, "no \"plugins\" field"))?
            .as_array()
            .ok_or_else(|| config_err(origin, "\"plugins\" is not a list"))?;
        if plugins.is_empty() {
            return Err(config_err(origin, "\"plugins\" is empty"));
        }
        let plugins = plugins
            .iter()
            .enumerate()
            .map(|(i, p)| PluginConfig::parse(p, &format!("{origin}: plugins[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            name,
            cni_version,
            disable_check: bool_field(obj, "disableCheck", origin)?,
            disable_gc: bool_field(obj, "disableGC", origin)?,
            plugins,
            bytes: bytes.to_vec(),
            origin: origin.to_string(),
        })
    }

    /// Parse a single-plugin `.conf` document and wrap it as a one-plugin list.
    pub fn parse_conf(bytes: &[u8], origin: &str) -> Result<Self, CniError> {
        let v: Value = serde_json::from_slice(bytes)
            .map_err(|e| config_err(origin, format!("not valid JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| config_err(origin, "not a JSON object"))?;
        let name = str_field(obj, "name", origin)?;
        let cni_version = str_field(obj, "cniVersion", origin)?;
        check_version(&cni_version, origin)?;
        let plugin = PluginConfig::parse(&v, origin)?;
        let list = serde_json::json!({ "name": name, "cniVersion": cni_version, "plugins": [v] });
        Ok(Self {
            name,
            cni_version,
            disable_check: false,
            disable_gc: false,
            plugins: vec![plugin],
            bytes: serde_json::to_vec(&list).unwrap_or_default(),
            origin: origin.to_string(),
        })
    }

    /// Read and parse one file: `.conflist` as a list, `.conf`/`.json` as a single plugin.
    pub fn from_file(path: &Path) -> Result<Self, CniError> {
        let bytes = std::fs::read(path).map_err(|source| CniError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let origin = path.display().to_string();
        if path.extension().is_some_and(|e| e == "conflist") {
            Self::parse_list(&bytes, &origin)
        } else {
            Self::parse_conf(&bytes, &origin)
        }
    }

    /// Scan a config directory like libcni: `.conflist`, `.conf` and `.json` files in lexical
    /// order; the first valid one wins, or the one named `network` when given.
    pub fn load_dir(dir: &Path, network: Option<&str>) -> Result<Self, CniError> {
        let entries = std::fs::read_dir(dir).map_err(|source| CniError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.extension()
                    .is_some_and(|e| e == "conflist" || e == "conf" || e == "json")
            })
            .collect();
        files.sort();
        let mut problems = Vec::new();
        for f in &files {
            match Self::from_file(f) {
                Ok(list) if network.is_none_or(|n| n == list.name) => return Ok(list),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(file = %f.display(), error = %e, "skipping invalid CNI config");
                    problems.push(e.to_string());
                }
            }
        }
        let what = match network {
            Some(n) => format!("no valid network configuration named {n:?}"),
            None => "no valid network configuration".to_string(),
        };
        let message = if problems.is_empty() {
            what
        } else {
            format!("{what} ({})", problems.join("; "))
        };
        Err(CniError::Config {
            origin: dir.display().to_string(),
            message,
        })
    }
}

impl PluginConfig {
    fn parse(v: &Value, origin: &str) -> Result<Self, CniError> {
        let raw = v
            .as_object()
            .ok_or_else(|| config_err(origin, "a plugin config is not a JSON object"))?
            .clone();
        let plugin_type = str_field(&raw, "type", origin)?;
        if plugin_type.contains('/') || plugin_type.contains("..") {
            return Err(config_err(
                origin,
                format!("plugin type {plugin_type:?} is not a plain binary name"),
            ));
        }
        let capabilities = match raw.get("capabilities") {
            None => Vec::new(),
            Some(Value::Object(caps)) => caps
                .iter()
                .filter(|(_, on)| on.as_bool() == Some(true))
                .map(|(k, _)| k.clone())
                .collect(),
            Some(_) => return Err(config_err(origin, "\"capabilities\" is not an object")),
        };
        Ok(Self {
            plugin_type,
            capabilities,
            raw,
        })
    }
}

fn config_err(origin: &str, message: impl Into<String>) -> CniError {
    CniError::Config {
        origin: origin.to_string(),
        message: message.into(),
    }
}

fn str_field(obj: &Map<String, Value>, field: &str, origin: &str) -> Result<String, CniError> {
    match obj.get(field) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(_) => Err(config_err(
            origin,
            format!("field {field:?} is not a non-empty string"),
        )),
        None => Err(config_err(origin, format!("missing field {field:?}"))),
    }
}

fn bool_field(obj: &Map<String, Value>, field: &str, origin: &str) -> Result<bool, CniError> {
    match obj.get(field) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(config_err(
            origin,
            format!("field {field:?} is not a boolean"),
        )),
    }
}

fn check_version(v: &str, origin: &str) -> Result<(), CniError> {
    if crate::version::parse(v).is_none() {
        return Err(config_err(
            origin,
            format!("cniVersion {v:?} is not a version"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflist_parses_with_capabilities() {
        let l = NetworkConfigList::parse_list(
            br#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge"},{"type":"portmap","capabilities":{"portMappings":true,"bandwidth":false}}]}"#,
            "x.conflist",
        )
        .unwrap();
        assert_eq!(l.name, "n");
        assert_eq!(l.plugins[1].capabilities, vec!["portMappings".to_string()]);
    }

    #[test]
    fn malformed_lists_name_the_file_and_field() {
        for (doc, needle) in [
            (&b"{not json"[..], "not valid JSON"),
            (
                br#"{"cniVersion":"1.0.0","plugins":[{"type":"bridge"}]}"#,
                "missing field \"name\"",
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"n","plugins":[]}"#,
                "\"plugins\" is empty",
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"n","plugins":[{"x":1}]}"#,
                "plugins[0]: invalid network configuration: missing field \"type\"",
            ),
            (
                br#"{"cniVersion":"one","name":"n","plugins":[{"type":"a"}]}"#,
                "is not a version",
            ),
            (
                br#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"../sh"}]}"#,
                "not a plain binary name",
            ),
        ] {
            let e = NetworkConfigList::parse_list(doc, "/etc/cni/net.d/10-x.conflist").unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.contains("/etc/cni/net.d/10-x.conflist") && msg.contains(needle),
                "{msg}"
            );
            assert_eq!(e.code(), 7);
        }
    }

    #[test]
    fn dir_scan_is_lexical_skips_invalid_and_selects_by_name() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("05-bad.conflist"), "{").unwrap();
        std::fs::write(
            d.path().join("10-b.conf"),
            r#"{"cniVersion":"1.0.0","name":"b","type":"bridge"}"#,
        )
        .unwrap();
        std::fs::write(
            d.path().join("20-a.conflist"),
            r#"{"cniVersion":"1.0.0","name":"a","plugins":[{"type":"ptp"}]}"#,
        )
        .unwrap();
        std::fs::write(d.path().join("30-ignored.txt"), "{").unwrap();
        let first = NetworkConfigList::load_dir(d.path(), None).unwrap();
        assert_eq!(first.name, "b");
        assert_eq!(first.plugins[0].plugin_type, "bridge");
        let by_name = NetworkConfigList::load_dir(d.path(), Some("a")).unwrap();
        assert_eq!(by_name.plugins[0].plugin_type, "ptp");
        let missing = NetworkConfigList::load_dir(d.path(), Some("zz"))
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("named \"zz\"") && missing.contains("05-bad.conflist"),
            "{missing}"
        );
    }
}
