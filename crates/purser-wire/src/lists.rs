//! Purchases and grants: the ones in memory, and the settled ones the
//! store keeps (issue 14: settled objects leave memory). A list page is
//! the shard's page of what is in memory merged with a page of the store's;
//! a purchase not in memory is read from the store.
//!
//! Each function asks the engine (a read through the shard, then a store
//! query off the shard) and renders; the shard never renders more than one
//! page, and never waits on the store for a read.

use purser_core::{AccountHandle, AccountId, ObjectId, ObjectKind, Rejection, Settled, Timestamp};
use purser_engine::{Busy, Engine, Page, Read, Rendered};
use purser_store::{SettledKind, SettledRecord};
use serde_json::{Value, json};

use crate::render::{grant_json_of, purchase_json_of};

fn unavailable<E: std::fmt::Debug>(error: E) -> Busy {
    tracing::error!(?error, "reading settled objects from the store");
    Busy::Unavailable
}

/// The account's handle, or the shard's answer when the read was refused.
async fn handle_of(engine: &Engine, account: &AccountId) -> Result<Option<AccountHandle>, Busy> {
    Ok(engine.handle(account).await?.map(|(handle, _)| handle))
}

/// A page of an account's purchases, newest first: the shard's page of
/// the ones in memory merged, by id, with the store's of the settled ones.
pub async fn purchases(engine: &Engine, account: AccountId, page: Page) -> Result<Rendered, Busy> {
    let resident = engine.read(Read::Purchases(account.clone(), page)).await?;
    if resident.status != 200 {
        return Ok(resident);
    }
    let Some(handle) = handle_of(engine, &account).await? else {
        return Ok(resident);
    };
    let (limit, before) = (page.limit, page.starting_after);
    let stored = engine
        .query(move |store| {
            store.settled_page(
                handle,
                SettledKind::Purchase,
                before,
                limit.saturating_add(1),
            )
        })
        .await
        .map_err(unavailable)?;
    Ok(merge(
        resident,
        stored,
        limit,
        ObjectKind::Purchase,
        |record| match &record.object {
            Settled::Purchase(purchase) => {
                Some(purchase_json_of(handle, account.as_str(), purchase))
            }
            Settled::Grant(_) => None,
        },
    ))
}

/// A page of an account's grants: the ones in memory first (active, in
/// burn order, then the rest), then the settled ones (spent, voided, their
/// purchase refunded), newest first, from the store. A cursor that names a
/// settled grant pages on in the store.
pub async fn grants(
    engine: &Engine,
    account: AccountId,
    page: Page,
    now: Timestamp,
) -> Result<Rendered, Busy> {
    let Some(handle) = handle_of(engine, &account).await? else {
        return engine.read(Read::Grants(account, page)).await;
    };
    let render = |record: &SettledRecord| match &record.object {
        Settled::Grant(grant) => Some(grant_json_of(handle, account.as_str(), grant, now)),
        Settled::Purchase(_) => None,
    };
    let limit = page.limit;
    if let Some(cursor) = page.starting_after {
        let settled = engine
            .query(move |store| store.settled(handle, cursor, u64::MAX))
            .await
            .map_err(unavailable)?;
        if let Some(SettledRecord {
            object: Settled::Grant(_),
            ..
        }) = settled
        {
            let stored = engine
                .query(move |store| {
                    store.settled_page(
                        handle,
                        SettledKind::Grant,
                        Some(cursor),
                        limit.saturating_add(1),
                    )
                })
                .await
                .map_err(unavailable)?;
            let empty = list(Vec::new(), false);
            return Ok(merge(empty, stored, limit, ObjectKind::Grant, render));
        }
    }
    let resident = engine.read(Read::Grants(account.clone(), page)).await?;
    if resident.status != 200 {
        return Ok(resident);
    }
    let body: Value = serde_json::from_slice(&resident.body).map_err(unavailable)?;
    if body["has_more"].as_bool() == Some(true) {
        return Ok(resident);
    }
    let shown = body["data"].as_array().map_or(0, Vec::len);
    if let (Some(cursor), 0) = (page.starting_after, shown) {
        // The last grant in memory, or no grant at all (an empty page).
        let entry = engine
            .query(move |store| store.entry(handle, cursor))
            .await
            .map_err(unavailable)?;
        if !entry.is_some_and(|entry| entry.body.creates(ObjectKind::Grant)) {
            return Ok(resident);
        }
    }
    // The settled ones follow, from the newest.
    let stored = engine
        .query(move |store| {
            store.settled_page(handle, SettledKind::Grant, None, limit.saturating_add(1))
        })
        .await
        .map_err(unavailable)?;
    Ok(append(
        resident,
        body,
        stored,
        limit,
        ObjectKind::Grant,
        render,
    ))
}

/// One purchase: from memory, else (settled) from the store.
pub async fn purchase(engine: &Engine, id: ObjectId) -> Result<Rendered, Busy> {
    let resident = engine.read(Read::Purchase(id)).await?;
    if resident.status != 404 {
        return Ok(resident);
    }
    let stored = engine
        .query(move |store| store.settled(id.account, id.seq, u64::MAX))
        .await
        .map_err(unavailable)?;
    let Some(SettledRecord {
        object: Settled::Purchase(purchase),
        ..
    }) = stored
    else {
        return Ok(resident);
    };
    // The account's id: its opening entry names it.
    let opening = engine
        .query(move |store| store.entry(id.account, 0))
        .await
        .map_err(unavailable)?;
    let Some(purser_core::Body::Opened(opened)) = opening.map(|entry| entry.body) else {
        return Ok(crate::answers::refusal(&Rejection::PurchaseNotFound));
    };
    Ok(Rendered {
        status: 200,
        body: serde_json::to_vec(&purchase_json_of(id.account, opened.id.as_str(), &purchase))
            .expect("JSON"),
        remember: None,
    })
}

/// Sequence number of a listed object, from its id.
fn seq_of(item: &Value, kind: ObjectKind) -> Option<u64> {
    ObjectId::parse(kind, item["id"].as_str()?).map(|id| id.seq)
}

/// The shard's page and the store's, newest first by id, each object once
/// (the one in memory if both have it), `limit` of them.
fn merge(
    resident: Rendered,
    stored: Vec<SettledRecord>,
    limit: usize,
    kind: ObjectKind,
    render: impl Fn(&SettledRecord) -> Option<Value>,
) -> Rendered {
    if stored.is_empty() {
        return resident;
    }
    let Ok(body) = serde_json::from_slice::<Value>(&resident.body) else {
        return resident;
    };
    let more_in_memory = body["has_more"].as_bool() == Some(true);
    let more_stored = stored.len() > limit;
    let mut items: Vec<(u64, Value)> = body["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| Some((seq_of(item, kind)?, item.clone())))
        .collect();
    for record in &stored {
        if items.iter().any(|(seq, _)| *seq == record.seq()) {
            continue;
        }
        if let Some(value) = render(record) {
            items.push((record.seq(), value));
        }
    }
    items.sort_by_key(|item| std::cmp::Reverse(item.0));
    let has_more = items.len() > limit || more_in_memory || more_stored;
    items.truncate(limit);
    list(
        items.into_iter().map(|(_, value)| value).collect(),
        has_more,
    )
}

/// The shard's whole page (nothing more in memory), then the store's from
/// its newest, up to `limit` in all.
fn append(
    resident: Rendered,
    body: Value,
    stored: Vec<SettledRecord>,
    limit: usize,
    kind: ObjectKind,
    render: impl Fn(&SettledRecord) -> Option<Value>,
) -> Rendered {
    if stored.is_empty() {
        return resident;
    }
    let mut items: Vec<Value> = body["data"].as_array().cloned().unwrap_or_default();
    let shown: Vec<u64> = items.iter().filter_map(|item| seq_of(item, kind)).collect();
    let mut has_more = false;
    for record in &stored {
        if shown.contains(&record.seq()) {
            continue;
        }
        if items.len() == limit {
            has_more = true;
            break;
        }
        if let Some(value) = render(record) {
            items.push(value);
        }
    }
    list(items, has_more)
}

fn list(data: Vec<Value>, has_more: bool) -> Rendered {
    Rendered {
        status: 200,
        body: serde_json::to_vec(&json!({"object": "list", "data": data, "has_more": has_more}))
            .expect("JSON rendering cannot fail"),
        remember: None,
    }
}
