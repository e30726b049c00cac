//! Root tests: traffic through `NftablesRouter` in namespaces each test creates
//! (node-test-support's `ServiceTopology`). They need root and the `nft` binary.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::scenarios::{self, Harness, MakeRouter, cluster_ip, ep, state};
use node_core::{Protocol, ServiceRouter};
use node_proxy::{NftablesConfig, NftablesRouter};
use node_test_support::{require_command, require_root};

fn make() -> Arc<dyn ServiceRouter> {
    Arc::new(NftablesRouter::new().expect("nftables router"))
}

fn ready(test: &str) -> bool {
    require_root(test) && require_command(test, "nft")
}

macro_rules! scenario {
    ($name:ident) => {
        #[test]
        fn $name() {
            if !ready(stringify!($name)) {
                return;
            }
            scenarios::$name(make as MakeRouter);
        }
    };
}

scenario!(cluster_ip_spreads_tcp_and_udp);
scenario!(node_port);
scenario!(external_ip);
scenario!(affinity_pins_a_client);

#[test]
fn affinity_is_remembered_with_its_timeout() {
    if !ready("affinity_is_remembered_with_its_timeout") {
        return;
    }
    let h = Harness::new(2, make);
    let mut sp = cluster_ip(
        "10.96.0.40",
        80,
        Protocol::Tcp,
        vec![ep(h.pod_ip(0)), ep(h.pod_ip(1))],
    );
    sp.affinity_timeout = Some(Duration::from_secs(77));
    h.sync(&state(vec![("aff", sp)]));
    let a = node_test_support::tcp_request(
        &h.t.ext,
        "10.96.0.40:80".parse().unwrap(),
        Duration::from_secs(2),
    )
    .unwrap();
    let sets =
        h.t.node
            .sh("nft list set inet nodekit affb4_0; nft list set inet nodekit affb4_1")
            .unwrap();
    let client = "192.168.50.2 . 10.96.0.40 . tcp . 80 timeout 1m17s";
    assert_eq!(
        sets.matches(client).count(),
        1,
        "the client is remembered once, with the service's timeout: {sets}\n(answer {a:?})"
    );
}
scenario!(local_policy_uses_local_endpoints);
scenario!(terminating_fallback);
scenario!(no_endpoints_rejects_fast);
scenario!(hairpin);
scenario!(removed_endpoint_stops_receiving);
scenario!(ipv6_cluster_ip);

#[test]
fn cleanup_removes_our_table_only_and_dump_loads() {
    if !ready("cleanup_removes_our_table_only_and_dump_loads") {
        return;
    }
    let h = Harness::new(2, make);
    h.t.node
        .sh("nft add table ip foreign && nft add chain ip foreign c && nft add rule ip foreign c counter")
        .unwrap();
    let mut sp = cluster_ip(
        "10.96.0.30",
        80,
        Protocol::Tcp,
        vec![ep(h.pod_ip(0)), ep(h.pod_ip(1))],
    );
    sp.node_port = Some(30090);
    sp.affinity_timeout = Some(Duration::from_secs(30));
    let s = state(vec![
        ("a", sp),
        (
            "b",
            cluster_ip("fd00:96::30", 53, Protocol::Udp, vec![ep(h.pod_ip6(0))]),
        ),
    ]);
    h.sync(&s);
    let listed = h.t.node.sh("nft list table inet nodekit").unwrap();
    assert!(listed.contains("10.96.0.30 . tcp . 80"), "{listed}");
    // the dump is valid nft input
    let dump = node_proxy::nftables::render_ruleset("nodekit", &s);
    let path = std::env::temp_dir().join(format!("nodekit-dump-{}.nft", std::process::id()));
    std::fs::write(&path, &dump).unwrap();
    let check = h.t.node.sh(&format!("nft -c -f {}", path.display()));
    let _ = std::fs::remove_file(&path);
    check.unwrap_or_else(|e| panic!("dump does not load: {e}\n{dump}"));
    // a second identical sync changes nothing
    let r = h.sync(&s);
    assert!(!r.full);
    assert_eq!(r.changes, 0);
    h.cleanup();
    let all = h.t.node.sh("nft list ruleset").unwrap();
    assert!(!all.contains("nodekit"), "our table is gone: {all}");
    assert!(
        all.contains("table ip foreign"),
        "other tables are never touched: {all}"
    );
    // cleanup of nothing is fine, and a sync after cleanup rewrites everything
    h.cleanup();
    assert!(h.sync(&s).full);
}

/// Every set and map of our table, elements sorted (from `nft -j`).
fn elements(
    ns: &node_test_support::NetnsFixture,
) -> std::collections::BTreeMap<String, Vec<String>> {
    let out = ns.sh("nft -j list table inet nodekit").unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut sets = std::collections::BTreeMap::new();
    for item in v["nftables"].as_array().unwrap() {
        for kind in ["set", "map"] {
            if let Some(s) = item.get(kind) {
                let mut elems: Vec<String> = s
                    .get("elem")
                    .and_then(|e| e.as_array())
                    .map(|a| a.iter().map(|e| e.to_string()).collect())
                    .unwrap_or_default();
                elems.sort();
                sets.insert(s["name"].as_str().unwrap().to_string(), elems);
            }
        }
    }
    sets
}

#[test]
fn partial_syncs_end_where_a_full_rewrite_does() {
    if !ready("partial_syncs_end_where_a_full_rewrite_does") {
        return;
    }
    use node_test_support::proxy_state::{
        synthetic, with_one_endpoint_changed, with_one_service_added,
    };
    let ns = node_test_support::NetnsFixture::new("diff").unwrap();
    let router = Arc::new(ns.run_in(NftablesRouter::new).unwrap().unwrap());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let s0 = synthetic(40, 3);
    assert!(rt.block_on(router.sync(&s0)).unwrap().full);
    // remove one service, add one, change an endpoint, shrink one (K 3 -> 2), share an
    // endpoint address between two services (hairpin element counted twice), add a node port
    let mut s1 = with_one_service_added(&with_one_endpoint_changed(&s0), 3);
    let names: Vec<_> = s1.services.keys().cloned().collect();
    s1.services.remove(&names[1]);
    s1.services.get_mut(&names[2]).unwrap().endpoints.pop();
    let shared = s1.services[&names[3]].endpoints[0].clone();
    s1.services.get_mut(&names[4]).unwrap().endpoints[0].ip = shared.ip;
    s1.services.get_mut(&names[5]).unwrap().node_port = Some(31000);
    let r = rt.block_on(router.sync(&s1)).unwrap();
    assert!(!r.full && r.changes > 0, "{r:?}");
    // and back part of the way: the shared address loses one of its services
    let mut s2 = s1.clone();
    s2.services.remove(&names[4]);
    assert!(!rt.block_on(router.sync(&s2)).unwrap().full);
    let partial = elements(&ns);
    router.force_full_sync();
    assert!(rt.block_on(router.sync(&s2)).unwrap().full);
    let full = elements(&ns);
    assert_eq!(
        partial, full,
        "incremental syncs must program what a full rewrite does"
    );
    assert!(full["hairpin4"].len() > 100);
    assert_eq!(
        router.programmed_elements(),
        full.values().map(Vec::len).sum::<usize>()
    );
}

#[test]
fn manifests_to_traffic_through_the_proxy_assembly() {
    if !ready("manifests_to_traffic_through_the_proxy_assembly") {
        return;
    }
    let h = Harness::new(2, make);
    let dir = tempfile::tempdir().unwrap();
    let (p0, p1) = (h.pod_ip(0), h.pod_ip(1));
    std::fs::write(
        dir.path().join("web.yaml"),
        format!(
            r#"apiVersion: v1
kind: Service
metadata: {{name: web, namespace: shop}}
spec:
  type: NodePort
  clusterIP: 10.96.0.50
  ports: [{{name: http, port: 80, targetPort: http, nodePort: 30050}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-a, namespace: shop, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{name: http, port: 8080}}]
endpoints:
- addresses: ["{p0}"]
- addresses: ["{p1}"]
  conditions: {{ready: false}}
---
apiVersion: v1
kind: Service
metadata: {{name: broken, namespace: shop}}
spec: {{clusterIP: 10.96.0.51, ports: [{{port: 80, protocol: ICMP}}]}}
"#
        ),
    )
    .unwrap();
    let router = h.router.clone();
    let path = dir.path().to_path_buf();
    h.t.node
        .run_in(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let mut proxy = node_proxy::Proxy::builder()
                .router(router)
                .node(node_core::NodeInfo {
                    name: scenarios::NODE.into(),
                    cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
                    ..Default::default()
                })
                .build()
                .unwrap();
            rt.block_on(proxy.run(
                &node_proxy::ManifestDir::new(path).once(),
                node_proxy::CancellationToken::new(),
            ))
            .unwrap();
            assert_eq!(
                proxy.metrics().invalid_objects.get(),
                1,
                "the ICMP service is reported"
            );
            assert_eq!(proxy.metrics().service_ports.get(), 1);
        })
        .unwrap();
    // the named port resolved to 8080 through the slice; the not-ready pod gets nothing
    let to = Duration::from_secs(2);
    let counts = node_test_support::tcp_spread(&h.t.ext, "10.96.0.50:80".parse().unwrap(), 20, to);
    assert_eq!(counts.keys().collect::<Vec<_>>(), ["pod-0"], "{counts:?}");
    let counts =
        node_test_support::tcp_spread(&h.t.ext, "192.168.50.1:30050".parse().unwrap(), 10, to);
    assert_eq!(counts.keys().collect::<Vec<_>>(), ["pod-0"], "{counts:?}");
}

#[test]
fn node_ports_answer_only_on_node_port_addresses_when_given() {
    if !ready("node_ports_answer_only_on_node_port_addresses_when_given") {
        return;
    }
    let h = Harness::new(1, make);
    let mut sp = cluster_ip("10.96.0.60", 80, Protocol::Tcp, vec![ep(h.pod_ip(0))]);
    sp.node_port = Some(30060);
    let mut s = state(vec![("np", sp)]);
    s.node.node_port_addresses = vec!["10.244.0.1".parse().unwrap()];
    h.sync(&s);
    let to = Duration::from_secs(2);
    let a =
        node_test_support::tcp_request(&h.t.ext, "10.244.0.1:30060".parse().unwrap(), to).unwrap();
    assert_eq!(a.pod, "pod-0");
    let err = node_test_support::tcp_request(&h.t.ext, "192.168.50.1:30060".parse().unwrap(), to)
        .expect_err("not a node-port address");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    // back to every local address: a full rewrite (the rules change), and it answers again
    s.node.node_port_addresses.clear();
    assert!(h.sync(&s).full);
    let a = node_test_support::tcp_request(&h.t.ext, "192.168.50.1:30060".parse().unwrap(), to)
        .unwrap();
    assert_eq!(a.pod, "pod-0");
}

/// One UDP client (one source port) sticks to the endpoint of its first datagram through its
/// conntrack entry; that endpoint is removed. Returns (first answer, answer after removal).
fn remove_the_used_udp_endpoint(cleanup: bool) -> (String, std::io::Result<String>) {
    use std::net::{SocketAddr, UdpSocket};
    let make: MakeRouter = if cleanup { make } else { make_without_cleanup };
    let mut h = Harness::new(2, make);
    let ips = [h.pod_ip(0), h.pod_ip(1)];
    let svc = |pods: &[usize]| {
        state(vec![(
            "dns",
            cluster_ip(
                "10.96.0.53",
                53,
                Protocol::Udp,
                pods.iter().map(|&i| ep(ips[i])).collect(),
            ),
        )])
    };
    h.sync(&svc(&[0, 1]));
    // One socket, so one source port and one conntrack entry for every datagram.
    let sock: UdpSocket =
        h.t.ext
            .run_in(|| UdpSocket::bind("0.0.0.0:0"))
            .unwrap()
            .unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let vip: SocketAddr = "10.96.0.53:53".parse().unwrap();
    let ask = |sock: &UdpSocket| -> std::io::Result<String> {
        let mut buf = [0u8; 256];
        sock.send_to(b"hello\n", vip)?;
        let (n, _) = sock.recv_from(&mut buf)?;
        let text = String::from_utf8_lossy(&buf[..n]);
        Ok(text.split(' ').next().unwrap_or("").trim().to_string())
    };
    // The first datagram may be lost while the echo servers start or neighbours resolve.
    let first = (0..5)
        .find_map(|_| ask(&sock).ok())
        .expect("the service answers");
    for _ in 0..3 {
        assert_eq!(
            ask(&sock).unwrap(),
            first,
            "one flow sticks to one endpoint"
        );
    }
    let used = if first == "pod-0" { 0 } else { 1 };
    h.t.stop_serving(used);
    let r = h.sync(&svc(&[1 - used]));
    assert!(!r.full, "an endpoint removal is a partial sync");
    (first, ask(&sock))
}

fn make_without_cleanup() -> Arc<dyn ServiceRouter> {
    Arc::new(
        NftablesRouter::with_config(NftablesConfig {
            conntrack_cleanup: false,
            ..Default::default()
        })
        .expect("nftables router"),
    )
}

#[test]
fn removed_udp_endpoint_conntrack_entries_are_deleted() {
    let test = "removed_udp_endpoint_conntrack_entries_are_deleted";
    if !ready(test) || !require_command(test, "conntrack") {
        return;
    }
    // Without cleanup the stale entry keeps sending the client to the removed endpoint.
    let (first, after) = remove_the_used_udp_endpoint(false);
    if let Ok(pod) = after {
        panic!("without cleanup the client still reached {pod} (first {first})");
    }
    // With cleanup the next datagram reaches the remaining endpoint.
    let (first, after) = remove_the_used_udp_endpoint(true);
    let after = after.expect("the next datagram is answered");
    assert_ne!(after, first);
    assert!(after.starts_with("pod-"), "{after}");
}

#[test]
fn unprogrammable_service_ports_are_skipped_by_name_and_the_others_work() {
    let test = "unprogrammable_service_ports_are_skipped_by_name_and_the_others_work";
    if !ready(test) {
        return;
    }
    let h = Harness::new(1, make);
    let good = cluster_ip("10.96.0.60", 80, Protocol::Tcp, vec![ep(h.pod_ip(0))]);
    let mut bad = cluster_ip("10.96.0.61", 80, Protocol::Tcp, vec![ep(h.pod_ip(0))]);
    bad.endpoints[0].port = 0;
    let mut no_ip = good.clone();
    no_ip.cluster_ips.clear();
    let r = h.sync(&state(vec![
        ("good", good.clone()),
        ("bad", bad),
        ("noip", no_ip),
    ]));
    let skipped: Vec<String> = r.skipped.iter().map(|(_, why)| why.clone()).collect();
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    assert!(
        skipped
            .iter()
            .any(|w| w.contains("default/bad") && w.contains("port 0")),
        "{skipped:?}"
    );
    assert!(
        skipped
            .iter()
            .any(|w| w.contains("default/noip") && w.contains("no cluster")),
        "{skipped:?}"
    );
    let a = node_test_support::topology::tcp_request(
        &h.t.ext,
        "10.96.0.60:80".parse().unwrap(),
        Duration::from_secs(2),
    )
    .expect("the valid service answers");
    assert_eq!(a.pod, "pod-0");
    // Fixed by a partial sync: nothing is skipped any more.
    let r = h.sync(&state(vec![("good", good)]));
    assert!(!r.full && r.skipped.is_empty(), "{r:?}");
}

#[test]
fn load_balancer_source_ranges_admit_only_their_sources() {
    let test = "load_balancer_source_ranges_admit_only_their_sources";
    if !ready(test) {
        return;
    }
    use node_test_support::topology::tcp_request;
    let h = Harness::new(2, make);
    // The outside client (192.168.50.2) reaches load-balancer IPs through the node.
    h.t.ext
        .sh("ip route add 192.168.60.0/24 via 192.168.50.1")
        .unwrap();
    let eps = vec![ep(h.pod_ip(0)), ep(h.pod_ip(1))];
    let mut open = cluster_ip("10.96.0.70", 80, Protocol::Tcp, eps);
    open.load_balancer_ips = vec!["192.168.60.20".parse().unwrap()];
    open.load_balancer_source_ranges = vec!["192.168.50.0/24".parse().unwrap()];
    let mut closed = open.clone();
    closed.cluster_ips = vec!["10.96.0.71".parse().unwrap()];
    closed.load_balancer_ips = vec!["192.168.60.21".parse().unwrap()];
    closed.load_balancer_source_ranges = vec!["10.0.0.0/8".parse().unwrap()];
    let to = Duration::from_secs(2);
    h.sync(&state(vec![
        ("open", open.clone()),
        ("closed", closed.clone()),
    ]));
    let a = tcp_request(&h.t.ext, "192.168.60.20:80".parse().unwrap(), to)
        .expect("an allowed source is answered");
    assert!(a.pod.starts_with("pod-"));
    let e = tcp_request(
        &h.t.ext,
        "192.168.60.21:80".parse().unwrap(),
        Duration::from_millis(700),
    )
    .expect_err("a source outside the ranges is dropped");
    assert_ne!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "dropped, not refused: {e}"
    );
    // The cluster IP of the same service is not restricted.
    assert!(tcp_request(&h.t.ext, "10.96.0.71:80".parse().unwrap(), to).is_ok());
    // Opening the range in a partial sync lets the client in; closing it shuts it out again.
    let mut reopened = closed.clone();
    reopened
        .load_balancer_source_ranges
        .push("192.168.50.2/32".parse().unwrap());
    let r = h.sync(&state(vec![("open", open.clone()), ("closed", reopened)]));
    assert!(!r.full);
    assert!(tcp_request(&h.t.ext, "192.168.60.21:80".parse().unwrap(), to).is_ok());
    let r = h.sync(&state(vec![("open", open), ("closed", closed)]));
    assert!(!r.full);
    assert!(
        tcp_request(
            &h.t.ext,
            "192.168.60.21:80".parse().unwrap(),
            Duration::from_millis(700)
        )
        .is_err()
    );
}
