//! `/admin/vault_keys` and `/admin/usage`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::error::{parse_json, AdminErrors, AdminQuery, ErrorBody};
use super::{AdminError, Principal};
use crate::app::App;
use crate::clock::{day_of, day_text};
use crate::ids::{new_id, new_vault_key};
use crate::issuing::{CreateKey, KeyView};
use crate::model::{KeyRecord, Spend};
use crate::store::{KeyQuery, RevokeSelector};
use crate::usd::usd_number;

/// A key just issued: the view plus the key itself, shown this once.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Created {
    /// Shown once; only its hash is stored.
    vault_key: String,
    #[serde(flatten)]
    key: KeyView,
}

#[utoipa::path(post, path = "/admin/vault_keys", tag = "vault keys", request_body = CreateKey,
    responses((status = 201, description = "Issued", body = Created),
        AdminErrors))]
/// Issue a vault key.
pub async fn create(
    State(app): State<Arc<App>>,
    Extension(p): Extension<Principal>,
    body: Bytes,
) -> Result<impl IntoResponse, AdminError> {
    p.require_admin()?;
    let request: CreateKey = parse_json(&body)?;
    let valid = request.validate()?;
    let vault_key = new_vault_key().ok_or(AdminError::Storage)?;
    let now_us = app.clock.now_us();
    let record = valid.into_record(new_id("key"), vault_key.hash(), now_us / 1_000_000);
    let stored = record.clone();
    app.store.write(move |l| l.insert_key(&stored)).await?;
    tracing::info!(key_id = %record.id, label = %record.label, "vault key issued");
    let key = KeyView::new(&record, Spend::default(), now_us / 1_000_000, day_of(now_us));
    Ok((StatusCode::CREATED, Json(Created { vault_key: vault_key.expose().to_owned(), key })))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only keys whose label starts with this.
    label_prefix: Option<String>,
    /// 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// Cursor: the last id of the previous page.
    starting_after: Option<String>,
}

/// A page of keys.
#[derive(Serialize, utoipa::ToSchema)]
pub struct KeyList {
    pub object: &'static str,
    pub data: Vec<KeyView>,
    pub has_more: bool,
}

/// Keys with their spend today.
async fn views(app: &App, keys: Vec<KeyRecord>) -> Result<Vec<KeyView>, AdminError> {
    let now_us = app.clock.now_us();
    let day = day_of(now_us);
    let spend: HashMap<String, Spend> = app.store.read(move |l| l.spend_by_key(day)).await?.into_iter().collect();
    Ok(keys
        .iter()
        .map(|k| KeyView::new(k, spend.get(&k.id).copied().unwrap_or_default(), now_us / 1_000_000, day))
        .collect())
}

#[utoipa::path(get, path = "/admin/vault_keys", tag = "vault keys", params(ListParams),
    responses((status = 200, description = "Keys, never their secrets", body = KeyList),
        AdminErrors))]
/// List vault keys.
pub async fn list(
    State(app): State<Arc<App>>,
    Extension(p): Extension<Principal>,
    AdminQuery(params): AdminQuery<ListParams>,
) -> Result<Json<KeyList>, AdminError> {
    p.require_admin()?;
    let limit = params.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(AdminError::invalid("limit", "limit must be between 1 and 1000"));
    }
    let query = KeyQuery { label_prefix: params.label_prefix, limit: limit + 1, after_id: params.starting_after };
    let mut keys = app.store.read(move |l| l.list_keys(&query)).await?;
    let has_more = keys.len() > limit;
    keys.truncate(limit);
    Ok(Json(KeyList { object: "list", data: views(&app, keys).await?, has_more }))
}

async fn one(app: &App, id: String) -> Result<KeyView, AdminError> {
    let missing = format!("No such vault key: '{id}'");
    let key = app.store.read(move |l| l.key_by_id(&id)).await?.ok_or(AdminError::NotFound(missing))?;
    views(app, vec![key]).await?.pop().ok_or(AdminError::Storage)
}

#[utoipa::path(get, path = "/admin/vault_keys/{id}", tag = "vault keys", params(("id" = String, Path, description = "Key id (key_...)")),
    responses((status = 200, description = "The key with its spend today", body = KeyView),
        (status = 404, description = "No such key", body = ErrorBody),
        AdminErrors))]
/// Show one vault key.
pub async fn show(
    State(app): State<Arc<App>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<KeyView>, AdminError> {
    p.require_admin()?;
    Ok(Json(one(&app, id).await?))
}

#[utoipa::path(delete, path = "/admin/vault_keys/{id}", tag = "vault keys", params(("id" = String, Path, description = "Key id (key_...)")),
    responses((status = 200, description = "Revoked", body = KeyView),
        (status = 404, description = "No such key", body = ErrorBody),
        AdminErrors))]
/// Revoke one key at once: the next request with it is refused.
pub async fn revoke(
    State(app): State<Arc<App>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<KeyView>, AdminError> {
    p.require_admin()?;
    let revoked = revoke_and_propagate(&app, RevokeSelector::Id(id.clone())).await?;
    if !revoked.ids.is_empty() {
        tracing::info!(key_id = %id, propagated = revoked.propagated, "vault key revoked");
    }
    Ok(Json(one(&app, id).await?))
}

#[utoipa::path(post, path = "/admin/vault_keys/{id}/reinstate", tag = "vault keys", params(("id" = String, Path, description = "Key id (key_...)")),
    responses((status = 200, description = "The key, no longer suspended", body = KeyView),
        (status = 404, description = "No such key", body = ErrorBody),
        AdminErrors))]
/// Lift a key's suspension (a call with it moved more than Keybrake priced):
/// after reviewing the audit row that suspended it. A revoked or expired key stays so.
pub async fn reinstate(
    State(app): State<Arc<App>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<KeyView>, AdminError> {
    p.require_admin()?;
    let (key_id, now_us) = (id.clone(), app.clock.now_us());
    let (hash, generation) = app
        .store
        .write(move |l| match l.reinstate_key(&key_id)? {
            Some(hash) => Ok((Some(hash), l.record_revocation(&[hash], now_us / 1_000_000)?)),
            None => Ok((None, 0)),
        })
        .await?;
    if let Some(hash) = hash {
        // Caches holding the suspended key drop it, and learn the key anew.
        app.keys.evict(&[hash]);
        let propagated = crate::revocation::wait_propagated(
            &app.store,
            &app.revocations,
            generation,
            now_us / 1000,
            PROPAGATION_TIMEOUT,
        )
        .await?;
        tracing::info!(key_id = %id, propagated, "vault key reinstated");
    }
    Ok(Json(one(&app, id).await?))
}

/// Revokes in the store, then waits until every Envoy worker's cache has
/// dropped the keys (bounded; `propagated` says whether it got there).
async fn revoke_and_propagate(app: &App, selector: RevokeSelector) -> Result<Revoked, AdminError> {
    let now_us = app.clock.now_us();
    let (revoked, generation) = revoke_in_store(app, selector).await?;
    let propagated = if generation == 0 {
        true
    } else {
        crate::revocation::wait_propagated(&app.store, &app.revocations, generation, now_us / 1000, PROPAGATION_TIMEOUT)
            .await?
    };
    if !propagated {
        tracing::warn!(
            generation,
            "revocation not acknowledged by every worker in time (their caches drop on disconnect)"
        );
    }
    let ids: Vec<String> = revoked.into_iter().map(|(id, _)| id).collect();
    Ok(Revoked { revoked: ids.len(), ids, propagated })
}

/// The first half of a revocation: revokes the selected keys in the store,
/// appends them to the revocation log and drops them from this replica's
/// cache. Returns the (id, hash) of each key revoked now and the log's
/// generation that carries them (0 when none was). The second half waits
/// until every worker applied that generation ([`crate::revocation::wait_propagated`];
/// the deterministic simulator polls [`crate::revocation::propagated`]).
pub async fn revoke_in_store(
    app: &App,
    selector: RevokeSelector,
) -> crate::store::StoreResult<(Vec<(String, [u8; 32])>, i64)> {
    let now_us = app.clock.now_us();
    let (revoked, generation) = app
        .store
        .write(move |l| {
            let revoked = l.revoke_keys(&selector, now_us / 1_000_000)?;
            let hashes: Vec<[u8; 32]> = revoked.iter().map(|(_, h)| *h).collect();
            let generation = if hashes.is_empty() { 0 } else { l.record_revocation(&hashes, now_us / 1_000_000)? };
            Ok((revoked, generation))
        })
        .await?;
    app.keys.evict(&revoked.iter().map(|(_, h)| *h).collect::<Vec<_>>());
    Ok((revoked, generation))
}

/// How long a revoke waits for every worker to drop the keys from its cache.
const PROPAGATION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Which keys to revoke.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokePrefix {
    /// Every active key whose label starts with this (must not be empty).
    #[schema(min_length = 1)]
    label_prefix: String,
}

/// What a revoke-by-prefix stopped.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Revoked {
    revoked: usize,
    ids: Vec<String>,
    /// Every Envoy worker acknowledged dropping the keys from its cache.
    propagated: bool,
}

#[utoipa::path(post, path = "/admin/vault_keys/revoke", tag = "vault keys", request_body = RevokePrefix,
    responses((status = 200, description = "Revoked", body = Revoked),
        AdminErrors))]
/// The kill switch: revoke every active key whose label starts with the prefix.
pub async fn revoke_prefix(
    State(app): State<Arc<App>>,
    Extension(p): Extension<Principal>,
    body: Bytes,
) -> Result<Json<Revoked>, AdminError> {
    p.require_admin()?;
    let RevokePrefix { label_prefix } = parse_json(&body)?;
    if label_prefix.is_empty() {
        return Err(AdminError::invalid("label_prefix", "label_prefix must not be empty"));
    }
    let revoked = revoke_and_propagate(&app, RevokeSelector::LabelPrefix(label_prefix.clone())).await?;
    tracing::info!(label_prefix = %label_prefix, count = revoked.revoked, propagated = revoked.propagated, "vault keys revoked by prefix");
    Ok(Json(revoked))
}

/// One key's spend today.
#[derive(Serialize, utoipa::ToSchema)]
pub struct UsageRow {
    id: String,
    label: String,
    #[schema(value_type = Option<f64>)]
    daily_usd_cap: Option<serde_json::Number>,
    #[schema(value_type = f64)]
    spent_today_usd: serde_json::Number,
    #[schema(value_type = f64)]
    reserved_usd: serde_json::Number,
    #[schema(value_type = f64)]
    uncertain_usd: serde_json::Number,
    state: crate::model::KeyState,
}

/// Spend today by key.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Usage {
    object: &'static str,
    /// The UTC day, YYYY-MM-DD.
    day: String,
    data: Vec<UsageRow>,
}

#[utoipa::path(get, path = "/admin/usage", tag = "vault keys",
    responses((status = 200, description = "Keys with spend today, most spent first", body = Usage),
        AdminErrors))]
/// Keys with spend today, most spent first.
pub async fn usage(State(app): State<Arc<App>>, Extension(p): Extension<Principal>) -> Result<Json<Usage>, AdminError> {
    p.require_admin()?;
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
    Ok(Json(Usage { object: "usage", day: day_text(day), data }))
}
