//! Operations: health, readiness, metrics, the OpenAPI document, the catalog and the test clock.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use purser_wire::{ApiError, Fields, json_response, objects, required};

use super::{AppState, JsonBody, idempotency_key, not_found, once};
use crate::auth::Need;
use purser_store::Store;
use tokio::sync::watch;

pub(super) async fn healthz() -> Response {
    json_response(200, br#"{"status":"ok"}"#.to_vec())
}

/// Whether the store answers, for `/readyz`, which anyone may ask: one
/// ping at a time, its answer shared by the probes that wait for it and
/// reused for `FRESH`, so a flood of probes costs one blocking task, not a
/// thread and a store connection each. The ping runs on its own, so a
/// probe that goes away loses nothing; a probe waits for it at most
/// `PATIENCE`. A ping stuck in a stalled store for `STUCK` lets another
/// start (a fresh connection may answer), up to `MAX_PINGS` at once.
#[derive(Debug)]
pub struct Readiness {
    /// The latest answer: when it came, and whether the store answered.
    answers: Arc<watch::Sender<Option<(Instant, bool)>>>,
    /// Pings running, and when the newest started.
    pings: Arc<Mutex<(usize, Option<Instant>)>>,
}

impl Default for Readiness {
    fn default() -> Readiness {
        Readiness {
            answers: Arc::new(watch::channel(None).0),
            pings: Arc::default(),
        }
    }
}

impl Readiness {
    const FRESH: Duration = Duration::from_millis(250);
    const PATIENCE: Duration = Duration::from_secs(5);
    const STUCK: Duration = Duration::from_secs(10);
    const MAX_PINGS: usize = 3;

    pub async fn reachable(&self, store: &Arc<dyn Store>) -> bool {
        let mut answers = self.answers.subscribe();
        if let Some((at, reachable)) = *answers.borrow_and_update()
            && at.elapsed() < Self::FRESH
        {
            return reachable;
        }
        {
            let mut pings = self
                .pings
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let start = match *pings {
                (0, _) | (_, None) => true,
                (running, Some(newest)) => {
                    running < Self::MAX_PINGS && newest.elapsed() >= Self::STUCK
                }
            };
            if start {
                *pings = (pings.0 + 1, Some(Instant::now()));
                let (store, answers, pings) =
                    (store.clone(), self.answers.clone(), self.pings.clone());
                tokio::spawn(async move {
                    let reachable = matches!(
                        tokio::task::spawn_blocking(move || store.ping().is_ok()).await,
                        Ok(true)
                    );
                    {
                        let mut pings = pings
                            .lock()
                            .unwrap_or_else(|poisoned| poisoned.into_inner());
                        pings.0 -= 1;
                        if pings.0 == 0 {
                            pings.1 = None;
                        }
                    }
                    answers.send_replace(Some((Instant::now(), reachable)));
                });
            }
        }
        match tokio::time::timeout(Self::PATIENCE, answers.changed()).await {
            Ok(Ok(())) => answers.borrow().is_some_and(|(_, reachable)| reachable),
            _ => false,
        }
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
