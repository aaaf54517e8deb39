//! The MCP server (rmcp's `ServerHandler`): `tools/list` offers the tools the
//! caller's vault key could use; `tools/call` checks the arguments, sends the
//! call through the gateway with the caller's key, and turns the answer into
//! a tool result: the Stripe object, or an error carrying Stripe's type,
//! code, message, param, the HTTP status and whether to retry.

use std::borrow::Cow;
use std::sync::Arc;

use keybrake_core::scope::{Method, Scope};
use keybrake_core::vendor::Vendor;
use rmcp::model::{
    CacheScope, CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation, ListToolsResult,
    MetaObject, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool, ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::{json, Map, Value};

use super::args::{self, ArgError};
use super::catalogue::{self, Money, ToolDef};
use super::gateway::{Answer, Gateway};
use crate::app::App;
use crate::secrets::Secret;

/// Who is calling, as the `/mcp` guard established it (see `mod.rs`): an
/// active vault key. The key itself is only ever sent to the gateway.
#[derive(Clone)]
pub struct Caller {
    pub key_id: String,
    pub vendor: Vendor,
    pub scopes: Vec<Scope>,
    pub credential: Arc<Secret>,
}

const INSTRUCTIONS: &str = "Keybrake's Stripe tools. Each call is made through the Keybrake gateway with your vault \
key: the key's scope decides which tools you see and may use, money-moving calls are priced and held to the key's \
daily USD cap and per-call limit, and every call is audited. A retried call with the same arguments returns the \
first result. A refusal is an error result with Stripe's type, code and message and a should_retry flag: when it \
is false (a cap, a scope, a bad argument), do not retry.";

#[derive(Clone)]
pub struct KeybrakeMcp {
    gateway: Gateway,
    app: Arc<App>,
}

impl KeybrakeMcp {
    pub fn new(gateway: Gateway, app: Arc<App>) -> KeybrakeMcp {
        KeybrakeMcp { gateway, app }
    }
}

fn caller(context: &RequestContext<RoleServer>) -> Result<Caller, ErrorData> {
    context
        .extensions
        .get::<axum::http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<Caller>())
        .cloned()
        .ok_or_else(|| ErrorData::internal_error("the request was not authenticated", None))
}

/// A tool as `tools/list` shows it.
pub fn tool(def: &ToolDef) -> Tool {
    let moves = matches!(def.money, Money::Priced(_) | Money::Unpriced(_));
    let annotations = ToolAnnotations::with_title(def.title)
        .read_only(def.method == Method::Get)
        .destructive(moves || def.method == Method::Delete)
        // A repeat with the same arguments is answered with the first result.
        .idempotent(true)
        .open_world(true);
    Tool::new(def.name, def.description(), Arc::new(def.input_schema())).with_title(def.title).annotate(annotations)
}

impl ServerHandler for KeybrakeMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("keybrake", env!("CARGO_PKG_VERSION")).with_title("Keybrake"))
            .with_instructions(INSTRUCTIONS)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let caller = caller(&context)?;
        let tools: Vec<Tool> =
            catalogue::TOOLS.iter().filter(|t| t.visible_to(caller.vendor, &caller.scopes)).map(tool).collect();
        // The list depends on the caller's key, and a revocation empties it: no sharing, no caching.
        Ok(ListToolsResult::with_all_items(tools).with_ttl_ms(0).with_cache_scope(CacheScope::Private))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let caller = caller(&context)?;
        let Some(def) = catalogue::find(&request.name) else {
            // The name is the agent's text, quoted back (and logged by rmcp): redacted like results.
            let name: String = request.name.chars().filter(|c| !c.is_control()).take(64).collect();
            let name = redact(&name, caller.credential.expose()).into_owned();
            return Err(ErrorData::invalid_params(format!("Unknown tool: {name}"), None));
        };
        let arguments = request.arguments.unwrap_or_default();
        let prepared = match args::prepare(def, &arguments) {
            Ok(p) => p,
            Err(e) => {
                self.app.metrics.mcp_calls.with_label_values(&[def.name, "invalid_arguments"]).inc();
                tracing::info!(tool = def.name, key_id = %caller.key_id, code = e.code, "mcp: arguments refused");
                return Ok(argument_error(&e, caller.credential.expose()).into());
            }
        };
        // POSTs carry an idempotency key: the caller's, else one derived from
        // (vault key, tool, arguments), so the gateway replays a retried call.
        let idempotency_key = (def.method == Method::Post).then(|| {
            prepared
                .header("Idempotency-Key")
                .map(str::to_owned)
                .unwrap_or_else(|| args::derived_idempotency_key(&caller.key_id, def.name, &prepared))
        });
        let answer = self.gateway.send(prepared, idempotency_key, caller.credential.clone(), def.name).await;
        let result = match answer {
            Ok(answer) => {
                let outcome = match (answer.status, answer.replayed) {
                    (200..=299, true) => "replayed",
                    (200..=299, false) => "ok",
                    _ => "refused",
                };
                self.app.metrics.mcp_calls.with_label_values(&[def.name, outcome]).inc();
                tracing::info!(tool = def.name, key_id = %caller.key_id, status = answer.status,
                               replayed = answer.replayed, "mcp: tool call");
                answered(answer, caller.credential.expose())
            }
            Err(why) => {
                self.app.metrics.mcp_calls.with_label_values(&[def.name, "gateway_unreachable"]).inc();
                tracing::warn!(tool = def.name, key_id = %caller.key_id, error = %why, "mcp: the gateway did not answer");
                unreachable(def, &why)
            }
        };
        Ok(result.into())
    }
}

/// A tool result from the gateway's answer: the Stripe object, or the error.
fn answered(answer: Answer, vault_key: &str) -> CallToolResult {
    let text = String::from_utf8_lossy(&answer.body);
    let text = redact(&text, vault_key);
    let parsed: Option<Value> = serde_json::from_str(&text).ok();
    let mut meta = Map::new();
    meta.insert("keybrake/status".into(), json!(answer.status));
    meta.insert("keybrake/idempotent_replayed".into(), json!(answer.replayed));
    if let Some(id) = &answer.request_id {
        meta.insert("keybrake/request_id".into(), json!(redact(id, vault_key)));
    }
    let mut result = if (200..300).contains(&answer.status) {
        let mut r = CallToolResult::success(vec![ContentBlock::text(text.clone().into_owned())]);
        r.structured_content = parsed.filter(Value::is_object);
        r
    } else {
        let detail = parsed.as_ref().and_then(|v| v.get("error")).and_then(Value::as_object);
        let field = |name: &str| detail.and_then(|d| d.get(name)).and_then(Value::as_str).map(str::to_owned);
        let code = field("code").unwrap_or_default();
        let should_retry = answer.should_retry.unwrap_or_else(|| retry_by_status(answer.status, &code));
        let mut error = Map::new();
        error.insert(
            "type".into(),
            json!(field("type").unwrap_or_else(|| if answer.status >= 500 {
                "api_error"
            } else {
                "invalid_request_error"
            }
            .into())),
        );
        error.insert("code".into(), json!(code));
        error.insert(
            "message".into(),
            json!(field("message").unwrap_or_else(|| format!("The gateway answered HTTP {}.", answer.status))),
        );
        if let Some(param) = field("param") {
            error.insert("param".into(), json!(param));
        }
        error_result(answer.status, Value::Object(error), should_retry)
    };
    result.meta = Some(MetaObject(meta));
    result
}

/// Whether to retry when the answer has no `Stripe-Should-Retry`: a
/// conflict (in flight) or an outage may pass; a cap or a bad request will not.
fn retry_by_status(status: u16, code: &str) -> bool {
    match status {
        409 => code != "idempotency_replay_unavailable",
        429 => code == "rate_limit",
        500..=599 => true,
        _ => false,
    }
}

fn error_result(status: u16, error: Value, should_retry: bool) -> CallToolResult {
    let body = json!({"error": error, "status": status, "should_retry": should_retry});
    let mut r = CallToolResult::error(vec![ContentBlock::text(body.to_string())]);
    r.structured_content = Some(body);
    r
}

/// An argument refused before anything was sent. Names of arguments are the
/// agent's text, quoted back: redacted like everything else.
fn argument_error(e: &ArgError, vault_key: &str) -> CallToolResult {
    let error = json!({
        "type": "invalid_request_error",
        "code": e.code,
        "message": redact(&format!("{} Nothing was sent to Stripe.", e.message), vault_key),
        "param": redact(&e.param, vault_key),
    });
    error_result(400, error, false)
}

fn unreachable(def: &ToolDef, why: &str) -> CallToolResult {
    let message = if def.method == Method::Post {
        format!(
            "Keybrake's gateway did not answer ({why}). The call may or may not have been made: retry it with the \
             same arguments, which returns the first result if it was."
        )
    } else {
        format!("Keybrake's gateway did not answer ({why}); retry later.")
    };
    let error = json!({"type": "api_error", "code": "keybrake_gateway_unreachable", "message": message});
    error_result(502, error, true)
}

/// `text` without the caller's vault key or anything shaped like a Stripe
/// secret or restricted key (the gateway never returns one; this makes sure).
pub fn redact<'a>(text: &'a str, vault_key: &str) -> Cow<'a, str> {
    const SECRET_PREFIXES: [&str; 4] = ["sk_live_", "sk_test_", "rk_live_", "rk_test_"];
    let has_secret =
        (!vault_key.is_empty() && text.contains(vault_key)) || SECRET_PREFIXES.iter().any(|p| text.contains(p));
    if !has_secret {
        return Cow::Borrowed(text);
    }
    let mut out = if vault_key.is_empty() { text.to_owned() } else { text.replace(vault_key, "[redacted]") };
    for prefix in SECRET_PREFIXES {
        while let Some(start) = out.find(prefix) {
            let end =
                out[start..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).map_or(out.len(), |n| start + n);
            out.replace_range(start..end, "[redacted]");
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str, retry: Option<bool>) -> Answer {
        Answer { status, body: body.as_bytes().to_vec(), should_retry: retry, replayed: false, request_id: None }
    }

    #[test]
    fn a_refusal_carries_stripes_error_and_whether_to_retry() {
        let cap =
            r#"{"error":{"type":"invalid_request_error","code":"spend_cap_exceeded","message":"Spend cap exceeded"}}"#;
        let r = answered(answer(429, cap, Some(false)), "vk_x");
        assert_eq!(r.is_error, Some(true));
        let s = r.structured_content.unwrap();
        assert_eq!(s["error"]["code"], "spend_cap_exceeded");
        assert_eq!(s["error"]["type"], "invalid_request_error");
        assert_eq!((s["status"].as_u64(), s["should_retry"].as_bool()), (Some(429), Some(false)));
        let outage = r#"{"error":{"type":"api_error","code":"keybrake_unavailable","message":"down"}}"#;
        let s = answered(answer(503, outage, None), "vk_x").structured_content.unwrap();
        assert_eq!(s["should_retry"], true);
        let s = answered(answer(502, "<html>bad gateway</html>", None), "vk_x").structured_content.unwrap();
        assert_eq!((s["error"]["type"].as_str(), s["should_retry"].as_bool()), (Some("api_error"), Some(true)));
        let ok = answered(answer(200, r#"{"id":"ch_1","object":"charge","amount":100}"#, None), "vk_x");
        assert_eq!(ok.is_error, Some(false));
        assert_eq!(ok.structured_content.unwrap()["id"], "ch_1");
    }

    #[test]
    fn secrets_are_redacted() {
        let vk = "vk_abcDEF123";
        let text = format!(r#"{{"message":"key {vk} and sk_live_51Habc and rk_test_x9; ok sku_1"}}"#);
        let out = redact(&text, vk);
        assert!(!out.contains(vk) && !out.contains("sk_live_") && !out.contains("rk_test_"), "{out}");
        assert!(out.contains("sku_1") && serde_json::from_str::<Value>(&out).is_ok());
        assert!(matches!(redact(r#"{"id":"ch_1"}"#, vk), Cow::Borrowed(_)));
    }
}
