//! Deciding purchase commands: create, complete (the package granted once),
//! fail, cancel, refund (whole or a share), and auto-recharge, which makes
//! a purchase after a command that left the balance below its threshold.
//! The rest of the commands are in `decide.rs`.

use crate::account::{Account, AccountStatus};
use crate::catalog::{Catalog, Package};
use crate::credits::Credits;
use crate::decide::{Context, Decided};
use crate::entry::{
    Allocation, AutoRechargeConfig, Body, Entry, Purchase, PurchaseStatus, RechargeFailure,
    RechargeOutcome, RefundedShare, VoidReason,
};
use crate::grant::{GrantKind, GrantSource, GrantState};
use crate::ids::PackageId;
use crate::limits::{Limit, MAX_GRANTS_PER_ACCOUNT, MAX_PENDING_PURCHASES_PER_ACCOUNT};
use crate::rejection::Rejection;
use crate::time::Timestamp;

impl Purchase {
    /// A new purchase of `package`, pending payment (the package's credits
    /// and price fixed now), made by auto-recharge or not.
    fn pending(seq: u64, package: &Package, now: Timestamp, auto_recharge: bool) -> Purchase {
        Purchase {
            seq,
            package: package.id.clone(),
            credits: package.credits,
            price: package.price,
            status: PurchaseStatus::Pending,
            grant: None,
            created_at: now,
            updated_at: now,
            partly_refunded: None,
            auto_recharge,
        }
    }
}

impl Account {
    pub(crate) fn create_purchase(&mut self, cx: Context<'_>, package: PackageId) -> Decided {
        self.ensure_active()?;
        let package = cx
            .catalog
            .package(package.as_str())
            .ok_or(Rejection::UnknownPackage)?;
        if self.pending_purchases() >= MAX_PENDING_PURCHASES_PER_ACCOUNT {
            return Err(Rejection::LimitExceeded(Limit::PendingPurchasesPerAccount));
        }
        if self.bounded_grants() >= MAX_GRANTS_PER_ACCOUNT {
            return Err(Rejection::LimitExceeded(Limit::GrantsPerAccount));
        }
        let purchase = Purchase::pending(self.next_seq, package, cx.now, false);
        Ok(Some(self.emit(
            cx.now,
            Body::PurchaseCreated(Box::new(purchase)),
            cx.out,
        )))
    }

    /// Moves a purchase from `from` to `to`. Already in `to`: nothing happens
    /// and it is not an error (payment providers redeliver).
    fn move_purchase(
        &mut self,
        cx: &mut Context<'_>,
        seq: u64,
        from: PurchaseStatus,
        to: PurchaseStatus,
    ) -> Decided {
        let purchase = self.purchase(seq).ok_or(Rejection::PurchaseNotFound)?;
        if purchase.status == to {
            return Ok(None);
        }
        if purchase.status != from {
            return Err(Rejection::PurchaseNotAllowed {
                status: purchase.status,
            });
        }
        let body = Body::PurchaseUpdated {
            purchase: seq,
            status: to,
        };
        Ok(Some(self.emit(cx.now, body, cx.out)))
    }

    /// Rule 6: the package's credits are granted exactly once.
    pub(crate) fn complete_purchase(&mut self, mut cx: Context<'_>, seq: u64) -> Decided {
        let moved = self.move_purchase(
            &mut cx,
            seq,
            PurchaseStatus::Pending,
            PurchaseStatus::Completed,
        )?;
        if moved.is_some() {
            let credits = self.purchase(seq).map_or(Credits::ZERO, |p| p.credits);
            let grant = self.operator_grant(
                GrantKind::Package,
                credits,
                Timestamp::NEVER,
                GrantKind::Package.default_priority(),
                cx.now,
                GrantSource::Purchase { purchase: seq },
            );
            self.emit(cx.now, Body::Granted(Box::new(grant)), cx.out);
            self.recharge_outcome(&mut cx, seq, RechargeOutcome::Succeeded);
        }
        Ok(moved)
    }

    pub(crate) fn fail_purchase(
        &mut self,
        mut cx: Context<'_>,
        seq: u64,
        reason: Option<RechargeFailure>,
    ) -> Decided {
        let moved = self.move_purchase(
            &mut cx,
            seq,
            PurchaseStatus::Pending,
            PurchaseStatus::Failed,
        )?;
        if moved.is_some() {
            let reason = reason
                .filter(|reason| reason.counts())
                .unwrap_or(RechargeFailure::PaymentFailed);
            self.recharge_outcome(&mut cx, seq, RechargeOutcome::Failed(reason));
        }
        Ok(moved)
    }

    /// Tells how an auto-recharge's purchase `seq` went (nothing for
    /// another purchase).
    fn recharge_outcome(&mut self, cx: &mut Context<'_>, seq: u64, outcome: RechargeOutcome) {
        if self.purchase(seq).is_some_and(|p| p.auto_recharge) {
            let body = Body::AutoRecharge {
                purchase: Some(seq),
                outcome,
            };
            self.emit(cx.now, body, cx.out);
        }
    }

    /// Auto-recharge (API.md "Alerts and auto-recharge"), after a command:
    /// if it is on, none of its purchases is pending and available is below
    /// its threshold, one purchase of its package is made for the payment
    /// provider to charge; past `max_per_month` this period, that is told
    /// once instead. A package no longer in the catalog, or the account at
    /// its pending-purchase or grant limit, makes nothing.
    pub(crate) fn recharge(&mut self, catalog: &Catalog, now: Timestamp, out: &mut Vec<Entry>) {
        let Some(auto) = self.auto_recharge.as_deref() else {
            return;
        };
        if !auto.config.enabled
            || auto.in_flight.is_some()
            || self.status != AccountStatus::Active
            || self.levels(now).available >= auto.config.threshold.to_sum()
        {
            return;
        }
        let made = if auto.period == self.period_index {
            auto.made
        } else {
            0
        };
        if auto.config.max_per_month.is_some_and(|max| made >= max) {
            if auto.limit_told != Some(self.period_index) {
                let body = Body::AutoRecharge {
                    purchase: None,
                    outcome: RechargeOutcome::Failed(RechargeFailure::MonthlyLimitReached),
                };
                self.emit(now, body, out);
            }
            return;
        }
        let Some(package) = catalog.package(auto.config.package.as_str()) else {
            return;
        };
        if self.pending_purchases() >= MAX_PENDING_PURCHASES_PER_ACCOUNT
            || self.bounded_grants() >= MAX_GRANTS_PER_ACCOUNT
        {
            return;
        }
        let purchase = Purchase::pending(self.next_seq, package, now, true);
        self.emit(now, Body::PurchaseCreated(Box::new(purchase)), out);
    }

    pub(crate) fn cancel_purchase(&mut self, mut cx: Context<'_>, seq: u64) -> Decided {
        self.move_purchase(
            &mut cx,
            seq,
            PurchaseStatus::Pending,
            PurchaseStatus::Canceled,
        )
    }

    /// The package grant's unconsumed remainder is voided; held credits are
    /// voided when their hold ends. A partial refund (`share` below all of
    /// the payment) voids the newly refunded part of what is left:
    /// `free × (refunded − before) / (paid − before)`, rounded down, where
    /// `before` is what earlier partial refunds covered. A share at or
    /// below one already applied changes nothing (providers redeliver, and
    /// out of order).
    pub(crate) fn refund_purchase(
        &mut self,
        mut cx: Context<'_>,
        seq: u64,
        share: Option<RefundedShare>,
    ) -> Decided {
        if let Some(share) = share.filter(|share| share.refunded < share.paid) {
            return self.refund_part(cx, seq, share);
        }
        let moved = self.move_purchase(
            &mut cx,
            seq,
            PurchaseStatus::Completed,
            PurchaseStatus::Refunded,
        )?;
        let grant = self
            .purchase(seq)
            .and_then(|p| p.grant)
            .and_then(|g| self.grant(g));
        if let (Some(_), Some(grant)) = (moved, grant)
            && grant.state == GrantState::Live
        {
            let allocation = Allocation {
                grant: grant.seq,
                kind: grant.kind,
                credits: grant.free(),
            };
            let body = Body::Voided {
                allocation,
                reason: VoidReason::Refund { purchase: seq },
            };
            self.emit(cx.now, body, cx.out);
        }
        Ok(moved)
    }

    fn refund_part(&mut self, cx: Context<'_>, seq: u64, share: RefundedShare) -> Decided {
        let purchase = self.purchase(seq).ok_or(Rejection::PurchaseNotFound)?;
        if purchase.status != PurchaseStatus::Completed {
            return Err(Rejection::PurchaseNotAllowed {
                status: purchase.status,
            });
        }
        let before = purchase.partly_refunded.unwrap_or(RefundedShare {
            refunded: 0,
            paid: share.paid,
        });
        if before.paid != share.paid {
            return Err(Rejection::RefundMismatch);
        }
        if share.refunded <= before.refunded {
            return Ok(None);
        }
        let grant = purchase
            .grant
            .and_then(|g| self.grant(g))
            .filter(|grant| grant.state == GrantState::Live)
            .map(|grant| (grant.seq, grant.kind, grant.free()));
        let primary = self.emit(
            cx.now,
            Body::PurchasePartlyRefunded {
                purchase: seq,
                share,
            },
            cx.out,
        );
        if let Some((grant, kind, free)) = grant {
            let newly = u128::from(share.refunded - before.refunded);
            let rest = u128::from(share.paid - before.refunded);
            let voided = u128::from(free.micros()) * newly / rest;
            let voided = Credits::from_micros(u64::try_from(voided).expect("at most free"))
                .expect("at most free");
            if voided > Credits::ZERO {
                let body = Body::Voided {
                    allocation: Allocation {
                        grant,
                        kind,
                        credits: voided,
                    },
                    reason: VoidReason::PartialRefund { purchase: seq },
                };
                self.emit(cx.now, body, cx.out);
            }
        }
        Ok(Some(primary))
    }
}

/// An auto-recharge setting the catalog can honour.
pub(crate) fn check_auto_recharge(
    catalog: &Catalog,
    config: &AutoRechargeConfig,
) -> Result<(), Rejection> {
    if catalog.package(config.package.as_str()).is_none() {
        return Err(Rejection::UnknownPackage);
    }
    Ok(())
}
