//! The API server disappears for five minutes under a running kubelet (fake runtime, pod status
//! through `ApiStatusSink`, the node Lease through `NodeLease`), on tokio's paused clock against
//! an in-process fake API server that can be stopped and started (it refuses connections while
//! stopped). Pods keep running and keep being managed (a container that exits meanwhile is
//! restarted), status writes keep being retried, and once the server is back the pod status
//! and the Lease catch up.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use node_core::Pod;
use node_kubelet::node::api::{ApiStatusSink, NodeApiConfig, NodeLease};
use node_kubelet::{CancellationToken, Kubelet, KubeletConfig};
use node_test_support::{FakeRuntime, ScriptedPodSource};
use serde_json::{Value, json};
use tokio::time::Instant;

/// The fake API server: pods (status patches merged), leases, a request log, and a switch.
#[derive(Default)]
struct Server {
    pods: BTreeMap<String, Value>,
    leases: BTreeMap<String, Value>,
    /// (method, path, time, answered)
    log: Vec<(Method, String, Instant, bool)>,
    stopped: bool,
}

type Shared = Arc<Mutex<Server>>;

fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn not_found(what: &str) -> (u16, Value) {
    (
        404,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "reason": "NotFound", "message": format!("{what} not found"), "code": 404}),
    )
}

fn handle(s: &mut Server, method: &Method, path: &str, body: &[u8]) -> (u16, Value) {
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method.clone(), parts.as_slice()) {
        (Method::PATCH, ["api", "v1", "namespaces", ns, "pods", name, "status"]) => {
            let key = format!("{ns}/{name}");
            let Some(pod) = s.pods.get_mut(&key) else {
                return not_found(&key);
            };
            merge(pod, &body);
            (200, pod.clone())
        }
        (
            Method::GET,
            [
                "apis",
                "coordination.k8s.io",
                "v1",
                "namespaces",
                _,
                "leases",
                name,
            ],
        ) => match s.leases.get(*name) {
            Some(l) => (200, l.clone()),
            None => not_found(name),
        },
        (
            Method::POST | Method::PUT,
            [
                "apis",
                "coordination.k8s.io",
                "v1",
                "namespaces",
                _,
                "leases",
                ..,
            ],
        ) => {
            let name = body["metadata"]["name"].as_str().unwrap_or("").to_string();
            s.leases.insert(name, body.clone());
            (if *method == Method::POST { 201 } else { 200 }, body)
        }
        _ => not_found(path),
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
                let up = !s.stopped;
                s.log
                    .push((method.clone(), path.clone(), Instant::now(), up));
                if !up {
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

async fn until<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const POD: &str = "metadata: {name: web, namespace: shop, uid: uid-web}\nspec:\n  containers: [{name: c, image: \"img:1\"}]\n";

#[tokio::test(start_paused = true)]
async fn pods_keep_running_through_an_api_outage_and_status_catches_up() {
    let (client, api) = fake_api();
    api.lock().unwrap().pods.insert(
        "shop/web".into(),
        json!({"metadata": {"name": "web", "namespace": "shop"}}),
    );
    let rt = FakeRuntime::new();
    rt.add_image("img:1");
    let source = ScriptedPodSource::new("api");
    source.apply(serde_saphyr::from_str::<Pod>(POD).unwrap());
    let logs = tempfile::tempdir().unwrap();
    let kubelet = Kubelet::builder("n1")
        .source(Arc::new(source.clone()))
        .runtime(Arc::new(rt.clone()), Arc::new(rt.clone()))
        .status(Arc::new(ApiStatusSink::new(client.clone())))
        .config(KubeletConfig {
            pod_log_root: logs.path().to_path_buf(),
            ..Default::default()
        })
        .build()
        .unwrap();
    let token = CancellationToken::new();
    let t = token.clone();
    let kubelet_task = tokio::spawn(async move { kubelet.run(t).await.unwrap() });
    let lease = NodeLease::new(client.clone(), "n1", NodeApiConfig::default());
    let lease_token = token.clone();
    let lease_task = tokio::spawn(lease.run(async move { lease_token.cancelled().await }));

    let phase = |api: &Shared| {
        api.lock().unwrap().pods["shop/web"]["status"]["phase"]
            .as_str()
            .map(String::from)
    };
    let restarts = |api: &Shared| {
        api.lock().unwrap().pods["shop/web"]["status"]["containerStatuses"][0]["restartCount"]
            .as_i64()
    };
    until(
        "the pod Running in the API",
        Duration::from_secs(30),
        || (phase(&api).as_deref() == Some("Running")).then_some(()),
    )
    .await;
    assert_eq!(restarts(&api), Some(0));
    until("the lease", Duration::from_secs(30), || {
        api.lock().unwrap().leases.get("n1").cloned()
    })
    .await;

    // the API server goes away for five minutes
    let outage = Instant::now();
    api.lock().unwrap().stopped = true;
    let calls_before = rt.calls().len();
    let container = rt.containers()[0].id.clone();
    tokio::time::sleep(Duration::from_secs(60)).await;
    // the container exits meanwhile: the kubelet restarts it without the API server
    rt.exit_container(&container, 1, "Error");
    tokio::time::sleep(Duration::from_secs(240)).await;

    let running: Vec<_> = rt
        .containers()
        .into_iter()
        .filter(|c| c.state == node_core::cri::ContainerState::ContainerRunning)
        .collect();
    assert_eq!(
        running.len(),
        1,
        "one running container during the outage: {running:?}"
    );
    assert_ne!(
        running[0].id, container,
        "the exited container was not restarted"
    );
    let stops: Vec<String> = rt.calls()[calls_before..]
        .iter()
        .filter(|c| c.starts_with("stop_pod_sandbox") || c.starts_with("remove_pod_sandbox"))
        .cloned()
        .collect();
    assert!(
        stops.is_empty(),
        "the pod was torn down during the outage: {stops:?}"
    );
    let (failed_status, failed_lease) = {
        let s = api.lock().unwrap();
        let failed = |p: &str| {
            s.log
                .iter()
                .filter(|(_, path, t, up)| !up && *t >= outage && path.contains(p))
                .count()
        };
        (failed("/pods/web/status"), failed("/leases/"))
    };
    eprintln!(
        "during the 5 min outage: {failed_status} pod status writes and {failed_lease} lease renewals refused"
    );
    assert!(
        failed_status >= 10,
        "pod status writes were not retried during the outage ({failed_status})"
    );
    assert!(
        failed_lease >= 10,
        "lease renewals not retried ({failed_lease})"
    );
    assert_eq!(restarts(&api), Some(0), "the API saw a write while stopped");

    // back: status and lease catch up within a few seconds
    api.lock().unwrap().stopped = false;
    let back = Instant::now();
    until("the restart in the API", Duration::from_secs(15), || {
        (restarts(&api) == Some(1) && phase(&api).as_deref() == Some("Running")).then_some(())
    })
    .await;
    let caught_up = back.elapsed();
    until(
        "the lease renewed after the outage",
        Duration::from_secs(15),
        || {
            let s = api.lock().unwrap();
            s.log
                .iter()
                .any(|(m, p, t, up)| {
                    *up && *t >= back && *m == Method::PUT && p.contains("/leases/")
                })
                .then_some(())
        },
    )
    .await;
    eprintln!("status caught up {caught_up:?} after the API server came back");

    token.cancel();
    kubelet_task.await.unwrap();
    lease_task.await.unwrap();
}
