//! Root test of the IPVS router against this kernel, inside a network namespace it creates:
//! without IPVS (`CONFIG_IP_VS` unset, as here) a sync fails with `RouterError::Unsupported`
//! and touches nothing; with IPVS it programs the virtual server.

use node_core::{Endpoint, ProxyState, RouterError, ServicePort, ServicePortName, ServiceRouter};
use node_proxy::IpvsRouter;
use node_test_support::{NetnsFixture, require_root};

fn ipvs_in_kernel() -> bool {
    std::fs::read_to_string("/proc/net/ip_vs").is_ok()
        || std::fs::read_to_string("/proc/modules")
            .map(|m| m.lines().any(|l| l.starts_with("ip_vs ")))
            .unwrap_or(false)
}

#[test]
fn sync_says_when_the_kernel_has_no_ipvs() {
    if !require_root("sync_says_when_the_kernel_has_no_ipvs") {
        return;
    }
    let ns = NetnsFixture::new("ipvs").unwrap();
    let mut s = ProxyState::default();
    s.services.insert(
        ServicePortName::new("default", "web", ""),
        ServicePort {
            cluster_ips: vec!["10.96.0.10".parse().unwrap()],
            port: 80,
            endpoints: vec![Endpoint::ready("10.244.0.10".parse().unwrap(), 8080)],
            ..Default::default()
        },
    );
    let router = IpvsRouter::default();
    let result = ns
        .run_in(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(router.sync(&s))
        })
        .unwrap();
    if ipvs_in_kernel() {
        // a kernel with IPVS: the service exists afterwards
        result.unwrap();
        let table = ns
            .run_in(|| {
                let (mut sock, family) = IpvsRouter::connect().unwrap();
                IpvsRouter::read_table(&mut sock, family).unwrap()
            })
            .unwrap();
        assert_eq!(table.len(), 1);
        return;
    }
    match result {
        Err(RouterError::Unsupported(why)) => assert!(why.contains("no IPVS"), "{why}"),
        other => panic!("expected Unsupported, got {other:?}"),
    }
    // nothing was touched: no dummy interface, no rules
    let links = ns.sh("ip -o link show").unwrap();
    assert!(!links.contains("nodekit-ipvs0"), "{links}");
}

#[test]
fn the_generic_netlink_socket_resolves_real_families() {
    if !require_root("the_generic_netlink_socket_resolves_real_families") {
        return;
    }
    let ns = NetnsFixture::new("genl").unwrap();
    let (ctrl, missing) = ns
        .run_in(|| {
            let mut sock = node_proxy::ipvs::GenlSocket::open().unwrap();
            (sock.family_id("nlctrl"), sock.family_id("NODEKIT-NO-SUCH"))
        })
        .unwrap();
    // the controller knows itself: GENL_ID_CTRL
    assert_eq!(ctrl.unwrap(), 0x10);
    assert_eq!(missing.unwrap_err().raw_os_error(), Some(libc::ENOENT));
}
