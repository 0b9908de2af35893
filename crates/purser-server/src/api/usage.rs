//! Usage: one charge, or a batch of charges sharing group commits.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use purser_core::limits::{MAX_BATCH_ITEMS, MAX_IDEMPOTENCY_KEY_LEN};
use purser_core::{AccountId, Command, MemberId};
use purser_engine::{IdempotencyKey, Submitted};
use purser_wire::{ApiError, Fields, json_response, objects, required};
use serde_json::Value;

use super::{AppState, JsonBody, Result, account_path, mutate};
use crate::auth::Need;

const CHARGE_FIELDS: [&str; 6] = ["task", "quantity", "credits", "member", "mode", "metadata"];

fn charge_command(account: AccountId, fields: &Fields) -> Result<Command> {
    Ok(Command::Charge {
        account,
        amount: fields.amount()?,
        member: fields.id("member", MemberId::parse)?,
        mode: fields.mode()?,
        metadata: fields.metadata("metadata")?.unwrap_or_default(),
    })
}

pub(super) async fn charge(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Response {
    let path = format!("/v1/accounts/{id}/usage");
    mutate(&state, &headers, Need::Usage, &path, &body, |body| {
        let fields = Fields::parse(body, &CHARGE_FIELDS)?;
        charge_command(account_path(&id)?, &fields)
    })
    .await
}

pub(super) async fn batch(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Response> {
    let actor = state.keys.authorize(&headers, Need::Usage)?;
    let fields = Fields::parse(&body, &["items"])?;
    let items = required(fields.array("items")?, "items")?;
    if items.is_empty() || items.len() > MAX_BATCH_ITEMS {
        return Err(ApiError::invalid(
            "items",
            "items must hold 1 to 1000 charges",
        ));
    }
    // Every item is queued before any is awaited, so they share group
    // commits; their keys are claimed together (the ones that need the
    // store are looked up in one task).
    let mut refused: Vec<Option<ApiError>> = Vec::with_capacity(items.len());
    let mut valid = Vec::with_capacity(items.len());
    for item in items {
        match batch_command(item) {
            Ok((command, key)) => {
                valid.push((command, Some(key)));
                refused.push(None);
            }
            Err(error) => refused.push(Some(error)),
        }
    }
    let mut started = state.engine.start_all(valid, actor).await.into_iter();
    let mut results = objects::BatchResults::new(refused.len());
    for item in refused {
        let (status, answer) = match item {
            None => {
                let submitted: Submitted = started.next().expect("one a valid item");
                purser_wire::outcome(state.engine.settle(submitted).await)
            }
            Some(error) => (error.status, error.body()),
        };
        results.push(status, &answer);
    }
    Ok(json_response(200, results.finish()))
}

/// An item's command and key, in the same key space as single charges: its
/// fingerprint is that of the single charge
/// (`POST /v1/accounts/{account}/usage` with the item's other fields).
fn batch_command(item: &Value) -> Result<(Command, IdempotencyKey)> {
    let map = item
        .as_object()
        .ok_or_else(|| ApiError::invalid("items", "each item must be an object"))?;
    let mut allowed: Vec<&str> = CHARGE_FIELDS.to_vec();
    allowed.extend(["account", "idempotency_key"]);
    let fields = Fields::from_map(map.clone(), &allowed)?;
    let account = required(fields.id("account", AccountId::parse)?, "account")?;
    let key = required(fields.string("idempotency_key")?, "idempotency_key")?.to_owned();
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err(ApiError::invalid(
            "idempotency_key",
            "idempotency_key must be 1-255 characters",
        ));
    }
    let command = charge_command(account.clone(), &fields)?;
    let single = fields.canonical_without(&["account", "idempotency_key"]);
    let path = format!("/v1/accounts/{account}/usage");
    let fingerprint = purser_wire::fingerprint_canonical("POST", &path, &single);
    Ok((command, IdempotencyKey::new(&key, fingerprint)))
}
