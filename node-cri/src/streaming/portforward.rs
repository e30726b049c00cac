//! Port forwarding sessions (kubelet's `portforward`): over SPDY (`portforward.k8s.io`, a data
//! and an error stream per forwarded connection, paired by their `requestID` header) and over
//! WebSocket channels (`v4.channel.k8s.io`: channels 2i and 2i+1 carry port i's data and
//! errors, each starting with the port as a little-endian u16).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, WriteHalf};
use tokio::task::JoinSet;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use super::remotecommand::{spdy_in, spdy_out};
use super::server::Shared;
use super::spdy::{self, Session};
use super::ws;

const PIPE: usize = 64 * 1024;

fn forward_error(port: u16, sandbox: &str, e: &node_core::RuntimeError) -> String {
    format!("error forwarding port {port} to pod {sandbox}: {e}")
}

#[derive(Default)]
struct Pair {
    port: u16,
    data: Option<spdy::Stream>,
    error: Option<spdy::Stream>,
}

/// Serve port forwarding over a SPDY session (also when tunnelled in a WebSocket).
pub(crate) async fn serve_spdy(shared: Arc<Shared>, sandbox: String, io: Box<dyn spdy::Io>) {
    let (session, mut incoming) = Session::new(io, true);
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    let mut tasks = JoinSet::new();
    loop {
        let s = tokio::select! {
            s = incoming.recv() => match s { Some(s) => s, None => break },
            _ = session.closed() => break,
        };
        let port = s.header("port").and_then(|p| p.parse::<u16>().ok());
        let kind = s.header("streamtype").map(str::to_string);
        let (Some(port), Some(kind)) = (port.filter(|p| *p > 0), kind) else {
            tracing::debug!(headers = ?s.headers, "portforward: a stream without a valid port or type");
            let _ = s.writer().reset(spdy::REFUSED_STREAM).await;
            continue;
        };
        // old clients send no requestID: pair by port
        let key = s
            .header("requestid")
            .map(str::to_string)
            .unwrap_or_else(|| format!("port-{port}"));
        if session.reply(s.id).await.is_err() {
            break;
        }
        let pair = pairs.entry(key.clone()).or_default();
        pair.port = port;
        match kind.as_str() {
            "data" => pair.data = Some(s),
            "error" => pair.error = Some(s),
            _ => {
                let _ = s.writer().reset(spdy::REFUSED_STREAM).await;
                continue;
            }
        }
        if pair.data.is_some() && pair.error.is_some() {
            let Some(Pair {
                port,
                data: Some(data),
                error: Some(error),
            }) = pairs.remove(&key)
            else {
                continue;
            };
            let shared = shared.clone();
            let sandbox = sandbox.clone();
            tasks.spawn(async move {
                let (a, b) = tokio::io::duplex(PIPE);
                let (ar, aw) = tokio::io::split(a);
                let data_w = data.writer();
                let inbound = tokio::spawn(spdy_in(data, aw));
                let outbound = tokio::spawn(spdy_out(ar, data_w));
                let r = shared
                    .runtime
                    .port_forward(&sandbox, port, Box::new(b))
                    .await;
                let ew = error.writer();
                if let Err(e) = &r {
                    let _ = ew.write(forward_error(port, &sandbox, e).as_bytes()).await;
                }
                let _ = ew.close().await;
                let abort = outbound.abort_handle();
                if tokio::time::timeout(Duration::from_secs(10), outbound)
                    .await
                    .is_err()
                {
                    abort.abort();
                }
                inbound.abort();
                drop(error);
            });
        }
    }
    tasks.abort_all();
    session.close().await;
    session.abort();
}

/// Serve port forwarding over WebSocket channels for `ports`.
pub(crate) async fn serve_ws<S>(
    shared: Arc<Shared>,
    sandbox: String,
    ports: Vec<u16>,
    socket: WebSocketStream<S>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sink, mut source) = socket.split();
    let (out, writer) = ws::writer(sink);
    if ports.is_empty() {
        let mut m = vec![1u8];
        m.extend_from_slice(b"portforward: no ports to forward (give ?port=N)");
        let _ = out.send(Message::binary(m)).await;
        let _ = out.send(ws::normal_close()).await;
        let _ = writer.await;
        return;
    }
    let mut to_port: Vec<Option<WriteHalf<tokio::io::DuplexStream>>> = Vec::new();
    let mut tasks = JoinSet::new();
    for (i, port) in ports.iter().copied().enumerate() {
        let (data_ch, err_ch) = ((2 * i) as u8, (2 * i + 1) as u8);
        for ch in [data_ch, err_ch] {
            let mut m = vec![ch];
            m.extend_from_slice(&port.to_le_bytes());
            let _ = out.send(Message::binary(m)).await;
        }
        let (a, b) = tokio::io::duplex(PIPE);
        let (ar, aw) = tokio::io::split(a);
        to_port.push(Some(aw));
        let out = out.clone();
        let shared = shared.clone();
        let sandbox = sandbox.clone();
        tasks.spawn(async move {
            let pump = tokio::spawn(ws::pump_out(ar, data_ch, out.clone()));
            let r = shared
                .runtime
                .port_forward(&sandbox, port, Box::new(b))
                .await;
            if let Err(e) = &r {
                let mut m = vec![err_ch];
                m.extend_from_slice(forward_error(port, &sandbox, e).as_bytes());
                let _ = out.send(Message::binary(m)).await;
            }
            let abort = pump.abort_handle();
            if tokio::time::timeout(Duration::from_secs(10), pump)
                .await
                .is_err()
            {
                abort.abort();
            }
        });
    }
    let reader = async {
        while let Some((ch, data)) = ws::next_frame(&mut source).await {
            let payload = &data[1..];
            let i = ch as usize / 2;
            if ch % 2 == 0
                && let Some(slot) = to_port.get_mut(i)
                && let Some(w) = slot.as_mut()
                && w.write_all(payload).await.is_err()
            {
                *slot = None;
            }
        }
    };
    let finished = tokio::select! {
        _ = reader => false,
        _ = async { while tasks.join_next().await.is_some() {} } => true,
    };
    if !finished {
        // the client went away: stop forwarding
        tasks.abort_all();
        writer.abort();
        return;
    }
    let _ = out.send(ws::normal_close()).await;
    drop(out);
    let abort = writer.abort_handle();
    if tokio::time::timeout(Duration::from_secs(2), writer)
        .await
        .is_err()
    {
        abort.abort();
    }
}
