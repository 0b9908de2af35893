//! API keys: created (the secret shown once), listed, revoked.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use purser_store::ApiKeyRecord;
use purser_wire::{ApiError, Fields, json_response, objects, required};

use super::{AppState, JsonBody, Result, idempotency_key, once};
use crate::auth::{Need, SCOPES, generate_secret, hash_secret, random_hex};

pub(super) async fn create_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Response> {
    state.keys.authorize(&headers, Need::Admin)?;
    let key = idempotency_key(&headers)?;
    let fields = Fields::parse(&body, &["scopes"])?;
    let scopes = required(fields.array("scopes")?, "scopes")?;
    let mut parsed = Vec::new();
    for scope in scopes {
        match scope.as_str() {
            // A scope named twice is kept once.
            Some(scope) if SCOPES.contains(&scope) => {
                if !parsed.iter().any(|kept| kept == scope) {
                    parsed.push(scope.to_owned());
                }
            }
            _ => {
                return Err(ApiError::invalid(
                    "scopes",
                    "scopes must be among admin, usage, read",
                ));
            }
        }
    }
    if parsed.is_empty() {
        return Err(ApiError::invalid(
            "scopes",
            "at least one scope is required",
        ));
    }
    let creating = state.clone();
    let create = async move {
        let secret = generate_secret();
        let record = ApiKeyRecord {
            id: format!("key_{}", random_hex(12)),
            secret_hash: hash_secret(&secret),
            scopes: parsed,
            created_at: creating.engine.clock().now(),
            revoked_at: None,
        };
        let stored = record.clone();
        let inserted = creating
            .engine
            .query(move |store| store.insert_api_key(&stored))
            .await;
        if let Err(error) = inserted {
            let error = ApiError::from(error);
            return (error.status, error.body());
        }
        creating.keys.add(&record);
        (201, objects::api_key(&record, Some(&secret)))
    };
    Ok(once(&state, key, "/v1/api_keys", &body, create).await)
}

pub(super) async fn list_keys(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response> {
    state.keys.authorize(&headers, Need::Admin)?;
    let keys = state.engine.query(|store| store.api_keys()).await?;
    Ok(json_response(200, objects::api_keys(&keys)))
}

pub(super) async fn revoke_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response> {
    state.keys.authorize(&headers, Need::Admin)?;
    let key = idempotency_key(&headers)?;
    Fields::parse(&body, &[])?;
    let path = format!("/v1/api_keys/{id}/revoke");
    let revoking = state.clone();
    let work = async move {
        match revoke(&revoking, id).await {
            Ok(body) => (200, body),
            Err(error) => (error.status, error.body()),
        }
    };
    Ok(once(&state, key, &path, &body, work).await)
}

async fn revoke(state: &AppState, id: String) -> Result<Vec<u8>> {
    let now = state.engine.clock().now();
    let target = id.clone();
    let found = state
        .engine
        .query(move |store| store.revoke_api_key(&target, now))
        .await?;
    if !found {
        return Err(ApiError::not_found("api_key_not_found", "no such API key"));
    }
    state.keys.revoke(&id);
    let keys = state.engine.query(|store| store.api_keys()).await?;
    let record = keys
        .into_iter()
        .find(|k| k.id == id)
        .ok_or_else(|| ApiError::internal("revoked key vanished"))?;
    Ok(objects::api_key(&record, None))
}
