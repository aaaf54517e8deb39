//! The admin API's OpenAPI document, generated from the handlers' annotations
//! and served at `/admin/openapi.json` (no secret in it, so no key needed).

use axum::response::IntoResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{audit, error, fx, vault_keys};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Keybrake admin API",
        description = "Issue, inspect and revoke vault keys; read spend and the audit log. Every operation takes \
            `Authorization: Bearer <admin key>`; `GET /admin/audit` also takes an audit-scoped vault key. \
            Errors use Stripe's shape: `{\"error\": {\"type\", \"code\", \"message\", \"param\"}}`."
    ),
    paths(
        vault_keys::create, vault_keys::list, vault_keys::show, vault_keys::revoke, vault_keys::reinstate,
        vault_keys::revoke_prefix, vault_keys::usage,
        audit::query, audit::verify, fx::list, fx::set
    ),
    components(schemas(error::ErrorBody, error::ErrorDetail)),
    modifiers(&BearerAuth),
    security(("admin_key" = []))
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

pub async fn document() -> impl IntoResponse {
    ([("content-type", "application/json")], ApiDoc::openapi().to_pretty_json().unwrap_or_default())
}
