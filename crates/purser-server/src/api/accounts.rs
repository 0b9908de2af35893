//! Accounts: open, update, close, change tier, read, balance, list.

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use purser_core::{AccountId, AccountUpdate, Command, MAX_THRESHOLDS, Proration, TierId};
use purser_engine::Read;
use purser_wire::{ApiError, Fields, json_response, objects, required};

use super::{
    AppState, JsonBody, QueryMap, Result, account_handle, account_path, list_limit, mutate,
    read_account,
};
use crate::auth::Need;

pub(super) async fn create_account(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Response {
    mutate(
        &state,
        &headers,
        Need::Admin,
        "/v1/accounts",
        &body,
        |body| {
            let fields = Fields::parse(
                body,
                &[
                    "id",
                    "name",
                    "tier",
                    "anchor",
                    "member_monthly_cap",
                    "metadata",
                    "low_balance_thresholds",
                    "auto_recharge",
                ],
            )?;
            Ok(Command::OpenAccount {
                id: required(fields.id("id", AccountId::parse)?, "id")?,
                name: fields.string("name")?.map(str::to_owned),
                tier: required(fields.id("tier", TierId::parse)?, "tier")?,
                anchor: fields.time("anchor")?,
                member_monthly_cap: fields.credits("member_monthly_cap")?,
                metadata: fields.metadata("metadata")?.unwrap_or_default(),
                low_balance_thresholds: fields
                    .credits_list("low_balance_thresholds", MAX_THRESHOLDS)?,
                auto_recharge: fields.auto_recharge("auto_recharge")?.map(Box::new),
            })
        },
    )
    .await
}

pub(super) async fn update_account(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Response {
    let path = format!("/v1/accounts/{id}");
    mutate(&state, &headers, Need::Admin, &path, &body, |body| {
        let fields = Fields::parse(
            body,
            &[
                "name",
                "metadata",
                "member_monthly_cap",
                "low_balance_thresholds",
                "auto_recharge",
            ],
        )?;
        // An object sets auto-recharge (all of it); null removes it.
        let auto_recharge = if fields.has("auto_recharge") {
            Some(fields.auto_recharge("auto_recharge")?.map(Box::new))
        } else if fields.is_null("auto_recharge") {
            Some(None)
        } else {
            None
        };
        // A list sets the account's own thresholds; null goes back to its
        // tier's.
        let thresholds = if fields.has("low_balance_thresholds") {
            Some(fields.credits_list("low_balance_thresholds", MAX_THRESHOLDS)?)
        } else if fields.is_null("low_balance_thresholds") {
            Some(None)
        } else {
            None
        };
        let cap = if fields.has("member_monthly_cap") {
            Some(fields.credits("member_monthly_cap")?)
        } else if fields.is_null("member_monthly_cap") {
            Some(None)
        } else {
            None
        };
        Ok(Command::UpdateAccount {
            account: account_path(&id)?,
            update: AccountUpdate {
                name: fields.string("name")?.map(Into::into),
                metadata: fields.metadata("metadata")?,
                member_monthly_cap: cap,
                low_balance_thresholds: thresholds,
                auto_recharge,
            },
        })
    })
    .await
}

pub(super) async fn close_account(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Response {
    let path = format!("/v1/accounts/{id}/close");
    mutate(&state, &headers, Need::Admin, &path, &body, |body| {
        Fields::parse(body, &[])?;
        Ok(Command::CloseAccount {
            account: account_path(&id)?,
        })
    })
    .await
}

pub(super) async fn change_tier(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Response {
    let path = format!("/v1/accounts/{id}/tier");
    mutate(&state, &headers, Need::Admin, &path, &body, |body| {
        let fields = Fields::parse(body, &["tier", "proration"])?;
        let proration = match fields.choice("proration", &["full", "prorated", "none"])? {
            Some(1) => Proration::Prorated,
            Some(2) => Proration::None,
            _ => Proration::Full,
        };
        Ok(Command::ChangeTier {
            account: account_path(&id)?,
            tier: required(fields.id("tier", TierId::parse)?, "tier")?,
            proration,
        })
    })
    .await
}

pub(super) async fn get_account(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    read_account(&state, &headers, Need::Read, &id, Read::Account).await
}

pub(super) async fn balance(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    read_account(&state, &headers, Need::Balance, &id, Read::Balance).await
}

pub(super) async fn list_accounts(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): QueryMap,
) -> Result<Response> {
    let caller = state.keys.authorize(&headers, Need::Read)?;
    // All accounts: paced per API key, so one looping client waits alone.
    super::pace(&state, &super::paced_per_key("*accounts", &caller)).await?;
    let limit = list_limit(&query)?;
    let before = match query.get("starting_after") {
        None => None,
        Some(id) => {
            let (_, created) = account_handle(&state, id)
                .await
                .map_err(|_| ApiError::invalid("starting_after", "no such account"))?;
            Some((
                created,
                AccountId::parse(id)
                    .map_err(|_| ApiError::invalid("starting_after", "no such account"))?,
            ))
        }
    };
    let page = state.engine.accounts(before, limit).await?;
    Ok(json_response(
        200,
        objects::rendered_list(&page.accounts, page.has_more),
    ))
}
