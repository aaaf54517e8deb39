//! The control service's Prometheus metrics, served at `/metrics`. Labels are
//! bounded sets (decisions, reason codes, store operations): no key ids, no
//! labels, and never a secret.

use std::time::Instant;

use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry, TextEncoder};

pub struct Metrics {
    registry: Registry,
    /// Authorize outcomes by decision (`allowed`, `denied`, `replayed`) and reason code.
    pub decisions: IntCounterVec,
    /// Reservations by result (`reserved`, `cap_exceeded`).
    pub reservations: IntCounterVec,
    /// Settlements by verdict (`committed`, `refused`, `not_executed`, `uncertain`).
    pub settlements: IntCounterVec,
    /// Spend committed by settlements, in micro-dollars.
    pub spend_committed_micros: IntCounter,
    /// Calls whose answer moved more money than was priced (see `reconcile.rs`).
    pub price_mismatches: IntCounter,
    /// Keys suspended for such a call.
    pub keys_suspended: IntCounter,
    /// Storage latency by operation (`read`, `write`).
    pub store_seconds: HistogramVec,
    /// Failures by kind (`storage`, `bad_request`).
    pub errors: IntCounterVec,
    /// MCP tool calls by tool (the catalogue's names) and outcome (`ok`,
    /// `replayed`, `refused`, `invalid_arguments`, `gateway_unreachable`).
    pub mcp_calls: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

// Metric definitions are constants: an invalid one is a programming error,
// caught by `renders_the_exposition_format` before it can ship.
#[allow(clippy::expect_used)]
fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("a valid metric definition");
    let _ = registry.register(Box::new(c.clone()));
    c
}

#[allow(clippy::expect_used)] // constant definitions, see `counter`
fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("a valid metric definition");
    let _ = registry.register(Box::new(c.clone()));
    c
}

impl Metrics {
    #[allow(clippy::expect_used)] // constant definitions, see `counter_vec`
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let decisions = counter_vec(
            &registry,
            "keybrake_decisions_total",
            "Authorize decisions by decision and reason",
            &["decision", "reason"],
        );
        let reservations =
            counter_vec(&registry, "keybrake_reservations_total", "Spend reservations by result", &["result"]);
        let settlements = counter_vec(&registry, "keybrake_settlements_total", "Settlements by verdict", &["verdict"]);
        let errors = counter_vec(&registry, "keybrake_errors_total", "Failures by kind", &["kind"]);
        let mcp_calls = counter_vec(
            &registry,
            "keybrake_mcp_tool_calls_total",
            "MCP tool calls by tool and outcome",
            &["tool", "outcome"],
        );
        let spend_committed_micros =
            counter(&registry, "keybrake_spend_committed_usd_micros_total", "Spend committed, in micro-dollars");
        let price_mismatches = counter(
            &registry,
            "keybrake_price_mismatches_total",
            "Calls whose answer moved more money than the gateway priced",
        );
        let keys_suspended =
            counter(&registry, "keybrake_keys_suspended_total", "Vault keys suspended for a price mismatch");
        let store_seconds = HistogramVec::new(
            HistogramOpts::new("keybrake_store_seconds", "Storage operation latency")
                .buckets(vec![0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0]),
            &["op"],
        )
        .expect("a valid metric definition");
        let _ = registry.register(Box::new(store_seconds.clone()));
        Metrics {
            registry,
            decisions,
            reservations,
            settlements,
            spend_committed_micros,
            price_mismatches,
            keys_suspended,
            store_seconds,
            errors,
            mcp_calls,
        }
    }

    pub fn decision(&self, decision: &str, reason: &str) {
        self.decisions.with_label_values(&[decision, reason]).inc();
    }

    pub fn error(&self, kind: &str) {
        self.errors.with_label_values(&[kind]).inc();
    }

    /// Starts timing a storage operation; the latency is recorded when the guard drops.
    pub fn time_store(&self, op: &'static str) -> StoreTimer<'_> {
        StoreTimer { metrics: self, op, started: Instant::now() }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

pub struct StoreTimer<'m> {
    metrics: &'m Metrics,
    op: &'static str,
    started: Instant,
}

impl Drop for StoreTimer<'_> {
    fn drop(&mut self) {
        self.metrics.store_seconds.with_label_values(&[self.op]).observe(self.started.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_exposition_format() {
        let m = Metrics::new();
        m.decision("denied", "spend_cap_exceeded");
        m.spend_committed_micros.inc_by(29_990_000);
        drop(m.time_store("write"));
        let text = m.render();
        assert!(text.contains(r#"keybrake_decisions_total{decision="denied",reason="spend_cap_exceeded"} 1"#));
        assert!(text.contains("keybrake_spend_committed_usd_micros_total 29990000"));
        assert!(text.contains(r#"keybrake_store_seconds_count{op="write"} 1"#));
    }
}
