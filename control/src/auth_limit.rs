//! Limits repeated failed authentication on the admin API: a source that
//! fails too often within a window is refused (429) until the window ends,
//! even with the right key, so guessing the admin key or a vault key is slow.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures allowed per source within [`WINDOW`].
pub const MAX_FAILURES: u32 = 10;
pub const WINDOW: Duration = Duration::from_secs(60);
/// Sources remembered at most (the oldest windows are forgotten first).
const MAX_SOURCES: usize = 10_000;

#[derive(Default)]
pub struct FailureLimiter {
    sources: Mutex<HashMap<String, (u32, Instant)>>,
}

impl FailureLimiter {
    /// Whether `source` has used up its failures.
    pub fn is_blocked(&self, source: &str, now: Instant) -> bool {
        let Ok(map) = self.sources.lock() else { return true };
        map.get(source).is_some_and(|(n, since)| *n >= MAX_FAILURES && now.duration_since(*since) < WINDOW)
    }

    pub fn record_failure(&self, source: &str, now: Instant) {
        let Ok(mut map) = self.sources.lock() else { return };
        if map.len() >= MAX_SOURCES {
            map.retain(|_, (_, since)| now.duration_since(*since) < WINDOW);
        }
        let entry = map.entry(source.to_owned()).or_insert((0, now));
        if now.duration_since(entry.1) >= WINDOW {
            *entry = (0, now);
        }
        entry.0 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_too_many_failures_until_the_window_ends() {
        let l = FailureLimiter::default();
        let t0 = Instant::now();
        for _ in 0..MAX_FAILURES {
            assert!(!l.is_blocked("1.2.3.4", t0));
            l.record_failure("1.2.3.4", t0);
        }
        assert!(l.is_blocked("1.2.3.4", t0));
        assert!(!l.is_blocked("5.6.7.8", t0), "per source");
        assert!(!l.is_blocked("1.2.3.4", t0 + WINDOW + Duration::from_secs(1)));
    }
}
