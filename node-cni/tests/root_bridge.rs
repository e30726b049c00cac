//! Root tests: the native [`BridgePlugin`] in throwaway namespaces. The node is itself a
//! namespace (the plugin runs on a thread inside it), pods are other namespaces.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use common::*;
use node_cni::{BridgeConfig, BridgePlugin};
use node_core::{AttachmentKey, Bandwidth, CniError, CniPlugin};
use node_test_support::{NetnsFixture, connect_veth, require_command, require_path, require_root};

fn prerequisites(test: &str) -> bool {
    require_root(test) && require_command(test, "nft") && require_path(test, "/bin/busybox")
}

struct Env {
    tmp: tempfile::TempDir,
    subnet: String,
    gateway: String,
    v6: String,
    config: BridgeConfig,
}

impl Env {
    fn new(dual_stack: bool) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let (subnet, gateway) = subnet24();
        let v6 = format!("fd00:{:x}::/64", unique());
        let mut subnets = vec![subnet.parse().unwrap()];
        if dual_stack {
            subnets.push(v6.parse().unwrap());
        }
        let config = BridgeConfig {
            network: "nkt-native".into(),
            bridge: bridge_name(),
            subnets,
            lease_dir: tmp.path().join("leases"),
            state_dir: tmp.path().join("state"),
            ..Default::default()
        };
        Env {
            tmp,
            subnet,
            gateway,
            v6,
            config,
        }
    }

    fn plugin(&self) -> BridgePlugin {
        BridgePlugin::new(self.config.clone()).unwrap()
    }

    fn leases(&self) -> Vec<String> {
        leases(&self.config.lease_dir.join("nkt-native"))
    }
}

fn sorted(v: &[String]) -> Vec<String> {
    let mut v = v.to_vec();
    v.sort();
    v
}

#[test]
fn native_add_answers_check_passes_del_frees_everything() {
    if !prerequisites("native_add_answers_check_passes_del_frees_everything") {
        return;
    }
    let env = Env::new(true);
    let [node, pod1, pod2] = namespaces(["node", "pod1", "pod2"]);
    let web = tempfile::tempdir().unwrap();
    in_ns(&node, || async {
        let cni = env.plugin();
        let a1 = attachment_with_ports(&pod1, "n-one", vec![port_mapping(18080, 8080, "tcp")]);
        let a2 = attachment(&pod2, "n-two");
        let r1 = cni.add(&a1).await.unwrap();
        let r2 = cni.add(&a2).await.unwrap();
        let ips1 = r1.pod_ips();
        let ips2 = r2.pod_ips();
        assert_eq!(ips1.len(), 2, "dual-stack: {r1:?}");
        let (ip1, ip1v6, ip2) = (
            ips1[0].to_string(),
            ips1[1].to_string(),
            ips2[0].to_string(),
        );
        assert!(
            env.subnet
                .parse::<ipnet::IpNet>()
                .unwrap()
                .contains(&ips1[0])
        );
        assert!(env.v6.parse::<ipnet::IpNet>().unwrap().contains(&ips1[1]));
        assert_ne!(ip1, ip2);
        assert_eq!(r1.interfaces[2].sandbox, pod1.path().display().to_string());
        let host1 = BridgePlugin::host_ifname(&a1.key());
        assert_eq!(r1.interfaces[1].name, host1);
        assert_eq!(env.leases().len(), 4);
        assert_eq!(
            sorted(&bridge_ports(&node, &env.config.bridge)),
            sorted(&[host1.clone(), r2.interfaces[1].name.clone()])
        );

        // Inside the pod: loopback up, the addresses, the default routes.
        let pod_view = pod1
            .sh("ip -o link show lo; ip -o addr show dev eth0; ip route; ip -6 route")
            .unwrap();
        assert!(
            pod_view.contains("LOWER_UP") && pod_view.contains(&format!("{ip1}/24")),
            "{pod_view}"
        );
        assert!(
            pod_view.contains(&format!("default via {}", env.gateway)),
            "{pod_view}"
        );
        assert!(
            node.sh(&format!("ip -d link show {host1}"))
                .unwrap()
                .contains("hairpin on")
        );

        // Answers from the node and from the other pod, over IPv4 and IPv6.
        assert!(ping(&node, &ip1), "node cannot ping {ip1}");
        assert!(ping(&pod2, &ip1), "pod2 cannot ping {ip1}");
        assert!(ping(&pod2, &ip1v6), "pod2 cannot ping {ip1v6}");
        let _server = serve_http(&pod1, web.path(), 8080, "native pod1");
        assert_eq!(
            http_get(&pod2, &format!("http://{ip1}:8080/")).as_deref(),
            Some("native pod1")
        );
        // The host port, from the node and from another pod, and back to the pod itself (hairpin).
        let via_gw = format!("http://{}:18080/", env.gateway);
        assert_eq!(
            http_get(&node, &via_gw).as_deref(),
            Some("native pod1"),
            "host port from the node"
        );
        assert_eq!(
            http_get(&pod2, &via_gw).as_deref(),
            Some("native pod1"),
            "host port from pod2"
        );
        assert_eq!(
            http_get(&pod1, &via_gw).as_deref(),
            Some("native pod1"),
            "host port from pod1 (hairpin)"
        );

        cni.check(&a1).await.unwrap();
        cni.check(&a2).await.unwrap();
        pod2.sh(&format!("ip addr del {ip2}/24 dev eth0")).unwrap();
        let e = cni.check(&a2).await.unwrap_err().to_string();
        assert!(e.contains("n-two") && e.contains(&ip2), "{e}");

        cni.del(&a1).await.unwrap();
        assert!(!has_link(&pod1, "eth0"));
        assert!(!veths(&node).contains(&host1));
        assert_eq!(env.leases().len(), 2);
        let map = node
            .sh(&format!("nft list map inet {} hostports4", cni.nft_table()))
            .unwrap();
        assert!(!map.contains("18080"), "host port left behind: {map}");
        assert!(http_get(&node, &via_gw).is_none());
        cni.del(&a1).await.expect("a second DEL succeeds");
        assert!(cni.check(&a1).await.is_err());

        // A new instance (a restart) knows the leases: a new pod gets another address, and
        // DEL of the old one frees its lease.
        drop(cni);
        let again = env.plugin();
        assert_eq!(
            again
                .leases()
                .unwrap()
                .iter()
                .filter(|l| l.key.container_id == "n-two")
                .count(),
            2
        );
        let pod3 = NetnsFixture::new("pod3").unwrap();
        let r3 = again.add(&attachment(&pod3, "n-three")).await.unwrap();
        assert!(!r3.pod_ips().contains(&ips2[0]));
        again.del(&a2).await.unwrap();
        again.del(&attachment(&pod3, "n-three")).await.unwrap();
        assert!(env.leases().is_empty(), "{:?}", env.leases());
        assert!(veths(&node).is_empty());
        again.teardown_node(true).await.unwrap();
        assert!(node.sh("nft list tables").unwrap().trim().is_empty());
    });
}

#[test]
fn fifty_concurrent_adds_get_fifty_distinct_addresses() {
    if !prerequisites("fifty_concurrent_adds_get_fifty_distinct_addresses") {
        return;
    }
    let env = Env::new(false);
    let node = NetnsFixture::new("node").unwrap();
    let pods: Vec<NetnsFixture> = (0..50)
        .map(|i| NetnsFixture::new(&format!("p{i}")).unwrap())
        .collect();
    node.run_in(|| {
        // Worker threads are created from this thread, so they are in the node's namespace too.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let cni = Arc::new(env.plugin());
            let tasks: Vec<_> = pods
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let (cni, a) = (cni.clone(), attachment(p, &format!("c{i:02}")));
                    tokio::spawn(async move { cni.add(&a).await })
                })
                .collect();
            let mut ips = BTreeSet::new();
            for t in tasks {
                ips.insert(t.await.unwrap().unwrap().pod_ips()[0]);
            }
            assert_eq!(ips.len(), 50, "addresses were handed out twice");
            assert_eq!(env.leases().len(), 50);
            assert_eq!(bridge_ports(&node, &env.config.bridge).len(), 50);
            for (p, ip) in pods.iter().zip(&ips).take(3) {
                let _ = p;
                assert!(ping(&node, &ip.to_string()));
            }
            let tasks: Vec<_> = pods
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let (cni, a) = (cni.clone(), attachment(p, &format!("c{i:02}")));
                    tokio::spawn(async move { cni.del(&a).await })
                })
                .collect();
            for t in tasks {
                t.await.unwrap().unwrap();
            }
            assert!(env.leases().is_empty());
            assert!(veths(&node).is_empty());
        })
    })
    .unwrap();
}

#[test]
fn gc_frees_what_attachments_not_kept_hold() {
    if !prerequisites("gc_frees_what_attachments_not_kept_hold") {
        return;
    }
    let env = Env::new(false);
    let node = NetnsFixture::new("node").unwrap();
    let pods: Vec<NetnsFixture> = (0..4)
        .map(|i| NetnsFixture::new(&format!("g{i}")).unwrap())
        .collect();
    in_ns(&node, || async {
        let cni = env.plugin();
        let atts: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| attachment(p, &format!("g{i}")))
            .collect();
        let mut with_port = atts[2].clone();
        with_port.capabilities.port_mappings = vec![port_mapping(18081, 80, "udp")];
        cni.add(&atts[0]).await.unwrap();
        cni.add(&atts[1]).await.unwrap();
        let r2 = cni.add(&with_port).await.unwrap();
        assert_eq!(env.leases().len(), 3);
        // A host port already taken: a clear error, the first pod keeps it, nothing leaks.
        let mut clash = atts[3].clone();
        clash.capabilities.port_mappings = with_port.capabilities.port_mappings.clone();
        let e = cni.add(&clash).await.unwrap_err().to_string();
        assert!(e.contains("g3") && e.contains("18081/udp"), "{e}");
        assert_eq!(env.leases().len(), 3);
        assert!(!has_link(&pods[3], "eth0"));
        let map = node
            .sh(&format!("nft list map inet {} hostports4", cni.nft_table()))
            .unwrap();
        assert!(
            map.contains(&format!("18081 : {} . 80", r2.pod_ips()[0])),
            "{map}"
        );
        // GC from a fresh instance (after a restart), keeping only the first attachment.
        let again = env.plugin();
        again.gc(&[atts[0].key()]).await.unwrap();
        assert_eq!(env.leases().len(), 1);
        assert_eq!(again.leases().unwrap()[0].key, atts[0].key());
        assert_eq!(
            bridge_ports(&node, &env.config.bridge),
            vec![BridgePlugin::host_ifname(&atts[0].key())]
        );
        assert!(!has_link(&pods[1], "eth0") && !has_link(&pods[2], "eth0"));
        let map = node
            .sh(&format!("nft list map inet {} hostports4", cni.nft_table()))
            .unwrap();
        assert!(!map.contains("18081"), "{map}");
        again.check(&atts[0]).await.unwrap();
        again.gc(&[]).await.unwrap();
        assert!(env.leases().is_empty() && veths(&node).is_empty());
    });
}

#[test]
fn masquerade_lets_pods_reach_beyond_the_node() {
    if !prerequisites("masquerade_lets_pods_reach_beyond_the_node") {
        return;
    }
    let mut env = Env::new(false);
    env.config.masquerade = true;
    let [node, outside, pod] = namespaces(["node", "out", "pod"]);
    // The outside world knows the node (192.0.2.1) but has no route to the pod subnet.
    connect_veth(
        &node,
        "up0",
        "192.0.2.1/24",
        &outside,
        "wan0",
        "192.0.2.2/24",
    )
    .unwrap();
    in_ns(&node, || async {
        let cni = env.plugin();
        let a = attachment(&pod, "m-one");
        cni.add(&a).await.unwrap();
        assert!(
            ping(&pod, "192.0.2.2"),
            "the pod cannot reach beyond the node"
        );
        let rules = node
            .sh(&format!(
                "nft list chain inet {} postrouting",
                cni.nft_table()
            ))
            .unwrap();
        assert!(
            rules.contains("masquerade") && rules.contains(&env.subnet),
            "{rules}"
        );
        cni.del(&a).await.unwrap();
        cni.teardown_node(true).await.unwrap();
    });
    // Without masquerade the same path does not work: the test can fail.
    let env2 = Env::new(false);
    let pod2 = NetnsFixture::new("pod").unwrap();
    in_ns(&node, || async {
        let cni = env2.plugin();
        let a = attachment(&pod2, "m-two");
        cni.add(&a).await.unwrap();
        assert!(pod2.sh("/bin/busybox ping -c1 -W1 192.0.2.2").is_err());
        cni.del(&a).await.unwrap();
    });
}

#[test]
fn bad_input_gives_clear_errors_and_leaks_nothing() {
    if !prerequisites("bad_input_gives_clear_errors_and_leaks_nothing") {
        return;
    }
    let mut env = Env::new(false);
    let tiny = format!("{}/30", env.subnet.trim_end_matches("/24"));
    env.config.subnets = vec![tiny.parse().unwrap()];
    let [node, pod1, pod2] = namespaces(["node", "pod", "pod"]);
    in_ns(&node, || async {
        let cni = env.plugin();
        // A netns that does not exist.
        let mut a = attachment(&pod1, "b-nonetns");
        a.netns = Path::new("/run/netns/nkt-no-such-netns").into();
        let e = cni.add(&a).await.unwrap_err();
        assert!(matches!(e, CniError::Netns { .. }), "{e}");
        assert!(
            e.to_string().contains("b-nonetns") && e.to_string().contains("nkt-no-such-netns"),
            "{e}"
        );
        assert!(env.leases().is_empty() && veths(&node).is_empty());

        // An exhausted /30: one pod fits, the second gets a clear error and nothing.
        cni.add(&attachment(&pod1, "b-first")).await.unwrap();
        let e = cni.add(&attachment(&pod2, "b-second")).await.unwrap_err();
        assert!(matches!(e, CniError::IpamExhausted { .. }), "{e}");
        assert!(
            e.to_string().contains(&tiny) && e.to_string().contains("b-second"),
            "{e}"
        );
        assert!(!has_link(&pod2, "eth0"));
        assert_eq!(env.leases().len(), 1);
        cni.del(&attachment(&pod1, "b-first")).await.unwrap();

        // Failing midway (the pod already has an eth0): the veth and lease are undone.
        pod2.sh("ip link add eth0 type bridge").unwrap();
        let e = cni.add(&attachment(&pod2, "b-clash")).await.unwrap_err();
        assert!(e.to_string().contains("b-clash"), "{e}");
        assert!(
            env.leases().is_empty() && veths(&node).is_empty(),
            "{:?} {:?}",
            env.leases(),
            veths(&node)
        );

        // A bad host port after the veth exists: undone too.
        let bad = attachment_with_ports(&pod1, "b-port", vec![port_mapping(80, 80, "icmp")]);
        let e = cni.add(&bad).await.unwrap_err();
        assert!(
            e.to_string().contains("portMappings") && e.to_string().contains("icmp"),
            "{e}"
        );
        assert!(!has_link(&pod1, "eth0"));
        assert!(env.leases().is_empty() && veths(&node).is_empty());
        assert!(
            std::fs::read_dir(env.tmp.path().join("state/nkt-native"))
                .map(|d| d.count())
                .unwrap_or(0)
                == 0
        );
    });
    // A bad config is refused before anything is touched, naming the field.
    let e = BridgePlugin::new(BridgeConfig {
        bridge: "a-much-too-long-name".into(),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("bridge") && e.contains("a-much-too-long-name"),
        "{e}"
    );
    let e = BridgePlugin::new(BridgeConfig {
        gateways: vec!["10.99.0.1".parse().unwrap()],
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("gateways") && e.contains("10.99.0.1"), "{e}");
    let _ = AttachmentKey {
        container_id: String::new(),
        ifname: String::new(),
    };
}

fn ifbs(node: &NetnsFixture) -> String {
    node.sh("ip -o link show type ifb").unwrap()
}

#[test]
fn bandwidth_limits_both_directions_on_the_node_side() {
    if !prerequisites("bandwidth_limits_both_directions_on_the_node_side") {
        return;
    }
    let env = Env::new(false);
    let [node, shaped, free] = namespaces(["node", "bw1", "bw2"]);
    // 16 Mbit/s = 2 MB/s each way, a 64 KiB bucket.
    let limit = 2_000_000.0;
    let mut a = attachment(&shaped, "bw-one");
    a.capabilities.bandwidth = Some(bandwidth(16_000_000, 64 * 1024 * 8));
    let b = attachment(&free, "bw-two");
    let cni = Arc::new(env.plugin());
    let (ip1, ip2) = node
        .run_in(|| {
            runtime().block_on(async {
                let r1 = cni.add(&a).await.unwrap();
                let r2 = cni.add(&b).await.unwrap();
                (r1.pod_ips()[0], r2.pod_ips()[0])
            })
        })
        .unwrap();
    let host = BridgePlugin::host_ifname(&a.key());
    let qdiscs = node.sh(&format!("tc qdisc show dev {host}")).unwrap();
    assert!(
        qdiscs.contains("tbf") && qdiscs.contains("ingress"),
        "{qdiscs}"
    );
    assert_eq!(ifbs(&node).lines().count(), 1, "{}", ifbs(&node));
    let gw: std::net::IpAddr = env.gateway.parse().unwrap();
    let bytes = 4 * 1024 * 1024;
    let to_pod = tcp_throughput(&node, &shaped, ip1, bytes);
    let from_pod = tcp_throughput(&shaped, &node, gw, bytes);
    let unshaped = tcp_throughput(&node, &free, ip2, bytes);
    // Generous bounds: the shaped pod stays under twice its rate, the other pod goes far beyond.
    assert!(
        to_pod < 2.0 * limit,
        "to the shaped pod: {to_pod:.0} B/s (limit {limit})"
    );
    assert!(
        from_pod < 2.0 * limit,
        "from the shaped pod: {from_pod:.0} B/s (limit {limit})"
    );
    assert!(
        unshaped > 5.0 * limit,
        "the unshaped pod is limited too: {unshaped:.0} B/s"
    );
    in_ns(&node, || async {
        cni.del(&a).await.unwrap();
        cni.del(&b).await.unwrap();
    });
    assert!(ifbs(&node).trim().is_empty(), "ifb left: {}", ifbs(&node));
    assert!(veths(&node).is_empty());
}

#[test]
fn host_ports_answer_on_the_node_loopback() {
    if !prerequisites("host_ports_answer_on_the_node_loopback") {
        return;
    }
    let env = Env::new(false);
    let [node, pod] = namespaces(["node", "lo"]);
    let web = tempfile::tempdir().unwrap();
    let a = attachment_with_ports(&pod, "lo-one", vec![port_mapping(18083, 8080, "tcp")]);
    in_ns(&node, || async {
        let cni = env.plugin();
        cni.add(&a).await.unwrap();
        let _server = serve_http(&pod, web.path(), 8080, "loopback pod");
        assert_eq!(
            http_get(&node, "http://127.0.0.1:18083/").as_deref(),
            Some("loopback pod"),
            "host port on the node's 127.0.0.1"
        );
        let sysctl = node
            .sh(&format!(
                "cat /proc/sys/net/ipv4/conf/{}/route_localnet",
                env.config.bridge
            ))
            .unwrap();
        assert_eq!(sysctl.trim(), "1");
        cni.del(&a).await.unwrap();
        assert!(http_get(&node, "http://127.0.0.1:18083/").is_none());
        cni.teardown_node(true).await.unwrap();
    });
}

#[test]
fn every_failing_add_path_leaves_nothing() {
    if !prerequisites("every_failing_add_path_leaves_nothing") {
        return;
    }
    let mut env = Env::new(false);
    let tiny = format!("{}/30", env.subnet.trim_end_matches("/24"));
    env.config.subnets = vec![tiny.parse().unwrap()];
    let [node, pod1, pod2] = namespaces(["node", "f1", "f2"]);
    let port = |p: u16| port_mapping(p, 80, "tcp");
    let records = || {
        std::fs::read_dir(env.tmp.path().join("state/nkt-native"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    in_ns(&node, || async {
        let cni = env.plugin();
        let table = cni.nft_table().to_string();
        let first = attachment_with_ports(&pod1, "f-first", vec![port(18084)]);
        cni.add(&first).await.unwrap();
        let nothing_more = |what: &str| {
            assert_eq!(env.leases().len(), 1, "{what}: a lease leaked");
            assert_eq!(veths(&node).len(), 1, "{what}: a veth leaked");
            assert!(!has_link(&pod2, "eth0"), "{what}: the pod kept an eth0");
            assert!(ifbs(&node).trim().is_empty(), "{what}: an ifb leaked");
            let elems = host_port_elements(&node, &table);
            assert!(
                elems.contains("18084") && !elems.contains("18085"),
                "{what}: {elems}"
            );
            assert_eq!(records(), 1, "{what}: a record leaked");
        };

        // The range is exhausted (a /30 holds one pod).
        let second = attachment_with_ports(&pod2, "f-second", vec![port(18085)]);
        let e = cni.add(&second).await.unwrap_err();
        assert!(matches!(e, CniError::IpamExhausted { .. }), "{e}");
        nothing_more("exhausted range");
        cni.del(&first).await.unwrap();

        // A netns that does not exist.
        let mut gone = second.clone();
        gone.netns = Path::new("/run/netns/nkt-no-such-netns").into();
        let e = cni.add(&gone).await.unwrap_err();
        assert!(matches!(e, CniError::Netns { .. }), "{e}");
        cni.add(&first).await.unwrap();
        nothing_more("missing netns");

        // A bandwidth without burst: refused before anything is made.
        let mut shaped = second.clone();
        shaped.capabilities.bandwidth = Some(Bandwidth {
            ingress_rate: 1_000_000,
            ..Default::default()
        });
        cni.del(&first).await.unwrap();
        let e = cni.add(&shaped).await.unwrap_err().to_string();
        assert!(e.contains("bandwidth") && e.contains("ingressBurst"), "{e}");
        cni.add(&first).await.unwrap();
        nothing_more("bad bandwidth");

        // Failing after the veth, the ifb and the shaping exist: a host port clash.
        cni.del(&first).await.unwrap();
        let other = attachment_with_ports(&pod1, "f-holder", vec![port(18084)]);
        let wide = Env::new(false);
        let cni = wide.plugin();
        cni.add(&other).await.unwrap();
        let mut clash = attachment(&pod2, "f-clash");
        clash.capabilities.port_mappings = vec![port(18084)];
        clash.capabilities.bandwidth = Some(bandwidth(8_000_000, 800_000));
        let e = cni.add(&clash).await.unwrap_err().to_string();
        assert!(e.contains("f-clash") && e.contains("18084"), "{e}");
        assert_eq!(veths(&node).len(), 1);
        assert!(
            ifbs(&node).trim().is_empty(),
            "an ifb leaked: {}",
            ifbs(&node)
        );
        assert!(!has_link(&pod2, "eth0"));
        assert_eq!(wide.leases().len(), 1);
        cni.del(&other).await.unwrap();
        let left = host_port_elements(&node, cni.nft_table());
        assert!(left.is_empty(), "{left}");
        assert!(veths(&node).is_empty() && wide.leases().is_empty());
        assert_eq!(records(), 0);
    });
}

/// The highest interface index in `ns`.
fn max_ifindex(ns: &NetnsFixture) -> u32 {
    ns.sh("ip -o link show")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(':').next()?.trim().parse().ok())
        .max()
        .unwrap()
}

#[test]
fn pod_end_with_the_host_ends_index_is_wired() {
    // The kernel leaves a veth's IFLA_LINK (its peer's index) out of its answer when the peer's
    // index equals its own: the ADD must still find the pod end.
    if !prerequisites("pod_end_with_the_host_ends_index_is_wired") {
        return;
    }
    let env = Env::new(false);
    let [node, first, pod] = namespaces(["node", "first", "pod"]);
    in_ns(&node, || async {
        let cni = env.plugin();
        // The bridge and a first veth, so the node's indexes run ahead of the pod's.
        let a0 = attachment(&first, "same-0");
        cni.add(&a0).await.unwrap();
        let next_on_node = max_ifindex(&node) + 1;
        let mut n = 0;
        while max_ifindex(&pod) + 1 < next_on_node {
            pod.sh(&format!("ip link add nkpad{n} type bridge"))
                .unwrap();
            n += 1;
        }
        let a = attachment(&pod, "same-1");
        let r = cni.add(&a).await.unwrap();
        let host = BridgePlugin::host_ifname(&a.key());
        let host_index = node
            .sh(&format!("cat /sys/class/net/{host}/ifindex"))
            .unwrap();
        let pod_index = pod.sh("cat /sys/class/net/eth0/ifindex").unwrap();
        assert_eq!(
            host_index.trim(),
            pod_index.trim(),
            "the indexes were meant to match"
        );
        let ip = r.pod_ips()[0].to_string();
        let view = pod
            .sh("ip -o link show eth0; ip -o addr show dev eth0")
            .unwrap();
        assert!(
            view.contains("LOWER_UP") && view.contains(&format!("{ip}/24")),
            "{view}"
        );
        assert!(ping(&node, &ip), "node cannot ping {ip}");
        cni.check(&a).await.unwrap();
        cni.del(&a).await.unwrap();
        cni.del(&a0).await.unwrap();
        assert!(veths(&node).is_empty());
        assert!(env.leases().is_empty(), "{:?}", env.leases());
        cni.teardown_node(true).await.unwrap();
    });
}

#[test]
fn an_add_waiting_for_the_lease_lock_leaves_the_runtime_thread_free() {
    if !prerequisites("an_add_waiting_for_the_lease_lock_leaves_the_runtime_thread_free") {
        return;
    }
    let env = Env::new(false);
    let [node, pod] = namespaces(["node", "pod"]);
    // Another holder (a plugin binary's ADD, say) keeps the network's lease lock until told.
    let dir = env.config.lease_dir.join("nkt-native");
    std::fs::create_dir_all(&dir).unwrap();
    let lock = std::fs::File::create(dir.join("lock")).unwrap();
    let lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).unwrap();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        // Let go anyway after a while, so that a runtime thread blocked in flock shows as a
        // failure below instead of a hang.
        let told = released
            .recv_timeout(std::time::Duration::from_secs(60))
            .is_ok();
        drop(lock);
        told
    });
    node.run_in(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let cni = env.plugin();
        rt.block_on(async {
            let a = attachment(&pod, "c1");
            let add = cni.add(&a);
            tokio::pin!(add);
            // The one runtime thread keeps running the timer while the ADD waits for the lock.
            let mut ticks = 0;
            let mut timer = tokio::time::interval(std::time::Duration::from_millis(2));
            while ticks < 20 {
                tokio::select! {
                    r = &mut add => panic!("the ADD ended while the lock was held elsewhere: {r:?}"),
                    _ = timer.tick() => ticks += 1,
                }
            }
            release.send(()).unwrap();
            let r = add.await.unwrap();
            assert_eq!(r.pod_ips().len(), 1);
            assert_eq!(env.leases().len(), 1);
            cni.del(&a).await.unwrap();
            assert!(env.leases().is_empty());
        })
    })
    .unwrap();
    assert!(
        holder.join().unwrap(),
        "the holder had to let go on its own"
    );
}
