//! The CRI container log format (`<RFC3339Nano> <stdout|stderr> <P|F> <line>`): the native
//! runtime's writer (`node_cri::native::runtime::log::CriLogWriter`) is fed arbitrary output in
//! arbitrary chunks; every entry it writes must parse as the kubelet parses it, partial entries
//! must be exactly the line limit long, and the entries of each stream must give back its output.
//!
//! nodekit has no CRI log reader of its own (the kubelet-side reader is upstream's): this target
//! checks the writer against a strict reader, [`parse_entry`].

use node_cri::native::runtime::log::{CriLogWriter, Stream};

/// One parsed log entry.
#[derive(Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    /// `stdout` or `stderr`.
    pub stream: &'a str,
    /// Whether the line is complete (`F`) or partial (`P`).
    pub full: bool,
    /// The content.
    pub content: &'a [u8],
}

/// Parse one entry (a line without its `\n`) strictly, as the kubelet does.
pub fn parse_entry(line: &[u8]) -> Result<Entry<'_>, String> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let ts = parts.next().ok_or("no timestamp")?;
    let stream = parts.next().ok_or("no stream")?;
    let tag = parts.next().ok_or("no tag")?;
    let content = parts.next().ok_or("no content separator")?;
    let ts = std::str::from_utf8(ts).map_err(|_| "timestamp not UTF-8")?;
    let ok_ts = ts.len() == 30
        && ts.ends_with('Z')
        && ts.as_bytes()[10] == b'T'
        && ts.as_bytes()[19] == b'.'
        && ts[..4].bytes().all(|b| b.is_ascii_digit());
    if !ok_ts {
        return Err(format!("bad timestamp {ts:?}"));
    }
    let stream = match stream {
        b"stdout" => "stdout",
        b"stderr" => "stderr",
        s => return Err(format!("bad stream {:?}", String::from_utf8_lossy(s))),
    };
    let full = match tag {
        b"F" => true,
        b"P" => false,
        t => return Err(format!("bad tag {:?}", String::from_utf8_lossy(t))),
    };
    Ok(Entry {
        stream,
        full,
        content,
    })
}

fn strip_nl(v: &[u8]) -> &[u8] {
    v.strip_suffix(b"\n").unwrap_or(v)
}

/// One input: byte 0 sets the line limit (1..=64); then chunks, each a header byte (bit 7: the
/// stream, bits 0..6: the chunk length) and its bytes.
pub fn run(data: &[u8]) {
    let Some((&first, mut rest)) = data.split_first() else {
        return;
    };
    let max = 1 + (first as usize % 64);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("c/0.log");
    let mut w = CriLogWriter::open(Some(path.clone()), max);
    let mut sent: [Vec<u8>; 2] = [vec![], vec![]];
    while let Some((&h, tail)) = rest.split_first() {
        let n = (h & 0x7f) as usize;
        let chunk = &tail[..n.min(tail.len())];
        let stream = if h & 0x80 == 0 {
            Stream::Stdout
        } else {
            Stream::Stderr
        };
        w.write(stream, chunk);
        sent[stream as usize].extend_from_slice(chunk);
        rest = &tail[chunk.len()..];
    }
    w.flush();
    drop(w);
    let text = std::fs::read(&path).unwrap_or_default();
    let mut got: [Vec<u8>; 2] = [vec![], vec![]];
    if !text.is_empty() {
        assert!(text.ends_with(b"\n"), "the log does not end with a newline");
    }
    for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let e = parse_entry(line)
            .unwrap_or_else(|err| panic!("entry {:?}: {err}", String::from_utf8_lossy(line)));
        if e.full {
            assert!(e.content.len() <= max, "full entry longer than {max}");
        } else {
            assert_eq!(e.content.len(), max, "partial entry not {max} bytes long");
        }
        let i = if e.stream == "stdout" { 0 } else { 1 };
        got[i].extend_from_slice(e.content);
        if e.full {
            got[i].push(b'\n');
        }
    }
    for i in 0..2 {
        assert_eq!(
            strip_nl(&got[i]),
            strip_nl(&sent[i]),
            "stream {i}: the entries do not give back the output"
        );
    }
}
