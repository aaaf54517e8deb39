//! Admin API errors, all rendered in Stripe's error shape.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keybrake_core::stripe_error::{ErrorType, StripeError};

use crate::model::Invalid;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("missing or invalid admin key")]
    Unauthorized,
    #[error("this key may not call this endpoint")]
    Forbidden,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(Invalid),
    #[error("storage unavailable")]
    Storage,
    #[error("too many failed authentication attempts")]
    TooManyAttempts,
}

impl From<Invalid> for AdminError {
    fn from(e: Invalid) -> AdminError {
        AdminError::Invalid(e)
    }
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> AdminError {
        tracing::error!(error = %e, "admin API: storage failed");
        AdminError::Storage
    }
}

impl AdminError {
    pub fn invalid(param: &str, message: impl Into<String>) -> AdminError {
        AdminError::Invalid(Invalid { param: param.into(), message: message.into() })
    }

    fn to_stripe_error(&self) -> StripeError {
        let e = |status, code: &str, message: String| {
            StripeError::new(status, ErrorType::InvalidRequestError, code, message)
        };
        match self {
            AdminError::Unauthorized => e(
                401,
                "admin_key_invalid",
                "Missing or invalid admin key: send 'Authorization: Bearer <admin key>'.".into(),
            ),
            AdminError::Forbidden => e(403, "endpoint_not_allowed", "This key may not call this endpoint.".into()),
            AdminError::NotFound(m) => e(404, "resource_missing", m.clone()),
            AdminError::Invalid(i) => e(400, "parameter_invalid", i.message.clone()).with_param(Some(i.param.clone())),
            AdminError::Storage => StripeError::new(
                503,
                ErrorType::ApiError,
                "keybrake_storage_unavailable",
                "Keybrake's storage is unavailable.",
            )
            .with_should_retry(true),
            AdminError::TooManyAttempts => {
                e(429, "too_many_failed_attempts", "Too many failed authentication attempts; wait and retry.".into())
                    .with_should_retry(false)
            }
        }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let e = self.to_stripe_error();
        let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, e.body()).into_response();
        for (name, value) in e.headers() {
            if let Ok(v) = value.parse() {
                response.headers_mut().insert(name, v);
            }
        }
        response
    }
}

/// Stripe's error envelope, as every admin error is shaped (for the OpenAPI document).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// `invalid_request_error` or `api_error`.
    #[serde(rename = "type")]
    error_type: String,
    /// A stable reason code, e.g. `parameter_invalid`.
    code: String,
    message: String,
    /// The parameter at fault, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    param: Option<String>,
}

/// The errors every admin operation may answer, for the OpenAPI document.
pub struct AdminErrors;

impl utoipa::IntoResponses for AdminErrors {
    fn responses() -> std::collections::BTreeMap<String, utoipa::openapi::RefOr<utoipa::openapi::response::Response>> {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        [
            ("400", "Invalid request"),
            ("401", "Missing or invalid admin key"),
            ("403", "Not allowed for this key"),
            ("429", "Too many failed authentication attempts"),
            ("503", "Storage unavailable"),
        ]
        .into_iter()
        .map(|(status, description)| {
            let body = ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build();
            let response = ResponseBuilder::new().description(description).content("application/json", body).build();
            (status.to_owned(), response.into())
        })
        .collect()
    }
}

/// `Query<T>` whose rejection is a Stripe-shaped 400 (axum's own is plain text).
pub struct AdminQuery<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequestParts<S> for AdminQuery<T> {
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| AdminQuery(q.0))
            .map_err(|e| AdminError::invalid("query", e.body_text()))
    }
}

/// Parses a JSON request body, turning serde's message into a 400 that says what is wrong.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, AdminError> {
    serde_json::from_slice(body).map_err(|e| {
        let message = e.to_string();
        let param = message.split('`').nth(1).filter(|_| message.contains("field")).unwrap_or("body").to_owned();
        AdminError::invalid(&param, format!("Invalid JSON body: {message}"))
    })
}
