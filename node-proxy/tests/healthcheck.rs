//! kube-proxy's health servers over real HTTP on 127.0.0.1: `/healthz` and `/livez` following
//! queued updates and syncs (on tokio's paused clock), and the health check node ports of
//! `externalTrafficPolicy: Local` load balancers following Services and EndpointSlices; against
//! the fake API server, the proxy's own Node watched for its eligibility and the
//! `FailedToStartServiceHealthcheck` Event created as kube-proxy creates it.

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
    raw: String,
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
    let raw = body.to_string();
    let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("JSON body {body:?}: {e}"));
    Ok(Answer {
        status,
        headers,
        raw,
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

/// A service health server on loopback for Service `web/lb` (a LoadBalancer with
/// `externalTrafficPolicy: Local`) with one ready endpoint on this node, on a free port: the
/// server (it serves while kept) and its health check address.
async fn one_local_service(health: ProxierHealth) -> (ServiceHealthServer, SocketAddr) {
    let mut server = ServiceHealthServer::new(vec![LOCALHOST], health);
    let port = free_port();
    let eps = vec![ep("10.244.0.5", NODE, true)];
    assert!(
        server
            .sync(&state(vec![("lb", lb_port(port, true, eps))]))
            .await
            .is_empty()
    );
    (server, SocketAddr::new(LOCALHOST, port))
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

    // starting up: healthy; kube-proxy's body, no family judged yet (no "status")
    let a = get(addr, "/healthz").await.unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-type"), Some("application/json"));
    assert_eq!(a.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(
        keys_in_order(&a.raw),
        ["lastUpdated", "currentTime", "nodeEligible", "healthy"],
        "{}",
        a.raw
    );
    assert_eq!(
        (&a.body["nodeEligible"], &a.body["healthy"]),
        (&true.into(), &true.into())
    );
    for key in ["lastUpdated", "currentTime"] {
        assert!(is_go_json_time(a.body[key].as_str().unwrap()), "{}", a.raw);
    }
    let l = get(addr, "/livez").await.unwrap();
    assert_eq!(
        keys_in_order(&l.raw),
        ["lastUpdated", "currentTime", "healthy"],
        "{}",
        l.raw
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
    let (_server, addr) = one_local_service(health.clone()).await;
    assert_eq!(get(addr, "/").await.unwrap().status, 200);
    health.updated();
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
            health_timeout: Some(Duration::from_secs(60)),
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

/// `s` is a time as Go's `encoding/json` writes a UTC `time.Time`:
/// `YYYY-MM-DDTHH:MM:SS[.fraction without trailing zeros]Z`.
fn is_go_json_time(s: &str) -> bool {
    let Some(rest) = s.strip_suffix('Z') else {
        return false;
    };
    let (whole, frac) = rest.split_once('.').unwrap_or((rest, ""));
    let digits = |r: std::ops::Range<usize>| whole[r].bytes().all(|b| b.is_ascii_digit());
    whole.len() == 19
        && whole.as_bytes()[4] == b'-'
        && whole.as_bytes()[7] == b'-'
        && whole.as_bytes()[10] == b'T'
        && whole.as_bytes()[13] == b':'
        && whole.as_bytes()[16] == b':'
        && digits(0..4)
        && digits(5..7)
        && digits(8..10)
        && digits(11..13)
        && digits(14..16)
        && digits(17..19)
        && (frac.is_empty()
            || (frac.len() <= 9
                && frac.bytes().all(|b| b.is_ascii_digit())
                && !frac.ends_with('0')))
}

/// The keys of a JSON object in the order they were written.
fn keys_in_order(raw: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(raw).unwrap();
    let mut keys: Vec<(usize, String)> = v
        .as_object()
        .unwrap()
        .keys()
        .map(|k| (raw.find(&format!("\"{k}\":")).unwrap(), k.clone()))
        .collect();
    keys.sort();
    keys.into_iter().map(|(_, k)| k).collect()
}

#[test]
fn times_are_written_as_go_writes_a_time_in_json() {
    use node_proxy::healthcheck::go_json_time;
    use std::time::UNIX_EPOCH;
    let at = |s: u64, ns: u32| Some(UNIX_EPOCH + Duration::new(s, ns));
    assert_eq!(go_json_time(None), "0001-01-01T00:00:00Z");
    assert_eq!(go_json_time(at(0, 0)), "1970-01-01T00:00:00Z");
    assert_eq!(
        go_json_time(at(1_700_000_000, 500_000_000)),
        "2023-11-14T22:13:20.5Z"
    );
    assert_eq!(
        go_json_time(at(1_700_000_000, 1)),
        "2023-11-14T22:13:20.000000001Z"
    );
    assert_eq!(
        go_json_time(at(1_700_000_000, 123_456_780)),
        "2023-11-14T22:13:20.12345678Z"
    );
    assert!(is_go_json_time(&go_json_time(Some(
        std::time::SystemTime::now()
    ))));
}

#[tokio::test(start_paused = true)]
async fn healthz_and_livez_bodies_are_kube_proxys() {
    let health = ProxierHealth::new(Duration::from_secs(60));
    let (addr, stop) = start_healthz(&health).await;

    // an ineligible node before any sync: Go's zero time as "lastUpdated"
    health.set_node_eligible(false);
    let h = get(addr, "/healthz").await.unwrap();
    assert_eq!(h.status, 503);
    assert_eq!(h.body["lastUpdated"], "0001-01-01T00:00:00Z", "{}", h.raw);
    assert_eq!(
        (&h.body["nodeEligible"], &h.body["healthy"]),
        (&false.into(), &true.into())
    );
    health.set_node_eligible(true);

    // synced: a status per family
    health.updated();
    let h = get(addr, "/healthz").await.unwrap();
    assert_eq!(
        keys_in_order(&h.raw),
        [
            "lastUpdated",
            "currentTime",
            "nodeEligible",
            "healthy",
            "status"
        ],
        "{}",
        h.raw
    );
    let status = h.body["status"].as_object().unwrap();
    assert_eq!(
        status.keys().collect::<Vec<_>>(),
        ["IPv4", "IPv6"],
        "{}",
        h.raw
    );
    for f in status.values() {
        assert_eq!(f["healthy"], true);
        assert!(
            is_go_json_time(f["lastUpdated"].as_str().unwrap()),
            "{}",
            h.raw
        );
    }
    stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_change_queued_before_the_first_sync_is_never_late() {
    let health = ProxierHealth::new(Duration::from_secs(60));
    let (addr, stop) = start_healthz(&health).await;
    health.queued_update();
    tokio::time::advance(Duration::from_secs(3600)).await;
    assert!(health.is_healthy());
    assert_eq!(get(addr, "/healthz").await.unwrap().status, 200);
    assert_eq!(get(addr, "/livez").await.unwrap().status, 200);

    // once synced, a late change is judged
    health.updated();
    health.queued_update();
    tokio::time::advance(Duration::from_secs(60)).await;
    let l = get(addr, "/livez").await.unwrap();
    assert_eq!(
        (l.status, &l.body["healthy"]),
        (503, &false.into()),
        "{}",
        l.raw
    );
    stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn each_family_is_judged_on_its_own() {
    use node_proxy::IpFamily;
    let health =
        ProxierHealth::with_families(Duration::from_secs(60), &[IpFamily::V4, IpFamily::V6]);
    let (addr, stop) = start_healthz(&health).await;
    health.updated_family(IpFamily::V4);
    // IPv6 never synced: its queued change is not judged
    health.queued_update_family(IpFamily::V6);
    tokio::time::advance(Duration::from_secs(120)).await;
    let h = get(addr, "/healthz").await.unwrap();
    assert_eq!(h.status, 200, "{}", h.raw);
    assert_eq!(
        h.body["status"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["IPv4"],
        "{}",
        h.raw
    );

    health.updated_family(IpFamily::V6);
    let synced = get(addr, "/healthz").await.unwrap().body["status"]["IPv6"]["lastUpdated"].clone();
    health.queued_update_family(IpFamily::V6);
    tokio::time::advance(Duration::from_secs(61)).await;
    let h = get(addr, "/healthz").await.unwrap();
    assert_eq!(
        (h.status, &h.body["healthy"]),
        (503, &false.into()),
        "{}",
        h.raw
    );
    assert_eq!(h.body["status"]["IPv4"]["healthy"], true, "{}", h.raw);
    assert_eq!(h.body["status"]["IPv6"]["healthy"], false, "{}", h.raw);
    assert_eq!(h.body["status"]["IPv6"]["lastUpdated"], synced, "{}", h.raw);
    // an unhealthy answer shows the latest sync of any family, not now
    assert_eq!(h.body["lastUpdated"], synced, "{}", h.raw);
    assert_ne!(h.body["lastUpdated"], h.body["currentTime"], "{}", h.raw);

    health.updated_family(IpFamily::V6);
    assert_eq!(get(addr, "/healthz").await.unwrap().status, 200);
    stop.cancel();
}

#[tokio::test]
async fn a_health_check_node_port_answers_kube_proxys_exact_body() {
    let health = ProxierHealth::new(Duration::from_secs(60));
    let (_server, addr) = one_local_service(health).await;
    let a = get(addr, "/").await.unwrap();
    assert_eq!(
        a.raw,
        "{\n\t\"service\": {\n\t\t\"namespace\": \"web\",\n\t\t\"name\": \"lb\"\n\t},\n\t\"localEndpoints\": 1,\n\t\"serviceProxyHealthy\": true\n}"
    );
}

/// An [`EventRecorder`](node_proxy::EventRecorder) keeping what it is given.
#[derive(Default)]
struct Events(Mutex<Vec<node_proxy::ProxyEvent>>);

impl node_proxy::EventRecorder for Events {
    fn record(&self, event: node_proxy::ProxyEvent) {
        self.0.lock().unwrap().push(event);
    }
}

#[tokio::test]
async fn a_port_that_cannot_be_opened_is_recorded_as_an_event_on_the_service() {
    let events = Arc::new(Events::default());
    let health = ProxierHealth::new(Duration::from_secs(60));
    let mut server = ServiceHealthServer::new(vec![LOCALHOST], health).with_events(events.clone());
    let taken = std::net::TcpListener::bind((LOCALHOST, 0)).unwrap();
    let busy = taken.local_addr().unwrap().port();
    let eps = vec![ep("10.244.0.5", NODE, true)];
    let errors = server
        .sync(&state(vec![("a", lb_port(busy, true, eps))]))
        .await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    let got = events.0.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    let e = &got[0];
    assert_eq!(
        (e.reason.as_str(), e.action.as_str(), e.warning),
        ("FailedToStartServiceHealthcheck", "Listen", true)
    );
    let r = &e.regarding;
    assert_eq!(
        (
            r.kind.as_deref(),
            r.namespace.as_deref(),
            r.name.as_deref(),
            r.uid.as_deref()
        ),
        (Some("Service"), Some("web"), Some("a"), Some("web/a"))
    );
    let want = format!("node {NODE} failed to start healthcheck \"web/a\" on port {busy}: ");
    assert!(e.note.starts_with(&want), "{}", e.note);
}

#[test]
fn the_health_timeout_is_twice_the_sync_period_unless_given() {
    let build = |resync: u64, timeout: Option<Duration>| {
        Proxy::builder()
            .router(Arc::new(FakeRouter::new()))
            .config(node_proxy::ProxyConfig {
                resync_interval: Duration::from_secs(resync),
                ..Default::default()
            })
            .health(HealthConfig {
                health_timeout: timeout,
                ..HealthConfig::default()
            })
            .build()
            .unwrap()
            .health()
            .timeout()
    };
    assert_eq!(build(30, None), Duration::from_secs(60));
    assert_eq!(build(45, None), Duration::from_secs(90));
    assert_eq!(
        build(30, Some(Duration::from_secs(5))),
        Duration::from_secs(5)
    );
    assert_eq!(HealthConfig::kube_proxy().health_timeout, None);
}

/// Polls `/healthz` until its status is `want`.
async fn healthz_becomes(addr: SocketAddr, want: u16) -> serde_json::Value {
    let mut last = None;
    for _ in 0..200 {
        let a = get(addr, "/healthz").await.unwrap();
        if a.status == want {
            return a.body;
        }
        last = Some((a.status, a.raw));
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("/healthz never {want}: {last:?}");
}

fn node(name: &str, taints: serde_json::Value) -> serde_json::Value {
    serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
        "spec": {"taints": taints}})
}

#[tokio::test]
async fn a_node_tainted_for_deletion_fails_healthz_until_the_taint_goes() {
    use serde_json::json;
    let api = node_test_support::FakeApiServer::new();
    api.apply("nodes", node(NODE, json!([])));
    let health = ProxierHealth::new(Duration::from_secs(60));
    let (addr, stop) = start_healthz(&health).await;
    let watch = tokio::spawn(health.clone().follow_node(api.client(), NODE.into()));
    health.updated();
    assert_eq!(get(addr, "/healthz").await.unwrap().status, 200);

    let taint = json!([{"key": "ToBeDeletedByClusterAutoscaler", "value": "1700000000",
        "effect": "NoSchedule"}]);
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
    assert_eq!(get(addr, "/livez").await.unwrap().status, 200);

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

    // only our Node was read
    let reads: Vec<_> = api
        .requests_to("GET", "/api/v1/nodes")
        .into_iter()
        .map(|r| r.uri)
        .collect();
    assert!(!reads.is_empty());
    for uri in &reads {
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
    let api = node_test_support::FakeApiServer::new();
    let recorder = Arc::new(node_proxy::ApiEventRecorder::new(api.client(), NODE));
    let health = ProxierHealth::new(Duration::from_secs(60));
    let mut server = ServiceHealthServer::new(vec![LOCALHOST], health).with_events(recorder);
    let taken = std::net::TcpListener::bind((LOCALHOST, 0)).unwrap();
    let busy = taken.local_addr().unwrap().port();
    let eps = vec![ep("10.244.0.5", NODE, true)];
    let errors = server
        .sync(&state(vec![("lb", lb_port(busy, true, eps))]))
        .await;
    assert_eq!(errors.len(), 1, "{errors:?}");
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
        serde_json::json!({"kind": "Service", "namespace": "web", "name": "lb", "uid": "web/lb"}),
        "{e}"
    );
    let note = e["note"].as_str().unwrap();
    let want = format!("node {NODE} failed to start healthcheck \"web/lb\" on port {busy}: ");
    assert!(note.starts_with(&want), "{note}");
    let posts: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .map(|r| r.path)
        .collect();
    assert_eq!(posts, ["/apis/events.k8s.io/v1/namespaces/web/events"]);
}
