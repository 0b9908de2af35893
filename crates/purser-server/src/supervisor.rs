//! The writer role on a shared PostgreSQL database.
//!
//! A supervised process serves the API only while it holds the writer lease.
//! Without it (another purser is the writer, or this one was fenced or lost
//! its database) it is a standby: `/healthz` answers, `/readyz` says
//! `standby` (503), everything else is a 503. It keeps trying to take the
//! lease, with backoff; once it has it, it rebuilds the ledger from the
//! database (snapshots and journal) and starts serving. A writer whose engine
//! stops (a failed or fenced commit) drops that engine and goes back to
//! standby, so nothing it holds in memory outlives what the database has.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use purser_store::{Store, StoreError};
use purser_store_postgres::PostgresStore;
use tower::ServiceExt;

use crate::api::{self, AppState};
use crate::config::Config;
use purser_wire::{ApiError, json_response};

#[derive(Debug)]
pub struct Supervisor {
    config: Config,
    admin_key: Option<String>,
    url: String,
    holder: String,
    active: RwLock<Option<(AppState, Router)>>,
    stopping: std::sync::atomic::AtomicBool,
}

impl Supervisor {
    /// Starts supervising; `initial` is the state if the lease is already held.
    pub fn start(
        config: Config,
        admin_key: Option<String>,
        url: String,
        holder: String,
        initial: Option<AppState>,
    ) -> Arc<Supervisor> {
        let supervisor = Arc::new(Supervisor {
            config,
            admin_key,
            url,
            holder,
            active: RwLock::new(None),
            stopping: std::sync::atomic::AtomicBool::new(false),
        });
        tokio::spawn(supervisor.clone().run(initial));
        supervisor
    }

    /// The serving state while this process is the writer.
    pub fn active(&self) -> Option<AppState> {
        let active = self.active.read().unwrap_or_else(|p| p.into_inner());
        active.as_ref().map(|(state, _)| state.clone())
    }

    fn router(&self) -> Option<Router> {
        let active = self.active.read().unwrap_or_else(|p| p.into_inner());
        active.as_ref().map(|(_, router)| router.clone())
    }

    fn set(&self, state: Option<AppState>) {
        let entry = state.map(|state| (state.clone(), api::router(state)));
        *self.active.write().unwrap_or_else(|p| p.into_inner()) = entry;
    }

    /// Stops serving and hands the lease back, so a standby takes over at
    /// once (called once every in-flight request has been answered).
    pub async fn shutdown(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let Some(state) = self.active() else {
            return;
        };
        self.set(None);
        let store = state.engine.store().clone();
        let handed = tokio::task::spawn_blocking(move || store.hand_back());
        if tokio::time::timeout(Duration::from_secs(5), handed)
            .await
            .is_err()
        {
            tracing::warn!("handing the writer lease back timed out; it runs out by itself");
        }
    }

    fn stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn run(self: Arc<Self>, mut next: Option<AppState>) {
        while !self.stopping() {
            let state = match next.take() {
                Some(state) => state,
                None => match self.become_writer().await {
                    Some(state) => state,
                    None => return,
                },
            };
            if self.stopping() {
                return;
            }
            tracing::info!(holder = %self.holder, "serving as the writer");
            self.set(Some(state.clone()));
            while !state.engine.is_poisoned()
                && !state.engine.store().is_fenced()
                && !self.stopping()
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if self.stopping() {
                return;
            }
            self.set(None);
            tracing::warn!(
                "the engine stopped (a commit failed or the lease was lost): standing by"
            );
            drop(state);
        }
    }

    /// Waits for the lease, then rebuilds the ledger from the database;
    /// `None` if the process is shutting down.
    async fn become_writer(&self) -> Option<AppState> {
        let mut backoff = Duration::from_millis(500);
        while !self.stopping() {
            let (url, holder) = (self.url.clone(), self.holder.clone());
            let opened =
                tokio::task::spawn_blocking(move || PostgresStore::open(&url, &holder)).await;
            let error = match opened {
                Ok(Ok(store)) => {
                    let (config, admin_key) = (self.config.clone(), self.admin_key.clone());
                    let store: Arc<dyn Store> = Arc::new(store);
                    match tokio::task::spawn_blocking(move || {
                        crate::prepare(config, store, admin_key)
                    })
                    .await
                    {
                        Ok(Ok((state, generated, _))) => {
                            if let Some(secret) = generated {
                                println!(
                                    "purser: generated the first admin API key (shown once, store it now):\n{secret}"
                                );
                            }
                            return Some(state);
                        }
                        Ok(Err(crate::StartError::Recovery(
                            purser_store::RecoveryError::Damaged(report),
                        ))) => {
                            // The database will not heal by itself: the full
                            // report, then a long wait (an operator restores
                            // it, or accepts the loss with one writer).
                            tracing::error!(%report, "the database is damaged: not serving from it");
                            tokio::time::sleep(Duration::from_secs(60)).await;
                            continue;
                        }
                        Ok(Err(error)) => format!("{error:#}"),
                        Err(error) => error.to_string(),
                    }
                }
                Ok(Err(StoreError::LeaseHeld)) => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                Ok(Err(error)) => format!("{error:#}"),
                Err(error) => error.to_string(),
            };
            tracing::warn!(%error, "could not become the writer; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        None
    }
}

/// Routes to the writer's API while this process is the writer.
pub fn router(supervisor: Arc<Supervisor>) -> Router {
    Router::new().fallback(delegate).with_state(supervisor)
}

async fn delegate(State(supervisor): State<Arc<Supervisor>>, request: Request) -> Response {
    if let Some(router) = supervisor.router() {
        return match router.oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
    }
    match request.uri().path() {
        "/healthz" => json_response(200, br#"{"status":"ok","role":"standby"}"#.to_vec()),
        "/readyz" => json_response(503, br#"{"status":"standby"}"#.to_vec()),
        _ => {
            let mut error = ApiError::unavailable();
            error.message = "this purser is a standby; the writer serves the API".into();
            error.into_response()
        }
    }
}
