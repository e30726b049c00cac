//! Running one plugin binary per the CNI protocol: `CNI_*` environment, the config on stdin, the
//! result or a spec error on stdout, with a timeout.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use node_core::{Attachment, CniError};
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// A spec error object as plugins print it.
#[derive(Debug, Deserialize)]
struct SpecError {
    code: u32,
    #[serde(default)]
    msg: String,
    #[serde(default)]
    details: String,
}

/// The environment of one invocation.
#[derive(Debug, Clone, Default)]
pub(crate) struct Invocation {
    pub command: &'static str,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: String,
    pub path: String,
}

impl Invocation {
    /// The invocation of `command` for an attachment.
    pub fn for_attachment(command: &'static str, a: &Attachment, bin_dirs: &[PathBuf]) -> Self {
        Self {
            command,
            container_id: a.container_id.clone(),
            netns: a.netns.display().to_string(),
            ifname: a.ifname.clone(),
            args: cni_args(a),
            path: join_path(bin_dirs),
        }
    }

    /// An invocation that concerns no attachment (VERSION, STATUS, GC).
    pub fn bare(command: &'static str, bin_dirs: &[PathBuf]) -> Self {
        Self {
            command,
            path: join_path(bin_dirs),
            ..Default::default()
        }
    }
}

/// `CNI_ARGS` for a Kubernetes pod, as the kubelet's dockershim and containerd build it.
pub(crate) fn cni_args(a: &Attachment) -> String {
    let mut args = vec!["IgnoreUnknown=1".to_string()];
    for (k, v) in [
        ("K8S_POD_NAMESPACE", &a.pod.namespace),
        ("K8S_POD_NAME", &a.pod.name),
        ("K8S_POD_INFRA_CONTAINER_ID", &a.container_id),
        ("K8S_POD_UID", &a.pod.uid),
    ] {
        if !v.is_empty() {
            args.push(format!("{k}={v}"));
        }
    }
    args.join(";")
}

fn join_path(dirs: &[PathBuf]) -> String {
    std::env::join_paths(dirs)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Find the binary of `plugin_type` in the plugin directories.
pub(crate) fn find_plugin(plugin_type: &str, dirs: &[PathBuf]) -> Result<PathBuf, CniError> {
    use std::os::unix::fs::PermissionsExt;
    dirs.iter()
        .map(|d| d.join(plugin_type))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .ok_or_else(|| CniError::PluginNotFound {
            plugin: plugin_type.to_string(),
            dirs: dirs.to_vec(),
        })
}

/// Run `binary` with `stdin`; its stdout on success, its spec error otherwise.
pub(crate) async fn run(
    binary: &Path,
    plugin_type: &str,
    inv: &Invocation,
    stdin: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, CniError> {
    let mut cmd = Command::new(binary);
    cmd.env("CNI_COMMAND", inv.command)
        .env("CNI_CONTAINERID", &inv.container_id)
        .env("CNI_NETNS", &inv.netns)
        .env("CNI_IFNAME", &inv.ifname)
        .env("CNI_ARGS", &inv.args)
        .env("CNI_PATH", &inv.path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let io_err = |source| CniError::Io {
        path: binary.to_path_buf(),
        source,
    };
    let mut child = cmd.spawn().map_err(io_err)?;
    let mut pipe = child.stdin.take().expect("stdin is piped");
    let input = stdin.to_vec();
    let run = async move {
        // A plugin may exit without reading stdin: a broken pipe is not our error.
        let _ = pipe.write_all(&input).await;
        drop(pipe);
        child.wait_with_output().await
    };
    let out = tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| CniError::Timeout {
            plugin: plugin_type.to_string(),
            after: timeout,
        })?
        .map_err(io_err)?;
    tracing::debug!(plugin = plugin_type, command = inv.command, status = %out.status, "cni plugin ran");
    if out.status.success() {
        return Ok(out.stdout);
    }
    Err(match serde_json::from_slice::<SpecError>(&out.stdout) {
        Ok(e) => CniError::Plugin {
            plugin: plugin_type.to_string(),
            code: e.code,
            msg: e.msg,
            details: e.details,
        },
        Err(_) => {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
            let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
            CniError::Plugin {
                plugin: plugin_type.to_string(),
                code: 999,
                msg: format!("exited with {} without a spec error", out.status),
                details: if stderr.is_empty() { stdout } else { stderr },
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use node_core::PodRef;

    #[test]
    fn cni_args_carry_the_pod_identity() {
        let a = Attachment {
            container_id: "c1".into(),
            pod: PodRef::new("ns", "web", "u-1"),
            ..Default::default()
        };
        assert_eq!(
            cni_args(&a),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=c1;K8S_POD_UID=u-1"
        );
    }
}
