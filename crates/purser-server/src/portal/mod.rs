//! The customer portal: the credits dashboard and billing settings a
//! customer reaches through a portal session link.
//!
//! - The link carries a signed, expiring token granting one account
//!   ([`session`]); every page and every action checks it again, and the
//!   account always comes from the token, never from the URL or a form.
//! - Pages are rendered here from the same reads the API answers with
//!   (the account and purchase JSON of a shard, usage and transactions from
//!   the store), so the numbers a customer sees are the API's.
//! - Forms carry a CSRF token bound to the session and an idempotency nonce
//!   (a double click buys once); the `Origin` of a POST must be ours.
//! - Responses carry a strict Content-Security-Policy (no inline script or
//!   style), `no-store`, a same-origin referrer policy and no framing. No API key is ever
//!   involved: the browser only holds the session token.

// Helpers return the refusal page itself as their error: built at most once
// per request, its size does not matter.
#![allow(clippy::result_large_err)]

pub mod chart;
pub mod forecast;
pub mod format;
pub mod session;
mod view;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use purser_core::{
    AccountHandle, Command, ObjectId, ObjectKind, PackageId, Proration, TierId, Timestamp,
};
use purser_store::{EntryQuery, GroupBy, UsageQuery, UsageRow};
use serde_json::{Value, json};

use crate::api::{self, AppState, JsonBody, Submitted};
use crate::auth::{Need, random_hex};
use crate::engine::Answer;
use crate::error::{ApiError, json_response};
use crate::payments::{Checkout, CheckoutRequest, PaymentProvider};
use crate::render::{Page, Read, Text};
use crate::request::Fields;
use session::{Refused, Session, Signer};

/// The portal's settings and signing key.
#[derive(Debug)]
pub struct Portal {
    pub signer: Signer,
    /// The base of links, without a trailing slash; `None`: the request's Host.
    pub public_url: Option<String>,
    pub session_ttl_seconds: i64,
    pub payments: Arc<dyn PaymentProvider>,
}

/// Transactions per page of the dashboard's list.
const TRANSACTIONS_PER_PAGE: usize = 20;
/// Purchases shown on the billing page.
const PURCHASES_SHOWN: usize = 50;
/// Entries read from the store per step of a CSV export.
const EXPORT_STEP: usize = 1_000;

const CSS: &str = include_str!("assets/portal.css");
const JS: &str = include_str!("assets/portal.js");

/// The portal's route templates (metrics are labelled with them).
pub const ROUTE_PATHS: [&str; 8] = [
    "/portal/{token}",
    "/portal/{token}/billing",
    "/portal/{token}/transactions.csv",
    "/portal/{token}/tier",
    "/portal/{token}/purchases",
    "/portal/{token}/purchases/{id}/cancel",
    "/portal/assets/portal.css",
    "/portal/assets/portal.js",
];

/// The portal's pages, actions and assets.
pub fn routes() -> Router<AppState> {
    let [
        credits,
        billing,
        csv,
        tier,
        purchases,
        cancel,
        style,
        script,
    ] = ROUTE_PATHS;
    Router::new()
        .route(credits, get(credits_page))
        .route(billing, get(billing_page))
        .route(csv, get(export_csv))
        .route(tier, post(change_tier))
        .route(purchases, post(buy))
        .route(cancel, post(cancel_purchase))
        .route(style, get(css))
        .route(script, get(js))
        .layer(middleware::map_response(security_headers))
}

async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let set = |headers: &mut HeaderMap, name: header::HeaderName, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    // A real payment provider's checkout origin would join form-action here.
    set(
        headers,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; \
         form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    // The token is in the URL: it never leaves in a Referer to another site.
    // (`no-referrer` would also make browsers send `Origin: null` on our own
    // form posts, which the origin check refuses.)
    set(headers, header::REFERRER_POLICY, "same-origin");
    if !headers.contains_key(header::CACHE_CONTROL) {
        set(headers, header::CACHE_CONTROL, "no-store");
    }
    response
}

async fn css() -> Response {
    asset(CSS, "text/css; charset=utf-8")
}

async fn js() -> Response {
    asset(JS, "text/javascript; charset=utf-8")
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

fn html(status: StatusCode, markup: maud::Markup) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response()
}

/// A page that says what went wrong, with nothing to act on.
fn problem(status: StatusCode, title: &str, message: &str) -> Response {
    html(status, view::problem(title, message))
}

fn unavailable() -> Response {
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "Temporarily unavailable",
        "Your credits could not be loaded just now. Please try again in a moment.",
    )
}

/// The session a token grants now, or the page refusing it.
fn authenticate(state: &AppState, token: &str) -> Result<Session, Response> {
    state
        .portal
        .signer
        .verify(token, state.clock.now())
        .map_err(|refused| match refused {
            Refused::Expired => problem(
                StatusCode::UNAUTHORIZED,
                "This link has expired",
                "Billing links work for a limited time. Go back to the app and open billing again.",
            ),
            Refused::Malformed | Refused::BadSignature => problem(
                StatusCode::UNAUTHORIZED,
                "This link is not valid",
                "Open billing again from the app to get a new link.",
            ),
        })
}

/// A POST must come from one of our own pages: the `Origin` (sent by every
/// current browser on a form POST) must be this server's, and the form's
/// CSRF token must be the session's.
fn check_form(
    state: &AppState,
    headers: &HeaderMap,
    session: &Session,
    form: &HashMap<String, String>,
) -> Result<(), Response> {
    let refused = || {
        problem(
            StatusCode::FORBIDDEN,
            "This form could not be accepted",
            "It was sent from another page or has expired. Reload the page and try again.",
        )
    };
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().map_err(|_| refused())?;
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let from_host = origin
            .split_once("://")
            .is_some_and(|(_, rest)| !host.is_empty() && rest == host);
        let from_public = state
            .portal
            .public_url
            .as_deref()
            .is_some_and(|url| url.starts_with(origin) && origin_of(url) == origin);
        if !(from_host || from_public) {
            return Err(refused());
        }
    }
    match form.get("csrf") {
        Some(csrf) if state.portal.signer.check_csrf(session, csrf) => Ok(()),
        _ => Err(refused()),
    }
}

/// `https://host:port` of a URL.
fn origin_of(url: &str) -> &str {
    let start = url.find("://").map_or(0, |at| at + 3);
    match url[start..].find('/') {
        Some(end) => &url[..start + end],
        None => url,
    }
}

// ----- the API route -----

/// `POST /v1/accounts/{id}/portal_sessions` `{"return_url"?}` → 201
/// `{"object": "portal_session", "id", "account", "url", "return_url",
/// "expires_at", "created_at"}`.
pub async fn create_session(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Response {
    let result = async {
        state.keys.authorize(&headers, Need::Admin)?;
        let key = api::idempotency_key(&headers)?;
        let fields = Fields::parse(&body, &["return_url"])?;
        let return_url = fields.string("return_url")?.map(str::to_owned);
        if return_url
            .as_deref()
            .is_some_and(|url| !session::valid_return_url(url))
        {
            return Err(ApiError::invalid(
                "return_url",
                "return_url must be an absolute http or https URL of at most 2048 characters",
            ));
        }
        let path = format!("/v1/accounts/{id}/portal_sessions");
        let claim = match api::claim_key(&state, key, &path, &body) {
            Ok(claim) => claim,
            Err((status, body)) => {
                let (status, body) = api::replayed(&state, status, body).await;
                return Ok(json_response(status, body));
            }
        };
        let created = async {
            api::account_handle(&state, &id).await?;
            let account = purser_core::AccountId::parse(&id)
                .map_err(|_| ApiError::not_found("account_not_found", "no such account"))?;
            let now = state.clock.now();
            let expires_at = now
                .checked_add_seconds(state.portal.session_ttl_seconds)
                .unwrap_or(Timestamp::NEVER);
            let mut nonce = [0u8; 16];
            getrandom::fill(&mut nonce).map_err(|_| ApiError::internal("no randomness"))?;
            let session = Session {
                account,
                expires_at,
                nonce,
                return_url: return_url.clone(),
            };
            let url = format!(
                "{}/portal/{}",
                base_url(&state, &headers),
                state.portal.signer.sign(&session)
            );
            Ok::<_, ApiError>(json!({
                "object": "portal_session",
                "id": format!("ps_{}", hex::encode(nonce)),
                "account": id,
                "url": url,
                "return_url": return_url,
                "expires_at": Text(expires_at),
                "created_at": Text(now),
            }))
        }
        .await;
        let (status, body) = match created {
            Ok(value) => (201, serde_json::to_vec(&value).expect("JSON")),
            Err(error) => (error.status, error.body()),
        };
        if let Some(claim) = claim {
            api::release_key(&state, &claim.key, status, &body);
        }
        Ok(json_response(status, body))
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

/// Where links point: the configured public URL, else the Host the
/// operator's request came to.
fn base_url(state: &AppState, headers: &HeaderMap) -> String {
    if let Some(url) = &state.portal.public_url {
        return url.clone();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .unwrap_or("localhost");
    format!("http://{host}")
}

// ----- reading what the pages show -----

/// The account as the API renders it, with its balance.
async fn account_json(state: &AppState, session: &Session) -> Result<Value, Response> {
    let shard = state.engine.shard_of_id(session.account.as_str());
    match api::ask(state, shard, Read::Account(session.account.clone())).await {
        Ok(Answer::Json { status: 200, body }) => {
            serde_json::from_slice(&body).map_err(|_| unavailable())
        }
        Ok(Answer::Json { status: 404, .. }) => Err(problem(
            StatusCode::NOT_FOUND,
            "Account not found",
            "This billing link is for an account that does not exist.",
        )),
        _ => Err(unavailable()),
    }
}

async fn handle_of(state: &AppState, session: &Session) -> Result<AccountHandle, Response> {
    api::account_handle(state, session.account.as_str())
        .await
        .map(|(handle, _)| handle)
        .map_err(|error| {
            if error.status == 404 {
                problem(
                    StatusCode::NOT_FOUND,
                    "Account not found",
                    "This billing link is for an account that does not exist.",
                )
            } else {
                unavailable()
            }
        })
}

fn micros(value: &Value) -> i128 {
    value.as_str().and_then(format::parse_micros).unwrap_or(0)
}

fn time(value: &Value) -> Option<Timestamp> {
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

async fn credits_page(
    State(state): State<AppState>,
    Path(token): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let session = match authenticate(&state, &token) {
        Ok(session) => session,
        Err(page) => return page,
    };
    let result = async {
        let account = account_json(&state, &session).await?;
        let handle = handle_of(&state, &session).await?;
        let balance = &account["balance"];
        let now = state.clock.now();
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
        let reports = api::blocking(&state, move |store| {
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
            Ok((by_task, by_member, by_day, window, entries))
        })
        .await
        .map_err(|_| unavailable())?;
        let (by_task, by_member, by_day, window, entries) = reports;
        let catalog = &state.catalog;
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
            .map(|entry| crate::render::transaction_json(session.account.as_str(), entry))
            .collect();
        let catalog = &state.catalog;
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
            .catalog
            .tier(tier)
            .map_or_else(|| tier.to_owned(), |t| t.name.clone()),
        closed: account["status"].as_str() == Some("closed"),
        return_url: session.return_url.as_deref(),
        expires_at: session.expires_at,
        tab,
        notice: query.get("notice").and_then(|code| view::notice(code)),
        error: query.get("error").map(|code| view::error_text(code)),
        csrf: state.portal.signer.csrf(session),
        form_nonce: random_hex(12),
    }
}

async fn billing_page(
    State(state): State<AppState>,
    Path(token): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let session = match authenticate(&state, &token) {
        Ok(session) => session,
        Err(page) => return page,
    };
    let result = async {
        let account = account_json(&state, &session).await?;
        let shard = state.engine.shard_of_id(session.account.as_str());
        let read = Read::Purchases(
            session.account.clone(),
            Page {
                limit: PURCHASES_SHOWN,
                starting_after: None,
            },
        );
        let purchases: Value = match api::ask(&state, shard, read).await {
            Ok(Answer::Json { status: 200, body }) => {
                serde_json::from_slice(&body).map_err(|_| unavailable())?
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
            catalog: &state.catalog,
            purchases: purchases["data"].as_array().cloned().unwrap_or_default(),
            provider: state.portal.payments.name(),
            now: state.clock.now(),
        };
        Ok::<_, Response>(html(StatusCode::OK, view::billing(&view)))
    };
    result.await.unwrap_or_else(|page| page)
}

// ----- actions -----

type FormResult = Result<Form<HashMap<String, String>>, axum::extract::rejection::FormRejection>;

/// Runs a command for a form: with the form's nonce as its idempotency key,
/// so a resubmitted form is answered, not applied twice.
async fn run(
    state: &AppState,
    session: &Session,
    form: &HashMap<String, String>,
    path: &str,
    command: Command,
    step: &str,
) -> (u16, Value) {
    let key = form
        .get("nonce")
        .filter(|nonce| !nonce.is_empty() && nonce.len() <= 64)
        .map(|nonce| format!("portal:{}:{nonce}:{step}", hex::encode(session.nonce)));
    let mut fingerprint: Vec<(&String, &String)> =
        form.iter().filter(|(name, _)| *name != "csrf").collect();
    fingerprint.sort();
    let body = serde_json::to_vec(&fingerprint).expect("JSON");
    let submitted: Submitted = api::start(state, command, key, path, &body);
    let (status, body) = api::settle(state, submitted).await;
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// 303 to the billing page, with a notice or the error code of an answer
/// (the page words both from fixed texts: nothing from here is echoed).
fn back(token: &str, outcome: Result<&str, &Value>) -> Response {
    let query = match outcome {
        Ok(notice) => format!("notice={notice}"),
        Err(answer) => {
            let code: String = answer["error"]["code"]
                .as_str()
                .unwrap_or("failed")
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                .take(64)
                .collect();
            format!("error={code}")
        }
    };
    Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header(header::LOCATION, format!("/portal/{token}/billing?{query}"))
        .body(Body::empty())
        .expect("a redirect")
}

/// The session and fields of a form POST: the token checked, the body read
/// as a form, the CSRF token and the origin checked; or the refusal page.
fn accept_form(
    state: &AppState,
    token: &str,
    headers: &HeaderMap,
    form: FormResult,
) -> Result<(Session, HashMap<String, String>), Response> {
    let session = authenticate(state, token)?;
    let Ok(Form(form)) = form else {
        return Err(problem(
            StatusCode::BAD_REQUEST,
            "This form could not be read",
            "Reload the page and try again.",
        ));
    };
    check_form(state, headers, &session, &form)?;
    Ok((session, form))
}

async fn change_tier(
    State(state): State<AppState>,
    Path(token): Path<String>,
    headers: HeaderMap,
    form: FormResult,
) -> Response {
    let (session, form) = match accept_form(&state, &token, &headers, form) {
        Ok(accepted) => accepted,
        Err(page) => return page,
    };
    let Some(tier) = form
        .get("tier")
        .and_then(|tier| TierId::parse(tier).ok())
        .filter(|tier| state.catalog.tier(tier.as_str()).is_some())
    else {
        return back(&token, Err(&json!({"error": {"code": "unknown_tier"}})));
    };
    let command = Command::ChangeTier {
        account: session.account.clone(),
        tier: tier.clone(),
        proration: Proration::Full,
    };
    let path = format!("/portal/{token}/tier");
    let (status, answer) = run(&state, &session, &form, &path, command, "tier").await;
    if status != 200 {
        return back(&token, Err(&answer));
    }
    let notice = if answer["pending_tier"].as_str() == Some(tier.as_str()) {
        "downgrade_scheduled"
    } else if form.contains_key("cancel") {
        "downgrade_canceled"
    } else {
        "tier_changed"
    };
    back(&token, Ok(notice))
}

async fn buy(
    State(state): State<AppState>,
    Path(token): Path<String>,
    headers: HeaderMap,
    form: FormResult,
) -> Response {
    let (session, form) = match accept_form(&state, &token, &headers, form) {
        Ok(accepted) => accepted,
        Err(page) => return page,
    };
    let Some(package) = form
        .get("package")
        .and_then(|id| PackageId::parse(id).ok())
        .and_then(|id| state.catalog.package(id.as_str()).cloned())
    else {
        return back(&token, Err(&json!({"error": {"code": "unknown_package"}})));
    };
    let path = format!("/portal/{token}/purchases");
    let command = Command::CreatePurchase {
        account: session.account.clone(),
        package: package.id.clone(),
    };
    let (status, purchase) = run(&state, &session, &form, &path, command, "create").await;
    if status != 201 && status != 200 {
        return back(&token, Err(&purchase));
    }
    let Some(id) = purchase["id"].as_str() else {
        return unavailable();
    };
    let billing = format!("{}/portal/{token}/billing", base_url(&state, &headers));
    let request = CheckoutRequest {
        account: session.account.as_str(),
        purchase: id,
        package: package.id.as_str(),
        package_name: &package.name,
        credits: package.credits,
        price: package.price,
        currency: state.catalog.currency(),
        return_url: &billing,
    };
    match state.portal.payments.checkout(&request) {
        Checkout::AwaitingConfirmation => back(&token, Ok("purchase_pending")),
        Checkout::Redirect(url) => Response::builder()
            .status(StatusCode::SEE_OTHER)
            .header(header::LOCATION, url)
            .body(Body::empty())
            .expect("a redirect"),
        Checkout::Confirmed => {
            let Some(purchase) = ObjectId::parse(ObjectKind::Purchase, id) else {
                return unavailable();
            };
            let command = Command::CompletePurchase { purchase };
            let (status, answer) = run(&state, &session, &form, &path, command, "complete").await;
            if status == 200 {
                back(&token, Ok("purchase_completed"))
            } else {
                back(&token, Err(&answer))
            }
        }
    }
}

async fn cancel_purchase(
    State(state): State<AppState>,
    Path((token, id)): Path<(String, String)>,
    headers: HeaderMap,
    form: FormResult,
) -> Response {
    let (session, form) = match accept_form(&state, &token, &headers, form) {
        Ok(accepted) => accepted,
        Err(page) => return page,
    };
    let handle = match handle_of(&state, &session).await {
        Ok(handle) => handle,
        Err(page) => return page,
    };
    // Only a purchase of the session's own account: another's is "not found".
    let Some(purchase) =
        ObjectId::parse(ObjectKind::Purchase, &id).filter(|purchase| purchase.account == handle)
    else {
        return problem(
            StatusCode::NOT_FOUND,
            "Purchase not found",
            "There is no such purchase on this account.",
        );
    };
    let path = format!("/portal/{token}/purchases/{id}/cancel");
    let command = Command::CancelPurchase { purchase };
    let (status, answer) = run(&state, &session, &form, &path, command, "cancel").await;
    if status == 200 {
        back(&token, Ok("purchase_canceled"))
    } else {
        back(&token, Err(&answer))
    }
}

// ----- CSV export -----

/// All of the account's transactions, newest first, streamed in steps.
async fn export_csv(State(state): State<AppState>, Path(token): Path<String>) -> Response {
    let session = match authenticate(&state, &token) {
        Ok(session) => session,
        Err(page) => return page,
    };
    let handle = match handle_of(&state, &session).await {
        Ok(handle) => handle,
        Err(page) => return page,
    };
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(4);
    let store = state.store.clone();
    let account = session.account.as_str().to_owned();
    let catalog = state.catalog.clone();
    tokio::task::spawn_blocking(move || {
        let mut chunk = String::from(view::CSV_HEADER);
        let mut before_seq = None;
        loop {
            let entries = match store.entries(&EntryQuery {
                account: handle,
                types: Vec::new(),
                before_seq,
                limit: EXPORT_STEP,
            }) {
                Ok(entries) => entries,
                Err(error) => {
                    tracing::error!(%error, "CSV export: the store could not answer");
                    let _ = sender.blocking_send(Err(std::io::Error::other("store")));
                    return;
                }
            };
            for entry in &entries {
                let transaction = crate::render::transaction_json(&account, entry);
                view::csv_row(&mut chunk, &transaction, &catalog);
            }
            if sender
                .blocking_send(Ok(std::mem::take(&mut chunk)))
                .is_err()
            {
                return;
            }
            match entries.last() {
                Some(last) if entries.len() == EXPORT_STEP => before_seq = Some(last.seq),
                _ => return,
            }
        }
    });
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    });
    let filename = format!(
        "attachment; filename=\"{}-transactions.csv\"",
        session
            .account
            .as_str()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c))
            .collect::<String>()
    );
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/csv; charset=utf-8")
        .header(header::CONTENT_DISPOSITION, filename)
        .body(Body::from_stream(stream))
        .expect("a CSV response")
}
