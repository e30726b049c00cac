//! Where the time of a sandbox run, a container create and a container start goes: each call
//! marks its phases (cgroup, init handshake, namespace files, CNI, ...) and the last marks of
//! every sandbox and container are kept in memory, shown in the verbose status (`info["phases"]`,
//! microseconds per phase) and logged at debug level. For profiling pod start, not for state.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The phases of one call, in order.
#[derive(Debug)]
pub struct PhaseTimer {
    last: Instant,
    marks: Vec<(String, Duration)>,
}

impl Default for PhaseTimer {
    fn default() -> Self {
        Self::start()
    }
}

impl PhaseTimer {
    /// Start timing now.
    pub fn start() -> Self {
        Self {
            last: Instant::now(),
            marks: Vec::new(),
        }
    }

    /// The phase `name` ends now (it began at the previous mark).
    pub fn mark(&mut self, name: &'static str) {
        let now = Instant::now();
        self.marks.push((name.to_string(), now - self.last));
        self.last = now;
    }

    /// A phase measured elsewhere (inside the init), kept beside the marks.
    pub fn add(&mut self, name: String, d: Duration) {
        self.marks.push((name, d));
    }

    /// The phases so far.
    pub fn marks(&self) -> &[(String, Duration)] {
        &self.marks
    }
}

/// The phases of one call.
type Phases = Vec<(String, Duration)>;

/// The last phases of each sandbox and container, by id and call (`run`, `create`, `start`).
#[derive(Debug, Default)]
pub(crate) struct PhaseLog {
    by_id: Mutex<HashMap<String, Vec<(&'static str, Phases)>>>,
}

impl PhaseLog {
    /// Keep the phases of `call` on `id` (replacing an earlier record of the same call).
    pub(crate) fn record(&self, id: &str, call: &'static str, t: PhaseTimer) {
        tracing::debug!(id, call, phases = ?t.marks, "phases");
        let mut m = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        let calls = m.entry(id.to_string()).or_default();
        calls.retain(|(c, _)| *c != call);
        calls.push((call, t.marks));
    }

    /// The phases of `id` as JSON: `{"run": {"cgroup": 812, ...}}` (microseconds).
    pub(crate) fn json(&self, id: &str) -> serde_json::Value {
        let m = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = serde_json::Map::new();
        for (call, marks) in m.get(id).into_iter().flatten() {
            let phases: serde_json::Map<String, serde_json::Value> = marks
                .iter()
                .map(|(n, d)| (n.clone(), (d.as_micros() as u64).into()))
                .collect();
            out.insert(call.to_string(), phases.into());
        }
        out.into()
    }

    /// Forget a removed sandbox or container.
    pub(crate) fn forget(&self, id: &str) {
        self.by_id
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_are_kept_per_call_and_forgotten() {
        let log = PhaseLog::default();
        let mut t = PhaseTimer::start();
        t.mark("a");
        t.mark("b");
        log.record("x", "run", t);
        let mut t = PhaseTimer::start();
        t.mark("c");
        log.record("x", "run", t);
        let j = log.json("x");
        assert!(j["run"]["c"].is_u64(), "{j}");
        assert!(j["run"].get("a").is_none(), "replaced: {j}");
        log.forget("x");
        assert_eq!(log.json("x"), serde_json::json!({}));
    }
}
