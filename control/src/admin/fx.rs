//! `/admin/fx_rates`: the operator's exchange rates (USD per one unit of a currency, with their date).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::{Extension, Json};
use keybrake_core::currency::Currency;
use keybrake_core::money::UsdRate;
use serde::{Deserialize, Serialize};

use super::error::{parse_json, AdminErrors};
use super::{AdminError, Principal};
use crate::app::App;
use crate::keys::DecimalText;
use crate::model::FxRate;

/// `{"as_of": "2026-11-26", "rates": {"jpy": "0.0067", "eur": 1.08}}`
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetRates {
    /// The date the rates hold for, YYYY-MM-DD.
    #[schema(example = "2026-11-26")]
    pub as_of: String,
    /// USD per one unit of each currency (lower-case ISO 4217 code), a positive decimal.
    #[schema(value_type = std::collections::HashMap<String, f64>)]
    pub rates: BTreeMap<String, DecimalText>,
}

/// The FX table.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Rates {
    object: &'static str,
    data: Vec<FxRate>,
}

impl SetRates {
    /// Validates the rates: known-shaped codes, positive decimal rates, a date.
    pub fn validate(&self) -> Result<Vec<FxRate>, AdminError> {
        if chrono::NaiveDate::parse_from_str(&self.as_of, "%Y-%m-%d").is_err() {
            return Err(AdminError::invalid("as_of", "as_of must be a date, YYYY-MM-DD"));
        }
        if self.rates.is_empty() {
            return Err(AdminError::invalid("rates", "rates must not be empty"));
        }
        let mut out = Vec::new();
        for (code, rate) in &self.rates {
            let currency = Currency::parse(code).map_err(|e| AdminError::invalid("rates", e.to_string()))?;
            if currency.is_usd() {
                return Err(AdminError::invalid("rates", "usd is always 1 and cannot be set"));
            }
            let parsed = UsdRate::parse(&rate.0).map_err(|e| {
                AdminError::invalid(
                    "rates",
                    format!("rate for {currency}: {e} (USD per one {currency}, a positive decimal)"),
                )
            })?;
            out.push(FxRate {
                currency: currency.to_string(),
                usd_per_unit: parsed.to_decimal_string(),
                as_of: self.as_of.clone(),
            });
        }
        Ok(out)
    }
}

#[utoipa::path(get, path = "/admin/fx_rates", tag = "fx",
    responses((status = 200, description = "The rates in use", body = Rates),
        AdminErrors))]
/// The FX table.
pub async fn list(State(app): State<Arc<App>>, Extension(p): Extension<Principal>) -> Result<Json<Rates>, AdminError> {
    if !matches!(p, Principal::Admin) {
        return Err(AdminError::Forbidden);
    }
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
    if !matches!(p, Principal::Admin) {
        return Err(AdminError::Forbidden);
    }
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
