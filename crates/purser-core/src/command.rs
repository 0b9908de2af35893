//! Commands: what callers ask the ledger to do. Every field is already
//! parsed (ids checked, amounts exact); the ledger decides against state.

use crate::credits::{Credits, Quantity};
use crate::entry::{
    AccountUpdate, Allocation, AutoRechargeConfig, Body, ChargeMode, Entry, Proration,
    RechargeFailure, RefundedShare,
};
use crate::grant::GrantKind;
use crate::ids::{AccountHandle, AccountId, MemberId, ObjectId, PackageId, TaskId, TierId};
use crate::metadata::Metadata;
use crate::rejection::Rejection;
use crate::time::Timestamp;

/// What a charge or hold costs: credits directly, or a task priced by the rate card.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Amount {
    Credits(Credits),
    Task { task: TaskId, quantity: Quantity },
}

/// What a capture charges; by default the hold's credits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaptureAmount {
    Hold,
    Credits(Credits),
    /// Priced at the hold's task rate.
    Quantity(Quantity),
}

/// A charge that was made, as the store keeps it: what a reversal needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DebitRecord {
    pub id: ObjectId,
    pub at: Timestamp,
    pub credits: Credits,
    /// In the order taken (a capture's hold part, then its excess).
    pub allocations: Vec<Allocation>,
    pub debt_incurred: Credits,
    pub member: Option<MemberId>,
}

impl DebitRecord {
    /// The record of the debit `id` from its journal entry; `None` if the
    /// entry is not a charge (a `debit` or a hold's `capture`).
    pub fn from_entry(id: ObjectId, entry: &Entry) -> Option<DebitRecord> {
        let (credits, allocations, debt_incurred, member) = match &entry.body {
            Body::Debited(d) => (
                d.credits,
                d.allocations.clone(),
                d.debt_incurred,
                d.member.clone(),
            ),
            Body::Captured(c) => {
                let all = c.from_hold.iter().chain(&c.excess).copied().collect();
                (c.credits, all, c.debt_incurred, c.member.clone())
            }
            _ => return None,
        };
        Some(DebitRecord {
            id,
            at: entry.at,
            credits,
            allocations,
            debt_incurred,
            member,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    OpenAccount {
        id: AccountId,
        name: Option<String>,
        tier: TierId,
        /// Default: now.
        anchor: Option<Timestamp>,
        member_monthly_cap: Option<Credits>,
        metadata: Metadata,
        /// `None`: the tier's (API.md "Alerts").
        low_balance_thresholds: Option<Vec<Credits>>,
        /// Boxed: inline it would make every command (a charge too) 40
        /// bytes larger to move.
        auto_recharge: Option<Box<AutoRechargeConfig>>,
    },
    UpdateAccount {
        account: AccountId,
        update: AccountUpdate,
    },
    CloseAccount {
        account: AccountId,
    },
    Charge {
        account: AccountId,
        amount: Amount,
        member: Option<MemberId>,
        mode: ChargeMode,
        metadata: Metadata,
    },
    PlaceHold {
        account: AccountId,
        amount: Amount,
        ttl_seconds: i64,
        member: Option<MemberId>,
        metadata: Metadata,
    },
    CaptureHold {
        hold: ObjectId,
        amount: CaptureAmount,
        mode: ChargeMode,
    },
    ReleaseHold {
        hold: ObjectId,
    },
    Reverse {
        debit: DebitRecord,
        /// Default: all not yet reversed.
        credits: Option<Credits>,
    },
    IssueGrant {
        account: AccountId,
        kind: GrantKind,
        credits: Credits,
        expires_at: Option<Timestamp>,
        priority: Option<u16>,
        reason: String,
    },
    VoidGrant {
        grant: ObjectId,
    },
    CreatePurchase {
        account: AccountId,
        package: PackageId,
    },
    CompletePurchase {
        purchase: ObjectId,
    },
    /// `reason` is told for an auto-recharge's purchase (default
    /// `payment_failed`).
    FailPurchase {
        purchase: ObjectId,
        reason: Option<RechargeFailure>,
    },
    CancelPurchase {
        purchase: ObjectId,
    },
    /// A full refund (`share` `None`, or a share of all of it), or a
    /// partial one: `share` is the provider's cumulative refund, and the
    /// part of it not refunded before voids the same part of what is left
    /// of the package grant's free credits.
    RefundPurchase {
        purchase: ObjectId,
        share: Option<RefundedShare>,
    },
    ChangeTier {
        account: AccountId,
        tier: TierId,
        proration: Proration,
    },
    /// Apply what is due by now (renewals, expiries); the scheduler's command.
    Advance {
        account: AccountHandle,
    },
}

impl Command {
    /// The refusal for a command whose account does not exist: the object
    /// it names (hold, grant, debit, purchase) is what is not found.
    pub fn not_found(&self) -> Rejection {
        match self {
            Command::CaptureHold { .. } | Command::ReleaseHold { .. } => Rejection::HoldNotFound,
            Command::VoidGrant { .. } => Rejection::GrantNotFound,
            Command::Reverse { .. } => Rejection::DebitNotFound,
            Command::CompletePurchase { .. }
            | Command::FailPurchase { .. }
            | Command::CancelPurchase { .. }
            | Command::RefundPurchase { .. } => Rejection::PurchaseNotFound,
            _ => Rejection::AccountNotFound,
        }
    }

    /// The account the command is addressed to, by id or by handle.
    pub fn target(&self) -> Target<'_> {
        match self {
            Command::OpenAccount { id, .. } => Target::New(id),
            Command::UpdateAccount { account, .. }
            | Command::CloseAccount { account }
            | Command::Charge { account, .. }
            | Command::PlaceHold { account, .. }
            | Command::IssueGrant { account, .. }
            | Command::CreatePurchase { account, .. }
            | Command::ChangeTier { account, .. } => Target::Id(account),
            Command::CaptureHold { hold, .. } | Command::ReleaseHold { hold } => {
                Target::Handle(hold.account)
            }
            Command::Reverse { debit, .. } => Target::Handle(debit.id.account),
            Command::VoidGrant { grant } => Target::Handle(grant.account),
            Command::CompletePurchase { purchase }
            | Command::FailPurchase { purchase, .. }
            | Command::CancelPurchase { purchase }
            | Command::RefundPurchase { purchase, .. } => Target::Handle(purchase.account),
            Command::Advance { account } => Target::Handle(*account),
        }
    }
}

/// How a command names its account.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target<'a> {
    /// An account to be opened.
    New(&'a AccountId),
    Id(&'a AccountId),
    Handle(AccountHandle),
}
