//! Operations: health, readiness, metrics, the OpenAPI document, the catalog and the test clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use purser_wire::{ApiError, Fields, json_response, objects, required};

use super::{AppState, JsonBody, idempotency_key, not_found, once};
use crate::auth::Need;
use purser_store::Store;

pub(super) async fn healthz() -> Response {
    json_response(200, br#"{"status":"ok"}"#.to_vec())
}

/// Whether the store answers, for `/readyz`, which anyone may ask: one
/// ping at a time, its answer shared by the probes that waited for it and
/// reused for `FRESH`, so a flood of probes costs one blocking task, not a
/// thread and a store connection each. A ping stuck in a stalled store is
/// waited for at most `PATIENCE`, and no second one starts while it is.
#[derive(Debug, Default)]
pub struct Readiness {
    last: tokio::sync::Mutex<Option<(std::time::Instant, bool)>>,
    pinging: Arc<AtomicBool>,
}

impl Readiness {
    const FRESH: Duration = Duration::from_millis(250);
    const PATIENCE: Duration = Duration::from_secs(5);

    pub async fn reachable(&self, store: &Arc<dyn Store>) -> bool {
        let mut last = self.last.lock().await;
        if let Some((at, reachable)) = *last
            && at.elapsed() < Self::FRESH
        {
            return reachable;
        }
        let reachable = if self.pinging.swap(true, Ordering::AcqRel) {
            // The last ping is still stuck in the store.
            false
        } else {
            let (store, pinging) = (store.clone(), self.pinging.clone());
            let ping = tokio::task::spawn_blocking(move || {
                // Cleared however the ping ends, a panic included.
                let _done = Done(pinging);
                store.ping().is_ok()
            });
            matches!(
                tokio::time::timeout(Self::PATIENCE, ping).await,
                Ok(Ok(true))
            )
        };
        *last = Some((std::time::Instant::now(), reachable));
        reachable
    }
}

/// Clears the in-flight flag when dropped.
struct Done(Arc<AtomicBool>);

impl Drop for Done {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

pub(super) async fn readyz(State(state): State<AppState>) -> Response {
    let reachable = state.readiness.reachable(state.engine.store()).await;
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
