//! The Kubernetes WebSocket channel framing (`channel.k8s.io` and its versions): every binary
//! message starts with its channel number; and a byte-stream tunnel over binary messages (for
//! `SPDY/3.1+portforward.k8s.io`).

use futures::{Sink, SinkExt, Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

/// Channel 0: stdin.
pub(crate) const STDIN: u8 = 0;
/// Channel 1: stdout.
pub(crate) const STDOUT: u8 = 1;
/// Channel 2: stderr.
pub(crate) const STDERR: u8 = 2;
/// Channel 3: the error/status channel.
pub(crate) const ERROR: u8 = 3;
/// Channel 4: terminal resize events.
pub(crate) const RESIZE: u8 = 4;
/// v5: "close this channel" (the payload names the channel).
pub(crate) const CLOSE: u8 = 255;

/// One task owning the sink half, fed by the returned sender; it closes the socket when every
/// sender is gone.
pub(crate) fn writer<S>(mut sink: S) -> (mpsc::Sender<Message>, JoinHandle<()>)
where
    S: Sink<Message> + Unpin + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<Message>(64);
    let h = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            let close = matches!(m, Message::Close(_));
            if sink.send(m).await.is_err() || close {
                break;
            }
        }
        let _ = sink.close().await;
    });
    (tx, h)
}

/// Copy `r` into binary messages on channel `ch`.
pub(crate) async fn pump_out(mut r: impl AsyncRead + Unpin, ch: u8, out: mpsc::Sender<Message>) {
    let mut buf = vec![0u8; 32 * 1024 + 1];
    loop {
        buf[0] = ch;
        match r.read(&mut buf[1..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if out.send(Message::binary(buf[..=n].to_vec())).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// A byte stream carried in binary messages of a WebSocket (each message a chunk).
pub(crate) fn tunnel<S>(ws: WebSocketStream<S>) -> DuplexStream
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let (mut r, mut w) = tokio::io::split(ours);
    let (sink, mut source) = ws.split();
    let (out, _writer) = writer(sink);
    tokio::spawn(async move {
        while let Some(Ok(m)) = source.next().await {
            match m {
                Message::Binary(b) if w.write_all(&b).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = w.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if out.send(Message::binary(buf[..n].to_vec())).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = out.send(normal_close()).await;
    });
    theirs
}

/// A close frame with status 1000 (normal closure): client-go treats any other close,
/// including one without a status, as an error on every stream.
pub(crate) fn normal_close() -> Message {
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }))
}

/// The next binary message that has a channel byte: `(channel, whole message)`; `None` once
/// the peer closed or the connection failed.
pub(crate) async fn next_frame<S, E>(
    source: &mut S,
) -> Option<(u8, tokio_tungstenite::tungstenite::Bytes)>
where
    S: Stream<Item = Result<Message, E>> + Unpin,
{
    while let Some(Ok(msg)) = source.next().await {
        match msg {
            Message::Binary(d) if !d.is_empty() => return Some((d[0], d)),
            Message::Close(_) => return None,
            _ => {}
        }
    }
    None
}
