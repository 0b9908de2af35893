//! HTTP routes: authenticate, parse the body into a core command, claim the
//! idempotency key, hand the command to its shard, answer when durable.
//! No ledger rule and no SQL lives here.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use purser_core::limits::{
    DEFAULT_HOLD_TTL_SECONDS, DEFAULT_PAGE_LIMIT, MAX_BATCH_ITEMS, MAX_BODY_BYTES,
    MAX_IDEMPOTENCY_KEY_LEN, MAX_PAGE_LIMIT,
};
use purser_core::{
    AccountHandle, AccountId, AccountUpdate, Amount, Body, CaptureAmount, Catalog, ChargeMode,
    Command, DebitRecord, Fingerprint, GrantKind, MemberId, ObjectId, ObjectKind, PackageId,
    Proration, TaskId, TierId, Timestamp,
};
use purser_store::{ApiKeyRecord, EntryQuery, GroupBy, Store, UsageQuery};
use serde_json::{Value, json};

use crate::auth::{Keys, Need, SCOPES, generate_secret, hash_secret, random_hex};
use crate::clock::Clock;
use crate::engine::{Answer, Busy, Engine, KeyClaim, Work};
use crate::error::{ApiError, json_response};
use crate::idempotency::{Claimed, EdgeIdempotency, Stored, fingerprint, fingerprint_canonical};
use crate::memo::{self, DebitMemo};
use crate::metrics::Metrics;
use crate::render::{self, Page, Read, Text};
use crate::request::{Fields, required};

/// Everything a handler needs; cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState(pub Arc<Shared>);

#[derive(Debug)]
pub struct Shared {
    pub engine: Engine,
    pub store: Arc<dyn Store>,
    pub clock: Clock,
    pub catalog: Arc<Catalog>,
    pub keys: Keys,
    pub idempotency: EdgeIdempotency,
    pub metrics: Arc<Metrics>,
    /// How long a request waits for its answer before a 503 (the command may
    /// still commit: clients retry with the same idempotency key).
    pub request_timeout: std::time::Duration,
    pub portal: crate::portal::Portal,
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

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, _state: &S) -> Result<JsonBody> {
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        if declared.is_some_and(|length| length > MAX_BODY_BYTES as u64) {
            return Err(ApiError::too_large());
        }
        axum::body::to_bytes(request.into_body(), MAX_BODY_BYTES)
            .await
            .map(JsonBody)
            .map_err(|_| ApiError::too_large())
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route("/v1/catalog", get(catalog))
        .route("/v1/api_keys", post(create_key).get(list_keys))
        .route("/v1/api_keys/{id}/revoke", post(revoke_key))
        .route("/v1/accounts", post(create_account).get(list_accounts))
        .route("/v1/accounts/{id}", get(get_account).post(update_account))
        .route("/v1/accounts/{id}/close", post(close_account))
        .route("/v1/accounts/{id}/tier", post(change_tier))
        .route("/v1/accounts/{id}/balance", get(balance))
        .route("/v1/accounts/{id}/usage", post(charge))
        .route("/v1/accounts/{id}/usage/summary", get(usage_summary))
        .route("/v1/accounts/{id}/transactions", get(transactions))
        .route("/v1/accounts/{id}/holds", post(place_hold))
        .route(
            "/v1/accounts/{id}/grants",
            post(issue_grant).get(list_grants),
        )
        .route(
            "/v1/accounts/{id}/purchases",
            post(create_purchase).get(list_purchases),
        )
        .route("/v1/usage/batch", post(batch))
        .route("/v1/debits/{id}", get(get_debit))
        .route("/v1/debits/{id}/reverse", post(reverse))
        .route("/v1/holds/{id}", get(get_hold))
        .route("/v1/holds/{id}/capture", post(capture))
        .route("/v1/holds/{id}/release", post(release))
        .route("/v1/grants/{id}/void", post(void_grant))
        .route("/v1/purchases/{id}", get(get_purchase))
        // complete, fail, cancel, refund
        .route("/v1/purchases/{id}/{action}", post(purchase_action))
        .route(
            "/v1/accounts/{id}/portal_sessions",
            post(crate::portal::create_session),
        )
        .route("/v1/test_clock", get(get_test_clock))
        .route("/v1/test_clock/advance", post(advance_test_clock))
        .merge(crate::portal::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
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

pub(crate) fn busy(busy: Busy) -> ApiError {
    match busy {
        Busy::QueueFull => ApiError::rate_limited(),
        Busy::Stopped => ApiError::unavailable(),
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
) -> Response {
    let (status, body) = settle(state, start(state, command, key, path, body)).await;
    json_response(status, body)
}

/// A command handed to the engine, or answered at once (a replay, a refusal
/// of its key, a full queue).
pub(crate) enum Submitted {
    Answered(u16, Vec<u8>),
    Waiting {
        key: Option<String>,
        receiver: tokio::sync::oneshot::Receiver<Answer>,
    },
}

fn error_answer(error: ApiError) -> Submitted {
    Submitted::Answered(error.status, error.body())
}

/// Claims a request's idempotency key: `Ok(None)` without a key,
/// `Ok(Some(claim))` for a new one, `Err` with the answer to give instead (a
/// replay's first answer, or the refusal of a key in use or reused).
pub(crate) fn claim_key(
    state: &AppState,
    key: Option<String>,
    path: &str,
    body: &[u8],
) -> Result<Option<KeyClaim>, (u16, Vec<u8>)> {
    let Some(key) = key else {
        return Ok(None);
    };
    claim_printed(state, key, fingerprint("POST", path, body))
}

/// [`claim_key`] with the request's fingerprint already made.
fn claim_printed(
    state: &AppState,
    key: String,
    print: Fingerprint,
) -> Result<Option<KeyClaim>, (u16, Vec<u8>)> {
    match state.idempotency.claim(&key, print, state.clock.now()) {
        Claimed::New => Ok(Some(KeyClaim {
            key,
            fingerprint: print,
        })),
        Claimed::Replay(stored) => Err((stored.status, stored.body.to_vec())),
        Claimed::Mismatch => {
            let error = ApiError::idempotency(
                "idempotency_key_reused",
                "this Idempotency-Key was used with a different request",
            );
            Err((error.status, error.body()))
        }
        Claimed::InFlight => {
            let error = ApiError::idempotency(
                "idempotency_key_in_use",
                "a request with this Idempotency-Key is still running",
            );
            Err((error.status, error.body()))
        }
    }
}

/// Settles a claimed key with its request's answer: remembered if accepted,
/// released otherwise (refusals are judged afresh on retry).
pub(crate) fn release_key(state: &AppState, key: &str, status: u16, body: &[u8]) {
    if (200..300).contains(&status) {
        let stored = Stored {
            status,
            body: body.to_vec().into(),
        };
        state.idempotency.finish(key, stored, state.clock.now());
    } else {
        state.idempotency.abandon(key);
    }
}

/// Claims the idempotency key (if any) and queues the command; does not wait.
pub(crate) fn start(
    state: &AppState,
    command: Command,
    key: Option<String>,
    path: &str,
    body: &[u8],
) -> Submitted {
    queue(state, command, claim_key(state, key, path, body))
}

fn queue(
    state: &AppState,
    command: Command,
    claimed: Result<Option<KeyClaim>, (u16, Vec<u8>)>,
) -> Submitted {
    let claim = match claimed {
        Ok(claim) => claim,
        Err((status, body)) => return Submitted::Answered(status, body),
    };
    let key = claim.as_ref().map(|claim| claim.key.clone());
    match state.engine.submit_command(command, claim) {
        Ok(receiver) => Submitted::Waiting { key, receiver },
        Err(error) => {
            if let Some(key) = key {
                state.idempotency.abandon(&key);
            }
            error_answer(busy(error))
        }
    }
}

/// Waits for a queued command's answer (sent once durable) and remembers it
/// under its key if it was accepted.
pub(crate) async fn settle(state: &AppState, submitted: Submitted) -> (u16, Vec<u8>) {
    let (key, receiver) = match submitted {
        Submitted::Answered(status, body) => return replayed(state, status, body).await,
        Submitted::Waiting { key, receiver } => (key, receiver),
    };
    let answer = match tokio::time::timeout(state.request_timeout, receiver).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(_)) | Err(_) => Answer::Unavailable,
    };
    match answer {
        Answer::Json { status, body } => {
            if let Some(key) = key {
                release_key(state, &key, status, &body);
            }
            (status, body)
        }
        Answer::Remembered { status, body, memo } => {
            if let Some(key) = key {
                release_key(state, &key, status, &memo);
            }
            (status, body)
        }
        _ => {
            if let Some(key) = key {
                state.idempotency.abandon(&key);
            }
            let error = ApiError::unavailable();
            (error.status, error.body())
        }
    }
}

/// A remembered answer as the client first got it: a debit's memo is
/// rendered again from its entry (see `memo`); anything else is the answer.
pub(crate) async fn replayed(state: &AppState, status: u16, body: Vec<u8>) -> (u16, Vec<u8>) {
    if !memo::is_memo(&body) {
        return (status, body);
    }
    let rendered = async {
        let memo = DebitMemo::decode(&body)
            .ok_or_else(|| ApiError::internal("a remembered answer could not be read"))?;
        let (account, seq) = (memo.account, memo.seq);
        let entry = blocking(state, move |store| store.entry(account, seq))
            .await?
            .ok_or_else(|| ApiError::internal("a remembered answer's entry is missing"))?;
        Ok::<_, ApiError>(render::debit_from_memo(&memo, &entry))
    };
    match rendered.await {
        Ok(body) => (status, body),
        Err(error) => {
            tracing::error!(message = %error.message, "replaying an idempotency key");
            (error.status, error.body())
        }
    }
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
        .and_then(|()| idempotency_key(headers))
        .and_then(|key| build(body).map(|command| (command, key)));
    match prepared {
        Ok((command, key)) => submit(state, command, key, path, body).await,
        Err(error) => error.into_response(),
    }
}

pub(crate) async fn ask(state: &AppState, shard: usize, read: Read) -> Result<Answer> {
    let receiver = state.engine.submit(shard, Work::Read(read)).map_err(busy)?;
    match tokio::time::timeout(state.request_timeout, receiver).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(_)) | Err(_) => Err(ApiError::unavailable()),
    }
}

fn answer_response(answer: Answer) -> Response {
    match answer {
        Answer::Json { status, body } => json_response(status, body),
        _ => ApiError::unavailable().into_response(),
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
    let shard = state.engine.shard_of_id(account.as_str());
    match ask(state, shard, read(account)).await {
        Ok(answer) => answer_response(answer),
        Err(error) => error.into_response(),
    }
}

/// The handle and creation time of an account id, from its shard.
pub(crate) async fn account_handle(
    state: &AppState,
    id: &str,
) -> Result<(AccountHandle, Timestamp)> {
    let missing = || ApiError::not_found("account_not_found", "no such account");
    let account = AccountId::parse(id).map_err(|_| missing())?;
    let shard = state.engine.shard_of_id(account.as_str());
    match ask(state, shard, Read::Handle(account)).await? {
        Answer::Handle(Some(found)) => Ok(found),
        Answer::Handle(None) => Err(missing()),
        _ => Err(ApiError::unavailable()),
    }
}

/// Runs a store query off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    state: &AppState,
    work: impl FnOnce(&dyn Store) -> Result<T, purser_store::StoreError> + Send + 'static,
) -> Result<T> {
    let store = state.store.clone();
    tokio::task::spawn_blocking(move || work(&*store))
        .await
        .map_err(|_| ApiError::internal("a store query panicked"))?
        .map_err(|error| {
            tracing::error!(%error, "store query failed");
            ApiError::internal("the store could not answer")
        })
}

fn object_id(kind: ObjectKind, text: &str, code: &'static str) -> Result<ObjectId> {
    ObjectId::parse(kind, text)
        .ok_or_else(|| ApiError::not_found(code, format!("no such {}", kind.prefix())))
}

fn amount(fields: &Fields) -> Result<Amount> {
    let credits = fields.credits("credits")?;
    let task = fields.id("task", TaskId::parse)?;
    let quantity = fields.quantity("quantity")?;
    match (credits, task, quantity) {
        (Some(credits), None, None) => Ok(Amount::Credits(credits)),
        (None, Some(task), Some(quantity)) => Ok(Amount::Task { task, quantity }),
        (None, Some(_), None) => Err(ApiError::missing("quantity")),
        (None, None, Some(_)) => Err(ApiError::missing("task")),
        (None, None, None) => Err(ApiError::bad_request(
            "parameter_missing",
            "give either credits, or task and quantity",
        )),
        _ => Err(ApiError::bad_request(
            "parameter_conflict",
            "give either credits, or task and quantity, not both",
        )),
    }
}

fn mode(fields: &Fields) -> Result<ChargeMode> {
    Ok(match fields.choice("mode", &["strict", "record"])? {
        Some(1) => ChargeMode::Record,
        _ => ChargeMode::Strict,
    })
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

// ----- operations -----

async fn healthz() -> Response {
    json_response(200, br#"{"status":"ok"}"#.to_vec())
}

async fn readyz(State(state): State<AppState>) -> Response {
    let store = state.store.clone();
    let reachable = tokio::task::spawn_blocking(move || store.ping().is_ok())
        .await
        .unwrap_or(false);
    if reachable && !state.engine.is_poisoned() {
        json_response(200, br#"{"status":"ready"}"#.to_vec())
    } else {
        json_response(503, br#"{"status":"unavailable"}"#.to_vec())
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    state.metrics.set_queue_depth(state.engine.queue_depth());
    let mut response = state.metrics.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        "text/plain; version=0.0.4".parse().expect("static header"),
    );
    response
}

async fn openapi() -> Response {
    json_response(
        200,
        serde_json::to_vec(&crate::openapi::document()).expect("JSON rendering cannot fail"),
    )
}

async fn catalog(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(error) = state.keys.authorize(&headers, Need::Read) {
        return error.into_response();
    }
    json_response(
        200,
        serde_json::to_vec(&crate::config::catalog_json(&state.catalog))
            .expect("JSON rendering cannot fail"),
    )
}

// ----- API keys -----

async fn create_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Response {
    let result = async {
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
            created_at: state.clock.now(),
            revoked_at: None,
        };
        let stored = record.clone();
        blocking(&state, move |store| store.insert_api_key(&stored)).await?;
        state.keys.add(&record);
        let mut value = key_json(&record);
        value["secret"] = json!(secret);
        Ok(json_response(
            201,
            serde_json::to_vec(&value).expect("JSON"),
        ))
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

fn key_json(record: &ApiKeyRecord) -> Value {
    json!({
        "object": "api_key",
        "id": record.id,
        "scopes": record.scopes,
        "created_at": Text(record.created_at),
        "revoked_at": record.revoked_at.map(|t| t.to_string()),
    })
}

async fn list_keys(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let result = async {
        state.keys.authorize(&headers, Need::Admin)?;
        let keys = blocking(&state, |store| store.api_keys()).await?;
        let data: Vec<Value> = keys.iter().rev().map(key_json).collect();
        Ok(json_response(
            200,
            serde_json::to_vec(&json!({"object": "list", "data": data, "has_more": false}))
                .expect("JSON"),
        ))
    };
    result
        .await
        .unwrap_or_else(|error: ApiError| error.into_response())
}

async fn revoke_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let result = async {
        state.keys.authorize(&headers, Need::Admin)?;
        let now = state.clock.now();
        let target = id.clone();
        let found = blocking(&state, move |store| store.revoke_api_key(&target, now)).await?;
        if !found {
            return Err(ApiError::not_found("api_key_not_found", "no such API key"));
        }
        state.keys.revoke(&id);
        let keys = blocking(&state, |store| store.api_keys()).await?;
        let record = keys
            .into_iter()
            .find(|k| k.id == id)
            .ok_or_else(|| ApiError::internal("revoked key vanished"))?;
        Ok(json_response(
            200,
            serde_json::to_vec(&key_json(&record)).expect("JSON"),
        ))
    };
    result
        .await
        .unwrap_or_else(|error: ApiError| error.into_response())
}

// ----- accounts -----

async fn create_account(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Response {
    mutate(
        &state,
        &headers,
        Need::Admin,
        "/v1/accounts",
        &body,
        |body| {
            let fields = Fields::parse(
                body,
                &[
                    "id",
                    "name",
                    "tier",
                    "anchor",
                    "member_monthly_cap",
                    "metadata",
                ],
            )?;
            Ok(Command::OpenAccount {
                id: required(fields.id("id", AccountId::parse)?, "id")?,
                name: fields.string("name")?.map(str::to_owned),
                tier: required(fields.id("tier", TierId::parse)?, "tier")?,
                anchor: fields.time("anchor")?,
                member_monthly_cap: fields.credits("member_monthly_cap")?,
                metadata: fields.metadata("metadata")?.unwrap_or_default(),
            })
        },
    )
    .await
}

async fn update_account(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Response {
    let path = format!("/v1/accounts/{id}");
    mutate(&state, &headers, Need::Admin, &path, &body, |body| {
        let fields = Fields::parse(body, &["name", "metadata", "member_monthly_cap"])?;
        let cap = if fields.has("member_monthly_cap") {
            Some(fields.credits("member_monthly_cap")?)
        } else if body_has_null(body, "member_monthly_cap") {
            Some(None)
        } else {
            None
        };
        Ok(Command::UpdateAccount {
            account: account_path(&id)?,
            update: AccountUpdate {
                name: fields.string("name")?.map(Into::into),
                metadata: fields.metadata("metadata")?,
                member_monthly_cap: cap,
            },
        })
    })
    .await
}

fn body_has_null(body: &[u8], name: &str) -> bool {
    serde_json::from_slice::<Value>(body)
        .is_ok_and(|value| value.get(name).is_some_and(Value::is_null))
}

async fn close_account(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Response {
    let path = format!("/v1/accounts/{id}/close");
    mutate(&state, &headers, Need::Admin, &path, &body, |body| {
        Fields::parse(body, &[])?;
        Ok(Command::CloseAccount {
            account: account_path(&id)?,
        })
    })
    .await
}

async fn change_tier(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Response {
    let path = format!("/v1/accounts/{id}/tier");
    mutate(&state, &headers, Need::Admin, &path, &body, |body| {
        let fields = Fields::parse(body, &["tier", "proration"])?;
        let proration = match fields.choice("proration", &["full", "prorated", "none"])? {
            Some(1) => Proration::Prorated,
            Some(2) => Proration::None,
            _ => Proration::Full,
        };
        Ok(Command::ChangeTier {
            account: account_path(&id)?,
            tier: required(fields.id("tier", TierId::parse)?, "tier")?,
            proration,
        })
    })
    .await
}

async fn get_account(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    read_account(&state, &headers, Need::Read, &id, Read::Account).await
}

async fn balance(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    read_account(&state, &headers, Need::Balance, &id, Read::Balance).await
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
async fn list_in_memory(
    state: &AppState,
    headers: &HeaderMap,
    id: &str,
    query: &std::collections::HashMap<String, String>,
    kind: ObjectKind,
    read: fn(AccountId, Page) -> Read,
) -> Response {
    match page(query, kind) {
        Ok(page) => {
            read_account(state, headers, Need::Read, id, |account| {
                read(account, page)
            })
            .await
        }
        Err(error) => error.into_response(),
    }
}

async fn list_grants(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): QueryMap,
) -> Response {
    list_in_memory(
        &state,
        &headers,
        &id,
        &query,
        ObjectKind::Grant,
        Read::Grants,
    )
    .await
}

async fn list_purchases(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): QueryMap,
) -> Response {
    list_in_memory(
        &state,
        &headers,
        &id,
        &query,
        ObjectKind::Purchase,
        Read::Purchases,
    )
    .await
}

async fn list_accounts(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): QueryMap,
) -> Response {
    let result = async {
        state.keys.authorize(&headers, Need::Read)?;
        let limit = list_limit(&query)?;
        let before = match query.get("starting_after") {
            None => None,
            Some(id) => {
                let (_, created) = account_handle(&state, id)
                    .await
                    .map_err(|_| ApiError::invalid("starting_after", "no such account"))?;
                Some((
                    created,
                    AccountId::parse(id)
                        .map_err(|_| ApiError::invalid("starting_after", "no such account"))?,
                ))
            }
        };
        let mut page = Vec::new();
        for shard in 0..state.engine.shard_count() {
            if let Answer::Accounts(accounts) = ask(
                &state,
                shard,
                Read::Accounts {
                    before: before.clone(),
                    limit: limit + 1,
                },
            )
            .await?
            {
                page.extend(accounts);
            }
        }
        page.sort_unstable_by(|a, b| (&b.0, &b.1).cmp(&(&a.0, &a.1)));
        let has_more = page.len() > limit;
        page.truncate(limit);
        let mut body = Vec::with_capacity(page.iter().map(|p| p.2.len() + 1).sum::<usize>() + 64);
        body.extend_from_slice(br#"{"object":"list","data":["#);
        for (index, (_, _, account)) in page.iter().enumerate() {
            if index > 0 {
                body.push(b',');
            }
            body.extend_from_slice(account);
        }
        body.extend_from_slice(format!(r#"],"has_more":{has_more}}}"#).as_bytes());
        Ok(json_response(200, body))
    };
    result
        .await
        .unwrap_or_else(|error: ApiError| error.into_response())
}

// ----- charges -----

const CHARGE_FIELDS: [&str; 6] = ["task", "quantity", "credits", "member", "mode", "metadata"];

fn charge_command(account: AccountId, fields: &Fields) -> Result<Command> {
    Ok(Command::Charge {
        account,
        amount: amount(fields)?,
        member: fields.id("member", MemberId::parse)?,
        mode: mode(fields)?,
        metadata: fields.metadata("metadata")?.unwrap_or_default(),
    })
}

async fn charge(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Response {
    let path = format!("/v1/accounts/{id}/usage");
    mutate(&state, &headers, Need::Usage, &path, &body, |body| {
        let fields = Fields::parse(body, &CHARGE_FIELDS)?;
        charge_command(account_path(&id)?, &fields)
    })
    .await
}

async fn batch(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Response {
    let result = async {
        state.keys.authorize(&headers, Need::Usage)?;
        let fields = Fields::parse(&body, &["items"])?;
        let items = required(fields.array("items")?, "items")?;
        if items.is_empty() || items.len() > MAX_BATCH_ITEMS {
            return Err(ApiError::invalid(
                "items",
                "items must hold 1 to 1000 charges",
            ));
        }
        // Every item is queued before any is awaited, so they share group commits.
        let started: Vec<Submitted> = items.iter().map(|item| batch_item(&state, item)).collect();
        let mut body = Vec::with_capacity(started.len() * 600 + 32);
        body.extend_from_slice(br#"{"object":"list","results":["#);
        for (index, submitted) in started.into_iter().enumerate() {
            let (status, answer) = settle(&state, submitted).await;
            if index > 0 {
                body.push(b',');
            }
            if (200..300).contains(&status) {
                body.extend_from_slice(format!(r#"{{"status":{status},"debit":"#).as_bytes());
                body.extend_from_slice(&answer);
            } else {
                let error = serde_json::from_slice::<Value>(&answer)
                    .ok()
                    .and_then(|value| value.get("error").cloned())
                    .unwrap_or(Value::Null);
                body.extend_from_slice(
                    format!(r#"{{"status":{status},"error":{error}"#).as_bytes(),
                );
            }
            body.push(b'}');
        }
        body.extend_from_slice(b"]}");
        Ok(json_response(200, body))
    };
    result
        .await
        .unwrap_or_else(|error: ApiError| error.into_response())
}

/// Validates and queues one batch item, with its own idempotency key in the
/// same key space as single charges (the path is that of a single charge).
fn batch_item(state: &AppState, item: &Value) -> Submitted {
    match batch_command(item) {
        Ok((command, key, print)) => queue(state, command, claim_printed(state, key, print)),
        Err(error) => error_answer(error),
    }
}

/// An item's command, key, and fingerprint: that of the single charge
/// (`POST /v1/accounts/{account}/usage` with the item's other fields).
fn batch_command(item: &Value) -> Result<(Command, String, Fingerprint)> {
    let map = item
        .as_object()
        .ok_or_else(|| ApiError::invalid("items", "each item must be an object"))?;
    let mut allowed: Vec<&str> = CHARGE_FIELDS.to_vec();
    allowed.extend(["account", "idempotency_key"]);
    let fields = Fields::from_map(map.clone(), &allowed)?;
    let account = required(fields.id("account", AccountId::parse)?, "account")?;
    let key = required(fields.string("idempotency_key")?, "idempotency_key")?.to_owned();
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err(ApiError::invalid(
            "idempotency_key",
            "idempotency_key must be 1-255 characters",
        ));
    }
    let command = charge_command(account.clone(), &fields)?;
    let single = fields.canonical_without(&["account", "idempotency_key"]);
    let path = format!("/v1/accounts/{account}/usage");
    Ok((command, key, fingerprint_canonical("POST", &path, &single)))
}

/// The stored record of a debit, for reversal and `GET /v1/debits/{id}`.
async fn debit_record(
    state: &AppState,
    debit: ObjectId,
) -> Result<(purser_core::Entry, DebitRecord)> {
    let entry = blocking(state, move |store| store.entry(debit.account, debit.seq)).await?;
    let missing = || ApiError::not_found("debit_not_found", "no such debit");
    let entry = entry.ok_or_else(missing)?;
    let (credits, allocations, debt_incurred, member) = match &entry.body {
        Body::Debited(d) => (
            d.credits,
            d.allocations.clone(),
            d.debt_incurred,
            d.member.clone(),
        ),
        Body::Captured(c) => {
            let all = c.from_hold.iter().chain(&c.excess).copied().collect();
            (c.credits, all, c.debt_incurred, c.member.clone())
        }
        _ => return Err(missing()),
    };
    let record = DebitRecord {
        id: debit,
        at: entry.at,
        credits,
        allocations,
        debt_incurred,
        member,
    };
    Ok((entry, record))
}

async fn get_debit(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let result = async {
        state.keys.authorize(&headers, Need::Read)?;
        let debit = object_id(ObjectKind::Debit, &id, "debit_not_found")?;
        let (entry, _) = debit_record(&state, debit).await?;
        let answer = ask(
            &state,
            state.engine.shard_of_handle(debit.account),
            Read::AccountByHandle(debit.account),
        )
        .await?;
        let account: Value = match answer {
            Answer::Json { status: 200, body } => {
                serde_json::from_slice(&body).unwrap_or(Value::Null)
            }
            _ => return Err(ApiError::not_found("debit_not_found", "no such debit")),
        };
        let account_id = account["id"].as_str().unwrap_or_default().to_owned();
        let mut value = render::transaction_json(&account_id, &entry);
        value["object"] = json!("debit");
        value["id"] = json!(id);
        Ok(json_response(
            200,
            serde_json::to_vec(&value).expect("JSON"),
        ))
    };
    result
        .await
        .unwrap_or_else(|error: ApiError| error.into_response())
}

async fn reverse(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Response {
    let result = async {
        state.keys.authorize(&headers, Need::Admin)?;
        let key = idempotency_key(&headers)?;
        let fields = Fields::parse(&body, &["credits", "reason"])?;
        let credits = fields.credits("credits")?;
        let debit = object_id(ObjectKind::Debit, &id, "debit_not_found")?;
        let (_, record) = debit_record(&state, debit).await?;
        let command = Command::Reverse {
            debit: record,
            credits,
        };
        Ok(submit(
            &state,
            command,
            key,
            &format!("/v1/debits/{id}/reverse"),
            &body,
        )
        .await)
    };
    result
        .await
        .unwrap_or_else(|error: ApiError| error.into_response())
}

// ----- holds -----

async fn place_hold(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Response {
    let path = format!("/v1/accounts/{id}/holds");
    mutate(&state, &headers, Need::Usage, &path, &body, |body| {
        let fields = Fields::parse(
            body,
            &[
                "credits",
                "task",
                "quantity",
                "ttl_seconds",
                "member",
                "metadata",
            ],
        )?;
        let ttl_seconds = fields
            .integer("ttl_seconds")?
            .unwrap_or(DEFAULT_HOLD_TTL_SECONDS);
        if !(1..=purser_core::limits::MAX_HOLD_TTL_SECONDS).contains(&ttl_seconds) {
            return Err(ApiError::invalid(
                "ttl_seconds",
                "ttl_seconds must be from 1 to 86400",
            ));
        }
        Ok(Command::PlaceHold {
            account: account_path(&id)?,
            amount: amount(&fields)?,
            ttl_seconds,
            member: fields.id("member", MemberId::parse)?,
            metadata: fields.metadata("metadata")?.unwrap_or_default(),
        })
    })
    .await
}

/// A settling command refused with 409 `hold_not_active` for an id that never
/// named a hold is a 404 instead.
async fn settle_hold(
    state: &AppState,
    headers: &HeaderMap,
    path: &str,
    hold: ObjectId,
    body: &[u8],
    command: Command,
) -> Response {
    let response = submit(
        state,
        command,
        idempotency_key(headers).unwrap_or_default(),
        path,
        body,
    )
    .await;
    if response.status().as_u16() != 409 {
        return response;
    }
    match blocking(state, move |store| store.entry(hold.account, hold.seq)).await {
        Ok(Some(entry)) if matches!(entry.body, Body::Held(_)) => response,
        Ok(_) => ApiError::not_found("hold_not_found", "no such hold").into_response(),
        Err(error) => error.into_response(),
    }
}

async fn capture(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Response {
    let result = async {
        state.keys.authorize(&headers, Need::Usage)?;
        idempotency_key(&headers)?;
        let hold = object_id(ObjectKind::Hold, &id, "hold_not_found")?;
        let fields = Fields::parse(&body, &["credits", "quantity", "mode"])?;
        let amount = match (fields.credits("credits")?, fields.quantity("quantity")?) {
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_request(
                    "parameter_conflict",
                    "give credits or quantity, not both",
                ));
            }
            (Some(credits), None) => CaptureAmount::Credits(credits),
            (None, Some(quantity)) => CaptureAmount::Quantity(quantity),
            (None, None) => CaptureAmount::Hold,
        };
        let command = Command::CaptureHold {
            hold,
            amount,
            mode: mode(&fields)?,
        };
        Ok(settle_hold(
            &state,
            &headers,
            &format!("/v1/holds/{id}/capture"),
            hold,
            &body,
            command,
        )
        .await)
    };
    result
        .await
        .unwrap_or_else(|error: ApiError| error.into_response())
}

async fn release(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Response {
    let result = async {
        state.keys.authorize(&headers, Need::Usage)?;
        idempotency_key(&headers)?;
        let hold = object_id(ObjectKind::Hold, &id, "hold_not_found")?;
        Fields::parse(&body, &[])?;
        let command = Command::ReleaseHold { hold };
        Ok(settle_hold(
            &state,
            &headers,
            &format!("/v1/holds/{id}/release"),
            hold,
            &body,
            command,
        )
        .await)
    };
    result
        .await
        .unwrap_or_else(|error: ApiError| error.into_response())
}

async fn get_hold(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let result = async {
        state.keys.authorize(&headers, Need::Read)?;
        let hold = object_id(ObjectKind::Hold, &id, "hold_not_found")?;
        let answer = ask(
            &state,
            state.engine.shard_of_handle(hold.account),
            Read::Hold(hold),
        )
        .await?;
        if let Answer::Json { status: 200, body } = answer {
            return Ok(json_response(200, body));
        }
        settled_hold(&state, hold).await
    };
    result
        .await
        .unwrap_or_else(|error: ApiError| error.into_response())
}

/// A hold no longer active: rebuilt from its journal entries.
async fn settled_hold(state: &AppState, hold: ObjectId) -> Result<Response> {
    let missing = || ApiError::not_found("hold_not_found", "no such hold");
    let entry = blocking(state, move |store| store.entry(hold.account, hold.seq))
        .await?
        .ok_or_else(missing)?;
    let Body::Held(placed) = &entry.body else {
        return Err(missing());
    };
    let settlement = blocking(state, move |store| {
        let mut before_seq = None;
        loop {
            let page = store.entries(&EntryQuery {
                account: hold.account,
                types: vec!["capture", "release", "hold_expired"],
                before_seq,
                limit: 100,
            })?;
            let Some(last) = page.last() else {
                return Ok(None);
            };
            before_seq = Some(last.seq);
            let found = page.into_iter().find(|e| match &e.body {
                Body::Captured(c) => c.hold == hold.seq,
                Body::Released(r) => r.hold == hold.seq,
                _ => false,
            });
            if found.is_some() || before_seq.is_some_and(|seq| seq <= hold.seq) {
                return Ok(found);
            }
        }
    })
    .await?;
    let status = match settlement.as_ref().map(|e| e.body.type_name()) {
        Some("capture") => "captured",
        Some("release") => "released",
        Some(_) => "expired",
        None => "active",
    };
    let account = ask(
        state,
        state.engine.shard_of_handle(hold.account),
        Read::AccountByHandle(hold.account),
    )
    .await?;
    let Answer::Json { status: 200, body } = account else {
        return Err(missing());
    };
    let account: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut value = json!({
        "object": "hold",
        "id": hold.format(ObjectKind::Hold),
        "account": account["id"],
        "credits": placed.credits.to_string(),
        "status": status,
        "task": placed.pricing.as_ref().map(|p| p.task.as_str()),
        "member": placed.member.as_ref().map(|m| m.as_str()),
        "created_at": Text(placed.created_at),
        "expires_at": Text(placed.expires_at),
    });
    if let Some(settled) = settlement {
        value["settled_at"] = json!(settled.at.to_string());
        if matches!(settled.body, Body::Captured(_)) {
            value["debit"] = json!(
                ObjectId {
                    account: hold.account,
                    seq: settled.seq
                }
                .format(ObjectKind::Debit)
            );
        }
    }
    Ok(json_response(
        200,
        serde_json::to_vec(&value).expect("JSON"),
    ))
}

// ----- grants -----

async fn issue_grant(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Response {
    let path = format!("/v1/accounts/{id}/grants");
    mutate(&state, &headers, Need::Admin, &path, &body, |body| {
        let fields = Fields::parse(
            body,
            &["credits", "kind", "expires_at", "priority", "reason"],
        )?;
        let kind = match fields.string("kind")? {
            None => GrantKind::Promo,
            Some(text) => GrantKind::parse(text)
                .ok_or_else(|| ApiError::invalid("kind", "kind must be promo or package"))?,
        };
        let priority =
            match fields.integer("priority")? {
                None => None,
                Some(p) => Some(u16::try_from(p).map_err(|_| {
                    ApiError::invalid("priority", "priority must be from 0 to 1000")
                })?),
            };
        let reason = required(fields.string("reason")?, "reason")?;
        if reason.trim().is_empty() {
            return Err(ApiError::invalid("reason", "reason must not be empty"));
        }
        Ok(Command::IssueGrant {
            account: account_path(&id)?,
            kind,
            credits: required(fields.credits("credits")?, "credits")?,
            expires_at: fields.time("expires_at")?,
            priority,
            reason: reason.to_owned(),
        })
    })
    .await
}

async fn void_grant(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Response {
    let result = async {
        state.keys.authorize(&headers, Need::Admin)?;
        let key = idempotency_key(&headers)?;
        let grant = object_id(ObjectKind::Grant, &id, "grant_not_found")?;
        Fields::parse(&body, &["reason"])?;
        let response = submit(
            &state,
            Command::VoidGrant { grant },
            key,
            &format!("/v1/grants/{id}/void"),
            &body,
        )
        .await;
        if response.status().as_u16() != 404 {
            return Ok(response);
        }
        // Expired or voided grants leave memory once empty: the journal knows them.
        let entry = blocking(&state, move |store| store.entry(grant.account, grant.seq)).await?;
        Ok(match entry.map(|e| e.body) {
            Some(Body::Granted(_) | Body::RolledOver { .. }) => ApiError::conflict(
                "grant_not_live",
                "the grant has already expired or been voided",
            )
            .into_response(),
            _ => response,
        })
    };
    result
        .await
        .unwrap_or_else(|error: ApiError| error.into_response())
}

// ----- purchases -----

async fn create_purchase(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Response {
    let path = format!("/v1/accounts/{id}/purchases");
    mutate(&state, &headers, Need::Admin, &path, &body, |body| {
        let fields = Fields::parse(body, &["package"])?;
        Ok(Command::CreatePurchase {
            account: account_path(&id)?,
            package: required(fields.id("package", PackageId::parse)?, "package")?,
        })
    })
    .await
}

/// `POST /v1/purchases/{id}/complete|fail|cancel|refund`.
async fn purchase_action(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    JsonBody(body): JsonBody,
) -> Response {
    if !matches!(action.as_str(), "complete" | "fail" | "cancel" | "refund") {
        return not_found().await.into_response();
    }
    let path = format!("/v1/purchases/{id}/{action}");
    mutate(&state, &headers, Need::Admin, &path, &body, |body| {
        Fields::parse(body, &[])?;
        let purchase = object_id(ObjectKind::Purchase, &id, "purchase_not_found")?;
        Ok(match action.as_str() {
            "complete" => Command::CompletePurchase { purchase },
            "fail" => Command::FailPurchase { purchase },
            "cancel" => Command::CancelPurchase { purchase },
            _ => Command::RefundPurchase { purchase },
        })
    })
    .await
}

async fn get_purchase(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let result = async {
        state.keys.authorize(&headers, Need::Read)?;
        let purchase = object_id(ObjectKind::Purchase, &id, "purchase_not_found")?;
        let answer = ask(
            &state,
            state.engine.shard_of_handle(purchase.account),
            Read::Purchase(purchase),
        )
        .await?;
        Ok(answer_response(answer))
    };
    result
        .await
        .unwrap_or_else(|error: ApiError| error.into_response())
}

// ----- history and reports -----

async fn transactions(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): QueryMap,
) -> Response {
    let result = async {
        state.keys.authorize(&headers, Need::Read)?;
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
                    TRANSACTION_TYPES
                        .iter()
                        .find(|known| **known == name)
                        .copied()
                        .ok_or_else(|| {
                            ApiError::invalid("type", format!("unknown transaction type {name}"))
                        })
                })
                .collect::<Result<_>>()?,
        };
        let entries = blocking(&state, move |store| {
            store.entries(&EntryQuery {
                account: handle,
                types,
                before_seq,
                limit: limit + 1,
            })
        })
        .await?;
        let has_more = entries.len() > limit;
        let data: Vec<Value> = entries
            .iter()
            .take(limit)
            .map(|entry| render::transaction_json(&id, entry))
            .collect();
        Ok(json_response(
            200,
            serde_json::to_vec(&json!({"object": "list", "data": data, "has_more": has_more}))
                .expect("JSON"),
        ))
    };
    result
        .await
        .unwrap_or_else(|error: ApiError| error.into_response())
}

/// Every entry type a transaction list can filter on.
pub const TRANSACTION_TYPES: [&str; 21] = [
    "account_created",
    "account_updated",
    "account_closed",
    "grant",
    "debit",
    "hold",
    "capture",
    "release",
    "hold_expired",
    "expire",
    "void",
    "reversal",
    "debt_paid",
    "tier_changed",
    "tier_scheduled",
    "rollover",
    "purchase_created",
    "purchase_completed",
    "purchase_failed",
    "purchase_canceled",
    "purchase_refunded",
];

async fn usage_summary(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): QueryMap,
) -> Response {
    let result = async {
        state.keys.authorize(&headers, Need::Read)?;
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
        let rows = blocking(&state, move |store| {
            store.usage(&UsageQuery {
                account: handle,
                from,
                to,
                group_by,
            })
        })
        .await?;
        let data: Vec<Value> = rows
            .iter()
            .map(|row| json!({"key": row.key, "credits": row.credits.to_string(), "count": row.count}))
            .collect();
        let body = json!({
            "object": "usage_summary",
            "account": id,
            "group_by": query.get("group_by").map_or("task", String::as_str),
            "from": from.map(|t| t.to_string()),
            "to": to.map(|t| t.to_string()),
            "data": data,
        });
        Ok(json_response(200, serde_json::to_vec(&body).expect("JSON")))
    };
    result
        .await
        .unwrap_or_else(|error: ApiError| error.into_response())
}

// ----- test clock -----

fn clock_json(now: Timestamp) -> Vec<u8> {
    serde_json::to_vec(&json!({"object": "test_clock", "now": Text(now)})).expect("JSON")
}

async fn get_test_clock(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !state.clock.is_test() {
        return not_found().await.into_response();
    }
    if let Err(error) = state.keys.authorize(&headers, Need::Read) {
        return error.into_response();
    }
    json_response(200, clock_json(state.clock.now()))
}

async fn advance_test_clock(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Response {
    if !state.clock.is_test() {
        return not_found().await.into_response();
    }
    let result = async {
        state.keys.authorize(&headers, Need::Admin)?;
        let fields = Fields::parse(&body, &["seconds"])?;
        let seconds = required(fields.integer("seconds")?, "seconds")?;
        if !(0..=100 * 366 * 86_400).contains(&seconds) {
            return Err(ApiError::invalid(
                "seconds",
                "seconds must be from 0 to 100 years",
            ));
        }
        let now = state
            .clock
            .advance(seconds)
            .ok_or_else(|| ApiError::invalid("seconds", "the clock cannot move that far"))?;
        let text = now.micros().to_string();
        blocking(&state, move |store| {
            store.set_setting(crate::TEST_CLOCK_SETTING, &text)
        })
        .await?;
        // Answered after every shard applied (and made durable) what is due.
        let mut receivers = Vec::new();
        for shard in 0..state.engine.shard_count() {
            receivers.push(state.engine.submit(shard, Work::Tick).map_err(busy)?);
        }
        for receiver in receivers {
            match receiver.await {
                Ok(Answer::Json { .. }) => {}
                _ => return Err(ApiError::unavailable()),
            }
        }
        Ok(json_response(200, clock_json(now)))
    };
    result
        .await
        .unwrap_or_else(|error: ApiError| error.into_response())
}
