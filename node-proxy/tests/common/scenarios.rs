//! Traffic scenarios through the real kernel, generic over the router: each builds its own
//! [`ServiceTopology`], constructs the router inside the `node` namespace with `make`, syncs a
//! state and checks what the echo servers answer.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use node_core::{
    Endpoint, NodeInfo, Protocol, ProxyState, ServicePort, ServicePortName, ServiceRouter,
    SyncReport,
};
use node_test_support::ServiceTopology;
use node_test_support::topology::{
    self, NODE_IP, POD_CIDR, POD_CIDR6, tcp_request, tcp_spread, udp_request,
};

/// Builds a router; called on a thread inside the node's namespace.
pub type MakeRouter = fn() -> Arc<dyn ServiceRouter>;

/// The node's name in the scenarios.
pub const NODE: &str = "node-a";
const PORT: u16 = 8080;
const TO: Duration = Duration::from_secs(2);

/// A topology with a router in its node namespace.
pub struct Harness {
    pub t: ServiceTopology,
    pub router: Arc<dyn ServiceRouter>,
}

impl Harness {
    pub fn new(pods: usize, make: MakeRouter) -> Self {
        let mut t = ServiceTopology::new(pods).expect("topology");
        t.serve_all(PORT).expect("echo servers");
        let router = t.node.run_in(make).expect("router in node netns");
        Self { t, router }
    }

    /// Run `f` with the router on a thread in the node namespace, on its own runtime.
    fn on_node<R: Send>(
        &self,
        f: impl FnOnce(&tokio::runtime::Runtime, Arc<dyn ServiceRouter>) -> R + Send,
    ) -> R {
        let r = self.router.clone();
        self.t
            .node
            .run_in(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                f(&rt, r)
            })
            .unwrap()
    }

    pub fn sync(&self, state: &ProxyState) -> SyncReport {
        self.on_node(|rt, r| rt.block_on(r.sync(state)))
            .expect("sync")
    }

    pub fn cleanup(&self) {
        self.on_node(|rt, r| rt.block_on(r.cleanup()))
            .expect("cleanup")
    }

    pub fn pod_ip(&self, i: usize) -> IpAddr {
        self.t.pods[i].ip
    }
    pub fn pod_ip6(&self, i: usize) -> IpAddr {
        self.t.pods[i].ip6
    }
}

pub fn ep(ip: IpAddr) -> Endpoint {
    Endpoint {
        node_name: Some("elsewhere".into()),
        ..Endpoint::ready(ip, PORT)
    }
}

pub fn state(ports: Vec<(&str, ServicePort)>) -> ProxyState {
    ProxyState {
        services: ports
            .into_iter()
            .map(|(n, p)| (ServicePortName::new("default", n, ""), p))
            .collect(),
        node: NodeInfo {
            name: NODE.into(),
            cluster_cidrs: vec![POD_CIDR.parse().unwrap(), POD_CIDR6.parse().unwrap()],
            ..Default::default()
        },
    }
}

pub fn cluster_ip(
    ip: &str,
    port: u16,
    protocol: Protocol,
    endpoints: Vec<Endpoint>,
) -> ServicePort {
    ServicePort {
        cluster_ips: vec![ip.parse().unwrap()],
        port,
        protocol,
        endpoints,
        ..Default::default()
    }
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

fn all_pods(h: &Harness, n: usize) -> Vec<String> {
    h.t.pods[..n].iter().map(|p| p.name.clone()).collect()
}

fn assert_spread(counts: &BTreeMap<String, usize>, pods: &[String]) {
    assert!(
        !counts.contains_key("<error>"),
        "failed requests: {counts:?}"
    );
    let got: Vec<&String> = counts.keys().collect();
    let want: Vec<&String> = pods.iter().collect();
    assert_eq!(got, want, "every pod answers, none other: {counts:?}");
}

/// ClusterIP over TCP and UDP: 60 requests from outside spread over all 3 ready pods, and the
/// pods see the node's address (traffic from outside the cluster CIDR is masqueraded).
pub fn cluster_ip_spreads_tcp_and_udp(make: MakeRouter) {
    let h = Harness::new(3, make);
    let eps: Vec<Endpoint> = (0..3).map(|i| ep(h.pod_ip(i))).collect();
    let s = state(vec![
        (
            "web",
            cluster_ip("10.96.0.10", 80, Protocol::Tcp, eps.clone()),
        ),
        ("dns", cluster_ip("10.96.0.10", 53, Protocol::Udp, eps)),
    ]);
    let r = h.sync(&s);
    assert!(r.full);
    assert_eq!(r.service_ports, 2);
    let counts = tcp_spread(&h.t.ext, addr("10.96.0.10", 80), 60, TO);
    assert_spread(&counts, &all_pods(&h, 3));
    let mut udp = BTreeMap::new();
    for _ in 0..60 {
        let a = udp_request(&h.t.ext, addr("10.96.0.10", 53), TO).expect("udp answer");
        *udp.entry(a.pod).or_insert(0) += 1;
    }
    assert_spread(&udp, &all_pods(&h, 3));
    let a = tcp_request(&h.t.ext, addr("10.96.0.10", 80), TO).unwrap();
    assert_eq!(
        a.peer.to_string(),
        "10.244.0.1",
        "masqueraded to the node's address"
    );
    // from a pod (inside the cluster CIDR): no masquerade
    let a = tcp_request(&h.t.pods[1].ns, addr("10.96.0.10", 80), TO).unwrap();
    if a.pod != "pod-1" {
        assert_eq!(a.peer, h.pod_ip(1), "pod traffic keeps its source");
    }
}

/// NodePort from outside, on the node's address.
pub fn node_port(make: MakeRouter) {
    let h = Harness::new(2, make);
    let mut sp = cluster_ip(
        "10.96.0.11",
        80,
        Protocol::Tcp,
        (0..2).map(|i| ep(h.pod_ip(i))).collect(),
    );
    sp.node_port = Some(30080);
    h.sync(&state(vec![("np", sp)]));
    let counts = tcp_spread(&h.t.ext, addr(NODE_IP, 30080), 30, TO);
    assert_spread(&counts, &all_pods(&h, 2));
    let a = tcp_request(&h.t.ext, addr(NODE_IP, 30080), TO).unwrap();
    assert_eq!(
        a.peer.to_string(),
        "10.244.0.1",
        "external traffic with policy Cluster is masqueraded"
    );
}

/// externalIPs answer like the ClusterIP.
pub fn external_ip(make: MakeRouter) {
    let h = Harness::new(2, make);
    let mut sp = cluster_ip(
        "10.96.0.12",
        80,
        Protocol::Tcp,
        (0..2).map(|i| ep(h.pod_ip(i))).collect(),
    );
    sp.external_ips = vec!["192.0.2.10".parse().unwrap()];
    h.sync(&state(vec![("ext", sp)]));
    let counts = tcp_spread(&h.t.ext, addr("192.0.2.10", 80), 30, TO);
    assert_spread(&counts, &all_pods(&h, 2));
}

/// sessionAffinity ClientIP pins a client to one pod.
pub fn affinity_pins_a_client(make: MakeRouter) {
    let h = Harness::new(3, make);
    let mut sp = cluster_ip(
        "10.96.0.13",
        80,
        Protocol::Tcp,
        (0..3).map(|i| ep(h.pod_ip(i))).collect(),
    );
    sp.affinity_timeout = Some(Duration::from_secs(60));
    sp.node_port = Some(30082);
    h.sync(&state(vec![("aff", sp)]));
    let counts = tcp_spread(&h.t.ext, addr(NODE_IP, 30082), 20, TO);
    assert!(!counts.contains_key("<error>"), "{counts:?}");
    assert_eq!(
        counts.len(),
        1,
        "one pod for one client on the node port too: {counts:?}"
    );
    let counts = tcp_spread(&h.t.ext, addr("10.96.0.13", 80), 20, TO);
    assert!(!counts.contains_key("<error>"), "{counts:?}");
    assert_eq!(counts.len(), 1, "one pod for one client: {counts:?}");
    // another client (a pod, inside the cluster) is pinned too, independently
    let from_pod = tcp_spread(&h.t.pods[2].ns, addr("10.96.0.13", 80), 10, TO);
    assert_eq!(from_pod.len(), 1, "one pod for one client: {from_pod:?}");
}

/// externalTrafficPolicy Local: only the endpoints on this node, and the client's address kept.
pub fn local_policy_uses_local_endpoints(make: MakeRouter) {
    let h = Harness::new(3, make);
    let mut eps: Vec<Endpoint> = (0..3).map(|i| ep(h.pod_ip(i))).collect();
    eps[0].node_name = Some(NODE.into());
    let mut sp = cluster_ip("10.96.0.14", 80, Protocol::Tcp, eps);
    sp.node_port = Some(30081);
    sp.external_policy_local = true;
    h.sync(&state(vec![("local", sp)]));
    let counts = tcp_spread(&h.t.ext, addr(NODE_IP, 30081), 20, TO);
    assert_spread(&counts, &["pod-0".to_string()]);
    let a = tcp_request(&h.t.ext, addr(NODE_IP, 30081), TO).unwrap();
    assert_eq!(
        a.peer.to_string(),
        topology::EXT_IP,
        "Local policy keeps the client's address"
    );
    // the ClusterIP (internal policy Cluster) still uses every endpoint
    let counts = tcp_spread(&h.t.ext, addr("10.96.0.14", 80), 40, TO);
    assert_spread(&counts, &all_pods(&h, 3));
}

/// With no ready endpoint, the serving terminating ones take the traffic.
pub fn terminating_fallback(make: MakeRouter) {
    let h = Harness::new(3, make);
    let mut eps: Vec<Endpoint> = (0..3).map(|i| ep(h.pod_ip(i))).collect();
    for e in &mut eps {
        e.ready = false;
        e.terminating = true;
    }
    eps[0].serving = false;
    h.sync(&state(vec![(
        "term",
        cluster_ip("10.96.0.15", 80, Protocol::Tcp, eps),
    )]));
    let counts = tcp_spread(&h.t.ext, addr("10.96.0.15", 80), 30, TO);
    assert_spread(&counts, &["pod-1".to_string(), "pod-2".to_string()]);
}

/// A service without endpoints rejects at once (TCP reset), not a black hole.
pub fn no_endpoints_rejects_fast(make: MakeRouter) {
    let h = Harness::new(1, make);
    h.sync(&state(vec![(
        "empty",
        cluster_ip("10.96.0.16", 80, Protocol::Tcp, vec![]),
    )]));
    let start = Instant::now();
    let err = h
        .t
        .ext
        .run_in(|| {
            TcpStream::connect_timeout(&addr("10.96.0.16", 80), Duration::from_secs(5)).map(|_| ())
        })
        .unwrap()
        .expect_err("no endpoint: the connection must fail");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "rejected fast, took {:?}",
        start.elapsed()
    );
}

/// A pod reaching itself through its service (hairpin) gets an answer, masqueraded.
pub fn hairpin(make: MakeRouter) {
    let h = Harness::new(2, make);
    h.sync(&state(vec![(
        "self",
        cluster_ip("10.96.0.17", 80, Protocol::Tcp, vec![ep(h.pod_ip(0))]),
    )]));
    let a = tcp_request(&h.t.pods[0].ns, addr("10.96.0.17", 80), TO).unwrap_or_else(|e| {
        let diag = h.t.node.sh("nft list ruleset; conntrack -L 2>&1; ip route; sysctl net.ipv4.conf.all.rp_filter net.ipv4.conf.vp10.rp_filter net.ipv4.conf.vp10.accept_local; nstat -az 2>/dev/null | grep -i -E 'drop|martian|rpfilter' | grep -v ' 0 '; true");
        panic!("hairpin answer: {e}\n{}", diag.unwrap_or_default())
    });
    assert_eq!(a.pod, "pod-0");
    assert_ne!(a.peer, h.pod_ip(0), "hairpin traffic is masqueraded");
}

/// An endpoint removed gets no new connections; the change is a partial sync.
pub fn removed_endpoint_stops_receiving(make: MakeRouter) {
    let h = Harness::new(3, make);
    let eps: Vec<Endpoint> = (0..3).map(|i| ep(h.pod_ip(i))).collect();
    h.sync(&state(vec![(
        "rm",
        cluster_ip("10.96.0.18", 80, Protocol::Tcp, eps.clone()),
    )]));
    assert_spread(
        &tcp_spread(&h.t.ext, addr("10.96.0.18", 80), 40, TO),
        &all_pods(&h, 3),
    );
    let r = h.sync(&state(vec![(
        "rm",
        cluster_ip("10.96.0.18", 80, Protocol::Tcp, eps[..2].to_vec()),
    )]));
    assert!(!r.full, "an endpoint change is a partial sync");
    assert!(r.changes > 0);
    assert_spread(
        &tcp_spread(&h.t.ext, addr("10.96.0.18", 80), 40, TO),
        &all_pods(&h, 2),
    );
}

/// An IPv6 ClusterIP reaches the pods' IPv6 addresses.
pub fn ipv6_cluster_ip(make: MakeRouter) {
    let h = Harness::new(2, make);
    let eps: Vec<Endpoint> = (0..2).map(|i| ep(h.pod_ip6(i))).collect();
    h.sync(&state(vec![(
        "v6",
        cluster_ip("fd00:96::20", 80, Protocol::Tcp, eps),
    )]));
    let counts = tcp_spread(&h.t.ext, addr("fd00:96::20", 80), 30, TO);
    assert_spread(&counts, &all_pods(&h, 2));
}
