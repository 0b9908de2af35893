//! Events: the outbox, read from the store (`GET /v1/events`, `GET
//! /v1/events/{id}`).

use axum::extract::Query;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use purser_core::{AccountId, EventId, EventType};
use purser_store::EventQuery;
use purser_wire::{ApiError, json_response, objects};

use super::{AppState, QueryMap, Result, list_limit};
use crate::auth::Need;

pub(super) async fn list_events(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): QueryMap,
) -> Result<Response> {
    let caller = state.keys.authorize(&headers, Need::Read)?;
    let limit = list_limit(&query)?;
    for name in query.keys() {
        if !["limit", "starting_after", "type", "account"].contains(&name.as_str()) {
            return Err(ApiError::invalid(name, format!("unknown parameter {name}")));
        }
    }
    let kind = query
        .get("type")
        .map(|name| {
            EventType::parse(name)
                .ok_or_else(|| ApiError::invalid("type", format!("unknown event type {name}")))
        })
        .transpose()?;
    let account = query
        .get("account")
        .map(|id| {
            AccountId::parse(id)
                .map(|id| id.to_string())
                .map_err(|_| ApiError::invalid("account", "account is not an account id"))
        })
        .transpose()?;
    // An account's events are its lists' pace (once its id is checked);
    // all events, the API key's.
    let paced = match &account {
        Some(account) => account.clone(),
        None => super::paced_per_key("*events", &caller),
    };
    super::pace(&state, &paced).await?;
    let before = match query.get("starting_after") {
        None => None,
        Some(cursor) => {
            let id = EventId::parse(cursor).ok_or_else(|| {
                ApiError::invalid("starting_after", "starting_after must be an event id")
            })?;
            let found = state.engine.query(move |store| store.event(id)).await?;
            Some(
                found
                    .ok_or_else(|| {
                        ApiError::invalid("starting_after", "starting_after names no event")
                    })?
                    .position,
            )
        }
    };
    let events = state
        .engine
        .query(move |store| {
            store.events(&EventQuery {
                account,
                kind,
                before,
                after: None,
                limit: limit + 1,
            })
        })
        .await?;
    let has_more = events.len() > limit;
    let items: Vec<Vec<u8>> = events
        .into_iter()
        .take(limit)
        .map(|stored| stored.event.body)
        .collect();
    Ok(json_response(200, objects::rendered_list(&items, has_more)))
}

pub(super) async fn get_event(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response> {
    state.keys.authorize(&headers, Need::Read)?;
    let not_found = || ApiError::not_found("event_not_found", "no such event");
    let id = EventId::parse(&id).ok_or_else(not_found)?;
    let found = state.engine.query(move |store| store.event(id)).await?;
    let stored = found.ok_or_else(not_found)?;
    Ok(json_response(200, stored.event.body))
}
