//! A tool call's arguments, checked against the tool's declared fields and
//! encoded as the Stripe request the gateway receives: path segments filled,
//! parameters in Stripe's bracket syntax (`metadata[k]=v`,
//! `items[0][price]=...`) as a form body (POST) or query (GET, DELETE),
//! booleans `true`/`false`, and the headers some arguments become. Anything
//! undeclared or mistyped is refused here, before anything is sent. Pure.

use keybrake_core::scope::Method;
use serde_json::{Map, Number, Value};
use sha2::{Digest, Sha256};

use super::catalogue::{Field, Place, ToolDef, Ty, MAX_ID, MAX_TEXT};

/// Longest `Idempotency-Key` (Stripe's limit).
const MAX_IDEMPOTENCY_KEY: usize = 255;
const MAX_METADATA_KEYS: usize = 50;
const MAX_METADATA_KEY: usize = 40;
const MAX_METADATA_VALUE: usize = 500;

/// An argument refused before anything was sent, as Stripe words it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgError {
    /// Stripe's code: `parameter_unknown`, `parameter_missing`, `parameter_invalid_integer`, `parameter_invalid`.
    pub code: &'static str,
    /// The argument at fault (`metadata[k]`, `line_items[0][price]`).
    pub param: String,
    pub message: String,
}

fn invalid(param: &str, message: String) -> ArgError {
    ArgError { code: "parameter_invalid", param: param.to_owned(), message }
}

/// The request a tool call becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// The path with its `{name}` segments filled in.
    pub path: String,
    /// The encoded parameters: the form body of a POST, the query of a GET or DELETE.
    pub params: String,
    /// Headers from arguments (`Stripe-Account`, the caller's `Idempotency-Key`).
    pub headers: Vec<(&'static str, String)>,
}

impl Request {
    /// The header of this name, if an argument set it.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// What identifies the operation, without the caller's own idempotency
    /// key: method, filled path, encoded parameters, account.
    pub fn canonical(&self) -> String {
        format!("{} {}\n{}\n{}", self.method, self.path, self.params, self.header("Stripe-Account").unwrap_or(""))
    }

    /// The target: the path, and the query of a GET or DELETE.
    pub fn target(&self) -> String {
        if self.method == Method::Post || self.params.is_empty() {
            self.path.clone()
        } else {
            format!("{}?{}", self.path, self.params)
        }
    }
}

/// The `Idempotency-Key` sent for a tool call without one of the caller's:
/// the same vault key, tool and arguments give the same key, so a retried
/// call is replayed by the gateway instead of done twice.
pub fn derived_idempotency_key(key_id: &str, tool: &str, request: &Request) -> String {
    let mut h = Sha256::new();
    for part in [key_id, tool, &request.canonical()] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    let digest = h.finalize();
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("mcp-{hex}")
}

/// Checks the arguments against the tool's fields and encodes the request.
pub fn prepare(tool: &ToolDef, args: &Map<String, Value>) -> Result<Request, ArgError> {
    let fields = tool.fields();
    // Undeclared arguments first: nothing the tool does not take is ever sent.
    let mut unknown: Vec<&String> = args.keys().filter(|k| !fields.iter().any(|f| f.name == k.as_str())).collect();
    unknown.sort();
    if let Some(name) = unknown.first() {
        let takes: Vec<&str> = fields.iter().map(|f| f.name).collect();
        return Err(ArgError {
            code: "parameter_unknown",
            param: shown(name),
            message: format!("Received unknown parameter: {}. {} takes: {}.", shown(name), tool.name, takes.join(", ")),
        });
    }
    let mut path = tool.path.to_owned();
    let mut pairs = Vec::new();
    let mut headers = Vec::new();
    for field in &fields {
        // An explicit null is an argument not given (agents often send them).
        let value = match args.get(field.name) {
            None | Some(Value::Null) if field.required => {
                return Err(ArgError {
                    code: "parameter_missing",
                    param: field.name.into(),
                    message: format!("Missing required param: {}.", field.name),
                })
            }
            None | Some(Value::Null) => continue,
            Some(v) => v,
        };
        match field.place {
            Place::Path => {
                let id = id(field.name, value)?;
                path = path.replace(&format!("{{{}}}", field.name), &id);
            }
            Place::Param => encode(field.name, &field.ty, value, &mut pairs)?,
            Place::Header(header) => headers.push((header, header_value(field, value)?)),
        }
    }
    let params = pairs.iter().map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v))).collect::<Vec<_>>();
    Ok(Request { method: tool.method, path, params: params.join("&"), headers })
}

/// A name safe to quote back (an agent's argument names are arbitrary text).
fn shown(name: &str) -> String {
    name.chars().filter(|c| !c.is_control()).take(64).collect()
}

fn header_value(field: &Field, value: &Value) -> Result<String, ArgError> {
    match field.ty {
        Ty::Id => id(field.name, value),
        _ => {
            let text = text(field.name, value, MAX_IDEMPOTENCY_KEY)?;
            if text.is_empty() || !text.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(invalid(field.name, format!("{} must be printable ASCII without spaces.", field.name)));
            }
            Ok(text)
        }
    }
}

/// Appends `value` as Stripe parameters named `name`.
fn encode(name: &str, ty: &Ty, value: &Value, out: &mut Vec<(String, String)>) -> Result<(), ArgError> {
    match ty {
        Ty::Text => out.push((name.into(), text(name, value, MAX_TEXT)?)),
        Ty::Id => out.push((name.into(), id(name, value)?)),
        Ty::Currency => {
            let c = text(name, value, 3)?;
            if c.len() != 3 || !c.bytes().all(|b| b.is_ascii_lowercase()) {
                return Err(invalid(
                    name,
                    format!("{name} must be a three-letter ISO currency code in lower case (usd)."),
                ));
            }
            out.push((name.into(), c));
        }
        Ty::Int { min, max } => {
            let n = value.as_i64().filter(|n| (*min..=*max).contains(n)).ok_or_else(|| ArgError {
                code: "parameter_invalid_integer",
                param: name.into(),
                message: format!("Invalid integer: {name} must be a whole number from {min} to {max}."),
            })?;
            out.push((name.into(), n.to_string()));
        }
        Ty::Decimal => {
            let text = match value {
                Value::Number(n) => plain_decimal(n),
                _ => None,
            };
            let text =
                text.ok_or_else(|| invalid(name, format!("{name} must be a non-negative decimal number (12.5).")))?;
            out.push((name.into(), text));
        }
        Ty::Bool => {
            let b = value.as_bool().ok_or_else(|| invalid(name, format!("{name} must be true or false.")))?;
            out.push((name.into(), b.to_string()));
        }
        Ty::Enum(values) => {
            let v = value
                .as_str()
                .filter(|v| values.contains(v))
                .ok_or_else(|| invalid(name, format!("{name} must be one of: {}.", values.join(", "))))?;
            out.push((name.into(), v.into()));
        }
        Ty::Metadata => {
            let map =
                value.as_object().ok_or_else(|| invalid(name, format!("{name} must be an object of strings.")))?;
            if map.len() > MAX_METADATA_KEYS {
                return Err(invalid(name, format!("{name} may have at most {MAX_METADATA_KEYS} keys.")));
            }
            // Sorted, whatever order the agent wrote: one encoding (and one derived key) per call.
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            for (k, v) in entries {
                let ok = !k.is_empty()
                    && k.len() <= MAX_METADATA_KEY
                    && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                if !ok {
                    return Err(invalid(
                        name,
                        format!(
                            "{name} keys are 1 to {MAX_METADATA_KEY} letters, digits, '_' or '-'; {:?} is not.",
                            shown(k)
                        ),
                    ));
                }
                let param = format!("{name}[{k}]");
                let v = text(&param, v, MAX_METADATA_VALUE)?;
                out.push((param, v));
            }
        }
        Ty::Object(fields) => {
            let map = value.as_object().ok_or_else(|| invalid(name, format!("{name} must be an object.")))?;
            if let Some(k) = map.keys().find(|k| !fields.iter().any(|f| f.name == k.as_str())) {
                let takes: Vec<&str> = fields.iter().map(|f| f.name).collect();
                let param = format!("{name}[{}]", shown(k));
                return Err(ArgError {
                    code: "parameter_unknown",
                    message: format!("Received unknown parameter: {param}. {name} takes: {}.", takes.join(", ")),
                    param,
                });
            }
            for f in fields.iter() {
                let param = format!("{name}[{}]", f.name);
                match map.get(f.name) {
                    None | Some(Value::Null) if f.required => {
                        return Err(ArgError {
                            code: "parameter_missing",
                            message: format!("Missing required param: {param}."),
                            param,
                        })
                    }
                    None | Some(Value::Null) => {}
                    Some(v) => encode(&param, &f.ty, v, out)?,
                }
            }
        }
        Ty::List(item, max) => {
            let items = value.as_array().ok_or_else(|| invalid(name, format!("{name} must be a list.")))?;
            if items.len() > *max {
                return Err(invalid(name, format!("{name} may have at most {max} items.")));
            }
            for (i, v) in items.iter().enumerate() {
                encode(&format!("{name}[{i}]"), item, v, out)?;
            }
        }
    }
    Ok(())
}

fn text(name: &str, value: &Value, max: usize) -> Result<String, ArgError> {
    let s = value.as_str().ok_or_else(|| invalid(name, format!("{name} must be a string.")))?;
    if s.chars().count() > max {
        return Err(invalid(name, format!("{name} is longer than {max} characters.")));
    }
    if s.chars().any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r')) {
        return Err(invalid(name, format!("{name} has a control character.")));
    }
    Ok(s.to_owned())
}

/// An object id: letters, digits and `_`, so it is one path segment and nothing else.
fn id(name: &str, value: &Value) -> Result<String, ArgError> {
    let s = value.as_str().unwrap_or_default();
    if s.is_empty() || s.len() > MAX_ID || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(invalid(name, format!("{name} must be an object id (letters, digits and '_', like cus_123).")));
    }
    Ok(s.to_owned())
}

/// A JSON number as a plain non-negative decimal (`12`, `12.5`), never an exponent.
fn plain_decimal(n: &Number) -> Option<String> {
    let text = n.to_string();
    let (whole, fraction) = text.split_once('.').unwrap_or((&text, ""));
    let ok = !whole.is_empty()
        && whole.bytes().all(|b| b.is_ascii_digit())
        && fraction.bytes().all(|b| b.is_ascii_digit())
        && text.len() <= 32;
    ok.then_some(text)
}

/// Percent-encodes every byte outside RFC 3986's unreserved set.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mcp::catalogue::find;
    use keybrake_core::form::FormParams;
    use serde_json::json;

    fn call(tool: &str, args: Value) -> Result<Request, ArgError> {
        prepare(find(tool).unwrap(), args.as_object().unwrap())
    }

    fn decoded(params: &str) -> Vec<(String, String)> {
        FormParams::parse(params.as_bytes()).unwrap().iter().cloned().collect()
    }

    #[test]
    fn encodes_stripe_bracket_syntax() {
        let r = call(
            "create_charge",
            json!({"amount": 2999, "currency": "usd", "customer": "cus_1", "capture": false,
                   "description": "a & b = c", "metadata": {"order_id": "6735", "note": "ü"}}),
        )
        .unwrap();
        assert_eq!((r.method, r.path.as_str()), (Method::Post, "/v1/charges"));
        assert_eq!(
            decoded(&r.params),
            [
                ("amount", "2999"),
                ("currency", "usd"),
                ("customer", "cus_1"),
                ("description", "a & b = c"),
                ("capture", "false"),
                ("metadata[note]", "ü"),
                ("metadata[order_id]", "6735"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        // Everything outside the unreserved set is percent-encoded, brackets included.
        assert!(
            r.params.contains("description=a%20%26%20b%20%3D%20c") && r.params.contains("metadata%5Bnote%5D=%C3%BC")
        );
        let r = call(
            "create_subscription",
            json!({"customer": "cus_1", "items": [{"price": "price_a"}, {"price": "price_b", "quantity": 2}]}),
        )
        .unwrap();
        assert_eq!(
            decoded(&r.params),
            [
                ("customer", "cus_1"),
                ("items[0][price]", "price_a"),
                ("items[1][price]", "price_b"),
                ("items[1][quantity]", "2")
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        let r = call("create_coupon", json!({"percent_off": 12.5, "duration": "once"})).unwrap();
        assert_eq!(
            decoded(&r.params),
            [("percent_off", "12.5"), ("duration", "once")].map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
    }

    #[test]
    fn fills_paths_and_queries_and_headers() {
        let r = call("retrieve_charge", json!({"charge": "ch_1"})).unwrap();
        assert_eq!((r.method, r.target().as_str()), (Method::Get, "/v1/charges/ch_1"));
        let r = call("list_charges", json!({"customer": "cus_1", "limit": 3, "stripe_account": "acct_9"})).unwrap();
        assert_eq!(r.target(), "/v1/charges?customer=cus_1&limit=3");
        assert_eq!(r.header("stripe-account"), Some("acct_9"));
        let r = call("cancel_subscription", json!({"subscription": "sub_1", "invoice_now": true})).unwrap();
        assert_eq!((r.method, r.target().as_str()), (Method::Delete, "/v1/subscriptions/sub_1?invoice_now=true"));
        let r = call("create_refund", json!({"charge": "ch_1", "idempotency_key": "order-6735-refund"})).unwrap();
        assert_eq!(r.header("Idempotency-Key"), Some("order-6735-refund"));
        assert!(!r.canonical().contains("order-6735"), "the caller's key is not part of the operation");
        let r = call("keybrake_audit_search", json!({"object_id": "ch_1", "limit": 5})).unwrap();
        assert_eq!(r.target(), "/admin/audit?object_id=ch_1&limit=5");
    }

    #[test]
    fn refuses_what_the_tool_does_not_declare_or_type() {
        let cases = [
            (json!({"amount": 100, "currency": "usd", "destination": "acct_1"}), "parameter_unknown", "destination"),
            (json!({"amount": 100, "currency": "usd", "metadata": {"a b": "x"}}), "parameter_invalid", "metadata"),
            (json!({"currency": "usd"}), "parameter_missing", "amount"),
            (json!({"amount": null, "currency": "usd"}), "parameter_missing", "amount"),
            (json!({"amount": 12.5, "currency": "usd"}), "parameter_invalid_integer", "amount"),
            (json!({"amount": "100", "currency": "usd"}), "parameter_invalid_integer", "amount"),
            (json!({"amount": -1, "currency": "usd"}), "parameter_invalid_integer", "amount"),
            (json!({"amount": 100, "currency": "USD"}), "parameter_invalid", "currency"),
            (json!({"amount": 100, "currency": "usd", "capture": "false"}), "parameter_invalid", "capture"),
            (json!({"amount": 100, "currency": "usd", "customer": "cus_1/../x"}), "parameter_invalid", "customer"),
            (json!({"amount": 100, "currency": "usd", "description": "a\u{0}b"}), "parameter_invalid", "description"),
            (json!({"amount": 100, "currency": "usd", "metadata": {"k": 1}}), "parameter_invalid", "metadata[k]"),
            (
                json!({"amount": 100, "currency": "usd", "idempotency_key": "has space"}),
                "parameter_invalid",
                "idempotency_key",
            ),
        ];
        for (args, code, param) in cases {
            let e = call("create_charge", args.clone()).unwrap_err();
            assert_eq!((e.code, e.param.as_str()), (code, param), "{args}: {}", e.message);
        }
        let e = call("retrieve_charge", json!({"charge": "../customers"})).unwrap_err();
        assert_eq!(e.param, "charge");
        let e = call("create_payment_link", json!({"line_items": [{"price": "price_1", "amount": 5}]})).unwrap_err();
        assert_eq!((e.code, e.param.as_str()), ("parameter_unknown", "line_items[0][amount]"));
        let e = call("create_payment_link", json!({"line_items": [{"quantity": 5}]})).unwrap_err();
        assert_eq!((e.code, e.param.as_str()), ("parameter_missing", "line_items[0][price]"));
        let exponent: Value = serde_json::from_str(r#"{"percent_off": 1e2}"#).unwrap();
        let e = call("create_coupon", exponent).unwrap_err();
        assert_eq!(e.param, "percent_off", "no exponents");
    }

    #[test]
    fn a_retried_call_derives_the_same_key_and_another_call_another() {
        let a =
            call("create_charge", json!({"amount": 100, "currency": "usd", "metadata": {"b": "2", "a": "1"}})).unwrap();
        let b =
            call("create_charge", json!({"metadata": {"a": "1", "b": "2"}, "currency": "usd", "amount": 100})).unwrap();
        let c =
            call("create_charge", json!({"amount": 101, "currency": "usd", "metadata": {"a": "1", "b": "2"}})).unwrap();
        let k = |r: &Request, key: &str| derived_idempotency_key(key, "create_charge", r);
        assert_eq!(k(&a, "vk_id_1"), k(&b, "vk_id_1"), "argument order does not matter");
        assert_ne!(k(&a, "vk_id_1"), k(&c, "vk_id_1"));
        assert_ne!(k(&a, "vk_id_1"), k(&a, "vk_id_2"), "one agent's call is not another's");
        assert!(k(&a, "vk_id_1").starts_with("mcp-") && k(&a, "vk_id_1").len() == 36);
        let on_account = call(
            "create_charge",
            json!({"amount": 100, "currency": "usd", "metadata": {"a": "1", "b": "2"},
                                                       "stripe_account": "acct_1"}),
        )
        .unwrap();
        assert_ne!(k(&a, "vk_id_1"), k(&on_account, "vk_id_1"));
    }
}
