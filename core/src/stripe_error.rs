//! The one shape of every refusal Keybrake sends: Stripe's error object, so
//! the official SDKs raise their usual exceptions.

use serde::Serialize;

/// Stripe's `error.type` values that Keybrake uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorType {
    InvalidRequestError,
    IdempotencyError,
    ApiError,
}

impl ErrorType {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::InvalidRequestError => "invalid_request_error",
            ErrorType::IdempotencyError => "idempotency_error",
            ErrorType::ApiError => "api_error",
        }
    }

    pub fn parse(text: &str) -> ErrorType {
        match text {
            "idempotency_error" => ErrorType::IdempotencyError,
            "api_error" => ErrorType::ApiError,
            _ => ErrorType::InvalidRequestError,
        }
    }
}

/// A refusal: HTTP status plus Stripe's error body. Messages never carry secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StripeError {
    pub status: u16,
    pub error_type: ErrorType,
    pub code: String,
    pub message: String,
    pub param: Option<String>,
    /// `Stripe-Should-Retry`, which the SDKs honour for their automatic retries.
    pub should_retry: Option<bool>,
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    #[serde(rename = "type")]
    error_type: ErrorType,
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    param: Option<&'a str>,
}

impl StripeError {
    pub fn new(status: u16, error_type: ErrorType, code: &str, message: impl Into<String>) -> StripeError {
        StripeError {
            status,
            error_type,
            code: code.to_owned(),
            message: message.into(),
            param: None,
            should_retry: None,
        }
    }

    pub fn with_param(mut self, param: Option<String>) -> StripeError {
        self.param = param;
        self
    }

    pub fn with_should_retry(mut self, retry: bool) -> StripeError {
        self.should_retry = Some(retry);
        self
    }

    /// `{"error": {"type", "code", "message", "param"?}}`
    pub fn body(&self) -> String {
        let env = Envelope {
            error: Inner {
                error_type: self.error_type,
                code: &self.code,
                message: &self.message,
                param: self.param.as_deref(),
            },
        };
        serde_json::to_string(&env).unwrap_or_else(|_| String::from("{\"error\":{\"type\":\"api_error\"}}"))
    }

    /// Response headers that go with the body.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut h = vec![("content-type", "application/json".to_owned())];
        if let Some(retry) = self.should_retry {
            h.push(("stripe-should-retry", retry.to_string()));
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn renders_stripes_shape() {
        let e = StripeError::new(429, ErrorType::InvalidRequestError, "spend_cap_exceeded", "Spend cap \"x\"")
            .with_should_retry(false);
        let v: serde_json::Value = serde_json::from_str(&e.body()).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "spend_cap_exceeded");
        assert_eq!(v["error"]["message"], "Spend cap \"x\"");
        assert!(v["error"].get("param").is_none());
        assert!(e.headers().contains(&("stripe-should-retry", "false".to_owned())));
        let p = StripeError::new(400, ErrorType::InvalidRequestError, "x", "y").with_param(Some("amount".into()));
        assert!(p.body().contains("\"param\":\"amount\""));
    }
}
