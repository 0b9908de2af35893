//! Events on the wire: the event object of API.md ("Events and webhooks"),
//! rendered once on the shard thread and stored in the outbox as it is, and
//! the webhook payload built from it.

use purser_core::events::renewal;
use purser_core::{Body, EventType, ObjectKind, TierChange};
use purser_engine::{Actor, EventContext};
use serde_json::{Map, Value, json};

use crate::render::{
    BalanceJson, Text, account_json, object_id, purchase_json, to_json, transaction_json,
};

/// The actor of a change, as events and transactions show it.
pub fn actor_json(actor: &Actor) -> Value {
    json!({ "type": actor.kind(), "id": actor.id() })
}

/// An event as the API shows it: `{"object": "event", "id", "type",
/// "account", "created_at", "sequence", "actor", "data"}`.
pub fn event_body(cx: &EventContext<'_>) -> Vec<u8> {
    let event = cx.event;
    let account = cx.account;
    let entry = &cx.entries[event.entry];
    let balance = || serde_json::to_value(BalanceJson::new(account, cx.now)).unwrap_or(Value::Null);
    let mut data = Map::new();
    match event.kind {
        EventType::AccountCreated | EventType::AccountClosed => {
            data.insert("account".into(), account_json(account, cx.now));
        }
        EventType::CreditsLow => {
            if let Some(threshold) = event.threshold {
                data.insert("threshold".into(), json!(threshold.to_string()));
            }
            insert_cause(&mut data, cx);
            data.insert("balance".into(), balance());
        }
        EventType::CreditsDepleted | EventType::CreditsRecovered | EventType::BudgetExhausted => {
            insert_cause(&mut data, cx);
            data.insert("balance".into(), balance());
        }
        EventType::DebtIncurred => {
            data.insert("debt".into(), json!(account.debt().to_string()));
            let charge = cx.entries.iter().rev().find(|e| {
                matches!(&e.body, Body::Debited(d) if !d.debt_incurred.is_zero())
                    || matches!(&e.body, Body::Captured(c) if !c.debt_incurred.is_zero())
            });
            if let Some(charge) = charge {
                data.insert(
                    "debit".into(),
                    json!(object_id(charge.account, charge.seq, ObjectKind::Debit)),
                );
            }
            data.insert("balance".into(), balance());
        }
        EventType::BudgetRenewed => {
            if let Some(r) = renewal(cx.entries, event.entry) {
                data.insert("period_start".into(), json!(Text(r.period_start)));
                data.insert("period_end".into(), json!(Text(r.period_end)));
                data.insert("granted".into(), json!(r.granted.to_string()));
                data.insert("rolled_over".into(), json!(r.rolled_over.to_string()));
                data.insert("expired".into(), json!(r.expired.to_string()));
            }
            data.insert("tier".into(), json!(account.tier().as_str()));
            data.insert("balance".into(), balance());
        }
        EventType::PurchaseCreated
        | EventType::PurchaseCompleted
        | EventType::PurchaseFailed
        | EventType::PurchaseCanceled
        | EventType::PurchaseRefunded => {
            let seq = match &entry.body {
                Body::PurchaseCreated(purchase) => Some(purchase.seq),
                Body::PurchaseUpdated { purchase, .. }
                | Body::PurchasePartlyRefunded { purchase, .. } => Some(*purchase),
                _ => None,
            };
            if let Some(purchase) = seq.and_then(|seq| account.purchase(seq)) {
                data.insert("purchase".into(), purchase_json(account, purchase));
            }
            if matches!(
                event.kind,
                EventType::PurchaseCompleted | EventType::PurchaseRefunded
            ) {
                data.insert("balance".into(), balance());
            }
            // A share of the payment refunded: the purchase stays completed.
            if event.kind == EventType::PurchaseRefunded {
                let partial = matches!(entry.body, Body::PurchasePartlyRefunded { .. });
                data.insert("partial".into(), json!(partial));
            }
        }
        EventType::TierChanged => {
            if let Body::TierChanged(change) = &entry.body {
                let TierChange {
                    from,
                    to,
                    scheduled,
                    ..
                } = &**change;
                data.insert("from".into(), json!(from.as_str()));
                data.insert("to".into(), json!(to.as_str()));
                data.insert("scheduled".into(), json!(scheduled));
            }
            data.insert("source".into(), json!(source(cx.actor)));
            data.insert("account".into(), account_json(account, cx.now));
        }
        EventType::TierChangeScheduled | EventType::TierChangeCanceled => {
            if let Body::TierScheduled(Some(tier)) = &entry.body {
                data.insert("tier".into(), json!(tier.as_str()));
            }
            data.insert("source".into(), json!(source(cx.actor)));
            data.insert("account".into(), account_json(account, cx.now));
        }
        EventType::AutoRechargeSucceeded | EventType::AutoRechargeFailed => {
            if let Body::AutoRecharge { purchase, outcome } = &entry.body {
                if let Some(purchase) = purchase.and_then(|seq| account.purchase(seq)) {
                    data.insert("purchase".into(), purchase_json(account, purchase));
                }
                if let purser_core::RechargeOutcome::Failed(reason) = outcome {
                    data.insert("reason".into(), json!(reason.as_str()));
                }
            }
            // As it stands after: `enabled: false` once three payments failed.
            data.insert(
                "auto_recharge".into(),
                account
                    .auto_recharge()
                    .map_or(Value::Null, crate::render::auto_recharge_json),
            );
            data.insert("balance".into(), balance());
        }
        EventType::HoldExpired => {
            if let Body::Released(release) = &entry.body {
                data.insert(
                    "hold".into(),
                    json!(object_id(entry.account, release.hold, ObjectKind::Hold)),
                );
            }
            data.insert(
                "transaction".into(),
                transaction_json(account.id().as_str(), entry),
            );
            data.insert("balance".into(), balance());
        }
    }
    to_json(&json!({
        "object": "event",
        "id": event.id.format(),
        "type": event.kind.name(),
        "account": account.id().as_str(),
        "created_at": Text(event.at),
        "sequence": event.id.sequence(),
        "actor": actor_json(cx.actor),
        "data": Value::Object(data),
    }))
}

/// The command's own change behind a balance event, when it is a charge
/// (`debit`: a debit or a capture), a hold (`hold`) or a transaction of
/// another kind (`transaction`); none for time-driven ones (expiries).
fn insert_cause(data: &mut Map<String, Value>, cx: &EventContext<'_>) {
    if cx.event.time_driven {
        return;
    }
    let Some(entry) = cx.entries.last() else {
        return;
    };
    let handle = entry.account;
    let (name, id) = match &entry.body {
        Body::Debited(_) | Body::Captured(_) => {
            ("debit", object_id(handle, entry.seq, ObjectKind::Debit))
        }
        Body::Held(_) => ("hold", object_id(handle, entry.seq, ObjectKind::Hold)),
        _ => (
            "transaction",
            object_id(handle, entry.seq, ObjectKind::Transaction),
        ),
    };
    data.insert(name.into(), json!(id));
}

/// Where a tier change came from: `portal` when a customer made it,
/// there or through the subscription the portal sends them to (a change
/// the payment provider confirms: the actor names its event); `api`
/// otherwise.
fn source(actor: &Actor) -> &'static str {
    match actor {
        Actor::Portal(_) | Actor::Provider(_) => "portal",
        _ => "api",
    }
}

/// The webhook payload of a stored event (Standard Webhooks): `{"id",
/// "type", "timestamp", "account", "sequence", "data"}`; `None` if the
/// stored body is not an event object.
pub fn webhook_payload(stored: &[u8]) -> Option<Vec<u8>> {
    let Value::Object(mut event) = serde_json::from_slice::<Value>(stored).ok()? else {
        return None;
    };
    let mut payload = Map::new();
    payload.insert("id".into(), event.remove("id")?);
    payload.insert("type".into(), event.remove("type")?);
    payload.insert("timestamp".into(), event.remove("created_at")?);
    payload.insert("account".into(), event.remove("account")?);
    payload.insert("sequence".into(), event.remove("sequence")?);
    payload.insert("actor".into(), event.remove("actor").unwrap_or(Value::Null));
    payload.insert("data".into(), event.remove("data")?);
    Some(to_json(&Value::Object(payload)))
}
