//! `/admin/vault_keys` and `/admin/usage`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::error::parse_json;
use super::{AdminError, Principal};
use crate::app::App;
use crate::clock::{day_of, day_text};
use crate::ids::{new_id, new_vault_key};
use crate::keys::{usd_number, CreateKey, KeyView};
use crate::model::{KeyRecord, Spend};
use crate::store::{KeyQuery, RevokeSelector};

fn require_admin(p: &Principal) -> Result<(), AdminError> {
    match p {
        Principal::Admin => Ok(()),
        Principal::AuditKey { .. } => Err(AdminError::Forbidden),
    }
}

#[derive(Serialize)]
struct Created {
    /// Shown once; only its hash is stored.
    vault_key: String,
    #[serde(flatten)]
    key: KeyView,
}

pub async fn create(
    State(app): State<Arc<App>>,
    Extension(p): Extension<Principal>,
    body: Bytes,
) -> Result<impl IntoResponse, AdminError> {
    require_admin(&p)?;
    let request: CreateKey = parse_json(&body)?;
    let valid = request.validate()?;
    let vault_key = new_vault_key().ok_or(AdminError::Storage)?;
    let now_us = app.clock.now_us();
    let record = valid.into_record(new_id("key"), vault_key.hash(), now_us / 1_000_000);
    let stored = record.clone();
    app.store.write(move |l| l.insert_key(&stored)).await?;
    tracing::info!(key_id = %record.id, label = %record.label, "vault key issued");
    let key = KeyView::new(
        &record,
        Spend::default(),
        now_us / 1_000_000,
        day_of(now_us),
    );
    Ok((
        StatusCode::CREATED,
        Json(Created {
            vault_key: vault_key.expose().to_owned(),
            key,
        }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    label_prefix: Option<String>,
    limit: Option<usize>,
    starting_after: Option<String>,
}

#[derive(Serialize)]
pub struct List<T> {
    pub object: &'static str,
    pub data: Vec<T>,
    pub has_more: bool,
}

/// Keys with their spend today.
async fn views(app: &App, keys: Vec<KeyRecord>) -> Result<Vec<KeyView>, AdminError> {
    let now_us = app.clock.now_us();
    let day = day_of(now_us);
    let spend: HashMap<String, Spend> = app
        .store
        .read(move |l| l.spend_by_key(day))
        .await?
        .into_iter()
        .collect();
    Ok(keys
        .iter()
        .map(|k| {
            KeyView::new(
                k,
                spend.get(&k.id).copied().unwrap_or_default(),
                now_us / 1_000_000,
                day,
            )
        })
        .collect())
}

pub async fn list(
    State(app): State<Arc<App>>,
    Extension(p): Extension<Principal>,
    Query(params): Query<ListParams>,
) -> Result<Json<List<KeyView>>, AdminError> {
    require_admin(&p)?;
    let limit = params.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(AdminError::invalid(
            "limit",
            "limit must be between 1 and 1000",
        ));
    }
    let query = KeyQuery {
        label_prefix: params.label_prefix,
        limit: limit + 1,
        after_id: params.starting_after,
    };
    let mut keys = app.store.read(move |l| l.list_keys(&query)).await?;
    let has_more = keys.len() > limit;
    keys.truncate(limit);
    Ok(Json(List {
        object: "list",
        data: views(&app, keys).await?,
        has_more,
    }))
}

async fn one(app: &App, id: String) -> Result<KeyView, AdminError> {
    let missing = format!("No such vault key: '{id}'");
    let key = app
        .store
        .read(move |l| l.key_by_id(&id))
        .await?
        .ok_or(AdminError::NotFound(missing))?;
    views(app, vec![key])
        .await?
        .pop()
        .ok_or(AdminError::Storage)
}

pub async fn show(
    State(app): State<Arc<App>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<KeyView>, AdminError> {
    require_admin(&p)?;
    Ok(Json(one(&app, id).await?))
}

/// Revokes one key at once: the next request with it is refused.
pub async fn revoke(
    State(app): State<Arc<App>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<KeyView>, AdminError> {
    require_admin(&p)?;
    let now = app.clock.now_us() / 1_000_000;
    let selector = RevokeSelector::Id(id.clone());
    let revoked = app
        .store
        .write(move |l| l.revoke_keys(&selector, now))
        .await?;
    if !revoked.is_empty() {
        tracing::info!(key_id = %id, "vault key revoked");
    }
    Ok(Json(one(&app, id).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokePrefix {
    label_prefix: String,
}

#[derive(Serialize)]
struct Revoked {
    revoked: usize,
    ids: Vec<String>,
}

/// The kill switch: revokes every active key whose label starts with the prefix.
pub async fn revoke_prefix(
    State(app): State<Arc<App>>,
    Extension(p): Extension<Principal>,
    body: Bytes,
) -> Result<Json<impl Serialize>, AdminError> {
    require_admin(&p)?;
    let RevokePrefix { label_prefix } = parse_json(&body)?;
    if label_prefix.is_empty() {
        return Err(AdminError::invalid(
            "label_prefix",
            "label_prefix must not be empty",
        ));
    }
    let now = app.clock.now_us() / 1_000_000;
    let selector = RevokeSelector::LabelPrefix(label_prefix.clone());
    let ids = app
        .store
        .write(move |l| l.revoke_keys(&selector, now))
        .await?;
    tracing::info!(label_prefix = %label_prefix, count = ids.len(), "vault keys revoked by prefix");
    Ok(Json(Revoked {
        revoked: ids.len(),
        ids,
    }))
}

#[derive(Serialize)]
struct UsageRow {
    id: String,
    label: String,
    daily_usd_cap: Option<serde_json::Number>,
    spent_today_usd: serde_json::Number,
    reserved_usd: serde_json::Number,
    uncertain_usd: serde_json::Number,
    state: crate::model::KeyState,
}

#[derive(Serialize)]
struct Usage {
    object: &'static str,
    day: String,
    data: Vec<UsageRow>,
}

/// Keys with spend today, most spent first.
pub async fn usage(
    State(app): State<Arc<App>>,
    Extension(p): Extension<Principal>,
) -> Result<Json<impl Serialize>, AdminError> {
    require_admin(&p)?;
    let now_us = app.clock.now_us();
    let day = day_of(now_us);
    let mut rows = app
        .store
        .read(move |l| {
            let mut out = Vec::new();
            for (key_id, spend) in l.spend_by_key(day)? {
                if let Some(k) = l.key_by_id(&key_id)? {
                    out.push((k, spend));
                }
            }
            Ok(out)
        })
        .await?;
    rows.sort_by_key(|(k, s)| (std::cmp::Reverse(s.total()), k.id.clone()));
    let m = keybrake_core::money::UsdMicros;
    let data = rows
        .into_iter()
        .map(|(k, s)| UsageRow {
            state: k.state(now_us / 1_000_000),
            id: k.id,
            label: k.label,
            daily_usd_cap: k.daily_cap.map(usd_number),
            spent_today_usd: usd_number(m(s.committed)),
            reserved_usd: usd_number(m(s.reserved)),
            uncertain_usd: usd_number(m(s.uncertain)),
        })
        .collect();
    Ok(Json(Usage {
        object: "usage",
        day: day_text(day),
        data,
    }))
}
