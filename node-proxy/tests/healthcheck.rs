//! kube-proxy's health servers over real HTTP on 127.0.0.1: `/healthz` and `/livez` following
//! queued updates and syncs (on tokio's paused clock), and the health check node ports of
//! `externalTrafficPolicy: Local` load balancers following Services and EndpointSlices.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use node_core::proxy::{Endpoint, NodeInfo, ProxyState, ServicePort, ServicePortName};
use node_proxy::healthcheck::HealthConfig;
use node_proxy::{
    CancellationToken, HealthError, ProxierHealth, Proxy, ServiceEvent, ServiceHealthServer,
    ServiceSource, ServiceStream,
};
use node_test_support::FakeRouter;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const NODE: &str = "node-a";

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: serde_json::Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 GET over TCP.
async fn get(addr: SocketAddr, path: &str) -> std::io::Result<Answer> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = vec![];
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8(buf).expect("utf-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("JSON body {body:?}: {e}"));
    Ok(Answer {
        status,
        headers,
        body,
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind((LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn ep(ip: &str, node: &str, ready: bool) -> Endpoint {
    Endpoint {
        node_name: Some(node.into()),
        ready,
        serving: ready,
        ..Endpoint::ready(ip.parse().unwrap(), 8080)
    }
}

fn lb_port(hc: u16, local: bool, endpoints: Vec<Endpoint>) -> ServicePort {
    ServicePort {
        cluster_ips: vec!["10.96.0.10".parse().unwrap()],
        port: 80,
        node_port: Some(30080),
        external_policy_local: local,
        health_check_node_port: local.then_some(hc),
        endpoints,
        ..Default::default()
    }
}

fn state(services: Vec<(&str, ServicePort)>) -> ProxyState {
    ProxyState {
        services: services
            .into_iter()
            .map(|(name, p)| (ServicePortName::new("web", name, "http"), p))
            .collect(),
        node: NodeInfo {
            name: NODE.into(),
            ..Default::default()
        },
    }
}

async fn start_healthz(health: &ProxierHealth) -> (SocketAddr, CancellationToken) {
    let l = ProxierHealth::bind(SocketAddr::new(LOCALHOST, 0)).unwrap();
    let addr = l.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(health.clone().serve(l, stop.clone()));
    (addr, stop)
}

#[tokio::test(start_paused = true)]
async fn healthz_follows_queued_updates_and_syncs() {
    let health = ProxierHealth::new(Duration::from_secs(60));
    let (addr, stop) = start_healthz(&health).await;

    // starting up: healthy
    let a = get(addr, "/healthz").await.unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-type"), Some("application/json"));
    assert_eq!(a.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(a.body["nodeEligible"], true);
    assert!(
        a.body["lastUpdated"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );
    assert!(
        a.body["currentTime"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );

    health.updated();
    assert_eq!(get(addr, "/healthz").await.unwrap().status, 200);

    // a queued change not synced within the timeout
    health.queued_update();
    tokio::time::advance(Duration::from_secs(59)).await;
    assert_eq!(get(addr, "/healthz").await.unwrap().status, 200);
    health.queued_update(); // the oldest pending change keeps counting
    tokio::time::advance(Duration::from_secs(2)).await;
    let a = get(addr, "/healthz").await.unwrap();
    assert_eq!(a.status, 503, "{}", a.body);
    assert!(!health.is_healthy());
    let l = get(addr, "/livez").await.unwrap();
    assert_eq!(l.status, 503);
    assert!(l.body.get("nodeEligible").is_none(), "{}", l.body);
    assert!(
        l.body["lastUpdated"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );

    // synced: healthy again
    health.updated();
    assert_eq!(get(addr, "/healthz").await.unwrap().status, 200);
    assert_eq!(get(addr, "/livez").await.unwrap().status, 200);

    // a node being deleted fails /healthz but not /livez
    let node: k8s_openapi::api::core::v1::Node = serde_json::from_value(serde_json::json!({
        "metadata": {"name": NODE},
        "spec": {"taints": [{"key": "ToBeDeletedByClusterAutoscaler", "effect": "NoSchedule"}]}
    }))
    .unwrap();
    health.sync_node(&node);
    let a = get(addr, "/healthz").await.unwrap();
    assert_eq!((a.status, &a.body["nodeEligible"]), (503, &false.into()));
    assert_eq!(get(addr, "/livez").await.unwrap().status, 200);
    health.sync_node(&Default::default());
    assert_eq!(get(addr, "/healthz").await.unwrap().status, 200);
    stop.cancel();
}

#[tokio::test]
async fn service_health_port_counts_local_ready_endpoints_and_closes() {
    let health = ProxierHealth::new(Duration::from_secs(60));
    let mut server = ServiceHealthServer::new(vec![LOCALHOST], health.clone());
    let port = free_port();
    let addr = SocketAddr::new(LOCALHOST, port);
    let two_local = vec![
        ep("10.244.0.5", NODE, true),
        ep("10.244.0.6", NODE, true),
        ep("10.244.0.7", NODE, false),
        ep("10.244.1.5", "node-b", true),
    ];
    assert!(
        server
            .sync(&state(vec![("lb", lb_port(port, true, two_local))]))
            .await
            .is_empty()
    );
    assert_eq!(server.local_addrs("web", "lb"), Some(&[addr][..]));

    let a = get(addr, "/any/path").await.unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("content-type"), Some("application/json"));
    assert_eq!(a.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(a.header("x-load-balancing-endpoint-weight"), Some("2"));
    assert_eq!(
        a.body,
        serde_json::json!({"service": {"namespace": "web", "name": "lb"},
            "localEndpoints": 2, "serviceProxyHealthy": true})
    );

    // endpoints on other nodes only
    let remote = vec![
        ep("10.244.1.5", "node-b", true),
        ep("10.244.2.5", "node-c", true),
    ];
    assert!(
        server
            .sync(&state(vec![("lb", lb_port(port, true, remote.clone()))]))
            .await
            .is_empty()
    );
    let a = get(addr, "/").await.unwrap();
    assert_eq!((a.status, &a.body["localEndpoints"]), (503, &0.into()));
    assert_eq!(a.header("x-load-balancing-endpoint-weight"), Some("0"));

    // the policy becomes Cluster: the port closes
    assert!(
        server
            .sync(&state(vec![("lb", lb_port(port, false, remote))]))
            .await
            .is_empty()
    );
    assert_eq!(server.local_addrs("web", "lb"), None);
    let e = get(addr, "/").await.err().expect("the listener is closed");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");

    // back, then the Service goes
    let one = vec![ep("10.244.0.5", NODE, true)];
    assert!(
        server
            .sync(&state(vec![("lb", lb_port(port, true, one))]))
            .await
            .is_empty()
    );
    assert_eq!(get(addr, "/").await.unwrap().status, 200);
    assert!(server.sync(&state(vec![])).await.is_empty());
    let e = get(addr, "/").await.err().expect("the listener is closed");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
}

#[tokio::test(start_paused = true)]
async fn an_unhealthy_proxier_fails_every_service_health_check() {
    let health = ProxierHealth::new(Duration::from_secs(60));
    let mut server = ServiceHealthServer::new(vec![LOCALHOST], health.clone());
    let port = free_port();
    let eps = vec![ep("10.244.0.5", NODE, true)];
    assert!(
        server
            .sync(&state(vec![("lb", lb_port(port, true, eps))]))
            .await
            .is_empty()
    );
    let addr = SocketAddr::new(LOCALHOST, port);
    assert_eq!(get(addr, "/").await.unwrap().status, 200);
    health.queued_update();
    tokio::time::advance(Duration::from_secs(61)).await;
    let a = get(addr, "/").await.unwrap();
    assert_eq!(a.status, 503);
    assert_eq!(a.body["localEndpoints"], 1);
    assert_eq!(a.body["serviceProxyHealthy"], false);
}

#[tokio::test]
async fn a_port_conflict_is_reported_and_the_others_still_served() {
    let health = ProxierHealth::new(Duration::from_secs(60));
    let mut server = ServiceHealthServer::new(vec![LOCALHOST], health);
    let taken = std::net::TcpListener::bind((LOCALHOST, 0)).unwrap();
    let busy = taken.local_addr().unwrap().port();
    let free = free_port();
    let eps = vec![ep("10.244.0.5", NODE, true)];
    let want = state(vec![
        ("a", lb_port(busy, true, eps.clone())),
        ("b", lb_port(free, true, eps)),
    ]);
    let errors = server.sync(&want).await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    match &errors[0] {
        HealthError::ServiceHealthcheck {
            namespace,
            name,
            port,
            source,
        } => {
            assert_eq!(
                (namespace.as_str(), name.as_str(), *port),
                ("web", "a", busy)
            );
            assert_eq!(source.kind(), std::io::ErrorKind::AddrInUse);
        }
        other => panic!("{other:?}"),
    }
    assert!(errors[0].to_string().contains(&busy.to_string()));
    assert_eq!(server.local_addrs("web", "a"), None);
    let a = get(SocketAddr::new(LOCALHOST, free), "/").await.unwrap();
    assert_eq!((a.status, &a.body["service"]["name"]), (200, &"b".into()));

    // the port is freed: the next sync opens it
    drop(taken);
    assert!(server.sync(&want).await.is_empty());
    let a = get(SocketAddr::new(LOCALHOST, busy), "/").await.unwrap();
    assert_eq!((a.status, &a.body["service"]["name"]), (200, &"a".into()));
}

/// A source fed by the test.
struct ChannelSource(Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<ServiceEvent>>>);

impl ServiceSource for ChannelSource {
    fn name(&self) -> &str {
        "channel"
    }
    fn watch(&self) -> ServiceStream {
        let rx = self.0.lock().unwrap().take().expect("watched once");
        tokio_stream_from(rx)
    }
}

fn tokio_stream_from(rx: tokio::sync::mpsc::UnboundedReceiver<ServiceEvent>) -> ServiceStream {
    futures::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) },
    )
    .boxed()
}

fn yaml<T: serde::de::DeserializeOwned>(s: &str) -> Box<T> {
    Box::new(serde_saphyr::from_str(s).unwrap())
}

async fn eventually(addr: SocketAddr, what: &str, ok: impl Fn(&Answer) -> bool) -> Answer {
    for _ in 0..200 {
        if let Ok(a) = get(addr, "/").await
            && ok(&a)
        {
            return a;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{addr}: never {what}");
}

#[tokio::test]
async fn the_proxy_serves_healthz_and_health_check_node_ports_from_its_sync_loop() {
    let router = Arc::new(FakeRouter::new());
    let port = free_port();
    let mut proxy = Proxy::builder()
        .router(router.clone())
        .node(NodeInfo {
            name: NODE.into(),
            ..Default::default()
        })
        .health(HealthConfig {
            healthz_bind_address: Some(SocketAddr::new(LOCALHOST, 0)),
            service_health_checks: true,
            node_port_addresses: vec![LOCALHOST],
            ..HealthConfig::default()
        })
        .build()
        .unwrap();
    let healthz = proxy.healthz_addr().expect("healthz bound at build");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let source = ChannelSource(Mutex::new(Some(rx)));
    let stop = CancellationToken::new();
    let s2 = stop.clone();
    let task = tokio::spawn(async move { proxy.run(&source, s2).await });

    let svc = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: lb, namespace: web}}\nspec:\n  type: LoadBalancer\n  clusterIP: 10.96.0.10\n  externalTrafficPolicy: Local\n  healthCheckNodePort: {port}\n  ports: [{{name: http, port: 80, nodePort: 30080}}]\n"
    );
    let slice = |nodes: &[&str]| {
        let eps: Vec<String> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                format!("  - {{addresses: [10.244.0.{}], nodeName: {n}, conditions: {{ready: true}}}}\n", i + 5)
            })
            .collect();
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\naddressType: IPv4\nmetadata:\n  name: lb-1\n  namespace: web\n  labels: {{kubernetes.io/service-name: lb}}\nports: [{{name: http, port: 8080}}]\nendpoints:\n{}",
            eps.concat()
        )
    };
    tx.send(ServiceEvent::Snapshot {
        services: Some(vec![*yaml(&svc)]),
        slices: Some(vec![*yaml(&slice(&[NODE, NODE, "node-b"]))]),
    })
    .unwrap();
    let addr = SocketAddr::new(LOCALHOST, port);
    let a = eventually(addr, "2 local endpoints", |a| a.status == 200).await;
    assert_eq!(a.body["localEndpoints"], 2, "{}", a.body);
    let h = get(healthz, "/healthz").await.unwrap();
    assert_eq!((h.status, &h.body["nodeEligible"]), (200, &true.into()));

    tx.send(ServiceEvent::SliceApplied(yaml(&slice(&[
        "node-b", "node-c",
    ]))))
    .unwrap();
    let a = eventually(addr, "0 local endpoints", |a| a.status == 503).await;
    assert_eq!(a.body["localEndpoints"], 0, "{}", a.body);

    tx.send(ServiceEvent::ServiceDeleted(yaml(&svc))).unwrap();
    for _ in 0..200 {
        if get(addr, "/").await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let e = get(addr, "/").await.err().expect("closed with the Service");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);

    stop.cancel();
    task.await.unwrap().unwrap();
    assert!(!router.synced().is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_sync_loop_reports_queued_updates_and_syncs() {
    let router = Arc::new(FakeRouter::new());
    let mut proxy = Proxy::builder()
        .router(router.clone())
        .config(node_proxy::ProxyConfig {
            min_sync_interval: Duration::from_secs(3600),
            ..Default::default()
        })
        .health(HealthConfig {
            health_timeout: Duration::from_secs(60),
            ..HealthConfig::default()
        })
        .build()
        .unwrap();
    let health = proxy.health().clone();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let source = ChannelSource(Mutex::new(Some(rx)));
    let stop = CancellationToken::new();
    let s2 = stop.clone();
    let task = tokio::spawn(async move { proxy.run(&source, s2).await });
    let svc = |ip: &str| -> Box<k8s_openapi::api::core::v1::Service> {
        yaml(&format!(
            "metadata: {{name: a, namespace: d}}\nspec: {{clusterIP: {ip}, ports: [{{port: 80}}]}}\n"
        ))
    };
    tx.send(ServiceEvent::ServiceApplied(svc("10.96.0.1")))
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(router.synced().len(), 1);
    assert!(health.is_healthy());

    // the next change waits for the minimum sync interval, longer than the health timeout
    tx.send(ServiceEvent::ServiceApplied(svc("10.96.0.2")))
        .unwrap();
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert_eq!(router.synced().len(), 1);
    assert!(!health.is_healthy());

    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(router.synced().len(), 2);
    assert!(health.is_healthy());
    stop.cancel();
    task.await.unwrap().unwrap();
}
