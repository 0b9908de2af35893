//! Usage: one charge, or a batch of charges sharing group commits.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::response::Response;
use purser_core::limits::{MAX_BATCH_ITEMS, MAX_IDEMPOTENCY_KEY_LEN};
use purser_core::{AccountId, Command, MemberId};
use purser_engine::{IdempotencyKey, Outcome, Submitted};
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
    let key = super::idempotency_key(&headers)?;
    let fields = Fields::parse(&body, &["items"])?;
    let items = required(fields.array("items")?, "items")?;
    if items.is_empty() || items.len() > MAX_BATCH_ITEMS {
        return Err(ApiError::invalid(
            "items",
            "items must hold 1 to 1000 charges",
        ));
    }
    let items: Vec<Result<(Command, IdempotencyKey)>> = items.iter().map(batch_command).collect();
    let Some(key) = key
        .map(|key| IdempotencyKey::new(&key, purser_wire::fingerprint("POST", BATCH_PATH, &body)))
    else {
        return Ok(json_response(200, run_batch(&state, items, actor).await.0));
    };
    // The batch's own key: a replay answers every item as the first time
    // (each charge by its item's key, each refusal as it was), and runs
    // nothing again; the same key with another batch is refused.
    if let Err(answered) = state.engine.claim(&key).await {
        let outcome = state.engine.settle(answered).await;
        if let Outcome::Answered { status: 200, body } = &outcome
            && let Some(first) = BatchRecord::decode(body, items.len())
        {
            return Ok(json_response(
                200,
                replay_batch(&state, &items, first).await,
            ));
        }
        let (status, body) = purser_wire::outcome(outcome);
        return Ok(json_response(status, body));
    }
    // No await between the claim and its guard; the batch runs in a task
    // of its own, so its key ends with it even if the client goes away.
    let mut claim = super::Claim {
        engine: state.engine.clone(),
        key: Some(key),
    };
    let task_state = state.clone();
    let done = tokio::spawn(async move {
        let (answer, record) = run_batch(&task_state, items, actor).await;
        if let Some(key) = claim.key.take() {
            claim.engine.finish(&key, 200, &record.encode()).await;
        }
        answer
    })
    .await;
    Ok(match done {
        Ok(answer) => json_response(200, answer),
        Err(_) => ApiError::internal("the batch could not be completed").into_response(),
    })
}

const BATCH_PATH: &str = "/v1/usage/batch";

/// Runs a batch's items: every valid item is queued before any is awaited,
/// so they share group commits; their keys are claimed together (the ones
/// that need the store are looked up in one task). The answer, and what a
/// replay under the batch's key needs of it.
async fn run_batch(
    state: &AppState,
    items: Vec<Result<(Command, IdempotencyKey)>>,
    actor: purser_engine::Actor,
) -> (Vec<u8>, BatchRecord) {
    let mut refused: Vec<Option<ApiError>> = Vec::with_capacity(items.len());
    let mut valid = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Ok((command, key)) => {
                valid.push((command, Some(key)));
                refused.push(None);
            }
            Err(error) => refused.push(Some(error)),
        }
    }
    let mut started = state.engine.start_all(valid, actor).await.into_iter();
    let mut results = objects::BatchResults::new(refused.len());
    let mut record = BatchRecord(Vec::with_capacity(refused.len()));
    for item in refused {
        let (status, answer) = match item {
            None => {
                let submitted: Submitted = started.next().expect("one a valid item");
                purser_wire::outcome(state.engine.settle(submitted).await)
            }
            Some(error) => (error.status, error.body()),
        };
        results.push(status, &answer);
        record.0.push(match status {
            // Accepted: its own key answers it again.
            200..=299 => (status, None),
            // Refused: answered again as it was.
            400..=499 => (status, Some(answer)),
            // Not known to be applied or not (a timeout, say): its key
            // tells on a replay.
            _ => (status, None),
        });
    }
    (results.finish(), record)
}

/// A replay of a batch under its key: each item that was accepted or not
/// answered is claimed again by its own key (a replay of its charge, or
/// the outcome of one still unknown); each refused item is refused as it
/// was.
async fn replay_batch(
    state: &AppState,
    items: &[Result<(Command, IdempotencyKey)>],
    first: BatchRecord,
) -> Vec<u8> {
    let mut results = objects::BatchResults::new(items.len());
    for (item, (status, refusal)) in items.iter().zip(first.0) {
        let (status, answer) = match (refusal, item) {
            (Some(refusal), _) => (status, refusal),
            (None, Ok((_, key))) => match state.engine.claim(key).await {
                Err(answered) => purser_wire::outcome(state.engine.settle(answered).await),
                // Its record is gone (it expired first): it is not run
                // again under the batch's replay.
                Ok(()) => {
                    state.engine.release(&key.key);
                    let error = ApiError::idempotency(
                        "idempotency_key_expired",
                        "this item's remembered answer has expired; send it again under its own key",
                    );
                    (error.status, error.body())
                }
            },
            (None, Err(error)) => (error.status, error.body()),
        };
        results.push(status, &answer);
    }
    results.finish()
}

/// What a batch's key remembers: each item's first status, and the answer
/// of each refused one (an accepted item's answer is its own key's). A
/// marker byte no JSON starts with, then per item its status and, for a
/// refusal, the answer's length and bytes.
struct BatchRecord(Vec<(u16, Option<Vec<u8>>)>);

const BATCH_MARKER: [u8; 2] = [1, 1];

impl BatchRecord {
    fn encode(&self) -> Vec<u8> {
        let mut out = BATCH_MARKER.to_vec();
        for (status, refusal) in &self.0 {
            out.extend_from_slice(&status.to_le_bytes());
            if let Some(answer) = refusal {
                out.extend_from_slice(&(answer.len() as u32).to_le_bytes());
                out.extend_from_slice(answer);
            }
        }
        out
    }

    /// `None` unless `bytes` is a record of a batch of `items` items.
    fn decode(bytes: &[u8], items: usize) -> Option<BatchRecord> {
        let mut rest = bytes.strip_prefix(&BATCH_MARKER[..])?;
        let mut record = Vec::with_capacity(items);
        for _ in 0..items {
            let (status, tail) = rest.split_first_chunk::<2>()?;
            let status = u16::from_le_bytes(*status);
            rest = tail;
            let refusal = if (400..500).contains(&status) {
                let (len, tail) = rest.split_first_chunk::<4>()?;
                let len = usize::try_from(u32::from_le_bytes(*len)).ok()?;
                if len > tail.len() {
                    return None;
                }
                let (answer, tail) = tail.split_at(len);
                rest = tail;
                Some(answer.to_vec())
            } else {
                None
            };
            record.push((status, refusal));
        }
        rest.is_empty().then_some(BatchRecord(record))
    }
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
