//! The CRI log format the kubelet reads: `<RFC3339Nano> <stdout|stderr> <P|F> <line>`, one
//! entry per line, long lines split into partial (`P`) entries ended by a full (`F`) one.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout = 0,
    /// Standard error.
    Stderr = 1,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Writes a container's output to its CRI log file, line by line.
pub struct CriLogWriter {
    path: Option<PathBuf>,
    file: Option<File>,
    max_line: usize,
    pending: [Vec<u8>; 2],
}

impl CriLogWriter {
    /// A writer appending to `path` (none: output is discarded); lines longer than `max_line`
    /// bytes are split into partial entries.
    pub fn open(path: Option<PathBuf>, max_line: usize) -> Self {
        let mut w = Self {
            path,
            file: None,
            max_line: max_line.max(1),
            pending: [Vec::new(), Vec::new()],
        };
        w.reopen();
        w
    }

    /// Reopen the file (after the kubelet rotated it).
    pub fn reopen(&mut self) {
        self.file = self.path.as_ref().and_then(|p| {
            if let Some(dir) = p.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            OpenOptions::new().create(true).append(true).open(p).ok()
        });
    }

    /// Take output bytes of one stream; complete lines are written at once.
    pub fn write(&mut self, stream: Stream, data: &[u8]) {
        self.pending[stream as usize].extend_from_slice(data);
        let max = self.max_line;
        loop {
            let buf = &self.pending[stream as usize];
            let nl = buf.iter().take(max + 1).position(|b| *b == b'\n');
            let (line, tag, consumed) = match nl {
                Some(pos) => (buf[..pos].to_vec(), 'F', pos + 1),
                None if buf.len() >= max => (buf[..max].to_vec(), 'P', max),
                None => break,
            };
            self.pending[stream as usize].drain(..consumed);
            self.entry(stream, tag, &line);
        }
    }

    /// Write what is left of unterminated lines as full entries (at the end of the output).
    pub fn flush(&mut self) {
        for s in [Stream::Stdout, Stream::Stderr] {
            let rest = std::mem::take(&mut self.pending[s as usize]);
            if !rest.is_empty() {
                self.entry(s, 'F', &rest);
            }
        }
    }

    fn entry(&mut self, stream: Stream, tag: char, line: &[u8]) {
        let Some(f) = self.file.as_mut() else { return };
        let mut out = Vec::with_capacity(line.len() + 48);
        out.extend_from_slice(rfc3339_nano(SystemTime::now()).as_bytes());
        out.push(b' ');
        out.extend_from_slice(stream.name().as_bytes());
        out.push(b' ');
        out.push(tag as u8);
        out.push(b' ');
        out.extend_from_slice(line);
        out.push(b'\n');
        let _ = f.write_all(&out);
    }
}

/// A time in RFC 3339 with nanoseconds, UTC (`2026-11-23T05:18:50.123456789Z`).
pub fn rfc3339_nano(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // civil from days (Howard Hinnant's algorithm)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339_nano() {
        let t = UNIX_EPOCH + Duration::new(1_475_713_029, 669_794_202);
        assert_eq!(rfc3339_nano(t), "2016-10-06T00:17:09.669794202Z");
        assert_eq!(
            rfc3339_nano(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000000000Z"
        );
    }

    #[test]
    fn lines_are_full_and_long_lines_partial() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c/0.log");
        let mut w = CriLogWriter::open(Some(path.clone()), 8);
        w.write(Stream::Stdout, b"hello\nwor");
        w.write(Stream::Stderr, b"oops\n");
        w.write(Stream::Stdout, b"ld\n0123456789abc\ntail");
        w.flush();
        let text = std::fs::read_to_string(&path).unwrap();
        let entries: Vec<(String, String, String)> = text
            .lines()
            .map(|l| {
                let mut it = l.splitn(4, ' ');
                let ts = it.next().unwrap();
                assert!(ts.ends_with('Z') && ts.len() == 30, "{ts}");
                (
                    it.next().unwrap().into(),
                    it.next().unwrap().into(),
                    it.next().unwrap_or("").into(),
                )
            })
            .collect();
        let want = [
            ("stdout", "F", "hello"),
            ("stderr", "F", "oops"),
            ("stdout", "F", "world"),
            ("stdout", "P", "01234567"),
            ("stdout", "F", "89abc"),
            ("stdout", "F", "tail"),
        ];
        let got: Vec<(&str, &str, &str)> = entries
            .iter()
            .map(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str()))
            .collect();
        assert_eq!(got, want);
    }
}
