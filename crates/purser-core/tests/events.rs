//! Events as rule tables: each event type from the command that causes it,
//! threshold crossings and re-arming, nothing from a refusal, renewals after
//! missed periods. Events are derived from entries by a pure function, so a
//! scenario's events are also checked to be a function of its journal.

mod support;

use std::collections::HashSet;

use purser_core::events::{self, EventId, Levels};
use purser_core::{AccountId, Command, Credits, EventType, ObjectId, PackageId, Proration};
use support::{World, c};

fn id(text: &str) -> AccountId {
    AccountId::parse(text).unwrap()
}

/// Runs `step` and returns the events it made.
fn events_of(w: &mut World, step: impl FnOnce(&mut World)) -> Vec<String> {
    let from = w.events.len();
    step(w);
    w.events_since(from)
}

#[test]
fn each_command_tells_what_it_changed() {
    let mut w = World::new("2026-11-01T00:00:00Z");
    // starter: 100 credits a month; its default threshold is 20 % of them.
    type Step = Box<dyn FnOnce(&mut World)>;
    let table: Vec<(&str, Step, Vec<&str>)> = vec![
        (
            "open",
            Box::new(|w| w.open("acme", "starter")),
            vec!["account.created"],
        ),
        (
            "charge above the threshold",
            Box::new(|w| drop(w.charge("acme", "10"))),
            vec![],
        ),
        (
            "charge crossing 20",
            Box::new(|w| drop(w.charge("acme", "75"))),
            vec!["credits.low:20"],
        ),
        (
            "charge below it again",
            Box::new(|w| drop(w.charge("acme", "5"))),
            vec![],
        ),
        (
            "the last budget credits",
            Box::new(|w| drop(w.charge("acme", "10"))),
            vec!["budget.exhausted", "credits.depleted"],
        ),
        (
            "a refused charge",
            Box::new(|w| drop(w.charge("acme", "1"))),
            vec![],
        ),
        (
            "a recorded charge into debt",
            Box::new(|w| drop(w.record("acme", "5"))),
            vec!["debt.incurred"],
        ),
        (
            "a purchase created",
            Box::new(|w| {
                w.ok(Command::CreatePurchase {
                    account: id("acme"),
                    package: PackageId::parse("small").unwrap(),
                });
            }),
            vec!["purchase.created"],
        ),
        (
            "completed: the debt is paid and credits are back",
            Box::new(|w| {
                let purchase = w.account("acme").purchases()[0].seq;
                let account = w.account("acme").handle();
                w.ok(Command::CompletePurchase {
                    purchase: ObjectId {
                        account,
                        seq: purchase,
                    },
                });
            }),
            vec!["purchase.completed", "credits.recovered"],
        ),
        // 195 available: back above 20, so the threshold is armed again.
        (
            "down to 19",
            Box::new(|w| drop(w.charge("acme", "176"))),
            vec!["credits.low:20"],
        ),
        (
            "upgrade",
            Box::new(|w| drop(w.change_tier("acme", "pro", Proration::None))),
            vec!["tier.changed"],
        ),
        (
            "downgrade scheduled",
            Box::new(|w| drop(w.change_tier("acme", "starter", Proration::None))),
            vec!["tier.change_scheduled"],
        ),
        (
            "downgrade canceled",
            Box::new(|w| drop(w.change_tier("acme", "pro", Proration::None))),
            vec!["tier.change_canceled"],
        ),
        (
            "a hold expires",
            Box::new(|w| {
                w.hold("acme", "1", 60).unwrap();
                w.advance_to("2026-11-01T00:02:00Z");
            }),
            vec!["hold.expired"],
        ),
        (
            "closed",
            Box::new(|w| {
                w.ok(Command::CloseAccount {
                    account: id("acme"),
                });
            }),
            vec!["account.closed"],
        ),
    ];
    for (what, step, expected) in table {
        assert_eq!(events_of(&mut w, step), expected, "{what}");
    }
}

#[test]
fn purchases_tell_each_way_they_end() {
    let mut w = World::new("2026-11-01T00:00:00Z");
    w.open("acme", "starter");
    let create = |w: &mut World| {
        w.ok(Command::CreatePurchase {
            account: id("acme"),
            package: PackageId::parse("small").unwrap(),
        })
        .unwrap()
        .id()
    };
    let failed = create(&mut w);
    let canceled = create(&mut w);
    let from = w.events.len();
    w.ok(Command::FailPurchase {
        purchase: failed,
        reason: None,
    });
    w.ok(Command::CancelPurchase { purchase: canceled });
    // Again: nothing changes, nothing is told.
    w.ok(Command::FailPurchase {
        purchase: failed,
        reason: None,
    });
    let refunded = w.buy("acme");
    w.ok(Command::RefundPurchase {
        purchase: refunded,
        share: None,
    });
    assert_eq!(
        w.events_since(from),
        [
            "purchase.failed",
            "purchase.canceled",
            "purchase.created",
            "purchase.completed",
            "purchase.refunded"
        ]
    );
}

#[test]
fn one_charge_crossing_two_thresholds_tells_both() {
    // The `alerts` tier (100 a month) has thresholds 10 and 50.
    let cases = [
        // (charges before, the charge, events of that charge)
        (&[][..], "60", &["credits.low:50"][..]),
        (&[][..], "95", &["credits.low:50", "credits.low:10"][..]),
        (&["60"][..], "35", &["credits.low:10"][..]),
        (&["50"][..], "0.000001", &["credits.low:50"][..]),
        (&["49.999999"][..], "0.000001", &[][..]),
        (&["40"][..], "10", &[][..]),
        (
            &[][..],
            "100",
            &[
                "budget.exhausted",
                "credits.low:50",
                "credits.low:10",
                "credits.depleted",
            ][..],
        ),
    ];
    for (before, charge, expected) in cases {
        let mut w = World::new("2026-11-01T00:00:00Z");
        w.open("acme", "alerts");
        for credits in before {
            w.charge("acme", credits).unwrap();
        }
        let from = w.events.len();
        w.charge("acme", charge).unwrap();
        assert_eq!(
            w.events_since(from),
            expected,
            "after {before:?}, a charge of {charge}"
        );
    }
}

#[test]
fn a_threshold_rearms_only_once_available_is_back_at_or_above_it() {
    let mut w = World::new("2026-11-01T00:00:00Z");
    w.open("acme", "alerts");
    let steps: [(&str, &str, &[&str]); 6] = [
        ("charge", "55", &["credits.low:50"]),
        ("promo", "4", &[]),  // 49: still below, not re-armed
        ("charge", "1", &[]), // 48
        ("promo", "2", &[]),  // 50: at it, re-armed
        ("charge", "0.5", &["credits.low:50"]),
        ("charge", "1", &[]),
    ];
    for (what, credits, expected) in steps {
        let from = w.events.len();
        match what {
            "charge" => drop(w.charge("acme", credits).unwrap()),
            _ => drop(w.promo("acme", credits, None)),
        }
        assert_eq!(w.events_since(from), expected, "{what} {credits}");
    }
}

#[test]
fn missed_periods_renew_one_by_one_in_order() {
    let mut w = World::new("2026-11-01T00:00:00Z");
    w.open("acme", "pro"); // 400 a month, rollover up to 50
    w.charge("acme", "100").unwrap();
    let from_event = w.events.len();
    let from_entry = w.journal.len();
    // A test clock jumping five months at once.
    w.advance_to("2027-04-01T00:00:00Z");
    let renewed: Vec<_> = w.events[from_event..].to_vec();
    assert_eq!(
        renewed.iter().map(|e| e.kind).collect::<Vec<_>>(),
        [EventType::BudgetRenewed; 5]
    );
    let entries = &w.journal[from_entry..];
    let starts: Vec<String> = renewed
        .iter()
        .map(|e| {
            let r = events::renewal(entries, e.entry).expect("a renewal");
            format!(
                "{} {} +{} ~{} -{}",
                r.period_index,
                r.period_start,
                r.granted,
                r.rolled_over,
                r.expired.micros() / 1_000_000
            )
        })
        .collect();
    assert_eq!(
        starts,
        [
            "1 2026-12-01T00:00:00Z +400 ~50 -250",
            "2 2027-01-01T00:00:00Z +400 ~50 -400",
            "3 2027-02-01T00:00:00Z +400 ~50 -400",
            "4 2027-03-01T00:00:00Z +400 ~50 -400",
            "5 2027-04-01T00:00:00Z +400 ~50 -400",
        ]
    );
    let sequences: Vec<u64> = renewed.iter().map(|e| e.id.sequence()).collect();
    assert!(sequences.windows(2).all(|p| p[0] < p[1]), "{sequences:?}");
}

#[test]
fn event_ids_are_unique_and_name_their_entry() {
    let mut w = World::new("2026-11-01T00:00:00Z");
    w.open("acme", "alerts");
    w.open("beta", "alerts");
    w.charge("acme", "100").unwrap();
    w.charge("beta", "95").unwrap();
    w.buy("acme");
    w.advance_to("2027-01-01T00:00:00Z");
    let mut seen = HashSet::new();
    for event in &w.events {
        let text = event.id.format();
        assert_eq!(EventId::parse(&text), Some(event.id), "{text}");
        assert!(seen.insert(text.clone()), "{text} twice");
        let entry = w
            .journal
            .iter()
            .find(|e| e.account == event.id.account && e.seq == event.id.seq)
            .expect("the entry it names");
        assert_eq!(entry.at, event.at);
    }
    assert!(EventId::parse("evt_zz").is_none());
    assert!(EventId::parse("deb_10000000000002a").is_none());
}

#[test]
fn events_are_a_function_of_entries_and_levels() {
    // The same entries and levels always give the same events (a replay
    // derives nothing new: it writes no entries).
    let mut w = World::new("2026-11-01T00:00:00Z");
    w.open("acme", "alerts");
    let from = w.journal.len();
    w.charge("acme", "95").unwrap();
    let entries = w.journal[from..].to_vec();
    let before = Levels {
        available: c("100").to_sum(),
        budget: c("100").to_sum(),
        debt: Credits::ZERO,
    };
    let after = Levels {
        available: c("5").to_sum(),
        budget: c("5").to_sum(),
        debt: Credits::ZERO,
    };
    let thresholds = [c("10"), c("50")];
    let mut first = Vec::new();
    let mut second = Vec::new();
    events::derive(&entries, Some(before), after, &thresholds, true, &mut first);
    events::derive(
        &entries,
        Some(before),
        after,
        &thresholds,
        true,
        &mut second,
    );
    assert_eq!(first, second);
    assert_eq!(first, w.events[w.events.len() - 2..]);
}

#[test]
fn an_accounts_own_thresholds_replace_its_tiers() {
    let mut w = World::new("2026-11-01T00:00:00Z");
    w.ok(Command::OpenAccount {
        id: id("acme"),
        name: None,
        tier: purser_core::TierId::parse("starter").unwrap(),
        anchor: None,
        member_monthly_cap: None,
        metadata: purser_core::Metadata::EMPTY,
        low_balance_thresholds: Some(vec![c("50"), c("10")]),
        auto_recharge: None,
    });
    let from = w.events.len();
    w.charge("acme", "95").unwrap();
    assert_eq!(w.events_since(from), ["credits.low:50", "credits.low:10"]);
    // Back to the tier's (20 % of starter's 100): after a promo to 100.
    w.ok(Command::UpdateAccount {
        account: id("acme"),
        update: purser_core::AccountUpdate {
            low_balance_thresholds: Some(None),
            ..Default::default()
        },
    });
    assert_eq!(w.account("acme").low_balance_thresholds(), None);
    w.promo("acme", "95", None);
    let from = w.events.len();
    w.charge("acme", "85").unwrap();
    assert_eq!(w.events_since(from), ["budget.exhausted", "credits.low:20"]);
    // Too many.
    let refused = w.refused(Command::UpdateAccount {
        account: id("acme"),
        update: purser_core::AccountUpdate {
            low_balance_thresholds: Some(Some(vec![c("1"); 6])),
            ..Default::default()
        },
    });
    assert_eq!(
        refused,
        purser_core::Rejection::LimitExceeded(purser_core::Limit::LowBalanceThresholds)
    );
}

#[test]
fn a_charge_just_after_a_renewal_is_measured_against_the_new_period() {
    let mut w = World::new("2026-11-01T00:00:00Z");
    w.open("acme", "starter"); // 100 a month, alert at 20
    w.charge("acme", "95").unwrap();
    // The period ends; nobody advanced the account. A charge arrives.
    w.now = support::t("2026-12-01T00:00:01Z");
    let from = w.events.len();
    w.charge("acme", "90").unwrap();
    let events = &w.events[from..];
    assert_eq!(
        events
            .iter()
            .map(|e| (e.kind, e.time_driven))
            .collect::<Vec<_>>(),
        [
            (EventType::BudgetRenewed, true),
            (EventType::CreditsLow, false),
        ],
        "{events:?}"
    );
}

#[test]
fn a_closed_account_is_told_closed_and_then_nothing_of_its_balance() {
    let mut w = World::new("2026-11-01T00:00:00Z");
    w.open("acme", "starter");
    let from = w.events.len();
    w.ok(Command::CloseAccount {
        account: id("acme"),
    });
    w.advance_to("2027-01-01T00:00:00Z");
    assert_eq!(w.events_since(from), ["account.closed"]);
}
