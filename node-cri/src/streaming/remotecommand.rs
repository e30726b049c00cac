//! Exec and attach sessions (kubelet's `remotecommand`): the client's streams over SPDY or
//! WebSocket channels wired to the runtime, and the exit status on the error stream.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use node_core::RuntimeError;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use super::server::Shared;
use super::spdy::{self, Session};
use super::ws;
use super::{StreamIo, TermSize};

/// How long the server lets the runtime's output drain after the process exited.
const DRAIN: Duration = Duration::from_secs(10);
/// How long the server waits for the client to hang up after the status was sent.
const LINGER: Duration = Duration::from_secs(5);
const PIPE: usize = 64 * 1024;

/// The remote command protocol version negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Proto {
    /// `channel.k8s.io`: errors as text, no resize.
    V1,
    /// `v2.channel.k8s.io`.
    V2,
    /// `v3.channel.k8s.io`: adds the resize stream.
    V3,
    /// `v4.channel.k8s.io`: the status as a JSON `Status`, exit codes in it.
    V4,
    /// `v5.channel.k8s.io` (WebSocket): adds the close-channel signal.
    V5,
}

impl Proto {
    pub(crate) fn parse(p: &str) -> Self {
        match p {
            "v5.channel.k8s.io" => Proto::V5,
            "v4.channel.k8s.io" => Proto::V4,
            "v3.channel.k8s.io" => Proto::V3,
            "v2.channel.k8s.io" => Proto::V2,
            _ => Proto::V1,
        }
    }
}

/// What the session runs.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    Exec {
        container_id: String,
        cmd: Vec<String>,
    },
    Attach {
        container_id: String,
    },
}

/// The streams the CRI request asked for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Opts {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

async fn call(shared: &Shared, target: &Target, io: StreamIo) -> Result<i32, RuntimeError> {
    match target {
        Target::Exec { container_id, cmd } => {
            shared.runtime.exec(container_id, cmd.clone(), io).await
        }
        Target::Attach { container_id } => shared.runtime.attach(container_id, io).await,
    }
}

/// The bytes for the error stream: a JSON `Status` (v4+) or text (older), none for success
/// on older protocols.
pub(crate) fn status_bytes(proto: Proto, result: &Result<i32, RuntimeError>) -> Option<Vec<u8>> {
    use serde_json::json;
    if proto >= Proto::V4 {
        let v = match result {
            Ok(0) => json!({"metadata": {}, "status": "Success"}),
            Ok(code) => json!({
                "metadata": {},
                "status": "Failure",
                "message": format!("command terminated with non-zero exit code: exit status {code}"),
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
            }),
            Err(e) => {
                let (reason, code) = if e.is_not_found() {
                    ("NotFound", 404)
                } else {
                    ("InternalError", 500)
                };
                json!({
                    "metadata": {},
                    "status": "Failure",
                    "message": e.to_string(),
                    "reason": reason,
                    "code": code,
                })
            }
        };
        return Some(v.to_string().into_bytes());
    }
    match result {
        Ok(0) => None,
        Ok(code) => Some(
            format!("command terminated with non-zero exit code: exit status {code}").into_bytes(),
        ),
        Err(e) => Some(e.to_string().into_bytes()),
    }
}

/// Decode concatenated JSON terminal sizes from a byte stream (the resize stream/channel).
#[derive(Default)]
pub(crate) struct ResizeDecoder(Vec<u8>);

impl ResizeDecoder {
    pub(crate) fn push(&mut self, data: &[u8]) -> Vec<TermSize> {
        self.0.extend_from_slice(data);
        let mut out = Vec::new();
        let mut it = serde_json::Deserializer::from_slice(&self.0).into_iter::<TermSize>();
        let mut used = 0;
        loop {
            match it.next() {
                Some(Ok(s)) => {
                    out.push(s);
                    used = it.byte_offset();
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(_)) => {
                    // garbage: drop what we have
                    used = self.0.len();
                    break;
                }
                None => {
                    used = self.0.len();
                    break;
                }
            }
        }
        self.0.drain(..used);
        out
    }
}

/// Copy what the peer sends on a SPDY stream into `w`, then shut `w` down.
pub(crate) async fn spdy_in(mut s: spdy::Stream, mut w: impl AsyncWrite + Unpin) {
    while let Some(b) = s.recv().await {
        if w.write_all(&b).await.is_err() {
            break;
        }
    }
    let _ = w.shutdown().await;
}

/// Copy `r` to a SPDY stream, then half-close it.
pub(crate) async fn spdy_out(mut r: impl AsyncRead + Unpin, w: spdy::StreamWriter) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if w.write(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = w.close().await;
}

async fn drain(pumps: Vec<JoinHandle<()>>) {
    for p in pumps {
        let abort = p.abort_handle();
        if tokio::time::timeout(DRAIN, p).await.is_err() {
            abort.abort();
        }
    }
}

fn no_io(tty: bool) -> StreamIo {
    StreamIo {
        stdin: None,
        stdout: None,
        stderr: None,
        tty,
        resize: None,
    }
}

/// Serve an exec or attach over SPDY.
pub(crate) async fn serve_spdy(
    shared: Arc<Shared>,
    proto: Proto,
    target: Target,
    opts: Opts,
    io: Box<dyn spdy::Io>,
) {
    let (session, mut incoming) = Session::new(io, true);
    let mut wanted: Vec<&'static str> = vec!["error"];
    if opts.stdin {
        wanted.push("stdin");
    }
    if opts.stdout {
        wanted.push("stdout");
    }
    if opts.stderr && !opts.tty {
        wanted.push("stderr");
    }
    if opts.tty && proto >= Proto::V3 {
        wanted.push("resize");
    }
    let mut streams: HashMap<&'static str, spdy::Stream> = HashMap::new();
    let deadline = tokio::time::sleep(shared.cfg.stream_creation_timeout);
    tokio::pin!(deadline);
    while !wanted.iter().all(|w| streams.contains_key(w)) {
        tokio::select! {
            s = incoming.recv() => {
                let Some(s) = s else { return };
                let kind = match s.header("streamtype") {
                    Some("error") => "error",
                    Some("stdin") => "stdin",
                    Some("stdout") => "stdout",
                    Some("stderr") => "stderr",
                    Some("resize") => "resize",
                    other => {
                        tracing::debug!(?other, "streaming: unknown stream type");
                        let _ = s.writer().reset(spdy::REFUSED_STREAM).await;
                        continue;
                    }
                };
                if session.reply(s.id).await.is_err() {
                    return;
                }
                streams.insert(kind, s);
            }
            _ = &mut deadline => {
                tracing::warn!(?wanted, got = ?streams.keys().collect::<Vec<_>>(), "streaming: the client did not open its streams in time");
                session.close().await;
                tokio::time::sleep(Duration::from_millis(100)).await;
                session.abort();
                return;
            }
        }
    }
    let Some(error) = streams.remove("error") else {
        return;
    };
    let mut pumps = Vec::new();
    let mut io = no_io(opts.tty);
    let mut stdin_pump = None;
    if let Some(s) = streams.remove("stdin")
        && opts.stdin
    {
        let (a, b) = tokio::io::duplex(PIPE);
        stdin_pump = Some(tokio::spawn(spdy_in(s, a)));
        io.stdin = Some(Box::new(b));
    }
    for (name, want) in [
        ("stdout", opts.stdout),
        ("stderr", opts.stderr && !opts.tty),
    ] {
        if let Some(s) = streams.remove(name) {
            if want {
                let (a, b) = tokio::io::duplex(PIPE);
                pumps.push(tokio::spawn(spdy_out(b, s.writer())));
                if name == "stdout" {
                    io.stdout = Some(Box::new(a));
                } else {
                    io.stderr = Some(Box::new(a));
                }
            } else {
                let _ = s.writer().close().await;
            }
        }
    }
    let mut resize_pump = None;
    if let Some(mut s) = streams.remove("resize") {
        let (tx, rx) = mpsc::channel(16);
        io.resize = Some(rx);
        resize_pump = Some(tokio::spawn(async move {
            let mut dec = ResizeDecoder::default();
            while let Some(b) = s.recv().await {
                for size in dec.push(&b) {
                    if tx.send(size).await.is_err() {
                        return;
                    }
                }
            }
        }));
    }
    let result = tokio::select! {
        r = call(&shared, &target, io) => r,
        _ = session.closed() => {
            tracing::debug!(?target, "streaming: the client went away");
            for p in pumps.into_iter().chain(stdin_pump).chain(resize_pump) {
                p.abort();
            }
            session.abort();
            return;
        }
    };
    drain(pumps).await;
    if let Some(p) = stdin_pump {
        p.abort();
    }
    if let Some(p) = resize_pump {
        p.abort();
    }
    let w = error.writer();
    if let Some(b) = status_bytes(proto, &result) {
        let _ = w.write(&b).await;
    }
    let _ = w.close().await;
    drop(error);
    // like spdystream: GOAWAY, and the client hangs up once it has read everything
    session.goaway().await;
    let _ = tokio::time::timeout(LINGER, session.closed()).await;
    session.abort();
}

/// Serve an exec or attach over WebSocket channels.
pub(crate) async fn serve_ws<S>(
    shared: Arc<Shared>,
    proto: Proto,
    target: Target,
    opts: Opts,
    socket: WebSocketStream<S>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sink, mut source) = socket.split();
    let (out, writer) = ws::writer(sink);
    let mut io = no_io(opts.tty);
    let mut stdin: Option<DuplexStream> = None;
    if opts.stdin {
        let (a, b) = tokio::io::duplex(PIPE);
        stdin = Some(a);
        io.stdin = Some(Box::new(b));
    }
    let mut pumps = Vec::new();
    for (ch, want) in [
        (ws::STDOUT, opts.stdout),
        (ws::STDERR, opts.stderr && !opts.tty),
    ] {
        if want {
            let (a, b) = tokio::io::duplex(PIPE);
            pumps.push(tokio::spawn(ws::pump_out(b, ch, out.clone())));
            if ch == ws::STDOUT {
                io.stdout = Some(Box::new(a));
            } else {
                io.stderr = Some(Box::new(a));
            }
        }
    }
    let (rtx, rrx) = mpsc::channel(16);
    if opts.tty {
        io.resize = Some(rrx);
    }
    let reader = async move {
        let mut dec = ResizeDecoder::default();
        while let Some((ch, data)) = ws::next_frame(&mut source).await {
            let payload = &data[1..];
            match ch {
                ws::STDIN => {
                    if let Some(s) = stdin.as_mut()
                        && s.write_all(payload).await.is_err()
                    {
                        stdin = None;
                    }
                }
                ws::RESIZE => {
                    for size in dec.push(payload) {
                        let _ = rtx.send(size).await;
                    }
                }
                ws::CLOSE if proto >= Proto::V5 => {
                    if payload.first() == Some(&ws::STDIN)
                        && let Some(mut s) = stdin.take()
                    {
                        let _ = s.shutdown().await;
                    }
                }
                _ => {}
            }
        }
    };
    let result = tokio::select! {
        r = call(&shared, &target, io) => r,
        _ = reader => {
            tracing::debug!(?target, "streaming: the websocket client went away");
            for p in pumps {
                p.abort();
            }
            writer.abort();
            return;
        }
    };
    drain(pumps).await;
    if let Some(b) = status_bytes(proto, &result) {
        let mut m = vec![ws::ERROR];
        m.extend_from_slice(&b);
        let _ = out.send(Message::binary(m)).await;
    }
    let _ = out.send(ws::normal_close()).await;
    drop(out);
    let abort = writer.abort_handle();
    if tokio::time::timeout(LINGER, writer).await.is_err() {
        abort.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_status_carries_the_exit_code() {
        let b = status_bytes(Proto::V4, &Ok(3)).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["reason"], "NonZeroExitCode");
        assert_eq!(v["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(v["details"]["causes"][0]["message"], "3");
        let ok: serde_json::Value =
            serde_json::from_slice(&status_bytes(Proto::V4, &Ok(0)).unwrap()).unwrap();
        assert_eq!(ok["status"], "Success");
        assert_eq!(status_bytes(Proto::V2, &Ok(0)), None);
    }

    #[test]
    fn resize_events_decode_across_chunks() {
        let mut d = ResizeDecoder::default();
        assert!(d.push(br#"{"Width":80,"#).is_empty());
        let got = d.push(b"\"Height\":24}\n{\"Width\":100,\"Height\":50}\n");
        assert_eq!(
            got,
            vec![
                TermSize {
                    width: 80,
                    height: 24
                },
                TermSize {
                    width: 100,
                    height: 50
                }
            ]
        );
    }
}
