//! Root tests: traffic through the real kernel with the `IptablesRouter`, for both variants
//! (iptables-nft and iptables-legacy), each in its own `ServiceTopology` namespaces.
//!
//! The router runs on a thread inside the topology's `node` namespace, so its
//! `iptables-restore` children program that namespace only.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use node_core::{
    Endpoint, NodeInfo, Protocol, ProxyState, ServicePort, ServicePortName, ServiceRouter,
    SyncReport,
};
use node_proxy::{IptablesConfig, IptablesRouter, IptablesVariant};
use node_test_support::topology::{POD_CIDR, POD_CIDR6};
use node_test_support::{
    ServiceTopology, require_command, require_root, tcp_request, tcp_spread, udp_request,
};

const NODE: &str = "node-a";
const TO: Duration = Duration::from_secs(2);

fn ready(t: &ServiceTopology, pods: &[usize], v6: bool) -> Vec<Endpoint> {
    pods.iter()
        .map(|&i| {
            let ip = if v6 { t.pods[i].ip6 } else { t.pods[i].ip };
            let mut e = Endpoint::ready(ip, 8080);
            e.node_name = Some(if i < 2 { NODE } else { "node-b" }.to_string());
            e
        })
        .collect()
}

fn svc(ip: &str, protocol: Protocol, endpoints: Vec<Endpoint>) -> ServicePort {
    ServicePort {
        cluster_ips: vec![ip.parse().unwrap()],
        port: 80,
        protocol,
        endpoints,
        ..Default::default()
    }
}

fn state(services: Vec<(&str, ServicePort)>) -> ProxyState {
    ProxyState {
        services: services
            .into_iter()
            .map(|(n, sp)| {
                let name = ServicePortName::new("default", n, sp.protocol.as_lower());
                (name, sp)
            })
            .collect(),
        node: NodeInfo {
            name: NODE.into(),
            cluster_cidrs: vec![POD_CIDR.parse().unwrap(), POD_CIDR6.parse().unwrap()],
            ..Default::default()
        },
    }
}

/// The topology with `pods` echo pods, and a route for the service ranges into a veth whose peer
/// drops everything
/// (as a real node's default route): traffic to a service nobody handles vanishes instead of
/// failing fast with "no route", so a fast failure proves our REJECT.
fn topology(pods: usize) -> ServiceTopology {
    let mut t = ServiceTopology::new(pods).unwrap();
    t.serve_all(8080).unwrap();
    t.node
        .sh("ip link add nkbh0 type veth peer name nkbh1 && ip link set nkbh0 up && ip link set nkbh1 up \
             && ip neigh add 10.96.255.254 lladdr 02:00:00:00:00:01 dev nkbh0 nud permanent \
             && ip route add 10.96.0.0/16 via 10.96.255.254 dev nkbh0 onlink \
             && ip -6 neigh add fd00:96::ffff lladdr 02:00:00:00:00:01 dev nkbh0 nud permanent \
             && ip -6 route add fd00:96::/112 via fd00:96::ffff dev nkbh0 onlink")
        .unwrap();
    t
}

fn router(variant: IptablesVariant) -> IptablesRouter {
    IptablesRouter::new(IptablesConfig::default().with_variant(variant))
}

fn in_node<R: Send>(t: &ServiceTopology, f: impl FnOnce() -> R + Send) -> R {
    t.node.run_in(f).unwrap()
}

fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn sync(t: &ServiceTopology, r: &IptablesRouter, s: &ProxyState) -> SyncReport {
    in_node(t, || block(r.sync(s))).unwrap()
}

fn prereq(test: &str, variant: IptablesVariant) -> bool {
    require_root(test)
        && require_command(test, &variant.program(node_proxy::IpFamily::V4, "restore"))
        && require_command(test, &variant.program(node_proxy::IpFamily::V6, "restore"))
}

fn sa(ip: &str, port: u16) -> SocketAddr {
    (ip.parse::<IpAddr>().unwrap(), port).into()
}

fn udp_spread(t: &ServiceTopology, addr: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let key = match udp_request(&t.ext, addr, TO) {
            Ok(a) => a.pod,
            Err(_) => "<error>".to_string(),
        };
        *counts.entry(key).or_insert(0) += 1;
    }
    counts
}

fn pods_of(counts: &BTreeMap<String, usize>) -> Vec<&str> {
    counts.keys().map(|k| k.as_str()).collect()
}

fn cluster_ip_spreads_tcp_and_udp(variant: IptablesVariant) {
    let t = topology(3);
    let r = router(variant);
    let s = state(vec![
        (
            "web",
            svc("10.96.0.10", Protocol::Tcp, ready(&t, &[0, 1, 2], false)),
        ),
        (
            "dns",
            svc("10.96.0.10", Protocol::Udp, ready(&t, &[0, 1, 2], false)),
        ),
        (
            "web6",
            svc("fd00:96::10", Protocol::Tcp, ready(&t, &[0, 1, 2], true)),
        ),
    ]);
    let report = sync(&t, &r, &s);
    assert!(report.full);
    assert_eq!(report.endpoints, 9);
    let tcp = tcp_spread(&t.ext, sa("10.96.0.10", 80), 60, TO);
    assert_eq!(pods_of(&tcp), ["pod-0", "pod-1", "pod-2"], "{tcp:?}");
    let udp = udp_spread(&t, sa("10.96.0.10", 80), 40);
    assert_eq!(pods_of(&udp), ["pod-0", "pod-1", "pod-2"], "{udp:?}");
    let tcp6 = tcp_spread(&t.ext, sa("fd00:96::10", 80), 60, TO);
    assert_eq!(pods_of(&tcp6), ["pod-0", "pod-1", "pod-2"], "{tcp6:?}");
    // the client is outside the cluster CIDR: masqueraded to the node's address on the pod side
    let a = tcp_request(&t.ext, sa("10.96.0.10", 80), TO).unwrap();
    assert_eq!(a.peer.to_string(), "10.244.0.1");
    // a pod inside the cluster CIDR keeps its address
    let a = tcp_request(&t.pods[0].ns, sa("10.96.0.10", 80), TO).unwrap();
    if a.pod != "pod-0" {
        assert_eq!(a.peer, t.pods[0].ip);
    }
    // a second sync of the same state changes nothing
    let again = sync(&t, &r, &s);
    assert!(!again.full);
    assert_eq!(again.changes, 0);
}

fn node_port_and_external_ip(variant: IptablesVariant) {
    let t = topology(2);
    t.ext
        .sh("ip route add 192.168.60.0/24 via 192.168.50.1")
        .unwrap();
    let r = router(variant);
    let mut web = svc("10.96.0.10", Protocol::Tcp, ready(&t, &[0, 1], false));
    web.node_port = Some(30080);
    web.external_ips = vec!["192.168.60.10".parse().unwrap()];
    let mut dns = svc("10.96.0.11", Protocol::Udp, ready(&t, &[0, 1], false));
    dns.node_port = Some(30053);
    sync(&t, &r, &state(vec![("web", web), ("dns", dns)]));
    let np = tcp_spread(&t.ext, sa("192.168.50.1", 30080), 30, TO);
    assert_eq!(pods_of(&np), ["pod-0", "pod-1"], "{np:?}");
    let a = tcp_request(&t.ext, sa("192.168.50.1", 30080), TO).unwrap();
    assert_eq!(
        a.peer.to_string(),
        "10.244.0.1",
        "node port traffic is masqueraded"
    );
    let ext = tcp_spread(&t.ext, sa("192.168.60.10", 80), 30, TO);
    assert_eq!(pods_of(&ext), ["pod-0", "pod-1"], "{ext:?}");
    let a = udp_request(&t.ext, sa("192.168.50.1", 30053), TO).unwrap();
    assert!(a.pod.starts_with("pod-"));
    // a port nobody serves is not ours: refused by the node's own stack, not redirected
    assert!(tcp_request(&t.ext, sa("192.168.50.1", 30081), TO).is_err());
}

fn load_balancer_source_ranges(variant: IptablesVariant) {
    let t = topology(2);
    t.ext
        .sh("ip route add 192.168.60.0/24 via 192.168.50.1")
        .unwrap();
    let r = router(variant);
    let mut open = svc("10.96.0.10", Protocol::Tcp, ready(&t, &[0, 1], false));
    open.load_balancer_ips = vec!["192.168.60.20".parse().unwrap()];
    open.load_balancer_source_ranges = vec!["192.168.50.0/24".parse().unwrap()];
    let mut closed = open.clone();
    closed.cluster_ips = vec!["10.96.0.11".parse().unwrap()];
    closed.load_balancer_ips = vec!["192.168.60.21".parse().unwrap()];
    closed.load_balancer_source_ranges = vec!["10.0.0.0/8".parse().unwrap()];
    sync(&t, &r, &state(vec![("open", open), ("closed", closed)]));
    let a = tcp_request(&t.ext, sa("192.168.60.20", 80), TO).unwrap();
    assert!(a.pod.starts_with("pod-"));
    // the client is outside the allowed range: dropped (not answered, not refused)
    let err = tcp_request(&t.ext, sa("192.168.60.21", 80), Duration::from_millis(700)).unwrap_err();
    assert_ne!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    // the cluster IP of the same service is not restricted
    assert!(tcp_request(&t.ext, sa("10.96.0.11", 80), TO).is_ok());
}

fn affinity_pins_a_client(variant: IptablesVariant) {
    let t = topology(3);
    let r = router(variant);
    let mut web = svc("10.96.0.10", Protocol::Tcp, ready(&t, &[0, 1, 2], false));
    web.affinity_timeout = Some(Duration::from_secs(60));
    let plain = svc("10.96.0.11", Protocol::Tcp, ready(&t, &[0, 1, 2], false));
    sync(&t, &r, &state(vec![("web", web), ("plain", plain)]));
    let pinned = tcp_spread(&t.ext, sa("10.96.0.10", 80), 30, TO);
    assert_eq!(pinned.len(), 1, "{pinned:?}");
    assert!(!pinned.contains_key("<error>"));
    // the same client without affinity is spread (the pinning is the affinity's doing)
    let spread = tcp_spread(&t.ext, sa("10.96.0.11", 80), 30, TO);
    assert!(spread.len() > 1, "{spread:?}");
}

fn local_policies_use_local_endpoints(variant: IptablesVariant) {
    let t = topology(3);
    let r = router(variant);
    // pods 0 and 1 run on this node, pod 2 elsewhere
    let mut ext_local = svc("10.96.0.10", Protocol::Tcp, ready(&t, &[0, 1, 2], false));
    ext_local.node_port = Some(30080);
    ext_local.external_policy_local = true;
    let mut int_local = svc("10.96.0.11", Protocol::Tcp, ready(&t, &[0, 2], false));
    int_local.internal_policy_local = true;
    let mut none_local = svc("10.96.0.12", Protocol::Tcp, ready(&t, &[2], false));
    none_local.node_port = Some(30082);
    none_local.external_policy_local = true;
    sync(
        &t,
        &r,
        &state(vec![("a", ext_local), ("b", int_local), ("c", none_local)]),
    );
    let np = tcp_spread(&t.ext, sa("192.168.50.1", 30080), 40, TO);
    assert_eq!(pods_of(&np), ["pod-0", "pod-1"], "{np:?}");
    let a = tcp_request(&t.ext, sa("192.168.50.1", 30080), TO).unwrap();
    assert_eq!(
        a.peer.to_string(),
        "192.168.50.2",
        "externalTrafficPolicy Local keeps the client address"
    );
    // the cluster IP of the same service still uses every endpoint
    let cip = tcp_spread(&t.ext, sa("10.96.0.10", 80), 60, TO);
    assert_eq!(pods_of(&cip), ["pod-0", "pod-1", "pod-2"], "{cip:?}");
    let il = tcp_spread(&t.ext, sa("10.96.0.11", 80), 30, TO);
    assert_eq!(pods_of(&il), ["pod-0"], "{il:?}");
    // no local endpoint: the node port is rejected, the cluster IP works
    let start = Instant::now();
    let err = tcp_request(&t.ext, sa("192.168.50.1", 30082), TO).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    assert!(start.elapsed() < Duration::from_secs(1));
    assert_eq!(
        tcp_request(&t.ext, sa("10.96.0.12", 80), TO).unwrap().pod,
        "pod-2"
    );
}

fn terminating_endpoints_are_the_fallback(variant: IptablesVariant) {
    let t = topology(3);
    let r = router(variant);
    let mut eps = ready(&t, &[0, 1], false);
    for e in &mut eps {
        e.ready = false;
        e.terminating = true;
    }
    eps[1].serving = false;
    let mut s = state(vec![("web", svc("10.96.0.10", Protocol::Tcp, eps.clone()))]);
    sync(&t, &r, &s);
    let got = tcp_spread(&t.ext, sa("10.96.0.10", 80), 20, TO);
    assert_eq!(pods_of(&got), ["pod-0"], "{got:?}");
    // a ready endpoint appears: terminating ones stop taking new connections
    eps.extend(ready(&t, &[2], false));
    s.services.values_mut().next().unwrap().endpoints = eps;
    assert!(!sync(&t, &r, &s).full);
    let got = tcp_spread(&t.ext, sa("10.96.0.10", 80), 20, TO);
    assert_eq!(pods_of(&got), ["pod-2"], "{got:?}");
}

fn no_endpoints_rejects_fast(variant: IptablesVariant) {
    let t = topology(1);
    let r = router(variant);
    let mut web = svc("10.96.0.10", Protocol::Tcp, vec![]);
    web.node_port = Some(30080);
    let dns = svc("10.96.0.11", Protocol::Udp, vec![]);
    let web6 = svc("fd00:96::10", Protocol::Tcp, vec![]);
    sync(
        &t,
        &r,
        &state(vec![("web", web), ("dns", dns), ("web6", web6)]),
    );
    for (ns, addr) in [
        (&t.ext, sa("10.96.0.10", 80)),
        (&t.pods[0].ns, sa("10.96.0.10", 80)),
        (&t.node, sa("10.96.0.10", 80)),
        (&t.ext, sa("192.168.50.1", 30080)),
        (&t.ext, sa("fd00:96::10", 80)),
    ] {
        let start = Instant::now();
        let err = tcp_request(ns, addr, Duration::from_secs(5)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{addr}: {err}");
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{addr}: {:?}",
            start.elapsed()
        );
    }
    let start = Instant::now();
    let err = udp_request(&t.ext, sa("10.96.0.11", 80), Duration::from_secs(5)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    assert!(start.elapsed() < Duration::from_secs(1));
    // without the router the same address is a black hole (the rejection was ours)
    in_node(&t, || block(r.cleanup())).unwrap();
    let err = tcp_request(&t.ext, sa("10.96.0.10", 80), Duration::from_millis(800)).unwrap_err();
    assert_ne!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
}

fn hairpin_reaches_itself(variant: IptablesVariant) {
    let t = topology(2);
    let r = router(variant);
    sync(
        &t,
        &r,
        &state(vec![(
            "self",
            svc("10.96.0.10", Protocol::Tcp, ready(&t, &[0], false)),
        )]),
    );
    let a = tcp_request(&t.pods[0].ns, sa("10.96.0.10", 80), TO).unwrap();
    assert_eq!(a.pod, "pod-0");
    assert_ne!(a.peer, t.pods[0].ip, "hairpin traffic is masqueraded");
    assert_eq!(a.peer.to_string(), "10.244.0.1");
    // another pod reaching it is not masqueraded
    let a = tcp_request(&t.pods[1].ns, sa("10.96.0.10", 80), TO).unwrap();
    assert_eq!(a.peer, t.pods[1].ip);
}

fn removed_endpoint_gets_no_new_connections(variant: IptablesVariant) {
    let t = topology(3);
    let r = router(variant);
    let mut s = state(vec![(
        "web",
        svc("10.96.0.10", Protocol::Tcp, ready(&t, &[0, 1, 2], false)),
    )]);
    sync(&t, &r, &s);
    let before = tcp_spread(&t.ext, sa("10.96.0.10", 80), 40, TO);
    assert!(before.contains_key("pod-2"), "{before:?}");
    s.services.values_mut().next().unwrap().endpoints.pop();
    let report = sync(&t, &r, &s);
    assert!(!report.full);
    assert!(report.changes > 0 && report.changes < 10, "{report:?}");
    let after = tcp_spread(&t.ext, sa("10.96.0.10", 80), 40, TO);
    assert_eq!(pods_of(&after), ["pod-0", "pod-1"], "{after:?}");
    // the service removed entirely: its address is no longer handled
    s.services.clear();
    sync(&t, &r, &s);
    assert!(tcp_request(&t.ext, sa("10.96.0.10", 80), Duration::from_millis(500)).is_err());
}

fn save(t: &ServiceTopology, variant: IptablesVariant) -> String {
    let v4 = variant.program(node_proxy::IpFamily::V4, "save");
    let v6 = variant.program(node_proxy::IpFamily::V6, "save");
    t.node.sh(&format!("{v4}; {v6}")).unwrap()
}

fn ours(save: &str) -> Vec<String> {
    save.lines()
        .filter(|l| l.starts_with(['-', ':']) && !l.starts_with(":PREROUTING"))
        .filter(|l| l.contains("NODEKIT") || l.contains("nodekit"))
        .map(|l| l.split(" [").next().unwrap().to_string())
        .collect()
}

fn cleanup_leaves_nothing_of_ours(variant: IptablesVariant) {
    let t = topology(2);
    let v4 = variant.program(node_proxy::IpFamily::V4, "");
    // somebody else's chains and rules, which must survive
    t.node
        .sh(&format!(
            "{v4} -t nat -N KEEP-ME && {v4} -t nat -A KEEP-ME -j RETURN && {v4} -t nat -A PREROUTING -j KEEP-ME \
             && {v4} -A INPUT -p tcp --dport 9999 -j ACCEPT"
        ))
        .unwrap();
    let r = router(variant);
    let mut web = svc("10.96.0.10", Protocol::Tcp, ready(&t, &[0, 1], false));
    web.node_port = Some(30080);
    let none = svc("10.96.0.11", Protocol::Udp, vec![]);
    let web6 = svc("fd00:96::10", Protocol::Tcp, ready(&t, &[0], true));
    let s = state(vec![("web", web), ("none", none), ("web6", web6)]);
    sync(&t, &r, &s);
    let programmed = ours(&save(&t, variant));
    assert!(
        programmed.iter().any(|l| l.starts_with(":NODEKIT-SEP-")),
        "{programmed:?}"
    );
    assert!(
        programmed.iter().any(|l| l.starts_with("-A PREROUTING")),
        "{programmed:?}"
    );
    // a restarted router's full sync finds its hooks in place and does not add them twice
    let restarted = router(variant);
    assert!(sync(&t, &restarted, &s).full);
    let saved = save(&t, variant);
    let mut hooks: BTreeMap<&str, usize> = BTreeMap::new();
    for l in saved.lines() {
        if l.starts_with("-A ") && !l.starts_with("-A NODEKIT-") && l.contains("-j NODEKIT-") {
            *hooks.entry(l).or_default() += 1;
        }
    }
    // nat PREROUTING/OUTPUT/POSTROUTING, filter INPUT/FORWARD x2/OUTPUT: 7 distinct jumps, each
    // once per family
    assert_eq!(hooks.len(), 7, "{saved}");
    assert!(hooks.values().all(|n| *n == 2), "{hooks:?}");
    // a second router (a restart) finds and removes chains it did not program itself
    let fresh = router(variant);
    in_node(&t, || block(fresh.cleanup())).unwrap();
    let after = save(&t, variant);
    assert_eq!(ours(&after), Vec::<String>::new(), "{after}");
    assert!(after.contains("-A KEEP-ME -j RETURN"), "{after}");
    assert!(after.contains("-A PREROUTING -j KEEP-ME"), "{after}");
    assert!(after.contains("--dport 9999 -j ACCEPT"), "{after}");
    // cleanup twice is fine
    in_node(&t, || block(fresh.cleanup())).unwrap();
}

/// Partial syncs leave the kernel exactly as a full sync of the same state would.
fn partial_syncs_match_a_full_sync(variant: IptablesVariant) {
    let t = topology(3);
    let r = router(variant);
    let mut s = state(vec![]);
    let mut steps = 0;
    for i in 0..6u8 {
        let mut sp = svc(
            &format!("10.96.0.{}", 10 + i),
            Protocol::Tcp,
            ready(&t, &[0, 1, 2], false),
        );
        if i % 2 == 0 {
            sp.node_port = Some(30000 + u16::from(i));
        }
        if i == 3 {
            sp.affinity_timeout = Some(Duration::from_secs(30));
        }
        s.services
            .insert(ServicePortName::new("default", format!("s{i}"), ""), sp);
    }
    sync(&t, &r, &s);
    let names: Vec<ServicePortName> = s.services.keys().cloned().collect();
    for (k, name) in names.iter().enumerate() {
        let sp = s.services.get_mut(name).unwrap();
        match k % 3 {
            0 => {
                sp.endpoints.remove(1);
            }
            1 => sp.endpoints.clear(),
            _ => sp.external_policy_local = true,
        }
        assert!(!sync(&t, &r, &s).full);
        steps += 1;
    }
    s.services.remove(&names[2]);
    sync(&t, &r, &s);
    let partial = ours(&save(&t, variant));
    in_node(&t, || block(r.cleanup())).unwrap();
    let full = router(variant);
    assert!(sync(&t, &full, &s).full);
    let fresh = ours(&save(&t, variant));
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(sorted(partial), sorted(fresh));
    assert_eq!(steps, 6);
}

macro_rules! variant_tests {
    ($m:ident, $v:expr) => {
        mod $m {
            use super::*;
            fn go(test: &str, f: fn(IptablesVariant)) {
                if prereq(test, $v) {
                    f($v)
                }
            }
            #[test]
            fn cluster_ip_spreads_tcp_and_udp() {
                go(
                    "cluster_ip_spreads_tcp_and_udp",
                    super::cluster_ip_spreads_tcp_and_udp,
                )
            }
            #[test]
            fn node_port_and_external_ip() {
                go(
                    "node_port_and_external_ip",
                    super::node_port_and_external_ip,
                )
            }
            #[test]
            fn load_balancer_source_ranges() {
                go(
                    "load_balancer_source_ranges",
                    super::load_balancer_source_ranges,
                )
            }
            #[test]
            fn affinity_pins_a_client() {
                go("affinity_pins_a_client", super::affinity_pins_a_client)
            }
            #[test]
            fn local_policies_use_local_endpoints() {
                go(
                    "local_policies_use_local_endpoints",
                    super::local_policies_use_local_endpoints,
                )
            }
            #[test]
            fn terminating_endpoints_are_the_fallback() {
                go(
                    "terminating_endpoints_are_the_fallback",
                    super::terminating_endpoints_are_the_fallback,
                )
            }
            #[test]
            fn no_endpoints_rejects_fast() {
                go(
                    "no_endpoints_rejects_fast",
                    super::no_endpoints_rejects_fast,
                )
            }
            #[test]
            fn hairpin_reaches_itself() {
                go("hairpin_reaches_itself", super::hairpin_reaches_itself)
            }
            #[test]
            fn removed_endpoint_gets_no_new_connections() {
                go(
                    "removed_endpoint_gets_no_new_connections",
                    super::removed_endpoint_gets_no_new_connections,
                )
            }
            #[test]
            fn cleanup_leaves_nothing_of_ours() {
                go(
                    "cleanup_leaves_nothing_of_ours",
                    super::cleanup_leaves_nothing_of_ours,
                )
            }
            #[test]
            fn partial_syncs_match_a_full_sync() {
                go(
                    "partial_syncs_match_a_full_sync",
                    super::partial_syncs_match_a_full_sync,
                )
            }
        }
    };
}

variant_tests!(nft, IptablesVariant::Nft);
variant_tests!(legacy, IptablesVariant::Legacy);
