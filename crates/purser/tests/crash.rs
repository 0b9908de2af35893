//! Crash test: concurrent charges against the real `purser serve`, `kill -9`
//! at a random moment, restart on the same data directory, for 20 rounds.
//! After every restart: every acknowledged charge is in the ledger exactly
//! once, every debit in the ledger is explained by exactly one charge (an
//! acknowledged one, or one whose answer was lost and whose retry with the
//! same Idempotency-Key returns it), the balances reconcile with the
//! journal; at the end `purser verify` is clean.
//!
//! The seed is printed; replay a run with `PURSER_CRASH_SEED=<seed>`.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::ledger::{
    Expected, Sent, admin, check_acknowledged, check_balances, expect_status, ledger_debits,
    open_account, retry_unknown,
};
use common::{Rng, ServerProcess};
use purser_client::{Client, PurchaseAction};

const ROUNDS: usize = 20;
const ACCOUNTS: [&str; 4] = ["crash-a", "crash-b", "crash-c", "crash-d"];
const WORKERS: usize = 16;
/// Bounds each worker's charges in one round (the kill normally comes first).
const MAX_CHARGES_PER_WORKER: usize = 5_000;
/// The kill comes this many milliseconds after the load starts.
const KILL_DELAY_MS: (u64, u64) = (20, 250);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Bounds how long the load tasks may take to notice the kill.
const LOAD_STOP_DEADLINE: Duration = Duration::from_secs(30);
const MAX_PAGES: usize = 10_000;

/// What the client learned about one charge.
#[derive(Debug)]
enum Outcome {
    /// 201: the server promised it is durable.
    Acknowledged { debit: String },
    /// A 4xx answer: refused, nothing changed (and the key is not remembered).
    Refused { status: u16 },
    /// The connection failed or was cut, or a 5xx: it may or may not have committed.
    Unknown,
}

/// Totals printed at the end.
#[derive(Debug, Default)]
struct Tally {
    acknowledged: usize,
    refused: usize,
    unknown: usize,
    /// Unknown charges whose retry returned a debit committed before the crash.
    committed_before_crash: usize,
    /// Unknown charges that had not committed and were created by the retry.
    created_by_retry: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_charges_survive_kill_9() {
    let seed = Rng::seed_from_env("PURSER_CRASH_SEED");
    println!("crash test seed: {seed} (replay with PURSER_CRASH_SEED={seed})");
    let mut rng = Rng::new(seed);
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("data");
    let mut expected = Expected::default();
    let mut tally = Tally::default();

    for round in 1..=ROUNDS {
        let server = start(&data_dir, &format!("server-{round}"));
        let client = admin(&server, REQUEST_TIMEOUT);
        if round == 1 {
            open_accounts(&client).await;
        } else {
            recover_and_check(&client, &mut expected, &mut tally, &server).await;
        }
        let delay = Duration::from_millis(rng.range(KILL_DELAY_MS.0, KILL_DELAY_MS.1));
        let results = load_then_kill(&client, server, round, delay, rng.next_u64()).await;
        record(results, &mut expected, &mut tally);
        println!(
            "round {round}: killed after {delay:?}; so far {} acknowledged, {} unknown, {} refused",
            tally.acknowledged, tally.unknown, tally.refused
        );
    }

    let server = start(&data_dir, "server-final");
    let client = admin(&server, REQUEST_TIMEOUT);
    recover_and_check(&client, &mut expected, &mut tally, &server).await;
    let status = tokio::task::block_in_place(|| server.stop());
    assert!(
        status.success(),
        "the server's graceful stop exited with {status}"
    );

    let output = tokio::task::block_in_place(|| common::verify(&data_dir));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.starts_with("ok"),
        "purser verify failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        tally.acknowledged > 0,
        "no charge was ever acknowledged: {tally:?}"
    );
    println!(
        "{ROUNDS} rounds in {:?}: {tally:?}; {} debits in the ledger; {}",
        started.elapsed(),
        expected.debits.len(),
        stdout.trim()
    );
}

fn start(data_dir: &Path, log_name: &str) -> ServerProcess {
    tokio::task::block_in_place(|| ServerProcess::start(data_dir, log_name))
}

/// Round 1: the accounts, each with its budget and a completed package.
async fn open_accounts(client: &Client) {
    for id in ACCOUNTS {
        open_account(client, id).await;
        let purchase = expect_status(client.create_purchase(id, "small").await, 201, "purchase");
        let action = client.purchase_action(purchase.str("id"), PurchaseAction::Complete);
        expect_status(action.await, 200, "complete purchase");
    }
}

/// Starts the load, kills the server after `delay`, stops the load, and
/// returns every charge sent with what its sender learned.
async fn load_then_kill(
    client: &Client,
    server: ServerProcess,
    round: usize,
    delay: Duration,
    seed: u64,
) -> Vec<(Sent, Outcome)> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut seeds = Rng::new(seed);
    let workers: Vec<_> = (0..WORKERS)
        .map(|worker| {
            let (client, stop) = (client.clone(), stop.clone());
            let rng = Rng::new(seeds.next_u64());
            tokio::spawn(
                async move { charge_until_stopped(client, stop, rng, round, worker).await },
            )
        })
        .collect();
    tokio::time::sleep(delay).await;
    tokio::task::block_in_place(|| server.kill());
    stop.store(true, Ordering::SeqCst);
    let mut results = Vec::new();
    for worker in workers {
        let done = tokio::time::timeout(LOAD_STOP_DEADLINE, worker).await;
        results.extend(
            done.expect("the load stops after the kill")
                .expect("a load task"),
        );
    }
    results
}

async fn charge_until_stopped(
    client: Client,
    stop: Arc<AtomicBool>,
    mut rng: Rng,
    round: usize,
    worker: usize,
) -> Vec<(Sent, Outcome)> {
    let mut results = Vec::new();
    for n in 0..MAX_CHARGES_PER_WORKER {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let sent = Sent::random(&mut rng, format!("crash-{round}-{worker}-{n}"), &ACCOUNTS);
        let outcome = send(&client, &sent).await;
        results.push((sent, outcome));
    }
    results
}

async fn send(client: &Client, sent: &Sent) -> Outcome {
    match client
        .charge(sent.account, &sent.charge(), Some(&sent.key))
        .await
    {
        Ok(reply) if reply.status == 201 => Outcome::Acknowledged {
            debit: reply.str("id").to_owned(),
        },
        Ok(reply) if (400..500).contains(&reply.status) => Outcome::Refused {
            status: reply.status,
        },
        Ok(_) | Err(_) => Outcome::Unknown,
    }
}

fn record(results: Vec<(Sent, Outcome)>, expected: &mut Expected, tally: &mut Tally) {
    for (sent, outcome) in results {
        match outcome {
            Outcome::Acknowledged { debit } => {
                tally.acknowledged += 1;
                expected.acknowledge(sent, debit);
            }
            Outcome::Refused { status } => {
                // With plenty of credits and unique keys nothing should be refused;
                // a refusal is still no harm to the ledger, which the checks prove.
                assert!(
                    status == 429,
                    "charge {sent:?} refused with {status} while the server was up"
                );
                tally.refused += 1;
            }
            Outcome::Unknown => {
                tally.unknown += 1;
                expected.unknown.push(sent);
            }
        }
    }
}

/// After a restart: the ledger holds exactly what the test expects, the
/// unknown charges are settled by retrying them, and balances reconcile.
async fn recover_and_check(
    client: &Client,
    expected: &mut Expected,
    tally: &mut Tally,
    server: &ServerProcess,
) {
    let logs = || format!("server log:\n{}", server.log_text());
    let before = ledger_debits(client, &ACCOUNTS, MAX_PAGES).await;
    let unexplained = check_acknowledged(expected, &before, "after the restart", logs);
    let retries = retry_unknown(client, expected, &unexplained).await;
    tally.committed_before_crash += retries.committed_before;
    tally.created_by_retry += retries.created_by_retry;
    let after = ledger_debits(client, &ACCOUNTS, MAX_PAGES).await;
    let unexplained = check_acknowledged(expected, &after, "after the restart", logs);
    assert!(
        unexplained.is_empty(),
        "debits in the ledger that no charge accounts for: {unexplained:?}\nserver log:\n{}",
        server.log_text()
    );
    check_balances(client, &ACCOUNTS, MAX_PAGES, expected, &after).await;
}
