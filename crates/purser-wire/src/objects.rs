//! The objects only the API answers with (API keys, history pages, usage
//! summaries, settled holds, the catalog, …): built from stored records and
//! journal entries rather than from a shard's memory.

use purser_core::{Catalog, Entry, HoldEnd, ObjectId, ObjectKind, Timestamp};
use purser_store::{ApiKeyRecord, UsageRow};
use serde_json::{Value, json};

use crate::render::{Text, to_json, transaction_json};

/// An API key; `secret` only in the answer that created it.
pub fn api_key(record: &ApiKeyRecord, secret: Option<&str>) -> Vec<u8> {
    let mut value = api_key_json(record);
    if let Some(secret) = secret {
        value["secret"] = json!(secret);
    }
    to_json(&value)
}

fn api_key_json(record: &ApiKeyRecord) -> Value {
    json!({
        "object": "api_key",
        "id": record.id,
        "scopes": record.scopes,
        "created_at": Text(record.created_at),
        "revoked_at": record.revoked_at.map(|t| t.to_string()),
    })
}

/// Every API key, newest first.
pub fn api_keys(records: &[ApiKeyRecord]) -> Vec<u8> {
    let data: Vec<Value> = records.iter().rev().map(api_key_json).collect();
    to_json(&json!({"object": "list", "data": data, "has_more": false}))
}

/// A list of objects already rendered.
pub fn rendered_list(items: &[Vec<u8>], has_more: bool) -> Vec<u8> {
    let mut body = Vec::with_capacity(items.iter().map(|item| item.len() + 1).sum::<usize>() + 64);
    body.extend_from_slice(br#"{"object":"list","data":["#);
    for (index, item) in items.iter().enumerate() {
        if index > 0 {
            body.push(b',');
        }
        body.extend_from_slice(item);
    }
    body.extend_from_slice(format!(r#"],"has_more":{has_more}}}"#).as_bytes());
    body
}

/// The results of a batch of charges: each a debit (2xx) or an error.
#[derive(Debug)]
pub struct BatchResults(Vec<u8>);

impl BatchResults {
    pub fn new(items: usize) -> BatchResults {
        let mut body = Vec::with_capacity(items * 600 + 32);
        body.extend_from_slice(br#"{"object":"list","results":["#);
        BatchResults(body)
    }

    /// The next item's answer, as a single charge would have answered it.
    pub fn push(&mut self, status: u16, answer: &[u8]) {
        let body = &mut self.0;
        if body.last() != Some(&b'[') {
            body.push(b',');
        }
        if (200..300).contains(&status) {
            body.extend_from_slice(format!(r#"{{"status":{status},"debit":"#).as_bytes());
            body.extend_from_slice(answer);
        } else {
            let error = serde_json::from_slice::<Value>(answer)
                .ok()
                .and_then(|value| value.get("error").cloned())
                .unwrap_or(Value::Null);
            body.extend_from_slice(format!(r#"{{"status":{status},"error":{error}"#).as_bytes());
        }
        body.push(b'}');
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.0.extend_from_slice(b"]}");
        self.0
    }
}

/// `GET /v1/debits/{id}`: the debit's transaction, as a debit.
pub fn debit(account: &str, id: &str, entry: &Entry) -> Vec<u8> {
    let mut value = transaction_json(account, entry);
    value["object"] = json!("debit");
    value["id"] = json!(id);
    to_json(&value)
}

/// A hold no longer in memory, from the entry that placed it and the one
/// that ended it (`None`: still active).
pub fn settled_hold(
    hold: ObjectId,
    account: &Value,
    placed: &purser_core::Hold,
    ended: Option<&Entry>,
) -> Vec<u8> {
    let ended = ended.and_then(|entry| Some((entry, entry.body.ends_hold(hold.seq)?)));
    let status = match ended.map(|(_, end)| end) {
        Some(HoldEnd::Captured) => "captured",
        Some(HoldEnd::Released) => "released",
        Some(HoldEnd::Expired) => "expired",
        None => "active",
    };
    let mut value = json!({
        "object": "hold",
        "id": hold.format(ObjectKind::Hold),
        "account": account,
        "credits": placed.credits.to_string(),
        "status": status,
        "task": placed.pricing.as_ref().map(|p| p.task.as_str()),
        "member": placed.member.as_ref().map(|m| m.as_str()),
        "created_at": Text(placed.created_at),
        "expires_at": Text(placed.expires_at),
    });
    if let Some((settled, end)) = ended {
        value["settled_at"] = json!(settled.at.to_string());
        if end == HoldEnd::Captured {
            value["debit"] = json!(
                ObjectId {
                    account: hold.account,
                    seq: settled.seq
                }
                .format(ObjectKind::Debit)
            );
        }
    }
    to_json(&value)
}

/// A page of an account's transactions, newest first.
pub fn transactions(account: &str, entries: &[Entry], has_more: bool) -> Vec<u8> {
    let data: Vec<Value> = entries
        .iter()
        .map(|entry| transaction_json(account, entry))
        .collect();
    to_json(&json!({"object": "list", "data": data, "has_more": has_more}))
}

/// A usage summary of API.md.
pub fn usage_summary(
    account: &str,
    group_by: &str,
    from: Option<Timestamp>,
    to: Option<Timestamp>,
    rows: &[UsageRow],
) -> Vec<u8> {
    let data: Vec<Value> = rows
        .iter()
        .map(|row| json!({"key": row.key, "credits": row.credits.to_string(), "count": row.count}))
        .collect();
    to_json(&json!({
        "object": "usage_summary",
        "account": account,
        "group_by": group_by,
        "from": from.map(|t| t.to_string()),
        "to": to.map(|t| t.to_string()),
        "data": data,
    }))
}

/// The test clock.
pub fn test_clock(now: Timestamp) -> Vec<u8> {
    to_json(&json!({"object": "test_clock", "now": Text(now)}))
}

/// A portal session: the link that opens the portal for one account.
#[derive(Debug)]
pub struct PortalSession<'a> {
    pub id: &'a str,
    pub account: &'a str,
    pub url: &'a str,
    pub return_url: Option<&'a str>,
    pub expires_at: Timestamp,
    pub created_at: Timestamp,
}

pub fn portal_session(session: &PortalSession<'_>) -> Vec<u8> {
    to_json(&json!({
        "object": "portal_session",
        "id": session.id,
        "account": session.account,
        "url": session.url,
        "return_url": session.return_url,
        "expires_at": Text(session.expires_at),
        "created_at": Text(session.created_at),
    }))
}

/// `GET /v1/catalog`.
pub fn catalog(catalog: &Catalog) -> Vec<u8> {
    let tiers: Vec<Value> = catalog
        .tiers()
        .iter()
        .map(|t| {
            json!({
                "object": "tier", "id": t.id.as_str(), "name": t.name,
                "monthly_credits": t.monthly_credits.to_string(), "price": t.price.to_string(),
                "currency": catalog.currency(),
                "member_monthly_cap": t.member_monthly_cap.map(|c| c.to_string()),
                "rollover_cap": t.rollover_cap.to_string(),
                "low_balance_thresholds": t.low_balance_thresholds().iter().map(ToString::to_string).collect::<Vec<_>>(),
                "stripe_price": t.stripe_price,
            })
        })
        .collect();
    let packages: Vec<Value> = catalog
        .packages()
        .iter()
        .map(|p| {
            json!({
                "object": "package", "id": p.id.as_str(), "name": p.name,
                "credits": p.credits.to_string(), "price": p.price.to_string(), "currency": catalog.currency(),
            })
        })
        .collect();
    let tasks: Vec<Value> = catalog
        .tasks()
        .iter()
        .map(|t| {
            json!({
                "object": "task", "id": t.id.as_str(), "name": t.name, "unit": t.unit,
                "credits_per_unit": t.credits_per_unit.to_string(),
                "minimum": t.minimum.map(|m| m.to_string()),
            })
        })
        .collect();
    to_json(
        &json!({"object": "catalog", "currency": catalog.currency(), "tiers": tiers, "packages": packages, "tasks": tasks}),
    )
}
