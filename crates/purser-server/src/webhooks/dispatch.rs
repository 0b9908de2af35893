//! Delivering the outbox. One task per enabled endpoint keeps a window of
//! events after the endpoint's cursor (at most `window`), delivers the
//! first undelivered event of each account in it (at most `concurrency` at
//! once), retries failures on the schedule, and moves the cursor over the
//! events that are done (delivered, given up, or not subscribed to). So per
//! account, a later event never goes before an earlier one has succeeded or
//! been given up; an account whose event keeps failing holds back only its
//! own events, until the window is full of them. The cursor is stored (at
//! most once a second): after a restart, the events after it are delivered
//! again (at least once; same `webhook-id`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use purser_store::{EventQuery, StoredEvent};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{Attempt, Endpoint, Inner, Settings, lock, sign, wall_micros};

/// The HTTP client of deliveries: no redirects, the delivery timeout, and
/// (unless private networks are allowed) a resolver that refuses them.
pub(crate) fn client(settings: &Settings) -> Result<reqwest::Client, String> {
    // Installed once per process; a second call finds one and is ignored.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(settings.timeout)
        .connect_timeout(settings.timeout)
        .pool_max_idle_per_host(settings.concurrency)
        .user_agent(concat!("purser-webhooks/", env!("CARGO_PKG_VERSION")));
    if !settings.allow_private_networks {
        builder = builder.dns_resolver(Arc::new(PublicOnly));
    }
    builder.build().map_err(|e| format!("webhook client: {e}"))
}

/// Resolves names to public addresses only.
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|addr| is_public(addr.ip()))
                .collect();
            if found.is_empty() {
                return Err(format!("{host} has no public address").into());
            }
            Ok(Box::new(found.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Whether an address is on the public internet (not loopback, private,
/// link-local, shared, unspecified, multicast or documentation space).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b)))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
    }
}

/// Starts a dispatcher for every enabled endpoint, and again whenever one
/// is enabled or created; stops them all when the app goes.
pub(crate) async fn supervise(inner: Arc<Inner>) {
    let mut running: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    let mut changed = inner.changed.subscribe();
    let mut stop = inner.stop.clone();
    loop {
        running.retain(|_, task| !task.is_finished());
        let enabled: Vec<String> = lock(&inner.endpoints)
            .iter()
            .filter(|e| e.enabled())
            .map(|e| e.id.clone())
            .collect();
        for id in enabled {
            running
                .entry(id.clone())
                .or_insert_with(|| tokio::spawn(run_endpoint(inner.clone(), id)));
        }
        tokio::select! {
            _ = changed.changed() => {}
            _ = stop.changed() => break,
            // A dispatcher that ended (disabled) is noticed here too.
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
    for (_, task) in running {
        task.abort();
    }
}

/// An event in an endpoint's window.
struct Item {
    event: StoredEvent,
    /// Failed attempts so far.
    failures: usize,
    next_at: Instant,
    state: State,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Waiting,
    InFlight,
    Done,
}

/// How one delivery went.
enum Outcome {
    Delivered,
    /// 410: the endpoint is gone for good.
    Gone,
    Failed,
}

async fn run_endpoint(inner: Arc<Inner>, id: String) {
    let settings = inner.settings.clone();
    let Some(endpoint) = current(&inner, &id) else {
        return;
    };
    let mut cursor = endpoint.cursor;
    let mut fetched = cursor;
    let mut window: VecDeque<Item> = VecDeque::new();
    let mut flights: JoinSet<(u64, Outcome)> = JoinSet::new();
    let mut committed = inner.engine.events_committed();
    let mut stop = inner.stop.clone();
    let mut endpoint_changes = inner.changed.subscribe();
    let mut stored_cursor = cursor;
    let mut last_store = Instant::now();
    let mut failing_since = endpoint.failing_since;
    let mut stored_failing = failing_since;
    loop {
        let Some(endpoint) = current(&inner, &id) else {
            return;
        };
        if !endpoint.enabled() {
            break;
        }
        // Fill the window from the outbox.
        if window.len() < settings.window {
            let after = fetched;
            let limit = settings.window - window.len();
            let read = inner
                .engine
                .query(move |store| {
                    store.events(&EventQuery {
                        account: None,
                        kind: None,
                        before: None,
                        after: Some(after),
                        limit,
                    })
                })
                .await;
            match read {
                Ok(events) => {
                    let now = Instant::now();
                    for event in events {
                        fetched = event.position;
                        let wanted = endpoint.wants(event.event.kind);
                        window.push_back(Item {
                            event,
                            failures: 0,
                            next_at: now,
                            state: if wanted { State::Waiting } else { State::Done },
                        });
                    }
                }
                Err(error) => {
                    tracing::warn!(endpoint = %id, ?error, "reading the outbox failed");
                }
            }
        }
        // Start the first waiting event of each account, when due.
        let now = Instant::now();
        let mut blocked: HashSet<&str> = HashSet::new();
        let mut starts = Vec::new();
        for item in &window {
            if item.state == State::Done {
                continue;
            }
            if !blocked.insert(item.event.event.account.as_str()) {
                continue;
            }
            if item.state == State::Waiting
                && item.next_at <= now
                && flights.len() + starts.len() < settings.concurrency
            {
                starts.push(item.event.position);
            }
        }
        for position in starts {
            let item = window
                .iter_mut()
                .find(|item| item.event.position == position)
                .expect("in the window");
            item.state = State::InFlight;
            let (inner, endpoint, event) = (inner.clone(), endpoint.clone(), item.event.clone());
            let failures = item.failures;
            flights.spawn(async move {
                let outcome = attempt(&inner, &endpoint, &event, failures).await;
                (event.position, outcome)
            });
        }
        // Move the cursor over what is done.
        while window.front().is_some_and(|item| item.state == State::Done) {
            cursor = window.pop_front().expect("a front").event.position;
        }
        if window.is_empty() {
            cursor = cursor.max(fetched);
        }
        if (cursor != stored_cursor || failing_since != stored_failing)
            && last_store.elapsed() >= Duration::from_secs(1)
        {
            store_progress(&inner, &id, cursor, failing_since).await;
            stored_cursor = cursor;
            stored_failing = failing_since;
            last_store = Instant::now();
        }
        // Wait for a delivery, a retry falling due, new events, or a change.
        let next_retry = window
            .iter()
            .filter(|item| item.state == State::Waiting)
            .map(|item| item.next_at)
            .min();
        let room = window.len() < settings.window;
        let pending_store = cursor != stored_cursor || failing_since != stored_failing;
        tokio::select! {
            Some(done) = flights.join_next(), if !flights.is_empty() => {
                let Ok((position, outcome)) = done else { continue };
                let Some(item) = window.iter_mut().find(|item| item.event.position == position) else {
                    continue;
                };
                match outcome {
                    Outcome::Delivered => {
                        item.state = State::Done;
                        failing_since = None;
                    }
                    Outcome::Gone => {
                        item.state = State::Waiting;
                        disable(&inner, &id, "gone", cursor).await;
                        break;
                    }
                    Outcome::Failed => {
                        item.failures += 1;
                        let since = *failing_since.get_or_insert_with(wall_micros);
                        let failed_for = Duration::from_micros((wall_micros() - since).max(0) as u64);
                        match settings.retry_schedule.get(item.failures - 1) {
                            Some(delay) => {
                                item.state = State::Waiting;
                                item.next_at = Instant::now() + jittered(*delay);
                            }
                            // Given up: the next event of its account may go.
                            None => item.state = State::Done,
                        }
                        if failed_for >= settings.disable_after {
                            disable(&inner, &id, "failing", cursor).await;
                            break;
                        }
                    }
                }
            }
            () = sleep_until(next_retry) => {}
            _ = committed.changed(), if room => {}
            _ = endpoint_changes.changed() => {}
            () = tokio::time::sleep(Duration::from_secs(1)), if pending_store => {}
            // New events are also looked for now and then (a commit made
            // before this task subscribed).
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = stop.changed() => {
                flights.abort_all();
                return;
            }
        }
    }
    flights.abort_all();
    store_progress(&inner, &id, cursor, failing_since).await;
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A delay ±10 % (integer arithmetic on microseconds).
fn jittered(delay: Duration) -> Duration {
    let mut bytes = [0u8; 2];
    let _ = getrandom::fill(&mut bytes);
    let per_mille = 900 + u128::from(u16::from_le_bytes(bytes) % 201);
    let micros = delay.as_micros() * per_mille / 1000;
    Duration::from_micros(u64::try_from(micros).unwrap_or(u64::MAX))
}

fn current(inner: &Inner, id: &str) -> Option<Endpoint> {
    lock(&inner.endpoints).iter().find(|e| e.id == id).cloned()
}

async fn store_progress(inner: &Inner, id: &str, cursor: u64, failing_since: Option<i64>) {
    let stored = inner
        .change(|endpoints| {
            if let Some(endpoint) = endpoints.iter_mut().find(|e| e.id == id) {
                endpoint.cursor = endpoint.cursor.max(cursor);
                endpoint.failing_since = failing_since;
            }
            Ok(())
        })
        .await;
    if let Err(error) = stored {
        tracing::warn!(endpoint = %id, %error, "storing webhook progress failed");
    }
}

async fn disable(inner: &Inner, id: &str, reason: &str, cursor: u64) {
    tracing::warn!(endpoint = %id, reason, "webhook endpoint disabled");
    let stored = inner
        .change(|endpoints| {
            if let Some(endpoint) = endpoints.iter_mut().find(|e| e.id == id) {
                endpoint.status = "disabled".into();
                endpoint.disabled_reason = Some(reason.into());
                endpoint.cursor = endpoint.cursor.max(cursor);
            }
            Ok(())
        })
        .await;
    if let Err(error) = stored {
        tracing::warn!(endpoint = %id, %error, "storing a disabled webhook endpoint failed");
    }
}

/// One attempt, recorded with its outcome and (on failure) when the next
/// one is due.
async fn attempt(
    inner: &Inner,
    endpoint: &Endpoint,
    event: &StoredEvent,
    failures: usize,
) -> Outcome {
    let started = std::time::Instant::now();
    let at = wall_micros();
    let result = post(inner, endpoint, event).await;
    let outcome = match &result {
        Ok(status) if (200..300).contains(status) => Outcome::Delivered,
        Ok(410) => Outcome::Gone,
        _ => Outcome::Failed,
    };
    let next_attempt = match outcome {
        Outcome::Failed => inner
            .settings
            .retry_schedule
            .get(failures)
            .map(|delay| wall_micros() + delay.as_micros() as i64),
        _ => None,
    };
    inner.record(
        &endpoint.id,
        Attempt {
            event: event.event.id.format(),
            at,
            status: result.as_ref().ok().copied(),
            error: result.err(),
            duration_ms: started.elapsed().as_millis() as u64,
            next_attempt,
        },
    );
    outcome
}

/// A resend: one attempt, recorded, outside the endpoint's queue.
pub(crate) async fn deliver_once(inner: &Inner, endpoint: &Endpoint, event: &StoredEvent) {
    attempt(inner, endpoint, event, usize::MAX).await;
}

/// POSTs an event; the status, or what went wrong.
async fn post(inner: &Inner, endpoint: &Endpoint, event: &StoredEvent) -> Result<u16, String> {
    let url = reqwest::Url::parse(&endpoint.url).map_err(|_| "invalid url".to_owned())?;
    if !inner.settings.allow_private_networks
        && let Some(host) = url.host_str()
        && let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>()
        && !is_public(ip)
    {
        return Err("the endpoint's address is on a private network".into());
    }
    let body = purser_wire::events::webhook_payload(&event.event.body)
        .ok_or_else(|| "the stored event is not an event object".to_owned())?;
    let id = event.event.id.format();
    let timestamp = wall_micros() / 1_000_000;
    let signature = sign::header(&endpoint.secrets(wall_micros()), &id, timestamp, &body);
    let response = inner
        .client
        .post(url)
        .header("content-type", "application/json")
        .header("webhook-id", &id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await
        .map_err(|error| {
            if error.is_timeout() {
                "timeout".to_owned()
            } else if error.is_connect() {
                "connection failed".to_owned()
            } else {
                "request failed".to_owned()
            }
        })?;
    Ok(response.status().as_u16())
}
