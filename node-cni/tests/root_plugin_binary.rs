//! Root tests: the `nodekit-bridge` plugin binary executed through [`ExecCni`], speaking the
//! CNI protocol (ADD, CHECK, DEL, STATUS, GC, VERSION) inside throwaway namespaces.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use node_core::CniPlugin;
use node_test_support::{require_command, require_path, require_root};

/// Write `<dir>/net.d/10-nodekit.conflist`: network `name`, the nodekit-bridge plugin on a new
/// bridge with `subnet` (leases and state under `dir`), then the plugins of `more`.
fn write_conflist(dir: &Path, name: &str, subnet: &str, more: &str) -> PathBuf {
    let conf_dir = dir.join("net.d");
    std::fs::create_dir_all(&conf_dir).unwrap();
    let conf = format!(
        r#"{{"cniVersion":"1.1.0","name":"{name}","plugins":[
          {{"type":"nodekit-bridge","bridge":"{bridge}","subnets":["{subnet}"],
            "dataDir":"{d}/leases","stateDir":"{d}/state",
            "capabilities":{{"portMappings":true,"bandwidth":true}}}}{more}]}}"#,
        bridge = bridge_name(),
        d = dir.display()
    );
    std::fs::write(conf_dir.join("10-nodekit.conflist"), conf).unwrap();
    conf_dir
}

#[test]
fn plugin_binary_adds_checks_deletes_and_collects_through_exec_cni() {
    let test = "plugin_binary_adds_checks_deletes_and_collects_through_exec_cni";
    if !(require_root(test) && require_command(test, "nft") && require_path(test, "/bin/busybox")) {
        return;
    }
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_nodekit-bridge"));
    let tmp = tempfile::tempdir().unwrap();
    let (subnet, gateway) = subnet24();
    let conf_dir = write_conflist(tmp.path(), "nkt-bin", &subnet, "");
    let lease_dir = tmp.path().join("leases/nkt-bin");
    let [node, pod1, pod2] = namespaces(["node", "pod1", "pod2"]);
    let web = tempfile::tempdir().unwrap();
    in_ns(&node, || async {
        let cni = exec_cni(
            &conf_dir,
            [bin.parent().unwrap().to_path_buf()],
            &tmp.path().join("cache"),
        );
        assert_eq!(
            cni.plugin_versions("nodekit-bridge").await.unwrap(),
            ["0.4.0", "1.0.0", "1.1.0"]
        );
        cni.status().await.unwrap();

        let a1 = attachment_with_ports(&pod1, "b-one", vec![port_mapping(18082, 8080, "tcp")]);
        let a2 = attachment(&pod2, "b-two");
        let r1 = cni.add(&a1).await.unwrap();
        let r2 = cni.add(&a2).await.unwrap();
        assert_eq!(r1.cni_version, "1.1.0");
        let (ip1, ip2) = (r1.pod_ips()[0].to_string(), r2.pod_ips()[0].to_string());
        assert!(
            subnet
                .parse::<ipnet::IpNet>()
                .unwrap()
                .contains(&r1.pod_ips()[0])
        );
        assert!(
            ping(&node, &ip1) && ping(&pod2, &ip1),
            "{ip1} does not answer"
        );
        let _server = serve_http(&pod1, web.path(), 8080, "binary pod1");
        assert_eq!(
            http_get(&node, &format!("http://{gateway}:18082/")).as_deref(),
            Some("binary pod1")
        );

        cni.check(&a1).await.unwrap();
        cni.check(&a2).await.unwrap();
        pod1.sh(&format!("ip addr del {ip1}/24 dev eth0")).unwrap();
        let e = cni.check(&a1).await.unwrap_err();
        assert!(
            e.to_string().contains("nodekit-bridge") && e.to_string().contains(&ip1),
            "{e}"
        );

        cni.del(&a1).await.unwrap();
        assert!(!has_link(&pod1, "eth0"));
        assert_eq!(leases(&lease_dir), vec![ip2.clone()]);
        assert!(http_get(&node, &format!("http://{gateway}:18082/")).is_none());
        cni.del(&a1).await.expect("a second DEL succeeds");

        // GC keeping nothing. With its cache entry gone, only the plugin's own GC (CNI 1.1,
        // cni.dev/valid-attachments) can free the second pod's lease and veth.
        std::fs::remove_file(tmp.path().join("cache/results/nkt-bin-b-two-eth0")).unwrap();
        cni.gc(&[a1.key()]).await.unwrap();
        assert!(leases(&lease_dir).is_empty());
        assert!(veths(&node).is_empty());
        assert!(!has_link(&pod2, "eth0"));
        assert!(
            std::fs::read_dir(tmp.path().join("cache/results"))
                .unwrap()
                .next()
                .is_none()
        );
    });
}

#[test]
fn failing_plugin_after_the_binary_leaves_nothing() {
    let test = "failing_plugin_after_the_binary_leaves_nothing";
    if !(require_root(test) && require_command(test, "nft")) {
        return;
    }
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_nodekit-bridge"));
    let tmp = tempfile::tempdir().unwrap();
    let bin_dir = tmp.path().join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    std::os::unix::fs::symlink(&bin, bin_dir.join("nodekit-bridge")).unwrap();
    write_failing_plugin(&bin_dir);
    let (subnet, _) = subnet24();
    let conf_dir = write_conflist(tmp.path(), "nkt-chain", &subnet, r#",{"type":"nkt-fail"}"#);
    let [node, pod] = namespaces(["node", "pod"]);
    in_ns(&node, || async {
        let cni = exec_cni(&conf_dir, [bin_dir.clone()], &tmp.path().join("cache"));
        let mut a = attachment(&pod, "chain-fail");
        a.capabilities.port_mappings = vec![port_mapping(18087, 80, "tcp")];
        a.capabilities.bandwidth = Some(bandwidth(8_000_000, 800_000));
        let e = cni.add(&a).await.unwrap_err().to_string();
        assert!(e.contains("nkt-fail"), "{e}");
        assert!(!has_link(&pod, "eth0"), "the pod kept its eth0");
        assert!(veths(&node).is_empty(), "{:?}", veths(&node));
        assert!(
            node.sh("ip -o link show type ifb")
                .unwrap()
                .trim()
                .is_empty(),
            "an ifb leaked"
        );
        assert!(leases(&tmp.path().join("leases/nkt-chain")).is_empty());
        let table = node_cni::BridgePlugin::new(node_cni::BridgeConfig {
            network: "nkt-chain".into(),
            ..Default::default()
        })
        .unwrap()
        .nft_table()
        .to_string();
        assert!(host_port_elements(&node, &table).is_empty());
        assert_eq!(
            std::fs::read_to_string(bin_dir.join("calls")).unwrap(),
            "ADD chain-fail\nDEL chain-fail\n"
        );
    });
}
