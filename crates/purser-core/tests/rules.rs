//! One scenario (or table of cases) per rule of PRODUCT.md. Every world
//! replays its journal when dropped (see `support`), so each scenario also
//! proves that recovery rebuilds the same state.

mod support;

use purser_core::{
    AccountId, Amount, Body, CaptureAmount, ChargeMode, Command, DebitRecord, Entry, GrantKind,
    HoldEnd, Limit, Metadata, ObjectId, ObjectKind, Proration, PurchaseStatus, Rejection, TierId,
};
use support::{World, c, t};

fn acme() -> AccountId {
    AccountId::parse("acme").unwrap()
}

fn allocations(entry: &purser_core::Entry) -> Vec<(GrantKind, String)> {
    let list = match &entry.body {
        Body::Debited(debit) => debit.allocations.clone(),
        Body::Captured(capture) => capture
            .from_hold
            .iter()
            .chain(&capture.excess)
            .copied()
            .collect(),
        Body::DebtPaid(allocations) => allocations.clone(),
        other => panic!("no allocations in {other:?}"),
    };
    list.iter()
        .map(|a| (a.kind, a.credits.to_string()))
        .collect()
}

// ----- rule 1: burn order -----

#[test]
fn budget_burns_before_package_credits() {
    let mut w = World::new("2026-11-10T12:00:00Z");
    w.open("acme", "starter");
    w.buy("acme");
    let first = w.charge("acme", "30").unwrap();
    assert_eq!(allocations(&first), [(GrantKind::Budget, "30".into())]);
    let second = w.charge("acme", "80").unwrap();
    assert_eq!(
        allocations(&second),
        [
            (GrantKind::Budget, "70".into()),
            (GrantKind::Package, "10".into())
        ]
    );
    assert_eq!(
        w.grants("acme"),
        "package:190/200",
        "the exhausted budget is not listed"
    );
    assert_eq!(w.totals("acme"), "190/0/0");
}

#[test]
fn burn_order_is_priority_then_expiry_then_effective_time_then_id() {
    let mut w = World::new("2026-11-10T12:00:00Z");
    w.open("acme", "free");
    w.buy("acme"); // package, priority 10
    let never = w.promo("acme", "5", None); // priority 5, never expires
    let later = w.promo("acme", "5", Some("2026-11-20T00:00:00Z"));
    let sooner = w.promo("acme", "5", Some("2026-11-15T00:00:00Z"));
    w.now = t("2026-11-10T13:00:00Z");
    let twin = w.promo("acme", "5", Some("2026-11-15T00:00:00Z")); // same expiry, later effective time
    let debit = w.charge("acme", "28").unwrap();
    let Body::Debited(debit) = &debit.body else {
        unreachable!()
    };
    let order: Vec<(u64, String)> = debit
        .allocations
        .iter()
        .map(|a| (a.grant, a.credits.to_string()))
        .collect();
    let budget = w
        .account("acme")
        .grants()
        .iter()
        .find(|g| g.kind == GrantKind::Budget)
        .unwrap()
        .seq;
    assert_eq!(
        order,
        [
            (budget, "10".to_string()),
            (sooner.seq, "5".into()),
            (twin.seq, "5".into()),
            (later.seq, "5".into()),
            (never.seq, "3".into()),
        ]
    );
}

// ----- rule 2: strict charges -----

#[test]
fn a_short_strict_charge_is_refused_and_changes_nothing() {
    let mut w = World::new("2026-11-10T12:00:00Z");
    w.open("acme", "starter");
    w.charge("acme", "60").unwrap();
    let entries = w.journal.len();
    let before = w.account("acme").clone();
    let refusal = w.charge("acme", "40.000001").unwrap_err();
    assert_eq!(
        refusal,
        Rejection::InsufficientCredits {
            available: c("40").to_sum(),
            required: c("40.000001")
        }
    );
    assert_eq!(w.journal.len(), entries);
    assert_eq!(w.account("acme"), &before);
    w.charge("acme", "40").unwrap();
    assert_eq!(w.totals("acme"), "0/0/0");
}

#[test]
fn task_charges_are_priced_from_the_rate_card_rounding_up() {
    let cases = [
        ("assistant_message", "3", "1.5"),
        ("generate_documentation", "0.5", "5"), // the minimum
        ("generate_documentation", "2", "10"),
        ("crawl_data", "1", "0.333333"),
        ("crawl_data", "0.5", "0.166667"), // 0.1666665 rounded up
    ];
    for (task, quantity, credits) in cases {
        let mut w = World::new("2026-11-10T12:00:00Z");
        w.open("acme", "starter");
        let entry = w
            .charge_with(
                "acme",
                World::task(task, quantity),
                None,
                ChargeMode::Strict,
            )
            .unwrap();
        let Body::Debited(debit) = &entry.body else {
            unreachable!()
        };
        assert_eq!(debit.credits.to_string(), credits, "{task} × {quantity}");
        let pricing = debit.pricing.as_ref().unwrap();
        assert_eq!(pricing.task.as_str(), task);
        assert_eq!(pricing.quantity.unwrap().to_string(), quantity);
    }
    let mut w = World::new("2026-11-10T12:00:00Z");
    w.open("acme", "starter");
    let unknown = w.charge_with(
        "acme",
        World::task("teleport", "1"),
        None,
        ChargeMode::Strict,
    );
    assert_eq!(unknown.unwrap_err(), Rejection::UnknownTask);
}

// ----- rule 3: recorded charges and debt -----

#[test]
fn recorded_charges_become_debt_that_new_credits_pay_first() {
    let mut w = World::new("2026-11-10T12:00:00Z");
    w.open("acme", "free");
    let recorded = w.record("acme", "25");
    let Body::Debited(debit) = &recorded.body else {
        unreachable!()
    };
    assert_eq!(debit.debt_incurred, c("15"));
    assert_eq!(w.totals("acme"), "0/0/15");
    // A strict charge still refuses while in debt.
    assert!(matches!(
        w.charge("acme", "1"),
        Err(Rejection::InsufficientCredits { .. })
    ));
    let from = w.journal.len();
    w.promo("acme", "5", None);
    assert_eq!(w.types_since(from), ["grant", "debt_paid"]);
    assert_eq!(w.totals("acme"), "0/0/10");
    let from = w.journal.len();
    w.buy("acme");
    assert_eq!(
        w.types_since(from),
        [
            "purchase_created",
            "purchase_completed",
            "grant",
            "debt_paid"
        ]
    );
    assert_eq!(w.totals("acme"), "190/0/0");
}

#[test]
fn debt_is_paid_across_several_grants_when_a_hold_is_released() {
    let mut w = World::new("2026-11-10T12:00:00Z");
    w.open("acme", "free");
    w.promo("acme", "3", None);
    let hold = w.hold("acme", "13", 600).unwrap();
    w.record("acme", "12");
    assert_eq!(w.totals("acme"), "0/13/12");
    w.ok(Command::ReleaseHold { hold });
    let paid = w.journal.last().unwrap().clone();
    assert_eq!(
        allocations(&paid),
        [
            (GrantKind::Budget, "10".into()),
            (GrantKind::Promo, "2".into())
        ]
    );
    assert_eq!(w.totals("acme"), "1/0/0");
}

#[test]
fn renewal_pays_debt_first() {
    let mut w = World::new("2026-11-01T00:00:00Z");
    w.open("acme", "starter");
    w.record("acme", "130");
    w.advance_to("2026-12-01T00:00:00Z");
    assert_eq!(w.totals("acme"), "70/0/0");
    let last = w.journal.last().unwrap();
    assert_eq!(last.body.type_name(), "debt_paid");
    assert_eq!(last.at, t("2026-12-01T00:00:00Z"));
}

// ----- rule 4: periods -----

#[test]
fn period_starts_keep_the_anchor_day_clamped_to_the_month() {
    let cases: &[(&str, &[&str])] = &[
        (
            "2026-01-31T10:00:00Z",
            &[
                "2026-02-28T10:00:00Z",
                "2026-03-31T10:00:00Z",
                "2026-04-30T10:00:00Z",
            ],
        ),
        (
            "2028-01-29T00:00:00Z",
            &["2028-02-29T00:00:00Z", "2028-03-29T00:00:00Z"],
        ),
        (
            "2027-12-31T23:59:59Z",
            &[
                "2028-01-31T23:59:59Z",
                "2028-02-29T23:59:59Z",
                "2028-03-31T23:59:59Z",
            ],
        ),
        (
            "2029-01-30T06:00:00Z",
            &["2029-02-28T06:00:00Z", "2029-03-30T06:00:00Z"],
        ),
    ];
    for (anchor, starts) in cases {
        let mut w = World::new(anchor);
        w.open("acme", "starter");
        for start in *starts {
            w.advance_to(start);
            let account = w.account("acme");
            assert_eq!(
                account.period_start().to_string(),
                *start,
                "anchor {anchor}"
            );
            assert_eq!(account.balance(w.now).budget.available, c("100").to_sum());
        }
    }
}

#[test]
fn the_first_period_contains_the_creation_and_has_the_full_budget() {
    let mut w = World::new("2026-11-20T08:00:00Z");
    w.open_anchored("acme", "starter", Some("2026-01-05T00:00:00Z"));
    let account = w.account("acme");
    assert_eq!(account.period_start(), t("2026-11-05T00:00:00Z"));
    assert_eq!(account.period_end(), t("2026-12-05T00:00:00Z"));
    assert_eq!(w.totals("acme"), "100/0/0");
}

#[test]
fn an_account_untouched_for_five_months_gets_five_renewals_in_order_exactly_once() {
    let mut w = World::new("2026-06-15T00:00:00Z");
    w.open("acme", "starter");
    w.charge("acme", "10").unwrap();
    let from = w.journal.len();
    w.advance_to("2026-11-20T00:00:00Z");
    let renewals: Vec<(String, String)> = w.journal[from..]
        .iter()
        .map(|e| {
            (
                e.body.type_name().to_string(),
                format!("{} {}", e.at, e.body.signed_credits()),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = [
        ("expire", "2026-07-15T00:00:00Z -90"),
        ("grant", "2026-07-15T00:00:00Z 100"),
        ("expire", "2026-08-15T00:00:00Z -100"),
        ("grant", "2026-08-15T00:00:00Z 100"),
        ("expire", "2026-09-15T00:00:00Z -100"),
        ("grant", "2026-09-15T00:00:00Z 100"),
        ("expire", "2026-10-15T00:00:00Z -100"),
        ("grant", "2026-10-15T00:00:00Z 100"),
        ("expire", "2026-11-15T00:00:00Z -100"),
        ("grant", "2026-11-15T00:00:00Z 100"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(renewals, expected);
    let entries = w.journal.len();
    w.advance_to("2026-11-20T00:00:00Z");
    w.charge("acme", "1").unwrap();
    assert_eq!(w.journal.len(), entries + 1, "nothing renews twice");
    assert_eq!(w.account("acme").period_index(), 5);
}

#[test]
fn the_unused_budget_rolls_over_up_to_the_cap_and_the_rest_expires_exactly() {
    let mut w = World::new("2026-11-01T00:00:00Z");
    w.open("acme", "pro"); // 400 a month, rollover cap 50
    w.charge("acme", "300").unwrap();
    let from = w.journal.len();
    w.advance_to("2026-12-01T00:00:00Z");
    assert_eq!(w.types_since(from), ["rollover", "expire", "grant"]);
    let Body::Expired(lost) = &w.journal[from + 1].body else {
        unreachable!()
    };
    assert_eq!(lost.credits, c("50"));
    assert_eq!(w.grants("acme"), "rollover:50/50 budget:400/400");
    // The recorded balances follow the entries: the rollover moves credits
    // (100 still), the expiry takes 50, the new budget gives 400.
    assert_eq!(available_after(&w, from), ["100", "50", "450"]);
    let rollover = &w.account("acme").grants()[0];
    assert_eq!(rollover.expires_at, t("2027-01-01T00:00:00Z"));
    // Rolled-over credits burn first, and do not roll again.
    let debit = w.charge("acme", "60").unwrap();
    assert_eq!(
        allocations(&debit),
        [
            (GrantKind::Rollover, "50".into()),
            (GrantKind::Budget, "10".into())
        ]
    );
    let from = w.journal.len();
    w.advance_to("2027-01-01T00:00:00Z");
    assert_eq!(w.types_since(from), ["rollover", "expire", "grant"]);
    assert_eq!(w.grants("acme"), "rollover:50/50 budget:400/400");
    assert_eq!(available_after(&w, from), ["390", "50", "450"]);
}

/// The available credits each entry since `from` recorded.
fn available_after(w: &World, from: usize) -> Vec<String> {
    w.journal[from..]
        .iter()
        .map(|e| e.balance_after.available.to_string())
        .collect()
}

#[test]
fn a_hold_expiring_at_the_period_end_is_released_before_the_budget_expires() {
    let mut w = World::new("2026-11-01T00:00:00Z");
    w.open("acme", "pro");
    w.charge("acme", "380").unwrap();
    w.now = t("2026-11-30T00:00:00Z");
    w.hold("acme", "20", 86_400).unwrap();
    let from = w.journal.len();
    w.advance_to("2026-12-01T00:00:00Z");
    assert_eq!(w.types_since(from), ["hold_expired", "rollover", "grant"]);
    assert_eq!(w.grants("acme"), "rollover:20/20 budget:400/400");
}

// ----- rule 5: tier changes -----

#[test]
fn upgrades_grow_the_current_budget_by_the_proration_chosen() {
    // starter 100 → pro 400: a difference of 300; November has 30 days.
    let cases = [
        ("2026-11-01T00:00:00Z", Proration::Full, "300"),
        ("2026-11-16T00:00:00Z", Proration::Prorated, "150"),
        ("2026-11-16T00:00:00Z", Proration::None, "0"),
        // The last second of the period: 300 × 1 / 2,592,000, rounded down.
        ("2026-11-30T23:59:59Z", Proration::Prorated, "0.000115"),
        ("2026-11-30T23:59:59Z", Proration::Full, "300"),
    ];
    for (now, proration, increase) in cases {
        let mut w = World::new("2026-11-01T00:00:00Z");
        w.open("acme", "starter");
        w.charge("acme", "30").unwrap();
        w.now = t(now);
        let entry = w.change_tier("acme", "pro", proration).unwrap();
        let Body::TierChanged(change) = &entry.body else {
            unreachable!()
        };
        assert_eq!(
            change.budget_increase.to_string(),
            increase,
            "{now} {proration:?}"
        );
        let account = w.account("acme");
        assert_eq!(account.tier().as_str(), "pro");
        let budget = account.balance(w.now).budget;
        assert_eq!(
            budget.granted,
            c("100").checked_add(c(increase)).unwrap().to_sum()
        );
        assert_eq!(budget.used, c("30").to_sum());
    }
}

#[test]
fn an_upgrade_in_the_last_second_then_renewal_grants_the_new_tier() {
    let mut w = World::new("2026-11-30T23:59:59Z");
    w.open_anchored("acme", "starter", Some("2026-11-01T00:00:00Z"));
    w.change_tier("acme", "pro", Proration::Prorated);
    w.advance_to("2026-12-01T00:00:00Z");
    assert_eq!(
        w.account("acme").balance(w.now).budget.granted,
        c("400").to_sum()
    );
}

#[test]
fn downgrades_wait_for_the_next_period_and_can_be_cancelled() {
    let mut w = World::new("2026-11-01T00:00:00Z");
    w.open("acme", "pro");
    w.charge("acme", "100").unwrap();
    let scheduled = w.change_tier("acme", "starter", Proration::Full).unwrap();
    assert_eq!(scheduled.body.type_name(), "tier_scheduled");
    assert_eq!(w.account("acme").tier().as_str(), "pro");
    assert_eq!(
        w.account("acme").pending_tier().map(TierId::as_str),
        Some("starter")
    );
    assert_eq!(w.totals("acme"), "300/0/0", "the budget is untouched");
    // Choosing the current tier again cancels it.
    w.change_tier("acme", "pro", Proration::Full).unwrap();
    assert_eq!(w.account("acme").pending_tier(), None);
    assert_eq!(
        w.change_tier("acme", "pro", Proration::Full),
        None,
        "nothing to change"
    );
    w.change_tier("acme", "starter", Proration::Full);
    let from = w.journal.len();
    w.advance_to("2026-12-01T00:00:00Z");
    // The ending tier's (pro's) rollover cap applies; then the downgrade, then the new budget.
    assert_eq!(
        w.types_since(from),
        ["rollover", "expire", "tier_changed", "grant"]
    );
    assert_eq!(w.account("acme").tier().as_str(), "starter");
    assert_eq!(w.grants("acme"), "rollover:50/50 budget:100/100");
}

#[test]
fn a_move_to_a_tier_with_as_many_credits_applies_at_once() {
    let mut w = World::new("2026-11-01T00:00:00Z");
    w.open("acme", "pro");
    let entry = w.change_tier("acme", "team", Proration::Full).unwrap();
    assert_eq!(entry.body.type_name(), "tier_changed");
    assert_eq!(w.account("acme").tier().as_str(), "team");
    assert_eq!(w.totals("acme"), "400/0/0");
    let unknown = w.refused(Command::ChangeTier {
        account: acme(),
        tier: TierId::parse("platinum").unwrap(),
        proration: Proration::Full,
    });
    assert_eq!(unknown, Rejection::UnknownTier);
}

// ----- rule 6: purchases -----

#[test]
fn a_purchase_grants_its_credits_exactly_once() {
    let mut w = World::new("2026-11-10T12:00:00Z");
    w.open("acme", "starter");
    let create = Command::CreatePurchase {
        account: acme(),
        package: purser_core::PackageId::parse("small").unwrap(),
    };
    let purchase = w.ok(create.clone()).unwrap().id();
    assert_eq!(w.totals("acme"), "100/0/0", "pending grants nothing");
    w.ok(Command::CompletePurchase { purchase });
    assert_eq!(w.totals("acme"), "300/0/0");
    let entries = w.journal.len();
    assert_eq!(
        w.ok(Command::CompletePurchase { purchase }),
        None,
        "a redelivery changes nothing"
    );
    assert_eq!(w.journal.len(), entries);
    assert_eq!(w.totals("acme"), "300/0/0");
    let refusal = w.refused(Command::FailPurchase {
        purchase,
        reason: None,
    });
    assert_eq!(
        refusal,
        Rejection::PurchaseNotAllowed {
            status: PurchaseStatus::Completed
        }
    );

    let failed = w.ok(create.clone()).unwrap().id();
    w.ok(Command::FailPurchase {
        purchase: failed,
        reason: None,
    });
    assert_eq!(
        w.ok(Command::FailPurchase {
            purchase: failed,
            reason: None
        }),
        None
    );
    for command in [
        Command::CompletePurchase { purchase: failed },
        Command::CancelPurchase { purchase: failed },
        Command::RefundPurchase {
            purchase: failed,
            share: None,
        },
    ] {
        assert_eq!(
            w.refused(command),
            Rejection::PurchaseNotAllowed {
                status: PurchaseStatus::Failed
            }
        );
    }
    let canceled = w.ok(create).unwrap().id();
    w.ok(Command::CancelPurchase { purchase: canceled });
    assert_eq!(
        w.account("acme").purchase(canceled.seq).unwrap().status,
        PurchaseStatus::Canceled
    );
    let missing = ObjectId {
        seq: 10_000,
        ..purchase
    };
    assert_eq!(
        w.refused(Command::CompletePurchase { purchase: missing }),
        Rejection::PurchaseNotFound
    );
    assert_eq!(w.totals("acme"), "300/0/0");
}

#[test]
fn a_refund_voids_the_unused_credits_and_held_ones_when_their_hold_ends() {
    let mut w = World::new("2026-11-10T12:00:00Z");
    w.open("acme", "starter");
    let purchase = w.buy("acme");
    w.charge("acme", "120").unwrap(); // budget 100, package 20
    let hold = w.hold("acme", "30", 600).unwrap(); // package 30
    let from = w.journal.len();
    w.ok(Command::RefundPurchase {
        purchase,
        share: None,
    });
    assert_eq!(w.types_since(from), ["purchase_refunded", "void"]);
    assert_eq!(
        w.journal.last().unwrap().body.signed_credits(),
        c("150").to_sum().checked_neg().unwrap()
    );
    assert_eq!(w.totals("acme"), "0/30/0");
    let from = w.journal.len();
    w.ok(Command::ReleaseHold { hold });
    assert_eq!(w.types_since(from), ["release", "void"]);
    assert_eq!(w.totals("acme"), "0/0/0");
    assert_eq!(
        w.ok(Command::RefundPurchase {
            purchase,
            share: None,
        }),
        None
    );
}

#[test]
fn a_partial_refund_voids_the_newly_refunded_share_of_what_is_left() {
    let mut w = World::new("2026-11-10T12:00:00Z");
    w.open("acme", "starter");
    let purchase = w.buy("acme"); // 200 package credits for 900 cents
    w.charge("acme", "120").unwrap(); // budget 100, package 20: 180 left
    let share = |refunded, paid| Some(purser_core::RefundedShare { refunded, paid });
    // A third of the payment: a third of the 180 left.
    let from = w.journal.len();
    w.ok(Command::RefundPurchase {
        purchase,
        share: share(300, 900),
    });
    assert_eq!(w.types_since(from), ["purchase_refunded", "void"]);
    assert_eq!(w.totals("acme"), "120/0/0");
    // Redelivered, or an older share arriving late: nothing.
    for refunded in [300, 100, 0] {
        assert_eq!(
            w.ok(Command::RefundPurchase {
                purchase,
                share: share(refunded, 900),
            }),
            None
        );
    }
    // Of another payment: refused.
    assert_eq!(
        w.refused(Command::RefundPurchase {
            purchase,
            share: share(500, 1000),
        }),
        Rejection::RefundMismatch
    );
    // 150 more of the 600 not yet refunded: a quarter of the 120 left
    // (the grant stays live with the rest, and the purchase completed).
    w.ok(Command::RefundPurchase {
        purchase,
        share: share(450, 900),
    });
    assert_eq!(w.totals("acme"), "90/0/0");
    assert_eq!(
        w.ledger
            .account_by_handle(purchase.account)
            .and_then(|a| a.purchase(purchase.seq))
            .map(|p| p.status),
        Some(PurchaseStatus::Completed)
    );
    // The rest of the payment: the rest of the credits, and refunded.
    let from = w.journal.len();
    w.ok(Command::RefundPurchase {
        purchase,
        share: share(900, 900),
    });
    assert_eq!(w.types_since(from), ["purchase_refunded", "void"]);
    assert_eq!(w.totals("acme"), "0/0/0");
    assert_eq!(
        w.refused(Command::RefundPurchase {
            purchase,
            share: share(100, 900),
        }),
        Rejection::PurchaseNotAllowed {
            status: PurchaseStatus::Refunded
        }
    );
}

#[test]
fn rounding_keeps_the_customers_credits_never_voids_more_than_is_left() {
    let mut w = World::new("2026-11-10T12:00:00Z");
    w.open("acme", "starter");
    let purchase = w.buy("acme");
    w.charge("acme", "100.000001").unwrap(); // 199.999999 package left
    w.ok(Command::RefundPurchase {
        purchase,
        share: Some(purser_core::RefundedShare {
            refunded: 1,
            paid: 3,
        }),
    });
    // 199.999999 / 3 = 66.666666333…: 66.666666 voided.
    assert_eq!(w.totals("acme"), "133.333333/0/0");
}

// ----- rule 7: holds -----

#[test]
fn capturing_less_than_the_hold_releases_the_rest() {
    let mut w = World::new("2026-11-10T12:00:00Z");
    w.open("acme", "starter");
    let hold = w.hold("acme", "40", 600).unwrap();
    assert_eq!(w.totals("acme"), "60/40/0");
    assert!(
        matches!(
            w.charge("acme", "61"),
            Err(Rejection::InsufficientCredits { .. })
        ),
        "held credits are not available"
    );
    let capture = w.capture(hold, CaptureAmount::Credits(c("25"))).unwrap();
    assert_eq!(capture.body.type_name(), "capture");
    assert_eq!(w.totals("acme"), "75/0/0");
    assert_eq!(
        w.refused(Command::ReleaseHold { hold }),
        Rejection::HoldNotActive
    );
    let unknown = ObjectId { seq: 999, ..hold };
    assert_eq!(
        w.refused(Command::ReleaseHold { hold: unknown }),
        Rejection::HoldNotFound
    );
}

#[test]
fn capturing_more_than_the_hold_charges_the_excess_or_leaves_the_hold_untouched() {
    let mut w = World::new("2026-11-10T12:00:00Z");
    w.open("acme", "starter");
    let hold = w.hold("acme", "40", 600).unwrap();
    let capture = w.capture(hold, CaptureAmount::Credits(c("50"))).unwrap();
    let Body::Captured(captured) = &capture.body else {
        unreachable!()
    };
    assert_eq!(
        (captured.from_hold.len(), captured.excess[0].credits),
        (1, c("10"))
    );
    assert_eq!(w.totals("acme"), "50/0/0");

    let hold = w.hold("acme", "45", 600).unwrap();
    let refusal = w
        .capture(hold, CaptureAmount::Credits(c("51")))
        .unwrap_err();
    assert_eq!(
        refusal,
        Rejection::InsufficientCredits {
            available: c("5").to_sum(),
            required: c("6")
        }
    );
    assert_eq!(
        w.account("acme").hold(hold.seq).unwrap().credits,
        c("45"),
        "untouched"
    );
    w.capture(hold, CaptureAmount::Hold).unwrap();
    assert_eq!(w.totals("acme"), "5/0/0");
}

#[test]
fn a_task_hold_is_captured_by_quantity_at_the_held_rate() {
    let mut w = World::new("2026-11-10T12:00:00Z");
    w.open("acme", "starter");
    let hold = w
        .hold_with("acme", World::task("assistant_message", "20"), 600, None)
        .unwrap();
    assert_eq!(w.totals("acme"), "90/10/0");
    let capture = w
        .capture(hold, CaptureAmount::Quantity(support::q("7")))
        .unwrap();
    let Body::Captured(captured) = &capture.body else {
        unreachable!()
    };
    assert_eq!(captured.credits, c("3.5"));
    assert_eq!(w.totals("acme"), "96.5/0/0");
    let by_credits = w.hold("acme", "5", 600).unwrap();
    let refusal = w
        .capture(by_credits, CaptureAmount::Quantity(support::q("1")))
        .unwrap_err();
    assert_eq!(refusal, Rejection::CaptureNeedsTask);
}

#[test]
fn an_unsettled_hold_expires_and_returns_its_credits() {
    let mut w = World::new("2026-11-10T12:00:00Z");
    w.open("acme", "starter");
    let hold = w.hold("acme", "40", 60).unwrap();
    w.advance_to("2026-11-10T12:00:59Z");
    assert_eq!(w.totals("acme"), "60/40/0");
    w.advance_to("2026-11-10T12:01:00Z");
    assert_eq!(w.journal.last().unwrap().body.type_name(), "hold_expired");
    assert_eq!(w.totals("acme"), "100/0/0");
    assert_eq!(
        w.capture(hold, CaptureAmount::Hold).unwrap_err(),
        Rejection::HoldNotActive
    );
}

#[test]
fn a_hold_is_ended_by_its_capture_release_or_expiry_and_nothing_else() {
    let mut w = World::new("2026-11-10T12:00:00Z");
    w.open("acme", "starter");
    let captured = w.hold("acme", "10", 600).unwrap();
    let released = w.hold("acme", "10", 600).unwrap();
    let expiring = w.hold("acme", "10", 60).unwrap();
    let placed = w.journal.len() - 1;
    assert!(w.journal[placed].body.creates(ObjectKind::Hold));
    assert!(!w.journal[placed].body.creates(ObjectKind::Debit));
    let capture = w.capture(captured, CaptureAmount::Credits(c("4"))).unwrap();
    let release = w.ok(Command::ReleaseHold { hold: released }).unwrap();
    w.advance_to("2026-11-10T12:01:00Z");
    let expiry = w.journal.last().unwrap().clone();
    let ends =
        |entry: &Entry| [captured, released, expiring].map(|hold| entry.body.ends_hold(hold.seq));
    assert_eq!(ends(&capture), [Some(HoldEnd::Captured), None, None]);
    assert_eq!(ends(&release), [None, Some(HoldEnd::Released), None]);
    assert_eq!(ends(&expiry), [None, None, Some(HoldEnd::Expired)]);
    assert_eq!(ends(&w.journal[placed]), [None, None, None]);
    // A capture is a debit: its record holds the hold's part, then the excess.
    assert!(capture.body.creates(ObjectKind::Debit));
    let record = DebitRecord::from_entry(capture.id(), &capture).unwrap();
    assert_eq!((record.credits, record.at), (c("4"), capture.at));
    let allocated: u64 = record.allocations.iter().map(|a| a.credits.micros()).sum();
    assert_eq!(allocated, c("4").micros());
    assert!(DebitRecord::from_entry(release.id(), &release).is_none());
}

#[test]
fn a_held_credit_whose_grant_expires_meanwhile_expires_when_released() {
    for settle in ["release", "capture"] {
        let mut w = World::new("2026-11-01T00:00:00Z");
        w.open("acme", "starter");
        w.now = t("2026-11-30T12:00:00Z");
        let hold = w.hold("acme", "100", 86_400).unwrap();
        let from = w.journal.len();
        w.advance_to("2026-12-01T00:00:00Z");
        assert_eq!(w.types_since(from), ["grant"], "nothing free to expire");
        assert_eq!(w.totals("acme"), "100/100/0");
        w.now = t("2026-12-01T06:00:00Z");
        let from = w.journal.len();
        if settle == "release" {
            w.ok(Command::ReleaseHold { hold });
            assert_eq!(w.types_since(from), ["release", "expire"]);
            assert_eq!(w.totals("acme"), "100/0/0");
        } else {
            w.capture(hold, CaptureAmount::Credits(c("60"))).unwrap();
            assert_eq!(w.types_since(from), ["capture", "expire"]);
            let Body::Expired(lost) = &w.journal.last().unwrap().body else {
                unreachable!()
            };
            assert_eq!(lost.credits, c("40"));
            assert_eq!(w.totals("acme"), "100/0/0");
        }
        assert_eq!(w.grants("acme"), "budget:100/100");
    }
}

#[test]
fn hold_time_to_live_is_bounded() {
    let mut w = World::new("2026-11-10T12:00:00Z");
    w.open("acme", "starter");
    for ttl in [0, -5, 86_401] {
        assert_eq!(
            w.hold("acme", "1", ttl).unwrap_err(),
            Rejection::LimitExceeded(Limit::HoldTtl)
        );
    }
    w.hold("acme", "1", 86_400).unwrap();
}

// ----- rule 8: member caps -----

#[test]
fn member_caps_refuse_strict_charges_and_holds_but_count_recorded_ones() {
    let mut w = World::new("2026-11-01T00:00:00Z");
    w.open("acme", "pro"); // cap 30 per member
    let charge = |w: &mut World, member: &str, credits: &str, mode| {
        w.charge_with("acme", Amount::Credits(c(credits)), Some(member), mode)
    };
    charge(&mut w, "alice", "20", ChargeMode::Strict).unwrap();
    w.hold_with("acme", Amount::Credits(c("10")), 600, Some("alice"))
        .unwrap();
    let refusal = charge(&mut w, "alice", "1", ChargeMode::Strict).unwrap_err();
    assert_eq!(refusal.code(), "member_limit_exceeded");
    let Rejection::MemberLimitExceeded { used, cap, .. } = refusal else {
        unreachable!()
    };
    assert_eq!((used, cap), (c("30").to_sum(), c("30")));
    let hold_refusal = w
        .hold_with("acme", Amount::Credits(c("1")), 600, Some("alice"))
        .unwrap_err();
    assert_eq!(hold_refusal.code(), "member_limit_exceeded");
    charge(&mut w, "bob", "25", ChargeMode::Strict).unwrap();
    charge(&mut w, "alice", "5", ChargeMode::Record).unwrap();
    assert_eq!(w.account("acme").member_usage("alice"), c("25").to_sum());
    // The account's own cap overrides the tier's.
    w.ok(Command::UpdateAccount {
        account: acme(),
        update: purser_core::AccountUpdate {
            member_monthly_cap: Some(Some(c("100"))),
            ..Default::default()
        },
    });
    charge(&mut w, "alice", "50", ChargeMode::Strict).unwrap();
    // A new period starts every member from zero (the hold expired long ago).
    w.advance_to("2026-12-01T00:00:00Z");
    assert_eq!(w.account("acme").member_usage("alice"), c("0").to_sum());
    charge(&mut w, "alice", "100", ChargeMode::Strict).unwrap();
}

// ----- rule 9: reversals -----

#[test]
fn reversals_return_credits_last_taken_first_returned() {
    let mut w = World::new("2026-11-10T12:00:00Z");
    w.open("acme", "starter");
    w.buy("acme");
    let debit = w.charge("acme", "120").unwrap(); // budget 100, then package 20
    assert_eq!(
        w.reverse(&debit, Some("200")).unwrap_err(),
        Rejection::ReversalTooLarge {
            reversible: c("120")
        }
    );
    let first = w.reverse(&debit, Some("30")).unwrap();
    let Body::Reversed(reversal) = &first.body else {
        unreachable!()
    };
    let returned: Vec<_> = reversal
        .returned
        .iter()
        .map(|a| (a.kind, a.credits.to_string()))
        .collect();
    assert_eq!(
        returned,
        [
            (GrantKind::Package, "20".into()),
            (GrantKind::Budget, "10".into())
        ]
    );
    assert_eq!(w.grants("acme"), "budget:10/100 package:200/200");
    w.reverse(&debit, None).unwrap();
    assert_eq!(w.grants("acme"), "budget:100/100 package:200/200");
    assert_eq!(
        w.reverse(&debit, None).unwrap_err(),
        Rejection::NothingToReverse
    );
}

#[test]
fn credits_of_an_expired_grant_are_forfeited_on_reversal() {
    let mut w = World::new("2026-11-01T00:00:00Z");
    w.open("acme", "starter");
    let debit = w.charge("acme", "50").unwrap();
    w.advance_to("2026-12-01T00:00:00Z");
    let entry = w.reverse(&debit, None).unwrap();
    let Body::Reversed(reversal) = &entry.body else {
        unreachable!()
    };
    assert!(reversal.returned.is_empty());
    assert_eq!(reversal.forfeited[0].credits, c("50"));
    assert_eq!(entry.body.signed_credits(), c("0").to_sum());
    assert_eq!(w.totals("acme"), "100/0/0");
}

#[test]
fn reversing_the_debt_part_cancels_debt_or_gives_paid_debt_back_as_promo() {
    let mut w = World::new("2026-11-10T12:00:00Z");
    w.open("acme", "free");
    let debit = w.record("acme", "25"); // budget 10, debt 15
    w.reverse(&debit, Some("5")).unwrap();
    assert_eq!(w.totals("acme"), "0/0/10");
    w.promo("acme", "20", None); // pays the remaining 10 of debt
    assert_eq!(w.totals("acme"), "10/0/0");
    let from = w.journal.len();
    let entry = w.reverse(&debit, Some("12")).unwrap();
    let Body::Reversed(reversal) = &entry.body else {
        unreachable!()
    };
    assert_eq!(
        (reversal.debt_canceled, reversal.debt_refunded),
        (c("0"), c("10"))
    );
    assert_eq!(reversal.returned[0].credits, c("2"));
    assert_eq!(w.types_since(from), ["reversal", "grant"]);
    assert_eq!(w.totals("acme"), "22/0/0");
}

#[test]
fn a_reversal_gives_a_member_its_usage_back() {
    let mut w = World::new("2026-11-01T00:00:00Z");
    w.open("acme", "pro");
    let debit = w
        .charge_with(
            "acme",
            Amount::Credits(c("30")),
            Some("alice"),
            ChargeMode::Strict,
        )
        .unwrap();
    w.reverse(&debit, Some("10")).unwrap();
    assert_eq!(w.account("acme").member_usage("alice"), c("20").to_sum());
    w.charge_with(
        "acme",
        Amount::Credits(c("10")),
        Some("alice"),
        ChargeMode::Strict,
    )
    .unwrap();
}

// ----- grants and voids -----

#[test]
fn operator_grants_and_voids() {
    let mut w = World::new("2026-11-10T12:00:00Z");
    w.open("acme", "starter");
    let grant = w.promo("acme", "50", Some("2026-11-11T00:00:00Z"));
    assert_eq!(w.totals("acme"), "150/0/0");
    let hold = w.hold("acme", "120", 600).unwrap(); // budget 100, promo 20
    w.ok(Command::VoidGrant { grant });
    assert_eq!(w.totals("acme"), "0/120/0");
    assert_eq!(
        w.refused(Command::VoidGrant { grant }),
        Rejection::GrantNotLive
    );
    w.capture(hold, CaptureAmount::Credits(c("110"))).unwrap();
    // 10 of the promo's held credits came back to a voided grant: voided.
    assert_eq!(w.journal.last().unwrap().body.type_name(), "void");
    assert_eq!(w.totals("acme"), "0/0/0");
    let refusals = [
        (GrantKind::Budget, None, "grant_kind_not_allowed"),
        (
            GrantKind::Promo,
            Some("2026-11-10T12:00:00Z"),
            "expiry_in_past",
        ),
    ];
    for (kind, expires_at, code) in refusals {
        let refusal = w.refused(Command::IssueGrant {
            account: acme(),
            kind,
            credits: c("1"),
            expires_at: expires_at.map(t),
            priority: None,
            reason: "x".into(),
        });
        assert_eq!(refusal.code(), code);
    }
}

#[test]
fn a_promo_expires_on_time_with_an_expire_entry_for_exactly_what_is_left() {
    let mut w = World::new("2026-11-10T12:00:00Z");
    w.open("acme", "free");
    w.promo("acme", "50", Some("2026-11-12T00:00:00Z"));
    w.charge("acme", "22.5").unwrap();
    w.advance_to("2026-11-12T00:00:00Z");
    let last = w.journal.last().unwrap();
    assert_eq!(
        (
            last.body.type_name(),
            last.body.signed_credits().to_string()
        ),
        ("expire", "-37.5".into())
    );
    assert_eq!(last.at, t("2026-11-12T00:00:00Z"));
}

// ----- limits and accounts -----

#[test]
fn grants_per_account_are_bounded() {
    let mut w = World::new("2026-11-10T12:00:00Z");
    w.open("acme", "free");
    for _ in 0..purser_core::limits::MAX_GRANTS_PER_ACCOUNT {
        w.promo("acme", "0.000001", None);
    }
    let refusal = w.refused(Command::IssueGrant {
        account: acme(),
        kind: GrantKind::Promo,
        credits: c("1"),
        expires_at: None,
        priority: None,
        reason: "one too many".into(),
    });
    assert_eq!(refusal, Rejection::LimitExceeded(Limit::GrantsPerAccount));
}

#[test]
fn accounts_are_unique_and_closed_accounts_take_no_charges() {
    let mut w = World::new("2026-11-10T12:00:00Z");
    w.open("acme", "starter");
    let again = Command::OpenAccount {
        id: acme(),
        name: None,
        tier: TierId::parse("starter").unwrap(),
        anchor: None,
        member_monthly_cap: None,
        metadata: Metadata::EMPTY,
        low_balance_thresholds: None,
        auto_recharge: None,
    };
    assert_eq!(w.refused(again), Rejection::AccountExists);
    let unknown_tier = Command::OpenAccount {
        id: AccountId::parse("other").unwrap(),
        name: None,
        tier: TierId::parse("gold").unwrap(),
        anchor: None,
        member_monthly_cap: None,
        metadata: Metadata::EMPTY,
        low_balance_thresholds: None,
        auto_recharge: None,
    };
    assert_eq!(w.refused(unknown_tier), Rejection::UnknownTier);
    assert_eq!(
        w.charge("nobody", "1").unwrap_err(),
        Rejection::AccountNotFound
    );
    let debit = w.charge("acme", "10").unwrap();
    w.ok(Command::CloseAccount { account: acme() });
    assert_eq!(w.charge("acme", "1").unwrap_err(), Rejection::AccountClosed);
    w.reverse(&debit, None).unwrap();
    // No renewals for a closed account; its budget still expires.
    w.advance_to("2027-02-01T00:00:00Z");
    assert_eq!(w.totals("acme"), "0/0/0");
}

/// Rule 6 at scale (issue 14): packages are bought any number of times.
/// Spent package grants leave burn order (no charge walks them) and do not
/// count toward the per-account grant limit; a reversal still gives credits
/// back to the grant they came from, which comes back into burn order; a
/// snapshot keeps them.
#[test]
fn an_account_buys_packages_any_number_of_times() {
    let mut w = World::new("2026-11-10T12:00:00Z");
    w.open("acme", "starter");
    w.charge("acme", "100").unwrap(); // the budget, gone
    let mut first_debit = None;
    for _ in 0..100_000 {
        w.buy("acme");
        let debit = w.charge("acme", "200").unwrap();
        first_debit.get_or_insert(debit);
    }
    let account = w.account("acme");
    assert_eq!(account.purchases().len(), 100_000);
    assert_eq!(account.spent().count(), 100_000);
    assert!(account.grants().len() <= 2, "{}", account.grants().len());
    assert_eq!(w.totals("acme"), "0/0/0");
    // Still room for more: the limit counts grants with credits left.
    w.buy("acme");
    assert_eq!(w.totals("acme"), "200/0/0");
    // A snapshot holds the spent grants; the restored account is the same.
    let snapshot = w.account("acme").snapshot();
    let restored = purser_core::Account::restore(snapshot.clone());
    assert_eq!(restored.snapshot(), snapshot);
    assert_eq!(restored.spent().count(), 100_000);
    // The first charge's credits go back to its (spent) grant.
    let first = first_debit.unwrap();
    let reversal = w.reverse(&first, None).unwrap();
    assert_eq!(w.totals("acme"), "400/0/0");
    let Body::Reversed(reversed) = &reversal.body else {
        panic!("{reversal:?}");
    };
    let grant = reversed.returned[0].grant;
    assert_eq!(w.account("acme").grant(grant).unwrap().remaining, c("200"));
    assert_eq!(w.account("acme").spent().count(), 99_999);
}

/// A spent promo grant that expires leaves memory with the account's first
/// entry after its expiry, as it did before spent grants were set aside.
#[test]
fn a_spent_grant_that_expires_is_forgotten() {
    let mut w = World::new("2026-11-10T12:00:00Z");
    w.open("acme", "starter");
    w.charge("acme", "100").unwrap();
    w.promo("acme", "50", Some("2026-11-20T00:00:00Z"));
    w.buy("acme");
    w.charge("acme", "250").unwrap(); // the promo (priority 5), then the package
    assert_eq!(w.account("acme").spent().count(), 2);
    w.advance_to("2026-11-21T00:00:00Z");
    w.buy("acme"); // any entry after the expiry
    assert_eq!(
        w.account("acme")
            .spent()
            .map(|g| g.kind)
            .collect::<Vec<_>>(),
        [GrantKind::Package]
    );
}
