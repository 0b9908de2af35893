//! Holds: place, capture, release, read (from memory while active, from the journal once settled).

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use purser_core::limits::DEFAULT_HOLD_TTL_SECONDS;
use purser_core::{Body, CaptureAmount, Command, MemberId, ObjectId, ObjectKind};
use purser_engine::{Actor, Read};
use purser_wire::{ApiError, Fields, json_response, objects};

use super::{
    AppState, JsonBody, Result, account_of, account_path, idempotency_key, mutate, object_id,
    submit,
};
use crate::auth::Need;

pub(super) async fn place_hold(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Response {
    let path = format!("/v1/accounts/{id}/holds");
    mutate(&state, &headers, Need::Usage, &path, &body, |body| {
        let fields = Fields::parse(
            body,
            &[
                "credits",
                "task",
                "quantity",
                "ttl_seconds",
                "member",
                "metadata",
            ],
        )?;
        let ttl_seconds = fields
            .integer("ttl_seconds")?
            .unwrap_or(DEFAULT_HOLD_TTL_SECONDS);
        if !(1..=purser_core::limits::MAX_HOLD_TTL_SECONDS).contains(&ttl_seconds) {
            return Err(ApiError::invalid(
                "ttl_seconds",
                "ttl_seconds must be from 1 to 86400",
            ));
        }
        Ok(Command::PlaceHold {
            account: account_path(&id)?,
            amount: fields.amount()?,
            ttl_seconds,
            member: fields.id("member", MemberId::parse)?,
            metadata: fields.metadata("metadata")?.unwrap_or_default(),
        })
    })
    .await
}

/// A settling command refused with 409 `hold_not_active` for an id that never
/// named a hold is a 404 instead.
async fn settle_hold(
    state: &AppState,
    headers: &HeaderMap,
    path: &str,
    hold: ObjectId,
    body: &[u8],
    command: Command,
    actor: Actor,
) -> Response {
    let response = submit(
        state,
        command,
        idempotency_key(headers).unwrap_or_default(),
        path,
        body,
        actor,
    )
    .await;
    if response.status().as_u16() != 409 {
        return response;
    }
    let placed = state
        .engine
        .query(move |store| store.entry(hold.account, hold.seq))
        .await;
    match placed {
        Ok(Some(entry)) if entry.body.creates(ObjectKind::Hold) => response,
        Ok(_) => ApiError::not_found("hold_not_found", "no such hold").into_response(),
        Err(error) => ApiError::from(error).into_response(),
    }
}

pub(super) async fn capture(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response> {
    let actor = state.keys.authorize(&headers, Need::Usage)?;
    idempotency_key(&headers)?;
    let hold = object_id(ObjectKind::Hold, &id, "hold_not_found")?;
    let fields = Fields::parse(&body, &["credits", "quantity", "mode"])?;
    let amount = match (fields.credits("credits")?, fields.quantity("quantity")?) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "parameter_conflict",
                "give credits or quantity, not both",
            ));
        }
        (Some(credits), None) => CaptureAmount::Credits(credits),
        (None, Some(quantity)) => CaptureAmount::Quantity(quantity),
        (None, None) => CaptureAmount::Hold,
    };
    let command = Command::CaptureHold {
        hold,
        amount,
        mode: fields.mode()?,
    };
    Ok(settle_hold(
        &state,
        &headers,
        &format!("/v1/holds/{id}/capture"),
        hold,
        &body,
        command,
        actor,
    )
    .await)
}

pub(super) async fn release(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response> {
    let actor = state.keys.authorize(&headers, Need::Usage)?;
    idempotency_key(&headers)?;
    let hold = object_id(ObjectKind::Hold, &id, "hold_not_found")?;
    Fields::parse(&body, &[])?;
    let command = Command::ReleaseHold { hold };
    Ok(settle_hold(
        &state,
        &headers,
        &format!("/v1/holds/{id}/release"),
        hold,
        &body,
        command,
        actor,
    )
    .await)
}

pub(super) async fn get_hold(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response> {
    state.keys.authorize(&headers, Need::Read)?;
    let hold = object_id(ObjectKind::Hold, &id, "hold_not_found")?;
    let active = state.engine.read(Read::Hold(hold)).await?;
    if active.status == 200 {
        return Ok(json_response(200, active.body));
    }
    settled_hold(&state, hold).await
}

/// A hold no longer active: rebuilt from its journal entries.
async fn settled_hold(state: &AppState, hold: ObjectId) -> Result<Response> {
    let missing = || ApiError::not_found("hold_not_found", "no such hold");
    let entry = state
        .engine
        .query(move |store| store.entry(hold.account, hold.seq))
        .await?
        .ok_or_else(missing)?;
    let Body::Held(placed) = &entry.body else {
        return Err(missing());
    };
    let ended = state
        .engine
        .query(move |store| store.hold_end(hold))
        .await?;
    let Some(account) = account_of(state, hold.account).await? else {
        return Err(missing());
    };
    Ok(json_response(
        200,
        objects::settled_hold(hold, &account["id"], placed, ended.as_ref()),
    ))
}
