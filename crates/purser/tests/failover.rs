//! Failover on PostgreSQL: two real `purser serve` processes on one
//! database, one the writer (it holds the lease), one a standby.
//!
//! - `standby_takes_over_after_kill_9`: concurrent charges go to the current
//!   writer (A, then B once A stops answering, each charge retried with its
//!   own Idempotency-Key until it gets an answer); A is killed with `kill -9`
//!   at a random moment; B must be ready within 10 s. Then, through B: every
//!   acknowledged charge is in the ledger exactly once, every debit in the
//!   ledger is explained by exactly one charge, retrying a charge whose
//!   outcome is unknown returns its own debit (committed before the kill, or
//!   created now), never another charge's, and the balances reconcile.
//! - `paused_writer_is_fenced`: A is paused (SIGSTOP) while charges are in
//!   flight; B takes over; A is resumed (SIGCONT) and sent charges at once:
//!   none may be acknowledged, A must go back to standby, and none of them
//!   (nor any in-flight one A did not acknowledge) may be in B's ledger.
//! - `idle_resumed_writer_stands_by`: a paused-then-resumed writer that is
//!   sent no write must notice it lost the lease and stop reporting ready.
//!
//! Each test runs on a database of its own (`purser_failover_<hex>`), dropped
//! at the end, also on failure. PostgreSQL is required: the tests fail, never
//! skip, when it is unreachable (`PURSER_TEST_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`). The load's seed is
//! printed; replay it with `PURSER_FAILOVER_SEED=<seed>`.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::ledger::{
    Expected, Retries, Sent, admin, check_acknowledged, check_balances, expect_status,
    ledger_debits, open_account, retry_unknown,
};
use common::{ADMIN_KEY, Rng, ServerProcess};
use purser_client::{Client, Reply};

/// A standby must be serving this soon after the writer is killed or paused.
const TAKEOVER_LIMIT: Duration = Duration::from_secs(10);
/// A fenced writer must be a standby again this soon after it is resumed.
const STAND_BY_LIMIT: Duration = Duration::from_secs(5);
/// How long a server gets to report ready after it starts as the writer.
const READY_LIMIT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);
/// Probes (`/readyz`, `/healthz`) give up after this.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests in flight when a writer is paused wait this long for it to resume.
const PAUSED_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Bounds how long the load tasks may take to wind down once stopped.
const LOAD_STOP_DEADLINE: Duration = Duration::from_secs(40);
const MAX_PAGES: usize = 1_000;
/// Where acknowledged charges must not be missing from.
const MISSING_FROM: &str = "from the new writer's ledger";

const FAILOVER_ACCOUNTS: [&str; 4] = ["failover-a", "failover-b", "failover-c", "failover-d"];
const FAILOVER_WORKERS: usize = 12;
/// Bounds each worker's charges (the stop flag normally comes first).
const MAX_CHARGES_PER_WORKER: usize = 20_000;
/// Attempts at one charge before it is left unknown (a 50 ms pause apart:
/// well past the takeover limit).
const MAX_ATTEMPTS: usize = 400;
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// The kill comes this many milliseconds after the load starts.
const KILL_DELAY_MS: (u64, u64) = (300, 1_000);
/// The load keeps going against the new writer this long.
const LOAD_AFTER_TAKEOVER: Duration = Duration::from_secs(1);

const FENCING_ACCOUNTS: [&str; 2] = ["fencing-a", "fencing-b"];
const FENCING_WORKERS: usize = 4;
/// The pause comes this many milliseconds after the load starts.
const PAUSE_DELAY_MS: (u64, u64) = (100, 400);
const CHARGES_ON_NEW_WRITER: usize = 5;
const CHARGES_ON_RESUMED_WRITER: usize = 8;

// ---------------------------------------------------------------------------
// The tests.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_takes_over_after_kill_9() {
    let seed = Rng::seed_from_env("PURSER_FAILOVER_SEED");
    println!("failover seed: {seed} (replay with PURSER_FAILOVER_SEED={seed})");
    let mut rng = Rng::new(seed);
    let started = Instant::now();
    let database = blocking(TestDatabase::create);
    let dir = tempfile::tempdir().expect("temp dir");
    let (a, b) = start_pair(&database, dir.path()).await;
    let logs = Logs(vec![a.log.clone(), b.log.clone()]);
    let (a_client, b_client) = (admin(&a, REQUEST_TIMEOUT), admin(&b, REQUEST_TIMEOUT));
    for account in FAILOVER_ACCOUNTS {
        open_account(&a_client, account).await;
    }

    // Load against the current writer; A is killed after a random delay.
    let servers = Arc::new([a_client, b_client.clone()]);
    let current = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..FAILOVER_WORKERS)
        .map(|worker| {
            let (servers, current, stop) = (servers.clone(), current.clone(), stop.clone());
            let rng = Rng::new(rng.next_u64());
            tokio::spawn(async move { failover_worker(servers, current, stop, rng, worker).await })
        })
        .collect();
    let delay = Duration::from_millis(rng.range(KILL_DELAY_MS.0, KILL_DELAY_MS.1));
    tokio::time::sleep(delay).await;
    let killed_at = Instant::now();
    let status = blocking(|| a.kill());
    // A commits nothing after this (it is reaped); B nothing before it.
    let killed_wall = wall_clock_micros();
    let takeover = wait_ready(&b, killed_at, TAKEOVER_LIMIT).await;
    let Some(takeover) = takeover else {
        stop.store(true, Ordering::SeqCst);
        panic!(
            "B was not ready within {TAKEOVER_LIMIT:?} of A's kill -9\n{}",
            logs.text()
        );
    };
    println!("A killed ({status}) {delay:?} into the load; B ready {takeover:?} later");
    tokio::time::sleep(LOAD_AFTER_TAKEOVER).await;
    stop.store(true, Ordering::SeqCst);
    let results = join_all(workers).await;

    let mut expected = Expected::default();
    let mut tally = Tally::default();
    let (mut acknowledged_by_a, mut sent_only_to_b) = (Vec::new(), Vec::new());
    for (sent, outcome) in results {
        match outcome {
            Outcome::Acknowledged {
                debit,
                by,
                uncertain,
            } => {
                tally.acknowledged[by] += 1;
                if uncertain {
                    tally.acknowledged_after_retry += 1;
                    expected.retried.push((sent.clone(), debit.clone()));
                } else if by == 0 {
                    acknowledged_by_a.push((debit.clone(), sent.clone()));
                } else {
                    sent_only_to_b.push((debit.clone(), sent.clone()));
                }
                expected.acknowledge(sent, debit);
            }
            Outcome::Refused { status, body } => {
                panic!("{sent:?} refused with {status}: {body}\n{}", logs.text())
            }
            Outcome::Unknown => expected.unknown.push(sent),
        }
    }
    tally.unknown = expected.unknown.len();

    // Everything is checked through B, the writer now.
    let ledger = ledger_debits(&b_client, &FAILOVER_ACCOUNTS, MAX_PAGES).await;
    let unexplained = check_acknowledged(&expected, &ledger, MISSING_FROM, || logs.text());
    tally.retried(retry_unknown(&b_client, &mut expected, &unexplained).await);
    let ledger = ledger_debits(&b_client, &FAILOVER_ACCOUNTS, MAX_PAGES).await;
    let unexplained = check_acknowledged(&expected, &ledger, MISSING_FROM, || logs.text());
    assert!(
        unexplained.is_empty(),
        "debits in B's ledger that no charge accounts for: {unexplained:?}\n{}",
        logs.text()
    );
    // Each writer committed what it acknowledged: A before its kill, B after.
    for (debit, sent) in &acknowledged_by_a {
        assert!(
            ledger[debit].at_micros < killed_wall,
            "{sent:?}, acknowledged by A as {debit}, was committed after A was killed"
        );
    }
    for (debit, sent) in &sent_only_to_b {
        assert!(
            ledger[debit].at_micros > killed_wall,
            "{sent:?}, sent only to B, was committed as {debit} before A was killed"
        );
    }
    // A charge acknowledged only after a failed attempt (A died under it, or
    // B was still a standby) answers the same debit when replayed; some of
    // them committed on A before the kill, and B answered A's debit.
    for (sent, debit) in &expected.retried {
        if ledger[debit].at_micros < killed_wall {
            tally.retried_committed_on_a += 1;
        }
        let again = send_once(&b_client, sent).await;
        assert_eq!(
            again.status,
            201,
            "replaying {sent:?} on B: {again:?}\n{}",
            logs.text()
        );
        assert_eq!(again.str("id"), debit, "replaying {sent:?} on B");
    }
    check_balances(&b_client, &FAILOVER_ACCOUNTS, MAX_PAGES, &expected, &ledger).await;
    assert!(
        tally.acknowledged[0] > 0 && tally.acknowledged[1] > 0,
        "both writers should have acknowledged charges: {tally:?}"
    );
    blocking(|| b.kill());
    println!(
        "failover in {:?}: B ready {takeover:?} after the kill; {tally:?}; {} debits in the ledger",
        started.elapsed(),
        ledger.len()
    );
    drop(dir);
    blocking(|| drop(database));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_writer_is_fenced() {
    let seed = Rng::seed_from_env("PURSER_FAILOVER_SEED");
    println!("fencing seed: {seed} (replay with PURSER_FAILOVER_SEED={seed})");
    let mut rng = Rng::new(seed);
    let started = Instant::now();
    let database = blocking(TestDatabase::create);
    let dir = tempfile::tempdir().expect("temp dir");
    let (a, b) = start_pair(&database, dir.path()).await;
    let logs = Logs(vec![a.log.clone(), b.log.clone()]);
    let a_client = admin(&a, PAUSED_REQUEST_TIMEOUT);
    let b_client = admin(&b, REQUEST_TIMEOUT);
    for account in FENCING_ACCOUNTS {
        open_account(&a_client, account).await;
    }

    // Charges in flight on A when it is paused: each is sent once.
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..FENCING_WORKERS)
        .map(|worker| {
            let (client, stop) = (a_client.clone(), stop.clone());
            let rng = Rng::new(rng.next_u64());
            tokio::spawn(async move { single_server_worker(client, stop, rng, worker).await })
        })
        .collect();
    let delay = Duration::from_millis(rng.range(PAUSE_DELAY_MS.0, PAUSE_DELAY_MS.1));
    tokio::time::sleep(delay).await;
    stop.store(true, Ordering::SeqCst);
    a.signal("STOP");
    let paused_at = Instant::now();
    let resume = Resume(&a);
    let takeover = wait_ready(&b, paused_at, TAKEOVER_LIMIT).await;
    let takeover = takeover.unwrap_or_else(|| {
        panic!(
            "B was not ready within {TAKEOVER_LIMIT:?} of pausing A\n{}",
            logs.text()
        )
    });
    println!("A paused {delay:?} into the load; B ready {takeover:?} later");

    let mut expected = Expected::default();
    let mut rng_b = Rng::new(rng.next_u64());
    for n in 0..CHARGES_ON_NEW_WRITER {
        let sent = Sent::random(&mut rng_b, format!("fencing-b-{n}"), &FENCING_ACCOUNTS);
        let reply = send_once(&b_client, &sent).await;
        assert_eq!(
            reply.status,
            201,
            "{sent:?} on B: {reply:?}\n{}",
            logs.text()
        );
        expected.acknowledge(sent, reply.str("id").to_owned());
    }

    // Resume A and at once send it charges: its commits must be fenced.
    drop(resume);
    let resumed_at = Instant::now();
    let mut rng_stale = Rng::new(rng.next_u64());
    let stale: Vec<Sent> = (0..CHARGES_ON_RESUMED_WRITER)
        .map(|n| {
            Sent::random(
                &mut rng_stale,
                format!("fencing-stale-{n}"),
                &FENCING_ACCOUNTS,
            )
        })
        .collect();
    let sending: Vec<_> = stale
        .iter()
        .cloned()
        .map(|sent| {
            let client = a_client.with_timeout(REQUEST_TIMEOUT);
            tokio::spawn(async move {
                let reply = client
                    .charge(sent.account, &sent.charge(), Some(&sent.key))
                    .await;
                (sent, reply)
            })
        })
        .collect();
    for task in sending {
        let (sent, reply) = task.await.expect("a charge task");
        match reply {
            Ok(reply) => assert_eq!(
                reply.status,
                503,
                "the resumed, fenced writer answered {sent:?} with {reply:?}\n{}",
                logs.text()
            ),
            Err(error) => println!("{sent:?} on the resumed A: {error} (not acknowledged)"),
        }
    }
    let standby = wait_standby(&a, resumed_at, STAND_BY_LIMIT).await;
    let standby = standby.unwrap_or_else(|| {
        panic!(
            "A was not a standby within {STAND_BY_LIMIT:?} of being resumed\n{}",
            logs.text()
        )
    });
    let refused = send_once(&a_client, &stale[0]).await;
    assert_eq!(refused.status, 503, "A as a standby: {refused:?}");

    // The charges in flight when A was paused have all been answered by now.
    let mut tally = Tally::default();
    for (sent, outcome) in join_all(workers).await {
        match outcome {
            Outcome::Acknowledged { debit, .. } => {
                tally.acknowledged[0] += 1;
                expected.acknowledge(sent, debit);
            }
            Outcome::Refused { status, body } => {
                panic!("{sent:?} refused with {status}: {body}\n{}", logs.text())
            }
            Outcome::Unknown => expected.unknown.push(sent),
        }
    }
    tally.acknowledged[1] = CHARGES_ON_NEW_WRITER;
    tally.unknown = expected.unknown.len();

    // Through B: what A acknowledged before the pause and what B did are
    // there; none of the charges sent to the resumed A is.
    let ledger = ledger_debits(&b_client, &FENCING_ACCOUNTS, MAX_PAGES).await;
    let unexplained = check_acknowledged(&expected, &ledger, MISSING_FROM, || logs.text());
    for sent in &stale {
        let reply = send_once(&b_client, sent).await;
        assert_eq!(
            reply.status,
            201,
            "{sent:?} on B: {reply:?}\n{}",
            logs.text()
        );
        let debit = reply.str("id").to_owned();
        assert!(
            !ledger.contains_key(&debit),
            "{sent:?}, refused by the fenced A, was in B's ledger as {debit}\n{}",
            logs.text()
        );
        expected.acknowledge(sent.clone(), debit);
    }
    tally.retried(retry_unknown(&b_client, &mut expected, &unexplained).await);
    let ledger = ledger_debits(&b_client, &FENCING_ACCOUNTS, MAX_PAGES).await;
    let unexplained = check_acknowledged(&expected, &ledger, MISSING_FROM, || logs.text());
    assert!(
        unexplained.is_empty(),
        "debits in B's ledger that no charge accounts for: {unexplained:?}\n{}",
        logs.text()
    );
    check_balances(&b_client, &FENCING_ACCOUNTS, MAX_PAGES, &expected, &ledger).await;
    assert!(
        tally.acknowledged[0] > 0,
        "A acknowledged nothing before the pause: {tally:?}"
    );
    blocking(|| {
        a.kill();
        b.kill();
    });
    println!(
        "fencing in {:?}: B ready {takeover:?} after the pause; A a standby {standby:?} after \
         the resume; {tally:?}; {} debits in the ledger",
        started.elapsed(),
        ledger.len()
    );
    drop(dir);
    blocking(|| drop(database));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_resumed_writer_stands_by() {
    let started = Instant::now();
    let database = blocking(TestDatabase::create);
    let dir = tempfile::tempdir().expect("temp dir");
    let (a, b) = start_pair(&database, dir.path()).await;
    let logs = Logs(vec![a.log.clone(), b.log.clone()]);
    let a_client = admin(&a, REQUEST_TIMEOUT);
    let b_client = admin(&b, REQUEST_TIMEOUT);
    let account = "idle-a";
    open_account(&a_client, account).await;
    let first = Sent {
        key: "idle-1".into(),
        account,
        credits_micros: 1_000_000,
    };
    let reply = send_once(&a_client, &first).await;
    assert_eq!(reply.status, 201, "{reply:?}");

    a.signal("STOP");
    let paused_at = Instant::now();
    let resume = Resume(&a);
    let takeover = wait_ready(&b, paused_at, TAKEOVER_LIMIT).await;
    let takeover = takeover.unwrap_or_else(|| {
        panic!(
            "B was not ready within {TAKEOVER_LIMIT:?} of pausing A\n{}",
            logs.text()
        )
    });
    let second = Sent {
        key: "idle-2".into(),
        account,
        credits_micros: 2_000_000,
    };
    let reply = send_once(&b_client, &second).await;
    assert_eq!(reply.status, 201, "{reply:?}");
    let on_b = expect_status(b_client.balance(account).await, 200, "balance on B");

    drop(resume);
    let resumed_at = Instant::now();
    let standby = wait_standby(&a, resumed_at, STAND_BY_LIMIT).await;
    let on_a = a_client.balance(account).await;
    println!(
        "idle resumed writer: B ready {takeover:?} after the pause; A a standby after the \
         resume: {standby:?}; balance on A {on_a:?}, on B {on_b:?}"
    );
    // Losing the lease stops the engine even when no write reaches it: the
    // resumed writer stops answering ready and stops serving stale reads.
    assert!(
        standby.is_some(),
        "A was still ready {STAND_BY_LIMIT:?} after being resumed, though B holds the lease\n{}",
        logs.text()
    );
    // A write is still refused: the fencing epoch is checked in the commit.
    let third = Sent {
        key: "idle-3".into(),
        account,
        credits_micros: 3_000_000,
    };
    let reply = a_client
        .charge(account, &third.charge(), Some(&third.key))
        .await;
    if let Ok(reply) = &reply {
        assert_eq!(reply.status, 503, "the resumed A took {third:?}: {reply:?}");
    }
    let standby = wait_standby(&a, Instant::now(), STAND_BY_LIMIT).await;
    assert!(
        standby.is_some(),
        "A was not a standby after a refused write\n{}",
        logs.text()
    );
    let balance = expect_status(b_client.balance(account).await, 200, "balance on B");
    assert_eq!(balance, on_b, "the refused write changed B's ledger");
    blocking(|| {
        a.kill();
        b.kill();
    });
    println!("idle resumed writer in {:?}", started.elapsed());
    drop(dir);
    blocking(|| drop(database));
}

/// A restarted writer does not wait out the lease of a process that is gone;
/// SIGTERM hands the lease back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_writer_takes_over_at_once_from_a_dead_process() {
    let database = blocking(TestDatabase::create);
    let dir = tempfile::tempdir().expect("temp dir");
    let a = blocking(|| ServerProcess::start_on_database(&database.url, dir.path(), "a"));
    if wait_ready(&a, Instant::now(), READY_LIMIT).await.is_none() {
        panic!("A was not ready within {READY_LIMIT:?}:\n{}", a.log_text());
    }
    let a_client = admin(&a, REQUEST_TIMEOUT);
    open_account(&a_client, "restart-a").await;
    blocking(|| a.kill());
    // A's lease is still current: a new process could only wait it out,
    // unless it can tell that A is gone.
    let lease = blocking(|| database.lease());
    assert!(lease.current, "A's lease ran out already: {lease:?}");
    let b = blocking(|| ServerProcess::start_on_database(&database.url, dir.path(), "b"));
    let logs = Logs(vec![b.log.clone()]);
    if wait_ready(&b, Instant::now(), READY_LIMIT).await.is_none() {
        panic!("B was not ready within {READY_LIMIT:?}:\n{}", logs.text());
    }
    let taken = blocking(|| database.lease());
    assert!(
        taken.epoch > lease.epoch && blocking(|| database.before(&lease.expires_at)),
        "B took the lease only after A's ran out: {lease:?} then {taken:?}\n{}",
        logs.text()
    );
    let b_client = admin(&b, REQUEST_TIMEOUT);
    expect_status(
        b_client.get("/v1/accounts/restart-a").await,
        200,
        "A's account on B",
    );
    let status = blocking(|| b.terminate());
    assert!(
        status.success(),
        "B after SIGTERM: {status}\n{}",
        logs.text()
    );
    let handed_back = blocking(|| database.lease());
    assert!(
        !handed_back.current,
        "SIGTERM did not hand the lease back: {handed_back:?}\n{}",
        logs.text()
    );
    drop(dir);
    blocking(|| drop(database));
}

// ---------------------------------------------------------------------------
// Databases and processes.

/// A PostgreSQL database of one test's own, dropped with it.
#[derive(Debug)]
struct TestDatabase {
    name: String,
    url: String,
}

/// The writer lease as the database has it.
#[derive(Debug)]
struct Lease {
    epoch: i64,
    /// `expires_at` as text, to compare with the database's clock.
    expires_at: String,
    current: bool,
}

/// The server-level URL the test databases are created through.
fn admin_url() -> String {
    std::env::var("PURSER_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Runs `sql` on the admin database from a thread of its own (the
/// synchronous client owns a runtime, which must stay off async threads).
fn admin_sql(sql: String) -> Result<(), String> {
    let url = admin_url();
    std::thread::spawn(move || {
        let mut client = postgres::Client::connect(&url, postgres::NoTls).map_err(|error| {
            let cause = std::error::Error::source(&error)
                .map_or_else(String::new, |cause| format!(": {cause}"));
            format!(
                "PostgreSQL is required by the failover tests and is not reachable at {url} \
                 ({error}{cause}); start it, or point PURSER_TEST_POSTGRES_URL at one"
            )
        })?;
        client
            .batch_execute(&sql)
            .map_err(|error| format!("{sql}: {error}"))
    })
    .join()
    .unwrap_or_else(|_| Err("the PostgreSQL admin thread panicked".into()))
}

impl TestDatabase {
    fn create() -> TestDatabase {
        static CREATED: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_nanos() as u64;
        let mixed = nanos
            ^ u64::from(std::process::id()).rotate_left(32)
            ^ CREATED.fetch_add(1, Ordering::SeqCst).rotate_left(48);
        let name = format!("purser_failover_{:016x}", Rng::new(mixed).next_u64());
        if let Err(error) = admin_sql(format!("CREATE DATABASE {name}")) {
            panic!("{error}");
        }
        let admin = admin_url();
        let (base, query) = match admin.split_once('?') {
            Some((base, query)) => (base.to_owned(), format!("?{query}")),
            None => (admin.clone(), String::new()),
        };
        let server = base
            .rsplit_once('/')
            .map_or(base.as_str(), |(server, _)| server);
        let url = format!("{server}/{name}{query}");
        TestDatabase { name, url }
    }
}

impl TestDatabase {
    /// One query's first row, on a thread of its own (the synchronous
    /// client owns a runtime, which must stay off the test's runtime).
    fn query_one<T: Send>(
        &self,
        sql: &str,
        params: &(dyn postgres::types::ToSql + Sync),
        read: impl FnOnce(postgres::Row) -> T + Send,
    ) -> T {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let mut client = postgres::Client::connect(&self.url, postgres::NoTls)
                        .expect("connect to the test database");
                    read(client.query_one(sql, &[params]).expect(sql))
                })
                .join()
                .expect("the query thread panicked")
        })
    }

    /// The lease row.
    fn lease(&self) -> Lease {
        self.query_one(
            "SELECT epoch, expires_at::text, expires_at > now() FROM writer_lease WHERE id = $1",
            &1_i32,
            |row| Lease {
                epoch: row.get(0),
                expires_at: row.get(1),
                current: row.get(2),
            },
        )
    }

    /// Whether the database's clock is still before `instant`.
    fn before(&self, instant: &str) -> bool {
        self.query_one("SELECT now() < $1::text::timestamptz", &instant, |row| {
            row.get(0)
        })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(error) = admin_sql(sql) {
            eprintln!("could not drop the test database {}: {error}", self.name);
        }
    }
}

/// Now, in microseconds since 1970 (the servers' clock: the same machine's).
fn wall_clock_micros() -> i64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970");
    i64::try_from(since_epoch.as_micros()).expect("micros fit in i64")
}

/// Blocking work (processes, the admin client) off the async threads.
fn blocking<T>(work: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(work)
}

/// The server logs, shown when an assertion fails.
#[derive(Debug)]
struct Logs(Vec<PathBuf>);

impl Logs {
    fn text(&self) -> String {
        self.0
            .iter()
            .map(|path| {
                let text = std::fs::read_to_string(path)
                    .unwrap_or_else(|error| format!("(no log: {error})"));
                format!("--- {}:\n{text}", path.display())
            })
            .collect()
    }
}

/// Sends SIGCONT when dropped, so a paused writer is resumed even when the
/// test fails before resuming it (never panics: it may run while unwinding).
#[derive(Debug)]
struct Resume<'a>(&'a ServerProcess);

impl Drop for Resume<'_> {
    fn drop(&mut self) {
        let resumed = std::process::Command::new("kill")
            .args(["-CONT", &self.0.pid().to_string()])
            .status();
        if !matches!(resumed, Ok(status) if status.success()) {
            eprintln!("kill -CONT {} failed: {resumed:?}", self.0.pid());
        }
    }
}

/// Starts A (the writer) and B (a standby) on `database`.
async fn start_pair(database: &TestDatabase, dir: &Path) -> (ServerProcess, ServerProcess) {
    let a = blocking(|| ServerProcess::start_on_database(&database.url, dir, "a"));
    if wait_ready(&a, Instant::now(), READY_LIMIT).await.is_none() {
        panic!("A was not ready within {READY_LIMIT:?}:\n{}", a.log_text());
    }
    let b = blocking(|| ServerProcess::start_on_database(&database.url, dir, "b"));
    let probe = Client::new(&b.base, ADMIN_KEY).with_timeout(PROBE_TIMEOUT);
    let health = expect_status(probe.get("/healthz").await, 200, "B's /healthz");
    assert_eq!(health.str("role"), "standby", "B's /healthz: {health:?}");
    let ready = expect_status(probe.get("/readyz").await, 503, "B's /readyz");
    assert_eq!(ready.str("status"), "standby", "B's /readyz: {ready:?}");
    let accounts = expect_status(probe.get("/v1/accounts").await, 503, "B's API");
    assert_eq!(accounts.error_code(), Some("unavailable"), "{accounts:?}");
    let health = expect_status(
        Client::new(&a.base, ADMIN_KEY)
            .with_timeout(PROBE_TIMEOUT)
            .get("/readyz")
            .await,
        200,
        "A's /readyz with B up",
    );
    assert_eq!(health.str("status"), "ready");
    (a, b)
}

/// Polls `/readyz` until 200; the time since `since`, or `None` past `limit`.
async fn wait_ready(server: &ServerProcess, since: Instant, limit: Duration) -> Option<Duration> {
    let probe = Client::new(&server.base, ADMIN_KEY).with_timeout(PROBE_TIMEOUT);
    while since.elapsed() < limit {
        if let Ok(reply) = probe.get("/readyz").await
            && reply.status == 200
        {
            return Some(since.elapsed());
        }
        tokio::time::sleep(POLL).await;
    }
    None
}

/// Polls until the server is a standby (`/readyz` 503 `standby`); the time
/// since `since`, or `None` past `limit`.
async fn wait_standby(server: &ServerProcess, since: Instant, limit: Duration) -> Option<Duration> {
    let probe = Client::new(&server.base, ADMIN_KEY).with_timeout(PROBE_TIMEOUT);
    while since.elapsed() < limit {
        if let Ok(reply) = probe.get("/readyz").await
            && reply.status == 503
            && reply.str("status") == "standby"
        {
            return Some(since.elapsed());
        }
        tokio::time::sleep(POLL).await;
    }
    None
}

// ---------------------------------------------------------------------------
// The load.

/// What the client learned about one charge.
#[derive(Debug)]
enum Outcome {
    /// 201 from server `by` (0 = A, 1 = B); `uncertain`: an earlier attempt
    /// got no answer or a 5xx.
    Acknowledged {
        debit: String,
        by: usize,
        uncertain: bool,
    },
    /// A 4xx: refused (never expected here).
    Refused { status: u16, body: String },
    /// No 201 nor 4xx by the time the load stopped.
    Unknown,
}

/// Charges with unique keys until `stop`, each sent to the current writer
/// and retried (same key, same body) until it gets a 201 or a 4xx; a failed
/// attempt on A makes B the current writer for every worker.
async fn failover_worker(
    servers: Arc<[Client; 2]>,
    current: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    mut rng: Rng,
    worker: usize,
) -> Vec<(Sent, Outcome)> {
    let mut results = Vec::new();
    for n in 0..MAX_CHARGES_PER_WORKER {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let sent = Sent::random(
            &mut rng,
            format!("failover-{worker}-{n}"),
            &FAILOVER_ACCOUNTS,
        );
        let mut outcome = Outcome::Unknown;
        let mut uncertain = false;
        for _ in 0..MAX_ATTEMPTS {
            let by = current.load(Ordering::SeqCst);
            let reply = servers[by]
                .charge(sent.account, &sent.charge(), Some(&sent.key))
                .await;
            match reply {
                Ok(reply) if reply.status == 201 => {
                    let debit = reply.str("id").to_owned();
                    outcome = Outcome::Acknowledged {
                        debit,
                        by,
                        uncertain,
                    };
                    break;
                }
                Ok(reply) if (400..500).contains(&reply.status) => {
                    outcome = Outcome::Refused {
                        status: reply.status,
                        body: reply.body.to_string(),
                    };
                    break;
                }
                Ok(_) | Err(_) => {
                    uncertain = true;
                    current.store(1, Ordering::SeqCst);
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
        results.push((sent, outcome));
    }
    results
}

/// Charges with unique keys on one server until `stop`, each sent once.
async fn single_server_worker(
    client: Client,
    stop: Arc<AtomicBool>,
    mut rng: Rng,
    worker: usize,
) -> Vec<(Sent, Outcome)> {
    let mut results = Vec::new();
    for n in 0..MAX_CHARGES_PER_WORKER {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let sent = Sent::random(
            &mut rng,
            format!("fencing-a-{worker}-{n}"),
            &FENCING_ACCOUNTS,
        );
        let outcome = match client
            .charge(sent.account, &sent.charge(), Some(&sent.key))
            .await
        {
            Ok(reply) if reply.status == 201 => Outcome::Acknowledged {
                debit: reply.str("id").to_owned(),
                by: 0,
                uncertain: false,
            },
            Ok(reply) if (400..500).contains(&reply.status) => Outcome::Refused {
                status: reply.status,
                body: reply.body.to_string(),
            },
            Ok(_) | Err(_) => Outcome::Unknown,
        };
        results.push((sent, outcome));
    }
    results
}

async fn join_all(
    workers: Vec<tokio::task::JoinHandle<Vec<(Sent, Outcome)>>>,
) -> Vec<(Sent, Outcome)> {
    let deadline = tokio::time::Instant::now() + LOAD_STOP_DEADLINE;
    let mut results = Vec::new();
    for worker in workers {
        let done = tokio::time::timeout_at(deadline, worker).await;
        results.extend(done.expect("the load stops in time").expect("a load task"));
    }
    results
}

/// A charge sent once; panics if it gets no answer.
async fn send_once(client: &Client, sent: &Sent) -> Reply {
    client
        .charge(sent.account, &sent.charge(), Some(&sent.key))
        .await
        .unwrap_or_else(|error| panic!("{sent:?}: {error}"))
}

// ---------------------------------------------------------------------------
// The checks.

/// Totals printed at the end.
#[derive(Debug, Default)]
struct Tally {
    /// By A, by B.
    acknowledged: [usize; 2],
    /// Acknowledged after an attempt that got no answer or a 5xx.
    acknowledged_after_retry: usize,
    /// Of those, committed by A before the kill (B answered A's debit).
    retried_committed_on_a: usize,
    /// No answer by the end of the load.
    unknown: usize,
    /// Unknown charges whose retry returned a debit already in the ledger.
    committed_before: usize,
    /// Unknown charges that had not committed and were created by the retry.
    created_by_retry: usize,
}

impl Tally {
    fn retried(&mut self, retries: Retries) {
        self.committed_before += retries.committed_before;
        self.created_by_retry += retries.created_by_retry;
    }
}
