//! The CNI plugin side of the protocol, for shipping a [`CniPlugin`] as a plugin binary: read
//! `CNI_*` from the environment and the network config from stdin, run the command, and answer
//! with the result JSON or a spec error JSON (and its exit status), like libcni's `skel`.
//! [`run_plugin`] and [`plugin_main`] ship any [`CniPlugin`] this way; the `nodekit-bridge`
//! binary is [`BridgePlugin`] behind [`run_bridge`].

use std::collections::HashMap;
use std::path::PathBuf;

use ipnet::IpNet;
use node_core::{Attachment, AttachmentKey, CapabilityArgs, CniError, CniPlugin, PodRef};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::bridge::{BridgeConfig, BridgePlugin};
use crate::version;

/// Set by [`plugin_main`]: the process ends once the plugin has answered. Work the answer does
/// not wait for (the end of a link deletion) is then left to a child process, since a process
/// cannot end while one of its threads is in the kernel.
pub(crate) static EXITS_AFTER_ANSWER: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// The versions the `nodekit-bridge` binary speaks.
pub const PLUGIN_VERSIONS: &[&str] = &["0.4.0", "1.0.0", "1.1.0"];

/// The network config of a `nodekit-bridge` plugin (`"type": "nodekit-bridge"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BridgeNetConf {
    /// The spec version of the config.
    pub cni_version: String,
    /// The network name.
    pub name: String,
    /// The plugin type.
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// The bridge name (default `nk0`).
    #[serde(default)]
    pub bridge: Option<String>,
    /// The pod subnets (IPv4 and/or IPv6).
    #[serde(default)]
    pub subnets: Vec<IpNet>,
    /// One pod subnet (shorthand for `subnets`).
    #[serde(default)]
    pub subnet: Option<IpNet>,
    /// The gateways, in the order of the subnets.
    #[serde(default)]
    pub gateways: Vec<std::net::IpAddr>,
    /// The MTU.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// Masquerade traffic leaving the pod subnets.
    #[serde(default)]
    pub ip_masq: bool,
    /// Hairpin mode on the bridge ports (default on).
    #[serde(default)]
    pub hairpin_mode: Option<bool>,
    /// The lease directory (host-local's `dataDir`).
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// The directory for per-attachment records.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// Capability args from the runtime.
    #[serde(default)]
    pub runtime_config: CapabilityArgs,
    /// GC: the attachments to keep (`cni.dev/valid-attachments`).
    #[serde(default, rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Vec<AttachmentKey>,
}

impl BridgeNetConf {
    /// The [`BridgeConfig`] this network config describes.
    pub fn bridge_config(&self) -> BridgeConfig {
        let d = BridgeConfig::default();
        let mut subnets = self.subnets.clone();
        subnets.extend(self.subnet);
        BridgeConfig {
            network: self.name.clone(),
            bridge: self.bridge.clone().unwrap_or(d.bridge),
            subnets: if subnets.is_empty() {
                d.subnets
            } else {
                subnets
            },
            gateways: self.gateways.clone(),
            mtu: self.mtu,
            masquerade: self.ip_masq,
            hairpin: self.hairpin_mode.unwrap_or(true),
            lease_dir: self.data_dir.clone().unwrap_or(d.lease_dir),
            state_dir: self.state_dir.clone().unwrap_or(d.state_dir),
        }
    }
}

/// What a plugin invocation prints and how it exits.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The JSON to print on stdout (empty for DEL/CHECK/STATUS/GC success).
    pub stdout: String,
    /// The exit status.
    pub status: i32,
}

fn spec_error(cni_version: &str, code: u32, msg: String, details: String) -> Outcome {
    let v = if cni_version.is_empty() {
        version::CURRENT_VERSION
    } else {
        cni_version
    };
    Outcome {
        stdout: json!({"cniVersion": v, "code": code, "msg": msg, "details": details}).to_string(),
        status: 1,
    }
}

fn from_error(cni_version: &str, e: &CniError) -> Outcome {
    let code = e.code();
    spec_error(
        cni_version,
        if code == 999 { 999 } else { code },
        e.to_string(),
        String::new(),
    )
}

/// The pod identity from `CNI_ARGS` (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`, `K8S_POD_UID`).
pub fn pod_from_cni_args(args: &str) -> PodRef {
    let kv: HashMap<&str, &str> = args.split(';').filter_map(|p| p.split_once('=')).collect();
    let get = |k| kv.get(k).copied().unwrap_or_default();
    PodRef::new(
        get("K8S_POD_NAMESPACE"),
        get("K8S_POD_NAME"),
        get("K8S_POD_UID"),
    )
}

/// Run one invocation of the `nodekit-bridge` plugin: `env` is the process environment,
/// `stdin` the network config. Needs a tokio runtime.
pub async fn run_bridge(env: &HashMap<String, String>, stdin: &[u8]) -> Outcome {
    run_plugin(env, stdin, PLUGIN_VERSIONS, bridge_plugin).await
}

/// The [`BridgePlugin`] of a `nodekit-bridge` network config.
pub fn bridge_plugin(raw: &Value) -> Result<BridgePlugin, CniError> {
    let conf = BridgeNetConf::deserialize(raw).map_err(|e| CniError::Config {
        origin: "stdin".into(),
        message: e.to_string(),
    })?;
    BridgePlugin::new(conf.bridge_config())
}

/// The parts of a network config every plugin reads (besides its own fields).
#[derive(Debug, Default, Deserialize)]
struct CommonConf {
    #[serde(default, rename = "runtimeConfig")]
    runtime_config: CapabilityArgs,
    #[serde(default, rename = "cni.dev/valid-attachments")]
    valid_attachments: Vec<AttachmentKey>,
}

/// Run one invocation of any [`CniPlugin`] as a plugin binary, like libcni's `skel.PluginMain`:
/// `env` is the process environment (`CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`,
/// `CNI_IFNAME`, `CNI_ARGS`), `stdin` the network config, `versions` the spec versions the
/// plugin speaks (answered to `VERSION`, others refused with code 1), and `make` builds the
/// plugin from the network config (a [`CniError::Config`] from it is answered with code 7).
/// Needs a tokio runtime.
pub async fn run_plugin<P, F>(
    env: &HashMap<String, String>,
    stdin: &[u8],
    versions: &[&str],
    make: F,
) -> Outcome
where
    P: CniPlugin,
    F: FnOnce(&Value) -> Result<P, CniError>,
{
    let var = |k: &str| env.get(k).cloned().unwrap_or_default();
    let command = var("CNI_COMMAND");
    let raw: Value = match serde_json::from_slice(stdin) {
        Ok(v) => v,
        Err(e) => {
            return spec_error(
                "",
                6,
                "cannot decode the network config on stdin".into(),
                e.to_string(),
            );
        }
    };
    let conf_version = raw
        .get("cniVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if command == "VERSION" {
        return Outcome {
            stdout: json!({"cniVersion": version::CURRENT_VERSION, "supportedVersions": versions})
                .to_string(),
            status: 0,
        };
    }
    if !versions.contains(&conf_version.as_str()) {
        return spec_error(
            "",
            1,
            format!("cniVersion {conf_version:?} is not supported"),
            format!("supported: {}", versions.join(", ")),
        );
    }
    let common = match CommonConf::deserialize(&raw) {
        Ok(c) => c,
        Err(e) => {
            return spec_error(
                &conf_version,
                7,
                "invalid network config".into(),
                e.to_string(),
            );
        }
    };
    let plugin = match make(&raw) {
        Ok(p) => p,
        Err(CniError::Config { message, .. }) => {
            return spec_error(&conf_version, 7, "invalid network config".into(), message);
        }
        Err(e) => return from_error(&conf_version, &e),
    };
    let needs_attachment = matches!(command.as_str(), "ADD" | "DEL" | "CHECK");
    if needs_attachment {
        for k in ["CNI_CONTAINERID", "CNI_IFNAME"] {
            if var(k).is_empty() {
                return spec_error(&conf_version, 4, format!("{k} is not set"), String::new());
            }
        }
        if command != "DEL" && var("CNI_NETNS").is_empty() {
            return spec_error(
                &conf_version,
                4,
                "CNI_NETNS is not set".into(),
                String::new(),
            );
        }
    }
    let a = Attachment {
        container_id: var("CNI_CONTAINERID"),
        netns: PathBuf::from(var("CNI_NETNS")),
        ifname: var("CNI_IFNAME"),
        pod: pod_from_cni_args(&var("CNI_ARGS")),
        capabilities: common.runtime_config,
    };
    let done = |r: Result<(), CniError>| match r {
        Ok(()) => Outcome {
            stdout: String::new(),
            status: 0,
        },
        Err(e) => from_error(&conf_version, &e),
    };
    match command.as_str() {
        "ADD" => match plugin.add(&a).await {
            Ok(mut r) => {
                r.cni_version = conf_version.clone();
                let mut v = serde_json::to_value(&r).expect("serializable");
                if !version::at_least(&conf_version, "1.0.0") {
                    // 0.4.0 results name each address's family.
                    if let Some(ips) = v.get_mut("ips").and_then(Value::as_array_mut) {
                        for ip in ips {
                            let fam = if ip["address"].as_str().unwrap_or_default().contains(':') {
                                "6"
                            } else {
                                "4"
                            };
                            ip["version"] = json!(fam);
                        }
                    }
                }
                Outcome {
                    stdout: v.to_string(),
                    status: 0,
                }
            }
            Err(e) => from_error(&conf_version, &e),
        },
        "DEL" => done(plugin.del(&a).await),
        "CHECK" => done(plugin.check(&a).await),
        "STATUS" => done(plugin.status().await),
        "GC" => done(plugin.gc(&common.valid_attachments).await),
        other => spec_error(
            &conf_version,
            4,
            format!("unknown CNI_COMMAND {other:?}"),
            String::new(),
        ),
    }
}

/// The `main` of a plugin binary: reads the environment and stdin, runs [`run_plugin`] on a
/// current-thread tokio runtime, prints the answer on stdout and exits with its status.
///
/// ```no_run
/// use node_cni::{BridgeConfig, BridgePlugin};
///
/// fn main() {
///     // a plugin that always uses the same bridge, whatever the network config says
///     node_cni::skel::plugin_main(&["1.0.0", "1.1.0"], |_conf| {
///         BridgePlugin::new(BridgeConfig { bridge: "corp0".into(), ..Default::default() })
///     })
/// }
/// ```
pub fn plugin_main<P, F>(versions: &[&str], make: F) -> !
where
    P: CniPlugin,
    F: FnOnce(&Value) -> Result<P, CniError>,
{
    use std::io::{Read, Write};
    EXITS_AFTER_ANSWER.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut stdin = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let env = std::env::vars().collect();
    let outcome = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => {
            let outcome = rt.block_on(run_plugin(&env, &stdin, versions, make));
            // Not waiting for blocking work nobody awaits: the answer is known.
            rt.shutdown_background();
            outcome
        }
        Err(e) => spec_error("", 5, format!("cannot start a runtime: {e}"), String::new()),
    };
    let mut out = std::io::stdout();
    let _ = out.write_all(outcome.stdout.as_bytes());
    let _ = out.flush();
    std::process::exit(outcome.status);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(cmd: &str) -> HashMap<String, String> {
        HashMap::from([("CNI_COMMAND".to_string(), cmd.to_string())])
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn version_lists_the_supported_versions() {
        let o = rt().block_on(run_bridge(&env("VERSION"), br#"{"cniVersion":"1.1.0"}"#));
        let v: Value = serde_json::from_str(&o.stdout).unwrap();
        assert_eq!(o.status, 0);
        assert_eq!(v["supportedVersions"], json!(["0.4.0", "1.0.0", "1.1.0"]));
    }

    #[test]
    fn bad_invocations_get_spec_errors() {
        let conf =
            br#"{"cniVersion":"1.1.0","name":"n","type":"nodekit-bridge","subnet":"10.9.0.0/24"}"#;
        type Case<'a> = (HashMap<String, String>, &'a [u8], u32, &'a str);
        let cases: Vec<Case<'_>> = vec![
            (env("ADD"), b"{nope", 6, "decode"),
            (
                env("ADD"),
                br#"{"cniVersion":"0.2.0","name":"n","type":"nodekit-bridge"}"#,
                1,
                "not supported",
            ),
            (
                env("ADD"),
                br#"{"cniVersion":"1.1.0","name":"n","type":"nodekit-bridge","subnets":"x"}"#,
                7,
                "invalid",
            ),
            (env("ADD"), conf, 4, "CNI_CONTAINERID"),
            (env("FROB"), conf, 4, "unknown CNI_COMMAND"),
        ];
        for (e, stdin, code, needle) in cases {
            let o = rt().block_on(run_bridge(&e, stdin));
            let v: Value = serde_json::from_str(&o.stdout).unwrap();
            assert_eq!(
                (o.status, v["code"].as_u64()),
                (1, Some(u64::from(code))),
                "{}",
                o.stdout
            );
            assert!(o.stdout.contains(needle), "{}", o.stdout);
        }
        let mut add = env("ADD");
        add.extend([
            ("CNI_CONTAINERID".to_string(), "c1".to_string()),
            ("CNI_IFNAME".to_string(), "eth0".to_string()),
            (
                "CNI_NETNS".to_string(),
                "/run/netns/nkt-missing".to_string(),
            ),
        ]);
        let d = tempfile::tempdir().unwrap();
        let conf = format!(
            r#"{{"cniVersion":"1.1.0","name":"n","type":"nodekit-bridge","subnet":"10.9.0.0/24","dataDir":"{}"}}"#,
            d.path().display()
        );
        let o = rt().block_on(run_bridge(&add, conf.as_bytes()));
        let v: Value = serde_json::from_str(&o.stdout).unwrap();
        assert_eq!(v["code"], 3);
        assert!(v["msg"].as_str().unwrap().contains("nkt-missing"));
    }

    #[test]
    fn any_plugin_runs_behind_the_skel() {
        let fake = node_test_support::FakeCni::new();
        let versions = &["1.0.0", "1.1.0"];
        let call = |command: &str, conf: &str| {
            let mut e = env(command);
            e.extend(
                [
                    ("CNI_CONTAINERID", "c1"),
                    ("CNI_IFNAME", "eth0"),
                    ("CNI_NETNS", "/run/netns/nkt-fake"),
                    (
                        "CNI_ARGS",
                        "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web;K8S_POD_UID=u",
                    ),
                ]
                .map(|(k, v)| (k.to_string(), v.to_string())),
            );
            let plugin = fake.clone();
            rt().block_on(run_plugin(&e, conf.as_bytes(), versions, |raw| {
                if raw.get("broken").is_some() {
                    return Err(CniError::Config {
                        origin: "mine".into(),
                        message: "field broken is not allowed".into(),
                    });
                }
                Ok(plugin)
            }))
        };
        let conf = r#"{"cniVersion":"1.0.0","name":"n","type":"mine"}"#;
        let v = call("VERSION", conf);
        assert!(
            v.stdout
                .contains(r#""supportedVersions":["1.0.0","1.1.0"]"#),
            "{v:?}"
        );

        let add = call("ADD", conf);
        assert_eq!(add.status, 0, "{add:?}");
        let r: Value = serde_json::from_str(&add.stdout).unwrap();
        assert_eq!(r["cniVersion"], "1.0.0");
        assert!(
            r["ips"][0]["address"]
                .as_str()
                .unwrap()
                .starts_with("10.88.")
        );
        assert_eq!(fake.attached().len(), 1);
        assert_eq!(call("CHECK", conf).status, 0);

        let gc = call(
            "GC",
            r#"{"cniVersion":"1.1.0","name":"n","type":"mine","cni.dev/valid-attachments":[]}"#,
        );
        assert_eq!(gc.status, 0, "{gc:?}");
        assert!(
            fake.attached().is_empty(),
            "GC kept an attachment not listed"
        );

        let bad = call(
            "ADD",
            r#"{"cniVersion":"1.0.0","name":"n","type":"mine","broken":1}"#,
        );
        let v: Value = serde_json::from_str(&bad.stdout).unwrap();
        assert_eq!((bad.status, v["code"].as_u64()), (1, Some(7)), "{bad:?}");
        assert!(v["details"].as_str().unwrap().contains("broken"), "{v}");
        assert_eq!(
            fake.calls(),
            ["add c1", "check c1", "gc "],
            "the failed ADD reached the plugin"
        );
    }

    #[test]
    fn cni_args_give_the_pod() {
        let p = pod_from_cni_args(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web;K8S_POD_UID=u",
        );
        assert_eq!(p, PodRef::new("ns", "web", "u"));
    }
}
