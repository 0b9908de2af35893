//! Golden fixtures for the binary journal codec ([`purser_store::codec`]):
//! the format is on disk forever, so a change to it must never be silent.
//!
//! `tests/fixtures/codec/` holds, one file each, the encoded form of
//!
//! - every entry of [`purser_store::conformance::sample_journal`]:
//!   `entry-NNN-<type>.bin`, `NNN` its index in the journal and `<type>` its
//!   [`Body::type_name`];
//! - every entry of [`extra_journal`] below, which adds the entry types the
//!   sample journal lacks (an account closed, a hold released, purchases
//!   failed and canceled) and the optional fields it leaves empty:
//!   `extra-NNN-<type>.bin`;
//! - partition snapshots ([`purser_store::encode_snapshot`]) taken from
//!   those journals: `snapshot-<name>.bin`.
//!
//! Each fixture must decode to exactly the value it was made from, and that
//! value (and the decoded one) must encode to the fixture byte for byte. The
//! files present must be exactly the expected ones: a missing or an extra
//! fixture fails, and so does an entry type of [`purser_core::TYPE_NAMES`]
//! that no fixture covers.
//!
//! Nothing is ever regenerated silently. After a deliberate change (to the
//! format, or to the core in a way that changes the sample journal), bless the
//! fixtures explicitly:
//!
//! ```text
//! PURSER_BLESS=1 cargo test -p purser-store --test golden
//! ```
//!
//! which rewrites every fixture, deletes stale `.bin` files, and says so on
//! stderr. Review the diff before committing it: a changed fixture means that
//! journals already on disk would no longer decode to what they were written
//! as (a format change needs a new `FORMAT_VERSION` and a decoder for the old
//! one).

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use purser_core::{
    AccountId, AccountSnapshot, AccountUpdate, Actor, Amount, Body, Catalog, ChargeMode, Command,
    Credits, Entry, Ledger, MemberId, Metadata, Notation, PackageId, TierId, Timestamp,
};
use purser_store::conformance::sample_journal;
use purser_store::{decode_entry, decode_snapshot, encode_entry, encode_snapshot};

/// The variable that makes these tests write the fixtures instead of failing.
const BLESS: &str = "PURSER_BLESS";

/// What to run after a deliberate change.
const HOW_TO_BLESS: &str = "if the change is deliberate, regenerate the fixtures with \
     `PURSER_BLESS=1 cargo test -p purser-store --test golden` and review the diff";

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/codec")
}

/// The value a fixture holds.
#[derive(Debug)]
enum Value {
    Entry(Box<Entry>),
    Snapshot(Vec<AccountSnapshot>),
}

#[derive(Debug)]
struct Fixture {
    name: String,
    value: Value,
}

impl Fixture {
    fn entry(prefix: &str, index: usize, entry: &Entry) -> Fixture {
        Fixture {
            name: format!("{prefix}-{index:03}-{}.bin", entry.body.type_name()),
            value: Value::Entry(Box::new(entry.clone())),
        }
    }

    fn snapshot(name: &str, journal: &[Entry]) -> Fixture {
        let mut ledger = Ledger::new(0, Arc::new(Catalog::builtin()));
        for entry in journal {
            ledger.apply(entry).expect("the journal replays");
        }
        Fixture {
            name: format!("snapshot-{name}.bin"),
            value: Value::Snapshot(ledger.snapshot()),
        }
    }

    /// The bytes the current encoder writes for the value.
    fn encoded(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        match &self.value {
            Value::Entry(entry) => encode_entry(entry, &mut bytes),
            Value::Snapshot(accounts) => encode_snapshot(accounts, &mut bytes),
        }
        bytes
    }

    /// Every way the committed bytes disagree with the value, if any.
    fn check(&self, bytes: &[u8]) -> Result<(), String> {
        let name = &self.name;
        let reencoded = match &self.value {
            Value::Entry(expected) => {
                let decoded = decode_entry(bytes).map_err(|e| format!("{name}: decode: {e}"))?;
                if decoded != **expected {
                    return Err(format!(
                        "{name}: decodes to\n{decoded:?}\nexpected\n{expected:?}"
                    ));
                }
                let mut out = Vec::new();
                encode_entry(&decoded, &mut out);
                out
            }
            Value::Snapshot(expected) => {
                let decoded = decode_snapshot(bytes).map_err(|e| format!("{name}: decode: {e}"))?;
                if &decoded != expected {
                    return Err(format!(
                        "{name}: decodes to\n{decoded:?}\nexpected\n{expected:?}"
                    ));
                }
                let mut out = Vec::new();
                encode_snapshot(&decoded, &mut out);
                out
            }
        };
        if reencoded != bytes {
            return Err(format!(
                "{name}: the decoded value re-encodes differently: {}",
                difference(bytes, &reencoded)
            ));
        }
        let encoded = self.encoded();
        if encoded != bytes {
            return Err(format!(
                "{name}: the expected value encodes differently: {}",
                difference(bytes, &encoded)
            ));
        }
        Ok(())
    }
}

/// Where two encodings part, briefly.
fn difference(committed: &[u8], now: &[u8]) -> String {
    let at = committed
        .iter()
        .zip(now)
        .position(|(a, b)| a != b)
        .unwrap_or(committed.len().min(now.len()));
    let around = |bytes: &[u8]| {
        let end = bytes.len().min(at + 8);
        format!("{:02x?}", &bytes[at.min(end)..end])
    };
    format!(
        "{} bytes committed, {} now; first difference at offset {at}: committed {} now {}",
        committed.len(),
        now.len(),
        around(committed),
        around(now),
    )
}

fn at(text: &str) -> Timestamp {
    Timestamp::parse_rfc3339(text).unwrap()
}

fn credits(text: &str) -> Credits {
    Credits::parse(text, Notation::String).unwrap()
}

fn metadata(pairs: &[(&str, &str)]) -> Metadata {
    Metadata::new(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string())),
    )
    .unwrap()
}

/// What the sample journal leaves out, made by the real core: an account
/// with a member cap and metadata, updated twice (metadata set and the cap
/// removed, then a name and a new cap), a member's hold released, a failed
/// and a canceled purchase, a recorded charge, the account closed.
fn extra_journal() -> Vec<Entry> {
    let mut ledger = Ledger::new(0, Arc::new(Catalog::builtin()));
    let mut out = Vec::new();
    let now = at("2026-11-02T12:30:00Z");
    let gamma = AccountId::parse("gamma").unwrap();
    let mut run = |command: Command| -> Entry {
        let receipt = ledger
            .execute(now, command, &mut out)
            .expect("extra command accepted");
        out[receipt.primary.expect("the command wrote an entry")].clone()
    };
    run(Command::OpenAccount {
        id: gamma.clone(),
        name: None,
        tier: TierId::parse("starter").unwrap(),
        anchor: Some(at("2026-11-01T00:00:00Z")),
        member_monthly_cap: Some(credits("50")),
        metadata: metadata(&[("region", "eu-west"), ("seats", "3")]),
        low_balance_thresholds: None,
        auto_recharge: None,
    });
    run(Command::UpdateAccount {
        account: gamma.clone(),
        update: AccountUpdate {
            name: None,
            metadata: Some(metadata(&[("region", "eu-central")])),
            member_monthly_cap: Some(None),
            low_balance_thresholds: None,
            auto_recharge: None,
        },
    });
    run(Command::UpdateAccount {
        account: gamma.clone(),
        update: AccountUpdate {
            name: Some("Gamma GmbH".into()),
            metadata: None,
            member_monthly_cap: Some(Some(credits("40"))),
            low_balance_thresholds: None,
            auto_recharge: None,
        },
    });
    let hold = run(Command::PlaceHold {
        account: gamma.clone(),
        amount: Amount::Credits(credits("7.25")),
        ttl_seconds: 900,
        member: Some(MemberId::parse("cat").unwrap()),
        metadata: metadata(&[("job", "j-1")]),
    });
    run(Command::ReleaseHold { hold: hold.id() });
    let failed = run(Command::CreatePurchase {
        account: gamma.clone(),
        package: PackageId::parse("medium").unwrap(),
    });
    run(Command::FailPurchase {
        purchase: failed.id(),
        reason: None,
    });
    let canceled = run(Command::CreatePurchase {
        account: gamma.clone(),
        package: PackageId::parse("large").unwrap(),
    });
    run(Command::CancelPurchase {
        purchase: canceled.id(),
    });
    run(Command::Charge {
        account: gamma.clone(),
        amount: Amount::Credits(credits("1.5")),
        member: None,
        mode: ChargeMode::Record,
        metadata: Metadata::EMPTY,
    });
    run(Command::CloseAccount { account: gamma });
    out
}

/// An account with its own low-balance thresholds (entry tags 17 and 18,
/// snapshot version 2): opened with them, changed, then back to its tier's;
/// each entry with its actor (entry version 2).
fn thresholds_journal() -> Vec<Entry> {
    let mut ledger = Ledger::new(0, Arc::new(Catalog::builtin()));
    let mut out = Vec::new();
    let now = at("2026-11-03T08:00:00Z");
    let delta = AccountId::parse("delta").unwrap();
    // Each entry records its actor too (entry version 2).
    let actors = [
        Arc::new(Actor::ApiKey("key_0123456789ab".into())),
        Arc::new(Actor::Portal("ps_00112233445566778899aabbccddeeff".into())),
        Actor::system(),
    ];
    let mut next = 0;
    let mut run = |command: Command| {
        let actor = &actors[next % actors.len()];
        next += 1;
        ledger
            .execute_as(now, command, Some(actor), &mut out, None)
            .expect("thresholds command accepted");
    };
    run(Command::OpenAccount {
        id: delta.clone(),
        name: None,
        tier: TierId::parse("pro").unwrap(),
        anchor: None,
        member_monthly_cap: None,
        metadata: Metadata::EMPTY,
        low_balance_thresholds: Some(vec![credits("500"), credits("50.000001")]),
        auto_recharge: None,
    });
    let update = |thresholds| AccountUpdate {
        name: None,
        metadata: None,
        member_monthly_cap: None,
        low_balance_thresholds: Some(thresholds),
        auto_recharge: None,
    };
    run(Command::UpdateAccount {
        account: delta.clone(),
        update: update(Some(vec![credits("100")])),
    });
    run(Command::UpdateAccount {
        account: delta,
        update: update(None),
    });
    out
}

/// A package partly refunded twice, then fully (entry tag 19, void reason
/// 3, snapshot version 3).
fn refunds_journal() -> Vec<Entry> {
    let mut ledger = Ledger::new(0, Arc::new(Catalog::builtin()));
    let mut out = Vec::new();
    let now = at("2026-11-20T09:00:00Z");
    let echo = AccountId::parse("echo").unwrap();
    let mut run = |command: Command, out: &mut Vec<Entry>| {
        ledger
            .execute(now, command, out)
            .expect("refunds command accepted")
    };
    run(
        Command::OpenAccount {
            id: echo.clone(),
            name: None,
            tier: TierId::parse("starter").unwrap(),
            anchor: None,
            member_monthly_cap: None,
            metadata: Metadata::EMPTY,
            low_balance_thresholds: None,
            auto_recharge: None,
        },
        &mut out,
    );
    run(
        Command::CreatePurchase {
            account: echo.clone(),
            package: purser_core::PackageId::parse("small").unwrap(),
        },
        &mut out,
    );
    let purchase = out.last().expect("the purchase").id();
    run(Command::CompletePurchase { purchase }, &mut out);
    for refunded in [300, 450] {
        run(
            Command::RefundPurchase {
                purchase,
                share: Some(purser_core::RefundedShare {
                    refunded,
                    paid: 900,
                }),
            },
            &mut out,
        );
    }
    out
}

/// Auto-recharge (entry tags 20 to 23, snapshot version 4): opened with
/// it, a charge below its threshold makes a purchase, its payment fails
/// (action required), the next one completes, the monthly limit is told,
/// then the setting changes.
fn recharge_journal() -> Vec<Entry> {
    let mut ledger = Ledger::new(0, Arc::new(Catalog::builtin()));
    let mut out = Vec::new();
    let now = at("2026-11-25T09:00:00Z");
    let foxtrot = AccountId::parse("foxtrot").unwrap();
    let config = |enabled| purser_core::AutoRechargeConfig {
        enabled,
        threshold: credits("50"),
        package: purser_core::PackageId::parse("small").unwrap(),
        max_per_month: Some(2),
    };
    let mut run = |command: Command, out: &mut Vec<Entry>| {
        ledger
            .execute(now, command, out)
            .expect("recharge command accepted")
    };
    let charge = |credits_text: &str| Command::Charge {
        account: AccountId::parse("foxtrot").unwrap(),
        amount: Amount::Credits(credits(credits_text)),
        member: None,
        mode: ChargeMode::Strict,
        metadata: Metadata::EMPTY,
    };
    run(
        Command::OpenAccount {
            id: foxtrot.clone(),
            name: None,
            tier: TierId::parse("starter").unwrap(),
            anchor: None,
            member_monthly_cap: None,
            metadata: Metadata::EMPTY,
            low_balance_thresholds: Some(vec![credits("20")]),
            auto_recharge: Some(Box::new(config(true))),
        },
        &mut out,
    );
    let made = |out: &[Entry]| {
        out.iter()
            .rev()
            .find(|e| matches!(&e.body, Body::PurchaseCreated(p) if p.auto_recharge))
            .expect("a recharge")
            .id()
    };
    run(charge("60"), &mut out);
    let first = made(&out);
    run(
        Command::FailPurchase {
            purchase: first,
            reason: Some(purser_core::RechargeFailure::ActionRequired),
        },
        &mut out,
    );
    run(charge("1"), &mut out);
    let second = made(&out);
    run(Command::CompletePurchase { purchase: second }, &mut out);
    run(charge("200"), &mut out);
    run(
        Command::UpdateAccount {
            account: foxtrot,
            update: AccountUpdate {
                name: None,
                metadata: None,
                member_monthly_cap: None,
                low_balance_thresholds: Some(None),
                auto_recharge: Some(Some(Box::new(config(false)))),
            },
        },
        &mut out,
    );
    out
}

/// Every fixture, in a fixed order, made afresh from the core.
fn expected() -> Vec<Fixture> {
    let sample = sample_journal();
    let extra = extra_journal();
    let mut fixtures: Vec<Fixture> = sample
        .iter()
        .enumerate()
        .map(|(index, entry)| Fixture::entry("entry", index, entry))
        .collect();
    // Recorded before the balances after an entry counted grants due to
    // expire at its instant (until their expiry's own entry): the bytes
    // stay, and say what those entries recorded then (replay accepts both).
    for (name, available) in [("entry-024-rollover.bin", 250), ("entry-028-expire.bin", 0)] {
        let fixture = fixtures
            .iter_mut()
            .find(|fixture| fixture.name == name)
            .expect("a fixture recorded the old way");
        let Value::Entry(entry) = &mut fixture.value else {
            unreachable!("an entry fixture")
        };
        entry.balance_after.available = purser_core::CreditSum::from_micros(available * 1_000_000);
    }
    fixtures.extend(
        extra
            .iter()
            .enumerate()
            .map(|(index, entry)| Fixture::entry("extra", index, entry)),
    );
    let thresholds = thresholds_journal();
    fixtures.extend(
        thresholds
            .iter()
            .enumerate()
            .map(|(index, entry)| Fixture::entry("thresholds", index, entry)),
    );
    let refunds = refunds_journal();
    fixtures.extend(
        refunds
            .iter()
            .enumerate()
            .map(|(index, entry)| Fixture::entry("refunds", index, entry)),
    );
    let recharge = recharge_journal();
    fixtures.extend(
        recharge
            .iter()
            .enumerate()
            .map(|(index, entry)| Fixture::entry("recharge", index, entry)),
    );
    // The first point of the sample where a downgrade is pending: a hold, a
    // purchase, member usage and a reversal are in the snapshot too.
    let pending = sample
        .iter()
        .position(|entry| matches!(entry.body, Body::TierScheduled(Some(_))))
        .expect("the sample schedules a downgrade");
    fixtures.extend([
        Fixture {
            name: "snapshot-empty.bin".into(),
            value: Value::Snapshot(Vec::new()),
        },
        // Where the conformance suite snapshots (debt outstanding, a hold open).
        Fixture::snapshot("half", &sample[..sample.len() / 2]),
        Fixture::snapshot("pending-tier", &sample[..=pending]),
        Fixture::snapshot("full", &sample),
        Fixture::snapshot("extra", &extra),
        // With the account's own thresholds (version 2), and after they
        // went back to the tier's.
        Fixture::snapshot("thresholds", &thresholds[..2]),
        Fixture::snapshot("thresholds-cleared", &thresholds),
        // A purchase partly refunded (version 3).
        Fixture::snapshot("refunds", &refunds),
        // Auto-recharge (version 4), with a recharge in flight.
        Fixture::snapshot("recharge-in-flight", &recharge[..3]),
        Fixture::snapshot("recharge", &recharge),
    ]);
    fixtures
}

/// The expected fixtures; with `PURSER_BLESS=1`, written to disk first (once
/// per test run, whichever test gets here first).
fn fixtures() -> &'static [Fixture] {
    static FIXTURES: OnceLock<Vec<Fixture>> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        let fixtures = expected();
        if std::env::var_os(BLESS).is_some_and(|v| v == "1") {
            bless(&fixtures);
        }
        fixtures
    })
}

#[expect(
    clippy::explicit_write,
    reason = "the test harness captures eprintln!: blessing must be seen"
)]
fn bless(fixtures: &[Fixture]) {
    let dir = fixture_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let names: BTreeSet<&str> = fixtures.iter().map(|f| f.name.as_str()).collect();
    let mut removed = Vec::new();
    for name in files_in(&dir) {
        if name.ends_with(".bin") && !names.contains(name.as_str()) {
            std::fs::remove_file(dir.join(&name)).unwrap();
            removed.push(name);
        }
    }
    let mut changed = 0;
    for fixture in fixtures {
        let path = dir.join(&fixture.name);
        let bytes = fixture.encoded();
        if std::fs::read(&path).ok().as_deref() != Some(&bytes[..]) {
            std::fs::write(&path, &bytes).unwrap();
            changed += 1;
        }
    }
    writeln!(
        std::io::stderr(),
        "{BLESS}=1: blessed {} codec fixtures in {} ({changed} written, {} stale removed{}{})",
        fixtures.len(),
        dir.display(),
        removed.len(),
        if removed.is_empty() { "" } else { ": " },
        removed.join(", "),
    )
    .unwrap();
}

/// The names of the files in `dir` (none if it does not exist).
fn files_in(dir: &Path) -> BTreeSet<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return BTreeSet::new();
    };
    entries
        .map(|entry| entry.unwrap())
        .filter(|entry| entry.file_type().unwrap().is_file())
        .map(|entry| entry.file_name().into_string().unwrap())
        .collect()
}

fn check_all(select: impl Fn(&Value) -> bool) {
    let dir = fixture_dir();
    let mut problems = Vec::new();
    let mut checked = 0;
    for fixture in fixtures().iter().filter(|f| select(&f.value)) {
        checked += 1;
        match std::fs::read(dir.join(&fixture.name)) {
            Ok(bytes) => problems.extend(fixture.check(&bytes).err()),
            Err(error) => problems.push(format!("{}: {error}", fixture.name)),
        }
    }
    assert!(checked > 0, "no fixture selected");
    assert!(
        problems.is_empty(),
        "{} of {checked} codec fixtures in {} do not match:\n{}\n{HOW_TO_BLESS}",
        problems.len(),
        dir.display(),
        problems.join("\n"),
    );
}

#[test]
fn entry_fixtures_decode_to_the_sample_entries_and_reencode_identically() {
    check_all(|value| matches!(value, Value::Entry(_)));
}

#[test]
fn snapshot_fixtures_decode_to_the_sample_snapshots_and_reencode_identically() {
    check_all(|value| matches!(value, Value::Snapshot(_)));
}

#[test]
fn the_fixture_files_are_exactly_the_expected_ones() {
    let dir = fixture_dir();
    let expected: BTreeSet<String> = fixtures().iter().map(|f| f.name.clone()).collect();
    assert_eq!(
        expected.len(),
        fixtures().len(),
        "two fixtures share a name"
    );
    let present = files_in(&dir);
    let missing: Vec<&String> = expected.difference(&present).collect();
    let extra: Vec<&String> = present.difference(&expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "the codec fixtures in {} differ from the sample journal: missing {missing:?}, \
         unexpected {extra:?}\n{HOW_TO_BLESS}",
        dir.display(),
    );
}

#[test]
fn every_entry_type_has_a_fixture() {
    let covered: BTreeSet<&str> = fixtures()
        .iter()
        .filter_map(|fixture| match &fixture.value {
            Value::Entry(entry) => Some(entry.body.type_name()),
            Value::Snapshot(_) => None,
        })
        .collect();
    let missing: Vec<&str> = purser_core::TYPE_NAMES
        .iter()
        .copied()
        .filter(|name| !covered.contains(name))
        .collect();
    assert!(
        missing.is_empty(),
        "no codec fixture has an entry of type {missing:?}: add one to the sample journal \
         (purser_store::conformance::sample_journal) or to extra_journal in this file, then bless"
    );
    let unknown: Vec<&str> = covered
        .iter()
        .copied()
        .filter(|name| !purser_core::TYPE_NAMES.contains(name))
        .collect();
    assert!(
        unknown.is_empty(),
        "types missing from TYPE_NAMES: {unknown:?}"
    );
}

#[test]
fn snapshot_fixtures_cover_every_part_of_an_account() {
    let accounts: Vec<&AccountSnapshot> = fixtures()
        .iter()
        .filter_map(|fixture| match &fixture.value {
            Value::Snapshot(accounts) => Some(accounts),
            Value::Entry(_) => None,
        })
        .flatten()
        .collect();
    type Part = (&'static str, fn(&AccountSnapshot) -> bool);
    let parts: [Part; 11] = [
        ("a pending tier", |a| a.pending_tier.is_some()),
        ("a closed account", |a| {
            a.status == purser_core::AccountStatus::Closed
        }),
        ("a member cap", |a| a.member_monthly_cap.is_some()),
        ("metadata", |a| a.metadata != Metadata::EMPTY),
        ("debt", |a| a.debt > Credits::ZERO),
        ("grants", |a| !a.grants.is_empty()),
        ("holds", |a| !a.holds.is_empty()),
        ("purchases", |a| !a.purchases.is_empty()),
        ("member usage", |a| !a.member_usage.is_empty()),
        ("reversed debits", |a| !a.reversed.is_empty()),
        ("two accounts", |a| a.handle.index() > 0),
    ];
    let missing: Vec<&str> = parts
        .iter()
        .filter(|(_, has)| !accounts.iter().any(|a| has(a)))
        .map(|(name, _)| *name)
        .collect();
    assert!(missing.is_empty(), "no snapshot fixture has {missing:?}");
}
