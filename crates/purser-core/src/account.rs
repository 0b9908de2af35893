//! One account's state, and how a journal entry changes it.
//!
//! [`Account::apply`] is the only code that mutates an account. Commands
//! (in `decide.rs`) compute entries and go through it too, so the live path
//! and the replay path cannot drift apart.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use crate::credits::{CreditSum, Credits};
use crate::entry::{
    AccountUpdate, Allocation, AutoRechargeConfig, BalanceAfter, Body, Entry, Hold, Opened,
    Purchase, PurchaseStatus, RechargeOutcome, VoidReason, allocated,
};
use crate::events::Levels;
use crate::grant::{Grant, GrantKind, GrantSource, GrantState};
use crate::ids::{AccountHandle, AccountId, MemberId, TierId};
use crate::metadata::Metadata;
use crate::time::{Timestamp, period_start};

pub use crate::snapshot::AccountSnapshot;

/// `active` or `closed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccountStatus {
    Active,
    /// No more charges, holds, grants, purchases or renewals; existing holds
    /// and purchases can still be settled, and charges reversed.
    Closed,
}

impl AccountStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            AccountStatus::Active => "active",
            AccountStatus::Closed => "closed",
        }
    }
}

/// A customer account and everything the ledger needs to decide its commands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub(crate) id: AccountId,
    pub(crate) handle: AccountHandle,
    /// `None`: the same as the id (most accounts; saves an allocation).
    pub(crate) name: Option<Box<str>>,
    pub(crate) tier: TierId,
    pub(crate) pending_tier: Option<TierId>,
    pub(crate) anchor: Timestamp,
    pub(crate) created_at: Timestamp,
    pub(crate) status: AccountStatus,
    pub(crate) member_monthly_cap: Option<Credits>,
    pub(crate) metadata: Metadata,
    pub(crate) period_index: i64,
    pub(crate) period_start: Timestamp,
    pub(crate) period_end: Timestamp,
    pub(crate) next_seq: u64,
    pub(crate) debt: Credits,
    /// In burn order: every grant but the spent ones.
    pub(crate) grants: Vec<Grant>,
    /// Spent package and promo grants (nothing left, nothing held), by
    /// sequence number: out of every walk a charge makes, kept only so a
    /// reversal can give credits back to them (which brings them back).
    /// Boxed: most accounts have none.
    #[allow(clippy::box_collection)]
    pub(crate) spent: Option<Box<BTreeMap<u64, Grant>>>,
    /// No spent grant expires before this (derived: not in snapshots).
    pub(crate) spent_expiry: Timestamp,
    /// Active holds, in the order placed. Thin vectors (one pointer, no
    /// allocation while empty): most accounts have neither.
    pub(crate) holds: thin_vec::ThinVec<Hold>,
    /// In the order created (by sequence number).
    pub(crate) purchases: thin_vec::ThinVec<Purchase>,
    /// How many of them are pending (derived: not in snapshots).
    pub(crate) pending: u32,
    /// Credits each member consumed in the current period. Boxed: most
    /// accounts have none, and an empty `Option<Box<_>>` is one word.
    #[allow(clippy::box_collection)]
    pub(crate) member_usage: Option<Box<HashMap<MemberId, CreditSum>>>,
    /// The account's own low-balance thresholds (`None`: its tier's).
    /// Boxed: most accounts have none.
    #[allow(clippy::box_collection)]
    pub(crate) low_balance_thresholds: Option<Box<Vec<Credits>>>,
    /// Credits reversed so far, by debit sequence number.
    #[allow(clippy::box_collection)]
    pub(crate) reversed: Option<Box<HashMap<u64, Credits>>>,
    /// Auto-recharge: the setting and where it stands. Boxed: most
    /// accounts have none.
    pub(crate) auto_recharge: Option<Box<AutoRecharge>>,
    /// The earliest instant at which time-driven work is due.
    pub(crate) next_due: Timestamp,
    /// Its ledger settles objects out of memory (see `settled.rs`): spent
    /// grants are set aside before finished ones are dropped, so a voided
    /// package grant leaves as a stored row, never silently.
    pub(crate) settling: bool,
}

/// An account's auto-recharge: its setting and where it stands, all of it
/// rebuilt from entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AutoRecharge {
    pub config: AutoRechargeConfig,
    /// The purchase it made that is still pending (at most one).
    pub in_flight: Option<u64>,
    /// The period `made` counts recharges in.
    pub period: i64,
    /// Recharges made in `period`.
    pub made: u32,
    /// Failed payments in a row; three switch it off.
    pub failures: u8,
    /// The period in which the monthly limit was last told.
    pub limit_told: Option<i64>,
}

/// Failed payments in a row that switch auto-recharge off.
pub const RECHARGE_FAILURES_TO_DISABLE: u8 = 3;

impl AutoRecharge {
    pub fn new(config: AutoRechargeConfig) -> AutoRecharge {
        AutoRecharge {
            config,
            in_flight: None,
            period: 0,
            made: 0,
            failures: 0,
            limit_told: None,
        }
    }
}

/// Why an entry could not be applied: the journal is inconsistent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApplyError {
    OutOfOrder {
        expected: u64,
        found: u64,
    },
    UnknownAccount,
    AccountExists,
    WrongPartition,
    NotFirstEntry,
    UnknownGrant(u64),
    UnknownHold(u64),
    UnknownPurchase(u64),
    /// A grant would go below zero or above its amount, or held above remaining.
    GrantBounds(u64),
    /// An amount would exceed the limit.
    Overflow,
    /// The entry's own numbers do not add up (allocations vs credits).
    Unbalanced,
    /// The grants' remaining credits changed by another amount than the entry says.
    Conservation {
        expected: CreditSum,
        actual: CreditSum,
    },
    /// The balances recorded in the entry differ from the replayed ones.
    BalanceMismatch {
        recorded: BalanceAfter,
        replayed: BalanceAfter,
    },
}

impl fmt::Display for ApplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl std::error::Error for ApplyError {}

/// A broken invariant of rule 11.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub account: AccountId,
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "account {}: {}", self.account, self.message)
    }
}

impl Account {
    /// The account an `Opened` entry creates.
    pub(crate) fn open(
        handle: AccountHandle,
        entry_seq: u64,
        at: Timestamp,
        opened: &Opened,
    ) -> Account {
        let mut account = Account {
            id: opened.id.clone(),
            handle,
            name: (*opened.name != *opened.id.as_str()).then(|| opened.name.clone()),
            tier: opened.tier.clone(),
            pending_tier: None,
            anchor: opened.anchor,
            created_at: at,
            status: AccountStatus::Active,
            member_monthly_cap: opened.member_monthly_cap,
            metadata: opened.metadata.clone(),
            period_index: opened.period_index,
            period_start: period_start(opened.anchor, opened.period_index),
            period_end: period_start(opened.anchor, opened.period_index + 1),
            next_seq: entry_seq + 1,
            debt: Credits::ZERO,
            grants: Vec::new(),
            spent: None,
            spent_expiry: Timestamp::NEVER,
            holds: thin_vec::ThinVec::new(),
            purchases: thin_vec::ThinVec::new(),
            pending: 0,
            member_usage: None,
            low_balance_thresholds: opened.low_balance_thresholds.clone().map(Box::new),
            reversed: None,
            auto_recharge: opened
                .auto_recharge
                .clone()
                .map(|config| Box::new(AutoRecharge::new(config))),
            next_due: Timestamp::NEVER,
            settling: false,
        };
        account.next_due = account.compute_next_due();
        account
    }

    /// Applies one entry (never `Opened`), checking the entry against the state.
    pub(crate) fn apply(&mut self, entry: &Entry) -> Result<(), ApplyError> {
        if entry.seq != self.next_seq {
            return Err(ApplyError::OutOfOrder {
                expected: self.next_seq,
                found: entry.seq,
            });
        }
        let before = self.total_remaining();
        self.apply_body(entry)?;
        let actual = self
            .total_remaining()
            .checked_sub(before)
            .ok_or(ApplyError::Overflow)?;
        let expected = entry.body.remaining_delta();
        if actual != expected {
            return Err(ApplyError::Conservation { expected, actual });
        }
        self.next_seq += 1;
        self.prune_grants(entry.at);
        self.next_due = self.compute_next_due();
        Ok(())
    }

    fn apply_body(&mut self, entry: &Entry) -> Result<(), ApplyError> {
        let at = entry.at;
        match &entry.body {
            Body::Opened(_) => return Err(ApplyError::AccountExists),
            Body::Updated(update) => self.apply_update(update),
            Body::Closed => self.status = AccountStatus::Closed,
            Body::Granted(grant) => self.apply_grant(entry.seq, grant)?,
            Body::Debited(debit) => {
                let covered =
                    allocated(&debit.allocations).checked_add(debit.debt_incurred.to_sum());
                if covered != Some(debit.credits.to_sum()) {
                    return Err(ApplyError::Unbalanced);
                }
                self.consume_all(&debit.allocations)?;
                self.add_debt(debit.debt_incurred)?;
                if let Some(member) = &debit.member {
                    self.add_member_usage(member, debit.credits);
                }
            }
            Body::Held(hold) => {
                if hold.seq != entry.seq || allocated(&hold.allocations) != hold.credits.to_sum() {
                    return Err(ApplyError::Unbalanced);
                }
                for allocation in &hold.allocations {
                    let grant = self.grant_mut(allocation.grant)?;
                    grant.held = add(grant.held, allocation.credits)?;
                    if grant.held > grant.remaining {
                        return Err(ApplyError::GrantBounds(grant.seq));
                    }
                }
                self.holds.push((**hold).clone());
            }
            Body::Captured(capture) => {
                let hold = self.take_hold(capture.hold)?;
                let held = allocated(&capture.from_hold).checked_add(allocated(&capture.released));
                let charged = allocated(&capture.from_hold)
                    .checked_add(allocated(&capture.excess))
                    .and_then(|sum| sum.checked_add(capture.debt_incurred.to_sum()));
                if held != Some(hold.credits.to_sum()) || charged != Some(capture.credits.to_sum())
                {
                    return Err(ApplyError::Unbalanced);
                }
                self.unhold_all(&capture.from_hold)?;
                self.consume_all(&capture.from_hold)?;
                self.unhold_all(&capture.released)?;
                self.consume_all(&capture.excess)?;
                self.add_debt(capture.debt_incurred)?;
                if let Some(member) = &capture.member {
                    self.add_member_usage(member, capture.credits);
                }
            }
            Body::Released(release) => {
                let hold = self.take_hold(release.hold)?;
                if allocated(&release.allocations) != hold.credits.to_sum() {
                    return Err(ApplyError::Unbalanced);
                }
                self.unhold_all(&release.allocations)?;
            }
            Body::Expired(allocation) => self.remove_free(allocation)?,
            Body::Voided { allocation, reason } => {
                self.remove_free(allocation)?;
                if !matches!(
                    reason,
                    VoidReason::HoldEnded | VoidReason::PartialRefund { .. }
                ) {
                    self.grant_mut(allocation.grant)?.state = crate::grant::GrantState::Voided;
                }
            }
            Body::Reversed(reversal) => {
                for allocation in &reversal.returned {
                    let grant = self.grant_mut(allocation.grant)?;
                    grant.remaining = add(grant.remaining, allocation.credits)?;
                    grant.consumed = sub(grant.consumed, allocation.credits, grant.seq)?;
                }
                self.debt = sub(self.debt, reversal.debt_canceled, 0)?;
                let reversed = self.reversed.get_or_insert_with(Default::default);
                let total = reversed.entry(reversal.debit).or_insert(Credits::ZERO);
                *total = add(*total, reversal.credits)?;
                if let Some(member) = &reversal.member {
                    self.reduce_member_usage(member, reversal.member_usage_reduced);
                }
            }
            Body::DebtPaid(allocations) => {
                self.consume_all(allocations)?;
                let paid = allocated(allocations)
                    .to_credits()
                    .ok_or(ApplyError::Overflow)?;
                self.debt = sub(self.debt, paid, 0)?;
            }
            Body::TierChanged(change) => {
                if let Some(seq) = change.budget_grant {
                    let grant = self.grant_mut(seq)?;
                    grant.amount = add(grant.amount, change.budget_increase)?;
                    grant.remaining = add(grant.remaining, change.budget_increase)?;
                } else if !change.budget_increase.is_zero() {
                    return Err(ApplyError::Unbalanced);
                }
                self.tier = change.to.clone();
                self.pending_tier = None;
            }
            Body::TierScheduled(tier) => self.pending_tier = tier.clone(),
            Body::RolledOver { from, grant } => {
                if allocated(from) != grant.amount.to_sum() {
                    return Err(ApplyError::Unbalanced);
                }
                for allocation in from {
                    self.remove_free(allocation)?;
                }
                self.apply_grant(entry.seq, grant)?;
            }
            Body::PurchaseCreated(purchase) => {
                if purchase.seq != entry.seq {
                    return Err(ApplyError::Unbalanced);
                }
                if purchase.status == PurchaseStatus::Pending {
                    self.pending += 1;
                }
                if purchase.auto_recharge {
                    let period = self.period_index;
                    let auto = self
                        .auto_recharge
                        .as_deref_mut()
                        .ok_or(ApplyError::Unbalanced)?;
                    if auto.in_flight.is_some() {
                        return Err(ApplyError::Unbalanced);
                    }
                    auto.in_flight = Some(purchase.seq);
                    if auto.period != period {
                        auto.period = period;
                        auto.made = 0;
                    }
                    auto.made += 1;
                }
                self.purchases.push((**purchase).clone());
            }
            Body::PurchaseUpdated { purchase, status } => {
                if let Some(auto) = self.auto_recharge.as_deref_mut()
                    && auto.in_flight == Some(*purchase)
                    && *status != PurchaseStatus::Pending
                {
                    auto.in_flight = None;
                }
                let purchase = self.purchase_mut(*purchase)?;
                let was = purchase.status;
                purchase.status = *status;
                purchase.updated_at = at;
                match (
                    was == PurchaseStatus::Pending,
                    *status == PurchaseStatus::Pending,
                ) {
                    (true, false) => self.pending -= 1,
                    (false, true) => self.pending += 1,
                    _ => {}
                }
            }
            Body::PurchasePartlyRefunded { purchase, share } => {
                let purchase = self.purchase_mut(*purchase)?;
                if purchase.status != PurchaseStatus::Completed {
                    return Err(ApplyError::Unbalanced);
                }
                purchase.partly_refunded = Some(*share);
                purchase.updated_at = at;
            }
            Body::AutoRecharge { outcome, .. } => {
                let period = self.period_index;
                // The setting may have been removed since its purchase was
                // made: then there is nothing to count.
                if let Some(auto) = self.auto_recharge.as_deref_mut() {
                    match outcome {
                        RechargeOutcome::Succeeded => auto.failures = 0,
                        RechargeOutcome::Failed(reason) if reason.counts() => {
                            auto.failures = auto.failures.saturating_add(1);
                            if auto.failures >= RECHARGE_FAILURES_TO_DISABLE {
                                auto.config.enabled = false;
                            }
                        }
                        RechargeOutcome::Failed(_) => auto.limit_told = Some(period),
                    }
                }
            }
        }
        Ok(())
    }

    fn apply_update(&mut self, update: &AccountUpdate) {
        if let Some(name) = &update.name {
            self.name = (**name != *self.id.as_str()).then(|| name.clone());
        }
        if let Some(metadata) = &update.metadata {
            self.metadata = metadata.clone();
        }
        if let Some(cap) = update.member_monthly_cap {
            self.member_monthly_cap = cap;
        }
        if let Some(thresholds) = &update.low_balance_thresholds {
            self.low_balance_thresholds = thresholds.clone().map(Box::new);
        }
        match (&update.auto_recharge, self.auto_recharge.as_deref_mut()) {
            (None, _) => {}
            (Some(None), _) => self.auto_recharge = None,
            (Some(Some(config)), None) => {
                self.auto_recharge = Some(Box::new(AutoRecharge::new((**config).clone())));
            }
            (Some(Some(config)), Some(auto)) => {
                // Switched (back) on: its failures start again.
                if config.enabled && !auto.config.enabled {
                    auto.failures = 0;
                }
                auto.config = (**config).clone();
            }
        }
    }

    fn apply_grant(&mut self, seq: u64, grant: &Grant) -> Result<(), ApplyError> {
        if grant.seq != seq
            || grant.remaining != grant.amount
            || !grant.held.is_zero()
            || !grant.consumed.is_zero()
        {
            return Err(ApplyError::Unbalanced);
        }
        if let GrantSource::Purchase { purchase } = grant.source {
            self.purchase_mut(purchase)?.grant = Some(seq);
        }
        if let Some(index) = grant.period_index()
            && index != self.period_index
        {
            self.start_period(index);
        }
        let key = grant.burn_key();
        let at = self.grants.partition_point(|g| g.burn_key() < key);
        self.grants.insert(at, grant.clone());
        Ok(())
    }

    fn start_period(&mut self, index: i64) {
        self.period_index = index;
        self.period_start = period_start(self.anchor, index);
        self.period_end = period_start(self.anchor, index + 1);
        self.member_usage = None;
    }

    fn consume_all(&mut self, allocations: &[Allocation]) -> Result<(), ApplyError> {
        for allocation in allocations {
            let grant = self.grant_mut(allocation.grant)?;
            grant.remaining = sub(grant.remaining, allocation.credits, grant.seq)?;
            grant.consumed = add(grant.consumed, allocation.credits)?;
            if grant.held > grant.remaining {
                return Err(ApplyError::GrantBounds(grant.seq));
            }
        }
        Ok(())
    }

    fn unhold_all(&mut self, allocations: &[Allocation]) -> Result<(), ApplyError> {
        for allocation in allocations {
            let grant = self.grant_mut(allocation.grant)?;
            grant.held = sub(grant.held, allocation.credits, grant.seq)?;
        }
        Ok(())
    }

    /// Removes free (unheld) credits of a grant: expiry, void, rollover.
    fn remove_free(&mut self, allocation: &Allocation) -> Result<(), ApplyError> {
        let grant = self.grant_mut(allocation.grant)?;
        if allocation.credits > grant.free() {
            return Err(ApplyError::GrantBounds(grant.seq));
        }
        grant.remaining = sub(grant.remaining, allocation.credits, grant.seq)?;
        Ok(())
    }

    fn add_debt(&mut self, credits: Credits) -> Result<(), ApplyError> {
        self.debt = add(self.debt, credits)?;
        Ok(())
    }

    fn add_member_usage(&mut self, member: &MemberId, credits: Credits) {
        let usage = self.member_usage.get_or_insert_with(Default::default);
        let total = usage.entry(member.clone()).or_default();
        // i128 sums of u64 amounts: cannot overflow in practice; saturate to be total.
        *total = total.checked_add(credits.to_sum()).unwrap_or(*total);
    }

    fn reduce_member_usage(&mut self, member: &MemberId, credits: Credits) {
        if let Some(total) = self
            .member_usage
            .as_mut()
            .and_then(|usage| usage.get_mut(member))
        {
            *total = total
                .checked_sub(credits.to_sum())
                .unwrap_or_default()
                .max(CreditSum::ZERO);
        }
    }

    fn take_hold(&mut self, seq: u64) -> Result<Hold, ApplyError> {
        let at = self
            .holds
            .iter()
            .position(|h| h.seq == seq)
            .ok_or(ApplyError::UnknownHold(seq))?;
        Ok(self.holds.remove(at))
    }

    /// A grant to change: a spent one comes back into burn order first.
    fn grant_mut(&mut self, seq: u64) -> Result<&mut Grant, ApplyError> {
        if let Some(at) = self.grants.iter().position(|g| g.seq == seq) {
            return Ok(&mut self.grants[at]);
        }
        let grant = self
            .spent
            .as_mut()
            .and_then(|spent| spent.remove(&seq))
            .ok_or(ApplyError::UnknownGrant(seq))?;
        let key = grant.burn_key();
        let at = self.grants.partition_point(|g| g.burn_key() < key);
        self.grants.insert(at, grant);
        Ok(&mut self.grants[at])
    }

    fn purchase_mut(&mut self, seq: u64) -> Result<&mut Purchase, ApplyError> {
        let at = self
            .purchases
            .binary_search_by_key(&seq, |p| p.seq)
            .map_err(|_| ApplyError::UnknownPurchase(seq))?;
        Ok(&mut self.purchases[at])
    }

    /// Forgets grants that can never change again: nothing left, nothing held,
    /// and expired (or voided, except the current budget, which the balance
    /// shows until the period ends). Exhausted grants that are still live are
    /// kept, because a reversal can give credits back to them.
    /// Spent package and promo grants leave burn order (see `spent`); the
    /// spent ones that can never change again leave too (checked when the
    /// earliest spent expiry has come).
    pub(crate) fn prune_grants(&mut self, at: Timestamp) {
        let finished = |g: &Grant| {
            g.expires_at <= at
                || (g.state == crate::grant::GrantState::Voided && g.kind != GrantKind::Budget)
        };
        if self.settling {
            // Spent ones (finished or not) leave with their last state;
            // the server takes them out of memory after the command.
            self.set_aside_spent();
            self.grants
                .retain(|g| !(finished(g) && g.remaining.is_zero() && g.held.is_zero()));
            return;
        }
        self.grants
            .retain(|g| !(finished(g) && g.remaining.is_zero() && g.held.is_zero()));
        self.set_aside_spent();
        if let Some(spent) = &mut self.spent
            && self.spent_expiry <= at
        {
            spent.retain(|_, g| !finished(g));
            self.spent_expiry = spent
                .values()
                .map(|g| g.expires_at)
                .min()
                .unwrap_or(Timestamp::NEVER);
        }
    }

    pub(crate) fn set_aside_spent(&mut self) {
        let spent = |g: &mut Grant| {
            matches!(g.kind, GrantKind::Package | GrantKind::Promo)
                && g.remaining.is_zero()
                && g.held.is_zero()
        };
        if !self.grants.iter_mut().any(spent) {
            return;
        }
        let aside = self.spent.get_or_insert_with(Default::default);
        for grant in self.grants.extract_if(.., spent) {
            self.spent_expiry = self.spent_expiry.min(grant.expires_at);
            aside.insert(grant.seq, grant);
        }
    }

    /// The earliest instant with time-driven work: a hold expiry, a grant
    /// expiry with free credits to expire, or (for active accounts) renewal.
    pub(crate) fn compute_next_due(&self) -> Timestamp {
        let renewal = match self.status {
            AccountStatus::Active => self.period_end,
            AccountStatus::Closed => Timestamp::NEVER,
        };
        let holds = self.holds.iter().map(|h| h.expires_at);
        let grants = self
            .grants
            .iter()
            .filter(|g| g.state == crate::grant::GrantState::Live && !g.free().is_zero())
            .map(|g| g.expires_at);
        holds.chain(grants).fold(renewal, Timestamp::min)
    }

    pub(crate) fn total_remaining(&self) -> CreditSum {
        self.grants.iter().map(|g| g.remaining).sum()
    }

    /// What a strict charge could take at `at`.
    pub fn available(&self, at: Timestamp) -> CreditSum {
        self.grants
            .iter()
            .filter(|g| g.is_active(at))
            .map(Grant::free)
            .sum()
    }

    /// What balance events compare before and after a command, in one walk.
    pub fn levels(&self, at: Timestamp) -> Levels {
        let mut levels = Levels {
            debt: self.debt,
            ..Levels::default()
        };
        for grant in self.grants.iter().filter(|g| g.is_active(at)) {
            let free = grant.free().to_sum();
            levels.available = levels
                .available
                .checked_add(free)
                .unwrap_or(levels.available);
            if grant.period_index() == Some(self.period_index) {
                levels.budget = levels.budget.checked_add(free).unwrap_or(levels.budget);
            }
        }
        levels
    }

    /// The balances an entry at `at` records: every live grant that has
    /// begun counts, due to expire or not, because an expiry takes its
    /// credits away by an entry of its own. At a renewal the rollover is
    /// written first, then the expiries, all at the period's end: so the
    /// recorded balances follow the entries, each the one before plus its
    /// credits (counting by time, as reads do, showed the old budget gone
    /// on the rollover already, and nothing taken by its expiry).
    pub fn balance_after(&self, at: Timestamp) -> BalanceAfter {
        BalanceAfter {
            available: self
                .grants
                .iter()
                .filter(|g| g.state == GrantState::Live && g.effective_at <= at)
                .map(Grant::free)
                .sum(),
            held: self.grants.iter().map(|g| g.held).sum(),
            debt: self.debt,
        }
    }

    /// [`Account::balance_after`] as entries recorded it before 2026-12-01
    /// (grants due to expire at `at` no longer counted): what a journal
    /// written then replays against.
    pub fn legacy_balance_after(&self, at: Timestamp) -> BalanceAfter {
        BalanceAfter {
            available: self.available(at),
            ..self.balance_after(at)
        }
    }

    /// The full balance view at `now`.
    pub fn balance(&self, now: Timestamp) -> Balance {
        let mut by_kind = [KindBalance::default(); 4];
        let mut budget = BudgetBalance {
            period_start: self.period_start,
            period_end: self.period_end,
            ..BudgetBalance::default()
        };
        for grant in &self.grants {
            let slot = &mut by_kind[grant.kind as usize];
            if grant.is_active(now) {
                slot.available = slot
                    .available
                    .checked_add(grant.free().to_sum())
                    .unwrap_or(slot.available);
            }
            slot.held = slot
                .held
                .checked_add(grant.held.to_sum())
                .unwrap_or(slot.held);
            if grant.period_index() == Some(self.period_index) {
                budget.granted = budget
                    .granted
                    .checked_add(grant.amount.to_sum())
                    .unwrap_or(budget.granted);
                budget.used = budget
                    .used
                    .checked_add(grant.consumed.to_sum())
                    .unwrap_or(budget.used);
            }
        }
        let [budget_kind, rollover, packages, promo] = by_kind;
        budget.held = budget_kind.held;
        budget.available = budget_kind.available;
        Balance::of(self.debt, budget, rollover, packages, promo)
    }

    /// Checks rule 11's invariants that can be seen in one account's state.
    pub fn check_invariants(&self, now: Timestamp) -> Result<(), Violation> {
        let fail = |message: String| {
            Err(Violation {
                account: self.id.clone(),
                message,
            })
        };
        for grant in &self.grants {
            if grant.held > grant.remaining {
                return fail(format!(
                    "grant {} holds {} of {} remaining",
                    grant.seq, grant.held, grant.remaining
                ));
            }
            if grant
                .remaining
                .checked_add(grant.consumed)
                .is_none_or(|used| used > grant.amount)
            {
                return fail(format!(
                    "grant {}: remaining {} + consumed {} exceed amount {}",
                    grant.seq, grant.remaining, grant.consumed, grant.amount
                ));
            }
            let held_by_holds: CreditSum = self
                .holds
                .iter()
                .flat_map(|h| &h.allocations)
                .filter(|a| a.grant == grant.seq)
                .map(|a| a.credits)
                .sum();
            if held_by_holds != grant.held.to_sum() {
                return fail(format!(
                    "grant {} held {} but its holds add up to {held_by_holds}",
                    grant.seq, grant.held
                ));
            }
            if grant.expires_at <= now && !grant.free().is_zero() {
                return fail(format!(
                    "grant {} expired at {:?} with {} free",
                    grant.seq,
                    grant.expires_at,
                    grant.free()
                ));
            }
        }
        if !self
            .grants
            .windows(2)
            .all(|w| w[0].burn_key() < w[1].burn_key())
        {
            return fail("grants out of burn order".into());
        }
        for hold in &self.holds {
            if allocated(&hold.allocations) != hold.credits.to_sum() {
                return fail(format!(
                    "hold {} allocations do not add up to {}",
                    hold.seq, hold.credits
                ));
            }
        }
        if !self.debt.is_zero() && self.available(now) > CreditSum::ZERO {
            return fail(format!(
                "debt {} while {} available",
                self.debt,
                self.available(now)
            ));
        }
        if self.next_due <= now {
            return fail(format!(
                "work due at {:?} not applied by {now:?}",
                self.next_due
            ));
        }
        Ok(())
    }
}

/// Public read access.
impl Account {
    pub fn id(&self) -> &AccountId {
        &self.id
    }
    pub fn handle(&self) -> AccountHandle {
        self.handle
    }
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or(self.id.as_str())
    }
    pub fn tier(&self) -> &TierId {
        &self.tier
    }
    pub fn pending_tier(&self) -> Option<&TierId> {
        self.pending_tier.as_ref()
    }
    pub fn anchor(&self) -> Timestamp {
        self.anchor
    }
    pub fn created_at(&self) -> Timestamp {
        self.created_at
    }
    pub fn status(&self) -> AccountStatus {
        self.status
    }
    pub fn member_monthly_cap(&self) -> Option<Credits> {
        self.member_monthly_cap
    }
    /// The account's own low-balance thresholds; `None`: its tier's apply.
    /// The account's auto-recharge, if it has one.
    pub fn auto_recharge(&self) -> Option<&AutoRecharge> {
        self.auto_recharge.as_deref()
    }

    pub fn low_balance_thresholds(&self) -> Option<&[Credits]> {
        self.low_balance_thresholds.as_deref().map(Vec::as_slice)
    }

    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }
    pub fn period_index(&self) -> i64 {
        self.period_index
    }
    pub fn period_start(&self) -> Timestamp {
        self.period_start
    }
    pub fn period_end(&self) -> Timestamp {
        self.period_end
    }
    /// The sequence number the next entry will get (= number of entries so far).
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }
    pub fn debt(&self) -> Credits {
        self.debt
    }
    /// Grants in burn order: live ones, exhausted budget and rollover ones
    /// that a reversal could refill, and expired or voided ones with held
    /// credits. Spent package and promo grants are in [`Account::spent`].
    pub fn grants(&self) -> &[Grant] {
        &self.grants
    }
    /// Spent package and promo grants (nothing left, nothing held), oldest
    /// first.
    pub fn spent(&self) -> impl DoubleEndedIterator<Item = &Grant> {
        self.spent.iter().flat_map(|spent| spent.values())
    }
    /// Spent grants created before `seq`, oldest first (a list page after a
    /// spent grant starts here without walking the rest).
    pub fn spent_before(&self, seq: u64) -> impl DoubleEndedIterator<Item = &Grant> {
        self.spent
            .iter()
            .flat_map(move |spent| spent.range(..seq).map(|(_, grant)| grant))
    }
    /// Whether grant `seq` is a spent one.
    pub fn is_spent(&self, seq: u64) -> bool {
        self.spent
            .as_ref()
            .is_some_and(|spent| spent.contains_key(&seq))
    }
    pub fn grant(&self, seq: u64) -> Option<&Grant> {
        self.grants
            .iter()
            .find(|g| g.seq == seq)
            .or_else(|| self.spent.as_ref()?.get(&seq))
    }
    pub fn holds(&self) -> &[Hold] {
        &self.holds
    }
    pub fn hold(&self, seq: u64) -> Option<&Hold> {
        self.holds.iter().find(|h| h.seq == seq)
    }
    pub fn purchases(&self) -> &[Purchase] {
        &self.purchases
    }
    pub fn purchase(&self, seq: u64) -> Option<&Purchase> {
        let at = self.purchases.binary_search_by_key(&seq, |p| p.seq).ok()?;
        Some(&self.purchases[at])
    }
    /// Credits `member` consumed in the current period (holds not included).
    pub fn member_usage(&self, member: &str) -> CreditSum {
        self.member_usage
            .as_ref()
            .and_then(|usage| usage.get(member))
            .copied()
            .unwrap_or_default()
    }
    /// Credits of debit `seq` reversed so far.
    pub fn reversed(&self, debit_seq: u64) -> Credits {
        self.reversed
            .as_ref()
            .and_then(|reversed| reversed.get(&debit_seq))
            .copied()
            .unwrap_or_default()
    }
    /// When time-driven work (renewal, an expiry) is next due.
    pub fn next_due(&self) -> Timestamp {
        self.next_due
    }
    pub fn pending_purchases(&self) -> usize {
        self.pending as usize
    }
}

/// Credits of one kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KindBalance {
    pub available: CreditSum,
    pub held: CreditSum,
}

/// The current period's budget.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BudgetBalance {
    pub granted: CreditSum,
    pub used: CreditSum,
    pub held: CreditSum,
    pub available: CreditSum,
    pub period_start: Timestamp,
    pub period_end: Timestamp,
}

/// An account's balances, as the API shows them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Balance {
    /// The sum of the four kinds' `available`: what a strict charge can take now.
    pub available: CreditSum,
    pub held: CreditSum,
    pub debt: Credits,
    pub budget: BudgetBalance,
    pub rollover: KindBalance,
    pub packages: KindBalance,
    pub promo: KindBalance,
}

impl Balance {
    /// The balance of these parts: `available` and `held` are the sums of
    /// the four kinds' (the budget's being its `available` and `held`).
    /// The one place they are summed, so a balance rebuilt from its parts
    /// (a remembered answer's) is the balance that was shown.
    pub fn of(
        debt: Credits,
        budget: BudgetBalance,
        rollover: KindBalance,
        packages: KindBalance,
        promo: KindBalance,
    ) -> Balance {
        let kinds = [
            KindBalance {
                available: budget.available,
                held: budget.held,
            },
            rollover,
            packages,
            promo,
        ];
        let sum = |f: fn(&KindBalance) -> CreditSum| {
            kinds
                .iter()
                .map(f)
                .fold(CreditSum::ZERO, |a, b| a.checked_add(b).unwrap_or(a))
        };
        Balance {
            available: sum(|k| k.available),
            held: sum(|k| k.held),
            debt,
            budget,
            rollover,
            packages,
            promo,
        }
    }
}

fn add(a: Credits, b: Credits) -> Result<Credits, ApplyError> {
    a.checked_add(b).ok_or(ApplyError::Overflow)
}

fn sub(a: Credits, b: Credits, grant: u64) -> Result<Credits, ApplyError> {
    a.checked_sub(b).ok_or(ApplyError::GrantBounds(grant))
}

#[cfg(test)]
mod size_tests {
    use std::mem::size_of;

    /// A million resident accounts must fit in about half a gigabyte: these
    /// sizes are budgeted, and growing them is a decision, not an accident.
    #[test]
    fn resident_types_stay_within_their_budget() {
        let sizes = [
            ("Account", size_of::<super::Account>(), 272),
            ("Grant", size_of::<super::Grant>(), 96),
            // 208, and the entry's actor (an 8-byte pointer, 16 with its
            // alignment; issue 15). Entries are not resident: they live in
            // a commit batch, in recovery, and as a debit's memo.
            ("Entry", size_of::<super::Entry>(), 224),
        ];
        for (name, size, budget) in sizes {
            assert!(size <= budget, "{name} is {size} bytes, budget {budget}");
        }
    }
}
