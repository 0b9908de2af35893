//! History: transactions and usage summaries, read from the store.

use axum::extract::Query;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use purser_core::{ObjectId, ObjectKind, TYPE_NAMES, Timestamp};
use purser_store::{EntryQuery, GroupBy, UsageQuery};
use purser_wire::{ApiError, json_response, objects};

use super::{AppState, QueryMap, Result, account_handle, list_limit, pace_account};
use crate::auth::Need;

pub(super) async fn transactions(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): QueryMap,
) -> Result<Response> {
    state.keys.authorize(&headers, Need::Read)?;
    pace_account(&state, &id).await?;
    let limit = list_limit(&query)?;
    let (handle, _) = account_handle(&state, &id).await?;
    let before_seq = match query.get("starting_after") {
        None => None,
        Some(cursor) => {
            let cursor = ObjectId::parse(ObjectKind::Transaction, cursor)
                .filter(|cursor| cursor.account == handle)
                .ok_or_else(|| {
                    ApiError::invalid(
                        "starting_after",
                        "starting_after must be a transaction of this account",
                    )
                })?;
            Some(cursor.seq)
        }
    };
    let types: Vec<&'static str> = match query.get("type") {
        None => Vec::new(),
        Some(text) => text
            .split(',')
            .map(|name| {
                TYPE_NAMES
                    .iter()
                    .find(|known| **known == name)
                    .copied()
                    .ok_or_else(|| {
                        ApiError::invalid("type", format!("unknown transaction type {name}"))
                    })
            })
            .collect::<Result<_>>()?,
    };
    let entries = state
        .engine
        .query(move |store| {
            store.entries(&EntryQuery {
                account: handle,
                types,
                before_seq,
                limit: limit + 1,
            })
        })
        .await?;
    let has_more = entries.len() > limit;
    let page = &entries[..entries.len().min(limit)];
    Ok(json_response(
        200,
        objects::transactions(&id, page, has_more),
    ))
}

pub(super) async fn usage_summary(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): QueryMap,
) -> Result<Response> {
    state.keys.authorize(&headers, Need::Read)?;
    pace_account(&state, &id).await?;
    let group_by = match query.get("group_by").map(String::as_str) {
        None | Some("task") => GroupBy::Task,
        Some("day") => GroupBy::Day,
        Some("member") => GroupBy::Member,
        Some("kind") => GroupBy::Kind,
        Some(_) => {
            return Err(ApiError::invalid(
                "group_by",
                "group_by must be task, day, member or kind",
            ));
        }
    };
    let time = |name: &str| -> Result<Option<Timestamp>> {
        query
            .get(name)
            .map(|text| {
                Timestamp::parse_rfc3339(text).ok_or_else(|| {
                    ApiError::invalid(name, format!("{name} must be an RFC 3339 time"))
                })
            })
            .transpose()
    };
    let (from, to) = (time("from")?, time("to")?);
    let (handle, _) = account_handle(&state, &id).await?;
    let rows = state
        .engine
        .query(move |store| {
            store.usage(&UsageQuery {
                account: handle,
                from,
                to,
                group_by,
            })
        })
        .await?;
    let group_name = query.get("group_by").map_or("task", String::as_str);
    Ok(json_response(
        200,
        objects::usage_summary(&id, group_name, from, to, &rows),
    ))
}
