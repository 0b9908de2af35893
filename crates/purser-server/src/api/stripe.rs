//! `POST /v1/webhooks/stripe` (API.md "Payments"): Stripe's events settle
//! purchases. No API key: the `Stripe-Signature` header is verified on the
//! raw body (HMAC-SHA256 of `t.body` under the endpoint's signing secret,
//! every `v1` tried, 300 s tolerance). Each Stripe event id is applied once
//! (it is the command's idempotency key), by the provider as actor; the
//! amount and currency paid must match the purchase.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, KeyInit, Mac};
use purser_core::{Actor, Command, ObjectId, ObjectKind, RechargeFailure};
use purser_engine::IdempotencyKey;
use purser_wire::{ApiError, json_response};
use serde_json::{Value, json};
use sha2::Sha256;

use super::{AppState, JsonBody, Result};
use crate::stripe::subscriptions::SubscriptionOutcome;

/// How old a signed timestamp may be (either way), in seconds.
pub const TOLERANCE_SECONDS: i64 = 300;

/// Whether `header` (`t=…,v1=…[,v1=…]`) signs `body` under `secret` at
/// `now` (Unix seconds).
pub fn verify(header: &str, body: &[u8], secret: &str, now: i64) -> bool {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => timestamp = value.parse::<i64>().ok(),
            Some(("v1", value)) => signatures.push(value),
            _ => {}
        }
    }
    let Some(timestamp) = timestamp else {
        return false;
    };
    if (now - timestamp).abs() > TOLERANCE_SECONDS {
        return false;
    }
    signatures.into_iter().any(|signature| {
        let Ok(expected) = hex::decode(signature) else {
            return false;
        };
        let mut mac =
            Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.verify_slice(&expected).is_ok()
    })
}

fn refused(code: &'static str, message: &str) -> Response {
    ApiError::bad_request(code, message).into_response()
}

pub(super) async fn webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Response> {
    let Some(secret) = state.stripe_webhook_secret.as_deref() else {
        return Err(ApiError::not_found(
            "stripe_not_configured",
            "Stripe is not configured (PURSER_STRIPE_WEBHOOK_SECRET)",
        ));
    };
    let signature = headers
        .get("stripe-signature")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    let now = crate::webhooks::wall_micros() / 1_000_000;
    if !verify(signature, &body, secret, now) {
        return Ok(refused(
            "invalid_signature",
            "the Stripe-Signature header does not sign this body",
        ));
    }
    let Ok(event) = serde_json::from_slice::<Value>(&body) else {
        return Ok(refused("invalid_event", "the body is not a Stripe event"));
    };
    let (Some(id), Some(kind)) = (event["id"].as_str(), event["type"].as_str()) else {
        return Ok(refused("invalid_event", "the event has no id or type"));
    };
    let object = &event["data"]["object"];
    if matches!(
        kind,
        "customer.subscription.created"
            | "customer.subscription.updated"
            | "customer.subscription.deleted"
    ) {
        let created = event["created"].as_i64().unwrap_or(0);
        return Ok(subscription_event(&state, id, created, object).await);
    }
    // A subscription's Checkout: its subscription's events set the tier.
    if object["object"] == "checkout.session" && object["mode"] == "subscription" {
        return Ok(received(id, "ignored"));
    }
    let (action, purchase_ref) = match kind {
        "checkout.session.completed" if object["payment_status"] == "paid" => {
            ("complete", object["client_reference_id"].as_str())
        }
        "checkout.session.async_payment_succeeded" => {
            ("complete", object["client_reference_id"].as_str())
        }
        "checkout.session.async_payment_failed" | "checkout.session.expired" => {
            ("fail", object["client_reference_id"].as_str())
        }
        "charge.refunded" => ("refund", None),
        // An auto-recharge's off-session payment (a Checkout's own payment
        // intents are settled by the session's events).
        "payment_intent.succeeded" if object["metadata"]["auto_recharge"] == "true" => {
            ("complete", None)
        }
        "payment_intent.payment_failed" if object["metadata"]["auto_recharge"] == "true" => {
            ("fail", None)
        }
        // Not about a purchase, or nothing to do yet (an unpaid session).
        _ => return Ok(received(id, "ignored")),
    };
    let purchase_ref = purchase_ref.or_else(|| object["metadata"]["purchase_id"].as_str());
    let Some(purchase) = purchase_ref.and_then(|id| ObjectId::parse(ObjectKind::Purchase, id))
    else {
        return Ok(received(id, "ignored"));
    };
    let current = purser_wire::lists::purchase(&state.engine, purchase)
        .await
        .map_err(ApiError::from)?;
    if current.status == 404 {
        return Ok(received(id, "ignored"));
    }
    let current: Value = serde_json::from_slice(&current.body).unwrap_or(Value::Null);
    let command = match action {
        "complete" => {
            let currency = state.engine.catalog().currency().to_lowercase();
            let paid_currency = object["currency"]
                .as_str()
                .unwrap_or_default()
                .to_lowercase();
            let expected = current["price"]
                .as_str()
                .and_then(|price| {
                    purser_core::Credits::parse(price, purser_core::Notation::String).ok()
                })
                .and_then(|price| crate::stripe::minor_units(price, &currency));
            let paid = object["amount_total"]
                .as_u64()
                .or_else(|| object["amount_received"].as_u64());
            if paid_currency != currency || expected.is_none() || paid != expected {
                return Ok(ApiError::bad_request(
                    "amount_mismatch",
                    format!(
                        "the session paid {} {paid_currency}; the purchase costs {} {currency}",
                        paid.map_or("?".into(), |p| p.to_string()),
                        expected.map_or("?".into(), |e| e.to_string()),
                    ),
                )
                .into_response());
            }
            Command::CompletePurchase { purchase }
        }
        "fail" => Command::FailPurchase {
            purchase,
            // Said for an auto-recharge (nothing for a Checkout's purchase).
            reason: (kind == "payment_intent.payment_failed").then(|| {
                match object["last_payment_error"]["code"].as_str() {
                    Some("authentication_required") => RechargeFailure::ActionRequired,
                    _ => RechargeFailure::PaymentFailed,
                }
            }),
        },
        _ => {
            // Stripe's amounts are cumulative: the ledger voids the part
            // refunded since the last refund it applied (a full refund
            // refunds the purchase).
            let (Some(refunded), Some(paid)) = (
                object["amount_refunded"].as_u64(),
                object["amount"].as_u64(),
            ) else {
                return Ok(refused(
                    "invalid_event",
                    "the charge has no amount or amount_refunded",
                ));
            };
            let currency = state.engine.catalog().currency().to_lowercase();
            if object["currency"]
                .as_str()
                .map(str::to_lowercase)
                .as_deref()
                != Some(currency.as_str())
            {
                return Ok(ApiError::bad_request(
                    "amount_mismatch",
                    format!("the charge is not in {currency}, the catalog's currency"),
                )
                .into_response());
            }
            if refunded == 0 || refunded > paid {
                return Ok(refused(
                    "invalid_event",
                    "the charge's amount_refunded is out of range",
                ));
            }
            Command::RefundPurchase {
                purchase,
                share: Some(purser_core::RefundedShare { refunded, paid }),
            }
        }
    };
    // Settled already, the way this event would: nothing to apply.
    let settled = current["status"].as_str().unwrap_or_default();
    if matches!(
        (action, settled),
        ("complete", "completed") | ("fail", "failed") | ("refund", "refunded")
    ) {
        return Ok(received(id, "applied"));
    }
    if action == "fail" && settled != "pending" {
        return Ok(received(id, "ignored"));
    }
    // Paid for a purchase that was canceled or failed meanwhile (a page
    // paid as it was being closed, a late payment): no credits for it, so
    // the money goes back. Stripe is answered only once the refund is made
    // (else it delivers the event again, and the refund is tried again
    // under the same idempotency key).
    if action == "complete" && matches!(settled, "canceled" | "failed") {
        let intent = object["payment_intent"].as_str().or_else(|| {
            (object["object"] == "payment_intent")
                .then(|| object["id"].as_str())
                .flatten()
        });
        let (Some(stripe), Some(intent)) = (&state.stripe, intent) else {
            tracing::error!(event = id, purchase = %purchase.format(ObjectKind::Purchase), "Stripe took a payment for a purchase that is {settled}: refund it by hand");
            return Ok(received(id, "ignored"));
        };
        return match stripe.refund(intent).await {
            Ok(()) => {
                tracing::warn!(
                    event = id,
                    payment_intent = intent,
                    "refunded a payment for a purchase that is {settled}"
                );
                Ok(received(id, "refunded"))
            }
            Err(error) => {
                tracing::error!(event = id, payment_intent = intent, code = error.code, message = %error.message, "refunding a payment for a {settled} purchase failed");
                Ok(ApiError::unavailable().into_response())
            }
        };
    }
    let key = IdempotencyKey::new(
        &format!("stripe:{id}"),
        purser_wire::fingerprint("POST", "/v1/webhooks/stripe", id.as_bytes()),
    );
    let outcome = state
        .engine
        .run(command, Some(key), Actor::Provider(id.into()))
        .await;
    let (status, answer) = purser_wire::outcome(outcome);
    if (200..300).contains(&status) {
        return Ok(received(id, "applied"));
    }
    Ok(json_response(status, answer))
}

/// A subscription made, changed or ended: the account's tier follows it
/// (`stripe/subscriptions.rs`).
async fn subscription_event(state: &AppState, id: &str, created: i64, object: &Value) -> Response {
    let Some(stripe) = &state.stripe else {
        return received(id, "ignored");
    };
    match stripe.subscription_changed(id, created, object).await {
        Ok(SubscriptionOutcome::Ignored(why)) => {
            tracing::info!(event = id, why, "Stripe subscription event ignored");
            received(id, "ignored")
        }
        Ok(SubscriptionOutcome::Applied(status, _)) if (200..300).contains(&status) => {
            received(id, "applied")
        }
        Ok(SubscriptionOutcome::Applied(status, answer)) => json_response(status, answer),
        Err(error) => {
            tracing::warn!(event = id, code = error.code, message = %error.message, "a Stripe subscription event could not be applied (Stripe retries it)");
            ApiError::unavailable().into_response()
        }
    }
}

/// What Stripe is answered when the event is taken (2xx: not sent again).
fn received(id: &str, outcome: &str) -> Response {
    json_response(
        200,
        serde_json::to_vec(&json!({"received": true, "event": id, "outcome": outcome}))
            .expect("JSON"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &str, t: i64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{t}.").as_bytes());
        mac.update(body);
        format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn signatures_are_checked_with_tolerance() {
        let body = br#"{"id":"evt_1"}"#;
        let header = sign("whsec_x", 1_000, body);
        assert!(verify(&header, body, "whsec_x", 1_000));
        assert!(verify(&header, body, "whsec_x", 1_300));
        assert!(!verify(&header, body, "whsec_x", 1_301), "stale");
        assert!(!verify(&header, body, "whsec_y", 1_000), "another secret");
        assert!(!verify(&header, b"{}", "whsec_x", 1_000), "another body");
        let two = format!("{},v1=00ff", header.replace("v1=", "v1=00,v1="));
        assert!(verify(&two, body, "whsec_x", 1_000), "every v1 is tried");
        assert!(!verify("v1=abc", body, "whsec_x", 1_000), "no timestamp");
    }
}
