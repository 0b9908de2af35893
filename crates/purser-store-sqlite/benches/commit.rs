//! The store's commit path: one group commit (one transaction, one fsync) of
//! a batch of real debit entries, over 10,000 accounts or one hot account.
//! Throughput is in entries per second.

use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use purser_core::{
    AccountId, Amount, Catalog, ChargeMode, Command, Credits, Entry, Ledger, Metadata, Notation,
    TierId, Timestamp,
};
use purser_store::{Commit, Store};
use purser_store_sqlite::SqliteStore;

/// A ledger with `accounts` business accounts, and a generator of charges.
struct Workload {
    ledger: Ledger,
    ids: Vec<AccountId>,
    now: Timestamp,
    next: usize,
}

impl Workload {
    fn new(store: &SqliteStore, accounts: usize) -> Workload {
        let mut ledger = Ledger::new(0, Arc::new(Catalog::builtin()));
        let now = Timestamp::parse_rfc3339("2026-11-24T12:00:00Z").unwrap();
        let mut out = Vec::new();
        let ids: Vec<AccountId> = (0..accounts)
            .map(|i| AccountId::parse(&format!("acct-{i}")).unwrap())
            .collect();
        for id in &ids {
            let command = Command::OpenAccount {
                id: id.clone(),
                name: None,
                tier: TierId::parse("business").unwrap(),
                anchor: None,
                member_monthly_cap: None,
                metadata: Metadata::EMPTY,
                low_balance_thresholds: None,
                auto_recharge: None,
            };
            ledger.execute(now, command, &mut out).unwrap();
        }
        store
            .commit(Commit {
                entries: &out,
                idempotency: &[],
                events: &[],
                settled: &[],
                snapshots: &[],
            })
            .unwrap();
        Workload {
            ledger,
            ids,
            now,
            next: 0,
        }
    }

    /// `size` charges spread over the accounts in a fixed pseudo-random order.
    fn batch(&mut self, size: usize) -> Vec<Entry> {
        let mut out = Vec::with_capacity(size);
        let credits = Credits::parse("0.001", Notation::String).unwrap();
        for _ in 0..size {
            self.next = (self.next * 7919 + 104_729) % self.ids.len().max(1);
            let command = Command::Charge {
                account: self.ids[self.next].clone(),
                amount: Amount::Credits(credits),
                member: None,
                mode: ChargeMode::Strict,
                metadata: Metadata::EMPTY,
            };
            self.ledger.execute(self.now, command, &mut out).unwrap();
        }
        out
    }
}

fn commits(c: &mut Criterion) {
    let mut group = c.benchmark_group("commit");
    group.sample_size(20);
    for (accounts, size) in [(10_000, 64), (10_000, 512), (1, 512)] {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let mut workload = Workload::new(&store, accounts);
        group.throughput(Throughput::Elements(size as u64));
        group.bench_function(format!("{accounts}_accounts_{size}_per_commit"), |b| {
            b.iter_batched(
                || workload.batch(size),
                |entries| {
                    store
                        .commit(Commit {
                            entries: &entries,
                            idempotency: &[],
                            events: &[],
                            settled: &[],
                            snapshots: &[],
                        })
                        .unwrap()
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

/// What the checked journal adds to a commit: encoding the batch (done
/// anyway) and sealing it (a checksum per entry, the chain hash).
fn sealing(c: &mut Criterion) {
    let mut group = c.benchmark_group("seal");
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let mut workload = Workload::new(&store, 10_000);
    let entries = workload.batch(512);
    let bodies: Vec<Vec<u8>> = entries
        .iter()
        .map(|entry| {
            let mut body = Vec::new();
            purser_store::encode_entry(entry, &mut body);
            body
        })
        .collect();
    group.throughput(Throughput::Elements(entries.len() as u64));
    group.bench_function("encode_512_debits", |b| {
        b.iter(|| {
            let mut buffer = Vec::with_capacity(512 * 160);
            for entry in &entries {
                purser_store::encode_entry(entry, &mut buffer);
            }
            buffer
        })
    });
    group.bench_function("seal_512_debits", |b| {
        b.iter(|| {
            purser_store::seal(
                &purser_store::GENESIS,
                0,
                entries
                    .iter()
                    .zip(&bodies)
                    .map(|(entry, body)| (entry.account.raw(), entry.seq, body)),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, commits, sealing);
criterion_main!(benches);
