//! The forms' actions: each an ordinary ledger command, with the form's
//! nonce as its idempotency key, answered by a redirect to the billing page.

use purser_engine::Actor;
use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use purser_core::{
    AccountUpdate, AutoRechargeConfig, Command, Credits, Notation, ObjectId, ObjectKind, PackageId,
    Proration, TierId,
};
use purser_engine::IdempotencyKey;
use serde_json::{Value, json};

use crate::pages::handle_of;
use crate::payments::{Checkout, CheckoutRequest, TierBilling, TierRequest};
use crate::session::Session;
use crate::{AppState, authenticate, base_url, check_form, problem, unavailable};

type FormResult = Result<Form<HashMap<String, String>>, axum::extract::rejection::FormRejection>;

/// Runs a command for a form: with the form's nonce as its idempotency key,
/// so a resubmitted form is answered, not applied twice.
async fn run(
    state: &AppState,
    session: &Session,
    form: &HashMap<String, String>,
    path: &str,
    command: Command,
    step: &str,
) -> (u16, Value) {
    let mut fields: Vec<(&String, &String)> =
        form.iter().filter(|(name, _)| *name != "csrf").collect();
    fields.sort();
    let body = serde_json::to_vec(&fields).expect("JSON");
    let key = form
        .get("nonce")
        .filter(|nonce| !nonce.is_empty() && nonce.len() <= 64)
        .map(|nonce| {
            IdempotencyKey::new(
                &format!("portal:{}:{nonce}:{step}", hex::encode(session.nonce)),
                purser_wire::fingerprint("POST", path, &body),
            )
        });
    // The session's id, as `POST …/portal_sessions` answered it.
    let actor = Actor::Portal(format!("ps_{}", hex::encode(session.nonce)).into());
    let (status, body) = purser_wire::outcome(state.engine.run(command, key, actor).await);
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// 303 to the billing page, with a notice or the error code of an answer
/// (the page words both from fixed texts: nothing from here is echoed).
fn back(token: &str, outcome: Result<&str, &Value>) -> Response {
    let query = match outcome {
        Ok(notice) => format!("notice={notice}"),
        Err(answer) => {
            let code: String = answer["error"]["code"]
                .as_str()
                .unwrap_or("failed")
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                .take(64)
                .collect();
            format!("error={code}")
        }
    };
    Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header(header::LOCATION, format!("/portal/{token}/billing?{query}"))
        .body(Body::empty())
        .expect("a redirect")
}

/// 303 to the provider's page (a URL a header cannot carry is refused,
/// never a panic).
fn redirect_to(url: &str) -> Response {
    match header::HeaderValue::from_str(url) {
        Ok(location) => Response::builder()
            .status(StatusCode::SEE_OTHER)
            .header(header::LOCATION, location)
            .body(Body::empty())
            .expect("a redirect"),
        Err(_) => {
            tracing::error!(
                url,
                "the payment provider answered a URL that is no header value"
            );
            unavailable()
        }
    }
}

/// The session and fields of a form POST: the token checked, the body read
/// as a form, the CSRF token and the origin checked; or the refusal page.
/// A form of a valid session, its CSRF token and origin checked, in its
/// account's turn: forms are paced per account (each is a write, and may
/// call the payment provider), so a customer scripting them cannot grow
/// the account's purchases, or use up the provider's rate limits, at the
/// server's speed. Over the pace: back to the billing page, nothing done.
async fn accept_form(
    state: &AppState,
    token: &str,
    headers: &HeaderMap,
    form: FormResult,
) -> Result<(Session, HashMap<String, String>), Response> {
    let session = authenticate(state, token)?;
    let Ok(Form(form)) = form else {
        return Err(problem(
            StatusCode::BAD_REQUEST,
            "This form could not be read",
            "Reload the page and try again.",
        ));
    };
    check_form(state, headers, &session, &form)?;
    if state
        .engine
        .pace_portal_action(session.account.as_str())
        .await
        .is_err()
    {
        return Err(back(
            token,
            Err(&json!({"error": {"code": "rate_limited"}})),
        ));
    }
    Ok((session, form))
}

pub(crate) async fn change_tier(
    State(state): State<AppState>,
    Path(token): Path<String>,
    headers: HeaderMap,
    form: FormResult,
) -> Response {
    let (session, form) = match accept_form(&state, &token, &headers, form).await {
        Ok(accepted) => accepted,
        Err(page) => return page,
    };
    if !state.tier_changes {
        return back(
            &token,
            Err(&json!({"error": {"code": "tier_changes_disabled"}})),
        );
    }
    let catalog = state.engine.catalog();
    let Some(chosen) = form
        .get("tier")
        .and_then(|tier| TierId::parse(tier).ok())
        .and_then(|tier| catalog.tier(tier.as_str()).cloned())
    else {
        return back(&token, Err(&json!({"error": {"code": "unknown_tier"}})));
    };
    let tier = chosen.id.clone();
    // A provider that bills tiers takes the change first: the ledger
    // follows when it confirms.
    let account = match crate::pages::account_json(&state, &session).await {
        Ok(account) => account,
        Err(page) => return page,
    };
    if account["status"].as_str() == Some("closed") {
        return back(&token, Err(&json!({"error": {"code": "account_closed"}})));
    }
    let current = account["tier"].as_str().and_then(|id| catalog.tier(id));
    if current.is_none() && state.payments.redirects() {
        // On a tier the catalog no longer has: not changed here, so that a
        // billed tier is never reached without its provider.
        return back(&token, Err(&json!({"error": {"code": "unknown_tier"}})));
    }
    if let Some(current) = current {
        let billing = format!("{}/portal/{token}/billing", base_url(&state, &headers));
        let request = TierRequest {
            account: session.account.as_str().to_owned(),
            current: current.clone(),
            tier: chosen.clone(),
            pending: account["pending_tier"].as_str().map(str::to_owned),
            period_end: account["balance"]["budget"]["period_end"]
                .as_str()
                .and_then(purser_core::Timestamp::parse_rfc3339),
            success_url: format!("{billing}?notice=subscription_started"),
            cancel_url: format!("{billing}?notice=subscription_not_started"),
            attempt: form
                .get("nonce")
                .filter(|nonce| {
                    !nonce.is_empty()
                        && nonce.len() <= 64
                        && nonce.bytes().all(|b| b.is_ascii_alphanumeric())
                })
                .cloned()
                .unwrap_or_else(|| crate::random_hex(12)),
        };
        match state.payments.change_tier(&request).await {
            Ok(TierBilling::Apply) => {}
            Ok(TierBilling::Redirect(url)) => return redirect_to(&url),
            Ok(TierBilling::Requested) => return back(&token, Ok("tier_change_requested")),
            Ok(TierBilling::Ending) => return back(&token, Ok("subscription_ending")),
            Err(error) => {
                tracing::warn!(account = %session.account.as_str(), code = error.code, message = %error.message, "the tier change at the payment provider failed");
                let code = if error.code == "tier_not_billed" {
                    "tier_not_billed"
                } else {
                    "tier_change_unavailable"
                };
                return back(&token, Err(&json!({"error": {"code": code}})));
            }
        }
    }
    let command = Command::ChangeTier {
        account: session.account.clone(),
        tier: tier.clone(),
        proration: Proration::Full,
    };
    let path = format!("/portal/{token}/tier");
    let (status, answer) = run(&state, &session, &form, &path, command, "tier").await;
    if status != 200 {
        return back(&token, Err(&answer));
    }
    // Said from what changed, not from what was asked.
    let (before_tier, before_pending) =
        (account["tier"].as_str(), account["pending_tier"].as_str());
    let (after_tier, after_pending) = (answer["tier"].as_str(), answer["pending_tier"].as_str());
    let notice = if after_pending == Some(tier.as_str()) && before_pending != after_pending {
        "downgrade_scheduled"
    } else if after_tier != before_tier {
        "tier_changed"
    } else if before_pending.is_some() && after_pending.is_none() {
        "downgrade_canceled"
    } else {
        "tier_unchanged"
    };
    back(&token, Ok(notice))
}

pub(crate) async fn buy(
    State(state): State<AppState>,
    Path(token): Path<String>,
    headers: HeaderMap,
    form: FormResult,
) -> Response {
    let (session, form) = match accept_form(&state, &token, &headers, form).await {
        Ok(accepted) => accepted,
        Err(page) => return page,
    };
    let Some(package) = form
        .get("package")
        .and_then(|id| PackageId::parse(id).ok())
        .and_then(|id| state.engine.catalog().package(id.as_str()).cloned())
    else {
        return back(&token, Err(&json!({"error": {"code": "unknown_package"}})));
    };
    let path = format!("/portal/{token}/purchases");
    let command = Command::CreatePurchase {
        account: session.account.clone(),
        package: package.id.clone(),
    };
    let (status, purchase) = run(&state, &session, &form, &path, command, "create").await;
    if status != 201 && status != 200 {
        return back(&token, Err(&purchase));
    }
    pay(&state, &token, &headers, &session, &form, &purchase).await
}

/// Sends the customer to pay for a pending purchase (as the API renders
/// it): to the provider's page, or back to billing with what happened.
async fn pay(
    state: &AppState,
    token: &str,
    headers: &HeaderMap,
    session: &Session,
    form: &HashMap<String, String>,
    purchase: &Value,
) -> Response {
    let billing = format!("{}/portal/{token}/billing", base_url(state, headers));
    let Some(request) = CheckoutRequest::for_purchase(
        purchase,
        state.engine.catalog(),
        format!("{billing}?notice=payment_received"),
        format!("{billing}?notice=payment_canceled"),
    ) else {
        return unavailable();
    };
    let id = request.purchase.as_str();
    match state.payments.checkout(&request).await {
        Err(error) => {
            tracing::warn!(purchase = id, code = error.code, message = %error.message, "checkout failed");
            back(token, Err(&json!({"error": {"code": error.code}})))
        }
        Ok(Checkout::AwaitingConfirmation) => back(token, Ok("purchase_pending")),
        Ok(Checkout::Redirect(url)) => redirect_to(&url),
        Ok(Checkout::Confirmed) => {
            let Some(purchase) = ObjectId::parse(ObjectKind::Purchase, id) else {
                return unavailable();
            };
            let command = Command::CompletePurchase { purchase };
            let path = format!("/portal/{token}/purchases");
            let (status, answer) = run(state, session, form, &path, command, "complete").await;
            if status == 200 {
                back(token, Ok("purchase_completed"))
            } else {
                back(token, Err(&answer))
            }
        }
    }
}

/// The purchase `id` names, if it is one of the session's own account's;
/// another account's is "not found", as a missing one is.
async fn own_purchase(state: &AppState, session: &Session, id: &str) -> Result<ObjectId, Response> {
    let handle = handle_of(state, session).await?;
    ObjectId::parse(ObjectKind::Purchase, id)
        .filter(|purchase| purchase.account == handle)
        .ok_or_else(|| {
            problem(
                StatusCode::NOT_FOUND,
                "Purchase not found",
                "There is no such purchase on this account.",
            )
        })
}

/// `POST /portal/{token}/purchases/{id}/pay`: back to the provider's page
/// for a purchase still pending (the customer left it, or it failed to
/// open). The provider answers the same session for the same purchase.
pub(crate) async fn pay_purchase(
    State(state): State<AppState>,
    Path((token, id)): Path<(String, String)>,
    headers: HeaderMap,
    form: FormResult,
) -> Response {
    let (session, form) = match accept_form(&state, &token, &headers, form).await {
        Ok(accepted) => accepted,
        Err(page) => return page,
    };
    let purchase = match own_purchase(&state, &session, &id).await {
        Ok(purchase) => purchase,
        Err(page) => return page,
    };
    let current = match purser_wire::lists::purchase(&state.engine, purchase).await {
        Ok(rendered) if rendered.status == 200 => {
            serde_json::from_slice::<Value>(&rendered.body).unwrap_or(Value::Null)
        }
        Ok(_) => {
            return back(
                &token,
                Err(&json!({"error": {"code": "purchase_not_found"}})),
            );
        }
        Err(_) => return unavailable(),
    };
    if current["status"].as_str() != Some("pending") {
        return back(
            &token,
            Err(&json!({"error": {"code": "purchase_status_conflict"}})),
        );
    }
    pay(&state, &token, &headers, &session, &form, &current).await
}

pub(crate) async fn cancel_purchase(
    State(state): State<AppState>,
    Path((token, id)): Path<(String, String)>,
    headers: HeaderMap,
    form: FormResult,
) -> Response {
    let (session, form) = match accept_form(&state, &token, &headers, form).await {
        Ok(accepted) => accepted,
        Err(page) => return page,
    };
    let purchase = match own_purchase(&state, &session, &id).await {
        Ok(purchase) => purchase,
        Err(page) => return page,
    };
    // Its checkout page closed first: it cannot be paid after.
    if let Err(error) = state.payments.cancel(&id).await {
        tracing::warn!(purchase = %id, code = error.code, message = %error.message, "closing the checkout failed");
        return back(&token, Err(&json!({"error": {"code": error.code}})));
    }
    let path = format!("/portal/{token}/purchases/{id}/cancel");
    let command = Command::CancelPurchase { purchase };
    let (status, answer) = run(&state, &session, &form, &path, command, "cancel").await;
    if status == 200 {
        back(&token, Ok("purchase_canceled"))
    } else {
        back(&token, Err(&answer))
    }
}

/// `POST /portal/{token}/auto_recharge`: the customer switches
/// auto-recharge on (choosing the balance below which, and the package) or
/// off. The operator's `max_per_month`, if any, is kept.
pub(crate) async fn set_auto_recharge(
    State(state): State<AppState>,
    Path(token): Path<String>,
    headers: HeaderMap,
    form: FormResult,
) -> Response {
    let (session, form) = match accept_form(&state, &token, &headers, form).await {
        Ok(accepted) => accepted,
        Err(page) => return page,
    };
    let account = match crate::pages::account_json(&state, &session).await {
        Ok(account) => account,
        Err(page) => return page,
    };
    let current = &account["auto_recharge"];
    let max_per_month = current["max_per_month"]
        .as_u64()
        .and_then(|max| u32::try_from(max).ok());
    let config = if form.get("enabled").map(String::as_str) == Some("true") {
        let Some(threshold) = form
            .get("threshold")
            .and_then(|text| Credits::parse_positive(text.trim(), Notation::String).ok())
        else {
            return back(
                &token,
                Err(&json!({"error": {"code": "invalid_threshold"}})),
            );
        };
        let Some(package) = form
            .get("package")
            .and_then(|id| PackageId::parse(id).ok())
            .filter(|id| state.engine.catalog().package(id.as_str()).is_some())
        else {
            return back(&token, Err(&json!({"error": {"code": "unknown_package"}})));
        };
        AutoRechargeConfig {
            enabled: true,
            threshold,
            package,
            max_per_month,
        }
    } else {
        // Off: the same setting, switched off (nothing to switch off
        // without one).
        let (Some(threshold), Some(package)) = (
            current["threshold"]
                .as_str()
                .and_then(|text| Credits::parse(text, Notation::String).ok()),
            current["package"]
                .as_str()
                .and_then(|id| PackageId::parse(id).ok()),
        ) else {
            return back(&token, Ok("recharge_off"));
        };
        AutoRechargeConfig {
            enabled: false,
            threshold,
            package,
            max_per_month,
        }
    };
    let enabled = config.enabled;
    let command = Command::UpdateAccount {
        account: session.account.clone(),
        update: AccountUpdate {
            auto_recharge: Some(Some(Box::new(config))),
            ..AccountUpdate::default()
        },
    };
    let path = format!("/portal/{token}/auto_recharge");
    let (status, answer) = run(&state, &session, &form, &path, command, "recharge").await;
    if status != 200 {
        return back(&token, Err(&answer));
    }
    back(
        &token,
        Ok(if enabled {
            "recharge_on"
        } else {
            "recharge_off"
        }),
    )
}
