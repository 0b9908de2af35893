//! purser-server: the HTTP API of API.md over the engine.
//!
//! Owns HTTP only: the router and one module per resource ([`api`]), API
//! keys and their scopes, metrics, the OpenAPI document, the configuration
//! file, starting the app on a store, and the writer role on a shared
//! PostgreSQL database ([`supervisor`]). It mounts the customer portal
//! (`purser-portal`). It must not hold ledger rules or SQL: deciding is
//! `purser-core`'s, running and committing `purser-engine`'s, the JSON
//! `purser-wire`'s, storing `purser_store::Store`'s.

pub mod api;
pub mod auth;
pub mod config;
pub mod metrics;
pub mod openapi;
pub mod recharge;
pub mod serve;
pub mod stripe;
pub mod supervisor;
pub mod webhooks;

use std::sync::Arc;

use purser_core::Timestamp;
use purser_engine::{Engine, EngineConfig, OpenError, Options};
use purser_portal::Portal;
use purser_portal::session::{SIGNING_KEY_SETTING, Signer};
use purser_store::{ApiKeyRecord, Store};
use purser_store_postgres::PostgresStore;
use purser_store_sqlite::SqliteStore;
use purser_wire::JsonAnswers;
use tokio::net::TcpListener;

use crate::api::{AppState, Shared};
use crate::auth::{Keys, generate_secret, hash_secret, random_hex};
use crate::config::Config;
use crate::metrics::Metrics;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("store: {0}")]
    Store(#[from] purser_store::StoreError),
    /// Shown with its source (the recovery error) by `{:#}`.
    #[error("recovery")]
    Recovery(#[from] purser_store::RecoveryError),
    #[error("{0}")]
    Config(String),
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

impl From<OpenError> for StartError {
    fn from(error: OpenError) -> StartError {
        match error {
            OpenError::Store(error) => StartError::Store(error),
            OpenError::Recovery(error) => StartError::Recovery(error),
            OpenError::Setting(message) => StartError::Config(message),
        }
    }
}

/// A built server, ready to serve on its listener.
#[derive(Debug)]
pub struct App {
    listener: TcpListener,
    role: Role,
    limits: serve::Limits,
    /// The admin key generated on first start (shown once), if any.
    pub generated_admin_key: Option<String>,
    /// Journal entries replayed on start (after the snapshots).
    pub journal_entries: u64,
}

/// How this process serves.
#[derive(Debug)]
enum Role {
    /// The embedded store: this process is the only writer.
    Sole(AppState),
    /// PostgreSQL: the writer while it holds the lease, a standby otherwise.
    Supervised(Arc<supervisor::Supervisor>),
}

impl App {
    /// Opens the store, replays the journal, loads keys and idempotency
    /// records, and starts the engine. `admin_key` is `PURSER_ADMIN_KEY`.
    /// On PostgreSQL, a database whose lease another purser holds makes this
    /// one a standby, which takes over when that lease runs out.
    pub async fn build(
        config: Config,
        listener: TcpListener,
        admin_key: Option<String>,
    ) -> Result<App, StartError> {
        if let Some(url) = config.database_url.clone() {
            return App::build_supervised(config, listener, admin_key, url).await;
        }
        let limits = limits(&config);
        let data_dir = config.data_dir.clone();
        let store: Arc<dyn Store> = Arc::new(
            tokio::task::spawn_blocking(move || SqliteStore::open(&data_dir))
                .await
                .map_err(|e| StartError::Config(e.to_string()))??,
        );
        let (state, generated, entries) =
            tokio::task::spawn_blocking(move || prepare(config, store, admin_key))
                .await
                .map_err(|e| StartError::Config(e.to_string()))??;
        Ok(App {
            listener,
            role: Role::Sole(state),
            limits,
            generated_admin_key: generated,
            journal_entries: entries,
        })
    }

    async fn build_supervised(
        config: Config,
        listener: TcpListener,
        admin_key: Option<String>,
        url: String,
    ) -> Result<App, StartError> {
        let limits = limits(&config);
        let holder = format!("{}:{}", std::process::id(), random_hex(6));
        let opened = {
            let (url, holder) = (url.clone(), holder.clone());
            tokio::task::spawn_blocking(move || PostgresStore::open(&url, &holder))
                .await
                .map_err(|e| StartError::Config(e.to_string()))?
        };
        let (initial, generated, entries) = match opened {
            Ok(store) => {
                let (config, admin_key) = (config.clone(), admin_key.clone());
                let store: Arc<dyn Store> = Arc::new(store);
                let (state, generated, entries) =
                    tokio::task::spawn_blocking(move || prepare(config, store, admin_key))
                        .await
                        .map_err(|e| StartError::Config(e.to_string()))??;
                (Some(state), generated, entries)
            }
            Err(purser_store::StoreError::LeaseHeld) => {
                tracing::info!("another purser holds the writer lease: starting as a standby");
                (None, None, 0)
            }
            Err(error) => return Err(error.into()),
        };
        let supervisor = supervisor::Supervisor::start(config, admin_key, url, holder, initial);
        Ok(App {
            listener,
            role: Role::Supervised(supervisor),
            limits,
            generated_admin_key: generated,
            journal_entries: entries,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// The serving state, when this process is the writer.
    pub fn state(&self) -> Option<AppState> {
        match &self.role {
            Role::Sole(state) => Some(state.clone()),
            Role::Supervised(supervisor) => supervisor.active(),
        }
    }

    /// Serves until `shutdown` completes.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        match self.role {
            Role::Sole(state) => {
                serve::serve(self.listener, api::router(state), self.limits, shutdown).await
            }
            Role::Supervised(supervisor) => {
                let router = supervisor::router(supervisor.clone());
                let served = serve::serve(self.listener, router, self.limits, shutdown).await;
                supervisor.shutdown().await;
                served
            }
        }
    }
}

fn limits(config: &Config) -> serve::Limits {
    serve::Limits {
        max_connections: config.max_connections,
        header_timeout: std::time::Duration::from_secs(config.header_timeout_seconds),
    }
}

pub(crate) fn prepare(
    config: Config,
    store: Arc<dyn Store>,
    admin_key: Option<String>,
) -> Result<(AppState, Option<String>, u64), StartError> {
    let mut routes = openapi::route_paths();
    routes.extend(purser_portal::ROUTE_PATHS);
    let metrics = Arc::new(Metrics::new(&routes));
    let options = Options {
        config: EngineConfig {
            shards: config.shards,
            partitions: config.partitions,
            queue_capacity: config.queue_capacity,
            batch_limit: config.batch_limit,
            idempotency_retention_seconds: config.idempotency_retention_seconds,
            idempotency_cache_keys: config.idempotency_cache_keys,
            idempotency_purge_interval: std::time::Duration::from_secs(
                config.idempotency_purge_interval_seconds,
            ),
            snapshot_every_entries: config.snapshot_every_entries,
            event_retention_seconds: config.event_retention_days * 86_400,
            request_timeout: std::time::Duration::from_secs(config.request_timeout_seconds),
            list_reads_per_second: config.list_reads_per_second,
            list_reads_burst: config.list_reads_burst,
            portal_actions_per_minute: config.portal_actions_per_minute,
            portal_actions_burst: config.portal_actions_burst,
        },
        test_clock: config.test_clock,
        accept_loss: config.accept_loss,
        catalog: config.catalog.clone(),
        render: Arc::new(JsonAnswers),
        observer: metrics.clone(),
    };
    let (engine, entries) = Engine::open(store.clone(), options)?;
    let (keys, generated) = load_keys(&*store, admin_key, engine.clock().now())?;
    let (payments, stripe) = if config.payment_provider == "stripe" {
        let stripe =
            stripe::provider(&engine, &config.stripe_api_base).map_err(StartError::Config)?;
        (
            stripe.clone() as Arc<dyn purser_portal::payments::PaymentProvider>,
            Some(stripe),
        )
    } else {
        let payments =
            purser_portal::payments::provider(&config.payment_provider).ok_or_else(|| {
                StartError::Config(format!(
                    "unknown payment provider {:?}",
                    config.payment_provider
                ))
            })?;
        (payments, None)
    };
    let portal = Arc::new(Portal {
        engine: engine.clone(),
        signer: portal_signer(&*store)?,
        public_url: config.public_url.clone(),
        session_ttl_seconds: config.portal_session_ttl_seconds,
        payments,
        tier_changes: config.portal_tier_changes,
        exports: purser_portal::export::Exports::default(),
    });
    let webhooks = Arc::new(
        webhooks::Webhooks::start(engine.clone(), config.webhooks.clone())
            .map_err(StartError::Config)?,
    );
    let recharger = Arc::new(recharge::Recharger::start(
        engine.clone(),
        portal.payments.clone(),
    ));
    let shared = Shared {
        recharger,
        engine,
        keys,
        metrics,
        portal,
        webhooks,
        stripe,
        stripe_webhook_secret: std::env::var("PURSER_STRIPE_WEBHOOK_SECRET")
            .ok()
            .filter(|secret| !secret.is_empty())
            .map(api::Secret::new),
        body_timeout: std::time::Duration::from_secs(config.body_timeout_seconds),
        readiness: api::Readiness::default(),
    };
    Ok((AppState(Arc::new(shared)), generated, entries))
}

/// The portal's signing key: made on first start and kept in the store, so
/// links survive restarts and work on whichever node is the writer.
fn portal_signer(store: &dyn Store) -> Result<Signer, StartError> {
    if let Some(text) = store.setting(SIGNING_KEY_SETTING)? {
        return Signer::from_hex(&text).ok_or_else(|| {
            StartError::Config("the stored portal signing key is malformed".into())
        });
    }
    let key = random_hex(32);
    store.set_setting(SIGNING_KEY_SETTING, &key)?;
    Signer::from_hex(&key)
        .ok_or_else(|| StartError::Config("a generated portal signing key is malformed".into()))
}
/// Loads API keys; makes sure `PURSER_ADMIN_KEY` is one; on a first start
/// without it, generates an admin key to print once.
fn load_keys(
    store: &dyn Store,
    admin_key: Option<String>,
    now: Timestamp,
) -> Result<(Keys, Option<String>), StartError> {
    let records = store.api_keys()?;
    let keys = Keys::load(&records);
    let mut generated = None;
    let wanted = match admin_key {
        Some(secret) if !keys.contains_secret(&secret) => Some(secret),
        Some(_) => None,
        None if records.is_empty() => {
            let secret = generate_secret();
            generated = Some(secret.clone());
            Some(secret)
        }
        None => None,
    };
    if let Some(secret) = wanted {
        let record = ApiKeyRecord {
            id: format!("key_{}", random_hex(12)),
            secret_hash: hash_secret(&secret),
            scopes: vec!["admin".into()],
            created_at: now,
            revoked_at: None,
        };
        store.insert_api_key(&record)?;
        keys.add(&record);
    }
    Ok((keys, generated))
}
