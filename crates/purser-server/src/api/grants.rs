//! Grants: issue, void, list.

use axum::extract::Query;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use purser_core::{Command, GrantKind, ObjectKind};
use purser_wire::{ApiError, Fields, required};

use super::{
    AppState, JsonBody, QueryMap, Result, account_path, idempotency_key, list_in_memory, mutate,
    object_id, submit,
};
use crate::auth::Need;

pub(super) async fn issue_grant(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Response {
    let path = format!("/v1/accounts/{id}/grants");
    mutate(&state, &headers, Need::Admin, &path, &body, |body| {
        let fields = Fields::parse(
            body,
            &["credits", "kind", "expires_at", "priority", "reason"],
        )?;
        let kind = match fields.string("kind")? {
            None => GrantKind::Promo,
            Some(text) => GrantKind::parse(text)
                .ok_or_else(|| ApiError::invalid("kind", "kind must be promo or package"))?,
        };
        let priority =
            match fields.integer("priority")? {
                None => None,
                Some(p) => Some(u16::try_from(p).map_err(|_| {
                    ApiError::invalid("priority", "priority must be from 0 to 1000")
                })?),
            };
        let reason = required(fields.string("reason")?, "reason")?;
        if reason.trim().is_empty() {
            return Err(ApiError::invalid("reason", "reason must not be empty"));
        }
        Ok(Command::IssueGrant {
            account: account_path(&id)?,
            kind,
            credits: required(fields.credits("credits")?, "credits")?,
            expires_at: fields.time("expires_at")?,
            priority,
            reason: reason.to_owned(),
        })
    })
    .await
}

pub(super) async fn void_grant(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response> {
    let actor = state.keys.authorize(&headers, Need::Admin)?;
    let key = idempotency_key(&headers)?;
    let grant = object_id(ObjectKind::Grant, &id, "grant_not_found")?;
    Fields::parse(&body, &["reason"])?;
    let response = submit(
        &state,
        Command::VoidGrant { grant },
        key,
        &format!("/v1/grants/{id}/void"),
        &body,
        actor,
    )
    .await;
    if response.status().as_u16() != 404 {
        return Ok(response);
    }
    // Expired or voided grants leave memory once empty: the journal knows them.
    let entry = state
        .engine
        .query(move |store| store.entry(grant.account, grant.seq))
        .await?;
    Ok(match entry {
        Some(entry) if entry.body.creates(ObjectKind::Grant) => ApiError::conflict(
            "grant_not_live",
            "the grant has already expired or been voided",
        )
        .into_response(),
        _ => response,
    })
}

pub(super) async fn list_grants(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): QueryMap,
) -> Response {
    list_in_memory(&state, &headers, &id, &query, ObjectKind::Grant).await
}
