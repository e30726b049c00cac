//! A fake Kubernetes API server for tests of everything that talks to one (node registration,
//! the node Lease, node and pod status, mirror pods, service-account tokens, pod and service
//! sources): objects of any resource kept as JSON in memory, with the semantics a node relies
//! on, and a [`kube::Client`] pointed at it.
//!
//! - get, list (field selectors `a.b=x`, label selectors `k=v`, `k!=v`, `k`, `!k`), create
//!   (409 `AlreadyExists`), replace (409 `Conflict` on a stale `resourceVersion`), delete (404
//!   when missing, 409 when a `preconditions.uid` does not match), merge patches of an object or
//!   of its `status` subresource (which changes only the status);
//! - watches (`?watch=true`): replayed from the requested `resourceVersion` (the current objects
//!   when none), then live, ended after `timeoutSeconds`; `sendInitialEvents` with the closing
//!   bookmark;
//! - `serviceaccounts/<name>/token` (TokenRequest): a token `token-N` with the expiration asked
//!   for (404 when the service account does not exist);
//! - `subjectaccessreviews` (SubjectAccessReview): answered from the policy a test sets
//!   ([`FakeApiServer::set_access_policy`], [`FakeApiServer::allow_access`]; everything is denied
//!   without one), not stored;
//! - `tokenreviews` (TokenReview): a token the test gave a user ([`FakeApiServer::add_token`])
//!   is authenticated as that user (name, uid, groups, extra), any other is not; not stored
//!   (the request log shows them, [`FakeApiServer::token_reviews`]);
//! - compaction ([`FakeApiServer::compact`]): a watch from a forgotten resourceVersion gets
//!   `410 Gone` (`Expired`), as a client resuming after a long outage does;
//! - an outage switch ([`FakeApiServer::set_down`]): requests fail as a refused connection and
//!   open watches end;
//! - a request log ([`FakeApiServer::requests`]) with the tokio time of each request, to assert
//!   cadence (works with tokio's paused clock) and the bodies of patches.
//!
//! [`FakeApiServer::client`] is in-process (a `tower` service, no network, fine with a paused
//! clock); [`FakeApiServer::start`] / [`FakeApiServer::serve`] also listen on TCP for clients in
//! other processes ([`FakeApiServer::kubeconfig`]). There is no validation, admission,
//! authentication or garbage collection.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::Frame;
use k8s_openapi::api::authentication::v1::{TokenReviewSpec, UserInfo};
use k8s_openapi::api::authorization::v1::SubjectAccessReviewSpec;
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

/// One recorded request.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// `GET`, `POST`... (compares with `&str`: `r.method == "PUT"`).
    pub method: Method,
    /// The path.
    pub path: String,
    /// The path and query, as sent (percent-encoded).
    pub uri: String,
    /// The body as JSON (`Null` when empty or not JSON).
    pub body: Value,
    /// When it arrived (tokio time: paused-clock tests see virtual time).
    pub at: Instant,
    /// Whether it was answered (`false`: the server was down).
    pub answered: bool,
}

/// One change of the store, for watches.
#[derive(Debug, Clone)]
struct Change {
    rv: u64,
    resource: String,
    kind: &'static str,
    object: Value,
}

type Key = (String, String);

#[derive(Default)]
struct Store {
    rv: u64,
    /// resource -> (namespace, name) -> object
    objects: BTreeMap<String, BTreeMap<Key, Value>>,
    changes: Vec<Change>,
    /// The resourceVersion up to which the changes are forgotten ([`FakeApiServer::compact`]).
    compacted: u64,
    requests: Vec<Recorded>,
    tokens_issued: u64,
}

/// Decides a SubjectAccessReview from its spec.
type AccessPolicy = Arc<dyn Fn(&SubjectAccessReviewSpec) -> bool + Send + Sync>;

struct Shared {
    store: Mutex<Store>,
    access: Mutex<Option<AccessPolicy>>,
    /// token -> the user it authenticates (TokenReview)
    tokens: Mutex<BTreeMap<String, UserInfo>>,
    events: broadcast::Sender<Change>,
    up: watch::Sender<bool>,
}

/// Resources without a namespace.
const CLUSTER_SCOPED: &[&str] = &[
    "nodes",
    "namespaces",
    "persistentvolumes",
    "storageclasses",
    "runtimeclasses",
    "priorityclasses",
    "clusterroles",
    "clusterrolebindings",
    "csinodes",
];

type Body = UnsyncBoxBody<Bytes, std::io::Error>;
type Answer = Result<Response<Body>, std::io::Error>;

/// The fake API server; its listener (if any) stops when it is dropped.
pub struct FakeApiServer {
    shared: Arc<Shared>,
    listening: Option<(SocketAddr, tokio::task::JoinHandle<()>)>,
}

impl Default for FakeApiServer {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        if let Some((_, task)) = &self.listening {
            task.abort();
        }
    }
}

impl std::fmt::Debug for FakeApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeApiServer")
            .field("addr", &self.listening.as_ref().map(|l| l.0))
            .finish_non_exhaustive()
    }
}

fn json_body(v: &Value) -> Body {
    Full::new(Bytes::from(v.to_string()))
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn respond(code: StatusCode, v: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(json_body(v))
        .expect("response")
}

fn failure(code: StatusCode, reason: &str, message: String) -> Response<Body> {
    respond(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": reason, "code": code.as_u16()}),
    )
}

fn refused() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused")
}

/// RFC 7386 JSON merge patch (`null` removes).
pub fn merge_patch(target: &mut Value, patch: &Value) {
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
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn list_kind(resource: &str) -> String {
    let singular = resource.strip_suffix('s').unwrap_or(resource);
    let mut kind = match singular {
        "endpointslice" => "EndpointSlice".to_string(),
        "serviceaccount" => "ServiceAccount".to_string(),
        s => {
            let mut c = s.chars();
            c.next()
                .map(|f| f.to_uppercase().chain(c).collect())
                .unwrap_or_default()
        }
    };
    kind.push_str("List");
    kind
}

/// What a request addresses.
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

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query(uri: &http::Uri) -> BTreeMap<String, String> {
    uri.query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (percent_decode(k), percent_decode(v)))
        .collect()
}

/// A field selector (`spec.nodeName=x,metadata.name!=y`) holds for `obj`.
fn matches_fields(obj: &Value, selector: Option<&String>) -> bool {
    let Some(sel) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    sel.split(',').all(|term| {
        let (field, want, eq) = match term.split_once("!=") {
            Some((f, w)) => (f, w, false),
            None => match term.split_once('=') {
                Some((f, w)) => (f, w.trim_start_matches('='), true),
                None => return true,
            },
        };
        let ptr = format!("/{}", field.replace('.', "/"));
        let got = obj
            .pointer(&ptr)
            .and_then(Value::as_str)
            .unwrap_or_default();
        (got == want) == eq
    })
}

/// A label selector holds for `obj`; `Err` for a set-based one (not supported).
fn matches_labels(obj: &Value, selector: Option<&String>) -> Result<bool, String> {
    let Some(sel) = selector.filter(|s| !s.is_empty()) else {
        return Ok(true);
    };
    let labels = &obj["metadata"]["labels"];
    let mut all = true;
    for term in sel.split(',').map(str::trim) {
        if term.contains(" in ") || term.contains(" notin ") || term.contains('(') {
            return Err(format!("set-based label selector {term:?} not supported"));
        }
        let ok = if let Some((k, v)) = term.split_once("!=") {
            labels[k].as_str() != Some(v)
        } else if let Some((k, v)) = term.split_once('=') {
            labels[k].as_str() == Some(v.trim_start_matches('='))
        } else if let Some(k) = term.strip_prefix('!') {
            labels.get(k).is_none()
        } else {
            labels.get(term).is_some()
        };
        all &= ok;
    }
    Ok(all)
}

fn now_rfc3339(plus_secs: i64) -> String {
    let t = k8s_openapi::jiff::Timestamp::now()
        .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(plus_secs))
        .expect("time");
    format!("{t:.0}")
}

impl Shared {
    fn record_change(&self, st: &mut Store, resource: &str, kind: &'static str, object: Value) {
        let c = Change {
            rv: st.rv,
            resource: resource.to_string(),
            kind,
            object,
        };
        st.changes.push(c.clone());
        let _ = self.events.send(c);
    }

    /// Stores `obj` (create or replace), keeping the uid of the object it replaces and
    /// bumping its resourceVersion.
    fn put(&self, st: &mut Store, resource: &str, ns: &str, mut obj: Value) -> Value {
        st.rv += 1;
        let rv = st.rv;
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let key = (ns.to_string(), name.clone());
        let old = st.objects.get(resource).and_then(|m| m.get(&key)).cloned();
        let meta = &mut obj["metadata"];
        meta["resourceVersion"] = json!(rv.to_string());
        match &old {
            Some(o) => {
                meta["uid"] = o["metadata"]["uid"].clone();
                meta["creationTimestamp"] = o["metadata"]["creationTimestamp"].clone();
            }
            None => {
                if meta.get("uid").is_none_or(Value::is_null) {
                    meta["uid"] = json!(format!("{name}-uid-{rv}"));
                }
                if meta.get("creationTimestamp").is_none_or(Value::is_null) {
                    meta["creationTimestamp"] = json!(now_rfc3339(0));
                }
            }
        }
        if !ns.is_empty() {
            meta["namespace"] = json!(ns);
        }
        st.objects
            .entry(resource.to_string())
            .or_default()
            .insert(key, obj.clone());
        let kind = if old.is_some() { "MODIFIED" } else { "ADDED" };
        self.record_change(st, resource, kind, obj.clone());
        obj
    }

    fn remove(&self, st: &mut Store, resource: &str, key: &Key) -> Option<Value> {
        let mut gone = st.objects.get_mut(resource)?.remove(key)?;
        st.rv += 1;
        gone["metadata"]["resourceVersion"] = json!(st.rv.to_string());
        self.record_change(st, resource, "DELETED", gone.clone());
        Some(gone)
    }

    fn answer(self: &Arc<Self>, method: &Method, uri: &http::Uri, body: &Value) -> Answer {
        let Some(t) = parse_path(uri.path()) else {
            return Ok(failure(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("no route {uri}"),
            ));
        };
        if t.resource == "subjectaccessreviews" && method == Method::POST && t.name.is_none() {
            return Ok(self.review_access(body));
        }
        if t.resource == "tokenreviews" && method == Method::POST && t.name.is_none() {
            return Ok(self.review_token(body));
        }
        let q = query(uri);
        let ns = t.namespace.clone().unwrap_or_default();
        let mut st = self.store.lock().expect("store");
        match (method, &t.name) {
            (&Method::GET, None) if q.get("watch").is_some_and(|w| w == "true" || w == "1") => {
                drop(st);
                Ok(self.watch(&t, &q))
            }
            (&Method::GET, None) => {
                let mut items = Vec::new();
                for ((ons, _), o) in st.objects.get(&t.resource).into_iter().flatten() {
                    if t.namespace.as_ref().is_some_and(|n| n != ons)
                        || !matches_fields(o, q.get("fieldSelector"))
                    {
                        continue;
                    }
                    match matches_labels(o, q.get("labelSelector")) {
                        Ok(true) => items.push(o.clone()),
                        Ok(false) => {}
                        Err(e) => return Ok(failure(StatusCode::BAD_REQUEST, "BadRequest", e)),
                    }
                }
                Ok(respond(
                    StatusCode::OK,
                    &json!({"kind": list_kind(&t.resource), "apiVersion": "v1",
                        "metadata": {"resourceVersion": st.rv.to_string()}, "items": items}),
                ))
            }
            (&Method::POST, None) => {
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
                    return Ok(failure(
                        StatusCode::CONFLICT,
                        "AlreadyExists",
                        format!("{} \"{name}\" already exists", t.resource),
                    ));
                }
                let obj = self.put(&mut st, &t.resource, &ns, body.clone());
                Ok(respond(StatusCode::CREATED, &obj))
            }
            (_, Some(name)) => {
                let key = (ns.clone(), name.clone());
                let Some(current) = st
                    .objects
                    .get(&t.resource)
                    .and_then(|m| m.get(&key))
                    .cloned()
                else {
                    return Ok(failure(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        format!("{} \"{name}\" not found", t.resource),
                    ));
                };
                match (method, t.sub.as_deref()) {
                    (&Method::POST, Some("token")) if t.resource == "serviceaccounts" => {
                        st.tokens_issued += 1;
                        let secs = body["spec"]["expirationSeconds"].as_i64().unwrap_or(3600);
                        let mut out = body.clone();
                        out["status"] = json!({"token": format!("token-{}", st.tokens_issued),
                            "expirationTimestamp": now_rfc3339(secs)});
                        Ok(respond(StatusCode::CREATED, &out))
                    }
                    (&Method::GET, _) => Ok(respond(StatusCode::OK, &current)),
                    (&Method::PUT, sub) => {
                        let sent = &body["metadata"]["resourceVersion"];
                        if !sent.is_null()
                            && sent.as_str() != Some("")
                            && *sent != current["metadata"]["resourceVersion"]
                        {
                            return Ok(failure(
                                StatusCode::CONFLICT,
                                "Conflict",
                                format!(
                                    "Operation cannot be fulfilled on {} \"{name}\": the object has been modified",
                                    t.resource
                                ),
                            ));
                        }
                        let obj = match sub {
                            Some("status") => {
                                let mut o = current;
                                o["status"] = body["status"].clone();
                                o
                            }
                            _ => body.clone(),
                        };
                        let obj = self.put(&mut st, &t.resource, &ns, obj);
                        Ok(respond(StatusCode::OK, &obj))
                    }
                    (&Method::PATCH, sub) => {
                        let mut obj = current;
                        match sub {
                            // a status patch changes only the status
                            Some("status") => merge_patch(&mut obj["status"], &body["status"]),
                            _ => merge_patch(&mut obj, body),
                        }
                        let obj = self.put(&mut st, &t.resource, &ns, obj);
                        Ok(respond(StatusCode::OK, &obj))
                    }
                    (&Method::DELETE, None) => {
                        let want = &body["preconditions"]["uid"];
                        if !want.is_null() && *want != current["metadata"]["uid"] {
                            return Ok(failure(
                                StatusCode::CONFLICT,
                                "Conflict",
                                format!("Precondition failed: UID in precondition: {want}"),
                            ));
                        }
                        let gone = self.remove(&mut st, &t.resource, &key);
                        Ok(respond(StatusCode::OK, &gone.unwrap_or(current)))
                    }
                    _ => Ok(failure(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "MethodNotAllowed",
                        format!("{method} {uri}"),
                    )),
                }
            }
            _ => Ok(failure(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!("{method} {uri}"),
            )),
        }
    }

    /// A SubjectAccessReview answered from the policy (denied without one).
    fn review_access(&self, body: &Value) -> Response<Body> {
        let spec: SubjectAccessReviewSpec = match serde_json::from_value(body["spec"].clone()) {
            Ok(s) => s,
            Err(e) => {
                return failure(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    format!("SubjectAccessReview spec: {e}"),
                );
            }
        };
        let policy = self.access.lock().expect("access").clone();
        let allowed = policy.is_some_and(|p| p(&spec));
        let reason = if allowed {
            "allowed by the test's policy"
        } else {
            "not allowed by the test's policy"
        };
        let mut answer = body.clone();
        answer["status"] = json!({"allowed": allowed, "reason": reason});
        respond(StatusCode::CREATED, &answer)
    }

    fn review_token(&self, body: &Value) -> Response<Body> {
        let spec: TokenReviewSpec = match serde_json::from_value(body["spec"].clone()) {
            Ok(s) => s,
            Err(e) => {
                return failure(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    format!("TokenReview spec: {e}"),
                );
            }
        };
        let token = spec.token.unwrap_or_default();
        let user = self.tokens.lock().expect("tokens").get(&token).cloned();
        let mut answer = body.clone();
        answer["status"] = match user {
            Some(u) => json!({"authenticated": true, "user": u}),
            None => json!({"authenticated": false}),
        };
        respond(StatusCode::CREATED, &answer)
    }

    /// A watch: the changes after `resourceVersion` (the current objects when none or `0`),
    /// then live ones, one JSON event per line, until `timeoutSeconds` or an outage.
    fn watch(self: &Arc<Self>, t: &Target, q: &BTreeMap<String, String>) -> Response<Body> {
        let since: u64 = q
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let initial_events = q.get("sendInitialEvents").is_some_and(|v| v == "true");
        let resource = t.resource.clone();
        let ns = t.namespace.clone();
        let fields = q.get("fieldSelector").cloned();
        let labels = q.get("labelSelector").cloned();
        let wanted = move |c: &Change| {
            c.resource == resource
                && ns
                    .as_ref()
                    .is_none_or(|n| c.object["metadata"]["namespace"].as_str() == Some(n))
                && matches_fields(&c.object, fields.as_ref())
                && matches_labels(&c.object, labels.as_ref()).unwrap_or(false)
        };
        let (backlog, rx, rv_now) = {
            let st = self.store.lock().expect("store");
            if since != 0 && !initial_events && since < st.compacted {
                // as the API server answers a watch from a compacted resourceVersion
                let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
                    "metadata": {}, "status": "Failure", "reason": "Expired", "code": 410,
                    "message": format!("too old resource version: {since} ({})", st.compacted)}});
                return Response::builder()
                    .status(StatusCode::OK)
                    .header("content-type", "application/json")
                    .body(
                        Full::new(Bytes::from(format!("{gone}\n")))
                            .map_err(|never| match never {})
                            .boxed_unsync(),
                    )
                    .expect("response");
            }
            let backlog: Vec<Change> = if since == 0 || initial_events {
                st.objects
                    .get(&t.resource)
                    .into_iter()
                    .flatten()
                    .map(|(_, o)| Change {
                        rv: 0,
                        resource: t.resource.clone(),
                        kind: "ADDED",
                        object: o.clone(),
                    })
                    .collect()
            } else {
                st.changes
                    .iter()
                    .filter(|c| c.rv > since)
                    .cloned()
                    .collect()
            };
            (backlog, self.events.subscribe(), st.rv)
        };
        let since = if since == 0 || initial_events {
            rv_now
        } else {
            since
        };
        let line = |v: Value| Ok::<_, std::io::Error>(Frame::data(Bytes::from(format!("{v}\n"))));
        let event = |c: &Change| json!({"type": c.kind, "object": c.object});
        let mut first: Vec<_> = backlog
            .iter()
            .filter(|c| wanted(c))
            .map(|c| line(event(c)))
            .collect();
        if initial_events {
            first.push(line(json!({"type": "BOOKMARK", "object": {
                "kind": list_kind(&t.resource).trim_end_matches("List"), "apiVersion": "v1",
                "metadata": {"resourceVersion": rv_now.to_string(),
                    "annotations": {"k8s.io/initial-events-end": "true"}}}})));
        }
        let live = futures::stream::unfold(rx, move |mut rx| {
            let wanted = wanted.clone();
            async move {
                loop {
                    match rx.recv().await {
                        Ok(c) if c.rv > since && wanted(&c) => {
                            return Some((line(event(&c)), rx));
                        }
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            }
        });
        let timeout = q
            .get("timeoutSeconds")
            .and_then(|s| s.parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(Duration::from_secs(1800));
        // the stream ends quietly at its timeout, with an error when the server goes down
        let up = self.up.subscribe();
        let outage = futures::stream::once(async move { (!*up.borrow()).then(|| Err(refused())) })
            .filter_map(futures::future::ready);
        let stream: Pin<Box<dyn Stream<Item = _> + Send>> = Box::pin(
            futures::stream::iter(first)
                .chain(live)
                .take_until(ending_signal(self.up.subscribe(), timeout))
                .chain(outage),
        );
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(BodyExt::boxed_unsync(StreamBody::new(stream)))
            .expect("response")
    }

    /// Records the request, then answers it (or fails it when down).
    async fn serve(self: Arc<Self>, req: Request<impl hyper::body::Body>) -> Answer {
        let method = req.method().clone();
        let uri = req.uri().clone();
        let bytes = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let up = *self.up.borrow();
        self.store.lock().expect("store").requests.push(Recorded {
            method: method.clone(),
            path: uri.path().to_string(),
            uri: uri.to_string(),
            body: body.clone(),
            at: Instant::now(),
            answered: up,
        });
        if !up {
            return Err(refused());
        }
        self.answer(&method, &uri, &body)
    }
}

/// Completes at the watch's timeout or when the server goes down.
async fn ending_signal(mut up: watch::Receiver<bool>, timeout: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(timeout) => {}
        _ = up.wait_for(|u| !*u) => {}
    }
}

impl FakeApiServer {
    /// An empty server, in memory only (use [`client`](Self::client)).
    pub fn new() -> Self {
        let (events, _) = broadcast::channel(4096);
        Self {
            shared: Arc::new(Shared {
                store: Mutex::new(Store::default()),
                access: Mutex::new(None),
                tokens: Mutex::default(),
                events,
                up: watch::channel(true).0,
            }),
            listening: None,
        }
    }

    /// A server that also listens on `127.0.0.1:0` (in the calling thread's network
    /// namespace), on the current tokio runtime.
    pub async fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        Self::serve(listener)
    }

    /// A server that also listens on a listener bound by the caller (e.g. inside a network
    /// namespace), on the current tokio runtime. While down it closes connections unanswered.
    pub fn serve(listener: std::net::TcpListener) -> Self {
        let mut server = Self::new();
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let addr = listener.local_addr().expect("local addr");
        let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
        let shared = server.shared.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let shared = shared.clone();
                let svc = hyper::service::service_fn(move |req| shared.clone().serve(req));
                conns.spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        server.listening = Some((addr, task));
        server
    }

    /// A kube client talking to this server in-process (no network).
    pub fn client(&self) -> kube::Client {
        let shared = self.shared.clone();
        let svc =
            tower::service_fn(move |req: Request<kube::client::Body>| shared.clone().serve(req));
        kube::Client::new(svc, "default")
    }

    /// `http://127.0.0.1:PORT`; panics when the server does not listen.
    pub fn url(&self) -> String {
        let (addr, _) = self
            .listening
            .as_ref()
            .expect("the fake API server listens only after start() or serve()");
        format!("http://{addr}")
    }

    /// A kube client over TCP (for a server that listens). Installs rustls' aws-lc-rs crypto
    /// provider as the process default when none is (kube's connector wants one).
    pub fn http_client(&self) -> kube::Client {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
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

    /// The outage switch: while down every request fails as a refused connection (and is
    /// logged as not answered) and open watches end with an error.
    pub fn set_down(&self, down: bool) {
        self.shared.up.send_replace(!down);
    }

    /// Forgets the history of changes, as etcd's compaction does: a watch from an earlier
    /// resourceVersion (a client resuming after its watch ended) gets the `410 Gone` `Expired`
    /// error event, and the client lists again.
    pub fn compact(&self) {
        let mut st = self.shared.store.lock().expect("store");
        st.compacted = st.rv;
        st.changes.clear();
    }

    /// The policy SubjectAccessReviews are answered from: `allow(spec)` decides (replaces the
    /// previous policy; without one every review is denied).
    pub fn set_access_policy(
        &self,
        allow: impl Fn(&SubjectAccessReviewSpec) -> bool + Send + Sync + 'static,
    ) {
        *self.shared.access.lock().expect("access") = Some(Arc::new(allow));
    }

    /// A policy allowing exactly these (user, verb, subresource) resource requests (`*` matches
    /// any verb or subresource), whatever the resource and name.
    pub fn allow_access(&self, rules: &[(&str, &str, &str)]) {
        let rules: Vec<(String, String, String)> = rules
            .iter()
            .map(|(u, v, s)| (u.to_string(), v.to_string(), s.to_string()))
            .collect();
        self.set_access_policy(move |spec| {
            let Some(ra) = &spec.resource_attributes else {
                return false;
            };
            let user = spec.user.as_deref().unwrap_or_default();
            let verb = ra.verb.as_deref().unwrap_or_default();
            let sub = ra.subresource.as_deref().unwrap_or_default();
            rules
                .iter()
                .any(|(u, v, s)| u == user && (v == "*" || v == verb) && (s == "*" || s == sub))
        });
    }

    /// The SubjectAccessReviews asked so far (answered or not), their specs in order.
    pub fn access_reviews(&self) -> Vec<SubjectAccessReviewSpec> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "POST" && r.path.ends_with("/subjectaccessreviews"))
            .filter_map(|r| serde_json::from_value(r.body["spec"].clone()).ok())
            .collect()
    }

    /// Makes `token` authenticate as `user` in TokenReviews (replacing what it authenticated
    /// before); tokens never added are not authenticated.
    pub fn add_token(&self, token: &str, user: UserInfo) {
        self.shared
            .tokens
            .lock()
            .expect("tokens")
            .insert(token.to_string(), user);
    }

    /// The TokenReviews asked so far (answered or not), their specs in order.
    pub fn token_reviews(&self) -> Vec<TokenReviewSpec> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "POST" && r.path.ends_with("/tokenreviews"))
            .filter_map(|r| serde_json::from_value(r.body["spec"].clone()).ok())
            .collect()
    }

    /// Whether the server is down.
    pub fn is_down(&self) -> bool {
        !*self.shared.up.borrow()
    }

    fn namespace_of(resource: &str, obj: &Value) -> String {
        match obj["metadata"]["namespace"].as_str() {
            Some(ns) => ns.to_string(),
            None if CLUSTER_SCOPED.contains(&resource) => String::new(),
            None => "default".to_string(),
        }
    }

    /// Creates or replaces an object of `resource` (`pods`, `services`, `nodes`...), as another
    /// client would (watches see it). Returns it as stored.
    pub fn apply(&self, resource: &str, obj: Value) -> Value {
        let ns = Self::namespace_of(resource, &obj);
        let mut st = self.shared.store.lock().expect("store");
        self.shared.put(&mut st, resource, &ns, obj)
    }

    /// Deletes an object (watches see `DELETED`); whether it existed. `namespace` is `""` for
    /// cluster-scoped resources.
    pub fn delete(&self, resource: &str, namespace: &str, name: &str) -> bool {
        let mut st = self.shared.store.lock().expect("store");
        let key = (namespace.to_string(), name.to_string());
        self.shared.remove(&mut st, resource, &key).is_some()
    }

    /// One object, if stored.
    pub fn get(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        let st = self.shared.store.lock().expect("store");
        st.objects
            .get(resource)?
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// One object as a typed value (`Node`, `Lease`...), if stored; panics when it does not
    /// parse as `K`.
    pub fn get_as<K: serde::de::DeserializeOwned>(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
    ) -> Option<K> {
        self.get(resource, namespace, name)
            .map(|v| serde_json::from_value(v).unwrap_or_else(|e| panic!("{resource} {name}: {e}")))
    }

    /// Every stored object of `resource`.
    pub fn list(&self, resource: &str) -> Vec<Value> {
        let st = self.shared.store.lock().expect("store");
        st.objects
            .get(resource)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.store.lock().expect("store").requests.clone()
    }

    /// The requests with this method and exactly this path.
    pub fn requests_to(&self, method: &str, path: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == method && r.path == path)
            .collect()
    }

    /// How many requests with this method and exactly this path arrived (answered or not).
    pub fn count(&self, method: &str, path: &str) -> usize {
        self.requests_to(method, path).len()
    }

    /// How many service-account tokens were issued.
    pub fn tokens_issued(&self) -> u64 {
        self.shared.store.lock().expect("store").tokens_issued
    }

    /// Waits until `pred` holds (polling every 50 ms of tokio time) or `timeout` passed.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&Self) -> bool,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(self) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("{what}: not within {timeout:?}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::TokenReview;

    #[tokio::test]
    async fn token_reviews_authenticate_the_tokens_given_users() {
        let api = FakeApiServer::new();
        api.add_token(
            "t-alice",
            UserInfo {
                username: Some("alice".into()),
                uid: Some("u-1".into()),
                groups: Some(vec!["dev".into()]),
                extra: Some([("scopes".to_string(), vec!["a".to_string()])].into()),
            },
        );
        let reviews = kube::Api::<TokenReview>::all(api.client());
        let review = |token: &str| TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.into()),
                audiences: None,
            },
            ..Default::default()
        };
        let pp = kube::api::PostParams::default();
        let ok = reviews.create(&pp, &review("t-alice")).await.unwrap();
        let status = ok.status.unwrap();
        assert_eq!(status.authenticated, Some(true));
        let user = status.user.unwrap();
        assert_eq!(user.username.as_deref(), Some("alice"));
        assert_eq!(user.uid.as_deref(), Some("u-1"));
        assert_eq!(user.groups, Some(vec!["dev".to_string()]));
        assert_eq!(user.extra.unwrap()["scopes"], ["a"]);
        let bad = reviews.create(&pp, &review("t-other")).await.unwrap();
        let status = bad.status.unwrap();
        assert_eq!(status.authenticated, Some(false));
        assert!(status.user.is_none());
        let tokens: Vec<_> = api
            .token_reviews()
            .into_iter()
            .map(|s| s.token.unwrap_or_default())
            .collect();
        assert_eq!(tokens, ["t-alice", "t-other"]);
        assert!(
            api.list("tokenreviews").is_empty(),
            "reviews are not stored"
        );
    }
}
