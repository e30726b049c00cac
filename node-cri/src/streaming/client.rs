//! Clients for the streaming URLs a runtime returns, speaking what kubectl speaks: exec and
//! attach ([`exec`]) and port forwarding ([`port_forward`]) over SPDY/3.1 or WebSocket.
//!
//! ```no_run
//! use node_cri::streaming::client::{self, ExecOptions, Transport};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # async fn f(url: &str) -> Result<(), node_cri::streaming::StreamingError> {
//! let opts = ExecOptions { stdin: true, stdout: true, ..Default::default() };
//! let mut cmd = client::exec(url, Transport::WebSocket, opts).await?;
//! let mut stdin = cmd.stdin.take().unwrap();
//! stdin.write_all(b"hello\n").await?;
//! drop(stdin); // EOF
//! let mut out = String::new();
//! cmd.stdout.take().unwrap().read_to_string(&mut out).await?;
//! println!("{out} exit {}", cmd.wait().await?);
//! # Ok(()) }
//! ```

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::remotecommand::{spdy_in, spdy_out};
use super::spdy::{self, Session};
use super::{Reader, StreamingError, TermSize, Writer, ws};

const PIPE: usize = 64 * 1024;
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// How to reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// SPDY/3.1 (`v4.channel.k8s.io`; `portforward.k8s.io`), as kubectl up to 1.29.
    Spdy,
    /// WebSocket (`v5.channel.k8s.io`; `v4.channel.k8s.io` for port forwarding).
    WebSocket,
}

/// Which streams to open (they must match the CRI request the URL was issued for).
#[derive(Debug, Clone, Copy, Default)]
pub struct ExecOptions {
    /// Send stdin.
    pub stdin: bool,
    /// Receive stdout.
    pub stdout: bool,
    /// Receive stderr (not with a TTY).
    pub stderr: bool,
    /// A terminal (opens the resize stream).
    pub tty: bool,
}

/// A running remote exec or attach. Dropping it hangs up (the server kills the process).
pub struct RemoteCommand {
    /// Write here to send stdin; drop it (or shut it down) to send EOF.
    pub stdin: Option<Writer>,
    /// The remote stdout.
    pub stdout: Option<Reader>,
    /// The remote stderr.
    pub stderr: Option<Reader>,
    /// Send terminal sizes here (with a TTY).
    pub resize: Option<mpsc::Sender<TermSize>>,
    /// The negotiated protocol.
    pub protocol: String,
    status: Option<oneshot::Receiver<Result<i32, StreamingError>>>,
    run: Hangup,
}

impl std::fmt::Debug for RemoteCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteCommand")
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

/// What a client session runs; dropped, it hangs up.
#[derive(Default)]
struct Hangup {
    tasks: Vec<JoinHandle<()>>,
    session: Option<Session>,
}

impl Drop for Hangup {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Some(s) = &self.session {
            s.abort();
        }
    }
}

impl RemoteCommand {
    fn new(protocol: String, run: Hangup) -> Self {
        Self {
            stdin: None,
            stdout: None,
            stderr: None,
            resize: None,
            protocol,
            status: None,
            run,
        }
    }

    /// The exit code the server reported (0 for success), or the remote error.
    pub async fn wait(&mut self) -> Result<i32, StreamingError> {
        let rx = self
            .status
            .take()
            .ok_or_else(|| StreamingError::Remote("wait was called twice".into()))?;
        rx.await
            .unwrap_or_else(|_| Err(StreamingError::Remote("the session ended".into())))
    }
}

/// Decode the error stream's content into an exit code (v4+ JSON `Status`, or older text).
pub fn decode_status(data: &[u8], json: bool) -> Result<i32, StreamingError> {
    if !json {
        return if data.is_empty() {
            Ok(0)
        } else {
            Err(StreamingError::Remote(
                String::from_utf8_lossy(data).into_owned(),
            ))
        };
    }
    if data.is_empty() {
        return Err(StreamingError::Remote(
            "the connection closed before the server sent a status".into(),
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(data).map_err(|e| {
        StreamingError::Remote(format!(
            "undecodable status {:?}: {e}",
            String::from_utf8_lossy(data)
        ))
    })?;
    if v["status"] == "Success" {
        return Ok(0);
    }
    if v["reason"] == "NonZeroExitCode"
        && let Some(code) = v["details"]["causes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["reason"] == "ExitCode")
            .and_then(|c| c["message"].as_str()?.parse().ok())
    {
        return Ok(code);
    }
    Err(StreamingError::Remote(
        v["message"]
            .as_str()
            .unwrap_or("unknown failure")
            .to_string(),
    ))
}

fn split_url(url: &str) -> Result<(String, String), StreamingError> {
    let uri: http::Uri = url.parse().map_err(|e| StreamingError::Connect {
        url: url.into(),
        message: format!("bad url: {e}"),
    })?;
    let authority = uri
        .authority()
        .ok_or_else(|| StreamingError::Connect {
            url: url.into(),
            message: "the url has no host".into(),
        })?
        .to_string();
    let path = uri
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_else(|| "/".into());
    Ok((authority, path))
}

fn connect_err(url: &str, e: impl std::fmt::Display) -> StreamingError {
    StreamingError::Connect {
        url: url.into(),
        message: e.to_string(),
    }
}

/// Upgrade an HTTP/1.1 connection to SPDY/3.1 offering `protocols`; the negotiated one.
async fn upgrade_spdy(
    url: &str,
    protocols: &[&str],
) -> Result<(Box<dyn spdy::Io>, String), StreamingError> {
    let (authority, path) = split_url(url)?;
    let tcp = TcpStream::connect(&authority)
        .await
        .map_err(|e| connect_err(url, e))?;
    let _ = tcp.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| connect_err(url, e))?;
    tokio::spawn(conn.with_upgrades());
    let mut req = hyper::Request::post(path)
        .header(hyper::header::HOST, &authority)
        .header(hyper::header::CONNECTION, "Upgrade")
        .header(hyper::header::UPGRADE, "SPDY/3.1");
    for p in protocols {
        req = req.header("X-Stream-Protocol-Version", *p);
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|e| connect_err(url, e))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| connect_err(url, e))?;
    if resp.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        return Err(StreamingError::Status {
            url: url.into(),
            status,
            body,
        });
    }
    let proto = resp
        .headers()
        .get("x-stream-protocol-version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let upgraded = hyper::upgrade::on(resp)
        .await
        .map_err(|e| connect_err(url, e))?;
    Ok((Box::new(TokioIo::new(upgraded)), proto))
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

async fn upgrade_ws(url: &str, protocols: &[&str]) -> Result<(Ws, String), StreamingError> {
    let (authority, _) = split_url(url)?;
    let ws_url = url.replacen("http://", "ws://", 1);
    let mut req = ws_url
        .as_str()
        .into_client_request()
        .map_err(|e| connect_err(url, e))?;
    if let Ok(v) = protocols.join(", ").parse() {
        req.headers_mut().insert("Sec-WebSocket-Protocol", v);
    }
    let tcp = TcpStream::connect(&authority)
        .await
        .map_err(|e| connect_err(url, e))?;
    let _ = tcp.set_nodelay(true);
    match tokio_tungstenite::client_async(req, tcp).await {
        Ok((ws, resp)) => {
            let proto = resp
                .headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            Ok((ws, proto))
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(StreamingError::Status {
            url: url.into(),
            status: resp.status().as_u16(),
            body: resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default(),
        }),
        Err(e) => Err(connect_err(url, e)),
    }
}

/// Dial an exec or attach URL and open the streams `opts` names.
pub async fn exec(
    url: &str,
    transport: Transport,
    opts: ExecOptions,
) -> Result<RemoteCommand, StreamingError> {
    match transport {
        Transport::Spdy => exec_spdy(url, opts).await,
        Transport::WebSocket => exec_ws(url, opts).await,
    }
}

async fn exec_spdy(url: &str, opts: ExecOptions) -> Result<RemoteCommand, StreamingError> {
    let (io, protocol) = upgrade_spdy(
        url,
        &[
            "v4.channel.k8s.io",
            "v3.channel.k8s.io",
            "v2.channel.k8s.io",
        ],
    )
    .await?;
    let json = protocol == "v4.channel.k8s.io";
    let (session, _incoming) = Session::new(io, false);
    let open = |t: &str| {
        let session = session.clone();
        let h = vec![("streamType".to_string(), t.to_string())];
        async move { session.open(h, OPEN_TIMEOUT).await }
    };
    let mut error = open("error").await?;
    let mut cmd = RemoteCommand::new(
        protocol,
        Hangup {
            tasks: Vec::new(),
            session: Some(session.clone()),
        },
    );
    if opts.stdin {
        let s = open("stdin").await?;
        let (a, b) = tokio::io::duplex(PIPE);
        cmd.run.tasks.push(tokio::spawn(spdy_out(b, s.writer())));
        cmd.stdin = Some(Box::new(a));
    }
    for (name, want) in [
        ("stdout", opts.stdout),
        ("stderr", opts.stderr && !opts.tty),
    ] {
        if !want {
            continue;
        }
        let s = open(name).await?;
        let (a, b) = tokio::io::duplex(PIPE);
        cmd.run.tasks.push(tokio::spawn(spdy_in(s, a)));
        if name == "stdout" {
            cmd.stdout = Some(Box::new(b));
        } else {
            cmd.stderr = Some(Box::new(b));
        }
    }
    if opts.tty {
        let s = open("resize").await?;
        let (tx, mut rx) = mpsc::channel::<TermSize>(8);
        let w = s.writer();
        cmd.run.tasks.push(tokio::spawn(async move {
            let _keep = s;
            while let Some(size) = rx.recv().await {
                let mut b = serde_json::to_vec(&size).unwrap_or_default();
                b.push(b'\n');
                if w.write(&b).await.is_err() {
                    break;
                }
            }
        }));
        cmd.resize = Some(tx);
    }
    let (stx, srx) = oneshot::channel();
    cmd.run.tasks.push(tokio::spawn(async move {
        let mut data = Vec::new();
        while let Some(b) = error.recv().await {
            data.extend_from_slice(&b);
        }
        let _ = stx.send(decode_status(&data, json));
        // hang up once the status is in
        session.close().await;
    }));
    cmd.status = Some(srx);
    Ok(cmd)
}

async fn exec_ws(url: &str, opts: ExecOptions) -> Result<RemoteCommand, StreamingError> {
    let (socket, protocol) = upgrade_ws(
        url,
        &[
            "v5.channel.k8s.io",
            "v4.channel.k8s.io",
            "v3.channel.k8s.io",
            "v2.channel.k8s.io",
        ],
    )
    .await?;
    let v5 = protocol == "v5.channel.k8s.io";
    let json = v5 || protocol == "v4.channel.k8s.io";
    let (sink, mut source) = socket.split();
    let (out, writer) = ws::writer(sink);
    let mut cmd = RemoteCommand::new(
        protocol,
        Hangup {
            tasks: vec![writer],
            session: None,
        },
    );
    if opts.stdin {
        let (a, mut b) = tokio::io::duplex(PIPE);
        let out = out.clone();
        cmd.run.tasks.push(tokio::spawn(async move {
            ws::pump_out(&mut b, ws::STDIN, out.clone()).await;
            if v5 {
                let _ = out.send(Message::binary(vec![ws::CLOSE, ws::STDIN])).await;
            }
        }));
        cmd.stdin = Some(Box::new(a));
    }
    let mut sinks: [Option<DuplexStream>; 3] = [None, None, None];
    for (ch, want) in [
        (ws::STDOUT, opts.stdout),
        (ws::STDERR, opts.stderr && !opts.tty),
    ] {
        if want {
            let (a, b) = tokio::io::duplex(PIPE);
            sinks[ch as usize] = Some(a);
            if ch == ws::STDOUT {
                cmd.stdout = Some(Box::new(b));
            } else {
                cmd.stderr = Some(Box::new(b));
            }
        }
    }
    if opts.tty {
        let (tx, mut rx) = mpsc::channel::<TermSize>(8);
        let out = out.clone();
        cmd.run.tasks.push(tokio::spawn(async move {
            while let Some(size) = rx.recv().await {
                let mut m = vec![ws::RESIZE];
                m.extend_from_slice(&serde_json::to_vec(&size).unwrap_or_default());
                if out.send(Message::binary(m)).await.is_err() {
                    break;
                }
            }
        }));
        cmd.resize = Some(tx);
    }
    let (stx, srx) = oneshot::channel();
    cmd.run.tasks.push(tokio::spawn(async move {
        let mut status = Vec::new();
        while let Some((ch, data)) = ws::next_frame(&mut source).await {
            let payload = &data[1..];
            match ch {
                ws::STDOUT | ws::STDERR => {
                    if let Some(s) = sinks[ch as usize].as_mut()
                        && s.write_all(payload).await.is_err()
                    {
                        sinks[ch as usize] = None;
                    }
                }
                ws::ERROR => status.extend_from_slice(payload),
                ws::CLOSE => {
                    if let Some(&c) = payload.first()
                        && (c as usize) < sinks.len()
                    {
                        sinks[c as usize] = None;
                    }
                }
                _ => {}
            }
        }
        for s in sinks.iter_mut().flatten() {
            let _ = s.shutdown().await;
        }
        drop(sinks);
        let _ = stx.send(decode_status(&status, json));
        let _ = out.send(ws::normal_close()).await;
    }));
    cmd.status = Some(srx);
    Ok(cmd)
}

/// One forwarded connection: read and write `stream`; [`Forwarded::error`] tells what the
/// server reported on the error stream, if anything.
pub struct Forwarded {
    /// The connection to the pod's port.
    pub stream: DuplexStream,
    errors: mpsc::Receiver<String>,
    _run: Hangup,
}

impl std::fmt::Debug for Forwarded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarded").finish_non_exhaustive()
    }
}

impl Forwarded {
    /// The server's error message for this connection, once it sent one (waits up to
    /// `timeout`; `None` when there was none).
    pub async fn error(&mut self, timeout: Duration) -> Option<String> {
        tokio::time::timeout(timeout, self.errors.recv())
            .await
            .ok()
            .flatten()
            .filter(|e| !e.is_empty())
    }
}

/// Dial a port-forward URL and open one connection to `port`.
pub async fn port_forward(
    url: &str,
    transport: Transport,
    port: u16,
) -> Result<Forwarded, StreamingError> {
    let (mine, theirs) = tokio::io::duplex(PIPE);
    let (etx, erx) = mpsc::channel(4);
    let mut tasks = Vec::new();
    let mut spdy_session = None;
    match transport {
        Transport::Spdy => {
            let (io, _) = upgrade_spdy(url, &["portforward.k8s.io"]).await?;
            let (session, _incoming) = Session::new(io, false);
            spdy_session = Some(session.clone());
            let h = |t: &str| {
                vec![
                    ("streamType".to_string(), t.to_string()),
                    ("port".to_string(), port.to_string()),
                    ("requestID".to_string(), "0".to_string()),
                ]
            };
            let mut error = session.open(h("error"), OPEN_TIMEOUT).await?;
            let data = session.open(h("data"), OPEN_TIMEOUT).await?;
            let (r, w) = tokio::io::split(theirs);
            let dw = data.writer();
            tasks.push(tokio::spawn(spdy_in(data, w)));
            tasks.push(tokio::spawn(spdy_out(r, dw)));
            tasks.push(tokio::spawn(async move {
                let mut msg = Vec::new();
                while let Some(b) = error.recv().await {
                    msg.extend_from_slice(&b);
                }
                let _ = etx.send(String::from_utf8_lossy(&msg).into_owned()).await;
            }));
        }
        Transport::WebSocket => {
            let sep = if url.contains('?') { '&' } else { '?' };
            let (socket, _) =
                upgrade_ws(&format!("{url}{sep}port={port}"), &["v4.channel.k8s.io"]).await?;
            let (sink, mut source) = socket.split();
            let (out, writer) = ws::writer(sink);
            let (mut r, mut w) = tokio::io::split(theirs);
            tasks.push(writer);
            tasks.push(tokio::spawn(async move {
                // the first two bytes of each channel are the port
                let mut skip = [2usize, 2usize];
                let mut err = Vec::new();
                while let Some((ch, d)) = ws::next_frame(&mut source).await {
                    let mut payload = &d[1..];
                    if ch > 1 {
                        continue;
                    }
                    let n = skip[ch as usize].min(payload.len());
                    skip[ch as usize] -= n;
                    payload = &payload[n..];
                    if ch == 0 {
                        if w.write_all(payload).await.is_err() {
                            break;
                        }
                    } else {
                        err.extend_from_slice(payload);
                    }
                }
                let _ = w.shutdown().await;
                let _ = etx.send(String::from_utf8_lossy(&err).into_owned()).await;
            }));
            tasks.push(tokio::spawn(async move {
                ws::pump_out(&mut r, 0, out.clone()).await;
                // keep the socket open for the answer: the server closes when the port does
                std::future::pending::<()>().await;
            }));
        }
    }
    Ok(Forwarded {
        stream: mine,
        errors: erx,
        _run: Hangup {
            tasks,
            session: spdy_session,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_decode_like_kubectl() {
        assert_eq!(
            decode_status(br#"{"metadata":{},"status":"Success"}"#, true).unwrap(),
            0
        );
        let failed = br#"{"status":"Failure","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"42"}]}}"#;
        assert_eq!(decode_status(failed, true).unwrap(), 42);
        let err = decode_status(
            br#"{"status":"Failure","message":"container \"x\" not found"}"#,
            true,
        );
        assert!(matches!(err, Err(StreamingError::Remote(m)) if m.contains("not found")));
        assert!(decode_status(b"", true).is_err());
        assert_eq!(decode_status(b"", false).unwrap(), 0);
    }
}
