//! Purchases: create, complete, fail, cancel, refund, read, list.

use axum::extract::Query;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use purser_core::{Command, ObjectKind, PackageId};
use purser_engine::Read;
use purser_wire::{ApiError, Fields, required};

use super::{
    AppState, JsonBody, QueryMap, Result, account_path, list_in_memory, mutate, not_found,
    object_id, rendered,
};
use crate::auth::Need;

pub(super) async fn create_purchase(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Response {
    let path = format!("/v1/accounts/{id}/purchases");
    mutate(&state, &headers, Need::Admin, &path, &body, |body| {
        let fields = Fields::parse(body, &["package"])?;
        Ok(Command::CreatePurchase {
            account: account_path(&id)?,
            package: required(fields.id("package", PackageId::parse)?, "package")?,
        })
    })
    .await
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
    mutate(&state, &headers, Need::Admin, &path, &body, |body| {
        Fields::parse(body, &[])?;
        let purchase = object_id(ObjectKind::Purchase, &id, "purchase_not_found")?;
        Ok(match action.as_str() {
            "complete" => Command::CompletePurchase { purchase },
            "fail" => Command::FailPurchase { purchase },
            "cancel" => Command::CancelPurchase { purchase },
            _ => Command::RefundPurchase { purchase },
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
    Ok::<_, ApiError>(rendered(state.engine.read(Read::Purchase(purchase)).await))
}

pub(super) async fn list_purchases(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): QueryMap,
) -> Response {
    list_in_memory(
        &state,
        &headers,
        &id,
        &query,
        ObjectKind::Purchase,
        Read::Purchases,
    )
    .await
}
