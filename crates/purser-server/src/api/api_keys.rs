//! API keys: created (the secret shown once), listed, revoked.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use purser_store::ApiKeyRecord;
use purser_wire::{ApiError, Fields, json_response, objects, required};

use super::{AppState, JsonBody, Result};
use crate::auth::{Need, SCOPES, generate_secret, hash_secret, random_hex};

pub(super) async fn create_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Response> {
    state.keys.authorize(&headers, Need::Admin)?;
    let fields = Fields::parse(&body, &["scopes", "name"])?;
    let scopes = required(fields.array("scopes")?, "scopes")?;
    let mut parsed = Vec::new();
    for scope in scopes {
        match scope.as_str() {
            Some(scope) if SCOPES.contains(&scope) => parsed.push(scope.to_owned()),
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
    let secret = generate_secret();
    let record = ApiKeyRecord {
        id: format!("key_{}", random_hex(12)),
        secret_hash: hash_secret(&secret),
        scopes: parsed,
        created_at: state.engine.clock().now(),
        revoked_at: None,
    };
    let stored = record.clone();
    state
        .engine
        .query(move |store| store.insert_api_key(&stored))
        .await?;
    state.keys.add(&record);
    Ok(json_response(201, objects::api_key(&record, Some(&secret))))
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
) -> Result<Response> {
    state.keys.authorize(&headers, Need::Admin)?;
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
    Ok(json_response(200, objects::api_key(&record, None)))
}
