//! The pages: what they read (the same JSON the API answers with, usage
//! and transactions from the store) and how they put it together.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use purser_core::{AccountHandle, EventType, ObjectId, ObjectKind, Timestamp};
use purser_engine::{Page, Read};
use purser_store::{EntryQuery, EventQuery, GroupBy, UsageQuery, UsageRow};
use serde_json::Value;

use crate::session::Session;
use crate::{
    AppState, authenticate, busy, chart, forecast, format, html, problem, random_hex, unavailable,
    view,
};

/// Transactions per page of the dashboard's list.
const TRANSACTIONS_PER_PAGE: usize = 20;
/// Purchases shown on the billing page.
const PURCHASES_SHOWN: usize = 50;
/// Low-balance alerts of the period shown on the credits page.
const ALERTS_SHOWN: usize = 10;

fn account_missing() -> Response {
    problem(
        StatusCode::NOT_FOUND,
        "Account not found",
        "This billing link is for an account that does not exist.",
    )
}

/// The account as the API renders it, with its balance.
pub(crate) async fn account_json(state: &AppState, session: &Session) -> Result<Value, Response> {
    match state
        .engine
        .read(Read::Account(session.account.clone()))
        .await
    {
        Ok(rendered) if rendered.status == 200 => {
            serde_json::from_slice(&rendered.body).map_err(|_| unavailable())
        }
        Ok(rendered) if rendered.status == 404 => Err(account_missing()),
        _ => Err(unavailable()),
    }
}

pub(crate) async fn handle_of(
    state: &AppState,
    session: &Session,
) -> Result<AccountHandle, Response> {
    match state.engine.handle(&session.account).await {
        Ok(Some((handle, _))) => Ok(handle),
        Ok(None) => Err(account_missing()),
        Err(_) => Err(unavailable()),
    }
}

pub(crate) fn micros(value: &Value) -> i128 {
    value.as_str().and_then(format::parse_micros).unwrap_or(0)
}

pub(crate) fn time(value: &Value) -> Option<Timestamp> {
    value.as_str().and_then(Timestamp::parse_rfc3339)
}

fn usage(
    store: &dyn purser_store::Store,
    account: AccountHandle,
    from: Timestamp,
    group_by: GroupBy,
) -> Result<Vec<UsageRow>, purser_store::StoreError> {
    store.usage(&UsageQuery {
        account,
        from: Some(from),
        to: None,
        group_by,
    })
}

fn rows(rows: &[UsageRow], name: impl Fn(Option<&str>) -> String) -> Vec<(String, i128)> {
    let mut out: Vec<(String, i128)> = rows
        .iter()
        .filter(|row| row.credits.micros() != 0)
        .map(|row| (name(row.key.as_deref()), row.credits.micros()))
        .collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    out
}

/// The session a page's token grants, once the account's pages have their
/// turn: a page reads the account's lists, so it is paced as the API's
/// list reads, on the portal's own buckets (a customer reloading their
/// pages does not slow the operator's reads of the account).
async fn paced_session(state: &AppState, token: &str) -> Result<Session, Response> {
    let session = authenticate(state, token)?;
    state
        .engine
        .pace_portal(session.account.as_str())
        .await
        .map_err(|_| busy())?;
    Ok(session)
}

pub(crate) async fn credits_page(
    State(state): State<AppState>,
    Path(token): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let session = match paced_session(&state, &token).await {
        Ok(session) => session,
        Err(page) => return page,
    };
    let result = async {
        let account = account_json(&state, &session).await?;
        let handle = handle_of(&state, &session).await?;
        let balance = &account["balance"];
        let now = state.engine.clock().now();
        let period_start = time(&balance["budget"]["period_start"]).unwrap_or(now);
        let period_end = time(&balance["budget"]["period_end"]).unwrap_or(now);
        let created = time(&account["created_at"]).unwrap_or(now);
        let window_start = now
            .checked_add_seconds(-forecast::WINDOW_DAYS * 86_400)
            .unwrap_or(now)
            .max(created);
        let before_seq = query
            .get("after")
            .and_then(|id| ObjectId::parse(ObjectKind::Transaction, id))
            .filter(|cursor| cursor.account == handle)
            .map(|cursor| cursor.seq);
        let account_id = session.account.to_string();
        let reports = state
            .engine
            .query(move |store| {
                let by_task = usage(store, handle, period_start, GroupBy::Task)?;
                let by_member = usage(store, handle, period_start, GroupBy::Member)?;
                let by_day = usage(store, handle, period_start, GroupBy::DayKind)?;
                let window = usage(store, handle, window_start, GroupBy::Kind)?;
                let entries = store.entries(&EntryQuery {
                    account: handle,
                    types: Vec::new(),
                    before_seq,
                    limit: TRANSACTIONS_PER_PAGE + 1,
                })?;
                // Low-balance thresholds crossed this period (newest first).
                let alerts: Vec<(Timestamp, String)> = store
                    .events(&EventQuery {
                        account: Some(account_id),
                        kind: Some(EventType::CreditsLow),
                        before: None,
                        after: None,
                        limit: ALERTS_SHOWN,
                    })?
                    .into_iter()
                    .filter(|stored| stored.event.at >= period_start)
                    .filter_map(|stored| {
                        let event: Value = serde_json::from_slice(&stored.event.body).ok()?;
                        let threshold = event["data"]["threshold"].as_str()?.to_owned();
                        Some((stored.event.at, threshold))
                    })
                    .collect();
                Ok((by_task, by_member, by_day, window, entries, alerts))
            })
            .await
            .map_err(|_| unavailable())?;
        let (by_task, by_member, by_day, window, entries, alerts) = reports;
        let catalog = state.engine.catalog();
        let task_name = |key: Option<&str>| match key {
            Some(id) => catalog
                .task(id)
                .map_or_else(|| id.to_owned(), |task| task.name.clone()),
            None => "Direct charges".to_owned(),
        };
        let member_name = |key: Option<&str>| key.unwrap_or("Not attributed").to_owned();
        let has_members = by_member.iter().any(|row| row.key.is_some());
        let first_day = format::day_number(period_start);
        // The whole period, days to come included, so the chart reads as a month.
        let last_day = format::day_number(Timestamp::from_micros(
            period_end.micros().saturating_sub(1),
        ))
        .max(first_day)
        .min(first_day + 40);
        let mut days: Vec<chart::Day> = (first_day..=last_day)
            .map(|day| chart::Day {
                label: format::day_month(format::day_start(day)),
                by_source: [0; 5],
            })
            .collect();
        let mut present = [false; 5];
        for row in &by_day {
            let Some((day, kind)) = row.key.as_deref().and_then(|k| k.split_once('/')) else {
                continue;
            };
            let Some(source) = purser_store::KIND_KEYS.iter().position(|k| *k == kind) else {
                continue;
            };
            let Some(day) = Timestamp::parse_rfc3339(&format!("{day}T00:00:00Z")) else {
                continue;
            };
            let index = format::day_number(day) - first_day;
            if let Some(slot) = usize::try_from(index).ok().and_then(|i| days.get_mut(i)) {
                slot.by_source[source] += row.credits.micros();
                present[source] |= row.credits.micros() != 0;
            }
        }
        let consumed: i128 = window.iter().map(|row| row.credits.micros()).sum();
        let forecast = forecast::forecast(&forecast::Inputs {
            now,
            consumed,
            window_micros: now.micros_since(window_start),
            period_available: micros(&balance["budget"]["available"])
                + micros(&balance["rollover"]["available"]),
            backup_available: micros(&balance["packages"]["available"])
                + micros(&balance["promo"]["available"]),
            debt: micros(&balance["debt"]),
            period_end,
        });
        let has_more = entries.len() > TRANSACTIONS_PER_PAGE;
        let transactions: Vec<Value> = entries
            .iter()
            .take(TRANSACTIONS_PER_PAGE)
            .map(|entry| purser_wire::render::transaction_json(session.account.as_str(), entry))
            .collect();
        let catalog = state.engine.catalog();
        let view = view::Credits {
            frame: frame(
                &state,
                &token,
                &session,
                &account,
                view::Tab::Credits,
                &query,
            ),
            catalog,
            account: &account,
            now,
            by_task: rows(&by_task, task_name),
            by_member: has_members.then(|| rows(&by_member, member_name)),
            days,
            present,
            forecast,
            alerts,
            transactions,
            older: has_more
                .then(|| {
                    entries
                        .get(TRANSACTIONS_PER_PAGE - 1)
                        .map(|entry| ObjectId {
                            account: handle,
                            seq: entry.seq,
                        })
                        .map(|id| id.format(ObjectKind::Transaction))
                })
                .flatten(),
            paged: before_seq.is_some(),
        };
        Ok::<_, Response>(html(StatusCode::OK, view::credits(&view)))
    };
    result.await.unwrap_or_else(|page| page)
}

/// What every page shares: who, where, and what just happened.
fn frame<'a>(
    state: &'a AppState,
    token: &'a str,
    session: &'a Session,
    account: &Value,
    tab: view::Tab,
    query: &HashMap<String, String>,
) -> view::Frame<'a> {
    let tier = account["tier"].as_str().unwrap_or("");
    view::Frame {
        token,
        account_id: session.account.as_str().to_owned(),
        account_name: account["name"]
            .as_str()
            .unwrap_or(session.account.as_str())
            .to_owned(),
        tier_name: state
            .engine
            .catalog()
            .tier(tier)
            .map_or_else(|| tier.to_owned(), |t| t.name.clone()),
        closed: account["status"].as_str() == Some("closed"),
        return_url: session.return_url.as_deref(),
        expires_at: session.expires_at,
        tab,
        notice: query.get("notice").and_then(|code| view::notice(code)),
        error: query.get("error").map(|code| view::error_text(code)),
        csrf: state.signer.csrf(session),
        form_nonce: random_hex(12),
    }
}

pub(crate) async fn billing_page(
    State(state): State<AppState>,
    Path(token): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let session = match paced_session(&state, &token).await {
        Ok(session) => session,
        Err(page) => return page,
    };
    let result = async {
        let account = account_json(&state, &session).await?;
        let page = Page {
            limit: PURCHASES_SHOWN,
            starting_after: None,
        };
        let listed = purser_wire::lists::purchases(&state.engine, session.account.clone(), page);
        let purchases: Value = match listed.await {
            Ok(rendered) if rendered.status == 200 => {
                serde_json::from_slice(&rendered.body).map_err(|_| unavailable())?
            }
            _ => return Err(unavailable()),
        };
        let view = view::Billing {
            frame: frame(
                &state,
                &token,
                &session,
                &account,
                view::Tab::Billing,
                &query,
            ),
            account: &account,
            catalog: state.engine.catalog(),
            purchases: purchases["data"].as_array().cloned().unwrap_or_default(),
            provider: state.payments.name(),
            now: state.engine.clock().now(),
            // Not worth failing the page over: shown when known.
            card: state
                .payments
                .saved_card(session.account.as_str())
                .await
                .ok()
                .flatten(),
            subscription: state
                .payments
                .subscription(session.account.as_str())
                .await
                .ok()
                .flatten(),
            tier_changes: state.tier_changes,
        };
        Ok::<_, Response>(html(StatusCode::OK, view::billing(&view)))
    };
    result.await.unwrap_or_else(|page| page)
}
