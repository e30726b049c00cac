//! A fake Kubernetes API server for the node agent's cluster-mode tests: an in-process HTTP server
//! on 127.0.0.1 that speaks the few endpoints a node uses, with real list/watch semantics.
//!
//! - list (`GET .../pods`, with `fieldSelector=spec.nodeName=X` honoured), watch (`?watch=true`:
//!   newline-delimited watch events, replayed from the requested `resourceVersion`, then live);
//! - get, create (409 when it exists), replace, delete (404 when missing) of one object;
//! - merge patches of an object or its `status` subresource.
//!
//! Every request is recorded ([`FakeApiServer::requests`]); the test changes objects with
//! [`FakeApiServer::apply`] / [`FakeApiServer::delete`] and reads them with
//! [`FakeApiServer::get`]. Objects are kept as JSON; there is no validation, admission or
//! authentication.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::broadcast;

/// One recorded request: method, path with query, body.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path and query.
    pub uri: String,
    /// The body as JSON (`Null` when empty or not JSON).
    pub body: Value,
}

/// One stored change, for watches.
#[derive(Debug, Clone)]
struct Change {
    rv: u64,
    /// `pods`, `services`, `endpointslices`, `nodes`, `leases`.
    resource: String,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct Store {
    rv: u64,
    /// resource -> (namespace, name) -> object
    objects: BTreeMap<String, BTreeMap<(String, String), Value>>,
    log: Vec<Change>,
    requests: Vec<Recorded>,
}

struct Shared {
    store: Mutex<Store>,
    events: broadcast::Sender<Change>,
}

/// The fake API server; stops when dropped.
pub struct FakeApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn status(code: StatusCode, reason: &str, message: String) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    });
    (
        code,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn ok(code: StatusCode, v: &Value) -> Response {
    (code, [("content-type", "application/json")], v.to_string()).into_response()
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().expect("object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// The list kind of a resource (for the `kind` of list answers).
fn list_kind(resource: &str) -> &'static str {
    match resource {
        "pods" => "PodList",
        "services" => "ServiceList",
        "endpointslices" => "EndpointSliceList",
        "nodes" => "NodeList",
        "leases" => "LeaseList",
        _ => "List",
    }
}

/// What a request addresses: resource, namespace, name, subresource.
#[derive(Debug)]
struct Target {
    resource: String,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = match segs.as_slice() {
        ["api", "v1", rest @ ..] => rest,
        ["apis", _group, _version, rest @ ..] => rest,
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    let s = |i: usize| rest.get(i).map(|x| x.to_string());
    Some(Target {
        resource: s(0)?,
        namespace,
        name: s(1),
        sub: s(2),
    })
}

fn query(uri: &axum::http::Uri) -> BTreeMap<String, String> {
    uri.query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| {
            let v = v
                .replace("%3D", "=")
                .replace("%3d", "=")
                .replace("%2F", "/");
            (k.to_string(), v)
        })
        .collect()
}

/// `spec.nodeName=X` style field selectors (the only kind the node uses).
fn matches_fields(obj: &Value, selector: Option<&String>) -> bool {
    let Some(sel) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    sel.split(',').all(|term| match term.split_once('=') {
        Some((field, want)) => {
            let ptr = format!("/{}", field.replace('.', "/"));
            obj.pointer(&ptr)
                .and_then(Value::as_str)
                .unwrap_or_default()
                == want
        }
        None => true,
    })
}

impl Shared {
    fn record_change(&self, st: &mut Store, resource: &str, kind: &'static str, object: Value) {
        let c = Change {
            rv: st.rv,
            resource: resource.to_string(),
            kind,
            object,
        };
        st.log.push(c.clone());
        let _ = self.events.send(c);
    }

    /// Store `obj` (create or replace), bumping its resourceVersion.
    fn put(&self, st: &mut Store, resource: &str, ns: &str, mut obj: Value) -> Value {
        st.rv += 1;
        let rv = st.rv;
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let existed = st
            .objects
            .get(resource)
            .is_some_and(|m| m.contains_key(&(ns.to_string(), name.clone())));
        let meta = &mut obj["metadata"];
        meta["resourceVersion"] = json!(rv.to_string());
        if meta.get("uid").is_none() {
            meta["uid"] = json!(format!("uid-{resource}-{ns}-{name}"));
        }
        if meta.get("creationTimestamp").is_none() {
            meta["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        if !ns.is_empty() {
            meta["namespace"] = json!(ns);
        }
        st.objects
            .entry(resource.to_string())
            .or_default()
            .insert((ns.to_string(), name), obj.clone());
        let kind = if existed { "MODIFIED" } else { "ADDED" };
        self.record_change(st, resource, kind, obj.clone());
        obj
    }
}

async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let method = req.method().clone();
    let uri = req.uri().clone();
    let body = axum::body::to_bytes(req.into_body(), 16 << 20)
        .await
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    shared.store.lock().unwrap().requests.push(Recorded {
        method: method.to_string(),
        uri: uri.to_string(),
        body: body.clone(),
    });
    let Some(t) = parse_path(uri.path()) else {
        return status(StatusCode::NOT_FOUND, "NotFound", format!("no route {uri}"));
    };
    let q = query(&uri);
    let ns = t.namespace.clone().unwrap_or_default();
    match (&method, &t.name) {
        (&Method::GET, None)
            if matches!(q.get("watch").map(String::as_str), Some("true" | "1")) =>
        {
            watch(&shared, &t, &q)
        }
        (&Method::GET, None) => {
            let st = shared.store.lock().unwrap();
            let items: Vec<Value> = st
                .objects
                .get(&t.resource)
                .into_iter()
                .flat_map(|m| m.iter())
                .filter(|((ons, _), _)| t.namespace.is_none() || *ons == ns)
                .map(|(_, o)| o.clone())
                .filter(|o| matches_fields(o, q.get("fieldSelector")))
                .collect();
            ok(
                StatusCode::OK,
                &json!({"kind": list_kind(&t.resource), "apiVersion": "v1",
                    "metadata": {"resourceVersion": st.rv.to_string()}, "items": items}),
            )
        }
        (&Method::POST, None) => {
            let mut st = shared.store.lock().unwrap();
            let name = body["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let ns = body["metadata"]["namespace"]
                .as_str()
                .map(String::from)
                .unwrap_or(ns);
            if st
                .objects
                .get(&t.resource)
                .is_some_and(|m| m.contains_key(&(ns.clone(), name.clone())))
            {
                return status(
                    StatusCode::CONFLICT,
                    "AlreadyExists",
                    format!("{} {name} already exists", t.resource),
                );
            }
            let obj = shared.put(&mut st, &t.resource, &ns, body);
            ok(StatusCode::CREATED, &obj)
        }
        (_, Some(name)) => {
            let mut st = shared.store.lock().unwrap();
            let key = (ns.clone(), name.clone());
            let Some(current) = st
                .objects
                .get(&t.resource)
                .and_then(|m| m.get(&key))
                .cloned()
            else {
                return status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!("{} \"{name}\" not found", t.resource),
                );
            };
            match method {
                Method::GET => ok(StatusCode::OK, &current),
                Method::PUT => {
                    let obj = shared.put(&mut st, &t.resource, &ns, body);
                    ok(StatusCode::OK, &obj)
                }
                Method::PATCH => {
                    let mut obj = current;
                    match t.sub.as_deref() {
                        // a status patch changes only the status
                        Some("status") => merge(&mut obj["status"], &body["status"]),
                        _ => merge(&mut obj, &body),
                    }
                    let obj = shared.put(&mut st, &t.resource, &ns, obj);
                    ok(StatusCode::OK, &obj)
                }
                Method::DELETE => {
                    st.objects.get_mut(&t.resource).map(|m| m.remove(&key));
                    st.rv += 1;
                    let mut gone = current;
                    gone["metadata"]["resourceVersion"] = json!(st.rv.to_string());
                    shared.record_change(&mut st, &t.resource, "DELETED", gone.clone());
                    ok(StatusCode::OK, &gone)
                }
                _ => status(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "MethodNotAllowed",
                    method.to_string(),
                ),
            }
        }
        _ => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            method.to_string(),
        ),
    }
}

/// A watch: the changes after `resourceVersion` from the log, then live ones, one JSON per line.
fn watch(shared: &Arc<Shared>, t: &Target, q: &BTreeMap<String, String>) -> Response {
    let since: u64 = q
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (backlog, rx) = {
        let st = shared.store.lock().unwrap();
        let backlog: Vec<Change> = st.log.iter().filter(|c| c.rv > since).cloned().collect();
        (backlog, shared.events.subscribe())
    };
    let resource = t.resource.clone();
    let ns = t.namespace.clone();
    let fields = q.get("fieldSelector").cloned();
    let wanted = move |c: &Change| {
        c.resource == resource
            && ns
                .as_ref()
                .is_none_or(|n| c.object["metadata"]["namespace"].as_str() == Some(n))
            && matches_fields(&c.object, fields.as_ref())
    };
    let line = |c: &Change| {
        Ok::<_, std::convert::Infallible>(Bytes::from(format!(
            "{}\n",
            json!({"type": c.kind, "object": c.object})
        )))
    };
    let wanted2 = wanted.clone();
    let first = futures::stream::iter(
        backlog
            .into_iter()
            .filter(|c| wanted(c))
            .map(|c| line(&c))
            .collect::<Vec<_>>(),
    );
    let live = futures::stream::unfold(rx, move |mut rx| {
        let wanted = wanted2.clone();
        async move {
            loop {
                match rx.recv().await {
                    Ok(c) if c.rv > since && wanted(&c) => return Some((line(&c), rx)),
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        }
    });
    use futures::StreamExt;
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        Body::from_stream(first.chain(live)),
    )
        .into_response()
}

impl FakeApiServer {
    /// Start on `127.0.0.1:0` (in the calling thread's network namespace) on the current tokio
    /// runtime.
    pub async fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        Self::serve(listener)
    }

    /// Serve on a listener bound by the caller (e.g. inside a network namespace).
    pub fn serve(listener: std::net::TcpListener) -> Self {
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local addr");
        let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
        let (events, _) = broadcast::channel(4096);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            events,
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, shared, task }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kube client for this server.
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url().parse().expect("url"));
        kube::Client::try_from(config).expect("kube client")
    }

    /// A kubeconfig file's text for this server (no credentials).
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n\
             current-context: fake\nusers:\n- name: fake\n  user: {{}}\n",
            self.url()
        )
    }

    /// Create or replace an object of `resource` (`pods`, `services`, `endpointslices`...).
    pub fn apply(&self, resource: &str, obj: Value) -> Value {
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or(if matches!(resource, "nodes") {
                ""
            } else {
                "default"
            })
            .to_string();
        let mut st = self.shared.store.lock().unwrap();
        self.shared.put(&mut st, resource, &ns, obj)
    }

    /// Delete an object (a watch sees `DELETED`); whether it existed.
    pub fn delete(&self, resource: &str, namespace: &str, name: &str) -> bool {
        let mut st = self.shared.store.lock().unwrap();
        let key = (namespace.to_string(), name.to_string());
        let Some(mut gone) = st.objects.get_mut(resource).and_then(|m| m.remove(&key)) else {
            return false;
        };
        st.rv += 1;
        gone["metadata"]["resourceVersion"] = json!(st.rv.to_string());
        self.shared
            .record_change(&mut st, resource, "DELETED", gone);
        true
    }

    /// One object, if stored.
    pub fn get(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        let st = self.shared.store.lock().unwrap();
        st.objects
            .get(resource)?
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.store.lock().unwrap().requests.clone()
    }

    /// Waits until `pred` holds for the server's state (polling every 50 ms) or `timeout`.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&Self) -> bool,
    ) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if pred(self) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!("{what}: not within {timeout:?}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
