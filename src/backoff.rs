//! Exponential backoff for the outbox: after a failed delivery the next
//! attempt waits 100 ms, then 200 ms, ... up to 5 s, so a struggling control
//! service is not hammered by every worker at once.

const FIRST_MS: u64 = 100;
const MAX_MS: u64 = 5_000;

#[derive(Debug, Default, Clone)]
pub struct Backoff {
    /// Current wait; 0 when the last attempt succeeded.
    wait_ms: u64,
    not_before_ms: u64,
}

impl Backoff {
    pub fn ready(&self, now_ms: u64) -> bool {
        now_ms >= self.not_before_ms
    }

    /// Records a failure; returns true the first time in a row (worth a log line).
    pub fn failed(&mut self, now_ms: u64) -> bool {
        let first = self.wait_ms == 0;
        self.wait_ms = if first { FIRST_MS } else { (self.wait_ms * 2).min(MAX_MS) };
        self.not_before_ms = now_ms + self.wait_ms;
        first
    }

    pub fn succeeded(&mut self) {
        *self = Backoff::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::default();
        assert!(b.ready(0));
        assert!(b.failed(1_000));
        assert!(!b.ready(1_050) && b.ready(1_100));
        assert!(!b.failed(1_100));
        assert!(!b.ready(1_250) && b.ready(1_300));
        for _ in 0..20 {
            b.failed(10_000);
        }
        assert!(!b.ready(14_999) && b.ready(15_000));
        b.succeeded();
        assert!(b.ready(0));
    }
}
