//! Root tests of the network-namespace fixtures: they create namespaces and must leave none.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use node_test_support::topology::{tcp_request, udp_request};
use node_test_support::{NetnsFixture, ServiceTopology, require_root};

#[test]
fn netns_is_removed_after_a_panic() {
    if !require_root("netns_is_removed_after_a_panic") {
        return;
    }
    let name = std::sync::Mutex::new(String::new());
    let child = std::sync::Mutex::new(None);
    let result = std::panic::catch_unwind(|| {
        let ns = NetnsFixture::new("panic").unwrap();
        *name.lock().unwrap() = ns.name().to_string();
        assert!(ns.path().exists());
        // a process inside must not keep it alive
        *child.lock().unwrap() = Some(ns.spawn("sleep 600").unwrap());
        panic!("deliberate");
    });
    assert!(result.is_err());
    // the fixture killed the process inside on drop: reap it
    let status = child.into_inner().unwrap().unwrap().wait().unwrap();
    assert!(!status.success());
    let name = name.into_inner().unwrap();
    assert!(!name.is_empty());
    assert!(
        !Path::new("/run/netns").join(&name).exists(),
        "{name} survived the panic"
    );
    let list = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&list.stdout).contains(&name));
}

#[test]
fn netns_runs_commands_and_closures_inside() {
    if !require_root("netns_runs_commands_and_closures_inside") {
        return;
    }
    let ns = NetnsFixture::new("exec").unwrap();
    let links = ns.sh("ip -o link show").unwrap();
    assert_eq!(
        links.lines().count(),
        1,
        "a fresh namespace has only lo: {links}"
    );
    let inside = ns
        .run_in(|| std::fs::read_link("/proc/thread-self/ns/net").unwrap())
        .unwrap();
    let outside = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
    assert_ne!(inside, outside);
    assert!(ns.sh("exit 3").is_err());
}

#[test]
fn topology_routes_between_pods_ext_and_node() {
    if !require_root("topology_routes_between_pods_ext_and_node") {
        return;
    }
    let names: Vec<String>;
    {
        let mut t = ServiceTopology::new(2).unwrap();
        t.serve_all(8080).unwrap();
        names = [
            t.node.name(),
            t.ext.name(),
            t.pods[0].ns.name(),
            t.pods[1].ns.name(),
        ]
        .map(String::from)
        .to_vec();
        let to = Duration::from_secs(2);
        let pod1: SocketAddr = (t.pods[1].ip, 8080).into();
        let a = tcp_request(&t.ext, pod1, to).unwrap();
        assert_eq!(a.pod, "pod-1");
        assert_eq!(a.peer.to_string(), "192.168.50.2");
        let a = tcp_request(&t.pods[0].ns, pod1, to).unwrap();
        assert_eq!((a.pod.as_str(), a.peer), ("pod-1", t.pods[0].ip));
        let a = udp_request(&t.node, (t.pods[0].ip, 8080).into(), to).unwrap();
        assert_eq!(a.pod, "pod-0");
        let a = tcp_request(&t.ext, (t.pods[0].ip6, 8080).into(), to).unwrap();
        assert_eq!(a.pod, "pod-0");
        assert_eq!(a.peer.to_string(), "fd00:50::2");
        t.stop_serving(1);
        assert!(tcp_request(&t.ext, pod1, to).is_err());
    }
    for n in names {
        assert!(
            !Path::new("/run/netns").join(&n).exists(),
            "{n} left behind"
        );
    }
}
