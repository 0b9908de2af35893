//! The engine's answers as API.md's JSON: [`JsonAnswers`] is the
//! [`Render`] the server gives the engine. Rendered on the shard threads,
//! so the idempotency record written with a batch is the exact answer (or,
//! for a debit, the memo it is rendered from again).

use purser_core::{Account, Body, Entry, Grant, ObjectKind, Rejection, Timestamp};
use purser_engine::{Accepted, EventContext, Page, Read, Render, Rendered, Shape};
use purser_store::Store;
use serde_json::{Value, json};

use crate::memo::{self, DebitMemo, Decoded};
use crate::render::{
    BalanceJson, account_body, debit_body, debit_from_memo, debit_memo, grant_json, hold_json,
    object_id, purchase_json, rejection, to_json, transaction_json,
};

/// API.md's JSON for every answer the engine gives.
#[derive(Clone, Copy, Debug, Default)]
pub struct JsonAnswers;

fn answer(status: u16, body: Vec<u8>) -> Rendered {
    Rendered {
        status,
        body,
        remember: None,
    }
}

pub(crate) fn refusal(refused: &Rejection) -> Rendered {
    let (status, body) = rejection(refused);
    answer(status, body)
}

/// A page of an in-memory list as `{"object": "list", "data", "has_more"}`.
/// A list page of `items` (in list order, each with its sequence number,
/// the cursor): only the page's items are rendered, so a read of a long
/// list costs its page, not the list, on the shard thread.
fn list<T>(
    page: Page,
    items: impl IntoIterator<Item = (u64, T)>,
    render: impl Fn(T) -> Value,
) -> Vec<u8> {
    let mut items = items.into_iter();
    if let Some(cursor) = page.starting_after {
        // An unknown cursor gives an empty page.
        if !items.by_ref().any(|(seq, _)| seq == cursor) {
            return to_json(&json!({"object": "list", "data": [], "has_more": false}));
        }
    }
    let mut data = Vec::with_capacity(page.limit.min(100));
    let mut has_more = false;
    for (_, item) in items {
        if data.len() == page.limit {
            has_more = true;
            break;
        }
        data.push(render(item));
    }
    to_json(&json!({"object": "list", "data": data, "has_more": has_more}))
}

impl Render for JsonAnswers {
    fn accepted(&self, accepted: &Accepted<'_>) -> Rendered {
        let primary = accepted
            .receipt
            .primary
            .map(|index| &accepted.entries[index]);
        if let (Shape::Debit { created }, Some(entry), true) =
            (&accepted.shape, primary, accepted.keyed)
        {
            // A keyed debit's key remembers a memo, not the answer; the
            // answer is rendered from that memo, as a replay will be.
            let memo = debit_memo(accepted.account, entry, accepted.now);
            let remember = memo.encode();
            // The answer is rendered from what a replay will read back:
            // the bytes, completed by the account's id and anchor.
            let account = accepted.account;
            let read_back = match DebitMemo::decode(&remember) {
                Some(Decoded::Partial(partial)) => {
                    partial.complete(account.id().as_str().to_owned(), account.anchor())
                }
                _ => None,
            };
            debug_assert_eq!(read_back.as_ref(), Some(&memo));
            let body = debit_from_memo(read_back.as_ref().unwrap_or(&memo), entry);
            return Rendered {
                status: if *created { 201 } else { 200 },
                body,
                remember: Some(remember),
            };
        }
        let mut rendered = accepted_answer(accepted, primary);
        if accepted.keyed && (200..300).contains(&rendered.status) {
            rendered.remember = Some(rendered.body.clone());
        }
        rendered
    }

    fn event(&self, event: &EventContext<'_>) -> Vec<u8> {
        crate::events::event_body(event)
    }

    fn refused(&self, rejection: &Rejection) -> Rendered {
        refusal(rejection)
    }

    fn read(&self, read: Read, account: Option<&Account>, now: Timestamp) -> Rendered {
        let Some(account) = account else {
            return refusal(&match read {
                Read::Hold(_) => Rejection::HoldNotFound,
                Read::Purchase(_) => Rejection::PurchaseNotFound,
                _ => Rejection::AccountNotFound,
            });
        };
        match read {
            Read::Account(_) | Read::AccountByHandle(_) => answer(200, account_body(account, now)),
            Read::Balance(_) => answer(200, to_json(&BalanceJson::new(account, now))),
            Read::Grants(_, page) => {
                // Active first (burn order), then the rest, then the spent
                // ones, newest first. A page after a spent grant starts at
                // it, not by walking the list up to it.
                let render = |g: &Grant| grant_json(account, g, now);
                match page.starting_after.filter(|seq| account.is_spent(*seq)) {
                    Some(cursor) => {
                        let items = account.spent_before(cursor).rev().map(|g| (g.seq, g));
                        answer(
                            200,
                            list(
                                Page {
                                    starting_after: None,
                                    ..page
                                },
                                items,
                                render,
                            ),
                        )
                    }
                    None => {
                        let active = account.grants().iter().filter(|g| g.is_active(now));
                        let rest = account.grants().iter().filter(|g| !g.is_active(now));
                        let spent = account.spent().rev();
                        let items = active.chain(rest).chain(spent).map(|g: &Grant| (g.seq, g));
                        answer(200, list(page, items, render))
                    }
                }
            }
            Read::Purchases(_, page) => {
                // Newest first, in sequence order: a page after a cursor
                // starts at it (binary search), whatever the list's length.
                let purchases = account.purchases();
                let before = match page.starting_after {
                    None => purchases.len(),
                    // A cursor not in memory (a settled purchase: the
                    // rest of the page comes from the store) starts
                    // where it would be.
                    Some(cursor) => purchases
                        .binary_search_by_key(&cursor, |p| p.seq)
                        .unwrap_or_else(|at| at),
                };
                let items = purchases[..before].iter().rev().map(|p| (p.seq, p));
                let page = Page {
                    starting_after: None,
                    ..page
                };
                answer(200, list(page, items, |p| purchase_json(account, p)))
            }
            Read::Hold(hold) => match account.hold(hold.seq) {
                Some(active) => answer(200, to_json(&hold_json(account, active, "active"))),
                None => refusal(&Rejection::HoldNotFound),
            },
            Read::Purchase(purchase) => match account.purchase(purchase.seq) {
                Some(found) => answer(200, to_json(&purchase_json(account, found))),
                None => refusal(&Rejection::PurchaseNotFound),
            },
        }
    }

    fn account(&self, account: &Account, now: Timestamp) -> Vec<u8> {
        account_body(account, now)
    }

    fn recall_reads_store(&self, remembered: &[u8]) -> bool {
        memo::is_memo(remembered)
    }

    fn recall(&self, remembered: &[u8], store: &dyn Store) -> Result<Vec<u8>, String> {
        if !memo::is_memo(remembered) {
            return Ok(remembered.to_vec());
        }
        let unreadable = || "a remembered answer could not be read".to_string();
        let entry = |account, seq| {
            store
                .entry(account, seq)
                .map_err(|error| {
                    tracing::error!(%error, "store query failed");
                    "the store could not answer".to_string()
                })?
                .ok_or_else(|| "a remembered answer's entry is missing".to_string())
        };
        let memo = match DebitMemo::decode(remembered).ok_or_else(unreadable)? {
            Decoded::Whole(memo) => memo,
            Decoded::Partial(partial) => {
                // The account's id and anchor, from its opening entry.
                let opening = entry(partial.account, 0)?;
                let Body::Opened(opened) = &opening.body else {
                    return Err("a remembered answer's account has no opening entry".into());
                };
                partial
                    .complete(opened.id.as_str().to_owned(), opened.anchor)
                    .ok_or_else(unreadable)?
            }
        };
        Ok(debit_from_memo(&memo, &entry(memo.account, memo.seq)?))
    }
}

/// The answer of an accepted command, from the entries it wrote and the
/// account after it.
fn accepted_answer(accepted: &Accepted<'_>, primary: Option<&Entry>) -> Rendered {
    let (account, now) = (accepted.account, accepted.now);
    match (&accepted.shape, primary) {
        (Shape::AccountCreated, _) => answer(201, account_body(account, now)),
        (Shape::Account, _) => answer(200, account_body(account, now)),
        (Shape::Debit { created }, Some(entry)) => answer(
            if *created { 201 } else { 200 },
            debit_body(account, entry, now),
        ),
        (
            Shape::Hold,
            Some(Entry {
                body: Body::Held(hold),
                ..
            }),
        ) => answer(201, to_json(&hold_json(account, hold, "active"))),
        (Shape::Released(Some(hold)), _) => {
            answer(200, to_json(&hold_json(account, hold, "released")))
        }
        (Shape::Grant { created }, Some(entry)) => {
            let status = if *created { 201 } else { 200 };
            let seq = match &entry.body {
                Body::Granted(grant) => grant.seq,
                Body::Voided { allocation, .. } => allocation.grant,
                _ => unreachable!("a grant answer is a grant or a void"),
            };
            match account.grant(seq) {
                Some(grant) => answer(status, to_json(&grant_json(account, grant, now))),
                None => answer(
                    status,
                    to_json(
                        &json!({"object": "grant", "id": object_id(account.handle(), seq, ObjectKind::Grant), "status": "voided"}),
                    ),
                ),
            }
        }
        (Shape::Purchase { seq }, primary) => {
            let status = if seq.is_some() { 200 } else { 201 };
            let seq = seq.or(match primary.map(|e| &e.body) {
                Some(Body::PurchaseCreated(p)) => Some(p.seq),
                _ => None,
            });
            match seq.and_then(|seq| account.purchase(seq)) {
                Some(purchase) => answer(status, to_json(&purchase_json(account, purchase))),
                None => refusal(&Rejection::PurchaseNotFound),
            }
        }
        (Shape::Transaction, Some(entry)) => answer(
            200,
            to_json(&transaction_json(account.id().as_str(), entry)),
        ),
        _ => answer(200, b"{}".to_vec()),
    }
}
