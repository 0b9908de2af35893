//! Operations: health, readiness, metrics, the OpenAPI document, the catalog and the test clock.

use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use purser_wire::{ApiError, Fields, json_response, objects, required};

use super::{AppState, JsonBody, idempotency_key, not_found, once};
use crate::auth::Need;

pub(super) async fn healthz() -> Response {
    json_response(200, br#"{"status":"ok"}"#.to_vec())
}

pub(super) async fn readyz(State(state): State<AppState>) -> Response {
    let store = state.engine.store().clone();
    let reachable = tokio::task::spawn_blocking(move || store.ping().is_ok())
        .await
        .unwrap_or(false);
    if reachable && !state.engine.is_poisoned() {
        json_response(200, br#"{"status":"ready"}"#.to_vec())
    } else {
        json_response(503, br#"{"status":"unavailable"}"#.to_vec())
    }
}

pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    state.metrics.set_queue_depth(state.engine.queue_depth());
    state
        .metrics
        .set_idempotency_keys(state.engine.idempotency_keys());
    let mut response = state.metrics.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        "text/plain; version=0.0.4".parse().expect("static header"),
    );
    response
}

pub(super) async fn openapi() -> Response {
    json_response(
        200,
        serde_json::to_vec(&crate::openapi::document()).expect("JSON rendering cannot fail"),
    )
}

pub(super) async fn catalog(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(error) = state.keys.authorize(&headers, Need::Read) {
        return error.into_response();
    }
    json_response(200, objects::catalog(state.engine.catalog()))
}

pub(super) async fn get_test_clock(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !state.engine.clock().is_test() {
        return not_found().await.into_response();
    }
    if let Err(error) = state.keys.authorize(&headers, Need::Read) {
        return error.into_response();
    }
    json_response(200, objects::test_clock(state.engine.clock().now()))
}

pub(super) async fn advance_test_clock(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Response {
    if !state.engine.clock().is_test() {
        return not_found().await.into_response();
    }
    let result = async {
        state.keys.authorize(&headers, Need::Admin)?;
        let key = idempotency_key(&headers)?;
        let fields = Fields::parse(&body, &["seconds"])?;
        let seconds = required(fields.integer("seconds")?, "seconds")?;
        if !(0..=100 * 366 * 86_400).contains(&seconds) {
            return Err(ApiError::invalid(
                "seconds",
                "seconds must be from 0 to 100 years",
            ));
        }
        let engine = state.engine.clone();
        // Answered after every shard applied (and made durable) what is due.
        let advance = async move {
            match engine.advance_test_clock(seconds).await {
                Ok(now) => (200, objects::test_clock(now)),
                Err(error) => {
                    let error = ApiError::from(error);
                    (error.status, error.body())
                }
            }
        };
        Ok(once(&state, key, "/v1/test_clock/advance", &body, advance).await)
    };
    result
        .await
        .unwrap_or_else(|error: ApiError| error.into_response())
}
