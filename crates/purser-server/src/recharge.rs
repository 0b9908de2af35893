//! The recharger: asks the payment provider to charge the saved payment
//! method for each purchase auto-recharge made (API.md "Alerts and
//! auto-recharge").
//!
//! The ledger makes the purchase in the same commit as the command that
//! crossed the threshold; this task follows the outbox for their
//! `purchase.created` events (only on the writer, like webhook delivery),
//! charges through the provider, and settles the purchase with what it
//! answered: paid (complete), declined (fail, with the reason), under way
//! (the provider's webhook settles it), or left to the operator (`manual`).
//!
//! A purchase is charged only while it is still pending (read just before),
//! so one canceled or settled meanwhile is never charged. The cursor is kept
//! in the store after every event; after a restart or a failover the event
//! at the cursor may be charged again, which the provider's idempotency key
//! (the purchase) and the ledger's (the purchase and the step) make safe. A
//! provider that does not answer is tried again a few times, then every
//! five minutes from a bounded list, while the next purchases go on. The
//! cursor kept is never past the oldest purchase on that list: after a
//! restart the recharger reads again from there, so a purchase waiting for
//! the provider is charged again instead of staying pending for good (the
//! ones settled since are skipped, being read first).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use purser_core::{Actor, Command, EventType, ObjectId, ObjectKind};
use purser_engine::{Engine, IdempotencyKey};
use purser_portal::payments::{Charge, CheckoutRequest, PaymentProvider};
use purser_store::EventQuery;
use serde_json::Value;

/// The store setting that holds where reading resumes after a restart:
/// the position read up to, or just before the oldest purchase still
/// waiting for the provider.
const CURSOR_SETTING: &str = "recharge.cursor";
/// The store setting that holds the position actually read up to: events
/// read again after a restart up to there were tried before, and go
/// straight to the waiting list's pace (no first retries in a row).
const READ_SETTING: &str = "recharge.read";
/// A purchase the provider has not answered for this long is left pending
/// for the operator (so the cursor can move past it).
const GIVE_UP: Duration = Duration::from_secs(86_400);
/// Events read at once.
const PAGE: usize = 100;
/// Waits between the first tries of a provider that does not answer.
const RETRIES: [u64; 3] = [1, 5, 30];
/// Then: tried again this often, at most this many waiting.
const LATER: Duration = Duration::from_secs(300);
const LATER_MAX: usize = 10_000;

/// The running recharger; it stops when this is dropped.
#[derive(Debug)]
pub struct Recharger {
    _stop: tokio::sync::watch::Sender<bool>,
}

impl Recharger {
    /// Starts following the outbox on the current tokio runtime.
    pub fn start(engine: Engine, payments: Arc<dyn PaymentProvider>) -> Recharger {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(run(engine, payments, stopped));
        }
        Recharger { _stop: stop }
    }
}

/// A purchase waiting for the provider.
struct Waiting {
    /// When it is tried next.
    at: Instant,
    request: CheckoutRequest,
    /// Its `purchase.created` event's outbox position.
    position: u64,
    since: Instant,
}

/// How one recharge went, for the loop.
enum Settled {
    Done,
    /// The provider did not answer: try again later.
    Later,
    Stopped,
}

async fn run(
    engine: Engine,
    payments: Arc<dyn PaymentProvider>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut committed = engine.events_committed();
    // Where it stopped; on the first start ever, the outbox's beginning
    // (purchases settled since are skipped: each is read before it is
    // charged).
    let (mut cursor, tried_until) = loop {
        let read = engine
            .query(|store| Ok((store.setting(CURSOR_SETTING)?, store.setting(READ_SETTING)?)))
            .await;
        match read {
            Ok((cursor, read)) => {
                let cursor = cursor.and_then(|t| t.parse::<u64>().ok()).unwrap_or(0);
                let read = read.and_then(|t| t.parse::<u64>().ok()).unwrap_or(cursor);
                break (cursor, read);
            }
            Err(error) => {
                tracing::warn!(?error, "the recharger could not read its cursor");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(5)) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    };
    // Waiting for the provider: when next, what, and its event's position.
    let mut later: VecDeque<Waiting> = VecDeque::new();
    loop {
        // Those the provider did not answer, when due.
        let waiting = later.len();
        while later.front().is_some_and(|w| w.at <= Instant::now()) {
            let mut due = later.pop_front().expect("a due one");
            match settle(&engine, &*payments, &due.request, &mut stop, false).await {
                Settled::Done => {}
                Settled::Later if due.since.elapsed() >= GIVE_UP => {
                    tracing::error!(purchase = %due.request.purchase, "auto-recharge: the payment provider has not answered for a day; this purchase stays pending for the operator");
                }
                Settled::Later => {
                    due.at = Instant::now() + LATER;
                    later.push_back(due);
                }
                Settled::Stopped => return,
            }
        }
        if later.len() != waiting {
            keep_cursor(&engine, cursor, &later).await;
        }
        let after = cursor;
        let page = engine
            .query(move |store| {
                store.events(&EventQuery {
                    account: None,
                    kind: Some(EventType::PurchaseCreated),
                    before: None,
                    after: Some(after),
                    limit: PAGE,
                })
            })
            .await;
        let events = match page {
            Ok(events) => events,
            Err(error) => {
                tracing::warn!(?error, "the recharger could not read the outbox");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(5)) => continue,
                    _ = stop.changed() => return,
                }
            }
        };
        let full = events.len() == PAGE;
        for stored in events {
            if *stop.borrow() {
                return;
            }
            if let Some(request) = recharge_request(&engine, &stored.event.body) {
                // Read again after a restart: tried before, so no retries
                // in a row (they would hold up the ones after it).
                let first = stored.position > tried_until;
                match settle(&engine, &*payments, &request, &mut stop, first).await {
                    Settled::Done => {}
                    Settled::Later if later.len() < LATER_MAX => {
                        later.push_back(Waiting {
                            at: Instant::now() + LATER,
                            request,
                            position: stored.position,
                            since: Instant::now(),
                        });
                    }
                    Settled::Later => {
                        tracing::error!(purchase = %request.purchase, "auto-recharge: too many waiting for the payment provider; this purchase stays pending for the operator");
                    }
                    Settled::Stopped => return,
                }
            }
            cursor = stored.position;
            keep_cursor(&engine, cursor, &later).await;
        }
        if full {
            continue;
        }
        let wake = later.front().map_or(Duration::from_secs(5), |w| {
            w.at.saturating_duration_since(Instant::now())
                .min(Duration::from_secs(5))
        });
        tokio::select! {
            _ = committed.changed() => {}
            () = tokio::time::sleep(wake) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Keeps where a restart reads from: the cursor, or just before the oldest
/// purchase still waiting for the provider.
async fn keep_cursor(engine: &Engine, cursor: u64, later: &VecDeque<Waiting>) {
    let resume = resume_from(cursor, later.iter().map(|w| w.position)).to_string();
    let read = cursor.to_string();
    if let Err(error) = engine
        .query(move |store| {
            store.set_setting(READ_SETTING, &read)?;
            store.set_setting(CURSOR_SETTING, &resume)
        })
        .await
    {
        tracing::warn!(?error, "the recharger could not keep its cursor");
    }
}

/// Where reading resumes after a restart: the cursor, or just before the
/// oldest of the events still waiting (`after` is exclusive).
fn resume_from(cursor: u64, waiting: impl Iterator<Item = u64>) -> u64 {
    waiting
        .map(|position| position.saturating_sub(1))
        .fold(cursor, u64::min)
}

/// The charge an auto-recharge's `purchase.created` event asks for.
fn recharge_request(engine: &Engine, body: &[u8]) -> Option<CheckoutRequest> {
    let event: Value = serde_json::from_slice(body).ok()?;
    let purchase = &event["data"]["purchase"];
    if purchase["auto_recharge"] != Value::Bool(true) {
        return None;
    }
    CheckoutRequest::for_purchase(purchase, engine.catalog(), String::new(), String::new())
}

/// Whether the purchase is still pending now (`None`: not known).
async fn pending(engine: &Engine, purchase: ObjectId) -> Option<bool> {
    match purser_wire::lists::purchase(engine, purchase).await {
        Ok(rendered) if rendered.status == 200 => {
            let current: Value = serde_json::from_slice(&rendered.body).ok()?;
            Some(current["status"] == "pending")
        }
        Ok(_) => Some(false),
        Err(_) => None,
    }
}

/// Charges one recharge, if its purchase is still pending, and settles it.
async fn settle(
    engine: &Engine,
    payments: &dyn PaymentProvider,
    request: &CheckoutRequest,
    stop: &mut tokio::sync::watch::Receiver<bool>,
    first: bool,
) -> Settled {
    let Some(purchase) = ObjectId::parse(ObjectKind::Purchase, &request.purchase) else {
        return Settled::Done;
    };
    let tries: &[u64] = if first { &RETRIES } else { &[] };
    let mut attempt = 0;
    loop {
        match pending(engine, purchase).await {
            Some(true) => {}
            Some(false) => return Settled::Done,
            None => return Settled::Later,
        }
        let (command, step) = match payments.charge_saved(request).await {
            Ok(Charge::Confirmed) => (Command::CompletePurchase { purchase }, "complete"),
            Ok(Charge::Failed(reason)) => (
                Command::FailPurchase {
                    purchase,
                    reason: Some(reason),
                },
                "fail",
            ),
            Ok(Charge::Processing | Charge::AwaitingConfirmation) => return Settled::Done,
            Err(error) => {
                tracing::warn!(purchase = %request.purchase, attempt, code = error.code, message = %error.message, "auto-recharge: the payment provider did not answer");
                let Some(wait) = tries.get(attempt) else {
                    return Settled::Later;
                };
                attempt += 1;
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(*wait)) => continue,
                    _ = stop.changed() => return Settled::Stopped,
                }
            }
        };
        let name = format!("recharge:{}:{step}", request.purchase);
        let key = IdempotencyKey::new(
            &name,
            purser_wire::fingerprint("POST", "/internal/recharge", name.as_bytes()),
        );
        let (status, body) =
            purser_wire::outcome(engine.run(command, Some(key), Actor::System).await);
        if !(200..300).contains(&status) {
            tracing::error!(purchase = %request.purchase, status, body = %String::from_utf8_lossy(&body), "auto-recharge: settling the purchase failed after the provider answered");
        }
        return Settled::Done;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restart_reads_again_from_the_oldest_purchase_still_waiting() {
        assert_eq!(resume_from(40, std::iter::empty()), 40);
        // Events 12 and 30 wait for the provider: reading resumes after 11,
        // so both are read (and charged, if still pending) again.
        assert_eq!(resume_from(40, [30, 12].into_iter()), 11);
        assert_eq!(resume_from(40, [1].into_iter()), 0);
        // Never ahead of the cursor.
        assert_eq!(resume_from(5, [9].into_iter()), 5);
    }
}
