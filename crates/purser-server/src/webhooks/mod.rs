//! Webhooks: the endpoints the operator registers and the dispatcher that
//! delivers the outbox to them (API.md "Events and webhooks").
//!
//! Endpoints (with their secrets and delivery cursors) are one store
//! setting, so they live in the same database as the outbox and move with
//! it on failover; only the writer runs a dispatcher. Each enabled endpoint
//! has a task that reads the outbox after its cursor, a window at a time,
//! and delivers it: at least once, in order per account, retried on a
//! schedule (see [`dispatch`]).

pub mod dispatch;
pub mod sign;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use purser_core::{EventType, Timestamp};
use purser_engine::Engine;
use serde::{Deserialize, Serialize};

/// The store setting that holds every endpoint.
pub const ENDPOINTS_SETTING: &str = "webhook_endpoints";

/// The most endpoints a server has.
pub const MAX_ENDPOINTS: usize = 16;

/// How long a rotated secret keeps signing beside the new one.
pub const ROTATION_OVERLAP: Duration = Duration::from_secs(24 * 3600);

/// `[webhooks]` of `purser.toml`.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Delay before each retry; an event is given up after the last.
    pub retry_schedule: Vec<Duration>,
    /// A delivery that takes longer failed.
    pub timeout: Duration,
    /// Whether endpoints may be on loopback and private networks (the
    /// operator's backend usually is).
    pub allow_private_networks: bool,
    /// Deliveries in flight per endpoint.
    pub concurrency: usize,
    /// An endpoint that has failed for this long is disabled.
    pub disable_after: Duration,
    /// Events read from the outbox at a time per endpoint.
    pub window: usize,
}

impl Default for Settings {
    fn default() -> Settings {
        let hours = |h: u64| Duration::from_secs(h * 3600);
        Settings {
            retry_schedule: vec![
                Duration::from_secs(5),
                Duration::from_secs(5 * 60),
                Duration::from_secs(30 * 60),
                hours(2),
                hours(5),
                hours(10),
                hours(14),
                hours(20),
                hours(24),
            ],
            timeout: Duration::from_secs(10),
            allow_private_networks: true,
            concurrency: 16,
            disable_after: hours(72),
            window: 1_000,
        }
    }
}

/// An endpoint as stored. Its `Debug` leaves the secrets out.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Endpoint {
    pub id: String,
    pub url: String,
    /// Event types, or `*` for all.
    pub events: Vec<String>,
    pub description: Option<String>,
    /// `enabled` or `disabled`.
    pub status: String,
    pub secret: String,
    /// The secret before the last rotation and until when it still signs
    /// (µs since the epoch, the engine's clock).
    pub previous_secret: Option<(String, i64)>,
    pub created_at: i64,
    /// Every event at or before this outbox position is delivered or given up.
    pub cursor: u64,
    /// Since when (µs, the engine's clock) deliveries have failed without a
    /// success.
    pub failing_since: Option<i64>,
    /// Why the endpoint was disabled by purser (`gone`, `failing`).
    pub disabled_reason: Option<String>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("id", &self.id)
            .field("url", &self.url)
            .field("events", &self.events)
            .field("status", &self.status)
            .field("cursor", &self.cursor)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    pub fn wants(&self, kind: EventType) -> bool {
        self.events.iter().any(|e| e == "*" || e == kind.name())
    }

    pub fn enabled(&self) -> bool {
        self.status == "enabled"
    }

    /// The secrets that sign now: the current one, and the previous one
    /// while its overlap lasts.
    pub fn secrets(&self, now_micros: i64) -> Vec<&str> {
        let mut secrets = vec![self.secret.as_str()];
        if let Some((previous, until)) = &self.previous_secret
            && *until > now_micros
        {
            secrets.push(previous);
        }
        secrets
    }
}

/// One delivery attempt, as the store keeps it.
pub use purser_store::DeliveryRecord as Attempt;

/// The endpoints and their dispatchers.
#[derive(Debug)]
pub struct Webhooks {
    pub(crate) inner: Arc<Inner>,
    /// Dropped with the app: every dispatcher stops.
    _stop: tokio::sync::watch::Sender<bool>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub engine: Engine,
    pub settings: Settings,
    pub endpoints: Mutex<Vec<Endpoint>>,
    /// Serializes writes of the endpoints setting.
    pub persist: tokio::sync::Mutex<()>,
    /// Bumped whenever an endpoint changes.
    pub changed: tokio::sync::watch::Sender<u64>,
    pub stop: tokio::sync::watch::Receiver<bool>,
    pub client: reqwest::Client,
}

/// Real time in µs (signatures and retry bookkeeping follow the wall
/// clock, not a test clock: receivers check timestamps against theirs).
pub fn wall_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// What a change to an endpoint may fail with.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("{1}")]
    Invalid(&'static str, String),
    #[error("no such webhook endpoint")]
    NotFound,
    #[error("at most {MAX_ENDPOINTS} webhook endpoints")]
    TooMany,
    #[error("store: {0}")]
    Store(String),
}

impl Webhooks {
    /// Loads the endpoints and starts a dispatcher for each enabled one
    /// (on the current tokio runtime).
    pub fn start(engine: Engine, settings: Settings) -> Result<Webhooks, String> {
        let stored = engine
            .store()
            .setting(ENDPOINTS_SETTING)
            .map_err(|e| e.to_string())?;
        let endpoints: Vec<Endpoint> = match stored {
            None => Vec::new(),
            Some(text) => serde_json::from_str(&text)
                .map_err(|e| format!("the stored webhook endpoints are unreadable: {e}"))?,
        };
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let client = dispatch::client(&settings)?;
        let inner = Arc::new(Inner {
            engine,
            settings,
            endpoints: Mutex::new(endpoints),
            persist: tokio::sync::Mutex::new(()),
            changed: tokio::sync::watch::Sender::new(0),
            stop: stop_rx,
            client,
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(dispatch::supervise(inner.clone()));
        }
        Ok(Webhooks {
            inner,
            _stop: stop_tx,
        })
    }

    /// Now, on the engine's clock (rotations and failing endpoints follow
    /// a test clock).
    pub fn now_micros(&self) -> i64 {
        self.inner.engine.clock().now().micros()
    }

    /// [`check_url`] under this server's settings.
    pub fn check_url(&self, url: &str) -> Result<(), EndpointError> {
        check_url(url, self.inner.settings.allow_private_networks)
    }

    pub fn list(&self) -> Vec<Endpoint> {
        lock(&self.inner.endpoints).clone()
    }

    pub fn get(&self, id: &str) -> Option<Endpoint> {
        lock(&self.inner.endpoints)
            .iter()
            .find(|e| e.id == id)
            .cloned()
    }

    /// An endpoint's delivery attempts, newest first, before the one
    /// numbered `before`.
    pub async fn attempts(
        &self,
        id: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Attempt>, EndpointError> {
        let id = id.to_owned();
        self.inner
            .engine
            .query(move |store| store.deliveries(&id, before, limit))
            .await
            .map_err(|error| {
                tracing::error!(?error, "reading webhook deliveries failed");
                EndpointError::Store("the store could not answer".into())
            })
    }

    /// A new endpoint: it receives events committed from now on.
    pub async fn create(
        &self,
        url: String,
        events: Vec<String>,
        description: Option<String>,
    ) -> Result<Endpoint, EndpointError> {
        self.check_url(&url)?;
        let events = check_events(events)?;
        let engine = self.inner.engine.clone();
        let cursor = engine
            .query(|store| store.last_event())
            .await
            .map_err(|error| {
                tracing::error!(?error, "reading the outbox's end failed");
                EndpointError::Store("the store could not answer".into())
            })?;
        let endpoint = Endpoint {
            id: format!("we_{}", crate::auth::random_hex(12)),
            url,
            events,
            description,
            status: "enabled".into(),
            secret: sign::new_secret(),
            previous_secret: None,
            created_at: engine.clock().now().micros(),
            cursor,
            failing_since: None,
            disabled_reason: None,
        };
        self.change(|endpoints| {
            if endpoints.len() >= MAX_ENDPOINTS {
                return Err(EndpointError::TooMany);
            }
            endpoints.push(endpoint.clone());
            Ok(())
        })
        .await?;
        Ok(endpoint)
    }

    /// Applies `update` to an endpoint, stored before it is answered.
    pub async fn update(
        &self,
        id: &str,
        update: impl FnOnce(&mut Endpoint) -> Result<(), EndpointError>,
    ) -> Result<Endpoint, EndpointError> {
        let mut changed = None;
        self.change(|endpoints| {
            let endpoint = endpoints
                .iter_mut()
                .find(|e| e.id == id)
                .ok_or(EndpointError::NotFound)?;
            update(endpoint)?;
            changed = Some(endpoint.clone());
            Ok(())
        })
        .await?;
        changed.ok_or(EndpointError::NotFound)
    }

    pub async fn delete(&self, id: &str) -> Result<Endpoint, EndpointError> {
        let mut removed = None;
        self.change(|endpoints| {
            let index = endpoints
                .iter()
                .position(|e| e.id == id)
                .ok_or(EndpointError::NotFound)?;
            removed = Some(endpoints.remove(index));
            Ok(())
        })
        .await?;
        removed.ok_or(EndpointError::NotFound)
    }

    /// Sends one stored event to one endpoint now, outside its queue.
    pub async fn resend(&self, endpoint: &Endpoint, event: &purser_store::StoredEvent) {
        dispatch::deliver_once(&self.inner, endpoint, event).await;
    }

    async fn change(
        &self,
        change: impl FnOnce(&mut Vec<Endpoint>) -> Result<(), EndpointError>,
    ) -> Result<(), EndpointError> {
        self.inner.change(change).await
    }
}

impl Inner {
    /// Changes the endpoints and stores them before returning; on a store
    /// failure memory is put back.
    pub(crate) async fn change(
        &self,
        change: impl FnOnce(&mut Vec<Endpoint>) -> Result<(), EndpointError>,
    ) -> Result<(), EndpointError> {
        let _persisting = self.persist.lock().await;
        let (before, text) = {
            let mut endpoints = lock(&self.endpoints);
            let before = endpoints.clone();
            change(&mut endpoints)?;
            let text = serde_json::to_string(&*endpoints).expect("endpoints serialize");
            (before, text)
        };
        let stored = self
            .engine
            .query(move |store| store.set_setting(ENDPOINTS_SETTING, &text))
            .await;
        if let Err(error) = stored {
            *lock(&self.endpoints) = before;
            tracing::error!(?error, "storing the webhook endpoints failed");
            return Err(EndpointError::Store(
                "the webhook endpoints could not be stored".into(),
            ));
        }
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
        Ok(())
    }

    /// Keeps an attempt in the store (not for an endpoint deleted while it
    /// ran); a failure to keep it is logged, never fatal to delivery.
    pub(crate) async fn record(&self, attempt: Attempt) {
        if !lock(&self.endpoints)
            .iter()
            .any(|e| e.id == attempt.endpoint)
        {
            return;
        }
        let kept = self
            .engine
            .query(move |store| store.record_delivery(&attempt))
            .await;
        if let Err(error) = kept {
            tracing::warn!(?error, "keeping a webhook delivery attempt failed");
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// An endpoint URL: absolute http(s), at most 2,048 characters, no
/// credentials, no spaces or control characters, a port other than 0; and,
/// when private networks are refused, not an address on one (a name is
/// checked when it is resolved, at each delivery).
pub fn check_url(url: &str, allow_private_networks: bool) -> Result<(), EndpointError> {
    let invalid = |why: &str| EndpointError::Invalid("url", why.into());
    if url.len() > 2_048 {
        return Err(invalid("url must be at most 2048 characters"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("url must not hold spaces or control characters"));
    }
    let parsed = reqwest::Url::parse(url).map_err(|_| invalid("url must be an absolute URL"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(invalid("url must be an http or https URL"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(invalid("url must not carry credentials"));
    }
    if parsed.port() == Some(0) {
        return Err(invalid("url must not use port 0"));
    }
    if !allow_private_networks {
        let address = parsed.host_str().and_then(|host| {
            host.trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .ok()
        });
        if address.is_some_and(|ip| !dispatch::is_public(ip)) {
            return Err(invalid(
                "url is on a private network (webhooks.allow_private_networks is false)",
            ));
        }
    }
    Ok(())
}

/// Event types an endpoint subscribes to: `*` or known types, 1-50.
pub fn check_events(events: Vec<String>) -> Result<Vec<String>, EndpointError> {
    if events.is_empty() || events.len() > 50 {
        return Err(EndpointError::Invalid(
            "events",
            "events must hold 1 to 50 event types (or \"*\")".into(),
        ));
    }
    for event in &events {
        if event != "*" && EventType::parse(event).is_none() {
            return Err(EndpointError::Invalid(
                "events",
                format!("unknown event type {event}"),
            ));
        }
    }
    let mut events = events;
    events.dedup();
    Ok(events)
}

/// `Timestamp` of wall-clock µs.
pub fn timestamp(micros: i64) -> Timestamp {
    Timestamp::from_micros(micros)
}
