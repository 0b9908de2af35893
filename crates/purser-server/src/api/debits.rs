//! Debits: read one back from the journal, reverse it.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use purser_core::{Command, DebitRecord, Entry, ObjectId, ObjectKind};
use purser_wire::{ApiError, Fields, json_response, objects};

use super::{AppState, JsonBody, Result, account_of, idempotency_key, object_id, submit};
use crate::auth::Need;

/// The stored record of a debit, for reversal and `GET /v1/debits/{id}`.
async fn debit_record(state: &AppState, debit: ObjectId) -> Result<(Entry, DebitRecord)> {
    let entry = state
        .engine
        .query(move |store| store.entry(debit.account, debit.seq))
        .await?;
    let missing = || ApiError::not_found("debit_not_found", "no such debit");
    let entry = entry.ok_or_else(missing)?;
    let record = DebitRecord::from_entry(debit, &entry).ok_or_else(missing)?;
    Ok((entry, record))
}

pub(super) async fn get_debit(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response> {
    state.keys.authorize(&headers, Need::Read)?;
    let debit = object_id(ObjectKind::Debit, &id, "debit_not_found")?;
    let (entry, _) = debit_record(&state, debit).await?;
    let Some(account) = account_of(&state, debit.account).await? else {
        return Err(ApiError::not_found("debit_not_found", "no such debit"));
    };
    let account_id = account["id"].as_str().unwrap_or_default();
    Ok(json_response(200, objects::debit(account_id, &id, &entry)))
}

pub(super) async fn reverse(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response> {
    let actor = state.keys.authorize(&headers, Need::Admin)?;
    let key = idempotency_key(&headers)?;
    let fields = Fields::parse(&body, &["credits", "reason"])?;
    let credits = fields.credits("credits")?;
    let debit = object_id(ObjectKind::Debit, &id, "debit_not_found")?;
    let (_, record) = debit_record(&state, debit).await?;
    let command = Command::Reverse {
        debit: record,
        credits,
    };
    Ok(submit(
        &state,
        command,
        key,
        &format!("/v1/debits/{id}/reverse"),
        &body,
        actor,
    )
    .await)
}
