//! The MCP endpoint for agents: `/mcp` on the control service's HTTP server
//! (the gateway routes it here), streamable HTTP per the MCP specification,
//! served by the official Rust SDK (rmcp), statelessly (every POST stands
//! alone, so any replica can answer it and nothing is kept per session).
//!
//! Every request is authenticated here, before the MCP layer: a vault key
//! (`Authorization: Bearer vk_...`, or Basic with the key as user name) that
//! exists and is active, else `401` with Stripe's error shape and nothing
//! else. A POST's body must then be one JSON-RPC message, else a JSON-RPC
//! error. Tool calls go to the gateway's own vendor route with the caller's
//! key (`gateway.rs`), so every rule applies there, once.
//!
//! rmcp's `Host` check (DNS-rebinding protection for servers that trust
//! whoever reaches them on loopback) is off unless `--mcp-allowed-hosts`
//! lists names: the gateway is reached by cluster names, and every request
//! must carry a vault key, which a page rebound in a browser does not have.

pub mod args;
pub mod catalogue;
pub mod gateway;
pub mod server;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine;
use keybrake_core::stripe_error::{ErrorType, StripeError};
use keybrake_core::vault_key::VaultKey;
use rmcp::model::{ClientJsonRpcMessage, ClientRequest};
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use serde_json::{json, Value};

use crate::app::App;
use crate::denial::Denial;
use crate::model::KeyState;
use crate::secrets::Secret;
use server::{Caller, KeybrakeMcp};

/// Largest MCP request body (a tool call's arguments are small).
const MAX_BODY: usize = 1024 * 1024;
/// Largest body read before refusing it (bigger ones close the connection).
const MAX_READ: usize = 8 * 1024 * 1024;

/// The MCP endpoint's configuration (`keybrake serve --gateway-url`, `--mcp-allowed-hosts`).
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Where tool calls go: the gateway's base URL (`http://127.0.0.1:10000`).
    pub gateway_url: Option<String>,
    /// `Host` values accepted on `/mcp`; empty accepts any (see the module's doc).
    pub allowed_hosts: Vec<String>,
}

/// `/mcp`: the guard, then rmcp's streamable HTTP service.
pub fn router<S: Clone + Send + Sync + 'static>(app: Arc<App>) -> Router<S> {
    let Some(base) = app.mcp.gateway_url.clone().filter(|u| !u.trim().is_empty()) else {
        return Router::new().route("/mcp", axum::routing::any(not_configured));
    };
    let handler = KeybrakeMcp::new(gateway::Gateway::new(&base), app.clone());
    let config = StreamableHttpServerConfig::default()
        // Stateless: no session to find again on the same replica, no state per agent.
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_max_request_body_bytes(MAX_BODY);
    let config = if app.mcp.allowed_hosts.is_empty() {
        config.disable_allowed_hosts()
    } else {
        config.with_allowed_hosts(app.mcp.allowed_hosts.clone())
    };
    let service =
        StreamableHttpService::new(move || Ok(handler.clone()), Arc::new(NeverSessionManager::default()), config);
    Router::new().route_service("/mcp", service).layer(middleware::from_fn_with_state(app, guard))
}

async fn not_configured(req: Request) -> Response {
    let e = StripeError::new(
        503,
        ErrorType::ApiError,
        "keybrake_mcp_not_configured",
        "The MCP endpoint is not configured: start the control service with --gateway-url (KEYBRAKE_GATEWAY_URL).",
    );
    crate::drain::refuse_with(stripe_response(&e), req.into_body()).await
}

fn stripe_response(e: &StripeError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, [("content-type", "application/json")], e.body()).into_response();
    for (name, value) in e.headers() {
        if let Ok(v) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, v);
        }
    }
    response
}

/// A refusal of the caller's credential: always `401`, with Stripe's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Unauthorized {
    code: String,
    message: String,
}

fn unauthorized(code: &str, message: &str) -> Unauthorized {
    Unauthorized { code: code.into(), message: message.into() }
}

impl IntoResponse for Unauthorized {
    fn into_response(self) -> Response {
        let e = StripeError::new(401, ErrorType::InvalidRequestError, &self.code, self.message);
        let mut response = stripe_response(&e);
        response.headers_mut().insert("www-authenticate", HeaderValue::from_static("Bearer realm=\"keybrake\""));
        response
    }
}

/// The vault key of a request, as the gateway reads it: one `Authorization`
/// header, `Bearer vk_...` or Basic with the key as user name and no password.
fn credential(headers: &HeaderMap) -> Result<VaultKey, Unauthorized> {
    let mut values = headers.get_all("authorization").iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(if headers.contains_key("authorization") {
            unauthorized("credentials_ambiguous", "Send exactly one Authorization header holding one vault key.")
        } else {
            unauthorized(
                "vault_key_missing",
                "No vault key provided. Send it as 'Authorization: Bearer vk_...' (or as the Basic auth user name).",
            )
        });
    };
    let value = value.to_str().unwrap_or_default().trim();
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let rest = rest.trim();
    let text = if scheme.eq_ignore_ascii_case("bearer") {
        rest.to_owned()
    } else if scheme.eq_ignore_ascii_case("basic") {
        let decoded =
            base64::engine::general_purpose::STANDARD.decode(rest).ok().and_then(|d| String::from_utf8(d).ok());
        let Some(decoded) = decoded else {
            return Err(unauthorized("authorization_scheme_unsupported", "Malformed Basic credentials."));
        };
        let (user, password) = decoded.split_once(':').unwrap_or((decoded.as_str(), ""));
        if !password.is_empty() {
            return Err(unauthorized(
                "credentials_ambiguous",
                "Send the vault key as the Basic auth user name, with an empty password.",
            ));
        }
        user.to_owned()
    } else {
        return Err(unauthorized(
            "authorization_scheme_unsupported",
            "Unsupported Authorization scheme: use Bearer or Basic with the vault key.",
        ));
    };
    if text.is_empty() {
        return Err(unauthorized("vault_key_missing", "No vault key provided."));
    }
    VaultKey::parse(&text)
        .map_err(|why| unauthorized("vault_key_malformed", &format!("Invalid vault key provided: {why}.")))
}

/// Authenticates every request on `/mcp` (each one: a key revoked mid-session
/// is refused on its next request), then checks a POST's JSON-RPC message.
async fn guard(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let vault_key = match credential(req.headers()) {
        Ok(k) => k,
        Err(refusal) => {
            app.metrics.error("mcp_auth_failed");
            return crate::drain::refuse_with(refusal.into_response(), req.into_body()).await;
        }
    };
    let hash = vault_key.hash();
    // Read from storage, not a cache: a revocation or suspension made by any replica counts at once.
    let key = match app.store.read(move |l| l.key_by_hash(&hash)).await {
        Ok(k) => k,
        Err(e) => {
            tracing::error!(error = %e, "mcp: key lookup failed");
            let refusal = stripe_response(&Denial::StorageUnavailable.to_stripe_error());
            return crate::drain::refuse_with(refusal, req.into_body()).await;
        }
    };
    let now = app.clock.now_us() / 1_000_000;
    let denial = match &key {
        None => Some(Denial::KeyUnknown),
        Some(k) => match k.state(now) {
            KeyState::Active => None,
            KeyState::Revoked => Some(Denial::KeyRevoked),
            KeyState::Expired => Some(Denial::KeyExpired),
            KeyState::Suspended => Some(Denial::KeySuspended),
        },
    };
    let (Some(key), None) = (key, &denial) else {
        let d = denial.unwrap_or(Denial::KeyUnknown).to_stripe_error();
        app.metrics.error("mcp_auth_failed");
        return crate::drain::refuse_with(unauthorized(&d.code, &d.message).into_response(), req.into_body()).await;
    };
    let caller = Caller {
        key_id: key.id.clone(),
        vendor: key.vendor,
        scopes: key.scopes.clone(),
        credential: Arc::new(Secret::new(vault_key.expose().to_owned())),
    };
    let (mut parts, body) = req.into_parts();
    parts.extensions.insert(caller);
    let body = if parts.method == Method::POST {
        // Read up to MAX_READ, so that a body over MAX_BODY is refused with the
        // connection still usable (the proxy in front may still be writing it);
        // past MAX_READ the connection is closed instead.
        let read = axum::body::to_bytes(body, MAX_READ).await;
        let too_large = || {
            let message = "Invalid Request: the body is too large (1 MiB at most) or was cut off.";
            let mut r = jsonrpc_error(Value::Null, -32600, message).into_response();
            *r.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
            r
        };
        let bytes = match read {
            Ok(b) if b.len() <= MAX_BODY => b,
            Ok(_) => return too_large(),
            Err(_) => {
                let mut r = too_large();
                r.headers_mut().insert(axum::http::header::CONNECTION, HeaderValue::from_static("close"));
                return r;
            }
        };
        if let Err(refusal) = check_message(&bytes) {
            return refusal.into_response();
        }
        Body::from(bytes)
    } else {
        body
    };
    next.run(Request::from_parts(parts, body)).await
}

/// A JSON-RPC error answering a message the MCP layer cannot read (HTTP 400).
#[derive(Debug, Clone, PartialEq)]
pub struct JsonRpcRefusal {
    pub id: Value,
    pub code: i64,
    pub message: String,
}

fn jsonrpc_error(id: Value, code: i64, message: &str) -> JsonRpcRefusal {
    JsonRpcRefusal { id, code, message: message.into() }
}

impl IntoResponse for JsonRpcRefusal {
    fn into_response(self) -> Response {
        let body = json!({"jsonrpc": "2.0", "id": self.id, "error": {"code": self.code, "message": self.message}});
        (StatusCode::BAD_REQUEST, [("content-type", "application/json")], body.to_string()).into_response()
    }
}

/// A POST body must be one JSON-RPC 2.0 message the MCP layer can read; else
/// a JSON-RPC error (parse error, invalid request, invalid params) answers it
/// and nothing else happens.
pub fn check_message(bytes: &[u8]) -> Result<(), JsonRpcRefusal> {
    let Ok(value) = serde_json::from_slice::<Value>(bytes) else {
        return Err(jsonrpc_error(Value::Null, -32700, "Parse error: the body is not JSON."));
    };
    let Some(object) = value.as_object() else {
        let why = if value.is_array() {
            "Invalid Request: batches are not supported; send one message per request."
        } else {
            "Invalid Request: a JSON-RPC message is an object."
        };
        return Err(jsonrpc_error(Value::Null, -32600, why));
    };
    let id = match object.get("id") {
        Some(id @ (Value::String(_) | Value::Number(_))) => id.clone(),
        _ => Value::Null,
    };
    if object.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(jsonrpc_error(id, -32600, "Invalid Request: \"jsonrpc\" must be \"2.0\"."));
    }
    let method = object.get("method").and_then(Value::as_str).map(str::to_owned);
    let invalid_params = |m: &str| {
        let m: String = m.chars().filter(|c| c.is_ascii_graphic()).take(64).collect();
        jsonrpc_error(id.clone(), -32602, &format!("Invalid params for {m}."))
    };
    match serde_json::from_value::<ClientJsonRpcMessage>(value) {
        // rmcp reads a standard method whose params do not fit as a custom
        // request (answered "method not found"): say what is wrong instead.
        Ok(ClientJsonRpcMessage::Request(r))
            if matches!(r.request, ClientRequest::CustomRequest(_))
                && STANDARD_METHODS.contains(&r.request.method()) =>
        {
            Err(invalid_params(r.request.method()))
        }
        Ok(_) => Ok(()),
        Err(_) => Err(match method {
            Some(m) => invalid_params(&m),
            None => jsonrpc_error(id, -32600, "Invalid Request: not a JSON-RPC request, notification or response."),
        }),
    }
}

/// The client requests of the MCP specification.
const STANDARD_METHODS: &[&str] = &[
    "initialize",
    "ping",
    "server/discover",
    "tools/list",
    "tools/call",
    "resources/list",
    "resources/read",
    "resources/templates/list",
    "resources/subscribe",
    "resources/unsubscribe",
    "prompts/list",
    "prompts/get",
    "completion/complete",
    "logging/setLevel",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn code(body: &str) -> Option<i64> {
        check_message(body.as_bytes()).err().map(|r| r.code)
    }

    #[test]
    fn malformed_messages_get_json_rpc_errors() {
        assert_eq!(code("{not json"), Some(-32700));
        assert_eq!(code(""), Some(-32700));
        assert_eq!(code("[]"), Some(-32600));
        assert_eq!(code("42"), Some(-32600));
        assert_eq!(code(r#"{"jsonrpc":"1.0","id":1,"method":"tools/list"}"#), Some(-32600));
        assert_eq!(code(r#"{"jsonrpc":"2.0","id":1}"#), Some(-32600));
        assert_eq!(code(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":5}}"#), Some(-32602));
        assert_eq!(
            code(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":[1]}}"#),
            Some(-32602)
        );
        assert_eq!(code(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#), Some(-32602));
        assert_eq!(code(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#), None);
        // Unknown methods reach the MCP layer, which answers "method not found".
        assert_eq!(code(r#"{"jsonrpc":"2.0","id":1,"method":"stripe/charge","params":{}}"#), None);
        assert_eq!(code(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#), None);
    }

    #[test]
    fn credentials_are_read_as_the_gateway_reads_them() {
        let key = VaultKey::from_entropy([7; 32]);
        let refused = |headers: &HeaderMap| credential(headers).err().map(|r| r.into_response().status());
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert("authorization", HeaderValue::from_str(v).unwrap());
            m
        };
        assert_eq!(credential(&h(&format!("Bearer {}", key.expose()))).unwrap().hash(), key.hash());
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{}:", key.expose()));
        assert_eq!(credential(&h(&format!("Basic {basic}"))).unwrap().hash(), key.hash());
        for bad in ["Bearer sk_test_123", "Bearer ", "Digest x", "Basic !!!"] {
            assert_eq!(refused(&h(bad)), Some(StatusCode::UNAUTHORIZED), "{bad}");
        }
        assert_eq!(refused(&HeaderMap::new()), Some(StatusCode::UNAUTHORIZED));
        let with_password = base64::engine::general_purpose::STANDARD.encode(format!("{}:pw", key.expose()));
        assert_eq!(refused(&h(&format!("Basic {with_password}"))), Some(StatusCode::UNAUTHORIZED));
    }
}
