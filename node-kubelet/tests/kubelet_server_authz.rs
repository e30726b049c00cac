//! The kubelet server's authentication and authorization (kubelet's `--anonymous-auth`,
//! `--authentication-token-webhook`, `--authorization-mode`), without root: the server runs
//! in-process on 127.0.0.1 over a fake runtime, clients connect over TLS with client
//! certificates made with `openssl` (the user is the certificate's common name, the groups its
//! organizations), with bearer tokens or with nothing; the token webhook and the `Webhook` mode
//! ask a [`FakeApiServer`] whose tokens and SubjectAccessReview policy the test sets. The
//! requests reach the API server's request log, which shows what was reviewed and what came
//! from the cache.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::authentication::v1::UserInfo;
use k8s_openapi::api::authorization::v1::SubjectAccessReviewSpec;
use node_kubelet::node::authn::{AuthenticationConfig, Authenticator};
use node_kubelet::node::authz::{AuthorizationConfig, AuthorizationMode, Authorizer};
use node_kubelet::node::server::KubeletServer;
use node_kubelet::{CancellationToken, PodStates};
use node_test_support::{FakeApiServer, FakeRuntime, require_command};
use rustls::pki_types::ServerName;

mod support;
use support::server::{make_ca, make_cert, start_server, tls_client};

const T: Duration = Duration::from_secs(30);
const NODE: &str = "node-1";

/// The CA, the server's certificate, and client certificates for alice (groups `dev` and
/// `ops`), bob, carol and a certificate without a common name.
fn make_certs(dir: &Path) {
    make_ca(dir, "ca");
    make_cert(
        dir,
        "ca",
        "server",
        &format!("/CN={NODE}"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    );
    for (name, subject) in [
        ("alice", "/O=dev/O=ops/CN=alice"),
        ("bob", "/CN=bob"),
        ("carol", "/CN=carol"),
        ("nobody", "/O=dev"),
    ] {
        make_cert(dir, "ca", name, subject, "extendedKeyUsage=clientAuth\n");
    }
}

/// One request over TLS as `who`: the status and the whole body.
async fn call(
    dir: &Path,
    who: &str,
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
) -> (u16, String) {
    send(dir, Some(who), None, addr, method, path).await
}

/// One request over TLS with the client certificate `who` (none: without one) and a bearer
/// `token`: the status and the whole body.
async fn send(
    dir: &Path,
    who: Option<&str>,
    token: Option<&str>,
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
) -> (u16, String) {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer
        .iter()
        .map(|b| ("authorization", b.as_str()))
        .collect();
    send_headers(dir, who, &headers, addr, method, path).await
}

/// One request over TLS with the client certificate `who` (none: without one) and `headers`:
/// the status and the whole body.
async fn send_headers(
    dir: &Path,
    who: Option<&str>,
    headers: &[(&str, &str)],
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
) -> (u16, String) {
    let connector = tls_client(dir, who);
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = connector
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .expect("TLS handshake");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = sender
        .send_request(req.body(Empty::<Bytes>::new()).unwrap())
        .await
        .expect("request");
    support::server::status_and_text(r, T).await
}

/// The server over a fake runtime, authenticating client certificates only and authorized by
/// `authorizer`.
async fn serve(dir: &Path, authorizer: Authorizer) -> (KubeletServer, CancellationToken) {
    serve_with(dir, Authenticator::certificates_only(), authorizer).await
}

/// The server over a fake runtime, authenticated by `authenticator` and authorized by
/// `authorizer`.
async fn serve_with(
    dir: &Path,
    authenticator: Authenticator,
    authorizer: Authorizer,
) -> (KubeletServer, CancellationToken) {
    let token = CancellationToken::new();
    let server = start_server(
        dir,
        PodStates::new(),
        Arc::new(FakeRuntime::new()),
        authenticator,
        authorizer,
        token.clone(),
    )
    .await;
    (server, token)
}

/// The server authenticating with `anonymous` and the token webhook when `webhook` (kubelet's
/// back-off between reviews shortened), authorizing with the `Webhook` mode, both asking `api`.
async fn serve_api(
    dir: &Path,
    api: &FakeApiServer,
    anonymous: bool,
    webhook_on: bool,
) -> (KubeletServer, CancellationToken) {
    let authenticator = Authenticator::new(
        AuthenticationConfig {
            anonymous,
            webhook: webhook_on,
            webhook_retry_initial: Duration::from_millis(10),
            ..Default::default()
        },
        Some(api.client()),
    )
    .expect("authenticator");
    serve_with(
        dir,
        authenticator,
        webhook(api, AuthorizationConfig::default()),
    )
    .await
}

fn webhook(api: &FakeApiServer, config: AuthorizationConfig) -> Authorizer {
    Authorizer::new(
        AuthorizationConfig {
            mode: AuthorizationMode::Webhook,
            node_name: NODE.into(),
            ..config
        },
        Some(api.client()),
    )
    .expect("authorizer")
}

/// (user, groups, verb, resource, subresource, name) of a review.
fn review(s: &SubjectAccessReviewSpec) -> (String, Vec<String>, String, String, String, String) {
    let ra = s.resource_attributes.clone().expect("resource attributes");
    (
        s.user.clone().unwrap_or_default(),
        s.groups.clone().unwrap_or_default(),
        ra.verb.unwrap_or_default(),
        ra.resource.unwrap_or_default(),
        ra.subresource.unwrap_or_default(),
        ra.name.unwrap_or_default(),
    )
}

fn certs() -> Option<tempfile::TempDir> {
    if !require_command("kubelet_server_authz", "openssl") {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    Some(dir)
}

#[tokio::test]
async fn webhook_mode_reviews_each_request_as_kubelet_and_caches_the_decisions() {
    let Some(dir) = certs() else { return };
    let dir = dir.path();
    let api = FakeApiServer::new();
    // alice may get and create nodes/proxy (not nodes/pods); bob nothing
    api.allow_access(&[("alice", "get", "proxy"), ("alice", "create", "proxy")]);
    // kubelet's back-off between reviews that did not reach the API server, shortened
    let config = AuthorizationConfig {
        webhook_retry_initial: Duration::from_millis(10),
        ..Default::default()
    };
    let (server, token) = serve(dir, webhook(&api, config)).await;
    let addr = server.local_addr();

    // /pods: nodes/pods first (kubelet's fine-grained authorization), then nodes/proxy
    let (status, body) = call(dir, "alice", addr, "GET", "/pods").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("PodList"), "{body}");
    let groups = vec![
        "dev".to_string(),
        "ops".to_string(),
        "system:authenticated".to_string(),
    ];
    let node = |verb: &str, sub: &str| {
        (
            "alice".to_string(),
            groups.clone(),
            verb.to_string(),
            "nodes".to_string(),
            sub.to_string(),
            NODE.to_string(),
        )
    };
    let reviews: Vec<_> = api.access_reviews().iter().map(review).collect();
    assert_eq!(reviews, vec![node("get", "pods"), node("get", "proxy")]);

    // a second request within the TTL is decided from the cache: no review
    let (status, _) = call(dir, "alice", addr, "GET", "/pods").await;
    assert_eq!(status, 200);
    assert_eq!(api.access_reviews().len(), 2);

    // containerLogs is nodes/proxy too (cached: allowed, the handler answers 404 for the pod)
    let (status, body) = call(dir, "alice", addr, "GET", "/containerLogs/default/web/app").await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("pod \"web\" does not exist"), "{body}");
    assert_eq!(api.access_reviews().len(), 2);

    // exec by POST is create on nodes/proxy
    let (status, body) = call(
        dir,
        "alice",
        addr,
        "POST",
        "/exec/default/web/app?command=ls&stdout=1",
    )
    .await;
    assert_eq!(status, 404, "{body}");
    let reviews: Vec<_> = api.access_reviews().iter().map(review).collect();
    assert_eq!(reviews.len(), 3);
    assert_eq!(reviews[2], node("create", "proxy"));

    // bob is denied with kubelet's words, /healthz included; the denial is cached too
    for (path, sub) in [
        ("/exec/default/web/app?command=ls&stdout=1", "proxy"),
        ("/containerLogs/default/web/app", "proxy"),
        ("/healthz", "proxy"),
        ("/pods", "proxy"),
    ] {
        let (status, body) = call(dir, "bob", addr, "GET", path).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert_eq!(
            body,
            format!("Forbidden (user=bob, verb=get, resource=nodes, subresource={sub})"),
            "{path}"
        );
    }
    let bob: Vec<_> = api
        .access_reviews()
        .iter()
        .map(review)
        .filter(|r| r.0 == "bob")
        .map(|r| (r.1, r.2, r.4))
        .collect();
    let authenticated = vec!["system:authenticated".to_string()];
    // proxy once (then cached), healthz and pods once each
    assert_eq!(
        bob,
        vec![
            (
                authenticated.clone(),
                "get".to_string(),
                "proxy".to_string()
            ),
            (
                authenticated.clone(),
                "get".to_string(),
                "healthz".to_string()
            ),
            (authenticated.clone(), "get".to_string(), "pods".to_string()),
        ]
    );
    let before = api.access_reviews().len();
    let (status, _) = call(dir, "bob", addr, "GET", "/containerLogs/default/web/app").await;
    assert_eq!(status, 403);
    assert_eq!(api.access_reviews().len(), before, "the denial is cached");

    // a certificate without a common name authenticates nobody
    let (status, body) = call(dir, "nobody", addr, "GET", "/pods").await;
    assert_eq!((status, body.as_str()), (401, "Unauthorized"));
    assert_eq!(api.access_reviews().len(), before);

    // the API server down: a decision not in the cache is an authorization error (kubelet: 500),
    // a cached one (alice's nodes/proxy, 5 minutes) still holds
    api.set_down(true);
    let (status, body) = call(dir, "carol", addr, "GET", "/pods").await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(
        body,
        "Authorization error (user=carol, verb=get, resource=nodes, subresource=pods)"
    );
    let (status, _) = call(dir, "alice", addr, "GET", "/containerLogs/default/web/app").await;
    assert_eq!(status, 404);
    // the error was not cached: up again, carol is reviewed and denied
    api.set_down(false);
    let (status, body) = call(dir, "carol", addr, "GET", "/pods").await;
    assert_eq!(status, 403, "{body}");
    let carol = api
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/subjectaccessreviews") && r.body["spec"]["user"] == "carol")
        .map(|r| r.answered)
        .collect::<Vec<_>>();
    // sent 5 times in all while down (kubelet's webhook retries), then pods and proxy denied
    assert_eq!(carol, vec![false, false, false, false, false, true, true]);
    token.cancel();
}

#[tokio::test]
async fn a_zero_ttl_reviews_every_request_and_always_allow_reviews_none() {
    let Some(dir) = certs() else { return };
    let dir = dir.path();
    let api = FakeApiServer::new();
    api.allow_access(&[("alice", "*", "proxy")]);
    let config = AuthorizationConfig {
        cache_authorized_ttl: Duration::ZERO,
        fine_grained: false,
        ..Default::default()
    };
    let (server, token) = serve(dir, webhook(&api, config)).await;
    let addr = server.local_addr();
    for n in 1..=2 {
        let (status, _) = call(dir, "alice", addr, "GET", "/pods").await;
        assert_eq!(status, 200);
        // without fine-grained authorization /pods is nodes/proxy alone
        let subs: Vec<_> = api.access_reviews().iter().map(|r| review(r).4).collect();
        assert_eq!(subs, vec!["proxy"; n]);
    }
    token.cancel();
    drop(server);

    // AlwaysAllow: bob goes through, the API server is never asked
    let api = FakeApiServer::new();
    let authorizer = Authorizer::new(
        AuthorizationConfig {
            mode: AuthorizationMode::AlwaysAllow,
            ..Default::default()
        },
        Some(api.client()),
    )
    .unwrap();
    let (server, token) = serve(dir, authorizer).await;
    let (status, body) = call(dir, "bob", server.local_addr(), "GET", "/pods").await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = call(
        dir,
        "bob",
        server.local_addr(),
        "GET",
        "/containerLogs/default/web/app",
    )
    .await;
    assert_eq!(status, 404);
    assert!(api.access_reviews().is_empty());
    token.cancel();
}

/// dave's token: a user with a uid, a group and extra information.
fn dave() -> UserInfo {
    UserInfo {
        username: Some("dave".into()),
        uid: Some("uid-dave".into()),
        groups: Some(vec!["ops".into()]),
        extra: Some(
            [(
                "scopes".to_string(),
                vec!["view".to_string(), "exec".to_string()],
            )]
            .into(),
        ),
    }
}

#[tokio::test]
async fn a_bearer_token_is_reviewed_once_and_its_user_authorized_with_uid_and_extra() {
    let Some(dir) = certs() else { return };
    let dir = dir.path();
    let api = FakeApiServer::new();
    api.add_token("t-dave", dave());
    api.allow_access(&[("dave", "get", "proxy"), ("alice", "get", "proxy")]);
    let (server, token) = serve_api(dir, &api, true, true).await;
    let addr = server.local_addr();

    // no certificate, a bearer token: reviewed, then authorized as its user (the handler's 404)
    let logs = "/containerLogs/default/web/app";
    let (status, body) = send(dir, None, Some("t-dave"), addr, "GET", logs).await;
    assert_eq!(status, 404, "{body}");
    let tokens: Vec<_> = api
        .token_reviews()
        .into_iter()
        .map(|s| (s.token.unwrap_or_default(), s.audiences))
        .collect();
    assert_eq!(tokens, vec![("t-dave".to_string(), None)]);
    let sars = api.access_reviews();
    assert_eq!(sars.len(), 1);
    let sar = &sars[0];
    assert_eq!(sar.user.as_deref(), Some("dave"));
    assert_eq!(sar.uid.as_deref(), Some("uid-dave"));
    assert_eq!(
        sar.groups,
        Some(vec!["ops".to_string(), "system:authenticated".to_string()])
    );
    assert_eq!(sar.extra, dave().extra);
    assert_eq!(review(sar).4, "proxy");

    // again: the token's review and the decision come from the caches (2m, 5m)
    let (status, _) = send(dir, None, Some("t-dave"), addr, "GET", logs).await;
    assert_eq!(status, 404);
    assert_eq!(api.token_reviews().len(), 1);
    assert_eq!(api.access_reviews().len(), 1);
    // dave may not exec: 403 with kubelet's words
    let (status, body) = send(
        dir,
        None,
        Some("t-dave"),
        addr,
        "POST",
        "/exec/default/web/app?command=ls&stdout=1",
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(
        body,
        "Forbidden (user=dave, verb=create, resource=nodes, subresource=proxy)"
    );
    assert_eq!(api.token_reviews().len(), 1);

    // a token the API server does not authenticate: 401, anonymous or not (kubelet fails the
    // request on the token's error); the refusal is cached as long
    for _ in 0..2 {
        let (status, body) = send(dir, None, Some("t-forged"), addr, "GET", logs).await;
        assert_eq!((status, body.as_str()), (401, "Unauthorized"));
    }
    let forged = api
        .token_reviews()
        .into_iter()
        .filter(|s| s.token.as_deref() == Some("t-forged"))
        .count();
    assert_eq!(forged, 1, "the refusal is reviewed once, then cached");

    // on a WebSocket upgrade the token may come as a subprotocol
    api.add_token("t-ws", dave());
    let ws = |token: &str| {
        format!(
            "v5.channel.k8s.io, base64url.bearer.authorization.k8s.io.{}",
            base64url(token)
        )
    };
    let exec = "/exec/default/web/app?command=ls&stdout=1";
    let upgrade = |protocols: String| {
        [
            ("connection", "Upgrade".to_string()),
            ("upgrade", "websocket".to_string()),
            ("sec-websocket-protocol", protocols),
        ]
    };
    let h = upgrade(ws("t-ws"));
    let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, body) = send_headers(dir, None, &h, addr, "GET", exec).await;
    // authorized as dave (get on nodes/proxy); the handler has no such pod
    assert_eq!(status, 404, "{body}");
    assert!(
        api.token_reviews()
            .iter()
            .any(|s| s.token.as_deref() == Some("t-ws"))
    );
    // a token subprotocol alone (nothing to answer with) is refused
    let h = upgrade(format!(
        "base64url.bearer.authorization.k8s.io.{}",
        base64url("t-ws")
    ));
    let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, _) = send_headers(dir, None, &h, addr, "GET", exec).await;
    assert_eq!(status, 401);

    // a client certificate comes first: its user, the token not looked at
    let before = api.token_reviews().len();
    let (status, _) = send(dir, Some("alice"), Some("t-other"), addr, "GET", logs).await;
    assert_eq!(status, 404);
    assert_eq!(api.token_reviews().len(), before);
    assert_eq!(
        api.access_reviews()
            .last()
            .and_then(|s| s.user.clone())
            .as_deref(),
        Some("alice")
    );
    token.cancel();
}

#[tokio::test]
async fn anonymous_requests_are_authorized_as_system_anonymous_and_tokens_need_the_webhook() {
    let Some(dir) = certs() else { return };
    let dir = dir.path();
    let api = FakeApiServer::new();
    api.add_token("t-dave", dave());
    api.allow_access(&[("system:anonymous", "get", "healthz"), ("dave", "*", "*")]);
    // anonymous on, the token webhook off
    let (server, token) = serve_api(dir, &api, true, false).await;
    let addr = server.local_addr();
    let (status, body) = send(dir, None, None, addr, "GET", "/healthz").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = send(
        dir,
        None,
        None,
        addr,
        "GET",
        "/containerLogs/default/web/app",
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(
        body,
        "Forbidden (user=system:anonymous, verb=get, resource=nodes, subresource=proxy)"
    );
    let anonymous: Vec<_> = api
        .access_reviews()
        .iter()
        .map(|s| {
            (
                s.user.clone().unwrap_or_default(),
                s.groups.clone().unwrap_or_default(),
                s.uid.clone(),
            )
        })
        .collect();
    assert!(!anonymous.is_empty());
    for a in &anonymous {
        assert_eq!(
            a,
            &(
                "system:anonymous".to_string(),
                vec!["system:unauthenticated".to_string()],
                None
            )
        );
    }
    // with the webhook off a bearer token is not looked at: dave's token is anonymous
    let (status, _) = send(
        dir,
        None,
        Some("t-dave"),
        addr,
        "GET",
        "/containerLogs/default/web/app",
    )
    .await;
    assert_eq!(status, 403);
    assert!(api.token_reviews().is_empty());
    // a certificate without a common name is anonymous too
    let (status, body) = send(dir, Some("nobody"), None, addr, "GET", "/healthz").await;
    assert_eq!(status, 200, "{body}");
    token.cancel();
    drop(server);

    // anonymous off: no credentials, 401 with kubelet's body; nothing reviewed
    let api = FakeApiServer::new();
    let (server, token) = serve_api(dir, &api, false, true).await;
    let (status, body) = send(dir, None, None, server.local_addr(), "GET", "/healthz").await;
    assert_eq!((status, body.as_str()), (401, "Unauthorized"));
    assert!(api.requests().is_empty());
    token.cancel();
}

#[tokio::test]
async fn a_token_review_that_cannot_reach_the_api_server_is_401_and_not_cached() {
    let Some(dir) = certs() else { return };
    let dir = dir.path();
    let api = FakeApiServer::new();
    api.add_token("t-dave", dave());
    api.allow_access(&[("dave", "*", "*")]);
    let (server, token) = serve_api(dir, &api, true, true).await;
    let addr = server.local_addr();
    api.set_down(true);
    // kubelet answers an authentication error 401 (not anonymous, not 500)
    let (status, body) = send(dir, None, Some("t-dave"), addr, "GET", "/pods").await;
    assert_eq!((status, body.as_str()), (401, "Unauthorized"));
    api.set_down(false);
    let (status, body) = send(dir, None, Some("t-dave"), addr, "GET", "/pods").await;
    assert_eq!(status, 200, "{body}");
    let sent: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| r.path == "/apis/authentication.k8s.io/v1/tokenreviews")
        .map(|r| r.answered)
        .collect();
    // sent 5 times in all while down (kubelet's webhook back-off), then once more: not cached
    assert_eq!(sent, vec![false, false, false, false, false, true]);
    token.cancel();
}

/// base64url without padding (the WebSocket token subprotocol's encoding).
fn base64url(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

#[tokio::test]
async fn requests_with_the_same_token_share_one_review() {
    let api = FakeApiServer::new();
    api.add_token("t-dave", dave());
    let authn = Authenticator::new(
        AuthenticationConfig {
            webhook: true,
            webhook_retry_initial: Duration::from_millis(10),
            ..Default::default()
        },
        Some(api.client()),
    )
    .unwrap();
    // eight requests at once while the API server is down: one review, sent 5 times in all
    // (kubelet's back-off), whose error all eight get
    api.set_down(true);
    let answers = futures::future::join_all((0..8).map(|_| authn.review_token("t-dave"))).await;
    assert!(answers.iter().all(Result::is_err), "{answers:?}");
    assert_eq!(api.token_reviews().len(), 5);
    // up again: eight at once, one review, all authenticated as dave
    api.set_down(false);
    let answers = futures::future::join_all((0..8).map(|_| authn.review_token("t-dave"))).await;
    for a in answers {
        assert_eq!(a.unwrap().map(|id| id.user).as_deref(), Some("dave"));
    }
    assert_eq!(api.token_reviews().len(), 6);
}
