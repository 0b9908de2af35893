//! Auto-recharge as rule tables (API.md "Alerts and auto-recharge"): the
//! command that leaves available below the threshold makes one purchase;
//! at most one in flight; the monthly limit told once a period; three
//! failed payments in a row switch it off; settling a purchase never starts
//! one; its events. Every scenario also ends with a replay of its journal
//! (the `World` checks that the state rebuilds).

mod support;

use purser_core::{
    AccountId, AccountUpdate, AutoRechargeConfig, Body, Command, ObjectId, PackageId,
    RechargeFailure, Rejection,
};
use support::{World, c};

fn id() -> AccountId {
    AccountId::parse("acme").unwrap()
}

fn config(threshold: &str, max: Option<u32>) -> AutoRechargeConfig {
    AutoRechargeConfig {
        enabled: true,
        threshold: c(threshold),
        package: PackageId::parse("small").unwrap(),
        max_per_month: max,
    }
}

fn set(w: &mut World, auto: Option<AutoRechargeConfig>) {
    w.ok(Command::UpdateAccount {
        account: id(),
        update: AccountUpdate {
            auto_recharge: Some(auto.map(Box::new)),
            ..AccountUpdate::default()
        },
    });
}

/// The recharge purchase the last command made, if it made one.
fn made(w: &World, from: usize) -> Option<ObjectId> {
    w.journal[from..]
        .iter()
        .find_map(|entry| match &entry.body {
            Body::PurchaseCreated(p) if p.auto_recharge => Some(entry.id()),
            _ => None,
        })
}

fn charge(w: &mut World, credits: &str) -> (Option<ObjectId>, Vec<String>) {
    let (journal, events) = (w.journal.len(), w.events.len());
    w.charge("acme", credits).unwrap();
    (made(w, journal), w.events_since(events))
}

#[test]
fn a_charge_below_the_threshold_makes_one_purchase_and_no_more_while_it_is_pending() {
    let mut w = World::new("2026-11-10T12:00:00Z");
    w.open("acme", "starter"); // 100 budget credits
    set(&mut w, Some(config("50", None)));
    assert_eq!(charge(&mut w, "40").0, None, "60 left: above the threshold");
    let (purchase, events) = charge(&mut w, "20");
    let purchase = purchase.expect("40 left: a recharge");
    assert!(
        events.contains(&"purchase.created".to_owned()),
        "{events:?}"
    );
    // Pending: the next charges make none.
    assert_eq!(charge(&mut w, "10").0, None);
    assert_eq!(
        w.account("acme").auto_recharge().unwrap().in_flight,
        Some(purchase.seq)
    );
    // Paid: the package's credits, and it is told.
    let from = w.events.len();
    w.ok(Command::CompletePurchase { purchase });
    assert_eq!(
        w.events_since(from),
        ["purchase.completed", "auto_recharge.succeeded"]
    );
    assert_eq!(w.totals("acme"), "230/0/0");
    assert_eq!(w.account("acme").auto_recharge().unwrap().in_flight, None);
    // Above the threshold again: nothing until the next crossing.
    assert_eq!(charge(&mut w, "100").0, None);
    assert!(
        charge(&mut w, "100").0.is_some(),
        "30 left: the next recharge"
    );
}

#[test]
fn three_failed_payments_in_a_row_switch_it_off_and_a_success_resets_the_count() {
    let mut w = World::new("2026-11-10T12:00:00Z");
    w.open("acme", "starter");
    set(&mut w, Some(config("50", None)));
    let fail = |w: &mut World, purchase, reason| {
        let from = w.events.len();
        w.ok(Command::FailPurchase { purchase, reason });
        w.events_since(from)
    };
    let first = charge(&mut w, "60").0.unwrap();
    assert_eq!(
        fail(&mut w, first, Some(RechargeFailure::ActionRequired)),
        ["purchase.failed", "auto_recharge.failed"]
    );
    // Failing a purchase never starts the next one: the next charge does.
    assert_eq!(w.account("acme").auto_recharge().unwrap().in_flight, None);
    let second = charge(&mut w, "1").0.unwrap();
    w.ok(Command::CompletePurchase { purchase: second });
    assert_eq!(w.account("acme").auto_recharge().unwrap().failures, 0);
    let mut next = charge(&mut w, "200").0.expect("39 left: a recharge");
    for reason in [None, Some(RechargeFailure::NoPaymentMethod)] {
        fail(&mut w, next, reason);
        next = charge(&mut w, "1").0.expect("the next recharge");
    }
    assert!(w.account("acme").auto_recharge().unwrap().config.enabled);
    fail(&mut w, next, None);
    let auto = w.account("acme").auto_recharge().unwrap();
    assert_eq!((auto.config.enabled, auto.failures), (false, 3));
    assert_eq!(charge(&mut w, "1").0, None, "off: nothing more");
    // Switched back on by the operator: its count starts again, and the
    // account (below the threshold) recharges at once.
    let from = w.journal.len();
    set(&mut w, Some(config("50", None)));
    assert!(made(&w, from).is_some());
    assert_eq!(w.account("acme").auto_recharge().unwrap().failures, 0);
}

#[test]
fn the_monthly_limit_is_told_once_a_period_and_renews_with_it() {
    let mut w = World::new("2026-11-10T12:00:00Z");
    w.open("acme", "starter");
    set(&mut w, Some(config("50", Some(1))));
    let first = charge(&mut w, "60").0.unwrap();
    w.ok(Command::CompletePurchase { purchase: first });
    let (made_one, events) = charge(&mut w, "200"); // 40 left
    assert_eq!(made_one, None);
    assert!(
        events.contains(&"auto_recharge.failed".to_owned()),
        "{events:?}"
    );
    assert_eq!(
        w.journal.last().unwrap().body,
        Body::AutoRecharge {
            purchase: None,
            outcome: purser_core::RechargeOutcome::Failed(RechargeFailure::MonthlyLimitReached),
        }
    );
    assert_eq!(charge(&mut w, "1").1, Vec::<String>::new(), "told once");
    // Not a failed payment: it stays on.
    assert!(w.account("acme").auto_recharge().unwrap().config.enabled);
    // The next period: the budget renews above the threshold; spending it
    // recharges again.
    w.advance_to("2026-12-10T12:00:01Z");
    assert!(charge(&mut w, "100").0.is_some());
}

#[test]
fn a_new_account_below_its_threshold_recharges_at_once_and_bad_settings_are_refused() {
    let mut w = World::new("2026-11-10T12:00:00Z");
    w.ok(Command::OpenAccount {
        id: id(),
        name: None,
        tier: purser_core::TierId::parse("free").unwrap_or_else(|_| unreachable!()),
        anchor: None,
        member_monthly_cap: None,
        metadata: purser_core::Metadata::EMPTY,
        low_balance_thresholds: None,
        auto_recharge: Some(Box::new(config("1000", None))),
    });
    assert!(made(&w, 0).is_some(), "opened below 1000: a recharge");
    let mut unknown = config("10", None);
    unknown.package = PackageId::parse("huge").unwrap();
    assert_eq!(
        w.refused(Command::UpdateAccount {
            account: id(),
            update: AccountUpdate {
                auto_recharge: Some(Some(Box::new(unknown))),
                ..AccountUpdate::default()
            },
        }),
        Rejection::UnknownPackage
    );
    // Not removed while one is pending (its state would go with it);
    // switched off, the purchase still settles, told as the recharge it was.
    let pending = made(&w, 0).unwrap();
    assert_eq!(
        w.refused(Command::UpdateAccount {
            account: id(),
            update: AccountUpdate {
                auto_recharge: Some(None),
                ..AccountUpdate::default()
            },
        }),
        Rejection::RechargeInFlight
    );
    let mut off = config("1000", None);
    off.enabled = false;
    set(&mut w, Some(off));
    let from = w.events.len();
    w.ok(Command::CompletePurchase { purchase: pending });
    assert_eq!(
        w.events_since(from),
        ["purchase.completed", "auto_recharge.succeeded"]
    );
    set(&mut w, None);
    assert!(w.account("acme").auto_recharge().is_none());
}
