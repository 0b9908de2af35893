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

use super::{Attempt, Endpoint, Inner, Settings, lock, sign, timestamp, wall_micros};

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
        // No proxy either: a proxy would resolve the name itself.
        builder = builder.dns_resolver(Arc::new(PublicOnly)).no_proxy();
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
            let [a, b, c, _] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || a >= 240
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0 && c == 0)
                || (a == 198 && (b == 18 || b == 19)))
        }
        IpAddr::V6(v6) => {
            let segments = v6.segments();
            // Addresses that carry an IPv4 one: mapped, compatible, NAT64
            // (64:ff9b::/96) and 6to4 (2002::/16).
            let octets = v6.octets();
            let embedded = if let Some(v4) = v6.to_ipv4_mapped() {
                Some(v4)
            } else if segments[..6] == [0; 6] || segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                Some(std::net::Ipv4Addr::new(
                    octets[12], octets[13], octets[14], octets[15],
                ))
            } else if segments[0] == 0x2002 {
                Some(std::net::Ipv4Addr::new(
                    octets[2], octets[3], octets[4], octets[5],
                ))
            } else {
                None
            };
            if let Some(v4) = embedded {
                return is_public(IpAddr::V4(v4));
            }
            let first = segments[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || (first & 0xffc0) == 0xfec0
                || (first == 0x2001 && segments[1] == 0x0db8))
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

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
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
    // Events not yet done (delivered, given up or not subscribed to), in
    // outbox order: at most `window` of them.
    let mut window: VecDeque<Item> = VecDeque::new();
    let mut flights: JoinSet<(u64, Outcome)> = JoinSet::new();
    let mut flying: HashMap<tokio::task::Id, u64> = HashMap::new();
    let mut committed = inner.engine.events_committed();
    let mut stop = inner.stop.clone();
    let mut endpoint_changes = inner.changed.subscribe();
    let mut stored_cursor = cursor;
    let mut last_store = Instant::now();
    let mut failing_since = endpoint.failing_since;
    let mut stored_failing = failing_since;
    // Whether the outbox may hold more than was read (set by a commit with
    // events, a full page, and now and then); cleared by a short page.
    let mut more = true;
    // After a failed read of the outbox, when to read again.
    let mut read_again: Option<Instant> = None;
    loop {
        let Some(endpoint) = current(&inner, &id) else {
            flights.abort_all();
            return;
        };
        if !endpoint.enabled() {
            break;
        }
        // Fill the window from the outbox.
        let now = Instant::now();
        if more && window.len() < settings.window && read_again.is_none_or(|at| at <= now) {
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
                    read_again = None;
                    more = events.len() == limit;
                    for event in events {
                        fetched = event.position;
                        if endpoint.wants(event.event.kind) {
                            window.push_back(Item {
                                event,
                                failures: 0,
                                next_at: now,
                                state: State::Waiting,
                            });
                        }
                    }
                }
                Err(error) => {
                    // A store that does not answer, or a damaged event
                    // (refused, never sent): tried again in a while.
                    if read_again.is_none() {
                        tracing::warn!(endpoint = %id, ?error, "reading the outbox failed");
                    }
                    read_again = Some(now + Duration::from_secs(5));
                }
            }
        }
        // Start the first waiting event of each account, when due; the
        // earliest of those not yet due is what to wake for.
        let mut blocked: HashSet<&str> = HashSet::new();
        let mut starts = Vec::new();
        let mut next_retry: Option<Instant> = None;
        for item in &window {
            if !blocked.insert(item.event.event.account.as_str()) || item.state != State::Waiting {
                continue;
            }
            if item.next_at > now {
                next_retry = Some(next_retry.map_or(item.next_at, |t| t.min(item.next_at)));
            } else if flights.len() + starts.len() < settings.concurrency {
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
            let task = flights.spawn(async move {
                let outcome = attempt(&inner, &endpoint, &event, failures).await;
                (event.position, outcome)
            });
            flying.insert(task.id(), position);
        }
        // Everything before the first event not done is done.
        window.retain(|item| item.state != State::Done);
        cursor = window
            .front()
            .map_or(fetched, |item| item.event.position - 1)
            .max(cursor);
        if (cursor != stored_cursor || failing_since != stored_failing)
            && last_store.elapsed() >= Duration::from_secs(1)
        {
            store_progress(&inner, &id, cursor, failing_since).await;
            stored_cursor = cursor;
            stored_failing = failing_since;
            last_store = Instant::now();
        }
        // Wait for a delivery, a retry falling due, new events, or a change.
        let room = window.len() < settings.window;
        let pending_store = cursor != stored_cursor || failing_since != stored_failing;
        let wake = match (next_retry, read_again) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        tokio::select! {
            Some(done) = flights.join_next_with_id(), if !flights.is_empty() => {
                let (task, result) = match done {
                    Ok((task, result)) => (task, Some(result)),
                    Err(error) => (error.id(), None),
                };
                let Some(position) = flying.remove(&task) else { continue };
                let Some(item) = window.iter_mut().find(|item| item.event.position == position) else {
                    continue;
                };
                // A delivery that panicked counts as failed.
                match result.map_or(Outcome::Failed, |(_, outcome)| outcome) {
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
                        // On the engine's clock (a test clock moves it).
                        let now = inner.engine.clock().now().micros();
                        let since = *failing_since.get_or_insert(now);
                        let failed_for = Duration::from_micros((now - since).max(0) as u64);
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
            () = sleep_until(wake) => {}
            _ = committed.changed(), if room => more = true,
            _ = endpoint_changes.changed() => {}
            () = tokio::time::sleep(Duration::from_secs(1)), if pending_store => {}
            // The outbox is also looked at now and then (a commit made
            // before this task subscribed).
            () = tokio::time::sleep(Duration::from_secs(5)) => more = true,
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
            .map(|delay| timestamp(wall_micros() + delay.as_micros() as i64)),
        _ => None,
    };
    inner
        .record(Attempt {
            id: 0,
            endpoint: endpoint.id.clone(),
            event: event.event.id.format(),
            at: timestamp(at),
            status: result.as_ref().ok().copied(),
            error: result.err(),
            duration_ms: started.elapsed().as_millis() as u64,
            next_attempt,
        })
        .await;
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
    // The timestamp is the wall clock's (receivers check it against
    // theirs); which secrets still sign follows the engine's clock.
    let secrets = endpoint.secrets(inner.engine.clock().now().micros());
    let signature = sign::header(&secrets, &id, timestamp, &body);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "192.0.0.8",
            "198.18.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fe80::1",
            "fec0::1",
            "::ffff:10.0.0.1",
            "::10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:a9fe:a9fe::1",
            "2001:db8::1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["1.1.1.1", "8.8.8.8", "2606:4700::1111", "64:ff9b::101:101"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }
}
