//! Container logs as kubelet serves them (`GET /containerLogs/{namespace}/{pod}/{container}`):
//! the CRI log files the runtime writes (`<RFC3339Nano> <stdout|stderr> <P|F> <content>`, long
//! lines split into partial `P` entries ended by a full `F` one), read with kubelet's
//! `PodLogOptions`:
//!
//! - [`LogOptions::from_query`]: the query parameters (`follow`, `previous`, `tailLines` (and the
//!   older `tail`), `limitBytes`, `sinceSeconds`, `sinceTime`, `timestamps`), decoded and
//!   validated as kubelet does;
//! - [`log_container_id`]: which container instance a request reads, from the pod's status
//!   (kubelet's `validateContainerLogStatus`: `previous` reads the last terminated instance);
//! - [`read_logs`]: the entries of one log file, partial entries joined into one line, the
//!   last `tailLines` lines, none older than `since`, at most `limitBytes` bytes, each line
//!   prefixed by its time with `timestamps`; with `follow`, new lines as they are written
//!   (across a rotation of the file) until the container stops or the reader goes away.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::PodStatus;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use tokio::io::{AsyncBufReadExt, AsyncSeekExt, AsyncWrite, AsyncWriteExt};

/// An error of the log endpoint, with the HTTP status kubelet answers it with
/// ([`LogsError::status`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogsError {
    /// The query could not be decoded (kubelet: 400 `Unable to decode query.`).
    #[error("unable to decode query: {0}")]
    Decode(String),
    /// The options are invalid (kubelet: 422 `Invalid request.`).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// No log of that container instance (kubelet: 400, the message as kubelet words it:
    /// `previous terminated container "app" in pod "web" not found`...).
    #[error("{0}")]
    NoLog(String),
    /// The log file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl LogsError {
    /// The HTTP status kubelet answers this error with.
    pub fn status(&self) -> u16 {
        match self {
            LogsError::Invalid(_) => 422,
            LogsError::Io { .. } => 500,
            _ => 400,
        }
    }
}

/// What to read, as kubelet's `PodLogOptions`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogOptions {
    /// Stream new lines as they are written, until the container stops.
    pub follow: bool,
    /// The previous (terminated) instance of the container.
    pub previous: bool,
    /// Only the last lines (a line joined from its partial entries counts once).
    pub tail_lines: Option<u64>,
    /// At most this many bytes (timestamps included), cut mid-line if need be.
    pub limit_bytes: Option<u64>,
    /// Only entries written at or after this time (`sinceTime`, or now less `sinceSeconds`).
    pub since: Option<Timestamp>,
    /// Prefix each line with the time of its (first) entry, in RFC 3339 with nanoseconds.
    pub timestamps: bool,
}

/// One entry of a CRI log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry<'a> {
    /// When the runtime wrote it.
    pub timestamp: Timestamp,
    /// The timestamp as written.
    pub timestamp_text: &'a str,
    /// `stdout` or `stderr`.
    pub stream: &'a str,
    /// A partial (`P`) entry: the line goes on in the next entry of the stream.
    pub partial: bool,
    /// The content, without the line's newline.
    pub content: &'a [u8],
}

/// Parse one line of a CRI log file (without its newline), as kubelet's `parseCRILog`; `None`
/// for a malformed line (kubelet skips those).
pub fn parse_cri_line(line: &[u8]) -> Option<LogEntry<'_>> {
    let mut it = line.splitn(4, |b| *b == b' ');
    let ts = std::str::from_utf8(it.next()?).ok()?;
    let stream = std::str::from_utf8(it.next()?).ok()?;
    if stream != "stdout" && stream != "stderr" {
        return None;
    }
    // the tag field may carry more tags after a colon; the first is P or F
    let tags = it.next()?;
    let partial = match tags.split(|b| *b == b':').next() {
        Some(b"P") => true,
        Some(b"F") => false,
        _ => return None,
    };
    Some(LogEntry {
        timestamp: ts.parse().ok()?,
        timestamp_text: ts,
        stream,
        partial,
        content: it.next().unwrap_or_default(),
    })
}

/// `true`/`false` as Go's `strconv.ParseBool` reads them.
fn parse_bool(name: &str, v: &str) -> Result<bool, LogsError> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(LogsError::Decode(format!("{name}={v:?} is not a boolean"))),
    }
}

fn parse_int(name: &str, v: &str) -> Result<i64, LogsError> {
    v.parse()
        .map_err(|_| LogsError::Decode(format!("{name}={v:?} is not an integer")))
}

/// The `(name, value)` pairs of a query string, decoded (`+` and `%XX`); a malformed query
/// has none.
pub(crate) fn query_pairs(query: &str) -> Vec<(String, String)> {
    format!("/?{query}")
        .parse::<axum::http::Uri>()
        .ok()
        .and_then(|uri| axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&uri).ok())
        .map(|q| q.0)
        .unwrap_or_default()
}

impl LogOptions {
    /// The options of a `/containerLogs` query string, decoded and validated as kubelet does
    /// (`tail=N` is `tailLines=N`, `tail=all` no limit; `sinceSeconds` counts back from `now`).
    pub fn from_query(query: &str, now: Timestamp) -> Result<Self, LogsError> {
        let mut o = LogOptions::default();
        let (mut tail, mut since_seconds, mut since_time, mut limit) = (None, None, None, None);
        let mut tail_compat = None;
        for (k, v) in query_pairs(query) {
            match k.as_str() {
                "follow" => o.follow = parse_bool(&k, &v)?,
                "previous" => o.previous = parse_bool(&k, &v)?,
                "timestamps" => o.timestamps = parse_bool(&k, &v)?,
                "tailLines" => tail = Some(parse_int(&k, &v)?),
                "tail" => tail_compat = Some(v),
                "limitBytes" => limit = Some(parse_int(&k, &v)?),
                "sinceSeconds" => since_seconds = Some(parse_int(&k, &v)?),
                "sinceTime" => {
                    since_time = Some(v.parse::<Timestamp>().map_err(|e| {
                        LogsError::Decode(format!("sinceTime={v:?} is not an RFC 3339 time: {e}"))
                    })?)
                }
                _ => {}
            }
        }
        // the older `tail` parameter wins over tailLines, as in kubelet
        match tail_compat.as_deref() {
            Some("all") => tail = None,
            Some(t) => tail = Some(parse_int("tail", t)?),
            None => {}
        }
        if let Some(t) = tail {
            if t < 0 {
                return Err(LogsError::Invalid(format!(
                    "tailLines: Invalid value: {t}: must be greater than or equal to 0"
                )));
            }
            o.tail_lines = Some(t as u64);
        }
        if let Some(l) = limit {
            if l < 1 {
                return Err(LogsError::Invalid(format!(
                    "limitBytes: Invalid value: {l}: must be greater than 0"
                )));
            }
            o.limit_bytes = Some(l as u64);
        }
        match (since_seconds, since_time) {
            (Some(_), Some(_)) => {
                return Err(LogsError::Invalid(
                    "at most one of `sinceTime` or `sinceSeconds` may be specified".into(),
                ));
            }
            (Some(s), None) => {
                if s < 1 {
                    return Err(LogsError::Invalid(format!(
                        "sinceSeconds: Invalid value: {s}: must be greater than 0"
                    )));
                }
                o.since = now.checked_sub(SignedDuration::from_secs(s)).ok();
            }
            (None, t) => o.since = t,
        }
        Ok(o)
    }
}

/// The container id (without the `runtime://` scheme) whose log a request reads, from the
/// pod's status, as kubelet's `validateContainerLogStatus`: the running or last terminated
/// instance, or with `previous` the instance before it; the error words as kubelet's.
pub fn log_container_id(
    pod_name: &str,
    status: &PodStatus,
    container: &str,
    previous: bool,
) -> Result<String, LogsError> {
    let all = [
        status.container_statuses.as_deref(),
        status.init_container_statuses.as_deref(),
        status.ephemeral_container_statuses.as_deref(),
    ];
    let Some(cs) = all
        .into_iter()
        .flatten()
        .flatten()
        .find(|c| c.name == container)
    else {
        return Err(LogsError::NoLog(format!(
            "container {container:?} in pod {pod_name:?} is not available"
        )));
    };
    let strip = |id: &str| id.split_once("://").map_or(id, |(_, i)| i).to_string();
    let last = cs
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .and_then(|t| t.container_id.as_deref())
        .filter(|i| !i.is_empty());
    let state = cs.state.clone().unwrap_or_default();
    let terminated_msg = || {
        LogsError::NoLog(format!(
            "container {container:?} in pod {pod_name:?} is terminated"
        ))
    };
    if previous {
        return last.map(strip).ok_or_else(|| {
            LogsError::NoLog(format!(
                "previous terminated container {container:?} in pod {pod_name:?} not found"
            ))
        });
    }
    if state.running.is_some()
        && let Some(id) = cs.container_id.as_deref().filter(|i| !i.is_empty())
    {
        return Ok(strip(id));
    }
    if let Some(t) = &state.terminated {
        return match t.container_id.as_deref().filter(|i| !i.is_empty()) {
            Some(id) => Ok(strip(id)),
            None => last.map(strip).ok_or_else(terminated_msg),
        };
    }
    if cs
        .last_state
        .as_ref()
        .is_some_and(|s| s.terminated.is_some())
    {
        return last.map(strip).ok_or_else(terminated_msg);
    }
    if let Some(w) = &state.waiting {
        let reason = w.reason.clone().unwrap_or_default();
        let why = match reason.as_str() {
            "ErrImagePull" => "image can't be pulled".to_string(),
            "ImagePullBackOff" => "trying and failing to pull image".to_string(),
            _ => reason,
        };
        return Err(LogsError::NoLog(format!(
            "container {container:?} in pod {pod_name:?} is waiting to start: {why}"
        )));
    }
    Err(LogsError::NoLog(format!(
        "container {container:?} in pod {pod_name:?} is waiting to start - no logs yet"
    )))
}

/// The offset where the last `n` lines of a CRI log file start (a line ends with a full entry;
/// an unfinished entry at the end of the file is not counted).
fn tail_start(f: &mut std::fs::File, n: u64) -> std::io::Result<u64> {
    /// The file from `pos` to its end, read backwards in chunks.
    struct Back<'f> {
        f: &'f mut std::fs::File,
        pos: u64,
        buf: Vec<u8>,
    }
    impl Back<'_> {
        /// The offset of the last newline before `limit`, `None` when there is none.
        fn newline_before(&mut self, limit: u64) -> std::io::Result<Option<u64>> {
            const CHUNK: u64 = 64 * 1024;
            loop {
                let upto = (limit - self.pos) as usize;
                if let Some(i) = self.buf[..upto].iter().rposition(|b| *b == b'\n') {
                    return Ok(Some(self.pos + i as u64));
                }
                if self.pos == 0 {
                    return Ok(None);
                }
                let start = self.pos.saturating_sub(CHUNK);
                let mut chunk = vec![0u8; (self.pos - start) as usize];
                self.f.seek(SeekFrom::Start(start))?;
                self.f.read_exact(&mut chunk)?;
                chunk.extend_from_slice(&self.buf);
                self.buf = chunk;
                self.pos = start;
            }
        }
    }
    let len = f.metadata()?.len();
    let mut back = Back {
        f,
        pos: len,
        buf: Vec::new(),
    };
    let Some(last) = back.newline_before(len)? else {
        return Ok(0);
    };
    // `end`: just after the newline of the entry looked at
    let mut end = last + 1;
    let mut full = 0u64;
    loop {
        let prev = back.newline_before(end - 1)?;
        let from = prev.map_or(0, |p| p + 1);
        let line = &back.buf[(from - back.pos) as usize..(end - 1 - back.pos) as usize];
        if parse_cri_line(line).is_some_and(|e| !e.partial) {
            full += 1;
            if full > n {
                return Ok(end);
            }
        }
        match prev {
            Some(p) => end = p + 1,
            None => return Ok(0),
        }
    }
}

/// The time as kubelet prints it with `timestamps=true` (Go's RFC3339Nano: the fraction without
/// trailing zeros).
fn format_timestamp(t: Timestamp) -> String {
    let s = t.strftime("%Y-%m-%dT%H:%M:%S.%f").to_string();
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s}Z")
}

/// Writes entries as lines, stopping at the byte limit.
struct LineWriter<'w, W> {
    out: &'w mut W,
    opts: &'w LogOptions,
    written: u64,
    // per stream: whether the next entry starts a line
    line_start: [bool; 2],
}

impl<W: AsyncWrite + Unpin> LineWriter<'_, W> {
    /// Write one entry; `false` when the output is done (limit reached or the reader gone).
    async fn entry(&mut self, e: &LogEntry<'_>) -> bool {
        if let Some(since) = self.opts.since
            && e.timestamp < since
        {
            return true;
        }
        let s = usize::from(e.stream == "stderr");
        let mut out = Vec::with_capacity(e.content.len() + 40);
        if self.opts.timestamps && self.line_start[s] {
            out.extend_from_slice(format_timestamp(e.timestamp).as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(e.content);
        if !e.partial {
            out.push(b'\n');
        }
        self.line_start[s] = !e.partial;
        let mut more = true;
        if let Some(limit) = self.opts.limit_bytes {
            let left = limit.saturating_sub(self.written) as usize;
            if out.len() >= left {
                out.truncate(left);
                more = false;
            }
        }
        self.written += out.len() as u64;
        if self.out.write_all(&out).await.is_err() || self.out.flush().await.is_err() {
            return false;
        }
        more
    }
}

/// How often a follower looks for new entries, and how often it asks whether the container
/// still runs while the file has nothing new.
const FOLLOW_POLL: Duration = Duration::from_millis(100);
const STATE_CHECK: Duration = Duration::from_secs(1);

/// Read the CRI log file at `path` with `opts` into `out`. With `opts.follow`, wait for new
/// entries (reopening the file when the runtime rotated it) until `running` answers `false` and
/// the file has nothing more, or `out` fails (the client went away).
pub async fn read_logs<W, R, F>(
    path: &Path,
    opts: &LogOptions,
    out: &mut W,
    mut running: R,
) -> Result<(), LogsError>
where
    W: AsyncWrite + Unpin,
    R: FnMut() -> F,
    F: std::future::Future<Output = bool>,
{
    let io = |source| LogsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let std_file = std::fs::File::open(path).map_err(io)?;
    let tail = opts.tail_lines;
    let (std_file, start) = tokio::task::spawn_blocking(move || {
        let mut f = std_file;
        let start = match tail {
            Some(n) => tail_start(&mut f, n)?,
            None => 0,
        };
        std::io::Result::Ok((f, start))
    })
    .await
    .map_err(|e| io(std::io::Error::other(e)))?
    .map_err(io)?;
    let mut ino = std_file.metadata().map_err(io)?.ino();
    let mut file = tokio::fs::File::from_std(std_file);
    file.seek(SeekFrom::Start(start)).await.map_err(io)?;
    let mut reader = tokio::io::BufReader::new(file);
    let mut w = LineWriter {
        out,
        opts,
        written: 0,
        line_start: [true, true],
    };
    if opts.limit_bytes == Some(0) {
        return Ok(());
    }
    let mut line: Vec<u8> = Vec::new();
    let mut last_check = tokio::time::Instant::now();
    let mut stopping = false;
    // without follow, a tail read ends after its lines even while the container writes more
    // (kubelet's limited mode)
    let mut lines_left = if opts.follow { None } else { tail };
    loop {
        let n = reader.read_until(b'\n', &mut line).await.map_err(io)?;
        if n > 0 && line.last() == Some(&b'\n') {
            line.pop();
            if let Some(e) = parse_cri_line(&line) {
                if !w.entry(&e).await {
                    return Ok(());
                }
                if !e.partial
                    && let Some(left) = lines_left.as_mut()
                {
                    *left = left.saturating_sub(1);
                    if *left == 0 {
                        return Ok(());
                    }
                }
            }
            line.clear();
            continue;
        }
        // at the end of what is written (an unfinished entry stays in `line`)
        if !opts.follow || stopping {
            return Ok(());
        }
        // rotated: a new file at the path; read the rest of the old one first (done: at EOF)
        if let Ok(m) = tokio::fs::metadata(path).await
            && m.ino() != ino
            && let Ok(f) = tokio::fs::File::open(path).await
        {
            ino = m.ino();
            reader = tokio::io::BufReader::new(f);
            line.clear();
            continue;
        }
        if last_check.elapsed() >= STATE_CHECK {
            last_check = tokio::time::Instant::now();
            if !running().await {
                // one more pass: what the container wrote before it stopped
                stopping = true;
                continue;
            }
        }
        // the reader went away (a pipe's write of nothing fails once its reader is gone)
        if w.out.write(&[]).await.is_err() {
            return Ok(());
        }
        tokio::time::sleep(FOLLOW_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
        ContainerStatus,
    };

    const T0: &str = "2026-11-23T10:00:00.000000000Z";

    fn entry(ts: &str, stream: &str, tag: &str, content: &str) -> String {
        format!("{ts} {stream} {tag} {content}\n")
    }

    fn sample() -> String {
        [
            entry(T0, "stdout", "F", "one"),
            entry("2026-11-23T10:00:01.500000000Z", "stderr", "F", "two"),
            entry("2026-11-23T10:00:02.000000000Z", "stdout", "P", "thr"),
            entry("2026-11-23T10:00:02.100000000Z", "stdout", "P", "e"),
            entry("2026-11-23T10:00:02.200000000Z", "stdout", "F", "e"),
            "garbage line\n".to_string(),
            entry("2026-11-23T10:00:03.000000000Z", "stdout", "F", "four"),
        ]
        .concat()
    }

    async fn read(text: &str, opts: LogOptions) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        std::fs::write(&path, text).unwrap();
        let mut out = Vec::new();
        read_logs(&path, &opts, &mut out, || async { false })
            .await
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    fn now() -> Timestamp {
        "2026-11-23T10:00:10Z".parse().unwrap()
    }

    #[test]
    fn lines_parse_as_kubelet_parses_them() {
        let e = parse_cri_line(b"2026-11-23T10:00:00.5Z stderr P:x hello world").unwrap();
        assert_eq!(e.stream, "stderr");
        assert!(e.partial);
        assert_eq!(e.content, b"hello world");
        let e = parse_cri_line(b"2026-11-23T10:00:00Z stdout F ").unwrap();
        assert_eq!(e.content, b"");
        assert!(parse_cri_line(b"2026-11-23T10:00:00Z stdin F x").is_none());
        assert!(parse_cri_line(b"yesterday stdout F x").is_none());
        assert!(parse_cri_line(b"2026-11-23T10:00:00Z stdout X x").is_none());
    }

    #[tokio::test]
    async fn the_whole_log_joins_partial_entries_and_skips_bad_lines() {
        let got = read(&sample(), LogOptions::default()).await;
        assert_eq!(got, "one\ntwo\nthree\nfour\n");
    }

    #[tokio::test]
    async fn tail_counts_joined_lines() {
        let t = |n| LogOptions {
            tail_lines: Some(n),
            ..Default::default()
        };
        assert_eq!(read(&sample(), t(0)).await, "");
        assert_eq!(read(&sample(), t(1)).await, "four\n");
        assert_eq!(read(&sample(), t(2)).await, "three\nfour\n");
        assert_eq!(read(&sample(), t(3)).await, "two\nthree\nfour\n");
        assert_eq!(read(&sample(), t(100)).await, "one\ntwo\nthree\nfour\n");
        // an unfinished entry at the end is neither counted nor shown
        let text = format!("{}{T0} stdout F unfinished", sample());
        assert_eq!(read(&text, t(1)).await, "four\n");
        // across chunks: many long lines
        let long: String = (0..3000)
            .map(|i| entry(T0, "stdout", "F", &format!("{i:0>60}")))
            .collect();
        let got = read(&long, t(2)).await;
        assert_eq!(got, format!("{:0>60}\n{:0>60}\n", 2998, 2999));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tail_read_ends_after_its_lines_while_the_container_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        std::fs::write(&path, sample()).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (path, stop) = (path.clone(), stop.clone());
            std::thread::spawn(move || {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .unwrap();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    f.write_all(entry(T0, "stdout", "F", "more").as_bytes())
                        .unwrap();
                }
            })
        };
        for _ in 0..50 {
            let mut out = Vec::new();
            let opts = LogOptions {
                tail_lines: Some(2),
                ..Default::default()
            };
            // without the limit the read chases the writer and may never reach the end
            tokio::time::timeout(
                Duration::from_secs(30),
                read_logs(&path, &opts, &mut out, || async { true }),
            )
            .await
            .expect("a tail read ends")
            .unwrap();
            assert_eq!(String::from_utf8(out).unwrap().lines().count(), 2);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.join().unwrap();
    }

    #[tokio::test]
    async fn since_and_timestamps() {
        let o = LogOptions::from_query("sinceTime=2026-11-23T10%3A00%3A02Z&timestamps=true", now())
            .unwrap();
        assert_eq!(
            read(&sample(), o).await,
            "2026-11-23T10:00:02Z three\n2026-11-23T10:00:03Z four\n"
        );
        // sinceSeconds counts back from now
        let o = LogOptions::from_query("sinceSeconds=9", now()).unwrap();
        assert_eq!(o.since, Some("2026-11-23T10:00:01Z".parse().unwrap()));
        assert_eq!(read(&sample(), o).await, "two\nthree\nfour\n");
        let o = LogOptions {
            timestamps: true,
            tail_lines: Some(3),
            ..Default::default()
        };
        assert_eq!(
            read(&sample(), o).await,
            "2026-11-23T10:00:01.5Z two\n2026-11-23T10:00:02Z three\n2026-11-23T10:00:03Z four\n"
        );
    }

    #[tokio::test]
    async fn limit_bytes_cuts_mid_line() {
        let o = LogOptions::from_query("limitBytes=6", now()).unwrap();
        assert_eq!(read(&sample(), o).await, "one\ntw");
        let o = LogOptions::from_query("limitBytes=8&tailLines=2", now()).unwrap();
        assert_eq!(read(&sample(), o).await, "three\nfo");
    }

    #[tokio::test]
    async fn follow_sees_new_lines_and_a_rotation_until_the_container_stops() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        std::fs::write(&path, entry(T0, "stdout", "F", "first")).unwrap();
        let running = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (mut client, mut server) = tokio::io::duplex(1024);
        let (p, r) = (path.clone(), running.clone());
        let task = tokio::spawn(async move {
            let opts = LogOptions {
                follow: true,
                ..Default::default()
            };
            read_logs(&p, &opts, &mut server, move || {
                let r = r.clone();
                async move { r.load(std::sync::atomic::Ordering::SeqCst) }
            })
            .await
        });
        let mut got = Vec::new();
        let mut read_line = async |got: &mut Vec<u8>| {
            use tokio::io::AsyncReadExt;
            let mut b = [0u8; 64];
            let start = got.len();
            while !got[start..].contains(&b'\n') {
                let n = client.read(&mut b).await.unwrap();
                assert!(n > 0, "the follower ended early");
                got.extend_from_slice(&b[..n]);
            }
        };
        read_line(&mut got).await;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        use std::io::Write;
        f.write_all(entry(T0, "stdout", "F", "second").as_bytes())
            .unwrap();
        read_line(&mut got).await;
        // rotation: the old file moved away, a new one at the path
        std::fs::rename(&path, dir.path().join("0.log.1")).unwrap();
        std::fs::write(&path, entry(T0, "stdout", "F", "third")).unwrap();
        read_line(&mut got).await;
        assert_eq!(String::from_utf8_lossy(&got), "first\nsecond\nthird\n");
        running.store(false, std::sync::atomic::Ordering::SeqCst);
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("the follower stops with the container")
            .unwrap()
            .unwrap();
    }

    #[test]
    fn bad_parameters_are_refused_as_kubelet_refuses_them() {
        let e = |q| LogOptions::from_query(q, now()).unwrap_err();
        assert!(matches!(e("tailLines=x"), LogsError::Decode(_)));
        assert!(matches!(e("follow=yes"), LogsError::Decode(_)));
        assert!(matches!(e("sinceTime=yesterday"), LogsError::Decode(_)));
        for q in [
            "tailLines=-1",
            "limitBytes=0",
            "sinceSeconds=0",
            "sinceSeconds=5&sinceTime=2026-11-23T10:00:00Z",
        ] {
            let err = e(q);
            assert!(matches!(err, LogsError::Invalid(_)), "{q}: {err:?}");
            assert_eq!(err.status(), 422);
        }
        let o = LogOptions::from_query("tail=all&follow=1&previous=true", now()).unwrap();
        assert_eq!(o.tail_lines, None);
        assert!(o.follow && o.previous);
        assert_eq!(
            LogOptions::from_query("tailLines=1&tail=5", now())
                .unwrap()
                .tail_lines,
            Some(5)
        );
    }

    fn status(state: ContainerState, last: Option<ContainerState>, id: Option<&str>) -> PodStatus {
        PodStatus {
            container_statuses: Some(vec![ContainerStatus {
                name: "app".into(),
                state: Some(state),
                last_state: last,
                container_id: id.map(str::to_string),
                ..Default::default()
            }]),
            ..Default::default()
        }
    }

    fn terminated(id: &str) -> ContainerState {
        ContainerState {
            terminated: Some(ContainerStateTerminated {
                container_id: Some(format!("native://{id}")),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn previous_reads_the_last_terminated_instance() {
        let running = ContainerState {
            running: Some(ContainerStateRunning::default()),
            ..Default::default()
        };
        let s = status(
            running.clone(),
            Some(terminated("old")),
            Some("native://new"),
        );
        assert_eq!(log_container_id("web", &s, "app", false).unwrap(), "new");
        assert_eq!(log_container_id("web", &s, "app", true).unwrap(), "old");
        let s = status(running, None, Some("native://new"));
        let e = log_container_id("web", &s, "app", true).unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"previous terminated container "app" in pod "web" not found"#
        );
        assert_eq!(e.status(), 400);
        let e = log_container_id("web", &s, "nope", false).unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"container "nope" in pod "web" is not available"#
        );
        // waiting in back-off after a crash: the crashed instance
        let waiting = ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some("CrashLoopBackOff".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let s = status(waiting.clone(), Some(terminated("crashed")), None);
        assert_eq!(
            log_container_id("web", &s, "app", false).unwrap(),
            "crashed"
        );
        let s = status(waiting, None, None);
        assert_eq!(
            log_container_id("web", &s, "app", false)
                .unwrap_err()
                .to_string(),
            r#"container "app" in pod "web" is waiting to start: CrashLoopBackOff"#
        );
        let s = status(terminated("done"), None, Some("native://done"));
        assert_eq!(log_container_id("web", &s, "app", false).unwrap(), "done");
    }
}
