//! The streaming server against a fake runtime (no root needed): exec and port forwarding
//! over SPDY and WebSocket through our clients, tokens, protocol negotiation, runtime errors,
//! clients that hang up and clients that never open their streams.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use node_core::{RuntimeError, cri};
use node_cri::streaming::client::{self, ExecOptions, Transport};
use node_cri::streaming::{
    Duplex, StreamIo, StreamingConfig, StreamingError, StreamingRuntime, StreamingServer,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TRANSPORTS: [Transport; 2] = [Transport::Spdy, Transport::WebSocket];
const T: Duration = Duration::from_secs(10);

/// `cat` with an exit code (`cmd[1]`), `missing` for an unknown container, `hang` to block
/// until cancelled (counted in `cancelled`); port forwarding to 127.0.0.1.
#[derive(Default)]
struct Fake {
    cancelled: Arc<AtomicUsize>,
}

struct CountOnDrop(Arc<AtomicUsize>);
impl Drop for CountOnDrop {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl StreamingRuntime for Fake {
    async fn exec(
        &self,
        id: &str,
        cmd: Vec<String>,
        mut io: StreamIo,
    ) -> Result<i32, RuntimeError> {
        match cmd[0].as_str() {
            "missing" => Err(RuntimeError::NotFound {
                kind: "container",
                id: id.into(),
            }),
            "hang" => {
                let _guard = CountOnDrop(self.cancelled.clone());
                std::future::pending::<()>().await;
                Ok(0)
            }
            _ => {
                if let (Some(mut i), Some(mut o)) = (io.stdin.take(), io.stdout.take()) {
                    tokio::io::copy(&mut i, &mut o).await.ok();
                }
                if let Some(mut e) = io.stderr.take() {
                    e.write_all(b"done\n").await.ok();
                }
                Ok(cmd.get(1).and_then(|c| c.parse().ok()).unwrap_or(0))
            }
        }
    }
    async fn attach(&self, id: &str, io: StreamIo) -> Result<i32, RuntimeError> {
        self.exec(id, vec!["cat".into()], io).await
    }
    async fn port_forward(
        &self,
        _sandbox: &str,
        port: u16,
        mut stream: Box<dyn Duplex>,
    ) -> Result<(), RuntimeError> {
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| RuntimeError::Unavailable(format!("connect to port {port}: {e}")))?;
        tokio::io::copy_bidirectional(&mut stream, &mut tcp)
            .await
            .ok();
        Ok(())
    }
}

async fn server(cfg: StreamingConfig) -> (StreamingServer, Arc<AtomicUsize>) {
    let fake = Fake::default();
    let cancelled = fake.cancelled.clone();
    let s = StreamingServer::start(cfg, Arc::new(fake)).await.unwrap();
    (s, cancelled)
}

fn exec_req(cmd: &[&str], stdin: bool, stderr: bool) -> cri::ExecRequest {
    cri::ExecRequest {
        container_id: "c1".into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty: false,
        stdin,
        stdout: true,
        stderr,
    }
}

fn opts(stdin: bool, stderr: bool) -> ExecOptions {
    ExecOptions {
        stdin,
        stdout: true,
        stderr,
        tty: false,
    }
}

/// A TCP echo server on 127.0.0.1: its port.
async fn echo_server() -> u16 {
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = echo.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                tokio::io::copy(&mut r, &mut w).await.ok();
            });
        }
    });
    port
}

/// One forwarded connection to `port` of pod `p1` through the server's URL.
async fn forward(srv: &StreamingServer, t: Transport, port: u16) -> client::Forwarded {
    let url = srv
        .get_port_forward(&cri::PortForwardRequest {
            pod_sandbox_id: "p1".into(),
            port: vec![port as i32],
        })
        .unwrap()
        .url;
    client::port_forward(&url, t, port).await.unwrap()
}

/// Send a raw HTTP request, return the status code and the rest of the head.
async fn raw(addr: SocketAddr, req: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut v = Vec::new();
    let mut buf = [0u8; 1024];
    while !v.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(T, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed before a response");
        v.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&v).into_owned();
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    (code, head)
}

#[tokio::test]
async fn exec_echoes_stdin_and_reports_exit_codes_over_both_transports() {
    let (srv, _) = server(StreamingConfig::default()).await;
    for t in TRANSPORTS {
        let url = srv
            .get_exec(&exec_req(&["cat", "9"], true, true))
            .unwrap()
            .url;
        assert!(url.starts_with(&format!("http://{}/exec/", srv.local_addr())));
        let mut cmd = client::exec(&url, t, opts(true, true)).await.unwrap();
        let mut stdin = cmd.stdin.take().unwrap();
        stdin.write_all(b"over the wire\n").await.unwrap();
        drop(stdin);
        let mut out = String::new();
        cmd.stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .await
            .unwrap();
        let mut err = String::new();
        cmd.stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .await
            .unwrap();
        assert_eq!(
            (out.as_str(), err.as_str()),
            ("over the wire\n", "done\n"),
            "{t:?}"
        );
        assert_eq!(cmd.wait().await.unwrap(), 9, "{t:?}");
        let want = if t == Transport::Spdy {
            "v4.channel.k8s.io"
        } else {
            "v5.channel.k8s.io"
        };
        assert_eq!(cmd.protocol, want);
        // a runtime error arrives as the status, with its message
        let url = srv
            .get_exec(&exec_req(&["missing"], false, false))
            .unwrap()
            .url;
        let mut cmd = client::exec(&url, t, opts(false, false)).await.unwrap();
        let e = cmd.wait().await.unwrap_err();
        assert!(
            matches!(&e, StreamingError::Remote(m) if m.contains("\"c1\" not found")),
            "{t:?}: {e:?}"
        );
        // attach speaks the same protocol
        let url = srv
            .get_attach(&cri::AttachRequest {
                container_id: "c1".into(),
                stdin: true,
                stdout: true,
                ..Default::default()
            })
            .unwrap()
            .url;
        let mut a = client::exec(&url, t, opts(true, false)).await.unwrap();
        let mut stdin = a.stdin.take().unwrap();
        stdin.write_all(b"attached\n").await.unwrap();
        drop(stdin);
        let mut out = String::new();
        a.stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .await
            .unwrap();
        assert_eq!(out, "attached\n");
        assert_eq!(a.wait().await.unwrap(), 0);
    }
    let deadline = Instant::now() + T;
    while srv.active_sessions() > 0 {
        assert!(Instant::now() < deadline, "sessions left");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn port_forward_reaches_a_local_server_over_both_transports() {
    let (srv, _) = server(StreamingConfig::default()).await;
    let port = echo_server().await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    for t in TRANSPORTS {
        let mut f = forward(&srv, t, port).await;
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
        let (mut r, mut w) = tokio::io::split(f.stream);
        let data = big.clone();
        let writer = tokio::spawn(async move {
            w.write_all(&data).await.unwrap();
            w
        });
        let mut back = vec![0u8; big.len()];
        tokio::time::timeout(T, r.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert!(back == big, "{t:?}: the bytes came back unchanged");
        drop(writer.await.unwrap());
        // a port nobody listens on: the error stream says so
        f = forward(&srv, t, closed).await;
        let e = f.error(T).await.unwrap_or_default();
        assert!(
            e.contains(&format!("port {closed}")) && e.contains("p1"),
            "{t:?}: {e:?}"
        );
    }
}

#[tokio::test]
async fn tokens_are_single_use_and_expire_and_bad_requests_are_refused() {
    let (srv, _) = server(StreamingConfig {
        token_ttl: Duration::from_millis(800),
        max_tokens: 3,
        ..Default::default()
    })
    .await;
    let addr = srv.local_addr();
    let upgrade = |path: &str, proto: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: {proto}\r\n\r\n"
        )
    };
    assert_eq!(
        raw(addr, &upgrade("/exec/nope", "v4.channel.k8s.io"))
            .await
            .0,
        404
    );
    assert_eq!(
        raw(addr, &upgrade("/logs/x", "v4.channel.k8s.io")).await.0,
        404
    );
    // an unsupported protocol: 403 with what we accept
    let url = srv.get_exec(&exec_req(&["cat"], false, false)).unwrap().url;
    let path = url.split_once(&addr.to_string()).unwrap().1.to_string();
    let (code, head) = raw(addr, &upgrade(&path, "v9.channel.k8s.io")).await;
    assert_eq!(code, 403);
    assert!(
        head.to_ascii_lowercase()
            .contains("x-accepted-stream-protocol-versions: v4.channel.k8s.io"),
        "{head}"
    );
    // no upgrade at all: 400
    let url = srv.get_exec(&exec_req(&["cat"], false, false)).unwrap().url;
    let path = url.split_once(&addr.to_string()).unwrap().1.to_string();
    assert_eq!(
        raw(addr, &format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"))
            .await
            .0,
        400
    );
    // used once
    let url = srv.get_exec(&exec_req(&["cat"], false, false)).unwrap().url;
    let mut cmd = client::exec(&url, Transport::WebSocket, opts(false, false))
        .await
        .unwrap();
    assert_eq!(cmd.wait().await.unwrap(), 0);
    let e = client::exec(&url, Transport::WebSocket, opts(false, false))
        .await
        .unwrap_err();
    assert!(
        matches!(e, StreamingError::Status { status: 404, .. }),
        "{e:?}"
    );
    // expired
    let url = srv.get_exec(&exec_req(&["cat"], false, false)).unwrap().url;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let e = client::exec(&url, Transport::Spdy, opts(false, false))
        .await
        .unwrap_err();
    assert!(
        matches!(e, StreamingError::Status { status: 404, .. }),
        "{e:?}"
    );
    assert_eq!(srv.pending_tokens(), 0);
    // too many waiting
    for _ in 0..3 {
        srv.get_exec(&exec_req(&["cat"], false, false)).unwrap();
    }
    let e = srv.get_exec(&exec_req(&["cat"], false, false)).unwrap_err();
    assert!(matches!(e, StreamingError::TooManyRequests(3)), "{e:?}");
    // invalid requests get no token
    let e = srv
        .get_exec(&cri::ExecRequest {
            container_id: "c1".into(),
            cmd: vec!["sh".into()],
            ..Default::default()
        })
        .unwrap_err();
    assert!(
        e.to_string().contains("one of stdin, stdout, or stderr"),
        "{e}"
    );
    let e = srv
        .get_port_forward(&cri::PortForwardRequest {
            pod_sandbox_id: "p1".into(),
            port: vec![70000],
        })
        .unwrap_err();
    assert!(e.to_string().contains("70000"), "{e}");
}

#[tokio::test]
async fn a_client_hanging_up_cancels_the_runtime_call() {
    let (srv, cancelled) = server(StreamingConfig::default()).await;
    for (i, t) in TRANSPORTS.into_iter().enumerate() {
        let url = srv.get_exec(&exec_req(&["hang"], true, false)).unwrap().url;
        let cmd = client::exec(&url, t, opts(true, false)).await.unwrap();
        let deadline = Instant::now() + T;
        while srv.active_sessions() == 0 {
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(cmd);
        while cancelled.load(Ordering::SeqCst) < i + 1 || srv.active_sessions() > 0 {
            assert!(
                Instant::now() < deadline,
                "{t:?}: the call was not cancelled"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[tokio::test]
async fn a_client_that_opens_no_streams_is_dropped_after_the_creation_timeout() {
    let (srv, _) = server(StreamingConfig {
        stream_creation_timeout: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    let url = srv.get_exec(&exec_req(&["cat"], true, false)).unwrap().url;
    let addr = srv.local_addr();
    let path = url.split_once(&addr.to_string()).unwrap().1.to_string();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("POST {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let start = Instant::now();
    let mut v = Vec::new();
    tokio::time::timeout(T, s.read_to_end(&mut v))
        .await
        .unwrap()
        .ok();
    assert!(String::from_utf8_lossy(&v).starts_with("HTTP/1.1 101"));
    assert!(
        start.elapsed() >= Duration::from_millis(250),
        "{:?}",
        start.elapsed()
    );
    let deadline = Instant::now() + T;
    while srv.active_sessions() > 0 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn an_idle_connection_is_closed_and_one_with_traffic_is_not() {
    let idle = Duration::from_millis(300);
    let (srv, cancelled) = server(StreamingConfig {
        stream_idle_timeout: idle,
        ..Default::default()
    })
    .await;
    let port = echo_server().await;
    let released = |want: usize, what: String| {
        let srv = &srv;
        let cancelled = cancelled.clone();
        async move {
            let deadline = Instant::now() + T;
            while cancelled.load(Ordering::SeqCst) < want || srv.active_sessions() > 0 {
                assert!(Instant::now() < deadline, "{what}: not released");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    for (i, t) in TRANSPORTS.into_iter().enumerate() {
        // an exec whose process hangs with nothing on the wire: closed, its call cancelled
        let url = srv.get_exec(&exec_req(&["hang"], true, false)).unwrap().url;
        let mut cmd = client::exec(&url, t, opts(true, false)).await.unwrap();
        let r = tokio::time::timeout(T, cmd.wait())
            .await
            .unwrap_or_else(|_| panic!("{t:?}: the idle connection stays open"));
        assert!(
            r.is_err(),
            "{t:?}: no exit status for a cut session, got {r:?}"
        );
        released(i + 1, format!("{t:?} idle exec")).await;

        // an exec with traffic more often than the timeout, for several timeouts: kept
        let url = srv
            .get_exec(&exec_req(&["cat", "3"], true, false))
            .unwrap()
            .url;
        let mut cmd = client::exec(&url, t, opts(true, false)).await.unwrap();
        let mut stdin = cmd.stdin.take().unwrap();
        let mut stdout = cmd.stdout.take().unwrap();
        let start = Instant::now();
        while start.elapsed() < idle * 5 {
            stdin.write_all(b"tick\n").await.unwrap();
            let mut back = [0u8; 5];
            tokio::time::timeout(T, stdout.read_exact(&mut back))
                .await
                .unwrap_or_else(|_| panic!("{t:?}: no echo"))
                .unwrap_or_else(|e| panic!("{t:?}: a busy session was closed: {e}"));
            assert_eq!(&back, b"tick\n");
            tokio::time::sleep(idle / 6).await;
        }
        drop(stdin);
        let code = tokio::time::timeout(T, cmd.wait()).await.unwrap();
        assert_eq!(code.unwrap(), 3, "{t:?}: the busy exec ran to its end");

        // a forwarded connection nobody uses: closed
        let mut f = forward(&srv, t, port).await;
        let mut buf = [0u8; 16];
        let r = tokio::time::timeout(T, f.stream.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{t:?}: the idle forwarded connection stays open"));
        assert!(
            matches!(r, Ok(0) | Err(_)),
            "{t:?}: forwarded connection: {r:?}"
        );
        released(i + 1, format!("{t:?} idle port forward")).await;
    }
}
