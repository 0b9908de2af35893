//! The HTTP API of API.md: the router, and the plumbing every handler
//! shares (the body limit, the idempotency header, answering a command's
//! outcome). One module per resource; each handler authorizes, parses the
//! request into a core command or a read, and hands it to the engine. No
//! ledger rule and no SQL lives here.

mod accounts;
mod api_keys;
mod debits;
mod events;
mod grants;
mod history;
mod holds;
mod operations;
pub use operations::Readiness;
mod portal_sessions;
mod purchases;
mod stripe;
mod usage;
mod webhook_endpoints;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, MatchedPath, Query, Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use purser_core::limits::{
    DEFAULT_PAGE_LIMIT, MAX_BODY_BYTES, MAX_IDEMPOTENCY_KEY_LEN, MAX_PAGE_LIMIT,
};
use purser_core::{AccountHandle, AccountId, Command, ObjectId, ObjectKind, Timestamp};
use purser_engine::{Actor, Busy, Engine, IdempotencyKey, Page, Read, Rendered};
use purser_portal::Portal;
use purser_wire::{ApiError, json_response};

use crate::auth::{Keys, Need};
use crate::metrics::Metrics;

/// Everything a handler needs; cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState(pub Arc<Shared>);

#[derive(Debug)]
pub struct Shared {
    pub engine: Engine,
    pub keys: Keys,
    pub metrics: Arc<Metrics>,
    pub portal: Arc<Portal>,
    pub webhooks: Arc<crate::webhooks::Webhooks>,
    /// Charges auto-recharges (stops when dropped).
    pub recharger: Arc<crate::recharge::Recharger>,
    /// The `stripe` payment provider, when it is the one configured.
    pub stripe: Option<Arc<crate::stripe::Stripe>>,
    /// `PURSER_STRIPE_WEBHOOK_SECRET`: Stripe's events are taken only with it.
    pub stripe_webhook_secret: Option<Secret>,
    /// How long a client has to send a request's body.
    pub body_timeout: std::time::Duration,
    /// The store's reachability for `/readyz`, probed by one ping at a time.
    pub readiness: Readiness,
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// A request body, at most 1 MiB: refused from `Content-Length` alone when
/// it says more, and while reading when a chunked body runs over.
#[derive(Debug)]
pub struct JsonBody(pub Bytes);

impl FromRequest<AppState> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<JsonBody> {
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        if declared.is_some_and(|length| length > MAX_BODY_BYTES as u64) {
            return Err(ApiError::too_large());
        }
        let reading = axum::body::to_bytes(request.into_body(), MAX_BODY_BYTES);
        match tokio::time::timeout(state.body_timeout, reading).await {
            Ok(Ok(bytes)) => Ok(JsonBody(bytes)),
            Ok(Err(error)) => {
                let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&error);
                while let Some(inner) = cause {
                    if inner.is::<http_body_util::LengthLimitError>() {
                        return Err(ApiError::too_large());
                    }
                    cause = inner.source();
                }
                // The body's framing is broken (a bad chunk size, say).
                Err(ApiError::bad_request(
                    "malformed_body",
                    "the request body could not be read: its framing is invalid",
                ))
            }
            Err(_) => Err(ApiError::body_timeout()),
        }
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(operations::healthz))
        .route("/readyz", get(operations::readyz))
        .route("/metrics", get(operations::metrics))
        .route("/openapi.json", get(operations::openapi))
        .route("/v1/catalog", get(operations::catalog))
        .route(
            "/v1/api_keys",
            post(api_keys::create_key).get(api_keys::list_keys),
        )
        .route("/v1/api_keys/{id}/revoke", post(api_keys::revoke_key))
        .route(
            "/v1/accounts",
            post(accounts::create_account).get(accounts::list_accounts),
        )
        .route(
            "/v1/accounts/{id}",
            get(accounts::get_account).post(accounts::update_account),
        )
        .route("/v1/accounts/{id}/close", post(accounts::close_account))
        .route("/v1/accounts/{id}/tier", post(accounts::change_tier))
        .route("/v1/accounts/{id}/balance", get(accounts::balance))
        .route("/v1/accounts/{id}/usage", post(usage::charge))
        .route(
            "/v1/accounts/{id}/usage/summary",
            get(history::usage_summary),
        )
        .route("/v1/accounts/{id}/transactions", get(history::transactions))
        .route("/v1/accounts/{id}/holds", post(holds::place_hold))
        .route(
            "/v1/accounts/{id}/grants",
            post(grants::issue_grant).get(grants::list_grants),
        )
        .route(
            "/v1/accounts/{id}/purchases",
            post(purchases::create_purchase).get(purchases::list_purchases),
        )
        .route("/v1/usage/batch", post(usage::batch))
        .route("/v1/debits/{id}", get(debits::get_debit))
        .route("/v1/debits/{id}/reverse", post(debits::reverse))
        .route("/v1/holds/{id}", get(holds::get_hold))
        .route("/v1/holds/{id}/capture", post(holds::capture))
        .route("/v1/holds/{id}/release", post(holds::release))
        .route("/v1/grants/{id}/void", post(grants::void_grant))
        .route("/v1/purchases/{id}", get(purchases::get_purchase))
        // complete, fail, cancel, refund
        .route(
            "/v1/purchases/{id}/{action}",
            post(purchases::purchase_action),
        )
        .route(
            "/v1/accounts/{id}/portal_sessions",
            post(portal_sessions::create_session),
        )
        .route("/v1/events", get(events::list_events))
        .route("/v1/events/{id}", get(events::get_event))
        .route("/v1/events/{id}/resend", post(webhook_endpoints::resend))
        .route(
            "/v1/webhook_endpoints",
            post(webhook_endpoints::create).get(webhook_endpoints::list),
        )
        .route(
            "/v1/webhook_endpoints/{id}",
            get(webhook_endpoints::get)
                .post(webhook_endpoints::update)
                .delete(webhook_endpoints::delete),
        )
        .route(
            "/v1/webhook_endpoints/{id}/rotate_secret",
            post(webhook_endpoints::rotate_secret),
        )
        .route(
            "/v1/webhook_endpoints/{id}/deliveries",
            get(webhook_endpoints::deliveries),
        )
        .route("/v1/test_clock", get(operations::get_test_clock))
        .route(
            "/v1/test_clock/advance",
            post(operations::advance_test_clock),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticated))
        // Signed by Stripe, not authenticated by an API key.
        .route("/v1/webhooks/stripe", post(stripe::webhook))
        .with_state(state.clone())
        .merge(purser_portal::routes(state.portal.clone()))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state, observe))
        .layer(middleware::from_fn(well_formed))
}

/// What is checked before a request is routed: its path and query must be
/// UTF-8 once percent-decoded (every refusal is the contract's JSON, never
/// a framework's plain text).
async fn well_formed(request: Request, next: Next) -> Response {
    let utf8 = |text: &str| {
        percent_encoding::percent_decode_str(text)
            .decode_utf8()
            .is_ok()
    };
    let uri = request.uri();
    if !utf8(uri.path()) {
        return ApiError::bad_request("malformed_path", "the path is not valid UTF-8")
            .into_response();
    }
    if uri.query().is_some_and(|query| !utf8(query)) {
        return ApiError::bad_request("malformed_query", "the query string is not valid UTF-8")
            .into_response();
    }
    next.run(request).await
}

/// A request with a body is authenticated before the body is read, so an
/// unauthenticated client cannot make the server buffer anything (each
/// handler then checks the key's scope).
async fn authenticated(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if request.method() != axum::http::Method::GET
        && request.method() != axum::http::Method::HEAD
        && let Err(error) = state.keys.authorize(request.headers(), Need::Any)
    {
        return error.into_response();
    }
    next.run(request).await
}

/// Records each request's route, status and latency.
async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    if let Some(route) = route {
        state
            .metrics
            .observe_request(&route, response.status().as_u16(), started.elapsed());
    }
    response
}

async fn not_found() -> ApiError {
    ApiError::not_found("route_not_found", "no such route")
}

async fn method_not_allowed() -> Response {
    let mut error =
        ApiError::bad_request("method_not_allowed", "this route does not take that method");
    error.status = 405;
    error.into_response()
}

// ----- plumbing -----

pub(crate) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value.to_str().map_err(|_| {
        ApiError::invalid(
            "Idempotency-Key",
            "the Idempotency-Key header must be visible ASCII",
        )
    })?;
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err(ApiError::invalid(
            "Idempotency-Key",
            "the Idempotency-Key header must be 1-255 characters",
        ));
    }
    Ok(Some(key.to_owned()))
}

/// The request's idempotency key, with the fingerprint of what it asks for.
fn keyed(key: Option<String>, path: &str, body: &[u8]) -> Option<IdempotencyKey> {
    key.map(|key| IdempotencyKey::new(&key, purser_wire::fingerprint("POST", path, body)))
}

/// Runs work that is not a ledger command (an API key, a portal session, a
/// clock move) under the request's idempotency key, if any: a replay gets
/// the first answer. The work runs in a task of its own, so once the key is
/// claimed it ends with the work's outcome even if the client goes away.
async fn once(
    state: &AppState,
    key: Option<String>,
    path: &str,
    body: &[u8],
    work: impl std::future::Future<Output = (u16, Vec<u8>)> + Send + 'static,
) -> Response {
    let key = keyed(key, path, body);
    if let Some(key) = &key
        && let Err(answered) = state.engine.claim(key).await
    {
        let (status, body) = purser_wire::outcome(state.engine.settle(answered).await);
        return json_response(status, body);
    }
    // No await between the claim and its guard.
    let mut claim = Claim {
        engine: state.engine.clone(),
        key,
    };
    let done = tokio::spawn(async move {
        let (status, body) = work.await;
        if let Some(key) = claim.key.take() {
            claim.engine.finish(&key, status, &body).await;
        }
        (status, body)
    })
    .await;
    match done {
        Ok((status, body)) => json_response(status, body),
        Err(_) => ApiError::internal("the request could not be completed").into_response(),
    }
}

/// A claimed key not yet ended: released if its work never finishes (a
/// panic), so it is never stuck.
struct Claim {
    engine: Engine,
    key: Option<IdempotencyKey>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.engine.release(&key.key);
        }
    }
}

/// Runs a command with an optional idempotency key (`key`: the header,
/// already checked; `path` and `body` make the request's fingerprint).
async fn submit(
    state: &AppState,
    command: Command,
    key: Option<String>,
    path: &str,
    body: &[u8],
    actor: Actor,
) -> Response {
    let outcome = state
        .engine
        .run(command, keyed(key, path, body), actor)
        .await;
    let (status, body) = purser_wire::outcome(outcome);
    json_response(status, body)
}

/// Parses, authorizes and submits a mutating request.
async fn mutate(
    state: &AppState,
    headers: &HeaderMap,
    need: Need,
    path: &str,
    body: &[u8],
    build: impl FnOnce(&[u8]) -> Result<Command>,
) -> Response {
    let prepared = state
        .keys
        .authorize(headers, need)
        .and_then(|actor| idempotency_key(headers).map(|key| (actor, key)))
        .and_then(|(actor, key)| build(body).map(|command| (command, key, actor)));
    match prepared {
        Ok((command, key, actor)) => submit(state, command, key, path, body, actor).await,
        Err(error) => error.into_response(),
    }
}

/// A read's answer as a response.
fn rendered(read: Result<Rendered, Busy>) -> Response {
    match read {
        Ok(rendered) => json_response(rendered.status, rendered.body),
        Err(busy) => ApiError::from(busy).into_response(),
    }
}

async fn read_account(
    state: &AppState,
    headers: &HeaderMap,
    need: Need,
    id: &str,
    read: impl FnOnce(AccountId) -> Read,
) -> Response {
    if let Err(error) = state.keys.authorize(headers, need) {
        return error.into_response();
    }
    let Ok(account) = AccountId::parse(id) else {
        return ApiError::not_found("account_not_found", "no such account").into_response();
    };
    rendered(state.engine.read(read(account)).await)
}

/// The account an object id leads to, as its shard renders it; `None` if
/// there is no such account.
async fn account_of(state: &AppState, handle: AccountHandle) -> Result<Option<serde_json::Value>> {
    let rendered = state.engine.read(Read::AccountByHandle(handle)).await?;
    Ok((rendered.status == 200)
        .then(|| serde_json::from_slice(&rendered.body).unwrap_or(serde_json::Value::Null)))
}

/// The handle and creation time of an account id, from its shard.
async fn account_handle(state: &AppState, id: &str) -> Result<(AccountHandle, Timestamp)> {
    let missing = || ApiError::not_found("account_not_found", "no such account");
    let account = AccountId::parse(id).map_err(|_| missing())?;
    state.engine.handle(&account).await?.ok_or_else(missing)
}

fn object_id(kind: ObjectKind, text: &str, code: &'static str) -> Result<ObjectId> {
    ObjectId::parse(kind, text)
        .ok_or_else(|| ApiError::not_found(code, format!("no such {}", kind.prefix())))
}

fn account_path(id: &str) -> Result<AccountId> {
    AccountId::parse(id).map_err(|_| ApiError::not_found("account_not_found", "no such account"))
}

pub(crate) fn list_limit(query: &std::collections::HashMap<String, String>) -> Result<usize> {
    match query.get("limit") {
        None => Ok(DEFAULT_PAGE_LIMIT),
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|limit| (1..=MAX_PAGE_LIMIT).contains(limit))
            .ok_or_else(|| ApiError::invalid("limit", "limit must be an integer from 1 to 100")),
    }
}

type QueryMap = Query<std::collections::HashMap<String, String>>;

/// Waits for the turn of a list read of `key` (an account id, or the name
/// of a list of everything): one account's lists read in a loop cannot
/// take the server from the others (`purser_engine::pacer`).
async fn pace(state: &AppState, key: &str) -> Result<()> {
    state.engine.pace_list(key).await.map_err(ApiError::from)
}

/// Paces a list of the account `id` names, if it is an account id (one
/// that is not is refused without a read, and must not spend the turns of
/// a bucket it happens to spell, like `*portal <account>`).
async fn pace_account(state: &AppState, id: &str) -> Result<()> {
    match AccountId::parse(id) {
        Ok(account) => pace(state, account.as_str()).await,
        Err(_) => Ok(()),
    }
}

/// The pace key of a list of everything (`*accounts`, `*events`) for one
/// caller: no account ids start with `*`.
fn paced_per_key(list: &str, caller: &purser_engine::Actor) -> String {
    match caller {
        purser_engine::Actor::ApiKey(id) => format!("{list} {id}"),
        _ => list.to_owned(),
    }
}

/// `limit` and `starting_after` (an id of `kind`) of an in-memory list.
fn page(query: &std::collections::HashMap<String, String>, kind: ObjectKind) -> Result<Page> {
    let starting_after = match query.get("starting_after") {
        None => None,
        Some(text) => Some(
            ObjectId::parse(kind, text)
                .ok_or_else(|| {
                    ApiError::invalid(
                        "starting_after",
                        format!("starting_after must be a {} id", kind.prefix()),
                    )
                })?
                .seq,
        ),
    };
    Ok(Page {
        limit: list_limit(query)?,
        starting_after,
    })
}

/// A page of one of an account's in-memory lists (grants, purchases).
/// A page of an account's purchases or grants: the ones in memory, then
/// (merged by id) the settled ones the store keeps.
async fn list_in_memory(
    state: &AppState,
    headers: &HeaderMap,
    id: &str,
    query: &std::collections::HashMap<String, String>,
    kind: ObjectKind,
) -> Response {
    // Authenticated and checked first: a turn is never spent on a refused
    // request (and text that is no account id spends none).
    let listed = async {
        state.keys.authorize(headers, Need::Read)?;
        let page = page(query, kind)?;
        let account = account_path(id)?;
        pace(state, account.as_str()).await?;
        Ok::<_, ApiError>((account, page))
    };
    let (account, page) = match listed.await {
        Ok(listed) => listed,
        Err(error) => return error.into_response(),
    };
    let engine = &state.engine;
    rendered(match kind {
        ObjectKind::Grant => {
            purser_wire::lists::grants(engine, account, page, engine.clock().now()).await
        }
        _ => purser_wire::lists::purchases(engine, account, page).await,
    })
}

/// A secret kept out of `Debug` (and so out of logs).
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(secret: String) -> Secret {
        Secret(secret)
    }
}

impl std::ops::Deref for Secret {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}
