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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{ADMIN_KEY, Rng, ServerProcess};
use purser_client::{Charge, Client, Cost, NewAccount, PurchaseAction, Reply};

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
const PAGE_LIMIT: usize = 100;
const MAX_PAGES: usize = 10_000;

/// One charge as sent: retrying it sends exactly the same request.
#[derive(Clone, Debug)]
struct Sent {
    key: String,
    account: &'static str,
    credits_micros: i128,
}

impl Sent {
    fn charge(&self) -> Charge {
        Charge::new(Cost::credits(format_micros(self.credits_micros)))
    }
}

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

/// What the test knows the ledger must hold.
#[derive(Debug, Default)]
struct Expected {
    /// Debit id → the charge it answers (acknowledged, or recovered by a retry).
    debits: HashMap<String, Sent>,
    /// Charges whose outcome is unknown until they are retried.
    unknown: Vec<Sent>,
}

impl Expected {
    fn acknowledge(&mut self, sent: Sent, debit: String) {
        if let Some(other) = self.debits.get(&debit) {
            panic!("debit {debit} was answered to two different charges: {other:?} and {sent:?}");
        }
        self.debits.insert(debit, sent);
    }
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
        let client = admin(&server);
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
    let client = admin(&server);
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

/// A fresh client per server process: no pooled connection to a dead one.
fn admin(server: &ServerProcess) -> Client {
    Client::new(&server.base, ADMIN_KEY).with_timeout(REQUEST_TIMEOUT)
}

/// Round 1: the accounts, each with its budget and a completed package.
async fn open_accounts(client: &Client) {
    for id in ACCOUNTS {
        let account = NewAccount {
            id: id.into(),
            tier: "business".into(),
            name: None,
            anchor: None,
        };
        expect_status(client.create_account(&account).await, 201, "create account");
        let purchase = expect_status(client.create_purchase(id, "small").await, 201, "purchase");
        let action = client.purchase_action(purchase.str("id"), PurchaseAction::Complete);
        expect_status(action.await, 200, "complete purchase");
    }
}

fn expect_status(
    reply: Result<Reply, purser_client::ClientError>,
    status: u16,
    what: &str,
) -> Reply {
    let reply = reply.unwrap_or_else(|error| panic!("{what}: {error}"));
    assert_eq!(reply.status, status, "{what}: {reply:?}");
    reply
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
        let sent = Sent {
            key: format!("crash-{round}-{worker}-{n}"),
            account: ACCOUNTS[rng.range(0, ACCOUNTS.len() as u64 - 1) as usize],
            // 0.001 to 0.5 credits.
            credits_micros: i128::from(rng.range(1, 500)) * 1_000,
        };
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
                assert!(
                    debit.starts_with("deb_"),
                    "a 201 without a debit id: {sent:?}"
                );
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
    let before = ledger_debits(client).await;
    let unexplained = check_acknowledged(expected, &before, server);
    retry_unknown(client, expected, tally, &unexplained).await;
    let after = ledger_debits(client).await;
    let unexplained = check_acknowledged(expected, &after, server);
    assert!(
        unexplained.is_empty(),
        "debits in the ledger that no charge accounts for: {unexplained:?}\nserver log:\n{}",
        server.log_text()
    );
    check_balances(client, expected, &after).await;
}

/// A debit as the journal lists it.
#[derive(Clone, Debug)]
struct LedgerDebit {
    account: &'static str,
    credits_micros: i128,
}

/// Every debit of every account, read through the transaction list.
async fn ledger_debits(client: &Client) -> BTreeMap<String, LedgerDebit> {
    let mut debits = BTreeMap::new();
    for account in ACCOUNTS {
        for entry in journal(client, account, "debit").await {
            let id = entry["debit"]
                .as_str()
                .expect("a debit entry names its debit");
            let credits_micros = -parse_micros(entry["credits"].as_str().expect("credits"));
            let debit = LedgerDebit {
                account,
                credits_micros,
            };
            if let Some(first) = debits.insert(id.to_owned(), debit) {
                panic!("debit {id} appears twice in the ledger (first {first:?})");
            }
        }
    }
    debits
}

/// Every journal entry of one type for one account, newest first.
async fn journal(client: &Client, account: &str, kind: &str) -> Vec<serde_json::Value> {
    let mut entries: Vec<serde_json::Value> = Vec::new();
    let mut seen = HashSet::new();
    for _ in 0..MAX_PAGES {
        let mut query = format!("?type={kind}&limit={PAGE_LIMIT}");
        if let Some(last) = entries.last() {
            query.push_str(&format!(
                "&starting_after={}",
                last["id"].as_str().expect("id")
            ));
        }
        let page = expect_status(
            client.transactions(account, &query).await,
            200,
            "transactions",
        );
        for entry in page.body["data"].as_array().expect("a list").iter() {
            let id = entry["id"].as_str().expect("a transaction id").to_owned();
            assert!(seen.insert(id.clone()), "transaction {id} listed twice");
            entries.push(entry.clone());
        }
        if page.body["has_more"] != serde_json::Value::Bool(true) {
            return entries;
        }
    }
    panic!("more than {MAX_PAGES} pages of {kind} entries for {account}");
}

/// Every expected debit is in the ledger with its account and credits; returns
/// the ledger's debits that nothing expected (yet) accounts for.
fn check_acknowledged(
    expected: &Expected,
    ledger: &BTreeMap<String, LedgerDebit>,
    server: &ServerProcess,
) -> BTreeMap<String, LedgerDebit> {
    let missing: Vec<_> = expected
        .debits
        .iter()
        .filter(|(id, _)| !ledger.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged charges are missing after the restart, e.g. {:?}\nserver log:\n{}",
        missing.len(),
        &missing[..missing.len().min(5)],
        server.log_text()
    );
    for (id, sent) in &expected.debits {
        let found = &ledger[id];
        assert_eq!(
            (found.account, found.credits_micros),
            (sent.account, sent.credits_micros),
            "debit {id} differs from its charge {sent:?}"
        );
    }
    ledger
        .iter()
        .filter(|(id, _)| !expected.debits.contains_key(*id))
        .map(|(id, debit)| (id.clone(), debit.clone()))
        .collect()
}

/// Retries every charge whose outcome is unknown, with the same key and body:
/// it must return the debit it committed before the crash, or create it now.
async fn retry_unknown(
    client: &Client,
    expected: &mut Expected,
    tally: &mut Tally,
    unexplained: &BTreeMap<String, LedgerDebit>,
) {
    for sent in std::mem::take(&mut expected.unknown) {
        let reply = client
            .charge(sent.account, &sent.charge(), Some(&sent.key))
            .await;
        let reply = reply.unwrap_or_else(|error| panic!("retrying {sent:?}: {error}"));
        assert_eq!(reply.status, 201, "retrying {sent:?}: {reply:?}");
        let debit = reply.str("id").to_owned();
        if unexplained.contains_key(&debit) {
            tally.committed_before_crash += 1;
        } else {
            tally.created_by_retry += 1;
        }
        expected.acknowledge(sent, debit);
    }
}

/// Per account: nothing held, no debt, and available = granted − debited.
async fn check_balances(
    client: &Client,
    expected: &Expected,
    ledger: &BTreeMap<String, LedgerDebit>,
) {
    for account in ACCOUNTS {
        let balance = expect_status(client.balance(account).await, 200, "balance");
        assert_eq!(balance.str("held"), "0", "{balance:?}");
        assert_eq!(balance.str("debt"), "0", "{balance:?}");
        let granted: i128 = journal(client, account, "grant")
            .await
            .iter()
            .map(|entry| parse_micros(entry["credits"].as_str().expect("credits")))
            .sum();
        let debited: i128 = ledger
            .values()
            .filter(|debit| debit.account == account)
            .map(|debit| debit.credits_micros)
            .sum();
        let charged: i128 = expected
            .debits
            .values()
            .filter(|sent| sent.account == account)
            .map(|sent| sent.credits_micros)
            .sum();
        assert_eq!(
            debited, charged,
            "{account}: the ledger's debits differ from the charges"
        );
        assert_eq!(
            parse_micros(balance.str("available")),
            granted - debited,
            "{account}: available != granted {} - debited {}: {balance:?}",
            format_micros(granted),
            format_micros(debited)
        );
    }
}

/// `"-12.5"` → −12,500,000 micros.
fn parse_micros(text: &str) -> i128 {
    let (sign, digits) = match text.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, text),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    assert!(fraction.len() <= 6, "more than 6 fractional digits: {text}");
    let whole: i128 = whole
        .parse()
        .unwrap_or_else(|_| panic!("not credits: {text}"));
    let fraction: i128 = format!("{fraction:0<6}").parse().expect("digits");
    sign * (whole * 1_000_000 + fraction)
}

fn format_micros(micros: i128) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let (whole, fraction) = (micros.abs() / 1_000_000, micros.abs() % 1_000_000);
    let fraction = format!("{fraction:06}");
    let fraction = fraction.trim_end_matches('0');
    if fraction.is_empty() {
        format!("{sign}{whole}")
    } else {
        format!("{sign}{whole}.{fraction}")
    }
}
