//! SPDY/3.1 as the Kubernetes streaming protocols use it (the `moby/spdystream` dialect): frame
//! codec, zlib header compression with the SPDY/3 dictionary, and a session that multiplexes
//! streams over one upgraded connection, for servers (even stream ids) and clients (odd ids).
//!
//! Flow control is not enforced (spdystream neither sends nor honours WINDOW_UPDATE); PINGs from
//! the peer are echoed; SETTINGS and WINDOW_UPDATE are ignored.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, oneshot, watch};

const VERSION: u16 = 3;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const FLAG_FIN: u8 = 0x01;
/// RST_STREAM status: the stream was refused.
pub(crate) const REFUSED_STREAM: u32 = 3;
/// The largest DATA frame we send.
const MAX_DATA: usize = 32 * 1024;
/// The largest frame we accept (a header block or data).
const MAX_FRAME: usize = 1 << 24;

/// The SPDY/3 header compression dictionary (draft-mbelshe-httpbis-spdy-00 section 2.6.10.1):
/// length-prefixed header names and values, then plain text.
pub(crate) static DICTIONARY: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let words = [
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
        "200 OK",
        "version",
        "HTTP/1.1",
        "url",
        "public",
        "set-cookie",
        "keep-alive",
        "origin",
    ];
    let mut d = Vec::with_capacity(1423);
    for w in words {
        d.extend_from_slice(&(w.len() as u32).to_be_bytes());
        d.extend_from_slice(w.as_bytes());
    }
    d.extend_from_slice(
        b"100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505\
203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized\
403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable\
Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT\
chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,\
text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
    );
    d
});

/// Header name/value pairs of a stream (names lowercase on the wire).
pub(crate) type Headers = Vec<(String, String)>;

/// The value of a header, case-insensitively.
pub(crate) fn header<'a>(h: &'a Headers, name: &str) -> Option<&'a str> {
    h.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// One direction's header compression context (SPDY keeps one per connection direction).
pub(crate) struct Compressor(Compress);

impl Compressor {
    pub(crate) fn new() -> Self {
        let mut c = Compress::new(Compression::default(), true);
        // cannot fail on a fresh stream
        let _ = c.set_dictionary(&DICTIONARY);
        Self(c)
    }

    /// A compressed header block, flushed so the peer can decode it at once.
    pub(crate) fn encode(&mut self, headers: &Headers) -> io::Result<Vec<u8>> {
        let mut raw = Vec::new();
        raw.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        for (k, v) in headers {
            let k = k.to_ascii_lowercase();
            raw.extend_from_slice(&(k.len() as u32).to_be_bytes());
            raw.extend_from_slice(k.as_bytes());
            raw.extend_from_slice(&(v.len() as u32).to_be_bytes());
            raw.extend_from_slice(v.as_bytes());
        }
        let start = self.0.total_in();
        let mut out = Vec::with_capacity(raw.len() + 64);
        loop {
            let used = (self.0.total_in() - start) as usize;
            if out.capacity() - out.len() < 64 {
                out.reserve(256);
            }
            self.0
                .compress_vec(&raw[used..], &mut out, FlushCompress::Sync)
                .map_err(|e| invalid(format!("compress headers: {e}")))?;
            let used = (self.0.total_in() - start) as usize;
            if used == raw.len() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

/// The other direction's decompression context.
pub(crate) struct Decompressor(Decompress);

impl Decompressor {
    pub(crate) fn new() -> Self {
        Self(Decompress::new(true))
    }

    /// Decode one compressed header block.
    pub(crate) fn decode(&mut self, data: &[u8]) -> io::Result<Headers> {
        let start = self.0.total_in();
        let mut out = Vec::with_capacity(data.len() * 4 + 64);
        let mut stalled = 0;
        loop {
            let used = (self.0.total_in() - start) as usize;
            if out.capacity() - out.len() < 256 {
                out.reserve(4096);
            }
            let before = (self.0.total_in(), self.0.total_out());
            match self
                .0
                .decompress_vec(&data[used..], &mut out, FlushDecompress::Sync)
            {
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.0
                        .set_dictionary(&DICTIONARY)
                        .map_err(|e| invalid(format!("spdy header dictionary: {e}")))?;
                    continue;
                }
                Err(e) => return Err(invalid(format!("decompress spdy headers: {e}"))),
            }
            let used = (self.0.total_in() - start) as usize;
            if used >= data.len() && out.len() < out.capacity() {
                break;
            }
            if (self.0.total_in(), self.0.total_out()) == before {
                stalled += 1;
                if stalled > 2 {
                    break;
                }
            }
            if out.len() > MAX_FRAME {
                return Err(invalid("spdy header block too large"));
            }
        }
        parse_header_block(&out)
    }
}

fn parse_header_block(b: &[u8]) -> io::Result<Headers> {
    let mut pos = 0;
    let mut take = |n: usize| -> io::Result<&[u8]> {
        let s = b
            .get(pos..pos + n)
            .ok_or_else(|| invalid("truncated spdy header block"))?;
        pos += n;
        Ok(s)
    };
    let u32_at = |s: &[u8]| u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize;
    let count = u32_at(take(4)?);
    let mut h = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let kl = u32_at(take(4)?);
        let k = String::from_utf8_lossy(take(kl)?).into_owned();
        let vl = u32_at(take(4)?);
        let v = String::from_utf8_lossy(take(vl)?).into_owned();
        // several values of one name are NUL-separated
        for v in v.split('\0') {
            h.push((k.clone(), v.to_string()));
        }
    }
    Ok(h)
}

/// A SPDY frame (the subset the streaming protocols use; others come as `Other`).
#[derive(Debug)]
pub(crate) enum Frame {
    SynStream {
        id: u32,
        fin: bool,
        headers: Headers,
    },
    SynReply {
        id: u32,
        fin: bool,
    },
    RstStream {
        id: u32,
    },
    Ping(u32),
    GoAway,
    Headers {
        id: u32,
        fin: bool,
    },
    Data {
        id: u32,
        fin: bool,
        data: Bytes,
    },
    Other,
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Read one frame; `None` at a clean end of the connection.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    dec: &mut Decompressor,
) -> io::Result<Option<Frame>> {
    let mut h = [0u8; 8];
    match r.read_exact(&mut h).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let flags = h[4];
    let len = u32::from_be_bytes([0, h[5], h[6], h[7]]) as usize;
    if len > MAX_FRAME {
        return Err(invalid("spdy frame too large"));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    let fin = flags & FLAG_FIN != 0;
    if h[0] & 0x80 == 0 {
        let id = be32(&h[..4]) & 0x7fff_ffff;
        return Ok(Some(Frame::Data {
            id,
            fin,
            data: Bytes::from(payload),
        }));
    }
    let version = u16::from_be_bytes([h[0] & 0x7f, h[1]]);
    if version != VERSION {
        return Err(invalid(format!("unsupported spdy version {version}")));
    }
    let kind = u16::from_be_bytes([h[2], h[3]]);
    let need = |n: usize| {
        if payload.len() < n {
            Err(invalid(format!("short spdy control frame of type {kind}")))
        } else {
            Ok(())
        }
    };
    Ok(Some(match kind {
        SYN_STREAM => {
            need(10)?;
            let id = be32(&payload[..4]) & 0x7fff_ffff;
            let headers = dec.decode(&payload[10..])?;
            Frame::SynStream { id, fin, headers }
        }
        SYN_REPLY => {
            need(4)?;
            let id = be32(&payload[..4]) & 0x7fff_ffff;
            // keep the shared decompression context in step
            dec.decode(&payload[4..])?;
            Frame::SynReply { id, fin }
        }
        HEADERS => {
            need(4)?;
            let id = be32(&payload[..4]) & 0x7fff_ffff;
            dec.decode(&payload[4..])?;
            Frame::Headers { id, fin }
        }
        RST_STREAM => {
            need(8)?;
            Frame::RstStream {
                id: be32(&payload[..4]) & 0x7fff_ffff,
            }
        }
        PING => {
            need(4)?;
            Frame::Ping(be32(&payload[..4]))
        }
        GOAWAY => Frame::GoAway,
        _ => Frame::Other,
    }))
}

fn control(kind: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + payload.len());
    f.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    f.extend_from_slice(&kind.to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(payload);
    f
}

fn data_frame(id: u32, fin: bool, data: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + data.len());
    f.extend_from_slice(&(id & 0x7fff_ffff).to_be_bytes());
    f.push(if fin { FLAG_FIN } else { 0 });
    f.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(data);
    f
}

/// Any byte stream a session runs over (an upgraded HTTP connection, a WebSocket tunnel).
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// What the writer task is asked to do.
enum Out {
    Frame(Vec<u8>),
    Shutdown,
}

/// The sending side: frames go, in order, to the task that owns the write half.
struct Writer {
    tx: mpsc::Sender<Out>,
    comp: Compressor,
}

#[derive(Default)]
struct Slot {
    data: Option<mpsc::Sender<Bytes>>,
    reply: Option<oneshot::Sender<bool>>,
}

struct Inner {
    writer: tokio::sync::Mutex<Writer>,
    streams: Mutex<HashMap<u32, Slot>>,
    next_id: AtomicU32,
    closed: watch::Receiver<bool>,
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
}

/// A SPDY session over one connection; clones share it.
#[derive(Clone)]
pub(crate) struct Session(Arc<Inner>);

/// A stream of a session: its headers, the data the peer sends, and a writer.
pub(crate) struct Stream {
    /// The stream id.
    pub id: u32,
    /// The headers of its SYN_STREAM.
    pub headers: Headers,
    rx: mpsc::Receiver<Bytes>,
    session: Session,
}

impl Stream {
    /// The next chunk the peer sent; `None` once the peer half-closed (FIN), reset the stream
    /// or the connection ended.
    pub(crate) async fn recv(&mut self) -> Option<Bytes> {
        self.rx.recv().await
    }
    /// A writer for this stream.
    pub(crate) fn writer(&self) -> StreamWriter {
        StreamWriter {
            id: self.id,
            session: self.session.clone(),
        }
    }
    /// The value of a header of the SYN_STREAM.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

/// The sending side of a stream.
#[derive(Clone)]
pub(crate) struct StreamWriter {
    id: u32,
    session: Session,
}

impl StreamWriter {
    /// Send data (split into frames).
    pub(crate) async fn write(&self, data: &[u8]) -> io::Result<()> {
        for chunk in data.chunks(MAX_DATA) {
            self.session
                .send(&data_frame(self.id, false, chunk))
                .await?;
        }
        Ok(())
    }
    /// Half-close: an empty DATA frame with FIN.
    pub(crate) async fn close(&self) -> io::Result<()> {
        self.session.send(&data_frame(self.id, true, &[])).await
    }
    /// Reset the stream.
    pub(crate) async fn reset(&self, status: u32) -> io::Result<()> {
        let mut p = self.id.to_be_bytes().to_vec();
        p.extend_from_slice(&status.to_be_bytes());
        self.session.send(&control(RST_STREAM, 0, &p)).await
    }
}

impl Session {
    /// A session over `io`; the server side numbers its streams even, the client side odd.
    /// Streams the peer opens arrive on the returned receiver.
    pub(crate) fn new(io: Box<dyn Io>, server: bool) -> (Self, mpsc::Receiver<Stream>) {
        let (r, w) = tokio::io::split(io);
        let (closed_tx, closed_rx) = watch::channel(false);
        let (out_tx, out_rx) = mpsc::channel(64);
        let s = Session(Arc::new(Inner {
            writer: tokio::sync::Mutex::new(Writer {
                tx: out_tx,
                comp: Compressor::new(),
            }),
            streams: Mutex::new(HashMap::new()),
            next_id: AtomicU32::new(if server { 2 } else { 1 }),
            closed: closed_rx,
            tasks: Mutex::new(Vec::new()),
        }));
        let write_task = tokio::spawn(write_loop(w, out_rx));
        let (tx, rx) = mpsc::channel(32);
        let reader = s.clone();
        let read_task = tokio::spawn(async move {
            let r = reader.read_loop(r, tx).await;
            if let Err(e) = r {
                tracing::debug!(error = %e, "spdy session ended");
            }
            reader
                .0
                .streams
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
            let _ = closed_tx.send(true);
        });
        s.0.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend([read_task.abort_handle(), write_task.abort_handle()]);
        (s, rx)
    }

    async fn read_loop(
        &self,
        mut r: ReadHalf<Box<dyn Io>>,
        incoming: mpsc::Sender<Stream>,
    ) -> io::Result<()> {
        let mut dec = Decompressor::new();
        let odd_is_ours = self.0.next_id.load(Ordering::SeqCst) % 2 == 1;
        while let Some(frame) = read_frame(&mut r, &mut dec).await? {
            match frame {
                Frame::SynStream { id, fin, headers } => {
                    let (tx, rx) = mpsc::channel(64);
                    self.slots().insert(
                        id,
                        Slot {
                            data: (!fin).then_some(tx),
                            reply: None,
                        },
                    );
                    let stream = Stream {
                        id,
                        headers,
                        rx,
                        session: self.clone(),
                    };
                    if incoming.send(stream).await.is_err() {
                        // nobody accepts streams any more
                        let _ = self.send(&rst(id, REFUSED_STREAM)).await;
                    }
                }
                Frame::SynReply { id, fin } => {
                    let mut slots = self.slots();
                    if let Some(slot) = slots.get_mut(&id) {
                        if let Some(r) = slot.reply.take() {
                            let _ = r.send(true);
                        }
                        if fin {
                            slot.data = None;
                        }
                    }
                }
                Frame::Headers { id, fin } => {
                    if fin && let Some(slot) = self.slots().get_mut(&id) {
                        slot.data = None;
                    }
                }
                Frame::Data { id, fin, data } => {
                    let tx = self.slots().get(&id).and_then(|s| s.data.clone());
                    if let Some(tx) = tx
                        && !data.is_empty()
                    {
                        let _ = tx.send(data).await;
                    }
                    if fin && let Some(slot) = self.slots().get_mut(&id) {
                        slot.data = None;
                    }
                }
                Frame::RstStream { id } => {
                    if let Some(mut slot) = self.slots().remove(&id)
                        && let Some(r) = slot.reply.take()
                    {
                        let _ = r.send(false);
                    }
                }
                Frame::Ping(pid) => {
                    // echo the peer's pings (their ids have the other parity than ours)
                    if (pid % 2 == 1) != odd_is_ours {
                        self.send(&control(PING, 0, &pid.to_be_bytes())).await?;
                    }
                }
                Frame::GoAway => return Ok(()),
                Frame::Other => {}
            }
        }
        Ok(())
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Slot>> {
        self.0.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn send(&self, frame: &[u8]) -> io::Result<()> {
        let w = self.0.writer.lock().await;
        w.tx.send(Out::Frame(frame.to_vec()))
            .await
            .map_err(|_| gone())
    }

    async fn send_headers(&self, kind: u16, prefix: &[u8], headers: &Headers) -> io::Result<()> {
        let mut w = self.0.writer.lock().await;
        let block = w.comp.encode(headers)?;
        let mut p = prefix.to_vec();
        p.extend_from_slice(&block);
        w.tx.send(Out::Frame(control(kind, 0, &p)))
            .await
            .map_err(|_| gone())
    }

    /// Drop the connection at once (both directions), whatever is in flight.
    pub(crate) fn abort(&self) {
        for t in self
            .0
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            t.abort();
        }
    }

    /// Accept a stream the peer opened (SYN_REPLY with no headers).
    pub(crate) async fn reply(&self, id: u32) -> io::Result<()> {
        self.send_headers(SYN_REPLY, &id.to_be_bytes(), &Vec::new())
            .await
    }

    /// Open a stream and wait for the peer's reply.
    pub(crate) async fn open(&self, headers: Headers, timeout: Duration) -> io::Result<Stream> {
        let id = self.0.next_id.fetch_add(2, Ordering::SeqCst);
        let (tx, rx) = mpsc::channel(64);
        let (rtx, rrx) = oneshot::channel();
        self.slots().insert(
            id,
            Slot {
                data: Some(tx),
                reply: Some(rtx),
            },
        );
        let mut prefix = id.to_be_bytes().to_vec();
        prefix.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // associated stream, priority, slot
        self.send_headers(SYN_STREAM, &prefix, &headers).await?;
        match tokio::time::timeout(timeout, rrx).await {
            Ok(Ok(true)) => Ok(Stream {
                id,
                headers,
                rx,
                session: self.clone(),
            }),
            Ok(_) => Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                format!("the peer refused spdy stream {id}"),
            )),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no reply to spdy stream {id} within {timeout:?}"),
            )),
        }
    }

    /// Say goodbye (GOAWAY): no new streams; the peer closes the connection when done.
    pub(crate) async fn goaway(&self) {
        let mut p = 0u32.to_be_bytes().to_vec();
        p.extend_from_slice(&0u32.to_be_bytes());
        let _ = self.send(&control(GOAWAY, 0, &p)).await;
    }

    /// GOAWAY, then shut the sending side down.
    pub(crate) async fn close(&self) {
        self.goaway().await;
        let w = self.0.writer.lock().await;
        let _ = w.tx.send(Out::Shutdown).await;
    }

    /// Resolves once the connection has ended (the peer closed it, or it failed).
    pub(crate) async fn closed(&self) {
        let mut c = self.0.closed.clone();
        let _ = c.wait_for(|v| *v).await;
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the spdy connection is closed")
}

async fn write_loop(mut w: WriteHalf<Box<dyn Io>>, mut rx: mpsc::Receiver<Out>) {
    while let Some(out) = rx.recv().await {
        match out {
            Out::Frame(f) => {
                if w.write_all(&f).await.is_err() {
                    return;
                }
                if rx.is_empty() && w.flush().await.is_err() {
                    return;
                }
            }
            Out::Shutdown => {
                let _ = w.shutdown().await;
                return;
            }
        }
    }
}

fn rst(id: u32, status: u32) -> Vec<u8> {
    let mut p = id.to_be_bytes().to_vec();
    p.extend_from_slice(&status.to_be_bytes());
    control(RST_STREAM, 0, &p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dictionary_is_the_spdy3_one() {
        assert_eq!(DICTIONARY.len(), 1423);
        assert_eq!(&DICTIONARY[..11], b"\0\0\0\x07options");
        assert!(DICTIONARY.ends_with(b",utf-,*,enq=0."));
    }

    #[test]
    fn header_blocks_round_trip_through_one_shared_context() {
        let mut c = Compressor::new();
        let mut d = Decompressor::new();
        for i in 0..3 {
            let h: Headers = vec![
                ("streamType".into(), "stdout".into()),
                ("port".into(), format!("80{i}")),
                ("requestid".into(), "0".into()),
            ];
            let block = c.encode(&h).unwrap();
            let got = d.decode(&block).unwrap();
            assert_eq!(header(&got, "STREAMTYPE"), Some("stdout"));
            assert_eq!(header(&got, "port"), Some(format!("80{i}").as_str()));
        }
    }

    #[test]
    fn a_block_uses_the_dictionary() {
        // zlib FDICT flag set in the header, and the dictionary's adler32 right after
        let block = Compressor::new()
            .encode(&vec![("accept".into(), "x".into())])
            .unwrap();
        assert_eq!(block[1] & 0x20, 0x20, "FDICT");
        let mut d = Decompressor::new();
        assert_eq!(
            d.decode(&block).unwrap(),
            vec![("accept".to_string(), "x".to_string())]
        );
        assert!(Decompressor::new().decode(&block[..3]).is_err());
    }

    #[tokio::test]
    async fn sessions_open_reply_exchange_data_and_close() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let (client, _) = Session::new(Box::new(a), false);
        let (server, mut incoming) = Session::new(Box::new(b), true);
        let srv = tokio::spawn(async move {
            let mut s = incoming.recv().await.unwrap();
            assert_eq!(s.header("streamtype"), Some("stdin"));
            server.reply(s.id).await.unwrap();
            let mut got = Vec::new();
            while let Some(b) = s.recv().await {
                got.extend_from_slice(&b);
            }
            s.writer().write(&got).await.unwrap();
            s.writer().close().await.unwrap();
            server
        });
        let mut s = client
            .open(
                vec![("streamType".into(), "stdin".into())],
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!(s.id, 1);
        let big = vec![7u8; 100_000];
        s.writer().write(&big).await.unwrap();
        s.writer().close().await.unwrap();
        let mut back = Vec::new();
        while let Some(b) = s.recv().await {
            back.extend_from_slice(&b);
        }
        assert_eq!(back, big);
        let server = srv.await.unwrap();
        client.close().await;
        tokio::time::timeout(Duration::from_secs(5), server.closed())
            .await
            .unwrap();
    }
}
