//! The health servers against the fake API server: the proxy's own Node watched for its
//! eligibility (`/healthz` 503 while it is tainted `ToBeDeletedByClusterAutoscaler`), and the
//! `FailedToStartServiceHealthcheck` Event created as kube-proxy creates it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use node_core::proxy::{Endpoint, NodeInfo, ProxyState, ServicePort, ServicePortName};
use node_proxy::{ApiEventRecorder, CancellationToken, ProxierHealth, ServiceHealthServer};
use node_test_support::FakeApiServer;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const NODE: &str = "node-a";

/// The status and JSON body of one GET.
async fn get(addr: SocketAddr, path: &str) -> (u16, serde_json::Value) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let (head, body) = buf.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap();
    (status, serde_json::from_str(body).unwrap())
}

/// Polls `/healthz` until its status is `want`.
async fn healthz_becomes(addr: SocketAddr, want: u16) -> serde_json::Value {
    let mut last = None;
    for _ in 0..200 {
        let (status, body) = get(addr, "/healthz").await;
        if status == want {
            return body;
        }
        last = Some((status, body));
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("/healthz never {want}: {last:?}");
}

fn node(name: &str, taints: serde_json::Value) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "spec": {"taints": taints}})
}

#[tokio::test]
async fn a_node_tainted_for_deletion_fails_healthz_until_the_taint_goes() {
    let api = FakeApiServer::new();
    api.apply("nodes", node(NODE, json!([])));
    let health = ProxierHealth::new(Duration::from_secs(60));
    let l = ProxierHealth::bind(SocketAddr::new(LOCALHOST, 0)).unwrap();
    let addr = l.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(health.clone().serve(l, stop.clone()));
    let watch = tokio::spawn(health.clone().follow_node(api.client(), NODE.into()));
    health.updated();
    assert_eq!(get(addr, "/healthz").await.0, 200);

    let taint = json!([{"key": "ToBeDeletedByClusterAutoscaler", "value": "1700000000", "effect": "NoSchedule"}]);
    // another node's taint is not ours
    api.apply("nodes", node("node-b", taint.clone()));
    api.apply("nodes", node(NODE, taint));
    let body = healthz_becomes(addr, 503).await;
    assert_eq!(
        (&body["nodeEligible"], &body["healthy"]),
        (&false.into(), &true.into()),
        "{body}"
    );
    // /livez does not look at the node
    assert_eq!(get(addr, "/livez").await.0, 200);

    // the autoscaler gives up on the node: eligible again
    api.apply(
        "nodes",
        node(NODE, json!([{"key": "other", "effect": "NoSchedule"}])),
    );
    let body = healthz_becomes(addr, 200).await;
    assert_eq!(body["nodeEligible"], true, "{body}");

    // the Node is deleted
    assert!(api.delete("nodes", "", NODE));
    healthz_becomes(addr, 503).await;

    // only our Node was watched
    let watches: Vec<_> = api
        .requests_to("GET", "/api/v1/nodes")
        .into_iter()
        .map(|r| r.uri)
        .collect();
    assert!(!watches.is_empty());
    for uri in &watches {
        assert!(
            uri.contains("fieldSelector=metadata.name%3Dnode-a"),
            "{uri}"
        );
    }
    watch.abort();
    stop.cancel();
}

#[tokio::test]
async fn the_failed_health_check_port_event_is_created_as_kube_proxy_creates_it() {
    let api = FakeApiServer::new();
    let health = ProxierHealth::new(Duration::from_secs(60));
    let recorder = Arc::new(ApiEventRecorder::new(api.client(), NODE));
    let mut server = ServiceHealthServer::new(vec![LOCALHOST], health).with_events(recorder);
    let taken = std::net::TcpListener::bind((LOCALHOST, 0)).unwrap();
    let busy = taken.local_addr().unwrap().port();
    let port = ServicePort {
        cluster_ips: vec!["10.96.0.10".parse().unwrap()],
        port: 80,
        node_port: Some(30080),
        external_policy_local: true,
        health_check_node_port: Some(busy),
        endpoints: vec![Endpoint {
            node_name: Some(NODE.into()),
            ..Endpoint::ready("10.244.0.5".parse().unwrap(), 8080)
        }],
        ..Default::default()
    };
    let state = ProxyState {
        services: [(ServicePortName::new("web", "lb", "http"), port)].into(),
        node: NodeInfo {
            name: NODE.into(),
            ..Default::default()
        },
    };
    assert_eq!(server.sync(&state).await.len(), 1);
    api.wait_for("the event", Duration::from_secs(10), |a| {
        !a.list("events").is_empty()
    })
    .await
    .unwrap();
    let events = api.list("events");
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(e["metadata"]["namespace"], "web", "{e}");
    assert_eq!(e["reason"], "FailedToStartServiceHealthcheck", "{e}");
    assert_eq!(e["action"], "Listen", "{e}");
    assert_eq!(e["type"], "Warning", "{e}");
    assert_eq!(e["reportingController"], "kube-proxy", "{e}");
    assert_eq!(e["reportingInstance"], "kube-proxy-node-a", "{e}");
    assert_eq!(
        e["regarding"],
        json!({"kind": "Service", "namespace": "web", "name": "lb", "uid": "web/lb"}),
        "{e}"
    );
    let note = e["note"].as_str().unwrap();
    assert!(
        note.starts_with(&format!(
            "node {NODE} failed to start healthcheck \"web/lb\" on port {busy}: "
        )),
        "{note}"
    );
    let posts = api
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .map(|r| r.path)
        .collect::<Vec<_>>();
    assert_eq!(posts, ["/apis/events.k8s.io/v1/namespaces/web/events"]);
}
