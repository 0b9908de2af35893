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
    // (each charge by its item's key, each refusal as it was; an item that
    // did not run is run under its own key); the same key with another
    // batch is refused.
    if let Err(answered) = state.engine.claim(&key).await {
        let outcome = state.engine.settle(answered).await;
        if let Outcome::Answered { status: 200, body } = &outcome {
            let Some(first) = BatchRecord::decode(body, items.len()) else {
                tracing::error!("a batch's remembered answer could not be read");
                return Err(ApiError::internal(
                    "the remembered answer of this key could not be read",
                ));
            };
            return Ok(json_response(
                200,
                replay_batch(&state, items, first, actor).await,
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
            200..=299 => (status, Item::ByKey),
            // Not run, or not known to be (busy, timed out, its key in
            // use): run again on a replay, under its own key, which keeps
            // it from being applied twice.
            429 | 500..=599 => (status, Item::Again),
            409 if error_code(&answer).as_deref() == Some("idempotency_key_in_use") => {
                (status, Item::Again)
            }
            // Refused: answered again as it was.
            _ => (status, Item::Refused(answer)),
        });
    }
    (results.finish(), record)
}

fn error_code(answer: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(answer).ok()?;
    value["error"]["code"].as_str().map(str::to_owned)
}

/// A replay of a batch under its key: each accepted item is answered by
/// its own key, each refused item as it was, and each item that did not
/// run (or whose outcome was unknown) is run again under its own key.
async fn replay_batch(
    state: &AppState,
    items: Vec<Result<(Command, IdempotencyKey)>>,
    first: BatchRecord,
    actor: purser_engine::Actor,
) -> Vec<u8> {
    let mut answers: Vec<Option<(u16, Vec<u8>)>> = Vec::with_capacity(items.len());
    let mut again = Vec::new();
    for (item, (status, kind)) in items.into_iter().zip(first.0) {
        answers.push(match (kind, item) {
            (Item::Refused(answer), _) => Some((status, answer)),
            (_, Err(error)) => Some((error.status, error.body())),
            (Item::Again, Ok((command, key))) => {
                again.push((command, Some(key)));
                None
            }
            (Item::ByKey, Ok((_, key))) => Some(match state.engine.claim(&key).await {
                Err(answered) => purser_wire::outcome(state.engine.settle(answered).await),
                // Its record is gone (it expired first): not run again.
                Ok(()) => {
                    state.engine.release(&key.key);
                    let error = ApiError::idempotency(
                        "idempotency_key_expired",
                        "this item's remembered answer has expired; send it again under its own key",
                    );
                    (error.status, error.body())
                }
            }),
        });
    }
    let mut started = state.engine.start_all(again, actor).await.into_iter();
    let mut results = objects::BatchResults::new(answers.len());
    for answer in answers {
        let (status, answer) = match answer {
            Some(answer) => answer,
            None => {
                let submitted: Submitted = started.next().expect("one an item run again");
                purser_wire::outcome(state.engine.settle(submitted).await)
            }
        };
        results.push(status, &answer);
    }
    results.finish()
}

/// What a batch's key remembers: each item's first status and how a
/// replay answers it (an accepted item's answer is its own key's). A
/// marker no JSON starts with, then per item its status, its kind and, for
/// a refusal, the answer's length and bytes.
struct BatchRecord(Vec<(u16, Item)>);

enum Item {
    ByKey,
    Refused(Vec<u8>),
    Again,
}

const BATCH_MARKER: [u8; 2] = [1, 2];

impl BatchRecord {
    fn encode(&self) -> Vec<u8> {
        let mut out = BATCH_MARKER.to_vec();
        for (status, item) in &self.0 {
            out.extend_from_slice(&status.to_le_bytes());
            match item {
                Item::ByKey => out.push(0),
                Item::Again => out.push(2),
                Item::Refused(answer) => {
                    out.push(1);
                    out.extend_from_slice(&(answer.len() as u32).to_le_bytes());
                    out.extend_from_slice(answer);
                }
            }
        }
        out
    }

    /// `None` unless `bytes` is a record of a batch of `items` items.
    fn decode(bytes: &[u8], items: usize) -> Option<BatchRecord> {
        let mut rest = bytes.strip_prefix(&BATCH_MARKER[..])?;
        let mut record = Vec::with_capacity(items.min(MAX_BATCH_ITEMS));
        for _ in 0..items {
            let (head, tail) = rest.split_first_chunk::<3>()?;
            let status = u16::from_le_bytes([head[0], head[1]]);
            rest = tail;
            let item = match head[2] {
                0 => Item::ByKey,
                2 => Item::Again,
                1 => {
                    let (len, tail) = rest.split_first_chunk::<4>()?;
                    let len = usize::try_from(u32::from_le_bytes(*len)).ok()?;
                    if len > tail.len() {
                        return None;
                    }
                    let (answer, tail) = tail.split_at(len);
                    rest = tail;
                    Item::Refused(answer.to_vec())
                }
                _ => return None,
            };
            record.push((status, item));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A record reads back as written; cut short, with bytes to spare, or
    /// for another number of items, it is refused, never misread.
    #[test]
    fn a_batch_record_reads_back_as_written() {
        let record = BatchRecord(vec![
            (201, Item::ByKey),
            (402, Item::Refused(br#"{"error":{}}"#.to_vec())),
            (503, Item::Again),
        ]);
        let bytes = record.encode();
        let read = BatchRecord::decode(&bytes, 3).expect("reads back");
        assert_eq!(read.encode(), bytes);
        assert!(
            matches!(read.0[1], (402, Item::Refused(ref answer)) if answer == br#"{"error":{}}"#)
        );
        assert!(BatchRecord::decode(&bytes[..bytes.len() - 1], 3).is_none());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(BatchRecord::decode(&longer, 3).is_none());
        assert!(BatchRecord::decode(&bytes, 2).is_none());
        assert!(BatchRecord::decode(br#"{"object":"list"}"#, 1).is_none());
    }
}
