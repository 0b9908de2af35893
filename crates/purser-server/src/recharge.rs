//! The recharger: asks the payment provider to charge the saved payment
//! method for each purchase auto-recharge made (API.md "Alerts and
//! auto-recharge").
//!
//! The ledger makes the purchase in the same commit as the command that
//! crossed the threshold; this task follows the outbox for their
//! `purchase.created` events (only on the writer, like webhook delivery),
//! charges through the provider, and settles the purchase with what it
//! answered: paid (complete), declined (fail, with the reason), under way
//! (the provider's webhook settles it), or left to the operator (`manual`).
//! Its cursor is kept in the store, so after a restart or a failover the
//! events after it are charged again: the provider's idempotency key (the
//! purchase) and the ledger's (the purchase and the step) make that safe.

use std::sync::Arc;
use std::time::Duration;

use purser_core::{Actor, Command, EventType, ObjectId, ObjectKind};
use purser_engine::{Engine, IdempotencyKey};
use purser_portal::payments::{Charge, CheckoutRequest, PaymentProvider};
use purser_store::EventQuery;
use serde_json::Value;

/// The store setting that holds the outbox position read up to.
const CURSOR_SETTING: &str = "recharge.cursor";
/// Events read at once.
const PAGE: usize = 100;
/// Waits between tries of a provider that does not answer.
const RETRIES: [u64; 4] = [2, 10, 60, 300];

/// The running recharger; it stops when this is dropped.
#[derive(Debug)]
pub struct Recharger {
    _stop: tokio::sync::watch::Sender<bool>,
}

impl Recharger {
    /// Starts following the outbox on the current tokio runtime.
    pub fn start(engine: Engine, payments: Arc<dyn PaymentProvider>) -> Recharger {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(run(engine, payments, stopped));
        }
        Recharger { _stop: stop }
    }
}

async fn run(
    engine: Engine,
    payments: Arc<dyn PaymentProvider>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut committed = engine.events_committed();
    // Where it stopped; on the first start ever, the outbox's end (there
    // was no auto-recharge before).
    let mut cursor = loop {
        let read = engine
            .query(|store| {
                Ok(match store.setting(CURSOR_SETTING)? {
                    Some(text) => text.parse::<u64>().ok(),
                    None => None,
                }
                .map_or_else(
                    || store.last_event().map(|end| (end, true)),
                    |c| Ok((c, false)),
                ))
            })
            .await;
        match read {
            Ok(Ok((cursor, fresh))) => {
                if fresh {
                    let text = cursor.to_string();
                    let _ = engine
                        .query(move |store| store.set_setting(CURSOR_SETTING, &text))
                        .await;
                }
                break cursor;
            }
            _ => {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(5)) => continue,
                    _ = stop.changed() => return,
                }
            }
        }
    };
    loop {
        let after = cursor;
        let page = engine
            .query(move |store| {
                store.events(&EventQuery {
                    account: None,
                    kind: Some(EventType::PurchaseCreated),
                    before: None,
                    after: Some(after),
                    limit: PAGE,
                })
            })
            .await;
        let events = match page {
            Ok(events) => events,
            Err(error) => {
                tracing::warn!(?error, "the recharger could not read the outbox");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(5)) => continue,
                    _ = stop.changed() => return,
                }
            }
        };
        let full = events.len() == PAGE;
        for stored in events {
            if let Some(request) = recharge_request(&engine, &stored.event.body) {
                settle(&engine, &*payments, &request, &mut stop).await;
            }
            cursor = stored.position;
        }
        if cursor != after {
            let text = cursor.to_string();
            if let Err(error) = engine
                .query(move |store| store.set_setting(CURSOR_SETTING, &text))
                .await
            {
                tracing::warn!(?error, "the recharger could not keep its cursor");
            }
        }
        if full {
            continue;
        }
        tokio::select! {
            _ = committed.changed() => {}
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// The charge an auto-recharge's `purchase.created` event asks for.
fn recharge_request(engine: &Engine, body: &[u8]) -> Option<CheckoutRequest> {
    let event: Value = serde_json::from_slice(body).ok()?;
    let purchase = &event["data"]["purchase"];
    if purchase["auto_recharge"] != Value::Bool(true) {
        return None;
    }
    CheckoutRequest::for_purchase(purchase, engine.catalog(), String::new(), String::new())
}

/// Charges one recharge and settles its purchase; a provider that does not
/// answer is tried again a few times, then the purchase is left pending
/// (the operator can complete or fail it) and the next one is taken.
async fn settle(
    engine: &Engine,
    payments: &dyn PaymentProvider,
    request: &CheckoutRequest,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) {
    let Some(purchase) = ObjectId::parse(ObjectKind::Purchase, &request.purchase) else {
        return;
    };
    for (attempt, wait) in RETRIES.iter().enumerate() {
        let (command, step) = match payments.charge_saved(request).await {
            Ok(Charge::Confirmed) => (Command::CompletePurchase { purchase }, "complete"),
            Ok(Charge::Failed(reason)) => (
                Command::FailPurchase {
                    purchase,
                    reason: Some(reason),
                },
                "fail",
            ),
            Ok(Charge::Processing | Charge::AwaitingConfirmation) => return,
            Err(error) => {
                tracing::warn!(purchase = %request.purchase, attempt, code = error.code, message = %error.message, "auto-recharge: the payment provider did not answer");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(*wait)) => continue,
                    _ = stop.changed() => return,
                }
            }
        };
        let name = format!("recharge:{}:{step}", request.purchase);
        let key = IdempotencyKey::new(
            &name,
            purser_wire::fingerprint("POST", "/internal/recharge", name.as_bytes()),
        );
        let (status, body) =
            purser_wire::outcome(engine.run(command, Some(key), Actor::System).await);
        if !(200..300).contains(&status) && status != 409 {
            tracing::warn!(purchase = %request.purchase, status, body = %String::from_utf8_lossy(&body), "auto-recharge: settling the purchase failed");
        }
        return;
    }
    tracing::error!(purchase = %request.purchase, "auto-recharge: the payment provider did not answer; the purchase stays pending");
}
