//! Refusals the filter makes on its own, before asking the control service:
//! one typed enum, mapped to Stripe's error shape in one place.

use keybrake_core::account::AccountError;
use keybrake_core::form::FormError;
use keybrake_core::path::PathError;
use keybrake_core::pricing::PricingError;
use keybrake_core::stripe_error::{ErrorType, StripeError};
use keybrake_core::vault_key::KeyFormatError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    MissingKey,
    MalformedKey(KeyFormatError),
    UnsupportedScheme,
    /// More than one `Authorization` header, or a credential with a password.
    AmbiguousCredentials,
    KeyInQuery,
    RepeatedHeader(&'static str),
    HeaderTooLong(&'static str),
    HeaderInvalid(&'static str),
    Path(PathError),
    MethodNotAllowed(String),
    MethodOverride,
    QueryOnPost,
    /// A query string that cannot be read one way only.
    Query(FormError),
    ContentType,
    /// A compressed or otherwise encoded body (it would be priced as sent and read inflated).
    ContentEncoding,
    /// Malformed or disagreeing `Stripe-Account` / `Stripe-Context`.
    Account(AccountError),
    BodyTooLarge(usize),
    BodyNotAllowed,
    Form(FormError),
    Pricing(PricingError),
    ControlUnavailable,
    /// The host would not let the filter replace the body with what it priced.
    BodyNotReplaced,
    /// The worker could not give the call an id of its own (never seeded, or busy).
    NoCallId,
}

impl Refusal {
    /// Stable reason code, used as Stripe's `error.code`, in the audit trail and in metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::MissingKey => "vault_key_missing",
            Refusal::MalformedKey(_) => "vault_key_malformed",
            Refusal::UnsupportedScheme => "authorization_scheme_unsupported",
            Refusal::AmbiguousCredentials => "credentials_ambiguous",
            Refusal::KeyInQuery => "vault_key_in_query",
            Refusal::RepeatedHeader(_) => "header_repeated",
            Refusal::HeaderTooLong(_) => "header_too_long",
            Refusal::HeaderInvalid(_) => "header_invalid",
            Refusal::Path(_) => "path_invalid",
            Refusal::MethodNotAllowed(_) => "method_not_allowed",
            Refusal::MethodOverride => "method_override_refused",
            Refusal::QueryOnPost => "query_on_post",
            Refusal::Query(FormError::Duplicate(_)) => "parameter_duplicated",
            Refusal::Query(_) => "query_malformed",
            Refusal::ContentType => "content_type_unsupported",
            Refusal::ContentEncoding => "content_encoding_unsupported",
            Refusal::Account(_) => "account_header_invalid",
            Refusal::BodyTooLarge(_) => "body_too_large",
            Refusal::BodyNotAllowed => "body_not_allowed",
            Refusal::Form(FormError::Duplicate(_)) => "parameter_duplicated",
            Refusal::Form(_) => "body_malformed",
            Refusal::Pricing(PricingError::Form(FormError::Duplicate(_))) => "parameter_duplicated",
            Refusal::Pricing(PricingError::Form(_)) => "body_malformed",
            Refusal::Pricing(PricingError::Missing(_)) => "parameter_missing",
            Refusal::Pricing(PricingError::InvalidCurrency(_) | PricingError::MixedCurrencies) => "currency_invalid",
            Refusal::Pricing(PricingError::InvalidBoolean { .. } | PricingError::InvalidChoice { .. }) => {
                "parameter_invalid"
            }
            Refusal::Pricing(_) => "amount_invalid",
            Refusal::ControlUnavailable | Refusal::NoCallId => "keybrake_unavailable",
            Refusal::BodyNotReplaced => "keybrake_internal_error",
        }
    }

    pub fn to_stripe_error(&self) -> StripeError {
        let code = self.code();
        let e = |status: u16, message: String| StripeError::new(status, ErrorType::InvalidRequestError, code, message);
        match self {
            Refusal::MissingKey => e(401, "No vault key provided. Send it as 'Authorization: Bearer vk_...' (or as the Basic auth user name).".into()),
            Refusal::MalformedKey(why) => e(401, format!("Invalid vault key provided: {why}.")),
            Refusal::UnsupportedScheme => e(401, "Unsupported Authorization scheme: use Bearer or Basic with the vault key.".into()),
            Refusal::AmbiguousCredentials => e(400, "Send exactly one credential: one Authorization header holding one vault key (Basic auth with an empty password).".into()),
            Refusal::KeyInQuery => e(400, "Vault keys are not accepted in the URL; send them in the Authorization header.".into()),
            Refusal::RepeatedHeader(h) => e(400, format!("The {h} header may be sent only once.")),
            Refusal::HeaderTooLong(h) => e(400, format!("The {h} header is too long.")),
            Refusal::HeaderInvalid(h) => {
                e(400, format!("The {h} header has an invalid value.")).with_param(Some((*h).to_owned()))
            }
            Refusal::Path(why) => e(400, format!("Invalid request path: {why}.")),
            Refusal::MethodNotAllowed(m) => e(403, format!("Method {m} is not allowed through Keybrake (only GET, POST and DELETE).")),
            Refusal::MethodOverride => e(400, "Method overrides (X-HTTP-Method-Override, _method) are not accepted.".into()),
            Refusal::QueryOnPost => e(400, "POST requests carry their parameters in the form body, not in the query string.".into()),
            Refusal::Query(why) => e(400, format!("Malformed query string: {why}.")).with_param(why.param()),
            Refusal::ContentType => e(400, "POST bodies must be application/x-www-form-urlencoded (UTF-8), as Stripe's API expects.".into())
                .with_param(Some("Content-Type".into())),
            Refusal::ContentEncoding => e(400, "Request bodies must not be compressed or encoded (Content-Encoding).".into())
                .with_param(Some("Content-Encoding".into())),
            Refusal::Account(why) => e(400, format!("Invalid account header: {why}.")).with_param(Some(why.header().into())),
            Refusal::BodyTooLarge(limit) => e(400, format!("The request body is larger than Keybrake's limit of {limit} bytes.")),
            Refusal::BodyNotAllowed => e(400, "GET and DELETE requests must not carry a body.".into()),
            Refusal::Form(why) => e(400, format!("Malformed request body: {why}.")).with_param(why.param()),
            Refusal::Pricing(why) => e(400, format!("Cannot price this request: {why}.")).with_param(why.param()),
            Refusal::ControlUnavailable => StripeError::new(
                503,
                ErrorType::ApiError,
                code,
                "Keybrake's control service is unavailable; the request was not sent to Stripe.",
            )
            .with_should_retry(true),
            Refusal::NoCallId => StripeError::new(
                503,
                ErrorType::ApiError,
                code,
                "Keybrake could not give the call an id; the request was not sent to Stripe.",
            )
            .with_should_retry(true),
            Refusal::BodyNotReplaced => StripeError::new(
                500,
                ErrorType::ApiError,
                code,
                "Keybrake could not forward the request as it priced it; the request was not sent to Stripe.",
            ),
        }
    }
}
