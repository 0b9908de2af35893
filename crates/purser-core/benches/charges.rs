//! The core alone: strict charges per second on one hot account and spread
//! over a million accounts. Each charge is decided, applied, journaled into a
//! reused buffer and invariant-checked, as in the server's shard writer.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use purser_core::{
    AccountId, Amount, Catalog, ChargeMode, Command, Credits, Entry, Ledger, Metadata, Notation,
    Package, PackageId, Task, TaskId, Tier, TierId, Timestamp,
};

const ACCOUNTS: usize = 1_000_000;

fn catalog() -> Arc<Catalog> {
    let credits = |text: &str| Credits::parse(text, Notation::String).unwrap();
    let tier = Tier {
        id: TierId::parse("unlimited").unwrap(),
        name: "Unlimited".into(),
        monthly_credits: credits("1000000000000"),
        price: credits("0"),
        member_monthly_cap: None,
        rollover_cap: credits("0"),
        low_balance_thresholds: None,
        stripe_price: None,
    };
    let package = Package {
        id: PackageId::parse("small").unwrap(),
        name: "Small".into(),
        credits: credits("200"),
        price: credits("9"),
    };
    let task = Task {
        id: TaskId::parse("assistant_message").unwrap(),
        name: "Assistant message".into(),
        unit: "message".into(),
        credits_per_unit: credits("0.5"),
        minimum: None,
    };
    Arc::new(Catalog::new("USD".into(), vec![tier], vec![package], vec![task]).unwrap())
}

fn open(ledger: &mut Ledger, now: Timestamp, id: &AccountId, out: &mut Vec<Entry>) {
    let command = Command::OpenAccount {
        id: id.clone(),
        name: None,
        tier: TierId::parse("unlimited").unwrap(),
        anchor: None,
        member_monthly_cap: None,
        metadata: Metadata::EMPTY,
        low_balance_thresholds: None,
        auto_recharge: None,
    };
    ledger.execute(now, command, out).unwrap();
}

fn charge(id: &AccountId, amount: &Amount) -> Command {
    Command::Charge {
        account: id.clone(),
        amount: amount.clone(),
        member: None,
        mode: ChargeMode::Strict,
        metadata: Metadata::EMPTY,
    }
}

/// The journal buffer is drained like a commit batch would drain it.
fn drain(out: &mut Vec<Entry>) {
    if out.len() >= 1024 {
        out.clear();
    }
}

fn one_account(c: &mut Criterion) {
    let now = Timestamp::parse_rfc3339("2026-11-24T12:00:00Z").unwrap();
    let mut group = c.benchmark_group("charge");
    group.throughput(Throughput::Elements(1));
    let id = AccountId::parse("hot").unwrap();
    let mut ledger = Ledger::new(0, catalog());
    let mut out = Vec::with_capacity(2048);
    open(&mut ledger, now, &id, &mut out);
    let credits = Amount::Credits(Credits::from_units(1).unwrap());
    group.bench_function("one_account_credits", |b| {
        b.iter(|| {
            let receipt = ledger
                .execute(now, charge(&id, &credits), &mut out)
                .unwrap();
            drain(&mut out);
            black_box(receipt)
        })
    });
    // As the server runs it: the command's events derived too (the
    // outbox's cost on the charge path).
    let mut events = Vec::with_capacity(64);
    group.bench_function("one_account_credits_with_events", |b| {
        b.iter(|| {
            let receipt = ledger
                .execute_observed(now, charge(&id, &credits), &mut out, Some(&mut events))
                .unwrap();
            drain(&mut out);
            events.clear();
            black_box(receipt)
        })
    });
    let task = Amount::Task {
        task: TaskId::parse("assistant_message").unwrap(),
        quantity: purser_core::Quantity::from_units(3).unwrap(),
    };
    group.bench_function("one_account_task", |b| {
        b.iter(|| {
            let receipt = ledger.execute(now, charge(&id, &task), &mut out).unwrap();
            drain(&mut out);
            black_box(receipt)
        })
    });
    group.finish();
}

fn many_accounts(c: &mut Criterion) {
    let now = Timestamp::parse_rfc3339("2026-11-24T12:00:00Z").unwrap();
    let mut ledger = Ledger::new(0, catalog());
    let mut out = Vec::with_capacity(2048);
    let ids: Vec<AccountId> = (0..ACCOUNTS)
        .map(|i| AccountId::parse(&format!("acct-{i}")).unwrap())
        .collect();
    for id in &ids {
        open(&mut ledger, now, id, &mut out);
        drain(&mut out);
    }
    drop(ids);
    // A fixed pseudo-random visiting order (xorshift), so runs compare.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let order: Vec<usize> = (0..ACCOUNTS)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % ACCOUNTS as u64) as usize
        })
        .collect();
    let credits = Amount::Credits(Credits::from_units(1).unwrap());
    let mut group = c.benchmark_group("charge");
    group.throughput(Throughput::Elements(1));
    let mut next = 0usize;
    let mut text = String::with_capacity(64);
    group.bench_function("million_accounts", |b| {
        b.iter(|| {
            // As the server does: the id is parsed from the request at hand.
            use std::fmt::Write;
            text.clear();
            write!(text, "acct-{}", order[next % ACCOUNTS]).unwrap();
            next += 1;
            let id = AccountId::parse(&text).unwrap();
            let receipt = ledger
                .execute(now, charge(&id, &credits), &mut out)
                .unwrap();
            drain(&mut out);
            black_box(receipt)
        })
    });
    group.finish();
}

criterion_group!(benches, one_account, many_accounts);
criterion_main!(benches);
