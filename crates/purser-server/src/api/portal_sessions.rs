//! Portal sessions: the operator's backend asks for a link that opens the
//! customer portal for one account.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use purser_portal::session::valid_return_url;
use purser_wire::{ApiError, Fields, json_response};

use super::{AppState, JsonBody, Result, idempotency_key, keyed};
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
    let key = keyed(key, &path, &body);
    if let Some(key) = &key
        && let Err(answered) = state.engine.claim(key)
    {
        let (status, body) = purser_wire::outcome(state.engine.settle(answered).await);
        return Ok(json_response(status, body));
    }
    // Its own task: once the key is claimed, the session is made and the key
    // ended even if the client goes away meanwhile.
    let created = tokio::spawn(async move {
        let made = state.portal.create_session(&id, return_url, &headers).await;
        let (status, body) = match made {
            Ok(body) => (201, body),
            Err(error) => (error.status, error.body()),
        };
        if let Some(key) = key {
            state.engine.finish(&key.key, status, &body);
        }
        (status, body)
    });
    let (status, body) = created
        .await
        .map_err(|_| ApiError::internal("making a portal session failed"))?;
    Ok(json_response(status, body))
}
