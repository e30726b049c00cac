//! Root tests of UDP conntrack cleanup through the real kernel: a UDP client that keeps its
//! source port stays NATed to the endpoint of its first datagram until the conntrack entry goes;
//! when that endpoint is removed, the router's cleanup sends the next datagram to another one.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use node_core::{
    Endpoint, NodeInfo, Protocol, ProxyState, ServicePort, ServicePortName, ServiceRouter,
};
use node_proxy::{IpFamily, IptablesConfig, IptablesRouter, IptablesVariant};
use node_test_support::topology::POD_CIDR;
use node_test_support::{ServiceTopology, require_command, require_root};

fn state(t: &ServiceTopology, pods: &[usize]) -> ProxyState {
    let mut s = ProxyState {
        node: NodeInfo {
            name: "node-a".into(),
            cluster_cidrs: vec![POD_CIDR.parse().unwrap()],
            ..Default::default()
        },
        ..Default::default()
    };
    s.services.insert(
        ServicePortName::new("kube-system", "dns", "dns"),
        ServicePort {
            cluster_ips: vec!["10.96.0.10".parse().unwrap()],
            port: 53,
            protocol: Protocol::Udp,
            endpoints: pods
                .iter()
                .map(|&i| Endpoint::ready(t.pods[i].ip, 8080))
                .collect(),
            ..Default::default()
        },
    );
    s
}

fn sync(t: &ServiceTopology, r: &IptablesRouter, s: &ProxyState) {
    t.node
        .run_in(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(r.sync(s))
        })
        .unwrap()
        .unwrap();
}

/// Ask over `sock` (always the same source port); the pod that answered, or the error.
fn ask(sock: &UdpSocket) -> Result<String, std::io::Error> {
    sock.send(b"hello\n")?;
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n])
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

/// Returns (the pod the client was first sent to, what the client got after it was removed).
fn remove_the_used_endpoint(cleanup: bool) -> (String, Result<String, std::io::Error>) {
    let mut t = ServiceTopology::new(2).unwrap();
    t.serve_all(8080).unwrap();
    let r = IptablesRouter::new(
        IptablesConfig::default()
            .with_variant(IptablesVariant::Nft)
            .with_families(&[IpFamily::V4])
            .with_conntrack_cleanup(cleanup),
    );
    sync(&t, &r, &state(&t, &[0, 1]));
    let vip: SocketAddr = "10.96.0.10:53".parse().unwrap();
    let sock = t
        .ext
        .run_in(|| {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.connect(vip)?;
            s.set_read_timeout(Some(Duration::from_secs(1)))?;
            Ok::<_, std::io::Error>(s)
        })
        .unwrap()
        .unwrap();
    let first = ask(&sock).unwrap();
    for _ in 0..5 {
        assert_eq!(
            ask(&sock).unwrap(),
            first,
            "one flow sticks to one endpoint"
        );
    }
    let used = if first == "pod-0" { 0 } else { 1 };
    // the pod goes away: its server stops and it leaves the endpoints
    t.stop_serving(used);
    sync(&t, &r, &state(&t, &[1 - used]));
    let after = ask(&sock);
    (first, after)
}

#[test]
fn removed_udp_endpoint_entries_are_deleted() {
    let test = "removed_udp_endpoint_entries_are_deleted";
    if !require_root(test)
        || !require_command(test, "conntrack")
        || !require_command(test, "iptables-nft-restore")
    {
        return;
    }
    // without cleanup the stale entry keeps sending the client to the removed endpoint
    let (first, after) = remove_the_used_endpoint(false);
    match after {
        Ok(pod) => panic!("without cleanup the client still reached {pod} (first {first})"),
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::WouldBlock
            ) || e.kind() == std::io::ErrorKind::TimedOut,
            "{e}"
        ),
    }
    // with cleanup the next datagram reaches the remaining endpoint
    let (first, after) = remove_the_used_endpoint(true);
    let after = after.expect("the next datagram is answered");
    assert_ne!(after, first);
    assert!(after.starts_with("pod-"));
}
