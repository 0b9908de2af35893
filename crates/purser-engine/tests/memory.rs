//! What the engine keeps of one account's purchases (issue 14): settled
//! ones leave memory for the store, so an account can buy any number of
//! packages and the engine's heap stays where it was.
//!
//! Measured with an instrumented global allocator (this test binary's
//! own): it counts the Rust heap only, so SQLite's page caches (C, bounded
//! by its cache size) are not in the figure. `PURSER_PURCHASES` sets how
//! many purchases (3,000 by default; the figure in BENCHMARKS.md is for
//! 100,000, in release: `PURSER_PURCHASES=100000 cargo test --release -p
//! purser-engine --test memory -- --nocapture`).

use std::alloc::System;
use std::sync::Arc;
use std::time::Duration;

use purser_core::{
    Account, AccountHandle, AccountId, Amount, Catalog, ChargeMode, Command, Credits, Metadata,
    ObjectId, PackageId, Rejection, TierId, Timestamp,
};
use purser_engine::{
    Accepted, Actor, CommitObserver, Engine, EngineConfig, EventContext, Options, Outcome, Read,
    Render, Rendered,
};
use purser_store::{EntryQuery, Store};
use purser_store_sqlite::SqliteStore;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, Stats, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Answers as `handle seq` of the entry that answers a command.
#[derive(Debug)]
struct Ids;

impl Render for Ids {
    fn accepted(&self, accepted: &Accepted<'_>) -> Rendered {
        let index = accepted
            .receipt
            .primary
            .expect("every command here makes an entry");
        let entry = &accepted.entries[index];
        Rendered {
            status: 201,
            body: format!("{} {}", entry.account.raw(), entry.seq).into_bytes(),
            remember: None,
        }
    }
    fn refused(&self, rejection: &Rejection) -> Rendered {
        Rendered {
            status: 400,
            body: rejection.code().as_bytes().to_vec(),
            remember: None,
        }
    }
    fn event(&self, event: &EventContext<'_>) -> Vec<u8> {
        event.event.kind.name().as_bytes().to_vec()
    }
    fn read(&self, _: Read, _: Option<&Account>, _: Timestamp) -> Rendered {
        unreachable!("no reads here")
    }
    fn account(&self, account: &Account, _: Timestamp) -> Vec<u8> {
        account.id().as_str().as_bytes().to_vec()
    }
    fn recall_reads_store(&self, _: &[u8]) -> bool {
        false
    }
    fn recall(&self, remembered: &[u8], _: &dyn Store) -> Result<Vec<u8>, String> {
        Ok(remembered.to_vec())
    }
}

#[derive(Debug)]
struct Unobserved;

impl CommitObserver for Unobserved {
    fn observe_commit(&self, _: usize, _: usize, _: Duration) {}
}

/// Net bytes of Rust heap in use since the region began (a reallocation
/// counts its growth as allocated, its shrinking as deallocated).
fn heap(region: &Region<'_, System>) -> i64 {
    let Stats {
        bytes_allocated,
        bytes_deallocated,
        ..
    } = region.change();
    bytes_allocated as i64 - bytes_deallocated as i64
}

/// Runs commands together (one group commit, as concurrent clients
/// would), each answered with `handle seq`.
async fn run_all(engine: &Engine, commands: Vec<Command>) -> Vec<ObjectId> {
    let submitted = engine
        .start_all(
            commands
                .into_iter()
                .map(|command| (command, None))
                .collect(),
            Actor::System,
        )
        .await;
    let mut ids = Vec::with_capacity(submitted.len());
    for submitted in submitted {
        match engine.settle(submitted).await {
            Outcome::Answered { status: 201, body } => {
                let text = String::from_utf8(body).unwrap();
                let (handle, seq) = text.split_once(' ').unwrap();
                ids.push(ObjectId {
                    account: AccountHandle::from_raw(handle.parse().unwrap()),
                    seq: seq.parse().unwrap(),
                });
            }
            other => panic!("refused: {other:?}"),
        }
    }
    ids
}

/// `count` purchases on the account, `batch` at a time: each created,
/// completed and spent by a charge of its credits.
async fn buy(engine: &Engine, buyer: &AccountId, count: usize, batch: usize, credits: Credits) {
    for _ in 0..count / batch {
        let created = run_all(
            engine,
            (0..batch)
                .map(|_| Command::CreatePurchase {
                    account: buyer.clone(),
                    package: PackageId::parse("small").unwrap(),
                })
                .collect(),
        )
        .await;
        run_all(
            engine,
            created
                .into_iter()
                .map(|purchase| Command::CompletePurchase { purchase })
                .collect(),
        )
        .await;
        run_all(
            engine,
            (0..batch)
                .map(|_| Command::Charge {
                    account: buyer.clone(),
                    amount: Amount::Credits(credits),
                    member: None,
                    mode: ChargeMode::Strict,
                    metadata: Metadata::EMPTY,
                })
                .collect(),
        )
        .await;
    }
}

/// Waits for the store's background work to end: a history read has the
/// history index catch up first (its indexer holds up to a chunk of the
/// journal while it works, bounded, and not the engine's).
async fn caught_up(engine: &Engine) {
    engine
        .query(|store| {
            store.entries(&EntryQuery {
                account: AccountHandle::from_raw(0),
                types: Vec::new(),
                before_seq: None,
                limit: 1,
            })
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settled_purchases_leave_the_engines_memory() {
    let purchases: usize = std::env::var("PURSER_PURCHASES")
        .ok()
        .map_or(3_000, |text| {
            text.parse().expect("PURSER_PURCHASES: a number")
        });
    const BATCH: usize = 50;
    const WARM_UP: usize = 500;
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).unwrap());
    let options = Options {
        config: EngineConfig {
            shards: 2,
            partitions: 8,
            queue_capacity: 1_000,
            batch_limit: 256,
            idempotency_retention_seconds: 86_400,
            idempotency_purge_interval: Duration::from_secs(60),
            idempotency_cache_keys: 1_000,
            snapshot_every_entries: 20_000,
            event_retention_seconds: 30 * 86_400,
            request_timeout: Duration::from_secs(30),
            list_reads_per_second: 0,
            list_reads_burst: 1,
            portal_actions_per_minute: 0,
            portal_actions_burst: 1,
        },
        test_clock: false,
        accept_loss: false,
        catalog: Catalog::builtin(),
        render: Arc::new(Ids),
        observer: Arc::new(Unobserved),
    };
    let (engine, _) = Engine::open(store, options).unwrap();
    let buyer = AccountId::parse("buyer").unwrap();
    run_all(
        &engine,
        vec![Command::OpenAccount {
            id: buyer.clone(),
            name: None,
            tier: TierId::parse("free").unwrap(),
            anchor: None,
            member_monthly_cap: None,
            metadata: Metadata::EMPTY,
            low_balance_thresholds: None,
            auto_recharge: None,
        }],
    )
    .await;
    // The budget spent first, so each charge below spends one package.
    let budget = engine.catalog().tier("free").unwrap().monthly_credits;
    run_all(
        &engine,
        vec![Command::Charge {
            account: buyer.clone(),
            amount: Amount::Credits(budget),
            member: None,
            mode: ChargeMode::Strict,
            metadata: Metadata::EMPTY,
        }],
    )
    .await;
    let small = engine.catalog().package("small").unwrap().credits;
    // Caches, queues and buffers reach their working size first.
    buy(&engine, &buyer, WARM_UP, BATCH, small).await;
    caught_up(&engine).await;
    let region = Region::new(GLOBAL);
    let measured = (purchases.saturating_sub(WARM_UP) / BATCH).max(1) * BATCH;
    buy(&engine, &buyer, measured, BATCH, small).await;
    caught_up(&engine).await;
    let grown = heap(&region);
    let per_purchase = grown / measured as i64;
    println!(
        "{measured} purchases (after {WARM_UP}): the Rust heap grew {grown} bytes, \
         {per_purchase} bytes a purchase"
    );
    // A purchase and its spent grant kept in memory would be well over
    // 100 bytes, and anything kept per purchase, even a word, shows: the
    // heap may grow by less than 4 bytes a purchase in all (what grows here
    // is bounded: buffers at their high water).
    assert!(
        grown < 4 * measured as i64,
        "the engine keeps {per_purchase} bytes a settled purchase ({grown} over {measured})"
    );
}
