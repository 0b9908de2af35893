//! Webhook endpoints (created with their secret shown once, listed,
//! updated, rotated, deleted, their delivery attempts) and resending an
//! event.

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use purser_core::EventId;
use purser_wire::{ApiError, Fields, json_response, objects};
use serde_json::{Value, json};

use super::{AppState, JsonBody, QueryMap, Result, idempotency_key, list_limit, once};
use crate::auth::Need;
use crate::webhooks::{self, Attempt, Endpoint, EndpointError, ROTATION_OVERLAP, sign, timestamp};

fn endpoint_json(endpoint: &Endpoint, secret: Option<&str>) -> Value {
    let mut value = json!({
        "object": "webhook_endpoint",
        "id": endpoint.id,
        "url": endpoint.url,
        "events": endpoint.events,
        "description": endpoint.description,
        "status": endpoint.status,
        "disabled_reason": endpoint.disabled_reason,
        "created_at": timestamp(endpoint.created_at).to_string(),
    });
    if let Some(secret) = secret {
        value["secret"] = json!(secret);
    }
    value
}

fn attempt_json(attempt: &Attempt) -> Value {
    json!({
        "object": "webhook_delivery",
        "id": format!("whd_{}", attempt.id),
        "event": attempt.event,
        "created_at": attempt.at.to_string(),
        "status_code": attempt.status,
        "error": attempt.error,
        "duration_ms": attempt.duration_ms,
        "next_attempt_at": attempt.next_attempt.map(|at| at.to_string()),
    })
}

/// A list page of the first `limit` of `items` (one more was read, or the
/// rest is given, to tell `has_more`).
fn page<T>(items: &[T], limit: usize, render: impl Fn(&T) -> Value) -> Response {
    let rendered: Vec<Vec<u8>> = items
        .iter()
        .take(limit)
        .map(|item| body(&render(item)))
        .collect();
    json_response(200, objects::rendered_list(&rendered, items.len() > limit))
}

fn body(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("JSON")
}

impl From<EndpointError> for ApiError {
    fn from(error: EndpointError) -> ApiError {
        match error {
            EndpointError::Invalid(param, message) => ApiError::invalid(param, message),
            EndpointError::NotFound => {
                ApiError::not_found("webhook_endpoint_not_found", "no such webhook endpoint")
            }
            EndpointError::TooMany => ApiError::bad_request(
                "limit_exceeded",
                format!("at most {} webhook endpoints", webhooks::MAX_ENDPOINTS),
            ),
            EndpointError::Store(message) => ApiError::internal(message),
        }
    }
}

fn answer(result: std::result::Result<Value, EndpointError>, status: u16) -> (u16, Vec<u8>) {
    match result {
        Ok(value) => (status, body(&value)),
        Err(error) => {
            let error = ApiError::from(error);
            (error.status, error.body())
        }
    }
}

fn events_of(fields: &Fields) -> Result<Option<Vec<String>>> {
    let Some(events) = fields.array("events")? else {
        return Ok(None);
    };
    events
        .iter()
        .map(|event| {
            event
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| ApiError::invalid("events", "events must be strings"))
        })
        .collect::<Result<Vec<_>>>()
        .and_then(|events| webhooks::check_events(events).map_err(ApiError::from))
        .map(Some)
}

fn description_of(fields: &Fields) -> Result<Option<String>> {
    match fields.string("description")? {
        Some(text) if text.chars().count() > 500 => Err(ApiError::invalid(
            "description",
            "description must be at most 500 characters",
        )),
        other => Ok(other.map(str::to_owned)),
    }
}

pub(super) async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Response> {
    state.keys.authorize(&headers, Need::Admin)?;
    let key = idempotency_key(&headers)?;
    let fields = Fields::parse(&body, &["url", "events", "description"])?;
    let url = purser_wire::required(fields.string("url")?, "url")?.to_owned();
    state.webhooks.check_url(&url)?;
    let events = events_of(&fields)?.unwrap_or_else(|| vec!["*".into()]);
    let description = description_of(&fields)?;
    let hooks = state.webhooks.clone();
    let work = async move {
        let created = hooks.create(url, events, description).await;
        answer(
            created.map(|endpoint| endpoint_json(&endpoint, Some(&endpoint.secret))),
            201,
        )
    };
    Ok(once(&state, key, "/v1/webhook_endpoints", &body, work).await)
}

pub(super) async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): QueryMap,
) -> Result<Response> {
    state.keys.authorize(&headers, Need::Read)?;
    let limit = list_limit(&query)?;
    let mut endpoints = state.webhooks.list();
    endpoints.reverse();
    let start = match query.get("starting_after") {
        None => 0,
        Some(cursor) => {
            endpoints
                .iter()
                .position(|endpoint| &endpoint.id == cursor)
                .ok_or_else(|| {
                    ApiError::invalid(
                        "starting_after",
                        "starting_after must be a webhook endpoint",
                    )
                })?
                + 1
        }
    };
    Ok(page(&endpoints[start..], limit, |endpoint| {
        endpoint_json(endpoint, None)
    }))
}

pub(super) async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response> {
    state.keys.authorize(&headers, Need::Read)?;
    let endpoint = state.webhooks.get(&id).ok_or(EndpointError::NotFound)?;
    Ok(json_response(200, body(&endpoint_json(&endpoint, None))))
}

pub(super) async fn update(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response> {
    state.keys.authorize(&headers, Need::Admin)?;
    let key = idempotency_key(&headers)?;
    let fields = Fields::parse(&body, &["url", "events", "description", "status"])?;
    let url = fields.string("url")?.map(str::to_owned);
    if let Some(url) = &url {
        state.webhooks.check_url(url)?;
    }
    let events = events_of(&fields)?;
    // null clears the description; absent keeps it.
    let description = if fields.has("description") {
        Some(description_of(&fields)?)
    } else if fields.is_null("description") {
        Some(None)
    } else {
        None
    };
    let status = fields
        .choice("status", &["enabled", "disabled"])?
        .map(|index| ["enabled", "disabled"][index]);
    let hooks = state.webhooks.clone();
    let path = format!("/v1/webhook_endpoints/{id}");
    let work = async move {
        let updated = hooks
            .update(&id, |endpoint| {
                if let Some(url) = url {
                    endpoint.url = url;
                }
                if let Some(events) = events {
                    endpoint.events = events;
                }
                if let Some(description) = description {
                    endpoint.description = description;
                }
                if let Some(status) = status {
                    if status == "enabled" && !endpoint.enabled() {
                        endpoint.disabled_reason = None;
                        endpoint.failing_since = None;
                    }
                    endpoint.status = status.into();
                }
                Ok(())
            })
            .await;
        answer(updated.map(|endpoint| endpoint_json(&endpoint, None)), 200)
    };
    Ok(once(&state, key, &path, &body, work).await)
}

pub(super) async fn rotate_secret(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response> {
    state.keys.authorize(&headers, Need::Admin)?;
    let key = idempotency_key(&headers)?;
    Fields::parse(&body, &[])?;
    let hooks = state.webhooks.clone();
    let path = format!("/v1/webhook_endpoints/{id}/rotate_secret");
    let work = async move {
        let secret = sign::new_secret();
        let until = hooks.now_micros() + ROTATION_OVERLAP.as_micros() as i64;
        let rotated = hooks
            .update(&id, |endpoint| {
                let old = std::mem::replace(&mut endpoint.secret, secret.clone());
                endpoint.previous_secret = Some((old, until));
                Ok(())
            })
            .await;
        answer(
            rotated.map(|endpoint| endpoint_json(&endpoint, Some(&endpoint.secret))),
            200,
        )
    };
    Ok(once(&state, key, &path, &body, work).await)
}

pub(super) async fn delete(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response> {
    state.keys.authorize(&headers, Need::Admin)?;
    let deleted = state.webhooks.delete(&id).await?;
    Ok(json_response(
        200,
        body(&json!({"object": "webhook_endpoint", "id": deleted.id, "deleted": true})),
    ))
}

pub(super) async fn deliveries(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): QueryMap,
) -> Result<Response> {
    state.keys.authorize(&headers, Need::Read)?;
    let limit = list_limit(&query)?;
    let before = match query.get("starting_after") {
        None => None,
        Some(cursor) => Some(
            cursor
                .strip_prefix("whd_")
                .and_then(|n| n.parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::invalid("starting_after", "starting_after must be a delivery id")
                })?,
        ),
    };
    state.webhooks.get(&id).ok_or(EndpointError::NotFound)?;
    let attempts = state.webhooks.attempts(&id, before, limit + 1).await?;
    Ok(page(&attempts, limit, attempt_json))
}

pub(super) async fn resend(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response> {
    state.keys.authorize(&headers, Need::Admin)?;
    let key = idempotency_key(&headers)?;
    let fields = Fields::parse(&body, &["endpoint"])?;
    let only = fields.string("endpoint")?.map(str::to_owned);
    let not_found = || ApiError::not_found("event_not_found", "no such event");
    let event_id = EventId::parse(&id).ok_or_else(not_found)?;
    let stored = state
        .engine
        .query(move |store| store.event(event_id))
        .await?
        .ok_or_else(not_found)?;
    let targets: Vec<Endpoint> =
        match &only {
            Some(endpoint) => vec![state.webhooks.get(endpoint).ok_or_else(|| {
                ApiError::invalid("endpoint", "endpoint names no webhook endpoint")
            })?],
            None => state
                .webhooks
                .list()
                .into_iter()
                .filter(|e| e.enabled() && e.wants(stored.event.kind))
                .collect(),
        };
    let hooks = state.webhooks.clone();
    let path = format!("/v1/events/{id}/resend");
    let work = async move {
        for endpoint in &targets {
            hooks.resend(endpoint, &stored).await;
        }
        (200, stored.event.body.clone())
    };
    Ok(once(&state, key, &path, &body, work).await)
}
