//! CNI configuration and result parsing (node-cni): network configuration lists and single
//! configurations, plugin results in the spec's JSON, version strings.

use node_cni::NetworkConfigList;
use node_cni::version;
use node_core::CniResult;

/// One input: its bytes as a conflist, a conf and a result.
pub fn run(data: &[u8]) {
    let parsed = [
        NetworkConfigList::parse_list(data, "fuzz.conflist"),
        NetworkConfigList::parse_conf(data, "fuzz.conf"),
    ];
    for list in parsed.into_iter().flatten() {
        assert!(
            !list.plugins.is_empty(),
            "a network with no plugin accepted"
        );
        let _ = version::parse(&list.cni_version);
    }
    if let Ok(result) = serde_json::from_slice::<CniResult>(data) {
        let _ = result.pod_ips();
        // what we accept we can write back and read again
        let again = serde_json::to_vec(&result).expect("a parsed result serializes");
        let back: CniResult = serde_json::from_slice(&again).expect("a written result parses");
        assert_eq!(back.pod_ips(), result.pod_ips());
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = version::parse(s);
        let _ = version::at_least(s, "0.4.0");
    }
}
