//! Time, behind a trait so tests can move it (caps reset per UTC day).

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

pub trait Clock: Send + Sync {
    /// Unix time in microseconds.
    fn now_us(&self) -> i64;

    /// A monotonic instant, for how long ago something happened (the
    /// revocation relay's freshness). The process's own by default; the
    /// deterministic simulator (`sim/`) moves it with its simulated time.
    fn monotonic(&self) -> Instant {
        Instant::now()
    }
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now_us(&self) -> i64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
    }
}

/// A clock that only moves when told to.
pub struct ManualClock(pub AtomicI64);

impl Clock for ManualClock {
    fn now_us(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// UTC day number (days since 1970-01-01) of a time in microseconds.
pub fn day_of(us: i64) -> i64 {
    us.div_euclid(86_400_000_000)
}

/// RFC 3339 text of unix seconds.
pub fn rfc3339(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// RFC 3339 text (microseconds) of unix microseconds.
pub fn rfc3339_us(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_default()
}

/// Parses RFC 3339 text into unix microseconds.
pub fn parse_rfc3339_us(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text).ok().map(|t| t.timestamp_micros())
}

/// `YYYY-MM-DD` of a day number.
pub fn day_text(day: i64) -> String {
    chrono::DateTime::from_timestamp(day * 86_400, 0).map(|t| t.format("%Y-%m-%d").to_string()).unwrap_or_default()
}
