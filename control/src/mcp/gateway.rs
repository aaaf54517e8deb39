//! The MCP server's calls to the gateway: each tool call is one HTTP request
//! to the gateway's own vendor route (`{gateway}/v1/...`, or `/admin/audit`
//! for the audit tool) with the caller's vault key, so the filter and the
//! control service decide it exactly as they decide any client's call.
//! Blocking (ureq, rustls, no proxy, no redirects), run on the blocking pool,
//! with a timeout.

use std::sync::Arc;
use std::time::Duration;

use keybrake_core::scope::Method;

use super::args::Request;
use crate::secrets::Secret;

/// How long one call may take: more than the gateway's Stripe route allows
/// (80 s), less than the MCP route in front of us (120 s).
const TIMEOUT: Duration = Duration::from_secs(100);
/// Largest answer read (a page of 100 Stripe objects is well below).
const MAX_ANSWER: u64 = 8 * 1024 * 1024;
/// The header the filter records in the audit row as the MCP tool.
pub const MCP_TOOL_HEADER: &str = "Keybrake-Mcp-Tool";

/// The gateway's answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
    /// `Stripe-Should-Retry`, when the answer has it.
    pub should_retry: Option<bool>,
    /// `Idempotent-Replayed: true`: the answer of an earlier identical call.
    pub replayed: bool,
    pub request_id: Option<String>,
}

#[derive(Clone)]
pub struct Gateway {
    base: String,
    agent: ureq::Agent,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("base", &self.base).finish()
    }
}

impl Gateway {
    /// A client of the gateway at `base` (`http://127.0.0.1:10000`).
    pub fn new(base: &str) -> Gateway {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(TIMEOUT))
            .http_status_as_error(false)
            .max_redirects(0)
            .proxy(None)
            .user_agent("keybrake-mcp/0.1")
            .build()
            .into();
        Gateway { base: base.trim_end_matches('/').to_owned(), agent }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends one call with the caller's vault key. `Err` is a transport
    /// failure (nothing answered): the call may or may not have reached the
    /// gateway, and the message never carries the key.
    pub async fn send(
        &self,
        request: Request,
        idempotency_key: Option<String>,
        credential: Arc<Secret>,
        tool: &'static str,
    ) -> Result<Answer, String> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.send_blocking(&request, idempotency_key, &credential, tool))
            .await
            .map_err(|e| format!("the call's task failed: {e}"))?
    }

    fn send_blocking(
        &self,
        request: &Request,
        idempotency_key: Option<String>,
        credential: &Secret,
        tool: &str,
    ) -> Result<Answer, String> {
        let url = format!("{}{}", self.base, request.target());
        let authorization = format!("Bearer {}", credential.expose());
        let mut headers: Vec<(&str, String)> = vec![
            ("Authorization", authorization),
            (MCP_TOOL_HEADER, tool.to_owned()),
            ("Accept", "application/json".into()),
        ];
        for (name, value) in &request.headers {
            if !name.eq_ignore_ascii_case("idempotency-key") {
                headers.push((name, value.clone()));
            }
        }
        if let Some(key) = idempotency_key {
            headers.push(("Idempotency-Key", key));
        }
        let result = match request.method {
            Method::Post => {
                let mut b = self.agent.post(&url);
                for (n, v) in &headers {
                    b = b.header(*n, v);
                }
                b.header("Content-Type", "application/x-www-form-urlencoded").send(request.params.as_bytes())
            }
            Method::Get | Method::Delete => {
                let mut b = if request.method == Method::Get { self.agent.get(&url) } else { self.agent.delete(&url) };
                for (n, v) in &headers {
                    b = b.header(*n, v);
                }
                b.call()
            }
        };
        // ureq's errors name the URL and the failure, never a header.
        let mut response = result.map_err(|e| describe(&e))?;
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let should_retry = header("stripe-should-retry").and_then(|v| match v.trim() {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        });
        let replayed = header("idempotent-replayed").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        let request_id = header("request-id");
        let status = response.status().as_u16();
        let body = response.body_mut().with_config().limit(MAX_ANSWER).read_to_vec().map_err(|e| describe(&e))?;
        Ok(Answer { status, body, should_retry, replayed, request_id })
    }
}

/// A transport failure in words, without anything of the request but its kind.
fn describe(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Timeout(_) => "the gateway did not answer in time".into(),
        ureq::Error::Io(io) => format!("the gateway could not be reached ({})", io.kind()),
        ureq::Error::ConnectionFailed => "the gateway could not be reached (connection failed)".into(),
        ureq::Error::HostNotFound => "the gateway's host name does not resolve".into(),
        ureq::Error::BodyExceedsLimit(_) => "the gateway's answer is too large".into(),
        _ => "the call to the gateway failed".into(),
    }
}
