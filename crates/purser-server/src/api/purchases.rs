//! Purchases: create, complete, fail, cancel, refund, read, list.

use axum::extract::Query;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use purser_core::{Command, ObjectId, ObjectKind, PackageId};
use purser_portal::payments::{Checkout, CheckoutRequest};
use purser_wire::{ApiError, Fields, json_response, required};
use serde_json::Value;

use super::{
    AppState, JsonBody, QueryMap, Result, account_path, list_in_memory, mutate, not_found,
    object_id, rendered,
};
use crate::auth::Need;

/// `POST /v1/accounts/{id}/purchases`. With a provider that takes payment
/// itself (`stripe`), the answer carries the purchase's `checkout_url`: the
/// provider is asked after the purchase is committed, with the purchase as
/// its idempotency key, so a retried request (same `Idempotency-Key`) gets
/// the same purchase and the same checkout page. If the provider cannot be
/// reached the purchase stays `pending` and the answer is 503
/// `payment_provider_unavailable`: retrying with the same key finishes it.
pub(super) async fn create_purchase(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Response {
    let path = format!("/v1/accounts/{id}/purchases");
    let mut urls = (None, None);
    let response = mutate(&state, &headers, Need::Admin, &path, &body, |body| {
        let fields = Fields::parse(body, &["package", "success_url", "cancel_url"])?;
        for (name, slot) in [("success_url", &mut urls.0), ("cancel_url", &mut urls.1)] {
            if let Some(url) = fields.string(name)? {
                if !purser_portal::session::valid_return_url(url) {
                    return Err(ApiError::invalid(
                        name,
                        "must be an absolute http or https URL",
                    ));
                }
                *slot = Some(url.to_owned());
            }
        }
        Ok(Command::CreatePurchase {
            account: account_path(&id)?,
            package: required(fields.id("package", PackageId::parse)?, "package")?,
        })
    })
    .await;
    let payments = &state.portal.payments;
    if !payments.redirects() || !response.status().is_success() {
        return response;
    }
    let Ok(bytes) = axum::body::to_bytes(response.into_body(), 1 << 20).await else {
        return ApiError::internal("the purchase could not be read back").into_response();
    };
    let answered: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    // A replay answers the purchase as it was made; a checkout is opened
    // only while it is still pending now.
    let current = match answered["id"]
        .as_str()
        .and_then(|id| ObjectId::parse(ObjectKind::Purchase, id))
    {
        Some(purchase) => match purser_wire::lists::purchase(&state.engine, purchase).await {
            Ok(rendered) if rendered.status == 200 => {
                serde_json::from_slice::<Value>(&rendered.body).unwrap_or(Value::Null)
            }
            Ok(_) => Value::Null,
            Err(busy) => return ApiError::from(busy).into_response(),
        },
        None => Value::Null,
    };
    let mut purchase = answered;
    if current["status"] != "pending" {
        return json_response(201, serde_json::to_vec(&purchase).expect("JSON"));
    }
    let home = format!("{}/", purser_portal::base_url(&state.portal, &headers));
    let Some(request) = CheckoutRequest::for_purchase(
        &current,
        state.engine.catalog(),
        urls.0.unwrap_or_else(|| home.clone()),
        urls.1.unwrap_or(home),
    ) else {
        return ApiError::internal("the purchase could not be read back").into_response();
    };
    let purchase_id = request.purchase.clone();
    match payments.checkout(&request).await {
        Ok(Checkout::Redirect(url)) => purchase["checkout_url"] = Value::String(url),
        Ok(_) => {}
        Err(error) => {
            tracing::warn!(purchase = %purchase_id, code = error.code, message = %error.message, "checkout failed");
            let mut refusal = ApiError::new(
                503,
                "api_error",
                "payment_provider_unavailable",
                "the purchase is pending but the payment provider could not open its checkout; retry with the same Idempotency-Key, or cancel the purchase",
            );
            refusal
                .extra
                .insert("purchase".into(), Value::String(purchase_id));
            return refusal.into_response();
        }
    }
    json_response(201, serde_json::to_vec(&purchase).expect("JSON"))
}

/// `POST /v1/purchases/{id}/complete|fail|cancel|refund`.
pub(super) async fn purchase_action(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    JsonBody(body): JsonBody,
) -> Response {
    if !matches!(action.as_str(), "complete" | "fail" | "cancel" | "refund") {
        return not_found().await.into_response();
    }
    let path = format!("/v1/purchases/{id}/{action}");
    // A cancellation first closes the provider's checkout, so the purchase
    // cannot be paid after it (refused if it is being paid).
    if action == "cancel" {
        if let Err(error) = state.keys.authorize(&headers, Need::Admin) {
            return error.into_response();
        }
        if let Err(error) = state.portal.payments.cancel(&id).await {
            tracing::warn!(purchase = %id, code = error.code, message = %error.message, "closing the checkout failed");
            return if error.code == "payment_in_progress" {
                ApiError::conflict(
                    "payment_in_progress",
                    "the purchase's checkout is being paid or was paid: it can no longer be canceled",
                )
            } else {
                ApiError::new(
                    503,
                    "api_error",
                    "payment_provider_unavailable",
                    "the payment provider could not close the purchase's checkout; retry",
                )
            }
            .into_response();
        }
    }
    mutate(&state, &headers, Need::Admin, &path, &body, |body| {
        // A failed auto-recharge says why (`payment_failed` by default).
        let allowed: &[&str] = if action == "fail" { &["reason"] } else { &[] };
        let fields = Fields::parse(body, allowed)?;
        let purchase = object_id(ObjectKind::Purchase, &id, "purchase_not_found")?;
        Ok(match action.as_str() {
            "complete" => Command::CompletePurchase { purchase },
            "fail" => Command::FailPurchase {
                purchase,
                reason: match fields.string("reason")? {
                    None => None,
                    Some(reason) => Some(
                        purser_core::RechargeFailure::parse(reason)
                            .filter(|reason| reason.counts())
                            .ok_or_else(|| {
                                ApiError::invalid(
                                    "reason",
                                    "reason must be payment_failed, action_required or no_payment_method",
                                )
                            })?,
                    ),
                },
            },
            "cancel" => Command::CancelPurchase { purchase },
            _ => Command::RefundPurchase {
                purchase,
                share: None,
            },
        })
    })
    .await
}

pub(super) async fn get_purchase(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response> {
    state.keys.authorize(&headers, Need::Read)?;
    let purchase = object_id(ObjectKind::Purchase, &id, "purchase_not_found")?;
    Ok::<_, ApiError>(rendered(
        purser_wire::lists::purchase(&state.engine, purchase).await,
    ))
}

pub(super) async fn list_purchases(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): QueryMap,
) -> Response {
    list_in_memory(&state, &headers, &id, &query, ObjectKind::Purchase).await
}
