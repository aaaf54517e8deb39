//! `/admin/fx_rates`: the operator's exchange rates (USD per one unit of a currency, with their date).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::{Extension, Json};
use serde::Serialize;

use super::error::{parse_json, AdminErrors};
use super::{AdminError, Principal};
use crate::app::App;
use crate::model::FxRate;
use crate::usd::SetRates;

/// The FX table.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Rates {
    object: &'static str,
    data: Vec<FxRate>,
}

#[utoipa::path(get, path = "/admin/fx_rates", tag = "fx",
    responses((status = 200, description = "The rates in use", body = Rates),
        AdminErrors))]
/// The FX table.
pub async fn list(State(app): State<Arc<App>>, Extension(p): Extension<Principal>) -> Result<Json<Rates>, AdminError> {
    p.require_admin()?;
    let data = app.store.read(|l| l.fx_rates()).await?;
    Ok(Json(Rates { object: "list", data }))
}

#[utoipa::path(put, path = "/admin/fx_rates", tag = "fx", request_body = SetRates,
    responses((status = 200, description = "The rates in use after the change", body = Rates),
        AdminErrors))]
/// Sets (adds or replaces) rates; currencies not named keep theirs.
pub async fn set(
    State(app): State<Arc<App>>,
    Extension(p): Extension<Principal>,
    body: Bytes,
) -> Result<Json<Rates>, AdminError> {
    p.require_admin()?;
    let request: SetRates = parse_json(&body)?;
    let rates = request.validate()?;
    set_rates(&app, rates).await?;
    let data = app.store.read(|l| l.fx_rates()).await?;
    Ok(Json(Rates { object: "list", data }))
}

/// Stores validated rates and reloads this replica's table from the store.
pub async fn set_rates(app: &App, rates: Vec<FxRate>) -> crate::store::StoreResult<()> {
    let now = app.clock.now_us() / 1_000_000;
    app.store
        .write(move |l| {
            for r in &rates {
                l.put_fx_rate(r, now)?;
            }
            Ok(())
        })
        .await?;
    app.refresh_fx().await
}
