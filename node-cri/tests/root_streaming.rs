//! Root tests of the native runtime's streaming (need root, overlayfs, cgroups and
//! busybox-static): exec with and without a TTY, attach and port forwarding, each end to end
//! through the URL the runtime returns, over SPDY/3.1 and over WebSocket; bad tokens, unknown
//! ids and clients that hang up. Setup is shared with `root_native_runtime.rs` (tests/common).

mod common;

use std::time::{Duration, Instant};

use common::native::*;
use common::pod_fixture::{self, ContainerConfigExt};
use node_core::{RuntimeBackend, RuntimeError, cri};
use node_cri::native::runtime::NativeRuntime;
use node_cri::streaming::client::{self, ExecOptions, Transport};
use node_cri::streaming::{StreamingError, TermSize};
use node_test_support::StandInApiServer;
use node_test_support::kubectl::{PodBackend, SubresourceRequest, Upstream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const TRANSPORTS: [Transport; 2] = [Transport::Spdy, Transport::WebSocket];
const T: Duration = Duration::from_secs(20);

async fn exec_url(rt: &NativeRuntime, id: &str, cmd: &[&str], o: ExecOptions) -> String {
    rt.exec(cri::ExecRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty: o.tty,
        stdin: o.stdin,
        stdout: o.stdout,
        stderr: o.stderr,
    })
    .await
    .expect("exec url")
    .url
}

/// Attach to `id` with the streams `o` names, through the URL the runtime returns.
async fn attach(
    rt: &NativeRuntime,
    id: &str,
    t: Transport,
    o: ExecOptions,
) -> client::RemoteCommand {
    let url = rt
        .attach(cri::AttachRequest {
            container_id: id.into(),
            stdin: o.stdin,
            tty: o.tty,
            stdout: o.stdout,
            stderr: o.stderr,
        })
        .await
        .expect("attach url")
        .url;
    client::exec(&url, t, o).await.expect("connect")
}

async fn read_all(r: Option<impl AsyncRead + Unpin>) -> Vec<u8> {
    let mut v = Vec::new();
    if let Some(mut r) = r {
        tokio::time::timeout(T, r.read_to_end(&mut v))
            .await
            .expect("output within the timeout")
            .expect("read output");
    }
    v
}

/// Read from `r` until the text contains `needle`; everything read.
async fn read_until(r: &mut (impl AsyncRead + Unpin), needle: &str, what: &str) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + T;
    while !String::from_utf8_lossy(&got).contains(needle) {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, r.read(&mut buf))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{what}: no {needle:?} within {T:?}, got {:?}",
                    String::from_utf8_lossy(&got)
                )
            })
            .expect("read");
        assert!(
            n > 0,
            "{what}: EOF before {needle:?}, got {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Write `line` to `stdin` until `stdout` shows `needle` (an attach follows the output from
/// its end, so what came before is not seen), at most 20 times, reading up to 500 ms after
/// each; everything read.
async fn send_until_echoed(
    stdin: &mut (impl AsyncWrite + Unpin),
    stdout: &mut (impl AsyncRead + Unpin),
    line: &str,
    needle: &str,
) -> String {
    let mut got = String::new();
    for _ in 0..20 {
        stdin.write_all(line.as_bytes()).await.unwrap();
        let mut buf = [0u8; 256];
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(500), stdout.read(&mut buf)).await
        {
            got.push_str(&String::from_utf8_lossy(&buf[..n]));
            if got.contains(needle) {
                break;
            }
        }
    }
    got
}

/// Processes whose command line is exactly `argv`.
fn processes_with_cmdline(argv: &[&str]) -> Vec<i32> {
    let want = argv.join("\0") + "\0";
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want.as_bytes())
        })
        .collect()
}

/// A connection the streaming server must refuse as not found (an unknown, expired or used
/// token, or one for another kind of stream): a 404 over transport `t`.
fn refused_with_404<T>(t: Transport, r: Result<T, StreamingError>) {
    match r {
        Err(StreamingError::Status { status: 404, .. }) => {}
        Err(e) => panic!("{t:?}: {e:?}"),
        Ok(_) => panic!("{t:?}: accepted"),
    }
}

/// Shell input that waits (every 50 ms) until the terminal is `rows` x `cols`: a resize reaches
/// the terminal asynchronously. The numbers are spelled as arithmetic so that the terminal's
/// echo of this input never shows `<rows> <cols>` itself.
fn until_size(rows: u16, cols: u16) -> String {
    format!(
        "until [ \"$(busybox stty size)\" = \"$(({rows})) $(({cols}))\" ]; do sleep 0.05; done; "
    )
}

/// Send a terminal size (`width` columns, `height` rows) on a session's resize stream.
async fn resize_to(resize: &tokio::sync::mpsc::Sender<TermSize>, width: u16, height: u16) {
    resize.send(TermSize { width, height }).await.unwrap();
}

/// The streams to open: stdin, stdout, stderr, tty.
fn opts(stdin: bool, stdout: bool, stderr: bool, tty: bool) -> ExecOptions {
    ExecOptions {
        stdin,
        stdout,
        stderr,
        tty,
    }
}

/// A sandbox named `name` with a long-running container `box` in it: (sandbox, its config,
/// container).
async fn pod_with_box(
    env: &Env,
    rt: &NativeRuntime,
    name: &str,
) -> (String, cri::PodSandboxConfig, String) {
    let (sb, sb_cfg) = env.pod(rt, name).await;
    let c = run_container(rt, &sb, &sb_cfg, long_running("box")).await;
    (sb, sb_cfg, c)
}

fn long_running(name: &str) -> cri::ContainerConfig {
    container_config(name, &["sh", "-c", "while true; do sleep 1; done"])
}

#[test]
fn exec_with_stdin_and_without_tty_over_spdy_and_websocket() {
    native_test(
        "exec_with_stdin_and_without_tty_over_spdy_and_websocket",
        "stexec",
        async |env, rt| {
            let (_, _, c) = pod_with_box(env, &rt, "exec").await;
            let all = opts(true, true, true, false);
            for t in TRANSPORTS {
                let url = exec_url(&rt, &c, &["cat"], all).await;
                assert!(url.starts_with("http://127.0.0.1:"), "{url}");
                let mut cmd = client::exec(&url, t, all).await.expect("connect");
                // more than any pipe buffer, echoed back through cat
                let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
                let mut stdin = cmd.stdin.take().unwrap();
                let payload = data.clone();
                let writer = tokio::spawn(async move {
                    stdin.write_all(&payload).await.unwrap();
                    stdin.shutdown().await.unwrap();
                });
                let out = read_all(cmd.stdout.take()).await;
                writer.await.unwrap();
                assert_eq!(out.len(), data.len(), "{t:?}: cat echoed everything");
                assert!(out == data, "{t:?}: the bytes came back unchanged");
                assert_eq!(read_all(cmd.stderr.take()).await, b"");
                assert_eq!(cmd.wait().await.expect("status"), 0, "{t:?}");

                // a non-zero exit code and stderr come through
                let url = exec_url(
                    &rt,
                    &c,
                    &["sh", "-c", "echo out; echo oops >&2; exit 7"],
                    all,
                )
                .await;
                let mut cmd = client::exec(&url, t, all).await.expect("connect");
                drop(cmd.stdin.take());
                let out = read_all(cmd.stdout.take()).await;
                let err = read_all(cmd.stderr.take()).await;
                assert_eq!(out, b"out\n", "{t:?}");
                assert_eq!(err, b"oops\n", "{t:?}");
                assert_eq!(cmd.wait().await.expect("status"), 7, "{t:?}");

                // the exec runs inside the container (its hostname, its pid namespace)
                let o = opts(false, true, false, false);
                let url = exec_url(&rt, &c, &["sh", "-c", "hostname; echo $$"], o).await;
                let mut cmd = client::exec(&url, t, o).await.expect("connect");
                let out = String::from_utf8(read_all(cmd.stdout.take()).await).unwrap();
                assert_eq!(cmd.wait().await.unwrap(), 0);
                let lines: Vec<&str> = out.lines().collect();
                assert_eq!(lines[0], "exec", "{t:?}: {out:?}");
                let pid: i32 = lines[1].parse().unwrap();
                assert!(
                    pid < 100,
                    "{t:?}: a pid of the container's namespace, got {pid}"
                );
            }
            let server = rt.streaming_server().await.unwrap();
            wait_for("sessions to end", T, || async {
                server.active_sessions() == 0
            })
            .await;
            assert_eq!(server.pending_tokens(), 0);
        },
    );
}

#[test]
fn exec_with_a_tty_follows_resizes_over_spdy_and_websocket() {
    native_test(
        "exec_with_a_tty_follows_resizes_over_spdy_and_websocket",
        "sttty",
        async |env, rt| {
            let (_, _, c) = pod_with_box(env, &rt, "tty").await;
            let o = opts(true, true, false, true);
            for (t, (w, h)) in TRANSPORTS.into_iter().zip([(123u16, 45u16), (77, 31)]) {
                let url = exec_url(&rt, &c, &["sh"], o).await;
                let mut cmd = client::exec(&url, t, o).await.expect("connect");
                assert!(cmd.stderr.is_none());
                let resize = cmd.resize.clone().expect("a resize stream with a tty");
                resize_to(&resize, w, h).await;
                let mut stdin = cmd.stdin.take().unwrap();
                let mut stdout = cmd.stdout.take().unwrap();
                // the shell is on a terminal of the container's own devpts, of the size we sent
                // (it reaches the terminal asynchronously: the shell waits for it, and the
                // output's line is what the terminal echoes of this input)
                stdin
                .write_all(format!("{}[ -t 0 ] && test -c \"$(busybox tty)\" && echo IS-A-TTY; busybox stty size; exit 3\n", until_size(h, w)).as_bytes())
                .await
                .unwrap();
                let out = read_until(&mut stdout, &format!("{h} {w}\r\n"), &format!("{t:?}")).await;
                assert!(out.contains("IS-A-TTY\r\n"), "{t:?}: {out:?}");
                // and a later resize too
                resize_to(&resize, 200, 60).await;
                drop(stdin);
                let rest = String::from_utf8_lossy(&read_all(Some(stdout)).await).into_owned();
                assert_eq!(cmd.wait().await.expect("status"), 3, "{t:?}: {rest:?}");

                let url = exec_url(&rt, &c, &["sh"], o).await;
                let mut cmd = client::exec(&url, t, o).await.expect("connect");
                let resize = cmd.resize.clone().unwrap();
                let mut stdin = cmd.stdin.take().unwrap();
                let mut stdout = cmd.stdout.take().unwrap();
                stdin.write_all(b"echo READY\n").await.unwrap();
                read_until(&mut stdout, "READY\r\n", "prompt").await;
                resize_to(&resize, 99, 11).await;
                stdin
                    .write_all(
                        format!("{}busybox stty size; exit 0\n", until_size(11, 99)).as_bytes(),
                    )
                    .await
                    .unwrap();
                read_until(&mut stdout, "11 99\r\n", &format!("{t:?} resize")).await;
                assert_eq!(cmd.wait().await.expect("status"), 0);
            }
        },
    );
}

#[test]
fn a_terminal_belongs_to_the_user_of_its_process() {
    native_test(
        "a_terminal_belongs_to_the_user_of_its_process",
        "stttyown",
        async |env, rt| {
            let (sb, sb_cfg) = env.pod(&rt, "ttyown").await;
            // the container's own terminal, its process running as 1000
            let cfg = container_config(
                "user",
                &[
                    "sh",
                    "-c",
                    "busybox stat -L -c MAIN=%u /proc/self/fd/0; while true; do sleep 1; done",
                ],
            )
            .with_tty()
            .with_stdin(false)
            .with_security(|sc| sc.run_as_user = Some(cri::Int64Value { value: 1000 }));
            let c = run_container(&rt, &sb, &sb_cfg, cfg).await;
            let log = env.logs.join("ttyown/user/0.log");
            wait_for("the container's owner line", T, || async {
                std::fs::read_to_string(&log).is_ok_and(|l| l.contains("MAIN="))
            })
            .await;
            let text = std::fs::read_to_string(&log).unwrap();
            assert!(text.contains("MAIN=1000"), "{text:?}");
            // an exec's pty (of the container's devpts): its user, group tty (5)
            let o = opts(false, true, false, true);
            for t in TRANSPORTS {
                let url = exec_url(
                    &rt,
                    &c,
                    &[
                        "busybox",
                        "stat",
                        "-L",
                        "-c",
                        "EXEC=%u:%g",
                        "/proc/self/fd/0",
                    ],
                    o,
                )
                .await;
                let mut cmd = client::exec(&url, t, o).await.expect("connect");
                let out = String::from_utf8_lossy(&read_all(cmd.stdout.take()).await).into_owned();
                assert_eq!(cmd.wait().await.expect("status"), 0, "{t:?}: {out:?}");
                assert!(out.contains("EXEC=1000:5"), "{t:?}: {out:?}");
            }
        },
    );
}

#[test]
fn attach_to_a_container_started_with_stdin_over_spdy_and_websocket() {
    native_test(
        "attach_to_a_container_started_with_stdin_over_spdy_and_websocket",
        "statt",
        async |env, rt| {
            let (sb, sb_cfg) = env.pod(&rt, "attach").await;
            let script = "echo started; while read l; do echo \"got $l\"; echo \"err $l\" >&2; done; echo eof";
            let cfg = container_config("echo", &["sh", "-c", script]).with_stdin(false);
            let c = run_container(&rt, &sb, &sb_cfg, cfg).await;
            let log = env.logs.join("attach/echo/0.log");
            wait_for("the container's first line", T, || async {
                std::fs::read_to_string(&log).is_ok_and(|l| l.contains("started"))
            })
            .await;
            let o = opts(true, true, true, false);
            for t in TRANSPORTS {
                let mut a = attach(&rt, &c, t, o).await;
                let mut stdin = a.stdin.take().unwrap();
                let mut stdout = a.stdout.take().unwrap();
                let mut stderr = a.stderr.take().unwrap();
                let word = format!("hello-{t:?}");
                // the follower starts at the log's end: send until the echo shows up
                let got = send_until_echoed(
                    &mut stdin,
                    &mut stdout,
                    &format!("{word}\n"),
                    &format!("got {word}\n"),
                )
                .await;
                assert!(
                    got.contains(&format!("got {word}\n")),
                    "{t:?}: stdout {got:?}"
                );
                read_until(
                    &mut stderr,
                    &format!("err {word}\n"),
                    &format!("{t:?} stderr"),
                )
                .await;
                assert!(
                    !got.contains("started"),
                    "{t:?}: attach follows from the current end, got {got:?}"
                );
                // detaching leaves the container running, its stdin open
                drop(stdin);
                drop(a);
                tokio::time::sleep(Duration::from_millis(200)).await;
                let st = pod_fixture::container_status(&rt, &c).await;
                assert_eq!(
                    st.state,
                    cri::ContainerState::ContainerRunning as i32,
                    "{t:?}"
                );
            }
            // an attach ends with the container, with its exit code
            let url = rt
                .attach(cri::AttachRequest {
                    container_id: c.clone(),
                    stdout: true,
                    ..Default::default()
                })
                .await
                .unwrap()
                .url;
            let o = opts(false, true, false, false);
            let mut a = client::exec(&url, Transport::WebSocket, o).await.unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
            rt.stop_container(&c, Duration::from_secs(1)).await.unwrap();
            let code = tokio::time::timeout(T, a.wait())
                .await
                .expect("attach ends with the container")
                .unwrap();
            let st = pod_fixture::container_status(&rt, &c).await;
            assert_eq!(code, st.exit_code, "the container's own exit code");
            assert_ne!(code, 0);
            // no stdin for a container created without it
            let plain = run_container(&rt, &sb, &sb_cfg, long_running("nostdin")).await;
            let e = rt
                .attach(cri::AttachRequest {
                    container_id: plain,
                    stdin: true,
                    stdout: true,
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert!(
                matches!(&e, RuntimeError::FailedPrecondition(m) if m.contains("not created with stdin")),
                "{e:?}"
            );
        },
    );
}

#[test]
fn stdin_once_closes_the_stdin_when_the_first_attach_ends_over_spdy_and_websocket() {
    native_test(
        "stdin_once_closes_the_stdin_when_the_first_attach_ends_over_spdy_and_websocket",
        "stonce",
        async |env, rt| {
            let (sb, sb_cfg) = env.pod(&rt, "once").await;
            // (stdin_once, tty): cat sees EOF when the attach ends with stdin_once (on a TTY the
            // terminal's EOF character), and keeps reading without it
            for t in TRANSPORTS {
                for (once, tty) in [(true, false), (true, true), (false, false)] {
                    let what = format!("{t:?} stdin_once={once} tty={tty}");
                    let name = format!("cat-{}-{once}-{tty}", format!("{t:?}").to_lowercase());
                    let mut cfg = container_config(&name, &["cat"]).with_stdin(once);
                    cfg.tty = tty;
                    let c = run_container(&rt, &sb, &sb_cfg, cfg).await;
                    let mut a = attach(&rt, &c, t, opts(true, true, false, tty)).await;
                    let mut stdin = a.stdin.take().unwrap();
                    let mut stdout = a.stdout.take().unwrap();
                    // the follower starts at the log's end: send until the echo shows up
                    let got =
                        send_until_echoed(&mut stdin, &mut stdout, "a line\n", "a line").await;
                    assert!(got.contains("a line"), "{what}: stdout {got:?}");
                    // with stdin_once, a second attach while the first holds stdin gets none: the
                    // container's stdin still ends with the first
                    let second = if once {
                        Some(attach(&rt, &c, t, opts(true, true, false, tty)).await)
                    } else {
                        None
                    };
                    // detach
                    drop(stdin);
                    drop(stdout);
                    drop(a);
                    if once {
                        wait_for(&format!("{what}: cat exits"), T, || async {
                            status(&rt, &c).await.state
                                == cri::ContainerState::ContainerExited as i32
                        })
                        .await;
                        let st = status(&rt, &c).await;
                        assert_eq!(st.exit_code, 0, "{what}: cat saw EOF, {st:?}");
                        // the FIFO went with the first attach: a later attach has no stdin
                        let fifo = env.root.path().join("rt/containers").join(&c).join("stdin");
                        assert!(!fifo.exists(), "{what}: {} is left", fifo.display());
                        drop(second);
                    } else {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        assert_eq!(
                            status(&rt, &c).await.state,
                            cri::ContainerState::ContainerRunning as i32,
                            "{what}: the container's stdin stays open after the detach"
                        );
                        rt.stop_container(&c, Duration::from_secs(1)).await.unwrap();
                    }
                }
            }
        },
    );
}

#[test]
fn attach_to_a_tty_container_types_and_resizes_over_spdy_and_websocket() {
    native_test(
        "attach_to_a_tty_container_types_and_resizes_over_spdy_and_websocket",
        "stattty",
        async |env, rt| {
            let (sb, sb_cfg) = env.pod(&rt, "ttyattach").await;
            let cfg = container_config("shell", &["sh"])
                .with_stdin(false)
                .with_tty();
            let c = run_container(&rt, &sb, &sb_cfg, cfg).await;
            let o = opts(true, true, false, true);
            for (t, (w, h)) in TRANSPORTS.into_iter().zip([(91u16, 17u16), (64, 29)]) {
                let mut a = attach(&rt, &c, t, o).await;
                let resize = a.resize.clone().expect("resize with a tty");
                let mut stdin = a.stdin.take().unwrap();
                let mut stdout = a.stdout.take().unwrap();
                resize_to(&resize, w, h).await;
                stdin
                    .write_all(
                        format!(
                            "{}[ -t 0 ] && echo TTY-$((6*7)); busybox stty size\n",
                            until_size(h, w)
                        )
                        .as_bytes(),
                    )
                    .await
                    .unwrap();
                let out = read_until(&mut stdout, &format!("{h} {w}"), &format!("{t:?}")).await;
                assert!(out.contains("TTY-42"), "{t:?}: {out:?}");
                drop(a);
            }
            let st = pod_fixture::container_status(&rt, &c).await;
            assert_eq!(st.state, cri::ContainerState::ContainerRunning as i32);
        },
    );
}

#[test]
fn port_forward_to_a_tcp_server_in_the_pod_over_spdy_and_websocket() {
    native_test(
        "port_forward_to_a_tcp_server_in_the_pod_over_spdy_and_websocket",
        "stpf",
        async |env, rt| {
            let (sb, sb_cfg) = env.pod(&rt, "pf").await;
            run_container(
                &rt,
                &sb,
                &sb_cfg,
                container_config("web", &["httpd", "-f", "-p", "8080", "-h", "/var/www"]),
            )
            .await;
            // the server listens in the pod's network namespace, not in ours
            assert!(std::net::TcpStream::connect("127.0.0.1:8080").is_err());
            let url_for = |port: i32| {
                let rt = &rt;
                let sb = sb.clone();
                async move {
                    rt.port_forward(cri::PortForwardRequest {
                        pod_sandbox_id: sb,
                        port: vec![port],
                    })
                    .await
                    .expect("port forward url")
                    .url
                }
            };
            for t in TRANSPORTS {
                let mut body = String::new();
                let deadline = Instant::now() + T;
                while !body.contains("hello from nodekit") {
                    assert!(Instant::now() < deadline, "{t:?}: no answer, last {body:?}");
                    let url = url_for(8080).await;
                    let mut f = client::port_forward(&url, t, 8080).await.expect("connect");
                    f.stream
                        .write_all(b"GET /index.html HTTP/1.0\r\n\r\n")
                        .await
                        .unwrap();
                    let mut v = Vec::new();
                    let ended = tokio::time::timeout(T, f.stream.read_to_end(&mut v)).await;
                    body = String::from_utf8_lossy(&v).into_owned();
                    if body.contains("hello from nodekit") {
                        // the pod's server closed (HTTP/1.0): the client's stream ends with it
                        assert!(ended.is_ok(), "{t:?}: the stream did not end: {body:?}");
                    } else {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                assert!(body.starts_with("HTTP/1."), "{t:?}: {body:?}");
                // a closed port: the error comes on the error stream
                let url = url_for(9).await;
                let mut f = client::port_forward(&url, t, 9).await.expect("connect");
                let e = f.error(T).await.unwrap_or_default();
                assert!(
                    e.contains("port 9") && e.contains("refused"),
                    "{t:?}: {e:?}"
                );
            }
        },
    );
}

#[test]
fn bad_tokens_unknown_ids_and_clients_that_hang_up() {
    if !prerequisites("bad_tokens_unknown_ids_and_clients_that_hang_up") {
        return;
    }
    let env = Env::new();
    in_netns("stbad", || async {
        let mut cfg = env.config();
        cfg.streaming.token_ttl = Duration::from_secs(1);
        let rt = NativeRuntime::new(cfg).unwrap();
        let (sb, sb_cfg, c) = pod_with_box(&env, &rt, "bad").await;
        let o = opts(false, true, false, false);
        let base = rt.streaming_server().await.unwrap().base_url().to_string();
        for t in TRANSPORTS {
            // unknown token
            refused_with_404(t, client::exec(&format!("{base}/exec/nope"), t, o).await);
            // expired token
            let url = exec_url(&rt, &c, &["true"], o).await;
            tokio::time::sleep(Duration::from_millis(1500)).await;
            refused_with_404(t, client::exec(&url, t, o).await);
            // a token is good once
            let url = exec_url(&rt, &c, &["true"], o).await;
            let mut ok = client::exec(&url, t, o).await.unwrap();
            assert_eq!(ok.wait().await.unwrap(), 0);
            refused_with_404(t, client::exec(&url, t, o).await);
            // a token for exec does not open a port forward
            refused_with_404(
                t,
                client::port_forward(&url.replace("/exec/", "/portforward/"), t, 80).await,
            );
        }
        // unknown ids and bad requests are refused before any URL is handed out
        let e = rt
            .exec(cri::ExecRequest {
                container_id: "no-such-container".into(),
                cmd: vec!["true".into()],
                stdout: true,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(
            matches!(&e, RuntimeError::NotFound { id, .. } if id == "no-such-container"),
            "{e:?}"
        );
        let e = rt
            .attach(cri::AttachRequest {
                container_id: "no-such-container".into(),
                stdout: true,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(e.is_not_found(), "{e:?}");
        let e = rt
            .port_forward(cri::PortForwardRequest {
                pod_sandbox_id: "no-such-pod".into(),
                port: vec![80],
            })
            .await
            .unwrap_err();
        assert!(e.is_not_found(), "{e:?}");
        let e = rt
            .exec(cri::ExecRequest {
                container_id: c.clone(),
                cmd: vec!["sh".into()],
                tty: true,
                stderr: true,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(
            matches!(&e, RuntimeError::InvalidArgument(m) if m.contains("tty and stderr")),
            "{e:?}"
        );
        let e = rt
            .exec(cri::ExecRequest {
                container_id: c.clone(),
                cmd: vec![],
                stdout: true,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(matches!(e, RuntimeError::InvalidArgument(_)), "{e:?}");

        // a container removed between the URL and the connection: a clear remote error
        // (a runtime on the same root with the default token lifetime: stopping takes a while)
        let patient = env.runtime();
        for (i, t) in TRANSPORTS.into_iter().enumerate() {
            let gone = run_container(&rt, &sb, &sb_cfg, long_running(&format!("gone{i}"))).await;
            let url = exec_url(&patient, &gone, &["true"], o).await;
            if t == Transport::WebSocket {
                rt.remove_container(&gone).await.unwrap();
            }
            if t == Transport::Spdy {
                rt.stop_container(&gone, Duration::ZERO).await.unwrap();
            }
            let mut cmd = client::exec(&url, t, o).await.unwrap();
            let e = cmd.wait().await.unwrap_err();
            let m = e.to_string();
            assert!(
                m.contains(&gone) && (m.contains("not running") || m.contains("not found")),
                "{t:?}: {m}"
            );
        }

        // a client hanging up mid-stream kills the exec'd process and leaks nothing
        let server = rt.streaming_server().await.unwrap();
        let io = opts(true, true, false, false);
        for (t, secs) in TRANSPORTS.into_iter().zip(["4241", "4242"]) {
            let url = exec_url(&rt, &c, &["sleep", secs], io).await;
            let cmd = client::exec(&url, t, io).await.unwrap();
            wait_for("the exec'd sleep to run", T, || async {
                processes_with_cmdline(&["sleep", secs]).len() == 1
            })
            .await;
            assert_eq!(server.active_sessions(), 1);
            drop(cmd);
            wait_for("the exec'd sleep to die", T, || async {
                processes_with_cmdline(&["sleep", secs]).is_empty()
            })
            .await;
            wait_for("the session to end", T, || async {
                server.active_sessions() == 0
            })
            .await;
        }
        // no exec init left, no exec spec file left
        let dir = env.config().root.join("containers").join(&c);
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("exec-"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        let inits: Vec<i32> = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                let c = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
                args.get(1) == Some(&&b"exec"[..])
                    && args
                        .get(2)
                        .is_some_and(|a| a.starts_with(dir.display().to_string().as_bytes()))
            })
            .collect();
        assert!(inits.is_empty(), "exec inits left: {inits:?}");
        // the container itself is unharmed
        let st = pod_fixture::container_status(&rt, &c).await;
        assert_eq!(st.state, cri::ContainerState::ContainerRunning as i32);
    });
}

fn p50(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Prints the exec round-trip figures (SPDY vs WebSocket), measured on a loaded 2-core
/// machine: a line through `cat` in a running exec, and a whole exec of `true` (URL, connect,
/// run, status).
#[test]
fn exec_round_trip_latency_spdy_vs_websocket() {
    native_test(
        "exec_round_trip_latency_spdy_vs_websocket",
        "stlat",
        async |env, rt| {
            let (_, _, c) = pod_with_box(env, &rt, "lat").await;
            let io = opts(true, true, false, false);
            let out = opts(false, true, false, false);
            println!("exec round trip, p50 (debug build, shared 2-core machine):");
            for t in TRANSPORTS {
                let url = exec_url(&rt, &c, &["cat"], io).await;
                let mut cmd = client::exec(&url, t, io).await.unwrap();
                let mut stdin = cmd.stdin.take().unwrap();
                let mut stdout = cmd.stdout.take().unwrap();
                let mut line_rt = Vec::new();
                let mut buf = [0u8; 64];
                for i in 0..200 {
                    let msg = format!("line {i:05}\n");
                    let start = Instant::now();
                    stdin.write_all(msg.as_bytes()).await.unwrap();
                    let mut got = 0;
                    while got < msg.len() {
                        let n = tokio::time::timeout(T, stdout.read(&mut buf[got..]))
                            .await
                            .unwrap()
                            .unwrap();
                        assert!(n > 0);
                        got += n;
                    }
                    line_rt.push(start.elapsed());
                    assert_eq!(&buf[..got], msg.as_bytes());
                }
                drop(stdin);
                assert_eq!(cmd.wait().await.unwrap(), 0);
                let mut whole = Vec::new();
                for _ in 0..20 {
                    let start = Instant::now();
                    let url = exec_url(&rt, &c, &["true"], out).await;
                    let mut cmd = client::exec(&url, t, out).await.unwrap();
                    read_all(cmd.stdout.take()).await;
                    assert_eq!(cmd.wait().await.unwrap(), 0);
                    whole.push(start.elapsed());
                }
                println!(
                    "  {t:?}: line echo through cat {:?} (n=200), whole exec of `true` {:?} (n=20)",
                    p50(line_rt),
                    p50(whole)
                );
            }
        },
    );
}

// ---------------------------------------------------------------------------------------------
// kubectl against the streaming server, through a stand-in for the API server

/// The API server's part for kubectl: the pod, and its exec and portforward subresources as
/// CRI calls whose streaming URL the connection is proxied to, as the kubelet does.
struct CriBackend {
    rt: std::sync::Arc<NativeRuntime>,
    pod: String,
    container_id: String,
    sandbox_id: String,
}

#[async_trait::async_trait]
impl PodBackend for CriBackend {
    fn pod(&self, namespace: &str, name: &str) -> Option<serde_json::Value> {
        (namespace == "default" && name == self.pod).then(|| {
            serde_json::json!({
                "metadata": {"name": self.pod, "namespace": "default", "uid": "uid-1"},
                "spec": {"containers": [{"name": "box", "image": "busybox:test"}]},
                "status": {"phase": "Running", "containerStatuses": [{"name": "box", "ready": true,
                    "restartCount": 0, "image": "busybox:test", "imageID": "", "state": {"running": {}}}]},
            })
        })
    }

    async fn upstream(&self, req: &SubresourceRequest) -> Option<Upstream> {
        let url = match req.subresource.as_str() {
            "exec" => self
                .rt
                .exec(cri::ExecRequest {
                    container_id: self.container_id.clone(),
                    cmd: req.values("command"),
                    tty: req.flag("tty"),
                    stdin: req.flag("stdin"),
                    stdout: req.flag("stdout"),
                    stderr: req.flag("stderr"),
                })
                .await
                .map(|r| r.url),
            "portforward" => self
                .rt
                .port_forward(cri::PortForwardRequest {
                    pod_sandbox_id: self.sandbox_id.clone(),
                    port: vec![],
                })
                .await
                .map(|r| r.url),
            _ => return None,
        }
        .expect("streaming url");
        let rest = url.strip_prefix("http://").unwrap();
        let (authority, path) = rest.split_at(rest.find('/').unwrap());
        let io = tokio::net::TcpStream::connect(authority).await.unwrap();
        Some(Upstream {
            io: Box::new(io),
            host: authority.to_string(),
            target: path.to_string(),
        })
    }
}

/// kubectl (the real client) runs exec and port-forward against our streaming server, once
/// forced onto SPDY and once on WebSocket (kubectl's default since 1.30; port-forward
/// tunnels SPDY in WebSocket messages).
#[test]
fn kubectl_exec_and_port_forward_over_spdy_and_websocket() {
    if !prerequisites("kubectl_exec_and_port_forward_over_spdy_and_websocket")
        || !node_test_support::require_command(
            "kubectl_exec_and_port_forward_over_spdy_and_websocket",
            "kubectl",
        )
    {
        return;
    }
    let env = Env::new();
    in_netns("stkubectl", || async {
        let rt = std::sync::Arc::new(env.runtime());
        let (sb, sb_cfg) = env.pod(&rt, "web").await;
        let c = run_container(
            &rt,
            &sb,
            &sb_cfg,
            container_config("box", &["httpd", "-f", "-p", "8080", "-h", "/var/www"]),
        )
        .await;
        let api = StandInApiServer::start(std::sync::Arc::new(CriBackend {
            rt: rt.clone(),
            pod: "web".into(),
            container_id: c.clone(),
            sandbox_id: sb.clone(),
        }))
        .await
        .unwrap();
        let home = env.root.path().join("kubectl-home");
        for websockets in [false, true] {
            let what = if websockets { "websocket" } else { "spdy" };
            // exec with stdin, stdout, stderr and an exit code
            api.assert_exec_round_trip(&home, websockets, "web", "box", T)
                .await;
            // port-forward to the pod's httpd
            let (mut child, local) = api.port_forward(&home, websockets, "web", 8080, T).await;
            let mut body = String::new();
            let deadline = Instant::now() + T;
            while !body.contains("hello from nodekit") {
                assert!(
                    Instant::now() < deadline,
                    "{what}: no answer, last {body:?}"
                );
                let mut s = tokio::net::TcpStream::connect(("127.0.0.1", local))
                    .await
                    .unwrap();
                s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")
                    .await
                    .unwrap();
                let mut v = Vec::new();
                let ended = tokio::time::timeout(T, s.read_to_end(&mut v)).await;
                body = String::from_utf8_lossy(&v).into_owned();
                if body.contains("hello from nodekit") {
                    // the pod's server closed (HTTP/1.0): kubectl's local connection ends too
                    assert!(
                        ended.is_ok(),
                        "{what}: the connection did not end: {body:?}"
                    );
                } else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            api.assert_upgraded(websockets, &format!("{what} port-forward"));
            let _ = child.kill().await;
        }
    });
}
