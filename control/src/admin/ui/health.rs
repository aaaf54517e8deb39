//! The health page: whether the control service's storage answers, the
//! audit chain's verification (the same walk as `GET /admin/audit/verify`),
//! and the filter's counters inside Envoy when `KEYBRAKE_ENVOY_ADMIN_URL`
//! points at Envoy's admin interface (`/stats?filter=keybrake`, fetched here,
//! server-side: the browser never talks to Envoy's admin port).

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;

use super::html::{self, esc, Nav};
use super::{Authed, Shared};

/// Custom metrics of a wasm filter are named `wasmcustom.<name>` in Envoy's stats.
const COUNTER_PREFIX: &str = "wasmcustom.keybrake.";
const ENVOY_TIMEOUT: Duration = Duration::from_secs(3);

/// What the page can say about the gateway's counters.
enum Gateway {
    NotConfigured,
    Unreachable(String),
    Counters(Vec<(String, u64)>),
}

/// The filter's counters from Envoy's `/stats` text (`name: value` lines).
fn parse_stats(text: &str) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = text
        .lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(name, _)| name.starts_with(COUNTER_PREFIX))
        .filter_map(|(name, value)| value.trim().parse().ok().map(|v| (name.to_owned(), v)))
        .collect();
    out.sort();
    out
}

/// Blocking (ureq): run it on the blocking pool.
fn fetch_stats(base: &str) -> Result<String, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(ENVOY_TIMEOUT)).build().into();
    let url = format!("{}/stats?filter=keybrake", base.trim_end_matches('/'));
    let mut response = agent.get(&url).call().map_err(|e| e.to_string())?;
    response.body_mut().read_to_string().map_err(|e| e.to_string())
}

async fn gateway(url: Option<String>) -> Gateway {
    let Some(base) = url else { return Gateway::NotConfigured };
    match tokio::task::spawn_blocking(move || fetch_stats(&base)).await {
        Ok(Ok(text)) => Gateway::Counters(parse_stats(&text)),
        Ok(Err(e)) => Gateway::Unreachable(e),
        Err(e) => Gateway::Unreachable(e.to_string()),
    }
}

fn badge(ok: bool) -> &'static str {
    if ok {
        "<span class=\"badge ok\">ok</span>"
    } else {
        "<span class=\"badge bad\">problem</span>"
    }
}

/// `GET /admin/ui/health`.
pub async fn page(State(c): Shared, auth: Authed) -> Response {
    let backend = c.app.store.backend_name();
    let storage = match c.app.store.read(|l| l.ping()).await {
        Ok(()) => format!("{} <span id=\"storage\" data-ok=\"true\">{backend} answers.</span>", badge(true)),
        Err(e) => {
            tracing::warn!(error = %e, "console health: storage unreachable");
            format!(
                "{} <span id=\"storage\" data-ok=\"false\">{backend} does not answer: {}</span>",
                badge(false),
                esc(&e.to_string())
            )
        }
    };
    let started = Instant::now();
    let chain = match crate::audit::verify(&c.app.store).await {
        Ok(r) => {
            let broken = match (r.broken_at_seq, &r.reason) {
                (Some(seq), reason) => format!(
                    "<dt>Broken at</dt><dd class=\"error\">row {seq}: {}</dd>",
                    esc(reason.as_deref().unwrap_or("hash mismatch"))
                ),
                _ => String::new(),
            };
            format!(
                "<p>{} <span id=\"chain\" data-ok=\"{ok}\">{verdict}</span></p><dl class=\"record\"><dt>Rows verified</dt>\
                 <dd id=\"chain-rows\">{rows}</dd><dt>Not linked yet</dt><dd>{pending}</dd><dt>Head hash</dt>\
                 <dd class=\"mono\">{head}</dd>{broken}<dt>Took</dt><dd>{ms} ms</dd></dl>",
                badge(r.ok),
                ok = r.ok,
                verdict = if r.ok { "The hash chain verifies from the first row." } else { "The hash chain is broken." },
                rows = r.rows,
                pending = r.pending,
                head = esc(&r.head_hash),
                ms = started.elapsed().as_millis(),
            )
        }
        Err(e) => format!(
            "<p>{} <span id=\"chain\" data-ok=\"false\">Could not verify: {}</span></p>",
            badge(false),
            esc(&e.to_string())
        ),
    };
    let counters = match gateway(c.envoy_admin_url.clone()).await {
        Gateway::NotConfigured => {
            "<p class=\"muted\" id=\"gateway\" data-state=\"not-configured\">Not configured: set \
             <code>KEYBRAKE_ENVOY_ADMIN_URL</code> (e.g. <code>http://127.0.0.1:9901</code>, Envoy's admin \
             interface) for the control service to show the filter's counters here.</p>"
                .to_owned()
        }
        Gateway::Unreachable(e) => format!(
            "<p id=\"gateway\" data-state=\"unreachable\">{} Envoy's admin interface did not answer: {}</p>",
            badge(false),
            esc(&e)
        ),
        Gateway::Counters(list) if list.is_empty() => "<p class=\"muted\" id=\"gateway\" data-state=\"empty\">Envoy \
             answered but has no <code>wasmcustom.keybrake.*</code> counters yet (no request went through the \
             filter).</p>"
            .to_owned(),
        Gateway::Counters(list) => {
            let rows: String = list
                .iter()
                .map(|(n, v)| {
                    format!(
                        "<tr data-counter=\"{n}\"><td class=\"mono\">{n}</td><td class=\"num\">{v}</td></tr>",
                        n = esc(n)
                    )
                })
                .collect();
            format!(
                "<table class=\"counters\" id=\"gateway\" data-state=\"ok\"><thead><tr><th>Counter (all of Envoy's \
                 workers)</th><th class=\"num\">Value</th></tr></thead><tbody>{rows}</tbody></table>"
            )
        }
    };
    let body = format!(
        "<h1>Health</h1><section><h2>Storage</h2><p>{storage}</p></section>\
         <section><h2>Audit chain</h2>{chain}</section>\
         <section><h2>Gateway counters</h2>{counters}</section>"
    );
    html::respond(StatusCode::OK, html::page("Health", Some(Nav::Health), Some(&auth.csrf), &body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_the_filters_counters() {
        let text = "http.keybrake.downstream_rq_total: 12\nwasmcustom.keybrake.requests_allowed: 3\n\
                    wasmcustom.keybrake.requests_denied.reason.spend_cap_exceeded: 1\ncluster.x.keybrake: 9\n\
                    wasmcustom.keybrake.histogram: P0(nan,nan)\n";
        assert_eq!(
            parse_stats(text),
            vec![
                ("wasmcustom.keybrake.requests_allowed".to_owned(), 3),
                ("wasmcustom.keybrake.requests_denied.reason.spend_cap_exceeded".to_owned(), 1)
            ]
        );
    }
}
