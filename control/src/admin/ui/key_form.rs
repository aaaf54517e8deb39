//! The console's form for a new vault key, and its translation into the
//! API's JSON request: shown on the keys page (`keys.rs`), posted to
//! `create.rs`. `CreateKey::validate()` runs with its own messages, which the
//! form shows next to the field they name.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::html::{csrf_field, esc};
use crate::model::Invalid;

#[derive(Deserialize, Default)]
pub struct CreateForm {
    #[serde(default)]
    pub csrf: String,
    #[serde(default)]
    label: String,
    #[serde(default)]
    vendor: String,
    #[serde(default)]
    allowed_endpoints: String,
    #[serde(default)]
    daily_usd_cap: String,
    #[serde(default)]
    max_amount_per_call_usd: String,
    #[serde(default)]
    expires_in_seconds: String,
    #[serde(default)]
    dedup: String,
    #[serde(default)]
    dedup_window_seconds: String,
    #[serde(default)]
    allowed_accounts: String,
    #[serde(default)]
    allow_unpriced_calls: Option<String>,
}

fn lines(text: &str) -> Vec<Value> {
    text.lines().map(str::trim).filter(|l| !l.is_empty()).map(|l| Value::String(l.to_owned())).collect()
}

/// A JSON number when the text is one, else the text, so the API's own
/// message says what is wrong with it.
fn number_or_text(text: &str) -> Value {
    serde_json::from_str::<serde_json::Number>(text.trim()).map(Value::Number).unwrap_or(Value::String(text.into()))
}

impl CreateForm {
    pub fn defaults() -> CreateForm {
        CreateForm {
            vendor: "stripe".into(),
            allowed_endpoints: "POST /v1/charges".into(),
            expires_in_seconds: "3600".into(),
            dedup: "content".into(),
            ..CreateForm::default()
        }
    }

    /// The API's request body. Empty optional fields are left out, as a
    /// client would; amounts go as strings (the API takes decimal text).
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("label".into(), self.label.clone().into());
        m.insert("vendor".into(), self.vendor.trim().into());
        m.insert("allowed_endpoints".into(), Value::Array(lines(&self.allowed_endpoints)));
        for (name, text) in
            [("daily_usd_cap", &self.daily_usd_cap), ("max_amount_per_call_usd", &self.max_amount_per_call_usd)]
        {
            if !text.trim().is_empty() {
                m.insert(name.into(), text.trim().into());
            }
        }
        if !self.expires_in_seconds.trim().is_empty() {
            m.insert("expires_in_seconds".into(), number_or_text(&self.expires_in_seconds));
        }
        if !self.dedup.trim().is_empty() {
            m.insert("dedup".into(), self.dedup.trim().into());
        }
        if !self.dedup_window_seconds.trim().is_empty() {
            m.insert("dedup_window_seconds".into(), number_or_text(&self.dedup_window_seconds));
        }
        m.insert("allowed_accounts".into(), Value::Array(lines(&self.allowed_accounts)));
        m.insert("allow_unpriced_calls".into(), self.allow_unpriced_calls.is_some().into());
        Value::Object(m)
    }
}

/// The create form, holding `f`'s values; an error is shown above it and its field marked.
pub fn form_html(f: &CreateForm, error: Option<&Invalid>, csrf: &str) -> String {
    let bad = |param: &str| if error.is_some_and(|e| e.param == param) { " class=\"invalid\"" } else { "" };
    let message = error
        .map(|e| {
            format!("<p class=\"error\" id=\"create-error\" data-param=\"{}\">{}</p>", esc(&e.param), esc(&e.message))
        })
        .unwrap_or_default();
    let option = |value: &str, current: &str, text: &str| {
        let sel = if value == current { " selected" } else { "" };
        format!("<option value=\"{value}\"{sel}>{text}</option>")
    };
    let checked = if f.allow_unpriced_calls.is_some() { " checked" } else { "" };
    format!(
        "<h2>Issue a key</h2>{message}<form method=\"post\" action=\"/admin/ui/keys\" id=\"create-form\" class=\"stack\">\
         {csrf}\
         <label>Label<input name=\"label\" id=\"label\" value=\"{label}\" required{b_label}></label>\
         <label>Vendor<select name=\"vendor\" id=\"vendor\"{b_vendor}>{v1}{v2}</select></label>\
         <label>Allowed endpoints <span class=\"hint\">one per line, <code>*</code> for one id segment</span>\
         <textarea name=\"allowed_endpoints\" id=\"allowed_endpoints\" rows=\"3\"{b_ep}>{endpoints}</textarea></label>\
         <label>Daily cap, USD <span class=\"hint\">empty for none</span>\
         <input name=\"daily_usd_cap\" id=\"daily_usd_cap\" value=\"{cap}\" inputmode=\"decimal\"{b_cap}></label>\
         <label>Expires in, seconds<input name=\"expires_in_seconds\" id=\"expires_in_seconds\" type=\"number\" \
         value=\"{ttl}\"{b_ttl}></label>\
         <details{open}><summary>More</summary>\
         <label>Max per call, USD<input name=\"max_amount_per_call_usd\" value=\"{per_call}\"{b_per}></label>\
         <label>Dedup<select name=\"dedup\"{b_dedup}>{d1}{d2}</select></label>\
         <label>Dedup window, seconds<input name=\"dedup_window_seconds\" type=\"number\" value=\"{window}\"{b_win}>\
         </label>\
         <label>Allowed accounts <span class=\"hint\">acct_…, one per line; empty for any</span>\
         <textarea name=\"allowed_accounts\" rows=\"2\"{b_acct}>{accounts}</textarea></label>\
         <label class=\"check\"><input type=\"checkbox\" name=\"allow_unpriced_calls\"{checked}> Allow unpriced \
         money-moving calls</label></details>\
         <button type=\"submit\" id=\"create-submit\">Issue key</button></form>",
        csrf = csrf_field(csrf),
        label = esc(&f.label),
        v1 = option("stripe", &f.vendor, "stripe"),
        v2 = option("keybrake", &f.vendor, "keybrake (audit-scoped)"),
        endpoints = esc(&f.allowed_endpoints),
        cap = esc(&f.daily_usd_cap),
        ttl = esc(&f.expires_in_seconds),
        per_call = esc(&f.max_amount_per_call_usd),
        d1 = option("content", &f.dedup, "by content"),
        d2 = option("idempotency_key", &f.dedup, "by Idempotency-Key"),
        window = esc(&f.dedup_window_seconds),
        accounts = esc(&f.allowed_accounts),
        open = if error.is_some_and(|e| {
            ["max_amount_per_call_usd", "dedup", "dedup_window_seconds", "allowed_accounts"].contains(&e.param.as_str())
        }) {
            " open"
        } else {
            ""
        },
        b_label = bad("label"),
        b_vendor = bad("vendor"),
        b_ep = bad("allowed_endpoints"),
        b_cap = bad("daily_usd_cap"),
        b_ttl = bad("expires_in_seconds"),
        b_per = bad("max_amount_per_call_usd"),
        b_dedup = bad("dedup"),
        b_win = bad("dedup_window_seconds"),
        b_acct = bad("allowed_accounts"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_form_becomes_the_apis_request() {
        let f = CreateForm {
            label: "ray-billing".into(),
            allowed_endpoints: "POST /v1/charges\r\n\r\n GET /v1/charges/* \n".into(),
            daily_usd_cap: " 32.99 ".into(),
            expires_in_seconds: "3600".into(),
            ..CreateForm::defaults()
        };
        let v = f.to_json();
        assert_eq!(v["allowed_endpoints"], serde_json::json!(["POST /v1/charges", "GET /v1/charges/*"]));
        assert_eq!(v["daily_usd_cap"], "32.99");
        assert_eq!(v["expires_in_seconds"].to_string(), "3600");
        assert!(v.get("max_amount_per_call_usd").is_none() && v.get("dedup_window_seconds").is_none());
        let request: crate::issuing::CreateKey = serde_json::from_value(v).unwrap();
        assert!(request.validate().is_ok());
        let odd = CreateForm { dedup_window_seconds: "soon".into(), ..CreateForm::defaults() }.to_json();
        assert_eq!(odd["dedup_window_seconds"], "soon", "left for the API to refuse with its own message");
    }
}
