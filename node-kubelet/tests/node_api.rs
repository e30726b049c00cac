//! Node registration, the heartbeat Lease and node status against an in-process fake API server
//! (a `tower::service_fn` behind `kube::Client::new`, no network), with tokio's paused clock.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use node_kubelet::node::allocatable::{AllocatableConfig, NodeResources};
use node_kubelet::node::api::{
    ApiStatusSink, NodeApiConfig, NodeLease, register_node, register_node_with_backoff,
};
use node_kubelet::node::status::{
    NodeHealth, NodeStatusBuilder, NodeStatusConfig, NodeStatusReporter, SystemFacts,
};
use serde_json::{Value, json};
use tokio::time::Instant;

/// What the fake API server holds and saw.
#[derive(Default)]
struct State {
    nodes: BTreeMap<String, Value>,
    leases: BTreeMap<String, Value>,
    log: Vec<(Method, String, Instant)>,
    down: bool,
    next_rv: u64,
}

type Shared = Arc<Mutex<State>>;

fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn status(code: u16, reason: &str, message: &str) -> (u16, Value) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "reason": reason, "message": message, "code": code}),
    )
}

fn handle(s: &mut State, method: &Method, path: &str, body: &[u8]) -> (u16, Value) {
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    s.next_rv += 1;
    let rv = s.next_rv.to_string();
    match (method.clone(), parts.as_slice()) {
        (Method::POST, ["api", "v1", "nodes"]) => {
            let name = body["metadata"]["name"].as_str().unwrap().to_string();
            if s.nodes.contains_key(&name) {
                return status(409, "AlreadyExists", "nodes already exists");
            }
            let mut n = body.clone();
            n["metadata"]["uid"] = json!(format!("uid-{name}"));
            n["metadata"]["resourceVersion"] = json!(rv);
            s.nodes.insert(name, n.clone());
            (201, n)
        }
        (Method::GET, ["api", "v1", "nodes", name]) => match s.nodes.get(*name) {
            Some(n) => (200, n.clone()),
            None => status(404, "NotFound", "node not found"),
        },
        (Method::PATCH, ["api", "v1", "nodes", name, "status"]) => match s.nodes.get_mut(*name) {
            Some(n) => {
                merge(n, &body);
                n["metadata"]["resourceVersion"] = json!(rv);
                (200, n.clone())
            }
            None => status(404, "NotFound", "node not found"),
        },
        (
            Method::GET,
            [
                "apis",
                "coordination.k8s.io",
                "v1",
                "namespaces",
                "kube-node-lease",
                "leases",
                name,
            ],
        ) => match s.leases.get(*name) {
            Some(l) => (200, l.clone()),
            None => status(404, "NotFound", "lease not found"),
        },
        (
            Method::POST,
            [
                "apis",
                "coordination.k8s.io",
                "v1",
                "namespaces",
                "kube-node-lease",
                "leases",
            ],
        ) => {
            let name = body["metadata"]["name"].as_str().unwrap().to_string();
            if s.leases.contains_key(&name) {
                return status(409, "AlreadyExists", "lease already exists");
            }
            let mut l = body.clone();
            l["metadata"]["resourceVersion"] = json!(rv);
            s.leases.insert(name, l.clone());
            (201, l)
        }
        (
            Method::PUT,
            [
                "apis",
                "coordination.k8s.io",
                "v1",
                "namespaces",
                "kube-node-lease",
                "leases",
                name,
            ],
        ) => {
            let Some(old) = s.leases.get(*name) else {
                return status(404, "NotFound", "lease not found");
            };
            if old["metadata"]["resourceVersion"] != body["metadata"]["resourceVersion"] {
                return status(409, "Conflict", "the object has been modified");
            }
            let mut l = body.clone();
            l["metadata"]["resourceVersion"] = json!(rv);
            s.leases.insert(name.to_string(), l.clone());
            (200, l)
        }
        _ => status(404, "NotFound", &format!("no route {method} {path}")),
    }
}

fn fake_api() -> (kube::Client, Shared) {
    let state: Shared = Arc::default();
    let st = state.clone();
    let svc = tower::service_fn(move |req: Request<kube::client::Body>| {
        let st = st.clone();
        async move {
            let method = req.method().clone();
            let path = req.uri().path().to_string();
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let (code, value) = {
                let mut s = st.lock().unwrap();
                s.log.push((method.clone(), path.clone(), Instant::now()));
                if s.down {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionRefused,
                        "connection refused",
                    ));
                }
                handle(&mut s, &method, &path, &body)
            };
            let resp = Response::builder()
                .status(StatusCode::from_u16(code).unwrap())
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(serde_json::to_vec(&value).unwrap())))
                .unwrap();
            Ok::<_, std::io::Error>(resp)
        }
    });
    (kube::Client::new(svc, "default"), state)
}

fn count(state: &Shared, method: Method, path: &str) -> usize {
    state
        .lock()
        .unwrap()
        .log
        .iter()
        .filter(|(m, p, _)| *m == method && p == path)
        .count()
}

fn builder() -> NodeStatusBuilder {
    NodeStatusBuilder::with_facts(
        NodeStatusConfig {
            node_name: "n1".into(),
            hostname: Some("n1.local".into()),
            internal_ips: vec!["10.0.0.5".parse().unwrap()],
            container_runtime_version: "containerd://1.6.20".into(),
            allocatable: AllocatableConfig::default(),
            ..Default::default()
        },
        SystemFacts {
            kernel_version: "6.18.0".into(),
            os_image: "Debian GNU/Linux 13 (trixie)".into(),
            architecture: "amd64".into(),
            hostname: "n1.local".into(),
            ..Default::default()
        },
    )
}

fn capacity() -> NodeResources {
    NodeResources {
        cpu_milli: 2000,
        memory_bytes: 8 << 30,
        ephemeral_storage_bytes: 100 << 30,
        pods: 110,
    }
}

fn node_object() -> Node {
    builder().build_with_capacity(
        &NodeHealth::default(),
        k8s_openapi::jiff::Timestamp::now(),
        capacity(),
    )
}

const LEASE_PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/n1";
const LEASES_PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases";

#[tokio::test(start_paused = true)]
async fn registers_the_node_and_adopts_an_existing_one() {
    let (client, state) = fake_api();
    let created = register_node(&client, &node_object()).await.unwrap();
    assert_eq!(created.metadata.uid.as_deref(), Some("uid-n1"));
    {
        let s = state.lock().unwrap();
        let stored = &s.nodes["n1"];
        assert_eq!(stored["status"]["nodeInfo"]["kernelVersion"], "6.18.0");
        assert_eq!(stored["status"]["capacity"]["cpu"], "2");
        assert_eq!(
            stored["metadata"]["labels"]["kubernetes.io/hostname"],
            "n1.local"
        );
    }
    // a restarted kubelet registers again: 409, then it takes the existing object
    let again = register_node(&client, &node_object()).await.unwrap();
    assert_eq!(again.metadata.uid.as_deref(), Some("uid-n1"));
    assert_eq!(count(&state, Method::POST, "/api/v1/nodes"), 2);
    assert_eq!(count(&state, Method::GET, "/api/v1/nodes/n1"), 1);
}

#[tokio::test(start_paused = true)]
async fn lease_is_created_then_renewed_every_ten_seconds() {
    let (client, state) = fake_api();
    register_node(&client, &node_object()).await.unwrap();
    let start = Instant::now();
    let lease = NodeLease::new(client.clone(), "n1", NodeApiConfig::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(lease.run(async {
        let _ = stopped.await;
    }));
    tokio::time::sleep(Duration::from_secs(35)).await;
    stop.send(()).unwrap();
    task.await.unwrap();

    assert_eq!(count(&state, Method::POST, LEASES_PATH), 1, "created once");
    let renew_times: Vec<Duration> = state
        .lock()
        .unwrap()
        .log
        .iter()
        .filter(|(m, p, _)| *m == Method::PUT && p == LEASE_PATH)
        .map(|(_, _, t)| t.duration_since(start))
        .collect();
    assert_eq!(
        renew_times.iter().map(|d| d.as_secs()).collect::<Vec<_>>(),
        [10, 20, 30],
        "renewed every 10 s"
    );
    let s = state.lock().unwrap();
    let stored: Lease = serde_json::from_value(s.leases["n1"].clone()).unwrap();
    let spec = stored.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("n1"));
    assert_eq!(spec.lease_duration_seconds, Some(40));
    assert!(spec.renew_time.is_some());
    let owner = &stored.metadata.owner_references.unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("Node", "uid-n1")
    );
}

#[tokio::test(start_paused = true)]
async fn node_status_is_patched_only_on_change_or_every_five_minutes() {
    let (client, state) = fake_api();
    let reporter = NodeStatusReporter::new(Arc::new(ApiStatusSink::new(client)), builder())
        .with_capacity_fn(|| Ok(capacity()));
    let (health_tx, health_rx) = tokio::sync::watch::channel(NodeHealth::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(reporter.run(health_rx, async {
        let _ = stopped.await;
    }));
    let patches = || count(&state, Method::PATCH, "/api/v1/nodes/n1/status");

    // first check: the node is unknown (404), so it is registered, then patched
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(count(&state, Method::POST, "/api/v1/nodes"), 1);
    assert_eq!(patches(), 2, "404 patch, then the patch after registration");

    // unchanged for two minutes: 12 checks, no patch
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(patches(), 2);

    // memory pressure: patched at once, with the condition
    health_tx.send_modify(|h| h.memory_pressure = true);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(patches(), 3);
    {
        let s = state.lock().unwrap();
        let conds = s.nodes["n1"]["status"]["conditions"]
            .as_array()
            .unwrap()
            .clone();
        let mp = conds
            .iter()
            .find(|c| c["type"] == "MemoryPressure")
            .unwrap();
        assert_eq!(mp["status"], "True");
        assert_eq!(mp["reason"], "KubeletHasInsufficientMemory");
    }

    // unchanged again: the next patch comes 5 minutes after the last one
    tokio::time::sleep(Duration::from_secs(290)).await;
    assert_eq!(patches(), 3);
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(patches(), 4, "the periodic report after 5 min");

    stop.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn backs_off_while_the_api_server_is_unreachable_and_recovers() {
    let (client, state) = fake_api();
    register_node(&client, &node_object()).await.unwrap();
    state.lock().unwrap().down = true;
    let start = Instant::now();
    let lease = NodeLease::new(client.clone(), "n1", NodeApiConfig::default());
    let reporter = NodeStatusReporter::new(Arc::new(ApiStatusSink::new(client.clone())), builder())
        .with_capacity_fn(|| Ok(capacity()));
    let (_health_tx, health_rx) = tokio::sync::watch::channel(NodeHealth::default());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let lease_task = tokio::spawn(lease.run(wait(stopped.clone())));
    let status_task = tokio::spawn(reporter.run(health_rx, wait(stopped.clone())));

    tokio::time::sleep(Duration::from_secs(30)).await;
    let attempts: Vec<Duration> = state
        .lock()
        .unwrap()
        .log
        .iter()
        .filter(|(_, p, _)| p == LEASE_PATH)
        .map(|(_, _, t)| t.duration_since(start))
        .collect();
    // 200 ms doubling to 7 s: t = 0, .2, .6, 1.4, 3, 6.2, 12.6, 19.6, 26.6
    assert_eq!(attempts.len(), 9, "{attempts:?}");
    let gaps: Vec<u128> = attempts
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis())
        .collect();
    assert_eq!(gaps, [200, 400, 800, 1600, 3200, 6400, 7000, 7000]);
    // the status loop kept going (one attempt per 10 s check), it did not stop on errors
    let status_attempts = count(&state, Method::PATCH, "/api/v1/nodes/n1/status");
    assert_eq!(status_attempts, 3, "checks at 0, 10, 20 s");

    // the API server comes back: within the next back-off the lease exists and status is patched
    state.lock().unwrap().down = false;
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(
        state.lock().unwrap().leases.contains_key("n1"),
        "lease created after recovery"
    );
    let conditions = state.lock().unwrap().nodes["n1"]["status"]["conditions"].clone();
    assert_eq!(conditions.as_array().unwrap().len(), 5);

    stop.send(true).unwrap();
    lease_task.await.unwrap();
    status_task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn registration_retries_with_backoff() {
    let (client, state) = fake_api();
    state.lock().unwrap().down = true;
    let st = state.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        st.lock().unwrap().down = false;
    });
    let node = register_node_with_backoff(
        &client,
        &node_object(),
        &NodeApiConfig::default(),
        std::future::pending(),
    )
    .await
    .expect("registered");
    assert_eq!(node.metadata.uid.as_deref(), Some("uid-n1"));
    // attempts at 0, .2, .6, 1.4, 3.0, 6.2 (the last one succeeds)
    assert_eq!(count(&state, Method::POST, "/api/v1/nodes"), 6);
}
