//! The eviction manager's logic: node signals (memory.available, nodefs/imagefs availability,
//! inodes, pid.available), thresholds in kubelet's syntax (`memory.available<100Mi`,
//! `nodefs.available<10%`), hard and soft thresholds with grace periods, the ranking of pods to
//! evict, and the decision with kubelet's reason and message.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use super::quantity;

/// An eviction signal, named as kubelet names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Signal {
    /// `memory.available`: node memory available (capacity - working set).
    MemoryAvailable,
    /// `nodefs.available`: free bytes of the filesystem of the kubelet root dir.
    NodeFsAvailable,
    /// `nodefs.inodesFree`: free inodes of that filesystem.
    NodeFsInodesFree,
    /// `imagefs.available`: free bytes of the runtime's image filesystem.
    ImageFsAvailable,
    /// `imagefs.inodesFree`: free inodes of the image filesystem.
    ImageFsInodesFree,
    /// `pid.available`: process IDs left (pid_max - running processes).
    PidAvailable,
}

impl Signal {
    /// Every signal.
    pub const ALL: [Signal; 6] = [
        Signal::MemoryAvailable,
        Signal::NodeFsAvailable,
        Signal::NodeFsInodesFree,
        Signal::ImageFsAvailable,
        Signal::ImageFsInodesFree,
        Signal::PidAvailable,
    ];

    /// The kubelet name (`memory.available`...).
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::MemoryAvailable => "memory.available",
            Signal::NodeFsAvailable => "nodefs.available",
            Signal::NodeFsInodesFree => "nodefs.inodesFree",
            Signal::ImageFsAvailable => "imagefs.available",
            Signal::ImageFsInodesFree => "imagefs.inodesFree",
            Signal::PidAvailable => "pid.available",
        }
    }

    /// The resource the signal is about, as kubelet's message names it (`memory`,
    /// `ephemeral-storage`, `inodes`, `pids`).
    pub fn resource(self) -> &'static str {
        match self {
            Signal::MemoryAvailable => "memory",
            Signal::NodeFsAvailable | Signal::ImageFsAvailable => "ephemeral-storage",
            Signal::NodeFsInodesFree | Signal::ImageFsInodesFree => "inodes",
            Signal::PidAvailable => "pids",
        }
    }

    /// The node condition the signal drives.
    pub fn condition(self) -> &'static str {
        match self {
            Signal::MemoryAvailable => "MemoryPressure",
            Signal::PidAvailable => "PIDPressure",
            _ => "DiskPressure",
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Signal {
    type Err = ThresholdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Signal::ALL
            .into_iter()
            .find(|sig| sig.as_str() == s)
            .ok_or_else(|| ThresholdError {
                input: s.to_string(),
                reason: "unknown signal".into(),
            })
    }
}

/// A threshold's value: an absolute quantity or a percentage of capacity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ThresholdValue {
    /// An absolute amount (bytes, inodes, pids).
    Quantity(i64),
    /// A percentage (0-100) of the signal's capacity.
    Percentage(f64),
}

impl ThresholdValue {
    /// The absolute amount for a capacity.
    pub fn amount(self, capacity: i64) -> i64 {
        match self {
            ThresholdValue::Quantity(q) => q,
            ThresholdValue::Percentage(p) => (capacity as f64 * p / 100.0).round() as i64,
        }
    }
}

/// One eviction threshold: `signal < value`, hard (grace period zero) or soft.
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    /// The signal.
    pub signal: Signal,
    /// The value under which the threshold is met.
    pub value: ThresholdValue,
    /// How long the threshold must be met before acting; zero for a hard threshold.
    pub grace_period: Duration,
}

impl Threshold {
    /// Whether this is a hard threshold.
    pub fn is_hard(&self) -> bool {
        self.grace_period.is_zero()
    }
}

/// A threshold that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("eviction threshold {input:?}: {reason}")]
pub struct ThresholdError {
    /// The text at fault.
    pub input: String,
    /// What is wrong.
    pub reason: String,
}

fn parse_value(signal: Signal, text: &str, input: &str) -> Result<ThresholdValue, ThresholdError> {
    let err = |reason: String| ThresholdError {
        input: input.to_string(),
        reason,
    };
    if let Some(p) = text.strip_suffix('%') {
        let p: f64 = p
            .trim()
            .parse()
            .map_err(|_| err(format!("bad percentage {text:?}")))?;
        if !(0.0..=100.0).contains(&p) || p == 0.0 {
            return Err(err(format!("percentage {text:?} out of (0, 100]")));
        }
        return Ok(ThresholdValue::Percentage(p));
    }
    let v = quantity::value(text).map_err(|e| err(e.to_string()))?;
    if v < 0 {
        return Err(err(format!("{signal} must not be negative")));
    }
    Ok(ThresholdValue::Quantity(v))
}

/// Parses kubelet's flag syntax: `memory.available<100Mi,nodefs.available<10%` (hard thresholds).
pub fn parse_thresholds(text: &str) -> Result<Vec<Threshold>, ThresholdError> {
    let mut out: Vec<Threshold> = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (sig, val) = part.split_once('<').ok_or_else(|| ThresholdError {
            input: part.to_string(),
            reason: "expected <signal><<value> (only '<' is supported)".into(),
        })?;
        let signal: Signal = sig
            .trim()
            .parse()
            .map_err(|e: ThresholdError| ThresholdError {
                input: part.to_string(),
                reason: e.reason,
            })?;
        if out.iter().any(|t| t.signal == signal) {
            return Err(ThresholdError {
                input: part.to_string(),
                reason: format!("{signal} given twice"),
            });
        }
        out.push(Threshold {
            signal,
            value: parse_value(signal, val.trim(), part)?,
            grace_period: Duration::ZERO,
        });
    }
    Ok(out)
}

/// Parses kubelet's config maps: `evictionSoft` (`{"memory.available": "300Mi"}`) with
/// `evictionSoftGracePeriod` (`{"memory.available": "1m30s"}`); every soft threshold needs a
/// positive grace period.
pub fn parse_soft_thresholds(
    soft: &BTreeMap<String, String>,
    grace: &BTreeMap<String, String>,
) -> Result<Vec<Threshold>, ThresholdError> {
    let mut out = Vec::new();
    for (sig, val) in soft {
        let input = format!("{sig}<{val}");
        let signal: Signal = sig.parse()?;
        let g = grace.get(sig).ok_or_else(|| ThresholdError {
            input: input.clone(),
            reason: "soft threshold without a grace period".into(),
        })?;
        let grace_period = parse_duration(g).map_err(|reason| ThresholdError {
            input: format!("{sig}={g}"),
            reason,
        })?;
        if grace_period.is_zero() {
            return Err(ThresholdError {
                input,
                reason: "soft threshold grace period must be positive".into(),
            });
        }
        out.push(Threshold {
            signal,
            value: parse_value(signal, val, &input)?,
            grace_period,
        });
    }
    Ok(out)
}

/// Parses a Go duration (`1m30s`, `90s`, `500ms`, `1h`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    while !rest.is_empty() {
        let n_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("duration {text:?} lacks a unit"))?;
        let n: f64 = rest[..n_end]
            .parse()
            .map_err(|_| format!("bad duration {text:?}"))?;
        rest = &rest[n_end..];
        let u_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..u_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            u => return Err(format!("unknown unit {u:?} in duration {text:?}")),
        };
        total += Duration::from_secs_f64(n * unit);
        rest = &rest[u_end..];
    }
    Ok(total)
}

/// kubelet's default hard thresholds: `memory.available<100Mi`, `nodefs.available<10%`,
/// `nodefs.inodesFree<5%`, `imagefs.available<15%`.
pub fn default_hard_thresholds() -> Vec<Threshold> {
    parse_thresholds(
        "memory.available<100Mi,nodefs.available<10%,nodefs.inodesFree<5%,imagefs.available<15%",
    )
    .expect("the defaults parse")
}
