//! The conformance suite: every backend runs these checks on a fresh store
//! (see [`crate::conformance_tests!`]). They use the real core to produce
//! journals with every kind of entry, so no backend is tested on made-up data.

use std::sync::Arc;

use purser_core::{
    AccountHandle, AccountId, AccountUpdate, Amount, CaptureAmount, Catalog, ChargeMode, Command,
    Credits, DebitRecord, Entry, GrantKind, Ledger, MemberId, Metadata, Notation, PackageId,
    Proration, PurchaseStatus, Quantity, Settled, TaskId, TierId, Timestamp,
};

use crate::{
    ApiKeyRecord, Commit, EntryQuery, EventQuery, EventRecord, GroupBy, IdempotencyRecord,
    SettledKind, SettledRecord, Store, UsageQuery, decode_entry, encode_entry,
};

/// Generates one `#[test]` per conformance check for a backend; `$make` is an
/// expression producing a fresh store (`Box<dyn Store>` or anything that derefs to a `Store`).
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        #[test]
        fn conformance_commits_replay_in_order() {
            $crate::conformance::commits_replay_in_order(&*$make);
        }
        #[test]
        fn conformance_entry_lookup_and_pages() {
            $crate::conformance::entry_lookup_and_pages(&*$make);
        }
        #[test]
        fn conformance_usage_summaries() {
            $crate::conformance::usage_summaries(&*$make);
        }
        #[test]
        fn conformance_idempotency_records() {
            $crate::conformance::idempotency_records(&*$make);
        }
        #[test]
        fn conformance_snapshots_and_tails() {
            $crate::conformance::snapshots_and_tails(&*$make);
        }
        #[test]
        fn conformance_outbox_events() {
            $crate::conformance::outbox_events(&*$make);
        }
        #[test]
        fn conformance_webhook_deliveries() {
            $crate::conformance::webhook_deliveries(&*$make);
        }
        #[test]
        fn conformance_settled_objects() {
            $crate::conformance::settled_objects(&*$make);
        }
        #[test]
        fn conformance_api_keys_and_settings() {
            $crate::conformance::api_keys_and_settings(&*$make);
        }
    };
}

fn at(text: &str) -> Timestamp {
    Timestamp::parse_rfc3339(text).unwrap()
}

fn credits(text: &str) -> Credits {
    Credits::parse(text, Notation::String).unwrap()
}

/// A journal with every entry type: two accounts, charges by task and member,
/// holds, captures, releases, expiries, renewals, rollovers, purchases,
/// refunds, voids, reversals, debt, tier changes and account updates.
pub fn sample_journal() -> Vec<Entry> {
    let mut ledger = Ledger::new(0, Arc::new(Catalog::builtin()));
    let mut out = Vec::new();
    let mut now = at("2026-10-05T09:00:00Z");
    let acme = AccountId::parse("acme").unwrap();
    let beta = AccountId::parse("beta").unwrap();
    let mut run = |ledger: &mut Ledger, now: Timestamp, command: Command| -> Option<Entry> {
        let receipt = ledger
            .execute(now, command, &mut out)
            .expect("sample command accepted");
        receipt.primary.map(|index| out[index].clone())
    };
    for (id, tier) in [(&acme, "pro"), (&beta, "free")] {
        run(
            &mut ledger,
            now,
            Command::OpenAccount {
                id: id.clone(),
                name: Some(format!("{id} Inc.")),
                tier: TierId::parse(tier).unwrap(),
                anchor: None,
                member_monthly_cap: None,
                metadata: Metadata::new([("plan".to_string(), tier.to_string())]).unwrap(),
                low_balance_thresholds: None,
                auto_recharge: None,
            },
        );
    }
    let charge = |account: &AccountId, task: &str, quantity: u64, member: Option<&str>, mode| {
        Command::Charge {
            account: account.clone(),
            amount: Amount::Task {
                task: TaskId::parse(task).unwrap(),
                quantity: Quantity::from_units(quantity).unwrap(),
            },
            member: member.map(|m| MemberId::parse(m).unwrap()),
            mode,
            metadata: Metadata::EMPTY,
        }
    };
    let first = run(
        &mut ledger,
        now,
        charge(
            &acme,
            "assistant_message",
            10,
            Some("ann"),
            ChargeMode::Strict,
        ),
    )
    .unwrap();
    run(
        &mut ledger,
        now,
        charge(
            &acme,
            "transcribe_video",
            30,
            Some("bob"),
            ChargeMode::Strict,
        ),
    );
    now = at("2026-10-06T10:00:00Z");
    run(
        &mut ledger,
        now,
        charge(
            &acme,
            "generate_documentation",
            4,
            Some("ann"),
            ChargeMode::Strict,
        ),
    );
    let hold = run(
        &mut ledger,
        now,
        Command::PlaceHold {
            account: acme.clone(),
            amount: Amount::Task {
                task: TaskId::parse("crawl_data").unwrap(),
                quantity: Quantity::from_units(100).unwrap(),
            },
            ttl_seconds: 600,
            member: None,
            metadata: Metadata::EMPTY,
        },
    )
    .unwrap();
    run(
        &mut ledger,
        now,
        Command::CaptureHold {
            hold: hold.id(),
            amount: CaptureAmount::Quantity(Quantity::from_units(60).unwrap()),
            mode: ChargeMode::Strict,
        },
    );
    run(
        &mut ledger,
        now,
        Command::PlaceHold {
            account: acme.clone(),
            amount: Amount::Credits(credits("5")),
            ttl_seconds: 60,
            member: None,
            metadata: Metadata::EMPTY,
        },
    );
    let purchase = run(
        &mut ledger,
        now,
        Command::CreatePurchase {
            account: beta.clone(),
            package: PackageId::parse("small").unwrap(),
        },
    )
    .unwrap();
    run(
        &mut ledger,
        now,
        Command::CompletePurchase {
            purchase: purchase.id(),
        },
    );
    run(
        &mut ledger,
        now,
        charge(&beta, "analyze_knowledge", 20, None, ChargeMode::Record),
    );
    run(
        &mut ledger,
        now,
        Command::RefundPurchase {
            purchase: purchase.id(),
            share: None,
        },
    );
    run(
        &mut ledger,
        now,
        charge(&beta, "crawl_data", 1000, None, ChargeMode::Record),
    );
    let grant = run(
        &mut ledger,
        now,
        Command::IssueGrant {
            account: beta.clone(),
            kind: GrantKind::Promo,
            credits: credits("500"),
            expires_at: Some(at("2026-12-01T00:00:00Z")),
            priority: None,
            reason: "sorry for the outage".into(),
        },
    )
    .unwrap();
    run(&mut ledger, now, Command::VoidGrant { grant: grant.id() });
    let debit = match &first.body {
        purser_core::Body::Debited(debit) => debit.clone(),
        _ => unreachable!(),
    };
    run(
        &mut ledger,
        now,
        Command::Reverse {
            debit: DebitRecord {
                id: first.id(),
                at: first.at,
                credits: debit.credits,
                allocations: debit.allocations,
                debt_incurred: debit.debt_incurred,
                member: debit.member,
            },
            credits: Some(credits("2")),
        },
    );
    run(
        &mut ledger,
        now,
        Command::ChangeTier {
            account: acme.clone(),
            tier: TierId::parse("starter").unwrap(),
            proration: Proration::Full,
        },
    );
    run(
        &mut ledger,
        now,
        Command::UpdateAccount {
            account: acme.clone(),
            update: AccountUpdate {
                name: Some("Acme Corp".into()),
                ..AccountUpdate::default()
            },
        },
    );
    // Two renewals: expiries, a rollover, the scheduled downgrade.
    now = at("2026-12-05T09:00:00Z");
    for account in [AccountHandle::new(0, 0), AccountHandle::new(0, 1)] {
        run(&mut ledger, now, Command::Advance { account });
    }
    run(
        &mut ledger,
        now,
        charge(&acme, "assistant_message", 1, None, ChargeMode::Strict),
    );
    out
}

/// What a settling ledger (a server's) sends to the store for one account:
/// its entries and the objects that left its memory after them, as
/// versions: a canceled purchase, then the package grant a charge spent
/// and its completed purchase.
pub fn settled_sample() -> (Vec<Entry>, Vec<SettledRecord>) {
    let mut ledger = Ledger::new(0, Arc::new(Catalog::builtin()));
    ledger.set_settling(true);
    let now = at("2026-10-05T09:00:00Z");
    let buyer = AccountId::parse("buyer").unwrap();
    let mut entries = Vec::new();
    let mut settled = Vec::new();
    let mut run = |command: Command| -> Entry {
        let start = entries.len();
        let receipt = ledger
            .execute(now, command, &mut entries)
            .expect("sample command accepted");
        if let Some(batch) = ledger.settle(receipt.account, &[], &entries[start..]) {
            settled.extend(batch.objects.into_iter().map(|object| SettledRecord {
                account: batch.account,
                as_of: batch.as_of,
                object,
            }));
        }
        entries[receipt.primary.expect("an entry")].clone()
    };
    run(Command::OpenAccount {
        id: buyer.clone(),
        name: None,
        tier: TierId::parse("free").unwrap(),
        anchor: None,
        member_monthly_cap: None,
        metadata: Metadata::EMPTY,
        low_balance_thresholds: None,
        auto_recharge: None,
    });
    let buy = || Command::CreatePurchase {
        account: buyer.clone(),
        package: PackageId::parse("small").unwrap(),
    };
    let canceled = run(buy());
    run(Command::CancelPurchase {
        purchase: canceled.id(),
    });
    let completed = run(buy());
    run(Command::CompletePurchase {
        purchase: completed.id(),
    });
    run(Command::Charge {
        account: buyer.clone(),
        amount: Amount::Credits(credits("100000")),
        member: None,
        mode: ChargeMode::Record,
        metadata: Metadata::EMPTY,
    });
    (entries, settled)
}

/// Settled objects: each version read back from its position on, the
/// newest at or before a point chosen, pages of one kind newest first,
/// a version stored again replaced, nothing of another account.
pub fn settled_objects(store: &dyn Store) {
    let (entries, records) = settled_sample();
    let shapes: Vec<_> = records
        .iter()
        .map(|r| match &r.object {
            Settled::Purchase(purchase) => (SettledKind::Purchase, Some(purchase.status)),
            Settled::Grant(_) => (SettledKind::Grant, None),
        })
        .collect();
    assert_eq!(
        shapes,
        [
            (SettledKind::Purchase, Some(PurchaseStatus::Canceled)),
            (SettledKind::Grant, None),
            (SettledKind::Purchase, Some(PurchaseStatus::Completed)),
        ],
        "the sample settles a canceled purchase, then a spent grant and its purchase"
    );
    let (canceled, grant, completed) = (&records[0], &records[1], &records[2]);
    store
        .commit(Commit {
            entries: &entries,
            idempotency: &[],
            events: &[],
            settled: &records,
            snapshots: &[],
        })
        .unwrap();
    let account = canceled.account;
    for record in &records {
        let seq = record.seq();
        for as_of in [record.as_of, record.as_of + 5, u64::MAX] {
            assert_eq!(
                store.settled(account, seq, as_of).unwrap().as_ref(),
                Some(record)
            );
        }
        // Before it left, it was in memory: the store has no state of it then.
        assert_eq!(store.settled(account, seq, record.as_of - 1).unwrap(), None);
    }
    assert_eq!(store.settled(account, 999, u64::MAX).unwrap(), None);
    let other = AccountHandle::new(0, 1);
    assert_eq!(
        store.settled(other, canceled.seq(), u64::MAX).unwrap(),
        None
    );
    assert_eq!(
        store
            .settled_page(other, SettledKind::Purchase, None, 10)
            .unwrap(),
        []
    );

    // A later version of the completed purchase (refunded, say, after a
    // page-in): the version that counts depends on the point asked about.
    let mut refunded = completed.clone();
    refunded.as_of = completed.as_of + 3;
    if let Settled::Purchase(purchase) = &mut refunded.object {
        purchase.status = PurchaseStatus::Refunded;
    }
    // And the canceled one stored again at its own version (a batch
    // committed twice after a retried write): replaced, not doubled.
    let mut again = canceled.clone();
    if let Settled::Purchase(purchase) = &mut again.object {
        purchase.updated_at = at("2026-10-05T10:00:00Z");
    }
    store
        .commit(Commit {
            entries: &[],
            idempotency: &[],
            events: &[],
            settled: &[refunded.clone(), again.clone()],
            snapshots: &[],
        })
        .unwrap();
    let seq = completed.seq();
    assert_eq!(
        store
            .settled(account, seq, refunded.as_of - 1)
            .unwrap()
            .as_ref(),
        Some(completed)
    );
    assert_eq!(
        store
            .settled(account, seq, refunded.as_of)
            .unwrap()
            .as_ref(),
        Some(&refunded)
    );
    assert_eq!(
        store
            .settled(account, canceled.seq(), u64::MAX)
            .unwrap()
            .as_ref(),
        Some(&again)
    );

    // Pages: the newest version of each, newest object first.
    let purchases = store
        .settled_page(account, SettledKind::Purchase, None, 10)
        .unwrap();
    assert_eq!(purchases, [refunded.clone(), again.clone()]);
    let first = store
        .settled_page(account, SettledKind::Purchase, None, 1)
        .unwrap();
    assert_eq!(first, [refunded.clone()]);
    let next = store
        .settled_page(account, SettledKind::Purchase, Some(first[0].seq()), 1)
        .unwrap();
    assert_eq!(next, [again.clone()]);
    assert_eq!(
        store
            .settled_page(account, SettledKind::Purchase, Some(next[0].seq()), 1)
            .unwrap(),
        []
    );
    assert_eq!(
        store
            .settled_page(account, SettledKind::Grant, None, 10)
            .unwrap(),
        std::slice::from_ref(grant)
    );
}

/// A settled object's row damaged by `damage` (given the object's
/// sequence number; each backend changes its bytes its own way): refused
/// where it is read (a page-in, a list page), and found by the structure
/// check `verify` runs, while the other rows still serve.
pub fn damaged_settled_row(store: &dyn Store, damage: impl FnOnce(u64)) {
    let (entries, records) = settled_sample();
    store
        .commit(Commit {
            entries: &entries,
            idempotency: &[],
            events: &[],
            settled: &records,
            snapshots: &[],
        })
        .unwrap();
    let (damaged, sound) = (&records[0], &records[2]);
    let account = damaged.account;
    damage(damaged.seq());
    assert!(matches!(
        store.settled(account, damaged.seq(), u64::MAX),
        Err(crate::StoreError::Damaged(_))
    ));
    assert!(matches!(
        store.settled_page(account, SettledKind::Purchase, None, 10),
        Err(crate::StoreError::Damaged(_))
    ));
    assert_eq!(
        store
            .settled(account, sound.seq(), u64::MAX)
            .unwrap()
            .as_ref(),
        Some(sound)
    );
    let mut found = Vec::new();
    store
        .check_structures(&mut |damage| found.push(damage.to_string()), &mut |_| {})
        .unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("settled"), "{found:?}");
}

fn commit_all(store: &dyn Store, entries: &[Entry]) {
    // Three batches of uneven size, as group commits would cut them.
    let cut = [0, entries.len() / 3, entries.len() / 2, entries.len()];
    for window in cut.windows(2) {
        let commit = Commit {
            entries: &entries[window[0]..window[1]],
            idempotency: &[],
            events: &[],
            settled: &[],
            snapshots: &[],
        };
        store.commit(commit).expect("commit");
    }
}

/// Encoding then decoding gives the same entry, for every entry type, and
/// no truncated record decodes.
pub fn codec_round_trips() {
    let journal = sample_journal();
    let mut types: Vec<&str> = journal.iter().map(|e| e.body.type_name()).collect();
    types.sort_unstable();
    types.dedup();
    assert!(
        types.len() >= 17,
        "the sample covers every entry type: {types:?}"
    );
    for entry in &journal {
        let mut bytes = Vec::new();
        encode_entry(entry, &mut bytes);
        assert_eq!(decode_entry(&bytes).as_ref(), Ok(entry));
        for end in 0..bytes.len() {
            assert!(
                decode_entry(&bytes[..end]).is_err(),
                "a truncated {} decoded",
                entry.body.type_name()
            );
        }
    }
}

/// Events stored with the entries they derive from (the core's own
/// events of a real journal), read back in commit order, newest first,
/// by account, by type, a page at a time, and one by one.
pub fn outbox_events(store: &dyn Store) {
    use purser_core::{EventType, events::Event};
    let catalog = Arc::new(Catalog::builtin());
    let mut ledger = Ledger::new(0, catalog);
    let now = at("2026-11-01T00:00:00Z");
    let mut entries = Vec::new();
    let mut events: Vec<Event> = Vec::new();
    for id in ["acme", "beta"] {
        ledger
            .execute_observed(
                now,
                Command::OpenAccount {
                    id: AccountId::parse(id).unwrap(),
                    name: None,
                    tier: TierId::parse("starter").unwrap(),
                    anchor: None,
                    member_monthly_cap: None,
                    metadata: Metadata::EMPTY,
                    low_balance_thresholds: None,
                    auto_recharge: None,
                },
                &mut entries,
                Some(&mut events),
            )
            .expect("open");
    }
    ledger
        .execute_observed(
            now,
            Command::Charge {
                account: AccountId::parse("acme").unwrap(),
                amount: Amount::Credits(credits("100")),
                member: None,
                mode: ChargeMode::Strict,
                metadata: Metadata::EMPTY,
            },
            &mut entries,
            Some(&mut events),
        )
        .expect("charge");
    let records: Vec<EventRecord> = events
        .iter()
        .map(|event| {
            let account = ledger
                .account_by_handle(event.id.account)
                .expect("known")
                .id()
                .to_string();
            EventRecord {
                id: event.id,
                body: format!(r#"{{"id":"{}","account":"{account}"}}"#, event.id.format())
                    .into_bytes(),
                account,
                kind: event.kind,
                at: event.at,
            }
        })
        .collect();
    assert_eq!(
        records.iter().map(|r| r.kind).collect::<Vec<_>>(),
        [
            EventType::AccountCreated,
            EventType::AccountCreated,
            EventType::BudgetExhausted,
            EventType::CreditsLow,
            EventType::CreditsDepleted
        ]
    );
    assert_eq!(store.last_event().expect("last"), 0);
    // Two commits, as group commits would cut them.
    let (first, second) = (entries.len() - 1, records.len() - 3);
    store
        .commit(Commit {
            entries: &entries[..first],
            idempotency: &[],
            events: &records[..second],
            settled: &[],
            snapshots: &[],
        })
        .expect("commit");
    store
        .commit(Commit {
            entries: &entries[first..],
            idempotency: &[],
            events: &records[second..],
            settled: &[],
            snapshots: &[],
        })
        .expect("commit");
    let query = |account: Option<&str>, kind, before, after, limit| EventQuery {
        account: account.map(str::to_owned),
        kind,
        before,
        after,
        limit,
    };
    let all = store
        .events(&query(None, None, None, Some(0), 100))
        .expect("events");
    assert_eq!(
        all.iter().map(|e| &e.event).collect::<Vec<_>>(),
        records.iter().collect::<Vec<_>>(),
        "in commit order, unchanged"
    );
    assert!(all.windows(2).all(|p| p[0].position < p[1].position));
    let last = all.last().expect("some").position;
    assert_eq!(store.last_event().expect("last"), last);
    let newest = store
        .events(&query(None, None, None, None, 2))
        .expect("newest");
    assert_eq!(newest.len(), 2);
    assert_eq!(newest[0], all[4]);
    assert_eq!(newest[1], all[3]);
    let older = store
        .events(&query(None, None, Some(newest[1].position), None, 10))
        .expect("older");
    assert_eq!(older, [all[2].clone(), all[1].clone(), all[0].clone()]);
    let after = store
        .events(&query(None, None, None, Some(all[2].position), 10))
        .expect("after");
    assert_eq!(after, [all[3].clone(), all[4].clone()]);
    let beta = store
        .events(&query(Some("beta"), None, None, None, 10))
        .expect("by account");
    assert_eq!(beta, [all[1].clone()]);
    let low = store
        .events(&query(
            Some("acme"),
            Some(EventType::CreditsLow),
            None,
            None,
            10,
        ))
        .expect("by type");
    assert_eq!(low, [all[3].clone()]);
    for stored in &all {
        assert_eq!(
            store.event(stored.event.id).expect("event").as_ref(),
            Some(stored)
        );
    }
    let mut unknown = all[0].event.id;
    unknown.rank = 9;
    assert_eq!(store.event(unknown).expect("event"), None);
    // Retention: events made before an instant go, oldest first.
    assert_eq!(store.purge_events(now).expect("purge"), 0);
    let later = Timestamp::from_micros(now.micros() + 1);
    assert_eq!(store.purge_events(later).expect("purge"), 5);
    assert_eq!(
        store
            .events(&query(None, None, None, Some(0), 100))
            .expect("events"),
        []
    );
}

/// Delivery attempts are kept per endpoint, newest first, and bounded.
pub fn webhook_deliveries(store: &dyn Store) {
    use crate::{DeliveryRecord, KEPT_DELIVERIES};
    let attempt = |endpoint: &str, n: u64| DeliveryRecord {
        id: 0,
        endpoint: endpoint.into(),
        event: format!("evt_{n:x}"),
        at: Timestamp::from_micros(1_700_000_000_000_000 + n as i64),
        status: n.is_multiple_of(2).then_some(500),
        error: (!n.is_multiple_of(2)).then(|| "timeout".to_owned()),
        duration_ms: n,
        next_attempt: n
            .is_multiple_of(3)
            .then(|| Timestamp::from_micros(1_800_000_000_000_000)),
    };
    assert_eq!(store.deliveries("we_a", None, 10).expect("deliveries"), []);
    // Read back without their numbers (given by the store).
    let unnumbered = |records: Vec<DeliveryRecord>| -> Vec<DeliveryRecord> {
        records
            .into_iter()
            .map(|record| DeliveryRecord { id: 0, ..record })
            .collect()
    };
    let total = KEPT_DELIVERIES + 300;
    for n in 0..total {
        store.record_delivery(&attempt("we_a", n)).expect("record");
    }
    store.record_delivery(&attempt("we_b", 7)).expect("record");
    let newest = store.deliveries("we_a", None, 3).expect("deliveries");
    assert!(newest.windows(2).all(|p| p[0].id > p[1].id));
    let next = store
        .deliveries("we_a", Some(newest[2].id), 1)
        .expect("deliveries");
    assert_eq!(unnumbered(next), [attempt("we_a", total - 4)]);
    assert_eq!(
        unnumbered(newest),
        [
            attempt("we_a", total - 1),
            attempt("we_a", total - 2),
            attempt("we_a", total - 3)
        ]
    );
    assert_eq!(
        unnumbered(store.deliveries("we_b", None, 10).expect("deliveries")),
        [attempt("we_b", 7)]
    );
    let kept = store
        .deliveries("we_a", None, usize::MAX >> 1)
        .expect("deliveries")
        .len() as u64;
    assert!(
        kept <= KEPT_DELIVERIES + 256,
        "{kept} attempts kept of {total}"
    );
}

pub fn commits_replay_in_order(store: &dyn Store) {
    let journal = sample_journal();
    commit_all(store, &journal);
    let mut replayed = Vec::new();
    let count = store
        .replay(&mut |entry| {
            replayed.push(entry);
            Ok(())
        })
        .expect("replay");
    assert_eq!(count, journal.len() as u64);
    assert_eq!(
        replayed, journal,
        "entries come back in commit order, unchanged"
    );
    store
        .commit(Commit {
            entries: &[],
            idempotency: &[],
            events: &[],
            settled: &[],
            snapshots: &[],
        })
        .expect("an empty commit is fine");
    store.ping().expect("ping");
}

pub fn entry_lookup_and_pages(store: &dyn Store) {
    let journal = sample_journal();
    commit_all(store, &journal);
    let acme = AccountHandle::new(0, 0);
    let third = journal.iter().filter(|e| e.account == acme).nth(2).unwrap();
    assert_eq!(store.entry(acme, third.seq).unwrap().as_ref(), Some(third));
    assert_eq!(store.entry(acme, 100_000).unwrap(), None);
    assert_eq!(store.entry(AccountHandle::new(0, 9), 0).unwrap(), None);

    let mine: Vec<&Entry> = journal.iter().filter(|e| e.account == acme).rev().collect();
    let mut pages = Vec::new();
    let mut before_seq = None;
    loop {
        let page = store
            .entries(&EntryQuery {
                account: acme,
                types: Vec::new(),
                before_seq,
                limit: 4,
            })
            .unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 4);
        before_seq = page.last().map(|e| e.seq);
        pages.extend(page);
    }
    assert_eq!(
        pages.iter().collect::<Vec<_>>(),
        mine,
        "pages walk the account newest first"
    );

    let debits = store
        .entries(&EntryQuery {
            account: acme,
            types: vec!["debit", "capture"],
            before_seq: None,
            limit: 100,
        })
        .unwrap();
    let expected: Vec<&Entry> = mine
        .iter()
        .copied()
        .filter(|e| matches!(e.body.type_name(), "debit" | "capture"))
        .collect();
    assert_eq!(debits.iter().collect::<Vec<_>>(), expected);
}

pub fn usage_summaries(store: &dyn Store) {
    let journal = sample_journal();
    commit_all(store, &journal);
    let acme = AccountHandle::new(0, 0);
    let query = |group_by, from: Option<&str>, to: Option<&str>| {
        let rows = store
            .usage(&UsageQuery {
                account: acme,
                from: from.map(at),
                to: to.map(at),
                group_by,
            })
            .unwrap();
        rows.into_iter()
            .map(|row| {
                format!(
                    "{}={}x{}",
                    row.key.as_deref().unwrap_or("-"),
                    row.credits,
                    row.count
                )
            })
            .collect::<Vec<_>>()
    };
    // assistant_message: 10 × 0.5 = 5, minus a 2-credit reversal; a later 1 × 0.5.
    // transcribe_video: 30 × 2 = 60; generate_documentation: 4 × 5 = 20;
    // crawl_data: capture of 60 × 0.2 = 12.
    assert_eq!(
        query(GroupBy::Task, None, None),
        [
            "assistant_message=3.5x2",
            "crawl_data=12x1",
            "generate_documentation=20x1",
            "transcribe_video=60x1"
        ]
    );
    assert_eq!(
        query(GroupBy::Day, None, None),
        ["2026-10-05=63x2", "2026-10-06=32x2", "2026-12-05=0.5x1"]
    );
    assert_eq!(
        query(GroupBy::Member, None, None),
        ["-=12.5x2", "ann=23x2", "bob=60x1"]
    );
    assert_eq!(query(GroupBy::Kind, None, None), ["budget=95.5x5"]);
    assert_eq!(
        query(GroupBy::DayKind, None, None),
        [
            "2026-10-05/budget=63x2",
            "2026-10-06/budget=32x2",
            "2026-12-05/budget=0.5x1"
        ]
    );
    assert_eq!(
        query(
            GroupBy::Task,
            Some("2026-10-06T00:00:00Z"),
            Some("2026-10-07T00:00:00Z")
        ),
        ["crawl_data=12x1", "generate_documentation=20x1"]
    );
    // Debt shows as its own kind on the account that went short.
    let beta = store
        .usage(&UsageQuery {
            account: AccountHandle::new(0, 1),
            from: None,
            to: None,
            group_by: GroupBy::Kind,
        })
        .unwrap();
    let keys: Vec<&str> = beta.iter().filter_map(|row| row.key.as_deref()).collect();
    assert!(
        keys.contains(&"debt") && keys.contains(&"package"),
        "{beta:?}"
    );
}

/// A snapshot taken with a commit, plus the journal after its position,
/// rebuilds exactly what the whole journal rebuilds.
pub fn snapshots_and_tails(store: &dyn Store) {
    let journal = sample_journal();
    let half = journal.len() / 2;
    store
        .commit(Commit {
            entries: &journal[..half],
            idempotency: &[],
            events: &[],
            settled: &[],
            snapshots: &[],
        })
        .unwrap();
    let mut first_half = Ledger::new(0, Arc::new(Catalog::builtin()));
    for entry in &journal[..half] {
        first_half.apply(entry).unwrap();
    }
    let mut body = Vec::new();
    crate::encode_snapshot(&first_half.snapshot(), &mut body);
    let snapshot = crate::PartitionSnapshot { partition: 0, body };
    // Taken with the next commit: it reflects everything before that commit.
    let second = &journal[half..];
    store
        .commit(Commit {
            entries: &second[..1],
            idempotency: &[],
            events: &[],
            settled: &[],
            snapshots: std::slice::from_ref(&snapshot),
        })
        .unwrap();
    store
        .commit(Commit {
            entries: &second[1..],
            idempotency: &[],
            events: &[],
            settled: &[],
            snapshots: &[],
        })
        .unwrap();
    let stored = store.snapshots().unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!((stored[0].partition, &stored[0].body), (0, &snapshot.body));
    let mut recovered = Ledger::new(0, Arc::new(Catalog::builtin()));
    for account in crate::decode_snapshot(&stored[0].body).unwrap() {
        recovered.restore(account).unwrap();
    }
    let mut tail = 0;
    store
        .replay_after(stored[0].position, &mut |_, entry| {
            tail += 1;
            if !recovered.contains(&entry) {
                recovered
                    .apply(&entry)
                    .map_err(|e| crate::StoreError::Backend(e.to_string()))?;
            }
            Ok(())
        })
        .unwrap();
    assert!(tail < journal.len(), "the tail is shorter than the journal");
    let mut full = Ledger::new(0, Arc::new(Catalog::builtin()));
    for entry in &journal {
        full.apply(entry).unwrap();
    }
    assert_eq!(purser_core::verify::compare(&recovered, &full), []);
    // A newer snapshot replaces the older one.
    let mut body = Vec::new();
    crate::encode_snapshot(&full.snapshot(), &mut body);
    let newer = crate::PartitionSnapshot { partition: 0, body };
    store
        .commit(Commit {
            entries: &[],
            idempotency: &[],
            events: &[],
            settled: &[],
            snapshots: std::slice::from_ref(&newer),
        })
        .unwrap();
    assert_eq!(store.snapshots().unwrap()[0].body, newer.body);
}

pub fn idempotency_records(store: &dyn Store) {
    let record = |key: u8, expires: &str| IdempotencyRecord {
        key: [key; 16],
        fingerprint: [7; 8],
        status: 201,
        body: br#"{"object":"debit"}"#.to_vec(),
        expires_at: at(expires),
    };
    let records = [
        record(1, "2026-11-02T00:00:00Z"),
        record(2, "2026-11-03T00:00:00Z"),
    ];
    store
        .commit(Commit {
            entries: &[],
            idempotency: &records,
            events: &[],
            settled: &[],
            snapshots: &[],
        })
        .unwrap();
    assert_eq!(
        store.idempotency_record(&[1; 16]).unwrap().as_ref(),
        Some(&records[0])
    );
    assert_eq!(
        store.idempotency_record(&[2; 16]).unwrap().as_ref(),
        Some(&records[1])
    );
    assert_eq!(store.idempotency_record(&[3; 16]).unwrap(), None);
    // The expiry is kept in whole seconds: a record is made with its
    // expiry rounded up, and reads back as made.
    let fraction = IdempotencyRecord::new(
        [9; 16],
        [7; 8],
        200,
        b"{}".to_vec(),
        Timestamp::from_micros(at("2026-11-02T00:00:00Z").micros() + 1),
    );
    assert_eq!(fraction.expires_at, at("2026-11-02T00:00:01Z"));
    assert_eq!(
        IdempotencyRecord::new([9; 16], [7; 8], 200, Vec::new(), Timestamp::NEVER).expires_at,
        Timestamp::NEVER
    );
    // The keys in the order stored, paged by their numbers.
    let keys = store.idempotency_keys(0, 10).unwrap();
    assert_eq!(
        keys.iter()
            .map(|k| (k.key, k.expires_at, k.sound))
            .collect::<Vec<_>>(),
        records
            .iter()
            .map(|r| (r.key, r.expires_at, true))
            .collect::<Vec<_>>()
    );
    assert!(keys[0].id < keys[1].id);
    let rest = store.idempotency_keys(keys[0].id, 10).unwrap();
    assert_eq!(rest, keys[1..]);
    assert_eq!(store.idempotency_keys(keys[0].id, 0).unwrap(), []);
    // A key stored again (after its first record expired, say): the newest wins.
    let mut renewed = record(2, "2026-11-04T00:00:00Z");
    renewed.status = 200;
    store
        .commit(Commit {
            entries: &[],
            idempotency: std::slice::from_ref(&renewed),
            events: &[],
            settled: &[],
            snapshots: &[],
        })
        .unwrap();
    assert_eq!(
        store.idempotency_record(&[2; 16]).unwrap(),
        Some(renewed.clone())
    );
    // Purged oldest first, up to the first record still remembered.
    assert_eq!(
        store.purge_idempotency(at("2026-11-02T12:00:00Z")).unwrap(),
        1
    );
    assert_eq!(store.idempotency_record(&[1; 16]).unwrap(), None);
    assert_eq!(store.idempotency_keys(0, 10).unwrap().len(), 2);
    assert_eq!(
        store.purge_idempotency(at("2026-11-05T00:00:00Z")).unwrap(),
        2
    );
    assert_eq!(store.idempotency_record(&[2; 16]).unwrap(), None);
    assert_eq!(store.idempotency_keys(0, 10).unwrap(), []);
}

pub fn api_keys_and_settings(store: &dyn Store) {
    let key = ApiKeyRecord {
        id: "key_1".into(),
        secret_hash: [3; 32],
        scopes: vec!["usage".into(), "read".into()],
        created_at: at("2026-11-01T00:00:00Z"),
        revoked_at: None,
    };
    store.insert_api_key(&key).unwrap();
    assert!(matches!(
        store.insert_api_key(&key),
        Err(crate::StoreError::Duplicate)
    ));
    assert_eq!(store.api_keys().unwrap(), std::slice::from_ref(&key));
    assert!(
        store
            .revoke_api_key("key_1", at("2026-11-02T00:00:00Z"))
            .unwrap()
    );
    assert!(
        !store
            .revoke_api_key("key_404", at("2026-11-02T00:00:00Z"))
            .unwrap()
    );
    assert_eq!(
        store.api_keys().unwrap()[0].revoked_at,
        Some(at("2026-11-02T00:00:00Z"))
    );

    assert_eq!(store.setting("test_clock").unwrap(), None);
    store.set_setting("test_clock", "1").unwrap();
    store.set_setting("test_clock", "2").unwrap();
    assert_eq!(store.setting("test_clock").unwrap().as_deref(), Some("2"));
}

#[cfg(test)]
mod tests {
    #[test]
    fn codec_round_trips() {
        super::codec_round_trips();
    }
}
