//! Portal sessions: the operator's backend asks for a link that opens the
//! customer portal for one account.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use purser_portal::session::valid_return_url;
use purser_wire::{ApiError, Fields};

use super::{AppState, JsonBody, Result, idempotency_key, once};
use crate::auth::Need;

/// `POST /v1/accounts/{id}/portal_sessions` `{"return_url"?}` → 201
/// `{"object": "portal_session", "id", "account", "url", "return_url",
/// "expires_at", "created_at"}`.
pub(super) async fn create_session(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response> {
    state.keys.authorize(&headers, Need::Admin)?;
    let key = idempotency_key(&headers)?;
    let state_for_key = state.clone();
    let fields = Fields::parse(&body, &["return_url"])?;
    let return_url = fields.string("return_url")?.map(str::to_owned);
    if return_url
        .as_deref()
        .is_some_and(|url| !valid_return_url(url))
    {
        return Err(ApiError::invalid(
            "return_url",
            "return_url must be an absolute http or https URL of at most 2048 characters",
        ));
    }
    let path = format!("/v1/accounts/{id}/portal_sessions");
    let session = async move {
        match state.portal.create_session(&id, return_url, &headers).await {
            Ok(body) => (201, body),
            Err(error) => (error.status, error.body()),
        }
    };
    Ok(once(&state_for_key, key, &path, &body, session).await)
}
