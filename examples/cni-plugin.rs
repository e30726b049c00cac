//! Shipping your own CNI plugin binary: node-cni's `skel` speaks the protocol (`CNI_COMMAND` and
//! friends in the environment, the network config on stdin, the result or a spec error JSON on
//! stdout, VERSION, ADD, CHECK, DEL, STATUS, GC); you give it a `CniPlugin` built from the network
//! config. Here the plugin is the native bridge with an operator's fixed choices (bridge `corp0`,
//! masquerade on) and its own config field `podSubnet`. A bad config is answered with spec error
//! 7 naming the field.
//!
//! Install it as `/opt/cni/bin/corp-net` and reference it from a conflist for containerd, CRI-O
//! or node-cni's `ExecCni`:
//!
//! ```text
//! cargo build --example cni-plugin && sudo cp target/debug/examples/cni-plugin /opt/cni/bin/corp-net
//! {"cniVersion":"1.1.0","name":"corp","plugins":[{"type":"corp-net","podSubnet":"10.77.0.0/24"}]}
//! ```

use std::path::PathBuf;

use node_cni::{BridgeConfig, BridgePlugin, skel};
use node_core::CniError;
use serde::Deserialize;

/// The plugin's own network config fields.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CorpNet {
    name: String,
    pod_subnet: ipnet::IpNet,
    #[serde(default)]
    data_dir: Option<PathBuf>,
    #[serde(default)]
    state_dir: Option<PathBuf>,
}

fn main() {
    skel::plugin_main(&["1.0.0", "1.1.0"], |raw| {
        let conf = CorpNet::deserialize(raw).map_err(|e| CniError::Config {
            origin: "corp-net".into(),
            message: e.to_string(),
        })?;
        let defaults = BridgeConfig::default();
        BridgePlugin::new(BridgeConfig {
            network: conf.name,
            bridge: "corp0".into(),
            subnets: vec![conf.pod_subnet],
            masquerade: true,
            lease_dir: conf.data_dir.unwrap_or(defaults.lease_dir),
            state_dir: conf.state_dir.unwrap_or(defaults.state_dir),
            ..defaults
        })
    })
}
