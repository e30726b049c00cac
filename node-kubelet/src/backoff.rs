//! The restart back-off of crashing containers (and of failing image pulls), as the kubelet's
//! `flowcontrol.Backoff`: 10 s doubling to 5 min, forgotten after 10 min without a new failure.
//!
//! Time is `tokio::time::Instant`, so tests run it on a paused clock.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

/// Settings of a [`Backoff`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffConfig {
    /// The first delay (10 s).
    pub initial: Duration,
    /// The longest delay (5 min).
    pub max: Duration,
    /// A failure this long after the last restart starts over at `initial` (10 min).
    pub reset_after: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(300),
            reset_after: Duration::from_secs(600),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    delay: Duration,
    last_update: Instant,
}

/// Per-key exponential back-off.
///
/// The first failure is retried at once; the next waits `initial` after it, then twice as long
/// each time up to `max`. A failure more than `reset_after` after the last retry starts over.
#[derive(Debug, Clone, Default)]
pub struct Backoff {
    config: BackoffConfig,
    entries: HashMap<String, Entry>,
}

impl Backoff {
    /// A back-off with these settings.
    pub fn new(config: BackoffConfig) -> Self {
        Self {
            config,
            entries: HashMap::new(),
        }
    }

    fn expired(&self, e: &Entry, event: Instant) -> bool {
        event.saturating_duration_since(e.last_update) > self.config.reset_after
    }

    /// If `key` failed at `event` and must still wait at `now`, how much longer.
    pub fn remaining(&self, key: &str, event: Instant, now: Instant) -> Option<Duration> {
        let e = self.entries.get(key)?;
        if self.expired(e, event) {
            return None;
        }
        let since = now.saturating_duration_since(event);
        (since < e.delay).then(|| e.delay - since)
    }

    /// The current delay of `key` (zero when it has none).
    pub fn delay(&self, key: &str) -> Duration {
        self.entries.get(key).map(|e| e.delay).unwrap_or_default()
    }

    /// Record a retry of `key` (which failed at `event`) at `now`: the next delay grows.
    pub fn next(&mut self, key: &str, event: Instant, now: Instant) {
        let delay = match self.entries.get(key) {
            Some(e) if !self.expired(e, event) => (e.delay * 2).min(self.config.max),
            _ => self.config.initial,
        };
        self.entries.insert(
            key.to_string(),
            Entry {
                delay,
                last_update: now,
            },
        );
    }

    /// Forget `key` (its container was removed or its pod deleted).
    pub fn forget(&mut self, key: &str) {
        self.entries.remove(key);
    }

    /// Forget every key starting with `prefix`.
    pub fn forget_prefix(&mut self, prefix: &str) {
        self.entries.retain(|k, _| !k.starts_with(prefix));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_to_the_max_and_reset() {
        let t0 = Instant::now();
        let s = |n| Duration::from_secs(n);
        let mut b = Backoff::new(BackoffConfig::default());
        // first failure: retried at once
        assert_eq!(b.remaining("c", t0, t0), None);
        b.next("c", t0, t0);
        let mut now = t0;
        let mut seen = vec![];
        for _ in 0..7 {
            // the container crashes right after each restart
            let crash = now;
            let wait = b.remaining("c", crash, crash).expect("in back-off");
            seen.push(wait.as_secs());
            assert_eq!(b.remaining("c", crash, crash + wait - s(1)), Some(s(1)));
            now = crash + wait;
            assert_eq!(b.remaining("c", crash, now), None);
            b.next("c", crash, now);
        }
        assert_eq!(seen, [10, 20, 40, 80, 160, 300, 300]);
        // ran 11 minutes, then crashed: back to the start
        let crash = now + s(660);
        assert_eq!(b.remaining("c", crash, crash), None);
        b.next("c", crash, crash);
        assert_eq!(b.delay("c"), s(10));
        b.forget_prefix("c");
        assert_eq!(b.delay("c"), Duration::ZERO);
    }
}
