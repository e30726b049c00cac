//! Root test: a health check node port, listening on every address of a node namespace, is
//! reached from another namespace through the node's address. Needs root and `curl`.

use std::net::IpAddr;
use std::time::Duration;

use node_core::proxy::{Endpoint, NodeInfo, ProxyState, ServicePort, ServicePortName};
use node_proxy::{ProxierHealth, ServiceHealthServer};
use node_test_support::{NetnsFixture, connect_veth, require_command, require_root};

const NODE: &str = "node-a";
const PORT: u16 = 32123;

fn state(local: usize) -> ProxyState {
    let endpoints = (0..local)
        .map(|i| Endpoint {
            node_name: Some(NODE.into()),
            ..Endpoint::ready(format!("10.244.0.{}", i + 5).parse().unwrap(), 8080)
        })
        .collect();
    let port = ServicePort {
        cluster_ips: vec!["10.96.0.10".parse().unwrap()],
        port: 80,
        node_port: Some(30080),
        external_policy_local: true,
        health_check_node_port: Some(PORT),
        endpoints,
        ..Default::default()
    };
    ProxyState {
        services: [(ServicePortName::new("web", "lb", "http"), port)].into(),
        node: NodeInfo {
            name: NODE.into(),
            ..Default::default()
        },
    }
}

/// `curl` from `client` to the node's health check node port: (status, body).
async fn curl(client: &NetnsFixture, node_ip: &str) -> (u16, serde_json::Value) {
    let mut cmd = client.command("curl");
    cmd.args([
        "-s",
        "--max-time",
        "5",
        "-w",
        "\n%{http_code}",
        &format!("http://{node_ip}:{PORT}/"),
    ]);
    let out = tokio::process::Command::from(cmd).output().await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').expect("curl's output");
    (
        code.trim().parse().unwrap(),
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{text:?}: {e}")),
    )
}

/// curl's `%{http_code}` (`000`: no answer).
async fn http_code(client: &NetnsFixture, node_ip: &str) -> String {
    let mut cmd = client.command("curl");
    cmd.args([
        "-s",
        "-o",
        "/dev/null",
        "--max-time",
        "5",
        "-w",
        "%{http_code}",
        &format!("http://{node_ip}:{PORT}/"),
    ]);
    let out = tokio::process::Command::from(cmd).output().await.unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn health_check_node_port_is_reached_through_the_node_address() {
    let test = "health_check_node_port_is_reached_through_the_node_address";
    if !(require_root(test) && require_command(test, "curl")) {
        return;
    }
    let node = NetnsFixture::new("hcnode").unwrap();
    let client = NetnsFixture::new("hcclient").unwrap();
    connect_veth(&node, "hc0", "10.0.0.1/24", &client, "hc1", "10.0.0.2/24").unwrap();
    node.sh("ip addr add fd00:1c::1/64 dev hc0").unwrap();
    client.sh("ip addr add fd00:1c::2/64 dev hc1").unwrap();
    node.run_in(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            // every address of the node (empty list): IPv4 and IPv6
            let mut server =
                ServiceHealthServer::new(vec![], ProxierHealth::new(Duration::from_secs(60)));
            assert!(server.sync(&state(2)).await.is_empty());
            let addrs = server.local_addrs("web", "lb").unwrap();
            assert!(addrs.iter().all(|a| a.port() == PORT), "{addrs:?}");
            for ip in ["10.0.0.1", "[fd00:1c::1]"] {
                let (code, body) = curl(&client, ip).await;
                assert_eq!((code, &body["localEndpoints"]), (200, &2.into()), "{ip}");
            }
            assert!(server.sync(&state(0)).await.is_empty());
            let (code, body) = curl(&client, "10.0.0.1").await;
            assert_eq!((code, &body["localEndpoints"]), (503, &0.into()));

            // the Service goes: closed
            assert!(server.sync(&ProxyState::default()).await.is_empty());
            assert_eq!(http_code(&client, "10.0.0.1").await, "000");

            // bound to one address: not served on another of the node's
            let ip: IpAddr = "fd00:1c::1".parse().unwrap();
            let mut one =
                ServiceHealthServer::new(vec![ip], ProxierHealth::new(Duration::from_secs(60)));
            assert!(one.sync(&state(1)).await.is_empty());
            assert_eq!(curl(&client, "[fd00:1c::1]").await.0, 200);
            assert_eq!(http_code(&client, "10.0.0.1").await, "000");
        });
    })
    .unwrap();
}
