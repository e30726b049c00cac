//! Root test of the kubelet's server (needs root, cgroups, overlayfs, busybox-static and the
//! `openssl` command): a pod runs on the native runtime under the kubelet, and everything goes
//! through [`KubeletServer`] over TLS with a client certificate, as the API server reaches a
//! kubelet: `/containerLogs` (tailLines, timestamps, limitBytes, follow seeing a new line and
//! ending when the container exits, previous after a restart, kubelet's errors), `/exec` over
//! WebSocket and SPDY with node-cri's streaming clients, `/attach` to the container's output,
//! `/portForward` to a TCP server in the pod over both, every request authorized by a
//! SubjectAccessReview (kubelet's Webhook mode, against a FakeApiServer), and clients without a
//! certificate (401) or with one from another CA (refused
//! in the handshake). The clients reach the server through a stand-in for the API server: a
//! local plain-TCP listener whose connections it carries to the kubelet over TLS with its client
//! certificate.
//!
//! The test runs on a thread inside a NetnsFixture, under its own temporary root and cgroup
//! root (`nodekit-test/<pid>-srv-<n>`); a guard kills what is left in that cgroup tree,
//! unmounts and removes everything on drop, panics included. Certificates are made with
//! `openssl` in the temporary directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::authentication::v1::UserInfo;
use node_core::{Pod, RuntimeBackend};
use node_cri::native::runtime::NativeRuntime;
use node_cri::streaming::client::{self, ExecOptions, Transport};
use node_kubelet::backoff::BackoffConfig;
use node_kubelet::node::authn::{AuthenticationConfig, Authenticator};
use node_kubelet::node::authz::{AuthorizationConfig, AuthorizationMode, Authorizer};
use node_kubelet::node::http::{HttpState, NodeMetrics};
use node_kubelet::node::server::KubeletServer;
use node_kubelet::{CancellationToken, Kubelet, KubeletConfig};
use node_test_support::StandInApiServer;
use node_test_support::kubectl::{PodBackend, SubresourceRequest, Upstream};
use node_test_support::{
    FakeApiServer, FakeStatusSink, NetnsFixture, ScriptedPodSource, require_command, require_path,
    require_root,
};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod support;
use node_test_support::until_async as until;
use support::native::Guard;
use support::server::{StatesPods, make_ca, make_cert, start_server, tls_client};

const IMAGE: &str = "busybox:server-test";
const T: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// certificates

/// The server's CA and certificate, the API server's client certificate, and a client
/// certificate from another CA.
fn make_certs(dir: &Path) {
    make_ca(dir, "ca");
    make_ca(dir, "other-ca");
    make_cert(
        dir,
        "ca",
        "server",
        "/CN=node-1",
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    );
    make_cert(
        dir,
        "ca",
        "apiserver",
        "/O=system:masters/CN=kube-apiserver-kubelet-client",
        "extendedKeyUsage=clientAuth\n",
    );
    make_cert(
        dir,
        "other-ca",
        "stranger",
        "/CN=stranger",
        "extendedKeyUsage=clientAuth\n",
    );
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn tls_connect(
    connector: &tokio_rustls::TlsConnector,
    addr: std::net::SocketAddr,
) -> std::io::Result<Tls> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    connector
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
}

/// A GET over TLS: the status and the body's stream.
async fn get(
    connector: &tokio_rustls::TlsConnector,
    addr: std::net::SocketAddr,
    path: &str,
) -> hyper::Response<hyper::body::Incoming> {
    let tls = tls_connect(connector, addr).await.expect("TLS connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
        .send_request(
            hyper::Request::get(path)
                .header("host", addr.to_string())
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .expect("request")
}

/// A GET with a bearer token (no client certificate): the status and whole body.
async fn get_with_token(
    connector: &tokio_rustls::TlsConnector,
    addr: std::net::SocketAddr,
    path: &str,
    token: &str,
) -> (u16, String) {
    let tls = tls_connect(connector, addr).await.expect("TLS connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let r = sender
        .send_request(
            hyper::Request::get(path)
                .header("host", addr.to_string())
                .header("authorization", format!("Bearer {token}"))
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .expect("request");
    support::server::status_and_text(r, T).await
}

/// A GET's status and whole body.
async fn get_text(
    connector: &tokio_rustls::TlsConnector,
    addr: std::net::SocketAddr,
    path: &str,
) -> (u16, String) {
    let r = get(connector, addr, path).await;
    support::server::status_and_text(r, T).await
}

/// The stand-in API server: a plain-TCP listener whose connections go to `kubelet` over TLS
/// with the API server's client certificate.
async fn apiserver_tunnel(
    connector: tokio_rustls::TlsConnector,
    kubelet: std::net::SocketAddr,
) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            let connector = connector.clone();
            tokio::spawn(async move {
                if let Ok(mut k) = tls_connect(&connector, kubelet).await {
                    let _ = tokio::io::copy_bidirectional(&mut c, &mut k).await;
                }
            });
        }
    });
    addr
}

// ---------------------------------------------------------------------------------------------
// the pod

/// Prints three lines (the second on stderr: apart in time, as the runtime reads stdout and
/// stderr apart and writes each line when it reads it), serves `pf-ok` on port 8080, then prints what is
/// put in /tmp/say until /tmp/stop appears, and exits 3.
const SCRIPT: &str = "echo line one; sleep 0.5; echo line two >&2; sleep 0.5; echo line three; \
    mkdir -p /tmp/www; echo pf-ok > /tmp/www/index.html; httpd -p 8080 -h /tmp/www; \
    while [ ! -e /tmp/stop ]; do if [ -e /tmp/say ]; then cat /tmp/say; rm /tmp/say; fi; \
    sleep 0.1; done; echo stopping; exit 3";

fn web_pod() -> Pod {
    let yaml = format!(
        "metadata: {{name: web, namespace: default, uid: uid-web}}\n\
         spec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  \
         - name: app\n    image: \"{IMAGE}\"\n    imagePullPolicy: Never\n    \
         command: [sh, -c, {script:?}]\n",
        script = SCRIPT
    );
    serde_saphyr::from_str(&yaml).expect("test pod parses")
}

/// Run `cmd` in the pod's container through the stand-in API server; stdout and exit code.
async fn exec(
    tunnel: std::net::SocketAddr,
    t: Transport,
    cmd: &[&str],
    stdin: Option<&str>,
) -> (String, i32) {
    let q: String = cmd
        .iter()
        .map(|c| {
            format!(
                "command={}",
                c.replace('%', "%25")
                    .replace(' ', "%20")
                    .replace('&', "%26")
                    .replace('>', "%3E")
            )
        })
        .collect::<Vec<_>>()
        .join("&");
    let url = format!(
        "http://{tunnel}/exec/default/web/app?{q}&stdout=1{}",
        if stdin.is_some() { "&stdin=1" } else { "" }
    );
    let mut c = client::exec(
        &url,
        t,
        ExecOptions {
            stdin: stdin.is_some(),
            stdout: true,
            ..Default::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{t:?} exec {cmd:?}: {e}"));
    if let Some(input) = stdin {
        let mut w = c.stdin.take().unwrap();
        w.write_all(input.as_bytes()).await.unwrap();
        w.shutdown().await.unwrap();
        drop(w);
    }
    let mut out = String::new();
    let mut r = c.stdout.take().unwrap();
    tokio::time::timeout(T, r.read_to_string(&mut out))
        .await
        .expect("exec output ends")
        .unwrap();
    let code = tokio::time::timeout(T, c.wait())
        .await
        .expect("exec status")
        .unwrap();
    (out, code)
}

fn ready(name: &str) -> bool {
    require_root(name)
        && require_path(name, "/sys/fs/cgroup/memory")
        && require_path(name, node_test_support::image::BUSYBOX)
        && require_command(name, "openssl")
}

#[test]
fn logs_exec_and_port_forward_through_the_kubelet_server_with_client_certificates() {
    if !ready("logs_exec_and_port_forward_through_the_kubelet_server_with_client_certificates") {
        return;
    }
    on_node("kubesrv", scenario);
}

/// The kubelet on the native runtime with its server, the certificates, and the stand-in API
/// server's tunnel.
struct Node {
    runtime: Arc<NativeRuntime>,
    states: node_kubelet::PodStates,
    sink: FakeStatusSink,
    source: ScriptedPodSource,
    token: CancellationToken,
    kubelet_task: tokio::task::JoinHandle<()>,
    server: KubeletServer,
    certs: PathBuf,
    addr: std::net::SocketAddr,
    apiserver: tokio_rustls::TlsConnector,
    tunnel: std::net::SocketAddr,
    /// Authenticates the server's bearer tokens (`t-viewer`: the user `viewer`) and authorizes
    /// its requests (kubelet's Webhook mode): the API server's client identity may do
    /// everything, `viewer` get on `nodes/proxy`.
    authz: FakeApiServer,
}

impl Node {
    async fn stop(self) {
        drop(self.server);
        self.token.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(30), self.kubelet_task).await;
        support::remove_all_sandboxes(&*self.runtime).await;
    }
}

async fn start(g: &Guard) -> Node {
    let root = g.dir.path().to_path_buf();
    let certs = root.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    make_certs(&certs);

    let (runtime, image_service) = support::native::busybox_runtime(g, IMAGE);
    let (sink, source) = (FakeStatusSink::new(), ScriptedPodSource::new("api"));
    let kubelet = Kubelet::builder("node-1")
        .source(Arc::new(source.clone()))
        .runtime(runtime.clone(), image_service)
        .status(Arc::new(sink.clone()))
        .config(KubeletConfig {
            pod_log_root: root.join("logs"),
            sync_period: Duration::from_secs(1),
            restart_backoff: BackoffConfig {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(4),
                reset_after: Duration::from_secs(600),
            },
            ..Default::default()
        })
        .build()
        .unwrap();
    let states = kubelet.states();
    let token = CancellationToken::new();
    let t = token.clone();
    let kubelet_task = tokio::spawn(async move { kubelet.run(t).await.unwrap() });

    // the server: the endpoints beside the read-only ones, over TLS
    let rt_dyn: Arc<dyn RuntimeBackend> = runtime.clone();
    let authz = FakeApiServer::new();
    authz.allow_access(&[
        ("kube-apiserver-kubelet-client", "*", "*"),
        ("viewer", "get", "proxy"),
    ]);
    authz.add_token(
        "t-viewer",
        UserInfo {
            username: Some("viewer".into()),
            uid: Some("uid-viewer".into()),
            groups: Some(vec!["viewers".into()]),
            extra: None,
        },
    );
    // client certificates and bearer tokens, no anonymous requests
    let authenticator = Authenticator::new(
        AuthenticationConfig {
            anonymous: false,
            webhook: true,
            ..Default::default()
        },
        Some(authz.client()),
    )
    .unwrap();
    let authorizer = Authorizer::new(
        AuthorizationConfig {
            mode: AuthorizationMode::Webhook,
            node_name: "node-1".into(),
            ..Default::default()
        },
        Some(authz.client()),
    )
    .unwrap();
    let server = start_server(
        &certs,
        states.clone(),
        rt_dyn,
        authenticator,
        authorizer,
        token.clone(),
    )
    .await;
    let addr = server.local_addr();
    let apiserver = tls_client(&certs, Some("apiserver"));
    let tunnel = apiserver_tunnel(apiserver.clone(), addr).await;
    Node {
        runtime,
        states,
        sink,
        source,
        token,
        kubelet_task,
        server,
        certs,
        addr,
        apiserver,
        tunnel,
        authz,
    }
}

/// Run `body` with a fresh node in a new network namespace; the guard cleans up after it.
fn on_node<F: Future<Output = ()>>(netns: &str, body: impl FnOnce(Node) -> F + Send + 'static) {
    let g = Arc::new(Guard::new("srv"));
    let g2 = g.clone();
    let ns = NetnsFixture::new(netns).expect("netns");
    ns.run_in(move || {
        support::block_on(async move {
            let node = start(&g2).await;
            body(node).await
        })
    })
    .expect("run in netns");
    drop(g);
}

async fn scenario(node: Node) {
    let Node {
        ref certs,
        addr,
        ref apiserver,
        tunnel,
        ref source,
        ref sink,
        ref authz,
        ..
    } = node;
    let apiserver = apiserver.clone();
    // who may not: no certificate (401), a certificate from another CA (no handshake)
    let (status, body) = get_text(&tls_client(certs, None), addr, "/pods").await;
    assert_eq!((status, body.as_str()), (401, "Unauthorized"));
    let stranger = tls_client(certs, Some("stranger"));
    let refused = async {
        let mut s = tls_connect(&stranger, addr).await?;
        // TLS 1.3: the server's verdict on the client certificate arrives after the handshake
        s.write_all(b"GET /pods HTTP/1.1\r\nhost: x\r\n\r\n")
            .await?;
        let mut b = Vec::new();
        s.read_to_end(&mut b).await?;
        std::io::Result::Ok(b)
    }
    .await;
    assert!(
        refused.is_err(),
        "a client of another CA got an answer: {refused:?}"
    );
    let (status, _) = get_text(&apiserver, addr, "/pods").await;
    assert_eq!(status, 200, "the read-only endpoints on the secure port");

    source.apply(web_pod());
    let logs = "/containerLogs/default/web/app";
    let last = std::sync::Mutex::new(String::new());
    let seen = until("the pod's three lines", T, || async {
        let (s, b) = get_text(&apiserver, addr, logs).await;
        let done = s == 200 && b == "line one\nline two\nline three\n";
        let now = format!("{s} {b}");
        if *last.lock().unwrap() != now {
            eprintln!("containerLogs: {now}");
            *last.lock().unwrap() = now;
        }
        done.then_some(())
    });
    if tokio::time::timeout(T + Duration::from_secs(1), seen)
        .await
        .is_err()
    {
        panic!(
            "the pod's three lines: last answer {}",
            last.lock().unwrap()
        );
    }

    // a bearer token instead of a certificate: reviewed by the API server, then authorized
    let (s, b) = get_with_token(&tls_client(certs, None), addr, logs, "t-viewer").await;
    assert_eq!((s, b.as_str()), (200, "line one\nline two\nline three\n"));
    let reviewed: Vec<_> = authz
        .token_reviews()
        .into_iter()
        .filter_map(|r| r.token)
        .collect();
    assert_eq!(reviewed, ["t-viewer"]);
    let (s, b) = get_with_token(&tls_client(certs, None), addr, logs, "t-forged").await;
    assert_eq!((s, b.as_str()), (401, "Unauthorized"));

    // options
    let (s, b) = get_text(&apiserver, addr, &format!("{logs}?tailLines=1")).await;
    assert_eq!((s, b.as_str()), (200, "line three\n"));
    let (s, b) = get_text(&apiserver, addr, &format!("{logs}?limitBytes=7")).await;
    assert_eq!((s, b.as_str()), (200, "line on"));
    let (s, b) = get_text(
        &apiserver,
        addr,
        &format!("{logs}?tailLines=2&timestamps=true"),
    )
    .await;
    assert_eq!(s, 200);
    let lines: Vec<&str> = b.lines().collect();
    assert_eq!(lines.len(), 2, "{b}");
    for (l, want) in lines.iter().zip(["line two", "line three"]) {
        let (ts, rest) = l.split_once(' ').unwrap();
        ts.parse::<k8s_openapi::jiff::Timestamp>()
            .unwrap_or_else(|e| panic!("{ts:?}: {e}"));
        assert_eq!(rest, want);
    }
    let (s, b) = get_text(
        &apiserver,
        addr,
        &format!("{logs}?sinceTime=2999-01-01T00:00:00Z"),
    )
    .await;
    assert_eq!((s, b.as_str()), (200, ""));
    // kubelet's refusals
    for (path, status, words) in [
        (
            "/containerLogs/default/nope/app",
            404,
            "pod \"nope\" does not exist",
        ),
        (
            "/containerLogs/default/web/nope",
            404,
            "container \"nope\" not found in pod \"web\"",
        ),
        (
            "/containerLogs/default/web/app?previous=true",
            400,
            "previous terminated container \"app\" in pod \"web\" not found",
        ),
        (
            "/containerLogs/default/web/app?tailLines=-1",
            422,
            "tailLines",
        ),
        (
            "/containerLogs/default/web/app?tailLines=x",
            400,
            "tailLines",
        ),
        (
            "/exec/default/web/app?command=true",
            400,
            "at least 1 of stdin, stdout, stderr",
        ),
        (
            "/exec/default/nope/app?command=true&stdout=1",
            404,
            "pod does not exist",
        ),
    ] {
        let (s, b) = get_text(&apiserver, addr, path).await;
        assert_eq!(s, status, "{path}: {b}");
        assert!(b.contains(words), "{path}: {b}");
    }

    // follow: the three lines, then a new one
    let follow = get(&apiserver, addr, &format!("{logs}?follow=true")).await;
    assert_eq!(follow.status(), 200);
    let mut body = follow.into_body();
    let mut followed = String::new();
    let mut next_until = async |followed: &mut String, want: &str| {
        tokio::time::timeout(T, async {
            while !followed.contains(want) {
                match body.frame().await {
                    Some(Ok(f)) => {
                        if let Some(d) = f.data_ref() {
                            followed.push_str(&String::from_utf8_lossy(d));
                        }
                    }
                    _ => return false,
                }
            }
            true
        })
        .await
        .unwrap_or(false)
    };
    assert!(
        next_until(&mut followed, "line three\n").await,
        "{followed:?}"
    );

    // exec over WebSocket makes the container print a line; follow sees it
    let (out, code) = exec(
        tunnel,
        Transport::WebSocket,
        &[
            "sh",
            "-c",
            "echo only-in-first > /tmp/say.tmp && mv /tmp/say.tmp /tmp/say && echo said",
        ],
        None,
    )
    .await;
    assert_eq!((out.as_str(), code), ("said\n", 0));
    assert!(
        next_until(&mut followed, "only-in-first\n").await,
        "{followed:?}"
    );
    assert_eq!(followed, "line one\nline two\nline three\nonly-in-first\n");

    // exec over SPDY with stdin, and an exit code
    let (out, code) = exec(tunnel, Transport::Spdy, &["cat"], Some("through spdy\n")).await;
    assert_eq!((out.as_str(), code), ("through spdy\n", 0));
    let (_, code) = exec(tunnel, Transport::WebSocket, &["sh", "-c", "exit 7"], None).await;
    assert_eq!(code, 7);

    // port forwarding to httpd in the pod, over both
    for t in [Transport::Spdy, Transport::WebSocket] {
        let mut f =
            client::port_forward(&format!("http://{tunnel}/portForward/default/web"), t, 8080)
                .await
                .unwrap_or_else(|e| panic!("{t:?} port forward: {e}"));
        f.stream
            .write_all(b"GET /index.html HTTP/1.0\r\n\r\n")
            .await
            .unwrap();
        // the whole answer (over WebSocket the stream stays open after httpd closes)
        let mut got = Vec::new();
        let _ = tokio::time::timeout(T, async {
            let mut b = [0u8; 4096];
            while !got.ends_with(b"pf-ok\n") {
                match f.stream.read(&mut b).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&b[..n]),
                }
            }
        })
        .await;
        let got = String::from_utf8_lossy(&got);
        assert!(
            got.starts_with("HTTP/1.1 200") && got.ends_with("pf-ok\n"),
            "{t:?}: {got:?}, error stream {:?}",
            f.error(Duration::from_secs(1)).await
        );
    }

    // attach (SPDY): the container's own output, as it prints it
    let mut attached = client::exec(
        &format!("http://{tunnel}/attach/default/web/app?stdout=1&stderr=1"),
        Transport::Spdy,
        ExecOptions {
            stdout: true,
            stderr: true,
            ..Default::default()
        },
    )
    .await
    .expect("attach");
    let mut attached_out = attached.stdout.take().unwrap();
    let (_, code) = exec(
        tunnel,
        Transport::WebSocket,
        &[
            "sh",
            "-c",
            "echo to-the-attached > /tmp/say.tmp && mv /tmp/say.tmp /tmp/say",
        ],
        None,
    )
    .await;
    assert_eq!(code, 0);
    let mut seen = Vec::new();
    let got = tokio::time::timeout(T, async {
        let mut b = [0u8; 256];
        while !String::from_utf8_lossy(&seen).contains("to-the-attached\n") {
            match attached_out.read(&mut b).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => seen.extend_from_slice(&b[..n]),
            }
        }
        true
    })
    .await;
    assert!(
        matches!(got, Ok(true)),
        "attach: {:?}",
        String::from_utf8_lossy(&seen)
    );
    drop((attached_out, attached));
    assert!(
        next_until(&mut followed, "to-the-attached\n").await,
        "{followed:?}"
    );

    // the container exits: the follow ends; the kubelet restarts it; previous is its log
    let (_, code) = exec(tunnel, Transport::Spdy, &["touch", "/tmp/stop"], None).await;
    assert_eq!(code, 0);
    assert!(
        !next_until(&mut followed, "never printed").await,
        "the follow did not end with the container"
    );
    assert!(followed.ends_with("stopping\n"), "{followed:?}");
    until("the restarted container", T, || async {
        let st = sink
            .pods()
            .into_iter()
            .find(|(r, _)| r.name == "web")
            .map(|(_, s)| s)?;
        let c = st.container_statuses?.into_iter().next()?;
        (c.restart_count == 1 && c.state?.running.is_some()).then_some(())
    })
    .await;
    let (s, prev) = get_text(&apiserver, addr, &format!("{logs}?previous=true")).await;
    assert_eq!(
        (s, prev.as_str()),
        (
            200,
            "line one\nline two\nline three\nonly-in-first\nto-the-attached\nstopping\n"
        )
    );
    until("the new instance's lines", T, || async {
        let (s, b) = get_text(&apiserver, addr, logs).await;
        (s == 200 && b == "line one\nline two\nline three\n").then_some(())
    })
    .await;

    // the bearer token's user was reviewed with its uid and groups
    let viewer: Vec<_> = node
        .authz
        .access_reviews()
        .into_iter()
        .filter(|r| r.user.as_deref() == Some("viewer"))
        .map(|r| (r.uid, r.groups))
        .collect();
    assert_eq!(
        viewer,
        vec![(
            Some("uid-viewer".to_string()),
            Some(vec![
                "viewers".to_string(),
                "system:authenticated".to_string()
            ])
        )]
    );
    // everything else was authorized by SubjectAccessReviews of the API server's identity on
    // nodes/node-1: logs with get, exec, attach and port-forward by both verbs, on proxy
    let reviewed: std::collections::BTreeSet<(String, String)> = node
        .authz
        .access_reviews()
        .iter()
        .filter(|r| r.user.as_deref() != Some("viewer"))
        .map(|r| {
            assert_eq!(r.user.as_deref(), Some("kube-apiserver-kubelet-client"));
            assert_eq!(
                r.groups.as_deref(),
                Some(
                    &[
                        "system:masters".to_string(),
                        "system:authenticated".to_string()
                    ][..]
                )
            );
            let ra = r.resource_attributes.clone().unwrap();
            assert_eq!(ra.resource.as_deref(), Some("nodes"));
            assert_eq!(ra.name.as_deref(), Some("node-1"));
            (ra.verb.unwrap(), ra.subresource.unwrap())
        })
        .collect();
    assert!(
        reviewed.contains(&("get".into(), "proxy".into())),
        "{reviewed:?}"
    );
    assert!(
        reviewed.contains(&("get".into(), "pods".into())),
        "{reviewed:?}"
    );

    node.stop().await;
}

/// The read-only port's router does not serve the kubelet server's endpoints.
#[tokio::test]
async fn the_read_only_router_serves_no_logs_exec_or_port_forward() {
    use tower::ServiceExt;
    let app = node_kubelet::node::http::router(HttpState::new(
        Arc::new(StatesPods(node_kubelet::PodStates::new())),
        &NodeMetrics::default(),
    ));
    for path in [
        "/containerLogs/default/web/app",
        "/exec/default/web/app?command=ls&stdout=1",
        "/attach/default/web/app?stdout=1",
        "/portForward/default/web",
    ] {
        let r = app
            .clone()
            .oneshot(
                axum::http::Request::get(path)
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
}

// ---------------------------------------------------------------------------------------------
// kubectl through a stand-in API server

/// The API server's part for kubectl: the pod (from the kubelet's pods), and the `log`, `exec`
/// and `portforward` subresources proxied to the kubelet's server over TLS with the API
/// server's client certificate, rewritten as the API server rewrites them (the container from
/// the query into the path, `stdin=true` as `stdin=1`).
struct KubeletBackend {
    states: node_kubelet::PodStates,
    kubelet: std::net::SocketAddr,
    connector: tokio_rustls::TlsConnector,
}

impl KubeletBackend {
    /// The kubelet's path for a pod subresource request, `None` for anything else.
    fn kubelet_target(path: &str, query: &str) -> Option<String> {
        let rest = path.strip_prefix("/api/v1/namespaces/")?;
        let mut parts = rest.split('/');
        let (ns, _, pod, sub) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let mut container = String::new();
        let mut params = Vec::new();
        for kv in query.split('&').filter(|kv| !kv.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            match (k, v) {
                ("container", c) => container = c.to_string(),
                ("stdin" | "stdout" | "stderr" | "tty", "true") => params.push(format!("{k}=1")),
                ("stdin" | "stdout" | "stderr" | "tty", _) => {}
                _ => params.push(kv.to_string()),
            }
        }
        let q = params.join("&");
        Some(match sub {
            "log" => format!("/containerLogs/{ns}/{pod}/{container}?{q}"),
            "exec" => format!("/exec/{ns}/{pod}/{container}?{q}"),
            "portforward" => format!("/portForward/{ns}/{pod}?{q}"),
            _ => return None,
        })
    }
}

#[async_trait::async_trait]
impl PodBackend for KubeletBackend {
    fn pod(&self, namespace: &str, name: &str) -> Option<serde_json::Value> {
        let s = self.states.pods().into_iter().find(|s| {
            s.pod.metadata.namespace.as_deref().unwrap_or("default") == namespace
                && s.pod.metadata.name.as_deref() == Some(name)
        })?;
        let mut pod = s.pod;
        pod.status = s.status;
        serde_json::to_value(&pod).ok()
    }

    async fn upstream(&self, req: &SubresourceRequest) -> Option<Upstream> {
        let path = format!(
            "/api/v1/namespaces/{}/pods/{}/{}",
            req.namespace, req.pod, req.subresource
        );
        let to = Self::kubelet_target(&path, &req.raw_query)?;
        eprintln!(
            "stand-in API server: {} {path}?{} -> {to}",
            req.method, req.raw_query
        );
        let io = tls_connect(&self.connector, self.kubelet)
            .await
            .expect("the stand-in API server reaches the kubelet");
        Some(Upstream {
            io: Box::new(io),
            host: self.kubelet.to_string(),
            target: to,
        })
    }
}

async fn read_until(
    r: &mut (impl tokio::io::AsyncRead + Unpin),
    needle: &str,
    what: &str,
) -> String {
    let mut got = Vec::new();
    let found = tokio::time::timeout(T, async {
        let mut b = [0u8; 1024];
        while !String::from_utf8_lossy(&got).contains(needle) {
            match r.read(&mut b).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => got.extend_from_slice(&b[..n]),
            }
        }
        true
    })
    .await;
    let got = String::from_utf8_lossy(&got).into_owned();
    assert!(
        matches!(found, Ok(true)),
        "{what}: no {needle:?} in {got:?}"
    );
    got
}

#[test]
fn kubectl_logs_exec_and_port_forward_through_the_kubelet_server() {
    let name = "kubectl_logs_exec_and_port_forward_through_the_kubelet_server";
    if !(ready(name) && require_command(name, "kubectl")) {
        return;
    }
    on_node("kubesrvctl", |node| async move {
        let api = StandInApiServer::start(Arc::new(KubeletBackend {
            states: node.states.clone(),
            kubelet: node.addr,
            connector: node.apiserver.clone(),
        }))
        .await
        .unwrap();
        let home = node.certs.join("kubectl-home");
        let kubectl = |websockets: bool| {
            let mut c = api.kubectl(&home, websockets).unwrap();
            c.stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            c
        };
        node.source.apply(web_pod());
        let (apiserver, kaddr) = (node.apiserver.clone(), node.addr);
        until("the pod's three lines", T, || async {
            let (s, b) = get_text(&apiserver, kaddr, "/containerLogs/default/web/app").await;
            (s == 200 && b == "line one\nline two\nline three\n").then_some(())
        })
        .await;

        // logs
        let logs = async |args: &[&str]| {
            let out = tokio::time::timeout(T, kubectl(false).arg("logs").args(args).output())
                .await
                .expect("kubectl logs finished")
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            (out.status.success(), stdout, stderr)
        };
        let (ok, stdout, stderr) = logs(&["web", "-c", "app", "--tail=2"]).await;
        assert!(ok, "kubectl logs: {stderr}");
        assert_eq!(stdout, "line two\nline three\n");
        // the kubelet's 400 (the API server would wrap its words in a Status; the stand-in
        // passes the plain body, which kubectl reports by its code)
        let (ok, _, stderr) = logs(&["web", "-c", "app", "--previous"]).await;
        assert!(!ok);
        assert!(stderr.contains("BadRequest"), "{stderr}");

        for websockets in [false, true] {
            let what = if websockets { "websocket" } else { "spdy" };
            api.assert_exec_round_trip(&home, websockets, "web", "app", T)
                .await;
            let (mut child, local) = api.port_forward(&home, websockets, "web", 8080, T).await;
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", local))
                .await
                .unwrap();
            s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")
                .await
                .unwrap();
            let body = read_until(&mut s, "pf-ok\n", &format!("{what} port-forward")).await;
            assert!(body.starts_with("HTTP/1.1 200"), "{what}: {body}");
            api.assert_upgraded(websockets, &format!("{what} port-forward"));
            let _ = child.kill().await;
        }
        node.stop().await;
    });
}
