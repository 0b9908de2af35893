//! Journal entries: the append-only record of everything that changed an
//! account. Entries are complete deltas: applying an account's entries in
//! order to nothing rebuilds the account exactly (see [`crate::Ledger::apply`]).

use crate::credits::{CreditSum, Credits, Quantity};
use crate::grant::{Grant, GrantKind};
use crate::ids::{
    AccountHandle, AccountId, MemberId, ObjectId, ObjectKind, PackageId, TaskId, TierId,
};
use crate::metadata::Metadata;
use crate::time::Timestamp;

/// One journal entry of one account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub account: AccountHandle,
    /// Account-local, gapless, from 0.
    pub seq: u64,
    pub at: Timestamp,
    pub body: Body,
    /// The account's balances right after this entry.
    pub balance_after: BalanceAfter,
    /// Who caused it (API.md "Audit"); `None` for entries written before
    /// actors were recorded, and by callers that do not say. One allocation
    /// shared by the entries of a command (8 bytes an entry).
    pub actor: Option<std::sync::Arc<Actor>>,
}

/// Who caused a change: an API key, a customer in the portal, purser itself
/// (renewals, expiries), or a payment provider's event. Ids are shared,
/// not copied, between the entries of one command.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Actor {
    ApiKey(std::sync::Arc<str>),
    Portal(std::sync::Arc<str>),
    System,
    Provider(std::sync::Arc<str>),
}

/// The system actor, shared (no allocation per use).
static SYSTEM: std::sync::LazyLock<std::sync::Arc<Actor>> =
    std::sync::LazyLock::new(|| std::sync::Arc::new(Actor::System));

impl Actor {
    /// [`Actor::System`], shared.
    pub fn system() -> std::sync::Arc<Actor> {
        SYSTEM.clone()
    }

    /// The actor's type, as the API names it.
    pub fn kind(&self) -> &'static str {
        match self {
            Actor::ApiKey(_) => "api_key",
            Actor::Portal(_) => "portal",
            Actor::System => "system",
            Actor::Provider(_) => "provider",
        }
    }

    /// The actor's id (`None` for the system).
    pub fn id(&self) -> Option<&str> {
        match self {
            Actor::ApiKey(id) | Actor::Portal(id) | Actor::Provider(id) => Some(id),
            Actor::System => None,
        }
    }
}

impl Entry {
    pub fn id(&self) -> ObjectId {
        ObjectId {
            account: self.account,
            seq: self.seq,
        }
    }

    /// The transaction id, `txn_…`.
    pub fn transaction_id(&self) -> String {
        self.id().format(ObjectKind::Transaction)
    }
}

/// Balances after an entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BalanceAfter {
    /// What a strict charge could take: free credits of active grants.
    pub available: CreditSum,
    pub held: CreditSum,
    pub debt: Credits,
}

/// Credits taken from (or returned to) one grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allocation {
    pub grant: u64,
    pub kind: GrantKind,
    pub credits: Credits,
}

/// Sum of the credits of allocations.
pub fn allocated(allocations: &[Allocation]) -> CreditSum {
    allocations.iter().map(|a| a.credits).sum()
}

/// Whether a charge may overdraw.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ChargeMode {
    /// Refused when the available credits are short (the default).
    #[default]
    Strict,
    /// Usage that already happened: what the grants cannot cover becomes debt.
    Record,
}

impl ChargeMode {
    pub const fn as_str(self) -> &'static str {
        match self {
            ChargeMode::Strict => "strict",
            ChargeMode::Record => "record",
        }
    }
}

/// How a charge's credits were priced from the rate card, kept with the
/// charge so a later price change never rewrites history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pricing {
    pub task: TaskId,
    /// `None` for a hold captured by credits rather than by quantity.
    pub quantity: Option<Quantity>,
    pub rate: Credits,
    pub minimum: Option<Credits>,
}

/// A charge (type `debit`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Debit {
    pub credits: Credits,
    pub pricing: Option<Pricing>,
    pub member: Option<MemberId>,
    pub mode: ChargeMode,
    /// In burn order; with `debt_incurred` they add up to `credits`.
    pub allocations: Vec<Allocation>,
    pub debt_incurred: Credits,
    pub metadata: Metadata,
}

/// Credits reserved for a long job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hold {
    /// Sequence number of the entry that placed it (its id).
    pub seq: u64,
    pub credits: Credits,
    pub pricing: Option<Pricing>,
    pub member: Option<MemberId>,
    /// In burn order; they add up to `credits`.
    pub allocations: Vec<Allocation>,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub metadata: Metadata,
}

/// A hold settled by a charge (type `capture`): the debit of a hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capture {
    pub hold: u64,
    pub credits: Credits,
    pub pricing: Option<Pricing>,
    pub member: Option<MemberId>,
    pub mode: ChargeMode,
    /// Taken from the hold's credits, in the hold's order.
    pub from_hold: Vec<Allocation>,
    /// Taken from free credits, for a capture above the hold.
    pub excess: Vec<Allocation>,
    pub debt_incurred: Credits,
    /// Held credits given back to their grants.
    pub released: Vec<Allocation>,
}

impl Capture {
    /// What the capture took, one allocation per grant (rule 1): the
    /// held part and the excess of a capture above its hold can come from
    /// the same grant, and are summed, in the order first taken.
    pub fn allocations(&self) -> Vec<Allocation> {
        let mut merged: Vec<Allocation> = Vec::with_capacity(self.from_hold.len());
        for allocation in self.from_hold.iter().chain(&self.excess) {
            match merged.iter_mut().find(|m| m.grant == allocation.grant) {
                // A capture's credits are within bounds, so their sum is.
                Some(m) => {
                    m.credits = m
                        .credits
                        .checked_add(allocation.credits)
                        .unwrap_or(m.credits)
                }
                None => merged.push(*allocation),
            }
        }
        merged
    }
}

/// Why a hold ended without a capture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReleaseReason {
    /// Released by the operator (type `release`).
    Released,
    /// Not settled by its expiry (type `hold_expired`).
    Expired,
}

/// A hold's credits given back to their grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Release {
    pub hold: u64,
    pub reason: ReleaseReason,
    pub allocations: Vec<Allocation>,
}

/// Why credits were voided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoidReason {
    /// The operator voided the grant.
    GrantVoided,
    /// The purchase (sequence number) that issued the grant was refunded.
    Refund { purchase: u64 },
    /// Part of that purchase's payment was refunded: these credits go, the
    /// grant stays live with the rest.
    PartialRefund { purchase: u64 },
    /// Held credits of a voided grant, voided as their hold ended.
    HoldEnded,
}

/// A charge (fully or partly) given back (type `reversal`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reversal {
    /// Sequence number of the debit or capture reversed.
    pub debit: u64,
    pub credits: Credits,
    /// Credits back on the grants they came from (last taken, first returned).
    pub returned: Vec<Allocation>,
    /// Credits whose grant expired or was voided meanwhile: lost.
    pub forfeited: Vec<Allocation>,
    /// The debt part of the charge that cancelled outstanding debt.
    pub debt_canceled: Credits,
    /// The debt part whose debt was already paid: given back as a promo grant
    /// by the entry that follows.
    pub debt_refunded: Credits,
    pub member: Option<MemberId>,
    /// How much the member's usage in the current period went down.
    pub member_usage_reduced: Credits,
}

/// How an upgrade grows the current budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Proration {
    /// By the whole difference of monthly credits (the default).
    #[default]
    Full,
    /// By the difference times the fraction of the period left, rounded down.
    Prorated,
    /// Not at all; the new tier's budget starts at the next period.
    None,
}

impl Proration {
    pub const fn as_str(self) -> &'static str {
        match self {
            Proration::Full => "full",
            Proration::Prorated => "prorated",
            Proration::None => "none",
        }
    }
}

/// The account's tier changed (type `tier_changed`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TierChange {
    pub from: TierId,
    pub to: TierId,
    pub proration: Proration,
    /// Added to the current budget grant `budget_grant`.
    pub budget_increase: Credits,
    pub budget_grant: Option<u64>,
    /// A downgrade scheduled earlier, applied at the period start.
    pub scheduled: bool,
}

/// Lifecycle of a purchase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PurchaseStatus {
    Pending,
    Completed,
    Failed,
    Canceled,
    Refunded,
}

impl PurchaseStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            PurchaseStatus::Pending => "pending",
            PurchaseStatus::Completed => "completed",
            PurchaseStatus::Failed => "failed",
            PurchaseStatus::Canceled => "canceled",
            PurchaseStatus::Refunded => "refunded",
        }
    }
}

/// A package purchase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Purchase {
    /// Sequence number of the entry that created it (its id).
    pub seq: u64,
    pub package: PackageId,
    pub credits: Credits,
    pub price: Credits,
    pub status: PurchaseStatus,
    /// The package grant, once completed.
    pub grant: Option<u64>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// How much of the payment the provider has refunded so far, while
    /// the purchase stays completed (partial refunds); `None` before any.
    pub partly_refunded: Option<RefundedShare>,
    /// Made by auto-recharge, not by a customer or the operator.
    pub auto_recharge: bool,
}

/// A payment partly refunded: `refunded` of `paid`, in the currency's minor
/// units as the payment provider counts them (cumulative).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefundedShare {
    pub refunded: u64,
    pub paid: u64,
}

/// The account was opened (type `account_created`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened {
    pub id: AccountId,
    pub name: Box<str>,
    pub tier: TierId,
    pub anchor: Timestamp,
    pub member_monthly_cap: Option<Credits>,
    pub metadata: Metadata,
    /// The period that contains the creation.
    pub period_index: i64,
    /// The account's own low-balance thresholds; `None`: its tier's.
    pub low_balance_thresholds: Option<Vec<Credits>>,
    pub auto_recharge: Option<AutoRechargeConfig>,
}

/// Operator changes to an account (type `account_updated`); `None` keeps a field.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccountUpdate {
    pub name: Option<Box<str>>,
    pub metadata: Option<Metadata>,
    /// `Some(None)` removes the account's own cap (the tier's applies).
    pub member_monthly_cap: Option<Option<Credits>>,
    /// `Some(None)` goes back to the tier's thresholds.
    pub low_balance_thresholds: Option<Option<Vec<Credits>>>,
    /// `Some(None)` removes auto-recharge. Boxed: it would make every
    /// command larger to move.
    pub auto_recharge: Option<Option<Box<AutoRechargeConfig>>>,
}

/// What happened, with everything needed to apply it again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    Opened(Box<Opened>),
    Updated(Box<AccountUpdate>),
    Closed,
    /// A grant was issued (type `grant`). A budget grant of a later period
    /// starts that period.
    Granted(Box<Grant>),
    Debited(Debit),
    Held(Box<Hold>),
    Captured(Box<Capture>),
    Released(Release),
    /// Credits of one grant lost at its expiry, or as a held credit of an
    /// expired grant is released (type `expire`).
    Expired(Allocation),
    /// Credits of one grant voided (type `void`).
    Voided {
        allocation: Allocation,
        reason: VoidReason,
    },
    Reversed(Box<Reversal>),
    /// Newly available credits paid outstanding debt (type `debt_paid`).
    DebtPaid(Vec<Allocation>),
    TierChanged(Box<TierChange>),
    /// A downgrade scheduled for the next period start, or cancelled (`None`)
    /// (type `tier_scheduled`).
    TierScheduled(Option<TierId>),
    /// Unused budget moved into a rollover grant at a period's end (type
    /// `rollover`): `from` leaves the budget grants, `grant` receives it.
    RolledOver {
        from: Vec<Allocation>,
        grant: Box<Grant>,
    },
    PurchaseCreated(Box<Purchase>),
    PurchaseUpdated {
        purchase: u64,
        status: PurchaseStatus,
    },
    /// Part of a completed purchase's payment was refunded (type
    /// `purchase_refunded`); the share of the grant's free credits it
    /// stands for is voided by the entry that follows.
    PurchasePartlyRefunded {
        purchase: u64,
        share: RefundedShare,
    },
    /// How an auto-recharge went: its purchase completed or failed (with
    /// the reason), or none was made (`purchase` `None`: the monthly limit).
    AutoRecharge {
        purchase: Option<u64>,
        outcome: RechargeOutcome,
    },
}

/// Every entry type, as the API names it (what [`Body::type_name`] gives).
pub const TYPE_NAMES: [&str; 23] = [
    "account_created",
    "account_updated",
    "account_closed",
    "grant",
    "debit",
    "hold",
    "capture",
    "release",
    "hold_expired",
    "expire",
    "void",
    "reversal",
    "debt_paid",
    "tier_changed",
    "tier_scheduled",
    "rollover",
    "purchase_created",
    "purchase_completed",
    "purchase_failed",
    "purchase_canceled",
    "purchase_refunded",
    "auto_recharge_succeeded",
    "auto_recharge_failed",
];

/// How a hold ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldEnd {
    Captured,
    Released,
    Expired,
}

impl Body {
    /// Whether this entry created an object of `kind` (its id names the entry).
    pub fn creates(&self, kind: ObjectKind) -> bool {
        match kind {
            ObjectKind::Debit => matches!(self, Body::Debited(_) | Body::Captured(_)),
            ObjectKind::Grant => matches!(self, Body::Granted(_) | Body::RolledOver { .. }),
            ObjectKind::Hold => matches!(self, Body::Held(_)),
            ObjectKind::Purchase => matches!(self, Body::PurchaseCreated(_)),
            ObjectKind::Transaction => true,
        }
    }

    /// How this entry ended the account's hold `hold`, if it did.
    pub fn ends_hold(&self, hold: u64) -> Option<HoldEnd> {
        match self {
            Body::Captured(capture) if capture.hold == hold => Some(HoldEnd::Captured),
            Body::Released(release) if release.hold == hold => Some(match release.reason {
                ReleaseReason::Released => HoldEnd::Released,
                ReleaseReason::Expired => HoldEnd::Expired,
            }),
            _ => None,
        }
    }

    /// The entry's type, as the API names it.
    pub fn type_name(&self) -> &'static str {
        match self {
            Body::Opened(_) => "account_created",
            Body::Updated(_) => "account_updated",
            Body::Closed => "account_closed",
            Body::Granted(_) => "grant",
            Body::Debited(_) => "debit",
            Body::Held(_) => "hold",
            Body::Captured(_) => "capture",
            Body::Released(release) => match release.reason {
                ReleaseReason::Released => "release",
                ReleaseReason::Expired => "hold_expired",
            },
            Body::Expired(_) => "expire",
            Body::Voided { .. } => "void",
            Body::Reversed(_) => "reversal",
            Body::DebtPaid(_) => "debt_paid",
            Body::TierChanged(_) => "tier_changed",
            Body::TierScheduled(_) => "tier_scheduled",
            Body::RolledOver { .. } => "rollover",
            Body::PurchaseCreated(_) => "purchase_created",
            Body::PurchaseUpdated { status, .. } => match status {
                PurchaseStatus::Pending => "purchase_created",
                PurchaseStatus::Completed => "purchase_completed",
                PurchaseStatus::Failed => "purchase_failed",
                PurchaseStatus::Canceled => "purchase_canceled",
                PurchaseStatus::Refunded => "purchase_refunded",
            },
            Body::PurchasePartlyRefunded { .. } => "purchase_refunded",
            Body::AutoRecharge { outcome, .. } => match outcome {
                RechargeOutcome::Succeeded => "auto_recharge_succeeded",
                RechargeOutcome::Failed(_) => "auto_recharge_failed",
            },
        }
    }

    /// Signed credits: what the entry adds to (positive) or removes from
    /// (negative) the account's credits net of debt. Holds, releases, debt
    /// payments and rollovers move credits without changing that total.
    pub fn signed_credits(&self) -> CreditSum {
        let negative = |credits: Credits| {
            CreditSum::ZERO
                .checked_sub(credits.to_sum())
                .unwrap_or_default()
        };
        match self {
            Body::Granted(grant) => grant.amount.to_sum(),
            Body::Debited(debit) => negative(debit.credits),
            Body::Captured(capture) => negative(capture.credits),
            Body::Expired(allocation) => negative(allocation.credits),
            Body::Voided { allocation, .. } => negative(allocation.credits),
            Body::Reversed(reversal) => allocated(&reversal.returned)
                .checked_add(reversal.debt_canceled.to_sum())
                .unwrap_or_default(),
            Body::TierChanged(change) => change.budget_increase.to_sum(),
            Body::Opened(_)
            | Body::Updated(_)
            | Body::Closed
            | Body::Held(_)
            | Body::Released(_)
            | Body::DebtPaid(_)
            | Body::TierScheduled(_)
            | Body::RolledOver { .. }
            | Body::PurchaseCreated(_)
            | Body::PurchaseUpdated { .. }
            | Body::PurchasePartlyRefunded { .. }
            | Body::AutoRecharge { .. } => CreditSum::ZERO,
        }
    }

    /// The allocations the entry touched, with the sign of their effect on
    /// grants' `remaining` (a hold or release moves credits between free and
    /// held and does not change `remaining`).
    pub fn remaining_delta(&self) -> CreditSum {
        let minus = |sum: CreditSum| CreditSum::ZERO.checked_sub(sum).unwrap_or_default();
        match self {
            Body::Granted(grant) => grant.amount.to_sum(),
            Body::Debited(debit) => minus(allocated(&debit.allocations)),
            Body::Captured(capture) => minus(
                allocated(&capture.from_hold)
                    .checked_add(allocated(&capture.excess))
                    .unwrap_or_default(),
            ),
            Body::Expired(allocation) | Body::Voided { allocation, .. } => {
                minus(allocation.credits.to_sum())
            }
            Body::Reversed(reversal) => allocated(&reversal.returned),
            Body::DebtPaid(allocations) => minus(allocated(allocations)),
            Body::TierChanged(change) => change.budget_increase.to_sum(),
            // Moves between grants: what leaves the budget arrives in the rollover grant.
            Body::RolledOver { from, grant } => grant
                .amount
                .to_sum()
                .checked_sub(allocated(from))
                .unwrap_or_default(),
            Body::Opened(_)
            | Body::Updated(_)
            | Body::Closed
            | Body::Held(_)
            | Body::Released(_)
            | Body::TierScheduled(_)
            | Body::PurchaseCreated(_)
            | Body::PurchaseUpdated { .. }
            | Body::PurchasePartlyRefunded { .. }
            | Body::AutoRecharge { .. } => CreditSum::ZERO,
        }
    }
}

/// An account's auto-recharge setting (API.md "Alerts and auto-recharge"):
/// when a command leaves available below `threshold`, one purchase of
/// `package` is made for the payment provider to charge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AutoRechargeConfig {
    pub enabled: bool,
    pub threshold: Credits,
    pub package: PackageId,
    /// At most this many recharges per period (`None`: no limit).
    pub max_per_month: Option<u32>,
}

/// Why an auto-recharge did not add credits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RechargeFailure {
    /// The provider refused the payment (declined, insufficient funds…).
    PaymentFailed,
    /// The bank asked for the customer's authentication (off-session).
    ActionRequired,
    /// No saved payment method to charge.
    NoPaymentMethod,
    /// `max_per_month` recharges were made this period already.
    MonthlyLimitReached,
}

impl RechargeFailure {
    pub const ALL: [RechargeFailure; 4] = [
        RechargeFailure::PaymentFailed,
        RechargeFailure::ActionRequired,
        RechargeFailure::NoPaymentMethod,
        RechargeFailure::MonthlyLimitReached,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            RechargeFailure::PaymentFailed => "payment_failed",
            RechargeFailure::ActionRequired => "action_required",
            RechargeFailure::NoPaymentMethod => "no_payment_method",
            RechargeFailure::MonthlyLimitReached => "monthly_limit_reached",
        }
    }

    pub fn parse(text: &str) -> Option<RechargeFailure> {
        RechargeFailure::ALL
            .into_iter()
            .find(|reason| reason.as_str() == text)
    }

    /// Whether it counts toward the failures that switch auto-recharge off
    /// (a payment that did not go through; not the monthly limit).
    pub const fn counts(self) -> bool {
        !matches!(self, RechargeFailure::MonthlyLimitReached)
    }
}

/// How an auto-recharge went (entry types `auto_recharge_succeeded`,
/// `auto_recharge_failed`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RechargeOutcome {
    Succeeded,
    Failed(RechargeFailure),
}
